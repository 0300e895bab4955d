//! The `_tandem_meta` table: one row per fact, read whole and written key by key inside
//! the caller's transaction.
//!
//! | key | meaning |
//! | --- | --- |
//! | `format` | schema format version |
//! | `node`, `site` | this node's id and site (from `init`) |
//! | `remote` | the peer's node address and port (from `init -r`) |
//! | `local` | this node's node address (from the config, or the route to `remote`) |
//! | `log` | id of this node's changelog (random, made at `init`) |
//! | `writable` | 1 on the active node, 0 on the standby |
//! | `state` | replication state (`initialized`, `active`, `off`, ...) |
//! | `mode` | what the triggers do: `standby`, `capture`, `plain` or `applying` |
//! | `applied_log`, `applied` | the peer's changelog and position applied here |
//! | `acked` | position of this node's changelog the peer acknowledged |
//! | `floor` | the peer cannot pull from below this position of this node's changelog |
//! | `uncaptured` | 1 once application writes happened without capture |
//! | `alarm` | the current alarm, empty if none |
//! | `schema` | fingerprint of the declared tables at the last `init` |
//! | `request`, `request_done`, `progress` | the control plane between commands and the service |
//! | `peer` | what the service last heard from the peer |

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sqlx::sqlite::SqliteConnection;

use crate::error::{Error, Result};
use crate::status::ReplicationState;
use crate::wire::NodeState;

/// The schema format this code writes: 2 numbers the changelog without AUTOINCREMENT
/// (see [`CREATE_CHANGELOG`]); `init` upgrades a database of format 1
/// ([`upgrade_changelog`]).
pub(crate) const FORMAT: u32 = 2;

/// What the triggers do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Refuse application writes.
    Standby,
    /// Writable, changes are logged.
    Capture,
    /// Writable, changes are not logged (replication not active).
    Plain,
    /// The applier is writing: allowed, not logged. Only ever seen inside its transaction.
    Applying,
}

impl Mode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Mode::Standby => "standby",
            Mode::Capture => "capture",
            Mode::Plain => "plain",
            Mode::Applying => "applying",
        }
    }

    /// The mode for a node's role and replication state.
    pub(crate) fn for_role(writable: bool, state: ReplicationState) -> Mode {
        match (writable, state) {
            (false, _) => Mode::Standby,
            (true, ReplicationState::Active) => Mode::Capture,
            (true, _) => Mode::Plain,
        }
    }
}

/// A command's request to the service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Request {
    pub(crate) id: u64,
    /// `true` switch on, `false` switch off.
    pub(crate) on: bool,
    /// Copy the peer's data first (from-sync).
    pub(crate) sync: bool,
    /// Fail the request if it is not done by then (ms since the epoch).
    pub(crate) deadline_ms: u64,
}

/// The service's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RequestDone {
    pub(crate) id: u64,
    pub(crate) ok: bool,
    pub(crate) message: String,
    /// The local-only rows file of a from-sync, if rows were saved.
    pub(crate) file: Option<String>,
    /// Local-only rows saved.
    pub(crate) saved_rows: u64,
    /// Rows copied from the peer.
    pub(crate) copied_rows: u64,
}

/// Progress of the current request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Progress {
    pub(crate) id: u64,
    pub(crate) done: u64,
    pub(crate) total: u64,
}

/// What the service last heard from the peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PeerRecord {
    pub(crate) connected: bool,
    /// When this record was written (ms since the epoch).
    pub(crate) at_ms: u64,
    /// Why the link is down, if it is.
    pub(crate) error: Option<String>,
    pub(crate) node: Option<u8>,
    pub(crate) site: Option<u16>,
    pub(crate) head: Option<u64>,
    pub(crate) applied: Option<u64>,
    pub(crate) writable: Option<bool>,
    pub(crate) state: Option<String>,
    pub(crate) alarm: Option<String>,
    pub(crate) lag_ms: Option<u64>,
    /// When the peer was last connected (ms since the epoch).
    pub(crate) last_seen_ms: Option<u64>,
}

impl PeerRecord {
    pub(crate) fn from_state(s: &NodeState, now: u64) -> PeerRecord {
        PeerRecord {
            connected: true,
            at_ms: now,
            error: None,
            node: Some(s.node.get()),
            site: Some(s.site),
            head: Some(s.head),
            applied: Some(s.applied),
            writable: Some(s.writable),
            state: Some(s.state.as_str().to_owned()),
            alarm: Some(s.alarm.clone()).filter(|a| !a.is_empty()),
            lag_ms: s.lag_ms,
            last_seen_ms: Some(now),
        }
    }
}

/// The meta table, read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) node: tandem_core::NodeId,
    pub(crate) site: u16,
    pub(crate) remote: String,
    pub(crate) local: String,
    pub(crate) log: u64,
    pub(crate) writable: bool,
    pub(crate) state: ReplicationState,
    pub(crate) mode: Mode,
    pub(crate) applied_log: Option<u64>,
    pub(crate) applied: u64,
    pub(crate) acked: u64,
    pub(crate) floor: u64,
    pub(crate) uncaptured: bool,
    pub(crate) alarm: String,
    /// Fingerprint of the declared tables at the last `init`.
    pub(crate) schema: String,
    pub(crate) request: Option<Request>,
    pub(crate) request_done: Option<RequestDone>,
    pub(crate) progress: Option<Progress>,
    pub(crate) peer: Option<PeerRecord>,
    /// The newest sequence number of this node's changelog.
    pub(crate) head: u64,
}

impl Meta {
    /// The changes the peer still has to take from this node's changelog: those past
    /// both the acknowledged position and the floor. Entries below the floor were
    /// dropped (a suspension, a switch-off, a snapshot) and reach the peer only by a
    /// from-sync, so they are no backlog, whatever the last acknowledgement was.
    pub(crate) fn backlog(&self) -> u64 {
        self.head.saturating_sub(self.acked.max(self.floor))
    }
}

pub(crate) const CREATE_META: &str = "CREATE TABLE IF NOT EXISTS _tandem_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID";

/// The changelog. `seq` is the rowid, so a new entry takes the largest `seq` plus one;
/// it never goes back because the newest entry is never pruned without a placeholder
/// taking its place ([`raise_floor`]). (AUTOINCREMENT did the same by updating a row of
/// `sqlite_sequence` at every change: a B-tree write and one more page in the log at
/// every commit.)
pub(crate) const CREATE_CHANGELOG: &str = "CREATE TABLE IF NOT EXISTS _tandem_changelog (\
     seq INTEGER PRIMARY KEY, tbl TEXT NOT NULL, op TEXT NOT NULL, \
     pk TEXT NOT NULL, row TEXT, ts INTEGER NOT NULL)";

/// Puts a placeholder entry (empty `tbl`, `op` and `pk`, never read: it stands at or
/// below the floor) at position `?1` unless an entry stands there or above, so that the
/// changelog's largest `seq`, its head, is at least `?1`.
const PLACEHOLDER: &str = "INSERT INTO _tandem_changelog (seq, tbl, op, pk, row, ts) \
     SELECT ?1, '', '', '', NULL, 0 \
     WHERE ?1 > 0 AND NOT EXISTS (SELECT 1 FROM _tandem_changelog WHERE seq >= ?1)";

/// The exact REAL values of changelog entries (SQLite's JSON keeps only 15 digits).
pub(crate) const CREATE_REALS: &str = "CREATE TABLE IF NOT EXISTS _tandem_reals (\
     seq INTEGER NOT NULL, col TEXT NOT NULL, v REAL, PRIMARY KEY (seq, col)) WITHOUT ROWID";

/// Whether the meta table exists and holds a node id.
pub(crate) async fn initialized(conn: &mut SqliteConnection) -> Result<bool> {
    let exists: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_tandem_meta'",
    )
    .fetch_optional(&mut *conn)
    .await
    .map_err(Error::db("looking for the replication meta table"))?;
    if exists.is_none() {
        return Ok(false);
    }
    let node: Option<String> =
        sqlx::query_scalar("SELECT value FROM _tandem_meta WHERE key = 'node'")
            .fetch_optional(&mut *conn)
            .await
            .map_err(Error::db("reading the replication meta table"))?;
    Ok(node.is_some())
}

/// The changelog's newest sequence number (0 when nothing was ever logged).
pub(crate) async fn head(conn: &mut SqliteConnection) -> Result<u64> {
    let seq: Option<i64> = match sqlx::query_scalar("SELECT max(seq) FROM _tandem_changelog")
        .fetch_one(&mut *conn)
        .await
    {
        Ok(seq) => seq,
        // A database that never had a changelog.
        Err(sqlx::Error::Database(e)) if e.message().contains("no such table") => None,
        Err(e) => return Err(Error::db("reading the changelog head")(e)),
    };
    Ok(seq.map_or(0, |s| s.max(0).cast_unsigned()))
}

/// The meta table as one JSON object and the changelog head: the columns of one row,
/// since each statement is a round trip to the connection's thread, and each row of a
/// result one more message between the threads.
macro_rules! meta_columns {
    () => {
        "(SELECT json_group_object(key, COALESCE(CAST(value AS TEXT), '')) FROM _tandem_meta), \
         (SELECT max(seq) FROM _tandem_changelog)"
    };
}

/// Reads the whole meta table (and the changelog head), in one statement and one row.
pub(crate) async fn read(conn: &mut SqliteConnection) -> Result<Meta> {
    let row: std::result::Result<(String, Option<i64>), sqlx::Error> =
        sqlx::query_as(concat!("SELECT ", meta_columns!()))
            .fetch_one(&mut *conn)
            .await;
    match row {
        Ok((map, head)) => from_row(&map, head),
        // No meta table or no changelog (not initialized): the long way, which
        // tells these apart.
        Err(sqlx::Error::Database(e)) if e.message().contains("no such table") => {
            read_step_by_step(conn).await
        }
        Err(e) => Err(Error::db("reading the replication meta table")(e)),
    }
}

/// The connection's data version (`PRAGMA data_version`, which changes when another
/// connection commits) and, unless it is `seen`, the meta table: the service's poll,
/// in one statement.
pub(crate) async fn read_if_changed(
    conn: &mut SqliteConnection,
    seen: Option<i64>,
) -> Result<(i64, Option<Meta>)> {
    let row: std::result::Result<(i64, String, Option<i64>), sqlx::Error> =
        sqlx::query_as(concat!(
            "SELECT (SELECT data_version FROM pragma_data_version()), ",
            meta_columns!()
        ))
        .fetch_one(&mut *conn)
        .await;
    match row {
        Ok((version, _, _)) if Some(version) == seen => Ok((version, None)),
        Ok((version, map, head)) => Ok((version, Some(from_row(&map, head)?))),
        Err(sqlx::Error::Database(e)) if e.message().contains("no such table") => {
            let version = sqlx::query_scalar("PRAGMA data_version")
                .fetch_one(&mut *conn)
                .await
                .map_err(Error::db("polling the database for changes"))?;
            Ok((version, Some(read_step_by_step(conn).await?)))
        }
        Err(e) => Err(Error::db("reading the replication meta table")(e)),
    }
}

/// A meta table read as [`meta_columns`] gives it: its JSON object and the head.
fn from_row(map: &str, head: Option<i64>) -> Result<Meta> {
    let map: HashMap<String, String> = serde_json::from_str(map).map_err(|e| {
        Error::State(format!(
            "the replication meta table could not be read as text ({e}); run `mp_replication init` again"
        ))
    })?;
    if !map.contains_key("node") {
        return Err(Error::NotInitialized);
    }
    parse(&map, head.map_or(0, |s| s.max(0).cast_unsigned()))
}

/// [`read`] one question at a time.
async fn read_step_by_step(conn: &mut SqliteConnection) -> Result<Meta> {
    if !initialized(conn).await? {
        return Err(Error::NotInitialized);
    }
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT key, value FROM _tandem_meta")
        .fetch_all(&mut *conn)
        .await
        .map_err(Error::db("reading the replication meta table"))?;
    let map: HashMap<String, String> = rows.into_iter().collect();
    let head = head(conn).await?;
    parse(&map, head)
}

fn parse(map: &HashMap<String, String>, head: u64) -> Result<Meta> {
    let get = |k: &str| map.get(k).map(String::as_str).unwrap_or_default();
    let corrupt = |k: &str| {
        Error::State(format!(
            "the replication meta table has an invalid `{k}` ({:?}); run `mp_replication init` again",
            get(k)
        ))
    };
    let num = |k: &str| -> Result<u64> {
        match get(k) {
            "" => Ok(0),
            v => v.parse().map_err(|_| corrupt(k)),
        }
    };
    let format = num("format")?;
    if format > u64::from(FORMAT) {
        return Err(Error::State(format!(
            "the replication meta table has format {format}; this build understands {FORMAT} (upgrade tandem)"
        )));
    }
    if format != 0 && format < u64::from(FORMAT) {
        return Err(Error::State(format!(
            "the replication tables have format {format}, from an older tandem; run \
             `mp_replication init` again (with the same options) to upgrade them to format \
             {FORMAT}: the changelog and the positions are kept"
        )));
    }
    let hex64 = |k: &str| -> Result<Option<u64>> {
        match get(k) {
            "" => Ok(None),
            v => u64::from_str_radix(v, 16).map(Some).map_err(|_| corrupt(k)),
        }
    };
    let json = |k: &str| -> Option<&str> { Some(get(k)).filter(|v| !v.is_empty()) };
    let state = ReplicationState::parse(get("state")).ok_or_else(|| corrupt("state"))?;
    let mode = match get("mode") {
        "standby" => Mode::Standby,
        "capture" => Mode::Capture,
        "plain" => Mode::Plain,
        "applying" => Mode::Applying,
        _ => return Err(corrupt("mode")),
    };
    Ok(Meta {
        node: u8::try_from(num("node")?)
            .ok()
            .and_then(|n| tandem_core::NodeId::try_from(n).ok())
            .ok_or_else(|| corrupt("node"))?,
        site: u16::try_from(num("site")?).map_err(|_| corrupt("site"))?,
        remote: get("remote").to_owned(),
        local: get("local").to_owned(),
        log: hex64("log")?.ok_or_else(|| corrupt("log"))?,
        writable: num("writable")? == 1,
        state,
        mode,
        applied_log: hex64("applied_log")?,
        applied: num("applied")?,
        acked: num("acked")?,
        floor: num("floor")?,
        uncaptured: num("uncaptured")? == 1,
        alarm: get("alarm").to_owned(),
        schema: get("schema").to_owned(),
        request: json("request").and_then(|v| serde_json::from_str(v).ok()),
        request_done: json("request_done").and_then(|v| serde_json::from_str(v).ok()),
        progress: json("progress").and_then(|v| serde_json::from_str(v).ok()),
        peer: json("peer").and_then(|v| serde_json::from_str(v).ok()),
        head,
    })
}

/// Sets one key (inside the caller's transaction).
pub(crate) async fn set(conn: &mut SqliteConnection, key: &str, value: &str) -> Result<()> {
    set_many(conn, &[(key, value)]).await
}

/// Sets a key to a number.
pub(crate) async fn set_num(conn: &mut SqliteConnection, key: &str, value: u64) -> Result<()> {
    set(conn, key, &value.to_string()).await
}

/// Sets several keys in one statement (one round trip to the connection's thread).
pub(crate) async fn set_many(conn: &mut SqliteConnection, pairs: &[(&str, &str)]) -> Result<()> {
    if pairs.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO _tandem_meta (key, value) VALUES {} \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        vec!["(?, ?)"; pairs.len()].join(", ")
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (key, value) in pairs {
        query = query.bind(*key).bind(*value);
    }
    query.execute(&mut *conn).await.map_err(Error::db(format!(
        "writing {} to the replication meta table",
        pairs
            .iter()
            .map(|(k, _)| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ")
    )))?;
    Ok(())
}

/// Sets a key to a value as JSON.
pub(crate) async fn set_json<T: Serialize>(
    conn: &mut SqliteConnection,
    key: &str,
    value: &T,
) -> Result<()> {
    let text = serde_json::to_string(value)
        .map_err(|e| Error::State(format!("cannot encode `{key}`: {e}")))?;
    set(conn, key, &text).await
}

/// Formats a changelog id as stored.
pub(crate) fn log_text(log: u64) -> String {
    format!("{log:016x}")
}

/// Moves the node to a role and replication state inside the caller's write
/// transaction, keeping the trigger mode, the uncaptured flag and the floor consistent:
/// entering capture after writes went uncaptured raises the floor to the head (the peer
/// must copy a snapshot to continue) and drops the unreachable entries.
pub(crate) async fn transition(
    conn: &mut SqliteConnection,
    meta: &Meta,
    writable: bool,
    state: ReplicationState,
) -> Result<()> {
    let mode = Mode::for_role(writable, state);
    set_num(conn, "writable", u64::from(writable)).await?;
    set(conn, "state", state.as_str()).await?;
    set(conn, "mode", mode.as_str()).await?;
    match mode {
        Mode::Plain if !meta.uncaptured => set_num(conn, "uncaptured", 1).await?,
        Mode::Capture if meta.uncaptured => {
            // The state at the current head includes uncaptured writes: move the head on so
            // that no peer standing at the old head can continue without a snapshot.
            raise_floor(conn, meta.head.saturating_add(1)).await?;
            set_num(conn, "uncaptured", 0).await?;
        }
        _ => {}
    }
    Ok(())
}

/// Drops every changelog entry up to `to` and records that the peer cannot pull from
/// below it. The head never goes back: when no entry stands above `to`, a placeholder
/// entry stands at `to` (so `to` past the head moves the head on to `to`).
pub(crate) async fn raise_floor(conn: &mut SqliteConnection, to: u64) -> Result<()> {
    for sql in [
        "DELETE FROM _tandem_changelog WHERE seq <= ?1",
        "DELETE FROM _tandem_reals WHERE seq <= ?1",
        PLACEHOLDER,
    ] {
        sqlx::query(sql)
            .bind(to.cast_signed())
            .execute(&mut *conn)
            .await
            .map_err(Error::db("pruning the changelog"))?;
    }
    set_num(conn, "floor", to).await
}

/// Whether a changelog entry read back is a placeholder (see [`raise_floor`]).
pub(crate) fn is_placeholder(tbl: &str) -> bool {
    tbl.is_empty()
}

/// Upgrades a changelog of format 1 (`seq INTEGER PRIMARY KEY AUTOINCREMENT`) to
/// [`CREATE_CHANGELOG`]'s, inside the caller's transaction, keeping its entries and its
/// head (a placeholder keeps a head whose entries were pruned); returns whether it did.
/// The triggers must be dropped first (they name the table; `init` makes them again).
pub(crate) async fn upgrade_changelog(conn: &mut SqliteConnection) -> Result<bool> {
    let sql: Option<String> = sqlx::query_scalar(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = '_tandem_changelog'",
    )
    .fetch_optional(&mut *conn)
    .await
    .map_err(Error::db("reading the changelog's definition"))?;
    if !sql.is_some_and(|s| s.to_ascii_uppercase().contains("AUTOINCREMENT")) {
        return Ok(false);
    }
    let old_head: Option<i64> =
        sqlx::query_scalar("SELECT seq FROM sqlite_sequence WHERE name = '_tandem_changelog'")
            .fetch_optional(&mut *conn)
            .await
            .map_err(Error::db("reading the changelog head"))?;
    let next = CREATE_CHANGELOG.replace(
        "IF NOT EXISTS _tandem_changelog",
        "_tandem_changelog_upgrade",
    );
    for sql in [
        next.as_str(),
        "INSERT INTO _tandem_changelog_upgrade (seq, tbl, op, pk, row, ts) \
         SELECT seq, tbl, op, pk, row, ts FROM _tandem_changelog",
        "DROP TABLE _tandem_changelog",
        "ALTER TABLE _tandem_changelog_upgrade RENAME TO _tandem_changelog",
        "DELETE FROM sqlite_sequence WHERE name = '_tandem_changelog'",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await
            .map_err(Error::db("upgrading the changelog to format 2"))?;
    }
    if let Some(head) = old_head.filter(|h| *h > 0) {
        sqlx::query(PLACEHOLDER)
            .bind(head)
            .execute(&mut *conn)
            .await
            .map_err(Error::db("upgrading the changelog to format 2"))?;
    }
    set_num(conn, "format", u64::from(FORMAT)).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_follow_role_and_state() {
        use ReplicationState as S;
        assert_eq!(Mode::for_role(false, S::Active), Mode::Standby);
        assert_eq!(Mode::for_role(true, S::Active), Mode::Capture);
        for s in [S::Initialized, S::Off, S::Suspended, S::Failed, S::Syncing] {
            assert_eq!(Mode::for_role(true, s), Mode::Plain);
            assert_eq!(Mode::for_role(false, s), Mode::Standby);
        }
    }

    #[test]
    fn a_bad_meta_value_is_named() {
        let mut map = HashMap::new();
        map.insert("node".to_owned(), "1".to_owned());
        map.insert("state".to_owned(), "active".to_owned());
        map.insert("mode".to_owned(), "standby".to_owned());
        map.insert("log".to_owned(), "zz".to_owned());
        let err = parse(&map, 0).unwrap_err();
        assert!(err.to_string().contains("`log`"), "{err}");
    }
}
