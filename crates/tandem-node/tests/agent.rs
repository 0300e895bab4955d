//! Two agents in the namespace lab: they exchange claims and epochs on the peer
//! link, serve the operator's tools on the control socket, and a split brain
//! after a partition ends with one active node once the partition heals.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tandem_lab::{Host, Lab};
use tandem_node::control::{self, Request, Response};
use tandem_node::{NodeConfig, StatusSnapshot};
use tandem_peer::SiteKey;
use tandem_role::{DeploymentMode, NodeId, NodeState, Role, SiteId, StateFile};

fn config(host: Host, auto_failover: bool) -> NodeConfig {
    config_with(host, auto_failover, "")
}

/// The node config with `extra` appended, as an operator appends a table.
fn config_with(host: Host, auto_failover: bool, extra: &str) -> NodeConfig {
    let (id, own, peer) = match host {
        Host::Node1 => (1, "192.0.2.11", "192.0.2.12"),
        _ => (2, "192.0.2.12", "192.0.2.11"),
    };
    let text = format!(
        r#"
[node]
id = {id}
hostname = "{host}.lab.test"

[network]
shared_address = "192.0.2.10/24"
node_address = "{own}/24"
gateway = "192.0.2.1"
peer_address = "{peer}"

[probe]
timeout_ms = 150
attempts = 2
interval_ms = 50

[failover]
auto_failover = {auto_failover}
heartbeat_ms = 100
missed_heartbeats = 3
announce_count = 2
announce_interval_ms = 20
{extra}"#
    );
    NodeConfig::parse(&text, Path::new("test.toml")).unwrap()
}

fn state_dir(root: &Path, host: Host) -> PathBuf {
    let dir = root.join(host.name());
    let node = if host == Host::Node1 {
        NodeId::One
    } else {
        NodeId::Two
    };
    let mut state = NodeState::first_boot(node, SiteId::ONE);
    state.deployment = DeploymentMode::Failover;
    StateFile::in_dir(&dir).save(&state).unwrap();
    dir
}

struct RunningAgent {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<tandem_lab::Result<Result<(), String>>>>,
    dir: PathBuf,
}

impl RunningAgent {
    fn start(lab: &Lab, host: Host, config: NodeConfig, dir: &Path, key: &SiteKey) -> RunningAgent {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (dir_owned, key) = (dir.to_path_buf(), key.clone());
        let thread = lab
            .spawn_in(host, move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let (status, _) = tokio::sync::watch::channel(placeholder());
                    let shutdown = async move {
                        let _ = stopped.await;
                    };
                    tandem_node::run_agent(config, &dir_owned, key, status, shutdown)
                        .await
                        .map_err(|e| e.to_string())
                })
            })
            .unwrap();
        let agent = RunningAgent {
            stop: Some(stop),
            thread: Some(thread),
            dir: dir.to_path_buf(),
        };
        wait_until("the agent's control socket", || agent.status().is_some());
        agent
    }

    fn ask(&self, request: Request) -> Option<Response> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(control::request(
            &self.dir,
            &request,
            Duration::from_secs(10),
        ))
        .ok()
    }

    fn status(&self) -> Option<StatusSnapshot> {
        match self.ask(Request::Status)? {
            Response::Status(snapshot) => Some(*snapshot),
            _ => None,
        }
    }

    fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap().unwrap().unwrap();
        }
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn placeholder() -> StatusSnapshot {
    serde_json::from_value(serde_json::json!({
        "state": NodeState::first_boot(NodeId::One, SiteId::ONE),
        "hostname": "", "node_address": "", "shared_address": "", "holds_shared_address": false,
        "peer": { "address": "", "connected": false, "claim_epoch": null, "clock_offset_ms": null },
        "replication": null, "alarms": [], "uptime_seconds": 0, "taken_ms": 0
    }))
    .unwrap()
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("gave up waiting for {what}");
}

fn holds_shared(lab: &Lab, host: Host) -> bool {
    let out = lab
        .exec(host, "ip", &["-4", "-br", "addr", "show", "dev", "eth0"])
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("192.0.2.10/24")
}

#[test]
fn agents_exchange_claims_and_serve_a_planned_failover() {
    let lab = Lab::for_test();
    let tmp = tempfile::tempdir().unwrap();
    let key = SiteKey::generate().unwrap();
    let (dir1, dir2) = (
        state_dir(tmp.path(), Host::Node1),
        state_dir(tmp.path(), Host::Node2),
    );

    let node1 = RunningAgent::start(&lab, Host::Node1, config(Host::Node1, false), &dir1, &key);
    wait_until("node1 active", || {
        node1.status().is_some_and(|s| s.state.role == Role::Active)
    });
    let node2 = RunningAgent::start(&lab, Host::Node2, config(Host::Node2, false), &dir2, &key);
    // node2 boots standby and learns node1's epoch over the peer link.
    wait_until("node2 hears node1's claim", || {
        node2.status().is_some_and(|s| {
            s.state.role == Role::Standby && s.peer.connected && s.peer.claim_epoch == Some(1)
        })
    });
    assert!(holds_shared(&lab, Host::Node1) && !holds_shared(&lab, Host::Node2));

    // The tools talk to the running agents: the seed's planned failover.
    let Some(Response::Report(down)) = node1.ask(Request::SetServer(Role::Standby)) else {
        panic!("no report")
    };
    assert_eq!(down.role, Some(Role::Standby), "{down:#?}");
    let Some(Response::Report(up)) = node2.ask(Request::SetServer(Role::Active)) else {
        panic!("no report")
    };
    assert_eq!(up.role, Some(Role::Active), "{up:#?}");
    assert_eq!(up.state.as_ref().unwrap().epoch.get(), 2);
    wait_until("node1 hears node2's claim", || {
        node1.status().is_some_and(|s| s.state.epoch.get() == 2)
    });
    assert!(!holds_shared(&lab, Host::Node1) && holds_shared(&lab, Host::Node2));

    node1.stop();
    node2.stop();
    assert!(
        !holds_shared(&lab, Host::Node2),
        "a stopped agent must not leave the shared address up"
    );
}

#[test]
fn a_split_brain_after_a_partition_ends_with_one_active_node() {
    let lab = Lab::for_test();
    let tmp = tempfile::tempdir().unwrap();
    let key = SiteKey::generate().unwrap();
    let (dir1, dir2) = (
        state_dir(tmp.path(), Host::Node1),
        state_dir(tmp.path(), Host::Node2),
    );
    let node1 = RunningAgent::start(&lab, Host::Node1, config(Host::Node1, true), &dir1, &key);
    wait_until("node1 active", || {
        node1.status().is_some_and(|s| s.state.role == Role::Active)
    });
    let node2 = RunningAgent::start(&lab, Host::Node2, config(Host::Node2, true), &dir2, &key);
    wait_until("node2 connected", || {
        node2.status().is_some_and(|s| s.peer.connected)
    });

    // The nodes lose each other but both still reach the clients: node2 cannot
    // hear node1 answer for the shared address, and with automatic failover on
    // it takes over. Two nodes hold the address.
    lab.partition_nodes(true).unwrap();
    wait_until("node2 takes over", || {
        node2.status().is_some_and(|s| s.state.role == Role::Active)
    });
    assert!(holds_shared(&lab, Host::Node1) && holds_shared(&lab, Host::Node2));

    // The partition heals. Whatever the nodes notice first, the other's MAC
    // answering for the address (a conflict: release, then re-probe, node 2
    // after a pause) or the higher claim on the reconnected peer link, they
    // settle on one active node, and both know its epoch.
    lab.partition_nodes(false).unwrap();
    wait_until("exactly one active node, known to both", || {
        let (Some(a), Some(b)) = (node1.status(), node2.status()) else {
            return false;
        };
        (a.state.role == Role::Active) != (b.state.role == Role::Active)
            && a.state.epoch == b.state.epoch
    });
    let (a, b) = (node1.status().unwrap(), node2.status().unwrap());
    assert_eq!(
        holds_shared(&lab, Host::Node1),
        a.state.role == Role::Active
    );
    assert_eq!(
        holds_shared(&lab, Host::Node2),
        b.state.role == Role::Active
    );
    // The peer-lost alarm of the partition cleared once the link was back: it
    // is in the standby's history, no longer active.
    let standby = if a.state.role == Role::Standby {
        &node1
    } else {
        &node2
    };
    wait_until("the standby's peer-lost alarm moved to its history", || {
        standby.status().is_some_and(|s| {
            !s.alarms.iter().any(|a| a.message.contains("peer lost"))
                && s.alarm_history
                    .iter()
                    .any(|a| a.message.contains("peer lost") && a.cleared_ms.is_some())
        })
    });
    node1.stop();
    node2.stop();
}

/// Samples `check` for `span` and fails at the first sample where it is false.
fn holds_for(what: &str, span: Duration, mut check: impl FnMut() -> bool) {
    let until = Instant::now() + span;
    while Instant::now() < until {
        assert!(check(), "{what} stopped holding");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn automatic_failover_takes_over_only_when_the_active_node_is_really_gone() {
    let lab = Lab::for_test();
    let tmp = tempfile::tempdir().unwrap();
    let key = SiteKey::generate().unwrap();
    let (dir1, dir2) = (
        state_dir(tmp.path(), Host::Node1),
        state_dir(tmp.path(), Host::Node2),
    );
    let node1 = RunningAgent::start(&lab, Host::Node1, config(Host::Node1, true), &dir1, &key);
    wait_until("node1 active", || {
        node1.status().is_some_and(|s| s.state.role == Role::Active)
    });
    let node2 = RunningAgent::start(&lab, Host::Node2, config(Host::Node2, true), &dir2, &key);
    wait_until("node2 standby and connected", || {
        node2
            .status()
            .is_some_and(|s| s.peer.connected && s.state.role == Role::Standby)
    });

    // The active node's cable is cut: heartbeats stop, the shared address is
    // silent and the gateway still answers node2, so node2 takes over.
    lab.cut(Host::Node1).unwrap();
    wait_until("node2 takes over", || {
        node2.status().is_some_and(|s| s.state.role == Role::Active)
    });
    assert!(holds_shared(&lab, Host::Node2));
    let taken = node2.status().unwrap();
    assert!(
        taken.alarms.iter().any(|a| a.message.contains("peer lost")),
        "{:?}",
        taken.alarms
    );

    // node1, still cut off, notices that it is the one cut off (peer lost, no
    // gateway) and releases the address before its cable returns.
    wait_until("node1 steps away while cut off", || {
        node1
            .status()
            .is_some_and(|s| s.state.role == Role::Standby && !s.holds_shared_address)
    });
    assert!(!holds_shared(&lab, Host::Node1));

    // The cable comes back: the two holders settle on one (node1 hears node2's
    // newer claim, or both see the conflict and re-elect) and agree on its epoch.
    lab.restore(Host::Node1).unwrap();
    wait_until("one active node, known to both", || {
        let (Some(a), Some(b)) = (node1.status(), node2.status()) else {
            return false;
        };
        (a.state.role == Role::Active) != (b.state.role == Role::Active)
            && a.state.epoch == b.state.epoch
            && a.peer.connected
            && b.peer.connected
    });
    let (standby, standby_host, active_host) =
        if node1.status().unwrap().state.role == Role::Standby {
            (&node1, Host::Node1, Host::Node2)
        } else {
            (&node2, Host::Node2, Host::Node1)
        };
    assert!(holds_shared(&lab, active_host) && !holds_shared(&lab, standby_host));

    // Now the standby is the one cut off: it loses the peer too, but its
    // isolation check fails (no gateway), so it never claims.
    lab.cut(standby_host).unwrap();
    wait_until("the standby loses the peer", || {
        standby.status().is_some_and(|s| !s.peer.connected)
    });
    holds_for(
        "the standby stays standby while cut off",
        Duration::from_secs(2),
        || {
            standby
                .status()
                .is_some_and(|s| s.state.role == Role::Standby && !s.holds_shared_address)
        },
    );
    lab.restore(standby_host).unwrap();
    node1.stop();
    node2.stop();
}

#[test]
fn without_automatic_failover_a_lost_active_node_only_raises_an_alarm() {
    let lab = Lab::for_test();
    let tmp = tempfile::tempdir().unwrap();
    let key = SiteKey::generate().unwrap();
    let (dir1, dir2) = (
        state_dir(tmp.path(), Host::Node1),
        state_dir(tmp.path(), Host::Node2),
    );
    let node1 = RunningAgent::start(&lab, Host::Node1, config(Host::Node1, false), &dir1, &key);
    wait_until("node1 active", || {
        node1.status().is_some_and(|s| s.state.role == Role::Active)
    });
    let node2 = RunningAgent::start(&lab, Host::Node2, config(Host::Node2, false), &dir2, &key);
    wait_until("node2 connected", || {
        node2.status().is_some_and(|s| s.peer.connected)
    });
    lab.cut(Host::Node1).unwrap();
    wait_until("node2 raises the peer-lost alarm", || {
        node2
            .status()
            .is_some_and(|s| s.alarms.iter().any(|a| a.message.contains("peer lost")))
    });
    holds_for(
        "node2 standby (the seed: failover is manual)",
        Duration::from_secs(2),
        || {
            node2
                .status()
                .is_some_and(|s| s.state.role == Role::Standby && !s.holds_shared_address)
        },
    );
    lab.restore(Host::Node1).unwrap();
    node1.stop();
    node2.stop();
}

#[test]
fn automatic_failover_replaces_an_active_node_that_dies_while_the_link_is_down() {
    let lab = Lab::for_test();
    let tmp = tempfile::tempdir().unwrap();
    let key = SiteKey::generate().unwrap();
    let (dir1, dir2) = (
        state_dir(tmp.path(), Host::Node1),
        state_dir(tmp.path(), Host::Node2),
    );
    let node1 = RunningAgent::start(&lab, Host::Node1, config(Host::Node1, true), &dir1, &key);
    wait_until("node1 active", || {
        node1.status().is_some_and(|s| s.state.role == Role::Active)
    });
    // node2 has another site key: the peer link never comes up. It boots standby
    // (node1 answers for the shared address) and stays so while node1 answers.
    let other = SiteKey::generate().unwrap();
    let node2 = RunningAgent::start(&lab, Host::Node2, config(Host::Node2, true), &dir2, &other);
    holds_for(
        "node2 standby while node1 answers",
        Duration::from_secs(1),
        || {
            node2
                .status()
                .is_some_and(|s| s.state.role == Role::Standby && !s.peer.connected)
        },
    );
    // Then node1 goes away: with no heartbeats to miss, node2's next look while
    // the peer is still lost finds the address silent and takes over.
    lab.cut(Host::Node1).unwrap();
    wait_until("node2 takes over", || {
        node2.status().is_some_and(|s| s.state.role == Role::Active)
    });
    assert!(holds_shared(&lab, Host::Node2));
    lab.restore(Host::Node1).unwrap();
    node1.stop();
    node2.stop();
}

/// The witness as a node's status shows it.
fn witness_of(agent: &RunningAgent) -> Option<tandem_node::WitnessStatus> {
    agent.status().and_then(|s| s.witness)
}

fn role_of(agent: &RunningAgent) -> Option<Role> {
    agent.status().map(|s| s.state.role)
}

/// Issue 21: with an etcd witness, a partition between the nodes changes
/// nothing (the active keeps its key, the standby cannot take it); an active
/// node cut from the witness serves on while its peer is in sight (failsafe),
/// and once the peer is out of sight too it steps down, and the standby takes
/// the key with a newer token and claims.
#[test]
fn with_a_witness_a_partition_changes_nothing_and_the_key_decides_the_takeover() {
    let lab = Lab::for_test();
    let witness = lab.start_witness(3).unwrap();
    let endpoints: Vec<String> = witness
        .endpoints()
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect();
    let table = format!("\n[witness]\nendpoints = [{}]\n", endpoints.join(", "));
    let root = tempfile::tempdir().unwrap();
    let key = SiteKey::generate().unwrap();
    let (dir1, dir2) = (
        state_dir(root.path(), Host::Node1),
        state_dir(root.path(), Host::Node2),
    );
    let node1 = RunningAgent::start(
        &lab,
        Host::Node1,
        config_with(Host::Node1, true, &table),
        &dir1,
        &key,
    );
    wait_until("node1 active with the leader key", || {
        role_of(&node1) == Some(Role::Active) && witness_of(&node1).is_some_and(|w| w.holding)
    });
    let token1 = witness_of(&node1).and_then(|w| w.token).unwrap();
    let node2 = RunningAgent::start(
        &lab,
        Host::Node2,
        config_with(Host::Node2, true, &table),
        &dir2,
        &key,
    );
    wait_until("node2 sees node1 hold the key", || {
        role_of(&node2) == Some(Role::Standby)
            && witness_of(&node2).is_some_and(|w| w.holder == Some(NodeId::One) && !w.holding)
    });
    let shown = node1.status().unwrap();
    assert_eq!(
        shown.state.token.map(|t| t.get()),
        Some(token1),
        "{shown:?}"
    );

    // A partition: node2 loses its peer, finds the address silent, and cannot
    // take the key that node1 keeps renewing.
    lab.partition_nodes(true).unwrap();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let (one, two) = (
            holds_shared(&lab, Host::Node1),
            holds_shared(&lab, Host::Node2),
        );
        assert!(
            one && !two,
            "during the partition node1 holds: {one}, node2 holds: {two}\nnode1: {:#?}\nnode2: {:#?}",
            node1.status(),
            node2.status()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(role_of(&node2), Some(Role::Standby));
    lab.partition_nodes(false).unwrap();
    wait_until("the link back", || {
        node1.status().is_some_and(|s| s.peer.connected)
    });

    // node1 loses the witness but sees its peer: failsafe.
    lab.cut_from_witness(Host::Node1, true).unwrap();
    wait_until("node1's failsafe alarm", || {
        node1
            .status()
            .is_some_and(|s| s.alarms.iter().any(|a| a.message.contains("failsafe")))
    });
    assert_eq!(role_of(&node1), Some(Role::Active));
    assert!(holds_shared(&lab, Host::Node1));
    assert!(!holds_shared(&lab, Host::Node2));

    // Then it loses its peer too: it steps down; node2 takes the key and claims.
    lab.partition_nodes(true).unwrap();
    wait_until("node2 active with a newer token", || {
        role_of(&node2) == Some(Role::Active)
            && witness_of(&node2).is_some_and(|w| w.holding && w.token.is_some_and(|t| t > token1))
    });
    assert_eq!(role_of(&node1), Some(Role::Standby));
    assert!(!holds_shared(&lab, Host::Node1));
    lab.partition_nodes(false).unwrap();
    lab.cut_from_witness(Host::Node1, false).unwrap();
    node1.stop();
    node2.stop();
    drop(witness);
}
