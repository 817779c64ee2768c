//! The HTTP server's abuse limits against a real node: idle and
//! slowloris-style connections above the connection cap do not stop it
//! answering, and oversized request heads and URIs get JSON refusals.

mod common;

use std::time::Duration;

use hyper::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;
use hub::config::Config;
use hub::node::Node;

async fn node_with(f: impl FnOnce(&mut Config)) -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_test("n1", dir.path().join("data")).unwrap();
    f(&mut config);
    (Node::start(config).await.unwrap(), dir)
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_above_the_cap_do_not_stop_the_node_answering() {
    const CAP: usize = 32;
    let (node, _dir) = node_with(|c| c.http_limits.max_connections = CAP).await;
    let addr = node.http_addr();
    let base = node.base_url();
    // Twice the cap of connections that send an unfinished request head and
    // then nothing (slowloris), opened one after the other.
    let mut idle = Vec::new();
    for _ in 0..2 * CAP {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        idle.push(s);
    }
    let c = http_client();
    eventually_async("/health answers", Duration::from_secs(5), || {
        let (c, url) = (&c, format!("{base}/health"));
        async move { get_json(c, &url).await.is_some() }
    })
    .await;
    let (status, _) = call(&c, Method::PUT, &format!("{base}/kv/still-writable"), "yes")
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(
        call(&c, Method::GET, &format!("{base}/metrics"), "")
            .await
            .unwrap()
            .1
            .to_vec(),
    )
    .unwrap();
    assert!(
        metric(&text, "hub_http_connections ") <= CAP as u64,
        "{text}"
    );
    assert!(
        metric(&text, "hub_http_refused_total{reason=\"evicted_idle\"}") >= CAP as u64,
        "{text}"
    );
    // The idle ones were closed by the node, not left hanging.
    let mut closed = 0;
    for mut s in idle {
        let mut buf = [0u8; 64];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await {
            closed += 1;
        }
    }
    assert!(closed >= CAP, "only {closed} idle connections were closed");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_after_the_idle_timeout() {
    let (node, _dir) = node_with(|c| {
        c.http_limits.idle_timeout = Duration::from_millis(300);
        c.http_limits.header_timeout = Duration::from_millis(300);
    })
    .await;
    let mut s = TcpStream::connect(node.http_addr()).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the node kept a silent connection open");
    node.shutdown().await;
}

async fn raw(addr: std::net::SocketAddr, request: Vec<u8>) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&request).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let json =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not a JSON body ({e}): {text:?}"));
    (status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_malformed_requests_and_long_uris_get_json_errors() {
    let (node, _dir) = node_with(|_| {}).await;
    let addr = node.http_addr();
    let big = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40_000)
    );
    let (status, v) = raw(addr, big.into_bytes()).await;
    assert_eq!(status, 431);
    assert_eq!(v["error"]["code"], "headers_too_large");

    let long = format!(
        "GET /kv/{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "k".repeat(9000)
    );
    let (status, v) = raw(addr, long.into_bytes()).await;
    assert_eq!(status, 414);
    assert_eq!(v["error"]["code"], "uri_too_long");

    let (status, v) = raw(addr, b"NOT HTTP AT ALL\r\n\r\n".to_vec()).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["code"], "bad_request");

    let c = http_client();
    let text = String::from_utf8(
        call(&c, Method::GET, &format!("{}/metrics", node.base_url()), "")
            .await
            .unwrap()
            .1
            .to_vec(),
    )
    .unwrap();
    for reason in ["headers_too_large", "uri_too_long", "bad_request"] {
        let line = format!("hub_http_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&text, &line), 1, "{reason}: {text}");
    }
    node.shutdown().await;
}
