//! Heartbeat datagrams on 127.0.0.1: they carry a link's liveness through a stall
//! of one node's runtime (which the TCP stream alone reports as a lost peer), and a
//! flood of forged datagrams on the link's UDP port does not end a session. (That
//! forgeries never open, and so never keep a dead peer alive, is the unit tests'
//! part, in `src/liveness.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use tandem_core::NodeId;
use tandem_peer::{Config, Incoming, Link, LinkConfig, LinkEvent, Session, SiteKey};
use tokio::sync::mpsc;

/// Heartbeats every 20 ms, lost after 3 missed: the smallest heartbeat.
fn fast(key: &SiteKey, node: NodeId) -> Config {
    Config::new(key.clone(), node)
        .with_heartbeat_interval(Duration::from_millis(20))
        .with_missed_heartbeats(3)
}

async fn until_up(link: &mut Link) -> Session {
    loop {
        match within("waiting for the peer", link.next_event()).await {
            Some(LinkEvent::PeerUp(session)) => return session,
            Some(_) => {}
            None => panic!("the link task ended"),
        }
    }
}

/// Whether `link` reports the peer lost within `wait`.
async fn lost_within(link: &mut Link, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, link.next_event()).await {
            Err(_) => return false,
            Ok(Some(LinkEvent::PeerLost(_))) => return true,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the link task ended"),
        }
    }
}

async fn until_datagrams(session: &Session) {
    within("waiting for the peer's heartbeat datagrams", async {
        while !session.datagram_liveness() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// What the test asks of node 1, which runs on a runtime of its own.
enum Ask {
    /// Block node 1's runtime thread (a blocking call in async code, a slow disk).
    Stall(Duration),
    /// Answer the next message with "pong".
    Pong,
}

/// Starts node 1 (the dialing side) on its own current-thread runtime and thread,
/// dialing `node2`; returns the channel that makes it stall or answer.
fn node1_elsewhere(key: SiteKey, node2: SocketAddr, datagrams: bool) -> mpsc::Sender<Ask> {
    let (tx, mut rx) = mpsc::channel::<Ask>(4);
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let config = LinkConfig::new(fast(&key, NodeId::One), any_port(), node2, NodeId::Two)
                .with_datagram_liveness(datagrams);
            let mut link = Link::start(config).await.unwrap();
            let session = until_up(&mut link).await;
            while let Some(ask) = rx.recv().await {
                match ask {
                    Ask::Stall(d) => std::thread::sleep(d),
                    Ask::Pong => {
                        if let Ok(Incoming::Message(_)) = session.recv().await {
                            session.send("pong").await.unwrap();
                        }
                    }
                }
            }
        });
    });
    tx
}

/// Node 2 in this runtime, node 1 on its own; node 1's runtime stalls for 400 ms (20
/// of its heartbeat intervals). Returns whether node 2 lost the peer.
async fn stall_node1(datagrams: bool) -> bool {
    stall_node1_sending(datagrams, datagrams).await
}

/// As [`stall_node1`], with node 1 sending datagrams or not and node 2 using them
/// or not.
async fn stall_node1_sending(node1_sends: bool, node2_uses: bool) -> bool {
    let key = key(41);
    let mut node2 = Link::start(
        LinkConfig::new(fast(&key, NodeId::Two), any_port(), any_port(), NodeId::One)
            .with_datagram_liveness(node2_uses),
    )
    .await
    .unwrap();
    let node1 = node1_elsewhere(key, node2.listen_addr().unwrap(), node1_sends);
    let session = until_up(&mut node2).await;
    if node1_sends && node2_uses {
        until_datagrams(&session).await;
    } else {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !session.datagram_liveness(),
            "node 2 counts datagrams that node 1 never sent"
        );
    }
    node1
        .send(Ask::Stall(Duration::from_millis(400)))
        .await
        .unwrap();
    let lost = lost_within(&mut node2, Duration::from_millis(1500)).await;
    if !lost {
        // Still one session, and it still carries messages both ways.
        assert!(!session.is_closed());
        node1.send(Ask::Pong).await.unwrap();
        session.send("ping").await.unwrap();
        match within("the pong", session.recv()).await.unwrap() {
            Incoming::Message(m) => assert_eq!(m, b"pong"),
            other => panic!("unexpected {other:?}"),
        }
    }
    lost
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_carry_liveness_through_a_stall_of_the_peers_runtime() {
    assert!(
        !stall_node1(true).await,
        "node 2 lost node 1 while node 1's runtime stalled, though its liveness thread kept sending"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_datagrams_the_same_stall_loses_the_peer() {
    // The contrast that shows the test above can fail: the TCP stream alone goes
    // silent for 20 heartbeat intervals.
    assert!(
        stall_node1(false).await,
        "node 2 did not notice 400 ms of silence"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_sends_no_datagrams_is_judged_by_the_stream() {
    // A peer of an earlier release, or UDP blocked between the nodes: the link
    // comes up and works, and the stream's own rule still finds the silence.
    assert!(
        stall_node1_sending(false, true).await,
        "node 2 did not notice 400 ms of silence from a peer without datagrams"
    );
}

/// Forged heartbeat datagrams: random bytes, and the right length, magic and
/// version with random session, sequence and tag.
fn forgeries() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..100),
        proptest::collection::vec(any::<u8>(), 40..41).prop_map(|rest| {
            let mut d = b"TDHB\x01".to_vec();
            d.extend(rest);
            d.truncate(44);
            d
        }),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_forged_datagrams_does_not_end_a_session() {
    let key = key(42);
    let mut node2 = Link::start(LinkConfig::new(
        fast(&key, NodeId::Two),
        any_port(),
        any_port(),
        NodeId::One,
    ))
    .await
    .unwrap();
    let target = node2.datagram_addr().expect("node 2 bound its UDP port");
    let _node1 = node1_elsewhere(key, node2.listen_addr().unwrap(), true);
    let session = until_up(&mut node2).await;
    until_datagrams(&session).await;

    // 1.5 s of forgeries as fast as one thread sends them, from the peer's own
    // address (127.0.0.1), so that only the tags tell them apart.
    let flood = std::thread::spawn(move || {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut runner = TestRunner::deterministic();
        let strategy = forgeries();
        let started = std::time::Instant::now();
        let mut sent = 0u64;
        while started.elapsed() < Duration::from_millis(1500) {
            let datagram = strategy.new_tree(&mut runner).unwrap().current();
            if socket.send_to(&datagram, target).is_ok() {
                sent += 1;
            }
        }
        sent
    });
    let lost = lost_within(&mut node2, Duration::from_millis(1500)).await;
    let sent = flood.join().unwrap();
    assert!(sent > 1000, "the flood sent only {sent} datagrams");
    assert!(
        !lost,
        "node 2 lost node 1 under a flood of {sent} forged datagrams"
    );
    assert!(!session.is_closed() && session.datagram_liveness());
}
