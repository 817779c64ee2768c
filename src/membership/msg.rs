//! Membership messages. The transport carries them inside its versioned
//! envelope; it tells us which authenticated node sent each one, so no
//! message needs (or is trusted) to name its own sender except where it
//! claims an identity, and then the claim must match.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::table::Status;
use crate::model::NodeId;

/// Most member entries accepted in one [`Msg::Welcome`], and the most
/// members one node tracks.
pub const MAX_MEMBERS_PER_MSG: usize = 1024;
/// Most gossip entries accepted on one [`Msg::Ping`] / [`Msg::Ack`].
pub const MAX_GOSSIP_PER_MSG: usize = 64;

/// What one node says about one member (possibly itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: NodeId,
    /// Address the member listens on (as advertised by the member itself).
    pub addr: SocketAddr,
    /// Bumped only by the member itself: on restart and to refute suspicion.
    pub incarnation: u64,
    /// The sender's own view of that member.
    pub status: Status,
    /// The member's client (HTTP) base URL, as it advertises it; `None`
    /// when unknown. At most [`MAX_HTTP_URL_BYTES`].
    pub http: Option<String>,
    /// Highest seq of the member's own origin it has written (as last
    /// reported by the member): peers compare it with their version
    /// vector to know how far behind they are.
    pub head: u64,
}

/// A ping's clocks in microseconds; zero when the sender has no clock
/// (then no offset is measured from it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub mono_us: u64,
    pub wall_us: u64,
}
/// Longest advertised HTTP URL accepted in a [`MemberInfo`].
pub const MAX_HTTP_URL_BYTES: usize = 512;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// "I am `member`, let me in." Sent to seeds (by address) on join and to
    /// remembered peers on restart. `member.id` must be the sender's
    /// certificate id.
    Hello { member: MemberInfo },
    /// Answer to `Hello`: the full member list, the answering node included.
    Welcome { members: Vec<MemberInfo> },
    /// Heartbeat. `sent_ms` is the sender's own monotonic clock, echoed
    /// back so it can measure RTT without synchronised clocks; `stamp` is
    /// the sender's clocks in microseconds, echoed back with the answerer's
    /// wall clock so the sender can estimate the clock offset
    /// (`crate::clock::offset`). Carries piggybacked gossip (the sender's
    /// own entry first).
    Ping {
        sent_ms: u64,
        stamp: Stamp,
        gossip: Vec<MemberInfo>,
    },
    /// Answer to `Ping`: the ping's stamp, and the answerer's wall clock
    /// (microseconds since the epoch) when it answered.
    Ack {
        echo_ms: u64,
        echo: Stamp,
        wall_us: u64,
        gossip: Vec<MemberInfo>,
    },
    /// Graceful departure of the sender.
    Leave { incarnation: u64 },
    /// "Ping `target` for me": the sender's own probe of `target` went
    /// unanswered (SWIM's indirect probe). Answered with
    /// [`Msg::IndirectAck`] once `target` acks our ping, else not at all.
    PingReq {
        target: NodeId,
        gossip: Vec<MemberInfo>,
    },
    /// `target` answered a ping sent on the receiver's behalf.
    IndirectAck {
        target: NodeId,
        gossip: Vec<MemberInfo>,
    },
}

/// A message that breaks a size bound (never produced by a correct peer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("membership message {kind} carries {len} entries, more than the limit of {max}")]
pub struct MsgTooLarge {
    pub kind: &'static str,
    pub len: usize,
    pub max: usize,
}

impl Msg {
    pub fn kind(&self) -> &'static str {
        match self {
            Msg::Hello { .. } => "hello",
            Msg::Welcome { .. } => "welcome",
            Msg::Ping { .. } => "ping",
            Msg::Ack { .. } => "ack",
            Msg::Leave { .. } => "leave",
            Msg::PingReq { .. } => "ping_req",
            Msg::IndirectAck { .. } => "indirect_ack",
        }
    }

    /// Checks the list bounds; the transport should also check them (or the
    /// frame size) before decoding.
    pub fn validate(&self) -> Result<(), MsgTooLarge> {
        let infos: &[MemberInfo] = match self {
            Msg::Hello { member } => std::slice::from_ref(member),
            Msg::Welcome { members } => members,
            Msg::Ping { gossip, .. }
            | Msg::Ack { gossip, .. }
            | Msg::PingReq { gossip, .. }
            | Msg::IndirectAck { gossip, .. } => gossip,
            Msg::Leave { .. } => &[],
        };
        if let Some(long) = infos
            .iter()
            .filter_map(|i| i.http.as_ref())
            .find(|u| u.len() > MAX_HTTP_URL_BYTES)
        {
            return Err(MsgTooLarge {
                kind: "http url",
                len: long.len(),
                max: MAX_HTTP_URL_BYTES,
            });
        }
        let (len, max) = match self {
            Msg::Welcome { members } => (members.len(), MAX_MEMBERS_PER_MSG),
            Msg::Ping { gossip, .. }
            | Msg::Ack { gossip, .. }
            | Msg::PingReq { gossip, .. }
            | Msg::IndirectAck { gossip, .. } => (gossip.len(), MAX_GOSSIP_PER_MSG),
            Msg::Hello { .. } | Msg::Leave { .. } => return Ok(()),
        };
        if len > max {
            return Err(MsgTooLarge {
                kind: self.kind(),
                len,
                max,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str) -> MemberInfo {
        MemberInfo {
            id: NodeId::new(id).unwrap(),
            addr: "127.0.0.1:7000".parse().unwrap(),
            incarnation: 3,
            status: Status::Suspect,
            http: Some("https://a.example:8443".into()),
            head: 7,
        }
    }

    #[test]
    fn messages_round_trip_through_bincode() {
        let cfg = bincode::config::standard();
        for m in [
            Msg::Hello { member: info("a") },
            Msg::Welcome {
                members: vec![info("a"), info("b")],
            },
            Msg::Ping {
                sent_ms: 42,
                stamp: Stamp {
                    mono_us: 42_000,
                    wall_us: 1,
                },
                gossip: vec![info("c")],
            },
            Msg::Ack {
                echo_ms: 42,
                echo: Stamp::default(),
                wall_us: 7,
                gossip: vec![],
            },
            Msg::Leave { incarnation: 9 },
            Msg::PingReq {
                target: NodeId::new("t").unwrap(),
                gossip: vec![info("d")],
            },
            Msg::IndirectAck {
                target: NodeId::new("t").unwrap(),
                gossip: vec![],
            },
        ] {
            let bytes = bincode::serde::encode_to_vec(&m, cfg).unwrap();
            let (back, _): (Msg, _) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
            assert_eq!(back, m);
        }
    }

    #[test]
    fn invalid_node_id_inside_a_message_fails_to_decode() {
        let cfg = bincode::config::standard();
        let mut m = info("a");
        m.id = NodeId::new("zz").unwrap();
        let mut bytes = bincode::serde::encode_to_vec(&Msg::Hello { member: m }, cfg).unwrap();
        // Corrupt the id "zz" into "ZZ" (not a DNS label).
        let pos = bytes.windows(2).position(|w| w == b"zz").unwrap();
        bytes[pos] = b'Z';
        bytes[pos + 1] = b'Z';
        assert!(bincode::serde::decode_from_slice::<Msg, _>(&bytes, cfg).is_err());
    }

    #[test]
    fn an_oversized_advertised_url_is_rejected() {
        let mut m = info("a");
        m.http = Some(format!("http://{}:1", "h".repeat(MAX_HTTP_URL_BYTES)));
        assert!(Msg::Hello { member: m.clone() }.validate().is_err());
        assert!(Msg::Ping {
            sent_ms: 0,
            stamp: Stamp::default(),
            gossip: vec![info("b"), m]
        }
        .validate()
        .is_err());
        assert!(Msg::Hello { member: info("a") }.validate().is_ok());
    }

    #[test]
    fn oversized_lists_are_rejected() {
        let m = Msg::Ping {
            sent_ms: 0,
            stamp: Stamp::default(),
            gossip: vec![info("a"); MAX_GOSSIP_PER_MSG + 1],
        };
        assert!(m.validate().is_err());
        let m = Msg::Welcome {
            members: vec![info("a"); MAX_MEMBERS_PER_MSG],
        };
        assert!(m.validate().is_ok());
    }
}
