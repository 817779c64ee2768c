//! The cluster benchmarks of issue 3 on a 3-node loopback cluster started
//! by this program (fresh CA and certificates, real QUIC, real sled in a
//! temp directory, no sensors). Not a product command: run it with
//! `cargo bench --bench cluster -- [--only latency,throughput] [--duration 10s]`.
//! It shares the multi-node test harness (`tests/common`) for ports and
//! child processes of the `hub` binary.
//!
//! Parts (all by default; `--only a,b` picks some):
//! - `latency`: paced writes on A (through its group-commit writer, as an
//!   HTTP PUT handler does); "visible on all" is the moment B's and C's
//!   version vectors count the write's seq (deltas of one origin apply in seq
//!   order, so the entry is readable there from that moment). An observer
//!   thread polls both stores' vectors every ~200 µs (two mutex-guarded map
//!   clones per poll, no HTTP, so the measurement barely perturbs the nodes).
//! - `throughput`: many concurrent single-key durable writers on A for a
//!   while; writes/s accepted, the largest replica lag seen (sampled every
//!   100 ms) and the final lag (from the last acknowledged write until B and
//!   C hold everything).
//! - `dead`: C shuts down (graceful: it tells its peers it leaves), then a
//!   2,000-write burst on A; time until B holds all of it.
//! - `catchup`: with C stopped, 5,000 writes on A, then C restarts from its
//!   data directory on the same QUIC port without `--join` (it rejoins the
//!   peers remembered in its store); time from the restart until C holds all.
//! - `cpu` and `crash` run three `hub serve` child processes (this binary),
//!   so each node's CPU time is its own: `cpu` writes over HTTP to A and
//!   reads utime+stime of B and C from `/proc/PID/stat` before and after,
//!   minus their idle rate measured just before; `crash` kills C with SIGKILL
//!   (no leave message, peers must detect it) and times a 2,000-write HTTP
//!   burst on A until B serves a sentinel written after the burst (seq order
//!   implies B then holds the whole burst), at once and 2 s after the kill.
//! - `ae`: anti-entropy between two real stores of `--ae-keys` keys that
//!   differ in `--ae-diffs` (half newer on each side), one session of the
//!   real `Replicator`s over a perfect in-memory network (every commit
//!   applied and flushed); bytes are the encoded messages.
//!
//! The machine's load average is printed with the figures: on a shared
//! 2-core machine the nodes, the load generator and other work compete.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use hub::certs;
use hub::config::{Config, ConfigLayer};
use hub::membership::Status;
use hub::model::{Entry, Hlc, NodeId, Version};
use hub::node::Node;
use hub::replication::{Effect, ReplicationConfig, Replicator};
use hub::store::commit::wall_ms;
use hub::store::{Condition, Op, Outcome, Store, StoreConfig};

use hub::config::parse_duration;

#[path = "../tests/common/mod.rs"]
mod common;
mod shared;

#[derive(Parser, Debug)]
#[command(
    name = "cluster-bench",
    about = "Cluster benchmarks on a 3-node loopback cluster"
)]
pub struct ClusterArgs {
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    pub bench: bool,
    /// Parts to run (default all): latency, throughput, dead, catchup, cpu, crash, ae.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Part>,
    /// Paced write rate of the latency part.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Duration of the latency and throughput parts.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Concurrent writers of the throughput part.
    #[arg(long, default_value_t = 256)]
    pub writers: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// Writes of the `dead` and `crash` bursts.
    #[arg(long, default_value_t = 2000)]
    pub burst: usize,
    /// Writes the restarted node misses in the `catchup` part.
    #[arg(long, default_value_t = 5000)]
    pub missed: usize,
    /// HTTP writes of the `cpu` part.
    #[arg(long, default_value_t = 20_000)]
    pub cpu_writes: usize,
    /// Keys of each store in the `ae` part.
    #[arg(long, default_value_t = 1_000_000)]
    pub ae_keys: usize,
    /// Keys that differ between the two stores in the `ae` part.
    #[arg(long, default_value_t = 1000)]
    pub ae_diffs: usize,
    /// Working directory (certificates, data); default a fresh temp dir,
    /// removed afterwards.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Part {
    Latency,
    Throughput,
    /// Throughput with A in this process and B, C as child processes: sled
    /// serialises batches and reads of every database in one process
    /// through a process-wide lock, so three in-process nodes contend where
    /// real nodes would not.
    Split,
    Dead,
    Catchup,
    Cpu,
    Crash,
    Ae,
}

/// One line of the final table.
struct Row {
    what: String,
    value: String,
    target: &'static str,
    ok: Option<bool>,
}

fn row(
    what: impl Into<String>,
    value: impl Into<String>,
    target: &'static str,
    ok: Option<bool>,
) -> Row {
    let r = Row {
        what: what.into(),
        value: value.into(),
        target,
        ok,
    };
    println!("  {:<44} {}", r.what, r.value);
    r
}

const IDS: [&str; 3] = ["bench-a", "bench-b", "bench-c"];

pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let parts: Vec<Part> = if args.only.is_empty() {
        Part::value_variants().to_vec()
    } else {
        args.only.clone()
    };
    let (root, remove) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("hub-bench-cluster-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let certs_dir = root.join("certs");
    if !certs::ca_paths(&certs_dir).cert.exists() {
        certs::init_ca(&certs_dir).context("creating the bench CA")?;
    }
    for id in IDS {
        let id = NodeId::new(id)?;
        if !certs::node_paths(&certs_dir, &id).cert.exists() {
            certs::issue(&certs_dir, &id, &[], &[]).with_context(|| format!("issuing {id}"))?;
        }
    }
    println!(
        "cluster bench: 3 nodes on loopback, data in {}",
        root.display()
    );
    println!("load average at start: {}", shared::loadavg());
    let result = run_parts(&args, &parts, &root, &certs_dir).await;
    if remove {
        let _ = std::fs::remove_dir_all(&root);
    }
    let rows = result?;
    println!();
    println!("load average at end: {}", shared::loadavg());
    println!("{:<46} {:<40} {:<12} ok", "measure", "result", "target");
    for r in &rows {
        println!(
            "{:<46} {:<40} {:<12} {}",
            r.what,
            r.value,
            r.target,
            match r.ok {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "",
            }
        );
    }
    Ok(())
}

/// Prints a part's title with the load average it starts under.
fn part_title(title: std::fmt::Arguments) {
    println!("\n{title} (load {})", shared::loadavg());
}

async fn run_parts(
    args: &ClusterArgs,
    parts: &[Part],
    root: &Path,
    certs_dir: &Path,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let in_process = [Part::Latency, Part::Throughput, Part::Dead, Part::Catchup];
    if parts.iter().any(|p| in_process.contains(p)) {
        let mut cluster = LocalCluster::start(root.join("inproc"), certs_dir).await?;
        let r = async {
            if parts.contains(&Part::Latency) {
                part_title(format_args!(
                    "[latency] {} writes/s for {:?} on A",
                    args.rate, args.duration
                ));
                rows.extend(latency(&cluster, args).await?);
            }
            if parts.contains(&Part::Throughput) {
                part_title(format_args!(
                    "[throughput] {} writers on A for {:?}",
                    args.writers, args.duration
                ));
                rows.extend(throughput(&cluster, args).await?);
            }
            if parts.contains(&Part::Dead) {
                part_title(format_args!(
                    "[dead] C shuts down, {}-write burst on A",
                    args.burst
                ));
                rows.extend(dead_peer(&mut cluster, args).await?);
            }
            if parts.contains(&Part::Catchup) {
                part_title(format_args!(
                    "[catchup] C misses {} writes, restarts",
                    args.missed
                ));
                rows.extend(catchup(&mut cluster, args).await?);
            }
            anyhow::Ok(())
        }
        .await;
        cluster.shutdown().await;
        r?;
    }
    if parts.contains(&Part::Split) {
        part_title(format_args!(
            "[split] {} writers on in-process A, B and C as child processes, for {:?}",
            args.writers, args.duration
        ));
        rows.extend(split_throughput(&root.join("split"), certs_dir, args).await?);
    }
    if parts.contains(&Part::Cpu) || parts.contains(&Part::Crash) {
        let mut procs = ProcCluster::start(root.join("procs"), certs_dir).await?;
        let r = async {
            if parts.contains(&Part::Cpu) {
                part_title(format_args!(
                    "[cpu] {} HTTP writes on A, child processes",
                    args.cpu_writes
                ));
                rows.extend(cpu(&procs, args).await?);
            }
            if parts.contains(&Part::Crash) {
                part_title(format_args!(
                    "[crash] kill -9 C, {}-write bursts on A",
                    args.burst
                ));
                rows.extend(crash(&mut procs, args).await?);
            }
            anyhow::Ok(())
        }
        .await;
        procs.stop();
        r?;
    }
    if parts.contains(&Part::Ae) {
        part_title(format_args!(
            "[ae] {} keys, {} differing",
            args.ae_keys, args.ae_diffs
        ));
        let (keys, diffs, dir) = (args.ae_keys, args.ae_diffs, root.join("ae"));
        let r = tokio::task::spawn_blocking(move || anti_entropy(&dir, keys, diffs))
            .await
            .context("anti-entropy task failed")??;
        rows.extend(r);
    }
    Ok(rows)
}

// ---------------------------------------------------------------- in process

struct LocalCluster {
    dir: PathBuf,
    certs: PathBuf,
    ids: Vec<NodeId>,
    nodes: Vec<Option<Node>>,
    quic: Vec<SocketAddr>,
}

impl LocalCluster {
    async fn start(dir: PathBuf, certs: &Path) -> anyhow::Result<LocalCluster> {
        let mut c = LocalCluster {
            dir,
            certs: certs.to_path_buf(),
            ids: IDS
                .iter()
                .map(|s| NodeId::new(*s))
                .collect::<Result<_, _>>()?,
            nodes: Vec::new(),
            quic: Vec::new(),
        };
        for i in 0..3 {
            let join = c.quic.first().copied();
            let node = c.start_node(i, "127.0.0.1:0".parse()?, join).await?;
            c.quic
                .push(node.quic_addr().context("node has no QUIC address")?);
            c.nodes.push(Some(node));
        }
        c.wait_formed(&[0, 1, 2], Duration::from_secs(20)).await?;
        Ok(c)
    }

    async fn start_node(
        &self,
        i: usize,
        listen: SocketAddr,
        join: Option<SocketAddr>,
    ) -> anyhow::Result<Node> {
        let layer = ConfigLayer {
            node_id: Some(self.ids[i].to_string()),
            data_dir: Some(self.dir.join(self.ids[i].as_str())),
            http: Some("127.0.0.1:0".into()),
            listen: Some(listen.to_string()),
            certs: Some(self.certs.clone()),
            join: join.map(|a| vec![a.to_string()]),
            sensors: Some(Vec::new()),
            ..ConfigLayer::default()
        };
        let config = Config::resolve([layer])?;
        Node::start(config)
            .await
            .with_context(|| format!("starting {}", self.ids[i]))
    }

    /// Starts node `i` again on its data directory and QUIC port, without
    /// `--join`. The stopped endpoint's socket may take a moment to go.
    async fn restart(&mut self, i: usize) -> anyhow::Result<Arc<Store>> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let node = loop {
            match self.start_node(i, self.quic[i], None).await {
                Ok(n) => break n,
                Err(e) if format!("{e:#}").contains("in use") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let store = node.store().clone();
        self.nodes[i] = Some(node);
        Ok(store)
    }

    fn node(&self, i: usize) -> anyhow::Result<&Node> {
        self.nodes[i].as_ref().context("node is stopped")
    }

    fn store(&self, i: usize) -> anyhow::Result<Arc<Store>> {
        Ok(self.node(i)?.store().clone())
    }

    /// Until each listed node sees every other listed node alive and
    /// replicating.
    async fn wait_formed(&self, which: &[usize], limit: Duration) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        loop {
            let mut ok = true;
            for &i in which {
                let view = self.node(i)?.cluster_view().context("not clustered")?;
                for &j in which {
                    if i == j {
                        continue;
                    }
                    let id = self.ids[j].as_str();
                    let alive = view
                        .members
                        .iter()
                        .any(|m| m.node_id.as_str() == id && m.status == Status::Alive);
                    let up = view.replication.peers.get(id).is_some_and(|p| p.up);
                    ok &= alive && up;
                }
            }
            if ok {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > limit {
                bail!("cluster did not form within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(&mut self, i: usize) {
        if let Some(n) = self.nodes[i].take() {
            n.shutdown().await;
        }
    }

    async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i).await;
        }
    }
}

fn local_op(key: String, value: &[u8]) -> Op {
    Op::Local {
        key,
        value: Some(value.to_vec()),
        meta: Default::default(),
        cond: Condition::Always,
    }
}

fn seq_of(outcomes: &[Outcome]) -> anyhow::Result<u64> {
    match outcomes.first() {
        Some(Outcome::Written(d)) => Ok(d.seq),
        other => bail!("unexpected write outcome {other:?}"),
    }
}

/// Polls `stores` until each counts `seq` of `origin`; returns when.
async fn wait_seq(
    stores: &[Arc<Store>],
    origin: &NodeId,
    seq: u64,
    limit: Duration,
) -> anyhow::Result<Instant> {
    let t0 = Instant::now();
    loop {
        if stores.iter().all(|s| s.version_vector().get(origin) >= seq) {
            return Ok(Instant::now());
        }
        if t0.elapsed() > limit {
            let have: Vec<u64> = stores
                .iter()
                .map(|s| s.version_vector().get(origin))
                .collect();
            bail!("replicas did not reach seq {seq} of {origin} within {limit:?} (have {have:?})");
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

async fn latency(c: &LocalCluster, args: &ClusterArgs) -> anyhow::Result<Vec<Row>> {
    let a = c.ids[0].clone();
    let (sa, sb, sc) = (c.store(0)?, c.store(1)?, c.store(2)?);
    let base = sa.version_vector().get(&a);
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    // Observer: first time each seq of A is counted by B and by C.
    let observer = {
        let (stop, a) = (stop.clone(), a.clone());
        let watched = [sb.clone(), sc.clone()];
        std::thread::Builder::new()
            .name("bench-observer".into())
            .spawn(move || {
                let mut seen: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
                while !stop.load(Ordering::Relaxed) {
                    for (k, s) in watched.iter().enumerate() {
                        let have = s.version_vector().get(&a).saturating_sub(base) as usize;
                        if have > seen[k].len() {
                            let now = epoch.elapsed().as_micros() as u64;
                            seen[k].resize(have, now);
                        }
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
                seen
            })?
    };
    let value = vec![b'v'; args.value_bytes];
    let total = (args.rate as f64 * args.duration.as_secs_f64()) as usize;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(total);
    let run = std::process::id();
    for i in 0..total {
        tick.tick().await;
        let committer = c.node(0)?.committer().clone();
        let op = local_op(format!("lat-{run}/{i}"), &value);
        tasks.push(tokio::spawn(async move {
            let t0 = epoch.elapsed().as_micros() as u64;
            let out = committer.commit(vec![op]).await;
            let acked = epoch.elapsed().as_micros() as u64;
            (t0, acked, out)
        }));
    }
    let sent_for = epoch.elapsed();
    let mut writes = Vec::with_capacity(total);
    for t in tasks {
        let (t0, acked, out) = t.await?;
        writes.push((seq_of(&out?)?, t0, acked));
    }
    let last = writes.iter().map(|w| w.0).max().unwrap_or(base);
    wait_seq(&[sb, sc], &a, last, Duration::from_secs(30)).await?;
    // One more observer round after everything is counted.
    tokio::time::sleep(Duration::from_millis(2)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = observer
        .join()
        .map_err(|_| anyhow::anyhow!("observer thread panicked"))?;
    let mut vis = Vec::with_capacity(writes.len());
    let mut ack = Vec::with_capacity(writes.len());
    for &(seq, t0, acked) in &writes {
        let k = (seq - base - 1) as usize;
        let on_b = seen[0].get(k).copied().context("seq not observed on B")?;
        let on_c = seen[1].get(k).copied().context("seq not observed on C")?;
        vis.push(on_b.max(on_c).saturating_sub(t0));
        ack.push(acked - t0);
    }
    vis.sort_unstable();
    ack.sort_unstable();
    let rate = writes.len() as f64 / sent_for.as_secs_f64();
    let (p50, p99) = (percentile(&vis, 0.5), percentile(&vis, 0.99));
    Ok(vec![
        row(
            format!("write→visible on all 3, p50 ({rate:.0}/s)"),
            format!("{p50:.2} ms"),
            "≤ 3 ms",
            Some(p50 <= 3.0),
        ),
        row(
            "write→visible on all 3, p99",
            format!("{p99:.2} ms (max {:.2} ms)", percentile(&vis, 1.0)),
            "≤ 15 ms",
            Some(p99 <= 15.0),
        ),
        row(
            "  durable ack on A, p50 / p99",
            format!(
                "{:.2} / {:.2} ms",
                percentile(&ack, 0.5),
                percentile(&ack, 0.99)
            ),
            "",
            None,
        ),
    ])
}

type Writers = (
    Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    Arc<AtomicU64>,
);

/// `args.writers` tasks writing distinct keys through `committer` until
/// `args.duration` has passed; the counter holds acknowledged writes.
fn spawn_writers(
    committer: &hub::store::commit::Committer,
    args: &ClusterArgs,
    value: &[u8],
    tag: &str,
) -> Writers {
    let deadline = Instant::now() + args.duration;
    let done = Arc::new(AtomicU64::new(0));
    let run = std::process::id();
    let tasks = (0..args.writers.max(1))
        .map(|w| {
            let (committer, value, done) = (committer.clone(), value.to_vec(), done.clone());
            let prefix = format!("{tag}-{run}/{w}");
            tokio::spawn(async move {
                let mut i = 0u64;
                while Instant::now() < deadline {
                    committer
                        .commit(vec![local_op(format!("{prefix}/{i}"), &value)])
                        .await?;
                    i += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            })
        })
        .collect();
    (tasks, done)
}

async fn throughput(c: &LocalCluster, args: &ClusterArgs) -> anyhow::Result<Vec<Row>> {
    let a = c.ids[0].clone();
    let (sa, sb, sc) = (c.store(0)?, c.store(1)?, c.store(2)?);
    let committer = c.node(0)?.committer().clone();
    let groups0 = committer.stats().groups.load(Ordering::Relaxed);
    let value = vec![b'v'; args.value_bytes];
    let cpu0 = shared::cpu_seconds(std::process::id())?;
    let started = Instant::now();
    let (tasks, done) = spawn_writers(&committer, args, &value, "tp");
    // Lag sampler: how far the replicas trail A, in writes.
    let mut max_lag = 0u64;
    while tasks.iter().any(|t| !t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let head = sa.version_vector().get(&a);
        let tail = sb.version_vector().get(&a).min(sc.version_vector().get(&a));
        max_lag = max_lag.max(head.saturating_sub(tail));
    }
    for t in tasks {
        t.await??;
    }
    let ended = Instant::now();
    let elapsed = ended - started;
    let cpu = shared::cpu_seconds(std::process::id())? - cpu0;
    let n = done.load(Ordering::Relaxed);
    let head = sa.version_vector().get(&a);
    let behind = head - sb.version_vector().get(&a).min(sc.version_vector().get(&a));
    let caught = wait_seq(&[sb, sc], &a, head, Duration::from_secs(60)).await?;
    let final_lag = caught - ended;
    let rate = n as f64 / elapsed.as_secs_f64();
    let groups = committer.stats().groups.load(Ordering::Relaxed) - groups0;
    let cs = committer.stats();
    eprintln!(
        "A: {} flushes, mean {:.2} ms; {} groups, mean apply {:.2} ms",
        cs.flushes.load(Ordering::Relaxed),
        cs.flush_micros.load(Ordering::Relaxed) as f64
            / 1000.0
            / cs.flushes.load(Ordering::Relaxed).max(1) as f64,
        cs.groups.load(Ordering::Relaxed),
        cs.apply_micros.load(Ordering::Relaxed) as f64
            / 1000.0
            / cs.groups.load(Ordering::Relaxed).max(1) as f64,
    );
    Ok(vec![
        row(
            format!("durable single-key writes on A ({} writers)", args.writers),
            format!("{rate:.0}/s ({n} in {:.1} s)", elapsed.as_secs_f64()),
            "≥ 20,000/s",
            Some(rate >= 20_000.0),
        ),
        row(
            "  A's commit groups, mean size",
            format!("{groups}, {:.0} writes", n as f64 / groups.max(1) as f64),
            "",
            None,
        ),
        row(
            "  CPU used (3 nodes + writers, one process)",
            format!(
                "{:.2} cores, {:.0} µs per write",
                cpu / elapsed.as_secs_f64(),
                cpu / n.max(1) as f64 * 1e6
            ),
            "",
            None,
        ),
        row(
            "  replica lag, max sampled (100 ms)",
            format!("{max_lag} writes"),
            "",
            None,
        ),
        row(
            "final lag: last ack → B and C hold all",
            format!(
                "{:.1} ms ({behind} writes behind at the end)",
                final_lag.as_secs_f64() * 1e3
            ),
            "keeps up",
            Some(final_lag < Duration::from_millis(500)),
        ),
    ])
}

/// `n` single-key writes on node `i` from 64 concurrent writers; returns the
/// highest seq written.
async fn burst(
    c: &LocalCluster,
    i: usize,
    n: usize,
    tag: &str,
    value: &[u8],
) -> anyhow::Result<u64> {
    let committer = c.node(i)?.committer().clone();
    let writers = 64.min(n.max(1));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (committer, value, tag) = (committer.clone(), value.to_vec(), tag.to_string());
        tasks.push(tokio::spawn(async move {
            let mut top = 0;
            for k in (w..n).step_by(writers) {
                let out = committer
                    .commit(vec![local_op(format!("{tag}/{k}"), &value)])
                    .await?;
                top = top.max(seq_of(&out)?);
            }
            anyhow::Ok(top)
        }));
    }
    let mut top = 0;
    for t in tasks {
        top = top.max(t.await??);
    }
    Ok(top)
}

async fn dead_peer(c: &mut LocalCluster, args: &ClusterArgs) -> anyhow::Result<Vec<Row>> {
    c.stop(2).await;
    let a = c.ids[0].clone();
    let sb = c.store(1)?;
    let value = vec![b'v'; args.value_bytes];
    let t0 = Instant::now();
    let top = burst(
        c,
        0,
        args.burst,
        &format!("dead-{}", std::process::id()),
        &value,
    )
    .await?;
    let acked = t0.elapsed();
    let done = wait_seq(&[sb], &a, top, Duration::from_secs(60)).await?;
    let lag = done - t0;
    Ok(vec![row(
        format!("C left, {} burst on A → all on B", args.burst),
        format!(
            "{:.1} ms (A acked all in {:.1} ms)",
            lag.as_secs_f64() * 1e3,
            acked.as_secs_f64() * 1e3
        ),
        "< 200 ms",
        Some(lag < Duration::from_millis(200)),
    )])
}

async fn catchup(c: &mut LocalCluster, args: &ClusterArgs) -> anyhow::Result<Vec<Row>> {
    let a = c.ids[0].clone();
    if c.nodes[2].is_none() {
        // Stopped by the `dead` part: bring C up to date first, so it misses
        // exactly `--missed` writes.
        let sc = c.restart(2).await?;
        let head = c.store(0)?.version_vector().get(&a);
        wait_seq(&[sc], &a, head, Duration::from_secs(60)).await?;
        c.wait_formed(&[0, 1, 2], Duration::from_secs(30)).await?;
    }
    c.stop(2).await;
    let value = vec![b'v'; args.value_bytes];
    let top = burst(
        c,
        0,
        args.missed,
        &format!("missed-{}", std::process::id()),
        &value,
    )
    .await?;
    // Let B hold them too, so the figure is C's catch-up alone.
    wait_seq(&[c.store(1)?], &a, top, Duration::from_secs(60)).await?;
    let t0 = Instant::now();
    let sc = c.restart(2).await?;
    let started = t0.elapsed();
    let had = sc.version_vector().get(&a);
    let done = wait_seq(&[sc], &a, top, Duration::from_secs(60)).await?;
    let took = done - t0;
    let formed = c
        .wait_formed(&[0, 1, 2], Duration::from_secs(30))
        .await
        .ok();
    // The stats snapshot is refreshed every 200 ms: read it once it counts
    // everything (or give up after a second and show what it says).
    let stats_by = Instant::now() + Duration::from_secs(1);
    let (applied, ae_entries) = loop {
        let view = c.node(2)?.cluster_view().context("not clustered")?;
        let (mut applied, mut ae_entries) = (0, 0);
        for p in view.replication.peers.values() {
            applied += p.deltas_applied;
            ae_entries += p
                .last_anti_entropy
                .as_ref()
                .map_or(0, |r| r.entries_applied);
        }
        if applied + ae_entries >= top - had || Instant::now() > stats_by {
            break (applied, ae_entries);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Ok(vec![
        row(
            format!("restarted C catches up {} missed writes", top - had),
            format!(
                "{:.1} ms (node start {:.1} ms)",
                took.as_secs_f64() * 1e3,
                started.as_secs_f64() * 1e3
            ),
            "< 500 ms",
            Some(took < Duration::from_millis(500)),
        ),
        row(
            "  C got them as",
            format!("{applied} deltas (push/pull), {ae_entries} anti-entropy entries"),
            "",
            None,
        ),
        row(
            "  C sees all peers alive after",
            formed.map_or("n/a".into(), |d| {
                format!("{:.0} ms", (d + took).as_secs_f64() * 1e3)
            }),
            "",
            None,
        ),
    ])
}

// ----------------------------------------------------------- child processes

struct Proc {
    child: std::process::Child,
    http: String,
}

struct ProcCluster {
    procs: Vec<Option<Proc>>,
}

impl ProcCluster {
    async fn start(dir: PathBuf, certs: &Path) -> anyhow::Result<ProcCluster> {
        let exe = PathBuf::from(env!("CARGO_BIN_EXE_hub"));
        let ports = [
            common::free_udp_port(),
            common::free_udp_port(),
            common::free_udp_port(),
        ];
        let mut c = ProcCluster { procs: Vec::new() };
        for (i, id) in IDS.iter().enumerate() {
            let join = (i > 0).then(|| format!("127.0.0.1:{}", ports[0]));
            c.procs.push(Some(
                spawn_serve(&exe, &dir, certs, id, ports[i], join).await?,
            ));
        }
        // Formed: every node lists two alive peers.
        let t0 = Instant::now();
        loop {
            let mut ok = true;
            for p in c.procs.iter().flatten() {
                let body = http_get(&p.http, "/api/membership")
                    .await
                    .unwrap_or_default();
                ok &= body.matches("\"alive\"").count() >= 2;
            }
            if ok {
                break;
            }
            if t0.elapsed() > Duration::from_secs(20) {
                c.stop();
                bail!("child-process cluster did not form within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(c)
    }

    fn proc(&self, i: usize) -> anyhow::Result<&Proc> {
        self.procs[i].as_ref().context("process is stopped")
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.procs[i].take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    fn stop(&mut self) {
        for p in self.procs.iter_mut().flatten() {
            // SIGTERM for a clean shutdown, SIGKILL if it lingers.
            let _ = std::process::Command::new("kill")
                .arg(p.child.id().to_string())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for p in self.procs.iter_mut().flatten() {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = p.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        self.procs.clear();
    }
}

/// Starts `hub serve` for node `id` and waits for its "serving" line.
async fn spawn_serve(
    exe: &Path,
    dir: &Path,
    certs: &Path,
    id: &str,
    port: u16,
    join: Option<String>,
) -> anyhow::Result<Proc> {
    use std::io::BufRead;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("serve")
        .args(["--node-id", id])
        .arg("--data-dir")
        .arg(dir.join(id))
        .args(["--http", "127.0.0.1:0"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--certs")
        .arg(certs)
        .arg("--no-sensors")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    if let Some(join) = join {
        cmd.args(["--join", &join]);
    }
    let mut child = cmd.spawn().context("spawning hub serve")?;
    let stdout = child.stdout.take().context("child stdout")?;
    // "hub node ID serving http://ADDR"
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map(|_| line)
    })
    .await??;
    let http = line
        .trim()
        .rsplit("http://")
        .next()
        .filter(|s| !s.is_empty() && line.contains("http://"))
        .with_context(|| format!("unexpected output of hub serve: {line:?}"))?
        .to_string();
    Ok(Proc { child, http })
}

/// A's seq as counted by a child node's version vector.
async fn remote_seq(http: &str, origin: &NodeId) -> anyhow::Result<u64> {
    let body = http_get(http, "/api/introspection").await?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    Ok(v["version_vector"][origin.as_str()].as_u64().unwrap_or(0))
}

async fn split_throughput(
    dir: &Path,
    certs: &Path,
    args: &ClusterArgs,
) -> anyhow::Result<Vec<Row>> {
    let a_id = NodeId::new(IDS[0])?;
    let layer = ConfigLayer {
        node_id: Some(a_id.to_string()),
        data_dir: Some(dir.join(IDS[0])),
        http: Some("127.0.0.1:0".into()),
        listen: Some("127.0.0.1:0".into()),
        certs: Some(certs.to_path_buf()),
        sensors: Some(Vec::new()),
        ..ConfigLayer::default()
    };
    let a = Node::start(Config::resolve([layer])?).await?;
    let quic = a.quic_addr().context("A has no QUIC address")?;
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_hub"));
    let mut children = Vec::new();
    for id in &IDS[1..] {
        let port = common::free_udp_port();
        children.push(spawn_serve(&exe, dir, certs, id, port, Some(quic.to_string())).await?);
    }
    let result = async {
        let t0 = Instant::now();
        loop {
            let view = a.cluster_view().context("not clustered")?;
            let up = view.replication.peers.values().filter(|p| p.up).count();
            if up >= 2 {
                break;
            }
            if t0.elapsed() > Duration::from_secs(20) {
                bail!("split cluster did not form within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let committer = a.committer().clone();
        let value = vec![b'v'; args.value_bytes];
        let pids: Vec<u32> = children.iter().map(|c| c.child.id()).collect();
        let cpu0 = shared::cpu_seconds(std::process::id())?;
        let child_cpu0: Vec<f64> = pids
            .iter()
            .map(|p| shared::cpu_seconds(*p))
            .collect::<Result<_, _>>()?;
        let started = Instant::now();
        let (tasks, done) = spawn_writers(&committer, args, &value, "split");
        for t in tasks {
            t.await??;
        }
        let ended = Instant::now();
        let elapsed = ended - started;
        let n = done.load(Ordering::Relaxed);
        let head = a.store().version_vector().get(&a_id);
        loop {
            let mut min = u64::MAX;
            for c in &children {
                min = min.min(remote_seq(&c.http, &a_id).await?);
            }
            if min >= head {
                break;
            }
            if ended.elapsed() > Duration::from_secs(60) {
                bail!("replicas did not catch up within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let final_lag = ended.elapsed();
        let cpu_a = shared::cpu_seconds(std::process::id())? - cpu0;
        let mut cpu_children = Vec::new();
        for (p, c0) in pids.iter().zip(&child_cpu0) {
            cpu_children.push(shared::cpu_seconds(*p)? - c0);
        }
        let rate = n as f64 / elapsed.as_secs_f64();
        let per = |cpu: f64| cpu / n.max(1) as f64 * 1e6;
        anyhow::Ok(vec![
            row(
                format!(
                    "durable writes, A in-proc + 2 child replicas ({} writers)",
                    args.writers
                ),
                format!("{rate:.0}/s ({n} in {:.1} s)", elapsed.as_secs_f64()),
                "≥ 20,000/s",
                Some(rate >= 20_000.0),
            ),
            row(
                "  CPU per write: A (+writers) / B / C",
                format!(
                    "{:.0} / {:.0} / {:.0} µs",
                    per(cpu_a),
                    per(cpu_children[0]),
                    per(cpu_children[1])
                ),
                "",
                None,
            ),
            row(
                "  final lag: last ack → B and C hold all",
                format!("{:.1} ms", final_lag.as_secs_f64() * 1e3),
                "keeps up",
                Some(final_lag < Duration::from_millis(500)),
            ),
        ])
    }
    .await;
    for mut c in children {
        let _ = std::process::Command::new("kill")
            .arg(c.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && !matches!(c.child.try_wait(), Ok(Some(_))) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = c.child.kill();
        let _ = c.child.wait();
    }
    a.shutdown().await;
    result
}

async fn connect(authority: &str) -> anyhow::Result<http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("cannot connect to {authority}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn request(
    sender: &mut http1::SendRequest<Full<Bytes>>,
    req: hyper::Request<Full<Bytes>>,
) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
    sender.ready().await.context("connection closed")?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

async fn http_get(authority: &str, path: &str) -> anyhow::Result<String> {
    let mut s = connect(authority).await?;
    let req = hyper::Request::get(path)
        .header("host", authority)
        .body(Full::new(Bytes::new()))?;
    let (status, body) = request(&mut s, req).await?;
    if !status.is_success() {
        bail!("GET {path}: {status}");
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// `n` PUTs of distinct keys to `authority` from 64 keep-alive connections,
/// then one sentinel PUT after all were acknowledged (so its seq is above
/// all of theirs). Returns the sentinel's key.
async fn http_burst(authority: &str, n: usize, tag: &str, value: &Bytes) -> anyhow::Result<String> {
    let clients = 64.min(n.max(1));
    let mut tasks = Vec::new();
    for w in 0..clients {
        let (authority, tag, value) = (authority.to_string(), tag.to_string(), value.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = connect(&authority).await?;
            for k in (w..n).step_by(clients) {
                let req = hyper::Request::put(format!("/kv/{tag}/{k}"))
                    .header("host", &authority)
                    .body(Full::new(value.clone()))?;
                let (status, body) = request(&mut s, req).await?;
                if !status.is_success() {
                    bail!("PUT failed: {status} {}", String::from_utf8_lossy(&body));
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let key = format!("{tag}/sentinel");
    let mut s = connect(authority).await?;
    let req = hyper::Request::put(format!("/kv/{key}"))
        .header("host", authority)
        .body(Full::new(value.clone()))?;
    let (status, _) = request(&mut s, req).await?;
    if !status.is_success() {
        bail!("sentinel PUT failed: {status}");
    }
    Ok(key)
}

/// Polls `GET /kv/{key}` on each node every `every` until all answer 200.
async fn wait_key(
    authorities: &[&str],
    key: &str,
    every: Duration,
    limit: Duration,
) -> anyhow::Result<Instant> {
    let t0 = Instant::now();
    let mut conns = Vec::new();
    for a in authorities {
        conns.push((a.to_string(), connect(a).await?));
    }
    loop {
        let mut all = true;
        for (a, s) in conns.iter_mut() {
            let req = hyper::Request::get(format!("/kv/{key}"))
                .header("host", a.as_str())
                .body(Full::new(Bytes::new()))?;
            all &= request(s, req).await?.0.is_success();
        }
        if all {
            return Ok(Instant::now());
        }
        if t0.elapsed() > limit {
            bail!("{key} not on all nodes within {limit:?}");
        }
        tokio::time::sleep(every).await;
    }
}

async fn cpu(c: &ProcCluster, args: &ClusterArgs) -> anyhow::Result<Vec<Row>> {
    let (a, b, cc) = (c.proc(0)?, c.proc(1)?, c.proc(2)?);
    let pids = [a.child.id(), b.child.id(), cc.child.id()];
    // Idle rate: heartbeats, timers.
    let idle_for = Duration::from_secs(2);
    let cpu0: Vec<f64> = pids
        .iter()
        .map(|&p| shared::cpu_seconds(p))
        .collect::<Result<_, _>>()?;
    tokio::time::sleep(idle_for).await;
    let cpu1: Vec<f64> = pids
        .iter()
        .map(|&p| shared::cpu_seconds(p))
        .collect::<Result<_, _>>()?;
    let idle: Vec<f64> = (0..3)
        .map(|i| (cpu1[i] - cpu0[i]) / idle_for.as_secs_f64())
        .collect();
    let value = Bytes::from(vec![b'v'; args.value_bytes]);
    let t0 = Instant::now();
    let key = http_burst(
        &a.http,
        args.cpu_writes,
        &format!("cpu-{}", std::process::id()),
        &value,
    )
    .await?;
    let written = t0.elapsed();
    wait_key(
        &[&b.http, &cc.http],
        &key,
        Duration::from_millis(20),
        Duration::from_secs(60),
    )
    .await?;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu2: Vec<f64> = pids
        .iter()
        .map(|&p| shared::cpu_seconds(p))
        .collect::<Result<_, _>>()?;
    let n = (args.cpu_writes + 1) as f64;
    let per = |i: usize| ((cpu2[i] - cpu1[i]) - idle[i] * elapsed).max(0.0) / n * 1e6;
    let (pa, pb, pc) = (per(0), per(1), per(2));
    Ok(vec![
        row(
            "CPU per replicated write on a replica (B, C)",
            format!("{pb:.0} µs, {pc:.0} µs"),
            "report",
            None,
        ),
        row(
            "  CPU per write on the origin A (incl. HTTP)",
            format!(
                "{pa:.0} µs ({:.0} HTTP writes/s, 64 clients)",
                n / written.as_secs_f64()
            ),
            "",
            None,
        ),
        row(
            "  idle CPU per node (A, B, C)",
            format!(
                "{:.1}%, {:.1}%, {:.1}%",
                idle[0] * 100.0,
                idle[1] * 100.0,
                idle[2] * 100.0
            ),
            "",
            None,
        ),
    ])
}

async fn crash(c: &mut ProcCluster, args: &ClusterArgs) -> anyhow::Result<Vec<Row>> {
    c.kill(2);
    let killed = Instant::now();
    let (a, b) = (c.proc(0)?.http.clone(), c.proc(1)?.http.clone());
    let value = Bytes::from(vec![b'v'; args.value_bytes]);
    let mut rows = Vec::new();
    for (label, at) in [
        ("at once", Duration::ZERO),
        ("2 s later", Duration::from_secs(2)),
    ] {
        tokio::time::sleep(at.saturating_sub(killed.elapsed())).await;
        let t0 = Instant::now();
        let key = http_burst(
            &a,
            args.burst,
            &format!("crash-{}-{}", std::process::id(), at.as_secs()),
            &value,
        )
        .await?;
        let acked = t0.elapsed();
        let done = wait_key(
            &[&b],
            &key,
            Duration::from_millis(2),
            Duration::from_secs(60),
        )
        .await?;
        let lag = done - t0;
        rows.push(row(
            format!("C kill -9, {} burst on A {label} → on B", args.burst),
            format!(
                "{:.1} ms (A acked all in {:.1} ms)",
                lag.as_secs_f64() * 1e3,
                acked.as_secs_f64() * 1e3
            ),
            "< 200 ms",
            Some(lag < Duration::from_millis(200)),
        ));
    }
    Ok(rows)
}

// ------------------------------------------------------------ anti-entropy

fn anti_entropy(dir: &Path, keys: usize, diffs: usize) -> anyhow::Result<Vec<Row>> {
    if keys == 0 || diffs == 0 || diffs > keys {
        bail!("--ae-keys must be ≥ --ae-diffs ≥ 1");
    }
    let a_id = NodeId::new("ae-a")?;
    let b_id = NodeId::new("ae-b")?;
    let open = |id: &NodeId| -> anyhow::Result<Store> {
        Ok(Store::open(
            &dir.join(id.as_str()),
            StoreConfig {
                node_id: Some(id.clone()),
                ..StoreConfig::default()
            },
        )?)
    };
    let (sa, sb) = (open(&a_id)?, open(&b_id)?);
    let now = wall_ms();
    let writer = NodeId::new("writer")?;
    let entry = |h: u64| Entry {
        version: Version {
            hlc: Hlc(Hlc::new(now - 100_000, 0).0 + h),
            node: writer.clone(),
        },
        value: Some(vec![7; 16]),
        meta: Default::default(),
    };
    let built = Instant::now();
    let chunk = 20_000;
    for start in (0..keys).step_by(chunk) {
        let ops: Vec<Op> = (start..(start + chunk).min(keys))
            .map(|k| Op::Entry {
                key: format!("sensor/{k:08}"),
                entry: entry(1),
            })
            .collect();
        sa.apply(ops.clone(), now)?;
        sb.apply(ops, now)?;
    }
    // Differences spread over the key space: newer on A for even, on B for odd.
    let step = (keys / diffs).max(1);
    for d in 0..diffs {
        let key = format!("sensor/{:08}", (d * step) % keys);
        let target = if d % 2 == 0 { &sa } else { &sb };
        target.apply(
            vec![Op::Entry {
                key,
                entry: entry(2),
            }],
            now,
        )?;
    }
    sa.flush()?;
    sb.flush()?;
    println!(
        "  (built two {keys}-key stores in {:.1} s)",
        built.elapsed().as_secs_f64()
    );

    let mut ra = Replicator::new(a_id.clone(), ReplicationConfig::default(), 1);
    let mut rb = Replicator::new(b_id.clone(), ReplicationConfig::default(), 2);
    let started = Instant::now();
    let (ok, first) = ra.request_anti_entropy(&b_id, wall_ms(), &sa);
    if !ok {
        bail!("anti-entropy did not start");
    }
    let mut queue: std::collections::VecDeque<(bool, Effect)> =
        first.into_iter().map(|e| (true, e)).collect();
    let (mut bytes, mut msgs) = (0u64, 0u64);
    while let Some((on_a, effect)) = queue.pop_front() {
        let (store, repl, me) = if on_a {
            (&sa, &mut ra, &a_id)
        } else {
            (&sb, &mut rb, &b_id)
        };
        match effect {
            Effect::Send { msg, .. } => {
                bytes += msg.encoded_len();
                msgs += 1;
                let (to_store, to_repl) = if on_a { (&sb, &mut rb) } else { (&sa, &mut ra) };
                let out = to_repl.on_message(me, msg, wall_ms(), to_store);
                queue.extend(out.into_iter().map(|e| (!on_a, e)));
            }
            Effect::Commit { tag, ops, .. } => {
                let outcomes = store.apply(ops, wall_ms())?;
                store.flush()?;
                let out = repl.on_commit_outcomes(tag, &outcomes, wall_ms(), store);
                queue.extend(out.into_iter().map(|e| (on_a, e)));
            }
        }
    }
    let took = started.elapsed();
    if sa.merkle_root() != sb.merkle_root() {
        bail!("anti-entropy left the stores different");
    }
    let exchanged = ra
        .stats()
        .last_anti_entropy
        .map_or(0, |r| r.entries_received + r.entries_sent);
    let ms = took.as_secs_f64() * 1e3;
    Ok(vec![
        row(
            format!("anti-entropy {keys} keys / {diffs} differ: time"),
            format!("{ms:.0} ms ({msgs} messages, {exchanged} entries)"),
            "< 2 s",
            Some(took < Duration::from_secs(2)),
        ),
        row(
            "anti-entropy: bytes on the wire",
            format!("{:.0} KB", bytes as f64 / 1e3),
            "< 5 MB",
            Some(bytes < 5_000_000),
        ),
    ])
}

fn main() -> std::process::ExitCode {
    let args = ClusterArgs::parse();
    shared::main_with(run(args))
}
