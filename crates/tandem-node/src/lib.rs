//! The tandem node: composes the role machine with interfaces, probes, bundles, the
//! peer link and replication into role transitions, the node agent, the status page
//! and hooks.
//!
//! So far: the node config ([`NodeConfig`], TOML), the services that follow the
//! role ([`Services`]), keepalived-style notify hooks ([`HookRunner`]), and
//! [`Node`], which carries out the role machine's decisions for real: the boot
//! decision (probe the shared address and the gateway, claim only when the first is
//! silent and the second answers), `set-server` transitions in an order that never
//! leaves two writers, and failures fed back so the node ends in a stated role.
//! The agent, the peer link and the status page land with issue 7.
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

mod config;
mod hooks;
mod node;
mod services;
mod shell;
mod status;

pub use config::{
    ConfigError, DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIR, FailoverSection, Hooks, NetworkSection,
    NodeConfig, NodeSection, ProbeSection, RunOn, ServiceSpec,
};
pub use hooks::HookRunner;
pub use node::{LOCK_FILE_NAME, Node, NodeError, Report, StepRecord};
pub use services::{ServiceError, Services};
pub use shell::ShellError;
pub use status::{Alarm, PeerStatus, ReplicationSide, ReplicationStatus, StatusSnapshot};
