//! The replication messages exchanged between two nodes.
//!
//! Every message carries the sender's hybrid logical clock, so a receiver can
//! refuse a peer whose clock runs too far ahead before applying anything, and
//! advance its own clock otherwise. Every list is capped ([`MAX_ITEMS`],
//! [`MAX_NODES`], …): [`Msg::validate`] rejects a message over a cap or with
//! an invalid key or Merkle node, so one message costs bounded work to handle.
//! The transport wraps `Msg` in its versioned envelope and frame limit.

use serde::{Deserialize, Serialize};

use crate::merkle::{Digest, NodeRef, FANOUT};
use crate::model::{validate_key, Delta, Entry, Hlc, NodeId, Version, VersionVector};
use crate::placement::Owned;

/// Most deltas or entries in one message.
pub const MAX_ITEMS: usize = 4096;
/// Most Merkle nodes asked for (or answered) in one message: 512 × 16
/// children × 16 bytes = 128 KiB of digests per answer.
pub const MAX_NODES: usize = 512;
/// Most leaf buckets compared in one message; with [`MAX_ITEMS`] versions.
pub const MAX_BUCKETS: usize = 256;
/// Most origins in a version vector or an "unavailable" list: far more
/// nodes than a hub cluster has.
pub const MAX_ORIGINS: usize = 1024;
/// Most parts one answer may be split into.
pub const MAX_PARTS: u32 = 1024;

/// `(key, version, tombstone)`: what anti-entropy compares at the leaves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemVersion {
    pub key: String,
    pub version: Version,
    pub tombstone: bool,
}

/// What a sharded push or pull answer stands for (`crate::placement`):
/// every delta of the sender's own origin with a seq in `from..=to` whose
/// key is in a partition of `scope` (or internal) is in the message; the
/// others are writes of partitions the receiver does not own, which it
/// never receives. The receiver applies the deltas and skips the rest of
/// the range, so its version vector says "complete for my partitions".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cover {
    pub from: u64,
    pub to: u64,
    pub scope: Owned,
}

impl Cover {
    /// The deltas are the sender's, in increasing seq order inside the range.
    fn check(&self, deltas: &[Delta]) -> Result<(), MsgError> {
        let bad = |why: &'static str| Err(MsgError::BadCover(why));
        if self.from == 0 || self.from > self.to {
            return bad("empty or zero range");
        }
        let mut last = self.from - 1;
        for d in deltas {
            if d.origin != deltas[0].origin {
                return bad("deltas of several origins");
            }
            if d.seq <= last || d.seq > self.to {
                return bad("delta outside the range or out of order");
            }
            last = d.seq;
        }
        Ok(())
    }

    /// The cover of the deltas up to and including seq `at`, and of the
    /// rest: how a too-large message is cut in two.
    pub fn split_at(&self, at: u64) -> (Cover, Cover) {
        (
            Cover { to: at, ..*self },
            Cover {
                from: at + 1,
                ..*self
            },
        )
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Msg {
    /// Freshly durable deltas (own or relayed), in seq order per origin.
    /// `ack`: a quorum write waits at the sender; once these deltas are
    /// durable here, answer with [`Msg::Ack`]. `cover`: a sharded push of
    /// the sender's own deltas (see [`Cover`]); `None`: every delta of the
    /// stream, as in a fully replicated cluster.
    Push {
        clock: Hlc,
        deltas: Vec<Delta>,
        ack: bool,
        cover: Option<Cover>,
    },
    /// "Every delta of `origin` up to `seq` is durable here" (cumulative),
    /// sent to `origin` after a push that asked for it.
    Ack {
        clock: Hlc,
        origin: NodeId,
        seq: u64,
    },
    /// Read quorum: "what is your entry for `key`?"
    ReadRequest { clock: Hlc, req: u64, key: String },
    /// The answer to a [`Msg::ReadRequest`]: the entry as durable here
    /// (`None`: never heard of the key; a tombstone is an entry).
    ReadReply {
        clock: Hlc,
        req: u64,
        key: String,
        entry: Option<Entry>,
    },
    /// Read repair: a newer entry than the one the receiver answered with;
    /// merged by LWW, no answer.
    Repair {
        clock: Hlc,
        key: String,
        entry: Entry,
    },
    /// "Send me the deltas you hold beyond this vector." `scope`: the
    /// asker stores only these partitions (sharded); the responder then
    /// answers with its own origin's deltas in them, under a [`Cover`].
    PullRequest {
        clock: Hlc,
        req: u64,
        vv: VersionVector,
        scope: Option<Owned>,
    },
    /// Contiguous deltas per origin starting right after the asked vector
    /// entry; `unavailable`: origins the responder has newer deltas of but no
    /// longer logs (the asker should run anti-entropy); `more`: the answer was
    /// cut at the message cap, ask again.
    PullResponse {
        clock: Hlc,
        req: u64,
        deltas: Vec<Delta>,
        unavailable: Vec<NodeId>,
        more: bool,
        cover: Option<Cover>,
    },
    /// Opens an anti-entropy session (initiator → responder).
    AeBegin { clock: Hlc, session: u64 },
    /// The responder's version vector (taken before any of its state is read
    /// for this session), its root and, if the caller may need them, the
    /// root's children.
    AeRoot {
        clock: Hlc,
        session: u64,
        vv: VersionVector,
        root: Digest,
        children: Vec<Digest>,
    },
    /// Asks for the children digests of inner nodes that differ.
    AeNodes {
        clock: Hlc,
        session: u64,
        req: u64,
        nodes: Vec<NodeRef>,
    },
    /// Children digests (`FANOUT` each) of the asked nodes, in asked order.
    AeDigests {
        clock: Hlc,
        session: u64,
        req: u64,
        children: Vec<Vec<Digest>>,
    },
    /// The initiator's items in differing leaves.
    AeLeaves {
        clock: Hlc,
        session: u64,
        req: u64,
        buckets: Vec<(u16, Vec<ItemVersion>)>,
    },
    /// One part of the answer to `AeLeaves`: entries where the responder is
    /// newer, and keys where the initiator is newer (`want`).
    AeLeafDiff {
        clock: Hlc,
        session: u64,
        req: u64,
        part: u32,
        parts: u32,
        entries: Vec<(String, Entry)>,
        want: Vec<String>,
    },
    /// Entries the responder asked for (initiator → responder); no answer.
    AeEntries {
        clock: Hlc,
        session: u64,
        entries: Vec<(String, Entry)>,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MsgError {
    #[error("{what}: {got} items, the limit is {limit}")]
    TooMany {
        what: &'static str,
        got: usize,
        limit: usize,
    },
    #[error("invalid key in {what}: {reason}")]
    BadKey { what: &'static str, reason: String },
    #[error("invalid Merkle node {0:?}")]
    BadNode(NodeRef),
    #[error("digest list of length {0}, expected {FANOUT}")]
    BadDigests(usize),
    #[error("part {part} of {parts} is out of range")]
    BadPart { part: u32, parts: u32 },
    #[error("bad cover: {0}")]
    BadCover(&'static str),
}

fn cap(what: &'static str, got: usize, limit: usize) -> Result<(), MsgError> {
    if got > limit {
        return Err(MsgError::TooMany { what, got, limit });
    }
    Ok(())
}

fn key_ok(what: &'static str, key: &str) -> Result<(), MsgError> {
    validate_key(key).map_err(|e| MsgError::BadKey {
        what,
        reason: e.to_string(),
    })
}

impl Msg {
    /// A message carrying two or more deltas, cut into two halves that each
    /// stand for their part of the range (for a frame too large to send).
    /// A pull answer's halves go as pushes: they are applied the same way,
    /// and the unanswered pull times out and is asked again. `None` for
    /// any other message.
    pub fn halves(&self) -> Option<(Msg, Msg)> {
        let (clock, deltas, ack, cover) = match self {
            Msg::Push {
                clock,
                deltas,
                ack,
                cover,
            } => (*clock, deltas, *ack, *cover),
            Msg::PullResponse {
                clock,
                deltas,
                cover,
                ..
            } => (*clock, deltas, false, *cover),
            _ => return None,
        };
        if deltas.len() < 2 {
            return None;
        }
        let (a, b) = deltas.split_at(deltas.len() / 2);
        let (ca, cb) = match cover {
            Some(c) => {
                let (x, y) = c.split_at(a[a.len() - 1].seq);
                (Some(x), Some(y))
            }
            None => (None, None),
        };
        Some((
            Msg::push(clock, a.to_vec(), ack, ca),
            Msg::push(clock, b.to_vec(), ack, cb),
        ))
    }

    pub fn push(clock: Hlc, deltas: Vec<Delta>, ack: bool, cover: Option<Cover>) -> Msg {
        Msg::Push {
            clock,
            deltas,
            ack,
            cover,
        }
    }

    /// The sender's clock when it sent the message.
    pub fn clock(&self) -> Hlc {
        match self {
            Msg::Push { clock, .. }
            | Msg::Ack { clock, .. }
            | Msg::ReadRequest { clock, .. }
            | Msg::ReadReply { clock, .. }
            | Msg::Repair { clock, .. }
            | Msg::PullRequest { clock, .. }
            | Msg::PullResponse { clock, .. }
            | Msg::AeBegin { clock, .. }
            | Msg::AeRoot { clock, .. }
            | Msg::AeNodes { clock, .. }
            | Msg::AeDigests { clock, .. }
            | Msg::AeLeaves { clock, .. }
            | Msg::AeLeafDiff { clock, .. }
            | Msg::AeEntries { clock, .. } => *clock,
        }
    }

    /// A short name for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Msg::Push { .. } => "push",
            Msg::Ack { .. } => "ack",
            Msg::ReadRequest { .. } => "read_request",
            Msg::ReadReply { .. } => "read_reply",
            Msg::Repair { .. } => "repair",
            Msg::PullRequest { .. } => "pull_request",
            Msg::PullResponse { .. } => "pull_response",
            Msg::AeBegin { .. } => "ae_begin",
            Msg::AeRoot { .. } => "ae_root",
            Msg::AeNodes { .. } => "ae_nodes",
            Msg::AeDigests { .. } => "ae_digests",
            Msg::AeLeaves { .. } => "ae_leaves",
            Msg::AeLeafDiff { .. } => "ae_leaf_diff",
            Msg::AeEntries { .. } => "ae_entries",
        }
    }

    /// The highest version timestamp carried, also checked against the
    /// maximum clock offset (a relayed write could carry a runaway clock).
    pub fn max_version_hlc(&self) -> Hlc {
        let deltas = |ds: &[Delta]| ds.iter().map(|d| d.entry.version.hlc).max();
        let entries = |es: &[(String, Entry)]| es.iter().map(|(_, e)| e.version.hlc).max();
        let m = match self {
            Msg::Push { deltas: ds, .. } | Msg::PullResponse { deltas: ds, .. } => deltas(ds),
            Msg::AeLeafDiff { entries: es, .. } | Msg::AeEntries { entries: es, .. } => entries(es),
            Msg::AeLeaves { buckets, .. } => buckets
                .iter()
                .flat_map(|(_, items)| items.iter().map(|i| i.version.hlc))
                .max(),
            Msg::ReadReply { entry, .. } => entry.as_ref().map(|e| e.version.hlc),
            Msg::Repair { entry, .. } => Some(entry.version.hlc),
            _ => None,
        };
        m.unwrap_or(Hlc::ZERO)
    }

    /// Checks every cap and every key, Merkle node and part number.
    pub fn validate(&self) -> Result<(), MsgError> {
        match self {
            Msg::Push { deltas, cover, .. } => {
                cap("push", deltas.len(), MAX_ITEMS)?;
                if let Some(c) = cover {
                    c.check(deltas)?;
                }
                deltas.iter().try_for_each(|d| key_ok("push", &d.key))
            }
            Msg::Ack { .. } => Ok(()),
            Msg::ReadRequest { key, .. } | Msg::ReadReply { key, .. } => key_ok("read", key),
            Msg::Repair { key, .. } => key_ok("repair", key),
            Msg::PullRequest { vv, .. } => cap("pull vector", vv.0.len(), MAX_ORIGINS),
            Msg::PullResponse {
                deltas,
                unavailable,
                cover,
                ..
            } => {
                cap("pull response", deltas.len(), MAX_ITEMS)?;
                cap("unavailable origins", unavailable.len(), MAX_ORIGINS)?;
                if let Some(c) = cover {
                    c.check(deltas)?;
                }
                deltas
                    .iter()
                    .try_for_each(|d| key_ok("pull response", &d.key))
            }
            Msg::AeBegin { .. } => Ok(()),
            Msg::AeRoot { vv, children, .. } => {
                cap("root vector", vv.0.len(), MAX_ORIGINS)?;
                if !children.is_empty() && children.len() != FANOUT {
                    return Err(MsgError::BadDigests(children.len()));
                }
                Ok(())
            }
            Msg::AeNodes { nodes, .. } => {
                cap("merkle nodes", nodes.len(), MAX_NODES)?;
                match nodes.iter().find(|n| !n.is_valid() || n.is_leaf()) {
                    Some(n) => Err(MsgError::BadNode(*n)),
                    None => Ok(()),
                }
            }
            Msg::AeDigests { children, .. } => {
                cap("merkle digests", children.len(), MAX_NODES)?;
                match children.iter().find(|c| c.len() != FANOUT) {
                    Some(c) => Err(MsgError::BadDigests(c.len())),
                    None => Ok(()),
                }
            }
            Msg::AeLeaves { buckets, .. } => {
                cap("leaf buckets", buckets.len(), MAX_BUCKETS)?;
                let items: usize = buckets.iter().map(|(_, items)| items.len()).sum();
                cap("leaf items", items, MAX_ITEMS)?;
                buckets
                    .iter()
                    .flat_map(|(_, items)| items)
                    .try_for_each(|i| key_ok("leaf item", &i.key))
            }
            Msg::AeLeafDiff {
                part,
                parts,
                entries,
                want,
                ..
            } => {
                if *parts == 0 || *parts > MAX_PARTS || part >= parts {
                    return Err(MsgError::BadPart {
                        part: *part,
                        parts: *parts,
                    });
                }
                cap("leaf diff entries", entries.len(), MAX_ITEMS)?;
                cap("leaf diff wants", want.len(), MAX_ITEMS)?;
                entries
                    .iter()
                    .try_for_each(|(k, _)| key_ok("leaf diff", k))?;
                want.iter().try_for_each(|k| key_ok("want", k))
            }
            Msg::AeEntries { entries, .. } => {
                cap("entries", entries.len(), MAX_ITEMS)?;
                entries.iter().try_for_each(|(k, _)| key_ok("entries", k))
            }
        }
    }

    /// Bytes of this message in bincode's standard encoding: what anti-entropy
    /// reports as bytes exchanged (the transport adds a small frame header).
    pub fn encoded_len(&self) -> u64 {
        let mut w = bincode::enc::write::SizeWriter::default();
        match bincode::serde::encode_into_writer(self, &mut w, bincode::config::standard()) {
            Ok(()) => w.bytes_written as u64,
            Err(_) => 0,
        }
    }
}

/// Rough payload size of a delta or entry, for cutting messages well below
/// the transport's frame limit.
pub(crate) fn approx_size(key: &str, entry: &Entry) -> usize {
    64 + key.len()
        + entry.value.as_ref().map_or(0, |v| v.len())
        + entry
            .meta
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum::<usize>()
}

/// Splits items into chunks of at most `max_items` and about `max_bytes`
/// (an item larger than `max_bytes` travels alone).
pub(crate) fn chunks<T>(
    items: Vec<T>,
    max_items: usize,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = 0;
    for item in items {
        let s = size(&item);
        if !cur.is_empty() && (cur.len() >= max_items || bytes + s > max_bytes) {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += s;
        cur.push(item);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_bad_nodes_parts_keys_and_oversized_lists() {
        let clock = Hlc::ZERO;
        let bad_node = Msg::AeNodes {
            clock,
            session: 1,
            req: 1,
            nodes: vec![NodeRef {
                level: 2,
                index: 999,
            }],
        };
        assert!(matches!(bad_node.validate(), Err(MsgError::BadNode(_))));
        let leaf = Msg::AeNodes {
            clock,
            session: 1,
            req: 1,
            nodes: vec![NodeRef { level: 4, index: 0 }],
        };
        assert!(matches!(leaf.validate(), Err(MsgError::BadNode(_))));
        let part = Msg::AeLeafDiff {
            clock,
            session: 1,
            req: 1,
            part: 2,
            parts: 2,
            entries: vec![],
            want: vec![],
        };
        assert!(matches!(part.validate(), Err(MsgError::BadPart { .. })));
        let key = Msg::AeLeafDiff {
            clock,
            session: 1,
            req: 1,
            part: 0,
            parts: 1,
            entries: vec![],
            want: vec!["".into()],
        };
        assert!(matches!(key.validate(), Err(MsgError::BadKey { .. })));
        let digests = Msg::AeDigests {
            clock,
            session: 1,
            req: 1,
            children: vec![vec![[0; 16]; 3]],
        };
        assert!(matches!(digests.validate(), Err(MsgError::BadDigests(3))));
        let many = Msg::AeNodes {
            clock,
            session: 1,
            req: 1,
            nodes: vec![NodeRef::ROOT; MAX_NODES + 1],
        };
        assert!(matches!(many.validate(), Err(MsgError::TooMany { .. })));
        let ok = Msg::AeNodes {
            clock,
            session: 1,
            req: 1,
            nodes: vec![NodeRef::ROOT],
        };
        assert_eq!(ok.validate(), Ok(()));
    }

    #[test]
    fn messages_round_trip_through_bincode() {
        let m = Msg::AeRoot {
            clock: Hlc(7),
            session: 3,
            vv: VersionVector::default(),
            root: [1; 16],
            children: vec![[2; 16]; FANOUT],
        };
        let bytes = bincode::serde::encode_to_vec(&m, bincode::config::standard()).unwrap();
        assert_eq!(bytes.len() as u64, m.encoded_len());
        let (back, _): (Msg, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn chunks_respect_count_and_bytes() {
        let c = chunks((0..10).collect(), 4, 1000, |_| 1);
        assert_eq!(c.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 4, 2]);
        let c = chunks(vec![5, 5, 50, 5], 100, 10, |x| *x);
        assert_eq!(c, vec![vec![5, 5], vec![50], vec![5]]);
    }
}
