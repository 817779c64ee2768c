//! Schema versioning of the data directory.
//!
//! The version lives in meta (`m` + `schema_version`). At open, steps from
//! `migrations/` bring an older directory up to [`SCHEMA_VERSION`] one at a
//! time, each in one atomic batch followed by a flush; a directory newer than
//! this binary is refused, never guessed at.

use super::backend::{Kv, WriteBatch};
use super::{keys, Result, StoreError};

#[path = "../../migrations/mod.rs"]
mod migrations;

/// The layout this binary reads and writes.
pub const SCHEMA_VERSION: u32 = 3;

pub(super) fn read_version(kv: &Kv) -> Result<Option<u32>> {
    Ok(kv
        .get(&keys::meta("schema_version"))?
        .and_then(|v| v.as_slice().try_into().ok())
        .map(u32::from_be_bytes))
}

pub(super) fn write_version(batch: &mut WriteBatch, v: u32) {
    batch.insert(keys::meta("schema_version"), v.to_be_bytes());
}

pub(super) fn migrate(kv: &Kv) -> Result<()> {
    let found = match read_version(kv)? {
        Some(v) => v,
        None if kv.first_with_prefix(&[])?.is_none() => {
            // A new directory starts at the current layout.
            let mut b = WriteBatch::default();
            write_version(&mut b, SCHEMA_VERSION);
            kv.apply(b)?;
            kv.flush()?;
            return Ok(());
        }
        // Data without a version: the first layout never wrote one.
        None => 1,
    };
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for to in (found + 1)..=SCHEMA_VERSION {
        let mut batch = WriteBatch::default();
        migrations::step(to, kv, &mut batch)
            .map_err(|reason| StoreError::Migration { to, reason })?;
        write_version(&mut batch, to);
        kv.apply(batch)?;
        kv.flush()?;
        tracing::info!(schema_version = to, "migrated data directory");
    }
    Ok(())
}
