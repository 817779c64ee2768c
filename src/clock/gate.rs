//! The shared clock gate: what the write path and the sensors read.
//!
//! The cluster driver publishes each [`Verdict`] of the fence here; the
//! committer asks [`ClockGate::check`] before a local write, the sensor
//! runner before each reading. Between two verdicts (the driver judges
//! every ~20 ms) the gate itself notices a step of the wall clock, by the
//! same test as the fence (wall minus monotonic time moved by more than
//! half the bound), so no write slips through between a step and the
//! next verdict. The gate is also the driver's time source, so both read
//! the same monotonic origin.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::fence::{Refusal, Verdict};
use super::Now;

/// Cheap to clone; every clone shares one state.
#[derive(Clone)]
pub struct ClockGate(Arc<Inner>);

struct Inner {
    base: Instant,
    verdict: watch::Sender<Option<Verdict>>,
    /// A cluster driver will publish verdicts: until its first, local
    /// writes wait (see [`ClockGate::expect_verdict`]).
    expected: std::sync::atomic::AtomicBool,
}

impl Default for ClockGate {
    fn default() -> Self {
        ClockGate::new()
    }
}

impl ClockGate {
    /// A gate without a verdict: writes pass (a node without a cluster)
    /// unless [`ClockGate::expect_verdict`] is called.
    pub fn new() -> ClockGate {
        ClockGate(Arc::new(Inner {
            base: Instant::now(),
            verdict: watch::Sender::new(None),
            expected: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// Called by the cluster driver before the node serves: from now on a
    /// local write waits for the fence's first verdict instead of passing.
    /// Without this, a write arriving between the HTTP server's start and
    /// the driver's first step went through unjudged — after a restart with
    /// a high-water mark far ahead, one write slipped past the
    /// `ahead_at_start` refusal.
    pub fn expect_verdict(&self) {
        self.0
            .expected
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Both clocks, read now.
    pub fn now(&self) -> Now {
        let wall_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Now::from_micros(self.0.base.elapsed().as_micros() as u64, wall_us)
    }

    pub fn publish(&self, verdict: Verdict) {
        self.0.verdict.send_replace(Some(verdict));
    }

    /// The last verdict (`None` before the cluster's first).
    pub fn verdict(&self) -> Option<Verdict> {
        self.0.verdict.borrow().clone()
    }

    /// Why a local write must not be stamped now, if so.
    pub fn check(&self) -> Result<(), Refusal> {
        let guard = self.0.verdict.borrow();
        let Some(v) = guard.as_ref() else {
            if self.0.expected.load(std::sync::atomic::Ordering::Acquire) {
                return Err(Refusal {
                    code: "clock_unverified",
                    message: "the node is starting: its clock has not been judged yet".into(),
                });
            }
            return Ok(());
        };
        if let Some(r) = &v.refusal {
            return Err(r.clone());
        }
        let drift_us = self.now().wall_minus_mono_us() - v.wall_minus_mono_us;
        if drift_us.unsigned_abs() as f64 > v.max_clock_offset_ms * 1e3 / 2.0 {
            return Err(Refusal {
                code: "clock_unverified",
                message: format!(
                    "the wall clock stepped by {} ms since it was last compared with peers; local writes wait for a new measurement",
                    drift_us / 1_000
                ),
            });
        }
        Ok(())
    }

    /// Like [`ClockGate::check`], but an `unverified` refusal (start, a
    /// step) is waited out for up to `wait`: it usually clears within a
    /// heartbeat. `skewed` and `ahead_at_start` are answered at once.
    pub async fn check_waiting(&self, wait: Duration) -> Result<(), Refusal> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut rx = self.0.verdict.subscribe();
        loop {
            match self.check() {
                Err(r) if r.code == "clock_unverified" => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if left.is_zero() {
                        return Err(r);
                    }
                    // A step is noticed by `check` itself: re-check at least
                    // every 50 ms even when no verdict comes.
                    let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), rx.changed())
                        .await;
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FenceState;

    #[test]
    fn a_gate_that_expects_a_verdict_refuses_writes_until_the_first_one() {
        let gate = ClockGate::new();
        assert!(gate.check().is_ok(), "no cluster: nothing to wait for");
        gate.expect_verdict();
        assert_eq!(gate.check().unwrap_err().code, "clock_unverified");
        gate.publish(Verdict {
            state: FenceState::Ok,
            refusal: None,
            cluster_offset_ms: Some(0.0),
            max_clock_offset_ms: 500.0,
            peers: Vec::new(),
            wall_minus_mono_us: gate.now().wall_minus_mono_us(),
            accept_clock_ahead: false,
        });
        assert!(gate.check().is_ok());
    }
}
