//! Builds a new data directory from a dump (the other half of `dump.rs`):
//! entries with their bucket index, log runs with their stats, peers, the
//! version vector, counts, clock and a complete Merkle checkpoint, so the
//! first open replays nothing.
//!
//! Every record is decoded before it is written (a damaged record is an
//! error, never a half-understood row), keys must arrive in strictly
//! increasing order (as a dump writes them), and nothing is durable until
//! [`Loader::finish`] flushes; the caller builds into a scratch directory and
//! removes it on any error.

use std::collections::BTreeMap;
use std::path::Path;

use super::backend::{Kv, WriteBatch};
use super::dump::DumpHead;
use super::{codec, keys, schema, CodecError, Counts, LogStats, PeerRecord, Result, Run};
use crate::merkle::{self, Digest, MerkleTree, FANOUT, LEAVES};
use crate::model::{Entry, NodeId};

/// Records per backend batch while loading.
const BATCH_RECORDS: usize = 8192;

pub struct Loader {
    kv: Kv,
    node_id: NodeId,
    batch: WriteBatch,
    in_batch: usize,
    merkle: MerkleTree,
    counts: Counts,
    log: BTreeMap<NodeId, LogStats>,
    max_hlc: u64,
    last_entry: Option<String>,
    last_run: Option<(String, u64)>,
    last_peer: Option<String>,
}

fn corrupt(what: &'static str, reason: impl Into<String>) -> CodecError {
    CodecError {
        what,
        reason: reason.into(),
    }
}

impl Loader {
    /// Opens a new keyspace in `dir` (which must hold none) for node `node_id`.
    pub fn create(dir: &Path, node_id: &NodeId, cache_bytes: u64) -> Result<Loader> {
        let kv = Kv::open(dir, cache_bytes, std::time::Duration::ZERO, None)?;
        if kv.first_with_prefix(&[])?.is_some() {
            return Err(super::StoreError::NotEmpty(dir.display().to_string()));
        }
        Ok(Loader {
            kv,
            node_id: node_id.clone(),
            batch: WriteBatch::default(),
            in_batch: 0,
            merkle: MerkleTree::new(),
            counts: Counts::default(),
            log: BTreeMap::new(),
            max_hlc: 0,
            last_entry: None,
            last_run: None,
            last_peer: None,
        })
    }

    fn put(&mut self, k: Vec<u8>, v: &[u8]) -> Result<()> {
        self.batch.insert(k, v);
        self.in_batch += 1;
        if self.in_batch >= BATCH_RECORDS {
            self.kv.apply(std::mem::take(&mut self.batch))?;
            self.in_batch = 0;
        }
        Ok(())
    }

    pub fn entry(&mut self, key: &str, raw: &[u8]) -> Result<()> {
        if self.last_entry.as_deref().is_some_and(|l| l >= key) {
            return Err(corrupt("snapshot entry", format!("key {key:?} out of order")).into());
        }
        let e: Entry = codec::decode("entry", raw)?;
        let bucket = merkle::bucket_of(key);
        self.merkle.toggle(
            bucket,
            &merkle::item_digest(key, &e.version, e.is_tombstone()),
        );
        if e.is_tombstone() {
            self.counts.tombstones += 1;
        } else {
            self.counts.live += 1;
        }
        self.max_hlc = self.max_hlc.max(e.version.hlc.0);
        self.put(keys::bucket_member(bucket, key), &[])?;
        self.put(keys::entry(key), raw)?;
        self.last_entry = Some(key.to_string());
        Ok(())
    }

    pub fn run(&mut self, origin: &str, first: u64, raw: &[u8]) -> Result<()> {
        let id = NodeId::new(origin).map_err(|e| corrupt("snapshot log run", e.to_string()))?;
        let this = (origin.to_string(), first);
        if self.last_run.as_ref().is_some_and(|l| *l >= this) || first == 0 {
            return Err(
                corrupt("snapshot log run", format!("{origin}/{first} out of order")).into(),
            );
        }
        let run: Run = codec::decode("log run", raw)?;
        let len = run.items.len() as u64;
        if len == 0 {
            return Err(corrupt("snapshot log run", "empty run").into());
        }
        for (_, e) in &run.items {
            self.max_hlc = self.max_hlc.max(e.version.hlc.0);
        }
        let stats = self.log.entry(id.clone()).or_default();
        if stats.len == 0 {
            stats.first = first;
        }
        stats.len += len;
        stats.last = first + len - 1;
        self.put(keys::log_run(&id, first), raw)?;
        self.last_run = Some(this);
        Ok(())
    }

    /// A remembered peer; the node's own id is left out (a node restored
    /// under another id must not remember itself as its own peer).
    pub fn peer(&mut self, id: &str, raw: &[u8]) -> Result<()> {
        if self.last_peer.as_deref().is_some_and(|l| l >= id) {
            return Err(corrupt("snapshot peer", format!("{id:?} out of order")).into());
        }
        self.last_peer = Some(id.to_string());
        let peer = NodeId::new(id).map_err(|e| corrupt("snapshot peer", e.to_string()))?;
        let _: PeerRecord = codec::decode("peer", raw)?;
        if peer == self.node_id {
            return Ok(());
        }
        self.put(keys::peer(&peer), raw)
    }

    /// The Merkle root of the entries loaded so far.
    pub fn merkle_root(&mut self) -> Digest {
        self.merkle.root()
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Writes the vector, log stats, meta and the Merkle checkpoint, flushes
    /// and closes. `restored_mark`: the node must check its own sequence
    /// numbers with a peer before it writes (see `Store::restored`).
    pub fn finish(mut self, head: &DumpHead, restored_mark: bool) -> Result<()> {
        for (origin, seq) in head.vv.iter() {
            self.put(keys::vv(origin), &seq.to_be_bytes())?;
        }
        let log = std::mem::take(&mut self.log);
        for (origin, stats) in &log {
            if stats.last > head.vv.get(origin) {
                return Err(corrupt(
                    "snapshot log run",
                    format!("{origin} logs seq {} beyond its vector", stats.last),
                )
                .into());
            }
            self.put(keys::log_stats(origin), &codec::encode(stats))?;
        }
        for chunk in 0..(LEAVES / FANOUT) as u16 {
            let mut bytes = Vec::with_capacity(16 * FANOUT);
            for i in 0..FANOUT as u16 {
                bytes.extend_from_slice(&self.merkle.leaf(chunk * FANOUT as u16 + i));
            }
            if bytes.iter().any(|b| *b != 0) {
                self.put(keys::leaf_chunk(chunk), &bytes)?;
            }
        }
        let next_change = head.next_change.max(1);
        let hlc = head.hlc.max(self.max_hlc);
        let node = self.node_id.to_string();
        let counts = codec::encode(&self.counts);
        let metas: [(&str, &[u8]); 7] = [
            ("node_id", node.as_bytes()),
            ("schema_version", &schema::SCHEMA_VERSION.to_be_bytes()),
            ("hlc", &hlc.to_be_bytes()),
            ("counts", &counts),
            ("next_change", &next_change.to_be_bytes()),
            ("merkle_at", &next_change.to_be_bytes()),
            ("commit", &1u64.to_be_bytes()),
        ];
        for (name, v) in metas {
            self.put(keys::meta(name), v)?;
        }
        if restored_mark {
            self.put(keys::meta(super::RESTORED_META), &[1])?;
        }
        self.kv.apply(std::mem::take(&mut self.batch))?;
        self.kv.flush()?;
        self.kv.close()?;
        Ok(())
    }
}
