//! A node's transitions in the namespace lab: the seed's boot decision, a planned
//! failover, the isolation check, a failing step, the lock and a corrupt state.
//! Needs root; without it the lab's message names what is missing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem_lab::{Host, Lab, SHARED_ADDR};
use tandem_node::{Node, NodeConfig, NodeError, Report};
use tandem_probe::{Collect, ProbeConfig, Prober};
use tandem_role::{DeploymentMode, NodeId, NodeState, Role, SiteId, StateFile};

fn config(host: Host, extra: &str) -> NodeConfig {
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
announce_count = 2
announce_interval_ms = 20
{extra}
"#
    );
    NodeConfig::parse(&text, Path::new("test.toml")).unwrap()
}

/// A node's state dir, prepared as after `set-deployment failover` and, unless
/// `held`, `set-server active` permission (no standby hold).
fn state_dir(root: &Path, host: Host, held: bool) -> PathBuf {
    let dir = root.join(host.name());
    let node = if host == Host::Node1 {
        NodeId::One
    } else {
        NodeId::Two
    };
    let mut state = NodeState::first_boot(node, SiteId::ONE);
    state.deployment = DeploymentMode::Failover;
    state.standby_hold = held;
    StateFile::in_dir(&dir).save(&state).unwrap();
    dir
}

/// Runs `f` with the node opened inside `host`'s namespace.
fn with_node<R: Send>(
    lab: &Lab,
    host: Host,
    config: NodeConfig,
    dir: &Path,
    f: impl AsyncFnOnce(&mut Node) -> R + Send,
) -> R {
    lab.block_on_in(host, || async {
        let mut node = Node::open(config, dir).unwrap();
        f(&mut node).await
    })
    .unwrap()
}

/// Which hardware addresses answer for the shared address, seen from the client.
fn who_answers(lab: &Lab) -> Vec<[u8; 6]> {
    lab.block_on_in(Host::Client, || async {
        let prober = Prober::new(ProbeConfig {
            timeout: Duration::from_millis(200),
            interval: Duration::from_millis(50),
            retries: 1,
            collect: Collect::All,
        })
        .unwrap();
        let outcome = prober
            .arp("eth0", Ipv4Addr::from(SHARED_ADDR.octets()))
            .await
            .unwrap();
        outcome.macs().into_iter().map(|m| m.0).collect()
    })
    .unwrap()
}

fn holds_shared(lab: &Lab, host: Host) -> bool {
    let out = lab
        .exec(host, "ip", &["-4", "-br", "addr", "show", "dev", "eth0"])
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("192.0.2.10/24")
}

fn assert_ok(report: &Report) {
    assert!(report.succeeded(), "{report:#?}");
}

#[test]
fn boot_claims_a_silent_address_and_the_second_node_stays_standby() {
    let lab = Lab::for_test();
    let tmp = tempfile::tempdir().unwrap();
    let (dir1, dir2) = (
        state_dir(tmp.path(), Host::Node1, false),
        state_dir(tmp.path(), Host::Node2, false),
    );

    let report = with_node(
        &lab,
        Host::Node1,
        config(Host::Node1, ""),
        &dir1,
        async |n| n.boot().await,
    );
    assert_ok(&report);
    assert_eq!(report.role, Some(Role::Active));
    assert_eq!(report.state.as_ref().unwrap().epoch.get(), 1);
    assert!(holds_shared(&lab, Host::Node1));
    assert_eq!(who_answers(&lab), vec![lab.mac(Host::Node1).unwrap()]);

    let report = with_node(
        &lab,
        Host::Node2,
        config(Host::Node2, ""),
        &dir2,
        async |n| n.boot().await,
    );
    assert_eq!(report.role, Some(Role::Standby), "{report:#?}");
    assert!(!holds_shared(&lab, Host::Node2));
    // The persisted state agrees with what the node did.
    assert_eq!(
        StateFile::in_dir(&dir1).load().unwrap().unwrap().role,
        Role::Active
    );
    assert_eq!(
        StateFile::in_dir(&dir2).load().unwrap().unwrap().role,
        Role::Standby
    );
}

#[test]
fn planned_failover_moves_the_shared_address_and_the_clients() {
    let lab = Lab::for_test();
    let tmp = tempfile::tempdir().unwrap();
    let (dir1, dir2) = (
        state_dir(tmp.path(), Host::Node1, false),
        state_dir(tmp.path(), Host::Node2, true),
    );
    let boot = with_node(
        &lab,
        Host::Node1,
        config(Host::Node1, ""),
        &dir1,
        async |n| n.boot().await,
    );
    assert_ok(&boot);
    // node1's claim reaches node2 as the agent's peer link will carry it.
    let epoch = boot.state.as_ref().unwrap().epoch;
    assert!(
        boot.steps
            .iter()
            .any(|s| s.action == format!("send-claim epoch={epoch}")),
        "{boot:#?}"
    );
    let heard = with_node(
        &lab,
        Host::Node2,
        config(Host::Node2, ""),
        &dir2,
        async |n| {
            n.handle(tandem_role::Event::PeerClaim {
                node: NodeId::One,
                epoch,
                token: None,
            })
            .await
        },
    );
    assert_eq!(heard.state.unwrap().epoch, epoch);

    // While node1 is active, node2's set-server active is refused.
    let refused = with_node(
        &lab,
        Host::Node2,
        config(Host::Node2, ""),
        &dir2,
        async |n| n.set_server(Role::Active).await,
    );
    assert!(refused.refused.is_some(), "{refused:#?}");
    assert!(
        refused
            .refused
            .unwrap()
            .to_string()
            .contains("make that node standby first")
    );

    // The seed's "Performing Application Server Failover".
    let down = with_node(
        &lab,
        Host::Node1,
        config(Host::Node1, ""),
        &dir1,
        async |n| n.set_server(Role::Standby).await,
    );
    assert_ok(&down);
    assert_eq!(down.role, Some(Role::Standby));
    let up = with_node(
        &lab,
        Host::Node2,
        config(Host::Node2, ""),
        &dir2,
        async |n| n.set_server(Role::Active).await,
    );
    assert_ok(&up);
    assert_eq!(up.role, Some(Role::Active));
    assert_eq!(
        up.state.unwrap().epoch.get(),
        2,
        "the new claim raises the epoch"
    );
    assert!(!holds_shared(&lab, Host::Node1) && holds_shared(&lab, Host::Node2));
    assert_eq!(who_answers(&lab), vec![lab.mac(Host::Node2).unwrap()]);
}

#[test]
fn a_node_cut_off_from_its_gateway_never_claims() {
    let lab = Lab::for_test();
    let tmp = tempfile::tempdir().unwrap();
    let dir2 = state_dir(tmp.path(), Host::Node2, false);
    lab.cut(Host::Node2).unwrap();
    let report = with_node(
        &lab,
        Host::Node2,
        config(Host::Node2, ""),
        &dir2,
        async |n| n.boot().await,
    );
    assert_eq!(report.role, Some(Role::Standby));
    assert!(
        report.faults.iter().any(|f| f.contains("gateway")),
        "{report:#?}"
    );
    let report = with_node(
        &lab,
        Host::Node2,
        config(Host::Node2, ""),
        &dir2,
        async |n| n.set_server(Role::Active).await,
    );
    assert!(report.refused.unwrap().to_string().contains("cut off"));
    assert!(!holds_shared(&lab, Host::Node2));
}

#[test]
fn a_failing_service_leaves_the_node_standby_without_the_address() {
    let lab = Lab::for_test();
    let tmp = tempfile::tempdir().unwrap();
    let dir1 = state_dir(tmp.path(), Host::Node1, false);
    let broken = "[[service]]\nname = \"conference\"\nstart = \"exit 7\"\nstop = \"true\"\n";
    let report = with_node(
        &lab,
        Host::Node1,
        config(Host::Node1, broken),
        &dir1,
        async |n| n.boot().await,
    );
    assert_eq!(report.role, Some(Role::Standby), "{report:#?}");
    assert!(
        report
            .faults
            .iter()
            .any(|f| f.contains("start-services failed")),
        "{report:#?}"
    );
    assert!(
        !holds_shared(&lab, Host::Node1),
        "half-switched: the address stayed after a failed start"
    );
    assert_eq!(
        StateFile::in_dir(&dir1).load().unwrap().unwrap().role,
        Role::Standby
    );
}

#[test]
fn one_command_at_a_time_and_a_corrupt_state_is_named() {
    let lab = Lab::for_test();
    let tmp = tempfile::tempdir().unwrap();
    let dir1 = state_dir(tmp.path(), Host::Node1, false);
    let dir = dir1.clone();
    let busy = with_node(
        &lab,
        Host::Node1,
        config(Host::Node1, ""),
        &dir1,
        async move |_n| Node::open(config(Host::Node1, ""), &dir).map(drop),
    );
    assert!(matches!(busy, Err(NodeError::Busy { .. })), "{busy:?}");

    let file = StateFile::in_dir(&dir1);
    std::fs::write(file.path(), b"{ not json").unwrap();
    let err = lab
        .block_on_in(Host::Node1, || async {
            Node::open(config(Host::Node1, ""), &dir1).map(drop)
        })
        .unwrap()
        .expect_err("corrupt");
    assert!(
        err.to_string().contains(&file.path().display().to_string()),
        "{err}"
    );
    assert_eq!(
        std::fs::read(file.path()).unwrap(),
        b"{ not json",
        "the corrupt file must be left as it was"
    );
}

#[test]
fn a_probe_ahead_of_the_peer_loss_answers_it_only_while_fresh_and_silent() {
    let lab = Lab::for_test();
    let tmp = tempfile::tempdir().unwrap();
    let (dir1, dir2) = (
        state_dir(tmp.path(), Host::Node1, false),
        state_dir(tmp.path(), Host::Node2, false),
    );
    let auto = "auto_failover = true";
    let boot = with_node(
        &lab,
        Host::Node1,
        config(Host::Node1, auto),
        &dir1,
        async |n| n.boot().await,
    );
    assert_eq!(boot.role, Some(Role::Active), "{boot:#?}");
    let ip = |args: &[&str]| {
        let out = lab.exec(Host::Node1, "ip", args).unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    };
    let drop_shared = || ip(&["addr", "del", "192.0.2.10/24", "dev", "eth0"]);
    let add_shared = || ip(&["addr", "add", "192.0.2.10/24", "dev", "eth0"]);

    with_node(
        &lab,
        Host::Node2,
        config(Host::Node2, auto),
        &dir2,
        async |n| {
            // The active node answers: nothing is kept, and the loss runs its own
            // probe, which finds node1 and keeps node2 standby.
            let (probe, isolation) = n.probe_ahead().await;
            assert!(
                !n.keep_probe_ahead(&probe, isolation),
                "{probe} {isolation}"
            );
            let lost = n
                .handle(tandem_role::Event::PeerLost { silent: None })
                .await;
            assert_eq!(lost.role, Some(Role::Standby), "{lost:#?}");

            // Silent, but the address is back before the loss and the result has
            // gone stale (older than the default heartbeat of 200 ms, longer than
            // the probe timeout of 150 ms, plus one more heartbeat): probed again.
            drop_shared();
            let (probe, isolation) = n.probe_ahead().await;
            assert!(n.keep_probe_ahead(&probe, isolation), "{probe} {isolation}");
            add_shared();
            tokio::time::sleep(Duration::from_millis(600)).await;
            let lost = n.handle(tandem_role::Event::PeerStillLost).await;
            assert_eq!(lost.role, Some(Role::Standby), "{lost:#?}");

            // Silent and fresh, but the peer spoke after that probe began (the
            // agent forgets it then): the loss probes again and finds node1.
            drop_shared();
            let (probe, isolation) = n.probe_ahead().await;
            assert!(n.keep_probe_ahead(&probe, isolation), "{probe} {isolation}");
            add_shared();
            n.forget_probe_ahead();
            let lost = n.handle(tandem_role::Event::PeerStillLost).await;
            assert_eq!(lost.role, Some(Role::Standby), "{lost:#?}");

            // Silent and fresh: the loss is answered by it without probing again
            // (the address came back too late for the probe ahead to see it).
            drop_shared();
            let (probe, isolation) = n.probe_ahead().await;
            assert!(n.keep_probe_ahead(&probe, isolation), "{probe} {isolation}");
            add_shared();
            let lost = n.handle(tandem_role::Event::PeerStillLost).await;
            assert_eq!(lost.role, Some(Role::Active), "{lost:#?}");
        },
    );
}

#[test]
fn a_deferred_conflict_probe_is_left_to_the_caller_and_finishes_the_re_election() {
    let lab = Lab::for_test();
    let tmp = tempfile::tempdir().unwrap();
    let dir2 = state_dir(tmp.path(), Host::Node2, false);
    with_node(
        &lab,
        Host::Node2,
        config(Host::Node2, ""),
        &dir2,
        async |n| {
            n.defer_delayed_probes();
            let boot = n.boot().await;
            assert_eq!(boot.role, Some(Role::Active), "{boot:#?}");
            assert_eq!(n.probe_due(), None);

            // Another MAC answers and the peer said nothing: node 2 releases and
            // would probe again after the conflict backoff. The call returns
            // standby, with the probe left for later.
            let conflict = n
                .handle(tandem_role::Event::AddressConflict {
                    mac: tandem_role::MacAddr([0x02, 0, 0, 0, 0, 0x99]),
                })
                .await;
            assert_eq!(conflict.role, Some(Role::Standby), "{conflict:#?}");
            let due = n.probe_due().expect("the re-election probe is deferred");
            assert!(due > std::time::Instant::now());

            // The caller runs it when due: the address is silent, node 2 claims
            // again with a newer epoch, and nothing is left pending.
            let reelected = n.run_due_probe().await;
            assert_eq!(reelected.role, Some(Role::Active), "{reelected:#?}");
            // Node 2 claims even epochs: 2 at boot, 4 now.
            assert_eq!(reelected.state.unwrap().epoch.get(), 4);
            assert_eq!(n.probe_due(), None);
            // With nothing due it does nothing.
            let idle = n.run_due_probe().await;
            assert!(idle.steps.is_empty(), "{idle:#?}");

            // The operator's `set-server active` does not wait for a deferred
            // probe: it runs it at once.
            let conflict = n
                .handle(tandem_role::Event::AddressConflict {
                    mac: tandem_role::MacAddr([0x02, 0, 0, 0, 0, 0x99]),
                })
                .await;
            assert_eq!(conflict.role, Some(Role::Standby), "{conflict:#?}");
            assert!(n.probe_due().is_some());
            let operator = n.set_server(Role::Active).await;
            assert_eq!(operator.role, Some(Role::Active), "{operator:#?}");
            assert_eq!(operator.state.unwrap().epoch.get(), 6);
            assert_eq!(n.probe_due(), None);
        },
    );
    assert!(holds_shared(&lab, Host::Node2));
}
