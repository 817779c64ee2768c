//! Placement: which nodes own which part of the key space, when the cluster
//! keeps `R` copies of each key instead of one per node (`--replication-factor`).
//!
//! **Partitions.** The key space is cut into 256 partitions: the top 8 bits
//! of a key's Merkle bucket (the first byte of BLAKE3(key)). A partition is
//! thus exactly one level-2 node of the Merkle tree, and its tree a subtree:
//! anti-entropy restricted to a set of partitions needs no new digests.
//!
//! **Owners** ([`rendezvous`]). A partition's owners are the `R` eligible
//! members with the highest `BLAKE3(partition, node id)` (rendezvous, or
//! highest-random-weight, hashing). Eligible: this node, and every member
//! that has not left and has not been dead for longer than the grace period
//! (`rebalance_after`): a short outage moves nothing, a long one hands the
//! dead node's partitions to the next in line. [`Layout::compute`] is a pure
//! function of the eligible set, so two nodes that see the same members
//! agree on every owner with no coordination and no message. Guarantees
//! (tested, also by proptest): each partition has `min(R, members)` distinct
//! owners; load is balanced in expectation (each node owns ≈ 256·R/N); when
//! one node joins or leaves, only the partitions where it enters or leaves
//! the top R change owners (≈ 256·R/N of them), every other owner stays.
//! Costs: a node derives each layout from its previous one
//! ([`Layout::updated`], equal to `compute` by proptest): 256 hashes per
//! member that joins, ≈ 256·R per member that leaves (only the partitions
//! it owned are re-ranked), plus O(N) to compare member lists; from
//! scratch (`compute`) it is 256 × N (≈ 0.2 ms for 6 nodes). Memory: 256 ×
//! R ids and weights; a lookup is one array index.
//!
//! **Full replication is the default and costs nothing.** With `R` unset or
//! `R ≥` the number of eligible members, every node owns every partition:
//! [`Layout::is_full`] is true, [`Owned`] is all ones, and every check below
//! is the same single bit test that is always true.
//!
//! **Internal keys** (API keys, `crate::model::is_internal`) are owned by
//! every node whatever `R`: every node must authenticate every request.
//!
//! **Delta log and version vectors** (the hard part). An origin still
//! numbers its writes 1, 2, 3, … without gaps, but a node receives only the
//! writes of the partitions it owns: the origin pushes each write straight
//! to the key's owners under a *cover* (`replication::msg::Cover`: the seq
//! range the push stands for, and the partitions it was cut for), and the
//! receiver logs the deltas and moves its version vector over the holes
//! (`store::Op::Skip`) in the same durable batch. The vector then means
//! "complete, for my partitions, up to here", so gap detection, pulls (an
//! origin answers with its own stream cut to the asker's partitions), the
//! own-origin fence and cumulative quorum acks work unchanged, and a write
//! costs a message, a commit and a log record on its R owners only. The
//! price: only the origin serves its stream (no other node holds all of
//! it), so a delta an owner missed while the origin was unreachable comes
//! by anti-entropy with a co-owner; and the log of a foreign origin has
//! holes, which a pull reads as "unavailable". *Stubs* ([`stub`]: key and
//! version, no value) remain for one passing case: a node that still sees
//! full replication pulls the classic way from one that shards, and gets
//! stubs for the partitions the answerer thinks it does not own; the store
//! logs a stub without storing anything.
//!
//! **Forwarding.** Any node accepts any `/kv` request; a node that does not
//! own the key forwards it over HTTP(S) to an owner's advertised client URL
//! (membership gossips it), with the caller's `Authorization` header, and
//! returns the owner's status, headers and body unchanged. HTTP rather than
//! QUIC because the owner must run the very same handler (auth, scope,
//! conditional writes, quorums, error bodies): forwarding the request keeps
//! one code path and makes every status code right by construction. The
//! forwarded request carries `x-hub-forwarded: <node>`; a node never
//! forwards a request that carries it (no loops while views disagree), it
//! serves it itself.
//!
//! **Rebalancing.** When the layout changes, a node that holds data of a
//! partition (non-empty Merkle subtree) runs anti-entropy, restricted to the
//! partitions that peer owns, with each peer that newly owns one of them:
//! the new owner receives the entries (existing machinery: Merkle descent;
//! a subtree the new owner does not have at all is streamed whole in
//! batches paced by the receiver, `replication::ae_stream`, the rest is
//! compared leaf by leaf). Reads and writes go on meanwhile: writes go to
//! the current owners (the new ones included); a read that misses at an
//! owner is tried at the other owners. Once the layout has held for the
//! grace period and a session with every owner, begun under it, found that
//! owner holding every item of ours there (it wanted none: it may hold
//! more, as later writes reach only the owners), the old holder drops the partition
//! (`Op::DropPartition`, one partition per commit group so a large handoff
//! never becomes one stalling batch). Not a consensus: two nodes whose views disagree
//! for longer than the grace period could each drop after confirming with
//! the other. Progress: [`Progress`] in introspection and `/metrics`.
//!
//! Not done (README "Sharding"): listings, the change feed and sensors are
//! node-local; the drop of handed-off data is not a consensus (above).

pub mod layout;
pub mod rendezvous;
pub mod routes;

pub use layout::{eligible_members, Layout, Owned, Progress, SharedOwned};
pub use rendezvous::owners_of;
pub use routes::{PlacementHandle, Routes};

use crate::merkle;
use crate::model::{is_internal, Delta, Entry};

/// Number of partitions: the top 8 bits of the 16-bit Merkle bucket.
pub const PARTITIONS: usize = 256;

/// The `meta` label that marks a stub delta (see the module docs). Only hub
/// itself sets `meta` (sensor kind, unit, time), so no client can forge it.
pub const STUB_META: &str = "hub.stub";

/// The partition of a Merkle bucket.
pub fn partition_of_bucket(bucket: u16) -> u8 {
    (bucket >> 8) as u8
}

/// The partition of a key.
pub fn partition_of(key: &str) -> u8 {
    partition_of_bucket(merkle::bucket_of(key))
}

/// Whether a delta is a stub (version only, no value).
pub fn is_stub(entry: &Entry) -> bool {
    entry.value.is_none() && entry.meta.contains_key(STUB_META)
}

/// The stub of a delta: the same origin, seq, key and version, no value.
pub fn stub(d: &Delta) -> Delta {
    if is_stub(&d.entry) {
        return d.clone();
    }
    let mut meta = crate::model::Meta::new();
    meta.insert(STUB_META.to_string(), String::new());
    Delta {
        origin: d.origin.clone(),
        seq: d.seq,
        key: d.key.clone(),
        entry: Entry {
            version: d.entry.version.clone(),
            value: None,
            meta,
        },
    }
}

/// Whether a key must be stored by a node owning `owned`: internal keys
/// everywhere, others in their partition's owners.
pub fn stores(owned: &Owned, key: &str) -> bool {
    owned.is_full() || is_internal(key) || owned.contains(partition_of(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Hlc, NodeId, Version};

    #[test]
    fn partition_is_the_top_byte_of_the_merkle_bucket() {
        for key in ["a", "b", "sensor/1", "zzz"] {
            let b = merkle::bucket_of(key);
            assert_eq!(partition_of(key) as u16, b >> 8);
        }
    }

    #[test]
    fn stub_keeps_version_and_drops_value() {
        let d = Delta {
            origin: NodeId::new("a").unwrap(),
            seq: 7,
            key: "k".into(),
            entry: Entry {
                version: Version {
                    hlc: Hlc(5),
                    node: NodeId::new("a").unwrap(),
                },
                value: Some(b"v".to_vec()),
                meta: Default::default(),
            },
        };
        let s = stub(&d);
        assert!(is_stub(&s.entry));
        assert!(!is_stub(&d.entry));
        assert_eq!(
            (s.seq, &s.key, &s.entry.version),
            (7, &d.key, &d.entry.version)
        );
        assert_eq!(stub(&s), s);
    }
}
