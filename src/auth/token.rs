//! API tokens: `hub_<id>_<secret>`.
//!
//! `id` is 8 random bytes (16 hex digits), public, and names the key in
//! listings and revocations; `secret` is 32 random bytes (64 hex digits,
//! 256 bits) from the OS generator. Nodes keep only the BLAKE3 hash of the
//! secret: a stolen data directory yields no usable token, and since the
//! secret is uniformly random no salt or slow hash is needed. Hashes are
//! compared in constant time (`blake3::Hash`'s `==`).

use std::fmt;

use rand::RngCore;

const PREFIX: &str = "hub_";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;

/// The public half of a token: 16 lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    /// Parses an id as printed by `hub keys list`.
    pub fn parse(s: &str) -> Option<KeyId> {
        let ok = s.len() == 2 * ID_BYTES
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| KeyId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A token as handed to its owner once. Deliberately not `Debug`/`Display`,
/// so it cannot end up in a log line by accident; [`Token::reveal`] is the
/// one way to see it.
pub struct Token {
    text: String,
    id: KeyId,
    hash: blake3::Hash,
}

impl Token {
    /// A fresh random token.
    pub fn generate() -> Token {
        let mut rng = rand::rngs::OsRng;
        let mut id = [0u8; ID_BYTES];
        let mut secret = [0u8; SECRET_BYTES];
        rng.fill_bytes(&mut id);
        rng.fill_bytes(&mut secret);
        let secret = hex::encode(secret);
        let id = KeyId(hex::encode(id));
        Token {
            text: format!("{PREFIX}{id}_{secret}"),
            hash: hash_secret(&secret),
            id,
        }
    }

    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// What nodes store.
    pub fn hash(&self) -> blake3::Hash {
        self.hash
    }

    /// The token text, to print once.
    pub fn reveal(&self) -> &str {
        &self.text
    }
}

/// A presented token split into its id and the hash of its secret.
pub struct Presented {
    pub id: KeyId,
    pub hash: blake3::Hash,
}

/// Splits a presented token; `None` when it is not shaped like one of ours.
pub fn parse(text: &str) -> Option<Presented> {
    let rest = text.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let id = KeyId::parse(id)?;
    let ok = secret.len() == 2 * SECRET_BYTES
        && secret
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    ok.then(|| Presented {
        id,
        hash: hash_secret(secret),
    })
}

fn hash_secret(secret: &str) -> blake3::Hash {
    blake3::hash(secret.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_back_to_their_id_and_hash() {
        let t = Token::generate();
        let p = parse(t.reveal()).expect("own token parses");
        assert_eq!(&p.id, t.id());
        assert_eq!(p.hash, t.hash());
        assert!(t.reveal().len() >= PREFIX.len() + 16 + 1 + 64);
        assert_ne!(Token::generate().reveal(), t.reveal());
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let t = Token::generate();
        let good = t.reveal();
        for bad in [
            "",
            "hub_",
            &good[1..],
            &good[..good.len() - 1],
            &good.replace("hub_", "bub_"),
            &format!("{good}0"),
            &good.to_uppercase(),
        ] {
            assert!(parse(bad).is_none(), "{bad:?} parsed");
        }
    }

    #[test]
    fn a_changed_secret_hashes_differently() {
        let t = Token::generate();
        let mut s = t.reveal().to_string();
        let last = s.pop().unwrap();
        s.push(if last == '0' { '1' } else { '0' });
        assert_ne!(parse(&s).unwrap().hash, t.hash());
    }
}
