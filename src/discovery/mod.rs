//! LAN discovery: find the cluster without a `--join` list.
//!
//! Every node with `discovery = "lan"` sends a small beacon (its node id and
//! QUIC port) to a UDP multicast group or broadcast address on its local
//! network, and hands the address of every node it hears to membership as a
//! join target. That is all discovery does: it only yields *addresses*. The
//! join itself goes over mutually authenticated QUIC, so a node whose
//! certificate comes from another CA can announce itself as much as it likes
//! and still gets no membership and no data.
//!
//! Cost: one datagram of at most [`beacon::MAX_BEACON_BYTES`] bytes per
//! `interval` per node (with jitter), received by every node on the segment;
//! a beacon from a node already alive in the member table costs a decode and
//! a table look-up. Malformed beacons are counted and dropped; each sender
//! address is handed to membership at most once per `retry` period, so a
//! flood of beacons cannot turn into a flood of QUIC handshakes.
//!
//! [`beacon`] is the sans-IO part (encoding, rate limiting, de-duplication);
//! [`lan`] is the tokio shell around one UDP socket.

pub mod beacon;
pub mod lan;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

/// Default UDP port beacons are sent to and heard on.
pub const DEFAULT_PORT: u16 = 7373;
/// Default multicast group (administratively scoped, RFC 2365).
pub const DEFAULT_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 73, 73);

/// How LAN discovery runs on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// Where beacons go: a multicast group (joined on every interface the
    /// system routes it to) or a broadcast address such as
    /// `255.255.255.255`.
    pub target: SocketAddrV4,
    /// Time between two beacons of this node (jittered by up to a quarter).
    pub interval: Duration,
    /// Least time between two join attempts at the same heard address.
    pub retry: Duration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            target: SocketAddrV4::new(DEFAULT_GROUP, DEFAULT_PORT),
            interval: Duration::from_secs(2),
            retry: Duration::from_secs(10),
        }
    }
}

impl DiscoveryConfig {
    pub fn is_multicast(&self) -> bool {
        self.target.ip().is_multicast()
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.target.port() == 0 {
            return Err("discovery port must not be 0".into());
        }
        let ip = self.target.ip();
        if !(ip.is_multicast() || ip.is_broadcast() || ip.octets()[3] == 255) {
            return Err(format!(
                "discovery address {ip} is neither a multicast group nor a broadcast address"
            ));
        }
        if self.interval < Duration::from_millis(100) {
            return Err("discovery interval must be at least 100 ms".into());
        }
        Ok(())
    }
}

/// A heard node worth a join attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovered {
    pub node_id: String,
    pub addr: SocketAddr,
}
