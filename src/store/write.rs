//! The write path: turns a group of operations into one atomic backend batch
//! and updates the in-memory derived state to match.
//!
//! Cost per group of N writes: N entry records (only for writes that win
//! LWW), one bucket-index record per new key, and a constant number of group
//! records (one feed record, one log run and vector entry per origin, meta).
//! The Merkle leaves are persisted by checkpoint every `CHECKPOINT_EVERY`
//! changes, not per write; open replays the feed after the checkpoint.
//!
//! Every delta is logged, also one that loses LWW, so each origin's stream
//! stays gap-free and can be served onward. Later operations in a group see
//! the effects of earlier ones (an overlay of pending entries), so a group is
//! equivalent to applying its operations one by one.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::backend::{Kv, WriteBatch};
use super::state::{Staged, Writer};
use super::{codec, keys, FeedItem, Result, Run, StoreConfig};
use crate::merkle::{self, FANOUT};
use crate::model::{Delta, Entry, Meta, NodeId, Version, VersionVector};
use crate::placement::{self, Owned};

/// Changes between two Merkle checkpoints: bounds the replay at open after a crash.
pub(super) const CHECKPOINT_EVERY: u64 = 16_384;
/// Feed records trimmed per group at most, so one group never does a lot of cleanup.
const MAX_FEED_TRIM: usize = 8;

/// What a local write requires of the key's current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    Always,
    /// Create: only if the key is absent or deleted.
    IfAbsent,
    /// Only if the key holds a value (a delete of a missing key is a 404).
    IfPresent,
}

#[derive(Clone, Debug)]
pub enum Op {
    /// A write accepted at this node; gets a fresh HLC and the next own seq.
    Local {
        key: String,
        value: Option<Vec<u8>>,
        meta: Meta,
        cond: Condition,
    },
    /// A delta received from a peer; must be the next seq of its origin.
    Delta(Delta),
    /// State received through anti-entropy (no seq): merged by LWW only.
    Entry { key: String, entry: Entry },
    /// After a complete anti-entropy round: we hold all a peer's vector said.
    AdvanceVv(VersionVector),
    /// Seqs `from..=to` of `origin` are writes of partitions not stored here
    /// (the holes of a sharded push's cover, `replication::msg::Cover`):
    /// the vector moves over them, nothing is logged. Like a delta, a gap
    /// when the vector is not yet at `from - 1`.
    Skip { origin: NodeId, from: u64, to: u64 },
    /// Forget the entries of a partition this node no longer owns, once its
    /// owners hold them (`crate::placement`); a no-op if it owns it again.
    DropPartition(u8),
}

impl Op {
    /// Whether the op writes a key of hub's internal keyspace.
    pub fn touches_internal(&self) -> bool {
        let key = match self {
            Op::Local { key, .. } | Op::Entry { key, .. } => key,
            Op::Delta(d) => &d.key,
            Op::AdvanceVv(_) | Op::DropPartition(_) | Op::Skip { .. } => return false,
        };
        crate::model::is_internal(key)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Written(Delta),
    /// `Condition::IfAbsent` and the key holds a value.
    Conflict,
    /// `Condition::IfPresent` and the key is absent or deleted.
    NotFound,
    /// A delta was logged; `won` says whether it changed the entry.
    Applied {
        won: bool,
    },
    /// The delta's seq is already covered by the version vector.
    Duplicate,
    /// The delta is not the next one of its origin; nothing was written.
    Gap {
        expected: u64,
    },
    EntryMerged {
        won: bool,
    },
    VvAdvanced,
    /// An `Op::Skip` moved the vector.
    Skipped,
    /// Entries (tombstones included) forgotten by `Op::DropPartition`.
    Dropped {
        keys: u64,
    },
}

struct Builder<'a> {
    kv: &'a Kv,
    /// This node, and the wall clock of the group: a received stamp is
    /// adopted by our clock only if it is not far ahead of it (own-origin
    /// stamps always are: our own later writes must order after them).
    node: &'a NodeId,
    wall_ms: u64,
    st: &'a mut Writer,
    /// What the served state must do once this group is durable.
    staged: Staged,
    config: &'a StoreConfig,
    batch: WriteBatch,
    pending: HashMap<String, Option<Entry>>,
    feed: Vec<FeedItem>,
    /// Deltas logged in this group per origin: first seq and the run.
    runs: BTreeMap<NodeId, (u64, Run)>,
    touched_vv: BTreeSet<NodeId>,
    /// Partitions stored here; others get stubs (`crate::placement`).
    owned: Owned,
    /// Persist the Merkle leaves in this group (a partition was dropped:
    /// replaying the feed at open could not remove its items).
    force_checkpoint: bool,
}

/// Builds a group's batch, advancing the writer's state; on `Err` the
/// writer's state is half-advanced and must be rebuilt by the caller. The
/// returned [`Staged`] is the group's effect on the served state.
pub(super) fn build(
    kv: &Kv,
    node: &NodeId,
    config: &StoreConfig,
    st: &mut Writer,
    ops: Vec<Op>,
    wall_ms: u64,
    owned: Owned,
) -> Result<(WriteBatch, Staged, Vec<Outcome>)> {
    let mut b = Builder {
        kv,
        node,
        wall_ms,
        st,
        staged: Staged::default(),
        config,
        batch: WriteBatch::default(),
        pending: HashMap::new(),
        feed: Vec::new(),
        runs: BTreeMap::new(),
        touched_vv: BTreeSet::new(),
        owned,
        force_checkpoint: false,
    };
    let mut outcomes = Vec::with_capacity(ops.len());
    for op in ops {
        let outcome = match op {
            Op::Local {
                key,
                value,
                meta,
                cond,
            } => b.local(node, key, value, meta, cond, wall_ms)?,
            Op::Delta(d) => b.delta(d)?,
            Op::Entry { key, entry } => b.sync_entry(key, entry)?,
            Op::AdvanceVv(vv) => b.advance_vv(&vv),
            Op::Skip { origin, from, to } => b.skip(origin, from, to)?,
            Op::DropPartition(p) => b.drop_partition(p)?,
        };
        outcomes.push(outcome);
    }
    b.finish()?;
    Ok((b.batch, b.staged, outcomes))
}

impl Builder<'_> {
    fn current(&self, key: &str) -> Result<Option<Entry>> {
        if let Some(e) = self.pending.get(key) {
            return Ok(e.clone());
        }
        match self.kv.get(&keys::entry(key))? {
            Some(bytes) => Ok(Some(codec::decode("entry", &bytes)?)),
            None => Ok(None),
        }
    }

    fn local(
        &mut self,
        node: &NodeId,
        key: String,
        value: Option<Vec<u8>>,
        meta: Meta,
        cond: Condition,
        wall_ms: u64,
    ) -> Result<Outcome> {
        let cur = self.current(&key)?;
        let live = cur.as_ref().is_some_and(|e| !e.is_tombstone());
        match cond {
            Condition::IfAbsent if live => return Ok(Outcome::Conflict),
            Condition::IfPresent if !live => return Ok(Outcome::NotFound),
            _ => {}
        }
        let hlc = self.st.clock.now(wall_ms);
        let entry = Entry {
            version: Version {
                hlc,
                node: node.clone(),
            },
            value,
            meta,
        };
        let seq = self.st.state.vv.get(node) + 1;
        let delta = Delta {
            origin: node.clone(),
            seq,
            key,
            entry,
        };
        self.log_delta(&delta, cur);
        Ok(Outcome::Written(delta))
    }

    fn delta(&mut self, d: Delta) -> Result<Outcome> {
        let have = self.st.state.vv.get(&d.origin);
        if d.seq <= have {
            return Ok(Outcome::Duplicate);
        }
        if d.seq != have + 1 {
            return Ok(Outcome::Gap { expected: have + 1 });
        }
        self.observe(&d.entry.version);
        if placement::is_stub(&d.entry) || !placement::stores(&self.owned, &d.key) {
            // Another partition's write (or only its stub): logged as a stub
            // so the origin's stream stays gap-free, not stored.
            self.log_stub(&d);
            return Ok(Outcome::Applied { won: false });
        }
        let cur = self.current(&d.key)?;
        let won = d.entry.supersedes(cur.as_ref());
        self.log_delta(&d, cur);
        Ok(Outcome::Applied { won })
    }

    /// Moves `origin`'s vector over seqs this node never receives. The log
    /// run of the group so far ends here, so a later delta of the origin in
    /// this group starts a new run: runs stay contiguous, and a pull that
    /// reaches the hole reads "unavailable" (the asker falls back to
    /// anti-entropy) rather than a wrong sequence.
    fn skip(&mut self, origin: NodeId, from: u64, to: u64) -> Result<Outcome> {
        let have = self.st.state.vv.get(&origin);
        if to <= have {
            return Ok(Outcome::Duplicate);
        }
        if from > have + 1 {
            return Ok(Outcome::Gap { expected: have + 1 });
        }
        if let Some((first, run)) = self.runs.remove(&origin) {
            self.end_run(&origin, first, run)?;
        }
        self.st.state.vv.set(origin.clone(), to);
        self.touched_vv.insert(origin);
        Ok(Outcome::Skipped)
    }

    /// Puts a run of logged deltas into the batch.
    fn end_run(&mut self, origin: &NodeId, first: u64, run: Run) -> Result<()> {
        let len = run.items.len() as u64;
        self.batch
            .insert(keys::log_run(origin, first), codec::encode(&run));
        self.record_run(origin, first, len)
    }

    /// Logs a delta's stub as the next of its origin; no entry, no Merkle
    /// item, no change-feed record.
    fn log_stub(&mut self, d: &Delta) {
        let stub = placement::stub(d);
        let run = self
            .runs
            .entry(d.origin.clone())
            .or_insert_with(|| (d.seq, Run::default()));
        run.1.items.push((stub.key, stub.entry));
        self.st.state.vv.set(d.origin.clone(), d.seq);
        self.touched_vv.insert(d.origin.clone());
    }

    fn observe(&mut self, version: &Version) {
        if version.node == *self.node {
            self.st.clock.observe(version.hlc);
        } else if !self.st.clock.observe_remote(version.hlc, self.wall_ms) {
            tracing::debug!(origin = %version.node, hlc = %version.hlc,
                "stamp far ahead of this node's wall clock applied but not adopted by its clock");
        }
    }

    /// Logs a delta as the next of its origin, and merges its entry.
    fn log_delta(&mut self, d: &Delta, cur: Option<Entry>) {
        if d.entry.supersedes(cur.as_ref()) {
            self.set_entry(&d.key, cur, d.entry.clone());
        }
        self.feed.push(FeedItem::Delta {
            origin: d.origin.clone(),
            seq: d.seq,
            key: d.key.clone(),
        });
        let run = self
            .runs
            .entry(d.origin.clone())
            .or_insert_with(|| (d.seq, Run::default()));
        run.1.items.push((d.key.clone(), d.entry.clone()));
        self.st.state.vv.set(d.origin.clone(), d.seq);
        self.touched_vv.insert(d.origin.clone());
    }

    fn sync_entry(&mut self, key: String, entry: Entry) -> Result<Outcome> {
        self.observe(&entry.version);
        if placement::is_stub(&entry) || !placement::stores(&self.owned, &key) {
            return Ok(Outcome::EntryMerged { won: false });
        }
        let cur = self.current(&key)?;
        if !entry.supersedes(cur.as_ref()) {
            return Ok(Outcome::EntryMerged { won: false });
        }
        self.set_entry(&key, cur, entry.clone());
        self.feed.push(FeedItem::Sync { key, entry });
        Ok(Outcome::EntryMerged { won: true })
    }

    fn advance_vv(&mut self, other: &VersionVector) -> Outcome {
        for (origin, seq) in other.iter() {
            if seq > self.st.state.vv.get(origin) {
                self.st.state.vv.set(origin.clone(), seq);
                self.touched_vv.insert(origin.clone());
            }
        }
        Outcome::VvAdvanced
    }

    /// Removes every entry of partition `p` with its bucket-index record,
    /// Merkle item and count, unless `p` is owned (again). Internal keys
    /// stay (every node stores them). Costs the partition's keys.
    fn drop_partition(&mut self, p: u8) -> Result<Outcome> {
        if self.owned.contains(p) {
            return Ok(Outcome::Dropped { keys: 0 });
        }
        let mut n = 0;
        let first = u16::from(p) << 8;
        for bucket in first..=first | 0xff {
            let mut members = Vec::new();
            for item in self.kv.scan_prefix(&keys::bucket_prefix(bucket)) {
                members.push(item?.0);
            }
            for member in members {
                let Some(key) = keys::suffix_str(&member, 3).map(str::to_string) else {
                    continue;
                };
                if crate::model::is_internal(&key) {
                    continue;
                }
                if let Some(old) = self.current(&key)? {
                    let d = merkle::item_digest(&key, &old.version, old.is_tombstone());
                    self.toggle(bucket, d);
                    let counts = &mut self.st.state.counts;
                    if old.is_tombstone() {
                        counts.tombstones = counts.tombstones.saturating_sub(1);
                    } else {
                        counts.live = counts.live.saturating_sub(1);
                    }
                }
                self.batch.remove(&member);
                self.batch.remove(keys::entry(&key));
                self.pending.insert(key, None);
                self.st.dirty_chunks.insert(bucket / FANOUT as u16);
                n += 1;
            }
        }
        if n > 0 {
            self.force_checkpoint = true;
        }
        Ok(Outcome::Dropped { keys: n })
    }

    /// Replaces a key's entry, keeping Merkle leaf, bucket index and counts in step.
    fn set_entry(&mut self, key: &str, old: Option<Entry>, new: Entry) {
        let bucket = merkle::bucket_of(key);
        match &old {
            Some(o) => {
                let d = merkle::item_digest(key, &o.version, o.is_tombstone());
                self.toggle(bucket, d);
                let counts = &mut self.st.state.counts;
                if o.is_tombstone() {
                    counts.tombstones = counts.tombstones.saturating_sub(1);
                } else {
                    counts.live = counts.live.saturating_sub(1);
                }
            }
            None => self.batch.insert(keys::bucket_member(bucket, key), []),
        }
        let d = merkle::item_digest(key, &new.version, new.is_tombstone());
        self.toggle(bucket, d);
        if new.is_tombstone() {
            self.st.state.counts.tombstones += 1;
        } else {
            self.st.state.counts.live += 1;
        }
        self.st.dirty_chunks.insert(bucket / FANOUT as u16);
        self.batch.insert(keys::entry(key), codec::encode(&new));
        self.pending.insert(key.to_string(), Some(new));
    }

    fn toggle(&mut self, bucket: u16, digest: merkle::Digest) {
        self.st.state.merkle.toggle(bucket, &digest);
        self.staged.toggles.push((bucket, digest));
    }

    /// Writes the group records (feed, runs, vector, meta, commit number),
    /// trims what is beyond retention and checkpoints the Merkle leaves when
    /// due. Nothing after `trim_feed` can fail.
    fn finish(&mut self) -> Result<()> {
        if !self.feed.is_empty() {
            let base = self.st.state.next_change;
            self.st.state.next_change += self.feed.len() as u64;
            self.st.changes_since_checkpoint += self.feed.len() as u64;
            self.batch
                .insert(keys::feed(base), codec::encode(&self.feed));
            self.st.feed_first.get_or_insert(base);
        }
        for (origin, (first, run)) in std::mem::take(&mut self.runs) {
            self.end_run(&origin, first, run)?;
        }
        for origin in std::mem::take(&mut self.touched_vv) {
            let seq = self.st.state.vv.get(&origin);
            self.batch.insert(keys::vv(&origin), seq.to_be_bytes());
            self.staged.vv.push((origin, seq));
        }
        if self.batch.is_empty() {
            self.staged.commit = self.st.state.commit;
            return Ok(());
        }
        self.trim_feed()?;
        if self.st.changes_since_checkpoint >= CHECKPOINT_EVERY || self.force_checkpoint {
            write_checkpoint(&mut self.batch, self.st);
        }
        let st = &mut self.st.state;
        st.commit += 1;
        self.batch
            .insert(keys::meta("hlc"), self.st.clock.last().0.to_be_bytes());
        self.batch
            .insert(keys::meta("counts"), codec::encode(&st.counts));
        self.batch
            .insert(keys::meta("next_change"), st.next_change.to_be_bytes());
        self.batch
            .insert(keys::meta("commit"), st.commit.to_be_bytes());
        self.staged.commit = st.commit;
        self.staged.counts = st.counts;
        self.staged.next_change = st.next_change;
        self.staged.hlc = self.st.clock.last();
        Ok(())
    }

    /// Updates an origin's log stats for a new run and drops whole old runs
    /// while the rest still holds `log_retention` deltas (so at least that many
    /// are kept; the newest run is never dropped). Seeks straight to the
    /// oldest retained run and reads only the length of each run it drops:
    /// O(runs trimmed), however long the log or however much was trimmed before.
    fn record_run(&mut self, origin: &NodeId, first: u64, len: u64) -> Result<()> {
        let retention = self.config.log_retention.max(1);
        let mut stats = self.st.state.log.get(origin).copied().unwrap_or_default();
        if stats.len == 0 {
            stats.first = first;
        }
        stats.len += len;
        stats.last = first + len - 1;
        if stats.len - len >= retention {
            // Oldest runs first; the new run is not on disk yet, so it stays.
            let mut new_first = first;
            let prefix = keys::log_prefix(origin);
            for item in self
                .kv
                .scan_from(&prefix, &keys::log_run(origin, stats.first))
            {
                let (k, v) = item?;
                let run_len = codec::decode_len("log run", &v)?;
                if stats.len - run_len < retention {
                    new_first = keys::trailing_u64(&k).unwrap_or(first);
                    break;
                }
                self.batch.remove(k);
                stats.len -= run_len;
            }
            stats.first = new_first;
        }
        self.batch
            .insert(keys::log_stats(origin), codec::encode(&stats));
        self.st.state.log.insert(origin.clone(), stats);
        self.staged.log.push((origin.clone(), stats));
        Ok(())
    }

    /// Drops the oldest feed records once the newer ones hold more than the
    /// feed's retention (`log_retention` per origin), but never past the
    /// Merkle checkpoint, whose replay needs them. Seeks to the oldest record
    /// kept by the last trim, so the cost is the records dropped.
    fn trim_feed(&mut self) -> Result<()> {
        let origins = self.st.state.log.len().max(1) as u64;
        let keep = self.config.log_retention.max(1).saturating_mul(origins);
        let horizon = self
            .st
            .state
            .next_change
            .saturating_sub(keep)
            .min(self.st.merkle_at);
        let from = keys::feed(self.st.feed_first.unwrap_or(0));
        let mut records = self
            .kv
            .scan_from(&[keys::FEED], &from)
            .take(MAX_FEED_TRIM + 1);
        let Some(first) = records.next() else {
            return Ok(());
        };
        let mut cur = first?.0;
        for next in records {
            let next = next?.0;
            // `cur` ends where `next` begins.
            if keys::trailing_u64(&next).unwrap_or(u64::MAX) > horizon {
                break;
            }
            self.batch.remove(&cur);
            cur = next;
        }
        self.st.feed_first = keys::trailing_u64(&cur);
        Ok(())
    }
}

/// Adds the dirty Merkle leaf chunks and the feed position they cover.
pub(super) fn write_checkpoint(batch: &mut WriteBatch, st: &mut Writer) {
    for chunk in std::mem::take(&mut st.dirty_chunks) {
        let mut bytes = Vec::with_capacity(16 * FANOUT);
        for i in 0..FANOUT as u16 {
            bytes.extend_from_slice(&st.state.merkle.leaf(chunk * FANOUT as u16 + i));
        }
        batch.insert(keys::leaf_chunk(chunk), bytes);
    }
    st.merkle_at = st.state.next_change;
    st.changes_since_checkpoint = 0;
    batch.insert(keys::meta("merkle_at"), st.merkle_at.to_be_bytes());
}
