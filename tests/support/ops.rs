//! Local write ops as the store tests build them: an unconditional put and
//! a delete of a present key. Included with
//! `#[path = "support/ops.rs"] mod ops;`.

#![allow(dead_code)]

use hub::model::Meta;
use hub::store::{Condition, Op};

/// Writes `value` under `key`, whatever is there.
pub fn put(key: &str, value: &str) -> Op {
    Op::Local {
        key: key.into(),
        value: Some(value.into()),
        meta: Meta::new(),
        cond: Condition::Always,
    }
}

/// Deletes `key` if it holds a value.
pub fn del(key: &str) -> Op {
    Op::Local {
        key: key.into(),
        value: None,
        meta: Meta::new(),
        cond: Condition::IfPresent,
    }
}
