//! The member table: everything this node knows about each peer.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::detector::{DetectorConfig, PhiAccrual};
use super::msg::MemberInfo;
use crate::model::NodeId;

/// A peer's state as seen by this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Answering heartbeats.
    Alive,
    /// A probe went unanswered, here or at a member that spread the
    /// suspicion; not used for replication, still probed, dead after the
    /// suspicion timeout unless it refutes.
    Suspect,
    /// Suspect for longer than `dead_after`; kept and probed at a lower rate
    /// so it can come back.
    Dead,
    /// Said goodbye; not probed. Comes back if it talks to us again.
    Left,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Alive => "alive",
            Status::Suspect => "suspect",
            Status::Dead => "dead",
            Status::Left => "left",
        })
    }
}

/// One peer.
#[derive(Clone, Debug)]
pub struct Member {
    pub id: NodeId,
    pub addr: SocketAddr,
    /// Highest incarnation heard of (from the member itself or gossip).
    pub incarnation: u64,
    pub status: Status,
    /// Incarnation at which the current status was decided. Gossip about a
    /// suspect/dead member carries this one, so the member's refutation
    /// (a higher incarnation) ends the suspicion instead of re-triggering it.
    pub status_incarnation: u64,
    pub status_since_ms: u64,
    /// Last message received directly from the member.
    pub last_seen_ms: Option<u64>,
    /// Smoothed round-trip time of Ping/Ack.
    pub rtt_ms: Option<f64>,
    /// Fed by every message heard directly from the member; reported.
    pub detector: PhiAccrual,
    /// Its advertised client URL, when known.
    pub http: Option<String>,
    /// Highest seq of its own origin it reported.
    pub head: Option<u64>,
}

impl Member {
    pub fn new(
        id: NodeId,
        addr: SocketAddr,
        incarnation: u64,
        status: Status,
        now_ms: u64,
        detector: DetectorConfig,
    ) -> Self {
        let mut d = PhiAccrual::new(detector);
        // Registering counts as a first arrival: a peer that never answers
        // must still become suspect.
        d.heartbeat(now_ms);
        Member {
            id,
            addr,
            incarnation,
            status,
            status_incarnation: incarnation,
            status_since_ms: now_ms,
            last_seen_ms: None,
            rtt_ms: None,
            detector: d,
            http: None,
            head: None,
        }
    }

    /// What we gossip about this member.
    pub fn info(&self) -> MemberInfo {
        let incarnation = match self.status {
            Status::Suspect | Status::Dead => self.status_incarnation,
            Status::Alive | Status::Left => self.incarnation,
        };
        MemberInfo {
            id: self.id.clone(),
            addr: self.addr,
            incarnation,
            status: self.status,
            http: self.http.clone(),
            head: self.head.unwrap_or(0),
        }
    }

    /// Takes the client URL and head from what a member (or gossip about
    /// it) says; heads only grow, a URL is replaced only by a newer one.
    pub fn learn(&mut self, info: &MemberInfo, newer: bool) {
        if info.http.is_some() && (newer || self.http.is_none()) {
            self.http = info.http.clone();
        }
        self.head = Some(self.head.unwrap_or(0).max(info.head));
    }

    /// Folds in an RTT sample (EWMA, 1/8 weight like TCP's SRTT).
    pub fn observe_rtt(&mut self, rtt_ms: u64) {
        let s = rtt_ms as f64;
        self.rtt_ms = Some(match self.rtt_ms {
            None => s,
            Some(old) => old + (s - old) / 8.0,
        });
    }

    pub fn view(&self, now_ms: u64) -> MemberView {
        MemberView {
            node_id: self.id.clone(),
            addr: self.addr,
            status: self.status,
            last_seen_ms_ago: self.last_seen_ms.map(|t| now_ms.saturating_sub(t)),
            rtt_ms: self.rtt_ms,
            phi: self.detector.phi(now_ms),
            incarnation: self.incarnation,
            http: self.http.clone(),
            head: self.head,
        }
    }
}

/// A read-only row for `GET /api/membership`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemberView {
    pub node_id: NodeId,
    pub addr: SocketAddr,
    pub status: Status,
    /// `None`: never heard from directly (known only through gossip/restore).
    pub last_seen_ms_ago: Option<u64>,
    pub rtt_ms: Option<f64>,
    /// Failure-detector value now (suspect at `phi_threshold`).
    pub phi: f64,
    pub incarnation: u64,
    /// Advertised client URL (`hub status` and the dashboard reach it there).
    pub http: Option<String>,
    /// Highest seq of its own origin it reported.
    pub head: Option<u64>,
}

/// All known peers (never this node itself), ordered by id.
#[derive(Clone, Debug, Default)]
pub struct Table {
    members: BTreeMap<NodeId, Member>,
}

impl Table {
    pub fn get(&self, id: &NodeId) -> Option<&Member> {
        self.members.get(id)
    }

    pub fn get_mut(&mut self, id: &NodeId) -> Option<&mut Member> {
        self.members.get_mut(id)
    }

    pub fn insert(&mut self, m: Member) {
        self.members.insert(m.id.clone(), m);
    }

    pub fn remove(&mut self, id: &NodeId) -> Option<Member> {
        self.members.remove(id)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Member> {
        self.members.values_mut()
    }

    /// Up to `n` members starting at position `start` (wrapping), for
    /// rotating gossip.
    pub fn window(&self, start: usize, n: usize) -> Vec<&Member> {
        let len = self.members.len();
        if len == 0 {
            return Vec::new();
        }
        self.members
            .values()
            .cycle()
            .skip(start % len)
            .take(n.min(len))
            .collect()
    }
}
