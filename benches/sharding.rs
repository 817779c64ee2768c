//! Sharding benchmark (issue 11): 6 `hub serve` processes on loopback with
//! `--replication-factor 3`, then 6 with factor 6 (full replication), in
//! the same run; then a 7th node joins the factor-3 cluster.
//!
//! `cargo bench --bench sharding -- [--duration 10s] [--writers 256] [--value-bytes 256] [--batch 1] [--rounds 3]`
//!
//! Each round measures R=6, R=3 with writes to an owner, and R=3 with
//! writes to any node, each on a fresh cluster, in an order rotated from
//! round to round; the ratios are taken within a round and the median over
//! rounds is the figure (one run of each was too noisy on a shared 2-core
//! machine: group commits batch differently from run to run).
//!
//! - **writes**: `--writers` concurrent HTTP clients (one keep-alive
//!   connection each) PUT fresh keys round-robin over all six nodes for
//!   `--duration`; a 2xx means durable on the owner that took it (a node
//!   that does not own the key forwards it). Aggregate writes/s. Factor 3
//!   runs twice: writes to any node in turn (half of them forwarded), and
//!   writes sent straight to the key's first owner (a client that knows
//!   the layout, computed with `hub::placement::Layout`).
//! - **node CPU per write**: utime + stime of the six `hub serve`
//!   processes from the first write until every copy is stored, divided by
//!   the keys written. Its inverse is the write rate the nodes' CPU
//!   sustains, what the cluster would do with the load generator on other
//!   machines (here it shares the two cores and dilutes the ratio).
//! - **disk**: once every owner holds every written key, each node's
//!   `entries` and on-disk size (`disk_bytes` of `/api/introspection`).
//! - **rebalance**: a 7th node joins the factor-3 cluster; time from its
//!   start until it stores every key of the partitions it owns (computed
//!   with `hub::placement::Layout`, as the nodes do); keys/s and MB/s of
//!   values moved, and the time 1 M keys would take at that rate (linear
//!   extrapolation: handoff is anti-entropy, whose cost per key is flat).
//!
//! The load average is printed with the figures: on a shared 2-core
//! machine the six nodes and the load generator compete for the CPU, so
//! the ratio between the two factors in one run is what counts.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use hyper::Method;
use serde_json::Value;

use hub::config::parse_duration;
use hub::placement::{partition_of, Layout};

#[path = "../tests/common/mod.rs"]
mod common;
mod shared;
use common::{free_udp_port, Certs, Proc};
use shared::{cpu_seconds, loadavg};

#[derive(Parser, Debug)]
#[command(name = "sharding-bench")]
struct Args {
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    /// How long each factor is loaded.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Concurrent HTTP writers. Enough to saturate the cluster: with a few
    /// dozen, each writer waits for its durable commit and the six nodes
    /// idle between requests (latency-bound: R changes little); capacity,
    /// which sharding adds, shows only under a saturating load.
    #[arg(long, default_value_t = 256)]
    writers: usize,
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// Keys per request: 1 is a `PUT /kv/{key}` each; more is a `POST /kv`
    /// batch, which spreads the per-request cost over its keys.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Rounds of the three setups (R=6, R=3 to an owner, R=3 to any node),
    /// each on fresh clusters in a rotated order; ratios are per round and
    /// their median is the figure.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

const IDS: [&str; 7] = ["s1", "s2", "s3", "s4", "s5", "s6", "s7"];

struct Cluster {
    certs: Certs,
    dir: tempfile::TempDir,
    ports: Vec<u16>,
    factor: usize,
    procs: Vec<Proc>,
}

impl Cluster {
    fn new(factor: usize) -> Cluster {
        Cluster {
            certs: Certs::new(&IDS),
            dir: tempfile::tempdir().expect("temp dir"),
            ports: IDS.iter().map(|_| free_udp_port()).collect(),
            factor,
            procs: Vec::new(),
        }
    }

    fn start(&mut self, i: usize) {
        let mut a: Vec<String> = [
            "--node-id",
            IDS[i],
            "--http",
            "127.0.0.1:0",
            "--no-sensors",
            "--replication-factor",
            &self.factor.to_string(),
        ]
        .map(String::from)
        .to_vec();
        a.push("--data-dir".into());
        a.push(self.dir.path().join(IDS[i]).display().to_string());
        a.push("--certs".into());
        a.push(self.certs.path().display().to_string());
        a.push("--listen".into());
        a.push(format!("127.0.0.1:{}", self.ports[i]));
        if i > 0 {
            a.push("--join".into());
            a.push(format!("127.0.0.1:{}", self.ports[0]));
        }
        self.procs.push(Proc::start(&a));
    }

    /// CPU seconds of the running node processes together.
    fn cpu(&self) -> anyhow::Result<f64> {
        self.procs.iter().map(|p| cpu_seconds(p.child.id())).sum()
    }

    async fn introspect(&self, c: &hub::client::Client, i: usize) -> anyhow::Result<Value> {
        shared::introspect(c, &self.procs[i].base).await
    }

    /// Waits until every running node places partitions on all of them.
    async fn wait_layout(&self, c: &hub::client::Client) -> anyhow::Result<()> {
        let bases: Vec<String> = self.procs.iter().map(|p| p.base.clone()).collect();
        shared::wait_layout(c, &bases, Duration::from_secs(60)).await
    }
}

/// Writes fresh keys for `d`, each to the next node in turn, or with
/// `direct` to the key's first owner (what a client that knows the layout
/// does: no forwarding hop); returns the keys written. With `--batch N`
/// each request is a `POST /kv` of N keys (with `direct`, N keys of one
/// first owner).
async fn load(cl: &Cluster, args: &Args, direct: bool) -> anyhow::Result<Vec<String>> {
    let bases: Vec<String> = cl.procs.iter().map(|p| p.base.clone()).collect();
    let ids: Vec<hub::model::NodeId> = IDS[..bases.len()].iter().map(|i| common::id(i)).collect();
    let layout = Arc::new(Layout::compute(ids.clone(), Some(cl.factor)));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let value = "x".repeat(args.value_bytes);
    let batch = args.batch.max(1);
    let mut tasks = Vec::new();
    for w in 0..args.writers {
        let (bases, stop, errors, value) =
            (bases.clone(), stop.clone(), errors.clone(), value.clone());
        let (layout, ids) = (layout.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            let client = common::http_client();
            let mut written = Vec::new();
            let mut i = 0usize;
            let mut sent = 0usize;
            // Keys waiting for a full request, per node they go to.
            let mut pending: Vec<Vec<String>> = vec![Vec::new(); bases.len()];
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w{w}-{i}");
                i += 1;
                let at = if direct {
                    let owner = &layout.owners(partition_of(&key))[0];
                    ids.iter().position(|i| i == owner).unwrap_or(0)
                } else {
                    (w + sent) % bases.len()
                };
                pending[at].push(key);
                if pending[at].len() < batch {
                    continue;
                }
                let keys = std::mem::take(&mut pending[at]);
                sent += 1;
                let base = &bases[at];
                let reply = if batch == 1 {
                    client
                        .request(
                            Method::PUT,
                            &format!("{base}/kv/{}", keys[0]),
                            value.clone(),
                            None,
                        )
                        .await
                } else {
                    let writes: Vec<Value> = keys
                        .iter()
                        .map(|k| serde_json::json!({"key": k, "value": value}))
                        .collect();
                    client
                        .request(
                            Method::POST,
                            &format!("{base}/kv"),
                            serde_json::json!({ "writes": writes }).to_string(),
                            Some("application/json"),
                        )
                        .await
                };
                match reply {
                    Ok(r) if r.status.is_success() => written.extend(keys),
                    _ => {
                        errors.fetch_add(keys.len() as u64, Ordering::Relaxed);
                    }
                }
            }
            written
        }));
    }
    tokio::time::sleep(args.duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut keys = Vec::new();
    for t in tasks {
        keys.extend(t.await?);
    }
    let e = errors.load(Ordering::Relaxed);
    if e > 0 {
        println!("  ({e} writes failed)");
    }
    Ok(keys)
}

/// Waits until the nodes together store `factor` copies of each key.
async fn wait_copies(
    cl: &Cluster,
    c: &hub::client::Client,
    keys: usize,
) -> anyhow::Result<Vec<Value>> {
    let want = (keys * cl.factor.min(cl.procs.len())) as u64;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let mut views = Vec::new();
        for i in 0..cl.procs.len() {
            views.push(cl.introspect(c, i).await?);
        }
        let have: u64 = views
            .iter()
            .map(|v| v["entries"].as_u64().unwrap_or(0))
            .sum();
        if have >= want {
            return Ok(views);
        }
        if Instant::now() > deadline {
            bail!("only {have} of {want} copies after 300 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct Figures {
    writes_per_s: f64,
    /// CPU seconds the six node processes spent, from the first write until
    /// every copy was stored, per key written.
    cpu_per_write: f64,
    keys: usize,
    entries: Vec<u64>,
    disk: Vec<u64>,
}

async fn run_factor(
    factor: usize,
    args: &Args,
    direct: bool,
    keep: bool,
) -> anyhow::Result<(Figures, Option<(Cluster, Vec<String>)>)> {
    let c = common::http_client();
    let mut cl = Cluster::new(factor);
    for i in 0..6 {
        cl.start(i);
    }
    cl.wait_layout(&c).await?;
    let cpu_before = cl.cpu()?;
    let started = Instant::now();
    let keys = load(&cl, args, direct).await?;
    let secs = started.elapsed().as_secs_f64();
    let views = wait_copies(&cl, &c, keys.len()).await?;
    let cpu = cl.cpu()? - cpu_before;
    let fig = Figures {
        writes_per_s: keys.len() as f64 / secs,
        cpu_per_write: cpu / keys.len().max(1) as f64,
        keys: keys.len(),
        entries: views
            .iter()
            .map(|v| v["entries"].as_u64().unwrap_or(0))
            .collect(),
        disk: views
            .iter()
            .map(|v| v["disk_bytes"].as_u64().unwrap_or(0))
            .collect(),
    };
    Ok((fig, keep.then_some((cl, keys))))
}

async fn rebalance(mut cl: Cluster, keys: Vec<String>, args: &Args) -> anyhow::Result<()> {
    let c = common::http_client();
    let layout = Layout::compute(IDS.iter().map(|i| common::id(i)).collect(), Some(cl.factor));
    let me = common::id(IDS[6]);
    let expected = keys
        .iter()
        .filter(|k| layout.owns(&me, partition_of(k)))
        .count() as u64;
    let started = Instant::now();
    cl.start(6);
    let deadline = started + Duration::from_secs(600);
    loop {
        let have = cl
            .introspect(&c, 6)
            .await
            .ok()
            .and_then(|v| v["entries"].as_u64())
            .unwrap_or(0);
        if have >= expected {
            break;
        }
        if Instant::now() > deadline {
            bail!("the 7th node holds {have} of {expected} keys after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let per_s = expected as f64 / secs;
    let mb_s = per_s * args.value_bytes as f64 / 1e6;
    println!(
        "rebalance: 7th node received {expected} keys ({} bytes each) in {secs:.2} s from its start: {per_s:.0} keys/s, {mb_s:.2} MB/s of values; 1 M keys at that rate: {:.0} s (extrapolated)  [load {}]",
        args.value_bytes,
        1e6 / per_s,
        loadavg()
    );
    let v = cl.introspect(&c, 6).await?;
    println!("  7th node placement: {}", v["cluster"]["placement"]);
    Ok(())
}

fn print(what: &str, f: &Figures) {
    let mb = |b: &u64| format!("{:.1}", *b as f64 / 1e6);
    println!(
        "{what}: {:.0} durable writes/s aggregate ({} keys); node CPU per write {:.0} µs; entries per node {:?}; disk MB per node [{}]  [load {}]",
        f.writes_per_s,
        f.keys,
        f.cpu_per_write * 1e6,
        f.entries,
        f.disk.iter().map(mb).collect::<Vec<_>>().join(", "),
        loadavg()
    );
}

/// The three configurations one round measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    Full,
    Owner,
    Any,
}

impl Setup {
    fn label(self) -> &'static str {
        match self {
            Setup::Full => "R=6",
            Setup::Owner => "R=3, writes to an owner",
            Setup::Any => "R=3, writes to any node",
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    println!(
        "sharding bench: 6 nodes, {} writers, {} s per factor, {} B values, {} keys per request, {} rounds  [load {}]",
        args.writers,
        args.duration.as_secs(),
        args.value_bytes,
        args.batch,
        args.rounds,
        loadavg()
    );
    // Rounds rotate the order of the three setups, so a drift of the
    // machine's load (other jobs, the page cache) does not favour one.
    let order = [Setup::Full, Setup::Owner, Setup::Any];
    let mut figures: Vec<[Option<Figures>; 3]> = Vec::new();
    let mut kept = None;
    for round in 0..args.rounds.max(1) {
        let mut got: [Option<Figures>; 3] = [None, None, None];
        for k in 0..3 {
            let setup = order[(round + k) % 3];
            let last = round + 1 == args.rounds.max(1) && setup == Setup::Owner;
            let (factor, direct) = match setup {
                Setup::Full => (6, false),
                Setup::Owner => (3, true),
                Setup::Any => (3, false),
            };
            let (f, cluster) = run_factor(factor, &args, direct, last)
                .await
                .with_context(|| format!("round {} {}", round + 1, setup.label()))?;
            print(&format!("round {} {}", round + 1, setup.label()), &f);
            if cluster.is_some() {
                kept = cluster;
            }
            got[setup as usize] = Some(f);
        }
        figures.push(got);
    }
    let avg = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
    let per_key = |f: &Figures, v: &[u64]| avg(v) / f.keys.max(1) as f64;
    for (what, setup) in [("owner", Setup::Owner), ("any node", Setup::Any)] {
        let pairs: Vec<(&Figures, &Figures)> = figures
            .iter()
            .filter_map(|r| {
                Some((
                    r[Setup::Full as usize].as_ref()?,
                    r[setup as usize].as_ref()?,
                ))
            })
            .collect();
        let rate: Vec<f64> = pairs
            .iter()
            .map(|(full, f)| f.writes_per_s / full.writes_per_s)
            .collect();
        let cpu: Vec<f64> = pairs
            .iter()
            .map(|(full, f)| full.cpu_per_write / f.cpu_per_write.max(1e-9))
            .collect();
        let disk: Vec<f64> = pairs
            .iter()
            .map(|(full, f)| per_key(f, &f.disk) / per_key(full, &full.disk))
            .collect();
        let entries: Vec<f64> = pairs
            .iter()
            .map(|(full, f)| per_key(f, &f.entries) / per_key(full, &full.entries))
            .collect();
        let fmt = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "R=3 ({what}) / R=6, median of {} rounds: writes/s ×{:.2} [{}] (target ≥ 1.5); writes the nodes' CPU sustains (1 / node CPU per write) ×{:.2} [{}]; per key written: disk per node ×{:.2}, entries per node ×{:.2} (R/N = 0.5)",
            pairs.len(),
            median(rate.clone()),
            fmt(&rate),
            median(cpu.clone()),
            fmt(&cpu),
            median(disk),
            median(entries),
        );
    }
    // Cost model: node CPU per write = origin + (R − 1) × replica. The two
    // factors give both terms, and so how much of a write no R can save.
    let c6 = median(
        figures
            .iter()
            .filter_map(|r| Some(r[Setup::Full as usize].as_ref()?.cpu_per_write))
            .collect(),
    );
    let c3 = median(
        figures
            .iter()
            .filter_map(|r| Some(r[Setup::Owner as usize].as_ref()?.cpu_per_write))
            .collect(),
    );
    let replica = (c6 - c3) / 3.0;
    let origin = c3 - 2.0 * replica;
    println!(
        "cost split (medians, writes to an owner): node CPU per write = origin {:.0} µs + (R − 1) × {:.0} µs per other copy; the origin's part, paid whatever R, is {:.0} % of an R=6 write, so (o + 5r) / (o + 2r) = ×{:.2}",
        origin * 1e6,
        replica * 1e6,
        100.0 * origin / c6.max(1e-9),
        c6 / c3.max(1e-9)
    );
    if let Some((cl, keys)) = kept {
        rebalance(cl, keys, &args).await?;
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    shared::main_with(run(Args::parse()))
}
