//! The PostgreSQL backend: tandem controls PostgreSQL's own streaming replication, as
//! Patroni, repmgr and pg_auto_failover do, and copies no rows itself.
//!
//! Each node runs its own server. `init` prepares it: the replication role (SCRAM, its
//! password derived from the site key), a `pg_hba.conf` block for the peer's node
//! address only, `wal_log_hints` so that `pg_rewind` works, and a physical slot for the
//! peer. tandem's settings live in `tandem.conf` beside `postgresql.conf` (included at
//! its end), rendered from the node's state file `<state dir>/postgres.json`; they
//! include `tandem.node`, `tandem.site` and `tandem.state`, custom settings through which
//! the peer reads this node's replication state over SQL.
//!
//! The primary waits for its standby through `synchronous_standby_names`. When the
//! standby is gone the `standby_lost` policy decides: `strict` keeps waiting (writes
//! block); `degrade` (the default) lets the replication service
//! ([`PostgresBackend::watch`]) stop waiting after `degrade_after_ms`, raise an alarm,
//! and wait again once the standby streams. A standby records when it last streamed
//! (`<state dir>/postgres.contact`) and refuses to be promoted when that was longer ago
//! than `degrade_after_ms`: its primary may have taken writes without it since.
//!
//! The connections between the nodes use TLS (`[replication.postgres] tls`, on by
//! default): see [`tls`] for the certificates; the standby and tandem's own
//! connections to the peer check the peer's certificate against the site CA and its
//! node address (`verify-full`), and `pg_hba.conf` lets the replication role in over
//! TLS only.
//!
//! The code is split by concern: [`state`] (the state and contact files, locks),
//! [`connect`] (connections to both servers), [`conf`] (`tandem.conf`, the peer's
//! connection string, TLS files), [`queries`] (the SQL tandem runs), [`setup`]
//! (`init`), [`switch`] (`switch-on`, `switch-off`), [`copy`] (from-sync), [`roles`]
//! (promote, demote, the resynchronisation left due), [`watch`] (the replication
//! service), [`status`], and the secrets derived from the site key ([`derive`],
//! [`scram`], [`tls`]). The operations themselves are the [`ReplicationBackend`]
//! implementation below.

mod conf;
mod connect;
mod copy;
mod derive;
mod diverge;
mod queries;
mod resync;
mod roles;
mod scram;
mod server;
mod setup;
mod state;
mod status;
mod switch;
mod tls;
mod watch;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{PostgresConfig, Settings};
use crate::error::{Error, Result};
use crate::observer::{Observer, Quiet};
use crate::status::{Position, ReplicationState, Status};
use crate::util::ServiceLock;
use crate::{
    DemoteOptions, DemoteReport, Identity, InitOptions, InitReport, PromoteOptions,
    ReplicationBackend, RestoreReport, SwitchOnOptions, SwitchReport, TableChecksum,
};

use server::Server;
use state::PgState;

pub use resync::ResyncProgress;
pub use status::parse_lsn;
pub use tls::site_ca_pem;
pub use watch::WatchOutcome;

/// The PostgreSQL backend of one node. Cheap to open: it connects to the servers only
/// for an operation. Cheap to clone too: clones share the settings.
#[derive(Debug, Clone)]
pub struct PostgresBackend {
    settings: Arc<Settings>,
    server: Arc<Server>,
}

impl PostgresBackend {
    /// Opens the backend: finds PostgreSQL's programs and its user. Connects to nothing.
    pub async fn open(settings: &Settings) -> Result<PostgresBackend> {
        let server = Server::new(&settings.replication.postgres, &settings.state_dir)?;
        Ok(PostgresBackend {
            settings: Arc::new(settings.clone()),
            server: Arc::new(server),
        })
    }

    /// Opens the backend only if `init` ran on this node.
    pub async fn open_existing(settings: &Settings) -> Result<PostgresBackend> {
        let backend = PostgresBackend::open(settings).await?;
        backend.load()?;
        Ok(backend)
    }

    fn cfg(&self) -> &PostgresConfig {
        &self.settings.replication.postgres
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.cfg().data_dir
    }
}

impl ReplicationBackend for PostgresBackend {
    async fn init(&self, options: &InitOptions, observer: &dyn Observer) -> Result<InitReport> {
        let (identity, state, created) = self.initial_state(options)?;
        observer.step(&format!(
            "node {} of site {}, peer {}",
            state.node, state.site, state.remote
        ));
        self.server.write_passfile(&self.password()?)?;
        if self.cfg().tls {
            observer.step(&format!(
                "TLS: a certificate for {} from the site CA (derived from the site key)",
                state
                    .local
                    .map_or_else(|| "this node".to_owned(), |a| a.to_string())
            ));
            self.ensure_tls(&state, true)?;
        }
        let (state, writable) = if self.server.has_cluster() {
            self.prepare_cluster(identity, observer).await?
        } else {
            observer.step(&format!(
                "there is no cluster in {} yet: switch-on -S -F from-sync copies the peer's",
                self.cfg().data_dir.display()
            ));
            let state = self
                .record_init(move |previous| identity.applied_to(previous), false)
                .await?;
            (state, false)
        };
        Ok(InitReport {
            node: state.node,
            site: state.site,
            remote: SocketAddr::new(state.remote, self.cfg().port),
            local: state.local,
            tables: vec![format!(
                "the PostgreSQL cluster {}",
                self.cfg().data_dir.display()
            )],
            created,
            state: state.state,
            writable,
        })
    }

    async fn switch_on(
        &self,
        options: &SwitchOnOptions,
        observer: &dyn Observer,
    ) -> Result<SwitchReport> {
        let mut state = self.load()?;
        if options.sync {
            return self.sync_from_peer(&mut state, options, observer).await;
        }
        if !self.server.running().await? {
            return Err(Error::State(format!(
                "PostgreSQL is not running on this node ({}): start it, or copy the peer's \
                 data with `switch-on -S -F from-sync`",
                self.cfg().data_dir.display()
            )));
        }
        let mut conn = self.connect_local().await?;
        let message = if Self::in_recovery(&mut conn).await? {
            self.follow_peer(conn, &mut state, options, observer)
                .await?
        } else {
            self.refuse_two_primaries(&mut conn, &state).await?;
            self.switch_on_primary(&mut conn, &mut state, false, observer)
                .await?
        };
        Ok(SwitchReport {
            message,
            ..SwitchReport::default()
        })
    }

    async fn switch_off(&self, observer: &dyn Observer) -> Result<SwitchReport> {
        let mut state = self.load()?;
        let mut conn = self.connect_local().await?;
        let message = if Self::in_recovery(&mut conn).await? {
            self.stop_following(&mut conn, &mut state, observer).await?
        } else {
            self.stop_leading(&mut conn, &mut state, observer).await?
        };
        Ok(SwitchReport {
            message,
            ..SwitchReport::default()
        })
    }

    async fn status(&self) -> Result<Status> {
        let state = self.load()?;
        status::status(self, &state).await
    }

    /// Promotes this standby (`pg_promote()`), unless it may be stale: with the `degrade`
    /// policy a standby that has not streamed for `degrade_after_ms` may lack writes its
    /// primary acknowledged without it; `options.force` promotes it anyway. A running
    /// primary peer is never overruled.
    async fn promote_with(&self, options: PromoteOptions) -> Result<()> {
        let _promoting = self.copy_lock()?;
        let mut state = self.load()?;
        let mut conn = self.connect_local().await?;
        if Self::in_recovery(&mut conn).await? {
            self.check_promotable(&mut conn, &state, options.force)
                .await?;
            Self::pg_promote(&mut conn).await?;
        }
        // A node made the primary has nothing to catch up from its peer.
        if state.state == ReplicationState::Off || state.state == ReplicationState::Initialized {
            self.apply(|s| {
                s.resync = false;
                s.following = false;
            })
            .await?;
            self.reload(&mut conn).await?;
            return Ok(());
        }
        self.switch_on_primary(&mut conn, &mut state, true, &Quiet)
            .await
            .map(drop)
    }

    /// Makes this node the standby. When the peer is a primary this node is rewound
    /// (or copied) from it and streams; otherwise it restarts as a standby that streams
    /// once the peer is back. With `options.defer_copy` it restarts read-only at once
    /// and the resynchronisation from the peer (`pg_rewind` or `pg_basebackup`, which
    /// may take minutes) is recorded as due and run by [`watch`](PostgresBackend::watch):
    /// this is how the agent demotes, since its event loop must go on with heartbeats,
    /// the status page and the tools meanwhile.
    async fn demote_with(&self, options: DemoteOptions) -> Result<DemoteReport> {
        let defer = options.defer_copy;
        // A copy under way (or another restart) leaves the server read-only or
        // stopped, and the copy ends as a standby.
        let _restarting = match defer.then(|| ServiceLock::acquire(&self.copy_lock_path())) {
            Some(Err(_)) => return Ok(DemoteReport::new(true)),
            lock => lock,
        };
        let mut state = self.load()?;
        let Some(was_primary) = self.primary_before_demotion(defer).await? else {
            return Ok(DemoteReport::new(state.resync));
        };
        let peer_is_primary = self.peer_is_primary(&state).await?;
        if peer_is_primary && !defer {
            let sync = SwitchOnOptions::new().from_sync();
            self.sync_from_peer(&mut state, &sync, &Quiet).await?;
            return Ok(DemoteReport::new(false));
        }
        self.restart_as_standby(&mut state, was_primary || peer_is_primary, defer)
            .await?;
        Ok(DemoteReport::new(state.resync))
    }

    /// `timeout` bounds the looks at the server too: a connection or a read of
    /// `pg_stat_replication` that cannot be made in time (a server that does not
    /// answer) ends the wait with [`Error::NotReplicated`] at the limit, as a missing
    /// acknowledgement does, so that a caller answering its client after the wait
    /// answers in time.
    async fn wait_replicated(&self, position: Position, timeout: Duration) -> Result<()> {
        let level = self.settings.replication.synchronous_commit;
        let state = self.load()?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut acked = Position(0);
        let not_replicated = |acked| Error::NotReplicated {
            position,
            acked,
            limit: timeout,
        };
        let mut conn = tokio::time::timeout_at(deadline, self.connect_local())
            .await
            .map_err(|_| not_replicated(acked))??;
        loop {
            acked = tokio::time::timeout_at(
                deadline,
                Self::standby_at(&mut conn, &state.peer_app_name(), level),
            )
            .await
            .map_err(|_| not_replicated(acked))??;
            if acked >= position {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(not_replicated(acked));
            }
            let next = tokio::time::Instant::now() + Duration::from_millis(5);
            tokio::time::sleep_until(next.min(deadline)).await;
        }
    }

    async fn identity(&self) -> Result<Identity> {
        let state = self.load()?;
        Ok(Identity {
            node: state.node,
            site: state.site,
            remote: Some(SocketAddr::new(state.remote, self.cfg().port)),
            local: state.local,
        })
    }

    fn switches_peer(&self) -> bool {
        false
    }

    async fn table_checksums(&self) -> Result<Vec<TableChecksum>> {
        Err(crate::unsupported("checksum"))
    }

    async fn restore_local_rows(&self, _file: &Path, _dry_run: bool) -> Result<RestoreReport> {
        Err(crate::unsupported("restore-local-rows"))
    }
}
