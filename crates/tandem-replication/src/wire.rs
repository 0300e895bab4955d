//! The replication messages exchanged over the peer link, and their binary codec.
//!
//! The peer link carries opaque, authenticated messages; this module gives them a
//! meaning. Every message starts with the wire version and a tag byte; integers are
//! big-endian, strings are a `u32` length and UTF-8, lists a `u32` count. Decoding never
//! panics and never allocates more than the input could hold: a bad message is an error.

use crate::error::{Error, Result};
use crate::status::ReplicationState;

/// The version byte every message starts with.
pub const WIRE_VERSION: u8 = 1;

/// What a node tells its peer about itself: sent when a session starts, whenever it
/// changes and once a second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    /// The sender's node id.
    pub node: u8,
    /// The sender's site.
    pub site: u16,
    /// The id of the sender's changelog.
    pub log: u64,
    /// The newest sequence number of the sender's changelog.
    pub head: u64,
    /// Positions of the sender's changelog at or below which it holds no entries for
    /// the peer to pull (pruned after acknowledgement, or never captured).
    pub floor: u64,
    /// The newest sequence number of the sender's changelog that the peer acknowledged.
    pub acked: u64,
    /// The changelog of the receiver that the sender applies from, if any.
    pub applied_log: Option<u64>,
    /// The newest position of `applied_log` applied on the sender.
    pub applied: u64,
    /// Whether the sender's database takes application writes.
    pub writable: bool,
    /// The sender's replication state.
    pub state: ReplicationState,
    /// A fingerprint of the sender's declared tables and their columns.
    pub schema: String,
    /// The sender's current alarm, empty if none.
    pub alarm: String,
    /// Age in milliseconds of the sender's oldest unacknowledged change, if it has one.
    pub lag_ms: Option<u64>,
    /// The sender's fencing token: the witness revision at which the site's leader key
    /// was created for the sender, if it holds the key (`None`: it holds none, or the
    /// site has no witness). Encoded as an optional trailing field, absent when `None`,
    /// so a state without a token is byte for byte what peers without fencing send,
    /// and a state from such a peer decodes with `None`.
    pub token: Option<u64>,
}

/// An operation recorded in the changelog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A row was inserted (apply: upsert).
    Insert,
    /// A row was updated without changing its key (apply: upsert).
    Update,
    /// A row was deleted (apply: delete by key).
    Delete,
}

impl Op {
    /// The letter stored in the changelog.
    pub fn letter(self) -> &'static str {
        match self {
            Op::Insert => "I",
            Op::Update => "U",
            Op::Delete => "D",
        }
    }

    /// Parses [`letter`](Self::letter).
    pub fn from_letter(text: &str) -> Option<Op> {
        match text {
            "I" => Some(Op::Insert),
            "U" => Some(Op::Update),
            "D" => Some(Op::Delete),
            _ => None,
        }
    }
}

/// One changelog entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Its sequence number in the source's changelog.
    pub seq: u64,
    /// The table.
    pub table: String,
    /// The operation.
    pub op: Op,
    /// The key as a JSON object of the primary key columns.
    pub pk: String,
    /// The whole new row as a JSON object (`None` for a delete).
    pub row: Option<String>,
    /// When the change was committed, milliseconds since the Unix epoch (source clock).
    pub ts_ms: i64,
}

/// Consecutive changelog entries: every entry of the source's log `log` with a sequence
/// number in `(prev, last seq]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The source's changelog id.
    pub log: u64,
    /// The position the batch follows; the receiver must have applied at least this.
    pub prev: u64,
    /// The entries, in sequence order.
    pub changes: Vec<Change>,
}

impl Batch {
    /// The position after applying the batch.
    pub fn last(&self) -> u64 {
        self.changes.last().map_or(self.prev, |c| c.seq)
    }

    /// Whether `next` follows this batch directly (same changelog, starting where this
    /// one ends), so that both can be applied as one.
    pub fn is_followed_by(&self, next: &Batch) -> bool {
        next.log == self.log && next.prev == self.last()
    }
}

/// Group commit on the receiving side: merges runs of batches that follow each other
/// directly ([`Batch::is_followed_by`]) into one batch each, in order, so that a receiver
/// that found several batches waiting applies them in one transaction and acknowledges
/// once. Batches that do not follow on start a new group; nothing is dropped or reordered,
/// so applying the result is the same as applying the input one by one.
pub fn coalesce(batches: impl IntoIterator<Item = Batch>) -> Vec<Batch> {
    let mut out: Vec<Batch> = Vec::new();
    for batch in batches {
        match out.last_mut() {
            Some(group) if group.is_followed_by(&batch) => group.changes.extend(batch.changes),
            _ => out.push(batch),
        }
    }
    out
}

/// One row of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRow {
    /// The key as a JSON object.
    pub pk: String,
    /// The row as a JSON object.
    pub row: String,
}

/// A replication message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// The sender's state.
    State(NodeState),
    /// "Stream me your changes after `from` of your log `log`" (`None`: I have applied
    /// nothing of yours yet).
    Pull {
        /// The receiver's changelog id as the sender knows it.
        log: Option<u64>,
        /// The position the sender applied.
        from: u64,
    },
    /// "Stop streaming to me."
    Stop,
    /// Changes.
    Batch(Batch),
    /// "I applied your log `log` up to `seq`, durably."
    Ack {
        /// The acknowledged changelog.
        log: u64,
        /// The newest applied position.
        seq: u64,
    },
    /// A pull was refused; the text says why and what to do.
    Refuse {
        /// Why.
        reason: String,
    },
    /// "Switch replication on (or off) on your side too."
    Control {
        /// Request id, echoed in [`Message::ControlDone`].
        id: u64,
        /// On or off.
        on: bool,
    },
    /// The answer to [`Message::Control`].
    ControlDone {
        /// The request id.
        id: u64,
        /// Whether it worked.
        ok: bool,
        /// What happened.
        message: String,
    },
    /// "Send me a consistent snapshot of your declared tables" (from-sync). The sender's
    /// own changelog up to `head` is superseded by the snapshot.
    SyncRequest {
        /// Request id.
        id: u64,
        /// The sender's changelog id.
        log: u64,
        /// The sender's changelog head.
        head: u64,
        /// The sender's schema fingerprint.
        schema: String,
    },
    /// A snapshot starts: the tables as of position `position` of log `log`.
    SnapshotBegin {
        /// The sync request id.
        id: u64,
        /// The sender's changelog id.
        log: u64,
        /// The position the snapshot is consistent with.
        position: u64,
        /// The tables that follow, in order.
        tables: Vec<String>,
        /// Rows in all tables.
        rows: u64,
    },
    /// Rows of one table.
    SnapshotRows {
        /// The sync request id.
        id: u64,
        /// The table.
        table: String,
        /// The rows.
        rows: Vec<SnapshotRow>,
    },
    /// The snapshot is complete.
    SnapshotEnd {
        /// The sync request id.
        id: u64,
        /// Rows sent in all.
        rows: u64,
    },
    /// The snapshot cannot be sent.
    SyncFailed {
        /// The sync request id.
        id: u64,
        /// Why.
        reason: String,
    },
}

const TAG_STATE: u8 = 1;
const TAG_PULL: u8 = 2;
const TAG_STOP: u8 = 3;
const TAG_BATCH: u8 = 4;
const TAG_ACK: u8 = 5;
const TAG_REFUSE: u8 = 6;
const TAG_CONTROL: u8 = 7;
const TAG_CONTROL_DONE: u8 = 8;
const TAG_SYNC_REQUEST: u8 = 9;
const TAG_SNAPSHOT_BEGIN: u8 = 10;
const TAG_SNAPSHOT_ROWS: u8 = 11;
const TAG_SNAPSHOT_END: u8 = 12;
const TAG_SYNC_FAILED: u8 = 13;

const STATES: [ReplicationState; 7] = [
    ReplicationState::Initialized,
    ReplicationState::Active,
    ReplicationState::Off,
    ReplicationState::Syncing,
    ReplicationState::Suspended,
    ReplicationState::Failed,
    ReplicationState::Unknown,
];

impl Message {
    /// Encodes the message.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc(Vec::with_capacity(64));
        e.u8(WIRE_VERSION);
        match self {
            Message::State(s) => {
                e.u8(TAG_STATE);
                e.u8(s.node);
                e.u16(s.site);
                e.u64(s.log);
                e.u64(s.head);
                e.u64(s.floor);
                e.u64(s.acked);
                e.opt_u64(s.applied_log);
                e.u64(s.applied);
                e.bool(s.writable);
                let code = STATES.iter().position(|x| *x == s.state).unwrap_or(6);
                e.u8(u8::try_from(code).unwrap_or(6));
                e.str(&s.schema);
                e.str(&s.alarm);
                e.opt_u64(s.lag_ms);
                // Trailing and optional: absent when there is no token.
                if s.token.is_some() {
                    e.opt_u64(s.token);
                }
            }
            Message::Pull { log, from } => {
                e.u8(TAG_PULL);
                e.opt_u64(*log);
                e.u64(*from);
            }
            Message::Stop => e.u8(TAG_STOP),
            Message::Batch(b) => {
                e.u8(TAG_BATCH);
                e.u64(b.log);
                e.u64(b.prev);
                e.len(b.changes.len());
                for c in &b.changes {
                    e.u64(c.seq);
                    e.str(&c.table);
                    e.u8(match c.op {
                        Op::Insert => b'I',
                        Op::Update => b'U',
                        Op::Delete => b'D',
                    });
                    e.str(&c.pk);
                    match &c.row {
                        Some(row) => {
                            e.bool(true);
                            e.str(row);
                        }
                        None => e.bool(false),
                    }
                    e.u64(c.ts_ms.cast_unsigned());
                }
            }
            Message::Ack { log, seq } => {
                e.u8(TAG_ACK);
                e.u64(*log);
                e.u64(*seq);
            }
            Message::Refuse { reason } => {
                e.u8(TAG_REFUSE);
                e.str(reason);
            }
            Message::Control { id, on } => {
                e.u8(TAG_CONTROL);
                e.u64(*id);
                e.bool(*on);
            }
            Message::ControlDone { id, ok, message } => {
                e.u8(TAG_CONTROL_DONE);
                e.u64(*id);
                e.bool(*ok);
                e.str(message);
            }
            Message::SyncRequest {
                id,
                log,
                head,
                schema,
            } => {
                e.u8(TAG_SYNC_REQUEST);
                e.u64(*id);
                e.u64(*log);
                e.u64(*head);
                e.str(schema);
            }
            Message::SnapshotBegin {
                id,
                log,
                position,
                tables,
                rows,
            } => {
                e.u8(TAG_SNAPSHOT_BEGIN);
                e.u64(*id);
                e.u64(*log);
                e.u64(*position);
                e.len(tables.len());
                for t in tables {
                    e.str(t);
                }
                e.u64(*rows);
            }
            Message::SnapshotRows { id, table, rows } => {
                e.u8(TAG_SNAPSHOT_ROWS);
                e.u64(*id);
                e.str(table);
                e.len(rows.len());
                for r in rows {
                    e.str(&r.pk);
                    e.str(&r.row);
                }
            }
            Message::SnapshotEnd { id, rows } => {
                e.u8(TAG_SNAPSHOT_END);
                e.u64(*id);
                e.u64(*rows);
            }
            Message::SyncFailed { id, reason } => {
                e.u8(TAG_SYNC_FAILED);
                e.u64(*id);
                e.str(reason);
            }
        }
        e.0
    }

    /// Decodes a message; any malformed input is an [`Error::Protocol`].
    pub fn decode(bytes: &[u8]) -> Result<Message> {
        let mut d = Dec(bytes);
        let version = d.u8()?;
        if version != WIRE_VERSION {
            return Err(Error::Protocol(format!(
                "the peer speaks replication wire version {version}, this node speaks {WIRE_VERSION}"
            )));
        }
        let tag = d.u8()?;
        let message = match tag {
            TAG_STATE => Message::State(NodeState {
                node: d.u8()?,
                site: d.u16()?,
                log: d.u64()?,
                head: d.u64()?,
                floor: d.u64()?,
                acked: d.u64()?,
                applied_log: d.opt_u64()?,
                applied: d.u64()?,
                writable: d.bool()?,
                state: {
                    let code = d.u8()?;
                    *STATES
                        .get(usize::from(code))
                        .ok_or_else(|| proto(format!("unknown replication state code {code}")))?
                },
                schema: d.str()?,
                alarm: d.str()?,
                lag_ms: d.opt_u64()?,
                // Absent in states from peers without fencing.
                token: if d.0.is_empty() { None } else { d.opt_u64()? },
            }),
            TAG_PULL => Message::Pull {
                log: d.opt_u64()?,
                from: d.u64()?,
            },
            TAG_STOP => Message::Stop,
            TAG_BATCH => {
                let log = d.u64()?;
                let prev = d.u64()?;
                let count = d.len()?;
                let mut changes = Vec::with_capacity(count);
                for _ in 0..count {
                    let seq = d.u64()?;
                    let table = d.str()?;
                    let op = match d.u8()? {
                        b'I' => Op::Insert,
                        b'U' => Op::Update,
                        b'D' => Op::Delete,
                        other => return Err(proto(format!("unknown change operation {other}"))),
                    };
                    let pk = d.str()?;
                    let row = if d.bool()? { Some(d.str()?) } else { None };
                    let ts_ms = d.u64()?.cast_signed();
                    changes.push(Change {
                        seq,
                        table,
                        op,
                        pk,
                        row,
                        ts_ms,
                    });
                }
                Message::Batch(Batch { log, prev, changes })
            }
            TAG_ACK => Message::Ack {
                log: d.u64()?,
                seq: d.u64()?,
            },
            TAG_REFUSE => Message::Refuse { reason: d.str()? },
            TAG_CONTROL => Message::Control {
                id: d.u64()?,
                on: d.bool()?,
            },
            TAG_CONTROL_DONE => Message::ControlDone {
                id: d.u64()?,
                ok: d.bool()?,
                message: d.str()?,
            },
            TAG_SYNC_REQUEST => Message::SyncRequest {
                id: d.u64()?,
                log: d.u64()?,
                head: d.u64()?,
                schema: d.str()?,
            },
            TAG_SNAPSHOT_BEGIN => {
                let id = d.u64()?;
                let log = d.u64()?;
                let position = d.u64()?;
                let count = d.len()?;
                let mut tables = Vec::with_capacity(count);
                for _ in 0..count {
                    tables.push(d.str()?);
                }
                let rows = d.u64()?;
                Message::SnapshotBegin {
                    id,
                    log,
                    position,
                    tables,
                    rows,
                }
            }
            TAG_SNAPSHOT_ROWS => {
                let id = d.u64()?;
                let table = d.str()?;
                let count = d.len()?;
                let mut rows = Vec::with_capacity(count);
                for _ in 0..count {
                    rows.push(SnapshotRow {
                        pk: d.str()?,
                        row: d.str()?,
                    });
                }
                Message::SnapshotRows { id, table, rows }
            }
            TAG_SNAPSHOT_END => Message::SnapshotEnd {
                id: d.u64()?,
                rows: d.u64()?,
            },
            TAG_SYNC_FAILED => Message::SyncFailed {
                id: d.u64()?,
                reason: d.str()?,
            },
            other => return Err(proto(format!("unknown message tag {other}"))),
        };
        if !d.0.is_empty() {
            return Err(proto(format!(
                "{} trailing bytes after a message",
                d.0.len()
            )));
        }
        Ok(message)
    }
}

fn proto(text: String) -> Error {
    Error::Protocol(text)
}

struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.u64(v);
            }
            None => self.u8(0),
        }
    }
    fn len(&mut self, n: usize) {
        // Messages are bounded by the peer link's limit (16 MiB), far below u32::MAX.
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
    fn str(&mut self, s: &str) {
        self.len(s.len());
        self.0.extend_from_slice(s.as_bytes());
    }
}

struct Dec<'a>(&'a [u8]);

impl Dec<'_> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or_else(|| proto(format!("truncated message: needed {N} more bytes")))?;
        self.0 = rest;
        Ok(*head)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(u8::from_be_bytes(self.array()?))
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn bool(&mut self) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(proto(format!("invalid boolean byte {other}"))),
        }
    }
    fn opt_u64(&mut self) -> Result<Option<u64>> {
        Ok(if self.bool()? {
            Some(self.u64()?)
        } else {
            None
        })
    }
    /// A count or length; never more than the bytes left, so it is safe to reserve.
    fn len(&mut self) -> Result<usize> {
        let n = usize::try_from(self.u32()?).unwrap_or(usize::MAX);
        if n > self.0.len() {
            return Err(proto(format!(
                "truncated message: a length of {n} with {} bytes left",
                self.0.len()
            )));
        }
        Ok(n)
    }
    fn str(&mut self) -> Result<String> {
        let n = self.len()?;
        let (head, rest) = self
            .0
            .split_at_checked(n)
            .ok_or_else(|| proto("truncated string".into()))?;
        self.0 = rest;
        String::from_utf8(head.to_vec()).map_err(|_| proto("a string is not UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        ".{0,40}"
    }

    fn state() -> impl Strategy<Value = ReplicationState> {
        proptest::sample::select(STATES.to_vec())
    }

    fn node_state() -> impl Strategy<Value = NodeState> {
        (
            (
                any::<u8>(),
                any::<u16>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
            ),
            (any::<Option<u64>>(), any::<u64>(), any::<bool>(), state()),
            (text(), text(), any::<Option<u64>>(), any::<Option<u64>>()),
        )
            .prop_map(
                |(
                    (node, site, log, head, floor, acked),
                    (applied_log, applied, writable, state),
                    (schema, alarm, lag_ms, token),
                )| {
                    NodeState {
                        node,
                        site,
                        log,
                        head,
                        floor,
                        acked,
                        applied_log,
                        applied,
                        writable,
                        state,
                        schema,
                        alarm,
                        lag_ms,
                        token,
                    }
                },
            )
    }

    fn change() -> impl Strategy<Value = Change> {
        (
            any::<u64>(),
            text(),
            proptest::sample::select(vec![Op::Insert, Op::Update, Op::Delete]),
            text(),
            proptest::option::of(text()),
            any::<i64>(),
        )
            .prop_map(|(seq, table, op, pk, row, ts_ms)| Change {
                seq,
                table,
                op,
                pk,
                row,
                ts_ms,
            })
    }

    fn message() -> impl Strategy<Value = Message> {
        prop_oneof![
            node_state().prop_map(Message::State),
            (any::<Option<u64>>(), any::<u64>())
                .prop_map(|(log, from)| Message::Pull { log, from }),
            Just(Message::Stop),
            (
                any::<u64>(),
                any::<u64>(),
                proptest::collection::vec(change(), 0..8)
            )
                .prop_map(|(log, prev, changes)| Message::Batch(Batch {
                    log,
                    prev,
                    changes
                })),
            (any::<u64>(), any::<u64>()).prop_map(|(log, seq)| Message::Ack { log, seq }),
            text().prop_map(|reason| Message::Refuse { reason }),
            (any::<u64>(), any::<bool>()).prop_map(|(id, on)| Message::Control { id, on }),
            (any::<u64>(), any::<bool>(), text())
                .prop_map(|(id, ok, message)| Message::ControlDone { id, ok, message }),
            (any::<u64>(), any::<u64>(), any::<u64>(), text()).prop_map(
                |(id, log, head, schema)| Message::SyncRequest {
                    id,
                    log,
                    head,
                    schema
                }
            ),
            (
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                proptest::collection::vec(text(), 0..4),
                any::<u64>()
            )
                .prop_map(|(id, log, position, tables, rows)| Message::SnapshotBegin {
                    id,
                    log,
                    position,
                    tables,
                    rows
                }),
            (
                any::<u64>(),
                text(),
                proptest::collection::vec((text(), text()), 0..6)
            )
                .prop_map(|(id, table, rows)| Message::SnapshotRows {
                    id,
                    table,
                    rows: rows
                        .into_iter()
                        .map(|(pk, row)| SnapshotRow { pk, row })
                        .collect(),
                }),
            (any::<u64>(), any::<u64>()).prop_map(|(id, rows)| Message::SnapshotEnd { id, rows }),
            (any::<u64>(), text()).prop_map(|(id, reason)| Message::SyncFailed { id, reason }),
        ]
    }

    proptest! {
        #[test]
        fn messages_round_trip(m in message()) {
            let bytes = m.encode();
            prop_assert_eq!(Message::decode(&bytes).unwrap(), m);
        }

        #[test]
        fn every_truncation_is_an_error(m in message(), cut in any::<prop::sample::Index>()) {
            let bytes = m.encode();
            let n = cut.index(bytes.len());
            match (Message::decode(&bytes[..n]), &m) {
                (Err(_), _) => {}
                // The one exception: a state cut exactly before its trailing token is a
                // state without one (as older peers send it).
                (Ok(Message::State(cut_state)), Message::State(full)) => {
                    prop_assert!(full.token.is_some());
                    prop_assert_eq!(n, bytes.len() - 9);
                    prop_assert_eq!(cut_state, NodeState { token: None, ..full.clone() });
                }
                (Ok(other), _) => prop_assert!(false, "a truncation decoded as {:?}", other),
            }
        }

        #[test]
        fn a_state_without_a_token_is_encoded_as_before_fencing(s in node_state(), t in any::<u64>()) {
            let without = Message::State(NodeState { token: None, ..s.clone() }).encode();
            let with = Message::State(NodeState { token: Some(t), ..s }).encode();
            // The token is a trailing field: a flag byte and eight bytes, nothing else moves.
            prop_assert_eq!(with.len(), without.len() + 9);
            prop_assert_eq!(&with[..without.len()], &without[..]);
            prop_assert_eq!(&with[without.len()..], &[&[1u8][..], &t.to_be_bytes()[..]].concat()[..]);
        }

        #[test]
        fn any_bytes_decode_or_error(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Message::decode(&bytes);
        }

        #[test]
        fn flipped_bytes_never_panic(m in message(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut bytes = m.encode();
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
            let _ = Message::decode(&bytes);
        }
    }

    /// Batches cut from one run of changes after `start`, at the given sizes (with some
    /// empty), some of them from another changelog or out of line.
    fn batch_runs() -> impl Strategy<Value = Vec<Batch>> {
        (
            0u64..1000,
            proptest::collection::vec((0usize..5, 0u8..10), 0..12),
        )
            .prop_map(|(start, cuts)| {
                let mut prev = start;
                cuts.into_iter()
                    .map(|(n, odd)| {
                        let (log, from) = match odd {
                            0 => (7, prev),
                            1 => (1, prev + 3),
                            _ => (1, prev),
                        };
                        let changes: Vec<Change> = (1..=n as u64)
                            .map(|i| Change {
                                seq: from + i,
                                table: "t".into(),
                                op: Op::Insert,
                                pk: format!("{{\"id\":{}}}", from + i),
                                row: Some("{}".into()),
                                ts_ms: 0,
                            })
                            .collect();
                        let batch = Batch {
                            log,
                            prev: from,
                            changes,
                        };
                        prev = batch.last();
                        batch
                    })
                    .collect()
            })
    }

    proptest! {
        #[test]
        fn coalescing_keeps_every_change_in_order(batches in batch_runs()) {
            let merged = coalesce(batches.clone());
            let flat = |bs: &[Batch]| -> Vec<(u64, u64)> {
                bs.iter().flat_map(|b| b.changes.iter().map(move |c| (b.log, c.seq))).collect()
            };
            prop_assert_eq!(flat(&merged), flat(&batches));
            prop_assert!(merged.len() <= batches.len());
            // Neighbours that could have merged did.
            for pair in merged.windows(2) {
                prop_assert!(!pair[0].is_followed_by(&pair[1]));
            }
            // Each group starts where one input batch started and ends where one ended.
            for group in &merged {
                prop_assert!(batches.iter().any(|b| b.log == group.log && b.prev == group.prev));
                prop_assert!(batches.iter().any(|b| b.log == group.log && b.last() == group.last()));
            }
            // Contiguous input becomes one batch.
            if batches.windows(2).all(|p| p[0].is_followed_by(&p[1])) {
                prop_assert!(merged.len() == batches.len().min(1));
            }
        }
    }

    #[test]
    fn a_huge_count_is_refused_before_allocating() {
        let mut bytes = vec![WIRE_VERSION, TAG_BATCH];
        bytes.extend_from_slice(&[0; 16]);
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        let err = Message::decode(&bytes).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    fn sample_state(token: Option<u64>) -> NodeState {
        NodeState {
            node: 2,
            site: 1,
            log: 77,
            head: 10,
            floor: 3,
            acked: 9,
            applied_log: Some(55),
            applied: 8,
            writable: true,
            state: ReplicationState::Active,
            schema: "abc".into(),
            alarm: String::new(),
            lag_ms: Some(12),
            token,
        }
    }

    /// The bytes a node sent before fencing existed: the state's fields up to `lag_ms`.
    fn pre_fencing_bytes(s: &NodeState) -> Vec<u8> {
        let mut e = Enc(Vec::new());
        e.u8(WIRE_VERSION);
        e.u8(TAG_STATE);
        e.u8(s.node);
        e.u16(s.site);
        e.u64(s.log);
        e.u64(s.head);
        e.u64(s.floor);
        e.u64(s.acked);
        e.opt_u64(s.applied_log);
        e.u64(s.applied);
        e.bool(s.writable);
        e.u8(1); // Active
        e.str(&s.schema);
        e.str(&s.alarm);
        e.opt_u64(s.lag_ms);
        e.0
    }

    #[test]
    fn a_state_from_a_peer_without_fencing_decodes_without_a_token() {
        let state = sample_state(None);
        let old = pre_fencing_bytes(&state);
        assert_eq!(
            Message::decode(&old).unwrap(),
            Message::State(state.clone())
        );
        // And a state without a token is exactly what such a peer sends.
        assert_eq!(Message::State(state).encode(), old);
    }

    #[test]
    fn a_state_with_a_token_round_trips_and_an_explicit_none_is_accepted() {
        for token in [Some(0), Some(5), Some(u64::MAX)] {
            let m = Message::State(sample_state(token));
            assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        }
        let mut bytes = pre_fencing_bytes(&sample_state(None));
        bytes.push(0);
        assert_eq!(
            Message::decode(&bytes).unwrap(),
            Message::State(sample_state(None))
        );
        // A bad flag byte or a cut token is an error, not a guess.
        let mut bad = pre_fencing_bytes(&sample_state(None));
        bad.push(2);
        assert!(Message::decode(&bad).is_err());
        let mut cut = pre_fencing_bytes(&sample_state(None));
        cut.extend_from_slice(&[1, 0, 0, 0]);
        assert!(Message::decode(&cut).is_err());
    }

    #[test]
    fn another_version_is_named() {
        let err = Message::decode(&[9, TAG_STOP]).unwrap_err();
        assert!(err.to_string().contains("wire version 9"), "{err}");
    }
}
