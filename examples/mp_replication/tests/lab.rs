//! `mp_replication` on two nodes of the namespace lab, as real processes over the real
//! peer link: the seed's procedures, 10,000 rows, kill -9 on either side, writes
//! acknowledged with `wait_replicated`, a diverged node rejoining with from-sync, and
//! a peer with the wrong key. Needs root (the lab fails the test otherwise).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tandem_lab::{Host, Lab};
use tandem_replication::{ReplicationConfig, Settings, SqliteBackend, Status, TableChecksum};

const BIN: &str = env!("CARGO_BIN_EXE_mp_replication");

/// A lab site: the namespaces, a directory per node with its config and state, and
/// the service processes (killed on drop, after a panic too).
struct Site {
    lab: Lab,
    dir: tempfile::TempDir,
    services: Vec<(Host, Child)>,
    runtime: tokio::runtime::Runtime,
}

impl Site {
    fn new() -> Site {
        Site::with_keys(false)
    }

    /// With `wrong_key`, node 2 gets a key of its own.
    fn with_keys(wrong_key: bool) -> Site {
        let lab = Lab::for_test();
        let dir = tempfile::tempdir().unwrap();
        tandem_peer::keygen(&dir.path().join("site.key")).unwrap();
        tandem_peer::keygen(&dir.path().join("other.key")).unwrap();
        for (host, id, peer) in [(Host::Node1, 1, Host::Node2), (Host::Node2, 2, Host::Node1)] {
            let key = if wrong_key && id == 2 {
                "other.key"
            } else {
                "site.key"
            };
            let config = format!(
                "[node]\nid = {id}\nhostname = \"{host}\"\n\n\
                 [network]\nnode_address = \"{}/24\"\npeer_address = \"{}\"\n\n\
                 [peer]\nkey_file = \"{}\"\n\n\
                 [replication]\nsample_schema = true\nheartbeat_ms = 200\nmissed_heartbeats = 3\n",
                host.addr(),
                peer.addr(),
                dir.path().join(key).display()
            );
            std::fs::write(dir.path().join(format!("{host}.toml")), config).unwrap();
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Site {
            lab,
            dir,
            services: Vec::new(),
            runtime,
        }
    }

    fn command(&self, host: Host) -> Command {
        let mut cmd = self.lab.command(host, BIN);
        cmd.arg("--config")
            .arg(self.dir.path().join(format!("{host}.toml")))
            .arg("--state-dir")
            .arg(self.state_dir(host));
        cmd
    }

    fn state_dir(&self, host: Host) -> PathBuf {
        self.dir.path().join(host.name())
    }

    /// Runs `mp_replication args...` on `host` to completion.
    fn mp(&self, host: Host, args: &[&str]) -> Output {
        self.command(host).args(args).output().unwrap()
    }

    /// Runs a command that must succeed; its stdout.
    fn mp_text(&self, host: Host, args: &[&str]) -> String {
        let out = self.mp(host, args);
        assert!(
            out.status.success(),
            "mp_replication {args:?} on {host} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command that must succeed and end with the seed's SUCCESSFUL line.
    fn mp_ok(&self, host: Host, args: &[&str]) -> String {
        let out = self.mp(host, args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "mp_replication {args:?} on {host} failed:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let last = text.lines().last().unwrap_or_default();
        let expected = format!(
            "(Host = {}; IP Addr = {}) is SUCCESSFUL",
            host.name(),
            host.addr()
        );
        assert!(
            last.ends_with(&expected),
            "last line of {args:?} on {host}: {last}"
        );
        text
    }

    fn init_both(&self) {
        self.mp_ok(
            Host::Node2,
            &["init", "-n", "2", "-r", &Host::Node1.addr().to_string()],
        );
        self.mp_ok(
            Host::Node1,
            &[
                "init",
                "-n",
                "1",
                "-r",
                &Host::Node2.addr().to_string(),
                "-v",
            ],
        );
    }

    fn log(&self, host: Host) -> PathBuf {
        self.dir.path().join(format!("{host}-service.log"))
    }

    /// Starts `mp_replication service` on `host` and waits until it holds its lock.
    fn start_service(&mut self, host: Host) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(host))
            .unwrap();
        let child = self
            .command(host)
            .arg("service")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.services.push((host, child));
        let backend = self.backend(host);
        self.wait(&format!("the service on {host} to start"), || {
            backend.service_running()
        });
    }

    /// kill -9 of the service on `host`.
    fn kill_service(&mut self, host: Host) {
        let i = self.services.iter().position(|(h, _)| *h == host).unwrap();
        let (_, mut child) = self.services.remove(i);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// The node's database, opened from the test process.
    fn backend(&self, host: Host) -> SqliteBackend {
        let cfg = ReplicationConfig {
            sample_schema: true,
            ..ReplicationConfig::default()
        };
        let settings = Settings::new(self.state_dir(host), cfg);
        self.runtime
            .block_on(SqliteBackend::open(&settings))
            .unwrap()
    }

    fn status(&self, host: Host) -> Status {
        let out = self.mp(host, &["status", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn checksums(&self, host: Host) -> Vec<TableChecksum> {
        let b = self.backend(host);
        let sums = self.runtime.block_on(b.table_checksums()).unwrap();
        self.runtime.block_on(b.close());
        sums
    }

    /// Polls `check` every 20 ms for at most 60 s.
    fn wait(&self, what: &str, mut check: impl FnMut() -> bool) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if check() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("timed out waiting for {what}\n{}", self.logs());
    }

    /// Waits until node 2 applied everything node 1 wrote (or the other way round).
    fn wait_caught_up(&self, active: Host, standby: Host) {
        let a = self.backend(active);
        let s = self.backend(standby);
        self.wait(&format!("{standby} to catch up with {active}"), || {
            let head = self.runtime.block_on(a.head()).unwrap();
            let st = self
                .runtime
                .block_on(tandem_replication::ReplicationBackend::status(&s))
                .unwrap();
            st.applied == head
        });
    }

    /// The position of the peer's changelog applied on `host`.
    fn applied(&self, host: Host) -> u64 {
        let b = self.backend(host);
        let st = self
            .runtime
            .block_on(tandem_replication::ReplicationBackend::status(&b))
            .unwrap();
        self.runtime.block_on(b.close());
        st.applied.0
    }

    fn logs(&self) -> String {
        [Host::Node1, Host::Node2]
            .iter()
            .map(|h| {
                let text = std::fs::read_to_string(self.log(*h)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                format!(
                    "--- {h} service log (last lines) ---\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The seed's two-newly-installed procedure: init on both, switchON on node 1, node 1
    /// becomes active.
    fn replicate(&mut self) {
        self.init_both();
        self.start_service(Host::Node1);
        self.start_service(Host::Node2);
        self.mp_ok(Host::Node1, &["switchON", "-v"]);
        self.mp_ok(Host::Node1, &["promote"]);
    }

    fn write(&self, host: Host, first: u64, count: u64, rows: u32) {
        let (f, c, r) = (first.to_string(), count.to_string(), rows.to_string());
        let out = self.mp(
            host,
            &["write-sample", "--first", &f, "--count", &c, "--rows", &r],
        );
        assert!(
            out.status.success(),
            "write-sample on {host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        for (_, child) in &mut self.services {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

fn rows(sums: &[TableChecksum]) -> u64 {
    sums.iter().map(|s| s.rows).sum()
}

#[test]
fn ten_thousand_rows_written_on_node_1_arrive_identical_on_node_2() {
    let mut site = Site::new();
    site.replicate();
    // 500 transactions of 20 rows over the three tables (with updates and deletes).
    site.write(Host::Node1, 1, 500, 20);
    site.wait_caught_up(Host::Node1, Host::Node2);
    let (a, b) = (site.checksums(Host::Node1), site.checksums(Host::Node2));
    assert_eq!(a, b);
    assert!(rows(&a) >= 9_000, "{a:?}");

    // The seed's verification: status on both nodes.
    site.wait("both nodes to show each other", || {
        let (s1, s2) = (site.status(Host::Node1), site.status(Host::Node2));
        s1.remote.status == tandem_replication::LinkStatus::Connected
            && s2.remote.status == tandem_replication::LinkStatus::Connected
            && s1.backlog == Some(0)
    });
    for host in [Host::Node1, Host::Node2] {
        let out = site.mp(host, &["status"]);
        let text = String::from_utf8_lossy(&out.stdout);
        for line in [
            "| Replication Type: Local | Replication Type: Intra-site |",
            "| Site: 1                 | Site: 1                      |",
            "| State: Active           | State: Active                |",
            "| Status: Local           | Status: Connected            |",
        ] {
            assert!(text.contains(line), "{host} status lacks {line:?}:\n{text}");
        }
    }
    // The standby refuses application writes.
    let out = site.mp(Host::Node2, &["write-sample", "--first", "9000"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("standby"));
}

#[test]
fn kill_9_of_either_service_mid_stream_loses_and_duplicates_nothing() {
    let mut site = Site::new();
    site.replicate();
    let mut writer = site
        .command(Host::Node1)
        .args([
            "write-sample",
            "--first",
            "1",
            "--count",
            "400",
            "--rows",
            "20",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    site.wait("node 2 to apply some changes", || {
        site.applied(Host::Node2) > 500
    });
    site.kill_service(Host::Node2);
    site.start_service(Host::Node2);
    let now = site.applied(Host::Node2);
    site.wait("node 2 to apply more", || {
        site.applied(Host::Node2) > now + 500
    });
    site.kill_service(Host::Node1);
    site.start_service(Host::Node1);
    assert!(writer.wait().unwrap().success());
    site.wait_caught_up(Host::Node1, Host::Node2);
    let (a, b) = (site.checksums(Host::Node1), site.checksums(Host::Node2));
    assert_eq!(a, b);
    assert!(rows(&a) >= 7_000, "{a:?}");
}

#[test]
fn every_acknowledged_write_is_on_node_2_when_node_1_dies_right_after() {
    let mut site = Site::new();
    site.replicate();
    let mut writer = site
        .command(Host::Node1)
        .args([
            "write-sample",
            "--first",
            "1",
            "--count",
            "100000",
            "--rows",
            "5",
            "--wait-replicated",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut acked = Vec::new();
    let mut lines = BufReader::new(writer.stdout.take().unwrap()).lines();
    while acked.len() < 200 {
        let line = lines.next().expect("the writer ended early").unwrap();
        let tx: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        acked.push(tx);
    }
    // Node 1 dies right after the 200th acknowledgement: the writer and its service.
    writer.kill().unwrap();
    site.kill_service(Host::Node1);
    writer.wait().unwrap();
    let n2 = site.backend(Host::Node2);
    let present: Vec<i64> = site
        .runtime
        .block_on(
            sqlx::query_scalar("SELECT id FROM user_profiles WHERE id % 1000 = 1")
                .fetch_all(n2.pool()),
        )
        .unwrap();
    let missing: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|tx| !present.contains(&i64::try_from(tx * 1000 + 1).unwrap()))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not on node 2: {missing:?}"
    );
}

#[test]
fn concurrent_writers_waiting_with_wait_replicated_are_all_acknowledged_and_arrive_identical() {
    let mut site = Site::new();
    site.replicate();
    // Eight writers, each waiting for node 2 after every commit: their waits overlap,
    // so the service ships and node 2 applies several writers' commits together.
    let out = site
        .command(Host::Node1)
        .args([
            "write-sample",
            "--first",
            "1",
            "--count",
            "240",
            "--rows",
            "5",
            "--writers",
            "8",
            "--wait-replicated",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "write-sample: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        site.logs()
    );
    let mut acked: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(fields.first(), Some(&"acked"), "{line}");
            fields[1].parse().unwrap()
        })
        .collect();
    acked.sort_unstable();
    assert_eq!(acked, (1..=240).collect::<Vec<u64>>());
    // Acknowledged means on node 2: every transaction is there already.
    let n2 = site.backend(Host::Node2);
    let present = site
        .runtime
        .block_on(async {
            let mut conn = n2.pool().acquire().await.unwrap();
            tandem_sample::transactions_present(&mut conn).await
        })
        .unwrap();
    site.runtime.block_on(n2.close());
    let missing: Vec<u64> = acked
        .iter()
        .filter(|tx| !present.contains(tx))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not on node 2: {missing:?}"
    );
    site.wait_caught_up(Host::Node1, Host::Node2);
    let (a, b) = (site.checksums(Host::Node1), site.checksums(Host::Node2));
    assert_eq!(a, b);
    // One group and one profile per transaction. How many meetings are left
    // depends on the writers' interleaving: a transaction deletes a meeting of
    // one seven before it, if that one has committed already.
    let count = |table: &str| a.iter().find(|t| t.table == table).map(|t| t.rows);
    assert_eq!(count("user_groups"), Some(240), "{a:?}");
    assert_eq!(count("user_profiles"), Some(240), "{a:?}");
    assert!(
        count("meetings").is_some_and(|n| (480..=720).contains(&n)),
        "{a:?}"
    );
}

#[test]
fn a_diverged_node_2_rejoins_with_from_sync_and_its_own_rows_are_saved() {
    let mut site = Site::new();
    site.replicate();
    site.write(Host::Node1, 1, 20, 10);
    site.wait_caught_up(Host::Node1, Host::Node2);

    // Split brain: the nodes lose each other; node 2 becomes active and takes writes.
    site.lab.partition_nodes(true).unwrap();
    site.wait("node 2 to lose node 1", || {
        site.status(Host::Node2).remote.status != tandem_replication::LinkStatus::Connected
    });
    site.mp_ok(Host::Node2, &["promote"]);
    site.write(Host::Node2, 900, 1, 10);
    site.write(Host::Node1, 21, 5, 10);
    // The partition heals and node 2 is made the standby again.
    site.mp_ok(Host::Node2, &["demote"]);
    site.lab.partition_nodes(false).unwrap();
    site.wait("node 2 to report the divergence", || {
        let s = site.status(Host::Node2);
        s.remote.status == tandem_replication::LinkStatus::Diverged
            && s.alarms.iter().any(|a| a.contains("diverged"))
    });
    let text = String::from_utf8_lossy(&site.mp(Host::Node2, &["status"]).stdout).into_owned();
    assert!(text.contains("Status: Diverged"), "{text}");
    assert!(
        text.contains("\nLocal: not applying node 1's changes: diverged"),
        "{text}"
    );
    assert_ne!(site.checksums(Host::Node1), site.checksums(Host::Node2));

    // With node 1's service down the sync fails, and says why...
    site.kill_service(Host::Node1);
    let out = site.mp(
        Host::Node2,
        &["switchON", "-S", "-F", "from-sync", "--timeout", "2"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.lines()
            .last()
            .unwrap()
            .contains("is FAILED: from-sync failed: node 1 is not connected"),
        "{text}"
    );
    // ...and running it again once node 1 is back works (the seed's troubleshooting tip).
    site.start_service(Host::Node1);
    let text = site.mp_ok(Host::Node2, &["switchON", "-S", "-F", "from-sync", "-v"]);
    let file = text
        .lines()
        .find_map(|l| l.split(" are saved in ").nth(1))
        .unwrap_or_else(|| panic!("no local-only rows file named in:\n{text}"));
    let saved = std::fs::read_to_string(file).unwrap();
    assert_eq!(saved.lines().count(), 10, "{saved}");
    assert!(saved.contains("\"login\":\"user900001\""), "{saved}");
    assert!(Path::new(file).starts_with(site.state_dir(Host::Node2)));

    // Step 13: node 2's own rows go back on the active node, node 1 (the file is
    // copied there; here both state directories are on one machine).
    let out = site.mp(Host::Node2, &["restore-local-rows", file]);
    assert!(!out.status.success(), "node 2 is the standby");
    assert!(String::from_utf8_lossy(&out.stderr).contains("standby"));
    let out = site.mp(Host::Node1, &["restore-local-rows", file, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: tandem_replication::RestoreReport = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report.restored.len() + report.conflicts.len() + report.deleted_locally.len(),
        10,
        "{report:?}"
    );
    assert!(
        report.restored.iter().any(|r| r.table == "user_profiles"),
        "{report:?}"
    );
    let text = site.mp_text(Host::Node1, &["restore-local-rows", file, "--dry-run"]);
    assert!(text.contains("Would restore 0 rows"), "{text}");

    site.write(Host::Node1, 26, 5, 10);
    site.wait_caught_up(Host::Node1, Host::Node2);
    assert_eq!(site.checksums(Host::Node1), site.checksums(Host::Node2));
    site.wait("the alarm to clear", || {
        site.status(Host::Node2).alarms.is_empty()
    });
}

#[test]
fn a_peer_with_the_wrong_key_is_refused_and_nothing_changes() {
    let mut site = Site::with_keys(true);
    site.replicate();
    site.write(Host::Node1, 1, 10, 10);
    site.wait("node 1 to report the refused handshake", || {
        site.status(Host::Node1)
            .remote_detail
            .is_some_and(|d| d.contains("handshake"))
    });
    let s2 = site.status(Host::Node2);
    assert_eq!(
        s2.remote.status,
        tandem_replication::LinkStatus::NotConnected
    );
    assert_eq!(
        s2.local.state,
        tandem_replication::ReplicationState::Initialized
    );
    assert_eq!(rows(&site.checksums(Host::Node2)), 0);
}
