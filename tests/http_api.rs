//! The HTTP contract of one node: every status code and every bad input,
//! against an in-process node on a real sled directory. Every refused
//! request is checked to have changed nothing.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use hub::config::Config;
use hub::node::Node;

struct TestNode {
    node: Node,
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    _dir: tempfile::TempDir,
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// Asserts the JSON error shape and returns its code.
    fn error_code(&self) -> String {
        let v = self.json();
        assert!(v["error"]["message"].is_string(), "no error message in {v}");
        v["error"]["code"].as_str().unwrap().to_string()
    }
}

async fn start_with(f: impl FnOnce(&mut Config)) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_test("n1", dir.path().join("data")).unwrap();
    f(&mut config);
    let node = Node::start(config).await.unwrap();
    let base = format!("http://{}", node.http_addr());
    TestNode {
        node,
        base,
        client: Client::builder(TokioExecutor::new()).build_http(),
        _dir: dir,
    }
}

async fn start() -> TestNode {
    start_with(|_| {}).await
}

impl TestNode {
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
        ctype: Option<&str>,
    ) -> Resp {
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        if let Some(c) = ctype {
            b = b.header("content-type", c);
        }
        let resp = self
            .client
            .request(b.body(Full::new(body.into())).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Resp {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str) -> Resp {
        self.call(Method::GET, path, Bytes::new(), None).await
    }

    async fn put(&self, path: &str, body: &'static str) -> Resp {
        self.call(Method::PUT, path, body, None).await
    }

    async fn post_json(&self, path: &str, body: impl Into<Bytes>) -> Resp {
        self.call(Method::POST, path, body, Some("application/json"))
            .await
    }

    /// Everything a write would change.
    fn snapshot(&self) -> Value {
        let s = self.node.store().summary().unwrap();
        json!([
            s.entries,
            s.tombstones,
            s.merkle_root,
            s.version_vector,
            s.changes_next,
            s.log_len
        ])
    }
}

#[tokio::test]
async fn health_names_the_node() {
    let n = start().await;
    let r = n.get("/health").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"status": "ok", "node_id": "n1"}));
}

#[tokio::test]
async fn put_answers_200_with_version_and_get_returns_raw_bytes_with_version_header() {
    let n = start().await;
    let r = n.put("/kv/room/1/temp", "21.5").await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["key"], "room/1/temp");
    assert_eq!(v["seq"], 1);
    let version = v["version"]["text"].as_str().unwrap().to_string();
    assert!(version.ends_with("@n1"));
    let g = n.get("/kv/room/1/temp").await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(&g.body[..], b"21.5");
    assert_eq!(g.headers["x-hub-version"].to_str().unwrap(), version);
    // Overwrite: newer version, new value.
    let r2 = n.put("/kv/room/1/temp", "22").await;
    assert!(r2.json()["version"]["hlc"].as_u64() > v["version"]["hlc"].as_u64());
    assert_eq!(&n.get("/kv/room/1/temp").await.body[..], b"22");
}

#[tokio::test]
async fn post_creates_with_201_and_refuses_an_existing_key_with_409() {
    let n = start().await;
    let r = n.call(Method::POST, "/kv/k", "first", None).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let before = n.snapshot();
    let r = n.call(Method::POST, "/kv/k", "second", None).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.error_code(), "exists");
    assert_eq!(n.snapshot(), before);
    assert_eq!(&n.get("/kv/k").await.body[..], b"first");
    // A deleted key can be created again.
    assert_eq!(
        n.call(Method::DELETE, "/kv/k", "", None).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        n.call(Method::POST, "/kv/k", "again", None).await.status,
        StatusCode::CREATED
    );
    assert_eq!(&n.get("/kv/k").await.body[..], b"again");
}

#[tokio::test]
async fn delete_answers_204_then_404_and_the_key_reads_as_absent() {
    let n = start().await;
    n.put("/kv/gone", "x").await;
    assert_eq!(
        n.call(Method::DELETE, "/kv/gone", "", None).await.status,
        StatusCode::NO_CONTENT
    );
    let r = n.get("/kv/gone").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code(), "not_found");
    let before = n.snapshot();
    for path in ["/kv/gone", "/kv/never"] {
        let r = n.call(Method::DELETE, path, "", None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(r.error_code(), "not_found");
    }
    assert_eq!(n.get("/kv/never").await.status, StatusCode::NOT_FOUND);
    assert_eq!(n.snapshot(), before);
    assert_eq!(before[1], 1, "the delete left a tombstone");
}

#[tokio::test]
async fn bad_keys_are_refused_with_400_and_change_nothing() {
    let n = start().await;
    n.put("/kv/ok", "1").await;
    let before = n.snapshot();
    let long = format!("/kv/{}", "k".repeat(1025));
    for path in ["/kv/a%0Ab", "/kv/%7F", long.as_str(), "/kv/", "/kv/%FF%FE"] {
        for method in [Method::PUT, Method::POST, Method::GET, Method::DELETE] {
            let r = n.call(method.clone(), path, "v", None).await;
            assert_eq!(
                r.status,
                StatusCode::BAD_REQUEST,
                "{method} {path}: {:?}",
                r.body
            );
            let code = r.error_code();
            assert!(code == "bad_key" || code == "bad_path", "{code}");
        }
    }
    assert_eq!(n.snapshot(), before);
    // 1024 bytes is still a key.
    let max = format!("/kv/{}", "k".repeat(1024));
    assert_eq!(
        n.call(Method::PUT, &max, "v", None).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn values_over_the_configured_limit_are_refused_with_413_and_change_nothing() {
    let n = start_with(|c| c.max_value_bytes = 1000).await;
    n.put("/kv/k", "small").await;
    let before = n.snapshot();
    for method in [Method::PUT, Method::POST] {
        let r = n.call(method, "/kv/k", vec![b'x'; 1001], None).await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(r.error_code(), "value_too_large");
    }
    assert_eq!(n.snapshot(), before);
    assert_eq!(&n.get("/kv/k").await.body[..], b"small");
    assert_eq!(
        n.call(Method::PUT, "/kv/k", vec![b'x'; 1000], None)
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn list_pages_by_prefix_and_after_and_skips_deleted_keys() {
    let n = start().await;
    for k in ["a/1", "a/2", "a/3", "a/4", "b/1"] {
        n.put(&format!("/kv/{k}"), "v").await;
    }
    n.call(Method::DELETE, "/kv/a/2", "", None).await;
    let keys = |v: &Value| -> Vec<String> {
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["key"].as_str().unwrap().to_string())
            .collect()
    };
    let p1 = n.get("/kv?prefix=a/&limit=2").await.json();
    assert_eq!(keys(&p1), ["a/1", "a/3"]);
    assert_eq!(p1["next"], "a/3");
    let p2 = n.get("/kv?prefix=a/&limit=2&after=a/3").await.json();
    assert_eq!(keys(&p2), ["a/4"]);
    assert_eq!(p2["next"], Value::Null);
    assert_eq!(
        keys(&n.get("/kv").await.json()),
        ["a/1", "a/3", "a/4", "b/1"]
    );
    let before = n.snapshot();
    for q in [
        "/kv?limit=0",
        "/kv?limit=abc",
        "/kv?limit=10001",
        "/kv?limit=-1",
    ] {
        let r = n.get(q).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}");
        assert_eq!(r.error_code(), "bad_query");
    }
    assert_eq!(n.snapshot(), before);
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405_in_json() {
    let n = start().await;
    let before = n.snapshot();
    let r = n.get("/nope").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code(), "not_found");
    for (m, p) in [
        (Method::PATCH, "/kv/k"),
        (Method::DELETE, "/kv"),
        (Method::POST, "/api/state"),
        (Method::GET, "/api/readings"),
    ] {
        let r = n.call(m.clone(), p, "", None).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{m} {p}");
        assert_eq!(r.error_code(), "method_not_allowed");
    }
    assert_eq!(n.snapshot(), before);
}

#[tokio::test]
async fn a_batch_of_readings_is_one_commit_and_shows_in_state_grouped_by_origin() {
    let n = start().await;
    let groups = n
        .node
        .committer()
        .stats()
        .groups
        .load(std::sync::atomic::Ordering::Relaxed);
    let body = json!([
        {"sensor": "temp", "value": 21.5, "unit": "C", "ts_ms": 1700000000000u64},
        {"sensor": "door", "value": true},
        {"sensor": "mode", "value": "eco"},
    ]);
    let r = n.post_json("/api/readings", body.to_string()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["accepted"], 3);
    assert_eq!(
        n.node
            .committer()
            .stats()
            .groups
            .load(std::sync::atomic::Ordering::Relaxed),
        groups + 1
    );
    let s = n.get("/api/state").await.json();
    assert_eq!(s["n1"]["temp"]["value"], 21.5);
    assert_eq!(s["n1"]["temp"]["ts_ms"], 1700000000000u64);
    assert_eq!(s["n1"]["temp"]["origin"], "n1");
    assert_eq!(s["n1"]["temp"]["meta"]["unit"], "C");
    assert_eq!(s["n1"]["door"]["value"], true);
    assert_eq!(s["n1"]["mode"]["value"], "eco");
    // Without a device time, the reading's time is its HLC's physical part.
    assert!(s["n1"]["door"]["ts_ms"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(n.node.store().version_vector().total(), 3);
}

#[tokio::test]
async fn malformed_reading_batches_are_refused_with_400_and_nothing_is_applied() {
    let n = start().await;
    n.post_json("/api/readings", r#"[{"sensor":"t","value":1}]"#)
        .await;
    let before = n.snapshot();
    let bad = [
        "not json",
        "{\"sensor\":\"t\",\"value\":1}",
        "[{\"sensor\":\"t\"}]",
        "[{\"value\":1}]",
        "[{\"sensor\":\"t\",\"value\":1},{\"sensor\":\"a/b\",\"value\":2}]",
        "[{\"sensor\":\"\",\"value\":2}]",
        "[{\"sensor\":\"t\",\"value\":null}]",
        "[{\"sensor\":\"t\",\"value\":{\"x\":1}}]",
        "[{\"sensor\":\"t\",\"value\":1,\"ts_ms\":-5}]",
        "[{\"sensor\":\"t\",\"value\":1,\"colour\":\"red\"}]",
        "[{\"sensor\":\"t\",\"value\":1,\"unit\":\"a\\nb\"}]",
    ];
    for body in bad {
        let r = n.post_json("/api/readings", body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {:?}", r.body);
        let code = r.error_code();
        assert!(code == "bad_json" || code == "bad_reading", "{code}");
    }
    // Missing content type is refused the same way.
    let r = n
        .call(
            Method::POST,
            "/api/readings",
            r#"[{"sensor":"t","value":1}]"#,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(n.snapshot(), before);
}

#[tokio::test]
async fn updates_feed_is_non_consuming_and_pages_by_cursor() {
    let n = start().await;
    for i in 0..5 {
        n.put(&format!("/kv/k{i}"), "v").await;
    }
    n.call(Method::DELETE, "/kv/k0", "", None).await;
    let all = n.get("/api/updates").await.json();
    assert_eq!(all["updates"].as_array().unwrap().len(), 6);
    assert_eq!(
        n.get("/api/updates").await.json(),
        all,
        "reading consumed something"
    );
    let p1 = n.get("/api/updates?limit=4").await.json();
    assert_eq!(p1["updates"].as_array().unwrap().len(), 4);
    let next = p1["next"].as_str().unwrap();
    let p2 = n.get(&format!("/api/updates?since={next}")).await.json();
    let keys: Vec<_> = p2["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["key"].clone())
        .collect();
    assert_eq!(keys, [json!("k4"), json!("k0")]);
    assert_eq!(p2["updates"][1]["deleted"], true);
    assert_eq!(p2["updates"][1]["value"], Value::Null);
    // At the end, `next` stays put so polling with it is safe.
    let end = p2["next"].as_str().unwrap();
    let p3 = n.get(&format!("/api/updates?since={end}")).await.json();
    assert_eq!(p3["updates"], json!([]));
    assert_eq!(p3["next"], end);
    for q in [
        "/api/updates?since=abc",
        "/api/updates?since=-1",
        "/api/updates?limit=0",
    ] {
        let r = n.get(q).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}");
    }
}

#[tokio::test]
async fn sensor_history_is_newest_first_and_pages_with_before() {
    let n = start().await;
    for v in 1..=5 {
        n.post_json(
            "/api/readings",
            json!([{"sensor": "t", "value": v}, {"sensor": "other", "value": 0}]).to_string(),
        )
        .await;
    }
    let h = n.get("/api/sensors/n1/t/history?limit=3").await.json();
    let vals: Vec<_> = h["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"].clone())
        .collect();
    assert_eq!(vals, [json!(5), json!(4), json!(3)]);
    let before = h["next_before"].as_u64().unwrap();
    let h2 = n
        .get(&format!(
            "/api/sensors/n1/t/history?limit=3&before={before}"
        ))
        .await
        .json();
    let vals: Vec<_> = h2["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"].clone())
        .collect();
    assert_eq!(vals, [json!(2), json!(1)]);
    assert_eq!(
        n.get("/api/sensors/n2/t/history").await.json()["readings"],
        json!([])
    );
    for q in [
        "/api/sensors/Bad_Id/t/history",
        "/api/sensors/n1/t/history?before=x",
        "/api/sensors/n1/t/history?limit=0",
    ] {
        assert_eq!(n.get(q).await.status, StatusCode::BAD_REQUEST, "{q}");
    }
}

#[tokio::test]
async fn introspection_and_metrics_report_store_and_counters() {
    let n = start().await;
    n.put("/kv/a", "1").await;
    n.get("/kv/a%0A").await;
    let i = n.get("/api/introspection").await.json();
    assert_eq!(i["node_id"], "n1");
    assert_eq!(i["entries"], 1);
    assert_eq!(i["tombstones"], 0);
    assert_eq!(i["log_len"], 1);
    assert_eq!(i["version_vector"], json!({"n1": 1}));
    assert_eq!(i["merkle_root"].as_str().unwrap().len(), 32);
    assert!(i["schema_version"].as_u64().unwrap() >= 1);
    assert_eq!(i["counters"]["writes"], 1);
    assert_eq!(i["counters"]["rejected_inputs"], 1);
    assert!(i["counters"]["flushes"].as_u64().unwrap() >= 1);
    let m = n.get("/metrics").await;
    assert_eq!(m.status, StatusCode::OK);
    let text = String::from_utf8(m.body.to_vec()).unwrap();
    assert!(text.contains("hub_http_writes_total 1"), "{text}");
    assert!(text.contains("hub_entries 1"), "{text}");
    let mk = n.get("/api/merkle").await.json();
    assert_eq!(mk["digest"], i["merkle_root"]);
    assert_eq!(mk["children"].as_array().unwrap().len(), 16);
    assert_eq!(
        n.get("/api/merkle?level=9").await.status,
        StatusCode::BAD_REQUEST
    );
    let e = n.get("/api/entry/a").await.json();
    assert_eq!(e["value"], 1);
    assert_eq!(n.get("/api/entry/zz").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn data_version_vector_clock_and_cursors_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::for_test("n1", dir.path().join("data")).unwrap();
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let call = |base: String, m: Method, p: &str, body: &'static str| {
        let req = hyper::Request::builder()
            .method(m)
            .uri(format!("{base}{p}"))
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let c = client.clone();
        async move {
            let r = c.request(req).await.unwrap();
            let s = r.status();
            (s, r.into_body().collect().await.unwrap().to_bytes())
        }
    };
    let node = Node::start(config.clone()).await.unwrap();
    let base = format!("http://{}", node.http_addr());
    for i in 0..10 {
        call(base.clone(), Method::PUT, &format!("/kv/k{i}"), "v").await;
    }
    call(base.clone(), Method::DELETE, "/kv/k3", "").await;
    let feed_before: Value = serde_json::from_slice(
        &call(base.clone(), Method::GET, "/api/updates?limit=5", "")
            .await
            .1,
    )
    .unwrap();
    let cursor = feed_before["next"].as_str().unwrap().to_string();
    let rest_before = call(
        base.clone(),
        Method::GET,
        &format!("/api/updates?since={cursor}"),
        "",
    )
    .await
    .1;
    let summary = node.store().summary().unwrap();
    let hlc = node.store().hlc();
    node.shutdown().await;

    let node = Node::start(config).await.unwrap();
    let base = format!("http://{}", node.http_addr());
    let after = node.store().summary().unwrap();
    assert_eq!(after.version_vector, summary.version_vector);
    assert_eq!(after.merkle_root, summary.merkle_root);
    assert_eq!(
        (after.entries, after.tombstones),
        (summary.entries, summary.tombstones)
    );
    assert!(node.store().hlc() >= hlc);
    assert_eq!(
        &call(base.clone(), Method::GET, "/kv/k9", "").await.1[..],
        b"v"
    );
    assert_eq!(
        call(base.clone(), Method::GET, "/kv/k3", "").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(
            base.clone(),
            Method::GET,
            &format!("/api/updates?since={cursor}"),
            ""
        )
        .await
        .1,
        rest_before
    );
    // New writes continue the clock and the sequence.
    let w: Value =
        serde_json::from_slice(&call(base.clone(), Method::PUT, "/kv/new", "v").await.1).unwrap();
    assert!(w["version"]["hlc"].as_u64().unwrap() > hlc.0);
    assert_eq!(w["seq"], 12);
    node.shutdown().await;
}

#[tokio::test]
async fn simulated_sensors_write_readings_under_their_node_key() {
    use hub::sensors::{SensorKind, SensorSpec};
    let n = start_with(|c| {
        c.sensors = vec![
            SensorSpec {
                name: "count".into(),
                period_ms: 10,
                kind: SensorKind::Incremental { step: 1.0 },
            },
            SensorSpec {
                name: "temp".into(),
                period_ms: 10,
                kind: SensorKind::Numeric {
                    min: 10.0,
                    max: 20.0,
                    unit: Some("C".into()),
                },
            },
        ]
    })
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let s = n.get("/api/state").await.json();
        if s["n1"]["count"]["value"].as_f64().unwrap_or(0.0) >= 3.0 && s["n1"]["temp"].is_object() {
            let t = &s["n1"]["temp"];
            assert!((10.0..=20.0).contains(&t["value"].as_f64().unwrap()));
            assert_eq!(t["meta"]["kind"], "numeric");
            assert_eq!(t["meta"]["unit"], "C");
            assert_eq!(t["origin"], "n1");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sensors did not write: {s}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let h = n.get("/api/sensors/n1/count/history?limit=2").await.json();
    let vals: Vec<f64> = h["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"].as_f64().unwrap())
        .collect();
    assert!(vals[0] > vals[1], "history newest first: {vals:?}");
    n.node.shutdown().await;
}

#[tokio::test]
async fn a_kv_batch_is_one_commit_answers_each_write_in_order_and_reads_back() {
    let n = start().await;
    n.put("/kv/old", "x").await;
    let groups = || {
        n.node
            .committer()
            .stats()
            .groups
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = groups();
    let body = json!({"writes": [
        {"key": "b/1", "value": "one"},
        {"key": "b/2", "value": "two"},
        {"key": "old", "delete": true},
        {"key": "never", "delete": true},
        {"key": "b/1", "value": "one again"},
    ]});
    let r = n.post_json("/kv", body.to_string()).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(groups(), before + 1, "one commit group for the batch");
    assert_eq!(r.headers["x-hub-acks"], "1");
    let v = r.json();
    assert_eq!(v["written"], 4, "the delete of an absent key wrote nothing");
    let res = v["results"].as_array().unwrap();
    let keys: Vec<&str> = res.iter().map(|r| r["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["b/1", "b/2", "old", "never", "b/1"]);
    let statuses: Vec<u64> = res.iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [200, 200, 200, 404, 200]);
    assert!(res[4]["seq"].as_u64().unwrap() > res[0]["seq"].as_u64().unwrap());
    // The last write of a key in the batch wins, and its version is the one
    // answered.
    let got = n.get("/kv/b/1").await;
    assert_eq!(&got.body[..], b"one again");
    assert_eq!(
        got.headers["x-hub-version"],
        res[4]["version"].as_str().unwrap()
    );
    assert_eq!(&n.get("/kv/b/2").await.body[..], b"two");
    assert_eq!(n.get("/kv/old").await.status, StatusCode::NOT_FOUND);
    // w=all on a node alone: met by its own durable write.
    let r = n
        .post_json("/kv?w=all", r#"{"writes":[{"key":"q","value":"v"}]}"#)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["x-hub-acks"], "1");
    // An empty batch writes nothing and is fine.
    let before = n.snapshot();
    let r = n.post_json("/kv", r#"{"writes":[]}"#).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["written"], 0);
    assert_eq!(n.snapshot(), before);
}

#[tokio::test]
async fn a_kv_batch_with_one_bad_write_is_refused_whole_and_changes_nothing() {
    let n = start_with(|c| c.max_value_bytes = 64).await;
    n.put("/kv/a", "x").await;
    let before = n.snapshot();
    let long = "v".repeat(65);
    let cases: Vec<(String, StatusCode, &str)> = vec![
        ("not json".into(), StatusCode::BAD_REQUEST, "bad_json"),
        (
            r#"[{"key":"a","value":"v"}]"#.into(),
            StatusCode::BAD_REQUEST,
            "bad_json",
        ),
        (
            r#"{"writes":[{"key":"a","value":"v","colour":1}]}"#.into(),
            StatusCode::BAD_REQUEST,
            "bad_json",
        ),
        (
            r#"{"writes":[{"key":"a","value":1}]}"#.into(),
            StatusCode::BAD_REQUEST,
            "bad_json",
        ),
        (
            r#"{"writes":[{"key":"ok","value":"v"},{"key":"","value":"v"}]}"#.into(),
            StatusCode::BAD_REQUEST,
            "bad_key",
        ),
        (
            r#"{"writes":[{"key":"ok","value":"v"},{"key":"_hub/x","value":"v"}]}"#.into(),
            StatusCode::BAD_REQUEST,
            "bad_key",
        ),
        (
            r#"{"writes":[{"key":"ok","value":"v","delete":true}]}"#.into(),
            StatusCode::BAD_REQUEST,
            "bad_write",
        ),
        (
            r#"{"writes":[{"key":"ok"}]}"#.into(),
            StatusCode::BAD_REQUEST,
            "bad_write",
        ),
        (
            json!({"writes":[{"key":"ok","value":"v"},{"key":"big","value":long}]}).to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
        ),
        (
            r#"{"writes":[{"key":"ok","value":"v"}]}"#.into(),
            StatusCode::BAD_REQUEST,
            "bad_query",
        ),
    ];
    for (i, (body, status, code)) in cases.iter().enumerate() {
        let path = if i == cases.len() - 1 {
            "/kv?w=most"
        } else {
            "/kv"
        };
        let r = n.post_json(path, body.clone()).await;
        assert_eq!(r.status, *status, "{body}: {:?}", r.body);
        assert_eq!(r.error_code(), *code, "{body}");
    }
    let too_many: Vec<Value> = (0..=hub::http::batch::MAX_WRITES)
        .map(|i| json!({"key": format!("k{i}"), "value": "v"}))
        .collect();
    let r = n
        .post_json("/kv", json!({ "writes": too_many }).to_string())
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.error_code(), "batch_too_large");
    assert_eq!(n.snapshot(), before);
    assert_eq!(n.get("/kv/ok").await.status, StatusCode::NOT_FOUND);
    // The body may be far larger than one value: the limit for a batch is
    // max_batch_bytes.
    let many: Vec<Value> = (0..100)
        .map(|i| json!({"key": format!("m{i}"), "value": "v".repeat(60)}))
        .collect();
    let r = n
        .post_json("/kv", json!({ "writes": many }).to_string())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["written"], 100);
}
