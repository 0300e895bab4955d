//! `init`: the node's state, then on a node with a cluster `pg_hba.conf`,
//! `tandem.conf`, the replication settings and, on a primary, the replication role and
//! the peer's slot. The password file and TLS are in the operation itself
//! ([`ReplicationBackend::init`](crate::ReplicationBackend::init)).

use sqlx::postgres::PgConnection;

use super::PostgresBackend;
use super::state::PgState;
use crate::InitOptions;
use crate::error::{Error, Result};
use crate::observer::Observer;
use crate::status::ReplicationState;

impl PostgresBackend {
    /// The state `init` records: the one recorded before, updated with `options`, or a
    /// new one. Also whether it is new.
    pub(super) fn initial_state(&self, options: &InitOptions) -> Result<(PgState, bool)> {
        let node = options.node;
        let remote = options.remote.ip();
        if options.local == Some(remote) {
            return Err(Error::State(format!(
                "-r {remote} is this node's own address: give the peer's node address"
            )));
        }
        let previous = self.load().ok();
        let created = previous.is_none();
        let mut state = previous.unwrap_or(PgState {
            node,
            site: options.site,
            remote,
            local: options.local,
            state: ReplicationState::Initialized,
            following: false,
            degraded_since: None,
            missing_since: None,
            last_copy: None,
            resync: false,
            idle_since: None,
        });
        state.node = node;
        state.site = options.site;
        state.remote = remote;
        state.local = options.local.or(state.local);
        Ok((state, created))
    }

    /// `init` on a node with a cluster: `pg_hba.conf`, `tandem.conf` and its include
    /// line, the replication settings checked (and `wal_log_hints` made to take
    /// effect), and on a primary the role and the peer's slot. Returns whether the
    /// server is writable (a primary).
    pub(super) async fn prepare_cluster(
        &self,
        state: &PgState,
        observer: &dyn Observer,
    ) -> Result<bool> {
        observer.step("pg_hba.conf: the replication role from the peer's node address only");
        self.server.ensure_hba(state.remote)?;
        observer.step("tandem.conf and its include line in postgresql.conf");
        self.server.ensure_include()?;
        self.apply(state)?;
        if !self.server.running().await? {
            return Err(Error::State(format!(
                "PostgreSQL is not running on this node (data directory {}): start it and \
                 run init again",
                self.cfg().data_dir.display()
            )));
        }
        let mut conn = self.connect_local().await?;
        if self.needs_restart(&mut conn).await? {
            observer.step("restarting PostgreSQL so that wal_log_hints takes effect");
            drop(conn);
            self.server.restart().await?;
            conn = self.connect_local().await?;
        } else {
            self.reload(&mut conn).await?;
        }
        if Self::in_recovery(&mut conn).await? {
            observer.step("this node is a standby: the role and slot come from the primary");
            return Ok(false);
        }
        observer.step("the replication role (SCRAM) and a physical slot for the peer");
        self.ensure_role(&mut conn).await?;
        Self::ensure_slot(&mut conn, &state.peer_app_name()).await?;
        Ok(true)
    }

    /// Checks that the server can replicate at all; returns whether it must restart so
    /// that `wal_log_hints` (just set in `tandem.conf`) takes effect.
    async fn needs_restart(&self, conn: &mut PgConnection) -> Result<bool> {
        let settings: (String, String, i32, i32) = sqlx::query_as(
            "SELECT current_setting('wal_log_hints'), current_setting('wal_level'), \
             current_setting('max_wal_senders')::int, \
             current_setting('max_replication_slots')::int",
        )
        .fetch_one(&mut *conn)
        .await
        .map_err(Error::db("reading the replication settings"))?;
        let (hints, level, senders, slots) = settings;
        if level == "minimal" || senders < 2 || slots < 1 {
            return Err(Error::State(format!(
                "PostgreSQL cannot replicate with wal_level = {level}, max_wal_senders = \
                 {senders}, max_replication_slots = {slots}: set wal_level = replica (or \
                 logical), max_wal_senders of at least 2 and max_replication_slots of at \
                 least 1 in {}, restart it and run init again",
                self.cfg().config_file().display()
            )));
        }
        Ok(hints != "on")
    }
}
