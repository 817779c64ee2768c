//! Encoding of stored values: bincode 2 (serde) with a size limit, so a
//! corrupt record yields an error instead of a huge allocation.

use serde::{de::DeserializeOwned, Serialize};

const LIMIT: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
#[error("corrupt {what} record: {reason}")]
pub struct CodecError {
    pub what: &'static str,
    pub reason: String,
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Encoding our own in-memory types into a Vec cannot fail.
    bincode::serde::encode_to_vec(value, bincode::config::standard()).unwrap_or_default()
}

pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, CodecError> {
    let config = bincode::config::standard().with_limit::<LIMIT>();
    match bincode::serde::decode_from_slice(bytes, config) {
        Ok((v, used)) if used == bytes.len() => Ok(v),
        Ok((_, used)) => Err(CodecError {
            what,
            reason: format!("{} trailing bytes", bytes.len() - used),
        }),
        Err(e) => Err(CodecError {
            what,
            reason: e.to_string(),
        }),
    }
}

/// The element count of an encoded sequence (or of a struct whose first field
/// is one), read from its length prefix without decoding the elements.
pub fn decode_len(what: &'static str, bytes: &[u8]) -> Result<u64, CodecError> {
    let config = bincode::config::standard().with_limit::<LIMIT>();
    bincode::serde::decode_from_slice::<u64, _>(bytes, config)
        .map(|(n, _)| n)
        .map_err(|e| CodecError {
            what,
            reason: e.to_string(),
        })
}
