//! Durability with the real binary: a write acknowledged with 2xx survives
//! `kill -9` of the node, whatever else was in flight.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};

use common::{call, http_client};

/// (key, value) of every write the node acknowledged.
type Acked = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve_args = |data: &std::path::Path| -> Vec<String> {
        [
            "--node-id",
            "crash",
            "--http",
            "127.0.0.1:0",
            "--no-sensors",
            "--data-dir",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([data.display().to_string()])
        .collect()
    };
    let mut hub = common::Proc::start(&serve_args(&data));
    let acked: Acked = Arc::default();
    const CLIENTS: usize = 32;
    const TARGET: usize = 3000;
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let base = hub.base.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let client = http_client();
            for i in 0.. {
                let key = format!("c{c}/k{i}");
                let value = format!("value of {key} {}", "x".repeat(i % 50)).into_bytes();
                match call(
                    &client,
                    Method::PUT,
                    &format!("{base}/kv/{key}"),
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
    hub.kill_9();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());

    let hub = common::Proc::start(&serve_args(&data));
    let client = http_client();
    let mut present = 0;
    for (key, value) in &acked {
        let (status, body) = call(
            &client,
            Method::GET,
            &format!("{}/kv/{key}", hub.base),
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
