//! Cluster certificates (`hub certs`): one cluster CA, one certificate per node.
//!
//! Guarantees: every node certificate is signed by the cluster CA, is usable
//! as TLS server *and* client (EKU serverAuth + clientAuth), and names its
//! node id twice — as the subject common name and as a DNS subject
//! alternative name (a [`NodeId`] is a valid DNS label). The transport reads
//! the id back with [`node_id_of`] and checks the chain with webpki, so a
//! peer's identity is always the one its CA-signed certificate states.
//!
//! Extra `--ip`/`--dns` names are only for other TLS clients (e.g. HTTPS);
//! the QUIC transport authenticates node ids, never addresses, so no
//! `localhost`/`127.0.0.1` is added implicitly.
//!
//! Files are never overwritten; private keys are written with mode 0600.
//! Keys are ECDSA P-256 (rcgen's default, supported by rustls/ring).
//!
//! rcgen 0.13 (without its `x509-parser` feature) cannot load an existing CA
//! certificate, so `issue` rebuilds the CA's parameters (fixed subject) and
//! re-signs them with `ca.key`; the issued certificate's issuer name and key
//! then match `ca.pem`, which is checked byte for byte before issuing.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::model::{NodeId, NodeIdError};

/// Subject common name of every hub cluster CA.
const CA_COMMON_NAME: &str = "hub cluster CA";
const CA_ORG: &str = "hub";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("no cluster CA in {dir}: run `hub certs init --dir {dir}` first ({path} missing)")]
    MissingCa { dir: String, path: String },
    #[error("no certificate for node {node} in {dir}: run `hub certs issue --dir {dir} --node-id {node}` ({path} missing)")]
    MissingNodeCert {
        dir: String,
        node: String,
        path: String,
    },
    #[error("{path} already exists; refusing to overwrite it (move it away first)")]
    Exists { path: String },
    #[error(transparent)]
    BadNodeId(#[from] NodeIdError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid PEM: {detail}")]
    Pem { path: String, detail: String },
    #[error("{path}: {detail}")]
    Invalid { path: String, detail: String },
    #[error("invalid DNS name {0:?}")]
    BadDnsName(String),
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Paths of the cluster CA files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Paths of one node's certificate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn ca_paths(dir: &Path) -> CaPaths {
    CaPaths {
        cert: dir.join("ca.pem"),
        key: dir.join("ca.key"),
    }
}

pub fn node_paths(dir: &Path, node_id: &NodeId) -> NodeCertPaths {
    NodeCertPaths {
        cert: dir.join(format!("{node_id}.pem")),
        key: dir.join(format!("{node_id}.key")),
    }
}

/// `hub certs` subcommands (the binary wires this into its CLI).
#[derive(Debug, clap::Subcommand)]
pub enum CertsCmd {
    /// Create the cluster CA: DIR/ca.pem and DIR/ca.key (mode 0600).
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue DIR/ID.pem and DIR/ID.key for node ID, signed by the cluster CA.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        node_id: String,
        /// Extra IP subject alternative name (repeatable; for non-hub TLS clients).
        #[arg(long)]
        ip: Vec<IpAddr>,
        /// Extra DNS subject alternative name (repeatable; for non-hub TLS clients).
        #[arg(long)]
        dns: Vec<String>,
    },
}

/// Runs a `hub certs` subcommand, printing the files written.
pub fn run(cmd: CertsCmd) -> anyhow::Result<()> {
    match cmd {
        CertsCmd::Init { dir } => {
            let p = init_ca(&dir)?;
            println!("wrote {} and {}", p.cert.display(), p.key.display());
        }
        CertsCmd::Issue {
            dir,
            node_id,
            ip,
            dns,
        } => {
            let id = NodeId::new(node_id)?;
            let p = issue(&dir, &id, &ip, &dns)?;
            println!("wrote {} and {}", p.cert.display(), p.key.display());
        }
    }
    Ok(())
}

fn current_year() -> i32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    1970 + (secs / 31_556_952) as i32
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, CA_ORG);
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // Fixed validity so that re-signing the CA (see module doc) is stable.
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    p
}

/// Creates the cluster CA in `dir` (created if missing). Refuses to
/// overwrite an existing `ca.pem` or `ca.key`.
pub fn init_ca(dir: &Path) -> Result<CaPaths, CertError> {
    let paths = ca_paths(dir);
    refuse_existing(&paths.cert)?;
    refuse_existing(&paths.key)?;
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let key = KeyPair::generate()?;
    let cert = ca_params().self_signed(&key)?;
    write_new(&paths.key, key.serialize_pem().as_bytes(), true)?;
    write_new(&paths.cert, cert.pem().as_bytes(), false)?;
    Ok(paths)
}

/// Issues `ID.pem`/`ID.key` in `dir`, signed by the CA found there.
pub fn issue(
    dir: &Path,
    node_id: &NodeId,
    ips: &[IpAddr],
    dns: &[String],
) -> Result<NodeCertPaths, CertError> {
    let ca = ca_paths(dir);
    for p in [&ca.cert, &ca.key] {
        if !p.exists() {
            return Err(CertError::MissingCa {
                dir: dir.display().to_string(),
                path: p.display().to_string(),
            });
        }
    }
    let out = node_paths(dir, node_id);
    refuse_existing(&out.cert)?;
    refuse_existing(&out.key)?;

    let (ca_cert, ca_key) = load_ca_signer(&ca)?;

    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, CA_ORG);
    dn.push(DnType::CommonName, node_id.as_str());
    p.distinguished_name = dn;
    let mut sans = vec![SanType::DnsName(
        node_id
            .as_str()
            .to_string()
            .try_into()
            .map_err(|_| CertError::BadDnsName(node_id.to_string()))?,
    )];
    for name in dns {
        if name == node_id.as_str() {
            continue;
        }
        let n = name
            .clone()
            .try_into()
            .map_err(|_| CertError::BadDnsName(name.clone()))?;
        sans.push(SanType::DnsName(n));
    }
    sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    p.subject_alt_names = sans;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.use_authority_key_identifier_extension = true;
    let year = current_year();
    p.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    p.not_after = rcgen::date_time_ymd(year + 10, 1, 1);

    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &ca_cert, &ca_key)?;
    write_new(&out.key, key.serialize_pem().as_bytes(), true)?;
    write_new(&out.cert, cert.pem().as_bytes(), false)?;
    Ok(out)
}

/// Loads `ca.key` and rebuilds the CA certificate object rcgen needs to sign,
/// checking that it matches `ca.pem` (same subject and public key).
fn load_ca_signer(ca: &CaPaths) -> Result<(Certificate, KeyPair), CertError> {
    let key_pem = fs::read_to_string(&ca.key).map_err(io_err(&ca.key))?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| CertError::Pem {
        path: ca.key.display().to_string(),
        detail: e.to_string(),
    })?;
    let on_disk = read_cert(&ca.cert)?;
    let rebuilt = ca_params().self_signed(&key)?;
    let invalid = |detail: &str| CertError::Invalid {
        path: ca.cert.display().to_string(),
        detail: detail.to_string(),
    };
    let (_, disk) = x509_parser::parse_x509_certificate(on_disk.as_ref())
        .map_err(|e| invalid(&format!("not a valid X.509 certificate: {e}")))?;
    let (_, new) = x509_parser::parse_x509_certificate(rebuilt.der().as_ref())
        .map_err(|e| invalid(&format!("rebuilt CA does not parse: {e}")))?;
    if disk.subject().as_raw() != new.subject().as_raw() {
        return Err(invalid("not a hub cluster CA (unexpected subject)"));
    }
    if disk.public_key().raw != new.public_key().raw {
        return Err(invalid("ca.key does not belong to this CA certificate"));
    }
    Ok((rebuilt, key))
}

fn refuse_existing(path: &Path) -> Result<(), CertError> {
    if path.exists() {
        return Err(CertError::Exists {
            path: path.display().to_string(),
        });
    }
    Ok(())
}

/// Writes a new file (`create_new`: an existing file is never replaced),
/// mode 0600 for secrets.
fn write_new(path: &Path, data: &[u8], secret: bool) -> Result<(), CertError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            CertError::Exists {
                path: path.display().to_string(),
            }
        } else {
            io_err(path)(e)
        }
    })?;
    f.write_all(data).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))?;
    Ok(())
}

fn read_cert(path: &Path) -> Result<CertificateDer<'static>, CertError> {
    let data = fs::read(path).map_err(io_err(path))?;
    CertificateDer::from_pem_slice(&data).map_err(|e| CertError::Pem {
        path: path.display().to_string(),
        detail: e.to_string(),
    })
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    let data = fs::read(path).map_err(io_err(path))?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| CertError::Pem {
        path: path.display().to_string(),
        detail: e.to_string(),
    })
}

/// A node's TLS identity: the cluster CA plus its own certificate and key.
#[derive(Debug)]
pub struct Identity {
    /// The node id named by `cert` (read from the certificate itself).
    pub node_id: NodeId,
    pub ca: CertificateDer<'static>,
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            node_id: self.node_id.clone(),
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// Loads `DIR/ca.pem`, `DIR/ID.pem`, `DIR/ID.key` (the `--certs DIR` layout).
    pub fn load(dir: &Path, node_id: &NodeId) -> Result<Identity, CertError> {
        let ca = ca_paths(dir);
        if !ca.cert.exists() {
            return Err(CertError::MissingCa {
                dir: dir.display().to_string(),
                path: ca.cert.display().to_string(),
            });
        }
        let n = node_paths(dir, node_id);
        if !n.cert.exists() {
            return Err(CertError::MissingNodeCert {
                dir: dir.display().to_string(),
                node: node_id.to_string(),
                path: n.cert.display().to_string(),
            });
        }
        let id = Identity::from_paths(&ca.cert, &n.cert, &n.key)?;
        if &id.node_id != node_id {
            return Err(CertError::Invalid {
                path: n.cert.display().to_string(),
                detail: format!("certificate names node {:?}, not {node_id:?}", id.node_id),
            });
        }
        Ok(id)
    }

    /// Loads an identity from explicit PEM file paths.
    pub fn from_paths(ca: &Path, cert: &Path, key: &Path) -> Result<Identity, CertError> {
        let ca_der = read_cert(ca)?;
        let cert_der = read_cert(cert)?;
        let key_der = read_key(key)?;
        let node_id = node_id_of(&cert_der).map_err(|detail| CertError::Invalid {
            path: cert.display().to_string(),
            detail,
        })?;
        Ok(Identity {
            node_id,
            ca: ca_der,
            cert: cert_der,
            key: key_der,
        })
    }
}

/// The node id a certificate names: its subject CN, which must be a valid
/// [`NodeId`] and also appear as a DNS subject alternative name.
///
/// Does not verify the chain; call only on certificates already verified
/// against the cluster CA (the transport's verifiers do both).
pub fn node_id_of(cert: &CertificateDer<'_>) -> Result<NodeId, String> {
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("certificate does not parse: {e}"))?;
    let mut cns = x.subject().iter_common_name();
    let cn = cns
        .next()
        .ok_or("certificate has no common name (node id)")?
        .as_str()
        .map_err(|e| format!("certificate common name is not a string: {e}"))?;
    if cns.next().is_some() {
        return Err("certificate has several common names".into());
    }
    let id = NodeId::new(cn).map_err(|e| e.to_string())?;
    let san = x
        .subject_alternative_name()
        .map_err(|e| format!("bad subject alternative names: {e}"))?
        .ok_or("certificate has no subject alternative names")?;
    let named = san.value.general_names.iter().any(
        |g| matches!(g, x509_parser::extensions::GeneralName::DNSName(d) if *d == id.as_str()),
    );
    if !named {
        return Err(format!(
            "certificate common name {cn:?} is not among its DNS names"
        ));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn init_writes_ca_with_private_key_mode_0600() {
        let d = tempfile::tempdir().unwrap();
        let p = init_ca(d.path()).unwrap();
        assert!(p.cert.exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&p.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let der = read_cert(&p.cert).unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        assert!(x.is_ca());
    }

    #[test]
    fn init_refuses_to_overwrite_an_existing_ca() {
        let d = tempfile::tempdir().unwrap();
        init_ca(d.path()).unwrap();
        let before = fs::read(d.path().join("ca.pem")).unwrap();
        assert!(matches!(init_ca(d.path()), Err(CertError::Exists { .. })));
        assert_eq!(fs::read(d.path().join("ca.pem")).unwrap(), before);
    }

    #[test]
    fn issued_certificate_names_the_node_and_is_signed_by_the_ca() {
        let d = tempfile::tempdir().unwrap();
        init_ca(d.path()).unwrap();
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let p = issue(d.path(), &id("n1"), &[ip], &["n1.example".into()]).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&p.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let ident = Identity::load(d.path(), &id("n1")).unwrap();
        assert_eq!(ident.node_id, id("n1"));
        let (_, x) = x509_parser::parse_x509_certificate(ident.cert.as_ref()).unwrap();
        let (_, ca) = x509_parser::parse_x509_certificate(ident.ca.as_ref()).unwrap();
        assert_eq!(x.issuer().as_raw(), ca.subject().as_raw());
        // webpki accepts it as a server certificate for its node id.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ident.ca.clone()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let v = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
            .build()
            .unwrap();
        let name = rustls_pki_types::ServerName::try_from("n1").unwrap();
        let now = rustls_pki_types::UnixTime::now();
        v.verify_server_cert(&ident.cert, &[], &name, &[], now)
            .unwrap();
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
    }

    #[test]
    fn issue_refuses_missing_ca_existing_files_and_bad_ids() {
        let d = tempfile::tempdir().unwrap();
        let e = issue(d.path(), &id("n1"), &[], &[]).unwrap_err();
        assert!(matches!(e, CertError::MissingCa { .. }), "{e}");
        assert!(e.to_string().contains("hub certs init"));
        init_ca(d.path()).unwrap();
        issue(d.path(), &id("n1"), &[], &[]).unwrap();
        let before = fs::read(d.path().join("n1.pem")).unwrap();
        let e = issue(d.path(), &id("n1"), &[], &[]).unwrap_err();
        assert!(matches!(e, CertError::Exists { .. }), "{e}");
        assert_eq!(fs::read(d.path().join("n1.pem")).unwrap(), before);
        let e = run(CertsCmd::Issue {
            dir: d.path().into(),
            node_id: "Bad_Id".into(),
            ip: vec![],
            dns: vec![],
        })
        .unwrap_err();
        assert!(e.to_string().contains("invalid node id"), "{e}");
        assert!(!d.path().join("Bad_Id.pem").exists());
    }

    #[test]
    fn issue_refuses_a_ca_key_that_does_not_match_the_ca_certificate() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        init_ca(a.path()).unwrap();
        init_ca(b.path()).unwrap();
        fs::remove_file(a.path().join("ca.key")).unwrap();
        fs::copy(b.path().join("ca.key"), a.path().join("ca.key")).unwrap();
        let e = issue(a.path(), &id("n1"), &[], &[]).unwrap_err();
        assert!(e.to_string().contains("does not belong"), "{e}");
    }
}
