//! JSON bodies for hyper's own refusals.
//!
//! hyper answers a request it cannot parse by itself — 400 (malformed),
//! 414 (URI too long), 431 (head too large) — with an empty body, before
//! any handler runs. [`JsonErrors`] sits between hyper and the socket and
//! replaces exactly those answers (a 400/414/431 head with
//! `content-length: 0` and nothing else, which no handler of ours ever
//! sends: every API error has a JSON body) with the API's error shape, and
//! counts them. hyper closes the connection after such an answer.
//!
//! Limitation: the rewrite recognises the answer when hyper hands it over
//! as one write of its own, which it does when it writes responses in one
//! flattened buffer (`is_write_vectored` is false here for that reason).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::Metrics;

pub struct JsonErrors<IO> {
    inner: IO,
    pending: Vec<u8>,
    sent: usize,
    metrics: Arc<Metrics>,
    max_header_bytes: usize,
}

impl<IO> JsonErrors<IO> {
    pub fn new(inner: IO, metrics: Arc<Metrics>, max_header_bytes: usize) -> JsonErrors<IO> {
        JsonErrors {
            inner,
            pending: Vec::new(),
            sent: 0,
            metrics,
            max_header_bytes,
        }
    }
}

/// The JSON replacement for one of hyper's body-less error heads, with the
/// reason it is counted under.
pub fn rewrite(buf: &[u8], max_header_bytes: usize) -> Option<(Vec<u8>, &'static str)> {
    if buf.len() < 16 || !buf.ends_with(b"\r\n\r\n") || !buf.starts_with(b"HTTP/1.") {
        return None;
    }
    let head = std::str::from_utf8(&buf[..buf.len() - 4]).ok()?;
    if head.contains("\r\n\r\n") {
        return None;
    }
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let (reason, message) = match status_line.get(9..12)? {
        "400" => ("bad_request", "malformed HTTP request".to_string()),
        "414" => ("uri_too_long", "request URI is too long".to_string()),
        "431" => (
            "headers_too_large",
            format!("request line and headers exceed {max_header_bytes} bytes"),
        ),
        _ => return None,
    };
    let headers: Vec<&str> = lines.collect();
    let empty = headers
        .iter()
        .any(|h| h.eq_ignore_ascii_case("content-length: 0"));
    if !empty {
        return None;
    }
    let body = serde_json::json!({ "error": { "code": reason, "message": message } }).to_string();
    let mut out = format!(
        "{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for h in headers {
        let name = h.split(':').next().unwrap_or("").to_ascii_lowercase();
        if name != "content-length" && name != "connection" {
            out.push_str(h);
            out.push_str("\r\n");
        }
    }
    out.push_str("\r\n");
    out.push_str(&body);
    Some((out.into_bytes(), reason))
}

impl<IO: AsyncWrite + Unpin> JsonErrors<IO> {
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.pending.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for JsonErrors<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for JsonErrors<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.drain(cx))?;
        if let Some((replacement, reason)) = rewrite(buf, this.max_header_bytes) {
            this.metrics.http_refused(reason);
            this.metrics.count_status(match reason {
                "uri_too_long" => 414,
                "headers_too_large" => 431,
                _ => 400,
            });
            this.pending = replacement;
            this.sent = 0;
            // Whatever does not go out now goes out on the next flush.
            if let Poll::Ready(Err(e)) = this.drain(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_empty_431_becomes_json_and_keeps_its_other_headers() {
        let canned = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Mon, 23 Nov 2026 07:00:00 GMT\r\n\r\n";
        let (out, reason) = rewrite(canned, 16384).unwrap();
        assert_eq!(reason, "headers_too_large");
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "));
        assert!(head.contains("date: Mon"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "headers_too_large");
    }

    #[test]
    fn answers_with_a_body_or_other_statuses_pass_untouched() {
        for other in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
        ] {
            assert!(rewrite(other, 16384).is_none());
        }
    }
}
