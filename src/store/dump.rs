//! A consistent dump of a live store, for snapshots: peers, per-origin log
//! runs, entries, and the version vector, clock and feed position that go
//! with them.
//!
//! Guarantee: every write durable when [`Store::dump_head`] was taken is in
//! the dump, and the dump's version vector is that moment's. Writes keep
//! flowing meanwhile (sled has no read snapshot and the dump does not stop
//! the writer), so an entry read later may be newer than at the head: each
//! key is at least as new as at the head and at most as new as now. That is
//! still a state a node can hold (LWW state only moves forward, as an
//! anti-entropy merge would move it), and the vector claims nothing newer,
//! so a restored node pulls the writes after the head again and converges.
//! Log runs are cut at the head's vector, so the log never claims a delta
//! the vector does not cover.
//!
//! Cost: one pass over the keyspace, read in chunks of [`CHUNK`] records
//! (4 MiB at most) without holding the database lock between chunks. `duty` paces it: after
//! each chunk the dump sleeps so that it works only that share of the time,
//! leaving the cores to the node's writes.

use std::time::{Duration, Instant};

use super::{codec, keys, Counts, Run, Store, SCHEMA_VERSION};
use crate::merkle::{self, Digest, MerkleTree};
use crate::model::{Entry, NodeId, VersionVector};

/// Records read per chunk (one short hold of the database read lock).
pub const CHUNK: usize = 2048;
/// Bytes copied per chunk at most (log runs of large groups are big).
const CHUNK_BYTES: usize = 4 << 20;

/// The point in time a dump is consistent with.
#[derive(Clone, Debug)]
pub struct DumpHead {
    pub node_id: NodeId,
    pub schema_version: u32,
    pub vv: VersionVector,
    pub hlc: u64,
    pub next_change: u64,
}

/// One record of a dump, in the store's own encoding.
pub enum Item<'a> {
    Peer {
        id: &'a str,
        raw: &'a [u8],
    },
    Run {
        origin: &'a str,
        first: u64,
        raw: &'a [u8],
    },
    Entry {
        key: &'a str,
        raw: &'a [u8],
    },
}

/// What a dump held, for the snapshot's trailer.
#[derive(Clone, Debug, Default)]
pub struct DumpTotals {
    pub peers: u64,
    pub runs: u64,
    pub deltas: u64,
    pub counts: Counts,
    /// Merkle root over the dumped entries (not the head's root: entries
    /// may be newer, see the module doc).
    pub merkle_root: Digest,
}

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error(transparent)]
    Store(#[from] super::StoreError),
    #[error("writing the snapshot: {0}")]
    Sink(#[source] std::io::Error),
}

impl From<super::BackendError> for DumpError {
    fn from(e: super::BackendError) -> Self {
        DumpError::Store(e.into())
    }
}

impl From<codec::CodecError> for DumpError {
    fn from(e: codec::CodecError) -> Self {
        DumpError::Store(e.into())
    }
}

/// Sleeps after each chunk so the dump works `duty` of the time.
struct Pacer {
    duty: f64,
    since: Instant,
}

impl Pacer {
    fn new(duty: f64) -> Pacer {
        Pacer {
            duty: duty.clamp(0.01, 1.0),
            since: Instant::now(),
        }
    }

    fn chunk_done(&mut self) {
        if self.duty < 1.0 {
            let worked = self.since.elapsed().as_secs_f64();
            let rest = worked * (1.0 - self.duty) / self.duty;
            std::thread::sleep(Duration::from_secs_f64(rest.min(1.0)));
        }
        self.since = Instant::now();
    }
}

impl Store {
    /// The durable state a dump started now is consistent with.
    pub fn dump_head(&self) -> DumpHead {
        let served = self.served();
        DumpHead {
            node_id: self.node_id.clone(),
            schema_version: SCHEMA_VERSION,
            vv: served.state.vv.clone(),
            hlc: served.clock.last().0,
            next_change: served.state.next_change,
        }
    }

    /// Streams peers, log runs (cut at `head`'s vector) and entries to
    /// `sink`, in that order and each in key order. `duty` in (0, 1]: the
    /// share of time spent working (1 = flat out, for an offline dump).
    pub fn dump(
        &self,
        head: &DumpHead,
        duty: f64,
        sink: &mut dyn FnMut(Item<'_>) -> std::io::Result<()>,
    ) -> std::result::Result<DumpTotals, DumpError> {
        let mut totals = DumpTotals::default();
        let mut pacer = Pacer::new(duty);
        self.dump_table(&[keys::PEER], &mut pacer, |k, v| {
            let Some(id) = keys::suffix_str(k, 1) else {
                return Ok(());
            };
            totals.peers += 1;
            sink(Item::Peer { id, raw: v }).map_err(DumpError::Sink)
        })?;
        self.dump_table(&[keys::LOG], &mut pacer, |k, v| {
            let Some((origin, first)) = parse_run_key(k) else {
                return Ok(());
            };
            let known = NodeId::new(origin).map_or(0, |o| head.vv.get(&o));
            if first > known {
                return Ok(()); // after the head: the restored node pulls it
            }
            let len = codec::decode_len("log run", v)?;
            if len == 0 {
                return Ok(());
            }
            let cut;
            let raw = if first + len - 1 > known {
                let mut run: Run = codec::decode("log run", v)?;
                run.items.truncate((known - first + 1) as usize);
                cut = codec::encode(&run);
                totals.deltas += run.items.len() as u64;
                &cut[..]
            } else {
                totals.deltas += len;
                v
            };
            totals.runs += 1;
            sink(Item::Run { origin, first, raw }).map_err(DumpError::Sink)
        })?;
        let mut tree = MerkleTree::new();
        self.dump_table(&[keys::ENTRY], &mut pacer, |k, v| {
            let Some(key) = keys::suffix_str(k, 1) else {
                return Ok(());
            };
            let e: Entry = codec::decode("entry", v)?;
            tree.toggle(
                merkle::bucket_of(key),
                &merkle::item_digest(key, &e.version, e.is_tombstone()),
            );
            if e.is_tombstone() {
                totals.counts.tombstones += 1;
            } else {
                totals.counts.live += 1;
            }
            sink(Item::Entry { key, raw: v }).map_err(DumpError::Sink)
        })?;
        totals.merkle_root = tree.root();
        Ok(totals)
    }

    /// Every record under `prefix`, read in chunks. A chunk is copied out
    /// under the read lock and handed to `each` after it is let go, so
    /// neither a slow consumer (a client reading the snapshot slowly) nor
    /// the pacing ever holds up a reopen after an error.
    fn dump_table(
        &self,
        prefix: &[u8],
        pacer: &mut Pacer,
        mut each: impl FnMut(&[u8], &[u8]) -> std::result::Result<(), DumpError>,
    ) -> std::result::Result<(), DumpError> {
        let mut from = prefix.to_vec();
        loop {
            let mut chunk = Vec::new();
            let mut bytes = 0;
            {
                let kv = self.kv();
                for item in kv.scan_from(prefix, &from) {
                    let (k, v) = item?;
                    bytes += k.len() + v.len();
                    chunk.push((k, v));
                    if chunk.len() >= CHUNK || bytes >= CHUNK_BYTES {
                        break;
                    }
                }
            }
            for (k, v) in &chunk {
                each(k, v)?;
            }
            let Some((mut k, _)) = chunk.pop() else {
                return Ok(());
            };
            k.push(0); // the next key after `k`
            from = k;
            pacer.chunk_done();
        }
    }
}

/// Origin and first seq of a log run key (see `keys::log_run`).
pub(super) fn parse_run_key(k: &[u8]) -> Option<(&str, u64)> {
    let len = *k.get(1)? as usize;
    let origin = std::str::from_utf8(k.get(2..2 + len)?).ok()?;
    if k.len() != 2 + len + 8 {
        return None;
    }
    Some((origin, keys::trailing_u64(k)?))
}
