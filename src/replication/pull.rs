//! Pull by version vector: "send me what you hold beyond this vector".
//!
//! One request covers every origin. The answer carries, per origin the
//! responder is ahead on, the contiguous deltas right after the asker's
//! entry (read from the log), cut at the message caps with `more` set; an
//! origin whose next delta is no longer logged is listed as unavailable and
//! the asker runs anti-entropy with that peer. At most one pull per peer is in
//! flight; a gap seen meanwhile sets a flag that pulls again when it is done,
//! so a burst of out-of-order pushes costs one pull, not one per delta. A
//! gap seen a second or more after a pull whose answer has not arrived
//! sends it again (the first may have been lost).
//!
//! A sharded node asks with its partitions (`scope`), and the responder
//! answers with its own origin's deltas in them under a cover (see
//! `sharding`).

use super::msg::{approx_size, Cover};
use super::ReplicaReader;
use super::{AeTrigger, Effect, Msg, PendingKind, Replicator};
use crate::model::{Delta, NodeId, VersionVector};
use crate::store::{LogRead, Outcome};

/// After this long without an answer, a pull that is wanted again (a gap)
/// is sent again; the older answer, should it still come, is applied all
/// the same (pull answers are idempotent).
const PULL_RESEND_MS: u64 = 1_000;

/// A pull answer, as received.
pub(super) struct Answer {
    pub req: u64,
    pub deltas: Vec<Delta>,
    pub unavailable: Vec<NodeId>,
    pub more: bool,
    pub cover: Option<Cover>,
}

impl Replicator {
    /// Asks `peer` for what we miss, unless a pull to it is in flight (then
    /// asks again when that one is done).
    pub(super) fn send_pull(
        &mut self,
        peer: &NodeId,
        now: u64,
        store: &dyn ReplicaReader,
        out: &mut Vec<Effect>,
    ) {
        // A pull answered by now is in flight; one older may have been
        // lost (sent before the connection was up, say): a gap seen now
        // asks again rather than waiting for `pull_timeout_ms`.
        let in_flight = self.peers.get(peer).is_some_and(|p| {
            p.pull.is_some_and(|(_, sent)| {
                p.pull_answered || now.saturating_sub(sent) < PULL_RESEND_MS
            })
        });
        if in_flight {
            self.peers.entry(peer.clone()).or_default().pull_again = true;
            return;
        }
        let req = self.next_id();
        let p = self.peers.entry(peer.clone()).or_default();
        p.pull = Some((req, now));
        p.pull_answered = false;
        p.pull_again = false;
        p.stats.pulls_sent += 1;
        let msg = Msg::PullRequest {
            clock: store.clock(),
            req,
            vv: store.version_vector(),
            scope: (!self.layout.is_full()).then_some(self.mine),
        };
        out.push(Effect::Send {
            to: peer.clone(),
            msg,
        });
    }

    pub(super) fn on_pull_request(
        &mut self,
        from: &NodeId,
        req: u64,
        theirs: VersionVector,
        store: &dyn ReplicaReader,
        out: &mut Vec<Effect>,
    ) {
        let mine = store.version_vector();
        let max_items = self.config.max_items_per_msg;
        let mut budget_bytes = self.config.max_msg_bytes;
        let mut deltas: Vec<Delta> = Vec::new();
        let mut unavailable = Vec::new();
        let mut more = false;
        for (origin, have) in mine.iter() {
            let after = theirs.get(origin);
            if have <= after {
                continue;
            }
            if deltas.len() >= max_items || budget_bytes == 0 {
                more = true;
                break;
            }
            match store.deltas_after(origin, after, max_items - deltas.len()) {
                Ok(LogRead::Deltas(mut ds)) => {
                    // Never more than the receiver accepts (`msg::MAX_ITEMS`
                    // bounds `max_items_per_msg`), whatever the log returns.
                    ds.truncate(max_items - deltas.len());
                    let last = ds.last().map_or(after, |d| d.seq);
                    for d in ds {
                        let size = approx_size(&d.key, &d.entry);
                        if size > budget_bytes && !deltas.is_empty() {
                            budget_bytes = 0;
                            more = true;
                            break;
                        }
                        budget_bytes = budget_bytes.saturating_sub(size);
                        deltas.push(self.for_peer(from, &d));
                    }
                    if last < have {
                        // Cut by the cap, or a hole in our log (our vector
                        // advanced by anti-entropy): the next pull tells.
                        more = true;
                    }
                }
                Ok(LogRead::Unavailable { first_retained }) => {
                    tracing::debug!(node = %self.node, peer = %from, origin = %origin, after, first_retained,
                        "pull answered unavailable");
                    unavailable.push(origin.clone());
                }
                Err(e) => {
                    tracing::error!(node = %self.node, peer = %from, origin = %origin, error = %e, "cannot read log for pull");
                }
            }
        }
        let p = self.peers.entry(from.clone()).or_default();
        p.stats.pulls_served += 1;
        p.stats.deltas_sent += deltas.len() as u64;
        if !unavailable.is_empty() {
            p.stats.pulls_we_answered_unavailable += 1;
        }
        let msg = Msg::PullResponse {
            clock: store.clock(),
            req,
            deltas,
            unavailable,
            more,
            cover: None,
        };
        out.push(Effect::Send {
            to: from.clone(),
            msg,
        });
    }

    pub(super) fn on_pull_response(
        &mut self,
        from: &NodeId,
        answer: Answer,
        now: u64,
        store: &dyn ReplicaReader,
        out: &mut Vec<Effect>,
    ) {
        let Answer {
            req,
            deltas,
            unavailable,
            more,
            cover,
        } = answer;
        let p = self.peers.entry(from.clone()).or_default();
        let ours = p.pull.is_some_and(|(r, _)| r == req);
        p.pull_answered |= ours;
        if !unavailable.is_empty() {
            p.stats.pulls_answered_unavailable += 1;
            tracing::info!(node = %self.node, peer = %from, origins = %crate::logfields::list(&unavailable),
                "peer no longer logs deltas we miss; anti-entropy");
            if cover.is_some() && !self.layout.is_full() {
                // The origin's older writes of our partitions are with
                // their co-owners.
                self.repair_partitions(self.mine, now);
            } else {
                self.start_anti_entropy(from, AeTrigger::PullUnavailable, now, store, out);
            }
        }
        if let Some(cover) = cover {
            let pull = ours.then_some(req);
            self.on_covered(
                from,
                deltas,
                cover,
                Some(PendingKind::Deltas { pull, more }),
                now,
                out,
            );
            return;
        }
        let p = self.peers.entry(from.clone()).or_default();
        p.stats.deltas_received += deltas.len() as u64;
        if deltas.is_empty() {
            if ours {
                self.pull_done(from, more, now, store, out);
            }
            return;
        }
        self.note_stubs(&deltas, now);
        let ops = deltas.into_iter().map(crate::store::Op::Delta).collect();
        let pull = ours.then_some(req);
        self.commit(from, ops, PendingKind::Deltas { pull, more }, now, out);
    }

    /// Outcomes of received deltas: counters, and a pull when one came early.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn deltas_committed(
        &mut self,
        from: &NodeId,
        pull: Option<u64>,
        more: bool,
        outcomes: &[Outcome],
        now: u64,
        store: &dyn ReplicaReader,
        out: &mut Vec<Effect>,
    ) {
        let p = self.peers.entry(from.clone()).or_default();
        let mut gap = false;
        for o in outcomes {
            match o {
                Outcome::Applied { .. } => p.stats.deltas_applied += 1,
                Outcome::Duplicate => p.stats.deltas_stale += 1,
                Outcome::Gap { .. } => {
                    p.stats.deltas_gap += 1;
                    gap = true;
                }
                _ => {}
            }
        }
        let ours = pull.is_some() && p.pull.map(|(r, _)| r) == pull;
        if ours {
            p.pull_again |= gap;
            self.pull_done(from, more, now, store, out);
        } else if gap {
            tracing::debug!(node = %self.node, peer = %from, "delta arrived before its predecessor; pulling");
            self.send_pull(from, now, store, out);
        }
    }

    fn pull_done(
        &mut self,
        from: &NodeId,
        more: bool,
        now: u64,
        store: &dyn ReplicaReader,
        out: &mut Vec<Effect>,
    ) {
        let Some(p) = self.peers.get_mut(from) else {
            return;
        };
        p.pull = None;
        if more || p.pull_again {
            self.send_pull(from, now, store, out);
        }
    }
}
