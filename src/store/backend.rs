//! The narrow seam between hub and sled.
//!
//! sled is beta; everything hub needs from an embedded store is here, in one
//! ordered keyspace with atomic multi-key batches and an explicit flush. This
//! is the only file that names `sled`: swapping the engine means rewriting it.
//!
//! We use one sled tree, not one per logical table: sled's batches are atomic
//! only within a tree, and its cross-tree transactions are far slower. Logical
//! tables are key prefixes (see `keys.rs`).
//!
//! After an I/O error sled keeps the failed writes in its page cache and
//! refuses every later write, so the store closes the handle ([`Kv::close`])
//! and opens the directory again to serve only what is on disk. A closed `Kv`
//! answers every call with [`BackendError::Closed`].
//!
//! [`Faults`] is the test seam: it makes reads, batches (also half-applied
//! ones) and flushes fail on demand, so every error path of a commit group can
//! be exercised against a real sled directory. It models what sled does after
//! a real I/O error (it records a global error and writes nothing more): with
//! faults configured, a `Kv` remembers the old value of every record written
//! since the last good flush, and [`Kv::close`] puts them back before the
//! handle goes, so what was not flushed does not reach the disk.

use std::path::Path;
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("data directory {path} is locked by another process (is a hub node running on it? stop it, or use `hub inspect --node URL` to read it live)")]
    Locked { path: String },
    #[error("storage engine: {0}")]
    Engine(String),
    #[error("the storage engine crashed opening {path} ({detail}): the database files are damaged; restore this directory from a snapshot, or move it aside and let the node recover its data from a peer")]
    Damaged { path: String, detail: String },
    #[error("the database is closed after a write failure and could not be reopened yet")]
    Closed,
    #[error("the storage engine did not let go of the database after the write failure (sled can hang closing after an I/O error); restart the node to recover from disk")]
    Hung,
    #[error("injected fault: {0}")]
    Injected(&'static str),
}

impl From<sled::Error> for BackendError {
    fn from(e: sled::Error) -> Self {
        BackendError::Engine(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, BackendError>;

/// One record of a batch: key and new value (`None` removes).
type Record = (Vec<u8>, Option<Vec<u8>>);
/// A key/value pair read from the engine.
type Pair = (Vec<u8>, Vec<u8>);

/// A failure to inject into the next matching backend call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The read after `skip` more successful reads fails.
    Read { skip: usize },
    /// The next batch writes its first `written` records, then fails.
    Apply { written: usize },
    /// The next flush fails before writing.
    FlushBefore,
    /// The next flush writes everything, then reports failure.
    FlushAfter,
    /// Opening the directory fails while armed (until [`Faults::clear`]).
    Open,
}

/// Failures armed by a test; shared between the test and the store.
#[derive(Debug, Default)]
pub struct Faults {
    armed: Mutex<Vec<Fault>>,
}

impl Faults {
    pub fn new() -> Arc<Faults> {
        Arc::new(Faults::default())
    }

    pub fn arm(&self, fault: Fault) {
        self.lock().push(fault);
    }

    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Fault>> {
        self.armed.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn on_read(&self) -> Result<()> {
        let mut armed = self.lock();
        let Some(i) = armed.iter().position(|f| matches!(f, Fault::Read { .. })) else {
            return Ok(());
        };
        if let Some(Fault::Read { skip }) = armed.get_mut(i) {
            if *skip > 0 {
                *skip -= 1;
                return Ok(());
            }
        }
        armed.remove(i);
        Err(BackendError::Injected("read failed"))
    }

    fn take(&self, pick: impl Fn(&Fault) -> bool) -> Option<Fault> {
        let mut armed = self.lock();
        let i = armed.iter().position(pick)?;
        Some(armed.remove(i))
    }

    fn open_fails(&self) -> bool {
        self.lock().contains(&Fault::Open)
    }
}

pub struct Kv {
    db: Option<sled::Db>,
    faults: Option<Arc<Faults>>,
    /// With faults only: old values of records written since the last good
    /// flush, oldest first.
    unflushed: Mutex<Vec<Record>>,
    /// Signals when a closed engine handle has finished dropping (and so
    /// released the directory lock).
    closing: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

/// How long closing waits for sled to let go of a failed database.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Writes applied together or not at all.
#[derive(Default)]
pub struct WriteBatch {
    ops: Vec<Record>,
}

impl WriteBatch {
    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.ops
            .push((key.as_ref().to_vec(), Some(value.as_ref().to_vec())));
    }

    pub fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.ops.push((key.as_ref().to_vec(), None));
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn into_sled(ops: impl IntoIterator<Item = Record>) -> sled::Batch {
        let mut b = sled::Batch::default();
        for (k, v) in ops {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        b
    }
}

impl Kv {
    /// Opens (creating if needed) the keyspace in `dir`, with sled's page
    /// cache bounded to `cache_bytes`.
    /// `lock_wait`: how long to wait for a lock held by a just-closed handle.
    pub fn open(
        dir: &Path,
        cache_bytes: u64,
        lock_wait: std::time::Duration,
        faults: Option<Arc<Faults>>,
    ) -> Result<Kv> {
        if faults.as_ref().is_some_and(|f| f.open_fails()) {
            return Err(BackendError::Injected("open failed"));
        }
        // sled releases its file lock only when its last background thread
        // lets go of the database, a moment after the handle is dropped; a
        // restart in the same process must wait for that, briefly.
        let deadline = std::time::Instant::now() + lock_wait;
        loop {
            match Self::try_open(dir, cache_bytes) {
                Err(BackendError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Ok(db) => {
                    return Ok(Kv {
                        db: Some(db),
                        faults,
                        unflushed: Mutex::new(Vec::new()),
                        closing: Mutex::new(None),
                    })
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn try_open(dir: &Path, cache_bytes: u64) -> Result<sled::Db> {
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // We flush explicitly per group commit; the background flusher
            // would only add I/O.
            .flush_every_ms(None);
        // sled panics on some damage (a missing or corrupt blob file); turn
        // that into an error naming the directory instead of a crashed node.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()))
            .map_err(|panic| BackendError::Damaged {
                path: dir.display().to_string(),
                detail: panic_text(&panic),
            })?;
        opened.map_err(|e| match e {
            sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                BackendError::Locked {
                    path: dir.display().to_string(),
                }
            }
            sled::Error::Corruption { .. } | sled::Error::ReportableBug(_) => {
                BackendError::Damaged {
                    path: dir.display().to_string(),
                    detail: e.to_string(),
                }
            }
            other => other.into(),
        })
    }

    /// Drops the engine handle (sled writes back what it can as it goes);
    /// every later call fails with [`BackendError::Closed`]. sled can block
    /// forever dropping a database after an I/O error, so the drop runs on
    /// its own thread: `Err(Hung)` when it has not finished within
    /// `CLOSE_WAIT` (then the directory stays locked; later calls check again
    /// without waiting).
    pub fn close(&mut self) -> Result<()> {
        let undo = std::mem::take(self.unflushed.get_mut().unwrap_or_else(|p| p.into_inner()));
        if let (Some(db), false) = (&self.db, undo.is_empty()) {
            // Newest first, so the oldest value of a key is written last.
            let restore = WriteBatch::into_sled(undo.into_iter().rev());
            if let Err(e) = db.apply_batch(restore) {
                tracing::error!(error = %e, "fault seam: cannot undo unflushed writes");
            }
        }
        let wait = match self.db.take() {
            Some(db) => {
                let (done, closing) = std::sync::mpsc::channel();
                std::thread::Builder::new()
                    .name("hub-close".into())
                    .spawn(move || {
                        drop(db);
                        let _ = done.send(());
                    })
                    .map_err(|e| BackendError::Engine(format!("cannot start closing: {e}")))?;
                *self.closing.get_mut().unwrap_or_else(|p| p.into_inner()) = Some(closing);
                CLOSE_WAIT
            }
            None => std::time::Duration::ZERO,
        };
        let closing = self.closing.get_mut().unwrap_or_else(|p| p.into_inner());
        match closing.as_ref().map(|c| c.recv_timeout(wait)) {
            None | Some(Ok(())) | Some(Err(std::sync::mpsc::RecvTimeoutError::Disconnected)) => {
                *closing = None;
                Ok(())
            }
            Some(Err(std::sync::mpsc::RecvTimeoutError::Timeout)) => Err(BackendError::Hung),
        }
    }

    /// With faults configured: remembers the old values of `ops`' keys.
    fn remember(&self, db: &sled::Db, ops: &[Record]) -> Result<()> {
        if self.faults.is_none() {
            return Ok(());
        }
        let mut undo = self.unflushed.lock().unwrap_or_else(|p| p.into_inner());
        for (k, _) in ops {
            undo.push((k.clone(), db.get(k)?.map(|v| v.to_vec())));
        }
        Ok(())
    }

    fn db(&self) -> Result<&sled::Db> {
        self.db.as_ref().ok_or(BackendError::Closed)
    }

    fn read_fault(&self) -> Result<()> {
        match &self.faults {
            Some(f) => f.on_read(),
            None => Ok(()),
        }
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.read_fault()?;
        Ok(self.db()?.get(key)?.map(|v| v.to_vec()))
    }

    /// Key/value pairs whose key starts with `prefix`, in key order, starting
    /// at `from` (inclusive, must itself start with `prefix`).
    pub fn scan_from<'a>(
        &'a self,
        prefix: &'a [u8],
        from: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + 'a {
        let (iter, failed) = self.iter_or_error(|db| db.range(from.to_vec()..));
        failed.into_iter().chain(
            iter.into_iter()
                .flatten()
                .take_while(move |r| match r {
                    Ok((k, _)) => k.starts_with(prefix),
                    Err(_) => true,
                })
                .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(Into::into)),
        )
    }

    pub fn scan_prefix<'a>(
        &'a self,
        prefix: &'a [u8],
    ) -> impl DoubleEndedIterator<Item = Result<(Vec<u8>, Vec<u8>)>> + 'a {
        let (iter, failed) = self.iter_or_error(|db| db.scan_prefix(prefix));
        failed.into_iter().chain(
            iter.into_iter()
                .flatten()
                .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(Into::into)),
        )
    }

    /// The engine's iterator, or the error to yield instead of it.
    fn iter_or_error(
        &self,
        make: impl FnOnce(&sled::Db) -> sled::Iter,
    ) -> (Option<sled::Iter>, Option<Result<Pair>>) {
        match self.read_fault().and_then(|()| self.db()) {
            Ok(db) => (Some(make(db)), None),
            Err(e) => (None, Some(Err(e))),
        }
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
        self.read_fault()?;
        match self.db()?.range(..=key.to_vec()).next_back() {
            Some(Ok((k, v))) if k.starts_with(prefix) => Ok(Some((k.to_vec(), v.to_vec()))),
            Some(Err(e)) => Err(e.into()),
            _ => Ok(None),
        }
    }

    pub fn apply(&self, batch: WriteBatch) -> Result<()> {
        let db = self.db()?;
        let fault = self
            .faults
            .as_ref()
            .and_then(|f| f.take(|f| matches!(f, Fault::Apply { .. })));
        if let Some(Fault::Apply { written }) = fault {
            // A half-applied batch: the worst an engine bug could leave.
            let part: Vec<_> = batch.ops.into_iter().take(written).collect();
            self.remember(db, &part)?;
            db.apply_batch(WriteBatch::into_sled(part))?;
            return Err(BackendError::Injected("batch failed part-way"));
        }
        self.remember(db, &batch.ops)?;
        Ok(db.apply_batch(WriteBatch::into_sled(batch.ops))?)
    }

    /// Makes every applied batch durable. Returns once the data is on disk.
    pub fn flush(&self) -> Result<()> {
        let db = self.db()?;
        let fault = self
            .faults
            .as_ref()
            .and_then(|f| f.take(|f| matches!(f, Fault::FlushBefore | Fault::FlushAfter)));
        match fault {
            Some(Fault::FlushBefore) => Err(BackendError::Injected("flush failed")),
            Some(_) => {
                let before = self.unflushed_len();
                db.flush()?;
                self.forget_first(before);
                Err(BackendError::Injected("flush failed after writing"))
            }
            None => {
                // Records applied while this flush runs may not be in it:
                // forget only those remembered before it began.
                let before = self.unflushed_len();
                db.flush()?;
                self.forget_first(before);
                Ok(())
            }
        }
    }

    fn unflushed_len(&self) -> usize {
        self.unflushed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    fn forget_first(&self, n: usize) {
        let mut undo = self.unflushed.lock().unwrap_or_else(|p| p.into_inner());
        let n = n.min(undo.len());
        undo.drain(..n);
    }

    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db()?.size_on_disk()?)
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}
