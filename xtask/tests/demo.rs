//! The README's main job, `cargo xtask demo`, run as a user would: it must finish,
//! show each node in the role the seed's procedure expects after every step, print
//! both status tables, restore the copied config files on the standby, measure the
//! four failovers, lose no acknowledged write and leave no namespace behind.

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
    // Setup: both nodes standby after set-deployment; replication on; node1 active.
    for node in ["node1", "node2"] {
        let line = line_with(
            &out,
            &format!("{node}: failoverUtil setDeployment failover"),
        );
        assert!(
            line.ends_with("standby until `failover set-server active`"),
            "{line}"
        );
    }
    assert!(line_with(&out, "node1: mp_replication switchON").ends_with("is SUCCESSFUL"));
    // The seed's Media Server rule: the registration follows every failover
    // (node1, planned to node2, back, unplanned to node2, back to node1).
    let follows: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("the Media Server follows the active node"))
        .map(|l| l.rsplit(' ').next().unwrap_or(""))
        .collect();
    assert_eq!(
        follows,
        [
            "meetings1.lab.test",
            "meetings2.lab.test",
            "meetings1.lab.test",
            "meetings2.lab.test",
            "meetings1.lab.test"
        ],
        "{out}"
    );
    // Both status tables, as the seed prints them.
    assert_eq!(
        out.matches("| Replication Type: Local | Replication Type: Intra-site |")
            .count(),
        2,
        "{out}"
    );
    assert_eq!(
        out.matches("| Status: Local           | Status: Connected            |")
            .count(),
        2,
        "{out}"
    );
    // The config files went over the peer link and were restored.
    assert!(line_with(&out, "node1: failoverUtil copyConfigFiles").contains("Sent to the standby"));
    assert!(line_with(&out, "node2's config files match node1's").ends_with("identical"));
    // Each setServer lands in the role asked, with epochs that only grow.
    let roles: Vec<(String, String)> = out
        .lines()
        .filter(|l| l.contains("failoverUtil setServer"))
        .map(|l| {
            let node = l
                .split_whitespace()
                .nth(2)
                .unwrap()
                .trim_end_matches(':')
                .to_owned();
            let asked = l
                .split("setServer ")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .to_owned();
            assert!(l.contains(&format!("this node is {asked}")), "{l}");
            (node, asked)
        })
        .collect();
    let expected = [
        ("node1", "active"),
        ("node1", "standby"),
        ("node2", "active"),
        ("node2", "standby"),
        ("node1", "active"),
        ("node2", "active"),
        ("node2", "standby"),
        ("node1", "active"),
    ];
    let roles: Vec<(&str, &str)> = roles
        .iter()
        .map(|(n, r)| (n.as_str(), r.as_str()))
        .collect();
    assert_eq!(roles, expected, "{out}");
    // After the cable came back, node1 stepped down on its own and rejoined.
    assert!(line_with(&out, "node1's agent hears node2's newer claim").ends_with("node1 standby"));
    assert!(line_with(&out, "mp_replication switchON -S -F from-sync").ends_with("is SUCCESSFUL"));
    // Four failovers measured; planned ones never had two active nodes.
    let outages = out
        .lines()
        .filter(|l| l.contains(" outage ") && l.ends_with("not acknowledged)"))
        .count();
    assert_eq!(outages, 4, "{out}");
    for both in out
        .lines()
        .filter(|l| l.contains("both nodes active at once"))
    {
        assert!(
            both.contains("never") || both.contains("until its agent heard node2's newer claim"),
            "two active nodes outside the heal after the cut: {both}"
        );
    }
    // No acknowledged write lost, and the two databases are identical.
    let data = line_with(&out, "acknowledged writes: ");
    assert!(
        data.contains("lost: 0;") && data.ends_with("identical"),
        "{data}"
    );
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
