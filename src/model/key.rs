/// Longest key accepted, in bytes of UTF-8.
pub const MAX_KEY_LEN: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("key is empty")]
    Empty,
    #[error("key is {0} bytes; the limit is {MAX_KEY_LEN}")]
    TooLong(usize),
    #[error("key contains a control character at byte {0}")]
    ControlChar(usize),
    #[error("keys starting with {INTERNAL_PREFIX:?} are reserved for hub itself")]
    Reserved,
}

/// Prefix of hub's own replicated keyspace (API keys live under it). Its
/// entries replicate, are in the Merkle roots and survive restarts like any
/// other, but the client API can neither read, write nor list them.
pub const INTERNAL_PREFIX: &str = "_hub/";

/// Whether `key` belongs to hub's internal keyspace.
pub fn is_internal(key: &str) -> bool {
    key.starts_with(INTERNAL_PREFIX)
}

/// [`validate_key`] plus the refusal of the internal keyspace: what every
/// key that comes from a client must pass. Replication uses
/// [`validate_key`] alone, since internal entries replicate too.
pub fn validate_user_key(key: &str) -> Result<(), KeyError> {
    validate_key(key)?;
    if is_internal(key) {
        return Err(KeyError::Reserved);
    }
    Ok(())
}

/// Keys are UTF-8 (guaranteed by `&str`), 1 to 1024 bytes, with no control
/// characters: they appear in URLs, logs and terminal output.
pub fn validate_key(key: &str) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong(key.len()));
    }
    if let Some((i, _)) = key.char_indices().find(|(_, c)| c.is_control()) {
        return Err(KeyError::ControlChar(i));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_bounded_and_printable() {
        assert!(validate_key("sensors/n1/temp").is_ok());
        assert!(validate_key("ключ").is_ok());
        assert_eq!(validate_key(""), Err(KeyError::Empty));
        assert_eq!(
            validate_key(&"k".repeat(1025)),
            Err(KeyError::TooLong(1025))
        );
        assert!(validate_key(&"k".repeat(1024)).is_ok());
        assert_eq!(validate_key("a\nb"), Err(KeyError::ControlChar(1)));
        assert!(validate_key("_hub/keys/x").is_ok());
        assert_eq!(validate_user_key("_hub/keys/x"), Err(KeyError::Reserved));
        assert!(validate_user_key("_hubx").is_ok());
    }
}
