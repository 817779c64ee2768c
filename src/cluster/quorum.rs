//! Per-request quorums: who the replicas of a key are, how many of them
//! must answer, and the handle the HTTP API waits through.
//!
//! **Replica set.** Today every node holds every key, so the replicas of
//! any key are this node and every member it knows that has not left —
//! alive, suspect or dead: a dead replica still counts in N, so a quorum
//! can fail, which is the point. [`replicas_for`] is the one place that
//! decides it (sharding makes it the owners of the key's partition).
//!
//! **Levels.** `1` (this node alone: today's path, no extra message),
//! `quorum` (N/2+1), `all` (N). A write waits until that many replicas,
//! this node included, hold it durably; a read until that many answered.
//!
//! **The handle** ([`QuorumClient`]) sends requests to the cluster driver
//! and awaits a oneshot answer; the node machine resolves it (see
//! `crate::replication::quorum` and `read_quorum`). A write registers itself
//! *before* it is committed ([`QuorumClient::write_guard`]), so the push of
//! its deltas already asks replicas for acks; writes with `w=1` never
//! register and cost nothing extra.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::membership::{Membership, Status};
use crate::model::NodeId;
use crate::replication::quorum::WriteResolved;
use crate::replication::read_quorum::ReadResolved;

/// How many replicas a request waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    One,
    Quorum,
    All,
}

impl Level {
    /// `1`, `quorum` or `all`.
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "1" => Some(Level::One),
            "quorum" => Some(Level::Quorum),
            "all" => Some(Level::All),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::One => "1",
            Level::Quorum => "quorum",
            Level::All => "all",
        }
    }

    /// Replies needed out of `n` replicas.
    pub fn needed(self, n: usize) -> usize {
        match self {
            Level::One => 1,
            Level::Quorum => n / 2 + 1,
            Level::All => n,
        }
    }
}

/// The replicas of `key`, `me` first. With full replication every node
/// holds every key: this node and every member that has not left the
/// cluster. With sharding (`crate::placement`), the owners of the key's
/// partition (this node first if it is one; a node that took the write
/// without owning the key still counts its own durable copy first).
pub fn replicas_for(
    membership: &Membership,
    layout: &crate::placement::Layout,
    me: &NodeId,
    key: &str,
) -> Vec<NodeId> {
    if !layout.is_full() && !crate::model::is_internal(key) {
        let owners = layout.owners(crate::placement::partition_of(key));
        return std::iter::once(me.clone())
            .chain(owners.iter().filter(|o| *o != me).cloned())
            .collect();
    }
    std::iter::once(me.clone())
        .chain(
            membership
                .table()
                .iter()
                .filter(|m| m.status != Status::Left && m.id != *me)
                .map(|m| m.id.clone()),
        )
        .collect()
}

/// What the HTTP side asks the cluster driver.
#[derive(Debug)]
pub enum Request {
    /// Own write `seq` of `key`, durable here, waits for acks.
    Write {
        key: String,
        seq: u64,
        level: Level,
        reply: oneshot::Sender<WriteResolved>,
    },
    /// A read of `key` from `level` replicas.
    Read {
        key: String,
        level: Level,
        reply: oneshot::Sender<ReadResolved>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum QuorumError {
    #[error("the cluster driver has stopped (node shutting down)")]
    Stopped,
}

/// The HTTP API's way to the node machine's quorum trackers. Cheap to clone.
#[derive(Clone)]
pub struct QuorumClient {
    tx: mpsc::Sender<Request>,
    /// Writes with `w > 1` between their commit and their answer: while
    /// non-zero, the driver's pushes of own deltas ask for acks.
    waiting: Arc<AtomicUsize>,
    timeout: Duration,
}

/// Keeps acks requested while alive (see [`QuorumClient::write_guard`]).
pub struct WriteGuard(Arc<AtomicUsize>);

impl Drop for WriteGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The driver's end of a [`QuorumClient`].
pub(super) struct QuorumInbox {
    pub rx: mpsc::Receiver<Request>,
    /// Non-zero while a quorum write waits: its deltas must ask for acks.
    pub waiting: Arc<AtomicUsize>,
    pub timeout: Duration,
}

/// A connected client and inbox; `timeout` is how long a request waits.
pub(super) fn channel(timeout: Duration) -> (QuorumClient, QuorumInbox) {
    // Bounded: a burst of quorum requests waits for room (backpressure).
    let (tx, rx) = mpsc::channel(1024);
    let waiting = Arc::new(AtomicUsize::new(0));
    (
        QuorumClient {
            tx,
            waiting: waiting.clone(),
            timeout,
        },
        QuorumInbox {
            rx,
            waiting,
            timeout,
        },
    )
}

impl QuorumClient {
    /// How long a quorum request waits (setting `quorum_timeout`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Take before committing a `w > 1` write, drop after its answer.
    pub fn write_guard(&self) -> WriteGuard {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        WriteGuard(self.waiting.clone())
    }

    /// Waits until `level` replicas hold own write `seq` of `key` durably,
    /// or the timeout passed; the answer says which.
    pub async fn write(
        &self,
        key: &str,
        seq: u64,
        level: Level,
    ) -> Result<WriteResolved, QuorumError> {
        let (reply, rx) = oneshot::channel();
        let req = Request::Write {
            key: key.to_string(),
            seq,
            level,
            reply,
        };
        self.ask(req, rx).await
    }

    /// Reads `key` from `level` replicas (the newest entry), or fails with
    /// the count at the timeout.
    pub async fn read(&self, key: &str, level: Level) -> Result<ReadResolved, QuorumError> {
        let (reply, rx) = oneshot::channel();
        let req = Request::Read {
            key: key.to_string(),
            level,
            reply,
        };
        self.ask(req, rx).await
    }

    async fn ask<T>(&self, req: Request, rx: oneshot::Receiver<T>) -> Result<T, QuorumError> {
        self.tx.send(req).await.map_err(|_| QuorumError::Stopped)?;
        // The machine resolves every request by its deadline; the margin
        // only guards against a driver that stopped mid-way.
        tokio::time::timeout(self.timeout + Duration::from_secs(1), rx)
            .await
            .map_err(|_| QuorumError::Stopped)?
            .map_err(|_| QuorumError::Stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_count_majorities() {
        assert_eq!(Level::parse("quorum"), Some(Level::Quorum));
        assert_eq!(Level::parse("2"), None);
        assert_eq!(Level::parse(""), None);
        let needed = |l: Level| [1, 2, 3, 4, 5].map(|n| l.needed(n));
        assert_eq!(needed(Level::One), [1, 1, 1, 1, 1]);
        assert_eq!(needed(Level::Quorum), [1, 2, 2, 3, 3]);
        assert_eq!(needed(Level::All), [1, 2, 3, 4, 5]);
    }
}
