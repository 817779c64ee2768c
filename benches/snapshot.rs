//! Snapshot benchmarks (issue 12) on a node of `--entries` keys (default
//! 1 M, 100-byte values), real sled in a temp directory, the real binary:
//!
//! - `live`: write throughput of `--writers` concurrent HTTP PUT loops
//!   against a `hub serve` child without a snapshot, then while
//!   `hub snapshot save --node` streams one (at `--pace`), then without
//!   again; the ratio uses the mean of the two runs without. Also the live
//!   save's MB/s and entries/s.
//! - `offline`: `hub snapshot save --data-dir` of the stopped node.
//! - `restore`: `hub snapshot restore` of that file into a new directory.
//!
//! Run: `cargo bench --bench snapshot -- [--entries 1000000] [--writers 32]
//! [--duration 5s] [--pace 30]`. The node, the load and the snapshot share
//! this machine's cores: the load average is printed beside each figure.

#[path = "../tests/common/mod.rs"]
mod common;
mod shared;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hyper::Method;

use common::{http_client, run_hub, text, Proc};
use hub::model::Meta;
use hub::store::{Condition, Op};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    entries: u64,
    #[arg(long, default_value_t = 32)]
    writers: usize,
    #[arg(long, value_parser = hub::config::parse_duration, default_value = "5s")]
    duration: Duration,
    /// Share of time (percent) the live snapshot works.
    #[arg(long, default_value_t = 30)]
    pace: u8,
    /// Ignored (cargo bench passes --bench).
    #[arg(long, hide = true)]
    bench: bool,
}

/// Fills `dir` with `n` keys in large groups, straight through the store.
fn fill(dir: &Path, n: u64) {
    let store = shared::bench_store(dir);
    let value = vec![b'v'; 100];
    let wall = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let mut i = 0;
    while i < n {
        let ops = (i..(i + 10_000).min(n))
            .map(|k| Op::Local {
                key: format!("fill/{k:08}"),
                value: Some(value.clone()),
                meta: Meta::new(),
                cond: Condition::Always,
            })
            .collect();
        store.apply(ops, wall()).unwrap();
        store.flush().unwrap();
        i += 10_000;
    }
}

/// PUT loops until `stop` is set (or `until` passes); returns writes/s.
async fn write_load(base: &str, n: usize, tag: &str, until: Instant, stop: Arc<AtomicBool>) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..n {
        let (base, done, tag, stop) = (
            base.to_string(),
            done.clone(),
            tag.to_string(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let c = http_client();
            let mut i = 0u64;
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                i += 1;
                let url = format!("{base}/kv/load/{tag}/{w}/{i}");
                if let Ok(r) = c.request(Method::PUT, &url, "0123456789", None).await {
                    if r.status.is_success() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = Args::parse();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("node");
    let t = Instant::now();
    {
        let (data, n) = (data.clone(), args.entries);
        tokio::task::spawn_blocking(move || fill(&data, n))
            .await
            .unwrap();
    }
    println!(
        "filled {} entries in {:.1} s (load {})",
        args.entries,
        t.elapsed().as_secs_f64(),
        shared::loadavg()
    );
    let node = Proc::start(
        &[
            "--node-id",
            "bench",
            "--no-sensors",
            "--http",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ]
        .map(String::from),
    );
    let never = Arc::new(AtomicBool::new(false));
    let base1 = write_load(
        &node.base,
        args.writers,
        "base1",
        Instant::now() + args.duration,
        never.clone(),
    )
    .await;
    println!(
        "live: writes/s without a snapshot: {base1:.0} (load {})",
        shared::loadavg()
    );

    let file = tmp.path().join("live.hubsnap");
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (base, stop, writers) = (node.base.clone(), stop.clone(), args.writers);
        tokio::spawn(async move {
            write_load(
                &base,
                writers,
                "snap",
                Instant::now() + Duration::from_secs(3600),
                stop,
            )
            .await
        })
    };
    let t = Instant::now();
    let out = {
        let (base, file, pace) = (node.base.clone(), file.clone(), args.pace.to_string());
        tokio::task::spawn_blocking(move || {
            run_hub(
                &[
                    "snapshot",
                    "save",
                    "--node",
                    &base,
                    "--pace",
                    &pace,
                    file.to_str().unwrap(),
                ],
                &[],
            )
        })
        .await
        .unwrap()
    };
    let live_secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let during = load.await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let live_bytes = std::fs::metadata(&file).unwrap().len();
    let base2 = write_load(
        &node.base,
        args.writers,
        "base2",
        Instant::now() + args.duration,
        never,
    )
    .await;
    let base = (base1 + base2) / 2.0;
    println!(
        "live: snapshot at pace {} %: {:.1} MB in {live_secs:.1} s = {:.1} MB/s, {:.0} entries/s",
        args.pace,
        mb(live_bytes),
        mb(live_bytes) / live_secs,
        args.entries as f64 / live_secs
    );
    println!(
        "live: writes/s during the snapshot: {during:.0}; without: {base1:.0} and {base2:.0}; during / without = {:.0} % (target >= 80 %) (load {})",
        100.0 * during / base,
        shared::loadavg()
    );
    node.stop();

    let off = tmp.path().join("offline.hubsnap");
    let t = Instant::now();
    let out = run_hub(
        &[
            "snapshot",
            "save",
            "--data-dir",
            data.to_str().unwrap(),
            off.to_str().unwrap(),
        ],
        &[],
    );
    let secs = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let bytes = std::fs::metadata(&off).unwrap().len();
    let entries = summary_entries(&text(&out.stdout));
    println!(
        "offline: save {entries} entries, {:.1} MB in {secs:.1} s = {:.1} MB/s, {:.0} entries/s (load {})",
        mb(bytes),
        mb(bytes) / secs,
        entries as f64 / secs,
        shared::loadavg()
    );

    let restored = tmp.path().join("restored");
    let t = Instant::now();
    let out = run_hub(
        &[
            "snapshot",
            "restore",
            off.to_str().unwrap(),
            "--data-dir",
            restored.to_str().unwrap(),
        ],
        &[],
    );
    let secs = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}", text(&out.stderr));
    println!(
        "restore: {entries} entries, {:.1} MB in {secs:.1} s = {:.1} MB/s, {:.0} entries/s (load {})",
        mb(bytes),
        mb(bytes) / secs,
        entries as f64 / secs,
        shared::loadavg()
    );
}

/// The entry count in `hub snapshot save`'s summary line.
fn summary_entries(line: &str) -> u64 {
    line.split(" entries")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
