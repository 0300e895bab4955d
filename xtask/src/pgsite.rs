//! The PostgreSQL side of the site harness (`chaos --backend postgres`): the lab's
//! PostgreSQL 15 servers, the application's table, its writes that are acknowledged
//! only once the standby has flushed them (or, with the standby gone, when the
//! degrade guard allows it), and the checks of each node's cluster afterwards
//! (`pg_amcheck`, the acknowledged transactions present).
//!
//! The application's schema is one table written through the shared address; the
//! harness creates it on the primary once, as an application's installer would, and
//! PostgreSQL's streaming replication copies it.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection as _, PgConnection};
use tandem_lab::Host;
use tandem_lab::postgres::PgServer;
use tandem_replication::{Position, Settings};
use tandem_role::NodeId;

/// The TCP port of the lab's servers (on each node's own address).
pub(crate) const PORT: u16 = 5432;

/// The application's table.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS chaos_writes (\
     tx bigint PRIMARY KEY, node text NOT NULL, payload text NOT NULL); \
     CREATE EXTENSION IF NOT EXISTS amcheck";

/// How long a primary waits for a lost standby before it stops waiting (and a
/// standby that has not streamed for as long refuses promotion).
pub(crate) const DEGRADE_AFTER_MS: u64 = 3000;

/// The options of a superuser connection to the node's server over its socket.
pub(crate) fn options(settings: &Settings) -> PgConnectOptions {
    let pg = &settings.replication.postgres;
    PgConnectOptions::new_without_pgpass()
        .socket(&pg.socket_dir)
        .port(pg.port)
        .username(&pg.superuser)
        .database(&pg.database)
}

/// Creates the application's table on the primary.
pub(crate) async fn create_schema(settings: &Settings) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect_with(&options(settings))
        .await
        .context("connecting to the primary")?;
    sqlx::raw_sql(SCHEMA)
        .execute(&mut conn)
        .await
        .context("creating the application's table")?;
    conn.close().await?;
    Ok(())
}

/// Writes about `mb` MB of rows (1 kB each) on the primary, in its own table,
/// without waiting for the standby.
pub(crate) async fn fill(settings: &Settings, mb: u64) -> anyhow::Result<()> {
    if mb == 0 {
        return Ok(());
    }
    let mut conn = PgConnection::connect_with(&options(settings)).await?;
    sqlx::raw_sql(
        "SET synchronous_commit = local; \
         CREATE TABLE IF NOT EXISTS chaos_fill (id bigint PRIMARY KEY, pad text NOT NULL)",
    )
    .execute(&mut conn)
    .await?;
    let rows = i64::try_from(mb * 1000)?;
    let mut from = 1i64;
    while from <= rows {
        let to = (from + 99_999).min(rows);
        sqlx::query(
            "INSERT INTO chaos_fill SELECT g, repeat(md5(g::text), 31) \
             FROM generate_series($1::bigint, $2::bigint) g",
        )
        .bind(from)
        .bind(to)
        .execute(&mut conn)
        .await
        .context("filling the primary")?;
        from = to + 1;
    }
    conn.close().await?;
    Ok(())
}

/// The application's database on one node.
pub(crate) struct AppDb {
    pool: PgPool,
    /// `application_name` of the peer's walreceiver.
    peer_app: String,
}

impl AppDb {
    pub(crate) async fn open(settings: &Settings) -> anyhow::Result<AppDb> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_millis(500))
            .connect_lazy_with(options(settings));
        let peer = settings.node.id.unwrap_or(NodeId::One).peer();
        Ok(AppDb {
            pool,
            peer_app: format!("tandem_node{peer}"),
        })
    }

    /// Commits transaction `tx`, then waits until the standby has flushed it. The
    /// commit itself waits for the standby (`synchronous_standby_names`) unless the
    /// primary gave up waiting for a lost one; then the write is acknowledged alone
    /// only if `guard` allows it.
    pub(crate) async fn write_replicated(
        &self,
        guard: &tandem_node::DegradeGuard,
        tx: u64,
        node: &str,
    ) -> anyhow::Result<()> {
        let mark = guard.mark().await;
        let position = {
            let mut conn = self.pool.acquire().await?;
            sqlx::query("INSERT INTO chaos_writes (tx, node, payload) VALUES ($1, $2, $3)")
                .bind(i64::try_from(tx)?)
                .bind(node)
                .bind("m".repeat(200))
                .execute(&mut *conn)
                .await?;
            let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_flush_lsn()::text")
                .fetch_one(&mut *conn)
                .await?;
            Position(tandem_replication::parse_lsn(&lsn).context("reading the commit's LSN")?)
        };
        if self.flushed_by_standby(position).await? {
            return Ok(());
        }
        let e = anyhow::anyhow!("the standby has not flushed {position:?} within 800 ms");
        if self.standby_streams().await? {
            return Err(e);
        }
        guard
            .allow(mark)
            .await
            .map_err(|refused| e.context(format!("not acknowledged alone: {refused}")))
    }

    /// Waits up to 800 ms until the peer's walreceiver has flushed `position`
    /// (through the application's own pool: one connection a check, none left open).
    async fn flushed_by_standby(&self, position: Position) -> anyhow::Result<bool> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(800);
        loop {
            let flushed: Option<String> = sqlx::query_scalar(
                "SELECT max(flush_lsn)::text FROM pg_stat_replication WHERE application_name = $1",
            )
            .bind(&self.peer_app)
            .fetch_one(&self.pool)
            .await?;
            let flushed = flushed
                .as_deref()
                .and_then(tandem_replication::parse_lsn)
                .unwrap_or(0);
            if flushed >= position.0 {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Whether the peer's walreceiver streams from this server.
    async fn standby_streams(&self) -> anyhow::Result<bool> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_replication \
             WHERE application_name = $1 AND state = 'streaming'",
        )
        .bind(&self.peer_app)
        .fetch_one(&self.pool)
        .await?;
        Ok(n > 0)
    }

    pub(crate) async fn close(self) {
        self.pool.close().await;
    }
}

/// Runs `work` on one superuser connection to the node's server, from the
/// harness's (blocking) thread.
fn on_server<T>(
    settings: &Settings,
    work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
) -> anyhow::Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut conn = PgConnection::connect_with(&options(settings)).await?;
        let out = work(&mut conn).await?;
        let _ = conn.close().await;
        Ok(out)
    })
}

/// The acknowledged transactions that `host`'s cluster lacks.
pub(crate) fn missing(settings: &Settings, acked: &[u64]) -> anyhow::Result<BTreeSet<u64>> {
    let present: Vec<i64> = on_server(settings, async |conn| {
        sqlx::query_scalar("SELECT tx FROM chaos_writes")
            .fetch_all(conn)
            .await
    })?;
    let present: BTreeSet<u64> = present
        .into_iter()
        .filter_map(|t| u64::try_from(t).ok())
        .collect();
    Ok(acked
        .iter()
        .filter(|tx| !present.contains(tx))
        .copied()
        .collect())
}

/// `pg_amcheck` of every table and index of the application's database (heap and
/// B-tree checks, which run on a hot standby too): "ok", or what it reported.
pub(crate) fn integrity(server: &PgServer) -> anyhow::Result<String> {
    let out = server.run(
        "pg_amcheck",
        &[
            "-h",
            &server.socket_dir.display().to_string(),
            "-p",
            &server.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "--heapallindexed",
        ],
    );
    match out {
        Ok(text) if text.trim().is_empty() => Ok("ok".to_owned()),
        Ok(text) => Ok(text.trim().to_owned()),
        Err(e) => Ok(format!("pg_amcheck: {e}")),
    }
}

/// Whether the server's walreceiver streams (`pg_stat_wal_receiver`); false when
/// the server does not answer.
pub(crate) fn wal_receiver_streams(settings: &Settings) -> bool {
    let status = on_server(settings, async |conn| {
        sqlx::query_scalar::<_, String>("SELECT status FROM pg_stat_wal_receiver")
            .fetch_optional(conn)
            .await
    });
    matches!(status, Ok(Some(s)) if s == "streaming")
}

/// The process IDs of the server's backends of one kind (`client backend`,
/// `walsender`, `walreceiver`, ...), read over its socket.
pub(crate) fn backends(settings: &Settings, kind: &str) -> anyhow::Result<Vec<i32>> {
    on_server(settings, async |conn| {
        sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = $1 AND pid <> pg_backend_pid()",
        )
        .bind(kind)
        .fetch_all(conn)
        .await
    })
}

/// A node's PostgreSQL server for the harness: made by the lab (a new cluster).
pub(crate) fn server(lab: &tandem_lab::Lab, host: Host, dir: &Path) -> anyhow::Result<PgServer> {
    let bindir = tandem_lab::postgres::bindir().context(
        "PostgreSQL 15 or the `postgres` user is missing: `apt-get install postgresql-15` \
         (or run `bash .ci/install-deps`)",
    )?;
    PgServer::create(lab, host, dir, PORT, &bindir)
        .with_context(|| format!("making {host}'s PostgreSQL cluster"))
}
