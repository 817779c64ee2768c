use super::backend::BackendError;
use super::codec::CodecError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Corrupt(#[from] CodecError),
    #[error("data directory schema version {found} is newer than this binary understands ({supported}); upgrade hub")]
    SchemaTooNew { found: u32, supported: u32 },
    #[error("migration to schema {to} failed: {reason}")]
    Migration { to: u32, reason: String },
    #[error("data directory belongs to node {stored:?}, not {configured:?}; use that node id or another --data-dir")]
    WrongNode { stored: String, configured: String },
    #[error("{0} is not a hub data directory (no node id recorded)")]
    NotHubDir(String),
    #[error("store is unavailable: the database could not be reopened after a write failure ({0}); writes are refused and each new write retries")]
    Unavailable(String),
    #[error("data directory {dir} belonged to node {node} and had reached commit {commit} (recorded in {file}), but its database is missing or empty: it was deleted or truncated. Restore the directory from a snapshot or a peer; do not start the node on it", file = super::identity::FILE)]
    DatabaseLost {
        dir: String,
        node: String,
        commit: u64,
    },
    #[error("the database in {dir} holds commit {found} but had durably reached commit {recorded} (recorded in {file}): its tail was lost (truncated or corrupted). Restore the directory from a snapshot or a peer; do not start the node on it", file = super::identity::FILE)]
    RolledBack {
        dir: String,
        recorded: u64,
        found: u64,
    },
    #[error("identity file {path}: {reason}; restore it from a backup of this directory, or the directory from a snapshot or a peer")]
    Identity { path: String, reason: String },
    #[error("cannot start the store writer threads: {0}")]
    Spawn(std::io::Error),
    #[error("the write was lost: the database failed and was reopened without it")]
    Lost,
    #[error("the write's outcome is unknown: the database failed and is not reopened yet")]
    Unknown,
    #[error("data directory {0} does not exist")]
    Missing(String),
    #[error("data directory {0} is empty: not a hub data directory (a node makes one at its first start; `hub snapshot restore` makes one from a snapshot)")]
    EmptyDir(String),
    #[error("{0} already holds a database: restore into a new or empty directory")]
    NotEmpty(String),
    #[error("cannot read data directory {0}: {1}")]
    Unreadable(String, #[source] std::io::Error),
}

pub type Result<T> = std::result::Result<T, StoreError>;
