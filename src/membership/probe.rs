//! Who to probe next, and the probes in flight (SWIM §4.3 and §3).
//!
//! Targets come round-robin from a shuffled list of the members we probe,
//! reshuffled after each full pass, so every member is probed once per
//! pass by every node (worst-case detection bounded, unlike uniform random
//! choice) and a member is probed by about one node per period on average
//! whatever the fleet size. A new member joins the end of the current pass.
//!
//! A probe waits for the target's ack; halfway to its deadline it asks a
//! few other members to ping the target for it (indirect probe, which tells
//! a dead target from a lossy link between two live ones); if neither
//! direct nor relayed ack arrives by the deadline, the target is suspected.
//! The relays a node does for others are bounded ([`MAX_RELAYS`]).

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::Rng;

use crate::model::NodeId;

/// Most indirect probes this node relays at once for others; more are
/// refused (the requester asks other helpers too).
pub const MAX_RELAYS: usize = 64;

/// Round-robin over a shuffled list.
#[derive(Clone, Debug, Default)]
pub struct ProbeRing {
    order: Vec<NodeId>,
    next: usize,
}

impl ProbeRing {
    /// The next target for which `eligible` holds; a new pass over
    /// `members` (reshuffled) starts when the current one is done. `None`
    /// when no member is eligible.
    pub fn next(
        &mut self,
        members: impl Fn() -> Vec<NodeId>,
        eligible: impl Fn(&NodeId) -> bool,
        rng: &mut impl Rng,
    ) -> Option<NodeId> {
        for _pass in 0..2 {
            while self.next < self.order.len() {
                let id = &self.order[self.next];
                self.next += 1;
                if eligible(id) {
                    return Some(id.clone());
                }
            }
            self.order = members();
            self.order.shuffle(rng);
            self.next = 0;
        }
        None
    }

    /// A member just learned: probed at the end of the current pass (no
    /// need to wait for the reshuffle).
    pub fn insert(&mut self, id: NodeId) {
        if !self.order[self.next..].contains(&id) {
            self.order.push(id);
        }
    }
}

/// One probe this node sent and waits on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub sent_ms: u64,
    /// When to ask helpers to probe the target for us.
    pub indirect_at_ms: u64,
    /// No ack by then: the target is suspect.
    pub deadline_ms: u64,
    pub indirect_sent: bool,
}

/// An indirect probe this node relays: `requester` asked us to ping
/// `target`; its ack is forwarded until `expires_ms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relay {
    pub requester: NodeId,
    pub target: NodeId,
    pub expires_ms: u64,
}

/// Probes in flight (ours) and relays (for others).
#[derive(Clone, Debug, Default)]
pub struct Probes {
    pub ours: BTreeMap<NodeId, Probe>,
    pub relays: Vec<Relay>,
}

impl Probes {
    /// Records a relay unless the table is full or it is a repeat; whether
    /// the target should be pinged.
    pub fn add_relay(&mut self, requester: &NodeId, target: &NodeId, expires_ms: u64) -> bool {
        if self.relays.len() >= MAX_RELAYS
            || self
                .relays
                .iter()
                .any(|r| r.requester == *requester && r.target == *target)
        {
            return false;
        }
        self.relays.push(Relay {
            requester: requester.clone(),
            target: target.clone(),
            expires_ms,
        });
        true
    }

    /// The requesters waiting on an ack from `target` (their relays end).
    pub fn take_relays(&mut self, target: &NodeId) -> Vec<NodeId> {
        let mut out = Vec::new();
        self.relays.retain(|r| {
            if r.target == *target {
                out.push(r.requester.clone());
                false
            } else {
                true
            }
        });
        out
    }

    pub fn expire_relays(&mut self, now_ms: u64) {
        self.relays.retain(|r| r.expires_ms > now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn ids(n: usize) -> Vec<NodeId> {
        (0..n)
            .map(|i| NodeId::new(format!("m{i}")).unwrap())
            .collect()
    }

    #[test]
    fn every_member_is_probed_once_per_pass() {
        let mut rng = StdRng::seed_from_u64(7);
        let members = ids(10);
        let mut ring = ProbeRing::default();
        for _pass in 0..3 {
            let mut seen: Vec<NodeId> = (0..10)
                .map(|_| ring.next(|| members.clone(), |_| true, &mut rng).unwrap())
                .collect();
            seen.sort();
            assert_eq!(seen, members);
        }
    }

    #[test]
    fn ineligible_members_are_skipped_and_none_means_none() {
        let mut rng = StdRng::seed_from_u64(1);
        let members = ids(4);
        let mut ring = ProbeRing::default();
        let only = members[2].clone();
        for _ in 0..5 {
            let got = ring.next(|| members.clone(), |m| *m == only, &mut rng);
            assert_eq!(got.as_ref(), Some(&only));
        }
        assert_eq!(ring.next(|| members.clone(), |_| false, &mut rng), None);
        assert_eq!(
            ProbeRing::default().next(Vec::new, |_| true, &mut rng),
            None
        );
    }

    #[test]
    fn a_new_member_is_probed_within_the_current_pass() {
        let mut rng = StdRng::seed_from_u64(3);
        let members = ids(5);
        let mut ring = ProbeRing::default();
        ring.next(|| members.clone(), |_| true, &mut rng);
        let new = NodeId::new("new").unwrap();
        ring.insert(new.clone());
        let rest: Vec<NodeId> = (0..5)
            .map(|_| ring.next(|| members.clone(), |_| true, &mut rng).unwrap())
            .collect();
        assert!(rest.contains(&new), "{rest:?}");
    }

    #[test]
    fn relays_are_bounded_deduplicated_and_expire() {
        let mut p = Probes::default();
        let a = NodeId::new("a").unwrap();
        let t = NodeId::new("t").unwrap();
        assert!(p.add_relay(&a, &t, 100));
        assert!(!p.add_relay(&a, &t, 100), "repeat");
        for i in 0..MAX_RELAYS {
            p.add_relay(&NodeId::new(format!("r{i}")).unwrap(), &t, 50);
        }
        assert_eq!(p.relays.len(), MAX_RELAYS);
        p.expire_relays(60);
        assert_eq!(p.take_relays(&t), vec![a]);
        assert!(p.relays.is_empty());
    }
}
