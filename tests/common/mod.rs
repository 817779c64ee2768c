//! Shared harness for multi-node tests: certificates, in-process clustered
//! nodes, `hub serve` processes, an HTTP client, polling with deadlines and a
//! userspace UDP relay that can cut traffic (partitions without root).

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::Value;

use hub::certs;
use hub::config::{Config, ConfigLayer};
use hub::membership::Status;
use hub::model::{Meta, NodeId};
use hub::node::Node;
use hub::store::{Condition, Op};

pub fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

/// A directory holding a cluster CA and node certificates.
pub struct Certs {
    pub dir: tempfile::TempDir,
}

impl Certs {
    pub fn new(ids: &[&str]) -> Certs {
        let dir = tempfile::tempdir().unwrap();
        certs::init_ca(dir.path()).unwrap();
        // 127.0.0.1 and localhost, so HTTPS clients accept the node too.
        let loopback: std::net::IpAddr = [127, 0, 0, 1].into();
        for n in ids {
            certs::issue(dir.path(), &id(n), &[loopback], &["localhost".into()]).unwrap();
        }
        Certs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A free UDP port on loopback, for a node that must come back on the same
/// address (bind :0, read the port, release it). Never the same port twice
/// in one process: the kernel may hand a just-released port out again, and
/// two nodes of one cluster given the same port fail to start (seen once in
/// the sharding bench).
pub fn free_udp_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// Polls `f` every few milliseconds until true; panics at the deadline.
/// Returns how long it took.
pub async fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

/// Like [`eventually`] for conditions that need `.await` (HTTP).
pub async fn eventually_async<F, Fut>(what: &str, within: Duration, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

// ---------------------------------------------------------------- HTTP

/// The library's client (`hub::client`), as the CLI uses it.
pub type HttpClient = hub::client::Client;

/// A plain client: no token, no CA.
pub fn http_client() -> HttpClient {
    hub::client::Client::new(&hub::client::ClientOptions::default()).unwrap()
}

/// A client trusting `ca` and sending `token`, for HTTPS nodes with auth.
pub fn https_client(ca: &Path, token: Option<&str>) -> HttpClient {
    hub::client::Client::new(&hub::client::ClientOptions {
        token: token.map(str::to_string),
        cacert: Some(ca.to_path_buf()),
        timeout: None,
    })
    .unwrap()
}

pub async fn call(
    c: &HttpClient,
    method: Method,
    url: &str,
    body: impl Into<Bytes>,
) -> Result<(StatusCode, Bytes), String> {
    c.request(method, url, body, Some("application/json"))
        .await
        .map(|r| (r.status, r.body))
        .map_err(|e| e.to_string())
}

pub async fn get_json(c: &HttpClient, url: &str) -> Option<Value> {
    c.get_json(url).await.ok()
}

// ---------------------------------------------------------------- in-process nodes

/// Settings for one in-process clustered node.
pub struct Spec<'a> {
    pub id: &'a str,
    pub certs: &'a Path,
    pub join: Vec<SocketAddr>,
    pub advertise: Option<SocketAddr>,
    pub listen: SocketAddr,
    pub anti_entropy_interval_ms: u64,
    pub log_retention: Option<u64>,
    /// HTTPS with the node's certificate, and API keys required.
    pub secure: bool,
}

impl<'a> Spec<'a> {
    pub fn new(id: &'a str, certs: &'a Path) -> Spec<'a> {
        Spec {
            id,
            certs,
            join: Vec::new(),
            advertise: None,
            listen: "127.0.0.1:0".parse().unwrap(),
            anti_entropy_interval_ms: 2_000,
            log_retention: None,
            secure: false,
        }
    }

    pub fn secure(mut self) -> Self {
        self.secure = true;
        self
    }

    pub fn join(mut self, seeds: &[SocketAddr]) -> Self {
        self.join = seeds.to_vec();
        self
    }

    pub fn config(&self, data_dir: &Path) -> Result<Config, hub::config::ConfigError> {
        Config::resolve([ConfigLayer {
            node_id: Some(self.id.into()),
            data_dir: Some(data_dir.into()),
            http: Some("127.0.0.1:0".into()),
            sensors: Some(Vec::new()),
            listen: Some(self.listen.to_string()),
            advertise: self.advertise.map(|a| a.to_string()),
            join: Some(self.join.iter().map(ToString::to_string).collect()),
            certs: Some(self.certs.into()),
            anti_entropy_interval: Some(std::time::Duration::from_millis(
                self.anti_entropy_interval_ms,
            )),
            log_retention: self.log_retention,
            http_tls: Some(self.secure),
            auth: Some(self.secure),
            ..ConfigLayer::default()
        }])
    }
}

/// An in-process node on its own sled directory.
pub struct TestNode {
    pub node: Node,
    pub id: NodeId,
    pub data: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestNode {
    pub async fn start(spec: Spec<'_>) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let node = Node::start(spec.config(&data).unwrap()).await.unwrap();
        TestNode {
            node,
            id: id(spec.id),
            data,
            _dir: dir,
        }
    }

    /// Stops the node; its config and directory, to start it again later.
    pub async fn stop(self) -> (Config, tempfile::TempDir) {
        let config = self.node.config().clone();
        self.node.shutdown().await;
        (config, self._dir)
    }

    /// Stops the node and starts it again on the same directory and config.
    pub async fn restart(self) -> TestNode {
        let TestNode {
            node,
            id,
            data,
            _dir,
        } = self;
        let config = node.config().clone();
        node.shutdown().await;
        let node = Node::start(config).await.unwrap();
        TestNode {
            node,
            id,
            data,
            _dir,
        }
    }

    pub fn quic(&self) -> SocketAddr {
        self.node.quic_addr().unwrap()
    }

    pub fn base(&self) -> String {
        self.node.base_url()
    }

    /// Writes `key = value` here and waits until it is durable.
    pub async fn put(&self, key: &str, value: &str) {
        self.put_many([(key.to_string(), value.to_string())]).await;
    }

    /// Writes all pairs in one group commit.
    pub async fn put_many(&self, kvs: impl IntoIterator<Item = (String, String)>) {
        let ops = kvs
            .into_iter()
            .map(|(key, value)| Op::Local {
                key,
                value: Some(value.into_bytes()),
                meta: Meta::new(),
                cond: Condition::Always,
            })
            .collect();
        self.node.committer().commit(ops).await.unwrap();
    }

    /// The live value of `key` (None if absent or deleted).
    pub fn value(&self, key: &str) -> Option<String> {
        self.node
            .store()
            .get(key)
            .unwrap()
            .and_then(|e| e.value)
            .map(|v| String::from_utf8(v).unwrap())
    }

    pub fn root(&self) -> [u8; 16] {
        self.node.store().merkle_root()
    }

    /// Peers this node sees with the given status.
    pub fn peers_with(&self, status: Status) -> Vec<String> {
        self.node
            .cluster_view()
            .unwrap()
            .members
            .iter()
            .filter(|m| m.status == status)
            .map(|m| m.node_id.to_string())
            .collect()
    }

    pub fn sees_alive(&self, ids: &[&str]) -> bool {
        let alive = self.peers_with(Status::Alive);
        ids.iter().all(|i| alive.iter().any(|a| a == i))
    }

    pub fn handshake_rejections(&self) -> u64 {
        self.node
            .cluster_view()
            .unwrap()
            .transport
            .handshake_rejections
            .values()
            .sum()
    }

    pub fn rejections(&self, reason: &str) -> u64 {
        self.node
            .cluster_view()
            .unwrap()
            .transport
            .handshake_rejections
            .get(reason)
            .copied()
            .unwrap_or(0)
    }
}

/// True when every node has the same Merkle root.
pub fn roots_equal(nodes: &[&TestNode]) -> bool {
    let r = nodes[0].root();
    nodes.iter().all(|n| n.root() == r)
}

/// Waits until every node sees every other alive.
pub async fn wait_full_mesh(nodes: &[&TestNode], within: Duration) {
    let ids: Vec<String> = nodes.iter().map(|n| n.id.to_string()).collect();
    eventually("every node sees every other alive", within, || {
        nodes.iter().all(|n| {
            let alive = n.peers_with(Status::Alive);
            ids.iter()
                .filter(|i| **i != n.id.as_str())
                .all(|i| alive.contains(i))
        })
    })
    .await;
}

/// Nodes a, b, c (b and c join through a), once every one sees the others.
pub async fn three_nodes(certs: &Certs, within: Duration) -> (TestNode, TestNode, TestNode) {
    let a = TestNode::start(Spec::new("a", certs.path())).await;
    let b = TestNode::start(Spec::new("b", certs.path()).join(&[a.quic()])).await;
    let c = TestNode::start(Spec::new("c", certs.path()).join(&[a.quic()])).await;
    wait_full_mesh(&[&a, &b, &c], within).await;
    (a, b, c)
}

// ---------------------------------------------------------------- processes

/// Runs `hub ARGS` with extra environment variables to its end.
pub fn run_hub(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hub"))
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

/// Output bytes as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `hub ARGS`, expects success and returns its stdout.
pub fn hub_ok(args: &[&str]) -> String {
    let out = run_hub(args, &[]);
    assert!(out.status.success(), "hub {args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// `hub serve` arguments for node `id` on loopback: HTTP on a free port,
/// QUIC on `port`, no simulated sensors, joining `join` if given.
pub fn serve_args(
    id: &str,
    data: &Path,
    certs: &Path,
    port: u16,
    join: Option<u16>,
) -> Vec<String> {
    let mut args: Vec<String> = ["--node-id", id, "--http", "127.0.0.1:0", "--no-sensors"]
        .map(String::from)
        .to_vec();
    args.extend(["--data-dir".into(), data.display().to_string()]);
    args.extend(["--certs".into(), certs.display().to_string()]);
    args.extend(["--listen".into(), format!("127.0.0.1:{port}")]);
    if let Some(j) = join {
        args.extend(["--join".into(), format!("127.0.0.1:{j}")]);
    }
    args
}

/// A `hub serve` process, killed on drop so a failing test leaves none behind.
pub struct Proc {
    pub child: Child,
    pub base: String,
}

impl Proc {
    /// Starts the binary with `args` (after `serve`) and waits for its
    /// "serving http://ADDR" line.
    pub fn start(args: &[String]) -> Proc {
        Proc::start_env(args, &[])
    }

    /// [`Proc::start`] with extra environment variables (libfaketime's).
    pub fn start_env(args: &[String], env: &[(String, String)]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hub"))
            .arg("serve")
            .args(args)
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .split_whitespace()
            .last()
            .unwrap_or_default()
            .to_string();
        assert!(
            base.starts_with("http://") || base.starts_with("https://"),
            "unexpected first line {line:?}"
        );
        Proc { child, base }
    }

    /// SIGTERM, then waits for the clean shutdown.
    pub fn stop(mut self) {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }

    /// SIGKILL: no goodbye to peers, no final flush.
    pub fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- relay

/// Which side of a partition each node's real QUIC port is on. Traffic
/// between ports on different sides is dropped by every relay; an empty
/// map means no partition.
#[derive(Clone, Default)]
pub struct Cut {
    /// node QUIC port → side
    sides: Arc<Mutex<HashMap<u16, u8>>>,
    /// ports that are cut from everyone (a blackholed, "dead" node)
    isolated: Arc<Mutex<HashSet<u16>>>,
}

impl Cut {
    pub fn partition(&self, sides: &[(&[u16], u8)]) {
        let mut m = self.sides.lock().unwrap();
        m.clear();
        for (ports, side) in sides {
            for p in *ports {
                m.insert(*p, *side);
            }
        }
    }

    pub fn isolate(&self, port: u16) {
        self.isolated.lock().unwrap().insert(port);
    }

    pub fn heal(&self) {
        self.sides.lock().unwrap().clear();
        self.isolated.lock().unwrap().clear();
    }

    /// Whether a datagram between node ports `a` and `b` gets through.
    fn passes(&self, a: u16, b: u16) -> bool {
        let iso = self.isolated.lock().unwrap();
        if iso.contains(&a) || iso.contains(&b) {
            return false;
        }
        let m = self.sides.lock().unwrap();
        match (m.get(&a), m.get(&b)) {
            (Some(x), Some(y)) => x == y,
            _ => true,
        }
    }
}

/// A UDP relay in front of one node: peers dial the relay (the node
/// advertises it), the relay forwards to the node through one upstream
/// socket per client address (NAT-style) so replies find their way back.
pub struct Relay {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// `target` is the node's real QUIC address (filled in once known, since
    /// the node must know the relay address before it starts).
    pub async fn start(
        target: Arc<Mutex<Option<SocketAddr>>>,
        cut: Cut,
        dropped: Arc<std::sync::atomic::AtomicU64>,
    ) -> Relay {
        let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = front.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut upstreams: HashMap<SocketAddr, Arc<tokio::net::UdpSocket>> = HashMap::new();
            let mut pumps = Vec::new();
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, client)) = front.recv_from(&mut buf).await else {
                    return;
                };
                let Some(to) = *target.lock().unwrap() else {
                    continue;
                };
                if !cut.passes(client.port(), to.port()) {
                    dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
                let up = match upstreams.get(&client) {
                    Some(up) => up.clone(),
                    None => {
                        let up =
                            Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
                        up.connect(to).await.unwrap();
                        upstreams.insert(client, up.clone());
                        // Replies from the node go back to the client from the
                        // relay's front address.
                        let (up2, front2, cut2, dropped2) =
                            (up.clone(), front.clone(), cut.clone(), dropped.clone());
                        pumps.push(tokio::spawn(async move {
                            let mut buf = vec![0u8; 65_536];
                            while let Ok(n) = up2.recv(&mut buf).await {
                                if cut2.passes(to.port(), client.port()) {
                                    let _ = front2.send_to(&buf[..n], client).await;
                                } else {
                                    dropped2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                }
                            }
                        }));
                        up
                    }
                };
                let _ = up.send(&buf[..n]).await;
            }
        });
        Relay { addr, task }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The pumps hold only weak interest: they end when their sockets
        // error, or with the runtime at the end of the test.
        self.task.abort();
    }
}

// ---------------------------------------------------------------- secured nodes

/// A single node `n1` serving HTTPS with auth on, certificates from `certs`.
pub async fn secure_node(certs: &Certs, data: &Path) -> Node {
    let config = Config::resolve([ConfigLayer {
        node_id: Some("n1".into()),
        data_dir: Some(data.into()),
        http: Some("127.0.0.1:0".into()),
        sensors: Some(Vec::new()),
        certs: Some(certs.path().into()),
        http_tls: Some(true),
        auth: Some(true),
        ..ConfigLayer::default()
    }])
    .unwrap();
    Node::start(config).await.unwrap()
}

/// Creates an API key straight through the node's committer (as `hub keys
/// create --data-dir` does on a stopped node) and returns its token.
pub async fn mint_key(node: &Node, role: hub::auth::Role, prefix: Option<&str>) -> String {
    let (token, _, op) = hub::auth::NewKey {
        role,
        prefix: prefix.map(str::to_string),
        name: None,
    }
    .mint(1)
    .unwrap();
    node.committer().commit(vec![op]).await.unwrap();
    token.reveal().to_string()
}
