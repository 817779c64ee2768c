//! The cluster, end to end: real QUIC with real certificates, real sled,
//! on loopback; in-process nodes, and `hub serve` processes where a crash
//! matters. Partitions and dead peers are made by a userspace UDP relay
//! (no root, no netem). Every wait polls with a deadline.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use common::*;
use hub::membership::Status;
use hub::node::Node;

const MESH: Duration = Duration::from_secs(15);
const CONVERGE: Duration = Duration::from_secs(15);

async fn three(certs: &Certs) -> (TestNode, TestNode, TestNode) {
    three_nodes(certs, MESH).await
}

async fn shutdown(nodes: impl IntoIterator<Item = TestNode>) {
    for n in nodes {
        n.node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_on_any_node_is_readable_on_all() {
    let certs = Certs::new(&["a", "b", "c"]);
    let (a, b, c) = three(&certs).await;
    let nodes = [&a, &b, &c];
    for n in nodes {
        n.put(&format!("from/{}", n.id), &format!("written on {}", n.id))
            .await;
    }
    let took = eventually("every write on every node", CONVERGE, || {
        nodes.iter().all(|reader| {
            nodes.iter().all(|writer| {
                reader.value(&format!("from/{}", writer.id))
                    == Some(format!("written on {}", writer.id))
            })
        })
    })
    .await;
    println!("3 writes visible on 3 nodes after {took:?}");
    // And through the HTTP API of each node.
    let http = http_client();
    for n in nodes {
        let (status, body) = call(&http, Method::GET, &format!("{}/kv/from/c", n.base()), "")
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&body[..], b"written on c");
    }
    shutdown([a, b, c]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_to_same_keys_end_identical_with_equal_merkle_roots() {
    let certs = Certs::new(&["a", "b", "c"]);
    let (a, b, c) = three(&certs).await;
    const KEYS: usize = 100;
    const ROUNDS: usize = 10;
    // Every node overwrites every key, ten times, all at once.
    let write_all = |n: &TestNode| {
        let committer = n.node.committer().clone();
        let id = n.id.clone();
        async move {
            for round in 0..ROUNDS {
                let ops = (0..KEYS)
                    .map(|k| hub::store::Op::Local {
                        key: format!("shared/{k}"),
                        value: Some(format!("{id}-round{round}").into_bytes()),
                        meta: Default::default(),
                        cond: hub::store::Condition::Always,
                    })
                    .collect();
                committer.commit(ops).await.unwrap();
            }
        }
    };
    tokio::join!(write_all(&a), write_all(&b), write_all(&c));

    eventually("equal Merkle roots", CONVERGE, || {
        roots_equal(&[&a, &b, &c])
    })
    .await;
    for k in 0..KEYS {
        let key = format!("shared/{k}");
        let ea = a.node.store().get(&key).unwrap().unwrap();
        let eb = b.node.store().get(&key).unwrap().unwrap();
        let ec = c.node.store().get(&key).unwrap().unwrap();
        assert_eq!(ea, eb, "{key} differs between a and b");
        assert_eq!(ea, ec, "{key} differs between a and c");
        // The survivor is some node's last round (LWW never resurrects an
        // older round of the winner).
        let v = String::from_utf8(ea.value.unwrap()).unwrap();
        assert!(v.ends_with(&format!("round{}", ROUNDS - 1)), "{key} = {v}");
        assert_eq!(v, format!("{}-round{}", ea.version.node, ROUNDS - 1));
    }
    for n in [&a, &b, &c] {
        assert_eq!(n.node.store().summary().unwrap().entries, KEYS as u64);
    }
    shutdown([a, b, c]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_joining_through_one_seed_learns_every_peer_and_all_data() {
    let certs = Certs::new(&["a", "b", "c"]);
    let a = TestNode::start(Spec::new("a", certs.path())).await;
    let b = TestNode::start(Spec::new("b", certs.path()).join(&[a.quic()])).await;
    wait_full_mesh(&[&a, &b], MESH).await;
    a.put_many((0..300).map(|i| (format!("a/{i}"), format!("va{i}"))))
        .await;
    b.put_many((0..300).map(|i| (format!("b/{i}"), format!("vb{i}"))))
        .await;
    eventually("a and b agree", CONVERGE, || roots_equal(&[&a, &b])).await;

    // c knows only b.
    let c = TestNode::start(Spec::new("c", certs.path()).join(&[b.quic()])).await;
    let took = eventually("c learns a through b, and a learns c", MESH, || {
        c.sees_alive(&["a", "b"]) && a.sees_alive(&["b", "c"]) && b.sees_alive(&["a", "c"])
    })
    .await;
    println!("c knows every peer {took:?} after start");
    let took = eventually("c has all data", CONVERGE, || roots_equal(&[&a, &b, &c])).await;
    println!("c has all 600 keys {took:?} later");
    assert_eq!(c.node.store().summary().unwrap().entries, 600);
    assert_eq!(c.value("a/299").as_deref(), Some("va299"));
    assert_eq!(c.value("b/0").as_deref(), Some("vb0"));

    // Membership over HTTP lists every peer with its address.
    let http = http_client();
    let m = get_json(&http, &format!("{}/api/membership", c.base()))
        .await
        .unwrap();
    let listed: Vec<(&str, &str)> = m["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["node_id"].as_str().unwrap(),
                p["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(listed.len(), 2, "{m}");
    for id in ["a", "b"] {
        assert!(listed.iter().any(|(n, _)| *n == id), "{id} missing in {m}");
    }
    assert_eq!(m["alive_peers"], json!(2), "{m}");
    shutdown([a, b, c]).await;
}

/// `hub serve` args for one node of the crash test: the shared ones with a
/// short log, so a node that was down long enough needs anti-entropy.
fn crash_args(id: &str, data: &Path, certs: &Path, port: u16, join: Option<u16>) -> Vec<String> {
    let mut args = serve_args(id, data, certs, port, join);
    args.extend(["--log-retention".into(), "50".into()]);
    args
}

async fn introspect(http: &HttpClient, p: &Proc) -> Option<Value> {
    get_json(http, &format!("{}/api/introspection", p.base)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_catches_up_by_anti_entropy_and_deleted_key_stays_deleted() {
    let certs = Certs::new(&["n1", "n2", "n3"]);
    let dir = tempfile::tempdir().unwrap();
    let data = |n: &str| dir.path().join(n);
    let ports = [free_udp_port(), free_udp_port(), free_udp_port()];
    let n1 = Proc::start(&crash_args("n1", &data("n1"), certs.path(), ports[0], None));
    let n2 = Proc::start(&crash_args(
        "n2",
        &data("n2"),
        certs.path(),
        ports[1],
        Some(ports[0]),
    ));
    let mut n3 = Proc::start(&crash_args(
        "n3",
        &data("n3"),
        certs.path(),
        ports[2],
        Some(ports[0]),
    ));
    let http = http_client();
    let alive_peers = |p: &Proc| {
        let url = format!("{}/api/membership", p.base);
        let http = http.clone();
        async move {
            get_json(&http, &url)
                .await
                .map_or(0, |m| m["alive_peers"].as_u64().unwrap_or(0))
        }
    };
    eventually_async("three processes see each other", MESH, || async {
        alive_peers(&n1).await == 2 && alive_peers(&n2).await == 2 && alive_peers(&n3).await == 2
    })
    .await;

    // n3 holds "doomed" before it dies.
    let put = call(&http, Method::PUT, &format!("{}/kv/doomed", n1.base), "x").await;
    assert_eq!(put.unwrap().0, StatusCode::OK);
    eventually_async("n2 and n3 have doomed", CONVERGE, || async {
        let mut all = true;
        for p in [&n2, &n3] {
            let url = format!("{}/kv/doomed", p.base);
            all &= matches!(
                call(&http, Method::GET, &url, "").await,
                Ok((StatusCode::OK, _))
            );
        }
        all
    })
    .await;
    n3.kill_9();

    // Thousands of writes on the survivors: far more than the 50 deltas per
    // origin their logs keep, so n3 cannot be served by pulls.
    const PER_NODE: usize = 2_500;
    for (p, name) in [(&n1, "n1"), (&n2, "n2")] {
        for chunk in 0..PER_NODE / 500 {
            let batch: Vec<Value> = (chunk * 500..(chunk + 1) * 500)
                .map(|i| json!({"sensor": format!("s{i:05}"), "value": i}))
                .collect();
            let (status, body) = call(
                &http,
                Method::POST,
                &format!("{}/api/readings", p.base),
                serde_json::to_vec(&batch).unwrap(),
            )
            .await
            .unwrap();
            assert_eq!(status, StatusCode::OK, "{name}: {body:?}");
        }
    }
    let del = call(&http, Method::DELETE, &format!("{}/kv/doomed", n2.base), "").await;
    assert_eq!(del.unwrap().0, StatusCode::NO_CONTENT);
    let root_of = |v: &Option<Value>| v.as_ref().map(|v| v["merkle_root"].clone());
    eventually_async("n1 and n2 agree", CONVERGE, || async {
        let (r1, r2) = (
            root_of(&introspect(&http, &n1).await),
            root_of(&introspect(&http, &n2).await),
        );
        r1.is_some() && r1 == r2
    })
    .await;
    let expected = introspect(&http, &n1).await.unwrap();
    let expected_entries = expected["entries"].as_u64().unwrap();
    assert_eq!(expected_entries, 2 * PER_NODE as u64);
    assert_eq!(expected["tombstones"], json!(1));

    // Same directory, same QUIC address, no --join: it rejoins the peers it
    // remembers.
    let restarted = Instant::now();
    let n3 = Proc::start(&crash_args("n3", &data("n3"), certs.path(), ports[2], None));
    let took = eventually_async(
        "restarted n3 converges",
        Duration::from_secs(30),
        || async {
            root_of(&introspect(&http, &n3).await) == Some(expected["merkle_root"].clone())
        },
    )
    .await;
    println!(
        "restarted node caught up on {} missed writes in {took:?} ({:?} including process start)",
        2 * PER_NODE,
        restarted.elapsed()
    );
    let got = introspect(&http, &n3).await.unwrap();
    assert_eq!(got["entries"].as_u64().unwrap(), expected_entries);
    assert_eq!(got["tombstones"], json!(1));
    let (status, _) = call(&http, Method::GET, &format!("{}/kv/doomed", n3.base), "")
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND, "deleted key came back on n3");
    for key in ["sensors/n1/s00000", "sensors/n2/s02499"] {
        let (status, _) = call(&http, Method::GET, &format!("{}/kv/{key}", n3.base), "")
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK, "{key} missing on n3");
    }
    // The logs could not serve the catch-up: a pull was answered
    // "unavailable", and an anti-entropy session repaired the difference.
    let sync_url = format!("{}/api/sync", n3.base);
    eventually_async(
        "an unavailable pull and a repairing anti-entropy session on n3",
        CONVERGE,
        || async {
            let last = get_json(&http, &sync_url).await.unwrap_or(Value::Null);
            let Some(peers) = last["replication"]["peers"].as_object() else {
                return false;
            };
            let unavailable: u64 = peers
                .values()
                .filter_map(|p| p["pulls_answered_unavailable"].as_u64())
                .sum();
            // Counted over all sessions: a later in-sync session replaces
            // the repairing one as the "last". Either side's session may
            // be the one that repairs (n3's, or a peer's that pushes what
            // n3 lacks), whichever runs first.
            let repaired = peers.values().any(|p| {
                p["anti_entropy_entries_received"].as_u64() > Some(0)
                    || p["anti_entropy_entries_pushed"].as_u64() > Some(0)
            });
            unavailable > 0 && repaired
        },
    )
    .await;
    let last = get_json(&http, &sync_url).await.unwrap();
    println!(
        "n3's last anti-entropy: {}",
        last["replication"]["last_anti_entropy"]
    );
    eventually_async("n3 rejoined both remembered peers", MESH, || async {
        alive_peers(&n3).await == 2 && alive_peers(&n1).await == 2
    })
    .await;
    // Still deleted after the dust settles and on the other nodes.
    for p in [&n1, &n2, &n3] {
        let (status, _) = call(&http, Method::GET, &format!("{}/kv/doomed", p.base), "")
            .await
            .unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}

/// Three in-process nodes, each reached only through its own relay.
struct Relayed {
    nodes: Vec<TestNode>,
    relays: Vec<Relay>,
    cut: Cut,
    dropped: Arc<AtomicU64>,
}

impl Relayed {
    async fn start(certs: &Certs, ids: &[&str]) -> Relayed {
        let cut = Cut::default();
        let dropped = Arc::new(AtomicU64::new(0));
        let mut nodes: Vec<TestNode> = Vec::new();
        let mut relays: Vec<Relay> = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let target = Arc::new(Mutex::new(None));
            let relay = Relay::start(target.clone(), cut.clone(), dropped.clone()).await;
            let mut spec = Spec::new(id, certs.path());
            spec.advertise = Some(relay.addr);
            if i > 0 {
                spec.join = vec![relays[0].addr];
            }
            let node = TestNode::start(spec).await;
            *target.lock().unwrap() = Some(node.quic());
            nodes.push(node);
            relays.push(relay);
        }
        let refs: Vec<&TestNode> = nodes.iter().collect();
        wait_full_mesh(&refs, MESH).await;
        Relayed {
            nodes,
            relays,
            cut,
            dropped,
        }
    }

    fn port(&self, i: usize) -> u16 {
        self.nodes[i].quic().port()
    }

    async fn shutdown(self) {
        self.cut.heal();
        shutdown(self.nodes).await;
        drop(self.relays);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_peer_does_not_delay_replication_between_live_peers() {
    let certs = Certs::new(&["a", "b", "c"]);
    let r = Relayed::start(&certs, &["a", "b", "c"]).await;
    let (a, b, c) = (&r.nodes[0], &r.nodes[1], &r.nodes[2]);
    // c dies silently: no goodbye, no close, its datagrams vanish. The
    // others still believe it alive for a while and keep pushing to it.
    r.cut.isolate(r.port(2));
    assert!(a.sees_alive(&["b", "c"]));

    const BURST: u64 = 2_000;
    let start = Instant::now();
    let mut writes = tokio::task::JoinSet::new();
    for w in 0..BURST / 20 {
        let committer = a.node.committer().clone();
        writes.spawn(async move {
            let ops = (0..20)
                .map(|i| hub::store::Op::Local {
                    key: format!("burst/{w}/{i}"),
                    value: Some(b"v".to_vec()),
                    meta: Default::default(),
                    cond: hub::store::Condition::Always,
                })
                .collect();
            committer.commit(ops).await.unwrap();
        });
    }
    while let Some(r) = writes.join_next().await {
        r.unwrap();
    }
    let written = start.elapsed();
    let seq = a.node.store().version_vector().get(&a.id);
    assert!(seq >= BURST);
    eventually("b has the whole burst", Duration::from_secs(5), || {
        b.node.store().version_vector().get(&a.id) >= seq
    })
    .await;
    let lag = start.elapsed();
    println!(
        "dead peer: burst of {BURST} written on a in {written:?}, all on b {lag:?} after the first write ({:?} after the last ack)",
        lag - written
    );
    assert!(lag < Duration::from_secs(5));
    assert_eq!(c.value("burst/0/0"), None, "c was supposed to be cut off");
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_heals_and_both_sides_converge() {
    let certs = Certs::new(&["a", "b", "c"]);
    let r = Relayed::start(&certs, &["a", "b", "c"]).await;
    let (a, b, c) = (&r.nodes[0], &r.nodes[1], &r.nodes[2]);
    a.put("before", "everyone").await;
    eventually("pre-partition write everywhere", CONVERGE, || {
        roots_equal(&[a, b, c])
    })
    .await;

    // {a} | {b, c}
    r.cut
        .partition(&[(&[r.port(0)], 1), (&[r.port(1), r.port(2)], 2)]);
    let took = eventually(
        "both sides notice the partition",
        Duration::from_secs(15),
        || {
            !a.sees_alive(&["b"])
                && !a.sees_alive(&["c"])
                && !b.sees_alive(&["a"])
                && !c.sees_alive(&["a"])
        },
    )
    .await;
    println!("partition suspected after {took:?}");
    a.put_many((0..200).map(|i| (format!("left/{i}"), "a".to_string())))
        .await;
    b.put_many((0..200).map(|i| (format!("right/{i}"), "b".to_string())))
        .await;
    // The same key on both sides; b writes last, so (absent clock games) its
    // version is greater, but we compare versions rather than trust that.
    a.put("contested", "from a").await;
    c.put("contested", "from c").await;
    eventually("b's writes reach c on the same side", CONVERGE, || {
        c.value("right/199").is_some() && b.value("contested").as_deref() == Some("from c")
    })
    .await;
    assert_eq!(a.value("right/0"), None, "write crossed the partition");
    assert_eq!(b.value("left/0"), None, "write crossed the partition");
    assert_eq!(c.value("left/199"), None, "write crossed the partition");
    assert_eq!(a.value("contested").as_deref(), Some("from a"));
    let va = a.node.store().get("contested").unwrap().unwrap().version;
    let vc = c.node.store().get("contested").unwrap().unwrap().version;
    let winner = if va > vc { "from a" } else { "from c" };
    assert!(r.dropped.load(std::sync::atomic::Ordering::Relaxed) > 0);

    // Hold the partition until both sides declare the other dead and the
    // QUIC connections across it have timed out, so healing needs fresh
    // handshakes rather than retransmissions.
    let relay_of = |i: usize| r.relays[i].addr;
    let connected_to = |n: &TestNode, to: SocketAddr| {
        n.node
            .cluster_view()
            .unwrap()
            .transport
            .peers
            .iter()
            .any(|p| p.addr == to && p.connected)
    };
    let took = eventually(
        "the sides declare each other dead and drop their connections",
        Duration::from_secs(30),
        || {
            a.peers_with(Status::Dead).len() == 2
                && b.peers_with(Status::Dead) == ["a"]
                && c.peers_with(Status::Dead) == ["a"]
                && !connected_to(a, relay_of(1))
                && !connected_to(a, relay_of(2))
                && !connected_to(b, relay_of(0))
                && !connected_to(c, relay_of(0))
        },
    )
    .await;
    println!("partition: dead and disconnected after a further {took:?}");
    assert!(b.sees_alive(&["c"]) && c.sees_alive(&["b"]));

    r.cut.heal();
    let healed = Instant::now();
    eventually("membership heals", Duration::from_secs(30), || {
        a.sees_alive(&["b", "c"]) && b.sees_alive(&["a", "c"]) && c.sees_alive(&["a", "b"])
    })
    .await;
    eventually("both sides converge", Duration::from_secs(30), || {
        roots_equal(&[a, b, c])
    })
    .await;
    println!("converged {:?} after heal", healed.elapsed());
    for n in [a, b, c] {
        assert_eq!(n.value("contested").as_deref(), Some(winner), "on {}", n.id);
        assert_eq!(n.value("left/199").as_deref(), Some("a"));
        assert_eq!(n.value("right/0").as_deref(), Some("b"));
        assert_eq!(n.node.store().summary().unwrap().entries, 402);
    }
    r.shutdown().await;
}

/// A certs dir for a node `id` holding `cert_dir`'s `src` certificate and
/// key under `id`'s file names, with `ca_dir`'s CA certificate.
fn certs_dir_with(
    ca_dir: &std::path::Path,
    cert_dir: &std::path::Path,
    src: &str,
    id: &str,
) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(ca_dir.join("ca.pem"), d.path().join("ca.pem")).unwrap();
    for ext in ["pem", "key"] {
        std::fs::copy(
            cert_dir.join(format!("{src}.{ext}")),
            d.path().join(format!("{id}.{ext}")),
        )
        .unwrap();
    }
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_with_certificate_from_another_ca_gets_no_data_and_sends_none() {
    let certs = Certs::new(&["a", "b"]);
    let other = Certs::new(&["x", "y"]);
    let a = TestNode::start(Spec::new("a", certs.path())).await;
    let b = TestNode::start(Spec::new("b", certs.path()).join(&[a.quic()])).await;
    wait_full_mesh(&[&a, &b], MESH).await;
    a.put("secret", "cluster only").await;

    // x trusts the cluster CA (it is public) but holds a certificate from
    // another CA: it gets as far as presenting it. y is wholly foreign.
    let x_certs = certs_dir_with(certs.path(), other.path(), "x", "x");
    let x = TestNode::start(Spec::new("x", x_certs.path()).join(&[a.quic()])).await;
    let y = TestNode::start(Spec::new("y", other.path()).join(&[b.quic()])).await;
    x.put("rogue/x", "from x").await;
    y.put("rogue/y", "from y").await;

    eventually("a refuses x's certificate", MESH, || {
        a.rejections("untrusted") >= 1 && x.rejections("refused_by_peer") >= 1
    })
    .await;
    eventually("y refuses b's certificate", MESH, || {
        y.rejections("untrusted") >= 1
    })
    .await;

    // A marker written after the rogues started reaches b: replication
    // works, and nothing of the rogues came with it.
    a.put("marker", "after").await;
    eventually("marker on b", CONVERGE, || b.value("marker").is_some()).await;
    for n in [&a, &b] {
        let members = n.node.cluster_view().unwrap().members.clone();
        assert!(
            members
                .iter()
                .all(|m| m.node_id.as_str() != "x" && m.node_id.as_str() != "y"),
            "{} lists a rogue: {members:?}",
            n.id
        );
        assert_eq!(n.value("rogue/x"), None);
        assert_eq!(n.value("rogue/y"), None);
    }
    for r in [&x, &y] {
        assert!(r.peers_with(Status::Alive).is_empty(), "{} has peers", r.id);
        assert_eq!(r.value("secret"), None);
        assert_eq!(r.value("marker"), None);
        assert_eq!(r.node.store().summary().unwrap().entries, 1);
    }
    shutdown([a, b, x, y]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_presenting_another_nodes_id_is_refused() {
    let certs = Certs::new(&["a", "b", "mallory"]);

    // Configured as "b" with a (CA-signed) certificate naming "mallory":
    // refused before it touches the network.
    let forged = certs_dir_with(certs.path(), certs.path(), "mallory", "b");
    let dir = tempfile::tempdir().unwrap();
    let err = Node::start(
        Spec::new("b", forged.path())
            .config(&dir.path().join("data"))
            .unwrap(),
    )
    .await
    .err()
    .expect("a node must not start under another node's name");
    let msg = err.to_string();
    assert!(
        msg.contains("mallory") && msg.contains("\"b\""),
        "unclear error: {msg}"
    );

    // b is a real process; a knows it at its address.
    let a = TestNode::start(Spec::new("a", certs.path())).await;

    // Mallory, with its own genuine certificate, says hello as "b": the
    // claim must match the certificate, so a refuses and welcomes nobody.
    let identity = hub::certs::Identity::load(certs.path(), &id("mallory")).unwrap();
    let (raw, mut raw_rx) = hub::transport::Transport::<hub::cluster::Message>::bind(
        hub::transport::TransportConfig::new(identity, "127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let hello = hub::cluster::Message::Membership(hub::membership::Msg::Hello {
        member: hub::membership::MemberInfo {
            id: id("b"),
            addr: raw.local_addr().unwrap(),
            incarnation: u64::MAX / 2,
            status: Status::Alive,
            http: None,
            head: 0,
        },
    });
    raw.send(a.quic(), Some(id("a")), &hello).unwrap();
    eventually("a refuses the false claim", MESH, || {
        a.node.cluster_view().unwrap().membership.refused >= 1
    })
    .await;
    assert!(a.node.cluster_view().unwrap().members.is_empty());
    while let Ok(ev) = raw_rx.try_recv() {
        assert!(
            !matches!(ev, hub::transport::Incoming::Message { .. }),
            "mallory got {ev:?}"
        );
    }
    raw.close().await;
    let b_port = free_udp_port();
    let data = tempfile::tempdir().unwrap();
    let mut b = Proc::start(&serve_args(
        "b",
        data.path(),
        certs.path(),
        b_port,
        Some(a.quic().port()),
    ));
    eventually("a sees b", MESH, || a.sees_alive(&["b"])).await;
    a.put("secret", "for b only").await;
    // b dies; mallory takes its address. a keeps probing "b" there and must
    // refuse what answers.
    b.kill_9();
    let mut spec = Spec::new("mallory", certs.path());
    spec.listen = format!("127.0.0.1:{b_port}").parse().unwrap();
    let mallory = TestNode::start(spec).await;
    // (a's connection to the dead b first has to reach QUIC's idle timeout.)
    let took = eventually(
        "a refuses mallory posing as b",
        Duration::from_secs(25),
        || a.rejections("wrong_node_id") >= 1,
    )
    .await;
    println!("impostor on b's address refused {took:?} after it started");
    a.put("after", "b died").await;
    // a has not taken mallory for b, nor learnt of mallory at all.
    let view = a.node.cluster_view().unwrap();
    assert!(
        view.members.iter().all(|m| m.node_id.as_str() != "mallory"
            && !(m.node_id.as_str() == "b" && m.status == Status::Alive)),
        "{:?}",
        view.members
    );
    assert_eq!(mallory.value("secret"), None);
    assert_eq!(mallory.value("after"), None);
    assert!(mallory.peers_with(Status::Alive).is_empty());
    shutdown([a, mallory]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_on_the_quic_port_do_not_hurt_the_node() {
    let certs = Certs::new(&["a", "b"]);
    let a = TestNode::start(Spec::new("a", certs.path())).await;
    let b = TestNode::start(Spec::new("b", certs.path()).join(&[a.quic()])).await;
    wait_full_mesh(&[&a, &b], MESH).await;

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let target: SocketAddr = a.quic();
    for i in 0..3_000 {
        let len = rng.gen_range(1..1_400);
        let mut pkt: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        // Some look like QUIC long-header Initial packets of version 1.
        if i % 3 == 0 && len > 6 {
            pkt[0] = 0xc0 | (pkt[0] & 0x0f);
            pkt[1..5].copy_from_slice(&1u32.to_be_bytes());
        }
        let _ = sock.send_to(&pkt, target);
    }

    a.put("after-garbage/a", "1").await;
    b.put("after-garbage/b", "2").await;
    eventually("replication both ways after garbage", CONVERGE, || {
        b.value("after-garbage/a").is_some() && a.value("after-garbage/b").is_some()
    })
    .await;
    assert!(a.sees_alive(&["b"]) && b.sees_alive(&["a"]));
    let (status, _) = call(
        &http_client(),
        Method::GET,
        &format!("{}/health", a.base()),
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    shutdown([a, b]).await;
}
