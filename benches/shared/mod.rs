//! What the benchmark programs share, included by each with `mod shared;`
//! (cargo makes no bench target of a folder without a `main.rs`): the load average printed beside every figure
//! (the machine is shared, so a figure means little without it), a
//! process's CPU time, a store opened as node `bench`, and `main`'s runtime
//! and error handling. The multi-node harness (ports, certificates, `hub
//! serve` children) is the tests' `tests/common`.

#![allow(dead_code)]

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use hub::model::NodeId;
use hub::store::{Store, StoreConfig};

/// The 1, 5 and 15 minute load averages, or "n/a".
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "n/a".into())
}

/// utime + stime of a process, in seconds (USER_HZ = 100 on Linux).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = stat.rsplit_once(')').context("bad /proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).context("no utime")?.parse::<u64>()?
        + f.get(12).context("no stime")?.parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

/// A store in `dir` owned by node `bench`; panics if it cannot open (a
/// benchmark has nothing to measure then).
pub fn bench_store(dir: &Path) -> Store {
    let config = StoreConfig {
        node_id: Some(NodeId::new("bench").expect("a valid node id")),
        ..StoreConfig::default()
    };
    Store::open(dir, config).expect("opening the benchmark store")
}

/// Runs `run` on a multi-threaded runtime: exit 0, or the error chain on
/// stderr and exit 1.
pub fn main_with<F>(run: F) -> ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A node's `/api/introspection`.
pub async fn introspect(c: &hub::client::Client, base: &str) -> anyhow::Result<serde_json::Value> {
    Ok(c.get_json(&format!("{base}/api/introspection")).await?)
}

/// Waits until every node at `bases` places partitions on all of them.
pub async fn wait_layout(
    c: &hub::client::Client,
    bases: &[String],
    within: Duration,
) -> anyhow::Result<()> {
    let n = bases.len() as u64;
    let deadline = Instant::now() + within;
    'poll: loop {
        if Instant::now() > deadline {
            bail!("the layout did not settle on {n} members");
        }
        for base in bases {
            let v = introspect(c, base).await?;
            if v["cluster"]["placement"]["eligible_members"].as_u64() != Some(n) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue 'poll;
            }
        }
        return Ok(());
    }
}
