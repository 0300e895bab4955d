//! Trace tests: the protocol's procedures as data files of inputs and the commands
//! answered, run against a model of the database (`Sim`), the way `tandem-role`'s
//! traces run its machine; and properties over random inputs.
//!
//! Each `tests/traces/*.trace` file of the crate declares one node, then lists events,
//! each followed by the commands carried out, indented:
//!
//! ```text
//! node node=2 site=1 log=200 writable=no state=active schema=s1
//! @0 session-up
//!   send state node=2 log=200 head=0 floor=0 acked=0 applied-log=- applied=0 writable=no state=active schema=s1
//! @10 recv state node=1 log=100 head=3 floor=0 acked=0 applied-log=- applied=0 writable=yes state=active schema=s1
//!   record-peer connected=yes error=-
//!   send pull log=- from=0
//! ```
//!
//! The model answers the commands as the shell would (a re-read gives the model's
//! meta table, changes read are made up from the head, batches apply); re-reads and
//! peer-record flushes are carried out but not listed. Run with `UPDATE_EXPECT=1` to
//! rewrite the expected commands from what the protocol does now; review the diff.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::sqlite::Request;
use crate::sqlite::meta::Mode;
use crate::wire::Op;

/// A node's protocol with a model of its database.
struct Sim {
    protocol: Protocol,
    db: Meta,
    /// The meta table as the protocol last read it.
    read: Meta,
    fence: Option<Fence>,
    now_ms: u64,
    /// Commands carried out, in order.
    done: Vec<Command>,
    /// The next pull check's refusal, and the next batch's outcome, if not the usual.
    refuse_pull: Option<String>,
    next_apply: Option<Applied>,
    /// Rows of the snapshot being received, and its log and position.
    receiving: Option<(u64, u64, u64)>,
}

impl Sim {
    fn new(db: Meta, fence: Option<Fence>, limits: Limits) -> Sim {
        let now = Now {
            mono: Duration::ZERO,
            wall_ms: 0,
            fence,
        };
        let fingerprint = db.schema.clone();
        Sim {
            protocol: Protocol::new(db.clone(), fingerprint, limits, now),
            read: db.clone(),
            db,
            fence,
            now_ms: 0,
            done: Vec::new(),
            refuse_pull: None,
            next_apply: None,
            receiving: None,
        }
    }

    fn now(&self) -> Now {
        Now {
            mono: Duration::from_millis(self.now_ms),
            wall_ms: self.now_ms,
            fence: self.fence,
        }
    }

    /// Feeds an input and carries out the commands, depth first, as the shell does.
    fn feed(&mut self, input: Input) -> Vec<Command> {
        let mut queue: VecDeque<Command> = self.protocol.handle(input, self.now()).into();
        let mut carried = Vec::new();
        while let Some(command) = queue.pop_front() {
            let result = self.execute(&command);
            carried.push(command);
            if let Some(result) = result {
                for c in self.protocol.handle(result, self.now()).into_iter().rev() {
                    queue.push_front(c);
                }
            }
        }
        self.done.extend(carried.iter().cloned());
        carried
    }

    fn execute(&mut self, command: &Command) -> Option<Input> {
        let db = &mut self.db;
        match command.clone() {
            Command::Refresh { force, then, .. } => {
                let meta = (force || self.read != *db).then(|| Box::new(db.clone()));
                self.read = db.clone();
                return Some(Input::Refreshed {
                    meta,
                    fingerprint: None,
                    then,
                });
            }
            Command::SetAlarm(alarm) => db.alarm = alarm,
            Command::SetState { state, .. } => db.state = state,
            Command::Suspend(alarm) => {
                db.state = ReplicationState::Suspended;
                db.alarm = alarm;
                db.floor = db.head;
            }
            Command::SwitchLocal { on, why, then } => {
                db.state = if on {
                    ReplicationState::Active
                } else {
                    ReplicationState::Off
                };
                let text = format!(
                    "switched {} on node {}",
                    if on { "on" } else { "off" },
                    db.node
                );
                return Some(Input::Switched {
                    why,
                    result: Ok(text),
                    then,
                });
            }
            Command::ApplyBatch { batch, .. } => {
                // As the backend: a batch must follow what was applied; one applied
                // before changes nothing.
                let applied = if db.applied_log == Some(batch.log) {
                    db.applied
                } else {
                    0
                };
                let result = self.next_apply.take().unwrap_or(if batch.prev > applied {
                    Applied::Refused(format!("gap: {} after {applied}", batch.prev))
                } else {
                    Applied::Upto(batch.last().max(applied))
                });
                if let Applied::Upto(last) = result {
                    db.applied_log = Some(batch.log);
                    db.applied = last;
                }
                return Some(Input::Applied {
                    log: batch.log,
                    result,
                });
            }
            Command::ReadChanges {
                after,
                limit,
                bytes,
                then,
            } => {
                // As the backend: at most `limit` changes, cut at the byte limit
                // (at least one).
                let last = db.head.min(after + u64::from(limit));
                let mut size = 0;
                let changes = (after + 1..=last)
                    .map(change)
                    .take_while(|c| {
                        size += c.size();
                        size <= bytes || c.seq == after + 1
                    })
                    .collect();
                return Some(Input::Changes { changes, then });
            }
            Command::CheckPull { from, .. } => {
                let check = match self.refuse_pull.take() {
                    Some(reason) => PullCheck::Refuse(reason),
                    None => PullCheck::Serve,
                };
                return Some(Input::PullChecked { from, check });
            }
            other => return self.execute_sync(other),
        }
        None
    }

    fn execute_sync(&mut self, command: Command) -> Option<Input> {
        let db = &mut self.db;
        match command {
            Command::BeginSync {
                id,
                log,
                position,
                rows,
                ..
            } => {
                self.receiving = Some((0, log, position));
                return Some(Input::SyncBegun {
                    id,
                    rows,
                    position,
                    result: Ok(()),
                });
            }
            Command::StoreRows { id, rows, .. } => {
                let total = db.progress.map_or(0, |p| p.total);
                let result = match self.receiving.as_mut() {
                    Some((received, _, _)) => {
                        *received += rows.len() as u64;
                        Ok((*received, total))
                    }
                    None => Err("no snapshot".into()),
                };
                return Some(Input::RowsStored { id, result });
            }
            Command::FinishSync { id, .. } => {
                let result = match self.receiving.take() {
                    Some((copied, log, position)) => {
                        // The snapshot supersedes this node's own changelog.
                        db.applied_log = Some(log);
                        db.applied = position;
                        db.acked = db.head;
                        db.floor = db.head;
                        db.state = ReplicationState::Active;
                        Ok(SyncDone {
                            log,
                            position,
                            copied,
                            saved: 0,
                            file: None,
                        })
                    }
                    None => Err("no snapshot".into()),
                };
                return Some(Input::SyncFinished { id, result });
            }
            Command::DropSync => self.receiving = None,
            Command::SetProgress(p) => db.progress = Some(p),
            Command::FinishRequest(done) => {
                db.request_done = Some(done);
                db.progress = None;
            }
            Command::PublishAck { seq, .. } | Command::RecordAck { seq, .. } => {
                db.acked = db.acked.max(seq);
            }
            Command::RecordPeer { record, .. } => db.peer = Some(record),
            _ => {}
        }
        None
    }
}

fn change(seq: u64) -> Change {
    Change {
        seq,
        table: "t".into(),
        op: Op::Insert,
        pk: format!("{{\"id\":{seq}}}"),
        row: Some(format!("{{\"id\":{seq}}}")),
        ts_ms: 0,
    }
}

// ---- the text form ----

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn opt(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn show_message(m: &Message) -> String {
    match m {
        Message::State(s) => {
            let mut text = format!(
                "state node={} log={} head={} floor={} acked={} applied-log={} applied={} \
                 writable={} state={} schema={}",
                s.node,
                s.log,
                s.head,
                s.floor,
                s.acked,
                opt(s.applied_log),
                s.applied,
                yes(s.writable),
                s.state.as_str(),
                s.schema
            );
            if !s.alarm.is_empty() {
                write!(text, " alarm={:?}", s.alarm).unwrap();
            }
            if s.token.is_some() {
                write!(text, " token={}", opt(s.token)).unwrap();
            }
            text
        }
        Message::Pull { log, from } => format!("pull log={} from={from}", opt(*log)),
        Message::Stop => "stop".into(),
        Message::Batch(b) => format!(
            "batch log={} prev={} last={} changes={}",
            b.log,
            b.prev,
            b.last(),
            b.changes.len()
        ),
        Message::Ack { log, seq } => format!("ack log={log} seq={seq}"),
        Message::Refuse { reason } => format!("refuse {reason:?}"),
        Message::Control { id, on } => format!("control id={id} on={}", yes(*on)),
        Message::ControlDone { id, ok, message } => {
            format!("control-done id={id} ok={} {message:?}", yes(*ok))
        }
        Message::SyncRequest {
            id,
            log,
            head,
            schema,
        } => format!("sync-request id={id} log={log} head={head} schema={schema}"),
        Message::SnapshotBegin {
            id,
            log,
            position,
            tables,
            rows,
        } => format!(
            "snapshot-begin id={id} log={log} position={position} tables={} rows={rows}",
            tables.join(",")
        ),
        Message::SnapshotRows { id, table, rows } => {
            format!("snapshot-rows id={id} table={table} rows={}", rows.len())
        }
        Message::SnapshotEnd { id, rows } => format!("snapshot-end id={id} rows={rows}"),
        Message::SyncFailed { id, reason } => format!("sync-failed id={id} {reason:?}"),
        Message::Received { log, seq } => format!("received log={log} seq={seq}"),
    }
}

/// The text of a command, or none for the plumbing the traces leave out.
fn show(c: &Command) -> Option<String> {
    Some(match c {
        Command::Refresh { .. } | Command::FlushPeerRecord | Command::SettlePeerRecord => {
            return None;
        }
        Command::Send(m) => format!("send {}", show_message(m)),
        Command::SendState { state, .. } => {
            format!("send {}", show_message(&Message::State(state.clone())))
        }
        Command::SetAlarm(a) => format!("set-alarm {a:?}"),
        Command::SetState { state, .. } => format!("set-state {}", state.as_str()),
        Command::Suspend(a) => format!("suspend {a:?}"),
        Command::SwitchLocal { on, why, .. } => {
            let why = match why {
                Switch::FollowPeer => "follow-peer".to_owned(),
                Switch::ForSync => "for-sync".to_owned(),
                Switch::Request { id, .. } => format!("request-{id}"),
                Switch::Peer { id, .. } => format!("peer-control-{id}"),
            };
            format!("switch-local on={} why={why}", yes(*on))
        }
        Command::ApplyBatch { batch, .. } => format!(
            "apply-batch log={} prev={} last={}",
            batch.log,
            batch.prev,
            batch.last()
        ),
        Command::ReadChanges { after, limit, .. } => {
            format!("read-changes after={after} limit={limit}")
        }
        Command::CheckPull { log, from, puller } => {
            format!("check-pull log={} from={from} puller={puller}", opt(*log))
        }
        Command::StartSnapshot { id, log, head, .. } => {
            format!("start-snapshot id={id} log={log} head={head}")
        }
        Command::StopSnapshot => "stop-snapshot".into(),
        Command::BeginSync {
            id, log, position, ..
        } => format!("begin-sync id={id} log={log} position={position}"),
        Command::StoreRows { id, table, rows } => {
            format!("store-rows id={id} table={table} rows={}", rows.len())
        }
        Command::FinishSync { id, rows, peer } => {
            format!("finish-sync id={id} rows={rows} peer={peer}")
        }
        Command::DropSync => "drop-sync".into(),
        Command::SetProgress(p) => {
            format!("set-progress id={} done={} total={}", p.id, p.done, p.total)
        }
        Command::FinishRequest(d) => {
            format!(
                "finish-request id={} ok={} {:?}",
                d.id,
                yes(d.ok),
                d.message
            )
        }
        Command::ShipSoon => "ship-soon".into(),
        Command::PublishAck { log, seq, received } => {
            format!("publish-ack log={log} seq={seq} received={received}")
        }
        Command::RecordAck { log, seq, wait } => {
            format!("record-ack log={log} seq={seq} wait={}", yes(*wait))
        }
        Command::RecordPeer { record, .. } => format!(
            "record-peer connected={} error={}",
            yes(record.connected),
            record
                .error
                .as_deref()
                .map_or("-".into(), |e| format!("{e:?}"))
        ),
        Command::RecordApplyFailure(f) => format!("record-apply-failure {f:?}"),
        Command::End(e) => format!("end {e:?}"),
    })
}

/// Words of a line; a word may be or hold a quoted string (`key="a b"`).
fn tokenize(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = line.chars();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' if quoted => word.push(chars.next().ok_or("dangling escape")?),
            ' ' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if quoted {
        return Err(format!("unterminated quote in `{line}`"));
    }
    if !word.is_empty() {
        words.push(word);
    }
    Ok(words)
}

/// The `key=value` words of a line, and the others.
struct Args {
    keys: BTreeMap<String, String>,
    free: Vec<String>,
}

impl Args {
    fn parse(words: &[String]) -> Args {
        let mut keys = BTreeMap::new();
        let mut free = Vec::new();
        for w in words {
            match w.split_once('=') {
                Some((k, v)) if !k.contains(' ') => {
                    keys.insert(k.to_owned(), v.to_owned());
                }
                _ => free.push(w.clone()),
            }
        }
        Args { keys, free }
    }

    fn str(&self, k: &str) -> Result<String, String> {
        self.keys.get(k).cloned().ok_or(format!("missing {k}="))
    }

    fn num(&self, k: &str) -> Result<u64, String> {
        self.str(k)?
            .parse()
            .map_err(|_| format!("{k}= is not a number"))
    }

    fn opt_num(&self, k: &str) -> Result<Option<u64>, String> {
        match self.str(k)?.as_str() {
            "-" => Ok(None),
            v => v
                .parse()
                .map(Some)
                .map_err(|_| format!("{k}= is not a number")),
        }
    }

    fn yes(&self, k: &str) -> Result<bool, String> {
        Ok(self.str(k)? == "yes")
    }

    fn text(&self) -> Result<String, String> {
        self.free.first().cloned().ok_or("missing text".into())
    }
}

fn state_word(v: &str) -> Result<ReplicationState, String> {
    ReplicationState::parse(v).ok_or(format!("bad state {v}"))
}

fn parse_message(words: &[String]) -> Result<Message, String> {
    let (name, rest) = words.split_first().ok_or("empty message")?;
    let a = Args::parse(rest);
    Ok(match name.as_str() {
        "state" => Message::State(NodeState {
            node: u8::try_from(a.num("node")?)
                .ok()
                .and_then(|n| NodeId::try_from(n).ok())
                .ok_or("node= must be 1 or 2")?,
            site: 1,
            log: a.num("log")?,
            head: a.num("head")?,
            floor: a.num("floor").unwrap_or(0),
            acked: a.num("acked").unwrap_or(0),
            applied_log: a.opt_num("applied-log").unwrap_or(None),
            applied: a.num("applied").unwrap_or(0),
            writable: a.yes("writable")?,
            state: state_word(&a.str("state")?)?,
            schema: a.str("schema")?,
            alarm: a.str("alarm").unwrap_or_default(),
            lag_ms: None,
            token: a.opt_num("token").unwrap_or(None),
        }),
        "pull" => Message::Pull {
            log: a.opt_num("log")?,
            from: a.num("from")?,
        },
        "stop" => Message::Stop,
        "batch" => {
            let (prev, last) = (a.num("prev")?, a.num("last")?);
            Message::Batch(Batch {
                log: a.num("log")?,
                prev,
                changes: (prev + 1..=last).map(change).collect(),
            })
        }
        "ack" => Message::Ack {
            log: a.num("log")?,
            seq: a.num("seq")?,
        },
        "received" => Message::Received {
            log: a.num("log")?,
            seq: a.num("seq")?,
        },
        "refuse" => Message::Refuse { reason: a.text()? },
        "control" => Message::Control {
            id: a.num("id")?,
            on: a.yes("on")?,
        },
        "control-done" => Message::ControlDone {
            id: a.num("id")?,
            ok: a.yes("ok")?,
            message: a.text()?,
        },
        "sync-request" => Message::SyncRequest {
            id: a.num("id")?,
            log: a.num("log")?,
            head: a.num("head")?,
            schema: a.str("schema")?,
        },
        "snapshot-begin" => Message::SnapshotBegin {
            id: a.num("id")?,
            log: a.num("log")?,
            position: a.num("position")?,
            tables: a.str("tables")?.split(',').map(str::to_owned).collect(),
            rows: a.num("rows")?,
        },
        "snapshot-rows" => Message::SnapshotRows {
            id: a.num("id")?,
            table: a.str("table")?,
            rows: (0..a.num("rows")?)
                .map(|i| SnapshotRow {
                    pk: format!("{{\"id\":{i}}}"),
                    row: format!("{{\"id\":{i}}}"),
                })
                .collect(),
        },
        "snapshot-end" => Message::SnapshotEnd {
            id: a.num("id")?,
            rows: a.num("rows")?,
        },
        "sync-failed" => Message::SyncFailed {
            id: a.num("id")?,
            reason: a.text()?,
        },
        other => return Err(format!("unknown message {other}")),
    })
}

/// `node node=N log=L writable=yes|no state=S schema=F [head= acked= floor=
/// applied-log= applied= alarm= window= batch= batch-bytes= max-backlog= token= fence-floor=]`
fn declare(words: &[String]) -> Result<Sim, String> {
    let a = Args::parse(words);
    let num = |k: &str, d: u64| {
        a.num(k).or(if a.keys.contains_key(k) {
            Err(format!("bad {k}"))
        } else {
            Ok(d)
        })
    };
    let writable = a.yes("writable")?;
    let state = state_word(&a.str("state")?)?;
    let node = u8::try_from(a.num("node")?)
        .ok()
        .and_then(|n| tandem_core::NodeId::try_from(n).ok())
        .ok_or("node is 1 or 2")?;
    let db = Meta {
        node,
        site: 1,
        remote: "192.0.2.1:7000".into(),
        local: "192.0.2.2".into(),
        log: a.num("log")?,
        writable,
        state,
        mode: Mode::for_role(writable, state),
        applied_log: a.opt_num("applied-log").unwrap_or(None),
        applied: num("applied", 0)?,
        acked: num("acked", 0)?,
        floor: num("floor", 0)?,
        uncaptured: false,
        alarm: a.str("alarm").unwrap_or_default(),
        schema: a.str("schema")?,
        request: None,
        request_done: None,
        progress: None,
        peer: None,
        head: num("head", 0)?,
    };
    let fence = match a.opt_num("token") {
        Ok(mine) => Some(Fence::new(mine, num("fence-floor", 0)?)),
        Err(_) => None,
    };
    let limits = Limits {
        window: usize::try_from(num("window", 4)?).map_err(|e| e.to_string())?,
        batch_size: u32::try_from(num("batch", 100)?).map_err(|e| e.to_string())?,
        batch_bytes: usize::try_from(num("batch-bytes", 1 << 20)?).map_err(|e| e.to_string())?,
        chunk: 1 << 20,
        max_backlog: num("max-backlog", 1_000_000)?,
    };
    Ok(Sim::new(db, fence, limits))
}

/// Carries out one event line (after `@ms `) on the node.
fn event(sim: &mut Sim, words: &[String]) -> Result<Option<Vec<Command>>, String> {
    let (name, rest) = words.split_first().ok_or("empty event")?;
    let a = Args::parse(rest);
    let input = match name.as_str() {
        "session-up" => Input::SessionUp,
        "session-lost" => Input::SessionLost(a.free.first().cloned()),
        "unreachable" => Input::Unreachable(a.text()?),
        "tick" => Input::Tick {
            ack_busy: a.free.iter().any(|w| w == "ack-busy"),
        },
        "woken" => Input::Woken { ack_busy: false },
        "committed" => Input::Committed { ack_busy: false },
        "recv" => Input::Received(parse_message(rest)?),
        "snapshot" => Input::Snapshot(SnapshotItem::Message(parse_message(rest)?)),
        "snapshot-failed" => Input::Snapshot(SnapshotItem::Failed(a.text()?)),
        "snapshot-done" => Input::Snapshot(SnapshotItem::Done),
        "fence" => {
            sim.fence = Some(Fence::new(a.opt_num("mine")?, a.num("floor")?));
            Input::FenceChanged
        }
        "db" => {
            db_change(sim, &a)?;
            return Ok(None);
        }
        "request" => {
            sim.db.request = Some(Request {
                id: a.num("id")?,
                on: a.str("switch")? != "off",
                sync: a.str("switch")? == "from-sync",
                deadline_ms: a.num("deadline")?,
            });
            return Ok(None);
        }
        "next-pull-check" => {
            sim.refuse_pull = Some(a.text()?);
            return Ok(None);
        }
        "next-apply" => {
            sim.next_apply = Some(match a.str("outcome")?.as_str() {
                "refused" => Applied::Refused(a.text()?),
                _ => Applied::Failed(a.text()?),
            });
            return Ok(None);
        }
        other => return Err(format!("unknown event {other}")),
    };
    Ok(Some(sim.feed(input)))
}

/// `db head=N acked=N writable=yes|no state=S schema=F`: what others did to the
/// database meanwhile.
fn db_change(sim: &mut Sim, a: &Args) -> Result<(), String> {
    for (k, v) in &a.keys {
        let n = || v.parse::<u64>().map_err(|_| format!("bad {k}"));
        match k.as_str() {
            "head" => sim.db.head = n()?,
            "acked" => sim.db.acked = n()?,
            "floor" => sim.db.floor = n()?,
            "writable" => sim.db.writable = v == "yes",
            "state" => sim.db.state = state_word(v)?,
            "schema" => sim.db.schema = v.clone(),
            other => return Err(format!("unknown db field {other}")),
        }
    }
    Ok(())
}

/// Replays a trace and returns it with the commands carried out.
fn run(text: &str) -> Result<String, String> {
    let mut sim: Option<Sim> = None;
    let mut out = String::new();
    for (n, line) in text.lines().enumerate() {
        let err = |e: String| format!("line {}: {e}", n + 1);
        if line.starts_with("  ") {
            continue; // expected commands: replaced by the actual ones below
        }
        writeln!(out, "{line}").unwrap();
        if let Some(decl) = line.strip_prefix("node ") {
            sim = Some(declare(&tokenize(decl).map_err(err)?).map_err(err)?);
        } else if let Some(rest) = line.strip_prefix('@') {
            let (ms, rest) = rest
                .split_once(' ')
                .ok_or_else(|| err("expected `@<ms> <event>`".into()))?;
            let sim = sim.as_mut().ok_or_else(|| err("no node declared".into()))?;
            let ms: u64 = ms.parse().map_err(|_| err(format!("bad time `{ms}`")))?;
            if ms < sim.now_ms {
                return Err(err("time goes backwards".into()));
            }
            sim.now_ms = ms;
            let words = tokenize(rest).map_err(err)?;
            for command in event(sim, &words).map_err(err)?.unwrap_or_default() {
                if let Some(text) = show(&command) {
                    writeln!(out, "  {text}").unwrap();
                }
            }
        } else if !(line.is_empty() || line.starts_with('#')) {
            return Err(err(format!("cannot read `{line}`")));
        }
    }
    Ok(out)
}

/// Runs a trace file and compares, or rewrites it under `UPDATE_EXPECT=1`.
fn check(name: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/traces")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let actual = run(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if actual == text {
        return;
    }
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let first = text
        .lines()
        .zip(actual.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| text.lines().count().min(actual.lines().count()));
    let show = |s: &str| {
        s.lines()
            .skip(first.saturating_sub(3))
            .take(12)
            .collect::<Vec<_>>()
            .join("\n")
    };
    panic!(
        "{} differs at line {}\n--- expected\n{}\n--- actual\n{}\n(rerun with UPDATE_EXPECT=1 to accept, then review the diff)",
        path.display(),
        first + 1,
        show(&text),
        show(&actual)
    );
}

#[test]
fn a_standby_catches_up_batch_by_batch() {
    check("standby-catch-up.trace");
}

#[test]
fn the_active_node_serves_its_changelog_within_the_window() {
    check("active-serves.trace");
}

#[test]
fn the_active_node_serves_a_from_sync_snapshot() {
    check("serve-snapshot.trace");
}

#[test]
fn a_standby_receives_a_from_sync_snapshot() {
    check("receive-snapshot.trace");
}

#[test]
fn a_switch_on_request_is_answered_by_the_peer() {
    check("switch-on-request.trace");
}

#[test]
fn a_peer_with_a_stale_token_is_refused() {
    check("fenced-peer.trace");
}

#[test]
fn a_lost_session_resumes_at_the_applied_position() {
    check("session-resumed.trace");
}

#[test]
fn a_schema_mismatch_blocks_pulling_and_from_sync() {
    check("schema-mismatch.trace");
}

#[test]
fn a_peer_state_from_another_node_id_ends_the_session() {
    check("wrong-node.trace");
}

#[test]
fn an_unreachable_peer_is_recorded_once() {
    check("unreachable.trace");
}

#[test]
fn the_backlog_limit_suspends_replication() {
    check("backlog-limit.trace");
}

#[test]
fn a_read_cut_by_the_byte_limit_keeps_the_next_batch_eager() {
    check("byte-limit.trace");
}

#[test]
fn the_active_node_publishes_received_positions_and_ships_on() {
    check("received-acks.trace");
}

#[test]
fn a_standby_says_received_only_to_a_peer_that_reads_it() {
    check("standby-says-received.trace");
}

#[test]
fn every_trace_file_is_checked() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/traces");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    let source = include_str!("tests.rs");
    for file in files {
        assert!(
            source.contains(&format!("check(\"{file}\")")),
            "{file} has no test"
        );
    }
}

// ---- properties ----

/// A random event for a standby (node 2) that follows node 1.
#[derive(Debug, Clone)]
enum Ev {
    Tick(u64),
    PeerState {
        head: u64,
        token: Option<u64>,
    },
    Batch {
        prev: u64,
        len: u64,
    },
    /// The peer says it reads `Received` (an older peer never does).
    Hello,
    ApplyFails,
    Lost,
    Up,
    Request {
        id: u64,
        sync: bool,
    },
    Fence {
        floor: u64,
    },
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        (1u64..3000).prop_map(Ev::Tick),
        (0u64..40, proptest::option::of(0u64..4))
            .prop_map(|(head, token)| Ev::PeerState { head, token }),
        (0u64..40, 1u64..6).prop_map(|(prev, len)| Ev::Batch { prev, len }),
        Just(Ev::Hello),
        Just(Ev::ApplyFails),
        Just(Ev::Lost),
        Just(Ev::Up),
        (1u64..6, any::<bool>()).prop_map(|(id, sync)| Ev::Request { id, sync }),
        (0u64..4).prop_map(|floor| Ev::Fence { floor }),
    ]
}

fn standby() -> Sim {
    let words = tokenize("node=2 log=200 writable=no state=active schema=s1 token=2 fence-floor=0")
        .unwrap();
    declare(&words).unwrap()
}

fn play(sim: &mut Sim, e: &Ev) {
    let input = match e.clone() {
        Ev::Tick(ms) => {
            sim.now_ms += ms;
            Input::Tick { ack_busy: false }
        }
        Ev::PeerState { head, token } => Input::Received(Message::State(NodeState {
            node: NodeId::One,
            site: 1,
            log: 100,
            head,
            floor: 0,
            acked: 0,
            applied_log: None,
            applied: 0,
            writable: true,
            state: ReplicationState::Active,
            schema: "s1".into(),
            alarm: String::new(),
            lag_ms: None,
            token,
        })),
        Ev::Batch { prev, len } => Input::Received(Message::Batch(Batch {
            log: 100,
            prev,
            changes: (prev + 1..=prev + len).map(change).collect(),
        })),
        Ev::Hello => Input::Received(Message::Ack {
            log: 100,
            seq: RECEIVED_HELLO,
        }),
        Ev::ApplyFails => {
            sim.next_apply = Some(Applied::Failed("disk full".into()));
            return;
        }
        Ev::Lost => Input::SessionLost(None),
        Ev::Up => Input::SessionUp,
        Ev::Request { id, sync } => {
            sim.db.request = Some(Request {
                id,
                on: true,
                sync,
                deadline_ms: sim.now_ms + 5000,
            });
            return;
        }
        Ev::Fence { floor } => {
            sim.fence = Some(Fence::new(Some(2), floor));
            Input::FenceChanged
        }
    };
    let ended = sim.feed(input).iter().any(|c| matches!(c, Command::End(_)));
    if ended {
        sim.feed(Input::SessionLost(Some("ended".into())));
    }
}

proptest! {
    /// The standby's applied position and the positions it acknowledges and pulls
    /// from never go backwards, whatever arrives in whatever order.
    #[test]
    fn positions_never_go_backwards(events in proptest::collection::vec(ev(), 1..60)) {
        let mut sim = standby();
        sim.feed(Input::SessionUp);
        let mut applied = 0;
        for e in &events {
            play(&mut sim, e);
            prop_assert!(sim.db.applied >= applied, "applied went from {applied} to {}", sim.db.applied);
            applied = sim.db.applied;
        }
        let mut acked = 0;
        for c in &sim.done {
            if let Command::Send(Message::Ack { seq, .. }) = c
                && *seq != RECEIVED_HELLO
            {
                prop_assert!(*seq >= acked, "acknowledged {seq} after {acked}");
                acked = *seq;
            }
            if let Command::Send(Message::Pull { from, .. }) = c {
                prop_assert!(*from <= applied, "pulled from {from} past {applied}");
            }
        }
    }

    /// Every request is answered at most once.
    #[test]
    fn every_request_is_answered_at_most_once(events in proptest::collection::vec(ev(), 1..60)) {
        let mut sim = standby();
        for e in &events {
            play(&mut sim, e);
        }
        let mut answered = std::collections::BTreeSet::new();
        for c in &sim.done {
            if let Command::FinishRequest(done) = c {
                prop_assert!(answered.insert(done.id), "request {} answered twice", done.id);
            }
        }
    }

    /// A batch is applied only while the fence admits the peer's token.
    #[test]
    fn batches_apply_only_when_the_fence_admits(events in proptest::collection::vec(ev(), 1..60)) {
        let mut sim = standby();
        sim.feed(Input::SessionUp);
        for e in &events {
            let before = sim.done.len();
            play(&mut sim, e);
            for c in &sim.done[before..] {
                if let Command::ApplyBatch { peer, token, .. } = c {
                    let fence = sim.fence.unwrap_or_default();
                    prop_assert!(fence.admits(*peer, *token).is_ok());
                }
            }
        }
    }
}

proptest! {
    /// A standby says `Received` only to a peer that said it reads it in this
    /// session, and only for a batch it then applies (unless its disk fails).
    #[test]
    fn received_goes_only_to_a_peer_that_reads_it_and_is_then_applied(
        events in proptest::collection::vec(ev(), 1..60),
    ) {
        let mut sim = standby();
        sim.feed(Input::SessionUp);
        let (mut in_session, mut hello) = (true, false);
        for e in &events {
            match e {
                Ev::Up => (in_session, hello) = (true, false),
                Ev::Lost => (in_session, hello) = (false, false),
                Ev::Hello => hello = in_session,
                _ => {}
            }
            let before = sim.done.len();
            play(&mut sim, e);
            let new = &sim.done[before..];
            let failed = new.iter().any(|c| matches!(c, Command::End(_)));
            for (i, c) in new.iter().enumerate() {
                if let Command::Send(Message::Received { seq, .. }) = c {
                    prop_assert!(hello, "received {seq} sent to a peer that never said it reads it");
                    let next_applies = matches!(
                        new.get(i + 1),
                        Some(Command::ApplyBatch { batch, .. }) if batch.last() == *seq
                    );
                    prop_assert!(next_applies, "received {seq} is not followed by its apply");
                    prop_assert!(failed || sim.db.applied >= *seq, "received {seq}, applied {}", sim.db.applied);
                }
            }
            if failed {
                (in_session, hello) = (false, false);
            }
        }
    }

    /// On the active node the published positions never go back, the received one is
    /// never behind the applied one, and neither passes the head; a `Received` that
    /// covers every batch in flight lets the next one go before the peer's applied
    /// acknowledgement: at once if a commit waits, else a coalescing time later.
    #[test]
    fn published_positions_are_monotonic_and_received_frees_the_window(
        events in proptest::collection::vec((0u8..4, 0u64..12), 1..60),
    ) {
        let words = tokenize("node=1 log=100 writable=yes state=active schema=s1 head=5 window=2 batch=3")
            .unwrap();
        let mut sim = declare(&words).unwrap();
        sim.feed(Input::SessionUp);
        sim.feed(Input::Received(Message::State(NodeState {
            node: NodeId::Two,
            site: 1,
            log: 200,
            head: 0,
            floor: 0,
            acked: 0,
            applied_log: None,
            applied: 0,
            writable: false,
            state: ReplicationState::Active,
            schema: "s1".into(),
            alarm: String::new(),
            lag_ms: None,
            token: None,
        })));
        sim.feed(Input::Received(Message::Pull { log: Some(100), from: 0 }));
        sim.feed(Input::Tick { ack_busy: false });
        let mut sent = 0;
        // A commit woke the service since the last batch went out.
        let mut waits = false;
        for (kind, n) in events {
            let newest = sim.done.iter().fold(sent, |s, c| match c {
                Command::Send(Message::Batch(b)) => s.max(b.last()),
                _ => s,
            });
            if newest > sent {
                (sent, waits) = (newest, false);
            }
            let before = sim.done.len();
            match kind {
                // A commit that waits for the peer, or (odd) one that nobody waits for.
                0 => {
                    sim.db.head += n;
                    if n % 2 == 0 {
                        waits = true;
                        sim.feed(Input::Woken { ack_busy: false });
                    } else {
                        sim.feed(Input::Committed { ack_busy: false });
                    }
                }
                1 => {
                    sim.feed(Input::Received(Message::Ack { log: 100, seq: n.min(sent) }));
                }
                2 => {
                    let seq = n.min(sent);
                    let all = seq == sent && sim.db.head > sent;
                    sim.feed(Input::Received(Message::Received { log: 100, seq }));
                    if all {
                        let new = &sim.done[before..];
                        let shipped = new
                            .iter()
                            .any(|c| matches!(c, Command::Send(Message::Batch(b)) if b.prev == sent));
                        let soon = new.iter().any(|c| matches!(c, Command::ShipSoon));
                        prop_assert!(shipped || soon, "nothing shipped or due after {sent} was received");
                        prop_assert!(shipped || !waits, "a waiting commit not shipped after {sent} was received");
                    }
                }
                _ => {
                    sim.now_ms += n * 100;
                    sim.feed(Input::Tick { ack_busy: false });
                }
            }
        }
        let mut last = (0, 0);
        for c in &sim.done {
            if let Command::PublishAck { seq, received, .. } = c {
                prop_assert!(*received >= *seq, "received {received} behind applied {seq}");
                prop_assert!(*seq >= last.0 && *received >= last.1, "{:?} after {last:?}", (seq, received));
                prop_assert!(*received <= sim.db.head);
                last = (*seq, *received);
            }
        }
    }
}
