//! One envelope for every message the two nodes exchange, whatever the conversation:
//! a version byte, a channel byte and the message itself in postcard, serde's compact
//! binary encoding.
//!
//! ```text
//! +---------+---------+------------------------------+
//! | version | channel | postcard(message)            |
//! | 1 byte  | 1 byte  | the rest, nothing after it   |
//! +---------+---------+------------------------------+
//! ```
//!
//! A conversation is a message type that implements [`Conversation`] and names its
//! [`Channel`]: the node agent's messages are one, replication's another. Each is still
//! its own type, owned by its crate; the envelope only says which one a message belongs
//! to, so a message on the wrong session, from another release, or cut short is refused
//! with an error that names which of these it is ([`EnvelopeError`]).
//!
//! Opening never panics and never allocates more than the input could fill: postcard
//! reads lengths against the bytes that are left, and serde caps what a collection
//! reserves ahead of its elements.
//!
//! Version history: version 1 was two codecs, JSON for the agent's messages and a
//! hand-written binary layout starting with the byte 1 for replication's. Version 2 is
//! this envelope. An older peer's messages are recognised and refused by name, so a site
//! halfway through an upgrade says so in its log instead of "malformed message".

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The envelope version this build writes and reads.
pub const ENVELOPE_VERSION: u8 = 2;

/// Which conversation a message belongs to: a number carried in the envelope and a
/// name for error messages. Two conversations must not share an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Channel {
    id: u8,
    name: &'static str,
}

impl Channel {
    /// A channel with this id and name.
    pub const fn new(id: u8, name: &'static str) -> Channel {
        Channel { id, name }
    }

    /// The id carried in the envelope.
    pub const fn id(self) -> u8 {
        self.id
    }

    /// The name used in error messages.
    pub const fn name(self) -> &'static str {
        self.name
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// A message type that travels in the envelope: its serde form is the body and
/// [`CHANNEL`](Self::CHANNEL) says which conversation it is.
///
/// The body is positional (postcard writes fields in order, without names), so every
/// field is always written: no `skip_serializing_if`, no untagged or internally tagged
/// enums, no `flatten`. Adding a field or a variant is a new [`ENVELOPE_VERSION`].
pub trait Conversation: Serialize + DeserializeOwned {
    /// The conversation this type is.
    const CHANNEL: Channel;
}

/// Why a message could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Nothing arrived.
    #[error("empty {expected} message")]
    Empty {
        /// The conversation expected.
        expected: Channel,
    },
    /// The bytes are a JSON document: an agent from a release before the envelope.
    #[error(
        "the peer sent a JSON message: it runs a tandem release from before message envelope \
         version {ENVELOPE_VERSION}; upgrade both nodes to the same release"
    )]
    LegacyJson,
    /// The envelope has another version.
    #[error(
        "the peer speaks message envelope version {found}, this node speaks {ENVELOPE_VERSION}; \
         upgrade both nodes to the same release"
    )]
    Version {
        /// The version found.
        found: u8,
    },
    /// The message belongs to another conversation.
    #[error("a message of channel {found} arrived where {expected} messages were expected")]
    WrongChannel {
        /// The channel id found.
        found: u8,
        /// The conversation expected.
        expected: Channel,
    },
    /// The body does not decode as the expected message type.
    #[error("malformed {channel} message: {detail}")]
    Malformed {
        /// The conversation.
        channel: Channel,
        /// What the decoder found.
        detail: String,
    },
    /// The message could not be encoded (a type that postcard cannot write).
    #[error("cannot encode a {channel} message: {detail}")]
    Encode {
        /// The conversation.
        channel: Channel,
        /// What the encoder said.
        detail: String,
    },
}

/// Length of the envelope's header (version and channel).
pub const HEADER_LEN: usize = 2;

/// Puts `message` in an envelope.
pub fn seal<M: Conversation>(message: &M) -> Result<Vec<u8>, EnvelopeError> {
    let header = vec![ENVELOPE_VERSION, M::CHANNEL.id];
    postcard::to_extend(message, header).map_err(|e| EnvelopeError::Encode {
        channel: M::CHANNEL,
        detail: e.to_string(),
    })
}

/// Takes a message of conversation `M` out of its envelope. Every byte must be used.
pub fn open<M: Conversation>(bytes: &[u8]) -> Result<M, EnvelopeError> {
    let expected = M::CHANNEL;
    let (version, rest) = match bytes {
        [] => return Err(EnvelopeError::Empty { expected }),
        [b'{', ..] => return Err(EnvelopeError::LegacyJson),
        [version, rest @ ..] => (*version, rest),
    };
    if version != ENVELOPE_VERSION {
        return Err(EnvelopeError::Version { found: version });
    }
    let [channel, body @ ..] = rest else {
        return Err(EnvelopeError::Malformed {
            channel: expected,
            detail: "the envelope ends before its channel byte".into(),
        });
    };
    if *channel != expected.id {
        return Err(EnvelopeError::WrongChannel {
            found: *channel,
            expected,
        });
    }
    match postcard::take_from_bytes::<M>(body) {
        Ok((message, [])) => Ok(message),
        Ok((_, rest)) => Err(EnvelopeError::Malformed {
            channel: expected,
            detail: format!("{} bytes after the end of the message", rest.len()),
        }),
        Err(e) => Err(EnvelopeError::Malformed {
            channel: expected,
            detail: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Talk {
        Hello { node: u8, text: String },
        Rows(Vec<(u64, Option<String>)>),
        Bye,
    }

    impl Conversation for Talk {
        const CHANNEL: Channel = Channel::new(7, "talk");
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Other(u64);

    impl Conversation for Other {
        const CHANNEL: Channel = Channel::new(8, "other");
    }

    fn talk() -> impl Strategy<Value = Talk> {
        prop_oneof![
            (any::<u8>(), ".{0,40}").prop_map(|(node, text)| Talk::Hello { node, text }),
            proptest::collection::vec((any::<u64>(), proptest::option::of(".{0,20}")), 0..20)
                .prop_map(Talk::Rows),
            Just(Talk::Bye),
        ]
    }

    proptest! {
        #[test]
        fn sealed_messages_open_to_themselves(m in talk()) {
            let bytes = seal(&m).unwrap();
            prop_assert_eq!(&bytes[..2], &[ENVELOPE_VERSION, 7]);
            prop_assert_eq!(open::<Talk>(&bytes).unwrap(), m);
        }

        #[test]
        fn every_cut_is_refused(m in talk(), cut in any::<prop::sample::Index>()) {
            let bytes = seal(&m).unwrap();
            let n = cut.index(bytes.len());
            prop_assert!(open::<Talk>(&bytes[..n]).is_err());
        }

        #[test]
        fn any_bytes_open_or_fail_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = open::<Talk>(&bytes);
        }

        #[test]
        fn any_body_behind_a_valid_header_opens_or_fails(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut bytes = vec![ENVELOPE_VERSION, 7];
            bytes.extend(body);
            let _ = open::<Talk>(&bytes);
        }
    }

    #[test]
    fn another_conversation_is_named() {
        let bytes = seal(&Other(5)).unwrap();
        let err = open::<Talk>(&bytes).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a message of channel 8 arrived where talk messages were expected"
        );
    }

    #[test]
    fn an_older_release_is_named() {
        let json = br#"{"claim":{"node":1,"epoch":4}}"#;
        assert_eq!(open::<Talk>(json).unwrap_err(), EnvelopeError::LegacyJson);
        // Version 1 of the replication codec started with the byte 1.
        let err = open::<Talk>(&[1, 3]).unwrap_err();
        assert_eq!(err, EnvelopeError::Version { found: 1 });
        assert!(err.to_string().contains("upgrade both nodes"), "{err}");
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = seal(&Talk::Bye).unwrap();
        bytes.push(0);
        let err = open::<Talk>(&bytes).unwrap_err();
        assert!(err.to_string().contains("1 bytes after the end"), "{err}");
    }

    #[test]
    fn a_huge_count_fails_without_reserving_it() {
        // Rows with a count of u64::MAX-ish as a varint, then nothing.
        let mut bytes = vec![ENVELOPE_VERSION, 7, 1];
        bytes.extend([0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(matches!(
            open::<Talk>(&bytes),
            Err(EnvelopeError::Malformed { .. })
        ));
    }
}
