//! Making sessions: [`Listener`] accepts them, [`dial`] and [`dial_from`] initiate them.
//!
//! The listening port is reachable by anyone on the LAN, so the listener assumes that
//! most connections may be hostile: pending handshakes are bounded per source and in
//! total, and a full set makes room by closing an older pending handshake (see
//! `admission.rs`) instead of refusing the newcomer; the first handshake message must
//! arrive within [`FIRST_MESSAGE_TIMEOUT`]; and refusals are logged at a bounded rate
//! (`ratelog.rs`).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use crate::admission::{Admission, Limits, Ticket};
use crate::config::Config;
use crate::error::{Error, HandshakeError, Result, chain};
use crate::handshake::{ReplayCache, initiate, respond};
use crate::ratelog::{LOG_BURST, LOG_WINDOW, LogLimiter};
use crate::session::Session;

/// Pending handshakes from all sources but the expected peer, together.
pub(crate) const MAX_PENDING_HANDSHAKES: usize = 64;
/// Pending handshakes from one source (an IPv4 address or an IPv6 /64).
pub(crate) const MAX_PENDING_PER_SOURCE: usize = 8;
/// How long a connection may take to send its whole first handshake message (at most
/// the handshake timeout). A peer sends it as soon as it is connected.
pub const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(1);
/// Finished handshakes waiting for [`Listener::accept`]. Sessions always wait; errors
/// beyond this many are only logged.
const ACCEPT_QUEUE: usize = 4;

/// Accepts authenticated sessions on a node address. Handshakes run in the background
/// (many at once, each bounded by the handshake timeout), so a silent or hostile
/// connection cannot hold up the peer: pending handshakes are limited per source address
/// and in total, and when the limit is reached the oldest pending handshake of the
/// source that holds the most is closed to make room, so a newcomer is never turned
/// away. Dropping the listener stops accepting; sessions already returned live on.
#[derive(Debug)]
pub struct Listener {
    local_addr: SocketAddr,
    results: mpsc::Receiver<Result<Session>>,
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listener {
    /// Binds `addr` (for example the node address and [`DEFAULT_PORT`](crate::DEFAULT_PORT))
    /// and starts accepting.
    pub async fn bind(addr: SocketAddr, config: Config) -> Result<Listener> {
        Listener::bind_inner(addr, config, None).await
    }

    /// Like [`Listener::bind`], for a listener that knows its peer's node address:
    /// connections from `peer` have pending-handshake slots of their own, which
    /// connections from any other address can never take. [`Link`](crate::Link) binds
    /// this way.
    pub async fn bind_for_peer(addr: SocketAddr, config: Config, peer: IpAddr) -> Result<Listener> {
        Listener::bind_inner(addr, config, Some(peer)).await
    }

    async fn bind_inner(
        addr: SocketAddr,
        config: Config,
        peer: Option<IpAddr>,
    ) -> Result<Listener> {
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        let local_addr = tcp
            .local_addr()
            .map_err(|source| Error::Bind { addr, source })?;
        let (tx, results) = mpsc::channel(ACCEPT_QUEUE);
        let task = tokio::spawn(accept_loop(tcp, Arc::new(config), tx, peer));
        info!(addr = %local_addr, "peer link listening");
        Ok(Listener {
            local_addr,
            results,
            task,
        })
    }

    /// The bound address (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The next incoming connection: an authenticated session, or the error that made
    /// this side refuse one (most often [`Error::Handshake`], for example a peer without
    /// the site key). Errors concern one connection only: keep calling `accept`. While
    /// errors are not taken, later ones are only logged (every session is kept).
    pub async fn accept(&mut self) -> Result<Session> {
        match self.results.recv().await {
            Some(result) => result,
            None => Err(Error::Accept(std::io::Error::other(
                "the listener task ended",
            ))),
        }
    }
}

/// The log limiters of one listener: lines about connections from elsewhere, and about
/// connections from the expected peer's address (an operator must see why the peer is
/// refused, and they never drown in the others).
struct Logs {
    strangers: LogLimiter,
    peer: LogLimiter,
}

impl Logs {
    fn new() -> Logs {
        Logs {
            strangers: LogLimiter::new(
                "refused or dropped peer link connections",
                LOG_BURST,
                LOG_WINDOW,
            ),
            peer: LogLimiter::new(
                "refused peer link connections from the peer's address",
                LOG_BURST,
                LOG_WINDOW,
            ),
        }
    }

    fn for_source(&mut self, from_peer: bool) -> &mut LogLimiter {
        if from_peer {
            &mut self.peer
        } else {
            &mut self.strangers
        }
    }

    fn flush_at(&self) -> Option<tokio::time::Instant> {
        match (self.strangers.flush_at(), self.peer.flush_at()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn flush(&mut self) {
        self.strangers.flush();
        self.peer.flush();
    }
}

/// What a handshake task reports to the accept loop.
struct Finished {
    peer: SocketAddr,
    from_peer: bool,
    result: Result<Session>,
}

async fn accept_loop(
    tcp: TcpListener,
    config: Arc<Config>,
    tx: mpsc::Sender<Result<Session>>,
    expected: Option<IpAddr>,
) {
    let replay = Arc::new(Mutex::new(ReplayCache::default()));
    let limits = Limits {
        total: MAX_PENDING_HANDSHAKES,
        per_source: MAX_PENDING_PER_SOURCE,
    };
    let admission = Arc::new(Mutex::new(Admission::new(limits, expected)));
    let mut handshakes: JoinSet<Finished> = JoinSet::new();
    // The running handshakes: their abort handles by ticket, their tickets by task id.
    let mut aborts: HashMap<Ticket, AbortHandle> = HashMap::new();
    let mut tickets: HashMap<tokio::task::Id, Ticket> = HashMap::new();
    let mut ready: VecDeque<Result<Session>> = VecDeque::new();
    let mut logs = Logs::new();
    loop {
        let flush_at = logs.flush_at();
        tokio::select! {
            Some(joined) = handshakes.join_next_with_id(), if !handshakes.is_empty() => {
                let id = match &joined {
                    Ok((id, _)) => *id,
                    Err(e) => e.id(),
                };
                let Some(ticket) = tickets.remove(&id) else { continue };
                aborts.remove(&ticket);
                lock(&admission).finish(ticket);
                // An evicted handshake was aborted and needs nothing more.
                let Ok((_, finished)) = joined else { continue };
                match finished.result {
                    Ok(session) => ready.push_back(Ok(session)),
                    Err(e) => {
                        if logs.for_source(finished.from_peer).allow() {
                            warn!(peer = %finished.peer, reason = %chain(&e), "refused a peer link connection");
                        }
                        if ready.len() < ACCEPT_QUEUE {
                            ready.push_back(Err(e));
                        }
                    }
                }
            }
            permit = tx.reserve(), if !ready.is_empty() => {
                let Ok(permit) = permit else { return };
                if let Some(result) = ready.pop_front() {
                    permit.send(result);
                }
            }
            accepted = tcp.accept() => match accepted {
                Ok((stream, peer)) => {
                    let admitted = lock(&admission).admit(peer.ip());
                    if let Some((old, from)) = admitted.evicted {
                        if let Some(handle) = aborts.remove(&old) {
                            handle.abort();
                        }
                        if logs.for_source(admitted.from_peer).allow() {
                            warn!(%peer, evicted_from = %from,
                                  "too many pending peer link handshakes: closed the oldest pending one from {from} to admit {peer}");
                        }
                    }
                    let (config, replay, admission_ref) =
                        (Arc::clone(&config), Arc::clone(&replay), Arc::clone(&admission));
                    let ticket = admitted.ticket;
                    let from_peer = admitted.from_peer;
                    let handle = handshakes.spawn(async move {
                        let promote = || {
                            lock(&admission_ref).promote(ticket);
                        };
                        let result = accept_one(stream, peer, &config, &replay, promote).await;
                        Finished { peer, from_peer, result }
                    });
                    tickets.insert(handle.id(), ticket);
                    aborts.insert(ticket, handle);
                }
                Err(e) => {
                    if logs.strangers.allow() {
                        warn!(error = %e, "accepting a peer link connection failed");
                    }
                    if ready.len() < ACCEPT_QUEUE {
                        ready.push_back(Err(Error::Accept(e)));
                    }
                    // Errors such as running out of file descriptors persist for a while.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = sleep_until_some(flush_at) => logs.flush(),
        }
    }
}

fn lock(admission: &Mutex<Admission>) -> std::sync::MutexGuard<'_, Admission> {
    admission.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn accept_one(
    mut stream: TcpStream,
    peer: SocketAddr,
    config: &Config,
    replay: &Mutex<ReplayCache>,
    authenticated: impl FnOnce(),
) -> Result<Session> {
    let _ = stream.set_nodelay(true);
    let limit = config.handshake_timeout;
    let first_within = FIRST_MESSAGE_TIMEOUT.min(limit);
    let handshake = respond(&mut stream, config, replay, first_within, authenticated);
    let result = match tokio::time::timeout(limit, handshake).await {
        Ok(result) => result,
        Err(_) => Err(HandshakeError::Timeout(limit)),
    };
    let established = result.map_err(|source| Error::Handshake { peer, source })?;
    let local = stream.local_addr().map_err(Error::Accept)?;
    info!(%peer, node = established.peer.node_id.get(), "peer link session accepted");
    Ok(Session::start(
        stream,
        established,
        config,
        peer,
        local,
        false,
    ))
}

/// Connects to the peer's listener at `peer` and runs the handshake (both bounded by the
/// handshake timeout). The local address is chosen by the routing table; see
/// [`dial_from`] to send from the node address.
pub async fn dial(peer: SocketAddr, config: &Config) -> Result<Session> {
    dial_inner(None, peer, config).await
}

/// Like [`dial`], but the connection leaves from `source` (this node's node address), so
/// the peer sees it come from there even when this node also holds the shared address.
pub async fn dial_from(source: IpAddr, peer: SocketAddr, config: &Config) -> Result<Session> {
    dial_inner(Some(source), peer, config).await
}

async fn dial_inner(source: Option<IpAddr>, peer: SocketAddr, config: &Config) -> Result<Session> {
    let limit = config.handshake_timeout;
    let attempt = async {
        let mut stream = connect(source, peer)
            .await
            .map_err(|source| Error::Connect { addr: peer, source })?;
        let _ = stream.set_nodelay(true);
        let established = initiate(&mut stream, config)
            .await
            .map_err(|source| Error::Handshake { peer, source })?;
        Ok((stream, established))
    };
    let result = match tokio::time::timeout(limit, attempt).await {
        Ok(result) => result,
        Err(_) => Err(Error::Handshake {
            peer,
            source: HandshakeError::Timeout(limit),
        }),
    };
    match result {
        Ok((stream, established)) => {
            let local = stream
                .local_addr()
                .map_err(|source| Error::Connect { addr: peer, source })?;
            info!(%peer, node = established.peer.node_id.get(), "peer link session established");
            Ok(Session::start(
                stream,
                established,
                config,
                peer,
                local,
                true,
            ))
        }
        Err(e @ Error::Connect { .. }) => {
            debug!(%peer, reason = %chain(&e), "cannot reach the peer");
            Err(e)
        }
        Err(e) => {
            warn!(%peer, reason = %chain(&e), "peer link handshake failed");
            Err(e)
        }
    }
}

async fn connect(source: Option<IpAddr>, peer: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if peer.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(peer).await
}
