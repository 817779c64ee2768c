//! `hub probe`: is the node in this container (or on this host) answering?
//! The image's HEALTHCHECK. Exit 0 when `GET /health` answers 200.
//!
//! With no `--url` it reads the node's own settings from the environment,
//! as `hub serve` does: `HUB_HTTP` for the port, `HUB_HTTP_TLS` for the
//! scheme, and `HUB_CERTS/ca.pem` as the CA; it asks `localhost`, so an
//! HTTPS node's certificate needs `--dns localhost` (the compose files'
//! certificates have it).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use hyper::{Method, StatusCode};

use hub::client::{Client, ClientOptions};

#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// Health URL; default from HUB_HTTP / HUB_HTTP_TLS on localhost.
    #[arg(long)]
    pub url: Option<String>,
    /// CA for an HTTPS node; default HUB_CERTS/ca.pem.
    #[arg(long)]
    pub cacert: Option<PathBuf>,
}

pub async fn run(args: ProbeArgs) -> anyhow::Result<()> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let tls =
        env("HUB_HTTP_TLS").is_some_and(|v| matches!(v.as_str(), "true" | "1" | "yes" | "on"));
    let url = match args.url {
        Some(u) => u,
        None => {
            let http = env("HUB_HTTP").unwrap_or_else(|| hub::config::DEFAULT_HTTP.into());
            let port = http
                .rsplit(':')
                .next()
                .and_then(|p| p.parse::<u16>().ok())
                .with_context(|| format!("HUB_HTTP={http:?} has no port"))?;
            let scheme = if tls { "https" } else { "http" };
            format!("{scheme}://localhost:{port}/health")
        }
    };
    let cacert = args.cacert.or_else(|| {
        (url.starts_with("https://")).then(|| {
            PathBuf::from(env("HUB_CERTS").unwrap_or_else(|| "certs".into())).join("ca.pem")
        })
    });
    let client = Client::new(&ClientOptions {
        token: None,
        cacert,
        timeout: Some(Duration::from_secs(2)),
    })?;
    let resp = client
        .request(Method::GET, &url, bytes::Bytes::new(), None)
        .await?;
    if resp.status != StatusCode::OK {
        bail!("{url}: {}", resp.status);
    }
    Ok(())
}
