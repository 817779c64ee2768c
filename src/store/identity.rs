//! The identity file: which node a data directory belongs to and how far its
//! database had durably got, kept outside the database.
//!
//! A truncated, deleted or rolled-back database cannot take this file with
//! it, so opening compares the two: a database that lacks the recorded node
//! id, or whose commit number is below the recorded one, has lost data, and
//! the directory is refused instead of starting empty or silently behind.
//!
//! Written atomically (temp file, fsync, rename, fsync of the directory) at
//! open, at most every [`WRITE_EVERY`] while writes flow, and at close; it
//! only ever records a commit number that was already durable, so a crash can
//! leave it behind the database but never ahead. Writes in the last interval
//! before damage can go unnoticed; that is the price of not paying an fsync
//! per group. A directory from before this file existed gets one at its first
//! open (there is nothing to compare against yet).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The file's name inside the data directory, beside sled's own files.
pub const FILE: &str = "hub-identity.json";
/// How often, at most, a flush also records its commit number here.
pub(super) const WRITE_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Identity {
    pub node_id: String,
    /// A commit number the database durably reached.
    pub commit: u64,
}

pub(super) fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// `Ok(None)` when the directory has no identity file yet.
pub(super) fn read(dir: &Path) -> Result<Option<Identity>, String> {
    let p = path(dir);
    match std::fs::read(&p) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{} is damaged ({e})", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", p.display())),
    }
}

pub(super) fn write(dir: &Path, id: &Identity) -> std::io::Result<()> {
    let tmp = dir.join(format!("{FILE}.tmp"));
    let bytes = serde_json::to_vec_pretty(id).map_err(std::io::Error::other)?;
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path(dir))?;
    std::fs::File::open(dir)?.sync_all()
}
