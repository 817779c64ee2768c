//! Write and read quorums end to end: `hub serve` processes (kill -9 is a
//! real crash), real QUIC with certificates, partitions through userspace
//! relays, and in-process nodes where a replica must be stale by design.

mod common;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use hub::client::Reply;
use hub::model::{Entry, Hlc, Version};
use hub::store::Op;
use hyper::{Method, StatusCode};
use serde_json::Value;

const MESH: Duration = Duration::from_secs(20);
const CONVERGE: Duration = Duration::from_secs(20);
/// The quorum timeout the processes run with.
const QUORUM_TIMEOUT: Duration = Duration::from_millis(1_000);

fn acks(r: &Reply) -> Option<u64> {
    r.headers
        .get("x-hub-acks")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn error_code(r: &Reply) -> String {
    serde_json::from_slice::<Value>(&r.body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
        .unwrap_or_default()
}

async fn send(http: &HttpClient, method: Method, url: &str, body: &str) -> Reply {
    http.request(method, url, body.to_string(), Some("application/json"))
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

async fn value_at(http: &HttpClient, base: &str, key: &str) -> Option<String> {
    let r = http
        .request(Method::GET, &format!("{base}/kv/{key}"), "", None)
        .await
        .ok()?;
    (r.status == StatusCode::OK).then(|| String::from_utf8_lossy(&r.body).into_owned())
}

/// One `hub serve` process on a fixed QUIC port and data directory (so it
/// can be restarted), reached by its peers through a relay when the test
/// cuts links (a relay does not survive its node's restart: the kernel's
/// "port unreachable" ends its forwarding).
struct Member {
    id: String,
    data: std::path::PathBuf,
    port: u16,
    relay: Option<Relay>,
    proc: Option<Proc>,
}

struct Procs {
    members: Vec<Member>,
    cut: Cut,
    certs: Certs,
    _dir: tempfile::TempDir,
}

impl Procs {
    async fn start(n: usize) -> Procs {
        Procs::start_with(n, false).await
    }

    /// `n` processes; `relayed`: each behind a relay, so `cut` works.
    async fn start_with(n: usize, relayed: bool) -> Procs {
        let ids: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let certs = Certs::new(&id_refs);
        let dir = tempfile::tempdir().unwrap();
        let cut = Cut::default();
        let dropped = Arc::new(AtomicU64::new(0));
        let mut members = Vec::new();
        for id in &ids {
            let port = free_udp_port();
            let target = Arc::new(Mutex::new(Some(
                format!("127.0.0.1:{port}").parse().unwrap(),
            )));
            let relay = match relayed {
                true => Some(Relay::start(target, cut.clone(), dropped.clone()).await),
                false => None,
            };
            members.push(Member {
                id: id.clone(),
                data: dir.path().join(id),
                port,
                relay,
                proc: None,
            });
        }
        let mut p = Procs {
            members,
            cut,
            certs,
            _dir: dir,
        };
        for i in 0..n {
            p.launch(i);
        }
        p.wait_mesh().await;
        p
    }

    /// Where peers reach member `i`.
    fn peer_addr(&self, i: usize) -> String {
        let m = &self.members[i];
        match &m.relay {
            Some(r) => r.addr.to_string(),
            None => format!("127.0.0.1:{}", m.port),
        }
    }

    fn args(&self, i: usize) -> Vec<String> {
        let m = &self.members[i];
        let mut args: Vec<String> = vec![
            "--node-id".into(),
            m.id.clone(),
            "--http".into(),
            "127.0.0.1:0".into(),
            "--no-sensors".into(),
            "--data-dir".into(),
            m.data.display().to_string(),
            "--certs".into(),
            self.certs.path().display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{}", m.port),
            "--advertise".into(),
            self.peer_addr(i),
            "--quorum-timeout".into(),
            format!("{}ms", QUORUM_TIMEOUT.as_millis()),
        ];
        if i > 0 {
            args.push("--join".into());
            args.push(self.peer_addr(0));
        }
        args
    }

    fn launch(&mut self, i: usize) {
        let args = self.args(i);
        self.members[i].proc = Some(Proc::start(&args));
    }

    fn base(&self, i: usize) -> String {
        self.members[i].proc.as_ref().unwrap().base.clone()
    }

    fn kill_9(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].proc.take() {
            p.kill_9();
        }
    }

    async fn alive_peers(&self, http: &HttpClient, i: usize) -> u64 {
        let Some(p) = &self.members[i].proc else {
            return 0;
        };
        get_json(http, &format!("{}/api/membership", p.base))
            .await
            .map_or(0, |m| m["alive_peers"].as_u64().unwrap_or(0))
    }

    /// Every running process sees every other running one alive.
    async fn wait_mesh(&self) {
        let http = http_client();
        let running: Vec<usize> = (0..self.members.len())
            .filter(|i| self.members[*i].proc.is_some())
            .collect();
        let want = running.len() as u64 - 1;
        eventually_async("running processes see each other", MESH, || async {
            for &i in &running {
                if self.alive_peers(&http, i).await != want {
                    return false;
                }
            }
            true
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_write_survives_kill_9_of_the_node_that_took_it() {
    let mut p = Procs::start(3).await;
    let http = http_client();
    let url = format!("{}/kv/precious?w=quorum", p.base(0));
    let r = send(&http, Method::PUT, &url, "kept").await;
    // Kill at once: the write must already be durable on another replica.
    p.kill_9(0);
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(
        acks(&r).is_some_and(|a| a >= 2),
        "x-hub-acks {:?}",
        acks(&r)
    );
    // Power loss of the survivors too: what they acknowledged was on disk.
    p.kill_9(1);
    p.kill_9(2);
    p.launch(1);
    p.launch(2);
    let on_one_at_restart = [
        value_at(&http, &p.base(1), "precious").await,
        value_at(&http, &p.base(2), "precious").await,
    ];
    assert!(
        on_one_at_restart
            .iter()
            .any(|v| v.as_deref() == Some("kept")),
        "no survivor held the acknowledged write when it restarted: {on_one_at_restart:?}"
    );
    p.wait_mesh().await;
    eventually_async("both survivors serve the write", CONVERGE, || async {
        value_at(&http, &p.base(1), "precious").await.as_deref() == Some("kept")
            && value_at(&http, &p.base(2), "precious").await.as_deref() == Some("kept")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_off_node_answers_503_to_w_quorum_within_the_timeout_while_w_1_succeeds_and_converges()
{
    let p = Procs::start_with(3, true).await;
    let http = http_client();
    p.cut.isolate(p.members[0].port);
    let started = Instant::now();
    let r = send(
        &http,
        Method::PUT,
        &format!("{}/kv/q?w=quorum", p.base(0)),
        "lonely",
    )
    .await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert_eq!(error_code(&r), "quorum_unavailable");
    assert_eq!(acks(&r), Some(1));
    let msg = String::from_utf8_lossy(&r.body).to_string();
    assert!(msg.contains("1 of 3"), "{msg}");
    assert!(
        took >= QUORUM_TIMEOUT && took < QUORUM_TIMEOUT + Duration::from_secs(2),
        "503 after {took:?}, timeout {QUORUM_TIMEOUT:?}"
    );
    // w=1 is today's path: answered at once by this node alone.
    let r = send(
        &http,
        Method::PUT,
        &format!("{}/kv/one?w=1", p.base(0)),
        "alone",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(acks(&r), Some(1));
    assert_eq!(
        value_at(&http, &p.base(1), "one").await,
        None,
        "the cut leaked"
    );
    p.cut.heal();
    eventually_async("the w=1 write reaches every node", CONVERGE, || async {
        let mut all = true;
        for i in 0..3 {
            all &= value_at(&http, &p.base(i), "one").await.as_deref() == Some("alone");
        }
        all
    })
    .await;
    // The write refused with 503 was not undone: it appears too (the
    // documented caveat, as in Dynamo and Cassandra).
    for i in 1..3 {
        assert_eq!(
            value_at(&http, &p.base(i), "q").await.as_deref(),
            Some("lonely")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w_all_fails_with_a_replica_down_and_succeeds_once_it_is_back() {
    let mut p = Procs::start(3).await;
    let http = http_client();
    let r = send(
        &http,
        Method::PUT,
        &format!("{}/kv/a?w=all", p.base(0)),
        "1",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(acks(&r), Some(3));
    p.kill_9(2);
    let r = send(
        &http,
        Method::PUT,
        &format!("{}/kv/a?w=all", p.base(0)),
        "2",
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert_eq!(error_code(&r), "quorum_unavailable");
    assert_eq!(acks(&r), Some(2));
    // A quorum (2 of 3) is still there.
    let r = send(
        &http,
        Method::PUT,
        &format!("{}/kv/a?w=quorum", p.base(0)),
        "3",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    p.launch(2);
    p.wait_mesh().await;
    let last = Mutex::new(None);
    eventually_async(
        "w=all succeeds with every replica back",
        CONVERGE,
        || async {
            let r = send(
                &http,
                Method::PUT,
                &format!("{}/kv/a?w=all", p.base(0)),
                "4",
            )
            .await;
            *last.lock().unwrap() = Some((r.status, acks(&r)));
            r.status == StatusCode::OK
        },
    )
    .await;
    assert_eq!(*last.lock().unwrap(), Some((StatusCode::OK, Some(3))));
    // Acknowledged by all three: readable on the restarted one at once.
    assert_eq!(value_at(&http, &p.base(2), "a").await.as_deref(), Some("4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_w_and_r_values_are_refused_and_change_nothing() {
    let p = Procs::start(2).await;
    let http = http_client();
    let base = p.base(0);
    for (method, url) in [
        (Method::PUT, format!("{base}/kv/k?w=2")),
        (Method::POST, format!("{base}/kv/k?w=most")),
        (Method::DELETE, format!("{base}/kv/k?w=")),
        (Method::GET, format!("{base}/kv/k?r=everyone")),
    ] {
        let r = send(&http, method.clone(), &url, "v").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{method} {url}");
        assert_eq!(error_code(&r), "bad_query", "{method} {url}");
    }
    let r = send(
        &http,
        Method::POST,
        &format!("{base}/api/readings?w=3"),
        r#"[{"sensor":"t","value":1}]"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        value_at(&http, &base, "k").await,
        None,
        "a refused write changed something"
    );
    let state = get_json(&http, &format!("{base}/api/state")).await.unwrap();
    assert_eq!(
        state,
        serde_json::json!({}),
        "a refused batch changed something"
    );
    // The same requests with good values work, readings included.
    let r = send(
        &http,
        Method::POST,
        &format!("{base}/api/readings?w=quorum"),
        r#"[{"sensor":"t","value":1}]"#,
    )
    .await;
    assert_eq!(
        (r.status, acks(&r)),
        (StatusCode::OK, Some(2)),
        "{:?}",
        r.body
    );
    let r = send(&http, Method::DELETE, &format!("{base}/kv/k?w=all"), "").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

// ------------------------------------------------------------ read quorums

/// Three in-process nodes with anti-entropy effectively off: an entry
/// merged into some stores (as anti-entropy would) is not pushed or pulled
/// (those carry logged deltas only), so the others stay stale by design
/// until a quorum read repairs them.
async fn stale_by_design(certs: &Certs) -> Vec<TestNode> {
    let spec = |id| {
        let mut s = Spec::new(id, certs.path());
        s.anti_entropy_interval_ms = 3_600_000;
        s
    };
    let a = TestNode::start(spec("a")).await;
    let b = TestNode::start(spec("b").join(&[a.quic()])).await;
    let c = TestNode::start(spec("c").join(&[a.quic()])).await;
    wait_full_mesh(&[&a, &b, &c], MESH).await;
    let nodes = vec![a, b, c];
    // The anti-entropy each node runs shortly after a peer connects must be
    // over before a test makes a replica stale.
    eventually("post-connect anti-entropy done", MESH, || {
        nodes.iter().all(|n| {
            let view = n.node.cluster_view().unwrap();
            view.replication.anti_entropy_active == 0
                && view.replication.peers.len() == 2
                && view
                    .replication
                    .peers
                    .values()
                    .all(|p| p.anti_entropy_runs >= 1)
        })
    })
    .await;
    nodes
}

/// Merges `key = value` at `hlc` into `node`'s store, durably.
async fn merge(node: &TestNode, key: &str, value: &str, hlc: Hlc) {
    let entry = Entry {
        version: Version { hlc, node: id("b") },
        value: Some(value.as_bytes().to_vec()),
        meta: Default::default(),
    };
    let op = Op::Entry {
        key: key.into(),
        entry,
    };
    node.node.committer().commit(vec![op]).await.unwrap();
}

fn read_repairs_received(node: &TestNode) -> u64 {
    let view = node.node.cluster_view().unwrap();
    view.replication
        .peers
        .values()
        .map(|p| p.read_repairs_received)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_quorum_on_a_stale_node_answers_the_newest_and_repairs_the_stale_replicas() {
    let certs = Certs::new(&["a", "b", "c"]);
    let nodes = stale_by_design(&certs).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let http = http_client();
    c.put("k", "old").await;
    eventually("everyone has the old value", CONVERGE, || {
        nodes.iter().all(|n| n.value("k").as_deref() == Some("old"))
    })
    .await;
    let newer = Hlc::new(hub::store::commit::wall_ms() + 1_000, 0);
    merge(a, "k", "new", newer).await;
    merge(b, "k", "new", newer).await;
    assert_eq!(c.value("k").as_deref(), Some("old"), "c must be stale");

    // r=1 is the local replica, stale.
    let url = |r: &str| format!("{}/kv/k?r={r}", c.base());
    let local = send(&http, Method::GET, &url("1"), "").await;
    assert_eq!(
        (local.status, &local.body[..]),
        (StatusCode::OK, &b"old"[..])
    );
    assert_eq!(acks(&local), Some(1));

    let r = send(&http, Method::GET, &url("quorum"), "").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(&r.body[..], b"new");
    assert!(acks(&r).is_some_and(|n| n >= 2), "{:?}", acks(&r));
    let version = r.headers.get("x-hub-version").unwrap().to_str().unwrap();
    assert_eq!(version, format!("{}@b", newer.0));
    // c's own replica is repaired.
    eventually("c is repaired", CONVERGE, || {
        c.value("k").as_deref() == Some("new")
    })
    .await;

    // A stale peer is repaired too: make a and c stale, read r=all on b.
    let newest = Hlc::new(hub::store::commit::wall_ms() + 2_000, 0);
    merge(b, "k", "newest", newest).await;
    let r = send(&http, Method::GET, &format!("{}/kv/k?r=all", b.base()), "").await;
    assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"newest"[..]));
    assert_eq!(acks(&r), Some(3));
    eventually("a and c are repaired by b", CONVERGE, || {
        a.value("k").as_deref() == Some("newest") && c.value("k").as_deref() == Some("newest")
    })
    .await;
    eventually("the repairs are counted", CONVERGE, || {
        read_repairs_received(a) >= 1 && read_repairs_received(c) >= 1
    })
    .await;
    for n in nodes {
        n.node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_quorum_404s_for_a_newest_tombstone_or_a_key_nobody_has() {
    let certs = Certs::new(&["a", "b", "c"]);
    let nodes = stale_by_design(&certs).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let http = http_client();
    let r = send(
        &http,
        Method::GET,
        &format!("{}/kv/nobody?r=all", a.base()),
        "",
    )
    .await;
    assert_eq!((r.status, acks(&r)), (StatusCode::NOT_FOUND, Some(3)));
    // a has a value; b and c a newer tombstone.
    a.put("gone", "v").await;
    eventually("everyone has the value", CONVERGE, || {
        nodes.iter().all(|n| n.value("gone").is_some())
    })
    .await;
    let tombstone = Entry {
        version: Version {
            hlc: Hlc::new(hub::store::commit::wall_ms() + 1_000, 0),
            node: id("b"),
        },
        value: None,
        meta: Default::default(),
    };
    for n in [b, c] {
        let op = Op::Entry {
            key: "gone".into(),
            entry: tombstone.clone(),
        };
        n.node.committer().commit(vec![op]).await.unwrap();
    }
    let r = send(
        &http,
        Method::GET,
        &format!("{}/kv/gone?r=quorum", a.base()),
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{:?}", r.body);
    eventually("a's replica gets the tombstone", CONVERGE, || {
        a.value("gone").is_none()
    })
    .await;
    for n in nodes {
        n.node.shutdown().await;
    }
}
