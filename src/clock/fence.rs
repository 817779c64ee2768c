//! The clock fence: may this node stamp local writes with its clock?
//!
//! Sans-IO: samples and the two clocks come in ([`super::Now`]), a verdict
//! comes out. The decision is by the cluster, not by this node alone: the
//! median of `{0} ∪ {each measured peer's offset}` is how far the cluster's
//! time is from ours (even count: the mean of the two middle values). If it
//! is beyond `max_clock_offset`, *this* node is the outlier and refuses
//! local writes; a healthy node in a cluster with one bad clock sees a
//! median of about 0 and is not disturbed. Replicated data is never refused
//! here: a fenced node keeps receiving and serving, so it converges.
//!
//! States, most severe first:
//! - `ahead_at_start`: the persisted HLC high-water mark is further ahead of
//!   the wall clock than the bound (the clock ran ahead before, or runs
//!   behind now). Every new write would be stamped after that mark and win
//!   over writes made elsewhere meanwhile, so writes wait until an operator
//!   confirms (`accept_clock_ahead`) or the wall clock passes the mark.
//! - `skewed`: the cluster median is off by more than the bound.
//! - `unverified`: no verdict yet (no peer measured, or not every live peer
//!   measured while the partial verdict says skewed, or our wall clock just
//!   stepped — detected locally as a jump of wall minus monotonic time). A
//!   node that expects peers refuses writes for `grace_ms` from start or
//!   from the step; after that it writes (an AP node must) and says so. A
//!   node with no peer at all (first node, standalone) is unverified and
//!   writes: there is nothing to compare with.
//! - `ok`.
//!
//! Cost: one estimator per peer; a verdict is a sort of the peers' offsets,
//! made when a peer goes, the wall clock steps, or a peer's estimate or the
//! number of alive peers changes — while the verdict is `ok`, a new estimate
//! at most every [`REJUDGE_MS`] (one sample moves the median little) and
//! the alive count not at all (it cannot change an `ok` verdict), so that
//! an ack or a join costs O(1), not a pass over a thousand peers.

use std::collections::BTreeMap;

use serde::Serialize;

use super::offset::{OffsetEstimator, Sample};
use super::Now;
use crate::model::{Hlc, NodeId};

/// While the verdict is `ok`, new samples of already measured peers are
/// judged at most this often.
pub const REJUDGE_MS: u64 = 1_000;

#[derive(Clone, Debug)]
pub struct FenceConfig {
    /// Largest tolerated distance from the cluster median, microseconds.
    pub max_offset_us: u64,
    /// How long an unverified node that expects peers refuses writes.
    pub grace_ms: u64,
    /// The operator accepts a persisted HLC ahead of the wall clock.
    pub accept_clock_ahead: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FenceState {
    Ok,
    Unverified,
    Skewed,
    AheadAtStart,
}

impl FenceState {
    pub fn as_str(self) -> &'static str {
        match self {
            FenceState::Ok => "ok",
            FenceState::Unverified => "unverified",
            FenceState::Skewed => "skewed",
            FenceState::AheadAtStart => "ahead_at_start",
        }
    }
}

/// Why local writes are refused: an API error code and an operator message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

/// One peer's current estimate.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PeerOffset {
    pub peer: String,
    /// The peer's clock minus ours, milliseconds.
    pub offset_ms: f64,
    pub rtt_ms: f64,
}

/// The fence's decision and what it was made from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    pub state: FenceState,
    /// `Some` while local writes are refused.
    pub refusal: Option<Refusal>,
    /// Cluster median minus our clock, milliseconds (`None`: no peer measured).
    pub cluster_offset_ms: Option<f64>,
    pub max_clock_offset_ms: f64,
    pub peers: Vec<PeerOffset>,
    /// Our wall minus monotonic clock (µs) when judged: a later reading that
    /// differs by more than half the bound means the wall clock stepped.
    pub wall_minus_mono_us: i64,
    pub accept_clock_ahead: bool,
}

pub struct Fence {
    config: FenceConfig,
    peers: BTreeMap<NodeId, OffsetEstimator>,
    /// Samples whose ping left before this monotonic ms predate a step.
    valid_after_mono_ms: u64,
    /// Unverified refuses writes until this monotonic ms.
    unverified_until_ms: u64,
    /// The persisted high-water mark when it was too far ahead at start.
    ahead_mark: Option<Hlc>,
    wall_minus_mono_us: i64,
    verdict: Verdict,
    /// A peer is gone or the wall clock stepped since the last judgement:
    /// judged at the next evaluation.
    dirty: bool,
    /// A peer's estimate changed (or its first came) since the last
    /// judgement: judged at once unless the verdict is `ok`, then at most every
    /// [`REJUDGE_MS`] (the median moves slowly; every ack would otherwise
    /// cost a pass over all peers, which a fleet of 1,000 cannot afford).
    resampled: bool,
    /// Monotonic ms of the last judgement.
    judged_ms: u64,
    /// `alive_peers` of the last judgement.
    last_alive: usize,
}

impl Fence {
    /// `high_water` is the node's persisted HLC mark; `expects_peers` is true
    /// when the node joins or remembers peers.
    pub fn new(config: FenceConfig, now: Now, high_water: Hlc, expects_peers: bool) -> Fence {
        let ahead_us = (high_water.physical_ms() * 1_000).saturating_sub(now.wall_us);
        let ahead_mark = (ahead_us > config.max_offset_us).then_some(high_water);
        match ahead_mark {
            Some(mark) if config.accept_clock_ahead => tracing::warn!(
                hlc = %mark, ahead_ms = ahead_us / 1_000,
                "persisted clock high-water mark is ahead of the wall clock; writing anyway because accept_clock_ahead is set: new writes win over writes made elsewhere until real time passes the mark"),
            Some(mark) => tracing::error!(
                hlc = %mark, ahead_ms = ahead_us / 1_000, max_offset_ms = config.max_offset_us / 1_000,
                "persisted clock high-water mark is ahead of the wall clock: local writes refused until an operator sets accept_clock_ahead or real time passes the mark"),
            None => {}
        }
        let wall_minus_mono_us = now.wall_minus_mono_us();
        let verdict = Verdict {
            state: FenceState::Unverified,
            refusal: None,
            cluster_offset_ms: None,
            max_clock_offset_ms: config.max_offset_us as f64 / 1e3,
            peers: Vec::new(),
            wall_minus_mono_us,
            accept_clock_ahead: config.accept_clock_ahead,
        };
        let mut fence = Fence {
            unverified_until_ms: if expects_peers {
                now.mono_ms() + config.grace_ms
            } else {
                0
            },
            ahead_mark: ahead_mark.filter(|_| !config.accept_clock_ahead),
            config,
            peers: BTreeMap::new(),
            valid_after_mono_ms: 0,
            wall_minus_mono_us,
            verdict,
            dirty: false,
            resampled: false,
            judged_ms: now.mono_ms(),
            last_alive: 0,
        };
        fence.verdict = fence.judge(now, 0);
        fence
    }

    pub fn verdict(&self) -> &Verdict {
        &self.verdict
    }

    pub fn max_offset_ms(&self) -> u64 {
        self.config.max_offset_us / 1_000
    }

    /// A round trip to `peer` (see [`Sample::from_round_trip`]); ignored if
    /// its ping left before our wall clock last stepped.
    pub fn on_sample(&mut self, peer: &NodeId, sent_mono_ms: u64, sample: Sample) {
        if sent_mono_ms < self.valid_after_mono_ms {
            return;
        }
        match self.peers.get_mut(peer) {
            Some(e) => {
                let before = e.estimate();
                e.add(sample);
                self.resampled |= e.estimate() != before;
            }
            None => {
                let mut e = OffsetEstimator::default();
                e.add(sample);
                self.peers.insert(peer.clone(), e);
                self.resampled = true;
            }
        }
    }

    /// `peer` is no longer alive: its offset no longer counts.
    pub fn peer_gone(&mut self, peer: &NodeId) {
        self.dirty |= self.peers.remove(peer).is_some();
    }

    /// Judges anew; `Some(verdict)` when the state or the refusal changed.
    /// `alive_peers` is how many peers membership holds alive.
    pub fn evaluate(&mut self, now: Now, alive_peers: usize) -> Option<&Verdict> {
        let drift = now.wall_minus_mono_us() - self.wall_minus_mono_us;
        if drift.unsigned_abs() > self.config.max_offset_us / 2 {
            tracing::error!(step_ms = drift / 1_000,
                "the wall clock stepped; clock offsets are measured anew and local writes wait for them");
            for e in self.peers.values_mut() {
                e.clear();
            }
            self.valid_after_mono_ms = now.mono_ms();
            self.unverified_until_ms = now.mono_ms() + self.config.grace_ms;
            self.dirty = true;
        }
        self.wall_minus_mono_us = now.wall_minus_mono_us();
        // Judging is O(peers); skip it when nothing it depends on changed
        // (it runs on every input of the node machine, and fleets are big).
        // Time matters only while a mark is ahead or the grace runs.
        let timeless = self.ahead_mark.is_none()
            && !(self.verdict.state == FenceState::Unverified && self.verdict.refusal.is_some());
        let settled = self.verdict.state == FenceState::Ok && self.verdict.refusal.is_none();
        let resampled = self.resampled && !(settled && now.mono_ms() < self.judged_ms + REJUDGE_MS);
        // While `ok`, how many peers are alive cannot change the verdict
        // (it only gates `skewed`, which needs the median out of bounds).
        let alive_same = alive_peers == self.last_alive || settled;
        if !self.dirty && !resampled && alive_same && timeless {
            return None;
        }
        self.dirty = false;
        self.resampled = false;
        self.judged_ms = now.mono_ms();
        self.last_alive = alive_peers;
        let next = self.judge(now, alive_peers);
        let changed = next.state != self.verdict.state
            || next.refusal.as_ref().map(|r| r.code)
                != self.verdict.refusal.as_ref().map(|r| r.code);
        self.verdict = next;
        changed.then_some(&self.verdict)
    }

    fn judge(&mut self, now: Now, alive_peers: usize) -> Verdict {
        let bound_ms = self.config.max_offset_us as f64 / 1e3;
        let peers: Vec<PeerOffset> = self
            .peers
            .iter()
            .filter_map(|(id, e)| {
                e.estimate().map(|s| PeerOffset {
                    peer: id.to_string(),
                    offset_ms: s.offset_us as f64 / 1e3,
                    rtt_ms: s.rtt_us as f64 / 1e3,
                })
            })
            .collect();
        let mut offsets: Vec<i64> = self
            .peers
            .values()
            .filter_map(|e| e.estimate().map(|s| s.offset_us))
            .collect();
        let measured = offsets.len();
        offsets.push(0);
        let median_us = median(&mut offsets);
        let cluster_offset_ms = (measured > 0).then(|| median_us as f64 / 1e3);
        if let Some(mark) = self.ahead_mark {
            if now.wall_us + self.config.max_offset_us >= mark.physical_ms() * 1_000 {
                tracing::info!(hlc = %mark, "the wall clock has passed the persisted high-water mark; local writes accepted");
                self.ahead_mark = None;
            }
        }
        let skewed = median_us.unsigned_abs() > self.config.max_offset_us;
        let (state, refusal) = if let Some(mark) = self.ahead_mark {
            let ahead_s = (mark.physical_ms() * 1_000).saturating_sub(now.wall_us) as f64 / 1e6;
            (FenceState::AheadAtStart, Some(Refusal {
                code: "clock_ahead_at_start",
                message: format!(
                    "this node's newest timestamp (persisted HLC high-water mark {mark}) is {ahead_s:.1} s ahead of its wall clock, more than max_clock_offset ({bound_ms} ms): its clock ran ahead earlier or runs behind now. New writes would be stamped after that mark and win over every write made elsewhere until real time passes it. Check this node's time source; to accept that risk, restart with accept_clock_ahead = true (--accept-clock-ahead, HUB_ACCEPT_CLOCK_AHEAD=true), or wait {ahead_s:.0} s"
                ),
            }))
        } else if measured > 0 && skewed && measured >= alive_peers {
            let off_s = -(median_us as f64) / 1e6;
            let dir = if off_s > 0.0 { "ahead of" } else { "behind" };
            (FenceState::Skewed, Some(Refusal {
                code: "clock_skew",
                message: format!(
                    "this node's clock is {:.3} s {dir} the cluster median ({measured} peers measured), more than max_clock_offset ({bound_ms} ms): local writes are refused so that a wrong clock cannot stamp them. Fix this node's time source (NTP/chrony); replicated data still flows, and writes resume once the offset is within the bound",
                    off_s.abs()
                ),
            }))
        } else if measured == 0 || skewed {
            let refusal = (now.mono_ms() < self.unverified_until_ms).then(|| Refusal {
                code: "clock_unverified",
                message: format!(
                    "this node's clock has not been compared with its peers yet (start, or the wall clock stepped); local writes wait up to {} ms for the first measurement",
                    self.config.grace_ms
                ),
            });
            (FenceState::Unverified, refusal)
        } else {
            (FenceState::Ok, None)
        };
        Verdict {
            state,
            refusal,
            cluster_offset_ms,
            max_clock_offset_ms: bound_ms,
            peers,
            wall_minus_mono_us: self.wall_minus_mono_us,
            accept_clock_ahead: self.config.accept_clock_ahead,
        }
    }
}

/// The median (even count: mean of the two middle values).
pub fn median(values: &mut [i64]) -> i64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        ((i128::from(values[n / 2 - 1]) + i128::from(values[n / 2])) / 2) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;
    const T0: u64 = 1_700_000_000 * S;

    fn cfg() -> FenceConfig {
        FenceConfig {
            max_offset_us: 500_000,
            grace_ms: 3_000,
            accept_clock_ahead: false,
        }
    }

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn sample(offset_s: f64) -> Sample {
        Sample {
            offset_us: (offset_s * 1e6) as i64,
            rtt_us: 200,
        }
    }

    fn at(mono_s: u64, wall_shift_s: i64) -> Now {
        Now::from_micros(
            mono_s * S,
            (T0 as i64 + (mono_s * S) as i64 + wall_shift_s * S as i64) as u64,
        )
    }

    #[test]
    fn median_of_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&mut [0, 20]), 10);
        assert_eq!(median(&mut [0, -20, -20]), -20);
        assert_eq!(median(&mut [0, 0, 20]), 0);
    }

    #[test]
    fn the_outlier_is_fenced_and_the_healthy_nodes_are_not() {
        // n3 runs 20 s ahead: it sees both peers 20 s behind it.
        let mut n3 = Fence::new(cfg(), at(0, 20), Hlc::ZERO, true);
        n3.on_sample(&id("n1"), 0, sample(-20.0));
        n3.on_sample(&id("n2"), 0, sample(-20.0));
        n3.evaluate(at(1, 20), 2);
        assert_eq!(n3.verdict().state, FenceState::Skewed);
        let r = n3.verdict().refusal.clone().unwrap();
        assert_eq!(r.code, "clock_skew");
        assert!(r.message.contains("20.000 s ahead of"), "{}", r.message);
        // n1 sees one peer 20 s ahead, one at 0: median 0.
        let mut n1 = Fence::new(cfg(), at(0, 0), Hlc::ZERO, true);
        n1.on_sample(&id("n2"), 0, sample(0.001));
        n1.on_sample(&id("n3"), 0, sample(20.0));
        n1.evaluate(at(1, 0), 2);
        assert_eq!(n1.verdict().state, FenceState::Ok);
        assert_eq!(n1.verdict().refusal, None);
    }

    #[test]
    fn a_node_behind_is_fenced_too() {
        let mut n3 = Fence::new(cfg(), at(0, -60), Hlc::ZERO, true);
        n3.on_sample(&id("n1"), 0, sample(60.0));
        n3.on_sample(&id("n2"), 0, sample(60.0));
        n3.evaluate(at(1, -60), 2);
        assert_eq!(n3.verdict().state, FenceState::Skewed);
        assert!(n3
            .verdict()
            .refusal
            .as_ref()
            .unwrap()
            .message
            .contains("behind"));
    }

    #[test]
    fn a_partial_skewed_verdict_waits_for_every_live_peer() {
        let mut n1 = Fence::new(cfg(), at(0, 0), Hlc::ZERO, true);
        n1.on_sample(&id("n3"), 0, sample(20.0));
        n1.evaluate(at(1, 0), 2);
        assert_eq!(n1.verdict().state, FenceState::Unverified);
        n1.on_sample(&id("n2"), 0, sample(0.0));
        n1.evaluate(at(1, 0), 2);
        assert_eq!(n1.verdict().state, FenceState::Ok);
    }

    #[test]
    fn unverified_refuses_writes_only_for_the_grace_period() {
        let mut f = Fence::new(cfg(), at(0, 0), Hlc::ZERO, true);
        assert_eq!(
            f.verdict().refusal.as_ref().map(|r| r.code),
            Some("clock_unverified")
        );
        f.evaluate(at(4, 0), 0);
        assert_eq!(f.verdict().state, FenceState::Unverified);
        assert_eq!(f.verdict().refusal, None);
        let standalone = Fence::new(cfg(), at(0, 0), Hlc::ZERO, false);
        assert_eq!(standalone.verdict().refusal, None);
    }

    #[test]
    fn a_wall_clock_step_clears_the_offsets_and_ignores_pings_sent_before_it() {
        let mut f = Fence::new(cfg(), at(0, 0), Hlc::ZERO, true);
        f.on_sample(&id("n1"), 0, sample(0.0));
        f.on_sample(&id("n2"), 0, sample(0.0));
        f.evaluate(at(1, 0), 2);
        assert_eq!(f.verdict().state, FenceState::Ok);
        // Stepped back 60 s at mono 10 s.
        f.evaluate(at(10, -60), 2);
        assert_eq!(f.verdict().state, FenceState::Unverified);
        assert_eq!(
            f.verdict().refusal.as_ref().map(|r| r.code),
            Some("clock_unverified")
        );
        // An ack of a ping sent before the step still says 0: ignored.
        f.on_sample(&id("n1"), 9_900, sample(0.0));
        f.evaluate(at(10, -60), 2);
        assert_eq!(f.verdict().state, FenceState::Unverified);
        f.on_sample(&id("n1"), 10_001, sample(60.0));
        f.on_sample(&id("n2"), 10_001, sample(60.0));
        f.evaluate(at(11, -60), 2);
        assert_eq!(f.verdict().state, FenceState::Skewed);
        // Fixed: steps forward again, measured anew, ok.
        f.evaluate(at(20, 0), 2);
        f.on_sample(&id("n1"), 20_001, sample(0.0));
        f.on_sample(&id("n2"), 20_001, sample(0.0));
        f.evaluate(at(21, 0), 2);
        assert_eq!(f.verdict().state, FenceState::Ok);
    }

    #[test]
    fn a_high_water_mark_ahead_at_start_needs_the_operator_or_time() {
        let mark = Hlc::new((T0 + 3_600 * S) / 1_000, 0);
        let mut f = Fence::new(cfg(), at(0, 0), mark, true);
        f.on_sample(&id("n1"), 0, sample(0.0));
        f.evaluate(at(1, 0), 1);
        assert_eq!(f.verdict().state, FenceState::AheadAtStart);
        let r = f.verdict().refusal.clone().unwrap();
        assert_eq!(r.code, "clock_ahead_at_start");
        assert!(r.message.contains("accept_clock_ahead"));
        // Real time passes the mark (mono and wall advance together).
        f.evaluate(at(3_600, 0), 1);
        assert_eq!(f.verdict().state, FenceState::Ok);
        let accepted = Fence::new(
            FenceConfig {
                accept_clock_ahead: true,
                ..cfg()
            },
            at(0, 0),
            mark,
            false,
        );
        assert_eq!(accepted.verdict().refusal, None);
    }
}
