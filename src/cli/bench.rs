//! `hub bench`: HTTP load against a running node.
//!
//! Each client task owns one keep-alive HTTP/1 connection and sends requests
//! back to back, so the number of clients is the number of requests in
//! flight. `put` writes distinct keys (every request is a durable write);
//! `ingest` posts batches of readings.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub kind: BenchKind,
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// The node, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub url: String,
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
        BenchKind::Put { ref common, .. } => (common.clone(), 1usize, "writes"),
        BenchKind::Ingest {
            ref common, batch, ..
        } => (common.clone(), batch, "readings"),
    };
    if common.clients == 0 {
        bail!("--clients must be at least 1");
    }
    let uri: hyper::Uri = common
        .url
        .parse()
        .with_context(|| format!("bad --url {:?}", common.url))?;
    let host = uri.host().context("--url needs a host")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let authority = format!("{host}:{port}");
    let run_id = std::process::id();
    let deadline = Instant::now() + common.duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..common.clients {
        let authority = authority.clone();
        let kind = match &args.kind {
            BenchKind::Put { value_bytes, .. } => Work::Put {
                value: Bytes::from(vec![b'v'; *value_bytes]),
            },
            BenchKind::Ingest { batch, sensors, .. } => Work::Ingest {
                batch: *batch,
                sensors: (*sensors).max(1),
            },
        };
        tasks.push(tokio::spawn(async move {
            client_loop(client, run_id, &authority, kind, deadline).await
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
    Ok(())
}

enum Work {
    Put { value: Bytes },
    Ingest { batch: usize, sensors: usize },
}

async fn client_loop(
    client: usize,
    run_id: u32,
    authority: &str,
    work: Work,
    deadline: Instant,
) -> anyhow::Result<ClientResult> {
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("cannot connect to {authority}"))?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut res = ClientResult {
        latencies_us: Vec::with_capacity(1 << 16),
        errors: 0,
        first_error: None,
    };
    let mut i: u64 = 0;
    while Instant::now() < deadline {
        i += 1;
        let req = match &work {
            Work::Put { value } => hyper::Request::put(format!("/kv/bench-{run_id}/{client}/{i}"))
                .header("host", authority)
                .body(Full::new(value.clone()))?,
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
                hyper::Request::post("/api/readings")
                    .header("host", authority)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))?
            }
        };
        let t0 = Instant::now();
        sender.ready().await.context("connection closed")?;
        let resp = sender.send_request(req).await.context("request failed")?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .context("reading response")?
            .to_bytes();
        let us = t0.elapsed().as_micros().min(u32::MAX as u128) as u32;
        if status.is_success() {
            res.latencies_us.push(us);
        } else {
            res.errors += 1;
            if res.first_error.is_none() {
                res.first_error = Some(format!("{status}: {}", String::from_utf8_lossy(&body)));
            }
        }
    }
    Ok(res)
}
