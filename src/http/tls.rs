//! HTTPS on the client API: rustls (ring only, like the transport) with the
//! node's own certificate and key from `--certs`, so clients verify the node
//! against the cluster's `ca.pem`. No client certificates: clients
//! authenticate with API keys.

use std::path::Path;
use std::sync::Arc;

use crate::certs::{CertError, Identity};
use crate::model::NodeId;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("HTTPS needs the node's certificate: {0}")]
    Cert(#[from] CertError),
    #[error("HTTPS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The acceptor serving `DIR/ID.pem` with `DIR/ID.key`.
pub fn acceptor(certs_dir: &Path, node_id: &NodeId) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let id = Identity::load(certs_dir, node_id)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![id.cert], id.key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
