//! Fleet size (issue 11, part 5): how membership, push and repair scale
//! with the number of nodes, in the deterministic simulation.
//!
//! Each node is the real protocol machine (`NodeMachine`: membership,
//! replication and the routing between them) with the shipped default
//! settings, over a simulated network (1–4 ms per message, no loss) and a
//! simulated clock (time jumps to the next message or tick), so a fleet of
//! 1,000 nodes runs on one machine. The store is an in-memory model of
//! what the replicator reads (version vector, per-origin log, LWW map, and
//! Merkle digests computed from the map on demand, so anti-entropy runs
//! for real), since a thousand sled databases would measure the disk, not
//! the protocols.
//!
//! For each fleet size N it measures, from a formed cluster:
//! - **write**: one write at a random node until every node holds it —
//!   simulated ms and rounds (the longest hop chain that delivered it);
//! - **join**: a new node joins through a random member until every node
//!   knows it alive and it knows every node — ms and protocol periods;
//! - **death**: a random node crashes (no goodbye) until every live node
//!   stopped treating it as alive (suspect or dead) and until every one
//!   holds it dead — ms and protocol periods;
//! - **idle cost**: messages and bytes (bincode, as framed on the wire)
//!   sent per node per second with no writes, membership and replication
//!   apart.
//!
//! Then the same with sharding (`--replication-factor`, default 3): the
//! write is made at an owner of its key and timed until every owner holds
//! the value, and until every owner's version vector covers it (what its
//! durable ack reports; non-owners never receive it); a join until every node knows it and until every node
//! computed the same layout; a crash until every node holds it dead and
//! until no layout holds it (after the rebalance grace period, 30 s).
//! Last, each time divided by log2 N: flat or falling means O(log N).
//!
//! Run: `cargo bench --bench fleet -- [--sizes 10,100,1000] [--seed 1]
//! [--replication-factor 3] [--sharded-sizes 10,100,1000]`.
//! The figures are simulated time and counts: the host's load changes how
//! long the run takes, not what it prints.

use hub::membership;

#[path = "../tests/support/fleet_sim.rs"]
mod fleet_sim;
use fleet_sim::{measure_sharded, Figures, LINK};

fn ms(v: Option<u64>) -> String {
    v.map_or("timeout".into(), |v| format!("{v}"))
}

fn periods(v: Option<u64>, period: u64) -> String {
    v.map_or("-".into(), |v| format!("{:.1}", v as f64 / period as f64))
}

/// Time over log2 N: the constant of O(log N) when it stays flat.
fn per_log(v: Option<u64>, n: usize) -> String {
    v.map_or("-".into(), |v| {
        format!("{:.0}", v as f64 / (n as f64).log2())
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let list = |s: String| -> Vec<usize> {
        s.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse().expect("sizes: comma-separated numbers"))
            .collect()
    };
    let sizes = list(arg("--sizes").unwrap_or_else(|| "10,100,1000".into()));
    let sharded_sizes = arg("--sharded-sizes").map_or_else(|| sizes.clone(), list);
    let seed: u64 = arg("--seed").map_or(1, |s| s.parse().expect("--seed: a number"));
    let r: usize = arg("--replication-factor")
        .map_or(3, |s| s.parse().expect("--replication-factor: a number"));
    let period = membership::Config::default().heartbeat_interval_ms;
    println!(
        "fleet: deterministic simulation, seed {seed}, default settings (protocol period {period} ms), link 1-{} ms",
        LINK.max_delay_ms
    );
    println!("\nfull replication (every node holds every key):");
    println!(
        "{:>6} {:>6} | {:>9} {:>5} | {:>8} {:>6} | {:>10} {:>6} | {:>8} {:>6} | {:>9} {:>9} | {:>9} {:>9} | {:>9}",
        "N", "log2N", "write ms", "hops", "join ms", "per.", "suspect ms", "per.", "dead ms", "per.",
        "memb m/s", "memb B/s", "repl m/s", "repl B/s", "formed ms",
    );
    let mut full: Vec<Figures> = Vec::new();
    for &n in &sizes {
        let f = measure_sharded(n, seed, 15_000, 10, None);
        let per_node_s = |v: u64| v as f64 / f.n as f64 / f.idle_secs as f64;
        println!(
            "{:>6} {:>6.2} | {:>9} {:>5} | {:>8} {:>6} | {:>10} {:>6} | {:>8} {:>6} | {:>9.1} {:>9.0} | {:>9.1} {:>9.0} | {:>9}   ({:.1?} to simulate)",
            f.n,
            (f.n as f64).log2(),
            ms(f.write_ms),
            f.write_hops,
            ms(f.join_ms),
            periods(f.join_ms, period),
            ms(f.suspect_ms),
            periods(f.suspect_ms, period),
            ms(f.dead_ms),
            periods(f.dead_ms, period),
            per_node_s(f.idle.membership_msgs),
            per_node_s(f.idle.membership_bytes),
            per_node_s(f.idle.replication_msgs),
            per_node_s(f.idle.replication_bytes),
            ms(f.formed_ms),
            f.wall,
        );
        full.push(f);
    }
    println!("\nsharded, replication factor {r}:");
    println!(
        "{:>6} {:>6} | {:>10} {:>5} | {:>9} | {:>8} {:>10} | {:>10} {:>8} {:>10} | {:>9} {:>9} | {:>9}",
        "N", "log2N", "owners ms", "hops", "owners vv ms", "join ms", "layout ms", "suspect ms",
        "dead ms", "layout ms", "memb m/s", "repl m/s", "formed ms",
    );
    let mut sharded: Vec<Figures> = Vec::new();
    for &n in &sharded_sizes {
        let f = measure_sharded(n, seed, 15_000, 10, Some(r));
        let per_node_s = |v: u64| v as f64 / f.n as f64 / f.idle_secs as f64;
        println!(
            "{:>6} {:>6.2} | {:>10} {:>5} | {:>9} | {:>8} {:>10} | {:>10} {:>8} {:>10} | {:>9.1} {:>9.1} | {:>9}   ({:.1?} to simulate)",
            f.n,
            (f.n as f64).log2(),
            ms(f.write_ms),
            f.write_hops,
            ms(f.write_vv_ms),
            ms(f.join_ms),
            ms(f.join_layout_ms),
            ms(f.suspect_ms),
            ms(f.dead_ms),
            ms(f.death_layout_ms),
            per_node_s(f.idle.membership_msgs),
            per_node_s(f.idle.replication_msgs),
            ms(f.formed_ms),
            f.wall,
        );
        sharded.push(f);
    }
    println!("\ntime / log2 N (ms; flat or falling = O(log N)):");
    println!(
        "{:>6} {:>5} | {:>8} {:>8} {:>8} {:>8} | {:>10} {:>10} {:>8} {:>8}",
        "N",
        "hops/",
        "write",
        "join",
        "suspect",
        "dead",
        "R write",
        "R owners vv",
        "R join",
        "R dead",
    );
    for &n in sizes
        .iter()
        .chain(&sharded_sizes)
        .collect::<std::collections::BTreeSet<_>>()
    {
        let f = full.iter().find(|f| f.n == n);
        let s = sharded.iter().find(|f| f.n == n);
        let get =
            |f: Option<&Figures>, pick: fn(&Figures) -> Option<u64>| per_log(f.and_then(pick), n);
        println!(
            "{:>6} {:>5} | {:>8} {:>8} {:>8} {:>8} | {:>10} {:>10} {:>8} {:>8}",
            n,
            f.map_or("-".into(), |f| format!(
                "{:.2}",
                f.write_hops as f64 / (n as f64).log2()
            )),
            get(f, |f| f.write_ms),
            get(f, |f| f.join_ms),
            get(f, |f| f.suspect_ms),
            get(f, |f| f.dead_ms),
            get(s, |f| f.write_ms),
            get(s, |f| f.write_vv_ms),
            get(s, |f| f.join_ms),
            get(s, |f| f.dead_ms),
        );
    }
}
