//! Group commit: the one writer of a store.
//!
//! Writers (HTTP handlers, sensors, replication) send jobs over a bounded
//! channel. One thread takes whatever has queued up and applies it as one
//! atomic batch; a second thread flushes and only then answers every job of
//! every group applied before the flush began, so applying the next group
//! overlaps with flushing this one. Under load many writes share one flush; with one writer a write costs one flush. The
//! bounded channel pushes back on producers instead of queueing without limit.
//!
//! After a flush, deltas that were newly logged are handed to the subscriber
//! (replication), so only durable deltas leave the node.
//!
//! When a batch or a flush fails, the store reopens its database from disk;
//! each group is then answered by whether its commit number is on disk
//! ([`Store::is_durable`]): success for groups that took effect, an error only
//! for groups that did not and will not.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};

use super::{Op, Outcome, Store, StoreError};
use crate::model::Delta;

/// Most jobs folded into one batch; bounds latency of the first job in a group.
const MAX_GROUP_OPS: usize = 8192;
const QUEUE: usize = 16_384;

type Reply = oneshot::Sender<Result<Vec<Outcome>, Arc<StoreError>>>;

struct Job {
    ops: Vec<Op>,
    reply: Reply,
}

/// Cheap to clone; each clone sends to the same writer thread.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Job>,
    stats: Arc<CommitStats>,
    fence: WriteFence,
    clock: crate::clock::ClockGate,
}

/// How long a local write waits for a closed [`WriteFence`] to open before
/// it is refused: longer than a node's start-up check (3 s at most, see
/// `cluster::node_machine`), so writes at start wait instead of failing.
const FENCE_WAIT: std::time::Duration = std::time::Duration::from_secs(4);

/// Closed (with a reason) while this node must not accept local writes:
/// it is recovering writes of its own origin that peers hold and it lost.
/// Replicated deltas and anti-entropy still go through. Cheap to clone.
#[derive(Clone)]
pub struct WriteFence(Arc<tokio::sync::watch::Sender<Option<String>>>);

impl Default for WriteFence {
    fn default() -> Self {
        WriteFence(Arc::new(tokio::sync::watch::Sender::new(None)))
    }
}

impl WriteFence {
    /// `Some(reason)` refuses local writes; `None` accepts them again.
    pub fn set(&self, reason: Option<String>) {
        self.0.send_replace(reason);
    }

    pub fn reason(&self) -> Option<String> {
        self.0.borrow().clone()
    }

    /// Waits up to `wait` for the fence to open; the reason if it did not.
    async fn wait_open(&self, wait: std::time::Duration) -> Result<(), String> {
        let mut rx = self.0.subscribe();
        let open = tokio::time::timeout(wait, rx.wait_for(|r| r.is_none())).await;
        match open {
            Ok(Ok(_)) => Ok(()),
            _ => Err(self.reason().unwrap_or_default()),
        }
    }
}

#[derive(Debug)]
pub struct CommitStats {
    /// Submission to durable answer of [`Committer::commit`] calls, seconds.
    pub commit_latency: prometheus_client::metrics::histogram::Histogram,
    /// Duration of each flush, seconds.
    pub flush_latency: prometheus_client::metrics::histogram::Histogram,
    pub groups: std::sync::atomic::AtomicU64,
    pub ops: std::sync::atomic::AtomicU64,
    pub flushes: std::sync::atomic::AtomicU64,
    /// Time spent in flushes and in applying groups, for mean costs.
    pub flush_micros: std::sync::atomic::AtomicU64,
    pub apply_micros: std::sync::atomic::AtomicU64,
    /// Groups that failed (apply or flush), for the worker status.
    pub failures: std::sync::atomic::AtomicU64,
    pub consecutive_failures: std::sync::atomic::AtomicU64,
    pub last_error: std::sync::Mutex<Option<String>>,
    /// Wall-clock ms when the last group was answered.
    pub last_run_ms: std::sync::atomic::AtomicU64,
}

/// 0.25 ms to ~8 s, doubling (the buckets of every latency histogram).
fn latency_histogram() -> prometheus_client::metrics::histogram::Histogram {
    use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

impl Default for CommitStats {
    fn default() -> Self {
        CommitStats {
            commit_latency: latency_histogram(),
            flush_latency: latency_histogram(),
            groups: Default::default(),
            ops: Default::default(),
            flushes: Default::default(),
            flush_micros: Default::default(),
            apply_micros: Default::default(),
            failures: Default::default(),
            consecutive_failures: Default::default(),
            last_error: Default::default(),
            last_run_ms: Default::default(),
        }
    }
}

impl CommitStats {
    fn record(&self, error: Option<&StoreError>) {
        use std::sync::atomic::Ordering::Relaxed;
        self.last_run_ms.store(wall_ms(), Relaxed);
        match error {
            None => self.consecutive_failures.store(0, Relaxed),
            Some(e) => {
                self.failures.fetch_add(1, Relaxed);
                self.consecutive_failures.fetch_add(1, Relaxed);
                if let Ok(mut l) = self.last_error.lock() {
                    *l = Some(e.to_string());
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Store(#[from] Arc<StoreError>),
    #[error("the store writer has stopped (node shutting down)")]
    Stopped,
    #[error("local writes are paused: {0}")]
    Fenced(String),
    #[error("local writes are refused: {}", .0.message)]
    Clock(crate::clock::Refusal),
    #[error("value of {key:?} is {len} bytes; no value above {max} bytes can be replicated (one frame with its envelope)")]
    ValueTooLarge { key: String, len: usize, max: usize },
}

/// The backstop behind every ingest path's own limit (`max_value_bytes`):
/// a local value that could not travel in one frame is refused before it
/// is stamped, so every accepted write can be replicated.
fn check_replicable(ops: &[Op]) -> Result<(), CommitError> {
    let max = crate::transport::frame::MAX_VALUE_BYTES;
    for op in ops {
        if let Op::Local {
            key,
            value: Some(v),
            ..
        } = op
        {
            if v.len() > max {
                return Err(CommitError::ValueTooLarge {
                    key: key.clone(),
                    len: v.len(),
                    max,
                });
            }
        }
    }
    Ok(())
}

pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Receives the deltas of each durable group. Bounded: when the receiver
/// lags, the flush thread waits, and writers feel it through the job queue.
pub type DeltaSink = mpsc::Sender<Arc<Vec<Delta>>>;

impl Committer {
    /// Starts the writer threads. They stop when every `Committer` is dropped.
    pub fn start(store: Arc<Store>, sink: Option<DeltaSink>) -> Result<Committer, StoreError> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(CommitStats::default());
        // At most a few applied groups wait for their flush: backpressure.
        let (flush_tx, flush_rx) = std::sync::mpsc::sync_channel(4);
        let (apply_store, apply_stats, flush_stats) = (store.clone(), stats.clone(), stats.clone());
        let keep_received = sink.is_some();
        let spawned = std::thread::Builder::new()
            .name("hub-apply".into())
            .spawn(move || apply_loop(apply_store, rx, flush_tx, keep_received, apply_stats))
            .and_then(|_| {
                std::thread::Builder::new()
                    .name("hub-flush".into())
                    .spawn(move || flush_loop(store, flush_rx, sink, flush_stats))
            });
        // On error the apply thread, if it started, ends with the dropped sender.
        spawned.map_err(StoreError::Spawn)?;
        Ok(Committer {
            tx,
            stats,
            fence: WriteFence::default(),
            clock: crate::clock::ClockGate::new(),
        })
    }

    /// The fence on local writes (see [`WriteFence`]), shared by every clone.
    pub fn fence(&self) -> &WriteFence {
        &self.fence
    }

    /// The clock gate (see [`crate::clock::gate`]), shared by every clone:
    /// local writes are refused while this node's clock may not stamp them.
    pub fn clock_gate(&self) -> &crate::clock::ClockGate {
        &self.clock
    }

    /// Applies `ops` atomically and durably; resolves after the flush.
    /// Local writes wait briefly for a closed [`WriteFence`] or an
    /// unverified clock, then are refused with [`CommitError::Fenced`] or
    /// [`CommitError::Clock`] and change nothing.
    pub async fn commit(&self, ops: Vec<Op>) -> Result<Vec<Outcome>, CommitError> {
        if ops.iter().any(|op| matches!(op, Op::Local { .. })) {
            check_replicable(&ops)?;
            if self.fence.reason().is_some() {
                self.fence
                    .wait_open(FENCE_WAIT)
                    .await
                    .map_err(CommitError::Fenced)?;
            }
            self.clock
                .check_waiting(FENCE_WAIT)
                .await
                .map_err(CommitError::Clock)?;
        }
        let started = std::time::Instant::now();
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { ops, reply })
            .await
            .map_err(|_| CommitError::Stopped)?;
        let answer = rx.await.map_err(|_| CommitError::Stopped)??;
        self.stats
            .commit_latency
            .observe(started.elapsed().as_secs_f64());
        Ok(answer)
    }

    /// Queues `ops` at once (keeping the order of calls) when the queue has
    /// room; the receiver resolves after the flush. When it is full, the ops
    /// come back for the caller to send with [`Committer::commit`].
    pub fn try_submit(&self, ops: Vec<Op>) -> Result<Pending, Vec<Op>> {
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(Job { ops, reply }) {
            Ok(()) => Ok(Pending(rx)),
            Err(mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job)) => {
                Err(job.ops)
            }
        }
    }

    /// Queues `ops`, waiting for room in the queue; the [`Pending`]
    /// resolves after the flush. Calls are queued in the order they are made.
    pub async fn submit(&self, ops: Vec<Op>) -> Result<Pending, CommitError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { ops, reply })
            .await
            .map_err(|_| CommitError::Stopped)?;
        Ok(Pending(rx))
    }

    /// Jobs waiting for the writer thread.
    pub fn queue_len(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// A handle that reads the queue and stats without keeping the writer
    /// alive (the threads stop when the last `Committer` goes).
    pub fn observer(&self) -> CommitObserver {
        CommitObserver {
            tx: self.tx.downgrade(),
            stats: self.stats.clone(),
        }
    }

    pub fn stats(&self) -> &CommitStats {
        &self.stats
    }
}

/// See [`Committer::observer`].
pub struct CommitObserver {
    tx: mpsc::WeakSender<Job>,
    stats: Arc<CommitStats>,
}

impl CommitObserver {
    /// Jobs waiting; 0 once the writer stopped.
    pub fn queue_len(&self) -> usize {
        self.tx
            .upgrade()
            .map_or(0, |tx| tx.max_capacity() - tx.capacity())
    }

    pub fn stats(&self) -> &CommitStats {
        &self.stats
    }
}

/// A queued commit; await [`Pending::wait`] for its outcomes.
pub struct Pending(oneshot::Receiver<Result<Vec<Outcome>, Arc<StoreError>>>);

impl Pending {
    pub async fn wait(self) -> Result<Vec<Outcome>, CommitError> {
        Ok(self.0.await.map_err(|_| CommitError::Stopped)??)
    }
}

/// A group that is applied and waits for a flush before it is answered.
struct Applied {
    /// The group's commit number: whether it is on disk decides its answer.
    commit: u64,
    outcomes: Vec<Outcome>,
    sizes: Vec<usize>,
    replies: Vec<Reply>,
    /// Received deltas aligned with `outcomes`, to hand on once durable.
    received: Vec<Option<Delta>>,
}

/// Gathers queued jobs into groups and applies each as one atomic batch.
/// Applying group N+1 overlaps with the flush of group N: a flush makes
/// durable everything applied before it started, so answering after it is sound.
fn apply_loop(
    store: Arc<Store>,
    mut rx: mpsc::Receiver<Job>,
    flush_tx: std::sync::mpsc::SyncSender<Applied>,
    keep_received: bool,
    stats: Arc<CommitStats>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        let mut n_ops = jobs[0].ops.len();
        while n_ops < MAX_GROUP_OPS {
            match rx.try_recv() {
                Ok(job) => {
                    n_ops += job.ops.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let mut all = Vec::with_capacity(n_ops);
        let mut sizes = Vec::with_capacity(jobs.len());
        let mut replies = Vec::with_capacity(jobs.len());
        let mut received: Vec<Option<Delta>> = Vec::new();
        for job in jobs {
            sizes.push(job.ops.len());
            if keep_received {
                received.extend(job.ops.iter().map(|op| match op {
                    Op::Delta(d) => Some(d.clone()),
                    _ => None,
                }));
            }
            all.extend(job.ops);
            replies.push(job.reply);
        }
        stats.groups.fetch_add(1, Relaxed);
        stats.ops.fetch_add(n_ops as u64, Relaxed);
        let started = std::time::Instant::now();
        let applied = store.apply_group(all, wall_ms());
        stats
            .apply_micros
            .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
        match applied {
            Ok((outcomes, commit)) => {
                let applied = Applied {
                    commit,
                    outcomes,
                    sizes,
                    replies,
                    received,
                };
                if flush_tx.send(applied).is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "write group failed");
                stats.record(Some(&e));
                let e = Arc::new(e);
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Flushes once for every applied group waiting, then answers them all.
fn flush_loop(
    store: Arc<Store>,
    rx: std::sync::mpsc::Receiver<Applied>,
    sink: Option<DeltaSink>,
    stats: Arc<CommitStats>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    while let Ok(first) = rx.recv() {
        let mut groups = vec![first];
        groups.extend(rx.try_iter());
        let started = std::time::Instant::now();
        let flushed = store.flush();
        if flushed.is_ok() {
            stats.flush_latency.observe(started.elapsed().as_secs_f64());
            stats.flushes.fetch_add(1, Relaxed);
            stats
                .flush_micros
                .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
        }
        let error = flushed.err().map(Arc::new);
        stats.record(error.as_deref());
        if let Some(e) = &error {
            tracing::error!(error = %e, groups = groups.len(), "flush failed");
        }
        for mut g in groups {
            let failure = match store.is_durable(g.commit) {
                Some(true) => None,
                Some(false) => Some(error.clone().unwrap_or_else(|| Arc::new(StoreError::Lost))),
                None => Some(Arc::new(StoreError::Unknown)),
            };
            if let Some(e) = failure {
                for reply in g.replies {
                    let _ = reply.send(Err(e.clone()));
                }
                continue;
            }
            if let Some(sink) = &sink {
                let fresh: Vec<Delta> = g
                    .outcomes
                    .iter()
                    .zip(g.received.iter_mut())
                    .filter_map(|(o, r)| match o {
                        Outcome::Written(d) => Some(d.clone()),
                        Outcome::Applied { .. } => r.take(),
                        _ => None,
                    })
                    .collect();
                if !fresh.is_empty() {
                    let _ = sink.blocking_send(Arc::new(fresh));
                }
            }
            let mut rest = g.outcomes.into_iter();
            for (size, reply) in g.sizes.into_iter().zip(g.replies) {
                let part: Vec<Outcome> = rest.by_ref().take(size).collect();
                let _ = reply.send(Ok(part));
            }
        }
    }
}
