//! `hub bench`: HTTP load against a running node.
//!
//! Each client task owns one keep-alive HTTP/1 connection (its own
//! [`hub::client::Client`]) and sends requests back to back, so the number
//! of clients is the number of requests in flight. `put` writes distinct
//! keys (every request is a durable write); `ingest` posts batches of
//! readings. `https://` URLs with `--cacert`, and `--token` for nodes with
//! auth, measure the secured path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, Subcommand};
use hyper::Method;

use hub::client::{BaseUrl, Client};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub kind: BenchKind,
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// The node, e.g. http://127.0.0.1:8080 or https://127.0.0.1:8080.
    /// Repeat to measure several nodes one after the other in the same run
    /// (e.g. plain HTTP and HTTPS with auth) and compare them to the first.
    #[arg(long, required = true)]
    pub url: Vec<String>,
    #[command(flatten)]
    pub remote: super::remote::RemoteArgs,
    /// Concurrent clients, one connection each.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// How long to run: 10s, 500ms, 2m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
}

#[derive(Subcommand, Debug)]
pub enum BenchKind {
    /// Durable single-key PUTs to distinct keys.
    Put {
        #[command(flatten)]
        common: Common,
        /// Value size in bytes.
        #[arg(long, default_value_t = 100)]
        value_bytes: usize,
        /// Measure the node fresh, then fill its log to its retention through
        /// /api/readings and measure again: fresh and steady state in one run.
        #[arg(long)]
        steady_state: bool,
    },
    /// Batches of readings to POST /api/readings.
    Ingest {
        #[command(flatten)]
        common: Common,
        /// Readings per request.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Distinct sensor names the readings cycle through.
        #[arg(long, default_value_t = 100)]
        sensors: usize,
    },
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 10s or 500ms"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit {unit:?}; use ms, s or m")),
    };
    if !(secs > 0.0 && secs < 86_400.0) {
        return Err(format!("{s:?} must be between 0 and a day"));
    }
    Ok(Duration::from_secs_f64(secs))
}

struct ClientResult {
    latencies_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let (common, items_per_req, label) = match args.kind {
        BenchKind::Put {
            steady_state: true,
            ref common,
            ..
        } => return steady_state(&args.kind, common).await,
        BenchKind::Put { ref common, .. } => (common.clone(), 1usize, "writes"),
        BenchKind::Ingest {
            ref common, batch, ..
        } => (common.clone(), batch, "readings"),
    };
    if common.clients == 0 {
        bail!("--clients must be at least 1");
    }
    let mut rates = Vec::new();
    for (n, url) in common.url.iter().enumerate() {
        if common.url.len() > 1 {
            println!("== {url}");
        }
        rates.push(measure(&args.kind, &common, url, n, items_per_req, label).await?);
    }
    for (url, rate) in common.url.iter().zip(&rates).skip(1) {
        println!(
            "{url}: {:.1}% of {}",
            100.0 * rate / rates[0],
            common.url[0]
        );
    }
    Ok(())
}

/// One load run against `url`; returns items per second.
async fn measure(
    kind: &BenchKind,
    common: &Common,
    url: &str,
    n: usize,
    items_per_req: usize,
    label: &str,
) -> anyhow::Result<f64> {
    let (base, _) = common.remote.connect(url)?;
    // Distinct keys per run, also when two --url name the same node.
    let run_id = std::process::id().wrapping_mul(16).wrapping_add(n as u32);
    let deadline = Instant::now() + common.duration;
    let started = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let progress = {
        let done = done.clone();
        let total = common.duration;
        let label = label.to_string();
        super::progress::Progress::start(move |elapsed| {
            let items = done.load(Ordering::Relaxed) * items_per_req as u64;
            format!(
                "progress: {:.0} of {:.0} s, {items} {label} ({:.0} {label}/s)",
                elapsed.as_secs_f64(),
                total.as_secs_f64(),
                items as f64 / elapsed.as_secs_f64().max(1e-3)
            )
        })
    };
    let mut tasks = Vec::new();
    for client in 0..common.clients {
        let base = base.clone();
        let http = common.remote.client()?;
        let kind = match kind {
            BenchKind::Put { value_bytes, .. } => Work::Put {
                value: Bytes::from(vec![b'v'; *value_bytes]),
            },
            BenchKind::Ingest { batch, sensors, .. } => Work::Ingest {
                batch: *batch,
                sensors: (*sensors).max(1),
            },
        };
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            client_loop(client, run_id, &base, &http, kind, deadline, &done).await
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for t in tasks {
        let r = t.await.context("client task failed")??;
        all.extend(r.latencies_us);
        errors += r.errors;
        first_error = first_error.or(r.first_error);
    }
    drop(progress);
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return 0.0;
        }
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        all[i] as f64 / 1000.0
    };
    let requests = all.len();
    let items = requests * items_per_req;
    println!(
        "{label}: {items} in {elapsed:.2} s = {:.0} {label}/s ({requests} requests, {:.0} req/s, {} clients)",
        items as f64 / elapsed,
        requests as f64 / elapsed,
        common.clients
    );
    println!(
        "latency per request: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; errors {errors}",
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
    if let Some(e) = first_error {
        println!("first error: {e}");
    }
    if requests == 0 {
        bail!("no request succeeded");
    }
    Ok(items as f64 / elapsed)
}

/// `bench put --steady-state`: the same load on the fresh node and on the
/// node whose own log is at its retention (every write also trims).
async fn steady_state(kind: &BenchKind, common: &Common) -> anyhow::Result<()> {
    let [url] = common.url.as_slice() else {
        bail!("--steady-state measures one node: give one --url");
    };
    if common.clients == 0 {
        bail!("--clients must be at least 1");
    }
    println!("fresh node:");
    let fresh = measure(kind, common, url, 0, 1, "writes").await?;
    let retention = fill_to_retention(common, url).await?;
    println!("steady state (own log at its retention of {retention} deltas):");
    let steady = measure(kind, common, url, 1, 1, "writes").await?;
    println!(
        "steady state / fresh: {:.0} % (target >= 90 %)",
        100.0 * steady / fresh
    );
    Ok(())
}

/// Posts batches of readings until the node's own log has reached its
/// retention, i.e. until the node trims. Returns the retention.
async fn fill_to_retention(common: &Common, url: &str) -> anyhow::Result<u64> {
    let (base, http) = common.remote.connect(url)?;
    let run_id = std::process::id();
    loop {
        let info = http
            .get_json(&base.join("/api/introspection"))
            .await
            .context("reading /api/introspection")?;
        let retention = info["log_retention"]
            .as_u64()
            .context("the node does not report log_retention")?;
        let node = info["node_id"].as_str().unwrap_or_default();
        let own = &info["log"][node];
        let (first, len) = (
            own["first"].as_u64().unwrap_or(0),
            own["len"].as_u64().unwrap_or(0),
        );
        println!("filling: own log holds {len} of {retention} deltas");
        if first > 1 {
            return Ok(retention);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut tasks = Vec::new();
        for client in 0..4 {
            let base = base.clone();
            let http = common.remote.client()?;
            let work = Work::Ingest {
                batch: 1000,
                sensors: 100,
            };
            let done = Arc::new(AtomicU64::new(0));
            tasks.push(tokio::spawn(async move {
                client_loop(client, run_id, &base, &http, work, deadline, &done).await
            }));
        }
        for t in tasks {
            let r = t.await.context("fill task failed")??;
            if let Some(e) = r.first_error {
                bail!("filling the log failed: {e}");
            }
        }
    }
}

enum Work {
    Put { value: Bytes },
    Ingest { batch: usize, sensors: usize },
}

async fn client_loop(
    client: usize,
    run_id: u32,
    base: &BaseUrl,
    http: &Client,
    work: Work,
    deadline: Instant,
    done: &AtomicU64,
) -> anyhow::Result<ClientResult> {
    let mut res = ClientResult {
        latencies_us: Vec::with_capacity(1 << 16),
        errors: 0,
        first_error: None,
    };
    let mut i: u64 = 0;
    while Instant::now() < deadline {
        i += 1;
        let (method, url, body, content_type) = match &work {
            Work::Put { value } => (
                Method::PUT,
                base.join(&format!("/kv/bench-{run_id}/{client}/{i}")),
                value.clone(),
                None,
            ),
            Work::Ingest { batch, sensors } => {
                let mut body = String::with_capacity(batch * 48);
                body.push('[');
                for j in 0..*batch {
                    if j > 0 {
                        body.push(',');
                    }
                    let sensor = (client * batch + j) % sensors;
                    body.push_str(&format!(
                        "{{\"sensor\":\"bench-{sensor}\",\"value\":{}.5}}",
                        (i as usize + j) % 1000
                    ));
                }
                body.push(']');
                (
                    Method::POST,
                    base.join("/api/readings"),
                    Bytes::from(body),
                    Some("application/json"),
                )
            }
        };
        let t0 = Instant::now();
        let reply = http
            .request(method, &url, body, content_type)
            .await
            .context("request failed")?;
        let us = t0.elapsed().as_micros().min(u32::MAX as u128) as u32;
        done.fetch_add(1, Ordering::Relaxed);
        if reply.status.is_success() {
            res.latencies_us.push(us);
        } else {
            res.errors += 1;
            if res.first_error.is_none() {
                res.first_error = Some(format!(
                    "{}: {}",
                    reply.status,
                    String::from_utf8_lossy(&reply.body)
                ));
            }
        }
    }
    Ok(res)
}
