//! `GET /api/snapshot` (admin): a snapshot of this node streamed as it is
//! taken, while the node keeps taking writes (see [`crate::snapshot`]).
//!
//! The dump runs on a blocking thread and hands the body over in chunks
//! through a small channel, so a slow client slows the dump instead of
//! growing memory, and a client that goes away stops it. `?pace=P` (1–100,
//! default [`DEFAULT_PACE`]) is the share of time the dump works; the rest
//! of the time it sleeps, leaving the cores to the node's writes. An error
//! midway ends the body early, without the end marker, so the file a
//! client saved is refused as truncated.

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::snapshot::{save, Progress};

/// Default share of time (percent) a live dump works.
pub const DEFAULT_PACE: u8 = 30;
/// Body chunk size.
const CHUNK: usize = 256 << 10;
/// Longest a started chunk waits before it is sent anyway. A slow-paced
/// dump of a small store can take longer than a client's per-chunk
/// deadline (10 s for `hub snapshot save`) to fill [`CHUNK`]; sending what
/// there is keeps the client hearing from a dump that is still working.
const SEND_AT_LEAST_EVERY: Duration = Duration::from_secs(1);

/// Unknown parameters are ignored: browsers and proxies add cache-busting ones.
#[derive(Deserialize)]
pub struct SnapshotQuery {
    pace: Option<u8>,
}

type Chunk = Result<Bytes, std::io::Error>;

/// Buffers writes into chunks sent down the response channel.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Chunk>,
    buf: Vec<u8>,
    last_sent: Instant,
}

impl ChannelWriter {
    fn new(tx: tokio::sync::mpsc::Sender<Chunk>) -> ChannelWriter {
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
            last_sent: Instant::now(),
        }
    }

    fn send(&mut self) -> std::io::Result<()> {
        self.last_sent = Instant::now();
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
        })
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK || self.last_sent.elapsed() >= SEND_AT_LEAST_EVERY {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

pub async fn snapshot(
    State(state): State<AppState>,
    q: Result<Query<SnapshotQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let pace = q?.0.pace.unwrap_or(DEFAULT_PACE);
    if !(1..=100).contains(&pace) {
        return Err(ApiError::bad_request(
            "bad_query",
            format!("pace is {pace}; give a percentage from 1 to 100"),
        ));
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Chunk>(4);
    let store = state.store.clone();
    let node = state.node_id.clone();
    tokio::task::spawn_blocking(move || {
        let progress = Progress::default();
        let started = std::time::Instant::now();
        let out = ChannelWriter::new(tx.clone());
        match save::write(&store, out, f64::from(pace) / 100.0, &progress) {
            Ok((_, s)) => tracing::info!(node = %node, bytes = s.bytes, entries = s.entries,
                deltas = s.deltas, secs = started.elapsed().as_secs_f64(), "snapshot streamed"),
            Err(e) => {
                tracing::warn!(node = %node, error = %e, "snapshot stream stopped");
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        }
    });
    let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let file = format!(
        "attachment; filename=\"{}.hubsnap\"",
        state.node_id.as_str()
    );
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_DISPOSITION, file),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_small_write_waits_for_a_full_chunk_while_the_last_send_is_recent() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let mut w = ChannelWriter::new(tx);
        w.write_all(b"frame").unwrap();
        assert!(rx.try_recv().is_err(), "sent before a chunk filled");
        w.write_all(&vec![0; CHUNK]).unwrap();
        let chunk = rx.try_recv().unwrap().unwrap();
        assert_eq!(chunk.len(), CHUNK + 5);
    }

    #[test]
    fn a_slow_dump_sends_what_it_has_once_the_last_send_is_old() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let mut w = ChannelWriter::new(tx);
        w.last_sent = Instant::now() - SEND_AT_LEAST_EVERY;
        w.write_all(b"frame").unwrap();
        assert_eq!(&rx.try_recv().unwrap().unwrap()[..], b"frame");
        w.write_all(b"next").unwrap();
        assert!(
            rx.try_recv().is_err(),
            "the send just now restarts the wait"
        );
    }
}
