//! The simulated network of the seeded simulations (TigerBeetle's packet
//! simulator in miniature): each message is dropped, duplicated and delayed
//! by seeded chance, so delivery order is scrambled, and a partition
//! (`side`) drops everything between nodes on different sides, both when
//! sent and when due. Included with `#[path = "support/sim_net.rs"] mod sim_net;`.

#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use rand::Rng;

/// What every link does to a message.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    pub drop: f64,
    pub dup: f64,
    /// Delay is uniform in 1..=max_delay_ms.
    pub max_delay_ms: u64,
}

pub struct Net<M> {
    pub link: Link,
    /// Side of the partition each node is on (all equal: no partition).
    pub side: Vec<u8>,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    in_flight: HashMap<u64, (usize, usize, M)>,
    next: u64,
    pub sent: u64,
}

impl<M: Clone> Net<M> {
    pub fn new(nodes: usize, link: Link) -> Net<M> {
        Net {
            link,
            side: vec![0; nodes],
            queue: BinaryHeap::new(),
            in_flight: HashMap::new(),
            next: 0,
            sent: 0,
        }
    }

    pub fn connected(&self, a: usize, b: usize) -> bool {
        self.side[a] == self.side[b]
    }

    /// Puts `msg` on the wire at `now` (or drops it).
    pub fn send(&mut self, rng: &mut impl Rng, now: u64, from: usize, to: usize, msg: M) {
        self.sent += 1;
        if !self.connected(from, to) || rng.gen_bool(self.link.drop) {
            return;
        }
        let copies = if rng.gen_bool(self.link.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let at = now + rng.gen_range(1..=self.link.max_delay_ms);
            self.next += 1;
            self.queue.push(Reverse((at, self.next)));
            self.in_flight.insert(self.next, (from, to, msg.clone()));
        }
    }

    /// When the next message is due, if any is in flight.
    pub fn next_due(&self) -> Option<u64> {
        self.queue.peek().map(|Reverse((at, _))| *at)
    }

    /// The next message due by `now` between connected nodes: (from, to, msg).
    pub fn pop_due(&mut self, now: u64) -> Option<(usize, usize, M)> {
        while let Some(Reverse((at, id))) = self.queue.peek().copied() {
            if at > now {
                return None;
            }
            self.queue.pop();
            if let Some((from, to, msg)) = self.in_flight.remove(&id) {
                if self.connected(from, to) {
                    return Some((from, to, msg));
                }
            }
        }
        None
    }
}

/// Runs `run` for each seed: `SIM_SEED=n` replays one, `SIM_SEEDS=n` runs
/// 1..=n, else 1..=`default`. A failing seed is named before the panic goes on.
pub fn for_each_seed<T>(what: &str, default: u64, run: impl Fn(u64) -> T) -> Vec<T> {
    let seeds: Vec<u64> = match std::env::var("SIM_SEED") {
        Ok(s) => vec![s.parse().expect("SIM_SEED must be a number")],
        Err(_) => {
            let n = std::env::var("SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(default);
            (1..=n).collect()
        }
    };
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    for &seed in &seeds {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(seed))) {
            Ok(r) => out.push(r),
            Err(e) => {
                eprintln!("{what} failed; reproduce with SIM_SEED={seed}");
                std::panic::resume_unwind(e);
            }
        }
    }
    eprintln!("{what}: {} seeds in {:?}", seeds.len(), started.elapsed());
    out
}
