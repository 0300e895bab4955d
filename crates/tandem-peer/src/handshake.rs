//! The Noise handshake: `Noise_NNpsk0_25519_ChaChaPoly_SHA256` with the site key as the
//! pre-shared key, followed by a key-confirmation frame from the initiator.
//!
//! Why this pattern: both nodes hold one shared secret and no per-node key pairs, which is
//! exactly what NNpsk0 assumes. With the PSK mixed in before the first message, the
//! responder authenticates the initiator's first message before answering, so a peer
//! without the key gets no reply at all; fresh ephemeral keys on both sides give forward
//! secrecy. A recorded first message can be replayed, so the responder (a) remembers the
//! initiator ephemeral keys it has seen and refuses a repeat, and (b) does not hand the
//! session to the application until the initiator's first transport frame (the
//! confirmation) decrypts, which needs the session keys that a replayer cannot derive.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::time::Duration;

use snow::{HandshakeState, StatelessTransportState};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::body::{Body, Hello, PROTOCOL_VERSION};
use crate::clock::{ClockTracker, now_micros};
use crate::config::Config;
use crate::error::HandshakeError;
use crate::frame::{self, FrameError, LEN_PREFIX, MAX_FRAME_LEN, TAG_LEN};
use crate::key::SiteKey;

/// The Noise protocol name.
pub(crate) const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_ChaChaPoly_SHA256";

/// Length of an X25519 public key, the start of the first handshake message.
const EPHEMERAL_LEN: usize = 32;

/// Initiator ephemeral keys remembered against replayed handshakes, per listener.
pub(crate) const REPLAY_CACHE_LEN: usize = 4096;

/// The Noise prologue binds the handshake to this protocol and version.
fn prologue() -> [u8; 14] {
    let mut p = *b"tandem-peer/v?";
    p[13] = PROTOCOL_VERSION;
    p
}

/// A finished handshake: the transport keys, what the peer announced, the first clock
/// samples and the next nonces.
pub(crate) struct Established {
    pub(crate) transport: StatelessTransportState,
    pub(crate) peer: Hello,
    pub(crate) clock: ClockTracker,
    pub(crate) send_nonce: u64,
    pub(crate) recv_nonce: u64,
    /// The Noise handshake hash: the same on both ends, different for every session.
    pub(crate) handshake_hash: Vec<u8>,
}

impl std::fmt::Debug for Established {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Established")
            .field("peer", &self.peer)
            .field("send_nonce", &self.send_nonce)
            .field("recv_nonce", &self.recv_nonce)
            .finish_non_exhaustive()
    }
}

/// Failure to read one frame.
#[derive(Debug)]
pub(crate) enum ReadError {
    Frame(FrameError),
    Io(io::Error),
}

/// Reads one frame body into `buf`. `Ok(false)` means the connection ended cleanly at a
/// frame boundary. The length is checked before the body is read or space allocated.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<bool, ReadError> {
    let mut head = [0u8; LEN_PREFIX];
    let mut got = 0;
    while let Some(rest) = head.get_mut(got..).filter(|rest| !rest.is_empty()) {
        let n = r.read(rest).await.map_err(ReadError::Io)?;
        if n == 0 {
            if got == 0 {
                return Ok(false);
            }
            return Err(ReadError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection ended inside a frame prefix",
            )));
        }
        got += n;
    }
    let len = frame::body_len(head).map_err(ReadError::Frame)?;
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf).await.map_err(ReadError::Io)?;
    Ok(true)
}

/// Encrypts `plain` with `nonce` into `wire` (prefix included).
pub(crate) fn seal(
    transport: &StatelessTransportState,
    nonce: u64,
    plain: &[u8],
    wire: &mut Vec<u8>,
) -> Result<(), String> {
    wire.clear();
    wire.resize(LEN_PREFIX + plain.len() + TAG_LEN, 0);
    let Some(out) = wire.get_mut(LEN_PREFIX..) else {
        return Err("frame buffer too small".to_owned());
    };
    let n = transport
        .write_message(nonce, plain, out)
        .map_err(|e| format!("encryption failed: {e}"))?;
    let head = frame::prefix(n).map_err(|e| e.to_string())?;
    wire.truncate(LEN_PREFIX + n);
    if let Some(dst) = wire.first_chunk_mut::<LEN_PREFIX>() {
        *dst = head;
    }
    Ok(())
}

/// Remembers recently seen initiator ephemeral keys.
#[derive(Debug, Default)]
pub(crate) struct ReplayCache {
    seen: HashSet<[u8; EPHEMERAL_LEN]>,
    order: VecDeque<[u8; EPHEMERAL_LEN]>,
}

impl ReplayCache {
    /// Records `key`; false if it was already there.
    pub(crate) fn insert(&mut self, key: [u8; EPHEMERAL_LEN]) -> bool {
        if !self.seen.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > REPLAY_CACHE_LEN
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }
}

fn noise(e: snow::Error) -> HandshakeError {
    HandshakeError::Noise(e.to_string())
}

fn decrypt_error(e: snow::Error) -> HandshakeError {
    match e {
        snow::Error::Decrypt => HandshakeError::Authentication,
        other => noise(other),
    }
}

fn state(key: &SiteKey, initiator: bool) -> Result<HandshakeState, HandshakeError> {
    let params = NOISE_PARAMS.parse().map_err(noise)?;
    let prologue = prologue();
    let builder = snow::Builder::new(params)
        .psk(0, key.as_bytes())
        .map_err(noise)?
        .prologue(&prologue)
        .map_err(noise)?;
    if initiator {
        builder.build_initiator()
    } else {
        builder.build_responder()
    }
    .map_err(noise)
}

fn hello(config: &Config, clock: &ClockTracker) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        node_id: config.node_id,
        heartbeat_ms: u32::try_from(config.heartbeat_interval.as_millis())
            .unwrap_or(u32::MAX)
            .max(1),
        max_message_len: u64::try_from(config.max_message_len).unwrap_or(u64::MAX),
        stamps: clock.outgoing(now_micros()),
    }
}

/// Reads a handshake frame; the connection ending is the peer closing on us.
async fn read_handshake_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<(), HandshakeError> {
    match read_frame(stream, buf).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(HandshakeError::PeerClosed),
        Err(ReadError::Frame(e)) => Err(HandshakeError::Frame(e)),
        Err(ReadError::Io(e)) if ended(&e) => Err(HandshakeError::PeerClosed),
        Err(ReadError::Io(e)) => Err(HandshakeError::Io(e)),
    }
}

fn ended(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    )
}

async fn write_handshake_frame<S: AsyncWrite + Unpin>(
    stream: &mut S,
    body: &[u8],
) -> Result<(), HandshakeError> {
    let wire = frame::encode(body).map_err(HandshakeError::Frame)?;
    stream.write_all(&wire).await.map_err(|e| {
        if ended(&e) {
            HandshakeError::PeerClosed
        } else {
            HandshakeError::Io(e)
        }
    })
}

/// Runs the dialing side of the handshake.
pub(crate) async fn initiate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    config: &Config,
) -> Result<Established, HandshakeError> {
    let mut hs = state(&config.key, true)?;
    let mut clock = ClockTracker::default();
    let mut msg = vec![0u8; MAX_FRAME_LEN];
    let n = hs
        .write_message(&hello(config, &clock).encode(), &mut msg)
        .map_err(noise)?;
    write_handshake_frame(stream, msg.get(..n).unwrap_or_default()).await?;

    let mut buf = Vec::new();
    read_handshake_frame(stream, &mut buf).await?;
    let rx = now_micros();
    let n = hs.read_message(&buf, &mut msg).map_err(decrypt_error)?;
    let peer = Hello::decode(msg.get(..n).unwrap_or_default())?;
    clock.received(peer.stamps, rx);
    let handshake_hash = hs.get_handshake_hash().to_vec();
    let transport = hs.into_stateless_transport_mode().map_err(noise)?;

    let confirm = Body::Confirm(clock.outgoing(now_micros()))
        .encode()
        .map_err(HandshakeError::Protocol)?;
    let mut wire = Vec::new();
    seal(&transport, 0, &confirm, &mut wire).map_err(HandshakeError::Noise)?;
    stream.write_all(&wire).await.map_err(HandshakeError::Io)?;
    Ok(Established {
        transport,
        peer,
        clock,
        send_nonce: 1,
        recv_nonce: 0,
        handshake_hash,
    })
}

/// Runs the listening side of the handshake. `replay` is locked only briefly, never
/// across an await. The first message must arrive whole within `first_within` (a peer
/// sends it as soon as it is connected); `authenticated` is called once it proved that
/// the other side holds the site key.
pub(crate) async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    config: &Config,
    replay: &std::sync::Mutex<ReplayCache>,
    first_within: Duration,
    authenticated: impl FnOnce(),
) -> Result<Established, HandshakeError> {
    let mut hs = state(&config.key, false)?;
    let mut clock = ClockTracker::default();
    let mut buf = Vec::new();
    match tokio::time::timeout(first_within, read_handshake_frame(stream, &mut buf)).await {
        Ok(read) => read?,
        Err(_) => return Err(HandshakeError::Timeout(first_within)),
    }
    let rx = now_micros();
    let mut msg = vec![0u8; MAX_FRAME_LEN];
    let n = hs.read_message(&buf, &mut msg).map_err(decrypt_error)?;
    // The message authenticated under the site key, so its ephemeral key is genuine:
    // seeing it twice means a recording is being replayed.
    let ephemeral = buf
        .first_chunk::<EPHEMERAL_LEN>()
        .copied()
        .ok_or_else(|| HandshakeError::Protocol("first message too short".to_owned()))?;
    let fresh = replay
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(ephemeral);
    if !fresh {
        return Err(HandshakeError::Replayed);
    }
    authenticated();
    let peer = Hello::decode(msg.get(..n).unwrap_or_default())?;
    clock.received(peer.stamps, rx);

    let n = hs
        .write_message(&hello(config, &clock).encode(), &mut msg)
        .map_err(noise)?;
    write_handshake_frame(stream, msg.get(..n).unwrap_or_default()).await?;
    let handshake_hash = hs.get_handshake_hash().to_vec();
    let transport = hs.into_stateless_transport_mode().map_err(noise)?;

    match read_frame(stream, &mut buf).await {
        Ok(true) => {}
        Ok(false) | Err(ReadError::Io(_)) => return Err(HandshakeError::NotConfirmed),
        Err(ReadError::Frame(e)) => return Err(HandshakeError::Frame(e)),
    }
    let n = transport
        .read_message(0, &buf, &mut msg)
        .map_err(|_| HandshakeError::NotConfirmed)?;
    match Body::decode(msg.get(..n).unwrap_or_default()) {
        Ok(Body::Confirm(stamps)) => clock.received(stamps, now_micros()),
        Ok(other) => {
            return Err(HandshakeError::Protocol(format!(
                "expected the key confirmation, got {}",
                kind_name(&other)
            )));
        }
        Err(e) => return Err(HandshakeError::Protocol(e)),
    }
    Ok(Established {
        transport,
        peer,
        clock,
        send_nonce: 0,
        recv_nonce: 1,
        handshake_hash,
    })
}

/// A short name of a body kind, for errors.
pub(crate) fn kind_name(body: &Body<'_>) -> &'static str {
    match body {
        Body::Confirm(_) => "a key confirmation",
        Body::Heartbeat(_) => "a heartbeat",
        Body::Message { .. } => "a message",
        Body::MessageMore(_) => "a message fragment",
        Body::BlobStart => "a blob start",
        Body::BlobChunk(_) => "a blob chunk",
        Body::BlobEnd { .. } => "a blob end",
        Body::BlobAbort(_) => "a blob abort",
        Body::Close(_) => "a close",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::SiteKey;
    use tandem_core::NodeId;

    fn config(key: [u8; 32], node: NodeId) -> Config {
        Config::new(SiteKey::from_bytes(key), node)
    }

    #[tokio::test]
    async fn same_key_establishes_and_exchanges_hellos() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let replay = std::sync::Mutex::default();
        let ca = config([7; 32], NodeId::One);
        let cb = config([7; 32], NodeId::Two);
        let (ra, rb) = tokio::join!(
            initiate(&mut a, &ca),
            respond(&mut b, &cb, &replay, Duration::from_secs(5), || {})
        );
        let (ea, eb) = (ra.unwrap(), rb.unwrap());
        assert_eq!(ea.peer.node_id, NodeId::Two);
        assert_eq!(eb.peer.node_id, NodeId::One);
        // The initiator has a clock sample from the handshake alone.
        assert!(ea.clock.estimate().is_some());
        assert!(eb.clock.estimate().is_some());
    }

    #[tokio::test]
    async fn wrong_key_fails_authentication_on_the_responder() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let replay = std::sync::Mutex::default();
        let ca = config([7; 32], NodeId::One);
        let cb = config([8; 32], NodeId::Two);
        let responder = async {
            let r = respond(&mut b, &cb, &replay, Duration::from_secs(5), || {}).await;
            drop(b);
            r
        };
        let (ra, rb) = tokio::join!(initiate(&mut a, &ca), responder);
        assert!(matches!(rb, Err(HandshakeError::Authentication)), "{rb:?}");
        assert!(
            matches!(ra, Err(HandshakeError::PeerClosed)),
            "{:?}",
            ra.err()
        );
    }

    #[tokio::test]
    async fn a_hello_from_node_3_is_refused_and_named() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let replay = std::sync::Mutex::default();
        let key = SiteKey::from_bytes([7; 32]);
        let cb = Config::new(key.clone(), NodeId::Two);
        let initiator = async {
            // What `initiate` sends, with the node id byte set to 3.
            let mut hs = state(&key, true).unwrap();
            let mut hello = hello(&cb, &ClockTracker::default()).encode();
            hello[1] = 3;
            let mut msg = vec![0u8; MAX_FRAME_LEN];
            let n = hs.write_message(&hello, &mut msg).unwrap();
            write_handshake_frame(&mut a, &msg[..n]).await.unwrap();
            a
        };
        let (_a, rb) = tokio::join!(
            initiator,
            respond(&mut b, &cb, &replay, Duration::from_secs(5), || {})
        );
        let err = rb.unwrap_err();
        assert!(matches!(err, HandshakeError::UnknownNode(3)), "{err:?}");
        assert!(err.to_string().contains("node id 3"), "{err}");
    }

    #[test]
    fn replay_cache_forgets_the_oldest() {
        let mut cache = ReplayCache::default();
        let key = |i: usize| {
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&i.to_be_bytes());
            k
        };
        for i in 0..=REPLAY_CACHE_LEN {
            assert!(cache.insert(key(i)));
        }
        assert!(!cache.insert(key(REPLAY_CACHE_LEN)));
        assert!(cache.insert(key(0)), "the oldest entry was evicted");
    }
}
