//! Forwarding of `/kv/{key}` requests for keys this node does not store
//! (`crate::placement`): the request goes, as it came (method, path, query,
//! body, `Authorization`, content and condition headers), to an owner's
//! advertised URL, and the owner's status, headers and body come back
//! unchanged, so every status code and error body is the owner's own.
//! Owners are tried in layout order, alive ones before suspect ones (a
//! suspect is still an owner, and usually just slow); one that cannot be
//! reached is skipped.
//! A read that finds no key (404), here or at an owner, is tried at the
//! other owners before 404 is the answer: an owner that just gained the
//! partition may not hold the data yet while rebalancing streams it, and
//! reads must go on meanwhile. (Cost: a true miss asks every owner.) A
//! node that has not joined its cluster yet answers such a miss 503
//! `not_joined` rather than a 404 it cannot vouch for.
//! For the same reason a conditional write (`POST` create, `DELETE`) at an
//! owner that holds no live value for the key first asks the other owners
//! for their entry, and goes to one holding a newer live value, which
//! decides it (see [`conditional_write_owner`]).
//!
//! Loops: the forwarded request carries [`FORWARDED_HEADER`]; a request
//! that carries it is always served here, never forwarded again (two nodes
//! with different views of the membership cannot bounce a request).
//! Costs: one extra local HTTP round trip (~0.2 ms on loopback) for a
//! request that reached a non-owner; nothing for one that reached an owner,
//! and nothing at all with full replication (one bit test).

use axum::body::Body;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Full};

use super::error::ApiError;
use super::AppState;
use crate::model::NodeId;

/// Set on a forwarded request to the forwarding node's id.
pub const FORWARDED_HEADER: &str = "x-hub-forwarded";

/// Request headers carried to the owner.
const CARRIED: [&str; 5] = [
    "authorization",
    "content-type",
    "if-match",
    "if-none-match",
    "accept",
];

/// Route layer of `/kv/{*key}`: serves here or forwards to an owner.
pub async fn to_owner(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(placement) = state.placement.as_ref() else {
        return next.run(req).await;
    };
    if req.headers().contains_key(FORWARDED_HEADER) {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let key = match Path::<String>::from_request_parts(&mut parts, &state).await {
        Ok(Path(k)) => k,
        // The handler gives the proper error for a bad path.
        Err(_) => return next.run(Request::from_parts(parts, body)).await,
    };
    let read = parts.method == Method::GET || parts.method == Method::HEAD;
    let Some(targets) = placement.forward_targets(&key) else {
        if !placement.sharded() {
            return next.run(Request::from_parts(parts, body)).await;
        }
        if !read {
            return match conditional_write_owner(&state, &parts, &key).await {
                Some(owner) => to_co_owner(&state, owner, parts, body, next).await,
                None => next.run(Request::from_parts(parts, body)).await,
            };
        }
        // An owner that just gained the partition may not hold the key yet
        // (rebalancing): a miss here is checked with the other owners.
        let outgoing = Outgoing::of(&state, &parts, &key, Bytes::new());
        let resp = next.run(Request::from_parts(parts, body)).await;
        if resp.status() != StatusCode::NOT_FOUND {
            return resp;
        }
        let others = placement.other_owners(&key);
        return match outgoing.send(&state, &others, true).await {
            Ok(found) if found.status() != StatusCode::NOT_FOUND => found,
            // Before it has joined, a node's layout holds only itself, and
            // its store may hold nothing yet: its miss says nothing.
            _ if !joined(&state) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_joined",
                format!(
                    "this node has not joined its cluster yet, so it cannot tell whether key {key:?} exists; ask another node, or retry once /ready answers 200"
                ),
            )
            .into_response(),
            _ => resp,
        };
    };
    if state.forwarder.is_none() {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let outgoing = Outgoing::of(&state, &parts, &key, body);
    match outgoing.send(&state, &targets, read).await {
        Ok(resp) => resp,
        Err(why) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_owner_reachable",
            format!("no owner of key {key:?} answered: {why}"),
        )
        .into_response(),
    }
}

/// Whether this node has heard from its cluster (always, for a node not
/// asked to join one).
fn joined(state: &AppState) -> bool {
    state.cluster.as_ref().is_none_or(|w| w.borrow().me.joined)
}

/// The whole request body, to send on; a body that cannot be read is a 400.
async fn read_body(body: Body) -> Result<Bytes, Response> {
    body.collect().await.map(|b| b.to_bytes()).map_err(|e| {
        ApiError::bad_request("bad_body", format!("cannot read the body: {e}")).into_response()
    })
}

/// Sends a conditional write to the co-owner that holds the key; decides
/// it here if that owner went away meanwhile, as without the check.
async fn to_co_owner(
    state: &AppState,
    owner: (NodeId, String),
    parts: Parts,
    body: Body,
    next: Next,
) -> Response {
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let outgoing = Outgoing::of(state, &parts, parts.uri.path(), body.clone());
    match outgoing.send(state, &[owner], false).await {
        Ok(resp) => resp,
        Err(_) => next.run(Request::from_parts(parts, Body::from(body))).await,
    }
}

/// A conditional write (`POST` create, `DELETE`) at an owner whose store
/// has no live value for the key: an owner that just gained the partition
/// may not hold the key yet (rebalancing), so the other owners are asked
/// for their entry (`/api/entry`, served locally there). One holding a live
/// value newer than ours gets the write, and decides it on its data (409 /
/// 204), as the caller would expect from the cluster. Cost: one local
/// round trip per other owner, only when the key is not live here (every
/// create of a new key); nothing for `PUT` or with full replication.
/// `None`: decide here.
async fn conditional_write_owner(
    state: &AppState,
    parts: &Parts,
    key: &str,
) -> Option<(NodeId, String)> {
    let conditional = parts.method == Method::POST || parts.method == Method::DELETE;
    if !conditional || crate::model::validate_user_key(key).is_err() {
        return None;
    }
    let raw = parts.uri.path().strip_prefix("/kv/")?;
    let entry = format!("/api/entry/{raw}").parse::<Uri>().ok()?;
    let owner = co_owner_with_newer(state, &parts.headers, key, &entry).await?;
    tracing::debug!(node = %state.node_id, owner = %owner.0, key,
        "conditional write sent to the co-owner holding the key");
    Some(owner)
}

/// When this node holds no live value for `key`: the first other owner
/// (best first) that holds one newer than ours, asked at `entry` (its
/// `/api/entry/{key}`, served locally there) with the caller's headers.
/// `None` when we hold a live value, no other owner does, or none answers.
pub(super) async fn co_owner_with_newer(
    state: &AppState,
    headers: &HeaderMap,
    key: &str,
    entry: &Uri,
) -> Option<(NodeId, String)> {
    let ours = match state.store.get(key) {
        Ok(Some(e)) if e.value.is_some() => return None,
        Ok(e) => e.map(|e| e.version),
        Err(_) => return None,
    };
    let placement = state.placement.as_ref()?;
    let probe = Outgoing::new(
        state,
        &Method::GET,
        entry,
        headers,
        key.to_string(),
        Bytes::new(),
    );
    /// What we read of an owner's `/api/entry` answer.
    #[derive(serde::Deserialize)]
    struct Theirs {
        version: crate::model::Version,
        deleted: bool,
    }
    for owner in placement.other_owners(key) {
        let Ok(reply) = probe
            .send_reply(state, std::slice::from_ref(&owner), false)
            .await
        else {
            continue;
        };
        if reply.status != StatusCode::OK {
            continue;
        }
        let Ok(theirs) = serde_json::from_slice::<Theirs>(&reply.body) else {
            continue;
        };
        if !theirs.deleted && ours.as_ref().is_none_or(|o| theirs.version > *o) {
            return Some(owner);
        }
    }
    None
}

/// A request as it goes to an owner.
pub(super) struct Outgoing {
    key: String,
    method: Method,
    path_q: String,
    headers: Vec<(&'static str, HeaderValue)>,
    body: Bytes,
}

impl Outgoing {
    fn of(state: &AppState, parts: &Parts, key: &str, body: Bytes) -> Outgoing {
        Outgoing::new(
            state,
            &parts.method,
            &parts.uri,
            &parts.headers,
            key.to_string(),
            body,
        )
    }

    /// `what` names the request in logs (the key, or a batch's size).
    pub(super) fn new(
        state: &AppState,
        method: &Method,
        uri: &Uri,
        in_headers: &HeaderMap,
        what: String,
        body: Bytes,
    ) -> Outgoing {
        let mut headers: Vec<(&'static str, HeaderValue)> = CARRIED
            .iter()
            .filter_map(|name| in_headers.get(*name).map(|v| (*name, v.clone())))
            .collect();
        let me = HeaderValue::from_str(state.node_id.as_str())
            .unwrap_or(HeaderValue::from_static("unknown"));
        headers.push((FORWARDED_HEADER, me));
        Outgoing {
            key: what,
            method: method.clone(),
            path_q: uri
                .path_and_query()
                .map_or_else(|| uri.path().to_string(), |p| p.as_str().to_string()),
            headers,
            body,
        }
    }

    /// Sends to the owners in turn until one answers (for a read: answers
    /// other than 404, else the last 404); `Err` when none answered.
    async fn send(
        &self,
        state: &AppState,
        owners: &[(NodeId, String)],
        read: bool,
    ) -> Result<Response, String> {
        self.send_reply(state, owners, read).await.map(response_of)
    }

    /// [`Outgoing::send`], with the owner's answer as it came.
    pub(super) async fn send_reply(
        &self,
        state: &AppState,
        owners: &[(NodeId, String)],
        read: bool,
    ) -> Result<crate::client::Reply, String> {
        let Some(client) = state.forwarder.as_ref() else {
            return Err("this node has no forwarding client".into());
        };
        if owners.is_empty() {
            return Err("no owner is known to be reachable".into());
        }
        let mut miss: Option<crate::client::Reply> = None;
        let mut last_err = String::new();
        for (owner, base) in owners {
            let url = format!("{base}{}", self.path_q);
            let mut b = hyper::Request::builder()
                .method(self.method.clone())
                .uri(&url);
            for (name, value) in &self.headers {
                b = b.header(*name, value.clone());
            }
            let Ok(fwd) = b.body(Full::new(self.body.clone())) else {
                continue;
            };
            match client.forward(fwd, &url).await {
                Ok(reply) => {
                    state.metrics.forwarded.inc();
                    tracing::debug!(node = %state.node_id, owner = %owner, key = %self.key,
                        status = %reply.status, "request forwarded");
                    if read && reply.status == StatusCode::NOT_FOUND {
                        miss = Some(reply);
                        continue;
                    }
                    return Ok(reply);
                }
                Err(e) => {
                    tracing::warn!(node = %state.node_id, owner = %owner, key = %self.key,
                        error = %e, "owner unreachable; trying the next");
                    last_err = e.to_string();
                }
            }
        }
        miss.ok_or(last_err)
    }
}

fn response_of(reply: crate::client::Reply) -> Response {
    let mut resp = Response::new(Body::from(reply.body));
    *resp.status_mut() = reply.status;
    for (name, value) in reply.headers.iter() {
        if !is_hop_by_hop(name) {
            resp.headers_mut().append(name.clone(), value.clone());
        }
    }
    resp
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "transfer-encoding" | "content-length" | "upgrade"
    )
}
