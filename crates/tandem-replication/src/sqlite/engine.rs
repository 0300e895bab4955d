//! The IO shell of the replication service: it owns the database connections, the
//! background writes, the snapshot being sent or received and the peer session's
//! transport, feeds what happens to the [`Protocol`] and carries out the
//! [`Command`]s it answers with, feeding their results back, depth first.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use sqlx::{ConnectOptions, SqliteConnection};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::protocol::{
    Applied, Command, End, Input, Limits, Now, Protocol, SnapshotItem, Switch, SyncDone,
    sync_interrupted,
};
use super::service::Transport;
use crate::error::{Error, Result, chain};
use crate::fence::Fence;
use crate::sqlite::{
    self, ApplyOutcome, Meta, PeerRecord, SnapshotReader, SqliteBackend, SyncStage,
};
use crate::status::ReplicationState;
use crate::util::{WakeSocket, WalWatch, mono_ns, now_ms};
use crate::wire::{self, Batch, Message};

/// Batches merged into one transaction at most (more than the window in practice).
const MAX_COALESCED: usize = 64;
/// How long the service waits after the database's log first changed before it looks
/// for the new changes, so that the commits of that time go in one batch (one apply,
/// one fsync and one acknowledgement on the standby) rather than one batch each.
const SHIP_COALESCE: Duration = Duration::from_millis(2);

/// State that lives across sessions: the protocol and what carries out its commands.
pub(super) struct Engine {
    backend: Arc<SqliteBackend>,
    watch: SqliteConnection,
    data_version: i64,
    protocol: Protocol,
    started: Instant,
    ack_task: Option<JoinHandle<()>>,
    /// A peer record not yet written, and the write in progress.
    peer_record: Option<PeerRecord>,
    peer_task: Option<JoinHandle<()>>,
    /// Wake-ups from commits waiting in `wait_replicated` (none: poll only).
    wake: Option<WakeSocket>,
    /// Changes of the database's write-ahead log (none: poll only).
    wal: Option<WalWatch>,
    /// When to look for the changes the log's last change announced.
    wal_due: Option<Instant>,
    /// The witness's fencing tokens (none: no witness, nothing is fenced).
    fence: Option<watch::Receiver<Fence>>,
    /// The snapshot being sent.
    snapshot: Option<SnapshotReader>,
    /// The snapshot being received.
    stage: Option<SyncStage>,
    /// Why the last batch could not be applied, for the session's end.
    apply_error: Option<Error>,
    /// The latest look at the meta table: when it began ([`mono_ns`]) and the
    /// changelog it found current if this node was writable with replication on.
    looked: (u64, Option<u64>),
}

impl Engine {
    pub(super) async fn start(
        backend: Arc<SqliteBackend>,
        fence: Option<watch::Receiver<Fence>>,
    ) -> Result<Engine> {
        let path = backend.database_path();
        let mut watch = sqlite::connect_options(&path)
            .connect()
            .await
            .map_err(Error::db(format!("connecting to {}", path.display())))?;
        let data_version = data_version(&mut watch).await?;
        let tables = backend.reload_tables().await?;
        let mut meta = backend.meta().await?;
        if sync_interrupted(&meta, now_ms()) {
            warn!("a from-sync was interrupted; replication state is now Failed (run it again)");
            backend.set_state(ReplicationState::Failed).await?;
            meta = backend.meta().await?;
        }
        if meta.schema != tables.fingerprint {
            warn!("the declared tables changed since `init`; run `mp_replication init` again");
        }
        let started = Instant::now();
        let now = Now {
            mono: started.elapsed(),
            wall_ms: now_ms(),
            fence: fence.as_ref().map(|f| *f.borrow()),
        };
        let protocol = Protocol::new(meta, tables.fingerprint.clone(), limits(&backend), now);
        Ok(Engine {
            wake: WakeSocket::bind(&backend.wake_path()),
            wal: WalWatch::new(&path),
            wal_due: None,
            backend,
            watch,
            data_version,
            protocol,
            started,
            ack_task: None,
            peer_record: None,
            peer_task: None,
            fence,
            snapshot: None,
            stage: None,
            apply_error: None,
            looked: (0, None),
        })
    }

    fn now(&self) -> Now {
        Now {
            mono: self.started.elapsed(),
            wall_ms: now_ms(),
            fence: self.fence.as_ref().map(|f| *f.borrow()),
        }
    }

    fn ack_busy(&self) -> bool {
        self.ack_task.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Hands `input` to the protocol and carries out its commands, and those that
    /// their results lead to, in order.
    async fn feed<T: Transport>(&mut self, t: Option<&T>, input: Input) -> Result<()> {
        let now = self.now();
        let mut queue: VecDeque<Command> = self.protocol.handle(input, now).into();
        while let Some(command) = queue.pop_front() {
            if let Some(result) = self.execute(t, command).await? {
                let now = self.now();
                for command in self.protocol.handle(result, now).into_iter().rev() {
                    queue.push_front(command);
                }
            }
        }
        Ok(())
    }

    async fn execute<T: Transport>(
        &mut self,
        t: Option<&T>,
        command: Command,
    ) -> Result<Option<Input>> {
        match command {
            Command::Send(message) => send(t, message).await.map(|()| None),
            Command::SendState {
                mut state,
                lag_after,
                best_effort,
            } => {
                let sent = async {
                    if let Some(acked) = lag_after {
                        state.lag_ms = self
                            .backend
                            .oldest_unacked_ms(acked)
                            .await?
                            .map(|ts| now_ms().saturating_sub(ts));
                    }
                    send(t, Message::State(state)).await
                }
                .await;
                if !best_effort {
                    sent?;
                }
                Ok(None)
            }
            Command::Refresh {
                force,
                tolerant,
                then,
            } => match self.refresh(force).await {
                Ok((meta, fingerprint)) => Ok(Some(Input::Refreshed {
                    meta,
                    fingerprint,
                    then,
                })),
                Err(_) if tolerant => Ok(Some(Input::Refreshed {
                    meta: None,
                    fingerprint: None,
                    then,
                })),
                Err(e) => Err(e),
            },
            Command::End(End::Protocol(text)) => Err(Error::Protocol(text)),
            Command::End(End::ApplyFailed) => Err(self
                .apply_error
                .take()
                .unwrap_or_else(|| Error::State("applying the peer's batch failed".into()))),
            other => self.execute_db(other).await,
        }
    }

    /// The commands that read or write the database.
    async fn execute_db(&mut self, command: Command) -> Result<Option<Input>> {
        let b = Arc::clone(&self.backend);
        match command {
            Command::ReadChanges {
                after,
                limit,
                bytes,
                then,
            } => {
                // On the service's own connection: no wait for the pool.
                let tables = b.tables().await?;
                let changes =
                    sqlite::read_changes_on(&mut self.watch, &tables, after, limit, bytes).await?;
                return Ok(Some(Input::Changes { changes, then }));
            }
            Command::CheckPull { log, from, puller } => {
                let check = b.check_pull(log, from, puller).await?;
                return Ok(Some(Input::PullChecked { from, check }));
            }
            Command::SwitchLocal { on, why, then } => {
                let result = match b.switch_local(on).await {
                    Ok(text) => Ok(text),
                    Err(e) if matches!(why, Switch::Peer { .. }) => Err(chain(&e)),
                    Err(e) => return Err(e),
                };
                return Ok(Some(Input::Switched { why, result, then }));
            }
            Command::ApplyBatch { batch, peer, token } => {
                return Ok(Some(self.apply(batch, peer, token).await));
            }
            Command::SetAlarm(alarm) => b.set_alarm(&alarm).await?,
            Command::SetState { state, tolerant } => {
                if let Err(e) = b.set_state(state).await {
                    if !tolerant {
                        return Err(e);
                    }
                    warn!(error = %chain(&e), "recording the failed sync");
                }
            }
            Command::Suspend(alarm) => b.suspend(&alarm).await?,
            Command::SetProgress(progress) => b.set_progress(progress).await?,
            Command::FinishRequest(done) => {
                if let Err(e) = b.finish_request(&done).await {
                    warn!(error = %chain(&e), "recording a request result failed");
                }
            }
            Command::RecordApplyFailure(failure) => b.record_apply_failure(failure.as_deref()),
            other => return self.execute_records(other).await,
        }
        Ok(None)
    }

    /// Acknowledgements, peer records, and the snapshots sent and received.
    async fn execute_records(&mut self, command: Command) -> Result<Option<Input>> {
        let b = Arc::clone(&self.backend);
        match command {
            Command::ShipSoon => {
                self.wal_due
                    .get_or_insert_with(|| Instant::now() + SHIP_COALESCE);
            }
            Command::PublishAck { log, seq, received } => {
                let looked = match self.looked {
                    (at, Some(current)) if current == log => at,
                    _ => 0,
                };
                b.publish_ack(log, seq, received, looked)?;
            }
            Command::RecordAck { log, seq, wait } => {
                return Ok(self.record_ack(log, seq, wait).await);
            }
            Command::RecordPeer { record, wait: true } => {
                if let Err(e) = b.record_peer(&record).await {
                    warn!(error = %chain(&e), "recording the peer state failed");
                }
            }
            Command::RecordPeer {
                record,
                wait: false,
            } => {
                self.peer_record = Some(record);
                self.flush_peer_record();
            }
            Command::SettlePeerRecord => self.settle_peer_record().await,
            Command::FlushPeerRecord => self.flush_peer_record(),
            Command::StartSnapshot {
                id,
                log,
                head,
                chunk,
            } => self.snapshot = Some(b.start_snapshot(id, log, head, chunk).await?),
            Command::StopSnapshot => self.snapshot = None,
            Command::DropSync => self.stage = None,
            other => return Ok(self.execute_sync(other).await),
        }
        Ok(None)
    }

    /// The snapshot this node receives.
    async fn execute_sync(&mut self, command: Command) -> Option<Input> {
        let b = Arc::clone(&self.backend);
        match command {
            Command::BeginSync {
                id,
                log,
                position,
                tables,
                rows,
            } => {
                let result = match b.begin_sync(id, log, position, &tables, rows).await {
                    Ok(stage) => {
                        self.stage = Some(stage);
                        Ok(())
                    }
                    Err(e) => Err(chain(&e)),
                };
                Some(Input::SyncBegun {
                    id,
                    rows,
                    position,
                    result,
                })
            }
            Command::StoreRows { id, table, rows } => {
                let result = match self.stage.as_mut().filter(|s| s.id == id) {
                    Some(stage) => match stage.rows(&table, &rows).await {
                        Ok(()) => Ok((stage.received, stage.total)),
                        Err(e) => Err(chain(&e)),
                    },
                    None => Err("no snapshot is being received".to_owned()),
                };
                Some(Input::RowsStored { id, result })
            }
            Command::FinishSync { id, rows, peer } => {
                let result = match self.stage.take().filter(|s| s.id == id) {
                    Some(stage) => match stage.finish(&b, rows, peer).await {
                        Ok(o) => Ok(SyncDone {
                            log: o.log,
                            position: o.position,
                            copied: o.copied,
                            saved: o.saved,
                            file: o.file.as_ref().map(|f| f.display().to_string()),
                        }),
                        Err(e) => Err(chain(&e)),
                    },
                    None => Err("no snapshot is being received".to_owned()),
                };
                Some(Input::SyncFinished { id, result })
            }
            other => {
                debug!(?other, "a command the shell does not know");
                None
            }
        }
    }

    /// Applies a batch while the fence admits the peer's token: checked now, and
    /// again in the batch's transaction just before it commits, in case the host
    /// raised the floor meanwhile.
    async fn apply(
        &mut self,
        batch: Batch,
        peer: tandem_core::NodeId,
        token: Option<u64>,
    ) -> Input {
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
        let result = match applied {
            Ok(ApplyOutcome::Applied { last, .. } | ApplyOutcome::Duplicate { applied: last }) => {
                Applied::Upto(last)
            }
            Err(e @ (Error::Gap { .. } | Error::State(_) | Error::Fenced { .. })) => {
                Applied::Refused(chain(&e))
            }
            Err(e) => {
                let text = chain(&e);
                self.apply_error = Some(e);
                Applied::Failed(text)
            }
        };
        Input::Applied {
            log: batch.log,
            result,
        }
    }

    /// Re-reads the meta table if anything was committed since the last look (one
    /// statement on the watch connection, which asks and reads at once), and the
    /// declared tables if the recorded fingerprint is not theirs.
    async fn refresh(&mut self, force: bool) -> Result<(Option<Box<Meta>>, Option<String>)> {
        let seen = (!force).then_some(self.data_version);
        // Taken before the read, so the read saw the state at this time or later.
        let at = mono_ns();
        let (version, meta) = sqlite::read_meta_if_changed(&mut self.watch, seen).await?;
        self.data_version = version;
        let Some(mut meta) = meta else {
            // Nothing was committed since the last look: what it found still holds.
            self.looked.0 = at;
            return Ok((None, None));
        };
        let fit = meta.writable && meta.state == ReplicationState::Active;
        self.looked = (at, fit.then_some(meta.log));
        self.backend.with_published_ack(&mut meta);
        let mut fingerprint = None;
        if meta.schema != self.protocol.fingerprint() {
            fingerprint = Some(self.backend.reload_tables().await?.fingerprint.clone());
        }
        Ok((Some(Box::new(meta)), fingerprint))
    }

    /// Records an acknowledgement now (after the write going on) or in the background.
    async fn record_ack(&mut self, log: u64, seq: u64, wait: bool) -> Option<Input> {
        if wait {
            if let Some(task) = self.ack_task.take() {
                let _ = task.await;
            }
            if let Err(e) = self.backend.record_ack(log, seq).await {
                warn!(error = %chain(&e), "recording an acknowledgement failed");
                return Some(Input::AckUnrecorded { log, seq });
            }
            return None;
        }
        // In the background: with a busy application the write lock can take a
        // while, and the session must not wait for it.
        let backend = Arc::clone(&self.backend);
        self.ack_task = Some(tokio::spawn(async move {
            if let Err(e) = backend.record_ack(log, seq).await {
                warn!(error = %chain(&e), "recording an acknowledgement failed");
            }
        }));
        None
    }

    /// Drops a pending peer record and waits for one being written, so that a record
    /// written now is not overwritten by an older one.
    async fn settle_peer_record(&mut self) {
        self.peer_record = None;
        if let Some(task) = self.peer_task.take() {
            let _ = task.await;
        }
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

    /// Runs one session until it fails. New changes are shipped when the database's
    /// log changes ([`SHIP_COALESCE`] later) or a waiter wakes the service; the poll
    /// (`poll_ms`) is for housekeeping and for writes the log's watch cannot see. It
    /// keeps its pace whatever else happens, so messages arriving more often than it
    /// never hold housekeeping (recording acknowledgements) back.
    pub(super) async fn session<T: Transport>(&mut self, t: &T) -> Result<()> {
        self.feed(Some(t), Input::SessionUp).await?;
        let poll = self.backend.settings().replication.poll_interval();
        let mut housekeeping = tokio::time::interval(poll);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let providing = self.snapshot.is_some();
            tokio::select! {
                msg = t.recv() => {
                    let msg = msg?;
                    self.received(t, msg).await?;
                }
                () = fence_changed(&mut self.fence) => {
                    self.feed(Some(t), Input::FenceChanged).await?;
                }
                () = woken(self.wake.as_ref()) => {
                    let ack_busy = self.ack_busy();
                    self.feed(Some(t), Input::Woken { ack_busy }).await?;
                }
                () = wal_changed(self.wal.as_ref()), if self.wal_due.is_none() => {
                    self.wal_due = Some(Instant::now() + SHIP_COALESCE);
                }
                () = until(self.wal_due) => {
                    self.wal_due = None;
                    let ack_busy = self.ack_busy();
                    self.feed(Some(t), Input::Committed { ack_busy }).await?;
                }
                item = next_snapshot(&mut self.snapshot), if providing => {
                    let item = match item {
                        Some(Ok(msg)) => SnapshotItem::Message(msg),
                        Some(Err(e)) => SnapshotItem::Failed(chain(&e)),
                        None => SnapshotItem::Done,
                    };
                    self.feed(Some(t), Input::Snapshot(item)).await?;
                }
                _ = housekeeping.tick() => self.tick(Some(t)).await?,
            }
        }
    }

    /// Handles a received message. Batches are applied with group commit: the batches
    /// that arrived meanwhile (the transport already holds them) are taken too, merged
    /// ([`wire::coalesce`]) and applied in one transaction with one acknowledgement, so a
    /// standby that falls behind catches up in fewer, larger commits (one fsync each).
    async fn received<T: Transport>(&mut self, t: &T, msg: Message) -> Result<()> {
        let mut next = Some(msg);
        while let Some(msg) = next.take() {
            let Message::Batch(batch) = msg else {
                self.feed(Some(t), Input::Received(msg)).await?;
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
                self.feed(Some(t), Input::Received(Message::Batch(batch)))
                    .await?;
            }
        }
        Ok(())
    }

    /// The session ended (`reason`: its error, none: closed).
    pub(super) async fn session_lost<T: Transport>(&mut self, reason: Option<String>) {
        self.snapshot = None;
        if let Err(e) = self.feed::<T>(None, Input::SessionLost(reason)).await {
            warn!(error = %chain(&e), "recording the lost session failed");
        }
    }

    /// The peer could not be reached.
    pub(super) async fn record_unreachable<T: Transport>(&mut self, text: String) {
        if let Err(e) = self.feed::<T>(None, Input::Unreachable(text)).await {
            warn!(error = %chain(&e), "recording the peer state failed");
        }
    }

    /// Housekeeping and streaming: requests, the backlog limit, pulls, batches, state.
    pub(super) async fn tick<T: Transport>(&mut self, t: Option<&T>) -> Result<()> {
        let ack_busy = self.ack_busy();
        self.feed(t, Input::Tick { ack_busy }).await
    }
}

/// The protocol's limits from the backend's settings.
fn limits(backend: &SqliteBackend) -> Limits {
    let c = &backend.settings().replication;
    let bytes = usize::try_from(c.batch_bytes).unwrap_or(1 << 20);
    Limits {
        window: usize::try_from(c.window).unwrap_or(1),
        batch_size: c.batch_size,
        batch_bytes: bytes,
        chunk: bytes.min(1 << 20),
        max_backlog: c.max_backlog,
    }
}

/// Sends a message on the session, if there is one (the protocol sends only in one).
async fn send<T: Transport>(t: Option<&T>, message: Message) -> Result<()> {
    match t {
        Some(t) => t.send(message).await,
        None => {
            debug!(?message, "no session to send on");
            Ok(())
        }
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

async fn wal_changed(wal: Option<&WalWatch>) {
    match wal {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

/// Resolves at `at`; never without one.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
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
