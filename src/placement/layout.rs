//! The layout: every partition's owners for one membership view, and the
//! set of partitions one node owns (a 256-bit set, shared lock-free with the
//! store's write path).
//!
//! A layout is a pure function of its member set and replication factor,
//! however it was reached: [`Layout::compute`] ranks every member for every
//! partition (256 × N hashes), [`Layout::updated`] derives the next layout
//! from the previous one and gives the same result (property-tested) for
//! far less: each partition keeps its top-R owners with their weights, so
//! a member that joins costs 256 hashes (its weight against the R-th
//! owner's in each partition), and one that leaves re-ranks only the
//! partitions it owned (≈ 256·R/N of them, N hashes each: ≈ 256·R
//! hashes). Plus O(N) to diff the member lists. That is what lets a fleet
//! of 1,000 sharded nodes form: each node sees ~1,000 joins.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;

use super::rendezvous::{outranks, top, weight};
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

    pub fn remove(&mut self, p: u8) {
        self.0[(p >> 6) as usize] &= !(1 << (p & 63));
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
    /// `weights[p][i]`: the weight of `owners[p][i]` for `p` (what a joining
    /// member must beat), so [`Layout::updated`] need not rehash owners.
    weights: Vec<Vec<u64>>,
}

impl Layout {
    /// The layout of `members` with factor `r` (`None`: full replication),
    /// from scratch: 256 × N hashes when sharded.
    pub fn compute(mut members: Vec<NodeId>, r: Option<usize>) -> Layout {
        members.sort();
        members.dedup();
        let mut owners = Vec::new();
        let mut weights = Vec::new();
        if let Some(r) = r.filter(|r| *r < members.len()) {
            for p in 0..PARTITIONS {
                let (w, o) = top(p as u8, &members, r).into_iter().unzip();
                weights.push(w);
                owners.push(o);
            }
        }
        Layout {
            replication_factor: r,
            members,
            owners,
            weights,
        }
    }

    /// The layout of `members` with factor `r`, derived from this one:
    /// equal to [`Layout::compute`]`(members, r)`, at the cost in the module
    /// docs (a join 256 hashes, a leave ≈ 256·R). Falls back to `compute`
    /// when this layout is full and the new one is not (256 × N, once, when
    /// the fleet outgrows R) or the factor changed.
    pub fn updated(&self, mut members: Vec<NodeId>, r: Option<usize>) -> Layout {
        members.sort();
        members.dedup();
        let Some(r) = r.filter(|r| *r < members.len()) else {
            return Layout::compute(members, r); // full: nothing to rank
        };
        if self.is_full() || self.replication_factor != Some(r) {
            return Layout::compute(members, Some(r));
        }
        let (added, removed) = diff(&self.members, &members);
        let mut owners = self.owners.clone();
        let mut weights = self.weights.clone();
        for (p, (o, w)) in owners.iter_mut().zip(weights.iter_mut()).enumerate() {
            let p = p as u8;
            if o.iter().any(|m| removed.binary_search(m).is_ok()) {
                // An owner left: the next in line is unknown, re-rank.
                (*w, *o) = top(p, &members, r).into_iter().unzip();
            } else {
                // The old top R (every one still a member) plus the
                // newcomers that beat one of them.
                for m in &added {
                    offer(o, w, r, p, m);
                }
            }
        }
        Layout {
            replication_factor: Some(r),
            members,
            owners,
            weights,
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

/// Puts `m` in the top-`r` list `o` (weights `w`, best first) of partition
/// `p` if it ranks there; one hash.
fn offer(o: &mut Vec<NodeId>, w: &mut Vec<u64>, r: usize, p: u8, m: &NodeId) {
    let wm = weight(p, m);
    let at = o
        .iter()
        .zip(w.iter())
        .position(|(x, wx)| outranks((wm, m), (*wx, x)))
        .unwrap_or(o.len());
    if at < r {
        o.insert(at, m.clone());
        w.insert(at, wm);
        o.truncate(r);
        w.truncate(r);
    }
}

/// The members of sorted `new` not in sorted `old`, and those of `old` not
/// in `new` (both sorted): one merge pass.
fn diff(old: &[NodeId], new: &[NodeId]) -> (Vec<NodeId>, Vec<NodeId>) {
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) if a == b => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a < b => {
                removed.push(a.clone());
                i += 1;
            }
            (Some(a), None) => {
                removed.push(a.clone());
                i += 1;
            }
            (_, Some(b)) => {
                added.push(b.clone());
                j += 1;
            }
            (None, None) => break,
        }
    }
    (added, removed)
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
    fn a_join_or_a_leave_derived_from_the_previous_layout_equals_a_fresh_one() {
        let base = Layout::compute(ids(20), Some(3));
        let mut more = ids(20);
        more.push(NodeId::new("late").unwrap());
        assert_eq!(
            base.updated(more.clone(), Some(3)),
            Layout::compute(more, Some(3))
        );
        let fewer: Vec<NodeId> = ids(20).into_iter().skip(1).collect();
        assert_eq!(
            base.updated(fewer.clone(), Some(3)),
            Layout::compute(fewer, Some(3))
        );
        // Across the full / sharded boundary and a change of factor.
        assert!(base.updated(ids(3), Some(3)).is_full());
        assert_eq!(
            Layout::compute(ids(3), Some(3)).updated(ids(5), Some(3)),
            Layout::compute(ids(5), Some(3))
        );
        assert_eq!(
            base.updated(ids(20), Some(2)),
            Layout::compute(ids(20), Some(2))
        );
        assert_eq!(base.updated(ids(20), None), Layout::compute(ids(20), None));
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
        a.remove(5);
        a.remove(6);
        assert_eq!(a.ranges(), "0-2,255");
        assert_eq!(Owned::ALL.ranges(), "0-255");
        let s = SharedOwned::new();
        assert!(s.load().is_full());
        s.store(a);
        assert_eq!(s.load(), a);
    }

    proptest::proptest! {
        /// Any sequence of joins and leaves (several at once, or none),
        /// applied step by step with `updated`, gives at every step exactly
        /// the layout `compute` gives from scratch, whatever the factor.
        #[test]
        fn updated_layouts_equal_computed_ones(
            r in proptest::option::of(1usize..5),
            start in 0usize..12,
            steps in proptest::collection::vec(
                proptest::collection::vec((0usize..40, proptest::bool::ANY), 0..4),
                1..12,
            ),
        ) {
            let id = |i: usize| NodeId::new(format!("m{i}")).unwrap();
            let mut members: std::collections::BTreeSet<usize> = (0..start).collect();
            let ids_of = |s: &std::collections::BTreeSet<usize>| s.iter().map(|&i| id(i)).collect::<Vec<_>>();
            let mut layout = Layout::compute(ids_of(&members), r);
            for step in steps {
                for (i, join) in step {
                    if join {
                        members.insert(i);
                    } else {
                        members.remove(&i);
                    }
                }
                // Unsorted, with a duplicate: both sort and dedup.
                let mut given = ids_of(&members);
                given.reverse();
                given.extend(given.first().cloned());
                layout = layout.updated(given, r);
                proptest::prop_assert_eq!(&layout, &Layout::compute(ids_of(&members), r));
            }
        }
    }
}
