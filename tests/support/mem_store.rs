//! An in-memory model of what the replicator reads and the committer
//! writes, for simulations of fleets too large for one sled database per
//! node: version vector, per-origin log (never trimmed), LWW map, and
//! Merkle digests computed from the map on demand (XOR of the item digests
//! under a node: any function of the items works, both sides of a
//! comparison use the same one), so anti-entropy runs for real. Meant for
//! small maps: a digest scans the map. With sharding it keeps what the sled
//! store keeps: values of the partitions in its owned set (shared with the
//! node machine's placement handle), and for every other delta only the
//! stub (logged, advancing the version vector, no entry).
//! Included with `#[path = "support/mem_store.rs"] mod mem_store;`.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use hub::merkle::{bucket_of, item_digest, leaf_range, Digest, NodeRef};
use hub::model::{Delta, Entry, Hlc, NodeId, Version, VersionVector};
use hub::placement::{self, SharedOwned};
use hub::replication::ReplicaReader;
use hub::store::{LogRead, Op, Outcome};

/// The replicator's view of a node's data, in memory.
#[derive(Default)]
struct MemState {
    vv: VersionVector,
    log: HashMap<NodeId, Vec<Delta>>,
    map: BTreeMap<String, Entry>,
    hlc: u64,
}

#[derive(Default)]
pub struct MemStore(Mutex<MemState>, Arc<SharedOwned>);

impl MemStore {
    /// The partitions this store keeps values of (all until the node
    /// machine publishes a layout): give it to the machine's
    /// `PlacementHandle`.
    pub fn owned(&self) -> &Arc<SharedOwned> {
        &self.1
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MemState> {
        self.0.lock().expect("mem store poisoned")
    }

    fn merge(s: &mut MemState, key: &str, entry: &Entry) -> bool {
        let won = entry.supersedes(s.map.get(key));
        if won {
            s.map.insert(key.to_string(), entry.clone());
        }
        s.hlc = s.hlc.max(entry.version.hlc.0);
        won
    }

    pub fn apply(&self, ops: &[Op]) -> Vec<Outcome> {
        let mut s = self.state();
        ops.iter()
            .map(|op| match op {
                Op::Delta(d) => {
                    let expected = s.vv.get(&d.origin) + 1;
                    if d.seq < expected {
                        Outcome::Duplicate
                    } else if d.seq > expected {
                        Outcome::Gap { expected }
                    } else if placement::is_stub(&d.entry)
                        || !placement::stores(&self.1.load(), &d.key)
                    {
                        // Another partition's write: only its stub is logged.
                        s.hlc = s.hlc.max(d.entry.version.hlc.0);
                        s.vv.set(d.origin.clone(), d.seq);
                        s.log
                            .entry(d.origin.clone())
                            .or_default()
                            .push(placement::stub(d));
                        Outcome::Applied { won: false }
                    } else {
                        let won = MemStore::merge(&mut s, &d.key, &d.entry);
                        s.vv.set(d.origin.clone(), d.seq);
                        s.log.entry(d.origin.clone()).or_default().push(d.clone());
                        Outcome::Applied { won }
                    }
                }
                Op::Entry { key, entry } => Outcome::EntryMerged {
                    won: !placement::is_stub(entry)
                        && placement::stores(&self.1.load(), key)
                        && MemStore::merge(&mut s, key, entry),
                },
                Op::AdvanceVv(vv) => {
                    s.vv.merge(vv);
                    Outcome::VvAdvanced
                }
                Op::Skip { origin, from, to } => {
                    let have = s.vv.get(origin);
                    if *to <= have {
                        Outcome::Duplicate
                    } else if *from > have + 1 {
                        Outcome::Gap { expected: have + 1 }
                    } else {
                        s.vv.set(origin.clone(), *to);
                        Outcome::Skipped
                    }
                }
                Op::DropPartition(p) => {
                    let before = s.map.len();
                    s.map.retain(|k, _| hub::placement::partition_of(k) != *p);
                    Outcome::Dropped {
                        keys: (before - s.map.len()) as u64,
                    }
                }
                Op::Local { .. } => panic!("the bench writes through MemStore::write"),
            })
            .collect()
    }

    /// An own write: the next seq of `me`.
    pub fn write(&self, me: &NodeId, key: &str, wall_ms: u64) -> Delta {
        let mut s = self.state();
        let hlc = Hlc::new(wall_ms, 0).0.max(s.hlc + 1);
        let entry = Entry {
            version: Version {
                hlc: Hlc(hlc),
                node: me.clone(),
            },
            value: Some(b"v".to_vec()),
            meta: Default::default(),
        };
        let seq = s.vv.get(me) + 1;
        let d = Delta {
            origin: me.clone(),
            seq,
            key: key.to_string(),
            entry,
        };
        MemStore::merge(&mut s, key, &d.entry);
        s.vv.set(me.clone(), seq);
        s.log.entry(me.clone()).or_default().push(d.clone());
        d
    }

    pub fn has(&self, key: &str) -> bool {
        self.state().map.contains_key(key)
    }

    /// Whether the version vector covers `seq` of `origin` (the value, or
    /// its stub where the partition is not ours).
    pub fn covers(&self, origin: &NodeId, seq: u64) -> bool {
        self.state().vv.get(origin) >= seq
    }

    /// XOR of the item digests under a Merkle node: any function of the
    /// set of items works, as both sides of a comparison use the same one.
    fn digest_of(s: &MemState, node: NodeRef) -> Digest {
        let range = leaf_range(node);
        let mut d = [0u8; 16];
        for (k, e) in &s.map {
            if range.contains(&bucket_of(k)) {
                let item = item_digest(k, &e.version, e.is_tombstone());
                d.iter_mut().zip(item).for_each(|(a, b)| *a ^= b);
            }
        }
        d
    }
}

impl ReplicaReader for MemStore {
    fn clock(&self) -> Hlc {
        Hlc(self.state().hlc)
    }
    fn observe_clock(&self, remote: Hlc, _wall_ms: u64) -> bool {
        let mut s = self.state();
        s.hlc = s.hlc.max(remote.0);
        true
    }
    fn version_vector(&self) -> VersionVector {
        self.state().vv.clone()
    }
    fn merkle_root(&self) -> Digest {
        MemStore::digest_of(&self.state(), NodeRef::ROOT)
    }
    fn merkle_children(&self, node: NodeRef) -> Option<Vec<Digest>> {
        let s = self.state();
        Some(
            node.children()?
                .map(|c| MemStore::digest_of(&s, c))
                .collect(),
        )
    }
    fn get(&self, key: &str) -> hub::store::Result<Option<Entry>> {
        Ok(self.state().map.get(key).cloned())
    }
    fn bucket_versions(&self, bucket: u16) -> hub::store::Result<Vec<(String, Version, bool)>> {
        Ok(self
            .state()
            .map
            .iter()
            .filter(|(k, _)| bucket_of(k) == bucket)
            .map(|(k, e)| (k.clone(), e.version.clone(), e.is_tombstone()))
            .collect())
    }
    fn deltas_after(
        &self,
        origin: &NodeId,
        after: u64,
        limit: usize,
    ) -> hub::store::Result<LogRead> {
        let s = self.state();
        let log = s.log.get(origin).map(Vec::as_slice).unwrap_or(&[]);
        Ok(LogRead::Deltas(
            log.iter()
                .filter(|d| d.seq > after)
                .take(limit)
                .cloned()
                .collect(),
        ))
    }
}

/// The deltas a commit made fresh (what the committer's sink reports).
pub fn fresh(ops: &[Op], outcomes: &[Outcome]) -> Vec<Delta> {
    ops.iter()
        .zip(outcomes)
        .filter_map(|(op, o)| match (op, o) {
            (Op::Delta(d), Outcome::Applied { .. }) => Some(d.clone()),
            _ => None,
        })
        .collect()
}
