//! Rendezvous (highest-random-weight) hashing of a partition onto nodes.
//!
//! Each `(partition, node)` pair gets a weight, the first 8 bytes of
//! BLAKE3(partition byte ‖ node id); a partition's owners are the `r` nodes
//! of highest weight (ties, which need a 64-bit collision, go to the smaller
//! id). A node's weight for a partition does not depend on the other nodes,
//! which is what makes movement minimal: adding a node only takes the
//! partitions where it enters the top `r`, removing one only gives away
//! those where it was in the top `r`.

use crate::model::NodeId;

/// The weight of `node` for `partition`.
pub fn weight(partition: u8, node: &NodeId) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&[partition]);
    h.update(node.as_str().as_bytes());
    let bytes = h.finalize();
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes.as_bytes()[..8]);
    u64::from_be_bytes(w)
}

/// The `r` owners of `partition` among `members` (deduplicated), highest
/// weight first. Fewer when there are fewer members.
pub fn owners_of(partition: u8, members: &[NodeId], r: usize) -> Vec<NodeId> {
    top(partition, members, r)
        .into_iter()
        .map(|(_, m)| m)
        .collect()
}

/// [`owners_of`] with each owner's weight (what a newcomer must beat).
pub fn top(partition: u8, members: &[NodeId], r: usize) -> Vec<(u64, NodeId)> {
    let mut ranked: Vec<(u64, &NodeId)> =
        members.iter().map(|m| (weight(partition, m), m)).collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    ranked.dedup_by(|a, b| a.1 == b.1);
    ranked
        .into_iter()
        .take(r)
        .map(|(w, m)| (w, m.clone()))
        .collect()
}

/// Whether weighted node `a` ranks before `b` for a partition: the higher
/// weight, on a tie the smaller id (the order of [`top`]).
pub fn outranks(a: (u64, &NodeId), b: (u64, &NodeId)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn nodes(n: usize) -> Vec<NodeId> {
        (0..n)
            .map(|i| NodeId::new(format!("node-{i}")).unwrap())
            .collect()
    }

    #[test]
    fn owners_are_distinct_and_as_many_as_asked() {
        let ms = nodes(6);
        for p in 0..=255u8 {
            let o = owners_of(p, &ms, 3);
            assert_eq!(o.len(), 3);
            assert_eq!(o.iter().collect::<BTreeSet<_>>().len(), 3);
        }
        assert_eq!(owners_of(0, &ms[..2], 3).len(), 2);
    }

    #[test]
    fn owners_do_not_depend_on_member_order() {
        let mut ms = nodes(7);
        let a: Vec<_> = (0..=255u8).map(|p| owners_of(p, &ms, 3)).collect();
        ms.reverse();
        let b: Vec<_> = (0..=255u8).map(|p| owners_of(p, &ms, 3)).collect();
        assert_eq!(a, b);
    }

    proptest! {
        /// Adding one node changes only partitions where it becomes an
        /// owner, and there it displaces exactly one old owner.
        #[test]
        fn a_join_moves_only_what_the_new_node_takes(n in 1usize..12, r in 1usize..5, salt in any::<u32>()) {
            let ms: Vec<NodeId> = (0..n).map(|i| NodeId::new(format!("n{salt}-{i}")).unwrap()).collect();
            let new = NodeId::new(format!("new-{salt}")).unwrap();
            let mut more = ms.clone();
            more.push(new.clone());
            for p in 0..=255u8 {
                let before: BTreeSet<_> = owners_of(p, &ms, r).into_iter().collect();
                let after: BTreeSet<_> = owners_of(p, &more, r).into_iter().collect();
                if after.contains(&new) {
                    let kept = before.intersection(&after).count();
                    prop_assert!(kept + 1 == after.len());
                    prop_assert!(before.len() == after.len() || before.len() < r);
                } else {
                    prop_assert_eq!(&before, &after);
                }
            }
        }

        /// Removing one node changes only partitions it owned, and there
        /// only one owner (it) is replaced.
        #[test]
        fn a_leave_moves_only_what_the_leaver_held(n in 2usize..12, r in 1usize..5, salt in any::<u32>(), gone in any::<prop::sample::Index>()) {
            let ms: Vec<NodeId> = (0..n).map(|i| NodeId::new(format!("n{salt}-{i}")).unwrap()).collect();
            let gone = ms[gone.index(n)].clone();
            let fewer: Vec<NodeId> = ms.iter().filter(|m| **m != gone).cloned().collect();
            for p in 0..=255u8 {
                let before: BTreeSet<_> = owners_of(p, &ms, r).into_iter().collect();
                let after: BTreeSet<_> = owners_of(p, &fewer, r).into_iter().collect();
                if before.contains(&gone) {
                    prop_assert_eq!(before.intersection(&after).count() + 1, before.len());
                } else {
                    prop_assert_eq!(&before, &after);
                }
            }
        }

        /// Every node owns close to 256·R/N partitions.
        #[test]
        fn load_is_balanced(n in 3usize..10, r in 1usize..4, salt in any::<u32>()) {
            let ms: Vec<NodeId> = (0..n).map(|i| NodeId::new(format!("n{salt}-{i}")).unwrap()).collect();
            let r = r.min(n);
            let mut count = std::collections::BTreeMap::new();
            for p in 0..=255u8 {
                for o in owners_of(p, &ms, r) {
                    *count.entry(o).or_insert(0usize) += 1;
                }
            }
            let ideal = 256.0 * r as f64 / n as f64;
            for m in &ms {
                let c = *count.get(m).unwrap_or(&0) as f64;
                // Binomial spread: within ±60 % of ideal for these sizes.
                prop_assert!((c - ideal).abs() <= 0.6 * ideal + 6.0, "{m}: {c} vs {ideal}");
            }
        }
    }
}
