//! Simulated sensors: the eight kinds of the earlier Python sensor hub.
//!
//! [`kinds`] holds the generators as pure functions of (parameters, rng,
//! time), so they are testable with a seeded rng; [`runner`] is the thin
//! tokio shell that ticks them and writes each reading through the
//! committer, as key `sensors/<node_id>/<name>`.

pub mod kinds;
pub mod runner;

pub use kinds::{generate, Reading, SensorKind, SensorSpec};

/// Key prefix of all sensor readings.
pub const PREFIX: &str = "sensors/";

/// The key a sensor's latest reading lives under.
pub fn key(origin: &str, sensor: &str) -> String {
    format!("{PREFIX}{origin}/{sensor}")
}

/// Splits `sensors/<origin>/<name>` into (origin, name).
pub fn parse_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(PREFIX)?;
    let (origin, name) = rest.split_once('/')?;
    (!origin.is_empty() && !name.is_empty()).then_some((origin, name))
}
