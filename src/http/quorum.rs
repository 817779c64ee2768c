//! `?w=` on writes and `?r=` on `GET /kv/{key}`: the HTTP side of
//! per-request quorums (see `crate::cluster::quorum`).
//!
//! `w=1` / `r=1` (the default) is the local path, unchanged. Above 1, a
//! write answers 2xx only once that many replicas, this node included, hold
//! it durably, and a read answers the newest of that many replicas' entries;
//! both carry `x-hub-acks`. Not reached within `quorum_timeout`: 503
//! `quorum_unavailable`, saying how many answered of how many needed. Such
//! a write is not undone: it is durable here (and on every replica that
//! acknowledged) and still spreads. A node without a cluster is its own
//! single replica, so every level is met by its own durable write.

use std::time::Instant;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, ApiResult};
use super::{AppState, ACKS_HEADER};
use crate::cluster::quorum::{Level, QuorumError, WriteGuard};
use crate::metrics::{LevelLabel, QuorumLabel};
use crate::model::Entry;

/// The level named by query parameter `name` (`w` or `r`); absent is `1`.
pub fn level(name: &'static str, value: Option<&str>) -> ApiResult<Level> {
    match value {
        None => Ok(Level::One),
        Some(v) => Level::parse(v).ok_or_else(|| {
            ApiError::bad_request(
                "bad_query",
                format!("{name}={v:?}: must be 1, quorum or all"),
            )
        }),
    }
}

/// Adds `x-hub-acks: acks` to a response.
pub fn with_acks(mut resp: Response, acks: usize) -> Response {
    resp.headers_mut()
        .insert(ACKS_HEADER, HeaderValue::from(acks as u64));
    resp
}

/// A write that will wait for replicas: taken before its commit, so the
/// push of its deltas already asks for acks.
pub struct PendingWrite {
    level: Level,
    started: Instant,
    _guard: Option<WriteGuard>,
}

pub fn begin_write(state: &AppState, level: Level) -> PendingWrite {
    let guard = match (&state.quorum, level) {
        (Some(q), Level::Quorum | Level::All) => Some(q.write_guard()),
        _ => None,
    };
    PendingWrite {
        level,
        started: Instant::now(),
        _guard: guard,
    }
}

fn label(level: Level, reached: bool) -> QuorumLabel {
    QuorumLabel {
        level: level.as_str(),
        outcome: if reached { "reached" } else { "unavailable" },
    }
}

fn unavailable(what: String, acks: usize) -> Response {
    let err = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "quorum_unavailable", what);
    with_acks(err.into_response(), acks)
}

fn stopped(e: QuorumError) -> Response {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
        e.to_string(),
    )
    .into_response()
}

impl PendingWrite {
    /// Waits until the write (own `seq`, first key `key`) is durable on
    /// enough replicas: the ack count, or the 503 to answer.
    pub async fn wait(self, state: &AppState, key: &str, seq: u64) -> Result<usize, Response> {
        let Some(q) = state.quorum.as_ref().filter(|_| self.level != Level::One) else {
            return Ok(1);
        };
        let done = q.write(key, seq, self.level).await.map_err(stopped)?;
        let m = &state.metrics;
        m.quorum_writes
            .get_or_create(&label(self.level, done.reached()))
            .inc();
        m.quorum_write_duration
            .get_or_create(&LevelLabel {
                level: self.level.as_str(),
            })
            .observe(self.started.elapsed().as_secs_f64());
        if done.reached() {
            return Ok(done.acks);
        }
        tracing::warn!(node = %state.node_id, key, seq, acks = done.acks, needed = done.needed,
            "write quorum not reached in time");
        Err(unavailable(
            format!(
                "w={}: the write is durable on {} of {} replicas, {} needed, within {:?}; it was not undone and may still appear on the others later",
                self.level.as_str(),
                done.acks,
                done.replicas,
                done.needed,
                q.timeout()
            ),
            done.acks,
        ))
    }
}

/// Reads `key` from `level` replicas (above 1): the newest entry and the
/// replies counted, or the 503 to answer.
pub async fn read(
    state: &AppState,
    key: &str,
    level: Level,
) -> Result<(Option<Entry>, usize), Response> {
    let Some(q) = state.quorum.as_ref().filter(|_| level != Level::One) else {
        let local = state
            .store
            .get(key)
            .map_err(|e| ApiError::from(e).into_response())?;
        return Ok((local, 1));
    };
    let done = q.read(key, level).await.map_err(stopped)?;
    state
        .metrics
        .quorum_reads
        .get_or_create(&label(level, done.reached()))
        .inc();
    if done.reached() {
        return Ok((done.entry, done.acks));
    }
    Err(unavailable(
        format!(
            "r={}: {} replicas answered, {} needed, within {:?}",
            level.as_str(),
            done.acks,
            done.needed,
            q.timeout()
        ),
        done.acks,
    ))
}
