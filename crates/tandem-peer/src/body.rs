//! The plaintext inside a frame: one kind byte and its fields (all integers big-endian),
//! and the hello carried by the two handshake messages. Pure and panic-free on any input.

use tandem_core::NodeId;

use crate::error::HandshakeError;
use crate::frame::MAX_PLAINTEXT_LEN;

/// Version of the body and hello layout. It is also part of the Noise prologue, so two
/// versions never complete a handshake with each other.
pub(crate) const PROTOCOL_VERSION: u8 = 1;

/// Longest reason text carried by a close or blob-abort frame.
pub(crate) const MAX_REASON_LEN: usize = 1024;

const KIND_CONFIRM: u8 = 1;
const KIND_HEARTBEAT: u8 = 2;
const KIND_MESSAGE: u8 = 3;
const KIND_MESSAGE_MORE: u8 = 4;
const KIND_BLOB_START: u8 = 5;
const KIND_BLOB_CHUNK: u8 = 6;
const KIND_BLOB_END: u8 = 7;
const KIND_BLOB_ABORT: u8 = 8;
const KIND_CLOSE: u8 = 9;

/// Header bytes in front of the data of a first message fragment.
pub(crate) const MESSAGE_HEADER: usize = 1 + 8;
/// Most data bytes in the first fragment of a message.
pub(crate) const MESSAGE_FIRST_DATA: usize = MAX_PLAINTEXT_LEN - MESSAGE_HEADER;
/// Most data bytes in a later message fragment or a blob chunk.
pub(crate) const CHUNK_DATA: usize = MAX_PLAINTEXT_LEN - 1;

/// Wall-clock stamps for offset estimation, in microseconds since the Unix epoch, the
/// NTP way: `tx` is the sender's time of sending; `echo_tx` is the `tx` of the last
/// stamps the sender received from us and `echo_rx` the sender's time of receiving them
/// (both 0 when it has received none yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Stamps {
    pub(crate) tx: i64,
    pub(crate) echo_tx: i64,
    pub(crate) echo_rx: i64,
}

const STAMPS_LEN: usize = 24;

impl Stamps {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.tx.to_be_bytes());
        out.extend_from_slice(&self.echo_tx.to_be_bytes());
        out.extend_from_slice(&self.echo_rx.to_be_bytes());
    }

    fn take(r: &mut Reader<'_>) -> Result<Stamps, String> {
        Ok(Stamps {
            tx: r.i64()?,
            echo_tx: r.i64()?,
            echo_rx: r.i64()?,
        })
    }
}

/// A blob chunk body with room for [`CHUNK_DATA`] bytes after the kind byte, so a
/// source can be read straight into it; truncate to `1 + bytes read` before sending.
pub(crate) fn blob_chunk_buffer() -> Vec<u8> {
    let mut buf = vec![0u8; 1 + CHUNK_DATA];
    if let Some(kind) = buf.first_mut() {
        *kind = KIND_BLOB_CHUNK;
    }
    buf
}

/// One decoded frame body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Body<'a> {
    /// The initiator's first transport frame: proves it holds the session keys.
    Confirm(Stamps),
    /// Liveness and clock stamps.
    Heartbeat(Stamps),
    /// The first (maybe only) fragment of a message of `total` bytes.
    Message { total: u64, data: &'a [u8] },
    /// A later fragment of the message being assembled.
    MessageMore(&'a [u8]),
    /// A blob follows as chunks.
    BlobStart,
    /// The next bytes of the blob.
    BlobChunk(&'a [u8]),
    /// The blob ended after `total` bytes.
    BlobEnd { total: u64 },
    /// The sender gave up on the blob.
    BlobAbort(String),
    /// The sender closes the session.
    Close(String),
}

impl Body<'_> {
    /// Encodes the body; data longer than a frame holds is an error, never a panic.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// Encodes the body into `out`, replacing its content (to reuse one buffer).
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), String> {
        out.clear();
        match self {
            Body::Confirm(s) => {
                out.push(KIND_CONFIRM);
                s.put(out);
            }
            Body::Heartbeat(s) => {
                out.push(KIND_HEARTBEAT);
                s.put(out);
            }
            Body::Message { total, data } => {
                out.reserve(MESSAGE_HEADER + data.len());
                out.push(KIND_MESSAGE);
                out.extend_from_slice(&total.to_be_bytes());
                out.extend_from_slice(data);
            }
            Body::MessageMore(data) => {
                out.reserve(1 + data.len());
                out.push(KIND_MESSAGE_MORE);
                out.extend_from_slice(data);
            }
            Body::BlobStart => out.push(KIND_BLOB_START),
            Body::BlobChunk(data) => {
                out.reserve(1 + data.len());
                out.push(KIND_BLOB_CHUNK);
                out.extend_from_slice(data);
            }
            Body::BlobEnd { total } => {
                out.push(KIND_BLOB_END);
                out.extend_from_slice(&total.to_be_bytes());
            }
            Body::BlobAbort(reason) => {
                out.push(KIND_BLOB_ABORT);
                out.extend_from_slice(clip(reason).as_bytes());
            }
            Body::Close(reason) => {
                out.push(KIND_CLOSE);
                out.extend_from_slice(clip(reason).as_bytes());
            }
        }
        if out.len() > MAX_PLAINTEXT_LEN {
            return Err(format!(
                "frame body of {} bytes exceeds {MAX_PLAINTEXT_LEN}",
                out.len()
            ));
        }
        Ok(())
    }

    /// Decodes a body; any byte string gives a body or an error naming the problem.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Body<'_>, String> {
        let mut r = Reader(bytes);
        let kind = r.u8()?;
        let body = match kind {
            KIND_CONFIRM => Body::Confirm(Stamps::take(&mut r)?),
            KIND_HEARTBEAT => Body::Heartbeat(Stamps::take(&mut r)?),
            KIND_MESSAGE => {
                let total = r.u64()?;
                return Ok(Body::Message {
                    total,
                    data: r.rest(),
                });
            }
            KIND_MESSAGE_MORE => return Ok(Body::MessageMore(r.rest())),
            KIND_BLOB_START => Body::BlobStart,
            KIND_BLOB_CHUNK => return Ok(Body::BlobChunk(r.rest())),
            KIND_BLOB_END => Body::BlobEnd { total: r.u64()? },
            KIND_BLOB_ABORT => return Ok(Body::BlobAbort(lossy(r.rest()))),
            KIND_CLOSE => return Ok(Body::Close(lossy(r.rest()))),
            other => return Err(format!("unknown frame kind {other}")),
        };
        if !r.0.is_empty() {
            return Err(format!(
                "{} unexpected trailing bytes after frame kind {kind}",
                r.0.len()
            ));
        }
        Ok(body)
    }
}

/// The payload of each handshake message: who is speaking and what it expects. The node
/// id travels as one byte, 1 or 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hello {
    pub(crate) version: u8,
    pub(crate) node_id: NodeId,
    /// The sender's heartbeat interval in milliseconds.
    pub(crate) heartbeat_ms: u32,
    /// The longest message the sender accepts.
    pub(crate) max_message_len: u64,
    pub(crate) stamps: Stamps,
}

const HELLO_LEN: usize = 1 + 1 + 4 + 8 + STAMPS_LEN;

impl Hello {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HELLO_LEN);
        out.push(self.version);
        out.push(self.node_id.get());
        out.extend_from_slice(&self.heartbeat_ms.to_be_bytes());
        out.extend_from_slice(&self.max_message_len.to_be_bytes());
        self.stamps.put(&mut out);
        out
    }

    /// Decodes a hello; a node id other than 1 or 2 is [`HandshakeError::UnknownNode`],
    /// anything else malformed [`HandshakeError::Protocol`].
    pub(crate) fn decode(bytes: &[u8]) -> Result<Hello, HandshakeError> {
        let mut r = Reader(bytes);
        let version = r.u8().map_err(HandshakeError::Protocol)?;
        if version != PROTOCOL_VERSION {
            return Err(HandshakeError::Protocol(format!(
                "the peer speaks protocol version {version}, this node speaks {PROTOCOL_VERSION}"
            )));
        }
        let (node, heartbeat_ms, max_message_len, stamps) =
            Hello::fields(&mut r).map_err(HandshakeError::Protocol)?;
        let node_id = NodeId::try_from(node).map_err(|_| HandshakeError::UnknownNode(node))?;
        Ok(Hello {
            version,
            node_id,
            heartbeat_ms,
            max_message_len,
            stamps,
        })
    }

    /// The fields after the version, as they are on the wire, and nothing after them.
    fn fields(r: &mut Reader<'_>) -> Result<(u8, u32, u64, Stamps), String> {
        let fields = (r.u8()?, r.u32()?, r.u64()?, Stamps::take(r)?);
        if !r.0.is_empty() {
            return Err(format!("hello has {} trailing bytes", r.0.len()));
        }
        Ok(fields)
    }
}

fn clip(text: &str) -> &str {
    if text.len() <= MAX_REASON_LEN {
        return text;
    }
    text.get(..text.floor_char_boundary(MAX_REASON_LEN))
        .unwrap_or_default()
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes.get(..MAX_REASON_LEN).unwrap_or(bytes)).into_owned()
}

/// A cursor that turns running out of bytes into an error.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or_else(|| format!("truncated: needed {N} more bytes, had {}", self.0.len()))?;
        self.0 = rest;
        Ok(*head)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(u8::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_be_bytes(self.array()?))
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stamps() -> impl Strategy<Value = Stamps> {
        (any::<i64>(), any::<i64>(), any::<i64>()).prop_map(|(tx, echo_tx, echo_rx)| Stamps {
            tx,
            echo_tx,
            echo_rx,
        })
    }

    #[derive(Debug, Clone)]
    enum Owned {
        Confirm(Stamps),
        Heartbeat(Stamps),
        Message(u64, Vec<u8>),
        MessageMore(Vec<u8>),
        BlobStart,
        BlobChunk(Vec<u8>),
        BlobEnd(u64),
        BlobAbort(String),
        Close(String),
    }

    impl Owned {
        fn body(&self) -> Body<'_> {
            match self {
                Owned::Confirm(s) => Body::Confirm(*s),
                Owned::Heartbeat(s) => Body::Heartbeat(*s),
                Owned::Message(t, d) => Body::Message { total: *t, data: d },
                Owned::MessageMore(d) => Body::MessageMore(d),
                Owned::BlobStart => Body::BlobStart,
                Owned::BlobChunk(d) => Body::BlobChunk(d),
                Owned::BlobEnd(t) => Body::BlobEnd { total: *t },
                Owned::BlobAbort(s) => Body::BlobAbort(s.clone()),
                Owned::Close(s) => Body::Close(s.clone()),
            }
        }
    }

    /// Short arbitrary data, or a full frame's worth made from a seed (a per-byte
    /// strategy is too slow for 64 KiB).
    fn data(max: usize) -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            any::<u8>().prop_map(move |b| vec![b; max]),
        ]
    }

    fn owned() -> impl Strategy<Value = Owned> {
        prop_oneof![
            stamps().prop_map(Owned::Confirm),
            stamps().prop_map(Owned::Heartbeat),
            (any::<u64>(), data(MESSAGE_FIRST_DATA)).prop_map(|(t, d)| Owned::Message(t, d)),
            data(CHUNK_DATA).prop_map(Owned::MessageMore),
            Just(Owned::BlobStart),
            data(CHUNK_DATA).prop_map(Owned::BlobChunk),
            any::<u64>().prop_map(Owned::BlobEnd),
            ".{0,200}".prop_map(Owned::BlobAbort),
            ".{0,200}".prop_map(Owned::Close),
        ]
    }

    proptest! {
        #[test]
        fn body_round_trip(owned in owned()) {
            let body = owned.body();
            let bytes = body.encode().unwrap();
            prop_assert!(bytes.len() <= MAX_PLAINTEXT_LEN);
            prop_assert_eq!(Body::decode(&bytes), Ok(body));
        }

        #[test]
        fn any_bytes_decode_or_error(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Body::decode(&bytes);
            let _ = Hello::decode(&bytes);
        }

        #[test]
        fn hello_round_trip(node_id in prop_oneof![Just(NodeId::One), Just(NodeId::Two)],
                            heartbeat_ms in any::<u32>(), max_message_len in any::<u64>(),
                            stamps in stamps()) {
            let hello = Hello { version: PROTOCOL_VERSION, node_id, heartbeat_ms, max_message_len, stamps };
            prop_assert_eq!(Hello::decode(&hello.encode()).ok(), Some(hello));
        }

        #[test]
        fn a_hello_names_a_node_id_other_than_1_or_2(node in any::<u8>()
                                                        .prop_filter("not 1 or 2", |n| *n != 1 && *n != 2)) {
            let hello = Hello {
                version: PROTOCOL_VERSION,
                node_id: NodeId::One,
                heartbeat_ms: 1000,
                max_message_len: 1 << 20,
                stamps: Stamps::default(),
            };
            let mut bytes = hello.encode();
            // The node id is the byte after the version: the wire layout is unchanged.
            prop_assert_eq!(bytes.get(1).copied(), Some(1));
            if let Some(b) = bytes.get_mut(1) {
                *b = node;
            }
            let err = Hello::decode(&bytes).unwrap_err();
            prop_assert!(matches!(err, HandshakeError::UnknownNode(n) if n == node), "{:?}", err);
            prop_assert!(err.to_string().contains(&format!("node id {node};")), "{}", err);
        }
    }

    #[test]
    fn blob_chunk_buffer_decodes_as_a_chunk() {
        let mut buf = blob_chunk_buffer();
        buf.truncate(4);
        assert_eq!(Body::decode(&buf), Ok(Body::BlobChunk(&[0, 0, 0])));
        assert_eq!(blob_chunk_buffer().len(), MAX_PLAINTEXT_LEN);
    }

    #[test]
    fn oversized_data_is_an_error_not_a_panic() {
        let big = vec![0u8; CHUNK_DATA + 1];
        assert!(Body::BlobChunk(&big).encode().is_err());
        assert!(
            Body::Message {
                total: 0,
                data: &big
            }
            .encode()
            .is_err()
        );
    }

    #[test]
    fn long_reasons_are_clipped_on_a_char_boundary() {
        let reason = "é".repeat(MAX_REASON_LEN);
        let bytes = Body::Close(reason).encode().unwrap();
        match Body::decode(&bytes).unwrap() {
            Body::Close(text) => {
                assert!(text.len() <= MAX_REASON_LEN);
                assert!(text.chars().all(|c| c == 'é'));
            }
            other => panic!("decoded {other:?}"),
        }
    }
}
