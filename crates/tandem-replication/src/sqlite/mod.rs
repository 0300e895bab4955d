//! The embedded SQLite backend.
//!
//! Everything lives in the application's own database file, next to its tables:
//!
//! - `_tandem_meta (key, value)`: node id, site, remote, role, replication state,
//!   positions, alarm and the control plane between commands and the service (see
//!   the `meta` module);
//! - `_tandem_changelog (seq, tbl, op, pk, row, ts)`: row changes captured by triggers
//!   (`pk` holds the key of a delete; an insert or update leaves it empty, its row holds
//!   the key);
//! - per declared table, `BEFORE` guard triggers that refuse application writes on the
//!   standby and `AFTER` capture triggers that log each row change as JSON while the
//!   node is active and replication is on.
//!
//! The database is opened in WAL mode with a busy timeout and `synchronous = FULL`, so
//! an applied batch and its acknowledged position are on disk before the peer hears of
//! them.

mod engine;
mod log;
mod meta;
mod order;
mod protocol;
mod restore;
mod schema;
mod service;
mod sync;
mod value;

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::AssertSqlSafe;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use tokio::sync::Mutex;

use crate::config::AckLevel;
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::observer::Observer;
use crate::status::{
    LinkStatus, Position, ReplicationState, ReplicationType, ServerStatus, Status,
};
use crate::util::{
    AckWatch, Published, ServiceLock, mono_ns, now_ms, random_u64, read_ack, read_published, wake,
    write_ack,
};
use crate::{
    DemoteOptions, DemoteReport, InitOptions, InitReport, PromoteOptions, ReplicationBackend,
    SwitchOnOptions, SwitchReport,
};

pub(crate) use log::{
    ApplyOutcome, BOTH_WRITABLE, PullCheck, diverged_message, is_divergence_alarm, read_changes_on,
};
pub(crate) use meta::{
    Meta, PeerRecord, Progress, Request, RequestDone, read_if_changed as read_meta_if_changed,
};
pub use restore::{RestoreConflict, RestoreReport, SavedRow};
pub(crate) use schema::TableInfo;
pub use service::{PeerEvent, Replicator, Transport};
pub(crate) use sync::{SnapshotReader, SyncStage};

/// How long `switch-on` waits at most for the replication service to start, whatever
/// its time limit: the node agent starts it within about a second of `init` made the
/// database.
const SERVICE_START_WAIT: Duration = Duration::from_secs(15);
/// How long `switch-off` waits for the service before it switches this node off alone
/// (it can do without the service, so it waits only as long as the agent needs).
const SERVICE_START_WAIT_OFF: Duration = Duration::from_secs(3);

/// How long a database call waits for another writer before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Options for opening a replicated SQLite database, for the service and for
/// applications alike: create if missing, WAL, a busy timeout, foreign keys on,
/// `synchronous = FULL`, and recursive triggers on (so that rows a `REPLACE` deletes are
/// captured too; applications that open the database themselves should do the same).
pub fn connect_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(BUSY_TIMEOUT)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        // Rows deleted by REPLACE conflict resolution must reach the capture triggers.
        .pragma("recursive_triggers", "ON")
}

/// The position of the newest change written so far on `conn`; call it inside a write
/// transaction after its changes (the position of that commit), or after the commit (a
/// position at least as new). Pass it to
/// [`wait_replicated`](crate::ReplicationBackend::wait_replicated).
pub async fn position_in(conn: &mut SqliteConnection) -> Result<Position> {
    meta::head(conn).await.map(Position)
}

/// The acknowledged position the replication service last published in the node's
/// state directory `state_dir` (the file `replication.acked`), read without opening
/// the database: for a monitor that looks often. `None` when nothing was published yet
/// or the line is torn. It may be older than [`SqliteBackend::acked`], which also
/// reads the position recorded in the database.
pub fn published_ack(state_dir: &Path) -> Option<Position> {
    read_ack(&state_dir.join(ACK_FILE)).map(|(_, seq)| Position(seq))
}

/// [`published_ack`] at an acknowledgement `level`: the position the peer received
/// ([`AckLevel::Received`]; the applied one where the peer never said) or applied
/// (the other levels).
pub fn published_at(state_dir: &Path, level: AckLevel) -> Option<Position> {
    read_published(&state_dir.join(ACK_FILE)).map(|p| Position(covered_at(&p, level)))
}

/// The position `published` covers at `level` (on SQLite, `flushed` is `applied`: the
/// standby's apply is its only write to disk).
fn covered_at(published: &Published, level: AckLevel) -> u64 {
    match level {
        AckLevel::Received => published.received,
        _ => published.applied,
    }
}

/// The file in the state directory where the service publishes acknowledgements.
const ACK_FILE: &str = "replication.acked";

/// Row count and SHA-256 of one table's rows (in key order, as replicated JSON): equal
/// on both nodes when they hold the same data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableChecksum {
    /// The table.
    pub table: String,
    /// Its rows.
    pub rows: u64,
    /// SHA-256 of its rows, hex.
    pub sha256: String,
}

/// A write transaction (`BEGIN IMMEDIATE`) and this process's turn to write, given back
/// when it ends. Derefs to the connection.
pub(crate) struct WriteTx {
    tx: sqlx::Transaction<'static, sqlx::Sqlite>,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl WriteTx {
    /// Commits.
    pub(crate) async fn commit(self) -> std::result::Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

impl std::ops::Deref for WriteTx {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }
}

/// What a commit waiting for the peer needs to know of the database, as recorded in
/// its meta table.
#[derive(Debug, Clone, Copy)]
struct AckState {
    /// The acknowledged position recorded (the published one may be newer).
    acked: u64,
    state: ReplicationState,
    writable: bool,
    /// The changelog's id.
    log: Option<u64>,
}

impl AckState {
    /// What the service's look published with `published` found: its changelog
    /// current, this node writable and replication on (the recorded position is not
    /// part of it; the published one counts).
    fn looked_by_service(published: &Published) -> AckState {
        AckState {
            acked: 0,
            state: ReplicationState::Active,
            writable: true,
            log: Some(published.log),
        }
    }

    /// The acknowledged position: the recorded one, or the `published` one if it is
    /// newer and belongs to this changelog.
    fn with_published(&self, published: Option<(u64, u64)>) -> u64 {
        match published {
            Some((log, seq)) if Some(log) == self.log => self.acked.max(seq),
            _ => self.acked,
        }
    }

    /// [`with_published`](Self::with_published) at `level`.
    fn with_published_at(&self, published: Option<&Published>, level: AckLevel) -> u64 {
        self.with_published(published.map(|p| (p.log, covered_at(p, level))))
    }
}

/// The declared tables as found in the database.
#[derive(Debug)]
pub(crate) struct Tables {
    pub(crate) list: Vec<TableInfo>,
    pub(crate) fingerprint: String,
    /// The links between the tables (what the apply order may be), and the schema
    /// version they were read at.
    links: std::sync::Mutex<Option<(i64, Arc<order::Links>)>>,
}

impl Tables {
    pub(crate) fn get(&self, name: &str) -> Option<&TableInfo> {
        self.list.iter().find(|t| t.name == name)
    }

    /// The position of table `name` in [`list`](Self::list).
    pub(crate) fn index(&self, name: &str) -> Option<usize> {
        self.list.iter().position(|t| t.name == name)
    }
}

/// The SQLite backend of one node.
#[derive(Debug)]
pub struct SqliteBackend {
    pool: SqlitePool,
    settings: Arc<Settings>,
    tables: Mutex<Option<Arc<Tables>>>,
    /// An unbound socket for waking the service (made on first use; `None` if it
    /// could not be made).
    waker: std::sync::OnceLock<Option<std::os::unix::net::UnixDatagram>>,
    /// The last look at the acknowledged state by a waiter, and when it started.
    checked: tokio::sync::Mutex<Option<(tokio::time::Instant, AckState)>>,
    /// Whose turn it is to write, among this process's users of the backend.
    writing: Arc<tokio::sync::Mutex<()>>,
    /// The watch on the published acknowledgement that every `wait_replicated` shares
    /// (made on first use; `None` if inotify is not available).
    ack_watch: std::sync::OnceLock<Option<AckWatch>>,
    /// Held while this process writes the published acknowledgement (the service's loop
    /// and its background recording both do), so that a read-modify-write of it
    /// ([`publish_applied`](Self::publish_applied)) is not overtaken.
    publishing: std::sync::Mutex<()>,
    /// The application's shared write connection ([`writer`](Self::writer)): a pool of
    /// one, opened on first use.
    writer: SqlitePool,
}

/// This process's shared write connection, lent by [`SqliteBackend::writer`] until it
/// is dropped. Derefs to the connection.
pub type Writer = sqlx::pool::PoolConnection<sqlx::Sqlite>;

/// Connections of the backend's read pool (the writer has one of its own).
pub(crate) const POOL_SIZE: u32 = 4;

/// Pool options shared by the backend's pools: at most `max` connections. A COMMIT
/// that fails (a full disk: SQLITE_FULL) may leave sqlx counting a transaction that
/// SQLite already rolled back; its queued rollback then fails and every later `BEGIN`
/// on that connection is refused. Such a connection is closed instead of going back
/// to the pool (the ping first runs a rollback still queued by a dropped transaction).
fn pool_options(max: u32) -> SqlitePoolOptions {
    SqlitePoolOptions::new()
        .max_connections(max)
        .after_release(|conn, _| {
            Box::pin(async move {
                if sqlx::Connection::is_in_transaction(conn) {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(!sqlx::Connection::is_in_transaction(conn))
            })
        })
}

impl SqliteBackend {
    /// Opens (creating if missing) the database named by the settings. Nothing is
    /// changed in it until [`init`](crate::ReplicationBackend::init).
    pub async fn open(settings: &Settings) -> Result<SqliteBackend> {
        let path = settings.database_path();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Owner only: the database is the site's data.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(Error::file("cannot create the directory", dir))?;
        }
        let pool = pool_options(POOL_SIZE)
            .connect_with(connect_options(&path))
            .await
            .map_err(Error::db(format!("cannot open {}", path.display())))?;
        // Opened on the first write: commands that only read never open it.
        let writer = pool_options(1)
            // A SQLite connection does not go stale; the ping would be one more
            // round trip to its thread on every write.
            .test_before_acquire(false)
            .connect_lazy_with(connect_options(&path));
        Ok(SqliteBackend {
            pool,
            settings: Arc::new(settings.clone()),
            tables: Mutex::new(None),
            waker: std::sync::OnceLock::new(),
            ack_watch: std::sync::OnceLock::new(),
            publishing: std::sync::Mutex::new(()),
            writing: Arc::new(tokio::sync::Mutex::new(())),
            checked: tokio::sync::Mutex::new(None),
            writer,
        })
    }

    /// Opens the database named by the settings only if it exists (for commands that
    /// read or change replication: they never create an empty database).
    pub async fn open_existing(settings: &Settings) -> Result<SqliteBackend> {
        if !settings.database_path().exists() {
            return Err(Error::NotInitialized);
        }
        SqliteBackend::open(settings).await
    }

    /// The newest position of this node's changelog that the peer acknowledged (the
    /// service's published one or the recorded one, whichever is newer).
    pub async fn acked(&self) -> Result<Position> {
        let recorded = self.ack_state().await?;
        Ok(Position(
            recorded.with_published(read_ack(&self.ack_path())),
        ))
    }

    /// The acknowledged position, replication state, role and changelog as recorded.
    async fn ack_state(&self) -> Result<AckState> {
        let mut conn = self.conn().await?;
        // One row: each row of a result is a message between the connection's thread
        // and this task, and every commit waiting for the peer asks this once.
        let (acked, state, writable, log): (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        ) = sqlx::query_as(
            "SELECT (SELECT value FROM _tandem_meta WHERE key = 'acked'), \
                 (SELECT value FROM _tandem_meta WHERE key = 'state'), \
                 (SELECT value FROM _tandem_meta WHERE key = 'writable'), \
                 (SELECT value FROM _tandem_meta WHERE key = 'log')",
        )
        .fetch_one(&mut *conn)
        .await
        .map_err(Error::db("reading the acknowledged position"))?;
        Ok(AckState {
            acked: acked.and_then(|v| v.parse().ok()).unwrap_or(0),
            state: state
                .as_deref()
                .and_then(ReplicationState::parse)
                .unwrap_or(ReplicationState::Unknown),
            writable: writable.as_deref() == Some("1"),
            log: log.and_then(|v| u64::from_str_radix(&v, 16).ok()),
        })
    }

    /// The peer's node id and why the service counts it as gone, when its peer record
    /// says the link is down and the service is running (a record left by a service
    /// that stopped says nothing about now). No record yet: not known to be gone.
    async fn standby_lost(&self) -> Result<Option<(tandem_core::NodeId, String)>> {
        let mut conn = self.conn().await?;
        let (node, connected, error): (Option<String>, Option<i64>, Option<String>) =
            sqlx::query_as(
                "SELECT (SELECT value FROM _tandem_meta WHERE key = 'node'), \
                     (SELECT json_extract(value, '$.connected') FROM _tandem_meta WHERE key = 'peer'), \
                     (SELECT json_extract(value, '$.error') FROM _tandem_meta WHERE key = 'peer')",
            )
            .fetch_one(&mut *conn)
            .await
            .map_err(Error::db("reading the peer record"))?;
        drop(conn);
        if connected != Some(0) || !self.service_running() {
            return Ok(None);
        }
        let node: tandem_core::NodeId = node
            .and_then(|v| v.parse().ok())
            .unwrap_or(tandem_core::NodeId::One);
        Ok(Some((
            node.peer(),
            error.unwrap_or_else(|| "the peer link is down".to_owned()),
        )))
    }

    pub(crate) fn ack_path(&self) -> PathBuf {
        self.settings.state_dir.join(ACK_FILE)
    }

    /// Where the service records why this node cannot apply its peer's batches (its
    /// database refuses them: full, locked), for this node's own status: the
    /// database itself may be what cannot be written.
    fn apply_failure_path(&self) -> PathBuf {
        self.settings.state_dir.join("replication.apply-failure")
    }

    /// Records (`Some`) or clears (`None`) the apply failure. Best effort: a disk too
    /// full for this small file loses only the reason on this node's page (the peer
    /// still hears it).
    pub(crate) fn record_apply_failure(&self, failure: Option<&str>) {
        let path = self.apply_failure_path();
        let result = match failure {
            Some(text) => crate::util::write_atomically(&path, text.as_bytes()),
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(Error::file("cannot remove", &path)(e))
                }
                _ => Ok(()),
            },
        };
        if let Err(e) = result {
            tracing::debug!(error = %crate::error::chain(&e), "recording the apply failure");
        }
    }

    /// The apply failure the running service recorded, if any.
    fn apply_failure(&self) -> Option<String> {
        std::fs::read_to_string(self.apply_failure_path())
            .ok()
            .filter(|t| !t.is_empty())
    }

    /// Publishes the peer's applied and received positions at once (for
    /// `wait_replicated`); the database records the applied one with
    /// [`record_ack`](Self::record_ack), which may come later.
    /// `looked` is when the service last found `log` current, this node writable and
    /// replication on (a [`mono_ns`] time; 0: its latest look did not).
    pub(crate) fn publish_ack(
        &self,
        log: u64,
        applied: u64,
        received: u64,
        looked: u64,
    ) -> Result<()> {
        let _writing = self
            .publishing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        write_ack(&self.ack_path(), log, applied, received, looked)
    }

    /// Publishes the applied position `seq` (recorded in the database just now), keeping
    /// the positions published before where they are newer: the service publishes each
    /// acknowledgement at once and records it later, so a newer one may already be
    /// out. (Publishing `seq` as it was made the published position go back; a node
    /// demoted then took the changes the peer had acknowledged for unacknowledged, and
    /// refused the new active node's changes as diverged until the next record.)
    pub(crate) fn publish_applied(&self, log: u64, seq: u64) -> Result<()> {
        let _writing = self
            .publishing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (applied, received) = read_published(&self.ack_path())
            .filter(|p| p.log == log)
            .map_or((seq, seq), |p| (p.applied.max(seq), p.received.max(seq)));
        write_ack(&self.ack_path(), log, applied, received, 0)
    }

    /// Where the service listens for wake-ups.
    pub(crate) fn wake_path(&self) -> PathBuf {
        self.settings.state_dir.join("replication.wake")
    }

    /// Asks the service to look for new changes now rather than at its next poll (a
    /// commit waits for the peer). Best effort.
    fn wake_service(&self) {
        let socket = self.waker.get_or_init(|| {
            let s = std::os::unix::net::UnixDatagram::unbound().ok()?;
            s.set_nonblocking(true).ok()?;
            Some(s)
        });
        if let Some(s) = socket {
            wake(s, &self.wake_path());
        }
    }

    /// A connection of its own to the database, outside the pool and with the same
    /// options (for a writer that keeps one open).
    pub async fn connect(&self) -> Result<SqliteConnection> {
        let path = self.database_path();
        sqlx::ConnectOptions::connect(&connect_options(&path))
            .await
            .map_err(Error::db(format!("connecting to {}", path.display())))
    }

    /// The application's write connection, shared by this process's writers: they
    /// take turns for it, first come first served, and hold it until the [`Writer`]
    /// is dropped (write one transaction, then let go, before waiting for the peer).
    ///
    /// SQLite has one writer at a time, so writers that take turns anyway lose nothing
    /// by sharing a connection, and they keep its page cache: SQLite empties a
    /// connection's cache whenever another connection committed since its last
    /// transaction. With capture on, a transaction also touches the changelog's pages,
    /// and eight writers on connections of their own took about twice as long per
    /// commit as eight on this one (`cargo xtask bench replication`).
    ///
    /// A transaction left open by a dropped [`Writer`] is rolled back when it is
    /// dropped; a connection that cannot leave its transaction (a commit that failed on
    /// a full disk) is closed, and the next writer gets a new one.
    ///
    /// ```no_run
    /// # async fn demo(backend: &tandem_replication::SqliteBackend) -> tandem_replication::Result<()> {
    /// use std::time::Duration;
    /// let position = {
    ///     let mut conn = backend.writer().await?;
    ///     tandem_sample::write_transaction(&mut conn, 1, 5).await?
    /// }; // the next writer's turn
    /// tandem_replication::ReplicationBackend::wait_replicated(backend, position, Duration::from_secs(1)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn writer(&self) -> Result<Writer> {
        self.writer.acquire().await.map_err(Error::db(format!(
            "connecting to {}",
            self.database_path().display()
        )))
    }

    /// The connection pool (applications may write through it).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The settings the backend was opened with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The database file.
    pub fn database_path(&self) -> PathBuf {
        self.settings.database_path()
    }

    /// Closes the pool (waits for connections to be returned) and the shared write
    /// connection (waits for its writer).
    pub async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }

    /// Whether `init` has been run on this database.
    pub async fn is_initialized(&self) -> Result<bool> {
        let mut conn = self.conn().await?;
        meta::initialized(&mut conn).await
    }

    /// The newest position of this node's changelog.
    pub async fn head(&self) -> Result<Position> {
        let mut conn = self.conn().await?;
        position_in(&mut conn).await
    }

    /// Per declared table: row count and checksum.
    pub async fn table_checksums(&self) -> Result<Vec<TableChecksum>> {
        let tables = self.tables().await?;
        let mut conn = self.conn().await?;
        let mut out = Vec::new();
        for t in &tables.list {
            let rows = sqlx::query(AssertSqlSafe(Arc::clone(&t.select_sql)))
                .fetch_all(&mut *conn)
                .await
                .map_err(Error::db(format!("reading table {}", t.name)))?;
            let mut hash = Sha256::new();
            for row in &rows {
                let (pk, data) = t.canonical(row)?;
                hash.update(pk.as_bytes());
                hash.update(b"\t");
                hash.update(data.as_bytes());
                hash.update(b"\n");
            }
            out.push(TableChecksum {
                table: t.name.clone(),
                rows: u64::try_from(rows.len()).unwrap_or(u64::MAX),
                sha256: hex::encode(hash.finalize()),
            });
        }
        Ok(out)
    }

    pub(crate) async fn conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Sqlite>> {
        self.pool.acquire().await.map_err(Error::db(format!(
            "connecting to {}",
            self.database_path().display()
        )))
    }

    /// Begins a write transaction (taking the write lock at once).
    pub(crate) async fn write(&self) -> Result<WriteTx> {
        // Writers of this process take turns here rather than in SQLite's busy
        // handler, which sleeps 1, 2, 5, 10 ms... between tries: the service's
        // background writes (acknowledgements, peer records) would otherwise make the
        // apply of a batch wait milliseconds for a lock held for a fraction of one.
        let turn = Arc::clone(&self.writing).lock_owned().await;
        let tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(Error::db("starting a write transaction"))?;
        Ok(WriteTx { tx, _turn: turn })
    }

    pub(crate) async fn meta(&self) -> Result<Meta> {
        let mut conn = self.conn().await?;
        let mut m = meta::read(&mut conn).await?;
        self.with_published_ack(&mut m);
        Ok(m)
    }

    /// Takes the acknowledgement the service published but may not have recorded yet.
    pub(crate) fn with_published_ack(&self, m: &mut Meta) {
        if let Some((log, seq)) = read_ack(&self.ack_path())
            && log == m.log
        {
            m.acked = m.acked.max(seq.min(m.head));
        }
    }

    /// The declared tables (loaded once; [`reload_tables`](Self::reload_tables) after
    /// `init` changed them).
    pub(crate) async fn tables(&self) -> Result<Arc<Tables>> {
        let mut cached = self.tables.lock().await;
        if let Some(t) = cached.as_ref() {
            return Ok(Arc::clone(t));
        }
        let mut conn = self.conn().await?;
        let loaded = Arc::new(self.load_tables(&mut conn, None).await?);
        *cached = Some(Arc::clone(&loaded));
        Ok(loaded)
    }

    pub(crate) async fn reload_tables(&self) -> Result<Arc<Tables>> {
        *self.tables.lock().await = None;
        self.tables().await
    }

    async fn load_tables(
        &self,
        conn: &mut SqliteConnection,
        observer: Option<&dyn Observer>,
    ) -> Result<Tables> {
        let mut list = Vec::new();
        for name in &self.settings.replication.tables {
            let t = TableInfo::load(conn, name)
                .await
                .map_err(|e| self.explain_missing_table(e))?;
            if let Some(o) = observer {
                o.step(&format!(
                    "table {}: {} columns, primary key ({})",
                    t.name,
                    t.columns.len(),
                    t.key.join(", ")
                ));
            }
            list.push(t);
        }
        let fingerprint = schema::fingerprint(&list);
        Ok(Tables {
            list,
            fingerprint,
            links: std::sync::Mutex::new(None),
        })
    }

    /// A missing declared table, explained: which database was looked in, and where and
    /// how the application's tables are declared (most often nobody declared any, and
    /// the sample schema's tables were assumed).
    fn explain_missing_table(&self, error: Error) -> Error {
        let Error::Table { table, problem } = error else {
            return error;
        };
        if !problem.starts_with("it does not exist") {
            return Error::Table { table, problem };
        }
        let cfg = &self.settings.replication;
        let config = match &self.settings.config_path {
            Some(path) => format!("the node config {}", path.display()),
            None => format!(
                "the node config (none was read: --config, TANDEM_CONFIG or {})",
                crate::DEFAULT_CONFIG_PATH
            ),
        };
        let db = self.database_path();
        let undeclared = !cfg.sample_schema
            && cfg
                .tables
                .iter()
                .map(String::as_str)
                .eq(crate::DEFAULT_TABLES.iter().copied());
        let problem = if undeclared {
            format!(
                "it does not exist in {}: no tables are declared, so the sample schema's \
                 were assumed; declare the application's database and tables under \
                 [replication] in {config}, for example `database = \"/var/lib/app/app.sqlite\"` \
                 and `tables = [\"accounts\", \"orders\"]` (each table needs a primary key), \
                 then run `mp_replication init` again (see docs/OPERATIONS.md)",
                db.display()
            )
        } else {
            format!(
                "it does not exist in {} (create it, or remove it from `tables` under \
                 [replication] in {config}; see docs/OPERATIONS.md)",
                db.display()
            )
        };
        Error::Table { table, problem }
    }

    /// The links between the declared tables ([`order::Links`]) as the schema stands in
    /// `conn`'s transaction: read again whenever the schema version moved (a trigger
    /// or a table created since), else one `PRAGMA` statement.
    pub(crate) async fn links(
        &self,
        conn: &mut SqliteConnection,
        tables: &Tables,
    ) -> Result<Arc<order::Links>> {
        let version: i64 = sqlx::query_scalar("PRAGMA schema_version")
            .fetch_one(&mut *conn)
            .await
            .map_err(Error::db("reading the schema version"))?;
        let cached = tables.links.lock().ok().and_then(|l| {
            l.as_ref()
                .filter(|(v, _)| *v == version)
                .map(|(_, l)| Arc::clone(l))
        });
        if let Some(links) = cached {
            return Ok(links);
        }
        let links = Arc::new(order::load(conn, &tables.list).await?);
        if let Ok(mut l) = tables.links.lock() {
            *l = Some((version, Arc::clone(&links)));
        }
        Ok(links)
    }

    pub(crate) fn lock_path(&self) -> PathBuf {
        self.settings.state_dir.join("replication.lock")
    }

    /// Whether the replication service holds this node's service lock.
    pub fn service_running(&self) -> bool {
        ServiceLock::held_by_other(&self.lock_path())
    }

    async fn set_role(&self, writable: bool) -> Result<()> {
        let mut tx = self.write().await?;
        let m = meta::read(&mut tx).await?;
        if writable && m.state == ReplicationState::Syncing {
            return Err(Error::State(
                "this node is copying the peer's data (from-sync); it can become active once that finished"
                    .into(),
            ));
        }
        meta::transition(&mut tx, &m, writable, m.state).await?;
        tx.commit()
            .await
            .map_err(Error::db("committing the role change"))
    }

    /// [`wait_replicated`](crate::ReplicationBackend::wait_replicated) for applications that
    /// apply the `degrade` policy themselves: it also stops, with
    /// [`Error::StandbyUnreachable`], as soon as this node's replication service counts
    /// the standby as gone (its peer link is down), instead of waiting out `limit` for
    /// an acknowledgement that cannot come. Plain `wait_replicated` waits through a
    /// standby's restart; this one answers within about 10 ms while it is down.
    ///
    /// ```no_run
    /// # async fn demo(backend: &tandem_replication::SqliteBackend, position: tandem_replication::Position) -> tandem_replication::Result<()> {
    /// use std::time::Duration;
    /// match backend.wait_replicated_while_connected(position, Duration::from_millis(800)).await {
    ///     Ok(()) => {}                                                  // on both nodes
    ///     Err(tandem_replication::Error::StandbyUnreachable { .. }) => {} // degrade: accept
    ///     Err(e) => return Err(e),                                      // refuse the write
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn wait_replicated_while_connected(
        &self,
        position: Position,
        limit: Duration,
    ) -> Result<()> {
        let level = self.settings.replication.synchronous_commit;
        self.wait_acknowledged(position, level, limit, true).await
    }

    /// [`wait_replicated`](crate::ReplicationBackend::wait_replicated) at an
    /// acknowledgement level of the caller's choice instead of the configured
    /// `[replication] synchronous_commit` (see [`AckLevel`] for what each survives).
    /// With a standby of an earlier release, which never says `received`, the
    /// `received` level waits for the applied acknowledgement.
    ///
    /// ```no_run
    /// # async fn demo(backend: &tandem_replication::SqliteBackend, position: tandem_replication::Position) -> tandem_replication::Result<()> {
    /// use std::time::Duration;
    /// use tandem_replication::AckLevel;
    /// // Survives the loss of either node (not of both at once) for one round trip.
    /// backend.wait_replicated_at(position, AckLevel::Received, Duration::from_secs(1)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn wait_replicated_at(
        &self,
        position: Position,
        level: AckLevel,
        limit: Duration,
    ) -> Result<()> {
        self.wait_acknowledged(position, level, limit, false).await
    }

    /// Group commit for the waiting side: a waiter wakes the service (which ships every
    /// pending change in one batch) and then sleeps until the service publishes an
    /// acknowledgement that covers its position (the shared inotify watch of the
    /// published file), so that any number of concurrent waiters share one round trip
    /// to the peer. The acknowledgement counts once the database says it belongs to the
    /// current changelog, this node is writable and replication is on; the waiters that
    /// one acknowledgement covers share that look ([`checked_since`](Self::checked_since)),
    /// and it is not made before the acknowledgement is there, where it would take the
    /// CPU from the next writer's commit. Without a covering acknowledgement the state is
    /// looked at every 10 ms, to notice replication being switched off and in case the
    /// watch is missing or an event was lost. With `while_connected` a recorded loss of
    /// the peer link ends the wait. `limit` bounds the looks at the database too: one
    /// that cannot be made in time (every pooled connection busy, the database locked)
    /// ends the wait with [`Error::NotReplicated`] at the limit, as a missing
    /// acknowledgement does.
    async fn wait_acknowledged(
        &self,
        position: Position,
        level: AckLevel,
        limit: Duration,
        while_connected: bool,
    ) -> Result<()> {
        /// How often the state is looked at while no acknowledgement covers the position.
        const RECHECK: Duration = Duration::from_millis(10);
        let started = tokio::time::Instant::now();
        let started_ns = mono_ns();
        // The commit is there: the service can ship it while we look.
        self.wake_service();
        // Subscribed before the first look, so that no acknowledgement published after it
        // is missed.
        let mut changes = self
            .ack_watch
            .get_or_init(|| AckWatch::new(&self.ack_path()))
            .as_ref()
            .map(AckWatch::subscribe);
        let mut published = match changes.as_mut() {
            Some(rx) => *rx.borrow_and_update(),
            None => read_published(&self.ack_path()),
        };
        let mut next_check = started + RECHECK;
        let deadline = started + limit;
        // What the last look at the database confirmed; 0 before one was made.
        let mut acked = 0;
        let out_of_time = |acked: u64| Error::NotReplicated {
            position,
            acked: Position(acked),
            limit,
        };
        loop {
            let covered = published.is_some_and(|p| covered_at(&p, level) >= position.0);
            if covered || tokio::time::Instant::now() >= next_check {
                let recorded = tokio::time::timeout_at(
                    deadline,
                    self.checked_since(started, started_ns, published.as_ref()),
                )
                .await
                .map_err(|_| out_of_time(acked))??;
                let state = recorded.state;
                // Without capture nothing written now reaches the standby, whatever was acknowledged.
                if state != ReplicationState::Active {
                    return Err(Error::NotReplicating { position, state });
                }
                if !recorded.writable {
                    return Err(Error::State(
                        "wait_replicated is for the active node; this node is the standby".into(),
                    ));
                }
                acked = recorded.with_published_at(published.as_ref(), level);
                if acked >= position.0 {
                    return Ok(());
                }
                // No acknowledgement can come while the link is down. Asked only here,
                // off the path of a commit that is acknowledged.
                let lost = if while_connected {
                    tokio::time::timeout_at(deadline, self.standby_lost())
                        .await
                        .map_err(|_| out_of_time(acked))??
                } else {
                    None
                };
                if let Some((peer, reason)) = lost {
                    return Err(Error::StandbyUnreachable {
                        position,
                        peer,
                        reason,
                    });
                }
                if !covered {
                    // A quiet pause: the service is asked again.
                    self.wake_service();
                }
                next_check = tokio::time::Instant::now() + RECHECK;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(out_of_time(acked));
            }
            let until = next_check.min(deadline);
            match changes.as_mut() {
                Some(rx) => match tokio::time::timeout_at(until, rx.changed()).await {
                    Ok(Ok(())) => published = *rx.borrow_and_update(),
                    Ok(Err(_)) => {
                        // The watch thread ended: poll from now on.
                        changes = None;
                    }
                    Err(_) => {}
                },
                None => {
                    let poll = tokio::time::Instant::now() + Duration::from_millis(1);
                    tokio::time::sleep_until(poll.min(until)).await;
                    published = read_published(&self.ack_path());
                }
            }
        }
    }

    /// [`ack_state`](Self::ack_state) as read by a look that started at `since` or later
    /// (`since_ns` on [`mono_ns`]'s clock): the service's, published with `published`,
    /// if it did; else this process's last one if it did; else a new one. Concurrent
    /// waiters share the looks this way; a look that started after a waiter's commit is
    /// as good as its own, and the service's costs the waiter nothing.
    async fn checked_since(
        &self,
        since: tokio::time::Instant,
        since_ns: u64,
        published: Option<&Published>,
    ) -> Result<AckState> {
        if let Some(p) = published.filter(|p| since_ns > 0 && p.looked >= since_ns) {
            return Ok(AckState::looked_by_service(p));
        }
        let mut last = self.checked.lock().await;
        if let Some((at, state)) = *last
            && at >= since
        {
            return Ok(state);
        }
        let at = tokio::time::Instant::now();
        let state = self.ack_state().await?;
        *last = Some((at, state));
        Ok(state)
    }

    /// When the oldest change the peer has not acknowledged was written, if any.
    pub(crate) async fn oldest_unacked_ms(&self, acked: u64) -> Result<Option<u64>> {
        let mut conn = self.conn().await?;
        let ts: Option<i64> = sqlx::query_scalar(
            "SELECT ts FROM _tandem_changelog WHERE seq > ?1 AND tbl <> '' ORDER BY seq LIMIT 1",
        )
        .bind(acked.cast_signed())
        .fetch_optional(&mut *conn)
        .await
        .map_err(Error::db("reading the changelog"))?;
        Ok(ts.map(|t| t.max(0).cast_unsigned()))
    }

    /// Writes a request for the service and returns its id.
    pub(crate) async fn submit_request(
        &self,
        on: bool,
        sync: bool,
        limit: Duration,
    ) -> Result<u64> {
        let mut tx = self.write().await?;
        let m = meta::read(&mut tx).await?;
        let last = m
            .request
            .as_ref()
            .map_or(0, |r| r.id)
            .max(m.request_done.as_ref().map_or(0, |d| d.id));
        let id = last.saturating_add(1);
        let deadline_ms =
            now_ms().saturating_add(u64::try_from(limit.as_millis()).unwrap_or(u64::MAX));
        meta::set_json(
            &mut tx,
            "request",
            &Request {
                id,
                on,
                sync,
                deadline_ms,
            },
        )
        .await?;
        tx.commit().await.map_err(Error::db("writing a request"))?;
        Ok(id)
    }

    /// Waits for the service to finish request `id`, reporting progress.
    pub(crate) async fn wait_request(
        &self,
        id: u64,
        limit: Duration,
        observer: &dyn Observer,
    ) -> Result<RequestDone> {
        let started = tokio::time::Instant::now();
        let mut last_progress = None;
        loop {
            let m = self.meta().await?;
            if let Some(done) = m.request_done.filter(|d| d.id == id) {
                return Ok(done);
            }
            if let Some(p) = m.progress.filter(|p| p.id == id)
                && last_progress != Some(p)
            {
                observer.progress(p.done, p.total);
                last_progress = Some(p);
            }
            if started.elapsed() >= limit {
                return Err(Error::Timeout {
                    what: "the replication service's work".into(),
                    limit,
                });
            }
            if !self.service_running() {
                return Err(Error::ServiceNotRunning);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the replication service runs, waiting up to `limit` for it to start
    /// (`switch-on` straight after `init`: the node agent starts it within a second).
    async fn wait_for_service(&self, limit: Duration, observer: &dyn Observer) -> bool {
        if self.service_running() {
            return true;
        }
        observer.step(&format!(
            "waiting for the replication service to start (at most {:.1} s; the node agent \
             starts it within about a second of `mp_replication init`)",
            limit.as_secs_f64()
        ));
        let started = tokio::time::Instant::now();
        loop {
            let left = limit.saturating_sub(started.elapsed());
            if left.is_zero() {
                return self.service_running();
            }
            tokio::time::sleep(left.min(Duration::from_millis(50))).await;
            if self.service_running() {
                return true;
            }
        }
    }

    /// Switches replication on or off on this node only; returns what happened.
    pub(crate) async fn switch_local(&self, on: bool) -> Result<String> {
        let mut tx = self.write().await?;
        let m = meta::read(&mut tx).await?;
        let state = if on {
            ReplicationState::Active
        } else {
            ReplicationState::Off
        };
        if m.state == state {
            return Ok(format!(
                "replication was already {state} on node {}",
                m.node
            ));
        }
        meta::transition(&mut tx, &m, m.writable, state).await?;
        if !on && m.writable {
            // The peer will need a snapshot anyway: free the space now.
            meta::raise_floor(&mut tx, m.head).await?;
        }
        meta::set(&mut tx, "alarm", "").await?;
        tx.commit()
            .await
            .map_err(Error::db("committing the switch"))?;
        Ok(format!(
            "replication switched {} on node {}",
            if on { "on" } else { "off" },
            m.node
        ))
    }

    /// Sets the replication state, keeping the role.
    pub(crate) async fn set_state(&self, state: ReplicationState) -> Result<()> {
        let mut tx = self.write().await?;
        let m = meta::read(&mut tx).await?;
        meta::transition(&mut tx, &m, m.writable, state).await?;
        tx.commit()
            .await
            .map_err(Error::db("committing a state change"))
    }

    /// Switches replication off past the backlog limit: drops the changelog and raises
    /// the alarm.
    pub(crate) async fn suspend(&self, alarm: &str) -> Result<()> {
        let mut tx = self.write().await?;
        let m = meta::read(&mut tx).await?;
        meta::transition(&mut tx, &m, m.writable, ReplicationState::Suspended).await?;
        meta::raise_floor(&mut tx, m.head).await?;
        meta::set(&mut tx, "alarm", alarm).await?;
        tx.commit()
            .await
            .map_err(Error::db("committing the suspension"))
    }

    /// Sets (or with "" clears) this node's alarm.
    pub(crate) async fn set_alarm(&self, alarm: &str) -> Result<()> {
        let mut tx = self.write().await?;
        meta::set(&mut tx, "alarm", alarm).await?;
        tx.commit().await.map_err(Error::db("recording an alarm"))
    }

    /// Records what the service knows about the peer.
    pub(crate) async fn record_peer(&self, record: &PeerRecord) -> Result<()> {
        let mut tx = self.write().await?;
        meta::set_json(&mut tx, "peer", record).await?;
        tx.commit()
            .await
            .map_err(Error::db("recording the peer state"))
    }

    /// Records a request's result.
    pub(crate) async fn finish_request(&self, done: &RequestDone) -> Result<()> {
        let mut tx = self.write().await?;
        meta::set_json(&mut tx, "request_done", done).await?;
        meta::set(&mut tx, "progress", "").await?;
        tx.commit()
            .await
            .map_err(Error::db("recording a request result"))
    }

    /// Records a request's progress.
    pub(crate) async fn set_progress(&self, progress: Progress) -> Result<()> {
        let mut tx = self.write().await?;
        meta::set_json(&mut tx, "progress", &progress).await?;
        tx.commit().await.map_err(Error::db("recording progress"))
    }

    /// The addresses recorded by `init`.
    pub async fn identity(&self) -> Result<Identity> {
        let m = self.meta().await?;
        Ok(Identity {
            node: m.node,
            site: m.site,
            remote: SocketAddr::from_str(&m.remote).ok(),
            local: IpAddr::from_str(&m.local).ok(),
        })
    }
}

/// The SQLite backend's operations, also reached through [`crate::Backend`].
impl ReplicationBackend for SqliteBackend {
    async fn init(&self, options: &InitOptions, observer: &dyn Observer) -> Result<InitReport> {
        if let Some(id) = self.settings.node.id
            && id != options.node
        {
            return Err(Error::Config(format!(
                "-n {} disagrees with [node] id = {id} in {}",
                options.node,
                self.settings
                    .config_path
                    .as_deref()
                    .unwrap_or(Path::new("the config"))
                    .display()
            )));
        }
        observer.step(&format!("database {}", self.database_path().display()));
        let mut tx = self.write().await?;
        if self.settings.replication.sample_schema {
            if self.settings.schema.is_empty() {
                return Err(Error::Config(
                    "`sample_schema = true`, but this program carries no sample schema \
                     (mp_replication does); create the application's tables instead"
                        .into(),
                ));
            }
            observer.step(
                "creating the sample schema where missing (user_groups, user_profiles, meetings)",
            );
            for statement in &self.settings.schema {
                sqlx::query(AssertSqlSafe(statement.as_str()))
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::db("creating the sample schema"))?;
            }
        }
        for statement in [
            meta::CREATE_META,
            meta::CREATE_CHANGELOG,
            meta::CREATE_REALS,
        ] {
            sqlx::query(statement)
                .execute(&mut *tx)
                .await
                .map_err(Error::db("creating the replication tables"))?;
        }
        // The triggers name the changelog: dropped before an upgrade renames it, made
        // again below.
        schema::drop_triggers(&mut tx).await?;
        if meta::upgrade_changelog(&mut tx).await? {
            observer.step("upgraded the changelog to format 2 (no AUTOINCREMENT)");
        }
        let tables = self.load_tables(&mut tx, Some(observer)).await?;
        let existing = match meta::read(&mut tx).await {
            Ok(m) => Some(m),
            Err(Error::NotInitialized) => None,
            Err(e) => return Err(e),
        };
        if let Some(m) = &existing
            && m.node != options.node
        {
            return Err(Error::State(format!(
                "this database was initialized as node {}; it cannot become node {} \
                 (its positions would confuse the peer)",
                m.node, options.node
            )));
        }
        observer.step("installing the guard and capture triggers");
        schema::drop_triggers(&mut tx).await?;
        for t in &tables.list {
            for sql in t.trigger_sql() {
                sqlx::query(AssertSqlSafe(sql))
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::db(format!(
                        "creating the triggers of table {}",
                        t.name
                    )))?;
            }
        }
        let local = options.local.map(|ip| ip.to_string()).unwrap_or_default();
        observer.step(&format!(
            "recording node {}, site {}, remote {}{}",
            options.node,
            options.site,
            options.remote,
            if local.is_empty() {
                String::new()
            } else {
                format!(", local {local}")
            }
        ));
        meta::set_num(&mut tx, "format", u64::from(meta::FORMAT)).await?;
        meta::set_num(&mut tx, "node", u64::from(options.node.get())).await?;
        meta::set_num(&mut tx, "site", u64::from(options.site)).await?;
        meta::set(&mut tx, "remote", &options.remote.to_string()).await?;
        meta::set(&mut tx, "local", &local).await?;
        meta::set(&mut tx, "schema", &tables.fingerprint).await?;
        let created = existing.is_none();
        if created {
            let log = random_u64()?;
            observer.step(&format!("new changelog {}", meta::log_text(log)));
            meta::set(&mut tx, "log", &meta::log_text(log)).await?;
            meta::set_num(&mut tx, "writable", 0).await?;
            meta::set(&mut tx, "state", ReplicationState::Initialized.as_str()).await?;
            meta::set(&mut tx, "mode", meta::Mode::Standby.as_str()).await?;
            for key in ["applied", "acked", "floor", "uncaptured"] {
                meta::set_num(&mut tx, key, 0).await?;
            }
            meta::set(&mut tx, "alarm", "").await?;
        }
        tx.commit()
            .await
            .map_err(Error::db("committing the replication setup"))?;
        *self.tables.lock().await = Some(Arc::new(tables));
        let meta = self.meta().await?;
        Ok(InitReport {
            node: meta.node,
            site: meta.site,
            remote: options.remote,
            local: options.local,
            tables: self.settings.replication.tables.clone(),
            created,
            state: meta.state,
            writable: meta.writable,
        })
    }

    async fn switch_on(
        &self,
        options: &SwitchOnOptions,
        observer: &dyn Observer,
    ) -> Result<SwitchReport> {
        let m = self.meta().await?;
        if options.sync && m.writable {
            return Err(Error::State(format!(
                "node {} is writable (the active node): from-sync would replace its tables with the \
                 peer's; make it the standby first (failover set-server standby)",
                m.node
            )));
        }
        let limit = options.timeout.min(SERVICE_START_WAIT);
        if !self.wait_for_service(limit, observer).await {
            return Err(Error::ServiceNotStarted { waited: limit });
        }
        observer.step(&format!(
            "asking the replication service to switch on{}",
            if options.sync {
                " after copying the peer's data (from-sync)"
            } else {
                ""
            }
        ));
        let id = self
            .submit_request(true, options.sync, options.timeout)
            .await?;
        let done = self
            .wait_request(id, options.timeout + Duration::from_secs(5), observer)
            .await?;
        if !done.ok {
            return Err(Error::Request(done.message));
        }
        Ok(SwitchReport {
            message: done.message,
            local_only_file: done.file.map(PathBuf::from),
            saved_rows: done.saved_rows,
            copied_rows: done.copied_rows,
        })
    }

    async fn switch_off(&self, observer: &dyn Observer) -> Result<SwitchReport> {
        self.meta().await?;
        if self
            .wait_for_service(SERVICE_START_WAIT_OFF, observer)
            .await
        {
            observer.step("asking the replication service to switch off here and on the peer");
            let limit = Duration::from_secs(15);
            let id = self.submit_request(false, false, limit).await?;
            let done = self
                .wait_request(id, limit + Duration::from_secs(5), observer)
                .await?;
            if !done.ok {
                return Err(Error::Request(done.message));
            }
            return Ok(SwitchReport {
                message: done.message,
                ..SwitchReport::default()
            });
        }
        observer.step(&format!(
            "the replication service did not start within {} s: switching off locally only \
             (switch the peer off there too if it should stay off)",
            SERVICE_START_WAIT_OFF.as_secs()
        ));
        let message = self.switch_local(false).await?;
        Ok(SwitchReport {
            message,
            ..SwitchReport::default()
        })
    }

    async fn status(&self) -> Result<Status> {
        let m = self.meta().await?;
        let running = self.service_running();
        let peer = m.peer.clone().filter(|_| running);
        let connected = peer.as_ref().is_some_and(|p| p.connected);
        let remote_state = match peer.as_ref().and_then(|p| p.state.as_deref()) {
            Some(s) if connected => ReplicationState::parse(s).unwrap_or(ReplicationState::Unknown),
            _ => ReplicationState::Unknown,
        };
        let remote_detail = if !running {
            Some("not connected: the replication service is not running on this node".to_owned())
        } else {
            match &peer {
                Some(p) if p.connected => None,
                Some(p) => Some(format!(
                    "not connected to {}{}{}",
                    m.remote,
                    p.error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default(),
                    p.last_seen_ms
                        .map(|t| format!(
                            " (last seen {} s ago)",
                            now_ms().saturating_sub(t) / 1000
                        ))
                        .unwrap_or_default()
                )),
                None => Some(format!("not connected to {} yet", m.remote)),
            }
        };
        let (backlog, lag_ms) = if m.writable {
            // `meta()` took the published acknowledgement already.
            let lag = self.oldest_unacked_ms(m.acked).await?;
            (
                Some(m.backlog()),
                Some(lag.map_or(0, |ts| now_ms().saturating_sub(ts))),
            )
        } else if let Some(p) = peer.as_ref().filter(|p| p.connected) {
            (
                p.head.map(|h| h.saturating_sub(m.applied)),
                p.lag_ms.or(Some(0)),
            )
        } else {
            (None, None)
        };
        let mut alarms = Vec::new();
        if !m.alarm.is_empty() {
            alarms.push(format!("node {}: {}", m.node, m.alarm));
        }
        let peer_alarm = peer
            .as_ref()
            .filter(|p| p.connected)
            .and_then(|p| p.alarm.clone());
        if let Some(a) = peer.as_ref().and_then(|p| p.alarm.clone()) {
            alarms.push(format!("node {}: {a}", m.node.peer().get()));
        }
        // The service's alarms say when the data has forked: a node holding changes its
        // peer never received, or both nodes writable.
        let diverged = connected
            && [Some(m.alarm.as_str()), peer_alarm.as_deref()]
                .into_iter()
                .flatten()
                .any(is_divergence_alarm);
        // A standby that should apply and does not says why on its own page.
        let reason = if m.alarm.is_empty() {
            self.apply_failure().filter(|_| running)
        } else {
            Some(m.alarm.clone())
        };
        let local_detail = reason
            .filter(|_| !m.writable && m.state == ReplicationState::Active)
            .map(|r| format!("not applying node {}'s changes: {r}", m.node.peer().get()));
        Ok(Status {
            backend: "sqlite".into(),
            local: ServerStatus {
                replication_type: ReplicationType::Local,
                site: Some(m.site),
                node: Some(m.node),
                state: m.state,
                status: LinkStatus::Local,
                writable: Some(m.writable),
            },
            remote: ServerStatus {
                replication_type: ReplicationType::IntraSite,
                site: peer.as_ref().and_then(|p| p.site).or(Some(m.site)),
                node: Some(
                    peer.as_ref()
                        .and_then(|p| p.node)
                        .and_then(|n| tandem_core::NodeId::try_from(n).ok())
                        .unwrap_or(m.node.peer()),
                ),
                state: remote_state,
                status: match (connected, diverged) {
                    (true, true) => LinkStatus::Diverged,
                    (true, false) => LinkStatus::Connected,
                    (false, _) => LinkStatus::NotConnected,
                },
                writable: peer
                    .as_ref()
                    .filter(|p| p.connected)
                    .and_then(|p| p.writable),
            },
            backlog,
            lag_ms,
            head: Position(m.head),
            acked: Position(m.acked),
            applied: Position(m.applied),
            remote_head: peer
                .as_ref()
                .filter(|p| p.connected)
                .and_then(|p| p.head)
                .map(Position),
            service_running: running,
            remote_detail,
            local_detail,
            alarms,
            wal: None,
            resync: None,
        })
    }

    /// Makes this node's database writable (the active node). The node agent calls this
    /// when the node becomes active; with replication on, changes are captured from now.
    /// Nothing here can be stale in the sense of [`PromoteOptions::force`], so it is
    /// ignored.
    async fn promote_with(&self, _options: PromoteOptions) -> Result<()> {
        self.set_role(true).await
    }

    /// Makes this node's database the standby: application writes are refused. Captured
    /// changes not yet acknowledged still flow to the peer. There is no copy to defer.
    async fn demote_with(&self, _options: DemoteOptions) -> Result<DemoteReport> {
        self.set_role(false).await?;
        Ok(DemoteReport::new(false))
    }

    async fn identity(&self) -> Result<Identity> {
        SqliteBackend::identity(self).await
    }

    async fn wait_replicated(&self, position: Position, timeout: Duration) -> Result<()> {
        let level = self.settings.replication.synchronous_commit;
        self.wait_acknowledged(position, level, timeout, false)
            .await
    }

    fn switches_peer(&self) -> bool {
        // The replication service asks the peer to switch too.
        true
    }

    async fn table_checksums(&self) -> Result<Vec<TableChecksum>> {
        SqliteBackend::table_checksums(self).await
    }

    async fn restore_local_rows(&self, file: &Path, dry_run: bool) -> Result<RestoreReport> {
        SqliteBackend::restore_local_rows(self, file, dry_run).await
    }
}

/// Who this node is, as `init` recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Node id.
    pub node: tandem_core::NodeId,
    /// Site.
    pub site: u16,
    /// The peer's node address and port.
    pub remote: Option<SocketAddr>,
    /// This node's node address, if known.
    pub local: Option<IpAddr>,
}

#[cfg(test)]
mod tests;
