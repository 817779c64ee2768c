//! Per-node Prometheus metrics.
//!
//! Each node owns its own `Registry` (no global recorder), so several nodes
//! can run in one process (tests, the demo) without mixing their numbers.
//! Live counters and histograms are bumped where things happen; figures that
//! mirror store, cluster and worker state are read from snapshots when
//! `/metrics` is scraped ([`scrape`]).
//!
//! Conventions (checked by `promtool check metrics` in `tests/ops.rs`):
//! counters end in `_total`, units are in names (`_seconds`, `_bytes`),
//! every family has help text, per-peer figures carry a `peer` label and
//! member status is a label (`status`), one series per possible status
//! with value 1 for the current one.

pub mod scrape;

use crate::store::commit::wall_ms;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::cluster::ClusterView;
use crate::membership::Status;
use crate::store::commit::CommitStats;
use crate::store::Summary;
use crate::workers::{WorkerState, WorkerStatus};
use scrape::Family as Fam;

/// Content type of the Prometheus text format 0.0.4.
pub const TEXT_004: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of OpenMetrics 1.0 text.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// The matched route template (`/kv/{*key}`), never the raw path.
    pub route: String,
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// A quorum request's level (`quorum`, `all`) and how it ended
/// (`reached`, `unavailable`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuorumLabel {
    pub level: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LevelLabel {
    pub level: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabel {
    version: &'static str,
    node: String,
}

/// Latency buckets: 0.25 ms to ~8 s, doubling.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// The status class of an HTTP status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

/// Seconds from a delta's stamp (`origin_ms`, on the origin's clock) to its
/// being durable here (`now_ms`, on ours). `offset_ms` is the origin's clock
/// minus ours as measured ([`crate::clock::offset`]): the stamp is moved
/// onto our clock by it, so an origin whose clock runs ahead does not look
/// faster than it is, nor one behind slower. Unknown: taken as 0. Never
/// negative (the estimate's error is up to half a round trip).
pub fn replication_delay_s(origin_ms: u64, now_ms: u64, offset_ms: Option<f64>) -> f64 {
    let ms = now_ms as f64 - origin_ms as f64 + offset_ms.unwrap_or(0.0);
    ms.max(0.0) / 1000.0
}

/// The last replicated delta applied here from one origin.
#[derive(Clone, Copy, Debug, Default)]
pub struct Applied {
    /// Origin HLC (physical part) to applied here, in seconds.
    pub delay_s: f64,
    /// Wall-clock ms when it was applied.
    pub at_ms: u64,
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
    http_duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    /// Origin HLC to applied here, for deltas of other origins.
    replication_delay: Histogram,
    applied: Mutex<BTreeMap<String, Applied>>,
    /// Open HTTP connections.
    pub http_connections: Gauge,
    http_auth_failures: Family<ReasonLabel, Counter>,
    http_refused: Family<ReasonLabel, Counter>,
    /// Open `/api/watch` streams.
    pub watch_streams: Gauge,
    /// Events sent to watchers.
    pub watch_events: Counter,
    /// Watchers cut off for falling behind.
    pub watch_cutoffs: Counter,
    /// `/kv` requests forwarded to an owner of the key (`crate::placement`).
    pub forwarded: Counter,
    /// Writes with `w` above 1, and reads with `r` above 1, by outcome.
    pub quorum_writes: Family<QuorumLabel, Counter>,
    pub quorum_reads: Family<QuorumLabel, Counter>,
    /// Commit start to quorum verdict of `w` above 1 writes.
    pub quorum_write_duration: Family<LevelLabel, Histogram, fn() -> Histogram>,
    node: String,
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
        Metrics::for_node("")
    }

    pub fn for_node(node: &str) -> Metrics {
        let mut registry = Registry::with_prefix("hub");
        let m = Metrics {
            writes: Counter::default(),
            rejected: Counter::default(),
            readings_ingested: Counter::default(),
            sensor_readings: Counter::default(),
            responses: Family::default(),
            http_duration: Family::new_with_constructor(latency_histogram),
            replication_delay: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            applied: Mutex::new(BTreeMap::new()),
            http_connections: Gauge::default(),
            http_auth_failures: Family::default(),
            http_refused: Family::default(),
            watch_streams: Gauge::default(),
            watch_events: Counter::default(),
            watch_cutoffs: Counter::default(),
            forwarded: Counter::default(),
            quorum_writes: Family::default(),
            quorum_reads: Family::default(),
            quorum_write_duration: Family::new_with_constructor(latency_histogram),
            node: node.to_string(),
            registry: Registry::default(),
            clock: Default::default(),
        };
        m.clock.register(&mut registry);
        let build: Family<BuildLabel, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabel {
                version: env!("CARGO_PKG_VERSION"),
                node: node.to_string(),
            })
            .set(1);
        registry.register(
            "build_info",
            "Always 1; labels name the hub version and node",
            build,
        );
        registry.register(
            "http_writes",
            "Keys written through the HTTP API",
            m.writes.clone(),
        );
        registry.register(
            "http_forwarded",
            "Requests for keys this node does not store, forwarded to an owner",
            m.forwarded.clone(),
        );
        registry.register(
            "http_rejected",
            "Requests refused as bad input (4xx)",
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
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request (to the response head), by route template and status class",
            m.http_duration.clone(),
        );
        registry.register(
            "replication_delay_seconds",
            "Delay from a delta's origin HLC to its being applied and durable here (other origins only), corrected by the origin's measured clock offset (hub_clock_peer_offset_seconds) where known",
            m.replication_delay.clone(),
        );
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
        registry.register(
            "watch_streams",
            "Open /api/watch change streams",
            m.watch_streams.clone(),
        );
        registry.register(
            "watch_events",
            "Change events sent to /api/watch streams",
            m.watch_events.clone(),
        );
        registry.register(
            "watch_cutoffs",
            "Watchers cut off for falling behind the change feed",
            m.watch_cutoffs.clone(),
        );
        registry.register(
            "quorum_writes",
            "Writes with w=quorum or w=all, by level and outcome (reached, unavailable)",
            m.quorum_writes.clone(),
        );
        registry.register(
            "quorum_reads",
            "Reads with r=quorum or r=all, by level and outcome (reached, unavailable)",
            m.quorum_reads.clone(),
        );
        registry.register(
            "quorum_write_duration_seconds",
            "Time from a w=quorum or w=all write's commit to its quorum verdict (reached or not), by level",
            m.quorum_write_duration.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn count_status(&self, status: u16) {
        let class = status_class(status);
        self.responses.get_or_create(&StatusLabel { class }).inc();
        if (400..500).contains(&status) {
            self.rejected.inc();
        }
    }

    /// Records one answered request under its route template.
    pub fn observe_request(&self, route: &str, status: u16, seconds: f64) {
        self.http_duration
            .get_or_create(&RouteLabel {
                route: route.to_string(),
                class: status_class(status),
            })
            .observe(seconds);
    }

    /// Records a replicated delta of `origin` made durable here at `now_ms`
    /// (see [`replication_delay_s`] for `offset_ms`).
    pub fn observe_applied(
        &self,
        origin: &str,
        origin_ms: u64,
        now_ms: u64,
        offset_ms: Option<f64>,
    ) {
        let delay_s = replication_delay_s(origin_ms, now_ms, offset_ms);
        self.replication_delay.observe(delay_s);
        let mut a = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        let e = a.entry(origin.to_string()).or_default();
        e.delay_s = delay_s;
        e.at_ms = now_ms;
    }

    /// The last replicated delta applied from each origin.
    pub fn applied(&self) -> BTreeMap<String, Applied> {
        self.applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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

    /// The exposition: OpenMetrics 1.0 text when `openmetrics`, else the
    /// Prometheus text format 0.0.4 (see [`scrape`]).
    pub fn render(
        &self,
        summary: Option<&Summary>,
        commit: &CommitStats,
        cluster: Option<&ClusterView>,
        workers: &[WorkerStatus],
        openmetrics: bool,
    ) -> String {
        let now_ms = wall_ms();
        let mut families = store_families(summary, commit);
        families.extend(worker_families(workers));
        if let Some(view) = cluster {
            families.extend(cluster_families(view, summary, &self.applied(), now_ms));
            if let Some(v) = &view.clock {
                self.clock.refresh(v);
            }
        }
        let mut snapshot = Registry::with_prefix("hub");
        snapshot.register_collector(Box::new(scrape::Snapshot(families)));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &snapshot);
        let _ = prometheus_client::encoding::text::encode_eof(&mut out);
        if openmetrics {
            out
        } else {
            scrape::to_text_004(&out)
        }
    }

    /// The node this registry belongs to (the `build_info` label).
    pub fn node(&self) -> &str {
        &self.node
    }
}

fn store_families(summary: Option<&Summary>, commit: &CommitStats) -> Vec<Fam> {
    let mut f = Vec::new();
    if let Some(s) = summary {
        f.push(Fam::gauge("entries", "Live keys").with(&[], s.entries as f64));
        f.push(
            Fam::gauge("tombstones", "Deleted keys kept as tombstones")
                .with(&[], s.tombstones as f64),
        );
        f.push(Fam::gauge("log_len", "Retained deltas, all origins").with(&[], s.log_len as f64));
        f.push(
            Fam::gauge("disk_bytes", "Size of the data directory").with(&[], s.disk_bytes as f64),
        );
    }
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed) as f64;
    f.push(Fam::counter("commit_groups", "Group commits performed").with(&[], get(&commit.groups)));
    f.push(
        Fam::counter("commit_flushes", "Successful flushes to disk")
            .with(&[], get(&commit.flushes)),
    );
    f.push(Fam::counter("commit_ops", "Operations committed").with(&[], get(&commit.ops)));
    f.push(
        Fam::counter(
            "commit_failures",
            "Commit groups that failed (apply or flush)",
        )
        .with(&[], get(&commit.failures)),
    );
    f.push(Fam::histogram(
        "commit_duration_seconds",
        "Time from a write's submission to the committer until it is durable and answered",
        commit.commit_latency.clone(),
    ));
    f.push(Fam::histogram(
        "flush_duration_seconds",
        "Time of one flush of a commit group to disk",
        commit.flush_latency.clone(),
    ));
    f
}

fn worker_families(workers: &[WorkerStatus]) -> Vec<Fam> {
    let mut queue = Fam::gauge("worker_queue", "Items waiting for the worker");
    let mut runs = Fam::counter("worker_runs", "Runs of the worker");
    let mut errors = Fam::counter("worker_errors", "Runs that failed");
    let mut consecutive = Fam::gauge(
        "worker_consecutive_errors",
        "Failed runs since the last one that succeeded",
    );
    let mut failing = Fam::gauge(
        "worker_failing",
        "1 when the worker's last run failed, else 0",
    );
    let mut last = Fam::gauge(
        "worker_last_run_timestamp_seconds",
        "Wall-clock time of the worker's last run, in seconds since the epoch (0: never ran)",
    );
    for w in workers {
        let l = [("worker", w.name.as_str())];
        queue.push(&l, w.queue as f64);
        runs.push(&l, w.runs as f64);
        errors.push(&l, w.errors as f64);
        consecutive.push(&l, w.consecutive_errors as f64);
        failing.push(&l, f64::from(u8::from(w.state == WorkerState::Failing)));
        last.push(&l, w.last_run_ms.unwrap_or(0) as f64 / 1000.0);
    }
    vec![queue, runs, errors, consecutive, failing, last]
}

/// A per-peer replication counter: name, help, and where to read it.
type PeerCounter = (
    &'static str,
    &'static str,
    fn(&crate::replication::stats::PeerStats) -> u64,
);

/// Owned partitions and rebalancing progress (`crate::placement`).
fn placement_families(p: &crate::placement::Progress) -> Vec<Fam> {
    let gauges: [(&str, &str, f64); 3] = [
        (
            "placement_owned_partitions",
            "Partitions (of 256) this node owns",
            p.owned as f64,
        ),
        (
            "placement_held_not_owned_partitions",
            "Partitions this node holds data of without owning them (handed off to their owners)",
            p.held_not_owned as f64,
        ),
        (
            "placement_eligible_members",
            "Members partitions are placed on",
            p.eligible_members as f64,
        ),
    ];
    let counters: [(&str, &str, f64); 4] = [
        (
            "placement_layout_changes",
            "Times this node's partition layout changed",
            p.layout_changes as f64,
        ),
        (
            "placement_handoff_sessions",
            "Anti-entropy sessions run to hand partitions to new owners",
            p.handoff_sessions as f64,
        ),
        (
            "placement_handoff_entries_sent",
            "Entries sent to new owners by handoff sessions",
            p.handoff_entries_sent as f64,
        ),
        (
            "placement_stubs_for_owned",
            "Stubs received for owned partitions (values then fetched by anti-entropy)",
            p.stubs_for_owned as f64,
        ),
    ];
    let mut out = Vec::new();
    for (name, help, v) in gauges {
        let mut f = Fam::gauge(name, help);
        f.push(&[], v);
        out.push(f);
    }
    for (name, help, v) in counters {
        let mut f = Fam::counter(name, help);
        f.push(&[], v);
        out.push(f);
    }
    out
}

const STATUSES: [Status; 4] = [Status::Alive, Status::Suspect, Status::Dead, Status::Left];

fn cluster_families(
    view: &ClusterView,
    summary: Option<&Summary>,
    applied: &BTreeMap<String, Applied>,
    now_ms: u64,
) -> Vec<Fam> {
    // Per-peer replication counters.
    let counters: [PeerCounter; 12] = [
        (
            "replication_deltas_sent",
            "Deltas sent to the peer (push and pull answers)",
            |s| s.deltas_sent,
        ),
        (
            "replication_deltas_received",
            "Deltas received from the peer",
            |s| s.deltas_received,
        ),
        (
            "replication_deltas_applied",
            "Received deltas logged here",
            |s| s.deltas_applied,
        ),
        (
            "replication_deltas_stale",
            "Received deltas already held",
            |s| s.deltas_stale,
        ),
        (
            "replication_pulls_unavailable",
            "Our pulls the peer answered unavailable",
            |s| s.pulls_answered_unavailable,
        ),
        (
            "replication_anti_entropy_runs",
            "Anti-entropy sessions run against the peer",
            |s| s.anti_entropy_runs,
        ),
        (
            "replication_anti_entropy_failures",
            "Anti-entropy sessions that failed",
            |s| s.anti_entropy_failures,
        ),
        (
            "replication_clock_stamps_not_adopted",
            "Message stamps from the peer too far ahead of this node's clock to be adopted (its data is still applied)",
            |s| s.clock_stamps_not_adopted,
        ),
        (
            "replication_acks_sent",
            "Durable acks sent to the peer for its quorum writes",
            |s| s.acks_sent,
        ),
        (
            "read_repairs_sent",
            "Read repairs sent to the peer (it answered a quorum read with an older entry)",
            |s| s.read_repairs_sent,
        ),
        (
            "read_repairs_received",
            "Read repairs the peer sent this node",
            |s| s.read_repairs_received,
        ),
        (
            "replication_bad_messages",
            "Messages from the peer that failed validation",
            |s| s.bad_messages,
        ),
    ];
    let mut out: Vec<Fam> = counters
        .iter()
        .map(|(name, help, get)| {
            let mut f = Fam::counter(name, help);
            for (peer, st) in &view.replication.peers {
                f.push(&[("peer", peer)], get(st) as f64);
            }
            f
        })
        .collect();
    let mut queue = Fam::gauge(
        "replication_queue_messages",
        "Messages waiting in the send queue to the peer",
    );
    let mut ae_age = Fam::gauge(
        "peer_anti_entropy_age_seconds",
        "Time since the last anti-entropy session with the peer finished",
    );
    let mut ae_moved = Fam::gauge(
        "peer_anti_entropy_last_entries",
        "Entries exchanged (both ways) in the last anti-entropy session with the peer",
    );
    for (peer, st) in &view.replication.peers {
        queue.push(&[("peer", peer)], st.queue_len as f64);
        if let Some(run) = &st.last_anti_entropy {
            ae_age.push(
                &[("peer", peer)],
                now_ms.saturating_sub(run.finished_ms) as f64 / 1000.0,
            );
            ae_moved.push(
                &[("peer", peer)],
                (run.entries_received + run.entries_sent) as f64,
            );
        }
    }
    out.extend([queue, ae_age, ae_moved]);
    out.extend(placement_families(&view.placement));

    let mut status = Fam::gauge(
        "member_status",
        "1 for the member's current status as this node sees it, 0 for the others",
    );
    let mut rtt = Fam::gauge(
        "peer_rtt_seconds",
        "Smoothed membership ping round trip to the peer",
    );
    let mut phi = Fam::gauge(
        "peer_phi",
        "Failure-detector suspicion of the peer (suspect at the threshold)",
    );
    let mut seen = Fam::gauge(
        "peer_last_seen_seconds",
        "Time since the peer was last heard from directly",
    );
    let mut lag_d = Fam::gauge(
        "peer_replication_lag_deltas",
        "Deltas the peer has written (as it last told us) that are not yet applied here",
    );
    let mut lag_s = Fam::gauge(
        "peer_replication_lag_seconds",
        "Delay from origin HLC to applied here of the peer's last delta applied, corrected by the peer's measured clock offset where known",
    );
    let mut applied_age = Fam::gauge(
        "peer_last_applied_age_seconds",
        "Time since a delta of the peer's origin was last applied here",
    );
    for m in &view.members {
        let peer = m.node_id.as_str();
        for s in STATUSES {
            status.push(
                &[("peer", peer), ("status", &s.to_string())],
                f64::from(u8::from(s == m.status)),
            );
        }
        if let Some(r) = m.rtt_ms {
            rtt.push(&[("peer", peer)], r / 1000.0);
        }
        phi.push(
            &[("peer", peer)],
            if m.phi.is_finite() { m.phi } else { f64::MAX },
        );
        if let Some(s) = m.last_seen_ms_ago {
            seen.push(&[("peer", peer)], s as f64 / 1000.0);
        }
        if let (Some(head), Some(s)) = (m.head, summary) {
            let have = s.version_vector.get(peer).copied().unwrap_or(0);
            lag_d.push(&[("peer", peer)], head.saturating_sub(have) as f64);
        }
        if let Some(a) = applied.get(peer) {
            lag_s.push(&[("peer", peer)], a.delay_s);
            applied_age.push(
                &[("peer", peer)],
                now_ms.saturating_sub(a.at_ms) as f64 / 1000.0,
            );
        }
    }
    out.extend([status, rtt, phi, seen, lag_d, lag_s, applied_age]);

    let mut sent = Fam::counter(
        "peer_sent_bytes",
        "Bytes of frames sent to the peer over QUIC",
    );
    let mut received = Fam::counter(
        "peer_received_bytes",
        "Bytes of frames received from the peer over QUIC",
    );
    let mut by_peer: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for p in &view.transport.peers {
        if let Some(id) = &p.node_id {
            let e = by_peer.entry(id.as_str()).or_default();
            e.0 += p.bytes_sent;
            e.1 += p.bytes_received;
        }
    }
    for (peer, (s, r)) in by_peer {
        sent.push(&[("peer", peer)], s as f64);
        received.push(&[("peer", peer)], r as f64);
    }
    let mut rejections = Fam::counter(
        "transport_handshake_rejections",
        "QUIC handshakes refused, by reason",
    );
    for (reason, n) in &view.transport.handshake_rejections {
        rejections.push(&[("reason", reason)], *n as f64);
    }
    out.extend([
        sent,
        received,
        rejections,
        Fam::counter(
            "transport_bad_frames",
            "Connections closed for a malformed or oversized frame",
        )
        .with(&[], view.transport.bad_frames as f64),
    ]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn replication_delay_is_corrected_by_the_origins_measured_clock_offset() {
        // Stamped at 10.000 s on the origin's clock, durable 50 ms later on
        // ours, clocks agreeing (or the offset unknown).
        assert!(close(replication_delay_s(10_000, 10_050, None), 0.05));
        assert!(close(replication_delay_s(10_000, 10_050, Some(0.0)), 0.05));
        // The origin runs 2 s ahead (its clock minus ours = +2000 ms): its
        // 10.000 s is our 8.000 s, so the delta took 2.05 s, not 50 ms.
        assert!(close(
            replication_delay_s(10_000, 10_050, Some(2_000.0)),
            2.05
        ));
        // 2 s behind: its 10.000 s is our 12.000 s; durable at our 12.050 s
        // took 50 ms, not 2.05 s.
        assert!(close(
            replication_delay_s(10_000, 12_050, Some(-2_000.0)),
            0.05
        ));
        // The estimate's error cannot make a delay negative.
        assert_eq!(replication_delay_s(10_000, 10_010, Some(-100.0)), 0.0);
    }

    #[test]
    fn the_per_peer_lag_in_seconds_is_the_corrected_delay() {
        let m = Metrics::new();
        m.observe_applied("n2", 10_000, 12_050, Some(-2_000.0));
        let a = m.applied()["n2"];
        assert!(close(a.delay_s, 0.05), "{}", a.delay_s);
        assert_eq!(a.at_ms, 12_050);
    }
}
