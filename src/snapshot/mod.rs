//! Snapshots: a consistent copy of one node in one file, and a data
//! directory made from it.
//!
//! * [`format`]: the file (framed records, format version, BLAKE3 checksum);
//! * [`save`]: dump a store (live or stopped) into it;
//! * [`restore`]: build a data directory from it, all or nothing.
//!
//! What a snapshot guarantees is the store dump's guarantee (see
//! [`crate::store::dump`]): every write durable when the save began is in
//! it, with that moment's version vector. Restored under the same node id
//! (disaster recovery), the node catches up from peers by pull and
//! anti-entropy, and does not write until a peer has shown which of its own
//! sequence numbers it already used; restored under a new id it is a new
//! member seeded with the data, so joining moves only what changed since.

pub mod format;
pub mod restore;
pub mod save;

use std::sync::atomic::AtomicU64;

pub use format::FormatError;

/// Live counters of a save or restore, for progress lines.
#[derive(Debug, Default)]
pub struct Progress {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Dump(#[from] crate::store::dump::DumpError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("refusing to restore into {0}: it exists and is not empty (restore into a new or empty directory)")]
    TargetNotEmpty(String),
    #[error("the snapshot is unusable: {0}")]
    Invalid(String),
}

/// Maps an I/O error on `path` into [`SnapshotError::Io`].
pub fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.display().to_string(),
        source,
    }
}
