//! Schema 2 → 3: every commit group now writes a commit number (meta
//! `commit`), which the identity file beside the database (see
//! `src/store/identity.rs`) is checked against at open. A schema-2 directory
//! starts counting at 0; open then records its identity for the first time.

use super::super::super::backend::{Kv, WriteBatch};
use super::super::super::keys;

pub(super) fn up(kv: &Kv, batch: &mut WriteBatch) -> Result<(), String> {
    if kv
        .get(&keys::meta("commit"))
        .map_err(|e| e.to_string())?
        .is_none()
    {
        batch.insert(keys::meta("commit"), 0u64.to_be_bytes());
    }
    Ok(())
}
