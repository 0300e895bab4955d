//! The lab's etcd witness members in the kernel: started, reached from a node,
//! killed and restarted, cut off from one node, and removed without a trace.
//! Needs root and etcd (Debian `etcd-server`); without them every test fails with a
//! message naming what is missing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tandem_lab::witness::{CLIENT_PORT, WITNESS_ADDRS};
use tandem_lab::{Host, Lab, WitnessCluster, namespace_exists};

fn witness(lab: &Lab, members: usize) -> WitnessCluster {
    lab.start_witness(members).unwrap_or_else(|e| {
        panic!("this test needs etcd witness members and cannot start them: {e}")
    })
}

/// `GET /health` of member `member` (1-based) from inside `host`, or why not.
fn health_from(lab: &Lab, host: Host, member: usize) -> Result<String, String> {
    let target = SocketAddr::from((WITNESS_ADDRS[member - 1], CLIENT_PORT));
    lab.run_in(host, move || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&target, Duration::from_millis(500))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(s, "GET /health HTTP/1.0\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text)
    })
    .unwrap()
    .map_err(|e| e.to_string())
}

fn etcd_processes() -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let exe = std::fs::read_link(entry.path().join("exe")).unwrap_or_default();
        if exe.ends_with("etcd") {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn three_members_serve_node1_survive_a_kill_and_leave_nothing_behind() {
    let lab = Lab::for_test();
    let mut cluster = witness(&lab, 3);
    assert_eq!(
        cluster.endpoints(),
        [
            "http://192.0.2.21:2379",
            "http://192.0.2.22:2379",
            "http://192.0.2.23:2379"
        ]
    );
    for member in 1..=3 {
        let answer = health_from(&lab, Host::Node1, member).unwrap();
        assert!(
            answer.contains("\"health\":\"true\""),
            "member {member}: {answer}"
        );
    }
    let pids = cluster.pids();
    assert_eq!(pids.len(), 3);

    cluster.kill(2).unwrap();
    assert_eq!(cluster.pids().len(), 2);
    assert!(
        health_from(&lab, Host::Node1, 2).is_err(),
        "a killed member answers"
    );
    // Two of three are a quorum: the others stay (or, when the leader was
    // killed, become again) healthy.
    cluster.wait_healthy(1).unwrap();
    let answer = health_from(&lab, Host::Node1, 1).unwrap();
    assert!(answer.contains("\"health\":\"true\""), "{answer}");

    cluster.start(2).unwrap();
    let answer = health_from(&lab, Host::Node1, 2).unwrap();
    assert!(answer.contains("\"health\":\"true\""), "{answer}");

    let namespaces: Vec<String> = (1..=3)
        .map(|m| cluster.namespace(m).unwrap().to_string())
        .collect();
    let pids = cluster.pids();
    drop(cluster);
    for ns in &namespaces {
        assert!(!namespace_exists(ns), "{ns} survived the drop");
    }
    let left = etcd_processes();
    for pid in pids {
        assert!(!left.contains(&pid), "etcd {pid} survived the drop");
    }
}

#[test]
fn a_node_cut_from_the_witness_still_reaches_its_peer_and_the_client() {
    let lab = Lab::for_test();
    let _cluster = witness(&lab, 1);
    assert!(health_from(&lab, Host::Node1, 1).is_ok());
    lab.cut_from_witness(Host::Node1, true).unwrap();
    lab.cut_from_witness(Host::Node1, true).unwrap(); // idempotent
    assert!(
        health_from(&lab, Host::Node1, 1).is_err(),
        "node1 still reaches the witness"
    );
    assert!(
        health_from(&lab, Host::Node2, 1).is_ok(),
        "node2 lost the witness too"
    );
    assert!(lab.can_reach(Host::Node1, Host::Node2).unwrap());
    assert!(lab.can_reach(Host::Node1, Host::Client).unwrap());
    lab.cut_from_witness(Host::Node1, false).unwrap();
    lab.cut_from_witness(Host::Node1, false).unwrap(); // idempotent
    assert!(health_from(&lab, Host::Node1, 1).is_ok());
}

#[test]
fn a_panic_with_the_witness_up_leaves_no_namespace_and_no_etcd() {
    let mut names = Vec::new();
    let mut pids = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::for_test();
        let mut cluster = witness(&lab, 1);
        names.push(cluster.namespace(1).unwrap().to_string());
        pids = cluster.pids();
        panic!("a test fails while the witness is up");
    }));
    assert!(result.is_err());
    assert_eq!(pids.len(), 1);
    for ns in &names {
        assert!(!namespace_exists(ns), "{ns} survived the panic");
    }
    let left = etcd_processes();
    assert!(!left.contains(&pids[0]), "etcd survived the panic");
}

#[test]
fn a_partition_of_the_nodes_keeps_both_on_the_witness() {
    let lab = Lab::for_test();
    let _cluster = witness(&lab, 1);
    lab.partition_nodes(true).unwrap();
    assert!(health_from(&lab, Host::Node1, 1).is_ok());
    assert!(health_from(&lab, Host::Node2, 1).is_ok());
    lab.partition_nodes(false).unwrap();
}

/// Set in the child process of the sweep test, which builds a witness and waits
/// to be killed.
const CHILD_ENV: &str = "TANDEM_LAB_WITNESS_CHILD";

#[test]
fn a_killed_test_process_leaves_etcd_and_namespaces_that_the_next_lab_sweeps() {
    if std::env::var_os(CHILD_ENV).is_some() {
        let lab = Lab::for_test();
        let mut cluster = witness(&lab, 1);
        let pid = cluster.pids()[0];
        let ns = cluster.namespace(1).unwrap().to_string();
        println!("READY {pid} {ns} {}", lab.switch_namespace());
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    /// Kills the child when the test fails before it does.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_killed_test_process_leaves_etcd_and_namespaces_that_the_next_lab_sweeps",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map(KillOnDrop)
        .unwrap();
    let stdout = child.0.stdout.take().unwrap();
    // The child prints one line when its witness is up (or fails and exits).
    let mut ready = None;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line.unwrap();
        // libtest has printed `test NAME ... ` without a newline before it.
        if let Some((_, rest)) = line.split_once("READY ") {
            ready = Some(rest.to_string());
            break;
        }
    }
    // Killed before any drop can run.
    drop(child);
    let ready = ready.expect("the child never started its witness");
    let mut parts = ready.split_whitespace();
    let pid: u32 = parts.next().unwrap().parse().unwrap();
    let names: Vec<String> = parts.map(String::from).collect();
    assert!(etcd_processes().contains(&pid), "etcd died with its test");
    for ns in &names {
        assert!(namespace_exists(ns), "{ns} vanished before the sweep");
    }
    let _next = Lab::for_test(); // sweeps what the killed process left
    assert!(
        !etcd_processes().contains(&pid),
        "the sweep left etcd {pid} running"
    );
    for ns in &names {
        assert!(!namespace_exists(ns), "the sweep left {ns}");
    }
}
