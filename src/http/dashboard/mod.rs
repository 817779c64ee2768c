//! `GET /`: the operator's dashboard, built into the binary.
//!
//! Three static files (HTML, CSS, vanilla JS) compiled in with
//! `include_str!`: no CDN, no npm, no build step, so it works offline and
//! over HTTPS from the node itself. The page is public (it holds no data);
//! every figure it shows comes from the API with the tab's token (asked
//! once, kept in `sessionStorage`), sent as an `Authorization` header — the
//! change stream is read with `fetch()` rather than `EventSource` so the
//! token never goes into a URL.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

pub const INDEX_HTML: &str = include_str!("index.html");
pub const APP_JS: &str = include_str!("app.js");
pub const STYLE_CSS: &str = include_str!("style.css");

/// Every asset the page loads, with its path: what the page-weight
/// benchmark adds up.
pub const ASSETS: [(&str, &str); 3] = [
    ("/", INDEX_HTML),
    ("/dashboard/app.js", APP_JS),
    ("/dashboard/style.css", STYLE_CSS),
];

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'"),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

pub async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}
