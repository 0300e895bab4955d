//! The node-to-node link of a tandem site: authenticated, encrypted, framed messages over
//! TCP between the two node addresses (default port [`DEFAULT_PORT`], 7451).
//!
//! Replication, role and epoch exchange, config bundle copies and clock comparison all
//! travel over it. The crate gives them:
//!
//! - the **site key** ([`SiteKey`], [`keygen`]): 32 random bytes in a 0600 key file that
//!   both nodes hold, like corosync's authkey;
//! - a [`Listener`] that accepts authenticated [`Session`]s and [`dial`] to make one;
//! - a [`Session`] to [`send`](Session::send) and [`recv`](Session::recv) messages
//!   (bytes, up to a configurable limit, 16 MiB by default) and to stream blobs of any
//!   size ([`Session::send_blob`], [`BlobReader`]) with little memory, plus heartbeats,
//!   peer-lost detection ([`Session::closed`]) and a clock offset estimate
//!   ([`Session::clock_offset`]);
//! - a supervised [`Link`] that keeps one session with the peer up: the node with the
//!   lower node id dials (redialing with capped exponential backoff), the other listens,
//!   and [`LinkEvent::PeerUp`] / [`LinkEvent::PeerLost`] report liveness;
//! - beside a link's TCP stream, **heartbeat datagrams** on UDP (same address and
//!   port), sent and judged by a thread of their own that bulk data on the stream, a
//!   busy runtime or a slow disk cannot delay, optionally at real-time priority
//!   ([`Config::with_liveness_priority`]); each is authenticated under a key of its
//!   session and numbered against replays, and the peer is lost once it missed its
//!   intervals, unless the thread itself woke late ([`Session::datagram_liveness`] says
//!   whether they carry a session; a peer that sends none is judged by the stream).
//!
//! Security: `Noise_NNpsk0_25519_ChaChaPoly_SHA256` with the site key as the PSK (see the
//! handshake notes in the source). A peer without the key gets no answer and no session;
//! the refusing side returns [`HandshakeError::Authentication`] and both sides log why. A
//! replayed handshake is refused ([`HandshakeError::Replayed`], and it could not confirm
//! the session keys anyway). Every frame is checked against the expected nonce, so a
//! tampered, replayed, reordered or injected frame closes the session with
//! [`CloseReason::Authentication`]; an oversized length prefix closes it before anything
//! is allocated ([`frame`]).
//!
//! The listening port is open to the whole LAN, so a [`Listener`] expects floods of
//! keyless connections: pending handshakes are bounded per source address and in total,
//! a full set closes an older pending handshake rather than refusing a newcomer, the
//! first handshake message must arrive within [`FIRST_MESSAGE_TIMEOUT`], a [`Link`]
//! keeps pending-handshake slots for its peer's address that nobody else can take, and
//! refused connections are logged at a bounded rate (a burst, then one line counting
//! the suppressed ones). A received blob can be bounded with
//! [`BlobReader::copy_to_limited`].
//!
//! Messages are bytes. The crate also offers the one [`envelope`] in which tandem's
//! conversations carry their message types (a version, a channel and the message in
//! postcard): [`Session::send_message`] seals one, [`Incoming::open`] opens it.
//!
//! What it never does: interpret a message beyond its envelope (the message types and
//! their meaning belong to the caller), decide roles, or touch interfaces. It does not retransmit: a
//! message queued on a session that is then lost may not have arrived, so protocols on
//! top acknowledge what matters (for example replication's applied sequence).
//!
//! # Example
//!
//! Two endpoints on 127.0.0.1 exchange a message:
//!
//! ```
//! use std::net::SocketAddr;
//! use tandem_core::NodeId;
//! use tandem_peer::{Config, Incoming, Listener, SiteKey, dial};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tandem_peer::Error> {
//! // In production both nodes load the same key file: SiteKey::load(path).
//! let key = SiteKey::generate()?;
//! let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
//! let mut listener = Listener::bind(any_port, Config::new(key.clone(), NodeId::Two)).await?;
//! let addr = listener.local_addr();
//!
//! let node2 = tokio::spawn(async move {
//!     let session = listener.accept().await?;
//!     if let Incoming::Message(text) = session.recv().await? {
//!         session.send(text.to_ascii_uppercase()).await?;
//!     }
//!     session.closed().await; // until node 1 closes
//!     Ok::<_, tandem_peer::Error>(())
//! });
//!
//! let node1 = dial(addr, &Config::new(key, NodeId::One)).await?;
//! assert_eq!(node1.peer_node(), NodeId::Two);
//! node1.send("epoch 7").await?;
//! match node1.recv().await? {
//!     Incoming::Message(reply) => assert_eq!(reply, b"EPOCH 7"),
//!     other => panic!("unexpected {other:?}"),
//! }
//! node1.close("done").await;
//! # node2.await.map_err(|e| tandem_peer::Error::Config(e.to_string()))??;
//! # Ok(())
//! # }
//! ```

mod admission;
mod body;
mod clock;
mod config;
pub mod envelope;
mod error;
pub mod frame;
mod handshake;
mod key;
mod link;
mod listener;
mod liveness;
mod ratelog;
mod section;
mod session;

pub use clock::ClockOffset;
pub use config::{Config, DEFAULT_PORT};
pub use envelope::{Channel, Conversation, ENVELOPE_VERSION, EnvelopeError, open, seal};
pub use error::{CloseReason, Error, HandshakeError, KeyFileProblem, Result};
pub use key::{KEY_LEN, SiteKey, keygen, write_key_file};
pub use link::{Backoff, Link, LinkConfig, LinkEvent, LinkRole};
pub use listener::{FIRST_MESSAGE_TIMEOUT, Listener, dial, dial_from};
pub use section::{PeerSection, SectionError};
pub use session::{BlobReader, Incoming, Session};

/// The Noise protocol name the link uses.
pub const NOISE_PROTOCOL: &str = handshake::NOISE_PARAMS;
