//! The placement as the rest of the node reads it: the store's owned set
//! and, for the HTTP layer, where to forward a key this node does not own.
//! Written by the cluster driver when the layout or an owner's address
//! changes; read lock-free (owned set) or under a short read lock (routes).

use std::collections::{BTreeMap, BTreeSet};
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
    routes: RwLock<Arc<Routes>>,
}

impl PlacementHandle {
    /// `owned` is the store's set, so the write path sees each change.
    pub fn new(me: NodeId, owned: Arc<SharedOwned>) -> Arc<PlacementHandle> {
        let layout = Arc::new(Layout::compute(vec![me.clone()], None));
        Arc::new(PlacementHandle {
            me,
            owned,
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

    /// The owners of `key`'s partition other than this node that have a
    /// known URL, best first: alive ones in layout order, then suspect ones
    /// (empty with full replication).
    pub fn other_owners(&self, key: &str) -> Vec<(NodeId, String)> {
        let routes = self.routes();
        if routes.layout.is_full() {
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
