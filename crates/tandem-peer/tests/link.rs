//! The supervised link on 127.0.0.1: peer up, peer lost when heartbeats stop, redial with
//! capped exponential backoff, and the listening side taking the newest connection.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tandem_core::NodeId;
use tandem_peer::{
    Backoff, CloseReason, Config, Error, Incoming, Link, LinkConfig, LinkEvent, LinkRole, Session,
    SiteKey, dial,
};

/// Heartbeats every 50 ms, peer lost after 4 misses.
fn live_config(key: &SiteKey, node: NodeId) -> Config {
    config(key, node).with_missed_heartbeats(4)
}

fn backoff() -> Backoff {
    Backoff::new(Duration::from_millis(20), Duration::from_millis(200))
}

async fn next(link: &mut Link) -> LinkEvent {
    within("waiting for a link event", link.next_event())
        .await
        .expect("the link task ended")
}

async fn until_up(link: &mut Link) -> Session {
    loop {
        if let LinkEvent::PeerUp(session) = next(link).await {
            return session;
        }
    }
}

async fn until_lost(link: &mut Link) -> CloseReason {
    loop {
        if let LinkEvent::PeerLost(reason) = next(link).await {
            return reason;
        }
    }
}

/// The next `count` dial failures as (consecutive failures, backoff).
async fn dial_failures(link: &mut Link, count: usize) -> Vec<(u32, Duration)> {
    let mut seen = Vec::new();
    while seen.len() < count {
        match next(link).await {
            LinkEvent::DialFailed {
                failures, retry_in, ..
            } => seen.push((failures, retry_in)),
            other => panic!("expected dial failures, got {other:?}"),
        }
    }
    seen
}

async fn assert_talks(a: &Session, b: &Session) {
    a.send("ping").await.unwrap();
    match within("receiving ping", b.recv()).await.unwrap() {
        Incoming::Message(m) => assert_eq!(m, b"ping"),
        other => panic!("unexpected {other:?}"),
    }
    b.send("pong").await.unwrap();
    match within("receiving pong", a.recv()).await.unwrap() {
        Incoming::Message(m) => assert_eq!(m, b"pong"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn peer_lost_when_heartbeats_stop_and_up_again_when_they_return() {
    let key = key(3);
    let mut node2 = Link::start(LinkConfig::new(
        live_config(&key, NodeId::Two),
        any_port(),
        any_port(),
        NodeId::One,
    ))
    .await
    .unwrap();
    assert_eq!(node2.role(), LinkRole::Listen);
    let proxy = Proxy::start(node2.listen_addr().unwrap()).await;
    let node1_cfg = LinkConfig::new(
        live_config(&key, NodeId::One),
        any_port(),
        proxy.addr,
        NodeId::Two,
    )
    .with_backoff(backoff());
    let mut node1 = Link::start(node1_cfg).await.unwrap();
    assert_eq!(node1.role(), LinkRole::Dial);

    let (s1, s2) = (until_up(&mut node1).await, until_up(&mut node2).await);
    assert_eq!((s1.peer_node(), s2.peer_node()), (NodeId::Two, NodeId::One));
    assert_talks(&s1, &s2).await;

    // The wire goes silent (nothing passes, not even a close): both sides count missed
    // heartbeats and report the peer lost.
    proxy.freeze();
    for reason in [until_lost(&mut node1).await, until_lost(&mut node2).await] {
        assert!(
            matches!(reason, CloseReason::PeerLost { missed: 4, .. }),
            "{reason:?}"
        );
    }
    assert!(s1.is_closed() && s2.is_closed());

    // The dialing side keeps trying, backing off between attempts.
    assert_eq!(
        dial_failures(&mut node1, 2).await,
        [
            (1, Duration::from_millis(20)),
            (2, Duration::from_millis(40))
        ]
    );

    proxy.thaw();
    let (s1, s2) = (until_up(&mut node1).await, until_up(&mut node2).await);
    assert_talks(&s1, &s2).await;
}

#[tokio::test]
async fn a_stopped_peer_is_redialed_with_capped_backoff_until_it_returns() {
    let key = key(4);
    let node2_cfg = |addr| {
        LinkConfig::new(
            live_config(&key, NodeId::Two),
            addr,
            any_port(),
            NodeId::One,
        )
    };
    let mut node2 = Link::start(node2_cfg(any_port())).await.unwrap();
    let addr = node2.listen_addr().unwrap();
    let mut node1 = Link::start(
        LinkConfig::new(
            live_config(&key, NodeId::One),
            any_port(),
            addr,
            NodeId::Two,
        )
        .with_backoff(backoff()),
    )
    .await
    .unwrap();
    let (s1, s2) = (until_up(&mut node1).await, until_up(&mut node2).await);
    assert_talks(&s1, &s2).await;

    // Node 2 stops: its link and session go away.
    drop(s2);
    drop(node2);
    let reason = until_lost(&mut node1).await;
    assert!(
        matches!(
            reason,
            CloseReason::PeerClosed(_) | CloseReason::ConnectionEnded
        ),
        "{reason:?}"
    );
    let ms = Duration::from_millis;
    assert_eq!(
        dial_failures(&mut node1, 5).await,
        [
            (1, ms(20)),
            (2, ms(40)),
            (3, ms(80)),
            (4, ms(160)),
            (5, ms(200))
        ]
    );

    // Node 2 comes back on the same address.
    let mut node2 = loop {
        match Link::start(node2_cfg(addr)).await {
            Ok(link) => break link,
            // The old socket may take a moment to go away.
            Err(Error::Bind { .. }) => tokio::task::yield_now().await,
            Err(e) => panic!("restarting node 2: {e}"),
        }
    };
    let (s1, s2) = (until_up(&mut node1).await, until_up(&mut node2).await);
    assert_talks(&s1, &s2).await;
}

#[tokio::test]
async fn the_listening_side_takes_the_newest_connection_and_only_from_its_peer() {
    let key = key(5);
    let mut node2 = Link::start(LinkConfig::new(
        config(&key, NodeId::Two),
        any_port(),
        any_port(),
        NodeId::One,
    ))
    .await
    .unwrap();
    let addr = node2.listen_addr().unwrap();

    let first = dial(addr, &config(&key, NodeId::One)).await.unwrap();
    let up = until_up(&mut node2).await;
    assert_talks(&first, &up).await;

    // A node that is not the peer (a second node 2) holds the key but is still turned
    // away. (A node id other than 1 or 2 does not get through the handshake at all.)
    let stranger = dial(addr, &config(&key, NodeId::Two)).await.unwrap();
    let reason = within("the stranger being closed", stranger.closed()).await;
    assert_eq!(reason, CloseReason::PeerClosed("unexpected node id".into()));

    // A second connection from node 1 (the first one half-open, as after a cable pull)
    // replaces the first.
    let second = dial(addr, &config(&key, NodeId::One)).await.unwrap();
    match next(&mut node2).await {
        LinkEvent::PeerLost(CloseReason::Local(why)) => assert!(why.contains("replaced"), "{why}"),
        other => panic!("expected the old session to be replaced, got {other:?}"),
    }
    let up = until_up(&mut node2).await;
    assert_talks(&second, &up).await;
    within("the first session closing", first.closed()).await;
}

#[tokio::test(start_paused = true)]
async fn redials_back_off_exponentially_up_to_the_cap() {
    // A port with nothing listening.
    let closed: SocketAddr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let cfg = LinkConfig::new(
        config(&key(6), NodeId::One),
        any_port(),
        closed,
        NodeId::Two,
    )
    .with_backoff(Backoff::new(
        Duration::from_millis(100),
        Duration::from_secs(1),
    ));
    let mut link = Link::start(cfg).await.unwrap();
    let ms = Duration::from_millis;
    assert_eq!(
        dial_failures(&mut link, 7).await,
        [
            (1, ms(100)),
            (2, ms(200)),
            (3, ms(400)),
            (4, ms(800)),
            (5, ms(1000)),
            (6, ms(1000)),
            (7, ms(1000)),
        ]
    );
}

#[tokio::test]
async fn equal_node_ids_are_a_configuration_error() {
    let key = key(1);
    match Link::start(LinkConfig::new(
        config(&key, NodeId::Two),
        any_port(),
        any_port(),
        NodeId::Two,
    ))
    .await
    {
        Err(Error::Config(text)) => assert!(text.contains("node id 2"), "{text}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}
