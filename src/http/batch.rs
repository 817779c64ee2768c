//! `POST /kv`: many key writes in one request.
//!
//! Body: `{"writes": [{"key": K, "value": V} | {"key": K, "delete": true}, …]}`
//! (values are UTF-8 text; a binary value goes through `PUT /kv/{key}`).
//! Every write is checked (key, scope, size) before anything is written: a
//! bad one refuses the whole batch with nothing stored.
//!
//! Guarantees: the writes this node stores go into one commit group (one
//! fsync, durable together); `?w=` is met for each of them as for a single
//! write. With sharding the batch is split by owner: the keys this node owns
//! are written here, the rest go, one sub-batch per other node and all at
//! once, each write to its best owner (the next one if that cannot be
//! reached), as single-key requests are forwarded (see [`super::forward`]). Across owners a batch is not atomic: the answer
//! lists each write's outcome, in the order given, and is 200 only when
//! every write succeeded; otherwise it is the failed sub-batch's status
//! (503 when no owner answered), with `error` and the same per-write list,
//! and the writes that succeeded stay.
//!
//! Cost: one HTTP request and one commit for up to [`MAX_WRITES`] writes,
//! which is what makes small values cheap: a single `PUT` pays ~0.25–0.5 ms
//! of node CPU for the request and its commit, whatever its size (README,
//! Sharding). Plus, for a sharded batch, one request per other node that is
//! some write's best owner (at most N − 1).

use std::collections::{BTreeMap, HashSet};

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::auth::Scope;
use super::error::{ApiError, ApiResult};
use super::forward::{co_owner_with_newer, Outgoing, FORWARDED_HEADER};
use super::kv::{write_level, VersionJson, WriteQuery};
use super::quorum::{self, with_acks};
use super::{AppState, ACKS_HEADER};
use crate::model::{validate_user_key, Meta, NodeId};
use crate::store::{Condition, Op, Outcome};

/// Bytes escaped in a key put in a URL path ('/' is kept: the entry
/// route takes the rest of the path as the key).
const PATH: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'^')
    .add(b'|')
    .add(b'\\')
    .add(b'[')
    .add(b']');

/// Co-owner checks of a batch's deletes in flight at once.
const CHECKS_AT_ONCE: usize = 16;

/// Most writes in one batch: one commit group stays short (a group of
/// hundreds of thousands of records stalls the node's writer).
pub const MAX_WRITES: usize = 10_000;

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BatchIn {
    writes: Vec<WriteIn>,
}

#[derive(Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
struct WriteIn {
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    delete: bool,
}

/// One write's outcome, as answered.
#[derive(Deserialize, Serialize, Clone)]
struct WriteOut {
    key: String,
    /// 200 written, 404 a delete of a key absent or already deleted, else
    /// the status of the sub-batch that failed.
    status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl WriteOut {
    fn written(key: String, d: &crate::model::Delta) -> WriteOut {
        WriteOut {
            key,
            status: StatusCode::OK.as_u16(),
            version: Some(VersionJson::from(&d.entry.version).text),
            seq: Some(d.seq),
            error: None,
        }
    }

    fn failed(key: String, status: StatusCode, error: String) -> WriteOut {
        WriteOut {
            key,
            status: status.as_u16(),
            version: None,
            seq: None,
            error: Some(error),
        }
    }
}

/// A part of the batch that did not succeed, as the answer names it.
struct Failure {
    status: StatusCode,
    code: String,
    message: String,
}

/// What the caller gets back: per-write outcomes and the fewest acks any
/// of them had.
struct Done {
    results: Vec<WriteOut>,
    acks: usize,
    /// The first failure.
    failed: Option<Failure>,
}

pub async fn write(
    State(state): State<AppState>,
    scope: Scope,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    q: Result<Query<WriteQuery>, QueryRejection>,
    body: Result<Json<BatchIn>, JsonRejection>,
) -> ApiResult<Response> {
    let level = write_level(q)?;
    let batch = super::error::batch_body(&state, body)?;
    check(&state, &scope, &batch.writes)?;
    let n = batch.writes.len();

    // Split: the writes this node stores, and per other write its owners,
    // best first.
    let forwarded = headers.contains_key(FORWARDED_HEADER);
    let mut here_idx = Vec::new();
    let mut away: Vec<Away> = Vec::new();
    for (i, w) in batch.writes.iter().enumerate() {
        let targets = match (&state.placement, &state.forwarder, forwarded) {
            (Some(p), Some(_), false) => p.forward_targets(&w.key),
            _ => None,
        };
        match targets {
            None => here_idx.push(i),
            Some(mut owners) => {
                owners.reverse();
                away.push((i, owners));
            }
        }
    }
    let sharded = state.placement.as_ref().is_some_and(|p| p.sharded());
    if sharded && !forwarded {
        away.extend(deletes_for_co_owners(&state, &headers, &batch.writes, &mut here_idx).await);
    }
    let here = async {
        if here_idx.is_empty() {
            return None;
        }
        let writes = here_idx.iter().map(|&i| batch.writes[i].clone()).collect();
        Some((here_idx, write_here(&state, level, writes).await))
    };
    let there = send_away(&state, &method, &uri, &headers, &batch.writes, away);
    let (here, there) = tokio::join!(here, there);
    let mut parts: Vec<(Vec<usize>, Done)> = there;
    if let Some((idx, done)) = here {
        parts.push((idx, done?));
    }

    let mut results: Vec<Option<WriteOut>> = vec![None; n];
    let mut acks = usize::MAX;
    let mut failed = None;
    for (idx, done) in parts {
        acks = acks.min(done.acks);
        // An owner that refused the sub-batch listed no outcomes: each of
        // its writes gets the refusal.
        let (status, error) = match &done.failed {
            Some(f) => (f.status, f.message.clone()),
            None => (
                StatusCode::BAD_GATEWAY,
                "the owner's answer did not cover this write".to_string(),
            ),
        };
        let mut given = done.results.into_iter();
        for i in idx {
            results[i] = Some(given.next().unwrap_or_else(|| {
                WriteOut::failed(batch.writes[i].key.clone(), status, error.clone())
            }));
        }
        if failed.is_none() {
            failed = done.failed;
        }
    }
    let results: Vec<WriteOut> = results.into_iter().flatten().collect();
    let acks = if acks == usize::MAX { 1 } else { acks };
    // Writes that took effect (a delete of an absent key did not).
    let written = results.iter().filter(|r| r.status == 200).count();
    let resp = match failed {
        None => (
            StatusCode::OK,
            Json(json!({ "written": written, "results": results })),
        )
            .into_response(),
        Some(f) => (
            f.status,
            Json(json!({
                "error": { "code": f.code, "message": f.message },
                "results": results,
            })),
        )
            .into_response(),
    };
    Ok(with_acks(resp, acks))
}

/// A write for other nodes: its position in the batch, and its owners not
/// tried yet, best last.
type Away = (usize, Vec<(NodeId, String)>);

/// The deletes among `here` of keys not live here, at an owner that may
/// still be receiving their partition: each goes to a co-owner holding a
/// newer live value, as a single DELETE does (see
/// `forward::co_owner_with_newer`), and leaves `here`.
async fn deletes_for_co_owners(
    state: &AppState,
    headers: &HeaderMap,
    writes: &[WriteIn],
    here: &mut Vec<usize>,
) -> Vec<Away> {
    let deletes: Vec<(usize, String)> = here
        .iter()
        .copied()
        .filter(|i| writes[*i].delete)
        .map(|i| {
            let key = &writes[i].key;
            (i, format!("/api/entry/{}", utf8_percent_encode(key, PATH)))
        })
        .collect();
    if deletes.is_empty() {
        return Vec::new();
    }
    let mut checks = futures_util::stream::iter(deletes.into_iter().map(|(i, path)| async move {
        let uri = path.parse::<Uri>().ok()?;
        co_owner_with_newer(state, headers, &writes[i].key, &uri)
            .await
            .map(|owner| (i, vec![owner]))
    }))
    .buffer_unordered(CHECKS_AT_ONCE);
    let mut moved: Vec<Away> = Vec::new();
    while let Some(found) = checks.next().await {
        moved.extend(found);
    }
    let gone: HashSet<usize> = moved.iter().map(|(i, _)| *i).collect();
    here.retain(|i| !gone.contains(i));
    moved
}

/// Sends the writes other nodes own, each sub-batch to one owner: grouped
/// by their best owner not yet tried (so a batch becomes at most one
/// request per other node, whatever the number of owner sets), all at
/// once; the writes of a sub-batch whose owner could not be reached go
/// again, grouped by their next owner, until none is left (503
/// `no_owner_reachable` for those).
async fn send_away(
    state: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    writes: &[WriteIn],
    mut away: Vec<Away>,
) -> Vec<(Vec<usize>, Done)> {
    let mut parts = Vec::new();
    let mut unreachable: Vec<usize> = Vec::new();
    let mut why = String::from("no owner is known to be reachable");
    while !away.is_empty() {
        let mut groups: BTreeMap<NodeId, (String, Vec<Away>)> = BTreeMap::new();
        for (i, mut owners) in away.drain(..) {
            match owners.pop() {
                Some((owner, url)) => groups
                    .entry(owner)
                    .or_insert_with(|| (url, Vec::new()))
                    .1
                    .push((i, owners)),
                None => unreachable.push(i),
            }
        }
        let sends = groups.into_iter().map(|(owner, (url, items))| {
            let sub: Vec<WriteIn> = items.iter().map(|(i, _)| writes[*i].clone()).collect();
            let body =
                Bytes::from(serde_json::to_vec(&BatchIn { writes: sub }).unwrap_or_default());
            let what = format!("batch of {}", items.len());
            let out = Outgoing::new(state, method, uri, headers, what, body);
            async move {
                let reply = out.send_reply(state, &[(owner, url)], false).await;
                (items, reply)
            }
        });
        for (items, reply) in futures_util::future::join_all(sends).await {
            match reply {
                Ok(reply) => {
                    parts.push((items.into_iter().map(|(i, _)| i).collect(), done_of(reply)))
                }
                Err(e) => {
                    why = e;
                    away.extend(items);
                }
            }
        }
    }
    if !unreachable.is_empty() {
        parts.push((
            unreachable,
            Done {
                results: Vec::new(),
                acks: 0,
                failed: Some(Failure {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    code: "no_owner_reachable".into(),
                    message: format!("no owner of part of the batch answered: {why}"),
                }),
            },
        ));
    }
    parts
}

/// Every write valid and within scope and limits, or the first that is not.
fn check(state: &AppState, scope: &Scope, writes: &[WriteIn]) -> ApiResult<()> {
    if writes.len() > MAX_WRITES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!(
                "{} writes in one batch; the limit is {MAX_WRITES}",
                writes.len()
            ),
        ));
    }
    for (i, w) in writes.iter().enumerate() {
        validate_user_key(&w.key)
            .map_err(|e| ApiError::bad_request("bad_key", format!("writes[{i}].key: {e}")))?;
        scope.check(&w.key)?;
        match (&w.value, w.delete) {
            (Some(v), false) if v.len() > state.max_value_bytes => {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "value_too_large",
                    format!(
                        "writes[{i}].value is {} bytes; the limit is {} bytes (setting max_value_bytes)",
                        v.len(),
                        state.max_value_bytes
                    ),
                ));
            }
            (Some(_), false) | (None, true) => {}
            _ => {
                return Err(ApiError::bad_request(
                    "bad_write",
                    format!("writes[{i}]: give either \"value\" or \"delete\": true"),
                ))
            }
        }
    }
    Ok(())
}

/// Writes `writes` in one commit here and waits for `level`.
async fn write_here(
    state: &AppState,
    level: crate::cluster::quorum::Level,
    writes: Vec<WriteIn>,
) -> ApiResult<Done> {
    let keys: Vec<String> = writes.iter().map(|w| w.key.clone()).collect();
    let ops: Vec<Op> = writes
        .into_iter()
        .map(|w| Op::Local {
            cond: if w.delete {
                Condition::IfPresent
            } else {
                Condition::Always
            },
            key: w.key,
            value: w.value.map(String::into_bytes),
            meta: Meta::new(),
        })
        .collect();
    let pending = quorum::begin_write(state, level);
    let outcomes = if ops.is_empty() {
        Vec::new()
    } else {
        state.committer.commit(ops).await?
    };
    let mut results = Vec::with_capacity(keys.len());
    // The highest seq written: its ack covers the whole batch (acks are
    // cumulative per origin).
    let mut last: Option<crate::model::Delta> = None;
    for (key, outcome) in keys.into_iter().zip(outcomes) {
        results.push(match outcome {
            Outcome::Written(d) => {
                let out = WriteOut::written(key, &d);
                last = last.into_iter().chain([d]).max_by_key(|d| d.seq);
                out
            }
            Outcome::NotFound => WriteOut::failed(key, StatusCode::NOT_FOUND, "not found".into()),
            other => WriteOut::failed(
                key,
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("unexpected outcome {other:?}"),
            ),
        });
    }
    let written = results.iter().filter(|r| r.status == 200).count();
    state.metrics.writes.inc_by(written as u64);
    let (acks, failed) = match last {
        Some(d) => match pending.wait(state, &d.key, d.seq).await {
            Ok(acks) => (acks, None),
            Err(unavailable) => {
                let status = unavailable.status();
                let acks = acks_of(unavailable.headers()).unwrap_or(1);
                let message = format!(
                    "the writes stored at {} did not reach w={}: {acks} acknowledged",
                    state.node_id,
                    level.as_str()
                );
                for r in &mut results {
                    if r.status == 200 {
                        r.status = status.as_u16();
                        r.error = Some(message.clone());
                    }
                }
                let failed = Failure {
                    status,
                    code: "quorum_unavailable".into(),
                    message,
                };
                (acks, Some(failed))
            }
        },
        None => (1, None),
    };
    Ok(Done {
        results,
        acks,
        failed,
    })
}

fn acks_of(headers: &HeaderMap) -> Option<usize> {
    headers.get(ACKS_HEADER)?.to_str().ok()?.parse().ok()
}

/// A sub-batch's outcome from its owner's answer.
fn done_of(reply: crate::client::Reply) -> Done {
    let acks = acks_of(&reply.headers).unwrap_or(0);
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
    let results: Vec<WriteOut> =
        serde_json::from_value(body["results"].clone()).unwrap_or_default();
    let failed = (!reply.status.is_success()).then(|| Failure {
        status: reply.status,
        code: body["error"]["code"]
            .as_str()
            .unwrap_or("owner_refused")
            .to_string(),
        message: body["error"]["message"]
            .as_str()
            .unwrap_or("an owner refused part of the batch")
            .to_string(),
    });
    Done {
        results,
        acks,
        failed,
    }
}
