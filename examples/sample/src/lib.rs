//! A sample schema for the seed's data (user groups, user profiles, meetings) and a
//! deterministic workload over it, used by the demo, the chaos harness, the tests and
//! the benchmarks. It is example data, not part of `tandem-replication`: the library
//! only runs the statements a program hands it ([`settings`]) when the node config says
//! `[replication] sample_schema = true`, and takes these tables as its default
//! `tables` ([`tandem_replication::DEFAULT_TABLES`]).
//!
//! The tables use the shapes replication must handle: integer and text keys, a
//! nullable foreign key with `ON DELETE SET NULL`, one with `ON DELETE CASCADE`, a
//! unique column, a BLOB and a REAL.
//!
//! ```
//! let settings = tandem_sample::settings(tandem_replication::Settings::new(
//!     "/var/lib/tandem",
//!     tandem_replication::ReplicationConfig::default(),
//! ));
//! assert_eq!(settings.schema.len(), tandem_sample::SCHEMA.len());
//! assert_eq!(settings.replication.tables, tandem_sample::TABLES);
//! ```
//!
//! What this crate never does: replicate, or serve as anything but example data.

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::sqlite::SqliteConnection;
use tandem_replication::{Error, Position, Result, Settings};

/// The sample tables, parents first: the library's default `tables`.
pub const TABLES: [&str; 3] = tandem_replication::DEFAULT_TABLES;

/// `CREATE TABLE IF NOT EXISTS` statements of the sample schema.
pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS user_groups (\
        id INTEGER PRIMARY KEY, \
        name TEXT NOT NULL UNIQUE, \
        description TEXT, \
        created_ms INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS user_profiles (\
        id INTEGER PRIMARY KEY, \
        login TEXT NOT NULL UNIQUE, \
        display_name TEXT NOT NULL, \
        email TEXT, \
        group_id INTEGER REFERENCES user_groups (id) ON DELETE SET NULL, \
        pin_hash BLOB, \
        created_ms INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meetings (\
        meeting_id TEXT PRIMARY KEY, \
        owner_id INTEGER NOT NULL REFERENCES user_profiles (id) ON DELETE CASCADE, \
        title TEXT NOT NULL, \
        starts_ms INTEGER NOT NULL, \
        duration_min INTEGER NOT NULL, \
        ports INTEGER NOT NULL DEFAULT 0, \
        recording_gb REAL)",
];

/// `settings` with the sample schema attached: `init` creates it where missing when
/// the config says `[replication] sample_schema = true`.
pub fn settings(settings: Settings) -> Settings {
    settings.with_schema(SCHEMA)
}

/// Wraps a database error with what was being done.
fn db(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Error {
    let what = what.into();
    move |source| Error::Database { what, source }
}

/// Milliseconds since the Unix epoch (0 before it).
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0))
}

/// Creates the sample tables where missing.
pub async fn create_schema(conn: &mut SqliteConnection) -> Result<()> {
    for sql in SCHEMA {
        sqlx::query(*sql)
            .execute(&mut *conn)
            .await
            .map_err(db("creating the sample schema"))?;
    }
    Ok(())
}

/// The transactions of the sample workload whose rows are in the database: each
/// transaction `tx` writes user group `tx * 1000`, which no later transaction
/// deletes, so its presence tells that the transaction was applied.
pub async fn transactions_present(
    conn: &mut SqliteConnection,
) -> Result<std::collections::BTreeSet<u64>> {
    let ids: Vec<(i64,)> = sqlx::query_as("SELECT id FROM user_groups WHERE id % 1000 = 0")
        .fetch_all(&mut *conn)
        .await
        .map_err(db("reading the sample groups"))?;
    Ok(ids
        .into_iter()
        .filter_map(|(id,)| u64::try_from(id / 1000).ok())
        .collect())
}

/// The key of the meeting that transaction `tx` writes as its `i`-th row.
pub fn meeting_id(tx: u64, i: u32) -> String {
    format!("m{tx}-{i}")
}

/// Writes transaction number `tx` of the sample workload in one transaction and returns
/// its position. It writes `rows` rows spread over the three tables: one user profile per
/// five rows (and a group per ten), the rest meetings; from the tenth transaction on it
/// also updates a profile and a meeting of an earlier transaction and deletes one meeting.
/// Different `tx` numbers never collide, so writers can resume after a restart.
pub async fn write_transaction(
    conn: &mut SqliteConnection,
    tx: u64,
    rows: u32,
) -> Result<Position> {
    let mut t = sqlx::Connection::begin(&mut *conn)
        .await
        .map_err(db("starting a sample transaction"))?;
    let base = i64::try_from(tx)
        .unwrap_or(i64::MAX / 2)
        .saturating_mul(1000);
    let now = now_ms();
    let mut owner = None;
    for i in 0..rows {
        let n = base + i64::from(i);
        let result = if i % 10 == 0 {
            sqlx::query("INSERT INTO user_groups (id, name, description, created_ms) VALUES (?1, ?2, ?3, ?4)")
                .bind(n)
                .bind(format!("group {n}"))
                .bind(if i % 20 == 0 { None } else { Some(format!("Sales team \"{n}\" ünïcode")) })
                .bind(now)
                .execute(&mut *t)
                .await
        } else if i % 5 == 1 || owner.is_none() {
            let group = base - base % 10_000;
            owner = Some(n);
            let pin: Vec<u8> = (0..8).map(|k| ((n + k) % 256) as u8).collect();
            sqlx::query(
                "INSERT INTO user_profiles (id, login, display_name, email, group_id, pin_hash, created_ms) \
                 VALUES (?1, ?2, ?3, ?4, (SELECT id FROM user_groups WHERE id = ?5), ?6, ?7)",
            )
            .bind(n)
            .bind(format!("user{n}"))
            .bind(format!("User O'{n}"))
            .bind(format!("user{n}@example.com"))
            .bind(group)
            .bind(pin)
            .bind(now)
            .execute(&mut *t)
            .await
        } else {
            sqlx::query(
                "INSERT INTO meetings (meeting_id, owner_id, title, starts_ms, duration_min, ports, recording_gb) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .bind(meeting_id(tx, i))
            .bind(owner.unwrap_or(n))
            .bind(format!("Weekly sync {n}"))
            .bind(now + n)
            .bind(30 + n % 90)
            .bind(n % 48)
            .bind(if n % 3 == 0 { None } else { Some(n as f64 / 7.0) })
            .execute(&mut *t)
            .await
        };
        result.map_err(db(format!("writing sample transaction {tx}")))?;
    }
    if tx >= 10 {
        let earlier = (base / 1000 - 7) * 1000;
        let updates = [
            sqlx::query("UPDATE user_profiles SET display_name = display_name || ' (moved)', group_id = NULL WHERE id = ?1")
                .bind(earlier + 1),
            sqlx::query("UPDATE meetings SET title = 'Renamed ' || title, recording_gb = 0.1 + 0.2 WHERE meeting_id = ?1")
                .bind(format!("m{}-2", earlier / 1000)),
            sqlx::query("DELETE FROM meetings WHERE meeting_id = ?1").bind(format!("m{}-3", earlier / 1000)),
        ];
        for q in updates {
            q.execute(&mut *t)
                .await
                .map_err(db(format!("writing sample transaction {tx}")))?;
        }
    }
    let position = tandem_replication::position_in(&mut t).await?;
    t.commit()
        .await
        .map_err(db(format!("committing sample transaction {tx}")))?;
    Ok(position)
}
