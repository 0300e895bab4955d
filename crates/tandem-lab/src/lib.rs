//! The namespace lab: two tandem nodes and a client on one Ethernet segment, made
//! of real network namespaces, veth pairs and a bridge, for tests and for people.
//!
//! The lab follows `DESIGN.md`: namespaces for `node1`, `node2` and `client`, each
//! with an interface named `eth0` plugged into one bridge. The bridge itself sits in
//! a fourth namespace (the "switch"), so building a lab never adds a device to the
//! machine's own network namespace. Addresses are the test-only RFC 5737 ones:
//!
//! | host   | address                                   |
//! |--------|-------------------------------------------|
//! | shared | 192.0.2.10/24 (claimed by a node, never by the lab) |
//! | node1  | 192.0.2.11/24, label `eth0:0` (the node address)     |
//! | node2  | 192.0.2.12/24, label `eth0:0`                        |
//! | client | 192.0.2.100/24 and the reference/gateway 192.0.2.1/24 |
//!
//! With [`LabConfig::ipv6`] the same hosts also get `2001:db8::<n>/64` (RFC 3849).
//!
//! A [`Lab`] removes everything it made when dropped, also while a panic unwinds.
//! Labs left behind by a process that was killed are swept the next time a lab
//! is built. Test labs get unique names (`tdm<pid>x<n>-node1`, ...) so tests can
//! run in parallel; [`LabConfig::plain_names`] gives the names of `DESIGN.md`
//! (`node1`, `node2`, `client`) for `cargo xtask lab`.
//!
//! With [`Lab::start_witness`] a test adds one or three etcd members (the site's
//! optional witness) at 192.0.2.21-23 in namespaces `witness1`... of their own; see
//! [`witness`].
//!
//! This crate never touches the machine's own network namespace beyond creating
//! and deleting named namespaces, and never configures the shared address.
//!
//! It needs root (`CAP_SYS_ADMIN` and `CAP_NET_ADMIN`) and the `ip` and `bridge`
//! programs of iproute2. Without them [`Lab::up`] returns an error that says what
//! is missing; tests turn that into a failure, never a silent skip.
//!
//! # Example
//!
//! ```
//! use tandem_lab::{Host, Lab, LabConfig};
//!
//! let lab = Lab::up(LabConfig::default())?;
//! // The client reaches node1's node address over the bridge.
//! assert!(lab.can_reach(Host::Client, Host::Node1)?);
//! // Run Rust code inside node1's namespace: sockets made here live in node1.
//! let node1_sees = lab.run_in(Host::Node1, || std::net::UdpSocket::bind("192.0.2.11:0").is_ok())?;
//! assert!(node1_sees);
//! // Async code too: a current-thread runtime on a thread inside node2.
//! let node2_sees = lab.block_on_in(Host::Node2, || async {
//!     tokio::net::UdpSocket::bind("192.0.2.12:0").await.is_ok()
//! })?;
//! assert!(node2_sees);
//! drop(lab); // namespaces, veths and the bridge are gone
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::CloneFlags;

pub mod media;
pub mod postgres;
pub mod witness;

pub use witness::WitnessCluster;

/// The shared address of the lab site (RFC 5737 TEST-NET-1).
pub const SHARED_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// node1's node address.
pub const NODE1_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
/// node2's node address.
pub const NODE2_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);
/// The client's address.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
/// The reference address of the isolation check (the default gateway), held by the client.
pub const GATEWAY_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// Prefix length of the lab subnet.
pub const PREFIX_LEN: u8 = 24;
/// Name of the interface each host has on the lab segment.
pub const LAB_IFACE: &str = "eth0";
/// Label of the node address, as in the seed (`eth0:0`).
pub const NODE_ADDR_LABEL: &str = "eth0:0";

/// Where `ip netns` keeps its named namespaces.
const NETNS_DIR: &str = "/run/netns";
/// Prefix of every test lab's namespace names: `tdm<pid>x<n>-<host>`.
const TEST_PREFIX: &str = "tdm";
/// Name of the switch namespace of a lab built with plain names.
const PLAIN_SWITCH: &str = "tandem-sw";
/// Name of the bridge inside the switch namespace.
const BRIDGE: &str = "br0";

/// Errors of the lab.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The process is not root.
    #[error(
        "the namespace lab needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN to create network namespaces); run as root, e.g. with sudo"
    )]
    NotRoot,
    /// A program the lab runs is not installed.
    #[error("the namespace lab needs the `{program}` program (Debian package iproute2): {source}")]
    MissingProgram {
        /// The program.
        program: String,
        /// Why it could not be started.
        #[source]
        source: std::io::Error,
    },
    /// A command the lab ran failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on standard error.
        stderr: String,
    },
    /// Entering a namespace failed.
    #[error("cannot enter network namespace {namespace}: {source}")]
    Enter {
        /// The namespace name.
        namespace: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Code run inside a namespace panicked.
    #[error("code run inside network namespace {namespace} panicked")]
    Panicked {
        /// The namespace name.
        namespace: String,
    },
    /// The async runtime for code run inside a namespace could not be built.
    #[error("cannot start an async runtime inside network namespace {namespace}: {source}")]
    Runtime {
        /// The namespace name.
        namespace: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A lab with the plain names already exists.
    #[error("a lab with namespaces {names} already exists; remove it with `cargo xtask lab down`")]
    AlreadyUp {
        /// The namespaces that exist.
        names: String,
    },
    /// etcd, for the witness members, is not installed.
    #[error(
        "the lab's witness needs etcd ({path}; Debian package etcd-server, as .ci/install-deps installs): {source}",
        path = witness::ETCD
    )]
    MissingEtcd {
        /// Why it could not be started.
        #[source]
        source: std::io::Error,
    },
    /// A witness member did not become healthy.
    #[error("witness member {member}: {detail}; its log ends with:\n{log_tail}")]
    WitnessNotReady {
        /// The member's name (`w1`, ...).
        member: String,
        /// What went wrong.
        detail: String,
        /// The last lines of its log.
        log_tail: String,
    },
    /// Output of a command could not be understood.
    #[error("cannot read {what}: {detail}")]
    Parse {
        /// What was being read.
        what: String,
        /// What was wrong.
        detail: String,
    },
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A host of the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Host {
    /// Node 1 of the site.
    Node1,
    /// Node 2 of the site.
    Node2,
    /// A client of the application, which also holds the gateway address.
    Client,
}

impl Host {
    /// All hosts, in order.
    pub const ALL: [Host; 3] = [Host::Node1, Host::Node2, Host::Client];

    /// The host's short name (`node1`, `node2`, `client`).
    pub fn name(self) -> &'static str {
        match self {
            Host::Node1 => "node1",
            Host::Node2 => "node2",
            Host::Client => "client",
        }
    }

    /// The host's own IPv4 address on the lab segment.
    pub fn addr(self) -> Ipv4Addr {
        match self {
            Host::Node1 => NODE1_ADDR,
            Host::Node2 => NODE2_ADDR,
            Host::Client => CLIENT_ADDR,
        }
    }

    /// The name of the host's port on the bridge, inside the switch namespace.
    fn port(self) -> &'static str {
        match self {
            Host::Node1 => "p-node1",
            Host::Node2 => "p-node2",
            Host::Client => "p-client",
        }
    }

    fn last_octet(self) -> u8 {
        self.addr().octets()[3]
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Host {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Host::ALL
            .into_iter()
            .find(|h| h.name() == s)
            .ok_or_else(|| Error::Parse {
                what: "host name".into(),
                detail: format!("`{s}` is not one of node1, node2, client"),
            })
    }
}

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// Give node1 and node2 their node addresses (label `eth0:0`) and a default
    /// route via the gateway. Turn off to let the code under test configure them
    /// (as `failover set-deployment` does).
    pub node_addresses: bool,
    /// Also give every host an IPv6 address `2001:db8::<n>/64`.
    pub ipv6: bool,
    /// Use the names of `DESIGN.md` (`node1`, `node2`, `client`) instead of unique
    /// ones. Only one such lab can exist at a time; it is meant for people
    /// (`cargo xtask lab up`).
    pub plain_names: bool,
}

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig {
            node_addresses: true,
            ipv6: false,
            plain_names: false,
        }
    }
}

/// A running lab. Dropping it removes every namespace, veth pair and bridge it made.
#[derive(Debug)]
pub struct Lab {
    prefix: Option<String>,
    config: LabConfig,
    keep: bool,
}

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// Builds a lab: namespaces, a bridge, one veth per host, addresses, `lo` up.
    ///
    /// Returns an error naming the missing privilege or program when the lab cannot
    /// be built; whatever was made before the error is removed again.
    pub fn up(config: LabConfig) -> Result<Lab> {
        preflight()?;
        sweep_stale();
        let prefix = if config.plain_names {
            let existing: Vec<String> = plain_namespaces()
                .into_iter()
                .filter(|n| namespace_exists(n))
                .collect();
            if !existing.is_empty() {
                return Err(Error::AlreadyUp {
                    names: existing.join(", "),
                });
            }
            None
        } else {
            let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
            Some(format!("{TEST_PREFIX}{}x{n}", std::process::id()))
        };
        // From here on, dropping `lab` cleans up whatever exists.
        let lab = Lab {
            prefix,
            config,
            keep: false,
        };
        lab.build()?;
        Ok(lab)
    }

    /// Builds a default lab for a test, or fails the test with a message naming what
    /// is missing (root, iproute2). Tests never skip for lack of a lab.
    ///
    /// # Panics
    ///
    /// When the lab cannot be built.
    #[allow(clippy::panic)]
    #[track_caller]
    pub fn for_test() -> Lab {
        Lab::up(LabConfig::default()).unwrap_or_else(|e| {
            panic!("this test needs the namespace lab and cannot build it: {e}")
        })
    }

    fn build(&self) -> Result<()> {
        let sw = self.switch_namespace();
        ip(&["netns", "add", &sw])?;
        for host in Host::ALL {
            ip(&["netns", "add", &self.namespace(host)])?;
        }
        for ns in self.all_namespaces() {
            // No duplicate address detection: IPv6 addresses are usable at once.
            for knob in ["all", "default"] {
                write_sysctl(&ns, &format!("net/ipv6/conf/{knob}/accept_dad"), "0")?;
            }
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        ip(&["-n", &sw, "link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", BRIDGE, "up"])?;
        for host in Host::ALL {
            let ns = self.namespace(host);
            let port = host.port();
            ip(&[
                "-n", &sw, "link", "add", port, "type", "veth", "peer", "name", LAB_IFACE, "netns",
                &ns,
            ])?;
            ip(&["-n", &sw, "link", "set", port, "master", BRIDGE])?;
            ip(&["-n", &sw, "link", "set", port, "up"])?;
            ip(&["-n", &ns, "link", "set", LAB_IFACE, "up"])?;
            let own = format!("{}/{PREFIX_LEN}", host.addr());
            match host {
                Host::Client => {
                    ip(&["-n", &ns, "addr", "add", &own, "dev", LAB_IFACE])?;
                    let gw = format!("{GATEWAY_ADDR}/{PREFIX_LEN}");
                    ip(&["-n", &ns, "addr", "add", &gw, "dev", LAB_IFACE])?;
                }
                Host::Node1 | Host::Node2 if self.config.node_addresses => {
                    ip(&[
                        "-n",
                        &ns,
                        "addr",
                        "add",
                        &own,
                        "dev",
                        LAB_IFACE,
                        "label",
                        NODE_ADDR_LABEL,
                    ])?;
                    ip(&[
                        "-n",
                        &ns,
                        "route",
                        "add",
                        "default",
                        "via",
                        &GATEWAY_ADDR.to_string(),
                    ])?;
                }
                Host::Node1 | Host::Node2 => {}
            }
            if self.config.ipv6 {
                let v6 = format!("2001:db8::{}/64", host.last_octet());
                ip(&["-n", &ns, "addr", "add", &v6, "dev", LAB_IFACE, "nodad"])?;
            }
        }
        Ok(())
    }

    /// The name of the network namespace of `host`.
    pub fn namespace(&self, host: Host) -> String {
        match &self.prefix {
            Some(prefix) => format!("{prefix}-{}", host.name()),
            None => host.name().to_string(),
        }
    }

    /// The name of the namespace that holds the bridge.
    pub fn switch_namespace(&self) -> String {
        match &self.prefix {
            Some(prefix) => format!("{prefix}-sw"),
            None => PLAIN_SWITCH.to_string(),
        }
    }

    fn all_namespaces(&self) -> Vec<String> {
        let mut names = vec![self.switch_namespace()];
        names.extend(Host::ALL.iter().map(|h| self.namespace(*h)));
        names
    }

    /// The path of `host`'s namespace file (for `setns`).
    pub fn namespace_path(&self, host: Host) -> PathBuf {
        Path::new(NETNS_DIR).join(self.namespace(host))
    }

    /// A command that runs `program` inside `host`'s namespace (`ip netns exec`).
    pub fn command(&self, host: Host, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.namespace(host), program]);
        cmd
    }

    /// Runs `program args...` inside `host`'s namespace and returns its output;
    /// an error when it cannot start or exits non-zero.
    pub fn exec(&self, host: Host, program: &str, args: &[&str]) -> Result<Output> {
        let mut cmd = self.command(host, program);
        cmd.args(args);
        run(
            cmd,
            &format!(
                "ip netns exec {} {program} {}",
                self.namespace(host),
                args.join(" ")
            ),
        )
    }

    /// Runs `f` on a thread that has entered `host`'s network namespace, and returns
    /// its result. Sockets and netlink handles made inside `f` belong to that
    /// namespace. A panic inside `f` comes back as [`Error::Panicked`].
    pub fn run_in<F, R>(&self, host: Host, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        run_in_namespace(&self.namespace(host), f)
    }

    /// Runs the future that `make` builds to completion inside `host`'s network
    /// namespace, on a current-thread tokio runtime (I/O and timers enabled); see
    /// [`block_on_in_namespace`].
    pub fn block_on_in<F, Fut>(&self, host: Host, make: F) -> Result<Fut::Output>
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future,
        Fut::Output: Send,
    {
        block_on_in_namespace(&self.namespace(host), make)
    }

    /// Starts a thread inside `host`'s namespace; see [`spawn_in_namespace`].
    pub fn spawn_in<F, R>(&self, host: Host, f: F) -> Result<std::thread::JoinHandle<Result<R>>>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        spawn_in_namespace(&self.namespace(host), f)
    }

    /// The MAC address of `host`'s `eth0`.
    pub fn mac(&self, host: Host) -> Result<[u8; 6]> {
        let out = ip(&[
            "-n",
            &self.namespace(host),
            "-br",
            "link",
            "show",
            LAB_IFACE,
        ])?;
        let text = String::from_utf8_lossy(&out.stdout);
        let field = text.split_whitespace().nth(2).unwrap_or_default();
        parse_mac(field).ok_or_else(|| Error::Parse {
            what: format!("MAC address of {host}"),
            detail: format!("unexpected `ip -br link` output: {}", text.trim()),
        })
    }

    /// Whether `from` can open a TCP connection to `to`'s own address within about
    /// 1.5 s: a listener is bound inside `to`'s namespace and connected to from
    /// inside `from`'s.
    pub fn can_reach(&self, from: Host, to: Host) -> Result<bool> {
        let listener = self
            .run_in(to, || std::net::TcpListener::bind((to.addr(), 0)))?
            .map_err(|e| Error::Command {
                command: format!("bind a TCP listener on {} in {to}", to.addr()),
                status: "error".into(),
                stderr: e.to_string(),
            })?;
        let target = listener.local_addr().map_err(|e| Error::Parse {
            what: "listener address".into(),
            detail: e.to_string(),
        })?;
        // Right after a cable is plugged back in or a partition heals, the kernel
        // may still hold a failed neighbour entry and refuse at once with "no
        // route to host"; keep trying for a while before calling it unreachable.
        self.run_in(from, || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_millis(1500);
            loop {
                let attempt = std::time::Duration::from_millis(500);
                if std::net::TcpStream::connect_timeout(&target, attempt).is_ok() {
                    return true;
                }
                if std::time::Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        })
    }

    /// Cuts `host`'s cable: its bridge port goes down, so its `eth0` loses carrier.
    pub fn cut(&self, host: Host) -> Result<()> {
        ip(&[
            "-n",
            &self.switch_namespace(),
            "link",
            "set",
            host.port(),
            "down",
        ])
        .map(drop)
    }

    /// Plugs `host`'s cable back in.
    pub fn restore(&self, host: Host) -> Result<()> {
        ip(&[
            "-n",
            &self.switch_namespace(),
            "link",
            "set",
            host.port(),
            "up",
        ])
        .map(drop)
    }

    /// Partitions node1 from node2 while both still reach the client (bridge port
    /// isolation), or heals that partition.
    pub fn partition_nodes(&self, partitioned: bool) -> Result<()> {
        let flag = if partitioned { "on" } else { "off" };
        for host in [Host::Node1, Host::Node2] {
            let out = Command::new("bridge")
                .args([
                    "-n",
                    &self.switch_namespace(),
                    "link",
                    "set",
                    "dev",
                    host.port(),
                ])
                .args(["isolated", flag])
                .output()
                .map_err(|source| Error::MissingProgram {
                    program: "bridge".into(),
                    source,
                })?;
            check(
                out,
                &format!("bridge link set dev {} isolated {flag}", host.port()),
            )?;
        }
        Ok(())
    }

    /// Whether `host`'s cable is cut (its bridge port is down).
    pub fn is_cut(&self, host: Host) -> Result<bool> {
        let out = ip(&[
            "-n",
            &self.switch_namespace(),
            "-o",
            "link",
            "show",
            "dev",
            host.port(),
        ])?;
        // `3: p-node1@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> ...`: the flags say
        // whether the port was set up, whatever its peer's state.
        let text = String::from_utf8_lossy(&out.stdout);
        let flags = text
            .split_once('<')
            .and_then(|(_, rest)| rest.split_once('>'))
            .map(|(flags, _)| flags)
            .ok_or_else(|| Error::Parse {
                what: format!("link flags of {}", host.port()),
                detail: text.trim().to_string(),
            })?;
        Ok(!flags.split(',').any(|f| f == "UP"))
    }

    /// Whether node1 and node2 are partitioned from each other ([`Lab::partition_nodes`]).
    pub fn is_partitioned(&self) -> Result<bool> {
        let out = Command::new("bridge")
            .args(["-n", &self.switch_namespace(), "-d", "link", "show", "dev"])
            .arg(Host::Node1.port())
            .output()
            .map_err(|source| Error::MissingProgram {
                program: "bridge".into(),
                source,
            })?;
        let out = check(
            out,
            &format!("bridge -d link show dev {}", Host::Node1.port()),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).contains("isolated on"))
    }

    /// Leaves the lab in place when this value is dropped (for `cargo xtask lab up`).
    pub fn keep(mut self) {
        self.keep = true;
    }

    /// Removes the lab with the plain names of `DESIGN.md`, if there is one.
    /// Returns the namespaces it removed.
    pub fn down_plain() -> Result<Vec<String>> {
        preflight()?;
        let mut removed = Vec::new();
        for member in 1..=witness::MAX_MEMBERS {
            let ns = format!("witness{member}");
            if namespace_exists(&ns) {
                witness::remove_namespace(&ns);
                removed.push(ns);
            }
        }
        for ns in plain_namespaces() {
            if namespace_exists(&ns) {
                ip(&["netns", "del", &ns])?;
                removed.push(ns);
            }
        }
        Ok(removed)
    }

    /// A handle on the lab with the plain names, if its namespaces exist. Dropping
    /// it does not remove the lab.
    pub fn attach_plain() -> Option<Lab> {
        let all_there = plain_namespaces().iter().all(|n| namespace_exists(n));
        all_there.then(|| Lab {
            prefix: None,
            config: LabConfig {
                plain_names: true,
                ..LabConfig::default()
            },
            keep: true,
        })
    }

    fn teardown(&self) {
        // Witness members outlived by nothing: a cluster still alive has its etcd
        // processes killed with the namespaces (its own drop then finds nothing).
        for member in 1..=witness::MAX_MEMBERS {
            witness::remove_namespace(&self.witness_namespace(member));
        }
        for ns in self.all_namespaces() {
            if namespace_exists(&ns) {
                // Deleting a namespace destroys its veth ends; the bridge goes with
                // the switch namespace. Errors here cannot be reported from Drop;
                // a leftover is swept by the next `Lab::up`.
                let _ = ip(&["netns", "del", &ns]);
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.keep {
            self.teardown();
        }
    }
}

/// Runs `f` on a thread that has entered the named network namespace.
pub fn run_in_namespace<F, R>(namespace: &str, f: F) -> Result<R>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let path = Path::new(NETNS_DIR).join(namespace);
    let enter_error = |source: std::io::Error| Error::Enter {
        namespace: namespace.to_string(),
        source,
    };
    let file = File::open(&path).map_err(enter_error)?;
    std::thread::scope(|scope| {
        let handle = scope.spawn(move || {
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                .map_err(|e| enter_error(std::io::Error::from(e)))?;
            Ok(f())
        });
        handle.join().unwrap_or_else(|_| {
            Err(Error::Panicked {
                namespace: namespace.to_string(),
            })
        })
    })
}

/// Runs async code inside the named network namespace: a thread enters it, builds
/// a current-thread tokio runtime there (I/O and timers enabled), and runs the
/// future that `make` builds to completion. The future is made on that thread, so
/// it need not be `Send`, and every socket it opens belongs to the namespace.
pub fn block_on_in_namespace<F, Fut>(namespace: &str, make: F) -> Result<Fut::Output>
where
    F: FnOnce() -> Fut + Send,
    Fut: Future,
    Fut::Output: Send,
{
    run_in_namespace(namespace, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| Error::Runtime {
                namespace: namespace.to_string(),
                source,
            })?;
        Ok(runtime.block_on(make()))
    })?
}

/// Starts a thread that enters the named network namespace and runs `f` there,
/// for work that outlives one call (a server, a client loop). The caller stops
/// it (e.g. with a flag) and joins it before the lab is dropped.
pub fn spawn_in_namespace<F, R>(namespace: &str, f: F) -> Result<std::thread::JoinHandle<Result<R>>>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let path = Path::new(NETNS_DIR).join(namespace);
    let name = namespace.to_string();
    let enter_error = move |source: std::io::Error| Error::Enter {
        namespace: name.clone(),
        source,
    };
    let file = File::open(&path).map_err(&enter_error)?;
    Ok(std::thread::spawn(move || {
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
            .map_err(|e| enter_error(std::io::Error::from(e)))?;
        Ok(f())
    }))
}

/// The namespaces of test labs that still exist (for checks that nothing leaked).
pub fn test_namespaces() -> Vec<String> {
    list_namespaces()
        .into_iter()
        .filter(|n| parse_test_name(n).is_some())
        .collect()
}

/// Whether a named network namespace exists.
pub fn namespace_exists(name: &str) -> bool {
    Path::new(NETNS_DIR).join(name).exists()
}

fn plain_namespaces() -> Vec<String> {
    let mut names = vec![PLAIN_SWITCH.to_string()];
    names.extend(Host::ALL.iter().map(|h| h.name().to_string()));
    names
}

fn list_namespaces() -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The pid in a test namespace name `tdm<pid>x<n>-<host>`.
fn parse_test_name(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(TEST_PREFIX)?;
    let (pid, rest) = rest.split_once('x')?;
    let (n, _host) = rest.split_once('-')?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// Removes test namespaces whose process is gone (killed before its drop ran), with
/// whatever still runs inside them (etcd witness members), and the witness
/// directories of such processes.
fn sweep_stale() {
    let gone = |pid: u32| !Path::new("/proc").join(pid.to_string()).exists();
    for ns in list_namespaces() {
        if parse_test_name(&ns).is_some_and(gone) {
            witness::remove_namespace(&ns);
        }
    }
    if let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) {
        for entry in dir.filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.contains("-witness") && parse_test_name(&name).is_some_and(gone) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

fn preflight() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::NotRoot);
    }
    Command::new("ip")
        .arg("-V")
        .output()
        .map_err(|source| Error::MissingProgram {
            program: "ip".into(),
            source,
        })?;
    Ok(())
}

fn write_sysctl(namespace: &str, key: &str, value: &str) -> Result<()> {
    let path = Path::new("/proc/sys").join(key);
    run_in_namespace(namespace, || std::fs::write(&path, value))?.map_err(|e| Error::Command {
        command: format!("write {value} to {} in {namespace}", path.display()),
        status: "error".into(),
        stderr: e.to_string(),
    })
}

fn ip(args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    run(cmd, &format!("ip {}", args.join(" ")))
}

fn run(mut cmd: Command, line: &str) -> Result<Output> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .output()
        .map_err(|source| Error::MissingProgram { program, source })?;
    check(out, line)
}

fn check(out: Output, line: &str) -> Result<Output> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(Error::Command {
            command: line.to_string(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_names_carry_the_pid() {
        assert_eq!(parse_test_name("tdm123x4-node1"), Some(123));
        assert_eq!(parse_test_name("tdm123x4-sw"), Some(123));
        assert_eq!(parse_test_name("node1"), None);
        assert_eq!(parse_test_name("tdmabcx4-node1"), None);
        assert_eq!(parse_test_name("tdm12x-node1"), None);
    }

    #[test]
    fn macs_parse() {
        assert_eq!(
            parse_mac("02:00:0a:0b:0c:ff"),
            Some([2, 0, 10, 11, 12, 255])
        );
        assert_eq!(parse_mac("02:00:0a:0b:0c"), None);
        assert_eq!(parse_mac("02:00:0a:0b:0c:ff:01"), None);
        assert_eq!(parse_mac("zz:00:0a:0b:0c:ff"), None);
    }

    #[test]
    fn hosts_parse_from_their_names() {
        for host in Host::ALL {
            assert_eq!(host.name().parse::<Host>().ok(), Some(host));
        }
        assert!("node3".parse::<Host>().is_err());
    }
}
