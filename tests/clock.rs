//! Skewed clocks cannot win or wedge the cluster: real `hub serve`
//! processes, one of them under libfaketime (Debian `faketime`) with its
//! offset in a file the test rewrites during the run
//! (`FAKETIME_TIMESTAMP_FILE`, `FAKETIME_NO_CACHE=1`). The monotonic clock
//! is left real (`FAKETIME_DONT_FAKE_MONOTONIC=1`), as NTP leaves it.
//!
//! In every case: every write made on a healthy node after the skewed one
//! wins on all nodes, the cluster converges (the skewed node too: it keeps
//! receiving), and the skewed node reports itself (503 `clock_skew`,
//! `/api/introspection`, `/metrics`).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::Value;

use common::*;

const MESH: Duration = Duration::from_secs(20);
const VERDICT: Duration = Duration::from_secs(15);
const CONVERGE: Duration = Duration::from_secs(20);

/// libfaketime's multithreaded preload library, if installed.
fn libfaketime() -> Option<PathBuf> {
    let dirs = [
        "/usr/lib/x86_64-linux-gnu/faketime",
        "/usr/lib/aarch64-linux-gnu/faketime",
        "/usr/lib/faketime",
    ];
    let found = dirs
        .iter()
        .map(|d| Path::new(d).join("libfaketimeMT.so.1"))
        .find(|p| p.exists());
    if found.is_none() {
        eprintln!("skipped: libfaketime not installed (apt-get install faketime; .ci/run does)");
    }
    found
}

/// A node's clock offset, rewritable while it runs.
struct FakeClock {
    file: PathBuf,
    lib: PathBuf,
}

impl FakeClock {
    fn new(dir: &Path, lib: PathBuf, offset: &str) -> FakeClock {
        let c = FakeClock {
            file: dir.join("faketime"),
            lib,
        };
        c.set(offset);
        c
    }

    /// `offset` in libfaketime's relative form, e.g. "+20", "-60" (seconds).
    fn set(&self, offset: &str) {
        let tmp = self.file.with_extension("tmp");
        std::fs::write(&tmp, format!("{offset}\n")).unwrap();
        std::fs::rename(&tmp, &self.file).unwrap();
    }

    fn env(&self) -> Vec<(String, String)> {
        [
            ("LD_PRELOAD", self.lib.display().to_string()),
            ("FAKETIME_TIMESTAMP_FILE", self.file.display().to_string()),
            ("FAKETIME_NO_CACHE", "1".into()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
            ("FAKETIME_DONT_RESET", "1".into()),
        ]
        .map(|(k, v)| (k.to_string(), v))
        .to_vec()
    }
}

struct Cluster {
    _certs: Certs,
    dir: tempfile::TempDir,
    nodes: Vec<Proc>,
    clock: FakeClock,
    http: HttpClient,
}

impl Cluster {
    /// n1, n2 healthy; n3 under libfaketime at `offset`.
    async fn start(offset: &str) -> Option<Cluster> {
        let lib = libfaketime()?;
        let certs = Certs::new(&["n1", "n2", "n3"]);
        let dir = tempfile::tempdir().unwrap();
        let clock = FakeClock::new(dir.path(), lib, offset);
        let ports = [free_udp_port(), free_udp_port(), free_udp_port()];
        let mut nodes = Vec::new();
        for (i, id) in ["n1", "n2", "n3"].into_iter().enumerate() {
            let join = (i > 0).then_some(ports[0]);
            let args = serve_args(id, &dir.path().join(id), certs.path(), ports[i], join);
            let env = if id == "n3" { clock.env() } else { Vec::new() };
            nodes.push(Proc::start_env(&args, &env));
        }
        let c = Cluster {
            _certs: certs,
            dir,
            nodes,
            clock,
            http: http_client(),
        };
        eventually_async("three processes see each other", MESH, || async {
            let mut all = true;
            for i in 0..3 {
                let m = get_json(&c.http, &format!("{}/api/membership", c.nodes[i].base)).await;
                all &= m.is_some_and(|m| m["alive_peers"] == 2);
            }
            all
        })
        .await;
        Some(c)
    }

    fn base(&self, i: usize) -> &str {
        &self.nodes[i].base
    }

    async fn put(&self, i: usize, key: &str, value: &str) -> (StatusCode, Value) {
        let url = format!("{}/kv/{key}", self.base(i));
        let (status, body) = call(&self.http, Method::PUT, &url, value.to_string())
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn get(&self, i: usize, key: &str) -> Option<String> {
        let url = format!("{}/kv/{key}", self.base(i));
        match call(&self.http, Method::GET, &url, "").await {
            Ok((StatusCode::OK, body)) => Some(String::from_utf8_lossy(&body).into_owned()),
            _ => None,
        }
    }

    async fn clock(&self, i: usize) -> Value {
        let v = get_json(&self.http, &format!("{}/api/introspection", self.base(i))).await;
        v.map_or(Value::Null, |v| v["clock"].clone())
    }

    async fn wait_state(&self, i: usize, state: &str) {
        eventually_async(
            &format!("n{} clock state {state}", i + 1),
            VERDICT,
            || async { self.clock(i).await["state"] == state },
        )
        .await;
    }

    async fn metrics(&self, i: usize) -> String {
        let url = format!("{}/metrics", self.base(i));
        let (_, body) = call(&self.http, Method::GET, &url, "").await.unwrap();
        String::from_utf8_lossy(&body).into_owned()
    }

    /// Every node serves `want` for `key`.
    async fn converge(&self, key: &str, want: &str) {
        eventually_async(
            &format!("every node serves {key} = {want}"),
            CONVERGE,
            || async {
                let mut all = true;
                for i in 0..3 {
                    all &= self.get(i, key).await.as_deref() == Some(want);
                }
                all
            },
        )
        .await;
    }

    /// n3 refuses a local write with 503 `code`, and says why.
    async fn assert_refused(&self, code: &str) -> String {
        let (status, body) = self.put(2, "k", "from-skewed-n3").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// n3 reports itself: introspection and metrics.
    async fn assert_reports_skew(&self) {
        let c = self.clock(2).await;
        assert_eq!(c["state"], "skewed", "{c}");
        assert!(c["refusal"]["code"] == "clock_skew", "{c}");
        let text = self.metrics(2).await;
        assert!(
            text.lines()
                .any(|l| l == "hub_clock_fence_state{state=\"skewed\"} 1"),
            "no skewed fence state in metrics:\n{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("hub_clock_peer_offset_seconds{peer=\"n1\"}")),
            "no per-peer offset gauge"
        );
        assert!(text.contains("hub_clock_writes_refused 1"));
        assert_not_ready(&self.http, self.base(2), "clock_skew").await;
    }
}

/// `/ready` is 503 with the clock check failing for `code`.
async fn assert_not_ready(http: &HttpClient, base: &str, code: &str) {
    let (status, body) = call(http, Method::GET, &format!("{base}/ready"), "")
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let reasons = body["reasons"].to_string();
    assert!(reasons.contains(&format!("clock: {code}")), "{body}");
}

/// n3 runs `offset` ahead: fenced; healthy writes win; fixed, it writes
/// again and the order of writes after the fix is real time's.
async fn node_ahead(offset: &str, seconds: f64) {
    let Some(c) = Cluster::start(offset).await else {
        return;
    };
    c.wait_state(2, "skewed").await;
    let why = c.assert_refused("clock_skew").await;
    assert!(why.contains("ahead of"), "{why}");
    // The measured offset: the cluster is `seconds` behind n3.
    let measured = c.clock(2).await["cluster_offset_ms"].as_f64().unwrap() / 1e3;
    assert!((measured + seconds).abs() < 1.0, "measured {measured} s");
    c.assert_reports_skew().await;
    for i in 0..2 {
        assert_eq!(
            c.clock(i).await["state"],
            "ok",
            "a healthy node is not fenced"
        );
    }
    let (status, _) = c.put(0, "k", "healthy-after-skewed").await;
    assert_eq!(status, StatusCode::OK);
    c.converge("k", "healthy-after-skewed").await;

    // The clock is fixed: measured anew, writes accepted.
    c.clock.set("+0");
    c.wait_state(2, "ok").await;
    let (status, body) = c.put(2, "k", "n3-after-fix").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    c.converge("k", "n3-after-fix").await;
    let (status, _) = c.put(0, "k", "latest").await;
    assert_eq!(status, StatusCode::OK);
    c.converge("k", "latest").await;
    drop(c.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_20s_ahead_is_fenced_and_every_later_healthy_write_wins() {
    node_ahead("+20", 20.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_1h_ahead_is_fenced_and_every_later_healthy_write_wins() {
    node_ahead("+3600", 3600.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_60s_behind_is_fenced_keeps_converging_and_wedges_nobody() {
    let Some(c) = Cluster::start("-60").await else {
        return;
    };
    c.wait_state(2, "skewed").await;
    let why = c.assert_refused("clock_skew").await;
    assert!(why.contains("behind"), "{why}");
    c.assert_reports_skew().await;
    for i in 0..2 {
        assert_eq!(c.clock(i).await["state"], "ok");
    }
    // n3 receives and serves everything the healthy nodes write.
    for k in 0..20 {
        let (status, _) = c.put(k % 2, &format!("k{k}"), &format!("v{k}")).await;
        assert_eq!(status, StatusCode::OK);
    }
    c.converge("k19", "v19").await;
    for k in 0..20 {
        assert_eq!(c.get(2, &format!("k{k}")).await, Some(format!("v{k}")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backward_step_during_operation_fences_the_node_and_later_healthy_writes_win() {
    let Some(c) = Cluster::start("+0").await else {
        return;
    };
    c.wait_state(2, "ok").await;
    let (status, _) = c.put(2, "k", "n3-before-step").await;
    assert_eq!(status, StatusCode::OK);
    c.converge("k", "n3-before-step").await;
    // The wall clock of n3 steps back a minute while it runs.
    c.clock.set("-60");
    c.wait_state(2, "skewed").await;
    c.assert_refused("clock_skew").await;
    c.assert_reports_skew().await;
    let (status, _) = c.put(0, "k", "healthy-after-step").await;
    assert_eq!(status, StatusCode::OK);
    c.converge("k", "healthy-after-step").await;
}

/// A node n1 alone (no peer to compare clocks with) whose libfaketime
/// clock starts an hour ahead.
struct LoneAhead {
    _certs: Certs,
    _dir: tempfile::TempDir,
    clock: FakeClock,
    args: Vec<String>,
}

impl LoneAhead {
    fn new() -> Option<LoneAhead> {
        let lib = libfaketime()?;
        let certs = Certs::new(&["n1"]);
        let dir = tempfile::tempdir().unwrap();
        let clock = FakeClock::new(dir.path(), lib, "+3600");
        let port = free_udp_port();
        let args = serve_args("n1", &dir.path().join("n1"), certs.path(), port, None);
        Some(LoneAhead {
            _certs: certs,
            _dir: dir,
            clock,
            args,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_water_mark_ahead_at_start_refuses_writes_until_the_operator_accepts() {
    let Some(lone) = LoneAhead::new() else {
        return;
    };
    let (clock, args) = (&lone.clock, lone.args.clone());
    let http = http_client();
    // Alone (no peer to compare with), an hour ahead: it writes.
    let n1 = Proc::start_env(&args, &clock.env());
    let url = format!("{}/kv/k", n1.base);
    let (status, body) = call(&http, Method::PUT, &url, "future").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let body: Value = serde_json::from_slice(&body).unwrap();
    let stamped_ms = body["version"]["hlc"].as_u64().unwrap() >> 16;
    let real_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        stamped_ms > real_ms + 3_500_000,
        "the write was not stamped an hour ahead: {body}"
    );
    n1.stop();
    // Back on real time, its persisted high-water mark is an hour ahead.
    let n1 = Proc::start(&args);
    let url = format!("{}/kv/k", n1.base);
    let (status, body) = call(&http, Method::PUT, &url, "now").await.unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "clock_ahead_at_start");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("accept_clock_ahead") && msg.contains("win"),
        "{msg}"
    );
    let intro = get_json(&http, &format!("{}/api/introspection", n1.base))
        .await
        .unwrap();
    assert_eq!(intro["clock"]["state"], "ahead_at_start");
    assert_not_ready(&http, &n1.base, "clock_ahead_at_start").await;
    drop(n1);
    // The operator accepts the risk.
    let mut accepted = args.clone();
    accepted.push("--accept-clock-ahead".into());
    let n1 = Proc::start(&accepted);
    let url = format!("{}/kv/k", n1.base);
    let (status, body) = call(&http, Method::PUT, &url, "accepted").await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body:?}");
}

/// The stamp (`version.hlc`) of an answered PUT.
fn stamp_of(body: &[u8]) -> u64 {
    let v: Value = serde_json::from_slice(body).unwrap();
    v["version"]["hlc"].as_u64().unwrap()
}

/// Writes from `writers` concurrent loops until `acks` PUTs were answered
/// 200, then kill -9 at once (more writes in flight); the highest stamp
/// any of them was acknowledged with.
async fn write_then_kill_9(n: &mut Proc, writers: usize, acks: usize) -> u64 {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let stamps = Arc::new(Mutex::new(Vec::new()));
    let (count, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (base, stamps, count, stop) =
            (n.base.clone(), stamps.clone(), count.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let http = http_client();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let url = format!("{base}/kv/w{w}/{i}");
                match call(&http, Method::PUT, &url, "ahead").await {
                    Ok((StatusCode::OK, body)) => {
                        stamps.lock().unwrap().push(stamp_of(&body));
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    // The node was killed under this request.
                    _ => return,
                }
                i += 1;
            }
        }));
    }
    eventually(
        "enough writes acknowledged",
        Duration::from_secs(30),
        || count.load(Ordering::Relaxed) >= acks,
    )
    .await;
    n.kill_9();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let acked: Vec<u64> = std::mem::take(&mut *stamps.lock().unwrap());
    acked.into_iter().max().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_right_after_writes_stamped_ahead_no_later_write_is_stamped_below_them() {
    let Some(lone) = LoneAhead::new() else {
        return;
    };
    let (clock, args) = (&lone.clock, lone.args.clone());
    let mut accepted = args.clone();
    accepted.push("--accept-clock-ahead".into());
    let http = http_client();
    for round in 0..4 {
        // An hour ahead, alone: writes under load, killed right after acks.
        let mut n1 = Proc::start_env(&args, &clock.env());
        let acked = write_then_kill_9(&mut n1, 8, 20 + round * 10).await;
        let real_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(
            acked >> 16 > real_ms + 3_500_000,
            "round {round}: not stamped an hour ahead"
        );
        // Real time: the acknowledged mark survived the kill, so the
        // node refuses to write below it ...
        let mut n1 = Proc::start(&args);
        let (status, body) = call(&http, Method::PUT, &format!("{}/kv/k", n1.base), "now")
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&body);
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "round {round}: {text}"
        );
        assert!(
            text.contains("clock_ahead_at_start"),
            "round {round}: {text}"
        );
        n1.kill_9();
        // ... and, accepted by the operator, stamps above it.
        let mut n1 = Proc::start(&accepted);
        let (status, body) = call(&http, Method::PUT, &format!("{}/kv/k", n1.base), "now")
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK, "round {round}");
        let stamp = stamp_of(&body);
        assert!(
            stamp > acked,
            "round {round}: the write after restart ({stamp}) is stamped below an acknowledged one ({acked})"
        );
        n1.kill_9();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_stamp_far_ahead_is_applied_not_adopted_and_not_adopted_after_kill_9_either() {
    let Some(lib) = libfaketime() else {
        return;
    };
    let certs = Certs::new(&["n1", "n2", "n3"]);
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(dir.path(), lib, "+3600");
    let ports = [free_udp_port(), free_udp_port(), free_udp_port()];
    let args = |i: usize, join: Option<u16>| {
        let id = format!("n{}", i + 1);
        serve_args(&id, &dir.path().join(&id), certs.path(), ports[i], join)
    };
    let http = http_client();
    // n3, alone and an hour ahead, writes k.
    let n3 = Proc::start_env(&args(2, None), &clock.env());
    let (status, body) = call(&http, Method::PUT, &format!("{}/kv/k", n3.base), "future")
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let future = stamp_of(&body);
    n3.stop();
    // n1 and n2 on real time; n3, still ahead, joins: fenced, but its
    // write replicates.
    let mut n1 = Proc::start(&args(0, None));
    let _n2 = Proc::start(&args(1, Some(ports[0])));
    let _n3 = Proc::start_env(&args(2, Some(ports[0])), &clock.env());
    let served = |base: String| {
        let http = http.clone();
        async move {
            call(&http, Method::GET, &format!("{base}/kv/k"), "")
                .await
                .is_ok_and(|(s, b)| s == StatusCode::OK && b == "future")
        }
    };
    eventually_async("n1 applies n3's write", MESH, || served(n1.base.clone())).await;
    n1.kill_9();
    let n1 = Proc::start(&args(0, None));
    eventually_async("n1 serves k again", MESH, || served(n1.base.clone())).await;
    // Its clock did not follow the stamp an hour ahead, before or after
    // the kill: it is not fenced as ahead, and stamps with real time.
    let url = format!("{}/kv/mine", n1.base);
    let stamp = std::cell::Cell::new(0);
    eventually_async("n1 writes", VERDICT, || {
        let (http, url, stamp) = (&http, &url, &stamp);
        async move {
            let (status, body) = call(http, Method::PUT, url, "now").await.unwrap();
            let text = String::from_utf8_lossy(&body);
            assert!(!text.contains("clock_ahead_at_start"), "{text}");
            if status == StatusCode::OK {
                stamp.set(stamp_of(&body));
            }
            status == StatusCode::OK
        }
    })
    .await;
    let stamp = stamp.get();
    let real_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        stamp >> 16 <= real_ms && stamp < future,
        "n1 adopted the stamp an hour ahead: {stamp} (n3's {future})"
    );
    let intro = get_json(&http, &format!("{}/api/introspection", n1.base))
        .await
        .unwrap();
    assert_ne!(intro["clock"]["state"], "ahead_at_start", "{intro}");
}
