//! The replication service on two nodes in one process, over a real peer link on
//! loopback: switch-on from one node, streaming, `wait_replicated`, status, switch-off,
//! the backlog limit and a peer with the wrong key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tandem_core::NodeId;
use tandem_peer::SiteKey;
use tandem_replication::{
    AckLevel, Error, InitOptions, LinkStatus, Position, Quiet, ReplicationBackend,
    ReplicationConfig, ReplicationState, Replicator, Settings, SqliteBackend, SwitchOnOptions,
    published_at,
};
use tandem_sample as sample;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Node {
    backend: Arc<SqliteBackend>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<Result<(), Error>>>,
}

impl Node {
    /// A node with its database initialized (node id `id`, peer at `remote_port`,
    /// listening on `port`), not yet running its service.
    async fn new(
        dir: &Path,
        id: NodeId,
        port: u16,
        remote_port: u16,
        tweak: impl FnOnce(&mut ReplicationConfig),
    ) -> Node {
        let mut cfg = ReplicationConfig {
            sample_schema: true,
            port: Some(port),
            heartbeat_ms: 200,
            ..ReplicationConfig::default()
        };
        tweak(&mut cfg);
        let settings = sample::settings(Settings::new(dir.join(format!("node{id}")), cfg));
        let backend = SqliteBackend::open(&settings).await.unwrap();
        let options =
            InitOptions::new(id, SocketAddr::new(LOCALHOST, remote_port)).with_local(LOCALHOST);
        backend.init(&options, &Quiet).await.unwrap();
        let (stop, _) = watch::channel(false);
        Node {
            backend: Arc::new(backend),
            stop,
            task: None,
        }
    }

    fn start(&mut self, key: &SiteKey) {
        let replicator = Replicator::new(Arc::clone(&self.backend));
        let key = key.clone();
        let mut stop = self.stop.subscribe();
        self.task = Some(tokio::spawn(async move {
            replicator
                .run_standalone(key, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        }));
        for _ in 0..500 {
            if self.backend.service_running() {
                return;
            }
            if self.task.as_ref().is_some_and(JoinHandle::is_finished) {
                let result = futures_now(self.task.take().unwrap());
                panic!("the replication service ended at once: {result:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the replication service did not start");
    }

    async fn stop(&mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        self.stop.send_replace(false);
    }
}

/// The result of a finished task.
fn futures_now(task: JoinHandle<Result<(), Error>>) -> String {
    let handle = tokio::runtime::Handle::current();
    std::thread::scope(|s| {
        s.spawn(|| format!("{:?}", handle.block_on(task)))
            .join()
            .unwrap()
    })
}

/// Node 1 and node 2 with their services running.
async fn pair(dir: &Path, key: &SiteKey) -> (Node, Node) {
    let (p1, p2) = (free_port(), free_port());
    let mut n1 = Node::new(dir, NodeId::One, p1, p2, |_| {}).await;
    let mut n2 = Node::new(dir, NodeId::Two, p2, p1, |_| {}).await;
    n1.start(key);
    n2.start(key);
    (n1, n2)
}

/// [`pair`], switched on from node 1, node 1 active, and transaction 1 written on
/// node 1 and acknowledged by node 2.
async fn replicating_pair(dir: &Path, key: &SiteKey) -> (Node, Node) {
    let (n1, n2) = pair(dir, key).await;
    n1.backend
        .switch_on(&SwitchOnOptions::new(), &Quiet)
        .await
        .unwrap();
    n1.backend.promote().await.unwrap();
    let p = write(&n1, 1, 10).await;
    n1.backend
        .wait_replicated(p, Duration::from_secs(30))
        .await
        .unwrap();
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

async fn write(node: &Node, tx: u64, rows: u32) -> Position {
    let mut conn = node.backend.pool().acquire().await.unwrap();
    sample::write_transaction(&mut conn, tx, rows)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_on_from_node_1_streams_to_node_2_and_status_shows_both() {
    let dir = tempfile::tempdir().unwrap();
    let key = SiteKey::generate().unwrap();
    let (mut n1, mut n2) = pair(dir.path(), &key).await;

    // The seed: init on both, switchON on node 1 only, then node 1 becomes active.
    let report = n1
        .backend
        .switch_on(&SwitchOnOptions::new(), &Quiet)
        .await
        .unwrap();
    assert!(
        report.message.contains("switched on on node 1"),
        "{}",
        report.message
    );
    eventually("node 2 to follow the switch-on", || async {
        n2.backend.status().await.unwrap().local.state == ReplicationState::Active
    })
    .await;
    n1.backend.promote().await.unwrap();

    let mut last = Position(0);
    for tx in 1..=60 {
        last = write(&n1, tx, 20).await;
    }
    // An acknowledged write is on node 2.
    n1.backend
        .wait_replicated(last, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(n2.backend.status().await.unwrap().applied, last);
    assert_eq!(
        n1.backend.table_checksums().await.unwrap(),
        n2.backend.table_checksums().await.unwrap()
    );

    // Node 2 refuses application writes.
    let mut conn = n2.backend.pool().acquire().await.unwrap();
    let err = sample::write_transaction(&mut conn, 1000, 3)
        .await
        .unwrap_err();
    let text = tandem_replication::chain(&err);
    assert!(text.contains("this database is the standby"), "{text}");
    drop(conn);

    eventually("both sides to see each other", || async {
        let (s1, s2) = (
            n1.backend.status().await.unwrap(),
            n2.backend.status().await.unwrap(),
        );
        s1.remote.status == LinkStatus::Connected
            && s2.remote.status == LinkStatus::Connected
            && s1.remote.state == ReplicationState::Active
            && s2.remote.writable == Some(true)
            && s1.backlog == Some(0)
    })
    .await;
    let text = n1.backend.status().await.unwrap().render();
    for line in [
        "| Replication Type: Local | Replication Type: Intra-site |",
        "| Node: 1                 | Node: 2                      |",
        "| State: Active           | State: Active                |",
        "| Status: Local           | Status: Connected            |",
        "Backlog: 0 changes",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }

    // Switch-off from node 2 switches both off; writes on node 1 are then not waited for.
    n2.backend.switch_off(&Quiet).await.unwrap();
    eventually("node 1 to follow the switch-off", || async {
        n1.backend.status().await.unwrap().local.state == ReplicationState::Off
    })
    .await;
    let p = write(&n1, 61, 5).await;
    let err = n1
        .backend
        .wait_replicated(p, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotReplicating { .. }), "{err}");

    n1.stop().await;
    n2.stop().await;
    // Without the service, status says so and switch-on refuses.
    let status = n1.backend.status().await.unwrap();
    assert_eq!(status.remote.status, LinkStatus::NotConnected);
    assert!(status.remote_detail.unwrap().contains("not running"));
    let err = n1
        .backend
        .switch_on(
            &SwitchOnOptions::new().with_timeout(Duration::from_millis(200)),
            &Quiet,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ServiceNotStarted { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_the_wrong_key_is_refused_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2) = (free_port(), free_port());
    let mut n1 = Node::new(dir.path(), NodeId::One, p1, p2, |_| {}).await;
    let mut n2 = Node::new(dir.path(), NodeId::Two, p2, p1, |_| {}).await;
    n1.start(&SiteKey::generate().unwrap());
    n2.start(&SiteKey::generate().unwrap());
    n1.backend
        .switch_on(&SwitchOnOptions::new(), &Quiet)
        .await
        .unwrap();
    n1.backend.promote().await.unwrap();
    write(&n1, 1, 10).await;
    eventually("node 1 to record the refused handshake", || async {
        n1.backend
            .status()
            .await
            .unwrap()
            .remote_detail
            .is_some_and(|d| d.contains("handshake"))
    })
    .await;
    let s2 = n2.backend.status().await.unwrap();
    assert_eq!(s2.remote.status, LinkStatus::NotConnected);
    assert_eq!(
        s2.local.state,
        ReplicationState::Initialized,
        "node 2 was not switched on"
    );
    assert_eq!(s2.applied, Position(0));
    assert!(
        n2.backend
            .table_checksums()
            .await
            .unwrap()
            .iter()
            .all(|t| t.rows == 0)
    );
    n1.stop().await;
    n2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_backlog_limit_replication_suspends_itself_with_an_alarm() {
    let dir = tempfile::tempdir().unwrap();
    let key = SiteKey::generate().unwrap();
    let (p1, p2) = (free_port(), free_port());
    let mut n1 = Node::new(dir.path(), NodeId::One, p1, p2, |c| c.max_backlog = 50).await;
    n1.start(&key);
    // Node 2 is down for long: its service never runs.
    n1.backend
        .switch_on(&SwitchOnOptions::new(), &Quiet)
        .await
        .unwrap();
    n1.backend.promote().await.unwrap();
    for tx in 1..=10 {
        write(&n1, tx, 10).await;
    }
    eventually("the suspension", || async {
        n1.backend.status().await.unwrap().local.state == ReplicationState::Suspended
    })
    .await;
    let status = n1.backend.status().await.unwrap();
    assert!(
        status.alarms.iter().any(|a| a.contains("max_backlog = 50")),
        "{:?}",
        status.alarms
    );
    assert!(
        status
            .render()
            .contains("Alarm: node 1: replication switched itself off")
    );
    assert_eq!(status.backlog, Some(0), "the changelog was dropped");
    // Writes go on, uncaptured, and nobody waits for a standby that is not coming.
    let p = write(&n1, 11, 10).await;
    let err = n1
        .backend
        .wait_replicated(p, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotReplicating {
                state: ReplicationState::Suspended,
                ..
            }
        ),
        "{err}"
    );
    n1.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_switchover_the_new_standby_follows_the_new_active_node() {
    let dir = tempfile::tempdir().unwrap();
    let key = SiteKey::generate().unwrap();
    let (mut n1, mut n2) = pair(dir.path(), &key).await;
    n1.backend
        .switch_on(&SwitchOnOptions::new(), &Quiet)
        .await
        .unwrap();
    n1.backend.promote().await.unwrap();
    for tx in 1..=20 {
        write(&n1, tx, 10).await;
    }
    // failover set-server standby on node 1, then set-server active on node 2 once it
    // has everything.
    n1.backend.demote().await.unwrap();
    eventually("node 2 to catch up", || async {
        let s = n2.backend.status().await.unwrap();
        s.caught_up() == Some(true) && s.remote_head == Some(n1.backend.head().await.unwrap())
    })
    .await;
    n2.backend.promote().await.unwrap();
    let mut last = Position(0);
    for tx in 21..=40 {
        last = write(&n2, tx, 10).await;
    }
    n2.backend
        .wait_replicated(last, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        n1.backend.table_checksums().await.unwrap(),
        n2.backend.table_checksums().await.unwrap()
    );
    let s1 = n1.backend.status().await.unwrap();
    assert!(s1.alarms.is_empty(), "{:?}", s1.alarms);
    n1.stop().await;
    n2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diverged_node_stops_applying_and_rejoins_with_from_sync() {
    let dir = tempfile::tempdir().unwrap();
    let key = SiteKey::generate().unwrap();
    let (mut n1, mut n2) = replicating_pair(dir.path(), &key).await;

    // Split brain: node 2 loses node 1, becomes active and takes writes of its own.
    n2.stop().await;
    n2.backend.promote().await.unwrap();
    write(&n2, 500, 10).await;
    write(&n1, 2, 10).await;
    n2.backend.demote().await.unwrap();
    n2.start(&key);
    eventually("node 2 to report the divergence", || async {
        let s = n2.backend.status().await.unwrap();
        // The link is up, and the status says the data has forked.
        s.remote.status == LinkStatus::Diverged
            && s.alarms.iter().any(|a| a.contains("diverged"))
            && s.local_detail
                .as_deref()
                .is_some_and(|d| d.starts_with("not applying node 1's changes: diverged"))
    })
    .await;
    assert_ne!(
        n1.backend.table_checksums().await.unwrap(),
        n2.backend.table_checksums().await.unwrap()
    );

    let report = n2
        .backend
        .switch_on(&SwitchOnOptions::new().from_sync(), &Quiet)
        .await
        .unwrap();
    assert_eq!(report.saved_rows, 10, "{report:?}");
    let file = report.local_only_file.expect("a local-only rows file");
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count(), 10);
    assert!(text.contains(r#""login":"user500001""#), "{text}");
    // Node 1 keeps writing; node 2 follows from the snapshot.
    let p = write(&n1, 3, 10).await;
    n1.backend
        .wait_replicated(p, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        n1.backend.table_checksums().await.unwrap(),
        n2.backend.table_checksums().await.unwrap()
    );
    eventually("the alarm to clear", || async {
        n2.backend.status().await.unwrap().alarms.is_empty()
    })
    .await;
    n1.stop().await;
    n2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_while_connected_stops_once_the_standby_is_lost_and_waits_again_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let key = SiteKey::generate().unwrap();
    let (mut n1, mut n2) = replicating_pair(dir.path(), &key).await;
    eventually("node 1 to record node 2 as connected", || async {
        n1.backend.status().await.unwrap().remote.status == LinkStatus::Connected
    })
    .await;
    let p = write(&n1, 4, 10).await;
    n1.backend
        .wait_replicated_while_connected(p, Duration::from_secs(30))
        .await
        .unwrap();

    // Node 2's service stops: node 1's service records the lost link, and a waiting
    // commit is told so instead of waiting out its limit.
    n2.stop().await;
    eventually("node 1 to see node 2 gone", || async {
        n1.backend.status().await.unwrap().remote.status != LinkStatus::Connected
    })
    .await;
    let p = write(&n1, 2, 10).await;
    let err = n1
        .backend
        .wait_replicated_while_connected(p, Duration::from_secs(60))
        .await
        .unwrap_err();
    match &err {
        Error::StandbyUnreachable { position, peer, .. } => {
            assert_eq!((*position, *peer), (p, NodeId::Two), "{err}");
        }
        other => panic!("expected StandbyUnreachable, got {other}"),
    }
    assert!(err.to_string().contains("node 2 is not connected"), "{err}");
    // Plain wait_replicated keeps waiting for the acknowledgement.
    let err = n1
        .backend
        .wait_replicated(p, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotReplicated { .. }), "{err}");

    // Back: the kept commit reaches node 2 and waiting succeeds again.
    n2.start(&key);
    eventually("node 1 to see node 2 again", || async {
        n1.backend.status().await.unwrap().remote.status == LinkStatus::Connected
    })
    .await;
    let p3 = write(&n1, 3, 10).await;
    n1.backend
        .wait_replicated_while_connected(p3, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(n2.backend.status().await.unwrap().applied >= p3);
    assert_eq!(
        n1.backend.table_checksums().await.unwrap(),
        n2.backend.table_checksums().await.unwrap()
    );
    n1.stop().await;
    n2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_that_cannot_apply_says_why_on_the_active_and_catches_up_once_it_can() {
    let dir = tempfile::tempdir().unwrap();
    let key = SiteKey::generate().unwrap();
    let (mut n1, mut n2) = replicating_pair(dir.path(), &key).await;

    // Node 2's database refuses every new meeting (as a full disk refuses every page).
    let mut conn = n2.backend.connect().await.unwrap();
    sqlx::query(
        "CREATE TRIGGER refuse BEFORE INSERT ON meetings \
         BEGIN SELECT RAISE(ABORT, 'database or disk is full (test trigger)'); END",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let p = write(&n1, 2, 10).await;
    eventually("node 1 to show node 2's apply failure", || async {
        n1.backend.status().await.unwrap().alarms.iter().any(|a| {
            a.contains("node 2 cannot apply node 1's changes") && a.contains("disk is full")
        })
    })
    .await;
    assert!(n2.backend.status().await.unwrap().applied < p);
    // The standby's own status says why too.
    eventually("node 2 to show its own apply failure", || async {
        n2.backend
            .status()
            .await
            .unwrap()
            .local_detail
            .is_some_and(|d| {
                d.contains("not applying node 1's changes") && d.contains("disk is full")
            })
    })
    .await;

    // Fixed: replication resumes by itself and the alarm goes.
    sqlx::query("DROP TRIGGER refuse")
        .execute(&mut conn)
        .await
        .unwrap();
    n1.backend
        .wait_replicated(p, Duration::from_secs(30))
        .await
        .unwrap();
    eventually("the alarm to clear", || async {
        n1.backend.status().await.unwrap().alarms.is_empty()
            && n2.backend.status().await.unwrap().local_detail.is_none()
    })
    .await;
    assert_eq!(
        n1.backend.table_checksums().await.unwrap(),
        n2.backend.table_checksums().await.unwrap()
    );
    drop(conn);
    n1.stop().await;
    n2.stop().await;
}

/// Bug 7: after the active node suspended replication past `max_backlog`, the
/// alarm's advice (from-sync on the standby) must bring replication back for good:
/// the active counts its backlog from the snapshot's position, not from the
/// acknowledgement it had before the suspension.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_sync_after_a_backlog_suspension_resumes_replication_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let key = SiteKey::generate().unwrap();
    let (p1, p2) = (free_port(), free_port());
    let mut n1 = Node::new(dir.path(), NodeId::One, p1, p2, |c| c.max_backlog = 50).await;
    let mut n2 = Node::new(dir.path(), NodeId::Two, p2, p1, |_| {}).await;
    n1.start(&key);
    n2.start(&key);
    n1.backend
        .switch_on(&SwitchOnOptions::new(), &Quiet)
        .await
        .unwrap();
    n1.backend.promote().await.unwrap();
    let p = write(&n1, 1, 10).await;
    n1.backend
        .wait_replicated(p, Duration::from_secs(30))
        .await
        .unwrap();

    // The standby's service is gone while 200 rows are written: node 1 suspends.
    n2.stop().await;
    for tx in 2..=21 {
        write(&n1, tx, 10).await;
    }
    eventually("the suspension", || async {
        n1.backend.status().await.unwrap().local.state == ReplicationState::Suspended
    })
    .await;

    // What the alarm says: bring node 2 back and run from-sync on it.
    n2.start(&key);
    n2.backend
        .switch_on(&SwitchOnOptions::new().from_sync(), &Quiet)
        .await
        .unwrap();
    let mut last = Position(0);
    for tx in 22..=25 {
        last = write(&n1, tx, 10).await;
        n1.backend
            .wait_replicated(last, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("transaction {tx} after the from-sync: {e}"));
    }
    assert!(n2.backend.status().await.unwrap().applied >= last);
    assert_eq!(
        n1.backend.table_checksums().await.unwrap(),
        n2.backend.table_checksums().await.unwrap()
    );
    let s1 = n1.backend.status().await.unwrap();
    assert_eq!(s1.local.state, ReplicationState::Active);
    assert!(s1.alarms.is_empty(), "{:?}", s1.alarms);
    n1.stop().await;
    n2.stop().await;
}

/// The steps an operation reported.
#[derive(Default)]
struct Steps(std::sync::Mutex<Vec<String>>);

impl tandem_replication::Observer for Steps {
    fn step(&self, text: &str) {
        self.0.lock().unwrap().push(text.to_owned());
    }
}

impl Steps {
    fn any(&self, part: &str) -> bool {
        self.0.lock().unwrap().iter().any(|s| s.contains(part))
    }
}

/// Bug 6: `switch-on` straight after `init` waits for the service the node agent is
/// about to start, instead of failing at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_on_straight_after_init_waits_for_the_service_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let key = SiteKey::generate().unwrap();
    let (p1, p2) = (free_port(), free_port());
    let mut n1 = Node::new(dir.path(), NodeId::One, p1, p2, |_| {}).await;
    let backend = Arc::clone(&n1.backend);
    let steps = Arc::new(Steps::default());
    let seen = Arc::clone(&steps);
    let switch = tokio::spawn(async move {
        backend
            .switch_on(&SwitchOnOptions::new(), seen.as_ref())
            .await
    });
    eventually("switch-on to wait for the service (or end)", || async {
        steps.any("waiting for the replication service") || switch.is_finished()
    })
    .await;
    // The agent starts the service about now.
    n1.start(&key);
    let report = switch.await.unwrap().unwrap();
    assert!(
        report.message.contains("switched on on node 1"),
        "{}",
        report.message
    );
    assert!(steps.any("waiting for the replication service"));
    n1.stop().await;

    // A service that does not come: the error says it waited, and what to start.
    let err = n1
        .backend
        .switch_on(
            &SwitchOnOptions::new().with_timeout(Duration::from_millis(300)),
            &Quiet,
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("waited"), "{text}");
    assert!(text.contains("mp_replication service"), "{text}");
    assert!(text.contains("node agent"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_wait_at_each_acknowledgement_level_and_received_is_published_first() {
    let dir = tempfile::tempdir().unwrap();
    let key = SiteKey::generate().unwrap();
    let (p1, p2) = (free_port(), free_port());
    // Node 1's commits wait at `received` unless told otherwise.
    let mut n1 = Node::new(dir.path(), NodeId::One, p1, p2, |c| {
        c.synchronous_commit = AckLevel::Received;
    })
    .await;
    let mut n2 = Node::new(dir.path(), NodeId::Two, p2, p1, |_| {}).await;
    n1.start(&key);
    n2.start(&key);
    n1.backend
        .switch_on(&SwitchOnOptions::new(), &Quiet)
        .await
        .unwrap();
    n1.backend.promote().await.unwrap();
    let state_dir = n1.backend.settings().state_dir.clone();
    for (tx, level) in (1..).zip(AckLevel::ALL) {
        let p = write(&n1, tx, 10).await;
        n1.backend
            .wait_replicated_at(p, level, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("waiting at {level}: {e}"));
        let received = published_at(&state_dir, AckLevel::Received).unwrap();
        let applied = published_at(&state_dir, AckLevel::Applied).unwrap();
        assert!(received >= p, "{level}: received {received:?} < {p:?}");
        assert!(
            received >= applied,
            "received {received:?} < applied {applied:?}"
        );
        if level != AckLevel::Received {
            assert!(applied >= p, "{level}: applied {applied:?} < {p:?}");
        }
    }
    // The configured level, and what `received` promised: node 2 applies it.
    let p = write(&n1, 9, 10).await;
    n1.backend
        .wait_replicated(p, Duration::from_secs(30))
        .await
        .unwrap();
    eventually("node 2 to apply what it received", || async {
        n2.backend.status().await.unwrap().applied >= p
    })
    .await;
    n1.stop().await;
    n2.stop().await;
}
