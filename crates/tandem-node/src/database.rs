//! The node's replicated database as the role transitions and the agent see it:
//! replication settings built from the node config (the agent's, or a tool's read of
//! the file through [`LoadSettings`]), the backend opened for promote and demote, and
//! its status in the status page's form.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tandem_peer::PeerSection;
use tandem_replication::{Backend, NodeFacts, ReplicationConfig, Settings, Status};
use tandem_role::NodeId;

use crate::NodeConfig;
use crate::config::{ConfigError, invalid, parse_view};
use crate::status::{ReplicationSide, ReplicationStatus};

/// The replication settings of a node: its `[replication]` table (defaults when it
/// has none) and the facts of its other tables, with the node's state directory.
pub fn replication_settings(
    config: &NodeConfig,
    state_dir: &Path,
) -> Result<Settings, tandem_replication::Error> {
    let replication = config.replication.clone().unwrap_or_default();
    replication.validate()?;
    let peer = config.peer.as_ref();
    let mut settings = Settings::new(state_dir, replication);
    settings.node = NodeFacts {
        id: Some(config.node.id),
        // `NodeConfig::validate` refuses a site above 65535.
        site: u16::try_from(config.node.site.get()).ok(),
        hostname: Some(config.node.hostname.clone()),
        node_address: Some(config.network.node_address.addr()),
        peer_address: Some(config.network.peer_address),
        peer_port: peer.map(|p| p.port),
        key_file: peer.and_then(|p| p.key_file.clone()),
    };
    Ok(settings)
}

/// Replication [`Settings`] from the node config file, for the tools that run on a
/// machine whose config may have only some tables (`mp_replication`, the lab's
/// harnesses): `[replication]` through its owner's type and checks, and the facts of
/// `[node]`, `[network]` and `[peer]`, each optional, with the same types as
/// [`NodeConfig`] where they agree. Errors are [`ConfigError`]s, as the agent's.
pub trait LoadSettings: Sized {
    /// Loads the node config file at `path`. When `required` is false a missing file
    /// means defaults (the default path on a machine that has none); otherwise it is
    /// an error.
    fn load(
        path: &Path,
        required: bool,
        state_dir: impl Into<PathBuf>,
    ) -> Result<Self, ConfigError>;

    /// Parses the text of a node config file (`path` is for messages).
    fn parse(text: &str, path: &Path, state_dir: impl Into<PathBuf>) -> Result<Self, ConfigError>;
}

impl LoadSettings for Settings {
    fn load(
        path: &Path,
        required: bool,
        state_dir: impl Into<PathBuf>,
    ) -> Result<Settings, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Settings::parse(&text, path, state_dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok(Settings::new(state_dir, ReplicationConfig::default()))
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    fn parse(
        text: &str,
        path: &Path,
        state_dir: impl Into<PathBuf>,
    ) -> Result<Settings, ConfigError> {
        let view: SettingsView = parse_view(text, path)?;
        view.replication
            .validate()
            .map_err(|e| invalid(path, e.field, e.problem))?;
        if let Some(peer) = &view.peer {
            peer.validate()
                .map_err(|e| invalid(path, e.field, e.problem))?;
        }
        let node = view.facts(path)?;
        let mut settings = Settings::new(state_dir, view.replication);
        settings.config_path = Some(path.to_path_buf());
        settings.node = node;
        Ok(settings)
    }
}

/// What [`LoadSettings`] reads of the node config file; other tables and keys are
/// left to their readers.
#[derive(Deserialize)]
struct SettingsView {
    #[serde(default)]
    node: NodeView,
    #[serde(default)]
    network: NetworkView,
    peer: Option<PeerSection>,
    #[serde(default)]
    replication: ReplicationConfig,
}

/// `[node]` as replication reads it.
#[derive(Default, Deserialize)]
struct NodeView {
    id: Option<NodeId>,
    site: Option<u16>,
    hostname: Option<String>,
}

/// `[network]` as replication reads it: addresses with or without a prefix length.
#[derive(Default, Deserialize)]
struct NetworkView {
    node_address: Option<String>,
    peer_address: Option<String>,
}

impl SettingsView {
    fn facts(&self, path: &Path) -> Result<NodeFacts, ConfigError> {
        let address = |field: &'static str, text: &Option<String>| match text {
            None => Ok(None),
            Some(text) => text
                .split('/')
                .next()
                .unwrap_or_default()
                .parse::<IpAddr>()
                .map(Some)
                .map_err(|_| invalid(path, field, format!("{text:?} is not an IP address"))),
        };
        Ok(NodeFacts {
            id: self.node.id,
            site: self.node.site,
            hostname: self.node.hostname.clone(),
            node_address: address("network.node_address", &self.network.node_address)?,
            peer_address: address("network.peer_address", &self.network.peer_address)?,
            peer_port: self.peer.as_ref().map(|p| p.port),
            key_file: self.peer.as_ref().and_then(|p| p.key_file.clone()),
        })
    }
}

/// Opens the node's database for the role transitions, if replication was
/// initialized on it (`mp_replication init`); `None` when it was not, so a node
/// without a database still switches roles.
pub async fn open_database(
    config: &NodeConfig,
    state_dir: &Path,
) -> Result<Option<Backend>, tandem_replication::Error> {
    let settings = replication_settings(config, state_dir)?;
    match Backend::open_existing(&settings).await {
        Ok(backend) => Ok(Some(backend)),
        Err(tandem_replication::Error::NotInitialized) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The replication table of the status page from the backend's status.
pub fn replication_status(status: &Status) -> ReplicationStatus {
    let side = |s: &tandem_replication::ServerStatus| ReplicationSide {
        replication_type: s.replication_type.to_string(),
        site: s.site.map_or(0, u32::from),
        node: s.node.map_or(0, NodeId::get),
        state: s.state.to_string(),
        status: s.status.to_string(),
    };
    ReplicationStatus {
        local: side(&status.local),
        remote: side(&status.remote),
        backlog: status.backlog.unwrap_or(0),
        lag_ms: status.lag_ms,
        resync: status
            .resync
            .as_ref()
            .map(|r| r.render().trim_end().to_owned()),
        local_detail: status.local_detail.clone(),
        remote_detail: status.remote_detail.clone(),
    }
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
        assert_eq!(s.node.id, Some(NodeId::Two));
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
        assert_eq!(
            pg.standby_lost,
            tandem_replication::StandbyLostPolicy::Degrade
        );
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
            let msg = err.to_string();
            assert!(msg.contains(needle), "{text}: {msg}");
        }
    }

    #[test]
    fn defaults_without_a_file() {
        let s = Settings::load(Path::new("/nonexistent/node.toml"), false, "/st").unwrap();
        assert_eq!(s.database_path(), PathBuf::from("/st/replicated.sqlite"));
        assert_eq!(s.replication.tables, tandem_replication::DEFAULT_TABLES);
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
            ("[node]\nid = 3", "node 1 and node 2"),
            ("[network]\nnode_address = \"nope\"", "not an IP address"),
        ];
        for (text, needle) in cases {
            let err = Settings::parse(text, Path::new("n.toml"), "/s").unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(needle), "{text}: {msg}");
            assert!(msg.contains("n.toml"), "{msg}");
        }
    }

    /// One format for every refusal: the file, the field as a dotted path, and for
    /// what the parser refuses the line.
    #[test]
    fn refusals_name_the_file_the_field_and_the_line() {
        let path = Path::new("/etc/tandem/node.toml");
        let text =
            "[node]\nid = 1\n\n[replication.postgres]\nport = 5433\ndegrade_after_ms = \"abc\"\n";
        let err = Settings::parse(text, path, "/s").unwrap_err().to_string();
        assert!(
            err.starts_with(
                "node config /etc/tandem/node.toml: replication.postgres.degrade_after_ms: "
            ) && err.ends_with("(line 6)"),
            "{err}"
        );
        let err = Settings::parse("[replication]\nmax_backlog = 0\n", path, "/s")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "node config /etc/tandem/node.toml: replication.max_backlog: must be at least 1"
        );
    }
}
