//! The tokio shell of LAN discovery: one UDP socket that sends this node's
//! beacon every `interval` and passes what it hears through the
//! [`Listener`](super::beacon::Listener).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::beacon::{self, BeaconStats, Listener, MAX_BEACON_BYTES};
use super::{Discovered, DiscoveryConfig};
use crate::model::NodeId;

/// A running discovery task.
pub struct Lan {
    task: JoinHandle<()>,
    stats: Arc<Mutex<BeaconStats>>,
    local: SocketAddr,
}

impl Lan {
    /// Binds the discovery socket and starts beaconing. Every heard node that
    /// `is_alive_member` does not already know goes to `out`.
    pub fn start(
        config: DiscoveryConfig,
        me: NodeId,
        quic_port: u16,
        is_alive_member: impl Fn(&NodeId) -> bool + Send + 'static,
        out: mpsc::Sender<Discovered>,
        mut stop: watch::Receiver<bool>,
    ) -> std::io::Result<Lan> {
        let socket = bind(&config)?;
        let local = socket.local_addr()?;
        let stats = Arc::new(Mutex::new(BeaconStats::default()));
        let shared = stats.clone();
        let beacon = beacon::encode(&me, quic_port);
        let mut listener = Listener::new(me.clone(), config.retry.as_millis() as u64);
        let target = SocketAddr::V4(config.target);
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; MAX_BEACON_BYTES + 1];
            let mut next_send = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep_until(next_send) => {
                        match socket.send_to(&beacon, target).await {
                            Ok(_) => listener.count_sent(),
                            Err(e) => tracing::debug!(node = %me, %target, error = %e, "beacon not sent"),
                        }
                        let jitter = rand::thread_rng().gen_range(0..=config.interval.as_millis() as u64 / 4);
                        next_send = tokio::time::Instant::now() + config.interval + Duration::from_millis(jitter);
                    }
                    r = socket.recv_from(&mut buf) => match r {
                        Ok((n, from)) => {
                            let now_ms = started.elapsed().as_millis() as u64;
                            match listener.on_datagram(&buf[..n], from, now_ms, &is_alive_member) {
                                Ok(Some(found)) => {
                                    tracing::info!(node = %me, peer = %found.node_id, addr = %found.addr, "discovered a node on the LAN");
                                    if out.send(found).await.is_err() {
                                        break;
                                    }
                                }
                                Ok(None) => {}
                                Err(e) => tracing::debug!(node = %me, %from, error = %e, "malformed beacon ignored"),
                            }
                        }
                        Err(e) => {
                            tracing::warn!(node = %me, error = %e, "discovery socket failed");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
                if let Ok(mut s) = shared.lock() {
                    *s = listener.stats();
                }
            }
        });
        Ok(Lan { task, stats, local })
    }

    pub fn stats(&self) -> BeaconStats {
        self.stats.lock().map(|s| *s).unwrap_or_default()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Waits for the task after the stop signal was sent.
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// One socket per node, shared by sending and hearing: address reuse lets
/// several nodes on one host (tests, demos) all hear the group.
fn bind(config: &DiscoveryConfig) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, config.target.port());
    socket.bind(&SocketAddr::V4(any).into())?;
    if config.is_multicast() {
        socket.join_multicast_v4(config.target.ip(), &Ipv4Addr::UNSPECIFIED)?;
        socket.set_multicast_loop_v4(true)?;
        socket.set_multicast_ttl_v4(1)?;
    } else {
        socket.set_broadcast(true)?;
    }
    UdpSocket::from_std(socket.into())
}
