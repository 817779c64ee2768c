//! hub: a leaderless, persistent replication engine.
//!
//! Layers, bottom up (each only calls the ones below it):
//! - [`model`]: ids, hybrid logical clock, versions, entries, deltas (pure);
//! - [`merkle`]: the incremental Merkle tree used by anti-entropy (pure);
//! - [`store`]: the durable LWW map, delta log and change feed on sled;
//! - [`replication`]: push, pull and Merkle anti-entropy as a sans-IO state machine.

pub mod merkle;
pub mod model;
pub mod replication;
pub mod store;
