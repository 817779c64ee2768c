//! `GET /api/watch?prefix=P[&since=CURSOR]`: a Server-Sent Events stream of
//! every change applied on this node (local writes, replicated deltas and
//! anti-entropy repairs), in apply order.
//!
//! Guarantees: each event's `id:` is its position in the persisted change
//! feed (the `/api/updates` cursor); a stream resumed with `since=` or
//! `Last-Event-ID` continues after that position with no gap (`since=0`
//! replays everything the node still holds, the change at cursor 0
//! included). Only durable changes are sent. Writes never wait for
//! watchers: one reader task ([`ChangeHub`]) follows the feed after each
//! flush, renders each change's frame once, and broadcasts the batch into a
//! bounded ring; a watcher that falls a full ring behind is cut off with a
//! last `event: cutoff` naming the cursor to resume from. A watcher that
//! starts behind (or hits a gap) reads the store until it has caught up,
//! then follows the ring.
//!
//! Costs: one store read per flush for the node (not per watcher); per
//! watcher, one prefix check per change and a copy of the matching frames.
//! Memory is bounded by the ring (`RING` batches of at most `READ_BATCH`
//! changes), whatever the number or speed of watchers.

use crate::store::commit::wall_ms;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use super::api::change_json;
use super::auth::Scope;
use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::metrics::Metrics;
use crate::model::{is_internal, NodeId};
use crate::store::{Change, Store};

/// Changes read from the store per step (reader task and catching-up watchers).
const READ_BATCH: usize = 512;
/// Batches the ring holds; a watcher further behind is cut off.
const RING: usize = 256;
/// A watcher's chunk stops growing past this many bytes.
const MAX_CHUNK: usize = 256 << 10;
/// A comment line this often keeps proxies from closing a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One change, rendered once for every watcher.
#[derive(Debug)]
pub struct Event {
    pub idx: u64,
    pub key: String,
    /// `id: …\ndata: {…}\n\n`.
    pub frame: Bytes,
}

/// The changes at feed positions `start..end` (internal keys left out).
#[derive(Debug)]
pub struct Batch {
    pub start: u64,
    pub end: u64,
    pub events: Vec<Event>,
}

/// Follows the store's change feed and fans it out to watchers.
pub struct ChangeHub {
    tx: broadcast::Sender<Arc<Batch>>,
    /// Feed position up to which batches have been broadcast.
    published: AtomicU64,
    stop: watch::Receiver<bool>,
}

/// The SSE frame of one change.
pub fn frame(idx: u64, c: &Change) -> Bytes {
    let data = change_json(idx, c);
    Bytes::from(format!("id: {idx}\ndata: {data}\n\n"))
}

/// Reads the feed after `next` (a position) on the blocking pool.
async fn read(store: &Arc<Store>, next: u64) -> Result<Vec<(u64, Change)>, String> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.changes(next.checked_sub(1), READ_BATCH))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
}

impl ChangeHub {
    /// Starts the reader task; it ends when `stop` turns true.
    pub fn start(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        node: NodeId,
        stop: watch::Receiver<bool>,
    ) -> (Arc<ChangeHub>, JoinHandle<()>) {
        let mut tip = store.feed_tip();
        let start = *tip.borrow_and_update();
        let hub = Arc::new(ChangeHub {
            tx: broadcast::channel(RING).0,
            published: AtomicU64::new(start),
            stop: stop.clone(),
        });
        let task = tokio::spawn(hub.clone().follow(store, metrics, node, tip, stop));
        (hub, task)
    }

    /// Feed position up to which changes have been broadcast.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    async fn follow(
        self: Arc<Self>,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        node: NodeId,
        mut tip: watch::Receiver<u64>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut next = self.published();
        loop {
            tokio::select! {
                r = tip.changed() => if r.is_err() { break },
                _ = stop.wait_for(|s| *s) => break,
            }
            loop {
                let changes = match read(&store, next).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(node = %node, error = %e, "change stream: reading the feed failed; retrying at the next flush");
                        break;
                    }
                };
                let Some(last) = changes.last().map(|(i, _)| *i) else {
                    break;
                };
                let now = wall_ms();
                let full = changes.len() == READ_BATCH;
                let mut events = Vec::with_capacity(changes.len());
                for (idx, c) in changes {
                    if let Some((origin, _)) = &c.origin {
                        if *origin != node {
                            metrics.observe_applied(
                                origin.as_str(),
                                c.entry.version.hlc.physical_ms(),
                                now,
                            );
                        }
                    }
                    if !is_internal(&c.key) {
                        events.push(Event {
                            idx,
                            frame: frame(idx, &c),
                            key: c.key,
                        });
                    }
                }
                let batch = Batch {
                    start: next,
                    end: last + 1,
                    events,
                };
                next = batch.end;
                // Published before the send: a watcher subscribing now
                // either gets this batch or reads it from the store.
                self.published.store(next, Ordering::Release);
                // No watcher: nothing to do.
                let _ = self.tx.send(Arc::new(batch));
                if !full {
                    break;
                }
            }
        }
    }
}

#[derive(Deserialize)]
/// Unknown parameters are ignored: browsers and proxies add cache-busting ones.
pub struct WatchQuery {
    prefix: Option<String>,
    since: Option<String>,
}

fn cursor(what: &str, s: &str) -> ApiResult<u64> {
    s.trim().parse::<u64>().map_err(|_| {
        ApiError::bad_request(
            "bad_cursor",
            format!("{what} {s:?} is not a cursor this API returned"),
        )
    })
}

/// `GET /api/watch`.
pub async fn watch(
    State(state): State<AppState>,
    scope: Scope,
    headers: HeaderMap,
    q: Result<Query<WatchQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q?;
    let requested = q.prefix.unwrap_or_default();
    let Some(prefix) = scope.narrow(&requested) else {
        // The token's prefix and the request's do not overlap.
        scope.check(&requested)?;
        return Err(ApiError::bad_request("bad_prefix", "no key can match"));
    };
    let resume = match headers.get("last-event-id") {
        Some(v) => Some(cursor(
            "Last-Event-ID",
            v.to_str()
                .map_err(|_| ApiError::bad_request("bad_cursor", "Last-Event-ID is not text"))?,
        )?),
        None => None,
    };
    let since = match (resume, q.since.as_deref()) {
        (Some(c), _) => Some(c),
        (None, None | Some("")) => None,
        (None, Some(s)) => Some(cursor("since", s)?),
    };
    let hub = state.changes.clone();
    // Subscribe before deciding where to start, so nothing published from
    // here on can be missed.
    let rx = hub.tx.subscribe();
    let next = match since {
        None => hub.published(),
        // Cursor 0 is ambiguous between "after change 0" and "from the
        // start"; replaying change 0 again is a repeat, never a gap.
        Some(0) => 0,
        Some(c) => c + 1,
    };
    let w = Watcher {
        store: state.store.clone(),
        metrics: state.metrics.clone(),
        rx,
        next,
        catching_up: since.is_some(),
        prefix,
        stop: hub.stop.clone(),
        keep_alive: tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE),
        done: false,
    };
    state.metrics.watch_streams.inc();
    let stream = futures_util::stream::unfold(w, |mut w| async move {
        w.next_chunk()
            .await
            .map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), w))
    });
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// One watcher's position and filter.
struct Watcher {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    rx: broadcast::Receiver<Arc<Batch>>,
    /// The next feed position this watcher wants.
    next: u64,
    /// Reading the store (behind the ring, or after a gap).
    catching_up: bool,
    prefix: String,
    stop: watch::Receiver<bool>,
    keep_alive: tokio::time::Interval,
    done: bool,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.metrics.watch_streams.dec();
    }
}

impl Watcher {
    /// Appends the frames of `batch` this watcher wants and has not had.
    fn take(&mut self, batch: &Batch, chunk: &mut Vec<u8>, n: &mut u64) {
        let from = self.next;
        self.next = self.next.max(batch.end);
        for e in &batch.events {
            if e.idx >= from && self.wanted(&e.key) {
                chunk.extend_from_slice(&e.frame);
                *n += 1;
            }
        }
    }

    fn wanted(&self, key: &str) -> bool {
        key.starts_with(self.prefix.as_str()) && !is_internal(key)
    }

    /// The last event: where to resume, and why the stream ends.
    fn cutoff(&mut self, reason: &str) -> Bytes {
        self.done = true;
        self.metrics.watch_cutoffs.inc();
        let resume = self.next.saturating_sub(1);
        let data = serde_json::json!({ "resume": resume.to_string(), "reason": reason });
        Bytes::from(format!("event: cutoff\nid: {resume}\ndata: {data}\n\n"))
    }

    /// The next bytes to send; `None` ends the stream.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if self.done || *self.stop.borrow() {
                return None;
            }
            if self.catching_up {
                let changes = match read(&self.store, self.next).await {
                    Ok(c) => c,
                    Err(e) => return Some(self.cutoff(&format!("reading the feed failed: {e}"))),
                };
                let Some(last) = changes.last().map(|(i, _)| *i) else {
                    self.catching_up = false;
                    continue;
                };
                self.next = last + 1;
                let mut chunk = Vec::new();
                let mut n = 0;
                for (idx, c) in &changes {
                    if self.wanted(&c.key) {
                        chunk.extend_from_slice(&frame(*idx, c));
                        n += 1;
                    }
                }
                if n > 0 {
                    self.metrics.watch_events.inc_by(n);
                    return Some(Bytes::from(chunk));
                }
                continue;
            }
            let batch = tokio::select! {
                r = self.rx.recv() => r,
                _ = self.keep_alive.tick() => return Some(Bytes::from_static(b": keep-alive\n\n")),
                _ = self.stop.changed() => return None,
            };
            let batch = match batch {
                Ok(b) => b,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    return Some(self.cutoff(
                        "this watcher fell behind the change feed; reconnect with since=resume",
                    ))
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            if batch.end <= self.next {
                continue;
            }
            if batch.start > self.next {
                // Changes between our position and this batch: from the store.
                self.catching_up = true;
                continue;
            }
            let mut chunk = Vec::new();
            let mut n = 0;
            self.take(&batch, &mut chunk, &mut n);
            // Whatever else is already in the ring goes in the same chunk:
            // one socket write per wake-up, however many groups committed.
            while chunk.len() < MAX_CHUNK {
                match self.rx.try_recv() {
                    Ok(b) if b.start <= self.next => self.take(&b, &mut chunk, &mut n),
                    Ok(_) => {
                        // A gap: send what we have, then read the store.
                        self.catching_up = true;
                        break;
                    }
                    Err(broadcast::error::TryRecvError::Lagged(_)) => {
                        chunk.extend_from_slice(&self.cutoff(
                            "this watcher fell behind the change feed; reconnect with since=resume",
                        ));
                        break;
                    }
                    Err(_) => break,
                }
            }
            if n > 0 || self.done {
                self.metrics.watch_events.inc_by(n);
                return Some(Bytes::from(chunk));
            }
        }
    }
}
