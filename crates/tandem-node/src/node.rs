//! A node's transitions carried out for real: the role machine decides, this
//! module persists, probes, claims, announces, runs services and hooks, and feeds
//! failures back to the machine so the node always ends in a stated role.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::{Flock, FlockArg};
use tandem_netif::{AddressSpec, AnnounceConfig, Interfaces};
use tandem_probe::{Collect, ProbeConfig, Prober};
use tandem_replication::{Backend, DemoteOptions, ReplicationBackend};
use tandem_role::{
    Action, Event, Isolation, MacAddr, Machine, NodeState, ProbeOutcome, Refusal, Role, StateError,
    StateFile, Step,
};

use crate::config::{NodeConfig, RunOn};
use crate::{HookRunner, Services};

/// Name of the lock file in the state directory.
pub const LOCK_FILE_NAME: &str = "node.lock";

/// How long the peer's word that it released the shared address shortens the
/// next probe (see [`Node::note_peer_released`]).
pub const PEER_RELEASE_FRESH: Duration = Duration::from_secs(10);

/// How many failure reports one command may chain before it stops: each report
/// moves the node toward standby, so a handful always suffices.
const MAX_ROUNDS: usize = 16;

/// Errors of a node's transitions. Each says what to do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The node state cannot be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// Another command or the agent holds the node's lock.
    #[error(
        "another tandem command or the agent is changing this node (lock {path} is held); wait for it to finish"
    )]
    Busy {
        /// The lock file.
        path: PathBuf,
    },
    /// The state directory or its lock cannot be opened.
    #[error("cannot open the state directory {path}: {source}")]
    StateDir {
        /// The directory or file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The replicated database cannot be opened.
    #[error("cannot open the replicated database: {0}; check `mp_replication status`")]
    Database(String),
    /// Netlink or probe sockets cannot be opened (privileges, namespace).
    #[error("cannot open {what}: {reason}")]
    Setup {
        /// What could not be opened.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

/// What one command did, step by step, for the operator and the demo timeline.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// Each action carried out, with how long it took and whether it failed.
    pub steps: Vec<StepRecord>,
    /// Why the operator's command was refused, if it was.
    pub refused: Option<Refusal>,
    /// Faults reported through the fault hook.
    pub faults: Vec<String>,
    /// Alarms raised through the alarm hook.
    pub alarms: Vec<String>,
    /// Claims to tell the peer about, by epoch (the agent sends them on the peer
    /// link; a command run without the agent cannot).
    pub claims: Vec<tandem_role::Epoch>,
    /// This node's epoch, to tell a peer whose claim is older (the agent sends it
    /// on the peer link as [`crate::PeerMessage::Superseded`]).
    #[serde(default)]
    pub superseded: Vec<tandem_role::Epoch>,
    /// The node's role at the end.
    pub role: Option<Role>,
    /// The node's state at the end.
    pub state: Option<NodeState>,
}

/// One action carried out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StepRecord {
    /// The action, in its one-line form.
    pub action: String,
    /// When it started, in microseconds since the Unix epoch (the wall clock, so
    /// that the steps of both nodes line up on one timeline); 0 from an agent
    /// of an earlier release.
    #[serde(default)]
    pub started_us: u64,
    /// How long it took.
    pub took: Duration,
    /// What went wrong, if it failed.
    pub error: Option<String>,
}

impl StepRecord {
    /// A step that started at `started_at` (the wall clock) and took `took`.
    pub fn new(action: String, started_at: SystemTime, took: Duration) -> StepRecord {
        StepRecord {
            action,
            started_us: unix_us(started_at),
            took,
            error: None,
        }
    }

    /// A step that started at `started` (the monotonic clock), recorded now.
    fn since(action: String, started: StepStart, error: Option<String>) -> StepRecord {
        StepRecord {
            action,
            started_us: started.wall_us,
            took: started.at.elapsed(),
            error,
        }
    }
}

/// When a step started, on both clocks.
#[derive(Debug, Clone, Copy)]
struct StepStart {
    at: Instant,
    wall_us: u64,
}

impl StepStart {
    fn now() -> StepStart {
        StepStart {
            at: Instant::now(),
            wall_us: unix_us(SystemTime::now()),
        }
    }
}

/// Microseconds since the Unix epoch (0 before it).
fn unix_us(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl Report {
    /// Whether the command did what was asked: not refused and no step failed.
    pub fn succeeded(&self) -> bool {
        self.refused.is_none() && self.steps.iter().all(|s| s.error.is_none())
    }
}

/// A node: its config, its persisted state under a lock, the role machine and
/// the parts that carry out its actions. Create it inside a tokio runtime on a
/// thread in the node's network namespace.
#[derive(Debug)]
pub struct Node {
    config: NodeConfig,
    state_file: StateFile,
    machine: Machine,
    interfaces: Interfaces,
    prober: Prober,
    /// One short probe instead of several, for right after the peer said it
    /// released (`[probe] released_timeout_ms`).
    quick_prober: Prober,
    /// The isolation check's prober: the configured attempts, each waiting
    /// `[probe] isolation_timeout_ms` (it ends at the first answer).
    isolation_prober: Prober,
    /// When the peer last said on the peer link that it released the address.
    peer_released: Option<Instant>,
    /// A silent probe run ahead of a peer loss (see [`Node::probe_ahead`]).
    ahead: Option<Instant>,
    /// Announce one round per step; the caller repeats (see
    /// [`Node::repeat_announcements_elsewhere`]).
    announce_once: bool,
    /// Leave delayed probes to the caller (see [`Node::defer_delayed_probes`]).
    defer_probes: bool,
    /// When a deferred probe is due.
    probe_due: Option<Instant>,
    services: Services,
    hooks: HookRunner,
    database: Option<std::sync::Arc<Backend>>,
    /// The witness lease keeper, on a site with a witness while the agent runs.
    witness: Option<tandem_witness::Keeper>,
    _lock: Flock<File>,
}

/// The role machine's event for what the witness keeper reports; `None` for a
/// report the machine has no use for (this node's own old key, seen after it
/// lost the lease, until etcd expires it).
pub(crate) fn lease_event(
    event: tandem_witness::LeaseEvent,
    me: tandem_role::NodeId,
) -> Option<Event> {
    use tandem_role::FenceToken;
    use tandem_witness::LeaseEvent;
    Some(match event {
        LeaseEvent::Acquired { token } => Event::LeaseAcquired {
            token: FenceToken::new(token.0),
        },
        LeaseEvent::HeldBy(holder) => {
            let node = holder.node;
            if node == me {
                return None;
            }
            Event::LeaseHeldByPeer {
                node,
                token: FenceToken::new(holder.token.0),
            }
        }
        LeaseEvent::Free => Event::LeaseFree,
        LeaseEvent::Lost { reason } => Event::LeaseLost { reason },
        LeaseEvent::Unreachable { reason } => Event::WitnessUnreachable { reason },
        LeaseEvent::Reachable => Event::WitnessReachable,
        _ => return None,
    })
}

/// Creates `dir` (and missing parents) as 0700, and takes group and other
/// access away from one that exists: the state directory holds received
/// bundles, backups and the database, which carry the site's secrets.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o7700))?;
    }
    Ok(())
}

impl Node {
    /// Opens the node: takes the state directory's lock, loads the state (a node
    /// without one starts as on first boot, with the id and site of its config),
    /// and opens netlink and probe sockets.
    pub fn open(config: NodeConfig, state_dir: &Path) -> Result<Node, NodeError> {
        let dir_error = |path: &Path, source| NodeError::StateDir {
            path: path.to_path_buf(),
            source,
        };
        create_private_dir(state_dir).map_err(|e| dir_error(state_dir, e))?;
        let lock_path = state_dir.join(LOCK_FILE_NAME);
        let lock_file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| dir_error(&lock_path, e))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|_| {
            NodeError::Busy {
                path: lock_path.clone(),
            }
        })?;
        let state_file = StateFile::in_dir(state_dir);
        let state = match state_file.load()? {
            Some(state) => state,
            None => NodeState::first_boot(config.node.id, config.node.site),
        };
        let machine = Machine::new(config.role_config(), state);
        let interfaces = Interfaces::new().map_err(|e| NodeError::Setup {
            what: "a netlink connection",
            reason: e.to_string(),
        })?;
        let probe = &config.probe;
        let prober_with = |retries: u32, timeout: Duration| {
            Prober::new(ProbeConfig {
                timeout,
                interval: probe.interval(),
                retries,
                collect: Collect::First,
            })
            .map_err(|e| NodeError::Setup {
                what: "the prober",
                reason: e.to_string(),
            })
        };
        let prober = prober_with(probe.attempts.saturating_sub(1), probe.timeout())?;
        let quick_prober = prober_with(0, probe.released_timeout())?;
        let isolation_prober =
            prober_with(probe.attempts.saturating_sub(1), probe.isolation_timeout())?;
        Ok(Node {
            services: Services::new(config.services.clone()),
            hooks: HookRunner::new(config.hooks.clone()),
            config,
            state_file,
            machine,
            interfaces,
            prober,
            quick_prober,
            isolation_prober,
            peer_released: None,
            ahead: None,
            announce_once: false,
            defer_probes: false,
            probe_due: None,
            database: None,
            witness: None,
            _lock: lock,
        })
    }

    /// Records that the peer said, on the authenticated peer link, that it has
    /// released the shared address (a planned switchover). The next probe within
    /// [`PEER_RELEASE_FRESH`] sends one probe instead of `[probe] attempts`: it
    /// still catches a third host, and the peer's word covers the peer.
    pub fn note_peer_released(&mut self) {
        self.peer_released = Some(Instant::now());
    }

    /// From now on an announce step sends one round and returns, instead of
    /// `announce_count` rounds `announce_interval_ms` apart: the caller (the
    /// agent, which has a timer) sends the later rounds with
    /// [`reannounce`](Self::reannounce), so that the services start right after
    /// the first round.
    pub fn repeat_announcements_elsewhere(&mut self) {
        self.announce_once = true;
    }

    /// From now on a probe the role machine asks for after a delay (the backoff
    /// after an address conflict, up to seconds) is not slept through: the
    /// command that led to it returns, [`probe_due`](Self::probe_due) says when
    /// it is due, and the caller (the agent, which has a timer and other work
    /// meanwhile) runs it with [`run_due_probe`](Self::run_due_probe).
    pub fn defer_delayed_probes(&mut self) {
        self.defer_probes = true;
    }

    /// When the deferred probe is due, if one is.
    pub fn probe_due(&self) -> Option<Instant> {
        self.probe_due
    }

    /// Runs the deferred probe and carries out what the machine decides on its
    /// outcome. Without a deferred probe it does nothing. A probe that an event
    /// in between made moot is answered anyway; the machine ignores answers
    /// nobody waits for.
    pub async fn run_due_probe(&mut self) -> Report {
        if self.probe_due.take().is_none() {
            return Report::default();
        }
        let (probe, isolation) = self.answer_probe(false).await;
        self.handle(Event::Probed { probe, isolation }).await
    }

    /// How long a probe that finds the shared address silent takes:
    /// `(attempts - 1) × interval + timeout` of the `[probe]` settings.
    pub fn probe_duration(&self) -> Duration {
        self.config.probe.duration()
    }

    /// A probe of the shared address and the reference that borrows nothing from
    /// the node, to run while the peer has been silent for a while but is not yet
    /// declared lost (the agent spawns it); hand its outcome to
    /// [`keep_probe_ahead`](Self::keep_probe_ahead).
    pub fn probe_ahead(&self) -> impl Future<Output = (ProbeOutcome, Isolation)> + Send + 'static {
        let net = &self.config.network;
        run_probe(
            self.prober,
            self.isolation_prober,
            net.interface.clone(),
            net.shared_address.addr(),
            net.reference(),
        )
    }

    /// Keeps the outcome of a [`probe_ahead`](Self::probe_ahead), so that the probe
    /// the role machine asks for when the loss comes is already answered: a silent
    /// probe with the isolation check passed is kept for one probe timeout or one
    /// heartbeat, whichever is longer, plus one heartbeat, and answers the next
    /// immediate probe (a frame from the peer after the probe puts the loss a
    /// whole silence limit later, past that); any other outcome is dropped, and
    /// that probe then runs as usual. Returns whether it was kept.
    ///
    /// The evidence is the same as a probe run after the loss: nobody answered
    /// for the shared address while the peer sent nothing, only taken earlier.
    pub fn keep_probe_ahead(&mut self, probe: &ProbeOutcome, isolation: Isolation) -> bool {
        let silent = *probe == ProbeOutcome::Silent && isolation == Isolation::Passed;
        self.ahead = silent.then(Instant::now);
        silent
    }

    /// Drops a kept [`probe_ahead`](Self::probe_ahead) outcome: the peer sent a
    /// frame after that probe began, so it no longer describes this silence.
    pub fn forget_probe_ahead(&mut self) {
        self.ahead = None;
    }

    /// Opens the node as [`open`](Self::open) does and attaches its replicated
    /// database when replication was initialized on it, for the tools that change
    /// a node while no agent runs.
    pub async fn open_with_database(
        config: NodeConfig,
        state_dir: &Path,
    ) -> Result<Node, NodeError> {
        let database = crate::open_database(&config, state_dir)
            .await
            .map_err(|e| NodeError::Database(tandem_replication::chain(&e)))?;
        let mut node = Node::open(config, state_dir)?;
        if let Some(db) = database {
            node.attach_database(db);
        }
        Ok(node)
    }

    /// Gives the node its replicated database: from now on the role machine's
    /// promote and demote actions make it writable or read-only (see
    /// [`open_database`](crate::open_database)). Without one they are recorded
    /// and succeed.
    pub fn attach_database(&mut self, database: Backend) {
        self.database = Some(std::sync::Arc::new(database));
    }

    /// Makes a database attached while the node was already active writable:
    /// `mp_replication init` run on the active node makes the database after
    /// the node claimed, so the promote of that claim found none. A standby's
    /// new database is left as `init` made it (the standby).
    pub async fn promote_late_database(&mut self) -> Report {
        let mut report = Report::default();
        if self.database.is_some() && self.machine.role() == Role::Active {
            let _ = self.run_step(&mut report, &Action::PromoteDatabase).await;
        }
        report.role = Some(self.machine.role());
        report.state = Some(self.machine.state().clone());
        report
    }

    /// Runs a notify hook outside a transition (alarms the agent raises itself).
    pub async fn run_hook(&self, hook: tandem_role::Hook, reason: &str) {
        if let Err(e) = self.hooks.run(hook, reason, self.machine.state()).await {
            tracing::warn!(%hook, error = %e, "notify hook failed");
        }
    }

    /// The node's replicated database, if one is attached (shared, so that a
    /// task beside the caller's loop can read its status).
    pub fn database(&self) -> Option<&std::sync::Arc<Backend>> {
        self.database.as_ref()
    }

    /// The node's state now.
    pub fn state(&self) -> &NodeState {
        self.machine.state()
    }

    /// The node's config.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The fencing token of the witness lease this node holds, if it holds one.
    pub fn lease_token(&self) -> Option<tandem_role::FenceToken> {
        self.machine.lease_token()
    }

    /// Hands the node the witness lease keeper (the agent starts it): the
    /// machine's [`Action::AcquireLease`] and [`Action::ReleaseLease`] go to it.
    pub fn attach_witness(&mut self, keeper: tandem_witness::Keeper) {
        self.witness = Some(keeper);
    }

    /// What the witness keeper knows now, on a site with a witness.
    pub fn witness_view(&self) -> Option<tandem_witness::LeaseView> {
        self.witness.as_ref().map(tandem_witness::Keeper::view)
    }

    /// The answer to [`Action::AcquireLease`].
    async fn acquire_lease(&self) -> Event {
        let Some(keeper) = &self.witness else {
            return Event::WitnessUnreachable {
                reason: "no agent keeps the witness lease on this node (start `failover agent`; \
                         with a witness, roles change only through it)"
                    .into(),
            };
        };
        let me = self.machine.state().node;
        lease_event(keeper.acquire_now().await, me).unwrap_or_else(|| Event::WitnessUnreachable {
            reason: "the leader key still names this node under a lease it lost; \
                     it is free once etcd expires that lease"
                .into(),
        })
    }

    /// The boot decision of the seed: with the shared address released and the
    /// active-only services stopped, probe the shared address and the reference
    /// address, and let the role machine decide.
    pub async fn boot(&mut self) -> Report {
        let mut report = Report::default();
        // An agent restarted while the machine ran on: an active node that
        // still holds the shared address resumes instead of releasing it and
        // probing, which would let the peer claim the same silence. Not when
        // another host answers too (the peer took over meanwhile): then the
        // node boots as after a reboot.
        if self.machine.role() == Role::Active
            && self.holds_shared_address().await
            && self.conflicting_macs().await.is_ok_and(|m| m.is_empty())
        {
            self.drive(Event::Resume, &mut report).await;
            return report;
        }
        // "When a node is rebooted, interface eth0 is initially disabled." A
        // service that will not stop is recorded; an address that cannot be
        // released makes the probe meaningless, so the node stays standby.
        let _ = self.run_step(&mut report, &Action::StopServices).await;
        let released = self
            .run_step(&mut report, &Action::ReleaseSharedAddress)
            .await;
        let (probe, isolation) = match released {
            Ok(()) => self.probe(false).await,
            Err((_, reason)) => (
                ProbeOutcome::Error {
                    reason: format!("cannot release the shared address: {reason}"),
                },
                Isolation::Failed,
            ),
        };
        self.drive(Event::Boot { probe, isolation }, &mut report)
            .await;
        report
    }

    /// The operator's `set-server active|standby`.
    pub async fn set_server(&mut self, role: Role) -> Report {
        self.handle(Event::SetServer(role)).await
    }

    /// Feeds one event and carries out everything that follows from it,
    /// including probes the machine asks for.
    pub async fn handle(&mut self, event: Event) -> Report {
        let mut report = Report::default();
        self.drive(event, &mut report).await;
        report
    }

    async fn drive(&mut self, first: Event, report: &mut Report) {
        let mut next = Some(first);
        let mut rounds = 0;
        let mut deferred: Option<Event> = None;
        while let Some(event) = next.take() {
            rounds += 1;
            if rounds > MAX_ROUNDS {
                report
                    .faults
                    .push("gave up after too many failed steps".into());
                break;
            }
            tracing::info!(%event, "event");
            let actions = self.machine.handle(event, SystemTime::now());
            for action in actions {
                match action {
                    Action::Probe { after } => {
                        // A probe ends the batch: the machine's answer to it comes next.
                        if self.defer_probes && !after.is_zero() {
                            self.probe_due = Some(Instant::now() + after);
                            tracing::info!(after_ms = after.as_millis(), "probe deferred");
                            break;
                        }
                        self.probe_due = None;
                        tokio::time::sleep(after).await;
                        let started = StepStart::now();
                        let (probe, isolation) = self.answer_probe(after.is_zero()).await;
                        report.steps.push(StepRecord::since(
                            format!("probe: {probe}, isolation check {isolation}"),
                            started,
                            None,
                        ));
                        next = Some(Event::Probed { probe, isolation });
                        break;
                    }
                    Action::Refuse(refusal) => report.refused = Some(refusal),
                    Action::AcquireLease => {
                        // Like a probe, the lease's answer is the next event.
                        let started = StepStart::now();
                        let answer = self.acquire_lease().await;
                        report
                            .steps
                            .push(StepRecord::since(action.to_string(), started, None));
                        next = Some(answer);
                        break;
                    }
                    Action::ReleaseLease => {
                        if let Some(keeper) = &self.witness {
                            keeper.release();
                        }
                        report.steps.push(StepRecord::since(
                            action.to_string(),
                            StepStart::now(),
                            None,
                        ));
                    }
                    Action::SendClaim { epoch, .. } | Action::SendSuperseded { epoch } => {
                        // The agent sends them on the peer link.
                        report.steps.push(StepRecord::since(
                            action.to_string(),
                            StepStart::now(),
                            None,
                        ));
                        if matches!(action, Action::SendClaim { .. }) {
                            report.claims.push(epoch);
                        } else {
                            report.superseded.push(epoch);
                        }
                    }
                    Action::Notify { hook, reason } => {
                        match hook {
                            tandem_role::Hook::Fault => report.faults.push(reason.clone()),
                            tandem_role::Hook::Alarm => report.alarms.push(reason.clone()),
                            _ => {}
                        }
                        if let Err(e) = self.hooks.run(hook, &reason, self.machine.state()).await {
                            tracing::warn!(%hook, error = %e, "notify hook failed");
                        }
                    }
                    action => {
                        if let Err((step, reason)) = self.run_step(report, &action).await {
                            // A service that will not stop, or a database that will
                            // not demote, must not keep the rest of a step-down
                            // (releasing the address, giving the lease back,
                            // persisting) from happening: reported once the batch
                            // is through.
                            if matches!(step, Step::StopServices | Step::DemoteDatabase) {
                                deferred.get_or_insert(Event::StepFailed { step, reason });
                                continue;
                            }
                            next = Some(Event::StepFailed { step, reason });
                            break;
                        }
                    }
                }
            }
            if next.is_none() {
                next = deferred.take();
            }
        }
        report.role = Some(self.machine.role());
        report.state = Some(self.machine.state().clone());
    }

    /// Carries out one action and records it.
    async fn run_step(
        &mut self,
        report: &mut Report,
        action: &Action,
    ) -> Result<(), (Step, String)> {
        let started = StepStart::now();
        let result = self.execute(action).await;
        report.steps.push(StepRecord::since(
            action.to_string(),
            started,
            result.as_ref().err().map(|(_, e)| e.clone()),
        ));
        match &result {
            Ok(()) => tracing::info!(%action, "done"),
            Err((_, e)) => tracing::warn!(%action, error = %e, "failed"),
        }
        result
    }

    async fn execute(&mut self, action: &Action) -> Result<(), (Step, String)> {
        let net = &self.config.network;
        let shared = AddressSpec::shared(net.shared_address, &net.interface);
        match action {
            Action::Persist(state) => {
                // fsync (twice) on the blocking threads: a slow disk must not hold
                // a worker of the runtime, which also serves the peer link and the
                // status page. The step waits for it all the same.
                let (file, state) = (self.state_file.clone(), state.clone());
                match tokio::task::spawn_blocking(move || file.save(&state)).await {
                    Ok(saved) => saved.map_err(|e| (Step::Persist, e.to_string())),
                    Err(e) => Err((
                        Step::Persist,
                        format!("writing {} did not finish: {e}", self.state_file.path().display()),
                    )),
                }
            }
            Action::ClaimSharedAddress => self
                .interfaces
                .claim(&shared)
                .await
                .map(drop)
                .map_err(|e| (Step::ClaimSharedAddress, e.to_string())),
            Action::ReleaseSharedAddress => self
                .interfaces
                .release(&shared)
                .await
                .map(drop)
                .map_err(|e| (Step::ReleaseSharedAddress, e.to_string())),
            Action::Announce => {
                let announce = AnnounceConfig {
                    count: if self.announce_once {
                        1
                    } else {
                        self.config.failover.announce_count.max(1)
                    },
                    interval: Duration::from_millis(self.config.failover.announce_interval_ms),
                };
                self.interfaces
                    .announce(shared.ip(), &shared.iface, announce)
                    .await
                    .map(drop)
                    .map_err(|e| (Step::Announce, e.to_string()))
            }
            Action::StartServices => self
                .services
                .start(RunOn::Active)
                .await
                .map_err(|e| (Step::StartServices, e.to_string())),
            Action::StopServices => self
                .services
                .stop(RunOn::Active)
                .await
                .map_err(|e| (Step::StopServices, e.to_string())),
            Action::PromoteDatabase => match &self.database {
                Some(db) => db
                    .promote()
                    .await
                    .map_err(|e| (Step::PromoteDatabase, tandem_replication::chain(&e))),
                None => Ok(()),
            },
            // A PostgreSQL standby's rewind or copy from its new primary is left to
            // the replication service: heartbeats, the status page and the tools go
            // on meanwhile.
            Action::DemoteDatabase => match &self.database {
                Some(db) => db
                    .demote_with(DemoteOptions::new().deferring_copy(true))
                    .await
                    .map(|done| {
                        if done.resync_due {
                            tracing::info!(
                                "the database is read-only; its resynchronisation from the peer runs in the replication service"
                            );
                        }
                    })
                    .map_err(|e| (Step::DemoteDatabase, tandem_replication::chain(&e))),
                None => Ok(()),
            },
            // Handled by `drive`.
            Action::Probe { .. }
            | Action::Refuse(_)
            | Action::Notify { .. }
            | Action::SendClaim { .. }
            | Action::SendSuperseded { .. } => Ok(()),
            // Actions added to the machine later are refused loudly, not skipped.
            other => Err((
                Step::Persist,
                format!("this build cannot carry out `{other}`"),
            )),
        }
    }

    /// Looks for other hosts answering ARP for the shared address while this node
    /// holds it: the MAC addresses of every other answer (empty when none). The
    /// future borrows nothing from the node, so the agent runs it beside its loop.
    pub fn conflicting_macs(
        &self,
    ) -> impl Future<Output = Result<Vec<MacAddr>, String>> + Send + 'static {
        let net = &self.config.network;
        let (interface, shared) = (net.interface.clone(), net.shared_address.addr());
        let config = ProbeConfig {
            collect: Collect::All,
            retries: 0,
            ..self.prober.config()
        };
        async move {
            let std::net::IpAddr::V4(shared) = shared else {
                return Ok(Vec::new()); // IPv6 conflicts show as peer claims only.
            };
            let prober = Prober::new(config).map_err(|e| e.to_string())?;
            let outcome = prober
                .arp(&interface, shared)
                .await
                .map_err(|e| e.to_string())?;
            Ok(outcome.macs())
        }
    }

    /// Whether this node's interface holds the shared address now.
    pub async fn holds_shared_address(&self) -> bool {
        let net = &self.config.network;
        self.interfaces
            .holds(&net.interface, net.shared_address.addr())
            .await
            .unwrap_or(false)
    }

    /// Announces the shared address again (gratuitous ARP) while this node is
    /// active and holds it. Clients ignore an announcement that comes within
    /// their neighbour-table lock time (one second on Linux) of another host's,
    /// so after a contested claim only a later announcement makes them all
    /// follow the final holder; keepalived repeats its own for the same reason.
    pub async fn reannounce(&mut self) -> Report {
        let mut report = Report::default();
        if self.machine.role() == Role::Active && self.holds_shared_address().await {
            let _ = self.run_step(&mut report, &Action::Announce).await;
        }
        report.role = Some(self.machine.role());
        report.state = Some(self.machine.state().clone());
        report
    }

    /// Starts the services that run on both nodes (`run_on = "always"`: the seed's
    /// database, Tomcat and SIM), in order, whatever the role. The agent calls it
    /// before the boot decision, so they run on a standby too. A failure is
    /// reported as a failed step and through the fault hook; the node goes on (a
    /// standby without them is still a standby).
    pub async fn start_always_services(&mut self) -> Report {
        self.always_services(true).await
    }

    /// Stops the services that run on both nodes, in reverse order (an agent that
    /// shuts down, after [`Node::stand_down`]).
    pub async fn stop_always_services(&mut self) -> Report {
        self.always_services(false).await
    }

    async fn always_services(&mut self, start: bool) -> Report {
        let mut report = Report::default();
        let started = StepStart::now();
        let (action, result) = if start {
            ("start", self.services.start(RunOn::Always).await)
        } else {
            ("stop", self.services.stop(RunOn::Always).await)
        };
        report.steps.push(StepRecord::since(
            format!("{action}-always-services"),
            started,
            result.as_ref().err().map(ToString::to_string),
        ));
        if let Err(e) = result {
            let message = format!("the always-running services did not {action}: {e}");
            tracing::warn!(error = %e, "always-running services did not {action}");
            self.run_hook(tandem_role::Hook::Fault, &message).await;
            report.faults.push(message);
        }
        report.role = Some(self.machine.role());
        report.state = Some(self.machine.state().clone());
        report
    }

    /// Releases the shared address and stops the active-only services without
    /// changing the persisted role, for an agent that shuts down: no address may
    /// stay up without an agent watching it.
    pub async fn stand_down(&mut self) -> Report {
        let mut report = Report::default();
        let _ = self.run_step(&mut report, &Action::StopServices).await;
        let _ = self
            .run_step(&mut report, &Action::ReleaseSharedAddress)
            .await;
        report.role = Some(self.machine.role());
        report.state = Some(self.machine.state().clone());
        report
    }

    /// The probe the machine asked for: answered by a fresh probe ahead of a
    /// loss when it was asked for at once, one probe instead of several right
    /// after the peer said it released, the configured probe otherwise.
    async fn answer_probe(&mut self, immediate: bool) -> (ProbeOutcome, Isolation) {
        let ahead = self
            .ahead
            .take()
            .is_some_and(|at| at.elapsed() <= self.ahead_fresh());
        let quick = self
            .peer_released
            .take()
            .is_some_and(|at| at.elapsed() < PEER_RELEASE_FRESH);
        if ahead && immediate {
            tracing::info!("probe answered by the one run ahead of the loss");
            return (ProbeOutcome::Silent, Isolation::Passed);
        }
        self.probe(quick).await
    }

    /// How long a silent probe ahead of a loss answers the loss's probe: one
    /// probe timeout or one heartbeat, whichever is longer, and one heartbeat
    /// more, because the peer link may declare the loss up to one of the peer's
    /// intervals after its deadline (the datagram judge's grace after a late
    /// wake of its own thread). Without that heartbeat a loss declared in the
    /// grace found the probe ahead stale and probed again, which made the
    /// slowest failovers at a 20 ms heartbeat (`cargo xtask bench failover`).
    fn ahead_fresh(&self) -> Duration {
        let heartbeat = self.config.failover.heartbeat();
        self.config
            .probe
            .timeout()
            .max(heartbeat)
            .saturating_add(heartbeat)
    }

    /// Probes the shared address and runs the isolation check.
    async fn probe(&self, quick: bool) -> (ProbeOutcome, Isolation) {
        let net = &self.config.network;
        let prober = if quick {
            self.quick_prober
        } else {
            self.prober
        };
        run_probe(
            prober,
            self.isolation_prober,
            net.interface.clone(),
            net.shared_address.addr(),
            net.reference(),
        )
        .await
    }
}

/// Probes `shared` on `iface` with `prober` and runs the isolation check against
/// `reference` with `isolation_prober`, both at once.
async fn run_probe(
    prober: Prober,
    isolation_prober: Prober,
    iface: String,
    shared: std::net::IpAddr,
    reference: std::net::IpAddr,
) -> (ProbeOutcome, Isolation) {
    let (answers, reached) = tokio::join!(
        prober.address(&iface, shared),
        isolation_prober.isolation_check(&iface, reference)
    );
    let probe = match answers {
        Ok(outcome) if outcome.is_answered() => ProbeOutcome::Answered {
            macs: outcome.macs(),
        },
        Ok(_) => ProbeOutcome::Silent,
        Err(e) => ProbeOutcome::Error {
            reason: e.to_string(),
        },
    };
    let isolation = match reached {
        Ok(outcome) if outcome.is_answered() => Isolation::Passed,
        Ok(_) => Isolation::Failed,
        Err(e) => {
            tracing::warn!(error = %e, "isolation check failed to run");
            Isolation::Failed
        }
    };
    tracing::info!(%probe, %isolation, %reference, "probed");
    (probe, isolation)
}
