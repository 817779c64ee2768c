//! Client authentication: cluster-wide API keys with roles and prefixes.
//!
//! Guarantees: with `auth` on, every HTTP request except `GET /health`
//! carries `Authorization: Bearer TOKEN` of an active key whose role covers
//! the route ([`policy`]) and, for a prefix-limited key, whose prefix covers
//! every key the request reads or writes. Keys are records in hub's internal
//! keyspace ([`keys`]), so a key created or revoked on any node reaches every
//! node through ordinary replication (push within milliseconds, anti-entropy
//! as the backstop) and survives restarts. Nodes store only a hash of each
//! token's secret ([`token`]).
//!
//! Cost: one cached table lookup and one BLAKE3 of 64 bytes per request
//! ([`table`]); the table is rebuilt only when the internal keyspace changes.

pub mod keys;
pub mod policy;
pub mod table;
pub mod token;

pub use keys::{KeyRecord, NewKey, Role};
pub use policy::Access;
pub use table::{Failure, KeyTable, Principal};
