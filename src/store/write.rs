//! The write path: turns a group of operations into one atomic backend batch
//! and updates the in-memory derived state to match.
//!
//! Every delta is logged, also one that loses LWW, so each origin's stream
//! stays gap-free and can be served onward. Later operations in a group see
//! the effects of earlier ones (an overlay of pending entries), so a group is
//! equivalent to applying its operations one by one.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::backend::{Kv, WriteBatch};
use super::{codec, keys, Change, Result, State, StoreConfig};
use crate::merkle;
use crate::model::{Delta, Entry, Meta, NodeId, Version, VersionVector};

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
    Local { key: String, value: Option<Vec<u8>>, meta: Meta, cond: Condition },
    /// A delta received from a peer; must be the next seq of its origin.
    Delta(Delta),
    /// State received through anti-entropy (no seq): merged by LWW only.
    Entry { key: String, entry: Entry },
    /// After a complete anti-entropy round: we hold all a peer's vector said.
    AdvanceVv(VersionVector),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Written(Delta),
    /// `Condition::IfAbsent` and the key holds a value.
    Conflict,
    /// `Condition::IfPresent` and the key is absent or deleted.
    NotFound,
    /// A delta was logged; `won` says whether it changed the entry.
    Applied { won: bool },
    /// The delta's seq is already covered by the version vector.
    Duplicate,
    /// The delta is not the next one of its origin; nothing was written.
    Gap { expected: u64 },
    EntryMerged { won: bool },
    VvAdvanced,
}

struct Builder<'a> {
    kv: &'a Kv,
    st: &'a mut State,
    config: &'a StoreConfig,
    batch: WriteBatch,
    pending: HashMap<String, Option<Entry>>,
    touched_buckets: BTreeSet<u16>,
    touched_vv: BTreeSet<NodeId>,
    /// Log records added in this group per origin, in seq order: (seq, change idx).
    new_log: BTreeMap<NodeId, Vec<(u64, u64)>>,
}

pub(super) fn build(
    kv: &Kv,
    node: &NodeId,
    config: &StoreConfig,
    st: &mut State,
    ops: Vec<Op>,
    wall_ms: u64,
) -> Result<(WriteBatch, Vec<Outcome>)> {
    let mut b = Builder {
        kv,
        st,
        config,
        batch: WriteBatch::default(),
        pending: HashMap::new(),
        touched_buckets: BTreeSet::new(),
        touched_vv: BTreeSet::new(),
        new_log: BTreeMap::new(),
    };
    let mut outcomes = Vec::with_capacity(ops.len());
    for op in ops {
        let outcome = match op {
            Op::Local { key, value, meta, cond } => b.local(node, key, value, meta, cond, wall_ms)?,
            Op::Delta(d) => b.delta(d)?,
            Op::Entry { key, entry } => b.sync_entry(key, entry)?,
            Op::AdvanceVv(vv) => b.advance_vv(&vv),
        };
        outcomes.push(outcome);
    }
    b.finish()?;
    Ok((b.batch, outcomes))
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
        let entry = Entry { version: Version { hlc, node: node.clone() }, value, meta };
        let seq = self.st.vv.get(node) + 1;
        let delta = Delta { origin: node.clone(), seq, key, entry };
        self.log_delta(&delta, cur)?;
        Ok(Outcome::Written(delta))
    }

    fn delta(&mut self, d: Delta) -> Result<Outcome> {
        let have = self.st.vv.get(&d.origin);
        if d.seq <= have {
            return Ok(Outcome::Duplicate);
        }
        if d.seq != have + 1 {
            return Ok(Outcome::Gap { expected: have + 1 });
        }
        self.st.clock.observe(d.entry.version.hlc);
        let cur = self.current(&d.key)?;
        let won = d.entry.supersedes(cur.as_ref());
        self.log_delta(&d, cur)?;
        Ok(Outcome::Applied { won })
    }

    /// Logs a delta as the next of its origin, and merges its entry.
    fn log_delta(&mut self, d: &Delta, cur: Option<Entry>) -> Result<()> {
        let won = d.entry.supersedes(cur.as_ref());
        if won {
            self.set_entry(&d.key, cur, d.entry.clone());
        }
        let idx = self.next_change();
        let change = Change {
            key: d.key.clone(),
            entry: d.entry.clone(),
            origin: Some((d.origin.clone(), d.seq)),
        };
        self.batch.insert(keys::change(idx), codec::encode(&change));
        self.batch.insert(keys::log(&d.origin, d.seq), idx.to_be_bytes());
        self.new_log.entry(d.origin.clone()).or_default().push((d.seq, idx));
        self.st.vv.set(d.origin.clone(), d.seq);
        self.touched_vv.insert(d.origin.clone());
        Ok(())
    }

    fn sync_entry(&mut self, key: String, entry: Entry) -> Result<Outcome> {
        self.st.clock.observe(entry.version.hlc);
        let cur = self.current(&key)?;
        if !entry.supersedes(cur.as_ref()) {
            return Ok(Outcome::EntryMerged { won: false });
        }
        self.set_entry(&key, cur, entry.clone());
        let idx = self.next_change();
        let change = Change { key, entry, origin: None };
        self.batch.insert(keys::change(idx), codec::encode(&change));
        self.batch.insert(keys::sync_change(idx), []);
        self.st.sync_feed.push_back(idx);
        while self.st.sync_feed.len() as u64 > self.config.log_retention {
            if let Some(old) = self.st.sync_feed.pop_front() {
                self.batch.remove(keys::change(old));
                self.batch.remove(keys::sync_change(old));
            }
        }
        Ok(Outcome::EntryMerged { won: true })
    }

    fn advance_vv(&mut self, other: &VersionVector) -> Outcome {
        for (origin, seq) in other.iter() {
            if seq > self.st.vv.get(origin) {
                self.st.vv.set(origin.clone(), seq);
                self.touched_vv.insert(origin.clone());
            }
        }
        Outcome::VvAdvanced
    }

    fn next_change(&mut self) -> u64 {
        let idx = self.st.next_change;
        self.st.next_change += 1;
        idx
    }

    /// Replaces a key's entry, keeping Merkle leaf, bucket index and counts in step.
    fn set_entry(&mut self, key: &str, old: Option<Entry>, new: Entry) {
        let bucket = merkle::bucket_of(key);
        match &old {
            Some(o) => {
                let d = merkle::item_digest(key, &o.version, o.is_tombstone());
                self.st.merkle.toggle(bucket, &d);
                if o.is_tombstone() {
                    self.st.counts.tombstones -= 1;
                } else {
                    self.st.counts.live -= 1;
                }
            }
            None => self.batch.insert(keys::bucket_member(bucket, key), []),
        }
        let d = merkle::item_digest(key, &new.version, new.is_tombstone());
        self.st.merkle.toggle(bucket, &d);
        if new.is_tombstone() {
            self.st.counts.tombstones += 1;
        } else {
            self.st.counts.live += 1;
        }
        self.touched_buckets.insert(bucket);
        self.batch.insert(keys::entry(key), codec::encode(&new));
        self.pending.insert(key.to_string(), Some(new));
    }

    /// Writes the per-group summaries (leaves, vector, log stats, meta) and
    /// trims logs beyond retention.
    fn finish(&mut self) -> Result<()> {
        for bucket in std::mem::take(&mut self.touched_buckets) {
            self.batch.insert(keys::leaf(bucket), self.st.merkle.leaf(bucket));
        }
        for origin in std::mem::take(&mut self.touched_vv) {
            self.batch.insert(keys::vv(&origin), self.st.vv.get(&origin).to_be_bytes());
        }
        for (origin, added) in std::mem::take(&mut self.new_log) {
            self.trim_and_record(&origin, &added)?;
        }
        if self.batch.is_empty() {
            return Ok(());
        }
        self.batch.insert(keys::meta("hlc"), self.st.clock.last().0.to_be_bytes());
        self.batch.insert(keys::meta("counts"), codec::encode(&self.st.counts));
        self.batch.insert(keys::meta("next_change"), self.st.next_change.to_be_bytes());
        Ok(())
    }

    fn trim_and_record(&mut self, origin: &NodeId, added: &[(u64, u64)]) -> Result<()> {
        let mut stats = self.st.log.get(origin).copied().unwrap_or_default();
        if stats.len == 0 {
            stats.first = added.first().map_or(0, |a| a.0);
        }
        stats.len += added.len() as u64;
        stats.last = added.last().map_or(stats.last, |a| a.0);
        let excess = stats.len.saturating_sub(self.config.log_retention.max(1));
        if excess > 0 {
            // Oldest first: what is on disk, then what this group adds.
            let prefix = keys::log_prefix(origin);
            let on_disk = self.kv.scan_prefix(&prefix).map(|r| {
                r.map(|(k, v)| {
                    (keys::trailing_u64(&k).unwrap_or(0), keys::u64_value(&v).unwrap_or(0))
                })
            });
            let mut all = on_disk.chain(added.iter().map(|a| Ok(*a)));
            for _ in 0..excess {
                let Some(item) = all.next() else { break };
                let (seq, idx) = item?;
                self.batch.remove(keys::log(origin, seq));
                self.batch.remove(keys::change(idx));
            }
            if let Some(next) = all.next() {
                stats.first = next?.0;
            }
            stats.len -= excess;
        }
        self.batch.insert(keys::log_stats(origin), codec::encode(&stats));
        self.st.log.insert(origin.clone(), stats);
        Ok(())
    }
}
