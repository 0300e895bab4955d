//! The node config file (TOML, default `/etc/tandem/node.toml`): who the node is,
//! its addresses, probe and failover timing, services and hooks, composed with the
//! sections other crates own as their own serde types (`[bundle]`: `tandem-bundle`'s
//! `BundleSpec`; `[replication]`: `tandem-replication`'s `ReplicationConfig`;
//! `[witness]`: `tandem-witness`'s `WitnessConfig`), each with its checks. This module
//! is the one place that reads the file: [`NodeConfig::load`] for the whole of it,
//! [`load_bundle_spec`] and `Settings::load` ([`crate::LoadSettings`]) for tools that
//! need only their section. Every refusal has one format, naming the file, the field
//! and (for what the parser refuses) the line:
//! `node config /etc/tandem/node.toml: replication.postgres.degrade_after_ms: invalid
//! type: string "abc", expected u64 (line 7)`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tandem_bundle::BundleSpec;
use tandem_replication::ReplicationConfig;
use tandem_role::{NodeId, SiteId};

/// Where the node config lives unless `--config` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/tandem/node.toml";
/// Where the site key lives unless `[peer] key_file` says otherwise.
pub const DEFAULT_KEY_FILE: &str = "/etc/tandem/authkey";
/// Where a node keeps its state unless `--state-dir` or `TANDEM_STATE_DIR` say otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tandem";

/// A node's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Who this node is.
    pub node: NodeSection,
    /// Its addresses.
    pub network: NetworkSection,
    /// How the shared and reference addresses are probed.
    #[serde(default)]
    pub probe: ProbeSection,
    /// Failover timing and policy.
    #[serde(default)]
    pub failover: FailoverSection,
    /// Services started and stopped with the role, in order. Not written when
    /// empty, so that an operator can append `[[service]]` blocks to the file
    /// that `set-deployment` wrote.
    #[serde(default, rename = "service", skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceSpec>,
    /// Notify hooks, like keepalived's notify scripts. Not written while all
    /// defaults, so that an operator can append a `[hooks]` table.
    #[serde(default, skip_serializing_if = "Hooks::is_default")]
    pub hooks: Hooks,
    /// The config-file bundle spec (`tandem-bundle`'s section and checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<BundleSpec>,
    /// Replication settings (`tandem-replication`'s section and checks); the
    /// defaults when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationConfig>,
    /// Peer link settings (`tandem-peer`'s section and checks); the defaults when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<tandem_peer::PeerSection>,
    /// The site's witness (`tandem-witness`): an etcd cluster whose leader key
    /// the active node holds. Without it the site behaves as a plain two-node
    /// site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness: Option<tandem_witness::WitnessConfig>,
}

/// `[node]`: who this node is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Node 1 or node 2.
    pub id: NodeId,
    /// The site (the seed's "Site: 1").
    #[serde(default = "site_one")]
    pub site: SiteId,
    /// The node's own hostname (the seed's eth0:0 hostname, e.g. meetings1.example.com).
    pub hostname: String,
    /// The shared hostname (the seed's eth0 hostname, e.g. meetings.example.com).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_hostname: Option<String>,
}

fn site_one() -> SiteId {
    SiteId::ONE
}

/// `[network]`: the shared address, the node address and the reference address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    /// The physical interface (the seed's eth0).
    #[serde(default = "default_interface")]
    pub interface: String,
    /// The shared address with its prefix, e.g. `192.0.2.10/24`.
    pub shared_address: IpNet,
    /// This node's own address with its prefix, e.g. `192.0.2.11/24`.
    pub node_address: IpNet,
    /// The label of the node address; default `<interface>:0`, as the seed's eth0:0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_label: Option<String>,
    /// The default gateway.
    pub gateway: IpAddr,
    /// The address the isolation check probes; default the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<IpAddr>,
    /// The peer's node address.
    pub peer_address: IpAddr,
}

fn default_interface() -> String {
    "eth0".to_string()
}

impl NetworkSection {
    /// The label of the node address: the configured one or `<interface>:0`.
    pub fn node_label(&self) -> String {
        self.node_label
            .clone()
            .unwrap_or_else(|| format!("{}:0", self.interface))
    }

    /// The address of the isolation check: the configured reference or the gateway.
    pub fn reference(&self) -> IpAddr {
        self.reference.unwrap_or(self.gateway)
    }
}

/// `[probe]`: how long to wait for answers. The defaults (3 probes, 100 ms each,
/// 50 ms apart: an address is silent after about 200 ms) suit a LAN, where an ARP
/// answer takes well under a millisecond, at the default heartbeat. With automatic
/// failover the probe runs while the peer is quiet, ahead of its loss, so it should
/// last less than the heartbeats the loss waits for:
/// [`ProbeSection::for_heartbeat`] gives settings that do, and `failover check`
/// says when the configured ones do not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeSection {
    /// How long to wait for an answer to one probe, in milliseconds.
    pub timeout_ms: u64,
    /// How many probes to send before calling the address silent.
    pub attempts: u32,
    /// Pause between probes, in milliseconds.
    pub interval_ms: u64,
    /// How long the one probe waits right after the peer said, on the
    /// authenticated link, that it released the shared address (a planned
    /// switchover), in milliseconds. The peer's word covers the peer; the probe
    /// only has to catch a third host, whose kernel answers within a millisecond
    /// on a LAN (20 to 30 us in the lab, where this probe of a silent address
    /// takes its timeout plus about 1 ms). A silent probe always waits the whole
    /// timeout, so it is most of a planned switchover's time: 5 ms by default
    /// (10 before), still several times a LAN's answer.
    pub released_timeout_ms: u64,
    /// How long each attempt of the isolation check (the reference address, by
    /// default the gateway) waits for an answer, in milliseconds. The check ends
    /// at the first answer, so a long wait costs nothing while the reference
    /// answers; a short one could make a slow gateway look like isolation.
    pub isolation_timeout_ms: u64,
}

impl Default for ProbeSection {
    fn default() -> Self {
        ProbeSection {
            timeout_ms: 100,
            attempts: 3,
            interval_ms: 50,
            released_timeout_ms: 5,
            isolation_timeout_ms: 100,
        }
    }
}

/// The shortest quiet of the peer, in heartbeat intervals, after which a standby
/// that fails over on its own probes ahead of the peer's loss (a heartbeat a
/// little late is not a reason to probe).
pub const AHEAD_QUIET: f64 = 1.5;

/// `[failover]`: timing and policy. The default heartbeat (200 ms, peer lost
/// after 3 missed) detects a lost peer in about 600 ms; a false alarm costs only
/// a probe, since a standby claims nothing while the shared address answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverSection {
    /// Let the standby take over on its own when the peer is lost (off, as in the seed).
    pub auto_failover: bool,
    /// Interval of peer heartbeats, in milliseconds.
    pub heartbeat_ms: u64,
    /// Heartbeats missed before the peer counts as lost.
    pub missed_heartbeats: u32,
    /// Pause of node 2 before re-probing after an address conflict, in
    /// milliseconds. A node that took over while the peer link was down keeps
    /// the address through conflicts for this long less one heartbeat, while
    /// the old active node, its cable back, steps down.
    pub conflict_backoff_ms: u64,
    /// Gratuitous ARP announcements after a claim.
    pub announce_count: u32,
    /// Pause between announcements, in milliseconds.
    pub announce_interval_ms: u64,
    /// Raise an alarm when the replicated database grows past this many megabytes
    /// (the seed's restriction on database size); off when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_size_alarm_mb: Option<u64>,
    /// Real-time (`SCHED_FIFO`) priority of the thread that sends and judges the
    /// heartbeat datagrams, 1-99; 0 (the default) leaves normal scheduling. Like
    /// keepalived's `vrrp_rt_priority`: under CPU load the heartbeats still go out
    /// on time, so a busy node is not taken for a dead one.
    pub realtime_priority: u8,
    /// Lock the agent's memory (`mlockall`), like keepalived's `vrrp_no_swap`, so
    /// that a node short of memory does not page out the heartbeat path.
    pub lock_memory: bool,
}

impl Default for FailoverSection {
    fn default() -> Self {
        FailoverSection {
            auto_failover: false,
            heartbeat_ms: 200,
            missed_heartbeats: 3,
            conflict_backoff_ms: 1000,
            announce_count: 3,
            announce_interval_ms: 100,
            database_size_alarm_mb: None,
            realtime_priority: 0,
            lock_memory: false,
        }
    }
}

impl FailoverSection {
    /// The pause between heartbeats.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    /// How long the peer may be silent before it counts as lost:
    /// `heartbeat_ms × missed_heartbeats`.
    pub fn silence_limit(&self) -> Duration {
        self.heartbeat()
            .saturating_mul(self.missed_heartbeats.max(1))
    }

    /// Whether a probe of `probe` fits this timing: with automatic failover the
    /// standby starts its probe while the peer is quiet, no earlier than
    /// [`AHEAD_QUIET`] heartbeats after the last one heard, and a probe that
    /// ends after the loss is declared delays the takeover by the difference.
    /// `Err` says by how much and what to set instead.
    pub fn fits_probe(&self, probe: &ProbeSection) -> Result<(), String> {
        let room = self
            .silence_limit()
            .saturating_sub(self.heartbeat().mul_f64(AHEAD_QUIET));
        let takes = probe.duration();
        if !self.auto_failover || takes <= room {
            return Ok(());
        }
        let fit = ProbeSection::for_heartbeat(self.heartbeat_ms);
        Err(format!(
            "a silent probe takes {} ms ((attempts - 1) x interval_ms + timeout_ms), more than the {} ms \
             between the probe ahead of a loss and the loss: a takeover waits {} ms longer than it must; \
             for heartbeat_ms = {} set [probe] timeout_ms = {}, attempts = {}, interval_ms = {}",
            takes.as_millis(),
            room.as_millis(),
            (takes - room).as_millis(),
            self.heartbeat_ms,
            fit.timeout_ms,
            fit.attempts,
            fit.interval_ms,
        ))
    }

    /// The role machine's settings.
    pub fn role_config(&self) -> tandem_role::Config {
        tandem_role::Config {
            auto_failover: self.auto_failover,
            conflict_backoff: Duration::from_millis(self.conflict_backoff_ms),
            witness: false,
            peer_loss_detection: self.silence_limit(),
            conflict_watch: Duration::from_millis(self.heartbeat_ms),
        }
    }
}

/// Where a service runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunOn {
    /// Only on the active node (the application).
    Active,
    /// On both nodes (the seed: the database, Tomcat and SIM run on a standby too).
    Always,
}

/// `[[service]]`: a service started and stopped with the role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// A name for messages.
    pub name: String,
    /// Shell command that starts it (run with `sh -c`), e.g. `systemctl start meetingplace`.
    pub start: String,
    /// Shell command that stops it.
    pub stop: String,
    /// Active only, or always.
    #[serde(default = "run_on_active")]
    pub run_on: RunOn,
    /// How long start or stop may take, in milliseconds.
    #[serde(default = "service_timeout")]
    pub timeout_ms: u64,
}

fn run_on_active() -> RunOn {
    RunOn::Active
}

fn service_timeout() -> u64 {
    30_000
}

/// `[hooks]`: shell commands run on transitions and alarms (like keepalived's
/// `notify_master`, `notify_backup`, `notify_fault`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Run after the node became active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<String>,
    /// Run after the node became standby.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby: Option<String>,
    /// Run on a fault that needs an operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
    /// Run when an alarm is raised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm: Option<String>,
    /// How long a hook may run, in milliseconds.
    #[serde(default = "hook_timeout")]
    pub timeout_ms: u64,
}

fn hook_timeout() -> u64 {
    10_000
}

impl Default for Hooks {
    /// No hooks, each allowed the default time (10 s) once configured.
    fn default() -> Self {
        Hooks {
            active: None,
            standby: None,
            fault: None,
            alarm: None,
            timeout_ms: hook_timeout(),
        }
    }
}

impl Hooks {
    /// Whether these are the defaults (nothing configured).
    pub fn is_default(&self) -> bool {
        *self == Hooks::default()
    }
}

/// Errors loading a node config. Each names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    #[error(
        "cannot read node config {}: {source}; create it with `failover set-deployment failover`",
        path.display()
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for a node config: a syntax error, a value of the
    /// wrong type, an unknown key or a missing one.
    #[error("node config {}: {field}: {problem}{}", path.display(), at_line(*line))]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where: the key as a dotted path (`replication.degrade_after_ms`), else
        /// the table, else `(top level)`.
        field: String,
        /// The parser's message.
        problem: String,
        /// The line (from 1), when the parser gave a position.
        line: Option<usize>,
    },
    /// The file cannot be written; the old one, if any, is unchanged.
    #[error("cannot write node config {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A value is well-formed but wrong.
    #[error("node config {}: {field}: {problem}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field, e.g. `network.gateway`.
        field: &'static str,
        /// What is wrong and what to do.
        problem: String,
    },
}

/// The text of ` (line N)` in a [`ConfigError::Parse`] message.
fn at_line(line: Option<usize>) -> String {
    line.map(|n| format!(" (line {n})")).unwrap_or_default()
}

/// The text of the node config file at `path`.
pub(crate) fn read_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses node config text (`path` is for messages) into `T`: [`NodeConfig`], or the
/// view of a tool that reads only its own tables.
pub(crate) fn parse_view<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let (field, line) = match e.span() {
            Some(span) => {
                let (field, line) = locate(text, span.start);
                (field, Some(line))
            }
            None => ("(top level)".to_owned(), None),
        };
        ConfigError::Parse {
            path: path.to_path_buf(),
            field,
            problem: e.message().trim_end().to_owned(),
            line,
        }
    })
}

/// A [`ConfigError::Invalid`].
pub(crate) fn invalid(path: &Path, field: &'static str, problem: String) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_path_buf(),
        field,
        problem,
    }
}

/// The field at byte `at` of a TOML text, as a dotted path (the table of the last
/// header before it, and the key on its line), and the line number (from 1). A
/// header line gives its table (a missing key is reported at its table).
fn locate(text: &str, at: usize) -> (String, usize) {
    let at = (0..=at.min(text.len()))
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line_no = text[..line_start].matches('\n').count() + 1;
    let line = text[line_start..].lines().next().unwrap_or_default();
    let (table, key) = match header(line) {
        Some(table) => (Some(table), None),
        None => (
            text[..line_start].lines().rev().find_map(header),
            line.split_once('=')
                .map(|(key, _)| key.trim().trim_matches(['"', '\'']).to_owned()),
        ),
    };
    let field = match (table, key) {
        (Some(table), Some(key)) => format!("{table}.{key}"),
        (Some(name), None) | (None, Some(name)) => name,
        (None, None) => "(top level)".to_owned(),
    };
    (field, line_no)
}

/// The table a header line (`[a.b]` or `[[a.b]]`) opens.
fn header(line: &str) -> Option<String> {
    let inner = line.trim().strip_prefix('[')?;
    let inner = inner.strip_prefix('[').unwrap_or(inner);
    let name = inner.split(']').next()?.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

/// The `[bundle]` table of the node config file at `path`, validated by its owner
/// (`tandem-bundle`); an empty spec when the file has none. The rest of the file is
/// not checked: `failover copy-config-files` and `restore-config-files` work on a node
/// whose config has only this table.
pub fn load_bundle_spec(path: &Path) -> Result<BundleSpec, ConfigError> {
    /// The part of the node config the bundle tools read.
    #[derive(Deserialize)]
    struct BundleView {
        #[serde(default)]
        bundle: BundleSpec,
    }
    let view: BundleView = parse_view(&read_text(path)?, path)?;
    view.bundle
        .validate()
        .map_err(|e| invalid(path, "bundle", e.to_string()))?;
    Ok(view.bundle)
}

impl NodeConfig {
    /// Reads and validates a node config file.
    pub fn load(path: impl AsRef<Path>) -> Result<NodeConfig, ConfigError> {
        let path = path.as_ref();
        NodeConfig::parse(&read_text(path)?, path)
    }

    /// Parses and validates node config text; `path` is named in errors.
    pub fn parse(text: &str, path: &Path) -> Result<NodeConfig, ConfigError> {
        let config: NodeConfig = parse_view(text, path)?;
        config
            .validate()
            .map_err(|(field, problem)| invalid(path, field, problem))?;
        Ok(config)
    }

    /// Writes the config atomically (mode 0644), after validating it.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        self.validate()
            .map_err(|(field, problem)| invalid(path, field, problem))?;
        tandem_core::write_atomically(path, self.to_toml().as_bytes(), 0o644).map_err(|source| {
            ConfigError::Write {
                path: path.to_path_buf(),
                source,
            }
        })
    }

    /// The site key file: `[peer] key_file`, else [`DEFAULT_KEY_FILE`] (what
    /// `mp_replication` reads too).
    pub fn key_file(&self) -> PathBuf {
        self.peer
            .as_ref()
            .and_then(|p| p.key_file.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_KEY_FILE))
    }

    /// The config as TOML text.
    pub fn to_toml(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// The role machine's settings: the failover policy, and whether the site
    /// has a witness.
    pub fn role_config(&self) -> tandem_role::Config {
        tandem_role::Config {
            witness: self.witness.is_some(),
            ..self.failover.role_config()
        }
    }

    /// Checks the relations between fields, and each section with its owner's checks.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(witness) = &self.witness {
            witness.validate().map_err(|e| ("witness", e.to_string()))?;
        }
        if let Some(peer) = &self.peer {
            peer.validate().map_err(|e| (e.field, e.problem))?;
        }
        if let Some(bundle) = &self.bundle {
            bundle.validate().map_err(|e| ("bundle", e.to_string()))?;
        }
        if let Some(replication) = &self.replication {
            replication.validate().map_err(|e| (e.field, e.problem))?;
        }
        if u16::try_from(self.node.site.get()).is_err() {
            return Err((
                "node.site",
                format!(
                    "{} is above 65535, the highest site replication can carry",
                    self.node.site.get()
                ),
            ));
        }
        check_hostname(&self.node.hostname).map_err(|p| ("node.hostname", p))?;
        if let Some(shared) = &self.node.shared_hostname {
            check_hostname(shared).map_err(|p| ("node.shared_hostname", p))?;
        }
        let net = &self.network;
        if net.interface.is_empty()
            || net.interface.len() > 15
            || net.interface.contains([':', '/', ' '])
        {
            return Err((
                "network.interface",
                format!(
                    "`{}` is not an interface name (1-15 characters, no ':' '/' or space)",
                    net.interface
                ),
            ));
        }
        if net.shared_address.addr() == net.node_address.addr() {
            return Err((
                "network.node_address",
                format!(
                    "{} is also the shared address; each node needs its own address",
                    net.node_address.addr()
                ),
            ));
        }
        if net.peer_address == net.node_address.addr()
            || net.peer_address == net.shared_address.addr()
        {
            return Err((
                "network.peer_address",
                format!("{} must be the other node's own address", net.peer_address),
            ));
        }
        if !net.node_address.contains(&net.gateway) {
            return Err((
                "network.gateway",
                format!(
                    "{} is not in the node address's subnet {}",
                    net.gateway,
                    net.node_address.trunc()
                ),
            ));
        }
        if net.shared_address.trunc() != net.node_address.trunc() {
            return Err((
                "network.shared_address",
                format!(
                    "{} and the node address {} must be in one subnet",
                    net.shared_address, net.node_address
                ),
            ));
        }
        if self.probe.attempts == 0
            || self.probe.timeout_ms == 0
            || self.probe.released_timeout_ms == 0
            || self.probe.isolation_timeout_ms == 0
        {
            return Err((
                "probe",
                "attempts, timeout_ms, released_timeout_ms and isolation_timeout_ms must be at least 1"
                    .to_string(),
            ));
        }
        if self.failover.heartbeat_ms == 0 || self.failover.missed_heartbeats == 0 {
            return Err((
                "failover",
                "heartbeat_ms and missed_heartbeats must be at least 1".to_string(),
            ));
        }
        if self.failover.realtime_priority > 99 {
            return Err((
                "failover.realtime_priority",
                format!(
                    "{} is not a SCHED_FIFO priority: use 1-99 (keepalived's vrrp_rt_priority \
                     range), or 0 for normal scheduling",
                    self.failover.realtime_priority
                ),
            ));
        }
        if self.hooks.timeout_ms == 0 {
            return Err((
                "hooks.timeout_ms",
                "must be at least 1 (a hook is killed when it runs longer); the default is 10000"
                    .to_string(),
            ));
        }
        if let Some(service) = self.services.iter().find(|s| s.timeout_ms == 0) {
            return Err((
                "service.timeout_ms",
                format!(
                    "`{}`: must be at least 1 (start and stop are killed when they run longer); \
                     the default is 30000",
                    service.name
                ),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for service in &self.services {
            if service.name.trim().is_empty() || !names.insert(service.name.as_str()) {
                return Err((
                    "service.name",
                    format!(
                        "`{}`: service names must be unique and not empty",
                        service.name
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn check_hostname(name: &str) -> Result<(), String> {
    tandem_netif::validate_hostname(name).map_err(|e| e.to_string())
}

impl ProbeSection {
    /// Probe settings that fit a heartbeat of `heartbeat_ms` with 3 missed
    /// heartbeats: the defaults from 200 ms up; below, two probes of half a
    /// heartbeat each, half a heartbeat apart (at least 5 ms each), so that the
    /// probe ahead of a loss (about one heartbeat) ends before the loss is
    /// declared. At 20 ms: `timeout_ms = 10, attempts = 2, interval_ms = 10`.
    pub fn for_heartbeat(heartbeat_ms: u64) -> ProbeSection {
        if heartbeat_ms >= 200 {
            return ProbeSection::default();
        }
        let half = (heartbeat_ms / 2).max(5);
        ProbeSection {
            timeout_ms: half,
            attempts: 2,
            interval_ms: half,
            ..ProbeSection::default()
        }
    }

    /// How long a probe that finds the address silent takes:
    /// `(attempts - 1) × interval + timeout`.
    pub fn duration(&self) -> Duration {
        self.interval()
            .saturating_mul(self.attempts.saturating_sub(1))
            .saturating_add(self.timeout())
    }

    /// The probe timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The timeout of the one probe right after the peer released the address.
    pub fn released_timeout(&self) -> Duration {
        Duration::from_millis(self.released_timeout_ms)
    }

    /// The timeout of each attempt of the isolation check.
    pub fn isolation_timeout(&self) -> Duration {
        Duration::from_millis(self.isolation_timeout_ms)
    }

    /// The pause between probes.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const LAB_NODE1: &str = r#"
[node]
id = 1
hostname = "node1.lab.test"
shared_hostname = "meetings.lab.test"

[network]
shared_address = "192.0.2.10/24"
node_address = "192.0.2.11/24"
gateway = "192.0.2.1"
peer_address = "192.0.2.12"

[[service]]
name = "app"
start = "true"
stop = "true"
"#;

    fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        NodeConfig::parse(text, Path::new("/etc/tandem/node.toml"))
    }

    #[test]
    fn the_lab_config_parses_with_defaults() {
        let c = parse(LAB_NODE1).expect("valid");
        assert_eq!(c.node.id, NodeId::One);
        assert_eq!(c.node.site, SiteId::ONE);
        assert_eq!(c.network.interface, "eth0");
        assert_eq!(c.network.node_label(), "eth0:0");
        assert_eq!(c.network.reference(), c.network.gateway);
        assert!(!c.failover.auto_failover);
        assert_eq!(c.services[0].run_on, RunOn::Active);
        // What is written reads back the same.
        assert_eq!(parse(&c.to_toml()).expect("round trip"), c);
    }

    #[test]
    fn save_writes_what_load_reads_and_refuses_an_invalid_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("etc/node.toml");
        let config = parse(LAB_NODE1).expect("valid");
        config.save(&path).expect("save");
        assert_eq!(NodeConfig::load(&path).expect("load"), config);
        let mut bad = config.clone();
        bad.network.gateway = "198.51.100.1".parse().expect("ip");
        let err = bad.save(&path).expect_err("invalid").to_string();
        assert!(err.contains("network.gateway"), "{err}");
        assert_eq!(NodeConfig::load(&path).expect("unchanged"), config);
    }

    #[test]
    fn bad_values_name_the_file_and_field() {
        for (from, to, field) in [
            ("node1.lab.test", "node_1.lab.test", "node.hostname"),
            (
                "gateway = \"192.0.2.1\"",
                "gateway = \"198.51.100.1\"",
                "network.gateway",
            ),
            (
                "node_address = \"192.0.2.11/24\"",
                "node_address = \"192.0.2.10/24\"",
                "network.node_address",
            ),
            (
                "peer_address = \"192.0.2.12\"",
                "peer_address = \"192.0.2.11\"",
                "network.peer_address",
            ),
        ] {
            let text = LAB_NODE1.replace(from, to);
            let err = parse(&text).expect_err(to).to_string();
            assert!(
                err.contains("/etc/tandem/node.toml") && err.contains(field),
                "{to}: {err}"
            );
        }
    }

    /// The operator's path: the file a tool wrote, with `[[service]]` and
    /// `[hooks]` blocks appended by hand, as the docs say.
    #[test]
    fn blocks_appended_to_a_written_config_parse_with_their_defaults() {
        let mut written = parse(LAB_NODE1).expect("valid");
        written.services.clear();
        let text = written.to_toml();
        assert!(!text.contains("service"), "{text}");
        assert!(!text.contains("[hooks]"), "{text}");
        let appended = format!(
            "{text}\n[[service]]\nname = \"db\"\nstart = \"true\"\nstop = \"true\"\nrun_on = \"always\"\n\n\
             [hooks]\nactive = \"logger active\"\n"
        );
        let c = parse(&appended).expect("appended blocks parse");
        assert_eq!(c.services.len(), 1);
        assert_eq!(c.services[0].run_on, RunOn::Always);
        assert_eq!(c.hooks.timeout_ms, 10_000);
        assert_eq!(Hooks::default().timeout_ms, 10_000);
        // Written again, the hooks keep their default time limit.
        let again = parse(&c.to_toml()).expect("round trip");
        assert_eq!(again, c);
        let err = parse(&format!("{appended}timeout_ms = 0\n"))
            .expect_err("zero")
            .to_string();
        assert!(err.contains("hooks.timeout_ms"), "{err}");
    }

    /// `[replication]` and `[bundle]` are their crates' types, checked by their
    /// owners when the node config is parsed; refusals name the file, the field and,
    /// for the parser's, the line.
    #[test]
    fn sections_are_checked_by_their_owners() {
        let c = parse(&format!("{LAB_NODE1}\n[replication]\nmax_backlog = 50\n")).expect("valid");
        let replication = c.replication.clone().expect("[replication]");
        assert_eq!(replication.max_backlog, 50);
        assert_eq!(parse(&c.to_toml()).expect("round trip"), c);
        for (extra, want) in [
            (
                "[replication]\nmax_backlog = 0\n",
                "node config /etc/tandem/node.toml: replication.max_backlog: must be at least 1",
            ),
            (
                "[replication.postgres]\ndegrade_after_ms = \"abc\"\n",
                "node config /etc/tandem/node.toml: replication.postgres.degrade_after_ms: ",
            ),
            (
                "[bundle]\nrots = []\n",
                "node config /etc/tandem/node.toml: bundle.rots: unknown field `rots`",
            ),
            (
                "[[bundle.roots]]\nname = \"a\"\npath = \"relative\"\n",
                "node config /etc/tandem/node.toml: bundle: ",
            ),
        ] {
            let err = parse(&format!("{LAB_NODE1}\n{extra}"))
                .expect_err(extra)
                .to_string();
            assert!(err.starts_with(want), "{extra}: {err}");
        }
        let err = parse(&format!("{LAB_NODE1}\n[replication]\nwindow = \"x\"\n"))
            .expect_err("type")
            .to_string();
        let line = LAB_NODE1.lines().count() + 3;
        assert!(err.ends_with(&format!("(line {line})")), "{err}");
    }

    #[test]
    fn the_bundle_tools_read_only_their_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "[bundle]\nnode = [\"a/b\"]\n").expect("write");
        assert_eq!(load_bundle_spec(&path).expect("spec").node, ["a/b"]);
        std::fs::write(&path, "[bundle]\ncompression_level = 12\n").expect("write");
        let err = load_bundle_spec(&path).expect_err("level").to_string();
        assert!(
            err.contains("node.toml: bundle: ") && err.contains("0-9"),
            "{err}"
        );
        let missing = dir.path().join("none.toml");
        let err = load_bundle_spec(&missing).expect_err("missing").to_string();
        assert!(err.contains("none.toml"), "{err}");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = parse(&LAB_NODE1.replace("id = 1", "id = 3"))
            .expect_err("node 3")
            .to_string();
        assert!(err.contains("node 1 and node 2"), "{err}");
        let err = parse(&LAB_NODE1.replace("[network]", "[network"))
            .expect_err("syntax")
            .to_string();
        assert!(err.contains("line"), "{err}");
        let err = parse(&LAB_NODE1.replace("gateway", "gatewy"))
            .expect_err("unknown")
            .to_string();
        assert!(err.contains("gatewy"), "{err}");
    }

    #[test]
    fn the_default_probe_fits_the_default_heartbeat_and_a_short_one_is_told() {
        let auto = FailoverSection {
            auto_failover: true,
            ..FailoverSection::default()
        };
        assert_eq!(auto.fits_probe(&ProbeSection::default()), Ok(()));
        let fast = FailoverSection {
            heartbeat_ms: 20,
            ..auto.clone()
        };
        let err = fast
            .fits_probe(&ProbeSection::default())
            .expect_err("200 ms of probing do not fit 60 ms");
        assert!(
            err.contains("timeout_ms = 10, attempts = 2, interval_ms = 10"),
            "{err}"
        );
        // Without automatic failover nobody probes ahead: nothing to fit.
        let manual = FailoverSection {
            auto_failover: false,
            ..fast
        };
        assert_eq!(manual.fits_probe(&ProbeSection::default()), Ok(()));
    }

    proptest::proptest! {
        /// What `for_heartbeat` advises fits that heartbeat, from 10 ms up, and
        /// is a config the agent accepts.
        #[test]
        fn the_advised_probe_fits_its_heartbeat(heartbeat_ms in 10u64..=60_000) {
            let failover = FailoverSection {
                auto_failover: true,
                heartbeat_ms,
                ..FailoverSection::default()
            };
            let probe = ProbeSection::for_heartbeat(heartbeat_ms);
            proptest::prop_assert_eq!(failover.fits_probe(&probe), Ok(()));
            let mut config = parse(LAB_NODE1).expect("lab config");
            config.failover = failover;
            config.probe = probe;
            proptest::prop_assert!(config.validate().is_ok());
        }
    }
}
