//! The operator's window against real nodes: readiness, the Prometheus
//! exposition (checked by the real `promtool`), advertised client URLs in
//! membership, change streams (`/api/watch`) and `hub status`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::Value;

use common::*;

const MESH: Duration = Duration::from_secs(20);

async fn three(certs: &Certs) -> (TestNode, TestNode, TestNode) {
    three_nodes(certs, MESH).await
}

// ---------------------------------------------------------------- /ready

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_200_for_a_joined_node_and_503_naming_the_reason_while_the_join_is_unanswered() {
    let certs = Certs::new(&["a", "lonely"]);
    let a = TestNode::start(Spec::new("a", certs.path())).await;
    let c = http_client();
    eventually_async("a is ready", MESH, || async {
        let r = c
            .request(Method::GET, &format!("{}/ready", a.base()), "", None)
            .await
            .unwrap();
        r.status == StatusCode::OK && r.json().unwrap()["status"] == "ready"
    })
    .await;

    // A join target where nobody answers: the process is healthy, not ready.
    let nobody = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let lonely = TestNode::start(Spec::new("lonely", certs.path()).join(&[nobody])).await;
    let health = c
        .request(Method::GET, &format!("{}/health", lonely.base()), "", None)
        .await
        .unwrap();
    assert_eq!(health.status, StatusCode::OK);
    let r = c
        .request(Method::GET, &format!("{}/ready", lonely.base()), "", None)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let v = r.json().unwrap();
    assert_eq!(v["status"], "not_ready");
    let joined = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "joined")
        .unwrap();
    assert_eq!(joined["ok"], false, "{v}");
    assert!(
        v["reasons"][0].as_str().unwrap().contains("join"),
        "reason names the join: {v}"
    );
    // The store check passes: only the join is missing.
    assert!(v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "store" && c["ok"] == true));
}

// ---------------------------------------------------------------- /metrics

fn promtool() -> Option<std::path::PathBuf> {
    let found = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    found.then(|| "promtool".into())
}

async fn scrape(base: &str, accept: Option<&str>) -> (String, String) {
    let (base, accept) = (base.to_string(), accept.map(str::to_string));
    blocking(move || scrape_blocking(&base, accept.as_deref())).await
}

fn scrape_blocking(base: &str, accept: Option<&str>) -> (String, String) {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let ct = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_string)
        })
        .unwrap();
    // The exposition is small enough to come in one chunk, or not chunked.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((len, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(len.trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        body.to_string()
    };
    (ct, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_of_a_live_cluster_pass_promtool_and_follow_prometheus_conventions() {
    let certs = Certs::new(&["a", "b", "c"]);
    let (a, b, _c) = three(&certs).await;
    let c = http_client();
    for i in 0..5 {
        let (st, _) = call(&c, Method::PUT, &format!("{}/kv/k{i}", b.base()), "v")
            .await
            .unwrap();
        assert_eq!(st, StatusCode::OK);
    }
    let (st, _) = call(&c, Method::GET, &format!("{}/kv/nope", a.base()), "")
        .await
        .unwrap();
    assert_eq!(st, StatusCode::NOT_FOUND);
    // Wait for b's writes to be applied on a, so the replication delay and
    // per-peer figures have samples.
    eventually("a applied b's writes", MESH, || a.value("k4").is_some()).await;
    eventually_async(
        "a's last anti-entropy with a peer is recorded",
        MESH,
        || async {
            scrape(&a.base(), None)
                .await
                .1
                .contains("hub_peer_anti_entropy_age_seconds{peer=")
        },
    )
    .await;

    let (ct, text) = scrape(&a.base(), None).await;
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    assert!(
        !text.contains("# EOF"),
        "no OpenMetrics marker in 0.0.4 text"
    );
    for needle in [
        "# TYPE hub_http_writes_total counter",
        "# TYPE hub_commit_flushes_total counter",
        "# TYPE hub_replication_deltas_sent_total counter",
        "# TYPE hub_http_request_duration_seconds histogram",
        "hub_http_request_duration_seconds_count{route=\"/kv/{*key}\",class=\"4xx\"} 1",
        "# TYPE hub_commit_duration_seconds histogram",
        "# TYPE hub_flush_duration_seconds histogram",
        "# TYPE hub_replication_delay_seconds histogram",
        "hub_build_info{version=\"",
        "hub_member_status{peer=\"b\",status=\"alive\"} 1",
        "hub_member_status{peer=\"b\",status=\"dead\"} 0",
        "hub_peer_rtt_seconds{peer=\"b\"}",
        "hub_peer_sent_bytes_total{peer=\"b\"}",
        "hub_peer_received_bytes_total{peer=\"b\"}",
        "hub_peer_replication_lag_deltas{peer=\"b\"}",
        "hub_peer_replication_lag_seconds{peer=\"b\"}",
        "hub_worker_runs_total{worker=\"committer\"}",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    // The raw path never becomes a label.
    assert!(!text.contains("/kv/nope"), "raw path leaked into a label");
    // Replication delay has observations (b's five deltas).
    let count = text
        .lines()
        .find_map(|l| l.strip_prefix("hub_replication_delay_seconds_count "))
        .unwrap();
    assert!(count.parse::<u64>().unwrap() >= 5, "{count}");

    match promtool() {
        None => eprintln!(
            "skipped promtool: not installed (Debian package `prometheus`; .ci/run installs it)"
        ),
        Some(p) => {
            let mut child = std::process::Command::new(p)
                .args(["check", "metrics"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    // A scraper asking for OpenMetrics gets it, labelled as such.
    let (ct, om) = scrape(
        &a.base(),
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    )
    .await;
    assert_eq!(
        ct,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(om.ends_with("# EOF\n"));
    assert!(om.contains("# TYPE hub_http_writes counter\nhub_http_writes_total "));
}

// ---------------------------------------------------------------- membership URLs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_knows_every_members_advertised_client_url() {
    let certs = Certs::new(&["a", "b", "c"]);
    let (a, b, c) = three(&certs).await;
    let client = http_client();
    for n in [&a, &b, &c] {
        let m = get_json(&client, &format!("{}/api/membership", n.base()))
            .await
            .unwrap();
        assert_eq!(m["self"]["http"], n.base(), "{m}");
        for other in [&a, &b, &c].into_iter().filter(|o| o.id != n.id) {
            let row = m["members"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["node_id"] == other.id.as_str())
                .unwrap();
            assert_eq!(row["http"], other.base(), "{m}");
        }
    }
}

// ---------------------------------------------------------------- /api/watch

/// A raw SSE reader: one TCP connection, events parsed as they come.
struct Sse {
    lines: BufReader<TcpStream>,
}

#[derive(Debug)]
struct Ev {
    id: Option<u64>,
    event: String,
    data: Value,
}

impl Sse {
    fn open(base: &str, query: &str, headers: &[(&str, &str)]) -> Result<Sse, (u16, String)> {
        let addr = base.trim_start_matches("http://");
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let extra: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        write!(
            s,
            "GET /api/watch{query} HTTP/1.1\r\nHost: {addr}\r\n{extra}\r\n"
        )
        .unwrap();
        let mut lines = BufReader::new(s);
        let mut status = String::new();
        lines.read_line(&mut status).unwrap();
        let code: u16 = status.split_whitespace().nth(1).unwrap().parse().unwrap();
        loop {
            let mut h = String::new();
            lines.read_line(&mut h).unwrap();
            if h == "\r\n" {
                break;
            }
        }
        if code != 200 {
            return Err((code, status));
        }
        Ok(Sse { lines })
    }

    /// The next line of the (chunked) body.
    fn line(&mut self) -> String {
        loop {
            let mut l = String::new();
            let n = self.lines.read_line(&mut l).unwrap();
            assert!(n > 0, "stream closed");
            let l = l.trim_end_matches(['\r', '\n']).to_string();
            // Chunk-size lines are hex numbers alone on their line; SSE
            // lines always have a field name and a colon, or are empty.
            if !l.is_empty() && !l.contains(':') && u64::from_str_radix(&l, 16).is_ok() {
                continue;
            }
            return l;
        }
    }

    /// The next event (comments skipped).
    fn next(&mut self) -> Ev {
        let (mut id, mut event, mut data) = (None, "message".to_string(), String::new());
        loop {
            let l = self.line();
            if l.is_empty() {
                if data.is_empty() {
                    continue;
                }
                return Ev {
                    id,
                    event,
                    data: serde_json::from_str(&data).unwrap(),
                };
            }
            if l.starts_with(':') {
                continue;
            } else if let Some(v) = l.strip_prefix("id: ") {
                id = Some(v.parse().unwrap());
            } else if let Some(v) = l.strip_prefix("event: ") {
                event = v.to_string();
            } else if let Some(v) = l.strip_prefix("data: ") {
                data.push_str(v);
            }
        }
    }
}

/// Runs blocking SSE reads off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_local_and_replicated_changes_and_resumes_without_gaps() {
    let certs = Certs::new(&["a", "b"]);
    let a = TestNode::start(Spec::new("a", certs.path())).await;
    let b = TestNode::start(Spec::new("b", certs.path()).join(&[a.quic()])).await;
    wait_full_mesh(&[&a, &b], MESH).await;
    let base = a.base();
    let w = {
        let base = base.clone();
        blocking(move || Sse::open(&base, "?prefix=app/", &[]).unwrap()).await
    };

    a.put("app/1", "\"one\"").await;
    a.put("other/x", "1").await; // outside the prefix
    b.put("app/2", "\"two\"").await; // replicated to a
    eventually("app/2 replicated to a", MESH, || a.value("app/2").is_some()).await;
    a.node
        .committer()
        .commit(vec![hub::store::Op::Local {
            key: "app/1".into(),
            value: None,
            meta: Default::default(),
            cond: hub::store::Condition::Always,
        }])
        .await
        .unwrap();

    let (w, evs) = blocking(move || {
        let mut w = w;
        let evs: Vec<Ev> = (0..3).map(|_| w.next()).collect();
        (w, evs)
    })
    .await;
    drop(w);
    assert_eq!(evs[0].data["key"], "app/1");
    assert_eq!(evs[0].data["value"], "one");
    assert_eq!(evs[0].data["origin"], "a");
    assert!(evs[0].data["version"]["hlc"].as_u64().is_some());
    assert_eq!(evs[1].data["key"], "app/2");
    assert_eq!(
        evs[1].data["origin"], "b",
        "the replicated change: {:?}",
        evs[1]
    );
    assert_eq!(evs[2].data["key"], "app/1");
    assert_eq!(evs[2].data["deleted"], true);
    assert!(evs[2].data["value"].is_null());
    let ids: Vec<u64> = evs.iter().map(|e| e.id.unwrap()).collect();
    assert!(ids.windows(2).all(|p| p[0] < p[1]), "{ids:?}");
    // The id is the /api/updates cursor of the same change.
    let u = get_json(&http_client(), &format!("{base}/api/updates?limit=100"))
        .await
        .unwrap();
    let in_feed: Vec<(String, String)> = u["updates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["key"].as_str().unwrap().starts_with("app/"))
        .map(|c| {
            (
                c["cursor"].as_str().unwrap().to_string(),
                c["key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let streamed: Vec<(String, String)> = evs
        .iter()
        .map(|e| {
            (
                e.id.unwrap().to_string(),
                e.data["key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(in_feed, streamed);

    // Resume after the first event with Last-Event-ID: the other two, no gap.
    let first = ids[0].to_string();
    let b2 = base.clone();
    let resumed = blocking(move || {
        let mut w = Sse::open(&b2, "?prefix=app/", &[("Last-Event-ID", &first)]).unwrap();
        (0..2).map(|_| w.next().id.unwrap()).collect::<Vec<_>>()
    })
    .await;
    assert_eq!(resumed, ids[1..]);
    // since=0 replays everything the node holds under the prefix.
    let b3 = base.clone();
    let replay = blocking(move || {
        let mut w = Sse::open(&b3, "?prefix=app/&since=0", &[]).unwrap();
        (0..3).map(|_| w.next().id.unwrap()).collect::<Vec<_>>()
    })
    .await;
    assert_eq!(replay, ids);
    // A bad cursor is a clear 400, not a stream.
    let b4 = base.clone();
    let bad = blocking(move || Sse::open(&b4, "?since=yesterday", &[]).err())
        .await
        .unwrap();
    assert_eq!(bad.0, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_0_starts_at_the_first_change_in_updates_and_watch_alike_and_pages_never_repeat() {
    let certs = Certs::new(&["a"]);
    let a = TestNode::start(Spec::new("a", certs.path())).await;
    let base = a.base();
    let keys: Vec<String> = (0..7).map(|i| format!("k{i}")).collect();
    for k in &keys {
        a.put(k, "1").await;
    }
    let c = http_client();
    // Pages of two from since=0 to the end: every change once, in order,
    // the very first one included.
    let (mut since, mut paged) = ("0".to_string(), Vec::new());
    loop {
        let url = format!("{base}/api/updates?since={since}&limit=2");
        let p = get_json(&c, &url).await.unwrap();
        let page = p["updates"].as_array().unwrap().clone();
        if p["next"] == since.as_str() {
            assert!(page.is_empty(), "{p}");
            break;
        }
        paged.extend(page.iter().map(|u| {
            (
                u["cursor"].as_str().unwrap().to_string(),
                u["key"].as_str().unwrap().to_string(),
            )
        }));
        since = p["next"].as_str().unwrap().to_string();
    }
    let paged_keys: Vec<&String> = paged.iter().map(|(_, k)| k).collect();
    assert_eq!(paged_keys, keys.iter().collect::<Vec<_>>(), "{paged:?}");
    // No `since` is the same as since=0.
    let from_start = get_json(&c, &format!("{base}/api/updates?limit=2"))
        .await
        .unwrap();
    assert_eq!(from_start["updates"][0]["key"], "k0");
    // The stream from since=0 has the same first change and the same ids.
    let b = base.clone();
    let streamed = blocking(move || {
        let mut w = Sse::open(&b, "?since=0", &[]).unwrap();
        (0..7)
            .map(|_| {
                let e = w.next();
                (
                    e.id.unwrap().to_string(),
                    e.data["key"].as_str().unwrap().to_string(),
                )
            })
            .collect::<Vec<_>>()
    })
    .await;
    assert_eq!(streamed, paged);
    // Last-Event-ID of the third change resumes at the fourth, no repeat.
    let (b, third) = (base.clone(), paged[2].0.clone());
    let resumed = blocking(move || {
        let mut w = Sse::open(&b, "", &[("Last-Event-ID", &third)]).unwrap();
        w.next().data["key"].as_str().unwrap().to_string()
    })
    .await;
    assert_eq!(resumed, "k3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_reading_is_cut_off_with_where_to_resume_and_writes_never_wait() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = hub::config::Config::for_test("n1", dir.path().join("data")).unwrap();
    config.max_value_bytes = 1 << 20;
    let node = hub::node::Node::start(config).await.unwrap();
    let base = format!("http://{}", node.http_addr());
    // Connected, then never read: its socket buffers fill, then the ring.
    let stalled = {
        let base = base.clone();
        blocking(move || Sse::open(&base, "?prefix=big/", &[]).unwrap()).await
    };
    let value = format!("\"{}\"", "x".repeat(64 << 10));
    let started = std::time::Instant::now();
    let c = http_client();
    let n = 700;
    for i in 0..n {
        let (st, _) = call(
            &c,
            Method::PUT,
            &format!("{base}/kv/big/{i:04}"),
            value.clone(),
        )
        .await
        .unwrap();
        assert_eq!(st, StatusCode::OK);
    }
    let writing = started.elapsed();
    // Now read: events, then the cutoff with a resume cursor.
    let (last_id, resume, reason) = blocking(move || {
        let mut stalled = stalled;
        let mut last = None;
        loop {
            let e = stalled.next();
            if e.event == "cutoff" {
                return (
                    last,
                    e.data["resume"].as_str().unwrap().parse::<u64>().unwrap(),
                    e.data["reason"].as_str().unwrap().to_string(),
                );
            }
            last = e.id;
        }
    })
    .await;
    assert!(reason.contains("behind"), "{reason}");
    assert_eq!(Some(resume), last_id, "resume where delivery stopped");
    // Resuming there delivers the rest, contiguous, to the last write.
    let rest = blocking(move || {
        let mut w = Sse::open(&base, &format!("?prefix=big/&since={resume}"), &[]).unwrap();
        let mut keys = Vec::new();
        loop {
            let e = w.next();
            let k = e.data["key"].as_str().unwrap().to_string();
            keys.push(k.clone());
            if k == format!("big/{:04}", n - 1) {
                return keys;
            }
        }
    })
    .await;
    let first: usize = rest[0].trim_start_matches("big/").parse().unwrap();
    let expect: Vec<String> = (first..n).map(|i| format!("big/{i:04}")).collect();
    assert_eq!(rest, expect, "no gap after resuming");
    assert!(node.metrics().watch_cutoffs.get() >= 1);
    eprintln!("{n} writes of 64 KiB with a stalled watcher took {writing:?}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_limited_key_watches_only_its_prefix() {
    let certs = Certs::new(&["n1"]);
    let dir = tempfile::tempdir().unwrap();
    let node = secure_node(&certs, &dir.path().join("data")).await;
    let admin = mint_key(&node, hub::auth::Role::Admin, None).await;
    let limited = mint_key(&node, hub::auth::Role::Read, Some("team-a/")).await;
    let base = node.base_url();
    let ca = certs.path().join("ca.pem");
    let admin_c = https_client(&ca, Some(&admin));
    for k in ["team-a/x", "team-b/y", "team-a/z"] {
        let (st, _) = call(&admin_c, Method::PUT, &format!("{base}/kv/{k}"), "1")
            .await
            .unwrap();
        assert_eq!(st, StatusCode::OK);
    }
    // The stream is read through the shared client's TLS stack: read the
    // replay (since=0) with a short deadline and parse what arrived.
    let read = |token: Option<String>, query: &'static str| {
        let (ca, base) = (ca.clone(), base.clone());
        async move {
            let c = hub::client::Client::new(&hub::client::ClientOptions {
                token,
                cacert: Some(ca),
                timeout: Some(Duration::from_millis(1500)),
            })
            .unwrap();
            c.request(Method::GET, &format!("{base}/api/watch{query}"), "", None)
                .await
        }
    };
    // No token: 401.
    match read(None, "?since=0").await {
        Ok(r) => assert_eq!(r.status, StatusCode::UNAUTHORIZED),
        Err(e) => panic!("{e}"),
    }
    // The limited key asking for another prefix: 403.
    let r = read(Some(limited.clone()), "?prefix=team-b/&since=0")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // The limited key asking for everything gets its prefix only. The
    // stream never ends by itself, so the client's deadline cuts it; count
    // what the node sent before through a raw TLS-free path: the metric.
    let before = node.metrics().watch_events.get();
    let _ = read(Some(limited.clone()), "?since=0").await;
    let sent = node.metrics().watch_events.get() - before;
    assert_eq!(sent, 2, "only team-a/x and team-a/z reach the limited key");
    node.shutdown().await;
}

// ---------------------------------------------------------------- hub status

fn hub_status(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hub"))
        .arg("status")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_status_shows_every_member_and_exits_non_zero_once_one_is_down() {
    let certs = Certs::new(&["a", "b", "c"]);
    let (a, b, c) = three(&certs).await;
    a.put("x", "1").await;
    eventually("x everywhere", MESH, || {
        b.value("x").is_some() && c.value("x").is_some()
    })
    .await;
    let base = a.base();
    let (code, out, err) = blocking({
        let base = base.clone();
        move || hub_status(&["--node", &base, "--json"])
    })
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["healthy"], true);
    let rows = v["members"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for r in rows {
        assert_eq!(r["reachable"], true, "{r}");
        assert_eq!(r["lag_deltas"], 0, "{r}");
        assert_eq!(r["keys"], 1, "{r}");
        assert_eq!(r["root_agrees"], true, "{r}");
        assert_eq!(r["partitions_owned"], 256, "{r}");
        assert_eq!(r["partitions_handing_off"], 0, "{r}");
    }
    assert_eq!(v["sharded"], false);
    let (code, table, _) = blocking({
        let base = base.clone();
        move || hub_status(&["--node", &base])
    })
    .await;
    assert_eq!(code, 0);
    assert!(table.starts_with("NODE"), "{table}");
    assert!(table.contains("healthy"), "{table}");

    // c goes away: a sees it suspect/dead, and c's API does not answer.
    c.node.shutdown().await;
    let (code, out, err) = blocking(move || hub_status(&["--node", &base, "--json"])).await;
    assert_ne!(code, 0, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["healthy"], false);
    assert!(err.contains("not healthy") && err.contains('c'), "{err}");
    drop((a, b));
}

// ---------------------------------------------------------------- dashboard over HTTPS with auth

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_page_is_served_over_https_without_a_token_but_its_data_needs_one() {
    let certs = Certs::new(&["n1"]);
    let dir = tempfile::tempdir().unwrap();
    let node = secure_node(&certs, &dir.path().join("data")).await;
    let base = node.base_url();
    assert!(base.starts_with("https://"));
    let anon = https_client(&certs.path().join("ca.pem"), None);
    let page = anon
        .request(Method::GET, &format!("{base}/"), "", None)
        .await
        .unwrap();
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    assert!(String::from_utf8_lossy(&page.body).contains("/dashboard/app.js"));
    for (path, _) in hub::http::dashboard::ASSETS {
        let r = anon
            .request(Method::GET, &format!("{base}{path}"), "", None)
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK, "{path}");
    }
    for path in ["/api/introspection", "/api/watch", "/api/state"] {
        let r = anon
            .request(Method::GET, &format!("{base}{path}"), "", None)
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let token = mint_key(&node, hub::auth::Role::Read, None).await;
    let reader = https_client(&certs.path().join("ca.pem"), Some(&token));
    let v = reader
        .get_json(&format!("{base}/api/introspection"))
        .await
        .unwrap();
    assert_eq!(v["node_id"], "n1");
    node.shutdown().await;
}

// ---------------------------------------------------------------- hub status, real processes

/// Three `hub serve` processes that see each other.
async fn three_processes(certs: &Certs, dir: &std::path::Path) -> Vec<Proc> {
    let ports = [free_udp_port(), free_udp_port(), free_udp_port()];
    let nodes: Vec<Proc> = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let join = (i > 0).then_some(ports[0]);
            Proc::start(&serve_args(id, &dir.join(id), certs.path(), ports[i], join))
        })
        .collect();
    let c = http_client();
    eventually_async("three processes see each other", MESH, || async {
        let mut all = true;
        for n in &nodes {
            let m = get_json(&c, &format!("{}/api/membership", n.base)).await;
            all &= m.is_some_and(|m| m["alive_peers"] == 2);
        }
        all
    })
    .await;
    nodes
}

/// `hub status --watch`: each redraw (after its clear-screen) as it comes.
struct StatusWatch {
    child: std::process::Child,
    redraws: std::sync::mpsc::Receiver<String>,
}

impl StatusWatch {
    const CLEAR: &'static str = "\x1b[2J\x1b[H";

    fn start(node: &str) -> StatusWatch {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hub"))
            .args(["status", "--node", node, "--watch", "--interval", "200ms"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let (tx, redraws) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut buf, mut text) = ([0u8; 4096], String::new());
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    return;
                }
                text.push_str(&String::from_utf8_lossy(&buf[..n]));
                // A redraw is complete when the next one starts.
                while let Some(at) = text[Self::CLEAR.len().min(text.len())..]
                    .find(Self::CLEAR)
                    .map(|i| i + Self::CLEAR.len())
                {
                    let redraw = text[Self::CLEAR.len()..at].to_string();
                    text.drain(..at);
                    if tx.send(redraw).is_err() {
                        return;
                    }
                }
            }
        });
        StatusWatch { child, redraws }
    }

    /// The next redraw for which `f` holds, within `within`.
    fn until(&self, within: Duration, f: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.redraws.recv_timeout(left) {
                Ok(r) if f(&r) => return r,
                Ok(_) => {}
                Err(e) => panic!("no such redraw of hub status --watch: {e}"),
            }
        }
    }
}

impl Drop for StatusWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The table row of `node` in a redraw of `hub status`.
fn row<'a>(table: &'a str, node: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&node))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_status_watch_redraws_live_and_the_exit_code_follows_a_kill_9() {
    let certs = Certs::new(&["a", "b", "c"]);
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = three_processes(&certs, dir.path()).await;
    let a = nodes[0].base.clone();
    let (code, out, err) = blocking({
        let a = a.clone();
        move || hub_status(&["--node", &a])
    })
    .await;
    assert_eq!(code, 0, "{out}{err}");

    // Two redraws of every member, healthy; the process keeps running.
    let watch = StatusWatch::start(&a);
    let healthy = |t: &str| {
        t.starts_with("NODE")
            && ["a", "b", "c"].iter().all(|n| row(t, n).len() > 3)
            && t.contains("\nhealthy\n")
    };
    let wait = Duration::from_secs(30);
    tokio::task::block_in_place(|| {
        watch.until(wait, healthy);
        watch.until(wait, healthy);
    });
    // Live: a write shows in a later redraw, on every member.
    let http = http_client();
    let (status, _) = call(&http, Method::PUT, &format!("{a}/kv/x"), "1")
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    tokio::task::block_in_place(|| {
        watch.until(wait, |t| {
            ["a", "b", "c"]
                .iter()
                .all(|n| row(t, n).get(3) == Some(&"1"))
        })
    });
    // kill -9 of c: the redraw says so, and `hub status` exits non-zero.
    nodes[2].kill_9();
    let down = tokio::task::block_in_place(|| {
        watch.until(wait, |t| t.contains("NOT HEALTHY") && t.contains("c "))
    });
    assert!(row(&down, "a").len() > 3, "{down}");
    let mut watch = watch;
    assert!(
        watch.child.try_wait().unwrap().is_none(),
        "--watch keeps running while the cluster is not healthy"
    );
    let (code, out, err) = blocking(move || hub_status(&["--node", &a])).await;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("NOT HEALTHY"), "{out}");
    assert!(err.contains("not healthy") && err.contains('c'), "{err}");
}
