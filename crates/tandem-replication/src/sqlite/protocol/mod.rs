//! The SQLite replication protocol without IO: [`Protocol::handle`] takes one
//! [`Input`] (a message from the peer, a tick, the result of a command the shell
//! carried out) with the time and the fence, and answers with the [`Command`]s the
//! shell carries out in order. It reads no clock, touches no database and no socket;
//! the service (`sqlite/service.rs`) is the IO shell around it.
//!
//! A decision that needs fresh data from the database pauses: the protocol emits a
//! command that carries the rest of the work as a [`Program`] (a list of [`Step`]s),
//! and the shell hands the program back with the result ([`Input::Refreshed`],
//! [`Input::Changes`], [`Input::Switched`]). The shell runs the commands of one
//! input, and those of the results they produce, depth first, so the order is the
//! order of a sequential program. The steps and message handlers live in `session.rs`
//! (the peer session) and `requests.rs` (commands' requests, from-sync, housekeeping).

mod requests;
mod session;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::Duration;

use tandem_core::NodeId;

use crate::fence::Fence;
use crate::sqlite::{Meta, PeerRecord, Progress, PullCheck, RequestDone};
use crate::status::ReplicationState;
use crate::wire::{Batch, Change, Message, NodeState, RECEIVED_HELLO, SnapshotRow};

/// How often acknowledgements are recorded in the database at most.
pub(crate) const ACK_FLUSH: Duration = Duration::from_secs(1);
/// How long a refused pull waits before it is tried again when nothing changed.
pub(crate) const RETRY_REFUSED: Duration = Duration::from_secs(2);
/// How often a state whose only change is a position is sent at most.
pub(crate) const STATE_EVERY: Duration = Duration::from_millis(250);
/// How often a state (and a peer record) is sent (written) even if nothing changed.
pub(crate) const STATE_AT_LEAST: Duration = Duration::from_secs(1);
/// How long a switch request waits for the peer's answer.
pub(crate) const CONTROL_WAIT: Duration = Duration::from_secs(5);

/// When an input happens, as the shell sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Now {
    /// Monotonic time since the shell started.
    pub(crate) mono: Duration,
    /// Wall-clock time, milliseconds since the Unix epoch (deadlines, records).
    pub(crate) wall_ms: u64,
    /// The witness's fence as the host knows it now (none: no witness).
    pub(crate) fence: Option<Fence>,
}

/// The settings the protocol uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Batches in flight at most.
    pub(crate) window: usize,
    /// Changes per batch at most.
    pub(crate) batch_size: u32,
    /// Row bytes per batch at most (about).
    pub(crate) batch_bytes: usize,
    /// Snapshot chunk bytes.
    pub(crate) chunk: usize,
    /// Changes waiting for the peer before replication suspends itself.
    pub(crate) max_backlog: u64,
}

/// The rest of a piece of work, resumed when a command's result comes back.
pub(crate) type Program = VecDeque<Step>;

/// One step of a program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Re-read the meta table (always, or only if something was committed).
    Refresh { force: bool },
    /// Record the newest acknowledgement if [`ACK_FLUSH`] passed (`busy`: the last
    /// write is still going).
    FlushAck { busy: bool },
    /// Write the newest peer record if no write is going.
    FlushPeer,
    /// Suspend replication if the backlog passed the limit.
    Backlog,
    /// Pick up a new request from a command.
    Request,
    /// Time out or advance the pending request.
    Pending,
    /// Start or stop pulling as the situation asks (and set the alarm).
    Pull,
    /// Send the pull or the stop decided by [`Step::Pull`].
    PullSend { want: bool },
    /// Send batches while the window allows.
    Serve,
    /// Send this node's state if due (or `force`).
    State { force: bool },
    /// Start streaming to the peer from `from` (its pull was checked).
    Serving { from: u64 },
    /// Start sending a snapshot for the peer's sync request.
    Snapshot { id: u64, log: u64, head: u64 },
    /// Send a message.
    Send(Message),
    /// A request's local switch is done (`local` says what it did): ask the peer.
    Control { id: u64, on: bool, local: String },
    /// Record the peer link as lost.
    RecordLost { reason: String },
}

/// Why the local replication state is switched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Switch {
    /// This node was only initialized and its peer is on.
    FollowPeer,
    /// The peer requests a snapshot.
    ForSync,
    /// A command's request `id`.
    Request { id: u64, on: bool },
    /// The peer's [`Message::Control`] `id`; a failure is answered, not fatal.
    Peer { id: u64, on: bool },
}

/// Why the shell ends the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// The peer broke the protocol.
    Protocol(String),
    /// The last batch could not be applied (the shell holds the error).
    ApplyFailed,
}

/// What the shell carries out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    /// Send a message to the peer.
    Send(Message),
    /// Send this node's state, with the age of the oldest change after `lag_after` if
    /// given; `best_effort`: a failure is ignored.
    SendState {
        state: NodeState,
        lag_after: Option<u64>,
        best_effort: bool,
    },
    /// Re-read the meta table (always, or only if something was committed), then
    /// answer [`Input::Refreshed`] with `then`; `tolerant`: a failure is ignored.
    Refresh {
        force: bool,
        tolerant: bool,
        then: Program,
    },
    /// Set the local alarm.
    SetAlarm(String),
    /// Set the local replication state; `tolerant`: a failure is logged only.
    SetState {
        state: ReplicationState,
        tolerant: bool,
    },
    /// Suspend replication with this alarm (drops the changelog).
    Suspend(String),
    /// Switch local replication on or off, then answer [`Input::Switched`].
    SwitchLocal {
        on: bool,
        why: Switch,
        then: Program,
    },
    /// Apply the peer's batch while its token (`peer`, `token`) passes the fence,
    /// then answer [`Input::Applied`].
    ApplyBatch {
        batch: Batch,
        peer: NodeId,
        token: Option<u64>,
    },
    /// Read changes of this node's changelog after `after`, then answer
    /// [`Input::Changes`] with `then`.
    ReadChanges {
        after: u64,
        limit: u32,
        bytes: usize,
        then: Program,
    },
    /// Check the peer's pull against the changelog, then answer
    /// [`Input::PullChecked`].
    CheckPull {
        log: Option<u64>,
        from: u64,
        puller: NodeId,
    },
    /// Start reading a snapshot for the peer; its pieces come as [`Input::Snapshot`].
    StartSnapshot {
        id: u64,
        log: u64,
        head: u64,
        chunk: usize,
    },
    /// Drop the snapshot being read.
    StopSnapshot,
    /// Start receiving the peer's snapshot, then answer [`Input::SyncBegun`].
    BeginSync {
        id: u64,
        log: u64,
        position: u64,
        tables: Vec<String>,
        rows: u64,
    },
    /// Store rows of the snapshot being received, then answer [`Input::RowsStored`].
    StoreRows {
        id: u64,
        table: String,
        rows: Vec<SnapshotRow>,
    },
    /// Commit the snapshot being received, then answer [`Input::SyncFinished`].
    FinishSync { id: u64, rows: u64, peer: NodeId },
    /// Drop the snapshot being received (the database stays as it was).
    DropSync,
    /// Record a request's progress.
    SetProgress(Progress),
    /// Record a request's result (a failure is logged only).
    FinishRequest(RequestDone),
    /// Publish the peer's applied (`seq`) and received positions of this node's
    /// changelog `log` at once (for commits waiting on them).
    PublishAck { log: u64, seq: u64, received: u64 },
    /// Answer [`Input::Committed`] a coalescing time from now, unless one is due
    /// already: the window has room, nobody waits, and the changes committed
    /// meanwhile can go together.
    ShipSoon,
    /// Record an acknowledgement in the database (and prune); `wait`: now, after the
    /// write going on, answering [`Input::AckUnrecorded`] on failure; else in the
    /// background.
    RecordAck { log: u64, seq: u64, wait: bool },
    /// Record what was heard from the peer; `wait`: now, after the write going on
    /// (a failure is logged only), else as the newest record to write in the
    /// background.
    RecordPeer { record: PeerRecord, wait: bool },
    /// Drop a peer record not yet written and wait for the one being written.
    SettlePeerRecord,
    /// Start writing the newest peer record if no write is going.
    FlushPeerRecord,
    /// Remember (or forget) why the peer's changes cannot be applied.
    RecordApplyFailure(Option<String>),
    /// End the session.
    End(End),
}

/// A piece of the snapshot being sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SnapshotItem {
    /// The next message.
    Message(Message),
    /// Reading failed; the text says why.
    Failed(String),
    /// Nothing more.
    Done,
}

/// The outcome of applying a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Applied {
    /// Applied (or found applied before) up to this position.
    Upto(u64),
    /// Not applied and not to be retried as is (a gap, the state, the fence).
    Refused(String),
    /// Applying failed (the transaction rolled back); the session ends.
    Failed(String),
}

/// What a committed from-sync did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyncDone {
    /// The peer's changelog and the position the snapshot holds.
    pub(crate) log: u64,
    pub(crate) position: u64,
    /// Rows copied from the peer.
    pub(crate) copied: u64,
    /// Local-only rows saved, and the file they went to.
    pub(crate) saved: u64,
    pub(crate) file: Option<String>,
}

/// What happens to the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Input {
    /// A session with the peer is up.
    SessionUp,
    /// The session ended (the text says why, none: closed).
    SessionLost(Option<String>),
    /// The peer could not be reached.
    Unreachable(String),
    /// A message from the peer.
    Received(Message),
    /// The poll interval passed (`ack_busy`: an acknowledgement is being written).
    Tick { ack_busy: bool },
    /// A local commit waits for the peer.
    Woken { ack_busy: bool },
    /// Local commits were made that nobody waits for (the shell's watch of the log
    /// saw them, a coalescing time ago, or [`Command::ShipSoon`] came due).
    Committed { ack_busy: bool },
    /// The fence changed (the new one is in [`Now::fence`]).
    FenceChanged,
    /// The next piece of the snapshot being sent.
    Snapshot(SnapshotItem),
    /// The meta table (none: unchanged) and the tables' fingerprint if reloaded.
    Refreshed {
        meta: Option<Box<Meta>>,
        fingerprint: Option<String>,
        then: Program,
    },
    /// Changes read for [`Command::ReadChanges`].
    Changes { changes: Vec<Change>, then: Program },
    /// The answer to [`Command::CheckPull`].
    PullChecked { from: u64, check: PullCheck },
    /// The answer to [`Command::SwitchLocal`].
    Switched {
        why: Switch,
        result: Result<String, String>,
        then: Program,
    },
    /// The answer to [`Command::ApplyBatch`].
    Applied { log: u64, result: Applied },
    /// The answer to [`Command::BeginSync`].
    SyncBegun {
        id: u64,
        rows: u64,
        position: u64,
        result: Result<(), String>,
    },
    /// The answer to [`Command::StoreRows`]: rows received and announced.
    RowsStored {
        id: u64,
        result: Result<(u64, u64), String>,
    },
    /// The answer to [`Command::FinishSync`].
    SyncFinished {
        id: u64,
        result: Result<SyncDone, String>,
    },
    /// A [`Command::RecordAck`] with `wait` failed: it is still to be recorded.
    AckUnrecorded { log: u64, seq: u64 },
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

/// The peer pulls from this node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Serving {
    log: u64,
    sent: u64,
    /// Last sequence numbers of the batches in flight.
    inflight: VecDeque<u64>,
    /// Ship the next batch as soon as the window has room, not a coalescing time
    /// later: a local commit waits for the peer ([`Input::Woken`]) and may not have
    /// been sent yet, or the last read was full (a backlog to catch up on).
    eager: bool,
}

/// Per-session state.
#[derive(Debug, Clone, Default)]
struct Session {
    peer: Option<NodeState>,
    peer_recorded: Option<(NodeState, Duration)>,
    /// We sent a pull and have not stopped it.
    pulling: bool,
    /// The peer refused our pull (or we could not apply its batch); we do not ask
    /// again until something changes or [`RETRY_REFUSED`] passed.
    refused: Option<(String, PullKey, Duration)>,
    /// The peer pulls from us.
    serving: Option<Serving>,
    /// We send a snapshot.
    providing: bool,
    /// The peer said it reads [`Message::Received`] (its [`RECEIVED_HELLO`]).
    peer_reads_received: bool,
    last_state: Option<(NodeState, Duration)>,
}

/// A request being carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    Control {
        id: u64,
        local: String,
        until: Duration,
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
        id: u64,
    },
}

impl Pending {
    fn id(&self) -> u64 {
        match self {
            Pending::Control { id, .. }
            | Pending::SyncWaiting { id, .. }
            | Pending::SyncRequested { id, .. }
            | Pending::SyncReceiving { id } => *id,
        }
    }

    fn is_sync(&self) -> bool {
        !matches!(self, Pending::Control { .. })
    }
}

/// How a step ends: go on with the next, or wait for a command's result (the
/// command gets the rest of the program).
enum Flow {
    Next,
    Wait(Command),
}

/// The replication protocol of one node: its view of the local meta table, the
/// session with the peer, the request being carried out.
#[derive(Debug, Clone)]
pub(crate) struct Protocol {
    meta: Meta,
    fingerprint: String,
    limits: Limits,
    pending: Option<Pending>,
    /// An acknowledgement published but not yet recorded in the database.
    ack_pending: Option<(u64, u64)>,
    /// The positions last published: changelog, applied, received.
    published: Option<(u64, u64, u64)>,
    ack_flushed: Duration,
    /// Why the last batch from the peer could not be applied, until one is: sent to
    /// the peer as this node's alarm, since this node may be unable to record
    /// anything itself (its disk is full).
    apply_failure: Option<String>,
    session: Option<Session>,
    now: Now,
}

/// Whether a from-sync was interrupted (the service stopped during it): the state
/// says syncing but no live request is there to finish it.
pub(crate) fn sync_interrupted(meta: &Meta, now_ms: u64) -> bool {
    if meta.state != ReplicationState::Syncing {
        return false;
    }
    let live = meta
        .request
        .as_ref()
        .filter(|r| r.sync && r.deadline_ms > now_ms)
        .filter(|r| meta.request_done.as_ref().is_none_or(|d| d.id < r.id));
    live.is_none()
}

impl Protocol {
    /// The protocol of a node whose meta table reads `meta` and whose declared tables
    /// have `fingerprint`.
    pub(crate) fn new(meta: Meta, fingerprint: String, limits: Limits, now: Now) -> Protocol {
        Protocol {
            meta,
            fingerprint,
            limits,
            pending: None,
            ack_pending: None,
            published: None,
            ack_flushed: now.mono,
            apply_failure: None,
            session: None,
            now,
        }
    }

    /// The commands that carry out what `input` asks, in order.
    pub(crate) fn handle(&mut self, input: Input, now: Now) -> Vec<Command> {
        self.now = now;
        let mut out = Vec::new();
        match input {
            Input::SessionUp => {
                self.session = Some(Session::default());
                // After the state, before any batch (which follows the peer's pull of
                // what the state announced): read by every release as an
                // acknowledgement of nothing, by this one as "I read `Received`".
                let hello = Message::Ack {
                    log: self.meta.log,
                    seq: RECEIVED_HELLO,
                };
                self.run(
                    steps([
                        Step::Refresh { force: true },
                        Step::State { force: true },
                        Step::Send(hello),
                    ]),
                    &mut out,
                );
            }
            Input::SessionLost(reason) => self.session_lost(reason, &mut out),
            Input::Unreachable(text) => self.unreachable(text, &mut out),
            Input::Received(message) => self.received(message, &mut out),
            Input::Tick { ack_busy } => self.tick(ack_busy, &mut out),
            Input::Woken { ack_busy } => self.woken(ack_busy, &mut out),
            Input::Committed { ack_busy } => self.committed(ack_busy, &mut out),
            Input::FenceChanged => self.fence_changed(&mut out),
            Input::Snapshot(item) => self.snapshot_item(item, &mut out),
            Input::Refreshed {
                meta,
                fingerprint,
                then,
            } => {
                if let Some(meta) = meta {
                    self.meta = *meta;
                }
                if let Some(fingerprint) = fingerprint {
                    self.fingerprint = fingerprint;
                }
                self.run(then, &mut out);
            }
            Input::Changes { changes, then } => self.changes(changes, then, &mut out),
            Input::PullChecked { from, check } => self.pull_checked(from, check, &mut out),
            Input::Switched { why, result, then } => self.switched(why, result, then, &mut out),
            Input::Applied { log, result } => self.applied(log, result, &mut out),
            other => self.sync_result(other, &mut out),
        }
        out
    }

    /// The fingerprint of the declared tables as the protocol knows it.
    pub(crate) fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Runs a program until it ends or waits for a command's result.
    fn run(&mut self, mut program: Program, out: &mut Vec<Command>) {
        while let Some(step) = program.pop_front() {
            if let Flow::Wait(command) = self.step(step, &mut program, out) {
                out.push(with_then(command, program));
                return;
            }
        }
    }

    fn step(&mut self, step: Step, program: &mut Program, out: &mut Vec<Command>) -> Flow {
        match step {
            Step::Refresh { force } => Flow::Wait(refresh(force)),
            Step::FlushAck { busy } => {
                self.flush_ack(busy, out);
                Flow::Next
            }
            Step::FlushPeer => {
                out.push(Command::FlushPeerRecord);
                Flow::Next
            }
            Step::Backlog => self.check_backlog(out),
            Step::Request => self.take_request(out),
            Step::Pending => self.check_pending(out),
            Step::Pull => self.update_pull(program, out),
            Step::PullSend { want } => {
                self.pull_send(want, out);
                Flow::Next
            }
            Step::Serve => self.serve(out),
            Step::State { force } => {
                self.send_state(force, false, out);
                Flow::Next
            }
            Step::Serving { from } => {
                self.start_serving(from);
                Flow::Next
            }
            Step::Snapshot { id, log, head } => {
                self.start_snapshot(id, log, head, out);
                Flow::Next
            }
            Step::Send(message) => {
                out.push(Command::Send(message));
                Flow::Next
            }
            Step::Control { id, on, local } => self.control(id, on, local, out),
            Step::RecordLost { reason } => {
                self.record_lost(reason, out);
                Flow::Next
            }
        }
    }

    /// The current fence (the default, which fences nothing, without a witness).
    fn fence(&self) -> Fence {
        self.now.fence.unwrap_or_default()
    }

    /// The peer's node id. A peer state from any other node ends the session (see
    /// `on_peer_state`), so this is also the node of every state the session keeps.
    fn peer_node(&self) -> NodeId {
        self.meta.node.peer()
    }
}

/// A program of these steps.
fn steps<const N: usize>(list: [Step; N]) -> Program {
    VecDeque::from(list)
}

/// A forced re-read whose failure ends the session.
fn refresh(force: bool) -> Command {
    Command::Refresh {
        force,
        tolerant: false,
        then: Program::new(),
    }
}

/// Gives `command` the rest of the program.
fn with_then(command: Command, program: Program) -> Command {
    match command {
        Command::Refresh {
            force, tolerant, ..
        } => Command::Refresh {
            force,
            tolerant,
            then: program,
        },
        Command::ReadChanges {
            after,
            limit,
            bytes,
            ..
        } => Command::ReadChanges {
            after,
            limit,
            bytes,
            then: program,
        },
        Command::SwitchLocal { on, why, .. } => Command::SwitchLocal {
            on,
            why,
            then: program,
        },
        other => other,
    }
}

/// Ends a step: if the last command is a re-read, the step waits for it (and the
/// program goes on with what it read).
fn pause_on_last(out: &mut Vec<Command>) -> Flow {
    if matches!(out.last(), Some(Command::Refresh { .. }))
        && let Some(command) = out.pop()
    {
        return Flow::Wait(command);
    }
    Flow::Next
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

/// A peer record that knows nothing but when it was written.
pub(crate) fn empty_record(node: Option<u8>, now_ms: u64) -> PeerRecord {
    PeerRecord {
        connected: false,
        at_ms: now_ms,
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
