//! `hub demo`: a local cluster in one command. Makes a CA and node
//! certificates (once, valid for 127.0.0.1 and localhost), starts N nodes
//! with simulated sensors on loopback, each joining the first, serving
//! HTTPS with API keys on, and prints the CA path, a fresh admin token and
//! a curl line to paste.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use hub::auth::{NewKey, Role};
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

/// Whether a node certificate names 127.0.0.1 (so curl accepts it there).
fn names_loopback(cert: &std::path::Path) -> bool {
    let Ok(pem) = std::fs::read(cert) else {
        return false;
    };
    use rustls_pki_types::pem::PemObject;
    let Ok(der) = rustls_pki_types::CertificateDer::from_pem_slice(&pem) else {
        return false;
    };
    let Ok((_, x)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return false;
    };
    let Ok(Some(san)) = x.subject_alternative_name() else {
        return false;
    };
    san.value.general_names.iter().any(|g| {
        matches!(g, x509_parser::extensions::GeneralName::IPAddress(ip) if *ip == [127, 0, 0, 1])
    })
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    hub::files::private_umask();
    let certs_dir = args.dir.join("certs");
    if !certs::ca_paths(&certs_dir).cert.exists() {
        certs::init_ca(&certs_dir).context("creating the demo CA")?;
    }
    let mut nodes = Vec::new();
    let mut seed = None;
    for i in 1..=args.nodes {
        let id = NodeId::new(format!("node-{i}"))?;
        let paths = certs::node_paths(&certs_dir, &id);
        if paths.cert.exists() && !names_loopback(&paths.cert) {
            // Made by an older demo without HTTPS names: make it again.
            let _ = std::fs::remove_file(&paths.cert);
            let _ = std::fs::remove_file(&paths.key);
        }
        if !paths.cert.exists() {
            let loopback: std::net::IpAddr = [127, 0, 0, 1].into();
            certs::issue(&certs_dir, &id, &[loopback], &["localhost".to_string()])
                .with_context(|| format!("issuing {id}"))?;
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
            http_tls: Some(true),
            auth: Some(true),
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
            "{id}: {} (QUIC {})",
            node.base_url(),
            node.quic_addr().map_or_else(String::new, |a| a.to_string())
        );
        nodes.push(node);
    }
    let admin = NewKey {
        role: Role::Admin,
        prefix: None,
        name: Some("demo admin".into()),
    };
    let (token, _, op) = admin.mint(hub::store::commit::wall_ms())?;
    nodes[0]
        .committer()
        .commit(vec![op])
        .await
        .context("storing the demo admin key")?;
    let ca = certs::ca_paths(&certs_dir).cert;
    println!(
        "{} nodes running; data and certificates in {}.\nCA: {}\nadmin token (new each run): {}\nTry: curl --cacert {} -H \"Authorization: Bearer {}\" {}/api/membership\nCtrl-C stops.",
        nodes.len(),
        args.dir.display(),
        ca.display(),
        token.reveal(),
        ca.display(),
        token.reveal(),
        nodes[0].base_url()
    );
    super::serve::wait_for_signal().await;
    for node in nodes {
        node.shutdown().await;
    }
    Ok(())
}
