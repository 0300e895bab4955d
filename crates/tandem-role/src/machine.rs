//! The sans-IO role machine: events in, actions out.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::{
    DeploymentMode, Epoch, FenceToken, MacAddr, NodeId, NodeState, Replication, Role, SiteId,
};

/// What a probe of the shared address found (the seed's boot-time ping).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// Nothing answered: no node holds the shared address.
    Silent,
    /// These hosts answered for the shared address.
    Answered {
        /// The MAC addresses that answered; empty when only an ICMP echo reply
        /// (which names no MAC address) came back.
        macs: Vec<MacAddr>,
    },
    /// The probe could not be run (no privilege, no interface, ...). Never taken
    /// for silence.
    Error {
        /// What went wrong.
        reason: String,
    },
}

/// Whether the node can reach its reference address (by default the gateway).
/// A node that cannot is cut off from its network and must never claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// The reference address answered.
    Passed,
    /// The reference address was silent or could not be probed.
    Failed,
}

/// Something that happened to the node.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The node started. The shared address is not configured at this point (the
    /// seed: "when a node is rebooted, interface eth0 is initially disabled"); the
    /// caller has probed it and run the isolation check.
    Boot {
        /// What the probe of the shared address found.
        probe: ProbeOutcome,
        /// The isolation check.
        isolation: Isolation,
    },
    /// The agent started again and found the shared address still configured
    /// on this node, whose persisted role is active: the agent was restarted
    /// (or killed) while the machine kept running, and the node never stopped
    /// answering for the address. It stays active with its epoch: releasing
    /// and probing again would open a window in which the peer, probing the
    /// same silence, claims with the same epoch.
    Resume,
    /// The answer to [`Action::Probe`].
    Probed {
        /// What the probe of the shared address found.
        probe: ProbeOutcome,
        /// The isolation check.
        isolation: Isolation,
    },
    /// The operator ran `failover set-server active|standby`.
    SetServer(Role),
    /// The operator ran `failover set-deployment failover|single`.
    SetDeployment(DeploymentMode),
    /// The operator ran `mp_replication init -n N`: this node's id and site.
    Identify {
        /// This node's id.
        node: NodeId,
        /// The site.
        site: SiteId,
    },
    /// The peer says on the peer link that it holds the shared address.
    PeerClaim {
        /// The peer's node id.
        node: NodeId,
        /// The epoch of its claim.
        epoch: Epoch,
        /// The witness fencing token of its claim, on a site with a witness.
        token: Option<FenceToken>,
    },
    /// The peer says this node's claim is older than the peer's epoch: the peer
    /// took over (claimed with a newer epoch) while this node was away, so the
    /// writes it acknowledged since are not here. An active node steps down.
    PeerSuperseded {
        /// The peer's node id.
        node: NodeId,
        /// The peer's epoch.
        epoch: Epoch,
    },
    /// Another MAC address answers for the shared address while this node holds it.
    AddressConflict {
        /// The other host's MAC address.
        mac: MacAddr,
    },
    /// The peer missed its heartbeats.
    PeerLost {
        /// How long the peer had not been heard when the loss was declared (the
        /// link knows); `None` counts one detection time
        /// ([`Config::peer_loss_detection`]). A claim this node made within it
        /// may never have reached the peer.
        silent: Option<Duration>,
    },
    /// The peer is still lost, a detection interval after [`Event::PeerLost`] or
    /// the previous one. With automatic failover a standby probes the shared
    /// address again, so an active node that dies while the link was already
    /// down is still replaced; nothing is raised when it still answers.
    PeerStillLost,
    /// The peer is heard again.
    PeerBack,
    /// Database replication was switched on.
    ReplicationOn,
    /// Database replication was switched off.
    ReplicationOff,
    /// Database replication failed.
    ReplicationFailed {
        /// Why.
        reason: String,
    },
    /// The answer to [`Action::AcquireLease`]: this node created the site's leader
    /// key on the witness and holds its lease. Also sent when an agent restarted on
    /// the holder adopts its own live key.
    LeaseAcquired {
        /// The revision of the key's creation.
        token: FenceToken,
    },
    /// The witness says another node holds the leader key: the answer to
    /// [`Action::AcquireLease`] when the key exists, or what the lease keeper saw.
    /// An active node steps down at once.
    LeaseHeldByPeer {
        /// The holder.
        node: NodeId,
        /// Its token.
        token: FenceToken,
    },
    /// The witness says nobody holds the leader key (the holder released it or its
    /// lease expired).
    LeaseFree,
    /// This node could not renew its lease in time: the step-down deadline, which
    /// comes before the lease can have expired anywhere, has passed. An active node
    /// whose peer is not in sight steps down; one whose peer is in sight stays
    /// (failsafe: nobody can be promoted without the lease, and the peer is there).
    LeaseLost {
        /// Why (the last error from the witness).
        reason: String,
    },
    /// No witness member answers: the answer to [`Action::AcquireLease`], or what
    /// the lease keeper saw.
    WitnessUnreachable {
        /// Why.
        reason: String,
    },
    /// A witness member answers again.
    WitnessReachable,
    /// An action failed. The caller runs a batch of actions in order and stops at
    /// the first that fails, then reports it with this event; a failed
    /// [`Action::StopServices`] or [`Action::DemoteDatabase`] does not stop the
    /// batch (the rest of a step-down must happen) and is reported after it.
    StepFailed {
        /// The action that failed.
        step: Step,
        /// Why.
        reason: String,
    },
}

/// The actions that change the node, named for [`Event::StepFailed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Step {
    /// [`Action::Persist`].
    Persist,
    /// [`Action::ClaimSharedAddress`].
    ClaimSharedAddress,
    /// [`Action::ReleaseSharedAddress`].
    ReleaseSharedAddress,
    /// [`Action::Announce`].
    Announce,
    /// [`Action::PromoteDatabase`].
    PromoteDatabase,
    /// [`Action::DemoteDatabase`].
    DemoteDatabase,
    /// [`Action::StartServices`].
    StartServices,
    /// [`Action::StopServices`].
    StopServices,
}

/// A keepalived-style notify hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    /// The node became active.
    Active,
    /// The node became standby.
    Standby,
    /// Something went wrong that needs an operator.
    Fault,
    /// An alarm was raised (peer lost, replication failed, ...).
    Alarm,
}

/// Why a command was refused. The node's role did not change.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "refusal")]
#[non_exhaustive]
pub enum Refusal {
    /// `set-server` needs a failover deployment.
    NotFailover,
    /// The shared address answered: another node is active.
    SharedAddressAnswered {
        /// Who answered.
        macs: Vec<MacAddr>,
    },
    /// The reference address did not answer: this node is cut off.
    Isolated,
    /// The probe of the shared address failed.
    ProbeFailed {
        /// Why.
        reason: String,
    },
    /// The witness says another node holds the site's leader key.
    LeaseHeld {
        /// The holder.
        node: NodeId,
    },
    /// No witness member answers: no node may take over (or hand over) now.
    WitnessUnreachable {
        /// Why.
        reason: String,
    },
}

impl Refusal {
    /// What was found, without the advice to the operator that `Display` adds.
    fn fact(&self) -> String {
        match self {
            Refusal::SharedAddressAnswered { macs } => {
                format!("{} answers for the shared address", join(macs))
            }
            Refusal::Isolated => "the reference address (gateway) does not answer".to_string(),
            Refusal::ProbeFailed { reason } => {
                format!("cannot probe the shared address ({reason})")
            }
            Refusal::NotFailover => "this node is a single-server deployment".to_string(),
            Refusal::LeaseHeld { node } => {
                format!("node {node} holds the site's leader key on the witness")
            }
            Refusal::WitnessUnreachable { reason } => {
                format!("the witness does not answer ({reason})")
            }
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotFailover => f.write_str(
                "this node is a single-server deployment; run `failover set-deployment failover` first",
            ),
            Refusal::SharedAddressAnswered { macs } => write!(
                f,
                "the shared address is held by {}; make that node standby first",
                join(macs)
            ),
            Refusal::Isolated => f.write_str(
                "the reference address (gateway) does not answer: this node is cut off from its network and will not claim the shared address",
            ),
            Refusal::ProbeFailed { reason } => {
                write!(f, "cannot probe the shared address ({reason}); not claiming it")
            }
            Refusal::LeaseHeld { node } => write!(
                f,
                "node {node} holds the site's leader key on the witness; make that node standby first"
            ),
            Refusal::WitnessUnreachable { reason } => write!(
                f,
                "the witness does not answer ({reason}): no node may take over until it does; check `failover check`"
            ),
        }
    }
}

/// Something the caller must do, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Write this state to the state file before going on.
    Persist(NodeState),
    /// Probe the shared address and run the isolation check, after the delay, then
    /// report with [`Event::Probed`].
    Probe {
        /// How long to wait first.
        after: Duration,
    },
    /// Add the shared address to the interface.
    ClaimSharedAddress,
    /// Remove the shared address from the interface.
    ReleaseSharedAddress,
    /// Send gratuitous ARP (and unsolicited neighbour advertisements) for the
    /// shared address.
    Announce,
    /// Make the local database the writable primary.
    PromoteDatabase,
    /// Make the local database a read-only replica.
    DemoteDatabase,
    /// Start the services that run on the active node only.
    StartServices,
    /// Stop the services that run on the active node only.
    StopServices,
    /// Tell the peer that this node holds the shared address with this epoch.
    SendClaim {
        /// The epoch of the claim.
        epoch: Epoch,
        /// The witness fencing token, on a site with a witness.
        token: Option<FenceToken>,
    },
    /// Create the site's leader key on the witness under a lease of this node's,
    /// in one transaction that fails if the key exists, and keep the lease alive;
    /// report with [`Event::LeaseAcquired`], [`Event::LeaseHeldByPeer`] or
    /// [`Event::WitnessUnreachable`].
    AcquireLease,
    /// Revoke this node's lease (the leader key goes with it), after stepping down.
    ReleaseLease,
    /// Tell the peer, whose claim is older than this node's epoch, that it is
    /// superseded (it steps down; this node probes and claims again).
    SendSuperseded {
        /// This node's epoch.
        epoch: Epoch,
    },
    /// Run the notify hook.
    Notify {
        /// Which hook.
        hook: Hook,
        /// Why, for the hook and the log.
        reason: String,
    },
    /// The operator's command was refused; tell the operator why.
    Refuse(Refusal),
}

impl Action {
    /// Whether only an active node may do this: claim, announce, promote, start
    /// active-only services.
    pub fn is_active_only(&self) -> bool {
        matches!(
            self,
            Action::ClaimSharedAddress
                | Action::Announce
                | Action::PromoteDatabase
                | Action::StartServices
        )
    }

    /// Whether this action concerns the peer, the witness's leader key or database
    /// replication, which a single-server deployment never does (it may give
    /// back a lease it held as a failover node: [`Action::ReleaseLease`]).
    pub fn is_peer_or_replication(&self) -> bool {
        matches!(
            self,
            Action::SendClaim { .. }
                | Action::SendSuperseded { .. }
                | Action::PromoteDatabase
                | Action::DemoteDatabase
                | Action::AcquireLease
        )
    }
}

/// Settings of the role machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Let a standby take over on its own when the peer is lost, the shared address
    /// is silent and the isolation check passes. Off by default, as in the seed.
    pub auto_failover: bool,
    /// After releasing the shared address because of a conflict, node 2 waits this
    /// long before probing again (node 1 probes at once), so the two do not race
    /// for the address.
    pub conflict_backoff: Duration,
    /// The site has a witness: a node claims the shared address only while it
    /// holds the leader key ([`Action::AcquireLease`]), and an active node that
    /// cannot keep it steps down unless its peer is in sight (failsafe).
    pub witness: bool,
    /// How long the peer link takes to report a silent peer lost (heartbeat
    /// interval × missed heartbeats): when [`Event::PeerLost`] does not say how
    /// long the peer was silent, a claim made this long or less before it may
    /// never have reached the peer.
    pub peer_loss_detection: Duration,
    /// How often an active node looks for another holder of the shared address
    /// (the agent's watch runs every heartbeat). A node that took over while the
    /// link was down keeps the address through conflicts for the conflict backoff
    /// less one watch interval (at least one and a half intervals, so that an
    /// answer already on its way when the other holder released is not taken
    /// for a holder that stays): two nodes that both took over apart then hold
    /// it together for at most one backoff and one interval (RELIABILITY.md,
    /// finding 29).
    pub conflict_watch: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            auto_failover: false,
            conflict_backoff: Duration::from_secs(1),
            witness: false,
            peer_loss_detection: Duration::from_millis(600),
            conflict_watch: Duration::from_millis(200),
        }
    }
}

impl Config {
    /// How long a node that took over while apart keeps the address through
    /// conflicts, from the first ([`conflict_watch`](Self::conflict_watch)).
    pub fn keep_after_takeover(&self) -> Duration {
        let watch = self.conflict_watch;
        self.conflict_backoff
            .saturating_sub(watch)
            .max(watch + watch / 2)
    }
}

/// Why the machine asked for a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeReason {
    /// `set-server active`, or `set-deployment single` on an active node.
    Operator,
    /// `set-deployment single` on a standby: the node becomes a single server
    /// only if it may take the shared address; a refusal changes nothing.
    SingleDeployment,
    /// Re-election after an address conflict.
    Conflict,
    /// Automatic failover after the peer was lost.
    AutoFailover,
    /// Another look while the peer stays lost: a refusal is expected and quiet.
    AutoFailoverRetry,
    /// An active node that lost its peer checks that it is not the one cut off.
    SelfCheck,
    /// The boot decision (only while the lease is being acquired).
    Boot,
    /// An active node takes the lease (again): after an agent restart, or when
    /// the witness is back after a failsafe spell.
    Retake,
}

/// What the machine knows of the witness's leader key. Not persisted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Lease {
    /// No word yet (or this node just released its lease).
    #[default]
    Unknown,
    /// This node holds the lease.
    Held(FenceToken),
    /// Another node holds it.
    Peer(FenceToken),
    /// Nobody holds it.
    Free,
    /// No witness member answers.
    Unreachable,
    /// This active node lost the lease (or could not take it again) while its
    /// peer is in sight, and serves on: nobody can be promoted meanwhile.
    Failsafe,
}

/// What the machine knows of its peer. Not persisted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Peer {
    /// The peer link is up.
    up: bool,
    /// The epoch of the peer's latest claim while it is believed active.
    claim: Option<Epoch>,
    /// This node, active, found itself cut off while the peer was lost (no
    /// answer from the reference address): if it meets another holder when its
    /// link returns, that holder most likely took over meanwhile, so this node
    /// gives it the first chance to claim again.
    cut_off: bool,
    /// This node claimed the shared address while the peer link was down, or so
    /// shortly before the loss was declared that the claim may not have reached
    /// the peer: its epoch is newer than any the peer knows, so another
    /// holder met before the link returns is most likely the old active node,
    /// cut off meanwhile. Such a node keeps the address through the conflicts
    /// of [`Config::keep_after_takeover`] (see [`Machine::conflict`]).
    took_over: bool,
    /// When (ms) this node, having taken over, first kept the address through a
    /// conflict without the peer's word; conflicts after
    /// [`Config::keep_after_takeover`] from then release as usual.
    kept_since: Option<u64>,
    /// This node met a conflict with the link up and no claim from the peer,
    /// kept the address and sent its claim again; the next such conflict
    /// releases as usual.
    reasserted: bool,
    /// The peer link has been up since this machine started (a loss of it, or
    /// its return, was reported): a claim made while it is down is then a
    /// takeover from a peer that was there, not a boot beside a peer that may be
    /// booting too.
    seen: bool,
}

/// The role machine of one node. It does no IO: [`Machine::handle`] takes an event
/// and returns the actions to carry out, in order.
#[derive(Debug, Clone)]
pub struct Machine {
    config: Config,
    state: NodeState,
    pending: Option<ProbeReason>,
    /// The claim waiting for [`Action::AcquireLease`]'s answer, and why.
    acquiring: Option<ProbeReason>,
    lease: Lease,
    peer: Peer,
}

impl Machine {
    /// A machine resuming from `state` (from [`crate::StateFile::load`] or
    /// [`NodeState::first_boot`]). The role is taken as persisted; a
    /// [`Event::Boot`] starts it afresh as standby.
    pub fn new(config: Config, state: NodeState) -> Machine {
        Machine {
            config,
            state,
            pending: None,
            acquiring: None,
            lease: Lease::Unknown,
            peer: Peer::default(),
        }
    }

    /// The node's state as it would be persisted now.
    pub fn state(&self) -> &NodeState {
        &self.state
    }

    /// The node's role now.
    pub fn role(&self) -> Role {
        self.state.role
    }

    /// The machine's settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether a probe asked for with [`Action::Probe`] has not been answered yet.
    pub fn probe_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// The fencing token of the lease this node holds on the witness, if it holds it.
    pub fn lease_token(&self) -> Option<FenceToken> {
        match self.lease {
            Lease::Held(token) => Some(token),
            _ => None,
        }
    }

    /// Whether a probe or a lease acquisition is under way (no new one starts).
    fn busy(&self) -> bool {
        self.pending.is_some() || self.acquiring.is_some()
    }

    /// Forgets the probe and the lease acquisition under way.
    fn cancel(&mut self) {
        self.pending = None;
        self.acquiring = None;
    }

    /// Handles one event at time `now` and returns what to do, in order.
    pub fn handle(&mut self, event: Event, now: SystemTime) -> Vec<Action> {
        let now_ms = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let mut out = Actions {
            list: Vec::new(),
            now_ms,
        };
        match event {
            Event::Boot { probe, isolation } => self.boot(&mut out, probe, isolation),
            Event::Resume => self.resume(&mut out),
            Event::Probed { probe, isolation } => self.probed(&mut out, probe, isolation),
            Event::SetServer(role) => self.set_server(&mut out, role),
            Event::SetDeployment(mode) => self.set_deployment(&mut out, mode),
            Event::Identify { node, site } => {
                if (node, site) != (self.state.node, self.state.site) {
                    self.state.node = node;
                    self.state.site = site;
                    out.persist(&self.state);
                }
            }
            Event::PeerClaim { node, epoch, token } => {
                self.peer_claim(&mut out, node, epoch, token)
            }
            Event::PeerSuperseded { node, epoch } => self.superseded(&mut out, node, epoch),
            Event::AddressConflict { mac } => self.conflict(&mut out, mac),
            Event::PeerLost { silent } => self.peer_lost(&mut out, silent),
            Event::PeerStillLost => self.peer_still_lost(&mut out),
            Event::PeerBack => self.peer_back(&mut out),
            Event::ReplicationOn => self.replication(&mut out, Replication::On, None),
            Event::ReplicationOff => self.replication(&mut out, Replication::Off, None),
            Event::ReplicationFailed { reason } => {
                self.replication(&mut out, Replication::Failed, Some(reason))
            }
            Event::StepFailed { step, reason } => self.step_failed(&mut out, step, reason),
            Event::LeaseAcquired { token } => self.lease_acquired(&mut out, token),
            Event::LeaseHeldByPeer { node, token } => self.lease_held_by(&mut out, node, token),
            Event::LeaseFree => self.lease_free(&mut out),
            Event::LeaseLost { reason } => self.lease_lost(&mut out, &reason),
            Event::WitnessUnreachable { reason } => self.witness_unreachable(&mut out, reason),
            Event::WitnessReachable => self.witness_reachable(&mut out),
        }
        out.list
    }

    fn failover(&self) -> bool {
        self.state.deployment == DeploymentMode::Failover
    }

    fn boot(&mut self, out: &mut Actions, probe: ProbeOutcome, isolation: Isolation) {
        // The shared address is not configured at boot, whatever the old role was.
        self.state.role = Role::Standby;
        self.cancel();
        self.lease = Lease::Unknown;
        self.peer = Peer::default();
        if self.failover() && self.state.standby_hold {
            self.stay_standby_at_boot(out, Hook::Standby, "boot: held in standby by the operator");
            return;
        }
        match self.verdict(&probe, isolation) {
            Ok(()) => self.claim(out, ProbeReason::Boot),
            Err(refusal) => self.not_claiming(out, ProbeReason::Boot, refusal),
        }
    }

    /// An agent restart that found this active node still holding the shared
    /// address (and nobody else answering for it): nothing changed for the
    /// clients, so no announcement; make sure the services and the database are up,
    /// tell the peer the (unchanged) epoch. Not active: nothing to resume (the
    /// caller boots instead).
    fn resume(&mut self, out: &mut Actions) {
        if self.state.role != Role::Active {
            return;
        }
        self.cancel();
        self.peer = Peer::default();
        if self.failover() {
            out.push(Action::PromoteDatabase);
        }
        out.push(Action::StartServices);
        if self.failover() {
            out.push(Action::SendClaim {
                epoch: self.state.epoch,
                token: self.lease_token(),
            });
        }
        out.notify(
            Hook::Active,
            "resume: the agent restarted while this node held the shared address",
        );
        // The lease went with the old agent's keeper: take it again (a live key
        // of this node's is adopted). Should the peer hold it, this node steps down.
        if self.witness_applies() && self.lease_token().is_none() {
            self.retake(out);
        }
    }

    /// The end of a boot that stays standby (the caller already stopped the services
    /// and released the address). The database keeps its role across a reboot, so
    /// one that was the active's is demoted, or it would take writes beside the new
    /// active's.
    fn stay_standby_at_boot(&mut self, out: &mut Actions, hook: Hook, why: &str) {
        if self.failover() {
            out.push(Action::DemoteDatabase);
        }
        out.persist(&self.state);
        out.notify(hook, why);
    }

    fn probed(&mut self, out: &mut Actions, probe: ProbeOutcome, isolation: Isolation) {
        let Some(reason) = self.pending.take() else {
            return; // Nobody asked: a late answer to a cancelled probe.
        };
        if reason == ProbeReason::SelfCheck {
            // With automatic failover the peer takes over once this node is
            // silent; a node cut off from its network must step away first, or
            // both hold the address when its cable returns and the writes the
            // peer acknowledged meanwhile are at stake (keepalived's FAULT state).
            if self.state.role == Role::Active && !self.peer.up && isolation == Isolation::Failed {
                if self.config.auto_failover {
                    // With a witness the lease's deadline runs: the address first.
                    self.step_down(
                        out,
                        Hook::Fault,
                        "cut off: the peer is lost and the reference address does not answer; \
                         released the shared address for the peer",
                        self.witness_applies(),
                    );
                } else if !self.peer.cut_off {
                    // Failover is the operator's: keep serving whoever still
                    // reaches this node, but yield first if a holder shows up.
                    self.peer.cut_off = true;
                    out.notify(
                        Hook::Fault,
                        "cut off: the peer is lost and the reference address does not answer",
                    );
                }
            }
            return;
        }
        if self.state.role == Role::Active {
            return;
        }
        if reason == ProbeReason::SingleDeployment {
            // Judged as the single server it would become (no isolation check:
            // it has no peer to hand over to).
            let failover = self.state.deployment;
            self.state.deployment = DeploymentMode::Single;
            let verdict = self.verdict(&probe, isolation);
            self.state.deployment = failover;
            match verdict {
                Ok(()) => {
                    self.single_server();
                    self.become_active(out, "operator: set-deployment single");
                }
                Err(refusal) => out.push(Action::Refuse(refusal)),
            }
            return;
        }
        match self.verdict(&probe, isolation) {
            Ok(()) => self.claim(out, reason),
            Err(refusal) => self.not_claiming(out, reason, refusal),
        }
    }

    /// The probe (and the isolation check) let this node claim: on a site with a
    /// witness it first takes the leader key (the claim follows
    /// [`Event::LeaseAcquired`]); otherwise it claims now.
    fn claim(&mut self, out: &mut Actions, reason: ProbeReason) {
        if self.witness_applies() && self.lease_token().is_none() {
            self.acquiring = Some(reason);
            out.push(Action::AcquireLease);
        } else {
            self.become_active(out, why_active(reason));
        }
    }

    /// A claim for `reason` cannot go ahead: tell whoever asked.
    fn not_claiming(&mut self, out: &mut Actions, reason: ProbeReason, refusal: Refusal) {
        match reason {
            ProbeReason::Operator | ProbeReason::SingleDeployment => {
                out.push(Action::Refuse(refusal))
            }
            ProbeReason::Boot => {
                let hook = match refusal {
                    Refusal::SharedAddressAnswered { .. } | Refusal::LeaseHeld { .. } => {
                        Hook::Standby
                    }
                    _ => Hook::Fault,
                };
                let why = format!("boot: staying standby: {}", refusal.fact());
                self.stay_standby_at_boot(out, hook, &why);
            }
            ProbeReason::Conflict | ProbeReason::AutoFailover => {
                out.notify(Hook::Fault, &format!("staying standby: {}", refusal.fact()))
            }
            ProbeReason::AutoFailoverRetry | ProbeReason::SelfCheck | ProbeReason::Retake => {}
        }
    }

    /// Whether a probe lets this node claim the shared address.
    fn verdict(&self, probe: &ProbeOutcome, isolation: Isolation) -> Result<(), Refusal> {
        match probe {
            ProbeOutcome::Answered { macs } => {
                return Err(Refusal::SharedAddressAnswered { macs: macs.clone() });
            }
            ProbeOutcome::Error { reason } => {
                return Err(Refusal::ProbeFailed {
                    reason: reason.clone(),
                });
            }
            ProbeOutcome::Silent => {}
        }
        // A single server has no peer to hand over to: the isolation check, which
        // keeps a cut-off node from stealing the site, does not apply.
        if self.failover() && isolation == Isolation::Failed {
            return Err(Refusal::Isolated);
        }
        Ok(())
    }

    fn set_server(&mut self, out: &mut Actions, role: Role) {
        if !self.failover() {
            out.push(Action::Refuse(Refusal::NotFailover));
            return;
        }
        match role {
            Role::Active if self.acquiring.is_some() => {
                // A claim waits for the witness: the operator hears its answer.
                self.acquiring = Some(ProbeReason::Operator);
            }
            Role::Standby
                if self.state.role == Role::Active
                    && self.witness_applies()
                    && self.lease == Lease::Failsafe =>
            {
                // Failsafe: the standby could not take the leader key, so a
                // handover would leave the site without an active node.
                out.push(Action::Refuse(Refusal::WitnessUnreachable {
                    reason: "this node serves in failsafe mode".into(),
                }));
            }
            Role::Active => {
                let held = self.state.standby_hold;
                self.state.standby_hold = false;
                if self.state.role == Role::Active {
                    if held {
                        out.persist(&self.state);
                    }
                    return;
                }
                if held {
                    out.persist(&self.state);
                }
                // The operator's word ends a re-election backoff: probe now
                // (the node drops the delayed probe it was waiting to run).
                if matches!(
                    self.pending.replace(ProbeReason::Operator),
                    None | Some(ProbeReason::Conflict)
                ) {
                    out.push(Action::Probe {
                        after: Duration::ZERO,
                    });
                }
            }
            Role::Standby => {
                self.state.standby_hold = true;
                self.cancel();
                if self.state.role == Role::Active {
                    self.become_standby(out, Hook::Standby, "operator: set-server standby");
                } else {
                    out.persist(&self.state);
                }
            }
        }
    }

    fn set_deployment(&mut self, out: &mut Actions, mode: DeploymentMode) {
        self.cancel();
        if mode == DeploymentMode::Single && self.state.role == Role::Standby {
            // Nothing changes until the probe says the address is free: a
            // refused command leaves the node as it was.
            self.pending = Some(ProbeReason::SingleDeployment);
            out.push(Action::Probe {
                after: Duration::ZERO,
            });
            return;
        }
        self.state.deployment = mode;
        match mode {
            DeploymentMode::Failover => {
                // The seed: after setDeployment failover the node restarts and
                // enters standby, and stays there until `set-server active`.
                self.state.standby_hold = true;
                if self.state.role == Role::Active {
                    self.become_standby(out, Hook::Standby, "operator: set-deployment failover");
                } else {
                    out.persist(&self.state);
                }
            }
            DeploymentMode::Single => {
                self.single_server();
                if let Lease::Held(_) = std::mem::take(&mut self.lease) {
                    out.push(Action::ReleaseLease);
                }
                out.persist(&self.state);
            }
        }
    }

    /// The state of a single server: no hold, no replication, no peer.
    fn single_server(&mut self) {
        self.state.deployment = DeploymentMode::Single;
        self.state.standby_hold = false;
        self.state.replication = Replication::Off;
        self.peer = Peer::default();
    }

    fn peer_claim(
        &mut self,
        out: &mut Actions,
        node: NodeId,
        epoch: Epoch,
        token: Option<FenceToken>,
    ) {
        if !self.failover() {
            return;
        }
        if node == self.state.node {
            out.notify(
                Hook::Fault,
                &format!(
                    "the peer claims the shared address as node {node}, which is this node's id; \
                     give the nodes distinct ids with `mp_replication init -n`"
                ),
            );
            return;
        }
        self.peer.claim = Some(epoch);
        // The witness orders holders for certain; without it, the epoch and
        // the node preference decide.
        let theirs_win = match (token, self.lease_token()) {
            (Some(theirs), Some(ours)) if theirs != ours => theirs > ours,
            _ => (epoch, node.preference()) > (self.state.epoch, self.state.node.preference()),
        };
        let mut changed = false;
        if epoch > self.state.epoch {
            self.state.epoch = epoch;
            changed = true;
        }
        if let Some(token) = token
            && self.state.token.is_none_or(|seen| token > seen)
        {
            self.state.token = Some(token);
            changed = true;
        }
        match self.state.role {
            Role::Active if theirs_win => {
                self.become_standby(
                    out,
                    Hook::Standby,
                    &format!("node {node} claimed the shared address with epoch {epoch}"),
                );
            }
            Role::Active => self.reassert(out),
            Role::Standby if epoch < self.state.epoch && !self.state.standby_hold => {
                // This node claimed after the peer's claim and the peer never heard
                // of it (it was cut off or partitioned away meanwhile): the writes
                // acknowledged under the newer epoch are here, not there. The peer
                // steps down; this node probes and claims again.
                let ours = self.state.epoch;
                out.push(Action::SendSuperseded { epoch: ours });
                out.notify(
                    Hook::Alarm,
                    &format!(
                        "node {node} claims the shared address with epoch {epoch}, older than \
                         this node's epoch {ours}: it was away when this node took over; \
                         asked it to step down"
                    ),
                );
                if !self.busy() {
                    self.pending = Some(ProbeReason::Conflict);
                    out.push(Action::Probe {
                        after: self.config.conflict_backoff,
                    });
                }
            }
            Role::Standby => {
                // The peer has taken over: an operator's standby request is fulfilled.
                if self.state.standby_hold {
                    self.state.standby_hold = false;
                    changed = true;
                }
                if matches!(
                    self.pending,
                    Some(ProbeReason::AutoFailover | ProbeReason::AutoFailoverRetry)
                ) {
                    self.pending = None;
                }
                if matches!(
                    self.acquiring,
                    Some(ProbeReason::AutoFailover | ProbeReason::AutoFailoverRetry)
                ) {
                    self.acquiring = None;
                }
                if changed {
                    out.persist(&self.state);
                }
            }
        }
    }

    fn superseded(&mut self, out: &mut Actions, node: NodeId, epoch: Epoch) {
        if !self.failover() || node == self.state.node || epoch <= self.state.epoch {
            return;
        }
        let ours = self.state.epoch;
        // Never claim with an epoch at or below the peer's again.
        self.state.epoch = epoch;
        if self.state.role == Role::Active {
            self.become_standby(
                out,
                Hook::Standby,
                &format!(
                    "node {node} took over with epoch {epoch} while this node was away \
                     (its claim had epoch {ours}): released the shared address for it"
                ),
            );
            // Should the peer fail to claim, this node probes again, last.
            self.pending = Some(ProbeReason::Conflict);
            out.push(Action::Probe {
                after: self.config.conflict_backoff * 3,
            });
        } else {
            out.persist(&self.state);
        }
    }

    fn conflict(&mut self, out: &mut Actions, mac: MacAddr) {
        if !self.failover() {
            out.notify(
                Hook::Fault,
                &format!("another host ({mac}) answers for this single server's shared address"),
            );
            return;
        }
        if self.state.role != Role::Active {
            return;
        }
        match self.peer.claim {
            Some(epoch) if self.peer.up => {
                let peer = self.state.node.peer();
                if (epoch, peer.preference()) > (self.state.epoch, self.state.node.preference()) {
                    self.become_standby(
                        out,
                        Hook::Standby,
                        &format!("node {peer} ({mac}) holds the shared address with epoch {epoch}"),
                    );
                } else {
                    self.reassert(out);
                }
            }
            None if self.peer.up && !self.peer.reasserted => {
                // The link is up but the peer's claim has not arrived: it is on
                // its way (the link just came back and both sent theirs), and
                // the newer epoch will settle who keeps the address. Releasing
                // now could leave the site to the older claim: if the peer
                // releases on the same conflict, this node's re-election finds
                // the address silent. Keep it and send the claim once more; if
                // no claim answers by the next conflict, the other holder is not
                // the peer, and the rule below applies.
                self.peer.reasserted = true;
                self.reassert(out);
            }
            _ if self.peer.took_over
                && !self.peer.up
                && self.peer.kept_since.is_none_or(|since| {
                    u128::from(out.now_ms.saturating_sub(since))
                        < self.config.keep_after_takeover().as_millis()
                }) =>
            {
                // This node took over while the link was down, so its claim is
                // the newer one; the other holder is most likely the old active
                // node whose cable just came back, and it releases on its own
                // conflict (it has no peer word either). Keep the address and
                // announce it while that release takes effect: a conflict seen
                // just after it (an ARP answer already on its way) must not make
                // this node release too, which leaves the site to a re-election
                // (on PostgreSQL, with this node's new primary demoted). If the
                // other holder is still there once the keep is over (the backoff
                // less one watch interval), both claimed while apart and the rule
                // below settles it.
                if self.peer.kept_since.is_none() {
                    self.peer.kept_since = Some(out.now_ms);
                    out.notify(
                        Hook::Fault,
                        &format!(
                            "address conflict: {mac} also answers for the shared address; this \
                             node took over while the peer was lost, so it keeps the address \
                             while the other holder steps down"
                        ),
                    );
                }
                out.push(Action::Announce);
            }
            _ => {
                // Without the peer's word, release: two holders is the worst
                // outcome. Then probe again, node 2 after a pause, so one node
                // wins; a node that was cut off waits longest, since the other
                // holder most likely took over while it was away.
                let cut_off = self.peer.cut_off;
                self.become_standby(
                    out,
                    Hook::Fault,
                    &format!("address conflict: {mac} also answers for the shared address"),
                );
                self.pending = Some(ProbeReason::Conflict);
                let after = match (cut_off, self.state.node) {
                    (true, _) => self.config.conflict_backoff * 3,
                    (false, NodeId::One) => Duration::ZERO,
                    (false, NodeId::Two) => self.config.conflict_backoff,
                };
                out.push(Action::Probe { after });
            }
        }
    }

    /// Keeps the address and tells the peer and the segment again who holds it.
    fn reassert(&mut self, out: &mut Actions) {
        out.push(Action::Announce);
        out.push(Action::SendClaim {
            epoch: self.state.epoch,
            token: self.lease_token(),
        });
    }

    fn peer_lost(&mut self, out: &mut Actions, silent: Option<Duration>) {
        if !self.failover() {
            return;
        }
        self.peer.up = false;
        self.peer.claim = None;
        // The link reports a loss only after a session: the peer was there.
        self.peer.seen = true;
        // A claim made while the link was already silent (before the loss was
        // declared) may never have reached the peer: count it as made apart. The
        // silence is the link's measure when it gives one: a loss declared late
        // (a busy node) would otherwise count a claim made in the silence as
        // heard (RELIABILITY.md, finding 28).
        let claimed_ms_ago = out.now_ms.saturating_sub(self.state.role_changed_ms);
        let silent = silent.unwrap_or(self.config.peer_loss_detection);
        if self.state.role == Role::Active
            && self.state.role_changed_ms != 0
            && u128::from(claimed_ms_ago) <= silent.as_millis()
        {
            self.peer.took_over = true;
        }
        out.notify(Hook::Alarm, "peer lost: it missed its heartbeats");
        if self.witness_applies()
            && self.state.role == Role::Active
            && self.lease_token().is_none()
            && self.acquiring.is_none()
        {
            // Failsafe ends: without the lease and without the peer, this node
            // cannot know that nobody else took over.
            self.step_away(
                out,
                Hook::Fault,
                "the peer is lost and this node does not hold the witness lease: \
                 released the shared address",
            );
            return;
        }
        if self.config.auto_failover
            && self.state.role == Role::Standby
            && !self.state.standby_hold
            && !self.busy()
        {
            self.pending = Some(ProbeReason::AutoFailover);
            out.push(Action::Probe {
                after: Duration::ZERO,
            });
        }
        self.self_check(out);
    }

    /// With automatic failover, an active node that lost its peer probes to learn
    /// whether it is the one cut off (see [`ProbeReason::SelfCheck`]).
    fn self_check(&mut self, out: &mut Actions) {
        if self.state.role == Role::Active && !self.busy() {
            self.pending = Some(ProbeReason::SelfCheck);
            out.push(Action::Probe {
                after: Duration::ZERO,
            });
        }
    }

    fn peer_still_lost(&mut self, out: &mut Actions) {
        if !self.failover() || self.peer.up {
            return;
        }
        if self.config.auto_failover
            && self.state.role == Role::Standby
            && !self.state.standby_hold
            && !self.busy()
        {
            self.pending = Some(ProbeReason::AutoFailoverRetry);
            out.push(Action::Probe {
                after: Duration::ZERO,
            });
        }
        self.self_check(out);
    }

    fn peer_back(&mut self, out: &mut Actions) {
        if !self.failover() {
            return;
        }
        self.peer.up = true;
        self.peer.seen = true;
        self.peer.cut_off = false;
        self.peer.took_over = false;
        self.peer.kept_since = None;
        self.peer.reasserted = false;
        if matches!(
            self.pending,
            Some(
                ProbeReason::AutoFailover | ProbeReason::AutoFailoverRetry | ProbeReason::SelfCheck
            )
        ) {
            self.pending = None;
        }
        if matches!(
            self.acquiring,
            Some(ProbeReason::AutoFailover | ProbeReason::AutoFailoverRetry)
        ) {
            // A lease that arrives now is given back.
            self.acquiring = None;
        }
        if self.state.role == Role::Active {
            // After a partition both sides may believe they are active: tell the
            // peer our epoch so the loser steps down.
            out.push(Action::SendClaim {
                epoch: self.state.epoch,
                token: self.lease_token(),
            });
        }
    }

    fn replication(&mut self, out: &mut Actions, to: Replication, reason: Option<String>) {
        if !self.failover() {
            return;
        }
        let changed = self.state.replication != to;
        self.state.replication = to;
        if changed {
            out.persist(&self.state);
        }
        if let Some(reason) = reason {
            out.notify(
                Hook::Alarm,
                &format!("database replication failed: {reason}"),
            );
        }
    }

    fn step_failed(&mut self, out: &mut Actions, step: Step, reason: String) {
        let going_active = matches!(
            step,
            Step::ClaimSharedAddress | Step::Announce | Step::PromoteDatabase | Step::StartServices
        );
        if self.state.role == Role::Active && (going_active || step == Step::Persist) {
            // Never stay half-switched: fall back to the safe role.
            self.become_standby(
                out,
                Hook::Fault,
                &format!("{} failed ({reason}); back to standby", step_name(step)),
            );
        } else {
            out.notify(
                Hook::Fault,
                &format!("{} failed: {reason}", step_name(step)),
            );
        }
    }

    /// Probe verdict was positive: take over. Persist first, so that a crash after
    /// the claim never reuses an epoch.
    fn become_active(&mut self, out: &mut Actions, why: &str) {
        let failover = self.failover();
        self.state.role = Role::Active;
        self.state.standby_hold = false;
        self.state.epoch = self.state.epoch.next_for(self.state.node);
        self.peer.took_over = failover && !self.peer.up && self.peer.seen;
        self.peer.kept_since = None;
        self.peer.reasserted = false;
        self.state.role_changed_ms = out.now_ms;
        self.cancel();
        out.persist(&self.state);
        if failover {
            out.push(Action::PromoteDatabase);
        }
        out.push(Action::ClaimSharedAddress);
        out.push(Action::Announce);
        out.push(Action::StartServices);
        if failover {
            out.push(Action::SendClaim {
                epoch: self.state.epoch,
                token: self.lease_token(),
            });
        }
        out.notify(Hook::Active, why);
    }

    /// Step down in the order that never leaves two writers: stop the services
    /// (the application drains), release the address, then demote the database.
    fn become_standby(&mut self, out: &mut Actions, hook: Hook, why: &str) {
        self.step_down(out, hook, why, false);
    }

    /// Step down against a deadline (the witness lease is lost or held by
    /// another): the address goes first, before services whose stop commands may
    /// take seconds, so that it is gone before the lease can run out anywhere.
    fn step_away(&mut self, out: &mut Actions, hook: Hook, why: &str) {
        self.step_down(out, hook, why, true);
    }

    fn step_down(&mut self, out: &mut Actions, hook: Hook, why: &str, urgent: bool) {
        self.state.role = Role::Standby;
        self.state.role_changed_ms = out.now_ms;
        self.cancel();
        if urgent {
            out.push(Action::ReleaseSharedAddress);
            out.push(Action::StopServices);
        } else {
            out.push(Action::StopServices);
            out.push(Action::ReleaseSharedAddress);
        }
        if self.failover() {
            out.push(Action::DemoteDatabase);
        }
        match self.lease {
            Lease::Held(_) => {
                // Only after the address is gone: the next holder may claim at once.
                self.lease = Lease::Unknown;
                out.push(Action::ReleaseLease);
            }
            Lease::Failsafe => self.lease = Lease::Unknown,
            Lease::Unknown | Lease::Peer(_) | Lease::Free | Lease::Unreachable => {}
        }
        out.persist(&self.state);
        out.notify(hook, why);
    }

    /// Whether the witness rules apply: a failover node of a site with a witness.
    fn witness_applies(&self) -> bool {
        self.config.witness && self.failover()
    }

    /// An active node takes the leader key (again).
    fn retake(&mut self, out: &mut Actions) {
        self.acquiring = Some(ProbeReason::Retake);
        out.push(Action::AcquireLease);
    }

    fn lease_acquired(&mut self, out: &mut Actions, token: FenceToken) {
        if !self.witness_applies() {
            // Not wanted here (the node became a single server meanwhile).
            out.push(Action::ReleaseLease);
            return;
        }
        self.lease = Lease::Held(token);
        let newer = self.state.token.is_none_or(|seen| token > seen);
        if newer {
            self.state.token = Some(token);
        }
        match (self.state.role, self.acquiring.take()) {
            (Role::Standby, Some(reason)) => self.become_active(out, why_active(reason)),
            (Role::Standby, None) => {
                // Nobody waits for it any more (the peer came back, the
                // operator changed their mind): give it back.
                self.lease = Lease::Unknown;
                out.push(Action::ReleaseLease);
                if newer {
                    out.persist(&self.state);
                }
            }
            (Role::Active, _) => {
                if newer {
                    out.persist(&self.state);
                }
                out.push(Action::SendClaim {
                    epoch: self.state.epoch,
                    token: Some(token),
                });
            }
        }
    }

    fn lease_held_by(&mut self, out: &mut Actions, node: NodeId, token: FenceToken) {
        if !self.witness_applies() || node == self.state.node {
            return;
        }
        if self.lease_token().is_some_and(|ours| token <= ours) {
            // Seen before this node took the key: that holder is gone.
            return;
        }
        self.lease = Lease::Peer(token);
        let newer = self.state.token.is_none_or(|seen| token > seen);
        if newer {
            self.state.token = Some(token);
        }
        let reason = self.acquiring.take();
        if self.state.role == Role::Active {
            self.step_away(
                out,
                Hook::Fault,
                &format!(
                    "node {node} holds the site's leader key on the witness (token {token}): \
                     released the shared address"
                ),
            );
            return;
        }
        match reason {
            Some(ProbeReason::AutoFailover) => out.notify(
                Hook::Alarm,
                &format!(
                    "not taking over yet: node {node} still holds the site's leader key on the \
                     witness (it is alive but out of sight, or its lease has not run out)"
                ),
            ),
            Some(reason) => {
                let boot = reason == ProbeReason::Boot;
                self.not_claiming(out, reason, Refusal::LeaseHeld { node });
                if boot {
                    return; // persisted
                }
            }
            None => {}
        }
        if newer {
            out.persist(&self.state);
        }
    }

    fn lease_free(&mut self, out: &mut Actions) {
        if !self.witness_applies() {
            return;
        }
        if let Lease::Held(_) = self.lease {
            // Seen before this node took the key; a loss comes as LeaseLost.
            return;
        }
        self.lease = Lease::Free;
        if self.state.role == Role::Active && !self.busy() {
            self.retake(out);
        }
    }

    fn lease_lost(&mut self, out: &mut Actions, reason: &str) {
        if !self.witness_applies() {
            return;
        }
        let Lease::Held(_) = self.lease else {
            return;
        };
        self.lease = Lease::Unknown;
        if self.state.role != Role::Active {
            return;
        }
        if self.peer.up {
            self.lease = Lease::Failsafe;
            out.notify(
                Hook::Alarm,
                &format!(
                    "witness lease lost ({reason}); failsafe: staying active while the peer is \
                     in sight, and no node takes over"
                ),
            );
        } else {
            self.step_away(
                out,
                Hook::Fault,
                &format!(
                    "witness lease lost ({reason}) and the peer is not in sight: released the \
                     shared address before the lease can expire"
                ),
            );
        }
    }

    fn witness_unreachable(&mut self, out: &mut Actions, reason: String) {
        if !self.witness_applies() {
            return;
        }
        // While this node holds the lease, its keeper's deadline decides
        // ([`Event::LeaseLost`]).
        let held = self.lease_token().is_some();
        if !held && self.lease != Lease::Failsafe {
            self.lease = Lease::Unreachable;
        }
        if let Some(asked) = self.acquiring.take() {
            let refusal = Refusal::WitnessUnreachable {
                reason: reason.clone(),
            };
            self.not_claiming(out, asked, refusal);
            if asked == ProbeReason::Boot {
                return;
            }
        }
        if self.state.role == Role::Active && !held {
            if self.peer.up {
                self.lease = Lease::Failsafe;
            } else {
                self.step_away(
                    out,
                    Hook::Fault,
                    &format!(
                        "the witness does not answer ({reason}) and the peer is not in sight: \
                         released the shared address"
                    ),
                );
            }
        }
    }

    fn witness_reachable(&mut self, out: &mut Actions) {
        if !self.witness_applies() {
            return;
        }
        if self.lease == Lease::Unreachable {
            self.lease = Lease::Unknown;
        }
        if self.state.role == Role::Active && self.lease_token().is_none() && !self.busy() {
            self.retake(out);
        }
    }
}

/// Why a node became active, for the hook and the log.
fn why_active(reason: ProbeReason) -> &'static str {
    match reason {
        ProbeReason::Boot => "boot: the shared address is silent",
        ProbeReason::Operator => "operator: set-server active",
        ProbeReason::SingleDeployment => "operator: set-deployment single",
        ProbeReason::Conflict => "re-election after an address conflict",
        ProbeReason::AutoFailover | ProbeReason::AutoFailoverRetry | ProbeReason::SelfCheck => {
            "automatic failover: the peer is lost"
        }
        ProbeReason::Retake => "took the witness lease again",
    }
}

struct Actions {
    list: Vec<Action>,
    now_ms: u64,
}

impl Actions {
    fn push(&mut self, action: Action) {
        self.list.push(action);
    }

    fn persist(&mut self, state: &NodeState) {
        self.list.push(Action::Persist(state.clone()));
    }

    fn notify(&mut self, hook: Hook, reason: &str) {
        self.list.push(Action::Notify {
            hook,
            reason: reason.to_string(),
        });
    }
}

fn join(macs: &[MacAddr]) -> String {
    macs.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn step_name(step: Step) -> &'static str {
    match step {
        Step::Persist => "persist",
        Step::ClaimSharedAddress => "claim-shared-address",
        Step::ReleaseSharedAddress => "release-shared-address",
        Step::Announce => "announce",
        Step::PromoteDatabase => "promote-database",
        Step::DemoteDatabase => "demote-database",
        Step::StartServices => "start-services",
        Step::StopServices => "stop-services",
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(step_name(*self))
    }
}

impl std::str::FromStr for Step {
    type Err = crate::ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const ALL: [Step; 8] = [
            Step::Persist,
            Step::ClaimSharedAddress,
            Step::ReleaseSharedAddress,
            Step::Announce,
            Step::PromoteDatabase,
            Step::DemoteDatabase,
            Step::StartServices,
            Step::StopServices,
        ];
        ALL.into_iter()
            .find(|step| step_name(*step) == s)
            .ok_or_else(|| {
                crate::ParseError::new(
                    "step",
                    s,
                    "expected an action name like claim-shared-address",
                )
            })
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hook::Active => "active",
            Hook::Standby => "standby",
            Hook::Fault => "fault",
            Hook::Alarm => "alarm",
        })
    }
}

impl fmt::Display for ProbeOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeOutcome::Silent => f.write_str("silent"),
            ProbeOutcome::Answered { macs } => {
                let list: Vec<String> = macs.iter().map(ToString::to_string).collect();
                write!(f, "answered({})", list.join(","))
            }
            ProbeOutcome::Error { reason } => write!(f, "error({reason:?})"),
        }
    }
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Isolation::Passed => "passed",
            Isolation::Failed => "failed",
        })
    }
}

/// Events print in the one-line form of the trace files.
impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Boot { probe, isolation } => {
                write!(f, "boot probe={probe} isolation={isolation}")
            }
            Event::Resume => f.write_str("resume"),
            Event::Probed { probe, isolation } => {
                write!(f, "probed probe={probe} isolation={isolation}")
            }
            Event::SetServer(role) => write!(f, "set-server {role}"),
            Event::SetDeployment(mode) => write!(f, "set-deployment {mode}"),
            Event::Identify { node, site } => write!(f, "identify node={node} site={site}"),
            Event::PeerClaim { node, epoch, token } => {
                write!(f, "peer-claim node={node} epoch={epoch}")?;
                match token {
                    Some(token) => write!(f, " token={token}"),
                    None => Ok(()),
                }
            }
            Event::PeerSuperseded { node, epoch } => {
                write!(f, "peer-superseded node={node} epoch={epoch}")
            }
            Event::AddressConflict { mac } => write!(f, "address-conflict mac={mac}"),
            Event::PeerLost { silent: None } => f.write_str("peer-lost"),
            Event::PeerLost {
                silent: Some(silent),
            } => write!(f, "peer-lost silent={}ms", silent.as_millis()),
            Event::PeerStillLost => f.write_str("peer-still-lost"),
            Event::PeerBack => f.write_str("peer-back"),
            Event::ReplicationOn => f.write_str("replication-on"),
            Event::ReplicationOff => f.write_str("replication-off"),
            Event::ReplicationFailed { reason } => write!(f, "replication-failed {reason:?}"),
            Event::StepFailed { step, reason } => write!(f, "step-failed {step} {reason:?}"),
            Event::LeaseAcquired { token } => write!(f, "lease-acquired token={token}"),
            Event::LeaseHeldByPeer { node, token } => {
                write!(f, "lease-held node={node} token={token}")
            }
            Event::LeaseFree => f.write_str("lease-free"),
            Event::LeaseLost { reason } => write!(f, "lease-lost {reason:?}"),
            Event::WitnessUnreachable { reason } => write!(f, "witness-unreachable {reason:?}"),
            Event::WitnessReachable => f.write_str("witness-reachable"),
        }
    }
}

/// Actions print in the one-line form of the trace files.
impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Persist(s) => write!(
                f,
                "persist deployment={} node={} site={} role={} epoch={} hold={} replication={}{}",
                s.deployment,
                s.node,
                s.site,
                s.role,
                s.epoch,
                if s.standby_hold { "yes" } else { "no" },
                s.replication,
                match s.token {
                    Some(token) => format!(" token={token}"),
                    None => String::new(),
                }
            ),
            Action::Probe { after } => write!(f, "probe after={}ms", after.as_millis()),
            Action::ClaimSharedAddress => f.write_str("claim-shared-address"),
            Action::ReleaseSharedAddress => f.write_str("release-shared-address"),
            Action::Announce => f.write_str("announce"),
            Action::PromoteDatabase => f.write_str("promote-database"),
            Action::DemoteDatabase => f.write_str("demote-database"),
            Action::StartServices => f.write_str("start-services"),
            Action::StopServices => f.write_str("stop-services"),
            Action::SendClaim { epoch, token } => {
                write!(f, "send-claim epoch={epoch}")?;
                match token {
                    Some(token) => write!(f, " token={token}"),
                    None => Ok(()),
                }
            }
            Action::AcquireLease => f.write_str("acquire-lease"),
            Action::ReleaseLease => f.write_str("release-lease"),
            Action::SendSuperseded { epoch } => write!(f, "send-superseded epoch={epoch}"),
            Action::Notify { hook, reason } => write!(f, "notify {hook} {reason:?}"),
            Action::Refuse(refusal) => write!(f, "refuse {:?}", refusal.to_string()),
        }
    }
}
