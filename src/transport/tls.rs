//! rustls configurations for the QUIC transport, and peer-identity checks.
//!
//! Guarantees: TLS 1.3 only, ring provider only (never the process default),
//! ALPN `hub/1`, client certificates mandatory. Both sides verify the peer's
//! chain against the cluster CA with webpki (EKU serverAuth / clientAuth)
//! and read the peer's node id from its certificate ([`node_id_of`]). A
//! dialer that expects a node id passes it as the TLS server name; a server
//! certificate naming another id is refused during the handshake. Every
//! refusal is counted by reason in [`HandshakeCounters`].
//!
//! Cost: one x509 parse per handshake on top of webpki's own.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::certs::{node_id_of, Identity};
use crate::model::NodeId;

/// ALPN protocol id of the hub node-to-node protocol.
pub const ALPN: &[u8] = b"hub/1";

/// TLS server name used when dialing an address whose node id is unknown
/// (e.g. `--join ADDR`). Not a valid [`NodeId`] (it has dots), so it can
/// never be confused with one; any CA-signed node is accepted.
pub const ANY_NODE: &str = "any-node.hub.invalid";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cluster CA certificate unusable as trust anchor: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
    #[error("QUIC crypto configuration: {0}")]
    Quic(String),
}

/// Handshake refusals by reason (both directions).
#[derive(Debug, Default)]
pub struct HandshakeCounters {
    /// Chain does not verify against the cluster CA (other CA, expired, bad EKU...).
    pub untrusted: AtomicU64,
    /// CA-signed, but names no usable node id.
    pub no_node_id: AtomicU64,
    /// Dialed expecting node X, the certificate names node Y.
    pub wrong_node_id: AtomicU64,
    /// Our outbound handshake was refused by the peer (it rejected our certificate).
    pub refused_by_peer: AtomicU64,
    /// Handshake did not complete in time or failed for another reason.
    pub failed_other: AtomicU64,
}

impl HandshakeCounters {
    pub fn snapshot(&self) -> std::collections::BTreeMap<String, u64> {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("untrusted", l(&self.untrusted)),
            ("no_node_id", l(&self.no_node_id)),
            ("wrong_node_id", l(&self.wrong_node_id)),
            ("refused_by_peer", l(&self.refused_by_peer)),
            ("failed_other", l(&self.failed_other)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(identity: &Identity) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(identity.ca.clone())?;
    Ok(Arc::new(roots))
}

fn refuse(counter: &AtomicU64, why: String) -> rustls::Error {
    counter.fetch_add(1, Ordering::Relaxed);
    rustls::Error::General(why)
}

/// Checks the peer certificate's node id after webpki accepted the chain.
fn checked_id(
    end_entity: &CertificateDer<'_>,
    counters: &HandshakeCounters,
) -> Result<NodeId, rustls::Error> {
    node_id_of(end_entity).map_err(|e| {
        tracing::warn!(error = %e, "peer certificate names no node id");
        refuse(&counters.no_node_id, format!("peer certificate: {e}"))
    })
}

fn count_untrusted(e: rustls::Error, counters: &HandshakeCounters, side: &str) -> rustls::Error {
    counters.untrusted.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(error = %e, side, "peer certificate refused");
    e
}

/// Server-certificate verifier: webpki chain + name check against the id
/// the certificate itself states, then the dialer's expected id.
struct NodeServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    counters: Arc<HandshakeCounters>,
}

impl fmt::Debug for NodeServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeServerVerifier")
    }
}

impl ServerCertVerifier for NodeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Parse the id first only to pick the name webpki must find in the
        // certificate; nothing is trusted until webpki accepted the chain.
        let claimed = node_id_of(end_entity).ok();
        let name = match &claimed {
            Some(id) => ServerName::try_from(id.as_str().to_string())
                .map_err(|_| rustls::Error::General("unusable node id".into()))?,
            None => server_name.to_owned(),
        };
        self.inner
            .verify_server_cert(end_entity, intermediates, &name, ocsp, now)
            .map_err(|e| count_untrusted(e, &self.counters, "server"))?;
        let got = checked_id(end_entity, &self.counters)?;
        let expected = match server_name {
            ServerName::DnsName(d) if d.as_ref() != ANY_NODE => Some(d.as_ref().to_string()),
            _ => None,
        };
        if let Some(want) = expected {
            if want != got.as_str() {
                tracing::warn!(expected = %want, peer = %got, "peer certificate names another node");
                return Err(refuse(
                    &self.counters.wrong_node_id,
                    format!("peer certificate names node {got:?}, expected {want:?}"),
                ));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Client-certificate verifier: webpki chain, then a node id must be named.
struct NodeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    counters: Arc<HandshakeCounters>,
}

impl fmt::Debug for NodeClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeClientVerifier")
    }
}

impl ClientCertVerifier for NodeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|e| count_untrusted(e, &self.counters, "client"))?;
        checked_id(end_entity, &self.counters)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// rustls server config (mandatory client certificates from the cluster CA).
pub fn server_tls(
    identity: &Identity,
    counters: Arc<HandshakeCounters>,
) -> Result<rustls::ServerConfig, TlsError> {
    let inner =
        WebPkiClientVerifier::builder_with_provider(roots(identity)?, provider()).build()?;
    let verifier = Arc::new(NodeClientVerifier { inner, counters });
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// rustls client config (presents our certificate, verifies the server's).
pub fn client_tls(
    identity: &Identity,
    counters: Arc<HandshakeCounters>,
) -> Result<rustls::ClientConfig, TlsError> {
    let inner =
        WebPkiServerVerifier::builder_with_provider(roots(identity)?, provider()).build()?;
    let verifier = Arc::new(NodeServerVerifier { inner, counters });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.cert.clone()], identity.key.clone_key())?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// quinn server config built from [`server_tls`].
pub fn quic_server_config(
    identity: &Identity,
    counters: Arc<HandshakeCounters>,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ServerConfig, TlsError> {
    let tls = server_tls(identity, counters)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(transport);
    Ok(cfg)
}

/// quinn client config built from [`client_tls`]. Public so tests (and
/// tools) can open raw connections with a node identity.
pub fn quic_client_config(
    identity: &Identity,
    counters: Arc<HandshakeCounters>,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, TlsError> {
    let tls = client_tls(identity, counters)?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport);
    Ok(cfg)
}

/// The node id of an established connection's peer, read from the
/// certificate the handshake verified.
pub fn peer_node_id(conn: &quinn::Connection) -> Option<NodeId> {
    let any = conn.peer_identity()?;
    let certs = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    node_id_of(certs.first()?).ok()
}

/// Stateless-reset key derived from the node's private key, so a node that
/// restarted (even after `kill -9`) on the same address answers packets of
/// its previous incarnation's connections with a reset its peers recognise:
/// they drop the dead connection at once and redial, instead of writing into
/// it until the idle timeout. One-way derivation (blake3 `derive_key`).
pub(crate) struct ResetKey(blake3::Hasher);

impl ResetKey {
    pub(crate) fn from_identity(identity: &Identity) -> Self {
        let key = blake3::derive_key(
            "hub transport 2024 QUIC stateless reset key",
            identity.key.secret_der(),
        );
        ResetKey(blake3::Hasher::new_keyed(&key))
    }

    fn mac(&self, data: &[u8]) -> blake3::Hash {
        let mut h = self.0.clone();
        h.update(data);
        h.finalize()
    }
}

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], out: &mut [u8]) {
        let mac = self.mac(data);
        let n = out.len().min(32);
        out[..n].copy_from_slice(&mac.as_bytes()[..n]);
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        let sig: [u8; 32] = signature
            .try_into()
            .map_err(|_| quinn::crypto::CryptoError)?;
        // `blake3::Hash` equality is constant-time.
        if self.mac(data) == blake3::Hash::from(sig) {
            Ok(())
        } else {
            Err(quinn::crypto::CryptoError)
        }
    }
}

/// Connection ids: 8 random bytes, never "validated" by the endpoint.
///
/// quinn's default generator embeds a check keyed randomly per process, so
/// a restarted node would silently drop its old connections' packets instead
/// of answering them with the stateless reset that [`ResetKey`] makes
/// recognisable. Cost: a garbage short-header datagram may draw a reset
/// (always smaller than the datagram, rate-limited by quinn to one per 20 ms).
pub(crate) struct CidGenerator;

impl quinn::ConnectionIdGenerator for CidGenerator {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        let bytes: [u8; 8] = rand::random();
        quinn::ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}
