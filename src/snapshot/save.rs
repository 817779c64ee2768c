//! Saving: a store's dump written as a snapshot file, to any writer (a file
//! on disk, or an HTTP response body through a channel).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::format::{Header, Trailer, Writer};
use super::{io_err, Progress, SnapshotError};
use crate::store::dump::Item;
use crate::store::Store;

/// What a save wrote.
#[derive(Clone, Debug, Default)]
pub struct SaveStats {
    pub node_id: String,
    pub bytes: u64,
    pub entries: u64,
    pub peers: u64,
    pub runs: u64,
    pub deltas: u64,
    pub merkle_root: String,
}

/// Writes a snapshot of `store` to `out`. `duty` in (0, 1]: the share of
/// time the dump works (see [`crate::store::dump`]); 1 for a stopped node.
pub fn write<W: Write>(
    store: &Store,
    out: W,
    duty: f64,
    progress: &Progress,
) -> Result<(W, SaveStats), SnapshotError> {
    let head = store.dump_head();
    let mut w = Writer::new(out).map_err(crate::store::dump::DumpError::Sink)?;
    let header = Header {
        node_id: head.node_id.to_string(),
        schema_version: head.schema_version,
        version_vector: head.vv.iter().map(|(o, s)| (o.to_string(), s)).collect(),
        hlc: head.hlc,
        next_change: head.next_change,
        created_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        hub_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    w.header(&header)
        .map_err(crate::store::dump::DumpError::Sink)?;
    let totals = store.dump(&head, duty, &mut |item| {
        match item {
            Item::Peer { id, raw } => w.peer(id, raw)?,
            Item::Run { origin, first, raw } => w.run(origin, first, raw)?,
            Item::Entry { key, raw } => w.entry(key, raw)?,
        }
        progress.records.fetch_add(1, Ordering::Relaxed);
        progress.bytes.store(w.bytes(), Ordering::Relaxed);
        Ok(())
    })?;
    let trailer = Trailer {
        peers: totals.peers,
        runs: totals.runs,
        deltas: totals.deltas,
        entries: totals.counts.live + totals.counts.tombstones,
        tombstones: totals.counts.tombstones,
        merkle_root: hex::encode(totals.merkle_root),
    };
    w.trailer(&trailer)
        .map_err(crate::store::dump::DumpError::Sink)?;
    let (out, bytes) = w.finish().map_err(crate::store::dump::DumpError::Sink)?;
    progress.bytes.store(bytes, Ordering::Relaxed);
    Ok((
        out,
        SaveStats {
            node_id: header.node_id,
            bytes,
            entries: trailer.entries,
            peers: trailer.peers,
            runs: trailer.runs,
            deltas: trailer.deltas,
            merkle_root: trailer.merkle_root,
        },
    ))
}

/// A file written all or nothing: into a temporary file beside `path`,
/// synced, then renamed over `path` (and the directory synced) by
/// [`PartialFile::commit`]. Dropped uncommitted, the temporary file is
/// removed and `path` is untouched.
pub struct PartialFile {
    path: PathBuf,
    tmp: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    done: bool,
}

impl PartialFile {
    pub fn create(path: &Path) -> Result<PartialFile, SnapshotError> {
        let name = path
            .file_name()
            .ok_or_else(|| SnapshotError::Invalid(format!("{} names no file", path.display())))?;
        let tmp = path.with_file_name(format!(
            ".{}.partial-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        Ok(PartialFile {
            path: path.to_path_buf(),
            tmp,
            out: std::io::BufWriter::with_capacity(1 << 20, file),
            done: false,
        })
    }

    pub fn out(&mut self) -> &mut std::io::BufWriter<std::fs::File> {
        &mut self.out
    }

    /// The temporary file (to read back what was written before committing).
    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    pub fn commit(mut self) -> Result<(), SnapshotError> {
        self.out.flush().map_err(io_err(&self.tmp))?;
        self.out.get_ref().sync_all().map_err(io_err(&self.tmp))?;
        std::fs::rename(&self.tmp, &self.path).map_err(io_err(&self.path))?;
        self.done = true;
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// A stopped node's directory saved to `file`.
pub fn save_dir(dir: &Path, file: &Path, progress: &Progress) -> Result<SaveStats, SnapshotError> {
    let store = Store::open_existing(dir, 64 << 20)?;
    let mut partial = PartialFile::create(file)?;
    let (_, stats) = write(&store, partial.out(), 1.0, progress)?;
    partial.commit()?;
    Ok(stats)
}
