//! The placement as the rest of the node reads it: the store's owned set
//! and, for the HTTP layer, where to forward a key this node does not own.
//! Written by the cluster driver when the layout or an owner's address
//! changes; read lock-free (owned set) or under a short read lock (routes).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use super::{partition_of, stores, Layout, Owned, SharedOwned};
use crate::model::NodeId;

/// Where each owner can be reached over HTTP, with the layout.
#[derive(Clone, Debug)]
pub struct Routes {
    pub layout: Arc<Layout>,
    /// Advertised client URL of each alive or suspect member. A suspect is
    /// still an owner in the layout and usually alive (a slow answer under
    /// load): leaving it out would leave a read that missed at the other
    /// owner nobody to ask.
    pub urls: BTreeMap<NodeId, String>,
    /// The members of `urls` that are suspect: tried after the alive ones.
    pub suspect: BTreeSet<NodeId>,
}

/// Shared placement state of one node.
#[derive(Debug)]
pub struct PlacementHandle {
    me: NodeId,
    owned: Arc<SharedOwned>,
    /// A replication factor is set (even if the layout is full for now,
    /// members ≤ R): a read that misses here is checked with the others.
    sharded: AtomicBool,
    routes: RwLock<Arc<Routes>>,
}

impl PlacementHandle {
    /// `owned` is the store's set, so the write path sees each change.
    pub fn new(me: NodeId, owned: Arc<SharedOwned>) -> Arc<PlacementHandle> {
        let layout = Arc::new(Layout::compute(vec![me.clone()], None));
        Arc::new(PlacementHandle {
            me,
            owned,
            sharded: AtomicBool::new(false),
            routes: RwLock::new(Arc::new(Routes {
                layout,
                urls: BTreeMap::new(),
                suspect: BTreeSet::new(),
            })),
        })
    }

    pub fn owned(&self) -> Owned {
        self.owned.load()
    }

    pub fn routes(&self) -> Arc<Routes> {
        match self.routes.read() {
            Ok(r) => r.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Publishes a new layout and owner addresses.
    pub fn publish(&self, routes: Routes) {
        self.owned.store(routes.layout.owned_by(&self.me));
        self.sharded.store(
            routes.layout.replication_factor.is_some(),
            Ordering::Relaxed,
        );
        let r = Arc::new(routes);
        match self.routes.write() {
            Ok(mut g) => *g = r,
            Err(p) => *p.into_inner() = r,
        }
    }

    /// `None` when this node stores `key` (serve it here); else the owners
    /// of its partition that have a known URL, best first.
    pub fn forward_targets(&self, key: &str) -> Option<Vec<(NodeId, String)>> {
        if stores(&self.owned.load(), key) {
            return None;
        }
        Some(self.other_owners(key))
    }

    /// Whether a replication factor is set: reads that miss at an owner are
    /// then checked with the other owners. One relaxed load.
    pub fn sharded(&self) -> bool {
        self.sharded.load(Ordering::Relaxed)
    }

    /// The owners of `key`'s partition other than this node that have a
    /// known URL, best first: alive ones in layout order, then suspect ones.
    /// Empty with full replication; with a factor set and a layout shrunk
    /// to full (members ≤ R, e.g. after a death), every other member, since
    /// a node that just gained partitions may not hold their data yet.
    pub fn other_owners(&self, key: &str) -> Vec<(NodeId, String)> {
        let routes = self.routes();
        if routes.layout.replication_factor.is_none() {
            return Vec::new();
        }
        let mut owners: Vec<(NodeId, String)> = routes
            .layout
            .owners(partition_of(key))
            .iter()
            .filter(|o| **o != self.me)
            .filter_map(|o| routes.urls.get(o).map(|u| (o.clone(), u.clone())))
            .collect();
        owners.sort_by_key(|(o, _)| routes.suspect.contains(o));
        owners
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).expect("a valid node id")
    }

    fn handle(members: &[&str], r: Option<usize>, suspect: &[&str]) -> Arc<PlacementHandle> {
        let me = id(members[0]);
        let h = PlacementHandle::new(me, SharedOwned::new());
        let ids: Vec<NodeId> = members.iter().map(|m| id(m)).collect();
        h.publish(Routes {
            layout: Arc::new(Layout::compute(ids, r)),
            urls: members[1..]
                .iter()
                .map(|m| (id(m), format!("http://{m}")))
                .collect(),
            suspect: suspect.iter().map(|m| id(m)).collect(),
        });
        h
    }

    #[test]
    fn full_replication_asks_nobody_else() {
        let h = handle(&["a", "b", "c"], None, &[]);
        assert!(!h.sharded());
        assert!(h.forward_targets("k").is_none());
        assert!(h.other_owners("k").is_empty());
    }

    #[test]
    fn a_layout_shrunk_to_full_still_checks_a_miss_with_the_other_members() {
        // R = 2 and two members left (the third died beyond the grace
        // period): each node owns everything, but one that just gained a
        // partition may lack its data, so a miss is checked with the other.
        let h = handle(&["a", "b"], Some(2), &[]);
        assert!(h.sharded());
        assert!(h.owned().is_full());
        assert!(h.forward_targets("k").is_none());
        let others: Vec<NodeId> = h.other_owners("k").into_iter().map(|(o, _)| o).collect();
        assert_eq!(others, vec![id("b")]);
    }

    #[test]
    fn other_owners_are_the_partitions_owners_alive_first_then_suspect() {
        let members = ["a", "b", "c", "d", "e"];
        for key in (0..64).map(|i| format!("key-{i}")) {
            let layout = Layout::compute(members.iter().map(|m| id(m)).collect(), Some(3));
            let owners = layout.owners(partition_of(&key)).to_vec();
            let suspect = owners.iter().find(|o| o.as_str() != "a").cloned();
            let h = handle(
                &members,
                Some(3),
                &suspect.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            );
            let got: Vec<NodeId> = h.other_owners(&key).into_iter().map(|(o, _)| o).collect();
            let mut want: Vec<NodeId> = owners.into_iter().filter(|o| o.as_str() != "a").collect();
            want.sort_by_key(|o| Some(o) == suspect.as_ref());
            assert_eq!(got, want, "{key}");
        }
    }
}
