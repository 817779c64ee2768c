//! `GET /ready`: whether this node should be sent traffic now.
//!
//! `/health` only says the process answers; `/ready` is 200 only when every
//! check in [`CHECKS`] passes, else 503 with each failing check's reason.
//! A check is a named function of the handler state, so a mechanism that
//! can make a node unfit (clock skew, a recovering origin) adds one line to
//! the list. Checks read in-memory state only (no disk, no network), so a
//! probe every second costs microseconds.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::json;

use super::{AppState, Shared};

/// `Ok` when the node is fit for traffic in this respect, else the reason.
pub type Check = fn(&Shared) -> Result<(), String>;

/// Every readiness check, by name. Order is the order of the answer.
pub const CHECKS: &[(&str, Check)] = &[
    ("store", store_writable),
    ("own_origin", own_origin_not_fenced),
    ("joined", joined_if_asked),
    ("clock", clock_within_bounds),
];

/// The store is open and its last write did not fail (not poisoned, not
/// closed after an engine error).
fn store_writable(s: &Shared) -> Result<(), String> {
    s.store.health()
}

/// Local writes are not fenced while the node recovers its own origin's
/// stream from peers after a restart.
fn own_origin_not_fenced(s: &Shared) -> Result<(), String> {
    match s
        .cluster
        .as_ref()
        .map(|w| w.borrow().me.writes_fenced.clone())
    {
        Some(Some(why)) => Err(format!("local writes are fenced: {why}")),
        _ => Ok(()),
    }
}

/// A node asked to join (or to rejoin remembered peers) has heard back
/// from one of them. A single node, or a first node, is always joined.
fn joined_if_asked(s: &Shared) -> Result<(), String> {
    match &s.cluster {
        Some(w) if !w.borrow().me.joined => Err(
            "asked to join a cluster but no member has answered yet; check --join addresses, certificates and the network"
                .into(),
        ),
        _ => Ok(()),
    }
}

/// This node's clock may stamp writes (see `crate::clock`): not skewed
/// from the cluster median, no persisted high-water mark ahead at start,
/// not waiting for its first measurement. The reason starts with the code
/// writes are refused with (`clock_skew`, `clock_ahead_at_start`,
/// `clock_unverified`).
fn clock_within_bounds(s: &Shared) -> Result<(), String> {
    s.committer
        .clock_gate()
        .check()
        .map_err(|r| format!("{}: {}", r.code, r.message))
}

/// One check's outcome in the answer.
#[derive(Debug, Serialize)]
pub struct CheckResult {
    pub name: &'static str,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Runs every check.
pub fn evaluate(s: &Shared) -> Vec<CheckResult> {
    CHECKS
        .iter()
        .map(|(name, check)| match check(s) {
            Ok(()) => CheckResult {
                name,
                ok: true,
                reason: None,
            },
            Err(reason) => CheckResult {
                name,
                ok: false,
                reason: Some(reason),
            },
        })
        .collect()
}

pub async fn ready(State(state): State<AppState>) -> Response {
    let checks = evaluate(&state);
    let ready = checks.iter().all(|c| c.ok);
    let reasons: Vec<String> = checks
        .iter()
        .filter_map(|c| c.reason.as_ref().map(|r| format!("{}: {r}", c.name)))
        .collect();
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "node_id": state.node_id.as_str(),
        "reasons": reasons,
        "checks": checks,
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}
