//! Configuration: the `[replication]` table of the node config file
//! (default `/etc/tandem/node.toml`) as this crate's own serde type with its checks
//! ([`ReplicationConfig::validate`]), and the [`Settings`] a backend runs with. The
//! file itself is read by `tandem-node`, which composes this table into its
//! `NodeConfig` and supplies the few facts replication needs from the rest of the file
//! ([`NodeFacts`]: `[node]`, `[network]`, `[peer]`).
//!
//! ```toml
//! [replication]
//! backend = "sqlite"                       # or "postgres"
//! database = "/var/lib/meetingplace/app.sqlite"
//! tables = ["user_groups", "user_profiles", "meetings"]
//! max_backlog = 1000000                    # changes; past it replication suspends itself
//! ```
//!
//! The PostgreSQL backend reads its own table, `[replication.postgres]`
//! ([`PostgresConfig`]); `database`, `tables` and the batch settings are the SQLite
//! backend's and do not apply to it:
//!
//! ```toml
//! [replication]
//! backend = "postgres"
//!
//! [replication.postgres]
//! data_dir = "/var/lib/postgresql/15/main"
//! port = 5432
//! synchronous = true          # zero loss: commits wait for the standby
//! standby_lost = "degrade"    # or "strict": block writes while the standby is gone
//! max_slot_wal_keep_mb = 10240  # WAL kept for a standby left out, at most
//! ```
//!
//! Precedence: what `mp_replication init` recorded in the database (node id, remote
//! address) wins over the file; the file wins over the defaults.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Where the node config lives unless `--config` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/tandem/node.toml";
/// Where a node keeps its state unless `--state-dir` or `TANDEM_STATE_DIR` say otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tandem";
/// The site key file unless the config names another (where `failover keygen` writes it).
pub const DEFAULT_KEY_FILE: &str = "/etc/tandem/authkey";
/// The TCP port of the standalone replication service's peer link: next to the node
/// agent's (7451), so both can run until the agent carries replication itself.
pub const DEFAULT_PORT: u16 = tandem_peer::DEFAULT_PORT + 1;
/// The database file name under the state directory unless the config names one.
pub const DEFAULT_DATABASE_NAME: &str = "replicated.sqlite";
/// The declared tables when the config names none: those of the sample schema that
/// the demo and the tests use (`examples/sample`), parents first.
pub const DEFAULT_TABLES: [&str; 3] = ["user_groups", "user_profiles", "meetings"];

/// A value of the `[replication]` table that cannot work: the field, as a dotted path
/// from the top of the node config (`replication.postgres.port`), and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    /// The field, e.g. `replication.max_backlog`.
    pub field: &'static str,
    /// What is wrong and what to do.
    pub problem: String,
}

impl From<FieldError> for Error {
    fn from(e: FieldError) -> Error {
        Error::Config(e.to_string())
    }
}

/// A [`FieldError`] as the `Err` of a check.
fn bad(field: &'static str, problem: impl Into<String>) -> Result<(), FieldError> {
    Err(FieldError {
        field,
        problem: problem.into(),
    })
}

/// Which database replication controls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum BackendKind {
    /// The embedded SQLite backend (nothing to install).
    #[default]
    Sqlite,
    /// PostgreSQL's own streaming replication, controlled by tandem.
    Postgres,
}

/// How far the standby must have a commit before
/// [`wait_replicated`](crate::ReplicationBackend::wait_replicated) returns, like
/// PostgreSQL's `synchronous_commit` (`[replication] synchronous_commit`). Each level
/// implies the ones before it.
///
/// | level | the standby has the commit | survives | SQLite | PostgreSQL |
/// | --- | --- | --- | --- | --- |
/// | `received` | in memory, applying it next | the loss of either node (the active has it on disk), not both at once | one round trip | `write_lsn` (`remote_write`) |
/// | `flushed` | on its disk | the loss of both nodes at once | round trip + the standby's apply and fsync (the apply is its only write: the same as `applied`) | `flush_lsn` (`on`) |
/// | `applied` | visible in its database | as `flushed`; a read on the standby sees it | as `flushed` | `replay_lsn` (`remote_apply`) |
///
/// A node of an earlier release as standby never says `received`: a commit waiting
/// at that level then returns with the applied acknowledgement, which implies it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum AckLevel {
    /// The standby took the commit in (PostgreSQL's `remote_write`).
    Received,
    /// The standby has the commit on its disk (the default: what `wait_replicated`
    /// always waited for on both backends).
    #[default]
    Flushed,
    /// The commit is visible in the standby's database.
    Applied,
}

impl AckLevel {
    /// Every level, weakest first.
    pub const ALL: [AckLevel; 3] = [AckLevel::Received, AckLevel::Flushed, AckLevel::Applied];

    /// The name in the config file.
    pub fn name(self) -> &'static str {
        match self {
            AckLevel::Received => "received",
            AckLevel::Flushed => "flushed",
            AckLevel::Applied => "applied",
        }
    }
}

impl std::fmt::Display for AckLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for AckLevel {
    type Err = String;

    fn from_str(text: &str) -> Result<AckLevel, String> {
        AckLevel::ALL
            .into_iter()
            .find(|l| l.name() == text)
            .ok_or_else(|| {
                format!("unknown acknowledgement level {text:?}: say received, flushed or applied")
            })
    }
}

/// What a synchronous primary does when its standby is gone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum StandbyLostPolicy {
    /// Keep accepting writes once the standby has been gone for `degrade_after_ms`,
    /// raise an alarm, and refuse to promote the stale standby (pg_auto_failover's
    /// `wait_primary`).
    #[default]
    Degrade,
    /// Block writes until the standby is back: nothing is ever acknowledged that only
    /// one node has.
    Strict,
}

/// The `[replication.postgres]` table: where the PostgreSQL server of this node lives
/// and how tandem replicates it. Every field has a default (Debian's layout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct PostgresConfig {
    /// PostgreSQL's programs (`pg_ctl`, `pg_basebackup`, `pg_rewind`, `postgres`);
    /// default `pg_config --bindir`, else `/usr/lib/postgresql/15/bin`.
    pub bindir: Option<PathBuf>,
    /// The data directory (the cluster).
    pub data_dir: PathBuf,
    /// `postgresql.conf`; default `<data_dir>/postgresql.conf`. tandem's own settings
    /// go into `tandem.conf` beside it, included at its end.
    pub config_file: Option<PathBuf>,
    /// `pg_hba.conf`; default beside `config_file`.
    pub hba_file: Option<PathBuf>,
    /// The server's TCP port, on both nodes.
    pub port: u16,
    /// The directory of the server's Unix socket, through which tandem connects.
    pub socket_dir: PathBuf,
    /// The operating system user that owns the cluster and runs PostgreSQL's programs.
    pub os_user: String,
    /// The database superuser tandem connects as over the Unix socket (`pg_hba.conf`
    /// must let this node's root connect as it, for example `peer` with a map).
    pub superuser: String,
    /// The database tandem connects to.
    pub database: String,
    /// The replication role that each node's standby logs in as (SCRAM; its password is
    /// derived from the site key, so both nodes know it and it is never stored).
    pub replication_user: String,
    /// Synchronous replication: a commit returns once the standby has flushed it.
    pub synchronous: bool,
    /// What a synchronous primary does when its standby is gone.
    pub standby_lost: StandbyLostPolicy,
    /// How long the standby may be gone before a `degrade` primary stops waiting for
    /// it, in milliseconds. A standby that has not streamed for this long may be stale
    /// and is not promoted (without `--force`).
    pub degrade_after_ms: u64,
    /// WAL a primary keeps at most for a standby's slot, in MB
    /// (`max_slot_wal_keep_size`); past it the slot is given up and the standby needs
    /// from-sync, instead of the primary's disk filling up. 0: no limit.
    pub max_slot_wal_keep_mb: u64,
    /// Time limit of a connection to either server, in milliseconds.
    pub connect_timeout_ms: u64,
    /// TLS on the connections between the nodes (default on): `init` issues this node a
    /// certificate from a CA derived from the site key, the server turns `ssl` on, the
    /// replication role may log in over TLS only (`hostssl`), and the standby checks
    /// the peer's certificate (`sslmode=verify-full`). Off: plain text, as before.
    pub tls: bool,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            bindir: None,
            data_dir: PathBuf::from("/var/lib/postgresql/15/main"),
            config_file: None,
            hba_file: None,
            port: 5432,
            socket_dir: PathBuf::from("/var/run/postgresql"),
            os_user: "postgres".to_owned(),
            superuser: "postgres".to_owned(),
            database: "postgres".to_owned(),
            replication_user: "tandem_replicator".to_owned(),
            synchronous: true,
            standby_lost: StandbyLostPolicy::Degrade,
            degrade_after_ms: 30_000,
            max_slot_wal_keep_mb: 10_240,
            connect_timeout_ms: 3_000,
            tls: true,
        }
    }
}

impl PostgresConfig {
    /// `postgresql.conf`.
    pub fn config_file(&self) -> PathBuf {
        self.config_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("postgresql.conf"))
    }

    /// The directory of `postgresql.conf` (what `pg_ctl -D` takes).
    pub fn config_dir(&self) -> PathBuf {
        let file = self.config_file();
        file.parent()
            .map_or_else(|| self.data_dir.clone(), Path::to_path_buf)
    }

    /// `pg_hba.conf`.
    pub fn hba_file(&self) -> PathBuf {
        self.hba_file
            .clone()
            .unwrap_or_else(|| self.config_dir().join("pg_hba.conf"))
    }

    /// tandem's include file beside `postgresql.conf`.
    pub fn tandem_conf(&self) -> PathBuf {
        self.config_dir().join("tandem.conf")
    }

    fn validate(&self) -> Result<(), FieldError> {
        for (field, value) in [
            ("replication.postgres.os_user", &self.os_user),
            ("replication.postgres.superuser", &self.superuser),
            ("replication.postgres.database", &self.database),
            (
                "replication.postgres.replication_user",
                &self.replication_user,
            ),
        ] {
            let ok = !value.is_empty()
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok {
                return bad(field, format!("{value:?}: use letters, digits, `_` or `-`"));
            }
        }
        if self.port == 0 {
            return bad("replication.postgres.port", "must not be 0");
        }
        for (field, value) in [
            (
                "replication.postgres.degrade_after_ms",
                self.degrade_after_ms,
            ),
            (
                "replication.postgres.connect_timeout_ms",
                self.connect_timeout_ms,
            ),
        ] {
            if value == 0 {
                return bad(
                    field,
                    "degrade_after_ms and connect_timeout_ms must be at least 1",
                );
            }
        }
        Ok(())
    }
}

/// The `[replication]` table. Every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    /// The backend.
    pub backend: BackendKind,
    /// The application's database file; default `<state dir>/replicated.sqlite`.
    pub database: Option<PathBuf>,
    /// The declared tables: each needs a primary key. Default: [`DEFAULT_TABLES`].
    pub tables: Vec<String>,
    /// Create the sample schema (user groups, user profiles, meetings) in the database if
    /// it is missing (for the demo and tests): `init` runs the statements the program
    /// supplies in [`Settings::schema`] (the example side's `tandem-sample` does).
    pub sample_schema: bool,
    /// TCP port of the standalone service's peer link; default 7452.
    pub port: Option<u16>,
    /// The site key file; default `[peer] key_file`, else `/etc/tandem/authkey`.
    pub key_file: Option<PathBuf>,
    /// Unacknowledged changes the active node keeps at most; past this, replication
    /// switches itself off and raises an alarm instead of filling the disk.
    pub max_backlog: u64,
    /// Changes per batch at most.
    pub batch_size: u32,
    /// Bytes of row data per batch (and per snapshot chunk) at most.
    pub batch_bytes: u32,
    /// Batches sent and not yet taken in by the standby at most (its `received`
    /// acknowledgement; for a standby of an earlier release, its applied one).
    pub window: u32,
    /// What [`wait_replicated`](crate::ReplicationBackend::wait_replicated) waits for
    /// (see [`AckLevel`]); default `flushed`.
    pub synchronous_commit: AckLevel,
    /// How often the service looks for new changes and requests, in milliseconds,
    /// beside the wake-ups: the SQLite service ships new changes when its database's
    /// write-ahead log changes (inotify), so this poll is for housekeeping and for
    /// writes the watch cannot see.
    pub poll_ms: u64,
    /// Peer link heartbeat interval in milliseconds.
    pub heartbeat_ms: u64,
    /// Heartbeats missed before the peer counts as lost.
    pub missed_heartbeats: u32,
    /// The PostgreSQL backend's settings (`[replication.postgres]`).
    pub postgres: PostgresConfig,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            backend: BackendKind::Sqlite,
            database: None,
            tables: DEFAULT_TABLES.iter().map(|t| (*t).to_owned()).collect(),
            sample_schema: false,
            port: None,
            key_file: None,
            max_backlog: 1_000_000,
            batch_size: 500,
            batch_bytes: 4 << 20,
            window: 4,
            synchronous_commit: AckLevel::Flushed,
            poll_ms: 10,
            heartbeat_ms: 1000,
            missed_heartbeats: 3,
            postgres: PostgresConfig::default(),
        }
    }
}

impl ReplicationConfig {
    /// Checks the values; the error names the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        const TABLES: &str = "replication.tables";
        if self.tables.is_empty() {
            return bad(TABLES, "empty: declare at least one table to replicate");
        }
        for (i, table) in self.tables.iter().enumerate() {
            if let Err(problem) = check_identifier(table) {
                return bad(
                    TABLES,
                    format!("table `{table}` cannot be replicated: {problem}"),
                );
            }
            if self
                .tables
                .iter()
                .take(i)
                .any(|t| t.eq_ignore_ascii_case(table))
            {
                return bad(TABLES, format!("table `{table}` is declared twice"));
            }
        }
        if self.max_backlog == 0 {
            return bad("replication.max_backlog", "must be at least 1");
        }
        if self.batch_size == 0 {
            return bad(
                "replication.batch_size",
                "`batch_size` and `window` must be at least 1",
            );
        }
        if self.window == 0 {
            return bad(
                "replication.window",
                "`batch_size` and `window` must be at least 1",
            );
        }
        if self.batch_bytes < 1024 || self.batch_bytes > 8 << 20 {
            return bad(
                "replication.batch_bytes",
                "must be between 1024 and 8388608",
            );
        }
        if self.poll_ms == 0 || self.poll_ms > 10_000 {
            return bad("replication.poll_ms", "must be between 1 and 10000");
        }
        if self.heartbeat_ms == 0 {
            return bad(
                "replication.heartbeat_ms",
                "`heartbeat_ms` and `missed_heartbeats` must be at least 1",
            );
        }
        if self.missed_heartbeats == 0 {
            return bad(
                "replication.missed_heartbeats",
                "`heartbeat_ms` and `missed_heartbeats` must be at least 1",
            );
        }
        self.postgres.validate()
    }

    /// The poll interval.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_ms)
    }
}

/// Checks that a table or column name can be quoted in SQL and in JSON paths.
pub(crate) fn check_identifier(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name
        .chars()
        .any(|c| c == '"' || c == '\\' || c.is_control())
    {
        return Err("the name contains a double quote, backslash or control character".into());
    }
    if name.to_ascii_lowercase().starts_with("_tandem") || name.starts_with("sqlite_") {
        return Err("names starting with `_tandem` or `sqlite_` are reserved".into());
    }
    Ok(())
}

/// What replication needs from the rest of the node config file, as `tandem-node`
/// supplies it; everything optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// `[node] id`.
    pub id: Option<tandem_core::NodeId>,
    /// `[node] site`.
    pub site: Option<u16>,
    /// `[node] hostname` (the node's own hostname).
    pub hostname: Option<String>,
    /// `[network] node_address` without its prefix length.
    pub node_address: Option<IpAddr>,
    /// `[network] peer_address`.
    pub peer_address: Option<IpAddr>,
    /// `[peer] port`.
    pub peer_port: Option<u16>,
    /// `[peer] key_file`.
    pub key_file: Option<PathBuf>,
}

/// Everything replication needs from the command line, the environment and the config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The config file read, if one was.
    pub config_path: Option<PathBuf>,
    /// The node's state directory.
    pub state_dir: PathBuf,
    /// The `[replication]` table.
    pub replication: ReplicationConfig,
    /// Facts from the other tables.
    pub node: NodeFacts,
    /// The statements `init` runs (in its transaction, before it reads the tables)
    /// when `[replication] sample_schema` is on: `CREATE TABLE IF NOT EXISTS` of the
    /// sample schema, which the program that carries the sample supplies
    /// ([`Settings::with_schema`]); none by default.
    pub schema: Vec<String>,
}

impl Settings {
    /// Settings from defaults only (no config file), with the given state directory.
    pub fn new(state_dir: impl Into<PathBuf>, replication: ReplicationConfig) -> Settings {
        Settings {
            config_path: None,
            state_dir: state_dir.into(),
            replication,
            node: NodeFacts::default(),
            schema: Vec::new(),
        }
    }

    /// These settings with the statements that `sample_schema = true` runs in `init`.
    pub fn with_schema(mut self, statements: &[&str]) -> Settings {
        self.schema = statements.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// The database file.
    pub fn database_path(&self) -> PathBuf {
        match &self.replication.database {
            Some(path) => path.clone(),
            None => self.state_dir.join(DEFAULT_DATABASE_NAME),
        }
    }

    /// The site key file.
    pub fn key_file(&self) -> PathBuf {
        self.replication
            .key_file
            .clone()
            .or_else(|| self.node.key_file.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_KEY_FILE))
    }

    /// The port of the peer that `-r REMOTE` names when it gives none: the standalone
    /// service's peer link port, or for PostgreSQL the servers' port.
    pub fn port(&self) -> u16 {
        match self.replication.backend {
            BackendKind::Sqlite => self.replication.port.unwrap_or(DEFAULT_PORT),
            BackendKind::Postgres => self.replication.postgres.port,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_name_the_sample_tables() {
        let config = ReplicationConfig::default();
        config.validate().unwrap();
        assert_eq!(config.tables, DEFAULT_TABLES);
        let settings = Settings::new("/st", config).with_schema(&["CREATE TABLE t (k)"]);
        assert_eq!(
            settings.database_path(),
            PathBuf::from("/st/replicated.sqlite")
        );
        assert_eq!(settings.schema, ["CREATE TABLE t (k)"]);
        assert_eq!(settings.key_file(), PathBuf::from(DEFAULT_KEY_FILE));
        assert_eq!(settings.port(), DEFAULT_PORT);
    }
}
