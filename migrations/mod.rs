//! Numbered upgrade steps for the data directory, applied in order at open
//! (see `src/store/schema.rs`). Each step reads the old layout and adds its
//! changes to one batch; the caller writes the new schema version in the
//! same batch, so a crash mid-migration leaves the old version and the step
//! simply runs again.
//!
//! Never edit a released step: add a new one.

#[path = "0002_merkle_buckets.rs"]
mod m0002_merkle_buckets;
#[path = "0003_commit_number.rs"]
mod m0003_commit_number;

use super::super::backend::{Kv, WriteBatch};

pub(super) fn step(to: u32, kv: &Kv, batch: &mut WriteBatch) -> Result<(), String> {
    match to {
        2 => m0002_merkle_buckets::up(kv, batch),
        3 => m0003_commit_number::up(kv, batch),
        other => Err(format!("no migration step to schema {other}")),
    }
}
