//! Read quorums and read repair ([`ReadCoordinator`], sans-IO).
//!
//! A read with `r > 1` asks every other replica of the key that may answer
//! for its entry (`Msg::ReadRequest`) and counts this node's own entry as
//! the first reply. Once `r` replies are in, the newest entry by LWW
//! version is the answer (a tombstone is an entry: it beats older values;
//! no entry at all is older than any). Replies keep being collected until
//! every asked replica answered or the deadline passed; every replica,
//! this node included, whose reply is older than the newest seen gets the
//! newest entry (read repair), once per newer version it learns of.
//!
//! Guarantees: the answer is at least as new as the newest durable entry
//! among the `r` replicas counted (each reply is what was durable on that
//! replica when it answered); a read that cannot gather `r` replies fails
//! at its deadline with the count. Replies from nodes that were not asked,
//! or for another key, are ignored. Costs: one request and one reply per
//! other replica per read (sent to all, so the fastest `r` answer); a
//! repair message per stale replica.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{Entry, NodeId, Version};

/// The answer to a read, or its failure.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadResolved {
    pub id: u64,
    /// Replies counted, this node's included.
    pub acks: usize,
    pub needed: usize,
    /// The newest entry among the replies (`None`: nobody has the key).
    pub entry: Option<Entry>,
}

impl ReadResolved {
    pub fn reached(&self) -> bool {
        self.acks >= self.needed
    }
}

/// What the coordinator asks of the node.
#[derive(Clone, Debug, PartialEq)]
pub enum ReadAction {
    /// Answer the client.
    Answer(ReadResolved),
    /// Send `entry` of `key` to replica `to` (this node: merge it locally).
    Repair {
        to: NodeId,
        key: String,
        entry: Entry,
    },
}

#[derive(Debug)]
struct Read {
    key: String,
    needed: usize,
    /// Replicas asked that have not answered.
    waiting: BTreeSet<NodeId>,
    /// Each reply's version (`None`: no entry), this node's included.
    replies: BTreeMap<NodeId, Option<Version>>,
    newest: Option<Entry>,
    /// The newest version each replica was sent by repair.
    repaired: BTreeMap<NodeId, Version>,
    answered: bool,
    deadline_ms: u64,
}

fn version(e: &Option<Entry>) -> Option<&Version> {
    e.as_ref().map(|e| &e.version)
}

impl Read {
    fn resolved(&self, id: u64) -> ReadResolved {
        ReadResolved {
            id,
            acks: self.replies.len(),
            needed: self.needed,
            entry: self.newest.clone(),
        }
    }

    fn reply(&mut self, from: NodeId, entry: Option<Entry>) {
        self.replies.insert(from, version(&entry).cloned());
        if version(&entry) > version(&self.newest) {
            self.newest = entry;
        }
    }

    /// Repairs for every replier behind the newest entry.
    fn repairs(&mut self, out: &mut Vec<ReadAction>) {
        let Some(newest) = &self.newest else {
            return;
        };
        for (node, had) in &self.replies {
            let behind = had.as_ref() < Some(&newest.version);
            let sent = self.repaired.get(node) >= Some(&newest.version);
            if behind && !sent {
                self.repaired.insert(node.clone(), newest.version.clone());
                out.push(ReadAction::Repair {
                    to: node.clone(),
                    key: self.key.clone(),
                    entry: newest.clone(),
                });
            }
        }
    }

    /// Answers once enough replies are in, then repairs what is known.
    fn progress(&mut self, id: u64, out: &mut Vec<ReadAction>) {
        if !self.answered && self.replies.len() >= self.needed {
            self.answered = true;
            out.push(ReadAction::Answer(self.resolved(id)));
        }
        if self.answered {
            self.repairs(out);
        }
    }
}

/// Reads in progress at this node.
#[derive(Debug, Default)]
pub struct ReadCoordinator {
    reads: BTreeMap<u64, Read>,
}

impl ReadCoordinator {
    pub fn new() -> ReadCoordinator {
        ReadCoordinator::default()
    }

    /// Starts read `id` of `key` needing `needed` replies: `local` is this
    /// node and its entry; `asked` are the other replicas a request went to.
    pub fn start(
        &mut self,
        id: u64,
        key: String,
        needed: usize,
        local: (NodeId, Option<Entry>),
        asked: impl IntoIterator<Item = NodeId>,
        deadline_ms: u64,
    ) -> Vec<ReadAction> {
        let (me, local) = local;
        let mut read = Read {
            key,
            needed,
            waiting: asked.into_iter().filter(|p| *p != me).collect(),
            replies: BTreeMap::new(),
            newest: None,
            repaired: BTreeMap::new(),
            answered: false,
            deadline_ms,
        };
        read.reply(me, local);
        let mut out = Vec::new();
        read.progress(id, &mut out);
        if !read.answered && read.replies.len() + read.waiting.len() < read.needed {
            // Too few replicas to ask: fail now rather than at the deadline.
            read.answered = true;
            out.push(ReadAction::Answer(read.resolved(id)));
        }
        if !read.waiting.is_empty() {
            self.reads.insert(id, read);
        }
        out
    }

    /// `from` answered read `id` with its entry of `key`.
    pub fn on_reply(
        &mut self,
        from: &NodeId,
        id: u64,
        key: &str,
        entry: Option<Entry>,
    ) -> Vec<ReadAction> {
        let mut out = Vec::new();
        let Some(read) = self.reads.get_mut(&id) else {
            return out;
        };
        if read.key != key || !read.waiting.remove(from) {
            return out;
        }
        read.reply(from.clone(), entry);
        read.progress(id, &mut out);
        if read.waiting.is_empty() {
            self.reads.remove(&id);
        }
        out
    }

    /// Reads past their deadline: unanswered ones fail; all are forgotten.
    pub fn on_tick(&mut self, now_ms: u64) -> Vec<ReadAction> {
        let mut out = Vec::new();
        let expired: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, r)| now_ms >= r.deadline_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(r) = self.reads.remove(&id) {
                if !r.answered {
                    out.push(ReadAction::Answer(r.resolved(id)));
                }
            }
        }
        out
    }

    /// Reads in progress.
    pub fn in_progress(&self) -> usize {
        self.reads.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Hlc;

    fn n(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn entry(hlc: u64, node: &str, value: Option<&str>) -> Entry {
        Entry {
            version: Version {
                hlc: Hlc(hlc),
                node: n(node),
            },
            value: value.map(|v| v.as_bytes().to_vec()),
            meta: Default::default(),
        }
    }

    fn answers(out: &[ReadAction]) -> Vec<&ReadResolved> {
        out.iter()
            .filter_map(|a| match a {
                ReadAction::Answer(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    fn repaired(out: &[ReadAction]) -> Vec<&str> {
        out.iter()
            .filter_map(|a| match a {
                ReadAction::Repair { to, .. } => Some(to.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn newest_reply_wins_and_stale_replicas_are_repaired_including_late_ones() {
        let mut c = ReadCoordinator::new();
        let old = entry(1, "a", Some("old"));
        let new = entry(5, "b", Some("new"));
        let out = c.start(
            1,
            "k".into(),
            2,
            (n("a"), Some(old.clone())),
            ["b", "c"].map(n),
            100,
        );
        assert!(out.is_empty());
        let out = c.on_reply(&n("b"), 1, "k", Some(new.clone()));
        let a = answers(&out);
        assert_eq!(a.len(), 1);
        assert_eq!((a[0].acks, a[0].entry.as_ref()), (2, Some(&new)));
        assert_eq!(repaired(&out), vec!["a"]);
        // c answers late with nothing: it is repaired too, once.
        let out = c.on_reply(&n("c"), 1, "k", None);
        assert_eq!(repaired(&out), vec!["c"]);
        assert!(answers(&out).is_empty());
        assert_eq!(c.in_progress(), 0);
    }

    #[test]
    fn a_tombstone_is_newer_than_an_older_value_and_nobody_means_none() {
        let mut c = ReadCoordinator::new();
        let out = c.start(1, "k".into(), 2, (n("a"), None), ["b"].map(n), 100);
        assert!(out.is_empty());
        let out = c.on_reply(&n("b"), 1, "k", None);
        assert_eq!(answers(&out)[0].entry, None);
        assert!(repaired(&out).is_empty());

        let dead = entry(9, "b", None);
        c.start(
            2,
            "k".into(),
            2,
            (n("a"), Some(entry(3, "a", Some("v")))),
            ["b"].map(n),
            100,
        );
        let out = c.on_reply(&n("b"), 2, "k", Some(dead.clone()));
        assert_eq!(answers(&out)[0].entry, Some(dead));
        assert_eq!(repaired(&out), vec!["a"]);
    }

    #[test]
    fn strangers_wrong_keys_and_duplicates_are_ignored_and_the_deadline_fails_the_read() {
        let mut c = ReadCoordinator::new();
        c.start(1, "k".into(), 3, (n("a"), None), ["b", "c"].map(n), 100);
        assert!(c.on_reply(&n("x"), 1, "k", None).is_empty());
        assert!(c.on_reply(&n("b"), 1, "other", None).is_empty());
        assert!(c.on_reply(&n("b"), 1, "k", None).is_empty());
        assert!(c.on_reply(&n("b"), 1, "k", None).is_empty());
        assert!(c.on_tick(99).is_empty());
        let out = c.on_tick(100);
        let a = answers(&out);
        assert_eq!((a[0].acks, a[0].needed, a[0].reached()), (2, 3, false));
        assert_eq!(c.in_progress(), 0);
        // Too few replicas to ask: fails at once.
        let out = c.start(2, "k".into(), 3, (n("a"), None), ["b"].map(n), 100);
        assert!(!answers(&out)[0].reached());
        // r=1 answers at once from the local entry.
        let out = c.start(3, "k".into(), 1, (n("a"), None), Vec::new(), 100);
        assert!(answers(&out)[0].reached());
    }
}
