//! Restoring: a snapshot file made into a data directory, all or nothing.
//!
//! The directory is built beside the target under a scratch name, then the
//! checksum, the totals and the Merkle root are checked, the store is opened
//! once as a node would open it, and only then is the scratch directory
//! renamed into place. Any error (a truncated or corrupt file, a full disk)
//! removes the scratch directory and whatever parents it created: nothing
//! is left behind.
//!
//! Under the snapshot's own node id (disaster recovery) a directory that
//! remembers peers is marked: the node then takes no local write until a
//! peer has shown how far the node's own sequence numbers went (writes it
//! made after the snapshot live on peers; a fresh write must not reuse
//! their numbers), and pulls those writes back. Under a new node id there is
//! nothing to fence: the id has no writes anywhere.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::format::{Frame, Header, Reader, Trailer};
use super::{io_err, Progress, SnapshotError};
use crate::model::{NodeId, VersionVector};
use crate::store::dump::DumpHead;
use crate::store::load::Loader;
use crate::store::{Store, StoreConfig, SCHEMA_VERSION};

#[derive(Clone, Debug)]
pub struct RestoreStats {
    pub node_id: String,
    /// Restored under the id the snapshot was taken from.
    pub same_node: bool,
    /// The node must check its own sequence numbers with a peer before
    /// writing (same node, peers remembered).
    pub fenced_until_peer_check: bool,
    pub entries: u64,
    pub runs: u64,
    pub peers: u64,
    pub bytes: u64,
    pub merkle_root: String,
}

/// Restores `file` into `dir` (missing or empty) as `node_id` (default: the
/// snapshot's node).
pub fn restore_file(
    file: &Path,
    dir: &Path,
    node_id: Option<&NodeId>,
    progress: &Progress,
) -> Result<RestoreStats, SnapshotError> {
    let f = std::fs::File::open(file).map_err(io_err(file))?;
    let input = std::io::BufReader::with_capacity(1 << 20, f);
    restore(input, dir, node_id, progress)
}

/// [`restore_file`] from any reader.
pub fn restore(
    input: impl Read,
    dir: &Path,
    node_id: Option<&NodeId>,
    progress: &Progress,
) -> Result<RestoreStats, SnapshotError> {
    check_target(dir)?;
    let scratch = Scratch::create(dir)?;
    match build(input, &scratch.path, node_id, progress) {
        Ok(stats) => {
            scratch.commit(dir)?;
            if let Err(e) = crate::files::private_tree(dir) {
                tracing::warn!(data_dir = %dir.display(), error = %e, "cannot make the data directory private");
            }
            Ok(stats)
        }
        Err(e) => Err(e), // `scratch` removes itself
    }
}

fn check_target(dir: &Path) -> Result<(), SnapshotError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(SnapshotError::TargetNotEmpty(dir.display().to_string()));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(dir)(e)),
    }
}

fn build(
    input: impl Read,
    scratch: &Path,
    node_id: Option<&NodeId>,
    progress: &Progress,
) -> Result<RestoreStats, SnapshotError> {
    let mut reader = Reader::open(input)?;
    let Frame::Header(header) = reader.next_frame()? else {
        return Err(SnapshotError::Invalid(
            "it does not start with a header".into(),
        ));
    };
    let head = head_of(&header)?;
    let node = node_id.cloned().unwrap_or_else(|| head.node_id.clone());
    let same_node = node == head.node_id;
    let mut loader = Loader::create(scratch, &node, 64 << 20)?;
    let (mut entries, mut runs, mut peers) = (0u64, 0u64, 0u64);
    let mut remembered_other = false;
    let trailer: Trailer = loop {
        match reader.next_frame()? {
            Frame::Peer { id, raw } => {
                remembered_other |= id != node.as_str();
                loader.peer(&id, &raw)?;
                peers += 1;
            }
            Frame::Run { origin, first, raw } => {
                loader.run(&origin, first, &raw)?;
                runs += 1;
            }
            Frame::Entry { key, raw } => {
                loader.entry(&key, &raw)?;
                entries += 1;
            }
            Frame::Trailer(t) => break t,
            Frame::Header(_) | Frame::End => {
                return Err(SnapshotError::Invalid("a record is out of place".into()))
            }
        }
        progress.records.fetch_add(1, Ordering::Relaxed);
        progress.bytes.store(reader.bytes(), Ordering::Relaxed);
    };
    if reader.next_frame()? != Frame::End {
        return Err(SnapshotError::Invalid("records follow the trailer".into()));
    }
    progress.bytes.store(reader.bytes(), Ordering::Relaxed);
    // The checksum matched; the totals must too.
    let root = hex::encode(loader.merkle_root());
    let counts = loader.counts();
    if (entries, runs, peers) != (trailer.entries, trailer.runs, trailer.peers)
        || counts.tombstones != trailer.tombstones
        || root != trailer.merkle_root
    {
        return Err(SnapshotError::Invalid(format!(
            "it holds {entries} entries, {runs} log runs, {peers} peers and Merkle root {root}, \
             but its trailer says {}, {}, {} and {}",
            trailer.entries, trailer.runs, trailer.peers, trailer.merkle_root
        )));
    }
    let fenced = same_node && remembered_other;
    loader.finish(&head, fenced)?;
    // Open it as a node would before calling it a data directory.
    let store = Store::open(
        scratch,
        StoreConfig {
            node_id: Some(node.clone()),
            ..StoreConfig::default()
        },
    )?;
    let opened_root = hex::encode(store.merkle_root());
    if opened_root != trailer.merkle_root {
        return Err(SnapshotError::Invalid(format!(
            "the restored directory's Merkle root {opened_root} differs from the snapshot's {}",
            trailer.merkle_root
        )));
    }
    drop(store);
    Ok(RestoreStats {
        node_id: node.to_string(),
        same_node,
        fenced_until_peer_check: fenced,
        entries,
        runs,
        peers,
        bytes: reader.bytes(),
        merkle_root: root,
    })
}

fn head_of(h: &Header) -> Result<DumpHead, SnapshotError> {
    if h.schema_version != SCHEMA_VERSION {
        return Err(SnapshotError::Invalid(format!(
            "it holds data directory schema {}, this hub writes schema {SCHEMA_VERSION}; \
             restore it with the hub version that saved it ({}), start that node once, and save again",
            h.schema_version, h.hub_version
        )));
    }
    let id =
        |s: &str| NodeId::new(s).map_err(|e| SnapshotError::Invalid(format!("node id {s:?}: {e}")));
    let mut vv = VersionVector::default();
    for (origin, seq) in &h.version_vector {
        vv.set(id(origin)?, *seq);
    }
    Ok(DumpHead {
        node_id: id(&h.node_id)?,
        schema_version: h.schema_version,
        vv,
        hlc: h.hlc,
        next_change: h.next_change,
    })
}

/// The directory a restore builds in, beside the target; removed (with the
/// parents it had to create) unless committed.
struct Scratch {
    path: PathBuf,
    /// The highest parent directory this restore created, if any.
    created_parent: Option<PathBuf>,
    done: bool,
}

impl Scratch {
    fn create(target: &Path) -> Result<Scratch, SnapshotError> {
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut created_parent = None;
        let mut p = parent.as_path();
        while !p.exists() {
            created_parent = Some(p.to_path_buf());
            match p.parent() {
                Some(up) if !up.as_os_str().is_empty() => p = up,
                _ => break,
            }
        }
        let name = target.file_name().ok_or_else(|| {
            SnapshotError::Invalid(format!("{} names no directory", target.display()))
        })?;
        let path = parent.join(format!(
            ".{}.restoring-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let mut scratch = Scratch {
            path,
            created_parent,
            done: false,
        };
        if let Err(e) = crate::files::private_dir(&scratch.path) {
            scratch.done = false;
            return Err(io_err(&scratch.path.clone())(e));
        }
        Ok(scratch)
    }

    /// Moves the built directory to `target` (an empty target directory is
    /// replaced) and syncs the parent.
    fn commit(mut self, target: &Path) -> Result<(), SnapshotError> {
        if target.exists() {
            std::fs::remove_dir(target).map_err(io_err(target))?;
        }
        std::fs::rename(&self.path, target).map_err(io_err(target))?;
        self.done = true;
        if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
            if let Ok(d) = std::fs::File::open(parent) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
        if let Some(p) = &self.created_parent {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}
