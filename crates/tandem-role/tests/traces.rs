//! Trace tests: the seed's procedures as data files of events in and actions out.
//!
//! Each `tests/traces/*.trace` file declares machines, then lists events, each
//! followed by the actions the machine must answer with, indented:
//!
//! ```text
//! machine node1 node=1 site=1 deployment=failover role=active epoch=1
//! @0 node1: set-server standby
//!   stop-services
//!   release-shared-address
//! ```
//!
//! Run with `UPDATE_EXPECT=1` to rewrite the expected actions from what the machine
//! does now; review the diff before committing it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use tandem_role::{Config, Epoch, Event, FenceToken, Machine, NodeState, Replication};

#[test]
fn two_newly_installed_application_servers() {
    check("two-newly-installed.trace");
}

#[test]
fn one_existing_and_one_new_application_server() {
    check("one-existing-one-new.trace");
}

#[test]
fn the_operator_ends_a_re_election_backoff() {
    check("operator-ends-backoff.trace");
}

#[test]
fn performing_application_server_failover() {
    check("failover.trace");
}

#[test]
fn switching_back_to_the_previous_active_server() {
    check("switch-back.trace");
}

#[test]
fn split_brain_after_a_partition() {
    check("split-brain.trace");
}

#[test]
fn a_node_cut_off_yields_to_the_takeover_when_its_cable_returns() {
    check("cable-back.trace");
}

#[test]
fn a_takeover_in_the_silence_keeps_the_address_though_the_loss_was_declared_late() {
    check("late-loss.trace");
}

#[test]
fn claims_in_flight_across_a_conflict_let_the_newer_epoch_keep_the_address() {
    check("claims-in-flight.trace");
}

#[test]
fn a_claim_older_than_the_takeover_is_superseded_when_the_link_returns() {
    check("stale-claim.trace");
}

#[test]
fn a_takeover_before_the_loss_was_declared_keeps_the_address_when_the_cable_returns() {
    check("claim-before-loss.trace");
}

#[test]
fn an_active_node_cut_off_steps_away_before_its_cable_returns() {
    check("cut-off-active.trace");
}

#[test]
fn set_deployment_single_on_a_standby_changes_nothing_when_refused() {
    check("single-on-standby.trace");
}

#[test]
fn an_agent_restart_on_the_active_node_resumes_without_a_new_claim() {
    check("agent-restart.trace");
}

#[test]
fn with_a_witness_a_standby_claims_only_once_the_dead_actives_lease_ran_out() {
    check("witness-failover.trace");
}

#[test]
fn with_a_witness_a_partition_between_the_nodes_leaves_one_holder() {
    check("witness-partition.trace");
}

#[test]
fn an_active_that_loses_the_witness_serves_while_its_peer_is_in_sight() {
    check("witness-lost.trace");
}

#[test]
fn with_a_witness_a_boot_claims_only_with_the_key() {
    check("witness-boot.trace");
}

#[test]
fn a_planned_switchover_hands_the_key_over_after_the_address() {
    check("witness-switchover.trace");
}

#[test]
fn a_restarted_agent_takes_its_key_again_or_steps_down() {
    check("witness-resume.trace");
}

#[test]
fn every_trace_file_is_checked() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/traces");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    let source = include_str!("traces.rs");
    for file in files {
        assert!(
            source.contains(&format!("check(\"{file}\")")),
            "{file} has no test"
        );
    }
}

/// Runs a trace file and compares, or rewrites it under `UPDATE_EXPECT=1`.
fn check(name: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/traces")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let actual = run(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if actual == text {
        return;
    }
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let first = text
        .lines()
        .zip(actual.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| text.lines().count().min(actual.lines().count()));
    let show = |s: &str| {
        s.lines()
            .skip(first.saturating_sub(3))
            .take(12)
            .collect::<Vec<_>>()
            .join("\n")
    };
    panic!(
        "{} differs at line {}\n--- expected\n{}\n--- actual\n{}\n(rerun with UPDATE_EXPECT=1 to accept, then review the diff)",
        path.display(),
        first + 1,
        show(&text),
        show(&actual)
    );
}

/// Replays the events of a trace and returns the trace with the actions the
/// machines answered with.
fn run(text: &str) -> Result<String, String> {
    let mut machines: BTreeMap<String, Machine> = BTreeMap::new();
    let mut out = String::new();
    for (n, line) in text.lines().enumerate() {
        let err = |e: String| format!("line {}: {e}", n + 1);
        if line.starts_with("  ") {
            continue; // expected actions: replaced by the actual ones below
        }
        writeln!(out, "{line}").unwrap();
        if let Some(decl) = line.strip_prefix("machine ") {
            let (name, machine) = declare(decl).map_err(err)?;
            machines.insert(name, machine);
        } else if let Some(rest) = line.strip_prefix('@') {
            let (ms, rest) = rest
                .split_once(' ')
                .ok_or_else(|| err("expected `@<ms> <machine>: <event>`".into()))?;
            let ms: u64 = ms.parse().map_err(|_| err(format!("bad time `{ms}`")))?;
            let (name, event) = rest
                .split_once(": ")
                .ok_or_else(|| err("expected `<machine>: <event>`".into()))?;
            let event: Event = event.parse().map_err(|e| err(format!("{e}")))?;
            let machine = machines
                .get_mut(name)
                .ok_or_else(|| err(format!("no machine `{name}`")))?;
            let now = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
            for action in machine.handle(event, now) {
                writeln!(out, "  {action}").unwrap();
            }
        } else if !(line.is_empty() || line.starts_with('#')) {
            return Err(err(format!("cannot read `{line}`")));
        }
    }
    Ok(out)
}

/// `NAME node=N site=S [deployment=..] [role=..] [epoch=..] [hold=yes|no]
/// [replication=on|off] [auto-failover=yes|no] [witness=yes|no] [token=N]`
fn declare(decl: &str) -> Result<(String, Machine), String> {
    let mut words = decl.split_whitespace();
    let name = words.next().ok_or("machine without a name")?.to_string();
    let mut fields = BTreeMap::new();
    for word in words {
        let (k, v) = word
            .split_once('=')
            .ok_or(format!("expected key=value, got `{word}`"))?;
        fields.insert(k, v);
    }
    let get = |k: &str| {
        fields
            .get(k)
            .copied()
            .ok_or(format!("machine {name} needs {k}="))
    };
    let yes = |v: &str| v == "yes";
    let mut state = NodeState::first_boot(
        get("node")?.parse().map_err(|e| format!("{e}"))?,
        get("site")?.parse().map_err(|e| format!("{e}"))?,
    );
    let mut config = Config::default();
    for (k, v) in &fields {
        match *k {
            "node" | "site" => {}
            "deployment" => state.deployment = v.parse().map_err(|e| format!("{e}"))?,
            "role" => state.role = v.parse().map_err(|e| format!("{e}"))?,
            "epoch" => state.epoch = Epoch::new(v.parse().map_err(|_| format!("bad epoch {v}"))?),
            "hold" => state.standby_hold = yes(v),
            "replication" => {
                state.replication = if yes(v) || *v == "on" {
                    Replication::On
                } else {
                    Replication::Off
                }
            }
            "auto-failover" => config.auto_failover = yes(v),
            "witness" => config.witness = yes(v),
            "token" => {
                state.token = Some(FenceToken::new(
                    v.parse().map_err(|_| format!("bad token {v}"))?,
                ))
            }
            other => return Err(format!("unknown field {other}")),
        }
    }
    Ok((name, Machine::new(config, state)))
}
