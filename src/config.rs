//! Node configuration: one validated [`Config`] built from layers.
//!
//! Precedence, lowest first: built-in defaults, the TOML file, `HUB_*`
//! environment variables, command-line flags. Each layer is a
//! [`ConfigLayer`] of optional fields; [`Config::resolve`] merges them and
//! validates the result, so a bad setting is refused up front with a message
//! that names the field (`sensors[1].max: ...`, `http: ...`).
//!
//! The cluster settings (`listen`, `join`, `certs`, `max_clock_offset_ms`,
//! `anti_entropy_interval_ms`, `fanout`) are parsed and validated here so a
//! config file written for a cluster is accepted by every node build.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::model::NodeId;
use crate::sensors::{SensorKind, SensorSpec};

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
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// One source of settings; `None` means "not set here".
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigLayer {
    pub node_id: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub http: Option<String>,
    pub log_retention: Option<u64>,
    /// Largest accepted value of `PUT /kv/{key}`, in bytes (default 1 MiB).
    pub max_value_bytes: Option<usize>,
    /// Largest accepted body of `POST /api/readings`, in bytes (default 16 MiB).
    pub max_batch_bytes: Option<usize>,
    /// Bound on sled's page cache, in bytes (default 64 MiB).
    pub cache_bytes: Option<u64>,
    /// QUIC (UDP) address for peers; `None` runs a single node.
    pub listen: Option<String>,
    /// Address peers use to reach this node, if not `listen` (NAT, relay).
    pub advertise: Option<String>,
    /// Peers to contact at start, as `host:port`.
    pub join: Option<Vec<String>>,
    /// Directory with the CA and this node's certificate and key.
    pub certs: Option<PathBuf>,
    /// A peer whose clock runs further ahead than this is refused.
    pub max_clock_offset_ms: Option<u64>,
    pub anti_entropy_interval_ms: Option<u64>,
    /// Peers each batch of new deltas is pushed to.
    pub fanout: Option<usize>,
    /// `"lan"`: find peers by UDP beacons on the local network; `"off"`.
    pub discovery: Option<String>,
    /// Where beacons go: a multicast group or broadcast address, `ip:port`.
    pub discovery_addr: Option<String>,
    pub discovery_interval_ms: Option<u64>,
    /// Replace the default demo sensors; an empty list runs none.
    pub sensors: Option<Vec<toml::Table>>,
}

impl ConfigLayer {
    /// Parses a TOML config text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<ConfigLayer, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            reason: e.to_string().trim().to_string(),
        })
    }

    pub fn from_file(path: &std::path::Path) -> Result<ConfigLayer, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        ConfigLayer::from_toml(&text, &path.display().to_string())
    }

    /// Fields of `other` that are set replace ours.
    pub fn overlay(mut self, other: ConfigLayer) -> ConfigLayer {
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        take!(
            node_id,
            data_dir,
            http,
            log_retention,
            max_value_bytes,
            max_batch_bytes,
            cache_bytes,
            listen,
            advertise,
            join,
            certs,
            max_clock_offset_ms,
            anti_entropy_interval_ms,
            fanout,
            discovery,
            discovery_addr,
            discovery_interval_ms,
            sensors
        );
        self
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
    pub listen: Option<SocketAddr>,
    pub advertise: Option<SocketAddr>,
    pub join: Vec<String>,
    /// Certificates directory; defaults to `certs` when `listen` is set.
    pub certs: Option<PathBuf>,
    pub max_clock_offset_ms: u64,
    pub anti_entropy_interval_ms: u64,
    pub fanout: usize,
    /// LAN discovery, when on.
    pub discovery: Option<crate::discovery::DiscoveryConfig>,
    pub sensors: Vec<SensorSpec>,
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

    /// Merges layers (later wins) over the defaults and validates.
    pub fn resolve(layers: impl IntoIterator<Item = ConfigLayer>) -> Result<Config, ConfigError> {
        let l = layers
            .into_iter()
            .fold(ConfigLayer::default(), ConfigLayer::overlay);
        let node_id = NodeId::new(l.node_id.unwrap_or_else(|| DEFAULT_NODE_ID.into()))
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
        let cache_bytes = l.cache_bytes.unwrap_or(64 << 20);
        if cache_bytes < 1 << 20 {
            return Err(invalid(
                "cache_bytes",
                format!("{cache_bytes} is below the 1 MiB minimum"),
            ));
        }
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
        let discovery = parse_discovery(
            l.discovery.as_deref(),
            l.discovery_addr.as_deref(),
            l.discovery_interval_ms,
            listen.is_some(),
        )?;
        let join = l.join.unwrap_or_default();
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
        let max_clock_offset_ms =
            positive("max_clock_offset_ms", l.max_clock_offset_ms.unwrap_or(500))?;
        let anti_entropy_interval_ms = positive(
            "anti_entropy_interval_ms",
            l.anti_entropy_interval_ms.unwrap_or(10_000),
        )?;
        let fanout = positive("fanout", l.fanout.unwrap_or(8) as u64)? as usize;
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
            listen,
            advertise,
            join,
            certs: match (l.certs, listen) {
                (Some(dir), _) => Some(dir),
                (None, Some(_)) => Some(PathBuf::from("certs")),
                (None, None) => None,
            },
            max_clock_offset_ms,
            anti_entropy_interval_ms,
            fanout,
            discovery,
            sensors,
        })
    }
}

fn parse_discovery(
    mode: Option<&str>,
    addr: Option<&str>,
    interval_ms: Option<u64>,
    clustered: bool,
) -> Result<Option<crate::discovery::DiscoveryConfig>, ConfigError> {
    let on = match mode.unwrap_or("off") {
        "off" => false,
        "lan" => true,
        other => {
            return Err(invalid(
                "discovery",
                format!("{other:?} is not one of \"off\", \"lan\""),
            ))
        }
    };
    if !on {
        return Ok(None);
    }
    if !clustered {
        return Err(invalid(
            "discovery",
            "LAN discovery needs `listen` (the QUIC address) too",
        ));
    }
    let mut d = crate::discovery::DiscoveryConfig::default();
    if let Some(addr) = addr {
        d.target = addr.parse().map_err(|_| {
            invalid(
                "discovery_addr",
                format!("{addr:?} is not an IPv4 address like 239.255.73.73:7373"),
            )
        })?;
    }
    if let Some(ms) = interval_ms {
        d.interval = std::time::Duration::from_millis(ms);
    }
    d.validate().map_err(|e| invalid("discovery", e))?;
    Ok(Some(d))
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
}
