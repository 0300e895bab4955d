//! Sessions over real sockets on 127.0.0.1: exchanges both ways, large messages and
//! blobs, closing, and everything a peer without the key or a meddler on the wire can try.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use tandem_core::NodeId;
use tandem_peer::{
    CloseReason, Error, HandshakeError, Incoming, Listener, Session, dial, frame::FrameError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn message(session: &Session) -> Vec<u8> {
    match within("receiving a message", session.recv()).await {
        Ok(Incoming::Message(m)) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

async fn closed_with(session: &Session) -> CloseReason {
    match within("waiting for the session to close", session.recv()).await {
        Err(Error::Closed(reason)) => reason,
        other => panic!("expected the session to close, got {other:?}"),
    }
}

#[tokio::test]
async fn messages_flow_both_ways_in_order() {
    let (client, server) = pair().await;
    assert_eq!(client.peer_node(), NodeId::Two);
    assert_eq!(server.peer_node(), NodeId::One);
    assert!(client.is_initiator() && !server.is_initiator());
    assert_eq!(server.peer_addr(), client.local_addr());

    for i in 0..50u32 {
        client.send(format!("to server {i}")).await.unwrap();
        server.send(format!("to client {i}")).await.unwrap();
    }
    for i in 0..50u32 {
        assert_eq!(
            message(&server).await,
            format!("to server {i}").into_bytes()
        );
        assert_eq!(
            message(&client).await,
            format!("to client {i}").into_bytes()
        );
    }
    // An empty message is a message too.
    client.send(Vec::new()).await.unwrap();
    assert_eq!(message(&server).await, b"");
}

#[tokio::test]
async fn a_multi_megabyte_message_and_a_blob_arrive_intact() {
    let (client, server) = pair().await;
    let big: Vec<u8> = (0..2_500_000u64).map(pattern).collect();
    let sender = client.clone();
    let copy = big.clone();
    let sending = tokio::spawn(async move { sender.send(copy).await });
    assert_eq!(message(&server).await, big);
    sending.await.unwrap().unwrap();

    // A blob streamed from a source that never holds it, checked by a sink that never
    // keeps it, the other way round.
    // Debug builds encrypt at a few MB/s, so the blob stays modest here; the release
    // example `blob_transfer` streams 200 MB.
    let len = 3_000_000u64;
    let sender = server.clone();
    let sending = tokio::spawn(async move {
        sender
            .send_blob(PatternSource {
                pos: 0,
                len,
                fail_at: None,
            })
            .await
    });
    let Incoming::Blob(mut blob) = within("receiving a blob", client.recv()).await.unwrap() else {
        panic!("expected a blob");
    };
    let mut sink = PatternSink::default();
    assert_eq!(
        within("copying the blob", blob.copy_to(&mut sink))
            .await
            .unwrap(),
        len
    );
    assert_eq!((sink.pos, sink.mismatches), (len, 0));
    assert!(blob.is_finished());
    assert_eq!(sending.await.unwrap().unwrap(), len);

    // The session carries on after both.
    client.send("after").await.unwrap();
    assert_eq!(message(&server).await, b"after");
}

#[tokio::test]
async fn messages_sent_during_a_blob_follow_it() {
    let (client, server) = pair().await;
    let blob_sender = client.clone();
    let blob = tokio::spawn(async move {
        blob_sender
            .send_blob(PatternSource {
                pos: 0,
                len: 500_000,
                fail_at: None,
            })
            .await
    });
    // Whether this is queued before or after the blob starts, it never lands inside it.
    let msg_sender = client.clone();
    let msg = tokio::spawn(async move { msg_sender.send("note").await });
    let mut seen = Vec::new();
    for _ in 0..2 {
        match within("receiving", server.recv()).await.unwrap() {
            Incoming::Message(m) => seen.push(String::from_utf8(m).unwrap()),
            Incoming::Blob(mut b) => {
                let mut sink = PatternSink::default();
                b.copy_to(&mut sink).await.unwrap();
                assert_eq!((sink.pos, sink.mismatches), (500_000, 0));
                seen.push("blob".to_owned());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    seen.sort();
    assert_eq!(seen, ["blob", "note"]);
    blob.await.unwrap().unwrap();
    msg.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_failing_blob_source_aborts_the_blob_but_not_the_session() {
    let (client, server) = pair().await;
    let sender = client.clone();
    let sending = tokio::spawn(async move {
        sender
            .send_blob(PatternSource {
                pos: 0,
                len: 1_000_000,
                fail_at: Some(300_000),
            })
            .await
    });
    let Incoming::Blob(mut blob) = within("receiving a blob", server.recv()).await.unwrap() else {
        panic!("expected a blob");
    };
    let mut sink = PatternSink::default();
    match within("copying the blob", blob.copy_to(&mut sink)).await {
        Err(Error::BlobAborted(reason)) => assert!(reason.contains("disk read error"), "{reason}"),
        other => panic!("expected an aborted blob, got {other:?}"),
    }
    assert_eq!(sink.mismatches, 0);
    assert!(matches!(sending.await.unwrap(), Err(Error::BlobSource(_))));
    client.send("still here").await.unwrap();
    assert_eq!(message(&server).await, b"still here");
}

#[tokio::test]
async fn messages_past_the_peer_limit_are_refused_locally() {
    let key = key(7);
    let mut listener = Listener::bind(
        any_port(),
        config(&key, NodeId::Two).with_max_message_len(1000),
    )
    .await
    .unwrap();
    let addr = listener.local_addr();
    let node1 = config(&key, NodeId::One);
    let (client, server) = tokio::join!(dial(addr, &node1), listener.accept());
    let (client, server) = (client.unwrap(), server.unwrap());
    assert_eq!(client.peer_max_message_len(), 1000);
    match client.send(vec![0u8; 1001]).await {
        Err(Error::MessageTooLarge {
            len: 1001,
            max: 1000,
        }) => {}
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
    client.send(vec![1u8; 1000]).await.unwrap();
    assert_eq!(message(&server).await, vec![1u8; 1000]);
}

#[tokio::test]
async fn closing_tells_the_peer_why() {
    let (client, server) = pair().await;
    client.send("last words").await.unwrap();
    client.close("maintenance").await;
    assert_eq!(
        client.close_reason(),
        Some(CloseReason::Local("maintenance".into()))
    );
    // What was sent before the close still arrives, then the reason.
    assert_eq!(message(&server).await, b"last words");
    assert_eq!(
        closed_with(&server).await,
        CloseReason::PeerClosed("maintenance".into())
    );
    assert!(matches!(client.send("more").await, Err(Error::Closed(_))));
}

#[tokio::test]
async fn dropping_every_handle_closes_the_session() {
    let (client, server) = pair().await;
    drop(client);
    assert!(matches!(
        closed_with(&server).await,
        CloseReason::PeerClosed(reason) if reason.contains("dropped")
    ));
}

#[tokio::test]
async fn heartbeats_give_a_clock_offset() {
    let (client, server) = pair().await;
    // A handshake and a few heartbeats give samples; both ends share this machine's
    // clock, so the true offset is zero and the estimate lies within half its round trip.
    within("waiting for heartbeats", tokio::time::sleep(HEARTBEAT * 4)).await;
    for session in [&client, &server] {
        let offset = session
            .clock_offset()
            .expect("an estimate after heartbeats");
        let bound = offset.round_trip.as_micros() / 2 + 1;
        assert!(
            u128::from(offset.offset_micros.unsigned_abs()) <= bound,
            "{offset:?}"
        );
    }
}

#[tokio::test]
async fn a_peer_without_the_key_gets_nothing_and_both_sides_say_why() {
    let logs = LogCapture::default();
    let _guard = logs.install();
    let mut listener = Listener::bind(any_port(), config(&key(7), NodeId::Two))
        .await
        .unwrap();
    let addr = listener.local_addr();

    let node1 = config(&key(9), NodeId::One);
    let (intruder, refused) = tokio::join!(dial(addr, &node1), listener.accept());
    match refused {
        Err(Error::Handshake {
            source: HandshakeError::Authentication,
            ..
        }) => {}
        other => panic!("the listener should refuse with an authentication error: {other:?}"),
    }
    match intruder {
        Err(Error::Handshake {
            source: HandshakeError::PeerClosed,
            ..
        }) => {}
        other => panic!("the intruder should get no answer: {other:?}"),
    }
    let text = logs.text();
    assert!(
        text.contains("refused a peer link connection")
            && text.contains("does not hold this site's key"),
        "the listener logs why:\n{text}"
    );
    assert!(
        text.contains("peer link handshake failed") && text.contains("during the handshake"),
        "the dialer logs why:\n{text}"
    );

    // The listener is unharmed, and the first thing its application ever receives is
    // from the rightful peer.
    let node1 = config(&key(7), NodeId::One);
    let (friend, accepted) = tokio::join!(dial(addr, &node1), listener.accept());
    let (friend, accepted) = (friend.unwrap(), accepted.unwrap());
    friend.send("hello").await.unwrap();
    assert_eq!(message(&accepted).await, b"hello");
}

#[tokio::test]
async fn raw_bytes_get_no_reply() {
    let mut listener = Listener::bind(any_port(), config(&key(7), NodeId::Two))
        .await
        .unwrap();
    let addr = listener.local_addr();

    // Something that is not the protocol at all: the length prefix is absurd.
    let mut raw = TcpStream::connect(addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    match within("accepting", listener.accept()).await {
        Err(Error::Handshake {
            source: HandshakeError::Frame(FrameError::Oversized { .. }),
            ..
        }) => {}
        other => panic!("expected an oversized frame refusal, got {other:?}"),
    }
    let mut reply = Vec::new();
    let _ = raw.read_to_end(&mut reply).await;
    assert!(reply.is_empty(), "the listener answered {reply:?}");

    // A well-framed first message of random bytes fails authentication.
    let mut raw = TcpStream::connect(addr).await.unwrap();
    let junk: Vec<u8> = (0..86u64).map(pattern).collect();
    raw.write_all(&tandem_peer::frame::encode(&junk).unwrap())
        .await
        .unwrap();
    match within("accepting", listener.accept()).await {
        Err(Error::Handshake {
            source: HandshakeError::Authentication,
            ..
        }) => {}
        other => panic!("expected an authentication refusal, got {other:?}"),
    }
    let mut reply = Vec::new();
    let _ = raw.read_to_end(&mut reply).await;
    assert!(reply.is_empty(), "the listener answered {reply:?}");
}

/// A client, a proxy that can meddle with its frames, and the server behind it.
async fn proxied() -> (Session, Session, Proxy) {
    let key = key(7);
    let mut listener = Listener::bind(any_port(), config(&key, NodeId::Two))
        .await
        .unwrap();
    let proxy = Proxy::start(listener.local_addr()).await;
    let node1 = config(&key, NodeId::One);
    let (client, server) = within("connecting through the proxy", async {
        tokio::join!(dial(proxy.addr, &node1), listener.accept())
    })
    .await;
    (client.unwrap(), server.unwrap(), proxy)
}

#[tokio::test]
async fn a_tampered_frame_closes_the_session_and_is_never_delivered() {
    let (client, server, proxy) = proxied().await;
    let secret = b"set epoch 9".to_vec();
    proxy.arm(Rule::Flip {
        len: message_frame_len(secret.len()),
    });
    client.send(secret).await.unwrap();
    assert_eq!(closed_with(&server).await, CloseReason::Authentication);
    assert!(proxy.fired());
    // The client learns the session is gone too (the server hung up).
    let reason = within("the client noticing", client.closed()).await;
    assert_ne!(reason, CloseReason::Authentication, "{reason:?}");
}

#[tokio::test]
async fn a_replayed_frame_closes_the_session_after_one_delivery() {
    let (client, server, proxy) = proxied().await;
    let order = b"promote".to_vec();
    proxy.arm(Rule::Duplicate {
        len: message_frame_len(order.len()),
    });
    client.send(order.clone()).await.unwrap();
    // The genuine frame is delivered once; its copy fails the nonce check.
    assert_eq!(message(&server).await, order);
    assert_eq!(closed_with(&server).await, CloseReason::Authentication);
    assert!(proxy.fired());
}

#[tokio::test]
async fn an_oversized_frame_closes_the_session() {
    let (client, server, proxy) = proxied().await;
    let payload = b"x".repeat(100);
    proxy.arm(Rule::Oversize {
        len: message_frame_len(payload.len()),
    });
    client.send(payload).await.unwrap();
    assert!(matches!(
        closed_with(&server).await,
        CloseReason::Frame(FrameError::Oversized { .. })
    ));
}

#[tokio::test]
async fn a_replayed_handshake_is_refused() {
    let key = key(7);
    let mut listener = Listener::bind(any_port(), config(&key, NodeId::Two))
        .await
        .unwrap();
    let proxy = Proxy::start(listener.local_addr()).await;
    let node1 = config(&key, NodeId::One);
    let (client, server) = tokio::join!(dial(proxy.addr, &node1), listener.accept());
    let (client, server) = (client.unwrap(), server.unwrap());
    client.send("genuine").await.unwrap();
    assert_eq!(message(&server).await, b"genuine");
    // The recording: the first handshake message, then the key confirmation.
    let recorded = proxy.captured();
    assert!(recorded.len() >= 2);

    // Replayed to the same listener: it remembers the handshake.
    let mut raw = TcpStream::connect(listener.local_addr()).await.unwrap();
    raw.write_all(&recorded[0]).await.unwrap();
    match within("accepting the replay", listener.accept()).await {
        Err(Error::Handshake {
            source: HandshakeError::Replayed,
            ..
        }) => {}
        other => panic!("expected a replayed-handshake refusal, got {other:?}"),
    }
    let mut reply = Vec::new();
    let _ = raw.read_to_end(&mut reply).await;
    assert!(
        reply.is_empty(),
        "the listener answered a replay: {reply:?}"
    );

    // Replayed in full (handshake and confirmation) to a listener that never saw it, as
    // after a restart: the confirmation does not fit the new session keys.
    let mut fresh = Listener::bind(any_port(), config(&key, NodeId::Two))
        .await
        .unwrap();
    let mut raw = TcpStream::connect(fresh.local_addr()).await.unwrap();
    raw.write_all(&recorded[0]).await.unwrap();
    let mut answer = [0u8; 4];
    raw.read_exact(&mut answer).await.unwrap();
    raw.write_all(&recorded[1]).await.unwrap();
    match within("accepting the full replay", fresh.accept()).await {
        Err(Error::Handshake {
            source: HandshakeError::NotConfirmed,
            ..
        }) => {}
        other => panic!("expected an unconfirmed handshake, got {other:?}"),
    }

    // The genuine session was not disturbed by any of it.
    client.send("still genuine").await.unwrap();
    assert_eq!(message(&server).await, b"still genuine");
}

#[tokio::test]
async fn a_silent_connection_times_out_without_blocking_others() {
    let key = key(7);
    let mut listener = Listener::bind(any_port(), config(&key, NodeId::Two))
        .await
        .unwrap();
    let addr = listener.local_addr();
    // Connects and says nothing.
    let _silent = TcpStream::connect(addr).await.unwrap();
    // A real peer gets through meanwhile.
    let node1 = config(&key, NodeId::One);
    let (client, accepted) = tokio::join!(dial(addr, &node1), listener.accept());
    client.unwrap();
    accepted.unwrap();
    match within("the silent connection timing out", listener.accept()).await {
        Err(Error::Handshake {
            source: HandshakeError::Timeout(limit),
            ..
        }) => assert_eq!(limit, HANDSHAKE_TIMEOUT),
        other => panic!("expected a handshake timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn a_blob_dropped_unread_is_skipped_and_later_messages_arrive() {
    let (client, server) = pair().await;
    let sender = client.clone();
    let sending = tokio::spawn(async move {
        sender
            .send_blob(PatternSource {
                pos: 0,
                len: 2_000_000,
                fail_at: None,
            })
            .await?;
        sender.send("after the blob").await
    });
    match within("receiving a blob", server.recv()).await.unwrap() {
        Incoming::Blob(blob) => drop(blob),
        other => panic!("expected a blob, got {other:?}"),
    }
    assert_eq!(message(&server).await, b"after the blob");
    sending.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_blob_longer_than_the_limit_is_refused_before_it_passes_it() {
    let (client, server) = pair().await;
    let sender = client.clone();
    let sending = tokio::spawn(async move {
        sender
            .send_blob(PatternSource {
                pos: 0,
                len: 2_000_000,
                fail_at: None,
            })
            .await?;
        sender.send("after the blob").await
    });
    let Incoming::Blob(mut blob) = within("receiving a blob", server.recv()).await.unwrap() else {
        panic!("expected a blob");
    };
    let mut sink = PatternSink::default();
    let limit = 1_000_000;
    match within("copying", blob.copy_to_limited(&mut sink, limit)).await {
        Err(Error::BlobTooLarge { limit: l }) => assert_eq!(l, limit),
        other => panic!("expected the blob to be refused, got {other:?}"),
    }
    assert!(
        sink.pos <= limit,
        "{} bytes written past the limit",
        sink.pos
    );
    assert_eq!(sink.mismatches, 0);
    // The session goes on: the rest of the blob is skipped.
    assert_eq!(message(&server).await, b"after the blob");
    sending.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_blob_of_exactly_the_limit_is_copied_whole() {
    let (client, server) = pair().await;
    let len = 300_000;
    let sender = client.clone();
    let sending = tokio::spawn(async move {
        sender
            .send_blob(PatternSource {
                pos: 0,
                len,
                fail_at: None,
            })
            .await
    });
    let Incoming::Blob(mut blob) = within("receiving a blob", server.recv()).await.unwrap() else {
        panic!("expected a blob");
    };
    let mut sink = PatternSink::default();
    let copied = within("copying", blob.copy_to_limited(&mut sink, len)).await;
    assert_eq!(copied.unwrap(), len);
    assert_eq!((sink.pos, sink.mismatches), (len, 0));
    assert_eq!(sending.await.unwrap().unwrap(), len);
    drop(client);
}

#[tokio::test]
async fn a_blob_cancelled_by_its_sender_is_aborted_on_the_receiver() {
    let (client, server) = pair().await;
    let sender = client.clone();
    // A source that yields some bytes and then never more (a stuck disk).
    let source = PatternSource {
        pos: 0,
        len: 200_000,
        fail_at: None,
    }
    .chain(Stuck);
    let sending = tokio::spawn(async move { sender.send_blob(source).await });
    let Incoming::Blob(mut blob) = within("receiving a blob", server.recv()).await.unwrap() else {
        panic!("expected a blob");
    };
    // Wait until data flows, then cancel the sender.
    within("the first chunk", blob.chunk())
        .await
        .unwrap()
        .unwrap();
    sending.abort();
    let mut sink = PatternSink::default();
    match within("the rest of the blob", blob.copy_to(&mut sink)).await {
        Err(Error::BlobAborted(reason)) => assert!(reason.contains("cancelled"), "{reason}"),
        other => panic!("expected an aborted blob, got {other:?}"),
    }
    // The session goes on.
    client.send("next").await.unwrap();
    assert_eq!(message(&server).await, b"next");
}

/// A reader that never yields anything.
struct Stuck;

impl tokio::io::AsyncRead for Stuck {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Pending
    }
}
