//! `failover set-deployment`, `set-server`, `status`, `keygen` and `agent` run as
//! an operator runs them, inside the lab's node namespaces.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tandem_lab::{Host, Lab, LabConfig};

const BIN: &str = env!("CARGO_BIN_EXE_failover");

struct Site {
    lab: Lab,
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let config = LabConfig {
            node_addresses: false,
            ..LabConfig::default()
        };
        let lab =
            Lab::up(config).unwrap_or_else(|e| panic!("this test needs the namespace lab: {e}"));
        Site {
            lab,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn paths(&self, host: Host) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join(format!("{host}.toml")),
            self.dir.path().join(host.name()),
        )
    }

    fn failover(&self, host: Host, args: &[&str]) -> Output {
        let (config, state) = self.paths(host);
        self.lab
            .command(host, BIN)
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn set_deployment(&self, host: Host) -> Output {
        let (id, own, peer) = match host {
            Host::Node1 => ("1", "192.0.2.11/24", "192.0.2.12"),
            _ => ("2", "192.0.2.12/24", "192.0.2.11"),
        };
        let name = format!("meetings{id}.lab.test");
        self.failover(
            host,
            &[
                "set-deployment",
                "failover",
                "--node-id",
                id,
                "--node-address",
                own,
                "--gateway",
                "192.0.2.1",
                "--hostname",
                &name,
                "--shared-address",
                "192.0.2.10/24",
                "--peer-address",
                peer,
            ],
        )
    }

    fn holds_shared(&self, host: Host) -> bool {
        let out = self
            .lab
            .exec(host, "ip", &["-4", "-br", "addr", "show", "dev", "eth0"])
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("192.0.2.10/24")
    }

    fn status_json(&self, host: Host) -> serde_json::Value {
        let out = self.failover(host, &["status", "--json"]);
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn set_deployment_configures_the_node_address_and_leaves_the_node_standby() {
    let site = Site::new();
    let out = site.set_deployment(Host::Node1);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("standby until `failover set-server active`"),
        "{}",
        text(&out)
    );
    let addr = site
        .lab
        .exec(Host::Node1, "ip", &["-4", "addr", "show", "dev", "eth0"])
        .unwrap();
    let addr = String::from_utf8_lossy(&addr.stdout);
    assert!(
        addr.contains("192.0.2.11/24") && addr.contains("eth0:0"),
        "{addr}"
    );
    let route = site
        .lab
        .exec(Host::Node1, "ip", &["route", "show", "default"])
        .unwrap();
    assert!(String::from_utf8_lossy(&route.stdout).contains("via 192.0.2.1"));
    let status = site.status_json(Host::Node1);
    assert_eq!(status["state"]["deployment"], "failover");
    assert_eq!(status["state"]["standby_hold"], true);

    // Bad input: a clear error, and the config written before stays as it was.
    let (config, _) = site.paths(Host::Node1);
    let before = std::fs::read(&config).unwrap();
    let bad = site.failover(
        Host::Node1,
        &[
            "set-deployment",
            "failover",
            "--gateway",
            "198.51.100.1",
            "--no-prompt",
        ],
    );
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(text(&bad).contains("network.gateway"), "{}", text(&bad));
    assert_eq!(std::fs::read(&config).unwrap(), before);

    // Nothing to ask on and nothing given: the error names the flag.
    let fresh = site.failover(
        Host::Node2,
        &[
            "set-deployment",
            "failover",
            "--node-id",
            "2",
            "--no-prompt",
        ],
    );
    assert_eq!(fresh.status.code(), Some(1));
    assert!(text(&fresh).contains("--node-address"), "{}", text(&fresh));

    let usage = site.failover(Host::Node1, &["set-deployment", "primary"]);
    assert_eq!(usage.status.code(), Some(2), "{}", text(&usage));
}

#[test]
fn the_seeds_failover_procedure_without_agents() {
    let site = Site::new();
    for host in [Host::Node1, Host::Node2] {
        assert!(site.set_deployment(host).status.success());
    }
    let up = site.failover(Host::Node1, &["setServer", "active"]);
    assert!(up.status.success(), "{}", text(&up));
    assert!(site.holds_shared(Host::Node1));
    let refused = site.failover(Host::Node2, &["set-server", "active"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused).contains("make that node standby first"),
        "{}",
        text(&refused)
    );
    assert!(!site.holds_shared(Host::Node2));

    assert!(
        site.failover(Host::Node1, &["set-server", "standby"])
            .status
            .success()
    );
    let up = site.failover(Host::Node2, &["set-server", "active", "--json"]);
    assert!(up.status.success(), "{}", text(&up));
    let report: serde_json::Value = serde_json::from_slice(&up.stdout).unwrap();
    assert_eq!(report["role"], "active");
    assert!(site.holds_shared(Host::Node2) && !site.holds_shared(Host::Node1));
    let status = text(&site.failover(Host::Node2, &["status"]));
    assert!(
        status.starts_with("Failover deployment. Active server."),
        "{status}"
    );
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("gave up waiting for {what}");
}

fn start_agent(site: &Site, host: Host, key: &Path) -> Agent {
    let (config, state) = site.paths(host);
    let child = site
        .lab
        .command(host, BIN)
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(&state)
        .args(["agent", "--key-file"])
        .arg(key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Agent(child)
}

#[test]
fn the_tools_talk_to_running_agents_and_a_stopped_agent_releases_the_address() {
    let site = Site::new();
    let key = site.dir.path().join("authkey");
    let out = Command::new(BIN)
        .args(["keygen", "--key-file"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success() && text(&out).contains("fingerprint"),
        "{}",
        text(&out)
    );
    let again = Command::new(BIN)
        .args(["keygen", "--key-file"])
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(
        again.status.code(),
        Some(1),
        "keygen must never replace a key"
    );

    for host in [Host::Node1, Host::Node2] {
        assert!(site.set_deployment(host).status.success());
    }
    assert!(
        site.failover(Host::Node1, &["set-server", "active"])
            .status
            .success()
    );
    let _agent1 = start_agent(&site, Host::Node1, &key);
    let mut agent2 = start_agent(&site, Host::Node2, &key);
    // The agents connect; node2 learns node1's claim through the link.
    wait_until("both agents connected", || {
        [Host::Node1, Host::Node2].iter().all(|h| {
            let out = site.failover(*h, &["status", "--json"]);
            out.status.success()
                && serde_json::from_slice::<serde_json::Value>(&out.stdout)
                    .is_ok_and(|s| s["peer"]["connected"] == true)
        })
    });
    assert_eq!(site.status_json(Host::Node1)["state"]["role"], "active");
    // set-server goes through the agents (their lock keeps a second writer out).
    assert!(
        site.failover(Host::Node1, &["set-server", "standby"])
            .status
            .success()
    );
    let up = site.failover(Host::Node2, &["set-server", "active"]);
    assert!(up.status.success(), "{}", text(&up));
    let epoch = site.status_json(Host::Node2)["state"]["epoch"].clone();
    wait_until("node1 learns node2's epoch", || {
        site.status_json(Host::Node1)["state"]["epoch"] == epoch
    });
    assert!(site.holds_shared(Host::Node2));

    // Stopping the active node's agent (SIGTERM, as systemd does) ends it
    // cleanly and takes the shared address down with it.
    nix_kill(agent2.0.id());
    let status = agent2.0.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(
        !site.holds_shared(Host::Node2),
        "a stopped agent must not leave the shared address up"
    );
    let out = site.failover(Host::Node2, &["status"]);
    assert!(text(&out).contains("agent: not running"), "{}", text(&out));
}

fn nix_kill(pid: u32) {
    // `ip netns exec` execs the program, so the child's pid is the agent's.
    let out = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// Per-namespace `/etc/hosts` for `ip netns exec` (it bind-mounts
/// `/etc/netns/<namespace>/hosts` over `/etc/hosts`), removed on drop.
struct NetnsHosts(Vec<PathBuf>);

impl NetnsHosts {
    fn write(site: &Site, entries: &[(Host, &str)]) -> NetnsHosts {
        let mut dirs = Vec::new();
        for (host, text) in entries {
            let dir = Path::new("/etc/netns").join(site.lab.namespace(*host));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("hosts"), text).unwrap();
            dirs.push(dir);
        }
        NetnsHosts(dirs)
    }
}

impl Drop for NetnsHosts {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

const LAB_HOSTS: &str = "127.0.0.1 localhost\n192.0.2.10 meetings.lab.test\n\
                         192.0.2.11 meetings1.lab.test\n192.0.2.12 meetings2.lab.test\n";

/// Two agents running on a site whose nodes have the shared hostname set, each
/// with the `/etc/hosts` given (the agents read it when they start).
fn site_with_agents(hosts: [&str; 2]) -> (Site, PathBuf, Agent, Agent, NetnsHosts) {
    let site = Site::new();
    let hosts = NetnsHosts::write(&site, &[(Host::Node1, hosts[0]), (Host::Node2, hosts[1])]);
    let key = site.dir.path().join("authkey");
    let out = Command::new(BIN)
        .args(["keygen", "--key-file"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    for host in [Host::Node1, Host::Node2] {
        let out = site.set_deployment(host);
        assert!(out.status.success(), "{}", text(&out));
        let out = site.failover(
            host,
            &[
                "set-deployment",
                "failover",
                "--no-prompt",
                "--shared-hostname",
                "meetings.lab.test",
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
    }
    let agent1 = start_agent(&site, Host::Node1, &key);
    let agent2 = start_agent(&site, Host::Node2, &key);
    // Connected, with the clocks compared and the heartbeat datagrams flowing
    // between the node addresses (the lab blocks nothing).
    wait_until("both agents connected", || {
        [Host::Node1, Host::Node2].iter().all(|h| {
            let out = site.failover(*h, &["status", "--json"]);
            out.status.success()
                && serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok_and(|s| {
                    s["peer"]["connected"] == true
                        && !s["peer"]["clock_offset_ms"].is_null()
                        && s["peer"]["datagrams"] == true
                })
        })
    });
    (site, key, agent1, agent2, hosts)
}

fn check_items(out: &Output) -> Vec<(String, String, String)> {
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("check --json printed no JSON ({e}): {}", text(out)));
    report["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["check"].as_str().unwrap().to_owned(),
                i["verdict"].as_str().unwrap().to_owned(),
                i["detail"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn check_reports_the_seeds_prerequisites_through_the_agents() {
    // node2's resolver has the shared name on a wrong address and no node1.
    let (site, _key, _a1, _a2, _hosts) = site_with_agents([
        LAB_HOSTS,
        "127.0.0.1 localhost\n192.0.2.99 meetings.lab.test\n192.0.2.12 meetings2.lab.test\n",
    ]);
    let out = site.failover(Host::Node1, &["check", "--json"]);
    let items = check_items(&out);
    assert!(out.status.success(), "{items:#?}");
    for wanted in [
        "forward DNS meetings.lab.test",
        "reverse DNS 192.0.2.10",
        "forward DNS meetings1.lab.test",
        "reverse DNS 192.0.2.11",
        "forward DNS meetings2.lab.test",
        "reverse DNS 192.0.2.12",
        "clock offset to the peer",
        "heartbeat datagrams",
        "same shared address",
        "distinct node ids",
        "same site",
        "same site key",
    ] {
        let item = items.iter().find(|(c, _, _)| c == wanted);
        assert!(
            item.is_some_and(|(_, v, _)| v == "pass"),
            "{wanted}: {item:?} in {items:#?}"
        );
    }
    // No database yet: said, not failed.
    let db = items.iter().find(|(c, _, _)| c == "database size").unwrap();
    assert_eq!(db.1, "unknown", "{db:?}");
    assert!(db.2.contains("mp_replication init"), "{db:?}");

    let out = site.failover(Host::Node2, &["check"]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.lines().any(|l| l.starts_with("FAIL")
            && l.contains("forward DNS meetings.lab.test")
            && l.contains("not 192.0.2.10")),
        "{report}"
    );
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("FAIL") && l.contains("forward DNS meetings1.lab.test")),
        "{report}"
    );
    assert!(report.contains("checks: "), "{report}");
}

#[test]
fn copy_config_files_reaches_the_standby_over_the_peer_link() {
    let (site, _key, _a1, _a2, _hosts) = site_with_agents([LAB_HOSTS, LAB_HOSTS]);
    for host in [Host::Node1, Host::Node2] {
        let (config, _) = site.paths(host);
        let root = site.dir.path().join(format!("{host}-prompts"));
        std::fs::create_dir_all(&root).unwrap();
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(&format!(
            "\n[bundle]\n\n[[bundle.roots]]\nname = \"prompts\"\npath = \"{}\"\n",
            root.display()
        ));
        std::fs::write(&config, text).unwrap();
    }
    let source = site.dir.path().join("node1-prompts");
    std::fs::write(source.join("welcome.wav"), vec![7u8; 300_000]).unwrap();
    std::fs::create_dir_all(source.join("custom")).unwrap();
    std::fs::write(source.join("custom/bye.wav"), b"RIFF....WAVE").unwrap();

    // Config files go from the active node to the standby.
    let out = site.failover(Host::Node1, &["set-server", "active"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = site.failover(Host::Node1, &["copy-config-files", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let copy: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        copy["sent_to"]
            .as_str()
            .is_some_and(|s| s.starts_with("192.0.2.12:")),
        "{copy}"
    );
    let (_, state2) = site.paths(Host::Node2);
    let incoming = state2.join("incoming/config-files.tar.gz");
    // "Sent" comes only once node2 kept the whole bundle.
    assert!(incoming.exists(), "sent, but node2 has no bundle");
    let out = site.failover(Host::Node2, &["restore-config-files"]);
    assert!(out.status.success(), "{}", text(&out));
    let target = site.dir.path().join("node2-prompts");
    assert_eq!(
        std::fs::read(target.join("welcome.wav")).unwrap(),
        vec![7u8; 300_000]
    );
    assert_eq!(
        std::fs::read(target.join("custom/bye.wav")).unwrap(),
        b"RIFF....WAVE"
    );
}

#[test]
fn copy_config_files_says_what_to_do_when_the_peer_is_down() {
    let site = Site::new();
    let key = site.dir.path().join("authkey");
    assert!(
        Command::new(BIN)
            .args(["keygen", "--key-file"])
            .arg(&key)
            .output()
            .unwrap()
            .status
            .success()
    );
    assert!(site.set_deployment(Host::Node1).status.success());
    let (config, _) = site.paths(Host::Node1);
    let root = site.dir.path().join("prompts");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("a.wav"), b"x").unwrap();
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str(&format!(
        "\n[bundle]\n\n[[bundle.roots]]\nname = \"prompts\"\npath = \"{}\"\n",
        root.display()
    ));
    std::fs::write(&config, toml).unwrap();
    // Only node1's agent runs: the bundle is written, not sent, and the error says so.
    let _agent = start_agent(&site, Host::Node1, &key);
    wait_until("node1's agent", || {
        site.failover(Host::Node1, &["status", "--json"])
            .status
            .success()
    });
    let out = site.failover(Host::Node1, &["set-server", "active"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = site.failover(Host::Node1, &["copy-config-files"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("written but not sent") && said.contains("is not connected"),
        "{said}"
    );
}
