//! Write quorums: which of this node's own writes wait for how many durable
//! acknowledgements ([`QuorumTracker`], sans-IO).
//!
//! A client write with `w > 1` is first made durable here (it is one of the
//! W), then waits. Its deltas go to every live replica in a push that asks
//! for an acknowledgement; a replica answers with `Msg::Ack { origin, seq }`
//! once every delta of our origin up to `seq` is durable on its disk. Acks
//! are cumulative, so one ack covers every write with a lower seq, and an
//! ack that arrives before its write registered (possible: the push leaves
//! as soon as the write is durable here) still counts: the tracker keeps
//! each peer's highest acknowledged seq.
//!
//! Guarantees: a waiter resolves exactly once — reached (acks ≥ needed), or
//! failed at its deadline or as soon as too few of its replicas remain in
//! the cluster to reach it (a peer that left). An ack counts once per peer
//! and only from the waiter's replicas; duplicates and reordering change
//! nothing. A failed write is NOT undone: it is durable here and on every
//! replica that did acknowledge, and replication carries it on (as with a
//! failed quorum write in Dynamo or Cassandra).
//!
//! An ack can be lost (a full send queue, a connection reset): a replica
//! still missing [`PROBE_MS`] after the write started, and every
//! [`PROBE_MS`] after, is named by [`QuorumTracker::probes`] so the node
//! asks it again (an empty push asking for an ack, answered at once).
//!
//! Costs: memory per waiter (its replica set) and one map entry per peer;
//! an ack costs a pass over the waiters (a handful at a time: they last at
//! most the quorum timeout). No timer of its own: deadlines and probes are
//! checked on the node's ticks with its monotonic time.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::NodeId;

/// How long a replica may stay silent before it is asked for its ack again.
pub const PROBE_MS: u64 = 250;

/// How a waiting write ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteResolved {
    /// The waiter, as given to [`QuorumTracker::wait`].
    pub id: u64,
    /// Replicas, this node included, that hold the write durably.
    pub acks: usize,
    pub needed: usize,
    /// Replicas the write counted (this node included).
    pub replicas: usize,
}

impl WriteResolved {
    pub fn reached(&self) -> bool {
        self.acks >= self.needed
    }
}

#[derive(Debug)]
struct Waiter {
    seq: u64,
    needed: usize,
    /// Replicas other than this node that have not acknowledged yet.
    missing: BTreeSet<NodeId>,
    /// Replicas (this node included) that hold the write durably.
    acks: usize,
    replicas: usize,
    deadline_ms: u64,
    /// When its missing replicas are asked again.
    probe_ms: u64,
}

impl Waiter {
    fn resolved(&self, id: u64) -> WriteResolved {
        WriteResolved {
            id,
            acks: self.acks,
            needed: self.needed,
            replicas: self.replicas,
        }
    }
}

/// Waiting own writes and each peer's acknowledged high-water mark.
#[derive(Debug)]
pub struct QuorumTracker {
    node: NodeId,
    /// Per peer, the highest seq of our origin it acknowledged durable.
    acked: BTreeMap<NodeId, u64>,
    waiters: BTreeMap<u64, Waiter>,
}

impl QuorumTracker {
    pub fn new(node: NodeId) -> QuorumTracker {
        QuorumTracker {
            node,
            acked: BTreeMap::new(),
            waiters: BTreeMap::new(),
        }
    }

    /// Own write `seq` (durable here) waits for `needed` acks among
    /// `replicas` (this node, if listed, counts at once) from `now_ms` until
    /// `deadline_ms`. Resolved at once when acks already suffice, or when
    /// too few replicas exist to give them.
    pub fn wait(
        &mut self,
        id: u64,
        seq: u64,
        needed: usize,
        replicas: impl IntoIterator<Item = NodeId>,
        now_ms: u64,
        deadline_ms: u64,
    ) -> Option<WriteResolved> {
        let mut w = Waiter {
            seq,
            needed,
            missing: BTreeSet::new(),
            acks: 1,
            replicas: 1,
            deadline_ms,
            probe_ms: now_ms + PROBE_MS,
        };
        for r in replicas {
            if r == self.node || w.missing.contains(&r) {
                continue;
            }
            w.replicas += 1;
            if self.acked.get(&r).is_some_and(|&a| a >= seq) {
                w.acks += 1;
            } else {
                w.missing.insert(r);
            }
        }
        if w.acks >= w.needed || w.acks + w.missing.len() < w.needed {
            return Some(w.resolved(id));
        }
        self.waiters.insert(id, w);
        None
    }

    /// `peer` holds every delta of our origin up to `seq` durably.
    pub fn on_ack(&mut self, peer: &NodeId, seq: u64) -> Vec<WriteResolved> {
        if *peer == self.node {
            return Vec::new();
        }
        let mark = self.acked.entry(peer.clone()).or_insert(0);
        if seq <= *mark {
            return Vec::new();
        }
        *mark = seq;
        let mut done = Vec::new();
        for (id, w) in self.waiters.iter_mut() {
            if w.seq <= seq && w.missing.remove(peer) {
                w.acks += 1;
                if w.acks >= w.needed {
                    done.push(w.resolved(*id));
                }
            }
        }
        self.remove(&done);
        done
    }

    /// Waiters whose deadline passed, failed with the acks they got.
    pub fn on_tick(&mut self, now_ms: u64) -> Vec<WriteResolved> {
        let done: Vec<WriteResolved> = self
            .waiters
            .iter()
            .filter(|(_, w)| now_ms >= w.deadline_ms)
            .map(|(id, w)| w.resolved(*id))
            .collect();
        self.remove(&done);
        done
    }

    /// Replicas to ask again for their ack (see [`PROBE_MS`]), each once.
    pub fn probes(&mut self, now_ms: u64) -> BTreeSet<NodeId> {
        let mut ask = BTreeSet::new();
        for w in self.waiters.values_mut() {
            if now_ms >= w.probe_ms {
                w.probe_ms = now_ms + PROBE_MS;
                ask.extend(w.missing.iter().cloned());
            }
        }
        ask
    }

    /// `peer` left the cluster (or was removed): it will not acknowledge.
    /// Waiters that can no longer reach their quorum fail now.
    pub fn peer_left(&mut self, peer: &NodeId) -> Vec<WriteResolved> {
        self.acked.remove(peer);
        let mut done = Vec::new();
        for (id, w) in self.waiters.iter_mut() {
            if w.missing.remove(peer) && w.acks + w.missing.len() < w.needed {
                done.push(w.resolved(*id));
            }
        }
        self.remove(&done);
        done
    }

    /// Writes waiting right now.
    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }

    fn remove(&mut self, done: &[WriteResolved]) {
        for d in done {
            self.waiters.remove(&d.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn peers() -> Vec<NodeId> {
        ["a", "b", "c", "d", "e"].map(n).to_vec()
    }

    #[test]
    fn quorum_is_reached_by_acks_of_replicas_only_and_counts_each_once() {
        let mut t = QuorumTracker::new(n("a"));
        assert_eq!(t.wait(1, 5, 3, peers(), 0, 1_000), None);
        assert!(t.on_ack(&n("zz"), 9).is_empty(), "not a replica");
        assert!(t.on_ack(&n("b"), 4).is_empty(), "older seq");
        assert!(t.on_ack(&n("b"), 5).is_empty());
        assert!(t.on_ack(&n("b"), 6).is_empty(), "same peer again");
        let done = t.on_ack(&n("c"), 7);
        assert_eq!(
            done,
            vec![WriteResolved {
                id: 1,
                acks: 3,
                needed: 3,
                replicas: 5
            }]
        );
        assert!(done[0].reached());
        assert_eq!(t.waiting(), 0);
        assert!(t.on_ack(&n("d"), 8).is_empty(), "resolved only once");
    }

    #[test]
    fn an_ack_that_came_before_the_waiter_counts() {
        let mut t = QuorumTracker::new(n("a"));
        t.on_ack(&n("b"), 10);
        let r = t.wait(1, 10, 2, peers(), 0, 1_000).unwrap();
        assert!(r.reached());
        assert_eq!(r.acks, 2);
    }

    #[test]
    fn w_one_resolves_at_once_and_deadline_fails_with_the_count() {
        let mut t = QuorumTracker::new(n("a"));
        assert!(t.wait(1, 1, 1, peers(), 0, 10).unwrap().reached());
        assert_eq!(t.wait(2, 1, 5, peers(), 0, 10), None);
        t.on_ack(&n("b"), 1);
        assert!(t.on_tick(9).is_empty());
        let done = t.on_tick(10);
        assert_eq!(done.len(), 1);
        assert!(!done[0].reached());
        assert_eq!((done[0].acks, done[0].needed), (2, 5));
        assert_eq!(t.waiting(), 0);
    }

    #[test]
    fn silent_replicas_are_probed_once_per_interval() {
        let mut t = QuorumTracker::new(n("a"));
        t.wait(1, 1, 3, ["a", "b", "c"].map(n), 100, 10_000);
        t.wait(2, 2, 3, ["a", "b", "c"].map(n), 200, 10_000);
        assert!(t.probes(100 + PROBE_MS - 1).is_empty());
        t.on_ack(&n("b"), 1);
        // Write 1 misses c; write 2 misses b (acked only seq 1) and c.
        let first: Vec<_> = t.probes(100 + PROBE_MS).into_iter().collect();
        assert_eq!(first, vec![n("c")]);
        let second: Vec<_> = t.probes(200 + PROBE_MS).into_iter().collect();
        assert_eq!(second, vec![n("b"), n("c")]);
        assert!(t.probes(200 + PROBE_MS + 1).is_empty());
    }

    #[test]
    fn a_peer_leaving_fails_waiters_that_can_no_longer_reach_quorum() {
        let mut t = QuorumTracker::new(n("a"));
        // all of a, b, c
        assert_eq!(t.wait(1, 1, 3, ["a", "b", "c"].map(n), 0, 1_000), None);
        // two of a, b, c
        assert_eq!(t.wait(2, 1, 2, ["a", "b", "c"].map(n), 0, 1_000), None);
        let done = t.peer_left(&n("c"));
        assert_eq!(done.iter().map(|d| d.id).collect::<Vec<_>>(), vec![1]);
        assert_eq!(t.waiting(), 1);
        assert_eq!(t.on_ack(&n("b"), 1).len(), 1);
        // A replica set too small from the start fails at once.
        assert!(!t
            .wait(3, 2, 3, ["a", "b"].map(n), 0, 1_000)
            .unwrap()
            .reached());
    }

    proptest! {
        /// Whatever the order of acks, duplicates and ticks, each waiter
        /// resolves exactly once, and as reached exactly when enough
        /// distinct replicas acknowledged its seq before its deadline.
        #[test]
        fn each_waiter_resolves_once_with_the_right_verdict(
            waits in proptest::collection::vec((1u64..20, 1usize..=5, 1u64..50), 1..8),
            events in proptest::collection::vec((0usize..6, 1u64..25, 0u64..60), 0..60),
        ) {
            let all = peers();
            let mut t = QuorumTracker::new(n("a"));
            let mut resolved: BTreeMap<u64, WriteResolved> = BTreeMap::new();
            let record = |rs: Vec<WriteResolved>, resolved: &mut BTreeMap<u64, WriteResolved>| {
                for r in rs {
                    assert!(resolved.insert(r.id, r).is_none(), "resolved twice");
                }
            };
            for (id, (seq, needed, deadline)) in waits.iter().enumerate() {
                if let Some(r) = t.wait(id as u64, *seq, *needed, all.clone(), 0, *deadline) {
                    record(vec![r], &mut resolved);
                }
            }
            // Events in time order: each (peer, seq) ack is delivered at `at`.
            let mut events = events.clone();
            events.sort_by_key(|e| e.2);
            let mut acked_at: BTreeMap<NodeId, Vec<(u64, u64)>> = BTreeMap::new();
            for (p, seq, at) in &events {
                record(t.on_tick(*at), &mut resolved);
                let peer = if *p < all.len() { all[*p].clone() } else { n("stranger") };
                acked_at.entry(peer.clone()).or_default().push((*seq, *at));
                record(t.on_ack(&peer, *seq), &mut resolved);
            }
            record(t.on_tick(u64::MAX), &mut resolved);
            prop_assert_eq!(resolved.len(), waits.len());
            prop_assert_eq!(t.waiting(), 0);
            for (id, (seq, needed, deadline)) in waits.iter().enumerate() {
                // Distinct replicas (other than a) whose ack covered seq in time.
                let in_time = all.iter().skip(1).filter(|p| {
                    acked_at.get(*p).is_some_and(|v| v.iter().any(|(s, at)| s >= seq && at < deadline))
                }).count();
                let r = &resolved[&(id as u64)];
                prop_assert_eq!(r.reached(), 1 + in_time >= *needed, "waiter {} {:?}", id, r);
            }
        }
    }
}
