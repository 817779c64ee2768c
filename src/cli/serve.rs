//! `hub serve`: run one node until SIGINT/SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use hub::config::{Config, ConfigLayer};
use hub::node::Node;

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// This node's id (DNS label). Default node-1.
    #[arg(long, env = "HUB_NODE_ID")]
    pub node_id: Option<String>,
    /// Data directory. Default ./hub-data.
    #[arg(long, env = "HUB_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address. Default 127.0.0.1:8080.
    #[arg(long, env = "HUB_HTTP")]
    pub http: Option<String>,
    /// TOML config file; flags and HUB_* variables override it.
    #[arg(long, env = "HUB_CONFIG")]
    pub config: Option<PathBuf>,
    /// Deltas kept per origin in the log.
    #[arg(long, env = "HUB_LOG_RETENTION")]
    pub log_retention: Option<u64>,
    /// Largest value accepted by PUT/POST /kv, in bytes.
    #[arg(long, env = "HUB_MAX_VALUE_BYTES")]
    pub max_value_bytes: Option<usize>,
    /// QUIC (UDP) address for peers.
    #[arg(long, env = "HUB_LISTEN")]
    pub listen: Option<String>,
    /// Address peers should dial, if not --listen (NAT, relay).
    #[arg(long, env = "HUB_ADVERTISE")]
    pub advertise: Option<String>,
    /// Peer to join (repeatable, or comma-separated in HUB_JOIN).
    #[arg(long, env = "HUB_JOIN", value_delimiter = ',')]
    pub join: Vec<String>,
    /// Directory with the cluster CA and this node's certificate.
    #[arg(long, env = "HUB_CERTS")]
    pub certs: Option<PathBuf>,
    #[arg(long, env = "HUB_MAX_CLOCK_OFFSET_MS")]
    pub max_clock_offset_ms: Option<u64>,
    /// Run without simulated sensors.
    #[arg(long, env = "HUB_NO_SENSORS")]
    pub no_sensors: bool,
    /// Serve HTTPS with this node's certificate from --certs.
    #[arg(long, env = "HUB_HTTP_TLS")]
    pub http_tls: bool,
    /// Require an API key on every request but GET /health (see `hub keys`).
    #[arg(long, env = "HUB_AUTH")]
    pub auth: bool,
    /// Serve a non-loopback HTTP address without TLS or auth anyway.
    #[arg(long, env = "HUB_INSECURE")]
    pub insecure: bool,
}

impl ServeArgs {
    /// The flag/env layer (clap already lets a flag win over its variable).
    pub fn layer(&self) -> ConfigLayer {
        ConfigLayer {
            node_id: self.node_id.clone(),
            data_dir: self.data_dir.clone(),
            http: self.http.clone(),
            log_retention: self.log_retention,
            max_value_bytes: self.max_value_bytes,
            listen: self.listen.clone(),
            advertise: self.advertise.clone(),
            join: (!self.join.is_empty()).then(|| self.join.clone()),
            certs: self.certs.clone(),
            max_clock_offset_ms: self.max_clock_offset_ms,
            sensors: self.no_sensors.then(Vec::new),
            http_tls: self.http_tls.then_some(true),
            auth: self.auth.then_some(true),
            insecure: self.insecure.then_some(true),
            ..ConfigLayer::default()
        }
    }

    pub fn resolve(&self) -> anyhow::Result<Config> {
        let mut layers = Vec::new();
        if let Some(path) = &self.config {
            layers.push(ConfigLayer::from_file(path)?);
        }
        layers.push(self.layer());
        Config::resolve(layers).context("invalid configuration")
    }
}

/// Secure by default: a non-loopback HTTP address needs TLS and auth, or
/// an explicit `--insecure` (then the caller warns with the returned text).
pub fn exposure_check(config: &Config) -> Result<Option<String>, String> {
    if config.http.ip().is_loopback() || (config.http_tls && config.auth) {
        return Ok(None);
    }
    let missing: Vec<&str> = [
        (!config.http_tls).then_some("TLS (--http-tls)"),
        (!config.auth).then_some("API keys (--auth)"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let what = format!(
        "HTTP address {} is not loopback and runs without {}",
        config.http,
        missing.join(" and ")
    );
    if config.insecure {
        return Ok(Some(format!(
            "{what}: anyone who can reach it can read and change every key (--insecure)"
        )));
    }
    Err(format!(
        "refusing to start: {what}, so anyone who can reach it could read and change every key. \
         Turn on --http-tls (certificate from `hub certs issue --ip ...`) and --auth (first key from \
         `hub keys create --data-dir DIR --role admin`), or pass --insecure to serve it anyway"
    ))
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    match exposure_check(&config) {
        Ok(None) => {}
        Ok(Some(warning)) => tracing::warn!(node = %config.node_id, "{warning}"),
        Err(refusal) => anyhow::bail!(refusal),
    }
    hub::files::private_umask();
    let node = Node::start(config).await?;
    println!(
        "hub node {} serving {}",
        node.config().node_id,
        node.base_url()
    );
    wait_for_signal().await;
    tracing::info!(node = %node.config().node_id, "shutting down");
    node.shutdown().await;
    Ok(())
}

pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
