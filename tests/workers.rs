//! Every background mechanism reports its status in one place, read by
//! `/api/introspection`, `/metrics` and `hub inspect workers`.

mod common;

use std::time::Duration;

use common::{
    eventually_async, get_json, http_client, hub_ok, wait_full_mesh, Certs, Spec, TestNode,
};
use serde_json::Value;

const WORKERS: [&str; 7] = [
    "committer",
    "replicated-commits",
    "membership",
    "push",
    "pull",
    "anti-entropy",
    "sensors",
];

fn worker<'a>(intro: &'a Value, name: &str) -> &'a Value {
    intro["workers"]
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["name"] == name))
        .unwrap_or_else(|| panic!("no worker {name} in {}", intro["workers"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_worker_reports_runs_in_introspection_metrics_and_inspect() {
    let certs = Certs::new(&["a", "b"]);
    let a = TestNode::start(Spec::new("a", certs.path())).await;
    let b = TestNode::start(Spec::new("b", certs.path()).join(&[a.quic()])).await;
    wait_full_mesh(&[&a, &b], Duration::from_secs(10)).await;
    for i in 0..20 {
        a.put(&format!("k{i}"), "v").await;
    }
    let http = http_client();
    let url = format!("{}/api/introspection", b.base());
    // b committed a's writes through its replicated-commit pipeline.
    eventually_async(
        "b's workers report their runs",
        Duration::from_secs(10),
        || async {
            let Some(intro) = get_json(&http, &url).await else {
                return false;
            };
            ["committer", "replicated-commits", "membership", "pull"]
                .iter()
                .all(|w| worker(&intro, w)["runs"].as_u64() > Some(0))
        },
    )
    .await;
    let intro = get_json(&http, &url).await.unwrap();
    for name in WORKERS {
        let w = worker(&intro, name);
        for field in ["state", "queue", "runs", "errors", "consecutive_errors"] {
            assert!(!w[field].is_null(), "{name}.{field} missing: {w}");
        }
    }
    let committer = worker(&intro, "committer");
    assert_eq!(committer["errors"], 0, "{committer}");
    assert!(committer["last_run_ms"].as_u64().is_some(), "{committer}");

    let (status, metrics) = common::call(
        &http,
        hyper::Method::GET,
        &format!("{}/metrics", b.base()),
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, hyper::StatusCode::OK);
    let metrics = String::from_utf8_lossy(&metrics);
    for name in WORKERS {
        assert!(
            metrics.contains(&format!("hub_worker_runs_total{{worker=\"{name}\"}}")),
            "no hub_worker_runs_total for {name}"
        );
    }

    let text = hub_ok(&["inspect", "--node", &b.base(), "workers"]);
    for name in WORKERS {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} missing from:\n{text}"
        );
    }
    drop(http);
    a.node.shutdown().await;
    b.node.shutdown().await;
}
