//! `hub inspect` against a real data directory (offline) and a running node
//! (live): the same views, the same answers.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use hub::config::Config;
use hub::node::Node;
use hub::store::{Condition, Op};

fn inspect(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hub"))
        .arg("inspect")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

async fn inspect_json(args: Vec<String>) -> Value {
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        inspect(&args)
    })
    .await
    .unwrap();
    assert!(ok, "inspect failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn args(source: &[&str], view: &[&str]) -> Vec<String> {
    source
        .iter()
        .chain(view)
        .chain(&["--json"])
        .map(|s| s.to_string())
        .collect()
}

/// A node with a few keys, a tombstone and a reading.
async fn populated(dir: &Path) -> Node {
    let node = Node::start(Config::for_test("insp", dir).unwrap())
        .await
        .unwrap();
    let put = |k: &str, v: &str| Op::Local {
        key: k.into(),
        value: Some(v.into()),
        meta: Default::default(),
        cond: Condition::Always,
    };
    node.committer()
        .commit(vec![
            put("a", "1"),
            put("b", "two"),
            put("sensors/insp/t", "21.5"),
        ])
        .await
        .unwrap();
    node.committer()
        .commit(vec![Op::Local {
            key: "b".into(),
            value: None,
            meta: Default::default(),
            cond: Condition::Always,
        }])
        .await
        .unwrap();
    node
}

const VIEWS: &[&[&str]] = &[
    &["summary"],
    &["keys"],
    &["get", "a"],
    &["get", "b"],
    &["log"],
    &["vv"],
    &["merkle"],
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_views_describe_a_stopped_nodes_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let node = populated(&dir).await;
    let root = node.store().summary().unwrap().merkle_root;
    node.shutdown().await;
    let d = dir.to_str().unwrap();
    let src = ["--data-dir", d];

    let s = inspect_json(args(&src, &["summary"])).await;
    assert_eq!(s["node_id"], "insp");
    assert_eq!(s["entries"], 2);
    assert_eq!(s["tombstones"], 1);
    assert_eq!(s["log_len"], 4);
    assert_eq!(s["version_vector"], json!({"insp": 4}));
    assert_eq!(s["merkle_root"], root);
    assert!(s["disk_bytes"].as_u64().unwrap() > 0);
    assert!(s["schema_version"].as_u64().unwrap() >= 1);

    let keys = inspect_json(args(&src, &["keys"])).await;
    let names: Vec<_> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].clone())
        .collect();
    assert_eq!(names, [json!("a"), json!("sensors/insp/t")]);
    let a = inspect_json(args(&src, &["get", "a"])).await;
    assert_eq!(
        (a["value"].clone(), a["deleted"].clone()),
        (json!(1), json!(false))
    );
    assert_eq!(
        inspect_json(args(&src, &["get", "b"])).await["deleted"],
        true
    );
    let log = inspect_json(args(&src, &["log"])).await;
    assert_eq!(log["updates"].as_array().unwrap().len(), 4);
    // A cursor is the feed position after its change; a fresh store's feed
    // starts at 1, so after four changes the next cursor is 5.
    assert_eq!(log["next"], "5");
    assert_eq!(inspect_json(args(&src, &["vv"])).await, json!({"insp": 4}));
    assert_eq!(inspect_json(args(&src, &["merkle"])).await["digest"], root);

    // Text output works for every view.
    for view in VIEWS {
        let mut a = vec!["--data-dir", d];
        a.extend_from_slice(view);
        let (ok, out, err) = inspect(&a);
        assert!(ok && !out.is_empty(), "{view:?}: {err}");
    }
    let (ok, out, _) = inspect(&["--data-dir", d, "summary"]);
    assert!(ok && out.contains(root.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_views_match_offline_views() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let node = populated(&dir).await;
    let url = format!("http://{}", node.http_addr());
    let mut live = Vec::new();
    for view in VIEWS {
        live.push(inspect_json(args(&["--node", &url], view)).await);
    }
    node.shutdown().await;
    let d = dir.to_str().unwrap();
    for (view, live) in VIEWS.iter().zip(live) {
        let offline = inspect_json(args(&["--data-dir", d], view)).await;
        if view[0] == "summary" {
            for f in [
                "node_id",
                "entries",
                "tombstones",
                "log_len",
                "version_vector",
                "merkle_root",
                "schema_version",
            ] {
                assert_eq!(live[f], offline[f], "summary.{f}");
            }
            assert!(live["counters"]["flushes"].as_u64().unwrap() >= 2);
        } else {
            assert_eq!(live, offline, "{view:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_nodes_directory_or_a_missing_one_is_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let node = populated(&dir).await;
    let d = dir.to_str().unwrap().to_string();
    let (ok, _, err) = tokio::task::spawn_blocking(move || inspect(&["--data-dir", &d, "summary"]))
        .await
        .unwrap();
    assert!(!ok);
    assert!(err.contains("locked") && err.contains("--node"), "{err}");
    node.shutdown().await;

    let missing = tmp.path().join("nothing-here");
    let (ok, _, err) = inspect(&["--data-dir", missing.to_str().unwrap(), "summary"]);
    assert!(!ok);
    assert!(err.contains("does not exist"), "{err}");
    let (ok, _, err) = inspect(&["--node", "http://127.0.0.1:1", "summary"]);
    assert!(!ok);
    assert!(err.contains("cannot reach"), "{err}");
    let (ok, _, err) = inspect(&["--data-dir", dir.to_str().unwrap(), "get", "nope"]);
    assert!(!ok && err.contains("not found"), "{err}");
}
