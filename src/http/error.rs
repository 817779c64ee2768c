//! The one error shape of the HTTP API: `{"error": {"code", "message"}}`,
//! also for axum's own rejections (bad JSON, bad query, bad path, body too
//! large), unknown routes and wrong methods.

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::store::commit::CommitError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 413 for a body the body limit stopped reading: names the limit and
    /// the setting that raises it.
    pub fn over_limit(code: &'static str, what: &str, limit: usize, setting: &str) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            code,
            format!("the {what} is larger than the limit of {limit} bytes (setting {setting})"),
        )
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

/// The JSON body of a batch route; a body over the limit names the limit
/// and its setting.
pub fn batch_body<T>(
    state: &super::AppState,
    body: Result<Json<T>, JsonRejection>,
) -> Result<T, ApiError> {
    match body {
        Ok(Json(b)) => Ok(b),
        // The body limit stopped reading.
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::over_limit(
            "body_too_large",
            "body",
            state.max_batch_bytes,
            "max_batch_bytes",
        )),
        Err(r) => Err(r.into()),
    }
}

impl From<JsonRejection> for ApiError {
    /// Every malformed body is a 400 (axum would say 422 or 415 for some).
    fn from(r: JsonRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            // Only the batch routes (POST /api/readings, POST /kv) take large JSON bodies.
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "{}: the body is larger than the limit (setting max_batch_bytes)",
                    r.body_text()
                ),
            );
        }
        ApiError::bad_request("bad_json", r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_query", r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_path", r.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        let status = r.status();
        // Only /kv takes a raw body; its limit is max_value_bytes.
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(
                status,
                "value_too_large",
                format!(
                    "{}: the value is larger than the limit (setting max_value_bytes)",
                    r.body_text()
                ),
            );
        }
        ApiError::new(status, "bad_body", r.body_text())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store_error",
            e.to_string(),
        )
    }
}

impl From<CommitError> for ApiError {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Stopped => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                e.to_string(),
            ),
            CommitError::Fenced(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "recovering", e.to_string())
            }
            CommitError::ValueTooLarge { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "value_too_large",
                e.to_string(),
            ),
            CommitError::Clock(ref r) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, r.code, e.to_string())
            }
            CommitError::Store(_) => {
                tracing::error!(error = %e, "commit failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "store_error",
                    e.to_string(),
                )
            }
        }
    }
}

pub async fn route_not_found() -> ApiError {
    ApiError::not_found("no such route; see the README for the API")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

pub type ApiResult<T> = Result<T, ApiError>;
