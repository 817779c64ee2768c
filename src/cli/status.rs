//! `hub status [--node URL] [--json] [--watch]`: one table of every member
//! of the cluster, like `nodetool status` / `garage status`.
//!
//! Asks one node for the membership (which carries each member's advertised
//! client URL), then asks every member for its own summary over that URL
//! with the same client (`--token`, `--cacert`). Lag is computed across the
//! answers: for each origin, the highest seq any member holds minus what
//! this member holds, summed. Exit status 0 only when every member is alive,
//! answered, and lags at most `--max-lag` deltas, so scripts and health
//! checks can use it.
//!
//! With sharding (a replication factor below the members) each node stores
//! different partitions, so Merkle roots are not compared (ROOT reads
//! `sharded`); PARTS shows the partitions each owns and, while a layout
//! change moves data, how many it still holds without owning them (handed
//! off, dropped once every new owner confirmed them).

use hub::store::commit::wall_ms;
use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use serde::Serialize;
use serde_json::Value;

use hub::client::{BaseUrl, Client};

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Any member's client URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub node: String,
    #[command(flatten)]
    pub remote: super::remote::RemoteArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Redraw every `--interval` until interrupted.
    #[arg(long)]
    pub watch: bool,
    #[arg(long, value_parser = hub::config::parse_duration, default_value = "2s")]
    pub interval: Duration,
    /// Most deltas a member may lag behind the others and still count as healthy.
    #[arg(long, default_value_t = 100)]
    pub max_lag: u64,
}

/// One member's row.
#[derive(Debug, Serialize)]
pub struct Row {
    pub node_id: String,
    /// As the asked node sees it (`self` for the asked node).
    pub status: String,
    pub http: Option<String>,
    pub quic: String,
    /// Whether its own API answered.
    pub reachable: bool,
    pub error: Option<String>,
    pub keys: Option<u64>,
    /// Deltas it is missing that some other member holds.
    pub lag_deltas: Option<u64>,
    pub merkle_root: Option<String>,
    /// Its Merkle root equals the most common one.
    pub root_agrees: Option<bool>,
    pub rtt_ms: Option<f64>,
    /// Seconds since its last anti-entropy session finished, and its result.
    pub last_anti_entropy_s: Option<f64>,
    pub last_anti_entropy: Option<String>,
    /// Partitions of 256 it owns, and holds without owning (rebalancing).
    pub partitions_owned: Option<u64>,
    pub partitions_handing_off: Option<u64>,
    /// Entries it has streamed to new owners since it started.
    pub handoff_entries_sent: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub asked: String,
    pub healthy: bool,
    /// Some member stores only part of the key space (roots not compared).
    pub sharded: bool,
    pub problems: Vec<String>,
    pub members: Vec<Row>,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let (base, client) = args.remote.connect(&args.node)?;
    loop {
        let report = gather(&client, &base, args.max_lag).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            if args.watch {
                // Clear the screen and go home, like watch(1).
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", table(&report));
        }
        if !args.watch {
            if report.healthy {
                return Ok(());
            }
            bail!("cluster not healthy: {}", report.problems.join("; "));
        }
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// Asks `base` for the members, then each member for its summary.
pub async fn gather(client: &Client, base: &BaseUrl, max_lag: u64) -> anyhow::Result<Report> {
    let membership = client.get_json(&base.join("/api/membership")).await?;
    let asked = membership["node_id"].as_str().unwrap_or("?").to_string();
    let mut rows: Vec<Row> = Vec::new();
    rows.push(Row {
        node_id: asked.clone(),
        status: "self".into(),
        http: Some(
            membership["self"]["http"]
                .as_str()
                .map_or_else(|| base.as_str().to_string(), str::to_string),
        ),
        quic: membership["self"]["addr"].as_str().unwrap_or("").into(),
        ..Row::empty()
    });
    for m in membership["members"].as_array().into_iter().flatten() {
        rows.push(Row {
            node_id: m["node_id"].as_str().unwrap_or("?").into(),
            status: m["status"].as_str().unwrap_or("?").into(),
            http: m["http"].as_str().map(str::to_string),
            quic: m["addr"].as_str().unwrap_or("").into(),
            rtt_ms: m["rtt_ms"].as_f64(),
            ..Row::empty()
        });
    }
    let mut asks = tokio::task::JoinSet::new();
    for (i, row) in rows.iter().enumerate() {
        // The asked node is reached where we reached it, whatever it advertises.
        let url = if i == 0 {
            Some(base.as_str().to_string())
        } else {
            row.http.clone()
        };
        let client = client.clone();
        asks.spawn(async move {
            let answer = match url {
                None => Err("no advertised client URL".to_string()),
                Some(u) => match BaseUrl::parse(&u) {
                    Ok(b) => client
                        .get_json(&b.join("/api/introspection"))
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                },
            };
            (i, answer)
        });
    }
    let mut summaries: BTreeMap<usize, Value> = BTreeMap::new();
    while let Some(joined) = asks.join_next().await {
        let Ok((i, answer)) = joined else { continue };
        match answer {
            Ok(v) => {
                summaries.insert(i, v);
            }
            Err(e) => rows[i].error = Some(e),
        }
    }
    let sharded = fill(&mut rows, &summaries, wall_ms());
    let problems = problems(&rows, max_lag);
    Ok(Report {
        asked,
        healthy: problems.is_empty(),
        sharded,
        problems,
        members: rows,
    })
}

impl Row {
    fn empty() -> Row {
        Row {
            node_id: String::new(),
            status: String::new(),
            http: None,
            quic: String::new(),
            reachable: false,
            error: None,
            keys: None,
            lag_deltas: None,
            merkle_root: None,
            root_agrees: None,
            rtt_ms: None,
            last_anti_entropy_s: None,
            last_anti_entropy: None,
            partitions_owned: None,
            partitions_handing_off: None,
            handoff_entries_sent: None,
        }
    }
}

/// Fills keys, lag, root agreement, partitions and anti-entropy from the
/// summaries; whether the cluster is sharded.
fn fill(rows: &mut [Row], summaries: &BTreeMap<usize, Value>, now_ms: u64) -> bool {
    let vv = |v: &Value| -> BTreeMap<String, u64> {
        v["version_vector"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
            .collect()
    };
    let mut highest: BTreeMap<String, u64> = BTreeMap::new();
    let mut roots: BTreeMap<String, usize> = BTreeMap::new();
    for s in summaries.values() {
        for (o, n) in vv(s) {
            let h = highest.entry(o).or_default();
            *h = (*h).max(n);
        }
        if let Some(r) = s["merkle_root"].as_str() {
            *roots.entry(r.to_string()).or_default() += 1;
        }
    }
    // Owning fewer than all 256 partitions: roots differ by design.
    let sharded = summaries.values().any(|s| {
        s["cluster"]["placement"]["owned"]
            .as_u64()
            .is_some_and(|n| n < hub::placement::PARTITIONS as u64)
    });
    let common = roots
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(r, _)| r.clone())
        .filter(|_| !sharded);
    for (i, row) in rows.iter_mut().enumerate() {
        let Some(s) = summaries.get(&i) else { continue };
        row.reachable = true;
        row.keys = s["entries"].as_u64();
        let mine = vv(s);
        row.lag_deltas = Some(
            highest
                .iter()
                .map(|(o, h)| h.saturating_sub(mine.get(o).copied().unwrap_or(0)))
                .sum(),
        );
        row.merkle_root = s["merkle_root"].as_str().map(str::to_string);
        row.root_agrees = match (&row.merkle_root, &common) {
            (Some(r), Some(c)) => Some(r == c),
            _ => None,
        };
        let p = &s["cluster"]["placement"];
        row.partitions_owned = p["owned"].as_u64();
        row.partitions_handing_off = p["held_not_owned"].as_u64();
        row.handoff_entries_sent = p["handoff_entries_sent"].as_u64();
        let last = &s["cluster"]["replication"]["last_anti_entropy"];
        if let Some(done) = last["finished_ms"].as_u64() {
            row.last_anti_entropy_s = Some(now_ms.saturating_sub(done) as f64 / 1000.0);
            let moved = last["entries_received"].as_u64().unwrap_or(0)
                + last["entries_sent"].as_u64().unwrap_or(0);
            let result = last["result"]["kind"].as_str().unwrap_or("?");
            row.last_anti_entropy = Some(format!(
                "{result} with {}, {moved} entries",
                last["peer"].as_str().unwrap_or("?")
            ));
        }
    }
    sharded
}

fn problems(rows: &[Row], max_lag: u64) -> Vec<String> {
    let mut out = Vec::new();
    for r in rows {
        if r.status != "self" && r.status != "alive" {
            out.push(format!("{} is {}", r.node_id, r.status));
        }
        if let Some(e) = &r.error {
            out.push(format!("{} did not answer: {e}", r.node_id));
        }
        if let Some(l) = r.lag_deltas.filter(|l| *l > max_lag) {
            out.push(format!(
                "{} lags {l} deltas (more than --max-lag {max_lag})",
                r.node_id
            ));
        }
    }
    out
}

/// The report as a fixed-width table.
pub fn table(report: &Report) -> String {
    let header = [
        "NODE", "STATUS", "ADDRESS", "KEYS", "PARTS", "LAG", "ROOT", "RTT", "LAST AE",
    ];
    let mut lines: Vec<[String; 9]> = vec![header.map(str::to_string)];
    for r in &report.members {
        let opt = |v: Option<u64>| v.map_or_else(|| "-".into(), |n| n.to_string());
        lines.push([
            r.node_id.clone(),
            if r.reachable || r.status != "self" {
                r.status.clone()
            } else {
                "unreachable".into()
            },
            r.http.clone().unwrap_or_else(|| r.quic.clone()),
            opt(r.keys),
            match (r.partitions_owned, r.partitions_handing_off) {
                (Some(o), Some(h)) if h > 0 => format!("{o} (+{h} handing off)"),
                (Some(o), _) => o.to_string(),
                _ => "-".into(),
            },
            opt(r.lag_deltas),
            match r.root_agrees {
                Some(true) => "match".into(),
                Some(false) => "DIFFERS".into(),
                None if report.sharded && r.reachable => "sharded".into(),
                None => "-".into(),
            },
            r.rtt_ms
                .map_or_else(|| "-".into(), |ms| format!("{ms:.1}ms")),
            match (&r.last_anti_entropy_s, &r.last_anti_entropy) {
                (Some(s), Some(what)) => format!("{s:.0}s ago ({what})"),
                _ => "-".into(),
            },
        ]);
    }
    let mut widths = [0usize; 9];
    for l in &lines {
        for (w, c) in widths.iter_mut().zip(l) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out.push_str(&if report.healthy {
        "healthy\n".to_string()
    } else {
        format!("NOT HEALTHY: {}\n", report.problems.join("; "))
    });
    out
}
