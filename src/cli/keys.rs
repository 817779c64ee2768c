//! `hub keys create | list | revoke`: API key management, offline on a
//! stopped node's `--data-dir` (how the first admin key is made) or live
//! with `--node URL` and an admin token. Either way the key lands in the
//! internal keyspace and replicates to every node.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::{json, Value};

use hub::auth::keys::{self, KeyRecord, NewKey};
use hub::auth::Role;
use hub::store::commit::wall_ms;
use hub::store::{Outcome, Store};

use super::remote::RemoteArgs;

#[derive(Args, Debug)]
pub struct KeysArgs {
    /// A stopped node's data directory.
    #[arg(long, global = true, conflicts_with = "node")]
    pub data_dir: Option<PathBuf>,
    /// A running node, e.g. https://127.0.0.1:8080 (needs an admin token).
    #[arg(long, global = true)]
    pub node: Option<String>,
    /// With --data-dir of a node never started yet: its node id, so the
    /// directory can be created with the first admin key in it.
    #[arg(long, global = true, requires = "data_dir")]
    pub node_id: Option<String>,
    #[command(flatten)]
    pub remote: RemoteArgs,
    #[command(subcommand)]
    pub cmd: KeysCmd,
}

#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// Create a key; prints only the token (shown this once).
    Create {
        #[arg(long)]
        role: Role,
        /// Limit the key to keys under this prefix (read and write keys).
        #[arg(long)]
        prefix: Option<String>,
        /// A label for listings.
        #[arg(long)]
        name: Option<String>,
    },
    /// List active keys: id, name, role, prefix, created (never tokens).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id; every node refuses it once the revocation arrives.
    Revoke { id: String },
}

enum Target {
    Offline(PathBuf),
    Live(hub::client::BaseUrl, Box<hub::client::Client>),
}

pub async fn run(args: KeysArgs) -> anyhow::Result<()> {
    hub::files::private_umask();
    let target = match (&args.data_dir, &args.node) {
        (Some(dir), _) => {
            if let Some(id) = &args.node_id {
                create_store(dir, id).await?;
            }
            Target::Offline(dir.clone())
        }
        (None, Some(url)) => {
            let (base, client) = args.remote.connect(url)?;
            Target::Live(base, Box::new(client))
        }
        (None, None) => {
            bail!("give --data-dir DIR (stopped node) or --node URL --token T (running node)")
        }
    };
    match args.cmd {
        KeysCmd::Create { role, prefix, name } => {
            let new = NewKey { role, prefix, name };
            let (token, record) = match target {
                Target::Offline(dir) => {
                    offline(dir, move |store| create_offline(store, &new)).await?
                }
                Target::Live(base, client) => {
                    let body = json!({ "role": new.role, "prefix": new.prefix, "name": new.name });
                    let v = client
                        .send_json(Method::POST, &base.join("/api/keys"), &body)
                        .await?;
                    let token = v["token"]
                        .as_str()
                        .context("the node's answer has no token")?
                        .to_string();
                    let record: KeyRecord =
                        serde_json::from_value(v).context("the node's answer is not a key")?;
                    (token, record)
                }
            };
            eprintln!(
                "created API key {} (role {}{}); the token below is shown once",
                record.id,
                record.role,
                record
                    .prefix
                    .as_deref()
                    .map(|p| format!(", prefix {p:?}"))
                    .unwrap_or_default()
            );
            println!("{token}");
        }
        KeysCmd::List { json } => {
            let keys: Vec<KeyRecord> = match target {
                Target::Offline(dir) => offline(dir, |store| Ok(keys::list(store)?)).await?,
                Target::Live(base, client) => {
                    let v = client.get_json(&base.join("/api/keys")).await?;
                    serde_json::from_value(v["keys"].clone())
                        .context("the node's answer is not a key list")?
                }
            };
            if json {
                let out: Vec<Value> = keys.iter().map(key_json).collect();
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!(
                    "{:<16}  {:<5}  {:<20}  {:<24}  name",
                    "id", "role", "created (UTC)", "prefix"
                );
                for k in &keys {
                    println!(
                        "{:<16}  {:<5}  {:<20}  {:<24}  {}",
                        k.id,
                        k.role,
                        utc(k.created_ms),
                        k.prefix.as_deref().unwrap_or("-"),
                        k.name
                    );
                }
            }
        }
        KeysCmd::Revoke { id } => {
            match target {
                Target::Offline(dir) => {
                    let id2 = id.clone();
                    offline(dir, move |store| {
                        let op = keys::revoke_op(&id2)?;
                        match store.apply(vec![op], wall_ms())?.pop() {
                            Some(Outcome::Written(_)) => Ok(store.flush()?),
                            _ => bail!("no active API key {id2}"),
                        }
                    })
                    .await?
                }
                Target::Live(base, client) => {
                    client
                        .request(
                            Method::DELETE,
                            &base.join(&format!("/api/keys/{}", hub::client::encode(&id))),
                            "",
                            None,
                        )
                        .await
                        .and_then(|r| {
                            if r.status.is_success() {
                                Ok(())
                            } else {
                                let msg = r
                                    .json()
                                    .and_then(|v| {
                                        v.pointer("/error/message")
                                            .and_then(Value::as_str)
                                            .map(str::to_string)
                                    })
                                    .unwrap_or_default();
                                Err(hub::client::ClientError::Status {
                                    url: base.join("/api/keys"),
                                    status: r.status,
                                    message: msg,
                                })
                            }
                        })?;
                }
            }
            eprintln!("revoked API key {id}");
        }
    }
    Ok(())
}

/// The fields `hub keys list --json` promises.
fn key_json(k: &KeyRecord) -> Value {
    json!({ "id": k.id, "name": k.name, "role": k.role, "prefix": k.prefix, "created_ms": k.created_ms, "created": utc(k.created_ms) })
}

fn create_offline(store: &Store, new: &NewKey) -> anyhow::Result<(String, KeyRecord)> {
    let (token, record, op) = new.mint(wall_ms())?;
    match store.apply(vec![op], wall_ms())?.pop() {
        Some(Outcome::Written(_)) => {
            store.flush()?;
            Ok((token.reveal().to_string(), record.public()))
        }
        _ => bail!("the key was not stored (id collision); try again"),
    }
}

/// Creates the data directory of node `id` if it holds no store yet.
async fn create_store(dir: &std::path::Path, id: &str) -> anyhow::Result<()> {
    let id = hub::model::NodeId::new(id)?;
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        hub::files::private_dir(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let config = hub::store::StoreConfig {
            node_id: Some(id),
            lock_wait: std::time::Duration::ZERO,
            ..hub::store::StoreConfig::default()
        };
        Store::open(&dir, config).with_context(|| format!("cannot open {}", dir.display()))?;
        Ok(())
    })
    .await?
}

async fn offline<T: Send + 'static>(
    dir: PathBuf,
    f: impl FnOnce(&Store) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(move || {
        let store = Store::open_existing(&dir, 16 << 20).with_context(|| {
            format!(
                "cannot open {} (stop the node first, or use --node URL)",
                dir.display()
            )
        })?;
        let out = f(&store)?;
        drop(store);
        if let Err(e) = hub::files::private_tree(&dir) {
            eprintln!("warning: cannot make {} private: {e}", dir.display());
        }
        Ok(out)
    })
    .await?
}

/// `YYYY-MM-DD HH:MM:SS` for milliseconds since the epoch (UTC).
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates_are_civil() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(1_795_000_000_000), "2026-11-18 11:06:40");
    }
}
