//! Bringing back the rows a from-sync saved (`local-only-rows-<time>-node<N>.jsonl`),
//! step 13 of the seed's "existing and new server" procedure, with one command
//! (`mp_replication restore-local-rows FILE`).
//!
//! Each line of the file names a table, a key, the row the synchronized node had
//! (`local`, `null` where it had deleted the row) and the peer's row. Run on the active
//! node, where the application writes, [`SqliteBackend::restore_local_rows`] inserts
//! every saved row whose key is free, all in one transaction that the capture triggers
//! log like the application's own writes (so the standby gets them too), and changes
//! nothing else: a key that now holds a different row is a conflict, reported with
//! both rows and left as it is; a key that holds the same row is reported as already
//! there; a row the node had deleted is reported and not deleted here. The whole file
//! is read and checked (JSON, declared tables, keys) before anything is written, a
//! failure inside the transaction (a foreign key that the rows break at the commit)
//! rolls all of it back, and a dry run makes the same inserts and rolls them back, so
//! its report is what the real run would do.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sqlx::{AssertSqlSafe, SqliteConnection};

use super::schema::TableInfo;
use super::{SqliteBackend, meta, value};
use crate::error::{Error, Result};

/// One saved row, named by table and key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SavedRow {
    /// The table.
    pub table: String,
    /// The row's key, as a JSON object of the key columns.
    pub key: Json,
}

/// A saved row whose key now holds a different row: not restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RestoreConflict {
    /// The table.
    pub table: String,
    /// The key.
    pub key: Json,
    /// The row as the file saved it.
    pub saved: Json,
    /// The row the database holds now.
    pub current: Json,
}

/// What [`SqliteBackend::restore_local_rows`] found and did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RestoreReport {
    /// The file read.
    pub file: PathBuf,
    /// Nothing was changed: the report says what the real run would do.
    pub dry_run: bool,
    /// Rows inserted (with `dry_run`, rows that would be).
    pub restored: Vec<SavedRow>,
    /// Keys that hold a different row now; left as they are.
    pub conflicts: Vec<RestoreConflict>,
    /// Rows that are there already as saved.
    pub already_present: Vec<SavedRow>,
    /// Rows the synchronized node had deleted (the peer kept them): not deleted here.
    pub deleted_locally: Vec<SavedRow>,
}

/// One line of the file, checked against the declared tables.
struct SavedLine {
    table: Arc<TableInfo>,
    /// Canonical key JSON.
    key: String,
    /// Canonical row JSON, `None` where the node had deleted the row.
    local: Option<String>,
}

/// The fields of a line that restoring needs (the peer's row and node are not).
#[derive(Deserialize)]
struct RawLine {
    table: String,
    key: Json,
    local: Json,
}

impl SqliteBackend {
    /// Inserts the rows of a local-only rows file that from-sync wrote (see the
    /// module doc) on this node, which must be the active one; with `dry_run` nothing is
    /// changed. Conflicts are reported, never overwritten.
    ///
    /// ```no_run
    /// # async fn demo(active: &tandem_replication::SqliteBackend) -> tandem_replication::Result<()> {
    /// let file = std::path::Path::new("/var/lib/tandem/local-only-rows-20240101T000000Z-node2.jsonl");
    /// let report = active.restore_local_rows(file, true).await?;
    /// for c in &report.conflicts {
    ///     println!("{} {}: saved {}, now {}", c.table, c.key, c.saved, c.current);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn restore_local_rows(&self, file: &Path, dry_run: bool) -> Result<RestoreReport> {
        let text = std::fs::read_to_string(file)
            .map_err(Error::file("cannot read the local-only rows file", file))?;
        let lines = self.parse_saved(&text, file).await?;
        let mut report = RestoreReport {
            file: file.to_path_buf(),
            dry_run,
            restored: Vec::new(),
            conflicts: Vec::new(),
            already_present: Vec::new(),
            deleted_locally: Vec::new(),
        };
        let mut tx = self.write().await?;
        let m = meta::read(&mut tx).await?;
        if !m.writable {
            return Err(Error::State(format!(
                "node {} is the standby: restore the rows on the active node, where the \
                 application writes (copy {} there); replication brings them here",
                m.node,
                file.display()
            )));
        }
        // The file lists tables in declared order, not in the order their references
        // need: the foreign keys are checked once, at the commit.
        sqlx::query("PRAGMA defer_foreign_keys = ON")
            .execute(&mut *tx)
            .await
            .map_err(Error::db("deferring foreign key checks"))?;
        for line in lines {
            restore_line(&mut tx, line, &mut report).await?;
        }
        if dry_run {
            // Dropping the transaction rolls the inserts back.
            drop(tx);
        } else {
            tx.commit().await.map_err(Error::db(
                "committing the restored rows (nothing was restored; a restored row may \
                 refer to a row that is gone)",
            ))?;
        }
        Ok(report)
    }

    /// Reads every line and checks it against the declared tables, before anything is
    /// written.
    async fn parse_saved(&self, text: &str, file: &Path) -> Result<Vec<SavedLine>> {
        let tables = self.tables().await?;
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = |problem: String| {
                Error::State(format!(
                    "line {} of {}: {problem}; nothing was restored",
                    i + 1,
                    file.display()
                ))
            };
            let raw: RawLine = serde_json::from_str(line)
                .map_err(|e| bad(format!("not a line of a local-only rows file: {e}")))?;
            let table = tables.get(&raw.table).ok_or_else(|| {
                bad(format!(
                    "table `{}` is not declared in [replication] tables on this node",
                    raw.table
                ))
            })?;
            let key_values = table
                .key_values(&raw.key.to_string())
                .map_err(|e| bad(crate::error::chain(&e)))?;
            if key_values.contains(&value::Value::Null) {
                return Err(bad(format!("the key {} lacks a key column", raw.key)));
            }
            let local = match raw.local {
                Json::Null => None,
                row => {
                    let values = table
                        .row_values(&row.to_string())
                        .map_err(|e| bad(crate::error::chain(&e)))?;
                    if table.key_of(&values) != key_values {
                        return Err(bad(format!(
                            "the row {row} does not have the key {}",
                            raw.key
                        )));
                    }
                    Some(value::encode(&table.columns, &values))
                }
            };
            out.push(SavedLine {
                table: Arc::new(table.clone()),
                key: value::encode(&table.key, &key_values),
                local,
            });
        }
        Ok(out)
    }
}

/// Restores one line inside the transaction and records what happened.
async fn restore_line(
    conn: &mut SqliteConnection,
    line: SavedLine,
    report: &mut RestoreReport,
) -> Result<()> {
    let t = &line.table;
    let key = parse_json(&line.key);
    let saved_row = SavedRow {
        table: t.name.clone(),
        key: key.clone(),
    };
    let Some(local) = line.local else {
        report.deleted_locally.push(saved_row);
        return Ok(());
    };
    let mut query = sqlx::query(AssertSqlSafe(t.select_by_key_sql()));
    for v in t.key_values(&line.key)? {
        query = v.bind(query);
    }
    let current = query
        .fetch_optional(&mut *conn)
        .await
        .map_err(Error::db(format!("reading table {}", t.name)))?;
    match current {
        Some(row) => {
            let (_, current) = t.canonical(&row)?;
            if current == local {
                report.already_present.push(saved_row);
            } else {
                report.conflicts.push(RestoreConflict {
                    table: t.name.clone(),
                    key,
                    saved: parse_json(&local),
                    current: parse_json(&current),
                });
            }
        }
        None => {
            let mut insert = sqlx::query(AssertSqlSafe(Arc::clone(&t.upsert_sql)));
            for v in t.row_values(&local)? {
                insert = v.bind(insert);
            }
            insert.execute(&mut *conn).await.map_err(Error::db(format!(
                "inserting the saved row {} into {} (nothing was restored)",
                line.key, t.name
            )))?;
            report.restored.push(saved_row);
        }
    }
    Ok(())
}

/// Canonical JSON text (made by `value::encode`) as a JSON value.
fn parse_json(text: &str) -> Json {
    serde_json::from_str(text).unwrap_or(Json::Null)
}
