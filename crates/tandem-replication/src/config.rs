//! Configuration: the `[replication]` table of the node config file
//! (default `/etc/tandem/node.toml`), and the few facts replication reads from the
//! rest of that file (`[node]`, `[network]`, `[peer]`), all optional.
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

use crate::error::{Error, Result};
use crate::sample;

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

    fn validate(&self) -> Result<()> {
        let bad = |text: String| Err(Error::Config(text));
        for (name, value) in [
            ("os_user", &self.os_user),
            ("superuser", &self.superuser),
            ("database", &self.database),
            ("replication_user", &self.replication_user),
        ] {
            let ok = !value.is_empty()
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok {
                return bad(format!(
                    "[replication.postgres] {name} = {value:?}: use letters, digits, `_` or `-`"
                ));
            }
        }
        if self.port == 0 {
            return bad("[replication.postgres] port must not be 0".into());
        }
        if self.degrade_after_ms == 0 || self.connect_timeout_ms == 0 {
            return bad(
                "[replication.postgres] degrade_after_ms and connect_timeout_ms must be at least 1"
                    .into(),
            );
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
    /// The declared tables: each needs a primary key. Default: the sample schema's tables.
    pub tables: Vec<String>,
    /// Create the sample schema (user groups, user profiles, meetings) in the database if
    /// it is missing (for the demo and tests).
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
    /// Batches sent and not yet acknowledged at most.
    pub window: u32,
    /// How often the service looks for new changes and requests, in milliseconds.
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
            tables: sample::TABLES.iter().map(|t| (*t).to_owned()).collect(),
            sample_schema: false,
            port: None,
            key_file: None,
            max_backlog: 1_000_000,
            batch_size: 500,
            batch_bytes: 4 << 20,
            window: 4,
            poll_ms: 1,
            heartbeat_ms: 1000,
            missed_heartbeats: 3,
            postgres: PostgresConfig::default(),
        }
    }
}

impl ReplicationConfig {
    /// Checks the values; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |text: String| Err(Error::Config(text));
        if self.tables.is_empty() {
            return bad("`tables` is empty: declare at least one table to replicate".into());
        }
        for (i, table) in self.tables.iter().enumerate() {
            check_identifier(table).map_err(|problem| Error::Table {
                table: table.clone(),
                problem,
            })?;
            if self
                .tables
                .iter()
                .take(i)
                .any(|t| t.eq_ignore_ascii_case(table))
            {
                return bad(format!("table `{table}` is declared twice in `tables`"));
            }
        }
        if self.max_backlog == 0 {
            return bad("`max_backlog` must be at least 1".into());
        }
        if self.batch_size == 0 || self.window == 0 {
            return bad("`batch_size` and `window` must be at least 1".into());
        }
        if self.batch_bytes < 1024 || self.batch_bytes > 8 << 20 {
            return bad("`batch_bytes` must be between 1024 and 8388608".into());
        }
        if self.poll_ms == 0 || self.poll_ms > 10_000 {
            return bad("`poll_ms` must be between 1 and 10000".into());
        }
        if self.heartbeat_ms == 0 || self.missed_heartbeats == 0 {
            return bad("`heartbeat_ms` and `missed_heartbeats` must be at least 1".into());
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

/// What replication reads from the rest of the node config file; everything optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// `[node] id`.
    pub id: Option<u8>,
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
}

impl Settings {
    /// Settings from defaults only (no config file), with the given state directory.
    pub fn new(state_dir: impl Into<PathBuf>, replication: ReplicationConfig) -> Settings {
        Settings {
            config_path: None,
            state_dir: state_dir.into(),
            replication,
            node: NodeFacts::default(),
        }
    }

    /// Loads the node config file at `path`. When `required` is false a missing file
    /// means defaults (the default path on a machine that has none); otherwise it is an
    /// error. The `[replication]` table is validated.
    pub fn load(path: &Path, required: bool, state_dir: impl Into<PathBuf>) -> Result<Settings> {
        let state_dir = state_dir.into();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                let settings = Settings::new(state_dir, ReplicationConfig::default());
                return Ok(settings);
            }
            Err(e) => {
                return Err(Error::ConfigFile {
                    path: path.to_path_buf(),
                    source: Box::new(e),
                });
            }
        };
        let mut settings = Settings::parse(&text, path, state_dir)?;
        settings.config_path = Some(path.to_path_buf());
        Ok(settings)
    }

    /// Parses the text of a node config file (`path` is for messages).
    pub fn parse(text: &str, path: &Path, state_dir: impl Into<PathBuf>) -> Result<Settings> {
        let fail = |e: Box<dyn std::error::Error + Send + Sync>| Error::ConfigFile {
            path: path.to_path_buf(),
            source: e,
        };
        let table: toml::Table = toml::from_str(text).map_err(|e| fail(Box::new(e)))?;
        let replication: ReplicationConfig = match table.get("replication") {
            Some(value) => value
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| fail(format!("[replication]: {e}").into()))?,
            None => ReplicationConfig::default(),
        };
        replication.validate().map_err(|e| fail(Box::new(e)))?;
        let node = node_facts(&table).map_err(|e| fail(e.into()))?;
        Ok(Settings {
            config_path: Some(path.to_path_buf()),
            state_dir: state_dir.into(),
            replication,
            node,
        })
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

fn node_facts(table: &toml::Table) -> Result<NodeFacts, String> {
    let section = |name: &str| table.get(name).and_then(toml::Value::as_table);
    let int = |sec: Option<&toml::Table>, key: &str| -> Result<Option<i64>, String> {
        match sec.and_then(|s| s.get(key)) {
            None => Ok(None),
            Some(v) => v
                .as_integer()
                .map(Some)
                .ok_or_else(|| format!("`{key}` must be an integer")),
        }
    };
    let string = |sec: Option<&toml::Table>, key: &str| -> Result<Option<String>, String> {
        match sec.and_then(|s| s.get(key)) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(|s| Some(s.to_owned()))
                .ok_or_else(|| format!("`{key}` must be a string")),
        }
    };
    let addr = |sec: Option<&toml::Table>, key: &str| -> Result<Option<IpAddr>, String> {
        let Some(text) = string(sec, key)? else {
            return Ok(None);
        };
        let ip = text.split('/').next().unwrap_or_default();
        ip.parse()
            .map(Some)
            .map_err(|_| format!("`{key}` = {text:?} is not an IP address"))
    };
    let (node, network, peer) = (section("node"), section("network"), section("peer"));
    let id = match int(node, "id")? {
        None => None,
        Some(v @ 1..=2) => u8::try_from(v).ok(),
        Some(v) => return Err(format!("[node] id = {v}: a node id is 1 or 2")),
    };
    let site = match int(node, "site")? {
        None => None,
        Some(v) => {
            Some(u16::try_from(v).map_err(|_| format!("[node] site = {v} is out of range"))?)
        }
    };
    let peer_port = match int(peer, "port")? {
        None => None,
        Some(v) => {
            Some(u16::try_from(v).map_err(|_| format!("[peer] port = {v} is out of range"))?)
        }
    };
    Ok(NodeFacts {
        id,
        site,
        hostname: string(node, "hostname")?,
        node_address: addr(network, "node_address")?,
        peer_address: addr(network, "peer_address")?,
        peer_port,
        key_file: string(peer, "key_file")?.map(PathBuf::from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_node_config_gives_its_facts() {
        let text = r#"
            [node]
            id = 2
            site = 3
            hostname = "meetings2.example.com"

            [network]
            shared_address = "192.0.2.10/24"
            node_address = "192.0.2.12/24"
            gateway = "192.0.2.1"
            peer_address = "192.0.2.11"

            [peer]
            key_file = "/etc/tandem/site.key"

            [replication]
            database = "/var/lib/app.sqlite"
            tables = ["a", "b"]
            max_backlog = 50
        "#;
        let s = Settings::parse(text, Path::new("node.toml"), "/tmp/state").unwrap();
        assert_eq!(s.node.id, Some(2));
        assert_eq!(s.node.site, Some(3));
        assert_eq!(s.node.node_address, Some("192.0.2.12".parse().unwrap()));
        assert_eq!(s.node.peer_address, Some("192.0.2.11".parse().unwrap()));
        assert_eq!(s.replication.tables, ["a", "b"]);
        assert_eq!(s.replication.max_backlog, 50);
        assert_eq!(s.database_path(), PathBuf::from("/var/lib/app.sqlite"));
        assert_eq!(s.key_file(), PathBuf::from("/etc/tandem/site.key"));
        assert_eq!(s.port(), 7452);
    }

    #[test]
    fn the_postgres_table_is_read_and_checked() {
        let text = "[replication]\nbackend = \"postgres\"\n\n[replication.postgres]\n\
                    data_dir = \"/srv/pg\"\nport = 5433\ndegrade_after_ms = 500\n";
        let s = Settings::parse(text, Path::new("n.toml"), "/s").unwrap();
        let pg = &s.replication.postgres;
        assert_eq!(pg.config_file(), PathBuf::from("/srv/pg/postgresql.conf"));
        assert_eq!(pg.hba_file(), PathBuf::from("/srv/pg/pg_hba.conf"));
        assert_eq!(pg.tandem_conf(), PathBuf::from("/srv/pg/tandem.conf"));
        assert_eq!(pg.standby_lost, StandbyLostPolicy::Degrade);
        assert!(pg.synchronous);
        assert_eq!(s.port(), 5433);
        for (text, needle) in [
            (
                "[replication.postgres]\nreplication_user = \"a b\"",
                "replication_user",
            ),
            ("[replication.postgres]\nport = 0", "port"),
            (
                "[replication.postgres]\nstandby_lost = \"maybe\"",
                "standby_lost",
            ),
            ("[replication.postgres]\nbogus = 1", "bogus"),
        ] {
            let err = Settings::parse(text, Path::new("n.toml"), "/s").unwrap_err();
            let msg = crate::error::chain(&err);
            assert!(msg.contains(needle), "{text}: {msg}");
        }
    }

    #[test]
    fn defaults_without_a_file() {
        let s = Settings::load(Path::new("/nonexistent/node.toml"), false, "/st").unwrap();
        assert_eq!(s.database_path(), PathBuf::from("/st/replicated.sqlite"));
        assert_eq!(s.replication.tables, sample::TABLES);
        let err = Settings::load(Path::new("/nonexistent/node.toml"), true, "/st").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/node.toml"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            ("[replication]\ntables = []", "tables"),
            ("[replication]\nmax_backlog = 0", "max_backlog"),
            ("[replication]\nbogus = 1", "bogus"),
            ("[replication]\ntables = [\"a\\\"b\"]", "double quote"),
            ("[replication]\ntables = [\"x\", \"X\"]", "declared twice"),
            ("[node]\nid = 3", "node id is 1 or 2"),
            ("[network]\nnode_address = \"nope\"", "not an IP address"),
        ];
        for (text, needle) in cases {
            let err = Settings::parse(text, Path::new("n.toml"), "/s").unwrap_err();
            let msg = crate::error::chain(&err);
            assert!(msg.contains(needle), "{text}: {msg}");
            assert!(msg.contains("n.toml"), "{msg}");
        }
    }
}
