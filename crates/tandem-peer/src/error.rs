//! The crate's error types: [`Error`] for every fallible call, [`HandshakeError`] for a
//! refused connection and [`CloseReason`] for why a session ended.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tandem_core::NodeId;

use crate::frame::FrameError;

/// Every error of this crate.
///
/// Display texts do not repeat their source; print the chain (for example with
/// anyhow's `{:#}`) to see the whole story.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The site key file could not be created or loaded.
    #[error("site key file {}", path.display())]
    KeyFile {
        /// The key file named by the caller.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        problem: KeyFileProblem,
    },
    /// The operating system's random generator failed while making a key.
    #[error("the system random generator failed while generating a site key")]
    Random,
    /// The configuration given to [`Link::start`](crate::Link::start) cannot work.
    #[error("invalid peer link configuration: {0}")]
    Config(String),
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address to listen on.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Accepting a TCP connection failed (the listener stays usable).
    #[error("cannot accept a peer connection")]
    Accept(#[source] io::Error),
    /// The TCP connection to the peer could not be made.
    #[error("cannot connect to the peer at {addr}")]
    Connect {
        /// The peer's node address.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The Noise handshake with a connecting or dialed peer failed: the connection was
    /// closed and nothing from it reached the application.
    #[error("peer link handshake with {peer} refused")]
    Handshake {
        /// The remote socket address.
        peer: SocketAddr,
        /// Why the handshake failed.
        #[source]
        source: HandshakeError,
    },
    /// An authenticated peer announced a node id other than the expected one.
    #[error("the peer at {peer} is node {found}, expected node {expected}")]
    UnexpectedNode {
        /// The remote socket address.
        peer: SocketAddr,
        /// The node id the caller expected.
        expected: NodeId,
        /// The node id the peer announced.
        found: NodeId,
    },
    /// A message could not be put in or taken out of its envelope.
    #[error(transparent)]
    Envelope(#[from] crate::envelope::EnvelopeError),
    /// The session is closed; the reason says why.
    #[error("peer session closed")]
    Closed(#[source] CloseReason),
    /// A message is longer than the peer accepts (its `max_message_len`).
    #[error("message of {len} bytes exceeds the peer's limit of {max} bytes (send it as a blob)")]
    MessageTooLarge {
        /// Length of the message.
        len: usize,
        /// The peer's limit.
        max: usize,
    },
    /// Reading the local source of an outgoing blob failed; the blob was aborted.
    #[error("reading the blob to send failed")]
    BlobSource(#[source] io::Error),
    /// Writing a received blob to the caller's writer failed.
    #[error("writing the received blob failed")]
    BlobSink(#[source] io::Error),
    /// A received blob was longer than the receiver's limit
    /// ([`BlobReader::copy_to_limited`](crate::BlobReader::copy_to_limited)); the rest
    /// of it was skipped.
    #[error("the peer's blob is longer than the limit of {limit} bytes; the rest was skipped")]
    BlobTooLarge {
        /// The limit.
        limit: u64,
    },
    /// The sender aborted the blob it was sending.
    #[error("the peer aborted the blob it was sending: {0}")]
    BlobAborted(String),
}

/// What is wrong with a site key file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileProblem {
    /// The file does not exist.
    #[error("does not exist (make one with `keygen` and copy it to both nodes)")]
    Missing,
    /// The file exists but cannot be read.
    #[error("cannot be read")]
    Read(#[source] io::Error),
    /// The file's content is not a site key.
    #[error("is malformed: {0}")]
    Malformed(String),
    /// Group or others may read the file.
    #[error("is accessible by group or others (mode {mode:04o}); it must be 0600")]
    Permissions {
        /// The file's permission bits.
        mode: u32,
    },
    /// `keygen` refuses to replace an existing key.
    #[error("already exists; refusing to replace a site key (remove it first if you mean it)")]
    Exists,
    /// The new key file could not be written.
    #[error("cannot be written")]
    Write(#[source] io::Error),
}

/// Why an incoming or outgoing handshake failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// A handshake message did not decrypt: the peer does not hold this site's key (or
    /// speaks another protocol version).
    #[error(
        "handshake message failed authentication: the peer does not hold this site's key \
         (or speaks another protocol version)"
    )]
    Authentication,
    /// The first handshake message was seen before: someone replays a recorded handshake.
    #[error("replayed handshake: this first handshake message was already used")]
    Replayed,
    /// The peer closed the connection before the handshake finished.
    #[error("the peer closed the connection during the handshake (does it hold this site's key?)")]
    PeerClosed,
    /// The initiator did not prove that it holds the session keys: the first handshake
    /// message was a recording, or the connection broke.
    #[error("the connecting side did not confirm the session keys (a replayed handshake?)")]
    NotConfirmed,
    /// The handshake took longer than the configured handshake timeout.
    #[error("the handshake did not complete within {0:?}")]
    Timeout(Duration),
    /// The peer announced a node id other than 1 or 2 in its hello (its configuration
    /// is wrong, or it is not a tandem node of this protocol version).
    #[error("the peer announced node id {0}; a site has node 1 and node 2")]
    UnknownNode(u8),
    /// A handshake message decrypted but its content is not understood.
    #[error("malformed handshake: {0}")]
    Protocol(String),
    /// A handshake frame was invalid (for example an oversized length prefix).
    #[error("invalid handshake frame")]
    Frame(#[source] FrameError),
    /// The connection failed during the handshake.
    #[error("connection error during the handshake")]
    Io(#[source] io::Error),
    /// The Noise library reported an internal error.
    #[error("noise protocol error: {0}")]
    Noise(String),
}

/// Why a session ended. Messages received before the end are still delivered by
/// [`Session::recv`](crate::Session::recv); after them it returns
/// [`Error::Closed`] with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CloseReason {
    /// Nothing arrived from the peer for `missed` heartbeat intervals.
    #[error("peer lost: nothing received for {silence:?} ({missed} heartbeats missed)")]
    PeerLost {
        /// How long nothing arrived.
        silence: Duration,
        /// The configured number of missed heartbeats.
        missed: u32,
    },
    /// The peer closed the session and said why.
    #[error("the peer closed the session: {0}")]
    PeerClosed(String),
    /// The TCP connection ended without a close frame (the peer process died, or the
    /// connection was cut).
    #[error("the connection ended without a close frame")]
    ConnectionEnded,
    /// This side closed the session.
    #[error("closed on this side: {0}")]
    Local(String),
    /// A frame did not decrypt under the session keys and expected nonce: it was
    /// tampered with, replayed, reordered or injected.
    #[error("a frame failed authentication (tampered, replayed, reordered or injected)")]
    Authentication,
    /// A frame's length prefix was invalid (for example oversized).
    #[error("invalid frame: {0}")]
    Frame(FrameError),
    /// An authenticated frame broke the protocol (a bug or version mismatch).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The connection failed.
    #[error("connection error: {0}")]
    Io(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Renders an error with its whole source chain, for log lines.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
