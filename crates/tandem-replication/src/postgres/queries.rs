//! The SQL tandem runs on a server, its own or the peer's: role and standby checks,
//! the replication role and slots, streaming status and WAL positions.

use std::time::Duration;

use sqlx::postgres::PgConnection;

use super::server::conf_quote;
use super::state::PgState;
use super::{PostgresBackend, parse_lsn, scram};
use crate::config::AckLevel;
use crate::error::{Error, Result};
use crate::status::{Position, ReplicationState};
use crate::util::random_u64;

impl PostgresBackend {
    /// Makes the server read its configuration again (`tandem.conf`).
    pub(super) async fn reload(&self, conn: &mut PgConnection) -> Result<()> {
        sqlx::query("SELECT pg_reload_conf()")
            .execute(&mut *conn)
            .await
            .map_err(Error::db("reloading the configuration"))?;
        Ok(())
    }

    /// Whether the server is a standby.
    pub(super) async fn in_recovery(conn: &mut PgConnection) -> Result<bool> {
        sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&mut *conn)
            .await
            .map_err(Error::db("asking whether the server is a standby"))
    }

    /// The peer's `tandem.state`.
    pub(super) async fn peer_state(peer: &mut PgConnection) -> Result<Option<ReplicationState>> {
        let text: Option<String> =
            sqlx::query_scalar("SELECT current_setting('tandem.state', true)")
                .fetch_one(&mut *peer)
                .await
                .map_err(Error::db("reading the peer's tandem.state"))?;
        Ok(text.as_deref().and_then(ReplicationState::parse))
    }

    /// Creates or updates the replication role (on a primary).
    pub(super) async fn ensure_role(&self, conn: &mut PgConnection) -> Result<()> {
        let cfg = self.cfg();
        let role = format!("\"{}\"", cfg.replication_user);
        let mut salt = Vec::with_capacity(16);
        salt.extend_from_slice(&random_u64()?.to_le_bytes());
        salt.extend_from_slice(&random_u64()?.to_le_bytes());
        let verifier = scram::verifier(&self.password()?, &salt)?;
        let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_roles WHERE rolname = $1")
            .bind(&cfg.replication_user)
            .fetch_optional(&mut *conn)
            .await
            .map_err(Error::db("looking for the replication role"))?;
        let verb = if exists.is_some() { "ALTER" } else { "CREATE" };
        let statements = [
            format!(
                "{verb} ROLE {role} WITH LOGIN REPLICATION PASSWORD {}",
                conf_quote(&verifier)
            ),
            format!("GRANT pg_monitor, pg_checkpoint TO {role}"),
            format!(
                "GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text, boolean, boolean) TO {role}"
            ),
            format!("GRANT EXECUTE ON FUNCTION pg_catalog.pg_stat_file(text, boolean) TO {role}"),
            format!("GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text) TO {role}"),
            format!(
                "GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint, \
                 boolean) TO {role}"
            ),
        ];
        for sql in statements {
            // Utility statements take no parameters: the role name is checked by the
            // config (letters, digits, `_`, `-`) and the verifier is base64 and `$:`.
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut *conn)
                .await
                .map_err(Error::db(format!(
                    "setting up the replication role {}",
                    cfg.replication_user
                )))?;
        }
        Ok(())
    }

    /// Creates the physical slot `name` unless it exists (WAL is kept from now on).
    pub(super) async fn ensure_slot(conn: &mut PgConnection, name: &str) -> Result<()> {
        sqlx::query(
            "SELECT pg_create_physical_replication_slot($1, true) WHERE NOT EXISTS \
             (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
        )
        .bind(name)
        .execute(&mut *conn)
        .await
        .map_err(Error::db(format!("creating the replication slot {name}")))?;
        Ok(())
    }

    /// Drops the slot `name`, ending the walsender that holds it.
    pub(super) async fn drop_slot(conn: &mut PgConnection, name: &str) -> Result<bool> {
        for _ in 0..50 {
            let row: Option<(Option<i32>,)> =
                sqlx::query_as("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1")
                    .bind(name)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(Error::db(format!("looking for the slot {name}")))?;
            match row {
                None => return Ok(true),
                Some((Some(pid),)) => {
                    sqlx::query("SELECT pg_terminate_backend($1)")
                        .bind(pid)
                        .execute(&mut *conn)
                        .await
                        .map_err(Error::db("ending the standby's connection"))?;
                }
                Some((None,)) => {
                    let dropped = sqlx::query("SELECT pg_drop_replication_slot($1)")
                        .bind(name)
                        .execute(&mut *conn)
                        .await;
                    if dropped.is_ok() {
                        return Ok(true);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(false)
    }

    /// Whether this standby's WAL receiver streams.
    pub(super) async fn streaming(conn: &mut PgConnection) -> Result<bool> {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM pg_stat_wal_receiver LIMIT 1")
                .fetch_optional(&mut *conn)
                .await
                .map_err(Error::db("reading pg_stat_wal_receiver"))?;
        Ok(status.as_deref() == Some("streaming"))
    }

    /// Whether the primary's standby `name` streams, and its flushed position.
    pub(super) async fn standby_streams(
        conn: &mut PgConnection,
        name: &str,
    ) -> Result<Option<u64>> {
        let row: Option<(Option<String>, Option<i64>)> = sqlx::query_as(
            "SELECT flush_lsn::text, pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn)::bigint \
             FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming' LIMIT 1",
        )
        .bind(name)
        .fetch_optional(&mut *conn)
        .await
        .map_err(Error::db("reading pg_stat_replication"))?;
        Ok(row.map(|(_, behind)| behind.unwrap_or(i64::MAX).max(0).unsigned_abs()))
    }

    /// restartpoint, the furthest position it has written, received or replayed).
    /// Both readable by any role.
    pub(super) async fn wal_point(conn: &mut PgConnection) -> Result<(u32, u64)> {
        let (tli, lsn): (i32, Option<String>) = sqlx::query_as(
            "SELECT (SELECT timeline_id FROM pg_control_checkpoint()), \
             CASE WHEN pg_is_in_recovery() THEN \
               greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::text \
             ELSE pg_current_wal_lsn()::text END",
        )
        .fetch_one(conn)
        .await
        .map_err(Error::db("reading the timeline and WAL position"))?;
        Ok((
            u32::try_from(tli).unwrap_or(0),
            lsn.as_deref().and_then(parse_lsn).unwrap_or(0),
        ))
    }

    /// Whether the peer answers as a primary (`false` when it does not answer).
    pub(super) async fn peer_is_primary(&self, state: &PgState) -> Result<bool> {
        match self.connect_peer(state).await {
            Ok(mut peer) => Ok(!Self::in_recovery(&mut peer).await?),
            Err(_) => Ok(false),
        }
    }

    /// The cluster's system identifier (the same on every copy of one cluster).
    pub(super) async fn system_identifier(conn: &mut PgConnection, what: &str) -> Result<String> {
        sqlx::query_scalar("SELECT system_identifier::text FROM pg_control_system()")
            .fetch_one(&mut *conn)
            .await
            .map_err(Error::db(what.to_owned()))
    }

    /// How far the primary's standby `name` got at `level`: written (`received`),
    /// flushed or replayed (`applied`), from `pg_stat_replication` (0 when it is not
    /// connected).
    pub(super) async fn standby_at(
        conn: &mut PgConnection,
        name: &str,
        level: AckLevel,
    ) -> Result<Position> {
        // One of three fixed statements (no text from outside).
        let sql = match level {
            AckLevel::Received => {
                "SELECT write_lsn::text FROM pg_stat_replication WHERE application_name = $1 \
                 ORDER BY write_lsn DESC NULLS LAST LIMIT 1"
            }
            AckLevel::Applied => {
                "SELECT replay_lsn::text FROM pg_stat_replication WHERE application_name = $1 \
                 ORDER BY replay_lsn DESC NULLS LAST LIMIT 1"
            }
            _ => {
                "SELECT flush_lsn::text FROM pg_stat_replication WHERE application_name = $1 \
                 ORDER BY flush_lsn DESC NULLS LAST LIMIT 1"
            }
        };
        let at: Option<String> = sqlx::query_scalar(sql)
            .bind(name)
            .fetch_optional(&mut *conn)
            .await
            .map_err(Error::db("reading pg_stat_replication"))?
            .flatten();
        Ok(Position(at.as_deref().and_then(parse_lsn).unwrap_or(0)))
    }
}
