//! Memory equals disk: a storage failure at any step of a commit group leaves
//! nothing of the group in what the store serves (reads, Merkle root, version
//! vector, counts, clock, change feed) unless the group is on disk, and the
//! store takes writes again once the cause is gone, without a restart.
//!
//! Failures are injected through the backend's fault seam on real sled
//! directories; one test fills a real tmpfs (when the test may mount one).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use hub::model::{Delta, Entry, Hlc, Meta, NodeId, Version};
use hub::store::commit::Committer;
use hub::store::{self, Counts, Fault, Faults, LogStats, Op, Store, StoreConfig};

#[path = "support/ops.rs"]
mod ops;
use ops::{del, put};

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

const WALL: u64 = 1_700_000_000_000;

fn config(faults: &Arc<Faults>) -> StoreConfig {
    StoreConfig {
        node_id: Some(id("a")),
        // Small, so that the groups below also trim the log and the feed.
        log_retention: 6,
        faults: Some(faults.clone()),
        ..StoreConfig::default()
    }
}

fn from_b(seq: u64, key: &str) -> Op {
    Op::Delta(Delta {
        origin: id("b"),
        seq,
        key: key.into(),
        entry: Entry {
            version: Version {
                hlc: Hlc::new(WALL + 10 * seq, 0),
                node: id("b"),
            },
            value: Some(format!("b{seq}").into()),
            meta: Meta::new(),
        },
    })
}

fn synced(key: &str, hlc: u64) -> Op {
    Op::Entry {
        key: key.into(),
        entry: Entry {
            version: Version {
                hlc: Hlc::new(hlc, 0),
                node: id("c"),
            },
            value: Some("c".into()),
            meta: Meta::new(),
        },
    }
}

/// Everything a store serves, for comparison.
#[derive(Debug, PartialEq)]
struct Served {
    entries: Vec<(String, Entry)>,
    root: String,
    vv: BTreeMap<String, u64>,
    counts: Counts,
    log: BTreeMap<NodeId, LogStats>,
    feed: Vec<(u64, store::Change)>,
    next_change: u64,
    hlc: Hlc,
}

fn served(s: &Store) -> Served {
    let summary = s.summary().unwrap();
    Served {
        entries: s.scan("", None, 100_000).unwrap(),
        root: summary.merkle_root,
        vv: summary.version_vector,
        counts: s.counts(),
        log: s.log_stats(),
        feed: s.changes(None, 100_000).unwrap(),
        next_change: summary.changes_next,
        hlc: s.hlc(),
    }
}

/// The cheap part of [`served`]: everything but the entries and the feed.
fn summary(s: &Store) -> (String, BTreeMap<String, u64>, Counts, u64, Hlc) {
    let summary = s.summary().unwrap();
    (
        summary.merkle_root,
        summary.version_vector,
        s.counts(),
        summary.changes_next,
        s.hlc(),
    )
}

fn commit(s: &Store, ops: Vec<Op>) {
    s.apply(ops, WALL).unwrap();
    s.flush().unwrap();
}

/// A few groups of history: local writes and deletes, a peer's deltas and
/// anti-entropy entries, enough to trim the log and the feed.
fn history(s: &Store) {
    for g in 0..6u64 {
        commit(
            s,
            vec![
                put(&format!("k{g}"), "v"),
                put(&format!("k{}", g + 1), "w"),
                from_b(2 * g + 1, &format!("k{g}")),
                from_b(2 * g + 2, &format!("bk{g}")),
                synced(&format!("ck{g}"), WALL + g),
            ],
        );
    }
    commit(s, vec![del("k2")]);
}

/// The group that meets the fault: new keys, overwrites, a delete, a peer's
/// next delta and an anti-entropy entry.
fn group() -> Vec<Op> {
    vec![
        put("new1", "x"),
        put("k3", "changed"),
        del("k4"),
        from_b(13, "bnew"),
        synced("cnew", WALL + 99),
        put("new2", "y"),
    ]
}

/// Opens the directory again (the old store closed without a checkpoint, as
/// a crash would leave it) and returns what the reopened store serves.
fn reopened(s: Store, dir: &Path) -> Served {
    s.close_as_if_crashed();
    let faults = Faults::new();
    let again = Store::open(dir, config(&faults)).unwrap();
    assert_eq!(
        store::rebuild_merkle_root(&again).unwrap(),
        again.merkle_root(),
        "reopened Merkle tree differs from its entries"
    );
    served(&again)
}

fn faults_at_every_step() -> Vec<Fault> {
    let mut all = vec![
        // Reads while the group is built: the first, one in the middle, the
        // log-trim and feed-trim reads near the end.
        Fault::Read { skip: 0 },
        Fault::Read { skip: 3 },
        Fault::Read { skip: 6 },
        Fault::Read { skip: 8 },
        Fault::FlushBefore,
        Fault::FlushAfter,
    ];
    // The batch failing after each of its record writes (the group's batch
    // has fewer than 40 records).
    all.extend((0..40).map(|written| Fault::Apply { written }));
    all
}

#[test]
fn a_fault_at_any_step_of_a_group_leaves_memory_equal_to_disk() {
    for fault in faults_at_every_step() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::new();
        let s = Store::open(dir.path(), config(&faults)).unwrap();
        history(&s);
        let before = served(&s);

        faults.arm(fault);
        let took_effect = match s.apply_group(group(), WALL) {
            Ok((_, commit)) => {
                let _ = s.flush();
                s.is_durable(commit) == Some(true)
            }
            Err(_) => false,
        };
        faults.clear();
        let after = served(&s);
        if took_effect {
            assert!(
                after.entries.iter().any(|(k, _)| k == "new2"),
                "{fault:?}: durable group not served"
            );
        } else {
            assert_eq!(after, before, "{fault:?}: a failed group left a trace");
        }
        assert_eq!(
            store::rebuild_merkle_root(&s).unwrap(),
            s.merkle_root(),
            "{fault:?}: served Merkle tree differs from served entries"
        );

        // The cause is gone: the same store takes writes again.
        commit(
            &s,
            vec![put("after", "1"), from_b(before.vv["b"] + 1, "bafter")],
        );
        assert!(s.health().is_ok(), "{fault:?}: {:?}", s.health());
        let now = served(&s);
        assert!(now.entries.iter().any(|(k, _)| k == "after"));
        assert_eq!(
            now,
            reopened(s, dir.path()),
            "{fault:?}: memory differs from disk"
        );
    }
}

#[test]
fn unflushed_groups_are_lost_together_and_sequence_numbers_are_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let s = Store::open(dir.path(), config(&faults)).unwrap();
    history(&s);
    let before = served(&s);
    let (_, c1) = s.apply_group(vec![put("p1", "1")], WALL).unwrap();
    let (_, c2) = s.apply_group(vec![put("p2", "2")], WALL).unwrap();
    assert!(c2 > c1);
    faults.arm(Fault::FlushBefore);
    assert!(s.flush().is_err());
    assert_eq!(s.is_durable(c1), Some(false));
    assert_eq!(s.is_durable(c2), Some(false));
    assert_eq!(served(&s), before);
    // New groups get new numbers: an answer for a lost group can never be
    // mistaken for a later durable one.
    let (_, c3) = s.apply_group(vec![put("p3", "3")], WALL).unwrap();
    s.flush().unwrap();
    assert!(c3 > c2);
    assert_eq!(s.is_durable(c3), Some(true));
    assert_eq!(s.is_durable(c2), Some(false));
    // The lost local writes' seqs are given out again only because they
    // never existed anywhere: nothing served or logged ever carried them.
    assert!(s.get("p1").unwrap().is_none() && s.get("p2").unwrap().is_none());
    let now = served(&s);
    assert_eq!(now, reopened(s, dir.path()));
}

#[test]
fn store_that_cannot_reopen_refuses_writes_says_why_and_recovers_later() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let s = Store::open(dir.path(), config(&faults)).unwrap();
    history(&s);
    let before = served(&s);
    faults.arm(Fault::Open);
    faults.arm(Fault::FlushBefore);
    let (_, c) = s.apply_group(vec![put("lost", "1")], WALL).unwrap();
    assert!(s.flush().is_err());
    assert_eq!(
        s.is_durable(c),
        None,
        "outcome cannot be known while closed"
    );
    let why = s.health().unwrap_err();
    assert!(why.contains("closed"), "{why}");
    assert!(s.get("k1").is_err(), "a closed database serves nothing");
    assert!(s.apply(vec![put("x", "1")], WALL).is_err());
    // Still the last durable state in memory.
    assert_eq!(s.version_vector().get(&id("a")), before.vv["a"]);

    faults.clear();
    commit(&s, vec![put("back", "1")]);
    assert!(s.health().is_ok());
    assert!(s.get("lost").unwrap().is_none());
    let now = served(&s);
    assert_eq!(now, reopened(s, dir.path()));
}

#[test]
fn committer_answers_each_group_by_whether_it_is_on_disk() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let s = Arc::new(Store::open(dir.path(), config(&faults)).unwrap());
    let committer = Committer::start(s.clone(), None).unwrap();
    rt.block_on(async {
        faults.arm(Fault::FlushBefore);
        let err = committer.commit(vec![put("lost", "1")]).await.unwrap_err();
        assert!(err.to_string().contains("flush"), "{err}");
        assert!(s.get("lost").unwrap().is_none());
        assert!(s.health().is_err(), "health must show the failed write");

        faults.arm(Fault::FlushAfter);
        committer
            .commit(vec![put("kept", "1")])
            .await
            .expect("a group that reached the disk is answered as written");
        assert!(s.get("kept").unwrap().is_some());

        faults.arm(Fault::Apply { written: 2 });
        assert!(committer.commit(vec![put("half", "1")]).await.is_err());
        assert!(s.get("half").unwrap().is_none());

        committer.commit(vec![put("fine", "1")]).await.unwrap();
        assert!(s.health().is_ok());
    });
}

/// A real full disk: a small tmpfs (needs root; skipped with a note if the
/// mount is refused). Filling it fails a write, which must leave no trace;
/// freeing space lets the same store write again.
#[test]
fn full_disk_fails_the_write_cleanly_and_freeing_space_resumes_writes() {
    let mnt = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(mnt.path())
        .stderr(std::process::Stdio::null())
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    }
    let _unmount = Unmount(mnt.path().to_path_buf());
    let dir = mnt.path().join("data");
    let ballast = mnt.path().join("ballast");
    let cfg = StoreConfig {
        node_id: Some(id("a")),
        ..StoreConfig::default()
    };
    let s = Store::open(&dir, cfg.clone()).unwrap();
    // Leave a few MB for the store.
    std::fs::write(&ballast, vec![0u8; 16 << 20]).unwrap();
    let value = "v".repeat(1_000);
    let mut written = 0u64;
    let mut failed_key = None;
    let mut before = None;
    for i in 0..10_000u64 {
        let key = format!("k{i}");
        let snapshot = summary(&s);
        let ok = match s.apply_group(vec![put(&key, &value)], WALL) {
            Ok((_, c)) => {
                let _ = s.flush();
                s.is_durable(c) == Some(true)
            }
            Err(_) => false,
        };
        if !ok {
            failed_key = Some(key);
            before = Some(snapshot);
            break;
        }
        written += 1;
    }
    let failed_key = failed_key.expect("the tmpfs never filled up");
    assert!(written > 0);
    assert!(s.health().is_err());
    assert_eq!(Some(summary(&s)), before, "the failed write left a trace");
    assert!(
        s.get(&failed_key).map(|e| e.is_none()).unwrap_or(true),
        "the failed write is readable"
    );

    std::fs::remove_file(&ballast).unwrap();
    // A later write reopens the database and succeeds: no restart. Unless
    // sled hung closing the failed handle: then the store must say so.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match s
            .apply(vec![put("resumed", "1")], WALL)
            .and_then(|_| s.flush())
        {
            Ok(()) => break,
            Err(e) if e.to_string().contains("restart the node") => {
                let why = s.health().unwrap_err();
                assert!(why.contains("restart the node"), "{why}");
                eprintln!("sled hung closing the failed database; the store says: {why}");
                return;
            }
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("still failing: {e}");
            }
            Err(e) => panic!("writes did not resume after space was freed: {e}"),
        }
    }
    assert!(s.health().is_ok(), "{:?}", s.health());
    assert!(s.get(&failed_key).unwrap().is_none());
    assert_eq!(s.scan("k", None, 100_000).unwrap().len() as u64, written);
    let now = served(&s);
    drop(s);
    let again = Store::open(&dir, cfg).unwrap();
    assert_eq!(served(&again), now);
}

struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}
