//! Hybrid logical clock (Kulkarni et al. 2014).
//!
//! A timestamp is a `u64`: the high 48 bits are physical milliseconds since the
//! Unix epoch, the low 16 bits a logical counter that breaks ties within one
//! millisecond and carries causality across clocks that disagree. The clock
//! never goes backwards, also across restarts (the store persists the
//! high-water mark and seeds the clock with it).

use serde::{Deserialize, Serialize};

const LOGICAL_BITS: u32 = 16;
const LOGICAL_MASK: u64 = (1 << LOGICAL_BITS) - 1;

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Hlc(pub u64);

impl Hlc {
    pub const ZERO: Hlc = Hlc(0);

    pub fn new(physical_ms: u64, logical: u16) -> Hlc {
        Hlc((physical_ms << LOGICAL_BITS) | u64::from(logical))
    }

    pub fn physical_ms(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    pub fn logical(self) -> u16 {
        (self.0 & LOGICAL_MASK) as u16
    }
}

impl std::fmt::Display for Hlc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.physical_ms(), self.logical())
    }
}

/// The clock of one node. Wall time is passed in, so the clock is testable and
/// simulation-friendly.
#[derive(Clone, Debug)]
pub struct Clock {
    last: Hlc,
    max_offset_ms: u64,
}

impl Clock {
    pub fn new(high_water: Hlc, max_offset_ms: u64) -> Clock {
        Clock {
            last: high_water,
            max_offset_ms,
        }
    }

    pub fn last(&self) -> Hlc {
        self.last
    }

    /// A fresh timestamp for a local event, strictly greater than every
    /// timestamp this clock has issued or observed.
    pub fn now(&mut self, wall_ms: u64) -> Hlc {
        let next = if wall_ms > self.last.physical_ms() {
            Hlc::new(wall_ms, 0)
        } else {
            Hlc(self.last.0 + 1)
        };
        self.last = next;
        next
    }

    /// Adopts a peer's stamp (see [`Clock::observe`]) unless it is further
    /// ahead of our wall clock than the max offset: a clock that ran ahead
    /// must not drag ours (and, through our persisted high-water mark, our
    /// next start) into the future. The data it stamped is still applied;
    /// only our clock does not follow it. False when not adopted.
    pub fn observe_remote(&mut self, remote: Hlc, wall_ms: u64) -> bool {
        if remote.physical_ms() > wall_ms.saturating_add(self.max_offset_ms) {
            return false;
        }
        self.observe(remote);
        true
    }

    /// Merges a timestamp, so later local events order after it (also used
    /// to carry the clock between the store's own copies of it).
    pub fn observe(&mut self, remote: Hlc) {
        if remote > self.last {
            self.last = remote;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hlc_packs_physical_and_logical() {
        let h = Hlc::new(1_700_000_000_000, 7);
        assert_eq!(h.physical_ms(), 1_700_000_000_000);
        assert_eq!(h.logical(), 7);
    }

    #[test]
    fn clock_does_not_adopt_a_stamp_far_ahead_of_its_wall_clock() {
        let mut c = Clock::new(Hlc::ZERO, 500);
        assert!(c.observe_remote(Hlc::new(10_400, 0), 10_000));
        assert_eq!(c.last(), Hlc::new(10_400, 0));
        assert!(!c.observe_remote(Hlc::new(10_000 + 3_600_000, 0), 10_000));
        assert_eq!(
            c.last(),
            Hlc::new(10_400, 0),
            "an hour ahead is not adopted"
        );
        assert_eq!(c.now(10_001), Hlc::new(10_400, 1));
    }

    #[test]
    fn clock_does_not_run_backwards_after_restart_with_older_wall_time() {
        let mut c = Clock::new(Hlc::new(5_000, 3), 500);
        let t = c.now(1_000);
        assert!(t > Hlc::new(5_000, 3));
    }

    proptest! {
        #[test]
        fn clock_is_strictly_monotonic(walls in proptest::collection::vec(0u64..10_000, 1..200),
                                       remotes in proptest::collection::vec(0u64..20_000, 0..50)) {
            let mut c = Clock::new(Hlc::ZERO, u64::MAX);
            let mut prev = Hlc::ZERO;
            for (i, w) in walls.iter().enumerate() {
                if let Some(r) = remotes.get(i) {
                    c.observe(Hlc::new(*r, 0));
                    prev = prev.max(Hlc::new(*r, 0));
                }
                let t = c.now(*w);
                prop_assert!(t > prev);
                prev = t;
            }
        }
    }
}
