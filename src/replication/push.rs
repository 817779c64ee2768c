//! Push: deltas that just became durable here go to live peers at once.
//!
//! One message per peer per commit group (cut at the message caps), so
//! batching follows the group commit for free. Own writes go to every live
//! peer when there are at most `push_fanout` of them, else to `push_fanout`
//! random ones. Received deltas are relayed only when the cluster is larger
//! than the fanout (the origin could not reach everyone itself); in a small
//! cluster relaying would only multiply messages by N, and the periodic pull
//! covers a link that is down on one side only.
//!
//! **Fleet size.** Beyond the fanout this is infection-style gossip: each
//! node forwards each delta the first time it makes it durable (a second
//! copy is a duplicate to the store, so it goes no further) to `push_fanout`
//! random live peers. A write reaches every node in O(log N) hops with high
//! probability (`benches/fleet.rs`: 5 hops at 100 nodes, 8 at 1,000), at a
//! cost of `push_fanout` messages per node per write whatever N is; the
//! origin's own cost is `push_fanout` messages, not N − 1. The few nodes
//! gossip misses get it from the periodic pull (one random peer per
//! `pull_interval_ms`) or anti-entropy.

use std::collections::BTreeMap;

use rand::seq::SliceRandom;

use super::msg::{approx_size, chunks, Cover};
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
        if !self.layout.is_full() {
            return self.push_to_owners(deltas, ack, store);
        }
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
                        // The origin pushed to everyone iff it had at most
                        // `fanout` live peers: about as many as we have.
                        if live.len() <= fanout {
                            return Vec::new();
                        }
                        let others: Vec<NodeId> =
                            live.iter().filter(|p| **p != d.origin).cloned().collect();
                        if others.len() <= fanout {
                            others
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
                    msg: Msg::push(clock, chunk, ack, None),
                });
            }
            self.peers.entry(peer).or_default().stats.deltas_sent += n;
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_push(
        &mut self,
        from: &NodeId,
        deltas: Vec<Delta>,
        ack: bool,
        cover: Option<Cover>,
        now: u64,
        store: &dyn ReplicaReader,
        out: &mut Vec<Effect>,
    ) {
        if ack {
            self.acks_asked(from, deltas.is_empty() && cover.is_none(), now, store, out);
        }
        if let Some(cover) = cover {
            self.on_covered(from, deltas, cover, None, now, out);
            return;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{Digest, NodeRef};
    use crate::model::{Entry, Hlc, Version, VersionVector};
    use crate::replication::ReplicationConfig;
    use crate::store::LogRead;

    /// A node with nothing stored.
    struct Empty;

    impl ReplicaReader for Empty {
        fn clock(&self) -> Hlc {
            Hlc(0)
        }
        fn observe_clock(&self, _: Hlc, _: u64) -> bool {
            true
        }
        fn version_vector(&self) -> VersionVector {
            VersionVector::default()
        }
        fn merkle_root(&self) -> Digest {
            [0; 16]
        }
        fn merkle_children(&self, _: NodeRef) -> Option<Vec<Digest>> {
            None
        }
        fn get(&self, _: &str) -> crate::store::Result<Option<Entry>> {
            Ok(None)
        }
        fn bucket_versions(&self, _: u16) -> crate::store::Result<Vec<(String, Version, bool)>> {
            Ok(Vec::new())
        }
        fn deltas_after(&self, _: &NodeId, _: u64, _: usize) -> crate::store::Result<LogRead> {
            Ok(LogRead::Deltas(Vec::new()))
        }
    }

    fn id(i: usize) -> NodeId {
        NodeId::new(format!("p{i}")).unwrap()
    }

    fn with_peers(n: usize) -> Replicator {
        let mut r = Replicator::new(NodeId::new("me").unwrap(), ReplicationConfig::default(), 7);
        for i in 0..n {
            r.peer_up(&id(i), 0, &Empty);
        }
        r
    }

    fn delta_from(origin: NodeId) -> Delta {
        Delta {
            origin: origin.clone(),
            seq: 1,
            key: "k".into(),
            entry: Entry {
                version: Version {
                    hlc: Hlc(1),
                    node: origin,
                },
                value: Some(b"v".to_vec()),
                meta: Default::default(),
            },
        }
    }

    fn push_targets(fx: &[Effect]) -> Vec<NodeId> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Send {
                    to,
                    msg: Msg::Push { .. },
                } => Some(to.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_received_delta_is_relayed_only_when_its_origin_could_not_reach_everyone() {
        // 8 live peers (the fanout): the origin pushed to all of them.
        let mut r = with_peers(8);
        assert!(push_targets(&r.on_committed(&[delta_from(id(0))], 0, &Empty)).is_empty());
        // 9: the origin reached 8 of them; we relay to everyone but it.
        let mut r = with_peers(9);
        let mut to = push_targets(&r.on_committed(&[delta_from(id(0))], 0, &Empty));
        to.sort();
        assert_eq!(to, (1..9).map(id).collect::<Vec<_>>());
        // 1,000: to `push_fanout` of them, not N.
        let mut r = with_peers(1_000);
        let to = push_targets(&r.on_committed(&[delta_from(id(0))], 0, &Empty));
        assert_eq!(to.len(), 8);
        assert!(!to.contains(&id(0)));
        // An own write in a fleet goes to the fanout too.
        let own = delta_from(NodeId::new("me").unwrap());
        assert_eq!(push_targets(&r.on_committed(&[own], 0, &Empty)).len(), 8);
    }

    /// Sharded: each own write goes to the live owners of its key only, and
    /// the covers sent to one peer tile our stream with no gap and no
    /// overlap, each cut to that peer's partitions; nothing is relayed.
    #[test]
    fn sharded_pushes_reach_owners_only_under_covers_that_tile_the_stream() {
        use crate::placement::{partition_of, Layout};
        let me = NodeId::new("me").unwrap();
        let mut r = with_peers(5);
        let ids: Vec<NodeId> = std::iter::once(me.clone()).chain((0..5).map(id)).collect();
        let layout = std::sync::Arc::new(Layout::compute(ids, Some(3)));
        r.set_layout(layout.clone(), 0, &Empty);
        let mut next_from: BTreeMap<NodeId, u64> = BTreeMap::new();
        let (mut seq, mut delivered, mut owed) = (0u64, 0usize, 0usize);
        for group in 0..50 {
            let ds: Vec<Delta> = (0..3)
                .map(|i| {
                    seq += 1;
                    let mut d = delta_from(me.clone());
                    d.seq = seq;
                    d.key = format!("k{group}-{i}");
                    d
                })
                .collect();
            owed += ds
                .iter()
                .map(|d| {
                    layout
                        .owners(partition_of(&d.key))
                        .iter()
                        .filter(|o| **o != me)
                        .count()
                })
                .sum::<usize>();
            for e in r.on_committed(&ds, 0, &Empty) {
                let Effect::Send {
                    to,
                    msg:
                        Msg::Push {
                            deltas,
                            cover: Some(c),
                            ..
                        },
                } = e
                else {
                    panic!("not a covered push: {e:?}");
                };
                assert_eq!(c.scope, layout.owned_by(&to));
                if let Some(f) = next_from.get(&to) {
                    assert_eq!(c.from, *f, "covers to {to} tile the stream");
                }
                assert_eq!(c.to, seq);
                next_from.insert(to.clone(), c.to + 1);
                assert!(!deltas.is_empty());
                assert!(deltas
                    .iter()
                    .all(|d| layout.owns(&to, partition_of(&d.key)) && d.seq >= c.from));
                delivered += deltas.len();
            }
        }
        assert_eq!(delivered, owed, "every owner got each of its writes once");
        assert!(
            r.on_committed(&[delta_from(id(0))], 0, &Empty).is_empty(),
            "a received delta is not relayed: its origin pushed it to the owners"
        );
    }

    #[test]
    fn peers_coming_up_in_a_fleet_cost_about_fanout_catch_ups_not_n() {
        let mut r = Replicator::new(NodeId::new("me").unwrap(), ReplicationConfig::default(), 3);
        let pulls: usize = (0..1_000)
            .map(|i| {
                r.peer_up(&id(i), 0, &Empty)
                    .iter()
                    .filter(|e| {
                        matches!(
                            e,
                            Effect::Send {
                                msg: Msg::PullRequest { .. },
                                ..
                            }
                        )
                    })
                    .count()
            })
            .sum();
        // Every one of the first 8, then each with chance 8 / live:
        // about 8 · (1 + ln(1000 / 8)) ≈ 47.
        assert!(
            (8..=90).contains(&pulls),
            "{pulls} catch-up pulls for 1,000 peers"
        );
        assert_eq!(r.live_peers().len(), 1_000, "all are replication targets");
    }
}
