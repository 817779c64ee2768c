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

use crate::cluster::ClusterView;
use crate::membership::Status;
use crate::store::commit::CommitStats;
use crate::store::Summary;
use crate::workers::{WorkerState, WorkerStatus};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabel {
    pub worker: String,
}

/// Per-worker figures (`hub_worker_*{worker=…}`), from [`WorkerStatus`].
const WORKER_STATS: [(&str, &str); 6] = [
    ("worker_queue", "Items waiting for the worker"),
    ("worker_runs", "Runs of the worker"),
    ("worker_errors", "Runs that failed"),
    (
        "worker_consecutive_errors",
        "Failed runs since the last one that succeeded",
    ),
    (
        "worker_failing",
        "1 when the worker's last run failed, else 0",
    ),
    (
        "worker_last_run_timestamp_ms",
        "Wall-clock time of the last run, in ms since the epoch",
    ),
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// Per-peer replication figures exported from the cluster snapshot.
const PEER_STATS: [(&str, &str); 10] = [
    (
        "replication_deltas_sent",
        "Deltas sent to the peer (push and pull answers)",
    ),
    (
        "replication_deltas_received",
        "Deltas received from the peer",
    ),
    ("replication_deltas_applied", "Received deltas logged here"),
    ("replication_deltas_stale", "Received deltas already held"),
    (
        "replication_pulls_unavailable",
        "Our pulls the peer answered unavailable",
    ),
    (
        "replication_anti_entropy_runs",
        "Anti-entropy sessions run against the peer",
    ),
    (
        "replication_anti_entropy_failures",
        "Anti-entropy sessions that failed",
    ),
    (
        "replication_queue_len",
        "Messages waiting in the send queue to the peer",
    ),
    (
        "replication_clock_stamps_not_adopted",
        "Message stamps from the peer too far ahead of this node's clock to be adopted (data still applied)",
    ),
    (
        "replication_bad_messages",
        "Messages from the peer that failed validation",
    ),
];

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
    peer_stats: Vec<Family<PeerLabel, Gauge>>,
    /// 1 alive, 2 suspect, 3 dead, 4 left.
    member_status: Family<PeerLabel, Gauge>,
    handshake_rejections: Family<ReasonLabel, Gauge>,
    bad_frames: Gauge,
    worker_stats: Vec<Family<WorkerLabel, Gauge>>,
    /// Open HTTP connections.
    pub http_connections: Gauge,
    http_auth_failures: Family<ReasonLabel, Counter>,
    http_refused: Family<ReasonLabel, Counter>,
    /// The clock block (`hub_clock_*`), see `crate::clock::metrics`.
    clock: crate::clock::metrics::ClockMetrics,
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
            clock: Default::default(),
            peer_stats: PEER_STATS.iter().map(|_| Family::default()).collect(),
            member_status: Family::default(),
            handshake_rejections: Family::default(),
            bad_frames: Gauge::default(),
            worker_stats: WORKER_STATS.iter().map(|_| Family::default()).collect(),
            http_connections: Gauge::default(),
            http_auth_failures: Family::default(),
            http_refused: Family::default(),
            registry: Registry::default(),
        };
        for ((name, help), fam) in WORKER_STATS.iter().zip(&m.worker_stats) {
            registry.register(*name, *help, fam.clone());
        }
        for ((name, help), fam) in PEER_STATS.iter().zip(&m.peer_stats) {
            registry.register(*name, *help, fam.clone());
        }
        registry.register(
            "member_status",
            "Membership status per peer: 1 alive, 2 suspect, 3 dead, 4 left",
            m.member_status.clone(),
        );
        registry.register(
            "transport_handshake_rejections",
            "QUIC handshakes refused, by reason",
            m.handshake_rejections.clone(),
        );
        registry.register(
            "transport_bad_frames",
            "Connections closed for a malformed or oversized frame",
            m.bad_frames.clone(),
        );
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
        registry.register(
            "http_connections",
            "Open HTTP connections",
            m.http_connections.clone(),
        );
        registry.register(
            "http_auth_failures",
            "Requests refused by authentication (401) or authorisation (403), by reason",
            m.http_auth_failures.clone(),
        );
        registry.register(
            "http_refused",
            "Connections and requests refused by the HTTP abuse limits, by reason",
            m.http_refused.clone(),
        );
        m.clock.register(&mut registry);
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

    /// Counts a request refused by authentication or authorisation.
    pub fn http_auth_failure(&self, reason: &str) {
        self.http_auth_failures
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts a connection or request refused by an HTTP limit.
    pub fn http_refused(&self, reason: &str) {
        self.http_refused
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Prometheus text exposition, with store and cluster gauges refreshed first.
    pub fn render(
        &self,
        summary: Option<&Summary>,
        commit: &CommitStats,
        cluster: Option<&ClusterView>,
        workers: &[WorkerStatus],
    ) -> String {
        if let Some(view) = cluster {
            self.refresh_cluster(view);
        }
        for w in workers {
            let values = [
                w.queue as i64,
                w.runs as i64,
                w.errors as i64,
                w.consecutive_errors as i64,
                i64::from(w.state == WorkerState::Failing),
                w.last_run_ms.unwrap_or(0) as i64,
            ];
            let label = WorkerLabel {
                worker: w.name.clone(),
            };
            for (fam, v) in self.worker_stats.iter().zip(values) {
                fam.get_or_create(&label).set(v);
            }
        }
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

    fn refresh_cluster(&self, view: &ClusterView) {
        if let Some(v) = &view.clock {
            self.clock.refresh(v);
        }
        // Forgotten peers leave the exposition (bounded label sets).
        for fam in self.peer_stats.iter().chain([&self.member_status]) {
            fam.clear();
        }
        for (peer, st) in &view.replication.peers {
            let values = [
                st.deltas_sent,
                st.deltas_received,
                st.deltas_applied,
                st.deltas_stale,
                st.pulls_answered_unavailable,
                st.anti_entropy_runs,
                st.anti_entropy_failures,
                st.queue_len,
                st.clock_stamps_not_adopted,
                st.bad_messages,
            ];
            let label = PeerLabel { peer: peer.clone() };
            for (fam, v) in self.peer_stats.iter().zip(values) {
                fam.get_or_create(&label).set(v as i64);
            }
        }
        for m in &view.members {
            let code = match m.status {
                Status::Alive => 1,
                Status::Suspect => 2,
                Status::Dead => 3,
                Status::Left => 4,
            };
            self.member_status
                .get_or_create(&PeerLabel {
                    peer: m.node_id.to_string(),
                })
                .set(code);
        }
        for (reason, n) in &view.transport.handshake_rejections {
            self.handshake_rejections
                .get_or_create(&ReasonLabel {
                    reason: reason.clone(),
                })
                .set(*n as i64);
        }
        self.bad_frames.set(view.transport.bad_frames as i64);
    }
}
