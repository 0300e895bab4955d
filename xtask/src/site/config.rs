//! What the lab's operator appends by hand to the node config that `failover
//! set-deployment` wrote: built from the typed config of the crates that read it
//! (`tandem_node`, `tandem_replication`, `tandem_bundle`, `tandem_witness`) and
//! serialised as TOML, never written as TOML text.

use std::path::{Path, PathBuf};

use serde::Serialize;
use tandem_bundle::{BundleSpec, RootSpec};
use tandem_lab::postgres::PgServer;
use tandem_node::{FailoverSection, ProbeSection, RunOn, ServiceSpec};
use tandem_peer::PeerSection;
use tandem_replication::{BackendKind, PostgresConfig, ReplicationConfig};
use tandem_witness::WitnessConfig;

/// The tables an operator appends to a node's config. Each replaces the table of
/// the same name that `set-deployment` may have written.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct OperatorConfig {
    /// Quick probes for the lab.
    pub(crate) probe: ProbeSection,
    /// Heartbeats, announcements and the failover policy.
    pub(crate) failover: FailoverSection,
    /// The site key (`tandem-peer`'s section).
    pub(crate) peer: PeerSection,
    /// The replicated database.
    pub(crate) replication: ReplicationConfig,
    /// The config files `copy-config-files` sends.
    pub(crate) bundle: BundleSpec,
    /// The services that run with the node.
    #[serde(rename = "service", skip_serializing_if = "Vec::is_empty")]
    pub(crate) services: Vec<ServiceSpec>,
    /// The site's etcd witness, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) witness: Option<WitnessConfig>,
}

/// The `[peer]` table of the lab: the default port and the site key at `key_file`.
pub(crate) fn peer(key_file: PathBuf) -> PeerSection {
    PeerSection {
        key_file: Some(key_file),
        ..PeerSection::default()
    }
}

impl OperatorConfig {
    /// Appends the tables to the config at `path` (replacing tables of the same
    /// name), as an operator's editor would.
    pub(crate) fn append_to(&self, path: &Path) -> anyhow::Result<()> {
        let mut config: toml::Table = toml::from_str(&std::fs::read_to_string(path)?)?;
        config.extend(toml::Table::try_from(self)?);
        std::fs::write(path, toml::to_string(&config)?)?;
        Ok(())
    }
}

/// The lab's quick probes: 100 ms, two attempts, 50 ms apart.
pub(crate) fn probe() -> ProbeSection {
    ProbeSection {
        timeout_ms: 100,
        attempts: 2,
        interval_ms: 50,
        ..ProbeSection::default()
    }
}

/// Heartbeats every `heartbeat_ms` (three missed), the conflict backoff and three
/// announcements 20 ms apart.
pub(crate) fn failover(auto: bool, heartbeat_ms: u64, conflict_backoff_ms: u64) -> FailoverSection {
    FailoverSection {
        auto_failover: auto,
        heartbeat_ms,
        missed_heartbeats: 3,
        conflict_backoff_ms,
        announce_count: 3,
        announce_interval_ms: 20,
        ..FailoverSection::default()
    }
}

/// Replication of the embedded backend's sample schema.
pub(crate) fn sqlite_replication(heartbeat_ms: u64) -> ReplicationConfig {
    ReplicationConfig {
        sample_schema: true,
        heartbeat_ms,
        ..ReplicationConfig::default()
    }
}

/// Replication of the PostgreSQL server the lab made on this node: commits that
/// wait for the standby, and a primary that stops waiting for a standby gone for
/// `degrade_after_ms`.
pub(crate) fn postgres_replication(
    server: &PgServer,
    heartbeat_ms: u64,
    degrade_after_ms: u64,
) -> ReplicationConfig {
    let mut postgres = PostgresConfig::default();
    postgres.data_dir = server.data_dir.clone();
    postgres.socket_dir = server.socket_dir.clone();
    postgres.port = server.port;
    postgres.degrade_after_ms = degrade_after_ms;
    postgres.connect_timeout_ms = 1000;
    ReplicationConfig {
        backend: BackendKind::Postgres,
        heartbeat_ms,
        postgres,
        ..ReplicationConfig::default()
    }
}

/// A bundle of the named directories under `files` (`<files>/<name>`), with the
/// node's own files that are never copied.
pub(crate) fn bundle(files: &Path, roots: &[&str], node: &[&str]) -> BundleSpec {
    BundleSpec {
        roots: roots
            .iter()
            .map(|name| RootSpec::new(*name, files.join(name)))
            .collect(),
        node: node.iter().map(|n| (*n).to_owned()).collect(),
        ..BundleSpec::default()
    }
}

/// A service that runs while the node is active.
pub(crate) fn active_service(
    name: &str,
    start: String,
    stop: String,
    timeout_ms: u64,
) -> ServiceSpec {
    ServiceSpec {
        name: name.to_owned(),
        start,
        stop,
        run_on: RunOn::Active,
        timeout_ms,
    }
}

/// The `[witness]` table of the site's etcd cluster (its other settings default).
pub(crate) fn witness(endpoints: Vec<String>) -> WitnessConfig {
    WitnessConfig::new(endpoints)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operator_tables_read_back_as_the_node_and_replication_read_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node1.toml");
        std::fs::write(&path, "[node]\nid = 1\nhostname = \"meetings1.lab.test\"\n").unwrap();
        let config = OperatorConfig {
            probe: probe(),
            failover: failover(true, 200, 500),
            peer: peer(dir.path().join("authkey")),
            replication: sqlite_replication(200),
            bundle: bundle(Path::new("/srv/files"), &["prompts"], &["server.xml"]),
            services: vec![active_service("app", "true".into(), "false".into(), 5000)],
            witness: Some(witness(vec!["http://192.0.2.21:2379".into()])),
        };
        config.append_to(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(table["node"]["id"].as_integer(), Some(1), "{text}");
        let read = |key: &str| table[key].clone();
        let failover: FailoverSection = read("failover").try_into().unwrap();
        assert_eq!(failover, config.failover);
        let probe: ProbeSection = read("probe").try_into().unwrap();
        assert_eq!(probe, config.probe);
        let replication: ReplicationConfig = read("replication").try_into().unwrap();
        assert_eq!(replication, config.replication);
        let bundle: BundleSpec = read("bundle").try_into().unwrap();
        assert_eq!(bundle, config.bundle);
        let services: Vec<ServiceSpec> = read("service").try_into().unwrap();
        assert_eq!(services, config.services);
        let witness: WitnessConfig = read("witness").try_into().unwrap();
        assert_eq!(Some(witness), config.witness);
        let peer: PeerSection = read("peer").try_into().unwrap();
        assert_eq!(peer, config.peer);
    }
}
