//! The tandem node: composes the role machine with interfaces, probes, bundles, the
//! peer link and replication into role transitions, the node agent, the status page
//! and hooks.
//!
//! - [`NodeConfig`]: the node config file (TOML), validated as a whole;
//! - [`Node`]: carries out the role machine's decisions for real: the boot
//!   decision (probe the shared address and the gateway, claim only when the
//!   first is silent and the second answers), `set-server` transitions in an order
//!   that never leaves two writers, failures fed back so the node always ends in a
//!   stated role, all under a lock on the state directory;
//! - [`run_agent`]: the long-running agent: boot decision, the peer link with
//!   claims and epochs ([`PeerMessage`]), a watch on the shared address for
//!   conflicts, the [`control`] socket the operator's tools talk to, and a
//!   [`StatusSnapshot`] for the status page;
//!   The status page itself is [`serve_status`] / [`StatusServer`] (hyper, with
//!   caps on connections and a request-head timeout) on the listeners of
//!   [`bind_status_listeners`]: the node address, and the shared address while
//!   the node holds it;
//!   The agent also hosts the replication service once `mp_replication init` made
//!   the database, carries config bundles to the peer ([`control::Request::SendBundle`])
//!   and raises the database alarms;
//! - [`open_database`] and [`Node::attach_database`]: the database the role
//!   machine's promote and demote act on;
//! - [`check`]: `failover check`, the seed's prerequisites as a report;
//! - [`switch_site`]: `mp_replication switch-on` / `switch-off` on both nodes, the
//!   peer's part asked of its agent over the peer link;
//! - [`DegradeGuard`]: whether an active node whose standby is unreachable may
//!   acknowledge a write alone (the application's `degrade` policy): not when its
//!   cable came or went meanwhile, its gateway is silent or another node holds the
//!   shared address;
//! - [`Services`] and [`HookRunner`]: services that follow the role and
//!   keepalived-style notify hooks.
//!
//! This crate never parses command lines: the `failover` binary does, and calls
//! in here.
//!
//! # Example
//!
//! ```
//! use std::path::Path;
//! use tandem_node::NodeConfig;
//!
//! let config = NodeConfig::parse(r#"
//!     [node]
//!     id = 1
//!     hostname = "meetings1.example.com"
//!
//!     [network]
//!     shared_address = "192.0.2.10/24"
//!     node_address = "192.0.2.11/24"
//!     gateway = "192.0.2.1"
//!     peer_address = "192.0.2.12"
//! "#, Path::new("node.toml"))?;
//! assert_eq!(config.network.node_label(), "eth0:0");
//! # Ok::<(), tandem_node::ConfigError>(())
//! ```

mod agent;
mod alarms;
pub mod check;
mod config;
pub mod control;
mod database;
mod degrade;
mod hooks;
mod node;
mod services;
mod shell;
mod site_switch;
mod status;
mod status_http;
mod status_listen;

pub use agent::{AgentError, PeerMessage, run as run_agent};
pub use alarms::AlarmKind;
pub use config::{
    AHEAD_QUIET, ConfigError, DEFAULT_CONFIG_PATH, DEFAULT_KEY_FILE, DEFAULT_STATE_DIR,
    FailoverSection, Hooks, NetworkSection, NodeConfig, NodeSection, ProbeSection, RunOn,
    ServiceSpec, load_bundle_spec,
};
pub use database::{LoadSettings, open_database, replication_settings, replication_status};
pub use degrade::{DEFAULT_LEASE_MARGIN, DEFAULT_SETTLE, DegradeError, DegradeGuard, DegradeMark};
pub use hooks::HookRunner;
pub use node::{
    LOCK_FILE_NAME, Node, NodeError, PEER_RELEASE_FRESH, Report, StepRecord, create_private_dir,
};
pub use services::{ServiceError, Services};
pub use shell::ShellError;
pub use site_switch::{
    NodeOutcome, OutcomeKind, SiteSwitch, SiteSwitchReport, SwitchAction, switch_site,
};
pub use status::{
    Alarm, PeerStatus, ReplicationSide, ReplicationStatus, StatusSnapshot, WitnessStatus,
};
pub use status_http::{
    DEFAULT_HEAD_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
    DEFAULT_STATUS_PORT, StatusServer, serve_status,
};
pub use status_listen::{StatusListenError, bind_status_listeners, raise_open_file_limit};
