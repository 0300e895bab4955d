//! from-sync: the provider streams a consistent snapshot of its declared tables from one
//! read transaction; the receiver stages it in a temporary table, saves the rows it
//! changed that the peer never received (its unacknowledged changelog: rows it wrote,
//! and keys it deleted, where they differ from the snapshot) to a file, and then
//! replaces its tables, its positions and its own superseded changelog in one
//! transaction. Once that committed, the receiver acknowledges the snapshot's position
//! to the provider (a [`Message::Ack`]), which counts its backlog and its waiting
//! commits from there: its own acknowledged position may be far older (replication
//! was suspended past `max_backlog`), and its changelog below the snapshot is
//! superseded.
//!
//! Rows go into SQLite in statements of up to 256 rows each (every
//! statement is a round trip to the connection's worker thread, which cost more than
//! the row's own insert when each row had its own), the staging table is a rowid table
//! in arrival order with a unique index on the key, and only the local rows of the
//! unacknowledged keys are compared with the snapshot unless every difference must be
//! saved.

use std::path::PathBuf;
use std::sync::Arc;

use futures::TryStreamExt;
use serde_json::value::RawValue;
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, Connection, Sqlite};
use tokio::sync::mpsc;

use super::meta::{self, Mode};
use super::schema::{TableInfo, ident};
use super::{SqliteBackend, Tables};
use crate::error::{Error, Result};
use crate::status::ReplicationState;
use crate::util::{now_ms, timestamp_for_file, write_atomically};
use crate::wire::{Message, SnapshotRow};

/// Snapshot messages produced by a background reader, in order: `SnapshotBegin`, any
/// number of `SnapshotRows`, `SnapshotEnd` (or one error).
#[derive(Debug)]
pub(crate) struct SnapshotReader {
    rx: mpsc::Receiver<Result<Message>>,
}

impl SnapshotReader {
    /// The next message; `None` after the last.
    pub(crate) async fn next(&mut self) -> Option<Result<Message>> {
        self.rx.recv().await
    }
}

/// A snapshot being received.
#[derive(Debug)]
pub(crate) struct SyncStage {
    conn: PoolConnection<Sqlite>,
    pub(crate) id: u64,
    log: u64,
    position: u64,
    pub(crate) total: u64,
    pub(crate) received: u64,
}

/// What a finished from-sync did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyncOutcome {
    /// Rows copied from the peer.
    pub(crate) copied: u64,
    /// Local rows saved to the file because the peer did not have them (or had them
    /// differently).
    pub(crate) saved: u64,
    /// The file, if rows were saved.
    pub(crate) file: Option<PathBuf>,
    /// The peer's changelog and the position of it that the snapshot holds (now
    /// applied here).
    pub(crate) log: u64,
    pub(crate) position: u64,
}

impl SqliteBackend {
    /// Starts streaming a snapshot for sync request `id` from node `requester`, whose
    /// changelog `requester_log` up to `requester_head` the snapshot supersedes: those
    /// entries are recorded as applied here so they are never applied later.
    pub(crate) async fn start_snapshot(
        &self,
        id: u64,
        requester_log: u64,
        requester_head: u64,
        chunk_bytes: usize,
    ) -> Result<SnapshotReader> {
        let tables = self.tables().await?;
        {
            let mut tx = self.write().await?;
            let m = meta::read(&mut tx).await?;
            let applied = if m.applied_log == Some(requester_log) {
                m.applied.max(requester_head)
            } else {
                requester_head
            };
            meta::set(&mut tx, "applied_log", &meta::log_text(requester_log)).await?;
            meta::set_num(&mut tx, "applied", applied).await?;
            tx.commit()
                .await
                .map_err(Error::db("recording the peer's superseded changes"))?;
        }
        let (tx, rx) = mpsc::channel(2);
        let pool = self.pool.clone();
        tokio::spawn(async move {
            if let Err(e) = read_snapshot(pool, tables, id, chunk_bytes, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(SnapshotReader { rx })
    }

    /// Starts receiving a snapshot: checks that the peer's tables are the declared ones
    /// and prepares the staging table.
    pub(crate) async fn begin_sync(
        &self,
        id: u64,
        log: u64,
        position: u64,
        tables: &[String],
        total: u64,
    ) -> Result<SyncStage> {
        let declared = self.tables().await?;
        let names: Vec<&str> = declared.list.iter().map(|t| t.name.as_str()).collect();
        if tables.iter().map(String::as_str).ne(names.iter().copied()) {
            return Err(Error::State(format!(
                "the peer replicates tables [{}] but this node declares [{}]; declare the same tables on both nodes",
                tables.join(", "),
                names.join(", ")
            )));
        }
        let mut conn = self.conn().await?;
        for sql in [
            "DROP TABLE IF EXISTS temp._tandem_sync",
            // A rowid table, rows in the order they came (each table's in key order):
            // rows of kilobytes are stored and read back at about half the cost of a
            // table clustered on the key, and the index still refuses a key twice.
            "CREATE TEMP TABLE _tandem_sync (tbl TEXT NOT NULL, pk TEXT NOT NULL, row TEXT NOT NULL)",
            "CREATE UNIQUE INDEX temp._tandem_sync_key ON _tandem_sync (tbl, pk)",
        ] {
            sqlx::query(sql)
                .execute(&mut *conn)
                .await
                .map_err(Error::db("preparing the sync staging table"))?;
        }
        Ok(SyncStage {
            conn,
            id,
            log,
            position,
            total,
            received: 0,
        })
    }
}

async fn read_snapshot(
    pool: sqlx::SqlitePool,
    tables: std::sync::Arc<Tables>,
    id: u64,
    chunk_bytes: usize,
    out: &mpsc::Sender<Result<Message>>,
) -> Result<()> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(Error::db("connecting for the snapshot"))?;
    // One read transaction: every table and the position come from the same snapshot.
    let mut tx = conn
        .begin()
        .await
        .map_err(Error::db("starting the snapshot transaction"))?;
    let m = meta::read(&mut tx).await?;
    let mut total = 0u64;
    for t in &tables.list {
        let sql = format!("SELECT count(*) FROM main.{}", ident(&t.name));
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(sql))
            .fetch_one(&mut *tx)
            .await
            .map_err(Error::db(format!("counting the rows of {}", t.name)))?;
        total = total.saturating_add(n.max(0).cast_unsigned());
    }
    let begin = Message::SnapshotBegin {
        id,
        log: m.log,
        position: m.head,
        tables: tables.list.iter().map(|t| t.name.clone()).collect(),
        rows: total,
    };
    if out.send(Ok(begin)).await.is_err() {
        return Ok(());
    }
    let mut sent = 0u64;
    for t in &tables.list {
        let mut chunk = Vec::new();
        let mut bytes = 0usize;
        let mut rows = sqlx::query(AssertSqlSafe(Arc::clone(&t.select_sql))).fetch(&mut *tx);
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(Error::db(format!("reading table {}", t.name)))?
        {
            let (pk, data) = t.canonical(&row)?;
            bytes += pk.len() + data.len();
            chunk.push(SnapshotRow { pk, row: data });
            if bytes >= chunk_bytes {
                sent += u64::try_from(chunk.len()).unwrap_or(0);
                let msg = Message::SnapshotRows {
                    id,
                    table: t.name.clone(),
                    rows: std::mem::take(&mut chunk),
                };
                bytes = 0;
                if out.send(Ok(msg)).await.is_err() {
                    return Ok(());
                }
            }
        }
        drop(rows);
        if !chunk.is_empty() {
            sent += u64::try_from(chunk.len()).unwrap_or(0);
            let msg = Message::SnapshotRows {
                id,
                table: t.name.clone(),
                rows: chunk,
            };
            if out.send(Ok(msg)).await.is_err() {
                return Ok(());
            }
        }
    }
    tx.rollback()
        .await
        .map_err(Error::db("ending the snapshot transaction"))?;
    let _ = out.send(Ok(Message::SnapshotEnd { id, rows: sent })).await;
    Ok(())
}

impl SyncStage {
    /// Stages rows of one table: one transaction, a few multi-row statements.
    pub(crate) async fn rows(&mut self, table: &str, rows: &[SnapshotRow]) -> Result<()> {
        let mut tx = self
            .conn
            .begin()
            .await
            .map_err(Error::db("staging snapshot rows"))?;
        insert_rows(
            &mut tx,
            "INSERT INTO temp._tandem_sync (tbl, pk, row) VALUES ",
            3,
            rows,
            |q, r| q.bind(table).bind(&r.pk).bind(&r.row),
        )
        .await
        .map_err(Error::db(format!("staging rows of {table}")))?;
        tx.commit()
            .await
            .map_err(Error::db("staging snapshot rows"))?;
        self.received = self
            .received
            .saturating_add(u64::try_from(rows.len()).unwrap_or(0));
        Ok(())
    }

    /// Finishes: saves local-only rows to a file under the state directory, then
    /// replaces the declared tables with the snapshot and takes the snapshot's position,
    /// all in one transaction.
    pub(crate) async fn finish(
        mut self,
        backend: &SqliteBackend,
        rows_sent: u64,
        peer: tandem_core::NodeId,
    ) -> Result<SyncOutcome> {
        if rows_sent != self.received {
            return Err(Error::Protocol(format!(
                "the snapshot announced {rows_sent} rows but {} arrived",
                self.received
            )));
        }
        let tables = backend.tables().await?;
        let result = self.replace(backend, &tables, peer).await;
        for sql in [
            "DROP TABLE IF EXISTS temp._tandem_sync",
            "DROP TABLE IF EXISTS temp._tandem_local",
            "DROP TABLE IF EXISTS temp._tandem_keys",
        ] {
            let _ = sqlx::query(sql).execute(&mut *self.conn).await;
        }
        result
    }

    async fn replace(
        &mut self,
        backend: &SqliteBackend,
        tables: &Tables,
        peer: tandem_core::NodeId,
    ) -> Result<SyncOutcome> {
        let mut tx = self
            .conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(Error::db("starting the sync transaction"))?;
        let mut m = meta::read(&mut tx).await?;
        backend.with_published_ack(&mut m);
        if m.writable {
            return Err(Error::State(format!(
                "node {} became writable during the sync; nothing was changed",
                m.node
            )));
        }
        // The rows this node changed that the peer never received: the keys in its
        // unacknowledged changelog. If writes went uncaptured (replication was off or
        // suspended while this node was writable) those keys are unknown, and every row
        // that differs from the peer's is saved.
        let every_difference = m.uncaptured || m.floor > m.acked;
        let unshipped = backend.read_changes(m.acked, u32::MAX, usize::MAX).await?;
        stage_keys(&mut tx, &unshipped).await?;
        let mut lines = Vec::new();
        for t in &tables.list {
            // Only the rows of the unacknowledged keys are compared, unless every
            // difference is saved: then (or for very many keys) the whole table is read.
            let keys: Vec<&str> = unshipped
                .iter()
                .filter(|c| c.table == t.name)
                .map(|c| c.pk.as_str())
                .collect();
            let keyed = (!every_difference && keys.len() <= MAX_KEYED_READS).then_some(&keys[..]);
            stage_local_rows(&mut tx, backend.pool(), t, keyed).await?;
            // Local rows that the peer lacks or has differently, then keys this node
            // deleted that the peer still has.
            let rows: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
                "SELECT l.pk, l.row, s.row FROM temp._tandem_local AS l \
                 LEFT JOIN temp._tandem_sync AS s ON s.tbl = ?1 AND s.pk = l.pk \
                 WHERE (s.row IS NULL OR s.row <> l.row) \
                 AND (?2 OR l.pk IN (SELECT pk FROM temp._tandem_keys WHERE tbl = ?1)) \
                 UNION ALL \
                 SELECT k.pk, NULL, s.row FROM temp._tandem_keys AS k \
                 JOIN temp._tandem_sync AS s ON s.tbl = k.tbl AND s.pk = k.pk \
                 WHERE k.tbl = ?1 AND k.pk NOT IN (SELECT pk FROM temp._tandem_local) \
                 ORDER BY 1",
            )
            .bind(&t.name)
            .bind(every_difference)
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::db(format!(
                "comparing table {} with the peer's",
                t.name
            )))?;
            for (pk, local, theirs) in rows {
                lines.push(local_only_line(&t.name, pk, local, theirs, peer)?);
            }
        }
        let saved = u64::try_from(lines.len()).unwrap_or(u64::MAX);
        let file = if lines.is_empty() {
            None
        } else {
            let dir = &backend.settings().state_dir;
            let path = dir.join(format!(
                "local-only-rows-{}-node{}.jsonl",
                timestamp_for_file(now_ms()),
                m.node
            ));
            let mut text = lines.join("\n");
            text.push('\n');
            write_atomically(&path, text.as_bytes())?;
            Some(path)
        };
        meta::set(&mut tx, "mode", Mode::Applying.as_str()).await?;
        sqlx::query("PRAGMA defer_foreign_keys = ON")
            .execute(&mut *tx)
            .await
            .map_err(Error::db("deferring foreign key checks"))?;
        let mut copied = 0u64;
        for t in tables.list.iter().rev() {
            let sql = format!("DELETE FROM main.{}", ident(&t.name));
            sqlx::query(AssertSqlSafe(sql))
                .execute(&mut *tx)
                .await
                .map_err(Error::db(format!("clearing table {}", t.name)))?;
        }
        for t in &tables.list {
            copied = copied.saturating_add(copy_staged_rows(&mut tx, t).await?);
        }
        // This node's own changes up to now are superseded by the snapshot (and saved
        // above where they differ); the peer recorded them as applied.
        meta::raise_floor(&mut tx, m.head).await?;
        meta::set_num(&mut tx, "acked", m.head).await?;
        meta::set_num(&mut tx, "uncaptured", 0).await?;
        meta::set(&mut tx, "applied_log", &meta::log_text(self.log)).await?;
        meta::set_num(&mut tx, "applied", self.position).await?;
        meta::set(&mut tx, "alarm", "").await?;
        let fresh = meta::Meta {
            uncaptured: false,
            ..m.clone()
        };
        meta::transition(&mut tx, &fresh, false, ReplicationState::Active).await?;
        tx.commit()
            .await
            .map_err(Error::db("committing the synchronized tables"))?;
        Ok(SyncOutcome {
            copied,
            saved,
            file,
            log: self.log,
            position: self.position,
        })
    }
}

/// Changed keys of one table up to which a from-sync reads the local rows of those keys
/// one by one; past it, it reads the whole table.
const MAX_KEYED_READS: usize = 10_000;

/// Puts this node's rows of `t` in canonical form into `temp._tandem_local` of `conn`:
/// every row, or (`keys`) only those whose canonical key is one of `keys`. The rows are
/// read on another connection of `pool`: `conn` holds the write lock, so both see the
/// same committed rows.
async fn stage_local_rows(
    conn: &mut sqlx::SqliteConnection,
    pool: &sqlx::SqlitePool,
    t: &TableInfo,
    keys: Option<&[&str]>,
) -> Result<()> {
    for sql in [
        "DROP TABLE IF EXISTS temp._tandem_local",
        "CREATE TEMP TABLE _tandem_local (pk TEXT PRIMARY KEY, row TEXT NOT NULL) WITHOUT ROWID",
    ] {
        sqlx::query(sql)
            .execute(&mut *conn)
            .await
            .map_err(Error::db("preparing the local rows"))?;
    }
    let mut reader = pool
        .acquire()
        .await
        .map_err(Error::db("connecting to read the local rows"))?;
    if let Some(keys) = keys {
        let sql: Arc<str> = t.select_key_compared_sql("IS").into();
        let mut found = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for key in keys {
            if !seen.insert(*key) {
                continue;
            }
            let mut query = sqlx::query(AssertSqlSafe(Arc::clone(&sql)));
            for v in t.key_values(key)? {
                query = v.bind(query);
            }
            let rows = query
                .fetch_all(&mut *reader)
                .await
                .map_err(Error::db(format!("reading table {}", t.name)))?;
            for row in rows {
                let (pk, data) = t.canonical(&row)?;
                // The same key in canonical form (`IS` also matches 1 and 1.0).
                if pk == *key {
                    found.push((pk, data));
                }
            }
            if found.len() >= MAX_STATEMENT_ROWS {
                stage_local(conn, &std::mem::take(&mut found)).await?;
            }
        }
        return stage_local(conn, &found).await;
    }
    let mut rows = sqlx::query(AssertSqlSafe(Arc::clone(&t.select_sql))).fetch(&mut *reader);
    let mut batch = Vec::with_capacity(MAX_STATEMENT_ROWS);
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(Error::db(format!("reading table {}", t.name)))?
    {
        batch.push(t.canonical(&row)?);
        if batch.len() >= MAX_STATEMENT_ROWS {
            stage_local(conn, &std::mem::take(&mut batch)).await?;
        }
    }
    stage_local(conn, &batch).await
}

/// Inserts canonical `(key, row)` pairs into `temp._tandem_local` of `conn`.
async fn stage_local(conn: &mut sqlx::SqliteConnection, pairs: &[(String, String)]) -> Result<()> {
    insert_rows(
        conn,
        "INSERT INTO temp._tandem_local (pk, row) VALUES ",
        2,
        pairs,
        |q, (pk, row)| q.bind(pk).bind(row),
    )
    .await
    .map_err(Error::db("staging local rows"))
}

/// A query of this module, its parameters bound one by one.
type Query<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments>;

/// Inserts `rows` with `head` (an `INSERT ... VALUES ` of `width` columns) in a few
/// multi-row statements; `bind` binds the `width` values of one row.
async fn insert_rows<'q, T>(
    conn: &mut sqlx::SqliteConnection,
    head: &str,
    width: usize,
    rows: &'q [T],
    bind: impl Fn(Query<'q>, &'q T) -> Query<'q>,
) -> std::result::Result<(), sqlx::Error> {
    let mut rest = rows;
    while !rest.is_empty() {
        let n = statement_rows(rest.len(), width);
        let (part, tail) = rest.split_at(n);
        rest = tail;
        let mut query = sqlx::query(AssertSqlSafe(values_sql(head, width, n)));
        for row in part {
            query = bind(query, row);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Puts the keys of `changes` into `temp._tandem_keys` of `conn`.
async fn stage_keys(
    conn: &mut sqlx::SqliteConnection,
    changes: &[crate::wire::Change],
) -> Result<()> {
    for sql in [
        "DROP TABLE IF EXISTS temp._tandem_keys",
        "CREATE TEMP TABLE _tandem_keys (tbl TEXT NOT NULL, pk TEXT NOT NULL, PRIMARY KEY (tbl, pk)) WITHOUT ROWID",
    ] {
        sqlx::query(sql)
            .execute(&mut *conn)
            .await
            .map_err(Error::db("preparing the changed keys"))?;
    }
    insert_rows(
        conn,
        "INSERT OR IGNORE INTO temp._tandem_keys (tbl, pk) VALUES ",
        2,
        changes,
        |q, c| q.bind(&c.table).bind(&c.pk),
    )
    .await
    .map_err(Error::db("staging the changed keys"))
}

/// Inserts the staged rows of `t` (its table is empty by now) in the order they came,
/// which is the peer's key order; returns how many.
async fn copy_staged_rows(conn: &mut sqlx::SqliteConnection, t: &TableInfo) -> Result<u64> {
    const PAGE: i64 = 1000;
    let mut after = 0i64;
    let mut copied = 0u64;
    loop {
        // `+tbl`: walk the rowids rather than the key index (and sort).
        let page: Vec<(i64, String)> = sqlx::query_as(
            "SELECT rowid, row FROM temp._tandem_sync WHERE +tbl = ?1 AND rowid > ?2 ORDER BY rowid LIMIT ?3",
        )
        .bind(&t.name)
        .bind(after)
        .bind(PAGE)
        .fetch_all(&mut *conn)
        .await
        .map_err(Error::db("reading the staged rows"))?;
        let Some((last, _)) = page.last() else {
            return Ok(copied);
        };
        after = *last;
        let mut values = page
            .iter()
            .map(|(_, row)| t.row_values(row))
            .collect::<Result<Vec<_>>>()?
            .into_iter();
        while !values.as_slice().is_empty() {
            let n = statement_rows(values.len(), t.columns.len());
            let sql: Arc<str> = if n == 1 {
                Arc::clone(&t.upsert_sql)
            } else {
                t.upsert_many_sql(n).into()
            };
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for row in values.by_ref().take(n) {
                for v in row {
                    query = v.bind(query);
                }
            }
            query.execute(&mut *conn).await.map_err(Error::db(format!(
                "copying the peer's rows into {}",
                t.name
            )))?;
            copied += u64::try_from(n).unwrap_or(0);
        }
    }
}

/// Rows per multi-row statement of a from-sync at most: each statement is one
/// round trip to the connection's worker thread, which costs more than the insert
/// of a row, so rows go in hundreds.
const MAX_STATEMENT_ROWS: usize = 256;

/// Parameters of one statement at most (SQLite's `SQLITE_MAX_VARIABLE_NUMBER`).
const MAX_PARAMETERS: usize = 32_766;

/// How many of `left` rows of `width` parameters the next statement takes: a power
/// of two (so that few distinct statements stay in the statement cache), at most
/// [`MAX_STATEMENT_ROWS`] and [`MAX_PARAMETERS`], at least one.
fn statement_rows(left: usize, width: usize) -> usize {
    let most = (MAX_PARAMETERS / width.max(1)).clamp(1, MAX_STATEMENT_ROWS);
    let n = left.clamp(1, most);
    1 << n.ilog2()
}

/// `head` followed by `rows` tuples of `width` positional parameters.
fn values_sql(head: &str, width: usize, rows: usize) -> String {
    let tuple = format!("({})", vec!["?"; width].join(", "));
    format!("{head}{}", vec![tuple; rows].join(", "))
}

/// One line of the local-only rows file.
fn local_only_line(
    table: &str,
    key: String,
    local: Option<String>,
    peer_row: Option<String>,
    peer: tandem_core::NodeId,
) -> Result<String> {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        table: &'a str,
        key: Box<RawValue>,
        /// `null`: this node deleted the row.
        local: Option<Box<RawValue>>,
        peer: Option<Box<RawValue>>,
        peer_node: tandem_core::NodeId,
    }
    let raw = |text: String| {
        RawValue::from_string(text).map_err(|e| Error::State(format!("a row is not JSON: {e}")))
    };
    let line = Line {
        table,
        key: raw(key)?,
        local: local.map(raw).transpose()?,
        peer: peer_row.map(raw).transpose()?,
        peer_node: peer,
    };
    serde_json::to_string(&line).map_err(|e| Error::State(format!("cannot encode a row: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_take_powers_of_two_within_the_limits() {
        assert_eq!(statement_rows(1000, 3), 256);
        assert_eq!(statement_rows(255, 3), 128);
        assert_eq!(statement_rows(3, 3), 2);
        assert_eq!(statement_rows(1, 3), 1);
        assert_eq!(statement_rows(0, 3), 1);
        // Wide rows: 32766 parameters at most.
        assert_eq!(statement_rows(1000, 200), 128);
        assert_eq!(statement_rows(1000, 2000), 16);
        assert_eq!(statement_rows(1000, 40_000), 1);
        assert_eq!(statement_rows(1000, 0), 256);
    }

    #[test]
    fn values_lists_have_one_tuple_per_row() {
        assert_eq!(
            values_sql("INSERT INTO t (a, b) VALUES ", 2, 3),
            "INSERT INTO t (a, b) VALUES (?, ?), (?, ?), (?, ?)"
        );
    }
}
