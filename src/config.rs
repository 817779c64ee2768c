//! Node configuration: one validated [`Config`] built from layers.
//!
//! Precedence, lowest first: built-in defaults, the TOML file, `HUB_*`
//! environment variables, command-line flags. Each layer is a
//! [`ConfigLayer`] of optional fields; [`Config::resolve`] merges them and
//! validates the result, so a bad setting is refused up front.
//!
//! **One list of settings.** [`ConfigLayer`] is the only place a setting is
//! declared: its serde derive reads the TOML file, its clap derive makes the
//! `hub serve --flag`, and the environment layer ([`ConfigLayer::from_env`])
//! reads `HUB_<FIELD>` for every flag by parsing it with that same clap
//! argument. To add a setting: add an `Option` field (with a doc comment, it
//! is the `--help` text) and read it in [`Config::resolve`].
//!
//! **Errors name what the operator typed**: `HUB_FANOUT="abc": invalid digit
//! found in string`, `fanout: must be at least 1 (set by --fanout)`,
//! `config file hub.toml: unknown field colour`.
//!
//! **Durations** are humantime strings (`"10s"`, `"500ms"`, `"1h"`); a bare
//! integer means milliseconds, so the older `*_ms` keys
//! (`anti_entropy_interval_ms = 10000`) are still accepted as aliases.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::membership;
use crate::model::NodeId;
use crate::replication::ReplicationConfig;
use crate::sensors::{SensorKind, SensorSpec};
use crate::transport::TransportTuning;

pub const DEFAULT_HTTP: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "./hub-data";
pub const DEFAULT_NODE_ID: &str = "node-1";
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;
pub const DEFAULT_LOG_RETENTION: u64 = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("config file {path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("{var}={value:?}: {reason}")]
    Env {
        var: String,
        value: String,
        reason: String,
    },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Where a layer came from, so a validation error can say who set the field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Source {
    /// Built in code (tests, `hub demo`).
    #[default]
    Code,
    /// A TOML file at this path.
    File(String),
    /// `HUB_*` environment variables.
    Env,
    /// Command-line flags.
    Flags,
}

impl Source {
    fn describe(&self, field: &str) -> String {
        match self {
            Source::Code => String::new(),
            Source::File(path) => format!(" (set in {path})"),
            Source::Env => format!(" (set by {})", env_var(field)),
            Source::Flags => format!(" (set by --{})", field.replace('_', "-")),
        }
    }
}

/// The environment variable of a setting: `fanout` → `HUB_FANOUT`.
pub fn env_var(field: &str) -> String {
    format!("HUB_{}", field.to_ascii_uppercase())
}

/// One source of settings; `None` means "not set here".
///
/// Memory: the settings marked *memory* bound a queue; its worst case is
/// the product given, typical use is far below it (queues are empty at rest).
#[derive(Clone, Debug, Default, Deserialize, Serialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ConfigLayer {
    /// This node's id (DNS label). Default node-1.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Data directory. Default ./hub-data.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address; port 0 picks a free one. Default 127.0.0.1:8080.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Deltas kept per origin in the log. Default 1000000.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_retention: Option<u64>,
    /// Largest value accepted (PUT/POST /kv, each reading of POST
    /// /api/readings), in bytes; larger is 413. At most 16 MiB - 64 KiB
    /// (one replication frame with its envelope). Default 1 MiB.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_value_bytes: Option<usize>,
    /// Largest body of POST /api/readings, in bytes (its readings travel to
    /// peers in as many messages as they need; each value is bounded by
    /// max_value_bytes). Default 16 MiB.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_batch_bytes: Option<usize>,
    /// Bound on sled's page cache, in bytes. Default 64 MiB.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_bytes: Option<u64>,
    /// Most sensors one GET /api/state returns; more is a 400 naming
    /// `?limit=`/`?after=` paging. Default 10000.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_limit: Option<usize>,
    /// Log records one history request may scan. Default 100000.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_scan_limit: Option<usize>,

    /// QUIC (UDP) address for peers; unset runs a single node.
    #[arg(long, help_heading = "Cluster")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Address peers should dial, if not --listen (NAT, relay).
    #[arg(long, help_heading = "Cluster")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// Client URL (scheme://host:port) peers, `hub status` and the dashboard
    /// use to reach this node's HTTP API. Default: the bound HTTP address, or
    /// for a 0.0.0.0 bind the QUIC advertise/listen IP, else the host name.
    #[arg(long, help_heading = "Cluster")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise_http: Option<String>,
    /// Peers to contact at start, host:port (repeatable, or comma-separated).
    #[arg(long, value_delimiter = ',', help_heading = "Cluster")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join: Option<Vec<String>>,
    /// Directory with the cluster CA and this node's certificate. Default certs.
    #[arg(long, help_heading = "Cluster")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certs: Option<PathBuf>,
    /// Largest tolerated distance of this node's clock from the cluster
    /// median (measured from heartbeats); beyond it the node refuses local
    /// writes (503 clock_skew) until its clock is fixed. Also the most a
    /// peer's stamp may be ahead of ours to be adopted. Default 500ms.
    #[arg(long, value_parser = parse_duration, help_heading = "Cluster")]
    #[serde(
        default,
        alias = "max_clock_offset_ms",
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_clock_offset: Option<Duration>,
    /// Write even though the persisted clock high-water mark is ahead of the
    /// wall clock by more than max_clock_offset (the clock ran ahead before):
    /// new writes then win over writes made elsewhere until real time passes
    /// the mark. Default false (such a node refuses writes, 503
    /// clock_ahead_at_start, until real time passes the mark).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", help_heading = "Cluster")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accept_clock_ahead: Option<bool>,
    /// Peers each batch of new deltas is pushed to. Default 8.
    #[arg(long, help_heading = "Cluster")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fanout: Option<usize>,
    /// How often a pull asks one live peer for missed deltas. Default 1s.
    #[arg(long, value_parser = parse_duration, help_heading = "Cluster")]
    #[serde(
        default,
        alias = "pull_interval_ms",
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub pull_interval: Option<Duration>,
    /// How often anti-entropy runs with one random live peer. Default 10s.
    #[arg(long, value_parser = parse_duration, help_heading = "Cluster")]
    #[serde(
        default,
        alias = "anti_entropy_interval_ms",
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub anti_entropy_interval: Option<Duration>,
    /// Replicated commits in flight between the cluster and the store
    /// writer, and durable groups queued back; when full, the cluster stops
    /// reading peers' messages (QUIC flow control pushes back). Memory: this
    /// × (one message, ≤ 1 MiB, + one group's deltas). Default 64.
    #[arg(long, help_heading = "Cluster")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_queue_len: Option<usize>,
    /// How long a write with `?w=quorum|all` waits for replicas to hold it
    /// durably, and a read with `?r=quorum|all` for their answers, before
    /// 503 quorum_unavailable. Default 2s.
    #[arg(long, value_parser = parse_duration, help_heading = "Cluster")]
    #[serde(
        default,
        alias = "quorum_timeout_ms",
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub quorum_timeout: Option<Duration>,

    /// Membership protocol period: each node pings 4 members (round-robin)
    /// per period. Default 500ms.
    #[arg(long, value_parser = parse_duration, help_heading = "Membership")]
    #[serde(
        default,
        alias = "probe_interval_ms",
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub probe_interval: Option<Duration>,
    /// Phi-accrual level reported as high (`/api/membership`, `hub status`);
    /// suspicion itself comes from unanswered probes. Default 8.
    #[arg(long, help_heading = "Membership")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phi_threshold: Option<f64>,
    /// A probe unanswered this long, directly or through the relays asked
    /// halfway, makes the peer suspect. Default 1s.
    #[arg(long, value_parser = parse_duration, help_heading = "Membership")]
    #[serde(
        default,
        alias = "suspect_after_ms",
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub suspect_after: Option<Duration>,
    /// Suspect this long → dead. Default 6s; at least --probe-interval.
    #[arg(long, value_parser = parse_duration, help_heading = "Membership")]
    #[serde(
        default,
        alias = "dead_after_ms",
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub dead_after: Option<Duration>,
    /// Ping period for dead peers, so they can come back. Default 2s.
    #[arg(long, value_parser = parse_duration, help_heading = "Membership")]
    #[serde(
        default,
        alias = "dead_probe_interval_ms",
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub dead_probe_interval: Option<Duration>,
    /// Dead or departed peers are forgotten (no more probes, not restored at
    /// restart) this long after they died. Default 1h.
    #[arg(long, value_parser = parse_duration, help_heading = "Membership")]
    #[serde(
        default,
        alias = "remove_dead_after_ms",
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub remove_dead_after: Option<Duration>,
    /// Copies kept of each key: with fewer than the cluster's members, the
    /// key space is split into 256 partitions, each stored by this many
    /// nodes (see README "Sharding"). Default: every node (full replication).
    #[arg(long, help_heading = "Sharding")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<usize>,
    /// A member dead for longer than this loses its partitions to the next
    /// nodes in line (re-replication). Default 30s.
    #[arg(long, value_parser = parse_duration, help_heading = "Sharding")]
    #[serde(
        default,
        alias = "rebalance_after_ms",
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub rebalance_after: Option<Duration>,

    /// A peer connection silent this long is closed. Default 10s.
    #[arg(long, value_parser = parse_duration, help_heading = "Transport")]
    #[serde(
        default,
        alias = "idle_timeout_ms",
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
    /// Limit for one QUIC handshake. Default 2s; below --idle-timeout.
    #[arg(long, value_parser = parse_duration, help_heading = "Transport")]
    #[serde(
        default,
        alias = "connect_timeout_ms",
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub connect_timeout: Option<Duration>,
    /// Frames queued per peer before sends to it are dropped. Memory: this
    /// × peers × one frame (≤ 1 MiB; typically a few KiB). Default 4096.
    #[arg(long, help_heading = "Transport")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_queue_len: Option<usize>,
    /// Received messages queued for the cluster task. Memory: this × one
    /// frame (≤ 1 MiB). Default 4096.
    #[arg(long, help_heading = "Transport")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incoming_queue_len: Option<usize>,

    /// Serve HTTPS with this node's certificate and key from --certs.
    /// Default false.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", help_heading = "HTTP security")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_tls: Option<bool>,
    /// Require an API key (`hub keys`) on every request but GET /health,
    /// /ready and the dashboard's static files.
    /// Default false.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", help_heading = "HTTP security")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<bool>,
    /// Serve a non-loopback HTTP address without TLS or auth anyway (warns).
    /// Default false.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", help_heading = "HTTP security")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
    /// Concurrent HTTP connections at most; also kept a quarter (at least
    /// 256) below the file-descriptor limit. Default 1024.
    #[arg(long, help_heading = "HTTP security")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_max_connections: Option<usize>,
    /// Largest request line plus headers, in bytes; larger is 431. Default 16 KiB.
    #[arg(long, help_heading = "HTTP security")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_max_header_bytes: Option<usize>,
    /// The TLS handshake and each request head must arrive within this. Default 10s.
    #[arg(long, value_parser = parse_duration, help_heading = "HTTP security")]
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub http_header_timeout: Option<Duration>,
    /// A client connection with no request in flight is closed after this. Default 60s.
    #[arg(long, value_parser = parse_duration, help_heading = "HTTP security")]
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub http_idle_timeout: Option<Duration>,

    /// Find peers on the local network without a join list: `lan` (UDP
    /// beacons; joins still need certificates of this cluster's CA) or
    /// `off`. Default off.
    #[arg(long, value_parser = ["off", "lan"], help_heading = "Discovery")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery: Option<String>,
    /// Where beacons go: a multicast group or a broadcast address, ip:port.
    /// Default 239.255.73.73:7373.
    #[arg(long, help_heading = "Discovery")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery_addr: Option<String>,
    /// Time between two beacons of this node (jittered). Default 2s.
    #[arg(long, value_parser = parse_duration, help_heading = "Discovery")]
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub discovery_interval: Option<Duration>,

    /// Replace the default demo sensors (`[[sensors]]` tables; file only);
    /// an empty list runs none.
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sensors: Option<Vec<toml::Table>>,

    /// Where this layer came from (not a setting).
    #[arg(skip)]
    #[serde(skip)]
    pub source: Source,
}

impl ConfigLayer {
    /// Parses a TOML config text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<ConfigLayer, ConfigError> {
        let mut layer: ConfigLayer = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            reason: e.to_string().trim().to_string(),
        })?;
        layer.source = Source::File(origin.to_string());
        Ok(layer)
    }

    pub fn from_file(path: &std::path::Path) -> Result<ConfigLayer, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        ConfigLayer::from_toml(&text, &path.display().to_string())
    }

    /// Reads `HUB_<FIELD>` for every setting that has a flag, parsing each
    /// exactly as its flag would be parsed; an error names the variable.
    /// Variables that are no setting (`HUB_CONFIG`, a client's `HUB_TOKEN`)
    /// are left alone.
    pub fn from_env(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<ConfigLayer, ConfigError> {
        use clap::{Args, FromArgMatches};
        let vars: std::collections::HashMap<String, String> = vars.into_iter().collect();
        let cmd = ConfigLayer::augment_args(clap::Command::new("hub").no_binary_name(true));
        let mut layer = ConfigLayer::default();
        for arg in cmd.get_arguments() {
            let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else {
                continue;
            };
            let var = env_var(id);
            let Some(value) = vars.get(&var) else {
                continue;
            };
            let env_err = |reason: String| ConfigError::Env {
                var: var.clone(),
                value: value.clone(),
                reason,
            };
            let matches = cmd
                .clone()
                .try_get_matches_from([format!("--{long}={value}")])
                .map_err(|e| env_err(clap_reason(&e)))?;
            let one =
                ConfigLayer::from_arg_matches(&matches).map_err(|e| env_err(clap_reason(&e)))?;
            layer = layer.overlay(one)?;
        }
        layer.source = Source::Env;
        Ok(layer)
    }

    /// Names of the settings this layer sets.
    fn set_fields(&self) -> Vec<String> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(m)) => m.into_iter().map(|(k, _)| k).collect(),
            _ => Vec::new(),
        }
    }

    /// Fields of `other` that are set replace ours (the source stays ours).
    pub fn overlay(self, other: ConfigLayer) -> Result<ConfigLayer, ConfigError> {
        let bug = |e: serde_json::Error| invalid("config", format!("cannot merge layers: {e}"));
        let source = self.source.clone();
        let mut base = match serde_json::to_value(&self).map_err(bug)? {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        if let serde_json::Value::Object(top) = serde_json::to_value(&other).map_err(bug)? {
            base.extend(top);
        }
        let mut merged: ConfigLayer =
            serde_json::from_value(serde_json::Value::Object(base)).map_err(bug)?;
        merged.source = source;
        Ok(merged)
    }
}

/// The reason in a clap error, without clap's framing of a flag.
fn clap_reason(e: &clap::Error) -> String {
    match std::error::Error::source(e) {
        Some(s) => s.to_string(),
        None => e
            .to_string()
            .lines()
            .next()
            .unwrap_or("invalid value")
            .trim_start_matches("error: ")
            .to_string(),
    }
}

/// `"10s"`, `"1h 30m"`, `"250ms"`; a bare integer is milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(Duration::from_millis(ms));
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. \"10s\", \"500ms\", \"1h\")"))
}

/// Serde for `Option<Duration>`: a humantime string or integer milliseconds.
mod opt_duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Ms(u64),
            Text(String),
        }
        match Raw::deserialize(d) {
            Ok(Raw::Ms(ms)) => Ok(Some(Duration::from_millis(ms))),
            Ok(Raw::Text(t)) => parse_duration(&t)
                .map(Some)
                .map_err(serde::de::Error::custom),
            Err(_) => Err(serde::de::Error::custom(
                "expected a duration like \"10s\" or integer milliseconds",
            )),
        }
    }
}

/// A complete, validated node configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    /// HTTP listen address; port 0 picks a free port (see `Node::http_addr`).
    pub http: SocketAddr,
    pub log_retention: u64,
    pub max_value_bytes: usize,
    pub max_batch_bytes: usize,
    pub cache_bytes: u64,
    pub state_limit: usize,
    pub history_scan_limit: usize,
    pub listen: Option<SocketAddr>,
    pub advertise: Option<SocketAddr>,
    /// Advertised client URL, when set (see `node::advertised_http`).
    pub advertise_http: Option<String>,
    pub join: Vec<String>,
    /// Certificates directory; defaults to `certs` when `listen` is set.
    pub certs: Option<PathBuf>,
    pub max_clock_offset: Duration,
    pub accept_clock_ahead: bool,
    pub commit_queue_len: usize,
    /// How long `w`/`r` above 1 wait for replicas.
    pub quorum_timeout: Duration,
    /// Validated membership settings (probe interval, detector, removal).
    pub membership: membership::Config,
    /// Validated replication settings (fanout, pull and anti-entropy timers).
    pub replication: ReplicationConfig,
    pub transport: TransportTuning,
    /// LAN discovery, when on.
    pub discovery: Option<crate::discovery::DiscoveryConfig>,
    pub sensors: Vec<SensorSpec>,
    pub http_tls: bool,
    pub auth: bool,
    pub insecure: bool,
    pub http_limits: HttpLimits,
}

/// Abuse limits of the HTTP server (see `http::server`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 1024,
            max_header_bytes: 16 << 10,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

fn http_limits(l: &ConfigLayer) -> Result<HttpLimits, ConfigError> {
    let d = HttpLimits::default();
    let limits = HttpLimits {
        max_connections: positive(
            "http_max_connections",
            l.http_max_connections.unwrap_or(d.max_connections) as u64,
        )? as usize,
        max_header_bytes: l.http_max_header_bytes.unwrap_or(d.max_header_bytes),
        header_timeout: nonzero(
            "http_header_timeout",
            l.http_header_timeout.unwrap_or(d.header_timeout),
        )?,
        idle_timeout: nonzero(
            "http_idle_timeout",
            l.http_idle_timeout.unwrap_or(d.idle_timeout),
        )?,
    };
    if !(1024..=1 << 20).contains(&limits.max_header_bytes) {
        return Err(invalid(
            "http_max_header_bytes",
            format!(
                "{} is not between 1024 and 1048576",
                limits.max_header_bytes
            ),
        ));
    }
    Ok(limits)
}

impl Config {
    /// A node on defaults with the given identity and directory, no sensors,
    /// HTTP on an ephemeral loopback port: what tests want.
    pub fn for_test(node_id: &str, data_dir: impl Into<PathBuf>) -> Result<Config, ConfigError> {
        Config::resolve([ConfigLayer {
            node_id: Some(node_id.into()),
            data_dir: Some(data_dir.into()),
            http: Some("127.0.0.1:0".into()),
            sensors: Some(Vec::new()),
            ..ConfigLayer::default()
        }])
    }

    /// Merges layers (later wins) over the defaults and validates. An error
    /// names the field and, when a file, variable or flag set it, that too.
    pub fn resolve(layers: impl IntoIterator<Item = ConfigLayer>) -> Result<Config, ConfigError> {
        let mut origin: std::collections::HashMap<String, Source> = Default::default();
        let mut l = ConfigLayer::default();
        for layer in layers {
            for f in layer.set_fields() {
                origin.insert(f, layer.source.clone());
            }
            l = l.overlay(layer)?;
        }
        Config::validated(l).map_err(|e| match e {
            ConfigError::Invalid { field, reason } => {
                let key = field.split(['[', '.']).next().unwrap_or(&field);
                let by = origin.get(key).map(|s| s.describe(key)).unwrap_or_default();
                ConfigError::Invalid {
                    field,
                    reason: format!("{reason}{by}"),
                }
            }
            other => other,
        })
    }

    fn validated(l: ConfigLayer) -> Result<Config, ConfigError> {
        let node_id = NodeId::new(l.node_id.clone().unwrap_or_else(|| DEFAULT_NODE_ID.into()))
            .map_err(|e| invalid("node_id", e.to_string()))?;
        let http = parse_addr("http", l.http.as_deref().unwrap_or(DEFAULT_HTTP))?;
        let listen = l
            .listen
            .as_deref()
            .map(|a| parse_addr("listen", a))
            .transpose()?;
        let log_retention = positive(
            "log_retention",
            l.log_retention.unwrap_or(DEFAULT_LOG_RETENTION),
        )?;
        let max_value_bytes = positive(
            "max_value_bytes",
            l.max_value_bytes.unwrap_or(DEFAULT_MAX_VALUE_BYTES) as u64,
        )? as usize;
        let max_batch_bytes = positive(
            "max_batch_bytes",
            l.max_batch_bytes.unwrap_or(16 << 20) as u64,
        )? as usize;
        if max_value_bytes > crate::transport::frame::MAX_VALUE_BYTES {
            return Err(invalid(
                "max_value_bytes",
                format!(
                    "{max_value_bytes} cannot be replicated: a value travels to peers in one frame of at most {} bytes with its envelope, so the limit is {} bytes",
                    crate::transport::frame::DEFAULT_MAX_FRAME_BYTES,
                    crate::transport::frame::MAX_VALUE_BYTES
                ),
            ));
        }
        if max_batch_bytes < max_value_bytes {
            return Err(invalid(
                "max_batch_bytes",
                format!("{max_batch_bytes} is below max_value_bytes ({max_value_bytes}): a batch could not carry one largest value"),
            ));
        }
        let cache_bytes = l.cache_bytes.unwrap_or(64 << 20);
        if cache_bytes < 1 << 20 {
            return Err(invalid(
                "cache_bytes",
                format!("{cache_bytes} is below the 1 MiB minimum"),
            ));
        }
        let state_limit = positive("state_limit", l.state_limit.unwrap_or(10_000) as u64)? as usize;
        let history_scan_limit = positive(
            "history_scan_limit",
            l.history_scan_limit.unwrap_or(100_000) as u64,
        )? as usize;
        let advertise = l
            .advertise
            .as_deref()
            .map(|a| parse_addr("advertise", a))
            .transpose()?;
        if advertise.is_some() && listen.is_none() {
            return Err(invalid(
                "advertise",
                "needs `listen` (the QUIC address) too",
            ));
        }
        let advertise_http = l
            .advertise_http
            .as_deref()
            .map(parse_http_url)
            .transpose()?;
        let join = l.join.clone().unwrap_or_default();
        for (i, peer) in join.iter().enumerate() {
            if peer.trim().is_empty() || !peer.contains(':') {
                return Err(invalid(
                    format!("join[{i}]"),
                    format!("{peer:?} is not host:port"),
                ));
            }
        }
        if !join.is_empty() && listen.is_none() {
            return Err(invalid(
                "join",
                "joining a cluster needs `listen` (the QUIC address) too",
            ));
        }
        let max_clock_offset = nonzero(
            "max_clock_offset",
            l.max_clock_offset.unwrap_or(Duration::from_millis(500)),
        )?;
        let commit_queue_len =
            positive("commit_queue_len", l.commit_queue_len.unwrap_or(64) as u64)? as usize;
        let quorum_timeout = nonzero(
            "quorum_timeout",
            l.quorum_timeout.unwrap_or(Duration::from_secs(2)),
        )?;

        let replication = replication_config(&l)?;
        let membership = membership_config(&l)?;
        let transport = transport_settings(&l)?;
        let discovery = discovery_config(&l, listen.is_some())?;

        let http_limits = http_limits(&l)?;
        let sensors = match l.sensors {
            Some(tables) => parse_sensors(&tables)?,
            None => demo_sensors(),
        };
        Ok(Config {
            node_id,
            data_dir: l.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            http,
            log_retention,
            max_value_bytes,
            max_batch_bytes,
            cache_bytes,
            state_limit,
            history_scan_limit,
            listen,
            advertise,
            advertise_http,
            join,
            certs: match (l.certs, listen.is_some() || l.http_tls == Some(true)) {
                (Some(dir), _) => Some(dir),
                (None, true) => Some(PathBuf::from("certs")),
                (None, false) => None,
            },
            max_clock_offset,
            accept_clock_ahead: l.accept_clock_ahead.unwrap_or(false),
            commit_queue_len,
            quorum_timeout,
            membership,
            replication,
            transport,
            discovery,
            sensors,
            http_tls: l.http_tls.unwrap_or(false),
            auth: l.auth.unwrap_or(false),
            insecure: l.insecure.unwrap_or(false),
            http_limits,
        })
    }
}

/// `http(s)://host:port` without a path, at most 256 bytes.
fn parse_http_url(url: &str) -> Result<String, ConfigError> {
    let bad = |why: &str| invalid("advertise_http", format!("{url:?} {why}"));
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| bad("must start with http:// or https://"))?;
    let rest = rest.trim_end_matches('/');
    if url.len() > 256 || rest.is_empty() || rest.contains(['/', '?', '#', ' ', '@']) {
        return Err(bad(
            "must be scheme://host:port (no path, at most 256 bytes)",
        ));
    }
    let port = rest.rsplit_once(':').map(|(_, p)| p);
    if port.is_none_or(|p| p.parse::<u16>().is_err()) {
        return Err(bad("needs a port (scheme://host:port)"));
    }
    Ok(url.trim_end_matches('/').to_string())
}

fn discovery_config(
    l: &ConfigLayer,
    clustered: bool,
) -> Result<Option<crate::discovery::DiscoveryConfig>, ConfigError> {
    match l.discovery.as_deref().unwrap_or("off") {
        "off" => return Ok(None),
        "lan" => {}
        other => {
            return Err(invalid(
                "discovery",
                format!("{other:?} is not one of \"off\", \"lan\""),
            ))
        }
    }
    if !clustered {
        return Err(invalid(
            "discovery",
            "LAN discovery needs `listen` (the QUIC address) too",
        ));
    }
    let mut d = crate::discovery::DiscoveryConfig::default();
    if let Some(addr) = &l.discovery_addr {
        d.target = addr.parse().map_err(|_| {
            invalid(
                "discovery_addr",
                format!("{addr:?} is not an IPv4 address like 239.255.73.73:7373"),
            )
        })?;
    }
    if let Some(interval) = l.discovery_interval {
        d.interval = interval;
    }
    d.validate().map_err(|e| invalid("discovery", e))?;
    Ok(Some(d))
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

fn replication_config(l: &ConfigLayer) -> Result<ReplicationConfig, ConfigError> {
    let d = ReplicationConfig::default();
    let c = ReplicationConfig {
        push_fanout: positive("fanout", l.fanout.unwrap_or(d.push_fanout) as u64)? as usize,
        pull_interval_ms: ms(nonzero(
            "pull_interval",
            l.pull_interval
                .unwrap_or(Duration::from_millis(d.pull_interval_ms)),
        )?),
        ae_interval_ms: ms(nonzero(
            "anti_entropy_interval",
            l.anti_entropy_interval
                .unwrap_or(Duration::from_millis(d.ae_interval_ms)),
        )?),
        replication_factor: match l.replication_factor {
            Some(r) => Some(positive("replication_factor", r as u64)? as usize),
            None => None,
        },
        rebalance_after_ms: ms(nonzero(
            "rebalance_after",
            l.rebalance_after
                .unwrap_or(Duration::from_millis(d.rebalance_after_ms)),
        )?),
        ..d
    };
    c.validate()
        .map_err(|e| invalid("replication", e.to_string()))?;
    Ok(c)
}

fn membership_config(l: &ConfigLayer) -> Result<membership::Config, ConfigError> {
    let d = membership::Config::default();
    let or = |v: Option<Duration>, default_ms: u64| v.map_or(default_ms, ms);
    let c = membership::Config {
        heartbeat_interval_ms: ms(nonzero(
            "probe_interval",
            l.probe_interval
                .unwrap_or(Duration::from_millis(d.heartbeat_interval_ms)),
        )?),
        phi_threshold: l.phi_threshold.unwrap_or(d.phi_threshold),
        acceptable_pause_ms: or(l.suspect_after, d.acceptable_pause_ms as u64) as f64,
        dead_after_ms: or(l.dead_after, d.dead_after_ms),
        dead_probe_interval_ms: ms(nonzero(
            "dead_probe_interval",
            l.dead_probe_interval
                .unwrap_or(Duration::from_millis(d.dead_probe_interval_ms)),
        )?),
        remove_dead_after_ms: or(l.remove_dead_after, d.remove_dead_after_ms),
        ..d
    };
    if !(c.phi_threshold.is_finite() && c.phi_threshold > 0.0) {
        return Err(invalid(
            "phi_threshold",
            format!("{} must be a positive number", c.phi_threshold),
        ));
    }
    if c.dead_after_ms < c.heartbeat_interval_ms {
        return Err(invalid(
            "dead_after",
            format!(
                "{} ms is shorter than probe_interval ({} ms): peers would die between two pings",
                c.dead_after_ms, c.heartbeat_interval_ms
            ),
        ));
    }
    c.validate()
        .map_err(|e| invalid("membership", e.to_string()))?;
    Ok(c)
}

fn transport_settings(l: &ConfigLayer) -> Result<TransportTuning, ConfigError> {
    let d = TransportTuning::default();
    let t = TransportTuning {
        idle_timeout: l.idle_timeout.unwrap_or(d.idle_timeout),
        connect_timeout: nonzero(
            "connect_timeout",
            l.connect_timeout.unwrap_or(d.connect_timeout),
        )?,
        peer_queue_len: positive(
            "peer_queue_len",
            l.peer_queue_len.unwrap_or(d.peer_queue_len) as u64,
        )? as usize,
        incoming_queue_len: positive(
            "incoming_queue_len",
            l.incoming_queue_len.unwrap_or(d.incoming_queue_len) as u64,
        )? as usize,
    };
    if t.idle_timeout < Duration::from_millis(100) {
        return Err(invalid("idle_timeout", "must be at least 100ms"));
    }
    if t.connect_timeout > t.idle_timeout {
        return Err(invalid(
            "connect_timeout",
            format!(
                "{} is longer than idle_timeout ({})",
                humantime::format_duration(t.connect_timeout),
                humantime::format_duration(t.idle_timeout)
            ),
        ));
    }
    Ok(t)
}

fn parse_addr(field: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|_| {
        invalid(
            field,
            format!("{s:?} is not an address like 127.0.0.1:8080"),
        )
    })
}

fn positive(field: &str, v: u64) -> Result<u64, ConfigError> {
    if v == 0 {
        return Err(invalid(field, "must be at least 1"));
    }
    Ok(v)
}

fn nonzero(field: &str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        return Err(invalid(field, "must be longer than 0"));
    }
    Ok(d)
}

/// The sensors a node runs when the config names none: one of a few kinds,
/// slow enough to be harmless.
pub fn demo_sensors() -> Vec<SensorSpec> {
    let s = |name: &str, period_ms, kind| SensorSpec {
        name: name.into(),
        period_ms,
        kind,
    };
    vec![
        s(
            "temperature",
            2000,
            SensorKind::Numeric {
                min: 15.0,
                max: 30.0,
                unit: Some("°C".into()),
            },
        ),
        s("door-open", 5000, SensorKind::Boolean { p_true: 0.2 }),
        s(
            "vibration",
            1000,
            SensorKind::Wave {
                amplitude: 2.0,
                frequency: 0.05,
            },
        ),
        s(
            "pressure",
            3000,
            SensorKind::Noise {
                base: 1013.0,
                noise: 1.5,
            },
        ),
    ]
}

/// Parses `[[sensors]]` tables by hand so every error names
/// `sensors[i].field`.
pub fn parse_sensors(tables: &[toml::Table]) -> Result<Vec<SensorSpec>, ConfigError> {
    let mut out: Vec<SensorSpec> = Vec::with_capacity(tables.len());
    for (i, t) in tables.iter().enumerate() {
        let spec = parse_sensor(i, t)?;
        if out.iter().any(|s| s.name == spec.name) {
            return Err(invalid(
                format!("sensors[{i}].name"),
                format!("duplicate sensor name {:?}", spec.name),
            ));
        }
        out.push(spec);
    }
    Ok(out)
}

struct Fields<'a> {
    i: usize,
    t: &'a toml::Table,
    used: Vec<&'static str>,
}

impl Fields<'_> {
    fn name(&self, f: &str) -> String {
        format!("sensors[{}].{f}", self.i)
    }

    fn f64(&mut self, f: &'static str, default: Option<f64>) -> Result<f64, ConfigError> {
        self.used.push(f);
        match self.t.get(f) {
            Some(toml::Value::Float(x)) if x.is_finite() => Ok(*x),
            Some(toml::Value::Integer(x)) => Ok(*x as f64),
            Some(_) => Err(invalid(self.name(f), "must be a finite number")),
            None => default.ok_or_else(|| invalid(self.name(f), "missing")),
        }
    }

    fn u64(&mut self, f: &'static str, default: Option<u64>) -> Result<u64, ConfigError> {
        self.used.push(f);
        match self.t.get(f) {
            Some(toml::Value::Integer(x)) if *x >= 0 => Ok(*x as u64),
            Some(_) => Err(invalid(self.name(f), "must be a non-negative integer")),
            None => default.ok_or_else(|| invalid(self.name(f), "missing")),
        }
    }

    fn string(&mut self, f: &'static str) -> Result<Option<String>, ConfigError> {
        self.used.push(f);
        match self.t.get(f) {
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(invalid(self.name(f), "must be a string")),
            None => Ok(None),
        }
    }

    fn probability(&mut self, f: &'static str, default: f64) -> Result<f64, ConfigError> {
        let p = self.f64(f, Some(default))?;
        if !(0.0..=1.0).contains(&p) {
            return Err(invalid(
                self.name(f),
                format!("{p} is not a probability between 0 and 1"),
            ));
        }
        Ok(p)
    }
}

fn parse_sensor(i: usize, t: &toml::Table) -> Result<SensorSpec, ConfigError> {
    let mut f = Fields {
        i,
        t,
        used: Vec::new(),
    };
    let name = f
        .string("name")?
        .ok_or_else(|| invalid(f.name("name"), "missing"))?;
    let key_part_ok = !name.is_empty()
        && name.len() <= 128
        && !name.contains('/')
        && crate::model::validate_key(&name).is_ok();
    if !key_part_ok {
        return Err(invalid(
            f.name("name"),
            format!("{name:?} must be 1-128 printable characters without '/'"),
        ));
    }
    let period_ms = f.u64("period_ms", Some(1000))?;
    if period_ms < 10 {
        return Err(invalid(
            f.name("period_ms"),
            format!("{period_ms} is below the 10 ms minimum"),
        ));
    }
    let kind_name = f
        .string("kind")?
        .ok_or_else(|| invalid(f.name("kind"), "missing"))?;
    let kind = match kind_name.as_str() {
        "numeric" => {
            let min = f.f64("min", Some(0.0))?;
            let max = f.f64("max", Some(100.0))?;
            if min > max {
                return Err(invalid(f.name("min"), format!("min {min} is greater than max {max}")));
            }
            SensorKind::Numeric { min, max, unit: f.string("unit")? }
        }
        "boolean" => SensorKind::Boolean { p_true: f.probability("p_true", 0.5)? },
        "wave" => SensorKind::Wave {
            amplitude: f.f64("amplitude", Some(1.0))?,
            frequency: non_negative(&mut f, "frequency", 0.1)?,
        },
        "noise" => SensorKind::Noise { base: f.f64("base", Some(0.0))?, noise: non_negative(&mut f, "noise", 1.0)? },
        "spike" => SensorKind::Spike {
            baseline: f.f64("baseline", Some(0.0))?,
            spike_height: f.f64("spike_height", Some(10.0))?,
            p_spike: f.probability("p_spike", 0.05)?,
        },
        "trend" => SensorKind::Trend {
            start: f.f64("start", Some(0.0))?,
            slope: f.f64("slope", Some(0.1))?,
            noise: non_negative(&mut f, "noise", 0.0)?,
        },
        "categorical" => {
            f.used.push("values");
            let values = match t.get("values") {
                Some(toml::Value::Array(a)) => a
                    .iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| invalid(f.name("values"), "must be a list of strings"))?,
                Some(_) => return Err(invalid(f.name("values"), "must be a list of strings")),
                None => return Err(invalid(f.name("values"), "missing")),
            };
            if values.is_empty() {
                return Err(invalid(f.name("values"), "must not be empty"));
            }
            SensorKind::Categorical { values }
        }
        "incremental" => SensorKind::Incremental { step: f.f64("step", Some(1.0))? },
        other => {
            return Err(invalid(
                f.name("kind"),
                format!(
                    "unknown kind {other:?}; use numeric, boolean, wave, noise, spike, trend, categorical or incremental"
                ),
            ))
        }
    };
    if let Some(unknown) = t.keys().find(|k| !f.used.contains(&k.as_str())) {
        return Err(invalid(
            f.name(unknown),
            format!("unknown field for a {kind_name} sensor"),
        ));
    }
    Ok(SensorSpec {
        name,
        period_ms,
        kind,
    })
}

fn non_negative(f: &mut Fields<'_>, field: &'static str, default: f64) -> Result<f64, ConfigError> {
    let v = f.f64(field, Some(default))?;
    if v < 0.0 {
        return Err(invalid(f.name(field), format!("{v} must not be negative")));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(text: &str) -> Result<Config, ConfigError> {
        Config::resolve([ConfigLayer::from_toml(text, "test.toml")?])
    }

    #[test]
    fn empty_config_gives_a_working_default_node() {
        let c = from("").unwrap();
        assert_eq!(c.node_id.as_str(), DEFAULT_NODE_ID);
        assert_eq!(c.http.to_string(), DEFAULT_HTTP);
        assert_eq!(c.max_value_bytes, 1 << 20);
        assert!(!c.sensors.is_empty());
    }

    #[test]
    fn later_layers_win() {
        let file = ConfigLayer::from_toml("node_id = \"a\"\nhttp = \"127.0.0.1:1\"", "f").unwrap();
        let flags = ConfigLayer {
            node_id: Some("b".into()),
            ..Default::default()
        };
        let c = Config::resolve([file, flags]).unwrap();
        assert_eq!(c.node_id.as_str(), "b");
        assert_eq!(c.http.port(), 1);
    }

    #[test]
    fn bad_settings_are_refused_naming_the_field() {
        let cases = [
            ("node_id = \"Bad_Id\"", "node_id"),
            ("http = \"nowhere\"", "http"),
            ("log_retention = 0", "log_retention"),
            ("colour = 1", "colour"),
            ("join = [\"a:1\"]", "join"),
            ("[[sensors]]\nname = \"t\"\nkind = \"numeric\"\nmin = 5\nmax = 1", "sensors[0].min"),
            ("[[sensors]]\nname = \"t\"\nkind = \"boolean\"\np_true = 1.5", "sensors[0].p_true"),
            ("[[sensors]]\nname = \"t\"\nkind = \"categorical\"\nvalues = []", "sensors[0].values"),
            ("[[sensors]]\nname = \"t\"\nkind = \"laser\"", "sensors[0].kind"),
            ("[[sensors]]\nname = \"t\"\nkind = \"wave\"\nmin = 1", "sensors[0].min"),
            ("[[sensors]]\nname = \"a/b\"\nkind = \"wave\"", "sensors[0].name"),
            ("[[sensors]]\nname = \"t\"\nkind = \"wave\"\nperiod_ms = 1", "sensors[0].period_ms"),
            (
                "[[sensors]]\nname = \"t\"\nkind = \"wave\"\n[[sensors]]\nname = \"t\"\nkind = \"noise\"",
                "sensors[1].name",
            ),
        ];
        for (text, field) in cases {
            let err = from(text).expect_err(text).to_string();
            assert!(
                err.contains(field),
                "{text:?}: error {err:?} does not name {field}"
            );
        }
    }

    #[test]
    fn every_sensor_kind_parses() {
        let text = r#"
            [[sensors]]
            name = "a"
            kind = "numeric"
            min = 1
            max = 2.5
            unit = "C"
            [[sensors]]
            name = "b"
            kind = "categorical"
            values = ["x", "y"]
            [[sensors]]
            name = "c"
            kind = "spike"
            p_spike = 0.5
            [[sensors]]
            name = "d"
            kind = "trend"
            [[sensors]]
            name = "e"
            kind = "incremental"
            step = 2
        "#;
        let c = from(text).unwrap();
        assert_eq!(c.sensors.len(), 5);
        assert_eq!(
            c.sensors[0].kind,
            SensorKind::Numeric {
                min: 1.0,
                max: 2.5,
                unit: Some("C".into())
            }
        );
    }

    #[test]
    fn a_bad_environment_value_names_the_variable() {
        for (var, value) in [
            ("HUB_FANOUT", "abc"),
            ("HUB_LOG_RETENTION", "abc"),
            ("HUB_ANTI_ENTROPY_INTERVAL", "soon"),
            ("HUB_PHI_THRESHOLD", "high"),
        ] {
            let err = ConfigLayer::from_env([(var.to_string(), value.to_string())])
                .expect_err(var)
                .to_string();
            assert!(err.starts_with(var), "{var}: {err:?}");
            assert!(!err.contains("--"), "{var}: names a flag: {err:?}");
        }
    }

    #[test]
    fn replication_factor_from_file_env_and_flag_defaults_to_every_node() {
        assert_eq!(
            Config::resolve([]).unwrap().replication.replication_factor,
            None
        );
        let file = ConfigLayer::from_toml(
            "replication_factor = 3\nrebalance_after = \"1m\"",
            "hub.toml",
        )
        .unwrap();
        let c = Config::resolve([file]).unwrap();
        assert_eq!(c.replication.replication_factor, Some(3));
        assert_eq!(c.replication.rebalance_after_ms, 60_000);
        let env = ConfigLayer::from_env([("HUB_REPLICATION_FACTOR".to_string(), "2".to_string())])
            .unwrap();
        assert_eq!(
            Config::resolve([env])
                .unwrap()
                .replication
                .replication_factor,
            Some(2)
        );
        let env = ConfigLayer::from_env([("HUB_REPLICATION_FACTOR".to_string(), "0".to_string())])
            .unwrap();
        let err = Config::resolve([env]).unwrap_err().to_string();
        assert!(err.contains("HUB_REPLICATION_FACTOR"), "{err}");
    }

    #[test]
    fn an_invalid_value_names_who_set_it() {
        let env = ConfigLayer::from_env([("HUB_FANOUT".to_string(), "0".to_string())]).unwrap();
        let err = Config::resolve([env]).unwrap_err().to_string();
        assert!(
            err.contains("fanout") && err.contains("HUB_FANOUT"),
            "{err}"
        );
        let file = ConfigLayer::from_toml("fanout = 0", "hub.toml").unwrap();
        let err = Config::resolve([file]).unwrap_err().to_string();
        assert!(err.contains("hub.toml"), "{err}");
        let flags = ConfigLayer {
            fanout: Some(0),
            source: Source::Flags,
            ..ConfigLayer::default()
        };
        let err = Config::resolve([flags]).unwrap_err().to_string();
        assert!(err.contains("--fanout"), "{err}");
    }

    #[test]
    fn environment_sets_every_kind_of_setting_and_ignores_other_hub_variables() {
        let vars = [
            ("HUB_LISTEN", "127.0.0.1:0"),
            ("HUB_JOIN", "10.0.0.1:7000,10.0.0.2:7000"),
            ("HUB_FANOUT", "3"),
            ("HUB_ANTI_ENTROPY_INTERVAL", "2m"),
            ("HUB_DEAD_AFTER", "9000"),
            ("HUB_PHI_THRESHOLD", "10.5"),
            ("HUB_TOKEN", "not a setting"),
            ("HUB_CONFIG", "elsewhere.toml"),
        ];
        let env = ConfigLayer::from_env(vars.map(|(k, v)| (k.to_string(), v.to_string()))).unwrap();
        let c = Config::resolve([env]).unwrap();
        assert_eq!(c.join, ["10.0.0.1:7000", "10.0.0.2:7000"]);
        assert_eq!(c.replication.push_fanout, 3);
        assert_eq!(c.replication.ae_interval_ms, 120_000);
        assert_eq!(c.membership.dead_after_ms, 9_000);
        assert_eq!(c.membership.phi_threshold, 10.5);
    }

    #[test]
    fn durations_take_units_and_the_old_ms_keys_still_work() {
        let new = from("anti_entropy_interval = \"10s\"\nmax_clock_offset = \"250ms\"").unwrap();
        let old = from("anti_entropy_interval_ms = 10000\nmax_clock_offset_ms = 250").unwrap();
        assert_eq!(new.replication.ae_interval_ms, 10_000);
        assert_eq!(old.replication.ae_interval_ms, 10_000);
        assert_eq!(new.max_clock_offset, Duration::from_millis(250));
        assert_eq!(old.max_clock_offset, new.max_clock_offset);
        assert_eq!(new.quorum_timeout, Duration::from_secs(2), "default");
        let q = from("quorum_timeout = \"750ms\"").unwrap();
        let q_ms = from("quorum_timeout_ms = 750").unwrap();
        assert_eq!(q.quorum_timeout, Duration::from_millis(750));
        assert_eq!(q_ms.quorum_timeout, q.quorum_timeout);
        assert!(from("quorum_timeout = \"0s\"").is_err());
        let err = from("dead_after = \"forever\"").unwrap_err().to_string();
        assert!(err.contains("dead_after"), "{err}");
    }

    #[test]
    fn settings_that_contradict_each_other_are_refused() {
        let cases = [
            ("advertise = \"127.0.0.1:1\"", "advertise"),
            (
                "max_value_bytes = 2000\nmax_batch_bytes = 1000",
                "max_batch_bytes",
            ),
            (
                "connect_timeout = \"20s\"\nidle_timeout = \"5s\"",
                "connect_timeout",
            ),
            ("probe_interval = \"2s\"\ndead_after = \"1s\"", "dead_after"),
            ("phi_threshold = -1.0", "phi_threshold"),
            ("pull_interval = \"0s\"", "pull_interval"),
        ];
        for (text, field) in cases {
            let err = from(text).expect_err(text).to_string();
            assert!(
                err.starts_with(field),
                "{text:?}: {err:?} does not name {field}"
            );
        }
    }
}
