//! `GET /api/watch?prefix=P[&since=CURSOR]`: a Server-Sent Events stream of
//! every change applied on this node (local writes, replicated deltas and
//! anti-entropy repairs), in apply order.
//!
//! Guarantees: each event's `id:` is its `/api/updates` cursor (see
//! [`super::api::cursor_of`]); a stream resumed with `since=` or
//! `Last-Event-ID` continues right after that change, with no gap and no
//! repeat, and `since=0` replays everything the node still holds. Only
//! durable changes are sent. Writes never wait for watchers: one reader
//! task ([`ChangeHub`]) follows the feed after each flush and renders each
//! change's frame once. Watchers are grouped by prefix: per group, the hub
//! concatenates the matching frames of a step into one shared buffer and
//! broadcasts it into a bounded ring, so a watcher is woken only when its
//! prefix changed, and sends what it is handed without copying or
//! filtering. A watcher that falls a full ring behind is cut off with a last
//! `event: cutoff` naming the cursor to resume from. A watcher that starts
//! behind (or hits a gap) reads the store until it has caught up, then
//! follows its group's ring.
//!
//! Costs: one store read per change for the node, one frame per change
//! some watcher wants (none with no watcher), one prefix check per change
//! per distinct prefix; per watcher, one wake-up and one
//! socket write per step that has a change for it. Under load the hub takes
//! a step at most every [`step`] (1 ms, up to 5 ms with 100 watchers or
//! more), so many commit groups share one wake-up and one write per
//! watcher: a change's event may wait that much longer. Memory is bounded by the rings (`RING` steps per
//! prefix), whatever the number or speed of watchers.

use crate::store::commit::wall_ms;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use super::api::{change_json, cursor_of};
use super::auth::Scope;
use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::clock::ClockGate;
use crate::metrics::Metrics;
use crate::model::{is_internal, NodeId};
use crate::store::{Change, Store};

/// Changes read from the store per step (reader task and catching-up watchers).
const READ_BATCH: usize = 512;
/// Steps a group's ring holds; a watcher further behind is cut off.
const RING: usize = 256;
/// Under load, the shortest time between two steps of the hub: each step
/// costs one socket write per watcher that has a change in it (on loopback
/// ~10 µs of the node's CPU, most of it in the kernel), so the more
/// watchers, the more commit groups a step gathers, up to 5 ms for 100.
pub fn step(watchers: usize) -> Duration {
    Duration::from_micros((watchers as u64 * 50).clamp(1_000, 5_000))
}
/// A comment line this often keeps proxies from closing a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One change. Its frame (`id: …\ndata: {…}\n\n`) is rendered once, for
/// every watcher, and only if some watcher's prefix wants it: with no
/// watcher a change costs no JSON at all.
struct Event {
    /// Its position in the feed.
    idx: u64,
    change: Change,
}

/// What one prefix group gets from one step of the hub.
#[derive(Debug)]
pub struct Batch {
    /// Feed positions covered: every change at `start..end` that matches the
    /// group's prefix is in `bytes`.
    pub start: u64,
    pub end: u64,
    /// The matching frames, concatenated: what a watcher at `start` sends.
    pub bytes: Bytes,
    /// Feed position and offset in `bytes` of each frame, to cut the part
    /// a watcher already past `start` still wants.
    pub marks: Vec<(u64, usize)>,
}

impl Batch {
    /// The frames at positions `from..` and how many there are.
    fn frames_from(&self, from: u64) -> (Bytes, u64) {
        let i = self.marks.partition_point(|(idx, _)| *idx < from);
        let n = (self.marks.len() - i) as u64;
        match self.marks.get(i) {
            Some((_, 0)) => (self.bytes.clone(), n),
            Some((_, at)) => (self.bytes.slice(*at..), n),
            None => (Bytes::new(), 0),
        }
    }
}

/// The watchers of one prefix.
struct Group {
    tx: broadcast::Sender<Arc<Batch>>,
    /// Feed position up to which this group has been sent everything it
    /// wants (the next batch it gets starts here).
    sent: u64,
}

/// Follows the store's change feed and fans it out to watchers.
pub struct ChangeHub {
    /// By prefix. Also guards `published` moving, so a watcher subscribing
    /// sees a position and a ring that agree.
    groups: Mutex<HashMap<String, Group>>,
    /// Feed position up to which changes have been handed to the groups.
    published: AtomicU64,
    stop: watch::Receiver<bool>,
}

/// The SSE frame of the change at feed position `idx`.
fn frame(idx: u64, c: &Change) -> Bytes {
    let cursor = cursor_of(idx);
    let data = change_json(cursor, c);
    Bytes::from(format!("id: {cursor}\ndata: {data}\n\n"))
}

/// Reads the feed from position `next` on the blocking pool.
async fn read(store: &Arc<Store>, next: u64) -> Result<Vec<(u64, Change)>, String> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.changes(next.checked_sub(1), READ_BATCH))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
}

impl ChangeHub {
    /// Starts the reader task; it ends when `stop` turns true.
    /// `clock` gives the peers' measured clock offsets, by which the
    /// replication delay of their deltas is corrected.
    pub fn start(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        clock: ClockGate,
        node: NodeId,
        stop: watch::Receiver<bool>,
    ) -> (Arc<ChangeHub>, JoinHandle<()>) {
        let mut tip = store.feed_tip();
        let start = *tip.borrow_and_update();
        let hub = Arc::new(ChangeHub {
            groups: Mutex::new(HashMap::new()),
            published: AtomicU64::new(start),
            stop: stop.clone(),
        });
        let task = tokio::spawn(hub.clone().follow(store, metrics, clock, node, tip, stop));
        (hub, task)
    }

    /// Feed position up to which changes have been broadcast.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    /// Open streams.
    fn watchers(&self) -> usize {
        self.groups().values().map(|g| g.tx.receiver_count()).sum()
    }

    fn groups(&self) -> std::sync::MutexGuard<'_, HashMap<String, Group>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins the group of `prefix`; the ring and the position it starts at.
    fn subscribe(&self, prefix: &str) -> (broadcast::Receiver<Arc<Batch>>, u64) {
        let mut groups = self.groups();
        let published = self.published();
        let g = groups.entry(prefix.to_string()).or_insert_with(|| Group {
            tx: broadcast::channel(RING).0,
            sent: published,
        });
        (g.tx.subscribe(), published)
    }

    /// Hands the changes at `start..end` to every group with a watcher.
    fn publish(&self, events: &[Event], end: u64) {
        let mut groups = self.groups();
        groups.retain(|_, g| g.tx.receiver_count() > 0);
        let mut frames: Vec<Option<Bytes>> =
            vec![None; if groups.is_empty() { 0 } else { events.len() }];
        for (prefix, g) in groups.iter_mut() {
            let mut bytes = BytesMut::new();
            let mut marks = Vec::new();
            for (e, f) in events.iter().zip(frames.iter_mut()) {
                if e.idx >= g.sent && e.change.key.starts_with(prefix.as_str()) {
                    marks.push((e.idx, bytes.len()));
                    bytes.extend_from_slice(f.get_or_insert_with(|| frame(e.idx, &e.change)));
                }
            }
            // Nothing for this group: its next batch covers this step too.
            if marks.is_empty() {
                continue;
            }
            let batch = Batch {
                start: g.sent,
                end,
                bytes: bytes.freeze(),
                marks,
            };
            g.sent = end;
            // Every receiver may have gone since `retain`: nothing to do.
            let _ = g.tx.send(Arc::new(batch));
        }
        self.published.store(end, Ordering::Release);
    }

    async fn follow(
        self: Arc<Self>,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        clock: ClockGate,
        node: NodeId,
        mut tip: watch::Receiver<u64>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut next = self.published();
        let mut last_step = tokio::time::Instant::now();
        loop {
            tokio::select! {
                r = tip.changed() => if r.is_err() { break },
                _ = stop.wait_for(|s| *s) => break,
            }
            // When the changes became durable (for the replication delay).
            let durable_ms = wall_ms();
            // Commit groups that land within one step share it.
            let step = step(self.watchers());
            tokio::select! {
                _ = tokio::time::sleep_until(last_step + step) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            last_step = tokio::time::Instant::now();
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
                let full = changes.len() == READ_BATCH;
                let mut events = Vec::with_capacity(changes.len());
                let mut offsets: Option<HashMap<String, f64>> = None;
                for (idx, c) in changes {
                    if let Some((origin, _)) = &c.origin {
                        if *origin != node {
                            let offsets = offsets.get_or_insert_with(|| peer_offsets(&clock));
                            metrics.observe_applied(
                                origin.as_str(),
                                c.entry.version.hlc.physical_ms(),
                                durable_ms,
                                offsets.get(origin.as_str()).copied(),
                            );
                        }
                    }
                    if !is_internal(&c.key) {
                        events.push(Event { idx, change: c });
                    }
                }
                next = last + 1;
                self.publish(&events, next);
                if !full {
                    break;
                }
            }
        }
    }
}

/// Each measured peer's clock minus ours, in ms.
fn peer_offsets(clock: &ClockGate) -> HashMap<String, f64> {
    clock.verdict().map_or_else(HashMap::new, |v| {
        v.peers.into_iter().map(|p| (p.peer, p.offset_ms)).collect()
    })
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
    // Join the ring before deciding where to start, so nothing published
    // from here on can be missed. A cursor is the feed position right after
    // its change, so it is where a resumed stream starts.
    let (rx, published) = hub.subscribe(&prefix);
    let w = Watcher {
        store: state.store.clone(),
        metrics: state.metrics.clone(),
        rx,
        next: since.unwrap_or(published),
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
    fn wanted(&self, key: &str) -> bool {
        key.starts_with(self.prefix.as_str()) && !is_internal(key)
    }

    /// The last event: where to resume, and why the stream ends.
    fn cutoff(&mut self, reason: &str) -> Bytes {
        self.done = true;
        self.metrics.watch_cutoffs.inc();
        let resume = self.next;
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
            // Further batches already in the ring are taken by the next
            // calls; hyper buffers every chunk that is ready before it
            // writes to the socket, so they share one write.
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
            let (bytes, n) = batch.frames_from(self.next);
            self.next = batch.end;
            if n > 0 {
                self.metrics.watch_events.inc_by(n);
                return Some(bytes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_watchers_make_longer_steps_within_bounds() {
        assert_eq!(step(0), Duration::from_millis(1));
        assert_eq!(step(1), Duration::from_millis(1));
        assert_eq!(step(40), Duration::from_millis(2));
        assert_eq!(step(100), Duration::from_millis(5));
        assert_eq!(step(10_000), Duration::from_millis(5));
    }

    #[test]
    fn a_batch_is_cut_at_the_first_frame_a_watcher_still_wants() {
        let b = Batch {
            start: 10,
            end: 20,
            bytes: Bytes::from_static(b"aaabbcccc"),
            marks: vec![(11, 0), (14, 3), (19, 5)],
        };
        assert_eq!(b.frames_from(10), (Bytes::from_static(b"aaabbcccc"), 3));
        assert_eq!(b.frames_from(12), (Bytes::from_static(b"bbcccc"), 2));
        assert_eq!(b.frames_from(19), (Bytes::from_static(b"cccc"), 1));
        assert_eq!(b.frames_from(20), (Bytes::new(), 0));
    }
}
