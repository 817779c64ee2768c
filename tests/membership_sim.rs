//! Deterministic simulation of N membership state machines over a simulated
//! network with latency, drops, duplicates (hence reordering), crashes and
//! partitions. Time is simulated: a minute of cluster life runs in
//! milliseconds. Every run is reproducible from its seed.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;

use hub::membership::{Config, Effect, MemberInfo, Membership, Msg, RefuseReason, Status};
use hub::model::NodeId;
use hub::store::PeerRecord;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const STEP_MS: u64 = 5;

/// Seeds each scenario runs with; `MEMBERSHIP_SIM_SEEDS=200` soaks more.
fn seeds(base: u64) -> impl Iterator<Item = u64> {
    let n: u64 = std::env::var("MEMBERSHIP_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    (0..n).map(move |i| base + i * 1_000)
}

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn addr_of(n: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n as u8], 7000))
}

struct Packet {
    from: NodeId,
    from_addr: SocketAddr,
    to_addr: SocketAddr,
    /// `Some` for `Effect::Send`: the transport's certificate check.
    expect: Option<NodeId>,
    msg: Msg,
}

struct SimNode {
    m: Membership,
    up: bool,
    persisted: BTreeMap<NodeId, PeerRecord>,
    refused: Vec<(NodeId, RefuseReason)>,
}

#[derive(Clone, Debug, PartialEq)]
struct Change {
    at: u64,
    node: NodeId,
    peer: NodeId,
    to: Status,
}

struct Sim {
    now: u64,
    rng: StdRng,
    nodes: BTreeMap<NodeId, SimNode>,
    by_addr: HashMap<SocketAddr, NodeId>,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    packets: HashMap<u64, Packet>,
    next_seq: u64,
    drop_rate: f64,
    dup_rate: f64,
    /// Directed links that drop everything.
    blocked: HashSet<(NodeId, NodeId)>,
    changes: Vec<Change>,
    /// Settings of nodes added from now on.
    config: Config,
}

impl Sim {
    fn new(seed: u64) -> Self {
        Sim {
            now: 0,
            rng: StdRng::seed_from_u64(seed),
            nodes: BTreeMap::new(),
            by_addr: HashMap::new(),
            queue: BinaryHeap::new(),
            packets: HashMap::new(),
            next_seq: 0,
            drop_rate: 0.0,
            dup_rate: 0.0,
            blocked: HashSet::new(),
            changes: Vec::new(),
            config: Config::default(),
        }
    }

    fn add(&mut self, name: &str, addr: SocketAddr, incarnation: u64) {
        let m = Membership::new(id(name), addr, incarnation, self.config.clone()).unwrap();
        self.by_addr.insert(addr, id(name));
        self.nodes.insert(
            id(name),
            SimNode {
                m,
                up: true,
                persisted: BTreeMap::new(),
                refused: Vec::new(),
            },
        );
    }

    /// `n` nodes n1..=n(n); n2.. join through n1.
    fn cluster(seed: u64, n: usize) -> Self {
        Sim::cluster_with(seed, n, Config::default())
    }

    fn cluster_with(seed: u64, n: usize, config: Config) -> Self {
        let mut sim = Sim::new(seed);
        sim.config = config;
        for i in 1..=n {
            sim.add(&format!("n{i}"), addr_of(i), 1);
        }
        for i in 2..=n {
            sim.run_for(50);
            sim.join(&format!("n{i}"), &[addr_of(1)]);
        }
        sim
    }

    fn join(&mut self, name: &str, seeds: &[SocketAddr]) {
        let now = self.now;
        let fx = self.node(name).m.join(seeds, now);
        self.apply(&id(name), fx);
    }

    fn node(&mut self, name: &str) -> &mut SimNode {
        self.nodes.get_mut(&id(name)).unwrap()
    }

    fn apply(&mut self, node: &NodeId, fx: Vec<Effect>) {
        let from_addr = self.nodes[node].m.addr();
        for e in fx {
            match e {
                Effect::Send { to, addr, msg } => self.send(node, from_addr, addr, Some(to), msg),
                Effect::SendToAddr { addr, msg } => self.send(node, from_addr, addr, None, msg),
                Effect::StatusChanged { peer, to, .. } => self.changes.push(Change {
                    at: self.now,
                    node: node.clone(),
                    peer,
                    to,
                }),
                Effect::Persist { peer, record } => {
                    self.nodes
                        .get_mut(node)
                        .unwrap()
                        .persisted
                        .insert(peer, record);
                }
                Effect::Refused { peer, reason } => self
                    .nodes
                    .get_mut(node)
                    .unwrap()
                    .refused
                    .push((peer, reason)),
                Effect::Forget { peer, .. } => {
                    self.nodes.get_mut(node).unwrap().persisted.remove(&peer);
                }
                // Clock offsets are the node machine's (tests/node_sim.rs).
                Effect::ClockSample { .. } => {}
            }
        }
    }

    fn send(
        &mut self,
        from: &NodeId,
        from_addr: SocketAddr,
        to_addr: SocketAddr,
        expect: Option<NodeId>,
        msg: Msg,
    ) {
        if self.rng.gen_bool(self.drop_rate) {
            return;
        }
        let copies = if self.rng.gen_bool(self.dup_rate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let at = self.now + self.rng.gen_range(1..=20);
            let seq = self.next_seq;
            self.next_seq += 1;
            self.queue.push(Reverse((at, seq)));
            self.packets.insert(
                seq,
                Packet {
                    from: from.clone(),
                    from_addr,
                    to_addr,
                    expect: expect.clone(),
                    msg: msg.clone(),
                },
            );
        }
    }

    fn deliver_due(&mut self) {
        while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
            if at > self.now {
                break;
            }
            self.queue.pop();
            let p = self.packets.remove(&seq).unwrap();
            let Some(to) = self.by_addr.get(&p.to_addr).cloned() else {
                continue;
            };
            if p.expect.as_ref().is_some_and(|e| *e != to) {
                continue; // certificate names another node: transport refuses
            }
            if self.blocked.contains(&(p.from.clone(), to.clone())) {
                continue;
            }
            let sender_up = self.nodes.get(&p.from).is_some_and(|n| n.up);
            let Some(n) = self.nodes.get_mut(&to) else {
                continue;
            };
            if !n.up || !sender_up {
                continue;
            }
            let fx = n.m.on_message(&p.from, p.from_addr, p.msg, at);
            self.apply(&to, fx);
        }
    }

    fn run_for(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.now += STEP_MS;
            self.deliver_due();
            if self.now % 100 == 0 {
                let ids: Vec<NodeId> = self.nodes.keys().cloned().collect();
                for nid in ids {
                    let n = self.nodes.get_mut(&nid).unwrap();
                    if !n.up {
                        continue;
                    }
                    let fx = n.m.tick(self.now, &mut self.rng);
                    self.apply(&nid, fx);
                }
            }
        }
    }

    fn partition(&mut self, left: &[&str], right: &[&str]) {
        for a in left {
            for b in right {
                self.blocked.insert((id(a), id(b)));
                self.blocked.insert((id(b), id(a)));
            }
        }
    }

    fn status(&self, node: &str, peer: &str) -> Option<Status> {
        self.nodes[&id(node)].m.status_of(&id(peer))
    }

    /// Every up node knows every other node (up ones) as alive.
    fn all_alive(&self) -> bool {
        let up: Vec<&NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.up)
            .map(|(k, _)| k)
            .collect();
        up.iter().all(|a| {
            up.iter()
                .filter(|b| a != *b)
                .all(|b| self.nodes[*a].m.status_of(b) == Some(Status::Alive))
        })
    }

    fn run_until_all_alive(&mut self, deadline_ms: u64) -> u64 {
        let start = self.now;
        while !self.all_alive() {
            assert!(
                self.now - start < deadline_ms,
                "not all alive after {deadline_ms} ms: {:#?}",
                self.views()
            );
            self.run_for(STEP_MS);
        }
        self.now - start
    }

    fn views(&self) -> Vec<(String, Vec<(String, Status)>)> {
        self.nodes
            .iter()
            .map(|(k, n)| {
                (
                    k.to_string(),
                    n.m.members(self.now)
                        .into_iter()
                        .map(|v| (v.node_id.to_string(), v.status))
                        .collect(),
                )
            })
            .collect()
    }

    fn first_change(&self, node: &str, peer: &str, to: Status, after: u64) -> Option<u64> {
        self.changes
            .iter()
            .find(|c| c.at >= after && c.node == id(node) && c.peer == id(peer) && c.to == to)
            .map(|c| c.at)
    }
}

const NAMES: [&str; 5] = ["n1", "n2", "n3", "n4", "n5"];

#[test]
fn five_nodes_joining_through_one_seed_all_know_all_and_are_alive() {
    for seed in seeds(1) {
        let mut sim = Sim::cluster(seed, 5);
        let took = sim.run_until_all_alive(3_000);
        assert!(took < 2_000, "took {took} ms");
        for n in NAMES {
            let node = &sim.nodes[&id(n)];
            assert!(node.m.is_joined(), "{n} still joining");
            assert_eq!(node.m.members(sim.now).len(), 4, "{n}");
            assert_eq!(node.m.alive_peers().len(), 4, "{n}");
            // Every peer is remembered for the next start.
            assert_eq!(
                node.persisted.len(),
                4,
                "{n} persisted {:?}",
                node.persisted
            );
        }
        // And they stay alive under steady heartbeats (no false suspicion).
        let since = sim.now;
        sim.run_for(30_000);
        assert!(sim.all_alive());
        assert!(
            sim.changes.iter().all(|c| c.at <= since),
            "{:?}",
            sim.changes
        );
        let v = &sim.nodes[&id("n1")].m.members(sim.now)[0];
        assert!(v.rtt_ms.is_some_and(|r| (2.0..=40.0).contains(&r)), "{v:?}");
        assert!(
            v.phi < 8.0 && v.last_seen_ms_ago.is_some_and(|a| a < 1_000),
            "{v:?}"
        );
    }
}

#[test]
fn join_converges_despite_drops_duplicates_and_reordering() {
    for seed in seeds(7) {
        let mut sim = Sim::new(seed);
        sim.drop_rate = 0.05;
        sim.dup_rate = 0.05;
        for (i, n) in NAMES.iter().enumerate() {
            sim.add(n, addr_of(i + 1), 1);
        }
        for n in &NAMES[1..] {
            sim.join(n, &[addr_of(1)]);
        }
        sim.run_until_all_alive(10_000);
        sim.run_for(20_000);
        assert!(sim.all_alive(), "{:#?}", sim.views());
    }
}

#[test]
fn join_retries_until_a_seed_answers() {
    for seed in seeds(3) {
        let mut sim = Sim::new(seed);
        sim.add("n1", addr_of(1), 1);
        sim.add("n2", addr_of(2), 1);
        sim.node("n1").up = false;
        // One unreachable address first, then the real (down) seed.
        sim.join("n2", &[addr_of(9), addr_of(1)]);
        sim.run_for(10_000);
        assert!(!sim.nodes[&id("n2")].m.is_joined());
        sim.node("n1").up = true;
        sim.run_until_all_alive(10_000);
        assert!(sim.nodes[&id("n2")].m.is_joined());
    }
}

#[test]
fn killed_node_is_suspect_then_dead_within_bounds_and_alive_when_back() {
    for seed in seeds(11) {
        let mut sim = Sim::cluster(seed, 5);
        sim.run_until_all_alive(3_000);
        sim.run_for(5_000);
        let killed_at = sim.now;
        sim.node("n3").up = false;
        sim.run_for(12_000);
        let survivors = ["n1", "n2", "n4", "n5"];
        // The first suspicion anywhere starts the clock: it spreads, and so
        // does the death its suspicion timeout declares.
        let first_suspect = survivors
            .iter()
            .filter_map(|n| sim.first_change(n, "n3", Status::Suspect, killed_at))
            .min()
            .expect("nobody suspected n3");
        for n in survivors {
            let s = sim
                .first_change(n, "n3", Status::Suspect, killed_at)
                .unwrap_or_else(|| panic!("{n} never suspected n3"));
            let d = sim
                .first_change(n, "n3", Status::Dead, killed_at)
                .unwrap_or_else(|| panic!("{n} never declared n3 dead"));
            // Suspect within a probe timeout (1 s) of a probe, a period
            // or two to be probed, and a few periods for the news to spread.
            assert!(
                s - killed_at <= 3_000,
                "{n} suspected after {} ms",
                s - killed_at
            );
            // (A ping in flight at the kill counts: its timeout started a
            // round trip, at most 40 ms here, before.)
            assert!(s - killed_at >= 960, "{n} suspected too early");
            // Dead once the first suspicion's timeout (6 s for 5 nodes)
            // ran out, here or at the node whose news reached us.
            assert!(
                (6_000..=7_500).contains(&(d - first_suspect)) && d >= s,
                "{n}: dead {} ms after the first suspicion, {} after its own",
                d - first_suspect,
                d - s
            );
            assert_eq!(sim.status(n, "n3"), Some(Status::Dead));
            assert!(!sim.nodes[&id(n)]
                .m
                .alive_peers()
                .iter()
                .any(|(p, _)| *p == id("n3")));
            // The others are unaffected.
            assert_eq!(sim.nodes[&id(n)].m.alive_peers().len(), 3);
        }
        sim.node("n3").up = true;
        let took = sim.run_until_all_alive(5_000);
        // Dead peers are probed every 2 s; n3 itself pings everyone at once.
        assert!(took <= 2_500, "back after {took} ms");
    }
}

#[test]
fn partition_heals_with_everyone_alive_and_no_permanent_dead() {
    for seed in seeds(21) {
        let mut sim = Sim::cluster(seed, 5);
        sim.run_until_all_alive(3_000);
        sim.partition(&["n1", "n2"], &["n3", "n4", "n5"]);
        sim.run_for(15_000);
        assert_eq!(sim.status("n1", "n3"), Some(Status::Dead));
        assert_eq!(sim.status("n5", "n2"), Some(Status::Dead));
        assert_eq!(sim.status("n1", "n2"), Some(Status::Alive));
        assert_eq!(sim.status("n3", "n5"), Some(Status::Alive));
        // Both sides told the other side's members they were dead at some
        // point? Not yet: they cannot reach them. After the heal they refute.
        sim.blocked.clear();
        let took = sim.run_until_all_alive(5_000);
        assert!(took <= 2_500, "healed after {took} ms");
        // Hearing "you are dead" made nodes refute, which is what let the far
        // side re-probe them at once instead of waiting for the dead-probe timer.
        assert!(sim.nodes.values().any(|n| n.m.stats().refutations > 0));
        let healed_at = sim.now;
        sim.run_for(20_000);
        assert!(sim.all_alive(), "{:#?}", sim.views());
        assert!(
            sim.changes.iter().all(|c| c.at <= healed_at),
            "flapping after heal: {:?}",
            sim.changes
                .iter()
                .filter(|c| c.at > healed_at)
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn restarted_node_rejoins_from_persisted_peers_without_seeds_even_on_a_new_address() {
    for seed in seeds(31) {
        let mut sim = Sim::cluster(seed, 5);
        sim.run_until_all_alive(3_000);
        // Crash n4: its state is gone except what it persisted.
        let records: Vec<(NodeId, PeerRecord)> = sim.nodes[&id("n4")]
            .persisted
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(records.len(), 4);
        let old_inc = sim.nodes[&id("n4")].m.incarnation();
        sim.node("n4").up = false;
        sim.run_for(12_000);
        assert_eq!(sim.status("n1", "n4"), Some(Status::Dead));

        // Restart on another address, with the same incarnation (a sloppy shell):
        // refutation must still make the new address win.
        sim.nodes.remove(&id("n4"));
        sim.by_addr.remove(&addr_of(4));
        let new_addr = SocketAddr::from(([10, 0, 1, 4], 7001));
        sim.add("n4", new_addr, old_inc);
        let now = sim.now;
        let fx = sim.node("n4").m.restore(records, now);
        sim.apply(&id("n4"), fx);
        assert!(!sim.nodes[&id("n4")].m.is_joined());
        sim.run_until_all_alive(3_000);
        assert!(sim.nodes[&id("n4")].m.is_joined());
        sim.run_for(2_000);
        for n in ["n1", "n2", "n3", "n5"] {
            let node = &sim.nodes[&id(n)];
            let (_, a) = node
                .m
                .alive_peers()
                .into_iter()
                .find(|(p, _)| *p == id("n4"))
                .unwrap();
            assert_eq!(a, new_addr, "{n} still dials the old address");
            assert_eq!(node.persisted[&id("n4")].addr, new_addr.to_string());
        }
    }
}

#[test]
fn hello_from_an_impostor_is_refused_and_changes_nothing() {
    let mut sim = Sim::cluster(41, 3);
    sim.run_until_all_alive(3_000);
    let before = sim.nodes[&id("n2")].m.members(sim.now);
    // n3 (authenticated as n3) claims to be n1, advertising its own address.
    let n3_addr = addr_of(3);
    sim.send(
        &id("n3"),
        n3_addr,
        addr_of(2),
        Some(id("n2")),
        Msg::Hello {
            member: MemberInfo {
                id: id("n1"),
                addr: n3_addr,
                incarnation: 999,
                status: Status::Alive,
                http: None,
                head: 0,
            },
        },
    );
    sim.run_for(100);
    let n2 = &sim.nodes[&id("n2")];
    assert_eq!(
        n2.refused,
        vec![(id("n3"), RefuseReason::ClaimedOtherId { claimed: id("n1") })]
    );
    assert_eq!(n2.m.stats().refused, 1);
    let after = n2.m.members(sim.now);
    let n1_before = before.iter().find(|v| v.node_id == id("n1")).unwrap();
    let n1_after = after.iter().find(|v| v.node_id == id("n1")).unwrap();
    assert_eq!(n1_after.addr, n1_before.addr);
    assert_eq!(n1_after.incarnation, n1_before.incarnation);
    assert_eq!(n2.persisted[&id("n1")].addr, addr_of(1).to_string());
}

#[test]
fn same_seed_gives_same_history() {
    let run = |seed| {
        let mut sim = Sim::cluster(seed, 5);
        sim.drop_rate = 0.1;
        sim.run_for(5_000);
        sim.partition(&["n1"], &["n2", "n3", "n4", "n5"]);
        sim.run_for(10_000);
        sim.blocked.clear();
        sim.run_for(5_000);
        sim.changes
    };
    let a = run(99);
    assert!(!a.is_empty());
    assert_eq!(a, run(99));
}

#[test]
fn departed_node_is_left_not_dead_and_comes_back_when_restarted() {
    for seed in seeds(51) {
        let mut sim = Sim::cluster(seed, 4);
        sim.run_until_all_alive(3_000);
        let now = sim.now;
        let fx = sim.node("n2").m.leave(now);
        assert_eq!(fx.len(), 3);
        sim.apply(&id("n2"), fx);
        sim.run_for(100);
        sim.node("n2").up = false;
        sim.run_for(15_000);
        for n in ["n1", "n3", "n4"] {
            assert_eq!(sim.status(n, "n2"), Some(Status::Left), "{n}");
            assert_eq!(sim.nodes[&id(n)].m.alive_peers().len(), 2);
        }
        // Left is not dead: nobody declared it dead, nobody probes it.
        assert!(!sim
            .changes
            .iter()
            .any(|c| c.peer == id("n2") && c.to == Status::Dead));

        // Restarted (same incarnation) from its persisted peers: alive again.
        let records: Vec<_> = sim.nodes[&id("n2")].persisted.clone().into_iter().collect();
        let inc = sim.nodes[&id("n2")].m.incarnation();
        sim.nodes.remove(&id("n2"));
        sim.add("n2", addr_of(2), inc);
        let now = sim.now;
        let fx = sim.node("n2").m.restore(records, now);
        sim.apply(&id("n2"), fx);
        sim.run_until_all_alive(3_000);
        sim.run_for(10_000);
        assert!(sim.all_alive(), "{:#?}", sim.views());
    }
}

#[test]
fn one_way_link_loss_does_not_inflate_incarnations_and_heals() {
    for seed in seeds(61) {
        let mut sim = Sim::cluster(seed, 3);
        sim.run_until_all_alive(3_000);
        let incs: Vec<u64> = sim.nodes.values().map(|n| n.m.incarnation()).collect();
        // n1 can no longer reach n2; n2 still reaches n1.
        sim.blocked.insert((id("n1"), id("n2")));
        sim.run_for(30_000);
        for (n, before) in sim.nodes.values().zip(&incs) {
            assert!(
                n.m.incarnation() <= before + 2,
                "{} incarnation {} -> {}",
                n.m.id(),
                before,
                n.m.incarnation()
            );
        }
        // The third node, which reaches both, keeps both alive.
        assert_eq!(sim.status("n3", "n1"), Some(Status::Alive));
        assert_eq!(sim.status("n3", "n2"), Some(Status::Alive));
        sim.blocked.clear();
        sim.run_until_all_alive(3_000);
        let healed_at = sim.now;
        sim.run_for(10_000);
        assert!(sim.changes.iter().all(|c| c.at <= healed_at));
    }
}

#[test]
fn dead_peer_is_forgotten_after_the_grace_period_by_every_node_and_not_relearned() {
    let config = Config {
        remove_dead_after_ms: 10_000,
        ..Config::default()
    };
    for seed in seeds(61) {
        let mut sim = Sim::cluster_with(seed, 5, config.clone());
        sim.run_until_all_alive(3_000);
        sim.node("n3").up = false;
        sim.run_for(12_000);
        for n in NAMES.iter().filter(|n| **n != "n3") {
            assert_eq!(sim.status(n, "n3"), Some(Status::Dead), "{n}");
        }
        // Dead at ~8 s; forgotten 10 s later. Gossip between nodes that
        // forgot at slightly different times must not teach it back.
        sim.run_for(40_000);
        for n in NAMES.iter().filter(|n| **n != "n3") {
            let node = &sim.nodes[&id(n)];
            assert_eq!(node.m.status_of(&id("n3")), None, "{n} still tracks n3");
            assert!(
                !node.persisted.contains_key(&id("n3")),
                "{n} would restore n3"
            );
            assert_eq!(node.m.members(sim.now).len(), 3, "{n}");
            assert_eq!(node.m.stats().forgotten, 1, "{n}");
        }
        assert!(sim.all_alive());
        // A forgotten node that comes back is known again at its first ping.
        sim.node("n3").up = true;
        sim.run_until_all_alive(5_000);
    }
}

/// A fleet of 200 (SWIM): each node's probes and acks per second do not
/// depend on the fleet size, nobody is suspected while all are up, and a
/// crash is suspected, then dead, at every node within the suspicion
/// timeout (6 s × log10 200 ≈ 13.8 s) plus O(log N) periods of gossip.
#[test]
fn fleet_of_200_detects_a_crash_everywhere_in_log_time_at_constant_cost_per_node() {
    let n = 200;
    for seed in seeds(81).take(1) {
        let mut sim = Sim::cluster(seed, n);
        let start = sim.now;
        while !sim.all_alive() {
            assert!(sim.now - start < 60_000, "seed {seed}: fleet not formed");
            sim.run_for(100);
        }
        let since = sim.now;
        let sent = sim.next_seq;
        sim.run_for(10_000);
        let per_node_s = (sim.next_seq - sent) as f64 / n as f64 / 10.0;
        // 4 pings and 4 acks per 500 ms period.
        assert!(per_node_s <= 17.0, "{per_node_s} messages per node per s");
        assert!(
            sim.changes.iter().all(|c| c.at <= since),
            "seed {seed}: false suspicion: {:?}",
            sim.changes.iter().find(|c| c.at > since)
        );
        let victim = "n100";
        sim.node(victim).up = false;
        let killed_at = sim.now;
        let others: Vec<String> = (1..=n)
            .map(|i| format!("n{i}"))
            .filter(|m| m != victim)
            .collect();
        let all = |sim: &Sim, s: Status| others.iter().all(|o| sim.status(o, victim) == Some(s));
        while !all(&sim, Status::Suspect) && !all(&sim, Status::Dead) {
            assert!(
                sim.now - killed_at < 8_000,
                "seed {seed}: not suspected everywhere"
            );
            sim.run_for(100);
        }
        let suspected = sim.now - killed_at;
        while !all(&sim, Status::Dead) {
            assert!(
                sim.now - killed_at < 25_000,
                "seed {seed}: not dead everywhere"
            );
            sim.run_for(100);
        }
        let dead = sim.now - killed_at;
        assert!(
            suspected <= 5_000,
            "seed {seed}: suspected everywhere after {suspected} ms"
        );
        assert!(
            dead >= 13_800,
            "seed {seed}: dead after {dead} ms, before the timeout"
        );
        eprintln!("seed {seed}: 200 nodes, {per_node_s:.1} msgs/node/s; crash suspected everywhere after {suspected} ms, dead after {dead} ms");
    }
}
