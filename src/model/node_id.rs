use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A node's name, unique in the cluster and bound to its certificate.
///
/// Restricted to what is also a valid DNS label (lowercase ASCII letters,
/// digits and `-`, 1 to 63 bytes, no leading or trailing `-`) so that it can
/// be carried as a certificate subject alternative name unchanged.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(Arc<str>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid node id {id:?}: use 1-63 lowercase letters, digits or '-', not starting or ending with '-'")]
pub struct NodeIdError {
    pub id: String,
}

impl NodeId {
    pub fn new(id: impl Into<String>) -> Result<Self, NodeIdError> {
        let id: String = id.into();
        let ok = !id.is_empty()
            && id.len() <= 63
            && !id.starts_with('-')
            && !id.ends_with('-')
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(NodeId(id.into()))
        } else {
            Err(NodeIdError { id })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NodeId {
    type Error = NodeIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        NodeId::new(s)
    }
}

impl From<NodeId> for String {
    fn from(n: NodeId) -> String {
        n.0.to_string()
    }
}

impl std::str::FromStr for NodeId {
    type Err = NodeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeId::new(s)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_must_be_dns_labels() {
        assert!(NodeId::new("n1").is_ok());
        assert!(NodeId::new("gw-07").is_ok());
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"x".repeat(64)] {
            assert!(NodeId::new(bad).is_err(), "{bad:?} accepted");
        }
    }
}
