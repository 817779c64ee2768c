//! The vocabulary every other module speaks: node ids, hybrid logical clock
//! timestamps, versions, entries, deltas and version vectors.
//!
//! Everything here is pure: no I/O, no wall clock (time is passed in), so the
//! merge rules can be property-tested and the protocols simulated.

mod entry;
mod hlc;
mod key;
mod node_id;
mod version_vector;

pub use entry::{Delta, Entry, Meta, Version};
pub use hlc::{Clock, Hlc};
pub use key::{
    is_internal, validate_key, validate_user_key, KeyError, INTERNAL_PREFIX, MAX_KEY_LEN,
};
pub use node_id::{NodeId, NodeIdError};
pub use version_vector::VersionVector;
