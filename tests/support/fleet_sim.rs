//! A fleet in the deterministic simulation: each node is the real
//! protocol machine (`NodeMachine`: membership, replication and the
//! routing between them) with the shipped default settings, over a
//! simulated network (1–4 ms per message, no loss: `sim_net`) and a
//! simulated clock (time jumps to the next message or tick), on the
//! in-memory store model (`mem_store`), so a thousand nodes fit in one
//! process. [`measure`] runs the scenario `benches/fleet.rs` reports and
//! `tests/fleet_sim.rs` checks: formation, a write, a join, a crash.
//! Included with `#[path = "support/fleet_sim.rs"] mod fleet_sim;`.
#![allow(dead_code)]

#[path = "mem_store.rs"]
mod mem_store;
#[path = "sim_net.rs"]
pub mod sim_net;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use hub::cluster::node_machine::{Input, NodeMachine, Now, Output};
use hub::cluster::Message;
use hub::membership::{self, Status};
use hub::model::NodeId;
use hub::placement::{self, Layout, PlacementHandle};
use hub::replication::{Msg, ReplicationConfig};
use mem_store::MemStore;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
pub use sim_net::Link;
use sim_net::Net;

/// Wall clock at simulated time 0.
const T0: u64 = 1_700_000_000_000;
/// How often each machine's timers run (the driver's tick).
pub const TICK_MS: u64 = 50;
pub const LINK: Link = Link {
    drop: 0.0,
    dup: 0.0,
    max_delay_ms: 4,
};

struct Node {
    id: NodeId,
    addr: SocketAddr,
    store: MemStore,
    machine: Option<NodeMachine>,
}

#[derive(Default, Clone, Copy)]
pub struct Traffic {
    pub membership_msgs: u64,
    pub membership_bytes: u64,
    pub replication_msgs: u64,
    pub replication_bytes: u64,
}

pub struct Sim {
    /// Replication factor of every node (`None`: every node holds every key).
    r: Option<usize>,
    rng: StdRng,
    now: u64,
    next_tick: u64,
    nodes: Vec<Node>,
    by_addr: HashMap<SocketAddr, usize>,
    net: Net<Message>,
    inputs: VecDeque<(usize, Input)>,
    traffic: Traffic,
    /// Hops that delivered the tracked key to each node.
    hops: HashMap<usize, u32>,
    tracked: Option<String>,
}

fn addr_of(i: usize) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 7000))
}

/// Whether `msg` carries the value of `key` (a stub does not).
fn carries(msg: &Message, key: &str) -> bool {
    match msg {
        Message::Replication(Msg::Push { deltas, .. })
        | Message::Replication(Msg::PullResponse { deltas, .. }) => deltas
            .iter()
            .any(|d| d.key == key && !placement::is_stub(&d.entry)),
        Message::Replication(Msg::AeEntries { entries, .. })
        | Message::Replication(Msg::AeLeafDiff { entries, .. }) => entries
            .iter()
            .any(|(k, e)| k == key && !placement::is_stub(e)),
        _ => false,
    }
}

impl Sim {
    fn new(seed: u64, capacity: usize, r: Option<usize>) -> Sim {
        let nodes = (0..capacity)
            .map(|i| Node {
                id: NodeId::new(format!("n{i}")).expect("valid id"),
                addr: addr_of(i),
                store: MemStore::default(),
                machine: None,
            })
            .collect::<Vec<_>>();
        let by_addr = nodes.iter().enumerate().map(|(i, n)| (n.addr, i)).collect();
        Sim {
            r,
            rng: StdRng::seed_from_u64(seed),
            now: 0,
            next_tick: TICK_MS,
            nodes,
            by_addr,
            net: Net::new(capacity, LINK),
            inputs: VecDeque::new(),
            traffic: Traffic::default(),
            hops: HashMap::new(),
            tracked: None,
        }
    }

    fn now_of(&self) -> Now {
        Now::from_millis(self.now, T0 + self.now)
    }

    fn start(&mut self, i: usize, join: Option<usize>) {
        let now = self.now_of();
        let mut machine = NodeMachine::new(
            self.nodes[i].id.clone(),
            self.nodes[i].addr,
            now.wall_ms(),
            membership::Config::default(),
            ReplicationConfig {
                replication_factor: self.r,
                ..ReplicationConfig::default()
            },
            0,
            hub::clock::FenceConfig {
                max_offset_us: 500_000,
                grace_ms: 0,
                accept_clock_ahead: true,
            },
            self.rng.gen(),
        )
        .expect("valid config");
        // The store keeps what the machine's layout says this node owns.
        let owned = self.nodes[i].store.owned().clone();
        machine.set_placement(PlacementHandle::new(self.nodes[i].id.clone(), owned));
        let join: Vec<SocketAddr> = join.map(|j| self.nodes[j].addr).into_iter().collect();
        let out = machine.start(Vec::new(), &join, now, &self.nodes[i].store);
        self.nodes[i].machine = Some(machine);
        self.outputs(i, out);
    }

    fn crash(&mut self, i: usize) {
        self.nodes[i].machine = None;
        // Its messages in flight still arrive (they were sent); the network
        // drops everything to or from it from now on.
        self.net.side[i] = 1;
    }

    fn up(&self, i: usize) -> bool {
        self.nodes[i].machine.is_some()
    }

    fn handle(&mut self, i: usize, input: Input) {
        let now = self.now_of();
        let node = &mut self.nodes[i];
        let Some(m) = node.machine.as_mut() else {
            return;
        };
        let out = m.handle(input, now, &node.store);
        self.outputs(i, out);
    }

    fn outputs(&mut self, i: usize, outputs: Vec<Output>) {
        for o in outputs {
            match o {
                Output::Send { addr, msg, .. } => {
                    let Some(&j) = self.by_addr.get(&addr) else {
                        continue;
                    };
                    let bytes = bincode::serde::encode_to_vec(&msg, bincode::config::standard())
                        .map(|b| b.len() as u64 + 4)
                        .unwrap_or(0);
                    match msg {
                        Message::Membership(_) => {
                            self.traffic.membership_msgs += 1;
                            self.traffic.membership_bytes += bytes;
                        }
                        Message::Replication(_) => {
                            self.traffic.replication_msgs += 1;
                            self.traffic.replication_bytes += bytes;
                        }
                    }
                    self.net.send(&mut self.rng, self.now, i, j, msg);
                }
                Output::Commit { tag, ops } => {
                    // A disk that is done at once: outcome, then the deltas
                    // it made fresh, as the committer reports them.
                    let outcomes = self.nodes[i].store.apply(&ops);
                    let fresh = mem_store::fresh(&ops, &outcomes);
                    self.inputs.push_back((
                        i,
                        Input::CommitDone {
                            tag,
                            result: Ok(outcomes),
                        },
                    ));
                    if !fresh.is_empty() {
                        self.inputs
                            .push_back((i, Input::Committed(Arc::new(fresh))));
                    }
                }
                Output::Persist { .. }
                | Output::Forget { .. }
                | Output::WriteFence(_)
                | Output::WriteDone(_)
                | Output::ReadDone(_) => {}
            }
        }
    }

    fn drain_inputs(&mut self) {
        while let Some((i, input)) = self.inputs.pop_front() {
            self.handle(i, input);
        }
    }

    /// Jumps to the next deadline and runs everything due then.
    fn step(&mut self) {
        let next_msg = self.net.next_due().unwrap_or(u64::MAX);
        self.now = self.now.max(next_msg.min(self.next_tick));
        while let Some((from, to, msg)) = self.net.pop_due(self.now) {
            if let Some(key) = &self.tracked {
                if !self.hops.contains_key(&to) && carries(&msg, key) {
                    let h = self.hops.get(&from).copied().unwrap_or(0) + 1;
                    self.hops.insert(to, h);
                }
            }
            let input = Input::Message {
                from: self.nodes[from].id.clone(),
                addr: self.nodes[from].addr,
                msg,
            };
            self.handle(to, input);
            self.drain_inputs();
        }
        if self.now >= self.next_tick {
            self.next_tick = self.now + TICK_MS;
            for i in 0..self.nodes.len() {
                self.handle(i, Input::Tick);
                self.drain_inputs();
            }
        }
    }

    /// Runs until `done` holds (checked every `every_ms` of simulated
    /// time; 1: at every step) or `limit_ms` passed; the simulated ms it took.
    fn run_until(
        &mut self,
        limit_ms: u64,
        every_ms: u64,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Option<u64> {
        let start = self.now;
        let mut last_check = u64::MAX;
        while self.now - start <= limit_ms {
            if self.now / every_ms != last_check {
                last_check = self.now / every_ms;
                if done(self) {
                    return Some(self.now - start);
                }
            }
            self.step();
        }
        None
    }

    fn run_for(&mut self, ms: u64) {
        let until = self.now + ms;
        while self.now < until {
            self.step();
        }
    }

    fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|&i| self.up(i))
    }

    /// What node `i` thinks of `peer`.
    fn status(&self, i: usize, peer: usize) -> Option<Status> {
        self.nodes[i]
            .machine
            .as_ref()?
            .membership()
            .status_of(&self.nodes[peer].id)
    }

    /// `i` and every one of `members` know each other alive.
    fn knows_and_known(&self, i: usize, members: &[usize]) -> bool {
        members.iter().all(|&j| {
            i == j
                || (self.status(i, j) == Some(Status::Alive)
                    && self.status(j, i) == Some(Status::Alive))
        })
    }

    fn knows_all_alive(&self, members: &[usize]) -> bool {
        members.iter().all(|&i| {
            members
                .iter()
                .all(|&j| i == j || self.status(i, j) == Some(Status::Alive))
        })
    }
}

pub struct Figures {
    pub n: usize,
    /// Replication factor (`None`: every node holds every key).
    pub r: Option<usize>,
    pub formed_ms: Option<u64>,
    /// A write until every node that must hold its value does (every node;
    /// with sharding, every owner of its partition), and the longest hop
    /// chain that delivered the value to one of them.
    pub write_ms: Option<u64>,
    pub write_hops: u32,
    /// With sharding: until every owner's version vector covers the write
    /// (what its cumulative durable ack reports, so what `w=all` waits
    /// for). Non-owners never hear of it: their vector moves over it only
    /// with the next push or pull of their own partitions from the origin.
    pub write_vv_ms: Option<u64>,
    pub join_ms: Option<u64>,
    /// With sharding: until every node computed the same layout (the same
    /// eligible members: the layout is a pure function of them).
    pub join_layout_ms: Option<u64>,
    pub suspect_ms: Option<u64>,
    pub dead_ms: Option<u64>,
    /// With sharding: from the crash until no node's layout holds the dead
    /// node (it stays eligible for the rebalance grace period after dying).
    pub death_layout_ms: Option<u64>,
    pub idle: Traffic,
    pub idle_secs: u64,
    pub wall: std::time::Duration,
}

impl Sim {
    /// Every node in `nodes` has computed its layout from exactly `members`.
    fn same_layout(&self, nodes: &[usize], members: &[NodeId]) -> bool {
        nodes.iter().all(|&i| {
            self.nodes[i]
                .machine
                .as_ref()
                .is_some_and(|m| m.replicator().layout().members == members)
        })
    }

    fn ids(&self, nodes: &[usize]) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = nodes.iter().map(|&i| self.nodes[i].id.clone()).collect();
        ids.sort();
        ids
    }
}

/// [`measure_sharded`] with full replication.
pub fn measure(n: usize, seed: u64, settle_ms: u64, idle_secs: u64) -> Figures {
    measure_sharded(n, seed, settle_ms, idle_secs, None)
}

/// Forms a fleet of `n` (each joins through a random earlier node) with
/// replication factor `r`, lets it settle for `settle_ms`, counts
/// `idle_secs` of idle traffic, then times a write, a join through a random
/// member and the crash of a random member until every node knows.
pub fn measure_sharded(
    n: usize,
    seed: u64,
    settle_ms: u64,
    idle_secs: u64,
    r: Option<usize>,
) -> Figures {
    let started = Instant::now();
    // n members, plus one spare (no machine until it joins).
    let mut sim = Sim::new(seed, n + 1, r);
    sim.start(0, None);
    for i in 1..n {
        // Each joins through a random earlier node (any member will do).
        let via = sim.rng.gen_range(0..i);
        sim.start(i, Some(via));
    }
    let members: Vec<usize> = (0..n).collect();
    let formed_ms = sim.run_until(600_000, 100, |s| s.knows_all_alive(&members));
    // Let join pulls and anti-entropy settle, then count an idle window.
    sim.run_for(settle_ms);
    let before = sim.traffic;
    sim.run_for(idle_secs * 1_000);
    let after = sim.traffic;
    let idle = Traffic {
        membership_msgs: after.membership_msgs - before.membership_msgs,
        membership_bytes: after.membership_bytes - before.membership_bytes,
        replication_msgs: after.replication_msgs - before.replication_msgs,
        replication_bytes: after.replication_bytes - before.replication_bytes,
    };

    // A write until every node that must hold it does. With sharding it is
    // made at an owner of the key (any other node forwards it to one).
    let key = "fleet/probe".to_string();
    let layout = Layout::compute(sim.ids(&members), r);
    let owners: Vec<usize> = layout
        .owners(placement::partition_of(&key))
        .iter()
        .filter_map(|id| members.iter().copied().find(|&i| sim.nodes[i].id == *id))
        .collect();
    let origin = *owners.choose(&mut sim.rng).expect("owners");
    let now = sim.now_of();
    let d = sim.nodes[origin]
        .store
        .write(&sim.nodes[origin].id, &key, now.wall_ms());
    let (origin_id, seq) = (d.origin.clone(), d.seq);
    sim.tracked = Some(key.clone());
    sim.hops.insert(origin, 0);
    sim.inputs
        .push_back((origin, Input::Committed(Arc::new(vec![d]))));
    sim.drain_inputs();
    let t0 = sim.now;
    let write_ms = sim.run_until(120_000, 1, |s| {
        owners.iter().all(|&i| s.nodes[i].store.has(&key))
    });
    let write_hops = owners
        .iter()
        .filter_map(|i| sim.hops.get(i))
        .copied()
        .max()
        .unwrap_or(0);
    sim.tracked = None;
    let write_vv_ms = match r {
        None => None,
        Some(_) => sim
            .run_until(120_000, 1, |s| {
                owners
                    .iter()
                    .all(|&i| s.nodes[i].store.covers(&origin_id, seq))
            })
            .map(|_| sim.now - t0),
    };

    // A join through a random member until everyone knows it.
    let via = sim.rng.gen_range(0..n);
    sim.start(n, Some(via));
    let mut all: Vec<usize> = members.clone();
    all.push(n);
    let t0 = sim.now;
    let join_ms = sim.run_until(300_000, 1, |s| s.knows_and_known(n, &all));
    let join_layout_ms = match r {
        None => None,
        Some(_) => {
            let ids = sim.ids(&all);
            sim.run_until(300_000, 1, |s| s.same_layout(&all, &ids))
                .map(|_| sim.now - t0)
        }
    };
    sim.run_for(5_000);

    // A crash of a random member until every live node knows.
    let victim = *members.choose(&mut sim.rng).expect("members");
    sim.crash(victim);
    let survivors: Vec<usize> = all.iter().copied().filter(|&i| i != victim).collect();
    let t0 = sim.now;
    let suspect_ms = sim.run_until(600_000, 1, |s| {
        survivors
            .iter()
            .all(|&i| s.status(i, victim) != Some(Status::Alive))
    });
    let dead_ms = sim
        .run_until(600_000, 1, |s| {
            survivors
                .iter()
                .all(|&i| s.status(i, victim) == Some(Status::Dead))
        })
        .map(|_| sim.now - t0);
    let death_layout_ms = match r {
        None => None,
        Some(_) => {
            let ids = sim.ids(&survivors);
            sim.run_until(600_000, 10, |s| s.same_layout(&survivors, &ids))
                .map(|_| sim.now - t0)
        }
    };
    Figures {
        n,
        r,
        formed_ms,
        write_ms,
        write_hops,
        write_vv_ms,
        join_ms,
        join_layout_ms,
        suspect_ms,
        dead_ms,
        death_layout_ms,
        idle,
        idle_secs,
        wall: started.elapsed(),
    }
}
