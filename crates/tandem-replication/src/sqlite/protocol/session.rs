//! The peer session's decisions: states, pulls, batches and acknowledgements, the
//! fence, and the snapshot this node sends.

use std::collections::VecDeque;

use tracing::{debug, info, warn};

use super::{
    Applied, Command, End, Flow, Pending, Program, Protocol, PullKey, RETRY_REFUSED,
    STATE_AT_LEAST, STATE_EVERY, Serving, SnapshotItem, Step, Switch, peer_applied, positions,
    refresh, same_but_positions, schema_mismatch, steps,
};
use crate::error::{Result, chain};
use crate::sqlite::{self, PeerRecord, PullCheck};
use crate::status::ReplicationState;
use crate::wire::{Batch, Change, Message, NodeState, RECEIVED_HELLO};

impl Protocol {
    /// Dispatches a message from the peer.
    pub(super) fn received(&mut self, message: Message, out: &mut Vec<Command>) {
        match message {
            Message::State(peer) => self.on_peer_state(peer, out),
            Message::Pull { log, from } => self.on_pull(log, from, out),
            Message::Stop => {
                if let Some(s) = self.session.as_mut() {
                    s.serving = None;
                }
            }
            Message::Batch(batch) => self.on_batch(batch, out),
            Message::Ack {
                seq: RECEIVED_HELLO,
                ..
            } => {
                if let Some(s) = self.session.as_mut() {
                    s.peer_reads_received = true;
                }
            }
            Message::Ack { log, seq } => self.on_ack(log, seq, out),
            Message::Received { log, seq } => self.on_received(log, seq, out),
            Message::Refuse { reason } => self.on_refuse(reason, out),
            Message::Control { id, on } => out.push(Command::SwitchLocal {
                on,
                why: Switch::Peer { id, on },
                then: Program::new(),
            }),
            Message::ControlDone { id, ok, message } => self.on_control_done(id, ok, message, out),
            Message::SyncRequest {
                id,
                log,
                head,
                schema,
            } => self.on_sync_request(id, log, head, &schema, out),
            other => self.on_snapshot_message(other, out),
        }
    }

    fn on_peer_state(&mut self, peer: NodeState, out: &mut Vec<Command>) {
        // Only this node's peer may speak (an id other than 1 or 2 does not decode).
        if peer.node != self.peer_node() {
            let why = format!("the peer claims to be node {} too", peer.node);
            out.push(Command::End(End::Protocol(why)));
            return;
        }
        let now = self.now;
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let first = s.peer.is_none();
        let token_changed = s.peer.as_ref().is_some_and(|p| p.token != peer.token);
        let record_due = match &s.peer_recorded {
            Some((last, at)) => {
                !same_but_positions(last, &peer) || now.mono.saturating_sub(*at) >= STATE_AT_LEAST
            }
            None => true,
        };
        if first {
            info!(node = peer.node.get(), state = %peer.state, writable = peer.writable, "peer connected");
        }
        s.peer = Some(peer.clone());
        if record_due {
            out.push(Command::RecordPeer {
                record: PeerRecord::from_state(&peer, now.wall_ms),
                wait: false,
            });
            s.peer_recorded = Some((peer.clone(), now.mono));
        }
        // A node that was only initialized follows its peer's switch-on.
        if self.meta.state == ReplicationState::Initialized
            && peer.state == ReplicationState::Active
        {
            out.push(Command::SwitchLocal {
                on: true,
                why: Switch::FollowPeer,
                then: Program::new(),
            });
        }
        let mut program = steps([Step::Refresh { force: true }]);
        if first || token_changed {
            program.push_back(Step::Pull);
        }
        if token_changed {
            program.push_back(Step::Serve);
        }
        self.run(program, out);
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

    /// Whether this node may stream to the peer (always without a fence).
    fn may_serve(&self, peer: Option<&NodeState>) -> Result<()> {
        match (&self.now.fence, peer) {
            (Some(f), Some(p)) => f.may_serve(self.meta.node, self.peer_node(), p.token),
            _ => Ok(()),
        }
    }

    /// What blocks pulling the peer's changelog, as the local alarm says it (empty:
    /// nothing).
    fn pull_alarm(&self, peer: &NodeState, refused: Option<&str>) -> String {
        let m = &self.meta;
        let on = m.state == ReplicationState::Active && peer.state == ReplicationState::Active;
        if on && m.writable && peer.writable {
            format!(
                "{}: changes made on either are not replicated; make one node the standby and \
                 run `mp_replication switch-on -S -F from-sync` on it",
                sqlite::BOTH_WRITABLE
            )
        } else if on
            && !m.writable
            && let Err(e) = self.fence().admits(self.peer_node(), peer.token)
        {
            chain(&e)
        } else if on && peer.schema != self.fingerprint {
            schema_mismatch(m, peer)
        } else if on
            && !m.writable
            && m.head > m.acked
            && (peer.writable || peer.head > peer_applied(m, peer))
        {
            sqlite::diverged_message(m)
        } else {
            refused.map(str::to_owned).unwrap_or_default()
        }
    }

    /// Starts or stops pulling the peer's changelog as the situation asks, and keeps the
    /// local alarm in line with what blocks replication.
    pub(super) fn update_pull(&mut self, program: &mut Program, out: &mut Vec<Command>) -> Flow {
        let Some(peer) = self.session.as_ref().and_then(|s| s.peer.clone()) else {
            return Flow::Next;
        };
        let key = self.pull_key(&peer);
        let now = self.now.mono;
        let Some(s) = self.session.as_mut() else {
            return Flow::Next;
        };
        if let Some((_, k, at)) = &s.refused
            && (*k != key || now.saturating_sub(*at) >= RETRY_REFUSED)
        {
            s.refused = None;
        }
        let refused = s.refused.as_ref().map(|(reason, _, _)| reason.clone());
        let alarm = self.pull_alarm(&peer, refused.as_deref());
        let m = &self.meta;
        let on = m.state == ReplicationState::Active && peer.state == ReplicationState::Active;
        let want = on && !m.writable && alarm.is_empty();
        if m.state != ReplicationState::Suspended && m.alarm != alarm {
            out.push(Command::SetAlarm(alarm));
            program.push_front(Step::PullSend { want });
            return Flow::Wait(refresh(true));
        }
        self.pull_send(want, out);
        Flow::Next
    }

    /// Sends the pull or the stop that [`update_pull`](Self::update_pull) decided.
    pub(super) fn pull_send(&mut self, want: bool, out: &mut Vec<Command>) {
        let m = &self.meta;
        let (log, from) = match m.applied_log {
            Some(log) => (Some(log), m.applied),
            None => (None, 0),
        };
        let Some(s) = self.session.as_mut() else {
            return;
        };
        if want && !s.pulling {
            debug!(?log, from, "pulling the peer's changelog");
            out.push(Command::Send(Message::Pull { log, from }));
            s.pulling = true;
        } else if !want && s.pulling {
            out.push(Command::Send(Message::Stop));
            s.pulling = false;
        }
    }

    /// The peer pulls this node's changelog: check it if the fence allows.
    fn on_pull(&mut self, log: Option<u64>, from: u64, out: &mut Vec<Command>) {
        let peer = self.session.as_ref().and_then(|s| s.peer.clone());
        match self.may_serve(peer.as_ref()) {
            Ok(()) => out.push(Command::CheckPull {
                log,
                from,
                puller: self.peer_node(),
            }),
            Err(e) => self.pull_checked(from, PullCheck::Refuse(chain(&e)), out),
        }
    }

    /// Serves a checked pull, or tells the peer why not.
    pub(super) fn pull_checked(&mut self, from: u64, check: PullCheck, out: &mut Vec<Command>) {
        match check {
            PullCheck::Serve => {
                debug!(from, "the peer pulls our changelog");
                self.run(
                    steps([Step::Refresh { force: true }, Step::Serving { from }]),
                    out,
                );
            }
            PullCheck::Refuse(reason) => {
                warn!(%reason, "refused the peer's pull");
                if let Some(s) = self.session.as_mut() {
                    s.serving = None;
                }
                out.push(Command::Send(Message::Refuse { reason }));
            }
        }
    }

    pub(super) fn start_serving(&mut self, from: u64) {
        let log = self.meta.log;
        if let Some(s) = self.session.as_mut() {
            s.serving = Some(Serving {
                log,
                sent: from,
                inflight: VecDeque::new(),
                eager: false,
            });
        }
    }

    /// Sends batches while the window allows: asks for the next changes to send.
    pub(super) fn serve(&mut self, out: &mut Vec<Command>) -> Flow {
        let peer = self.session.as_ref().and_then(|s| s.peer.clone());
        let stale = self.may_serve(peer.as_ref()).err();
        let (log, head, limits) = (self.meta.log, self.meta.head, self.limits);
        let Some(s) = self.session.as_mut() else {
            return Flow::Next;
        };
        if s.serving.is_some()
            && let Some(e) = stale
        {
            warn!(reason = %chain(&e), "stopped streaming to the peer");
            s.serving = None;
            out.push(Command::Send(Message::Refuse { reason: chain(&e) }));
            return Flow::Next;
        }
        let Some(serving) = s.serving.as_ref() else {
            return Flow::Next;
        };
        if serving.log != log {
            s.serving = None;
            return Flow::Next;
        }
        if serving.inflight.len() >= limits.window || serving.sent >= head {
            return Flow::Next;
        }
        // Group commit: while a batch is on its way, a partial one waits until the
        // peer took it in (its `Received`; an older peer's `Ack` after the apply) and
        // then goes with everything committed meanwhile, so that busy writers share
        // batches (a full batch is sent at once). The peer's apply of a batch never
        // holds the next one back when it says `Received`.
        if !serving.inflight.is_empty() && head - serving.sent < u64::from(limits.batch_size) {
            return Flow::Next;
        }
        Flow::Wait(Command::ReadChanges {
            after: serving.sent,
            limit: limits.batch_size,
            bytes: limits.batch_bytes,
            then: Program::new(),
        })
    }

    /// Sends the changes read as a batch and goes on serving.
    pub(super) fn changes(
        &mut self,
        changes: Vec<Change>,
        mut then: Program,
        out: &mut Vec<Command>,
    ) {
        let last = changes.last().map(|c| c.seq);
        let short = changes.len() < usize::try_from(self.limits.batch_size).unwrap_or(usize::MAX);
        let head = self.meta.head;
        if let Some(last) = last
            && let Some(serving) = self.session.as_mut().and_then(|s| s.serving.as_mut())
        {
            out.push(Command::Send(Message::Batch(Batch {
                log: serving.log,
                prev: serving.sent,
                changes,
            })));
            // A short read that reached the head took everything committed when it
            // ran, so every commit that woke us before it is on its way. A full read,
            // or one cut short by the byte limit below the head, leaves more to send.
            serving.eager = !short || last < head;
            serving.sent = last;
            serving.inflight.push_back(last);
            then.push_front(Step::Serve);
        }
        self.run(then, out);
    }

    /// Sends this node's state if due (a change, a position change after
    /// [`STATE_EVERY`], or [`STATE_AT_LEAST`]) or `force`.
    pub(super) fn send_state(&mut self, force: bool, best_effort: bool, out: &mut Vec<Command>) {
        let token = self.fence().mine;
        let now = self.now.mono;
        let m = &self.meta;
        let state = NodeState {
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
        let lag_after = (m.writable && m.head > m.acked).then_some(m.acked);
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let due = match &s.last_state {
            None => true,
            Some((last, at)) => {
                let age = now.saturating_sub(*at);
                !same_but_positions(last, &state)
                    || (positions(last) != positions(&state) && age >= STATE_EVERY)
                    || age >= STATE_AT_LEAST
            }
        };
        if due || force {
            s.last_state = Some((state.clone(), now));
            out.push(Command::SendState {
                state,
                lag_after,
                best_effort,
            });
        }
    }

    /// A batch from the peer: applied if we pull and the fence admits the peer's
    /// token (checked now, and again in the batch's transaction just before it
    /// commits, in case the host raised the floor meanwhile).
    fn on_batch(&mut self, batch: Batch, out: &mut Vec<Command>) {
        let Some(s) = self.session.as_ref() else {
            return;
        };
        if !s.pulling {
            // Sent before our stop arrived.
            return;
        }
        let (peer, token) = (self.peer_node(), s.peer.as_ref().and_then(|p| p.token));
        let tell = s.peer_reads_received;
        match self.fence().admits(peer, token) {
            Ok(()) => {
                // Taken in: said before the apply (which takes an fsync), for the
                // peer's commits that wait at the `received` level and for its next
                // batch. Not for a batch this node is sure to refuse.
                if tell && self.will_apply(&batch) {
                    out.push(Command::Send(Message::Received {
                        log: batch.log,
                        seq: batch.last(),
                    }));
                }
                out.push(Command::ApplyBatch { batch, peer, token });
            }
            Err(e) => self.applied(batch.log, Applied::Refused(chain(&e)), out),
        }
    }

    /// Whether `batch` follows what this node applied (the checks of the apply that
    /// the protocol can make itself: not writable, not diverged, the same changelog,
    /// no gap) and brings something new.
    fn will_apply(&self, batch: &Batch) -> bool {
        let m = &self.meta;
        let applied = match m.applied_log {
            Some(log) if log == batch.log => m.applied,
            None => 0,
            Some(_) => return false,
        };
        !m.writable && m.head <= m.acked && batch.prev <= applied && batch.last() > applied
    }

    /// What became of a batch.
    pub(super) fn applied(&mut self, log: u64, result: Applied, out: &mut Vec<Command>) {
        match result {
            Applied::Upto(last) => {
                if self.apply_failure.take().is_some() {
                    out.push(Command::RecordApplyFailure(None));
                }
                out.push(Command::Send(Message::Ack { log, seq: last }));
                // The batch's transaction moved exactly these; the next tick re-reads
                // the rest (the commit changed the data version).
                self.meta.applied_log = Some(log);
                self.meta.applied = last;
            }
            Applied::Refused(reason) => {
                warn!(error = %reason, "not applying the peer's batch");
                out.push(Command::SetAlarm(reason.clone()));
                out.push(Command::Send(Message::Stop));
                let key = self
                    .session
                    .as_ref()
                    .and_then(|s| s.peer.as_ref())
                    .map(|p| self.pull_key(p));
                let now = self.now.mono;
                if let Some(s) = self.session.as_mut() {
                    s.pulling = false;
                    if let Some(key) = key {
                        s.refused = Some((reason, key, now));
                    }
                }
                self.run(steps([Step::Refresh { force: true }]), out);
            }
            Applied::Failed(error) => {
                // Nothing was applied (the transaction rolled back). The session ends
                // and starts again; the peer learns why from this node's state.
                let alarm = format!(
                    "node {} cannot apply node {}'s changes: {error}; replication resumes by \
                     itself once node {} can write its database again",
                    self.meta.node,
                    self.peer_node(),
                    self.meta.node
                );
                warn!(%alarm, "applying the peer's batch failed");
                out.push(Command::RecordApplyFailure(Some(alarm.clone())));
                self.apply_failure = Some(alarm);
                self.send_state(true, true, out);
                out.push(Command::End(End::ApplyFailed));
            }
        }
    }

    fn on_ack(&mut self, log: u64, seq: u64, out: &mut Vec<Command>) {
        self.free_window(log, seq);
        if log == self.meta.log && seq > self.meta.acked {
            // Published at once for wait_replicated; recorded (and pruned) in the
            // database at most every ACK_FLUSH, so a busy application does not make
            // acknowledgements queue for the write lock.
            self.publish(log, seq, seq, out);
            if self.ack_pending.is_none_or(|(_, p)| p < seq) {
                self.ack_pending = Some((log, seq));
            }
        }
        // The next batch takes everything committed until now.
        self.serve_freed(out);
    }

    /// The peer took in this node's changelog `log` up to `seq`: the batches up to it
    /// leave the window (the next one goes now, while the peer applies), and the
    /// position is published for commits waiting at the `received` level. Nothing is
    /// recorded or pruned: the peer has not applied it yet.
    fn on_received(&mut self, log: u64, seq: u64, out: &mut Vec<Command>) {
        let sent = self.free_window(log, seq);
        // Only what this session sent can have been received (the meta table's head
        // may be older than the changes read since).
        if log == self.meta.log && seq <= sent {
            self.publish(log, self.meta.acked, seq, out);
        }
        self.serve_freed(out);
    }

    /// The window has room again: the next batch goes now if a commit waits for the
    /// peer or a backlog is being sent, else a coalescing time later with whatever
    /// was committed meanwhile (an acknowledgement that came quickly would otherwise
    /// send a smaller batch, read and sent at the cost of the active node's writers,
    /// for nobody's benefit).
    fn serve_freed(&mut self, out: &mut Vec<Command>) {
        let lazy = self
            .session
            .as_ref()
            .and_then(|s| s.serving.as_ref())
            .is_some_and(|sv| !sv.eager);
        if lazy {
            out.push(Command::ShipSoon);
        } else {
            self.run(steps([Step::Refresh { force: false }, Step::Serve]), out);
        }
    }

    /// The batches of changelog `log` up to `seq` leave the window of the changes
    /// this session serves; returns how far the session has sent (0 when it
    /// serves no changes of `log`).
    fn free_window(&mut self, log: u64, seq: u64) -> u64 {
        let Some(serving) = self
            .session
            .as_mut()
            .and_then(|s| s.serving.as_mut())
            .filter(|sv| sv.log == log)
        else {
            return 0;
        };
        while serving.inflight.front().is_some_and(|last| *last <= seq) {
            serving.inflight.pop_front();
        }
        serving.sent
    }

    /// Publishes the peer's positions of this node's changelog `log` if either moved
    /// on: applied at least `applied`, received at least `received` (and at least
    /// what it applied). Neither goes back within one changelog.
    fn publish(&mut self, log: u64, applied: u64, received: u64, out: &mut Vec<Command>) {
        let (old_applied, old_received) = match self.published {
            Some((l, a, r)) if l == log => (a, r),
            _ => (0, 0),
        };
        let applied = applied.max(old_applied);
        let received = received.max(applied).max(old_received);
        if self.published != Some((log, applied, received)) {
            self.published = Some((log, applied, received));
            out.push(Command::PublishAck {
                log,
                seq: applied,
                received,
            });
        }
    }

    fn on_refuse(&mut self, reason: String, out: &mut Vec<Command>) {
        warn!(%reason, "the peer refused our pull");
        let key = self
            .session
            .as_ref()
            .and_then(|s| s.peer.as_ref())
            .map(|p| self.pull_key(p));
        let now = self.now.mono;
        if let Some(s) = self.session.as_mut() {
            s.pulling = false;
            s.refused = key.map(|k| (reason.clone(), k, now));
        }
        out.push(Command::SetAlarm(reason));
        self.run(steps([Step::Refresh { force: true }]), out);
    }

    fn on_control_done(&mut self, id: u64, ok: bool, message: String, out: &mut Vec<Command>) {
        if let Some(Pending::Control {
            id: mine, local, ..
        }) = self
            .pending
            .take_if(|p| matches!(p, Pending::Control { id: x, .. } if *x == id))
        {
            let text = if ok {
                format!("{local}; {message}")
            } else {
                format!("{local}; node {}: {message}", self.peer_node())
            };
            self.finish(mine, true, text, None, out);
        }
    }

    /// The fence changed: announce the new token, and start or stop pulling and
    /// serving as it now allows.
    pub(super) fn fence_changed(&mut self, out: &mut Vec<Command>) {
        let fence = self.fence();
        info!(mine = ?fence.mine, floor = fence.floor, "the witness's fence changed");
        if self.session.is_some() {
            self.run(
                steps([Step::Pull, Step::Serve, Step::State { force: true }]),
                out,
            );
        }
    }

    /// The peer asks for a snapshot (from-sync): refuse, or switch on if needed and
    /// start sending one.
    fn on_sync_request(
        &mut self,
        id: u64,
        log: u64,
        head: u64,
        schema: &str,
        out: &mut Vec<Command>,
    ) {
        let peer = self.session.as_ref().and_then(|s| s.peer.clone());
        let providing = self.session.as_ref().is_some_and(|s| s.providing);
        let refuse = if self.meta.state == ReplicationState::Syncing {
            Some(format!(
                "node {} is itself copying data (from-sync)",
                self.meta.node
            ))
        } else if schema != self.fingerprint {
            peer.as_ref()
                .map(|p| schema_mismatch(&self.meta, p))
                .or(Some("the declared tables differ".into()))
        } else if let Err(e) = self.may_serve(peer.as_ref()) {
            Some(chain(&e))
        } else if providing {
            Some("a snapshot is already being sent".into())
        } else {
            None
        };
        if let Some(reason) = refuse {
            out.push(Command::Send(Message::SyncFailed { id, reason }));
            return;
        }
        let mut program = Program::new();
        if self.meta.state != ReplicationState::Active {
            out.push(Command::SwitchLocal {
                on: true,
                why: Switch::ForSync,
                then: Program::new(),
            });
            program.push_back(Step::Refresh { force: true });
        }
        program.push_back(Step::Snapshot { id, log, head });
        program.push_back(Step::Refresh { force: true });
        self.run(program, out);
    }

    pub(super) fn start_snapshot(&mut self, id: u64, log: u64, head: u64, out: &mut Vec<Command>) {
        info!(id, "sending a snapshot to the peer");
        out.push(Command::StartSnapshot {
            id,
            log,
            head,
            chunk: self.limits.chunk,
        });
        if let Some(s) = self.session.as_mut() {
            s.providing = true;
            s.serving = None;
        }
    }

    /// The next piece of the snapshot being sent.
    pub(super) fn snapshot_item(&mut self, item: SnapshotItem, out: &mut Vec<Command>) {
        let request = self.meta.request.as_ref().map_or(0, |r| r.id);
        let Some(s) = self.session.as_mut() else {
            return;
        };
        match item {
            SnapshotItem::Message(message) => {
                let end = matches!(message, Message::SnapshotEnd { .. });
                out.push(Command::Send(message));
                if end {
                    s.providing = false;
                    out.push(Command::StopSnapshot);
                    info!("snapshot sent to the peer");
                }
            }
            SnapshotItem::Failed(reason) => {
                s.providing = false;
                out.push(Command::StopSnapshot);
                warn!(error = %reason, "reading the snapshot failed");
                out.push(Command::Send(Message::SyncFailed {
                    id: request,
                    reason,
                }));
            }
            SnapshotItem::Done => {
                s.providing = false;
                out.push(Command::StopSnapshot);
            }
        }
    }

    /// A commit waits for the peer: ship it now, not at the next poll; while a batch is
    /// in flight it goes with the next one, which the acknowledgement sends, so there
    /// is nothing to do yet.
    pub(super) fn woken(&mut self, ack_busy: bool, out: &mut Vec<Command>) {
        if let Some(sv) = self.session.as_mut().and_then(|s| s.serving.as_mut()) {
            sv.eager = true;
        }
        self.committed(ack_busy, out);
    }

    /// Commits that nobody waits for: shipped now if nothing is in flight, else once
    /// the peer's acknowledgement frees the window ([`Command::ShipSoon`]).
    pub(super) fn committed(&mut self, ack_busy: bool, out: &mut Vec<Command>) {
        let waiting = self
            .session
            .as_ref()
            .and_then(|s| s.serving.as_ref())
            .is_some_and(|sv| !sv.inflight.is_empty());
        if !waiting {
            self.tick(ack_busy, out);
        }
    }

    /// A local switch is done.
    pub(super) fn switched(
        &mut self,
        why: Switch,
        result: Result<String, String>,
        mut then: Program,
        out: &mut Vec<Command>,
    ) {
        match (why, result) {
            (Switch::FollowPeer, Ok(text)) => info!(%text, "switched on because the peer is on"),
            (Switch::ForSync, Ok(text)) => info!(%text, "switched on for the peer's from-sync"),
            (Switch::Request { id, on }, Ok(local)) => {
                then.push_front(Step::Control { id, on, local });
                then.push_front(Step::Refresh { force: true });
            }
            (Switch::Peer { id, on }, result) => {
                let (ok, message) = match result {
                    Ok(m) => (true, m),
                    Err(e) => (false, e),
                };
                info!(on, %message, "the peer switched replication");
                then.push_front(Step::Send(Message::ControlDone { id, ok, message }));
                then.push_front(Step::Refresh { force: true });
            }
            // The shell ends the session on these failures; nothing to decide.
            (_, Err(_)) => {}
        }
        self.run(then, out);
    }
}
