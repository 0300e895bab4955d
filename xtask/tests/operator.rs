//! The operator's path, walked as a new operator walks it from the README and
//! `docs/OPERATIONS.md`: two nodes in the lab without node addresses, each with
//! its own `TANDEM_CONFIG` and `TANDEM_STATE_DIR`, the config that
//! `set-deployment` writes from flags, `[[service]]`, `[hooks]` and
//! `[replication]` blocks appended by hand as text, agents started as processes,
//! and both tools run as an operator types them. No harness writes what an
//! operator would have to write.
//!
//! Each check names the bug of the operator's path it pins (issue 19, items
//! 1-10 and the list below them).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tandem_lab::{Host, Lab, LabConfig};

/// The two binaries, built as `cargo test` builds them.
struct Binaries {
    failover: PathBuf,
    mp_replication: PathBuf,
}

fn build_binaries() -> Binaries {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", "failover", "-p", "mp_replication"])
        .current_dir(root)
        .status()
        .expect("running cargo build");
    assert!(
        status.success(),
        "building failover and mp_replication failed"
    );
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Binaries {
        failover: target.join("debug/failover"),
        mp_replication: target.join("debug/mp_replication"),
    }
}

/// One operator's site: the lab, a directory per node, the agents it started.
struct Site {
    lab: Lab,
    dir: tempfile::TempDir,
    bins: Binaries,
    agents: Vec<(Host, Child)>,
    started: Instant,
}

impl Drop for Site {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for host in [Host::Node1, Host::Node2] {
                eprintln!("--- {host}'s agent log\n{}", self.agent_log(host));
            }
        }
        for (_, agent) in &mut self.agents {
            let _ = agent.kill();
            let _ = agent.wait();
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl Site {
    fn new() -> Site {
        let bins = build_binaries();
        let lab = Lab::up(LabConfig {
            node_addresses: false,
            ..LabConfig::default()
        })
        .unwrap_or_else(|e| panic!("this test needs the namespace lab (root, iproute2): {e}"));
        let dir = tempfile::tempdir().unwrap();
        // Open to every local user, like /etc and /var/lib: what keeps them out
        // of the state must be tandem's own modes.
        let open = |path: &Path| {
            std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        };
        open(dir.path());
        for host in [Host::Node1, Host::Node2] {
            std::fs::create_dir_all(dir.path().join(host.name())).unwrap();
            open(&dir.path().join(host.name()));
        }
        Site {
            lab,
            dir,
            bins,
            agents: Vec::new(),
            started: Instant::now(),
        }
    }

    /// The node's own directory: its config, state and the files its services touch.
    fn node_dir(&self, host: Host) -> PathBuf {
        self.dir.path().join(host.name())
    }

    fn config(&self, host: Host) -> PathBuf {
        self.node_dir(host).join("node.toml")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("authkey")
    }

    /// A tool run in the node's namespace with the operator's environment.
    fn tool(&self, host: Host, program: &Path) -> Command {
        let mut cmd = self.lab.command(host, program.to_str().unwrap());
        cmd.env("TANDEM_CONFIG", self.config(host))
            .env("TANDEM_STATE_DIR", self.node_dir(host).join("state"))
            .stdin(Stdio::null());
        cmd
    }

    fn failover(&self, host: Host, args: &[&str]) -> Output {
        self.step(&format!("{host}: failover {}", args.join(" ")));
        self.tool(host, &self.bins.failover)
            .args(args)
            .output()
            .unwrap()
    }

    fn mp_replication(&self, host: Host, args: &[&str]) -> Output {
        self.step(&format!("{host}: mp_replication {}", args.join(" ")));
        self.tool(host, &self.bins.mp_replication)
            .args(args)
            .output()
            .unwrap()
    }

    fn start_agent(&mut self, host: Host) {
        let log = std::fs::File::create(self.node_dir(host).join("agent.log")).unwrap();
        let child = self
            .tool(host, &self.bins.failover)
            .args(["agent", "--key-file", self.key().to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agents.push((host, child));
    }

    /// Stops the agent as systemd does (SIGTERM) and waits for it.
    fn stop_agent(&mut self, host: Host) {
        let i = self.agents.iter().position(|(h, _)| *h == host).unwrap();
        let (_, mut child) = self.agents.remove(i);
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM the agent of {host}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "the agent of {host} did not stop"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn agent_log(&self, host: Host) -> String {
        std::fs::read_to_string(self.node_dir(host).join("agent.log")).unwrap_or_default()
    }

    /// Runs `sql` on `host`'s replicated database directly (a fault the test
    /// injects, not an operator's step).
    fn sql(&self, host: Host, sql: &str) {
        let settings = <tandem_replication::Settings as tandem_node::LoadSettings>::load(
            &self.config(host),
            true,
            self.node_dir(host).join("state"),
        )
        .unwrap();
        let path = settings.database_path();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use sqlx::ConnectOptions;
            let mut conn = tandem_replication::connect_options(&path)
                .connect()
                .await
                .unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("{sql} on {}: {e}", path.display()));
        });
    }

    fn status(&self, host: Host) -> serde_json::Value {
        let out = self.failover(host, &["status", "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `GET path` on the node's status page, from the client namespace.
    fn page(&self, addr: &str, path: &str) -> Option<String> {
        let addr = format!("{addr}:7450");
        let path = path.to_owned();
        self.lab
            .run_in(Host::Client, move || {
                let mut stream = std::net::TcpStream::connect_timeout(
                    &addr.parse().unwrap(),
                    Duration::from_secs(2),
                )
                .ok()?;
                stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
                write!(
                    stream,
                    "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
                .ok()?;
                let mut body = String::new();
                stream.read_to_string(&mut body).ok()?;
                Some(body)
            })
            .ok()
            .flatten()
    }

    /// Notes a step with the time since the start (shown when the test fails).
    fn step(&self, what: &str) {
        eprintln!("{:>8.2?} {what}", self.started.elapsed());
    }

    fn wait_until(&self, what: &str, mut check: impl FnMut() -> bool) {
        self.step(&format!("waiting until {what}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !check() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting until {what}\n--- node1 agent\n{}\n--- node2 agent\n{}",
                self.agent_log(Host::Node1),
                self.agent_log(Host::Node2)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn exists(&self, host: Host, file: &str) -> bool {
        self.node_dir(host).join(file).exists()
    }
}

/// What the operator appends to the file `set-deployment` wrote: the seed's
/// services (the database stand-in runs on both nodes, the application on the
/// active one), notify hooks and the replicated tables.
fn appended(dir: &Path, hostname: &str) -> String {
    let d = dir.display();
    let register = tandem_lab::media::register_command(hostname);
    let unregister = tandem_lab::media::unregister_command(hostname);
    format!(
        r#"
# Added by hand, as docs/OPERATIONS.md shows.
[[service]]
name = "database"
run_on = "always"
start = "touch {d}/database-running"
stop = "rm -f {d}/database-running"

[[service]]
name = "meetingplace"
run_on = "active"
start = "touch {d}/app-running"
stop = "rm -f {d}/app-running"

# The seed: one Media Server always goes with the active Application Server.
[[service]]
name = "media-server"
run_on = "active"
start = {register:?}
stop = {unregister:?}

[hooks]
active = "echo active >> {d}/hooks.log"
standby = "echo standby >> {d}/hooks.log"

[replication]
sample_schema = true

[[bundle.roots]]
name = "enrollment"
path = "{d}/enrollment"
"#
    )
}

#[test]
fn an_operator_sets_up_a_site_by_hand_and_runs_the_seed_procedures() {
    let mut site = Site::new();
    let key = site.key();

    // `--help` shows the seed's camelCase names beside the commands.
    for (program, names) in [
        (
            &site.bins.failover,
            &[
                "setDeployment",
                "setServer",
                "copyConfigFiles",
                "restoreConfigFiles",
            ][..],
        ),
        (&site.bins.mp_replication, &["switchON", "switchOFF"][..]),
    ] {
        let help = Command::new(program).arg("--help").output().unwrap();
        for name in names {
            assert!(
                text(&help).contains(name),
                "{name} missing from --help:\n{}",
                text(&help)
            );
        }
    }

    // The site key: made once, the same file for both nodes.
    let out = Command::new(&site.bins.failover)
        .args(["keygen", "--key-file", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    // set-deployment as the seed's prompts ask: node 1 with a plain address and a
    // dotted mask, node 2 with IP/prefix; a plain shared address takes the mask.
    let node1 = site.failover(
        Host::Node1,
        &[
            "set-deployment",
            "failover",
            "--no-prompt",
            "--node-id",
            "1",
            "--node-address",
            "192.0.2.11",
            "--netmask",
            "255.255.255.0",
            "--gateway",
            "192.0.2.1",
            "--hostname",
            "meetings1.lab.test",
            "--shared-hostname",
            "meetings.lab.test",
            "--shared-address",
            "192.0.2.10",
            "--peer-address",
            "192.0.2.12",
        ],
    );
    assert!(node1.status.success(), "{}", text(&node1));
    let node2 = site.failover(
        Host::Node2,
        &[
            "setDeployment",
            "failover",
            "--no-prompt",
            "--node-id",
            "2",
            "--node-address",
            "192.0.2.12/24",
            "--gateway",
            "192.0.2.1",
            "--hostname",
            "meetings2.lab.test",
            "--shared-address",
            "192.0.2.10/24",
            "--peer-address",
            "192.0.2.11",
        ],
    );
    assert!(node2.status.success(), "{}", text(&node2));

    // Bug 3: the written file takes appended `[[service]]` and `[hooks]` blocks.
    for host in [Host::Node1, Host::Node2] {
        let written = std::fs::read_to_string(site.config(host)).unwrap();
        assert!(!written.contains("service = []"), "{written}");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(site.config(host))
            .unwrap();
        let hostname = format!("meetings{}.lab.test", &host.name()[4..]);
        file.write_all(appended(&site.node_dir(host), &hostname).as_bytes())
            .unwrap();
        // Bug 2: the hooks keep their time limit (the checks run the config's loader).
        let config = tandem_node::NodeConfig::load(site.config(host))
            .unwrap_or_else(|e| panic!("{host}: the appended config does not load: {e}"));
        assert_eq!(config.hooks.timeout_ms, 10_000);
        assert_eq!(config.services.len(), 3);
    }

    let media = tandem_lab::media::MediaServer::start(&site.lab).unwrap();
    site.start_agent(Host::Node1);
    site.start_agent(Host::Node2);

    // Bug 1: the "always" services run on both nodes, the standby too; the
    // application on neither while both are held standby.
    site.wait_until("the always-running services run on both nodes", || {
        site.exists(Host::Node1, "database-running") && site.exists(Host::Node2, "database-running")
    });
    assert!(!site.exists(Host::Node1, "app-running"));
    assert!(!site.exists(Host::Node2, "app-running"));

    // The seed's steps 11-13 on the held standbys: init on both, then switch-on
    // at once (bug 6: it waits for the agent's replication service instead of
    // failing).
    for (host, n, remote) in [
        (Host::Node1, "1", "192.0.2.12"),
        (Host::Node2, "2", "192.0.2.11"),
    ] {
        let out = site.mp_replication(host, &["init", "-n", n, "-r", remote]);
        assert!(out.status.success(), "{host}: {}", text(&out));
        // Bug 9: TANDEM_CONFIG is honoured: the seed's line names the node's host.
        let name = format!("meetings{n}.lab.test");
        assert!(
            text(&out).contains(&format!("Host = {name}")),
            "{}",
            text(&out)
        );
    }
    let out = site.mp_replication(Host::Node1, &["switchON"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("is SUCCESSFUL"), "{}", text(&out));

    // The seed's step 14: `setServer active` on node 1, once replication is on.
    let out = site.failover(Host::Node1, &["set-server", "active"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(site.exists(Host::Node1, "app-running"));
    // Bug 2: the notify hook ran to its end instead of being killed at once.
    site.wait_until("node 1's active hook wrote its line", || {
        std::fs::read_to_string(site.node_dir(Host::Node1).join("hooks.log"))
            .is_ok_and(|log| log.contains("active"))
    });
    assert!(!site.agent_log(Host::Node1).contains("was killed"));
    // The Media Server rule: registered with the active node.
    assert_eq!(
        media.registrations().current.as_deref(),
        Some("meetings1.lab.test")
    );

    // Bug 4: the role's view of replication agrees with mp_replication's.
    site.wait_until("both nodes' status says replication is on", || {
        [Host::Node1, Host::Node2]
            .iter()
            .all(|&h| site.status(h)["state"]["replication"] == "on")
    });

    // Bug 5: the standby's page stays fresh and shows replication switched on,
    // also after a quiet spell with no event to republish it.
    std::thread::sleep(Duration::from_secs(4));
    let deadline = Instant::now() + Duration::from_millis(1500);
    site.wait_until("the standby's /status.json is fresh", || {
        assert!(Instant::now() < deadline, "the standby's page went stale");
        let Some(page) = site.page("192.0.2.12", "/status.json") else {
            return false;
        };
        let Some(json) = page.split("\r\n\r\n").nth(1) else {
            return false;
        };
        let Ok(json) = serde_json::from_str::<serde_json::Value>(json) else {
            return false;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let taken = json["taken_ms"].as_u64().unwrap_or(0);
        now.saturating_sub(taken) < 3_000 && json["state"]["replication"] == "on"
    });

    // Writes on the active reach the standby.
    let out = site.mp_replication(
        Host::Node1,
        &["write-sample", "--count", "5", "--wait-replicated"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let sums = |h| text(&site.mp_replication(h, &["checksum"]));
    assert_eq!(sums(Host::Node1), sums(Host::Node2));

    // RELIABILITY.md finding 27: a standby whose database does not apply the
    // active node's changes refuses `failover switchover` before the active node
    // is asked to stand down, and says what to do. The fault: node 2's database
    // refuses every new meeting, as a full disk refuses every page.
    site.sql(
        Host::Node2,
        "CREATE TRIGGER refuse BEFORE INSERT ON meetings \
         BEGIN SELECT RAISE(ABORT, 'database or disk is full (test trigger)'); END",
    );
    let out = site.mp_replication(
        Host::Node1,
        &["write-sample", "--first", "100", "--count", "1"],
    );
    assert!(out.status.success(), "{}", text(&out));
    // As soon as the database's own status says so: the agent reads it at the
    // request, not from its latest watch of the database (up to a second old).
    site.wait_until("node 2's status says its database does not apply", || {
        let status = text(&site.mp_replication(Host::Node2, &["status"]));
        status.contains("Local:") && status.contains("disk is full")
    });
    let out = site.failover(Host::Node2, &["switchover"]);
    assert!(!out.status.success(), "{}", text(&out));
    for words in [
        "not ready to take over",
        "disk is full",
        "`failover set-server standby` on the peer",
    ] {
        assert!(
            text(&out).contains(words),
            "{words:?} missing: {}",
            text(&out)
        );
    }
    assert_eq!(site.status(Host::Node1)["state"]["role"], "active");
    assert_eq!(site.status(Host::Node2)["state"]["role"], "standby");
    // Once the database takes the changes again, node 2 catches up by itself.
    site.sql(Host::Node2, "DROP TRIGGER refuse");
    site.wait_until("node 2 catches up once its database applies again", || {
        sums(Host::Node1) == sums(Host::Node2)
    });

    // Bug 10: a closed pipe ends the tools quietly.
    for program in [&site.bins.failover, &site.bins.mp_replication] {
        let name = program.file_name().unwrap().to_str().unwrap().to_owned();
        let args = if name == "failover" {
            "status"
        } else {
            "checksum"
        };
        let out = site
            .lab
            .command(Host::Node1, "sh")
            .arg("-c")
            .arg(format!("{} {args} | head -c 1", program.display()))
            .env("TANDEM_CONFIG", site.config(Host::Node1))
            .env("TANDEM_STATE_DIR", site.node_dir(Host::Node1).join("state"))
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("panicked"),
            "{name} {args} | head: {}",
            text(&out)
        );
    }

    // Bug 8: config files go from the active to the standby only.
    let out = site.failover(Host::Node2, &["copy-config-files"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("this node is the standby"),
        "{}",
        text(&out)
    );
    let out = site.failover(Host::Node1, &["restore-config-files"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("this node is the active server"),
        "{}",
        text(&out)
    );

    // Copying the config files: node 1's enrollment directory, with its 0600
    // site key, reaches node 2 only once node 2 kept it whole and verified it,
    // and no other local user can read the received bundle or the state.
    let enrollment = site.node_dir(Host::Node1).join("enrollment");
    std::fs::create_dir_all(&enrollment).unwrap();
    std::fs::write(enrollment.join("site.key"), "secret\n").unwrap();
    std::fs::set_permissions(
        enrollment.join("site.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    std::fs::create_dir_all(site.node_dir(Host::Node2).join("enrollment")).unwrap();
    let out = site.failover(Host::Node1, &["copyConfigFiles"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Sent to the standby"), "{}", text(&out));
    let incoming = site
        .node_dir(Host::Node2)
        .join("state/incoming/config-files.tar.gz");
    assert!(
        incoming.exists(),
        "the standby kept the bundle before `Sent`"
    );
    for secret in [
        incoming.clone(),
        site.node_dir(Host::Node2).join("state"),
        site.node_dir(Host::Node1).join("state"),
    ] {
        let probe = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args(["sh", "-c", "cat \"$1\" || ls \"$1\"", "probe"])
            .arg(&secret)
            .output()
            .unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&secret).unwrap().permissions(),
        );
        assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", secret.display());
        assert!(
            !probe.status.success(),
            "an unprivileged user could read {}: {}",
            secret.display(),
            text(&probe)
        );
    }
    let out = site.failover(Host::Node2, &["restoreConfigFiles"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(site.node_dir(Host::Node2).join("enrollment/site.key")).unwrap(),
        "secret\n"
    );

    // A refused `set-deployment single` on the standby changes nothing.
    let out = site.failover(Host::Node2, &["set-deployment", "single"]);
    assert!(!out.status.success(), "{}", text(&out));
    let status = site.status(Host::Node2);
    assert_eq!(status["state"]["deployment"], "failover", "{status}");
    assert_eq!(status["state"]["role"], "standby", "{status}");

    // The status page answers on the shared address on the active node.
    let page = site
        .page("192.0.2.10", "/")
        .expect("the shared address's page");
    assert!(
        page.contains("Failover deployment. Active server."),
        "{page}"
    );

    // Alarms clear when their condition clears: a cut cable raises "peer lost"
    // on node 2; once it is back the alarm moves to the history.
    site.lab.cut(Host::Node1).unwrap();
    site.wait_until("node 2 raised the peer-lost alarm", || {
        site.status(Host::Node2)["alarms"]
            .as_array()
            .is_some_and(|a| {
                a.iter()
                    .any(|a| a["message"].as_str().unwrap_or("").starts_with("peer lost"))
            })
    });
    site.lab.restore(Host::Node1).unwrap();
    site.wait_until("node 2's peer-lost alarm cleared", || {
        let status = site.status(Host::Node2);
        let active = status["alarms"].as_array().cloned().unwrap_or_default();
        let history = status["alarm_history"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        !active
            .iter()
            .any(|a| a["message"].as_str().unwrap_or("").starts_with("peer lost"))
            && history
                .iter()
                .any(|a| a["message"].as_str().unwrap_or("").starts_with("peer lost"))
    });
    assert_eq!(site.status(Host::Node1)["state"]["role"], "active");

    // The seed's planned failover: standby on node 1, then active on node 2.
    let out = site.failover(Host::Node1, &["setServer", "standby"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = site.failover(Host::Node2, &["set-server", "active"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!site.exists(Host::Node1, "app-running"));
    assert!(site.exists(Host::Node2, "app-running"));
    assert!(
        site.exists(Host::Node1, "database-running"),
        "always services stay up"
    );
    let seen = media.registrations();
    assert_eq!(
        seen.current.as_deref(),
        Some("meetings2.lab.test"),
        "{seen:?}"
    );
    // Each boot stops the active-only services first ("eth0 is initially
    // disabled"): those unregister nobody. From then on the registration
    // follows the role.
    let followed: Vec<&String> = seen
        .log
        .iter()
        .skip_while(|l| l.starts_with("unregister"))
        .collect();
    assert_eq!(
        followed,
        [
            "register meetings1.lab.test",
            "unregister meetings1.lab.test",
            "register meetings2.lab.test"
        ]
    );

    // Back in one command on node 1 (`switchover`): node 2's agent stands down
    // and node 1 takes over when it hears the release.
    let out = site.failover(Host::Node1, &["switchover"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("switchover: this node is active"),
        "{}",
        text(&out)
    );
    // The report has node 2's own steps too, after the wait for it.
    for step in [
        "peer-stood-down",
        "peer: release-shared-address",
        "claim-shared-address",
    ] {
        assert!(text(&out).contains(step), "no {step:?} in\n{}", text(&out));
    }
    assert!(site.exists(Host::Node1, "app-running"));
    assert!(!site.exists(Host::Node2, "app-running"));
    assert_eq!(site.status(Host::Node2)["state"]["role"], "standby");
    assert_eq!(
        media.registrations().current.as_deref(),
        Some("meetings1.lab.test")
    );
    // On the active node there is nothing to hand over: refused, saying why.
    let out = site.failover(Host::Node1, &["switchover"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("already active"), "{}", text(&out));

    // Agents that stop take their services with them.
    site.stop_agent(Host::Node1);
    site.stop_agent(Host::Node2);
    assert!(!site.exists(Host::Node1, "database-running"));
    assert!(!site.exists(Host::Node2, "database-running"));
    assert!(!site.exists(Host::Node2, "app-running"));
}
