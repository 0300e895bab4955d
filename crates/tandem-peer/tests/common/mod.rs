//! Helpers for the integration tests: configurations with short intervals, a connected
//! pair of sessions, a log capture, and a TCP proxy on 127.0.0.1 that can freeze traffic
//! or tamper with, duplicate or prefix one frame on its way from client to server.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem_core::NodeId;
use tandem_peer::frame::{self, Decoded, LEN_PREFIX};
use tandem_peer::{Config, Listener, Session, SiteKey, dial};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Heartbeat interval used by the tests.
pub const HEARTBEAT: Duration = Duration::from_millis(50);

/// A safety net against a hung test, far above anything expected; never a timing claim.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

pub fn key(byte: u8) -> SiteKey {
    SiteKey::from_bytes([byte; 32])
}

/// Fast heartbeats, but a generous miss count: tests that are not about liveness must
/// not see a false "peer lost" on a busy machine.
pub fn config(key: &SiteKey, node: NodeId) -> Config {
    Config::new(key.clone(), node)
        .with_heartbeat_interval(HEARTBEAT)
        .with_missed_heartbeats(40)
        .with_handshake_timeout(HANDSHAKE_TIMEOUT)
}

/// Handshake timeout used by the tests.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// Awaits `what`, failing the test with `doing` if it hangs.
pub async fn within<T>(doing: &str, what: impl Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, what).await {
        Ok(value) => value,
        Err(_) => panic!("test hung while {doing}"),
    }
}

/// A listener (node 2) and a dialed session (node 1) with the same key, plus the
/// accepted session.
pub async fn pair() -> (Session, Session) {
    let key = key(7);
    let mut listener = Listener::bind(any_port(), config(&key, NodeId::Two))
        .await
        .unwrap();
    let addr = listener.local_addr();
    let node1 = config(&key, NodeId::One);
    let (client, server) = within("connecting a pair", async {
        tokio::join!(dial(addr, &node1), listener.accept())
    })
    .await;
    (client.unwrap(), server.unwrap())
}

/// Deterministic test data: byte `i` of a stream.
pub fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 11)) as u8
}

/// An `AsyncRead` that yields `len` pattern bytes without holding them, then fails if
/// `fail_at` is set and reached.
pub struct PatternSource {
    pub pos: u64,
    pub len: u64,
    pub fail_at: Option<u64>,
}

impl AsyncRead for PatternSource {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.fail_at.is_some_and(|at| self.pos >= at) {
            return std::task::Poll::Ready(Err(std::io::Error::other("disk read error")));
        }
        let end = self.fail_at.unwrap_or(self.len).min(self.len);
        let n = (end - self.pos).min(buf.remaining() as u64).min(40_000) as usize;
        let start = self.pos;
        let bytes: Vec<u8> = (start..start + n as u64).map(pattern).collect();
        buf.put_slice(&bytes);
        self.pos += n as u64;
        std::task::Poll::Ready(Ok(()))
    }
}

/// An `AsyncWrite` that checks what it receives against the pattern without keeping it.
#[derive(Default)]
pub struct PatternSink {
    pub pos: u64,
    pub mismatches: u64,
}

impl AsyncWrite for PatternSink {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        for &b in buf {
            if b != pattern(self.pos) {
                self.mismatches += 1;
            }
            self.pos += 1;
        }
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Sets, once per process, an inert global subscriber that wants every log line (see
/// [`LogCapture::install`]). Tests that capture logs call it first thing.
pub fn wanting_global_subscriber() {
    static GLOBAL: std::sync::Once = std::sync::Once::new();
    GLOBAL.call_once(|| {
        // Another global subscriber already set serves the same purpose.
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry());
    });
}

/// Captures the `tracing` output of the current thread (tests run on a current-thread
/// runtime, so the session tasks log here too).
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// Installs the capture for this thread until the guard is dropped.
    ///
    /// `tracing` caches, once per process, whether a log line's call site is wanted,
    /// asking the subscriber of whichever thread reaches it first. A sibling test's
    /// thread without a subscriber would cache "never" and blind this capture (the
    /// flood test once saw none of node2's refusals that way). So the process first
    /// gets an inert global subscriber that wants every line; it writes nothing.
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        wanting_global_subscriber();
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// What the proxy does to the first client-to-server frame whose body is `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Flip one bit in the middle of the ciphertext.
    Flip { len: usize },
    /// Send the frame twice.
    Duplicate { len: usize },
    /// Send a length prefix of 4 GiB - 1 instead of the frame.
    Oversize { len: usize },
}

struct Control {
    target: SocketAddr,
    frozen: watch::Sender<bool>,
    rule: Mutex<Option<Rule>>,
    fired: Mutex<bool>,
    /// Every client-to-server frame (prefix included) of the first connection.
    captured: Mutex<Vec<Vec<u8>>>,
    connections: Mutex<usize>,
}

/// A TCP proxy on 127.0.0.1 in front of `target`.
pub struct Proxy {
    pub addr: SocketAddr,
    control: Arc<Control>,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind(any_port()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let control = Arc::new(Control {
            target,
            frozen: watch::Sender::new(false),
            rule: Mutex::new(None),
            fired: Mutex::new(false),
            captured: Mutex::new(Vec::new()),
            connections: Mutex::new(0),
        });
        let ctl = Arc::clone(&control);
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let number = {
                    let mut n = ctl.connections.lock().unwrap();
                    *n += 1;
                    *n - 1
                };
                connections.spawn(serve(Arc::clone(&ctl), client, number));
            }
        });
        Proxy {
            addr,
            control,
            task,
        }
    }

    /// Stops forwarding in both directions (connections stay open, nothing passes, not
    /// even a close) until [`Proxy::thaw`].
    pub fn freeze(&self) {
        self.control.frozen.send_replace(true);
    }

    pub fn thaw(&self) {
        self.control.frozen.send_replace(false);
    }

    pub fn arm(&self, rule: Rule) {
        *self.control.rule.lock().unwrap() = Some(rule);
    }

    pub fn fired(&self) -> bool {
        *self.control.fired.lock().unwrap()
    }

    pub fn captured(&self) -> Vec<Vec<u8>> {
        self.control.captured.lock().unwrap().clone()
    }
}

async fn thawed(control: &Control) {
    let mut rx = control.frozen.subscribe();
    let _ = rx.wait_for(|frozen| !frozen).await;
}

async fn serve(control: Arc<Control>, client: TcpStream, number: usize) {
    let Ok(server) = TcpStream::connect(control.target).await else {
        return;
    };
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::select! {
        _ = upstream(&control, cr, sw, number) => {}
        _ = downstream(&control, sr, cw) => {}
    }
    // Even the end of a connection does not pass while frozen.
    thawed(&control).await;
}

async fn downstream(
    control: &Control,
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = from.read(&mut buf).await.unwrap_or(0);
        thawed(control).await;
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn upstream(
    control: &Control,
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    number: usize,
) {
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = from.read(&mut buf).await.unwrap_or(0);
        thawed(control).await;
        if n == 0 {
            return;
        }
        pending.extend_from_slice(&buf[..n]);
        loop {
            let (frame, consumed) = match frame::decode(&pending) {
                Ok(Decoded::Frame { consumed, .. }) => (pending[..consumed].to_vec(), consumed),
                Ok(Decoded::Incomplete { .. }) => break,
                Err(_) => {
                    // Not our protocol: pass it through untouched.
                    let rest = std::mem::take(&mut pending);
                    if to.write_all(&rest).await.is_err() {
                        return;
                    }
                    break;
                }
            };
            pending.drain(..consumed);
            if number == 0 {
                control.captured.lock().unwrap().push(frame.clone());
            }
            let out = apply_rule(control, frame);
            if to.write_all(&out).await.is_err() {
                return;
            }
        }
    }
}

fn apply_rule(control: &Control, mut frame: Vec<u8>) -> Vec<u8> {
    let body_len = frame.len() - LEN_PREFIX;
    let mut rule = control.rule.lock().unwrap();
    let matches = match *rule {
        Some(Rule::Flip { len } | Rule::Duplicate { len } | Rule::Oversize { len }) => {
            len == body_len
        }
        None => false,
    };
    if !matches {
        return frame;
    }
    *control.fired.lock().unwrap() = true;
    match rule.take() {
        Some(Rule::Flip { .. }) => {
            frame[LEN_PREFIX + body_len / 2] ^= 0x01;
            frame
        }
        Some(Rule::Duplicate { .. }) => {
            let mut twice = frame.clone();
            twice.extend_from_slice(&frame);
            twice
        }
        Some(Rule::Oversize { .. }) => u32::MAX.to_be_bytes().to_vec(),
        None => frame,
    }
}

/// Frame body length of a single-frame message of `len` bytes on the wire.
pub fn message_frame_len(len: usize) -> usize {
    // kind byte + total length (8) + data + tag
    1 + 8 + len + frame::TAG_LEN
}
