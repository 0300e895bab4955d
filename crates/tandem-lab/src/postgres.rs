//! PostgreSQL 15 servers for tests and benchmarks, one per lab node: `initdb` and
//! `pg_ctl` run as the `postgres` user inside the node's namespace, the server listens
//! on the node address and keeps its Unix socket in the test's directory. A
//! [`PgServer`] stops its server when dropped (`pg_ctl stop -m immediate`, then a kill
//! of whatever its `postmaster.pid` names), also while a panic unwinds.
//!
//! ```no_run
//! use tandem_lab::{Host, Lab, postgres::PgServer};
//!
//! let lab = Lab::for_test();
//! let dir = std::env::temp_dir().join("tandem-pg-example");
//! let Some(bindir) = tandem_lab::postgres::require_postgres() else { return Ok(()) };
//! let node1 = PgServer::create(&lab, Host::Node1, &dir, 5433, &bindir)?;
//! assert!(node1.socket_dir.exists());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, Host, Lab, Result};

/// Where Debian's PostgreSQL 15 keeps its programs.
pub const BINDIR: &str = "/usr/lib/postgresql/15/bin";
/// The operating system user the servers run as.
pub const OS_USER: &str = "postgres";

/// PostgreSQL 15's programs, when they and the `postgres` user exist.
pub fn bindir() -> Option<PathBuf> {
    let dir = PathBuf::from(BINDIR);
    let user = nix::unistd::User::from_name(OS_USER).ok().flatten();
    (dir.join("postgres").is_file() && user.is_some()).then_some(dir)
}

/// PostgreSQL's programs for a test: under `CI=true` a machine without them fails the
/// test with a message naming what is missing; elsewhere the test is told to return
/// early, loudly.
///
/// # Panics
///
/// Under `CI=true` when PostgreSQL 15 or the `postgres` user is missing.
#[allow(clippy::panic)]
#[track_caller]
pub fn require_postgres() -> Option<PathBuf> {
    if let Some(dir) = bindir() {
        return Some(dir);
    }
    let missing = format!(
        "this test needs PostgreSQL 15 ({BINDIR}/postgres) and the `{OS_USER}` user: \
         apt-get install postgresql-15 (as .ci/install-deps does)"
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{missing}");
    }
    eprintln!("SKIPPED (not under CI): {missing}");
    None
}

/// One test server.
#[derive(Debug)]
pub struct PgServer {
    /// The node it runs on.
    pub host: Host,
    /// `<dir>/<host>`, owned by `postgres`.
    pub home: PathBuf,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The directory of its Unix socket.
    pub socket_dir: PathBuf,
    /// Its TCP port (on the node address).
    pub port: u16,
    namespace: String,
    bindir: PathBuf,
    owner: (u32, u32),
}

impl PgServer {
    /// Makes a cluster in `<dir>/<host>/pgdata` (no checksums, `trust` on the Unix
    /// socket, SCRAM over TCP) listening on `host`'s node address and `port`, and
    /// starts it inside `host`'s namespace.
    pub fn create(lab: &Lab, host: Host, dir: &Path, port: u16, bindir: &Path) -> Result<PgServer> {
        let user = nix::unistd::User::from_name(OS_USER)
            .ok()
            .flatten()
            .ok_or_else(|| Error::Parse {
                what: "the postgres user".into(),
                detail: "there is no `postgres` user: install postgresql-15".into(),
            })?;
        let owner = (user.uid.as_raw(), user.gid.as_raw());
        let home = dir.join(host.name());
        let server = PgServer {
            host,
            data_dir: home.join("pgdata"),
            socket_dir: home.join("sock"),
            home,
            port,
            namespace: lab.namespace(host),
            bindir: bindir.to_path_buf(),
            owner,
        };
        // postgres must reach the directory: it is made searchable (a temporary
        // directory is 0700), and every directory above must already be.
        let meta = std::fs::metadata(dir).map_err(|e| io_error("reading", dir, e))?;
        let mode = meta.permissions().mode();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o011))
            .map_err(|e| io_error("chmod", dir, e))?;
        let mut up = dir.parent();
        while let Some(d) = up {
            let mode = std::fs::metadata(d).map_or(0, |m| m.permissions().mode());
            if mode & 0o001 == 0 {
                return Err(Error::Parse {
                    what: format!("the test directory {}", dir.display()),
                    detail: format!(
                        "PostgreSQL's user cannot reach it: {} is not searchable by others; \
                         set TMPDIR to a directory under /tmp",
                        d.display()
                    ),
                });
            }
            up = d.parent();
        }
        for d in [&server.home, &server.socket_dir] {
            std::fs::create_dir_all(d).map_err(|e| io_error("creating", d, e))?;
            std::os::unix::fs::chown(d, Some(owner.0), Some(owner.1))
                .map_err(|e| io_error("chown", d, e))?;
        }
        server.run(
            "initdb",
            &[
                "-D",
                &server.data_dir.display().to_string(),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--locale=C",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        let conf = format!(
            "\n# test server (tandem-lab)\nlisten_addresses = '{}'\nport = {port}\n\
             unix_socket_directories = '{}'\nmax_connections = 100\nshared_buffers = 32MB\n\
             log_min_messages = warning\n",
            host.addr(),
            server.socket_dir.display()
        );
        let path = server.data_dir.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path).map_err(|e| io_error("reading", &path, e))?;
        text.push_str(&conf);
        std::fs::write(&path, text).map_err(|e| io_error("writing", &path, e))?;
        server.start()?;
        Ok(server)
    }

    /// Starts the server (`pg_ctl start -w`) inside the node's namespace.
    pub fn start(&self) -> Result<()> {
        let log = self.home.join("test-server.log");
        self.run(
            "pg_ctl",
            &[
                "start",
                "-w",
                "-D",
                &self.data_dir.display().to_string(),
                "-l",
                &log.display().to_string(),
            ],
        )
        .map(drop)
    }

    /// Kills the server as a crash would (`pg_ctl stop -m immediate`: no checkpoint).
    pub fn kill(&self) -> Result<()> {
        self.run(
            "pg_ctl",
            &[
                "stop",
                "-w",
                "-m",
                "immediate",
                "-D",
                &self.data_dir.display().to_string(),
            ],
        )
        .map(drop)
    }

    /// Whether the server runs.
    pub fn running(&self) -> bool {
        self.run(
            "pg_ctl",
            &["status", "-D", &self.data_dir.display().to_string()],
        )
        .is_ok()
    }

    /// The process ID of the postmaster running from this data directory, from the
    /// first line of its `postmaster.pid` (whoever started it).
    pub fn postmaster_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.data_dir.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// Runs one of PostgreSQL's programs as `postgres` inside the node's namespace.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.namespace, "setpriv"])
            .arg(format!("--reuid={}", self.owner.0))
            .arg(format!("--regid={}", self.owner.1))
            .args(["--init-groups", "--"])
            .arg(self.bindir.join(program))
            .args(args)
            .current_dir("/");
        let command = format!("{program} {}", args.join(" "));
        let out = cmd.output().map_err(|source| Error::MissingProgram {
            program: program.into(),
            source,
        })?;
        if !out.status.success() {
            return Err(Error::Command {
                command,
                status: out.status.to_string(),
                stderr: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.kill();
        // Whatever still runs from this data directory (a server started by the code
        // under test after the data directory was replaced) is killed.
        if let Some(pid) = self.postmaster_pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Parse {
        what: format!("{what} {}", path.display()),
        detail: e.to_string(),
    }
}
