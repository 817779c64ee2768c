//! The flags every command that talks to a running node shares:
//! `--token` (or `HUB_TOKEN`) and `--cacert` (or `HUB_CACERT`).

use std::path::PathBuf;

use clap::Args;

use hub::client::{BaseUrl, Client, ClientOptions};

#[derive(Args, Debug, Clone, Default)]
pub struct RemoteArgs {
    /// API key for a node running with auth (sent as a bearer token).
    #[arg(long, global = true, env = "HUB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) an HTTPS node's certificate must chain to: the
    /// cluster's certs/ca.pem.
    #[arg(long, global = true, env = "HUB_CACERT")]
    pub cacert: Option<PathBuf>,
}

impl RemoteArgs {
    /// A client for `url`, checked up front (scheme, CA for https).
    pub fn connect(&self, url: &str) -> anyhow::Result<(BaseUrl, Client)> {
        let base = BaseUrl::parse(url)?;
        if base.is_https() && self.cacert.is_none() {
            anyhow::bail!(hub::client::ClientError::NeedCaCert {
                url: base.to_string()
            });
        }
        Ok((base, self.client()?))
    }

    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(&ClientOptions {
            token: self.token.clone(),
            cacert: self.cacert.clone(),
            timeout: None,
        })?)
    }
}
