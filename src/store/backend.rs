//! The narrow seam between hub and sled.
//!
//! sled is beta; everything hub needs from an embedded store is here, in one
//! ordered keyspace with atomic multi-key batches and an explicit flush. This
//! is the only file that names `sled`: swapping the engine means rewriting it.
//!
//! We use one sled tree, not one per logical table: sled's batches are atomic
//! only within a tree, and its cross-tree transactions are far slower. Logical
//! tables are key prefixes (see `keys.rs`).

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("data directory {path} is locked by another process (is a hub node running on it? stop it, or use `hub inspect --node URL` to read it live)")]
    Locked { path: String },
    #[error("storage engine: {0}")]
    Engine(String),
}

impl From<sled::Error> for BackendError {
    fn from(e: sled::Error) -> Self {
        BackendError::Engine(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, BackendError>;

pub struct Kv {
    db: sled::Db,
}

/// Writes applied together or not at all.
#[derive(Default)]
pub struct WriteBatch {
    inner: sled::Batch,
    len: usize,
}

impl WriteBatch {
    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.inner.insert(key.as_ref(), value.as_ref());
        self.len += 1;
    }

    pub fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.inner.remove(key.as_ref());
        self.len += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Kv {
    /// Opens (creating if needed) the keyspace in `dir`, with sled's page
    /// cache bounded to `cache_bytes`.
    /// `lock_wait`: how long to wait for a lock held by a just-closed handle.
    pub fn open(dir: &Path, cache_bytes: u64, lock_wait: std::time::Duration) -> Result<Kv> {
        // sled releases its file lock only when its last background thread
        // lets go of the database, a moment after the handle is dropped; a
        // restart in the same process must wait for that, briefly.
        let deadline = std::time::Instant::now() + lock_wait;
        loop {
            match Self::try_open(dir, cache_bytes) {
                Err(BackendError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => return other,
            }
        }
    }

    fn try_open(dir: &Path, cache_bytes: u64) -> Result<Kv> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // We flush explicitly per group commit; the background flusher
            // would only add I/O.
            .flush_every_ms(None)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                    BackendError::Locked {
                        path: dir.display().to_string(),
                    }
                }
                other => other.into(),
            })?;
        Ok(Kv { db })
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get(key)?.map(|v| v.to_vec()))
    }

    /// Key/value pairs whose key starts with `prefix`, in key order, starting
    /// at `from` (inclusive, must itself start with `prefix`).
    pub fn scan_from<'a>(
        &'a self,
        prefix: &'a [u8],
        from: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + 'a {
        self.db
            .range(from.to_vec()..)
            .take_while(move |r| match r {
                Ok((k, _)) => k.starts_with(prefix),
                Err(_) => true,
            })
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(Into::into))
    }

    pub fn scan_prefix<'a>(
        &'a self,
        prefix: &'a [u8],
    ) -> impl DoubleEndedIterator<Item = Result<(Vec<u8>, Vec<u8>)>> + 'a {
        self.db
            .scan_prefix(prefix)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(Into::into))
    }

    pub fn first_with_prefix(&self, prefix: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.scan_prefix(prefix).next().transpose()
    }

    pub fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.scan_prefix(prefix).next_back().transpose()
    }

    /// The greatest key `<= key` that starts with `prefix`.
    pub fn last_at_or_before(
        &self,
        prefix: &[u8],
        key: &[u8],
    ) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        match self.db.range(..=key.to_vec()).next_back() {
            Some(Ok((k, v))) if k.starts_with(prefix) => Ok(Some((k.to_vec(), v.to_vec()))),
            Some(Err(e)) => Err(e.into()),
            _ => Ok(None),
        }
    }

    pub fn apply(&self, batch: WriteBatch) -> Result<()> {
        Ok(self.db.apply_batch(batch.inner)?)
    }

    /// Makes every applied batch durable. Returns once the data is on disk.
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }
}
