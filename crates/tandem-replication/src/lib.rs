//! Database replication for a tandem site, behind one trait ([`ReplicationBackend`]):
//! init, switch on (optionally copying the peer's data first: from-sync), switch off,
//! status, promote, demote, and [`wait_replicated`](ReplicationBackend::wait_replicated)
//! for applications that acknowledge only replicated writes. Status types, the seed's
//! status table and the seed's final line ([`outcome_line`]) are backend-neutral.
//!
//! The embedded backend is SQLite ([`SqliteBackend`]): triggers on the declared tables
//! capture row changes into a changelog in the application's own database; the
//! replication service ([`Replicator`]) streams it in order over the peer link
//! (`tandem-peer`); the standby applies each batch in one transaction together with
//! its applied position, so every change is applied exactly once across crashes of
//! either side. The standby's guard triggers refuse application writes.
//!
//! The PostgreSQL backend ([`PostgresBackend`], `[replication] backend = "postgres"`)
//! controls PostgreSQL's own streaming replication, as Patroni and repmgr do, and copies
//! no rows itself: `init` creates the replication role (SCRAM, its password derived from
//! the site key), a `pg_hba.conf` entry for the peer's node address only,
//! `wal_log_hints` and a physical slot for the peer; `switch-on` streams from the peer
//! (`standby.signal`, `primary_conninfo`, `primary_slot_name`), with from-sync after a
//! `pg_rewind` (a former primary) or a fresh `pg_basebackup`; `switch-off` drops the
//! standby's slot on the primary, and `max_slot_wal_keep_size` bounds what a slot may
//! keep, so a standby left out never fills the primary's disk; commits wait for the standby through
//! `synchronous_standby_names`, and the `standby_lost` policy ([`StandbyLostPolicy`])
//! says what happens when it is gone; `promote` is `pg_promote()`. Status comes from
//! `pg_stat_replication` and `pg_stat_wal_receiver`, in the same table, with the WAL
//! positions ([`WalStatus`]).
//!
//! # Design choices
//!
//! - **Positions per source.** A node's changelog holds only changes made while it was
//!   writable (applied changes are not logged), each changelog has a random id, and
//!   each node records how far it applied its peer's changelog. After a switchover the
//!   new standby resumes from its own applied position of the new active node's
//!   changelog. A batch carries the position it follows; a gap is refused, never
//!   applied out of order, and duplicates are skipped.
//! - **Never overwrite unshipped changes.** A node applies its peer's changes only while
//!   its own changelog is fully acknowledged. A node holding changes the peer never got
//!   while the peer is writable (after a split brain or an early promotion) is
//!   *diverged*: it stops, raises an alarm and waits for `switch-on -S -F from-sync`,
//!   which copies a consistent snapshot from the peer and first writes this node's own
//!   changes that the peer never received (rows it wrote or deleted, where they differ
//!   from the snapshot; every differing row if some writes were never captured) to a
//!   JSON-lines file under the state directory, named in the output.
//! - **Bounded changelog.** Entries are pruned once acknowledged. Past `max_backlog`
//!   unacknowledged changes the active node switches replication off, drops its
//!   changelog and raises an alarm, instead of filling its disk (the seed warns that a
//!   standby left out for long harms the primary). While replication is off nothing is
//!   captured; switching back on requires from-sync on the standby.
//! - **Pair semantics.** `switch-on` and `switch-off` act on this node and tell the
//!   connected peer to do the same; a node that was only initialized switches on when
//!   its peer is on (the seed runs `switchON` on one node only).
//! - **Control plane.** The one-shot commands write requests into the meta table; the
//!   running service carries them out and records the result, the peer's state and the
//!   link's health there, so `status` works even when the peer is down. The service
//!   holds a lock file in the state directory; commands use it to tell whether it runs.
//! - **Acknowledgements.** The standby acknowledges a batch only after its transaction
//!   committed (`synchronous = FULL`), and, to a peer that reads it, says
//!   [`Received`](wire::Message::Received) as soon as it takes the batch in, before the
//!   apply. [`wait_replicated`](ReplicationBackend::wait_replicated) waits at the level
//!   `[replication] synchronous_commit` names ([`AckLevel`]: `received` survives the
//!   loss of either node for one round trip; `flushed`, the default, and `applied`
//!   survive both nodes' power loss at once and, on SQLite, wait for the same applied
//!   acknowledgement); [`SqliteBackend::wait_replicated_at`] chooses per call. The
//!   active node's service publishes each acknowledgement (applied and received
//!   positions) at once in a small file (rewritten in place, with a check value
//!   against torn reads) that [`wait_replicated`](ReplicationBackend::wait_replicated)
//!   watches (one inotify watch per backend, read by a thread of its own and shared by
//!   every waiter, since closing an inotify instance costs milliseconds). A waiter
//!   looks at the database (changelog, role, replication state) once an
//!   acknowledgement covers its commit, one look for all the waiters it covers, or
//!   every 10 ms without one. The service records the acknowledgement in the meta
//!   table, pruning the changelog, at most every 100 ms and in the background, so a
//!   busy application never makes replication wait for the write lock.
//! - **Group commit.** A commit that starts waiting in `wait_replicated` wakes the
//!   service (a datagram on its socket `replication.wake`) instead of waiting for its
//!   next poll; the service ships every pending change in one batch (while a batch is
//!   on its way, a partial one waits until the standby took it in and takes everything
//!   committed meanwhile; full batches go up to `window` at a time; the standby's apply
//!   of a batch never holds the next one back), and the standby
//!   takes every batch that arrived while it was applying the previous one and applies them together in one transaction (one
//!   fsync, its position in the same transaction) with one acknowledgement. So
//!   concurrent writers share round trips and fsyncs on the standby, and the
//!   guarantees are those of one batch: exactly once, acknowledged = durable there.
//! - **Exact values.** Rows travel as JSON built in Rust from native values (REALs are
//!   captured natively beside the changelog, since SQLite's float-to-text conversion
//!   is not exact) and are applied with typed parameters, in multi-row statements.
//! - **Fencing.** On a site with a witness the node agent hands the service a [`Fence`]
//!   ([`Replicator::with_fence`]): the token of the leader key lease this node holds and
//!   the highest token it has seen. Every state a node sends carries its token, and a
//!   standby applies nothing from a peer whose token is missing or older than the
//!   highest it has seen: it checks before applying and again inside the batch's
//!   transaction just before the commit, so a stale holder's batch never reaches the
//!   database, even in part. It stops pulling, says why in its alarm, and resumes by
//!   itself once the peer announces a token at least as new. A node whose own token is
//!   older than its peer's does not stream to it nor send it a snapshot. Without a
//!   fence (no witness) nothing changes.
//!
//! # Files
//!
//! In the application's database: `_tandem_meta`, `_tandem_changelog`,
//! `_tandem_reals` and the `_tandem_<table>_*` triggers. In the node's state directory
//! (`/var/lib/tandem`): `replication.lock` (held by the running service),
//! `replication.acked` (the published acknowledgement), `replication.wake` (the
//! service's wake-up socket) and
//! `local-only-rows-<UTC time>-node<N>.jsonl` (one per from-sync that found rows: each
//! line names the table, the key, this node's row or `null` if it deleted it, and the
//! peer's row or `null`). The standalone service (`mp_replication service`) uses the
//! site key (default `/etc/tandem/authkey`, as `failover keygen` writes it) and its own
//! port, [`DEFAULT_PORT`] (7452), beside the node agent's 7451: control messages must not
//! queue behind a from-sync's bulk data (measured in `cargo xtask bench link`). A host
//! that owns its links can hand sessions to [`Replicator::run`] instead.
//!
//! The PostgreSQL backend keeps `<state dir>/postgres.json` (node, peer, state; versioned
//! and checksummed), `<state dir>/postgres.contact` (when this standby last streamed) and
//! `<state dir>/postgres/` (the server log, PostgreSQL programs' logs, the password file
//! and this node's own config files saved across a from-sync); in the cluster's config
//! directory `tandem.conf` and one include line at the end of `postgresql.conf`.
//!
//! What this crate never does: touch interfaces or addresses, decide roles (the node
//! agent calls [`promote`](ReplicationBackend::promote) and
//! [`demote`](ReplicationBackend::demote)), parse command lines, or, for PostgreSQL,
//! copy rows itself or promote a standby that may be stale without being told to.
//!
//! # Example
//!
//! ```
//! use tandem_core::NodeId;
//! use tandem_replication::{
//!     InitOptions, Quiet, ReplicationBackend, ReplicationConfig, Settings, SqliteBackend,
//! };
//! use tandem_sample as sample; // the demo's schema and workload (examples/sample)
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let config = ReplicationConfig { sample_schema: true, ..ReplicationConfig::default() };
//! let node1 = SqliteBackend::open(&sample::settings(Settings::new(dir.path(), config))).await?;
//!
//! // `mp_replication init -n 1 -r 192.0.2.12`
//! node1.init(&InitOptions::new(NodeId::One, "192.0.2.12:7451".parse()?), &Quiet).await?;
//! // The node agent makes the database writable when the node becomes active.
//! node1.promote().await?;
//!
//! let mut conn = node1.pool().acquire().await?;
//! sample::write_transaction(&mut conn, 1, 10).await?;
//!
//! let status = node1.status().await?;
//! assert!(status.render().contains("| Node: 1 "));
//! assert!(status.render().contains("Status: Not connected"));
//! # Ok(())
//! # }
//! ```
//!
//! The node config selects PostgreSQL (`tandem-node` reads the file; this crate owns
//! the `[replication]` table's type and checks); `-r REMOTE` without a port then names
//! the peer's server:
//!
//! ```
//! use tandem_replication::{BackendKind, ReplicationConfig, Settings, StandbyLostPolicy};
//!
//! #[derive(serde::Deserialize)]
//! struct File {
//!     replication: ReplicationConfig,
//! }
//! let text = "[replication]\nbackend = \"postgres\"\n\n\
//!             [replication.postgres]\nport = 5433\nstandby_lost = \"strict\"\n";
//! let file: File = toml::from_str(text)?;
//! file.replication.validate()?;
//! let settings = Settings::new("/var/lib/tandem", file.replication);
//! assert_eq!(settings.replication.backend, BackendKind::Postgres);
//! assert_eq!(settings.replication.postgres.standby_lost, StandbyLostPolicy::Strict);
//! assert_eq!(settings.port(), 5433);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod config;
mod error;
mod fence;
mod observer;
mod postgres;
mod size;
mod sqlite;
mod status;
mod util;
pub mod wire;

use std::future::Future;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::FutureExt;
use tandem_core::NodeId;

pub use config::{
    AckLevel, BackendKind, DEFAULT_CONFIG_PATH, DEFAULT_DATABASE_NAME, DEFAULT_KEY_FILE,
    DEFAULT_PORT, DEFAULT_STATE_DIR, DEFAULT_TABLES, FieldError, NodeFacts, PostgresConfig,
    ReplicationConfig, Settings, StandbyLostPolicy,
};
pub use error::{Error, Result, chain};
pub use fence::Fence;
pub use observer::{Observer, Quiet};
pub use postgres::{PostgresBackend, ResyncProgress, WatchOutcome, parse_lsn, site_ca_pem};
pub use size::{database_bytes, database_size_alarm};
pub use sqlite::{
    Identity, PeerEvent, Replicator, RestoreConflict, RestoreReport, SavedRow, SqliteBackend,
    TableChecksum, Transport, Writer, connect_options, position_in, published_ack, published_at,
};
pub use status::{
    LinkStatus, Position, ReplicationState, ReplicationType, ServerStatus, Status, WalStatus,
    outcome_line,
};

/// What `init` needs: who this node is and where its peer is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InitOptions {
    /// This node's id.
    pub node: NodeId,
    /// The site (the seed's "Site: 1").
    pub site: u16,
    /// The peer's node address and peer link port.
    pub remote: SocketAddr,
    /// This node's node address, if known.
    pub local: Option<IpAddr>,
}

impl InitOptions {
    /// Node `node` of site 1 with its peer at `remote`; the local address is the one
    /// the routing table uses toward `remote`.
    pub fn new(node: NodeId, remote: SocketAddr) -> InitOptions {
        InitOptions {
            node,
            site: 1,
            remote,
            local: route_source(remote),
        }
    }

    /// Sets the site.
    pub fn with_site(mut self, site: u16) -> InitOptions {
        self.site = site;
        self
    }

    /// Sets this node's node address.
    pub fn with_local(mut self, local: IpAddr) -> InitOptions {
        self.local = Some(local);
        self
    }
}

/// What `init` did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InitReport {
    /// Node id.
    pub node: NodeId,
    /// Site.
    pub site: u16,
    /// The peer.
    pub remote: SocketAddr,
    /// This node's node address, if known.
    pub local: Option<IpAddr>,
    /// The declared tables.
    pub tables: Vec<String>,
    /// Whether this was the first `init` of the database.
    pub created: bool,
    /// The replication state after `init`.
    pub state: ReplicationState,
    /// Whether the database takes application writes.
    pub writable: bool,
}

/// Options of `switch-on`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SwitchOnOptions {
    /// Copy the peer's data first (`-S -F from-sync`).
    pub sync: bool,
    /// How long to wait for the service (and the peer, for a sync).
    pub timeout: Duration,
}

impl SwitchOnOptions {
    /// Switch on without a sync, waiting at most 30 s.
    pub fn new() -> SwitchOnOptions {
        SwitchOnOptions {
            sync: false,
            timeout: Duration::from_secs(30),
        }
    }

    /// Copy the peer's data first.
    pub fn from_sync(mut self) -> SwitchOnOptions {
        self.sync = true;
        self
    }

    /// Sets the time limit.
    pub fn with_timeout(mut self, timeout: Duration) -> SwitchOnOptions {
        self.timeout = timeout;
        self
    }
}

impl Default for SwitchOnOptions {
    fn default() -> Self {
        SwitchOnOptions::new()
    }
}

/// What `switch-on` or `switch-off` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SwitchReport {
    /// What happened, for people.
    pub message: String,
    /// The file with the rows only this node had, after a from-sync that found some.
    pub local_only_file: Option<PathBuf>,
    /// How many rows that file holds.
    pub saved_rows: u64,
    /// Rows copied from the peer by a from-sync.
    pub copied_rows: u64,
}

/// How to [`promote`](ReplicationBackend::promote_with).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PromoteOptions {
    /// Promote a standby even when it may be stale (`mp_replication promote --force`):
    /// with PostgreSQL's `degrade` policy, a standby that has not streamed for
    /// `degrade_after_ms` may lack writes its primary acknowledged without it. The
    /// SQLite backend never refuses on that ground, so it ignores this.
    pub force: bool,
}

impl PromoteOptions {
    /// Promote only a standby that cannot be stale.
    pub fn new() -> PromoteOptions {
        PromoteOptions::default()
    }

    /// Sets [`force`](Self::force).
    pub fn forced(mut self, force: bool) -> PromoteOptions {
        self.force = force;
        self
    }
}

/// How to [`demote`](ReplicationBackend::demote_with).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DemoteOptions {
    /// Make this node's database the standby's at once and leave a long copy from the
    /// peer (PostgreSQL's `pg_rewind` or `pg_basebackup`) to the replication service,
    /// as the node agent does: its event loop must go on meanwhile. The SQLite backend
    /// has no such copy to leave.
    pub defer_copy: bool,
}

impl DemoteOptions {
    /// Demote, copying from the peer now if that is due.
    pub fn new() -> DemoteOptions {
        DemoteOptions::default()
    }

    /// Sets [`defer_copy`](Self::defer_copy).
    pub fn deferring_copy(mut self, defer: bool) -> DemoteOptions {
        self.defer_copy = defer;
        self
    }
}

/// What a demotion did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DemoteReport {
    /// A resynchronisation from the peer is due and left to the replication service
    /// (only with [`DemoteOptions::defer_copy`]).
    pub resync_due: bool,
}

impl DemoteReport {
    /// A report saying whether a resynchronisation is due.
    pub fn new(resync_due: bool) -> DemoteReport {
        DemoteReport { resync_due }
    }
}

/// One trait for every replication backend (SQLite and PostgreSQL): the operations of
/// `mp_replication` and of the node agent. It is the one way to reach a backend: each
/// backend implements it once, and [`Backend`] (chosen by configuration) dispatches to
/// the one it holds. An operation a backend does not have answers with an error that
/// says so.
pub trait ReplicationBackend {
    /// Prepares this node's database for replication (idempotent): records node id,
    /// site and remote, and installs what the backend needs.
    fn init(
        &self,
        options: &InitOptions,
        observer: &dyn Observer,
    ) -> impl Future<Output = Result<InitReport>> + Send;

    /// Switches replication on here, after copying the peer's data when
    /// `options.sync` (from-sync); see [`switches_peer`](Self::switches_peer).
    fn switch_on(
        &self,
        options: &SwitchOnOptions,
        observer: &dyn Observer,
    ) -> impl Future<Output = Result<SwitchReport>> + Send;

    /// Switches replication off here; see [`switches_peer`](Self::switches_peer).
    fn switch_off(
        &self,
        observer: &dyn Observer,
    ) -> impl Future<Output = Result<SwitchReport>> + Send;

    /// Whether [`switch_on`](Self::switch_on) and [`switch_off`](Self::switch_off) also
    /// switch the connected peer (the SQLite backend's replication service does);
    /// otherwise the caller switches each node itself.
    fn switches_peer(&self) -> bool;

    /// Both nodes' replication status.
    fn status(&self) -> impl Future<Output = Result<Status>> + Send;

    /// Who this node is and where its peer is, as `init` recorded them.
    fn identity(&self) -> impl Future<Output = Result<Identity>> + Send;

    /// Makes this node's database the writable one (the node became active).
    fn promote_with(&self, options: PromoteOptions) -> impl Future<Output = Result<()>> + Send;

    /// [`promote_with`](Self::promote_with) the default options.
    fn promote(&self) -> impl Future<Output = Result<()>> + Send {
        self.promote_with(PromoteOptions::new())
    }

    /// Makes this node's database the standby (the node became standby).
    fn demote_with(
        &self,
        options: DemoteOptions,
    ) -> impl Future<Output = Result<DemoteReport>> + Send;

    /// [`demote_with`](Self::demote_with) the default options.
    fn demote(&self) -> impl Future<Output = Result<()>> + Send {
        self.demote_with(DemoteOptions::new())
            .map(|done| done.map(drop))
    }

    /// Waits until the standby has durably applied everything up to `position` (for
    /// applications that acknowledge only replicated writes), at most `timeout`. It
    /// waits through a lost standby; the SQLite backend's
    /// [`wait_replicated_while_connected`](SqliteBackend::wait_replicated_while_connected)
    /// stops as soon as the service has lost it, for applications that degrade.
    /// `timeout` bounds the whole wait, its looks at the database included: when it
    /// runs out, even in a look that the database does not answer, the wait ends with
    /// [`Error::NotReplicated`].
    fn wait_replicated(
        &self,
        position: Position,
        timeout: Duration,
    ) -> impl Future<Output = Result<()>> + Send;

    /// A checksum of every replicated table, to compare the two nodes
    /// (`mp_replication checksum`; the SQLite backend only).
    fn table_checksums(&self) -> impl Future<Output = Result<Vec<TableChecksum>>> + Send;

    /// Writes back the rows a from-sync saved as only this node's
    /// (`mp_replication restore-local-rows`; the SQLite backend only).
    fn restore_local_rows(
        &self,
        file: &Path,
        dry_run: bool,
    ) -> impl Future<Output = Result<RestoreReport>> + Send;
}

/// The error of an operation the configured backend does not have.
pub(crate) fn unsupported(command: &str) -> Error {
    Error::State(format!(
        "`{command}` works with the SQLite backend only; this node's config selects \
         PostgreSQL (compare or write with SQL there)"
    ))
}

/// A backend chosen by configuration (`[replication] backend`), for tools that serve
/// every backend with the same commands and output.
#[derive(Debug)]
#[non_exhaustive]
pub enum Backend {
    /// The embedded SQLite backend.
    Sqlite(SqliteBackend),
    /// PostgreSQL's streaming replication.
    Postgres(Box<PostgresBackend>),
}

impl Backend {
    /// Opens the backend the settings name.
    pub async fn open(settings: &Settings) -> Result<Backend> {
        match settings.replication.backend {
            BackendKind::Sqlite => Ok(Backend::Sqlite(SqliteBackend::open(settings).await?)),
            BackendKind::Postgres => Ok(Backend::Postgres(Box::new(
                PostgresBackend::open(settings).await?,
            ))),
        }
    }

    /// Opens the backend only if its database exists (see
    /// [`SqliteBackend::open_existing`]).
    pub async fn open_existing(settings: &Settings) -> Result<Backend> {
        match settings.replication.backend {
            BackendKind::Sqlite => Ok(Backend::Sqlite(
                SqliteBackend::open_existing(settings).await?,
            )),
            BackendKind::Postgres => Ok(Backend::Postgres(Box::new(
                PostgresBackend::open_existing(settings).await?,
            ))),
        }
    }
}

impl Backend {
    /// Runs this backend's replication service until `shutdown` resolves; the one
    /// entry point for a host (the node agent, `mp_replication service`).
    ///
    /// - SQLite: the [`Replicator`] on its own peer link (port
    ///   [`DEFAULT_PORT`], 7452, authenticated with `key`), fenced with the witness's
    ///   tokens when `fence` is given (a site with a witness).
    /// - PostgreSQL: PostgreSQL streams by itself; the service is the watch that
    ///   records the standby's contact, applies the `standby_lost` policy and
    ///   resynchronises a demoted node ([`PostgresBackend::watch`]). Its link is
    ///   PostgreSQL's own, so `key` and `fence` are not used here.
    pub async fn serve(
        self,
        key: tandem_peer::SiteKey,
        fence: Option<tokio::sync::watch::Receiver<Fence>>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<()> {
        match self {
            Backend::Sqlite(backend) => {
                let mut replicator = Replicator::new(std::sync::Arc::new(backend));
                if let Some(fence) = fence {
                    replicator = replicator.with_fence(fence);
                }
                replicator.run_standalone(key, shutdown).await
            }
            Backend::Postgres(backend) => backend.watch(shutdown).await,
        }
    }

    /// Where the data lives, for logs: the SQLite database file or PostgreSQL's
    /// data directory.
    pub fn location(&self) -> PathBuf {
        match self {
            Backend::Sqlite(b) => b.database_path(),
            Backend::Postgres(b) => b.data_dir().to_path_buf(),
        }
    }
}

/// `backend.$op($args)` on the backend `$self` holds.
macro_rules! dispatch {
    ($self:ident.$op:ident($($arg:expr),*)) => {
        match $self {
            Backend::Sqlite(b) => ReplicationBackend::$op(b, $($arg),*).await,
            Backend::Postgres(b) => ReplicationBackend::$op(b.as_ref(), $($arg),*).await,
        }
    };
}

impl ReplicationBackend for Backend {
    async fn init(&self, options: &InitOptions, observer: &dyn Observer) -> Result<InitReport> {
        dispatch!(self.init(options, observer))
    }

    async fn switch_on(
        &self,
        options: &SwitchOnOptions,
        observer: &dyn Observer,
    ) -> Result<SwitchReport> {
        dispatch!(self.switch_on(options, observer))
    }

    async fn switch_off(&self, observer: &dyn Observer) -> Result<SwitchReport> {
        dispatch!(self.switch_off(observer))
    }

    fn switches_peer(&self) -> bool {
        match self {
            Backend::Sqlite(b) => b.switches_peer(),
            Backend::Postgres(b) => b.switches_peer(),
        }
    }

    async fn status(&self) -> Result<Status> {
        dispatch!(self.status())
    }

    async fn identity(&self) -> Result<Identity> {
        dispatch!(self.identity())
    }

    async fn promote_with(&self, options: PromoteOptions) -> Result<()> {
        dispatch!(self.promote_with(options))
    }

    async fn demote_with(&self, options: DemoteOptions) -> Result<DemoteReport> {
        dispatch!(self.demote_with(options))
    }

    async fn wait_replicated(&self, position: Position, timeout: Duration) -> Result<()> {
        dispatch!(self.wait_replicated(position, timeout))
    }

    async fn table_checksums(&self) -> Result<Vec<TableChecksum>> {
        dispatch!(self.table_checksums())
    }

    async fn restore_local_rows(&self, file: &Path, dry_run: bool) -> Result<RestoreReport> {
        dispatch!(self.restore_local_rows(file, dry_run))
    }
}

/// The local address the routing table uses toward `remote` (no packet is sent).
pub fn route_source(remote: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = if remote.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(any).ok()?;
    socket.connect(remote).ok()?;
    socket
        .local_addr()
        .ok()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified())
}
