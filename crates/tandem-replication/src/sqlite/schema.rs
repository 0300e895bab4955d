//! The declared tables: what `pragma table_info` says about them, and the SQL generated
//! for them (capture and guard triggers, apply statements, JSON row expressions).
//!
//! The capture triggers log each row as a JSON object made by SQLite's `json_object`
//! (BLOBs as `{"$blob": "<hex>"}`), and every REAL value also natively into
//! `_tandem_reals` (looking only at the columns that can hold one: `can_hold_real`),
//! because SQLite's float-to-text conversions do not keep every double: the reader
//! rebuilds the canonical row (see `value`) from both. Apply statements take
//! typed parameters, so every value returns with its storage class and exact bits.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use sqlx::sqlite::SqliteConnection;
use sqlx::{AssertSqlSafe, Row};

use super::value::{self, Value};
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
    /// The columns that can hold a REAL value (see [`can_hold_real`]), whose REALs the
    /// capture triggers log natively; the others are never looked at for one.
    pub(crate) reals: Vec<String>,
    /// The key column that is the table's rowid (`INTEGER PRIMARY KEY` of a rowid
    /// table), if there is one: it only ever holds an integer, so the capture triggers
    /// log it as it is, without asking its type.
    pub(crate) rowid: Option<String>,
    /// `INSERT ... ON CONFLICT DO UPDATE` with the columns as `?1..?n`.
    pub(crate) upsert_sql: Arc<str>,
    /// `DELETE ... WHERE key` with the key columns as `?1..?k`.
    pub(crate) delete_sql: Arc<str>,
    /// `SELECT <key columns>, <columns> FROM ... ORDER BY <key>`.
    pub(crate) select_sql: Arc<str>,
}

/// `"name"` as an SQL identifier (names never contain `"`: see `check_identifier`).
pub(crate) fn ident(name: &str) -> String {
    format!("\"{name}\"")
}

/// `'text'` as an SQL string literal.
pub(crate) fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
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
        let rows = sqlx::query("SELECT name, pk, type FROM pragma_table_info(?1) ORDER BY cid")
            .bind(name)
            .fetch_all(&mut *conn)
            .await
            .map_err(Error::db(format!("reading the columns of table {name}")))?;
        // STRICT tables type their columns strictly; a table with a primary key index
        // has no rowid alias (WITHOUT ROWID, or a key that is not `INTEGER`).
        let (strict, pk_index): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COALESCE(max(strict), 0) FROM pragma_table_list(?1) WHERE schema = 'main'), \
                    (SELECT count(*) FROM pragma_index_list(?1) WHERE origin = 'pk')",
        )
        .bind(name)
        .fetch_one(&mut *conn)
        .await
        .map_err(Error::db(format!("reading the kind of table {name}")))?;
        let mut declared = Vec::with_capacity(rows.len());
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
            let decl: Option<String> = row
                .try_get("type")
                .map_err(Error::db(format!("reading the columns of table {name}")))?;
            if pk > 0 {
                keyed.push((pk, column.clone()));
            }
            declared.push(decl.unwrap_or_default());
            columns.push(column);
        }
        if keyed.is_empty() {
            return Err(table_error(
                "it has no primary key; tandem replicates rows by key, so declare one".into(),
            ));
        }
        keyed.sort();
        let key: Vec<String> = keyed.into_iter().map(|(_, c)| c).collect();
        let rowid = columns
            .iter()
            .zip(&declared)
            .find(|(c, decl)| {
                pk_index == 0
                    && key.len() == 1
                    && key.first() == Some(*c)
                    && decl.eq_ignore_ascii_case("INTEGER")
            })
            .map(|(c, _)| c.clone());
        let reals = columns
            .iter()
            .zip(&declared)
            .filter(|(c, decl)| can_hold_real(decl, strict != 0, rowid.as_ref() == Some(*c)))
            .map(|(c, _)| c.clone())
            .collect();
        let mut table = TableInfo::new(name.to_owned(), columns, key).with_reals(reals);
        table.rowid = rowid;
        Ok(table)
    }

    /// The table with only `reals` (a subset of its columns) looked at for REAL values
    /// by the capture triggers; [`new`](Self::new) looks at every column.
    pub(crate) fn with_reals(mut self, reals: Vec<String>) -> TableInfo {
        self.reals = reals;
        self
    }

    pub(crate) fn new(name: String, columns: Vec<String>, key: Vec<String>) -> TableInfo {
        let upsert_sql = upsert_sql(&name, &columns, &key).into();
        let delete_sql = delete_sql(&name, &key).into();
        let select_sql = format!(
            "SELECT {}, {} FROM main.{} ORDER BY {}",
            key.iter().map(|k| ident(k)).collect::<Vec<_>>().join(", "),
            columns
                .iter()
                .map(|c| ident(c))
                .collect::<Vec<_>>()
                .join(", "),
            ident(&name),
            key.iter().map(|k| ident(k)).collect::<Vec<_>>().join(", "),
        )
        .into();
        TableInfo {
            name,
            reals: columns.clone(),
            rowid: None,
            columns,
            key,
            upsert_sql,
            delete_sql,
            select_sql,
        }
    }

    /// `SELECT <key columns>, <columns>` of the one row whose key is `?1..?k` (in key
    /// order), in the form [`canonical`](Self::canonical) reads.
    pub(crate) fn select_by_key_sql(&self) -> String {
        self.select_key_compared_sql("=")
    }

    /// `SELECT <key columns>, <columns>` where each key column compares with `op`
    /// (`=`, or `IS` so that NULL key parts match too) to `?1..?k`, in key order.
    pub(crate) fn select_key_compared_sql(&self, op: &str) -> String {
        let list = |names: &[String]| {
            names
                .iter()
                .map(|n| ident(n))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "SELECT {}, {} FROM main.{} WHERE {}",
            list(&self.key),
            list(&self.columns),
            ident(&self.name),
            self.key
                .iter()
                .map(|k| format!("{} {op} ?", ident(k)))
                .collect::<Vec<_>>()
                .join(" AND ")
        )
    }

    /// The JSON object of the key columns of the row `prefix` (`NEW.`, `OLD.` or `""`).
    pub(crate) fn key_json(&self, prefix: &str) -> String {
        self.json_object(&self.key, prefix)
    }

    /// The JSON object of all columns of the row `prefix`.
    pub(crate) fn row_json(&self, prefix: &str) -> String {
        self.json_object(&self.columns, prefix)
    }

    /// `json_object('c1', <c1>, ...)` with BLOBs as `{"$blob": hex}` and REALs as
    /// `{"$real": "<approximate text>"}` (the exact value is in `_tandem_reals`). Each
    /// column is asked only about the types it can hold: the rowid about none, a column
    /// that cannot hold a REAL ([`reals`](Self::reals)) only whether it holds a BLOB
    /// (each question is a few virtual machine steps per column of every captured row).
    fn json_object(&self, columns: &[String], prefix: &str) -> String {
        let members = columns
            .iter()
            .map(|c| {
                let v = format!("{prefix}{}", ident(c));
                let value = if self.rowid.as_ref() == Some(c) {
                    v
                } else if self.reals.contains(c) {
                    format!(
                        "CASE typeof({v}) WHEN 'blob' THEN json_object('$blob', hex({v})) \
                         WHEN 'real' THEN json_object('$real', quote({v})) ELSE {v} END"
                    )
                } else {
                    format!("CASE typeof({v}) WHEN 'blob' THEN json_object('$blob', hex({v})) ELSE {v} END")
                };
                format!("{}, {value}", literal(c))
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!("json_object({members})")
    }

    /// The canonical key and row JSON of a result row of `select_sql`.
    pub(crate) fn canonical(&self, row: &sqlx::sqlite::SqliteRow) -> Result<(String, String)> {
        let key = value::read_row(row, 0, self.key.len())?;
        let values = value::read_row(row, self.key.len(), self.columns.len())?;
        Ok((
            value::encode(&self.key, &key),
            value::encode(&self.columns, &values),
        ))
    }

    /// The canonical key and row JSON of a changelog entry: `row` for inserts and
    /// updates, only `key` for deletes, with the exact REAL values put back.
    pub(crate) fn canonical_change(
        &self,
        key: &str,
        row: Option<&str>,
        reals: &[(String, f64)],
    ) -> Result<(String, Option<String>)> {
        let patch = |names: &[String], values: &mut [Value]| {
            for (col, r) in reals {
                if let Some(i) = names.iter().position(|n| n == col)
                    && let Some(slot) = values.get_mut(i)
                {
                    *slot = Value::Real(*r);
                }
            }
        };
        match row {
            Some(row) => {
                let mut values = value::decode(&self.columns, row)?;
                patch(&self.columns, &mut values);
                let key_values: Vec<Value> = self
                    .key
                    .iter()
                    .map(|k| {
                        self.columns
                            .iter()
                            .position(|c| c == k)
                            .and_then(|i| values.get(i).cloned())
                            .unwrap_or(Value::Null)
                    })
                    .collect();
                Ok((
                    value::encode(&self.key, &key_values),
                    Some(value::encode(&self.columns, &values)),
                ))
            }
            None => {
                let mut values = value::decode(&self.key, key)?;
                patch(&self.key, &mut values);
                Ok((value::encode(&self.key, &values), None))
            }
        }
    }

    /// The upsert of `n` rows: `n` tuples of the columns as positional parameters.
    pub(crate) fn upsert_many_sql(&self, n: usize) -> String {
        let tuple = format!("({})", vec!["?"; self.columns.len()].join(", "));
        let values = vec![tuple; n].join(", ");
        let head = self
            .upsert_sql
            .split(" VALUES ")
            .next()
            .unwrap_or_default()
            .to_owned();
        let tail = self
            .upsert_sql
            .split(" ON CONFLICT ")
            .nth(1)
            .unwrap_or_default();
        format!("{head} VALUES {values} ON CONFLICT {tail}")
    }

    /// The delete of `n` keys (none with a NULL part), as positional parameters.
    pub(crate) fn delete_many_sql(&self, n: usize) -> String {
        let keys = self
            .key
            .iter()
            .map(|k| ident(k))
            .collect::<Vec<_>>()
            .join(", ");
        let tuple = format!("({})", vec!["?"; self.key.len()].join(", "));
        let list = vec![tuple; n].join(", ");
        format!(
            "DELETE FROM main.{} WHERE ({keys}) IN (VALUES {list})",
            ident(&self.name)
        )
    }

    /// The column values of a canonical row, in column order.
    pub(crate) fn row_values(&self, row: &str) -> Result<Vec<Value>> {
        value::decode(&self.columns, row)
    }

    /// The key values of a row's column values (as [`row_values`](Self::row_values)
    /// gives them), in key order.
    pub(crate) fn key_of(&self, values: &[Value]) -> Vec<Value> {
        self.key
            .iter()
            .filter_map(|k| self.columns.iter().position(|c| c == k))
            .filter_map(|i| values.get(i).cloned())
            .collect()
    }

    /// The key values of a canonical key, in key order.
    pub(crate) fn key_values(&self, key: &str) -> Result<Vec<Value>> {
        value::decode(&self.key, key)
    }

    /// The triggers: guards that refuse application writes on a standby, and capture
    /// triggers that log changes on the active node. An insert or update logs its row
    /// and an empty key (the row holds the key, and the reader takes it from there); a
    /// delete logs the key.
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
            "CREATE TRIGGER {} AFTER INSERT ON {} WHEN {MODE} = 'capture' BEGIN {} {} END",
            name("log_i"),
            ident(t),
            log("'I'", "''", &self.row_json("NEW.")),
            reals(&self.reals, "NEW.", "1"),
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
             {} {} {} END",
            name("log_u"),
            ident(t),
            literal(t),
            self.key_json("OLD."),
            reals(&self.real_keys(), "OLD.", &format!("NOT ({same_key})")),
            log(
                &format!("CASE WHEN {same_key} THEN 'U' ELSE 'I' END"),
                "''",
                &self.row_json("NEW.")
            ),
            reals(&self.reals, "NEW.", "1"),
        ));
        out.push(format!(
            "CREATE TRIGGER {} AFTER DELETE ON {} WHEN {MODE} = 'capture' BEGIN {} {} END",
            name("log_d"),
            ident(t),
            log("'D'", &self.key_json("OLD."), "NULL"),
            reals(&self.real_keys(), "OLD.", "1"),
        ));
        out
    }
}

impl TableInfo {
    /// The key columns that can hold a REAL value.
    fn real_keys(&self) -> Vec<String> {
        self.key
            .iter()
            .filter(|k| self.reals.contains(k))
            .cloned()
            .collect()
    }
}

/// Whether a column declared with type `decl` can hold a REAL value, by SQLite's rules
/// ("Datatypes In SQLite", 3.1): a column of TEXT affinity (its type names CHAR, CLOB
/// or TEXT, and not INT) turns every number into text, a STRICT table's column holds a
/// REAL only when declared REAL or ANY, and a rowid alias (`INTEGER PRIMARY KEY`) holds
/// only integers. Any other column can: INTEGER affinity keeps a REAL that is not a
/// whole number, and NUMERIC, REAL and BLOB affinity keep REALs as they are.
pub(crate) fn can_hold_real(decl: &str, strict: bool, rowid_alias: bool) -> bool {
    let d = decl.to_ascii_uppercase();
    if rowid_alias {
        return false;
    }
    if strict {
        return d == "REAL" || d == "ANY";
    }
    d.contains("INT") || !(d.contains("CHAR") || d.contains("CLOB") || d.contains("TEXT"))
}

/// Logs the REAL values among `columns` of the row `prefix` natively, under the
/// changelog entry just inserted, if `condition` holds: one statement for all the
/// columns (a statement per column cost about 6 % more instructions per sample
/// transaction), none for a table without such columns. `_tandem_reals` has no rowid, so its inserts leave
/// `last_insert_rowid()` at the changelog entry.
fn reals(columns: &[String], prefix: &str, condition: &str) -> String {
    if columns.is_empty() {
        return String::new();
    }
    let values = columns
        .iter()
        .map(|c| format!("SELECT {} AS c, {prefix}{} AS v", literal(c), ident(c)))
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    format!(
        "INSERT INTO _tandem_reals (seq, col, v) SELECT last_insert_rowid(), c, v \
         FROM ({values}) WHERE typeof(v) = 'real' AND {condition};"
    )
}

fn upsert_sql(table: &str, columns: &[String], key: &[String]) -> String {
    let cols = columns
        .iter()
        .map(|c| ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let values = (1..=columns.len())
        .map(|i| format!("?{i}"))
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
        .enumerate()
        .map(|(i, k)| format!("{} IS ?{}", ident(k), i + 1))
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
    fn multi_row_statements_keep_the_single_row_ones_shape() {
        let t = TableInfo::new("t".into(), vec!["a".into(), "b".into()], vec!["a".into()]);
        assert_eq!(
            t.upsert_many_sql(2),
            "INSERT INTO main.\"t\" (\"a\", \"b\") VALUES (?, ?), (?, ?) ON CONFLICT (\"a\") DO UPDATE SET \"b\" = excluded.\"b\""
        );
        assert_eq!(
            t.delete_many_sql(3),
            "DELETE FROM main.\"t\" WHERE (\"a\") IN (VALUES (?), (?), (?))"
        );
    }

    #[test]
    fn reals_are_logged_by_one_statement_per_trigger() {
        let t = TableInfo::new("t".into(), vec!["a".into(), "b".into()], vec!["a".into()]);
        let sql = t.trigger_sql();
        for (i, expected) in [(3, 1), (4, 2), (5, 1)] {
            assert_eq!(
                sql[i].matches("INSERT INTO _tandem_reals").count(),
                expected,
                "{}",
                sql[i]
            );
        }
        assert!(
            sql[3].contains(
                "SELECT 'a' AS c, NEW.\"a\" AS v UNION ALL SELECT 'b' AS c, NEW.\"b\" AS v"
            ),
            "{}",
            sql[3]
        );
        let none = t.with_reals(Vec::new()).trigger_sql();
        assert!(none.iter().all(|s| !s.contains("_tandem_reals")));
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

    /// Whatever a column's declared type and table kind, a value SQLite keeps as a
    /// REAL in it is in a column the capture triggers look at (the declared types are
    /// every pair of the words SQLite's affinity rules look for, and some others).
    #[tokio::test]
    async fn every_column_that_keeps_a_real_is_looked_at() {
        use sqlx::ConnectOptions;
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .in_memory(true)
            .connect()
            .await
            .unwrap();
        let words = [
            "",
            "INT",
            "INTEGER",
            "BIGINT",
            "TEXT",
            "CHAR",
            "VARCHAR(10)",
            "CLOB",
            "BLOB",
            "REAL",
            "FLOAT",
            "DOUBLE",
            "NUMERIC",
            "POINT",
            "STRING",
            "ANY",
            "DATE",
        ];
        let mut decls: Vec<String> = words.iter().map(|w| (*w).to_owned()).collect();
        for a in &words[1..] {
            for b in &words[1..] {
                decls.push(format!("{a} {b}"));
            }
        }
        let shapes = [
            "CREATE TABLE {t} (id INTEGER PRIMARY KEY, a {d})",
            "CREATE TABLE {t} (a {d} PRIMARY KEY)",
            "CREATE TABLE {t} (a {d} PRIMARY KEY) WITHOUT ROWID",
            "CREATE TABLE {t} (id INTEGER PRIMARY KEY, a {d}) STRICT",
            "CREATE TABLE {t} (a {d} PRIMARY KEY) STRICT",
        ];
        let (mut tables, mut kept, mut rowids) = (0, 0, 0);
        for (i, decl) in decls.iter().enumerate() {
            for (j, shape) in shapes.iter().enumerate() {
                let t = format!("t{i}_{j}");
                let sql = shape.replace("{t}", &t).replace("{d}", decl);
                if sqlx::query(AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await
                    .is_err()
                {
                    continue; // not a type a STRICT table takes
                }
                tables += 1;
                let insert = format!("INSERT INTO {t} (a) VALUES (1.5)");
                if sqlx::query(AssertSqlSafe(insert))
                    .execute(&mut conn)
                    .await
                    .is_err()
                {
                    continue; // the column refuses the REAL
                }
                let kind: String =
                    sqlx::query_scalar(AssertSqlSafe(format!("SELECT typeof(a) FROM {t}")))
                        .fetch_one(&mut conn)
                        .await
                        .unwrap();
                let info = TableInfo::load(&mut conn, &t).await.unwrap();
                // The column logged without asking its type holds nothing but integers.
                if let Some(rowid) = &info.rowid {
                    rowids += 1;
                    for v in ["X'00'", "'text'", "2.5"] {
                        let sql = format!("INSERT INTO {t} ({rowid}) VALUES ({v})");
                        let refused = sqlx::query(AssertSqlSafe(sql)).execute(&mut conn).await;
                        assert!(
                            refused.is_err_and(|e| e.to_string().contains("datatype mismatch")),
                            "{rowid} of {shape} took {v}"
                        );
                    }
                }
                if kind == "real" {
                    kept += 1;
                    assert!(info.reals.contains(&"a".to_owned()), "{decl:?} in {shape}");
                }
                assert!(
                    !info.reals.contains(&"id".to_owned()),
                    "rowid alias in {shape}"
                );
            }
        }
        assert!(
            tables > 700 && kept > 300 && rowids > 200,
            "{tables} tables, {kept} kept a REAL, {rowids} with a rowid column"
        );
        // The sample's kind of table: no TEXT column is looked at.
        sqlx::query("CREATE TABLE m (k TEXT PRIMARY KEY, n INTEGER, s TEXT, r REAL)")
            .execute(&mut conn)
            .await
            .unwrap();
        let info = TableInfo::load(&mut conn, "m").await.unwrap();
        assert_eq!(info.reals, ["n", "r"]);
    }

    #[test]
    fn fingerprints_differ_with_columns() {
        let a = TableInfo::new("t".into(), vec!["a".into()], vec!["a".into()]);
        let b = TableInfo::new("t".into(), vec!["a".into(), "b".into()], vec!["a".into()]);
        assert_ne!(fingerprint(std::slice::from_ref(&a)), fingerprint(&[b]));
        assert_eq!(fingerprint(std::slice::from_ref(&a)), fingerprint(&[a]));
    }
}
