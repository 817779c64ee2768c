//! Deterministic simulation of replication: N nodes, each a real sled `Store`
//! in a temp dir and a `Replicator`, over a simulated network with seeded
//! drops, duplicates, reordering, partitions and crashes. Every run replays
//! exactly from its seed (printed on failure; `SIM_SEED=n` runs one seed,
//! `SIM_SEEDS=n` sets how many).

use std::time::Instant;

use hub::model::{Entry, NodeId, VersionVector};
use hub::placement::{partition_of, Layout};
use hub::replication::{AeResult, Effect, Msg, ReplicationConfig, Replicator};
use hub::store::{Condition, Op, Outcome, Store, StoreConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[path = "support/sim_net.rs"]
mod sim_net;
use sim_net::{for_each_seed, Link, Net};
#[path = "support/sim_store.rs"]
mod sim_store;
use sim_store::{fresh_deltas, reopen, sim_config, temp_dir};

const T0: u64 = 1_700_000_000_000;
const STEP_MS: u64 = 5;

struct Node {
    id: NodeId,
    dir: tempfile::TempDir,
    store_config: StoreConfig,
    /// `None` while crashed.
    live: Option<(Store, Replicator)>,
    /// Wall clock skew of this node, well within the max offset.
    skew: u64,
}

type Faults = Link;

struct Sim {
    seed: u64,
    rng: StdRng,
    now: u64,
    nodes: Vec<Node>,
    net: Net<Msg>,
    /// `up[i][j]`: node i's membership considers j alive.
    up: Vec<Vec<bool>>,
    config: ReplicationConfig,
    messages: u64,
    bytes: u64,
    /// Copies of each key (`hub::placement`); `None`: every node. Each node
    /// places partitions on itself and the peers it sees up.
    factor: Option<usize>,
}

impl Sim {
    fn new(
        seed: u64,
        n: usize,
        faults: Faults,
        config: ReplicationConfig,
        log_retention: u64,
    ) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let nodes = (0..n)
            .map(|i| {
                let id = NodeId::new(format!("n{i}")).unwrap();
                let store_config = StoreConfig {
                    node_id: Some(id.clone()),
                    log_retention,
                    cache_bytes: 4 << 20,
                    ..StoreConfig::default()
                };
                Node {
                    id,
                    dir: temp_dir(),
                    store_config,
                    live: None,
                    skew: rng.gen_range(0..100),
                }
            })
            .collect();
        let mut sim = Sim {
            seed,
            rng,
            now: T0,
            nodes,
            net: Net::new(n, faults),
            up: vec![vec![false; n]; n],
            factor: config.replication_factor,
            config,
            messages: 0,
            bytes: 0,
        };
        for i in 0..n {
            sim.start(i);
        }
        sim
    }

    fn wall(&self, i: usize) -> u64 {
        self.now + self.nodes[i].skew
    }

    fn idx(&self, id: &NodeId) -> usize {
        self.nodes.iter().position(|n| n.id == *id).unwrap()
    }

    fn alive(&self, i: usize) -> bool {
        self.nodes[i].live.is_some()
    }

    /// Opens the store from disk and a fresh replicator; tells both sides
    /// of every reachable pair that the other is up.
    fn start(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let store = reopen(node.dir.path(), &node.store_config);
        let repl = Replicator::new(node.id.clone(), self.config.clone(), self.rng.gen());
        node.live = Some((store, repl));
        self.relayout(i);
        for j in 0..self.nodes.len() {
            if j != i && self.alive(j) && self.net.connected(i, j) {
                self.set_up(i, j, true);
                self.set_up(j, i, true);
            }
        }
    }

    /// kill -9: the replicator's memory is gone; only flushed state survives
    /// (every commit in the simulation is flushed before it is reported).
    fn crash(&mut self, i: usize) {
        self.nodes[i].live = None;
        for j in 0..self.nodes.len() {
            self.up[i][j] = false;
            if j != i {
                self.set_up(j, i, false);
            }
        }
    }

    /// Node `i`'s layout from its own view of who is up (what membership
    /// gives a real node, with a grace period of zero: maximal churn).
    fn relayout(&mut self, i: usize) {
        if self.factor.is_none() || !self.alive(i) {
            return;
        }
        let members: Vec<NodeId> = (0..self.nodes.len())
            .filter(|&j| j == i || self.up[i][j])
            .map(|j| self.nodes[j].id.clone())
            .collect();
        let layout = std::sync::Arc::new(Layout::compute(members, self.factor));
        let now = self.wall(i);
        let effects = {
            let me = self.nodes[i].id.clone();
            let (store, repl) = self.nodes[i].live.as_mut().unwrap();
            store.owned().store(layout.owned_by(&me));
            repl.set_layout(layout, now, store)
        };
        self.run_effects(i, effects);
    }

    fn set_up(&mut self, i: usize, j: usize, up: bool) {
        if self.up[i][j] == up || !self.alive(i) {
            return;
        }
        self.up[i][j] = up;
        self.relayout(i);
        let peer = self.nodes[j].id.clone();
        let now = self.wall(i);
        let effects = {
            let (store, repl) = self.nodes[i].live.as_mut().unwrap();
            if up {
                repl.peer_up(&peer, now, store)
            } else {
                repl.peer_down(&peer, now);
                Vec::new()
            }
        };
        self.run_effects(i, effects);
    }

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        self.messages += 1;
        self.bytes += msg.encoded_len();
        self.net.send(&mut self.rng, self.now, from, to, msg);
    }

    /// Carries out effects the way the node shell does: commits apply and
    /// flush, then the fresh deltas go to `on_committed` (the Committer's
    /// sink) and the outcomes to `on_commit_outcomes`.
    fn run_effects(&mut self, i: usize, effects: Vec<Effect>) {
        let mut work: std::collections::VecDeque<Effect> = effects.into();
        while let Some(effect) = work.pop_front() {
            match effect {
                Effect::Send { to, msg } => {
                    let to = self.idx(&to);
                    self.send(i, to, msg);
                }
                Effect::Commit { tag, ops, .. } => {
                    let now = self.wall(i);
                    let (store, repl) = self.nodes[i].live.as_mut().unwrap();
                    let outcomes = store.apply(ops.clone(), now).unwrap();
                    store.flush().unwrap();
                    let fresh = fresh_deltas(&ops, &outcomes);
                    if !fresh.is_empty() {
                        work.extend(repl.on_committed(&fresh, now, store));
                    }
                    work.extend(repl.on_commit_outcomes(tag, &outcomes, now, store));
                }
            }
        }
    }

    fn write(&mut self, i: usize, key: &str, value: Option<Vec<u8>>) {
        let now = self.wall(i);
        let effects = {
            let (store, repl) = self.nodes[i].live.as_mut().unwrap();
            let op = Op::Local {
                key: key.into(),
                value,
                meta: Default::default(),
                cond: Condition::Always,
            };
            let outcomes = store.apply(vec![op], now).unwrap();
            store.flush().unwrap();
            let fresh: Vec<_> = outcomes
                .into_iter()
                .filter_map(|o| match o {
                    Outcome::Written(d) => Some(d),
                    _ => None,
                })
                .collect();
            repl.on_committed(&fresh, now, store)
        };
        self.run_effects(i, effects);
    }

    /// Advances time by one step: delivers due messages, ticks every node.
    fn step(&mut self) {
        self.now += STEP_MS;
        while let Some((from, to, msg)) = self.net.pop_due(self.now) {
            if !self.alive(to) {
                continue;
            }
            let now = self.wall(to);
            let from = self.nodes[from].id.clone();
            let effects = {
                let (store, repl) = self.nodes[to].live.as_mut().unwrap();
                repl.on_message(&from, msg, now, store)
            };
            self.run_effects(to, effects);
        }
        if (self.now / STEP_MS) % 20 == 0 {
            for i in 0..self.nodes.len() {
                if !self.alive(i) {
                    continue;
                }
                let now = self.wall(i);
                let effects = {
                    let (store, repl) = self.nodes[i].live.as_mut().unwrap();
                    repl.on_tick(now, store)
                };
                self.run_effects(i, effects);
            }
        }
    }

    fn partition(&mut self) {
        let n = self.nodes.len();
        for i in 0..n {
            self.net.side[i] = self.rng.gen_range(0..2);
        }
        // The failure detector notices some of the cuts, not necessarily all.
        for i in 0..n {
            for j in 0..n {
                if i != j && !self.net.connected(i, j) && self.rng.gen_bool(0.7) {
                    self.set_up(i, j, false);
                }
            }
        }
    }

    fn heal(&mut self) {
        let n = self.nodes.len();
        self.net.side = vec![0; n];
        for i in 0..n {
            for j in 0..n {
                if i != j && self.alive(i) && self.alive(j) {
                    self.set_up(i, j, true);
                }
            }
        }
    }

    /// Entries, Merkle roots and vectors of every node, if all agree.
    fn converged(&self) -> Result<(), String> {
        type View = (Vec<(String, Entry)>, [u8; 16], VersionVector);
        let mut first: Option<View> = None;
        for node in &self.nodes {
            let (store, _) = node.live.as_ref().ok_or("a node is down")?;
            let entries = store.scan("", None, usize::MAX).unwrap();
            let root = store.merkle_root();
            assert_eq!(
                root,
                hub::store::rebuild_merkle_root(store).unwrap(),
                "seed {}: merkle drift",
                self.seed
            );
            let vv = store.version_vector();
            match &first {
                None => first = Some((entries, root, vv)),
                Some((e, r, v)) => {
                    if *e != entries {
                        return Err(format!("{} has different entries", node.id));
                    }
                    if *r != root {
                        return Err(format!("{} has a different root", node.id));
                    }
                    if *v != vv {
                        return Err(format!(
                            "{} has vector {:?}, first has {:?}",
                            node.id, vv, v
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Sharded: every partition's owners (by the common final layout) hold
    /// identical entries of it, and nothing any node holds is newer (no
    /// write lost in a handoff).
    fn converged_sharded(&self, factor: usize) -> Result<(), String> {
        let ids: Vec<NodeId> = self.nodes.iter().map(|n| n.id.clone()).collect();
        let layout = Layout::compute(ids, Some(factor));
        let mut by_node = Vec::new();
        for node in &self.nodes {
            let (store, _) = node.live.as_ref().ok_or("a node is down")?;
            assert_eq!(
                store.merkle_root(),
                hub::store::rebuild_merkle_root(store).unwrap(),
                "seed {}: merkle drift",
                self.seed
            );
            by_node.push(store.scan("", None, usize::MAX).unwrap());
        }
        for p in 0..=255u8 {
            let in_p = |entries: &Vec<(String, Entry)>| -> Vec<(String, Entry)> {
                entries
                    .iter()
                    .filter(|(k, _)| partition_of(k) == p)
                    .cloned()
                    .collect()
            };
            // The newest version of each key anywhere.
            let mut newest: std::collections::BTreeMap<String, Entry> = Default::default();
            for entries in &by_node {
                for (k, e) in in_p(entries) {
                    if e.supersedes(newest.get(&k)) {
                        newest.insert(k, e);
                    }
                }
            }
            let want: Vec<(String, Entry)> = newest.into_iter().collect();
            for owner in layout.owners(p) {
                let i = self.idx(owner);
                if in_p(&by_node[i]) != want {
                    return Err(format!("{owner} lacks the newest data of partition {p}"));
                }
            }
        }
        Ok(())
    }

    /// Runs until every node agrees (checked every 100 ms) or `limit_ms`.
    fn run_until_converged(&mut self, limit_ms: u64) -> u64 {
        let start = self.now;
        loop {
            for _ in 0..20 {
                self.step();
            }
            let verdict = match self.factor {
                Some(r) => self.converged_sharded(r),
                None => self.converged(),
            };
            match verdict {
                Ok(()) => return self.now - start,
                Err(why) if self.now - start > limit_ms => {
                    panic!(
                        "seed {}: not converged after {} ms: {why}",
                        self.seed,
                        self.now - start
                    )
                }
                Err(why) => {
                    if std::env::var("SIM_TRACE").is_ok() && (self.now - start) % 1000 < 100 {
                        eprintln!("t+{}: {why}", self.now - start);
                        for i in 0..self.nodes.len() {
                            for (p, st) in self.repl(i).stats().peers {
                                if let Some(r) = st.last_anti_entropy {
                                    eprintln!("  n{i}->{p}: runs {} fails {} last {:?} recv {} sent {} leaves {} t {}", st.anti_entropy_runs, st.anti_entropy_failures, r.result, r.entries_received, r.entries_sent, r.leaves_compared, r.finished_ms % 100000);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn repl(&self, i: usize) -> &Replicator {
        &self.nodes[i].live.as_ref().unwrap().1
    }

    fn store(&self, i: usize) -> &Store {
        &self.nodes[i].live.as_ref().unwrap().0
    }
}

/// One seeded run: chaos with writes, deletes, partitions and crashes, then
/// heal everything and require convergence.
#[derive(Debug, Default, PartialEq)]
struct Events {
    crashes: u32,
    partitions: u32,
    messages: u64,
    bytes: u64,
    ae_repaired: u64,
    took_ms: u64,
    /// Sharded runs: handed-off partitions dropped by their old holders.
    partitions_dropped: u64,
}

fn chaos_run(seed: u64, steps: usize) -> Events {
    chaos_run_with(seed, steps, None)
}

fn chaos_run_with(seed: u64, steps: usize, factor: Option<usize>) -> Events {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let n = if factor.is_some() {
        rng.gen_range(4..=6)
    } else {
        rng.gen_range(3..=5)
    };
    let faults = Faults {
        drop: 0.15,
        dup: 0.05,
        max_delay_ms: 40,
    };
    // Every third seed trims logs hard, so pulls answer "unavailable" and
    // anti-entropy (with its vector advance) must do the healing.
    let retention = if seed % 3 == 0 { 16 } else { 1_000_000 };
    let config = ReplicationConfig {
        replication_factor: factor,
        // Short, so handed-off partitions are dropped within the run.
        rebalance_after_ms: 2_000,
        ..sim_config()
    };
    let mut sim = Sim::new(seed, n, faults, config, retention);
    let keys: Vec<String> = (0..24).map(|k| format!("k{k}")).collect();
    let mut writes = 0;
    let mut events = Events::default();
    for _ in 0..steps {
        let alive: Vec<usize> = (0..n).filter(|&i| sim.alive(i)).collect();
        let r: f64 = rng.gen();
        if r < 0.25 {
            if let Some(&i) = alive.get(rng.gen_range(0..alive.len().max(1))) {
                let key = &keys[rng.gen_range(0..keys.len())];
                let value = if rng.gen_bool(0.2) {
                    None
                } else {
                    Some(vec![rng.gen(); rng.gen_range(1..20)])
                };
                sim.write(i, key, value);
                writes += 1;
            }
        } else if r < 0.255 && alive.len() > 1 {
            let i = alive[rng.gen_range(0..alive.len())];
            sim.crash(i);
            events.crashes += 1;
        } else if r < 0.27 {
            if let Some(i) = (0..n).find(|&i| !sim.alive(i)) {
                sim.start(i);
            }
        } else if r < 0.275 {
            sim.partition();
            events.partitions += 1;
        } else if r < 0.285 {
            sim.heal();
        }
        sim.step();
    }
    for i in 0..n {
        if !sim.alive(i) {
            sim.start(i);
        }
    }
    sim.heal();
    events.took_ms = sim.run_until_converged(60_000);
    assert!(writes > steps / 8, "seed {seed}: too few writes ({writes})");
    events.messages = sim.messages;
    events.bytes = sim.bytes;
    events.ae_repaired = (0..n)
        .flat_map(|i| sim.repl(i).stats().peers.into_values())
        .filter(|p| {
            matches!(
                p.last_anti_entropy.as_ref().map(|r| &r.result),
                Some(AeResult::Repaired)
            )
        })
        .count() as u64;
    events.partitions_dropped = (0..n)
        .map(|i| sim.repl(i).placement_progress().partitions_dropped)
        .sum();
    if std::env::var("SIM_VERBOSE").is_ok() {
        eprintln!("seed {seed}: {n} nodes, {writes} writes, {events:?}");
    }
    events
}

#[test]
fn all_nodes_converge_after_drops_duplicates_reordering_partitions_and_crashes() {
    for_each_seed("simulation", 32, |seed| chaos_run(seed, 1000));
}

/// Sharding with churn: crashes and partitions change every node's view of
/// the membership, so layouts disagree and move all the time; after the
/// heal each partition's owners hold identical, newest data.
#[test]
fn sharded_partitions_owners_converge_after_churn_partitions_and_crashes() {
    let runs = for_each_seed("sharded simulation", 16, |seed| {
        chaos_run_with(seed, 1000, Some(2 + (seed % 2) as usize))
    });
    // Drops happen (and so were checked by the convergence test above).
    if runs.len() >= 8 {
        assert!(
            runs.iter().any(|e| e.partitions_dropped > 0),
            "no run dropped a handed-off partition: {runs:?}"
        );
    }
}

#[test]
fn simulation_replays_exactly_from_its_seed() {
    assert_eq!(chaos_run(3, 400), chaos_run(3, 400));
}

#[test]
fn deleted_key_stays_deleted_when_pull_is_unavailable_and_anti_entropy_heals() {
    let faults = Faults {
        drop: 0.0,
        dup: 0.0,
        max_delay_ms: 5,
    };
    let mut sim = Sim::new(7, 3, faults, sim_config(), 5);
    sim.write(0, "doomed", Some(b"v1".to_vec()));
    sim.write(1, "other", Some(b"x".to_vec()));
    sim.run_until_converged(5_000);
    assert!(sim.store(2).get("doomed").unwrap().unwrap().value.is_some());

    sim.crash(2);
    for k in 0..100 {
        sim.write(k % 2, &format!("bulk{k}"), Some(vec![k as u8]));
        sim.step();
    }
    sim.write(1, "doomed", None);
    for _ in 0..20 {
        sim.step();
    }
    // The logs now start far beyond what node 2 has seen.
    assert!(sim.store(0).log_stats().values().all(|s| s.len <= 5));

    sim.start(2);
    sim.run_until_converged(10_000);
    let doomed = sim.store(2).get("doomed").unwrap().unwrap();
    assert!(doomed.is_tombstone(), "deleted key came back: {doomed:?}");
    assert_eq!(sim.store(2).scan("bulk", None, 1000).unwrap().len(), 100);

    let stats = sim.repl(2).stats();
    let unavailable: u64 = stats
        .peers
        .values()
        .map(|p| p.pulls_answered_unavailable)
        .sum();
    assert!(
        unavailable > 0,
        "pull should have been answered unavailable: {stats:?}"
    );
    let repaired = stats
        .peers
        .values()
        .filter_map(|p| p.last_anti_entropy.as_ref())
        .any(|r| r.result == AeResult::Repaired && r.entries_received > 0);
    assert!(
        repaired,
        "anti-entropy should have repaired node 2: {stats:?}"
    );

    // A stale replica cannot bring the key back either: node 0's old view is gone,
    // and a late write older than the delete loses.
    sim.crash(0);
    sim.start(0);
    sim.run_until_converged(10_000);
    assert!(sim.store(0).get("doomed").unwrap().unwrap().is_tombstone());
}

/// Replica `a` on a fresh store in `dir`, and the id of a peer `b` that
/// talks to it.
fn lone_replica(dir: &std::path::Path) -> (Store, Replicator, NodeId) {
    let me = NodeId::new("a").unwrap();
    let config = StoreConfig {
        node_id: Some(me.clone()),
        ..StoreConfig::default()
    };
    let store = Store::open(dir, config).unwrap();
    let repl = Replicator::new(me, ReplicationConfig::default(), 1);
    (store, repl, NodeId::new("b").unwrap())
}

#[test]
fn delta_stamped_far_ahead_is_applied_but_not_adopted_by_our_clock() {
    let dir = temp_dir();
    let (store, mut repl, peer) = lone_replica(dir.path());
    let ahead = hub::model::Hlc::new(T0 + 10_000, 0);
    let delta = hub::model::Delta {
        origin: peer.clone(),
        seq: 1,
        key: "k".into(),
        entry: Entry {
            version: hub::model::Version {
                hlc: ahead,
                node: peer.clone(),
            },
            value: Some(b"v".to_vec()),
            meta: Default::default(),
        },
    };
    // The message clock is fine but the carried version is 10 s ahead.
    let msg = Msg::Push {
        clock: hub::model::Hlc::new(T0, 0),
        deltas: vec![delta],
        ack: false,
        cover: None,
    };
    // Not refused: a receiver cannot tell from its own clock which clock
    // is wrong, and refusing would stall the origin's stream for good.
    let effects = repl.on_message(&peer, msg, T0, &store);
    let [Effect::Commit { ops, .. }] = effects.as_slice() else {
        panic!("expected one commit, got {effects:?}");
    };
    store.apply(ops.clone(), T0).unwrap();
    assert_eq!(
        store.get("k").unwrap().unwrap().value.as_deref(),
        Some(&b"v"[..])
    );
    assert!(
        store.hlc() < ahead,
        "our clock must not jump to a stamp 10 s ahead of our wall clock"
    );
}

#[test]
fn malformed_messages_are_counted_and_ignored() {
    let dir = temp_dir();
    let (store, mut repl, peer) = lone_replica(dir.path());
    let clock = hub::model::Hlc::new(T0, 0);
    let bad = [
        Msg::AeNodes {
            clock,
            session: 1,
            req: 1,
            nodes: vec![hub::merkle::NodeRef { level: 9, index: 0 }],
        },
        Msg::AeNodes {
            clock,
            session: 1,
            req: 1,
            nodes: vec![hub::merkle::NodeRef {
                level: 3,
                index: 1 << 20,
            }],
        },
        Msg::AeLeafDiff {
            clock,
            session: 1,
            req: 1,
            part: 5,
            parts: 1,
            entries: vec![],
            want: vec![],
        },
        Msg::AeDigests {
            clock,
            session: 1,
            req: 1,
            children: vec![vec![]],
        },
        Msg::AeEntries {
            clock,
            session: 1,
            entries: vec![("bad\nkey".into(), dummy_entry(&peer))],
        },
    ];
    for m in bad {
        assert!(repl.on_message(&peer, m, T0, &store).is_empty());
    }
    assert_eq!(repl.stats().peers["b"].bad_messages, 5);
    // Answers for sessions that do not exist are ignored quietly.
    let stray = Msg::AeRoot {
        clock,
        session: 42,
        vv: VersionVector::default(),
        root: [1; 16],
        children: vec![],
    };
    assert!(repl.on_message(&peer, stray, T0, &store).is_empty());
}

fn dummy_entry(node: &NodeId) -> Entry {
    Entry {
        version: hub::model::Version {
            hlc: hub::model::Hlc::new(T0, 0),
            node: node.clone(),
        },
        value: Some(b"v".to_vec()),
        meta: Default::default(),
    }
}

/// Two nodes share `keys` entries and differ in `diffs` (half newer on each
/// side); one anti-entropy session over a perfect network. Returns (bytes,
/// messages, elapsed).
fn anti_entropy_cost(keys: usize, diffs: usize) -> (u64, u64, std::time::Duration) {
    let a_id = NodeId::new("a").unwrap();
    let b_id = NodeId::new("b").unwrap();
    let (da, db) = (temp_dir(), temp_dir());
    let open = |d: &tempfile::TempDir, id: &NodeId| {
        Store::open(
            d.path(),
            StoreConfig {
                node_id: Some(id.clone()),
                log_retention: 10,
                ..StoreConfig::default()
            },
        )
        .unwrap()
    };
    let (sa, sb) = (open(&da, &a_id), open(&db, &b_id));
    let writer = NodeId::new("w").unwrap();
    let entry = |h: u64| Entry {
        version: hub::model::Version {
            hlc: hub::model::Hlc(hub::model::Hlc::new(T0 - 100_000, 0).0 + h),
            node: writer.clone(),
        },
        value: Some(vec![7; 16]),
        meta: Default::default(),
    };
    let chunk = 20_000;
    for start in (0..keys).step_by(chunk) {
        let ops: Vec<Op> = (start..(start + chunk).min(keys))
            .map(|k| Op::Entry {
                key: format!("sensor/{k:08}"),
                entry: entry(1),
            })
            .collect();
        sa.apply(ops.clone(), T0).unwrap();
        sb.apply(ops, T0).unwrap();
    }
    // Differences spread over the key space: newer on a for even, on b for odd.
    let step = (keys / diffs.max(1)).max(1);
    for d in 0..diffs {
        let key = format!("sensor/{:08}", (d * step) % keys);
        let target = if d % 2 == 0 { &sa } else { &sb };
        target
            .apply(
                vec![Op::Entry {
                    key,
                    entry: entry(2),
                }],
                T0,
            )
            .unwrap();
    }
    sa.flush().unwrap();
    sb.flush().unwrap();
    assert_ne!(sa.merkle_root(), sb.merkle_root());

    let mut ra = Replicator::new(a_id.clone(), ReplicationConfig::default(), 1);
    let mut rb = Replicator::new(b_id.clone(), ReplicationConfig::default(), 2);
    let started = Instant::now();
    let (ok, first) = ra.request_anti_entropy(&b_id, T0, &sa);
    assert!(ok);
    let mut queue: std::collections::VecDeque<(bool, Effect)> =
        first.into_iter().map(|e| (true, e)).collect();
    let (mut bytes, mut msgs) = (0, 0);
    let mut commit_time = std::time::Duration::ZERO;
    while let Some((on_a, effect)) = queue.pop_front() {
        let (store, repl, other) = if on_a {
            (&sa, &mut ra, &a_id)
        } else {
            (&sb, &mut rb, &b_id)
        };
        match effect {
            Effect::Send { msg, .. } => {
                bytes += msg.encoded_len();
                msgs += 1;
                let (to_store, to_repl) = if on_a { (&sb, &mut rb) } else { (&sa, &mut ra) };
                let out = to_repl.on_message(other, msg, T0, to_store);
                queue.extend(out.into_iter().map(|e| (!on_a, e)));
            }
            Effect::Commit { tag, ops, .. } => {
                let t = Instant::now();
                let outcomes = store.apply(ops, T0).unwrap();
                store.flush().unwrap();
                commit_time += t.elapsed();
                let out = repl.on_commit_outcomes(tag, &outcomes, T0, store);
                queue.extend(out.into_iter().map(|e| (on_a, e)));
            }
        }
    }
    let elapsed = started.elapsed();
    if std::env::var("AE_VERBOSE").is_ok() {
        eprintln!("of which commits (apply + flush): {commit_time:?}");
    }
    assert_eq!(
        sa.merkle_root(),
        sb.merkle_root(),
        "one session must reconcile both sides"
    );
    let run = ra.stats().last_anti_entropy.unwrap();
    assert_eq!(run.result, AeResult::Repaired);
    assert_eq!(run.entries_received + run.entries_sent, diffs as u64);
    (bytes, msgs, elapsed)
}

#[test]
fn anti_entropy_bytes_grow_with_differences_not_map_size() {
    let (small, _, _) = anti_entropy_cost(5_000, 20);
    let (large, msgs, took) = anti_entropy_cost(40_000, 20);
    eprintln!("anti-entropy 40k keys / 20 diffs: {large} bytes, {msgs} messages, {took:?}; 5k keys: {small} bytes");
    // 20 differing leaves of ~0.6 (40k keys) vs ~0.08 items each: a few KB
    // of items; the digests of the differing paths dominate and do not grow.
    assert!(large < 40_000, "{large} bytes for 20 differences");
    assert!(
        large < small * 3,
        "bytes grew with the map: {small} → {large}"
    );
}

/// The benchmark: `AE_KEYS=1000000 AE_DIFFS=1000 cargo test --release --test simulation -- --ignored --nocapture`.
#[test]
#[ignore]
fn anti_entropy_benchmark_large_map_few_differences() {
    let keys = std::env::var("AE_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let diffs = std::env::var("AE_DIFFS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let (bytes, msgs, took) = anti_entropy_cost(keys, diffs);
    eprintln!("anti-entropy {keys} keys / {diffs} diffs: {bytes} bytes on the wire, {msgs} messages, {took:?}");
}
