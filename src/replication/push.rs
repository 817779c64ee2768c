//! Push: deltas that just became durable here go to live peers at once.
//!
//! One message per peer per commit group (cut at the message caps), so
//! batching follows the group commit for free. Own writes go to every live
//! peer when there are at most `push_fanout` of them, else to `push_fanout`
//! random ones. Received deltas are relayed only when the cluster is larger
//! than the fanout (the origin could not reach everyone itself); in a small
//! cluster relaying would only multiply messages by N, and the periodic pull
//! covers a link that is down on one side only.

use std::collections::BTreeMap;

use rand::seq::SliceRandom;

use super::msg::{approx_size, chunks};
use super::ReplicaReader;
use super::{Effect, Msg, PendingKind, Replicator};
use crate::model::{Delta, NodeId};

impl Replicator {
    /// Deltas just made durable here, own or received, in commit order (what
    /// the `Committer`'s delta sink hands over). Returns the pushes.
    pub fn on_committed(
        &mut self,
        deltas: &[Delta],
        now: u64,
        store: &dyn ReplicaReader,
    ) -> Vec<Effect> {
        let _ = now;
        self.push_committed(deltas, false, store)
    }

    /// [`Replicator::on_committed`] while a quorum write waits here: own
    /// deltas go to every live peer (not `push_fanout` of them), and the
    /// pushes ask for a durable ack (`Msg::Ack`).
    pub fn on_committed_for_quorum(
        &mut self,
        deltas: &[Delta],
        now: u64,
        store: &dyn ReplicaReader,
    ) -> Vec<Effect> {
        let _ = now;
        self.push_committed(deltas, true, store)
    }

    fn push_committed(
        &mut self,
        deltas: &[Delta],
        ack: bool,
        store: &dyn ReplicaReader,
    ) -> Vec<Effect> {
        let mut out = Vec::new();
        let live = self.live_peers();
        if live.is_empty() || deltas.is_empty() {
            return out;
        }
        let fanout = self.config.push_fanout;
        let own_targets: Vec<NodeId> = if ack || live.len() <= fanout {
            live.clone()
        } else {
            live.choose_multiple(&mut self.rng, fanout)
                .cloned()
                .collect()
        };
        // Relay targets per origin, chosen once per group so each origin's
        // deltas reach a peer in order.
        let mut relay_targets: BTreeMap<NodeId, Vec<NodeId>> = BTreeMap::new();
        let mut per_peer: BTreeMap<NodeId, Vec<Delta>> = BTreeMap::new();
        for d in deltas {
            let targets = if d.origin == self.node {
                own_targets.clone()
            } else {
                relay_targets
                    .entry(d.origin.clone())
                    .or_insert_with(|| {
                        let others: Vec<NodeId> =
                            live.iter().filter(|p| **p != d.origin).cloned().collect();
                        if others.len() <= fanout {
                            Vec::new()
                        } else {
                            others
                                .choose_multiple(&mut self.rng, fanout)
                                .cloned()
                                .collect()
                        }
                    })
                    .clone()
            };
            for t in targets {
                let d = self.for_peer(&t, d);
                per_peer.entry(t).or_default().push(d);
            }
        }
        if per_peer.is_empty() {
            return out;
        }
        let clock = store.clock();
        for (peer, ds) in per_peer {
            let n = ds.len() as u64;
            for chunk in chunks(
                ds,
                self.config.max_items_per_msg,
                self.config.max_msg_bytes,
                |d| approx_size(&d.key, &d.entry),
            ) {
                let ack = ack && chunk.iter().any(|d| d.origin == self.node);
                out.push(Effect::Send {
                    to: peer.clone(),
                    msg: Msg::Push {
                        clock,
                        deltas: chunk,
                        ack,
                    },
                });
            }
            self.peers.entry(peer).or_default().stats.deltas_sent += n;
        }
        out
    }

    pub(super) fn on_push(
        &mut self,
        from: &NodeId,
        deltas: Vec<Delta>,
        ack: bool,
        now: u64,
        store: &dyn ReplicaReader,
        out: &mut Vec<Effect>,
    ) {
        if ack {
            self.acks_asked(from, deltas.is_empty(), now, store, out);
        }
        if deltas.is_empty() {
            return;
        }
        self.peers
            .entry(from.clone())
            .or_default()
            .stats
            .deltas_received += deltas.len() as u64;
        tracing::trace!(node = %self.node, peer = %from, n = deltas.len(), ack, "push received");
        self.note_stubs(&deltas, now);
        let ops = deltas.into_iter().map(crate::store::Op::Delta).collect();
        let kind = PendingKind::Deltas {
            pull: None,
            more: false,
        };
        self.commit(from, ops, kind, now, out);
    }
}
