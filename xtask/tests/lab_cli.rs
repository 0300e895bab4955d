//! `cargo xtask lab` as people use it: up, status, exec, down under the plain
//! names, and the message a user without root gets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

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

#[test]
fn lab_up_status_exec_down() {
    // The plain names are shared by the whole machine: this is the only test that
    // uses them. Remove a lab a person may have left up first.
    let _ = xtask(&["lab", "down"]);
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
