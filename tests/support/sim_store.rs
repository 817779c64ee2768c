//! Helpers shared by the seeded simulations and restore tests: replication
//! settings scaled to simulated time, temp directories on tmpfs, reopening a
//! just-closed store, the deltas a commit made fresh, and copying a closed
//! data directory (an operator's backup).
//! Included with `#[path = "support/sim_store.rs"] mod sim_store;`.

#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use hub::model::Delta;
use hub::replication::ReplicationConfig;
use hub::store::{Op, Outcome, Store, StoreConfig};

/// Replication timers short enough for simulated seconds.
pub fn sim_config() -> ReplicationConfig {
    ReplicationConfig {
        pull_interval_ms: 200,
        pull_timeout_ms: 1_000,
        ae_interval_ms: 1_000,
        ae_after_connect_ms: 200,
        ae_retry_ms: 150,
        ae_timeout_ms: 2_000,
        // Small caps exercise chunking, `more` and multi-part answers.
        max_items_per_msg: 8,
        ..ReplicationConfig::default()
    }
}

/// A temp dir, on tmpfs when there is one: the per-commit flush is cheap
/// there and the semantics are the same.
pub fn temp_dir() -> tempfile::TempDir {
    if Path::new("/dev/shm").is_dir() {
        if let Ok(d) = tempfile::Builder::new()
            .prefix("hub-sim")
            .tempdir_in("/dev/shm")
        {
            return d;
        }
    }
    tempfile::tempdir().unwrap()
}

/// Opens a store, polling while sled still releases the lock of the store
/// just dropped (its background threads let go asynchronously).
pub fn reopen(dir: &Path, config: &StoreConfig) -> Store {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Store::open(dir, config.clone()) {
            Ok(s) => return s,
            Err(hub::store::StoreError::Backend(hub::store::BackendError::Locked { .. }))
                if Instant::now() < deadline =>
            {
                std::thread::yield_now();
            }
            Err(e) => panic!("cannot reopen {}: {e}", dir.display()),
        }
    }
}

/// The deltas a commit logged: what the committer hands to replication.
pub fn fresh_deltas(ops: &[Op], outcomes: &[Outcome]) -> Vec<Delta> {
    ops.iter()
        .zip(outcomes)
        .filter_map(|(op, o)| match (op, o) {
            (_, Outcome::Written(d)) => Some(d.clone()),
            (Op::Delta(d), Outcome::Applied { .. }) => Some(d.clone()),
            _ => None,
        })
        .collect()
}

/// Copies a closed data directory, files and subdirectories.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
