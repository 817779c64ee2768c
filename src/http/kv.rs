//! `/kv`: plain key/value access to the LWW map.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::auth::Scope;
use super::error::{ApiError, ApiResult};
use super::quorum::{self, with_acks, PendingWrite};
use super::{AppState, VERSION_HEADER};
use crate::cluster::quorum::Level;
use crate::model::{is_internal, validate_user_key, Delta, Meta, Version};
use crate::store::{Condition, Op, Outcome};

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 10_000;

#[derive(Serialize)]
pub struct VersionJson {
    pub hlc: u64,
    pub node: String,
    /// `<hlc>@<node>`, as in the version header.
    pub text: String,
}

impl From<&Version> for VersionJson {
    fn from(v: &Version) -> Self {
        VersionJson {
            hlc: v.hlc.0,
            node: v.node.to_string(),
            text: v.to_string(),
        }
    }
}

#[derive(Serialize)]
struct Written {
    key: String,
    version: VersionJson,
    seq: u64,
}

/// The key of a `/kv/{key}` path, if valid, outside the internal keyspace
/// and within the token's scope.
fn key_from(path: Result<Path<String>, PathRejection>, scope: &Scope) -> ApiResult<String> {
    let Path(key) = path?;
    validate_user_key(&key).map_err(|e| ApiError::bad_request("bad_key", e.to_string()))?;
    scope.check(&key)?;
    Ok(key)
}

pub(super) fn limit_from(limit: Option<usize>) -> ApiResult<usize> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(
            "bad_query",
            format!("limit {n} is not between 1 and {MAX_LIMIT}"),
        )),
    }
}

fn version_header(v: &Version) -> HeaderValue {
    // Node ids are DNS labels and hlc is a number, so this is always a valid header.
    HeaderValue::from_str(&v.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

async fn write(
    state: &AppState,
    key: String,
    value: Option<Vec<u8>>,
    cond: Condition,
) -> ApiResult<Outcome> {
    let op = Op::Local {
        key,
        value,
        meta: Meta::new(),
        cond,
    };
    let outcome = state.committer.commit(vec![op]).await?.pop();
    outcome.ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store_error",
            "no outcome for write",
        )
    })
}

/// `?w=1|quorum|all` of a write.
#[derive(Deserialize)]
pub struct WriteQuery {
    w: Option<String>,
}

/// `?r=1|quorum|all` of a read.
#[derive(Deserialize)]
pub struct ReadQuery {
    r: Option<String>,
}

/// The write level asked for; a bad one is a 400 before anything is written.
pub(super) fn write_level(q: Result<Query<WriteQuery>, QueryRejection>) -> ApiResult<Level> {
    let Query(q) = q?;
    quorum::level("w", q.w.as_deref())
}

/// Answers a durable local write once the replicas asked for hold it.
async fn acked(state: &AppState, pending: PendingWrite, resp: Response, d: &Delta) -> Response {
    match pending.wait(state, &d.key, d.seq).await {
        Ok(acks) => with_acks(resp, acks),
        Err(unavailable) => unavailable,
    }
}

fn written(status: StatusCode, d: Delta) -> Response {
    let header = version_header(&d.entry.version);
    let body = Written {
        version: (&d.entry.version).into(),
        key: d.key,
        seq: d.seq,
    };
    (status, [(VERSION_HEADER, header)], Json(body)).into_response()
}

fn value_from(state: &AppState, body: Result<Bytes, BytesRejection>) -> ApiResult<Vec<u8>> {
    let body = match body {
        Ok(b) => b,
        // The body limit stopped reading: name the limit and its setting.
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(ApiError::over_limit(
                "value_too_large",
                "value",
                state.max_value_bytes,
                "max_value_bytes",
            ))
        }
        Err(r) => return Err(r.into()),
    };
    if body.len() > state.max_value_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
            format!(
                "value is {} bytes; the limit is {} bytes (setting max_value_bytes)",
                body.len(),
                state.max_value_bytes
            ),
        ));
    }
    Ok(body.to_vec())
}

/// `PUT /kv/{key}`: write unconditionally; 200 with the new version.
pub async fn put(
    State(state): State<AppState>,
    scope: Scope,
    path: Result<Path<String>, PathRejection>,
    q: Result<Query<WriteQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let key = key_from(path, &scope)?;
    let level = write_level(q)?;
    let value = value_from(&state, body)?;
    let pending = quorum::begin_write(&state, level);
    match write(&state, key, Some(value), Condition::Always).await? {
        Outcome::Written(d) => {
            state.metrics.writes.inc();
            Ok(acked(&state, pending, written(StatusCode::OK, d.clone()), &d).await)
        }
        other => Err(unexpected(other)),
    }
}

/// `POST /kv/{key}`: create; 201, or 409 if the key holds a value.
pub async fn create(
    State(state): State<AppState>,
    scope: Scope,
    path: Result<Path<String>, PathRejection>,
    q: Result<Query<WriteQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let key = key_from(path, &scope)?;
    let level = write_level(q)?;
    let value = value_from(&state, body)?;
    let pending = quorum::begin_write(&state, level);
    match write(&state, key.clone(), Some(value), Condition::IfAbsent).await? {
        Outcome::Written(d) => {
            state.metrics.writes.inc();
            Ok(acked(&state, pending, written(StatusCode::CREATED, d.clone()), &d).await)
        }
        Outcome::Conflict => Err(ApiError::new(
            StatusCode::CONFLICT,
            "exists",
            format!("key {key:?} already exists; use PUT to overwrite"),
        )),
        other => Err(unexpected(other)),
    }
}

/// `DELETE /kv/{key}`: 204, or 404 if absent or already deleted.
pub async fn delete(
    State(state): State<AppState>,
    scope: Scope,
    path: Result<Path<String>, PathRejection>,
    q: Result<Query<WriteQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let key = key_from(path, &scope)?;
    let level = write_level(q)?;
    let pending = quorum::begin_write(&state, level);
    match write(&state, key.clone(), None, Condition::IfPresent).await? {
        Outcome::Written(d) => {
            state.metrics.writes.inc();
            let resp = (
                StatusCode::NO_CONTENT,
                [(VERSION_HEADER, version_header(&d.entry.version))],
            )
                .into_response();
            Ok(acked(&state, pending, resp, &d).await)
        }
        Outcome::NotFound => Err(ApiError::not_found(format!("key {key:?} not found"))),
        other => Err(unexpected(other)),
    }
}

fn unexpected(o: Outcome) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "store_error",
        format!("unexpected outcome {o:?}"),
    )
}

/// `GET /kv/{key}?r=`: the raw value, version in `x-hub-version`; with
/// `r` above 1 the newest of that many replicas' entries.
pub async fn get(
    State(state): State<AppState>,
    scope: Scope,
    path: Result<Path<String>, PathRejection>,
    q: Result<Query<ReadQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let key = key_from(path, &scope)?;
    let Query(q) = q?;
    let level = quorum::level("r", q.r.as_deref())?;
    let (entry, acks) = match quorum::read(&state, &key, level).await {
        Ok(read) => read,
        Err(unavailable) => return Ok(unavailable),
    };
    let resp = match value_response(&key, entry) {
        Ok(resp) => resp,
        Err(not_found) => not_found.into_response(),
    };
    Ok(with_acks(resp, acks))
}

/// The answer to a read of `key`: the value, or 404 for a tombstone or
/// nothing.
fn value_response(key: &str, entry: Option<crate::model::Entry>) -> ApiResult<Response> {
    match entry {
        Some(e) => match e.value {
            Some(v) => Ok((
                StatusCode::OK,
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    ),
                    (
                        header::HeaderName::from_static(VERSION_HEADER),
                        version_header(&e.version),
                    ),
                ],
                v,
            )
                .into_response()),
            None => Err(ApiError::not_found(format!("key {key:?} was deleted"))),
        },
        None => Err(ApiError::not_found(format!("key {key:?} not found"))),
    }
}

/// `/kv/` with an empty key.
pub async fn empty_key() -> ApiError {
    ApiError::bad_request("bad_key", "key is empty")
}

#[derive(Deserialize)]
/// Unknown parameters are ignored: browsers and proxies add cache-busting ones.
pub struct ListQuery {
    prefix: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct Listed {
    key: String,
    version: VersionJson,
    bytes: usize,
}

/// `GET /kv?prefix=&after=&limit=`: live keys in key order; `next` is the
/// `after` for the following page, `null` at the end.
/// Internal keys are never listed; a prefix-limited token sees its keys only.
pub async fn list(
    State(state): State<AppState>,
    scope: Scope,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q?;
    let limit = limit_from(q.limit)?;
    let Some(prefix) = scope.narrow(&q.prefix.unwrap_or_default()) else {
        return Ok(Json(serde_json::json!({ "keys": [], "next": null })).into_response());
    };
    let mut after = q.after;
    let mut keys = Vec::new();
    // Tombstones are skipped, so a page may need more than one scan.
    'scan: loop {
        let page = state.store.scan(&prefix, after.as_deref(), limit)?;
        let exhausted = page.len() < limit;
        for (key, entry) in page {
            after = Some(key.clone());
            if is_internal(&key) {
                continue;
            }
            if let Some(v) = &entry.value {
                keys.push(Listed {
                    bytes: v.len(),
                    version: (&entry.version).into(),
                    key,
                });
                if keys.len() == limit {
                    break 'scan;
                }
            }
        }
        if exhausted {
            break;
        }
    }
    let next = if keys.len() == limit {
        keys.last().map(|k| k.key.clone())
    } else {
        None
    };
    Ok(Json(serde_json::json!({ "keys": keys, "next": next })).into_response())
}
