//! Phi-accrual failure detector (Hayashibara et al. 2004, as in Cassandra and
//! Akka): instead of a yes/no timeout it outputs a suspicion level
//! `phi = -log10(P(a heartbeat arrives later than now))`, estimated from a
//! sliding window of inter-arrival times assumed normally distributed.
//! phi = 1 means ~10 % chance the peer is still fine, phi = 8 means ~1e-8.
//!
//! Pure: arrival times in (`heartbeat(now_ms)`), `phi(now_ms)` out. Costs
//! O(1) per heartbeat and per query (running sums), O(window) memory.

use std::collections::VecDeque;

/// Settings of one detector (copied out of the membership config).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DetectorConfig {
    /// Inter-arrival samples kept.
    pub window: usize,
    /// Floor of the standard deviation, so a perfectly regular stream does not
    /// make phi jump on a few milliseconds of jitter.
    pub min_std_dev_ms: f64,
    /// Extra time added to the mean: pauses this long (GC, a busy core, one
    /// lost heartbeat) are not suspicious.
    pub acceptable_pause_ms: f64,
    /// Interval assumed before any has been measured (usually the heartbeat
    /// interval); the first estimate's std-dev is a quarter of it.
    pub first_interval_estimate_ms: f64,
}

#[derive(Clone, Debug)]
pub struct PhiAccrual {
    cfg: DetectorConfig,
    intervals: VecDeque<u64>,
    sum: f64,
    sum_sq: f64,
    last: Option<u64>,
}

impl PhiAccrual {
    pub fn new(cfg: DetectorConfig) -> Self {
        PhiAccrual {
            cfg,
            intervals: VecDeque::with_capacity(cfg.window.min(1024)),
            sum: 0.0,
            sum_sq: 0.0,
            last: None,
        }
    }

    /// Records a heartbeat arriving at `now_ms`. Arrivals that go back in
    /// time (reordered input) only count as "seen now", never as a negative
    /// interval.
    pub fn heartbeat(&mut self, now_ms: u64) {
        if let Some(last) = self.last {
            if now_ms <= last {
                return;
            }
            let interval = now_ms - last;
            if self.cfg.window > 0 {
                if self.intervals.len() >= self.cfg.window {
                    if let Some(old) = self.intervals.pop_front() {
                        self.sum -= old as f64;
                        self.sum_sq -= (old as f64) * (old as f64);
                    }
                }
                self.intervals.push_back(interval);
                self.sum += interval as f64;
                self.sum_sq += (interval as f64) * (interval as f64);
            }
        }
        self.last = Some(now_ms);
    }

    /// Forgets the history (used when a peer comes back after a long gap, so
    /// that gap does not distort the estimate of its normal rhythm).
    pub fn reset(&mut self) {
        self.intervals.clear();
        self.sum = 0.0;
        self.sum_sq = 0.0;
        self.last = None;
    }

    /// Time of the last recorded heartbeat.
    pub fn last_heartbeat(&self) -> Option<u64> {
        self.last
    }

    /// Mean and standard deviation of the inter-arrival time, before the
    /// acceptable pause is added and the std-dev floor applied.
    pub fn estimate(&self) -> (f64, f64) {
        let n = self.intervals.len();
        if n == 0 {
            let m = self.cfg.first_interval_estimate_ms;
            return (m, m / 4.0);
        }
        let mean = self.sum / n as f64;
        let var = (self.sum_sq / n as f64 - mean * mean).max(0.0);
        (mean, var.sqrt())
    }

    /// Suspicion level at `now_ms`; 0 before the first heartbeat. Monotone
    /// non-decreasing in the time since the last heartbeat, finite (no
    /// infinity for very long silences).
    pub fn phi(&self, now_ms: u64) -> f64 {
        let Some(last) = self.last else {
            return 0.0;
        };
        let elapsed = now_ms.saturating_sub(last) as f64;
        let (mean, std) = self.estimate();
        let mean = mean + self.cfg.acceptable_pause_ms;
        let std = std.max(self.cfg.min_std_dev_ms).max(1e-3);
        phi_of(elapsed, mean, std)
    }
}

/// `-log10(1 - F(elapsed))` with the logistic approximation of the normal
/// CDF used by Akka: `1 - F(y) ≈ 1 / (1 + e^z)`, `z = y (1.5976 + 0.070566 y²)`.
/// Computed as `log10(1 + e^z)` (a softplus), which stays finite and monotone
/// where the textbook form underflows to `log10(0)`.
fn phi_of(elapsed: f64, mean: f64, std: f64) -> f64 {
    let y = (elapsed - mean) / std;
    let z = y * (1.5976 + 0.070566 * y * y);
    let softplus = if z > 30.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    };
    softplus / std::f64::consts::LN_10
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg() -> DetectorConfig {
        DetectorConfig {
            window: 100,
            min_std_dev_ms: 50.0,
            acceptable_pause_ms: 0.0,
            first_interval_estimate_ms: 500.0,
        }
    }

    fn regular(n: u64, every: u64) -> PhiAccrual {
        let mut d = PhiAccrual::new(cfg());
        for i in 0..n {
            d.heartbeat(1_000 + i * every);
        }
        d
    }

    #[test]
    fn phi_is_zero_before_first_heartbeat() {
        assert_eq!(PhiAccrual::new(cfg()).phi(123_456), 0.0);
    }

    #[test]
    fn regular_heartbeats_keep_phi_low() {
        let d = regular(50, 500);
        let last = d.last_heartbeat().unwrap();
        assert!(d.phi(last) < 0.1, "{}", d.phi(last));
        assert!(d.phi(last + 500) < 1.0, "{}", d.phi(last + 500));
        // Jitter of ±20 % around the mean still looks healthy.
        assert!(d.phi(last + 600) < 3.0, "{}", d.phi(last + 600));
    }

    #[test]
    fn gap_several_times_the_mean_passes_threshold_8() {
        let d = regular(50, 500);
        let last = d.last_heartbeat().unwrap();
        assert!(d.phi(last + 4 * 500) > 8.0, "{}", d.phi(last + 2000));
        // and keeps growing, without becoming infinite
        let far = d.phi(last + 3_600_000);
        assert!(far.is_finite() && far > d.phi(last + 2000));
    }

    #[test]
    fn acceptable_pause_delays_suspicion() {
        let mut c = cfg();
        c.acceptable_pause_ms = 1_000.0;
        let mut d = PhiAccrual::new(c);
        for i in 0..50 {
            d.heartbeat(i * 500);
        }
        let last = d.last_heartbeat().unwrap();
        assert!(d.phi(last + 1_200) < 1.0);
        assert!(d.phi(last + 2_500) > 8.0);
    }

    #[test]
    fn window_forgets_old_rhythm() {
        let mut d = PhiAccrual::new(DetectorConfig {
            window: 10,
            ..cfg()
        });
        let mut t = 0;
        for _ in 0..10 {
            t += 100;
            d.heartbeat(t);
        }
        for _ in 0..10 {
            t += 1_000;
            d.heartbeat(t);
        }
        let (mean, _) = d.estimate();
        assert!((mean - 1_000.0).abs() < 1e-6, "{mean}");
    }

    #[test]
    fn reset_and_reordered_arrivals() {
        let mut d = regular(10, 500);
        let last = d.last_heartbeat().unwrap();
        d.heartbeat(last - 100); // reordered: ignored
        assert_eq!(d.last_heartbeat(), Some(last));
        d.reset();
        assert_eq!(d.phi(last + 10_000), 0.0);
    }

    proptest! {
        #[test]
        fn phi_monotone_in_time_since_last_heartbeat(
            intervals in proptest::collection::vec(1u64..5_000, 0..60),
            a in 0u64..100_000,
            b in 0u64..100_000,
            pause in 0.0f64..3_000.0,
            min_std in 1.0f64..500.0,
        ) {
            let mut d = PhiAccrual::new(DetectorConfig {
                window: 32,
                min_std_dev_ms: min_std,
                acceptable_pause_ms: pause,
                first_interval_estimate_ms: 500.0,
            });
            let mut t = 10;
            d.heartbeat(t);
            for i in intervals {
                t += i;
                d.heartbeat(t);
            }
            let (early, late) = (a.min(b), a.max(b));
            let (p1, p2) = (d.phi(t + early), d.phi(t + late));
            prop_assert!(p1.is_finite() && p2.is_finite());
            prop_assert!(p1 >= 0.0);
            prop_assert!(p2 >= p1, "phi({early})={p1} > phi({late})={p2}");
        }
    }
}
