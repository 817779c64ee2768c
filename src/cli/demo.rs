//! `hub demo`: a local cluster in one command. Makes a CA and node
//! certificates (once), starts N nodes with simulated sensors on loopback,
//! each joining the first, and prints their addresses.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use hub::certs;
use hub::config::{Config, ConfigLayer};
use hub::model::NodeId;
use hub::node::Node;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub nodes: u16,
    /// Directory for certificates and the nodes' data (kept between runs).
    #[arg(long, default_value = "hub-demo")]
    pub dir: PathBuf,
    /// HTTP port of the first node; the others follow. 0 picks free ports.
    #[arg(long, default_value_t = 8081)]
    pub http_base_port: u16,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let certs_dir = args.dir.join("certs");
    if !certs::ca_paths(&certs_dir).cert.exists() {
        certs::init_ca(&certs_dir).context("creating the demo CA")?;
    }
    let mut nodes = Vec::new();
    let mut seed = None;
    for i in 1..=args.nodes {
        let id = NodeId::new(format!("node-{i}"))?;
        if !certs::node_paths(&certs_dir, &id).cert.exists() {
            certs::issue(&certs_dir, &id, &[], &[]).with_context(|| format!("issuing {id}"))?;
        }
        let port = match args.http_base_port {
            0 => 0,
            base => base
                .checked_add(i - 1)
                .context("--http-base-port too high for this many nodes")?,
        };
        let layer = ConfigLayer {
            node_id: Some(id.to_string()),
            data_dir: Some(args.dir.join(id.as_str())),
            http: Some(format!("127.0.0.1:{port}")),
            listen: Some("127.0.0.1:0".into()),
            certs: Some(certs_dir.clone()),
            join: seed.map(|a: std::net::SocketAddr| vec![a.to_string()]),
            ..ConfigLayer::default()
        };
        let config = Config::resolve([layer])?;
        let node = Node::start(config)
            .await
            .with_context(|| format!("starting {id}"))?;
        if seed.is_none() {
            seed = node.quic_addr();
        }
        println!(
            "{id}: http://{} (QUIC {})",
            node.http_addr(),
            node.quic_addr().map_or_else(String::new, |a| a.to_string())
        );
        nodes.push(node);
    }
    println!(
        "{} nodes running; data and certificates in {}. Try: curl http://{}/api/membership. Ctrl-C stops.",
        nodes.len(),
        args.dir.display(),
        nodes[0].http_addr()
    );
    super::serve::wait_for_signal().await;
    for node in nodes {
        node.shutdown().await;
    }
    Ok(())
}
