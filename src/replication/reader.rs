//! What the replicator reads of a node's state, as a small trait.
//!
//! The replicator is sans-IO: it never names the storage engine. Every read
//! it makes goes through [`ReplicaReader`], so the shell decides where those
//! reads run (the node runs each protocol step on tokio's blocking pool,
//! because [`Store`]'s in-memory state shares a lock with the apply thread,
//! which holds it through a whole commit group), and a simulation can serve
//! them from any store it likes. Every method answers from durable-or-applied
//! state at the moment of the call; none writes to disk. Outgoing messages
//! carry `clock()` (the node's HLC high-water mark; reading it does not
//! advance it); the node machine, not the replicator, decides whether to
//! adopt a peer's stamp (memory only).

use crate::merkle::{Digest, NodeRef};
use crate::model::{Entry, Hlc, NodeId, Version, VersionVector};
use crate::store::{LogRead, Result, Store};

pub trait ReplicaReader {
    /// The node's HLC high-water mark, for an outgoing message.
    fn clock(&self) -> Hlc;
    /// Adopts a peer's stamp unless it is further ahead of `wall_ms` than
    /// the max offset; false if not adopted.
    fn observe_clock(&self, remote: Hlc, wall_ms: u64) -> bool;
    fn version_vector(&self) -> VersionVector;
    fn merkle_root(&self) -> Digest;
    fn merkle_children(&self, node: NodeRef) -> Option<Vec<Digest>>;
    fn get(&self, key: &str) -> Result<Option<Entry>>;
    /// Every key of a Merkle leaf with its version and tombstone flag.
    fn bucket_versions(&self, bucket: u16) -> Result<Vec<(String, Version, bool)>>;
    /// Up to `limit` logged deltas of `origin` after `after`.
    fn deltas_after(&self, origin: &NodeId, after: u64, limit: usize) -> Result<LogRead>;
}

impl ReplicaReader for Store {
    fn clock(&self) -> Hlc {
        Store::hlc(self)
    }
    fn observe_clock(&self, remote: Hlc, wall_ms: u64) -> bool {
        Store::observe_clock(self, remote, wall_ms)
    }
    fn version_vector(&self) -> VersionVector {
        Store::version_vector(self)
    }
    fn merkle_root(&self) -> Digest {
        Store::merkle_root(self)
    }
    fn merkle_children(&self, node: NodeRef) -> Option<Vec<Digest>> {
        Store::merkle_children(self, node)
    }
    fn get(&self, key: &str) -> Result<Option<Entry>> {
        Store::get(self, key)
    }
    fn bucket_versions(&self, bucket: u16) -> Result<Vec<(String, Version, bool)>> {
        Store::bucket_versions(self, bucket)
    }
    fn deltas_after(&self, origin: &NodeId, after: u64, limit: usize) -> Result<LogRead> {
        Store::deltas_after(self, origin, after, limit)
    }
}
