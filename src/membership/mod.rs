//! Membership and failure detection, as a sans-IO state machine.
//!
//! Messages ([`Msg`]) and ticks go in, [`Effect`]s come out; no sockets, no
//! tokio, no wall clock (`now_ms` is any monotonic millisecond clock the
//! caller owns), randomness passed in.
//!
//! **How it works.** A node joins by sending [`Msg::Hello`] to any member's
//! address (retried with backoff until one answers); the answer
//! ([`Msg::Welcome`]) is the full member list. From then on every node pings
//! every known member each `heartbeat_interval_ms` (full mesh: meant for small
//! fleets, tens of nodes). Pings and acks piggyback gossip: the sender's own
//! entry first, then a rotating window of its table (`gossip_per_message`
//! entries), so a new member, a new address or a new incarnation reaches
//! everyone within one heartbeat in clusters up to that size, and within
//! `n / gossip_per_message` heartbeats above it.
//!
//! Failure detection is **local**: each node decides a peer's status from its
//! own phi-accrual detector fed by the acks to its own pings (Cassandra/Akka
//! style, [`detector`]). phi ≥ `phi_threshold` → suspect; suspect for
//! `dead_after_ms` → dead; dead peers are kept and pinged every
//! `dead_probe_interval_ms` until, `remove_dead_after_ms` after they died
//! or left, they are forgotten ([`Effect::Forget`]); any message heard
//! directly from a peer makes it alive again. Suspicion heard second-hand never changes our own view (with
//! direct probes of everyone it would only add false positives), but it
//! still matters SWIM-style: a node that hears it is suspect/dead at its
//! current incarnation refutes by bumping its incarnation, and a peer that
//! holds it suspect/dead and hears of that higher incarnation probes it at
//! once instead of waiting for the slow dead-probe timer. This is what makes
//! a healed partition turn alive within a heartbeat or two of the first
//! message crossing it.
//!
//! **Trust.** The sender of every message is the id from its certificate,
//! given to [`Membership::on_message`] by the transport. A `Hello` claiming
//! another id is refused ([`Effect::Refused`]). Entries a peer gossips about
//! *itself* are authoritative for its address; entries about third parties
//! only add members and raise incarnations.
//!
//! **Guarantees.** With messages getting through, every member learns every
//! other member (and its latest address); a peer that stops answering is
//! suspect after roughly mean interval + `acceptable_pause_ms` + a few
//! std-devs, dead `dead_after_ms` later; a peer that answers again is alive
//! within one probe period (a heartbeat, or `dead_probe_interval_ms` if no
//! gossip about it arrives first). No permanent dead after a partition heals.
//! Not guaranteed: agreement between nodes at any instant; under asymmetric
//! loss (we hear a peer but it never hears us) the peer flaps between alive
//! and suspect in our view.
//!
//! **Driving it (the async shell).** One task owns the [`Membership`]
//! (behind a mutex or as an actor). `now_ms` is a monotonic clock (e.g.
//! milliseconds since an `Instant` taken at start), the same for every call.
//! At start: `new(id, advertised_addr, incarnation, cfg)` (incarnation: wall
//! clock ms at process start), then `restore(store.peers(), now)`, then
//! `join(--join addrs, now)`. Call `tick(now, rng)` every
//! [`Config::tick_interval_ms`]; call `on_message(cert_id, remote_addr, msg,
//! now)` for every membership message. Map effects: `Send` → the per-peer
//! queue of `to` (the transport dials `addr` and checks the certificate
//! names `to`); `SendToAddr` → dial `addr`, accept whatever valid cluster
//! certificate answers and report that id as `from` for its replies;
//! `Persist` → `store.save_peer`; `StatusChanged` → tell replication (and
//! start anti-entropy with a peer that becomes alive); `Refused` → metrics.
//! Send failures need not be reported back: missing acks are the signal.
//!
//! **Costs.** Per heartbeat interval each node sends one ping and one ack per
//! peer: O(n²) messages cluster-wide, each ≤ `gossip_per_message` entries
//! (~100 bytes each). Memory O(n · detector window).

pub mod detector;
pub mod msg;
pub mod table;

use std::net::SocketAddr;

use rand::Rng;
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::model::NodeId;
use crate::store::PeerRecord;

pub use detector::{DetectorConfig, PhiAccrual};
pub use msg::{MemberInfo, Msg, MsgTooLarge, Stamp, MAX_GOSSIP_PER_MSG, MAX_MEMBERS_PER_MSG};
pub use table::{Member, MemberView, Status, Table};

/// Settings. Defaults suit a small fleet on a LAN: a dead peer is suspect
/// after ~2 s and dead after ~8 s.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Ping period per peer. Default 500 ms. Lower detects faster and costs
    /// proportionally more messages (n² per period cluster-wide).
    pub heartbeat_interval_ms: u64,
    /// Suspect when phi reaches this. Default 8 (≈1e-8 chance of a false
    /// positive under the normal model). Must be > 0.
    pub phi_threshold: f64,
    /// Floor of the inter-arrival std-dev. Default 100 ms.
    pub min_std_dev_ms: f64,
    /// Silence tolerated on top of the mean interval before phi rises.
    /// Default 1000 ms (two lost heartbeats).
    pub acceptable_pause_ms: f64,
    /// Inter-arrival samples kept per peer. Default 100.
    pub window: usize,
    /// Suspect for this long → dead. Default 6000 ms. Must be ≥ the
    /// heartbeat interval.
    pub dead_after_ms: u64,
    /// Ping period for dead peers, so they can come back. Default 2000 ms.
    pub dead_probe_interval_ms: u64,
    /// First join retry delay; doubles up to `join_retry_max_ms`.
    /// Defaults 1000 / 8000 ms.
    pub join_retry_ms: u64,
    pub join_retry_max_ms: u64,
    /// Gossip entries piggybacked per ping/ack (own entry included).
    /// Default 32, at most [`MAX_GOSSIP_PER_MSG`].
    pub gossip_per_message: usize,
    /// A dead or departed peer is forgotten this long after it died or left
    /// (foca's `remove_down_after`): no more probes, its record is deleted
    /// ([`Effect::Forget`]) so a restart does not bring it back. Default 1 h;
    /// at least `dead_probe_interval_ms`, so it is probed at least once.
    pub remove_dead_after_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            heartbeat_interval_ms: 500,
            phi_threshold: 8.0,
            min_std_dev_ms: 100.0,
            acceptable_pause_ms: 1_000.0,
            window: 100,
            dead_after_ms: 6_000,
            dead_probe_interval_ms: 2_000,
            join_retry_ms: 1_000,
            join_retry_max_ms: 8_000,
            gossip_per_message: 32,
            remove_dead_after_ms: 3_600_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("membership: heartbeat interval must be > 0 ms")]
    ZeroHeartbeat,
    #[error("membership: phi threshold must be a positive number, got {0}")]
    BadThreshold(f64),
    #[error(
        "membership: min std-dev and acceptable pause must be finite and >= 0 (min std-dev > 0)"
    )]
    BadDetector,
    #[error("membership: detector window must be at least 2 samples")]
    SmallWindow,
    #[error("membership: dead_after ({dead_after_ms} ms) must be at least the heartbeat interval ({heartbeat_ms} ms)")]
    DeadBeforeHeartbeat {
        dead_after_ms: u64,
        heartbeat_ms: u64,
    },
    #[error("membership: dead probe interval and join retry delays must be > 0 and join_retry_ms <= join_retry_max_ms")]
    BadIntervals,
    #[error("membership: gossip_per_message must be 1..={MAX_GOSSIP_PER_MSG}, got {0}")]
    BadGossip(usize),
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_interval_ms == 0 {
            return Err(ConfigError::ZeroHeartbeat);
        }
        if !(self.phi_threshold.is_finite() && self.phi_threshold > 0.0) {
            return Err(ConfigError::BadThreshold(self.phi_threshold));
        }
        if !(self.min_std_dev_ms.is_finite()
            && self.min_std_dev_ms > 0.0
            && self.acceptable_pause_ms.is_finite()
            && self.acceptable_pause_ms >= 0.0)
        {
            return Err(ConfigError::BadDetector);
        }
        if self.window < 2 {
            return Err(ConfigError::SmallWindow);
        }
        if self.dead_after_ms < self.heartbeat_interval_ms {
            return Err(ConfigError::DeadBeforeHeartbeat {
                dead_after_ms: self.dead_after_ms,
                heartbeat_ms: self.heartbeat_interval_ms,
            });
        }
        if self.dead_probe_interval_ms == 0
            || self.remove_dead_after_ms < self.dead_probe_interval_ms
            || self.join_retry_ms == 0
            || self.join_retry_ms > self.join_retry_max_ms
        {
            return Err(ConfigError::BadIntervals);
        }
        if self.gossip_per_message == 0 || self.gossip_per_message > MAX_GOSSIP_PER_MSG {
            return Err(ConfigError::BadGossip(self.gossip_per_message));
        }
        Ok(())
    }

    /// How often the shell should call [`Membership::tick`]: a quarter of the
    /// heartbeat (finer is harmless, coarser delays probes and detection).
    pub fn tick_interval_ms(&self) -> u64 {
        (self.heartbeat_interval_ms / 4).max(1)
    }

    fn detector(&self) -> DetectorConfig {
        DetectorConfig {
            window: self.window,
            min_std_dev_ms: self.min_std_dev_ms,
            acceptable_pause_ms: self.acceptable_pause_ms,
            first_interval_estimate_ms: self.heartbeat_interval_ms as f64,
        }
    }
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefuseReason {
    #[error("claims to be {claimed:?} but its certificate says otherwise")]
    ClaimedOtherId { claimed: NodeId },
    #[error("uses this node's own id")]
    OwnId,
    #[error(transparent)]
    TooLarge(#[from] MsgTooLarge),
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send to a known peer. The transport must check the peer's
    /// certificate names `to` (reuse an existing connection with `to` if any).
    Send {
        to: NodeId,
        addr: SocketAddr,
        msg: Msg,
    },
    /// Send to an address whose node id is not known yet (join seeds).
    SendToAddr { addr: SocketAddr, msg: Msg },
    /// A peer's status changed; `from: None` for a newly learned peer.
    /// Replication should use exactly the peers currently `Alive`.
    StatusChanged {
        peer: NodeId,
        from: Option<Status>,
        to: Status,
    },
    /// Store this peer record (new peer, new address or incarnation).
    Persist { peer: NodeId, record: PeerRecord },
    /// A message from `peer` was refused (also counted and logged).
    Refused { peer: NodeId, reason: RefuseReason },
    /// `peer` was dead or gone for `remove_dead_after_ms` and is no longer
    /// tracked: delete its record and drop its connection state.
    Forget { peer: NodeId, addr: SocketAddr },
    /// A clock-offset measurement of `peer` from a ping sent at monotonic
    /// `sent_mono_ms` (see [`crate::clock::offset`]).
    ClockSample {
        peer: NodeId,
        sent_mono_ms: u64,
        sample: crate::clock::Sample,
    },
}

/// Counters for introspection/metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub refused: u64,
    pub refutations: u64,
    pub suspicions: u64,
    pub deaths: u64,
    pub revivals: u64,
    pub pings_sent: u64,
    pub acks_received: u64,
    pub join_attempts: u64,
    /// Second-hand entries about unknown members dropped because the table
    /// was full.
    pub gossip_ignored: u64,
    /// Dead or departed peers forgotten after `remove_dead_after_ms`.
    pub forgotten: u64,
}

#[derive(Clone, Debug)]
struct JoinState {
    targets: Vec<(Option<NodeId>, SocketAddr)>,
    next_attempt_ms: u64,
    backoff_ms: u64,
}

/// One node's membership state machine.
#[derive(Debug)]
pub struct Membership {
    me: NodeId,
    my_addr: SocketAddr,
    incarnation: u64,
    config: Config,
    table: Table,
    join: Option<JoinState>,
    left: bool,
    gossip_cursor: usize,
    stats: Stats,
    /// Both clocks in microseconds as of the current step (see
    /// [`Membership::set_clocks`]); pings carry them for offset estimates.
    clocks: Stamp,
    /// What we advertise about ourselves besides the QUIC address.
    my_http: Option<String>,
    my_head: u64,
}

impl Membership {
    /// `incarnation` should grow across restarts of the same node (e.g. the
    /// wall clock in ms at process start); if it does not, the node still
    /// recovers by refutation once a peer gossips its old incarnation.
    pub fn new(
        me: NodeId,
        my_addr: SocketAddr,
        incarnation: u64,
        config: Config,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Membership {
            me,
            my_addr,
            incarnation,
            config,
            table: Table::default(),
            join: None,
            left: false,
            gossip_cursor: 0,
            stats: Stats::default(),
            clocks: Stamp::default(),
            my_http: None,
            my_head: 0,
        })
    }

    /// The clocks of the step about to run, in microseconds: pings are
    /// stamped with them and acks answered with the wall clock, so the
    /// pinger can estimate its offset to us ([`Effect::ClockSample`]).
    /// Never set (zero): no stamps, no samples; timers are unaffected
    /// (they run on the `now_ms` each call takes).
    pub fn set_clocks(&mut self, clocks: Stamp) {
        self.clocks = clocks;
    }

    /// The client URL this node advertises to peers.
    pub fn set_http(&mut self, url: Option<String>) {
        self.my_http = url;
    }

    pub fn http(&self) -> Option<&str> {
        self.my_http.as_deref()
    }

    /// The highest seq of this node's own origin, advertised to peers.
    pub fn set_head(&mut self, seq: u64) {
        self.my_head = self.my_head.max(seq);
    }

    pub fn id(&self) -> &NodeId {
        &self.me
    }

    pub fn addr(&self) -> SocketAddr {
        self.my_addr
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// False while a join (or rejoin after restore) has not been answered.
    pub fn is_joined(&self) -> bool {
        self.join.is_none()
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Every known peer (not this node), ordered by id.
    pub fn members(&self, now_ms: u64) -> Vec<MemberView> {
        self.table.iter().map(|m| m.view(now_ms)).collect()
    }

    /// Peers currently alive: the replication targets.
    pub fn alive_peers(&self) -> Vec<(NodeId, SocketAddr)> {
        self.table
            .iter()
            .filter(|m| m.status == Status::Alive)
            .map(|m| (m.id.clone(), m.addr))
            .collect()
    }

    pub fn status_of(&self, peer: &NodeId) -> Option<Status> {
        self.table.get(peer).map(|m| m.status)
    }

    fn self_info(&self) -> MemberInfo {
        MemberInfo {
            id: self.me.clone(),
            addr: self.my_addr,
            incarnation: self.incarnation,
            status: if self.left {
                Status::Left
            } else {
                Status::Alive
            },
            http: self.my_http.clone(),
            head: self.my_head,
        }
    }

    /// Loads peers remembered from a previous run. They start `Suspect`
    /// (remembered, not confirmed): pinged at the normal rate, alive on the
    /// first answer, dead after `dead_after_ms` without one. Also sends them
    /// `Hello` (retried like a join) so the first to answer returns the
    /// current member list.
    pub fn restore(
        &mut self,
        records: impl IntoIterator<Item = (NodeId, PeerRecord)>,
        now_ms: u64,
    ) -> Vec<Effect> {
        let mut fx = Vec::new();
        let mut targets = Vec::new();
        for (id, rec) in records {
            if id == self.me || self.table.get(&id).is_some() {
                continue;
            }
            let addr: SocketAddr = match rec.addr.parse() {
                Ok(a) => a,
                Err(e) => {
                    warn!(node = %self.me, peer = %id, addr = %rec.addr, error = %e, "ignoring remembered peer with a bad address");
                    continue;
                }
            };
            let m = Member::new(
                id.clone(),
                addr,
                rec.incarnation,
                Status::Suspect,
                now_ms,
                self.config.detector(),
            );
            self.table.insert(m);
            fx.push(Effect::StatusChanged {
                peer: id.clone(),
                from: None,
                to: Status::Suspect,
            });
            targets.push((Some(id), addr));
        }
        info!(node = %self.me, peers = targets.len(), "restored remembered peers");
        self.start_join(targets, now_ms, &mut fx);
        fx
    }

    /// Contacts seeds by address until one answers with the member list.
    /// Seeds equal to our own address are skipped; with none left (first
    /// node of a cluster) there is nothing to do.
    pub fn join(&mut self, seeds: &[SocketAddr], now_ms: u64) -> Vec<Effect> {
        let mut fx = Vec::new();
        let targets = seeds
            .iter()
            .filter(|a| **a != self.my_addr)
            .map(|a| (None, *a))
            .collect();
        self.start_join(targets, now_ms, &mut fx);
        fx
    }

    fn start_join(
        &mut self,
        targets: Vec<(Option<NodeId>, SocketAddr)>,
        now_ms: u64,
        fx: &mut Vec<Effect>,
    ) {
        if targets.is_empty() {
            return;
        }
        let mut state = match self.join.take() {
            Some(mut j) => {
                for t in targets {
                    if !j.targets.contains(&t) {
                        j.targets.push(t);
                    }
                }
                j
            }
            None => JoinState {
                targets,
                next_attempt_ms: now_ms,
                backoff_ms: self.config.join_retry_ms,
            },
        };
        self.send_hellos(&mut state, now_ms, fx);
        self.join = Some(state);
    }

    fn send_hellos(&mut self, j: &mut JoinState, now_ms: u64, fx: &mut Vec<Effect>) {
        self.stats.join_attempts += 1;
        let member = self.self_info();
        for (id, addr) in &j.targets {
            let msg = Msg::Hello {
                member: member.clone(),
            };
            fx.push(match id {
                Some(to) => Effect::Send {
                    to: to.clone(),
                    addr: *addr,
                    msg,
                },
                None => Effect::SendToAddr { addr: *addr, msg },
            });
        }
        debug!(node = %self.me, targets = j.targets.len(), "join: hello sent");
        j.next_attempt_ms = now_ms + j.backoff_ms;
        j.backoff_ms = (j.backoff_ms * 2).min(self.config.join_retry_max_ms);
    }

    /// Graceful departure: tells every peer, then stays silent.
    pub fn leave(&mut self, _now_ms: u64) -> Vec<Effect> {
        self.left = true;
        self.join = None;
        let inc = self.incarnation;
        self.table
            .iter()
            .filter(|m| m.status != Status::Left)
            .map(|m| Effect::Send {
                to: m.id.clone(),
                addr: m.addr,
                msg: Msg::Leave { incarnation: inc },
            })
            .collect()
    }

    /// Timers: join retries, failure detection, heartbeats. Call every
    /// [`Config::tick_interval_ms`].
    pub fn tick(&mut self, now_ms: u64, rng: &mut impl Rng) -> Vec<Effect> {
        let mut fx = Vec::new();
        if self.left {
            return fx;
        }
        if let Some(mut j) = self.join.take() {
            if now_ms >= j.next_attempt_ms {
                self.send_hellos(&mut j, now_ms, &mut fx);
                // Jitter so that nodes restarted together do not retry in step.
                j.next_attempt_ms += rng.gen_range(0..=j.backoff_ms / 4);
            }
            self.join = Some(j);
        }

        let threshold = self.config.phi_threshold;
        let dead_after = self.config.dead_after_ms;
        let me = self.me.clone();
        let mut to_ping = Vec::new();
        for m in self.table.iter_mut() {
            let before = m.status;
            match m.status {
                Status::Alive => {
                    let phi = m.detector.phi(now_ms);
                    if phi >= threshold {
                        m.status = Status::Suspect;
                        m.status_since_ms = now_ms;
                        m.status_incarnation = m.incarnation;
                        self.stats.suspicions += 1;
                        info!(node = %me, peer = %m.id, phi, "peer suspect");
                    }
                }
                Status::Suspect => {
                    if now_ms.saturating_sub(m.status_since_ms) >= dead_after {
                        m.status = Status::Dead;
                        m.status_since_ms = now_ms;
                        self.stats.deaths += 1;
                        warn!(node = %me, peer = %m.id, "peer dead");
                    }
                }
                Status::Dead | Status::Left => {}
            }
            if m.status != before {
                fx.push(Effect::StatusChanged {
                    peer: m.id.clone(),
                    from: Some(before),
                    to: m.status,
                });
            }
            if m.status != Status::Left && now_ms >= m.next_probe_ms {
                let period = if m.status == Status::Dead {
                    self.config.dead_probe_interval_ms
                } else {
                    self.config.heartbeat_interval_ms
                };
                // Up to 10 % jitter so probes of one node spread out.
                let jitter = rng.gen_range(0..=period / 10);
                m.next_probe_ms = now_ms + period - jitter;
                to_ping.push((m.id.clone(), m.addr));
            }
        }
        self.forget_long_dead(now_ms, &mut fx);
        for (to, addr) in to_ping {
            let gossip = self.gossip_batch(&to);
            self.stats.pings_sent += 1;
            fx.push(Effect::Send {
                to,
                addr,
                msg: Msg::Ping {
                    sent_ms: now_ms,
                    stamp: self.clocks,
                    gossip,
                },
            });
        }
        fx
    }

    /// Bounded memory: peers dead or gone for `remove_dead_after_ms` leave
    /// the table (and, through [`Effect::Forget`], the store and transport).
    fn forget_long_dead(&mut self, now_ms: u64, fx: &mut Vec<Effect>) {
        let grace = self.config.remove_dead_after_ms;
        let gone: Vec<(NodeId, SocketAddr)> = self
            .table
            .iter()
            .filter(|m| matches!(m.status, Status::Dead | Status::Left))
            .filter(|m| now_ms.saturating_sub(m.status_since_ms) >= grace)
            .map(|m| (m.id.clone(), m.addr))
            .collect();
        for (peer, addr) in gone {
            self.table.remove(&peer);
            self.stats.forgotten += 1;
            info!(node = %self.me, peer = %peer, %addr, "dead peer forgotten");
            fx.push(Effect::Forget { peer, addr });
        }
    }

    /// Own entry, then a rotating window of the table (not the recipient's
    /// own entry: it knows itself better).
    fn gossip_batch(&mut self, recipient: &NodeId) -> Vec<MemberInfo> {
        let n = self.config.gossip_per_message;
        let mut out = Vec::with_capacity(n.min(self.table.len() + 1));
        out.push(self.self_info());
        let window = self.table.window(self.gossip_cursor, n);
        let mut taken = 0;
        for m in window {
            taken += 1;
            if &m.id == recipient && m.status == Status::Alive {
                continue;
            }
            if out.len() >= n {
                break;
            }
            out.push(m.info());
        }
        self.gossip_cursor = self.gossip_cursor.wrapping_add(taken);
        out
    }

    /// Handles a message from the authenticated peer `from` (its
    /// certificate's node id), which arrived from `from_addr`.
    pub fn on_message(
        &mut self,
        from: &NodeId,
        from_addr: SocketAddr,
        msg: Msg,
        now_ms: u64,
    ) -> Vec<Effect> {
        let mut fx = Vec::new();
        if self.left {
            return fx;
        }
        if let Err(e) = msg.validate() {
            self.refuse(from, RefuseReason::TooLarge(e), &mut fx);
            return fx;
        }
        if *from == self.me {
            self.refuse(from, RefuseReason::OwnId, &mut fx);
            return fx;
        }
        match msg {
            Msg::Hello { member } => {
                if member.id != *from {
                    self.refuse(
                        from,
                        RefuseReason::ClaimedOtherId { claimed: member.id },
                        &mut fx,
                    );
                    return fx;
                }
                let addr = self.heard_from(from, from_addr, Some(&member), now_ms, &mut fx);
                let mut members = Vec::with_capacity(self.table.len() + 1);
                members.push(self.self_info());
                members.extend(
                    self.table
                        .iter()
                        .filter(|m| m.id != *from)
                        .take(MAX_MEMBERS_PER_MSG - 1)
                        .map(|m| m.info()),
                );
                debug!(node = %self.me, peer = %from, members = members.len(), "welcoming");
                fx.push(Effect::Send {
                    to: from.clone(),
                    addr,
                    msg: Msg::Welcome { members },
                });
            }
            Msg::Welcome { members } => {
                if self.join.take().is_some() {
                    info!(node = %self.me, peer = %from, members = members.len(), "joined");
                }
                let own = members.iter().find(|m| m.id == *from);
                self.heard_from(from, from_addr, own, now_ms, &mut fx);
                for m in members.iter().filter(|m| m.id != *from) {
                    self.apply_gossip(m, now_ms, &mut fx);
                }
            }
            Msg::Ping {
                sent_ms,
                stamp,
                gossip,
            } => {
                let own = gossip.iter().find(|m| m.id == *from);
                let addr = self.heard_from(from, from_addr, own, now_ms, &mut fx);
                for m in gossip.iter().filter(|m| m.id != *from) {
                    self.apply_gossip(m, now_ms, &mut fx);
                }
                let gossip = self.gossip_batch(from);
                fx.push(Effect::Send {
                    to: from.clone(),
                    addr,
                    msg: Msg::Ack {
                        echo_ms: sent_ms,
                        echo: stamp,
                        wall_us: self.clocks.wall_us,
                        gossip,
                    },
                });
            }
            Msg::Ack {
                echo_ms,
                echo,
                wall_us,
                gossip,
            } => {
                let own = gossip.iter().find(|m| m.id == *from);
                self.heard_from(from, from_addr, own, now_ms, &mut fx);
                // Only stamps of ours (both sides had clocks) give a sample.
                let stamped =
                    echo.wall_us > 0 && wall_us > 0 && self.clocks.mono_us >= echo.mono_us;
                if stamped && echo.mono_us > 0 {
                    fx.push(Effect::ClockSample {
                        peer: from.clone(),
                        sent_mono_ms: echo.mono_us / 1_000,
                        sample: crate::clock::Sample::from_round_trip(
                            echo.wall_us,
                            self.clocks.mono_us - echo.mono_us,
                            wall_us,
                        ),
                    });
                }
                self.stats.acks_received += 1;
                if let Some(m) = self.table.get_mut(from) {
                    m.detector.heartbeat(now_ms);
                    // An echo from the future is a peer bug; no RTT from it.
                    if echo_ms <= now_ms {
                        m.observe_rtt(now_ms - echo_ms);
                    }
                }
                for m in gossip.iter().filter(|m| m.id != *from) {
                    self.apply_gossip(m, now_ms, &mut fx);
                }
            }
            Msg::Leave { incarnation } => {
                if let Some(m) = self.table.get_mut(from) {
                    if incarnation >= m.incarnation && m.status != Status::Left {
                        let before = m.status;
                        m.incarnation = incarnation;
                        m.status = Status::Left;
                        m.status_since_ms = now_ms;
                        m.status_incarnation = incarnation;
                        info!(node = %self.me, peer = %from, "peer left");
                        fx.push(Effect::StatusChanged {
                            peer: from.clone(),
                            from: Some(before),
                            to: Status::Left,
                        });
                    }
                }
            }
        }
        fx
    }

    fn refuse(&mut self, from: &NodeId, reason: RefuseReason, fx: &mut Vec<Effect>) {
        self.stats.refused += 1;
        warn!(node = %self.me, peer = %from, %reason, "membership message refused");
        fx.push(Effect::Refused {
            peer: from.clone(),
            reason,
        });
    }

    /// A message came directly from `from`: it is alive. `own` is what it
    /// says about itself (authoritative for its address). Returns the address
    /// to answer at.
    fn heard_from(
        &mut self,
        from: &NodeId,
        from_addr: SocketAddr,
        own: Option<&MemberInfo>,
        now_ms: u64,
        fx: &mut Vec<Effect>,
    ) -> SocketAddr {
        let addr = own.map_or(from_addr, |o| resolve_addr(o.addr, from_addr));
        let incarnation = own.map_or(0, |o| o.incarnation);
        let heartbeat = self.config.heartbeat_interval_ms;
        match self.table.get_mut(from) {
            None => {
                let mut m = Member::new(
                    from.clone(),
                    addr,
                    incarnation,
                    Status::Alive,
                    now_ms,
                    self.config.detector(),
                );
                m.last_seen_ms = Some(now_ms);
                if let Some(o) = own {
                    m.learn(o, true);
                }
                self.table.insert(m);
                info!(node = %self.me, peer = %from, %addr, incarnation, "new peer");
                fx.push(Effect::StatusChanged {
                    peer: from.clone(),
                    from: None,
                    to: Status::Alive,
                });
                fx.push(persist(from, addr, incarnation));
            }
            Some(m) => {
                m.last_seen_ms = Some(now_ms);
                if let Some(o) = own {
                    m.learn(o, o.incarnation >= m.incarnation);
                }
                let changed = own.is_some() && (m.addr != addr || incarnation > m.incarnation);
                if changed {
                    m.addr = addr;
                    m.incarnation = m.incarnation.max(incarnation);
                    fx.push(persist(from, m.addr, m.incarnation));
                }
                if m.status != Status::Alive {
                    let before = m.status;
                    m.status = Status::Alive;
                    m.status_since_ms = now_ms;
                    m.status_incarnation = m.incarnation;
                    // The silence was an outage, not the peer's rhythm.
                    m.detector.reset();
                    m.detector.heartbeat(now_ms);
                    m.next_probe_ms = m.next_probe_ms.min(now_ms + heartbeat);
                    self.stats.revivals += 1;
                    info!(node = %self.me, peer = %from, from = %before, "peer alive again");
                    fx.push(Effect::StatusChanged {
                        peer: from.clone(),
                        from: Some(before),
                        to: Status::Alive,
                    });
                }
            }
        }
        addr
    }

    /// What a peer says about a third member (or about us).
    fn apply_gossip(&mut self, g: &MemberInfo, now_ms: u64, fx: &mut Vec<Effect>) {
        if g.id == self.me {
            let refute = match g.status {
                Status::Alive => g.incarnation > self.incarnation,
                Status::Suspect | Status::Dead | Status::Left => g.incarnation >= self.incarnation,
            };
            if refute {
                let old = self.incarnation;
                self.incarnation = g.incarnation + 1;
                self.stats.refutations += 1;
                info!(node = %self.me, said = %g.status, old, new = self.incarnation, "refuting: incarnation bumped");
            }
            return;
        }
        let table_full = self.table.len() >= MAX_MEMBERS_PER_MSG;
        match self.table.get_mut(&g.id) {
            None if table_full => {
                // Bounded memory: second-hand entries cannot grow the table
                // past what one Welcome can carry.
                self.stats.gossip_ignored += 1;
                debug!(node = %self.me, peer = %g.id, "member table full; gossip entry ignored");
            }
            None => {
                let status = match g.status {
                    // Suspicion is local: a member someone suspects is still
                    // one we have not judged; start it alive and probe it.
                    Status::Alive | Status::Suspect => Status::Alive,
                    // Never heard of it and it is gone: nothing to track.
                    // (Tracking second-hand dead peers would also let nodes
                    // that forgot a peer teach it back to each other forever.)
                    Status::Dead | Status::Left => return,
                };
                let mut m = Member::new(
                    g.id.clone(),
                    g.addr,
                    g.incarnation,
                    status,
                    now_ms,
                    self.config.detector(),
                );
                m.learn(g, true);
                self.table.insert(m);
                debug!(node = %self.me, peer = %g.id, addr = %g.addr, %status, "peer learned from gossip");
                fx.push(Effect::StatusChanged {
                    peer: g.id.clone(),
                    from: None,
                    to: status,
                });
                fx.push(persist(&g.id, g.addr, g.incarnation));
            }
            Some(m) => {
                m.learn(g, g.incarnation > m.incarnation);
                if g.incarnation > m.incarnation {
                    m.incarnation = g.incarnation;
                    if !g.addr.ip().is_unspecified() {
                        m.addr = g.addr;
                    }
                    fx.push(persist(&m.id, m.addr, m.incarnation));
                    if g.status == Status::Alive {
                        match m.status {
                            // It refuted or restarted: check for ourselves now.
                            Status::Suspect | Status::Dead => m.next_probe_ms = now_ms,
                            Status::Left => {
                                m.status = Status::Suspect;
                                m.status_since_ms = now_ms;
                                m.status_incarnation = m.incarnation;
                                m.detector.reset();
                                m.detector.heartbeat(now_ms);
                                m.next_probe_ms = now_ms;
                                fx.push(Effect::StatusChanged {
                                    peer: m.id.clone(),
                                    from: Some(Status::Left),
                                    to: Status::Suspect,
                                });
                            }
                            Status::Alive => {}
                        }
                    }
                }
                if g.status == Status::Left
                    && g.incarnation >= m.incarnation
                    && m.status != Status::Left
                {
                    let before = m.status;
                    m.status = Status::Left;
                    m.status_since_ms = now_ms;
                    m.status_incarnation = g.incarnation;
                    fx.push(Effect::StatusChanged {
                        peer: m.id.clone(),
                        from: Some(before),
                        to: Status::Left,
                    });
                }
            }
        }
    }
}

/// A member advertising an unspecified IP (listening on 0.0.0.0) is reached
/// at the IP its packets come from, on its advertised port.
fn resolve_addr(advertised: SocketAddr, seen: SocketAddr) -> SocketAddr {
    if advertised.ip().is_unspecified() {
        SocketAddr::new(seen.ip(), advertised.port())
    } else {
        advertised
    }
}

fn persist(peer: &NodeId, addr: SocketAddr, incarnation: u64) -> Effect {
    Effect::Persist {
        peer: peer.clone(),
        record: PeerRecord {
            addr: addr.to_string(),
            incarnation,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn node(name: &str, port: u16) -> Membership {
        Membership::new(id(name), addr(port), 1, Config::default()).unwrap()
    }

    fn info(name: &str, port: u16, inc: u64, status: Status) -> MemberInfo {
        MemberInfo {
            id: id(name),
            addr: addr(port),
            incarnation: inc,
            status,
            http: None,
            head: 0,
        }
    }

    #[test]
    fn config_validate_rejects_bad_settings() {
        assert_eq!(Config::default().validate(), Ok(()));
        let bad = [
            Config {
                phi_threshold: 0.0,
                ..Config::default()
            },
            Config {
                phi_threshold: f64::NAN,
                ..Config::default()
            },
            Config {
                heartbeat_interval_ms: 0,
                ..Config::default()
            },
            Config {
                dead_after_ms: 100,
                ..Config::default()
            },
            Config {
                min_std_dev_ms: 0.0,
                ..Config::default()
            },
            Config {
                window: 1,
                ..Config::default()
            },
            Config {
                gossip_per_message: MAX_GOSSIP_PER_MSG + 1,
                ..Config::default()
            },
            Config {
                join_retry_ms: 10_000,
                ..Config::default()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?} accepted");
            assert!(Membership::new(id("a"), addr(1), 0, c).is_err());
        }
    }

    #[test]
    fn hello_claiming_another_id_is_refused_and_changes_nothing() {
        let mut a = node("a", 1);
        let fx = a.on_message(
            &id("mallory"),
            addr(9),
            Msg::Hello {
                member: info("b", 2, 1, Status::Alive),
            },
            10,
        );
        assert_eq!(
            fx,
            vec![Effect::Refused {
                peer: id("mallory"),
                reason: RefuseReason::ClaimedOtherId { claimed: id("b") }
            }]
        );
        assert!(a.members(10).is_empty());
        assert_eq!(a.stats().refused, 1);
    }

    #[test]
    fn message_from_own_id_or_oversized_is_refused() {
        let mut a = node("a", 1);
        let fx = a.on_message(
            &id("a"),
            addr(9),
            Msg::Ping {
                sent_ms: 0,
                stamp: Stamp::default(),
                gossip: vec![],
            },
            10,
        );
        assert!(matches!(fx[..], [Effect::Refused { .. }]));
        let fx = a.on_message(
            &id("b"),
            addr(2),
            Msg::Ping {
                sent_ms: 0,
                stamp: Stamp::default(),
                gossip: vec![info("c", 3, 0, Status::Alive); MAX_GOSSIP_PER_MSG + 1],
            },
            10,
        );
        assert!(matches!(fx[..], [Effect::Refused { .. }]));
        assert!(a.members(10).is_empty());
        assert_eq!(a.stats().refused, 2);
    }

    #[test]
    fn hello_is_answered_with_full_member_list_and_persisted() {
        let mut a = node("a", 1);
        a.on_message(
            &id("c"),
            addr(3),
            Msg::Hello {
                member: info("c", 3, 5, Status::Alive),
            },
            0,
        );
        let fx = a.on_message(
            &id("b"),
            addr(2),
            Msg::Hello {
                member: info("b", 2, 7, Status::Alive),
            },
            10,
        );
        assert!(fx.contains(&Effect::Persist {
            peer: id("b"),
            record: PeerRecord {
                addr: "127.0.0.1:2".into(),
                incarnation: 7
            }
        }));
        let welcome = fx
            .iter()
            .find_map(|e| match e {
                Effect::Send {
                    to,
                    msg: Msg::Welcome { members },
                    ..
                } if *to == id("b") => Some(members.clone()),
                _ => None,
            })
            .unwrap();
        let ids: Vec<_> = welcome.iter().map(|m| m.id.as_str().to_owned()).collect();
        assert_eq!(ids, ["a", "c"]);
    }

    #[test]
    fn unspecified_advertised_ip_is_replaced_by_the_seen_one() {
        let mut a = node("a", 1);
        let mut m = info("b", 4000, 1, Status::Alive);
        m.addr = "0.0.0.0:4000".parse().unwrap();
        a.on_message(
            &id("b"),
            "10.0.0.7:4000".parse().unwrap(),
            Msg::Hello { member: m },
            0,
        );
        assert_eq!(
            a.alive_peers(),
            vec![(id("b"), "10.0.0.7:4000".parse().unwrap())]
        );
    }

    #[test]
    fn suspected_node_refutes_by_bumping_incarnation_once() {
        let mut a = node("a", 1);
        let said = Msg::Ping {
            sent_ms: 0,
            stamp: Stamp::default(),
            gossip: vec![
                info("b", 2, 1, Status::Alive),
                info("a", 1, 1, Status::Suspect),
            ],
        };
        a.on_message(&id("b"), addr(2), said.clone(), 0);
        assert_eq!(a.incarnation(), 2);
        // The same stale claim again does not bump further.
        a.on_message(&id("b"), addr(2), said, 10);
        assert_eq!(a.incarnation(), 2);
        assert_eq!(a.stats().refutations, 1);
    }

    #[test]
    fn silent_peer_becomes_suspect_then_dead_then_alive_on_ack() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut a = node("a", 1);
        a.on_message(
            &id("b"),
            addr(2),
            Msg::Hello {
                member: info("b", 2, 1, Status::Alive),
            },
            0,
        );
        let mut t = 0;
        let mut changes = Vec::new();
        while t < 20_000 {
            for e in a.tick(t, &mut rng) {
                if let Effect::StatusChanged { to, .. } = e {
                    changes.push((t, to));
                }
            }
            t += 100;
        }
        let suspect_at = changes.iter().find(|c| c.1 == Status::Suspect).unwrap().0;
        let dead_at = changes.iter().find(|c| c.1 == Status::Dead).unwrap().0;
        assert!(suspect_at <= 3_000, "{changes:?}");
        assert!(dead_at - suspect_at >= 6_000 && dead_at - suspect_at <= 6_200);
        // Dead peers are still probed, at the lower rate.
        let pings = a.tick(t, &mut rng).len() + a.tick(t + 100, &mut rng).len();
        assert!(pings <= 1);
        let fx = a.on_message(
            &id("b"),
            addr(2),
            Msg::Ack {
                echo_ms: t - 30,
                echo: Stamp::default(),
                wall_us: 0,
                gossip: vec![],
            },
            t,
        );
        assert!(fx.contains(&Effect::StatusChanged {
            peer: id("b"),
            from: Some(Status::Dead),
            to: Status::Alive
        }));
        let v = &a.members(t)[0];
        assert_eq!(v.rtt_ms, Some(30.0));
        assert!(v.phi < 1.0);
    }
}
