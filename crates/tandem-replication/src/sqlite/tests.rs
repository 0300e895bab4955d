//! Tests of the SQLite backend on real database files: capture, guard, value
//! fidelity, exactly-once apply under any delivery order (property test), pulls,
//! acknowledgements and from-sync.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::config::ReplicationConfig;
use crate::wire::{Batch, Change, Message};
use crate::{InitOptions, Quiet};
use tandem_core::NodeId;

const MIXED: &[&str] = &[
    "CREATE TABLE kv (k INTEGER PRIMARY KEY, s TEXT, r REAL, x BLOB, n)",
    "CREATE TABLE pair (a TEXT NOT NULL, b INTEGER NOT NULL, v, PRIMARY KEY (a, b)) WITHOUT ROWID",
];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn remote() -> SocketAddr {
    "127.0.0.1:9".parse().unwrap()
}

/// A backend in `dir/name` with the given declared tables, created by `schema` first.
async fn open(dir: &Path, name: &str, tables: &[&str], schema: &[&str]) -> SqliteBackend {
    let cfg = ReplicationConfig {
        tables: tables.iter().map(|t| (*t).to_owned()).collect(),
        ..ReplicationConfig::default()
    };
    let b = SqliteBackend::open(&Settings::new(dir.join(name), cfg))
        .await
        .unwrap();
    let mut conn = b.conn().await.unwrap();
    for sql in schema {
        let sql = sql.replace("CREATE TABLE ", "CREATE TABLE IF NOT EXISTS ");
        sqlx::query(AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    b
}

async fn init(b: &SqliteBackend, node: NodeId) {
    let options = InitOptions {
        node,
        site: 1,
        remote: remote(),
        local: None,
    };
    b.init(&options, &Quiet).await.unwrap();
}

/// Node 1: writable, replication on. Node 2: standby, replication on.
async fn pair(dir: &Path, tables: &[&str], schema: &[&str]) -> (SqliteBackend, SqliteBackend) {
    let n1 = open(dir, "node1", tables, schema).await;
    let n2 = open(dir, "node2", tables, schema).await;
    init(&n1, NodeId::One).await;
    init(&n2, NodeId::Two).await;
    // The seed's order: switch on, then make node 1 active.
    n1.switch_local(true).await.unwrap();
    n2.switch_local(true).await.unwrap();
    n1.promote().await.unwrap();
    (n1, n2)
}

async fn exec(b: &SqliteBackend, sql: &str) -> std::result::Result<u64, sqlx::Error> {
    let mut conn = b.conn().await.unwrap();
    sqlx::query(AssertSqlSafe(sql.to_owned()))
        .execute(&mut *conn)
        .await
        .map(|r| r.rows_affected())
}

async fn all_changes(b: &SqliteBackend, after: u64) -> Vec<Change> {
    b.read_changes(after, 1_000_000, usize::MAX).await.unwrap()
}

async fn ship(from: &SqliteBackend, to: &SqliteBackend) -> ApplyOutcome {
    let m = from.meta().await.unwrap();
    let to_meta = to.meta().await.unwrap();
    let prev = if to_meta.applied_log == Some(m.log) {
        to_meta.applied
    } else {
        0
    };
    let batch = Batch {
        log: m.log,
        prev,
        changes: all_changes(from, prev).await,
    };
    let outcome = to.apply_batch(&batch).await.unwrap();
    from.record_ack(m.log, batch.last()).await.unwrap();
    outcome
}

#[test]
fn the_standby_refuses_application_writes_and_the_active_captures_them() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (n1, n2) = pair(dir.path(), &["kv", "pair"], MIXED).await;
        let err = exec(&n2, "INSERT INTO kv (k, s) VALUES (1, 'x')")
            .await
            .unwrap_err();
        assert!(err.to_string().contains(schema::STANDBY_MESSAGE), "{err}");
        for sql in ["UPDATE kv SET s = 'y'", "DELETE FROM kv"] {
            // No rows: the guard fires per row, so an empty table lets these pass.
            exec(&n2, sql).await.unwrap();
        }
        exec(&n1, "INSERT INTO kv (k, s) VALUES (1, 'x'), (2, 'y')")
            .await
            .unwrap();
        exec(&n1, "UPDATE kv SET s = 'z' WHERE k = 1")
            .await
            .unwrap();
        exec(&n1, "UPDATE kv SET k = 3 WHERE k = 2").await.unwrap();
        exec(&n1, "DELETE FROM kv WHERE k = 1").await.unwrap();
        let ops: Vec<(String, String)> = all_changes(&n1, 0)
            .await
            .into_iter()
            .map(|c| (c.op.letter().to_owned(), c.pk))
            .collect();
        let expected = [
            ("I", r#"{"k":1}"#),
            ("I", r#"{"k":2}"#),
            ("U", r#"{"k":1}"#),
            ("D", r#"{"k":2}"#),
            ("I", r#"{"k":3}"#),
            ("D", r#"{"k":1}"#),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect();
        assert_eq!(ops, expected);
        ship(&n1, &n2).await;
        assert_eq!(
            n1.table_checksums().await.unwrap(),
            n2.table_checksums().await.unwrap()
        );
        // Acknowledged entries are pruned; the backlog is empty.
        assert!(all_changes(&n1, 0).await.is_empty());
        let m = n1.meta().await.unwrap();
        assert_eq!((m.head, m.acked, m.floor), (6, 6, 6));
    });
}

/// `wait_replicated`'s limit bounds its looks at the database too: with every pooled
/// connection taken (as by a database that does not answer), the wait ends at its
/// limit with `NotReplicated` instead of waiting out the pool (30 s), so an
/// application that answers its client after the wait answers in time.
#[test]
fn a_wait_that_cannot_look_at_the_database_ends_at_its_limit() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (n1, _n2) = pair(dir.path(), &["kv"], MIXED).await;
        exec(&n1, "INSERT INTO kv (k) VALUES (1)").await.unwrap();
        let head = n1.head().await.unwrap();
        let mut taken = Vec::new();
        for _ in 0..super::POOL_SIZE {
            taken.push(n1.conn().await.unwrap());
        }
        let limit = Duration::from_millis(200);
        for connected in [false, true] {
            let wait = async {
                if connected {
                    n1.wait_replicated_while_connected(head, limit).await
                } else {
                    n1.wait_replicated_at(head, AckLevel::Received, limit).await
                }
            };
            // The outer limit only keeps a failing test from hanging.
            let err = tokio::time::timeout(Duration::from_secs(10), wait)
                .await
                .expect("the wait ended")
                .unwrap_err();
            assert!(
                matches!(err, Error::NotReplicated { position, .. } if position == head),
                "{err}"
            );
        }
        drop(taken);
    });
}

/// The service publishes each acknowledgement at once and records it in the database
/// later; recording an older one must not move the published position back (a node
/// demoted then would take what its peer acknowledged for unacknowledged, and refuse
/// the new active node's changes as diverged until the next record).
#[test]
fn recording_an_older_acknowledgement_keeps_the_newer_published_one() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (n1, _n2) = pair(dir.path(), &["kv"], MIXED).await;
        for k in 1..=10 {
            exec(&n1, &format!("INSERT INTO kv (k) VALUES ({k})"))
                .await
                .unwrap();
        }
        let m = n1.meta().await.unwrap();
        assert_eq!(m.head, 10);
        n1.publish_ack(m.log, 10, 10, 0).unwrap();
        n1.record_ack(m.log, 7).await.unwrap();
        let published = crate::util::read_published(&n1.ack_path()).unwrap();
        assert_eq!((published.applied, published.received), (10, 10));
        n1.demote().await.unwrap();
        let m = n1.meta().await.unwrap();
        assert_eq!(
            (m.acked, m.head),
            (10, 10),
            "a demoted node that is not diverged"
        );
    });
}

#[test]
fn writes_are_not_captured_while_replication_is_off_and_the_peer_must_resync() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (n1, n2) = pair(dir.path(), &["kv"], MIXED).await;
        exec(&n1, "INSERT INTO kv (k) VALUES (1)").await.unwrap();
        ship(&n1, &n2).await;
        n1.switch_local(false).await.unwrap();
        exec(&n1, "INSERT INTO kv (k) VALUES (2)").await.unwrap();
        assert!(all_changes(&n1, 0).await.is_empty());
        n1.switch_local(true).await.unwrap();
        exec(&n1, "INSERT INTO kv (k) VALUES (3)").await.unwrap();
        let m1 = n1.meta().await.unwrap();
        // Capture resumed after uncaptured writes at head 1: the head moved on to 2 and
        // became the floor, so node 2 (which applied 1) cannot continue without a snapshot.
        assert_eq!((m1.floor, m1.head), (2, 3));
        let refused = n1.check_pull(Some(m1.log), 0, NodeId::Two).await.unwrap();
        assert!(
            matches!(refused, PullCheck::Refuse(ref r) if r.contains("from-sync")),
            "{refused:?}"
        );
    });
}

/// Key, then storage class and value of each column of `kv`.
type DumpRow = (
    i64,
    String,
    Option<String>,
    String,
    Option<f64>,
    String,
    Option<Vec<u8>>,
    String,
);

#[test]
fn values_keep_their_storage_class_and_bits() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (n1, n2) = pair(dir.path(), &["kv"], MIXED).await;
        let reals = [0.1 + 0.2, 1e300, 5e-324, -1.5, 1.0, f64::MAX, -0.000_123_456_789_012_345_67, f64::INFINITY, f64::NEG_INFINITY, -0.0, f64::MIN_POSITIVE, 123_456_789.0];
        {
            let mut conn = n1.conn().await.unwrap();
            for (i, r) in reals.iter().enumerate() {
                sqlx::query("INSERT INTO kv (k, s, r, x, n) VALUES (?1, ?2, ?3, ?4, ?5)")
                    .bind(i64::try_from(i).unwrap())
                    .bind(format!("quote \" back\\slash \n tab\t ünï {{\"json\": 1}} {i}"))
                    .bind(r)
                    .bind(vec![0u8, 255, u8::try_from(i).unwrap()])
                    .bind(i64::MAX - i64::try_from(i).unwrap())
                    .execute(&mut *conn)
                    .await
                    .unwrap();
            }
            sqlx::query("INSERT INTO kv (k, s, r, x, n) VALUES (100, NULL, NULL, x'', '42')")
                .execute(&mut *conn)
                .await
                .unwrap();
            sqlx::query("INSERT INTO kv (k, n) VALUES (-9223372036854775808, 2.5)")
                .execute(&mut *conn)
                .await
                .unwrap();
            // A BLOB in a TEXT column (its affinity keeps BLOBs): the triggers still ask
            // such a column whether it holds one, only not whether it holds a REAL.
            sqlx::query("INSERT INTO kv (k, s) VALUES (102, x'00ff0a')")
                .execute(&mut *conn)
                .await
                .unwrap();
            // Two REALs in one entry: the changelog read returns a row for each, which
            // must make one change (else the batch repeats the entry and is refused).
            sqlx::query("INSERT INTO kv (k, r, n) VALUES (101, ?1, ?2)")
                .bind(0.1 + 0.2)
                .bind(f64::MIN_POSITIVE / 3.0)
                .execute(&mut *conn)
                .await
                .unwrap();
        }
        ship(&n1, &n2).await;
        let dump = |b: &SqliteBackend| {
            let pool = b.pool().clone();
            async move {
                let rows: Vec<DumpRow> =
                    sqlx::query_as(
                        "SELECT k, typeof(s), quote(s), typeof(r), r, typeof(x), x, typeof(n) || ':' || quote(n) FROM kv ORDER BY k",
                    )
                    .fetch_all(&pool)
                    .await
                    .unwrap();
                rows.into_iter()
                    .map(|(k, ts, s, tr, r, tx, x, n)| (k, ts, s, tr, r.map(f64::to_bits), tx, x, n))
                    .collect::<Vec<_>>()
            }
        };
        let (a, b) = (dump(&n1).await, dump(&n2).await);
        assert_eq!(a.len(), reals.len() + 4);
        assert_eq!(a, b);
        // `n` is compared above as text; the second REAL of entry 101 bit for bit.
        let n_bits = |b: &SqliteBackend| {
            let pool = b.pool().clone();
            async move {
                let n: f64 = sqlx::query_scalar("SELECT n FROM kv WHERE k = 101")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                n.to_bits()
            }
        };
        assert_eq!(n_bits(&n2).await, (f64::MIN_POSITIVE / 3.0).to_bits());
        assert_eq!(n_bits(&n1).await, n_bits(&n2).await);
    });
}

#[test]
fn a_table_without_a_primary_key_or_missing_is_refused_by_name() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let b = open(dir.path(), "n", &["nokey"], &["CREATE TABLE nokey (a, b)"]).await;
        let options = InitOptions::new(NodeId::One, remote());
        let err = b.init(&options, &Quiet).await.unwrap_err();
        assert!(
            err.to_string().contains("`nokey`") && err.to_string().contains("no primary key"),
            "{err}"
        );
        let b = open(dir.path(), "m", &["missing"], &[]).await;
        let err = b.init(&options, &Quiet).await.unwrap_err();
        assert!(
            err.to_string().contains("`missing`") && err.to_string().contains("does not exist"),
            "{err}"
        );
        // Nothing was half-installed.
        assert!(!b.is_initialized().await.unwrap());

        // No tables declared: the error says how to declare the application's.
        let b = SqliteBackend::open(&Settings::new(
            dir.path().join("d"),
            ReplicationConfig::default(),
        ))
        .await
        .unwrap();
        let err = b.init(&options, &Quiet).await.unwrap_err().to_string();
        for part in [
            "`user_groups`",
            "no tables are declared",
            "[replication]",
            "tables = [",
            "docs/OPERATIONS.md",
        ] {
            assert!(err.contains(part), "{part:?} missing in: {err}");
        }
    });
}

#[test]
fn init_is_idempotent_and_keeps_positions() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (n1, _n2) = pair(dir.path(), &["kv"], MIXED).await;
        exec(&n1, "INSERT INTO kv (k) VALUES (1)").await.unwrap();
        let before = n1.meta().await.unwrap();
        init(&n1, NodeId::One).await;
        let after = n1.meta().await.unwrap();
        assert_eq!(
            (before.log, before.head, before.writable, before.state),
            (after.log, after.head, after.writable, after.state)
        );
        let options = InitOptions::new(NodeId::Two, remote());
        let err = n1.init(&options, &Quiet).await.unwrap_err();
        assert!(err.to_string().contains("initialized as node 1"), "{err}");
    });
}

#[test]
fn pulls_are_checked_against_changelog_floor_and_head() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (n1, n2) = pair(dir.path(), &["kv"], MIXED).await;
        for k in 1..=3 {
            exec(&n1, &format!("INSERT INTO kv (k) VALUES ({k})")).await.unwrap();
        }
        let log = n1.meta().await.unwrap().log;
        assert_eq!(n1.check_pull(None, 0, NodeId::Two).await.unwrap(), PullCheck::Serve);
        assert!(matches!(n1.check_pull(Some(log ^ 1), 0, NodeId::Two).await.unwrap(), PullCheck::Refuse(r) if r.contains("another changelog")));
        assert!(matches!(n1.check_pull(Some(log), 9, NodeId::Two).await.unwrap(), PullCheck::Refuse(r) if r.contains("ends at 3")));
        // A pull from 2 acknowledges 2 and prunes up to it.
        assert_eq!(n1.check_pull(Some(log), 2, NodeId::Two).await.unwrap(), PullCheck::Serve);
        assert_eq!(all_changes(&n1, 0).await.len(), 1);
        assert!(matches!(n1.check_pull(Some(log), 1, NodeId::Two).await.unwrap(), PullCheck::Refuse(r) if r.contains("no longer holds")));
        let _ = n2;
    });
}

/// The fencing check runs inside the batch's transaction, after its rows went in and
/// before the commit: refused there, nothing of the batch stays.
#[test]
fn a_batch_refused_by_the_fence_at_commit_leaves_nothing_behind() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (n1, n2) = pair(dir.path(), &["kv"], MIXED).await;
        for k in 1..=20 {
            exec(
                &n1,
                &format!("INSERT INTO kv (k, s) VALUES ({k}, 'row {k}')"),
            )
            .await
            .unwrap();
        }
        let m1 = n1.meta().await.unwrap();
        let batch = Batch {
            log: m1.log,
            prev: 0,
            changes: all_changes(&n1, 0).await,
        };
        let asked = std::sync::atomic::AtomicU32::new(0);
        let fenced = || {
            asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            crate::Fence::new(None, 9).admits(NodeId::One, Some(5))
        };
        let err = n2.apply_batch_gated(&batch, &fenced).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Fenced {
                    peer: NodeId::One,
                    token: Some(5),
                    floor: 9
                }
            ),
            "{err}"
        );
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM kv")
            .fetch_one(n2.pool())
            .await
            .unwrap();
        assert_eq!(rows, 0);
        let m2 = n2.meta().await.unwrap();
        assert_eq!((m2.applied_log, m2.applied), (None, 0));
        assert_eq!(m2.mode, meta::Mode::Standby);

        // Admitted, the same batch applies whole.
        let outcome = n2.apply_batch_gated(&batch, &|| Ok(())).await.unwrap();
        assert!(
            matches!(outcome, ApplyOutcome::Applied { last: 20, .. }),
            "{outcome:?}"
        );
        assert_eq!(
            n1.table_checksums().await.unwrap(),
            n2.table_checksums().await.unwrap()
        );
    });
}

#[test]
fn a_node_holding_unacknowledged_changes_does_not_apply_the_peers() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (n1, n2) = pair(dir.path(), &["kv"], MIXED).await;
        exec(&n1, "INSERT INTO kv (k, s) VALUES (1, 'from node 1')")
            .await
            .unwrap();
        // node 1 is demoted before node 2 got its change; node 2 is promoted and writes.
        n1.demote().await.unwrap();
        n2.promote().await.unwrap();
        exec(&n2, "INSERT INTO kv (k, s) VALUES (1, 'from node 2')")
            .await
            .unwrap();
        let m2 = n2.meta().await.unwrap();
        let batch = Batch {
            log: m2.log,
            prev: 0,
            changes: all_changes(&n2, 0).await,
        };
        let err = n1.apply_batch(&batch).await.unwrap_err();
        assert!(err.to_string().contains("diverged"), "{err}");
        let rows: Vec<String> = sqlx::query_scalar("SELECT s FROM kv")
            .fetch_all(n1.pool())
            .await
            .unwrap();
        assert_eq!(rows, ["from node 1"]);
    });
}

/// Streams a snapshot of `n1` for `n2` (chunks of `chunk` bytes) and finishes it on
/// `n2`.
async fn from_sync(n1: &SqliteBackend, n2: &SqliteBackend, chunk: usize) -> sync::SyncOutcome {
    let m2 = n2.meta().await.unwrap();
    let mut reader = n1.start_snapshot(9, m2.log, m2.head, chunk).await.unwrap();
    let mut stage = None;
    let mut rows_sent = None;
    while let Some(msg) = reader.next().await {
        match msg.unwrap() {
            Message::SnapshotBegin {
                id,
                log,
                position,
                tables,
                rows,
            } => {
                assert_eq!(id, 9);
                stage = Some(
                    n2.begin_sync(id, log, position, &tables, rows)
                        .await
                        .unwrap(),
                );
            }
            Message::SnapshotRows { table, rows, .. } => {
                stage.as_mut().unwrap().rows(&table, &rows).await.unwrap();
            }
            Message::SnapshotEnd { rows, .. } => rows_sent = Some(rows),
            other => panic!("unexpected {other:?}"),
        }
    }
    stage
        .unwrap()
        .finish(n2, rows_sent.unwrap(), NodeId::One)
        .await
        .unwrap()
}

/// Thousands of rows (so that statements of many rows, and their remainders, stage
/// and copy them), with every storage class, and node 2's own change among them.
#[test]
fn a_from_sync_of_many_rows_copies_every_one_and_saves_the_changed_one() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (n1, n2) = pair(dir.path(), &["kv", "pair"], MIXED).await;
        exec(
            &n1,
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 3001) \
             INSERT INTO kv (k, s, r, x, n) SELECT i, 'row ' || i, i / 7.0, randomblob(i % 5), \
             CASE i % 3 WHEN 0 THEN NULL WHEN 1 THEN i ELSE 0.1 * i END FROM c",
        )
        .await
        .unwrap();
        exec(
            &n1,
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 517) \
             INSERT INTO pair (a, b, v) SELECT 'a' || (i % 10), i, zeroblob(i % 3) FROM c",
        )
        .await
        .unwrap();
        ship(&n1, &n2).await;
        n2.promote().await.unwrap();
        exec(&n2, "UPDATE kv SET s = 'mine' WHERE k = 2000")
            .await
            .unwrap();
        exec(&n2, "DELETE FROM kv WHERE k > 2990").await.unwrap();
        n2.demote().await.unwrap();
        exec(&n1, "UPDATE kv SET s = 'theirs' WHERE k = 1000")
            .await
            .unwrap();

        let outcome = from_sync(&n1, &n2, 50_000).await;
        assert_eq!(outcome.copied, 3001 + 517);
        // The update of row 2000 and the eleven deletes were node 2's.
        assert_eq!(outcome.saved, 12);
        assert_eq!(
            n1.table_checksums().await.unwrap(),
            n2.table_checksums().await.unwrap()
        );
    });
}

#[test]
fn from_sync_copies_the_snapshot_and_saves_the_local_only_rows() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (n1, n2) = pair(dir.path(), &["kv", "pair"], MIXED).await;
        exec(
            &n1,
            "INSERT INTO kv (k, s) VALUES (1, 'same'), (2, 'theirs'), (3, 'only on 1')",
        )
        .await
        .unwrap();
        exec(&n1, "INSERT INTO pair (a, b, v) VALUES ('p', 1, x'00')")
            .await
            .unwrap();
        ship(&n1, &n2).await;
        // Split brain: node 2 becomes writable and writes on its own.
        n2.promote().await.unwrap();
        exec(&n2, "UPDATE kv SET s = 'mine' WHERE k = 2")
            .await
            .unwrap();
        exec(&n2, "INSERT INTO kv (k, s) VALUES (4, 'only on 2')")
            .await
            .unwrap();
        exec(&n2, "INSERT INTO pair (a, b, v) VALUES ('q', 2, 'x')")
            .await
            .unwrap();
        exec(&n2, "DELETE FROM pair WHERE a = 'p'").await.unwrap();
        exec(&n1, "DELETE FROM kv WHERE k = 1").await.unwrap();
        n2.demote().await.unwrap();
        let m2 = n2.meta().await.unwrap();
        assert!(m2.head > m2.acked);

        let outcome = from_sync(&n1, &n2, 64).await;
        assert_eq!(outcome.copied, 3);
        assert_eq!(
            n1.table_checksums().await.unwrap(),
            n2.table_checksums().await.unwrap()
        );
        let file = outcome.file.unwrap();
        assert!(
            file.starts_with(dir.path().join("node2")),
            "{}",
            file.display()
        );
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let summary: Vec<(String, String, String, String)> = lines
            .iter()
            .map(|l| {
                (
                    l["table"].as_str().unwrap().to_owned(),
                    l["key"].to_string(),
                    l["local"].to_string(),
                    l["peer"].to_string(),
                )
            })
            .collect();
        let json = |t: &str| {
            serde_json::from_str::<serde_json::Value>(t)
                .unwrap()
                .to_string()
        };
        // Node 2's own changes: an update, an insert in each table and a delete. Row 1,
        // which node 1 deleted meanwhile, is not node 2's change and is not saved.
        let expected = [
            (
                "kv",
                r#"{"k":2}"#,
                r#"{"k":2,"s":"mine","r":null,"x":null,"n":null}"#,
                r#"{"k":2,"s":"theirs","r":null,"x":null,"n":null}"#,
            ),
            (
                "kv",
                r#"{"k":4}"#,
                r#"{"k":4,"s":"only on 2","r":null,"x":null,"n":null}"#,
                "null",
            ),
            (
                "pair",
                r#"{"a":"p","b":1}"#,
                "null",
                r#"{"a":"p","b":1,"v":{"$blob":"00"}}"#,
            ),
            (
                "pair",
                r#"{"a":"q","b":2}"#,
                r#"{"a":"q","b":2,"v":"x"}"#,
                "null",
            ),
        ];
        let expected: Vec<(String, String, String, String)> = expected
            .iter()
            .map(|(a, b, c, d)| ((*a).to_owned(), json(b), json(c), json(d)))
            .collect();
        assert_eq!(summary, expected);
        assert_eq!(outcome.saved, 4);
        // Positions: node 2 follows node 1 from the snapshot; node 1 skips node 2's old changes.
        let (m1, m2) = (n1.meta().await.unwrap(), n2.meta().await.unwrap());
        assert_eq!((m2.applied_log, m2.applied), (Some(m1.log), m1.head));
        assert_eq!((m2.acked, m2.floor), (m2.head, m2.head));
        assert_eq!((m2.state, m2.writable), (ReplicationState::Active, false));
        assert_eq!((m1.applied_log, m1.applied), (Some(m2.log), m2.head));
        // And streaming continues from there.
        exec(&n1, "INSERT INTO kv (k, s) VALUES (5, 'after')")
            .await
            .unwrap();
        let batch = Batch {
            log: m1.log,
            prev: m1.head,
            changes: all_changes(&n1, m1.head).await,
        };
        n2.apply_batch(&batch).await.unwrap();
        assert_eq!(
            n1.table_checksums().await.unwrap(),
            n2.table_checksums().await.unwrap()
        );

        // Step 13: the saved rows go back on the active node with one command. Not on
        // the standby.
        let err = n2.restore_local_rows(&file, false).await.unwrap_err();
        assert!(err.to_string().contains("standby"), "{err}");
        let names = |rows: &[crate::SavedRow]| -> Vec<String> {
            rows.iter()
                .map(|r| format!("{} {}", r.table, r.key))
                .collect()
        };
        let before = n1.table_checksums().await.unwrap();
        let dry = n1.restore_local_rows(&file, true).await.unwrap();
        assert_eq!(n1.table_checksums().await.unwrap(), before, "a dry run");
        let report = n1.restore_local_rows(&file, false).await.unwrap();
        assert_eq!(report.restored, dry.restored);
        assert_eq!(
            names(&report.restored),
            [r#"kv {"k":4}"#, r#"pair {"a":"q","b":2}"#]
        );
        assert_eq!(names(&report.deleted_locally), [r#"pair {"a":"p","b":1}"#]);
        assert!(report.already_present.is_empty());
        // Key 2 holds node 1's row now: reported with both rows, not overwritten.
        let conflicts: Vec<String> = report
            .conflicts
            .iter()
            .map(|c| format!("{} {} {} {}", c.table, c.key, c.saved["s"], c.current["s"]))
            .collect();
        assert_eq!(conflicts, [r#"kv {"k":2} "mine" "theirs""#]);
        let s: Vec<String> = sqlx::query_scalar("SELECT s FROM kv ORDER BY k")
            .fetch_all(n1.pool())
            .await
            .unwrap();
        assert_eq!(s, ["theirs", "only on 1", "only on 2", "after"]);
        // Captured like the application's writes: the standby gets them.
        let prev = n2.meta().await.unwrap().applied;
        let batch = Batch {
            log: m1.log,
            prev,
            changes: all_changes(&n1, prev).await,
        };
        assert_eq!(batch.changes.len(), 2);
        n2.apply_batch(&batch).await.unwrap();
        assert_eq!(
            n1.table_checksums().await.unwrap(),
            n2.table_checksums().await.unwrap()
        );
        // Run again: nothing left to insert.
        let again = n1.restore_local_rows(&file, false).await.unwrap();
        assert!(again.restored.is_empty(), "{again:?}");
        assert_eq!(again.already_present.len(), 2);
        assert_eq!(again.conflicts.len(), 1);
    });
}

/// A value of the mixed tables.
#[derive(Debug, Clone)]
enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    fn sql(&self) -> String {
        match self {
            Value::Null => "NULL".into(),
            Value::Int(i) => i.to_string(),
            Value::Real(r) => format!("{r:e}"),
            Value::Text(t) => schema::literal(t),
            Value::Blob(b) => format!("x'{}'", hex::encode(b)),
        }
    }
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::Int),
        (-1e6f64..1e6).prop_map(Value::Real),
        "[a-z'\" ü\\\\]{0,8}".prop_map(Value::Text),
        proptest::collection::vec(any::<u8>(), 0..6).prop_map(Value::Blob),
    ]
}

/// One application statement on the source.
#[derive(Debug, Clone)]
enum Op {
    Insert(u8, Value),
    Replace(u8, Value),
    Update(u8, Value),
    MoveKey(u8, u8),
    Delete(u8),
    PairInsert(u8, Value),
    PairDelete(u8),
}

impl Op {
    fn sql(&self) -> String {
        match self {
            Op::Insert(k, v) => format!("INSERT INTO kv (k, s, n) VALUES ({k}, 'i', {})", v.sql()),
            Op::Replace(k, v) => {
                format!("INSERT OR REPLACE INTO kv (k, x) VALUES ({k}, {})", v.sql())
            }
            Op::Update(k, v) => {
                format!("UPDATE kv SET n = {}, r = random() WHERE k = {k}", v.sql())
            }
            Op::MoveKey(k, to) => format!("UPDATE kv SET k = {to} WHERE k = {k}"),
            Op::Delete(k) => format!("DELETE FROM kv WHERE k = {k}"),
            Op::PairInsert(b, v) => format!(
                "INSERT OR REPLACE INTO pair (a, b, v) VALUES ('a{}', {b}, {})",
                b % 3,
                v.sql()
            ),
            Op::PairDelete(b) => format!("DELETE FROM pair WHERE b = {b}"),
        }
    }
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0u8..12;
    prop_oneof![
        (key.clone(), value()).prop_map(|(k, v)| Op::Insert(k, v)),
        (key.clone(), value()).prop_map(|(k, v)| Op::Replace(k, v)),
        (key.clone(), value()).prop_map(|(k, v)| Op::Update(k, v)),
        (key.clone(), key.clone()).prop_map(|(k, t)| Op::MoveKey(k, t)),
        key.clone().prop_map(Op::Delete),
        (key.clone(), value()).prop_map(|(k, v)| Op::PairInsert(k, v)),
        key.prop_map(Op::PairDelete),
    ]
}

/// What the network and the processes do to the batches.
#[derive(Debug, Clone)]
enum Delivery {
    /// Deliver batch i (any batch, in any order, any number of times).
    Batch(prop::sample::Index),
    /// Restart the standby (close and reopen its database).
    Restart,
}

fn delivery() -> impl Strategy<Value = Delivery> {
    prop_oneof![
        4 => any::<prop::sample::Index>().prop_map(Delivery::Batch),
        1 => Just(Delivery::Restart),
    ]
}

/// Delivers one batch and checks that it was applied, skipped as a duplicate, or refused
/// as a gap without any change.
async fn deliver(sink: &SqliteBackend, batch: &Batch) {
    let before = sink.table_checksums().await.unwrap();
    let applied = sink.meta().await.unwrap().applied;
    match sink.apply_batch(batch).await {
        Ok(ApplyOutcome::Applied { last, .. }) => assert_eq!(last, batch.last()),
        Ok(ApplyOutcome::Duplicate { applied: a }) => {
            assert!(batch.last() <= a);
            assert_eq!(sink.table_checksums().await.unwrap(), before);
        }
        Err(Error::Gap { prev, applied: a }) => {
            assert_eq!((prev, a), (batch.prev, applied));
            assert_eq!(sink.table_checksums().await.unwrap(), before);
            assert_eq!(sink.meta().await.unwrap().applied, applied);
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any interleaving of batches, duplicates and restarts yields the source's tables:
    /// batches that would leave a gap are refused without changing anything.
    #[test]
    fn any_delivery_order_yields_the_source_tables(
        transactions in proptest::collection::vec(proptest::collection::vec(op(), 1..6), 1..10),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        deliveries in proptest::collection::vec(delivery(), 0..24),
    ) {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let (n1, n2) = pair(dir.path(), &["kv", "pair"], MIXED).await;
            for tx in &transactions {
                let mut conn = n1.conn().await.unwrap();
                sqlx::query("BEGIN").execute(&mut *conn).await.unwrap();
                for op in tx {
                    // Statements that break a constraint fail alone, as in an application.
                    let _ = sqlx::query(AssertSqlSafe(op.sql())).execute(&mut *conn).await;
                }
                sqlx::query("COMMIT").execute(&mut *conn).await.unwrap();
            }
            let m1 = n1.meta().await.unwrap();
            let changes = all_changes(&n1, 0).await;
            // Cut the changelog into consecutive batches.
            let mut bounds: Vec<usize> = cuts.iter().map(|c| c.index(changes.len() + 1)).collect();
            bounds.push(0);
            bounds.push(changes.len());
            bounds.sort_unstable();
            bounds.dedup();
            let batches: Vec<Batch> = bounds
                .windows(2)
                .map(|w| {
                    let prev = if w[0] == 0 { 0 } else { changes[w[0] - 1].seq };
                    Batch { log: m1.log, prev, changes: changes[w[0]..w[1]].to_vec() }
                })
                .collect();
            if batches.is_empty() {
                return;
            }
            let mut sink = n2;
            for d in &deliveries {
                match d {
                    Delivery::Batch(i) => deliver(&sink, &batches[i.index(batches.len())]).await,
                    Delivery::Restart => {
                        sink.close().await;
                        sink = open(dir.path(), "node2", &["kv", "pair"], &[]).await;
                    }
                }
            }
            // Finally the stream resumes in order from where the standby stands.
            for b in &batches {
                deliver(&sink, b).await;
            }
            assert_eq!(sink.meta().await.unwrap().applied, m1.head);
            assert_eq!(n1.table_checksums().await.unwrap(), sink.table_checksums().await.unwrap());
        });
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Every double (NaN aside, which SQLite stores as NULL) arrives with the same bits.
    #[test]
    fn reals_replicate_bit_exactly(reals in proptest::collection::vec(any::<f64>(), 1..60)) {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let (n1, n2) = pair(dir.path(), &["kv"], MIXED).await;
            {
                let mut conn = n1.conn().await.unwrap();
                for (i, r) in reals.iter().enumerate() {
                    sqlx::query("INSERT INTO kv (k, r) VALUES (?1, ?2)")
                        .bind(i64::try_from(i).unwrap())
                        .bind(r)
                        .execute(&mut *conn)
                        .await
                        .unwrap();
                }
            }
            ship(&n1, &n2).await;
            let read = |b: &SqliteBackend| {
                let pool = b.pool().clone();
                async move {
                    let rows: Vec<Option<f64>> = sqlx::query_scalar("SELECT r FROM kv ORDER BY k")
                        .fetch_all(&pool)
                        .await
                        .unwrap();
                    rows.into_iter().map(|r| r.map(f64::to_bits)).collect::<Vec<_>>()
                }
            };
            assert_eq!(read(&n1).await, read(&n2).await);
        });
    }
}

const PARENT_CHILD: &[&str] = &[
    "CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT)",
    "CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER NOT NULL REFERENCES parent (id))",
];

fn change(seq: u64, table: &str, id: i64, row: String) -> Change {
    Change {
        seq,
        table: table.to_owned(),
        op: crate::wire::Op::Insert,
        pk: format!(r#"{{"id":{id}}}"#),
        row: Some(row),
        ts_ms: 0,
    }
}

#[test]
fn a_batch_consistent_only_as_a_whole_applies_with_deferred_foreign_keys() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let (n1, n2) = pair(dir.path(), &["parent", "child"], PARENT_CHILD).await;
        let log = n1.meta().await.unwrap().log;
        // The child comes first: checked row by row this breaks the foreign key;
        // at the commit the parent is there.
        let batch = Batch {
            log,
            prev: 0,
            changes: vec![
                change(1, "child", 1, r#"{"id":1,"parent_id":7}"#.to_owned()),
                change(2, "parent", 7, r#"{"id":7,"name":"p"}"#.to_owned()),
            ],
        };
        let outcome = n2.apply_batch(&batch).await.unwrap();
        assert_eq!(
            outcome,
            ApplyOutcome::Applied {
                last: 2,
                changes: 2
            }
        );
        let rows: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM child JOIN parent ON parent.id = child.parent_id",
        )
        .fetch_one(&mut *n2.conn().await.unwrap())
        .await
        .unwrap();
        assert_eq!(rows, 1);

        // A child whose parent never comes is refused as a whole: nothing applied.
        let broken = Batch {
            log,
            prev: 2,
            changes: vec![
                change(3, "parent", 8, r#"{"id":8,"name":"q"}"#.to_owned()),
                change(4, "child", 2, r#"{"id":2,"parent_id":99}"#.to_owned()),
            ],
        };
        let err = crate::chain(&n2.apply_batch(&broken).await.unwrap_err());
        assert!(err.contains("FOREIGN KEY"), "{err}");
        assert_eq!(n2.meta().await.unwrap().applied, 2);
        let parents: i64 = sqlx::query_scalar("SELECT count(*) FROM parent")
            .fetch_one(&mut *n2.conn().await.unwrap())
            .await
            .unwrap();
        assert_eq!(parents, 1);
    });
}

/// Three linked tables, declared children first: `CASCADE` over two levels and
/// `SET NULL` foreign keys, unique columns and a `NOCASE` text key.
const LINKED: &[&str] = &[
    "CREATE TABLE grp (id INTEGER PRIMARY KEY, name TEXT UNIQUE)",
    "CREATE TABLE usr (id INTEGER PRIMARY KEY, login TEXT UNIQUE COLLATE NOCASE, \
     grp INTEGER REFERENCES grp (id) ON DELETE CASCADE)",
    "CREATE TABLE mtg (id TEXT PRIMARY KEY COLLATE NOCASE, \
     owner INTEGER NOT NULL REFERENCES usr (id) ON DELETE CASCADE, \
     backup INTEGER REFERENCES usr (id) ON DELETE SET NULL, title TEXT)",
];
const LINKED_TABLES: &[&str] = &["mtg", "usr", "grp"];

/// One application statement on the linked tables.
#[derive(Debug, Clone)]
enum LinkedOp {
    Group(u8, u8),
    DropGroup(u8),
    User(u8, u8, u8),
    MoveUser(u8, u8),
    Login(u8, u8),
    DropUser(u8),
    Meeting(u8, bool, u8),
    ReplaceMeeting(u8, u8),
    Rename(u8, bool),
    DropMeeting(u8, bool),
}

impl LinkedOp {
    fn sql(&self) -> String {
        // Meeting keys differ only in case: `NOCASE` makes them one key.
        let key = |k: &u8, upper: &bool| {
            if *upper {
                format!("'M{k}'")
            } else {
                format!("'m{k}'")
            }
        };
        match self {
            LinkedOp::Group(k, n) => format!("INSERT INTO grp (id, name) VALUES ({k}, 'g{n}')"),
            LinkedOp::DropGroup(k) => format!("DELETE FROM grp WHERE id = {k}"),
            LinkedOp::User(k, l, g) => {
                format!("INSERT INTO usr (id, login, grp) VALUES ({k}, 'u{l}', {g})")
            }
            LinkedOp::MoveUser(k, g) => format!("UPDATE usr SET grp = {g} WHERE id = {k}"),
            LinkedOp::Login(k, l) => format!("UPDATE usr SET login = 'U{l}' WHERE id = {k}"),
            LinkedOp::DropUser(k) => format!("DELETE FROM usr WHERE id = {k}"),
            LinkedOp::Meeting(k, upper, o) => format!(
                "INSERT INTO mtg (id, owner, backup, title) VALUES ({}, {o}, {}, 'new')",
                key(k, upper),
                (o + 1) % 5
            ),
            LinkedOp::ReplaceMeeting(k, o) => format!(
                "INSERT OR REPLACE INTO mtg (id, owner, backup, title) \
                 VALUES ('m{k}', {o}, {}, 'replaced')",
                (o + 2) % 5
            ),
            LinkedOp::Rename(k, upper) => format!(
                "UPDATE mtg SET title = title || '+' WHERE id = {}",
                key(k, upper)
            ),
            LinkedOp::DropMeeting(k, upper) => {
                format!("DELETE FROM mtg WHERE id = {}", key(k, upper))
            }
        }
    }
}

fn linked_op() -> impl Strategy<Value = LinkedOp> {
    let k = || 0u8..3;
    prop_oneof![
        3 => (k(), k()).prop_map(|(a, b)| LinkedOp::Group(a, b)),
        1 => k().prop_map(LinkedOp::DropGroup),
        3 => (k(), k(), k()).prop_map(|(a, b, c)| LinkedOp::User(a, b, c)),
        2 => (k(), k()).prop_map(|(a, b)| LinkedOp::MoveUser(a, b)),
        2 => (k(), k()).prop_map(|(a, b)| LinkedOp::Login(a, b)),
        1 => k().prop_map(LinkedOp::DropUser),
        4 => (k(), any::<bool>(), k()).prop_map(|(a, b, c)| LinkedOp::Meeting(a, b, c)),
        2 => (k(), k()).prop_map(|(a, b)| LinkedOp::ReplaceMeeting(a, b)),
        2 => (k(), any::<bool>()).prop_map(|(a, b)| LinkedOp::Rename(a, b)),
        3 => (k(), any::<bool>()).prop_map(|(a, b)| LinkedOp::DropMeeting(a, b)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Batches over linked tables, applied table by table where the planner allows it
    /// and in commit order where it does not, yield the source's tables.
    #[test]
    fn linked_tables_replicate_whatever_the_apply_order(
        transactions in proptest::collection::vec(proptest::collection::vec(linked_op(), 1..8), 1..12),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 1..5),
    ) {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let (n1, n2) = pair(dir.path(), LINKED_TABLES, LINKED).await;
            for tx in &transactions {
                let mut conn = n1.conn().await.unwrap();
                sqlx::query("BEGIN").execute(&mut *conn).await.unwrap();
                for op in tx {
                    // Statements that break a constraint fail alone, as in an application.
                    let _ = sqlx::query(AssertSqlSafe(op.sql())).execute(&mut *conn).await;
                }
                sqlx::query("COMMIT").execute(&mut *conn).await.unwrap();
            }
            let m1 = n1.meta().await.unwrap();
            let changes = all_changes(&n1, 0).await;
            let mut bounds: Vec<usize> = cuts.iter().map(|c| c.index(changes.len() + 1)).collect();
            bounds.push(0);
            bounds.push(changes.len());
            bounds.sort_unstable();
            bounds.dedup();
            for w in bounds.windows(2) {
                let prev = if w[0] == 0 { 0 } else { changes[w[0] - 1].seq };
                let batch = Batch { log: m1.log, prev, changes: changes[w[0]..w[1]].to_vec() };
                deliver(&n2, &batch).await;
            }
            assert_eq!(n2.meta().await.unwrap().applied, m1.head);
            assert_eq!(n1.table_checksums().await.unwrap(), n2.table_checksums().await.unwrap());
        });
    }
}

/// Runs `sql` on node 1 as one transaction each and ships the changes to node 2 as
/// one batch per call.
async fn write_and_ship(n1: &SqliteBackend, n2: &SqliteBackend, sql: &[&str]) {
    for s in sql {
        exec(n1, s).await.unwrap();
    }
    ship(n1, n2).await;
    assert_eq!(
        n1.table_checksums().await.unwrap(),
        n2.table_checksums().await.unwrap()
    );
}

#[test]
fn a_batch_that_moves_a_child_away_and_deletes_its_parent_applies_in_commit_order() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let (n1, n2) = pair(dir.path(), LINKED_TABLES, LINKED).await;
        write_and_ship(
            &n1,
            &n2,
            &[
                "INSERT INTO grp (id, name) VALUES (1, 'a'), (2, 'b')",
                "INSERT INTO usr (id, login, grp) VALUES (1, 'u1', 1), (2, 'u2', 2)",
                "INSERT INTO mtg (id, owner, backup, title) VALUES ('m1', 1, 2, 't')",
            ],
        )
        .await;
        // Table by table, the delete of group 1 would go first and cascade to user 1
        // and on to m1; the batch's upsert of user 1 brings the user back, but
        // nothing in it brings m1 back.
        write_and_ship(
            &n1,
            &n2,
            &[
                "UPDATE usr SET grp = 2 WHERE id = 1",
                "DELETE FROM grp WHERE id = 1",
            ],
        )
        .await;
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM mtg WHERE owner = 1")
            .fetch_one(&mut *n2.conn().await.unwrap())
            .await
            .unwrap();
        assert_eq!(left, 1);
    });
}

#[test]
fn the_apply_order_follows_foreign_keys_and_stops_at_a_trigger() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let b = open(dir.path(), "node", LINKED_TABLES, LINKED).await;
        let tables = b.tables().await.unwrap();
        let mut conn = b.conn().await.unwrap();
        let links = b.links(&mut conn, &tables).await.unwrap();
        // Declared mtg, usr, grp: applied grp, usr, mtg; mtg is nobody's parent.
        assert_eq!(links.order, Some(vec![2, 1, 0]));
        assert_eq!(links.parent, vec![false, true, true]);
        // An application trigger may read any table: commit order from now on.
        sqlx::query("CREATE TRIGGER audit AFTER INSERT ON usr BEGIN SELECT 1; END")
            .execute(&mut *conn)
            .await
            .unwrap();
        let links = b.links(&mut conn, &tables).await.unwrap();
        assert_eq!(links.order, None);
    });
}

#[test]
fn the_shared_writer_is_one_connection_and_drops_an_unfinished_transaction() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (n1, n2) = pair(dir.path(), &["kv", "pair"], MIXED).await;
        // A writer that lets go in the middle of a transaction leaves nothing behind.
        {
            let mut conn = n1.writer().await.unwrap();
            let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
            sqlx::query("INSERT INTO kv (k, s) VALUES (1, 'never committed')")
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        // Concurrent writers take turns on one connection, each for a whole transaction.
        let write = |k: i64| {
            let n1 = &n1;
            async move {
                let mut conn = n1.writer().await.unwrap();
                assert!(!sqlx::Connection::is_in_transaction(&*conn));
                let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
                for i in 0..3 {
                    sqlx::query("INSERT INTO kv (k, s) VALUES (?1, 'x')")
                        .bind(k * 10 + i)
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                    tokio::task::yield_now().await;
                }
                tx.commit().await.unwrap();
            }
        };
        futures::future::join_all((2..10).map(write)).await;
        assert_eq!(
            n1.writer.size(),
            1,
            "the writers opened more than one connection"
        );
        let rows: Vec<(i64, String)> = sqlx::query_as("SELECT k, s FROM kv ORDER BY k")
            .fetch_all(n1.pool())
            .await
            .unwrap();
        assert_eq!(rows.len(), 24, "{rows:?}");
        assert!(rows.iter().all(|(k, _)| *k >= 20), "{rows:?}");
        // What went through the shared writer was captured and replicates.
        ship(&n1, &n2).await;
        assert_eq!(
            n1.table_checksums().await.unwrap(),
            n2.table_checksums().await.unwrap()
        );
        n1.close().await;
    });
}

/// What happens to node 1's changelog in `changelog_positions_survive_pruning`.
#[derive(Debug, Clone)]
enum LogStep {
    /// That many rows written, one transaction.
    Write(u8),
    /// The peer acknowledges the position this far between the floor and the head
    /// (0: the floor, 255: the head), which prunes up to it.
    Ack(u8),
    /// Replication switched off, a row written uncaptured, switched on again: the
    /// head moves on by one without an entry and everything is pruned.
    OffAndOn,
}

fn log_step() -> impl Strategy<Value = LogStep> {
    prop_oneof![
        3 => (1u8..5).prop_map(LogStep::Write),
        2 => any::<u8>().prop_map(LogStep::Ack),
        1 => Just(LogStep::OffAndOn),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]

    /// Without AUTOINCREMENT the changelog still numbers changes for good: whatever
    /// was pruned (up to the head, or the head bumped past it), the head never goes
    /// back, every new change is numbered past every earlier head, and a pull from the
    /// floor sees exactly the changes written since it (no placeholder).
    #[test]
    fn changelog_positions_survive_pruning(steps in proptest::collection::vec(log_step(), 1..12)) {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let (n1, _n2) = pair(dir.path(), &["kv"], MIXED).await;
            let (mut head, mut key) = (0u64, 0u64);
            // The sequence numbers of the changes not pruned yet.
            let mut held: Vec<u64> = Vec::new();
            for step in &steps {
                match step {
                    LogStep::Write(n) => {
                        let mut conn = n1.conn().await.unwrap();
                        sqlx::query("BEGIN").execute(&mut *conn).await.unwrap();
                        for _ in 0..*n {
                            key += 1;
                            sqlx::query(AssertSqlSafe(format!("INSERT INTO kv (k, r) VALUES ({key}, 0.1)")))
                                .execute(&mut *conn).await.unwrap();
                        }
                        sqlx::query("COMMIT").execute(&mut *conn).await.unwrap();
                        let m = n1.meta().await.unwrap();
                        assert_eq!(m.head, head + u64::from(*n), "after {step:?}");
                        held.extend(head + 1..=m.head);
                    }
                    LogStep::Ack(at) => {
                        let m = n1.meta().await.unwrap();
                        let low = m.acked.max(m.floor);
                        let to = low + (m.head - low) * u64::from(*at) / 255;
                        n1.record_ack(m.log, to).await.unwrap();
                        held.retain(|s| *s > to.max(low));
                    }
                    LogStep::OffAndOn => {
                        n1.switch_local(false).await.unwrap();
                        key += 1;
                        exec(&n1, &format!("INSERT INTO kv (k) VALUES ({key})")).await.unwrap();
                        n1.switch_local(true).await.unwrap();
                        let m = n1.meta().await.unwrap();
                        assert_eq!((m.head, m.floor), (head + 1, head + 1), "after {step:?}");
                        held.clear();
                    }
                }
                let m = n1.meta().await.unwrap();
                assert!(m.head >= head && m.head >= m.floor, "{m:?} after {step:?}");
                head = m.head;
                let seen: Vec<u64> = all_changes(&n1, m.floor.max(m.acked)).await.iter().map(|c| c.seq).collect();
                assert_eq!(seen, held, "after {step:?}");
            }
        });
    }
}

/// A database of format 1 (changelog numbered by AUTOINCREMENT, its head in
/// `sqlite_sequence`) is refused with the way out, and `init` again upgrades it
/// keeping the head, pruned or not.
#[test]
fn init_upgrades_a_changelog_of_format_1() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (n1, _n2) = pair(dir.path(), &["kv"], MIXED).await;
        for k in 1..=5 {
            exec(&n1, &format!("INSERT INTO kv (k, r) VALUES ({k}, 0.5)")).await.unwrap();
        }
        // Format 1 as an older tandem left it: entries 4 and 5 held, head 7 (two more
        // entries were written and pruned, or the head bumped).
        for sql in [
            "DELETE FROM _tandem_changelog WHERE seq <= 3",
            "DELETE FROM _tandem_reals WHERE seq <= 3",
            "ALTER TABLE _tandem_changelog RENAME TO old_log",
            "CREATE TABLE _tandem_changelog (seq INTEGER PRIMARY KEY AUTOINCREMENT, tbl TEXT NOT NULL, op TEXT NOT NULL, pk TEXT NOT NULL, row TEXT, ts INTEGER NOT NULL)",
            "INSERT INTO _tandem_changelog SELECT * FROM old_log",
            "DROP TABLE old_log",
            "UPDATE sqlite_sequence SET seq = 7 WHERE name = '_tandem_changelog'",
            "UPDATE _tandem_meta SET value = '1' WHERE key = 'format'",
            "UPDATE _tandem_meta SET value = '3' WHERE key IN ('acked', 'floor')",
        ] {
            exec(&n1, sql).await.unwrap();
        }
        let err = n1.meta().await.unwrap_err();
        assert!(err.to_string().contains("run `mp_replication init` again"), "{err}");
        init(&n1, NodeId::One).await;
        let m = n1.meta().await.unwrap();
        assert_eq!((m.head, m.floor, m.state), (7, 3, ReplicationState::Active));
        let held: Vec<u64> = all_changes(&n1, 3).await.iter().map(|c| c.seq).collect();
        assert_eq!(held, [4, 5]);
        exec(&n1, "INSERT INTO kv (k, r) VALUES (6, 0.25)").await.unwrap();
        let changes = all_changes(&n1, 7).await;
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].seq, 8);
        assert!(changes[0].row.as_deref().is_some_and(|r| r.contains("0.25")));
        let mut conn = n1.conn().await.unwrap();
        let (autoinc, sequences): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM sqlite_master WHERE name = '_tandem_changelog' AND sql LIKE '%AUTOINCREMENT%'), \
                    (SELECT count(*) FROM sqlite_sequence WHERE name = '_tandem_changelog')",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        assert_eq!((autoinc, sequences), (0, 0));
    });
}

#[test]
fn a_waiter_takes_the_services_look_only_when_it_came_after_the_wait_began() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (n1, _n2) = pair(dir.path(), &["kv", "pair"], MIXED).await;
        exec(&n1, "INSERT INTO kv (k, s) VALUES (1, 'x')")
            .await
            .unwrap();
        let m = n1.meta().await.unwrap();
        let position = Position(m.head);
        // Replication is switched off here after the write: a wait must now refuse
        // unless a look that began after it found replication on.
        n1.switch_local(false).await.unwrap();
        let limit = Duration::from_secs(5);

        // A look from before the wait (as a service that looked before the switch
        // wrote it): the waiter looks itself and finds replication off.
        n1.publish_ack(m.log, m.head, m.head, mono_ns()).unwrap();
        let err = n1
            .wait_replicated_at(position, AckLevel::Received, limit)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotReplicating { .. }), "{err}");

        // No look at all (0): the same.
        n1.publish_ack(m.log, m.head, m.head, 0).unwrap();
        let err = n1
            .wait_replicated_at(position, AckLevel::Received, limit)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotReplicating { .. }), "{err}");

        // A look that began after the wait did counts as the waiter's own, even though
        // the database would say otherwise now (the service writes a look only when it
        // found replication on). A time ahead of now stands for a look that came after.
        let later = mono_ns() + 60_000_000_000;
        n1.publish_ack(m.log, m.head, m.head, later).unwrap();
        // Waiters read the file through the backend's watch: let it catch up first.
        if let Some(Some(watch)) = n1.ack_watch.get() {
            let mut rx = watch.subscribe();
            tokio::time::timeout(limit, async {
                while rx.borrow_and_update().map(|p| p.looked) != Some(later) {
                    rx.changed().await.expect("the watch is alive");
                }
            })
            .await
            .expect("the watch saw the look");
        }
        let waited = n1
            .wait_replicated_at(position, AckLevel::Received, limit)
            .await;
        waited.expect("a covering acknowledgement with a look after the wait began");
    });
}
