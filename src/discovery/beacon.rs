//! Beacons: what a node says about itself on the LAN, and what a node does
//! with what it hears (sans-IO; time and bytes in, decisions out).
//!
//! Wire format (all big-endian), 8 to [`MAX_BEACON_BYTES`] bytes:
//! `b"HUB1"` magic, `u8` version, `u16` QUIC port, `u8` id length, node id
//! (a DNS label). The sender's IP is the datagram's source address, which is
//! right behind NAT-free LANs and bridges, so a node bound to `0.0.0.0`
//! needs no `advertise` setting to be found.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::Discovered;
use crate::model::NodeId;

const MAGIC: &[u8; 4] = b"HUB1";
const VERSION: u8 = 1;
/// Longest beacon: header plus the longest node id.
pub const MAX_BEACON_BYTES: usize = 4 + 1 + 2 + 1 + 63;
/// Bound on remembered senders; beyond it the oldest are forgotten.
const MAX_REMEMBERED: usize = 4096;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BeaconError {
    #[error("{0} bytes is not a beacon length")]
    Length(usize),
    #[error("not a hub beacon")]
    Magic,
    #[error("beacon version {0} is not understood")]
    Version(u8),
    #[error("bad node id in beacon: {0}")]
    NodeId(String),
    #[error("beacon announces port 0")]
    Port,
}

/// Encodes this node's beacon.
pub fn encode(node_id: &NodeId, quic_port: u16) -> Vec<u8> {
    let id = node_id.as_str().as_bytes();
    let mut out = Vec::with_capacity(8 + id.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&quic_port.to_be_bytes());
    out.push(id.len() as u8);
    out.extend_from_slice(id);
    out
}

/// Decodes a beacon; never allocates more than the datagram holds.
pub fn decode(bytes: &[u8]) -> Result<(NodeId, u16), BeaconError> {
    if bytes.len() < 8 || bytes.len() > MAX_BEACON_BYTES {
        return Err(BeaconError::Length(bytes.len()));
    }
    if &bytes[..4] != MAGIC {
        return Err(BeaconError::Magic);
    }
    if bytes[4] != VERSION {
        return Err(BeaconError::Version(bytes[4]));
    }
    let port = u16::from_be_bytes([bytes[5], bytes[6]]);
    if port == 0 {
        return Err(BeaconError::Port);
    }
    let len = bytes[7] as usize;
    let id = bytes
        .get(8..8 + len)
        .ok_or(BeaconError::Length(bytes.len()))?;
    if 8 + len != bytes.len() {
        return Err(BeaconError::Length(bytes.len()));
    }
    let id = std::str::from_utf8(id).map_err(|e| BeaconError::NodeId(e.to_string()))?;
    let id = NodeId::new(id).map_err(|e| BeaconError::NodeId(e.to_string()))?;
    Ok((id, port))
}

/// Counters for introspection and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct BeaconStats {
    pub sent: u64,
    pub heard: u64,
    pub malformed: u64,
    /// Beacons from this node itself (multicast loops back).
    pub own: u64,
    /// Heard addresses handed to membership.
    pub yielded: u64,
    /// Beacons from an address tried within `retry`.
    pub suppressed: u64,
}

/// What a node does with beacons it hears.
#[derive(Debug)]
pub struct Listener {
    me: NodeId,
    retry_ms: u64,
    last_yield: HashMap<SocketAddr, u64>,
    stats: BeaconStats,
}

impl Listener {
    pub fn new(me: NodeId, retry_ms: u64) -> Listener {
        Listener {
            me,
            retry_ms,
            last_yield: HashMap::new(),
            stats: BeaconStats::default(),
        }
    }

    pub fn stats(&self) -> BeaconStats {
        self.stats
    }

    /// One datagram from `from` at monotonic `now_ms`: the address worth a
    /// join attempt, if any. `known` says whether a node id is already an
    /// alive member (then there is nothing to join).
    pub fn on_datagram(
        &mut self,
        bytes: &[u8],
        from: SocketAddr,
        now_ms: u64,
        known: impl Fn(&NodeId) -> bool,
    ) -> Result<Option<Discovered>, BeaconError> {
        let (id, port) = decode(bytes).inspect_err(|_| self.stats.malformed += 1)?;
        self.stats.heard += 1;
        if id == self.me {
            self.stats.own += 1;
            return Ok(None);
        }
        if known(&id) {
            return Ok(None);
        }
        let addr = SocketAddr::new(from.ip(), port);
        if let Some(last) = self.last_yield.get(&addr) {
            if now_ms.saturating_sub(*last) < self.retry_ms {
                self.stats.suppressed += 1;
                return Ok(None);
            }
        }
        if self.last_yield.len() >= MAX_REMEMBERED {
            let horizon = now_ms.saturating_sub(self.retry_ms);
            self.last_yield.retain(|_, t| *t >= horizon);
            if self.last_yield.len() >= MAX_REMEMBERED {
                self.last_yield.clear();
            }
        }
        self.last_yield.insert(addr, now_ms);
        self.stats.yielded += 1;
        Ok(Some(Discovered {
            node_id: id.to_string(),
            addr,
        }))
    }

    pub fn count_sent(&mut self) {
        self.stats.sent += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).expect("valid id")
    }

    #[test]
    fn beacon_round_trips() {
        let b = encode(&id("gw-1"), 7000);
        assert_eq!(decode(&b), Ok((id("gw-1"), 7000)));
    }

    #[test]
    fn malformed_beacons_are_refused_and_counted() {
        let mut l = Listener::new(id("a"), 1000);
        let from: SocketAddr = "10.0.0.2:7373".parse().expect("addr");
        let good = encode(&id("b"), 7000);
        let mut wrong_magic = good.clone();
        wrong_magic[0] = b'X';
        let mut wrong_version = good.clone();
        wrong_version[4] = 9;
        let mut port0 = good.clone();
        port0[5] = 0;
        port0[6] = 0;
        let mut long_len = good.clone();
        long_len[7] = 60;
        let mut bad_id = good.clone();
        bad_id[8] = b'_';
        for bad in [
            &b""[..],
            &good[..7],
            &wrong_magic,
            &wrong_version,
            &port0,
            &long_len,
            &bad_id,
            &[0u8; 200][..],
        ] {
            assert!(l.on_datagram(bad, from, 0, |_| false).is_err(), "{bad:?}");
        }
        assert_eq!(l.stats().malformed, 8);
        assert_eq!(l.stats().yielded, 0);
    }

    #[test]
    fn own_and_known_beacons_yield_nothing() {
        let mut l = Listener::new(id("a"), 1000);
        let from: SocketAddr = "10.0.0.2:7373".parse().expect("addr");
        assert_eq!(
            l.on_datagram(&encode(&id("a"), 7000), from, 0, |_| false),
            Ok(None)
        );
        assert_eq!(
            l.on_datagram(&encode(&id("b"), 7000), from, 0, |_| true),
            Ok(None)
        );
        assert_eq!(l.stats().own, 1);
    }

    #[test]
    fn a_heard_address_is_tried_at_most_once_per_retry_period() {
        let mut l = Listener::new(id("a"), 1000);
        let from: SocketAddr = "10.0.0.2:40000".parse().expect("addr");
        let b = encode(&id("b"), 7000);
        let want = Discovered {
            node_id: "b".into(),
            addr: "10.0.0.2:7000".parse().expect("addr"),
        };
        assert_eq!(
            l.on_datagram(&b, from, 0, |_| false),
            Ok(Some(want.clone()))
        );
        for t in [1, 500, 999] {
            assert_eq!(l.on_datagram(&b, from, t, |_| false), Ok(None));
        }
        assert_eq!(l.on_datagram(&b, from, 1000, |_| false), Ok(Some(want)));
        assert_eq!(l.stats().suppressed, 3);
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = decode(&bytes);
        }
    }
}
