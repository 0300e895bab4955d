//! An established session: two background tasks own the connection. The writer sends
//! queued messages, blob pieces and a heartbeat every interval; the reader decrypts
//! frames with the expected nonce, watches liveness and hands messages and blobs to the
//! application. Either task ending closes the session, and the first close reason wins.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use snow::StatelessTransportState;
use tandem_core::NodeId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{OwnedMutexGuard, mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use crate::body::{self, Body, CHUNK_DATA, MESSAGE_FIRST_DATA};
use crate::clock::{ClockOffset, ClockTracker, now_micros};
use crate::config::Config;
use crate::envelope::{Conversation, EnvelopeError};
use crate::error::{CloseReason, Error, Result};
use crate::frame::MAX_FRAME_LEN;
use crate::handshake::{Established, ReadError, read_frame, seal};
use crate::liveness::{DatagramKeys, TCP_BACKSTOP_FACTOR, TCP_BACKSTOP_MIN};

/// Messages queued for the writer (each up to `max_message_len` bytes).
const OUTBOUND_QUEUE: usize = 8;
/// Messages (or blob starts) waiting for `recv`.
const INBOUND_QUEUE: usize = 16;
/// Blob chunks (64 KiB each) waiting for the blob reader.
const BLOB_QUEUE: usize = 16;
/// Read buffer of the connection.
const READ_BUFFER: usize = 128 << 10;
/// Longest silence ever tolerated, whatever the settings (keeps deadlines representable).
const MAX_SILENCE: Duration = Duration::from_secs(24 * 3600);
/// Frames at least this large are followed by a yield to the scheduler.
const YIELD_AFTER: usize = 16 << 10;
/// Longest heartbeat interval a peer may announce.
const MAX_PEER_HEARTBEAT_MS: u32 = 3_600_000;

/// State shared by a session's handle, its two tasks and a [`Link`](crate::Link).
pub(crate) struct Shared {
    state: watch::Sender<Option<CloseReason>>,
    clock: Mutex<ClockTracker>,
    /// When the reader last took a frame off the wire.
    heard: Mutex<Instant>,
    /// How long a silence ends the session.
    silence: Duration,
    peer_addr: SocketAddr,
    peer_node: NodeId,
    /// The peer's heartbeat interval, as it announced it.
    peer_interval: Duration,
    /// The keys of this session's heartbeat datagrams.
    datagram_keys: DatagramKeys,
    /// Whether the peer's heartbeat datagrams carry this session's liveness (see
    /// [`crate::liveness`]): the TCP stream is then judged by a longer backstop.
    datagrams: AtomicBool,
}

impl Shared {
    /// Closes the session with `reason` unless it is already closed; logs the first close.
    pub(crate) fn close(&self, reason: CloseReason) {
        let mut logged = None;
        self.state.send_if_modified(|state| {
            if state.is_some() {
                return false;
            }
            logged = Some(reason.clone());
            *state = Some(reason);
            true
        });
        let Some(reason) = logged else { return };
        let (peer, node) = (self.peer_addr, self.peer_node.get());
        match reason {
            CloseReason::Local(_) | CloseReason::PeerClosed(_) => {
                info!(%peer, node, %reason, "peer link session closed");
            }
            _ => warn!(%peer, node, %reason, "peer link session closed"),
        }
    }

    pub(crate) fn reason(&self) -> Option<CloseReason> {
        self.state.borrow().clone()
    }

    /// Waits until the session is closed and returns why.
    pub(crate) async fn closed(&self) -> CloseReason {
        let mut rx = self.state.subscribe();
        let reason = match rx.wait_for(Option::is_some).await {
            Ok(state) => state.clone(),
            Err(_) => None,
        };
        reason.unwrap_or_else(|| CloseReason::Local("the session was dropped".to_owned()))
    }

    fn heard(&self) -> MutexGuard<'_, Instant> {
        self.heard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A genuine heartbeat datagram of this session arrived at `at`.
    pub(crate) fn heard_datagram(&self, at: std::time::Instant) {
        self.datagrams.store(true, Ordering::Release);
        let at = Instant::from_std(at);
        let mut heard = self.heard();
        if *heard < at {
            *heard = at;
        }
    }

    /// Whether the peer's datagrams carry this session's liveness.
    fn datagrams(&self) -> bool {
        self.datagrams.load(Ordering::Acquire)
    }

    /// The peer's address on the TCP stream.
    pub(crate) fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// The peer's node id.
    pub(crate) fn peer_node(&self) -> NodeId {
        self.peer_node
    }

    /// The peer's announced heartbeat interval.
    pub(crate) fn peer_interval(&self) -> Duration {
        self.peer_interval
    }

    /// The keys of this session's heartbeat datagrams.
    pub(crate) fn datagram_keys(&self) -> &DatagramKeys {
        &self.datagram_keys
    }

    fn clock(&self) -> MutexGuard<'_, ClockTracker> {
        self.clock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn closed_error(&self) -> Error {
        Error::Closed(
            self.reason()
                .unwrap_or_else(|| CloseReason::Local("the session is closing".to_owned())),
        )
    }
}

/// What the application hands to the writer task.
enum Outbound {
    /// A whole message, fragmented by the writer.
    Message(Vec<u8>),
    /// One encoded body (blob pieces).
    Body(Vec<u8>),
    /// Send a close frame with this reason and end the session.
    Close(String),
}

/// What [`Session::recv`] returns.
#[derive(Debug)]
#[non_exhaustive]
pub enum Incoming {
    /// A message sent with [`Session::send`].
    Message(Vec<u8>),
    /// A blob sent with [`Session::send_blob`]; read it to the end (or drop it) before
    /// calling `recv` again, because later messages queue behind it.
    Blob(BlobReader),
}

impl Incoming {
    /// Takes a message of conversation `M` out of its envelope; a blob, or a message
    /// that is not a well-formed `M`, is an [`Error::Envelope`] naming what came.
    pub fn open<M: Conversation>(self) -> Result<M> {
        match self {
            Incoming::Message(bytes) => Ok(crate::envelope::open(&bytes)?),
            Incoming::Blob(_) => Err(Error::Envelope(EnvelopeError::Malformed {
                channel: M::CHANNEL,
                detail: "a blob arrived where a message was expected".into(),
            })),
        }
    }
}

enum BlobItem {
    Chunk(Vec<u8>),
    End,
    Abort(String),
}

/// The receiving end of a blob: its chunks in order, at most a few hundred KiB buffered.
pub struct BlobReader {
    rx: mpsc::Receiver<BlobItem>,
    shared: Arc<Shared>,
    received: u64,
    finished: bool,
}

impl std::fmt::Debug for BlobReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobReader")
            .field("received", &self.received)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl BlobReader {
    /// The next chunk, or `None` once the whole blob was received. Fails with
    /// [`Error::BlobAborted`] if the sender gave up, or [`Error::Closed`] if the session
    /// ended first.
    pub async fn chunk(&mut self) -> Result<Option<Vec<u8>>> {
        if self.finished {
            return Ok(None);
        }
        match self.rx.recv().await {
            Some(BlobItem::Chunk(data)) => {
                self.received = self
                    .received
                    .saturating_add(u64::try_from(data.len()).unwrap_or(u64::MAX));
                Ok(Some(data))
            }
            Some(BlobItem::End) => {
                self.finished = true;
                Ok(None)
            }
            Some(BlobItem::Abort(reason)) => {
                self.finished = true;
                Err(Error::BlobAborted(reason))
            }
            None => {
                self.finished = true;
                Err(self.shared.closed_error())
            }
        }
    }

    /// Writes the rest of the blob to `sink` and flushes it; returns the bytes written.
    pub async fn copy_to<W: AsyncWrite + Unpin>(&mut self, sink: &mut W) -> Result<u64> {
        let mut written = 0u64;
        while let Some(chunk) = self.chunk().await? {
            sink.write_all(&chunk).await.map_err(Error::BlobSink)?;
            written = written.saturating_add(u64::try_from(chunk.len()).unwrap_or(u64::MAX));
        }
        sink.flush().await.map_err(Error::BlobSink)?;
        Ok(written)
    }

    /// Like [`BlobReader::copy_to`], but refuses a blob longer than `limit` bytes: the
    /// chunk that would pass the limit is not written, the rest of the blob is skipped
    /// (the session goes on) and this fails with [`Error::BlobTooLarge`]. Use it for
    /// every blob whose size was announced or is bounded by policy, so that a peer
    /// cannot fill the disk; the caller removes what was written.
    pub async fn copy_to_limited<W: AsyncWrite + Unpin>(
        &mut self,
        sink: &mut W,
        limit: u64,
    ) -> Result<u64> {
        let mut written = 0u64;
        while let Some(chunk) = self.chunk().await? {
            let len = u64::try_from(chunk.len()).unwrap_or(u64::MAX);
            if written.saturating_add(len) > limit {
                self.skip_rest();
                return Err(Error::BlobTooLarge { limit });
            }
            sink.write_all(&chunk).await.map_err(Error::BlobSink)?;
            written = written.saturating_add(len);
        }
        sink.flush().await.map_err(Error::BlobSink)?;
        Ok(written)
    }

    /// Stops receiving: the session's reader discards the rest of the blob.
    fn skip_rest(&mut self) {
        self.finished = true;
        self.rx.close();
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Whether the whole blob was received (or it ended in an error).
    pub fn is_finished(&self) -> bool {
        self.finished
    }
}

/// An authenticated, encrypted session with the peer node. Cheap to clone; all clones
/// are the same session, which closes (sending a close frame) when the last clone is
/// dropped or [`Session::close`] is called. Use one task at a time for `recv`.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    outbound: mpsc::Sender<Outbound>,
    inbound: tokio::sync::Mutex<mpsc::Receiver<Incoming>>,
    /// Held for a whole blob so that nothing else is sent in the middle of it.
    send_lock: Arc<tokio::sync::Mutex<()>>,
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    initiator: bool,
    peer_max_message_len: usize,
    grace: Duration,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer_node", &self.peer_node())
            .field("peer_addr", &self.peer_addr())
            .field("local_addr", &self.inner.local_addr)
            .field("initiator", &self.inner.initiator)
            .field("closed", &self.close_reason())
            .finish()
    }
}

impl Session {
    /// Starts the session's tasks on an established connection.
    pub(crate) fn start(
        stream: TcpStream,
        established: Established,
        config: &Config,
        peer_addr: SocketAddr,
        local_addr: SocketAddr,
        initiator: bool,
    ) -> Session {
        let Established {
            transport,
            peer,
            clock,
            send_nonce,
            recv_nonce,
            handshake_hash,
        } = established;
        let peer_interval =
            Duration::from_millis(u64::from(peer.heartbeat_ms.clamp(1, MAX_PEER_HEARTBEAT_MS)));
        let silence = peer_interval
            .saturating_mul(config.missed_heartbeats)
            .min(MAX_SILENCE);
        let shared = Arc::new(Shared {
            state: watch::Sender::new(None),
            clock: Mutex::new(clock),
            heard: Mutex::new(Instant::now()),
            silence,
            peer_addr,
            peer_node: peer.node_id,
            peer_interval,
            datagram_keys: DatagramKeys::derive(&config.key, &handshake_hash),
            datagrams: AtomicBool::new(false),
        });
        let transport = Arc::new(transport);
        let (out_tx, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
        let (in_tx, in_rx) = mpsc::channel(INBOUND_QUEUE);
        let (rd, wr) = stream.into_split();
        let grace = config.handshake_timeout;

        let writer = Writer {
            wr,
            transport: Arc::clone(&transport),
            nonce: send_nonce,
            plain: Vec::new(),
            wire: Vec::new(),
            shared: Arc::clone(&shared),
        };
        let writer = tokio::spawn(writer.run(out_rx, config.heartbeat_interval, grace));

        let reader = Reader {
            rd: BufReader::with_capacity(READ_BUFFER, rd),
            transport,
            nonce: recv_nonce,
            shared: Arc::clone(&shared),
            in_tx,
            writer: writer.abort_handle(),
            silence,
            missed: config.missed_heartbeats,
            max_message_len: config.max_message_len,
            grace,
        };
        tokio::spawn(reader.run());

        Session {
            inner: Arc::new(Inner {
                outbound: out_tx,
                inbound: tokio::sync::Mutex::new(in_rx),
                send_lock: Arc::new(tokio::sync::Mutex::new(())),
                shared,
                local_addr,
                initiator,
                peer_max_message_len: usize::try_from(peer.max_message_len).unwrap_or(usize::MAX),
                grace,
            }),
        }
    }

    pub(crate) fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.inner.shared)
    }

    /// Queues one message for the peer. Returns once it is queued (at most a few
    /// messages wait); delivery is not acknowledged, so an application that needs to know
    /// sends an answer back. Messages arrive whole and in order. Fails with
    /// [`Error::MessageTooLarge`] (session unharmed) past the peer's `max_message_len`,
    /// and with [`Error::Closed`] once the session is closed. Cancel-safe.
    pub async fn send(&self, payload: impl Into<Vec<u8>>) -> Result<()> {
        let payload = payload.into();
        if payload.len() > self.inner.peer_max_message_len {
            return Err(Error::MessageTooLarge {
                len: payload.len(),
                max: self.inner.peer_max_message_len,
            });
        }
        if self.is_closed() {
            return Err(self.inner.shared.closed_error());
        }
        let _turn = self.inner.send_lock.lock().await;
        self.inner
            .outbound
            .send(Outbound::Message(payload))
            .await
            .map_err(|_| self.inner.shared.closed_error())
    }

    /// Seals `message` in the [envelope](crate::envelope) of its conversation and
    /// [`send`](Self::send)s it. The receiver takes it out with
    /// [`open`](crate::envelope::open) (or [`Incoming::open`]).
    pub async fn send_message<M: Conversation>(&self, message: &M) -> Result<()> {
        let bytes = crate::envelope::seal(message)?;
        self.send(bytes).await
    }

    /// Streams everything `source` yields to the peer as one blob, in frames of 64 KiB,
    /// and returns the byte count. Only a few frames are buffered, so a blob of any size
    /// (a 200 MB config bundle) needs little memory on either side. Other sends wait
    /// until the blob is done. If `source` fails, the peer's [`BlobReader`] gets
    /// [`Error::BlobAborted`] and this returns [`Error::BlobSource`]; if this future is
    /// dropped midway, the blob is aborted the same way.
    pub async fn send_blob<R: AsyncRead + Unpin>(&self, mut source: R) -> Result<u64> {
        if self.is_closed() {
            return Err(self.inner.shared.closed_error());
        }
        let turn = Arc::clone(&self.inner.send_lock).lock_owned().await;
        let mut guard = BlobGuard {
            out: self.inner.outbound.clone(),
            turn: Some(turn),
        };
        let closed = || self.inner.shared.closed_error();
        guard
            .push(encoded(&Body::BlobStart)?)
            .await
            .map_err(|_| closed())?;
        let mut total = 0u64;
        loop {
            let mut chunk = body::blob_chunk_buffer();
            let mut filled = 0usize;
            let mut eof = false;
            while let Some(space) = chunk.get_mut(1 + filled..).filter(|s| !s.is_empty()) {
                match source.read(space).await {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let abort = Body::BlobAbort(format!("the sender's source failed: {e}"));
                        if let Ok(bytes) = abort.encode() {
                            let _ = guard.push(bytes).await;
                        }
                        guard.turn = None;
                        return Err(Error::BlobSource(e));
                    }
                }
            }
            if filled > 0 {
                chunk.truncate(1 + filled);
                guard.push(chunk).await.map_err(|_| closed())?;
                total = total.saturating_add(u64::try_from(filled).unwrap_or(u64::MAX));
            }
            if eof {
                break;
            }
        }
        guard
            .push(encoded(&Body::BlobEnd { total })?)
            .await
            .map_err(|_| closed())?;
        guard.turn = None;
        Ok(total)
    }

    /// The next message or blob from the peer. Messages that arrived before the session
    /// closed are still returned; after them this fails with [`Error::Closed`] and the
    /// reason. Cancel-safe.
    ///
    /// Take messages promptly: while some wait unread, the session stops reading the
    /// connection (backpressure), and silence from the peer is not judged until they
    /// are taken.
    pub async fn recv(&self) -> Result<Incoming> {
        let mut inbound = self.inner.inbound.lock().await;
        match inbound.recv().await {
            Some(item) => Ok(item),
            None => Err(self.inner.shared.closed_error()),
        }
    }

    /// Closes the session: queued messages are sent, then a close frame with `reason`
    /// (so the peer logs why), then the connection is shut down. Waits at most the
    /// handshake timeout for that, then drops the connection anyway.
    pub async fn close(&self, reason: &str) {
        let shared = &self.inner.shared;
        let polite = async {
            if self
                .inner
                .outbound
                .send(Outbound::Close(reason.to_owned()))
                .await
                .is_ok()
            {
                shared.closed().await;
            }
        };
        let _ = tokio::time::timeout(self.inner.grace, polite).await;
        shared.close(CloseReason::Local(reason.to_owned()));
    }

    /// Waits until the session is closed and returns why (peer lost, peer closed, ...).
    pub async fn closed(&self) -> CloseReason {
        self.inner.shared.closed().await
    }

    /// Why the session closed, or `None` while it is open.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.inner.shared.reason()
    }

    /// Whether the session is closed.
    pub fn is_closed(&self) -> bool {
        self.inner.shared.state.borrow().is_some()
    }

    /// The node id the peer announced in the handshake.
    pub fn peer_node(&self) -> NodeId {
        self.inner.shared.peer_node
    }

    /// The peer's socket address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.inner.shared.peer_addr
    }

    /// This side's socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Whether this side dialed (Noise initiator).
    pub fn is_initiator(&self) -> bool {
        self.inner.initiator
    }

    /// The longest message the peer accepts.
    pub fn peer_max_message_len(&self) -> usize {
        self.inner.peer_max_message_len
    }

    /// Whether the peer's heartbeat datagrams carry this session's liveness (a
    /// [`Link`](crate::Link)'s sessions, once the peer's first genuine datagram
    /// arrived); otherwise the TCP stream's frames alone do.
    pub fn datagram_liveness(&self) -> bool {
        self.inner.shared.datagrams()
    }

    /// When anything (a frame, a heartbeat datagram) last arrived from the peer.
    pub fn last_heard(&self) -> Instant {
        *self.inner.shared.heard()
    }

    /// How long the peer may stay silent before the session ends with
    /// [`CloseReason::PeerLost`]: the peer's heartbeat interval times this node's
    /// `missed_heartbeats`.
    pub fn silence_limit(&self) -> Duration {
        self.inner.shared.silence
    }

    /// The current estimate of the peer's clock offset, from the handshake and
    /// heartbeats; `None` until a first round trip completed.
    pub fn clock_offset(&self) -> Option<ClockOffset> {
        self.inner.shared.clock().estimate()
    }
}

/// Keeps the send turn for a blob; if the blob is abandoned midway (the future dropped),
/// queues an abort so the peer is not left waiting, and only then releases the turn.
struct BlobGuard {
    out: mpsc::Sender<Outbound>,
    turn: Option<OwnedMutexGuard<()>>,
}

impl BlobGuard {
    async fn push(&self, body: Vec<u8>) -> Result<(), ()> {
        self.out.send(Outbound::Body(body)).await.map_err(|_| ())
    }
}

impl Drop for BlobGuard {
    fn drop(&mut self) {
        let Some(turn) = self.turn.take() else { return };
        let Ok(abort) = Body::BlobAbort("the sender cancelled the blob".to_owned()).encode() else {
            return;
        };
        let out = self.out.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    let _ = out.send(Outbound::Body(abort)).await;
                    drop(turn);
                });
            }
            Err(_) => {
                let _ = out.try_send(Outbound::Body(abort));
            }
        }
    }
}

/// The sending task.
struct Writer {
    wr: OwnedWriteHalf,
    transport: Arc<StatelessTransportState>,
    nonce: u64,
    plain: Vec<u8>,
    wire: Vec<u8>,
    shared: Arc<Shared>,
}

impl Writer {
    async fn run(
        mut self,
        mut out_rx: mpsc::Receiver<Outbound>,
        heartbeat: Duration,
        grace: Duration,
    ) {
        let mut closed = self.shared.state.subscribe();
        let mut ticker = tokio::time::interval(heartbeat);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let ending = loop {
            let step = tokio::select! {
                biased;
                _ = wait_closed(&mut closed) => return,
                // A due heartbeat goes before queued messages and blob pieces, which
                // would otherwise starve it for as long as a bundle takes.
                _ = ticker.tick() => {
                    let stamps = self.shared.clock().outgoing(now_micros());
                    self.body(&Body::Heartbeat(stamps)).await
                }
                item = out_rx.recv() => match item {
                    Some(Outbound::Message(m)) => self.message(&m).await,
                    Some(Outbound::Body(b)) => self.write_plain(&b).await,
                    Some(Outbound::Close(reason)) => break reason,
                    None => break "the application dropped the session".to_owned(),
                },
            };
            if let Err(reason) = step {
                self.shared.close(reason);
                return;
            }
        };
        let farewell = async {
            let _ = self.body(&Body::Close(ending.clone())).await;
            let _ = self.wr.shutdown().await;
        };
        let _ = tokio::time::timeout(grace, farewell).await;
        self.shared.close(CloseReason::Local(ending));
    }

    async fn message(&mut self, message: &[u8]) -> Result<(), CloseReason> {
        let total = u64::try_from(message.len()).unwrap_or(u64::MAX);
        let (first, rest) = message.split_at(message.len().min(MESSAGE_FIRST_DATA));
        self.body(&Body::Message { total, data: first }).await?;
        for piece in rest.chunks(CHUNK_DATA) {
            self.body(&Body::MessageMore(piece)).await?;
        }
        Ok(())
    }

    async fn body(&mut self, body: &Body<'_>) -> Result<(), CloseReason> {
        let mut plain = std::mem::take(&mut self.plain);
        let result = match body.encode_into(&mut plain) {
            Ok(()) => self.write_plain(&plain).await,
            Err(e) => Err(CloseReason::Protocol(e)),
        };
        self.plain = plain;
        result
    }

    async fn write_plain(&mut self, plain: &[u8]) -> Result<(), CloseReason> {
        seal(&self.transport, self.nonce, plain, &mut self.wire).map_err(CloseReason::Protocol)?;
        self.nonce = self
            .nonce
            .checked_add(1)
            .ok_or_else(|| CloseReason::Protocol("send nonces exhausted".to_owned()))?;
        self.wr
            .write_all(&self.wire)
            .await
            .map_err(|e| CloseReason::Io(e.to_string()))?;
        if plain.len() >= YIELD_AFTER {
            // Writes to a roomy socket never wait, so a long message would otherwise keep
            // the thread (and on a current-thread runtime, the receiving side) busy.
            tokio::task::yield_now().await;
        }
        Ok(())
    }
}

/// A blob being received.
struct BlobIn {
    /// `None` once the application dropped its reader: the rest is discarded.
    tx: Option<mpsc::Sender<BlobItem>>,
    received: u64,
}

/// The receiving task.
struct Reader {
    rd: BufReader<OwnedReadHalf>,
    transport: Arc<StatelessTransportState>,
    nonce: u64,
    shared: Arc<Shared>,
    in_tx: mpsc::Sender<Incoming>,
    writer: AbortHandle,
    silence: Duration,
    missed: u32,
    max_message_len: usize,
    grace: Duration,
}

/// How the reader loop ends: with a reason to close, or because it is already closed.
type Stop = Option<CloseReason>;

impl Reader {
    async fn run(mut self) {
        let Err(stop) = self.read_loop().await;
        if let Some(reason) = stop {
            self.shared.close(reason);
        }
        self.writer.abort();
    }

    async fn read_loop(&mut self) -> Result<Infallible, Stop> {
        let mut closed = self.shared.state.subscribe();
        let mut cipher = Vec::new();
        let mut plain = vec![0u8; MAX_FRAME_LEN];
        let mut message: Option<(usize, Vec<u8>)> = None;
        let mut blob: Option<BlobIn> = None;
        // Once the peer's datagrams carry liveness, the stream only has to show life
        // within the backstop (a wedged stream still ends the session).
        let backstop = self
            .silence
            .saturating_mul(TCP_BACKSTOP_FACTOR)
            .max(TCP_BACKSTOP_MIN)
            .min(MAX_SILENCE);
        let mut last_frame = Instant::now();
        loop {
            let limit = if self.shared.datagrams() {
                backstop
            } else {
                self.silence
            };
            let read = tokio::select! {
                biased;
                _ = wait_closed(&mut closed) => return Err(None),
                _ = self.in_tx.closed() => return Err(self.app_gone().await),
                read = read_frame(&mut self.rd, &mut cipher) => read,
                _ = tokio::time::sleep_until(last_frame + limit) => {
                    if self.shared.datagrams() && last_frame.elapsed() < backstop {
                        // The datagrams began to carry liveness meanwhile.
                        continue;
                    }
                    return stop(CloseReason::PeerLost { silence: last_frame.elapsed(), missed: self.missed });
                }
            };
            match read {
                Ok(true) => {
                    last_frame = Instant::now();
                    let mut heard = self.shared.heard();
                    if *heard < last_frame {
                        *heard = last_frame;
                    }
                }
                Ok(false) => return stop(CloseReason::ConnectionEnded),
                Err(ReadError::Frame(e)) => return stop(CloseReason::Frame(e)),
                Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return stop(CloseReason::ConnectionEnded);
                }
                Err(ReadError::Io(e)) => return stop(CloseReason::Io(e.to_string())),
            }
            // The expected nonce is ours, not the wire's: a replayed, reordered or
            // altered frame fails here.
            let Ok(n) = self.transport.read_message(self.nonce, &cipher, &mut plain) else {
                return stop(CloseReason::Authentication);
            };
            let Some(next) = self.nonce.checked_add(1) else {
                return protocol("receive nonces exhausted");
            };
            self.nonce = next;
            if n >= YIELD_AFTER {
                // Buffered frames are read without waiting; let other tasks run between
                // large ones.
                tokio::task::yield_now().await;
            }
            let body = match Body::decode(plain.get(..n).unwrap_or_default()) {
                Ok(body) => body,
                Err(e) => return stop(CloseReason::Protocol(e)),
            };
            let busy = message.is_some() || blob.is_some();
            match body {
                Body::Heartbeat(stamps) => self.shared.clock().received(stamps, now_micros()),
                Body::Close(reason) => return stop(CloseReason::PeerClosed(reason)),
                Body::Message { total, data } => {
                    if busy {
                        return protocol("a message began inside another message or a blob");
                    }
                    let total = match usize::try_from(total) {
                        Ok(t) if t <= self.max_message_len => t,
                        _ => {
                            return protocol(&format!(
                                "the peer sent a message of {total} bytes, more than this \
                                 node's limit of {} bytes",
                                self.max_message_len
                            ));
                        }
                    };
                    if data.len() > total {
                        return protocol("a message fragment is longer than its message");
                    }
                    if data.len() == total {
                        self.deliver(Incoming::Message(data.to_vec()), &mut closed)
                            .await?;
                    } else {
                        let mut buf = Vec::with_capacity(total);
                        buf.extend_from_slice(data);
                        message = Some((total, buf));
                    }
                }
                Body::MessageMore(data) => {
                    let Some((total, mut buf)) = message.take() else {
                        return protocol("a message fragment arrived outside a message");
                    };
                    if buf.len().saturating_add(data.len()) > total {
                        return protocol("message fragments exceed the announced length");
                    }
                    buf.extend_from_slice(data);
                    if buf.len() == total {
                        self.deliver(Incoming::Message(buf), &mut closed).await?;
                    } else {
                        message = Some((total, buf));
                    }
                }
                Body::BlobStart => {
                    if busy {
                        return protocol("a blob began inside a message or another blob");
                    }
                    let (tx, rx) = mpsc::channel(BLOB_QUEUE);
                    let reader = BlobReader {
                        rx,
                        shared: Arc::clone(&self.shared),
                        received: 0,
                        finished: false,
                    };
                    self.deliver(Incoming::Blob(reader), &mut closed).await?;
                    blob = Some(BlobIn {
                        tx: Some(tx),
                        received: 0,
                    });
                }
                Body::BlobChunk(data) => {
                    let Some(current) = blob.as_mut() else {
                        return protocol("a blob chunk arrived outside a blob");
                    };
                    current.received = current
                        .received
                        .saturating_add(u64::try_from(data.len()).unwrap_or(u64::MAX));
                    let item = BlobItem::Chunk(data.to_vec());
                    forward(current, item, &mut closed).await?;
                }
                Body::BlobEnd { total } => {
                    let Some(mut current) = blob.take() else {
                        return protocol("a blob end arrived outside a blob");
                    };
                    if total != current.received {
                        return protocol(&format!(
                            "the blob ended claiming {total} bytes after {} bytes",
                            current.received
                        ));
                    }
                    forward(&mut current, BlobItem::End, &mut closed).await?;
                }
                Body::BlobAbort(reason) => {
                    let Some(mut current) = blob.take() else {
                        return protocol("a blob abort arrived outside a blob");
                    };
                    debug!(peer = %self.shared.peer_addr, %reason, "the peer aborted a blob");
                    forward(&mut current, BlobItem::Abort(reason), &mut closed).await?;
                }
                Body::Confirm(_) => return protocol("a second key confirmation arrived"),
            }
        }
    }

    /// Hands an item to `recv`, waiting while the application is busy (that wait never
    /// counts as silence from the peer).
    async fn deliver(
        &self,
        item: Incoming,
        closed: &mut watch::Receiver<Option<CloseReason>>,
    ) -> Result<(), Stop> {
        tokio::select! {
            biased;
            _ = wait_closed(closed) => Err(None),
            sent = self.in_tx.send(item) => match sent {
                Ok(()) => Ok(()),
                Err(_) => Err(self.app_gone().await),
            },
        }
    }

    /// Every handle was dropped: give the writer a moment to send its close frame.
    async fn app_gone(&self) -> Stop {
        let _ = tokio::time::timeout(self.grace, self.shared.closed()).await;
        Some(CloseReason::Local(
            "the application dropped the session".to_owned(),
        ))
    }
}

/// Waits until the session is closed (without holding the watch lock afterwards).
async fn wait_closed(rx: &mut watch::Receiver<Option<CloseReason>>) {
    let _ = rx.wait_for(Option::is_some).await;
}

fn stop(reason: CloseReason) -> Result<Infallible, Stop> {
    Err(Some(reason))
}

fn protocol(what: &str) -> Result<Infallible, Stop> {
    stop(CloseReason::Protocol(what.to_owned()))
}

/// Encodes a body the application side queues; failing to is a bug, reported as such.
fn encoded(body: &Body<'_>) -> Result<Vec<u8>> {
    body.encode()
        .map_err(|e| Error::Closed(CloseReason::Protocol(e)))
}

/// Passes a blob item on; if the blob reader was dropped, the rest of the blob is skipped.
async fn forward(
    blob: &mut BlobIn,
    item: BlobItem,
    closed: &mut watch::Receiver<Option<CloseReason>>,
) -> Result<(), Stop> {
    let Some(tx) = blob.tx.as_ref() else {
        return Ok(());
    };
    tokio::select! {
        biased;
        _ = wait_closed(closed) => return Err(None),
        sent = tx.send(item) => {
            if sent.is_err() {
                blob.tx = None;
            }
        }
    }
    Ok(())
}
