//! An incremental Merkle tree over the whole key space, for anti-entropy.
//!
//! Keys are hashed into 65,536 leaf buckets (the first 16 bits of BLAKE3 of
//! the key). A leaf's digest is the XOR of the digests of its items, an item
//! being `(key, version, tombstone?)`: XOR makes a leaf independent of the
//! order of writes and lets one write update it in O(1) (XOR the old item out
//! and the new one in). Above the leaves sit four levels of fanout 16, each
//! node the BLAKE3 of its children, computed lazily when read, so a write
//! costs two small hashes and the tree costs ~1.1 MB of memory.
//!
//! Two trees over the same entries have the same root whatever the order of
//! writes; comparing trees top-down touches O(differences × log(keys)) nodes.
//! The XOR set-hash is not collision resistant against an adversary who can
//! choose items; only authenticated cluster members write items, so we accept
//! that (Garage and Cassandra make similar trade-offs for speed).

use crate::model::Version;

/// 128-bit digest: ample against accidental collisions, half the wire size of 256.
pub type Digest = [u8; 16];

pub const ZERO: Digest = [0; 16];
/// Bits of the key hash that choose the leaf.
pub const LEAF_BITS: u32 = 16;
pub const LEAVES: usize = 1 << LEAF_BITS;
/// Children per inner node.
pub const FANOUT: usize = 16;
/// Level 0 is the root, level `LEAF_LEVEL` the leaves.
pub const LEAF_LEVEL: u8 = 4;

/// A node of the tree: `index` runs over `FANOUT^level` nodes at `level`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct NodeRef {
    pub level: u8,
    pub index: u32,
}

impl NodeRef {
    pub const ROOT: NodeRef = NodeRef { level: 0, index: 0 };

    pub fn is_leaf(self) -> bool {
        self.level == LEAF_LEVEL
    }

    /// Children, or `None` for a leaf or an out-of-range node (bad input from a peer).
    pub fn children(self) -> Option<impl Iterator<Item = NodeRef>> {
        if self.level >= LEAF_LEVEL || !self.is_valid() {
            return None;
        }
        let base = self.index * FANOUT as u32;
        let level = self.level + 1;
        Some((0..FANOUT as u32).map(move |i| NodeRef {
            level,
            index: base + i,
        }))
    }

    pub fn is_valid(self) -> bool {
        self.level <= LEAF_LEVEL && (self.index as usize) < FANOUT.pow(self.level as u32)
    }
}

pub fn bucket_of(key: &str) -> u16 {
    let h = blake3::hash(key.as_bytes());
    u16::from_be_bytes([h.as_bytes()[0], h.as_bytes()[1]])
}

pub fn item_digest(key: &str, version: &Version, tombstone: bool) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(&(key.len() as u32).to_be_bytes());
    h.update(key.as_bytes());
    h.update(&version.hlc.0.to_be_bytes());
    h.update(version.node.as_str().as_bytes());
    h.update(&[tombstone as u8]);
    truncate(h.finalize())
}

fn truncate(h: blake3::Hash) -> Digest {
    let mut d = ZERO;
    d.copy_from_slice(&h.as_bytes()[..16]);
    d
}

fn xor(a: &mut Digest, b: &Digest) {
    for (x, y) in a.iter_mut().zip(b) {
        *x ^= y;
    }
}

#[derive(Clone)]
pub struct MerkleTree {
    /// `levels[l]` holds the `FANOUT^l` digests of level `l`; the last is the leaves.
    levels: Vec<Vec<Digest>>,
    /// Inner nodes whose digest is stale, per level (a leaf changed below them).
    dirty: Vec<Vec<bool>>,
    any_dirty: bool,
}

impl Default for MerkleTree {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MerkleTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MerkleTree").finish_non_exhaustive()
    }
}

impl MerkleTree {
    pub fn new() -> Self {
        let levels: Vec<Vec<Digest>> = (0..=LEAF_LEVEL as u32)
            .map(|l| vec![ZERO; FANOUT.pow(l)])
            .collect();
        let dirty = (0..LEAF_LEVEL as u32)
            .map(|l| vec![false; FANOUT.pow(l)])
            .collect();
        MerkleTree {
            levels,
            dirty,
            any_dirty: false,
        }
    }

    /// Adds or removes an item (XOR is its own inverse).
    pub fn toggle(&mut self, bucket: u16, item: &Digest) {
        xor(&mut self.levels[LEAF_LEVEL as usize][bucket as usize], item);
        self.mark_dirty(bucket);
    }

    /// Sets a leaf outright (loading persisted leaves at open).
    pub fn set_leaf(&mut self, bucket: u16, digest: Digest) {
        self.levels[LEAF_LEVEL as usize][bucket as usize] = digest;
        self.mark_dirty(bucket);
    }

    fn mark_dirty(&mut self, bucket: u16) {
        let mut idx = bucket as usize;
        for level in (0..LEAF_LEVEL as usize).rev() {
            idx /= FANOUT;
            self.dirty[level][idx] = true;
        }
        self.any_dirty = true;
    }

    pub fn leaf(&self, bucket: u16) -> Digest {
        self.levels[LEAF_LEVEL as usize][bucket as usize]
    }

    fn refresh(&mut self) {
        if !self.any_dirty {
            return;
        }
        for level in (0..LEAF_LEVEL as usize).rev() {
            for idx in 0..self.dirty[level].len() {
                if !self.dirty[level][idx] {
                    continue;
                }
                self.dirty[level][idx] = false;
                let children = &self.levels[level + 1][idx * FANOUT..(idx + 1) * FANOUT];
                let digest = if children.iter().all(|c| *c == ZERO) {
                    ZERO
                } else {
                    let mut h = blake3::Hasher::new();
                    for c in children {
                        h.update(c);
                    }
                    truncate(h.finalize())
                };
                self.levels[level][idx] = digest;
            }
        }
        self.any_dirty = false;
    }

    pub fn root(&mut self) -> Digest {
        self.node(NodeRef::ROOT).unwrap_or(ZERO)
    }

    /// A node's digest; `None` if the reference is out of range.
    pub fn node(&mut self, node: NodeRef) -> Option<Digest> {
        if !node.is_valid() {
            return None;
        }
        self.refresh();
        Some(self.levels[node.level as usize][node.index as usize])
    }

    /// The digests of a node's children, in order.
    pub fn children(&mut self, node: NodeRef) -> Option<Vec<Digest>> {
        let kids: Vec<NodeRef> = node.children()?.collect();
        self.refresh();
        Some(
            kids.iter()
                .map(|k| self.levels[k.level as usize][k.index as usize])
                .collect(),
        )
    }

    /// Number of non-empty leaves: a cheap occupancy figure for introspection.
    pub fn occupied_leaves(&self) -> usize {
        self.levels[LEAF_LEVEL as usize]
            .iter()
            .filter(|d| **d != ZERO)
            .count()
    }
}

/// Leaf buckets covered by a node (inclusive range), for listing a subtree's keys.
pub fn leaf_range(node: NodeRef) -> std::ops::RangeInclusive<u16> {
    let span = FANOUT.pow((LEAF_LEVEL - node.level) as u32);
    let start = node.index as usize * span;
    (start as u16)..=((start + span - 1) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Hlc, NodeId};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn version(h: u64) -> Version {
        Version {
            hlc: Hlc(h),
            node: NodeId::new("n").unwrap(),
        }
    }

    /// Builds a tree from final state only.
    fn rebuilt(state: &BTreeMap<String, (u64, bool)>) -> MerkleTree {
        let mut t = MerkleTree::new();
        for (k, (h, tomb)) in state {
            t.toggle(bucket_of(k), &item_digest(k, &version(*h), *tomb));
        }
        t
    }

    proptest! {
        #[test]
        fn incremental_root_equals_rebuilt_root(writes in proptest::collection::vec((0u16..300, 1u64..1000, any::<bool>()), 0..300)) {
            let mut t = MerkleTree::new();
            let mut state: BTreeMap<String, (u64, bool)> = BTreeMap::new();
            for (i, (k, h, tomb)) in writes.into_iter().enumerate() {
                let key = format!("k{k}");
                let h = h * 1000 + i as u64; // distinct versions
                if let Some((oh, ot)) = state.get(&key) {
                    t.toggle(bucket_of(&key), &item_digest(&key, &version(*oh), *ot));
                }
                t.toggle(bucket_of(&key), &item_digest(&key, &version(h), tomb));
                state.insert(key, (h, tomb));
                if i % 17 == 0 { t.root(); } // interleave reads with writes
            }
            prop_assert_eq!(t.root(), rebuilt(&state).root());
        }

        #[test]
        fn root_is_independent_of_insertion_order(keys in proptest::collection::btree_set(0u32..100_000, 0..200)) {
            let state: BTreeMap<String, (u64, bool)> = keys.iter().map(|k| (format!("key{k}"), (*k as u64, k % 3 == 0))).collect();
            let mut fwd = MerkleTree::new();
            for (k, (h, t)) in state.iter() { fwd.toggle(bucket_of(k), &item_digest(k, &version(*h), *t)); }
            let mut rev = MerkleTree::new();
            for (k, (h, t)) in state.iter().rev() { rev.toggle(bucket_of(k), &item_digest(k, &version(*h), *t)); }
            prop_assert_eq!(fwd.root(), rev.root());
        }
    }

    #[test]
    fn empty_tree_has_zero_root_and_one_key_changes_it() {
        let mut t = MerkleTree::new();
        assert_eq!(t.root(), ZERO);
        t.toggle(bucket_of("a"), &item_digest("a", &version(1), false));
        assert_ne!(t.root(), ZERO);
        t.toggle(bucket_of("a"), &item_digest("a", &version(1), false));
        assert_eq!(t.root(), ZERO);
    }

    #[test]
    fn tombstone_differs_from_value_with_same_version() {
        assert_ne!(
            item_digest("a", &version(1), false),
            item_digest("a", &version(1), true)
        );
    }

    #[test]
    fn node_refs_reject_out_of_range() {
        assert!(NodeRef { level: 5, index: 0 }.children().is_none());
        assert!(NodeRef {
            level: 1,
            index: 16
        }
        .children()
        .is_none());
        assert!(!NodeRef {
            level: 4,
            index: 65_536
        }
        .is_valid());
        assert_eq!(leaf_range(NodeRef::ROOT), 0..=u16::MAX);
        assert_eq!(leaf_range(NodeRef { level: 3, index: 2 }), 32..=47);
    }
}
