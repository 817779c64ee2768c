//! One hub node: the store, its group-commit writer, the HTTP server and the
//! simulated sensors, started together and stopped together.
//!
//! [`Node::start`] returns once the store is open and the HTTP listener is
//! bound (so `http_addr` is real even for port 0); [`Node::shutdown`] stops
//! sensors and HTTP, lets in-flight writes finish, and returns once the store
//! is closed, so the same directory can be reopened at once (restart tests,
//! in-process clusters).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::{Cluster, ClusterConfig, ClusterError, ClusterView};
use crate::config::Config;
use crate::http::{self, Shared};
use crate::metrics::Metrics;
use crate::model::NodeId;
use crate::store::commit::{Committer, DeltaSink};
use crate::store::{Store, StoreConfig, StoreError};
use crate::workers::{CommitterStatus, Workers};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot open the store in {dir}: {source}")]
    Store { dir: String, source: StoreError },
    #[error("cannot bind HTTP on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create data directory {dir}: {source}")]
    DataDir { dir: String, source: std::io::Error },
    #[error("cannot resolve join address {addr:?}: {reason}")]
    Join { addr: String, reason: String },
    #[error("cannot start LAN discovery on {addr}: {source}")]
    Discovery {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot start the cluster: {0}")]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Tls(#[from] http::tls::TlsError),
}

pub struct Node {
    config: Config,
    http_addr: SocketAddr,
    http_url: String,
    store: Arc<Store>,
    committer: Committer,
    metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
    http_task: JoinHandle<()>,
    sensor_tasks: Vec<JoinHandle<()>>,
    /// The change-stream reader (`/api/watch`); holds the store until it ends.
    changes_task: JoinHandle<()>,
    cluster: Option<Cluster>,
    workers: Arc<Workers>,
    discovery: Option<crate::discovery::lan::Lan>,
}

impl Node {
    /// Opens the store, joins the cluster when `listen` is set, and starts
    /// serving.
    ///
    /// On any error nothing keeps running and nothing half-made stays: what
    /// can fail without side effects (join addresses, the HTTP port) is
    /// checked before the store is opened; a later failure (certificates,
    /// the QUIC port) stops the writer, waits for the store to close (so
    /// the directory is unlocked when this returns) and deletes what this
    /// start created in a data directory that was missing or empty.
    pub async fn start(config: Config) -> Result<Node, NodeError> {
        let dir = config.data_dir.clone();
        // Load the HTTPS identity before opening anything, so a missing
        // certificate fails fast with the `hub certs` command to run.
        let tls = match (config.http_tls, &config.certs) {
            (true, Some(certs)) => Some(http::tls::acceptor(certs, &config.node_id)?),
            (true, None) => Some(http::tls::acceptor(
                std::path::Path::new("certs"),
                &config.node_id,
            )?),
            (false, _) => None,
        };
        let cluster_config = match config.listen {
            Some(listen) => Some(cluster_config(&config, listen).await?),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(config.http)
            .await
            .map_err(|source| NodeError::Bind {
                addr: config.http,
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| NodeError::Bind {
            addr: config.http,
            source,
        })?;
        let http_url = advertised_http(&config, http_addr);
        let cluster_config = cluster_config.map(|cc| ClusterConfig {
            http_url: Some(http_url.clone()),
            ..cc
        });
        let fresh = FreshDir::prepare(&dir)?;
        let store_config = StoreConfig {
            node_id: Some(config.node_id.clone()),
            log_retention: config.log_retention,
            cache_bytes: config.cache_bytes,
            max_clock_offset_ms: config.max_clock_offset.as_millis() as u64,
            ..StoreConfig::default()
        };
        let opened = {
            let open_dir = dir.clone();
            tokio::task::spawn_blocking(move || Store::open(&open_dir, store_config))
                .await
                .map_err(|e| StoreError::Missing(format!("open task failed: {e}")))
                .and_then(|r| r)
        };
        let store = match opened {
            Ok(store) => Arc::new(store),
            Err(source) => {
                fresh.undo();
                return Err(NodeError::Store {
                    dir: dir.display().to_string(),
                    source,
                });
            }
        };
        if let Err(e) = crate::files::private_tree(&dir) {
            tracing::warn!(data_dir = %dir.display(), error = %e, "cannot make the data directory private");
        }
        let (sink, deltas): (Option<DeltaSink>, _) = match config.listen {
            Some(_) => {
                let (tx, rx) = tokio::sync::mpsc::channel(config.commit_queue_len);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let committer = match Committer::start(store.clone(), sink) {
            Ok(c) => c,
            Err(source) => {
                close_store(store, &config.node_id).await;
                fresh.undo();
                return Err(NodeError::Store {
                    dir: dir.display().to_string(),
                    source,
                });
            }
        };
        let workers = Workers::new();
        workers.add(Arc::new(CommitterStatus(committer.observer())));
        let cluster = match (cluster_config, deltas) {
            (Some(cc), Some(deltas)) => {
                let started =
                    Cluster::start(cc, store.clone(), committer.clone(), deltas, &workers).await;
                match started {
                    Ok(c) => Some(c),
                    Err(e) => {
                        drop(committer);
                        close_store(store, &config.node_id).await;
                        fresh.undo();
                        return Err(e.into());
                    }
                }
            }
            _ => None,
        };
        let (stop, stop_rx) = watch::channel(false);
        let discovery = match (&config.discovery, &cluster) {
            (Some(dc), Some(c)) => match start_discovery(&config, dc, c, &stop_rx) {
                Ok(d) => Some(d),
                Err(e) => {
                    if let Some(c) = cluster {
                        c.shutdown().await;
                    }
                    drop(committer);
                    close_store(store, &config.node_id).await;
                    fresh.undo();
                    return Err(e);
                }
            },
            _ => None,
        };
        let metrics = Arc::new(Metrics::for_node(config.node_id.as_str()));
        let keys = config
            .auth
            .then(|| Arc::new(crate::auth::KeyTable::new(store.clone())));
        if let Some(k) = &keys {
            // No keys yet is not this layer's to judge: `hub serve` tells
            // the operator how to make one, while `hub demo` and embedders
            // mint theirs right after the start.
            if let Ok(n @ 1..) = k.active() {
                tracing::info!(node = %config.node_id, keys = n, "API keys loaded");
            }
        }
        let fd_limit = http::server::fd_limit();
        let mut limits = config.http_limits.clone();
        limits.max_connections = http::server::connection_cap(limits.max_connections, fd_limit);
        if limits.max_connections < config.http_limits.max_connections {
            tracing::warn!(
                node = %config.node_id,
                fd_limit = fd_limit.unwrap_or(0),
                max_connections = limits.max_connections,
                "HTTP connection cap lowered to leave file descriptors for the store and peers"
            );
        }
        let (changes, changes_task) = http::watch::ChangeHub::start(
            store.clone(),
            metrics.clone(),
            committer.clock_gate().clone(),
            config.node_id.clone(),
            stop_rx.clone(),
        );
        let shared = Arc::new(Shared {
            node_id: config.node_id.clone(),
            store: store.clone(),
            committer: committer.clone(),
            metrics: metrics.clone(),
            max_value_bytes: config.max_value_bytes,
            max_batch_bytes: config.max_batch_bytes,
            state_limit: config.state_limit,
            history_scan_limit: config.history_scan_limit,
            cluster: cluster.as_ref().map(Cluster::view_watch),
            quorum: cluster.as_ref().map(Cluster::quorum),
            workers: workers.clone(),
            keys,
            http_url: http_url.clone(),
            changes,
            placement: cluster.as_ref().map(Cluster::placement),
            forwarder: forwarder(&config),
        });
        let app = http::router(shared);
        let http_task = tokio::spawn(http::server::serve(
            listener,
            app,
            tls,
            limits,
            metrics.clone(),
            stop_rx.clone(),
        ));
        let sensor_tasks = crate::sensors::runner::spawn(
            &config.sensors,
            &config.node_id,
            &committer,
            &metrics,
            &workers.register("sensors"),
            &stop_rx,
        );
        let s = store.summary().ok();
        tracing::info!(
            node = %config.node_id,
            http = %http_addr,
            https = config.http_tls,
            auth = config.auth,
            data_dir = %dir.display(),
            entries = s.as_ref().map_or(0, |s| s.entries),
            sensors = config.sensors.len(),
            "node started"
        );
        Ok(Node {
            config,
            http_addr,
            http_url,
            store,
            committer,
            metrics,
            stop,
            http_task,
            sensor_tasks,
            changes_task,
            cluster,
            workers,
            discovery,
        })
    }

    /// The QUIC address peers reach this node on, when it is clustered.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.cluster.as_ref().map(Cluster::quic_addr)
    }

    /// The latest cluster snapshot, when clustered.
    pub fn cluster_view(&self) -> Option<Arc<ClusterView>> {
        self.cluster.as_ref().map(Cluster::view)
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The client API's base URL: `https://` when TLS is on.
    pub fn base_url(&self) -> String {
        let scheme = if self.config.http_tls {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.http_addr)
    }

    /// The client URL this node advertises to peers (see [`advertised_http`]).
    pub fn http_url(&self) -> &str {
        &self.http_url
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn committer(&self) -> &Committer {
        &self.committer
    }

    /// Every background mechanism's status.
    pub fn workers(&self) -> &Arc<Workers> {
        &self.workers
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Stops sensors and HTTP (in-flight requests complete), then waits for
    /// the writer to drain and the store to close.
    pub async fn shutdown(self) {
        let Node {
            config,
            store,
            committer,
            stop,
            http_task,
            sensor_tasks,
            changes_task,
            metrics,
            cluster,
            discovery,
            ..
        } = self;
        let _ = stop.send(true);
        if let Some(d) = discovery {
            d.join().await;
        }
        for t in sensor_tasks {
            let _ = t.await;
        }
        if let Some(cluster) = cluster {
            cluster.shutdown().await;
        }
        // Idle keep-alive connections would hold graceful shutdown open; give
        // in-flight requests a moment, then stop serving.
        let abort = http_task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), http_task)
            .await
            .is_err()
        {
            abort.abort();
        }
        let _ = changes_task.await;
        drop(committer);
        drop(metrics);
        // The writer thread holds the last other reference; it exits once
        // every committer is gone (handlers and sensors dropped theirs above).
        close_store(store, &config.node_id).await;
        tracing::info!(node = %config.node_id, "node stopped");
    }
}

/// Waits (up to 10 s) until `store` is the last reference (the writer
/// threads exit once every committer is dropped), flushes and closes it, so
/// the directory can be opened again at once.
async fn close_store(store: Arc<Store>, node: &NodeId) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut store = store;
    loop {
        match Arc::try_unwrap(store) {
            Ok(s) => {
                // Everything acknowledged is already flushed; this flush
                // covers unacknowledged tail work, if any.
                if let Err(e) = s.flush() {
                    tracing::warn!(node = %node, error = %e, "final flush failed");
                }
                drop(s);
                return;
            }
            Err(s) if tokio::time::Instant::now() < deadline => {
                store = s;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(_) => {
                tracing::warn!(node = %node, "store still referenced at shutdown; leaving it to close on exit");
                return;
            }
        }
    }
}

/// A data directory as it was before this start: if it was missing or
/// empty, [`FreshDir::undo`] removes what the start put there.
struct FreshDir {
    dir: PathBuf,
    /// `None`: the directory held something before; never touched.
    created: Option<bool>,
}

impl FreshDir {
    fn prepare(dir: &Path) -> Result<FreshDir, NodeError> {
        let err = |source| NodeError::DataDir {
            dir: dir.display().to_string(),
            source,
        };
        let created = match std::fs::read_dir(dir) {
            Ok(mut entries) => entries.next().is_none().then_some(false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(true),
            Err(e) => return Err(err(e)),
        };
        crate::files::private_dir(dir).map_err(err)?;
        Ok(FreshDir {
            dir: dir.to_path_buf(),
            created,
        })
    }

    fn undo(self) {
        let result = match self.created {
            None => return,
            Some(true) => std::fs::remove_dir_all(&self.dir),
            Some(false) => std::fs::read_dir(&self.dir).and_then(|entries| {
                entries.flatten().try_for_each(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => std::fs::remove_dir_all(e.path()),
                    _ => std::fs::remove_file(e.path()),
                })
            }),
        };
        match result {
            Ok(()) => {
                tracing::info!(dir = %self.dir.display(), "removed the data directory this failed start created")
            }
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove what this failed start created")
            }
        }
    }
}

fn start_discovery(
    config: &Config,
    dc: &crate::discovery::DiscoveryConfig,
    cluster: &Cluster,
    stop: &watch::Receiver<bool>,
) -> Result<crate::discovery::lan::Lan, NodeError> {
    let view = cluster.view_watch();
    let is_alive_member = move |id: &NodeId| {
        view.borrow()
            .members
            .iter()
            .any(|m| &m.node_id == id && m.status == crate::membership::Status::Alive)
    };
    let port = config.advertise.unwrap_or(cluster.quic_addr()).port();
    crate::discovery::lan::Lan::start(
        dc.clone(),
        config.node_id.clone(),
        port,
        is_alive_member,
        cluster.discovered_sender(),
        stop.clone(),
    )
    .map_err(|source| NodeError::Discovery {
        addr: dc.target.to_string(),
        source,
    })
}

async fn cluster_config(config: &Config, listen: SocketAddr) -> Result<ClusterConfig, NodeError> {
    let mut join = Vec::new();
    for addr in &config.join {
        let resolved =
            tokio::net::lookup_host(addr.as_str())
                .await
                .map_err(|e| NodeError::Join {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
        join.extend(resolved.take(1));
    }
    Ok(ClusterConfig {
        node_id: config.node_id.clone(),
        listen,
        advertise: config.advertise,
        join,
        certs_dir: config.certs.clone().unwrap_or_else(|| "certs".into()),
        membership: config.membership.clone(),
        replication: config.replication.clone(),
        transport: config.transport.clone(),
        commit_queue_len: config.commit_queue_len,
        clock: crate::clock::FenceConfig {
            max_offset_us: config.max_clock_offset.as_micros() as u64,
            grace_ms: crate::cluster::node_machine::CONTACT_GRACE_MS,
            accept_clock_ahead: config.accept_clock_ahead,
        },
        http_url: None,
        quorum_timeout: config.quorum_timeout,
    })
}

/// The client URL peers, `hub status` and the dashboard use for this node:
/// `advertise_http` when set, else the bound HTTP address; a wildcard bind
/// (0.0.0.0, ::) is replaced by the QUIC advertise or listen IP when that is
/// specific, else by the host name (what container networks resolve).
pub fn advertised_http(config: &Config, bound: SocketAddr) -> String {
    if let Some(url) = &config.advertise_http {
        return url.clone();
    }
    let scheme = if config.http_tls { "https" } else { "http" };
    let port = bound.port();
    if !bound.ip().is_unspecified() {
        return format!("{scheme}://{bound}");
    }
    let specific = [config.advertise, config.listen]
        .into_iter()
        .flatten()
        .map(|a| a.ip())
        .find(|ip| !ip.is_unspecified());
    match specific {
        Some(ip) => format!("{scheme}://{}", SocketAddr::new(ip, port)),
        None => format!("{scheme}://{}:{port}", host_name()),
    }
}

fn host_name() -> String {
    #[cfg(unix)]
    {
        let mut buf = [0u8; 256];
        // SAFETY: gethostname writes at most buf.len() bytes into buf.
        if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            if let Ok(name) = std::str::from_utf8(&buf[..end]) {
                if !name.is_empty() {
                    return name.to_string();
                }
            }
        }
    }
    "localhost".to_string()
}

/// The HTTP client `/kv` requests are forwarded to owners with: the
/// cluster CA as trust root when the nodes serve HTTPS.
fn forwarder(config: &Config) -> Option<crate::client::Client> {
    let cacert = config
        .certs
        .as_ref()
        .map(|d| d.join("ca.pem"))
        .filter(|p| config.http_tls && p.exists());
    let opts = crate::client::ClientOptions {
        token: None,
        cacert,
        timeout: Some(std::time::Duration::from_secs(10)),
    };
    match crate::client::Client::new(&opts) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!(node = %config.node_id, error = %e, "no client to forward requests to owners");
            None
        }
    }
}
