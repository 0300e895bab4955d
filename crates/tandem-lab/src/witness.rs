//! etcd witness members for tests: one or three real `etcd` servers (Debian's
//! `etcd-server`, 3.4), each in its own namespace on the lab's bridge, at
//! 192.0.2.21, .22 and .23 (see `DESIGN.md`, "Lab").
//!
//! [`Lab::start_witness`] makes the namespaces (`<lab>-witness1`... in test labs,
//! `witness1`... in a plain lab), plugs them into the bridge like the other hosts,
//! and starts `ip netns exec NS etcd ...` for each member with its data directory
//! and log in a directory of its own under the temporary directory. It returns once
//! every member answers `GET /health` with `{"health":"true"}`, or fails with the
//! log tail of the member that did not.
//!
//! What is left behind by each kind of ending: a dropped [`WitnessCluster`] (also
//! during a panic unwind) kills its etcd processes, then every process still in its
//! namespaces, deletes the namespaces (their veths go with them) and removes its
//! directory. A test process that is killed leaves them all; the next `Lab::up`
//! sweeps namespaces and directories named after a process that is gone, killing
//! whatever still runs inside those namespaces first. Dropping the [`Lab`] before
//! the cluster also removes the witness namespaces and their processes.
//!
//! [`Lab::cut_from_witness`] cuts one node from the witness only (blackhole routes
//! in the node's namespace), so it still reaches its peer and the client.
//!
//! ```no_run
//! use tandem_lab::{Host, Lab};
//!
//! let lab = Lab::for_test();
//! let mut witness = lab.start_witness(3)?;
//! assert_eq!(witness.endpoints()[0], "http://192.0.2.21:2379");
//! witness.kill(2)?; // two of three still form a quorum
//! witness.start(2)?; // back with its data directory
//! lab.cut_from_witness(Host::Node1, true)?;
//! drop(witness); // etcd processes, namespaces and data directories are gone
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::{Error, Host, LAB_IFACE, Lab, PREFIX_LEN, Result, ip, run_in_namespace};

/// The etcd server program (Debian package `etcd-server`).
pub const ETCD: &str = "/usr/bin/etcd";
/// The most members a lab witness has.
pub const MAX_MEMBERS: usize = 3;
/// The members' addresses: member `n` (1-based) has `WITNESS_ADDRS[n - 1]`.
pub const WITNESS_ADDRS: [Ipv4Addr; MAX_MEMBERS] = [
    Ipv4Addr::new(192, 0, 2, 21),
    Ipv4Addr::new(192, 0, 2, 22),
    Ipv4Addr::new(192, 0, 2, 23),
];
/// The port etcd serves clients on.
pub const CLIENT_PORT: u16 = 2379;
/// The port etcd members talk to each other on.
pub const PEER_PORT: u16 = 2380;
/// How long [`Lab::start_witness`] and [`WitnessCluster::start`] wait for health.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

static CLUSTER_COUNTER: AtomicU32 = AtomicU32::new(0);

/// One etcd member of a [`WitnessCluster`].
#[derive(Debug)]
struct Member {
    /// `w1`, `w2`, `w3`.
    name: String,
    namespace: String,
    addr: Ipv4Addr,
    log: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

/// Running etcd members in the lab. Dropping it kills them and removes their
/// namespaces and directories. Members are numbered from 1.
#[derive(Debug)]
pub struct WitnessCluster {
    members: Vec<Member>,
    dir: PathBuf,
}

impl Lab {
    /// The namespace of witness member `member` (1-based): `<lab>-witness1`... in
    /// a test lab, `witness1`... in a plain one.
    pub fn witness_namespace(&self, member: usize) -> String {
        match &self.prefix {
            Some(prefix) => format!("{prefix}-witness{member}"),
            None => format!("witness{member}"),
        }
    }

    /// Starts a witness of `members` etcd members (1 or 3) in their own namespaces on
    /// the lab's bridge and waits until each answers its health check.
    ///
    /// Fails with [`Error::MissingEtcd`] when etcd is not installed, and with
    /// [`Error::WitnessNotReady`] (carrying the member's log tail) when a member
    /// does not become healthy within [`READY_TIMEOUT`]. Whatever was made before
    /// an error is removed again.
    pub fn start_witness(&self, members: usize) -> Result<WitnessCluster> {
        if members != 1 && members != MAX_MEMBERS {
            return Err(Error::Parse {
                what: "witness size".into(),
                detail: format!("{members} members; a lab witness has 1 or 3"),
            });
        }
        require_etcd()?;
        let existing: Vec<String> = (1..=MAX_MEMBERS)
            .map(|m| self.witness_namespace(m))
            .filter(|ns| crate::namespace_exists(ns))
            .collect();
        if !existing.is_empty() {
            // Another cluster of this lab runs: building over it would remove it on drop.
            return Err(Error::AlreadyUp {
                names: existing.join(", "),
            });
        }
        let n = CLUSTER_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(match &self.prefix {
            Some(prefix) => format!("{prefix}-witness{n}"),
            None => format!("tandem-witness{n}"),
        });
        let token = format!("{}-{n}", dir.display()).replace(['/', ' '], "_");
        let numbers = 1..=members;
        let initial_cluster: Vec<String> = numbers
            .clone()
            .map(|m| format!("w{m}=http://{}:{PEER_PORT}", WITNESS_ADDRS[m - 1]))
            .collect();
        let initial_cluster = initial_cluster.join(",");
        let mut cluster = WitnessCluster {
            members: numbers
                .map(|m| {
                    let name = format!("w{m}");
                    let addr = WITNESS_ADDRS[m - 1];
                    let data_dir = dir.join(&name);
                    let args = etcd_args(&name, addr, &data_dir, &initial_cluster, &token);
                    Member {
                        log: dir.join(format!("{name}.log")),
                        namespace: self.witness_namespace(m),
                        name,
                        addr,
                        args,
                        child: None,
                    }
                })
                .collect(),
            dir,
        };
        // From here on, dropping `cluster` removes whatever exists.
        std::fs::create_dir_all(&cluster.dir).map_err(|e| io_error("creating", &cluster.dir, e))?;
        for m in &cluster.members {
            self.plug_in(&m.namespace, m.addr)?;
        }
        for i in 0..cluster.members.len() {
            cluster.spawn(i)?;
        }
        for i in 0..cluster.members.len() {
            cluster.wait_index_healthy(i)?;
        }
        Ok(cluster)
    }

    /// Makes namespace `ns` with an `eth0` on the bridge holding `addr`.
    fn plug_in(&self, ns: &str, addr: Ipv4Addr) -> Result<()> {
        let sw = self.switch_namespace();
        // The bridge port is named after the namespace's last part: `p-witness1`.
        let port = format!("p-{}", ns.rsplit('-').next().unwrap_or(ns));
        ip(&["netns", "add", ns])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", LAB_IFACE, "netns", ns,
        ])?;
        ip(&["-n", &sw, "link", "set", &port, "master", crate::BRIDGE])?;
        ip(&["-n", &sw, "link", "set", &port, "up"])?;
        ip(&["-n", ns, "link", "set", LAB_IFACE, "up"])?;
        let own = format!("{addr}/{PREFIX_LEN}");
        ip(&["-n", ns, "addr", "add", &own, "dev", LAB_IFACE]).map(drop)
    }

    /// Cuts `host` from the witness members only (`cut = true`: blackhole routes
    /// for 192.0.2.21-23 in its namespace), or undoes that. The host still reaches
    /// its peer, the client and the gateway. Both directions are idempotent.
    pub fn cut_from_witness(&self, host: Host, cut: bool) -> Result<()> {
        let ns = self.namespace(host);
        for addr in WITNESS_ADDRS {
            let dst = format!("{addr}/32");
            if cut {
                ip(&["-n", &ns, "route", "replace", "blackhole", &dst])?;
            } else if let Err(e) = ip(&["-n", &ns, "route", "del", "blackhole", &dst]) {
                // Not cut: nothing to undo.
                if !self.witness_route_missing(&ns, &dst)? {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn witness_route_missing(&self, ns: &str, dst: &str) -> Result<bool> {
        let out = ip(&["-n", ns, "route", "show", "type", "blackhole", dst])?;
        Ok(out.stdout.is_empty())
    }
}

impl WitnessCluster {
    /// The client URLs of all members (`http://192.0.2.21:2379`, ...), killed or not.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://{}:{CLIENT_PORT}", m.addr))
            .collect()
    }

    /// How many members the cluster has.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no members (never true for a started one).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The namespace of member `member` (1-based).
    pub fn namespace(&self, member: usize) -> Result<&str> {
        Ok(&self.member(member)?.namespace)
    }

    /// The pids of the etcd processes that run now.
    pub fn pids(&mut self) -> Vec<u32> {
        let mut pids = Vec::new();
        for m in &mut self.members {
            if let Some(child) = &mut m.child
                && matches!(child.try_wait(), Ok(None))
            {
                pids.push(child.id());
            }
        }
        pids
    }

    /// Kills member `member` (SIGKILL, as a crash would) and waits for it to exit.
    /// Its data directory stays for [`WitnessCluster::start`].
    pub fn kill(&mut self, member: usize) -> Result<()> {
        let index = self.index(member)?;
        if let Some(mut child) = self.members[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(())
    }

    /// Starts member `member` again with its data directory, and waits until it is
    /// healthy. Does nothing to a member that runs.
    pub fn start(&mut self, member: usize) -> Result<()> {
        let index = self.index(member)?;
        self.ensure_running(index)?;
        self.wait_index_healthy(index)
    }

    /// Spawns member `index` unless it runs.
    fn ensure_running(&mut self, index: usize) -> Result<()> {
        let running = self.members[index]
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        if running { Ok(()) } else { self.spawn(index) }
    }

    /// Starts every member that is not running (after [`WitnessCluster::stop_all`]
    /// or a kill of each: one alone would never find a quorum), then waits until
    /// each is healthy.
    pub fn start_all(&mut self) -> Result<()> {
        for index in 0..self.members.len() {
            self.ensure_running(index)?;
        }
        for index in 0..self.members.len() {
            self.wait_index_healthy(index)?;
        }
        Ok(())
    }

    /// Kills every member; the namespaces and directories stay until drop.
    pub fn stop_all(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// The last lines of member `member`'s log.
    pub fn log_tail(&self, member: usize) -> String {
        self.member(member)
            .map(|m| tail(&m.log, 20))
            .unwrap_or_default()
    }

    fn index(&self, member: usize) -> Result<usize> {
        if (1..=self.members.len()).contains(&member) {
            Ok(member - 1)
        } else {
            Err(Error::Parse {
                what: "witness member".into(),
                detail: format!(
                    "member {member} does not exist; members are 1..={}",
                    self.members.len()
                ),
            })
        }
    }

    fn member(&self, member: usize) -> Result<&Member> {
        Ok(&self.members[self.index(member)?])
    }

    fn spawn(&mut self, index: usize) -> Result<()> {
        let m = &mut self.members[index];
        let log = File::options()
            .create(true)
            .append(true)
            .open(&m.log)
            .map_err(|e| io_error("opening", &m.log, e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| io_error("opening", &m.log, e))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &m.namespace, ETCD])
            .args(&m.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .current_dir(&self.dir)
            .spawn()
            .map_err(|source| Error::MissingProgram {
                program: "ip".into(),
                source,
            })?;
        m.child = Some(child);
        Ok(())
    }

    /// Waits until member `member` (1-based) answers its health check (a quorum
    /// is up and has a leader), for at most [`READY_TIMEOUT`]. After a kill of the
    /// leader the others answer unhealthy until they have elected a new one.
    pub fn wait_healthy(&mut self, member: usize) -> Result<()> {
        let index = self.index(member)?;
        self.wait_index_healthy(index)
    }

    /// Waits until member `index` answers `GET /health` with `"health":"true"`.
    fn wait_index_healthy(&mut self, index: usize) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let m = &mut self.members[index];
            if let Some(child) = &mut m.child
                && let Ok(Some(status)) = child.try_wait()
            {
                m.child = None;
                return Err(not_ready(m, format!("etcd exited ({status})")));
            }
            let last = match health(&m.namespace, m.addr) {
                Ok(body) if body.contains("\"health\":\"true\"") => return Ok(()),
                Ok(body) => format!("unhealthy: {}", body.trim()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(not_ready(
                    m,
                    format!("not healthy after {READY_TIMEOUT:?}: {last}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for WitnessCluster {
    fn drop(&mut self) {
        self.stop_all();
        for m in &self.members {
            remove_namespace(&m.namespace);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Fails with [`Error::MissingEtcd`] unless etcd is installed.
pub fn require_etcd() -> Result<()> {
    Command::new(ETCD)
        .arg("--version")
        .output()
        .map(drop)
        .map_err(|source| Error::MissingEtcd { source })
}

/// Kills every process inside namespace `ns`, then deletes it (quietly: this runs
/// from drops and sweeps, where nothing can be reported).
pub(crate) fn remove_namespace(ns: &str) {
    if !crate::namespace_exists(ns) {
        return;
    }
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let pid = nix::unistd::Pid::from_raw(pid);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
            }
        }
    }
    let _ = ip(&["netns", "del", ns]);
}

fn etcd_args(
    name: &str,
    addr: Ipv4Addr,
    data_dir: &Path,
    initial_cluster: &str,
    token: &str,
) -> Vec<String> {
    let client = format!("http://{addr}:{CLIENT_PORT}");
    let peer = format!("http://{addr}:{PEER_PORT}");
    [
        "--name",
        name,
        "--data-dir",
        &data_dir.display().to_string(),
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        &peer,
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster",
        initial_cluster,
        "--initial-cluster-state",
        "new",
        "--initial-cluster-token",
        token,
        // Lab timings: a lost leader is replaced within about a second.
        "--heartbeat-interval",
        "50",
        "--election-timeout",
        "500",
        "--logger",
        "zap",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `GET /health` on `addr` from inside namespace `ns`; the response body or why not.
fn health(ns: &str, addr: Ipv4Addr) -> std::result::Result<String, String> {
    let target = SocketAddr::from((addr, CLIENT_PORT));
    let attempt = || -> std::io::Result<String> {
        let timeout = Duration::from_millis(500);
        let mut stream = TcpStream::connect_timeout(&target, timeout)?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        stream.set_write_timeout(Some(timeout))?;
        write!(stream, "GET /health HTTP/1.0\r\nHost: {target}\r\n\r\n")?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(text
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_string())
    };
    run_in_namespace(ns, attempt)
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("GET http://{target}/health: {e}"))
}

fn not_ready(m: &Member, detail: String) -> Error {
    Error::WitnessNotReady {
        member: m.name.clone(),
        detail,
        log_tail: tail(&m.log, 20),
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Parse {
        what: format!("{what} {}", path.display()),
        detail: e.to_string(),
    }
}
