//! No silent loss at open: a data directory that held a database but lost it
//! or part of it is refused with an error that says what to do, never opened
//! as an empty or rolled-back node, and never with a panic. Fresh and
//! pre-existing directories still open.

use std::path::Path;

use hub::model::{Meta, NodeId};
use hub::store::{self, Condition, Op, Store, StoreConfig, StoreError};

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn cfg() -> StoreConfig {
    StoreConfig {
        node_id: Some(id("a")),
        ..StoreConfig::default()
    }
}

const KEYS: u64 = 2_000;

/// A directory with `KEYS` keys written over many groups, some values large
/// enough that sled keeps them as blob files, then closed cleanly.
fn populated() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), cfg()).unwrap();
    for g in 0..(KEYS / 100) {
        let ops = (0..100)
            .map(|i| {
                let n = g * 100 + i;
                let big = n % 500 == 0;
                Op::Local {
                    key: format!("k{n}"),
                    value: Some(if big {
                        vec![7u8; 300_000]
                    } else {
                        b"v".to_vec()
                    }),
                    meta: Meta::new(),
                    cond: Condition::Always,
                }
            })
            .collect();
        s.apply(ops, 1_700_000_000_000).unwrap();
        s.flush().unwrap();
    }
    drop(s);
    dir
}

/// Opening must fail with an error telling the operator to restore, and
/// must not panic.
fn assert_refused(dir: &Path, what: &str) -> StoreError {
    let opened = std::panic::catch_unwind(|| Store::open(dir, cfg()));
    let result = opened.unwrap_or_else(|_| panic!("{what}: open panicked"));
    match result {
        Ok(s) => panic!(
            "{what}: opened with {} entries instead of refusing",
            s.counts().live
        ),
        Err(e) => {
            let text = e.to_string();
            assert!(
                text.contains("restore") || text.contains("Restore"),
                "{what}: the error does not say what to do: {text}"
            );
            e
        }
    }
}

fn truncate(file: &Path, fraction: f64) {
    let len = std::fs::metadata(file).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.set_len((len as f64 * fraction) as u64).unwrap();
}

/// What a directory holds, to tell "intact" from "lost something".
fn contents(dir: &Path) -> (u64, [u8; 16], usize) {
    let s = Store::open(dir, cfg()).unwrap();
    let entries = s.scan("", None, 1_000_000).unwrap().len();
    (s.counts().live, s.merkle_root(), entries)
}

/// Damage sled may not notice because it lies in space sled no longer reads
/// (the file holds old segments): then nothing at all may be missing.
fn assert_refused_or_intact(dir: &Path, intact: (u64, [u8; 16], usize), what: &str) {
    let opened = std::panic::catch_unwind(|| Store::open(dir, cfg()))
        .unwrap_or_else(|_| panic!("{what}: open panicked"));
    match opened {
        Ok(s) => {
            let entries = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                s.scan("", None, 1_000_000).map(|e| e.len())
            }))
            .unwrap_or_else(|_| panic!("{what}: reading panicked"));
            let now = (s.counts().live, s.merkle_root(), entries.unwrap_or(0));
            assert_eq!(now, intact, "{what}: opened with data missing");
            assert_eq!(store::rebuild_merkle_root(&s).unwrap(), intact.1);
        }
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains("estore"), "{what}: {text}");
        }
    }
}

#[test]
fn database_truncated_to_half_is_refused_or_loses_nothing() {
    let dir = populated();
    let intact = contents(dir.path());
    assert_eq!(intact.2 as u64, KEYS);
    truncate(&dir.path().join("db"), 0.5);
    assert_refused_or_intact(dir.path(), intact, "db truncated to 50%");
}

#[test]
fn database_truncated_to_nothing_is_refused() {
    let dir = populated();
    truncate(&dir.path().join("db"), 0.0);
    let e = assert_refused(dir.path(), "db truncated to 0");
    assert!(
        matches!(
            e,
            StoreError::DatabaseLost { .. }
                | StoreError::Backend(_)
                | StoreError::RolledBack { .. }
        ),
        "{e}"
    );
}

#[test]
fn deleted_database_is_refused_not_started_empty() {
    let dir = populated();
    std::fs::remove_file(dir.path().join("db")).unwrap();
    let e = assert_refused(dir.path(), "db deleted");
    assert!(
        matches!(e, StoreError::DatabaseLost { .. } | StoreError::Backend(_)),
        "{e}"
    );
    // And it stays refused: the failed open did not turn it into a new node.
    assert_refused(dir.path(), "db deleted, second open");
}

#[test]
fn deleted_blob_directory_is_refused_without_a_panic() {
    let dir = populated();
    let blobs = dir.path().join("blobs");
    assert!(
        std::fs::read_dir(&blobs).unwrap().next().is_some(),
        "fixture has no blobs"
    );
    std::fs::remove_dir_all(&blobs).unwrap();
    assert_refused(dir.path(), "blobs/ deleted");
}

#[test]
fn flipped_byte_is_refused_or_loses_nothing() {
    let dir = populated();
    let intact = contents(dir.path());
    let db = dir.path().join("db");
    let mut bytes = std::fs::read(&db).unwrap();
    let at = bytes.len() * 3 / 4;
    bytes[at] ^= 0x5a;
    std::fs::write(&db, bytes).unwrap();
    assert_refused_or_intact(dir.path(), intact, "byte flipped at 75%");
}

#[test]
fn rolled_back_database_is_refused() {
    let dir = populated();
    // Keep a copy of the database as it is now, write more, then put the old
    // copy back: the database is intact but behind what was acknowledged.
    let old = tempfile::tempdir().unwrap();
    copy_database(dir.path(), old.path());
    {
        let s = Store::open(dir.path(), cfg()).unwrap();
        s.apply(
            vec![Op::Local {
                key: "later".into(),
                value: Some(b"x".to_vec()),
                meta: Meta::new(),
                cond: Condition::Always,
            }],
            1_700_000_000_000,
        )
        .unwrap();
        s.flush().unwrap();
    }
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let p = f.unwrap().path();
        if p.file_name().unwrap() != store::IDENTITY_FILE {
            if p.is_dir() {
                std::fs::remove_dir_all(&p).unwrap();
            } else {
                std::fs::remove_file(&p).unwrap();
            }
        }
    }
    copy_database(old.path(), dir.path());
    let e = assert_refused(dir.path(), "db rolled back");
    assert!(matches!(e, StoreError::RolledBack { .. }), "{e}");
}

#[test]
fn fresh_directory_opens_empty_and_records_its_identity() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), cfg()).unwrap();
    assert_eq!(s.counts().live, 0);
    drop(s);
    assert!(dir.path().join(store::IDENTITY_FILE).exists());
    Store::open(dir.path(), cfg()).unwrap();
}

#[test]
fn directory_without_identity_file_opens_and_gets_one() {
    // A directory written before the identity file existed.
    let dir = populated();
    std::fs::remove_file(dir.path().join(store::IDENTITY_FILE)).unwrap();
    let s = Store::open(dir.path(), cfg()).unwrap();
    assert_eq!(s.counts().live, KEYS);
    drop(s);
    assert!(dir.path().join(store::IDENTITY_FILE).exists());
    // From now on a loss is detected.
    std::fs::remove_file(dir.path().join("db")).unwrap();
    assert_refused(dir.path(), "db deleted after the identity was recorded");
}

#[test]
fn damaged_identity_file_is_refused() {
    let dir = populated();
    std::fs::write(dir.path().join(store::IDENTITY_FILE), b"{not json").unwrap();
    let e = assert_refused(dir.path(), "identity file damaged");
    assert!(matches!(e, StoreError::Identity { .. }), "{e}");
}

/// Copies sled's files (everything but the identity file) from one directory
/// to another.
fn copy_database(from: &Path, to: &Path) {
    for f in std::fs::read_dir(from).unwrap() {
        let p = f.unwrap().path();
        let name = p.file_name().unwrap().to_owned();
        if name == store::IDENTITY_FILE {
            continue;
        }
        if p.is_dir() {
            std::fs::create_dir_all(to.join(&name)).unwrap();
            copy_database(&p, &to.join(&name));
        } else {
            std::fs::copy(&p, to.join(&name)).unwrap();
        }
    }
}
