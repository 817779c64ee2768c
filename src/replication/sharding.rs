//! What replication does differently when keys have owners
//! (`crate::placement`): pushes of a write to its owners only, pulls of an
//! origin's deltas in the asker's partitions, anti-entropy restricted to the
//! partitions both sides store, and handoff when the layout changes. With a
//! full layout (the default) none of this runs.
//!
//! **Covered streams.** Each origin still numbers its writes 1, 2, 3, …
//! without gaps, but a node receives only the writes of the partitions it
//! owns. A push (or pull answer) from the origin carries a [`Cover`]: the
//! seq range it stands for and the partitions it was cut for; the receiver
//! logs the deltas and moves its version vector over the rest of the range
//! (`store::Op::Skip`), in one durable batch. So its vector means
//! "complete, for my partitions, up to here": gap detection, the own-origin
//! fence and cumulative quorum acks work as before, and a write costs
//! messages, commits and log records on its R owners only, not on all N
//! nodes. The origin pushes each own write straight to the key's owners
//! (R − 1 messages, no gossip relay: every owner gets it in one hop); the
//! periodic pull and a gap pull ask an origin for its own stream, cut to
//! the asker's partitions. Internal keys (API keys) are in every scope.
//! What this gives up: only the origin serves its stream (a non-owner has
//! no copy), so a delta an owner missed while the origin is unreachable
//! reaches it by anti-entropy with a co-owner, which also repairs a cover
//! whose scope lacked a partition the receiver owns (views of the
//! membership differed for a moment).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::msg::{approx_size, chunks, Cover};
use super::ReplicaReader;
use super::{AeTrigger, Effect, Msg, PendingKind, Replicator};
use crate::merkle::{NodeRef, ZERO};
use crate::model::{is_internal, Delta, NodeId, VersionVector};
use crate::placement::{self, Layout, Owned};
use crate::store::{LogRead, Op};

/// The ops that apply a covered range: its deltas, and a skip over every
/// hole between them (seqs of partitions the receiver does not own).
pub(super) fn covered_ops(origin: &NodeId, cover: Cover, deltas: Vec<Delta>) -> Vec<Op> {
    let mut ops = Vec::with_capacity(deltas.len() + 2);
    let mut next = cover.from;
    for d in deltas {
        if d.seq > next {
            ops.push(Op::Skip {
                origin: origin.clone(),
                from: next,
                to: d.seq - 1,
            });
        }
        next = d.seq + 1;
        ops.push(Op::Delta(d));
    }
    if next <= cover.to {
        ops.push(Op::Skip {
            origin: origin.clone(),
            from: next,
            to: cover.to,
        });
    }
    ops
}

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
    /// handoff that streams the data to new owners. Cost: between two
    /// sharded layouts, O(256·R) plus the partitions whose owners changed
    /// (a join or leave moves ≈ 256·R/N), not O(N) per member: a node of a
    /// 1,000-node fleet adopts ~1,000 layouts while the fleet forms.
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
        // What each peer gained (is an owner of now, was not before), and
        // which peers' scopes changed.
        let mut gained: BTreeMap<NodeId, Owned> = BTreeMap::new();
        let mut changed: BTreeSet<NodeId> = BTreeSet::new();
        if self.layout.is_full() || old.is_full() {
            // To or from full replication: every scope is new.
            let before: BTreeMap<NodeId, Owned> = std::mem::take(&mut self.scopes);
            if !self.layout.is_full() {
                for p in 0..=255u8 {
                    for o in self.layout.owners(p) {
                        self.scopes.entry(o.clone()).or_default().insert(p);
                    }
                }
            }
            if !old.is_full() {
                // Now full: each member gains what it did not own.
                for m in &self.layout.members {
                    let had = before.get(m).copied().unwrap_or(Owned::NONE);
                    gained.insert(m.clone(), Owned::ALL.minus(&had));
                }
            }
            changed.extend(self.peers.keys().cloned());
        } else {
            for p in 0..=255u8 {
                let (was, is) = (old.owners(p), self.layout.owners(p));
                if was == is {
                    continue;
                }
                for o in was.iter().filter(|o| !is.contains(o)) {
                    if let Some(s) = self.scopes.get_mut(o) {
                        s.remove(p);
                        if s.is_empty() {
                            self.scopes.remove(o);
                        }
                    }
                    changed.insert(o.clone());
                }
                for o in is.iter().filter(|o| !was.contains(o)) {
                    self.scopes.entry(o.clone()).or_default().insert(p);
                    gained.entry(o.clone()).or_default().insert(p);
                    changed.insert(o.clone());
                }
            }
        }
        // A cover computed under the old layout skipped writes of partitions
        // the peer may own now: the next push to it starts a fresh range,
        // and the peer pulls what lies between (cut to its new partitions).
        // A peer whose partitions did not change keeps its range.
        for peer in &changed {
            if let Some(p) = self.peers.get_mut(peer) {
                p.covered_to = None;
            }
        }
        self.layout_epoch += 1;
        self.layout_since_ms = now;
        self.mine = self.scope_of(&self.node);
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
        for (peer, gained) in gained {
            let gained = gained.intersect(&held);
            if peer == self.node || gained.is_empty() {
                continue;
            }
            let p = self.peers.entry(peer.clone()).or_default();
            p.handoff_due = true;
            p.ae_due_ms = Some(now);
            tracing::debug!(node = %self.node, peer = %peer, partitions = %gained.ranges(), "handoff due");
        }
        out
    }

    /// The partitions a session with `peer` compares: those we own or still
    /// hold, that it owns.
    pub(super) fn scope_with(&self, peer: &NodeId) -> Owned {
        if self.layout.is_full() {
            return Owned::ALL;
        }
        self.mine.union(&self.held).intersect(&self.scope_of(peer))
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
        let mut parts = Owned::NONE;
        for d in deltas.iter().filter(|d| placement::is_stub(&d.entry)) {
            let p = placement::partition_of(&d.key);
            if self.mine.contains(p) {
                self.progress.stubs_for_owned += 1;
                parts.insert(p);
            }
        }
        if !parts.is_empty() {
            self.repair_partitions(parts, now);
        }
    }

    /// Refreshes which partitions we hold data of (cheap: 16 Merkle reads),
    /// and drops the data of each partition we no longer own once the
    /// layout has held for `rebalance_after_ms` and every owner of the
    /// partition has since been seen holding all of it: an anti-entropy
    /// session with that owner, begun under this layout and covering the
    /// partition, wanted none of our items there (it serves, hence holds
    /// durably, each of them or a newer version; it may hold more, since
    /// writes after the move reach only the owners). Not a
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
        // Only a layout that held for the grace period: while views of the
        // membership still disagree, an owner we confirm with may itself
        // be handing the partition off.
        let settled = now.saturating_sub(self.layout_since_ms) >= self.config.rebalance_after_ms;
        // One partition per commit group: dropping all handed-off partitions
        // at once made one batch of ~500,000 deletions in the 1 M-key
        // rebalance bench, which stalled the node long enough for its peers
        // to declare it dead (and the layout to change again). The next
        // partition goes as soon as this one is durable
        // ([`Replicator::on_commit_outcomes`]); a drop whose commit timed
        // out is no longer pending, so it blocks nothing.
        let in_flight = self
            .pending
            .values()
            .any(|p| matches!(p.kind, super::PendingKind::Dropped));
        if !settled || in_flight {
            return out;
        }
        // Every other owner was seen holding all of it.
        let confirmed_by_all = |p: &u8| {
            let others: Vec<&NodeId> = self
                .layout
                .owners(*p)
                .iter()
                .filter(|o| **o != self.node)
                .collect();
            let confirmed = self.confirmed.get(p);
            !others.is_empty()
                && others
                    .iter()
                    .all(|o| confirmed.is_some_and(|c| c.contains(*o)))
        };
        if let Some(p) = handing_off.iter().find(confirmed_by_all) {
            tracing::info!(node = %self.node, partition = p, handing_off = handing_off.len(), "dropping a handed-off partition");
            let me = self.node.clone();
            let ops = vec![crate::store::Op::DropPartition(p)];
            self.commit(&me, ops, super::PendingKind::Dropped, now, &mut out);
        }
        out
    }

    /// A session with `peer` ended well: in the `confirmed` partitions it
    /// holds every item we hold (or a newer one): it wanted nothing of ours
    /// there. It may hold more (writes made since we stopped owning a
    /// partition reach only its owners), which does not matter for a drop.
    /// In `sent` it wanted entries, now sent: a follow-up session checks
    /// again when we are handing those partitions off.
    pub(super) fn session_confirmed(
        &mut self,
        peer: &NodeId,
        confirmed: Owned,
        sent: Owned,
        now: u64,
    ) {
        if self.layout.is_full() {
            return;
        }
        let handing_off = self.held.minus(&self.mine);
        for p in confirmed.intersect(&handing_off).iter() {
            self.confirmed.entry(p).or_default().insert(peer.clone());
        }
        if !sent.intersect(&handing_off).is_empty() {
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
    }

    /// The trigger of a due (re)connect session with `peer`.
    pub(super) fn due_trigger(&mut self, peer: &NodeId) -> AeTrigger {
        let Some(p) = self.peers.get_mut(peer) else {
            return AeTrigger::Reconnect;
        };
        if std::mem::take(&mut p.handoff_due) {
            AeTrigger::Handoff
        } else if std::mem::take(&mut p.partition_repair) {
            AeTrigger::PartitionRepair
        } else {
            AeTrigger::Reconnect
        }
    }

    /// The partitions `peer` owns (what a push to it is cut to).
    fn scope_of(&self, peer: &NodeId) -> Owned {
        if self.layout.is_full() {
            return Owned::ALL;
        }
        self.scopes.get(peer).copied().unwrap_or(Owned::NONE)
    }

    /// Sharded push: each own delta to the live owners of its key (every
    /// live peer for an internal key), under a [`Cover`] that runs from the
    /// end of the previous push to that peer. Received deltas are not
    /// relayed: their origin sent them to every owner itself.
    pub(super) fn push_to_owners(
        &mut self,
        deltas: &[Delta],
        ack: bool,
        store: &dyn ReplicaReader,
    ) -> Vec<Effect> {
        let mut out = Vec::new();
        let own: Vec<&Delta> = deltas.iter().filter(|d| d.origin == self.node).collect();
        let (Some(first), Some(last)) = (own.first(), own.last()) else {
            return out;
        };
        let (first, last) = (first.seq, last.seq);
        let mut per_peer: std::collections::BTreeMap<NodeId, Vec<Delta>> = Default::default();
        let live =
            |r: &Replicator, p: &NodeId| *p != r.node && r.peers.get(p).is_some_and(|x| x.stats.up);
        for d in &own {
            if is_internal(&d.key) {
                for (p, _) in self
                    .peers
                    .iter()
                    .filter(|(p, x)| x.stats.up && **p != self.node)
                {
                    per_peer.entry(p.clone()).or_default().push((*d).clone());
                }
                continue;
            }
            for o in self.layout.owners(placement::partition_of(&d.key)) {
                if live(self, o) {
                    per_peer.entry(o.clone()).or_default().push((*d).clone());
                }
            }
        }
        let clock = store.clock();
        for (peer, ds) in per_peer {
            let scope = self.scope_of(&peer);
            let p = self.peers.entry(peer.clone()).or_default();
            let mut from = p.covered_to.map_or(first, |c| (c + 1).min(first));
            p.covered_to = Some(last);
            p.stats.deltas_sent += ds.len() as u64;
            let parts = chunks(
                ds,
                self.config.max_items_per_msg,
                self.config.max_msg_bytes,
                |d| approx_size(&d.key, &d.entry),
            );
            let n = parts.len();
            for (i, chunk) in parts.into_iter().enumerate() {
                let to = if i + 1 == n {
                    last
                } else {
                    chunk.last().map_or(from, |d| d.seq)
                };
                let cover = Cover { from, to, scope };
                from = to + 1;
                out.push(Effect::Send {
                    to: peer.clone(),
                    msg: Msg::push(clock, chunk, ack, Some(cover)),
                });
            }
        }
        out
    }

    /// A covered push or pull answer from `from` (its own origin's deltas):
    /// applied with skips over the holes; partitions we own that the cover
    /// left out are repaired by anti-entropy.
    pub(super) fn on_covered(
        &mut self,
        from: &NodeId,
        deltas: Vec<Delta>,
        cover: Cover,
        kind: Option<PendingKind>,
        now: u64,
        out: &mut Vec<Effect>,
    ) {
        let p = self.peers.entry(from.clone()).or_default();
        if deltas.iter().any(|d| d.origin != *from) {
            p.stats.bad_messages += 1;
            tracing::warn!(node = %self.node, peer = %from, "covered deltas of another origin than the sender; ignored");
            return;
        }
        p.stats.deltas_received += deltas.len() as u64;
        if !self.layout.is_full() {
            let left_out = self.mine.minus(&cover.scope);
            if !left_out.is_empty() {
                tracing::debug!(node = %self.node, peer = %from, partitions = %left_out.ranges(),
                    "a cover left out partitions we own (views of the layout differ); anti-entropy");
                self.repair_partitions(left_out, now);
            }
        }
        let ops = covered_ops(from, cover, deltas);
        let kind = kind.unwrap_or(PendingKind::Deltas {
            pull: None,
            more: false,
        });
        self.commit(from, ops, kind, now, out);
    }

    /// Runs anti-entropy soon with a live co-owner of each of `parts` (those
    /// sessions compare the partitions both store).
    pub(super) fn repair_partitions(&mut self, parts: Owned, now: u64) {
        let mut chosen: Vec<NodeId> = Vec::new();
        for part in parts.iter() {
            let co_owner = self
                .layout
                .owners(part)
                .iter()
                .find(|o| **o != self.node && self.peers.get(*o).is_some_and(|x| x.stats.up))
                .cloned();
            if let Some(o) = co_owner {
                if !chosen.contains(&o) {
                    chosen.push(o);
                }
            }
        }
        for o in chosen {
            let peer = self.peers.entry(o).or_default();
            if peer.ae_due_ms.is_none() {
                peer.ae_due_ms = Some(now);
                peer.partition_repair = true;
            }
        }
    }

    /// A pull from a sharded node (`scope`: its partitions): our own
    /// origin's deltas after its vector entry, cut to `scope`, under a
    /// cover. Only an origin serves its stream this way (no other node has
    /// all of it). A trimmed start is answered with a cover up to the
    /// oldest retained seq and our origin listed unavailable: the asker
    /// moves over it and gets that older data by anti-entropy.
    pub(super) fn on_scoped_pull_request(
        &mut self,
        from: &NodeId,
        req: u64,
        theirs: &VersionVector,
        scope: Owned,
        store: &dyn ReplicaReader,
        out: &mut Vec<Effect>,
    ) {
        let after = theirs.get(&self.node);
        let mine = store.version_vector().get(&self.node);
        let mut deltas = Vec::new();
        let mut cover = None;
        let mut unavailable = Vec::new();
        if after < mine {
            match store.deltas_after(&self.node, after, self.config.max_items_per_msg) {
                Ok(LogRead::Deltas(ds)) => {
                    let mut budget = self.config.max_msg_bytes;
                    let mut to = after;
                    for d in ds {
                        if placement::stores(&scope, &d.key) {
                            let size = approx_size(&d.key, &d.entry);
                            if size > budget && !deltas.is_empty() {
                                break;
                            }
                            budget = budget.saturating_sub(size);
                            to = d.seq;
                            deltas.push(d);
                        } else {
                            to = d.seq;
                        }
                    }
                    if to > after {
                        cover = Some(Cover {
                            from: after + 1,
                            to,
                            scope,
                        });
                    }
                }
                Ok(LogRead::Unavailable { first_retained }) => {
                    tracing::debug!(node = %self.node, peer = %from, after, first_retained,
                        "scoped pull reaches before our oldest logged delta");
                    unavailable.push(self.node.clone());
                    if first_retained > after + 1 {
                        cover = Some(Cover {
                            from: after + 1,
                            to: first_retained - 1,
                            scope,
                        });
                    }
                }
                Err(e) => {
                    tracing::error!(node = %self.node, peer = %from, error = %e, "cannot read own log for a pull");
                }
            }
        }
        let more = cover.is_some_and(|c| c.to < mine);
        let p = self.peers.entry(from.clone()).or_default();
        p.stats.pulls_served += 1;
        p.stats.deltas_sent += deltas.len() as u64;
        if !unavailable.is_empty() {
            p.stats.pulls_we_answered_unavailable += 1;
        }
        out.push(Effect::Send {
            to: from.clone(),
            msg: Msg::PullResponse {
                clock: store.clock(),
                req,
                deltas,
                unavailable,
                more,
                cover,
            },
        });
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
    fn a_cover_is_applied_as_its_deltas_and_skips_over_the_holes() {
        let b = NodeId::new("b").unwrap();
        let d = |seq| Delta {
            origin: b.clone(),
            seq,
            key: format!("k{seq}"),
            entry: crate::model::Entry {
                version: crate::model::Version {
                    hlc: crate::model::Hlc(seq),
                    node: b.clone(),
                },
                value: Some(b"v".to_vec()),
                meta: Default::default(),
            },
        };
        let cover = Cover {
            from: 3,
            to: 9,
            scope: Owned::ALL,
        };
        let shape: Vec<String> = covered_ops(&b, cover, vec![d(4), d(7)])
            .iter()
            .map(|op| match op {
                Op::Skip { from, to, .. } => format!("skip {from}-{to}"),
                Op::Delta(d) => format!("delta {}", d.seq),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            shape,
            ["skip 3-3", "delta 4", "skip 5-6", "delta 7", "skip 8-9"]
        );
        let ends: Vec<usize> = [vec![d(3), d(9)], vec![]]
            .into_iter()
            .map(|ds| covered_ops(&b, cover, ds).len())
            .collect();
        assert_eq!(ends, [3, 1], "no empty skip at either end");
    }

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
