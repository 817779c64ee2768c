//! The HTTP(S) accept loop, with abuse limits.
//!
//! What it bounds, and why:
//! - **Connections**: at most `max_connections` at once, and never more than
//!   the process's file-descriptor limit minus a reserve, so the store, the
//!   QUIC socket and peers always have descriptors left (a flood of idle
//!   sockets once made replicated writes fail with "Too many open files").
//! - **Idle sockets cannot lock others out**: when the cap is reached, the
//!   connection that has been idle longest (no request in flight: fresh,
//!   between keep-alive requests, or still dribbling its request head) is
//!   closed to make room. A client that is being answered is never cut.
//! - **Time**: the TLS handshake and each request head must arrive within
//!   `header_read_timeout`; a connection with no request in flight for
//!   `idle_timeout` is closed.
//! - **Size**: a request head above `max_header_bytes` is refused (431);
//!   bodies are bounded per route by the router. hyper's own refusals are
//!   rewritten to the API's JSON error shape ([`super::canned`]).
//!
//! Costs: one semaphore permit and one small slot per connection; finding
//! an eviction victim scans the slot table (≤ `max_connections` entries)
//! only when the cap is hit.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower_service::Service;

use super::canned::JsonErrors;
use crate::config::HttpLimits;
use crate::metrics::Metrics;

/// Descriptors kept free for everything but HTTP clients: at least this
/// many, or a quarter of the limit when that is more.
const FD_RESERVE: u64 = 256;
/// How long a new connection waits for an evicted one to let go.
const EVICTION_WAIT: Duration = Duration::from_millis(500);

/// Raises the soft descriptor limit to the hard one where allowed and
/// returns the soft limit now in force (`None` if it cannot be read).
pub fn fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        Some(lim.rlim_cur)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The connection cap given the configured one and the descriptor limit.
pub fn connection_cap(configured: usize, fd_limit: Option<u64>) -> usize {
    match fd_limit {
        Some(fds) => {
            let reserve = FD_RESERVE.max(fds / 4);
            let room = fds.saturating_sub(reserve).max(16) as usize;
            configured.min(room)
        }
        None => configured,
    }
}

/// One open connection, as the accept loop sees it.
struct Slot {
    /// Requests being handled right now.
    busy: AtomicUsize,
    /// Milliseconds since the server started at the last request start or end.
    last_active_ms: AtomicU64,
    /// Chosen for eviction (so two accepts do not pick the same victim).
    evicting: AtomicBool,
    evict: Notify,
}

struct Ctx {
    router: Router,
    tls: Option<TlsAcceptor>,
    limits: HttpLimits,
    metrics: Arc<Metrics>,
    epoch: Instant,
    slots: Mutex<BTreeMap<u64, Arc<Slot>>>,
}

impl Ctx {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Asks the longest-idle connection to close; false if none is idle.
    fn evict_one(&self) -> bool {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let victim = slots
            .values()
            .filter(|s| s.busy.load(Ordering::Acquire) == 0 && !s.evicting.load(Ordering::Acquire))
            .min_by_key(|s| s.last_active_ms.load(Ordering::Relaxed));
        match victim {
            Some(s) => {
                s.evicting.store(true, Ordering::Release);
                s.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves `router` on `listener` until `stop` turns true, then lets
/// in-flight requests finish and returns once every connection is closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    limits: HttpLimits,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let cap = limits.max_connections;
    let permits = Arc::new(Semaphore::new(cap));
    let ctx = Arc::new(Ctx {
        router,
        tls,
        limits,
        metrics,
        epoch: Instant::now(),
        slots: Mutex::new(BTreeMap::new()),
    });
    let mut next_id: u64 = 0;
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let evicted = ctx.evict_one();
                let waited = if evicted {
                    tokio::time::timeout(EVICTION_WAIT, permits.clone().acquire_owned())
                        .await
                        .ok()
                        .and_then(Result::ok)
                } else {
                    None
                };
                match waited {
                    Some(p) => p,
                    None => {
                        ctx.metrics.http_refused("connection_limit");
                        tracing::warn!(peer = %peer, cap, "HTTP connection refused: every connection is busy");
                        continue;
                    }
                }
            }
        };
        let _ = stream.set_nodelay(true);
        next_id += 1;
        let id = next_id;
        let slot = Arc::new(Slot {
            busy: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(ctx.now_ms()),
            evicting: AtomicBool::new(false),
            evict: Notify::new(),
        });
        ctx.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, slot.clone());
        let ctx2 = ctx.clone();
        let stop2 = stop.clone();
        tokio::spawn(async move {
            ctx2.metrics.http_connections.inc();
            connection(&ctx2, stream, peer, &slot, stop2).await;
            ctx2.metrics.http_connections.dec();
            ctx2.slots
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            drop(permit);
        });
    }
    // Every connection holds a permit until it is closed.
    let _ = permits.acquire_many(cap as u32).await;
}

async fn connection(
    ctx: &Arc<Ctx>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    slot: &Arc<Slot>,
    stop: watch::Receiver<bool>,
) {
    let head_timeout = ctx.limits.header_timeout;
    match &ctx.tls {
        None => http(ctx, stream, slot, stop).await,
        Some(acceptor) => {
            let mut stop_handshake = stop.clone();
            let handshake = tokio::select! {
                r = tokio::time::timeout(head_timeout, acceptor.accept(stream)) => r,
                _ = slot.evict.notified() => {
                    ctx.metrics.http_refused("evicted_idle");
                    return;
                }
                _ = stopped(&mut stop_handshake) => return,
            };
            match handshake {
                Ok(Ok(tls)) => http(ctx, tls, slot, stop).await,
                Ok(Err(e)) => {
                    ctx.metrics.http_refused("tls_handshake");
                    tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    ctx.metrics.http_refused("header_timeout");
                    tracing::debug!(peer = %peer, "TLS handshake timed out");
                }
            }
        }
    }
}

/// Marks a request in flight on its connection for as long as it lives.
struct Busy {
    slot: Arc<Slot>,
    epoch: Instant,
}

impl Busy {
    fn new(slot: Arc<Slot>, epoch: Instant) -> Busy {
        slot.busy.fetch_add(1, Ordering::AcqRel);
        slot.last_active_ms
            .store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        Busy { slot, epoch }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.slot
            .last_active_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.slot.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn http<IO>(ctx: &Arc<Ctx>, io: IO, slot: &Arc<Slot>, mut stop: watch::Receiver<bool>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(JsonErrors::new(
        io,
        ctx.metrics.clone(),
        ctx.limits.max_header_bytes,
    ));
    let router = ctx.router.clone();
    let (svc_slot, epoch) = (slot.clone(), ctx.epoch);
    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let busy = Busy::new(svc_slot.clone(), epoch);
        let mut router = router.clone();
        async move {
            let resp = router.call(req.map(axum::body::Body::new)).await;
            // Busy until the body is sent, not just until the handler
            // returns: a streamed answer (a snapshot, a change stream) is a
            // request in flight, never an idle connection to time out.
            resp.map(|r| {
                r.map(|body| {
                    axum::body::Body::new(http_body_util::BodyExt::map_frame(body, move |f| {
                        let _in_flight = &busy;
                        f
                    }))
                })
            })
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.limits.header_timeout)
        .max_buf_size(ctx.limits.max_header_bytes.max(8192))
        .serve_connection(io, svc);
    tokio::pin!(conn);
    let idle = ctx.limits.idle_timeout;
    let mut draining = false;
    loop {
        let idle_since = slot.last_active_ms.load(Ordering::Relaxed);
        // While a request runs longer than the idle timeout, look again
        // every 100 ms instead of spinning on a deadline in the past.
        let idle_deadline = (ctx.epoch + Duration::from_millis(idle_since) + idle)
            .max(Instant::now() + Duration::from_millis(100));
        let is_idle = || slot.busy.load(Ordering::Acquire) == 0;
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    if e.is_timeout() {
                        ctx.metrics.http_refused("header_timeout");
                    }
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            _ = slot.evict.notified(), if !draining => {
                if is_idle() {
                    ctx.metrics.http_refused("evicted_idle");
                    return;
                }
                slot.evicting.store(false, Ordering::Release);
            }
            _ = tokio::time::sleep_until(idle_deadline.into()), if !draining => {
                let quiet = ctx.now_ms().saturating_sub(slot.last_active_ms.load(Ordering::Relaxed));
                if is_idle() && quiet >= idle.as_millis() as u64 {
                    ctx.metrics.http_refused("idle_timeout");
                    return;
                }
            }
            _ = stopped(&mut stop), if !draining => {
                if is_idle() {
                    return;
                }
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_leaves_descriptors_for_the_store_and_peers() {
        assert_eq!(connection_cap(1024, Some(1024)), 768);
        assert_eq!(connection_cap(1024, Some(65_536)), 1024);
        assert_eq!(connection_cap(100, Some(1024)), 100);
        assert_eq!(connection_cap(1024, Some(300)), 44);
        assert_eq!(connection_cap(1024, None), 1024);
    }
}
