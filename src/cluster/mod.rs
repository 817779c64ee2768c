//! The cluster shell: QUIC transport and the node's protocol machine, driven
//! by one tokio task.
//!
//! Membership, replication and the routing between them are one sans-IO
//! state machine ([`node_machine::NodeMachine`]); the driver only moves its
//! messages over the transport, commits its writes through the node's
//! group-commit writer, feeds it the clocks and newly durable deltas, and
//! publishes a snapshot of its state for the HTTP API. Each step of the
//! machine runs on tokio's blocking pool, because its store reads share a
//! lock with the commit thread; the async task itself never touches sled.
//!
//! Two clocks are fed, both read through the node's [`crate::clock::ClockGate`]:
//! monotonic time for every timer (failure detection, pulls, anti-entropy
//! must not jump with NTP), wall-clock time for HLC stamps and clock offsets.

mod driver;
pub mod node_machine;
pub mod quorum;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::certs::{CertError, Identity};
use crate::membership::{self, MemberView};
use crate::model::{Delta, NodeId};
use crate::replication::{ReplicationConfig, ReplicationStats};
use crate::store::commit::Committer;
use crate::store::Store;
use crate::transport::{
    Transport, TransportConfig, TransportError, TransportStats, TransportTuning,
};
use crate::workers::Workers;

pub use wire::Message;

#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub node_id: NodeId,
    /// UDP address the QUIC endpoint binds.
    pub listen: SocketAddr,
    /// Address peers should use to reach us, when it differs from `listen`
    /// (NAT, relays, 0.0.0.0 binds). Default: the bound address.
    pub advertise: Option<SocketAddr>,
    /// Any members to join through; empty for the first node (or a restart,
    /// which rejoins the peers remembered in the store).
    pub join: Vec<SocketAddr>,
    pub certs_dir: PathBuf,
    pub membership: membership::Config,
    pub replication: ReplicationConfig,
    pub transport: TransportTuning,
    /// Replicated commits in flight to the store writer (see the driver).
    pub commit_queue_len: usize,
    /// The clock fence's bound and start-up settings (see [`crate::clock`]).
    pub clock: crate::clock::FenceConfig,
    /// The client (HTTP) base URL advertised to peers.
    pub http_url: Option<String>,
    /// How long a write or read with `w`/`r` above 1 waits for replicas.
    pub quorum_timeout: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("certificates: {0}")]
    Certs(#[from] CertError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("membership settings: {0}")]
    Membership(#[from] membership::ConfigError),
    #[error("replication settings: {0}")]
    Replication(#[from] crate::replication::ConfigError),
    #[error("QUIC endpoint: {0}")]
    Io(#[from] std::io::Error),
    #[error("reading remembered peers: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// This node as the cluster sees it.
#[derive(Clone, Debug, Serialize)]
pub struct SelfView {
    pub node_id: String,
    pub addr: String,
    pub incarnation: u64,
    pub joined: bool,
    /// The client URL this node advertises to peers.
    pub http: Option<String>,
    /// Why local writes are refused right now (own-origin recovery), if so.
    pub writes_fenced: Option<String>,
}

/// A snapshot of the cluster state, refreshed a few times a second.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterView {
    pub me: SelfView,
    pub members: Vec<MemberView>,
    pub membership: membership::Stats,
    pub replication: ReplicationStats,
    /// Owned partitions and rebalancing progress (`crate::placement`).
    pub placement: crate::placement::Progress,
    pub transport: TransportStats,
    /// The clock fence's verdict: state, offsets per peer, refusal.
    pub clock: Option<crate::clock::Verdict>,
}

pub struct Cluster {
    view: watch::Receiver<Arc<ClusterView>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    transport: Transport<Message>,
    quic_addr: SocketAddr,
    discovered: mpsc::Sender<crate::discovery::Discovered>,
    placement: Arc<crate::placement::PlacementHandle>,
    quorum: quorum::QuorumClient,
}

impl Cluster {
    /// Binds the QUIC endpoint, restores remembered peers, joins, and starts
    /// the driver. `deltas` receives every newly durable delta of the node's
    /// committer (`Committer::start` with a sink).
    pub async fn start(
        config: ClusterConfig,
        store: Arc<Store>,
        committer: Committer,
        deltas: mpsc::Receiver<Arc<Vec<Delta>>>,
        workers: &Workers,
    ) -> Result<Cluster, ClusterError> {
        config.replication.validate()?;
        config.membership.validate()?;
        let identity = Identity::load(&config.certs_dir, &config.node_id)?;
        let (transport, incoming) = Transport::<Message>::bind(
            TransportConfig::new(identity, config.listen).tuned(&config.transport),
        )
        .await?;
        let quic_addr = transport.local_addr()?;
        let (stop, stop_rx) = watch::channel(false);
        let placement =
            crate::placement::PlacementHandle::new(config.node_id.clone(), store.owned().clone());
        let (driver, view) = driver::Driver::new(
            placement.clone(),
            &config,
            quic_addr,
            store,
            committer,
            transport.clone(),
            workers,
        )?;
        // Small: discovery hands over at most one address per heard node
        // per retry period.
        let (discovered, discovered_rx) = mpsc::channel(64);
        let (quorum, quorum_inbox) = quorum::channel(config.quorum_timeout);
        let task = tokio::spawn(driver.run(
            incoming,
            deltas,
            stop_rx,
            config.join.clone(),
            discovered_rx,
            quorum_inbox,
        ));
        tracing::info!(node = %config.node_id, quic = %quic_addr, join = %crate::logfields::list(&config.join), joins = config.join.len(), "cluster started");
        Ok(Cluster {
            view,
            stop,
            task,
            transport,
            quic_addr,
            discovered,
            placement,
            quorum,
        })
    }

    /// Partition owners and where to forward (`crate::placement`).
    pub fn placement(&self) -> Arc<crate::placement::PlacementHandle> {
        self.placement.clone()
    }

    /// The handle write and read quorums wait through.
    pub fn quorum(&self) -> quorum::QuorumClient {
        self.quorum.clone()
    }

    /// Where LAN discovery sends the nodes it hears; each becomes a join
    /// target unless it is already an alive member.
    pub fn discovered_sender(&self) -> mpsc::Sender<crate::discovery::Discovered> {
        self.discovered.clone()
    }

    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    /// The latest snapshot (at most a few hundred milliseconds old).
    pub fn view(&self) -> Arc<ClusterView> {
        self.view.borrow().clone()
    }

    pub fn view_watch(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.view.clone()
    }

    /// Tells peers we leave, stops the driver and closes the endpoint.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.transport.close().await;
    }
}
