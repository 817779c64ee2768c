//! The store's contract, on real sled directories: atomic groups, durable
//! reopen, Merkle invariants, log retention, schema migration.

use std::collections::BTreeMap;
use std::path::Path;

use hub::merkle::{self, NodeRef};
use hub::model::{Delta, Entry, Hlc, Meta, NodeId, Version, VersionVector};
use hub::store::{self, Condition, LogRead, Op, Outcome, Store, StoreConfig, StoreError};

#[path = "support/ops.rs"]
mod ops;
use ops::{del, put};

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

/// Opens `dir` as node `node` with default settings.
fn try_open(dir: &Path, node: &str) -> Result<Store, StoreError> {
    Store::open(
        dir,
        StoreConfig {
            node_id: Some(id(node)),
            ..StoreConfig::default()
        },
    )
}

fn open(dir: &Path, node: &str) -> Store {
    try_open(dir, node).unwrap()
}

fn commit(s: &Store, ops: Vec<Op>) -> Vec<Outcome> {
    let out = s.apply(ops, 1_700_000_000_000).unwrap();
    s.flush().unwrap();
    out
}

fn value(s: &Store, key: &str) -> Option<String> {
    s.get(key)
        .unwrap()
        .and_then(|e| e.value)
        .map(|v| String::from_utf8(v).unwrap())
}

fn written(o: &Outcome) -> Delta {
    match o {
        Outcome::Written(d) => d.clone(),
        other => panic!("expected a write, got {other:?}"),
    }
}

#[test]
fn data_version_vector_clock_and_cursors_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (hlc, feed, root) = {
        let s = open(dir.path(), "a");
        commit(&s, vec![put("k1", "v1"), put("k2", "v2")]);
        commit(&s, vec![del("k1")]);
        let feed = s.changes(None, 100).unwrap();
        (s.hlc(), feed, s.merkle_root())
    };
    let s = open(dir.path(), "a");
    assert_eq!(value(&s, "k2").as_deref(), Some("v2"));
    assert!(s.get("k1").unwrap().unwrap().is_tombstone());
    assert_eq!(s.version_vector().get(&id("a")), 3);
    assert!(s.hlc() >= hlc, "clock went backwards across restart");
    assert_eq!(s.changes(None, 100).unwrap(), feed);
    let (cursor, _) = feed[0];
    assert_eq!(s.changes(Some(cursor), 100).unwrap(), feed[1..].to_vec());
    assert_eq!(s.merkle_root(), root);
    assert_eq!(store::rebuild_merkle_root(&s).unwrap(), root);
    // The next write continues the sequence and orders after everything before.
    let d = written(&commit(&s, vec![put("k3", "v3")])[0]);
    assert_eq!(d.seq, 4);
    assert!(d.entry.version.hlc > hlc);
    let c = s.counts();
    assert_eq!((c.live, c.tombstones), (2, 1));
}

#[test]
fn unflushed_group_is_all_or_nothing_and_flushed_group_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path(), "a");
        commit(&s, (0..100).map(|i| put(&format!("k{i}"), "x")).collect());
    }
    let s = open(dir.path(), "a");
    assert_eq!(s.scan("k", None, 1000).unwrap().len(), 100);
    assert_eq!(s.version_vector().get(&id("a")), 100);
}

#[test]
fn conditional_writes_check_the_current_state() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), "a");
    let create = |k: &str| Op::Local {
        key: k.into(),
        value: Some(b"1".to_vec()),
        meta: Meta::new(),
        cond: Condition::IfAbsent,
    };
    let out = commit(
        &s,
        vec![
            create("k"),
            create("k"),
            del("missing"),
            del("k"),
            create("k"),
        ],
    );
    assert!(matches!(out[0], Outcome::Written(_)));
    assert_eq!(out[1], Outcome::Conflict);
    assert_eq!(out[2], Outcome::NotFound);
    assert!(matches!(out[3], Outcome::Written(_)));
    assert!(
        matches!(out[4], Outcome::Written(_)),
        "a deleted key can be created again"
    );
    // Rejected writes consume no seq: the origin's stream stays gap-free.
    assert_eq!(s.version_vector().get(&id("a")), 3);
}

fn entry(hlc: u64, node: &str, v: Option<&str>) -> Entry {
    Entry {
        version: Version {
            hlc: Hlc(hlc),
            node: id(node),
        },
        value: v.map(Into::into),
        meta: Meta::new(),
    }
}

#[test]
fn deltas_must_arrive_in_seq_order_and_duplicates_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), "a");
    let d = |seq: u64, key: &str, hlc: u64| Delta {
        origin: id("b"),
        seq,
        key: key.into(),
        entry: entry(hlc, "b", Some("x")),
    };
    let out = commit(
        &s,
        vec![d(2, "k", 20), d(1, "k", 10), d(1, "k", 10), d(2, "k", 20)]
            .into_iter()
            .map(Op::Delta)
            .collect(),
    );
    assert_eq!(out[0], Outcome::Gap { expected: 1 });
    assert_eq!(out[1], Outcome::Applied { won: true });
    assert_eq!(out[2], Outcome::Duplicate);
    assert_eq!(out[3], Outcome::Applied { won: true });
    assert_eq!(s.version_vector().get(&id("b")), 2);
    // A delta that loses LWW is still logged, so the stream stays servable.
    let out = commit(&s, vec![Op::Delta(d(3, "k", 5))]);
    assert_eq!(out[0], Outcome::Applied { won: false });
    assert_eq!(s.get("k").unwrap().unwrap().version.hlc, Hlc(20));
    match s.deltas_after(&id("b"), 0, 10).unwrap() {
        LogRead::Deltas(ds) => {
            assert_eq!(ds.iter().map(|d| d.seq).collect::<Vec<_>>(), vec![1, 2, 3])
        }
        other => panic!("{other:?}"),
    }
    // Received clocks advance ours.
    assert!(s.hlc() >= Hlc(20));
}

/// A sharded receiver gets only its partitions' deltas of an origin: the
/// holes between them are skipped (`Op::Skip`), the vector moves over them
/// in the same batch, and the log holds only contiguous runs, so a pull
/// that reaches a hole reads "unavailable", never a wrong sequence.
#[test]
fn skipped_seqs_move_the_vector_durably_and_a_hole_in_the_log_reads_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let d = |seq: u64, key: &str| Delta {
        origin: id("b"),
        seq,
        key: key.into(),
        entry: entry(seq * 10, "b", Some("x")),
    };
    let skip = |from: u64, to: u64| Op::Skip {
        origin: id("b"),
        from,
        to,
    };
    {
        let s = open(dir.path(), "a");
        // A skip that starts beyond the vector is a gap and changes nothing.
        let out = commit(&s, vec![skip(2, 4)]);
        assert_eq!(out[0], Outcome::Gap { expected: 1 });
        assert_eq!(s.version_vector().get(&id("b")), 0);
        // Seqs 1, 2 ours; 3..=5 not; 6 ours; 7..=8 not.
        let out = commit(
            &s,
            vec![
                Op::Delta(d(1, "k1")),
                Op::Delta(d(2, "k2")),
                skip(3, 5),
                Op::Delta(d(6, "k6")),
                skip(7, 8),
            ],
        );
        assert_eq!(out[2], Outcome::Skipped);
        assert_eq!(out[3], Outcome::Applied { won: true });
        assert_eq!(s.version_vector().get(&id("b")), 8);
        // Again: every op is a duplicate now.
        let out = commit(&s, vec![skip(3, 5), Op::Delta(d(6, "k6"))]);
        assert_eq!(out, vec![Outcome::Duplicate, Outcome::Duplicate]);
    }
    // Reopened: the vector, the entries and the runs are what was durable.
    let s = open(dir.path(), "a");
    assert_eq!(s.version_vector().get(&id("b")), 8);
    assert_eq!(value(&s, "k6").as_deref(), Some("x"));
    let seqs = |after| match s.deltas_after(&id("b"), after, 10).unwrap() {
        LogRead::Deltas(ds) => Some(ds.iter().map(|d| d.seq).collect::<Vec<_>>()),
        LogRead::Unavailable { .. } => None,
    };
    assert_eq!(seqs(0), Some(vec![1, 2]), "a read stops at the hole");
    assert_eq!(seqs(2), None, "the hole is unavailable");
    assert_eq!(seqs(5), Some(vec![6]));
    assert_eq!(seqs(6), None);
    assert_eq!(seqs(8), Some(vec![]));
}

#[test]
fn log_retention_trims_old_deltas_without_touching_the_version_vector() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        node_id: Some(id("a")),
        log_retention: 10,
        ..StoreConfig::default()
    };
    let s = Store::open(dir.path(), cfg.clone()).unwrap();
    commit(&s, (0..25).map(|i| put(&format!("k{i}"), "x")).collect());
    for i in 25..40 {
        commit(&s, vec![put(&format!("k{i}"), "x")]);
    }
    assert_eq!(s.version_vector().get(&id("a")), 40);
    let stats = s.log_stats()[&id("a")];
    assert_eq!((stats.first, stats.last, stats.len), (31, 40, 10));
    assert_eq!(
        s.deltas_after(&id("a"), 5, 100).unwrap(),
        LogRead::Unavailable { first_retained: 31 }
    );
    match s.deltas_after(&id("a"), 30, 100).unwrap() {
        LogRead::Deltas(ds) => assert_eq!(ds.len(), 10),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.deltas_after(&id("a"), 40, 100).unwrap(),
        LogRead::Deltas(vec![])
    );
    // The feed is trimmed with the log; every entry is still there.
    assert_eq!(s.changes(None, 100).unwrap().len(), 10);
    assert_eq!(s.scan("", None, 100).unwrap().len(), 40);
    drop(s);
    let s = Store::open(dir.path(), cfg).unwrap();
    assert_eq!(s.log_stats()[&id("a")].len, 10);
}

#[test]
fn merkle_root_of_real_store_equals_rebuilt_and_is_order_independent() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let s1 = open(d1.path(), "a");
    let s2 = open(d2.path(), "b");
    let entries: Vec<(String, Entry)> = (0..500u64)
        .map(|i| {
            (
                format!("key{}", i % 200),
                entry(
                    1000 + i,
                    if i % 2 == 0 { "x" } else { "y" },
                    if i % 7 == 0 { None } else { Some("v") },
                ),
            )
        })
        .collect();
    for chunk in entries.chunks(37) {
        commit(
            &s1,
            chunk
                .iter()
                .map(|(k, e)| Op::Entry {
                    key: k.clone(),
                    entry: e.clone(),
                })
                .collect(),
        );
        let _ = s1.merkle_root(); // reads interleaved with writes
    }
    for (k, e) in entries.iter().rev() {
        s2.apply(
            vec![Op::Entry {
                key: k.clone(),
                entry: e.clone(),
            }],
            0,
        )
        .unwrap();
    }
    s2.flush().unwrap();
    assert_eq!(s1.merkle_root(), s2.merkle_root());
    assert_eq!(store::rebuild_merkle_root(&s1).unwrap(), s1.merkle_root());
    assert_eq!(
        s1.scan("", None, 1000).unwrap(),
        s2.scan("", None, 1000).unwrap()
    );
    // One differing key shows up along exactly one root-to-leaf path.
    commit(
        &s2,
        vec![Op::Entry {
            key: "key5".into(),
            entry: entry(99_999, "y", Some("new")),
        }],
    );
    let bucket = merkle::bucket_of("key5");
    let mut node = NodeRef::ROOT;
    while !node.is_leaf() {
        let a = s1.merkle_children(node).unwrap();
        let b = s2.merkle_children(node).unwrap();
        let diff: Vec<usize> = (0..a.len()).filter(|i| a[*i] != b[*i]).collect();
        assert_eq!(diff.len(), 1);
        node = node.children().unwrap().nth(diff[0]).unwrap();
    }
    assert_eq!(node.index, bucket as u32);
    let keys: Vec<String> = s2
        .bucket_versions(bucket)
        .unwrap()
        .into_iter()
        .map(|(k, _, _)| k)
        .collect();
    assert!(keys.contains(&"key5".to_string()));
}

#[test]
fn advancing_the_version_vector_is_persistent_and_never_lowers_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path(), "a");
        let mut vv = VersionVector::default();
        vv.set(id("b"), 50);
        commit(&s, vec![Op::AdvanceVv(vv)]);
        let mut lower = VersionVector::default();
        lower.set(id("b"), 7);
        commit(&s, vec![Op::AdvanceVv(lower)]);
    }
    let s = open(dir.path(), "a");
    assert_eq!(s.version_vector().get(&id("b")), 50);
    // Delta 51 is the next one; the log of b has no record of 1..=50.
    assert_eq!(
        s.deltas_after(&id("b"), 10, 10).unwrap(),
        LogRead::Unavailable { first_retained: 0 }
    );
}

#[test]
fn directory_of_another_node_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path(), "a"));
    let err = try_open(dir.path(), "b").err().unwrap();
    assert!(matches!(err, StoreError::WrongNode { .. }), "{err}");
}

#[test]
fn second_open_of_a_locked_directory_says_it_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let _s = open(dir.path(), "a");
    let err = Store::open_existing(dir.path(), 1 << 20).err().unwrap();
    assert!(err.to_string().contains("locked"), "{err}");
}

#[test]
fn missing_directory_is_not_created_by_inspection() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    assert!(matches!(
        Store::open_existing(&missing, 1 << 20),
        Err(StoreError::Missing(_))
    ));
    assert!(!missing.exists());
}

/// Writes a schema-1 directory by hand, as the first release laid it out:
/// entries, log, feed, vector and node id, but no Merkle leaves, bucket index,
/// counts or schema version.
fn write_schema1_fixture(dir: &Path, entries: &BTreeMap<String, Entry>) {
    let db = sled::open(dir).unwrap();
    db.insert(b"mnode_id", "old").unwrap();
    for (k, e) in entries {
        let mut key = b"e".to_vec();
        key.extend_from_slice(k.as_bytes());
        db.insert(
            key,
            bincode::serde::encode_to_vec(e, bincode::config::standard()).unwrap(),
        )
        .unwrap();
    }
    db.flush().unwrap();
}

#[test]
fn schema_1_directory_is_migrated_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut entries = BTreeMap::new();
    for i in 0..300u64 {
        entries.insert(
            format!("k{i}"),
            entry(i + 1, "old", if i % 10 == 0 { None } else { Some("v") }),
        );
    }
    write_schema1_fixture(dir.path(), &entries);
    let s = open(dir.path(), "old");
    let summary = s.summary().unwrap();
    assert_eq!(summary.schema_version, store::SCHEMA_VERSION);
    assert_eq!((summary.entries, summary.tombstones), (270, 30));
    assert_eq!(store::rebuild_merkle_root(&s).unwrap(), s.merkle_root());
    // The same entries in a fresh store give the same root.
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = open(fresh_dir.path(), "new");
    commit(
        &fresh,
        entries
            .iter()
            .map(|(k, e)| Op::Entry {
                key: k.clone(),
                entry: e.clone(),
            })
            .collect(),
    );
    assert_eq!(fresh.merkle_root(), s.merkle_root());
    let b = merkle::bucket_of("k7");
    assert!(s
        .bucket_versions(b)
        .unwrap()
        .iter()
        .any(|(k, _, _)| k == "k7"));
    drop(s);
    // Reopening does not migrate again and keeps everything.
    let s = open(dir.path(), "old");
    assert_eq!(s.summary().unwrap().entries, 270);
}

#[test]
fn directory_from_a_newer_binary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        db.insert(b"mschema_version", &99u32.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let err = try_open(dir.path(), "a").err().unwrap();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 99, .. }),
        "{err}"
    );
}

#[test]
fn merkle_leaves_are_recovered_after_a_crash_between_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let root = {
        let s = open(dir.path(), "a");
        // More than one checkpoint interval, then a tail after the last one.
        for g in 0..45u64 {
            commit(
                &s,
                (0..500)
                    .map(|i| put(&format!("k{}", (g * 500 + i) % 15_000), &g.to_string()))
                    .collect(),
            );
        }
        commit(&s, vec![del("k3"), del("k4")]);
        let root = s.merkle_root();
        s.close_as_if_crashed();
        root
    };
    let s = open(dir.path(), "a");
    assert_eq!(s.merkle_root(), root);
    assert_eq!(store::rebuild_merkle_root(&s).unwrap(), root);
    let c = s.counts();
    assert_eq!((c.live, c.tombstones), (14_998, 2));
}

#[test]
fn change_feed_is_trimmed_to_retention_and_reads_stay_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        node_id: Some(id("a")),
        log_retention: 50,
        ..StoreConfig::default()
    };
    let s = Store::open(dir.path(), cfg).unwrap();
    for i in 0..300 {
        commit(&s, vec![put(&format!("k{}", i % 40), &i.to_string())]);
    }
    let feed = s.changes(None, 10_000).unwrap();
    assert!(
        feed.len() >= 50 && feed.len() <= 60,
        "feed holds {}",
        feed.len()
    );
    let (last_idx, last) = feed.last().unwrap();
    assert_eq!(last.origin.as_ref().unwrap().1, 300);
    assert_eq!(*last_idx, 300);
    // Paging through the feed gives the same changes as one read.
    let mut paged = Vec::new();
    let mut cursor = None;
    loop {
        let page = s.changes(cursor, 7).unwrap();
        let Some((idx, _)) = page.last() else { break };
        cursor = Some(*idx);
        paged.extend(page);
    }
    assert_eq!(paged, feed);
}

/// A schema-2 directory: the layout of today without commit numbers and
/// without the identity file beside the database.
fn make_schema2_fixture(dir: &Path) {
    {
        let s = open(dir, "old");
        commit(&s, (0..50).map(|i| put(&format!("k{i}"), "v")).collect());
        commit(&s, vec![del("k3")]);
    }
    let db = sled::open(dir).unwrap();
    db.remove(b"mcommit").unwrap();
    db.insert(b"mschema_version", &2u32.to_be_bytes()).unwrap();
    db.flush().unwrap();
    drop(db);
    std::fs::remove_file(dir.join(store::IDENTITY_FILE)).unwrap();
}

#[test]
fn schema_2_directory_is_migrated_and_its_identity_recorded() {
    let dir = tempfile::tempdir().unwrap();
    make_schema2_fixture(dir.path());
    let s = open(dir.path(), "old");
    let summary = s.summary().unwrap();
    assert_eq!(summary.schema_version, store::SCHEMA_VERSION);
    assert_eq!((summary.entries, summary.tombstones), (49, 1));
    assert_eq!(store::rebuild_merkle_root(&s).unwrap(), s.merkle_root());
    let d = written(&commit(&s, vec![put("k50", "v")])[0]);
    assert_eq!(d.seq, 52, "the sequence continues");
    drop(s);
    assert!(dir.path().join(store::IDENTITY_FILE).exists());
    // From now on a lost database is detected.
    std::fs::remove_file(dir.path().join("db")).unwrap();
    assert!(try_open(dir.path(), "old").is_err());
}

/// Sharding (`hub::placement`): a node that stores only some partitions
/// logs another partition's delta as a stub (its vector advances, nothing
/// is stored), and a handed-off partition is dropped with its Merkle items,
/// surviving a crash right after with memory equal to disk.
#[test]
fn foreign_partition_deltas_are_stubs_and_a_dropped_partition_stays_dropped_after_a_crash() {
    use hub::placement::{partition_of, Owned};
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<String> = (0..2000).map(|i| format!("key-{i}")).collect();
    let gone = partition_of(&keys[0]);
    let in_gone = keys.iter().filter(|k| partition_of(k) == gone).count();
    assert!(in_gone > 0);
    let root = {
        let s = open(dir.path(), "a");
        commit(&s, keys.iter().map(|k| put(k, "v")).collect());
        commit(&s, vec![del(&keys[0])]);
        let mut owned = Owned::ALL;
        owned = owned.minus(&{
            let mut o = Owned::NONE;
            o.insert(gone);
            o
        });
        s.owned().store(owned);

        // A peer's delta of the partition we no longer own: logged as a stub.
        let peer = id("b");
        let delta = Delta {
            origin: peer.clone(),
            seq: 1,
            key: keys[0].clone(),
            entry: Entry {
                version: Version {
                    hlc: Hlc::new(1_700_000_000_000, 9),
                    node: peer.clone(),
                },
                value: Some(b"new".to_vec()),
                meta: Meta::new(),
            },
        };
        assert_eq!(
            commit(&s, vec![Op::Delta(delta)]),
            vec![Outcome::Applied { won: false }]
        );
        assert_eq!(s.version_vector().get(&peer), 1);
        assert!(
            s.get(&keys[0]).unwrap().unwrap().is_tombstone(),
            "stub stored"
        );

        let out = commit(&s, vec![Op::DropPartition(gone)]);
        assert_eq!(
            out,
            vec![Outcome::Dropped {
                keys: in_gone as u64
            }]
        );
        for k in &keys {
            assert_eq!(s.get(k).unwrap().is_some(), partition_of(k) != gone, "{k}");
        }
        assert_eq!(s.counts().live, (keys.len() - in_gone) as u64);
        assert_eq!(store::rebuild_merkle_root(&s).unwrap(), s.merkle_root());
        let root = s.merkle_root();
        s.close_as_if_crashed();
        root
    };
    let s = open(dir.path(), "a");
    assert_eq!(s.merkle_root(), root);
    assert_eq!(store::rebuild_merkle_root(&s).unwrap(), root);
    assert_eq!(s.counts().live, (keys.len() - in_gone) as u64);
    assert!(s.get(&keys[0]).unwrap().is_none());
}
