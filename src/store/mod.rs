//! Durable state of one node: the LWW map, the per-origin delta log, the
//! apply-order change feed, the version vector and the Merkle leaves.
//!
//! Guarantees: every call to [`Store::apply`] is atomic (one backend batch
//! across all logical tables), and once [`Store::flush`] returns, everything
//! applied before it survives a crash. The group-commit loop in
//! [`commit`](crate::store::commit) calls them in that order and answers
//! clients only after the flush. In-memory derived state (version vector,
//! Merkle tree, clock, counts) is loaded at open from small persisted
//! summaries, never by scanning the entries, so restart time does not grow
//! with the number of keys.

mod backend;
mod codec;
pub mod commit;
mod error;
mod keys;
mod schema;
mod write;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::merkle::{self, Digest, MerkleTree, NodeRef};
use crate::model::{Clock, Delta, Entry, Hlc, Meta, NodeId, Version, VersionVector};

pub use backend::BackendError;
pub use codec::CodecError;
pub use error::{Result, StoreError};
pub use schema::SCHEMA_VERSION;
pub use write::{Condition, Op, Outcome};

use backend::Kv;

#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The node this directory belongs to; `None` to open whatever node's
    /// directory it is (offline inspection).
    pub node_id: Option<NodeId>,
    /// Deltas kept per origin; older ones are trimmed.
    pub log_retention: u64,
    /// Bound on the storage engine's page cache.
    pub cache_bytes: u64,
    pub max_clock_offset_ms: u64,
    /// How long opening waits for the directory lock. sled releases it a
    /// moment after a handle is dropped, so a node restarting in the same
    /// process needs a short wait; inspection of a running node's directory
    /// should fail at once instead. Default 2 s.
    pub lock_wait: std::time::Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            node_id: None,
            log_retention: 1_000_000,
            cache_bytes: 64 << 20,
            max_clock_offset_ms: 500,
            lock_wait: std::time::Duration::from_secs(2),
        }
    }
}

/// One record of the apply-order change feed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub key: String,
    pub entry: Entry,
    /// Origin and seq when the change came as a delta; `None` when it came
    /// from anti-entropy (state, not a logged delta).
    pub origin: Option<(NodeId, u64)>,
}

/// An origin's contiguous deltas from one commit group; seq = first + index.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Run {
    pub items: Vec<(String, Entry)>,
}

/// One change of the apply-order feed. Deltas are referenced, not copied:
/// their content lives once, in the origin's log run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum FeedItem {
    Delta {
        origin: NodeId,
        seq: u64,
        key: String,
    },
    Sync {
        key: String,
        entry: Entry,
    },
}

/// Which deltas of one origin a node still holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogStats {
    pub first: u64,
    pub last: u64,
    pub len: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub live: u64,
    pub tombstones: u64,
}

/// A member as remembered across restarts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    pub addr: String,
    pub incarnation: u64,
}

/// Answer to "deltas of `origin` after `seq`".
#[derive(Debug, PartialEq)]
pub enum LogRead {
    /// Contiguous deltas starting at the requested seq (empty: nothing newer).
    Deltas(Vec<Delta>),
    /// The log no longer (or never) held the next delta: use anti-entropy.
    Unavailable { first_retained: u64 },
}

pub(crate) struct State {
    clock: Clock,
    vv: VersionVector,
    merkle: MerkleTree,
    next_change: u64,
    log: BTreeMap<NodeId, LogStats>,
    counts: Counts,
    /// Leaf chunks changed since the last Merkle checkpoint.
    dirty_chunks: BTreeSet<u16>,
    changes_since_checkpoint: u64,
    /// Feed index up to which the persisted leaf chunks are exact.
    merkle_at: u64,
    poisoned: Option<String>,
}

pub struct Store {
    kv: Kv,
    node_id: NodeId,
    config: StoreConfig,
    state: Mutex<State>,
    /// Set by [`Store::close_as_if_crashed`]: skip the closing checkpoint.
    skip_checkpoint: std::sync::atomic::AtomicBool,
    /// Bumped after every applied group that touched the internal keyspace,
    /// so caches of it (the API key table) know when to reload.
    internal_generation: std::sync::atomic::AtomicU64,
}

/// A point-in-time description of the store for `hub inspect` and introspection.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub node_id: String,
    pub schema_version: u32,
    pub entries: u64,
    pub tombstones: u64,
    pub log_len: u64,
    pub log: BTreeMap<String, LogStats>,
    pub version_vector: BTreeMap<String, u64>,
    pub merkle_root: String,
    pub merkle_occupied_leaves: usize,
    pub hlc: u64,
    pub changes_next: u64,
    pub disk_bytes: u64,
}

impl Store {
    pub fn open(dir: &Path, config: StoreConfig) -> Result<Store> {
        let kv = Kv::open(dir, config.cache_bytes, config.lock_wait)?;
        schema::migrate(&kv)?;
        let node_id = match (kv.get(&keys::meta("node_id"))?, &config.node_id) {
            (Some(stored), Some(configured)) => {
                let stored = String::from_utf8_lossy(&stored).to_string();
                if stored != configured.as_str() {
                    return Err(StoreError::WrongNode {
                        stored,
                        configured: configured.to_string(),
                    });
                }
                configured.clone()
            }
            (Some(stored), None) => NodeId::new(String::from_utf8_lossy(&stored).to_string())
                .map_err(|e| CodecError {
                    what: "node id",
                    reason: e.to_string(),
                })?,
            (None, Some(configured)) => {
                let mut b = backend::WriteBatch::default();
                b.insert(keys::meta("node_id"), configured.as_str());
                kv.apply(b)?;
                kv.flush()?;
                configured.clone()
            }
            (None, None) => return Err(StoreError::NotHubDir(dir.display().to_string())),
        };
        let state = load_state(&kv, &config)?;
        Ok(Store {
            kv,
            node_id,
            config,
            state: Mutex::new(state),
            skip_checkpoint: std::sync::atomic::AtomicBool::new(false),
            internal_generation: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Opens an existing directory read-mostly for inspection, refusing to
    /// create one where there is none.
    pub fn open_existing(dir: &Path, cache_bytes: u64) -> Result<Store> {
        if !dir.join("conf").exists() {
            return Err(StoreError::Missing(dir.display().to_string()));
        }
        Store::open(
            dir,
            StoreConfig {
                cache_bytes,
                lock_wait: std::time::Duration::ZERO,
                ..StoreConfig::default()
            },
        )
    }

    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// Changes whenever an applied group touched the internal keyspace
    /// ([`crate::model::INTERNAL_PREFIX`]); read it before reading that
    /// keyspace, and reload when it differs from the value last seen.
    pub fn internal_generation(&self) -> u64 {
        self.internal_generation
            .load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves state we cannot trust; the
        // poisoned flag in State handles write failures, and we recover the
        // guard here so readers keep working.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes everything applied so far durable.
    pub fn flush(&self) -> Result<()> {
        self.kv.flush().map_err(|e| {
            self.lock().poisoned = Some(e.to_string());
            e.into()
        })
    }

    pub fn get(&self, key: &str) -> Result<Option<Entry>> {
        match self.kv.get(&keys::entry(key))? {
            Some(bytes) => Ok(Some(codec::decode("entry", &bytes)?)),
            None => Ok(None),
        }
    }

    /// Entries (tombstones included) whose key starts with `prefix`, after
    /// `after` (exclusive), in key order.
    pub fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Entry)>> {
        let p = keys::entry(prefix);
        let from = match after {
            Some(a) if a >= prefix => {
                let mut k = keys::entry(a);
                k.push(0);
                k
            }
            _ => p.clone(),
        };
        let mut out = Vec::new();
        for item in self.kv.scan_from(&p, &from) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            let key = keys::suffix_str(&k, 1)
                .ok_or_else(|| CodecError {
                    what: "entry key",
                    reason: "not UTF-8".into(),
                })?
                .to_string();
            out.push((key, codec::decode("entry", &v)?));
        }
        Ok(out)
    }

    pub fn version_vector(&self) -> VersionVector {
        self.lock().vv.clone()
    }

    pub fn hlc(&self) -> Hlc {
        self.lock().clock.last()
    }

    /// A fresh timestamp, for messages that carry our clock.
    pub fn now(&self, wall_ms: u64) -> Hlc {
        self.lock().clock.now(wall_ms)
    }

    pub fn observe_clock(&self, remote: Hlc) {
        self.lock().clock.observe(remote);
    }

    pub fn check_clock(
        &self,
        remote: Hlc,
        wall_ms: u64,
    ) -> std::result::Result<(), crate::model::ClockError> {
        self.lock().clock.check(remote, wall_ms)
    }

    pub fn merkle_root(&self) -> Digest {
        self.lock().merkle.root()
    }

    pub fn merkle_node(&self, node: NodeRef) -> Option<Digest> {
        self.lock().merkle.node(node)
    }

    pub fn merkle_children(&self, node: NodeRef) -> Option<Vec<Digest>> {
        self.lock().merkle.children(node)
    }

    /// Every key in a Merkle leaf with its version, for anti-entropy.
    pub fn bucket_versions(&self, bucket: u16) -> Result<Vec<(String, Version, bool)>> {
        let prefix = keys::bucket_prefix(bucket);
        let mut out = Vec::new();
        for item in self.kv.scan_prefix(&prefix) {
            let (k, _) = item?;
            let key = keys::suffix_str(&k, 3).ok_or_else(|| CodecError {
                what: "bucket key",
                reason: "not UTF-8".into(),
            })?;
            if let Some(e) = self.get(key)? {
                let tomb = e.is_tombstone();
                out.push((key.to_string(), e.version, tomb));
            }
        }
        Ok(out)
    }

    pub fn counts(&self) -> Counts {
        self.lock().counts
    }

    pub fn log_stats(&self) -> BTreeMap<NodeId, LogStats> {
        self.lock().log.clone()
    }

    /// Contiguous deltas of `origin` with seq > `after`, at most `limit`
    /// (rounded up to whole log runs).
    pub fn deltas_after(&self, origin: &NodeId, after: u64, limit: usize) -> Result<LogRead> {
        let (known, stats) = {
            let st = self.lock();
            (
                st.vv.get(origin),
                st.log.get(origin).copied().unwrap_or_default(),
            )
        };
        if after >= known {
            return Ok(LogRead::Deltas(Vec::new()));
        }
        let unavailable = LogRead::Unavailable {
            first_retained: stats.first,
        };
        let prefix = keys::log_prefix(origin);
        let mut expect = after + 1;
        let Some((start_key, _)) = self
            .kv
            .last_at_or_before(&prefix, &keys::log_run(origin, expect))?
        else {
            return Ok(unavailable);
        };
        let mut out = Vec::new();
        for item in self.kv.scan_from(&prefix, &start_key) {
            let (k, v) = item?;
            let first = keys::trailing_u64(&k).unwrap_or(0);
            let run: Run = codec::decode("log run", &v)?;
            if first > expect || first + (run.items.len() as u64) <= expect {
                break; // a gap: the log does not hold `expect`
            }
            for (key, entry) in run.items.into_iter().skip((expect - first) as usize) {
                out.push(Delta {
                    origin: origin.clone(),
                    seq: expect,
                    key,
                    entry,
                });
                expect += 1;
            }
            if out.len() >= limit {
                break;
            }
        }
        if out.is_empty() {
            return Ok(unavailable);
        }
        Ok(LogRead::Deltas(out))
    }

    /// The change feed after cursor `since` (exclusive; `None` = from the
    /// oldest retained change), in apply order. Changes whose log run has
    /// been trimmed are skipped.
    pub fn changes(&self, since: Option<u64>, limit: usize) -> Result<Vec<(u64, Change)>> {
        let start = since.map_or(0, |s| s.saturating_add(1));
        let prefix = [keys::FEED];
        let from = match self.kv.last_at_or_before(&prefix, &keys::feed(start))? {
            Some((k, _)) => k,
            None => keys::feed(0),
        };
        let mut runs = RunCache::default();
        let mut out = Vec::new();
        'records: for item in self.kv.scan_from(&prefix, &from) {
            let (k, v) = item?;
            let base = keys::trailing_u64(&k).unwrap_or(0);
            let items: Vec<FeedItem> = codec::decode("feed", &v)?;
            for (i, fi) in items.into_iter().enumerate() {
                let idx = base + i as u64;
                if idx < start {
                    continue;
                }
                if out.len() >= limit {
                    break 'records;
                }
                let change = match fi {
                    FeedItem::Sync { key, entry } => Change {
                        key,
                        entry,
                        origin: None,
                    },
                    FeedItem::Delta { origin, seq, key } => match runs.entry(self, &origin, seq)? {
                        Some(entry) => Change {
                            key,
                            entry,
                            origin: Some((origin, seq)),
                        },
                        None => continue,
                    },
                };
                out.push((idx, change));
            }
        }
        Ok(out)
    }

    /// The retained deltas of one origin for one key, newest first, with seq
    /// below `before`. Looks at most `scan_budget` deltas, so a busy origin
    /// cannot make one request expensive.
    pub fn key_history(
        &self,
        origin: &NodeId,
        key: &str,
        before: Option<u64>,
        limit: usize,
        scan_budget: usize,
    ) -> Result<Vec<Delta>> {
        let prefix = keys::log_prefix(origin);
        let mut out = Vec::new();
        let mut scanned = 0;
        for item in self.kv.scan_prefix(&prefix).rev() {
            let (k, v) = item?;
            let first = keys::trailing_u64(&k).unwrap_or(0);
            let run: Run = codec::decode("log run", &v)?;
            for (i, (k, entry)) in run.items.into_iter().enumerate().rev() {
                let seq = first + i as u64;
                scanned += 1;
                if out.len() >= limit || scanned > scan_budget {
                    return Ok(out);
                }
                if k == key && before.is_none_or(|b| seq < b) {
                    out.push(Delta {
                        origin: origin.clone(),
                        seq,
                        key: k,
                        entry,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Persists the Merkle leaves so the next open replays nothing. Called on
    /// close; safe at any time.
    pub fn checkpoint(&self) -> Result<()> {
        let mut st = self.lock();
        if st.poisoned.is_some() || st.dirty_chunks.is_empty() {
            return Ok(());
        }
        let mut batch = backend::WriteBatch::default();
        write::write_checkpoint(&mut batch, &mut st);
        self.kv.apply(batch)?;
        drop(st);
        self.flush()
    }

    pub fn save_peer(&self, id: &NodeId, record: &PeerRecord) -> Result<()> {
        let mut b = backend::WriteBatch::default();
        b.insert(keys::peer(id), codec::encode(record));
        self.kv.apply(b)?;
        Ok(())
    }

    pub fn remove_peer(&self, id: &NodeId) -> Result<()> {
        let mut b = backend::WriteBatch::default();
        b.remove(keys::peer(id));
        self.kv.apply(b)?;
        Ok(())
    }

    pub fn peers(&self) -> Result<Vec<(NodeId, PeerRecord)>> {
        let mut out = Vec::new();
        for item in self.kv.scan_prefix(&[keys::PEER]) {
            let (k, v) = item?;
            let Some(id) = keys::suffix_str(&k, 1).and_then(|s| NodeId::new(s).ok()) else {
                continue;
            };
            out.push((id, codec::decode("peer", &v)?));
        }
        Ok(out)
    }

    pub fn summary(&self) -> Result<Summary> {
        let disk_bytes = self.kv.size_on_disk()?;
        let mut st = self.lock();
        let root = st.merkle.root();
        Ok(Summary {
            node_id: self.node_id.to_string(),
            schema_version: SCHEMA_VERSION,
            entries: st.counts.live,
            tombstones: st.counts.tombstones,
            log_len: st.log.values().map(|s| s.len).sum(),
            log: st.log.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            version_vector: st.vv.iter().map(|(k, v)| (k.to_string(), v)).collect(),
            merkle_root: hex::encode(root),
            merkle_occupied_leaves: st.merkle.occupied_leaves(),
            hlc: st.clock.last().0,
            changes_next: st.next_change,
            disk_bytes,
        })
    }

    /// Applies ops atomically; see [`write`]. Not durable until [`Store::flush`].
    pub fn apply(&self, ops: Vec<Op>, wall_ms: u64) -> Result<Vec<Outcome>> {
        let mut st = self.lock();
        if let Some(reason) = &st.poisoned {
            return Err(StoreError::Poisoned(reason.clone()));
        }
        let internal = ops.iter().any(Op::touches_internal);
        let (batch, outcomes) =
            write::build(&self.kv, &self.node_id, &self.config, &mut st, ops, wall_ms)?;
        if let Err(e) = self.kv.apply(batch) {
            // In-memory state already moved ahead of disk; refuse further
            // writes until a restart reloads the truth from disk.
            st.poisoned = Some(e.to_string());
            return Err(e.into());
        }
        if internal {
            self.internal_generation
                .fetch_add(1, std::sync::atomic::Ordering::Release);
        }
        Ok(outcomes)
    }
}

fn load_state(kv: &Kv, config: &StoreConfig) -> Result<State> {
    let mut vv = VersionVector::default();
    for item in kv.scan_prefix(&[keys::VV]) {
        let (k, v) = item?;
        if let (Some(id), Some(seq)) = (
            keys::suffix_str(&k, 1).and_then(|s| NodeId::new(s).ok()),
            keys::u64_value(&v),
        ) {
            vv.set(id, seq);
        }
    }
    let mut log = BTreeMap::new();
    for item in kv.scan_prefix(&[keys::LOG_STATS]) {
        let (k, v) = item?;
        if let Some(id) = keys::suffix_str(&k, 1).and_then(|s| NodeId::new(s).ok()) {
            log.insert(id, codec::decode::<LogStats>("log stats", &v)?);
        }
    }
    let mut merkle = MerkleTree::new();
    for item in kv.scan_prefix(&[keys::LEAF_CHUNK]) {
        let (k, v) = item?;
        let chunk = k
            .get(1..3)
            .and_then(|b| b.try_into().ok())
            .map(u16::from_be_bytes);
        match chunk {
            Some(c) if v.len() == 16 * merkle::FANOUT => {
                for (i, d) in v.chunks_exact(16).enumerate() {
                    let mut digest: Digest = merkle::ZERO;
                    digest.copy_from_slice(d);
                    merkle.set_leaf(c * merkle::FANOUT as u16 + i as u16, digest);
                }
            }
            _ => {
                return Err(CodecError {
                    what: "merkle chunk",
                    reason: "bad length".into(),
                }
                .into())
            }
        }
    }
    let merkle_at = meta_u64(kv, "merkle_at")?.unwrap_or(0);
    let hlc = match kv.get(&keys::meta("hlc"))? {
        Some(v) => Hlc(keys::u64_value(&v).unwrap_or(0)),
        None => Hlc::ZERO,
    };
    let counts = match kv.get(&keys::meta("counts"))? {
        Some(v) => codec::decode("counts", &v)?,
        None => Counts::default(),
    };
    let after_last = kv
        .last_with_prefix(&[keys::FEED])?
        .map(|(k, v)| -> Result<u64> {
            let items: Vec<FeedItem> = codec::decode("feed", &v)?;
            Ok(keys::trailing_u64(&k).unwrap_or(0) + items.len() as u64)
        })
        .transpose()?
        .unwrap_or(0);
    let next_change = after_last
        .max(meta_u64(kv, "next_change")?.unwrap_or(0))
        .max(1);
    let mut state = State {
        clock: Clock::new(hlc, config.max_clock_offset_ms),
        vv,
        merkle,
        next_change,
        log,
        counts,
        dirty_chunks: BTreeSet::new(),
        changes_since_checkpoint: 0,
        merkle_at,
        poisoned: None,
    };
    replay_merkle(kv, &mut state)?;
    Ok(state)
}

fn meta_u64(kv: &Kv, name: &str) -> Result<Option<u64>> {
    Ok(kv.get(&keys::meta(name))?.and_then(|v| keys::u64_value(&v)))
}

/// Brings the checkpointed Merkle leaves up to date: every bucket touched by
/// a change after the checkpoint is recomputed from its entries. Costs
/// O(changes since checkpoint × keys per bucket), bounded by `CHECKPOINT_EVERY`.
fn replay_merkle(kv: &Kv, st: &mut State) -> Result<()> {
    if st.merkle_at >= st.next_change {
        return Ok(());
    }
    let mut buckets = BTreeSet::new();
    let from = match kv.last_at_or_before(&[keys::FEED], &keys::feed(st.merkle_at))? {
        Some((k, _)) => k,
        None => keys::feed(0),
    };
    for item in kv.scan_from(&[keys::FEED], &from) {
        let (k, v) = item?;
        let base = keys::trailing_u64(&k).unwrap_or(0);
        let items: Vec<FeedItem> = codec::decode("feed", &v)?;
        for (i, fi) in items.iter().enumerate() {
            if base + i as u64 >= st.merkle_at {
                let key = match fi {
                    FeedItem::Delta { key, .. } | FeedItem::Sync { key, .. } => key,
                };
                buckets.insert(merkle::bucket_of(key));
            }
        }
    }
    for &bucket in &buckets {
        let mut leaf = merkle::ZERO;
        for item in kv.scan_prefix(&keys::bucket_prefix(bucket)) {
            let (k, _) = item?;
            let Some(key) = keys::suffix_str(&k, 3) else {
                continue;
            };
            if let Some(v) = kv.get(&keys::entry(key))? {
                let e: Entry = codec::decode("entry", &v)?;
                let d = merkle::item_digest(key, &e.version, e.is_tombstone());
                for (x, y) in leaf.iter_mut().zip(d) {
                    *x ^= y;
                }
            }
        }
        st.merkle.set_leaf(bucket, leaf);
        st.dirty_chunks.insert(bucket / merkle::FANOUT as u16);
    }
    st.changes_since_checkpoint = st.next_change - st.merkle_at;
    if !buckets.is_empty() {
        tracing::info!(
            buckets = buckets.len(),
            "replayed Merkle leaves after the last checkpoint"
        );
    }
    Ok(())
}

/// Decoded log runs, kept while reading the feed (one run serves many items).
#[derive(Default)]
struct RunCache {
    runs: HashMap<NodeId, (u64, Run)>,
}

impl RunCache {
    fn entry(&mut self, store: &Store, origin: &NodeId, seq: u64) -> Result<Option<Entry>> {
        let hit = |(first, run): &(u64, Run)| {
            seq.checked_sub(*first)
                .and_then(|i| run.items.get(i as usize))
                .map(|(_, e)| e.clone())
        };
        if let Some(e) = self.runs.get(origin).and_then(hit) {
            return Ok(Some(e));
        }
        let prefix = keys::log_prefix(origin);
        let Some((k, v)) = store
            .kv
            .last_at_or_before(&prefix, &keys::log_run(origin, seq))?
        else {
            return Ok(None);
        };
        let loaded = (
            keys::trailing_u64(&k).unwrap_or(0),
            codec::decode::<Run>("log run", &v)?,
        );
        let e = hit(&loaded);
        self.runs.insert(origin.clone(), loaded);
        Ok(e)
    }
}

impl Store {
    /// Closes without the closing Merkle checkpoint, leaving the directory as
    /// a crash after the last flush would: for tests of the recovery path.
    pub fn close_as_if_crashed(self) {
        self.skip_checkpoint
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if self
            .skip_checkpoint
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        if let Err(e) = self.checkpoint() {
            tracing::warn!(error = %e, "Merkle checkpoint at close failed; the next open replays");
        }
    }
}

/// Exposed for tests and tools that check the Merkle invariant.
pub fn rebuild_merkle_root(store: &Store) -> Result<Digest> {
    let mut t = MerkleTree::new();
    for item in store.kv.scan_prefix(&[keys::ENTRY]) {
        let (k, v) = item?;
        let key = keys::suffix_str(&k, 1).unwrap_or_default();
        let e: Entry = codec::decode("entry", &v)?;
        t.toggle(
            merkle::bucket_of(key),
            &merkle::item_digest(key, &e.version, e.is_tombstone()),
        );
    }
    Ok(t.root())
}

/// Meta labels are user-visible; keep them small.
pub fn meta_of(pairs: &[(&str, String)]) -> Meta {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}
