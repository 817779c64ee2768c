use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Hlc, NodeId};

/// The total order of writes in the cluster: timestamp first, then the node
/// that made the write. Equal versions are the same write.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    pub hlc: Hlc,
    pub node: NodeId,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.hlc.0, self.node)
    }
}

/// Free-form labels carried with a value (sensor kind, unit, reading time).
pub type Meta = BTreeMap<String, String>;

/// The state of one key: a value, or a tombstone (`value: None`) that keeps a
/// delete from being undone by an older write arriving late.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub version: Version,
    pub value: Option<Vec<u8>>,
    pub meta: Meta,
}

impl Entry {
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// Last-writer-wins: whether `self` replaces `current`. Comparing only
    /// versions makes merge commutative, associative and idempotent.
    pub fn supersedes(&self, current: Option<&Entry>) -> bool {
        match current {
            None => true,
            Some(cur) => self.version > cur.version,
        }
    }
}

/// One write as accepted at its origin. `seq` numbers the origin's writes
/// 1, 2, 3, … without gaps, so a replica can tell exactly what it is missing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub origin: NodeId,
    pub seq: u64,
    pub key: String,
    pub entry: Entry,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(hlc: u64, node: &str, value: Option<u8>) -> Entry {
        Entry {
            version: Version {
                hlc: Hlc(hlc),
                node: NodeId::new(node).unwrap(),
            },
            value: value.map(|v| vec![v]),
            meta: Meta::new(),
        }
    }

    /// Applies entries to a map with the store's rule.
    fn merge(entries: &[(u8, Entry)]) -> BTreeMap<u8, Entry> {
        let mut map = BTreeMap::new();
        for (k, e) in entries {
            if e.supersedes(map.get(k)) {
                map.insert(*k, e.clone());
            }
        }
        map
    }

    fn arb_entry() -> impl Strategy<Value = (u8, Entry)> {
        (0u8..6, 0u64..20, prop::sample::select(vec!["a", "b", "c"])).prop_map(|(k, h, n)| {
            // Equal versions must be the same write, as they are in the
            // system: value and tombstone-ness derive from the version.
            let tag = (h as u8) ^ n.as_bytes()[0] ^ k;
            let v = (tag % 4 != 0).then_some(tag);
            (k, entry(h, n, v))
        })
    }

    proptest! {
        #[test]
        fn merge_is_order_independent_and_idempotent(
            mut xs in proptest::collection::vec(arb_entry(), 0..40),
            seed in any::<u64>(),
        ) {
            let once = merge(&xs);
            // Duplicates change nothing.
            let mut dup = xs.clone();
            dup.extend(xs.iter().cloned());
            prop_assert_eq!(&merge(&dup), &once);
            // Any permutation gives the same map.
            let n = xs.len();
            let mut s = seed;
            for i in (1..n).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                xs.swap(i, (s >> 33) as usize % (i + 1));
            }
            prop_assert_eq!(&merge(&xs), &once);
        }

        #[test]
        fn merge_is_associative(a in proptest::collection::vec(arb_entry(), 0..15),
                                b in proptest::collection::vec(arb_entry(), 0..15)) {
            // merge(a ∪ b) equals merging the already merged halves.
            let mut all = a.clone();
            all.extend(b.iter().cloned());
            let left: Vec<_> = merge(&a).into_iter().chain(merge(&b)).collect();
            prop_assert_eq!(merge(&left), merge(&all));
        }
    }

    #[test]
    fn tombstone_with_newer_version_wins_and_older_write_cannot_resurrect() {
        let put = entry(5, "a", Some(1));
        let del = entry(6, "b", None);
        let late = entry(4, "c", Some(9));
        let m = merge(&[(0, put.clone()), (0, del.clone()), (0, late.clone())]);
        assert!(m[&0].is_tombstone());
        let m = merge(&[(0, late), (0, del), (0, put)]);
        assert!(m[&0].is_tombstone());
    }
}
