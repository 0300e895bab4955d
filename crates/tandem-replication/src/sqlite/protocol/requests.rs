//! Housekeeping and the control plane: ticks, acknowledgements to record, the
//! backlog limit, the requests that commands leave in the meta table (switch on or
//! off, from-sync), the snapshot this node receives, and the peer link's records.

use tracing::{info, warn};

use super::{
    ACK_FLUSH, CONTROL_WAIT, Command, Flow, Input, Pending, Program, Protocol, Step, Switch,
    SyncDone, empty_record, pause_on_last, refresh, schema_mismatch, steps,
};
use crate::error::chain;
use crate::sqlite::{PeerRecord, Progress, RequestDone};
use crate::status::ReplicationState;
use crate::wire::Message;

impl Protocol {
    /// Housekeeping and streaming: requests, the backlog limit, pulls, batches, state.
    pub(super) fn tick(&mut self, ack_busy: bool, out: &mut Vec<Command>) {
        let mut program = steps([
            Step::Refresh { force: false },
            Step::FlushAck { busy: ack_busy },
            Step::FlushPeer,
            Step::Backlog,
            Step::Request,
            Step::Pending,
        ]);
        if self.session.is_some() {
            program.extend([Step::Pull, Step::Serve, Step::State { force: false }]);
        }
        self.run(program, out);
    }

    /// Records the newest acknowledgement in the background, at most every
    /// [`ACK_FLUSH`] and one write at a time.
    pub(super) fn flush_ack(&mut self, busy: bool, out: &mut Vec<Command>) {
        let Some((log, seq)) = self.ack_pending else {
            return;
        };
        if self.now.mono.saturating_sub(self.ack_flushed) >= ACK_FLUSH && !busy {
            // In the background: with a busy application the write lock can take a
            // while, and the session must not wait for it.
            out.push(Command::RecordAck {
                log,
                seq,
                wait: false,
            });
            self.ack_pending = None;
            self.ack_flushed = self.now.mono;
        }
    }

    pub(super) fn check_backlog(&mut self, out: &mut Vec<Command>) -> Flow {
        let m = &self.meta;
        let limit = self.limits.max_backlog;
        // Counted from the floor too: after a suspension the last acknowledgement is
        // older than the dropped changelog, and counting from it suspended again the
        // moment a from-sync switched replication back on.
        if m.writable && m.state == ReplicationState::Active && m.backlog() > limit {
            let alarm = format!(
                "replication switched itself off: {} changes waited for node {}, past max_backlog = {limit}; \
                 the changelog was dropped to protect this node's disk; bring node {} back and run \
                 `mp_replication switch-on -S -F from-sync` on it",
                m.backlog(),
                m.node.peer().get(),
                m.node.peer().get()
            );
            warn!(%alarm, "replication suspended");
            out.push(Command::Suspend(alarm));
            return Flow::Wait(refresh(true));
        }
        Flow::Next
    }

    /// Picks up a new request from a command.
    pub(super) fn take_request(&mut self, out: &mut Vec<Command>) -> Flow {
        let Some(r) = self.meta.request.clone() else {
            return Flow::Next;
        };
        let done = self.meta.request_done.as_ref().map_or(0, |d| d.id);
        if r.id <= done || self.pending.as_ref().is_some_and(|p| p.id() >= r.id) {
            return Flow::Next;
        }
        if let Some(p) = self.pending.take() {
            self.drop_pending(p, "replaced by a newer request", out);
        }
        if r.deadline_ms <= self.now.wall_ms {
            let text = "the request expired before the service took it";
            self.finish(r.id, false, text.into(), None, out);
            return pause_on_last(out);
        }
        info!(
            id = r.id,
            on = r.on,
            sync = r.sync,
            "request from a command"
        );
        if !r.sync {
            return Flow::Wait(Command::SwitchLocal {
                on: r.on,
                why: Switch::Request { id: r.id, on: r.on },
                then: Program::new(),
            });
        }
        if self.meta.writable {
            let text = format!(
                "node {} is writable (the active node); from-sync needs it to be the standby",
                self.meta.node
            );
            self.finish(r.id, false, text, None, out);
            return pause_on_last(out);
        }
        out.push(Command::SetState {
            state: ReplicationState::Syncing,
            tolerant: false,
        });
        self.pending = Some(Pending::SyncWaiting {
            id: r.id,
            deadline_ms: r.deadline_ms,
        });
        Flow::Wait(refresh(true))
    }

    /// Ends a pending request that a newer one replaces.
    fn drop_pending(&mut self, p: Pending, why: &str, out: &mut Vec<Command>) {
        if p.is_sync() {
            self.fail_sync(p.id(), why.into(), out);
            if matches!(p, Pending::SyncReceiving { .. }) {
                out.push(Command::DropSync);
            }
        } else {
            self.finish(p.id(), false, why.into(), None, out);
        }
    }

    /// A request's local switch is done: ask the peer to switch too, or finish if
    /// there is no peer.
    pub(super) fn control(
        &mut self,
        id: u64,
        on: bool,
        local: String,
        out: &mut Vec<Command>,
    ) -> Flow {
        if self.session.is_some() {
            out.push(Command::Send(Message::Control { id, on }));
            self.pending = Some(Pending::Control {
                id,
                local,
                until: self.now.mono + CONTROL_WAIT,
            });
            return Flow::Next;
        }
        let peer = self.peer_node();
        let note = if on {
            format!("node {peer} is not connected; it switches on when it connects")
        } else {
            format!("node {peer} is not connected; switch it off there too if it should stay off")
        };
        self.finish(id, true, format!("{local}; {note}"), None, out);
        pause_on_last(out)
    }

    pub(super) fn check_pending(&mut self, out: &mut Vec<Command>) -> Flow {
        let now = self.now;
        let peer = self.peer_node();
        match self.pending.take() {
            Some(Pending::Control { id, local, until }) if now.mono >= until => {
                let msg = format!("{local}; node {peer} did not answer");
                self.finish(id, true, msg, None, out);
            }
            Some(Pending::SyncWaiting { id, deadline_ms }) => {
                self.sync_waiting(id, deadline_ms, out);
            }
            Some(Pending::SyncRequested { id, deadline_ms }) if deadline_ms <= now.wall_ms => {
                let why = format!("node {peer} did not start the snapshot in time");
                self.fail_sync(id, why, out);
            }
            other => self.pending = other,
        }
        pause_on_last(out)
    }

    /// A from-sync waits for the peer: request the snapshot once it is connected and
    /// fit, fail if it is not by the deadline.
    fn sync_waiting(&mut self, id: u64, deadline_ms: u64, out: &mut Vec<Command>) {
        let peer = self.session.as_ref().and_then(|s| s.peer.clone());
        match peer {
            Some(peer) => {
                if peer.schema != self.fingerprint {
                    let why = schema_mismatch(&self.meta, &peer);
                    self.fail_sync(id, why, out);
                    return;
                }
                if let Err(e) = self.fence().admits(self.peer_node(), peer.token) {
                    self.fail_sync(id, chain(&e), out);
                    return;
                }
                info!(
                    id,
                    peer = peer.node.get(),
                    "requesting a snapshot from the peer"
                );
                out.push(Command::Send(Message::SyncRequest {
                    id,
                    log: self.meta.log,
                    head: self.meta.head,
                    schema: self.fingerprint.clone(),
                }));
                self.pending = Some(Pending::SyncRequested { id, deadline_ms });
            }
            None if deadline_ms <= self.now.wall_ms => {
                let why = self
                    .meta
                    .peer
                    .as_ref()
                    .and_then(|p| p.error.clone())
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                let text = format!("node {} is not connected{why}", self.peer_node());
                self.fail_sync(id, text, out);
            }
            None => self.pending = Some(Pending::SyncWaiting { id, deadline_ms }),
        }
    }

    /// Records a request's result, then re-reads the meta table (a failure of either
    /// is logged only).
    pub(super) fn finish(
        &mut self,
        id: u64,
        ok: bool,
        message: String,
        extra: Option<(Option<String>, u64, u64)>,
        out: &mut Vec<Command>,
    ) {
        let (file, saved_rows, copied_rows) = extra.unwrap_or((None, 0, 0));
        if ok {
            info!(id, %message, "request done");
        } else {
            warn!(id, %message, "request failed");
        }
        out.push(Command::FinishRequest(RequestDone {
            id,
            ok,
            message,
            file,
            saved_rows,
            copied_rows,
        }));
        out.push(Command::Refresh {
            force: true,
            tolerant: true,
            then: Program::new(),
        });
    }

    pub(super) fn fail_sync(&mut self, id: u64, reason: String, out: &mut Vec<Command>) {
        out.push(Command::SetState {
            state: ReplicationState::Failed,
            tolerant: true,
        });
        self.finish(id, false, format!("from-sync failed: {reason}"), None, out);
    }

    /// The session ended: record the last acknowledgement, end what waited on the
    /// peer, and record the link as lost.
    pub(super) fn session_lost(&mut self, reason: Option<String>, out: &mut Vec<Command>) {
        out.push(Command::SettlePeerRecord);
        if let Some((log, seq)) = self.ack_pending.take() {
            out.push(Command::RecordAck {
                log,
                seq,
                wait: true,
            });
        }
        let reason = reason.unwrap_or_else(|| "the peer link closed".to_owned());
        let peer = self.peer_node();
        match self.pending.take() {
            Some(Pending::Control { id, local, .. }) => {
                let msg = format!("{local}; the peer link was lost before node {peer} answered");
                self.finish(id, true, msg, None, out);
            }
            Some(p @ Pending::SyncWaiting { .. }) => self.pending = Some(p),
            Some(p) => {
                let why = format!("the peer link was lost during the sync: {reason}");
                self.drop_pending(p, &why, out);
            }
            None => {}
        }
        self.session = None;
        let program = steps([Step::RecordLost { reason }]);
        match out.pop() {
            // Recorded once the request's result is (the record keeps what was read).
            Some(Command::Refresh {
                force, tolerant, ..
            }) => out.push(Command::Refresh {
                force,
                tolerant,
                then: program,
            }),
            Some(other) => {
                out.push(other);
                self.run(program, out);
            }
            None => self.run(program, out),
        }
    }

    pub(super) fn record_lost(&mut self, reason: String, out: &mut Vec<Command>) {
        let now = self.now.wall_ms;
        let record = PeerRecord {
            connected: false,
            at_ms: now,
            error: Some(reason),
            last_seen_ms: Some(now),
            ..self
                .meta
                .peer
                .clone()
                .unwrap_or_else(|| empty_record(None, now))
        };
        out.push(Command::RecordPeer { record, wait: true });
    }

    /// The peer could not be reached: record why, unless the record says so already.
    pub(super) fn unreachable(&mut self, text: String, out: &mut Vec<Command>) {
        out.push(Command::SettlePeerRecord);
        let previous = self.meta.peer.clone();
        if previous
            .as_ref()
            .is_some_and(|p| !p.connected && p.error.as_deref() == Some(&text))
        {
            return;
        }
        let now = self.now.wall_ms;
        let record = PeerRecord {
            connected: false,
            at_ms: now,
            error: Some(text),
            ..previous.unwrap_or_else(|| empty_record(None, now))
        };
        out.push(Command::RecordPeer { record, wait: true });
        out.push(Command::Refresh {
            force: true,
            tolerant: true,
            then: Program::new(),
        });
    }

    /// The snapshot messages of a from-sync this node receives.
    pub(super) fn on_snapshot_message(&mut self, message: Message, out: &mut Vec<Command>) {
        match message {
            Message::SnapshotBegin {
                id,
                log,
                position,
                tables,
                rows,
            } => {
                let requested = self
                    .pending
                    .take_if(|p| matches!(p, Pending::SyncRequested { id: x, .. } if *x == id))
                    .is_some();
                if requested {
                    out.push(Command::BeginSync {
                        id,
                        log,
                        position,
                        tables,
                        rows,
                    });
                }
            }
            Message::SnapshotRows { id, table, rows } if self.receiving(id) => {
                out.push(Command::StoreRows { id, table, rows });
            }
            Message::SnapshotEnd { id, rows } => self.on_snapshot_end(id, rows, out),
            Message::SyncFailed { id, reason } => {
                if let Some(p) = self.pending.take_if(|p| p.id() == id) {
                    if matches!(p, Pending::SyncReceiving { .. }) {
                        out.push(Command::DropSync);
                    }
                    let why = format!("node {}: {reason}", self.peer_node());
                    self.fail_sync(id, why, out);
                }
            }
            _ => {}
        }
    }

    fn receiving(&self, id: u64) -> bool {
        matches!(self.pending, Some(Pending::SyncReceiving { id: x }) if x == id)
    }

    fn on_snapshot_end(&mut self, id: u64, rows: u64, out: &mut Vec<Command>) {
        if !self.receiving(id) {
            return;
        }
        self.pending = None;
        let peer = self.peer_node();
        let token = self
            .session
            .as_ref()
            .and_then(|s| s.peer.as_ref())
            .and_then(|p| p.token);
        if let Err(e) = self.fence().admits(peer, token) {
            // Dropping the stage leaves the database as it was.
            out.push(Command::DropSync);
            self.fail_sync(id, chain(&e), out);
            return;
        }
        out.push(Command::FinishSync { id, rows, peer });
    }

    /// The results of the commands of a from-sync, and an acknowledgement that could
    /// not be recorded.
    pub(super) fn sync_result(&mut self, input: Input, out: &mut Vec<Command>) {
        match input {
            Input::SyncBegun {
                id,
                rows,
                position,
                result,
            } => match result {
                Ok(()) => {
                    info!(id, rows, position, "receiving the peer's snapshot");
                    out.push(Command::SetProgress(Progress {
                        id,
                        done: 0,
                        total: rows,
                    }));
                    self.pending = Some(Pending::SyncReceiving { id });
                }
                Err(e) => self.fail_sync(id, e, out),
            },
            Input::RowsStored { id, result } => {
                if !self.receiving(id) {
                    return;
                }
                match result {
                    Ok((done, total)) => {
                        out.push(Command::SetProgress(Progress { id, done, total }))
                    }
                    Err(e) => {
                        self.pending = None;
                        out.push(Command::DropSync);
                        self.fail_sync(id, e, out);
                    }
                }
            }
            Input::SyncFinished { id, result } => match result {
                Ok(done) => self.sync_done(id, done, out),
                Err(e) => self.fail_sync(id, e, out),
            },
            Input::AckUnrecorded { log, seq } if self.ack_pending.is_none_or(|(_, p)| p < seq) => {
                self.ack_pending = Some((log, seq));
            }
            _ => {}
        }
    }

    /// A from-sync committed: acknowledge the snapshot's position and finish.
    fn sync_done(&mut self, id: u64, done: SyncDone, out: &mut Vec<Command>) {
        if let Some(s) = self.session.as_mut() {
            s.refused = None;
            s.pulling = false;
        }
        // The snapshot is committed here: the peer counts its backlog (and its waiting
        // commits) from the snapshot's position.
        out.push(Command::Send(Message::Ack {
            log: done.log,
            seq: done.position,
        }));
        let peer = self.peer_node();
        let mut text = format!("copied {} rows from node {peer}", done.copied);
        match &done.file {
            Some(f) => text.push_str(&format!("; {} local-only rows saved to {f}", done.saved)),
            None => text.push_str("; this node had no rows the peer lacked"),
        }
        self.finish(
            id,
            true,
            text,
            Some((done.file, done.saved, done.copied)),
            out,
        );
    }
}
