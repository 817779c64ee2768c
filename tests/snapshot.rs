//! Snapshots with real nodes, real sled and the real binary: a save taken
//! under a write load keeps every write acknowledged before it; a node
//! restored under its own id in a running cluster recovers the writes it
//! made after the snapshot before it writes again (no sequence number
//! reused) and converges; a node restored under a new id joins moving far
//! fewer bytes than a fresh node; a corrupt or truncated file is refused
//! with nothing written; the endpoint is for admin keys only.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::{Method, StatusCode};

use common::{call, eventually, eventually_async, http_client, Certs, Proc, Spec, TestNode};
use hub::auth::Role;
use hub::snapshot::{restore, save, Progress};

const WITHIN: Duration = Duration::from_secs(30);

use common::{run_hub as hub, text};

fn serve_args(data: &Path) -> Vec<String> {
    [
        "--node-id",
        "solo",
        "--no-sensors",
        "--http",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

/// Saves `node`'s store in-process into `file`.
async fn save_node(node: &TestNode, file: &Path) -> save::SaveStats {
    let store = node.node.store().clone();
    let file = file.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut partial = save::PartialFile::create(&file).unwrap();
        let (_, stats) = save::write(&store, partial.out(), 1.0, &Progress::default()).unwrap();
        partial.commit().unwrap();
        stats
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn save_during_a_write_load_keeps_every_write_acknowledged_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Proc::start(&serve_args(&tmp.path().join("d")));
    let base = node.base.clone();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (acked, stop, base) = (acked.clone(), stop.clone(), base.clone());
        writers.push(tokio::spawn(async move {
            let http = http_client();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let key = format!("load/{w}/{i}");
                let (status, _) = call(&http, Method::PUT, &format!("{base}/kv/{key}"), "v")
                    .await
                    .unwrap();
                assert_eq!(status, StatusCode::OK);
                acked.lock().unwrap().push(key);
            }
        }));
    }
    eventually("a thousand acknowledged writes", WITHIN, || {
        acked.lock().unwrap().len() >= 1000
    })
    .await;
    let before: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
    let file = tmp.path().join("live.hubsnap");
    let save = {
        let (base, file) = (base.clone(), file.clone());
        tokio::task::spawn_blocking(move || {
            hub(
                &[
                    "snapshot",
                    "save",
                    "--node",
                    &base,
                    "--pace",
                    "2",
                    file.to_str().unwrap(),
                ],
                &[("HUB_PROGRESS_INTERVAL", "100ms")],
            )
        })
    };
    let out = save.await.unwrap();
    let during = acked.lock().unwrap().len() - before.len();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        during > 0,
        "no write was acknowledged while the snapshot was taken"
    );
    assert!(
        text(&out.stderr).contains("saving:"),
        "no progress line: {}",
        text(&out.stderr)
    );
    node.stop();

    let restored = tmp.path().join("restored");
    let out = hub(
        &[
            "snapshot",
            "restore",
            file.to_str().unwrap(),
            "--data-dir",
            restored.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let node = Proc::start(&serve_args(&restored));
    let http = http_client();
    for key in &before {
        let (status, _) = call(&http, Method::GET, &format!("{}/kv/{key}", node.base), "")
            .await
            .unwrap();
        assert_eq!(
            status,
            StatusCode::OK,
            "{key} was acknowledged before the save and is gone"
        );
    }
    // A single node restored under its own id writes on at once.
    let (status, _) = call(&http, Method::PUT, &format!("{}/kv/after", node.base), "x")
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_restored_under_its_own_id_recovers_its_later_writes_and_converges() {
    let certs = Certs::new(&["a", "b", "c"]);
    let (a, b, c) = common::three_nodes(&certs, WITHIN).await;
    c.put_many((0..500).map(|i| (format!("c/{i}"), "old".to_string())))
        .await;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("c.hubsnap");
    save_node(&c, &file).await;
    // Acknowledged after the snapshot: these live on a and b only once c's disk is lost.
    for i in 0..50 {
        c.put(&format!("c/late/{i}"), "late").await;
    }
    let c_seq = c.node.store().version_vector().get(&c.id);
    eventually("a and b hold all of c's writes", WITHIN, || {
        a.node.store().version_vector().get(&c.id) == c_seq
            && b.node.store().version_vector().get(&c.id) == c_seq
    })
    .await;
    let (config, dir) = c.stop().await;
    std::fs::remove_dir_all(&config.data_dir).unwrap();
    let stats = restore::restore_file(&file, &config.data_dir, None, &Progress::default()).unwrap();
    assert!(stats.same_node && stats.fenced_until_peer_check);
    let c = hub::node::Node::start(config).await.unwrap();
    // Before c has its own later writes back, it takes no local write; once
    // it has, a write gets the next sequence number, so a and b take it.
    let http = http_client();
    eventually_async("c accepts a write after recovering", WITHIN, || async {
        let (status, _) = call(
            &http,
            Method::PUT,
            &format!("{}/kv/c/new", c.base_url()),
            "new",
        )
        .await
        .unwrap();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            return false;
        }
        assert_eq!(status, StatusCode::OK);
        true
    })
    .await;
    assert!(c.store().version_vector().get(&c.config().node_id) > c_seq);
    eventually("all three converge with equal roots", WITHIN, || {
        let root = c.store().merkle_root();
        a.root() == root && b.root() == root
    })
    .await;
    for n in [&a, &b] {
        assert_eq!(
            n.value("c/new").as_deref(),
            Some("new"),
            "the new write was not taken: a reused seq"
        );
        assert_eq!(n.value("c/late/49").as_deref(), Some("late"));
    }
    assert_eq!(
        c.store().get("c/late/49").unwrap().and_then(|e| e.value),
        Some(b"late".to_vec())
    );
    c.shutdown().await;
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_restored_under_its_own_id_waits_for_a_peer_however_long_it_takes() {
    let certs = Certs::new(&["a", "c"]);
    let mut spec_a = Spec::new("a", certs.path());
    spec_a.listen = format!("127.0.0.1:{}", common::free_udp_port())
        .parse()
        .unwrap();
    let a = TestNode::start(spec_a).await;
    let mut spec_c = Spec::new("c", certs.path()).join(&[a.quic()]);
    spec_c.listen = format!("127.0.0.1:{}", common::free_udp_port())
        .parse()
        .unwrap();
    let c = TestNode::start(spec_c).await;
    common::wait_full_mesh(&[&a, &c], WITHIN).await;
    c.put("before", "1").await;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("c.hubsnap");
    save_node(&c, &file).await;
    c.put("after", "2").await;
    let c_seq = c.node.store().version_vector().get(&c.id);
    eventually("a holds c's later write", WITHIN, || {
        a.node.store().version_vector().get(&c.id) == c_seq
    })
    .await;
    let (config_c, _dir_c) = c.stop().await;
    let (config_a, _dir_a) = a.stop().await;
    std::fs::remove_dir_all(&config_c.data_dir).unwrap();
    restore::restore_file(&file, &config_c.data_dir, None, &Progress::default()).unwrap();
    let c = hub::node::Node::start(config_c).await.unwrap();
    // Past the 3 s start-up grace of a plain restart, still no local write:
    // it would reuse the sequence number of "after", which only a holds.
    let http = http_client();
    let refused_until = std::time::Instant::now() + Duration::from_millis(4_500);
    while std::time::Instant::now() < refused_until {
        let (status, body) = call(&http, Method::PUT, &format!("{}/kv/x", c.base_url()), "x")
            .await
            .unwrap();
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            common::text(&body)
        );
        assert!(common::text(&body).contains("recovering"));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let a = hub::node::Node::start(config_a).await.unwrap();
    eventually_async("c takes writes once a has answered", WITHIN, || async {
        let (status, _) = call(&http, Method::PUT, &format!("{}/kv/x", c.base_url()), "x")
            .await
            .unwrap();
        status == StatusCode::OK
    })
    .await;
    assert_eq!(
        c.store().get("after").unwrap().and_then(|e| e.value),
        Some(b"2".to_vec()),
        "c wrote before recovering its own later write"
    );
    eventually(
        "a takes c's new write (its seq was not reused)",
        WITHIN,
        || a.store().get("x").unwrap().is_some(),
    )
    .await;
    eventually(
        "the restored mark is cleared after the check",
        WITHIN,
        || !c.store().restored(),
    )
    .await;
    c.shutdown().await;
    a.shutdown().await;
}

/// Bytes `node` received over QUIC so far.
fn received(node: &hub::node::Node) -> u64 {
    let t = node.cluster_view().unwrap().transport.clone();
    t.peers.iter().map(|p| p.bytes_received).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_restored_under_a_new_id_joins_moving_far_fewer_bytes_than_a_fresh_one() {
    let certs = Certs::new(&["a", "b", "seeded", "fresh"]);
    let a = TestNode::start(Spec::new("a", certs.path())).await;
    let b = TestNode::start(Spec::new("b", certs.path()).join(&[a.quic()])).await;
    common::wait_full_mesh(&[&a, &b], WITHIN).await;
    let value = "v".repeat(200);
    for batch in 0..10 {
        a.put_many((0..1000).map(|i| (format!("k/{batch}/{i}"), value.clone())))
            .await;
    }
    eventually("b has a's data", WITHIN, || a.root() == b.root()).await;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a.hubsnap");
    save_node(&a, &file).await;
    a.put_many((0..100).map(|i| (format!("after/{i}"), value.clone())))
        .await;

    let mut moved = Vec::new();
    for (id, seeded) in [("seeded", true), ("fresh", false)] {
        let spec = Spec::new(id, certs.path()).join(&[a.quic()]);
        let data = tmp.path().join(id);
        if seeded {
            let node_id = hub::model::NodeId::new(id).unwrap();
            let s =
                restore::restore_file(&file, &data, Some(&node_id), &Progress::default()).unwrap();
            assert!(!s.same_node && !s.fenced_until_peer_check);
        }
        let node = hub::node::Node::start(spec.config(&data).unwrap())
            .await
            .unwrap();
        eventually(&format!("{id} converges"), WITHIN, || {
            node.store().merkle_root() == a.root()
        })
        .await;
        // The view is published periodically: read one taken after convergence.
        let seen = node.cluster_view().unwrap();
        eventually("a cluster view after convergence", WITHIN, || {
            !Arc::ptr_eq(&seen, &node.cluster_view().unwrap())
        })
        .await;
        moved.push(received(&node));
        node.shutdown().await;
    }
    let (seeded, fresh) = (moved[0], moved[1]);
    println!(
        "bytes received until equal roots: restored as a new node {seeded}, fresh node {fresh}"
    );
    assert!(seeded * 5 < fresh, "seeded {seeded} vs fresh {fresh}");
}

fn offline_snapshot(tmp: &Path) -> PathBuf {
    let data = tmp.join("src");
    let node = Proc::start(&serve_args(&data));
    let http = http_client();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for i in 0..200 {
            let (s, _) = call(&http, Method::PUT, &format!("{}/kv/k{i}", node.base), "v")
                .await
                .unwrap();
            assert_eq!(s, StatusCode::OK);
        }
    });
    node.stop();
    let file = tmp.join("off.hubsnap");
    let out = hub(
        &[
            "snapshot",
            "save",
            "--data-dir",
            data.to_str().unwrap(),
            file.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("200 entries"),
        "{}",
        text(&out.stdout)
    );
    file
}

#[test]
fn corrupt_and_truncated_snapshots_are_refused_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let file = offline_snapshot(tmp.path());
    let bytes = std::fs::read(&file).unwrap();
    let mut flipped = bytes.clone();
    let mid = bytes.len() / 2;
    flipped[mid] ^= 0x01;
    let cases = [
        ("truncated", bytes[..bytes.len() - 40].to_vec(), "truncated"),
        ("half", bytes[..mid].to_vec(), "truncated"),
        ("flipped", flipped, "corrupt"),
        (
            "other",
            b"not a snapshot at all".to_vec(),
            "not a hub snapshot",
        ),
    ];
    let out_dir = tmp.path().join("targets");
    for (name, content, says) in cases {
        let bad = tmp.path().join(format!("{name}.hubsnap"));
        std::fs::write(&bad, content).unwrap();
        let target = out_dir.join(name);
        let out = hub(
            &[
                "snapshot",
                "restore",
                bad.to_str().unwrap(),
                "--data-dir",
                target.to_str().unwrap(),
            ],
            &[],
        );
        let e = text(&out.stderr);
        assert!(!out.status.success(), "{name} restored");
        assert!(
            e.contains(says) && e.contains("nothing was written"),
            "{name}: {e}"
        );
        assert!(
            !out_dir.exists(),
            "{name}: restore left {:?}",
            std::fs::read_dir(&out_dir).map(|d| d.count())
        );
        let verify = hub(&["snapshot", "verify", bad.to_str().unwrap()], &[]);
        assert!(!verify.status.success(), "{name} verified");
    }
    // A directory that holds anything is never restored into.
    let busy = tmp.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("keep.txt"), "mine").unwrap();
    let out = hub(
        &[
            "snapshot",
            "restore",
            file.to_str().unwrap(),
            "--data-dir",
            busy.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not empty"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read_dir(&busy).unwrap().count(), 1);
    // The intact file restores, and the restored directory opens.
    let good = tmp.path().join("good");
    let out = hub(
        &[
            "snapshot",
            "restore",
            file.to_str().unwrap(),
            "--data-dir",
            good.to_str().unwrap(),
            "--node-id",
            "other",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = hub(
        &[
            "inspect",
            "--data-dir",
            good.to_str().unwrap(),
            "--json",
            "summary",
        ],
        &[],
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["entries"], 200);
    assert_eq!(summary["node_id"], "other");
    assert_eq!(
        std::fs::read_dir(tmp.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('.')
            })
            .count(),
        0,
        "scratch files left behind"
    );
}

#[tokio::test]
async fn snapshot_endpoint_is_for_admin_keys_only() {
    let certs = Certs::new(&["n1"]);
    let tmp = tempfile::tempdir().unwrap();
    let node = common::secure_node(&certs, &tmp.path().join("d")).await;
    let ca = certs.path().join("ca.pem");
    let url = format!("{}/api/snapshot", node.base_url());
    for role in [Role::Read, Role::Write] {
        let token = common::mint_key(&node, role, None).await;
        let c = common::https_client(&ca, Some(&token));
        let (status, _) = call(&c, Method::GET, &url, "").await.unwrap();
        assert_eq!(status, StatusCode::FORBIDDEN, "{role:?}");
    }
    let (status, _) = call(&common::https_client(&ca, None), Method::GET, &url, "")
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let admin = common::mint_key(&node, Role::Admin, None).await;
    let (status, body) = call(
        &common::https_client(&ca, Some(&admin)),
        Method::GET,
        &url,
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with(hub::snapshot::format::MAGIC));
    node.shutdown().await;
}
