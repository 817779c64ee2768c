//! Benchmarks of the operator's window (issue 9), against one `hub serve`
//! child process (release build, real sled in a temp directory, no sensors),
//! so the node's CPU time is its own. Run:
//! `cargo bench --bench watch -- [--duration 5s] [--watchers 100] [--writers 32]`.
//!
//! - `watchers`: write throughput of `--writers` concurrent HTTP PUT loops
//!   with no watcher, then with `--watchers` open `/api/watch` streams
//!   (prefix "", every change to every watcher) that read everything, then
//!   with none again; the ratio uses the mean of the two no-watcher runs.
//!   During the watched run a probe writes `probe/N` every 20 ms; each
//!   watcher notes when each probe's event arrives: latency from the PUT
//!   being sent, and from its acknowledgement (the write is durable when it
//!   is acknowledged; its event can arrive first, counted as 0). Ten
//!   watchers parse and time; the other ninety read and drop the bytes.
//! - `page`: bytes of every dashboard asset as served.
//! - `idle`: the node's CPU (utime+stime from /proc) over `--idle` with no
//!   client, then with what an idle dashboard tab does (GET
//!   /api/introspection and /ready every 2 s, one open change stream).
//!
//! The load generator, the watchers and the node share this machine's cores:
//! the load average is printed next to every figure.

#[path = "../tests/common/mod.rs"]
mod common;
mod shared;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use hyper::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{http_client, HttpClient, Proc};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, value_parser = hub::config::parse_duration, default_value = "5s")]
    duration: Duration,
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    #[arg(long, default_value_t = 32)]
    writers: usize,
    /// What the watchers watch: "" is every change; `probe/` only the probes
    /// (the node still filters every change for every watcher).
    #[arg(long, default_value = "")]
    prefix: String,
    #[arg(long, value_parser = hub::config::parse_duration, default_value = "20s")]
    idle: Duration,
    /// Ignored (cargo bench passes --bench).
    #[arg(long, hide = true)]
    bench: bool,
}

/// The node's CPU seconds; 0 where /proc cannot tell (a figure, not a failure).
fn cpu_seconds(pid: u32) -> f64 {
    shared::cpu_seconds(pid).unwrap_or(0.0)
}

/// Writes for `d` with `n` concurrent PUT loops; returns writes/s.
async fn write_load(base: &str, n: usize, d: Duration, tag: &str) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + d;
    let mut tasks = Vec::new();
    for w in 0..n {
        let (base, done, tag) = (base.to_string(), done.clone(), tag.to_string());
        tasks.push(tokio::spawn(async move {
            let c = http_client();
            let mut i = 0u64;
            while Instant::now() < stop {
                let url = format!("{base}/kv/load/{tag}/{w}/{}", i % 64);
                if let Ok(r) = c.request(Method::PUT, &url, "1", None).await {
                    if r.status.is_success() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += 1;
            }
        }));
    }
    let started = Instant::now();
    for t in tasks {
        let _ = t.await;
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Arrival times of probe events, per probe number, across watchers.
type Arrivals = Arc<Mutex<Vec<Vec<Instant>>>>;

/// One watcher: reads its stream to the end; when `parse`, notes probe
/// arrivals (the others read and drop the bytes, so the load generator's
/// own CPU on this shared machine stays small next to the node's).
async fn watcher(
    addr: String,
    prefix: String,
    arrivals: Arrivals,
    events: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    parse: bool,
) {
    let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await else {
        return;
    };
    let req = format!("GET /api/watch?prefix={prefix} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 << 10];
    let mut carry: Vec<u8> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let n = match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
            Err(_) => continue,
        };
        let now = Instant::now();
        if !parse {
            continue;
        }
        carry.extend_from_slice(&buf[..n]);
        // Whole frames only; a frame split across reads waits for its end.
        let Some(end) = carry.windows(2).rposition(|w| w == b"\n\n") else {
            continue;
        };
        let frames = &carry[..end + 2];
        events.fetch_add(
            frames.windows(6).filter(|w| w == b"\ndata:").count() as u64,
            Ordering::Relaxed,
        );
        let mut at = 0;
        while let Some(p) = frames[at..]
            .windows(13)
            .position(|w| w == b"\"key\":\"probe/")
        {
            let start = at + p + 13;
            let len = frames[start..].iter().position(|b| *b == b'"').unwrap_or(0);
            if let Some(i) = std::str::from_utf8(&frames[start..start + len])
                .ok()
                .and_then(|t| t.parse::<usize>().ok())
            {
                if let Some(v) = arrivals.lock().unwrap().get_mut(i) {
                    v.push(now);
                }
            }
            at = start + len;
        }
        carry.drain(..end + 2);
    }
}

/// Watchers that parse events and time the probes.
const PARSING: usize = 10;

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn watchers_part(node: &Proc, args: &Args) {
    let base = node.base.clone();
    let addr = base.trim_start_matches("http://").to_string();
    println!(
        "watchers of prefix {:?} ({} writers, {:?} per run), load average {}",
        args.prefix,
        args.writers,
        args.duration,
        shared::loadavg()
    );
    let pid = node.child.id();
    let cpu = |from: f64| (cpu_seconds(pid) - from) / args.duration.as_secs_f64();
    let c0 = cpu_seconds(pid);
    let r0 = write_load(&base, args.writers, args.duration, "a").await;
    let n0 = cpu(c0);
    println!(
        "  no watcher:            {r0:>9.0} writes/s   (load {})",
        shared::loadavg()
    );

    let probes = (args.duration.as_millis() / 20) as usize;
    let arrivals: Arrivals = Arc::new(Mutex::new(vec![Vec::new(); probes]));
    let events = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut ws = Vec::new();
    for i in 0..args.watchers {
        ws.push(tokio::spawn(watcher(
            addr.clone(),
            args.prefix.clone(),
            arrivals.clone(),
            events.clone(),
            stop.clone(),
            i < PARSING,
        )));
    }
    // Every watcher connected: the node counts open streams.
    let c = http_client();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let m = c
            .request(Method::GET, &format!("{base}/metrics"), "", None)
            .await;
        let open = m.ok().and_then(|r| {
            String::from_utf8_lossy(&r.body)
                .lines()
                .find_map(|l| l.strip_prefix("hub_watch_streams ").map(str::to_string))
        });
        if open.and_then(|v| v.parse::<usize>().ok()) == Some(args.watchers) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let probe = {
        let base = base.clone();
        tokio::spawn(async move {
            let c: HttpClient = http_client();
            let mut times = Vec::new();
            for i in 0..probes {
                let sent = Instant::now();
                let _ = c
                    .request(Method::PUT, &format!("{base}/kv/probe/{i}"), "1", None)
                    .await;
                times.push((sent, Instant::now()));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            times
        })
    };
    let c1 = cpu_seconds(pid);
    let r1 = write_load(&base, args.writers, args.duration, "b").await;
    let n1 = cpu(c1);
    let times = probe.await.unwrap_or_default();
    // Let the last events arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in ws {
        let _ = w.await;
    }
    println!(
        "  {} watchers:          {r1:>9.0} writes/s   (load {})",
        args.watchers,
        shared::loadavg()
    );
    let c2 = cpu_seconds(pid);
    let r2 = write_load(&base, args.writers, args.duration, "c").await;
    let n2 = cpu(c2);
    println!(
        "  no watcher again:      {r2:>9.0} writes/s   (load {})",
        shared::loadavg()
    );
    println!("  node CPU (cores) without / with / without watchers: {n0:.2} / {n1:.2} / {n2:.2}");
    let ratio = r1 / ((r0 + r2) / 2.0);
    println!(
        "  with/without watchers: {:>9.1} %   (target >= 90 %)",
        ratio * 100.0
    );
    let arrivals = arrivals.lock().unwrap();
    let (mut from_send, mut from_ack) = (Vec::new(), Vec::new());
    let mut missing = 0usize;
    for (i, (sent, acked)) in times.iter().enumerate() {
        let got = &arrivals[i];
        missing += PARSING.min(args.watchers).saturating_sub(got.len());
        for t in got {
            from_send.push(t.saturating_duration_since(*sent).as_secs_f64() * 1000.0);
            from_ack.push(t.saturating_duration_since(*acked).as_secs_f64() * 1000.0);
        }
    }
    from_send.sort_by(f64::total_cmp);
    from_ack.sort_by(f64::total_cmp);
    println!(
        "  change-to-event, PUT acknowledged -> event at a watcher: p50 {:.2} ms, p99 {:.2} ms (target p50 <= 5 ms)",
        pct(&from_ack, 0.5),
        pct(&from_ack, 0.99)
    );
    println!(
        "  change-to-event, PUT sent -> event at a watcher:         p50 {:.2} ms, p99 {:.2} ms",
        pct(&from_send, 0.5),
        pct(&from_send, 0.99)
    );
    println!(
        "  probe events at the {PARSING} parsing watchers: {} received, {missing} missing; events they read: {}",
        from_ack.len(),
        events.load(Ordering::Relaxed)
    );
}

async fn page_part(node: &Proc) {
    let c = http_client();
    let mut total = 0;
    for (path, _) in hub::http::dashboard::ASSETS {
        let r = c
            .request(Method::GET, &format!("{}{path}", node.base), "", None)
            .await
            .expect("dashboard asset");
        println!("  {path:<24} {:>7} bytes", r.body.len());
        total += r.body.len();
    }
    println!(
        "page weight (all assets): {total} bytes = {:.1} KiB (target < 200 KB)",
        total as f64 / 1024.0
    );
}

async fn idle_part(node: &Proc, args: &Args) {
    let pid = node.child.id();
    let t0 = cpu_seconds(pid);
    tokio::time::sleep(args.idle).await;
    let idle = (cpu_seconds(pid) - t0) / args.idle.as_secs_f64();
    // What an idle dashboard tab does: two polls every 2 s, one open stream.
    let stop = Arc::new(AtomicBool::new(false));
    let addr = node.base.trim_start_matches("http://").to_string();
    let stream = tokio::spawn(watcher(
        addr,
        String::new(),
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(AtomicU64::new(0)),
        stop.clone(),
        false,
    ));
    let base = node.base.clone();
    let stop2 = stop.clone();
    let poller = tokio::spawn(async move {
        let c = http_client();
        while !stop2.load(Ordering::Relaxed) {
            let _ = c
                .request(Method::GET, &format!("{base}/api/introspection"), "", None)
                .await;
            let _ = c
                .request(Method::GET, &format!("{base}/ready"), "", None)
                .await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    let t1 = cpu_seconds(pid);
    tokio::time::sleep(args.idle).await;
    let tab = (cpu_seconds(pid) - t1) / args.idle.as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = poller.await;
    let _ = stream.await;
    println!(
        "idle node CPU over {:?}: {:.2} % of a core without a client, {:.2} % with an idle dashboard tab's polling (+{:.2} points)   (load {})",
        args.idle,
        idle * 100.0,
        tab * 100.0,
        (tab - idle) * 100.0,
        shared::loadavg()
    );
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let dir = tempfile::tempdir().expect("temp dir");
    let node = Proc::start(&[
        "--node-id".into(),
        "bench".into(),
        "--http".into(),
        "127.0.0.1:0".into(),
        "--no-sensors".into(),
        "--data-dir".into(),
        dir.path().join("data").display().to_string(),
    ]);
    println!("load average at start: {}", shared::loadavg());
    page_part(&node).await;
    watchers_part(&node, &args).await;
    idle_part(&node, &args).await;
    println!("load average at end: {}", shared::loadavg());
}
