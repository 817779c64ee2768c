//! The layout: every partition's owners for one membership view, and the
//! set of partitions one node owns (a 256-bit set, shared lock-free with the
//! store's write path).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;

use super::rendezvous::owners_of;
use super::PARTITIONS;
use crate::membership::{Status, Table};
use crate::model::NodeId;

/// A set of partitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Owned([u64; 4]);

impl Owned {
    pub const ALL: Owned = Owned([u64::MAX; 4]);
    pub const NONE: Owned = Owned([0; 4]);

    pub fn contains(&self, p: u8) -> bool {
        self.0[(p >> 6) as usize] & (1 << (p & 63)) != 0
    }

    pub fn insert(&mut self, p: u8) {
        self.0[(p >> 6) as usize] |= 1 << (p & 63);
    }

    pub fn is_full(&self) -> bool {
        *self == Owned::ALL
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = u8> + '_ {
        (0..=255u8).filter(|p| self.contains(*p))
    }

    pub fn intersect(&self, other: &Owned) -> Owned {
        let mut o = *self;
        for (a, b) in o.0.iter_mut().zip(other.0) {
            *a &= b;
        }
        o
    }

    pub fn union(&self, other: &Owned) -> Owned {
        let mut o = *self;
        for (a, b) in o.0.iter_mut().zip(other.0) {
            *a |= b;
        }
        o
    }

    pub fn minus(&self, other: &Owned) -> Owned {
        let mut o = *self;
        for (a, b) in o.0.iter_mut().zip(other.0) {
            *a &= !b;
        }
        o
    }

    /// Compact text for introspection: ranges like `0-3,7,9-12`.
    pub fn ranges(&self) -> String {
        let mut out: Vec<String> = Vec::new();
        let mut start: Option<u16> = None;
        for p in 0..=256u16 {
            let on = p < 256 && self.contains(p as u8);
            match (on, start) {
                (true, None) => start = Some(p),
                (false, Some(s)) => {
                    out.push(if s == p - 1 {
                        s.to_string()
                    } else {
                        format!("{s}-{}", p - 1)
                    });
                    start = None;
                }
                _ => {}
            }
        }
        out.join(",")
    }
}

/// [`Owned`] shared between the node machine (writer) and the store and HTTP
/// handlers (readers); one relaxed load per check.
#[derive(Debug)]
pub struct SharedOwned([AtomicU64; 4]);

impl Default for SharedOwned {
    fn default() -> Self {
        SharedOwned([
            AtomicU64::new(u64::MAX),
            AtomicU64::new(u64::MAX),
            AtomicU64::new(u64::MAX),
            AtomicU64::new(u64::MAX),
        ])
    }
}

impl SharedOwned {
    pub fn new() -> Arc<SharedOwned> {
        Arc::new(SharedOwned::default())
    }

    pub fn load(&self) -> Owned {
        Owned(std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed)))
    }

    pub fn store(&self, o: Owned) {
        for (a, v) in self.0.iter().zip(o.0) {
            a.store(v, Ordering::Relaxed);
        }
    }
}

/// Every partition's owners for one eligible member set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The replication factor asked for; `None`: every node.
    pub replication_factor: Option<usize>,
    /// Eligible members (this node included), sorted.
    pub members: Vec<NodeId>,
    /// `owners[p]`: the owners of partition `p`, highest weight first; empty
    /// when the layout is full (every member owns every partition).
    owners: Vec<Vec<NodeId>>,
}

impl Layout {
    /// The layout of `members` with factor `r` (`None`: full replication).
    pub fn compute(mut members: Vec<NodeId>, r: Option<usize>) -> Layout {
        members.sort();
        members.dedup();
        let full = r.is_none_or(|r| r >= members.len());
        let owners = if full {
            Vec::new()
        } else {
            let r = r.unwrap_or(members.len());
            (0..PARTITIONS)
                .map(|p| owners_of(p as u8, &members, r))
                .collect()
        };
        Layout {
            replication_factor: r,
            members,
            owners,
        }
    }

    /// Whether every member owns every partition (today's full replication).
    pub fn is_full(&self) -> bool {
        self.owners.is_empty()
    }

    /// The owners of partition `p`.
    pub fn owners(&self, p: u8) -> &[NodeId] {
        if self.is_full() {
            &self.members
        } else {
            &self.owners[p as usize]
        }
    }

    pub fn owns(&self, node: &NodeId, p: u8) -> bool {
        self.is_full() || self.owners[p as usize].contains(node)
    }

    /// The partitions `node` owns.
    pub fn owned_by(&self, node: &NodeId) -> Owned {
        if self.is_full() {
            return Owned::ALL;
        }
        let mut o = Owned::NONE;
        for (p, owners) in self.owners.iter().enumerate() {
            if owners.contains(node) {
                o.insert(p as u8);
            }
        }
        o
    }
}

/// The members partitions are placed on: this node, and every member that
/// has not left and has not been dead for longer than `grace_ms`.
pub fn eligible_members(me: &NodeId, table: &Table, now_ms: u64, grace_ms: u64) -> Vec<NodeId> {
    let mut out = vec![me.clone()];
    for m in table.iter() {
        let keep = match m.status {
            Status::Alive | Status::Suspect => true,
            Status::Dead => now_ms.saturating_sub(m.status_since_ms) <= grace_ms,
            Status::Left => false,
        };
        if keep {
            out.push(m.id.clone());
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Rebalancing progress, for introspection and `/metrics`.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Progress {
    /// The replication factor (`null`: every node).
    pub replication_factor: Option<usize>,
    /// Members partitions are placed on.
    pub eligible_members: usize,
    /// Partitions this node owns, and as ranges (`0-3,7`).
    pub owned: usize,
    pub owned_ranges: String,
    /// Partitions this node holds data of without owning them (being
    /// handed off to their owners; dropped once all of them hold it).
    pub held_not_owned: usize,
    /// Partitions this node owns whose owners changed since the node began.
    pub layout_changes: u64,
    /// Handoff sessions started (anti-entropy to a new owner) and entries
    /// those sessions sent.
    pub handoff_sessions: u64,
    pub handoff_entries_sent: u64,
    /// Stubs received for partitions we own (repaired by anti-entropy).
    pub stubs_for_owned: u64,
    /// Handed-off partitions whose data this node dropped (after every
    /// owner was seen holding it), and the entries dropped.
    pub partitions_dropped: u64,
    pub entries_dropped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<NodeId> {
        (0..n)
            .map(|i| NodeId::new(format!("n{i}")).unwrap())
            .collect()
    }

    #[test]
    fn unset_or_large_factor_is_full_replication() {
        for r in [None, Some(3), Some(9)] {
            let l = Layout::compute(ids(3), r);
            assert!(l.is_full());
            assert_eq!(l.owned_by(&ids(3)[0]), Owned::ALL);
        }
        assert!(!Layout::compute(ids(6), Some(3)).is_full());
    }

    #[test]
    fn six_nodes_three_copies_each_own_about_half() {
        let l = Layout::compute(ids(6), Some(3));
        let mut total = 0;
        for n in ids(6) {
            let c = l.owned_by(&n).len();
            assert!((90..=170).contains(&c), "{n} owns {c}");
            total += c;
        }
        assert_eq!(total, 256 * 3);
    }

    #[test]
    fn owned_set_operations_and_ranges() {
        let mut a = Owned::NONE;
        for p in [0u8, 1, 2, 5, 255] {
            a.insert(p);
        }
        assert_eq!(a.ranges(), "0-2,5,255");
        assert_eq!(a.len(), 5);
        let mut b = Owned::NONE;
        b.insert(5);
        assert_eq!(a.intersect(&b).len(), 1);
        assert_eq!(a.minus(&b).len(), 4);
        assert_eq!(Owned::ALL.ranges(), "0-255");
        let s = SharedOwned::new();
        assert!(s.load().is_full());
        s.store(a);
        assert_eq!(s.load(), a);
    }
}
