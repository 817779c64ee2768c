//! Schema 1 → 2: schema 1 kept entries, node id and version vector
//! but no Merkle leaves, no bucket index and no counts. This step derives all
//! three from the entries (Merkle leaves as a checkpoint).

use super::super::super::backend::{Kv, WriteBatch};
use super::super::super::{codec, keys, Counts};
use crate::merkle::{self, MerkleTree};
use crate::model::Entry;

pub(super) fn up(kv: &Kv, batch: &mut WriteBatch) -> Result<(), String> {
    let mut tree = MerkleTree::new();
    let mut touched = std::collections::BTreeSet::new();
    let mut counts = Counts::default();
    for item in kv.scan_prefix(&[keys::ENTRY]) {
        let (k, v) = item.map_err(|e| e.to_string())?;
        let key = keys::suffix_str(&k, 1).ok_or("entry key is not UTF-8")?;
        let entry: Entry = codec::decode("entry", &v).map_err(|e| e.to_string())?;
        let bucket = merkle::bucket_of(key);
        tree.toggle(
            bucket,
            &merkle::item_digest(key, &entry.version, entry.is_tombstone()),
        );
        touched.insert(bucket);
        batch.insert(keys::bucket_member(bucket, key), []);
        if entry.is_tombstone() {
            counts.tombstones += 1;
        } else {
            counts.live += 1;
        }
    }
    let chunks: std::collections::BTreeSet<u16> =
        touched.iter().map(|b| b / merkle::FANOUT as u16).collect();
    for chunk in chunks {
        let mut bytes = Vec::with_capacity(16 * merkle::FANOUT);
        for i in 0..merkle::FANOUT as u16 {
            bytes.extend_from_slice(&tree.leaf(chunk * merkle::FANOUT as u16 + i));
        }
        batch.insert(keys::leaf_chunk(chunk), bytes);
    }
    batch.insert(keys::meta("counts"), codec::encode(&counts));
    // Schema 1 had no feed; the leaves are exact as of its start.
    batch.insert(keys::meta("merkle_at"), 0u64.to_be_bytes());
    Ok(())
}
