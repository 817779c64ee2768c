//! Per-peer send task: owns the outbound connection to one address.
//!
//! Guarantees: frames are written in queue order on one long-lived
//! unidirectional stream; the task dials lazily (only with something to
//! send), gives each handshake `connect_timeout`, and after a failure waits
//! an exponentially growing, jittered delay (`backoff_min` doubling up to
//! `backoff_max`). Nothing here is awaited by [`super::Transport::send`], so
//! a dead or slow peer stalls only its own queue.
//!
//! Cost: frames written when a connection breaks are lost (QUIC buffered
//! them, we do not re-send); replication's pull and anti-entropy repair that.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use tokio::sync::mpsc;

use super::tls::{self, ANY_NODE};
use super::{Direction, Incoming, PeerCounters, Shared};
use crate::model::NodeId;

/// Frames written per batch (one `write_all_chunks`).
const BATCH: usize = 64;
/// A connection that lived at least this long resets the backoff.
const STABLE: Duration = Duration::from_secs(1);

pub(crate) async fn run<M: Send + 'static>(
    shared: Arc<Shared>,
    addr: SocketAddr,
    mut rx: mpsc::Receiver<Bytes>,
    expect: Option<NodeId>,
    events: mpsc::Sender<Incoming<M>>,
) {
    let counters = shared.counters_for(addr);
    let mut backoff = shared.backoff_min;
    let mut pending: Vec<Bytes> = Vec::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(f) => pending.push(f),
                None => return,
            }
        }
        let want = expect.as_ref();
        let conn = match connect(&shared, addr, want).await {
            Ok(c) => c,
            Err(e) => {
                counters.connect_failures.fetch_add(1, Ordering::Relaxed);
                let retry_in_ms = backoff.as_millis() as u64;
                match want {
                    // No node id to expect: a join address the operator
                    // gave, so an unreachable one is worth a warning.
                    None => {
                        tracing::warn!(node = %shared.node_id, addr = %addr, error = %e, retry_in_ms, "cannot connect to the join address; retrying")
                    }
                    Some(want) => {
                        tracing::info!(node = %shared.node_id, peer = %want, addr = %addr, error = %e, retry_in_ms, "connect failed")
                    }
                }
                counters.set_error(e);
                sleep_backoff(&mut backoff, shared.backoff_max).await;
                continue;
            }
        };
        let Some(peer) = tls::peer_node_id(&conn) else {
            // The verifier guarantees an id; be defensive anyway.
            conn.close(super::codes::NO_IDENTITY.into(), b"no node id");
            sleep_backoff(&mut backoff, shared.backoff_max).await;
            continue;
        };
        let started = Instant::now();
        counters.connects.fetch_add(1, Ordering::Relaxed);
        counters.connected.store(true, Ordering::Relaxed);
        counters.set_node(&peer);
        if let Ok(mut c) = counters.conn.lock() {
            *c = Some(conn.clone());
        }
        tracing::debug!(node = %shared.node_id, peer = %peer, addr = %addr, "outbound connection up");
        let _ = events
            .send(Incoming::Connected {
                peer: peer.clone(),
                addr,
                dir: Direction::Outbound,
            })
            .await;

        let reason = pump(&conn, &mut rx, &mut pending, &counters).await;

        counters.connected.store(false, Ordering::Relaxed);
        if let Ok(mut c) = counters.conn.lock() {
            *c = None;
        }
        if let Some(quinn::ConnectionError::ConnectionClosed(c)) = conn.close_reason() {
            if (0x100..0x200).contains(&u64::from(c.error_code)) {
                // A TLS alert from the peer: it refused our certificate.
                shared
                    .handshakes
                    .refused_by_peer
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        conn.close(super::codes::SHUTDOWN.into(), b"");
        tracing::info!(node = %shared.node_id, peer = %peer, addr = %addr, reason = %reason, "outbound connection lost");
        counters.set_error(reason.clone());
        let _ = events
            .send(Incoming::Disconnected {
                peer,
                addr,
                dir: Direction::Outbound,
                reason,
            })
            .await;
        match rx.try_recv() {
            Ok(f) => pending.push(f),
            Err(mpsc::error::TryRecvError::Disconnected) if pending.is_empty() => return,
            Err(_) => {}
        }
        if started.elapsed() >= STABLE {
            backoff = shared.backoff_min;
        } else {
            sleep_backoff(&mut backoff, shared.backoff_max).await;
        }
    }
}

async fn connect(
    shared: &Shared,
    addr: SocketAddr,
    expect: Option<&NodeId>,
) -> Result<quinn::Connection, String> {
    let name = expect.map(|n| n.as_str()).unwrap_or(ANY_NODE);
    let connecting = shared
        .endpoint
        .connect_with(shared.client_config.clone(), addr, name)
        .map_err(|e| format!("cannot dial: {e}"))?;
    match tokio::time::timeout(shared.connect_timeout, connecting).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("handshake failed: {e}")),
        Err(_) => {
            shared
                .handshakes
                .failed_other
                .fetch_add(1, Ordering::Relaxed);
            Err(format!(
                "handshake timed out after {} ms",
                shared.connect_timeout.as_millis()
            ))
        }
    }
}

/// Writes queued frames until the connection or stream fails; returns why.
/// `pending` holds frames taken from the queue but not yet written.
async fn pump(
    conn: &quinn::Connection,
    rx: &mut mpsc::Receiver<Bytes>,
    pending: &mut Vec<Bytes>,
    counters: &PeerCounters,
) -> String {
    let mut stream = match conn.open_uni().await {
        Ok(s) => s,
        Err(e) => return format!("cannot open stream: {e}"),
    };
    loop {
        while pending.len() < BATCH {
            match rx.try_recv() {
                Ok(f) => pending.push(f),
                Err(_) => break,
            }
        }
        if !pending.is_empty() {
            let n = pending.len() as u64;
            let bytes: usize = pending.iter().map(|b| b.len()).sum();
            let mut chunks = std::mem::take(pending);
            tokio::select! {
                r = stream.write_all_chunks(&mut chunks) => {
                    if let Err(e) = r {
                        return format!("write failed: {e}");
                    }
                }
                e = conn.closed() => return e.to_string(),
            }
            counters.frames_sent.fetch_add(n, Ordering::Relaxed);
            counters
                .bytes_sent
                .fetch_add(bytes as u64, Ordering::Relaxed);
            continue;
        }
        tokio::select! {
            f = rx.recv() => match f {
                Some(f) => pending.push(f),
                None => {
                    let _ = stream.finish();
                    return "transport dropped".into();
                }
            },
            e = conn.closed() => return e.to_string(),
        }
    }
}

async fn sleep_backoff(backoff: &mut Duration, max: Duration) {
    let jitter = rand::thread_rng().gen_range(0.5..1.0);
    tokio::time::sleep(backoff.mul_f64(jitter)).await;
    *backoff = (*backoff * 2).min(max);
}
