//! Helpers that turn values into log fields an operator can read: Display
//! text, never Rust Debug (`Some(..)`, `[..]` with quotes).
//!
//! tracing's JSON formatter writes every recorded value as a string or a
//! number; a real JSON array needs the unstable `valuable` integration
//! (`--cfg tracing_unstable`), which a plain `cargo install` does not set. So
//! a list is logged as one comma-separated field plus a count field beside
//! it, which both the text and the JSON formats show plainly.

use std::fmt::Display;

/// `a, b, c` (empty string for an empty list).
pub fn list<T: Display>(items: &[T]) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&item.to_string());
    }
    out
}

/// The value, or `none`.
pub fn opt<T: Display>(v: Option<T>) -> String {
    v.map_or_else(|| "none".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_options_read_as_plain_text() {
        assert_eq!(list::<u8>(&[]), "");
        assert_eq!(list(&["a:1", "b:2"]), "a:1, b:2");
        assert_eq!(opt(Some(3)), "3");
        assert_eq!(opt::<u8>(None), "none");
    }
}
