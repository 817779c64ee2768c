//! API key records and how they are stored: one entry per key under
//! `_hub/keys/<id>` in the internal keyspace, its value the JSON of a
//! [`KeyRecord`] (hash of the secret, never the token). Revoking writes a
//! tombstone, so revocation replicates and wins by LWW like any delete.
//!
//! The functions here build store [`Op`]s and read records back; the node
//! commits them through its committer (live) and `hub keys` applies them to
//! a stopped node's store (offline).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::token::{KeyId, Token};
use crate::model::{validate_user_key, Meta, INTERNAL_PREFIX};
use crate::store::{Condition, Op, Store, StoreError};

/// Where key records live, under the internal prefix.
pub fn keys_prefix() -> String {
    format!("{INTERNAL_PREFIX}keys/")
}

pub fn record_key(id: &KeyId) -> String {
    format!("{}{id}", keys_prefix())
}

/// What a key may do; each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every GET of data and node views.
    Read,
    /// Read, plus writes of keys and readings.
    Write,
    /// Everything, including key management and `/api/sync`.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?}; use read, write or admin")),
        }
    }
}

/// One API key as stored (and listed: the hash is skipped in listings).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub prefix: Option<String>,
    pub created_ms: u64,
    /// BLAKE3 of the token's secret, hex.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub hash: String,
}

impl KeyRecord {
    /// The record without its hash, for listings.
    pub fn public(&self) -> KeyRecord {
        KeyRecord {
            hash: String::new(),
            ..self.clone()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("name must be at most 64 printable characters")]
    BadName,
    #[error("prefix {prefix:?}: {reason}")]
    BadPrefix { prefix: String, reason: String },
    #[error("--prefix is for read and write keys; an admin key manages the whole node")]
    AdminWithPrefix,
    #[error("{0:?} is not a key id (16 hex digits, as `hub keys list` shows)")]
    BadId(String),
    #[error("no API key {0}")]
    NotFound(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("stored API key {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
}

/// What `hub keys create` and `POST /api/keys` ask for.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub role: Role,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

impl NewKey {
    /// Checks the request and mints a token and the op that stores its
    /// record; the token is shown once, by the caller.
    pub fn mint(&self, now_ms: u64) -> Result<(Token, KeyRecord, Op), KeyError> {
        let name = self.name.clone().unwrap_or_default();
        if name.len() > 64 || name.chars().any(char::is_control) {
            return Err(KeyError::BadName);
        }
        if let Some(p) = &self.prefix {
            if self.role == Role::Admin {
                return Err(KeyError::AdminWithPrefix);
            }
            validate_user_key(p).map_err(|e| KeyError::BadPrefix {
                prefix: p.clone(),
                reason: e.to_string(),
            })?;
        }
        let token = Token::generate();
        let record = KeyRecord {
            id: token.id().to_string(),
            name,
            role: self.role,
            prefix: self.prefix.clone(),
            created_ms: now_ms,
            hash: token.hash().to_hex().to_string(),
        };
        let value = serde_json::to_vec(&record).map_err(|e| KeyError::Corrupt {
            key: record.id.clone(),
            reason: e.to_string(),
        })?;
        let op = Op::Local {
            key: record_key(token.id()),
            value: Some(value),
            meta: Meta::new(),
            cond: Condition::IfAbsent,
        };
        Ok((token, record, op))
    }
}

/// The op that revokes key `id` (a delete; 404-like `NotFound` outcome when
/// it does not exist or is already revoked).
pub fn revoke_op(id: &str) -> Result<Op, KeyError> {
    let id = KeyId::parse(id).ok_or_else(|| KeyError::BadId(id.to_string()))?;
    Ok(Op::Local {
        key: record_key(&id),
        value: None,
        meta: Meta::new(),
        cond: Condition::IfPresent,
    })
}

/// Every key record in the store: active ones as `Some`, revoked ids as
/// `None`, in id order.
pub fn load(store: &Store) -> Result<Vec<(String, Option<KeyRecord>)>, KeyError> {
    let prefix = keys_prefix();
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.scan(&prefix, after.as_deref(), 1000)?;
        let done = page.len() < 1000;
        for (key, entry) in page {
            let id = key[prefix.len()..].to_string();
            let record =
                match &entry.value {
                    Some(v) => Some(serde_json::from_slice::<KeyRecord>(v).map_err(|e| {
                        KeyError::Corrupt {
                            key: key.clone(),
                            reason: e.to_string(),
                        }
                    })?),
                    None => None,
                };
            after = Some(key);
            out.push((id, record));
        }
        if done {
            return Ok(out);
        }
    }
}

/// Active keys without their hashes, for listings.
pub fn list(store: &Store) -> Result<Vec<KeyRecord>, KeyError> {
    Ok(load(store)?
        .into_iter()
        .filter_map(|(_, r)| r.map(|r| r.public()))
        .collect())
}
