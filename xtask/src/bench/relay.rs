//! The replication bench's floor: the least that any design with a replication
//! service on each node must add to a waiting commit, with no database work at all.
//!
//! The writer (`mp_replication write-sample --echo-via`, on a database without
//! tandem) sends 512 bytes after each commit to a relay on node 1, which passes them
//! over the lab link to an echo on node 2, whose 32-byte answer comes back the same
//! way: the four wake-ups and two link crossings of a `received` acknowledgement,
//! each hop a blocking thread that does nothing else. `cargo xtask relay` (hidden)
//! runs either end inside a node's namespace.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tandem_lab::{Host, Lab};

/// Bytes of one request (the writer's `ECHO_REQUEST`).
const REQUEST: usize = 512;
/// Bytes of one answer (the writer's `ECHO_REPLY`).
const REPLY: usize = 32;
/// The echo's port on node 2, and the relay's on node 1's loopback.
const PORT: u16 = 7811;

/// Arguments of the hidden `cargo xtask relay`.
#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    role: Role,
}

#[derive(clap::Subcommand)]
enum Role {
    /// Answer every 512-byte request with 32 bytes (node 2's end).
    Echo {
        /// Where to listen.
        listen: SocketAddr,
    },
    /// Pass every request to `to` and its answer back (node 1's end).
    Forward {
        /// Where to listen.
        listen: SocketAddr,
        /// The echo.
        to: SocketAddr,
    },
    /// Send one request to `to` and wait for its answer (is the path up?).
    Probe {
        /// The relay.
        to: SocketAddr,
    },
}

/// Runs the echo or the relay until it is killed (a thread per connection), or one
/// probe. Every address must be the lab's: loopback or 192.0.2.0/24 (RFC 5737).
pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let addrs = match &args.role {
        Role::Echo { listen } => vec![*listen],
        Role::Forward { listen, to } => vec![*listen, *to],
        Role::Probe { to } => vec![*to],
    };
    for addr in addrs {
        lab_address(addr)?;
    }
    let listen = match &args.role {
        Role::Echo { listen } | Role::Forward { listen, .. } => *listen,
        Role::Probe { to } => {
            let mut conn = TcpStream::connect(to).with_context(|| format!("connecting to {to}"))?;
            conn.set_read_timeout(Some(Duration::from_secs(2)))?;
            conn.write_all(&[0u8; REQUEST])?;
            conn.read_exact(&mut [0u8; REPLY])
                .context("waiting for the answer")?;
            return Ok(());
        }
    };
    let listener = TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    for conn in listener.incoming() {
        let conn = match conn {
            Ok(conn) => conn,
            Err(e) => {
                // One failed accept (a connection reset before it was taken) ends
                // nothing else.
                eprintln!("relay on {listen}: accepting: {e}");
                continue;
            }
        };
        let to = match &args.role {
            Role::Forward { to, .. } => Some(*to),
            _ => None,
        };
        // A connection that fails ends alone (its writer sees it closed).
        std::thread::spawn(move || serve(conn, to));
    }
    Ok(())
}

/// Fails unless `addr` is on loopback or the lab's 192.0.2.0/24 (RFC 5737): the
/// bench sends nowhere else.
pub(crate) fn lab_address(addr: SocketAddr) -> anyhow::Result<()> {
    let ok = match addr.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback() || ip.octets()[..3] == [192, 0, 2],
        std::net::IpAddr::V6(ip) => ip.is_loopback(),
    };
    if !ok {
        bail!("{addr} is not a lab address: the relay uses loopback or 192.0.2.0/24 only");
    }
    Ok(())
}

/// One connection: until its writer closes it.
fn serve(mut conn: TcpStream, to: Option<SocketAddr>) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    let mut upstream = match to {
        Some(to) => {
            let up = TcpStream::connect(to)?;
            up.set_nodelay(true)?;
            Some(up)
        }
        None => None,
    };
    let (mut request, mut reply) = ([0u8; REQUEST], [0u8; REPLY]);
    loop {
        match conn.read_exact(&mut request) {
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            other => other?,
        }
        if let Some(up) = upstream.as_mut() {
            up.write_all(&request)?;
            up.read_exact(&mut reply)?;
        }
        conn.write_all(&reply)?;
    }
}

/// Both ends running in the lab; killed when dropped.
pub(crate) struct Floor {
    children: Vec<Child>,
    /// What the writer passes to `--echo-via`.
    pub(crate) writer_addr: SocketAddr,
}

impl Floor {
    /// Starts the echo on node 2 and the relay on node 1, and waits until the relay
    /// answers a request.
    pub(crate) fn start(lab: &Lab) -> anyhow::Result<Floor> {
        let exe = std::env::current_exe().context("finding xtask's own binary")?;
        let exe = exe.display().to_string();
        let echo_addr = SocketAddr::new(Host::Node2.addr().into(), PORT);
        let writer_addr: SocketAddr = ([127, 0, 0, 1], PORT).into();
        let mut floor = Floor {
            children: Vec::new(),
            writer_addr,
        };
        let mut echo = lab.command(Host::Node2, &exe);
        echo.args(["relay", "echo", &echo_addr.to_string()]);
        floor.spawn(echo)?;
        let mut relay = lab.command(Host::Node1, &exe);
        relay.args([
            "relay",
            "forward",
            &writer_addr.to_string(),
            &echo_addr.to_string(),
        ]);
        floor.spawn(relay)?;
        // The relay connects to the echo per connection: probe the whole path from
        // node 1 until both ends are up.
        let started = Instant::now();
        loop {
            let mut probe = lab.command(Host::Node1, &exe);
            probe.args(["relay", "probe", &writer_addr.to_string()]);
            match probe.output() {
                Ok(out) if out.status.success() => {
                    // An answer from a relay or echo left behind by an earlier run
                    // (ours then exited, the port taken) would not be this floor.
                    for child in &mut floor.children {
                        if let Some(status) = child.try_wait()? {
                            bail!(
                                "the bench's relay or echo exited ({status}): is one from an \
                                 earlier run still holding port {PORT} in the lab?"
                            );
                        }
                    }
                    return Ok(floor);
                }
                _ if started.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Ok(out) => bail!(
                    "the bench's relay on node 1 and echo on node 2 did not answer within 10 s: {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
                Err(e) => bail!("probing the bench's relay: {e}"),
            }
        }
    }

    fn spawn(&mut self, mut cmd: Command) -> anyhow::Result<()> {
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        self.children
            .push(cmd.spawn().context("starting the bench's relay")?);
        Ok(())
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
