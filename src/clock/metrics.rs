//! The clock block of `/metrics`, kept apart from the rest of the registry:
//! registered once, refreshed from the fence's [`Verdict`] on each scrape.
//!
//! - `hub_clock_peer_offset_seconds{peer}`: the peer's clock minus ours;
//! - `hub_clock_peer_rtt_seconds{peer}`: round trip of that estimate (its
//!   error is at most half of it);
//! - `hub_clock_cluster_offset_seconds`: the cluster median minus our clock;
//! - `hub_clock_max_offset_seconds`: the bound (`max_clock_offset`);
//! - `hub_clock_fence_state{state}`: 1 for the current state, else 0;
//! - `hub_clock_writes_refused`: 1 while local writes are refused;
//! - `hub_clock_fence_changes_total`: verdict state changes seen by scrapes.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::fence::{FenceState, Verdict};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

type Seconds = Gauge<f64, AtomicU64>;

pub struct ClockMetrics {
    peer_offset: Family<PeerLabel, Seconds>,
    peer_rtt: Family<PeerLabel, Seconds>,
    cluster_offset: Seconds,
    max_offset: Seconds,
    state: Family<StateLabel, Gauge>,
    refused: Gauge,
    changes: Counter,
    last_state: AtomicU64,
}

const STATES: [FenceState; 4] = [
    FenceState::Ok,
    FenceState::Unverified,
    FenceState::Skewed,
    FenceState::AheadAtStart,
];

impl Default for ClockMetrics {
    fn default() -> Self {
        ClockMetrics {
            peer_offset: Family::default(),
            peer_rtt: Family::default(),
            cluster_offset: Seconds::default(),
            max_offset: Seconds::default(),
            state: Family::default(),
            refused: Gauge::default(),
            changes: Counter::default(),
            last_state: AtomicU64::new(u64::MAX),
        }
    }
}

impl ClockMetrics {
    /// Registers the block under `clock_` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let m = self;
        let r = registry.sub_registry_with_prefix("clock");
        r.register(
            "peer_offset_seconds",
            "Peer's wall clock minus this node's, estimated from ping/ack round trips",
            m.peer_offset.clone(),
        );
        r.register(
            "peer_rtt_seconds",
            "Round trip of the offset estimate (its error is at most half of it)",
            m.peer_rtt.clone(),
        );
        r.register(
            "cluster_offset_seconds",
            "Median of the cluster's clocks (this node counted at 0) minus this node's clock",
            m.cluster_offset.clone(),
        );
        r.register(
            "max_offset_seconds",
            "The bound max_clock_offset beyond which this node refuses local writes",
            m.max_offset.clone(),
        );
        r.register(
            "fence_state",
            "Clock fence state: 1 for the current one (ok, unverified, skewed, ahead_at_start)",
            m.state.clone(),
        );
        r.register(
            "writes_refused",
            "1 while local writes are refused because of this node's clock",
            m.refused.clone(),
        );
        r.register(
            "fence_changes",
            "Changes of the clock fence state",
            m.changes.clone(),
        );
    }

    pub fn refresh(&self, v: &Verdict) {
        self.peer_offset.clear();
        self.peer_rtt.clear();
        for p in &v.peers {
            let label = PeerLabel {
                peer: p.peer.clone(),
            };
            self.peer_offset
                .get_or_create(&label)
                .set(p.offset_ms / 1e3);
            self.peer_rtt.get_or_create(&label).set(p.rtt_ms / 1e3);
        }
        self.cluster_offset
            .set(v.cluster_offset_ms.unwrap_or(0.0) / 1e3);
        self.max_offset.set(v.max_clock_offset_ms / 1e3);
        for s in STATES {
            self.state
                .get_or_create(&StateLabel { state: s.as_str() })
                .set(i64::from(s == v.state));
        }
        self.refused.set(i64::from(v.refusal.is_some()));
        let code = v.state as u64;
        let before = self.last_state.swap(code, Relaxed);
        if before != u64::MAX && before != code {
            self.changes.inc();
        }
    }
}
