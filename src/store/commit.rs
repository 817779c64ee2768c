//! Group commit: the one writer of a store.
//!
//! Writers (HTTP handlers, sensors, replication) send jobs over a bounded
//! channel. A dedicated thread takes whatever has queued up, applies it all as
//! one atomic batch, flushes once, and only then answers every job. Under load
//! many writes share one flush; with one writer a write costs one flush. The
//! bounded channel pushes back on producers instead of queueing without limit.
//!
//! After a flush, deltas that were newly logged are handed to the subscriber
//! (replication), so only durable deltas leave the node.

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
}

#[derive(Default, Debug)]
pub struct CommitStats {
    pub groups: std::sync::atomic::AtomicU64,
    pub ops: std::sync::atomic::AtomicU64,
    pub flushes: std::sync::atomic::AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Store(#[from] Arc<StoreError>),
    #[error("the store writer has stopped (node shutting down)")]
    Stopped,
}

pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Receives the deltas of each durable group.
pub type DeltaSink = mpsc::UnboundedSender<Arc<Vec<Delta>>>;

impl Committer {
    /// Starts the writer thread. It stops when every `Committer` is dropped.
    pub fn start(store: Arc<Store>, sink: Option<DeltaSink>) -> Committer {
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(CommitStats::default());
        let thread_stats = stats.clone();
        std::thread::Builder::new()
            .name("hub-commit".into())
            .spawn(move || run(store, rx, sink, thread_stats))
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!(error = %e, "cannot start commit thread"));
        Committer { tx, stats }
    }

    /// Applies `ops` atomically and durably; resolves after the flush.
    pub async fn commit(&self, ops: Vec<Op>) -> Result<Vec<Outcome>, CommitError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { ops, reply })
            .await
            .map_err(|_| CommitError::Stopped)?;
        Ok(rx.await.map_err(|_| CommitError::Stopped)??)
    }

    pub fn stats(&self) -> &CommitStats {
        &self.stats
    }
}

fn run(
    store: Arc<Store>,
    mut rx: mpsc::Receiver<Job>,
    sink: Option<DeltaSink>,
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
        // Received deltas, kept to hand on to replication once durable.
        let mut received: Vec<Option<Delta>> = Vec::new();
        for job in jobs {
            sizes.push(job.ops.len());
            if sink.is_some() {
                received.extend(job.ops.iter().map(|op| match op {
                    Op::Delta(d) => Some(d.clone()),
                    _ => None,
                }));
            }
            all.extend(job.ops);
            replies.push(job.reply);
        }
        let result = store.apply(all, wall_ms()).and_then(|outcomes| {
            store.flush()?;
            Ok(outcomes)
        });
        stats.groups.fetch_add(1, Relaxed);
        stats.ops.fetch_add(n_ops as u64, Relaxed);
        match result {
            Ok(mut outcomes) => {
                stats.flushes.fetch_add(1, Relaxed);
                if let Some(sink) = &sink {
                    let fresh: Vec<Delta> = outcomes
                        .iter()
                        .zip(received.iter_mut())
                        .filter_map(|(o, r)| match o {
                            Outcome::Written(d) => Some(d.clone()),
                            Outcome::Applied { .. } => r.take(),
                            _ => None,
                        })
                        .collect();
                    if !fresh.is_empty() {
                        let _ = sink.send(Arc::new(fresh));
                    }
                }
                let mut rest = outcomes.drain(..);
                for (size, reply) in sizes.into_iter().zip(replies) {
                    let part: Vec<Outcome> = rest.by_ref().take(size).collect();
                    let _ = reply.send(Ok(part));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "write group failed");
                let e = Arc::new(e);
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}
