//! Durability with the real binary: a write acknowledged with 2xx survives
//! `kill -9` of the node, whatever else was in flight; so does every write
//! of an acknowledged `POST /kv` batch.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};

use common::{call, http_client};

/// (key, value) of every write the node acknowledged.
type Acked = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Client `c` writes batches of 20 until the node is gone.
async fn batches(c: usize, base: &str, client: &common::HttpClient, acked: &Acked) {
    for b in 0.. {
        let writes: Vec<(String, String)> = (0..20)
            .map(|i| (format!("c{c}/b{b}-{i}"), format!("batch value {b}-{i}")))
            .collect();
        let body = serde_json::json!({
            "writes": writes.iter().map(|(k, v)| serde_json::json!({"key": k, "value": v})).collect::<Vec<_>>()
        });
        match call(
            client,
            Method::POST,
            &format!("{base}/kv"),
            body.to_string(),
        )
        .await
        {
            Ok((StatusCode::OK, _)) => acked
                .lock()
                .unwrap()
                .extend(writes.into_iter().map(|(k, v)| (k, v.into_bytes()))),
            Ok((s, b)) => panic!("unexpected {s}: {b:?}"),
            Err(_) => return, // the node is gone
        }
    }
}

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
    // Of which these write `POST /kv` batches.
    const BATCHERS: usize = 8;
    const TARGET: usize = 3000;
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let base = hub.base.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let client = http_client();
            if c < BATCHERS {
                return batches(c, &base, &client, &acked).await;
            }
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
    let batched = acked.iter().filter(|(k, _)| k.contains("/b")).count();
    assert!(batched > 0, "no batch was acknowledged before the kill");
    eprintln!("{present} acknowledged writes ({batched} in batches), all present after kill -9");
}
