//! `mp_replication switch-on` and `switch-off` on the whole site: this node's part
//! with its own backend, the peer's part by the peer's agent, asked over the peer link
//! as `copy-config-files` sends its bundle (the tool asks its local agent with
//! [`Request::PeerSwitch`], the agent sends [`PeerMessage::Switch`] and waits for
//! [`PeerMessage::Switched`]).
//!
//! The SQLite backend needs none of this: its replication service carries a switch to
//! the peer over its own link, so [`switch_site`] only runs this node's part. The
//! PostgreSQL backend controls each node's server separately, so both parts run here,
//! in the order PostgreSQL needs: the primary's part first (its slot must exist
//! before its standby streams into it), so a standby, or a node that copies its data
//! from the peer (`-S -F from-sync`), asks the peer first. The peer never copies: it
//! only switches on. Switching off runs here first, then on the peer.
//!
//! What a failure leaves: each node's part is one backend operation, which either
//! completes or reports what it left. When the peer's part comes first and the peer
//! refuses it, this node is left as it was. When the peer's agent cannot be reached
//! (no link, no answer), this node's part still runs and the peer's line says to run
//! the command there too; the exit status says the site is not switched. Without a
//! local agent the tool acts on this node alone and says so.
//!
//! [`Request::PeerSwitch`]: crate::control::Request::PeerSwitch
//! [`PeerMessage::Switch`]: crate::PeerMessage::Switch
//! [`PeerMessage::Switched`]: crate::PeerMessage::Switched

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tandem_core::NodeId;
use tandem_replication::{
    Backend, Observer, Quiet, ReplicationBackend, SwitchOnOptions, SwitchReport, chain,
};

use crate::NodeConfig;
use crate::control::{self, ControlError, Request, Response};

/// What the peer's agent is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum SwitchAction {
    /// `switch-on` (never from-sync: the peer is not the node that copies).
    On {
        /// How long its switch-on may wait (for its standby to stream), in ms.
        timeout_ms: u64,
    },
    /// `switch-off`.
    Off,
}

impl SwitchAction {
    /// The command's name, for messages.
    fn command(self) -> &'static str {
        match self {
            SwitchAction::On { .. } => "switch-on",
            SwitchAction::Off => "switch-off",
        }
    }
}

/// How one node's part ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum OutcomeKind {
    /// Done.
    Done,
    /// Tried and failed.
    Failed,
    /// The node's agent could not be reached; nothing is known of it.
    NotReached,
    /// Not asked: no agent runs on this node to carry the request.
    NotAsked,
    /// Not tried, because the part that had to come first failed.
    NotAttempted,
}

/// What one node's part did: a line of the tool's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeOutcome {
    /// The node id; 0 when the tool could not tell which node it runs on (no
    /// `[node] id` in its config and no status from its backend).
    pub node: u8,
    /// How it ended.
    pub kind: OutcomeKind,
    /// What happened, or why not, for people.
    pub message: String,
}

impl NodeOutcome {
    /// `Node 2: replication is on: ...`, `Node 2: FAILED: ...`, `Node 2: NOT REACHED: ...`.
    pub fn line(&self) -> String {
        let word = match self.kind {
            OutcomeKind::Done => "",
            OutcomeKind::Failed => "FAILED: ",
            OutcomeKind::NotReached => "NOT REACHED: ",
            OutcomeKind::NotAsked => "not asked: ",
            OutcomeKind::NotAttempted => "NOT CHANGED: ",
        };
        format!("Node {}: {word}{}", self.node, self.message)
    }
}

/// What the tool asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SiteSwitch {
    /// On (else off).
    pub on: bool,
    /// This node copies the peer's data first (`-S -F from-sync`).
    pub sync: bool,
    /// How long each part may take.
    pub timeout: Duration,
}

/// What [`switch_site`] did: a line per node, in the order the parts ran.
#[derive(Debug, Clone, Default)]
pub struct SiteSwitchReport {
    /// One outcome per node, in the order they ran.
    pub outcomes: Vec<NodeOutcome>,
    /// This node's backend report (rows saved by a SQLite from-sync), if it ran.
    pub local: Option<SwitchReport>,
}

impl SiteSwitchReport {
    /// Why the site is not switched as asked, if it is not: the first node that
    /// failed or was not reached. A peer that was not asked (no local agent) is not a
    /// failure: the tool said so.
    pub fn failure(&self) -> Option<String> {
        let first = |kinds: &[OutcomeKind]| self.outcomes.iter().find(|o| kinds.contains(&o.kind));
        first(&[OutcomeKind::Failed, OutcomeKind::NotReached])
            .or_else(|| first(&[OutcomeKind::NotAttempted]))
            .map(|o| format!("node {}: {}", o.node, o.message))
    }
}

/// How long the tool waits for its agent on top of the switch's own limit.
const AGENT_MARGIN: Duration = Duration::from_secs(30);

/// Switches replication on or off on the site (see the module doc). `me` is this
/// node's id as the config says, if it says (the backend's status says otherwise).
pub async fn switch_site(
    backend: &Backend,
    state_dir: &Path,
    me: Option<NodeId>,
    switch: SiteSwitch,
    observer: &dyn Observer,
) -> SiteSwitchReport {
    let mut report = SiteSwitchReport::default();
    if backend.switches_peer() {
        // The replication service switches the peer itself.
        let (outcome, local) = local_part(backend, outcome_node(me), switch, observer).await;
        report.outcomes.push(outcome);
        report.local = local;
        return report;
    }
    let status = backend.status().await.ok();
    let me = status.as_ref().and_then(|s| s.local.node).or(me);
    let (me, peer) = (outcome_node(me), outcome_node(me.map(NodeId::peer)));
    let local_primary = status.as_ref().and_then(|s| s.local.writable) == Some(true);
    let action = if switch.on {
        SwitchAction::On {
            timeout_ms: u64::try_from(switch.timeout.as_millis()).unwrap_or(u64::MAX),
        }
    } else {
        SwitchAction::Off
    };
    let agent = control::request(state_dir, &Request::Status, Duration::from_secs(5)).await;
    let link_up = match &agent {
        Err(ControlError::NoAgent { .. }) => {
            observer.step("no agent runs on this node: switching this node only");
            let (outcome, local) = local_part(backend, me, switch, observer).await;
            report.outcomes.push(outcome);
            report.local = local;
            report.outcomes.push(NodeOutcome {
                node: peer,
                kind: OutcomeKind::NotAsked,
                message: format!(
                    "no agent runs on this node to ask node {peer}'s (`failover agent`): run \
                     `mp_replication {}` on node {peer} too",
                    action.command()
                ),
            });
            return report;
        }
        Err(e) => Err(format!("this node's agent does not answer: {e}")),
        Ok(Response::Status(snapshot)) if snapshot.peer.connected => Ok(()),
        Ok(Response::Status(snapshot)) => Err(format!(
            "the peer link to node {peer} ({}) is down",
            snapshot.peer.address
        )),
        Ok(_) => Err("this node's agent gave an unexpected answer".to_owned()),
    };
    let peer_first = switch.on && (switch.sync || !local_primary);
    let ask_peer = async {
        match &link_up {
            Ok(()) => {
                observer.step(&format!(
                    "asking node {peer}'s agent to {} there",
                    action.command()
                ));
                ask_peer(state_dir, peer, action, switch.timeout).await
            }
            Err(why) => not_reached(peer, action, why),
        }
    };
    if peer_first {
        let theirs = ask_peer.await;
        let failed = theirs.kind == OutcomeKind::Failed;
        report.outcomes.push(theirs);
        if failed {
            report.outcomes.push(NodeOutcome {
                node: me,
                kind: OutcomeKind::NotAttempted,
                message: format!(
                    "left as it was, since node {peer}'s part, which comes first, failed"
                ),
            });
            return report;
        }
        let (mine, local) = local_part(backend, me, switch, observer).await;
        report.outcomes.push(mine);
        report.local = local;
    } else {
        let (mine, local) = local_part(backend, me, switch, observer).await;
        report.local = local;
        let failed = mine.kind != OutcomeKind::Done;
        report.outcomes.push(mine);
        if failed && switch.on {
            report.outcomes.push(NodeOutcome {
                node: peer,
                kind: OutcomeKind::NotAttempted,
                message: format!("not asked, since this node's (node {me}'s) part failed"),
            });
            return report;
        }
        report.outcomes.push(ask_peer.await);
    }
    report
}

/// A node id as [`NodeOutcome::node`] holds it: 0 when it is not known.
fn outcome_node(node: Option<NodeId>) -> u8 {
    node.map_or(0, NodeId::get)
}

fn not_reached(peer: u8, action: SwitchAction, why: &str) -> NodeOutcome {
    NodeOutcome {
        node: peer,
        kind: OutcomeKind::NotReached,
        message: format!(
            "{why}; run `mp_replication {}` on node {peer} too (check its agent with \
             `failover status` there)",
            action.command()
        ),
    }
}

/// Asks the peer's agent through this node's agent.
async fn ask_peer(
    state_dir: &Path,
    peer: u8,
    action: SwitchAction,
    timeout: Duration,
) -> NodeOutcome {
    let limit = timeout.saturating_add(AGENT_MARGIN);
    match control::request(state_dir, &Request::PeerSwitch(action), limit).await {
        Ok(Response::PeerSwitched(outcome)) => outcome,
        Ok(Response::Error(why)) => not_reached(peer, action, &why),
        Ok(_) => not_reached(peer, action, "this node's agent gave an unexpected answer"),
        Err(e) => not_reached(peer, action, &e.to_string()),
    }
}

/// This node's part.
async fn local_part(
    backend: &Backend,
    me: u8,
    switch: SiteSwitch,
    observer: &dyn Observer,
) -> (NodeOutcome, Option<SwitchReport>) {
    let result = if switch.on {
        let mut options = SwitchOnOptions::new().with_timeout(switch.timeout);
        if switch.sync {
            options = options.from_sync();
        }
        backend.switch_on(&options, observer).await
    } else {
        backend.switch_off(observer).await
    };
    match result {
        Ok(report) => (
            NodeOutcome {
                node: me,
                kind: OutcomeKind::Done,
                message: report.message.clone(),
            },
            Some(report),
        ),
        Err(e) => (
            NodeOutcome {
                node: me,
                kind: OutcomeKind::Failed,
                message: chain(&e),
            },
            None,
        ),
    }
}

/// The peer's part, as its agent carries it out for [`PeerMessage::Switch`]
/// (crate::PeerMessage::Switch): the node's own backend, no progress shown.
pub(crate) async fn peer_part(
    config: &NodeConfig,
    state_dir: &Path,
    action: SwitchAction,
) -> NodeOutcome {
    let me = config.node.id.get();
    let failed = |message: String| NodeOutcome {
        node: me,
        kind: OutcomeKind::Failed,
        message,
    };
    let backend = match crate::open_database(config, state_dir).await {
        Ok(Some(backend)) => backend,
        Ok(None) => {
            return failed(format!(
                "replication was never initialized on node {me}: run `mp_replication init` there"
            ));
        }
        Err(e) => return failed(chain(&e)),
    };
    let switch = match action {
        SwitchAction::On { timeout_ms } => SiteSwitch {
            on: true,
            sync: false,
            timeout: Duration::from_millis(timeout_ms),
        },
        SwitchAction::Off => SiteSwitch {
            on: false,
            sync: false,
            timeout: Duration::ZERO,
        },
    };
    local_part(&backend, me, switch, &Quiet).await.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(node: u8, kind: OutcomeKind) -> NodeOutcome {
        NodeOutcome {
            node,
            kind,
            message: "m".into(),
        }
    }

    #[test]
    fn a_line_per_node_says_how_it_ended() {
        assert_eq!(outcome(1, OutcomeKind::Done).line(), "Node 1: m");
        assert_eq!(outcome(2, OutcomeKind::Failed).line(), "Node 2: FAILED: m");
        assert_eq!(
            outcome(2, OutcomeKind::NotReached).line(),
            "Node 2: NOT REACHED: m"
        );
    }

    #[test]
    fn the_site_is_switched_only_when_every_asked_node_is() {
        let report = |kinds: &[OutcomeKind]| SiteSwitchReport {
            outcomes: kinds
                .iter()
                .enumerate()
                .map(|(i, k)| outcome(u8::try_from(i).unwrap_or(0) + 1, *k))
                .collect(),
            local: None,
        };
        assert_eq!(
            report(&[OutcomeKind::Done, OutcomeKind::Done]).failure(),
            None
        );
        assert_eq!(
            report(&[OutcomeKind::Done, OutcomeKind::NotAsked]).failure(),
            None
        );
        assert_eq!(
            report(&[OutcomeKind::Done, OutcomeKind::NotReached]).failure(),
            Some("node 2: m".to_owned())
        );
        assert_eq!(
            report(&[OutcomeKind::NotAttempted, OutcomeKind::Failed]).failure(),
            Some("node 2: m".to_owned())
        );
    }

    #[test]
    fn actions_keep_their_wire_form() {
        let on = SwitchAction::On { timeout_ms: 5 };
        let text = serde_json::to_string(&on).unwrap_or_default();
        assert_eq!(text, r#"{"on":{"timeout_ms":5}}"#);
        assert_eq!(
            serde_json::to_string(&SwitchAction::Off).unwrap_or_default(),
            r#""off""#
        );
    }
}
