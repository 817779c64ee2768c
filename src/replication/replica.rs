//! What a replica does for another node's quorum request: durable acks of
//! pushed deltas, answers to quorum reads, and read repair. The waiting
//! side (counting acks and replies) is the node machine's, with
//! [`super::quorum::QuorumTracker`] and [`super::read_quorum::ReadCoordinator`].
//!
//! Guarantees: an ack names the receiver's version-vector entry for the
//! asker's origin, read after a commit of deltas is reported durable: the
//! store serves only durable state, and its vector counts deltas without a
//! gap below, so every seq up to the acked one is on disk (cumulative). A
//! read answer is the entry as the store serves it (durable state). A
//! repair is an LWW merge: it can only make the receiver newer. Costs: one
//! small message per commit of deltas while some peer waits for acks (for
//! `pull_timeout_ms` after it asked), nothing otherwise.

use super::{Effect, Msg, PendingKind, ReplicaReader, Replicator};
use crate::model::{Entry, NodeId};
use crate::store::Op;

impl Replicator {
    /// `from` asked for acks of its own deltas (a push flagged `ack`): ack
    /// what becomes durable here for a while (a gap is filled by pull, not
    /// by push). An empty flagged push is a probe (the origin's quorum
    /// write still waits; an ack may have been lost): answered at once.
    pub(super) fn acks_asked(
        &mut self,
        from: &NodeId,
        probe: bool,
        now: u64,
        store: &dyn ReplicaReader,
        out: &mut Vec<Effect>,
    ) {
        let p = self.peers.entry(from.clone()).or_default();
        p.ack_until_ms = now + self.config.pull_timeout_ms;
        if probe {
            p.acked_to = 0;
            self.send_acks(now, store, out);
        }
    }

    /// Acks, to every peer that waits for them, how far its origin is
    /// durable here: the store's version vector counts only durable deltas
    /// without a gap below, so the ack is cumulative.
    pub(super) fn send_acks(&mut self, now: u64, store: &dyn ReplicaReader, out: &mut Vec<Effect>) {
        if !self.peers.values().any(|p| now < p.ack_until_ms) {
            return;
        }
        let vv = store.version_vector();
        let clock = store.clock();
        for (id, p) in self.peers.iter_mut() {
            let seq = vv.get(id);
            if now >= p.ack_until_ms || seq <= p.acked_to {
                continue;
            }
            p.acked_to = seq;
            p.stats.acks_sent += 1;
            tracing::trace!(node = %self.node, peer = %id, origin = %id, seq, "durable ack");
            out.push(Effect::Send {
                to: id.clone(),
                msg: Msg::Ack {
                    clock,
                    origin: id.clone(),
                    seq,
                },
            });
        }
    }

    /// Asks `peer` again how far our origin is durable there (an empty
    /// push flagged `ack`), for a quorum write still waiting.
    pub fn ask_ack(&mut self, peer: &NodeId, store: &dyn ReplicaReader) -> Vec<Effect> {
        vec![Effect::Send {
            to: peer.clone(),
            msg: Msg::Push {
                clock: store.clock(),
                deltas: Vec::new(),
                ack: true,
                cover: None,
            },
        }]
    }

    /// Asks `peer` for its entry of `key`, for quorum read `req`.
    pub fn read_request(
        &mut self,
        peer: &NodeId,
        req: u64,
        key: &str,
        store: &dyn ReplicaReader,
    ) -> Vec<Effect> {
        vec![Effect::Send {
            to: peer.clone(),
            msg: Msg::ReadRequest {
                clock: store.clock(),
                req,
                key: key.to_string(),
            },
        }]
    }

    pub(super) fn on_read_request(
        &mut self,
        from: &NodeId,
        req: u64,
        key: String,
        store: &dyn ReplicaReader,
        out: &mut Vec<Effect>,
    ) {
        let entry = match store.get(&key) {
            Ok(e) => e,
            Err(e) => {
                // No answer: the reader counts this replica as silent.
                tracing::error!(node = %self.node, peer = %from, key = %key, error = %e, "cannot read for a quorum read");
                return;
            }
        };
        self.peers
            .entry(from.clone())
            .or_default()
            .stats
            .reads_served += 1;
        out.push(Effect::Send {
            to: from.clone(),
            msg: Msg::ReadReply {
                clock: store.clock(),
                req,
                key,
                entry,
            },
        });
    }

    /// Read repair: sends `peer` the newer `entry` of `key`.
    pub fn send_repair(
        &mut self,
        peer: &NodeId,
        key: &str,
        entry: Entry,
        store: &dyn ReplicaReader,
    ) -> Vec<Effect> {
        self.peers
            .entry(peer.clone())
            .or_default()
            .stats
            .read_repairs_sent += 1;
        tracing::debug!(node = %self.node, peer = %peer, key = %key, version = %entry.version, "read repair sent");
        vec![Effect::Send {
            to: peer.clone(),
            msg: Msg::Repair {
                clock: store.clock(),
                key: key.to_string(),
                entry,
            },
        }]
    }

    /// Read repair of this node's own replica: merges the newer `entry`
    /// durably.
    pub fn repair_local(&mut self, key: &str, entry: Entry, now: u64) -> Vec<Effect> {
        let mut out = Vec::new();
        tracing::debug!(node = %self.node, key = %key, version = %entry.version, "read repair of the local replica");
        let from = self.node.clone();
        let ops = vec![Op::Entry {
            key: key.to_string(),
            entry,
        }];
        self.commit(&from, ops, PendingKind::ServedEntries, now, &mut out);
        out
    }

    pub(super) fn on_repair(
        &mut self,
        from: &NodeId,
        key: String,
        entry: Entry,
        now: u64,
        out: &mut Vec<Effect>,
    ) {
        self.peers
            .entry(from.clone())
            .or_default()
            .stats
            .read_repairs_received += 1;
        let ops = vec![Op::Entry { key, entry }];
        self.commit(from, ops, PendingKind::ServedEntries, now, out);
    }
}
