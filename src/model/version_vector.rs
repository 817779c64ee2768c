use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::NodeId;

/// Per origin, the highest seq applied with no gap below it: a compact proof
/// of everything a node has seen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionVector(pub BTreeMap<NodeId, u64>);

impl VersionVector {
    pub fn get(&self, origin: &NodeId) -> u64 {
        self.0.get(origin).copied().unwrap_or(0)
    }

    pub fn set(&mut self, origin: NodeId, seq: u64) {
        self.0.insert(origin, seq);
    }

    /// Pointwise maximum.
    pub fn merge(&mut self, other: &VersionVector) {
        for (origin, &seq) in &other.0 {
            let cur = self.0.entry(origin.clone()).or_insert(0);
            *cur = (*cur).max(seq);
        }
    }

    /// Whether `self` has seen everything `other` has.
    pub fn dominates(&self, other: &VersionVector) -> bool {
        other.0.iter().all(|(o, &s)| self.get(o) >= s)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, u64)> {
        self.0.iter().map(|(k, v)| (k, *v))
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_takes_pointwise_max_and_dominates() {
        let a_id = NodeId::new("a").unwrap();
        let b_id = NodeId::new("b").unwrap();
        let mut x = VersionVector::default();
        x.set(a_id.clone(), 3);
        let mut y = VersionVector::default();
        y.set(a_id.clone(), 1);
        y.set(b_id.clone(), 4);
        assert!(!x.dominates(&y));
        x.merge(&y);
        assert_eq!(x.get(&a_id), 3);
        assert_eq!(x.get(&b_id), 4);
        assert!(x.dominates(&y));
    }
}
