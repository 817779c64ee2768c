//! Anti-entropy's fast path for subtrees the responder does not have at all:
//! stream every item of them, paced, instead of comparing leaf by leaf.
//!
//! **Why.** Handing a partition to a new owner (`crate::placement`) is an
//! anti-entropy session with a node whose subtree of that partition is
//! empty. The general path would descend to all 256 leaves of the
//! partition, send every item's version (`AeLeaves`), get every key back as
//! "wanted" (`AeLeafDiff`) and only then send the entries (`AeEntries`): two
//! messages and a round trip per ~1,000 keys, one request at a time, which
//! moved ~7,500 keys/s. When the responder's digest of a node (a partition
//! or below) is [`ZERO`], it holds no item there, so every one of ours is
//! newer and nothing can come back: the initiator sends the subtree's
//! entries right away as `AeEntries` (the message the responder already
//! takes, merged by LWW, filtered to the keys it stores), with no version
//! lists and no wanted keys. No new message and no new state at the
//! responder.
//!
//! **Pacing.** `AeEntries` has no answer, so after each one the initiator
//! sends a probe: `AeNodes` for the root (a cheap, existing request; its
//! `AeDigests` answer is used only as an acknowledgement). Each direction
//! between two nodes is one ordered QUIC stream and the responder handles
//! messages in order, so a probe's answer means the responder's machine has
//! taken every entry sent before it; and the responder stops reading the
//! transport while its commit pipeline is full, which holds the answer back.
//! At most [`WINDOW`] probes are outstanding: memory and queue use are
//! bounded by `WINDOW × max_msg_bytes` per session, and the sender goes at
//! the speed the receiver commits. A probe unanswered for `ae_retry_ms` is
//! sent again (the entries before it may have been dropped with it; see
//! below).
//!
//! **Correctness.** Nothing here is trusted as delivered: a streamed
//! partition counts as *sent* for the session (`Session::sent`), so it is
//! never confirmed by this session, and a handoff is followed by another
//! session that finds the subtrees equal (or repairs what a dropped message
//! lost) before the old holder may drop it. The initiator's version vector
//! does not depend on what it sent. Reading: each bucket's items are read
//! when its turn comes (versions, then the entries), so only the window's
//! entries are in memory.

use std::collections::VecDeque;

use super::msg::{approx_size, chunks};
use super::ReplicaReader;
use super::{AeTrigger, Effect, Msg, Replicator};
use crate::merkle::{leaf_range, NodeRef, ZERO};
use crate::model::{Entry, Hlc, NodeId};

/// Probes (each after one batch of entries) a session may have outstanding.
pub(super) const WINDOW: usize = 4;

/// The streaming state of one session (initiator side).
#[derive(Debug, Default)]
pub(super) struct Stream {
    /// Bucket ranges (inclusive) still to send in full.
    pending: VecDeque<(u16, u16)>,
    /// Outstanding probes: request id and when it was sent.
    probes: VecDeque<(u64, u64)>,
    /// Our clock when we last sent, for a resent probe.
    clock: Hlc,
}

impl Stream {
    /// Whether `node`, which differs, should be streamed rather than
    /// compared: the responder has nothing under it. Only a partition or
    /// a node below one (level ≥ 2), so that it lies in one partition.
    pub(super) fn wants(node: NodeRef, theirs: Option<&crate::merkle::Digest>) -> bool {
        node.level >= 2 && theirs == Some(&ZERO)
    }

    pub(super) fn push(&mut self, node: NodeRef) {
        let r = leaf_range(node);
        self.pending.push_back((*r.start(), *r.end()));
    }

    /// Nothing left to send and every probe answered.
    pub(super) fn is_done(&self) -> bool {
        self.pending.is_empty() && self.probes.is_empty()
    }

    /// Takes the answer to probe `req`; false if it is not one of ours.
    pub(super) fn answered(&mut self, req: u64) -> bool {
        match self.probes.iter().position(|(r, _)| *r == req) {
            Some(i) => {
                self.probes.remove(i);
                true
            }
            None => false,
        }
    }

    /// The next bucket to send, removed from the queue.
    fn next_bucket(&mut self) -> Option<u16> {
        let (first, last) = self.pending.front_mut()?;
        let b = *first;
        if *first == *last {
            self.pending.pop_front();
        } else {
            *first += 1;
        }
        Some(b)
    }
}

impl Replicator {
    /// Sends streamed entries to `peer` while the window has room.
    pub(super) fn pump_stream(
        &mut self,
        peer: &NodeId,
        now: u64,
        store: &dyn ReplicaReader,
        out: &mut Vec<Effect>,
    ) {
        let (max_items, max_bytes) = (self.config.max_items_per_msg, self.config.max_msg_bytes);
        loop {
            let Some(s) = self.sessions.get(peer) else {
                return;
            };
            if s.stream.probes.len() >= WINDOW || s.stream.pending.is_empty() {
                return;
            }
            // One batch: whole buckets up to the message caps (a bucket
            // over them is split into several messages).
            let mut batch: Vec<(String, Entry)> = Vec::new();
            let mut bytes = 0;
            while batch.len() < max_items && bytes < max_bytes {
                let Some(b) = self
                    .sessions
                    .get_mut(peer)
                    .and_then(|s| s.stream.next_bucket())
                else {
                    break;
                };
                match bucket_entries(store, b) {
                    Ok(entries) => {
                        bytes += entries
                            .iter()
                            .map(|(k, e)| approx_size(k, e))
                            .sum::<usize>();
                        batch.extend(entries);
                    }
                    Err(e) => {
                        tracing::error!(node = %self.node, peer = %peer, bucket = b, error = %e, "cannot read bucket to stream");
                        self.fail_session(peer, now, "store read failed");
                        return;
                    }
                }
            }
            let n = batch.len() as u64;
            let clock = store.clock();
            let req = self.next_id();
            let Some(s) = self.sessions.get_mut(peer) else {
                return;
            };
            let mut msgs: Vec<Msg> =
                chunks(batch, max_items, max_bytes, |(k, e)| approx_size(k, e))
                    .into_iter()
                    .map(|entries| Msg::AeEntries {
                        clock,
                        session: s.id,
                        entries,
                    })
                    .collect();
            msgs.push(probe(clock, s.id, req));
            s.stream.probes.push_back((req, now));
            s.stream.clock = clock;
            s.run.entries_sent += n;
            s.run.bytes_sent += msgs.iter().map(Msg::encoded_len).sum::<u64>();
            if s.run.trigger == AeTrigger::Handoff {
                self.progress.handoff_entries_sent += n;
            }
            out.extend(msgs.into_iter().map(|msg| Effect::Send {
                to: peer.clone(),
                msg,
            }));
        }
    }

    /// Sends again the probes of `peer`'s session unanswered for
    /// `ae_retry_ms`, under new ids.
    pub(super) fn retry_probes(&mut self, peer: &NodeId, now: u64, out: &mut Vec<Effect>) {
        let retry_ms = self.config.ae_retry_ms;
        let due = self.sessions.get(peer).map_or(0, |s| {
            s.stream
                .probes
                .iter()
                .filter(|(_, sent)| now.saturating_sub(*sent) >= retry_ms)
                .count()
        });
        for _ in 0..due {
            let req = self.next_id();
            let Some(s) = self.sessions.get_mut(peer) else {
                return;
            };
            let Some(i) = s
                .stream
                .probes
                .iter()
                .position(|(_, sent)| now.saturating_sub(*sent) >= retry_ms)
            else {
                return;
            };
            s.stream.probes.remove(i);
            s.stream.probes.push_back((req, now));
            let msg = probe(s.stream.clock, s.id, req);
            s.run.bytes_sent += msg.encoded_len();
            out.push(Effect::Send {
                to: peer.clone(),
                msg,
            });
        }
    }
}

/// The pacing probe: the root's children, answer ignored.
fn probe(clock: Hlc, session: u64, req: u64) -> Msg {
    Msg::AeNodes {
        clock,
        session,
        req,
        nodes: vec![NodeRef::ROOT],
    }
}

/// Every entry of a Merkle leaf (tombstones included).
fn bucket_entries(
    store: &dyn ReplicaReader,
    bucket: u16,
) -> crate::store::Result<Vec<(String, Entry)>> {
    let mut out = Vec::new();
    for (key, _, _) in store.bucket_versions(bucket)? {
        if let Some(e) = store.get(&key)? {
            out.push((key, e));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::{AeResult, ReplicationConfig};
    use crate::store::{Op, Store, StoreConfig};

    const T0: u64 = 1_700_000_000_000;

    fn open(dir: &tempfile::TempDir, id: &NodeId) -> Store {
        Store::open(
            dir.path(),
            StoreConfig {
                node_id: Some(id.clone()),
                ..StoreConfig::default()
            },
        )
        .unwrap()
    }

    /// Runs one session a → b to its end, delivering messages in order
    /// except the `AeEntries` whose index is in `drop`. Returns the kinds
    /// of the messages a sent.
    fn session(
        (ra, sa): (&mut Replicator, &Store),
        (rb, sb): (&mut Replicator, &Store),
        drop: &[usize],
    ) -> Vec<&'static str> {
        let (a, b) = (ra.node().clone(), rb.node().clone());
        let (ok, first) = ra.request_anti_entropy(&b, T0, sa);
        assert!(ok);
        let mut queue: VecDeque<(bool, Effect)> = first.into_iter().map(|e| (true, e)).collect();
        let (mut sent, mut entries_msgs) = (Vec::new(), 0);
        while let Some((on_a, effect)) = queue.pop_front() {
            // Effects belong to the side whose replicator emitted them.
            let (side, out) = match effect {
                Effect::Send { msg, .. } if on_a => {
                    sent.push(msg.kind());
                    if let Msg::AeEntries { .. } = msg {
                        entries_msgs += 1;
                        if drop.contains(&(entries_msgs - 1)) {
                            continue;
                        }
                    }
                    (false, rb.on_message(&a, msg, T0, sb))
                }
                Effect::Send { msg, .. } => (true, ra.on_message(&b, msg, T0, sa)),
                Effect::Commit { tag, ops, .. } => {
                    let (store, repl) = if on_a { (sa, &mut *ra) } else { (sb, &mut *rb) };
                    let outcomes = store.apply(ops, T0).unwrap();
                    store.flush().unwrap();
                    (on_a, repl.on_commit_outcomes(tag, &outcomes, T0, store))
                }
            };
            assert!(ra
                .sessions
                .values()
                .all(|s| s.stream.probes.len() <= WINDOW));
            queue.extend(out.into_iter().map(|e| (side, e)));
        }
        sent
    }

    #[test]
    fn streams_only_partition_level_nodes_the_responder_lacks() {
        let p = NodeRef {
            level: 2,
            index: 0x35,
        };
        assert!(Stream::wants(p, Some(&ZERO)));
        assert!(!Stream::wants(p, Some(&[1; 16])));
        assert!(!Stream::wants(NodeRef { level: 1, index: 3 }, Some(&ZERO)));
        assert!(!Stream::wants(p, None));
    }

    #[test]
    fn buckets_come_out_in_order_once() {
        let mut s = Stream::default();
        s.push(NodeRef {
            level: 3,
            index: 0x351,
        });
        s.push(NodeRef { level: 4, index: 7 });
        let got: Vec<u16> = std::iter::from_fn(|| s.next_bucket()).collect();
        let mut want: Vec<u16> = (0x3510..=0x351f).collect();
        want.push(7);
        assert_eq!(got, want);
        assert!(s.is_done());
    }

    fn filled(n: usize) -> (tempfile::TempDir, Store, tempfile::TempDir, Store) {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (sa, sb) = (
            open(&da, &NodeId::new("a").unwrap()),
            open(&db, &NodeId::new("b").unwrap()),
        );
        let ops = (0..n)
            .map(|k| Op::Local {
                key: format!("k/{k:05}"),
                value: Some(vec![7; 100]),
                meta: Default::default(),
                cond: crate::store::Condition::Always,
            })
            .collect();
        sa.apply(ops, T0).unwrap();
        sa.flush().unwrap();
        (da, sa, db, sb)
    }

    fn replicators() -> (Replicator, Replicator) {
        let cfg = ReplicationConfig::default();
        (
            Replicator::new(NodeId::new("a").unwrap(), cfg.clone(), 1),
            Replicator::new(NodeId::new("b").unwrap(), cfg, 2),
        )
    }

    #[test]
    fn empty_responder_gets_every_entry_streamed_without_leaf_comparison() {
        let (_da, sa, _db, sb) = filled(5_000);
        let (mut ra, mut rb) = replicators();
        let sent = session((&mut ra, &sa), (&mut rb, &sb), &[]);
        assert_eq!(sa.merkle_root(), sb.merkle_root());
        assert!(!sent.contains(&"ae_leaves"), "compared leaves: {sent:?}");
        // 5,000 entries in batches of at most 1,024: at least 5 messages.
        assert!(sent.iter().filter(|k| **k == "ae_entries").count() >= 5);
        let run = ra.stats().last_anti_entropy.unwrap();
        assert_eq!(run.result, AeResult::Repaired);
        assert_eq!(run.entries_sent, 5_000);
        assert!(ra.sessions.is_empty());
    }

    #[test]
    fn lost_streamed_entries_are_repaired_by_the_next_session() {
        let (_da, sa, _db, sb) = filled(3_000);
        let (mut ra, mut rb) = replicators();
        session((&mut ra, &sa), (&mut rb, &sb), &[1]);
        assert_ne!(sa.merkle_root(), sb.merkle_root(), "a batch was dropped");
        // b now holds some subtrees (compared leaf by leaf) and lacks others
        // (streamed again).
        let sent = session((&mut ra, &sa), (&mut rb, &sb), &[]);
        assert_eq!(sa.merkle_root(), sb.merkle_root());
        assert!(sent.contains(&"ae_leaves") || sent.contains(&"ae_entries"));
    }
}
