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
    /// Find peers on the local network: `lan` (UDP beacons) or `off`.
    #[arg(long, env = "HUB_DISCOVERY")]
    pub discovery: Option<String>,
    /// Multicast group or broadcast address for LAN beacons (ip:port).
    #[arg(long, env = "HUB_DISCOVERY_ADDR")]
    pub discovery_addr: Option<String>,
    /// Run without simulated sensors.
    #[arg(long, env = "HUB_NO_SENSORS")]
    pub no_sensors: bool,
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
            discovery: self.discovery.clone(),
            discovery_addr: self.discovery_addr.clone(),
            sensors: self.no_sensors.then(Vec::new),
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

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    let node = Node::start(config).await?;
    println!(
        "hub node {} serving http://{}",
        node.config().node_id,
        node.http_addr()
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
