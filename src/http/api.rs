//! `/health`, `/metrics` and `/api/*`: the sensor-hub views (state, updates,
//! readings, history) and the read-only views `hub inspect --node` uses
//! (introspection, merkle, entry).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::auth::Scope;
use super::error::{ApiError, ApiResult};
use super::kv::{limit_from, VersionJson};
use super::AppState;
use crate::merkle::{NodeRef, LEAF_LEVEL};
use crate::model::{is_internal, validate_key, validate_user_key, Entry, Meta, NodeId};
use crate::sensors;
use crate::store::{Change, Condition, Op};

/// 200 while the store takes writes; 503 with the reason while its writes
/// fail or its database is closed after an error.
pub async fn health(State(state): State<AppState>) -> Response {
    match state.store.health() {
        Ok(()) => Json(json!({ "status": "ok", "node_id": state.node_id.as_str() })).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "node_id": state.node_id.as_str(), "reason": reason })),
        )
            .into_response(),
    }
}

/// `GET /metrics`: OpenMetrics 1.0 text when the scraper accepts it
/// (Prometheus asks for it), else the Prometheus text format 0.0.4 (what
/// `promtool check metrics` and curl get); each with its own content type.
pub async fn metrics(State(state): State<AppState>, headers: header::HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let summary = state.store.summary().ok();
    let view = state.cluster.as_ref().map(|w| w.borrow().clone());
    let text = state.metrics.render(
        summary.as_ref(),
        state.committer.stats(),
        view.as_deref(),
        &state.workers.statuses(),
        openmetrics,
    );
    let content_type = if openmetrics {
        crate::metrics::OPENMETRICS
    } else {
        crate::metrics::TEXT_004
    };
    ([(header::CONTENT_TYPE, content_type)], text).into_response()
}

/// A stored value as JSON: sensor readings are JSON text, so parse it; any
/// other UTF-8 is a string; other bytes are hex in an object.
pub fn value_json(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string())),
        Err(_) => json!({ "hex": hex::encode(bytes) }),
    }
}

/// The reading's time: the device's `ts_ms` when it sent one, else the
/// physical part of the entry's HLC.
fn ts_ms(entry: &Entry) -> u64 {
    entry
        .meta
        .get("ts_ms")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| entry.version.hlc.physical_ms())
}

fn meta_json(meta: &Meta) -> Value {
    Value::Object(
        meta.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// `GET /api/state`: the latest reading of every sensor, grouped by origin.
/// Bounded: more than `state_limit` sensors is a clear error, not an
/// answer of unbounded size. A prefix-limited key sees its sensors only.
pub async fn state(State(state): State<AppState>, scope: Scope) -> ApiResult<Json<Value>> {
    let mut out: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
    let Some(prefix) = scope.narrow(sensors::PREFIX) else {
        return Ok(Json(json!(out)));
    };
    let mut after: Option<String> = None;
    let mut seen = 0usize;
    loop {
        let page = state.store.scan(&prefix, after.as_deref(), 1000)?;
        let done = page.len() < 1000;
        seen += page.len();
        if seen > state.state_limit {
            return Err(ApiError::bad_request(
                "too_many_sensors",
                format!(
                    "more than {} sensors (the node's state_limit); read them incrementally from /api/updates or raise state_limit",
                    state.state_limit
                ),
            ));
        }
        for (key, entry) in page {
            if let (Some((origin, name)), Some(v)) = (sensors::parse_key(&key), &entry.value) {
                out.entry(origin.to_string()).or_default().insert(
                    name.to_string(),
                    json!({
                        "value": value_json(v),
                        "ts_ms": ts_ms(&entry),
                        "origin": origin,
                        "meta": meta_json(&entry.meta),
                    }),
                );
            }
            after = Some(key);
        }
        if done {
            break;
        }
    }
    Ok(Json(json!(out)))
}

#[derive(Deserialize)]
/// Unknown parameters are ignored: browsers and proxies add cache-busting ones.
pub struct UpdatesQuery {
    since: Option<String>,
    limit: Option<usize>,
}

/// The cursor of the change at feed position `idx`: the position right
/// after it, so "everything after cursor C" is "from position C" and
/// cursor 0 is "from the oldest change the node still holds", with no
/// change that could be confused with it. Shared by `/api/updates`,
/// `/api/watch` (event ids, `Last-Event-ID`) and `hub inspect log`.
pub fn cursor_of(idx: u64) -> u64 {
    idx + 1
}

/// Up to `limit` changes after cursor `since` (0: from the oldest held),
/// each with its cursor, and the cursor to ask from next time.
pub fn changes_after(
    store: &crate::store::Store,
    since: u64,
    limit: usize,
) -> crate::store::Result<(Vec<(u64, Change)>, u64)> {
    let changes = store.changes(since.checked_sub(1), limit)?;
    let page: Vec<(u64, Change)> = changes
        .into_iter()
        .map(|(idx, c)| (cursor_of(idx), c))
        .collect();
    let next = page.last().map_or(since, |(c, _)| *c);
    Ok((page, next))
}

pub fn change_json(cursor: u64, c: &Change) -> Value {
    let (origin, seq) = match &c.origin {
        Some((o, s)) => (Value::String(o.to_string()), json!(s)),
        None => (Value::Null, Value::Null),
    };
    json!({
        "cursor": cursor.to_string(),
        "key": c.key,
        "origin": origin,
        "seq": seq,
        "version": VersionJson::from(&c.entry.version),
        "ts_ms": ts_ms(&c.entry),
        "deleted": c.entry.is_tombstone(),
        "value": c.entry.value.as_deref().map(value_json),
        "meta": meta_json(&c.entry.meta),
    })
}

/// `GET /api/updates?since=&limit=`: the change feed in apply order. Reading
/// consumes nothing; cursors are positions in the persisted feed (see
/// [`cursor_of`]); no `since`, or `since=0`, starts at the oldest change the
/// node holds. Changes of the internal keyspace, and outside a limited
/// token's prefix, are left out (the cursor still moves past them).
pub async fn updates(
    State(state): State<AppState>,
    scope: Scope,
    q: Result<Query<UpdatesQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(q) = q?;
    let limit = limit_from(q.limit)?;
    let since = match q.since.as_deref() {
        None | Some("") => 0,
        Some(s) => s.parse::<u64>().map_err(|_| {
            ApiError::bad_request(
                "bad_cursor",
                format!("cursor {s:?} is not one this API returned"),
            )
        })?,
    };
    let (changes, next) = changes_after(&state.store, since, limit)?;
    let updates: Vec<Value> = changes
        .iter()
        .filter(|(_, c)| !is_internal(&c.key) && scope.allows(&c.key))
        .map(|(i, c)| change_json(*i, c))
        .collect();
    Ok(Json(
        json!({ "updates": updates, "next": next.to_string() }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadingIn {
    sensor: String,
    value: Value,
    ts_ms: Option<u64>,
    unit: Option<String>,
}

fn check_sensor_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 || name.contains('/') || validate_key(name).is_err() {
        return Err(format!(
            "sensor name {name:?} must be 1-128 printable characters without '/'"
        ));
    }
    Ok(())
}

/// `POST /api/readings`: a batch of real readings, stored as this node's
/// sensors in one commit; any bad reading refuses the whole batch.
pub async fn readings(
    State(state): State<AppState>,
    scope: Scope,
    q: Result<Query<super::kv::WriteQuery>, QueryRejection>,
    body: Result<Json<Vec<ReadingIn>>, JsonRejection>,
) -> ApiResult<Response> {
    let level = super::kv::write_level(q)?;
    let batch = super::error::batch_body(&state, body)?;
    let mut ops = Vec::with_capacity(batch.len());
    for (i, r) in batch.into_iter().enumerate() {
        check_sensor_name(&r.sensor)
            .map_err(|m| ApiError::bad_request("bad_reading", format!("[{i}].sensor: {m}")))?;
        if !(r.value.is_number() || r.value.is_boolean() || r.value.is_string()) {
            return Err(ApiError::bad_request(
                "bad_reading",
                format!("[{i}].value: must be a number, boolean or string"),
            ));
        }
        let mut meta = Meta::new();
        meta.insert("kind".into(), "reading".into());
        if let Some(ts) = r.ts_ms {
            meta.insert("ts_ms".into(), ts.to_string());
        }
        if let Some(unit) = r.unit {
            if unit.is_empty() || unit.len() > 64 || unit.chars().any(char::is_control) {
                return Err(ApiError::bad_request(
                    "bad_reading",
                    format!("[{i}].unit: 1-64 printable characters"),
                ));
            }
            meta.insert("unit".into(), unit);
        }
        let value = r.value.to_string().into_bytes();
        if value.len() > state.max_value_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "value_too_large",
                format!(
                    "[{i}].value is {} bytes; the limit is {} bytes (setting max_value_bytes)",
                    value.len(),
                    state.max_value_bytes
                ),
            ));
        }
        let key = sensors::key(state.node_id.as_str(), &r.sensor);
        scope.check(&key)?;
        ops.push(Op::Local {
            key,
            value: Some(value),
            meta,
            cond: Condition::Always,
        });
    }
    let n = ops.len();
    let pending = super::quorum::begin_write(&state, level);
    let mut last = None;
    if n > 0 {
        let outcomes = state.committer.commit(ops).await?;
        state.metrics.readings_ingested.inc_by(n as u64);
        state.metrics.writes.inc_by(n as u64);
        // One ack covers the batch: acks are cumulative per origin.
        last = outcomes
            .into_iter()
            .filter_map(|o| match o {
                crate::store::Outcome::Written(d) => Some(d),
                _ => None,
            })
            .max_by_key(|d| d.seq);
    }
    let resp = (StatusCode::OK, Json(json!({ "accepted": n }))).into_response();
    let acks = match last {
        Some(d) => match pending.wait(&state, &d.key, d.seq).await {
            Ok(acks) => acks,
            Err(unavailable) => return Ok(unavailable),
        },
        None => 1,
    };
    Ok(super::quorum::with_acks(resp, acks))
}

#[derive(Deserialize)]
/// Unknown parameters are ignored: browsers and proxies add cache-busting ones.
pub struct HistoryQuery {
    limit: Option<usize>,
    before: Option<u64>,
}

/// `GET /api/sensors/{origin}/{sensor}/history?limit=&before=`: readings
/// newest first from the retained log; `before` is a seq (exclusive).
pub async fn history(
    State(state): State<AppState>,
    scope: Scope,
    path: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Path((origin, sensor)) = path?;
    let Query(q) = q?;
    let limit = limit_from(q.limit)?;
    let origin =
        NodeId::new(origin).map_err(|e| ApiError::bad_request("bad_origin", e.to_string()))?;
    check_sensor_name(&sensor).map_err(|m| ApiError::bad_request("bad_sensor", m))?;
    let key = sensors::key(origin.as_str(), &sensor);
    scope.check(&key)?;
    let deltas =
        state
            .store
            .key_history(&origin, &key, q.before, limit, state.history_scan_limit)?;
    let readings: Vec<Value> = deltas
        .iter()
        .map(|d| {
            json!({
                "seq": d.seq,
                "value": d.entry.value.as_deref().map(value_json),
                "ts_ms": ts_ms(&d.entry),
                "version": VersionJson::from(&d.entry.version),
                "meta": meta_json(&d.entry.meta),
            })
        })
        .collect();
    let next_before = if deltas.len() == limit {
        deltas.last().map(|d| d.seq)
    } else {
        None
    };
    Ok(Json(json!({
        "origin": origin.as_str(),
        "sensor": sensor,
        "readings": readings,
        "next_before": next_before,
    })))
}

#[derive(Serialize)]
struct Counters {
    writes: u64,
    rejected_inputs: u64,
    readings_ingested: u64,
    sensor_readings: u64,
    commit_groups: u64,
    commit_ops: u64,
    flushes: u64,
}

/// `GET /api/introspection`: the store summary plus this node's counters.
pub async fn introspection(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let s = state.store.summary()?;
    let c = state.committer.stats();
    let m = &state.metrics;
    let counters = Counters {
        writes: m.writes.get(),
        rejected_inputs: m.rejected.get(),
        readings_ingested: m.readings_ingested.get(),
        sensor_readings: m.sensor_readings.get(),
        commit_groups: c.groups.load(Relaxed),
        commit_ops: c.ops.load(Relaxed),
        flushes: c.flushes.load(Relaxed),
    };
    let mut v = serde_json::to_value(&s)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    if let Value::Object(o) = &mut v {
        o.insert("counters".into(), json!(counters));
        o.insert("max_value_bytes".into(), json!(state.max_value_bytes));
        o.insert("workers".into(), json!(state.workers.statuses()));
        // The clock fence (state, offsets per peer, refusal): see crate::clock.
        o.insert(
            "clock".into(),
            json!(state.committer.clock_gate().verdict()),
        );
        if let Some(view) = state.cluster.as_ref().map(|w| w.borrow().clone()) {
            o.insert("cluster".into(), json!(*view));
        }
    }
    Ok(Json(v))
}

#[derive(Deserialize)]
/// Unknown parameters are ignored: browsers and proxies add cache-busting ones.
pub struct MerkleQuery {
    level: Option<u8>,
    index: Option<u32>,
}

/// `GET /api/merkle?level=&index=`: one Merkle node and its children.
pub async fn merkle(
    State(state): State<AppState>,
    q: Result<Query<MerkleQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(q) = q?;
    let node = NodeRef {
        level: q.level.unwrap_or(0),
        index: q.index.unwrap_or(0),
    };
    if !node.is_valid() {
        return Err(ApiError::bad_request(
            "bad_query",
            format!(
                "no Merkle node at level {} index {} (levels 0..={LEAF_LEVEL})",
                node.level, node.index
            ),
        ));
    }
    Ok(Json(merkle_json(&state.store, node)))
}

pub fn merkle_json(store: &crate::store::Store, node: NodeRef) -> Value {
    let digest = store.merkle_node(node).map(hex::encode);
    let children: Option<Vec<String>> = store
        .merkle_children(node)
        .map(|c| c.iter().map(hex::encode).collect());
    json!({ "level": node.level, "index": node.index, "digest": digest, "children": children })
}

/// `GET /api/entry/{key}`: an entry with version and meta, tombstones included.
pub async fn entry(
    State(state): State<AppState>,
    scope: Scope,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let Path(key) = path?;
    validate_user_key(&key).map_err(|e| ApiError::bad_request("bad_key", e.to_string()))?;
    scope.check(&key)?;
    match state.store.get(&key)? {
        Some(e) => Ok(Json(entry_json(&key, &e))),
        None => Err(ApiError::not_found(format!("key {key:?} not found"))),
    }
}

pub fn entry_json(key: &str, e: &Entry) -> Value {
    json!({
        "key": key,
        "version": VersionJson::from(&e.version),
        "deleted": e.is_tombstone(),
        "value": e.value.as_deref().map(value_json),
        "bytes": e.value.as_ref().map(Vec::len),
        "meta": meta_json(&e.meta),
    })
}
