//! The lab in the kernel: namespaces are made, connected, cut and removed.
//! Needs root; without it every test fails with the lab's message naming root.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use tandem_lab::{Host, Lab, LabConfig, namespace_exists};

fn lab() -> Lab {
    Lab::for_test()
}

#[test]
fn every_host_reaches_every_other_and_drop_removes_everything() {
    let lab = lab();
    let names: Vec<String> = Host::ALL.iter().map(|h| lab.namespace(*h)).collect();
    for from in Host::ALL {
        for to in Host::ALL {
            if from != to {
                assert!(lab.can_reach(from, to).unwrap(), "{from} cannot reach {to}");
            }
        }
    }
    let macs: Vec<[u8; 6]> = Host::ALL.iter().map(|h| lab.mac(*h).unwrap()).collect();
    assert!(macs[0] != macs[1] && macs[1] != macs[2] && macs[0] != macs[2]);
    let sw = lab.switch_namespace();
    drop(lab);
    for ns in names.iter().chain([&sw]) {
        assert!(!namespace_exists(ns), "{ns} survived the drop");
    }
}

#[test]
fn node_address_carries_the_seed_label_and_the_gateway_is_on_the_client() {
    let lab = lab();
    let out = lab
        .exec(Host::Node1, "ip", &["-4", "addr", "show", "dev", "eth0"])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("inet 192.0.2.11/24"), "{text}");
    assert!(
        text.contains("eth0:0"),
        "node address without the eth0:0 label: {text}"
    );
    assert!(
        !text.contains("192.0.2.10"),
        "the lab must never configure the shared address"
    );
    let out = lab
        .exec(Host::Client, "ip", &["-4", "addr", "show", "dev", "eth0"])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("192.0.2.1/24") && text.contains("192.0.2.100/24"),
        "{text}"
    );
}

#[test]
fn a_panic_inside_a_test_leaves_no_namespace() {
    let mut names = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = lab();
        names = Host::ALL.iter().map(|h| lab.namespace(*h)).collect();
        names.push(lab.switch_namespace());
        panic!("a test fails while the lab is up");
    }));
    assert!(result.is_err());
    assert_eq!(names.len(), 4);
    for ns in &names {
        assert!(!namespace_exists(ns), "{ns} survived the panic");
    }
}

#[test]
fn a_cut_cable_isolates_a_node_until_restored() {
    let lab = lab();
    lab.cut(Host::Node1).unwrap();
    assert!(!lab.can_reach(Host::Node1, Host::Client).unwrap());
    assert!(lab.can_reach(Host::Node2, Host::Client).unwrap());
    lab.restore(Host::Node1).unwrap();
    assert!(lab.can_reach(Host::Node1, Host::Client).unwrap());
}

#[test]
fn a_node_partition_keeps_both_nodes_on_the_client_side() {
    let lab = lab();
    lab.partition_nodes(true).unwrap();
    assert!(!lab.can_reach(Host::Node1, Host::Node2).unwrap());
    assert!(lab.can_reach(Host::Node1, Host::Client).unwrap());
    assert!(lab.can_reach(Host::Node2, Host::Client).unwrap());
    lab.partition_nodes(false).unwrap();
    assert!(lab.can_reach(Host::Node1, Host::Node2).unwrap());
}

#[test]
fn code_run_in_a_namespace_sees_that_namespace() {
    let lab = lab();
    let inside = lab.run_in(Host::Node2, || {
        std::net::UdpSocket::bind("192.0.2.12:0").is_ok()
    });
    assert!(inside.unwrap(), "node2's namespace lacks its node address");
    let outside = std::net::UdpSocket::bind("192.0.2.12:0").is_ok();
    assert!(
        !outside,
        "the node address leaked into the test's own namespace"
    );
}

#[test]
fn ipv6_addresses_when_asked() {
    let lab = Lab::up(LabConfig {
        ipv6: true,
        ..LabConfig::default()
    })
    .unwrap();
    let ok = lab.run_in(Host::Node1, || {
        std::net::UdpSocket::bind("[2001:db8::11]:0").is_ok()
    });
    assert!(ok.unwrap());
}

#[test]
fn a_spawned_thread_lives_in_its_namespace() {
    let lab = lab();
    let handle = lab
        .spawn_in(Host::Client, || {
            std::net::TcpListener::bind("192.0.2.100:0").is_ok()
        })
        .unwrap();
    assert!(handle.join().unwrap().unwrap());
}

#[test]
fn async_code_run_in_a_namespace_sees_that_namespace() {
    let lab = lab();
    // The future is made on the namespace's thread: a socket and a timer there.
    let answered = lab.block_on_in(Host::Node1, || async {
        let server = tokio::net::UdpSocket::bind("192.0.2.11:0").await.unwrap();
        let to = server.local_addr().unwrap();
        let client = tokio::net::UdpSocket::bind("192.0.2.11:0").await.unwrap();
        client.send_to(b"hello", to).await.unwrap();
        let mut buf = [0u8; 8];
        let got = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            server.recv_from(&mut buf),
        )
        .await;
        got.map(|r| r.map(|(n, _)| buf[..n].to_vec()).ok())
            .ok()
            .flatten()
    });
    assert_eq!(answered.unwrap().as_deref(), Some(&b"hello"[..]));
    let wrong = lab.block_on_in(Host::Node1, || async {
        tokio::net::UdpSocket::bind("192.0.2.12:0").await.is_ok()
    });
    assert!(!wrong.unwrap(), "node2's address is not node1's");
}
