//! The replication service: the long-running task on each node that owns the peer
//! session, streams this node's changelog to the peer, applies the peer's, answers and
//! performs from-sync, records what it hears for `status`, and carries out the requests
//! that the one-shot commands leave in the meta table.
//!
//! The node agent hosts it; until then `mp_replication service` runs it alone.
//!
//! The decisions are the sans-IO [`Protocol`](super::protocol::Protocol)'s
//! (`sqlite/protocol/`); the engine (`sqlite/engine.rs`) is the IO shell that feeds it
//! the peer's messages, ticks and the results of what it asked for, and carries out its
//! commands. This file holds the service's public face and its loop over sessions.
//!
//! # Protocol
//!
//! Both sides send [`Message::State`] when a session starts, on change and every
//! second. A node that is on, not writable, not diverged and whose peer is on sends
//! [`Message::Pull`] with its applied position; the other side checks it (same
//! changelog, not below its floor, not past its head), then streams
//! [`Message::Batch`]es with at most `window` not yet taken in. The puller applies each
//! batch in one transaction with its new position and answers [`Message::Ack`]; the
//! source records the acknowledgement and prunes. Before the apply, the puller answers
//! [`Message::Received`] if the source announced, with an `Ack` of position 0 at the
//! start of the session, that it reads it (an older release cannot decode it): the
//! source publishes that position for commits waiting at the `received` level and
//! sends its next batch at once (the window counts batches not yet received). A from-sync ends the same way: the
//! receiver acknowledges the snapshot's position once it committed the snapshot. The
//! backlog limit counts the changes past both the acknowledged position and the floor
//! (what was dropped reaches the peer only by a from-sync). Both directions are symmetric, so
//! after a switchover the new standby resumes from its own applied position of the new
//! active node's changelog.
//!
//! With a witness ([`Replicator::with_fence`]) every state carries the sender's fencing
//! token ([`NodeState::token`]). A puller whose fence has a floor applies a batch only
//! while the peer's last state announced a token at least that floor (checked again
//! inside the batch's transaction before it commits); otherwise it sends
//! [`Message::Stop`], raises an alarm saying why, and pulls again once the peer's token
//! is new enough. A node whose own token is older than the one its peer announces
//! answers pulls and sync requests with a refusal and stops a stream in progress.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tandem_peer::{LinkConfig, LinkEvent, SiteKey};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::engine::Engine;
use crate::error::{Error, Result, chain};
use crate::fence::Fence;
use crate::sqlite::{Meta, SqliteBackend};
use crate::util::ServiceLock;
use crate::wire::Message;

/// How the service talks to the peer: one session's messages, in order. Implemented for
/// [`tandem_peer::Session`]; the node agent can implement it over its own channel.
pub trait Transport: Send + Sync {
    /// Sends one message.
    fn send(&self, message: Message) -> impl Future<Output = Result<()>> + Send;
    /// Receives the next message; an error ends the session. Must be cancel safe: a
    /// receive that is dropped before it completed loses no message (the service races
    /// it with timers, and polls it once to see whether more batches are waiting).
    fn recv(&self) -> impl Future<Output = Result<Message>> + Send;
}

impl Transport for tandem_peer::Session {
    async fn send(&self, message: Message) -> Result<()> {
        tandem_peer::Session::send_message(self, &message)
            .await
            .map_err(from_link)
    }

    async fn recv(&self) -> Result<Message> {
        tandem_peer::Session::recv(self)
            .await?
            .open::<Message>()
            .map_err(from_link)
    }
}

/// A link error as the service reports it: a message that is not a well-formed
/// replication message is a protocol error, anything else the link's own.
fn from_link(e: tandem_peer::Error) -> Error {
    match e {
        tandem_peer::Error::Envelope(e) => Error::Protocol(e.to_string()),
        other => Error::Peer(other),
    }
}

/// What the owner of the peer link tells the service.
#[derive(Debug)]
#[non_exhaustive]
pub enum PeerEvent<T> {
    /// A session with the peer is up; the service uses it until it fails.
    Up(T),
    /// The peer could not be reached (the text says why); shown by `status`.
    Unreachable(String),
}

/// The replication service of one node.
#[derive(Debug, Clone)]
pub struct Replicator {
    backend: Arc<SqliteBackend>,
    /// The witness's fencing tokens as the host knows them (none: no witness).
    fence: Option<watch::Receiver<Fence>>,
}

impl Replicator {
    /// A service for this backend. The database must be initialized before
    /// [`run`](Self::run) or [`run_standalone`](Self::run_standalone) get far; they wait
    /// for `init` if it has not happened yet.
    pub fn new(backend: Arc<SqliteBackend>) -> Replicator {
        Replicator {
            backend,
            fence: None,
        }
    }

    /// Fences replication with the witness's tokens (a site with a witness): the host
    /// keeps `fence` current with the token of the leader key lease this node holds and
    /// the highest token it has seen. The service announces [`Fence::mine`] in its
    /// states (at once when it changes), applies the peer's changes only while the
    /// peer's token is at least [`Fence::floor`] ([`Fence::admits`]), and streams to the
    /// peer only while the peer announces no newer token than its own
    /// ([`Fence::may_serve`]). Without a fence nothing is fenced. Set it before
    /// [`run`](Self::run) or [`run_standalone`](Self::run_standalone).
    pub fn with_fence(mut self, fence: watch::Receiver<Fence>) -> Replicator {
        self.fence = Some(fence);
        self
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<SqliteBackend> {
        &self.backend
    }

    /// Runs the standalone service: takes the node's service lock, waits for `init`,
    /// keeps the peer link up with [`tandem_peer::Link`] on the node address (the node
    /// with the lower id dials) and serves each session, until `shutdown` resolves.
    pub async fn run_standalone(
        &self,
        key: SiteKey,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<()> {
        let _lock = ServiceLock::acquire(&self.backend.lock_path())?;
        tokio::pin!(shutdown);
        let meta = tokio::select! {
            m = self.wait_for_init() => m?,
            () = &mut shutdown => return Ok(()),
        };
        let link_config = self.link_config(&meta, key)?;
        let (tx, rx) = mpsc::channel(4);
        let backend = Arc::clone(&self.backend);
        let mut link = start_link(link_config).await?;
        info!(role = ?link.role(), "replication peer link started");
        let forward = tokio::spawn(async move {
            while let Some(event) = link.next_event().await {
                let event = match event {
                    LinkEvent::PeerUp(session) => PeerEvent::Up(session),
                    LinkEvent::DialFailed { error, .. } => PeerEvent::Unreachable(chain(&error)),
                    LinkEvent::PeerLost(_) => continue,
                    _ => continue,
                };
                if tx.send(event).await.is_err() {
                    break;
                }
            }
            drop(backend);
        });
        let result = self.run_locked(rx, shutdown).await;
        forward.abort();
        let _ = forward.await;
        result
    }

    /// Runs the service on sessions handed over by the owner of the peer link (the node
    /// agent), until `shutdown` resolves or `events` closes. The caller holds the
    /// node's service lock by running only one service per database.
    pub async fn run<T: Transport + 'static>(
        &self,
        events: mpsc::Receiver<PeerEvent<T>>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<()> {
        let _lock = ServiceLock::acquire(&self.backend.lock_path())?;
        self.run_locked(events, shutdown).await
    }

    async fn run_locked<T: Transport + 'static>(
        &self,
        mut events: mpsc::Receiver<PeerEvent<T>>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<()> {
        tokio::pin!(shutdown);
        tokio::select! {
            m = self.wait_for_init() => { m?; }
            () = &mut shutdown => return Ok(()),
        }
        let mut engine = Engine::start(Arc::clone(&self.backend), self.fence.clone()).await?;
        let idle = Duration::from_millis(50);
        loop {
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                event = events.recv() => match event {
                    None => return Ok(()),
                    Some(PeerEvent::Up(transport)) => {
                        let reason = tokio::select! {
                            r = engine.session(&transport) => r,
                            () = &mut shutdown => return Ok(()),
                        };
                        match &reason {
                            Ok(()) => info!("replication session ended"),
                            Err(e) => warn!(reason = %chain(e), "replication session ended"),
                        }
                        let text = reason.err().map(|e| chain(&e));
                        engine.session_lost::<T>(text).await;
                    }
                    Some(PeerEvent::Unreachable(text)) => engine.record_unreachable::<T>(text).await,
                },
                () = tokio::time::sleep(idle) => {
                    if let Err(e) = engine.tick::<T>(None).await {
                        warn!(error = %chain(&e), "replication housekeeping failed");
                    }
                }
            }
        }
    }

    async fn wait_for_init(&self) -> Result<Meta> {
        let mut said = false;
        loop {
            match self.backend.meta().await {
                Ok(m) => return Ok(m),
                Err(Error::NotInitialized) => {
                    if !said {
                        info!("waiting for `mp_replication init` on this node");
                        said = true;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn link_config(&self, meta: &Meta, key: SiteKey) -> Result<LinkConfig> {
        let settings = self.backend.settings();
        let cfg = &settings.replication;
        let remote = SocketAddr::from_str(&meta.remote).map_err(|_| {
            Error::State(format!(
                "the recorded remote {:?} is not an address and port; run `mp_replication init` again",
                meta.remote
            ))
        })?;
        let local_ip = IpAddr::from_str(&meta.local)
            .ok()
            .or(settings.node.node_address)
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let peer_config = tandem_peer::Config::new(key, meta.node)
            .with_heartbeat_interval(Duration::from_millis(cfg.heartbeat_ms))
            .with_missed_heartbeats(cfg.missed_heartbeats);
        Ok(LinkConfig::new(
            peer_config,
            SocketAddr::new(local_ip, settings.port()),
            remote,
            meta.node.peer(),
        ))
    }
}

/// Starts the link, retrying for a few seconds while the port is still held (by a
/// service of this process that is shutting down).
async fn start_link(config: LinkConfig) -> Result<tandem_peer::Link> {
    let mut attempts = 0;
    loop {
        match tandem_peer::Link::start(config.clone()).await {
            Err(tandem_peer::Error::Bind { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse && attempts < 50 =>
            {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other.map_err(Error::Peer),
        }
    }
}
