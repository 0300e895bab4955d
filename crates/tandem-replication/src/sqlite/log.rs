//! The changelog: reading it for the peer, applying the peer's batches exactly once,
//! recording acknowledgements and deciding whether a pull can be served.

use std::sync::Arc;

use sqlx::{AssertSqlSafe, Row};

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
    async fn apply_batch_checked(
        &self,
        batch: &Batch,
        defer_foreign_keys: bool,
        gate: &(dyn Fn() -> Result<()> + Send + Sync),
    ) -> Result<Option<ApplyOutcome>> {
        let tables = self.tables().await?;
        let mut tx = self.write().await?;
        let mut m = meta::read(&mut tx).await?;
        self.with_published_ack(&mut m);
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
            return Ok(Some(ApplyOutcome::Duplicate { applied }));
        }
        meta::set(&mut tx, "mode", Mode::Applying.as_str()).await?;
        if defer_foreign_keys {
            sqlx::query("PRAGMA defer_foreign_keys = ON")
                .execute(&mut *tx)
                .await
                .map_err(Error::db("deferring foreign key checks"))?;
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
        let links = self.links(&mut tx, &tables).await?;
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
        // round trips); rows of one statement are applied in order, as one by one.
        let mut group: Vec<Vec<Value>> = Vec::new();
        let mut group_kind: Option<(usize, Kind)> = None;
        for i in sequence {
            let Some((index, kind, values)) = slots.get_mut(i).and_then(Option::take) else {
                continue;
            };
            if group_kind != Some((index, kind)) {
                if let Some((t, k)) = group_kind
                    && !apply_group(&mut tx, &tables.list[t], k, std::mem::take(&mut group)).await?
                {
                    return Ok(None);
                }
                group_kind = Some((index, kind));
            }
            group.push(values);
        }
        if let Some((t, k)) = group_kind
            && !apply_group(&mut tx, &tables.list[t], k, group).await?
        {
            return Ok(None);
        }
        // Dropping the transaction rolls the batch back.
        gate()?;
        meta::set_many(
            &mut tx,
            &[
                ("mode", m.mode.as_str()),
                ("applied_log", &meta::log_text(batch.log)),
                ("applied", &last.to_string()),
            ],
        )
        .await?;
        tx.commit()
            .await
            .map_err(Error::db("committing applied changes"))?;
        Ok(Some(ApplyOutcome::Applied {
            last,
            changes: count,
        }))
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

/// Applies one group; `false` when a row broke a foreign key checked at once
/// (the caller rolls back and applies the batch with deferred checks).
async fn apply_group(
    conn: &mut sqlx::SqliteConnection,
    table: &TableInfo,
    kind: Kind,
    rows: Vec<Vec<Value>>,
) -> Result<bool> {
    let mut rest = rows.into_iter().peekable();
    while rest.peek().is_some() {
        let left = rest.len();
        let n = match kind {
            Kind::DeleteOne => 1,
            _ => CHUNKS.into_iter().find(|c| *c <= left).unwrap_or(1),
        };
        let sql: Arc<str> = match kind {
            Kind::Upsert if n == 1 => Arc::clone(&table.upsert_sql),
            Kind::Upsert => table.upsert_many_sql(n).into(),
            Kind::Delete if n > 1 => table.delete_many_sql(n).into(),
            Kind::Delete | Kind::DeleteOne => Arc::clone(&table.delete_sql),
        };
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for values in rest.by_ref().take(n) {
            for v in values {
                query = v.bind(query);
            }
        }
        match query.execute(&mut *conn).await {
            Ok(_) => {}
            Err(e) if is_foreign_key_violation(&e) => return Ok(false),
            Err(e) => {
                return Err(Error::db(format!(
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
fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    e.as_database_error().is_some_and(|d| {
        d.code().as_deref() == Some("787") || d.message().contains("FOREIGN KEY constraint failed")
    })
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
    let mut out = Vec::with_capacity(rows.len());
    let mut bytes = 0usize;
    let mut rows = rows.into_iter().peekable();
    while let Some(row) = rows.next() {
        let seq: i64 = row.try_get("seq").map_err(read)?;
        let mut exact = Vec::new();
        // An entry with several REAL values comes as one result row per value.
        let mut real = |row: &sqlx::sqlite::SqliteRow| -> Result<()> {
            let col: Option<String> = row.try_get("col").map_err(read)?;
            let v: Option<f64> = row.try_get("v").map_err(read)?;
            if let (Some(col), Some(v)) = (col, v) {
                exact.push((col, v));
            }
            Ok(())
        };
        real(&row)?;
        while let Some(more) = rows.next_if(|r| r.try_get::<i64, _>("seq").ok() == Some(seq)) {
            real(&more)?;
        }
        let table: String = row.try_get("tbl").map_err(read)?;
        if meta::is_placeholder(&table) {
            // Only below a pull's start if the floor was respected; never shipped.
            continue;
        }
        let op: String = row.try_get("op").map_err(read)?;
        let pk: String = row.try_get("pk").map_err(read)?;
        let data: Option<String> = row.try_get("row").map_err(read)?;
        let ts_ms: i64 = row.try_get("ts").map_err(read)?;
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
        let change = Change {
            seq: seq.max(0).cast_unsigned(),
            table,
            op,
            pk,
            row: data,
            ts_ms,
        };
        if !out.is_empty() && bytes + change.size() > max_bytes {
            break;
        }
        bytes += change.size();
        out.push(change);
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
