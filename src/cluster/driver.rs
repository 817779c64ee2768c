//! The event loop of the cluster shell. See the parent module.
//!
//! **Commit pipeline.** Replicated writes (the replicator's
//! `Effect::Commit`) go to the store writer in emission order (deltas of one
//! origin must arrive in seq order) and their outcomes come back in the same
//! order. At most `commit_queue_len` are in flight: past that the loop stops
//! reading the transport, whose bounded queue then fills and QUIC flow
//! control pushes back on the senders. No task is spawned per commit; the
//! one awaited future is the oldest commit's completion (the writer answers
//! in order, so waiting on the oldest costs nothing). The newly-durable
//! deltas come back over a bounded channel that the loop always reads, so
//! waiting for the writer can never wait on the loop.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::{mpsc, watch};

use super::{ClusterConfig, ClusterError, ClusterView, Message, SelfView};
use crate::membership::{self, Membership, Status};
use crate::model::{Delta, NodeId};
use crate::replication::{self, Replicator};
use crate::replication::{AeResult, ReplicationStats};
use crate::store::commit::{wall_ms, CommitError, Committer, Pending};
use crate::store::{Op, Outcome, Store};
use crate::transport::{Incoming, Transport, TransportStats};
use crate::workers::{StatusSource, Worker, Workers};

/// How often protocol timers run; both machines tolerate any finer tick.
const TICK: Duration = Duration::from_millis(20);
/// How often the snapshot for the HTTP API is refreshed.
const VIEW_EVERY: Duration = Duration::from_millis(200);

type CommitResult = Result<Vec<Outcome>, CommitError>;
/// The oldest commit in flight, or one waiting for room in the writer's queue.
type Waiting<T> = Option<(u64, Pin<Box<dyn Future<Output = T> + Send>>)>;

/// Resolves with the waited-for output; never, when nothing waits.
async fn next_of<T>(w: &mut Waiting<T>) -> T {
    match w {
        Some((_, f)) => f.as_mut().await,
        None => std::future::pending().await,
    }
}

pub(super) struct Driver {
    node: NodeId,
    started: Instant,
    store: Arc<Store>,
    committer: Committer,
    transport: Transport<Message>,
    membership: Membership,
    replicator: Replicator,
    rng: StdRng,
    view_tx: watch::Sender<Arc<ClusterView>>,
    /// Replicated commits not yet handed to the writer, in emission order.
    to_submit: VecDeque<(u64, Vec<Op>)>,
    /// Handed to the writer, oldest first (the oldest may be awaited in `run`).
    in_flight: VecDeque<(u64, Pending)>,
    commit_queue_len: usize,
    status: DriverWorkers,
}

/// The workers this task runs (see [`crate::workers`]).
struct DriverWorkers {
    /// Replicated commits from peers, through the store writer.
    commits: Arc<Worker>,
    membership: Arc<Worker>,
    push: Arc<Worker>,
    pull: Arc<Worker>,
    anti_entropy: Arc<Worker>,
}

impl DriverWorkers {
    fn register(workers: &Workers) -> DriverWorkers {
        DriverWorkers {
            commits: workers.register("replicated-commits"),
            membership: workers.register("membership"),
            push: workers.register("push"),
            pull: workers.register("pull"),
            anti_entropy: workers.register("anti-entropy"),
        }
    }

    fn stopped(&self) {
        for w in [
            &self.commits,
            &self.membership,
            &self.push,
            &self.pull,
            &self.anti_entropy,
        ] {
            w.stopped();
        }
    }
}

impl Driver {
    pub(super) fn new(
        config: &ClusterConfig,
        quic_addr: SocketAddr,
        store: Arc<Store>,
        committer: Committer,
        transport: Transport<Message>,
        workers: &Workers,
    ) -> Result<(Driver, watch::Receiver<Arc<ClusterView>>), ClusterError> {
        let advertised = config.advertise.unwrap_or(quic_addr);
        // Wall-clock milliseconds at start: grows across restarts, so peers
        // prefer what this incarnation says over a previous one.
        let incarnation = wall_ms();
        let membership = Membership::new(
            config.node_id.clone(),
            advertised,
            incarnation,
            config.membership.clone(),
        )?;
        let replicator = Replicator::new(
            config.node_id.clone(),
            config.replication.clone(),
            rand::random(),
        );
        let mut driver = Driver {
            node: config.node_id.clone(),
            started: Instant::now(),
            store,
            committer,
            transport: transport.clone(),
            membership,
            replicator,
            rng: StdRng::from_entropy(),
            view_tx: watch::channel(Arc::new(placeholder_view(&config.node_id, &transport))).0,
            to_submit: VecDeque::new(),
            in_flight: VecDeque::new(),
            commit_queue_len: config.commit_queue_len.max(1),
            status: DriverWorkers::register(workers),
        };
        let view_rx = driver.view_tx.subscribe();
        driver.publish_view();
        Ok((driver, view_rx))
    }

    fn mono_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub(super) async fn run(
        mut self,
        mut incoming: mpsc::Receiver<Incoming<Message>>,
        mut deltas: mpsc::Receiver<Arc<Vec<Delta>>>,
        mut stop: watch::Receiver<bool>,
        join: Vec<SocketAddr>,
        mut discovered: mpsc::Receiver<crate::discovery::Discovered>,
    ) {
        let mut oldest: Waiting<CommitResult> = None;
        let mut submitting: Waiting<Result<Pending, CommitError>> = None;
        match self.store.peers() {
            Ok(records) => {
                let effects = self.membership.restore(records, self.mono_ms());
                self.membership_effects(effects);
            }
            Err(e) => tracing::warn!(node = %self.node, error = %e, "cannot read remembered peers"),
        }
        if !join.is_empty() {
            let effects = self.membership.join(&join, self.mono_ms());
            self.membership_effects(effects);
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_view = Instant::now() + VIEW_EVERY;
        loop {
            if submitting.is_none() {
                submitting = self.submit_queued();
            }
            if oldest.is_none() {
                oldest = self
                    .in_flight
                    .pop_front()
                    .map(|(tag, p)| (tag, Box::pin(p.wait()) as Pin<Box<_>>));
            }
            let in_flight = self.in_flight.len()
                + self.to_submit.len()
                + usize::from(oldest.is_some())
                + usize::from(submitting.is_some());
            let room = in_flight < self.commit_queue_len;
            tokio::select! {
                _ = stop.changed() => break,
                Some(inc) = incoming.recv(), if room => self.on_incoming(inc),
                Some(batch) = deltas.recv() => {
                    let effects = self.replicator.on_committed(&batch, wall_ms(), &self.store);
                    self.replication_effects(effects);
                    self.status.push.ok(wall_ms());
                }
                result = next_of(&mut oldest) => {
                    if let Some((tag, _)) = oldest.take() {
                        self.on_commit_done(tag, result);
                    }
                }
                queued = next_of(&mut submitting) => {
                    if let Some((tag, _)) = submitting.take() {
                        match queued {
                            Ok(pending) => self.in_flight.push_back((tag, pending)),
                            Err(e) => self.on_commit_done(tag, Err(e)),
                        }
                    }
                }
                Some(found) = discovered.recv() => self.on_discovered(found),
                _ = tick.tick() => {
                    let effects = self.membership.tick(self.mono_ms(), &mut self.rng);
                    self.membership_effects(effects);
                    self.status.membership.ok(wall_ms());
                    let effects = self.replicator.on_tick(wall_ms(), &self.store);
                    self.replication_effects(effects);
                    if Instant::now() >= next_view {
                        next_view = Instant::now() + VIEW_EVERY;
                        self.publish_view();
                    }
                }
            }
        }
        let effects = self.membership.leave(self.mono_ms());
        self.membership_effects(effects);
        self.status.stopped();
        tracing::info!(node = %self.node, "cluster driver stopped");
    }

    /// A node heard on the LAN: join through it unless it is already alive
    /// here. The join is an ordinary mTLS hello, so a node of another CA
    /// gets nowhere.
    fn on_discovered(&mut self, found: crate::discovery::Discovered) {
        let known = NodeId::new(found.node_id.as_str())
            .ok()
            .and_then(|id| self.membership.status_of(&id));
        if known == Some(Status::Alive) {
            return;
        }
        let effects = self.membership.join(&[found.addr], self.mono_ms());
        self.membership_effects(effects);
    }

    fn on_incoming(&mut self, inc: Incoming<Message>) {
        match inc {
            Incoming::Message {
                from,
                addr,
                msg: Message::Membership(m),
            } => {
                let effects = self.membership.on_message(&from, addr, m, self.mono_ms());
                self.membership_effects(effects);
            }
            Incoming::Message {
                from,
                msg: Message::Replication(m),
                ..
            } => {
                let effects = self.replicator.on_message(&from, m, wall_ms(), &self.store);
                self.replication_effects(effects);
            }
            Incoming::Connected { peer, addr, dir } => {
                tracing::debug!(node = %self.node, peer = %peer, %addr, ?dir, "peer connected");
            }
            Incoming::Disconnected {
                peer,
                addr,
                dir,
                reason,
            } => {
                tracing::debug!(node = %self.node, peer = %peer, %addr, ?dir, %reason, "peer disconnected");
            }
        }
    }

    fn send(&self, to: Option<&NodeId>, addr: SocketAddr, msg: Message) {
        if let Err(e) = self.transport.send(addr, to.cloned(), &msg) {
            tracing::debug!(node = %self.node, peer = ?to, %addr, error = %e, "message dropped");
        }
    }

    fn membership_effects(&mut self, effects: Vec<membership::Effect>) {
        for effect in effects {
            match effect {
                membership::Effect::Send { to, addr, msg } => {
                    self.send(Some(&to), addr, Message::Membership(msg))
                }
                membership::Effect::SendToAddr { addr, msg } => {
                    self.send(None, addr, Message::Membership(msg))
                }
                membership::Effect::StatusChanged { peer, from, to } => {
                    tracing::info!(node = %self.node, peer = %peer, from = ?from, to = ?to, "peer status changed");
                    if to == Status::Alive {
                        let effects = self.replicator.peer_up(&peer, wall_ms(), &self.store);
                        self.replication_effects(effects);
                    } else if from == Some(Status::Alive) {
                        self.replicator.peer_down(&peer, wall_ms());
                    }
                }
                membership::Effect::Persist { peer, record } => {
                    if let Err(e) = self.store.save_peer(&peer, &record) {
                        tracing::warn!(node = %self.node, peer = %peer, error = %e, "cannot remember peer");
                    }
                }
                membership::Effect::Forget { peer, addr } => {
                    if let Err(e) = self.store.remove_peer(&peer) {
                        tracing::warn!(node = %self.node, peer = %peer, error = %e, "cannot delete forgotten peer");
                    }
                    self.transport.remove_peer(addr);
                }
                membership::Effect::Refused { peer, reason } => {
                    tracing::warn!(node = %self.node, peer = %peer, reason = ?reason, "membership message refused");
                }
            }
        }
    }

    fn replication_effects(&mut self, effects: Vec<replication::Effect>) {
        for effect in effects {
            match effect {
                replication::Effect::Send { to, msg } => {
                    match self.membership.table().get(&to).map(|m| m.addr) {
                        Some(addr) => self.send(Some(&to), addr, Message::Replication(msg)),
                        None => {
                            tracing::debug!(node = %self.node, peer = %to, "no address for peer")
                        }
                    }
                }
                replication::Effect::Commit { tag, ops, .. } => {
                    self.to_submit.push_back((tag, ops));
                }
                replication::Effect::ClockRefused { peer, ahead_ms } => {
                    tracing::error!(node = %self.node, peer = %peer, ahead_ms, "peer clock too far ahead; its messages are refused");
                }
            }
        }
    }

    /// Hands queued commits to the writer in order while its queue has room;
    /// the first that does not fit comes back as a future that waits for room
    /// (nothing after it is handed over before it).
    fn submit_queued(&mut self) -> Waiting<Result<Pending, CommitError>> {
        while let Some((tag, ops)) = self.to_submit.pop_front() {
            match self.committer.try_submit(ops) {
                Ok(pending) => self.in_flight.push_back((tag, pending)),
                Err(ops) => {
                    let committer = self.committer.clone();
                    return Some((tag, Box::pin(async move { committer.submit(ops).await })));
                }
            }
        }
        None
    }

    fn on_commit_done(&mut self, tag: u64, result: CommitResult) {
        match result {
            Ok(outcomes) => {
                self.status.commits.ok(wall_ms());
                let effects =
                    self.replicator
                        .on_commit_outcomes(tag, &outcomes, wall_ms(), &self.store);
                self.replication_effects(effects);
            }
            Err(e) => {
                self.status.commits.error(wall_ms(), &e);
                tracing::error!(node = %self.node, error = %e, "replicated write failed");
                self.replicator.on_commit_failed(tag, wall_ms());
            }
        }
    }

    fn publish_view(&mut self) {
        let transport = self.transport.stats();
        for peer in &transport.peers {
            if let Some(id) = &peer.node_id {
                self.replicator.note_queue_len(id, peer.queue_len as u64);
            }
        }
        let replication = self.replicator.stats();
        self.update_workers(&transport, &replication);
        let view = ClusterView {
            me: SelfView {
                node_id: self.node.to_string(),
                addr: self.membership.addr().to_string(),
                incarnation: self.membership.incarnation(),
                joined: self.membership.is_joined(),
            },
            members: self.membership.members(self.mono_ms()),
            membership: self.membership.stats(),
            replication,
            transport,
        };
        self.view_tx.send_replace(Arc::new(view));
    }
}

impl Driver {
    /// Worker statuses derived from the counters the protocols keep.
    fn update_workers(&self, transport: &TransportStats, replication: &ReplicationStats) {
        let now = wall_ms();
        let w = &self.status;
        w.commits
            .set_queue((self.in_flight.len() + self.to_submit.len()) as u64);
        let queued: usize = transport.peers.iter().map(|p| p.queue_len).sum();
        let dropped: u64 = transport.peers.iter().map(|p| p.send_drops).sum();
        w.push.set_queue(queued as u64);
        let push = w.push.status();
        if dropped > push.errors {
            w.push.observe(
                now,
                push.runs,
                dropped,
                Some("peer send queue full; messages dropped (pull repairs)".into()),
            );
        }
        let peers = replication.peers.values();
        let (mut pulls, mut unavailable, mut ae_runs, mut ae_failures) = (0, 0, 0, 0);
        for p in peers {
            pulls += p.pulls_sent;
            unavailable += p.pulls_answered_unavailable;
            ae_runs += p.anti_entropy_runs;
            ae_failures += p.anti_entropy_failures;
        }
        w.pull.observe(
            now,
            pulls,
            unavailable,
            (unavailable > 0).then(|| {
                "answered unavailable: the peer's log was trimmed (anti-entropy repairs)".into()
            }),
        );
        let last_failure = replication
            .last_anti_entropy
            .as_ref()
            .and_then(|r| match &r.result {
                AeResult::Failed(why) => Some(format!("with {}: {why}", r.peer)),
                _ => None,
            });
        w.anti_entropy
            .observe(now, ae_runs, ae_failures, last_failure);
        w.anti_entropy
            .set_queue(replication.anti_entropy_active as u64);
    }
}

fn placeholder_view(node: &NodeId, transport: &Transport<Message>) -> ClusterView {
    ClusterView {
        me: SelfView {
            node_id: node.to_string(),
            addr: String::new(),
            incarnation: 0,
            joined: false,
        },
        members: Vec::new(),
        membership: Default::default(),
        replication: Default::default(),
        transport: transport.stats(),
    }
}
