//! Rebalance benchmark (issue 11): really moves `--move-keys` (default
//! 1 M) keys to a node that joins, and measures the move.
//!
//! `cargo bench --bench rebalance -- [--move-keys 1000000] [--value-bytes 256]
//! [--writers 2] [--readers 2] [--pace 20ms] [--every 5s]`
//!
//! **Topology.** Two `hub serve` processes `r1`, `r2` with
//! `--replication-factor 2` (each holds every key), then `r3` joins: the
//! layout becomes 2 of 3, and `r3` owns about two thirds of the 256
//! partitions, each of which it must receive from `r1` and `r2`. Keys
//! `k/000000000, k/000000001, …` are generated until `--move-keys` of them
//! fall in `r3`'s partitions (computed with `hub::placement::Layout`, as the
//! nodes do), so about 1.5 × `--move-keys` keys are filled.
//!
//! **Fill.** Offline, before any process starts, through the store library
//! on the two data directories: `r1` takes each batch as local writes, and
//! `r2` applies the deltas `r1` produced (the same origin, seq, version and
//! value), so the owners are identical, logs and version vectors included;
//! the bench checks their Merkle roots are equal once they serve.
//!
//! **Move.** Time from `r3`'s process start until it stores every filled key
//! of its partitions plus every acknowledged live write of them: keys/s,
//! MB/s of values, MB/s on the wire (QUIC frame bytes `r3` received from
//! `r1` and `r2`, from `/api/introspection`), and the time for 1 M keys
//! (measured when `--move-keys` ≥ 1 M). Progress (`r3`'s entries, the
//! `cluster.placement` counters of `r1`/`r2`: handoff sessions and entries
//! sent, partitions held but not owned) is printed every `--every`.
//!
//! **Service during the move.** `--writers` clients PUT fresh keys and
//! `--readers` clients GET random filled keys (checking the value), each
//! one request per `--pace`, round-robin over the running nodes (`r3` as
//! soon as it serves), from a few seconds before the join until the old
//! holders have dropped the partitions they handed off. Success rate and
//! p50/p99 latency per phase (before, moving, until dropped). A read that
//! misses is classified: 404 or a wrong value, a key a writer overwrote
//! (none should be), asked before `r3` placed partitions on all three
//! nodes, asked at a node that saw a peer not alive within 1 s (each
//! node's view of its peers is polled with the progress), found when read
//! again at the end. The time until the old holders dropped what they
//! handed off (`held_not_owned` 0 on both) is printed. At the end,
//! every acknowledged write is read back and every partition's owners must
//! show equal Merkle digests.
//!
//! The load average is printed with each figure: the three nodes, the load
//! and this process share the machine's cores.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use hyper::{Method, StatusCode};
use rand::Rng;
use serde_json::Value;

use hub::config::parse_duration;
use hub::model::{Meta, NodeId};
use hub::placement::{partition_of, Layout, PARTITIONS};
use hub::store::{Condition, Op, Outcome, Store, StoreConfig};

#[path = "../tests/common/mod.rs"]
mod common;
mod shared;
use common::{free_udp_port, Certs, Proc};
use shared::loadavg;

#[derive(Parser, Debug)]
#[command(name = "rebalance-bench")]
struct Args {
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    /// Keys the joining node must receive.
    #[arg(long, default_value_t = 1_000_000)]
    move_keys: u64,
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// Concurrent writers of fresh keys during the move.
    #[arg(long, default_value_t = 2)]
    writers: usize,
    /// Concurrent readers of filled keys during the move.
    #[arg(long, default_value_t = 2)]
    readers: usize,
    /// Pause between two requests of one load client.
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    pace: Duration,
    /// How often progress is printed.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    every: Duration,
    /// Give up on the move after this long.
    #[arg(long, default_value = "1800s", value_parser = parse_duration)]
    timeout: Duration,
    /// How long the old holders may take to drop what they handed off
    /// (they wait for the grace period, 30 s, first).
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    drop_timeout: Duration,
}

const IDS: [&str; 3] = ["r1", "r2", "r3"];
const FACTOR: usize = 2;
const BATCH: u64 = 10_000;

fn key(i: u64) -> String {
    format!("k/{i:09}")
}

/// The value of filled key `i`: its name, padded; a read can check it.
fn value(i: u64, len: usize) -> Vec<u8> {
    let mut v = key(i).into_bytes();
    v.resize(len.max(v.len()), b'v');
    v
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The layout once `r3` has joined.
fn final_layout() -> Layout {
    Layout::compute(IDS.iter().map(|i| common::id(i)).collect(), Some(FACTOR))
}

/// How many keys to fill so that `move_keys` of them are `r3`'s.
fn keys_to_fill(move_keys: u64) -> u64 {
    let layout = final_layout();
    let r3 = common::id(IDS[2]);
    let mut owned = 0;
    let mut i = 0;
    while owned < move_keys {
        if layout.owns(&r3, partition_of(&key(i))) {
            owned += 1;
        }
        i += 1;
    }
    i
}

/// Fills `r1` (local writes) and `r2` (the same deltas, applied as
/// replicated) with keys `0..n`, in batches, the two stores in two threads.
fn fill(r1: &Path, r2: &Path, n: u64, value_bytes: usize) -> anyhow::Result<()> {
    let open = |dir: &Path, id: &str| {
        Store::open(
            dir,
            StoreConfig {
                node_id: Some(NodeId::new(id)?),
                ..StoreConfig::default()
            },
        )
        .with_context(|| format!("open {}", dir.display()))
    };
    let s1 = open(r1, IDS[0])?;
    let s2 = open(r2, IDS[1])?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Op>>(4);
    let second = std::thread::spawn(move || -> anyhow::Result<()> {
        for ops in rx {
            for o in s2.apply(ops, wall_ms())? {
                if !matches!(o, Outcome::Applied { .. }) {
                    bail!("r2 did not apply a delta of r1: {o:?}");
                }
            }
        }
        s2.flush()?;
        Ok(())
    });
    let started = Instant::now();
    let mut i = 0;
    while i < n {
        let end = (i + BATCH).min(n);
        let ops = (i..end)
            .map(|k| Op::Local {
                key: key(k),
                value: Some(value(k, value_bytes)),
                meta: Meta::new(),
                cond: Condition::Always,
            })
            .collect();
        let mut deltas = Vec::with_capacity(BATCH as usize);
        for o in s1.apply(ops, wall_ms())? {
            match o {
                Outcome::Written(d) => deltas.push(Op::Delta(d)),
                other => bail!("r1 did not write a key: {other:?}"),
            }
        }
        if tx.send(deltas).is_err() {
            break; // the second thread failed: its error is reported below
        }
        i = end;
        if i % 250_000 < BATCH {
            println!(
                "  filled {i} of {n} keys on r1 and r2 ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
        }
    }
    drop(tx);
    s1.flush()?;
    second
        .join()
        .map_err(|_| anyhow::anyhow!("r2 fill thread panicked"))??;
    Ok(())
}

struct Cluster {
    certs: Certs,
    dir: tempfile::TempDir,
    ports: Vec<u16>,
    procs: Vec<Proc>,
}

impl Cluster {
    fn data(&self, i: usize) -> std::path::PathBuf {
        self.dir.path().join(IDS[i])
    }

    fn start(&mut self, i: usize) {
        let mut a = common::serve_args(
            IDS[i],
            &self.data(i),
            self.certs.path(),
            self.ports[i],
            (i > 0).then_some(self.ports[0]),
        );
        a.extend(["--replication-factor".into(), FACTOR.to_string()]);
        self.procs.push(Proc::start(&a));
    }

    async fn introspect(&self, c: &hub::client::Client, i: usize) -> anyhow::Result<Value> {
        shared::introspect(c, &self.procs[i].base).await
    }

    /// Waits until every running node places partitions on all of them.
    async fn wait_layout(&self, c: &hub::client::Client) -> anyhow::Result<()> {
        let bases: Vec<String> = self.procs.iter().map(|p| p.base.clone()).collect();
        shared::wait_layout(c, &bases, Duration::from_secs(120)).await
    }

    /// The level-2 digest (one partition) of node `i`.
    async fn partition_digest(
        &self,
        c: &hub::client::Client,
        i: usize,
        p: usize,
    ) -> anyhow::Result<Value> {
        let v = c
            .get_json(&format!(
                "{}/api/merkle?level=2&index={p}",
                self.procs[i].base
            ))
            .await?;
        Ok(v["digest"].clone())
    }
}

/// Per-phase results of the load clients.
const PHASES: [&str; 3] = ["before the join", "while moving", "until dropped"];

#[derive(Default)]
struct Tally {
    ok: u64,
    /// A read answered 404: data not found.
    not_found: u64,
    /// A read answered 200 with a value other than the filled one.
    wrong: u64,
    /// Reads not found or wrong, by the node asked (`IDS` order).
    missing_at: [u64; 3],
    failed: u64,
    micros: Vec<u64>,
}

/// A read of a filled key that did not return its value.
struct Miss {
    /// Filled key index.
    key: u64,
    /// Node asked (`IDS` index).
    at: usize,
    /// Seconds since `r3` started (negative: before).
    secs: f64,
    /// 404, else a wrong value.
    not_found: bool,
    /// `r3` already placed partitions on all three nodes when asked.
    r3_placed: bool,
}

#[derive(Default)]
struct Load {
    reads: [Tally; 3],
    writes: [Tally; 3],
    /// Keys written with a 2xx.
    written: Vec<String>,
    misses: Vec<Miss>,
}

struct Shared {
    bases: Mutex<Vec<String>>,
    phase: AtomicU8,
    stop: AtomicBool,
    /// Acknowledged writes of keys `r3` owns (it must receive them too).
    written_for_r3: AtomicU64,
    /// `r3`'s layout has three eligible members (set by the progress loop).
    r3_placed: AtomicBool,
    /// When `r3` started, once it has.
    joined_at: Mutex<Option<Instant>>,
    load: Mutex<Load>,
}

impl Shared {
    fn since_join(&self) -> f64 {
        let j = *self.joined_at.lock().unwrap_or_else(|e| e.into_inner());
        j.map_or(0.0, |j| j.elapsed().as_secs_f64())
    }
}

/// The `n`-th node in turn: its index in `IDS` and base URL.
fn pick_base(shared: &Shared, n: usize) -> (usize, String) {
    let b = shared.bases.lock().unwrap_or_else(|e| e.into_inner());
    (n % b.len(), b[n % b.len()].clone())
}

async fn writer(shared: Arc<Shared>, w: usize, pace: Duration) {
    let c = common::http_client();
    let layout = final_layout();
    let r3 = common::id(IDS[2]);
    let mut i = 0usize;
    while !shared.stop.load(Ordering::Relaxed) {
        let key = format!("live/{w}/{i}");
        let (_, base) = pick_base(&shared, w + i);
        let phase = shared.phase.load(Ordering::Relaxed) as usize;
        let t = Instant::now();
        let r = c
            .request(Method::PUT, &format!("{base}/kv/{key}"), "live", None)
            .await;
        let us = t.elapsed().as_micros() as u64;
        let ok = matches!(&r, Ok(r) if r.status.is_success());
        if ok && layout.owns(&r3, partition_of(&key)) {
            shared.written_for_r3.fetch_add(1, Ordering::Relaxed);
        }
        {
            let mut l = shared.load.lock().unwrap_or_else(|e| e.into_inner());
            let t = &mut l.writes[phase.min(2)];
            t.micros.push(us);
            if ok {
                t.ok += 1;
            } else {
                t.failed += 1;
            }
            if ok {
                l.written.push(key);
            }
        }
        i += 1;
        tokio::time::sleep(pace).await;
    }
}

async fn reader(shared: Arc<Shared>, r: usize, filled: u64, value_bytes: usize, pace: Duration) {
    let c = common::http_client();
    let mut n = r;
    while !shared.stop.load(Ordering::Relaxed) {
        let i = rand::thread_rng().gen_range(0..filled);
        let (at, base) = pick_base(&shared, n);
        let phase = shared.phase.load(Ordering::Relaxed) as usize;
        let t = Instant::now();
        let res = c
            .request(Method::GET, &format!("{base}/kv/{}", key(i)), "", None)
            .await;
        let us = t.elapsed().as_micros() as u64;
        {
            let mut l = shared.load.lock().unwrap_or_else(|e| e.into_inner());
            let t = &mut l.reads[phase.min(2)];
            t.micros.push(us);
            let missed = match res {
                Ok(r) if r.status == StatusCode::OK && r.body[..] == value(i, value_bytes)[..] => {
                    t.ok += 1;
                    None
                }
                Ok(r) if r.status == StatusCode::OK => {
                    t.wrong += 1;
                    Some(false)
                }
                Ok(r) if r.status == StatusCode::NOT_FOUND => {
                    t.not_found += 1;
                    Some(true)
                }
                _ => {
                    t.failed += 1;
                    None
                }
            };
            if let Some(not_found) = missed {
                t.missing_at[at] += 1;
                let miss = Miss {
                    key: i,
                    at,
                    secs: shared.since_join(),
                    not_found,
                    r3_placed: shared.r3_placed.load(Ordering::Relaxed),
                };
                l.misses.push(miss);
            }
        }
        n += 1;
        tokio::time::sleep(pace).await;
    }
}

fn pct(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i] as f64 / 1000.0
}

fn print_load(load: &mut Load) {
    for (what, tallies) in [("reads", &mut load.reads), ("writes", &mut load.writes)] {
        for (phase, t) in PHASES.iter().zip(tallies.iter_mut()) {
            let n = t.ok + t.not_found + t.wrong + t.failed;
            if n == 0 {
                continue;
            }
            println!(
                "  {what} {phase}: {n} requests, {:.2} % ok, {} not found (404), {} wrong value (asked r1, r2, r3: {:?}), {} failed; p50 {:.2} ms, p99 {:.2} ms",
                100.0 * t.ok as f64 / n as f64,
                t.not_found,
                t.wrong,
                t.missing_at,
                t.failed,
                pct(&mut t.micros, 0.50),
                pct(&mut t.micros, 0.99),
            );
        }
    }
}

/// What the progress loop saw besides the counters: when `r3` placed
/// partitions on all three nodes, and every peer a node saw not alive.
#[derive(Default)]
struct Watch {
    r3_placed_at: Option<f64>,
    /// (seconds since the join, observer, peer, status).
    not_alive: Vec<(f64, usize, String, String)>,
}

impl Watch {
    fn note(&mut self, shared: &Shared, s: &Snapshot) {
        let t = shared.since_join();
        if s.r3_eligible == IDS.len() as u64 && self.r3_placed_at.is_none() {
            self.r3_placed_at = Some(t);
            shared.r3_placed.store(true, Ordering::Relaxed);
        }
        for (i, peer, status) in &s.not_alive {
            self.not_alive.push((t, *i, peer.clone(), status.clone()));
        }
    }

    /// Whether node `at` was seen with a peer not alive within 1 s of `t`.
    fn flapping(&self, at: usize, t: f64) -> bool {
        self.not_alive
            .iter()
            .any(|(s, i, _, _)| *i == at && (s - t).abs() <= 1.0)
    }

    fn print(&self) {
        println!(
            "r3 placed partitions on all three nodes {} s after its start",
            self.r3_placed_at
                .map_or("(never seen)".into(), |t| format!("{t:.1}"))
        );
        let mut seen: std::collections::BTreeMap<(usize, &str, &str), (u64, f64, f64)> =
            Default::default();
        for (t, i, peer, status) in &self.not_alive {
            let e = seen
                .entry((*i, peer.as_str(), status.as_str()))
                .or_insert((0, *t, *t));
            e.0 += 1;
            e.2 = *t;
        }
        if seen.is_empty() {
            println!("membership: every node saw every peer alive at every poll (every 0.5 s)");
        }
        for ((i, peer, status), (n, first, last)) in seen {
            println!(
                "membership: {} saw {peer} {status} at {n} polls (0.5 s apart), first {first:.1} s, last {last:.1} s after the join",
                IDS[i]
            );
        }
    }
}

/// Classifies the reads that missed a filled key: 404 or a wrong value; a
/// key some writer overwrote (none should be: writers write `live/…`);
/// asked before `r3` placed partitions on all three nodes; asked at a node
/// that saw a peer not alive within 1 s; found on a second read at the end.
async fn print_misses(
    load: &Load,
    watch: &Watch,
    cl: &Cluster,
    c: &hub::client::Client,
    value_bytes: usize,
) {
    if load.misses.is_empty() {
        println!("read misses: none");
        return;
    }
    let written: std::collections::HashSet<&str> =
        load.written.iter().map(String::as_str).collect();
    let (mut nf, mut wrong, mut overwritten, mut early, mut flapping, mut found_later) =
        (0, 0, 0, 0, 0, 0);
    let mut at = [0u64; 3];
    let (mut first, mut last) = (f64::MAX, f64::MIN);
    for m in &load.misses {
        if m.not_found {
            nf += 1;
        } else {
            wrong += 1;
        }
        if written.contains(key(m.key).as_str()) {
            overwritten += 1;
        }
        if !m.r3_placed {
            early += 1;
        } else if watch.flapping(m.at, m.secs) {
            flapping += 1;
        }
        at[m.at] += 1;
        first = first.min(m.secs);
        last = last.max(m.secs);
        let url = format!("{}/kv/{}", cl.procs[m.at].base, key(m.key));
        if let Ok(r) = c.request(Method::GET, &url, "", None).await {
            if r.status == StatusCode::OK && r.body[..] == value(m.key, value_bytes)[..] {
                found_later += 1;
            }
        }
    }
    println!(
        "read misses: {} ({nf} 404, {wrong} wrong value; asked r1, r2, r3: {at:?}); {overwritten} of keys a writer overwrote; {early} asked before r3 placed partitions on all three nodes; {flapping} of the rest at a node that saw a peer not alive within 1 s; {found_later} found when read again at the same node at the end; first {first:.1} s, last {last:.1} s after the join",
        load.misses.len()
    );
}

/// Counters of the move, summed over the old holders `r1` and `r2`.
#[derive(Default, Debug)]
struct Snapshot {
    r3_entries: u64,
    sessions: u64,
    sent: u64,
    held_not_owned: u64,
    partitions_dropped: u64,
    /// QUIC frame bytes r3 received from r1 and r2.
    wire_bytes: u64,
    send_drops: u64,
    /// Eligible members in `r3`'s layout.
    r3_eligible: u64,
    /// (observer, peer, status) of every peer some node sees not alive.
    not_alive: Vec<(usize, String, String)>,
}

/// Peers node `i` sees in a status other than alive.
fn not_alive(i: usize, v: &Value, out: &mut Vec<(usize, String, String)>) {
    for m in v["cluster"]["members"].as_array().into_iter().flatten() {
        let status = m["status"].as_str().unwrap_or("?");
        if status != "alive" {
            let peer = m["node_id"].as_str().unwrap_or("?").to_string();
            out.push((i, peer, status.to_string()));
        }
    }
}

async fn snapshot(cl: &Cluster, c: &hub::client::Client) -> anyhow::Result<Snapshot> {
    let mut s = Snapshot::default();
    let v3 = cl.introspect(c, 2).await?;
    s.r3_entries = v3["entries"].as_u64().unwrap_or(0);
    s.r3_eligible = v3["cluster"]["placement"]["eligible_members"]
        .as_u64()
        .unwrap_or(0);
    not_alive(2, &v3, &mut s.not_alive);
    for p in v3["cluster"]["transport"]["peers"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if p["node_id"] != IDS[2] {
            s.wire_bytes += p["bytes_received"].as_u64().unwrap_or(0);
        }
    }
    for i in 0..2 {
        let v = cl.introspect(c, i).await?;
        not_alive(i, &v, &mut s.not_alive);
        let p = &v["cluster"]["placement"];
        s.sessions += p["handoff_sessions"].as_u64().unwrap_or(0);
        s.sent += p["handoff_entries_sent"].as_u64().unwrap_or(0);
        s.held_not_owned += p["held_not_owned"].as_u64().unwrap_or(0);
        s.partitions_dropped += p["partitions_dropped"].as_u64().unwrap_or(0);
        for q in v["cluster"]["transport"]["peers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            s.send_drops += q["send_drops"].as_u64().unwrap_or(0);
        }
    }
    Ok(s)
}

/// A snapshot for the progress loops, or `None` (said, after a pause)
/// when a node did not answer in time: on a loaded machine a node busy
/// with the move can be slow, which is no reason to stop measuring.
async fn poll(cl: &Cluster, c: &hub::client::Client) -> Option<Snapshot> {
    match snapshot(cl, c).await {
        Ok(s) => Some(s),
        Err(e) => {
            println!("  (no snapshot: {e:#}; polling on)  [load {}]", loadavg());
            tokio::time::sleep(Duration::from_millis(500)).await;
            None
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let to_move = args.move_keys;
    let filled = keys_to_fill(to_move);
    println!(
        "rebalance bench: r1, r2 with factor {FACTOR} hold {filled} keys ({} B values); r3 joins and must receive {to_move}  [load {}]",
        args.value_bytes,
        loadavg()
    );
    let mut cl = Cluster {
        certs: Certs::new(&IDS),
        dir: tempfile::tempdir().context("temp dir")?,
        ports: IDS.iter().map(|_| free_udp_port()).collect(),
        procs: Vec::new(),
    };
    let t = Instant::now();
    {
        let (d1, d2, vb) = (cl.data(0), cl.data(1), args.value_bytes);
        tokio::task::spawn_blocking(move || fill(&d1, &d2, filled, vb)).await??;
    }
    println!(
        "filled r1 and r2 offline in {:.1} s  [load {}]",
        t.elapsed().as_secs_f64(),
        loadavg()
    );

    let c = common::http_client();
    cl.start(0);
    cl.start(1);
    cl.wait_layout(&c).await?;
    let mut roots = Vec::new();
    for p in &cl.procs {
        let v = c
            .get_json(&format!("{}/api/merkle?level=0", p.base))
            .await?;
        roots.push(v["digest"].clone());
    }
    if roots[0] != roots[1] {
        bail!("r1 and r2 differ after the fill: roots {roots:?}");
    }
    println!("r1 and r2 serve, equal roots {}", roots[0]);

    // The light load, from a few seconds before the join.
    let shared = Arc::new(Shared {
        bases: Mutex::new(cl.procs.iter().map(|p| p.base.clone()).collect()),
        phase: AtomicU8::new(0),
        stop: AtomicBool::new(false),
        written_for_r3: AtomicU64::new(0),
        r3_placed: AtomicBool::new(false),
        joined_at: Mutex::new(None),
        load: Mutex::new(Load::default()),
    });
    let mut tasks = Vec::new();
    for w in 0..args.writers {
        tasks.push(tokio::spawn(writer(shared.clone(), w, args.pace)));
    }
    for r in 0..args.readers {
        tasks.push(tokio::spawn(reader(
            shared.clone(),
            r,
            filled,
            args.value_bytes,
            args.pace,
        )));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;

    // The join.
    shared.phase.store(1, Ordering::Relaxed);
    let started = Instant::now();
    *shared.joined_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(started);
    cl.start(2);
    shared
        .bases
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(cl.procs[2].base.clone());
    println!("r3 started  [load {}]", loadavg());
    let mut watch = Watch::default();
    let mut last = (Instant::now(), 0u64);
    let mut next_print = Instant::now() + args.every;
    let mut first_key: Option<f64> = None;
    let mut at_1m: Option<f64> = None;
    // Live writes acknowledged a moment ago must be there; the newest may
    // still be on their way (a push), so the target lags them by `LAG`.
    const LAG: Duration = Duration::from_secs(3);
    let mut history: std::collections::VecDeque<(Instant, u64)> = Default::default();
    let (secs, snap) = loop {
        history.push_back((
            Instant::now(),
            shared.written_for_r3.load(Ordering::Relaxed),
        ));
        while history.len() > 1 && history[1].0.elapsed() >= LAG {
            history.pop_front();
        }
        let live = history.front().map_or(0, |h| h.1);
        let Some(s) = poll(&cl, &c).await else {
            if started.elapsed() > args.timeout {
                bail!("no progress snapshot after {:?}", args.timeout);
            }
            continue;
        };
        watch.note(&shared, &s);
        if s.r3_entries > 0 && first_key.is_none() {
            first_key = Some(started.elapsed().as_secs_f64());
        }
        if s.r3_entries >= 1_000_000 && at_1m.is_none() {
            at_1m = Some(started.elapsed().as_secs_f64());
        }
        if s.r3_entries >= to_move + live {
            break (started.elapsed().as_secs_f64(), s);
        }
        if Instant::now() >= next_print {
            next_print = Instant::now() + args.every;
            let rate =
                (s.r3_entries.saturating_sub(last.1)) as f64 / last.0.elapsed().as_secs_f64();
            last = (Instant::now(), s.r3_entries);
            println!(
                "  {:>6.1} s: r3 holds {} of {} ({:.0} keys/s now); r1+r2 handoff sessions {}, entries sent {}, held not owned {}; wire {:.1} MB to r3; send drops {}  [load {}]",
                started.elapsed().as_secs_f64(),
                s.r3_entries,
                to_move + live,
                rate,
                s.sessions,
                s.sent,
                s.held_not_owned,
                s.wire_bytes as f64 / 1e6,
                s.send_drops,
                loadavg()
            );
        }
        if started.elapsed() > args.timeout {
            bail!(
                "r3 holds {} of {} keys after {:?}",
                s.r3_entries,
                to_move + live,
                args.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    shared.phase.store(2, Ordering::Relaxed);
    let per_s = to_move as f64 / secs;
    println!(
        "moved {to_move} keys to r3 in {secs:.1} s from its start (first key at {:.1} s): {per_s:.0} keys/s, {:.2} MB/s of values, {:.2} MB/s on the wire ({:.0} wire bytes per key); handoff sessions {}, entries sent by handoff {}, send drops {}  [load {}]",
        first_key.unwrap_or(0.0),
        per_s * args.value_bytes as f64 / 1e6,
        snap.wire_bytes as f64 / 1e6 / secs,
        snap.wire_bytes as f64 / to_move as f64,
        snap.sessions,
        snap.sent,
        snap.send_drops,
        loadavg()
    );
    match at_1m {
        Some(t) if to_move >= 1_000_000 => {
            println!("time to move 1 M keys: {t:.1} s (measured: r3 reached 1,000,000 entries)")
        }
        _ => println!(
            "time to move 1 M keys: {:.0} s (extrapolated from {to_move} keys)",
            1e6 / per_s
        ),
    }

    // Until the old holders dropped what they handed off.
    let drop_started = Instant::now();
    loop {
        let Some(s) = poll(&cl, &c).await else {
            if drop_started.elapsed() > args.drop_timeout {
                println!(
                    "no snapshot of the old holders after {:?}",
                    args.drop_timeout
                );
                break;
            }
            continue;
        };
        watch.note(&shared, &s);
        if Instant::now() >= next_print {
            next_print = Instant::now() + args.every;
            println!(
                "  {:>6.1} s after the move: r1+r2 hold {} partitions they do not own, dropped {}  [load {}]",
                drop_started.elapsed().as_secs_f64(),
                s.held_not_owned,
                s.partitions_dropped,
                loadavg()
            );
        }
        if s.held_not_owned == 0 {
            println!(
                "r1 and r2 dropped the handed-off partitions {:.1} s after the move ({:.1} s after the join)  [load {}]",
                drop_started.elapsed().as_secs_f64(),
                started.elapsed().as_secs_f64(),
                loadavg()
            );
            break;
        }
        if drop_started.elapsed() > args.drop_timeout {
            println!(
                "r1 and r2 still hold {} partitions they do not own after {:?}",
                s.held_not_owned, args.drop_timeout
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    shared.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let mut load = std::mem::take(&mut *shared.load.lock().unwrap_or_else(|e| e.into_inner()));
    println!(
        "load during the run ({} writers, {} readers, one request per {:?} each):",
        args.writers, args.readers, args.pace
    );
    print_load(&mut load);
    watch.print();
    print_misses(&load, &watch, &cl, &c, args.value_bytes).await;

    // Every acknowledged write readable, every partition's owners equal.
    let mut lost = 0;
    for (n, k) in load.written.iter().enumerate() {
        let base = &cl.procs[n % 3].base;
        match c
            .request(Method::GET, &format!("{base}/kv/{k}"), "", None)
            .await
        {
            Ok(r) if r.status == StatusCode::OK => {}
            _ => lost += 1,
        }
    }
    println!(
        "acknowledged writes read back: {} of {}",
        load.written.len() - lost,
        load.written.len()
    );
    let layout = final_layout();
    let deadline = Instant::now() + Duration::from_secs(120);
    'check: loop {
        let mut differ = 0;
        for p in 0..PARTITIONS {
            let owners = layout.owners(p as u8);
            let mut digests = Vec::new();
            for o in owners {
                let i = IDS.iter().position(|x| *x == o.as_str()).unwrap_or(0);
                digests.push(cl.partition_digest(&c, i, p).await?);
            }
            if digests.windows(2).any(|w| w[0] != w[1]) {
                differ += 1;
            }
        }
        if differ == 0 {
            println!("every partition's owners have equal digests");
            break 'check;
        }
        if Instant::now() > deadline {
            bail!("{differ} partitions still differ between their owners after 120 s");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if lost > 0 {
        bail!("{lost} acknowledged writes not found");
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    shared::main_with(run(Args::parse()))
}
