//! The changelog: reading it for the peer, applying the peer's batches exactly once,
//! recording acknowledgements and deciding whether a pull can be served.

use std::sync::Arc;

use sqlx::Row;

use super::SqliteBackend;
use super::meta::{self, Mode};
use super::order::{self, Step};
use super::schema::TableInfo;
use super::value::Value;
use crate::error::{Error, Result};
use crate::wire::{Batch, Change, Op};

/// What applying a batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ApplyOutcome {
    /// Changes were applied; the node now stands at `last`.
    Applied {
        /// The new applied position.
        last: u64,
        /// Changes applied (duplicates skipped).
        changes: usize,
    },
    /// Everything in the batch was applied before; nothing changed.
    Duplicate {
        /// The applied position.
        applied: u64,
    },
}

/// Whether a pull can be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PullCheck {
    /// Stream from the requested position.
    Serve,
    /// Refuse, with the reason for the operator.
    Refuse(String),
}

impl SqliteBackend {
    /// Up to `limit` changelog entries after `after` in canonical form, cut at about
    /// `max_bytes` of row data (at least one entry when there is one).
    pub(crate) async fn read_changes(
        &self,
        after: u64,
        limit: u32,
        max_bytes: usize,
    ) -> Result<Vec<Change>> {
        let tables = self.tables().await?;
        let mut conn = self.conn().await?;
        read_changes_on(&mut conn, &tables, after, limit, max_bytes).await
    }

    /// Applies a batch of the peer's changes in one transaction together with the new
    /// applied position. Entries at or below the applied position are skipped; a batch
    /// that does not follow on (a gap) is refused and nothing changes. The service
    /// applies with [`apply_batch_gated`](Self::apply_batch_gated).
    #[cfg(test)]
    pub(crate) async fn apply_batch(&self, batch: &Batch) -> Result<ApplyOutcome> {
        self.apply_batch_gated(batch, &|| Ok(())).await
    }

    /// [`apply_batch`](Self::apply_batch), asking `gate` inside the transaction just
    /// before it commits: an error from it rolls the whole batch back and is returned
    /// (the fencing check, so that a fence raised during the apply still holds).
    pub(crate) async fn apply_batch_gated(
        &self,
        batch: &Batch,
        gate: &(dyn Fn() -> Result<()> + Send + Sync),
    ) -> Result<ApplyOutcome> {
        // Foreign keys are checked as each row goes in, which is cheap; a batch
        // whose rows are consistent only as a whole (an application with
        // deferred constraints, a transaction split over two batches) is applied
        // again from the start with the checks deferred to the commit, which
        // makes SQLite track every parent and child row and costs several times
        // more.
        match self.apply_batch_checked(batch, false, gate).await? {
            Some(outcome) => Ok(outcome),
            None => {
                tracing::debug!(
                    prev = batch.prev,
                    "a foreign key held only for the whole batch: applying it with deferred checks"
                );
                self.apply_batch_checked(batch, true, gate)
                    .await?
                    .ok_or_else(|| {
                        Error::State("applying with deferred foreign keys failed".into())
                    })
            }
        }
    }

    /// Applies `batch` in one transaction, with foreign key checks deferred to
    /// the commit or not. `None` when, not deferred, a row broke a foreign key
    /// (nothing was applied).
    ///
    /// The statements run synchronously on the apply connection
    /// ([`with_apply_connection`](SqliteBackend::with_apply_connection)), prepared
    /// once for its life: no hand-off to sqlx's connection thread per statement,
    /// which on a loaded standby cost more than the statements (BENCHMARKS.md).
    async fn apply_batch_checked(
        &self,
        batch: &Batch,
        defer_foreign_keys: bool,
        gate: &(dyn Fn() -> Result<()> + Send + Sync),
    ) -> Result<Option<ApplyOutcome>> {
        let tables = self.tables().await?;
        // This process's writers take turns (see `write`).
        let _turn = Arc::clone(&self.writing).lock_owned().await;
        let mut links = None;
        loop {
            let apply = Apply {
                backend: self,
                batch,
                tables: &tables,
                defer_foreign_keys,
                gate,
            };
            let locked = blocking(|| {
                self.with_apply_connection(|conn| apply.in_transaction(conn, links.as_ref()))
            })?;
            match locked {
                Locked::NeedLinks => {
                    let mut conn = self.conn().await?;
                    links = Some(self.links(&mut conn, &tables).await?);
                }
                Locked::Done(outcome) => return Ok(outcome),
            }
        }
    }

    /// Records that the peer applied this node's changelog `log` up to `seq`, and prunes
    /// what it no longer needs.
    pub(crate) async fn record_ack(&self, log: u64, seq: u64) -> Result<()> {
        let mut tx = self.write().await?;
        let m = meta::read(&mut tx).await?;
        if log != m.log || seq <= m.acked || seq > m.head {
            return Ok(());
        }
        meta::set_num(&mut tx, "acked", seq).await?;
        if seq > m.floor {
            meta::raise_floor(&mut tx, seq).await?;
        }
        tx.commit()
            .await
            .map_err(Error::db("recording an acknowledgement"))?;
        self.publish_applied(log, seq)
    }

    /// Decides whether node `puller`'s pull of this node's changelog `log` from `from`
    /// can be served. Serving starts with an implicit acknowledgement of `from`.
    pub(crate) async fn check_pull(
        &self,
        log: Option<u64>,
        from: u64,
        puller: tandem_core::NodeId,
    ) -> Result<PullCheck> {
        let m = self.meta().await?;
        let fix = format!("run `mp_replication switch-on -S -F from-sync` on node {puller}");
        match log {
            Some(l) if l == m.log => {}
            Some(_) => {
                return Ok(PullCheck::Refuse(format!(
                    "node {puller} applied changes of another changelog of node {} \
                     (was its database replaced?); {fix}",
                    m.node
                )));
            }
            None if from == 0 => {}
            None => {
                return Ok(PullCheck::Refuse(format!(
                    "node {puller} asked for position {from} of no changelog"
                )));
            }
        }
        if from < m.floor {
            return Ok(PullCheck::Refuse(format!(
                "node {} no longer holds its changes after position {from} that node {puller} needs \
                 (replication was off or suspended, or writes were not captured); {fix}",
                m.node
            )));
        }
        if from > m.head {
            return Ok(PullCheck::Refuse(format!(
                "node {puller} claims position {from} but node {}'s changelog ends at {} \
                 (was a database restored from a backup?); {fix}",
                m.node, m.head
            )));
        }
        if log == Some(m.log) {
            self.record_ack(m.log, from).await?;
        }
        Ok(PullCheck::Serve)
    }
}

/// How a group of changes is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Upsert,
    Delete,
    /// A delete whose key has a NULL part: alone, with `IS`.
    DeleteOne,
}

/// Statement sizes (rows per statement) a group is cut into, largest first: few
/// distinct statements, so they stay in the statement cache.
const CHUNKS: [usize; 4] = [32, 8, 2, 1];

/// Runs `f`, which blocks on the database, where it holds up no other task: in
/// place on a runtime of several workers (its other tasks move to another),
/// inline on a single-threaded runtime or outside one.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// What the synchronous part of an apply came to.
enum Locked {
    /// The links between the tables are not cached for this schema version:
    /// the caller reads them (with sqlx) and runs the apply again. Nothing was
    /// written yet.
    NeedLinks,
    /// Applied (committed), a duplicate, or `None` for a broken foreign key.
    Done(Option<ApplyOutcome>),
}

/// One batch's apply, run on the apply connection.
struct Apply<'a> {
    backend: &'a SqliteBackend,
    batch: &'a Batch,
    tables: &'a super::Tables,
    defer_foreign_keys: bool,
    gate: &'a (dyn Fn() -> Result<()> + Send + Sync),
}

impl Apply<'_> {
    /// [`run`](Self::run) in a write transaction, committed when the batch was
    /// applied and rolled back otherwise (a duplicate, a broken foreign key, an
    /// error, links to read first).
    fn in_transaction(
        &self,
        conn: &rusqlite::Connection,
        links: Option<&Arc<order::Links>>,
    ) -> Result<Locked> {
        conn.prepare_cached("BEGIN IMMEDIATE")
            .and_then(|mut s| s.execute([]))
            .map_err(Error::sqlite("starting a write transaction"))?;
        let result = self.run(conn, links);
        let end = match result {
            Ok(Locked::Done(Some(ApplyOutcome::Applied { .. }))) => "COMMIT",
            _ => "ROLLBACK",
        };
        let ended = conn.prepare_cached(end).and_then(|mut s| s.execute([]));
        match (result, ended) {
            (Ok(locked), Ok(_)) => Ok(locked),
            (Ok(_), Err(e)) if end == "COMMIT" => {
                // A failed COMMIT (a full disk) may leave the transaction open.
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                Err(Error::sqlite("committing applied changes")(e))
            }
            (Ok(_), Err(e)) => Err(Error::sqlite("rolling back an apply")(e)),
            (Err(e), _) => Err(e),
        }
    }

    /// The whole apply but the commit, synchronously, inside the write
    /// transaction [`in_transaction`](Self::in_transaction) began.
    fn run(
        &self,
        conn: &rusqlite::Connection,
        links: Option<&Arc<order::Links>>,
    ) -> Result<Locked> {
        let version: i64 = conn
            .prepare_cached("PRAGMA schema_version")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(Error::sqlite("reading the schema version"))?;
        let Some(links) = links.cloned().or_else(|| self.tables.cached_links(version)) else {
            return Ok(Locked::NeedLinks);
        };
        let (batch, tables) = (self.batch, self.tables);
        let mut m = meta::read_on(conn)?;
        self.backend.with_published_ack(&mut m);
        if m.writable {
            return Err(Error::State(format!(
                "node {} is writable (the active node); it does not apply the peer's changes",
                m.node
            )));
        }
        if m.head > m.acked {
            return Err(Error::State(diverged_message(&m)));
        }
        let applied = match m.applied_log {
            Some(log) if log == batch.log => m.applied,
            None => 0,
            Some(_) => {
                return Err(Error::State(format!(
                    "the peer streams changelog {} but node {} follows {}; \
                     run `mp_replication switch-on -S -F from-sync` on node {}",
                    meta::log_text(batch.log),
                    m.node,
                    m.applied_log
                        .map_or_else(|| "none".to_owned(), meta::log_text),
                    m.node
                )));
            }
        };
        if batch.prev > applied {
            return Err(Error::Gap {
                prev: batch.prev,
                applied,
            });
        }
        let last = batch.last();
        if last <= applied {
            return Ok(Locked::Done(Some(ApplyOutcome::Duplicate { applied })));
        }
        meta::set_many_on(conn, &[("mode", Mode::Applying.as_str())])?;
        if self.defer_foreign_keys {
            conn.execute_batch("PRAGMA defer_foreign_keys = ON")
                .map_err(Error::sqlite("deferring foreign key checks"))?;
        }
        // The batch's changes, checked, in commit order.
        let mut items: Vec<(usize, Kind, Vec<Value>)> = Vec::with_capacity(batch.changes.len());
        let mut previous = batch.prev;
        for change in batch.changes.iter().filter(|c| c.seq > applied) {
            if change.seq <= previous {
                return Err(Error::Protocol(format!(
                    "batch entries out of order ({} after {previous})",
                    change.seq
                )));
            }
            previous = change.seq;
            let index = tables.index(&change.table).ok_or_else(|| {
                Error::State(format!(
                    "the peer sent a change to table `{}`, which this node does not replicate; \
                     declare the same tables on both nodes",
                    change.table
                ))
            })?;
            let table = &tables.list[index];
            let (kind, values) = match change.op {
                Op::Insert | Op::Update => {
                    let row = change.row.as_deref().ok_or_else(|| {
                        Error::Protocol(format!("change {} has no row", change.seq))
                    })?;
                    (Kind::Upsert, table.row_values(row)?)
                }
                Op::Delete => {
                    let key = table.key_values(&change.pk)?;
                    // `IN` compares with `=`, which never matches a NULL key part.
                    if key.iter().any(|v| matches!(v, Value::Null)) {
                        (Kind::DeleteOne, key)
                    } else {
                        (Kind::Delete, key)
                    }
                }
            };
            items.push((index, kind, values));
        }
        let count = items.len();
        // Table by table where the links allow it (see `order`), else in commit order.
        let steps: Vec<Step> = items
            .iter()
            .map(|(index, kind, values)| {
                let table = &tables.list[*index];
                let delete = *kind != Kind::Upsert;
                let key = if delete {
                    order::key_identity(values)
                } else {
                    order::key_identity(&table.key_of(values))
                };
                Step {
                    table: *index,
                    delete,
                    key,
                }
            })
            .collect();
        let planned = order::plan(&links, &steps);
        let mut slots: Vec<Option<(usize, Kind, Vec<Value>)>> =
            items.into_iter().map(Some).collect();
        let sequence: Vec<usize> = planned.unwrap_or_else(|| (0..slots.len()).collect());
        // Consecutive changes of one table and kind go in multi-row statements (fewer
        // statements); rows of one statement are applied in order, as one by one.
        let mut group: Vec<Vec<Value>> = Vec::new();
        let mut group_kind: Option<(usize, Kind)> = None;
        for i in sequence {
            let Some((index, kind, values)) = slots.get_mut(i).and_then(Option::take) else {
                continue;
            };
            if group_kind != Some((index, kind)) {
                if let Some((t, k)) = group_kind
                    && !apply_group(conn, &tables.list[t], k, &std::mem::take(&mut group))?
                {
                    return Ok(Locked::Done(None));
                }
                group_kind = Some((index, kind));
            }
            group.push(values);
        }
        if let Some((t, k)) = group_kind
            && !apply_group(conn, &tables.list[t], k, &group)?
        {
            return Ok(Locked::Done(None));
        }
        // An error here leaves the transaction to be rolled back.
        (self.gate)()?;
        meta::set_many_on(
            conn,
            &[
                ("mode", m.mode.as_str()),
                ("applied_log", &meta::log_text(batch.log)),
                ("applied", &last.to_string()),
            ],
        )?;
        Ok(Locked::Done(Some(ApplyOutcome::Applied {
            last,
            changes: count,
        })))
    }
}

/// Applies one group; `false` when a row broke a foreign key checked at once
/// (the caller rolls back and applies the batch with deferred checks).
fn apply_group(
    conn: &rusqlite::Connection,
    table: &TableInfo,
    kind: Kind,
    rows: &[Vec<Value>],
) -> Result<bool> {
    let mut rest = rows;
    while !rest.is_empty() {
        let n = match kind {
            Kind::DeleteOne => 1,
            _ => CHUNKS.into_iter().find(|c| *c <= rest.len()).unwrap_or(1),
        };
        let sql: Arc<str> = match kind {
            Kind::Upsert if n == 1 => Arc::clone(&table.upsert_sql),
            Kind::Upsert => table.upsert_many_sql(n).into(),
            Kind::Delete if n > 1 => table.delete_many_sql(n).into(),
            Kind::Delete | Kind::DeleteOne => Arc::clone(&table.delete_sql),
        };
        let (now, later) = rest.split_at(n);
        rest = later;
        let result = conn.prepare_cached(&sql).and_then(|mut statement| {
            statement.execute(rusqlite::params_from_iter(now.iter().flatten()))
        });
        match result {
            Ok(_) => {}
            Err(e) if is_foreign_key_violation(&e) => return Ok(false),
            Err(e) => {
                return Err(Error::sqlite(format!(
                    "applying changes to table {}",
                    table.name
                ))(e));
            }
        }
    }
    Ok(true)
}

/// Whether a statement failed on a foreign key constraint
/// (`SQLITE_CONSTRAINT_FOREIGNKEY`, extended result code 787).
fn is_foreign_key_violation(e: &rusqlite::Error) -> bool {
    match e {
        rusqlite::Error::SqliteFailure(code, message) => {
            code.extended_code == 787
                || message
                    .as_deref()
                    .is_some_and(|m| m.contains("FOREIGN KEY constraint failed"))
        }
        _ => false,
    }
}

/// The start of the alarm of two writable nodes (split brain).
pub(crate) const BOTH_WRITABLE: &str = "both nodes are writable (split brain)";

/// Whether a node's alarm says the two nodes' data has forked: [`diverged_message`]
/// or [`BOTH_WRITABLE`].
pub(crate) fn is_divergence_alarm(alarm: &str) -> bool {
    alarm.starts_with("diverged:") || alarm.starts_with(BOTH_WRITABLE)
}

/// The alarm of a node holding changes its peer never received.
pub(crate) fn diverged_message(m: &meta::Meta) -> String {
    format!(
        "diverged: node {} holds {} change(s) that node {} never received, so it does not apply \
         node {}'s changes over them; run `mp_replication switch-on -S -F from-sync` on node {} \
         (its own rows are saved to a file) or let node {} take them",
        m.node,
        m.head.saturating_sub(m.acked),
        m.node.peer().get(),
        m.node.peer().get(),
        m.node,
        m.node.peer().get(),
    )
}

/// The changelog entries after `after` (at most `?2` of them), with their exact REAL
/// values, in one statement: one read snapshot, and one exchange with the
/// connection's thread (the service reads on its own connection every time a waiting
/// commit wakes it). The range is found first and then walked on the changelog's key,
/// so the rows come in order without a sort; an entry with several REALs comes as
/// consecutive rows.
const READ_CHANGES: &str = "SELECT c.seq, c.tbl, c.op, c.pk, c.row, c.ts, r.col, r.v \
     FROM _tandem_changelog AS c LEFT JOIN _tandem_reals AS r ON r.seq = c.seq \
     WHERE c.seq > ?1 AND c.seq <= (SELECT max(seq) FROM \
         (SELECT seq FROM _tandem_changelog WHERE seq > ?1 ORDER BY seq LIMIT ?2)) \
     ORDER BY c.seq";

/// [`SqliteBackend::read_changes`] on a connection of the caller's.
pub(crate) async fn read_changes_on(
    conn: &mut sqlx::SqliteConnection,
    tables: &super::Tables,
    after: u64,
    limit: u32,
    max_bytes: usize,
) -> Result<Vec<Change>> {
    let rows = sqlx::query(READ_CHANGES)
        .bind(after.cast_signed())
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await
        .map_err(Error::db("reading the changelog"))?;
    let read = |e| Error::db("reading a changelog entry")(e);
    let rows = rows
        .iter()
        .map(|row| {
            Ok(LogRow {
                seq: row.try_get("seq").map_err(read)?,
                table: row.try_get("tbl").map_err(read)?,
                op: row.try_get("op").map_err(read)?,
                pk: row.try_get("pk").map_err(read)?,
                row: row.try_get("row").map_err(read)?,
                ts_ms: row.try_get("ts").map_err(read)?,
                col: row.try_get("col").map_err(read)?,
                v: row.try_get("v").map_err(read)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    assemble(rows, tables, max_bytes)
}

/// [`read_changes_on`] on a connection the caller runs synchronously (the active's
/// service reads this way each time it ships: no hand-off to a connection thread),
/// with the statement prepared once for the connection's life.
pub(crate) fn read_changes_now(
    conn: &rusqlite::Connection,
    tables: &super::Tables,
    after: u64,
    limit: u32,
    max_bytes: usize,
) -> Result<Vec<Change>> {
    let rows = conn
        .prepare_cached(READ_CHANGES)
        .and_then(|mut statement| {
            statement
                .query_map((after.cast_signed(), i64::from(limit)), |r| {
                    Ok(LogRow {
                        seq: r.get(0)?,
                        table: r.get(1)?,
                        op: r.get(2)?,
                        pk: r.get(3)?,
                        row: r.get(4)?,
                        ts_ms: r.get(5)?,
                        col: r.get(6)?,
                        v: r.get(7)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(Error::sqlite("reading the changelog"))?;
    assemble(rows, tables, max_bytes)
}

/// One result row of [`READ_CHANGES`].
struct LogRow {
    seq: i64,
    table: String,
    op: String,
    pk: String,
    row: Option<String>,
    ts_ms: i64,
    /// A REAL column's name and exact value (one row per REAL of the entry).
    col: Option<String>,
    v: Option<f64>,
}

/// The changes that [`READ_CHANGES`]'s rows make, in canonical form, up to about
/// `max_bytes` (at least one).
fn assemble(rows: Vec<LogRow>, tables: &super::Tables, max_bytes: usize) -> Result<Vec<Change>> {
    let mut out = Vec::with_capacity(rows.len());
    let mut bytes = 0usize;
    let mut rows = rows.into_iter().peekable();
    while let Some(row) = rows.next() {
        let seq = row.seq;
        // An entry with several REAL values comes as one result row per value.
        let mut exact = Vec::new();
        let mut real = |col: Option<String>, v: Option<f64>| {
            if let (Some(col), Some(v)) = (col, v) {
                exact.push((col, v));
            }
        };
        real(row.col, row.v);
        while let Some(more) = rows.next_if(|r| r.seq == seq) {
            real(more.col, more.v);
        }
        let LogRow {
            table,
            op,
            pk,
            row: data,
            ts_ms,
            ..
        } = row;
        if meta::is_placeholder(&table) {
            // Only below a pull's start if the floor was respected; never shipped.
            continue;
        }
        let op = Op::from_letter(&op).ok_or_else(|| {
            Error::State(format!(
                "changelog entry {seq} has an unknown operation {op:?}"
            ))
        })?;
        let info = tables.get(&table).ok_or_else(|| {
            Error::State(format!(
                "changelog entry {seq} is for table `{table}`, which is not declared any more; \
                 run `mp_replication init` again"
            ))
        })?;
        let (pk, data) = info.canonical_change(&pk, data.as_deref(), &exact)?;
        let size = pk.len() + data.as_ref().map_or(0, String::len) + table.len();
        if !out.is_empty() && bytes + size > max_bytes {
            break;
        }
        bytes += size;
        out.push(Change {
            seq: seq.max(0).cast_unsigned(),
            table,
            op,
            pk,
            row: data,
            ts_ms,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divergence_alarms_are_recognised() {
        assert!(is_divergence_alarm(&format!(
            "{BOTH_WRITABLE}: changes made"
        )));
        assert!(is_divergence_alarm("diverged: node 1 holds 3 change(s)"));
        assert!(!is_divergence_alarm("backlog past 10 changes"));
    }
}
