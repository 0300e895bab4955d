//! PostgreSQL's programs and files: `pg_ctl`, `pg_basebackup`, `pg_rewind` and
//! `pg_controldata` run as the cluster's owner with their whole output kept in a log
//! file, and the files tandem edits (`tandem.conf`, its include line, a marked block
//! in `pg_hba.conf`, the password file, the TLS certificates and key) written
//! atomically and owned by that user.

use std::ffi::OsString;
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::AsyncReadExt;

use crate::config::PostgresConfig;
use crate::error::{Error, Result};
use crate::observer::Observer;
use crate::util::{now_ms, timestamp_for_file, write_atomically_as};

/// The line that makes `postgresql.conf` read tandem's settings.
pub(crate) const INCLUDE_LINE: &str = "include_if_exists = 'tandem.conf'";
const HBA_BEGIN: &str = "# tandem: begin (written by mp_replication init; edits here are replaced)";
const HBA_END: &str = "# tandem: end";
/// The password file of the standby's connections to the peer, beside
/// `postgresql.conf`: the server's own processes (the walreceiver) read it, so it
/// lives where PostgreSQL's user can reach, not in tandem's state directory (mode
/// 0700, root's).
const PASSFILE: &str = "tandem.pgpass";
/// This node's certificate (`ssl_cert_file`), beside `postgresql.conf` for the same
/// reason: the server reads it.
const TLS_CERT: &str = "tandem.crt";
/// Its private key (`ssl_key_file`, mode 0600).
const TLS_KEY: &str = "tandem.key";
/// The site CA's certificate (`sslrootcert` of the connections to the peer).
const TLS_ROOT: &str = "tandem-site-ca.crt";
/// The files of a data directory that belong to this node, not to the cluster: kept
/// across a `pg_rewind` or `pg_basebackup`, which copy the peer's.
pub(crate) const NODE_FILES: [&str; 9] = [
    "postgresql.conf",
    "postgresql.auto.conf",
    "pg_hba.conf",
    "pg_ident.conf",
    "tandem.conf",
    PASSFILE,
    TLS_CERT,
    TLS_KEY,
    TLS_ROOT,
];

/// One node's PostgreSQL installation: where its programs and files are and who owns
/// them.
#[derive(Debug, Clone)]
pub(crate) struct Server {
    pub(crate) cfg: PostgresConfig,
    pub(crate) bindir: PathBuf,
    /// uid and gid of the cluster's owner.
    pub(crate) owner: (u32, u32),
    /// Whether programs must switch to the owner (this process is root).
    switch_user: bool,
    /// `<state dir>/postgres`: program logs and the server log (written through
    /// descriptors that this process opens, so the state directory may stay root's
    /// alone), and the node's own files saved during a copy.
    pub(crate) log_dir: PathBuf,
}

impl Server {
    pub(crate) fn new(cfg: &PostgresConfig, state_dir: &Path) -> Result<Server> {
        let bindir = find_bindir(cfg)?;
        let user = nix::unistd::User::from_name(&cfg.os_user)
            .ok()
            .flatten()
            .ok_or_else(|| {
                Error::Config(format!(
                    "there is no operating system user `{}` to run PostgreSQL as: install \
                     PostgreSQL (its package creates `postgres`) or set \
                     [replication.postgres] os_user",
                    cfg.os_user
                ))
            })?;
        let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
        let me = nix::unistd::geteuid().as_raw();
        if me != 0 && me != uid {
            return Err(Error::Config(format!(
                "PostgreSQL's programs must run as `{}`: run mp_replication as root or as `{}`",
                cfg.os_user, cfg.os_user
            )));
        }
        Ok(Server {
            cfg: cfg.clone(),
            bindir,
            owner: (uid, gid),
            switch_user: me == 0 && uid != 0,
            log_dir: state_dir.join("postgres"),
        })
    }

    /// A server description for unit tests of the state files: no programs are
    /// looked for and none can run.
    #[cfg(test)]
    pub(crate) fn for_state_tests(state_dir: &Path) -> Server {
        Server {
            cfg: PostgresConfig::default(),
            bindir: PathBuf::from("/nonexistent"),
            owner: (0, 0),
            switch_user: false,
            log_dir: state_dir.join("postgres"),
        }
    }

    /// Makes the log directory, owned by the cluster's owner (the server writes its log
    /// there).
    pub(crate) fn prepare_log_dir(&self) -> Result<()> {
        make_owned_dir(&self.log_dir, self.owner)
    }

    pub(crate) fn server_log(&self) -> PathBuf {
        self.log_dir.join("server.log")
    }

    pub(crate) fn passfile(&self) -> PathBuf {
        self.files().passfile
    }

    /// The files of this node that its connections to the peer and its server's TLS
    /// use, beside `postgresql.conf` (where PostgreSQL's user reaches them).
    pub(crate) fn files(&self) -> NodeFiles {
        NodeFiles::in_dir(&self.cfg.config_dir())
    }

    fn program_log(&self, program: &str) -> PathBuf {
        self.log_dir.join(format!("{program}.log"))
    }

    /// Whether the data directory holds a cluster.
    pub(crate) fn has_cluster(&self) -> bool {
        self.cfg.data_dir.join("PG_VERSION").is_file()
    }

    /// Runs one of PostgreSQL's programs as the cluster's owner and returns its
    /// standard output. Its output is appended to `<log dir>/<program>.log`; a failure
    /// names the program, what it was for, and that file. With an observer, progress
    /// lines (`N/M kB`) on its standard error are reported.
    pub(crate) async fn run(
        &self,
        program: &str,
        args: &[OsString],
        what: &str,
        progress: Option<&dyn Observer>,
    ) -> Result<String> {
        let (text, ok, status) = self.run_status(program, args, what, progress).await?;
        if ok {
            Ok(text)
        } else {
            Err(self.program_error(program, what, &status))
        }
    }

    /// [`run`](Self::run) that also returns a failed run's output: (stdout, success,
    /// exit status text).
    pub(crate) async fn run_status(
        &self,
        program: &str,
        args: &[OsString],
        what: &str,
        progress: Option<&dyn Observer>,
    ) -> Result<(String, bool, String)> {
        let path = self.bindir.join(program);
        let mut cmd = self.command(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let log = self.program_log(program);
        let line = format!(
            "\n=== {} {} {}\n",
            timestamp_for_file(now_ms()),
            path.display(),
            args.iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        );
        append(&log, line.as_bytes());
        let mut child = cmd.spawn().map_err(|e| Error::Program {
            program: program.to_owned(),
            what: what.to_owned(),
            status: format!("cannot start {}: {e}", path.display()),
            log: log.clone(),
            tail: String::new(),
        })?;
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let out_task = async {
            let mut buf = Vec::new();
            if let Some(s) = stdout.as_mut() {
                let _ = s.read_to_end(&mut buf).await;
            }
            buf
        };
        let err_task = async {
            let mut all = Vec::new();
            let mut chunk = [0u8; 4096];
            let mut pending = Vec::new();
            if let Some(s) = stderr.as_mut() {
                while let Ok(n) = s.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    let bytes = chunk.get(..n).unwrap_or_default();
                    all.extend_from_slice(bytes);
                    pending.extend_from_slice(bytes);
                    while let Some(i) = pending.iter().position(|b| *b == b'\r' || *b == b'\n') {
                        let piece: Vec<u8> = pending.drain(..=i).collect();
                        if let (Some(obs), Some((done, total))) =
                            (progress, parse_progress(&String::from_utf8_lossy(&piece)))
                        {
                            obs.copied_kb(done, total);
                        }
                    }
                }
            }
            all
        };
        let (out, err) = tokio::join!(out_task, err_task);
        let status = child.wait().await;
        append(&log, &out);
        append(&log, &strip_progress(&err));
        let (ok, status) = match status {
            Ok(s) => (s.success(), s.to_string()),
            Err(e) => (false, format!("cannot wait for it: {e}")),
        };
        Ok((String::from_utf8_lossy(&out).into_owned(), ok, status))
    }

    /// `program` of PostgreSQL's, to run as the cluster's owner, from `/`, without
    /// the environment's `PGDATA`, `PGHOST` and `PGPORT`.
    fn command(&self, program: &str) -> tokio::process::Command {
        let path = self.bindir.join(program);
        let mut cmd = if self.switch_user {
            let mut cmd = tokio::process::Command::new("setpriv");
            cmd.arg(format!("--reuid={}", self.owner.0))
                .arg(format!("--regid={}", self.owner.1))
                .arg("--init-groups")
                .arg("--")
                .arg(&path);
            cmd
        } else {
            tokio::process::Command::new(&path)
        };
        cmd.current_dir("/")
            .env_remove("PGDATA")
            .env_remove("PGHOST")
            .env_remove("PGPORT");
        cmd
    }

    fn program_error(&self, program: &str, what: &str, status: &str) -> Error {
        let log = self.program_log(program);
        Error::Program {
            program: program.to_owned(),
            what: what.to_owned(),
            status: status.to_owned(),
            tail: tail_of(&log, 6),
            log,
        }
    }

    /// Whether the server runs (`pg_ctl status`).
    pub(crate) async fn running(&self) -> Result<bool> {
        if !self.has_cluster() {
            return Ok(false);
        }
        let args = [
            os("status"),
            os("-D"),
            self.cfg.config_dir().into_os_string(),
        ];
        let (_, ok, _) = self
            .run_status("pg_ctl", &args, "asking whether the server runs", None)
            .await?;
        Ok(ok)
    }

    /// Starts the server and waits until it accepts connections (a standby: once it is
    /// consistent).
    ///
    /// The server's output goes to `<log dir>/server.log` through a descriptor this
    /// process opens (not `pg_ctl -l`, which PostgreSQL's user would have to open in
    /// the state directory); `pg_ctl`'s own lines go there too.
    pub(crate) async fn start(&self) -> Result<()> {
        self.prepare_log_dir()?;
        let args = [
            os("start"),
            os("-w"),
            os("-t"),
            os("600"),
            os("-D"),
            self.cfg.config_dir().into_os_string(),
        ];
        let log_path = self.server_log();
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(Error::file("cannot open the server log", &log_path))
        };
        let (out, err) = (open()?, open()?);
        append(
            &self.program_log("pg_ctl"),
            format!(
                "\n=== {} pg_ctl start -D {} (output in {})\n",
                timestamp_for_file(now_ms()),
                self.cfg.config_dir().display(),
                log_path.display()
            )
            .as_bytes(),
        );
        let status = self
            .command("pg_ctl")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .status()
            .await
            .map_err(|e| Error::Program {
                program: "pg_ctl".to_owned(),
                what: "starting the server".to_owned(),
                status: format!("cannot start pg_ctl: {e}"),
                log: log_path.clone(),
                tail: String::new(),
            })?;
        if status.success() {
            return Ok(());
        }
        let mut e = self.program_error("pg_ctl", "starting the server", &status.to_string());
        if let Error::Program { tail, .. } = &mut e {
            let server = tail_of(&self.server_log(), 4);
            tail.push_str(&format!(
                " (server log {}: {server})",
                self.server_log().display()
            ));
        }
        Err(e)
    }

    /// Stops the server (fast: sessions are ended, a checkpoint is written); if that
    /// does not work, immediately.
    pub(crate) async fn stop(&self) -> Result<()> {
        if !self.running().await? {
            return Ok(());
        }
        let dir = self.cfg.config_dir().into_os_string();
        let fast = [
            os("stop"),
            os("-w"),
            os("-m"),
            os("fast"),
            os("-D"),
            dir.clone(),
        ];
        if self
            .run_status("pg_ctl", &fast, "stopping the server", None)
            .await?
            .1
        {
            return Ok(());
        }
        let immediate = [
            os("stop"),
            os("-w"),
            os("-m"),
            os("immediate"),
            os("-D"),
            dir,
        ];
        self.run(
            "pg_ctl",
            &immediate,
            "stopping the server immediately",
            None,
        )
        .await
        .map(drop)
    }

    /// Restarts the server (settings that need a restart, such as `wal_log_hints`).
    pub(crate) async fn restart(&self) -> Result<()> {
        self.stop().await?;
        self.start().await
    }

    /// `pg_controldata` of the data directory, or `None` when there is no cluster.
    pub(crate) async fn control_data(&self) -> Result<Option<ControlData>> {
        if !self.has_cluster() {
            return Ok(None);
        }
        let args = [os("-D"), self.cfg.data_dir.clone().into_os_string()];
        let text = self
            .run("pg_controldata", &args, "reading the control file", None)
            .await?;
        Ok(Some(ControlData::parse(&text)))
    }

    /// Writes `text` to a file PostgreSQL reads, owned by the cluster's owner, keeping
    /// the old file's mode (0600 for a new file).
    pub(crate) fn write_file(&self, path: &Path, text: &str) -> Result<()> {
        let mode = std::fs::metadata(path).map_or(0o600, |m| m.permissions().mode() & 0o777);
        let owner = std::fs::metadata(path).map_or(self.owner, |m| (m.uid(), m.gid()));
        write_atomically_as(path, text.as_bytes(), Some((owner.0, owner.1, mode)))
    }

    pub(crate) fn read_file(&self, path: &Path) -> Result<String> {
        std::fs::read_to_string(path).map_err(Error::file("cannot read", path))
    }

    /// Adds the include line to `postgresql.conf` unless it is there.
    pub(crate) fn ensure_include(&self) -> Result<bool> {
        let path = self.cfg.config_file();
        let text = self.read_file(&path)?;
        match with_include(&text) {
            Some(new) => self.write_file(&path, &new).map(|()| true),
            None => Ok(false),
        }
    }

    /// Puts tandem's block (the peer's node address only) first in `pg_hba.conf`.
    pub(crate) fn ensure_hba(&self, peer: IpAddr) -> Result<bool> {
        let path = self.cfg.hba_file();
        let text = self.read_file(&path)?;
        let new = with_hba_block(
            &text,
            &self.cfg.replication_user,
            &self.cfg.database,
            peer,
            self.cfg.tls,
        );
        if new == text {
            return Ok(false);
        }
        self.write_file(&path, &new).map(|()| true)
    }

    /// Writes the password file that the standby's connections to the peer use.
    pub(crate) fn write_passfile(&self, password: &str) -> Result<()> {
        let text = format!("*:*:*:{}:{password}\n", self.cfg.replication_user);
        write_atomically_as(
            &self.passfile(),
            text.as_bytes(),
            Some((self.owner.0, self.owner.1, 0o600)),
        )
    }

    /// Whether this node's certificate, its key and the site CA's certificate are there.
    pub(crate) fn has_tls_files(&self) -> bool {
        let files = self.files();
        [files.cert, files.key, files.root]
            .iter()
            .all(|p| p.is_file())
    }

    /// Writes this node's certificate, its key (mode 0600: PostgreSQL refuses a key
    /// that others may read) and the site CA's certificate, owned by the cluster's
    /// owner. The key goes first, so a certificate never names a key not yet written.
    pub(crate) fn write_tls(&self, issued: &super::tls::Issued) -> Result<()> {
        let dir = self.cfg.config_dir();
        if !dir.exists() {
            // No cluster here yet: PostgreSQL's programs (pg_basebackup) read the
            // files before the copy fills the directory.
            make_owned_dir(&dir, self.owner)?;
        }
        let files = self.files();
        let own = |mode| Some((self.owner.0, self.owner.1, mode));
        write_atomically_as(&files.key, issued.key.as_bytes(), own(0o600))?;
        write_atomically_as(&files.cert, issued.cert.as_bytes(), own(0o644))?;
        write_atomically_as(&files.root, issued.ca.as_bytes(), own(0o644))
    }

    /// Marks the cluster as a standby (`standby.signal`).
    pub(crate) fn write_standby_signal(&self) -> Result<()> {
        let path = self.cfg.data_dir.join("standby.signal");
        self.write_file(&path, "")
    }

    /// Copies this node's own files out of the data directory to `<log dir>/node-files`
    /// (before a copy replaces the data directory with the peer's).
    pub(crate) fn save_node_files(&self) -> Result<usize> {
        let backup = self.log_dir.join("node-files");
        make_owned_dir(&backup, self.owner)?;
        let mut saved = 0;
        for name in NODE_FILES {
            let from = self.cfg.data_dir.join(name);
            if let Ok(text) = std::fs::read(&from) {
                let to = backup.join(name);
                write_atomically_as(&to, &text, Some((self.owner.0, self.owner.1, 0o600)))?;
                saved += 1;
            }
        }
        Ok(saved)
    }

    /// Puts back the files [`save_node_files`](Self::save_node_files) saved.
    pub(crate) fn restore_node_files(&self) -> Result<usize> {
        let backup = self.log_dir.join("node-files");
        let mut restored = 0;
        for name in NODE_FILES {
            if let Ok(text) = std::fs::read(backup.join(name)) {
                let to = self.cfg.data_dir.join(name);
                write_atomically_as(&to, &text, Some((self.owner.0, self.owner.1, 0o600)))?;
                restored += 1;
            }
        }
        Ok(restored)
    }

    /// Makes an empty directory owned by the cluster's owner, mode 0700.
    pub(crate) fn make_data_dir(&self, path: &Path) -> Result<()> {
        if path.exists() {
            std::fs::remove_dir_all(path).map_err(Error::file("cannot remove", path))?;
        }
        make_owned_dir(path, self.owner)
    }
}

/// The files beside `postgresql.conf` that tandem writes for a node's connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeFiles {
    /// The password file of the connections to the peer (`passfile`).
    pub(crate) passfile: PathBuf,
    /// This node's server certificate (`ssl_cert_file`).
    pub(crate) cert: PathBuf,
    /// Its private key (`ssl_key_file`).
    pub(crate) key: PathBuf,
    /// The site CA's certificate, which the peer's certificate must chain to
    /// (`sslrootcert`).
    pub(crate) root: PathBuf,
}

impl NodeFiles {
    /// The files in `dir`.
    pub(crate) fn in_dir(dir: &Path) -> NodeFiles {
        NodeFiles {
            passfile: dir.join(PASSFILE),
            cert: dir.join(TLS_CERT),
            key: dir.join(TLS_KEY),
            root: dir.join(TLS_ROOT),
        }
    }
}

/// What `pg_controldata` says that tandem needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ControlData {
    pub(crate) system_identifier: Option<String>,
    /// `Database cluster state`: `in production`, `shut down`, `shut down in recovery`,
    /// `in archive recovery`, ...
    pub(crate) state: String,
    pub(crate) wal_log_hints: bool,
    pub(crate) checksums: bool,
}

impl ControlData {
    pub(crate) fn parse(text: &str) -> ControlData {
        let mut out = ControlData::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match key.trim() {
                "Database system identifier" => out.system_identifier = Some(value.to_owned()),
                "Database cluster state" => out.state = value.to_owned(),
                "wal_log_hints setting" => out.wal_log_hints = value == "on",
                "Data page checksum version" => out.checksums = value != "0",
                _ => {}
            }
        }
        out
    }

    /// Whether the cluster was last a primary (not a standby in recovery).
    pub(crate) fn was_primary(&self) -> bool {
        matches!(
            self.state.as_str(),
            "in production" | "shut down" | "in crash recovery"
        )
    }

    /// Whether `pg_rewind` can work on it.
    pub(crate) fn rewindable(&self) -> bool {
        self.wal_log_hints || self.checksums
    }
}

/// `postgresql.conf` with the include line appended, or `None` when it has it.
pub(crate) fn with_include(text: &str) -> Option<String> {
    if text.lines().any(|l| l.trim() == INCLUDE_LINE) {
        return None;
    }
    let mut out = text.to_owned();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str("\n# tandem's replication settings (mp_replication); keep this line last\n");
    out.push_str(INCLUDE_LINE);
    out.push('\n');
    Some(out)
}

/// `pg_hba.conf` with tandem's block first: the replication role may connect from the
/// peer's node address only, with SCRAM (replication connections, and `database` for
/// `pg_rewind` and the status of the remote node). With `tls` only over TLS
/// (`hostssl`), and the role's plain-text connections are rejected from anywhere, so a
/// broader line of the operator's further down cannot let them in.
pub(crate) fn with_hba_block(
    text: &str,
    user: &str,
    database: &str,
    peer: IpAddr,
    tls: bool,
) -> String {
    let mask = if peer.is_ipv4() { 32 } else { 128 };
    let host = if tls { "hostssl" } else { "host" };
    let mut out = format!(
        "{HBA_BEGIN}\n{host} replication {user} {peer}/{mask} scram-sha-256\n\
         {host} {database} {user} {peer}/{mask} scram-sha-256\n"
    );
    if tls {
        // `all` does not match replication connections: both are named.
        out.push_str(&format!(
            "hostnossl replication {user} all reject\nhostnossl all {user} all reject\n"
        ));
    }
    out.push_str(HBA_END);
    out.push('\n');
    let mut inside = false;
    for line in text.lines() {
        if line == HBA_BEGIN {
            inside = true;
        } else if inside && line == HBA_END {
            inside = false;
        } else if !inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// A PostgreSQL configuration value in single quotes.
pub(crate) fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// A libpq connection-string value in single quotes.
pub(crate) fn conninfo_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// `N/M kB` in a progress line of `pg_basebackup` or `pg_rewind`.
pub(crate) fn parse_progress(line: &str) -> Option<(u64, u64)> {
    let kb = line.find(" kB")?;
    let head = line.get(..kb)?;
    let start = head
        .rfind(|c: char| !(c.is_ascii_digit() || c == '/'))
        .map_or(0, |i| i + 1);
    let (done, total) = head.get(start..)?.split_once('/')?;
    Some((done.parse().ok()?, total.parse().ok()?))
}

/// Output without the repeated progress lines (only the last of each run is kept).
fn strip_progress(bytes: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::new();
    for line in text.split('\n') {
        let last = line
            .rsplit('\r')
            .find(|p| !p.trim().is_empty())
            .unwrap_or("");
        out.push_str(last);
        out.push('\n');
    }
    out.into_bytes()
}

/// The last `n` non-empty lines of a file, on one line.
pub(crate) fn tail_of(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("==="))
        .collect();
    lines
        .get(lines.len().saturating_sub(n)..)
        .unwrap_or_default()
        .join(" | ")
}

fn append(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(bytes);
    }
}

fn make_owned_dir(path: &Path, owner: (u32, u32)) -> Result<()> {
    std::fs::create_dir_all(path).map_err(Error::file("cannot create the directory", path))?;
    std::os::unix::fs::chown(path, Some(owner.0), Some(owner.1)).map_err(Error::file(
        "cannot give the directory to PostgreSQL's user",
        path,
    ))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .map_err(Error::file("cannot set the mode of", path))
}

fn find_bindir(cfg: &PostgresConfig) -> Result<PathBuf> {
    let candidates: Vec<PathBuf> = match &cfg.bindir {
        Some(dir) => vec![dir.clone()],
        None => {
            let mut dirs = vec![PathBuf::from("/usr/lib/postgresql/15/bin")];
            if let Ok(out) = std::process::Command::new("pg_config")
                .arg("--bindir")
                .output()
                && out.status.success()
            {
                dirs.push(PathBuf::from(
                    String::from_utf8_lossy(&out.stdout).trim().to_owned(),
                ));
            }
            dirs
        }
    };
    candidates
        .iter()
        .find(|d| d.join("pg_ctl").is_file())
        .cloned()
        .ok_or_else(|| {
            Error::Config(format!(
                "PostgreSQL's programs (pg_ctl) are not in {}: install postgresql-15 or set \
                 [replication.postgres] bindir",
                candidates
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ))
        })
}

pub(crate) fn os(text: &str) -> OsString {
    OsString::from(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_include_line_is_added_once() {
        let once = with_include("port = 5433").unwrap();
        assert!(
            once.ends_with("include_if_exists = 'tandem.conf'\n"),
            "{once}"
        );
        assert_eq!(with_include(&once), None);
    }

    #[test]
    fn the_hba_block_comes_first_and_is_replaced() {
        let peer: IpAddr = "192.0.2.12".parse().unwrap();
        let base = "local all all trust\n";
        let one = with_hba_block(base, "repl", "postgres", peer, false);
        assert_eq!(
            one,
            format!(
                "{HBA_BEGIN}\nhost replication repl 192.0.2.12/32 scram-sha-256\n\
                 host postgres repl 192.0.2.12/32 scram-sha-256\n{HBA_END}\nlocal all all trust\n"
            )
        );
        let other: IpAddr = "2001:db8::12".parse().unwrap();
        let two = with_hba_block(&one, "repl", "postgres", other, false);
        assert!(!two.contains("192.0.2.12"), "{two}");
        assert!(two.contains("2001:db8::12/128"), "{two}");
        assert_eq!(two.matches(HBA_BEGIN).count(), 1);
        assert!(two.ends_with("local all all trust\n"));
    }

    #[test]
    fn with_tls_the_hba_block_lets_the_role_in_over_tls_only() {
        let peer: IpAddr = "192.0.2.12".parse().unwrap();
        let base = "local all all trust\nhost all all 0.0.0.0/0 scram-sha-256\n";
        let block = with_hba_block(base, "repl", "postgres", peer, true);
        assert_eq!(
            block,
            format!(
                "{HBA_BEGIN}\nhostssl replication repl 192.0.2.12/32 scram-sha-256\n\
                 hostssl postgres repl 192.0.2.12/32 scram-sha-256\n\
                 hostnossl replication repl all reject\nhostnossl all repl all reject\n\
                 {HBA_END}\n{base}"
            )
        );
        assert!(!block.contains("\nhost replication"), "{block}");
        // Switching TLS off again replaces the whole block.
        let plain = with_hba_block(&block, "repl", "postgres", peer, false);
        assert!(
            !plain.contains("hostssl") && !plain.contains("reject"),
            "{plain}"
        );
    }

    #[test]
    fn progress_lines_are_read() {
        assert_eq!(
            parse_progress("  1234/56789 kB (2%), 0/1 tablespace"),
            Some((1234, 56789))
        );
        assert_eq!(
            parse_progress("31337/31337 kB (100%) copied"),
            Some((31337, 31337))
        );
        assert_eq!(parse_progress("pg_rewind: done"), None);
        let stripped = strip_progress(b"1/10 kB\r5/10 kB\r10/10 kB\nok\n");
        assert_eq!(String::from_utf8_lossy(&stripped), "10/10 kB\nok\n\n");
    }

    #[test]
    fn control_data_is_parsed() {
        let text = "pg_control version number:            1300\n\
                    Database system identifier:           7312345678901234567\n\
                    Database cluster state:               in production\n\
                    wal_log_hints setting:                on\n\
                    Data page checksum version:           0\n";
        let c = ControlData::parse(text);
        assert_eq!(c.system_identifier.as_deref(), Some("7312345678901234567"));
        assert!(c.was_primary() && c.rewindable());
        let standby = ControlData::parse("Database cluster state: shut down in recovery\n");
        assert!(!standby.was_primary() && !standby.rewindable());
    }

    #[test]
    fn a_failed_program_names_itself_its_log_and_its_last_lines() {
        let dir = std::env::temp_dir().join(format!("tandem-pg-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("pg_rewind.log");
        std::fs::write(
            &log,
            "=== 20261201T200000Z pg_rewind -D /x\npg_rewind: connected to server\n\
             pg_rewind: fatal: could not find previous WAL record at 0/3000028\n",
        )
        .unwrap();
        let e = Error::Program {
            program: "pg_rewind".into(),
            what: "rewinding from the peer".into(),
            status: "exit status: 1".into(),
            tail: tail_of(&log, 6),
            log: log.clone(),
        };
        let text = e.to_string();
        assert!(
            text.starts_with("pg_rewind failed while rewinding from the peer (exit status: 1)"),
            "{text}"
        );
        assert!(text.contains(&log.display().to_string()), "{text}");
        assert!(
            text.ends_with(
                "connected to server | pg_rewind: fatal: could not find previous WAL record at 0/3000028"
            ),
            "{text}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn values_are_quoted() {
        assert_eq!(conf_quote("a'b"), "'a''b'");
        assert_eq!(conninfo_quote("a'b\\"), "'a\\'b\\\\'");
    }
}
