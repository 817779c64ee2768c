//! The one message type nodes exchange. The transport frames it with a
//! protocol version; each protocol owns its own message enum.

use serde::{Deserialize, Serialize};

use crate::{membership, replication};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Message {
    Membership(membership::Msg),
    Replication(replication::Msg),
}
