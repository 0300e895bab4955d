//! `mp_replication` with the PostgreSQL backend on two nodes of the namespace lab:
//! real PostgreSQL 15 servers started by the test as `postgres` inside the node
//! namespaces, listening on the node addresses. Writes replicate and the standby
//! refuses them (SQLSTATE 25006); synchronous commits survive node 1 dying; the old
//! primary rejoins with pg_rewind; switch-off drops the slot and from-sync recovers; a
//! lost standby degrades the primary and is not promoted; the seed's status table on
//! both nodes in each state; replication runs over TLS, and plain text or a certificate
//! of another site is refused; a forked pair reads `Diverged`; with the node agents
//! (`failover agent`) running, a standby whose primary is stopped says why on its
//! status page, and `switch-on` / `switch-off` on one node switch both. Needs root and
//! PostgreSQL 15 (under `CI=true` a machine without them fails these tests).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tandem_lab::postgres::{PgServer, require_postgres};
use tandem_lab::{Host, Lab};
use tandem_node::LoadSettings;
use tandem_replication::{
    Backend, LinkStatus, Position, ReplicationBackend, Settings, Status, parse_lsn,
};
use tandem_role::{DeploymentMode, NodeId, NodeState, SiteId, StateFile};

const BIN: &str = env!("CARGO_BIN_EXE_mp_replication");
/// The status page's port.
const PAGE_PORT: u16 = 7450;
const PORT: u16 = 5433;

/// A lab site with a PostgreSQL server per node. Fields drop in order: services,
/// then servers, then the lab, then the directory.
struct Site {
    services: Vec<(Host, Child)>,
    agents: Vec<(Host, Child)>,
    servers: Vec<PgServer>,
    lab: Lab,
    runtime: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
}

impl Site {
    /// `None` outside CI on a machine without PostgreSQL.
    fn new(extra: &str) -> Option<Site> {
        let bindir = require_postgres()?;
        let lab = Lab::for_test();
        let dir = tempfile::tempdir().unwrap();
        tandem_peer::keygen(&dir.path().join("site.key")).unwrap();
        let mut servers = Vec::new();
        for host in [Host::Node1, Host::Node2] {
            servers.push(PgServer::create(&lab, host, dir.path(), PORT, &bindir).unwrap());
        }
        for (host, id, peer) in [(Host::Node1, 1, Host::Node2), (Host::Node2, 2, Host::Node1)] {
            let state = dir.path().join(format!("{host}-state"));
            std::fs::create_dir_all(&state).unwrap();
            let server = &servers[if id == 1 { 0 } else { 1 }];
            let config = format!(
                "[node]\nid = {id}\nhostname = \"{}\"\n\n\
                 [network]\nnode_address = \"{}/24\"\npeer_address = \"{}\"\n\
                 shared_address = \"192.0.2.10/24\"\ngateway = \"192.0.2.1\"\n\n\
                 [probe]\ntimeout_ms = 150\nattempts = 2\ninterval_ms = 50\n\n\
                 [failover]\nheartbeat_ms = 100\nmissed_heartbeats = 3\n\n\
                 [peer]\nkey_file = \"{}\"\n\n\
                 [replication]\nbackend = \"postgres\"\nheartbeat_ms = 200\n\n\
                 [replication.postgres]\ndata_dir = \"{}\"\nport = {PORT}\nsocket_dir = \"{}\"\n\
                 connect_timeout_ms = 2000\n{extra}",
                // The machine's own name: the final line names the config's hostname
                // or, without one, the machine's; both are the same here.
                hostname(),
                host.addr(),
                peer.addr(),
                dir.path().join("site.key").display(),
                server.data_dir.display(),
                server.socket_dir.display(),
            );
            std::fs::write(dir.path().join(format!("{host}.toml")), config).unwrap();
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Some(Site {
            services: Vec::new(),
            agents: Vec::new(),
            servers,
            lab,
            runtime,
            dir,
        })
    }

    /// The node's backend, opened from the test process with the node's config.
    fn backend(&self, host: Host) -> Backend {
        let settings = Settings::load(
            &self.dir.path().join(format!("{host}.toml")),
            true,
            self.dir.path().join(format!("{host}-state")),
        )
        .unwrap();
        self.runtime
            .block_on(Backend::open_existing(&settings))
            .unwrap()
    }

    fn server(&self, host: Host) -> &PgServer {
        self.servers.iter().find(|s| s.host == host).unwrap()
    }

    fn command(&self, host: Host) -> Command {
        let mut cmd = self.lab.command(host, BIN);
        cmd.arg("--config")
            .arg(self.dir.path().join(format!("{host}.toml")))
            .arg("--state-dir")
            .arg(self.dir.path().join(format!("{host}-state")));
        cmd
    }

    fn mp(&self, host: Host, args: &[&str]) -> Output {
        self.command(host).args(args).output().unwrap()
    }

    /// Runs a command that must succeed and end with the seed's SUCCESSFUL line.
    fn mp_ok(&self, host: Host, args: &[&str]) -> String {
        let out = self.mp(host, args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "mp_replication {args:?} on {host} failed:\n{text}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        let last = text.lines().last().unwrap_or_default();
        let expected = format!(
            "(Host = {}; IP Addr = {}) is SUCCESSFUL",
            hostname(),
            host.addr()
        );
        assert!(
            last.ends_with(&expected),
            "last line of {args:?} on {host}: {last}"
        );
        text
    }

    /// Runs a command that must fail with the seed's FAILED line; returns that line.
    fn mp_fails(&self, host: Host, args: &[&str]) -> String {
        let out = self.mp(host, args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            !out.status.success(),
            "{args:?} on {host} succeeded:\n{text}"
        );
        let last = text.lines().last().unwrap_or_default().to_owned();
        assert!(last.contains(") is FAILED: "), "{last}");
        last
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

    fn status_text(&self, host: Host) -> String {
        let out = self.mp(host, &["status"]);
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Checks the seed's table (its first seven lines) on `host`, waiting for it a
    /// while (a stream takes a moment to notice that its peer died).
    fn check_table(&self, host: Host, local: &str, remote: &str, connected: bool) {
        let status = if connected {
            "Connected"
        } else {
            "Not connected"
        };
        self.check_table_status(host, local, remote, status);
    }

    /// As [`check_table`](Self::check_table), with the remote column's status word.
    fn check_table_status(&self, host: Host, local: &str, remote: &str, status: &str) {
        let started = Instant::now();
        loop {
            let (text, table, expected) = self.table(host, local, remote, status);
            if table == expected {
                return;
            }
            if started.elapsed() > Duration::from_secs(20) {
                assert_eq!(
                    table,
                    expected,
                    "status on {host}:\n{text}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn table(
        &self,
        host: Host,
        local: &str,
        remote: &str,
        status: &str,
    ) -> (String, Vec<String>, Vec<String>) {
        let text = self.status_text(host);
        let table: Vec<String> = text.lines().take(7).map(str::to_owned).collect();
        let me = if host == Host::Node1 {
            NodeId::One
        } else {
            NodeId::Two
        };
        let left = [
            "Local Server".to_owned(),
            "Replication Type: Local".to_owned(),
            "Site: 1".to_owned(),
            format!("Node: {me}"),
            format!("State: {local}"),
            "Status: Local".to_owned(),
        ];
        let right = [
            "Remote Server".to_owned(),
            "Replication Type: Intra-site".to_owned(),
            "Site: 1".to_owned(),
            format!("Node: {}", me.peer()),
            format!("State: {remote}"),
            format!("Status: {status}"),
        ];
        let wl = left.iter().map(String::len).max().unwrap();
        let wr = right.iter().map(String::len).max().unwrap();
        let mut expected = Vec::new();
        for (i, (l, r)) in left.iter().zip(&right).enumerate() {
            expected.push(format!("| {l:<wl$} | {r:<wr$} |"));
            if i == 0 {
                expected.push(format!("|{}|{}|", "-".repeat(wl + 2), "-".repeat(wr + 2)));
            }
        }
        (text, table, expected)
    }

    fn start_service(&mut self, host: Host) {
        let log =
            std::fs::File::create(self.dir.path().join(format!("{host}-service.log"))).unwrap();
        let child = self
            .command(host)
            .arg("service")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.services.push((host, child));
        self.wait(&format!("the service on {host}"), || {
            self.status(host).service_running
        });
    }

    fn connect(&self, host: Host) -> PgConnection {
        let server = self.server(host);
        let options = PgConnectOptions::new_without_pgpass()
            .socket(&server.socket_dir)
            .port(PORT)
            .username("postgres")
            .database("postgres");
        self.runtime
            .block_on(PgConnection::connect_with(&options))
            .unwrap()
    }

    fn sql(&self, host: Host, sql: &str) {
        let mut conn = self.connect(host);
        self.runtime
            .block_on(sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn))
            .unwrap_or_else(|e| panic!("{sql} on {host}: {e}"));
    }

    /// Row count and md5 of table `t`, as text.
    fn checksum(&self, host: Host) -> String {
        let mut conn = self.connect(host);
        self.runtime
            .block_on(
                sqlx::query_scalar::<_, String>(
                    "SELECT count(*)::text || ' ' || coalesce(md5(string_agg(id::text || ':' || v, \
                     ',' ORDER BY id)), '-') FROM t",
                )
                .fetch_one(&mut conn),
            )
            .unwrap()
    }

    fn wait(&self, what: &str, mut check: impl FnMut() -> bool) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(90) {
            if check() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for {what}\n{}", self.logs());
    }

    /// Waits until node `primary` waits synchronously for its standby.
    fn wait_synchronous(&self, primary: Host) {
        self.wait(&format!("{primary} to wait for its standby"), || {
            let s = self.status(primary);
            s.wal
                .as_ref()
                .is_some_and(|w| w.sync_state.as_deref() == Some("sync"))
        });
    }

    fn wait_same_data(&self) {
        self.wait("node 2 to have node 1's data", || {
            self.checksum(Host::Node1) == self.checksum(Host::Node2)
        });
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for name in [
            "node1-service.log",
            "node2-service.log",
            "node1-state/postgres/server.log",
            "node2-state/postgres/server.log",
            "node1/test-server.log",
            "node2/test-server.log",
        ] {
            let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            out.push_str(&format!("--- {name}\n{tail}\n"));
        }
        out
    }

    /// init on both nodes, switch-on on node 1 (the primary), from-sync on node 2
    /// (a fresh copy: node 2's own cluster is not node 1's), services on both.
    fn set_up(&mut self) {
        self.sql(
            Host::Node1,
            "CREATE TABLE t (id bigint PRIMARY KEY, v text NOT NULL)",
        );
        self.mp_ok(Host::Node2, &["init", "-n", "2", "-r", "192.0.2.11"]);
        let init = self.mp_ok(Host::Node1, &["init", "-n", "1", "-r", "192.0.2.12", "-v"]);
        assert!(init.contains("wal_log_hints"), "{init}");
        self.check_table(Host::Node1, "Initialized", "Initialized", true);
        self.mp_ok(Host::Node1, &["switch-on"]);
        let sync = self.mp_ok(Host::Node2, &["switch-on", "-S", "-F", "from-sync"]);
        assert!(
            sync.contains("a fresh pg_basebackup (this node's cluster is not a copy"),
            "{sync}"
        );
        self.start_service(Host::Node1);
        self.start_service(Host::Node2);
        self.wait_synchronous(Host::Node1);
    }

    /// As [`set_up`](Self::set_up), with the node agents (`failover agent`) instead of
    /// `mp_replication service`: node 1's agent first, which takes the shared address
    /// (its server is the primary already), then node 2's, which stays standby.
    fn set_up_with_agents(&mut self) {
        self.sql(
            Host::Node1,
            "CREATE TABLE t (id bigint PRIMARY KEY, v text NOT NULL)",
        );
        self.mp_ok(Host::Node2, &["init", "-n", "2", "-r", "192.0.2.11"]);
        self.mp_ok(Host::Node1, &["init", "-n", "1", "-r", "192.0.2.12"]);
        self.mp_ok(Host::Node1, &["switch-on"]);
        self.mp_ok(Host::Node2, &["switch-on", "-S", "-F", "from-sync"]);
        self.start_agent(Host::Node1);
        self.wait("node 1's agent to take the shared address", || {
            self.page_json(Host::Node1)
                .is_some_and(|j| j["holds_shared_address"] == true)
        });
        self.start_agent(Host::Node2);
        self.wait("the agents to see each other", || {
            [Host::Node1, Host::Node2].iter().all(|&h| {
                self.page_json(h)
                    .is_some_and(|j| j["peer"]["connected"] == true)
            })
        });
        self.wait_synchronous(Host::Node1);
    }

    fn agent_log(&self, host: Host) -> PathBuf {
        self.dir.path().join(format!("{host}-agent.log"))
    }

    /// Starts `failover agent` on `host`, a node of a failover deployment.
    fn start_agent(&mut self, host: Host) {
        let state = self.dir.path().join(format!("{host}-state"));
        let node = if host == Host::Node1 {
            NodeId::One
        } else {
            NodeId::Two
        };
        let mut node_state = NodeState::first_boot(node, SiteId::ONE);
        node_state.deployment = DeploymentMode::Failover;
        let file = StateFile::in_dir(&state);
        if !matches!(file.load(), Ok(Some(_))) {
            file.save(&node_state).unwrap();
        }
        let log = std::fs::File::create(self.agent_log(host)).unwrap();
        let child = self
            .lab
            .command(host, failover_binary().to_str().unwrap())
            .env(
                "TANDEM_CONFIG",
                self.dir.path().join(format!("{host}.toml")),
            )
            .env("TANDEM_STATE_DIR", &state)
            .args(["agent", "--key-file"])
            .arg(self.dir.path().join("site.key"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agents.push((host, child));
        self.wait(&format!("{host}'s status page"), || {
            self.page(host, "/status.json").is_some()
        });
    }

    fn kill_agent(&mut self, host: Host) {
        let i = self.agents.iter().position(|(h, _)| *h == host).unwrap();
        let (_, mut child) = self.agents.remove(i);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// The body of `GET path` on the node's status page, from the client namespace.
    fn page(&self, host: Host, path: &str) -> Option<String> {
        let addr = format!("{}:{PAGE_PORT}", host.addr());
        let path = path.to_owned();
        self.lab
            .run_in(Host::Client, move || {
                let mut stream = std::net::TcpStream::connect_timeout(
                    &addr.parse().ok()?,
                    Duration::from_secs(2),
                )
                .ok()?;
                stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
                write!(
                    stream,
                    "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
                .ok()?;
                let mut text = String::new();
                stream.read_to_string(&mut text).ok()?;
                let (head, body) = text.split_once("\r\n\r\n")?;
                head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
            })
            .ok()
            .flatten()
    }

    fn page_json(&self, host: Host) -> Option<serde_json::Value> {
        serde_json::from_str(&self.page(host, "/status.json")?).ok()
    }
}

/// The `failover` binary (the agent), built as `cargo test` builds this package.
fn failover_binary() -> &'static Path {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .parent()
            .unwrap();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "failover"])
            .current_dir(root)
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building failover failed");
        std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"))
            .join("debug/failover")
    })
}

impl Drop for Site {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for host in [Host::Node1, Host::Node2] {
                let log = std::fs::read_to_string(self.agent_log(host)).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                eprintln!("--- {host}'s agent log\n{tail}");
            }
        }
        for (_, child) in self.services.iter_mut().chain(self.agents.iter_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .unwrap()
        .into_string()
        .unwrap_or_default()
}

/// A process stopped with SIGSTOP until this is dropped, also while a panic unwinds.
struct Stopped(nix::unistd::Pid);

impl Stopped {
    fn new(pid: i32) -> Stopped {
        let pid = nix::unistd::Pid::from_raw(pid);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

fn insert(site: &Site, host: Host, from: i64, to: i64) {
    site.sql(
        host,
        &format!("INSERT INTO t SELECT g, 'row ' || g FROM generate_series({from}, {to}) g"),
    );
}

#[test]
fn writes_on_node1_appear_on_node2_and_the_standby_refuses_writes() {
    let Some(mut site) = Site::new("") else {
        return;
    };
    site.set_up();
    site.check_table(Host::Node1, "Active", "Active", true);
    site.check_table(Host::Node2, "Active", "Active", true);
    insert(&site, Host::Node1, 1, 1000);
    site.wait_same_data();
    assert!(site.checksum(Host::Node2).starts_with("1000 "));

    // wait_replicated: the WAL position of node 1's last commit reaches node 2.
    let mut conn = site.connect(Host::Node1);
    let lsn: String = site
        .runtime
        .block_on(sqlx::query_scalar("SELECT pg_current_wal_lsn()::text").fetch_one(&mut conn))
        .unwrap();
    let position = Position(parse_lsn(&lsn).unwrap());
    let backend = site.backend(Host::Node1);
    site.runtime
        .block_on(backend.wait_replicated(position, Duration::from_secs(30)))
        .unwrap();
    // The limit bounds the looks at the server too: with node 1's postmaster stopped
    // (a server that takes connections and never answers) the same wait ends at its
    // limit as not replicated, not at the connection's own limit (3 s) as a timeout.
    {
        let pid = site.server(Host::Node1).postmaster_pid().unwrap();
        let _stopped = Stopped::new(pid);
        let err = site
            .runtime
            .block_on(backend.wait_replicated(position, Duration::from_millis(200)))
            .unwrap_err();
        assert!(
            matches!(err, tandem_replication::Error::NotReplicated { .. }),
            "{err}"
        );
    }

    let mut conn = site.connect(Host::Node2);
    let err = site
        .runtime
        .block_on(sqlx::query("INSERT INTO t VALUES (5000, 'no')").execute(&mut conn))
        .unwrap_err();
    let code = err.as_database_error().and_then(|e| e.code()).unwrap();
    assert_eq!(code, "25006", "{err}");

    let status = site.status(Host::Node1);
    assert_eq!(status.backend, "postgres");
    assert_eq!(status.local.writable, Some(true));
    assert_eq!(status.remote.writable, Some(false));
    let wal = status.wal.unwrap();
    assert_eq!(wal.synchronous_standby_names, "tandem_node2");
    let text = site.status_text(Host::Node2);
    assert!(text.contains("Backlog: "), "{text}");
    assert!(
        text.contains("bytes of WAL") || text.contains("byte of WAL"),
        "{text}"
    );
    assert!(
        text.contains(
            "Database: read-only (standby) on this node, writable (active) on the remote node"
        ),
        "{text}"
    );

    // Node 1's pg_hba.conf lets the replication role in from node 2's address only
    // (over TLS: see replication_runs_over_tls_and_plain_text_or_another_site_s_ca_is_refused).
    let hba =
        std::fs::read_to_string(site.server(Host::Node1).data_dir.join("pg_hba.conf")).unwrap();
    assert!(
        hba.contains("hostssl replication tandem_replicator 192.0.2.12/32 scram-sha-256"),
        "{hba}"
    );
    assert!(!hba.contains("192.0.2.0/24"), "{hba}");
}

#[test]
fn acknowledged_commits_survive_node1_dying_and_node1_rejoins_with_pg_rewind() {
    let Some(mut site) = Site::new("") else {
        return;
    };
    site.set_up();
    insert(&site, Host::Node1, 1, 100);

    // A writer commits one row per transaction on node 1 and records each commit that
    // returned; node 1 dies under it.
    let options = PgConnectOptions::new_without_pgpass()
        .socket(&site.server(Host::Node1).socket_dir)
        .port(PORT)
        .username("postgres")
        .database("postgres");
    let acked = Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop) = (Arc::clone(&acked), Arc::clone(&stop));
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut conn = PgConnection::connect_with(&options).await.unwrap();
                let mut id = 10_000;
                while !stop.load(Ordering::Relaxed) {
                    let r = sqlx::query("INSERT INTO t VALUES ($1, 'acked')")
                        .bind(id)
                        .execute(&mut conn)
                        .await;
                    if r.is_err() {
                        return;
                    }
                    acked.lock().unwrap().push(id);
                    id += 1;
                }
            });
        })
    };
    site.wait("200 acknowledged commits", || {
        acked.lock().unwrap().len() >= 200
    });
    site.server(Host::Node1).kill().unwrap();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();

    site.check_table(Host::Node2, "Active", "Unknown", false);
    site.mp_ok(Host::Node2, &["promote"]);
    let mut conn = site.connect(Host::Node2);
    let present: Vec<i64> = site
        .runtime
        .block_on(
            sqlx::query_scalar("SELECT id FROM t WHERE id >= 10000 ORDER BY id")
                .fetch_all(&mut conn),
        )
        .unwrap();
    let missing: Vec<&i64> = acked.iter().filter(|id| !present.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged on node 1 but missing on node 2 after promotion: {missing:?}"
    );
    let status = site.status(Host::Node2);
    assert_eq!(status.local.writable, Some(true));
    site.check_table(Host::Node2, "Active", "Unknown", false);

    // Node 2 writes more; node 1 comes back as its standby.
    insert(&site, Host::Node2, 20_000, 20_500);
    let rejoin = site.mp_ok(Host::Node1, &["switch-on", "-S", "-F", "from-sync", "-v"]);
    assert!(rejoin.contains("with pg_rewind"), "{rejoin}");
    assert!(rejoin.contains(" kB\n"), "progress of the copy: {rejoin}");
    site.wait("node 1 to have node 2's data", || {
        site.checksum(Host::Node1) == site.checksum(Host::Node2)
    });
    site.wait_synchronous(Host::Node2);
    site.check_table(Host::Node1, "Active", "Active", true);
    site.check_table(Host::Node2, "Active", "Active", true);
    let status = site.status(Host::Node1);
    assert_eq!(status.local.writable, Some(false));
    assert_eq!(status.remote.writable, Some(true));
}

#[test]
fn switch_off_on_the_primary_drops_the_slot_and_from_sync_recovers() {
    let Some(mut site) = Site::new("") else {
        return;
    };
    site.set_up();
    insert(&site, Host::Node1, 1, 100);
    site.wait_same_data();
    let off = site.mp_ok(Host::Node1, &["switch-off"]);
    assert!(off.contains("slot tandem_node2 is dropped"), "{off}");
    // No agent runs here: this node only, and the tool says so.
    assert!(
        off.contains("Node 2: not asked: no agent runs on this node"),
        "{off}"
    );
    let mut conn = site.connect(Host::Node1);
    let slots: i64 = site
        .runtime
        .block_on(
            sqlx::query_scalar("SELECT count(*) FROM pg_replication_slots").fetch_one(&mut conn),
        )
        .unwrap();
    assert_eq!(slots, 0);
    site.check_table(Host::Node1, "Off", "Active", true);
    site.check_table(Host::Node2, "Active", "Off", true);

    // Writes go on without the standby, past a few WAL segments that nobody keeps.
    for round in 0..3 {
        insert(&site, Host::Node1, 1000 + round * 1000, 1999 + round * 1000);
        site.sql(Host::Node1, "SELECT pg_switch_wal(); CHECKPOINT");
    }
    site.mp_ok(Host::Node1, &["switch-on"]);
    let sync = site.mp_ok(Host::Node2, &["switch-on", "-S", "-F", "from-sync"]);
    assert!(
        sync.contains("pg_basebackup (this node was a standby)"),
        "{sync}"
    );
    site.wait_same_data();
    site.wait_synchronous(Host::Node1);
    site.check_table(Host::Node1, "Active", "Active", true);
    site.check_table(Host::Node2, "Active", "Active", true);

    // switch-off on the standby gives up its slot on the primary too.
    let off = site.mp_ok(Host::Node2, &["switch-off"]);
    assert!(
        off.contains("its slot tandem_node2 there is dropped"),
        "{off}"
    );
    let slots: i64 = site
        .runtime
        .block_on(
            sqlx::query_scalar("SELECT count(*) FROM pg_replication_slots").fetch_one(&mut conn),
        )
        .unwrap();
    assert_eq!(slots, 0);
    site.check_table(Host::Node2, "Off", "Active", true);
}

#[test]
fn a_lost_standby_degrades_the_primary_and_is_not_promoted() {
    let Some(mut site) = Site::new("degrade_after_ms = 1000\n") else {
        return;
    };
    site.set_up();
    insert(&site, Host::Node1, 1, 10);
    site.wait_same_data();
    site.server(Host::Node2).kill().unwrap();
    // The commit waits for the lost standby until node 1's service degrades.
    insert(&site, Host::Node1, 11, 20);
    let status = site.status(Host::Node1);
    assert_eq!(
        status.wal.as_ref().unwrap().synchronous_standby_names,
        "",
        "{status:?}"
    );
    assert!(
        status.alarms.iter().any(|a| a.contains("degraded since")),
        "{:?}",
        status.alarms
    );
    site.check_table(Host::Node1, "Active", "Unknown", false);

    // Node 1 dies too; node 2 comes back and must not be promoted: it lacks rows 11-20.
    site.server(Host::Node1).kill().unwrap();
    site.server(Host::Node2).start().unwrap();
    let refused = site.mp_fails(Host::Node2, &["promote"]);
    assert!(refused.contains("may be stale"), "{refused}");
    site.mp_ok(Host::Node2, &["promote", "--force"]);
    assert!(site.checksum(Host::Node2).starts_with("10 "));
}

#[test]
fn a_switchover_demotes_node1_and_promotes_node2() {
    let Some(mut site) = Site::new("") else {
        return;
    };
    site.set_up();
    insert(&site, Host::Node1, 1, 100);
    site.wait_same_data();
    // What `failover set-server standby` on node 1, then `active` on node 2, do.
    site.mp_ok(Host::Node1, &["demote"]);
    site.mp_ok(Host::Node2, &["promote"]);
    insert(&site, Host::Node2, 101, 200);
    site.wait("node 1 to follow node 2", || {
        site.checksum(Host::Node1) == site.checksum(Host::Node2)
    });
    assert!(site.checksum(Host::Node1).starts_with("200 "));
    site.wait_synchronous(Host::Node2);
    site.check_table(Host::Node1, "Active", "Active", true);
    site.check_table(Host::Node2, "Active", "Active", true);
    let status = site.status(Host::Node2);
    assert_eq!(status.local.writable, Some(true));
    assert_eq!(status.remote.writable, Some(false));
    // The node that is the standby now refuses writes.
    let mut conn = site.connect(Host::Node1);
    let err = site
        .runtime
        .block_on(sqlx::query("INSERT INTO t VALUES (900, 'no')").execute(&mut conn))
        .unwrap_err();
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).unwrap(),
        "25006"
    );
}

#[test]
fn a_strict_primary_blocks_commits_until_its_standby_is_back() {
    let Some(mut site) = Site::new("standby_lost = \"strict\"\ndegrade_after_ms = 200\n") else {
        return;
    };
    site.set_up();
    insert(&site, Host::Node1, 1, 10);
    site.wait_same_data();
    site.server(Host::Node2).kill().unwrap();
    let options = PgConnectOptions::new_without_pgpass()
        .socket(&site.server(Host::Node1).socket_dir)
        .port(PORT)
        .username("postgres")
        .database("postgres");
    let writer = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut conn = PgConnection::connect_with(&options).await.unwrap();
            sqlx::query("INSERT INTO t VALUES (11, 'waits')")
                .execute(&mut conn)
                .await
                .map(drop)
        })
    });
    // The service notices the lost standby (and raises its alarm) but does not degrade.
    site.wait("the strict alarm", || {
        site.status(Host::Node1)
            .alarms
            .iter()
            .any(|a| a.contains("strict"))
    });
    let status = site.status(Host::Node1);
    assert_eq!(
        status.wal.unwrap().synchronous_standby_names,
        "tandem_node2"
    );
    assert!(
        !writer.is_finished(),
        "a commit returned without the standby"
    );
    site.server(Host::Node2).start().unwrap();
    writer.join().unwrap().unwrap();
    site.wait_same_data();
    assert!(site.checksum(Host::Node2).starts_with("11 "));
}

/// Runs `psql` inside `host`'s namespace with the connection string `conninfo`.
fn psql(site: &Site, host: Host, conninfo: &str, sql: &str) -> Output {
    let psql = tandem_lab::postgres::bindir().unwrap().join("psql");
    site.lab
        .command(host, &psql.display().to_string())
        .args(["-X", "-w", "-A", "-t", "-d", conninfo, "-c", sql])
        .env_remove("PGPASSWORD")
        .output()
        .unwrap()
}

#[test]
fn replication_runs_over_tls_and_plain_text_or_another_site_s_ca_is_refused() {
    use std::os::unix::fs::MetadataExt;
    let Some(mut site) = Site::new("") else {
        return;
    };
    site.set_up();

    // Node 2's walsender on node 1 speaks TLS.
    let mut conn = site.connect(Host::Node1);
    let rows: Vec<(bool, Option<String>)> = site
        .runtime
        .block_on(
            sqlx::query_as(
                "SELECT s.ssl, s.version FROM pg_stat_replication r JOIN pg_stat_ssl s \
                 USING (pid) WHERE r.application_name = 'tandem_node2'",
            )
            .fetch_all(&mut conn),
        )
        .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].0, "the standby's connection is not TLS: {rows:?}");

    // Where the files are: beside postgresql.conf, the key 0600, all PostgreSQL's.
    let postgres = nix::unistd::User::from_name("postgres")
        .unwrap()
        .unwrap()
        .uid
        .as_raw();
    let files = site.server(Host::Node2).data_dir.clone();
    for (name, mode) in [
        ("tandem.key", 0o600),
        ("tandem.crt", 0o644),
        ("tandem-site-ca.crt", 0o644),
    ] {
        let meta = std::fs::metadata(files.join(name)).unwrap();
        assert_eq!(meta.mode() & 0o777, mode, "{name}");
        assert_eq!(meta.uid(), postgres, "{name}");
    }
    let conf =
        std::fs::read_to_string(site.server(Host::Node2).data_dir.join("tandem.conf")).unwrap();
    assert!(conf.contains("ssl = on\n"), "{conf}");
    assert!(conf.contains("sslmode=verify-full"), "{conf}");
    let hba =
        std::fs::read_to_string(site.server(Host::Node1).data_dir.join("pg_hba.conf")).unwrap();
    assert!(
        !hba.contains("\nhost replication tandem_replicator"),
        "a plain-text line for the replication role: {hba}"
    );

    // From node 2's namespace, as the replication role with node 2's password file.
    let base = format!(
        "host=192.0.2.11 port={PORT} user=tandem_replicator passfile={}",
        files.join("tandem.pgpass").display()
    );
    let root = files.join("tandem-site-ca.crt");
    let run = |conninfo: String, sql: &str| {
        let out = psql(&site, Host::Node2, &conninfo, sql);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let tls = format!("{base} sslmode=verify-full sslrootcert={}", root.display());
    let (ok, out, err) = run(
        format!("{tls} dbname=postgres"),
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    );
    assert!(ok && out == "t", "the role over TLS: {out} {err}");
    let (ok, _, err) = run(format!("{tls} replication=true"), "IDENTIFY_SYSTEM");
    assert!(ok, "a replication connection over TLS: {err}");

    // Plain text is refused, for replication and for SQL.
    for (extra, kind) in [
        ("replication=true", "replication connection"),
        ("dbname=postgres", "connection"),
    ] {
        let (ok, _, err) = run(format!("{base} sslmode=disable {extra}"), "SELECT 1");
        assert!(!ok, "plain text was let in ({extra})");
        assert!(
            err.contains(&format!(
                "pg_hba.conf rejects {kind} for host \"192.0.2.12\""
            )),
            "{extra}: {err}"
        );
    }

    // verify-full refuses node 1's certificate checked against another site's CA, and
    // a certificate that does not name the address asked for.
    let other = tandem_peer::SiteKey::generate().unwrap();
    let wrong = site.dir.path().join("other-site-ca.crt");
    std::fs::write(&wrong, tandem_replication::site_ca_pem(&other).unwrap()).unwrap();
    let (ok, _, err) = run(
        format!(
            "{base} sslmode=verify-full sslrootcert={} dbname=postgres",
            wrong.display()
        ),
        "SELECT 1",
    );
    assert!(!ok, "another site's CA accepted node 1's certificate");
    assert!(err.contains("certificate verify failed"), "{err}");
    let (ok, _, err) = run(
        format!(
            "host=192.0.2.99 hostaddr=192.0.2.11 port={PORT} user=tandem_replicator \
             passfile={} sslmode=verify-full sslrootcert={} dbname=postgres",
            files.join("tandem.pgpass").display(),
            root.display()
        ),
        "SELECT 1",
    );
    assert!(!ok, "a certificate for another address was accepted");
    assert!(err.contains("does not match host name"), "{err}");

    // tandem's own connection to the peer (sqlx, rustls) checks the same: with another
    // site's CA in node 2's place, from-sync stops before it changes anything.
    let saved = std::fs::read(&root).unwrap();
    std::fs::copy(&wrong, &root).unwrap();
    let out = site.mp(Host::Node2, &["switch-on", "-S", "-F", "from-sync"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("connecting to the peer's PostgreSQL at 192.0.2.11"),
        "{text}"
    );
    assert!(text.contains("UnknownIssuer"), "{text}");
    std::fs::write(&root, saved).unwrap();
    // Node 2 still streams: nothing was touched.
    insert(&site, Host::Node1, 1, 10);
    site.wait_same_data();
    assert!(site.checksum(Host::Node2).starts_with("10 "));
}

#[test]
fn a_forked_pair_reads_diverged_until_from_sync() {
    let Some(mut site) = Site::new("") else {
        return;
    };
    site.set_up();
    insert(&site, Host::Node1, 1, 100);
    site.wait_same_data();
    // Node 2 is promoted behind node 1's back (as a cut-off standby would be): both
    // take writes.
    site.sql(Host::Node2, "SELECT pg_promote(true, 60); CHECKPOINT");
    for host in [Host::Node1, Host::Node2] {
        site.check_table_status(host, "Active", "Active", "Diverged");
    }
    let status = site.status(Host::Node1);
    assert!(
        status
            .alarms
            .iter()
            .any(|a| a.contains("both nodes are primaries")),
        "{:?}",
        status.alarms
    );
    // Node 1 goes on writing on its old timeline, then is made a standby without a
    // rewind: its WAL is past the point where node 2's timeline branched off.
    // (The insert returns once node 1's service stops waiting for its lost standby.)
    insert(&site, Host::Node1, 101, 200);
    // Then the replication services stop: node 1's would resynchronise it by itself once
    // it has not streamed for 10 s, and what is tested here is what the status says
    // until someone does.
    for (_, mut child) in site.services.drain(..) {
        let _ = child.kill();
        let _ = child.wait();
    }
    let node1 = site.server(Host::Node1);
    node1
        .run(
            "pg_ctl",
            &[
                "stop",
                "-w",
                "-m",
                "fast",
                "-D",
                &node1.data_dir.display().to_string(),
            ],
        )
        .unwrap();
    std::fs::write(node1.data_dir.join("standby.signal"), "").unwrap();
    node1.start().unwrap();
    // Its switch-on may fail (it does not stream) or, when its WAL receiver streams
    // the start of the old timeline's segment from node 2 for a moment, report
    // success: the status is what must tell.
    site.mp(Host::Node1, &["switch-on", "--timeout", "3"]);
    site.wait("node 1 to say it has diverged", || {
        let s = site.status(Host::Node1);
        s.remote.status == LinkStatus::Diverged
            && s.local_detail
                .as_deref()
                .is_some_and(|d| d.contains("diverged"))
            && s.alarms
                .iter()
                .any(|a| a.contains("diverged: node 1 (the standby)"))
    });
    let text = site.status_text(Host::Node1);
    assert!(text.contains("\nLocal: not applying: "), "{text}");
    assert!(text.contains("switch-on -S -F from-sync"), "{text}");
    site.check_table_status(Host::Node1, "Active", "Active", "Diverged");
    // The primary sees it too, from the standby's timeline and its own history.
    site.wait("node 2 to see node 1 diverged", || {
        let s = site.status(Host::Node2);
        s.remote.status == LinkStatus::Diverged
            && s.alarms
                .iter()
                .any(|a| a.contains("diverged: node 1 (the standby)"))
    });
    // from-sync puts node 1 on node 2's timeline (a fresh copy: a cluster last run as a
    // standby is not rewound): connected again.
    let rejoin = site.mp_ok(Host::Node1, &["switch-on", "-S", "-F", "from-sync"]);
    assert!(rejoin.contains("copied the peer's data"), "{rejoin}");
    site.check_table(Host::Node1, "Active", "Active", true);
    site.check_table(Host::Node2, "Active", "Active", true);
    let status = site.status(Host::Node1);
    assert_eq!(status.local_detail, None);
    assert!(
        !status.alarms.iter().any(|a| a.contains("diverged")),
        "{:?}",
        status.alarms
    );
}

#[test]
fn a_standby_whose_primary_is_stopped_says_why_on_its_status_page() {
    let Some(mut site) = Site::new("") else {
        return;
    };
    site.set_up_with_agents();
    site.check_table(Host::Node2, "Active", "Active", true);
    site.server(Host::Node1).kill().unwrap();
    site.wait("node 2's page to say why it does not apply", || {
        site.page(Host::Node2, "/").is_some_and(|page| {
            page.contains("This node: not applying: this standby does not stream from 192.0.2.11: it cannot connect to the primary")
                && page.contains("PostgreSQL&#39;s last error: FATAL: could not connect to the primary server")
                && page.contains("node 2 (standby) does not stream from node 1: it cannot connect to the primary")
        })
    });
    let json = site.page_json(Host::Node2).unwrap();
    let detail = json["replication"]["local_detail"]
        .as_str()
        .unwrap_or_default();
    assert!(detail.contains("could not connect"), "{json}");
    // Back: the reason and its alarm go.
    site.server(Host::Node1).start().unwrap();
    site.wait("node 2's page to clear the reason", || {
        site.page(Host::Node2, "/").is_some_and(|page| {
            !page.contains("This node: not applying") && page.contains("Status: Connected")
        })
    });
}

#[test]
fn switch_on_and_off_on_one_node_switch_both_through_the_agents() {
    let Some(mut site) = Site::new("") else {
        return;
    };
    site.set_up_with_agents();
    insert(&site, Host::Node1, 1, 100);
    site.wait_same_data();

    // From the standby: its part, then the primary's, a line for each.
    let off = site.mp_ok(Host::Node2, &["switch-off"]);
    assert!(off.contains("Node 2: replication is off: "), "{off}");
    assert!(
        off.contains("Node 1: replication is off: commits no longer wait for node 2"),
        "{off}"
    );
    site.check_table(Host::Node1, "Off", "Off", true);
    site.check_table(Host::Node2, "Off", "Off", true);

    // switch-on -S -F from-sync on the standby: the primary switches on first (its
    // slot), then the standby copies and streams.
    let on = site.mp_ok(Host::Node2, &["switch-on", "-S", "-F", "from-sync"]);
    let first = on.find("Node 1: replication is on: this node is the primary");
    let second = on.find("Node 2: copied the peer's data");
    assert!(
        first.is_some() && second.is_some() && first < second,
        "{on}"
    );
    site.wait_synchronous(Host::Node1);
    site.check_table(Host::Node1, "Active", "Active", true);
    site.check_table(Host::Node2, "Active", "Active", true);
    insert(&site, Host::Node1, 101, 200);
    site.wait_same_data();

    // From the primary, switch-on again is idempotent on both.
    let on = site.mp_ok(Host::Node1, &["switch-on"]);
    assert!(on.contains("Node 1: replication is on"), "{on}");
    assert!(
        on.contains("Node 2: replication is on: this node streams from 192.0.2.11"),
        "{on}"
    );

    // The peer's agent gone: this node switches, the command fails and says what to do.
    site.kill_agent(Host::Node1);
    site.wait("node 2's agent to lose its peer", || {
        site.page_json(Host::Node2)
            .is_some_and(|j| j["peer"]["connected"] == false)
    });
    let failed = site.mp_fails(Host::Node2, &["switch-off"]);
    let out = String::from_utf8_lossy(&site.mp(Host::Node2, &["status"]).stdout).into_owned();
    assert!(
        failed.contains("node 1: the peer link to node 1"),
        "{failed}"
    );
    assert!(
        failed.contains("run `mp_replication switch-off` on node 1 too"),
        "{failed}"
    );
    assert!(out.contains("State: Off"), "{out}");
    site.check_table(Host::Node2, "Off", "Active", true);
}
