//! Claims, releases, announcements and takeovers on real interfaces in the
//! namespace lab (needs root; without it every test fails with the lab's
//! message naming what is missing). Every lab, and with it every address and
//! route a test made, is removed when the test ends, also after a panic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use tandem_lab::{GATEWAY_ADDR, Host, LAB_IFACE, Lab, LabConfig, SHARED_ADDR};
use tandem_netif::{
    AddressSpec, AnnounceConfig, Claim, Error, Interfaces, MacAddr, NodeAddress, OperState, Release,
};
use tandem_probe::{Collect, ProbeConfig, Prober};

const SHARED_V6: &str = "2001:db8::10";

fn shared() -> AddressSpec {
    AddressSpec::shared(format!("{SHARED_ADDR}/24").parse().unwrap(), LAB_IFACE)
}

fn shared_v6() -> AddressSpec {
    AddressSpec::shared(format!("{SHARED_V6}/64").parse().unwrap(), LAB_IFACE)
}

fn once() -> AnnounceConfig {
    AnnounceConfig {
        count: 1,
        interval: Duration::ZERO,
    }
}

/// For probes that must be answered: generous, so that a loaded machine does
/// not turn an answer into silence (an answered probe ends early anyway).
fn prober(collect: Collect) -> Prober {
    Prober::new(ProbeConfig {
        timeout: Duration::from_secs(2),
        interval: Duration::from_millis(250),
        retries: 4,
        collect,
    })
    .unwrap()
}

/// For probes that must stay silent: silent after half a second.
fn quick() -> Prober {
    Prober::new(ProbeConfig {
        timeout: Duration::from_millis(300),
        interval: Duration::from_millis(100),
        retries: 2,
        collect: Collect::First,
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

fn claim(lab: &Lab, host: Host, spec: &AddressSpec) -> Claim {
    run(lab, host, || async {
        Interfaces::new().unwrap().claim(spec).await.unwrap()
    })
}

fn release(lab: &Lab, host: Host, spec: &AddressSpec) -> Release {
    run(lab, host, || async {
        Interfaces::new().unwrap().release(spec).await.unwrap()
    })
}

fn announce(lab: &Lab, host: Host, spec: &AddressSpec) {
    let sent = run(lab, host, || async {
        Interfaces::new()
            .unwrap()
            .announce(spec.ip(), &spec.iface, once())
            .await
            .unwrap()
    });
    assert!(sent.frames_sent >= 1, "{sent:?}");
}

fn mac(lab: &Lab, host: Host) -> MacAddr {
    MacAddr(lab.mac(host).unwrap())
}

/// The hardware address `host`'s neighbour table has for `addr`, as `ip neigh` shows it.
fn neighbour(lab: &Lab, host: Host, addr: &str) -> Option<MacAddr> {
    let out = lab
        .exec(host, "ip", &["neigh", "show", addr, "dev", LAB_IFACE])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    words.find(|w| *w == "lladdr")?;
    words.next()?.parse().ok()
}

/// How many entries for `addr` `host`'s eth0 has, as `ip addr` shows them.
fn copies(lab: &Lab, host: Host, addr: &str) -> usize {
    let out = lab
        .exec(host, "ip", &["-o", "addr", "show", "dev", LAB_IFACE])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| l.contains(&format!(" {addr}/")))
        .count()
}

fn udp_listener(lab: &Lab, host: Host, addr: IpAddr) -> UdpSocket {
    let socket = lab
        .run_in(host, || UdpSocket::bind((addr, 0)))
        .unwrap()
        .unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    socket
}

fn send_udp(lab: &Lab, from: Host, to: SocketAddr, payload: &[u8]) {
    lab.run_in(from, || {
        let socket = UdpSocket::bind((IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0)).unwrap();
        socket.send_to(payload, to).unwrap();
    })
    .unwrap();
}

/// Whether `listener` receives `payload` (waits at most its read timeout).
fn receives(listener: &UdpSocket, payload: &[u8]) -> bool {
    let mut buf = [0u8; 64];
    match listener.recv_from(&mut buf) {
        Ok((n, _)) => &buf[..n] == payload,
        Err(_) => false,
    }
}

#[test]
fn node1_claims_the_shared_address_and_the_client_hears_node1() {
    let lab = Lab::for_test();
    assert_eq!(claim(&lab, Host::Node1, &shared()), Claim::Added);
    let out = lab
        .exec(Host::Node1, "ip", &["-4", "addr", "show", "dev", LAB_IFACE])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("inet 192.0.2.10/24") && text.contains("secondary eth0\n"),
        "{text}"
    );

    let p = prober(Collect::All);
    let (icmp, arp) = run(&lab, Host::Client, || async move {
        (
            p.icmp(IpAddr::V4(SHARED_ADDR)).await.unwrap(),
            p.arp(LAB_IFACE, SHARED_ADDR).await.unwrap(),
        )
    });
    assert!(icmp.is_answered(), "{icmp}");
    assert_eq!(arp.macs(), [mac(&lab, Host::Node1)], "{arp}");
    // The kernel's own resolution agrees.
    assert_eq!(
        neighbour(&lab, Host::Client, "192.0.2.10"),
        Some(mac(&lab, Host::Node1))
    );
}

#[test]
fn a_takeover_with_announce_moves_the_client_at_once_and_without_it_the_client_stays_stale() {
    let lab = Lab::for_test();
    let spec = shared();
    // node1 is active and the client talks to it.
    claim(&lab, Host::Node1, &spec);
    let on_node1 = udp_listener(&lab, Host::Node1, spec.ip());
    send_udp(
        &lab,
        Host::Client,
        on_node1.local_addr().unwrap(),
        b"to node1",
    );
    assert!(receives(&on_node1, b"to node1"));
    assert_eq!(
        neighbour(&lab, Host::Client, "192.0.2.10"),
        Some(mac(&lab, Host::Node1))
    );

    // Takeover: node1 releases, node2 claims and announces.
    assert_eq!(
        release(&lab, Host::Node1, &spec),
        Release::Removed { copies: 1 }
    );
    assert_eq!(claim(&lab, Host::Node2, &spec), Claim::Added);
    announce(&lab, Host::Node2, &spec);
    // The client did nothing, yet its cache names node2 ...
    assert_eq!(
        neighbour(&lab, Host::Client, "192.0.2.10"),
        Some(mac(&lab, Host::Node2))
    );
    // ... and its next datagram to the shared address reaches node2.
    let on_node2 = udp_listener(&lab, Host::Node2, spec.ip());
    send_udp(
        &lab,
        Host::Client,
        on_node2.local_addr().unwrap(),
        b"to node2",
    );
    assert!(
        receives(&on_node2, b"to node2"),
        "the client's traffic did not reach node2"
    );

    // Takeover back without the announcement: the client keeps node2's
    // hardware address, so its traffic would go to the node that let go.
    release(&lab, Host::Node2, &spec);
    claim(&lab, Host::Node1, &spec);
    assert_eq!(
        neighbour(&lab, Host::Client, "192.0.2.10"),
        Some(mac(&lab, Host::Node2)),
        "without an announcement the client's entry must still be stale"
    );
    // The announcement is what fixes it.
    announce(&lab, Host::Node1, &spec);
    assert_eq!(
        neighbour(&lab, Host::Client, "192.0.2.10"),
        Some(mac(&lab, Host::Node1))
    );
}

#[test]
fn an_ipv6_takeover_moves_the_client_with_an_unsolicited_advertisement() {
    let lab = Lab::up(LabConfig {
        ipv6: true,
        ..LabConfig::default()
    })
    .unwrap();
    let spec = shared_v6();
    assert_eq!(claim(&lab, Host::Node1, &spec), Claim::Added);
    let p = prober(Collect::First);
    let icmp = run(&lab, Host::Client, || async move {
        p.icmp(SHARED_V6.parse().unwrap()).await.unwrap()
    });
    assert!(icmp.is_answered(), "{icmp}");
    assert_eq!(
        neighbour(&lab, Host::Client, SHARED_V6),
        Some(mac(&lab, Host::Node1))
    );

    release(&lab, Host::Node1, &spec);
    claim(&lab, Host::Node2, &spec);
    assert_eq!(
        neighbour(&lab, Host::Client, SHARED_V6),
        Some(mac(&lab, Host::Node1)),
        "stale before the announcement"
    );
    announce(&lab, Host::Node2, &spec);
    assert_eq!(
        neighbour(&lab, Host::Client, SHARED_V6),
        Some(mac(&lab, Host::Node2))
    );
    let again = run(&lab, Host::Client, || async move {
        p.icmp(SHARED_V6.parse().unwrap()).await.unwrap()
    });
    assert!(again.is_answered(), "{again}");
}

#[test]
fn node2_probing_tells_node1_holds_it_from_nobody_holds_it() {
    let lab = Lab::for_test();
    let probe = |p: Prober| {
        move || async move { p.address(LAB_IFACE, IpAddr::V4(SHARED_ADDR)).await.unwrap() }
    };
    let nobody = run(&lab, Host::Node2, probe(quick()));
    assert!(nobody.is_silent(), "{nobody}");

    claim(&lab, Host::Node1, &shared());
    let held = run(&lab, Host::Node2, probe(prober(Collect::All)));
    assert!(held.is_answered(), "{held}");
    assert_eq!(held.macs(), [mac(&lab, Host::Node1)], "{held}");

    release(&lab, Host::Node1, &shared());
    let released = run(&lab, Host::Node2, probe(quick()));
    assert!(released.is_silent(), "{released}");
}

#[test]
fn both_nodes_claiming_at_once_is_a_conflict_the_arp_probe_reports() {
    let lab = Lab::for_test();
    let spec = shared();
    std::thread::scope(|s| {
        let one = s.spawn(|| claim(&lab, Host::Node1, &spec));
        let two = s.spawn(|| claim(&lab, Host::Node2, &spec));
        assert_eq!(one.join().unwrap(), Claim::Added);
        assert_eq!(two.join().unwrap(), Claim::Added);
    });
    let p = prober(Collect::All);
    let seen = run(&lab, Host::Client, || async move {
        p.arp(LAB_IFACE, SHARED_ADDR).await.unwrap()
    });
    let mut macs = seen.macs();
    macs.sort();
    let mut both = vec![mac(&lab, Host::Node1), mac(&lab, Host::Node2)];
    both.sort();
    assert_eq!(macs, both, "{seen}");
    // What each active node acts on: another hardware address answers for its address.
    for (me, other) in [(Host::Node1, Host::Node2), (Host::Node2, Host::Node1)] {
        let seen = run(&lab, me, || async move {
            p.arp(LAB_IFACE, SHARED_ADDR).await.unwrap()
        });
        assert_eq!(seen.macs(), [mac(&lab, other)], "{me}: {seen}");
    }
}

#[test]
fn repeated_claims_and_releases_leave_exactly_one_or_zero_copies() {
    let lab = Lab::up(LabConfig {
        ipv6: true,
        ..LabConfig::default()
    })
    .unwrap();
    for (spec, text) in [(shared(), "192.0.2.10"), (shared_v6(), SHARED_V6)] {
        let claims = run(&lab, Host::Node1, || async {
            let ifs = Interfaces::new().unwrap();
            let mut claims = Vec::new();
            for _ in 0..3 {
                claims.push(ifs.claim(&spec).await.unwrap());
            }
            let listed = ifs.addresses(LAB_IFACE).await.unwrap();
            (
                claims,
                listed.iter().filter(|a| a.addr == spec.addr).count(),
            )
        });
        assert_eq!(
            claims.0,
            [Claim::Added, Claim::AlreadyHeld, Claim::AlreadyHeld],
            "{text}"
        );
        assert_eq!(claims.1, 1, "{text}: addresses() lists one copy");
        assert_eq!(copies(&lab, Host::Node1, text), 1, "{text}");

        let releases = run(&lab, Host::Node1, || async {
            let ifs = Interfaces::new().unwrap();
            let mut releases = Vec::new();
            for _ in 0..2 {
                releases.push(ifs.release(&spec).await.unwrap());
            }
            releases
        });
        assert_eq!(
            releases,
            [Release::Removed { copies: 1 }, Release::NotHeld],
            "{text}"
        );
        assert_eq!(copies(&lab, Host::Node1, text), 0, "{text}");
    }
    // The node address was never touched.
    assert_eq!(copies(&lab, Host::Node1, "192.0.2.11"), 1);
}

#[test]
fn a_claim_with_another_prefix_is_refused_with_the_fix() {
    let lab = Lab::for_test();
    claim(&lab, Host::Node1, &shared());
    let other = AddressSpec::shared("192.0.2.10/25".parse().unwrap(), LAB_IFACE);
    let err = run(&lab, Host::Node1, || async {
        Interfaces::new().unwrap().claim(&other).await.unwrap_err()
    });
    assert!(
        matches!(
            err,
            Error::HeldWithOtherPrefix {
                held: 24,
                wanted: 25,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("ip addr del 192.0.2.10/24 dev eth0"),
        "{err}"
    );
    assert_eq!(copies(&lab, Host::Node1, "192.0.2.10"), 1);
}

#[test]
fn a_missing_interface_and_an_unheld_announcement_are_errors_that_say_what_to_do() {
    let lab = Lab::for_test();
    let (missing, unheld) = run(&lab, Host::Node2, || async {
        let ifs = Interfaces::new().unwrap();
        let spec = AddressSpec::shared("192.0.2.10/24".parse().unwrap(), "eth7");
        (
            ifs.claim(&spec).await.unwrap_err(),
            ifs.announce(IpAddr::V4(SHARED_ADDR), LAB_IFACE, once())
                .await
                .unwrap_err(),
        )
    });
    assert!(
        matches!(&missing, Error::NoSuchInterface { name } if name == "eth7"),
        "{missing}"
    );
    assert!(missing.to_string().contains("ip link show"), "{missing}");
    assert!(matches!(unheld, Error::NotHeld { .. }), "{unheld}");
    assert!(unheld.to_string().contains("claim it first"), "{unheld}");
}

#[test]
fn the_node_address_gets_its_label_and_default_route_and_survives_the_shared_address() {
    let lab = Lab::up(LabConfig {
        node_addresses: false,
        ..LabConfig::default()
    })
    .unwrap();
    let node = AddressSpec::node("192.0.2.11/24".parse().unwrap(), LAB_IFACE);
    let gateway = Some(IpAddr::V4(GATEWAY_ADDR));
    // The shared address comes first here, so it is the primary address ...
    claim(&lab, Host::Node1, &shared());
    let configured = run(&lab, Host::Node1, || async {
        let ifs = Interfaces::new().unwrap();
        let first = ifs.configure_node_address(&node, gateway).await.unwrap();
        let second = ifs.configure_node_address(&node, gateway).await.unwrap();
        (first, second)
    });
    assert_eq!(
        configured.0,
        NodeAddress {
            address: Claim::Added,
            default_route: true
        }
    );
    assert_eq!(
        configured.1,
        NodeAddress {
            address: Claim::AlreadyHeld,
            default_route: true
        }
    );
    let out = lab
        .exec(Host::Node1, "ip", &["-4", "addr", "show", "dev", LAB_IFACE])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("192.0.2.11/24") && text.contains("eth0:0"),
        "{text}"
    );
    let out = lab
        .exec(Host::Node1, "ip", &["route", "show", "default"])
        .unwrap();
    let routes = String::from_utf8_lossy(&out.stdout);
    assert_eq!(routes.lines().count(), 1, "{routes}");
    assert!(
        routes.contains("default via 192.0.2.1 dev eth0"),
        "{routes}"
    );
    // ... and releasing it must not take the node address with it.
    release(&lab, Host::Node1, &shared());
    assert_eq!(
        copies(&lab, Host::Node1, "192.0.2.11"),
        1,
        "the node address went with the shared one"
    );
    assert!(lab.can_reach(Host::Client, Host::Node1).unwrap());
}

#[test]
fn a_gateway_outside_the_node_subnet_is_refused_with_the_reason() {
    let lab = Lab::up(LabConfig {
        node_addresses: false,
        ..LabConfig::default()
    })
    .unwrap();
    let node = AddressSpec::node("192.0.2.11/28".parse().unwrap(), LAB_IFACE);
    let err = run(&lab, Host::Node1, || async {
        let ifs = Interfaces::new().unwrap();
        ifs.configure_node_address(&node, Some("192.0.2.100".parse().unwrap()))
            .await
            .unwrap_err()
    });
    assert!(matches!(err, Error::Gateway { .. }), "{err}");
    assert!(err.to_string().contains("must lie in the subnet"), "{err}");
}

#[test]
fn link_state_follows_the_cable() {
    let lab = Lab::for_test();
    let state = || {
        run(&lab, Host::Node1, || async {
            Interfaces::new()
                .unwrap()
                .link_state(LAB_IFACE)
                .await
                .unwrap()
        })
    };
    let up = state();
    assert!(up.is_usable() && up.oper == OperState::Up, "{up:?}");
    assert_eq!(up.mac, Some(mac(&lab, Host::Node1)));
    lab.cut(Host::Node1).unwrap();
    let cut = state();
    assert!(cut.admin_up && !cut.carrier && !cut.is_usable(), "{cut:?}");
    // veth reports Down, physical NICs LowerLayerDown: either way, not Up.
    assert!(
        matches!(cut.oper, OperState::Down | OperState::LowerLayerDown),
        "{cut:?}"
    );
    lab.restore(Host::Node1).unwrap();
    assert!(state().carrier);
}

/// Set in the child process of the permission test.
const CHILD: &str = "TANDEM_NETIF_WITHOUT_CAP_NET_ADMIN";

#[test]
fn without_cap_net_admin_a_claim_fails_naming_the_capability() {
    if std::env::var_os(CHILD).is_some() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt.block_on(async {
            Interfaces::new()
                .unwrap()
                .claim(&shared())
                .await
                .unwrap_err()
        });
        assert!(matches!(err, Error::NotPermitted { .. }), "{err:?}");
        println!("child saw: {err}");
        return;
    }
    let lab = Lab::for_test();
    let out = lab
        .command(Host::Node1, "setpriv")
        .args(["--bounding-set", "-net_admin", "--inh-caps", "-net_admin"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "without_cap_net_admin_a_claim_fails_naming_the_capability",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
        .expect("this test needs setpriv (Debian package util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("child saw: ") && stdout.contains("CAP_NET_ADMIN"),
        "{stdout}"
    );
    assert_eq!(copies(&lab, Host::Node1, "192.0.2.10"), 0);
}
