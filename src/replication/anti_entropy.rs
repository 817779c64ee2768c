//! Merkle anti-entropy: both sides of a session.
//!
//! Initiator (state in [`Session`], one per peer) — responder (stateless):
//!
//! ```text
//! AeBegin                         →
//!                                 ←  AeRoot { vv snapshot, root, root's children }
//! AeNodes { differing nodes of a level, ≤ 512 } →
//!                                 ←  AeDigests { their children }      (per level)
//! AeLeaves { our items of differing leaves }    →
//!                                 ←  AeLeafDiff { entries it has newer, keys it wants } (1+ parts)
//! AeEntries { the wanted entries }              →   (no answer)
//! ```
//!
//! One request is outstanding at a time (stop-and-wait); an answer must
//! match the session, the request id and, for digests, the asked nodes, else
//! it is ignored. A differing node (a partition or below) whose digest is
//! zero at the responder is not descended into: all our items of it are
//! streamed as `AeEntries`, paced by probes (`super::ae_stream`), which is
//! what moves a partition to a new owner. Entries received are committed as `Op::Entry` (LWW merge).
//! When every request was answered in full and every entry commit is
//! durable, the initiator commits `Op::AdvanceVv(snapshot)`. The snapshot is
//! read before any tree node, and state only grows, so whatever the responder
//! showed later covers every delta the snapshot counts; and we merged all of
//! it that was newer than ours. A session that times out, loses its peer or
//! fails a commit advances nothing (entries already merged stay merged: LWW
//! makes that harmless). The responder does not advance its own vector from
//! what it receives: it runs its own session for that.

use std::collections::{BTreeSet, HashMap, VecDeque};

use super::ae_stream::Stream;
use super::msg::{approx_size, chunks, ItemVersion, MAX_BUCKETS, MAX_NODES, MAX_PARTS};
use super::ReplicaReader;
use super::{AeResult, AeRun, AeTrigger, Effect, Msg, PendingKind, Replicator};
use crate::merkle::{NodeRef, FANOUT};
use crate::model::{Entry, NodeId, Version, VersionVector};
use crate::store::Op;

/// What the initiator waits for.
#[derive(Debug)]
enum Waiting {
    Root,
    Digests {
        req: u64,
        nodes: Vec<NodeRef>,
    },
    LeafDiff {
        req: u64,
        seen: BTreeSet<u32>,
        parts: Option<u32>,
    },
}

/// A session this node initiated.
#[derive(Debug)]
pub(super) struct Session {
    pub(super) id: u64,
    pub(super) last_activity_ms: u64,
    /// The outstanding request, kept to resend it, and when it was sent.
    request: Option<Msg>,
    sent_ms: u64,
    peer_vv: Option<VersionVector>,
    /// Inner nodes known to differ whose children we still need.
    frontier: VecDeque<NodeRef>,
    /// Leaf buckets known to differ, still to compare item by item.
    leaves: VecDeque<u16>,
    waiting: Option<Waiting>,
    /// Entry commits not yet durable.
    pub(super) commits: BTreeSet<u64>,
    vv_tag: Option<u64>,
    pub(super) run: AeRun,
    /// Partitions compared (`crate::placement`): all, or those both sides
    /// store. A partial session does not advance our vector.
    scope: crate::placement::Owned,
    /// Partitions of the keys the peer wanted from us (it lacked our item,
    /// or held an older one): the session does not show that it holds all
    /// we hold there. Every other partition of `scope` it does show.
    sent: crate::placement::Owned,
    /// The layout epoch the session began in (`Replicator::layout_epoch`).
    epoch: u64,
    /// Subtrees the responder lacks, sent in full (`super::ae_stream`).
    pub(super) stream: Stream,
}

impl Replicator {
    /// Starts a session with `peer` unless one runs with it already or the
    /// limit is reached. Returns whether it started.
    pub(super) fn start_anti_entropy(
        &mut self,
        peer: &NodeId,
        trigger: AeTrigger,
        now: u64,
        store: &dyn ReplicaReader,
        out: &mut Vec<Effect>,
    ) -> bool {
        if self.sessions.contains_key(peer)
            || self.sessions.len() >= self.config.max_ae_sessions
            || *peer == self.node
        {
            return false;
        }
        let scope = self.scope_with(peer);
        if scope.is_empty() {
            return false;
        }
        let id = self.next_id();
        let msg = Msg::AeBegin {
            clock: store.clock(),
            session: id,
        };
        let mut session = Session {
            id,
            last_activity_ms: now,
            request: None,
            sent_ms: now,
            peer_vv: None,
            frontier: VecDeque::new(),
            leaves: VecDeque::new(),
            waiting: Some(Waiting::Root),
            commits: BTreeSet::new(),
            vv_tag: None,
            scope,
            sent: crate::placement::Owned::NONE,
            epoch: self.layout_epoch,
            stream: Stream::default(),
            run: AeRun {
                peer: peer.to_string(),
                trigger,
                started_ms: now,
                finished_ms: 0,
                nodes_compared: 0,
                leaves_compared: 0,
                entries_received: 0,
                entries_applied: 0,
                entries_sent: 0,
                bytes_sent: 0,
                bytes_received: 0,
                result: AeResult::InSync,
            },
        };
        session.run.bytes_sent += msg.encoded_len();
        session.request = Some(msg.clone());
        tracing::debug!(node = %self.node, peer = %peer, session = id, ?trigger, "anti-entropy started");
        self.sessions.insert(peer.clone(), session);
        self.peers
            .entry(peer.clone())
            .or_default()
            .stats
            .anti_entropy_runs += 1;
        out.push(Effect::Send {
            to: peer.clone(),
            msg,
        });
        true
    }

    pub(super) fn fail_session(&mut self, peer: &NodeId, now: u64, reason: &str) {
        if self.sessions.contains_key(peer) {
            self.finish_session(peer, now, Some(reason));
        }
    }

    /// Ends the session with `peer`, recording its run.
    pub(super) fn finish_session(&mut self, peer: &NodeId, now: u64, failure: Option<&str>) {
        let Some(s) = self.sessions.remove(peer) else {
            return;
        };
        let mut run = s.run;
        run.finished_ms = now;
        let p = self.peers.entry(peer.clone()).or_default();
        match failure {
            Some(reason) => {
                run.result = AeResult::Failed(reason.to_string());
                p.stats.anti_entropy_failures += 1;
                tracing::warn!(node = %self.node, peer = %peer, session = s.id, reason, "anti-entropy failed");
            }
            None => {
                let changed = run.entries_received + run.entries_sent + run.leaves_compared > 0;
                run.result = if changed {
                    AeResult::Repaired
                } else {
                    AeResult::InSync
                };
                tracing::info!(node = %self.node, peer = %peer, session = s.id,
                    received = run.entries_received, sent = run.entries_sent,
                    bytes = run.bytes_sent + run.bytes_received, ms = now.saturating_sub(run.started_ms),
                    "anti-entropy done");
            }
        }
        p.stats.anti_entropy_entries_received += run.entries_received;
        p.stats.last_anti_entropy = Some(run.clone());
        if failure.is_none() && s.epoch == self.layout_epoch {
            self.session_confirmed(peer, s.scope.minus(&s.sent), s.sent, now);
        }
        if run.trigger == AeTrigger::Handoff {
            // Entries sent are counted as they go (`send_wanted`, the stream).
            self.progress.handoff_sessions += 1;
        }
        self.last_ae = Some(run);
        // Tags of this session still pending will be ignored when they come.
    }

    /// Answers from the responder, for our session.
    pub(super) fn on_ae_answer(
        &mut self,
        from: &NodeId,
        msg: Msg,
        now: u64,
        store: &dyn ReplicaReader,
        out: &mut Vec<Effect>,
    ) {
        let session = match &msg {
            Msg::AeRoot { session, .. }
            | Msg::AeDigests { session, .. }
            | Msg::AeLeafDiff { session, .. } => *session,
            _ => return,
        };
        let Some(s) = self.sessions.get_mut(from).filter(|s| s.id == session) else {
            return; // late, duplicated or for a session that ended
        };
        let bytes = msg.encoded_len();
        if let Msg::AeDigests { req, .. } = &msg {
            if s.stream.answered(*req) {
                s.run.bytes_received += bytes;
                s.last_activity_ms = now;
                self.session_step(from, now, store, out);
                return;
            }
        }
        match (msg, &mut s.waiting) {
            (
                Msg::AeRoot {
                    vv, root, children, ..
                },
                Some(Waiting::Root),
            ) => {
                s.run.bytes_received += bytes;
                s.last_activity_ms = now;
                s.waiting = None;
                s.peer_vv = Some(vv);
                if root != store.merkle_root() {
                    let theirs = if children.is_empty() {
                        vec![crate::merkle::ZERO; FANOUT]
                    } else {
                        children
                    };
                    s.run.nodes_compared += 1;
                    let mine = store.merkle_children(NodeRef::ROOT).unwrap_or_default();
                    enqueue_differing(s, NodeRef::ROOT, &mine, &theirs);
                }
            }
            (Msg::AeDigests { req, children, .. }, Some(Waiting::Digests { req: want, nodes })) => {
                if req != *want || children.len() != nodes.len() {
                    return;
                }
                let nodes = std::mem::take(nodes);
                s.run.bytes_received += bytes;
                s.last_activity_ms = now;
                s.waiting = None;
                for (node, theirs) in nodes.into_iter().zip(children) {
                    s.run.nodes_compared += 1;
                    let mine = store.merkle_children(node).unwrap_or_default();
                    enqueue_differing(s, node, &mine, &theirs);
                }
            }
            (
                Msg::AeLeafDiff {
                    req,
                    part,
                    parts,
                    entries,
                    want,
                    ..
                },
                Some(Waiting::LeafDiff {
                    req: expect,
                    seen,
                    parts: known,
                }),
            ) => {
                if req != *expect || known.is_some_and(|k| k != parts) || seen.contains(&part) {
                    return;
                }
                *known = Some(parts);
                seen.insert(part);
                let complete = seen.len() as u32 == parts;
                s.run.bytes_received += bytes;
                s.last_activity_ms = now;
                if complete {
                    s.waiting = None;
                }
                let id = s.id;
                if !entries.is_empty() {
                    s.run.entries_received += entries.len() as u64;
                    let ops = entries
                        .into_iter()
                        .map(|(key, entry)| Op::Entry { key, entry })
                        .collect();
                    let tag = self.commit(
                        from,
                        ops,
                        PendingKind::SessionEntries { session: id },
                        now,
                        out,
                    );
                    if let Some(s) = self.sessions.get_mut(from) {
                        s.commits.insert(tag);
                    }
                }
                if !want.is_empty() {
                    if let Some(s) = self.sessions.get_mut(from) {
                        for key in &want {
                            s.sent.insert(crate::placement::partition_of(key));
                        }
                    }
                    self.send_wanted(from, id, want, store, out);
                }
            }
            _ => return, // not what we wait for: a duplicate or out of order
        }
        self.session_step(from, now, store, out);
    }

    /// Sends the responder the entries it wants (we are newer there).
    fn send_wanted(
        &mut self,
        peer: &NodeId,
        session: u64,
        want: Vec<String>,
        store: &dyn ReplicaReader,
        out: &mut Vec<Effect>,
    ) {
        let mut entries: Vec<(String, Entry)> = Vec::with_capacity(want.len());
        for key in want {
            match store.get(&key) {
                Ok(Some(e)) => entries.push((key, e)),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(node = %self.node, peer = %peer, error = %e, "cannot read entry for anti-entropy")
                }
            }
        }
        let n = entries.len() as u64;
        let clock = store.clock();
        let mut bytes = 0;
        for chunk in chunks(
            entries,
            self.config.max_items_per_msg,
            self.config.max_msg_bytes,
            |(k, e)| approx_size(k, e),
        ) {
            let msg = Msg::AeEntries {
                clock,
                session,
                entries: chunk,
            };
            bytes += msg.encoded_len();
            out.push(Effect::Send {
                to: peer.clone(),
                msg,
            });
        }
        if let Some(s) = self.sessions.get_mut(peer) {
            s.run.entries_sent += n;
            s.run.bytes_sent += bytes;
            if s.run.trigger == AeTrigger::Handoff {
                self.progress.handoff_entries_sent += n;
            }
        }
    }

    /// Sends the next request of the session, or finishes it.
    fn session_step(
        &mut self,
        peer: &NodeId,
        now: u64,
        store: &dyn ReplicaReader,
        out: &mut Vec<Effect>,
    ) {
        self.pump_stream(peer, now, store, out);
        let req = self.next_id();
        let Some(s) = self.sessions.get_mut(peer) else {
            return;
        };
        if s.waiting.is_some() {
            return;
        }
        let clock = store.clock();
        let msg = if !s.frontier.is_empty() {
            let take = s.frontier.len().min(MAX_NODES);
            let nodes: Vec<NodeRef> = s.frontier.drain(..take).collect();
            s.waiting = Some(Waiting::Digests {
                req,
                nodes: nodes.clone(),
            });
            Msg::AeNodes {
                clock,
                session: s.id,
                req,
                nodes,
            }
        } else if !s.leaves.is_empty() {
            let max_items = self.config.max_items_per_msg;
            let mut buckets: Vec<(u16, Vec<ItemVersion>)> = Vec::new();
            let mut items = 0;
            while let Some(&b) = s.leaves.front() {
                if buckets.len() >= MAX_BUCKETS {
                    break;
                }
                let versions = match store.bucket_versions(b) {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::error!(node = %self.node, peer = %peer, bucket = b, error = %e, "cannot read bucket");
                        self.fail_session(peer, now, "store read failed");
                        return;
                    }
                };
                if !buckets.is_empty() && items + versions.len() > max_items {
                    break;
                }
                if versions.len() > max_items {
                    // A single leaf beyond the message cap: ~270 million keys
                    // at 65,536 leaves. Give up rather than send a huge frame.
                    self.fail_session(peer, now, "leaf bucket larger than the message cap");
                    return;
                }
                s.leaves.pop_front();
                items += versions.len();
                let list = versions
                    .into_iter()
                    .map(|(key, version, tombstone)| ItemVersion {
                        key,
                        version,
                        tombstone,
                    })
                    .collect();
                buckets.push((b, list));
            }
            s.run.leaves_compared += buckets.len() as u64;
            s.waiting = Some(Waiting::LeafDiff {
                req,
                seen: BTreeSet::new(),
                parts: None,
            });
            Msg::AeLeaves {
                clock,
                session: s.id,
                req,
                buckets,
            }
        } else {
            self.maybe_finish_session(peer, now, out);
            return;
        };
        if let Some(s) = self.sessions.get_mut(peer) {
            s.run.bytes_sent += msg.encoded_len();
            s.request = Some(msg.clone());
            s.sent_ms = now;
        }
        out.push(Effect::Send {
            to: peer.clone(),
            msg,
        });
    }

    /// Resends the outstanding request of sessions that got no answer for
    /// `ae_retry_ms` (a message lost, or dropped by a full send queue). A
    /// resent request gets a new id, so parts of an older answer are never
    /// mixed with the new one.
    pub(super) fn retry_sessions(&mut self, now: u64, out: &mut Vec<Effect>) {
        let retry_ms = self.config.ae_retry_ms;
        let streaming: Vec<NodeId> = self.sessions.keys().cloned().collect();
        for peer in streaming {
            self.retry_probes(&peer, now, out);
        }
        let due: Vec<NodeId> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.waiting.is_some()
                    && s.request.is_some()
                    && now.saturating_sub(s.sent_ms) >= retry_ms
            })
            .map(|(id, _)| id.clone())
            .collect();
        for peer in due {
            let req = self.next_id();
            let Some(s) = self.sessions.get_mut(&peer) else {
                continue;
            };
            let Some(mut msg) = s.request.take() else {
                continue;
            };
            match (&mut msg, &mut s.waiting) {
                (Msg::AeNodes { req: r, .. }, Some(Waiting::Digests { req: w, .. })) => {
                    *r = req;
                    *w = req;
                }
                (Msg::AeLeaves { req: r, .. }, Some(waiting @ Waiting::LeafDiff { .. })) => {
                    *r = req;
                    *waiting = Waiting::LeafDiff {
                        req,
                        seen: BTreeSet::new(),
                        parts: None,
                    };
                }
                _ => {}
            }
            s.sent_ms = now;
            s.run.bytes_sent += msg.encoded_len();
            s.request = Some(msg.clone());
            tracing::debug!(node = %self.node, peer = %peer, session = s.id, kind = msg.kind(), "anti-entropy request resent");
            out.push(Effect::Send { to: peer, msg });
        }
    }

    /// When the exchange is complete and every entry is durable, advances
    /// our vector to the peer's snapshot (then the session ends on its outcome).
    pub(super) fn maybe_finish_session(&mut self, peer: &NodeId, now: u64, out: &mut Vec<Effect>) {
        let Some(s) = self.sessions.get_mut(peer) else {
            return;
        };
        let done = s.waiting.is_none()
            && s.frontier.is_empty()
            && s.leaves.is_empty()
            && s.stream.is_done();
        if !done || !s.commits.is_empty() || s.vv_tag.is_some() {
            return;
        }
        if !s.scope.is_full() {
            // Compared only some partitions: the peer's vector counts deltas
            // of others we did not check, so it must not become ours.
            self.finish_session(peer, now, None);
            return;
        }
        let Some(vv) = s.peer_vv.clone() else { return };
        let id = s.id;
        let tag = self.commit(
            peer,
            vec![Op::AdvanceVv(vv)],
            PendingKind::SessionVv { session: id },
            now,
            out,
        );
        if let Some(s) = self.sessions.get_mut(peer) {
            s.vv_tag = Some(tag);
        }
    }

    /// Requests from a peer's session: answered from our current state.
    pub(super) fn serve_ae(
        &mut self,
        from: &NodeId,
        msg: Msg,
        now: u64,
        store: &dyn ReplicaReader,
        out: &mut Vec<Effect>,
    ) {
        let reply = match msg {
            Msg::AeBegin { session, .. } => {
                self.peers
                    .entry(from.clone())
                    .or_default()
                    .stats
                    .anti_entropy_served += 1;
                // The vector first: everything read after it covers it.
                let vv = store.version_vector();
                let root = store.merkle_root();
                let children = if root == crate::merkle::ZERO {
                    Vec::new()
                } else {
                    store.merkle_children(NodeRef::ROOT).unwrap_or_default()
                };
                vec![Msg::AeRoot {
                    clock: store.clock(),
                    session,
                    vv,
                    root,
                    children,
                }]
            }
            Msg::AeNodes {
                session,
                req,
                nodes,
                ..
            } => {
                // Validated: every node is a valid inner node.
                let children = nodes
                    .iter()
                    .map(|n| {
                        store
                            .merkle_children(*n)
                            .unwrap_or_else(|| vec![crate::merkle::ZERO; FANOUT])
                    })
                    .collect();
                vec![Msg::AeDigests {
                    clock: store.clock(),
                    session,
                    req,
                    children,
                }]
            }
            Msg::AeLeaves {
                session,
                req,
                buckets,
                ..
            } => match self.leaf_diff(from, buckets, store) {
                Ok((entries, want)) => {
                    let clock = store.clock();
                    let mut parts = chunks(
                        entries,
                        self.config.max_items_per_msg,
                        self.config.max_msg_bytes,
                        |(k, e)| approx_size(k, e),
                    );
                    if parts.is_empty() {
                        parts.push(Vec::new());
                    }
                    if parts.len() > MAX_PARTS as usize {
                        tracing::error!(node = %self.node, peer = %from, parts = parts.len(), "leaf diff too large; not answered");
                        return;
                    }
                    let n = parts.len() as u32;
                    let mut want = Some(want);
                    parts
                        .into_iter()
                        .enumerate()
                        .map(|(i, entries)| {
                            let want = if i as u32 == n - 1 {
                                want.take().unwrap_or_default()
                            } else {
                                Vec::new()
                            };
                            Msg::AeLeafDiff {
                                clock,
                                session,
                                req,
                                part: i as u32,
                                parts: n,
                                entries,
                                want,
                            }
                        })
                        .collect()
                }
                Err(e) => {
                    tracing::error!(node = %self.node, peer = %from, error = %e, "cannot read buckets for anti-entropy");
                    return;
                }
            },
            Msg::AeEntries { entries, .. } => {
                // Only keys we store: entries also come unasked (streamed
                // subtrees, `super::ae_stream`) from a peer whose view of
                // the owners may differ from ours.
                let ops: Vec<Op> = entries
                    .into_iter()
                    .filter(|(key, _)| crate::placement::stores(&self.mine, key))
                    .map(|(key, entry)| Op::Entry { key, entry })
                    .collect();
                if !ops.is_empty() {
                    if let Some(p) = self.peers.get_mut(from) {
                        p.stats.anti_entropy_entries_pushed += ops.len() as u64;
                    }
                    self.commit(from, ops, PendingKind::ServedEntries, now, out);
                }
                return;
            }
            _ => return,
        };
        for msg in reply {
            out.push(Effect::Send {
                to: from.clone(),
                msg,
            });
        }
    }

    /// Compares the initiator's items of some leaves with ours: the entries
    /// where we are newer (or it lacks the key), and the keys where it is.
    #[allow(clippy::type_complexity)]
    fn leaf_diff(
        &self,
        from: &NodeId,
        buckets: Vec<(u16, Vec<ItemVersion>)>,
        store: &dyn ReplicaReader,
    ) -> crate::store::Result<(Vec<(String, Entry)>, Vec<String>)> {
        let mut send = Vec::new();
        let mut want = Vec::new();
        let mut seen_buckets = BTreeSet::new();
        for (bucket, items) in buckets {
            if !seen_buckets.insert(bucket) {
                continue; // a bucket listed twice is answered once
            }
            let mut theirs: HashMap<String, Version> = HashMap::with_capacity(items.len());
            for item in items {
                if crate::merkle::bucket_of(&item.key) != bucket {
                    tracing::debug!(node = %self.node, peer = %from, "leaf item in the wrong bucket ignored");
                    continue;
                }
                theirs.insert(item.key, item.version);
            }
            let mut mine: HashMap<String, Version> = HashMap::new();
            for (key, version, _) in store.bucket_versions(bucket)? {
                mine.insert(key, version);
            }
            for (key, version) in &theirs {
                if !crate::placement::stores(&self.mine, key) {
                    continue; // not ours to store
                }
                if !matches!(mine.get(key), Some(m) if m >= version) {
                    want.push(key.clone());
                }
            }
            for (key, version) in &mine {
                if !matches!(theirs.get(key), Some(t) if t >= version) {
                    if let Some(e) = store.get(key)? {
                        send.push((key.clone(), e));
                    }
                }
            }
        }
        // Deterministic order (HashMap iteration is not).
        send.sort_by(|a, b| a.0.cmp(&b.0));
        want.sort();
        Ok((send, want))
    }
}

/// Queues the children of `node` whose digests differ.
fn enqueue_differing(
    s: &mut Session,
    node: NodeRef,
    mine: &[crate::merkle::Digest],
    theirs: &[crate::merkle::Digest],
) {
    let Some(kids) = node.children() else { return };
    for (i, child) in kids.enumerate() {
        let (a, b) = (mine.get(i), theirs.get(i));
        if a == b || !super::sharding::in_scope(&s.scope, child) {
            continue;
        }
        if Stream::wants(child, b) {
            // The peer has nothing here: send it all (`super::ae_stream`).
            // Not confirmed by this session: nothing streamed is trusted as
            // delivered.
            s.sent.insert(crate::placement::partition_of_bucket(
                *crate::merkle::leaf_range(child).start(),
            ));
            s.stream.push(child);
        } else if child.is_leaf() {
            s.leaves.push_back(child.index as u16);
        } else {
            s.frontier.push_back(child);
        }
    }
}
