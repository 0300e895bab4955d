//! The replication service: the long-running task on each node that owns the peer
//! session, streams this node's changelog to the peer, applies the peer's, answers and
//! performs from-sync, records what it hears for `status`, and carries out the requests
//! that the one-shot commands leave in the meta table.
//!
//! The node agent hosts it; until then `mp_replication service` runs it alone.
//!
//! # Protocol
//!
//! Both sides send [`Message::State`] when a session starts, on change and every
//! second. A node that is on, not writable, not diverged and whose peer is on sends
//! [`Message::Pull`] with its applied position; the other side checks it (same
//! changelog, not below its floor, not past its head), then streams
//! [`Message::Batch`]es with at most `window` unacknowledged. The puller applies each
//! batch in one transaction with its new position and answers [`Message::Ack`]; the
//! source records the acknowledgement and prunes. A from-sync ends the same way: the
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

use futures::FutureExt;
use sqlx::{ConnectOptions, SqliteConnection};
use tandem_peer::{Incoming, LinkConfig, LinkEvent, SiteKey};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::error::{Error, Result, chain};
use crate::fence::Fence;
use crate::sqlite::{
    self, ApplyOutcome, Meta, PeerRecord, Progress, PullCheck, RequestDone, SnapshotReader,
    SqliteBackend, SyncStage,
};
use crate::status::ReplicationState;
use crate::util::{ServiceLock, WakeSocket, now_ms};
use crate::wire::{self, Batch, Message, NodeState};

/// How often acknowledgements are recorded in the database at most.
const ACK_FLUSH: Duration = Duration::from_millis(100);
/// How long a refused pull waits before it is tried again when nothing changed.
const RETRY_REFUSED: Duration = Duration::from_secs(2);
/// How often a state whose only change is a position is sent at most.
const STATE_EVERY: Duration = Duration::from_millis(250);
/// Batches merged into one transaction at most (more than the window in practice).
const MAX_COALESCED: usize = 64;

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
        tandem_peer::Session::send(self, message.encode())
            .await
            .map_err(Error::Peer)
    }

    async fn recv(&self) -> Result<Message> {
        match tandem_peer::Session::recv(self).await? {
            Incoming::Message(bytes) => Message::decode(&bytes),
            Incoming::Blob(_) => Err(Error::Protocol(
                "the peer sent a blob on the replication session".into(),
            )),
            _ => Err(Error::Protocol("unexpected peer link item".into())),
        }
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

/// Per-session state.
struct Session {
    peer: Option<NodeState>,
    peer_recorded: Option<(NodeState, Instant)>,
    /// We sent a pull and have not stopped it.
    pulling: bool,
    /// The peer refused our pull (or we could not apply its batch); we do not ask
    /// again until something changes or [`RETRY_REFUSED`] passed.
    refused: Option<(String, PullKey, Instant)>,
    /// The peer pulls from us.
    serving: Option<Serving>,
    /// A snapshot we are sending.
    providing: Option<SnapshotReader>,
    last_state: Option<(NodeState, Instant)>,
}

/// What a refused pull depended on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PullKey {
    applied_log: Option<u64>,
    applied: u64,
    peer_log: u64,
    peer_floor: u64,
    /// A refusal for a stale token ends when the peer announces a new one.
    peer_token: Option<u64>,
}

struct Serving {
    log: u64,
    sent: u64,
    /// Last sequence numbers of the batches in flight.
    inflight: std::collections::VecDeque<u64>,
}

/// A request being carried out.
enum Pending {
    Control {
        id: u64,
        local: String,
        until: Instant,
    },
    SyncWaiting {
        id: u64,
        deadline_ms: u64,
    },
    SyncRequested {
        id: u64,
        deadline_ms: u64,
    },
    SyncReceiving {
        stage: SyncStage,
    },
}

impl Pending {
    fn id(&self) -> u64 {
        match self {
            Pending::Control { id, .. }
            | Pending::SyncWaiting { id, .. }
            | Pending::SyncRequested { id, .. } => *id,
            Pending::SyncReceiving { stage } => stage.id,
        }
    }
}

/// State that lives across sessions.
struct Engine {
    backend: Arc<SqliteBackend>,
    watch: SqliteConnection,
    data_version: i64,
    meta: Meta,
    fingerprint: String,
    pending: Option<Pending>,
    /// An acknowledgement published but not yet recorded in the database.
    ack_pending: Option<(u64, u64)>,
    ack_flushed: Instant,
    ack_task: Option<JoinHandle<()>>,
    /// A peer record not yet written, and the write in progress.
    peer_record: Option<PeerRecord>,
    peer_task: Option<JoinHandle<()>>,
    /// Wake-ups from commits waiting in `wait_replicated` (none: poll only).
    wake: Option<WakeSocket>,
    /// Why the last batch from the peer could not be applied, until one is: sent to
    /// the peer as this node's alarm, since this node may be unable to record
    /// anything itself (its disk is full).
    apply_failure: Option<String>,
    /// The witness's fencing tokens (none: no witness, nothing is fenced).
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
                        engine.session_lost(text).await;
                    }
                    Some(PeerEvent::Unreachable(text)) => engine.record_unreachable(text).await,
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
            3 - meta.node,
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

impl Engine {
    async fn start(
        backend: Arc<SqliteBackend>,
        fence: Option<watch::Receiver<Fence>>,
    ) -> Result<Engine> {
        let backend_wake_path = backend.wake_path();
        let path = backend.database_path();
        let mut watch = sqlite::connect_options(&path)
            .connect()
            .await
            .map_err(Error::db(format!("connecting to {}", path.display())))?;
        let data_version = data_version(&mut watch).await?;
        let tables = backend.reload_tables().await?;
        let mut meta = backend.meta().await?;
        if meta.state == ReplicationState::Syncing {
            let live = meta
                .request
                .as_ref()
                .filter(|r| r.sync && r.deadline_ms > now_ms())
                .filter(|r| meta.request_done.as_ref().is_none_or(|d| d.id < r.id));
            if live.is_none() {
                warn!(
                    "a from-sync was interrupted; replication state is now Failed (run it again)"
                );
                backend.set_state(ReplicationState::Failed).await?;
                meta = backend.meta().await?;
            }
        }
        if meta.schema != tables.fingerprint {
            warn!("the declared tables changed since `init`; run `mp_replication init` again");
        }
        Ok(Engine {
            backend,
            watch,
            data_version,
            meta,
            fingerprint: tables.fingerprint.clone(),
            pending: None,
            ack_pending: None,
            ack_flushed: Instant::now(),
            ack_task: None,
            peer_record: None,
            peer_task: None,
            wake: WakeSocket::bind(&backend_wake_path),
            apply_failure: None,
            fence,
        })
    }

    /// The current fence (the default, which fences nothing, without a witness).
    fn fence(&self) -> Fence {
        self.fence.as_ref().map(|f| *f.borrow()).unwrap_or_default()
    }

    /// Whether this node may stream to the peer (always without a fence).
    fn may_serve(&self, peer: Option<&NodeState>) -> Result<()> {
        match (&self.fence, peer) {
            (Some(_), Some(p)) => self.fence().may_serve(self.meta.node, p.node, p.token),
            _ => Ok(()),
        }
    }

    /// The fence changed: announce the new token, and start or stop pulling and
    /// serving as it now allows.
    async fn on_fence_change<T: Transport>(&mut self, t: &T, s: &mut Session) -> Result<()> {
        let fence = self.fence();
        info!(mine = ?fence.mine, floor = fence.floor, "the witness's fence changed");
        self.update_pull(t, s).await?;
        self.serve(t, s).await?;
        self.send_state(t, s, true).await
    }

    fn cfg(&self) -> &crate::config::ReplicationConfig {
        &self.backend.settings().replication
    }

    /// Re-reads the meta table if anything was committed since the last look (one
    /// statement on the watch connection, which asks and reads at once).
    async fn refresh(&mut self, force: bool) -> Result<bool> {
        let seen = (!force).then_some(self.data_version);
        let (version, meta) = sqlite::read_meta_if_changed(&mut self.watch, seen).await?;
        self.data_version = version;
        let Some(mut meta) = meta else {
            return Ok(false);
        };
        self.backend.with_published_ack(&mut meta);
        self.meta = meta;
        if self.meta.schema != self.fingerprint {
            let tables = self.backend.reload_tables().await?;
            self.fingerprint = tables.fingerprint.clone();
        }
        Ok(true)
    }

    /// Runs one session until it fails.
    async fn session<T: Transport>(&mut self, t: &T) -> Result<()> {
        let mut s = Session {
            peer: None,
            peer_recorded: None,
            pulling: false,
            refused: None,
            serving: None,
            providing: None,
            last_state: None,
        };
        self.refresh(true).await?;
        self.send_state(t, &mut s, true).await?;
        let poll = self.cfg().poll_interval();
        loop {
            let providing = s.providing.is_some();
            tokio::select! {
                msg = t.recv() => {
                    let msg = msg?;
                    self.received(t, &mut s, msg).await?;
                }
                () = fence_changed(&mut self.fence) => self.on_fence_change(t, &mut s).await?,
                () = woken(self.wake.as_ref()) => {
                    // A commit waits for the peer: ship it now, not at the next poll;
                    // while a batch is in flight it goes with the next one, which the
                    // acknowledgement sends, so there is nothing to do yet.
                    let waiting = s.serving.as_ref().is_some_and(|sv| !sv.inflight.is_empty());
                    if !waiting {
                        self.tick(Some((t, &mut s))).await?;
                    }
                }
                item = next_snapshot(&mut s.providing), if providing => {
                    match item {
                        Some(Ok(msg)) => {
                            let end = matches!(msg, Message::SnapshotEnd { .. });
                            t.send(msg).await?;
                            if end {
                                s.providing = None;
                                info!("snapshot sent to the peer");
                            }
                        }
                        Some(Err(e)) => {
                            s.providing = None;
                            warn!(error = %chain(&e), "reading the snapshot failed");
                            let id = self.meta.request.as_ref().map_or(0, |r| r.id);
                            t.send(Message::SyncFailed { id, reason: chain(&e) }).await?;
                        }
                        None => s.providing = None,
                    }
                }
                () = tokio::time::sleep(poll) => {
                    self.tick(Some((t, &mut s))).await?;
                }
            }
        }
    }

    /// Handles a received message. Batches are applied with group commit: the batches
    /// that arrived meanwhile (the transport already holds them) are taken too, merged
    /// ([`wire::coalesce`]) and applied in one transaction with one acknowledgement, so a
    /// standby that falls behind catches up in fewer, larger commits (one fsync each).
    async fn received<T: Transport>(&mut self, t: &T, s: &mut Session, msg: Message) -> Result<()> {
        let mut next = Some(msg);
        while let Some(msg) = next.take() {
            let Message::Batch(batch) = msg else {
                self.handle(t, s, msg).await?;
                continue;
            };
            let mut batches = vec![batch];
            while batches.len() < MAX_COALESCED {
                match t.recv().now_or_never() {
                    Some(Ok(Message::Batch(b))) => batches.push(b),
                    Some(Ok(other)) => {
                        next = Some(other);
                        break;
                    }
                    Some(Err(e)) => return Err(e),
                    None => break,
                }
            }
            for batch in wire::coalesce(batches) {
                self.on_batch(t, s, batch).await?;
            }
        }
        Ok(())
    }

    /// Drops a pending peer record and waits for one being written, so that a record
    /// written now is not overwritten by an older one.
    async fn settle_peer_record(&mut self) {
        self.peer_record = None;
        if let Some(task) = self.peer_task.take() {
            let _ = task.await;
        }
    }

    async fn session_lost(&mut self, reason: Option<String>) {
        self.settle_peer_record().await;
        if let Err(e) = self.flush_ack(true).await {
            warn!(error = %chain(&e), "recording an acknowledgement failed");
        }
        let reason = reason.unwrap_or_else(|| "the peer link closed".to_owned());
        if let Some(p) = self.pending.take() {
            match p {
                Pending::Control { id, local, .. } => {
                    let msg = format!(
                        "{local}; the peer link was lost before node {} answered",
                        3 - self.meta.node
                    );
                    self.finish(id, true, msg, None).await;
                }
                Pending::SyncWaiting { id, deadline_ms } => {
                    self.pending = Some(Pending::SyncWaiting { id, deadline_ms });
                }
                Pending::SyncRequested { id, .. }
                | Pending::SyncReceiving {
                    stage: SyncStage { id, .. },
                } => {
                    self.fail_sync(
                        id,
                        format!("the peer link was lost during the sync: {reason}"),
                    )
                    .await;
                }
            }
        }
        let record = PeerRecord {
            connected: false,
            at_ms: now_ms(),
            error: Some(reason),
            last_seen_ms: Some(now_ms()),
            ..self.meta.peer.clone().unwrap_or_else(|| empty_record(None))
        };
        if let Err(e) = self.backend.record_peer(&record).await {
            warn!(error = %chain(&e), "recording the peer state failed");
        }
    }

    async fn record_unreachable(&mut self, text: String) {
        self.settle_peer_record().await;
        let previous = self.meta.peer.clone();
        if previous
            .as_ref()
            .is_some_and(|p| !p.connected && p.error.as_deref() == Some(&text))
        {
            return;
        }
        let record = PeerRecord {
            connected: false,
            at_ms: now_ms(),
            error: Some(text),
            ..previous.unwrap_or_else(|| empty_record(None))
        };
        if let Err(e) = self.backend.record_peer(&record).await {
            warn!(error = %chain(&e), "recording the peer state failed");
        }
        let _ = self.refresh(true).await;
    }

    /// Housekeeping and streaming: requests, the backlog limit, pulls, batches, state.
    async fn tick<T: Transport>(&mut self, mut session: Option<(&T, &mut Session)>) -> Result<()> {
        self.refresh(false).await?;
        self.flush_ack(false).await?;
        self.flush_peer_record();
        self.check_backlog().await?;
        self.take_request(session.as_ref().map(|(t, _)| *t)).await?;
        self.check_pending(session.as_mut().map(|(t, s)| (*t, &mut **s)))
            .await?;
        let Some((t, s)) = session else {
            return Ok(());
        };
        self.update_pull(t, s).await?;
        self.serve(t, s).await?;
        self.send_state(t, s, false).await
    }

    /// Records the newest acknowledgement in the database (and prunes), at most every
    /// [`ACK_FLUSH`] unless `now`.
    async fn flush_ack(&mut self, now: bool) -> Result<()> {
        let Some((log, seq)) = self.ack_pending else {
            return Ok(());
        };
        if now {
            if let Some(task) = self.ack_task.take() {
                let _ = task.await;
            }
            self.backend.record_ack(log, seq).await?;
            self.ack_pending = None;
        } else if self.ack_flushed.elapsed() >= ACK_FLUSH
            && self.ack_task.as_ref().is_none_or(JoinHandle::is_finished)
        {
            // In the background: with a busy application the write lock can take a
            // while, and the session must not wait for it.
            let backend = Arc::clone(&self.backend);
            self.ack_task = Some(tokio::spawn(async move {
                if let Err(e) = backend.record_ack(log, seq).await {
                    warn!(error = %chain(&e), "recording an acknowledgement failed");
                }
            }));
            self.ack_pending = None;
            self.ack_flushed = Instant::now();
        }
        Ok(())
    }

    /// Writes the newest peer record in the background (one write at a time).
    fn flush_peer_record(&mut self) {
        if self.peer_task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        if let Some(record) = self.peer_record.take() {
            let backend = Arc::clone(&self.backend);
            self.peer_task = Some(tokio::spawn(async move {
                if let Err(e) = backend.record_peer(&record).await {
                    warn!(error = %chain(&e), "recording the peer state failed");
                }
            }));
        }
    }

    async fn check_backlog(&mut self) -> Result<()> {
        let m = &self.meta;
        let limit = self.cfg().max_backlog;
        // Counted from the floor too: after a suspension the last acknowledgement is
        // older than the dropped changelog, and counting from it suspended again the
        // moment a from-sync switched replication back on.
        if m.writable && m.state == ReplicationState::Active && m.backlog() > limit {
            let alarm = format!(
                "replication switched itself off: {} changes waited for node {}, past max_backlog = {limit}; \
                 the changelog was dropped to protect this node's disk; bring node {} back and run \
                 `mp_replication switch-on -S -F from-sync` on it",
                m.backlog(),
                3 - m.node,
                3 - m.node
            );
            warn!(%alarm, "replication suspended");
            self.backend.suspend(&alarm).await?;
            self.refresh(true).await?;
        }
        Ok(())
    }

    /// Picks up a new request from a command.
    async fn take_request<T: Transport>(&mut self, t: Option<&T>) -> Result<()> {
        let Some(r) = self.meta.request.clone() else {
            return Ok(());
        };
        let done = self.meta.request_done.as_ref().map_or(0, |d| d.id);
        if r.id <= done || self.pending.as_ref().is_some_and(|p| p.id() >= r.id) {
            return Ok(());
        }
        if let Some(p) = self.pending.take() {
            let id = p.id();
            if let Pending::SyncRequested { .. }
            | Pending::SyncReceiving { .. }
            | Pending::SyncWaiting { .. } = p
            {
                self.fail_sync(id, "replaced by a newer request".into())
                    .await;
            } else {
                self.finish(id, false, "replaced by a newer request".into(), None)
                    .await;
            }
        }
        if r.deadline_ms <= now_ms() {
            self.finish(
                r.id,
                false,
                "the request expired before the service took it".into(),
                None,
            )
            .await;
            return Ok(());
        }
        info!(
            id = r.id,
            on = r.on,
            sync = r.sync,
            "request from a command"
        );
        if r.sync {
            if self.meta.writable {
                self.finish(
                    r.id,
                    false,
                    format!("node {} is writable (the active node); from-sync needs it to be the standby", self.meta.node),
                    None,
                )
                .await;
                return Ok(());
            }
            self.backend.set_state(ReplicationState::Syncing).await?;
            self.refresh(true).await?;
            self.pending = Some(Pending::SyncWaiting {
                id: r.id,
                deadline_ms: r.deadline_ms,
            });
            return Ok(());
        }
        let local = self.backend.switch_local(r.on).await?;
        self.refresh(true).await?;
        match t {
            Some(t) => {
                t.send(Message::Control { id: r.id, on: r.on }).await?;
                self.pending = Some(Pending::Control {
                    id: r.id,
                    local,
                    until: Instant::now() + Duration::from_secs(5),
                });
            }
            None => {
                let peer = 3 - self.meta.node;
                let note = if r.on {
                    format!("node {peer} is not connected; it switches on when it connects")
                } else {
                    format!(
                        "node {peer} is not connected; switch it off there too if it should stay off"
                    )
                };
                self.finish(r.id, true, format!("{local}; {note}"), None)
                    .await;
            }
        }
        Ok(())
    }

    async fn check_pending<T: Transport>(
        &mut self,
        session: Option<(&T, &mut Session)>,
    ) -> Result<()> {
        match self.pending.take() {
            Some(Pending::Control { id, local, until }) if Instant::now() >= until => {
                let msg = format!("{local}; node {} did not answer", 3 - self.meta.node);
                self.finish(id, true, msg, None).await;
            }
            Some(Pending::SyncWaiting { id, deadline_ms }) => {
                let peer_known = session.as_ref().and_then(|(_, s)| s.peer.clone());
                match (session, peer_known) {
                    (Some((t, _)), Some(peer)) => {
                        if peer.schema != self.fingerprint {
                            self.fail_sync(id, schema_mismatch(&self.meta, &peer)).await;
                            return Ok(());
                        }
                        if let Err(e) = self.fence().admits(peer.node, peer.token) {
                            self.fail_sync(id, chain(&e)).await;
                            return Ok(());
                        }
                        info!(id, peer = peer.node, "requesting a snapshot from the peer");
                        t.send(Message::SyncRequest {
                            id,
                            log: self.meta.log,
                            head: self.meta.head,
                            schema: self.fingerprint.clone(),
                        })
                        .await?;
                        self.pending = Some(Pending::SyncRequested { id, deadline_ms });
                    }
                    _ if deadline_ms <= now_ms() => {
                        let why = self
                            .meta
                            .peer
                            .as_ref()
                            .and_then(|p| p.error.clone())
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default();
                        self.fail_sync(
                            id,
                            format!("node {} is not connected{why}", 3 - self.meta.node),
                        )
                        .await;
                    }
                    _ => self.pending = Some(Pending::SyncWaiting { id, deadline_ms }),
                }
            }
            Some(Pending::SyncRequested { id, deadline_ms }) if deadline_ms <= now_ms() => {
                self.fail_sync(
                    id,
                    format!(
                        "node {} did not start the snapshot in time",
                        3 - self.meta.node
                    ),
                )
                .await;
            }
            other => self.pending = other,
        }
        Ok(())
    }

    async fn finish(
        &mut self,
        id: u64,
        ok: bool,
        message: String,
        extra: Option<(Option<String>, u64, u64)>,
    ) {
        let (file, saved_rows, copied_rows) = extra.unwrap_or((None, 0, 0));
        let done = RequestDone {
            id,
            ok,
            message,
            file,
            saved_rows,
            copied_rows,
        };
        if ok {
            info!(id, message = %done.message, "request done");
        } else {
            warn!(id, message = %done.message, "request failed");
        }
        if let Err(e) = self.backend.finish_request(&done).await {
            warn!(error = %chain(&e), "recording a request result failed");
        }
        let _ = self.refresh(true).await;
    }

    async fn fail_sync(&mut self, id: u64, reason: String) {
        if let Err(e) = self.backend.set_state(ReplicationState::Failed).await {
            warn!(error = %chain(&e), "recording the failed sync");
        }
        self.finish(id, false, format!("from-sync failed: {reason}"), None)
            .await;
    }

    /// The peer pulls this node's changelog: serve it if the fence and the changelog
    /// allow, else tell it why not.
    async fn on_pull<T: Transport>(
        &mut self,
        t: &T,
        s: &mut Session,
        log: Option<u64>,
        from: u64,
    ) -> Result<()> {
        let check = match self.may_serve(s.peer.as_ref()) {
            Ok(()) => {
                self.backend
                    .check_pull(log, from, 3 - self.meta.node)
                    .await?
            }
            Err(e) => PullCheck::Refuse(chain(&e)),
        };
        match check {
            PullCheck::Serve => {
                debug!(from, "the peer pulls our changelog");
                self.refresh(true).await?;
                s.serving = Some(Serving {
                    log: self.meta.log,
                    sent: from,
                    inflight: std::collections::VecDeque::new(),
                });
            }
            PullCheck::Refuse(reason) => {
                warn!(%reason, "refused the peer's pull");
                s.serving = None;
                t.send(Message::Refuse { reason }).await?;
            }
        }
        Ok(())
    }

    async fn handle<T: Transport>(&mut self, t: &T, s: &mut Session, msg: Message) -> Result<()> {
        match msg {
            Message::State(peer) => self.on_peer_state(t, s, peer).await?,
            Message::Pull { log, from } => self.on_pull(t, s, log, from).await?,
            Message::Stop => s.serving = None,
            Message::Batch(batch) => self.on_batch(t, s, batch).await?,
            Message::Ack { log, seq } => {
                if let Some(serving) = s.serving.as_mut().filter(|sv| sv.log == log) {
                    while serving.inflight.front().is_some_and(|last| *last <= seq) {
                        serving.inflight.pop_front();
                    }
                }
                if log == self.meta.log && seq > self.meta.acked {
                    // Published at once for wait_replicated; recorded (and pruned) in
                    // the database at most every ACK_FLUSH, so a busy application does
                    // not make acknowledgements queue for the write lock.
                    self.backend.publish_ack(log, seq)?;
                    if self.ack_pending.is_none_or(|(_, p)| p < seq) {
                        self.ack_pending = Some((log, seq));
                    }
                }
                // The next batch takes everything committed until now.
                self.refresh(false).await?;
                self.serve(t, s).await?;
            }
            Message::Refuse { reason } => {
                warn!(%reason, "the peer refused our pull");
                s.pulling = false;
                s.refused = s
                    .peer
                    .as_ref()
                    .map(|p| (reason.clone(), self.pull_key(p), Instant::now()));
                self.backend.set_alarm(&reason).await?;
                self.refresh(true).await?;
            }
            Message::Control { id, on } => {
                let result = self.backend.switch_local(on).await;
                self.refresh(true).await?;
                let (ok, message) = match result {
                    Ok(m) => (true, m),
                    Err(e) => (false, chain(&e)),
                };
                info!(on, %message, "the peer switched replication");
                t.send(Message::ControlDone { id, ok, message }).await?;
            }
            Message::ControlDone { id, ok, message } => {
                if let Some(Pending::Control {
                    id: mine, local, ..
                }) = self
                    .pending
                    .take_if(|p| matches!(p, Pending::Control { id: x, .. } if *x == id))
                {
                    let text = if ok {
                        format!("{local}; {message}")
                    } else {
                        format!("{local}; node {}: {message}", 3 - self.meta.node)
                    };
                    self.finish(mine, true, text, None).await;
                }
            }
            Message::SyncRequest {
                id,
                log,
                head,
                schema,
            } => self.on_sync_request(t, s, id, log, head, schema).await?,
            Message::SnapshotBegin {
                id,
                log,
                position,
                tables,
                rows,
            } => {
                if let Some(Pending::SyncRequested { id: mine, .. }) = self
                    .pending
                    .take_if(|p| matches!(p, Pending::SyncRequested { id: x, .. } if *x == id))
                {
                    match self
                        .backend
                        .begin_sync(id, log, position, &tables, rows)
                        .await
                    {
                        Ok(stage) => {
                            info!(id, rows, position, "receiving the peer's snapshot");
                            self.backend
                                .set_progress(Progress {
                                    id,
                                    done: 0,
                                    total: rows,
                                })
                                .await?;
                            self.pending = Some(Pending::SyncReceiving { stage });
                        }
                        Err(e) => self.fail_sync(mine, chain(&e)).await,
                    }
                }
            }
            Message::SnapshotRows { id, table, rows } => {
                if let Some(Pending::SyncReceiving { stage }) =
                    self.pending.as_mut().filter(|p| p.id() == id)
                {
                    match stage.rows(&table, &rows).await {
                        Ok(()) => {
                            let p = Progress {
                                id,
                                done: stage.received,
                                total: stage.total,
                            };
                            self.backend.set_progress(p).await?;
                        }
                        Err(e) => {
                            self.pending = None;
                            self.fail_sync(id, chain(&e)).await;
                        }
                    }
                }
            }
            Message::SnapshotEnd { id, rows } => {
                if let Some(Pending::SyncReceiving { stage }) = self
                    .pending
                    .take_if(|p| p.id() == id && matches!(p, Pending::SyncReceiving { .. }))
                {
                    let peer = 3 - self.meta.node;
                    let token = s.peer.as_ref().and_then(|p| p.token);
                    if let Err(e) = self.fence().admits(peer, token) {
                        // Dropping the stage leaves the database as it was.
                        drop(stage);
                        self.fail_sync(id, chain(&e)).await;
                        return Ok(());
                    }
                    match stage.finish(&self.backend, rows, peer).await {
                        Ok(outcome) => {
                            s.refused = None;
                            s.pulling = false;
                            // The snapshot is committed here: the peer counts its backlog
                            // (and its waiting commits) from the snapshot's position.
                            t.send(Message::Ack {
                                log: outcome.log,
                                seq: outcome.position,
                            })
                            .await?;
                            let file = outcome.file.as_ref().map(|f| f.display().to_string());
                            let mut text =
                                format!("copied {} rows from node {peer}", outcome.copied);
                            match &file {
                                Some(f) => text.push_str(&format!(
                                    "; {} local-only rows saved to {f}",
                                    outcome.saved
                                )),
                                None => text.push_str("; this node had no rows the peer lacked"),
                            }
                            self.finish(
                                id,
                                true,
                                text,
                                Some((file, outcome.saved, outcome.copied)),
                            )
                            .await;
                        }
                        Err(e) => self.fail_sync(id, chain(&e)).await,
                    }
                }
            }
            Message::SyncFailed { id, reason } => {
                if self.pending.as_ref().is_some_and(|p| p.id() == id) {
                    self.pending = None;
                    self.fail_sync(id, format!("node {}: {reason}", 3 - self.meta.node))
                        .await;
                }
            }
        }
        Ok(())
    }

    async fn on_peer_state<T: Transport>(
        &mut self,
        t: &T,
        s: &mut Session,
        peer: NodeState,
    ) -> Result<()> {
        if peer.node == self.meta.node {
            return Err(Error::Protocol(format!(
                "the peer claims to be node {} too",
                peer.node
            )));
        }
        let first = s.peer.is_none();
        let token_changed = s.peer.as_ref().is_some_and(|p| p.token != peer.token);
        let record_due = match &s.peer_recorded {
            Some((last, at)) => {
                !same_but_positions(last, &peer) || at.elapsed() >= Duration::from_secs(1)
            }
            None => true,
        };
        if first {
            info!(node = peer.node, state = %peer.state, writable = peer.writable, "peer connected");
        }
        s.peer = Some(peer.clone());
        if record_due {
            self.peer_record = Some(PeerRecord::from_state(&peer, now_ms()));
            self.flush_peer_record();
            s.peer_recorded = Some((peer.clone(), Instant::now()));
        }
        // A node that was only initialized follows its peer's switch-on.
        if self.meta.state == ReplicationState::Initialized
            && peer.state == ReplicationState::Active
        {
            let text = self.backend.switch_local(true).await?;
            info!(%text, "switched on because the peer is on");
        }
        self.refresh(true).await?;
        if first || token_changed {
            self.update_pull(t, s).await?;
        }
        if token_changed {
            self.serve(t, s).await?;
        }
        Ok(())
    }

    fn pull_key(&self, peer: &NodeState) -> PullKey {
        PullKey {
            applied_log: self.meta.applied_log,
            applied: self.meta.applied,
            peer_log: peer.log,
            peer_floor: peer.floor,
            peer_token: peer.token,
        }
    }

    /// Starts or stops pulling the peer's changelog as the situation asks, and keeps the
    /// local alarm in line with what blocks replication.
    async fn update_pull<T: Transport>(&mut self, t: &T, s: &mut Session) -> Result<()> {
        let Some(peer) = s.peer.clone() else {
            return Ok(());
        };
        let m = &self.meta;
        if let Some((_, key, at)) = &s.refused
            && (*key != self.pull_key(&peer) || at.elapsed() >= RETRY_REFUSED)
        {
            s.refused = None;
        }
        let mut alarm = String::new();
        let on = m.state == ReplicationState::Active && peer.state == ReplicationState::Active;
        if on && m.writable && peer.writable {
            alarm = format!(
                "{}: changes made on either are not replicated; make one node the standby and \
                 run `mp_replication switch-on -S -F from-sync` on it",
                sqlite::BOTH_WRITABLE
            );
        } else if on
            && !m.writable
            && let Err(e) = self.fence().admits(peer.node, peer.token)
        {
            alarm = chain(&e);
        } else if on && peer.schema != self.fingerprint {
            alarm = schema_mismatch(m, &peer);
        } else if on
            && !m.writable
            && m.head > m.acked
            && (peer.writable || peer.head > peer_applied(m, &peer))
        {
            alarm = sqlite::diverged_message(m);
        } else if let Some((reason, _, _)) = &s.refused {
            alarm = reason.clone();
        }
        let want = on && !m.writable && alarm.is_empty();
        if m.state != ReplicationState::Suspended && m.alarm != alarm {
            self.backend.set_alarm(&alarm).await?;
            self.refresh(true).await?;
        }
        if want && !s.pulling {
            let m = &self.meta;
            let (log, from) = match m.applied_log {
                Some(log) => (Some(log), m.applied),
                None => (None, 0),
            };
            debug!(?log, from, "pulling the peer's changelog");
            t.send(Message::Pull { log, from }).await?;
            s.pulling = true;
        } else if !want && s.pulling {
            t.send(Message::Stop).await?;
            s.pulling = false;
        }
        Ok(())
    }

    async fn on_batch<T: Transport>(&mut self, t: &T, s: &mut Session, batch: Batch) -> Result<()> {
        if !s.pulling {
            // Sent before our stop arrived.
            return Ok(());
        }
        // Fenced: checked now, and again in the batch's transaction just before it
        // commits, in case the host raised the floor meanwhile.
        let (peer, token) = s
            .peer
            .as_ref()
            .map_or((3 - self.meta.node, None), |p| (p.node, p.token));
        let fence = self.fence.clone();
        let gate = move || {
            fence
                .as_ref()
                .map_or(Ok(()), |f| f.borrow().admits(peer, token))
        };
        let applied = match gate() {
            Ok(()) => self.backend.apply_batch_gated(&batch, &gate).await,
            Err(e) => Err(e),
        };
        match applied {
            Ok(ApplyOutcome::Applied { last, .. })
            | Ok(ApplyOutcome::Duplicate { applied: last }) => {
                if self.apply_failure.take().is_some() {
                    self.backend.record_apply_failure(None);
                }
                t.send(Message::Ack {
                    log: batch.log,
                    seq: last,
                })
                .await?;
                // The batch's transaction moved exactly these; the next tick re-reads
                // the rest (the commit changed the data version).
                self.meta.applied_log = Some(batch.log);
                self.meta.applied = last;
                return Ok(());
            }
            Err(e @ (Error::Gap { .. } | Error::State(_) | Error::Fenced { .. })) => {
                warn!(error = %chain(&e), "not applying the peer's batch");
                self.backend.set_alarm(&chain(&e)).await?;
                t.send(Message::Stop).await?;
                s.pulling = false;
                if let Some(peer) = &s.peer {
                    s.refused = Some((chain(&e), self.pull_key(peer), Instant::now()));
                }
            }
            Err(e) => {
                // Nothing was applied (the transaction rolled back). The session ends
                // and starts again; the peer learns why from this node's state.
                let alarm = format!(
                    "node {} cannot apply node {}'s changes: {}; replication resumes by itself \
                     once node {} can write its database again",
                    self.meta.node,
                    3 - self.meta.node,
                    chain(&e),
                    self.meta.node
                );
                warn!(%alarm, "applying the peer's batch failed");
                self.backend.record_apply_failure(Some(&alarm));
                self.apply_failure = Some(alarm);
                let _ = self.send_state(t, s, true).await;
                return Err(e);
            }
        }
        self.refresh(true).await?;
        Ok(())
    }

    async fn on_sync_request<T: Transport>(
        &mut self,
        t: &T,
        s: &mut Session,
        id: u64,
        log: u64,
        head: u64,
        schema: String,
    ) -> Result<()> {
        let refuse = if self.meta.state == ReplicationState::Syncing {
            Some(format!(
                "node {} is itself copying data (from-sync)",
                self.meta.node
            ))
        } else if schema != self.fingerprint {
            s.peer
                .as_ref()
                .map(|p| schema_mismatch(&self.meta, p))
                .or(Some("the declared tables differ".into()))
        } else if let Err(e) = self.may_serve(s.peer.as_ref()) {
            Some(chain(&e))
        } else if s.providing.is_some() {
            Some("a snapshot is already being sent".into())
        } else {
            None
        };
        if let Some(reason) = refuse {
            t.send(Message::SyncFailed { id, reason }).await?;
            return Ok(());
        }
        if self.meta.state != ReplicationState::Active {
            let text = self.backend.switch_local(true).await?;
            info!(%text, "switched on for the peer's from-sync");
            self.refresh(true).await?;
        }
        info!(id, "sending a snapshot to the peer");
        let chunk = usize::try_from(self.cfg().batch_bytes)
            .unwrap_or(1 << 20)
            .min(1 << 20);
        let reader = self.backend.start_snapshot(id, log, head, chunk).await?;
        s.providing = Some(reader);
        s.serving = None;
        self.refresh(true).await?;
        Ok(())
    }

    /// Sends batches while the window allows.
    async fn serve<T: Transport>(&mut self, t: &T, s: &mut Session) -> Result<()> {
        let (limit, bytes, window) = {
            let c = self.cfg();
            (
                c.batch_size,
                usize::try_from(c.batch_bytes).unwrap_or(1 << 20),
                c.window,
            )
        };
        if s.serving.is_some()
            && let Err(e) = self.may_serve(s.peer.as_ref())
        {
            warn!(reason = %chain(&e), "stopped streaming to the peer");
            s.serving = None;
            t.send(Message::Refuse { reason: chain(&e) }).await?;
            return Ok(());
        }
        let Some(serving) = s.serving.as_mut() else {
            return Ok(());
        };
        if serving.log != self.meta.log {
            s.serving = None;
            return Ok(());
        }
        while serving.inflight.len() < usize::try_from(window).unwrap_or(1)
            && serving.sent < self.meta.head
        {
            // Group commit: while a batch is on its way, a partial one waits for its
            // acknowledgement and then goes with everything committed meanwhile, so
            // that busy writers share batches (a full batch is sent at once).
            if !serving.inflight.is_empty() && self.meta.head - serving.sent < u64::from(limit) {
                break;
            }
            let changes = self
                .backend
                .read_changes(serving.sent, limit, bytes)
                .await?;
            let Some(last) = changes.last().map(|c| c.seq) else {
                break;
            };
            let batch = Batch {
                log: serving.log,
                prev: serving.sent,
                changes,
            };
            t.send(Message::Batch(batch)).await?;
            serving.sent = last;
            serving.inflight.push_back(last);
        }
        Ok(())
    }

    async fn send_state<T: Transport>(
        &mut self,
        t: &T,
        s: &mut Session,
        force: bool,
    ) -> Result<()> {
        let token = self.fence().mine;
        let m = &self.meta;
        let mut state = NodeState {
            node: m.node,
            site: m.site,
            log: m.log,
            head: m.head,
            floor: m.floor,
            acked: m.acked,
            applied_log: m.applied_log,
            applied: m.applied,
            writable: m.writable,
            state: m.state,
            schema: self.fingerprint.clone(),
            alarm: match &self.apply_failure {
                Some(failure) if m.alarm.is_empty() => failure.clone(),
                _ => m.alarm.clone(),
            },
            lag_ms: None,
            token,
        };
        // The lag is looked up only for a state that goes out (a query each time).
        let due = match &s.last_state {
            None => true,
            Some((last, at)) => {
                !same_but_positions(last, &state)
                    || (positions(last) != positions(&state) && at.elapsed() >= STATE_EVERY)
                    || at.elapsed() >= Duration::from_secs(1)
            }
        };
        if due || force {
            if m.writable && m.head > m.acked {
                state.lag_ms = self
                    .backend
                    .oldest_unacked_ms(m.acked)
                    .await?
                    .map(|ts| now_ms().saturating_sub(ts));
            }
            t.send(Message::State(state.clone())).await?;
            s.last_state = Some((state, Instant::now()));
        }
        Ok(())
    }
}

/// The position of the peer's changelog applied on this node (0 if it follows another).
fn peer_applied(m: &Meta, peer: &NodeState) -> u64 {
    if m.applied_log == Some(peer.log) {
        m.applied
    } else {
        0
    }
}

/// A state's positions.
fn positions(s: &NodeState) -> (u64, u64, u64, u64) {
    (s.head, s.floor, s.acked, s.applied)
}

/// Whether two states differ at most in their positions and lag.
fn same_but_positions(a: &NodeState, b: &NodeState) -> bool {
    let strip = |s: &NodeState| NodeState {
        head: 0,
        floor: 0,
        acked: 0,
        applied: 0,
        lag_ms: None,
        ..s.clone()
    };
    strip(a) == strip(b)
}

fn schema_mismatch(m: &Meta, peer: &NodeState) -> String {
    format!(
        "the declared tables differ between node {} and node {} (schema {} vs {}); \
         declare the same tables and columns on both and run `mp_replication init` again",
        m.node,
        peer.node,
        if m.schema.is_empty() { "?" } else { &m.schema },
        peer.schema
    )
}

fn empty_record(node: Option<u8>) -> PeerRecord {
    PeerRecord {
        connected: false,
        at_ms: now_ms(),
        error: None,
        node,
        site: None,
        head: None,
        applied: None,
        writable: None,
        state: None,
        alarm: None,
        lag_ms: None,
        last_seen_ms: None,
    }
}

/// Resolves when the fence changes; never without one or once its sender is gone (the
/// last fence then stays in force).
async fn fence_changed(fence: &mut Option<watch::Receiver<Fence>>) {
    match fence {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

async fn woken(wake: Option<&WakeSocket>) {
    match wake {
        Some(w) => w.woken().await,
        None => std::future::pending().await,
    }
}

async fn next_snapshot(reader: &mut Option<SnapshotReader>) -> Option<Result<Message>> {
    match reader.as_mut() {
        Some(r) => r.next().await,
        None => std::future::pending().await,
    }
}

async fn data_version(conn: &mut SqliteConnection) -> Result<i64> {
    sqlx::query_scalar("PRAGMA data_version")
        .fetch_one(&mut *conn)
        .await
        .map_err(Error::db("polling the database for changes"))
}
