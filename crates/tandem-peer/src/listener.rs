//! Making sessions: [`Listener`] accepts them, [`dial`] and [`dial_from`] initiate them.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::error::{Error, HandshakeError, Result, chain};
use crate::handshake::{ReplayCache, initiate, respond};
use crate::session::Session;

/// Handshakes that may run at once on one listener; connections beyond are dropped.
const MAX_PENDING_HANDSHAKES: usize = 16;
/// Finished handshakes waiting for [`Listener::accept`].
const ACCEPT_QUEUE: usize = 4;

/// Accepts authenticated sessions on a node address. Handshakes run in the background
/// (several at once, each bounded by the handshake timeout), so a silent or hostile
/// connection cannot hold up the peer. Dropping the listener stops accepting; sessions
/// already returned live on.
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
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        let local_addr = tcp
            .local_addr()
            .map_err(|source| Error::Bind { addr, source })?;
        let (tx, results) = mpsc::channel(ACCEPT_QUEUE);
        let task = tokio::spawn(accept_loop(tcp, Arc::new(config), tx));
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
    /// the site key). Errors concern one connection only: keep calling `accept`.
    pub async fn accept(&mut self) -> Result<Session> {
        match self.results.recv().await {
            Some(result) => result,
            None => Err(Error::Accept(std::io::Error::other(
                "the listener task ended",
            ))),
        }
    }
}

async fn accept_loop(tcp: TcpListener, config: Arc<Config>, tx: mpsc::Sender<Result<Session>>) {
    let replay = Arc::new(Mutex::new(ReplayCache::default()));
    let permits = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            accepted = tcp.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                        warn!(%peer, "too many peer link handshakes in progress; dropping a connection");
                        continue;
                    };
                    let (config, replay, tx) = (Arc::clone(&config), Arc::clone(&replay), tx.clone());
                    handshakes.spawn(async move {
                        let result = accept_one(stream, peer, &config, &replay).await;
                        drop(permit);
                        let _ = tx.send(result).await;
                    });
                }
                Err(e) => {
                    warn!(error = %e, "accepting a peer link connection failed");
                    if tx.send(Err(Error::Accept(e))).await.is_err() {
                        return;
                    }
                    // Errors such as running out of file descriptors persist for a while.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

async fn accept_one(
    mut stream: TcpStream,
    peer: SocketAddr,
    config: &Config,
    replay: &Mutex<ReplayCache>,
) -> Result<Session> {
    let _ = stream.set_nodelay(true);
    let limit = config.handshake_timeout;
    let result = match tokio::time::timeout(limit, respond(&mut stream, config, replay)).await {
        Ok(result) => result,
        Err(_) => Err(HandshakeError::Timeout(limit)),
    };
    let established = match result {
        Ok(established) => established,
        Err(source) => {
            warn!(%peer, reason = %chain(&source), "refused a peer link connection");
            return Err(Error::Handshake { peer, source });
        }
    };
    let local = stream.local_addr().map_err(Error::Accept)?;
    info!(%peer, node = established.peer.node_id, "peer link session accepted");
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
            info!(%peer, node = established.peer.node_id, "peer link session established");
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
