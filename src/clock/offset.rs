//! Clock offset of one peer, NTP-style, from membership ping/ack round trips.
//!
//! A ping carries our wall clock `t1`; the peer's ack carries its wall clock
//! `t2` at the moment it answered (receive and send are one step, so NTP's
//! `t3 = t2`). Our round trip `rtt` is measured on the *monotonic* clock, so
//! a step of our wall clock during the round trip cannot make it negative;
//! `t4 = t1 + rtt` on our wall scale. Then, as in NTP,
//! `offset = ((t2 - t1) + (t3 - t4)) / 2 = t2 - t1 - rtt / 2`: the peer's
//! clock minus ours, wrong by at most `rtt / 2` whatever the asymmetry.
//!
//! Guarantee: the estimate is the sample with the lowest RTT (the tightest
//! error bound) among the last [`WINDOW`] samples. A sample that cannot be
//! true together with the current estimate (their error intervals do not
//! overlap: one of the two clocks stepped) replaces the whole window, so a
//! step is followed within one round trip. Cost: [`WINDOW`] samples per peer
//! (a few hundred bytes), O(WINDOW) per sample.

use std::collections::VecDeque;

use serde::Serialize;

/// Samples kept per peer (about 4 s of heartbeats at the default 500 ms).
pub const WINDOW: usize = 8;

/// One measurement: the peer's clock minus ours, and its error bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// Peer's wall clock minus ours, microseconds.
    pub offset_us: i64,
    /// Round trip, microseconds; the offset is exact to within half of it.
    pub rtt_us: u64,
}

impl Sample {
    /// From our send time `t1_wall_us`, the monotonic round trip `rtt_us`
    /// and the peer's wall clock `t2_wall_us` when it answered.
    pub fn from_round_trip(t1_wall_us: u64, rtt_us: u64, t2_wall_us: u64) -> Sample {
        let offset = i128::from(t2_wall_us) - i128::from(t1_wall_us) - i128::from(rtt_us / 2);
        Sample {
            offset_us: offset.clamp(i64::MIN.into(), i64::MAX.into()) as i64,
            rtt_us,
        }
    }

    /// Whether both samples can be true of one pair of clocks.
    fn agrees_with(&self, other: &Sample) -> bool {
        let gap = self.offset_us.abs_diff(other.offset_us);
        gap <= self.rtt_us / 2 + other.rtt_us / 2 + 1_000
    }
}

/// The running estimate for one peer.
#[derive(Clone, Debug, Default)]
pub struct OffsetEstimator {
    window: VecDeque<Sample>,
}

impl OffsetEstimator {
    pub fn add(&mut self, sample: Sample) {
        if let Some(best) = self.estimate() {
            if !sample.agrees_with(&best) {
                self.window.clear();
            }
        }
        if self.window.len() == WINDOW {
            self.window.pop_front();
        }
        self.window.push_back(sample);
    }

    /// The lowest-RTT sample of the window; `None` before the first.
    pub fn estimate(&self) -> Option<Sample> {
        self.window.iter().min_by_key(|s| s.rtt_us).copied()
    }

    pub fn clear(&mut self) {
        self.window.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_is_corrected_by_half_the_round_trip() {
        // Peer 5 ms ahead, 2 ms each way: sent at 1000, peer reads 1000+2+5.
        let s = Sample::from_round_trip(1_000_000, 4_000, 1_007_000);
        assert_eq!(s.offset_us, 5_000);
        assert_eq!(s.rtt_us, 4_000);
        let behind = Sample::from_round_trip(100_000_000, 0, 40_000_000);
        assert_eq!(behind.offset_us, -60_000_000);
    }

    #[test]
    fn estimate_is_the_lowest_rtt_sample_of_the_window() {
        let mut e = OffsetEstimator::default();
        for (off, rtt) in [(900, 3_000), (100, 200), (-700, 2_000)] {
            e.add(Sample {
                offset_us: off,
                rtt_us: rtt,
            });
        }
        assert_eq!(e.estimate().map(|s| s.offset_us), Some(100));
        for _ in 0..WINDOW {
            e.add(Sample {
                offset_us: 300,
                rtt_us: 500,
            });
        }
        assert_eq!(
            e.estimate().map(|s| s.offset_us),
            Some(300),
            "old samples age out"
        );
    }

    #[test]
    fn a_step_replaces_the_window_at_once() {
        let mut e = OffsetEstimator::default();
        e.add(Sample {
            offset_us: 0,
            rtt_us: 100,
        });
        e.add(Sample {
            offset_us: -60_000_000,
            rtt_us: 5_000,
        });
        assert_eq!(e.estimate().map(|s| s.offset_us), Some(-60_000_000));
    }
}
