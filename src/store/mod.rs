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
//!
//! Memory equals disk: the version vector, Merkle tree, counts, clock and
//! change-feed position that are served move only when a group is durable
//! (see `state.rs`). Any error while building, applying or flushing a group
//! discards its in-memory effect; an error from the engine also closes the
//! database and reopens it from disk (sled keeps failed writes in its cache
//! and refuses all later writes), so what is served afterwards is what the
//! disk holds. Each batch carries a commit number, never reused, so callers
//! learn from [`Store::is_durable`] whether their group took effect. Cost: one
//! copy of the Merkle tree per copy of the state (~2 MB) and one replay of
//! each group's toggles. Reads of single entries go to the engine, so for the
//! length of one flush a read can see a write that is still being flushed.
//!
//! No silent loss at open: the identity file (`identity.rs`) records the node
//! and a durable commit number outside the database; a database that lost
//! them is refused, and a storage-engine panic at open becomes an error.

mod backend;
mod codec;
pub mod commit;
pub mod dump;
mod error;
mod identity;
mod keys;
pub mod load;
mod schema;
mod state;
mod write;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

use crate::merkle::{self, Digest, MerkleTree, NodeRef};
use crate::model::{Delta, Entry, Hlc, Meta, NodeId, Version, VersionVector};

pub use backend::{BackendError, Fault, Faults};
pub use codec::CodecError;
pub use error::{Result, StoreError};
pub use identity::FILE as IDENTITY_FILE;
pub use schema::SCHEMA_VERSION;
pub use write::{Condition, Op, Outcome};

use backend::Kv;
use state::{Pending, Served, Writer};

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
    /// Storage failures to inject (tests and simulation only).
    pub faults: Option<Arc<Faults>>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            node_id: None,
            log_retention: 1_000_000,
            cache_bytes: 64 << 20,
            max_clock_offset_ms: 500,
            lock_wait: std::time::Duration::from_secs(2),
            faults: None,
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

pub struct Store {
    dir: PathBuf,
    /// Closed and replaced after an engine error; see [`Store::reopen`].
    kv: RwLock<Kv>,
    node_id: NodeId,
    config: StoreConfig,
    /// Lock order: writer, then kv, then pending, then served.
    writer: Mutex<Writer>,
    pending: Mutex<Pending>,
    served: Mutex<Served>,
    identity_written: Mutex<std::time::Instant>,
    /// Set by [`Store::close_as_if_crashed`]: skip the closing checkpoint.
    skip_checkpoint: std::sync::atomic::AtomicBool,
    /// Bumped after every applied group that touched the internal keyspace,
    /// so caches of it (the API key table) know when to reload.
    internal_generation: std::sync::atomic::AtomicU64,
    /// The partitions this node stores (`crate::placement`); all by default.
    owned: Arc<crate::placement::SharedOwned>,
    /// The change-feed position served (one past the last durable change),
    /// published after every flush so change streams wake without polling.
    feed_tip: tokio::sync::watch::Sender<u64>,
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
    /// Deltas kept per origin (configured).
    pub log_retention: u64,
}

impl Store {
    pub fn open(dir: &Path, config: StoreConfig) -> Result<Store> {
        // sled panics on some damage it meets while reading (a missing blob);
        // at open that must be a clear refusal, not a crashed node.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Store::open_inner(dir, config)
        }))
        .unwrap_or_else(|_| {
            Err(BackendError::Damaged {
                path: dir.display().to_string(),
                detail: "the storage engine panicked reading it".into(),
            }
            .into())
        })
    }

    fn open_inner(dir: &Path, config: StoreConfig) -> Result<Store> {
        let kv = Kv::open(
            dir,
            config.cache_bytes,
            config.lock_wait,
            config.faults.clone(),
        )?;
        // Before anything writes: a fresh-looking database in a directory
        // that recorded one is a lost database, not a new node.
        check_identity(dir, &kv)?;
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
        let (derived, writer) = state::load(&kv, &config)?;
        let recorded = identity::Identity {
            node_id: node_id.to_string(),
            commit: derived.commit,
        };
        identity::write(dir, &recorded).map_err(|e| StoreError::Identity {
            path: identity::path(dir).display().to_string(),
            reason: e.to_string(),
        })?;
        let feed_tip = tokio::sync::watch::Sender::new(derived.next_change);
        let served = Served {
            state: derived,
            clock: writer.clock.clone(),
            lost: Vec::new(),
            unavailable: None,
            failing: None,
        };
        Ok(Store {
            dir: dir.to_path_buf(),
            kv: RwLock::new(kv),
            node_id,
            config,
            writer: Mutex::new(writer),
            pending: Mutex::new(Pending::default()),
            served: Mutex::new(served),
            identity_written: Mutex::new(std::time::Instant::now()),
            skip_checkpoint: std::sync::atomic::AtomicBool::new(false),
            internal_generation: std::sync::atomic::AtomicU64::new(0),
            owned: crate::placement::SharedOwned::new(),
            feed_tip,
        })
    }

    /// Watches the served change-feed position (see [`Store::changes`]):
    /// it moves after each flush that made changes durable.
    pub fn feed_tip(&self) -> tokio::sync::watch::Receiver<u64> {
        self.feed_tip.subscribe()
    }

    /// Opens an existing directory read-mostly for inspection, refusing to
    /// create one where there is none.
    pub fn open_existing(dir: &Path, cache_bytes: u64) -> Result<Store> {
        let shown = dir.display().to_string();
        let empty = match std::fs::read_dir(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::Missing(shown))
            }
            Err(e) => return Err(StoreError::Unreadable(shown, e)),
            Ok(mut it) => it.next().is_none(),
        };
        if empty {
            return Err(StoreError::EmptyDir(shown));
        }
        if !dir.join("conf").exists() {
            return Err(StoreError::NotHubDir(shown));
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

    // A panic while holding a lock leaves state we cannot trust; the
    // poisoned flag in `Writer` handles write failures, and we recover the
    // guards here so readers keep working.
    fn writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn served(&self) -> std::sync::MutexGuard<'_, Served> {
        self.served.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn kv(&self) -> std::sync::RwLockReadGuard<'_, Kv> {
        self.kv.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes everything applied so far durable and publishes it to readers.
    /// On failure the database is reopened from disk (see [`Store::reopen`]);
    /// ask [`Store::is_durable`] which groups survived.
    pub fn flush(&self) -> Result<()> {
        let (epoch, n) = {
            let p = self.pending();
            (p.epoch, p.groups.len())
        };
        let flushed = self.kv().flush();
        match flushed {
            Ok(()) => {
                self.publish(epoch, n);
                self.maybe_write_identity();
                Ok(())
            }
            Err(e) => {
                let mut w = self.writer();
                self.fail(&mut w, "flush", &e);
                Err(e.into())
            }
        }
    }

    /// Moves the first `n` pending groups into the served state, unless the
    /// database was reopened since they were counted (then the reopen
    /// already loaded whatever of them is on disk).
    fn publish(&self, epoch: u64, n: usize) {
        let mut p = self.pending();
        if p.epoch != epoch {
            return;
        }
        let mut served = self.served();
        let mut internal = false;
        for staged in p.groups.drain(..n) {
            staged.apply_to(&mut served.state);
            served.clock.observe(staged.hlc);
            internal |= staged.internal;
        }
        if internal {
            // Readers of the internal keyspace (the API key table) reload
            // once what changed is durable and served.
            self.internal_generation
                .fetch_add(1, std::sync::atomic::Ordering::Release);
        }
        served.failing = None;
        let tip = served.state.next_change;
        drop(served);
        self.feed_tip.send_if_modified(|t| {
            let moved = *t != tip;
            *t = tip;
            moved
        });
    }

    /// Records the durable commit number in the identity file, at most every
    /// `identity::WRITE_EVERY`.
    fn maybe_write_identity(&self) {
        let mut last = self
            .identity_written
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if last.elapsed() < identity::WRITE_EVERY {
            return;
        }
        *last = std::time::Instant::now();
        drop(last);
        self.write_identity();
    }

    fn write_identity(&self) {
        let recorded = identity::Identity {
            node_id: self.node_id.to_string(),
            commit: self.served().state.commit,
        };
        if let Err(e) = identity::write(&self.dir, &recorded) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot update the identity file");
        }
    }

    /// An engine error: refuse writes, then reopen the database so that only
    /// what is on disk is served. Holds the writer lock throughout.
    fn fail(&self, w: &mut Writer, step: &str, e: &BackendError) {
        tracing::error!(step, error = %e, dir = %self.dir.display(), "store write failed; reopening the database from disk");
        w.poisoned = Some(format!("{step} failed: {e}"));
        self.served().failing = Some(format!("{step} failed: {e}"));
        match self.reopen(w) {
            Ok(()) => w.poisoned = None,
            Err(e) => {
                tracing::error!(error = %e, "reopening the database failed; writes are refused and retried")
            }
        }
    }

    /// Closes the engine (dropping whatever it holds only in memory) and
    /// opens the directory again; both state copies are reloaded from disk.
    /// Commit numbers applied but not found on disk are recorded as lost and
    /// never reused. On failure the database stays closed: reads fail,
    /// [`Store::health`] says why, and the next write tries again.
    fn reopen(&self, w: &mut Writer) -> Result<()> {
        let mut kv = self.kv.write().unwrap_or_else(|p| p.into_inner());
        let closed = kv.close();
        {
            let mut p = self.pending();
            p.epoch += 1;
            p.groups.clear();
        }
        // Whatever the key table cached may have been lost: reload it.
        self.internal_generation
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        if let Err(e) = closed {
            self.served().unavailable = Some(e.to_string());
            return Err(StoreError::Unavailable(e.to_string()));
        }
        let loaded = Kv::open(
            &self.dir,
            self.config.cache_bytes,
            REOPEN_LOCK_WAIT,
            self.config.faults.clone(),
        )
        .map_err(StoreError::from)
        .and_then(|fresh| {
            let (derived, writer) = state::load(&fresh, &self.config)?;
            Ok((fresh, derived, writer))
        });
        let mut served = self.served();
        let (fresh, derived, writer) = match loaded {
            Ok(l) => l,
            Err(e) => {
                served.unavailable = Some(e.to_string());
                return Err(StoreError::Unavailable(e.to_string()));
            }
        };
        if derived.commit < served.state.commit {
            // Groups we answered as durable are not on disk: never serve that.
            let reason = format!(
                "the database holds commit {} but commit {} was durable before the error; restore the directory from a snapshot or a peer",
                derived.commit, served.state.commit
            );
            served.unavailable = Some(reason.clone());
            return Err(StoreError::Unavailable(reason));
        }
        let highest = w.state.commit.max(derived.commit);
        if highest > derived.commit {
            served.lost.push(derived.commit + 1..=highest);
            if served.lost.len() > state::LOST_RANGES_KEPT {
                served.lost.remove(0);
            }
        }
        let clock = w.clock.clone();
        *w = writer;
        w.clock = clock;
        w.state.commit = highest;
        served.state = derived;
        self.feed_tip.send_replace(served.state.next_change);
        served.unavailable = None;
        *kv = fresh;
        tracing::warn!(
            commit = served.state.commit,
            lost = highest - served.state.commit,
            "database reopened; serving what is on disk"
        );
        Ok(())
    }

    /// Whether the group that got commit number `commit` from
    /// [`Store::apply_group`] is on disk: `None` while the database is closed
    /// and the answer is unknown.
    pub fn is_durable(&self, commit: u64) -> Option<bool> {
        let served = self.served();
        if served.unavailable.is_some() {
            return None;
        }
        Some(commit <= served.state.commit && !served.lost.iter().any(|r| r.contains(&commit)))
    }

    /// `Err(reason)` while writes fail or the database is closed.
    pub fn health(&self) -> std::result::Result<(), String> {
        let served = self.served();
        match (&served.unavailable, &served.failing) {
            (Some(why), _) => Err(format!("database closed after a write failure: {why}")),
            (None, Some(why)) => Err(format!("the last write failed: {why}")),
            (None, None) => Ok(()),
        }
    }

    pub fn get(&self, key: &str) -> Result<Option<Entry>> {
        match self.kv().get(&keys::entry(key))? {
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
        let kv = self.kv();
        for item in kv.scan_from(&p, &from) {
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
        self.served().state.vv.clone()
    }

    pub fn hlc(&self) -> Hlc {
        self.served().clock.last()
    }

    /// Adopts a peer's message stamp unless it is far ahead of `wall_ms`
    /// (see [`crate::model::Clock::observe_remote`]); false if not adopted.
    pub fn observe_clock(&self, remote: Hlc, wall_ms: u64) -> bool {
        self.served().clock.observe_remote(remote, wall_ms)
    }

    pub fn merkle_root(&self) -> Digest {
        self.served().state.merkle.root()
    }

    pub fn merkle_node(&self, node: NodeRef) -> Option<Digest> {
        self.served().state.merkle.node(node)
    }

    pub fn merkle_children(&self, node: NodeRef) -> Option<Vec<Digest>> {
        self.served().state.merkle.children(node)
    }

    /// Every key in a Merkle leaf with its version, for anti-entropy.
    pub fn bucket_versions(&self, bucket: u16) -> Result<Vec<(String, Version, bool)>> {
        let prefix = keys::bucket_prefix(bucket);
        let mut out = Vec::new();
        let kv = self.kv();
        for item in kv.scan_prefix(&prefix) {
            let (k, _) = item?;
            let key = keys::suffix_str(&k, 3).ok_or_else(|| CodecError {
                what: "bucket key",
                reason: "not UTF-8".into(),
            })?;
            if let Some(bytes) = kv.get(&keys::entry(key))? {
                let e: Entry = codec::decode("entry", &bytes)?;
                let tomb = e.is_tombstone();
                out.push((key.to_string(), e.version, tomb));
            }
        }
        Ok(out)
    }

    pub fn counts(&self) -> Counts {
        self.served().state.counts
    }

    pub fn log_stats(&self) -> BTreeMap<NodeId, LogStats> {
        self.served().state.log.clone()
    }

    /// Contiguous deltas of `origin` with seq > `after`, at most `limit`
    /// (rounded up to whole log runs).
    pub fn deltas_after(&self, origin: &NodeId, after: u64, limit: usize) -> Result<LogRead> {
        let (known, stats) = {
            let st = self.served();
            (
                st.state.vv.get(origin),
                st.state.log.get(origin).copied().unwrap_or_default(),
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
        let kv = self.kv();
        let Some((start_key, _)) = kv.last_at_or_before(&prefix, &keys::log_run(origin, expect))?
        else {
            return Ok(unavailable);
        };
        let mut out = Vec::new();
        for item in kv.scan_from(&prefix, &start_key) {
            let (k, v) = item?;
            let first = keys::trailing_u64(&k).unwrap_or(0);
            let run: Run = codec::decode("log run", &v)?;
            if first > expect || first + (run.items.len() as u64) <= expect {
                break; // a gap: the log does not hold `expect`
            }
            for (key, entry) in run.items.into_iter().skip((expect - first) as usize) {
                if expect > known || out.len() >= limit {
                    break; // applied, not yet durable; or the caller's cap
                }
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
        // Changes at or after this index are applied but not yet durable.
        let durable_end = self.served().state.next_change;
        let prefix = [keys::FEED];
        let kv = self.kv();
        let from = match kv.last_at_or_before(&prefix, &keys::feed(start))? {
            Some((k, _)) => k,
            None => keys::feed(0),
        };
        let mut runs = RunCache::default();
        let mut out = Vec::new();
        'records: for item in kv.scan_from(&prefix, &from) {
            let (k, v) = item?;
            let base = keys::trailing_u64(&k).unwrap_or(0);
            let items: Vec<FeedItem> = codec::decode("feed", &v)?;
            for (i, fi) in items.into_iter().enumerate() {
                let idx = base + i as u64;
                if idx < start {
                    continue;
                }
                if out.len() >= limit || idx >= durable_end {
                    break 'records;
                }
                let change = match fi {
                    FeedItem::Sync { key, entry } => Change {
                        key,
                        entry,
                        origin: None,
                    },
                    FeedItem::Delta { origin, seq, key } => match runs.entry(&kv, &origin, seq)? {
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
        let kv = self.kv();
        for item in kv.scan_prefix(&prefix).rev() {
            let (k, v) = item?;
            let first = keys::trailing_u64(&k).unwrap_or(0);
            let run: Run = codec::decode("log run", &v)?;
            for (i, (k, entry)) in run.items.into_iter().enumerate().rev() {
                let seq = first + i as u64;
                scanned += 1;
                if out.len() >= limit || scanned > scan_budget {
                    return Ok(out);
                }
                let stub = crate::placement::is_stub(&entry);
                if k == key && !stub && before.is_none_or(|b| seq < b) {
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
        let mut w = self.writer();
        if w.poisoned.is_some() || w.dirty_chunks.is_empty() {
            return Ok(());
        }
        let mut batch = backend::WriteBatch::default();
        write::write_checkpoint(&mut batch, &mut w);
        let applied = self.kv().apply(batch);
        if let Err(e) = applied {
            self.fail(&mut w, "checkpoint", &e);
            return Err(e.into());
        }
        drop(w);
        self.flush()
    }

    pub fn save_peer(&self, id: &NodeId, record: &PeerRecord) -> Result<()> {
        let mut b = backend::WriteBatch::default();
        b.insert(keys::peer(id), codec::encode(record));
        self.kv().apply(b)?;
        Ok(())
    }

    pub fn remove_peer(&self, id: &NodeId) -> Result<()> {
        let mut b = backend::WriteBatch::default();
        b.remove(keys::peer(id));
        self.kv().apply(b)?;
        Ok(())
    }

    pub fn peers(&self) -> Result<Vec<(NodeId, PeerRecord)>> {
        let mut out = Vec::new();
        let kv = self.kv();
        for item in kv.scan_prefix(&[keys::PEER]) {
            let (k, v) = item?;
            let Some(id) = keys::suffix_str(&k, 1).and_then(|s| NodeId::new(s).ok()) else {
                continue;
            };
            out.push((id, codec::decode("peer", &v)?));
        }
        Ok(out)
    }

    /// The partitions this node stores: the placement layer updates it, the
    /// write path reads it (a delta or entry of another partition is kept
    /// as a stub or not at all).
    pub fn owned(&self) -> &Arc<crate::placement::SharedOwned> {
        &self.owned
    }

    pub fn summary(&self) -> Result<Summary> {
        // Still a summary while the database is closed after an error.
        let disk_bytes = self.kv().size_on_disk().unwrap_or(0);
        let mut served = self.served();
        let hlc = served.clock.last().0;
        let st = &mut served.state;
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
            hlc,
            changes_next: st.next_change,
            disk_bytes,
            log_retention: self.config.log_retention,
        })
    }

    /// Applies ops atomically; see [`write`]. Not durable until [`Store::flush`].
    pub fn apply(&self, ops: Vec<Op>, wall_ms: u64) -> Result<Vec<Outcome>> {
        self.apply_group(ops, wall_ms).map(|(outcomes, _)| outcomes)
    }

    /// [`Store::apply`], also returning the group's commit number for
    /// [`Store::is_durable`]. A group that writes nothing shares the number of
    /// the group before it, whose state its outcomes were decided on.
    pub fn apply_group(&self, ops: Vec<Op>, wall_ms: u64) -> Result<(Vec<Outcome>, u64)> {
        let mut w = self.writer();
        if w.poisoned.is_some() {
            // The cause may be gone (space freed): try the disk again.
            self.reopen(&mut w)?;
            w.poisoned = None;
        }
        let internal = ops.iter().any(Op::touches_internal);
        let served_clock = self.served().clock.last();
        w.clock.observe(served_clock);
        let kv = self.kv();
        let owned = self.owned.load();
        let built = write::build(
            &kv,
            &self.node_id,
            &self.config,
            &mut w,
            ops,
            wall_ms,
            owned,
        );
        let (batch, mut staged, outcomes) = match built {
            Ok(b) => b,
            Err(e) => {
                // Nothing reached the engine; undo the writer's half-built state.
                drop(kv);
                self.rebuild_writer(&mut w);
                self.served().failing = Some(format!("building a write group failed: {e}"));
                tracing::error!(error = %e, "write group failed before reaching the database");
                return Err(e);
            }
        };
        if batch.is_empty() {
            return Ok((outcomes, staged.commit));
        }
        if let Err(e) = kv.apply(batch) {
            drop(kv);
            self.fail(&mut w, "batch", &e);
            return Err(e.into());
        }
        let commit = staged.commit;
        staged.internal = internal;
        self.pending().groups.push_back(staged);
        Ok((outcomes, commit))
    }

    /// The writer's state again as served state plus pending groups; its
    /// commit number is kept, so numbers are never reused.
    fn rebuild_writer(&self, w: &mut Writer) {
        let commit = w.state.commit;
        // Both locks at once, so no group moves from pending to served between.
        let pending = self.pending();
        w.state = self.served().state.clone();
        for staged in &pending.groups {
            staged.apply_to(&mut w.state);
        }
        w.state.commit = commit;
    }
}

/// Meta flag of a directory restored from a snapshot under the node id it
/// was taken from: until a peer has shown which of the node's own sequence
/// numbers it holds, the node must not write (see [`Store::restored`]).
pub(crate) const RESTORED_META: &str = "restored";

impl Store {
    /// Whether this directory was restored from a snapshot under its own
    /// node id and has not yet been checked against a peer: writes the node
    /// made after the snapshot may live on peers, and a fresh local write
    /// would reuse one of their sequence numbers.
    pub fn restored(&self) -> bool {
        matches!(self.kv().get(&keys::meta(RESTORED_META)), Ok(Some(_)))
    }

    /// Clears [`Store::restored`] once a peer's vector has been checked.
    pub fn clear_restored(&self) -> Result<()> {
        let mut b = backend::WriteBatch::default();
        b.remove(keys::meta(RESTORED_META));
        self.kv().apply(b)?;
        self.flush()
    }
}

/// How long a reopen after an error waits for the old handle's file lock.
const REOPEN_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Refuses a database that lost what the identity file says it had.
fn check_identity(dir: &Path, kv: &Kv) -> Result<()> {
    let recorded = identity::read(dir).map_err(|reason| StoreError::Identity {
        path: identity::path(dir).display().to_string(),
        reason,
    })?;
    let Some(recorded) = recorded else {
        return Ok(());
    };
    let stored = kv.get(&keys::meta("node_id"))?;
    if stored.as_deref() != Some(recorded.node_id.as_bytes()) {
        return Err(StoreError::DatabaseLost {
            dir: dir.display().to_string(),
            node: recorded.node_id,
            commit: recorded.commit,
        });
    }
    let found = state::meta_u64(kv, "commit")?.unwrap_or(0);
    if found < recorded.commit {
        return Err(StoreError::RolledBack {
            dir: dir.display().to_string(),
            recorded: recorded.commit,
            found,
        });
    }
    Ok(())
}

/// Decoded log runs, kept while reading the feed (one run serves many items).
#[derive(Default)]
struct RunCache {
    runs: HashMap<NodeId, (u64, Run)>,
}

impl RunCache {
    fn entry(&mut self, kv: &Kv, origin: &NodeId, seq: u64) -> Result<Option<Entry>> {
        let hit = |(first, run): &(u64, Run)| {
            seq.checked_sub(*first)
                .and_then(|i| run.items.get(i as usize))
                .map(|(_, e)| e.clone())
        };
        if let Some(e) = self.runs.get(origin).and_then(hit) {
            return Ok(Some(e));
        }
        let prefix = keys::log_prefix(origin);
        let Some((k, v)) = kv.last_at_or_before(&prefix, &keys::log_run(origin, seq))? else {
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
        if self.health().is_ok() {
            self.write_identity();
        }
    }
}

/// Exposed for tests and tools that check the Merkle invariant.
pub fn rebuild_merkle_root(store: &Store) -> Result<Digest> {
    let mut t = MerkleTree::new();
    let kv = store.kv();
    for item in kv.scan_prefix(&[keys::ENTRY]) {
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
