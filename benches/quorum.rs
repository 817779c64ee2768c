//! Write and read quorum costs on a 3-node loopback cluster of `hub serve`
//! processes (fresh CA and certificates, real QUIC, real sled in a temp
//! directory, no sensors): each node has its own process, so one node's
//! flushes do not queue behind another's. Not a product command:
//! `cargo bench --bench quorum -- [--requests 3000] [--writers 32] [--duration 5s]`.
//!
//! - `latency`: one client, one request at a time over a keep-alive
//!   connection to node A: `PUT /kv/…?w=1|quorum|all` (100-byte values),
//!   then `GET /kv/…?r=1|quorum|all`. The levels take turns in rounds of 100
//!   requests so drifts in machine load hit them alike; p50, p99 and mean
//!   per level from the client's clock (request sent to response read).
//! - `throughput`: `--writers` concurrent clients for `--duration` per
//!   level: durable writes per second and p50/p99.
//!
//! The load average is printed before and after: the machine is shared, so
//! the ratios within one run are what count.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use hyper::{Method, StatusCode};

use hub::config::parse_duration;

#[path = "../tests/common/mod.rs"]
mod common;
mod shared;

#[derive(Parser, Debug)]
#[command(
    name = "quorum-bench",
    about = "Quorum latency on a 3-node loopback cluster"
)]
struct Args {
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    /// Sequential requests per level (writes, then reads).
    #[arg(long, default_value_t = 3000)]
    requests: usize,
    /// Concurrent writers of the throughput part.
    #[arg(long, default_value_t = 32)]
    writers: usize,
    /// Duration of the throughput part, per level.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
}

const LEVELS: [&str; 3] = ["1", "quorum", "all"];
const ROUND: usize = 100;

/// p50, p99 and mean in milliseconds of latencies in microseconds.
fn summary(mut us: Vec<u64>) -> String {
    if us.is_empty() {
        return "no samples".into();
    }
    us.sort_unstable();
    let at = |p: f64| us[((us.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0;
    let mean = us.iter().sum::<u64>() as f64 / us.len() as f64 / 1000.0;
    format!(
        "p50 {:.2} ms  p99 {:.2} ms  mean {:.2} ms  (n={})",
        at(0.5),
        at(0.99),
        mean,
        us.len()
    )
}

struct Cluster {
    procs: Vec<common::Proc>,
    _certs: common::Certs,
    _dir: tempfile::TempDir,
}

async fn start() -> anyhow::Result<Cluster> {
    let ids = ["qa", "qb", "qc"];
    let certs = common::Certs::new(&ids);
    let dir = tempfile::tempdir()?;
    let ports = ids.map(|_| common::free_udp_port());
    let mut procs = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let join = (i > 0).then_some(ports[0]);
        let args = common::serve_args(id, &dir.path().join(id), certs.path(), ports[i], join);
        procs.push(common::Proc::start(&args));
    }
    let http = common::http_client();
    let t0 = Instant::now();
    loop {
        let mut formed = true;
        for p in &procs {
            let m = common::get_json(&http, &format!("{}/api/membership", p.base)).await;
            formed &= m.is_some_and(|m| m["alive_peers"].as_u64() == Some(2));
        }
        if formed {
            break;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("the cluster did not form within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Cluster {
        procs,
        _certs: certs,
        _dir: dir,
    })
}

/// One request; its latency in microseconds, checked for `want`.
async fn timed(
    http: &common::HttpClient,
    method: Method,
    url: &str,
    body: &'static [u8],
    want: StatusCode,
) -> anyhow::Result<u64> {
    let t = Instant::now();
    let r = http
        .request(method, url, body, None)
        .await
        .with_context(|| url.to_string())?;
    let us = t.elapsed().as_micros() as u64;
    if r.status != want {
        bail!("{url}: {} {:?}", r.status, String::from_utf8_lossy(&r.body));
    }
    Ok(us)
}

async fn latency(c: &Cluster, args: &Args) -> anyhow::Result<()> {
    static VALUE: [u8; 100] = [b'v'; 100];
    let http = common::http_client();
    let base = &c.procs[0].base;
    // Warm the connection and the code paths.
    for i in 0..200 {
        let url = format!("{base}/kv/warm/{i}?w=quorum");
        timed(&http, Method::PUT, &url, &VALUE, StatusCode::OK).await?;
    }
    for (verb, method, param, want) in [
        ("PUT", Method::PUT, "w", StatusCode::OK),
        ("GET", Method::GET, "r", StatusCode::OK),
    ] {
        let mut samples: Vec<Vec<u64>> = vec![Vec::new(); LEVELS.len()];
        for round in 0..args.requests.div_ceil(ROUND) {
            for (l, level) in LEVELS.iter().enumerate() {
                for i in 0..ROUND {
                    // Reads read the keys the writes made.
                    let n = round * ROUND + i;
                    let url = format!("{base}/kv/lat/{level}/{n}?{param}={level}");
                    let body: &'static [u8] = if method == Method::PUT { &VALUE } else { b"" };
                    samples[l].push(timed(&http, method.clone(), &url, body, want).await?);
                }
            }
        }
        for (l, level) in LEVELS.iter().enumerate() {
            let name = format!("{verb} {param}={level}");
            println!("  {name:<14} {}", summary(std::mem::take(&mut samples[l])));
        }
    }
    Ok(())
}

async fn throughput(c: &Cluster, args: &Args) -> anyhow::Result<()> {
    static VALUE: [u8; 100] = [b't'; 100];
    let base = c.procs[0].base.clone();
    for level in LEVELS {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..args.writers {
            let (stop, base) = (stop.clone(), base.clone());
            tasks.spawn(async move {
                let http = common::http_client();
                let mut lat = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let url = format!("{base}/kv/tp/{level}/{w}/{i}?w={level}");
                    lat.push(timed(&http, Method::PUT, &url, &VALUE, StatusCode::OK).await?);
                    i += 1;
                }
                anyhow::Ok(lat)
            });
        }
        let t0 = Instant::now();
        tokio::time::sleep(args.duration).await;
        stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        while let Some(r) = tasks.join_next().await {
            all.extend(r??);
        }
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "  w={level:<7} {:>7.0} writes/s with {} writers  {}",
            all.len() as f64 / secs,
            args.writers,
            summary(all)
        );
    }
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    println!("load average before: {}", shared::loadavg());
    let c = start().await?;
    println!(
        "latency, one request at a time to node A ({} per level):",
        args.requests
    );
    latency(&c, &args).await?;
    println!("load average: {}", shared::loadavg());
    println!(
        "throughput, {} concurrent writers to node A, {:?} per level:",
        args.writers, args.duration
    );
    throughput(&c, &args).await?;
    println!("load average after: {}", shared::loadavg());
    for p in c.procs {
        p.stop();
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    shared::main_with(run(args))
}
