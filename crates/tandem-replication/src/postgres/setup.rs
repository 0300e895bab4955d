//! `init`: the node's state, then on a node with a cluster `pg_hba.conf`,
//! `tandem.conf`, the replication settings and, on a primary, the replication role and
//! the peer's slot. The password file and TLS are in the operation itself
//! ([`ReplicationBackend::init`](crate::ReplicationBackend::init)).

use std::net::IpAddr;

use sqlx::postgres::PgConnection;
use tandem_core::NodeId;

use super::PostgresBackend;
use super::state::PgState;
use crate::InitOptions;
use crate::error::{Error, Result};
use crate::observer::Observer;
use crate::status::ReplicationState;

/// Who this node is and where its peer is, as `init` was told.
#[derive(Debug, Clone, Copy)]
pub(super) struct InitIdentity {
    node: NodeId,
    site: u16,
    remote: IpAddr,
    local: Option<IpAddr>,
}

impl InitIdentity {
    /// Checks `options`.
    fn new(options: &InitOptions) -> Result<InitIdentity> {
        let node = options.node;
        let remote = options.remote.ip();
        if options.local == Some(remote) {
            return Err(Error::State(format!(
                "-r {remote} is this node's own address: give the peer's node address"
            )));
        }
        Ok(InitIdentity {
            node,
            site: options.site,
            remote,
            local: options.local,
        })
    }

    /// The state `init` records: `previous` (the one recorded before, if any, which
    /// a damaged file does not count as) updated with this identity, or a new one.
    pub(super) fn applied_to(self, previous: Option<PgState>) -> PgState {
        let mut state = previous.unwrap_or(PgState {
            node: self.node,
            site: self.site,
            remote: self.remote,
            local: self.local,
            state: ReplicationState::Initialized,
            following: false,
            degraded_since: None,
            missing_since: None,
            last_copy: None,
            resync: false,
            idle_since: None,
        });
        state.node = self.node;
        state.site = self.site;
        state.remote = self.remote;
        state.local = self.local.or(state.local);
        state
    }
}

impl PostgresBackend {
    /// What `init` records: this node's identity from `options`, the state it
    /// makes of the one recorded now (updated, or a new one) and whether that is
    /// new. [`record_init`](Self::record_init) records it anew under the state
    /// file's lock, onto what the file holds then.
    pub(super) fn initial_state(
        &self,
        options: &InitOptions,
    ) -> Result<(InitIdentity, PgState, bool)> {
        let identity = InitIdentity::new(options)?;
        let previous = self.load().ok();
        let created = previous.is_none();
        Ok((identity, identity.applied_to(previous), created))
    }

    /// `init` on a node with a cluster: `pg_hba.conf`, `tandem.conf` and its include
    /// line, the replication settings checked (and `wal_log_hints` made to take
    /// effect), and on a primary the role and the peer's slot. Returns the state
    /// recorded and whether the server is writable (a primary).
    pub(super) async fn prepare_cluster(
        &self,
        identity: InitIdentity,
        observer: &dyn Observer,
    ) -> Result<(PgState, bool)> {
        observer.step("pg_hba.conf: the replication role from the peer's node address only");
        self.server.ensure_hba(identity.remote)?;
        observer.step("tandem.conf and its include line in postgresql.conf");
        self.server.ensure_include()?;
        let state = self
            .record_init(move |previous| identity.applied_to(previous), true)
            .await?;
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
            return Ok((state, false));
        }
        observer.step("the replication role (SCRAM) and a physical slot for the peer");
        self.ensure_role(&mut conn).await?;
        Self::ensure_slot(&mut conn, &state.peer_app_name()).await?;
        Ok((state, true))
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
