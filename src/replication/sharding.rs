//! What replication does differently when keys have owners
//! (`crate::placement`): stubs for non-owners, anti-entropy restricted to
//! the partitions both sides store, and handoff when the layout changes.
//! With a full layout (the default) every function here is a no-op.

use std::sync::Arc;

use super::ReplicaReader;
use super::{AeTrigger, Effect, Replicator};
use crate::merkle::{NodeRef, ZERO};
use crate::model::{is_internal, Delta, NodeId};
use crate::placement::{self, Layout, Owned};

/// Partitions whose Merkle subtree holds data here (non-zero digest).
pub(super) fn held(store: &dyn ReplicaReader) -> Owned {
    let mut o = Owned::NONE;
    let Some(level1) = NodeRef::ROOT.children() else {
        return o;
    };
    for n in level1 {
        if let Some(kids) = store.merkle_children(n) {
            for (i, d) in kids.iter().enumerate() {
                if *d != ZERO {
                    o.insert((n.index as usize * kids.len() + i) as u8);
                }
            }
        }
    }
    o
}

/// Whether a Merkle node covers any partition of `scope`.
pub(super) fn in_scope(scope: &Owned, node: NodeRef) -> bool {
    if scope.is_full() {
        return true;
    }
    match node.level {
        0 => !scope.is_empty(),
        1 => (node.index * 16..node.index * 16 + 16).any(|p| scope.contains(p as u8)),
        l => scope.contains((node.index >> (4 * (l as u32 - 2))) as u8),
    }
}

impl Replicator {
    pub fn layout(&self) -> &Arc<Layout> {
        &self.layout
    }

    /// Adopts a new layout (the node machine computes it from membership).
    /// Every peer that newly owns a partition we hold data of gets an
    /// anti-entropy session soon, restricted to its partitions: that is the
    /// handoff that streams the data to new owners.
    pub fn set_layout(
        &mut self,
        layout: Arc<Layout>,
        now: u64,
        store: &dyn ReplicaReader,
    ) -> Vec<Effect> {
        let out = Vec::new();
        if *layout == *self.layout {
            return out;
        }
        let old = std::mem::replace(&mut self.layout, layout);
        // Confirmations were for the old owners.
        self.confirmed.clear();
        self.layout_epoch += 1;
        self.layout_since_ms = now;
        self.mine = self.layout.owned_by(&self.node);
        self.progress.replication_factor = self.layout.replication_factor;
        self.progress.eligible_members = self.layout.members.len();
        self.progress.owned = self.mine.len();
        self.progress.owned_ranges = self.mine.ranges();
        self.progress.layout_changes += 1;
        let held = held(store).union(&self.mine);
        self.held = held;
        self.progress.held_not_owned = held.minus(&self.mine).len();
        tracing::info!(node = %self.node, members = self.layout.members.len(),
            factor = ?self.layout.replication_factor, owned = self.mine.len(),
            held_not_owned = self.progress.held_not_owned, "partition layout changed");
        if self.layout.is_full() && old.is_full() {
            return out;
        }
        let peers: Vec<NodeId> = self
            .layout
            .members
            .iter()
            .filter(|m| **m != self.node)
            .cloned()
            .collect();
        for peer in peers {
            let now_owns = self.layout.owned_by(&peer);
            let before = old.owned_by(&peer);
            let gained = now_owns.minus(&before).intersect(&held);
            if !gained.is_empty() {
                let p = self.peers.entry(peer.clone()).or_default();
                p.handoff_due = true;
                p.ae_due_ms = Some(now);
                tracing::debug!(node = %self.node, peer = %peer, partitions = %gained.ranges(), "handoff due");
            }
        }
        out
    }

    /// The partitions a session with `peer` compares: those we own or still
    /// hold, that it owns.
    pub(super) fn scope_with(&self, peer: &NodeId) -> Owned {
        if self.layout.is_full() {
            return Owned::ALL;
        }
        self.mine
            .union(&self.held)
            .intersect(&self.layout.owned_by(peer))
    }

    /// What `peer` should receive of delta `d`: the delta, or its stub when
    /// the peer does not own the key's partition.
    pub(super) fn for_peer(&self, peer: &NodeId, d: &Delta) -> Delta {
        if self.layout.is_full()
            || is_internal(&d.key)
            || self.layout.owns(peer, placement::partition_of(&d.key))
        {
            d.clone()
        } else {
            placement::stub(d)
        }
    }

    /// Stubs received for partitions we own mean a value we lack: run
    /// anti-entropy soon with a live co-owner of each such partition.
    pub(super) fn note_stubs(&mut self, deltas: &[Delta], now: u64) {
        if self.layout.is_full() {
            return;
        }
        for d in deltas {
            if !placement::is_stub(&d.entry) {
                continue;
            }
            let p = placement::partition_of(&d.key);
            if !self.mine.contains(p) {
                continue;
            }
            self.progress.stubs_for_owned += 1;
            let co_owner = self
                .layout
                .owners(p)
                .iter()
                .find(|o| **o != self.node && self.peers.get(*o).is_some_and(|x| x.stats.up))
                .cloned();
            if let Some(o) = co_owner {
                let peer = self.peers.entry(o).or_default();
                if peer.ae_due_ms.is_none() {
                    peer.ae_due_ms = Some(now);
                    peer.stub_repair = true;
                }
            }
        }
    }

    /// Refreshes which partitions we hold data of (cheap: 16 Merkle reads),
    /// and drops the data of each partition we no longer own once the
    /// layout has held for `rebalance_after_ms` and every owner of the
    /// partition has since been seen holding all of it: an anti-entropy
    /// session with that owner, begun under this layout and covering the
    /// partition, found its subtree equal to ours. (Equal digests mean the
    /// owner serves, hence holds durably, every item we have.) Not a
    /// consensus: two nodes whose views of the membership disagree for
    /// longer than the grace period could each drop after confirming with
    /// the other.
    pub(super) fn refresh_held(&mut self, now: u64, store: &dyn ReplicaReader) -> Vec<Effect> {
        let mut out = Vec::new();
        if self.layout.is_full() {
            return out;
        }
        self.held = held(store).union(&self.mine);
        let handing_off = self.held.minus(&self.mine);
        self.progress.held_not_owned = handing_off.len();
        let mut ops = Vec::new();
        // Only a layout that held for the grace period: while views of the
        // membership still disagree, an owner we confirm with may itself
        // be handing the partition off.
        let settled = now.saturating_sub(self.layout_since_ms) >= self.config.rebalance_after_ms;
        let candidates = if settled {
            handing_off.minus(&self.dropping)
        } else {
            Owned::NONE
        };
        for p in candidates.iter() {
            let owners: Vec<&NodeId> = self
                .layout
                .owners(p)
                .iter()
                .filter(|o| **o != self.node)
                .collect();
            let confirmed = self.confirmed.get(&p);
            if !owners.is_empty()
                && owners
                    .iter()
                    .all(|o| confirmed.is_some_and(|c| c.contains(*o)))
            {
                self.dropping.insert(p);
                ops.push(crate::store::Op::DropPartition(p));
            }
        }
        if !ops.is_empty() {
            tracing::info!(node = %self.node, partitions = ops.len(), "dropping handed-off partitions");
            let me = self.node.clone();
            self.commit(&me, ops, super::PendingKind::Dropped, now, &mut out);
        }
        out
    }

    /// A session with `peer` ended well: `equal` partitions were found
    /// equal on both sides, `differed` were reconciled (and are checked
    /// again by a follow-up session when we are handing them off).
    pub(super) fn session_confirmed(
        &mut self,
        peer: &NodeId,
        equal: Owned,
        differed: Owned,
        now: u64,
    ) {
        if self.layout.is_full() {
            return;
        }
        let handing_off = self.held.minus(&self.mine);
        for p in equal.intersect(&handing_off).iter() {
            self.confirmed.entry(p).or_default().insert(peer.clone());
        }
        if !differed.intersect(&handing_off).is_empty() {
            let due = now + self.config.ae_after_connect_ms;
            let p = self.peers.entry(peer.clone()).or_default();
            p.handoff_due = true;
            p.ae_due_ms = Some(due);
        }
    }

    /// The outcome of a drop commit.
    pub(super) fn dropped(&mut self, outcomes: &[crate::store::Outcome]) {
        for o in outcomes {
            if let crate::store::Outcome::Dropped { keys } = o {
                self.progress.entries_dropped += keys;
                self.progress.partitions_dropped += 1;
            }
        }
        self.dropping = Owned::NONE;
    }

    /// The trigger of a due (re)connect session with `peer`.
    pub(super) fn due_trigger(&mut self, peer: &NodeId) -> AeTrigger {
        let Some(p) = self.peers.get_mut(peer) else {
            return AeTrigger::Reconnect;
        };
        if std::mem::take(&mut p.handoff_due) {
            AeTrigger::Handoff
        } else if std::mem::take(&mut p.stub_repair) {
            AeTrigger::StubRepair
        } else {
            AeTrigger::Reconnect
        }
    }

    pub fn placement_progress(&self) -> placement::Progress {
        let mut p = self.progress.clone();
        p.replication_factor = self.layout.replication_factor;
        p.eligible_members = self.layout.members.len();
        p.owned = self.mine.len();
        p.owned_ranges = self.mine.ranges();
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_follows_the_tree_levels() {
        let mut s = Owned::NONE;
        s.insert(0x35);
        assert!(in_scope(&s, NodeRef::ROOT));
        assert!(in_scope(&s, NodeRef { level: 1, index: 3 }));
        assert!(!in_scope(&s, NodeRef { level: 1, index: 2 }));
        assert!(in_scope(
            &s,
            NodeRef {
                level: 2,
                index: 0x35
            }
        ));
        assert!(!in_scope(
            &s,
            NodeRef {
                level: 2,
                index: 0x36
            }
        ));
        assert!(in_scope(
            &s,
            NodeRef {
                level: 3,
                index: 0x35 * 16 + 7
            }
        ));
        assert!(in_scope(
            &s,
            NodeRef {
                level: 4,
                index: 0x35ff
            }
        ));
        assert!(!in_scope(
            &s,
            NodeRef {
                level: 4,
                index: 0x3600
            }
        ));
        assert!(!in_scope(&Owned::NONE, NodeRef::ROOT));
        assert!(in_scope(&Owned::ALL, NodeRef { level: 4, index: 9 }));
    }
}
