//! Fencing tokens in replication (issue 21): two nodes in one process over a real peer
//! link on loopback, each service given a [`Fence`]; a standby applies nothing from a
//! holder with an older token and catches up once it holds a new one; and, with a peer
//! played by hand over an in-memory transport, a stale holder does not stream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tandem_core::NodeId;
use tandem_peer::SiteKey;
use tandem_replication::wire::{Message, NodeState, RECEIVED_HELLO};
use tandem_replication::{
    Error, Fence, InitOptions, PeerEvent, Position, Quiet, ReplicationBackend, ReplicationConfig,
    ReplicationState, Replicator, Settings, SqliteBackend, SwitchOnOptions, Transport,
};
use tandem_sample as sample;
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinHandle;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A node with its service running, fenced by `fence` (which the test changes as the
/// node agent would).
struct Node {
    backend: Arc<SqliteBackend>,
    fence: watch::Sender<Fence>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), Error>>,
}

async fn open(dir: &Path, id: NodeId, port: u16, remote_port: u16) -> Arc<SqliteBackend> {
    let cfg = ReplicationConfig {
        sample_schema: true,
        port: Some(port),
        heartbeat_ms: 200,
        ..ReplicationConfig::default()
    };
    let backend = SqliteBackend::open(&sample::settings(Settings::new(
        dir.join(format!("node{id}")),
        cfg,
    )))
    .await
    .unwrap();
    let options =
        InitOptions::new(id, SocketAddr::new(LOCALHOST, remote_port)).with_local(LOCALHOST);
    backend.init(&options, &Quiet).await.unwrap();
    Arc::new(backend)
}

impl Node {
    async fn start(dir: &Path, id: NodeId, ports: (u16, u16), key: &SiteKey, fence: Fence) -> Node {
        let backend = open(dir, id, ports.0, ports.1).await;
        let (fence_tx, fence_rx) = watch::channel(fence);
        let replicator = Replicator::new(Arc::clone(&backend)).with_fence(fence_rx);
        let (stop, mut stopped) = watch::channel(false);
        let key = key.clone();
        let task = tokio::spawn(async move {
            replicator
                .run_standalone(key, async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
        });
        eventually("the service to start", || async {
            backend.service_running()
        })
        .await;
        Node {
            backend,
            fence: fence_tx,
            stop,
            task,
        }
    }

    async fn stop(self) {
        self.stop.send_replace(true);
        self.task.await.unwrap().unwrap();
    }
}

/// Node 1 (fenced by `f1`) and node 2 (by `f2`), switched on from node 1, node 1
/// active.
async fn pair(dir: &Path, f1: Fence, f2: Fence) -> (Node, Node) {
    let key = SiteKey::generate().unwrap();
    let (p1, p2) = (free_port(), free_port());
    let n1 = Node::start(dir, NodeId::One, (p1, p2), &key, f1).await;
    let n2 = Node::start(dir, NodeId::Two, (p2, p1), &key, f2).await;
    n1.backend
        .switch_on(&SwitchOnOptions::new(), &Quiet)
        .await
        .unwrap();
    n1.backend.promote().await.unwrap();
    (n1, n2)
}

/// Polls `check` every 10 ms for at most 30 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..3000 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn write(backend: &SqliteBackend, tx: u64, rows: u32) -> Position {
    let mut conn = backend.pool().acquire().await.unwrap();
    sample::write_transaction(&mut conn, tx, rows)
        .await
        .unwrap()
}

async fn meetings(backend: &SqliteBackend) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM meetings")
        .fetch_one(backend.pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_current_tokens_replication_works_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let (n1, n2) = pair(dir.path(), Fence::new(Some(5), 5), Fence::new(None, 5)).await;
    let mut last = Position(0);
    for tx in 1..=5 {
        last = write(&n1.backend, tx, 10).await;
    }
    n1.backend
        .wait_replicated(last, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(n2.backend.status().await.unwrap().applied, last);
    assert_eq!(
        n1.backend.table_checksums().await.unwrap(),
        n2.backend.table_checksums().await.unwrap()
    );
    for node in [&n1, &n2] {
        let status = node.backend.status().await.unwrap();
        assert!(status.alarms.is_empty(), "{:?}", status.alarms);
    }
    n1.stop().await;
    n2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_refuses_a_holder_with_an_older_token_until_it_holds_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    // Node 2 has seen token 9 (a newer holder's); node 1 still announces 5.
    let (n1, n2) = pair(dir.path(), Fence::new(Some(5), 5), Fence::new(None, 9)).await;
    eventually("node 2 to follow the switch-on", || async {
        n2.backend.status().await.unwrap().local.state == ReplicationState::Active
    })
    .await;
    let p = write(&n1.backend, 1, 10).await;
    let why = "refused changes from node 1: its witness token 5 is older than token 9 seen here \
               (a stale holder)";
    eventually("node 2 to say why it refuses node 1's changes", || async {
        let status = n2.backend.status().await.unwrap();
        status.alarms.iter().any(|a| a.contains(why))
    })
    .await;
    let err = n1
        .backend
        .wait_replicated(p, Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is not replicated"), "{err}");
    assert_eq!(meetings(&n2.backend).await, 0);
    assert_eq!(n2.backend.status().await.unwrap().applied, Position(0));
    // Node 1's status shows node 2's alarm too.
    eventually("node 1 to show node 2's refusal", || async {
        let status = n1.backend.status().await.unwrap();
        status.alarms.iter().any(|a| a.contains(why))
    })
    .await;

    // Node 1 acquires the leader key again, with token 9: node 2 catches up by itself.
    n1.fence.send_replace(Fence::new(Some(9), 9));
    n1.backend
        .wait_replicated(p, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(meetings(&n2.backend).await, meetings(&n1.backend).await);
    assert_eq!(
        n1.backend.table_checksums().await.unwrap(),
        n2.backend.table_checksums().await.unwrap()
    );
    eventually("node 2's alarm to clear", || async {
        n2.backend.status().await.unwrap().alarms.is_empty()
    })
    .await;
    n1.stop().await;
    n2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_whose_floor_rises_stops_applying_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (n1, n2) = pair(dir.path(), Fence::new(Some(5), 5), Fence::new(None, 5)).await;
    let p = write(&n1.backend, 1, 10).await;
    n1.backend
        .wait_replicated(p, Duration::from_secs(30))
        .await
        .unwrap();
    let before = meetings(&n2.backend).await;

    // Node 2 learns of token 7 (node 1's lease was lost and someone else got the key).
    n2.fence.send_replace(Fence::new(None, 7));
    eventually("node 2 to refuse node 1's changes", || async {
        let status = n2.backend.status().await.unwrap();
        status
            .alarms
            .iter()
            .any(|a| a.contains("its witness token 5 is older than token 7 seen here"))
    })
    .await;
    let p = write(&n1.backend, 2, 10).await;
    assert!(
        n1.backend
            .wait_replicated(p, Duration::from_millis(500))
            .await
            .is_err()
    );
    assert_eq!(meetings(&n2.backend).await, before);
    n1.stop().await;
    n2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_from_sync_from_a_holder_with_an_older_token_fails_and_copies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (n1, n2) = pair(dir.path(), Fence::new(Some(5), 5), Fence::new(None, 9)).await;
    write(&n1.backend, 1, 10).await;
    eventually("node 2 to know node 1's token", || async {
        let status = n2.backend.status().await.unwrap();
        status
            .alarms
            .iter()
            .any(|a| a.contains("refused changes from node 1"))
    })
    .await;
    let err = n2
        .backend
        .switch_on(&SwitchOnOptions::new().from_sync(), &Quiet)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("from-sync failed"), "{text}");
    assert!(
        text.contains("its witness token 5 is older than token 9 seen here"),
        "{text}"
    );
    assert_eq!(meetings(&n2.backend).await, 0);

    // Node 1 holds the key with token 9: the from-sync copies everything.
    n1.fence.send_replace(Fence::new(Some(9), 9));
    eventually("node 2 to stop refusing node 1", || async {
        let status = n2.backend.status().await.unwrap();
        !status
            .alarms
            .iter()
            .any(|a| a.contains("refused changes from node 1"))
    })
    .await;
    n2.backend
        .switch_on(&SwitchOnOptions::new().from_sync(), &Quiet)
        .await
        .unwrap();
    assert_eq!(
        n1.backend.table_checksums().await.unwrap(),
        n2.backend.table_checksums().await.unwrap()
    );
    n1.stop().await;
    n2.stop().await;
}

/// One end of an in-memory session; messages go through the codec as on the link.
struct Mem {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    rx: Mutex<mpsc::UnboundedReceiver<Vec<u8>>>,
}

fn mem_pair() -> (Mem, Mem) {
    let (a_tx, a_rx) = mpsc::unbounded_channel();
    let (b_tx, b_rx) = mpsc::unbounded_channel();
    (
        Mem {
            tx: a_tx,
            rx: Mutex::new(b_rx),
        },
        Mem {
            tx: b_tx,
            rx: Mutex::new(a_rx),
        },
    )
}

impl Transport for Mem {
    async fn send(&self, message: Message) -> Result<(), Error> {
        let bytes = tandem_peer::seal(&message).map_err(|e| Error::Protocol(e.to_string()))?;
        self.tx
            .send(bytes)
            .map_err(|_| Error::Protocol("the session closed".into()))
    }

    async fn recv(&self) -> Result<Message, Error> {
        let bytes = self.rx.lock().await.recv().await;
        let bytes = bytes.ok_or_else(|| Error::Protocol("the session closed".into()))?;
        tandem_peer::open(&bytes).map_err(|e| Error::Protocol(e.to_string()))
    }
}

/// The next message from the service that is not a state (nor the acknowledgement of
/// nothing that says it reads `Received`), and the last state seen.
async fn next_but_states(peer: &Mem, last_state: &mut Option<NodeState>) -> Message {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), peer.recv())
            .await
            .expect("a message from the service")
            .unwrap();
        match m {
            Message::State(s) => *last_state = Some(s),
            Message::Ack {
                seq: RECEIVED_HELLO,
                ..
            } => {}
            other => return other,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_with_an_older_token_than_its_peers_does_not_stream() {
    let dir = tempfile::tempdir().unwrap();
    let backend = open(dir.path(), NodeId::One, free_port(), free_port()).await;
    let (fence, fence_rx) = watch::channel(Fence::new(Some(5), 5));
    let replicator = Replicator::new(Arc::clone(&backend)).with_fence(fence_rx);
    let (events, events_rx) = mpsc::channel(1);
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        replicator
            .run(events_rx, async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await
    });
    eventually("the service to start", || async {
        backend.service_running()
    })
    .await;
    backend
        .switch_on(&SwitchOnOptions::new(), &Quiet)
        .await
        .unwrap();
    backend.promote().await.unwrap();
    write(&backend, 1, 5).await;

    let (ours, peer) = mem_pair();
    events.send(PeerEvent::Up(ours)).await.unwrap();
    let Message::State(first) = peer.recv().await.unwrap() else {
        panic!("the service did not start with its state");
    };
    assert_eq!(first.token, Some(5));
    // Node 2, played here, holds token 9 and pulls.
    let node2 = NodeState {
        node: NodeId::Two,
        site: first.site,
        log: 4242,
        head: 0,
        floor: 0,
        acked: 0,
        applied_log: None,
        applied: 0,
        writable: false,
        state: ReplicationState::Active,
        schema: first.schema.clone(),
        alarm: String::new(),
        lag_ms: None,
        token: Some(9),
    };
    peer.send(Message::State(node2.clone())).await.unwrap();
    peer.send(Message::Pull { log: None, from: 0 })
        .await
        .unwrap();
    let mut last = Some(first);
    match next_but_states(&peer, &mut last).await {
        Message::Refuse { reason } => assert_eq!(
            reason,
            "node 1 does not stream its changes to node 2: its witness token 5 is older than \
             node 2's token 9 (node 1 is a stale holder)"
        ),
        other => panic!("a stale holder answered a pull with {other:?}"),
    }

    // Node 1 holds the key again with a newer token: it announces it and streams.
    fence.send_replace(Fence::new(Some(10), 10));
    eventually("node 1 to announce its new token", || async {
        if let Ok(Ok(Message::State(s))) =
            tokio::time::timeout(Duration::from_millis(50), peer.recv()).await
        {
            return s.token == Some(10);
        }
        false
    })
    .await;
    peer.send(Message::Pull { log: None, from: 0 })
        .await
        .unwrap();
    match next_but_states(&peer, &mut last).await {
        Message::Batch(batch) => assert_eq!(batch.prev, 0),
        other => panic!("expected a batch, got {other:?}"),
    }
    // While it streams, a peer announcing a newer token stops it.
    let newer = NodeState {
        token: Some(11),
        ..node2
    };
    peer.send(Message::State(newer)).await.unwrap();
    loop {
        match next_but_states(&peer, &mut last).await {
            Message::Batch(_) => continue,
            Message::Refuse { reason } => {
                assert!(reason.contains("node 2's token 11"), "{reason}");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    stop.send_replace(true);
    task.await.unwrap().unwrap();
}
