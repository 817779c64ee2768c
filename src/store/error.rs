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
    #[error("store is read-only after an earlier write failure ({0}); restart the node to recover from disk")]
    Poisoned(String),
    #[error("data directory {0} does not exist")]
    Missing(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;
