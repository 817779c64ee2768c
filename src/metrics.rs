//! Per-node Prometheus metrics.
//!
//! Each node owns its own `Registry` (no global recorder), so several nodes
//! can run in one process (tests, the demo) without mixing their numbers.
//! Counters are bumped where things happen; gauges that mirror store state
//! are refreshed when `/metrics` is scraped.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::store::commit::CommitStats;
use crate::store::Summary;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub class: &'static str,
}

pub struct Metrics {
    registry: Registry,
    /// Keys written through the HTTP API (PUT, POST, DELETE, readings).
    pub writes: Counter,
    /// Requests refused as bad input (4xx).
    pub rejected: Counter,
    pub readings_ingested: Counter,
    pub sensor_readings: Counter,
    pub responses: Family<StatusLabel, Counter>,
    entries: Gauge,
    tombstones: Gauge,
    log_len: Gauge,
    disk_bytes: Gauge,
    commit_groups: Gauge,
    commit_flushes: Gauge,
    commit_ops: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("hub");
        let m = Metrics {
            writes: Counter::default(),
            rejected: Counter::default(),
            readings_ingested: Counter::default(),
            sensor_readings: Counter::default(),
            responses: Family::default(),
            entries: Gauge::default(),
            tombstones: Gauge::default(),
            log_len: Gauge::default(),
            disk_bytes: Gauge::default(),
            commit_groups: Gauge::default(),
            commit_flushes: Gauge::default(),
            commit_ops: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "http_writes",
            "Keys written through the HTTP API",
            m.writes.clone(),
        );
        registry.register(
            "http_rejected",
            "Requests refused as bad input",
            m.rejected.clone(),
        );
        registry.register(
            "readings_ingested",
            "Readings accepted by POST /api/readings",
            m.readings_ingested.clone(),
        );
        registry.register(
            "sensor_readings",
            "Readings of simulated sensors stored",
            m.sensor_readings.clone(),
        );
        registry.register(
            "http_responses",
            "HTTP responses by status class",
            m.responses.clone(),
        );
        registry.register("entries", "Live keys", m.entries.clone());
        registry.register(
            "tombstones",
            "Deleted keys kept as tombstones",
            m.tombstones.clone(),
        );
        registry.register("log_len", "Retained deltas, all origins", m.log_len.clone());
        registry.register(
            "disk_bytes",
            "Size of the data directory",
            m.disk_bytes.clone(),
        );
        registry.register(
            "commit_groups",
            "Group commits performed",
            m.commit_groups.clone(),
        );
        registry.register(
            "commit_flushes",
            "Successful flushes to disk",
            m.commit_flushes.clone(),
        );
        registry.register("commit_ops", "Operations committed", m.commit_ops.clone());
        Metrics { registry, ..m }
    }

    pub fn count_status(&self, status: u16) {
        let class = match status {
            200..=299 => "2xx",
            400..=499 => "4xx",
            500..=599 => "5xx",
            _ => "other",
        };
        self.responses.get_or_create(&StatusLabel { class }).inc();
        if (400..500).contains(&status) {
            self.rejected.inc();
        }
    }

    /// Prometheus text exposition, with store gauges refreshed first.
    pub fn render(&self, summary: Option<&Summary>, commit: &CommitStats) -> String {
        if let Some(s) = summary {
            self.entries.set(s.entries as i64);
            self.tombstones.set(s.tombstones as i64);
            self.log_len.set(s.log_len as i64);
            self.disk_bytes.set(s.disk_bytes as i64);
        }
        let get = |a: &AtomicU64| a.load(Relaxed) as i64;
        self.commit_groups.set(get(&commit.groups));
        self.commit_flushes.set(get(&commit.flushes));
        self.commit_ops.set(get(&commit.ops));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
