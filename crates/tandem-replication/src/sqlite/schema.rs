//! The declared tables: what `pragma table_info` says about them, and the SQL generated
//! for them (capture and guard triggers, apply statements, JSON row expressions).
//!
//! Rows travel as JSON objects keyed by column name, made by SQLite's `json_object`, so
//! both nodes produce the same text for the same values. SQLite values map to JSON as
//! NULL → null, INTEGER → number, REAL → number, TEXT → string, and BLOB → `{"$blob":
//! "<hex>"}` (JSON has no bytes); the apply statements map them back with `json_extract`
//! and `unhex`, so every value returns with its storage class.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use sqlx::sqlite::SqliteConnection;
use sqlx::{AssertSqlSafe, Row};

use crate::config::check_identifier;
use crate::error::{Error, Result};

/// The message of the guard triggers; applications see it when they write to a standby.
pub(crate) const STANDBY_MESSAGE: &str = "tandem: this database is the standby of a replicated pair; application writes go to the active node";

/// What a trigger checks to decide: the `mode` row of the meta table.
const MODE: &str = "(SELECT value FROM _tandem_meta WHERE key = 'mode')";

/// Milliseconds since the Unix epoch, in SQL.
const NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

/// One declared table.
#[derive(Debug, Clone)]
pub(crate) struct TableInfo {
    pub(crate) name: String,
    pub(crate) columns: Vec<String>,
    /// Primary key columns in key order.
    pub(crate) key: Vec<String>,
    /// `INSERT ... ON CONFLICT DO UPDATE` from the row JSON in `?1`.
    pub(crate) upsert_sql: Arc<str>,
    /// `DELETE ... WHERE key` from the key JSON in `?1`.
    pub(crate) delete_sql: Arc<str>,
}

/// `"name"` as an SQL identifier (names never contain `"`: see `check_identifier`).
pub(crate) fn ident(name: &str) -> String {
    format!("\"{name}\"")
}

/// `'text'` as an SQL string literal.
pub(crate) fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A JSON path to the member `name`: `$."name"`.
fn path(name: &str) -> String {
    format!("$.\"{name}\"")
}

impl TableInfo {
    /// Reads the table's columns and primary key; a missing table or one without a
    /// primary key is an error that says so.
    pub(crate) async fn load(conn: &mut SqliteConnection, name: &str) -> Result<TableInfo> {
        let table_error = |problem: String| Error::Table {
            table: name.to_owned(),
            problem,
        };
        check_identifier(name).map_err(table_error)?;
        let rows = sqlx::query("SELECT name, pk FROM pragma_table_info(?1) ORDER BY cid")
            .bind(name)
            .fetch_all(&mut *conn)
            .await
            .map_err(Error::db(format!("reading the columns of table {name}")))?;
        if rows.is_empty() {
            return Err(table_error(
                "it does not exist in the database (create it, or remove it from [replication] tables)"
                    .into(),
            ));
        }
        let mut columns = Vec::with_capacity(rows.len());
        let mut keyed = Vec::new();
        for row in rows {
            let column: String = row
                .try_get("name")
                .map_err(Error::db(format!("reading the columns of table {name}")))?;
            let pk: i64 = row
                .try_get("pk")
                .map_err(Error::db(format!("reading the columns of table {name}")))?;
            check_identifier(&column)
                .map_err(|p| table_error(format!("column `{column}`: {p}")))?;
            if pk > 0 {
                keyed.push((pk, column.clone()));
            }
            columns.push(column);
        }
        if keyed.is_empty() {
            return Err(table_error(
                "it has no primary key; tandem replicates rows by key, so declare one".into(),
            ));
        }
        keyed.sort();
        let key = keyed.into_iter().map(|(_, c)| c).collect();
        Ok(TableInfo::new(name.to_owned(), columns, key))
    }

    pub(crate) fn new(name: String, columns: Vec<String>, key: Vec<String>) -> TableInfo {
        let upsert_sql = upsert_sql(&name, &columns, &key).into();
        let delete_sql = delete_sql(&name, &key).into();
        TableInfo {
            name,
            columns,
            key,
            upsert_sql,
            delete_sql,
        }
    }

    /// The JSON object of the key columns of the row `prefix` (`NEW.`, `OLD.` or `""`).
    pub(crate) fn key_json(&self, prefix: &str) -> String {
        json_object(&self.key, prefix)
    }

    /// The JSON object of all columns of the row `prefix`.
    pub(crate) fn row_json(&self, prefix: &str) -> String {
        json_object(&self.columns, prefix)
    }

    /// `"k1", "k2"` for `ORDER BY`.
    pub(crate) fn key_list(&self) -> String {
        self.key
            .iter()
            .map(|k| ident(k))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `"c1", "c2", ...`.
    pub(crate) fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| ident(c))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The column values decoded from the JSON row in `source` (an SQL expression), in
    /// column order.
    pub(crate) fn decoded_columns(&self, source: &str) -> String {
        self.columns
            .iter()
            .map(|c| decode(source, c))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The triggers: guards that refuse application writes on a standby, and capture
    /// triggers that log changes on the active node.
    pub(crate) fn trigger_sql(&self) -> Vec<String> {
        let t = &self.name;
        let name = |suffix: &str| ident(&format!("_tandem_{t}_{suffix}"));
        let mut out = Vec::new();
        for (event, suffix) in [
            ("INSERT", "guard_i"),
            ("UPDATE", "guard_u"),
            ("DELETE", "guard_d"),
        ] {
            out.push(format!(
                "CREATE TRIGGER {} BEFORE {event} ON {} WHEN {MODE} = 'standby' \
                 BEGIN SELECT RAISE(ABORT, {}); END",
                name(suffix),
                ident(t),
                literal(STANDBY_MESSAGE)
            ));
        }
        let log = |op: &str, key: &str, row: &str| {
            format!(
                "INSERT INTO _tandem_changelog (tbl, op, pk, row, ts) VALUES ({}, {op}, {key}, {row}, {NOW_MS});",
                literal(t)
            )
        };
        out.push(format!(
            "CREATE TRIGGER {} AFTER INSERT ON {} WHEN {MODE} = 'capture' BEGIN {} END",
            name("log_i"),
            ident(t),
            log("'I'", &self.key_json("NEW."), &self.row_json("NEW."))
        ));
        let same_key = self
            .key
            .iter()
            .map(|k| format!("OLD.{0} IS NEW.{0}", ident(k)))
            .collect::<Vec<_>>()
            .join(" AND ");
        // A key change is logged as delete + insert, so applying never needs to compare keys.
        out.push(format!(
            "CREATE TRIGGER {} AFTER UPDATE ON {} WHEN {MODE} = 'capture' BEGIN \
             INSERT INTO _tandem_changelog (tbl, op, pk, row, ts) \
             SELECT {}, 'D', {}, NULL, {NOW_MS} WHERE NOT ({same_key}); \
             {} END",
            name("log_u"),
            ident(t),
            literal(t),
            self.key_json("OLD."),
            log(
                &format!("CASE WHEN {same_key} THEN 'U' ELSE 'I' END"),
                &self.key_json("NEW."),
                &self.row_json("NEW.")
            )
        ));
        out.push(format!(
            "CREATE TRIGGER {} AFTER DELETE ON {} WHEN {MODE} = 'capture' BEGIN {} END",
            name("log_d"),
            ident(t),
            log("'D'", &self.key_json("OLD."), "NULL")
        ));
        out
    }
}

/// `json_object('c1', <c1>, ...)` with BLOBs as `{"$blob": hex}`.
fn json_object(columns: &[String], prefix: &str) -> String {
    let members = columns
        .iter()
        .map(|c| {
            let v = format!("{prefix}{}", ident(c));
            format!(
                "{}, CASE WHEN typeof({v}) = 'blob' THEN json_object('$blob', hex({v})) ELSE {v} END",
                literal(c)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!("json_object({members})")
}

/// The value of member `column` of the JSON object in `source`, with its storage class.
fn decode(source: &str, column: &str) -> String {
    let p = path(column);
    format!(
        "CASE json_type({source}, {pl}) WHEN 'object' THEN unhex(json_extract({source}, {bl})) \
         ELSE json_extract({source}, {pl}) END",
        pl = literal(&p),
        bl = literal(&format!("{p}.\"$blob\"")),
    )
}

fn upsert_sql(table: &str, columns: &[String], key: &[String]) -> String {
    let cols = columns
        .iter()
        .map(|c| ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let values = columns
        .iter()
        .map(|c| decode("?1", c))
        .collect::<Vec<_>>()
        .join(", ");
    let keys = key.iter().map(|k| ident(k)).collect::<Vec<_>>().join(", ");
    let updates = columns
        .iter()
        .filter(|c| !key.contains(c))
        .map(|c| format!("{0} = excluded.{0}", ident(c)))
        .collect::<Vec<_>>();
    let action = if updates.is_empty() {
        "DO NOTHING".to_owned()
    } else {
        format!("DO UPDATE SET {}", updates.join(", "))
    };
    format!(
        "INSERT INTO main.{} ({cols}) VALUES ({values}) ON CONFLICT ({keys}) {action}",
        ident(table)
    )
}

fn delete_sql(table: &str, key: &[String]) -> String {
    let cond = key
        .iter()
        .map(|k| format!("{} IS {}", ident(k), decode("?1", k)))
        .collect::<Vec<_>>()
        .join(" AND ");
    format!("DELETE FROM main.{} WHERE {cond}", ident(table))
}

/// A short fingerprint of the declared tables, their columns and keys: two nodes
/// replicate only when theirs are equal.
pub(crate) fn fingerprint(tables: &[TableInfo]) -> String {
    let mut hash = Sha256::new();
    for t in tables {
        hash.update(t.name.as_bytes());
        hash.update([0]);
        hash.update(t.columns.join(",").as_bytes());
        hash.update([0]);
        hash.update(t.key.join(",").as_bytes());
        hash.update([b'\n']);
    }
    hex::encode(hash.finalize().get(..8).unwrap_or_default())
}

/// Drops every tandem trigger in the database.
pub(crate) async fn drop_triggers(conn: &mut SqliteConnection) -> Result<()> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE '\\_tandem\\_%' ESCAPE '\\'",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(Error::db("listing tandem triggers"))?;
    for name in names {
        let sql = format!("DROP TRIGGER IF EXISTS {}", ident(&name));
        sqlx::query(AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await
            .map_err(Error::db(format!("dropping trigger {name}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_changes_are_logged_as_delete_and_insert() {
        let t = TableInfo::new("t".into(), vec!["a".into(), "b".into()], vec!["a".into()]);
        let sql = t.trigger_sql();
        assert_eq!(sql.len(), 6);
        assert!(
            sql[4].contains("WHERE NOT (OLD.\"a\" IS NEW.\"a\")"),
            "{}",
            sql[4]
        );
        assert!(
            t.upsert_sql
                .contains("ON CONFLICT (\"a\") DO UPDATE SET \"b\" = excluded.\"b\"")
        );
    }

    #[test]
    fn a_table_of_only_key_columns_upserts_with_do_nothing() {
        let t = TableInfo::new("t".into(), vec!["a".into()], vec!["a".into()]);
        assert!(t.upsert_sql.ends_with("DO NOTHING"), "{}", t.upsert_sql);
    }

    #[test]
    fn quotes_in_names_are_escaped_in_literals() {
        assert_eq!(literal("o'neil"), "'o''neil'");
        let t = TableInfo::new("o'neil".into(), vec!["x".into()], vec!["x".into()]);
        assert!(t.trigger_sql()[3].contains("VALUES ('o''neil', 'I'"));
    }

    #[test]
    fn fingerprints_differ_with_columns() {
        let a = TableInfo::new("t".into(), vec!["a".into()], vec!["a".into()]);
        let b = TableInfo::new("t".into(), vec!["a".into(), "b".into()], vec!["a".into()]);
        assert_ne!(fingerprint(std::slice::from_ref(&a)), fingerprint(&[b]));
        assert_eq!(fingerprint(std::slice::from_ref(&a)), fingerprint(&[a]));
    }
}
