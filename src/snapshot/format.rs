//! The snapshot file: a versioned, framed stream with a BLAKE3 checksum.
//!
//! ```text
//! magic "HUBSNAP\n" | format version (u32 LE)
//! frame* : kind (u8) | payload length (u32 LE) | payload
//!   1 header  JSON: node, schema, version vector, clock, feed position
//!   2 peer    id len (u8) | id | peer record (store encoding)
//!   3 run     origin len (u8) | origin | first seq (u64 LE) | log run
//!   4 entry   key len (u16 LE) | key | entry (store encoding)
//!   5 trailer JSON: totals and the Merkle root of the entries
//!   6 end     BLAKE3 of every byte before this frame
//! ```
//!
//! Records carry the store's own encoding (the header names its schema
//! version), so saving and restoring copy bytes instead of re-encoding. A
//! reader checks every length against [`MAX_FRAME`] before allocating, and
//! the checksum at the end covers the whole file: a truncated file has no
//! end frame, a changed byte fails the checksum (or a decode before it).

use std::collections::BTreeMap;
use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

pub const MAGIC: &[u8; 8] = b"HUBSNAP\n";
/// The layout this binary writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Longest frame accepted (a log run of one large commit group is the
/// biggest record).
pub const MAX_FRAME: usize = 256 << 20;

const HEADER: u8 = 1;
const PEER: u8 = 2;
const RUN: u8 = 3;
const ENTRY: u8 = 4;
const TRAILER: u8 = 5;
const END: u8 = 6;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub node_id: String,
    pub schema_version: u32,
    pub version_vector: BTreeMap<String, u64>,
    pub hlc: u64,
    pub next_change: u64,
    pub created_unix_ms: u64,
    /// `hub --version` of the writer, for the operator.
    pub hub_version: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Trailer {
    pub peers: u64,
    pub runs: u64,
    pub deltas: u64,
    pub entries: u64,
    pub tombstones: u64,
    /// Hex Merkle root over the entries in the file.
    pub merkle_root: String,
}

#[derive(Debug, PartialEq)]
pub enum Frame {
    Header(Header),
    Peer {
        id: String,
        raw: Vec<u8>,
    },
    Run {
        origin: String,
        first: u64,
        raw: Vec<u8>,
    },
    Entry {
        key: String,
        raw: Vec<u8>,
    },
    Trailer(Trailer),
    /// The checksum matched: the file is complete and unchanged.
    End,
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("reading the snapshot: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a hub snapshot (no HUBSNAP header)")]
    NotSnapshot,
    #[error("snapshot format version {found} is not supported by this hub (it reads version {supported})")]
    Version { found: u32, supported: u32 },
    #[error("the snapshot is truncated: it ends at byte {at} before its end marker")]
    Truncated { at: u64 },
    #[error("the snapshot is corrupt at byte {at}: {reason}")]
    Corrupt { at: u64, reason: String },
    #[error("the snapshot is corrupt: its checksum does not match its content")]
    Checksum,
}

/// Writes frames, hashing everything it writes.
pub struct Writer<W: Write> {
    out: W,
    hasher: blake3::Hasher,
    bytes: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W) -> std::io::Result<Writer<W>> {
        let mut hasher = blake3::Hasher::new();
        let mut head = MAGIC.to_vec();
        head.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.write_all(&head)?;
        hasher.update(&head);
        Ok(Writer {
            out,
            hasher,
            bytes: head.len() as u64,
        })
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn frame(&mut self, kind: u8, parts: &[&[u8]]) -> std::io::Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > MAX_FRAME {
            return Err(std::io::Error::other(format!(
                "a record of {len} bytes is larger than a snapshot frame ({MAX_FRAME})"
            )));
        }
        let mut head = [0u8; 5];
        head[0] = kind;
        head[1..].copy_from_slice(&(len as u32).to_le_bytes());
        self.out.write_all(&head)?;
        self.hasher.update(&head);
        for p in parts {
            self.out.write_all(p)?;
            self.hasher.update(p);
        }
        self.bytes += 5 + len as u64;
        Ok(())
    }

    pub fn header(&mut self, h: &Header) -> std::io::Result<()> {
        let json = serde_json::to_vec(h).map_err(std::io::Error::other)?;
        self.frame(HEADER, &[&json])
    }

    pub fn peer(&mut self, id: &str, raw: &[u8]) -> std::io::Result<()> {
        let len = short_len(id.len(), u8::MAX as usize)?;
        self.frame(PEER, &[&[len as u8], id.as_bytes(), raw])
    }

    pub fn run(&mut self, origin: &str, first: u64, raw: &[u8]) -> std::io::Result<()> {
        let len = short_len(origin.len(), u8::MAX as usize)?;
        self.frame(
            RUN,
            &[&[len as u8], origin.as_bytes(), &first.to_le_bytes(), raw],
        )
    }

    pub fn entry(&mut self, key: &str, raw: &[u8]) -> std::io::Result<()> {
        let len = short_len(key.len(), u16::MAX as usize)?;
        self.frame(ENTRY, &[&(len as u16).to_le_bytes(), key.as_bytes(), raw])
    }

    pub fn trailer(&mut self, t: &Trailer) -> std::io::Result<()> {
        let json = serde_json::to_vec(t).map_err(std::io::Error::other)?;
        self.frame(TRAILER, &[&json])
    }

    /// Writes the end frame (the checksum of everything before it) and
    /// flushes; returns the output and the file's length.
    pub fn finish(mut self) -> std::io::Result<(W, u64)> {
        let sum = *self.hasher.finalize().as_bytes();
        self.frame(END, &[&sum])?;
        self.out.flush()?;
        Ok((self.out, self.bytes))
    }
}

fn short_len(len: usize, max: usize) -> std::io::Result<usize> {
    if len > max {
        return Err(std::io::Error::other(format!(
            "a name of {len} bytes does not fit a snapshot record"
        )));
    }
    Ok(len)
}

/// Reads frames, checking lengths, order-independent decoding and, at the
/// end frame, the checksum.
pub struct Reader<R: Read> {
    inp: R,
    hasher: blake3::Hasher,
    at: u64,
    ended: bool,
}

impl<R: Read> Reader<R> {
    pub fn open(mut inp: R) -> Result<Reader<R>, FormatError> {
        let mut head = [0u8; 12];
        match read_full(&mut inp, &mut head)? {
            n if n < head.len() || &head[..8] != MAGIC => return Err(FormatError::NotSnapshot),
            _ => {}
        }
        let found = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        if found != FORMAT_VERSION {
            return Err(FormatError::Version {
                found,
                supported: FORMAT_VERSION,
            });
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update(&head);
        Ok(Reader {
            inp,
            hasher,
            at: head.len() as u64,
            ended: false,
        })
    }

    /// Bytes read so far.
    pub fn bytes(&self) -> u64 {
        self.at
    }

    fn corrupt(&self, reason: impl Into<String>) -> FormatError {
        FormatError::Corrupt {
            at: self.at,
            reason: reason.into(),
        }
    }

    /// The next frame; after [`Frame::End`] nothing more may follow.
    pub fn next_frame(&mut self) -> Result<Frame, FormatError> {
        if self.ended {
            return Err(self.corrupt("read past the end marker"));
        }
        let mut head = [0u8; 5];
        if read_full(&mut self.inp, &mut head)? < head.len() {
            return Err(FormatError::Truncated { at: self.at });
        }
        let kind = head[0];
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > MAX_FRAME {
            return Err(self.corrupt(format!("a frame claims {len} bytes")));
        }
        let mut payload = vec![0u8; len];
        if read_full(&mut self.inp, &mut payload)? < len {
            return Err(FormatError::Truncated { at: self.at });
        }
        if kind == END {
            let sum = *self.hasher.finalize().as_bytes();
            if payload != sum {
                return Err(FormatError::Checksum);
            }
            let mut extra = [0u8; 1];
            if read_full(&mut self.inp, &mut extra)? != 0 {
                return Err(self.corrupt("bytes after the end marker"));
            }
            self.ended = true;
            return Ok(Frame::End);
        }
        self.hasher.update(&head);
        self.hasher.update(&payload);
        let frame = self.decode(kind, payload);
        self.at += 5 + len as u64;
        frame
    }

    fn decode(&self, kind: u8, p: Vec<u8>) -> Result<Frame, FormatError> {
        let text = |b: &[u8]| {
            std::str::from_utf8(b)
                .map(str::to_string)
                .map_err(|_| self.corrupt("a name is not UTF-8"))
        };
        let short = || self.corrupt("a record is shorter than its fields");
        Ok(match kind {
            HEADER => Frame::Header(
                serde_json::from_slice(&p).map_err(|e| self.corrupt(format!("header: {e}")))?,
            ),
            TRAILER => Frame::Trailer(
                serde_json::from_slice(&p).map_err(|e| self.corrupt(format!("trailer: {e}")))?,
            ),
            PEER => {
                let n = *p.first().ok_or_else(short)? as usize;
                let id = text(p.get(1..1 + n).ok_or_else(short)?)?;
                Frame::Peer {
                    id,
                    raw: p[1 + n..].to_vec(),
                }
            }
            RUN => {
                let n = *p.first().ok_or_else(short)? as usize;
                let origin = text(p.get(1..1 + n).ok_or_else(short)?)?;
                let seq: [u8; 8] = p
                    .get(1 + n..9 + n)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(short)?;
                Frame::Run {
                    origin,
                    first: u64::from_le_bytes(seq),
                    raw: p[9 + n..].to_vec(),
                }
            }
            ENTRY => {
                let n = p
                    .get(..2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
                    .ok_or_else(short)?;
                let key = text(p.get(2..2 + n).ok_or_else(short)?)?;
                Frame::Entry {
                    key,
                    raw: p[2 + n..].to_vec(),
                }
            }
            other => return Err(self.corrupt(format!("unknown frame kind {other}"))),
        })
    }
}

/// Reads until `buf` is full or the input ends; how many bytes were read.
fn read_full(inp: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match inp.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = Writer::new(Vec::new()).unwrap();
        w.header(&Header {
            node_id: "a".into(),
            schema_version: 3,
            version_vector: [("a".to_string(), 2)].into(),
            hlc: 7,
            next_change: 3,
            created_unix_ms: 1,
            hub_version: "t".into(),
        })
        .unwrap();
        w.peer("b", b"peer").unwrap();
        w.run("a", 1, b"run").unwrap();
        w.entry("k", b"entry").unwrap();
        w.trailer(&Trailer {
            entries: 1,
            ..Trailer::default()
        })
        .unwrap();
        w.finish().unwrap().0
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<Frame>, FormatError> {
        let mut r = Reader::open(bytes)?;
        let mut out = Vec::new();
        loop {
            let f = r.next_frame()?;
            let end = f == Frame::End;
            out.push(f);
            if end {
                return Ok(out);
            }
        }
    }

    #[test]
    fn frames_round_trip_and_end_with_a_matching_checksum() {
        let frames = read_all(&sample()).unwrap();
        assert_eq!(frames.len(), 6);
        assert_eq!(
            frames[3],
            Frame::Entry {
                key: "k".into(),
                raw: b"entry".to_vec()
            }
        );
        assert_eq!(
            frames[2],
            Frame::Run {
                origin: "a".into(),
                first: 1,
                raw: b"run".to_vec()
            }
        );
        assert_eq!(frames[5], Frame::End);
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = sample();
        for cut in 0..bytes.len() {
            let e = read_all(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(e, FormatError::Truncated { .. } | FormatError::NotSnapshot),
                "cut at {cut}: {e}"
            );
        }
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let bytes = sample();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(read_all(&bad).is_err(), "flip at {i} went unnoticed");
        }
    }

    #[test]
    fn other_files_and_versions_are_named() {
        assert!(matches!(
            read_all(b"hello world, no snapshot"),
            Err(FormatError::NotSnapshot)
        ));
        let mut v2 = sample();
        v2[8] = 2;
        assert!(matches!(
            read_all(&v2),
            Err(FormatError::Version { found: 2, .. })
        ));
    }

    #[test]
    fn a_huge_length_is_refused_before_allocating() {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes.push(ENTRY);
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(read_all(&bytes), Err(FormatError::Corrupt { .. })));
    }
}
