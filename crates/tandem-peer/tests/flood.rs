//! Namespace tests (root): the peer port under keyless floods.
//!
//! The lab's client namespace opens hundreds of connections to node2's peer port from
//! many addresses: idle ones, slow ones that dribble a byte at a time, and ones that
//! send garbage or a handshake under the wrong key and come straight back. Meanwhile
//! node1, which holds the site key, must get its session within one heartbeat-loss
//! interval, and node2's log must stay bounded. All traffic stays inside the lab's
//! namespaces on RFC 5737 addresses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{LogCapture, PATIENCE, key};
use tandem_core::NodeId;
use tandem_lab::{CLIENT_ADDR, GATEWAY_ADDR, Host, LAB_IFACE, Lab, NODE1_ADDR, NODE2_ADDR};
use tandem_peer::{Config, Incoming, Link, LinkConfig, LinkEvent, Listener, Session, dial_from};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

/// The peer port inside the lab's namespaces.
const PORT: u16 = tandem_peer::DEFAULT_PORT;

/// Keyless connections the client keeps open (or reopens) at once, per kind.
const PER_KIND: usize = 100;

/// Extra client addresses (192.0.2.101 and up), so the flood comes from many sources.
const EXTRA_SOURCES: u8 = 16;

/// The site's configuration: the defaults (heartbeat every second, lost after three).
fn site_config(node: NodeId) -> Config {
    Config::new(key(7), node)
}

/// The time a lost peer takes to be noticed: the bound for getting the link up.
fn heartbeat_loss_interval(config: &Config) -> Duration {
    config.heartbeat_interval() * config.missed_heartbeats()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The addresses the flood comes from: the client's two and the extra ones.
fn flood_sources(lab: &Lab) -> Vec<Ipv4Addr> {
    let mut sources = vec![CLIENT_ADDR, GATEWAY_ADDR];
    for n in 0..EXTRA_SOURCES {
        let addr = Ipv4Addr::new(192, 0, 2, 101 + n);
        let cidr = format!("{addr}/24");
        let out = lab
            .exec(
                Host::Client,
                "ip",
                &["addr", "add", &cidr, "dev", LAB_IFACE],
            )
            .unwrap();
        assert!(out.status.success(), "ip addr add {cidr}: {out:?}");
        sources.push(addr);
    }
    sources
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Connects and says nothing.
    Idle,
    /// Sends a plausible length prefix and then one byte every 200 ms.
    Slow,
    /// Sends a frame of random bytes, or a real handshake under another key, and
    /// reconnects as soon as it is turned away.
    Garbage,
}

/// What the flood did.
#[derive(Default)]
struct FloodStats {
    /// Connections made.
    connects: AtomicU64,
    /// Flood tasks that connected at least once.
    started: AtomicUsize,
}

/// A running flood in the client namespace; stops when dropped.
struct Flood {
    stop: watch::Sender<bool>,
    stats: Arc<FloodStats>,
    thread: Option<std::thread::JoinHandle<tandem_lab::Result<()>>>,
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Flood {
    /// Starts `PER_KIND` connections of each kind against `target` and waits until every
    /// one has connected at least once and the flood has run a while.
    fn start(lab: &Lab, target: SocketAddr) -> Flood {
        let sources = flood_sources(lab);
        let (stop, stopped) = watch::channel(false);
        let stats = Arc::new(FloodStats::default());
        let task_stats = Arc::clone(&stats);
        let thread = lab
            .spawn_in(Host::Client, move || {
                runtime().block_on(async move {
                    let mut tasks = tokio::task::JoinSet::new();
                    let kinds = [Kind::Idle, Kind::Slow, Kind::Garbage];
                    for i in 0..PER_KIND * kinds.len() {
                        let kind = kinds[i % kinds.len()];
                        let source = sources[i % sources.len()];
                        tasks.spawn(flooder(
                            kind,
                            i,
                            source,
                            target,
                            stopped.clone(),
                            Arc::clone(&task_stats),
                        ));
                    }
                    while tasks.join_next().await.is_some() {}
                })
            })
            .unwrap();
        let flood = Flood {
            stop,
            stats,
            thread: Some(thread),
        };
        let since = Instant::now();
        while flood.stats.started.load(Ordering::Relaxed) < PER_KIND * 3 {
            assert!(since.elapsed() < PATIENCE, "the flood did not get going");
            std::thread::sleep(Duration::from_millis(50));
        }
        // Let the pending handshakes fill up and the churn settle in.
        std::thread::sleep(Duration::from_millis(1500));
        flood
    }

    fn connects(&self) -> u64 {
        self.stats.connects.load(Ordering::Relaxed)
    }
}

async fn connect_from(source: Ipv4Addr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    socket.connect(target).await
}

/// A small deterministic generator for garbage bytes.
fn noise(seed: &mut u64, buf: &mut [u8]) {
    for b in buf {
        *seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        *b = (*seed >> 33) as u8;
    }
}

async fn flooder(
    kind: Kind,
    index: usize,
    source: Ipv4Addr,
    target: SocketAddr,
    mut stop: watch::Receiver<bool>,
    stats: Arc<FloodStats>,
) {
    let mut seed = index as u64 + 1;
    let wrong_key = Config::new(key(9), NodeId::One).with_handshake_timeout(Duration::from_secs(2));
    let mut first = true;
    loop {
        if *stop.borrow() {
            return;
        }
        let round = async {
            if matches!(kind, Kind::Garbage) && seed.is_multiple_of(2) {
                // A real handshake under another key.
                stats.connects.fetch_add(1, Ordering::Relaxed);
                if first {
                    stats.started.fetch_add(1, Ordering::Relaxed);
                    first = false;
                }
                let _ = dial_from(IpAddr::V4(source), target, &wrong_key).await;
                return;
            }
            let Ok(mut stream) = connect_from(source, target).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return;
            };
            stats.connects.fetch_add(1, Ordering::Relaxed);
            if first {
                stats.started.fetch_add(1, Ordering::Relaxed);
                first = false;
            }
            let mut sink = [0u8; 256];
            match kind {
                Kind::Idle => {
                    // Until the server closes it.
                    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                }
                Kind::Slow => {
                    // A length prefix announcing a full-size frame, then a trickle.
                    let mut bytes = vec![0, 0, 0xff, 0xff];
                    bytes.resize(4 + 4096, 0);
                    noise(&mut seed, &mut bytes[4..]);
                    for b in bytes {
                        if stream.write_all(&[b]).await.is_err() {
                            return;
                        }
                        tokio::select! {
                            read = stream.read(&mut sink) => if matches!(read, Ok(0) | Err(_)) { return },
                            () = tokio::time::sleep(Duration::from_millis(200)) => {}
                        }
                    }
                }
                Kind::Garbage => {
                    // A frame of the size of a first handshake message, random inside.
                    let mut frame = vec![0, 0, 0, 96];
                    frame.resize(4 + 96, 0);
                    noise(&mut seed, &mut frame[4..]);
                    let _ = stream.write_all(&frame).await;
                    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                }
            }
        };
        tokio::select! {
            () = round => {}
            _ = stop.changed() => return,
        }
        seed = seed.wrapping_add(1);
        if matches!(kind, Kind::Garbage) {
            // Straight back, with a breath so the flood does not burn both cores.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// How one attempt of a link to come up went.
#[derive(Debug)]
struct Arrival {
    /// From `Link::start` to `PeerUp`, or `None` if it did not come up in time.
    elapsed: Option<Duration>,
    /// The dial attempts that failed before.
    failed_dials: Vec<String>,
}

/// Waits (at most `limit`) for the link's next `PeerUp`, noting failed dials.
async fn until_up(link: &mut Link, limit: Duration) -> (Option<Session>, Vec<String>) {
    let mut failed = Vec::new();
    let wait = async {
        loop {
            match link.next_event().await {
                Some(LinkEvent::PeerUp(session)) => return Some(session),
                Some(LinkEvent::DialFailed { error, .. }) => {
                    failed.push(format!("{error}: {:?}", std::error::Error::source(&error)));
                }
                Some(_) => {}
                None => return None,
            }
        }
    };
    let session = tokio::time::timeout(limit, wait).await.ok().flatten();
    (session, failed)
}

async fn ping(session: &Session, text: &str) {
    session.send(text.to_owned()).await.unwrap();
    match tokio::time::timeout(PATIENCE, session.recv()).await {
        Ok(Ok(Incoming::Message(m))) => assert_eq!(m, text.to_ascii_uppercase().as_bytes()),
        other => panic!("no answer to {text}: {other:?}"),
    }
}

/// Answers every message in upper case until the session ends.
async fn echo(session: Session) {
    while let Ok(Incoming::Message(m)) = session.recv().await {
        if session.send(m.to_ascii_uppercase()).await.is_err() {
            return;
        }
    }
}

/// Log lines, and the lines among them about refused or dropped connections.
fn count_lines(log: &str) -> (usize, usize) {
    let total = log.lines().count();
    let refusals = log
        .lines()
        .filter(|l| l.contains("refused") || l.contains("dropp") || l.contains("closed the oldest"))
        .count();
    (total, refusals)
}

/// The most log lines node2 may write during a flood of a few seconds: a burst per
/// rate-limit window and the summaries, far below one line per connection.
const LOG_LINES_BOUND: usize = 100;

/// How many times node1 brings its link up during the flood.
const ROUNDS: usize = 3;

#[test]
fn the_keyed_peer_gets_its_link_through_a_keyless_flood() {
    common::wanting_global_subscriber();
    let lab = Lab::for_test();
    let node2_addr = SocketAddr::new(IpAddr::V4(NODE2_ADDR), PORT);
    let node1_addr = SocketAddr::new(IpAddr::V4(NODE1_ADDR), PORT);
    let bound = heartbeat_loss_interval(&site_config(NodeId::One));

    // node2: the listening side of the link, as the agent runs it.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop2, stopped2) = tokio::sync::oneshot::channel::<()>();
    let node2 = lab
        .spawn_in(Host::Node2, move || {
            let capture = LogCapture::default();
            let guard = capture.install();
            runtime().block_on(async move {
                let config = LinkConfig::new(
                    site_config(NodeId::Two),
                    node2_addr,
                    node1_addr,
                    NodeId::One,
                );
                let mut link = Link::start(config).await.unwrap();
                ready_tx.send(()).unwrap();
                let serve = async {
                    while let Some(event) = link.next_event().await {
                        if let LinkEvent::PeerUp(session) = event {
                            tokio::spawn(echo(session));
                        }
                    }
                };
                tokio::select! {
                    () = serve => {}
                    _ = stopped2 => {}
                }
                drop(link);
                // Let the aborted tasks wind down (and report what they suppressed).
                tokio::time::sleep(Duration::from_millis(100)).await;
            });
            drop(guard);
            capture.text()
        })
        .unwrap();
    ready_rx.recv_timeout(PATIENCE).unwrap();

    let flood = Flood::start(&lab, node2_addr);
    let before = flood.connects();

    // node1 brings its link up a few times while the flood goes on.
    let arrivals = lab
        .run_in(Host::Node1, move || {
            runtime().block_on(async move {
                let mut arrivals = Vec::new();
                for round in 0..ROUNDS {
                    let config = LinkConfig::new(
                        site_config(NodeId::One),
                        node1_addr,
                        node2_addr,
                        NodeId::Two,
                    );
                    let started = Instant::now();
                    let mut link = Link::start(config).await.unwrap();
                    let (session, failed_dials) = until_up(&mut link, bound * 3).await;
                    let elapsed = session.as_ref().map(|_| started.elapsed());
                    arrivals.push(Arrival {
                        elapsed,
                        failed_dials,
                    });
                    let Some(session) = session else { break };
                    ping(&session, &format!("epoch {round}")).await;
                    // The session stays useful while the flood goes on.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    ping(&session, &format!("epoch {round} again")).await;
                    session.close("next round").await;
                }
                arrivals
            })
        })
        .unwrap();
    let during = flood.connects() - before;
    let total = flood.connects();
    drop(flood);
    stop2.send(()).unwrap();
    let log = node2.join().unwrap().unwrap();
    let (lines, refusals) = count_lines(&log);
    eprintln!(
        "link arrivals {arrivals:?} (bound {bound:?}); the flood made {during} connections \
         meanwhile, {total} in all; node2 wrote {lines} log lines ({refusals} about refusals)"
    );
    assert_eq!(arrivals.len(), ROUNDS, "{arrivals:?}");
    for (round, arrival) in arrivals.iter().enumerate() {
        let Some(elapsed) = arrival.elapsed else {
            panic!(
                "round {round}: node1's link did not come up within {:?} under the flood \
                 (failed dials: {:?})",
                bound * 3,
                arrival.failed_dials
            );
        };
        assert!(
            arrival.failed_dials.is_empty(),
            "round {round}: node1 was turned away before its link came up: {:?}",
            arrival.failed_dials
        );
        assert!(
            elapsed <= bound,
            "round {round}: node1's link took {elapsed:?}, more than one heartbeat-loss \
             interval ({bound:?})"
        );
    }
    assert!(
        lines <= LOG_LINES_BOUND,
        "node2 wrote {lines} log lines for {total} keyless connections:\n{log}"
    );
    assert!(
        log.contains("suppressed"),
        "node2's log does not say how many lines it suppressed:\n{log}"
    );
}

#[test]
fn a_keyed_newcomer_gets_through_a_plain_listener_under_a_flood_from_many_sources() {
    common::wanting_global_subscriber();
    let lab = Lab::for_test();
    let node2_addr = SocketAddr::new(IpAddr::V4(NODE2_ADDR), PORT);
    let bound = heartbeat_loss_interval(&site_config(NodeId::One));

    // node2: a listener that does not know its peer's address.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop2, stopped2) = tokio::sync::oneshot::channel::<()>();
    let node2 = lab
        .spawn_in(Host::Node2, move || {
            runtime().block_on(async move {
                let mut listener = Listener::bind(node2_addr, site_config(NodeId::Two))
                    .await
                    .unwrap();
                ready_tx.send(()).unwrap();
                let serve = async {
                    loop {
                        if let Ok(session) = listener.accept().await {
                            tokio::spawn(echo(session));
                        }
                    }
                };
                tokio::select! {
                    () = serve => {}
                    _ = stopped2 => {}
                }
            });
        })
        .unwrap();
    ready_rx.recv_timeout(PATIENCE).unwrap();

    let flood = Flood::start(&lab, node2_addr);
    // One dial at a time, each must get through at its first attempt.
    let results = lab
        .run_in(Host::Node1, move || {
            runtime().block_on(async move {
                let mut results = Vec::new();
                for round in 0..5 {
                    let started = Instant::now();
                    let dialed = dial_from(
                        IpAddr::V4(NODE1_ADDR),
                        node2_addr,
                        &site_config(NodeId::One),
                    )
                    .await;
                    let elapsed = started.elapsed();
                    match dialed {
                        Ok(session) => {
                            ping(&session, &format!("round {round}")).await;
                            results.push(Ok(elapsed));
                        }
                        Err(e) => {
                            results.push(Err(format!("{e}: {:?}", std::error::Error::source(&e))))
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                results
            })
        })
        .unwrap();
    let total = flood.connects();
    drop(flood);
    stop2.send(()).unwrap();
    node2.join().unwrap().unwrap();
    eprintln!("dials under a flood of {total} connections: {results:?}");
    for (round, result) in results.iter().enumerate() {
        match result {
            Ok(elapsed) => assert!(
                *elapsed <= bound,
                "dial {round} took {elapsed:?}, more than one heartbeat-loss interval ({bound:?})"
            ),
            Err(e) => panic!("dial {round} was turned away under the flood: {e}"),
        }
    }
}
