//! Cluster views: membership and per-peer replication state.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::AppState;

/// `GET /api/membership`: this node and every known peer with its status,
/// address, last contact, RTT and failure-detector value.
pub async fn membership(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let Some(view) = state.cluster.as_ref().map(|w| w.borrow().clone()) else {
        return Ok(Json(json!({
            "node_id": state.node_id.as_str(),
            "clustered": false,
            "members": [],
        })));
    };
    let alive = view
        .members
        .iter()
        .filter(|m| m.status == crate::membership::Status::Alive)
        .count();
    Ok(Json(json!({
        "node_id": state.node_id.as_str(),
        "clustered": true,
        "self": view.me,
        "alive_peers": alive,
        "members": view.members,
    })))
}

/// `GET /api/sync`: per-peer replication state and the last anti-entropy
/// sessions, plus transport queues (what `hub inspect --node URL sync` shows).
pub async fn sync(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let Some(view) = state.cluster.as_ref().map(|w| w.borrow().clone()) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_clustered",
            "this node runs alone (no --listen); there is no replication state",
        ));
    };
    Ok(Json(json!({
        "node_id": state.node_id.as_str(),
        "version_vector": state.store.version_vector(),
        "replication": view.replication,
        "transport": view.transport,
    })))
}
