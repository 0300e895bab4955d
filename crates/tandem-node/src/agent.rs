//! The node agent: the long-running process of a node (`failover agent`).
//!
//! It makes the boot decision, keeps the peer link to the other node and
//! exchanges claims and epochs on it, watches the shared address for another
//! host answering for it, serves the operators' tools on the control socket and
//! keeps a [`StatusSnapshot`] current for the status page. On shutdown it stops
//! the active-only services and releases the shared address: no address stays up
//! without an agent watching it.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tandem_peer::{Incoming, Link, LinkConfig, LinkEvent, Session, SiteKey};
use tandem_role::{Epoch, Event, NodeId, Role};
use tokio::io::BufReader;
use tokio::sync::{mpsc, watch};

use crate::control::{self, ControlError, Request, Response};
use crate::{Alarm, Node, NodeConfig, NodeError, PeerStatus, Report, StatusSnapshot};

/// What the agents say to each other on the peer link.
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
    },
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
    let mut agent = Agent::start(config, state_dir, key, status).await?;
    let result = agent.serve(shutdown).await;
    let report = agent.node.stand_down().await;
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
    alarms: Vec<Alarm>,
    from_peer: mpsc::Receiver<PeerMessage>,
    to_agent: mpsc::Sender<PeerMessage>,
    _state_dir: PathBuf,
}

impl Agent {
    async fn start(
        config: NodeConfig,
        state_dir: &Path,
        key: SiteKey,
        status: watch::Sender<StatusSnapshot>,
    ) -> Result<Agent, AgentError> {
        let mut node = Node::open(config.clone(), state_dir)?;
        let control = control::bind(state_dir).await?;
        let report = node.boot().await;
        log_report("boot", &report);
        let failover = &config.failover;
        let port = peer_port(&config);
        let peer_config = tandem_peer::Config::new(key, config.node.id.get())
            .with_heartbeat_interval(Duration::from_millis(failover.heartbeat_ms))
            .with_missed_heartbeats(failover.missed_heartbeats);
        let link = Link::start(LinkConfig::new(
            peer_config,
            SocketAddr::new(config.network.node_address.addr(), port),
            SocketAddr::new(config.network.peer_address, port),
            config.node.id.peer().get(),
        ))
        .await?;
        let (to_agent, from_peer) = mpsc::channel(64);
        let mut agent = Agent {
            node,
            started: Instant::now(),
            status,
            control,
            link,
            session: None,
            peer_claim: None,
            alarms: Vec::new(),
            from_peer,
            to_agent,
            _state_dir: state_dir.to_path_buf(),
        };
        agent.after(&report).await;
        Ok(agent)
    }

    async fn serve(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
        tokio::pin!(shutdown);
        let heartbeat = Duration::from_millis(self.node.config().failover.heartbeat_ms);
        let mut watch = tokio::time::interval(heartbeat);
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                event = self.link.next_event() => match event {
                    Some(LinkEvent::PeerUp(session)) => {
                        tracing::info!(peer = %session.peer_addr(), "peer up");
                        spawn_reader(session.clone(), self.to_agent.clone());
                        self.session = Some(session);
                        self.event(Event::PeerBack).await;
                    }
                    Some(LinkEvent::PeerLost(reason)) => {
                        tracing::warn!(%reason, "peer lost");
                        self.session = None;
                        self.peer_claim = None;
                        self.event(Event::PeerLost).await;
                    }
                    Some(LinkEvent::DialFailed { error, retry_in, .. }) => {
                        tracing::debug!(%error, ?retry_in, "dialling the peer failed");
                    }
                    Some(_) => {}
                    None => return Ok(()),
                },
                Some(message) = self.from_peer.recv() => match message {
                    PeerMessage::Claim { node, epoch } => {
                        self.peer_claim = Some(epoch);
                        self.event(Event::PeerClaim { node, epoch }).await;
                    }
                },
                accepted = self.control.accept() => {
                    if let Ok((stream, _)) = accepted {
                        self.serve_tool(stream).await;
                    }
                }
                _ = watch.tick() => self.watch_shared_address().await,
            }
        }
    }

    /// Feeds an event to the node and handles what follows.
    async fn event(&mut self, event: Event) {
        let what = event.to_string();
        let report = self.node.handle(event).await;
        log_report(&what, &report);
        self.after(&report).await;
    }

    /// Sends the report's claims to the peer, records alarms, refreshes the status.
    async fn after(&mut self, report: &Report) {
        let me = self.node.state().node;
        for epoch in &report.claims {
            let message = PeerMessage::Claim {
                node: me,
                epoch: *epoch,
            };
            match (&self.session, serde_json::to_vec(&message)) {
                (Some(session), Ok(bytes)) => {
                    if let Err(e) = session.send(bytes).await {
                        tracing::warn!(error = %e, "could not send the claim to the peer");
                    }
                }
                (None, _) => {
                    tracing::info!(%epoch, "no peer link: the claim waits for the peer to come back")
                }
                (_, Err(e)) => tracing::warn!(error = %e, "cannot encode the claim"),
            }
        }
        let now = now_ms();
        for message in report.alarms.iter().chain(&report.faults) {
            self.alarms.push(Alarm {
                raised_ms: now,
                message: message.clone(),
            });
        }
        // Keep the most recent alarms only; the hooks and the log have them all.
        let excess = self.alarms.len().saturating_sub(50);
        self.alarms.drain(..excess);
        self.publish().await;
    }

    /// While active, another MAC answering ARP for the shared address is a conflict.
    async fn watch_shared_address(&mut self) {
        if self.node.state().role != Role::Active {
            return;
        }
        match self.node.conflicting_macs().await {
            Ok(macs) => {
                if let Some(mac) = macs.first() {
                    tracing::warn!(%mac, "another host answers for the shared address");
                    self.event(Event::AddressConflict { mac: *mac }).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch the shared address"),
        }
        self.publish().await;
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
                self.after(&report).await;
                Response::Report(report)
            }
            Request::SetDeployment(mode) => {
                let report = self.node.handle(Event::SetDeployment(mode)).await;
                self.after(&report).await;
                Response::Report(report)
            }
            Request::Status => Response::Status(Box::new(self.snapshot().await)),
        };
        if let Err(e) = control::write_response(&mut stream, &response).await {
            tracing::warn!(error = %e, "could not answer the tool");
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
            },
            replication: None,
            alarms: self.alarms.clone(),
            uptime_seconds: self.started.elapsed().as_secs(),
            taken_ms: now_ms(),
        }
    }

    async fn publish(&self) {
        let snapshot = self.snapshot().await;
        self.status.send_replace(snapshot);
    }
}

/// Forwards the peer's messages to the agent until the session ends.
fn spawn_reader(session: Session, to_agent: mpsc::Sender<PeerMessage>) {
    tokio::spawn(async move {
        loop {
            match session.recv().await {
                Ok(Incoming::Message(bytes)) => match serde_json::from_slice::<PeerMessage>(&bytes)
                {
                    Ok(message) => {
                        if to_agent.send(message).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "unreadable message from the peer"),
                },
                Ok(_) => tracing::warn!("unexpected blob from the peer; dropped"),
                Err(_) => return,
            }
        }
    });
}

/// The peer link's port: `[peer] port` in the node config, else the default.
fn peer_port(config: &NodeConfig) -> u16 {
    config
        .peer
        .as_ref()
        .and_then(|t| t.get("port"))
        .and_then(|v| v.as_integer())
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(tandem_peer::DEFAULT_PORT)
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
