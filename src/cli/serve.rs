//! `hub serve`: run one node until SIGINT/SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use hub::config::{Config, ConfigLayer, Source};
use hub::node::Node;

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// TOML config file; HUB_* variables and flags override it.
    #[arg(long, env = "HUB_CONFIG")]
    pub config: Option<PathBuf>,
    /// Run without simulated sensors.
    #[arg(long, env = "HUB_NO_SENSORS")]
    pub no_sensors: bool,
    /// Every setting of the configuration table (also `HUB_<NAME>` and the
    /// config file's `name = ...`).
    #[command(flatten)]
    pub settings: ConfigLayer,
}

impl ServeArgs {
    /// The flag layer.
    pub fn layer(&self) -> ConfigLayer {
        let mut layer = self.settings.clone();
        layer.source = Source::Flags;
        if self.no_sensors {
            layer.sensors = Some(Vec::new());
        }
        layer
    }

    /// File, then `HUB_*` variables, then flags.
    pub fn resolve(&self) -> anyhow::Result<Config> {
        let mut layers = Vec::new();
        if let Some(path) = &self.config {
            layers.push(ConfigLayer::from_file(path)?);
        }
        // A variable that is not UTF-8 is no setting of ours.
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        layers.push(ConfigLayer::from_env(vars)?);
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
         `hub keys create --data-dir DIR --node-id ID --role admin`), or pass --insecure to serve it anyway"
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
    if let Some(advice) = no_keys_advice(&node) {
        tracing::warn!(node = %node.config().node_id, "{advice}");
    }
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

/// With auth on and no API key in the store yet, how to make the first one.
/// Said here rather than in `Node::start`, because `hub demo` starts its
/// nodes keyless and mints its admin key right after.
fn no_keys_advice(node: &Node) -> Option<&'static str> {
    let keyless = hub::auth::keys::list(node.store()).is_ok_and(|k| k.is_empty());
    (node.config().auth && keyless).then_some(
        "auth is on but there are no API keys yet: create one with `hub keys create --data-dir DIR --role admin` on the stopped node",
    )
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
