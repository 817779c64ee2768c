//! The in-memory key table every request is checked against.
//!
//! Decoded once from the internal keyspace and reloaded only when the
//! store's internal generation moves (a key was created or revoked here, or
//! such a change arrived from a peer), so a check is a generation load, a
//! hash map lookup, one BLAKE3 of 64 bytes and a constant-time compare
//! (well under the 2 µs budget; see `benches/auth.rs`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::keys::{self, Role};
use super::token::{self, KeyId};
use crate::store::Store;

/// Who a valid token belongs to and what it may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// Only keys under this prefix, when set.
    pub prefix: Option<String>,
}

/// Why a token was not accepted (all answered 401).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    Missing,
    Malformed,
    Unknown,
    Revoked,
    /// The key table could not be read; nothing is accepted meanwhile.
    Unavailable,
}

impl Failure {
    /// Label for metrics and logs.
    pub fn reason(self) -> &'static str {
        match self {
            Failure::Missing => "missing",
            Failure::Malformed => "malformed",
            Failure::Unknown => "unknown",
            Failure::Revoked => "revoked",
            Failure::Unavailable => "unavailable",
        }
    }
}

enum Slot {
    Active {
        hash: blake3::Hash,
        principal: Arc<Principal>,
    },
    Revoked,
}

struct Snapshot {
    generation: u64,
    keys: HashMap<KeyId, Slot>,
}

pub struct KeyTable {
    store: Arc<Store>,
    cache: RwLock<Arc<Snapshot>>,
}

impl KeyTable {
    pub fn new(store: Arc<Store>) -> KeyTable {
        KeyTable {
            store,
            cache: RwLock::new(Arc::new(Snapshot {
                // Never a real generation, so the first check loads.
                generation: u64::MAX,
                keys: HashMap::new(),
            })),
        }
    }

    /// Checks a bearer token; never logs or returns it.
    pub fn check(&self, token: &str) -> Result<Arc<Principal>, Failure> {
        let presented = token::parse(token).ok_or(Failure::Malformed)?;
        let snap = self.snapshot()?;
        match snap.keys.get(&presented.id) {
            // blake3::Hash compares in constant time.
            Some(Slot::Active { hash, principal }) if *hash == presented.hash => {
                Ok(principal.clone())
            }
            Some(Slot::Active { .. }) | None => Err(Failure::Unknown),
            Some(Slot::Revoked) => Err(Failure::Revoked),
        }
    }

    /// Number of active keys (for logs at start).
    pub fn active(&self) -> Result<usize, Failure> {
        Ok(self
            .snapshot()?
            .keys
            .values()
            .filter(|s| matches!(s, Slot::Active { .. }))
            .count())
    }

    fn snapshot(&self) -> Result<Arc<Snapshot>, Failure> {
        // Read the generation before the keyspace: a change racing with the
        // reload bumps it again and the next check reloads once more.
        let generation = self.store.internal_generation();
        {
            let cur = self.cache.read().unwrap_or_else(|p| p.into_inner());
            if cur.generation == generation {
                return Ok(cur.clone());
            }
        }
        let records = keys::load(&self.store).map_err(|e| {
            tracing::error!(error = %e, "cannot load the API key table; refusing tokens");
            Failure::Unavailable
        })?;
        let mut map = HashMap::with_capacity(records.len());
        for (id, record) in records {
            let Some(key_id) = KeyId::parse(&id) else {
                tracing::warn!(id = %id, "ignoring an API key record with a malformed id");
                continue;
            };
            let slot = match record {
                None => Slot::Revoked,
                Some(r) => match blake3::Hash::from_hex(&r.hash) {
                    Ok(hash) => Slot::Active {
                        hash,
                        principal: Arc::new(Principal {
                            id: r.id,
                            name: r.name,
                            role: r.role,
                            prefix: r.prefix,
                        }),
                    },
                    Err(_) => {
                        tracing::warn!(id = %id, "ignoring an API key record without a valid hash");
                        continue;
                    }
                },
            };
            map.insert(key_id, slot);
        }
        tracing::debug!(keys = map.len(), generation, "API key table loaded");
        let snap = Arc::new(Snapshot {
            generation,
            keys: map,
        });
        *self.cache.write().unwrap_or_else(|p| p.into_inner()) = snap.clone();
        Ok(snap)
    }
}
