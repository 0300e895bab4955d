//! `cargo xtask lab` as people use it: up, status, exec, cut / uncut,
//! partition / heal, down under the plain names, and the message a user
//! without root gets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use tandem_lab::{Host, Lab};

fn xtask(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn without_root_the_lab_names_the_privilege_it_needs() {
    // Run as the unprivileged user `nobody` (uid 65534).
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_xtask"))
        .args(["lab", "up"])
        .output()
        .expect("setpriv (util-linux) runs the lab as an unprivileged user");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("needs root") && stderr.contains("CAP_NET_ADMIN"),
        "{stderr}"
    );
}

/// Removes the plain-named lab when dropped, after a failed assertion too.
struct LabDown;

impl Drop for LabDown {
    fn drop(&mut self) {
        let _ = xtask(&["lab", "down"]);
    }
}

fn ok(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `from` reaches `to` over TCP, asked a few times: right after a cable
/// is plugged back in the kernel may still hold a failed neighbour entry.
fn reaches(lab: &Lab, from: Host, to: Host) -> bool {
    (0..4).any(|_| lab.can_reach(from, to).unwrap())
}

#[test]
fn lab_up_status_exec_down() {
    // The plain names are shared by the whole machine: this is the only test that
    // uses them. Remove a lab a person may have left up first.
    let _ = xtask(&["lab", "down"]);
    let _down = LabDown;
    let up = xtask(&["lab", "up"]);
    assert!(up.status.success(), "{up:?}");
    let status = String::from_utf8_lossy(&xtask(&["lab", "status"]).stdout).into_owned();
    assert!(!status.contains("UNREACHABLE"), "{status}");
    assert_eq!(status.matches(": ok").count(), 6, "{status}");
    let exec = xtask(&[
        "lab", "exec", "node2", "ip", "-4", "-br", "addr", "show", "dev", "eth0",
    ]);
    assert!(
        String::from_utf8_lossy(&exec.stdout).contains("192.0.2.12/24"),
        "{exec:?}"
    );

    // cut / uncut: the cut node reaches nobody and nobody reaches it.
    let lab = Lab::attach_plain().expect("the lab is up");
    let cut = ok(&xtask(&["lab", "cut", "node1"]));
    assert!(cut.contains("node1"), "{cut}");
    assert!(lab.is_cut(Host::Node1).unwrap());
    assert!(!lab.can_reach(Host::Client, Host::Node1).unwrap());
    assert!(!lab.can_reach(Host::Node2, Host::Node1).unwrap());
    assert!(reaches(&lab, Host::Client, Host::Node2));
    let status = ok(&xtask(&["lab", "status"]));
    assert!(status.contains("cut cables: node1"), "{status}");
    assert!(status.contains("node1: UNREACHABLE"), "{status}");
    ok(&xtask(&["lab", "uncut", "node1"]));
    assert!(!lab.is_cut(Host::Node1).unwrap());
    assert!(reaches(&lab, Host::Client, Host::Node1));
    assert!(reaches(&lab, Host::Node2, Host::Node1));

    // partition / heal: the nodes lose each other, not the client.
    let partition = ok(&xtask(&["lab", "partition"]));
    assert!(partition.contains("heal"), "{partition}");
    assert!(lab.is_partitioned().unwrap());
    assert!(!lab.can_reach(Host::Node1, Host::Node2).unwrap());
    assert!(!lab.can_reach(Host::Node2, Host::Node1).unwrap());
    assert!(reaches(&lab, Host::Client, Host::Node1));
    assert!(reaches(&lab, Host::Node2, Host::Client));
    let status = ok(&xtask(&["lab", "status"]));
    assert!(status.contains("partitioned"), "{status}");
    ok(&xtask(&["lab", "heal"]));
    assert!(!lab.is_partitioned().unwrap());
    assert!(reaches(&lab, Host::Node1, Host::Node2));
    let status = ok(&xtask(&["lab", "status"]));
    assert!(!status.contains("UNREACHABLE"), "{status}");

    // A host that is not in the lab is a usage error naming the hosts.
    let bad = xtask(&["lab", "cut", "node3"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("node1, node2, client"),
        "{bad:?}"
    );

    let again = xtask(&["lab", "up"]);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("lab down"),
        "{again:?}"
    );
    let down = xtask(&["lab", "down"]);
    assert!(down.status.success(), "{down:?}");
    for ns in ["node1", "node2", "client", "tandem-sw"] {
        assert!(
            !std::path::Path::new("/run/netns").join(ns).exists(),
            "{ns} left behind"
        );
    }
}
