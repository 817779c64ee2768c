//! Own-origin recovery with real processes: a node whose data directory is
//! put back to an old copy under a running cluster recovers the writes of its
//! own origin that its peers hold before it writes again, so it never reuses
//! one of its sequence numbers. And a fenced node answers local writes with
//! 503 and a reason, changing nothing.

mod common;
#[path = "support/sim_store.rs"]
mod sim_store;

use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::Value;

use common::{
    call, eventually_async, free_udp_port, get_json, http_client, serve_args, Certs, Proc,
};
use common::{Spec, TestNode};
use sim_store::copy_dir;

const WITHIN: Duration = Duration::from_secs(20);

/// PUT `key`; the status and the body as JSON.
async fn put(http: &common::HttpClient, p: &Proc, key: &str) -> (StatusCode, Value) {
    let (status, body) = call(http, Method::PUT, &format!("{}/kv/{key}", p.base), "v")
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// What `p` holds of `origin`'s writes (its version-vector entry).
async fn seq_of(http: &common::HttpClient, p: &Proc, origin: &str) -> u64 {
    get_json(http, &format!("{}/api/introspection", p.base))
        .await
        .and_then(|v| v["version_vector"][origin].as_u64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_restored_from_an_old_copy_never_reuses_a_sequence_number() {
    let certs = Certs::new(&["n1", "n2"]);
    let dir = tempfile::tempdir().unwrap();
    let (d1, d2, backup) = (
        dir.path().join("n1"),
        dir.path().join("n2"),
        dir.path().join("n2-backup"),
    );
    let ports = [free_udp_port(), free_udp_port()];
    let http = http_client();
    let n1 = Proc::start(&serve_args("n1", &d1, certs.path(), ports[0], None));
    let mut n2 = Proc::start(&serve_args(
        "n2",
        &d2,
        certs.path(),
        ports[1],
        Some(ports[0]),
    ));
    for k in 0..10 {
        assert_eq!(
            put(&http, &n2, &format!("early{k}")).await.0,
            StatusCode::OK
        );
    }
    eventually_async("n1 has n2's early writes", WITHIN, || async {
        seq_of(&http, &n1, "n2").await == 10
    })
    .await;

    // Back up n2 (stopped), run it on, and let n1 receive its later writes.
    n2.kill_9();
    copy_dir(&d2, &backup);
    let mut n2 = Proc::start(&serve_args("n2", &d2, certs.path(), ports[1], None));
    for k in 0..20 {
        assert_eq!(put(&http, &n2, &format!("late{k}")).await.0, StatusCode::OK);
    }
    eventually_async("n1 has n2's late writes", WITHIN, || async {
        seq_of(&http, &n1, "n2").await == 30
    })
    .await;

    // Restore the old copy under the running cluster.
    n2.kill_9();
    std::fs::remove_dir_all(&d2).unwrap();
    copy_dir(&backup, &d2);
    let n2 = Proc::start(&serve_args("n2", &d2, certs.path(), ports[1], None));
    let (status, body) = put(&http, &n2, "after-restore").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["seq"].as_u64(),
        Some(31),
        "the restored node must continue after the writes its peer held: {body}"
    );
    eventually_async("both nodes hold all of n2's writes", WITHIN, || async {
        seq_of(&http, &n1, "n2").await == 31 && seq_of(&http, &n2, "n2").await == 31
    })
    .await;
    for k in [0, 19] {
        let url = format!("{}/kv/late{k}", n2.base);
        let (status, _) = call(&http, Method::GET, &url, "").await.unwrap();
        assert_eq!(status, StatusCode::OK, "late{k} not recovered on n2");
    }
    let url = format!("{}/kv/after-restore", n1.base);
    eventually_async("n1 has the new write", WITHIN, || async {
        matches!(
            call(&http, Method::GET, &url, "").await,
            Ok((StatusCode::OK, _))
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_node_refuses_local_writes_with_503_and_changes_nothing() {
    let certs = Certs::new(&["solo"]);
    let node = TestNode::start(Spec::new("solo", certs.path())).await;
    let reason = "recovering this node's own writes (test)";
    node.node.committer().fence().set(Some(reason.into()));
    let http = http_client();
    let url = format!("{}/kv/k", node.base());
    let (status, body) = call(&http, Method::PUT, &url, "v").await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "recovering");
    assert!(body["error"]["message"].as_str().unwrap().contains(reason));
    assert_eq!(node.value("k"), None);
    assert_eq!(
        node.node.store().version_vector().get(&common::id("solo")),
        0
    );

    node.node.committer().fence().set(None);
    let (status, _) = call(&http, Method::PUT, &url, "v").await.unwrap();
    assert_eq!(status, StatusCode::OK);
}
