//! Membership and failure detection, as a sans-IO state machine (SWIM with
//! infection-style dissemination, as in HashiCorp memberlist).
//!
//! Messages ([`Msg`]) and ticks go in, [`Effect`]s come out; no sockets, no
//! tokio, no wall clock (`now_ms` is any monotonic millisecond clock the
//! caller owns), randomness passed in.
//!
//! **Joining.** A node joins by sending [`Msg::Hello`] to any member's
//! address (retried with backoff until one answers); the answer
//! ([`Msg::Welcome`]) is the full member list, and the member that answered
//! spreads the newcomer to everyone else as an update (below).
//!
//! **Failure detection** ([`probe`]). Every `heartbeat_interval_ms` (the
//! protocol period) a node pings `probes_per_period` members, taken
//! round-robin from a shuffled list of the members it does not hold dead —
//! so in a cluster of up to `probes_per_period + 1` nodes everyone pings
//! everyone every period, as a full mesh would, and in a larger one the
//! cost per node stays the same. A ping unanswered after half of
//! `acceptable_pause_ms` is retried through `indirect_probes` other members
//! ([`Msg::PingReq`] → their ping → [`Msg::IndirectAck`]), which tells a
//! dead member from a bad link between two live ones; with no ack, direct
//! or relayed, after `acceptable_pause_ms` the member is **suspect**. A
//! member suspect for `dead_after_ms × max(1, log10 n)` (n: members known)
//! is **dead**: the suspicion has had time to reach it, and it did not
//! refute. Dead members are pinged one at a time, one every
//! `dead_probe_interval_ms`, so they can come back, until
//! `remove_dead_after_ms` after they died or left they are forgotten
//! ([`Effect::Forget`]). Any message heard directly from a peer makes it
//! alive again here. The phi-accrual level of each member ([`detector`],
//! fed by every message heard from it) is reported with the member for
//! operators; the decisions come from the probes.
//!
//! **Dissemination** ([`broadcast`]). Every change of a member's state that
//! is news to a node — joined, suspect, dead, left, alive again at a higher
//! incarnation — is queued and piggybacked on the node's next pings and
//! acks (own entry first, then the least-sent updates, then a rotating
//! window of the table to fill `gossip_per_message`), each update
//! `retransmit_mult × ⌈log10(n+1)⌉` times. That reaches every member in
//! O(log n) periods with high probability; the rotating window repairs
//! what is missed. Updates are ordered SWIM's way: for one member, a
//! higher incarnation wins; at equal incarnation dead/left beats suspect
//! beats alive. A member that hears it is suspect or dead at its current
//! incarnation refutes by bumping its incarnation, which spreads the same
//! way and clears the suspicion everywhere.
//!
//! **Trust.** The sender of every message is the id from its certificate,
//! given to [`Membership::on_message`] by the transport. A `Hello` claiming
//! another id is refused ([`Effect::Refused`]). Entries a peer gossips about
//! *itself* are authoritative for its address; entries about third parties
//! add members and change statuses only by the rules above.
//!
//! **Guarantees.** With messages getting through, every member learns every
//! other member (and its latest address); a member that stops answering is
//! suspect after at most `acceptable_pause_ms` plus the time until someone
//! probes it (at most a pass over the list, ⌈n / probes_per_period⌉
//! periods, usually much less since every node probes), everywhere within
//! O(log n) periods more, and dead `dead_after_ms × max(1, log10 n)` later;
//! a member that answers again is alive within one probe period (or
//! `dead_probe_interval_ms` if no news about it arrives first). No
//! permanent dead after a partition heals. Not guaranteed: agreement
//! between nodes at any instant.
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
//! **Costs.** Per period each node sends `probes_per_period` pings and
//! answers about as many (plus, rarely, `indirect_probes` ping requests
//! after a missed ack): O(1) messages per node whatever the fleet size,
//! each at most `gossip_per_message` entries (~60 bytes each). A join costs
//! one Welcome of the whole member list; a graceful leave one message per
//! member. Memory O(n · detector window).

pub mod broadcast;
pub mod detector;
pub mod msg;
pub mod probe;
pub mod table;

use std::net::SocketAddr;

use rand::seq::SliceRandom;
use rand::Rng;
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::model::NodeId;
use crate::store::PeerRecord;

pub use broadcast::{retransmit_limit, Broadcasts};
pub use detector::{DetectorConfig, PhiAccrual};
pub use msg::{MemberInfo, Msg, MsgTooLarge, Stamp, MAX_GOSSIP_PER_MSG, MAX_MEMBERS_PER_MSG};
pub use probe::{Probe, ProbeRing, Probes};
pub use table::{Member, MemberView, Status, Table};

/// Settings. Defaults suit a LAN: a dead peer is suspect ~1–1.5 s after it
/// stops answering and dead 6 s later in fleets up to 10 nodes (12 s at
/// 100, 18 s at 1,000).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The protocol period. Default 500 ms. Lower detects faster and costs
    /// proportionally more messages (per node, not per fleet size).
    pub heartbeat_interval_ms: u64,
    /// The phi level at which the reported detector value counts as high
    /// (shown by `hub status` and the dashboard). Default 8. Must be > 0.
    pub phi_threshold: f64,
    /// Floor of the inter-arrival std-dev of the phi detector. Default 100 ms.
    pub min_std_dev_ms: f64,
    /// How long a probe waits for an ack, direct or relayed, before the
    /// member is suspect; the relays are asked halfway. Default 1000 ms (two
    /// periods: a GC pause or one lost message is not suspicious). At least
    /// half a period is used.
    pub acceptable_pause_ms: f64,
    /// Inter-arrival samples kept per peer. Default 100.
    pub window: usize,
    /// Suspect for this long × max(1, log10 n) → dead. Default 6000 ms.
    /// Must be ≥ the heartbeat interval.
    pub dead_after_ms: u64,
    /// One dead peer is pinged every this often (round-robin), so they can
    /// come back. Default 2000 ms.
    pub dead_probe_interval_ms: u64,
    /// First join retry delay; doubles up to `join_retry_max_ms`.
    /// Defaults 1000 / 8000 ms.
    pub join_retry_ms: u64,
    pub join_retry_max_ms: u64,
    /// Gossip entries piggybacked per message (own entry included).
    /// Default 8, at most [`MAX_GOSSIP_PER_MSG`].
    pub gossip_per_message: usize,
    /// A dead or departed peer is forgotten this long after it died or left
    /// (foca's `remove_down_after`): no more probes, its record is deleted
    /// ([`Effect::Forget`]) so a restart does not bring it back. Default 1 h;
    /// at least `dead_probe_interval_ms`, so it is probed at least once.
    pub remove_dead_after_ms: u64,
    /// Members pinged per period. Default 4 (a cluster of up to 5 nodes is
    /// a full mesh). Must be ≥ 1.
    pub probes_per_period: usize,
    /// Members asked to ping a target that missed an ack (SWIM's k).
    /// Default 3; 0 turns indirect probes off.
    pub indirect_probes: usize,
    /// Each update is piggybacked `retransmit_mult × ⌈log10(n+1)⌉` times
    /// (SWIM's λ). Default 4. Must be ≥ 1.
    pub retransmit_mult: u32,
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
            gossip_per_message: 8,
            remove_dead_after_ms: 3_600_000,
            probes_per_period: 4,
            indirect_probes: 3,
            retransmit_mult: 4,
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
    #[error("membership: probes_per_period and retransmit_mult must be >= 1")]
    BadFanout,
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
        if self.probes_per_period == 0 || self.retransmit_mult == 0 {
            return Err(ConfigError::BadFanout);
        }
        Ok(())
    }

    /// How often the shell should call [`Membership::tick`]: a quarter of the
    /// heartbeat (finer is harmless, coarser delays probes and detection).
    pub fn tick_interval_ms(&self) -> u64 {
        (self.heartbeat_interval_ms / 4).max(1)
    }

    /// How long a probe waits for an ack before the member is suspect.
    pub fn probe_timeout_ms(&self) -> u64 {
        (self.acceptable_pause_ms as u64).max(self.heartbeat_interval_ms / 2)
    }

    /// How long a member of a fleet of `members` nodes stays suspect before
    /// it is dead: `dead_after_ms × max(1, log10 members)`, so a suspicion
    /// has time to reach the member (which then refutes) as the fleet grows.
    pub fn suspicion_timeout_ms(&self, members: usize) -> u64 {
        let scale = (members as f64).log10().max(1.0);
        (self.dead_after_ms as f64 * scale) as u64
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
    /// Ping requests sent after a missed ack (SWIM indirect probes).
    pub indirect_probes: u64,
    /// Pings sent on another member's behalf.
    pub relayed_pings: u64,
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
    /// Round-robin order of the members to probe.
    ring: ProbeRing,
    /// Probes in flight and relays for others.
    probes: Probes,
    /// Updates still to piggyback.
    broadcasts: Broadcasts,
    next_probe_ms: u64,
    next_dead_probe_ms: u64,
    dead_cursor: usize,
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
            ring: ProbeRing::default(),
            probes: Probes::default(),
            broadcasts: Broadcasts::default(),
            next_probe_ms: 0,
            next_dead_probe_ms: 0,
            dead_cursor: 0,
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

    /// Updates waiting to be piggybacked (a gauge for introspection).
    pub fn pending_broadcasts(&self) -> usize {
        self.broadcasts.len()
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

    /// Fleet size as this node sees it (itself included).
    fn fleet(&self) -> usize {
        self.table.len() + 1
    }

    /// Loads peers remembered from a previous run. They start `Suspect`
    /// (remembered, not confirmed): probed, alive on the first answer, dead
    /// after the suspicion timeout without one. Also sends them `Hello`
    /// (retried like a join) so the first to answer returns the current
    /// member list.
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

    /// Timers: join retries, probes and their deadlines, suspicion
    /// timeouts. Call every [`Config::tick_interval_ms`].
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
        self.check_probes(now_ms, rng, &mut fx);
        self.check_suspects(now_ms, &mut fx);
        if now_ms >= self.next_probe_ms {
            let period = self.config.heartbeat_interval_ms;
            // Up to 10 % jitter so the nodes' periods do not line up.
            self.next_probe_ms = now_ms + period - rng.gen_range(0..=period / 10);
            self.probe_round(now_ms, rng, &mut fx);
        }
        if now_ms >= self.next_dead_probe_ms {
            let period = self.config.dead_probe_interval_ms;
            self.next_dead_probe_ms = now_ms + period - rng.gen_range(0..=period / 10);
            self.probe_one_dead(now_ms, &mut fx);
        }
        self.probes.expire_relays(now_ms);
        self.forget_long_dead(now_ms, &mut fx);
        fx
    }

    /// Pings the next `probes_per_period` members of the round-robin.
    fn probe_round(&mut self, now_ms: u64, rng: &mut impl Rng, fx: &mut Vec<Effect>) {
        let probing = |m: &Member| matches!(m.status, Status::Alive | Status::Suspect);
        let eligible = self.table.iter().filter(|m| probing(m)).count();
        let mut targets: Vec<NodeId> = Vec::new();
        for _ in 0..self.config.probes_per_period.min(eligible) {
            let table = &self.table;
            let next = self.ring.next(
                || {
                    table
                        .iter()
                        .filter(|m| probing(m))
                        .map(|m| m.id.clone())
                        .collect()
                },
                |id| table.get(id).is_some_and(probing) && !targets.contains(id),
                rng,
            );
            match next {
                Some(id) => targets.push(id),
                None => break,
            }
        }
        let timeout = self.config.probe_timeout_ms();
        for to in targets {
            // A probe already in flight keeps its deadline: an ack to either
            // ping answers it.
            self.probes.ours.entry(to.clone()).or_insert(Probe {
                sent_ms: now_ms,
                indirect_at_ms: now_ms + timeout / 2,
                deadline_ms: now_ms + timeout,
                indirect_sent: false,
            });
            self.ping(&to, now_ms, fx);
        }
    }

    fn ping(&mut self, to: &NodeId, now_ms: u64, fx: &mut Vec<Effect>) {
        let Some(addr) = self.table.get(to).map(|m| m.addr) else {
            return;
        };
        let gossip = self.gossip_batch(to);
        self.stats.pings_sent += 1;
        fx.push(Effect::Send {
            to: to.clone(),
            addr,
            msg: Msg::Ping {
                sent_ms: now_ms,
                stamp: self.clocks,
                gossip,
            },
        });
    }

    /// Dead members are pinged one at a time, round-robin, so a fleet with
    /// many dead members (or the far side of a partition) costs O(1).
    fn probe_one_dead(&mut self, now_ms: u64, fx: &mut Vec<Effect>) {
        let dead: Vec<NodeId> = self
            .table
            .iter()
            .filter(|m| m.status == Status::Dead)
            .map(|m| m.id.clone())
            .collect();
        if dead.is_empty() {
            return;
        }
        self.dead_cursor = self.dead_cursor.wrapping_add(1);
        let to = dead[self.dead_cursor % dead.len()].clone();
        self.ping(&to, now_ms, fx);
    }

    /// Probes past their halfway point go indirect; past their deadline,
    /// their target is suspect.
    fn check_probes(&mut self, now_ms: u64, rng: &mut impl Rng, fx: &mut Vec<Effect>) {
        let mut indirect = Vec::new();
        let mut failed = Vec::new();
        for (target, p) in self.probes.ours.iter_mut() {
            if now_ms >= p.deadline_ms {
                failed.push(target.clone());
            } else if !p.indirect_sent && now_ms >= p.indirect_at_ms {
                p.indirect_sent = true;
                indirect.push(target.clone());
            }
        }
        for target in indirect {
            let helpers: Vec<(NodeId, SocketAddr)> = self
                .table
                .iter()
                .filter(|m| m.status == Status::Alive && m.id != target)
                .map(|m| (m.id.clone(), m.addr))
                .collect::<Vec<_>>()
                .choose_multiple(rng, self.config.indirect_probes)
                .cloned()
                .collect();
            for (helper, addr) in helpers {
                let gossip = self.gossip_batch(&helper);
                self.stats.indirect_probes += 1;
                fx.push(Effect::Send {
                    to: helper,
                    addr,
                    msg: Msg::PingReq {
                        target: target.clone(),
                        gossip,
                    },
                });
            }
        }
        for target in failed {
            self.probes.ours.remove(&target);
            let Some(m) = self.table.get_mut(&target) else {
                continue;
            };
            if m.status != Status::Alive {
                continue;
            }
            m.status = Status::Suspect;
            m.status_since_ms = now_ms;
            m.status_incarnation = m.incarnation;
            self.stats.suspicions += 1;
            info!(node = %self.me, peer = %target, incarnation = m.incarnation, "peer suspect: probe unanswered");
            let info = m.info();
            self.broadcasts.push(info);
            fx.push(Effect::StatusChanged {
                peer: target,
                from: Some(Status::Alive),
                to: Status::Suspect,
            });
        }
    }

    /// Members suspect for longer than the suspicion timeout are dead.
    fn check_suspects(&mut self, now_ms: u64, fx: &mut Vec<Effect>) {
        let timeout = self.config.suspicion_timeout_ms(self.fleet());
        let me = self.me.clone();
        for m in self.table.iter_mut() {
            if m.status == Status::Suspect && now_ms.saturating_sub(m.status_since_ms) >= timeout {
                m.status = Status::Dead;
                m.status_since_ms = now_ms;
                self.stats.deaths += 1;
                warn!(node = %me, peer = %m.id, incarnation = m.status_incarnation, "peer dead");
                self.broadcasts.push(m.info());
                fx.push(Effect::StatusChanged {
                    peer: m.id.clone(),
                    from: Some(Status::Suspect),
                    to: Status::Dead,
                });
            }
        }
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
            self.probes.ours.remove(&peer);
            self.broadcasts.forget(&peer);
            self.stats.forgotten += 1;
            info!(node = %self.me, peer = %peer, %addr, "dead peer forgotten");
            fx.push(Effect::Forget { peer, addr });
        }
    }

    /// Own entry, then pending updates (least sent first), then a rotating
    /// window of the table (not the recipient's own entry while it is
    /// alive: it knows itself better).
    fn gossip_batch(&mut self, recipient: &NodeId) -> Vec<MemberInfo> {
        let n = self.config.gossip_per_message;
        let mut out = Vec::with_capacity(n.min(self.table.len() + 1));
        out.push(self.self_info());
        let limit = retransmit_limit(self.config.retransmit_mult, self.fleet());
        out.extend(self.broadcasts.take(n - 1, limit, recipient));
        if out.len() >= n {
            return out;
        }
        let window = self.table.window(self.gossip_cursor, n);
        let mut taken = 0;
        for m in window {
            if out.len() >= n {
                break;
            }
            taken += 1;
            if (&m.id == recipient && m.status == Status::Alive) || out.iter().any(|o| o.id == m.id)
            {
                continue;
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
                // The member list is the state, not news: nothing to spread.
                for m in members.iter().filter(|m| m.id != *from) {
                    self.apply_gossip(m, false, now_ms, &mut fx);
                }
            }
            Msg::Ping {
                sent_ms,
                stamp,
                gossip,
            } => {
                let addr = self.heard_with_gossip(from, from_addr, &gossip, now_ms, &mut fx);
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
                self.heard_with_gossip(from, from_addr, &gossip, now_ms, &mut fx);
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
                    // An echo from the future is a peer bug; no RTT from it.
                    if echo_ms <= now_ms {
                        m.observe_rtt(now_ms - echo_ms);
                    }
                }
                // Acks of pings we sent for others go back to them.
                for requester in self.probes.take_relays(from) {
                    let Some(addr) = self.table.get(&requester).map(|m| m.addr) else {
                        continue;
                    };
                    let gossip = self.gossip_batch(&requester);
                    fx.push(Effect::Send {
                        to: requester,
                        addr,
                        msg: Msg::IndirectAck {
                            target: from.clone(),
                            gossip,
                        },
                    });
                }
            }
            Msg::PingReq { target, gossip } => {
                self.heard_with_gossip(from, from_addr, &gossip, now_ms, &mut fx);
                let known = self.table.get(&target).is_some();
                let expires = now_ms + self.config.probe_timeout_ms();
                if known && target != self.me && self.probes.add_relay(from, &target, expires) {
                    self.stats.relayed_pings += 1;
                    self.ping(&target, now_ms, &mut fx);
                }
            }
            Msg::IndirectAck { target, gossip } => {
                self.heard_with_gossip(from, from_addr, &gossip, now_ms, &mut fx);
                if self.probes.ours.remove(&target).is_some() {
                    debug!(node = %self.me, peer = %target, via = %from, "probe answered through a relay");
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
                        self.broadcasts.push(m.info());
                        self.probes.ours.remove(from);
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

    /// A message with piggybacked gossip came directly from `from`.
    fn heard_with_gossip(
        &mut self,
        from: &NodeId,
        from_addr: SocketAddr,
        gossip: &[MemberInfo],
        now_ms: u64,
        fx: &mut Vec<Effect>,
    ) -> SocketAddr {
        let own = gossip.iter().find(|m| m.id == *from);
        let addr = self.heard_from(from, from_addr, own, now_ms, fx);
        for m in gossip.iter().filter(|m| m.id != *from) {
            self.apply_gossip(m, true, now_ms, fx);
        }
        addr
    }

    fn refuse(&mut self, from: &NodeId, reason: RefuseReason, fx: &mut Vec<Effect>) {
        self.stats.refused += 1;
        warn!(node = %self.me, peer = %from, %reason, "membership message refused");
        fx.push(Effect::Refused {
            peer: from.clone(),
            reason,
        });
    }

    /// A message came directly from `from`: it is alive (and any probe of
    /// it is answered). `own` is what it says about itself (authoritative
    /// for its address). Returns the address to answer at.
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
        self.probes.ours.remove(from);
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
                let info = m.info();
                self.table.insert(m);
                info!(node = %self.me, peer = %from, %addr, incarnation, "new peer");
                self.broadcasts.push(info);
                self.ring.insert(from.clone());
                fx.push(Effect::StatusChanged {
                    peer: from.clone(),
                    from: None,
                    to: Status::Alive,
                });
                fx.push(persist(from, addr, incarnation));
            }
            Some(m) => {
                m.last_seen_ms = Some(now_ms);
                m.detector.heartbeat(now_ms);
                if let Some(o) = own {
                    m.learn(o, o.incarnation >= m.incarnation);
                }
                let newer = own.is_some() && incarnation > m.incarnation;
                let changed = own.is_some() && (m.addr != addr || newer);
                if changed {
                    m.addr = addr;
                    m.incarnation = m.incarnation.max(incarnation);
                    fx.push(persist(from, m.addr, m.incarnation));
                }
                let revived = m.status != Status::Alive;
                if revived {
                    let before = m.status;
                    m.status = Status::Alive;
                    m.status_since_ms = now_ms;
                    m.status_incarnation = m.incarnation;
                    // The silence was an outage, not the peer's rhythm.
                    m.detector.reset();
                    m.detector.heartbeat(now_ms);
                    self.stats.revivals += 1;
                    info!(node = %self.me, peer = %from, from = %before, "peer alive again");
                    fx.push(Effect::StatusChanged {
                        peer: from.clone(),
                        from: Some(before),
                        to: Status::Alive,
                    });
                }
                if newer || (revived && changed) {
                    // Its new incarnation ends suspicion elsewhere too.
                    let info = m.info();
                    self.broadcasts.push(info);
                }
            }
        }
        addr
    }

    /// What a peer says about a third member (or about us). `spread`: the
    /// entry came as news on a protocol message (not a Welcome's list), so
    /// what changes here is passed on.
    fn apply_gossip(&mut self, g: &MemberInfo, spread: bool, now_ms: u64, fx: &mut Vec<Effect>) {
        if g.id == self.me {
            let refute = match g.status {
                Status::Alive => g.incarnation > self.incarnation,
                Status::Suspect | Status::Dead | Status::Left => g.incarnation >= self.incarnation,
            };
            if refute && !self.left {
                let old = self.incarnation;
                self.incarnation = g.incarnation + 1;
                self.stats.refutations += 1;
                info!(node = %self.me, said = %g.status, old, new = self.incarnation, "refuting: incarnation bumped");
                self.broadcasts.push(self.self_info());
            }
            return;
        }
        let table_full = self.table.len() >= MAX_MEMBERS_PER_MSG;
        let Some(m) = self.table.get_mut(&g.id) else {
            if table_full {
                // Bounded memory: second-hand entries cannot grow the table
                // past what one Welcome can carry.
                self.stats.gossip_ignored += 1;
                debug!(node = %self.me, peer = %g.id, "member table full; gossip entry ignored");
                return;
            }
            if matches!(g.status, Status::Dead | Status::Left) {
                // Never heard of it and it is gone: nothing to track.
                // (Tracking second-hand dead peers would also let nodes
                // that forgot a peer teach it back to each other forever.)
                return;
            }
            let mut m = Member::new(
                g.id.clone(),
                g.addr,
                g.incarnation,
                g.status,
                now_ms,
                self.config.detector(),
            );
            m.learn(g, true);
            let info = m.info();
            self.table.insert(m);
            debug!(node = %self.me, peer = %g.id, addr = %g.addr, status = %g.status, "peer learned from gossip");
            if spread {
                self.broadcasts.push(info);
            }
            self.ring.insert(g.id.clone());
            fx.push(Effect::StatusChanged {
                peer: g.id.clone(),
                from: None,
                to: g.status,
            });
            fx.push(persist(&g.id, g.addr, g.incarnation));
            return;
        };
        m.learn(g, g.incarnation > m.incarnation);
        let before = m.status;
        // SWIM's order: a higher incarnation wins; at the incarnation of
        // our current status, dead/left > suspect > alive.
        let ours = match m.status {
            Status::Suspect | Status::Dead => m.status_incarnation,
            Status::Alive | Status::Left => m.incarnation,
        };
        let next = match (g.status, m.status) {
            (Status::Alive, _) if g.incarnation > ours => Some(Status::Alive),
            (Status::Suspect, Status::Alive) if g.incarnation >= ours => Some(Status::Suspect),
            (Status::Suspect, Status::Suspect | Status::Dead | Status::Left)
                if g.incarnation > ours =>
            {
                Some(Status::Suspect)
            }
            (Status::Dead, Status::Alive | Status::Suspect) if g.incarnation >= ours => {
                Some(Status::Dead)
            }
            (Status::Dead, Status::Left) if g.incarnation > ours => Some(Status::Dead),
            (Status::Left, s) if s != Status::Left && g.incarnation >= ours => Some(Status::Left),
            _ => None,
        };
        if g.incarnation > m.incarnation {
            m.incarnation = g.incarnation;
            if !g.addr.ip().is_unspecified() {
                m.addr = g.addr;
            }
            fx.push(persist(&m.id, m.addr, m.incarnation));
        }
        let Some(to) = next else {
            return;
        };
        let news = to != before || g.incarnation > ours;
        m.status_incarnation = g.incarnation;
        if to != before {
            m.status = to;
            m.status_since_ms = now_ms;
            if to == Status::Alive {
                m.detector.reset();
                m.detector.heartbeat(now_ms);
            }
            match to {
                Status::Suspect => self.stats.suspicions += 1,
                Status::Dead => self.stats.deaths += 1,
                Status::Alive => self.stats.revivals += 1,
                Status::Left => {}
            }
            info!(node = %self.me, peer = %g.id, from = %before, to = %to, incarnation = g.incarnation, "peer status from gossip");
            fx.push(Effect::StatusChanged {
                peer: g.id.clone(),
                from: Some(before),
                to,
            });
        }
        if news && spread {
            let info = m.info();
            self.broadcasts.push(info);
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
