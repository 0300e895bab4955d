//! The node agent: the long-running process of a node (`failover agent`).
//!
//! It makes the boot decision, keeps the peer link to the other node and
//! exchanges claims and epochs on it, watches the shared address for another
//! host answering for it, serves the operators' tools on the control socket and
//! keeps a [`StatusSnapshot`] current for the status page. On shutdown it stops
//! the active-only services and releases the shared address: no address stays up
//! without an agent watching it.
//!
//! # What runs beside the loop, and when
//!
//! The loop (`Agent::serve`) is one `select!` over the peer link's events and
//! messages, the control socket, the witness keeper's reports, timers and the
//! results of work it started beside itself. It never waits on a database or a
//! long probe:
//!
//! - **Probing ahead of a loss.** A standby that fails over on its own starts a
//!   probe once the peer has been quiet for [`AHEAD_QUIET`](crate::AHEAD_QUIET)
//!   (1.5) heartbeat intervals and a probe would end half a heartbeat before the
//!   loss is declared (`Session::last_heard` and `silence_limit` say when); a
//!   silent result with the isolation check passed, no older than one probe
//!   timeout or one heartbeat plus one heartbeat, and with nothing heard from the
//!   peer since it began, answers the probe the loss asks for. `failover check`
//!   says when `[probe]` is too long for the heartbeat to end in time.
//! - **Watching the shared address.** While active, every heartbeat tick starts
//!   a listen of one probe timeout for other hosts answering for the shared
//!   address, beside the loop (one at a time); its answer counts only if the
//!   node is still active in the epoch the listen began in. It once ran inside
//!   the loop because, beside it, a node that took over after a cable cut met
//!   the old holder's ARP answer before the peer link was back and released;
//!   the role machine now keeps the address through that first conflict when
//!   this node took over while the peer was lost.
//! - **Announcing again.** After a claim the later announce rounds go out on a
//!   timer (`announce_interval_ms` apart, and one more 1.5 s later, past Linux's
//!   neighbour-table lock time), so services start right after the first round;
//!   each round checks again that the node is active and holds the address.
//! - **Deferred probes.** A probe the machine asks for after a delay (the
//!   re-election backoff after an address conflict) runs on a timer
//!   (`Node::probe_due`, `run_due_probe`); an operator's `set-server active`
//!   runs it at once.
//! - **Replication.** The agent hosts the replication service once
//!   `mp_replication init` made the database, attaches the database to the
//!   `Node` (promote and demote follow the role), and reads its status in a task
//!   of its own at most once a second, for the status page, the role machine
//!   (replication switched on, off or failed) and the backlog and database-size
//!   alarms.
//! - **Config bundles** travel on the agents' link as a `PeerMessage::Bundle`
//!   announcement followed by a blob, kept by the receiver at
//!   `<state dir>/incoming/config-files.tar.gz` (0600, in a 0700 directory)
//!   through a synced temporary file, verified against the receiver's own
//!   `[bundle]` policy and answered with `PeerMessage::BundleKept`;
//!   `copy-config-files` reports "Sent" only on that answer.
//! - **Services.** The "always" services start before the boot decision and
//!   stop after the address is released; the active-only ones follow the role.
//! - **Alarms** live on an `AlarmBoard`: each has a kind that says which
//!   condition clears it, and cleared ones move to a bounded history.
//!
//! The status snapshot is published after every event and at least once a
//! second whatever the role.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tandem_core::{AtomicFile, AtomicOptions, FileMode, now_ms};
use tandem_peer::{Incoming, Link, LinkConfig, LinkEvent, Session, SiteKey};
use tandem_replication::ReplicationBackend;
use tandem_role::{Epoch, Event, FenceToken, Isolation, NodeId, ProbeOutcome, Role};
use tokio::io::BufReader;
use tokio::sync::{mpsc, watch};

use crate::alarms::{AlarmBoard, AlarmKind};
use crate::control::{self, ControlError, Request, Response};
use crate::shell::head;
use crate::{Node, NodeConfig, NodeError, PeerStatus, Report, StatusSnapshot};

/// What the agents say to each other on the peer link, in the link's envelope on
/// the `agent` channel ([`tandem_peer::envelope`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum PeerMessage {
    /// The sender holds the shared address with this epoch.
    Claim {
        /// The sender's node id.
        node: NodeId,
        /// The epoch of its claim.
        epoch: Epoch,
        /// The witness fencing token of the sender's lease, on a site with a witness.
        token: Option<FenceToken>,
    },
    /// The receiver's claim is older than the sender's epoch: the sender took
    /// over while the receiver was away. An active receiver steps down.
    Superseded {
        /// The sender's node id.
        node: NodeId,
        /// The sender's epoch.
        epoch: Epoch,
    },
    /// The sender released the shared address and is standby (a planned
    /// switchover): the receiver's next probe may be a single one.
    Released {
        /// The sender's node id.
        node: NodeId,
        /// The sender's epoch.
        epoch: Epoch,
        /// The steps of the sender's stand-down, for the report of the
        /// receiver's `failover switchover` (none from an agent of an earlier
        /// release; the receiver takes at most 32 of them).
        #[serde(default)]
        steps: Vec<crate::StepRecord>,
    },
    /// What the sender is (sent when the link comes up), for `failover check`.
    Facts(crate::check::PeerFacts),
    /// The next blob on the link is a config-file bundle (`copy-config-files`)
    /// of this many bytes; the receiver keeps it for `restore-config-files`.
    Bundle {
        /// Its size.
        bytes: u64,
        /// Which copy this is, repeated in the receiver's answer.
        id: u64,
    },
    /// The receiver's answer to a bundle: kept (whole, synced to disk and
    /// verified against its own `[bundle]` policy), or why not.
    BundleKept {
        /// The [`PeerMessage::Bundle`] it answers.
        id: u64,
        /// The bytes received.
        bytes: u64,
        /// Entries in the verified bundle.
        entries: u64,
        /// Why the bundle was not kept; `None` when it was.
        error: Option<String>,
    },
    /// `mp_replication switch-on` / `switch-off` ran on the sender: the receiver's
    /// agent does its node's part and answers with [`PeerMessage::Switched`].
    Switch {
        /// Which request this is, repeated in the answer.
        id: u64,
        /// What to do.
        action: crate::SwitchAction,
    },
    /// What the receiver of a [`PeerMessage::Switch`] did.
    Switched {
        /// The [`PeerMessage::Switch`] it answers.
        id: u64,
        /// Its node's outcome.
        outcome: crate::NodeOutcome,
    },
    /// `failover switchover` ran on the sender: the receiver, if active, stands
    /// down as `set-server standby` would, and its [`PeerMessage::Released`]
    /// tells the sender to take over at once.
    StandDown {
        /// Which request this is, repeated in a refusal.
        id: u64,
    },
    /// The receiver of a [`PeerMessage::StandDown`] did not release the shared
    /// address, and why.
    StandDownRefused {
        /// The [`PeerMessage::StandDown`] it answers.
        id: u64,
        /// Why, for the operator.
        reason: String,
    },
}

/// A `failover switchover` waiting for the peer to stand down.
struct Handover {
    /// The [`PeerMessage::StandDown`] sent.
    id: u64,
    /// The tool, which hears the outcome.
    stream: BufReader<tokio::net::UnixStream>,
    /// When the request went to the peer, on both clocks.
    asked: (tokio::time::Instant, std::time::SystemTime),
}

/// At most this many of the peer's steps go into a switchover's report, each
/// action cut to [`PEER_STEP_TEXT_MAX`] bytes: the peer's word is shown, not trusted
/// to be small.
const PEER_STEPS_MAX: usize = 32;
/// See [`PEER_STEPS_MAX`].
const PEER_STEP_TEXT_MAX: usize = 200;

/// How long `failover switchover` waits for the peer to stand down.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(10);

impl tandem_peer::Conversation for PeerMessage {
    const CHANNEL: tandem_peer::Channel = tandem_peer::Channel::new(1, "agent");
}

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The node cannot be opened (state, lock, sockets).
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The control socket cannot be bound.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The peer link cannot be started.
    #[error("cannot start the peer link: {0}")]
    Peer(#[from] tandem_peer::Error),
}

/// How long after a claim the agent announces the shared address once more:
/// past the one-second lock time of Linux neighbour tables, so that clients that
/// heard another host's announcement just before follow this one.
const REANNOUNCE_AFTER: Duration = Duration::from_millis(1500);

/// How often the agent reads the database's status and size (not every
/// heartbeat tick: the tick is 200 ms by default).
const DATABASE_WATCH_EVERY: Duration = Duration::from_secs(1);

/// How long a tool may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the agent of the node until `shutdown` completes. `status` receives a
/// fresh snapshot after every event, for the status page.
pub async fn run(
    config: NodeConfig,
    state_dir: &Path,
    key: SiteKey,
    status: watch::Sender<StatusSnapshot>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    if let Err(e) = config.failover.fits_probe(&config.probe) {
        tracing::warn!("[probe] does not fit [failover]: {e}");
    }
    let mut agent = Agent::start(config, state_dir, key, status).await?;
    let result = agent.serve(shutdown).await;
    let report = agent.node.stand_down().await;
    agent.stop_replicator().await;
    let always = agent.node.stop_always_services().await;
    log_report("stop always-running services", &always);
    tracing::info!(
        steps = report.steps.len(),
        "agent stopped; shared address released"
    );
    agent.publish().await;
    result
}

struct Agent {
    node: Node,
    started: Instant,
    status: watch::Sender<StatusSnapshot>,
    control: tokio::net::UnixListener,
    link: Link,
    session: Option<Session>,
    peer_claim: Option<Epoch>,
    alarms: AlarmBoard,
    /// When another host last answered for the shared address.
    conflict_seen: Option<Instant>,
    from_peer: mpsc::Receiver<PeerMessage>,
    to_agent: mpsc::Sender<PeerMessage>,
    state_dir: PathBuf,
    key: SiteKey,
    /// The replication service the agent hosts, once the database exists.
    replicator: Option<tokio::task::JoinHandle<()>>,
    /// Tells the replication service to stop.
    stop_replicator: watch::Sender<bool>,
    /// The replication status last read, for the status page.
    replication: Option<tandem_replication::Status>,
    /// What the peer said about itself.
    peer_facts: Option<crate::check::PeerFacts>,
    /// When the machine last heard that the peer is lost (or still lost).
    peer_lost_seen: Instant,
    /// When to announce the shared address again after a claim, soonest first.
    reannounce: std::collections::VecDeque<tokio::time::Instant>,
    /// When the database was last watched.
    database_watched: Option<Instant>,
    /// The replication status read under way, beside the event loop: reading
    /// it may wait on the peer's database (a PostgreSQL connection, up to its
    /// `connect_timeout_ms`), which must not hold up peer messages and tools.
    status_read:
        Option<tokio::task::JoinHandle<tandem_replication::Result<tandem_replication::Status>>>,
    /// When a tick last republished the status snapshot.
    published_tick: Instant,
    /// The peer's last frame before which a probe ahead of its loss ran.
    probed_ahead_of: Option<tokio::time::Instant>,
    /// The probe ahead of the peer's loss, while it runs.
    ahead: Option<tokio::task::JoinHandle<(ProbeOutcome, Isolation)>>,
    /// The watch of the shared address while active, beside the loop: the
    /// epoch it was started in, and its listen.
    conflict_watch: Option<(tandem_role::Epoch, tokio::task::JoinHandle<Watched>)>,
    /// The `copy-config-files` waiting for the peer's [`PeerMessage::BundleKept`].
    bundle_waiter: Option<(u64, tokio::sync::oneshot::Sender<BundleAnswer>)>,
    /// The id of the last bundle sent.
    bundle_sent: u64,
    /// The tools waiting for the peer's [`PeerMessage::Switched`], by request id.
    switch_waiters:
        std::collections::HashMap<u64, tokio::sync::oneshot::Sender<crate::NodeOutcome>>,
    /// The id of the last [`PeerMessage::Switch`] sent.
    switch_sent: u64,
    /// The `failover switchover` waiting for the peer to stand down.
    handover: Option<Handover>,
    /// What the witness lease keeper reports, on a site with a witness.
    lease_events: Option<mpsc::Receiver<tandem_witness::LeaseEvent>>,
    /// The fencing tokens for the replication service, on a site with a witness.
    fence: Option<watch::Sender<tandem_replication::Fence>>,
}

/// What the peer answered to a bundle: bytes, entries, why it was not kept.
type BundleAnswer = (u64, u64, Option<String>);

/// How long `copy-config-files` waits for the standby to keep a bundle after
/// the last byte went out (it syncs and verifies the whole file first).
const BUNDLE_ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// How long [`Agent::replication_status_now`] waits for the database before it
/// uses the latest status read (a database busy with a long transaction).
const STATUS_NOW_TIMEOUT: Duration = Duration::from_millis(300);

/// Why this standby's database cannot take over in a `failover switchover` now,
/// from its replication status read at the request: with replication on, it does not
/// apply the peer's changes (a PostgreSQL standby whose WAL receiver does not
/// stream, a SQLite apply that fails) or the two nodes' data has forked. The
/// switchover would stand the peer down first and only then meet the refusal of
/// this node's promotion, which leaves the site without an active node
/// (RELIABILITY.md, finding 27).
fn not_ready_to_take_over(status: &tandem_replication::Status) -> Option<String> {
    use tandem_replication::{LinkStatus, ReplicationState};
    if status.local.state != ReplicationState::Active || status.local.writable == Some(true) {
        return None;
    }
    let why = match (&status.local_detail, status.remote.status) {
        (Some(detail), _) => {
            format!("this node's database is not ready to take over ({detail})")
        }
        (None, LinkStatus::Diverged) => {
            "the two nodes' data has forked (replication status: Diverged)".to_owned()
        }
        (None, _) => return None,
    };
    Some(format!(
        "{why}; the peer would stand down and this node's promotion could be refused, leaving \
         no active node. Wait until `mp_replication status` shows the remote server Connected \
         and no `Local:` line, or switch the seed's way: `failover set-server standby` on the peer, \
         then `failover set-server active` here"
    ))
}

impl Agent {
    async fn start(
        config: NodeConfig,
        state_dir: &Path,
        key: SiteKey,
        status: watch::Sender<StatusSnapshot>,
    ) -> Result<Agent, AgentError> {
        let mut node = Node::open(config.clone(), state_dir)?;
        node.repeat_announcements_elsewhere();
        node.defer_delayed_probes();
        match crate::open_database(&config, state_dir).await {
            Ok(Some(db)) => node.attach_database(db),
            Ok(None) => tracing::info!(
                "no replicated database yet (`mp_replication init` makes it); roles switch without one"
            ),
            Err(e) => {
                tracing::warn!(error = %tandem_replication::chain(&e), "cannot open the replicated database")
            }
        }
        let control = control::bind(state_dir).await?;
        let failover = &config.failover;
        let port = peer_port(&config);
        let peer_config = tandem_peer::Config::new(key.clone(), config.node.id)
            .with_heartbeat_interval(Duration::from_millis(failover.heartbeat_ms))
            .with_missed_heartbeats(failover.missed_heartbeats)
            .with_liveness_priority(failover.realtime_priority);
        if failover.lock_memory {
            lock_memory();
        }
        let link = Link::start(LinkConfig::new(
            peer_config,
            SocketAddr::new(config.network.node_address.addr(), port),
            SocketAddr::new(config.network.peer_address, port),
            config.node.id.peer(),
        ))
        .await?;
        // The link first: if it cannot start, nothing was claimed or started.
        // The services of both roles (the seed's database, Tomcat, SIM) run
        // before the boot decision, so a standby has them too.
        let always = node.start_always_services().await;
        log_report("start always-running services", &always);
        // The keeper before the boot: on a site with a witness the boot claims
        // only with the leader key.
        let lease_events = start_witness(&config, &mut node).await;
        let report = node.boot().await;
        log_report("boot", &report);
        let (to_agent, from_peer) = mpsc::channel(64);
        let mut agent = Agent {
            node,
            started: Instant::now(),
            status,
            control,
            link,
            session: None,
            peer_claim: None,
            alarms: AlarmBoard::new(),
            conflict_seen: None,
            from_peer,
            to_agent,
            state_dir: state_dir.to_path_buf(),
            key,
            replicator: None,
            stop_replicator: watch::channel(false).0,
            replication: None,
            peer_facts: None,
            peer_lost_seen: Instant::now(),
            reannounce: std::collections::VecDeque::new(),
            database_watched: None,
            status_read: None,
            published_tick: Instant::now(),
            probed_ahead_of: None,
            ahead: None,
            conflict_watch: None,
            bundle_waiter: None,
            bundle_sent: 0,
            switch_waiters: std::collections::HashMap::new(),
            switch_sent: 0,
            handover: None,
            fence: lease_events
                .is_some()
                .then(|| watch::channel(tandem_replication::Fence::default()).0),
            lease_events,
        };
        agent.update_fence();
        agent.start_replicator().await;
        agent.after(&report).await;
        Ok(agent)
    }

    async fn serve(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
        tokio::pin!(shutdown);
        let heartbeat = Duration::from_millis(self.node.config().failover.heartbeat_ms);
        let mut watch = tokio::time::interval(heartbeat);
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let ahead_at = self.probe_ahead_at();
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = sleep_until_some(ahead_at) => self.probe_ahead(),
                probed = wait_some(self.ahead.as_mut()) => {
                    self.ahead = None;
                    self.keep_probe_ahead(probed);
                }
                watched = wait_some(self.conflict_watch.as_mut().map(|(_, task)| task)) => {
                    let started = self.conflict_watch.take().map(|(epoch, _)| epoch);
                    self.shared_address_watched(started, watched).await;
                }
                read = wait_some(self.status_read.as_mut()) => {
                    self.status_read = None;
                    match read {
                        Ok(read) => self.database_status_read(read).await,
                        Err(e) => tracing::warn!(error = %e, "the replication status read ended abnormally"),
                    }
                }
                event = self.link.next_event() => match event {
                    Some(LinkEvent::PeerUp(session)) => {
                        tracing::info!(peer = %session.peer_addr(), "peer up");
                        spawn_reader(
                            session.clone(),
                            self.to_agent.clone(),
                            tandem_bundle::incoming_path(&self.state_dir),
                            bundle_spec(self.node.config()),
                        );
                        self.send_facts(&session).await;
                        self.session = Some(session);
                        self.event(Event::PeerBack).await;
                    }
                    Some(LinkEvent::PeerLost(reason)) => {
                        tracing::warn!(%reason, "peer lost");
                        // Heard after the probe ahead began: that probe is not
                        // of this silence.
                        let heard = self.session.take().map(|s| s.last_heard());
                        let heard_since_probe = heard.is_some() && heard != self.probed_ahead_of;
                        self.peer_claim = None;
                        self.peer_facts = None;
                        // A copy waiting for the peer's answer hears at once
                        // that none will come.
                        self.bundle_waiter = None;
                        self.switch_waiters.clear();
                        self.peer_lost_seen = Instant::now();
                        // The loss's probe waits for one already under way.
                        if let Some(ahead) = self.ahead.take() {
                            self.keep_probe_ahead(ahead.await);
                        }
                        if heard_since_probe {
                            self.node.forget_probe_ahead();
                        }
                        let silent = heard.map(|at| at.elapsed());
                        self.event(Event::PeerLost { silent }).await;
                    }
                    Some(LinkEvent::DialFailed { error, retry_in, .. }) => {
                        tracing::debug!(%error, ?retry_in, "dialling the peer failed");
                    }
                    Some(_) => {}
                    None => return Ok(()),
                },
                Some(message) = self.from_peer.recv() => match message {
                    PeerMessage::Claim { node, epoch, token } => {
                        self.peer_claim = Some(epoch);
                        self.event(Event::PeerClaim { node, epoch, token }).await;
                    }
                    PeerMessage::Superseded { node, epoch } => {
                        self.event(Event::PeerSuperseded { node, epoch }).await;
                    }
                    PeerMessage::Facts(facts) => self.peer_facts = Some(facts),
                    PeerMessage::Released { node, epoch, steps } => {
                        tracing::info!(%node, %epoch, "the peer released the shared address");
                        self.peer_claim = None;
                        self.node.note_peer_released();
                        if let Some(handover) = self.handover.take() {
                            self.take_over(handover, steps).await;
                        }
                    }
                    PeerMessage::StandDown { id } => self.stand_down_for_peer(id).await,
                    PeerMessage::StandDownRefused { id, reason } => {
                        if let Some(mut handover) = self.handover.take_if(|h| h.id == id) {
                            let response = Response::Error(format!(
                                "the peer did not stand down: {reason}"
                            ));
                            let _ = control::write_response(&mut handover.stream, &response).await;
                        }
                    }
                    PeerMessage::Bundle { bytes, .. } => {
                        tracing::info!(bytes, "config-file bundle announced by the peer");
                    }
                    PeerMessage::Switch { id, action } => self.switch_for_peer(id, action),
                    PeerMessage::Switched { id, outcome } => {
                        tracing::info!(id, line = %outcome.line(), "the peer's replication switch");
                        if let Some(waiter) = self.switch_waiters.remove(&id) {
                            let _ = waiter.send(outcome);
                        }
                    }
                    PeerMessage::BundleKept { id, bytes, entries, error } => {
                        match &error {
                            None => tracing::info!(id, bytes, entries, "the peer kept the config-file bundle"),
                            Some(e) => tracing::warn!(id, error = %e, "the peer did not keep the config-file bundle"),
                        }
                        // Only the copy waiting for this answer hears it; an
                        // answer to a copy that was replaced is only logged.
                        // (An older peer answers without an id: 0.)
                        if self.bundle_waiter.as_ref().is_some_and(|(waits, _)| *waits == id || id == 0)
                            && let Some((_, waiter)) = self.bundle_waiter.take()
                        {
                            let _ = waiter.send((bytes, entries, error));
                        }
                    }
                },
                accepted = self.control.accept() => {
                    if let Ok((stream, _)) = accepted {
                        self.serve_tool(stream).await;
                    }
                }
                Some(lease) = recv_some(self.lease_events.as_mut()) => {
                    // What the keeper saw of the key before this node took it
                    // (queued while the claim ran) is stale: the role machine
                    // ignores a free key or an older holder while it holds one.
                    let me = self.node.state().node;
                    if let Some(event) = crate::node::lease_event(lease, me) {
                        self.event(event).await;
                    }
                }
                () = sleep_until_some(self.reannounce.front().copied()) => self.announce_again().await,
                () = sleep_until_some(self.handover.as_ref().map(|h| h.asked.0 + HANDOVER_TIMEOUT)) => {
                    if let Some(mut handover) = self.handover.take() {
                        let response = Response::Error(format!(
                            "the peer did not stand down within {} s; it may run an earlier \
                             release: run `failover set-server standby` there, then \
                             `failover set-server active` here",
                            HANDOVER_TIMEOUT.as_secs()
                        ));
                        let _ = control::write_response(&mut handover.stream, &response).await;
                    }
                }
                () = sleep_until_some(self.node.probe_due().map(tokio::time::Instant::from_std)) => {
                    let report = self.node.run_due_probe().await;
                    log_report("deferred probe", &report);
                    self.after(&report).await;
                }
                _ = watch.tick() => {
                    self.watch_lost_peer().await;
                    self.watch_shared_address();
                    self.watch_database().await;
                    self.clear_alarms().await;
                    // Whatever the role, at least once a second: a standby's
                    // page must not go stale between events (events publish
                    // at once, in `after`).
                    if self.published_tick.elapsed() >= DATABASE_WATCH_EVERY {
                        self.published_tick = Instant::now();
                        self.publish().await;
                    }
                }
            }
        }
    }

    /// Tells the peer what this node is, for its `failover check`.
    async fn send_facts(&self, session: &Session) {
        let facts = crate::check::PeerFacts::of(self.node.config(), self.key.fingerprint());
        if let Err(e) = session.send_message(&PeerMessage::Facts(facts)).await {
            tracing::warn!(error = %e, "could not send this node's facts to the peer");
        }
    }

    /// The prerequisites report with what the peer link knows, as a future that
    /// borrows nothing from the agent.
    fn check(&self) -> impl Future<Output = crate::check::CheckReport> + Send + 'static {
        let session = self.session.as_ref().filter(|s| !s.is_closed());
        let peer = crate::check::PeerView {
            facts: self.peer_facts.clone(),
            clock_offset_ms: session
                .and_then(Session::clock_offset)
                .map(|o| o.offset_micros as f64 / 1000.0),
            connected: session.is_some(),
            datagrams: session.is_some_and(Session::datagram_liveness),
            missing: None,
        };
        let database = crate::replication_settings(self.node.config(), &self.state_dir)
            .ok()
            .map(|s| s.database_path())
            .filter(|p| p.exists());
        let config = self.node.config().clone();
        let fingerprint = self.key.fingerprint();
        async move { crate::check::run_checks(&config, &fingerprint, &peer, database.as_deref()).await }
    }

    /// Starts the replication service in this process once the node has a
    /// replicated database (it carries `mp_replication`'s requests out and streams
    /// changes to the peer; see `tandem-replication`).
    async fn start_replicator(&mut self) {
        if self.replicator.is_some()
            || self.node.state().deployment != tandem_role::DeploymentMode::Failover
        {
            return;
        }
        let settings = match crate::replication_settings(self.node.config(), &self.state_dir) {
            Ok(settings) => settings,
            Err(e) => {
                tracing::warn!(error = %tandem_replication::chain(&e), "replication settings");
                return;
            }
        };
        let backend = match tandem_replication::Backend::open_existing(&settings).await {
            Ok(backend) => backend,
            Err(tandem_replication::Error::NotInitialized) => return,
            Err(e) => {
                tracing::warn!(error = %tandem_replication::chain(&e), "cannot open the replicated database");
                return;
            }
        };
        self.attach_database().await;
        let key = self.key.clone();
        self.stop_replicator.send_replace(false);
        let mut stop = self.stop_replicator.subscribe();
        // A standby applies nothing from a holder with an older token.
        let fence = self.fence.as_ref().map(watch::Sender::subscribe);
        let location = backend.location();
        self.replicator = Some(tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop.wait_for(|stop| *stop).await;
            };
            match backend.serve(key, fence, shutdown).await {
                Ok(()) => tracing::info!("replication service stopped"),
                Err(e) => {
                    tracing::warn!(error = %tandem_replication::chain(&e), "replication service stopped")
                }
            }
        }));
        tracing::info!(database = %location.display(), "replication service started");
    }

    /// Attaches the database to the node if it is not yet.
    async fn attach_database(&mut self) {
        if self.node.database().is_none()
            && let Ok(Some(db)) = crate::open_database(self.node.config(), &self.state_dir).await
        {
            self.node.attach_database(db);
            let report = self.node.promote_late_database().await;
            log_report("database made after the claim", &report);
            for step in report.steps.iter().filter(|s| s.error.is_some()) {
                let message = format!(
                    "the database made after this node became active is not writable: {}",
                    step.error.as_deref().unwrap_or_default()
                );
                if self.alarms.raise(AlarmKind::Fault, &message, now_ms()) {
                    self.node.run_hook(tandem_role::Hook::Fault, &message).await;
                }
            }
        }
    }

    /// Stops the hosted replication service.
    async fn stop_replicator(&mut self) {
        self.stop_replicator.send_replace(true);
        if let Some(task) = self.replicator.take() {
            let _ = task.await;
        }
    }

    /// Starts the replication service when the database appeared, and a read of
    /// its status beside the loop ([`database_status_read`](Self::database_status_read)
    /// takes the result).
    async fn watch_database(&mut self) {
        if self
            .database_watched
            .is_some_and(|at| at.elapsed() < DATABASE_WATCH_EVERY)
        {
            return;
        }
        self.database_watched = Some(Instant::now());
        if self.replicator.as_ref().is_some_and(|t| t.is_finished()) {
            self.replicator = None;
        }
        self.start_replicator().await;
        if self.status_read.is_some() {
            return; // The last read is still under way.
        }
        if let Some(db) = self.node.database() {
            let db = std::sync::Arc::clone(db);
            self.status_read = Some(tokio::spawn(async move { db.status().await }));
        }
    }

    /// Takes a replication status read beside the loop, tells the role machine
    /// about a switch, and raises or clears the database alarms.
    async fn database_status_read(
        &mut self,
        read: tandem_replication::Result<tandem_replication::Status>,
    ) {
        match read {
            Ok(status) => self.replication = Some(status),
            Err(e) => {
                // Keep the last status and its alarms: a busy database must not
                // make them clear and come back.
                tracing::debug!(error = %tandem_replication::chain(&e), "reading the replication status");
                return;
            }
        }
        self.tell_replication_state().await;
        let now = now_ms();
        let mut raised = Vec::new();
        let current: Vec<String> = self
            .replication
            .as_ref()
            .map(|s| s.alarms.clone())
            .unwrap_or_default();
        for message in &current {
            if self.alarms.raise(AlarmKind::Replication, message, now) {
                raised.push(message.clone());
            }
        }
        let failed = self.node.state().replication == tandem_role::Replication::Failed;
        self.alarms.clear_where(now, |a| {
            a.kind == AlarmKind::Replication
                && !current.contains(&a.message)
                && !(failed && a.message.starts_with("database replication failed"))
        });
        if let Some(limit_mb) = self.node.config().failover.database_size_alarm_mb {
            // Every file of the database (the WAL and -shm too), in MB like the limit.
            let settings = crate::replication_settings(self.node.config(), &self.state_dir);
            match settings
                .ok()
                .and_then(|s| tandem_replication::database_size_alarm(&s, limit_mb))
            {
                None => self.alarms.clear_kind(AlarmKind::DatabaseSize, now),
                Some(message) => {
                    if !self.alarms.has(AlarmKind::DatabaseSize)
                        && self.alarms.raise(AlarmKind::DatabaseSize, &message, now)
                    {
                        raised.push(message);
                    }
                }
            }
        }
        for message in raised {
            tracing::warn!(alarm = %message, "alarm");
            self.node.run_hook(tandem_role::Hook::Alarm, &message).await;
        }
    }

    /// Clears the alarms whose condition is over: the peer is back, a conflict
    /// is resolved (the link is up, only one node holds the shared address and
    /// nobody else has answered for it for a detection interval).
    async fn clear_alarms(&mut self) {
        let now = now_ms();
        let connected = self.session.as_ref().is_some_and(|s| !s.is_closed());
        let single = self.node.state().deployment == tandem_role::DeploymentMode::Single;
        if !connected && !single {
            return;
        }
        // A single server has no peer to lose.
        self.alarms.clear_kind(AlarmKind::PeerLost, now);
        self.alarms.clear_kind(AlarmKind::CutOff, now);
        if self.alarms.has(AlarmKind::Conflict) {
            let failover = &self.node.config().failover;
            let detection =
                Duration::from_millis(failover.heartbeat_ms) * failover.missed_heartbeats.max(1);
            let quiet = self
                .conflict_seen
                .is_none_or(|at| at.elapsed() >= detection);
            let both = self.peer_claim.is_some() && self.node.holds_shared_address().await;
            if quiet && !both {
                self.alarms.clear_kind(AlarmKind::Conflict, now);
            }
        }
    }

    /// Tells the role machine when replication was switched on or off (by
    /// `mp_replication` through the replication service) or failed, so that
    /// `failover status`, the state file and the status page agree with
    /// `mp_replication status`.
    async fn tell_replication_state(&mut self) {
        use tandem_replication::ReplicationState as S;
        use tandem_role::Replication;
        let Some(status) = &self.replication else {
            return;
        };
        if self.node.state().deployment != tandem_role::DeploymentMode::Failover {
            return; // A single server's machine keeps replication off.
        }
        let now = match status.local.state {
            S::Active => Replication::On,
            S::Off | S::Initialized => Replication::Off,
            S::Suspended | S::Failed => Replication::Failed,
            // Syncing, unknown: no change until the outcome is known.
            _ => return,
        };
        if now == self.node.state().replication {
            return;
        }
        let event = match now {
            Replication::On => Event::ReplicationOn,
            Replication::Off => Event::ReplicationOff,
            Replication::Failed => Event::ReplicationFailed {
                reason: status
                    .alarms
                    .first()
                    .cloned()
                    .unwrap_or_else(|| format!("replication is {}", status.local.state)),
            },
        };
        self.event(event).await;
    }

    /// Feeds an event to the node and handles what follows.
    async fn event(&mut self, event: Event) {
        let what = event.to_string();
        let report = self.node.handle(event).await;
        log_report(&what, &report);
        self.after(&report).await;
    }

    /// Tells the replication service the tokens the role machine knows now.
    fn update_fence(&self) {
        if let Some(fence) = &self.fence {
            let state = self.node.state();
            // An active node serving in failsafe (its lease lost, its peer in
            // sight) still speaks for the token it last held: nobody newer can
            // have taken over meanwhile without its peer hearing of it.
            let mine = match (self.node.lease_token(), state.role) {
                (Some(token), _) => Some(token.get()),
                (None, Role::Active) => state.token.map(tandem_role::FenceToken::get),
                (None, Role::Standby) => None,
            };
            let floor = state.token.map_or(0, tandem_role::FenceToken::get);
            fence.send_if_modified(|current| {
                let next = tandem_replication::Fence::new(mine, floor);
                let changed = *current != next;
                *current = next;
                changed
            });
        }
    }

    /// Sends the report's claims to the peer, records alarms, refreshes the status.
    async fn after(&mut self, report: &Report) {
        let me = self.node.state().node;
        self.update_fence();
        if !report.claims.is_empty() && self.node.state().role == Role::Active {
            // The announce step sent the first round: the others follow
            // `announce_interval_ms` apart, and one more after the neighbour
            // tables' lock time.
            let failover = &self.node.config().failover;
            let now = tokio::time::Instant::now();
            let every = Duration::from_millis(failover.announce_interval_ms);
            self.reannounce = (1..failover.announce_count.max(1))
                .map(|round| now + every * round)
                .chain(std::iter::once(now + REANNOUNCE_AFTER))
                .collect();
        }
        if released_address(report)
            && self.node.state().role == Role::Standby
            && let Some(session) = &self.session
        {
            let message = PeerMessage::Released {
                node: me,
                epoch: self.node.state().epoch,
                steps: report.steps.clone(),
            };
            if let Err(e) = session.send_message(&message).await {
                tracing::warn!(error = %e, "could not tell the peer about the release");
            }
        }
        let token = self.node.lease_token();
        let claims = report.claims.iter().map(|&epoch| {
            (
                "claim",
                epoch,
                PeerMessage::Claim {
                    node: me,
                    epoch,
                    token,
                },
            )
        });
        let superseded = report.superseded.iter().map(|&epoch| {
            (
                "superseded claim",
                epoch,
                PeerMessage::Superseded { node: me, epoch },
            )
        });
        for (what, epoch, message) in claims.chain(superseded) {
            match &self.session {
                Some(session) => {
                    if let Err(e) = session.send_message(&message).await {
                        tracing::warn!(error = %e, "could not send the {what} to the peer");
                    }
                }
                None => {
                    tracing::info!(%epoch, "no peer link: the {what} is not sent (a claim goes again when the peer is back)")
                }
            }
        }
        if self.node.state().deployment == tandem_role::DeploymentMode::Single
            && self.replicator.is_some()
        {
            // A single server replicates with nobody: the service stops, and
            // the database stops capturing changes nobody will fetch (the
            // service enforced the changelog's bound).
            tracing::info!("single-server deployment: stopping the replication service");
            if let Some(db) = self.node.database()
                && let Err(e) = db.switch_off(&tandem_replication::Quiet).await
            {
                tracing::warn!(error = %tandem_replication::chain(&e), "switching replication off");
            }
            self.stop_replicator().await;
        }
        let now = now_ms();
        for message in report.alarms.iter().chain(&report.faults) {
            // The node ran the hooks already.
            self.alarms
                .raise(AlarmKind::of_notice(message), message, now);
        }
        self.publish().await;
    }

    /// The next round of announcements after a claim (the node checks that it
    /// is still active and holds the address).
    async fn announce_again(&mut self) {
        self.reannounce.pop_front();
        let report = self.node.reannounce().await;
        log_report("reannounce", &report);
    }

    /// When a standby that fails over on its own should probe ahead of the
    /// peer's loss: early enough that the probe ends half a heartbeat before the
    /// loss is declared (room for the isolation check and for this loop's own
    /// timer, which runs at normal priority: the loss itself is declared to the
    /// microsecond by the link's liveness thread), but not before the peer has
    /// been quiet for [`crate::AHEAD_QUIET`] heartbeat intervals. `None` when no
    /// such probe is due.
    fn probe_ahead_at(&self) -> Option<tokio::time::Instant> {
        let failover = &self.node.config().failover;
        let state = self.node.state();
        if !failover.auto_failover
            || self.ahead.is_some()
            || state.deployment != tandem_role::DeploymentMode::Failover
            || state.role != Role::Standby
            || state.standby_hold
        {
            return None;
        }
        let session = self.session.as_ref().filter(|s| !s.is_closed())?;
        let heard = session.last_heard();
        if self.probed_ahead_of == Some(heard) {
            return None;
        }
        let silence = session.silence_limit();
        let interval = silence / failover.missed_heartbeats.max(1);
        let quiet = silence
            .saturating_sub(self.node.probe_duration())
            .saturating_sub(interval / 2)
            .max(interval.mul_f64(crate::AHEAD_QUIET));
        (quiet < silence).then(|| heard + quiet)
    }

    /// Starts the probe ahead of the peer's loss, if it is still due (no frame
    /// arrived since it was scheduled). It runs beside the agent's loop.
    fn probe_ahead(&mut self) {
        let Some(at) = self.probe_ahead_at() else {
            return;
        };
        if tokio::time::Instant::now() < at {
            return;
        }
        self.probed_ahead_of = self.session.as_ref().map(Session::last_heard);
        self.ahead = Some(tokio::spawn(self.node.probe_ahead()));
    }

    fn keep_probe_ahead(
        &mut self,
        probed: Result<(ProbeOutcome, Isolation), tokio::task::JoinError>,
    ) {
        match probed {
            Ok((probe, isolation)) => {
                let kept = self.node.keep_probe_ahead(&probe, isolation);
                tracing::info!(%probe, %isolation, kept, "the peer is quiet: probed ahead of its loss");
            }
            Err(e) => tracing::warn!(error = %e, "the probe ahead of the peer's loss failed"),
        }
    }

    /// While the peer stays lost, tells the machine again every detection
    /// interval, so that with automatic failover a standby takes over from an
    /// active node that died after the link was already down.
    async fn watch_lost_peer(&mut self) {
        let failover = &self.node.config().failover;
        if !failover.auto_failover || self.session.as_ref().is_some_and(|s| !s.is_closed()) {
            return;
        }
        let interval =
            Duration::from_millis(failover.heartbeat_ms) * failover.missed_heartbeats.max(1);
        if self.peer_lost_seen.elapsed() >= interval {
            self.peer_lost_seen = Instant::now();
            self.event(Event::PeerStillLost).await;
        }
    }

    /// While active, another MAC answering ARP for the shared address is a
    /// conflict. Each tick starts a listen of one probe timeout beside the loop
    /// (none while one runs), so the loop goes on serving peer messages and
    /// tools meanwhile. (It once ran inside the tick because, beside the loop,
    /// a node that took over after a cut met the old holder's answer before
    /// the peer link was back and yielded; the role machine now keeps the
    /// address through that first conflict: `tandem-role`'s takeover rule.)
    fn watch_shared_address(&mut self) {
        let state = self.node.state();
        if state.role != Role::Active || self.conflict_watch.is_some() {
            return;
        }
        let epoch = state.epoch;
        self.conflict_watch = Some((epoch, tokio::spawn(self.node.conflicting_macs())));
    }

    /// A listen for other hosts answering for the shared address ended. Its
    /// answer counts only if this node is still active in the epoch the listen
    /// began in: a node that released and claimed again meanwhile listens anew.
    async fn shared_address_watched(
        &mut self,
        started: Option<tandem_role::Epoch>,
        watched: Result<Watched, tokio::task::JoinError>,
    ) {
        let state = self.node.state();
        if state.role != Role::Active || started != Some(state.epoch) {
            return;
        }
        match watched {
            Ok(Ok(macs)) => {
                if let Some(mac) = macs.first() {
                    self.conflict_seen = Some(Instant::now());
                    tracing::warn!(%mac, "another host answers for the shared address");
                    self.event(Event::AddressConflict { mac: *mac }).await;
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot watch the shared address"),
            Err(e) => {
                tracing::warn!(error = %e, "the watch of the shared address ended abnormally")
            }
        }
    }

    async fn serve_tool(&mut self, stream: tokio::net::UnixStream) {
        let mut stream = BufReader::new(stream);
        let request =
            match tokio::time::timeout(REQUEST_TIMEOUT, control::read_request(&mut stream)).await {
                Ok(Ok(request)) => request,
                Ok(Err(e)) => {
                    let _ = control::write_response(&mut stream, &Response::Error(e)).await;
                    return;
                }
                Err(_) => return,
            };
        tracing::info!(?request, "request from a tool");
        let response = match request {
            Request::SetServer(role) => {
                let report = self.node.set_server(role).await;
                self.operator_done(&report);
                self.after(&report).await;
                Response::Report(report)
            }
            Request::SetDeployment(mode) => {
                let report = self.node.handle(Event::SetDeployment(mode)).await;
                self.operator_done(&report);
                self.after(&report).await;
                Response::Report(report)
            }
            Request::Switchover => {
                self.ask_handover(stream).await;
                return;
            }
            Request::Status => Response::Status(Box::new(self.snapshot().await)),
            Request::Standing => Response::Standing(self.standing()),
            Request::Check => {
                // DNS look-ups may take seconds: answer from a task of its own.
                let check = self.check();
                tokio::spawn(async move {
                    let response = Response::Check(check.await);
                    if let Err(e) = control::write_response(&mut stream, &response).await {
                        tracing::warn!(error = %e, "could not answer the tool");
                    }
                });
                return;
            }
            Request::PeerSwitch(action) => {
                let Some(session) = self.session.clone().filter(|s| !s.is_closed()) else {
                    let response = Response::Error(format!(
                        "the peer link to {} is down, so its agent cannot be asked",
                        self.node.config().network.peer_address
                    ));
                    let _ = control::write_response(&mut stream, &response).await;
                    return;
                };
                self.switch_sent += 1;
                let id = self.switch_sent;
                let (waiter, answer) = tokio::sync::oneshot::channel();
                self.switch_waiters.retain(|_, w| !w.is_closed());
                self.switch_waiters.insert(id, waiter);
                tokio::spawn(async move {
                    let response = ask_peer_switch(&session, id, action, answer).await;
                    if let Err(e) = control::write_response(&mut stream, &response).await {
                        tracing::warn!(error = %e, "could not answer the tool");
                    }
                });
                return;
            }
            Request::SendBundle { path } => {
                let state = self.node.state();
                if state.deployment != tandem_role::DeploymentMode::Failover
                    || state.role != Role::Active
                {
                    let response = Response::Error(format!(
                        "this node is the {} of a {} deployment: config files go from the \
                         active node to the standby only; run copy-config-files on the active node",
                        state.role, state.deployment
                    ));
                    let _ = control::write_response(&mut stream, &response).await;
                    return;
                }
                // A large bundle must not stall the agent: send it on a task of its own.
                let Some(session) = self.session.clone().filter(|s| !s.is_closed()) else {
                    let response = Response::Error(format!(
                        "the peer ({}) is not connected: start its agent, check `failover status`, or copy {} by hand",
                        self.node.config().network.peer_address,
                        path.display()
                    ));
                    let _ = control::write_response(&mut stream, &response).await;
                    return;
                };
                if self
                    .bundle_waiter
                    .as_ref()
                    .is_some_and(|(_, waiter)| !waiter.is_closed())
                {
                    let response = Response::Error(
                        "another copy-config-files is still waiting for the peer to keep its \
                         bundle; run it again once that one has finished"
                            .to_string(),
                    );
                    let _ = control::write_response(&mut stream, &response).await;
                    return;
                }
                let (waiter, answer) = tokio::sync::oneshot::channel();
                self.bundle_sent += 1;
                let id = self.bundle_sent;
                self.bundle_waiter = Some((id, waiter));
                tokio::spawn(async move {
                    let response = send_bundle(&session, &path, id, answer).await;
                    if let Err(e) = control::write_response(&mut stream, &response).await {
                        tracing::warn!(error = %e, "could not answer the tool");
                    }
                });
                return;
            }
        };
        if let Err(e) = control::write_response(&mut stream, &response).await {
            tracing::warn!(error = %e, "could not answer the tool");
        }
    }

    /// Does this node's part of a switch the peer's tool asked for, on a task of its
    /// own (a standby's switch-on waits for its stream), and answers the peer.
    fn switch_for_peer(&self, id: u64, action: crate::SwitchAction) {
        let Some(session) = self.session.clone() else {
            return;
        };
        let (config, state_dir) = (self.node.config().clone(), self.state_dir.clone());
        tracing::info!(id, ?action, "the peer asks for a replication switch here");
        tokio::spawn(async move {
            let outcome = crate::site_switch::peer_part(&config, &state_dir, action).await;
            tracing::info!(id, line = %outcome.line(), "replication switch for the peer");
            let answer = PeerMessage::Switched { id, outcome };
            if let Err(e) = session.send_message(&answer).await {
                tracing::warn!(error = %e, "could not answer the peer's switch");
            }
        });
    }

    /// An operator's command that succeeded clears the faults of earlier steps.
    /// `failover switchover` on this node: asks the active peer to stand down;
    /// this node takes over when the peer says it released
    /// ([`take_over`](Self::take_over)). Refused, with what to do instead, when
    /// there is nothing to hand over.
    async fn ask_handover(&mut self, mut stream: BufReader<tokio::net::UnixStream>) {
        let state = self.node.state();
        let refusal = if state.deployment != tandem_role::DeploymentMode::Failover {
            Some("this node is not in a failover deployment".to_owned())
        } else if state.role == Role::Active {
            Some("this node is already active".to_owned())
        } else if self.handover.is_some() {
            Some("another switchover is waiting for the peer".to_owned())
        } else {
            self.replication_status_now()
                .await
                .as_ref()
                .and_then(not_ready_to_take_over)
        };
        let session = self.session.clone().filter(|s| !s.is_closed());
        let refusal = refusal.or_else(|| {
            session.is_none().then(|| {
                format!(
                    "the peer link to {} is down, so its agent cannot hand over; if the peer is \
                     down, run `failover set-server active`",
                    self.node.config().network.peer_address
                )
            })
        });
        if let (None, Some(session)) = (refusal.as_ref(), session) {
            self.switch_sent += 1;
            let id = self.switch_sent;
            let asked = (tokio::time::Instant::now(), std::time::SystemTime::now());
            match session.send_message(&PeerMessage::StandDown { id }).await {
                Ok(()) => {
                    tracing::info!(id, "asked the peer to stand down for a switchover");
                    self.handover = Some(Handover { id, stream, asked });
                    return;
                }
                Err(e) => {
                    let response =
                        Response::Error(format!("could not ask the peer to stand down: {e}"));
                    let _ = control::write_response(&mut stream, &response).await;
                    return;
                }
            }
        }
        let reason = refusal.unwrap_or_default();
        let _ = control::write_response(&mut stream, &Response::Error(reason)).await;
    }

    /// The replication status for a decision that cannot wait for the next watch
    /// of the database (up to [`DATABASE_WATCH_EVERY`] old): read now, within
    /// [`STATUS_NOW_TIMEOUT`], else the latest one read.
    async fn replication_status_now(&self) -> Option<tandem_replication::Status> {
        if let Some(db) = self.node.database() {
            match tokio::time::timeout(STATUS_NOW_TIMEOUT, db.status()).await {
                Ok(Ok(status)) => return Some(status),
                Ok(Err(e)) => tracing::debug!(
                    error = %tandem_replication::chain(&e),
                    "reading the replication status now; using the latest one"
                ),
                Err(_) => tracing::debug!(
                    "the replication status took too long to read; using the latest one"
                ),
            }
        }
        self.replication.clone()
    }

    /// The peer released for this node's `failover switchover`: take over as
    /// `set-server active` would (one quick probe: the peer's word covers the
    /// peer) and answer the tool, with the wait for the peer as the first step
    /// and the peer's own steps after it (`peer: <action>`, on the wall clock,
    /// so both nodes' steps line up).
    async fn take_over(&mut self, mut handover: Handover, peer_steps: Vec<crate::StepRecord>) {
        let asked = handover.asked;
        let waited = asked.0.elapsed();
        let mut report = self.node.set_server(Role::Active).await;
        let first = std::iter::once(crate::StepRecord::new(
            "peer-stood-down".to_owned(),
            asked.1,
            waited,
        ));
        let peer = peer_steps.into_iter().take(PEER_STEPS_MAX).map(|mut step| {
            step.action = format!("peer: {}", head(&step.action, PEER_STEP_TEXT_MAX));
            step.error = step.error.map(|e| head(&e, PEER_STEP_TEXT_MAX));
            step
        });
        let ours = std::mem::take(&mut report.steps);
        report.steps = first.chain(peer).chain(ours).collect();
        self.operator_done(&report);
        self.after(&report).await;
        let _ = control::write_response(&mut handover.stream, &Response::Report(report)).await;
    }

    /// The peer's `failover switchover`: stand down as `set-server standby`
    /// would; [`after`](Self::after) tells the peer of the release. Anything
    /// else is answered with [`PeerMessage::StandDownRefused`].
    async fn stand_down_for_peer(&mut self, id: u64) {
        let was_active = self.node.state().role == Role::Active;
        let report = self.node.set_server(Role::Standby).await;
        log_report("stand down for the peer's switchover", &report);
        self.operator_done(&report);
        self.after(&report).await;
        if released_address(&report) && self.node.state().role == Role::Standby {
            return;
        }
        let reason = match (&report.refused, was_active) {
            (Some(refusal), _) => refusal.to_string(),
            (None, false) => "it is not active: run `failover set-server active`".to_owned(),
            (None, true) => report
                .steps
                .iter()
                .find_map(|s| s.error.clone())
                .unwrap_or_else(|| "it did not release the shared address".to_owned()),
        };
        if let Some(session) = &self.session
            && let Err(e) = session
                .send_message(&PeerMessage::StandDownRefused { id, reason })
                .await
        {
            tracing::warn!(error = %e, "could not answer the peer's switchover");
        }
    }

    fn operator_done(&mut self, report: &Report) {
        if report.succeeded() {
            self.alarms.clear_kind(AlarmKind::Fault, now_ms());
        }
    }

    /// Where this node stands, for an application's [`crate::DegradeGuard`].
    fn standing(&self) -> control::Standing {
        let state = self.node.state();
        let view = self.node.witness_view();
        control::Standing {
            role: state.role,
            epoch: state.epoch,
            witness: view.is_some(),
            token: self.node.lease_token(),
            lease_valid_ms: view.and_then(|v| v.valid_for_ms()),
        }
    }

    async fn snapshot(&self) -> StatusSnapshot {
        let config = self.node.config();
        StatusSnapshot {
            state: self.node.state().clone(),
            hostname: config.node.hostname.clone(),
            node_address: config.network.node_address.to_string(),
            shared_address: config.network.shared_address.to_string(),
            holds_shared_address: self.node.holds_shared_address().await,
            peer: PeerStatus {
                address: config.network.peer_address.to_string(),
                connected: self.session.as_ref().is_some_and(|s| !s.is_closed()),
                claim_epoch: self.peer_claim.map(Epoch::get),
                clock_offset_ms: self
                    .session
                    .as_ref()
                    .and_then(Session::clock_offset)
                    .map(|o| o.offset_micros as f64 / 1000.0),
                datagrams: self
                    .session
                    .as_ref()
                    .is_some_and(Session::datagram_liveness),
            },
            replication: self.replication.as_ref().map(crate::replication_status),
            alarms: self.alarms.active().to_vec(),
            alarm_history: self.alarms.history(),
            uptime_seconds: self.started.elapsed().as_secs(),
            taken_ms: now_ms(),
            witness: self
                .node
                .witness_view()
                .map(|v| crate::status::WitnessStatus::of(&v)),
        }
    }

    async fn publish(&self) {
        let snapshot = self.snapshot().await;
        self.status.send_replace(snapshot);
    }
}

/// Sends a bundle file to the peer: the announcement, then the file as a blob,
/// then waits for the peer to say it kept it (synced and verified).
async fn send_bundle(
    session: &Session,
    path: &Path,
    id: u64,
    answer: tokio::sync::oneshot::Receiver<BundleAnswer>,
) -> Response {
    let file = match tokio::fs::File::open(path).await {
        Ok(file) => file,
        Err(e) => return Response::Error(format!("cannot open {}: {e}", path.display())),
    };
    let bytes = match file.metadata().await {
        Ok(meta) => meta.len(),
        Err(e) => return Response::Error(format!("cannot read {}: {e}", path.display())),
    };
    if let Err(e) = session
        .send_message(&PeerMessage::Bundle { bytes, id })
        .await
    {
        return Response::Error(format!("the peer link failed: {e}"));
    }
    let sent = match session.send_blob(tokio::io::BufReader::new(file)).await {
        Ok(sent) => sent,
        Err(e) => {
            return Response::Error(format!(
                "sending {} to the peer failed: {e}; run copy-config-files again",
                path.display()
            ));
        }
    };
    tracing::info!(bytes = sent, path = %path.display(), "bundle sent; waiting for the peer to keep it");
    match tokio::time::timeout(BUNDLE_ANSWER_TIMEOUT, answer).await {
        Ok(Ok((bytes, _, None))) if bytes == sent => Response::Sent {
            bytes: sent,
            peer: session.peer_addr().to_string(),
        },
        Ok(Ok((bytes, _, None))) => Response::Error(format!(
            "the peer kept {bytes} bytes of the {sent} sent; run copy-config-files again"
        )),
        Ok(Ok((_, _, Some(why)))) => {
            Response::Error(format!("the peer did not keep the bundle: {why}"))
        }
        Ok(Err(_)) => Response::Error(
            "another copy-config-files replaced this one before the peer answered".to_string(),
        ),
        Err(_) => Response::Error(format!(
            "the peer did not say within {} s whether it kept the bundle; check its agent's \
             log and `failover status` there, then run copy-config-files again",
            BUNDLE_ANSWER_TIMEOUT.as_secs()
        )),
    }
}

/// Asks the peer's agent to do its part of a switch and waits for its answer (the
/// peer's own switch may wait as long as the action's time limit).
async fn ask_peer_switch(
    session: &Session,
    id: u64,
    action: crate::SwitchAction,
    answer: tokio::sync::oneshot::Receiver<crate::NodeOutcome>,
) -> Response {
    if let Err(e) = session
        .send_message(&PeerMessage::Switch { id, action })
        .await
    {
        return Response::Error(format!("the peer link failed: {e}"));
    }
    let limit = match action {
        crate::SwitchAction::On { timeout_ms } => Duration::from_millis(timeout_ms),
        _ => Duration::ZERO,
    }
    .saturating_add(SWITCH_ANSWER_MARGIN);
    match tokio::time::timeout(limit, answer).await {
        Ok(Ok(outcome)) => Response::PeerSwitched(outcome),
        Ok(Err(_)) => Response::Error(
            "the peer link went down before the peer's agent answered; its part may or may \
             not have run (see `mp_replication status` there)"
                .to_owned(),
        ),
        Err(_) => Response::Error(format!(
            "the peer's agent did not answer within {} s; see `mp_replication status` there",
            limit.as_secs()
        )),
    }
}

/// How long the agent waits for the peer's switch beyond the switch's own limit.
const SWITCH_ANSWER_MARGIN: Duration = Duration::from_secs(20);

/// Forwards the peer's messages to the agent until the session ends, and keeps a
/// bundle the peer sends at `incoming` (written to a temporary file, synced and
/// renamed, so a cut link never leaves half a bundle there). A bundle must have
/// the size announced before it, at most `max_bundle`.
fn spawn_reader(
    session: Session,
    to_agent: mpsc::Sender<PeerMessage>,
    incoming: PathBuf,
    spec: tandem_bundle::BundleSpec,
) {
    let max_bundle = max_bundle_bytes(&spec);
    tokio::spawn(async move {
        let mut expect_bundle = None;
        loop {
            match session.recv().await {
                Ok(Incoming::Message(bytes)) => match tandem_peer::open::<PeerMessage>(&bytes) {
                    Ok(message) => {
                        expect_bundle = match message {
                            PeerMessage::Bundle { bytes, id } => Some((bytes, id)),
                            _ => None,
                        };
                        if to_agent.send(message).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "unreadable message from the peer"),
                },
                Ok(Incoming::Blob(mut blob)) if expect_bundle.is_some() => {
                    let (announced, id) = expect_bundle.take().unwrap_or((0, 0));
                    let answer =
                        keep_bundle(&mut blob, &incoming, (announced, id), max_bundle, &spec).await;
                    match &answer {
                        PeerMessage::BundleKept {
                            bytes,
                            entries,
                            error: None,
                            ..
                        } => tracing::info!(
                            bytes,
                            entries,
                            path = %incoming.display(),
                            "config-file bundle kept and verified; run `failover restore-config-files`"
                        ),
                        PeerMessage::BundleKept { error: Some(e), .. } => {
                            tracing::warn!(error = %e, "the config-file bundle was not kept")
                        }
                        _ => {}
                    }
                    if let Err(e) = session.send_message(&answer).await {
                        tracing::warn!(error = %e, "could not tell the peer about its bundle");
                    }
                }
                Ok(_) => tracing::warn!("unexpected blob from the peer; dropped"),
                Err(_) => return,
            }
        }
    });
}

/// Receives a bundle, then verifies the kept file against this node's own
/// `[bundle]` policy (a bundle this node would refuse to restore is removed
/// again), and says which in the answer for the sender.
async fn keep_bundle(
    blob: &mut tandem_peer::BlobReader,
    incoming: &Path,
    (announced, id): (u64, u64),
    max: u64,
    spec: &tandem_bundle::BundleSpec,
) -> PeerMessage {
    match receive_bundle(blob, incoming, announced, max, Some(spec)).await {
        Ok((bytes, entries)) => PeerMessage::BundleKept {
            id,
            bytes,
            entries,
            error: None,
        },
        Err(e) => PeerMessage::BundleKept {
            id,
            bytes: 0,
            entries: 0,
            error: Some(format!("it was not kept: {e}")),
        },
    }
}

/// Keeps a bundle of `announced` bytes: refused before anything is written past
/// `max`, refused (and the partial file removed) if it is longer or shorter.
async fn receive_bundle(
    blob: &mut tandem_peer::BlobReader,
    path: &Path,
    announced: u64,
    max: u64,
    verify: Option<&tandem_bundle::BundleSpec>,
) -> std::io::Result<(u64, u64)> {
    use tokio::io::AsyncWriteExt;
    if announced > max {
        return Err(std::io::Error::other(format!(
            "the peer announced a bundle of {announced} bytes, more than the {max} bytes \
             [bundle.limits] max_total_bytes allows; refused"
        )));
    }
    // A bundle carries secrets (the site key's enrollment files): owner only. It is
    // written beside its place (tandem-core's AtomicFile) and renamed over the
    // bundle kept last only once whole and checked; dropped on any error, the
    // temporary file is removed.
    let options = AtomicOptions {
        file: FileMode::Masked(0o600),
        create_dir: Some(0o700),
    };
    let target = path.to_path_buf();
    let atomic = tokio::task::spawn_blocking(move || AtomicFile::create(&target, &options))
        .await
        .map_err(std::io::Error::other)?
        .map_err(|e| e.source)?;
    let mut file = tokio::fs::File::from_std(atomic.try_clone_file()?);
    let kept = async {
        let bytes = blob
            .copy_to_limited(&mut file, announced)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        if bytes != announced {
            return Err(std::io::Error::other(format!(
                "the peer sent {bytes} bytes of a bundle announced as {announced}; refused"
            )));
        }
        file.flush().await?;
        file.sync_all().await?;
        Ok(bytes)
    }
    .await;
    drop(file);
    let bytes = kept?;
    // Checked before it replaces the bundle kept last: a refused one never
    // takes the place of a good one.
    let mut entries = 0;
    if let Some(spec) = verify {
        let (file, spec) = (atomic.temp_path().to_path_buf(), spec.clone());
        let verified =
            tokio::task::spawn_blocking(move || tandem_bundle::verify_file(&file, &spec)).await;
        match verified {
            Ok(Ok(manifest)) => entries = manifest.entries.len() as u64,
            Ok(Err(e)) => {
                return Err(std::io::Error::other(format!(
                    "it does not pass this node's checks: {e}"
                )));
            }
            Err(e) => {
                return Err(std::io::Error::other(format!("verifying it failed: {e}")));
            }
        }
    }
    tokio::task::spawn_blocking(move || atomic.commit())
        .await
        .map_err(std::io::Error::other)?
        .map_err(|e| e.source)?;
    Ok((bytes, entries))
}

/// The largest bundle file the agent takes from the peer: what the receiving
/// node's `[bundle.limits] max_total_bytes` lets a restore unpack (compression
/// never makes a bundle much larger), with room for gzip's framing.
fn max_bundle_bytes(spec: &tandem_bundle::BundleSpec) -> u64 {
    let total = spec.limits.max_total_bytes;
    total.saturating_add(total / 64).saturating_add(1 << 20)
}

/// This node's `[bundle]` policy (defaults when the table is missing; the node
/// config checked it when it was loaded).
fn bundle_spec(config: &NodeConfig) -> tandem_bundle::BundleSpec {
    config.bundle.clone().unwrap_or_default()
}

/// What a listen for other hosts answering for the shared address found: their
/// MAC addresses, or why it could not listen.
type Watched = Result<Vec<tandem_role::MacAddr>, String>;

/// Waits for the task, or forever without one.
async fn wait_some<T>(
    task: Option<&mut tokio::task::JoinHandle<T>>,
) -> Result<T, tokio::task::JoinError> {
    match task {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}

/// Whether a report released the shared address.
fn released_address(report: &Report) -> bool {
    report
        .steps
        .iter()
        .any(|s| s.action == "release-shared-address" && s.error.is_none())
}

/// The next message of `rx`, or never when there is no receiver (or it closed).
async fn recv_some<T>(rx: Option<&mut mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => match rx.recv().await {
            Some(value) => Some(value),
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Starts the witness lease keeper on a site with a witness and gives it to the
/// node; its events go to the agent. A keeper that cannot start (the cluster's
/// authentication does not answer) leaves the node without one: it stays
/// standby (every acquisition answers that the witness is unreachable).
async fn start_witness(
    config: &NodeConfig,
    node: &mut Node,
) -> Option<mpsc::Receiver<tandem_witness::LeaseEvent>> {
    let witness = config.witness.clone()?;
    match tandem_witness::Keeper::start(witness, config.node.site, config.node.id).await {
        Ok((keeper, events)) => {
            node.attach_witness(keeper);
            tracing::info!("witness lease keeper started");
            Some(events)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot start the witness lease keeper: this node stays standby");
            None
        }
    }
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The peer link's port: `[peer] port` in the node config, else the default.
/// Locks the agent's memory, now and to come (`[failover] lock_memory`); a failure
/// is logged, not fatal: the node still works, only without that protection.
fn lock_memory() {
    use nix::sys::mman::{MlockAllFlags, mlockall};
    match mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE) {
        Ok(()) => tracing::info!("the agent's memory is locked (lock_memory)"),
        Err(e) => {
            tracing::warn!(error = %e, "cannot lock the agent's memory (lock_memory needs CAP_IPC_LOCK or a large enough RLIMIT_MEMLOCK); going on without")
        }
    }
}

fn peer_port(config: &NodeConfig) -> u16 {
    config
        .peer
        .as_ref()
        .map_or(tandem_peer::DEFAULT_PORT, |p| p.port)
}

fn log_report(what: &str, report: &Report) {
    for step in &report.steps {
        match &step.error {
            None => tracing::info!(%what, action = %step.action, "done"),
            Some(e) => tracing::warn!(%what, action = %step.action, error = %e, "failed"),
        }
    }
    if let Some(refusal) = &report.refused {
        tracing::warn!(%what, %refusal, "refused");
    }
}

#[cfg(test)]
mod bundle_size_tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    /// A pair of sessions on 127.0.0.1 and the blob `len` bytes long that one sends.
    async fn blob_of(len: usize) -> (Session, Session, tandem_peer::BlobReader) {
        let key = SiteKey::from_bytes([3; 32]);
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut listener =
            tandem_peer::Listener::bind(any, tandem_peer::Config::new(key.clone(), NodeId::Two))
                .await
                .unwrap();
        let addr = listener.local_addr();
        let node1 = tandem_peer::Config::new(key, NodeId::One);
        let (sender, receiver) = tokio::join!(tandem_peer::dial(addr, &node1), listener.accept());
        let (sender, receiver) = (sender.unwrap(), receiver.unwrap());
        let sending = sender.clone();
        tokio::spawn(async move { sending.send_blob(&vec![7u8; len][..]).await });
        match receiver.recv().await.unwrap() {
            Incoming::Blob(blob) => (sender, receiver, blob),
            other => panic!("expected a blob, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_bundle_is_kept_only_with_its_announced_size_and_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("incoming").join("config-files.tar.gz");
        let len = 200_000;
        for (announced, max, kept) in [
            (len as u64 - 1, u64::MAX, false),   // longer than announced
            (len as u64 + 1, u64::MAX, false),   // shorter than announced
            (len as u64, len as u64 - 1, false), // announced past the limit
            (len as u64, len as u64, true),
        ] {
            let (_sender, _receiver, mut blob) = blob_of(len).await;
            let result = receive_bundle(&mut blob, &path, announced, max, None).await;
            assert_eq!(result.is_ok(), kept, "{announced} {max}: {result:?}");
            assert_eq!(path.exists(), kept, "{announced} {max}");
            let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .filter(|name| *name != "config-files.tar.gz")
                .collect();
            assert!(
                left.is_empty(),
                "{announced} {max}: a partial file was left: {left:?}"
            );
        }
    }

    #[test]
    fn the_bundle_limit_follows_the_config() {
        let text = "[node]\nid = 2\nhostname = \"node2.lab.test\"\n\n[network]\n\
                    shared_address = \"192.0.2.10/24\"\nnode_address = \"192.0.2.12/24\"\n\
                    gateway = \"192.0.2.1\"\npeer_address = \"192.0.2.11\"\n\n\
                    [bundle.limits]\nmax_total_bytes = 6400\n";
        let mut config = NodeConfig::parse(text, Path::new("test.toml")).unwrap();
        assert_eq!(
            max_bundle_bytes(&bundle_spec(&config)),
            6400 + 100 + (1 << 20)
        );
        config.bundle = None;
        let default = tandem_bundle::Limits::default().max_total_bytes;
        assert!(max_bundle_bytes(&bundle_spec(&config)) > default);
    }
}

#[cfg(test)]
mod envelope_tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use crate::{NodeOutcome, OutcomeKind, SwitchAction};
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        ".{0,30}"
    }

    fn node() -> impl Strategy<Value = NodeId> {
        prop_oneof![Just(NodeId::One), Just(NodeId::Two)]
    }

    fn facts() -> impl Strategy<Value = crate::check::PeerFacts> {
        (
            node(),
            (1u32..100).prop_filter_map("a site id", tandem_role::SiteId::new),
            text(),
            any::<std::net::IpAddr>(),
            proptest::option::of(text()),
            text(),
        )
            .prop_map(
                |(node, site, hostname, node_address, shared_hostname, key_fingerprint)| {
                    crate::check::PeerFacts {
                        node,
                        site,
                        hostname,
                        node_address,
                        shared_address: "192.0.2.10/24".into(),
                        shared_hostname,
                        key_fingerprint,
                    }
                },
            )
    }

    fn message() -> impl Strategy<Value = PeerMessage> {
        let kinds = proptest::sample::select(vec![
            OutcomeKind::Done,
            OutcomeKind::Failed,
            OutcomeKind::NotReached,
            OutcomeKind::NotAsked,
            OutcomeKind::NotAttempted,
        ]);
        prop_oneof![
            (node(), any::<u64>(), proptest::option::of(any::<u64>())).prop_map(
                |(node, epoch, token)| PeerMessage::Claim {
                    node,
                    epoch: Epoch::new(epoch),
                    token: token.map(FenceToken::new),
                }
            ),
            (node(), any::<u64>()).prop_map(|(node, e)| PeerMessage::Superseded {
                node,
                epoch: Epoch::new(e)
            }),
            (
                node(),
                any::<u64>(),
                proptest::collection::vec((text(), any::<u64>(), any::<u32>()), 0..4)
            )
                .prop_map(|(node, e, steps)| PeerMessage::Released {
                    node,
                    epoch: Epoch::new(e),
                    steps: steps
                        .into_iter()
                        .map(|(action, started_us, ms)| crate::StepRecord {
                            action,
                            started_us,
                            took: Duration::from_millis(u64::from(ms)),
                            error: None,
                        })
                        .collect(),
                }),
            facts().prop_map(PeerMessage::Facts),
            (any::<u64>(), any::<u64>()).prop_map(|(bytes, id)| PeerMessage::Bundle { bytes, id }),
            (
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                proptest::option::of(text())
            )
                .prop_map(|(id, bytes, entries, error)| PeerMessage::BundleKept {
                    id,
                    bytes,
                    entries,
                    error
                }),
            (any::<u64>(), proptest::option::of(any::<u64>())).prop_map(|(id, on)| {
                PeerMessage::Switch {
                    id,
                    action: match on {
                        Some(timeout_ms) => SwitchAction::On { timeout_ms },
                        None => SwitchAction::Off,
                    },
                }
            }),
            (any::<u64>(), node(), kinds, text()).prop_map(|(id, node, kind, message)| {
                PeerMessage::Switched {
                    id,
                    outcome: NodeOutcome {
                        node: node.get(),
                        kind,
                        message,
                    },
                }
            }),
            any::<u64>().prop_map(|id| PeerMessage::StandDown { id }),
            (any::<u64>(), text())
                .prop_map(|(id, reason)| PeerMessage::StandDownRefused { id, reason }),
        ]
    }

    proptest! {
        /// Every agent message survives the envelope, and every cut of it is refused.
        #[test]
        fn agent_messages_round_trip(m in message(), cut in any::<prop::sample::Index>()) {
            let bytes = tandem_peer::seal(&m).unwrap();
            prop_assert_eq!(tandem_peer::open::<PeerMessage>(&bytes).unwrap(), m);
            let n = cut.index(bytes.len());
            prop_assert!(tandem_peer::open::<PeerMessage>(&bytes[..n]).is_err());
        }

        /// Whatever the peer sends on the agent channel decodes or is refused, and what
        /// decodes is sealed back to the same bytes (no two encodings of one message).
        #[test]
        fn any_agent_body_decodes_or_is_refused(body in proptest::collection::vec(any::<u8>(), 0..120)) {
            let mut bytes = vec![tandem_peer::ENVELOPE_VERSION, 1];
            bytes.extend(body);
            if let Ok(m) = tandem_peer::open::<PeerMessage>(&bytes) {
                prop_assert_eq!(tandem_peer::seal(&m).unwrap(), bytes);
            }
        }
    }

    #[test]
    fn a_json_message_from_an_older_agent_is_named() {
        let old = br#"{"claim":{"node":1,"epoch":3}}"#;
        let err = tandem_peer::open::<PeerMessage>(old).unwrap_err();
        assert!(err.to_string().contains("upgrade both nodes"), "{err}");
    }
}

#[cfg(test)]
mod handover_tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use tandem_replication::{
        LinkStatus, Position, ReplicationState, ReplicationType, ServerStatus, Status,
    };

    /// This node's status as a standby with replication `state`.
    fn standby(detail: Option<&str>, remote: LinkStatus, state: ReplicationState) -> Status {
        let server = |replication_type, status, writable| ServerStatus {
            replication_type,
            site: Some(1),
            node: None,
            state,
            status,
            writable: Some(writable),
        };
        Status {
            backend: "postgres".into(),
            local: server(ReplicationType::Local, LinkStatus::Local, false),
            remote: server(ReplicationType::IntraSite, remote, true),
            backlog: None,
            lag_ms: None,
            head: Position(0),
            acked: Position(0),
            applied: Position(0),
            remote_head: None,
            service_running: true,
            remote_detail: None,
            local_detail: detail.map(str::to_owned),
            alarms: Vec::new(),
            wal: None,
            resync: None,
        }
    }

    #[test]
    fn a_standby_that_does_not_apply_or_has_forked_refuses_a_switchover_and_says_what_to_do() {
        let streaming = standby(None, LinkStatus::Connected, ReplicationState::Active);
        assert_eq!(not_ready_to_take_over(&streaming), None);
        let idle = standby(
            Some("the WAL receiver is not streaming"),
            LinkStatus::Connected,
            ReplicationState::Active,
        );
        let why = not_ready_to_take_over(&idle).unwrap();
        assert!(
            why.contains("not ready to take over (the WAL receiver is not streaming)"),
            "{why}"
        );
        assert!(
            why.contains("`failover set-server standby` on the peer"),
            "{why}"
        );
        let forked = standby(None, LinkStatus::Diverged, ReplicationState::Active);
        assert!(
            not_ready_to_take_over(&forked)
                .unwrap()
                .contains("Diverged")
        );
        // Replication switched off, or the link merely down: the operator's call.
        let off = standby(
            Some("not streaming"),
            LinkStatus::Diverged,
            ReplicationState::Off,
        );
        assert_eq!(not_ready_to_take_over(&off), None);
        let down = standby(None, LinkStatus::NotConnected, ReplicationState::Active);
        assert_eq!(not_ready_to_take_over(&down), None);
    }
}
