//! The README's main job, `cargo xtask demo`, run as a user would: it must finish,
//! show each node in the role the seed's procedure expects, measure both failovers
//! and leave no namespace behind.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn line_with<'a>(out: &'a str, needle: &str) -> &'a str {
    out.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with `{needle}` in:\n{out}"))
}

#[test]
fn the_demo_walks_the_seed_procedures_and_cleans_up() {
    let before = tandem_lab::test_namespaces();
    let run = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("demo")
        .output()
        .unwrap();
    // The demo has exited: anything it left carries its (now dead) pid. Labs of
    // processes still running are someone else's.
    let left: Vec<String> = tandem_lab::test_namespaces()
        .into_iter()
        .filter(|ns| !before.contains(ns) && !owner_alive(ns))
        .collect();
    assert!(left.is_empty(), "the demo left namespaces behind: {left:?}");
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        line_with(&out, "node1: failoverUtil setDeployment failover").ends_with("standby, epoch 0")
    );
    assert!(line_with(&out, "node2: reboot node2 (boot decision)").contains("standby"));
    assert!(line_with(&out, "node2: failoverUtil setServer active").contains("active, epoch 2"));
    let node1_active: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("node1: failoverUtil setServer active"))
        .collect();
    assert_eq!(node1_active.len(), 2, "{out}");
    assert!(
        node1_active[0].contains("active, epoch 1"),
        "{}",
        node1_active[0]
    );
    assert!(
        node1_active[1].contains("active, epoch 3"),
        "{}",
        node1_active[1]
    );
    let cut_off = line_with(&out, "reboot node2 while still cut off");
    assert!(
        cut_off.contains("standby") && cut_off.contains("gateway"),
        "{cut_off}"
    );
    for failover in ["client reaches node2", "client reaches node1"] {
        let summary = out.lines().rev().find(|l| l.contains(failover)).unwrap();
        assert!(
            summary.contains("outage") && summary.contains(" ms"),
            "{summary}"
        );
    }
    assert!(out.contains("the lab is removed"));
}

/// Whether the process named in a test namespace (`tdm<pid>x<n>-<host>`) runs.
fn owner_alive(namespace: &str) -> bool {
    let pid = namespace
        .trim_start_matches("tdm")
        .split('x')
        .next()
        .unwrap_or_default();
    std::path::Path::new("/proc").join(pid).exists()
}
