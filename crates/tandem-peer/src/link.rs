//! The supervised link between the two nodes: one session at a time, re-established
//! whenever it is lost, with peer-up and peer-lost events.
//!
//! Who dials: the node with the lower node id dials, the other listens. Both know each
//! other's node address, so exactly one TCP connection exists and there is no duplicate
//! to resolve. The dialing side redials at once after losing a session that had been up
//! for a while (a short-lived one backs off too) and then backs off exponentially
//! (capped) while the peer is unreachable. The listening side takes the
//! newest authenticated connection from the peer node: if a new one arrives while a
//! session is up, the old one was half-open (the dialer already saw it fail) and is
//! closed.
//!
//! Both sides also bind UDP on their address and the link's port and hand every new
//! session to a liveness thread ([`crate::liveness`]), which sends and judges
//! heartbeat datagrams beside the TCP stream. If the UDP port cannot be bound the
//! link says so once and judges liveness by the TCP stream alone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tandem_core::NodeId;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::Config;
use crate::error::{CloseReason, Error, Result, chain};
use crate::listener::{Listener, dial, dial_from};
use crate::liveness::{Liveness, LivenessSettings, Watch};
use crate::session::{Session, Shared};

/// Link events waiting for [`Link::next_event`].
const EVENT_QUEUE: usize = 16;

/// Exponential backoff between dial attempts: `initial`, doubling, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Default for Backoff {
    /// 100 ms doubling up to 10 s.
    fn default() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(10))
    }
}

impl Backoff {
    /// A backoff from `initial` (at least 1 ms) doubling up to `max` (at least `initial`).
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        let initial = initial.max(Duration::from_millis(1));
        Backoff {
            initial,
            max: max.max(initial),
        }
    }

    /// The first delay.
    pub fn initial(&self) -> Duration {
        self.initial
    }

    /// The cap.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The delay after `failures` consecutive failed attempts (1 gives `initial`).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(63);
        self.initial
            .checked_mul(1u32.checked_shl(doublings).unwrap_or(u32::MAX))
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// Which side of the link this node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRole {
    /// Lower node id: connects to the peer.
    Dial,
    /// Higher node id: accepts the peer's connection.
    Listen,
}

/// Settings of a [`Link`].
#[derive(Debug, Clone)]
pub struct LinkConfig {
    config: Config,
    local_addr: SocketAddr,
    peer_addr: SocketAddr,
    peer_node: NodeId,
    backoff: Backoff,
    datagrams: bool,
}

impl LinkConfig {
    /// `local_addr` is this node's node address and port (the listening side binds it;
    /// the dialing side connects from its IP unless it is unspecified), `peer_addr` the
    /// peer's, `peer_node` the peer's node id (it must differ from this node's).
    pub fn new(
        config: Config,
        local_addr: SocketAddr,
        peer_addr: SocketAddr,
        peer_node: NodeId,
    ) -> LinkConfig {
        LinkConfig {
            config,
            local_addr,
            peer_addr,
            peer_node,
            backoff: Backoff::default(),
            datagrams: true,
        }
    }

    /// Whether the link also sends and judges heartbeat datagrams on UDP, on the
    /// same address and port as its TCP side, from a thread of its own (on by
    /// default; see the crate docs). Off, liveness rests on the TCP stream alone.
    pub fn with_datagram_liveness(mut self, on: bool) -> LinkConfig {
        self.datagrams = on;
        self
    }

    /// Sets the redial backoff.
    pub fn with_backoff(mut self, backoff: Backoff) -> LinkConfig {
        self.backoff = backoff;
        self
    }

    /// The role this configuration gives the node.
    pub fn role(&self) -> Result<LinkRole> {
        let (me, peer) = (self.config.node_id, self.peer_node);
        match me.cmp(&peer) {
            std::cmp::Ordering::Less => Ok(LinkRole::Dial),
            std::cmp::Ordering::Greater => Ok(LinkRole::Listen),
            std::cmp::Ordering::Equal => Err(Error::Config(format!(
                "this node and its peer both have node id {me}; give them different ids"
            ))),
        }
    }
}

/// What happened on the link.
#[derive(Debug)]
#[non_exhaustive]
pub enum LinkEvent {
    /// A session with the peer is up. Keep the session (it closes when dropped) and use
    /// it until [`LinkEvent::PeerLost`].
    PeerUp(Session),
    /// The session ended: heartbeats missed, the peer closed it, the connection broke, or
    /// a newer connection from the peer replaced it.
    PeerLost(CloseReason),
    /// A dial attempt failed (dialing side only); the next follows after `retry_in`.
    DialFailed {
        /// Why it failed.
        error: Error,
        /// Consecutive failures so far.
        failures: u32,
        /// The backoff before the next attempt.
        retry_in: Duration,
    },
}

/// The supervised node-to-node link. Poll [`Link::next_event`] continuously: the link
/// waits while its events are not taken. Dropping the link stops it; a session already
/// handed out lives on until it is dropped.
#[derive(Debug)]
pub struct Link {
    role: LinkRole,
    listen_addr: Option<SocketAddr>,
    datagram_addr: Option<SocketAddr>,
    events: mpsc::Receiver<LinkEvent>,
    task: JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Link {
    /// Starts the link: binds on the listening side (so a bad address fails here),
    /// starts dialing on the other.
    pub async fn start(config: LinkConfig) -> Result<Link> {
        let role = config.role()?;
        let (tx, events) = mpsc::channel(EVENT_QUEUE);
        let (task, listen_addr, liveness) = match role {
            LinkRole::Dial => {
                let liveness = start_liveness(&config, config.local_addr);
                (
                    tokio::spawn(dial_loop(config, tx, liveness.clone())),
                    None,
                    liveness,
                )
            }
            LinkRole::Listen => {
                let listener = Listener::bind_for_peer(
                    config.local_addr,
                    config.config.clone(),
                    config.peer_addr.ip(),
                )
                .await?;
                let addr = listener.local_addr();
                let liveness = start_liveness(&config, addr);
                let task = tokio::spawn(listen_loop(listener, config, tx, liveness.clone()));
                (task, Some(addr), liveness)
            }
        };
        Ok(Link {
            role,
            listen_addr,
            datagram_addr: liveness.as_ref().map(|l| l.local_addr()),
            events,
            task,
        })
    }

    /// The next event; `None` only if the link's task ended.
    pub async fn next_event(&mut self) -> Option<LinkEvent> {
        self.events.recv().await
    }

    /// This node's side of the link.
    pub fn role(&self) -> LinkRole {
        self.role
    }

    /// The bound listening address on the listening side.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen_addr
    }

    /// The UDP address the heartbeat datagrams are sent from and read on; `None`
    /// when the link judges liveness by its TCP stream alone.
    pub fn datagram_addr(&self) -> Option<SocketAddr> {
        self.datagram_addr
    }
}

/// Binds the link's UDP side on `local` (the TCP side's address and port) and starts
/// its liveness thread; `None` (said once) if that cannot be done.
fn start_liveness(config: &LinkConfig, local: SocketAddr) -> Option<Arc<Liveness>> {
    if !config.datagrams {
        return None;
    }
    let settings = LivenessSettings {
        node: config.config.node_id.get(),
        interval: config.config.heartbeat_interval,
        missed: config.config.missed_heartbeats,
        priority: config.config.liveness_priority,
    };
    match Liveness::start(local, config.peer_addr, settings) {
        Ok(liveness) => Some(Arc::new(liveness)),
        Err(e) => {
            warn!(%local, error = %e, "cannot bind the heartbeat datagrams' UDP port; the peer link's liveness rests on its TCP stream alone");
            None
        }
    }
}

/// Hands a new session to the liveness thread.
fn watch(liveness: Option<&Arc<Liveness>>, session: &Session) {
    if let Some(liveness) = liveness {
        let shared = session.shared();
        liveness.watch(Watch {
            peer_node: shared.peer_node().get(),
            peer_interval: shared.peer_interval(),
            keys: shared.datagram_keys().clone(),
            shared,
        });
    }
}

async fn dial_loop(
    config: LinkConfig,
    tx: mpsc::Sender<LinkEvent>,
    liveness: Option<Arc<Liveness>>,
) {
    let source = Some(config.local_addr.ip()).filter(|ip| !ip.is_unspecified());
    let mut failures = 0u32;
    // Sessions that end soon after they start (a peer that accepts and then hangs up)
    // must not turn into a tight reconnect loop: they back off too.
    let mut quick_losses = 0u32;
    loop {
        let attempt = match source {
            Some(ip) => dial_from(ip, config.peer_addr, &config.config).await,
            None => dial(config.peer_addr, &config.config).await,
        };
        let attempt = match attempt {
            Ok(session) if session.peer_node() != config.peer_node => {
                let error = Error::UnexpectedNode {
                    peer: session.peer_addr(),
                    expected: config.peer_node,
                    found: session.peer_node(),
                };
                session.close("unexpected node id").await;
                Err(error)
            }
            other => other,
        };
        match attempt {
            Ok(session) => {
                failures = 0;
                let up_since = tokio::time::Instant::now();
                let shared = session.shared();
                watch(liveness.as_ref(), &session);
                info!(peer = %config.peer_addr, node = config.peer_node.get(), "peer up");
                if tx.send(LinkEvent::PeerUp(session)).await.is_err() {
                    return;
                }
                let reason = shared.closed().await;
                warn!(peer = %config.peer_addr, node = config.peer_node.get(), %reason, "peer lost");
                if tx.send(LinkEvent::PeerLost(reason)).await.is_err() {
                    return;
                }
                if up_since.elapsed() < config.backoff.max() {
                    quick_losses = quick_losses.saturating_add(1);
                    tokio::time::sleep(config.backoff.delay(quick_losses)).await;
                } else {
                    quick_losses = 0;
                }
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let retry_in = config.backoff.delay(failures);
                if failures == 1 {
                    warn!(peer = %config.peer_addr, reason = %chain(&error), "cannot reach the peer; retrying with backoff");
                }
                let event = LinkEvent::DialFailed {
                    error,
                    failures,
                    retry_in,
                };
                if tx.send(event).await.is_err() {
                    return;
                }
                tokio::time::sleep(retry_in).await;
            }
        }
    }
}

async fn listen_loop(
    mut listener: Listener,
    config: LinkConfig,
    tx: mpsc::Sender<LinkEvent>,
    liveness: Option<Arc<Liveness>>,
) {
    let mut current: Option<Arc<Shared>> = None;
    loop {
        let watched = current.clone();
        let lost = async move {
            match watched {
                Some(shared) => shared.closed().await,
                None => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            reason = lost => {
                current = None;
                warn!(node = config.peer_node.get(), %reason, "peer lost");
                LinkEvent::PeerLost(reason)
            }
            accepted = listener.accept() => match accepted {
                Ok(session) if session.peer_node() != config.peer_node => {
                    warn!(peer = %session.peer_addr(), expected = config.peer_node.get(),
                          found = session.peer_node().get(), "refused a session from an unexpected node");
                    tokio::spawn(async move { session.close("unexpected node id").await });
                    continue;
                }
                Ok(session) => {
                    if let Some(old) = current.take() {
                        old.close(CloseReason::Local("replaced by a newer connection from the peer".to_owned()));
                        let reason = old.closed().await;
                        if tx.send(LinkEvent::PeerLost(reason)).await.is_err() {
                            return;
                        }
                    }
                    current = Some(session.shared());
                    watch(liveness.as_ref(), &session);
                    info!(peer = %session.peer_addr(), node = config.peer_node.get(), "peer up");
                    LinkEvent::PeerUp(session)
                }
                // Already logged by the listener; the link keeps listening.
                Err(_) => continue,
            },
        };
        if tx.send(event).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::SiteKey;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn backoff_grows_and_is_capped(initial_ms in 1u64..5_000, max_ms in 1u64..100_000, failures in 1u32..200) {
            let b = Backoff::new(Duration::from_millis(initial_ms), Duration::from_millis(max_ms));
            let d = b.delay(failures);
            prop_assert!(d <= b.max());
            prop_assert!(d >= b.initial());
            prop_assert!(b.delay(failures + 1) >= d);
            prop_assert_eq!(b.delay(1), b.initial());
        }
    }

    #[test]
    fn backoff_doubles() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<_> = (1..=6).map(|f| b.delay(f).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn roles_follow_node_ids() {
        let key = SiteKey::from_bytes([1; 32]);
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let cfg = |me, peer| LinkConfig::new(Config::new(key.clone(), me), addr, addr, peer);
        assert_eq!(
            cfg(NodeId::One, NodeId::Two).role().unwrap(),
            LinkRole::Dial
        );
        assert_eq!(
            cfg(NodeId::Two, NodeId::One).role().unwrap(),
            LinkRole::Listen
        );
        let err = cfg(NodeId::Two, NodeId::Two).role().unwrap_err();
        assert!(err.to_string().contains("both have node id 2"), "{err}");
    }
}
