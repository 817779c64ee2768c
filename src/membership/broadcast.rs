//! Infection-style dissemination of membership updates (SWIM §4.1; the
//! transmit-limited queue of HashiCorp memberlist).
//!
//! Every update this node learns that is news (a member joined, is
//! suspected, died, left, refuted) is queued once per member — a newer
//! update about the same member replaces the older — and piggybacked on
//! the next outgoing protocol messages, least-sent first, until it has
//! been sent `limit` times. With `limit = λ·⌈log10(n+1)⌉` an update reaches
//! every member with high probability in O(log n) protocol periods, and
//! since each message carries a bounded number of entries the cost per node
//! and period does not grow with n.

use std::collections::BTreeMap;

use super::msg::MemberInfo;
use crate::model::NodeId;

#[derive(Clone, Debug)]
struct Item {
    info: MemberInfo,
    sent: u32,
    /// Queue order: newer updates go first among equally sent ones.
    order: u64,
}

/// The updates still to piggyback.
#[derive(Clone, Debug, Default)]
pub struct Broadcasts {
    items: BTreeMap<NodeId, Item>,
    next_order: u64,
}

impl Broadcasts {
    /// Queues `info`, replacing any pending update about the same member.
    pub fn push(&mut self, info: MemberInfo) {
        self.next_order += 1;
        self.items.insert(
            info.id.clone(),
            Item {
                info,
                sent: 0,
                order: self.next_order,
            },
        );
    }

    /// Up to `n` updates for one message to `recipient`, least-sent first;
    /// each taken counts as sent once and is dropped after `limit` sends.
    /// The recipient is not told it is alive (it knows), but is told when
    /// it is suspected or dead, so it can refute.
    pub fn take(&mut self, n: usize, limit: u32, recipient: &NodeId) -> Vec<MemberInfo> {
        if n == 0 || self.items.is_empty() {
            return Vec::new();
        }
        let mut picks: Vec<(u32, std::cmp::Reverse<u64>, NodeId)> = self
            .items
            .values()
            .filter(|i| i.info.id != *recipient || i.info.status != super::table::Status::Alive)
            .map(|i| (i.sent, std::cmp::Reverse(i.order), i.info.id.clone()))
            .collect();
        picks.sort_unstable();
        picks.truncate(n);
        let mut out = Vec::with_capacity(picks.len());
        for (_, _, id) in picks {
            if let Some(item) = self.items.get_mut(&id) {
                item.sent += 1;
                out.push(item.info.clone());
                if item.sent >= limit {
                    self.items.remove(&id);
                }
            }
        }
        out
    }

    /// Drops any pending update about a member no longer tracked.
    pub fn forget(&mut self, id: &NodeId) {
        self.items.remove(id);
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Sends per update for a fleet of `members` (this node included):
/// `mult · ⌈log10(members + 1)⌉`, at least `mult`.
pub fn retransmit_limit(mult: u32, members: usize) -> u32 {
    let scale = ((members as f64 + 1.0).log10().ceil() as u32).max(1);
    mult.saturating_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::super::table::Status;
    use super::*;

    fn info(id: &str, status: Status, incarnation: u64) -> MemberInfo {
        MemberInfo {
            id: NodeId::new(id).unwrap(),
            addr: "127.0.0.1:1".parse().unwrap(),
            incarnation,
            status,
            http: None,
            head: 0,
        }
    }

    fn ids(v: &[MemberInfo]) -> Vec<&str> {
        v.iter().map(|i| i.id.as_str()).collect()
    }

    #[test]
    fn each_update_is_sent_limit_times_least_sent_first() {
        let mut b = Broadcasts::default();
        let r = NodeId::new("r").unwrap();
        b.push(info("a", Status::Alive, 1));
        b.push(info("b", Status::Alive, 1));
        assert_eq!(ids(&b.take(1, 2, &r)), ["b"]); // newest first
        assert_eq!(ids(&b.take(1, 2, &r)), ["a"]); // then the least sent
        assert_eq!(ids(&b.take(5, 2, &r)), ["b", "a"]);
        assert!(b.is_empty(), "both reached the limit");
        assert!(b.take(5, 2, &r).is_empty());
    }

    #[test]
    fn a_newer_update_replaces_the_pending_one_and_restarts_its_count() {
        let mut b = Broadcasts::default();
        let r = NodeId::new("r").unwrap();
        b.push(info("a", Status::Alive, 1));
        b.take(1, 3, &r);
        b.push(info("a", Status::Suspect, 1));
        assert_eq!(b.len(), 1);
        let sent: Vec<_> = (0..4).flat_map(|_| b.take(1, 3, &r)).collect();
        assert_eq!(sent.len(), 3);
        assert!(sent.iter().all(|i| i.status == Status::Suspect));
    }

    #[test]
    fn the_recipient_hears_of_its_suspicion_but_not_of_its_being_alive() {
        let mut b = Broadcasts::default();
        let a = NodeId::new("a").unwrap();
        b.push(info("a", Status::Alive, 1));
        assert!(b.take(4, 3, &a).is_empty());
        b.push(info("a", Status::Suspect, 1));
        assert_eq!(ids(&b.take(4, 3, &a)), ["a"]);
    }

    #[test]
    fn the_limit_grows_with_log_n() {
        assert_eq!(retransmit_limit(4, 1), 4);
        assert_eq!(retransmit_limit(4, 9), 4);
        assert_eq!(retransmit_limit(4, 10), 8);
        assert_eq!(retransmit_limit(4, 1_000), 16);
    }
}
