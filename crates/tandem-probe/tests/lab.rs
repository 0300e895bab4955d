//! The probes on real interfaces in the namespace lab (needs root; without it
//! every test fails with the lab's message naming what is missing).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tandem_lab::{
    CLIENT_ADDR, GATEWAY_ADDR, Host, LAB_IFACE, Lab, LabConfig, NODE2_ADDR, SHARED_ADDR,
};
use tandem_probe::{Collect, Error, MacAddr, Outcome, ProbeConfig, Prober, Responder};

/// An address on the lab segment that nobody holds.
const UNUSED: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);

/// For probes that must stay silent: three attempts, silent after half a second.
fn quick() -> Prober {
    Prober::new(ProbeConfig {
        timeout: Duration::from_millis(300),
        interval: Duration::from_millis(100),
        retries: 2,
        collect: Collect::First,
    })
    .unwrap()
}

/// For probes that must be answered: generous, so that a loaded machine
/// (the whole workspace's tests on two cores) does not turn an answer into
/// silence; an answered probe ends at its first answer anyway.
fn patient(collect: Collect) -> Prober {
    Prober::new(ProbeConfig {
        timeout: Duration::from_secs(2),
        interval: Duration::from_millis(250),
        retries: 4,
        collect,
    })
    .unwrap()
}

/// Runs an async block on a current-thread runtime inside `host`'s namespace.
fn run<T: Send, Fut: Future<Output = T>>(
    lab: &Lab,
    host: Host,
    f: impl FnOnce() -> Fut + Send,
) -> T {
    lab.block_on_in(host, f).unwrap()
}

fn mac(lab: &Lab, host: Host) -> MacAddr {
    MacAddr(lab.mac(host).unwrap())
}

#[test]
fn icmp_echo_is_answered_by_the_reference_and_an_unused_address_is_silent() {
    let lab = Lab::for_test();
    let (answer, silence) = (patient(Collect::First), quick());
    let (reference, unused) = run(&lab, Host::Node1, || async move {
        (
            answer.icmp(IpAddr::V4(GATEWAY_ADDR)).await.unwrap(),
            silence.icmp(IpAddr::V4(UNUSED)).await.unwrap(),
        )
    });
    assert_eq!(reference.answers().len(), 1, "{reference}");
    assert_eq!(
        reference.answers()[0].by,
        Responder::Ip(IpAddr::V4(GATEWAY_ADDR))
    );
    assert_eq!(unused, Outcome::Silent { tried: 3 });
}

#[test]
fn an_arp_probe_names_the_mac_that_holds_the_address_and_teaches_nobody() {
    let lab = Lab::for_test();
    let (answer, silence) = (patient(Collect::First), quick());
    let (held, unused) = run(&lab, Host::Client, || async move {
        (
            answer.arp(LAB_IFACE, NODE2_ADDR).await.unwrap(),
            silence.arp(LAB_IFACE, UNUSED).await.unwrap(),
        )
    });
    assert_eq!(held.macs(), [mac(&lab, Host::Node2)], "{held}");
    assert_eq!(unused, Outcome::Silent { tried: 3 });
    // Sender IP 0.0.0.0: node2 answered without learning the client's address.
    let out = lab
        .exec(Host::Node2, "ip", &["neigh", "show", "dev", LAB_IFACE])
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        !table.contains(&CLIENT_ADDR.to_string()),
        "node2 learnt the client from a probe: {table}"
    );
}

#[test]
fn an_arp_probe_collects_every_mac_that_answers() {
    let lab = Lab::for_test();
    let shared = format!("{SHARED_ADDR}/24");
    for node in [Host::Node1, Host::Node2] {
        lab.exec(node, "ip", &["addr", "add", &shared, "dev", LAB_IFACE])
            .unwrap();
    }
    let prober = patient(Collect::All);
    let outcome = run(&lab, Host::Client, || async move {
        prober.arp(LAB_IFACE, SHARED_ADDR).await.unwrap()
    });
    let mut macs = outcome.macs();
    macs.sort();
    let mut expected = vec![mac(&lab, Host::Node1), mac(&lab, Host::Node2)];
    expected.sort();
    assert_eq!(macs, expected, "{outcome}");
    // Each node sees the other one answer for the address it holds: the conflict.
    let from_node2 = run(&lab, Host::Node2, || async move {
        prober.arp(LAB_IFACE, SHARED_ADDR).await.unwrap()
    });
    assert_eq!(from_node2.macs(), [mac(&lab, Host::Node1)], "{from_node2}");
}

#[test]
fn tcp_connect_tells_listening_from_refused_from_silent() {
    let lab = Lab::for_test();
    let listener = lab
        .run_in(Host::Node2, || std::net::TcpListener::bind((NODE2_ADDR, 0)))
        .unwrap()
        .unwrap();
    let open = listener.local_addr().unwrap();
    // Bound and closed again: nothing listens on this port.
    let closed = lab
        .run_in(Host::Node2, || {
            std::net::TcpListener::bind((NODE2_ADDR, 0))
                .unwrap()
                .local_addr()
                .unwrap()
        })
        .unwrap();
    let (answer, silence) = (patient(Collect::First), quick());
    let silent_target = SocketAddr::new(IpAddr::V4(UNUSED), open.port());
    let (answered, refused, silent) = run(&lab, Host::Client, || async move {
        (
            answer.tcp(open).await.unwrap(),
            answer.tcp(closed).await.unwrap(),
            silence.tcp(silent_target).await.unwrap(),
        )
    });
    assert_eq!(
        answered.answers()[0].by,
        Responder::Ip(open.ip()),
        "{answered}"
    );
    assert!(
        matches!(refused, Outcome::Refused { by, attempts: 1, .. } if by == closed.ip()),
        "{refused}"
    );
    assert_eq!(silent, Outcome::Silent { tried: 3 });
}

#[test]
fn a_node_cut_off_from_the_bridge_fails_its_isolation_check() {
    let lab = Lab::for_test();
    let check = |prober: Prober| {
        move || async move {
            prober
                .isolation_check(LAB_IFACE, IpAddr::V4(GATEWAY_ADDR))
                .await
        }
    };
    let connected = run(&lab, Host::Node1, check(patient(Collect::First))).unwrap();
    assert!(connected.is_answered(), "{connected}");
    assert!(
        connected.macs().contains(&mac(&lab, Host::Client)),
        "{connected}"
    );

    lab.cut(Host::Node1).unwrap();
    let cut = run(&lab, Host::Node1, check(quick())).unwrap();
    assert!(cut.is_silent(), "a cut-off node heard its reference: {cut}");

    lab.restore(Host::Node1).unwrap();
    let restored = run(&lab, Host::Node1, check(patient(Collect::First))).unwrap();
    assert!(restored.is_answered(), "{restored}");
}

#[test]
fn icmpv6_echo_is_answered_on_the_lab_segment() {
    let lab = Lab::up(LabConfig {
        ipv6: true,
        ..LabConfig::default()
    })
    .unwrap();
    let (answer, silence) = (patient(Collect::First), quick());
    let node2: IpAddr = "2001:db8::12".parse().unwrap();
    let unused: IpAddr = "2001:db8::50".parse().unwrap();
    let (answered, silent) = run(&lab, Host::Client, || async move {
        (
            answer.address(LAB_IFACE, node2).await.unwrap(),
            silence.icmp(unused).await.unwrap(),
        )
    });
    let neigh = lab
        .exec(Host::Client, "ip", &["-6", "neigh", "show"])
        .unwrap();
    let neigh = String::from_utf8_lossy(&neigh.stdout).into_owned();
    assert!(
        answered.is_answered(),
        "{answered}; client's neighbours: {neigh}"
    );
    assert_eq!(answered.answers()[0].by, Responder::Ip(node2), "{answered}");
    assert!(silent.is_silent(), "{silent}");
}

#[test]
fn a_missing_interface_is_an_error_that_names_it() {
    let lab = Lab::for_test();
    let prober = quick();
    let err = run(&lab, Host::Node1, || async move {
        prober.arp("eth9", SHARED_ADDR).await.unwrap_err()
    });
    assert!(
        matches!(&err, Error::NoSuchInterface { name } if name == "eth9"),
        "{err}"
    );
    assert!(err.to_string().contains("ip link show"), "{err}");
}

/// Set in the child process of the permission test.
const CHILD: &str = "TANDEM_PROBE_WITHOUT_CAP_NET_RAW";

#[test]
fn probes_without_cap_net_raw_fail_with_a_permission_error_not_silence() {
    if std::env::var_os(CHILD).is_some() {
        // Child: root in node1's namespace, but CAP_NET_RAW is gone.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let prober = quick();
        let arp = rt.block_on(prober.arp(LAB_IFACE, SHARED_ADDR)).unwrap_err();
        let icmp = rt
            .block_on(prober.icmp(IpAddr::V4(GATEWAY_ADDR)))
            .unwrap_err();
        for err in [arp, icmp] {
            assert!(matches!(err, Error::Permission { .. }), "{err:?}");
            println!("child saw: {err}");
        }
        return;
    }
    let lab = Lab::for_test();
    let me = std::env::current_exe().unwrap();
    let out = lab
        .command(Host::Node1, "setpriv")
        .args(["--bounding-set", "-net_raw", "--inh-caps", "-net_raw"])
        .arg(me)
        .args([
            "--exact",
            "probes_without_cap_net_raw_fail_with_a_permission_error_not_silence",
        ])
        .args(["--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .expect("this test needs setpriv (Debian package util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert_eq!(stdout.matches("child saw: ").count(), 2, "{stdout}");
    assert!(stdout.contains("CAP_NET_RAW"), "{stdout}");
}
