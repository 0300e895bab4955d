//! What the agent shows about its node: one snapshot type, rendered as the status
//! page, as `/status.json` and as Prometheus metrics.

use serde::{Deserialize, Serialize};
use tandem_role::{DeploymentMode, NodeState, Role};

use crate::alarms::AlarmKind;

/// Everything the status page shows, taken at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusSnapshot {
    /// This node's persisted state (deployment, role, node, site, epoch, hold,
    /// replication).
    pub state: NodeState,
    /// The node's own hostname (the seed's eth0:0 hostname).
    pub hostname: String,
    /// The node address, e.g. `192.0.2.11/24`.
    pub node_address: String,
    /// The shared address, e.g. `192.0.2.10/24`.
    pub shared_address: String,
    /// Whether this node holds the shared address right now (read from the kernel).
    pub holds_shared_address: bool,
    /// The peer as the agent sees it.
    pub peer: PeerStatus,
    /// Database replication, as its backend reports it; `None` before the
    /// replication backend is wired in.
    pub replication: Option<ReplicationStatus>,
    /// Alarms raised and not cleared, oldest first.
    pub alarms: Vec<Alarm>,
    /// Alarms that were raised and have cleared since, newest first (at most
    /// the 50 most recent).
    #[serde(default)]
    pub alarm_history: Vec<Alarm>,
    /// Seconds since the agent started.
    pub uptime_seconds: u64,
    /// When the snapshot was taken, in milliseconds since the Unix epoch.
    pub taken_ms: u64,
    /// The site's witness as this node sees it; `None` on a site without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness: Option<WitnessStatus>,
}

/// The witness (etcd) as a node sees it, for `failover status` and the page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessStatus {
    /// Members that answered the last status round.
    pub members_up: usize,
    /// Members configured.
    pub members: usize,
    /// The node holding the site's leader key, as last seen (its number in JSON).
    pub holder: Option<tandem_role::NodeId>,
    /// Its fencing token.
    pub token: Option<u64>,
    /// Whether this node holds the key.
    pub holding: bool,
    /// While this node holds the key: milliseconds to its step-down deadline.
    pub valid_for_ms: Option<u64>,
    /// The last error from the witness.
    pub last_error: Option<String>,
}

impl WitnessStatus {
    /// The status from the lease keeper's view.
    pub fn of(view: &tandem_witness::LeaseView) -> WitnessStatus {
        WitnessStatus {
            members_up: view.members_up,
            members: view.members,
            holder: view.holder.map(|h| h.node),
            token: view.holder.map(|h| h.token.0),
            holding: view.holding.is_some(),
            valid_for_ms: view.valid_for_ms(),
            last_error: view.last_error.clone(),
        }
    }

    /// One line for people: `2 of 3 members reached; node 1 holds the leader key
    /// (token 57), 1840 ms left here`.
    pub fn line(&self) -> String {
        let holder = match (self.holder, self.token) {
            (Some(node), Some(token)) => {
                format!("node {node} holds the leader key (token {token})")
            }
            _ => "nobody holds the leader key".to_string(),
        };
        let left = match self.valid_for_ms {
            Some(ms) if self.holding => format!(", {ms} ms left before this node must step down"),
            _ => String::new(),
        };
        format!(
            "{} of {} members reached; {holder}{left}",
            self.members_up, self.members
        )
    }
}

/// The peer as the agent sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The peer's node address.
    pub address: String,
    /// Whether the peer link is up.
    pub connected: bool,
    /// The epoch of the peer's latest claim, if it claimed while connected.
    pub claim_epoch: Option<u64>,
    /// Peer clock minus local clock, in milliseconds, when measured.
    pub clock_offset_ms: Option<f64>,
    /// Whether the peer's heartbeat datagrams carry the link's liveness (false:
    /// the TCP stream alone does, for example while UDP is blocked).
    #[serde(default)]
    pub datagrams: bool,
}

/// Replication as shown on the status page: the seed's two-column table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicationStatus {
    /// The local column (Replication Type, Site, Node, State, Status).
    pub local: ReplicationSide,
    /// The remote column.
    pub remote: ReplicationSide,
    /// Changes not yet acknowledged by the standby.
    pub backlog: u64,
    /// Replication lag in milliseconds, when known.
    pub lag_ms: Option<u64>,
    /// A resynchronisation from the peer under way on this node (what runs and how
    /// far it got), if one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync: Option<String>,
    /// Why this node, which should apply the peer's changes, does not (the
    /// backend's [`tandem_replication::Status::local_detail`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_detail: Option<String>,
    /// Why the remote node is not connected, or what is wrong with the link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_detail: Option<String>,
}

/// One column of the seed's replication table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationSide {
    /// `Local` or `Intra-site`.
    pub replication_type: String,
    /// The site id.
    pub site: u32,
    /// The node id.
    pub node: u8,
    /// e.g. `Active`.
    pub state: String,
    /// e.g. `Local`, `Connected`, `Not connected`, `Diverged`.
    pub status: String,
}

/// An alarm the operator should see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alarm {
    /// When it was raised, in milliseconds since the Unix epoch.
    pub raised_ms: u64,
    /// What it says.
    pub message: String,
    /// What it is about, which says what clears it.
    #[serde(default = "fault_kind")]
    pub kind: AlarmKind,
    /// When it cleared, in milliseconds since the Unix epoch; `None` while active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared_ms: Option<u64>,
}

fn fault_kind() -> AlarmKind {
    AlarmKind::Fault
}

impl Alarm {
    /// An active alarm raised at `raised_ms`.
    pub fn new(kind: AlarmKind, message: impl Into<String>, raised_ms: u64) -> Alarm {
        Alarm {
            raised_ms,
            message: message.into(),
            kind,
            cleared_ms: None,
        }
    }
}

impl StatusSnapshot {
    /// What a node shows before its agent has made the boot decision: its
    /// first-boot state, addresses from the config, no peer, no replication.
    pub fn initial(config: &crate::NodeConfig) -> StatusSnapshot {
        StatusSnapshot {
            state: NodeState::first_boot(config.node.id, config.node.site),
            hostname: config.node.hostname.clone(),
            node_address: config.network.node_address.to_string(),
            shared_address: config.network.shared_address.to_string(),
            holds_shared_address: false,
            peer: PeerStatus {
                datagrams: false,
                address: config.network.peer_address.to_string(),
                connected: false,
                claim_epoch: None,
                clock_offset_ms: None,
            },
            replication: None,
            alarms: Vec::new(),
            alarm_history: Vec::new(),
            uptime_seconds: 0,
            taken_ms: 0,
            witness: None,
        }
    }

    /// The first line of the status page, in the seed's words.
    pub fn banner(&self) -> &'static str {
        match (self.state.deployment, self.state.role) {
            (DeploymentMode::Single, _) => "Single-server deployment.",
            (DeploymentMode::Failover, Role::Active) => "Failover deployment. Active server.",
            (DeploymentMode::Failover, Role::Standby) => "Failover deployment. Standby server.",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_role::{NodeId, SiteId};

    fn snapshot(deployment: DeploymentMode, role: Role) -> StatusSnapshot {
        let mut state = NodeState::first_boot(NodeId::One, SiteId::ONE);
        state.deployment = deployment;
        state.role = role;
        StatusSnapshot {
            state,
            hostname: "meetings1.example.com".into(),
            node_address: "192.0.2.11/24".into(),
            shared_address: "192.0.2.10/24".into(),
            holds_shared_address: role == Role::Active,
            peer: PeerStatus {
                datagrams: false,
                address: "192.0.2.12".into(),
                connected: false,
                claim_epoch: None,
                clock_offset_ms: None,
            },
            replication: None,
            alarms: Vec::new(),
            alarm_history: Vec::new(),
            uptime_seconds: 1,
            taken_ms: 0,
            witness: None,
        }
    }

    #[test]
    fn the_banner_speaks_the_seeds_words() {
        assert_eq!(
            snapshot(DeploymentMode::Failover, Role::Standby).banner(),
            "Failover deployment. Standby server."
        );
        assert_eq!(
            snapshot(DeploymentMode::Failover, Role::Active).banner(),
            "Failover deployment. Active server."
        );
        assert_eq!(
            snapshot(DeploymentMode::Single, Role::Active).banner(),
            "Single-server deployment."
        );
    }
}
