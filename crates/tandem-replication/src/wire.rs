//! The replication messages exchanged over the peer link.
//!
//! The peer link carries opaque, authenticated messages; this module gives them a
//! meaning. They travel in the link's one envelope ([`tandem_peer::envelope`]) on the
//! `replication` channel, serde-encoded like the node agent's own messages. Decoding
//! never panics and never allocates more than the input could hold: a bad message is an
//! error that names what is wrong.

use crate::status::ReplicationState;
use serde::{Deserialize, Serialize};
use tandem_core::NodeId;
use tandem_peer::{Channel, Conversation};

/// What a node tells its peer about itself: sent when a session starts, whenever it
/// changes and once a second.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// The sender's node id (a byte on the wire; any other value than 1 or 2 does not
    /// decode).
    pub node: NodeId,
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
    /// site has no witness).
    pub token: Option<u64>,
}

/// An operation recorded in the changelog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

impl Change {
    /// What the change counts toward `[replication] batch_bytes`: its table name,
    /// key and row.
    pub fn size(&self) -> usize {
        self.table.len() + self.pk.len() + self.row.as_ref().map_or(0, String::len)
    }
}

/// Consecutive changelog entries: every entry of the source's log `log` with a sequence
/// number in `(prev, last seq]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRow {
    /// The key as a JSON object.
    pub pk: String,
    /// The row as a JSON object.
    pub row: String,
}

/// A replication message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    ///
    /// `Ack` with `seq` 0 acknowledges nothing (every position of a changelog is at
    /// least 1, and a node of any release ignores an acknowledgement that does not
    /// advance its acknowledged position): a node sends it once when a session starts
    /// ([`RECEIVED_HELLO`]) to say that it reads [`Message::Received`]. A node sends
    /// `Received` only to a peer that said so, since a node of an older release cannot
    /// decode that variant and would end the session.
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
    /// "I took in your log `log` up to `seq` and apply it next" (not yet on my disk):
    /// sent by the puller the moment it takes a batch in, before applying it, to a
    /// peer that sent [`RECEIVED_HELLO`]. The last variant, so that the others keep
    /// their numbers on the wire.
    Received {
        /// The changelog taken in.
        log: u64,
        /// The newest position taken in.
        seq: u64,
    },
}

/// The acknowledgement position that acknowledges nothing: `Ack { log, seq: 0 }`, sent
/// once at the start of a session, says "I read [`Message::Received`]" (see
/// [`Message::Ack`]).
pub const RECEIVED_HELLO: u64 = 0;

impl Conversation for Message {
    const CHANNEL: Channel = Channel::new(2, "replication");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        ".{0,40}"
    }

    fn state() -> impl Strategy<Value = ReplicationState> {
        proptest::sample::select(ReplicationState::ALL.to_vec())
    }

    fn node_state() -> impl Strategy<Value = NodeState> {
        (
            (
                prop_oneof![Just(NodeId::One), Just(NodeId::Two)],
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
            (any::<u64>(), any::<u64>()).prop_map(|(log, seq)| Message::Received { log, seq }),
        ]
    }

    fn seal(m: &Message) -> Vec<u8> {
        tandem_peer::seal(m).unwrap()
    }

    fn open(bytes: &[u8]) -> std::result::Result<Message, tandem_peer::EnvelopeError> {
        tandem_peer::open(bytes)
    }

    proptest! {
        #[test]
        fn messages_round_trip(m in message()) {
            prop_assert_eq!(open(&seal(&m)).unwrap(), m);
        }

        #[test]
        fn every_truncation_is_an_error(m in message(), cut in any::<prop::sample::Index>()) {
            let bytes = seal(&m);
            let n = cut.index(bytes.len());
            prop_assert!(open(&bytes[..n]).is_err());
        }

        #[test]
        fn any_bytes_decode_or_error(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = open(&bytes);
        }

        #[test]
        fn any_body_in_a_replication_envelope_decodes_or_errors(
            body in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut bytes = vec![tandem_peer::ENVELOPE_VERSION, 2];
            bytes.extend(body);
            let _ = open(&bytes);
        }

        #[test]
        fn flipped_bytes_never_panic(m in message(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut bytes = seal(&m);
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
            let _ = open(&bytes);
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
        // A batch (variant 3) of log 0, prev 0 announcing 2^32 - 1 changes, then nothing.
        let mut bytes = vec![tandem_peer::ENVELOPE_VERSION, 2, 3, 0, 0];
        bytes.extend([0xff, 0xff, 0xff, 0xff, 0x0f]);
        let err = open(&bytes).unwrap_err();
        assert!(
            err.to_string().starts_with("malformed replication message"),
            "{err}"
        );
    }

    #[test]
    fn received_is_numbered_after_every_older_variant() {
        // Older releases number Ack 4 and SyncFailed 12 (the last); Received comes
        // after them, with the same body as Ack.
        let ack = seal(&Message::Ack { log: 7, seq: 9 });
        let received = seal(&Message::Received { log: 7, seq: 9 });
        let failed = seal(&Message::SyncFailed {
            id: 1,
            reason: String::new(),
        });
        assert_eq!((ack[2], failed[2], received[2]), (4, 12, 13));
        assert_eq!(ack[3..], received[3..]);
    }

    #[test]
    fn a_peer_of_the_release_before_the_envelope_is_named() {
        // What version 1 sent for Stop: its version byte 1 and the tag 3.
        let err = open(&[1, 3]).unwrap_err();
        assert!(
            err.to_string()
                .contains("envelope version 1, this node speaks 2; upgrade both nodes"),
            "{err}"
        );
    }

    #[test]
    fn an_agent_message_on_the_replication_session_is_named() {
        let bytes = [tandem_peer::ENVELOPE_VERSION, 1, 0];
        let err = open(&bytes).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a message of channel 1 arrived where replication messages were expected"
        );
    }
}
