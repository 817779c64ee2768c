//! One node's protocol logic as a plain state machine: membership and
//! replication, the routing between them, and the own-origin write fence.
//!
//! Sans-IO like the two machines it composes: inputs (a message from a peer,
//! a tick, a commit's outcome, a newly durable batch) come in with the time,
//! outputs (messages to send, operations to commit, peer records to persist,
//! fence changes) go out. Two clocks come in, kept apart on purpose:
//! monotonic time drives every timer (membership's failure detector,
//! replication's pulls, anti-entropy and timeouts, the start-up grace
//! period); wall-clock time only stamps pings for clock offsets and bounds
//! which peer stamps our hybrid logical clock adopts.
//!
//! **Clock fence** ([`crate::clock::fence`]): membership's ping/ack round
//! trips measure each peer's clock offset; the fence compares this node's
//! clock with the cluster median and refuses local writes while it is the
//! outlier, unverified at start, or its persisted HLC is ahead of its wall
//! clock. Replicated data is never refused for a clock. State is read through a
//! [`ReplicaReader`]; the machine never writes to disk itself. The tokio
//! driver and the whole-node simulation (`tests/node_sim.rs`) both drive it.
//!
//! Routing: a peer membership reports alive is handed to replication as up
//! (pull at once, anti-entropy shortly), one that stops being alive as down;
//! replication's messages go to the address membership knows for the peer
//! (none known: dropped, pull and anti-entropy repair it).
//!
//! **Own-origin fence.** A node must never reuse one of its own sequence
//! numbers: if it was restored from an old copy or lost its tail, peers may
//! hold deltas `seq > ours` of our own origin, and a fresh local write would
//! reuse such a seq with different content, which no peer would ever take
//! (it is a duplicate to them) — silent divergence. So the machine watches
//! every version vector a peer sends (pull requests, anti-entropy roots) and
//! every delta of our origin a peer pushes; when a peer holds more of our
//! origin than we do, local writes are fenced ([`Output::WriteFence`]) and
//! we pull from that peer until our own entry has caught up (anti-entropy
//! finishes the job when the peer's log was trimmed). At start, a node that
//! remembers peers (a restart, possibly on an old copy) fences local writes
//! until the first peer's vector has been checked, or `contact_grace_ms`
//! passed without one (then it writes, as an AP node must, and says so in
//! the log). A fresh directory is not fenced at start: only a wiped
//! directory reusing a node id could be behind, and it is fenced as soon as
//! a peer's vector shows it.
//! Cost: one version-vector read per input; nothing when not fenced.

use std::net::SocketAddr;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::quorum::{replicas_for, Level};
use super::{ClusterView, Message, SelfView};
use crate::clock::{Fence, FenceConfig, FenceState, Verdict};
use crate::membership::{self, Membership, Status};
use crate::model::{Delta, NodeId};
use crate::replication::quorum::{QuorumTracker, WriteResolved};
use crate::replication::read_quorum::{ReadAction, ReadCoordinator, ReadResolved};
use crate::replication::{self, Msg, ReplicaReader, ReplicationConfig, Replicator};
use crate::store::{Op, Outcome, PeerRecord};
use crate::transport::TransportStats;

/// Default start-up wait for a peer's version vector before local writes
/// are accepted without it.
pub const CONTACT_GRACE_MS: u64 = 3_000;

/// The two clocks of one step (monotonic for timers, wall for HLC stamps
/// and clock offsets).
pub use crate::clock::Now;

#[derive(Debug)]
pub enum Input {
    /// A message from an authenticated peer at `addr`.
    Message {
        from: NodeId,
        addr: SocketAddr,
        msg: Message,
    },
    /// Deltas the committer just made durable (own writes and received ones).
    Committed(Arc<Vec<Delta>>),
    /// [`Input::Committed`] while a quorum write waits: own deltas go to
    /// every live peer, asking for durable acks.
    CommittedForQuorum(Arc<Vec<Delta>>),
    /// Own write `seq` of `key` (durable here) waits for `level` replicas;
    /// answered by [`Output::WriteDone`] with `id`.
    AwaitWrite {
        id: u64,
        key: String,
        seq: u64,
        level: Level,
        timeout_ms: u64,
    },
    /// A client reads `key` from `level` replicas; answered by
    /// [`Output::ReadDone`] with `id`.
    Read {
        id: u64,
        key: String,
        level: Level,
        timeout_ms: u64,
    },
    /// The outcome of an [`Output::Commit`]; `Err` carries the reason.
    CommitDone {
        tag: u64,
        result: Result<Vec<Outcome>, String>,
    },
    /// Run timers; call at least every [`NodeMachine::tick_interval_ms`].
    Tick,
    /// A node heard on the LAN: joined through unless already alive here
    /// (the join is an ordinary mTLS hello; another CA's node gets nowhere).
    Discovered { node_id: String, addr: SocketAddr },
}

#[derive(Debug)]
pub enum Output {
    /// Send to `addr`; `to` is the node its certificate must name, when known.
    Send {
        to: Option<NodeId>,
        addr: SocketAddr,
        msg: Message,
    },
    /// Commit `ops` durably, then feed back [`Input::CommitDone`] with `tag`.
    Commit { tag: u64, ops: Vec<Op> },
    /// Remember this peer across restarts.
    Persist { peer: NodeId, record: PeerRecord },
    /// Forget this departed peer: its record, and its transport state at `addr`.
    Forget { peer: NodeId, addr: SocketAddr },
    /// Local writes are refused from now on with this reason (`Some`), or
    /// accepted again (`None`).
    WriteFence(Option<String>),
    /// A write that waited for acks is done (reached, or failed).
    WriteDone(WriteResolved),
    /// A quorum read is answered (or failed).
    ReadDone(ReadResolved),
}

/// Why local writes wait, if they do.
#[derive(Debug, Default)]
struct OwnOrigin {
    /// Highest seq of our own origin a peer has shown to hold, and which peer.
    behind: Option<(u64, NodeId)>,
    /// Monotonic deadline of the start-up check; `None` once done.
    awaiting_contact: Option<u64>,
    /// The fence as last announced.
    fence: Option<String>,
}

pub struct NodeMachine {
    node: NodeId,
    membership: Membership,
    replicator: Replicator,
    rng: StdRng,
    own: OwnOrigin,
    contact_grace_ms: u64,
    clock_config: FenceConfig,
    /// Judges this node's clock against the cluster; made at `start`.
    fence: Option<Fence>,
    /// Monotonic ms of the last "writes still refused" reminder in the log.
    clock_reminded_ms: u64,
    /// [`NodeMachine::start`] ran: before it, a node that will join has not
    /// begun to, so it must not look joined.
    started: bool,
    /// Partition owners as the node's store and HTTP layer see them.
    placement: Arc<crate::placement::PlacementHandle>,
    /// Owner URLs, and which owners are suspect, last published
    /// (republished when either changes).
    published_urls: std::collections::BTreeMap<NodeId, String>,
    published_suspect: std::collections::BTreeSet<NodeId>,
    /// Own writes waiting for durable acks (write quorums).
    writes: QuorumTracker,
    /// Quorum reads in progress, and their read repair.
    reads: ReadCoordinator,
    /// Counts membership effects that can change what placement and the
    /// clock fence read from the member table (a status, an address or
    /// URL, a forgotten peer), so they rescan the table (O(members)) only
    /// after one, not on every input: a fleet of 1,000 nodes would spend
    /// its time rescanning.
    members_gen: u64,
    /// `members_gen` at the last layout check, and when it ran (the layout
    /// also depends on time — a member dead beyond the grace period stops
    /// being eligible — and a URL can arrive by gossip with no effect:
    /// both are picked up by a recheck every [`LAYOUT_RECHECK_MS`]).
    layout_gen: Option<u64>,
    layout_checked_ms: u64,
    /// Alive peers, counted at `alive_gen` (what the clock fence weighs).
    alive: usize,
    alive_gen: Option<u64>,
}

/// How often the layout is recomputed from the member table with no
/// membership change seen (time-based eligibility: the grace of the dead).
const LAYOUT_RECHECK_MS: u64 = 1_000;

impl NodeMachine {
    /// `incarnation` must grow across restarts (the node uses wall-clock
    /// milliseconds at start); `seed` seeds every random choice.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node: NodeId,
        addr: SocketAddr,
        incarnation: u64,
        membership: membership::Config,
        replication: ReplicationConfig,
        contact_grace_ms: u64,
        clock: FenceConfig,
        seed: u64,
    ) -> Result<NodeMachine, membership::ConfigError> {
        let membership = Membership::new(node.clone(), addr, incarnation, membership)?;
        let replicator = Replicator::new(node.clone(), replication, seed);
        let placement = crate::placement::PlacementHandle::new(
            node.clone(),
            crate::placement::SharedOwned::new(),
        );
        Ok(NodeMachine {
            placement,
            published_urls: Default::default(),
            published_suspect: Default::default(),
            membership,
            replicator,
            rng: StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15),
            own: OwnOrigin::default(),
            contact_grace_ms,
            clock_config: clock,
            fence: None,
            clock_reminded_ms: 0,
            started: false,
            writes: QuorumTracker::new(node.clone()),
            reads: ReadCoordinator::new(),
            node,
            members_gen: 0,
            layout_gen: None,
            layout_checked_ms: 0,
            alive: 0,
            alive_gen: None,
        })
    }

    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// How often [`Input::Tick`] should come (finer is harmless).
    pub fn tick_interval_ms(&self) -> u64 {
        self.membership.config().tick_interval_ms().min(100)
    }

    /// Why local writes are refused right now, if they are.
    pub fn write_fence(&self) -> Option<&str> {
        self.own.fence.as_deref()
    }

    /// The clock fence's latest verdict (`None` before [`NodeMachine::start`]).
    pub fn clock_verdict(&self) -> Option<&Verdict> {
        self.fence.as_ref().map(|f| f.verdict())
    }

    pub fn replicator(&self) -> &Replicator {
        &self.replicator
    }

    /// Shares the placement with the store (its owned set) and the HTTP
    /// layer (forwarding); call before [`NodeMachine::start`].
    /// With a replication factor set, the current layout (this node alone,
    /// before it joins) is published at once, so the HTTP layer knows from
    /// its first request that a miss here is not the cluster's.
    pub fn set_placement(&mut self, placement: Arc<crate::placement::PlacementHandle>) {
        self.placement = placement;
        if self.replicator.config().replication_factor.is_some() {
            self.publish_routes();
        }
    }

    /// Hands the layout and the owner URLs last computed to the store and
    /// the HTTP layer.
    fn publish_routes(&self) {
        self.placement.publish(crate::placement::Routes {
            layout: self.replicator.layout().clone(),
            urls: self.published_urls.clone(),
            suspect: self.published_suspect.clone(),
        });
    }

    pub fn placement(&self) -> &Arc<crate::placement::PlacementHandle> {
        &self.placement
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The client URL this node advertises in membership.
    pub fn set_http(&mut self, url: Option<String>) {
        self.membership.set_http(url);
    }

    /// Restores remembered peers and joins through `join`. A node that
    /// remembers peers (a restart) starts with local writes fenced until the
    /// first peer's vector shows it is not behind on its own origin.
    pub fn start(
        &mut self,
        remembered: Vec<(NodeId, PeerRecord)>,
        join: &[SocketAddr],
        now: Now,
        reader: &dyn ReplicaReader,
    ) -> Vec<Output> {
        let mut out = Vec::new();
        self.set_clocks(now);
        self.started = true;
        // A fresh directory (no peer remembered) holds no writes of ours, so
        // only a restarted node waits; a fresh one is checked on first contact.
        let has_peers = remembered.iter().any(|(id, _)| *id != self.node);
        self.fence = Some(Fence::new(
            self.clock_config.clone(),
            now,
            reader.clock(),
            has_peers || !join.is_empty(),
        ));
        let fx = self.membership.restore(remembered, now.mono_ms());
        self.membership_effects(fx, now, reader, &mut out);
        if !join.is_empty() {
            let fx = self.membership.join(join, now.mono_ms());
            self.membership_effects(fx, now, reader, &mut out);
        }
        if has_peers {
            self.own.awaiting_contact = Some(now.mono_ms() + self.contact_grace_ms);
        }
        self.update_fence(now, reader, &mut out);
        self.update_clock(now);
        out
    }

    /// One input; everything it causes comes back as outputs.
    pub fn handle(&mut self, input: Input, now: Now, reader: &dyn ReplicaReader) -> Vec<Output> {
        let mut out = Vec::new();
        self.set_clocks(now);
        match input {
            Input::Message {
                from,
                addr,
                msg: Message::Membership(m),
            } => {
                let fx = self.membership.on_message(&from, addr, m, now.mono_ms());
                self.membership_effects(fx, now, reader, &mut out);
                self.update_layout(now, reader, &mut out);
            }
            Input::Message {
                from,
                msg: Message::Replication(m),
                ..
            } => {
                self.observe_stamp(&from, &m, now, reader);
                let for_quorum = matches!(m, Msg::Ack { .. } | Msg::ReadReply { .. });
                if for_quorum && m.validate().is_ok() {
                    self.on_quorum_message(&from, m, now, reader, &mut out);
                } else {
                    self.check_own_origin(&from, &m, now, reader, &mut out);
                    let fx = self.replicator.on_message(&from, m, now.mono_ms(), reader);
                    self.replication_effects(fx, &mut out);
                }
            }
            Input::Committed(batch) => {
                let fx = self.replicator.on_committed(&batch, now.mono_ms(), reader);
                self.replication_effects(fx, &mut out);
            }
            Input::CommittedForQuorum(batch) => {
                let fx = self
                    .replicator
                    .on_committed_for_quorum(&batch, now.mono_ms(), reader);
                self.replication_effects(fx, &mut out);
            }
            Input::AwaitWrite {
                id,
                key,
                seq,
                level,
                timeout_ms,
            } => {
                let replicas =
                    replicas_for(&self.membership, self.replicator.layout(), &self.node, &key);
                let needed = level.needed(replicas.len());
                let (now_ms, deadline) = (now.mono_ms(), now.mono_ms() + timeout_ms);
                let waited = self
                    .writes
                    .wait(id, seq, needed, replicas, now_ms, deadline);
                out.extend(waited.map(Output::WriteDone));
            }
            Input::Read {
                id,
                key,
                level,
                timeout_ms,
            } => self.start_read(id, key, level, timeout_ms, now, reader, &mut out),
            Input::CommitDone {
                tag,
                result: Ok(outcomes),
            } => {
                let fx = self
                    .replicator
                    .on_commit_outcomes(tag, &outcomes, now.mono_ms(), reader);
                self.replication_effects(fx, &mut out);
            }
            Input::CommitDone {
                tag,
                result: Err(e),
            } => {
                tracing::error!(node = %self.node, tag, error = %e, "replicated write failed");
                self.replicator.on_commit_failed(tag, now.mono_ms());
            }
            Input::Discovered { node_id, addr } => {
                let known = NodeId::new(node_id.as_str())
                    .ok()
                    .and_then(|id| self.membership.status_of(&id));
                if known != Some(Status::Alive) {
                    let fx = self.membership.join(&[addr], now.mono_ms());
                    self.membership_effects(fx, now, reader, &mut out);
                }
            }
            Input::Tick => {
                self.membership
                    .set_head(reader.version_vector().get(&self.node));
                let fx = self.membership.tick(now.mono_ms(), &mut self.rng);
                self.membership_effects(fx, now, reader, &mut out);
                self.update_layout(now, reader, &mut out);
                let fx = self.replicator.on_tick(now.mono_ms(), reader);
                self.replication_effects(fx, &mut out);
                let done = self.writes.on_tick(now.mono_ms());
                out.extend(done.into_iter().map(Output::WriteDone));
                let probes = self.writes.probes(now.mono_ms());
                let alive = |p: &NodeId| self.membership.status_of(p) == Some(Status::Alive);
                let probes: Vec<NodeId> = probes.into_iter().filter(alive).collect();
                for peer in probes {
                    let fx = self.replicator.ask_ack(&peer, reader);
                    self.replication_effects(fx, &mut out);
                }
                let actions = self.reads.on_tick(now.mono_ms());
                self.read_actions(actions, now, reader, &mut out);
            }
        }
        self.update_fence(now, reader, &mut out);
        self.update_clock(now);
        out
    }

    /// Tells peers we leave (clean shutdown).
    pub fn leave(&mut self, now: Now, reader: &dyn ReplicaReader) -> Vec<Output> {
        let mut out = Vec::new();
        self.set_clocks(now);
        let fx = self.membership.leave(now.mono_ms());
        self.membership_effects(fx, now, reader, &mut out);
        out
    }

    /// A snapshot for the HTTP API; `transport` gives per-peer queue lengths.
    pub fn view(&mut self, now: Now, transport: TransportStats) -> ClusterView {
        for peer in &transport.peers {
            if let Some(id) = &peer.node_id {
                self.replicator.note_queue_len(id, peer.queue_len as u64);
            }
        }
        ClusterView {
            me: SelfView {
                node_id: self.node.to_string(),
                addr: self.membership.addr().to_string(),
                incarnation: self.membership.incarnation(),
                joined: self.started && self.membership.is_joined(),
                http: self.membership.http().map(str::to_string),
                writes_fenced: self.own.fence.clone(),
            },
            members: self.membership.members(now.mono_ms()),
            membership: self.membership.stats(),
            replication: replication_stats_on_wall_clock(self.replicator.stats(), now),
            placement: self.replicator.placement_progress(),
            transport,
            clock: self.clock_verdict().cloned(),
        }
    }

    /// Updates partition owners when the eligible members changed
    /// (nothing to do with full replication), and republishes owner URLs
    /// when one changed. The member table is rescanned only after a
    /// membership effect or every [`LAYOUT_RECHECK_MS`].
    fn update_layout(&mut self, now: Now, reader: &dyn ReplicaReader, out: &mut Vec<Output>) {
        let config = self.replicator.config();
        let (r, grace) = (config.replication_factor, config.rebalance_after_ms);
        if r.is_none() {
            return; // every node owns everything, whatever the membership
        }
        let due = now.mono_ms() >= self.layout_checked_ms + LAYOUT_RECHECK_MS;
        if self.layout_gen == Some(self.members_gen) && !due {
            return;
        }
        self.layout_gen = Some(self.members_gen);
        self.layout_checked_ms = now.mono_ms();
        let members = crate::placement::eligible_members(
            &self.node,
            self.membership.table(),
            now.mono_ms(),
            grace,
        );
        let changed = members != self.replicator.layout().members;
        if changed {
            // Derived from the previous layout: a join costs 256 hashes, not
            // 256 × N (a node of a 1,000-node fleet sees ~1,000 of them).
            let layout = Arc::new(self.replicator.layout().updated(members, r));
            let fx = self.replicator.set_layout(layout, now.mono_ms(), reader);
            self.replication_effects(fx, out);
        }
        // Suspect members too: they stay owners until dead beyond the grace
        // period, and are tried after the alive owners.
        let reachable = || {
            self.membership
                .table()
                .iter()
                .filter(|m| matches!(m.status, Status::Alive | Status::Suspect))
        };
        let urls: std::collections::BTreeMap<NodeId, String> = reachable()
            .filter_map(|m| m.http.clone().map(|u| (m.id.clone(), u)))
            .collect();
        let suspect: std::collections::BTreeSet<NodeId> = reachable()
            .filter(|m| m.status == Status::Suspect)
            .map(|m| m.id.clone())
            .collect();
        if changed || urls != self.published_urls || suspect != self.published_suspect {
            self.published_urls = urls;
            self.published_suspect = suspect;
            self.publish_routes();
        }
    }

    fn set_clocks(&mut self, now: Now) {
        self.membership.set_clocks(membership::Stamp {
            mono_us: now.mono_us,
            wall_us: now.wall_us,
        });
    }

    /// Lets our clock adopt the stamp a peer's message carries, unless it is
    /// further ahead of our wall clock than the bound: a peer whose clock
    /// runs ahead (the one the cluster fences) must not drag ours along.
    /// The message itself is handled either way.
    fn observe_stamp(&mut self, from: &NodeId, msg: &Msg, now: Now, reader: &dyn ReplicaReader) {
        let stamp = msg.clock();
        if !reader.observe_clock(stamp, now.wall_ms()) {
            self.replicator.note_stamp_not_adopted(from);
            tracing::debug!(node = %self.node, peer = %from, hlc = %stamp,
                ahead_ms = stamp.physical_ms().saturating_sub(now.wall_ms()),
                "peer's clock stamp far ahead of ours: not adopted (its data is still applied)");
        }
    }

    /// Judges this node's clock against the cluster; logs changes loudly,
    /// and reminds every 30 s while writes are refused.
    fn update_clock(&mut self, now: Now) {
        if self.alive_gen != Some(self.members_gen) {
            self.alive_gen = Some(self.members_gen);
            self.alive = self
                .membership
                .table()
                .iter()
                .filter(|m| m.status == Status::Alive)
                .count();
        }
        let alive = self.alive;
        let Some(fence) = self.fence.as_mut() else {
            return;
        };
        let changed = fence.evaluate(now, alive).is_some();
        let v = fence.verdict();
        let remind = v.refusal.is_some() && now.mono_ms() >= self.clock_reminded_ms + 30_000;
        if !changed && !remind {
            return;
        }
        self.clock_reminded_ms = now.mono_ms();
        let offset_ms = v.cluster_offset_ms.unwrap_or(0.0);
        let max_ms = v.max_clock_offset_ms;
        match (&v.refusal, v.state) {
            (Some(r), FenceState::Skewed | FenceState::AheadAtStart) => tracing::error!(
                node = %self.node, state = v.state.as_str(), cluster_offset_ms = offset_ms,
                max_clock_offset_ms = max_ms, peers = v.peers.len(), reason = %r.message,
                "clock fence: local writes refused"),
            (Some(r), _) => tracing::warn!(
                node = %self.node, state = v.state.as_str(), reason = %r.message,
                "clock fence: local writes wait for a clock measurement"),
            (None, FenceState::Unverified) => tracing::warn!(
                node = %self.node, peers = v.peers.len(),
                "clock fence: no verdict on this node's clock (no peer measured); local writes accepted"),
            (None, _) => tracing::info!(
                node = %self.node, state = v.state.as_str(), cluster_offset_ms = offset_ms,
                max_clock_offset_ms = max_ms, "clock fence: clock within bounds; local writes accepted"),
        }
    }

    /// Starts a quorum read: asks every other replica that may answer
    /// (alive or suspect) and counts this node's own entry as one reply.
    #[allow(clippy::too_many_arguments)]
    fn start_read(
        &mut self,
        id: u64,
        key: String,
        level: Level,
        timeout_ms: u64,
        now: Now,
        reader: &dyn ReplicaReader,
        out: &mut Vec<Output>,
    ) {
        let replicas = replicas_for(&self.membership, self.replicator.layout(), &self.node, &key);
        let needed = level.needed(replicas.len());
        let local = match reader.get(&key) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(node = %self.node, key = %key, error = %e, "cannot read the local replica for a quorum read");
                out.push(Output::ReadDone(ReadResolved {
                    id,
                    acks: 0,
                    needed,
                    entry: None,
                }));
                return;
            }
        };
        let asked: Vec<NodeId> = if needed > 1 {
            replicas
                .into_iter()
                .filter(|p| {
                    matches!(
                        self.membership.status_of(p),
                        Some(Status::Alive | Status::Suspect)
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        for peer in &asked {
            let fx = self.replicator.read_request(peer, id, &key, reader);
            self.replication_effects(fx, out);
        }
        let deadline = now.mono_ms() + timeout_ms;
        let me = (self.node.clone(), local);
        let actions = self.reads.start(id, key, needed, me, asked, deadline);
        self.read_actions(actions, now, reader, out);
    }

    /// An ack or a read reply from `from` (validated).
    fn on_quorum_message(
        &mut self,
        from: &NodeId,
        msg: Msg,
        now: Now,
        reader: &dyn ReplicaReader,
        out: &mut Vec<Output>,
    ) {
        match msg {
            Msg::Ack { origin, seq, .. } if origin == self.node => {
                let done = self.writes.on_ack(from, seq);
                out.extend(done.into_iter().map(Output::WriteDone));
            }
            Msg::ReadReply {
                req, key, entry, ..
            } => {
                let actions = self.reads.on_reply(from, req, &key, entry);
                self.read_actions(actions, now, reader, out);
            }
            _ => {}
        }
    }

    /// Carries out a read's answer and repairs.
    fn read_actions(
        &mut self,
        actions: Vec<ReadAction>,
        now: Now,
        reader: &dyn ReplicaReader,
        out: &mut Vec<Output>,
    ) {
        for action in actions {
            match action {
                ReadAction::Answer(r) => out.push(Output::ReadDone(r)),
                ReadAction::Repair { to, key, entry } => {
                    let fx = if to == self.node {
                        self.replicator.repair_local(&key, entry, now.mono_ms())
                    } else {
                        self.replicator.send_repair(&to, &key, entry, reader)
                    };
                    self.replication_effects(fx, out);
                }
            }
        }
    }

    /// Notes what `from` holds of our own origin; pulls from it when that
    /// is more than we hold.
    fn check_own_origin(
        &mut self,
        from: &NodeId,
        msg: &Msg,
        now: Now,
        reader: &dyn ReplicaReader,
        out: &mut Vec<Output>,
    ) {
        let theirs = match msg {
            Msg::PullRequest { vv, .. } | Msg::AeRoot { vv, .. } => {
                if self.own.awaiting_contact.take().is_some() {
                    tracing::info!(node = %self.node, peer = %from, "own sequence numbers checked against a peer");
                }
                vv.get(&self.node)
            }
            Msg::Push { deltas, .. } | Msg::PullResponse { deltas, .. } => deltas
                .iter()
                .filter(|d| d.origin == self.node)
                .map(|d| d.seq)
                .max()
                .unwrap_or(0),
            _ => 0,
        };
        if theirs <= self.own.behind.as_ref().map_or(0, |(s, _)| *s) {
            return;
        }
        let mine = reader.version_vector().get(&self.node);
        if theirs <= mine {
            return;
        }
        tracing::warn!(node = %self.node, peer = %from, theirs, mine,
            "a peer holds newer writes of this node than its own store (restored from an old copy?); local writes wait until they are recovered");
        self.own.behind = Some((theirs, from.clone()));
        let fx = self.replicator.pull_from(from, now.mono_ms(), reader);
        self.replication_effects(fx, out);
    }

    /// Announces a change of the fence.
    fn update_fence(&mut self, now: Now, reader: &dyn ReplicaReader, out: &mut Vec<Output>) {
        if let Some((target, peer)) = &self.own.behind {
            let mine = reader.version_vector().get(&self.node);
            if mine >= *target {
                tracing::info!(node = %self.node, peer = %peer, seq = mine, "own writes recovered from peers; local writes accepted again");
                self.own.behind = None;
            }
        }
        if self
            .own
            .awaiting_contact
            .is_some_and(|deadline| now.mono_ms() >= deadline)
        {
            self.own.awaiting_contact = None;
            tracing::warn!(node = %self.node, grace_ms = self.contact_grace_ms,
                "no peer reachable to check this node's own sequence numbers; accepting local writes");
        }
        let fence = match (&self.own.behind, self.own.awaiting_contact) {
            (Some((target, peer)), _) => Some(format!(
                "recovering this node's own writes: peer {peer} holds up to seq {target} of {}, this node has fewer; local writes resume once they are copied back",
                self.node
            )),
            (None, Some(_)) => Some(
                "starting: checking with a peer that this node's own writes are current"
                    .to_string(),
            ),
            (None, None) => None,
        };
        if fence != self.own.fence {
            self.own.fence = fence.clone();
            out.push(Output::WriteFence(fence));
        }
    }

    fn membership_effects(
        &mut self,
        effects: Vec<membership::Effect>,
        now: Now,
        reader: &dyn ReplicaReader,
        out: &mut Vec<Output>,
    ) {
        for effect in effects {
            if matches!(
                effect,
                membership::Effect::StatusChanged { .. }
                    | membership::Effect::Persist { .. }
                    | membership::Effect::Forget { .. }
            ) {
                self.members_gen += 1;
            }
            match effect {
                membership::Effect::Send { to, addr, msg } => out.push(Output::Send {
                    to: Some(to),
                    addr,
                    msg: Message::Membership(msg),
                }),
                membership::Effect::SendToAddr { addr, msg } => out.push(Output::Send {
                    to: None,
                    addr,
                    msg: Message::Membership(msg),
                }),
                membership::Effect::StatusChanged { peer, from, to } => {
                    tracing::info!(node = %self.node, peer = %peer, from = %crate::logfields::opt(from), to = %to, "peer status changed");
                    if to == Status::Left {
                        let done = self.writes.peer_left(&peer);
                        out.extend(done.into_iter().map(Output::WriteDone));
                    }
                    if to == Status::Alive {
                        let fx = self.replicator.peer_up(&peer, now.mono_ms(), reader);
                        self.replication_effects(fx, out);
                    } else if from == Some(Status::Alive) {
                        self.replicator.peer_down(&peer, now.mono_ms());
                        if let Some(f) = self.fence.as_mut() {
                            f.peer_gone(&peer);
                        }
                    }
                }
                membership::Effect::Persist { peer, record } => {
                    out.push(Output::Persist { peer, record })
                }
                membership::Effect::Forget { peer, addr } => {
                    let done = self.writes.peer_left(&peer);
                    out.extend(done.into_iter().map(Output::WriteDone));
                    out.push(Output::Forget { peer, addr })
                }
                membership::Effect::ClockSample {
                    peer,
                    sent_mono_ms,
                    sample,
                } => {
                    if let Some(f) = self.fence.as_mut() {
                        f.on_sample(&peer, sent_mono_ms, sample);
                    }
                }
                membership::Effect::Refused { peer, reason } => {
                    tracing::warn!(node = %self.node, peer = %peer, reason = %reason, "membership message refused");
                }
            }
        }
    }

    fn replication_effects(&mut self, effects: Vec<replication::Effect>, out: &mut Vec<Output>) {
        for effect in effects {
            match effect {
                replication::Effect::Send { to, msg } => {
                    match self.membership.table().get(&to).map(|m| m.addr) {
                        Some(addr) => out.push(Output::Send {
                            to: Some(to),
                            addr,
                            msg: Message::Replication(msg),
                        }),
                        None => {
                            tracing::debug!(node = %self.node, peer = %to, "no address for peer")
                        }
                    }
                }
                replication::Effect::Commit { tag, ops, .. } => {
                    out.push(Output::Commit { tag, ops })
                }
            }
        }
    }
}

/// The replicator keeps times on the monotonic clock; the snapshot shows
/// them as wall-clock ms since the epoch (what readers compare with now).
fn replication_stats_on_wall_clock(
    mut stats: replication::ReplicationStats,
    now: Now,
) -> replication::ReplicationStats {
    let to_wall = |mono_ms: u64| {
        now.wall_ms()
            .saturating_sub(now.mono_ms().saturating_sub(mono_ms))
    };
    let runs = stats.last_anti_entropy.iter_mut().chain(
        stats
            .peers
            .values_mut()
            .filter_map(|p| p.last_anti_entropy.as_mut()),
    );
    for run in runs {
        run.started_ms = to_wall(run.started_ms);
        run.finished_ms = to_wall(run.finished_ms);
    }
    stats
}
