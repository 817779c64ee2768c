//! Deterministic simulation of whole nodes: each node is a real sled `Store`
//! in a temp dir and the node's own protocol machine (`NodeMachine`:
//! membership, replication and the routing between them, as the tokio
//! driver runs it), on a simulated network (drops, duplicates, reordering,
//! partitions), a simulated clock (time jumps to the next deadline: a
//! message due or a tick) and a simulated disk: commits complete out of
//! order, some fail without applying (storage errors), and a kill drops the
//! store without its closing checkpoint (as `kill -9` would), losing the
//! commits still queued. Every seed ends with all nodes converged (equal
//! entries, Merkle roots and version vectors) and memory equal to disk (each
//! store reopened and compared), and no node ever issued one of its sequence
//! numbers twice. Replay one seed with `SIM_SEED=n`; `SIM_SEEDS=n` sets how
//! many run.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use hub::cluster::node_machine::{Input, NodeMachine, Now, Output};
use hub::cluster::quorum::Level;
use hub::cluster::Message;
use hub::membership;
use hub::model::{Delta, Entry, Hlc, NodeId, VersionVector};
use hub::replication::quorum::WriteResolved;
use hub::replication::read_quorum::ReadResolved;
use hub::store::{Condition, Op, Outcome, Store, StoreConfig};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

#[path = "support/sim_net.rs"]
mod sim_net;
use sim_net::{for_each_seed, Link, Net};
#[path = "support/sim_store.rs"]
mod sim_store;
use sim_store::{copy_dir, fresh_deltas, reopen, sim_config, temp_dir};

/// Wall clock at simulated time 0.
const T0: u64 = 1_700_000_000_000;
const TICK_MS: u64 = 25;
/// Start-up wait for a peer's vector before writing without it.
const GRACE_MS: u64 = 2_000;

fn membership_config() -> membership::Config {
    membership::Config {
        heartbeat_interval_ms: 100,
        dead_after_ms: 800,
        dead_probe_interval_ms: 200,
        join_retry_ms: 100,
        join_retry_max_ms: 800,
        ..membership::Config::default()
    }
}

const MAX_OFFSET_MS: u64 = 500;
const QUORUM_TIMEOUT_MS: u64 = 2_000;

fn clock_config() -> hub::clock::FenceConfig {
    hub::clock::FenceConfig {
        max_offset_us: MAX_OFFSET_MS * 1_000,
        grace_ms: GRACE_MS,
        accept_clock_ahead: false,
    }
}

#[derive(Clone, Copy)]
struct Faults {
    link: Link,
    /// Chance that a commit fails without applying anything.
    storage_error: f64,
}

const CALM: Faults = Faults {
    link: Link {
        drop: 0.0,
        dup: 0.0,
        max_delay_ms: 5,
    },
    storage_error: 0.0,
};

struct Live {
    store: Store,
    machine: NodeMachine,
    /// Commits handed to the disk and not completed yet.
    disk: Vec<(u64, Vec<Op>)>,
}

struct Node {
    id: NodeId,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    store_config: StoreConfig,
    /// `None` while killed.
    live: Option<Live>,
    /// Wall clock skew of this node in ms (chaos runs: well within the max
    /// offset; the clock tests set and step it).
    skew: i64,
}

/// What a node serves: entries, Merkle root, version vector.
type Served = (Vec<(String, Entry)>, [u8; 16], VersionVector);

#[derive(Debug, Default, PartialEq)]
struct Events {
    writes: u64,
    writes_fenced: u64,
    kills: u64,
    partitions: u64,
    storage_errors: u64,
    messages: u64,
    took_ms: u64,
}

struct Sim {
    seed: u64,
    rng: StdRng,
    /// Simulated monotonic milliseconds.
    now: u64,
    next_tick: u64,
    nodes: Vec<Node>,
    faults: Faults,
    net: Net<Message>,
    /// Every own write ever acknowledged: (origin, seq) → (key, HLC).
    issued: HashMap<(NodeId, u64), (String, Hlc)>,
    events: Events,
    /// Quorum verdicts the machines gave: (node, write) and (node, read).
    writes_done: Vec<(usize, WriteResolved)>,
    reads_done: Vec<(usize, ReadResolved)>,
}

impl Sim {
    fn new(seed: u64, n: usize, faults: Faults, log_retention: u64) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let nodes = (0..n)
            .map(|i| {
                let id = NodeId::new(format!("n{i}")).unwrap();
                Node {
                    store_config: StoreConfig {
                        node_id: Some(id.clone()),
                        log_retention,
                        cache_bytes: 4 << 20,
                        ..StoreConfig::default()
                    },
                    id,
                    addr: SocketAddr::from(([10, 0, 0, i as u8 + 1], 7000)),
                    dir: temp_dir(),
                    live: None,
                    skew: rng.gen_range(0..100),
                }
            })
            .collect();
        let mut sim = Sim {
            seed,
            rng,
            now: 0,
            next_tick: TICK_MS,
            nodes,
            faults,
            net: Net::new(n, faults.link),
            issued: HashMap::new(),
            events: Events::default(),
            writes_done: Vec::new(),
            reads_done: Vec::new(),
        };
        for i in 0..n {
            // The first node founds the cluster; the others join through it.
            let join = if i == 0 {
                vec![]
            } else {
                vec![sim.nodes[0].addr]
            };
            sim.start(i, &join);
        }
        sim
    }

    fn now_of(&self, i: usize) -> Now {
        let wall = T0 as i64 + self.now as i64 + self.nodes[i].skew;
        Now::from_millis(self.now, wall as u64)
    }

    fn alive(&self, i: usize) -> bool {
        self.nodes[i].live.is_some()
    }

    fn live(&self, i: usize) -> &Live {
        self.nodes[i].live.as_ref().expect("node is down")
    }

    fn store(&self, i: usize) -> &Store {
        &self.live(i).store
    }

    /// Opens the store from disk and a fresh machine (new incarnation).
    fn start(&mut self, i: usize, join: &[SocketAddr]) {
        let now = self.now_of(i);
        let node = &mut self.nodes[i];
        let store = reopen(node.dir.path(), &node.store_config);
        let mut machine = NodeMachine::new(
            node.id.clone(),
            node.addr,
            now.wall_ms(),
            membership_config(),
            sim_config(),
            GRACE_MS,
            clock_config(),
            self.rng.gen(),
        )
        .unwrap();
        let remembered = store.peers().unwrap();
        let out = machine.start(remembered, join, now, &store);
        node.live = Some(Live {
            store,
            machine,
            disk: Vec::new(),
        });
        self.outputs(i, out);
    }

    /// kill -9: machine and queued commits gone, no closing checkpoint;
    /// only what was flushed survives.
    fn kill(&mut self, i: usize) {
        if let Some(live) = self.nodes[i].live.take() {
            live.store.close_as_if_crashed();
        }
    }

    fn input(&mut self, i: usize, input: Input) {
        let now = self.now_of(i);
        let Some(live) = self.nodes[i].live.as_mut() else {
            return;
        };
        let out = live.machine.handle(input, now, &live.store);
        self.outputs(i, out);
    }

    fn outputs(&mut self, i: usize, outputs: Vec<Output>) {
        for o in outputs {
            match o {
                Output::Send { to, addr, msg } => {
                    let Some(j) = self.nodes.iter().position(|n| n.addr == addr) else {
                        continue;
                    };
                    if let Some(to) = to {
                        // The transport checks the certificate names `to`.
                        assert_eq!(to, self.nodes[j].id, "seed {}: misaddressed", self.seed);
                    }
                    self.net.send(&mut self.rng, self.now, i, j, msg);
                }
                Output::Commit { tag, ops } => {
                    if let Some(live) = self.nodes[i].live.as_mut() {
                        live.disk.push((tag, ops));
                    }
                }
                Output::Persist { peer, record } => {
                    self.store(i).save_peer(&peer, &record).unwrap();
                }
                Output::Forget { peer, .. } => {
                    self.store(i).remove_peer(&peer).unwrap();
                }
                Output::WriteFence(_) => {} // read back through `write_fence`
                Output::WriteDone(done) => self.writes_done.push((i, done)),
                Output::ReadDone(done) => self.reads_done.push((i, done)),
            }
        }
    }

    /// Completes some of node `i`'s queued commits, in random order; each
    /// applies and flushes, or fails as a whole (storage error). The fresh
    /// deltas and the outcome come back in either order, as from the
    /// committer's sink and reply.
    fn disk(&mut self, i: usize) {
        let Some(live) = self.nodes[i].live.as_mut() else {
            return;
        };
        if live.disk.is_empty() {
            return;
        }
        live.disk.shuffle(&mut self.rng);
        let n = self.rng.gen_range(1..=live.disk.len());
        let done: Vec<(u64, Vec<Op>)> = live.disk.drain(..n).collect();
        for (tag, ops) in done {
            let now = self.now_of(i);
            if self.rng.gen_bool(self.faults.storage_error) {
                self.events.storage_errors += 1;
                let result = Err("injected storage error".into());
                self.input(i, Input::CommitDone { tag, result });
                continue;
            }
            let Some(live) = self.nodes[i].live.as_ref() else {
                return;
            };
            let outcomes = live.store.apply(ops.clone(), now.wall_ms()).unwrap();
            live.store.flush().unwrap();
            let fresh = fresh_deltas(&ops, &outcomes);
            let done = Input::CommitDone {
                tag,
                result: Ok(outcomes),
            };
            if fresh.is_empty() {
                self.input(i, done);
            } else if self.rng.gen_bool(0.5) {
                self.input(i, Input::Committed(Arc::new(fresh)));
                self.input(i, done);
            } else {
                self.input(i, done);
                self.input(i, Input::Committed(Arc::new(fresh)));
            }
        }
    }

    /// Why node `i`'s clock may not stamp a write now, if so.
    fn clock_refusal(&self, i: usize) -> Option<&'static str> {
        let v = self.live(i).machine.clock_verdict()?;
        v.refusal.as_ref().map(|r| r.code)
    }

    /// A client write to node `i`; false if the node refused it (fenced by
    /// its own-origin check or its clock).
    fn write(&mut self, i: usize, key: &str, value: Option<Vec<u8>>) -> bool {
        if self.live(i).machine.write_fence().is_some() || self.clock_refusal(i).is_some() {
            self.events.writes_fenced += 1;
            return false;
        }
        self.write_unchecked(i, key, value)
    }

    /// A write that bypasses the fences (what an operator's
    /// `accept_clock_ahead`, or a clock that stepped between two checks,
    /// lets through).
    fn write_unchecked(&mut self, i: usize, key: &str, value: Option<Vec<u8>>) -> bool {
        self.local_write(i, key, value, false).is_some()
    }

    /// A client write with `?w=level` to node `i`, as the HTTP shell does
    /// it: committed, its deltas pushed asking for acks, then waiting under
    /// `id` (the verdict lands in `writes_done`). Its seq, unless refused.
    fn quorum_write(&mut self, i: usize, id: u64, key: &str, level: Level) -> Option<u64> {
        if self.live(i).machine.write_fence().is_some() || self.clock_refusal(i).is_some() {
            return None;
        }
        let d = self.local_write(i, key, Some(key.as_bytes().to_vec()), true)?;
        let input = Input::AwaitWrite {
            id,
            key: d.key.clone(),
            seq: d.seq,
            level,
            timeout_ms: QUORUM_TIMEOUT_MS,
        };
        self.input(i, input);
        Some(d.seq)
    }

    /// Applies a local write durably and hands its delta to the machine
    /// (`for_quorum`: as while a quorum write waits).
    fn local_write(
        &mut self,
        i: usize,
        key: &str,
        value: Option<Vec<u8>>,
        for_quorum: bool,
    ) -> Option<Delta> {
        let now = self.now_of(i);
        let live = self.live(i);
        let op = Op::Local {
            key: key.into(),
            value,
            meta: Default::default(),
            cond: Condition::Always,
        };
        let outcomes = live.store.apply(vec![op], now.wall_ms()).unwrap();
        live.store.flush().unwrap();
        let written: Vec<Delta> = outcomes
            .into_iter()
            .filter_map(|o| match o {
                Outcome::Written(d) => Some(d),
                _ => None,
            })
            .collect();
        for d in &written {
            let this = (d.key.clone(), d.entry.version.hlc);
            if let Some(before) = self.issued.insert((d.origin.clone(), d.seq), this.clone()) {
                assert_eq!(
                    before, this,
                    "seed {}: {} reused its sequence number {}",
                    self.seed, d.origin, d.seq
                );
            }
        }
        self.events.writes += 1;
        let last = written.last().cloned();
        let batch = Arc::new(written);
        let input = if for_quorum {
            Input::CommittedForQuorum(batch)
        } else {
            Input::Committed(batch)
        };
        self.input(i, input);
        last
    }

    /// Jumps to the next deadline (a message due or the next tick) and runs
    /// everything due then.
    fn step(&mut self) {
        let next_msg = self.net.next_due().unwrap_or(u64::MAX);
        self.now = self.now.max(next_msg.min(self.next_tick));
        while let Some((from, to, msg)) = self.net.pop_due(self.now) {
            let input = Input::Message {
                from: self.nodes[from].id.clone(),
                addr: self.nodes[from].addr,
                msg,
            };
            self.input(to, input);
        }
        if self.now >= self.next_tick {
            self.next_tick = self.now + TICK_MS;
            for i in 0..self.nodes.len() {
                self.disk(i);
                self.input(i, Input::Tick);
            }
        }
    }

    fn run_for(&mut self, ms: u64) {
        let until = self.now + ms;
        while self.now < until {
            self.step();
        }
    }

    fn partition(&mut self) {
        for s in self.net.side.iter_mut() {
            *s = self.rng.gen_range(0..2);
        }
        self.events.partitions += 1;
    }

    fn heal(&mut self) {
        self.net.side.iter_mut().for_each(|s| *s = 0);
    }

    /// What a node serves: entries, Merkle root, version vector.
    fn served(store: &Store) -> Served {
        let entries = store.scan("", None, usize::MAX).unwrap();
        (entries, store.merkle_root(), store.version_vector())
    }

    /// Whether every node is up, agrees on what it serves, and is idle.
    fn converged(&self) -> Result<(), String> {
        let mut first: Option<Served> = None;
        for (i, node) in self.nodes.iter().enumerate() {
            let live = node.live.as_ref().ok_or("a node is down")?;
            if !live.disk.is_empty() {
                return Err(format!("{} has commits queued", node.id));
            }
            if let Some(why) = live.machine.write_fence() {
                return Err(format!("{} is fenced: {why}", node.id));
            }
            let view = Sim::served(&live.store);
            match &first {
                None => first = Some(view),
                Some(f) if *f == view => {}
                Some((e, r, v)) => {
                    return Err(format!(
                        "n{i} differs: {} vs {} entries, roots equal {}, vv {:?} vs {:?}",
                        view.0.len(),
                        e.len(),
                        view.1 == *r,
                        view.2,
                        v
                    ))
                }
            }
        }
        Ok(())
    }

    fn run_until_converged(&mut self, limit_ms: u64) -> u64 {
        let start = self.now;
        loop {
            self.run_for(100);
            match self.converged() {
                Ok(()) => return self.now - start,
                Err(why) if self.now - start > limit_ms => panic!(
                    "seed {}: not converged after {} ms: {why}",
                    self.seed,
                    self.now - start
                ),
                Err(_) => {}
            }
        }
    }

    /// Memory equals disk: what each node serves is what a reopened copy
    /// of its directory holds, after a kill that skipped the checkpoint.
    fn check_memory_equals_disk(&mut self) {
        for i in 0..self.nodes.len() {
            let served = Sim::served(self.store(i));
            assert_eq!(
                served.1,
                hub::store::rebuild_merkle_root(self.store(i)).unwrap(),
                "seed {}: n{i}'s Merkle root is not its entries'",
                self.seed
            );
            self.kill(i);
            let store = reopen(self.nodes[i].dir.path(), &self.nodes[i].store_config);
            let on_disk = Sim::served(&store);
            assert!(
                served == on_disk,
                "seed {}: n{i} served {} entries / vv {:?}, its disk holds {} / {:?}",
                self.seed,
                served.0.len(),
                served.2,
                on_disk.0.len(),
                on_disk.2
            );
            assert_eq!(on_disk.1, hub::store::rebuild_merkle_root(&store).unwrap());
        }
    }
}

/// One seeded run: writes under drops, duplicates, reordering, partitions,
/// kills without checkpoint, storage errors and out-of-order commit
/// completion; then heal and require convergence with memory equal to disk.
fn chaos_run(seed: u64, chaos_ms: u64) -> Events {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let n = rng.gen_range(3..=4);
    let faults = Faults {
        link: Link {
            drop: 0.1,
            dup: 0.05,
            max_delay_ms: 40,
        },
        storage_error: 0.05,
    };
    // Every third seed trims logs hard, so pulls answer "unavailable" and
    // anti-entropy (with its vector advance) must do the healing.
    let retention = if seed % 3 == 0 { 16 } else { 1_000_000 };
    let mut sim = Sim::new(seed, n, faults, retention);
    let keys: Vec<String> = (0..24).map(|k| format!("k{k}")).collect();
    let end = sim.now + chaos_ms;
    while sim.now < end {
        let r: f64 = rng.gen();
        let alive: Vec<usize> = (0..n).filter(|&i| sim.alive(i)).collect();
        if r < 0.3 {
            if let Some(&i) = alive.choose(&mut rng) {
                let key = &keys[rng.gen_range(0..keys.len())];
                let value = (!rng.gen_bool(0.2)).then(|| vec![rng.gen(); rng.gen_range(1..20)]);
                sim.write(i, key, value);
            }
        } else if r < 0.304 && alive.len() > 1 {
            let i = *alive.choose(&mut rng).unwrap();
            sim.kill(i);
            sim.events.kills += 1;
        } else if r < 0.32 {
            if let Some(i) = (0..n).find(|&i| !sim.alive(i)) {
                sim.start(i, &[]);
            }
        } else if r < 0.323 {
            sim.partition();
        } else if r < 0.333 {
            sim.heal();
        }
        sim.run_for(rng.gen_range(1..=20));
    }
    for i in 0..n {
        if !sim.alive(i) {
            sim.start(i, &[]);
        }
    }
    sim.heal();
    sim.faults.storage_error = 0.0;
    sim.net.link = Link {
        drop: 0.0,
        dup: 0.0,
        ..faults.link
    };
    sim.events.took_ms = sim.run_until_converged(60_000);
    sim.events.messages = sim.net.sent;
    sim.check_memory_equals_disk();
    if std::env::var("SIM_VERBOSE").is_ok() {
        eprintln!("seed {seed}: {n} nodes, {:?}", sim.events);
    }
    std::mem::take(&mut sim.events)
}

#[test]
fn whole_nodes_converge_with_memory_equal_to_disk_after_kills_storage_errors_and_partitions() {
    for_each_seed("node simulation", 8, |seed| {
        let events = chaos_run(seed, 20_000);
        assert!(
            events.writes > 100,
            "seed {seed}: too few writes: {events:?}"
        );
    });
}

#[test]
fn node_simulation_replays_exactly_from_its_seed() {
    assert_eq!(chaos_run(5, 5_000), chaos_run(5, 5_000));
}

/// A node restored from an old copy of its directory, whose peers hold newer
/// writes of its own origin: it refuses local writes until it has recovered
/// them, then writes on with fresh sequence numbers.
fn restored_node_recovers_own_writes(retention: u64) {
    let mut sim = Sim::new(11, 3, CALM, retention);
    sim.run_until_converged(10_000);
    for k in 0..10 {
        assert!(sim.write(0, &format!("early{k}"), Some(vec![k])));
    }
    sim.run_until_converged(10_000);
    let backup = temp_dir();
    sim.kill(0);
    copy_dir(sim.nodes[0].dir.path(), backup.path());
    sim.start(0, &[]);
    sim.run_until_converged(10_000);
    for k in 0..30 {
        assert!(sim.write(0, &format!("late{k}"), Some(vec![k])));
    }
    sim.run_until_converged(10_000);
    let before = sim.store(1).version_vector().get(&sim.nodes[0].id);
    assert_eq!(before, 40);

    // Put the old copy back and start the node on it.
    sim.kill(0);
    let dir = sim.nodes[0].dir.path().to_path_buf();
    std::fs::remove_dir_all(&dir).unwrap();
    copy_dir(backup.path(), &dir);
    sim.start(0, &[]);
    let id = sim.nodes[0].id.clone();
    assert_eq!(sim.store(0).version_vector().get(&id), 10);
    assert!(
        !sim.write(0, "too-early", Some(b"x".to_vec())),
        "a restored node must not write before checking its own seqs"
    );
    let mut fenced_seen = false;
    while sim.live(0).machine.write_fence().is_some() {
        fenced_seen |= sim
            .live(0)
            .machine
            .write_fence()
            .is_some_and(|why| why.contains("recovering"));
        assert!(sim.now < 60_000, "fence never lifted");
        sim.step();
    }
    assert!(fenced_seen, "the fence should name the recovery");
    assert!(sim.store(0).version_vector().get(&id) >= 40);
    assert!(sim.write(0, "after", Some(b"y".to_vec())));
    sim.run_until_converged(10_000);
    assert_eq!(sim.store(2).version_vector().get(&id), 41);
    assert_eq!(sim.store(2).scan("late", None, 100).unwrap().len(), 30);
    sim.check_memory_equals_disk();
}

#[test]
fn node_restored_from_an_old_copy_recovers_its_own_writes_before_writing() {
    restored_node_recovers_own_writes(1_000_000);
}

#[test]
fn node_restored_from_an_old_copy_recovers_its_own_writes_by_anti_entropy_when_logs_are_trimmed() {
    restored_node_recovers_own_writes(5);
}

#[test]
fn lone_node_writes_after_the_grace_period_when_no_peer_answers() {
    let mut sim = Sim::new(12, 2, CALM, 1_000_000);
    sim.run_until_converged(10_000);
    sim.kill(0);
    sim.kill(1);
    sim.start(1, &[]);
    assert!(!sim.write(1, "k", Some(b"v".to_vec())));
    let started = sim.now;
    while sim.live(1).machine.write_fence().is_some() {
        assert!(
            sim.now - started <= GRACE_MS + TICK_MS,
            "fence outlived the grace period"
        );
        sim.step();
    }
    assert!(sim.now - started >= GRACE_MS);
    assert!(sim.write(1, "k", Some(b"v".to_vec())));
}

// ---- Clocks: skewed clocks cannot win or wedge the cluster ----

/// Runs until node `i`'s clock fence reports `state`.
fn run_until_clock_state(sim: &mut Sim, i: usize, state: hub::clock::FenceState) {
    let start = sim.now;
    loop {
        let now = sim.live(i).machine.clock_verdict().map(|v| v.state);
        if now == Some(state) {
            return;
        }
        assert!(
            sim.now - start < 20_000,
            "n{i} never reached {state:?}, is {now:?}"
        );
        sim.step();
    }
}

fn value_of(sim: &Sim, i: usize, key: &str) -> Option<Vec<u8>> {
    sim.store(i).get(key).unwrap().and_then(|e| e.value)
}

/// Every node serves `want` for `key`.
fn assert_everywhere(sim: &Sim, key: &str, want: &[u8]) {
    for i in 0..sim.nodes.len() {
        assert_eq!(
            value_of(sim, i, key).as_deref(),
            Some(want),
            "n{i} serves another value for {key}"
        );
    }
}

fn skewed_sim(seed: u64, skews: &[i64]) -> Sim {
    let mut sim = Sim::new(seed, 0, CALM, 1_000_000);
    sim.nodes = skews
        .iter()
        .enumerate()
        .map(|(i, &skew)| {
            let id = NodeId::new(format!("n{i}")).unwrap();
            Node {
                store_config: StoreConfig {
                    node_id: Some(id.clone()),
                    cache_bytes: 4 << 20,
                    ..StoreConfig::default()
                },
                id,
                addr: SocketAddr::from(([10, 0, 0, i as u8 + 1], 7000)),
                dir: temp_dir(),
                live: None,
                skew,
            }
        })
        .collect();
    sim.net = sim_net::Net::new(skews.len(), CALM.link);
    for i in 0..skews.len() {
        let join = if i == 0 {
            vec![]
        } else {
            vec![sim.nodes[0].addr]
        };
        sim.start(i, &join);
    }
    sim
}

#[test]
fn offset_estimates_are_within_the_network_delay_of_the_true_skew() {
    let mut sim = skewed_sim(21, &[0, 137, -2_500]);
    sim.run_for(3_000);
    let v = sim.live(0).machine.clock_verdict().unwrap().clone();
    for (peer, truth) in [("n1", 137.0), ("n2", -2_500.0)] {
        let p = v
            .peers
            .iter()
            .find(|p| p.peer == peer)
            .expect("peer measured");
        // CALM links delay each message 0..5 ms: error ≤ rtt/2 ≤ 5 ms.
        assert!(
            (p.offset_ms - truth).abs() <= 5.0,
            "{peer}: estimated {} ms, true {truth} ms (rtt {} ms)",
            p.offset_ms,
            p.rtt_ms
        );
    }
}

#[test]
fn node_running_ahead_is_fenced_and_every_later_healthy_write_wins() {
    let mut sim = skewed_sim(22, &[0, 0, 20_000]);
    run_until_clock_state(&mut sim, 2, hub::clock::FenceState::Skewed);
    run_until_clock_state(&mut sim, 0, hub::clock::FenceState::Ok);
    run_until_clock_state(&mut sim, 1, hub::clock::FenceState::Ok);
    assert_eq!(sim.clock_refusal(2), Some("clock_skew"));
    assert!(
        !sim.write(2, "k", Some(b"skewed".to_vec())),
        "the outlier must not write"
    );
    assert!(sim.write(0, "k", Some(b"healthy".to_vec())));
    sim.run_until_converged(10_000);
    assert_everywhere(&sim, "k", b"healthy");
    // The fenced node still receives: its own store has the healthy write.
    assert_eq!(value_of(&sim, 2, "k").as_deref(), Some(&b"healthy"[..]));
}

#[test]
fn a_future_stamp_that_slipped_through_does_not_drag_healthy_clocks() {
    let mut sim = skewed_sim(23, &[0, 0, 3_600_000]);
    run_until_clock_state(&mut sim, 2, hub::clock::FenceState::Skewed);
    // A write stamped an hour ahead (a fence bypassed) replicates...
    assert!(sim.write_unchecked(2, "future", Some(b"x".to_vec())));
    sim.run_until_converged(10_000);
    assert_everywhere(&sim, "future", b"x");
    // ...but no healthy clock adopted its stamp, so no healthy node's
    // high-water mark runs ahead (which would fence it at its next start).
    for i in 0..2 {
        let hlc = sim.store(i).hlc().physical_ms();
        let wall = sim.now_of(i).wall_ms();
        assert!(
            hlc <= wall + MAX_OFFSET_MS,
            "n{i}'s clock was dragged {} ms ahead",
            hlc - wall
        );
        let stats = sim.live(i).machine.replicator().stats();
        assert!(stats.peers["n2"].clock_stamps_not_adopted > 0);
    }
}

#[test]
fn node_running_behind_is_fenced_but_keeps_converging_and_wedges_nobody() {
    let mut sim = skewed_sim(24, &[0, 0, -60_000]);
    run_until_clock_state(&mut sim, 2, hub::clock::FenceState::Skewed);
    run_until_clock_state(&mut sim, 0, hub::clock::FenceState::Ok);
    assert!(sim
        .live(2)
        .machine
        .clock_verdict()
        .unwrap()
        .refusal
        .as_ref()
        .unwrap()
        .message
        .contains("behind"));
    for k in 0..20 {
        assert!(sim.write(k % 2, &format!("k{k}"), Some(vec![k as u8])));
    }
    sim.run_until_converged(10_000);
    assert_eq!(sim.store(2).scan("k", None, 100).unwrap().len(), 20);
}

#[test]
fn backward_step_during_operation_fences_until_fixed_and_later_healthy_writes_win() {
    let mut sim = skewed_sim(25, &[0, 0, 0]);
    for i in 0..3 {
        run_until_clock_state(&mut sim, i, hub::clock::FenceState::Ok);
    }
    assert!(sim.write(2, "k", Some(b"before-step".to_vec())));
    sim.run_until_converged(10_000);
    // n2's wall clock steps back 60 s: noticed locally at once.
    sim.nodes[2].skew = -60_000;
    sim.run_for(TICK_MS);
    assert!(
        matches!(
            sim.clock_refusal(2),
            Some("clock_unverified" | "clock_skew")
        ),
        "a step must refuse writes at once"
    );
    run_until_clock_state(&mut sim, 2, hub::clock::FenceState::Skewed);
    assert!(!sim.write(2, "k", Some(b"while-skewed".to_vec())));
    assert!(sim.write(0, "k", Some(b"healthy".to_vec())));
    sim.run_until_converged(10_000);
    assert_everywhere(&sim, "k", b"healthy");
    // Fixed: measured anew, writes accepted, and ordering is sound again.
    sim.nodes[2].skew = 0;
    run_until_clock_state(&mut sim, 2, hub::clock::FenceState::Ok);
    assert!(sim.write(2, "k", Some(b"after-fix".to_vec())));
    sim.run_for(50);
    assert!(sim.write(1, "k", Some(b"latest".to_vec())));
    sim.run_until_converged(10_000);
    assert_everywhere(&sim, "k", b"latest");
}

#[test]
fn replication_timers_keep_running_after_the_wall_clock_steps_back_an_hour() {
    let mut sim = skewed_sim(26, &[0, 0, 0]);
    sim.run_until_converged(10_000);
    // n1's wall clock steps back an hour: its pull timer keeps firing
    // (on a wall-clock timer it would wait an hour).
    let pulls = |sim: &Sim| -> u64 {
        let st = sim.live(1).machine.replicator().stats();
        st.peers.values().map(|p| p.pulls_sent).sum()
    };
    sim.nodes[1].skew = -3_600_000;
    let before = pulls(&sim);
    sim.run_for(1_000);
    assert!(
        pulls(&sim) >= before + 3,
        "pull timer stalled after a backward step"
    );
    // And its pushes get lost in a short partition (too short for anyone
    // to be declared dead); pull and anti-entropy repair them.
    sim.net.side = vec![0, 1, 0];
    assert!(sim.write(0, "lost-push", Some(b"v".to_vec())));
    sim.run_for(300);
    sim.heal();
    assert!(
        value_of(&sim, 1, "lost-push").is_none(),
        "the push was lost"
    );
    let took = sim.run_until_converged(5_000);
    assert!(took <= 5_000);
    assert_eq!(value_of(&sim, 1, "lost-push").as_deref(), Some(&b"v"[..]));
}

/// Stores that durably hold delta `seq` of `origin`.
fn holders(sim: &Sim, origin: usize, seq: u64) -> usize {
    let id = &sim.nodes[origin].id;
    (0..sim.nodes.len())
        .filter(|&j| sim.alive(j) && sim.store(j).version_vector().get(id) >= seq)
        .count()
}

/// Runs until write `id`'s verdict is in (the machine gives one by its
/// deadline, whatever the network does), and checks it against the
/// stores at that moment: a write reported acknowledged by `acks` replicas
/// is durable on at least that many.
fn await_verdict(sim: &mut Sim, origin: usize, id: u64, seq: u64) -> WriteResolved {
    let deadline = sim.now + QUORUM_TIMEOUT_MS + 2 * TICK_MS;
    loop {
        if let Some(k) = sim.writes_done.iter().position(|(_, d)| d.id == id) {
            let (i, done) = sim.writes_done.remove(k);
            assert_eq!(i, origin, "seed {}: verdict from the wrong node", sim.seed);
            let held = holders(sim, origin, seq);
            assert!(
                held >= done.acks,
                "seed {}: write {id} reported {} acks but is durable on {held} stores",
                sim.seed,
                done.acks
            );
            return done;
        }
        assert!(
            sim.now <= deadline,
            "seed {}: write {id} got no verdict by its deadline",
            sim.seed
        );
        sim.step();
    }
}

#[test]
fn acknowledged_quorum_writes_are_durable_on_that_many_replicas_and_a_cut_off_writer_fails() {
    for_each_seed("quorum simulation", 4, |seed| {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x0a0c);
        let mut sim = Sim::new(seed, 3, CALM, 1_000_000);
        sim.run_until_converged(30_000);
        sim.run_for(GRACE_MS);
        let mut id = 0;
        let mut calm = 0;
        // A calm network: every quorum write is acknowledged in time.
        for round in 0..20 {
            let i = rng.gen_range(0..3);
            let level = if round % 2 == 0 {
                Level::Quorum
            } else {
                Level::All
            };
            id += 1;
            let Some(seq) = sim.quorum_write(i, id, &format!("k{}", round % 5), level) else {
                continue;
            };
            let done = await_verdict(&mut sim, i, id, seq);
            assert!(
                done.reached(),
                "seed {seed}: calm write {id} failed: {done:?}"
            );
            assert_eq!(done.replicas, 3);
            calm += 1;
        }
        assert_eq!(calm, 20, "seed {seed}: writes refused");
        // Drops, duplicates and reordering: acks and pushes get lost, the
        // probes and pulls recover most; every verdict is still truthful.
        sim.net.link = Link {
            drop: 0.1,
            dup: 0.05,
            max_delay_ms: 30,
        };
        let mut reached = 0;
        for round in 0..20 {
            let i = rng.gen_range(0..3);
            id += 1;
            let Some(seq) = sim.quorum_write(i, id, &format!("k{}", round % 5), Level::Quorum)
            else {
                continue;
            };
            reached += usize::from(await_verdict(&mut sim, i, id, seq).reached());
        }
        assert!(
            reached > 10,
            "seed {seed}: only {reached} of 20 lossy writes reached quorum"
        );
        // Cut off: a quorum is impossible, the write fails at its deadline
        // with this node's own ack only; it is not undone.
        sim.net.link = CALM.link;
        sim.net.side[0] = 1;
        id += 1;
        let started = sim.now;
        let seq = sim.quorum_write(0, id, "cut", Level::Quorum).unwrap();
        let done = await_verdict(&mut sim, 0, id, seq);
        assert!(!done.reached() && done.acks == 1, "seed {seed}: {done:?}");
        assert!(sim.now >= started + QUORUM_TIMEOUT_MS);
        sim.heal();
        sim.run_until_converged(30_000);
        assert_everywhere(&sim, "cut", b"cut");
    });
}
