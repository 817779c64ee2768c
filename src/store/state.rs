//! In-memory state derived from the durable tables, in two copies.
//!
//! * `Served` is what reads, the Merkle tree, the version vector and
//!   anti-entropy see: only groups that are on disk. It changes when a flush
//!   succeeds (each durable group's [`Staged`] effect is applied to it in
//!   order) or when the store is reopened from disk after an error.
//! * `Writer` is what the single writer builds the next group on: the served
//!   state plus every applied group still waiting for its flush.
//!
//! So an error anywhere in a group leaves no trace in what is served: the
//! writer's copy is rebuilt (from the served copy, or from disk) and the
//! group's `Staged` effect is discarded. Loading costs O(log origins + Merkle
//! leaf chunks + changes since the last checkpoint), never O(keys).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::backend::Kv;
use super::{codec, keys, Counts, FeedItem, LogStats, Result, StoreConfig};
use crate::merkle::{self, Digest, MerkleTree};
use crate::model::{Clock, Entry, Hlc, NodeId, VersionVector};

/// The part both copies hold.
#[derive(Clone)]
pub(crate) struct Derived {
    pub vv: VersionVector,
    pub merkle: MerkleTree,
    /// The feed index the next change gets.
    pub next_change: u64,
    pub log: BTreeMap<NodeId, LogStats>,
    pub counts: Counts,
    /// Number of the last commit group written (persisted in each batch).
    pub commit: u64,
}

/// The in-memory effect of one applied group, published once it is durable.
#[derive(Default)]
pub(crate) struct Staged {
    pub commit: u64,
    pub vv: Vec<(NodeId, u64)>,
    pub toggles: Vec<(u16, Digest)>,
    pub log: Vec<(NodeId, LogStats)>,
    pub counts: Counts,
    pub next_change: u64,
    pub hlc: Hlc,
    /// The group wrote the internal keyspace (API keys).
    pub internal: bool,
}

impl Staged {
    pub fn apply_to(&self, d: &mut Derived) {
        for (origin, seq) in &self.vv {
            d.vv.set(origin.clone(), *seq);
        }
        for (bucket, digest) in &self.toggles {
            d.merkle.toggle(*bucket, digest);
        }
        for (origin, stats) in &self.log {
            d.log.insert(origin.clone(), *stats);
        }
        d.counts = self.counts;
        d.next_change = self.next_change;
        d.commit = self.commit;
    }
}

pub(crate) struct Served {
    pub state: Derived,
    /// The node's clock: stamps messages, observes peers' clocks.
    pub clock: Clock,
    /// Commit numbers that were applied but never reached the disk (one
    /// range per reopen after an error); never reused.
    pub lost: Vec<std::ops::RangeInclusive<u64>>,
    /// Set while the database is closed and could not be reopened.
    pub unavailable: Option<String>,
    /// The last write error, until a group is durable again.
    pub failing: Option<String>,
}

/// Reopens after which lost commit ranges are forgotten (commit numbers in
/// flight are far more recent).
pub(crate) const LOST_RANGES_KEPT: usize = 64;

pub(crate) struct Writer {
    pub state: Derived,
    pub clock: Clock,
    /// Leaf chunks changed since the last Merkle checkpoint.
    pub dirty_chunks: BTreeSet<u16>,
    pub changes_since_checkpoint: u64,
    /// Feed index up to which the persisted leaf chunks are exact.
    pub merkle_at: u64,
    /// Index of the oldest feed record still stored, so trimming seeks to it
    /// instead of scanning past what earlier trims removed.
    pub feed_first: Option<u64>,
    /// Why writes are refused until the database is reopened.
    pub poisoned: Option<String>,
}

/// Applied groups waiting for a flush, oldest first. Its own lock, so the
/// flusher publishes without waiting for the writer's current group.
#[derive(Default)]
pub(crate) struct Pending {
    pub groups: VecDeque<Staged>,
    /// Counts reopens, so a flush never publishes groups of an older handle.
    pub epoch: u64,
}

/// Loads both copies from the durable tables.
pub(crate) fn load(kv: &Kv, config: &StoreConfig) -> Result<(Derived, Writer)> {
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
                return Err(codec::CodecError {
                    what: "merkle chunk",
                    reason: "bad length".into(),
                }
                .into())
            }
        }
    }
    let merkle_at = meta_u64(kv, "merkle_at")?.unwrap_or(0);
    let hlc = Hlc(meta_u64(kv, "hlc")?.unwrap_or(0));
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
    let feed_first = kv
        .first_with_prefix(&[keys::FEED])?
        .and_then(|(k, _)| keys::trailing_u64(&k));
    let next_change = after_last
        .max(meta_u64(kv, "next_change")?.unwrap_or(0))
        .max(1);
    let mut state = Derived {
        vv,
        merkle,
        next_change,
        log,
        counts,
        commit: meta_u64(kv, "commit")?.unwrap_or(0),
    };
    let mut writer = Writer {
        state: state.clone(),
        clock: Clock::new(hlc, config.max_clock_offset_ms),
        dirty_chunks: BTreeSet::new(),
        changes_since_checkpoint: 0,
        merkle_at,
        feed_first,
        poisoned: None,
    };
    replay_merkle(kv, &mut state, &mut writer)?;
    writer.state = state.clone();
    Ok((state, writer))
}

pub(crate) fn meta_u64(kv: &Kv, name: &str) -> Result<Option<u64>> {
    Ok(kv.get(&keys::meta(name))?.and_then(|v| keys::u64_value(&v)))
}

/// Brings the checkpointed Merkle leaves up to date: every bucket touched by
/// a change after the checkpoint is recomputed from its entries. Costs
/// O(changes since checkpoint × keys per bucket), bounded by `CHECKPOINT_EVERY`.
fn replay_merkle(kv: &Kv, st: &mut Derived, w: &mut Writer) -> Result<()> {
    if w.merkle_at >= st.next_change {
        return Ok(());
    }
    let mut buckets = BTreeSet::new();
    let from = match kv.last_at_or_before(&[keys::FEED], &keys::feed(w.merkle_at))? {
        Some((k, _)) => k,
        None => keys::feed(0),
    };
    for item in kv.scan_from(&[keys::FEED], &from) {
        let (k, v) = item?;
        let base = keys::trailing_u64(&k).unwrap_or(0);
        let items: Vec<FeedItem> = codec::decode("feed", &v)?;
        for (i, fi) in items.iter().enumerate() {
            if base + i as u64 >= w.merkle_at {
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
        w.dirty_chunks.insert(bucket / merkle::FANOUT as u16);
    }
    w.changes_since_checkpoint = st.next_change - w.merkle_at;
    if !buckets.is_empty() {
        tracing::info!(
            buckets = buckets.len(),
            "replayed Merkle leaves after the last checkpoint"
        );
    }
    Ok(())
}
