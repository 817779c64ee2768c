//! The event loop of the cluster shell: moves bytes, time and commits for
//! the node's [`NodeMachine`]. See the parent module.
//!
//! Inputs that are ready together go to the machine as one step on tokio's
//! blocking pool (the machine's store reads may wait for the commit thread's
//! lock, and peer records are written to sled there too), so this task never
//! blocks the executor. Steps run one at a time, in arrival order.
//!
//! **Commit pipeline.** Replicated writes (the machine's `Output::Commit`)
//! go to the store writer in emission order (deltas of one origin must
//! arrive in seq order) and their outcomes come back in the same order. At
//! most `commit_queue_len` (plus one step's worth of inputs) are in flight:
//! past that the loop stops reading the transport, whose bounded queue then
//! fills and QUIC flow control pushes back on the senders. No task is
//! spawned per commit; the one awaited future is the oldest commit's
//! completion (the writer answers in order). The newly-durable deltas come
//! back over a bounded channel that the loop always reads, so waiting for
//! the writer can never wait on the loop.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::node_machine::{Input, NodeMachine, Now, Output, CONTACT_GRACE_MS};
use super::quorum::{QuorumInbox, Request};
use super::{ClusterConfig, ClusterError, ClusterView, Message, SelfView};
use crate::clock::ClockGate;
use crate::model::{Delta, NodeId};
use crate::replication::{AeResult, ReplicationStats};
use crate::store::commit::{wall_ms, CommitError, Committer, Pending};
use crate::store::{Op, Outcome, Store};
use crate::transport::{Incoming, Transport, TransportStats};
use crate::workers::{StatusSource, Worker, Workers};

/// How often protocol timers run; the machine tolerates any finer tick.
/// Start-up wait of a node restored under its own id: in effect forever (a
/// year), since writing without the check could reuse a sequence number.
const RESTORED_GRACE_MS: u64 = 365 * 24 * 3600 * 1000;
const TICK: Duration = Duration::from_millis(20);
/// How often the snapshot for the HTTP API is refreshed.
const VIEW_EVERY: Duration = Duration::from_millis(200);
/// Most inputs handed to the machine in one blocking step.
const MAX_STEP_INPUTS: usize = 64;

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
    /// The node's clock gate: the time source of every step, and where each
    /// step's clock verdict is published for the write path.
    clock: ClockGate,
    store: Arc<Store>,
    committer: Committer,
    transport: Transport<Message>,
    /// `None` only while a step runs on the blocking pool (or after one
    /// panicked, which stops the driver).
    machine: Option<Box<NodeMachine>>,
    view_tx: watch::Sender<Arc<ClusterView>>,
    /// Replicated commits not yet handed to the writer, in emission order.
    to_submit: VecDeque<(u64, Vec<Op>)>,
    /// Handed to the writer, oldest first (the oldest may be awaited in `run`).
    in_flight: VecDeque<(u64, Pending)>,
    commit_queue_len: usize,
    status: DriverWorkers,
    /// Quorum requests waiting for the machine's answer, by id.
    quorum_replies: QuorumReplies,
}

/// Where each waiting quorum request's answer goes.
#[derive(Default)]
struct QuorumReplies {
    next_id: u64,
    writes: std::collections::HashMap<
        u64,
        tokio::sync::oneshot::Sender<crate::replication::quorum::WriteResolved>,
    >,
    reads: std::collections::HashMap<
        u64,
        tokio::sync::oneshot::Sender<crate::replication::read_quorum::ReadResolved>,
    >,
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
        placement: Arc<crate::placement::PlacementHandle>,
        config: &ClusterConfig,
        quic_addr: SocketAddr,
        store: Arc<Store>,
        committer: Committer,
        transport: Transport<Message>,
        workers: &Workers,
    ) -> Result<(Driver, watch::Receiver<Arc<ClusterView>>), ClusterError> {
        let advertised = config.advertise.unwrap_or(quic_addr);
        // Restored from a snapshot under its own id: writes it made after
        // the snapshot may live on peers, so no grace period — local writes
        // wait for a peer's vector however long that takes (see
        // `crate::snapshot::restore`).
        let restored = store.restored();
        let contact_grace_ms = if restored {
            tracing::warn!(node = %config.node_id, "restored from a snapshot: local writes wait until a peer has shown which of this node's writes it holds");
            RESTORED_GRACE_MS
        } else {
            CONTACT_GRACE_MS
        };
        // Wall-clock milliseconds at start: grows across restarts, so peers
        // prefer what this incarnation says over a previous one.
        let mut machine = NodeMachine::new(
            config.node_id.clone(),
            advertised,
            wall_ms(),
            config.membership.clone(),
            config.replication.clone(),
            contact_grace_ms,
            config.clock.clone(),
            rand::random(),
        )?;
        machine.set_http(config.http_url.clone());
        machine.set_placement(placement);
        committer.clock_gate().expect_verdict();
        let mut driver = Driver {
            node: config.node_id.clone(),
            clock: committer.clock_gate().clone(),
            store,
            committer,
            transport: transport.clone(),
            machine: Some(Box::new(machine)),
            view_tx: watch::channel(Arc::new(placeholder_view(&config.node_id, &transport))).0,
            to_submit: VecDeque::new(),
            in_flight: VecDeque::new(),
            commit_queue_len: config.commit_queue_len.max(1),
            status: DriverWorkers::register(workers),
            quorum_replies: QuorumReplies {
                // Read ids travel in requests to peers: a random base keeps
                // a previous incarnation's late replies from matching.
                next_id: rand::random::<u64>() >> 1,
                ..Default::default()
            },
        };
        let view_rx = driver.view_tx.subscribe();
        driver.publish_view();
        Ok((driver, view_rx))
    }

    fn now(&self) -> Now {
        self.clock.now()
    }

    pub(super) async fn run(
        mut self,
        mut incoming: mpsc::Receiver<Incoming<Message>>,
        mut deltas: mpsc::Receiver<Arc<Vec<Delta>>>,
        mut stop: watch::Receiver<bool>,
        join: Vec<SocketAddr>,
        mut discovered: mpsc::Receiver<crate::discovery::Discovered>,
        mut quorum: QuorumInbox,
    ) {
        let mut oldest: Waiting<CommitResult> = None;
        let mut submitting: Waiting<Result<Pending, CommitError>> = None;
        let node = self.node.clone();
        let started = self
            .step(move |machine, now, store| {
                let remembered = store.peers().unwrap_or_else(|e| {
                    tracing::warn!(node = %node, error = %e, "cannot read remembered peers");
                    Vec::new()
                });
                machine.start(remembered, &join, now, store)
            })
            .await;
        if !started {
            return;
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
            let first = tokio::select! {
                _ = stop.changed() => break,
                Some(inc) = incoming.recv(), if room => self.input_of(inc),
                Some(batch) = deltas.recv() => Some(committed(batch, &quorum.waiting)),
                Some(req) = quorum.rx.recv() => Some(self.quorum_input(req, quorum.timeout)),
                result = next_of(&mut oldest) => oldest.take().map(|(tag, _)| Input::CommitDone {
                    tag,
                    result: result.map_err(|e| e.to_string()),
                }),
                queued = next_of(&mut submitting) => match (submitting.take(), queued) {
                    (Some((tag, _)), Ok(pending)) => {
                        self.in_flight.push_back((tag, pending));
                        None
                    }
                    (Some((tag, _)), Err(e)) => Some(Input::CommitDone { tag, result: Err(e.to_string()) }),
                    (None, _) => None,
                },
                Some(found) = discovered.recv() => Some(Input::Discovered {
                    node_id: found.node_id.to_string(),
                    addr: found.addr,
                }),
                _ = tick.tick() => {
                    if Instant::now() >= next_view {
                        next_view = Instant::now() + VIEW_EVERY;
                        self.publish_view();
                    }
                    Some(Input::Tick)
                }
            };
            let mut inputs: Vec<Input> = first.into_iter().collect();
            while inputs.len() < MAX_STEP_INPUTS {
                let next = if let Ok(batch) = deltas.try_recv() {
                    Some(committed(batch, &quorum.waiting))
                } else if let Some(inc) = room.then(|| incoming.try_recv().ok()).flatten() {
                    self.input_of(inc)
                } else {
                    break;
                };
                inputs.extend(next);
            }
            if inputs.is_empty() {
                continue;
            }
            self.observe_inputs(&inputs);
            let ok = self
                .step(move |machine, now, store| {
                    let mut out = Vec::new();
                    for input in inputs {
                        out.extend(machine.handle(input, now, store));
                    }
                    out
                })
                .await;
            if !ok {
                return;
            }
        }
        self.step(|machine, now, store| machine.leave(now, store))
            .await;
        self.status.stopped();
        tracing::info!(node = %self.node, "cluster driver stopped");
    }

    /// The machine's input for a quorum request; its answer channel waits
    /// here under a fresh id.
    fn quorum_input(&mut self, req: Request, timeout: Duration) -> Input {
        let r = &mut self.quorum_replies;
        r.next_id = r.next_id.wrapping_add(1);
        let id = r.next_id;
        let timeout_ms = timeout.as_millis() as u64;
        match req {
            Request::Write {
                key,
                seq,
                level,
                reply,
            } => {
                r.writes.insert(id, reply);
                Input::AwaitWrite {
                    id,
                    key,
                    seq,
                    level,
                    timeout_ms,
                }
            }
            Request::Read { key, level, reply } => {
                r.reads.insert(id, reply);
                Input::Read {
                    id,
                    key,
                    level,
                    timeout_ms,
                }
            }
        }
    }

    /// The machine's input for a transport event (connection changes are
    /// only logged: membership decides who is alive).
    fn input_of(&self, inc: Incoming<Message>) -> Option<Input> {
        match inc {
            Incoming::Message { from, addr, msg } => Some(Input::Message { from, addr, msg }),
            Incoming::Connected { peer, addr, dir } => {
                tracing::debug!(node = %self.node, peer = %peer, %addr, ?dir, "peer connected");
                None
            }
            Incoming::Disconnected {
                peer,
                addr,
                dir,
                reason,
            } => {
                tracing::debug!(node = %self.node, peer = %peer, %addr, ?dir, %reason, "peer disconnected");
                None
            }
        }
    }

    /// Runs `f` on the machine on the blocking pool, writes (and deletes) the
    /// peer records it asks for there too, and carries out the rest of its
    /// outputs here.
    /// False if the step panicked (the machine is gone; the driver stops).
    async fn step<F>(&mut self, f: F) -> bool
    where
        F: FnOnce(&mut NodeMachine, Now, &Store) -> Vec<Output> + Send + 'static,
    {
        let Some(mut machine) = self.machine.take() else {
            return false;
        };
        let store = self.store.clone();
        let now = self.now();
        let node = self.node.clone();
        let ran = tokio::task::spawn_blocking(move || {
            let mut out = f(&mut machine, now, &store);
            out.retain(|o| match o {
                Output::Persist { peer, record } => {
                    if let Err(e) = store.save_peer(peer, record) {
                        tracing::warn!(node = %node, peer = %peer, error = %e, "cannot remember peer");
                    }
                    false
                }
                Output::Forget { peer, .. } => {
                    if let Err(e) = store.remove_peer(peer) {
                        tracing::warn!(node = %node, peer = %peer, error = %e, "cannot delete forgotten peer");
                    }
                    true
                }
                _ => true,
            });
            let verdict = machine.clock_verdict().cloned();
            (machine, out, verdict)
        })
        .await;
        match ran {
            Ok((machine, out, verdict)) => {
                self.machine = Some(machine);
                if let Some(v) = verdict {
                    // A new fence state reaches the HTTP snapshot (and so
                    // /metrics) at once, not at the next periodic refresh.
                    let changed = self.clock.verdict().map(|old| old.state) != Some(v.state);
                    self.clock.publish(v);
                    if changed {
                        self.publish_view();
                    }
                }
                for o in out {
                    self.carry_out(o);
                }
                true
            }
            Err(e) => {
                tracing::error!(node = %self.node, error = %e, "cluster step failed; the cluster driver stops");
                false
            }
        }
    }

    fn carry_out(&mut self, output: Output) {
        match output {
            Output::Send { to, addr, msg } => self.send(addr, to, msg),
            Output::Commit { tag, ops } => self.to_submit.push_back((tag, ops)),
            Output::WriteFence(reason) => {
                match &reason {
                    Some(r) => {
                        tracing::warn!(node = %self.node, reason = %r, "local writes paused")
                    }
                    None => tracing::info!(node = %self.node, "local writes accepted"),
                }
                if reason.is_none() && self.store.restored() {
                    // Checked against a peer: the next start is a plain restart.
                    let store = self.store.clone();
                    let node = self.node.clone();
                    tokio::task::spawn_blocking(move || {
                        if let Err(e) = store.clear_restored() {
                            tracing::warn!(node = %node, error = %e, "cannot clear the restored-from-snapshot mark");
                        }
                    });
                }
                self.committer.fence().set(reason);
            }
            // The record is deleted in the blocking step.
            Output::Forget { addr, .. } => self.transport.remove_peer(addr),
            Output::Persist { .. } => {} // written in the blocking step
            Output::WriteDone(done) => {
                if let Some(reply) = self.quorum_replies.writes.remove(&done.id) {
                    let _ = reply.send(done);
                }
            }
            Output::ReadDone(done) => {
                if let Some(reply) = self.quorum_replies.reads.remove(&done.id) {
                    let _ = reply.send(done);
                }
            }
        }
    }

    /// Sends `msg`; one that cannot be framed (too large) is split when it
    /// carries several deltas, so the rest still flow, and a single delta
    /// that cannot be sent is logged at warning level with its origin and
    /// seq (anti-entropy carries its entry, as for any lost message).
    fn send(&self, addr: SocketAddr, to: Option<NodeId>, msg: Message) {
        use crate::replication::Msg;
        use crate::transport::SendError;
        let Err(e) = self.transport.send(addr, to.clone(), &msg) else {
            return;
        };
        let peer = to
            .as_ref()
            .map_or_else(|| addr.to_string(), |t| t.to_string());
        let m = match (&e, msg) {
            (SendError::Frame(_), Message::Replication(m)) => m,
            (_, m) => {
                let kind = match &m {
                    Message::Membership(m) => m.kind(),
                    Message::Replication(m) => m.kind(),
                };
                match e {
                    SendError::Frame(_) => {
                        tracing::warn!(node = %self.node, %peer, kind, error = %e, "message cannot be sent")
                    }
                    _ => {
                        tracing::debug!(node = %self.node, %peer, kind, error = %e, "message dropped")
                    }
                }
                return;
            }
        };
        if let Some((a, b)) = m.halves() {
            for half in [a, b] {
                self.send(addr, to.clone(), Message::Replication(half));
            }
            return;
        }
        match &m {
            Msg::Push { deltas, .. } | Msg::PullResponse { deltas, .. } if deltas.len() == 1 => {
                let d = &deltas[0];
                tracing::warn!(node = %self.node, %peer, origin = %d.origin, seq = d.seq, key = %d.key, error = %e,
                    "delta cannot be sent (larger than a frame); later deltas still flow, anti-entropy carries the entry");
            }
            _ => {
                tracing::warn!(node = %self.node, %peer, kind = m.kind(), error = %e, "message cannot be sent")
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

    fn publish_view(&mut self) {
        let now = self.now();
        let transport = self.transport.stats();
        if let Some(machine) = self.machine.as_mut() {
            let view = machine.view(now, transport);
            self.update_workers(&view.transport, &view.replication);
            self.view_tx.send_replace(Arc::new(view));
        }
    }

    /// What the workers did in this step: commits answered, durable batches
    /// pushed, membership ticked.
    fn observe_inputs(&self, inputs: &[Input]) {
        let now = wall_ms();
        for input in inputs {
            match input {
                Input::CommitDone { result: Ok(_), .. } => self.status.commits.ok(now),
                Input::CommitDone { result: Err(e), .. } => {
                    self.status.commits.error(now, e);
                    tracing::error!(node = %self.node, error = %e, "replicated write failed");
                }
                Input::Committed(_) | Input::CommittedForQuorum(_) => self.status.push.ok(now),
                Input::Tick => self.status.membership.ok(now),
                _ => {}
            }
        }
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

/// A durable batch as the machine's input: asking for acks while a quorum
/// write waits (its delta may be in this batch).
fn committed(batch: Arc<Vec<Delta>>, quorum_writes: &AtomicUsize) -> Input {
    if quorum_writes.load(Ordering::SeqCst) > 0 {
        Input::CommittedForQuorum(batch)
    } else {
        Input::Committed(batch)
    }
}

fn placeholder_view(node: &NodeId, transport: &Transport<Message>) -> ClusterView {
    ClusterView {
        me: SelfView {
            node_id: node.to_string(),
            addr: String::new(),
            incarnation: 0,
            joined: false,
            http: None,
            writes_fenced: None,
        },
        members: Vec::new(),
        membership: Default::default(),
        replication: Default::default(),
        placement: Default::default(),
        transport: transport.stats(),
        clock: None,
    }
}
