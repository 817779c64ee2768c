//! Per-peer replication counters, for `/api/introspection`, `/metrics` and
//! `hub inspect … peers|sync`. Plain data: the replicator updates them as it
//! handles events; reading them costs a clone.

use std::collections::BTreeMap;

use serde::Serialize;

/// Why an anti-entropy session started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AeTrigger {
    Timer,
    Reconnect,
    PullUnavailable,
    Manual,
    /// The layout changed: a peer newly owns partitions we hold data of.
    Handoff,
    /// Partitions we own may lack writes: a cover left them out (views of
    /// the layout differed), the origin no longer logs them, or a stub of
    /// one arrived. Fetched from a co-owner.
    PartitionRepair,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "reason")]
pub enum AeResult {
    /// Roots were equal: nothing to exchange.
    InSync,
    /// Differences were exchanged and our vector advanced to the peer's snapshot.
    Repaired,
    /// Gave up (timeout, peer down, failed commit); nothing is assumed.
    Failed(String),
}

/// One anti-entropy session this node initiated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AeRun {
    pub peer: String,
    pub trigger: AeTrigger,
    /// Monotonic ms inside the replicator; the node's snapshot
    /// (`ClusterView`) shows them as wall-clock ms since the epoch.
    pub started_ms: u64,
    pub finished_ms: u64,
    /// Inner Merkle nodes whose children were compared.
    pub nodes_compared: u64,
    /// Leaf buckets whose items were compared.
    pub leaves_compared: u64,
    /// Entries the peer sent us (it was newer) and how many changed our state.
    pub entries_received: u64,
    pub entries_applied: u64,
    /// Entries we sent the peer (we were newer).
    pub entries_sent: u64,
    /// Encoded message bytes of the session, each direction.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub result: AeResult,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PeerStats {
    /// Whether membership reports the peer alive.
    pub up: bool,
    /// Deltas we sent (push and pull answers).
    pub deltas_sent: u64,
    /// Deltas received from this peer (push and pull answers).
    pub deltas_received: u64,
    /// Received deltas that were the next of their origin and got logged.
    pub deltas_applied: u64,
    /// Received deltas we already had (duplicates).
    pub deltas_stale: u64,
    /// Received deltas that came before their predecessor: dropped, re-pulled.
    pub deltas_gap: u64,
    pub pulls_sent: u64,
    pub pulls_served: u64,
    /// Our pulls this peer answered "unavailable" (its log was trimmed).
    pub pulls_answered_unavailable: u64,
    /// Pulls of this peer we answered "unavailable".
    pub pulls_we_answered_unavailable: u64,
    /// Anti-entropy sessions this peer ran against us.
    pub anti_entropy_served: u64,
    /// Anti-entropy sessions we ran against this peer, and their failures.
    pub anti_entropy_runs: u64,
    pub anti_entropy_failures: u64,
    /// Entries this peer sent us in our anti-entropy sessions, all told (the
    /// last session alone may be an in-sync one after a repair).
    pub anti_entropy_entries_received: u64,
    /// Entries this peer sent us in its own anti-entropy sessions (what it
    /// found we lacked, or a subtree it streamed), that we store. Which
    /// side repairs a difference depends on whose session runs first.
    pub anti_entropy_entries_pushed: u64,
    pub last_anti_entropy: Option<AeRun>,
    /// Messages that failed validation (ignored).
    pub bad_messages: u64,
    /// Message stamps from the peer too far ahead of our wall clock to be
    /// adopted by our clock (the data is still applied).
    pub clock_stamps_not_adopted: u64,
    /// Durable acks we sent this peer for its quorum writes.
    pub acks_sent: u64,
    /// Quorum reads of this peer we answered.
    pub reads_served: u64,
    /// Read repairs we sent this peer (it answered an older entry), and
    /// the ones it sent us.
    pub read_repairs_sent: u64,
    pub read_repairs_received: u64,
    /// Length of the transport's send queue to this peer, as last reported
    /// by the shell (`Replicator::note_queue_len`).
    pub queue_len: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplicationStats {
    pub node: String,
    pub peers: BTreeMap<String, PeerStats>,
    /// The most recent finished session with any peer.
    pub last_anti_entropy: Option<AeRun>,
    pub anti_entropy_active: usize,
    /// Commits handed to the shell whose outcome has not come back yet.
    pub pending_commits: usize,
}
