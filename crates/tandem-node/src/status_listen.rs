//! Where the status page listens: on the node address, and on the shared
//! address with `IP_FREEBIND`, so that the listener exists before the node
//! holds the address. Operators browse to the site's name (the shared address),
//! as they do to the Administration Center: the active node answers there, and
//! a standby, which does not hold the address, never sees those connections.
//! Also [`raise_open_file_limit`], so that the page's connection cap fits in the
//! process's open files.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

use crate::NetworkSection;

/// How many connections may wait in a listener's accept queue.
const BACKLOG: i32 = 1024;

/// Why the status page's listeners or file limit could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatusListenError {
    /// A listener could not be made on an address.
    #[error(
        "cannot listen for the status page on {address}: {source}; is the address \
         configured on this machine and the port free? (the port is `--status-port`; 0 turns the page off)"
    )]
    Bind {
        /// The address and port.
        address: SocketAddr,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// The limit on open files could not be read or raised.
    #[error("cannot raise the limit on open files (RLIMIT_NOFILE): {source}")]
    FileLimit {
        /// What the system said.
        #[source]
        source: io::Error,
    },
}

/// Binds the status page's listeners on `port`: one on the node address (which
/// must be configured), and one on the shared address bound with `IP_FREEBIND`
/// (`IPV6_FREEBIND` for IPv6), which succeeds whether or not the node holds the
/// address now and takes connections whenever it does. Serve both with
/// [`StatusServer::serve_all`](crate::StatusServer::serve_all). Must be called
/// inside a tokio runtime.
///
/// ```no_run
/// # async fn run(config: tandem_node::NodeConfig, snapshot: tandem_node::StatusSnapshot) -> Result<(), Box<dyn std::error::Error>> {
/// let (status, receiver) = tokio::sync::watch::channel(snapshot);
/// let listeners = tandem_node::bind_status_listeners(&config.network, tandem_node::DEFAULT_STATUS_PORT)?;
/// let shutdown = async { let _ = tokio::signal::ctrl_c().await; };
/// tokio::spawn(tandem_node::StatusServer::new(receiver).serve_all(listeners, shutdown));
/// # drop(status); Ok(())
/// # }
/// ```
pub fn bind_status_listeners(
    network: &NetworkSection,
    port: u16,
) -> Result<Vec<TcpListener>, StatusListenError> {
    let node = SocketAddr::new(network.node_address.addr(), port);
    let shared = SocketAddr::new(network.shared_address.addr(), port);
    Ok(vec![listen(node, false)?, listen(shared, true)?])
}

/// A listening, non-blocking TCP socket on `address`, with `SO_REUSEADDR` (so a
/// restarted agent binds at once) and, if `freebind`, the freebind option.
fn listen(address: SocketAddr, freebind: bool) -> Result<TcpListener, StatusListenError> {
    let bind_error = |source: io::Error| StatusListenError::Bind { address, source };
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )
    .map_err(bind_error)?;
    socket.set_reuse_address(true).map_err(bind_error)?;
    if freebind {
        match address {
            SocketAddr::V4(_) => socket.set_freebind_v4(true),
            SocketAddr::V6(_) => socket.set_freebind_v6(true),
        }
        .map_err(bind_error)?;
    }
    if address.is_ipv6() {
        socket.set_only_v6(true).map_err(bind_error)?;
    }
    socket.set_nonblocking(true).map_err(bind_error)?;
    socket.bind(&address.into()).map_err(bind_error)?;
    socket.listen(BACKLOG).map_err(bind_error)?;
    TcpListener::from_std(socket.into()).map_err(bind_error)
}

/// Raises the soft limit on open files (`RLIMIT_NOFILE`) to `wanted`, or to the
/// hard limit if that is lower; never lowers it. Returns the soft limit in
/// force afterwards. The status page takes at most half the soft limit in
/// connections, so an agent raises it before serving
/// ([`DEFAULT_MAX_CONNECTIONS`](crate::DEFAULT_MAX_CONNECTIONS) connections need
/// twice as many files).
pub fn raise_open_file_limit(wanted: u64) -> Result<u64, StatusListenError> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let file_limit = |e: nix::Error| StatusListenError::FileLimit {
        source: io::Error::from(e),
    };
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(file_limit)?;
    let target = wanted.min(hard);
    if target <= soft {
        return Ok(soft);
    }
    setrlimit(Resource::RLIMIT_NOFILE, target, hard).map_err(file_limit)?;
    Ok(target)
}
