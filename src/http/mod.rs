//! The HTTP API (axum). Every write goes through the committer and is
//! answered only after it is durable; reads go straight to the store.
//! Errors are JSON (see [`error`]).

pub mod api;
pub mod auth;
pub mod batch;
pub mod canned;
mod cluster;
pub mod dashboard;
pub mod error;
pub mod forward;
pub mod keys;
pub mod kv;
pub mod quorum;
pub mod ready;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod watch;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use crate::metrics::Metrics;
use crate::model::NodeId;
use crate::store::commit::Committer;
use crate::store::Store;

/// Response header carrying an entry's version, `<hlc>@<node>`.
pub const VERSION_HEADER: &str = "x-hub-version";
/// Response header: replicas, this node included, that hold a write
/// durably or answered a read (see [`quorum`]).
pub const ACKS_HEADER: &str = "x-hub-acks";

/// What every handler can reach.
pub struct Shared {
    pub node_id: NodeId,
    pub store: Arc<Store>,
    pub committer: Committer,
    pub metrics: Arc<Metrics>,
    pub max_value_bytes: usize,
    pub max_batch_bytes: usize,
    /// Most sensors one `GET /api/state` returns.
    pub state_limit: usize,
    /// Log records one history request may scan.
    pub history_scan_limit: usize,
    /// Cluster snapshots, when the node is clustered.
    pub cluster: Option<tokio::sync::watch::Receiver<std::sync::Arc<crate::cluster::ClusterView>>>,
    /// Write and read quorums (`?w=`, `?r=`), when the node is clustered.
    pub quorum: Option<crate::cluster::quorum::QuorumClient>,
    /// Every background mechanism's status.
    pub workers: Arc<crate::workers::Workers>,
    /// The API key table when `auth` is on; `None` serves without tokens.
    pub keys: Option<Arc<crate::auth::KeyTable>>,
    /// This node's advertised client URL.
    pub http_url: String,
    /// The change streams' fan-out (`/api/watch`).
    pub changes: Arc<watch::ChangeHub>,
    /// Partition owners, when clustered: requests for keys this node does
    /// not store are forwarded to an owner.
    pub placement: Option<Arc<crate::placement::PlacementHandle>>,
    /// The client forwarded requests go out with.
    pub forwarder: Option<crate::client::Client>,
}

pub type AppState = Arc<Shared>;

pub fn router(state: AppState) -> Router {
    let kv_routes = Router::new()
        .route(
            "/kv",
            get(kv::list)
                .post(batch::write)
                .layer(DefaultBodyLimit::max(state.max_batch_bytes)),
        )
        .route(
            "/kv/",
            get(kv::empty_key)
                .put(kv::empty_key)
                .post(kv::empty_key)
                .delete(kv::empty_key),
        )
        .route(
            "/kv/{*key}",
            get(kv::get)
                .put(kv::put)
                .post(kv::create)
                .delete(kv::delete),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            forward::to_owner,
        ))
        .layer(DefaultBodyLimit::max(state.max_value_bytes));
    let api_routes = Router::new()
        .route("/", get(dashboard::index))
        .route("/dashboard/app.js", get(dashboard::app_js))
        .route("/dashboard/style.css", get(dashboard::style_css))
        .route("/health", get(api::health))
        .route("/ready", get(ready::ready))
        .route("/metrics", get(api::metrics))
        .route("/api/state", get(api::state))
        .route("/api/updates", get(api::updates))
        .route("/api/watch", get(watch::watch))
        .route(
            "/api/readings",
            post(api::readings).layer(DefaultBodyLimit::max(state.max_batch_bytes)),
        )
        .route("/api/sensors/{origin}/{sensor}/history", get(api::history))
        .route("/api/introspection", get(api::introspection))
        .route("/api/membership", get(cluster::membership))
        .route("/api/sync", get(cluster::sync))
        .route("/api/merkle", get(api::merkle))
        .route("/api/snapshot", get(snapshot::snapshot))
        .route("/api/entry/{*key}", get(api::entry))
        .route("/api/keys", get(keys::list).post(keys::create))
        .route("/api/keys/{id}", axum::routing::delete(keys::revoke));
    Router::new()
        .merge(kv_routes)
        .merge(api_routes)
        .fallback(error::route_not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::gate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_responses,
        ))
        .with_state(state)
}

/// Counts responses by status class, and 4xx as rejected inputs; times
/// each request under its route template (`unmatched` when no route
/// matched, so probes of random paths cannot grow the label set).
async fn count_responses(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    state.metrics.count_status(status);
    state
        .metrics
        .observe_request(&route, status, started.elapsed().as_secs_f64());
    resp
}
