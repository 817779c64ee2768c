//! `/api/keys`: API key management on a running node (admin only). Keys are
//! records in the internal keyspace, committed like any write, so they
//! replicate to every node.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::auth::keys::{self, KeyError, NewKey};
use crate::store::commit::wall_ms;
use crate::store::Outcome;

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Store(s) => s.into(),
            KeyError::NotFound(_) => ApiError::not_found(e.to_string()),
            KeyError::Corrupt { .. } => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "store_error",
                e.to_string(),
            ),
            _ => ApiError::bad_request("bad_key_request", e.to_string()),
        }
    }
}

/// `GET /api/keys`: active keys (id, name, role, prefix, created), never tokens.
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    let store = state.store.clone();
    let keys = tokio::task::spawn_blocking(move || keys::list(&store))
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })??;
    Ok(Json(json!({ "keys": keys })))
}

/// `POST /api/keys` `{"role", "prefix"?, "name"?}`: 201 with the token,
/// shown this once.
pub async fn create(
    State(state): State<AppState>,
    body: Result<Json<NewKey>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(new) = body?;
    let (token, record, op) = new.mint(wall_ms())?;
    match state.committer.commit(vec![op]).await?.pop() {
        Some(Outcome::Written(_)) => {
            tracing::info!(key = %record.id, role = %record.role, prefix = record.prefix.as_deref().unwrap_or(""), "API key created");
            let mut body = serde_json::to_value(record.public()).map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?;
            body["token"] = json!(token.reveal());
            Ok((StatusCode::CREATED, Json(body)).into_response())
        }
        _ => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store_error",
            "the key was not stored (id collision); try again",
        )),
    }
}

/// `DELETE /api/keys/{id}`: revoke; 204, or 404 if unknown or already revoked.
pub async fn revoke(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let Path(id) = path?;
    let op = keys::revoke_op(&id)?;
    match state.committer.commit(vec![op]).await?.pop() {
        Some(Outcome::Written(_)) => {
            tracing::info!(key = %id, "API key revoked");
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        _ => Err(KeyError::NotFound(id).into()),
    }
}
