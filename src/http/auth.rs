//! The gate in front of every route: URI length, then (with `auth` on) the
//! bearer token, the role the route needs, and the key's prefix.
//!
//! 401 with `WWW-Authenticate: Bearer` for a missing, malformed, unknown or
//! revoked token; 403 for a valid token without the role, or a
//! prefix-limited key on a node-wide view. Per-key prefix checks happen in
//! the handlers through [`Scope`], since only they know the decoded key.
//! Tokens are never logged: failures log the reason and the route only.

use std::convert::Infallible;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::auth::{policy, Access, Failure};

/// Longest accepted request target (path and query), in bytes: a key is at
/// most 1 KiB, 3 KiB percent-encoded.
pub const MAX_URI_BYTES: usize = 8 << 10;

/// The keys a request may touch: everything, or those under a prefix.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    pub prefix: Option<String>,
}

impl Scope {
    pub fn allows(&self, key: &str) -> bool {
        self.prefix.as_deref().is_none_or(|p| key.starts_with(p))
    }

    /// 403 unless `key` is within the scope.
    pub fn check(&self, key: &str) -> ApiResult<()> {
        match &self.prefix {
            Some(p) if !key.starts_with(p.as_str()) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("this API key is limited to keys under {p:?}"),
            )),
            _ => Ok(()),
        }
    }

    /// The prefix a listing asked for `requested` should scan: the request
    /// narrowed to the scope, or `None` when they do not overlap.
    pub fn narrow(&self, requested: &str) -> Option<String> {
        match &self.prefix {
            None => Some(requested.to_string()),
            Some(p) if requested.starts_with(p.as_str()) => Some(requested.to_string()),
            Some(p) if p.starts_with(requested) => Some(p.clone()),
            Some(_) => None,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Scope {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Scope, Infallible> {
        Ok(parts.extensions.get::<Scope>().cloned().unwrap_or_default())
    }
}

fn bearer(headers: &HeaderMap) -> Result<&str, Failure> {
    let value = headers.get(header::AUTHORIZATION).ok_or(Failure::Missing)?;
    let text = value.to_str().map_err(|_| Failure::Malformed)?;
    let (scheme, token) = text.split_once(' ').ok_or(Failure::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Failure::Malformed);
    }
    Ok(token.trim())
}

fn unauthorized(f: Failure) -> Response {
    if f == Failure::Unavailable {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "auth_unavailable",
            "the API key table cannot be read; see the node's log",
        )
        .into_response();
    }
    let message = match f {
        Failure::Missing => "this node requires an API key: send Authorization: Bearer TOKEN",
        Failure::Malformed => "the Authorization header is not Bearer followed by a hub token",
        _ => "unknown or revoked API key",
    };
    let challenge = match f {
        Failure::Missing => r#"Bearer realm="hub""#,
        _ => r#"Bearer realm="hub", error="invalid_token""#,
    };
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    resp
}

pub async fn gate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let target_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target_len > MAX_URI_BYTES {
        state.metrics.http_refused("uri_too_long");
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("request target is {target_len} bytes; the limit is {MAX_URI_BYTES}"),
        )
        .into_response();
    }
    let Some(table) = &state.keys else {
        return next.run(req).await;
    };
    let (role, node_wide) = match policy::required(req.method(), req.uri().path()) {
        Access::Public => return next.run(req).await,
        Access::Role { role, node_wide } => (role, node_wide),
    };
    let principal = match bearer(req.headers()).and_then(|t| table.check(t)) {
        Ok(p) => p,
        Err(f) => {
            state.metrics.http_auth_failure(f.reason());
            tracing::debug!(reason = f.reason(), method = %req.method(), path = %req.uri().path(), "request refused: not authenticated");
            return unauthorized(f);
        }
    };
    if principal.role < role {
        state.metrics.http_auth_failure("forbidden_role");
        tracing::debug!(key = %principal.id, role = %principal.role, needs = %role, path = %req.uri().path(), "request refused: role");
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this route needs a {role} key; this key's role is {}",
                principal.role
            ),
        )
        .into_response();
    }
    if node_wide && principal.prefix.is_some() {
        state.metrics.http_auth_failure("forbidden_prefix");
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a prefix-limited API key reads and writes its keys only, not node-wide views",
        )
        .into_response();
    }
    req.extensions_mut().insert(Scope {
        prefix: principal.prefix.clone(),
    });
    let resp = next.run(req).await;
    if resp.status() == StatusCode::FORBIDDEN {
        // A handler's Scope::check: a key outside the token's prefix.
        state.metrics.http_auth_failure("forbidden_prefix");
    }
    resp
}
