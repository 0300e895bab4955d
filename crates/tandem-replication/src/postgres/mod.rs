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

mod derive;
mod diverge;
mod resync;
mod scram;
mod server;
mod status;
mod tls;

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};

use crate::config::{PostgresConfig, Settings, StandbyLostPolicy};
use crate::error::{Error, Result};
use crate::observer::Observer;
use crate::status::{Position, ReplicationState, Status};
use crate::util::{ServiceLock, now_ms, random_u64, timestamp_for_file, write_atomically};
use crate::{InitOptions, InitReport, SwitchOnOptions, SwitchReport};

use server::{NodeFiles, Server, conf_quote, conninfo_quote, os};

pub use resync::ResyncProgress;
pub use status::parse_lsn;
pub use tls::site_ca_pem;

/// How long a standby may fail to stream from a peer that answers as a primary
/// before the replication service resynchronises it (the walreceiver retries every
/// 5 s by itself; a standby that still does not stream has diverged or is stuck).
const STANDBY_IDLE_LIMIT_MS: u64 = 10_000;

/// The state file's format version.
const STATE_VERSION: u32 = 1;

/// The PostgreSQL backend of one node. Cheap to open: it connects to the servers only
/// for an operation.
#[derive(Debug)]
pub struct PostgresBackend {
    settings: Settings,
    server: Server,
}

/// What this node recorded about replication (`<state dir>/postgres.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PgState {
    pub(crate) node: u8,
    pub(crate) site: u16,
    pub(crate) remote: IpAddr,
    pub(crate) local: Option<IpAddr>,
    pub(crate) state: ReplicationState,
    /// This node streams from the peer (`primary_conninfo` is set).
    pub(crate) following: bool,
    /// Since when (ms since the epoch) this primary no longer waits for its standby.
    pub(crate) degraded_since: Option<u64>,
    /// Since when the primary's standby has not been streaming, if it is not.
    pub(crate) missing_since: Option<u64>,
    /// What the last from-sync did.
    pub(crate) last_copy: Option<String>,
    /// This standby must be resynchronised from its peer (it was made the standby
    /// while the peer was the primary, and may have diverged from it): the
    /// replication service rewinds or copies it, off the agent's event loop.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) resync: bool,
    /// Since when this standby has not been streaming (while its peer answered as a
    /// primary, once that was checked), if it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) idle_since: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    checksum: String,
    state: PgState,
}

impl PgState {
    fn app_name(&self) -> String {
        app_name(self.node)
    }

    fn peer_app_name(&self) -> String {
        app_name(3 - self.node)
    }

    fn alarms(&self, cfg: &PostgresConfig) -> Vec<String> {
        let mut alarms = Vec::new();
        if let Some(since) = self.degraded_since {
            alarms.push(format!(
                "degraded since {}: node {} is not streaming, so commits here do not wait for \
                 it and it may be stale (it will not be promoted without --force)",
                timestamp_for_file(since),
                3 - self.node
            ));
        } else if let Some(since) = self.missing_since
            && cfg.synchronous
            && cfg.standby_lost == StandbyLostPolicy::Strict
        {
            alarms.push(format!(
                "node {} has not been streaming since {}; standby_lost = \"strict\": commits \
                 wait for it",
                3 - self.node,
                timestamp_for_file(since)
            ));
        }
        if self.resync {
            alarms.push(format!(
                "this node was made the standby and waits to be resynchronised (pg_rewind, \
                 else pg_basebackup) from node {}, once that is a primary it reaches; the \
                 replication service does it",
                3 - self.node
            ));
        }
        alarms
    }
}

/// The application name (and slot name) of node `node`'s standby connection.
fn app_name(node: u8) -> String {
    format!("tandem_node{node}")
}

/// What one step of the replication service did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WatchOutcome {
    /// Nothing to do (not initialized, switched off, or everything as it should be).
    Nothing,
    /// This standby streams; its contact time was recorded.
    Streaming,
    /// The primary's standby is not streaming (not for long enough to degrade, or the
    /// policy is strict).
    StandbyMissing,
    /// The primary stopped waiting for its lost standby and raised an alarm.
    Degraded,
    /// The standby streams again and caught up: commits wait for it again.
    Restored,
    /// This standby was resynchronised from its primary (rewound or copied), as its
    /// demotion left due.
    Resynchronised,
}

impl PostgresBackend {
    /// Opens the backend: finds PostgreSQL's programs and its user. Connects to nothing.
    pub async fn open(settings: &Settings) -> Result<PostgresBackend> {
        let server = Server::new(&settings.replication.postgres, &settings.state_dir)?;
        Ok(PostgresBackend {
            settings: settings.clone(),
            server,
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

    /// This node's node address as `init` recorded it.
    pub fn local_address(&self) -> Option<IpAddr> {
        self.load().ok().and_then(|s| s.local)
    }

    fn state_path(&self) -> PathBuf {
        self.settings.state_dir.join("postgres.json")
    }

    fn contact_path(&self) -> PathBuf {
        self.settings.state_dir.join("postgres.contact")
    }

    /// Held while this node's cluster is copied from the peer or restarted in a
    /// new role: one at a time, whether the tool, the agent's demotion or the
    /// replication service's resynchronisation asks.
    fn copy_lock_path(&self) -> PathBuf {
        self.settings.state_dir.join("postgres.copy.lock")
    }

    fn copy_lock(&self) -> Result<ServiceLock> {
        ServiceLock::acquire(&self.copy_lock_path()).map_err(|_| {
            Error::State(
                "this node's cluster is being copied from the peer right now (`mp_replication \
                 status` shows how far it got); try again when it is done"
                    .to_owned(),
            )
        })
    }

    fn lock_path(&self) -> PathBuf {
        self.settings.state_dir.join("replication.lock")
    }

    /// Whether the replication service ([`watch`](Self::watch)) runs on this node.
    pub fn service_running(&self) -> bool {
        ServiceLock::held_by_other(&self.lock_path())
    }

    pub(crate) fn load(&self) -> Result<PgState> {
        let path = self.state_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotInitialized);
            }
            Err(e) => return Err(Error::file("cannot read", &path)(e)),
        };
        let file: StateFile = serde_json::from_str(&text).map_err(|e| {
            Error::State(format!(
                "{} is damaged ({e}); run `mp_replication init` again",
                path.display()
            ))
        })?;
        if file.version != STATE_VERSION || file.checksum != checksum(&file.state) {
            return Err(Error::State(format!(
                "{} has an unknown version or a wrong checksum; run `mp_replication init` again",
                path.display()
            )));
        }
        Ok(file.state)
    }

    fn save(&self, state: &PgState) -> Result<()> {
        let file = StateFile {
            version: STATE_VERSION,
            checksum: checksum(state),
            state: state.clone(),
        };
        let text = serde_json::to_string_pretty(&file)
            .map_err(|e| Error::State(format!("cannot encode the state: {e}")))?;
        write_atomically(&self.state_path(), text.as_bytes())
    }

    /// The replication password (derived from the site key).
    fn password(&self) -> Result<String> {
        let path = self.settings.key_file();
        let key = tandem_peer::SiteKey::load(&path)?;
        scram::password(key.as_bytes())
    }

    fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg().connect_timeout_ms)
    }

    /// Connects to this node's server over its Unix socket as the superuser.
    async fn connect_local(&self) -> Result<PgConnection> {
        let cfg = self.cfg();
        let options = PgConnectOptions::new_without_pgpass()
            .socket(&cfg.socket_dir)
            .port(cfg.port)
            .username(&cfg.superuser)
            .database(&cfg.database)
            .application_name("tandem");
        let what = format!(
            "connecting to this node's PostgreSQL (socket {}, port {}, user {}): is it \
             running (`pg_ctl status -D {}`) and does pg_hba.conf let this user in?",
            cfg.socket_dir.display(),
            cfg.port,
            cfg.superuser,
            cfg.config_dir().display()
        );
        match tokio::time::timeout(self.connect_timeout(), PgConnection::connect_with(&options))
            .await
        {
            Ok(result) => result.map_err(Error::db(what)),
            Err(_) => Err(Error::Timeout {
                what,
                limit: self.connect_timeout(),
            }),
        }
    }

    /// Connects to the peer's server over TCP as the replication role; with TLS on,
    /// only to a server whose certificate names the peer's node address and chains to
    /// the site CA (`verify-full`).
    async fn connect_peer(&self, state: &PgState) -> Result<PgConnection> {
        let cfg = self.cfg();
        let password = self.password()?;
        let mut options = PgConnectOptions::new_without_pgpass()
            .host(&state.remote.to_string())
            .port(cfg.port)
            .username(&cfg.replication_user)
            .password(&password)
            .database(&cfg.database)
            .ssl_mode(PgSslMode::Disable)
            .application_name("tandem");
        if cfg.tls {
            let root = self.server.files().root;
            if !root.is_file() {
                return Err(Error::State(format!(
                    "the site CA's certificate {} is missing, so the peer's certificate cannot \
                     be checked: run `mp_replication init` again on this node",
                    root.display()
                )));
            }
            options = options
                .ssl_mode(PgSslMode::VerifyFull)
                .ssl_root_cert(self.server.files().root);
        }
        let what = format!(
            "connecting to the peer's PostgreSQL at {} as {}",
            SocketAddr::new(state.remote, cfg.port),
            cfg.replication_user
        );
        match tokio::time::timeout(self.connect_timeout(), PgConnection::connect_with(&options))
            .await
        {
            Ok(result) => result.map_err(Error::db(what)),
            Err(_) => Err(Error::Timeout {
                what,
                limit: self.connect_timeout(),
            }),
        }
    }

    fn peer_conninfo(&self, state: &PgState, database: bool) -> String {
        peer_conninfo(self.cfg(), state, &self.server.files(), database)
    }

    fn render_conf(&self, state: &PgState) -> String {
        render_conf(self.cfg(), state, &self.server.files())
    }

    /// With TLS on, issues this node's certificate (for its node address, by the site
    /// CA derived from the site key) when `renew` or when a file is missing (a node
    /// initialized before TLS). Returns whether it issued one.
    fn ensure_tls(&self, state: &PgState, renew: bool) -> Result<bool> {
        if !self.cfg().tls || (!renew && self.server.has_tls_files()) {
            return Ok(false);
        }
        let Some(local) = state.local else {
            return Err(Error::State(
                "TLS on the replication connection needs this node's node address for its \
                 certificate, and init did not learn it: set [network] node_address and run \
                 init again (or set [replication.postgres] tls = false)"
                    .to_owned(),
            ));
        };
        let key = tandem_peer::SiteKey::load(&self.settings.key_file())?;
        let issued = tls::issue(key.as_bytes(), state.node, local)?;
        self.server.write_tls(&issued)?;
        Ok(true)
    }

    /// Writes `tandem.conf` and records the state.
    fn apply(&self, state: &PgState) -> Result<()> {
        if self.cfg().config_dir().is_dir() {
            // tandem.conf names the certificate files: the server must find them.
            self.ensure_tls(state, false)?;
            self.server
                .write_file(&self.cfg().tandem_conf(), &self.render_conf(state))?;
        }
        self.save(state)
    }

    async fn reload(&self, conn: &mut PgConnection) -> Result<()> {
        sqlx::query("SELECT pg_reload_conf()")
            .execute(&mut *conn)
            .await
            .map_err(Error::db("reloading the configuration"))?;
        Ok(())
    }

    async fn in_recovery(conn: &mut PgConnection) -> Result<bool> {
        sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&mut *conn)
            .await
            .map_err(Error::db("asking whether the server is a standby"))
    }

    /// The peer's `tandem.state`.
    async fn peer_state(peer: &mut PgConnection) -> Result<Option<ReplicationState>> {
        let text: Option<String> =
            sqlx::query_scalar("SELECT current_setting('tandem.state', true)")
                .fetch_one(&mut *peer)
                .await
                .map_err(Error::db("reading the peer's tandem.state"))?;
        Ok(text.as_deref().and_then(ReplicationState::parse))
    }

    /// Creates or updates the replication role (on a primary).
    async fn ensure_role(&self, conn: &mut PgConnection) -> Result<()> {
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
    async fn ensure_slot(conn: &mut PgConnection, name: &str) -> Result<()> {
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
    async fn drop_slot(conn: &mut PgConnection, name: &str) -> Result<bool> {
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
    async fn streaming(conn: &mut PgConnection) -> Result<bool> {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM pg_stat_wal_receiver LIMIT 1")
                .fetch_optional(&mut *conn)
                .await
                .map_err(Error::db("reading pg_stat_wal_receiver"))?;
        Ok(status.as_deref() == Some("streaming"))
    }

    /// Whether the primary's standby `name` streams, and its flushed position.
    async fn standby_streams(conn: &mut PgConnection, name: &str) -> Result<Option<u64>> {
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

    fn record_contact(&self) -> Result<()> {
        write_atomically(&self.contact_path(), now_ms().to_string().as_bytes())
    }

    fn last_contact(&self) -> Option<u64> {
        std::fs::read_to_string(self.contact_path())
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }

    /// Waits until this standby streams from the peer.
    async fn wait_streaming(&self, limit: Duration) -> Result<()> {
        let started = std::time::Instant::now();
        loop {
            if let Ok(mut conn) = self.connect_local().await
                && Self::streaming(&mut conn).await?
            {
                self.record_contact()?;
                return Ok(());
            }
            if started.elapsed() > limit {
                return Err(Error::State(format!(
                    "this standby does not stream from the peer after {limit:?}; the server log \
                     {} says: {}",
                    self.server.server_log().display(),
                    server::tail_of(&self.server.server_log(), 4)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The primary side of switching on: role, slot, and waiting for the standby.
    async fn switch_on_primary(
        &self,
        conn: &mut PgConnection,
        state: &mut PgState,
        observer: &dyn Observer,
    ) -> Result<String> {
        observer.step("this node is the primary: replication role and slot for the peer");
        self.ensure_role(conn).await?;
        Self::ensure_slot(conn, &state.peer_app_name()).await?;
        state.state = ReplicationState::Active;
        state.following = false;
        let streams = Self::standby_streams(conn, &state.peer_app_name())
            .await?
            .is_some();
        let cfg = self.cfg();
        let waits = if !cfg.synchronous {
            state.degraded_since = None;
            "commits do not wait for it (synchronous = false)".to_owned()
        } else if streams || cfg.standby_lost == StandbyLostPolicy::Strict {
            state.degraded_since = None;
            format!("commits wait for it ({})", state.peer_app_name())
        } else {
            // The standby is not there yet; the replication service makes commits wait
            // for it once it streams.
            state.degraded_since = Some(now_ms());
            "commits wait for it once it streams (the replication service switches that on)"
                .to_owned()
        };
        state.missing_since = if streams { None } else { Some(now_ms()) };
        self.apply(state)?;
        self.reload(conn).await?;
        Ok(format!(
            "replication is on: this node is the primary with a slot for node {}; {waits}",
            3 - state.node
        ))
    }

    async fn init_impl(
        &self,
        options: &InitOptions,
        observer: &dyn Observer,
    ) -> Result<InitReport> {
        if !(1..=2).contains(&options.node) {
            return Err(Error::State(format!(
                "node id {} is not 1 or 2",
                options.node
            )));
        }
        let remote = options.remote.ip();
        if options.local == Some(remote) {
            return Err(Error::State(format!(
                "-r {remote} is this node's own address: give the peer's node address"
            )));
        }
        let previous = self.load().ok();
        let created = previous.is_none();
        let mut state = previous.unwrap_or(PgState {
            node: options.node,
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
        state.node = options.node;
        state.site = options.site;
        state.remote = remote;
        state.local = options.local.or(state.local);
        observer.step(&format!(
            "node {} of site {}, peer {remote}",
            state.node, state.site
        ));
        let password = self.password()?;
        self.server.write_passfile(&password)?;
        if self.cfg().tls {
            observer.step(&format!(
                "TLS: a certificate for {} from the site CA (derived from the site key)",
                state
                    .local
                    .map_or_else(|| "this node".to_owned(), |a| a.to_string())
            ));
            self.ensure_tls(&state, true)?;
        }
        let mut writable = false;
        if self.server.has_cluster() {
            observer.step("pg_hba.conf: the replication role from the peer's node address only");
            self.server.ensure_hba(remote)?;
            observer.step("tandem.conf and its include line in postgresql.conf");
            self.server.ensure_include()?;
            self.apply(&state)?;
            if !self.server.running().await? {
                return Err(Error::State(format!(
                    "PostgreSQL is not running on this node (data directory {}): start it and \
                     run init again",
                    self.cfg().data_dir.display()
                )));
            }
            let mut conn = self.connect_local().await?;
            let settings: (String, String, i32, i32) = sqlx::query_as(
                "SELECT current_setting('wal_log_hints'), current_setting('wal_level'), \
                 current_setting('max_wal_senders')::int, \
                 current_setting('max_replication_slots')::int",
            )
            .fetch_one(&mut conn)
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
            let needs_restart = hints != "on";
            if needs_restart {
                observer.step("restarting PostgreSQL so that wal_log_hints takes effect");
                drop(conn);
                self.server.restart().await?;
                conn = self.connect_local().await?;
            } else {
                self.reload(&mut conn).await?;
            }
            if Self::in_recovery(&mut conn).await? {
                observer.step("this node is a standby: the role and slot come from the primary");
            } else {
                observer.step("the replication role (SCRAM) and a physical slot for the peer");
                self.ensure_role(&mut conn).await?;
                Self::ensure_slot(&mut conn, &state.peer_app_name()).await?;
                writable = true;
            }
        } else {
            observer.step(&format!(
                "there is no cluster in {} yet: switch-on -S -F from-sync copies the peer's",
                self.cfg().data_dir.display()
            ));
            self.save(&state)?;
        }
        Ok(InitReport {
            node: state.node,
            site: state.site,
            remote: SocketAddr::new(remote, self.cfg().port),
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

    async fn switch_on_impl(
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
            observer.step("this node is a standby: streaming from the peer");
            if let Ok(mut peer) = self.connect_peer(&state).await {
                let ids = "SELECT system_identifier::text FROM pg_control_system()";
                let mine: String = sqlx::query_scalar(ids)
                    .fetch_one(&mut conn)
                    .await
                    .map_err(Error::db("reading the system identifier"))?;
                let theirs: String = sqlx::query_scalar(ids)
                    .fetch_one(&mut peer)
                    .await
                    .map_err(Error::db("reading the peer's system identifier"))?;
                if mine != theirs {
                    return Err(Error::State(format!(
                        "this node's cluster is not a copy of the peer's (system identifier \
                         {mine}, the peer's {theirs}): run `switch-on -S -F from-sync`"
                    )));
                }
            }
            state.state = ReplicationState::Active;
            state.following = true;
            state.degraded_since = None;
            self.apply(&state)?;
            self.reload(&mut conn).await?;
            drop(conn);
            self.wait_streaming(options.timeout).await.map_err(|e| {
                Error::State(format!(
                    "{}; a cluster that is not a copy of the peer's needs `switch-on -S -F \
                     from-sync`",
                    crate::error::chain(&e)
                ))
            })?;
            format!("replication is on: this node streams from {}", state.remote)
        } else {
            // A peer that was switched on as a primary too (after a failover both
            // may be) must not get a standby-less partner silently; a peer that is only
            // initialized is the seed's procedure (it copies from here next).
            if let Ok(mut peer) = self.connect_peer(&state).await
                && !Self::in_recovery(&mut peer).await?
                && Self::peer_state(&mut peer).await? == Some(ReplicationState::Active)
                && Self::standby_streams(&mut conn, &state.peer_app_name())
                    .await?
                    .is_none()
            {
                return Err(Error::State(format!(
                    "both nodes are primaries (the peer {} is not a standby): run `switch-on -S \
                     -F from-sync` on the node that should follow; its data is replaced by its \
                     peer's",
                    state.remote
                )));
            }
            self.switch_on_primary(&mut conn, &mut state, observer)
                .await?
        };
        Ok(SwitchReport {
            message,
            ..SwitchReport::default()
        })
    }

    /// `switch-on -S -F from-sync`: this node becomes the standby of the peer, its data
    /// rewound (`pg_rewind`, when it was a primary of the same cluster and can be) or
    /// copied afresh (`pg_basebackup`).
    async fn sync_from_peer(
        &self,
        state: &mut PgState,
        options: &SwitchOnOptions,
        observer: &dyn Observer,
    ) -> Result<SwitchReport> {
        let _copying = self.copy_lock()?;
        observer.step(&format!("asking the peer {} for its cluster", state.remote));
        let mut peer = self.connect_peer(state).await?;
        if Self::in_recovery(&mut peer).await? {
            return Err(Error::State(format!(
                "the peer {} is a standby, not a primary: from-sync copies from the primary \
                 (promote the peer first)",
                state.remote
            )));
        }
        let peer_id: String =
            sqlx::query_scalar("SELECT system_identifier::text FROM pg_control_system()")
                .fetch_one(&mut peer)
                .await
                .map_err(Error::db("reading the peer's system identifier"))?;
        Self::ensure_slot(&mut peer, &state.app_name()).await?;
        // A peer promoted a moment ago names its new timeline in its control file only
        // after a checkpoint, and pg_rewind reads that file (pg_checkpoint role).
        if let Err(e) = sqlx::query("CHECKPOINT").execute(&mut peer).await {
            observer.step(&format!("the peer refused a checkpoint: {e}"));
        }
        drop(peer);
        self.server.write_passfile(&self.password()?)?;
        let control = self.server.control_data().await?;
        state.state = ReplicationState::Syncing;
        self.save(state)?;
        let result = self
            .copy_from_peer(state, control, &peer_id, options, observer)
            .await;
        match result {
            Ok(report) => Ok(report),
            Err(e) => {
                state.state = ReplicationState::Failed;
                let _ = self.save(state);
                Err(e)
            }
        }
    }

    async fn copy_from_peer(
        &self,
        state: &mut PgState,
        control: Option<server::ControlData>,
        peer_id: &str,
        options: &SwitchOnOptions,
        observer: &dyn Observer,
    ) -> Result<SwitchReport> {
        let cfg = self.cfg();
        observer.step("stopping this node's PostgreSQL");
        self.server.stop().await?;
        if self.server.has_cluster() {
            self.server.save_node_files()?;
        }
        let same_cluster = control
            .as_ref()
            .is_some_and(|c| c.system_identifier.as_deref() == Some(peer_id));
        let mut how = String::new();
        if let Some(c) = control.as_ref().filter(|c| same_cluster && c.was_primary())
            && c.rewindable()
        {
            observer.step("this node was a primary of the same cluster: pg_rewind from the peer");
            let args = [
                os("-D"),
                cfg.data_dir.clone().into_os_string(),
                OsString::from(format!(
                    "--source-server={}",
                    self.peer_conninfo(state, true)
                )),
                os("--progress"),
            ];
            match self
                .server
                .run(
                    "pg_rewind",
                    &args,
                    "rewinding from the peer",
                    Some(observer),
                )
                .await
            {
                Ok(_) => {
                    let log = self.server.log_dir.join("pg_rewind.log");
                    let diverged = std::fs::read_to_string(&log)
                        .unwrap_or_default()
                        .lines()
                        .rev()
                        .find(|l| l.contains("diverged at") || l.contains("no rewind required"))
                        .map(|l| l.trim_start_matches("pg_rewind: ").trim().to_owned());
                    how = match diverged {
                        Some(d) => format!("pg_rewind ({d})"),
                        None => "pg_rewind".to_owned(),
                    };
                }
                Err(e) => {
                    observer.step(&format!(
                        "pg_rewind failed, taking a fresh copy: {}",
                        crate::error::chain(&e)
                    ));
                    how = format!(
                        "a fresh pg_basebackup (pg_rewind failed; see {})",
                        self.server.log_dir.join("pg_rewind.log").display()
                    );
                }
            }
        }
        let rewound = how.starts_with("pg_rewind");
        if !rewound {
            if how.is_empty() {
                how = if !self.server.has_cluster() {
                    "a fresh pg_basebackup (there was no cluster here)".to_owned()
                } else if !same_cluster {
                    "a fresh pg_basebackup (this node's cluster is not a copy of the peer's)"
                        .to_owned()
                } else if control.as_ref().is_some_and(|c| !c.was_primary()) {
                    "a fresh pg_basebackup (this node was a standby)".to_owned()
                } else {
                    "a fresh pg_basebackup (wal_log_hints was off, so pg_rewind cannot work)"
                        .to_owned()
                };
            }
            observer.step("copying the peer's cluster with pg_basebackup");
            self.basebackup(state, observer).await?;
        }
        self.server.restore_node_files()?;
        // Where the configuration lives in the data directory, the copy brought the
        // peer's certificate and key along, and a node that had no cluster before had
        // none of its own to put back: issue this node's again.
        self.ensure_tls(state, true)?;
        self.server.write_standby_signal()?;
        state.following = true;
        state.state = ReplicationState::Active;
        state.degraded_since = None;
        state.missing_since = None;
        state.last_copy = Some(format!("{} at {}", how, timestamp_for_file(now_ms())));
        state.resync = false;
        state.idle_since = None;
        self.server.ensure_include()?;
        self.apply(state)?;
        observer.step("starting this node's PostgreSQL as a standby");
        self.server.start().await?;
        self.wait_streaming(options.timeout).await?;
        Ok(SwitchReport {
            message: format!(
                "copied the peer's data with {how}; this node streams from {}",
                state.remote
            ),
            ..SwitchReport::default()
        })
    }

    async fn basebackup(&self, state: &PgState, observer: &dyn Observer) -> Result<()> {
        let data = self.cfg().data_dir.clone();
        let name = data
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "data".to_owned());
        let parent = data
            .parent()
            .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
        let fresh = parent.join(format!("{name}.tandem-new"));
        let old = parent.join(format!("{name}.tandem-old"));
        self.server.make_data_dir(&fresh)?;
        let args = [
            os("-D"),
            fresh.clone().into_os_string(),
            OsString::from(format!("--dbname={}", self.peer_conninfo(state, false))),
            os("-X"),
            os("stream"),
            os("-S"),
            OsString::from(state.app_name()),
            os("-c"),
            os("fast"),
            os("--progress"),
        ];
        self.server
            .run(
                "pg_basebackup",
                &args,
                "copying the peer's cluster",
                Some(observer),
            )
            .await?;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(Error::file("cannot remove", &old))?;
        }
        if data.exists() {
            std::fs::rename(&data, &old).map_err(Error::file("cannot move aside", &data))?;
        }
        std::fs::rename(&fresh, &data).map_err(Error::file("cannot move into place", &fresh))?;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(Error::file("cannot remove", &old))?;
        }
        Ok(())
    }

    async fn switch_off_impl(&self, observer: &dyn Observer) -> Result<SwitchReport> {
        let mut state = self.load()?;
        let mut conn = self.connect_local().await?;
        let message = if Self::in_recovery(&mut conn).await? {
            observer.step("this node is a standby: it stops streaming");
            state.state = ReplicationState::Off;
            state.following = false;
            self.apply(&state)?;
            self.reload(&mut conn).await?;
            // The primary would keep WAL for this node's slot; give it up there.
            let slot = state.app_name();
            let dropped = match self.connect_peer(&state).await {
                Ok(mut peer) => Self::drop_slot(&mut peer, &slot).await.unwrap_or(false),
                Err(_) => false,
            };
            if dropped {
                format!(
                    "replication is off: this node no longer streams from the peer, its slot \
                     {slot} there is dropped, and it stays a read-only standby; bring it back \
                     with `switch-on -S -F from-sync`"
                )
            } else {
                format!(
                    "replication is off: this node no longer streams from the peer and stays a \
                     read-only standby; the peer was not reached, so its slot {slot} keeps WAL \
                     there (at most max_slot_wal_keep_mb) until switch-off runs there"
                )
            }
        } else {
            observer.step("this node is the primary: commits stop waiting, the slot is dropped");
            state.state = ReplicationState::Off;
            state.degraded_since = None;
            state.missing_since = None;
            self.apply(&state)?;
            self.reload(&mut conn).await?;
            let slot = state.peer_app_name();
            if !Self::drop_slot(&mut conn, &slot).await? {
                return Err(Error::State(format!(
                    "the slot {slot} stays in use by the standby; run switch-off again"
                )));
            }
            format!(
                "replication is off: commits no longer wait for node {} and its slot {slot} is \
                 dropped, so no WAL is kept for it; bring it back with `switch-on` here and \
                 `switch-on -S -F from-sync` there",
                3 - state.node
            )
        };
        Ok(SwitchReport {
            message,
            ..SwitchReport::default()
        })
    }

    /// Promotes this standby (`pg_promote()`), unless it may be stale: with the `degrade`
    /// policy a standby that has not streamed for `degrade_after_ms` may lack writes its
    /// primary acknowledged without it; `force` promotes it anyway. A running primary
    /// peer is never overruled.
    pub async fn promote_with(&self, force: bool) -> Result<()> {
        let _promoting = self.copy_lock()?;
        let mut state = self.load()?;
        let mut conn = self.connect_local().await?;
        if Self::in_recovery(&mut conn).await? {
            let mut peer = self.connect_peer(&state).await.ok();
            if let Some(peer) = peer.as_mut()
                && !Self::in_recovery(peer).await?
            {
                return Err(Error::State(format!(
                    "the peer {} is a running primary: make it the standby first (`failover \
                     set-server standby` or `mp_replication demote` there)",
                    state.remote
                )));
            }
            let cfg = self.cfg();
            if Self::streaming(&mut conn).await? {
                self.record_contact()?;
            }
            let limit = cfg.degrade_after_ms;
            let mut stale = match self.last_contact() {
                Some(at) => now_ms().saturating_sub(at) > limit,
                None => true,
            };
            // A peer that is a standby itself and not ahead of this node (same or
            // older timeline, no more WAL) cannot have acknowledged anything this
            // node lacks: for example both nodes after their agents booted, the
            // former primary demoted at boot.
            if stale && let Some(peer) = peer.as_mut() {
                let mine = Self::wal_point(&mut conn).await?;
                let theirs = Self::wal_point(peer).await?;
                if theirs <= mine {
                    stale = false;
                }
            }
            if cfg.synchronous
                && cfg.standby_lost == StandbyLostPolicy::Degrade
                && state.following
                && stale
                && !force
            {
                let when = self.last_contact().map_or_else(
                    || "never, as far as this node recorded".to_owned(),
                    |at| format!("at {}", timestamp_for_file(at)),
                );
                return Err(Error::State(format!(
                    "this standby may be stale: it last streamed from the peer {when}, and a \
                     primary stops waiting for a standby gone for {limit} ms (standby_lost = \
                     \"degrade\"), so it may have acknowledged writes this node lacks; promote \
                     with --force only if you know it did not"
                )));
            }
            // Asked without waiting, then watched from short statements: a session
            // that waits inside `pg_promote(true)` holds a snapshot, which the
            // end of recovery can conflict with (it was cancelled after
            // max_standby_streaming_delay, 30 s, in a chaos trial).
            sqlx::query("SELECT pg_promote(false)")
                .execute(&mut conn)
                .await
                .map_err(Error::db("promoting this node (pg_promote)"))?;
            let asked = std::time::Instant::now();
            while Self::in_recovery(&mut conn).await? {
                if asked.elapsed() > Duration::from_secs(60) {
                    return Err(Error::State(
                        "the promotion did not finish within 60 s: see the server log".to_owned(),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // The control file names the new timeline only after a checkpoint; until
            // then pg_rewind from here would find nothing to rewind.
            sqlx::query("CHECKPOINT")
                .execute(&mut conn)
                .await
                .map_err(Error::db("checkpoint after the promotion"))?;
        }
        // A node made the primary has nothing to catch up from its peer.
        state.resync = false;
        if state.state == ReplicationState::Off || state.state == ReplicationState::Initialized {
            state.following = false;
            self.apply(&state)?;
            self.reload(&mut conn).await?;
            return Ok(());
        }
        self.switch_on_primary(&mut conn, &mut state, &crate::observer::Quiet)
            .await
            .map(drop)
    }

    /// Makes this node the standby: if the peer is a primary, stop, rewind (or copy) and
    /// restart streaming from it; otherwise restart as a standby that streams once the
    /// peer is back.
    /// Where a server's WAL stands: (timeline of its last checkpoint or
    /// restartpoint, the furthest position it has written, received or replayed).
    /// Both readable by any role.
    async fn wal_point(conn: &mut PgConnection) -> Result<(u32, u64)> {
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
    async fn peer_is_primary(&self, state: &PgState) -> Result<bool> {
        match self.connect_peer(state).await {
            Ok(mut peer) => Ok(!Self::in_recovery(&mut peer).await?),
            Err(_) => Ok(false),
        }
    }

    /// Makes this node the standby at once, leaving the copy to the replication
    /// service: the server restarts read-only (a standby), and when the peer is a
    /// primary the resynchronisation from it (`pg_rewind` or `pg_basebackup`, which
    /// may take minutes) is recorded as due and run by [`watch`](Self::watch).
    /// Returns whether one is due. This is how the agent demotes: its event loop
    /// must go on with heartbeats, the status page and the tools meanwhile.
    pub async fn demote_deferring_copy(&self) -> Result<bool> {
        // A copy under way (or another restart) leaves the server read-only or
        // stopped, and the copy ends as a standby.
        let Ok(_restarting) = ServiceLock::acquire(&self.copy_lock_path()) else {
            return Ok(true);
        };
        let mut state = self.load()?;
        let was_primary = if self.server.running().await? {
            let mut conn = self.connect_local().await?;
            if Self::in_recovery(&mut conn).await? {
                return Ok(state.resync);
            }
            true
        } else {
            self.server
                .control_data()
                .await?
                .is_some_and(|c| c.was_primary())
        };
        let peer_is_primary = self.peer_is_primary(&state).await?;
        self.server.stop().await?;
        if self.server.has_cluster() {
            self.server.write_standby_signal()?;
        }
        state.following = state.state != ReplicationState::Off;
        state.degraded_since = None;
        state.missing_since = None;
        // A former primary may hold WAL its peer never had (it may have been cut off
        // when the peer took over, and cannot be asked now): it is rewound from the
        // peer once the peer is a primary it reaches; pg_rewind finds nothing to do
        // when the two did not diverge.
        state.resync = (was_primary || peer_is_primary) && state.state != ReplicationState::Off;
        self.apply(&state)?;
        if self.server.has_cluster() {
            self.server.start().await?;
        }
        Ok(state.resync)
    }

    /// The resynchronisation that [`demote_deferring_copy`](Self::demote_deferring_copy)
    /// left due, with its progress in `<state dir>/postgres/resync.json`.
    async fn resync_due(&self, state: &mut PgState) -> Result<()> {
        let recorder = resync::Recorder::new(&self.server.log_dir);
        let options = SwitchOnOptions::new().from_sync();
        let result = self.sync_from_peer(state, &options, &recorder).await;
        resync::clear(&self.server.log_dir);
        let report = match result {
            Ok(report) => report,
            Err(e) => {
                // Tried again by the next round of the service, not at once.
                tokio::time::sleep(Duration::from_secs(2)).await;
                return Err(e);
            }
        };
        let mut state = self.load()?;
        state.resync = false;
        self.save(&state)?;
        tracing::info!(report = %report.message, "resynchronised from the peer");
        Ok(())
    }

    async fn demote_impl(&self) -> Result<()> {
        let mut state = self.load()?;
        if self.server.running().await? {
            let mut conn = self.connect_local().await?;
            if Self::in_recovery(&mut conn).await? {
                return Ok(());
            }
        }
        let peer_is_primary = self.peer_is_primary(&state).await?;
        if peer_is_primary {
            let options = SwitchOnOptions::new().from_sync();
            return self
                .sync_from_peer(&mut state, &options, &crate::observer::Quiet)
                .await
                .map(drop);
        }
        self.server.stop().await?;
        self.server.write_standby_signal()?;
        state.following = state.state != ReplicationState::Off;
        state.degraded_since = None;
        state.missing_since = None;
        self.apply(&state)?;
        self.server.start().await
    }

    /// One step of the replication service: a standby records that it streams; a
    /// synchronous primary with the `degrade` policy stops waiting for a standby gone
    /// for `degrade_after_ms` (and raises an alarm), and waits again once it streams and
    /// has caught up.
    pub async fn watch_once(&self) -> Result<WatchOutcome> {
        let Ok(mut state) = self.load() else {
            return Ok(WatchOutcome::Nothing);
        };
        if state.resync {
            let peer_is_primary = self.peer_is_primary(&state).await?;
            if !peer_is_primary {
                // Not yet: the alarm says what it waits for.
                return Ok(WatchOutcome::Nothing);
            }
            self.resync_due(&mut state).await?;
            return Ok(WatchOutcome::Resynchronised);
        }
        let mut conn = self.connect_local().await?;
        if Self::in_recovery(&mut conn).await? {
            if Self::streaming(&mut conn).await? {
                self.record_contact()?;
                if state.idle_since.take().is_some() {
                    self.save(&state)?;
                }
                return Ok(WatchOutcome::Streaming);
            }
            return self.standby_idle(&mut state).await;
        }
        let cfg = self.cfg();
        if state.state != ReplicationState::Active || state.following || !cfg.synchronous {
            return Ok(WatchOutcome::Nothing);
        }
        let now = now_ms();
        match Self::standby_streams(&mut conn, &state.peer_app_name()).await? {
            Some(behind) => {
                let changed = state.missing_since.take().is_some();
                // Wait again only once the standby is close behind, so that switching
                // back does not stall commits while it catches up.
                if state.degraded_since.is_some() && behind < 16 << 20 {
                    state.degraded_since = None;
                    self.apply(&state)?;
                    self.reload(&mut conn).await?;
                    return Ok(WatchOutcome::Restored);
                }
                if changed {
                    self.save(&state)?;
                }
                Ok(WatchOutcome::Nothing)
            }
            None => {
                let since = *state.missing_since.get_or_insert(now);
                if state.degraded_since.is_none()
                    && cfg.standby_lost == StandbyLostPolicy::Degrade
                    && now.saturating_sub(since) >= cfg.degrade_after_ms
                {
                    state.degraded_since = Some(now);
                    self.apply(&state)?;
                    self.reload(&mut conn).await?;
                    tracing::warn!(
                        standby = %state.peer_app_name(),
                        "the standby is gone: commits no longer wait for it"
                    );
                    return Ok(WatchOutcome::Degraded);
                }
                self.save(&state)?;
                Ok(WatchOutcome::StandbyMissing)
            }
        }
    }

    /// A following standby that does not stream: once it has not streamed for
    /// [`STANDBY_IDLE_LIMIT_MS`] while its peer answers as a primary, it is marked
    /// for resynchronisation (the next round rewinds it; `pg_rewind` finds nothing
    /// to do when nothing diverged, and the restart starts its walreceiver afresh).
    /// The clock starts again while the peer is no primary.
    async fn standby_idle(&self, state: &mut PgState) -> Result<WatchOutcome> {
        if !state.following || state.state != ReplicationState::Active {
            return Ok(WatchOutcome::Nothing);
        }
        let now = now_ms();
        let since = *state.idle_since.get_or_insert(now);
        if now.saturating_sub(since) >= STANDBY_IDLE_LIMIT_MS {
            let peer_is_primary = self.peer_is_primary(state).await?;
            if peer_is_primary {
                tracing::warn!(
                    idle_ms = now.saturating_sub(since),
                    "this standby does not stream from its primary: resynchronising it"
                );
                state.idle_since = None;
                state.resync = true;
            } else {
                state.idle_since = Some(now);
            }
            self.save(state)?;
        } else if since == now {
            self.save(state)?;
        }
        Ok(WatchOutcome::Nothing)
    }

    /// The replication service of a PostgreSQL node: [`watch_once`](Self::watch_once)
    /// every `heartbeat_ms` until `shutdown` completes. Holds the service lock.
    pub async fn watch(&self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let _lock = ServiceLock::acquire(&self.lock_path())?;
        let interval = Duration::from_millis(self.settings.replication.heartbeat_ms);
        tokio::pin!(shutdown);
        loop {
            match self.watch_once().await {
                Ok(WatchOutcome::Degraded) => {
                    tracing::warn!("degraded: commits no longer wait for the standby");
                }
                Ok(WatchOutcome::Restored) => {
                    tracing::info!("the standby caught up: commits wait for it again");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %crate::error::chain(&e), "replication check"),
            }
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(interval) => {}
            }
        }
    }

    async fn wait_replicated_impl(&self, position: Position, timeout: Duration) -> Result<()> {
        let state = self.load()?;
        let started = std::time::Instant::now();
        let mut conn = self.connect_local().await?;
        loop {
            let flushed: Option<String> = sqlx::query_scalar(
                "SELECT flush_lsn::text FROM pg_stat_replication WHERE application_name = $1 \
                 ORDER BY flush_lsn DESC NULLS LAST LIMIT 1",
            )
            .bind(state.peer_app_name())
            .fetch_optional(&mut conn)
            .await
            .map_err(Error::db("reading pg_stat_replication"))?
            .flatten();
            let acked = Position(flushed.as_deref().and_then(parse_lsn).unwrap_or(0));
            if acked >= position {
                return Ok(());
            }
            if started.elapsed() >= timeout {
                return Err(Error::NotReplicated {
                    position,
                    acked,
                    limit: timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn status_impl(&self) -> Result<Status> {
        let state = self.load()?;
        status::status(self, &state).await
    }
}

/// The libpq connection string of this node's connections to the peer. With TLS on,
/// the peer's certificate must name its node address and chain to the site CA, and
/// SCRAM must be bound to the TLS channel (so a server that skips authentication is
/// refused too). The client certificate is named too: this node's own, instead of
/// libpq's default under `~/.postgresql`, which the programs run as PostgreSQL's user
/// with root's home cannot read (and then refuse to connect).
fn peer_conninfo(
    cfg: &PostgresConfig,
    state: &PgState,
    files: &NodeFiles,
    database: bool,
) -> String {
    let mut text = format!(
        "host={} port={} user={} passfile={} application_name={}",
        conninfo_quote(&state.remote.to_string()),
        cfg.port,
        conninfo_quote(&cfg.replication_user),
        conninfo_quote(&files.passfile.display().to_string()),
        conninfo_quote(&state.app_name()),
    );
    if cfg.tls {
        text.push_str(&format!(
            " sslmode=verify-full sslrootcert={} sslcert={} sslkey={} channel_binding=require",
            conninfo_quote(&files.root.display().to_string()),
            conninfo_quote(&files.cert.display().to_string()),
            conninfo_quote(&files.key.display().to_string()),
        ));
    } else {
        text.push_str(" sslmode=prefer");
    }
    if database {
        text.push_str(&format!(" dbname={}", conninfo_quote(&cfg.database)));
    }
    text
}

/// `tandem.conf` for `state`.
fn render_conf(cfg: &PostgresConfig, state: &PgState, files: &NodeFiles) -> String {
    let names = if state.state == ReplicationState::Active
        && cfg.synchronous
        && state.degraded_since.is_none()
        && !state.following
    {
        state.peer_app_name()
    } else {
        String::new()
    };
    let mut out = String::from(
        "# Written by tandem (mp_replication) from its state file; changes here are \
             replaced.\n",
    );
    let mut set = |key: &str, value: String| {
        out.push_str(&format!("{key} = {value}\n"));
    };
    // Only what replication needs and the operator would not set otherwise; wal_level,
    // max_wal_senders, max_replication_slots and hot_standby keep their (working)
    // defaults or the operator's values, which init checks.
    set("wal_log_hints", "on".into());
    if cfg.tls {
        set("ssl", "on".into());
        set(
            "ssl_cert_file",
            conf_quote(&files.cert.display().to_string()),
        );
        set("ssl_key_file", conf_quote(&files.key.display().to_string()));
    }
    let keep = match cfg.max_slot_wal_keep_mb {
        0 => "-1".to_owned(),
        mb => conf_quote(&format!("{mb}MB")),
    };
    set("max_slot_wal_keep_size", keep);
    set("synchronous_standby_names", conf_quote(&names));
    set("tandem.node", conf_quote(&state.node.to_string()));
    set("tandem.site", conf_quote(&state.site.to_string()));
    set("tandem.state", conf_quote(state.state.as_str()));
    if state.following {
        set(
            "primary_conninfo",
            conf_quote(&peer_conninfo(cfg, state, files, false)),
        );
        set("primary_slot_name", conf_quote(&state.app_name()));
    } else {
        set("primary_conninfo", conf_quote(""));
        set("primary_slot_name", conf_quote(""));
    }
    out
}

fn checksum(state: &PgState) -> String {
    let text = serde_json::to_string(state).unwrap_or_default();
    hex::encode(Sha256::digest(text.as_bytes()))
}

impl crate::ReplicationBackend for PostgresBackend {
    async fn init(&self, options: &InitOptions, observer: &dyn Observer) -> Result<InitReport> {
        self.init_impl(options, observer).await
    }

    async fn switch_on(
        &self,
        options: &SwitchOnOptions,
        observer: &dyn Observer,
    ) -> Result<SwitchReport> {
        self.switch_on_impl(options, observer).await
    }

    async fn switch_off(&self, observer: &dyn Observer) -> Result<SwitchReport> {
        self.switch_off_impl(observer).await
    }

    async fn status(&self) -> Result<Status> {
        self.status_impl().await
    }

    async fn promote(&self) -> Result<()> {
        self.promote_with(false).await
    }

    async fn demote(&self) -> Result<()> {
        self.demote_impl().await
    }

    async fn wait_replicated(&self, position: Position, timeout: Duration) -> Result<()> {
        self.wait_replicated_impl(position, timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> PgState {
        PgState {
            node: 2,
            site: 1,
            remote: "192.0.2.11".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            local: None,
            state: ReplicationState::Active,
            following: false,
            degraded_since: None,
            missing_since: None,
            last_copy: None,
            resync: false,
            idle_since: None,
        }
    }

    #[test]
    fn a_synchronous_primary_waits_for_its_peer_unless_degraded() {
        let cfg = PostgresConfig::default();
        let pass = &NodeFiles::in_dir(Path::new("/etc/postgresql/15/main"));
        let mut s = state();
        let conf = render_conf(&cfg, &s, pass);
        assert!(
            conf.contains("synchronous_standby_names = 'tandem_node1'\n"),
            "{conf}"
        );
        assert!(conf.contains("primary_conninfo = ''\n"), "{conf}");
        assert!(conf.contains("tandem.state = 'active'\n"), "{conf}");
        assert!(
            conf.contains("max_slot_wal_keep_size = '10240MB'\n"),
            "{conf}"
        );
        s.degraded_since = Some(1);
        assert!(render_conf(&cfg, &s, pass).contains("synchronous_standby_names = ''\n"));
        s.degraded_since = None;
        s.following = true;
        let standby = render_conf(&cfg, &s, pass);
        assert!(
            standby.contains("primary_slot_name = 'tandem_node2'\n"),
            "{standby}"
        );
        assert!(
            standby.contains("host=''192.0.2.11'' port=5432 user=''tandem_replicator''"),
            "{standby}"
        );
        assert!(
            standby.contains("application_name=''tandem_node2''"),
            "{standby}"
        );
    }

    #[test]
    fn with_tls_the_server_uses_its_certificate_and_the_standby_checks_the_peer_s() {
        let files = NodeFiles::in_dir(Path::new("/etc/postgresql/15/main"));
        let mut s = state();
        s.following = true;
        let conf = render_conf(&PostgresConfig::default(), &s, &files);
        for line in [
            "ssl = on\n",
            "ssl_cert_file = '/etc/postgresql/15/main/tandem.crt'\n",
            "ssl_key_file = '/etc/postgresql/15/main/tandem.key'\n",
        ] {
            assert!(conf.contains(line), "{line} in {conf}");
        }
        assert!(
            conf.contains(
                "sslmode=verify-full sslrootcert=''/etc/postgresql/15/main/tandem-site-ca.crt'' \
                 sslcert=''/etc/postgresql/15/main/tandem.crt'' \
                 sslkey=''/etc/postgresql/15/main/tandem.key'' channel_binding=require"
            ),
            "{conf}"
        );
        assert!(!conf.contains("sslmode=prefer"), "{conf}");
        let plain = PostgresConfig {
            tls: false,
            ..PostgresConfig::default()
        };
        let conf = render_conf(&plain, &s, &files);
        assert!(
            !conf.contains("ssl = on") && !conf.contains("ssl_cert_file"),
            "{conf}"
        );
        assert!(
            peer_conninfo(&plain, &s, &files, true).contains("sslmode=prefer dbname="),
            "{conf}"
        );
    }

    #[test]
    fn state_alarms_say_what_degraded_means() {
        let mut s = state();
        let cfg = PostgresConfig::default();
        assert!(s.alarms(&cfg).is_empty());
        s.degraded_since = Some(0);
        let alarms = s.alarms(&cfg);
        assert!(alarms[0].contains("node 1 is not streaming"), "{alarms:?}");
        s.degraded_since = None;
        s.missing_since = Some(0);
        let strict = PostgresConfig {
            standby_lost: StandbyLostPolicy::Strict,
            ..PostgresConfig::default()
        };
        assert!(s.alarms(&strict)[0].contains("strict"));
    }
}
