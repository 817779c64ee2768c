//! The layout of hub's keyspace: one prefix byte per logical table.
//!
//! | prefix | key                                   | value                                  |
//! |--------|---------------------------------------|----------------------------------------|
//! | `e`    | user key                              | `Entry`                                |
//! | `b`    | bucket (u16 BE) + user key            | empty: the keys of a Merkle leaf       |
//! | `t`    | leaf chunk (u16 BE)                   | 16 leaf digests: Merkle checkpoint     |
//! | `l`    | origin len (u8) + origin + first seq (u64 BE) | `Run`: an origin's deltas from one commit group |
//! | `c`    | first change index (u64 BE)           | `Vec<FeedItem>`: one commit group of the apply-order feed |
//! | `v`    | origin                                | highest contiguous seq (u64 BE)        |
//! | `s`    | origin                                | `LogStats` of that origin's log        |
//! | `p`    | node id                               | peer record (membership)               |
//! | `m`    | name                                  | meta: schema version, node id, HLC, counts, checkpoint |
//!
//! Logs and feed are written once per commit group, not once per write: a
//! group of N writes costs N entry records plus a handful of group records.
//! Big-endian integers keep numeric order equal to byte order.

use crate::model::NodeId;

pub const ENTRY: u8 = b'e';
pub const BUCKET: u8 = b'b';
pub const LEAF_CHUNK: u8 = b't';
pub const FEED: u8 = b'c';
pub const LOG: u8 = b'l';
pub const VV: u8 = b'v';
pub const LOG_STATS: u8 = b's';
pub const PEER: u8 = b'p';
pub const META: u8 = b'm';

pub fn entry(key: &str) -> Vec<u8> {
    prefixed(ENTRY, key.as_bytes())
}

pub fn bucket_member(bucket: u16, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + key.len());
    k.push(BUCKET);
    k.extend_from_slice(&bucket.to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

pub fn bucket_prefix(bucket: u16) -> Vec<u8> {
    let mut k = vec![BUCKET];
    k.extend_from_slice(&bucket.to_be_bytes());
    k
}

pub fn leaf_chunk(chunk: u16) -> Vec<u8> {
    prefixed(LEAF_CHUNK, &chunk.to_be_bytes())
}

pub fn feed(first_idx: u64) -> Vec<u8> {
    prefixed(FEED, &first_idx.to_be_bytes())
}

pub fn log_prefix(origin: &NodeId) -> Vec<u8> {
    let o = origin.as_str().as_bytes();
    let mut k = Vec::with_capacity(2 + o.len() + 8);
    k.push(LOG);
    k.push(o.len() as u8);
    k.extend_from_slice(o);
    k
}

pub fn log_run(origin: &NodeId, first_seq: u64) -> Vec<u8> {
    let mut k = log_prefix(origin);
    k.extend_from_slice(&first_seq.to_be_bytes());
    k
}

pub fn vv(origin: &NodeId) -> Vec<u8> {
    prefixed(VV, origin.as_str().as_bytes())
}

pub fn log_stats(origin: &NodeId) -> Vec<u8> {
    prefixed(LOG_STATS, origin.as_str().as_bytes())
}

pub fn peer(node: &NodeId) -> Vec<u8> {
    prefixed(PEER, node.as_str().as_bytes())
}

pub fn meta(name: &str) -> Vec<u8> {
    prefixed(META, name.as_bytes())
}

fn prefixed(p: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + rest.len());
    k.push(p);
    k.extend_from_slice(rest);
    k
}

/// The trailing big-endian u64 of a key (run first seq, feed index).
pub fn trailing_u64(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

pub fn u64_value(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

/// The text after the prefix bytes (user key, origin, node id).
pub fn suffix_str(key: &[u8], skip: usize) -> Option<&str> {
    std::str::from_utf8(key.get(skip..)?).ok()
}
