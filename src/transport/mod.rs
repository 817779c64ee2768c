//! Mutually authenticated QUIC between nodes, carrying framed messages.
//!
//! One quinn endpoint per node is both server and client. Every connection is
//! TLS 1.3 with certificates from the cluster CA on both sides ([`tls`]); the
//! identity attached to every received message is the node id in the
//! sender's verified certificate, never anything the message claims.
//!
//! Each direction has its own connection: node A sends to B on the
//! connection A dialed, and receives from B on the connection B dialed. That
//! avoids connection-dedup races at the cost of two handshakes per pair.
//!
//! Sending never blocks or awaits: [`Transport::send`] encodes the message
//! and `try_send`s it into that peer's bounded queue; a per-peer task
//! ([`peer`]) owns the connection, dials lazily with exponential backoff and
//! writes frames on one long-lived unidirectional stream. A dead or slow peer
//! only fills its own queue (then sends to it are dropped and counted); no
//! other peer waits for it.
//!
//! Receiving: the accept loop verifies the client certificate, then reads
//! every unidirectional stream through the sans-IO [`frame::FrameDecoder`];
//! a malformed, oversized or wrong-version frame closes that connection with
//! an error code, is counted and logged. Received messages go to one bounded
//! channel; when the application lags, QUIC flow control pushes back on the
//! senders (whose queues then drop).
//!
//! API:
//! ```ignore
//! let (t, mut rx) = Transport::<Msg>::bind(TransportConfig::new(identity, listen)).await?;
//! t.send(peer_addr, Some(peer_id), &msg)?;          // never blocks
//! while let Some(ev) = rx.recv().await { match ev { Incoming::Message { from, msg, .. } => .. } }
//! t.stats();                                        // serde-serializable
//! t.close().await;
//! ```

pub mod frame;
mod peer;
pub mod tls;

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::certs::Identity;
use crate::model::NodeId;
use frame::{FrameDecoder, FrameError};
pub use tls::{HandshakeCounters, TlsError, ALPN};

/// Application close codes on node-to-node connections.
pub mod codes {
    /// Transport shutting down.
    pub const SHUTDOWN: u32 = 0;
    /// Malformed or oversized frame.
    pub const BAD_FRAME: u32 = 0x10;
    /// Frame from an unsupported protocol version.
    pub const BAD_VERSION: u32 = 0x11;
    /// Certificate verified but names no node id (should not happen).
    pub const NO_IDENTITY: u32 = 0x12;
}

/// Transport settings. [`TransportConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// This node's certificates; `identity.node_id` is our id.
    pub identity: Identity,
    /// UDP address to bind (`127.0.0.1:0` in tests).
    pub listen: SocketAddr,
    /// Hard limit on one frame's payload, both directions. Default 16 MiB.
    pub max_frame_bytes: usize,
    /// Frames queued per peer before sends to it are dropped. Default 4096.
    pub peer_queue_len: usize,
    /// Capacity of the received-events channel. Default 4096.
    pub incoming_queue_len: usize,
    /// Limit for one handshake. Default 2 s.
    pub connect_timeout: Duration,
    /// A connection silent this long is dead. Default 10 s.
    pub idle_timeout: Duration,
    /// Keep-alive ping interval (must be below `idle_timeout`). Default 2 s.
    pub keepalive: Duration,
    /// First reconnect delay, doubled per failure up to `backoff_max`. Default 50 ms.
    pub backoff_min: Duration,
    /// Cap of the reconnect delay. Default 2 s.
    pub backoff_max: Duration,
    /// RTT assumed before one is measured. quinn's default (333 ms) suits the
    /// internet; fleets are mostly on a LAN, where a lost first handshake
    /// packet (the peer was restarting) would otherwise wait ~1 s to be
    /// resent. A too-low guess only costs a spurious resend. Default 30 ms.
    pub initial_rtt: Duration,
}

/// The transport settings an operator can change (`hub serve` flags); the
/// rest of [`TransportConfig`] keeps its defaults.
#[derive(Debug, Clone)]
pub struct TransportTuning {
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub peer_queue_len: usize,
    pub incoming_queue_len: usize,
}

impl Default for TransportTuning {
    fn default() -> Self {
        TransportTuning {
            idle_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            peer_queue_len: 4096,
            incoming_queue_len: 4096,
        }
    }
}

impl TransportConfig {
    /// Applies operator settings; keep-alive pings stay well inside the
    /// idle timeout (a third of it, at most 2 s).
    pub fn tuned(mut self, t: &TransportTuning) -> Self {
        self.idle_timeout = t.idle_timeout;
        self.keepalive = (t.idle_timeout / 3).min(Duration::from_secs(2));
        self.connect_timeout = t.connect_timeout;
        self.peer_queue_len = t.peer_queue_len;
        self.incoming_queue_len = t.incoming_queue_len;
        self
    }

    pub fn new(identity: Identity, listen: SocketAddr) -> Self {
        TransportConfig {
            identity,
            listen,
            max_frame_bytes: frame::DEFAULT_MAX_FRAME_BYTES,
            peer_queue_len: 4096,
            incoming_queue_len: 4096,
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(2),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            initial_rtt: Duration::from_millis(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot bind QUIC endpoint on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid transport config: {0}")]
    Config(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("send queue for {addr} is full; message dropped")]
    QueueFull { addr: SocketAddr },
    #[error("message cannot be framed: {0}")]
    Frame(#[from] FrameError),
    #[error("transport is closed")]
    Closed,
}

/// Which side dialed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Direction {
    /// We dialed (we send on it).
    Outbound,
    /// The peer dialed (we receive on it).
    Inbound,
}

/// What the transport delivers to the node.
#[derive(Debug)]
pub enum Incoming<M> {
    /// A message; `from` is the id in the sender's verified certificate.
    Message {
        from: NodeId,
        addr: SocketAddr,
        msg: M,
    },
    /// A connection completed its handshake; our side verified `peer`'s
    /// certificate. (For `Outbound`, the peer may still refuse ours: a
    /// `Disconnected` then follows at once.)
    Connected {
        peer: NodeId,
        addr: SocketAddr,
        dir: Direction,
    },
    /// A connection that was `Connected` ended.
    Disconnected {
        peer: NodeId,
        addr: SocketAddr,
        dir: Direction,
        reason: String,
    },
}

/// A message already encoded as a frame, to send the same bytes to many peers.
#[derive(Debug, Clone)]
pub struct Frame(Bytes);

impl Frame {
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Live counters of one peer address (shared with its tasks).
#[derive(Debug, Default)]
pub(crate) struct PeerCounters {
    pub connected: AtomicBool,
    pub inbound_connections: AtomicU64,
    pub frames_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub frames_received: AtomicU64,
    pub bytes_received: AtomicU64,
    pub send_drops: AtomicU64,
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub node: Mutex<Option<NodeId>>,
    pub last_error: Mutex<Option<String>>,
    pub conn: Mutex<Option<quinn::Connection>>,
}

impl PeerCounters {
    pub(crate) fn set_node(&self, id: &NodeId) {
        if let Ok(mut n) = self.node.lock() {
            *n = Some(id.clone());
        }
    }
    pub(crate) fn set_error(&self, e: String) {
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(e);
        }
    }
}

/// Per-peer statistics (keyed by address).
#[derive(Debug, Clone, Serialize)]
pub struct PeerStats {
    pub addr: SocketAddr,
    /// Node id from the last verified certificate seen at this address.
    pub node_id: Option<NodeId>,
    /// Our outbound connection is established.
    pub connected: bool,
    /// Inbound connections currently open from this address.
    pub inbound_connections: u64,
    pub queue_len: usize,
    pub frames_sent: u64,
    pub bytes_sent: u64,
    pub frames_received: u64,
    pub bytes_received: u64,
    /// Sends dropped because the queue was full.
    pub send_drops: u64,
    /// Outbound connections established after the first one.
    pub reconnects: u64,
    pub connect_failures: u64,
    /// Smoothed RTT of the outbound connection, if connected.
    pub rtt_micros: Option<u64>,
    pub last_error: Option<String>,
}

/// Snapshot of the transport for `/api/introspection` and `/metrics`.
#[derive(Debug, Clone, Serialize)]
pub struct TransportStats {
    pub node_id: NodeId,
    pub local_addr: Option<SocketAddr>,
    pub peers: Vec<PeerStats>,
    /// Handshakes refused, by reason (see [`HandshakeCounters`]).
    pub handshake_rejections: BTreeMap<String, u64>,
    /// Connections closed for a malformed, oversized or wrong-version frame.
    pub bad_frames: u64,
}

struct PeerHandle {
    tx: mpsc::Sender<Bytes>,
    expect: Option<NodeId>,
    task: JoinHandle<()>,
}

/// State shared by the tasks of one transport (no generic parts).
pub(crate) struct Shared {
    pub node_id: NodeId,
    pub endpoint: quinn::Endpoint,
    pub client_config: quinn::ClientConfig,
    pub handshakes: Arc<HandshakeCounters>,
    pub bad_frames: AtomicU64,
    pub counters: Mutex<HashMap<SocketAddr, Arc<PeerCounters>>>,
    pub max_frame_bytes: usize,
    pub connect_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Shared {
    /// Closes our outbound connection to `addr` after its task was aborted.
    fn drop_outbound(&self, addr: SocketAddr, why: &[u8]) {
        let c = self.counters_for(addr);
        c.connected.store(false, Ordering::Relaxed);
        let conn = c.conn.lock().ok().and_then(|mut c| c.take());
        if let Some(conn) = conn {
            conn.close(codes::SHUTDOWN.into(), why);
        }
    }

    pub(crate) fn counters_for(&self, addr: SocketAddr) -> Arc<PeerCounters> {
        match self.counters.lock() {
            Ok(mut m) => m.entry(addr).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }
}

struct Inner<M> {
    shared: Arc<Shared>,
    peers: Mutex<HashMap<SocketAddr, PeerHandle>>,
    events: mpsc::Sender<Incoming<M>>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
    runtime: tokio::runtime::Handle,
    peer_queue_len: usize,
    closed: AtomicBool,
}

impl<M> Drop for Inner<M> {
    fn drop(&mut self) {
        self.shared
            .endpoint
            .close(codes::SHUTDOWN.into(), b"shutdown");
        if let Ok(Some(t)) = self.accept_task.lock().map(|mut t| t.take()) {
            t.abort();
        }
        if let Ok(peers) = self.peers.lock() {
            for p in peers.values() {
                p.task.abort();
            }
        }
    }
}

/// The node's QUIC transport for messages of type `M`. Cheap to clone.
pub struct Transport<M> {
    inner: Arc<Inner<M>>,
    _m: PhantomData<fn(M)>,
}

impl<M> Clone for Transport<M> {
    fn clone(&self) -> Self {
        Transport {
            inner: self.inner.clone(),
            _m: PhantomData,
        }
    }
}

impl<M: Serialize + DeserializeOwned + Send + 'static> Transport<M> {
    /// Binds the endpoint and starts accepting. Must run inside a tokio runtime.
    pub async fn bind(
        cfg: TransportConfig,
    ) -> Result<(Transport<M>, mpsc::Receiver<Incoming<M>>), TransportError> {
        if cfg.keepalive >= cfg.idle_timeout {
            return Err(TransportError::Config(
                "keepalive must be shorter than idle_timeout".into(),
            ));
        }
        if cfg.peer_queue_len == 0 || cfg.incoming_queue_len == 0 {
            return Err(TransportError::Config("queue lengths must be > 0".into()));
        }
        let mut tc = quinn::TransportConfig::default();
        tc.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(cfg.idle_timeout)
                .map_err(|e| TransportError::Config(format!("idle_timeout: {e}")))?,
        ));
        tc.keep_alive_interval(Some(cfg.keepalive));
        tc.initial_rtt(cfg.initial_rtt);
        tc.max_concurrent_bidi_streams(0u32.into());
        tc.max_concurrent_uni_streams(8u32.into());
        tc.datagram_receive_buffer_size(None);
        let tc = Arc::new(tc);
        let handshakes = Arc::new(HandshakeCounters::default());
        let server = tls::quic_server_config(&cfg.identity, handshakes.clone(), tc.clone())?;
        let client_config = tls::quic_client_config(&cfg.identity, handshakes.clone(), tc)?;
        let bind_err = |source| TransportError::Bind {
            addr: cfg.listen,
            source,
        };
        let socket = std::net::UdpSocket::bind(cfg.listen).map_err(bind_err)?;
        let runtime = quinn::default_runtime().ok_or_else(|| {
            bind_err(std::io::Error::other("no async runtime (run inside tokio)"))
        })?;
        let mut endpoint_config =
            quinn::EndpointConfig::new(Arc::new(tls::ResetKey::from_identity(&cfg.identity)));
        endpoint_config.cid_generator(|| Box::new(tls::CidGenerator));
        let endpoint = quinn::Endpoint::new(endpoint_config, Some(server), socket, runtime)
            .map_err(bind_err)?;
        let shared = Arc::new(Shared {
            node_id: cfg.identity.node_id.clone(),
            endpoint,
            client_config,
            handshakes,
            bad_frames: AtomicU64::new(0),
            counters: Mutex::new(HashMap::new()),
            max_frame_bytes: cfg.max_frame_bytes,
            connect_timeout: cfg.connect_timeout,
            backoff_min: cfg.backoff_min,
            backoff_max: cfg.backoff_max,
        });
        let (events, rx) = mpsc::channel(cfg.incoming_queue_len);
        let accept_task = tokio::spawn(accept_loop(shared.clone(), events.clone()));
        let inner = Arc::new(Inner {
            shared,
            peers: Mutex::new(HashMap::new()),
            events,
            accept_task: Mutex::new(Some(accept_task)),
            runtime: tokio::runtime::Handle::current(),
            peer_queue_len: cfg.peer_queue_len,
            closed: AtomicBool::new(false),
        });
        tracing::info!(node = %inner.shared.node_id, addr = %crate::logfields::opt(inner.shared.endpoint.local_addr().ok()), "transport bound");
        Ok((
            Transport {
                inner,
                _m: PhantomData,
            },
            rx,
        ))
    }

    pub fn node_id(&self) -> &NodeId {
        &self.inner.shared.node_id
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.shared.endpoint.local_addr()
    }

    /// Encodes `msg` once, for [`Transport::send_frame`] to several peers.
    pub fn encode(&self, msg: &M) -> Result<Frame, SendError> {
        Ok(Frame(frame::encode_frame(
            msg,
            self.inner.shared.max_frame_bytes,
        )?))
    }

    /// Queues `msg` for the node at `addr`. Never blocks or awaits.
    ///
    /// `expect`: the node id `addr` must present (refused otherwise); `None`
    /// accepts any node certified by the cluster CA (e.g. a `--join` seed).
    pub fn send(&self, addr: SocketAddr, expect: Option<NodeId>, msg: &M) -> Result<(), SendError> {
        let f = self.encode(msg)?;
        self.send_frame(addr, expect, &f)
    }

    /// Queues an encoded frame for `addr` (see [`Transport::send`]).
    pub fn send_frame(
        &self,
        addr: SocketAddr,
        expect: Option<NodeId>,
        frame: &Frame,
    ) -> Result<(), SendError> {
        if self.inner.closed.load(Ordering::Relaxed) {
            return Err(SendError::Closed);
        }
        let mut peers = self.inner.peers.lock().map_err(|_| SendError::Closed)?;
        // A finished task (should not happen) or a new expected identity for
        // this address (the membership changed): start afresh, so frames
        // queued for one node never go to another.
        let stale = peers
            .get(&addr)
            .is_some_and(|p| p.task.is_finished() || (expect.is_some() && p.expect != expect));
        if stale {
            if let Some(old) = peers.remove(&addr) {
                old.task.abort();
                self.inner
                    .shared
                    .drop_outbound(addr, b"peer identity changed");
            }
        }
        let handle = peers
            .entry(addr)
            .or_insert_with(|| self.spawn_peer(addr, expect));
        match handle.tx.try_send(frame.0.clone()) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.inner
                    .shared
                    .counters_for(addr)
                    .send_drops
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(node = %self.inner.shared.node_id, peer = %addr, "peer queue full, message dropped");
                Err(SendError::QueueFull { addr })
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Closed),
        }
    }

    fn spawn_peer(&self, addr: SocketAddr, expect: Option<NodeId>) -> PeerHandle {
        let (tx, rx) = mpsc::channel(self.inner.peer_queue_len);
        let task = self.inner.runtime.spawn(peer::run(
            self.inner.shared.clone(),
            addr,
            rx,
            expect.clone(),
            self.inner.events.clone(),
        ));
        PeerHandle { tx, expect, task }
    }

    /// Forgets a peer: drops its queue, closes our connection to it and its
    /// counters (so the maps shrink with the membership). Counters come back
    /// if the address sends or is sent to again.
    pub fn remove_peer(&self, addr: SocketAddr) {
        if let Ok(mut peers) = self.inner.peers.lock() {
            if let Some(p) = peers.remove(&addr) {
                p.task.abort();
            }
        }
        self.inner.shared.drop_outbound(addr, b"peer removed");
        if let Ok(mut counters) = self.inner.shared.counters.lock() {
            counters.remove(&addr);
        }
    }

    /// A serde-serializable snapshot of all counters.
    pub fn stats(&self) -> TransportStats {
        let s = &self.inner.shared;
        let queues: HashMap<SocketAddr, usize> = match self.inner.peers.lock() {
            Ok(p) => p
                .iter()
                .map(|(a, h)| (*a, h.tx.max_capacity() - h.tx.capacity()))
                .collect(),
            Err(_) => HashMap::new(),
        };
        let counters: Vec<(SocketAddr, Arc<PeerCounters>)> = match s.counters.lock() {
            Ok(m) => m.iter().map(|(a, c)| (*a, c.clone())).collect(),
            Err(_) => Vec::new(),
        };
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut peers: Vec<PeerStats> = counters
            .into_iter()
            .map(|(addr, c)| PeerStats {
                addr,
                node_id: c.node.lock().ok().and_then(|n| n.clone()),
                connected: c.connected.load(Ordering::Relaxed),
                inbound_connections: l(&c.inbound_connections),
                queue_len: queues.get(&addr).copied().unwrap_or(0),
                frames_sent: l(&c.frames_sent),
                bytes_sent: l(&c.bytes_sent),
                frames_received: l(&c.frames_received),
                bytes_received: l(&c.bytes_received),
                send_drops: l(&c.send_drops),
                reconnects: l(&c.connects).saturating_sub(1),
                connect_failures: l(&c.connect_failures),
                rtt_micros: c
                    .conn
                    .lock()
                    .ok()
                    .and_then(|c| c.as_ref().map(|c| c.rtt().as_micros() as u64)),
                last_error: c.last_error.lock().ok().and_then(|e| e.clone()),
            })
            .collect();
        peers.sort_by_key(|p| p.addr);
        TransportStats {
            node_id: s.node_id.clone(),
            local_addr: s.endpoint.local_addr().ok(),
            peers,
            handshake_rejections: s.handshakes.snapshot(),
            bad_frames: l(&s.bad_frames),
        }
    }

    /// Stops all tasks, closes every connection and waits (≤ 1 s) for the
    /// endpoint to go idle. Later sends return [`SendError::Closed`].
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Relaxed);
        if let Ok(Some(t)) = self.inner.accept_task.lock().map(|mut t| t.take()) {
            t.abort();
        }
        if let Ok(mut peers) = self.inner.peers.lock() {
            for (_, p) in peers.drain() {
                p.task.abort();
            }
        }
        let ep = &self.inner.shared.endpoint;
        ep.close(codes::SHUTDOWN.into(), b"shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(1), ep.wait_idle()).await;
        tracing::info!(node = %self.inner.shared.node_id, "transport closed");
    }
}

async fn accept_loop<M: DeserializeOwned + Send + 'static>(
    shared: Arc<Shared>,
    events: mpsc::Sender<Incoming<M>>,
) {
    while let Some(incoming) = shared.endpoint.accept().await {
        tokio::spawn(serve_connection(shared.clone(), incoming, events.clone()));
    }
}

/// Handshake of one inbound connection, then one reader per uni stream.
async fn serve_connection<M: DeserializeOwned + Send + 'static>(
    shared: Arc<Shared>,
    incoming: quinn::Incoming,
    events: mpsc::Sender<Incoming<M>>,
) {
    let addr = incoming.remote_address();
    let conn = match tokio::time::timeout(shared.connect_timeout, incoming).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            // Certificate refusals were counted by the verifier.
            tracing::info!(node = %shared.node_id, peer = %addr, error = %e, "inbound handshake failed");
            return;
        }
        Err(_) => {
            shared
                .handshakes
                .failed_other
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(node = %shared.node_id, peer = %addr, "inbound handshake timed out");
            return;
        }
    };
    let Some(peer) = tls::peer_node_id(&conn) else {
        shared.handshakes.no_node_id.fetch_add(1, Ordering::Relaxed);
        conn.close(codes::NO_IDENTITY.into(), b"certificate names no node id");
        return;
    };
    let counters = shared.counters_for(addr);
    counters.set_node(&peer);
    counters.inbound_connections.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(node = %shared.node_id, peer = %peer, addr = %addr, "inbound connection");
    let _ = events
        .send(Incoming::Connected {
            peer: peer.clone(),
            addr,
            dir: Direction::Inbound,
        })
        .await;
    let mut readers = tokio::task::JoinSet::new();
    let reason = loop {
        tokio::select! {
            s = conn.accept_uni() => match s {
                Ok(stream) => {
                    readers.spawn(read_stream(
                        shared.clone(),
                        conn.clone(),
                        peer.clone(),
                        stream,
                        counters.clone(),
                        events.clone(),
                    ));
                }
                Err(e) => break e.to_string(),
            },
            Some(_) = readers.join_next(), if !readers.is_empty() => {}
        }
    };
    readers.abort_all();
    counters.inbound_connections.fetch_sub(1, Ordering::Relaxed);
    tracing::debug!(node = %shared.node_id, peer = %peer, addr = %addr, reason = %reason, "inbound connection ended");
    let _ = events
        .send(Incoming::Disconnected {
            peer,
            addr,
            dir: Direction::Inbound,
            reason,
        })
        .await;
}

/// Reads frames from one stream until it ends; a bad frame closes the connection.
async fn read_stream<M: DeserializeOwned + Send + 'static>(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    peer: NodeId,
    mut stream: quinn::RecvStream,
    counters: Arc<PeerCounters>,
    events: mpsc::Sender<Incoming<M>>,
) {
    let addr = conn.remote_address();
    let mut dec = FrameDecoder::new(shared.max_frame_bytes);
    loop {
        let chunk = match stream.read_chunk(64 * 1024, true).await {
            Ok(Some(c)) => c,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(node = %shared.node_id, peer = %peer, error = %e, "stream ended");
                return;
            }
        };
        dec.feed(&chunk.bytes);
        loop {
            let result = dec.next_frame().and_then(|p| match p {
                Some(p) => {
                    let len = p.len();
                    frame::decode_payload::<M>(&p).map(|m| Some((m, len)))
                }
                None => Ok(None),
            });
            match result {
                Ok(Some((msg, len))) => {
                    counters.frames_received.fetch_add(1, Ordering::Relaxed);
                    counters
                        .bytes_received
                        .fetch_add(len as u64 + 4, Ordering::Relaxed);
                    let ev = Incoming::Message {
                        from: peer.clone(),
                        addr,
                        msg,
                    };
                    if events.send(ev).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    shared.bad_frames.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(node = %shared.node_id, peer = %peer, addr = %addr, error = %e, "bad frame, closing connection");
                    let code = match e {
                        FrameError::Version { .. } => codes::BAD_VERSION,
                        _ => codes::BAD_FRAME,
                    };
                    let _ = stream.stop(code.into());
                    conn.close(code.into(), e.to_string().as_bytes());
                    return;
                }
            }
        }
    }
}
