//! Schema 1 → 2: schema 1 kept entries, log, change feed and version vector
//! but no Merkle leaves, no bucket index and no counts. This step derives all
//! three from the entries.

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
        tree.toggle(bucket, &merkle::item_digest(key, &entry.version, entry.is_tombstone()));
        touched.insert(bucket);
        batch.insert(keys::bucket_member(bucket, key), []);
        if entry.is_tombstone() {
            counts.tombstones += 1;
        } else {
            counts.live += 1;
        }
    }
    for bucket in touched {
        batch.insert(keys::leaf(bucket), tree.leaf(bucket));
    }
    batch.insert(keys::meta("counts"), codec::encode(&counts));
    Ok(())
}
