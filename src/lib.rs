//! hub: a leaderless, persistent replication engine.
//!
//! Layers, bottom up (each only calls the ones below it):
//! - [`model`]: ids, hybrid logical clock, versions, entries, deltas (pure);
//! - [`clock`]: clock offsets per peer and the clock fence (sans-IO) with
//!   its shared gate;
//! - [`merkle`]: the incremental Merkle tree used by anti-entropy (pure);
//! - [`store`]: the durable LWW map, delta log and change feed on sled;
//! - [`certs`]: cluster CA and node certificates (`hub certs`);
//! - [`transport`]: mutually authenticated QUIC between nodes, framed messages;
//! - [`membership`]: join, member table and phi-accrual failure detection (sans-IO);
//! - [`replication`]: push, version-vector pull and Merkle anti-entropy (sans-IO);
//! - [`cluster`]: the async shell that drives membership and replication;
//! - [`discovery`]: LAN beacons that find the cluster without a join list;
//! - [`sensors`]: simulated sensors writing through the committer;
//! - [`http`]: the HTTP(S) API; [`auth`]: API keys; [`metrics`]: per-node
//!   Prometheus registry; [`client`]: the one HTTP(S) client of the CLI,
//!   benchmarks and tests; [`files`]: private file modes;
//! - [`config`] and [`node`]: one node's settings and its running shell;
//! - [`workers`]: the status of every background mechanism, in one place;
//! - [`logfields`]: log field text (Display, lists) for operators;
//! - [`snapshot`]: the snapshot file: save a node, restore a data directory.

pub mod auth;
pub mod certs;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod discovery;
pub mod files;
pub mod http;
pub mod logfields;
pub mod membership;
pub mod merkle;
pub mod metrics;
pub mod model;
pub mod node;
pub mod placement;
pub mod replication;
pub mod sensors;
pub mod snapshot;
pub mod store;
pub mod transport;
pub mod workers;
