//! Durability with the real binary: a write acknowledged with 2xx survives
//! `kill -9` of the node, whatever else was in flight.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

/// A `hub serve` process, killed on drop so a failing test leaves none behind.
struct Hub {
    child: Child,
    base: String,
}

impl Hub {
    fn start(dir: &std::path::Path) -> Hub {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hub"))
            .args([
                "serve",
                "--node-id",
                "crash",
                "--http",
                "127.0.0.1:0",
                "--no-sensors",
                "--data-dir",
            ])
            .arg(dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // The node prints its bound address once it is serving.
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .split_whitespace()
            .last()
            .expect("serving line")
            .to_string();
        assert!(
            base.starts_with("http://"),
            "unexpected first line {line:?}"
        );
        Hub { child, base }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;
/// (key, value) of every write the node acknowledged.
type Acked = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

async fn send(
    c: &HttpClient,
    m: Method,
    url: String,
    body: Vec<u8>,
) -> Result<(StatusCode, Bytes), String> {
    let req = hyper::Request::builder()
        .method(m)
        .uri(url)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = c.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut hub = Hub::start(&data);
    let acked: Acked = Arc::default();
    const CLIENTS: usize = 32;
    const TARGET: usize = 3000;
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let base = hub.base.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
            for i in 0.. {
                let key = format!("c{c}/k{i}");
                let value = format!("value of {key} {}", "x".repeat(i % 50)).into_bytes();
                match send(
                    &client,
                    Method::PUT,
                    format!("{base}/kv/{key}"),
                    value.clone(),
                )
                .await
                {
                    Ok((StatusCode::OK, _)) => acked.lock().unwrap().push((key, value)),
                    Ok((s, b)) => panic!("unexpected {s}: {b:?}"),
                    Err(_) => return, // the node is gone
                }
            }
        }));
    }
    // Kill mid-stream, once enough writes are acknowledged.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < TARGET {
        assert!(
            Instant::now() < deadline,
            "only {} writes acknowledged",
            acked.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    hub.child.kill().unwrap(); // SIGKILL
    hub.child.wait().unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());

    let hub = Hub::start(&data);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut present = 0;
    for (key, value) in &acked {
        let (status, body) = send(
            &client,
            Method::GET,
            format!("{}/kv/{key}", hub.base),
            Vec::new(),
        )
        .await
        .unwrap();
        assert_eq!(status, StatusCode::OK, "acknowledged write of {key} lost");
        assert_eq!(&body[..], &value[..], "acknowledged value of {key} changed");
        present += 1;
    }
    assert_eq!(present, acked.len());
    assert!(present >= TARGET);
    eprintln!("{present} acknowledged writes, all present after kill -9");
}
