//! Clock offsets and the clock fence: a wrong clock may not stamp writes.
//!
//! Last-write-wins orders writes by hybrid logical clock stamps, whose
//! physical part is the writing node's wall clock. A node whose clock runs
//! ahead would win with every write until real time catches up; one that
//! runs behind would lose writes made after others. This module bounds that:
//! - [`offset`]: each peer's clock offset from membership ping/ack round
//!   trips (NTP-style, corrected by half the round trip, lowest-RTT sample);
//! - [`fence`]: the sans-IO decision whether *this* node is the outlier,
//!   judged against the median of the cluster, not by one receiver's clock;
//! - [`gate`]: the shared handle that the write path and the sensors read,
//!   which also notices a step of the wall clock between two verdicts;
//! - [`metrics`]: the Prometheus block for all of it.
//!
//! Timers never use the wall clock ([`Now::mono_ms`] drives them); wall time
//! only stamps HLCs and measures offsets.

pub mod fence;
pub mod gate;
pub mod metrics;
pub mod offset;

pub use fence::{Fence, FenceConfig, FenceState, Refusal, Verdict};
pub use gate::ClockGate;
pub use offset::{OffsetEstimator, Sample};

/// The two clocks of one step, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Monotonic microseconds (any origin): timers and deadlines.
    pub mono_us: u64,
    /// Wall-clock microseconds since the Unix epoch: HLC stamps, offsets.
    pub wall_us: u64,
}

impl Now {
    pub fn from_micros(mono_us: u64, wall_us: u64) -> Now {
        Now { mono_us, wall_us }
    }

    pub fn from_millis(mono_ms: u64, wall_ms: u64) -> Now {
        Now {
            mono_us: mono_ms * 1_000,
            wall_us: wall_ms * 1_000,
        }
    }

    pub fn mono_ms(self) -> u64 {
        self.mono_us / 1_000
    }

    pub fn wall_ms(self) -> u64 {
        self.wall_us / 1_000
    }

    /// Constant while neither clock is stepped (up to slow drift).
    pub fn wall_minus_mono_us(self) -> i64 {
        self.wall_us as i64 - self.mono_us as i64
    }
}
