//! The one HTTP(S) client of hub's command line, benchmarks and tests.
//!
//! hyper-util's pooled client with hyper-rustls (ring, like the node):
//! `http://` and `https://` URLs, the cluster CA from `--cacert` as the only
//! trust root, an optional bearer token on every request, a deadline per
//! request, and JSON helpers that turn the API's error shape into a readable
//! error. Connections are kept alive and reused, so one [`Client`] per task
//! is one keep-alive connection per task.
//!
//! The token never appears in an error or a log line.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{HeaderMap, Method, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url:?} has no scheme: write http://{url} or https://{url}")]
    NoScheme { url: String },
    #[error("bad node URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error(
        "{url} is HTTPS: give the cluster's CA with --cacert FILE (the ca.pem of `hub certs`)"
    )]
    NeedCaCert { url: String },
    #[error("cannot use CA certificate {path}: {reason}")]
    CaCert { path: String, reason: String },
    #[error("the token contains characters that cannot go in an HTTP header")]
    BadToken,
    #[error("cannot reach {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("{url} did not answer within {secs} s")]
    Timeout { url: String, secs: u64 },
    #[error("{url}: {status}: {message}")]
    Status {
        url: String,
        status: StatusCode,
        message: String,
    },
    #[error("{url}: cannot store the answer: {reason}")]
    Sink { url: String, reason: String },
    #[error("{url} did not answer JSON (status {status})")]
    NotJson { url: String, status: StatusCode },
}

/// How to reach a node.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// Sent as `Authorization: Bearer TOKEN`.
    pub token: Option<String>,
    /// PEM file with the CA(s) an HTTPS node's certificate must chain to.
    pub cacert: Option<PathBuf>,
    /// Per request, including the body; default 10 s.
    pub timeout: Option<Duration>,
}

/// A node's base URL: `http(s)://host:port`, no trailing slash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseUrl(String);

impl BaseUrl {
    pub fn parse(url: &str) -> Result<BaseUrl, ClientError> {
        let url = url.trim().trim_end_matches('/');
        if !url.contains("://") {
            return Err(ClientError::NoScheme {
                url: url.to_string(),
            });
        }
        let uri: hyper::Uri =
            url.parse()
                .map_err(|e: hyper::http::uri::InvalidUri| ClientError::BadUrl {
                    url: url.to_string(),
                    reason: e.to_string(),
                })?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            other => {
                return Err(ClientError::BadUrl {
                    url: url.to_string(),
                    reason: format!("scheme {:?} is neither http nor https", other.unwrap_or("")),
                })
            }
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(ClientError::BadUrl {
                url: url.to_string(),
                reason: "no host".into(),
            });
        }
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(ClientError::BadUrl {
                url: url.to_string(),
                reason: "give the node's address only, without a path".into(),
            });
        }
        Ok(BaseUrl(url.to_string()))
    }

    pub fn is_https(&self) -> bool {
        self.0.starts_with("https://")
    }

    /// `path` (starting with `/`) on this node.
    pub fn join(&self, path: &str) -> String {
        format!("{}{path}", self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A response, read to the end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

type Inner = hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

#[derive(Clone)]
pub struct Client {
    inner: Inner,
    auth: Option<HeaderValue>,
    has_ca: bool,
    timeout: Duration,
}

impl Client {
    pub fn new(opts: &ClientOptions) -> Result<Client, ClientError> {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(path) = &opts.cacert {
            for cert in read_certs(path)? {
                roots.add(cert).map_err(|e| ClientError::CaCert {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::CaCert {
                path: "(TLS setup)".into(),
                reason: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let auth = match &opts.token {
            Some(t) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {}", t.trim()))
                    .map_err(|_| ClientError::BadToken)?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok(Client {
            inner: hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                .build(connector),
            auth,
            has_ca: opts.cacert.is_some(),
            timeout: opts.timeout.unwrap_or(Duration::from_secs(10)),
        })
    }

    /// Sends one request to a full URL and reads the whole answer.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        body: impl Into<Bytes>,
        content_type: Option<&str>,
    ) -> Result<Reply, ClientError> {
        let req = self.build(method, url, body.into(), content_type)?;
        self.forward(req, url).await
    }

    /// Sends a request built by the caller (its headers as they are: no
    /// token added; a node forwarding a client's request to an owner) to
    /// `url` and reads the whole answer.
    pub async fn forward(
        &self,
        req: hyper::Request<Full<Bytes>>,
        url: &str,
    ) -> Result<Reply, ClientError> {
        if url.starts_with("https://") && !self.has_ca {
            return Err(ClientError::NeedCaCert {
                url: url.to_string(),
            });
        }
        let exchange = async {
            let resp = self.send(url, req).await?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError::Connect {
                    url: url.to_string(),
                    reason: format!("reading the answer: {e}"),
                })?
                .to_bytes();
            Ok(Reply {
                status,
                headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| self.timed_out(url))?
    }

    /// GETs `url` and hands its body to `sink` chunk by chunk as it
    /// arrives (a large download never sits in memory). The deadline is per
    /// step: the answer's head, then each chunk. An error status becomes an
    /// error with the API's message.
    pub async fn download(
        &self,
        url: &str,
        mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<u64, ClientError> {
        let req = self.build(Method::GET, url, Bytes::new(), None)?;
        let resp = tokio::time::timeout(self.timeout, self.send(url, req))
            .await
            .map_err(|_| self.timed_out(url))??;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = tokio::time::timeout(self.timeout, body.collect())
                .await
                .map_err(|_| self.timed_out(url))?
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            return json_of(
                url,
                Reply {
                    status,
                    headers: HeaderMap::new(),
                    body: bytes,
                },
            )
            .map(|_| 0);
        }
        let mut total = 0u64;
        loop {
            let frame = tokio::time::timeout(self.timeout, body.frame())
                .await
                .map_err(|_| self.timed_out(url))?;
            let Some(frame) = frame else {
                return Ok(total);
            };
            let frame = frame.map_err(|e| ClientError::Connect {
                url: url.to_string(),
                reason: format!("reading the answer: {}", error_chain(&e)),
            })?;
            if let Ok(data) = frame.into_data() {
                total += data.len() as u64;
                sink(&data).map_err(|e| ClientError::Sink {
                    url: url.to_string(),
                    reason: e.to_string(),
                })?;
            }
        }
    }

    fn timed_out(&self, url: &str) -> ClientError {
        ClientError::Timeout {
            url: url.to_string(),
            secs: self.timeout.as_secs(),
        }
    }

    async fn send(
        &self,
        url: &str,
        req: hyper::Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        self.inner
            .request(req)
            .await
            .map_err(|e| ClientError::Connect {
                url: url.to_string(),
                reason: error_chain(&e),
            })
    }

    fn build(
        &self,
        method: Method,
        url: &str,
        body: Bytes,
        content_type: Option<&str>,
    ) -> Result<hyper::Request<Full<Bytes>>, ClientError> {
        if url.starts_with("https://") && !self.has_ca {
            return Err(ClientError::NeedCaCert {
                url: url.to_string(),
            });
        }
        let mut req = hyper::Request::builder().method(method).uri(url);
        if let Some(ct) = content_type {
            req = req.header(CONTENT_TYPE, ct);
        }
        if let Some(auth) = &self.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        req.body(Full::new(body)).map_err(|e| ClientError::BadUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })
    }

    /// GET `url` and parse its JSON; an error status becomes an error with
    /// the API's message.
    pub async fn get_json(&self, url: &str) -> Result<Value, ClientError> {
        let reply = self.request(Method::GET, url, Bytes::new(), None).await?;
        json_of(url, reply)
    }

    /// Sends a JSON body and parses the JSON answer (an empty 204 is `null`).
    pub async fn send_json(
        &self,
        method: Method,
        url: &str,
        body: &Value,
    ) -> Result<Value, ClientError> {
        let reply = self
            .request(method, url, body.to_string(), Some("application/json"))
            .await?;
        json_of(url, reply)
    }
}

fn json_of(url: &str, reply: Reply) -> Result<Value, ClientError> {
    let parsed = if reply.body.is_empty() {
        Some(Value::Null)
    } else {
        reply.json()
    };
    if !reply.status.is_success() {
        let message = parsed
            .as_ref()
            .and_then(|v| v.pointer("/error/message"))
            .and_then(Value::as_str)
            .unwrap_or("error")
            .to_string();
        return Err(ClientError::Status {
            url: url.to_string(),
            status: reply.status,
            message,
        });
    }
    parsed.ok_or(ClientError::NotJson {
        url: url.to_string(),
        status: reply.status,
    })
}

/// The error and its causes, since hyper's top-level message alone ("client
/// error (Connect)") does not say what went wrong.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let err = |reason: String| ClientError::CaCert {
        path: path.display().to_string(),
        reason,
    };
    let data = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    Ok(certs)
}

/// Percent-encodes everything but unreserved characters and `/`, for keys
/// in paths and query strings.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_without_scheme_says_which_to_add() {
        let e = BaseUrl::parse("127.0.0.1:8080").unwrap_err().to_string();
        assert!(
            e.contains("http://127.0.0.1:8080") && e.contains("https://"),
            "{e}"
        );
        assert!(BaseUrl::parse("ftp://x:1").is_err());
        assert!(BaseUrl::parse("http://x:1/kv").is_err());
        let b = BaseUrl::parse("https://127.0.0.1:8080/").unwrap();
        assert!(b.is_https());
        assert_eq!(b.join("/health"), "https://127.0.0.1:8080/health");
    }

    #[test]
    fn a_bad_token_is_refused_without_echoing_it() {
        let e = Client::new(&ClientOptions {
            token: Some("secret\nvalue".into()),
            ..Default::default()
        })
        .err()
        .unwrap()
        .to_string();
        assert!(!e.contains("secret"), "{e}");
    }
}
