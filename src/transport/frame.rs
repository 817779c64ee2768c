//! Length-prefixed bincode frames with a hard size limit (sans-IO).
//!
//! Wire format of one frame: `u32` big-endian payload length, then the
//! payload = bincode(`u16` protocol version) ++ bincode(message), both with
//! `bincode::config::standard()`. The version is decoded first, so a frame
//! from a future protocol is refused with a clear error rather than decoded
//! as garbage.
//!
//! Guarantees: the decoder never allocates the claimed length up front — it
//! buffers only bytes actually received, and refuses a header announcing more
//! than the limit before reading its payload. Any byte sequence yields frames
//! or an error, never a panic. Cost: one copy of each payload into the buffer.

use bytes::{Buf, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Version of the frame payload; bump on any incompatible message change.
/// 2: membership pings and acks carry clock stamps (`crate::clock`).
/// 3: quorums: pushes may ask for durable acks; acks, quorum reads and
/// read repair (`crate::replication::quorum`).
/// 4: sharded pushes and pull answers carry a cover (seq range and
/// partitions they stand for); pulls may name the asker's partitions.
pub const PROTOCOL_VERSION: u16 = 4;

/// Default hard limit on one frame's payload.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Room a frame needs around one value: the protocol version, the message
/// and delta envelope (origin, seq, HLC, node id), a key of at most
/// `model::MAX_KEY_LEN` (1 KiB) and the meta of a reading (a few short
/// fields). 64 KiB is far more than they take (about 1.2 KiB at most).
pub const ENVELOPE_HEADROOM_BYTES: usize = 64 * 1024;

/// The largest value that is guaranteed to fit one frame with its
/// envelope: the bound on `max_value_bytes` (checked at config
/// validation) and the backstop every local write is checked against, so
/// every accepted write can be replicated.
pub const MAX_VALUE_BYTES: usize = DEFAULT_MAX_FRAME_BYTES - ENVELOPE_HEADROOM_BYTES;

const HEADER: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    Oversized { len: usize, max: usize },
    #[error("peer speaks protocol version {got}, this node speaks {ours}")]
    Version { got: u16, ours: u16 },
    #[error("malformed frame payload: {0}")]
    Malformed(String),
    #[error("cannot encode message: {0}")]
    Encode(String),
}

/// Encodes `msg` as one complete frame (header included).
pub fn encode_frame<M: Serialize>(msg: &M, max: usize) -> Result<Bytes, FrameError> {
    let cfg = bincode::config::standard();
    let mut buf = Vec::with_capacity(64);
    buf.extend_from_slice(&[0u8; HEADER]);
    bincode::serde::encode_into_std_write(PROTOCOL_VERSION, &mut buf, cfg)
        .map_err(|e| FrameError::Encode(e.to_string()))?;
    bincode::serde::encode_into_std_write(msg, &mut buf, cfg)
        .map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = buf.len() - HEADER;
    if len > max || len > u32::MAX as usize {
        return Err(FrameError::Oversized { len, max });
    }
    buf[..HEADER].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(Bytes::from(buf))
}

/// Decodes one frame payload (without header): version check, then message;
/// trailing bytes are malformed.
pub fn decode_payload<M: DeserializeOwned>(payload: &[u8]) -> Result<M, FrameError> {
    let cfg = bincode::config::standard();
    let (version, used): (u16, usize) = bincode::serde::decode_from_slice(payload, cfg)
        .map_err(|e| FrameError::Malformed(format!("version: {e}")))?;
    if version != PROTOCOL_VERSION {
        return Err(FrameError::Version {
            got: version,
            ours: PROTOCOL_VERSION,
        });
    }
    let rest = &payload[used..];
    let (msg, n): (M, usize) = bincode::serde::decode_from_slice(rest, cfg)
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    if n != rest.len() {
        return Err(FrameError::Malformed(format!(
            "{} trailing bytes after message",
            rest.len() - n
        )));
    }
    Ok(msg)
}

/// Incremental frame splitter: feed bytes as they arrive, take whole payloads.
///
/// After an error the decoder stays failed (the stream must be closed).
#[derive(Debug)]
pub struct FrameDecoder {
    max: usize,
    buf: BytesMut,
    failed: Option<FrameError>,
}

impl FrameDecoder {
    pub fn new(max_frame_bytes: usize) -> Self {
        FrameDecoder {
            max: max_frame_bytes,
            buf: BytesMut::new(),
            failed: None,
        }
    }

    /// Appends received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(data);
        }
    }

    /// Bytes buffered but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete payload, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > self.max {
            let e = FrameError::Oversized { len, max: self.max };
            self.failed = Some(e.clone());
            self.buf = BytesMut::new();
            return Err(e);
        }
        if self.buf.len() < HEADER + len {
            return Ok(None);
        }
        self.buf.advance(HEADER);
        Ok(Some(self.buf.split_to(len).freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Msg {
        Ping(u64),
        Blob(Vec<u8>),
        Text { s: String, n: i32 },
    }

    fn msg_strategy() -> impl Strategy<Value = Msg> {
        prop_oneof![
            any::<u64>().prop_map(Msg::Ping),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Msg::Blob),
            (".{0,20}", any::<i32>()).prop_map(|(s, n)| Msg::Text { s, n }),
        ]
    }

    fn decode_all(dec: &mut FrameDecoder) -> Vec<Msg> {
        let mut out = vec![];
        while let Some(p) = dec.next_frame().unwrap() {
            out.push(decode_payload(&p).unwrap());
        }
        out
    }

    #[test]
    fn round_trip_of_one_frame() {
        let f = encode_frame(&Msg::Ping(7), 1024).unwrap();
        let mut d = FrameDecoder::new(1024);
        d.feed(&f);
        assert_eq!(decode_all(&mut d), vec![Msg::Ping(7)]);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn oversized_header_is_refused_before_its_payload_arrives() {
        let mut d = FrameDecoder::new(1024);
        d.feed(&u32::MAX.to_be_bytes());
        assert!(matches!(d.next_frame(), Err(FrameError::Oversized { .. })));
        assert!(d.buffered() < 16, "claimed length must not be allocated");
        // Stays failed.
        d.feed(&[0; 8]);
        assert!(d.next_frame().is_err());
    }

    #[test]
    fn encoding_refuses_messages_over_the_limit() {
        let e = encode_frame(&Msg::Blob(vec![0; 2000]), 1000).unwrap_err();
        assert!(matches!(e, FrameError::Oversized { .. }));
    }

    #[test]
    fn future_protocol_version_is_refused_clearly() {
        let cfg = bincode::config::standard();
        let mut p = bincode::serde::encode_to_vec(PROTOCOL_VERSION + 1, cfg).unwrap();
        p.extend(bincode::serde::encode_to_vec(Msg::Ping(1), cfg).unwrap());
        let e = decode_payload::<Msg>(&p).unwrap_err();
        assert!(
            matches!(e, FrameError::Version { got, ours } if got == ours + 1 && ours == PROTOCOL_VERSION),
            "{e}"
        );
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let f = encode_frame(&Msg::Ping(1), 1024).unwrap();
        let mut p = f[HEADER..].to_vec();
        p.push(0);
        assert!(matches!(
            decode_payload::<Msg>(&p),
            Err(FrameError::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn any_split_of_a_valid_stream_decodes_the_same(
            msgs in proptest::collection::vec(msg_strategy(), 0..20),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..30),
        ) {
            let mut stream = Vec::new();
            for m in &msgs {
                stream.extend_from_slice(&encode_frame(m, 4096).unwrap());
            }
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            points.push(0);
            points.push(stream.len());
            points.sort_unstable();
            let mut d = FrameDecoder::new(4096);
            let mut got = vec![];
            for w in points.windows(2) {
                d.feed(&stream[w[0]..w[1]]);
                got.extend(decode_all(&mut d));
            }
            prop_assert_eq!(got, msgs);
            prop_assert_eq!(d.buffered(), 0);
        }

        #[test]
        fn random_bytes_never_panic_and_stay_bounded(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..20),
        ) {
            let mut d = FrameDecoder::new(256);
            for c in &chunks {
                d.feed(c);
                loop {
                    match d.next_frame() {
                        Ok(Some(p)) => { let _ = decode_payload::<Msg>(&p); }
                        Ok(None) => break,
                        Err(_) => break,
                    }
                }
                // Never more than one max frame plus one chunk buffered.
                prop_assert!(d.buffered() <= 256 + 4 + 64);
            }
        }
    }
}
