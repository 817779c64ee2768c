//! Real QUIC on loopback with real certificates made by `hub::certs`.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hub::certs::{self, Identity};
use hub::model::NodeId;
use hub::transport::{
    codes, tls, HandshakeCounters, Incoming, SendError, Transport, TransportConfig,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::Receiver;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Msg {
    Text(String),
    Seq(u32),
}

const DEADLINE: Duration = Duration::from_secs(5);

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

/// A CA in `dir` and certificates for `ids`.
fn cluster(dir: &Path, ids: &[&str]) -> Vec<Identity> {
    certs::init_ca(dir).unwrap();
    ids.iter()
        .map(|n| {
            certs::issue(dir, &id(n), &[], &[]).unwrap();
            Identity::load(dir, &id(n)).unwrap()
        })
        .collect()
}

fn config(identity: Identity, listen: SocketAddr) -> TransportConfig {
    let mut c = TransportConfig::new(identity, listen);
    c.connect_timeout = Duration::from_millis(500);
    c.backoff_min = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(200);
    c
}

type Node = (Transport<Msg>, Receiver<Incoming<Msg>>);

async fn node(identity: &Identity) -> Node {
    Transport::bind(config(identity.clone(), "127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap()
}

fn addr(n: &Node) -> SocketAddr {
    n.0.local_addr().unwrap()
}

/// The next message (skipping connection events), or None at the deadline.
async fn next_msg(rx: &mut Receiver<Incoming<Msg>>, within: Duration) -> Option<(NodeId, Msg)> {
    let end = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(end, rx.recv()).await {
            Ok(Some(Incoming::Message { from, msg, .. })) => return Some((from, msg)),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return None,
        }
    }
}

/// Polls `f` until true or the deadline.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn rejections(t: &Transport<Msg>, reason: &str) -> u64 {
    t.stats()
        .handshake_rejections
        .get(reason)
        .copied()
        .unwrap_or(0)
}

#[tokio::test]
async fn two_nodes_exchange_messages_both_ways_with_certified_identities() {
    let d = tempfile::tempdir().unwrap();
    let ids = cluster(d.path(), &["a", "b"]);
    let mut a = node(&ids[0]).await;
    let mut b = node(&ids[1]).await;

    a.0.send(addr(&b), Some(id("b")), &Msg::Text("hi b".into()))
        .unwrap();
    assert_eq!(
        next_msg(&mut b.1, DEADLINE).await,
        Some((id("a"), Msg::Text("hi b".into())))
    );
    b.0.send(addr(&a), None, &Msg::Text("hi a".into())).unwrap();
    assert_eq!(
        next_msg(&mut a.1, DEADLINE).await,
        Some((id("b"), Msg::Text("hi a".into())))
    );
    // Order is kept on a peer's stream.
    for i in 0..100 {
        a.0.send(addr(&b), Some(id("b")), &Msg::Seq(i)).unwrap();
    }
    for i in 0..100 {
        assert_eq!(
            next_msg(&mut b.1, DEADLINE).await,
            Some((id("a"), Msg::Seq(i)))
        );
    }
    let s = a.0.stats();
    let pb = s.peers.iter().find(|p| p.addr == addr(&b)).unwrap();
    assert!(pb.connected && pb.frames_sent >= 101 && pb.node_id == Some(id("b")));
    assert_eq!(s.handshake_rejections.values().sum::<u64>(), 0);
    serde_json::to_string(&s).unwrap();
    a.0.close().await;
    b.0.close().await;
}

#[tokio::test]
async fn node_with_certificate_from_another_ca_is_refused_both_ways() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let ids = cluster(d1.path(), &["a", "b"]);
    // The cluster CA certificate is public: the rogue trusts it, so it
    // accepts a's server certificate and gets as far as presenting its own.
    let rogue = Identity {
        ca: ids[0].ca.clone(),
        ..cluster(d2.path(), &["x"]).remove(0)
    };
    let mut a = node(&ids[0]).await;
    let b = node(&ids[1]).await;
    let mut x = node(&rogue).await;

    // x dials a: a refuses x's client certificate; x learns it was refused.
    x.0.send(addr(&a), None, &Msg::Text("from rogue".into()))
        .unwrap();
    eventually("a refuses x's certificate", || {
        rejections(&a.0, "untrusted") >= 1
    })
    .await;
    eventually("x sees the refusal", || {
        rejections(&x.0, "refused_by_peer") >= 1
    })
    .await;
    // a dials x: a refuses x's server certificate.
    a.0.send(addr(&x), None, &Msg::Text("to rogue".into()))
        .unwrap();
    eventually("a refuses x as server", || {
        rejections(&a.0, "untrusted") >= 2
    })
    .await;
    eventually("a's dial to x failed", || {
        a.0.stats()
            .peers
            .iter()
            .any(|p| p.addr == addr(&x) && p.connect_failures >= 1)
    })
    .await;

    // A marker from a legitimate peer arrives first: nothing from x got through.
    b.0.send(addr(&a), Some(id("a")), &Msg::Text("marker".into()))
        .unwrap();
    assert_eq!(
        next_msg(&mut a.1, DEADLINE).await,
        Some((id("b"), Msg::Text("marker".into())))
    );
    // x got neither a message nor even a verified connection event.
    while let Ok(ev) = x.1.try_recv() {
        assert!(!matches!(ev, Incoming::Message { .. }), "rogue got {ev:?}");
    }
    assert!(!a.0.stats().peers.iter().any(|p| p.node_id == Some(id("x"))));
}

#[tokio::test]
async fn dialing_a_node_that_presents_another_id_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let ids = cluster(d.path(), &["a", "b", "c"]);
    let a = node(&ids[0]).await;
    let b = node(&ids[1]).await;
    let mut c = node(&ids[2]).await;

    // a believes b lives at c's address.
    a.0.send(addr(&c), Some(id("b")), &Msg::Text("for b".into()))
        .unwrap();
    eventually("wrong id refused", || {
        rejections(&a.0, "wrong_node_id") >= 1
    })
    .await;
    let err =
        a.0.stats()
            .peers
            .into_iter()
            .find(|p| p.addr == addr(&c))
            .and_then(|p| p.last_error)
            .unwrap_or_default();
    assert!(err.contains("expected \"b\""), "unclear reason: {err}");

    b.0.send(addr(&c), Some(id("c")), &Msg::Text("marker".into()))
        .unwrap();
    assert_eq!(
        next_msg(&mut c.1, DEADLINE).await,
        Some((id("b"), Msg::Text("marker".into())))
    );
    // Once a expects the right id, the frames queued for "b" are not delivered to c.
    a.0.send(addr(&c), Some(id("c")), &Msg::Text("for c".into()))
        .unwrap();
    assert_eq!(
        next_msg(&mut c.1, DEADLINE).await,
        Some((id("a"), Msg::Text("for c".into())))
    );
}

#[tokio::test]
async fn garbage_datagrams_do_not_hurt_the_node() {
    let d = tempfile::tempdir().unwrap();
    let ids = cluster(d.path(), &["a", "b"]);
    let mut a = node(&ids[0]).await;
    let mut b = node(&ids[1]).await;

    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for i in 0..300usize {
        let len = [1, 20, 100, 1200, 1350, 1500][i % 6];
        let buf: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        // Also datagrams that look like QUIC long-header Initial packets.
        let mut buf = buf;
        if i % 2 == 0 {
            buf[0] = 0xc0 | (buf[0] & 0x0f);
            if buf.len() > 5 {
                buf[1..5].copy_from_slice(&1u32.to_be_bytes());
            }
        }
        sock.send_to(&buf, addr(&a)).unwrap();
    }

    b.0.send(addr(&a), Some(id("a")), &Msg::Seq(1)).unwrap();
    assert_eq!(
        next_msg(&mut a.1, DEADLINE).await,
        Some((id("b"), Msg::Seq(1)))
    );
    a.0.send(addr(&b), Some(id("b")), &Msg::Seq(2)).unwrap();
    assert_eq!(
        next_msg(&mut b.1, DEADLINE).await,
        Some((id("a"), Msg::Seq(2)))
    );
}

/// A raw connection to `to` authenticated as `identity`, for writing bytes
/// the transport itself would never send.
async fn raw_connection(identity: &Identity, to: SocketAddr, name: &str) -> quinn::Connection {
    let cfg = tls::quic_client_config(
        identity,
        Arc::new(HandshakeCounters::default()),
        Arc::new(quinn::TransportConfig::default()),
    )
    .unwrap();
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.connect_with(cfg, to, name).unwrap().await.unwrap()
}

async fn closed_with_code(conn: &quinn::Connection) -> u64 {
    match tokio::time::timeout(DEADLINE, conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(c)) => c.error_code.into_inner(),
        other => panic!("expected an application close, got {other:?}"),
    }
}

#[tokio::test]
async fn oversized_or_malformed_frames_close_the_connection_and_the_node_keeps_working() {
    let d = tempfile::tempdir().unwrap();
    let ids = cluster(d.path(), &["a", "b"]);
    let mut a = node(&ids[0]).await;

    // Header announcing 4 GiB: refused before any payload.
    let conn = raw_connection(&ids[1], addr(&a), "a").await;
    let mut s = conn.open_uni().await.unwrap();
    s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    assert_eq!(closed_with_code(&conn).await, codes::BAD_FRAME as u64);

    // Well-sized frame with a payload that is not a message.
    let conn = raw_connection(&ids[1], addr(&a), "a").await;
    let mut s = conn.open_uni().await.unwrap();
    let mut f = 6u32.to_be_bytes().to_vec();
    // Our protocol version (one bincode byte), then garbage.
    f.extend([
        hub::transport::frame::PROTOCOL_VERSION as u8,
        0xff,
        0xff,
        0xff,
        0xff,
        0xff,
    ]);
    s.write_all(&f).await.unwrap();
    assert_eq!(closed_with_code(&conn).await, codes::BAD_FRAME as u64);

    // A frame from a future protocol version.
    let conn = raw_connection(&ids[1], addr(&a), "a").await;
    let mut s = conn.open_uni().await.unwrap();
    let future = hub::transport::frame::PROTOCOL_VERSION as u8 + 1;
    s.write_all(&[0, 0, 0, 2, future, 0]).await.unwrap();
    assert_eq!(closed_with_code(&conn).await, codes::BAD_VERSION as u64);

    assert_eq!(a.0.stats().bad_frames, 3);
    // Nothing was delivered, and a legitimate peer still gets through.
    let b = node(&ids[1]).await;
    b.0.send(addr(&a), Some(id("a")), &Msg::Seq(7)).unwrap();
    assert_eq!(
        next_msg(&mut a.1, DEADLINE).await,
        Some((id("b"), Msg::Seq(7)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_peers_do_not_delay_sends_to_live_peers() {
    let d = tempfile::tempdir().unwrap();
    let ids = cluster(d.path(), &["a", "b", "c", "e"]);
    let mut cfg = config(ids[0].clone(), "127.0.0.1:0".parse().unwrap());
    cfg.peer_queue_len = 256;
    cfg.connect_timeout = Duration::from_secs(3);
    let (a, _arx) = Transport::<Msg>::bind(cfg).await.unwrap();
    let mut b = node(&ids[1]).await;

    // Nothing listens here (the port was just freed).
    let closed_port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // A socket that swallows everything and never answers.
    let black_hole = UdpSocket::bind("127.0.0.1:0").unwrap();

    let start = Instant::now();
    let mut drops = 0;
    for i in 0..200u32 {
        for dead in [closed_port, black_hole.local_addr().unwrap()]
            .into_iter()
            .cycle()
            .take(4)
        {
            match a.send(dead, Some(id("c")), &Msg::Seq(i)) {
                Ok(()) => {}
                Err(SendError::QueueFull { .. }) => drops += 1,
                Err(e) => panic!("{e}"),
            }
        }
        a.send(addr(&b), Some(id("b")), &Msg::Seq(i)).unwrap();
    }
    // 600 sends, none of them waited for a peer.
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
    assert!(drops > 0, "dead peers' queues are bounded");
    for i in 0..200u32 {
        assert_eq!(
            next_msg(&mut b.1, Duration::from_secs(2)).await,
            Some((id("a"), Msg::Seq(i)))
        );
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "live peer delayed: {:?}",
        start.elapsed()
    );
    let s = a.stats();
    let hole = s
        .peers
        .iter()
        .find(|p| p.addr == black_hole.local_addr().unwrap())
        .unwrap();
    assert!(!hole.connected && hole.send_drops > 0 && hole.queue_len <= 256);
}

#[tokio::test]
async fn sender_reconnects_after_the_peer_restarts_on_the_same_address() {
    let d = tempfile::tempdir().unwrap();
    let ids = cluster(d.path(), &["a", "b"]);
    let a = node(&ids[0]).await;
    let mut b = node(&ids[1]).await;
    let b_addr = addr(&b);

    a.0.send(b_addr, Some(id("b")), &Msg::Seq(1)).unwrap();
    assert_eq!(
        next_msg(&mut b.1, DEADLINE).await,
        Some((id("a"), Msg::Seq(1)))
    );

    b.0.close().await;
    drop(b);
    // Rebind the same address (the old socket may take a moment to go).
    let end = Instant::now() + DEADLINE;
    let mut b2 = loop {
        match Transport::<Msg>::bind(config(ids[1].clone(), b_addr)).await {
            Ok(n) => break n,
            Err(e) => {
                assert!(Instant::now() < end, "cannot rebind: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // Keep sending until one arrives over a new connection.
    let end = Instant::now() + DEADLINE;
    let mut i = 2;
    let got = loop {
        let _ = a.0.send(b_addr, Some(id("b")), &Msg::Seq(i));
        if let Some(m) = next_msg(&mut b2.1, Duration::from_millis(50)).await {
            break m;
        }
        assert!(Instant::now() < end, "no message after restart");
        i += 1;
    };
    assert_eq!(got.0, id("a"));
    let s = a.0.stats();
    let pb = s.peers.iter().find(|p| p.addr == b_addr).unwrap();
    assert!(pb.reconnects >= 1 && pb.connected, "{pb:?}");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn sender_recovers_at_once_when_a_peer_crashes_and_restarts() {
    let d = tempfile::tempdir().unwrap();
    let ids = cluster(d.path(), &["a", "b"]);
    let rt_a = runtime();
    let rt_b = runtime();
    let (a, _arx) = rt_a.block_on(node(&ids[0]));
    let (b, mut brx) = rt_b.block_on(node(&ids[1]));
    let b_addr = b.local_addr().unwrap();
    a.send(b_addr, Some(id("b")), &Msg::Seq(1)).unwrap();
    assert_eq!(
        rt_b.block_on(next_msg(&mut brx, DEADLINE)),
        Some((id("a"), Msg::Seq(1)))
    );

    // Crash: b's tasks vanish without closing anything (no CONNECTION_CLOSE
    // reaches a), then its socket is freed.
    drop(rt_b);
    drop(brx);
    drop(b);

    let rt_b2 = runtime();
    let end = Instant::now() + DEADLINE;
    let (_b2, mut b2rx) = loop {
        match rt_b2.block_on(Transport::<Msg>::bind(config(ids[1].clone(), b_addr))) {
            Ok(n) => break n,
            Err(e) => {
                assert!(Instant::now() < end, "cannot rebind: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    // a's old connection is answered with a stateless reset it recognises,
    // so it redials long before its 10 s idle timeout.
    let start = Instant::now();
    let mut i = 2;
    let got = loop {
        let _ = a.send(b_addr, Some(id("b")), &Msg::Seq(i));
        if let Some(m) = rt_b2.block_on(next_msg(&mut b2rx, Duration::from_millis(50))) {
            break m;
        }
        assert!(start.elapsed() < DEADLINE, "no message after restart");
        i += 1;
    };
    assert_eq!(got.0, id("a"));
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "recovery took {:?}",
        start.elapsed()
    );
}
