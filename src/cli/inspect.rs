//! `hub inspect`: the same views of a node offline (its stopped data
//! directory) or live (`--node http://ADDR`, over the read-only HTTP API).
//! Both paths build the same JSON, printed as-is with `--json` or as text.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use hub::http::api::{change_json, changes_after, entry_json, merkle_json};
use hub::merkle::NodeRef;
use hub::model::validate_key;
use hub::store::Store;

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["data_dir", "node"])))]
pub struct InspectArgs {
    /// A stopped node's data directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A running node's address, e.g. http://127.0.0.1:8080 or https://10.0.0.5:8080.
    #[arg(long)]
    pub node: Option<String>,
    #[command(flatten)]
    pub remote: super::remote::RemoteArgs,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub view: View,
}

#[derive(Subcommand, Debug, Clone)]
pub enum View {
    /// Entries, tombstones, log per origin, version vector, Merkle root, schema, disk size.
    Summary,
    /// Live keys in order.
    Keys {
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// One entry with its version and meta (tombstones too).
    Get { key: String },
    /// The change feed in apply order.
    Log {
        /// Cursor to start after.
        #[arg(long)]
        since: Option<u64>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// The version vector.
    Vv,
    /// A Merkle node (default the root) and its children.
    Merkle {
        #[arg(long, default_value_t = 0)]
        level: u8,
        #[arg(long, default_value_t = 0)]
        index: u32,
    },
    /// Peers: live, with status, RTT and failure detector; offline, the
    /// peers remembered in the data directory.
    Peers,
    /// Replication per peer: deltas sent/received/applied, queues, pulls
    /// answered unavailable, last anti-entropy runs (live only).
    Sync,
    /// Background workers: state, queue, runs, errors, last run and error
    /// (live only).
    Workers,
}

pub async fn run(args: InspectArgs) -> anyhow::Result<()> {
    let value = match (&args.node, &args.data_dir) {
        (Some(url), _) => live(url, &args.remote, &args.view).await?,
        (None, Some(dir)) => {
            let dir = dir.clone();
            let view = args.view.clone();
            tokio::task::spawn_blocking(move || offline(&dir, &view)).await??
        }
        (None, None) => bail!("give --data-dir DIR (stopped node) or --node URL (running node)"),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", text(&args.view, &value));
    }
    Ok(())
}

fn offline(dir: &std::path::Path, view: &View) -> anyhow::Result<Value> {
    let store = Store::open_existing(dir, 16 << 20)
        .with_context(|| format!("cannot open {} for inspection", dir.display()))?;
    Ok(match view {
        View::Summary => serde_json::to_value(store.summary()?)?,
        View::Keys { prefix, limit } => {
            let mut keys = Vec::new();
            let mut after: Option<String> = None;
            'scan: loop {
                let page = store.scan(prefix, after.as_deref(), 1000)?;
                let done = page.len() < 1000;
                for (k, e) in page {
                    after = Some(k.clone());
                    if hub::model::is_internal(&k) {
                        continue;
                    }
                    if let Some(v) = &e.value {
                        keys.push(json!({
                            "key": k,
                            "version": hub::http::kv::VersionJson::from(&e.version),
                            "bytes": v.len(),
                        }));
                        if keys.len() >= *limit {
                            break 'scan;
                        }
                    }
                }
                if done {
                    break;
                }
            }
            json!({ "keys": keys })
        }
        View::Get { key } => {
            validate_key(key)?;
            match store.get(key)? {
                Some(e) => entry_json(key, &e),
                None => bail!("key {key:?} not found"),
            }
        }
        View::Log { since, limit } => {
            let (changes, next) = changes_after(&store, since.unwrap_or(0), *limit)?;
            let updates: Vec<Value> = changes.iter().map(|(i, c)| change_json(*i, c)).collect();
            json!({ "updates": updates, "next": next.to_string() })
        }
        View::Vv => json!(store.summary()?.version_vector),
        View::Merkle { level, index } => {
            let node = NodeRef {
                level: *level,
                index: *index,
            };
            if !node.is_valid() {
                bail!("no Merkle node at level {level} index {index}");
            }
            merkle_json(&store, node)
        }
        View::Peers => {
            let members: Vec<Value> = store
                .peers()?
                .into_iter()
                .map(|(id, r)| json!({ "node_id": id.as_str(), "addr": r.addr, "incarnation": r.incarnation, "status": "remembered" }))
                .collect();
            json!({ "node_id": store.node_id().as_str(), "members": members })
        }
        View::Sync => bail!("replication state lives in a running node: use --node URL sync"),
        View::Workers => bail!("workers run in a running node: use --node URL workers"),
    })
}

async fn live(url: &str, remote: &super::remote::RemoteArgs, view: &View) -> anyhow::Result<Value> {
    let (base, client) = remote.connect(url)?;
    let path = match view {
        View::Summary | View::Vv | View::Workers => "/api/introspection".to_string(),
        View::Keys { prefix, limit } => {
            format!("/kv?prefix={}&limit={limit}", hub::client::encode(prefix))
        }
        View::Get { key } => format!("/api/entry/{}", hub::client::encode(key)),
        View::Log { since, limit } => match since {
            Some(s) => format!("/api/updates?since={s}&limit={limit}"),
            None => format!("/api/updates?limit={limit}"),
        },
        View::Merkle { level, index } => format!("/api/merkle?level={level}&index={index}"),
        View::Peers => "/api/membership".to_string(),
        View::Sync => "/api/sync".to_string(),
    };
    let v = client.get_json(&base.join(&path)).await?;
    Ok(match view {
        View::Vv => v.get("version_vector").cloned().unwrap_or(Value::Null),
        View::Workers => json!({ "workers": v.get("workers").cloned().unwrap_or(json!([])) }),
        View::Keys { .. } => json!({ "keys": v.get("keys").cloned().unwrap_or(json!([])) }),
        _ => v,
    })
}

fn text(view: &View, v: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match view {
        View::Summary => {
            for field in [
                "node_id",
                "schema_version",
                "entries",
                "tombstones",
                "log_len",
                "merkle_root",
                "hlc",
                "disk_bytes",
            ] {
                let _ = writeln!(out, "{field:<15} {}", s(&v[field]));
            }
            if let Some(log) = v["log"].as_object() {
                for (origin, st) in log {
                    let _ = writeln!(
                        out,
                        "log {origin:<11} seq {}..={} ({} kept)",
                        s(&st["first"]),
                        s(&st["last"]),
                        s(&st["len"])
                    );
                }
            }
            if let Some(vv) = v["version_vector"].as_object() {
                for (origin, seq) in vv {
                    let _ = writeln!(out, "vv  {origin:<11} {}", s(seq));
                }
            }
            if let Some(c) = v["counters"].as_object() {
                for (k, n) in c {
                    let _ = writeln!(out, "counter {k:<20} {}", s(n));
                }
            }
            // Live only: which partitions this node owns (crate::placement).
            let p = &v["cluster"]["placement"];
            if p.is_object() {
                let factor = match &p["replication_factor"] {
                    Value::Null => "every node".to_string(),
                    f => s(f),
                };
                let _ = writeln!(
                    out,
                    "partitions      {} of 256 owned ({}), {} held not owned, copies: {factor}",
                    s(&p["owned"]),
                    s(&p["owned_ranges"]),
                    s(&p["held_not_owned"]),
                );
            }
        }
        View::Keys { .. } => {
            for k in v["keys"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "{}\t{}\t{} bytes",
                    s(&k["key"]),
                    s(&k["version"]["text"]),
                    s(&k["bytes"])
                );
            }
        }
        View::Get { .. } => {
            let _ = writeln!(out, "key      {}", s(&v["key"]));
            let _ = writeln!(out, "version  {}", s(&v["version"]["text"]));
            let _ = writeln!(out, "deleted  {}", s(&v["deleted"]));
            let _ = writeln!(out, "meta     {}", v["meta"]);
            let _ = writeln!(out, "value    {}", s(&v["value"]));
        }
        View::Log { .. } => {
            for u in v["updates"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "{}\t{}:{}\t{}\t{}",
                    s(&u["cursor"]),
                    s(&u["origin"]),
                    s(&u["seq"]),
                    s(&u["key"]),
                    if u["deleted"] == Value::Bool(true) {
                        "(deleted)".to_string()
                    } else {
                        s(&u["value"])
                    }
                );
            }
            let _ = writeln!(out, "next cursor {}", s(&v["next"]));
        }
        View::Vv => {
            for (origin, seq) in v.as_object().into_iter().flatten() {
                let _ = writeln!(out, "{origin}\t{}", s(seq));
            }
        }
        View::Merkle { .. } => {
            let _ = writeln!(
                out,
                "level {} index {}: {}",
                s(&v["level"]),
                s(&v["index"]),
                s(&v["digest"])
            );
            for (i, c) in v["children"].as_array().into_iter().flatten().enumerate() {
                let _ = writeln!(out, "  child {i:>2} {}", s(c));
            }
        }
        View::Peers => {
            let _ = writeln!(
                out,
                "{:<16} {:<22} {:<10} {:>10} {:>8} {:>8}",
                "peer", "addr", "status", "last seen", "rtt ms", "phi"
            );
            for m in v["members"].as_array().into_iter().flatten() {
                let num = |x: &Value, digits: usize| {
                    x.as_f64()
                        .map_or("-".to_string(), |f| format!("{f:.digits$}"))
                };
                let _ = writeln!(
                    out,
                    "{:<16} {:<22} {:<10} {:>10} {:>8} {:>8}",
                    s(&m["node_id"]),
                    s(&m["addr"]),
                    s(&m["status"]),
                    m["last_seen_ms_ago"]
                        .as_u64()
                        .map_or("-".to_string(), |ms| format!("{ms} ms")),
                    num(&m["rtt_ms"], 2),
                    num(&m["phi"], 2),
                );
            }
        }
        View::Sync => {
            let _ = writeln!(
                out,
                "{:<16} {:>5} {:>9} {:>9} {:>9} {:>7} {:>6} {:>6} {:>5}",
                "peer", "up", "sent", "received", "applied", "stale", "unavl", "ae", "queue"
            );
            if let Some(peers) = v["replication"]["peers"].as_object() {
                for (id, p) in peers {
                    let _ = writeln!(
                        out,
                        "{:<16} {:>5} {:>9} {:>9} {:>9} {:>7} {:>6} {:>6} {:>5}",
                        id,
                        s(&p["up"]),
                        s(&p["deltas_sent"]),
                        s(&p["deltas_received"]),
                        s(&p["deltas_applied"]),
                        s(&p["deltas_stale"]),
                        s(&p["pulls_answered_unavailable"]),
                        s(&p["anti_entropy_runs"]),
                        s(&p["queue_len"]),
                    );
                }
            }
            let last = &v["replication"]["last_anti_entropy"];
            if !last.is_null() {
                let _ = writeln!(out, "last anti-entropy: {last}");
            }
        }
        View::Workers => {
            let now = hub::store::commit::wall_ms();
            let _ = writeln!(
                out,
                "{:<20} {:<8} {:>6} {:>10} {:>7} {:>6} {:>10}  last error",
                "worker", "state", "queue", "runs", "errors", "consec", "last run"
            );
            for w in v["workers"].as_array().into_iter().flatten() {
                let ago = w["last_run_ms"].as_u64().map_or("never".to_string(), |t| {
                    format!("{:.1}s ago", now.saturating_sub(t) as f64 / 1000.0)
                });
                let _ = writeln!(
                    out,
                    "{:<20} {:<8} {:>6} {:>10} {:>7} {:>6} {:>10}  {}",
                    s(&w["name"]),
                    s(&w["state"]),
                    s(&w["queue"]),
                    s(&w["runs"]),
                    s(&w["errors"]),
                    s(&w["consecutive_errors"]),
                    ago,
                    w["last_error"].as_str().unwrap_or("-"),
                );
            }
        }
    }
    out
}
