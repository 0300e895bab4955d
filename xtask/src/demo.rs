//! `cargo xtask demo`: the seed's procedures in the namespace lab.
//!
//! Builds a lab (node1, node2, client on one bridge), runs a small application
//! on port 8080 in both nodes (it answers with its node's name) and a client that
//! asks the shared address 192.0.2.10 every 10 ms. Then it walks through the
//! seed's steps with tandem's node code, each node's command run inside that
//! node's namespace as an operator would on its console:
//!
//! 1. `set-deployment failover` on both nodes (they enter standby);
//! 2. `set-server active` on node1 (probe silent, gateway answers: claim);
//! 3. node2 reboots and finds node1 active;
//! 4. "Performing Application Server Failover": node1 standby, node2 active;
//! 5. an unplanned failover: node2's cable is cut, node1 is made active;
//! 6. node2 reboots while still cut off: its isolation check keeps it standby.
//!
//! It ends with a timeline and the client-visible outage of each failover. Claims
//! travel between the nodes as the agent's peer link will carry them.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tandem_lab::{Host, Lab, LabConfig};
use tandem_node::{Node, NodeConfig, Report};
use tandem_role::{DeploymentMode, Event, NodeId, Role};

/// Arguments of `cargo xtask demo`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Print every action each command carried out.
    #[arg(short, long)]
    verbose: bool,
}

const APP_PORT: u16 = 8080;

/// What the client saw at one moment: which node answered, or none.
type Sample = (Duration, Option<String>);

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let lab = Lab::up(LabConfig::default()).context("building the namespace lab")?;
    let dir = tempfile::Builder::new().prefix("tandem-demo-").tempdir()?;
    let demo = Demo {
        lab,
        dir: dir.path().to_path_buf(),
        started,
        verbose: args.verbose,
        failovers: Vec::new(),
    };
    println!("tandem demo: the seed's failover procedures in a namespace lab");
    println!(
        "  lab: node1 {} and node2 {} (eth0:0), client {}, gateway {}, shared address {}",
        tandem_lab::NODE1_ADDR,
        tandem_lab::NODE2_ADDR,
        tandem_lab::CLIENT_ADDR,
        tandem_lab::GATEWAY_ADDR,
        tandem_lab::SHARED_ADDR
    );
    println!("  node state in {}", dir.path().display());
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let mut threads = Vec::new();
    for host in [Host::Node1, Host::Node2] {
        let stop = stop.clone();
        threads.push(demo.lab.spawn_in(host, move || serve_app(host, &stop))?);
    }
    let client = {
        let (stop, samples) = (stop.clone(), samples.clone());
        demo.lab.spawn_in(Host::Client, move || {
            watch_shared_address(started, &stop, &samples)
        })?
    };
    let result = demo.procedures(&samples);
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        let _ = thread.join();
    }
    let _ = client.join();
    let timeline = result?;
    print_summary(
        &timeline,
        &samples.lock().map(|s| s.clone()).unwrap_or_default(),
    );
    println!(
        "\ndemo finished in {:.1} s; the lab is removed",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

struct Demo {
    lab: Lab,
    dir: std::path::PathBuf,
    started: Instant,
    verbose: bool,
    failovers: Vec<Failover>,
}

/// A failover to measure: what the client waited for and when the step began.
struct Failover {
    what: String,
    from: Duration,
}

impl Demo {
    fn procedures(mut self, samples: &Mutex<Vec<Sample>>) -> anyhow::Result<Vec<Failover>> {
        section("Setting up failover for two newly installed Application Servers");
        for host in [Host::Node1, Host::Node2] {
            let report = self.command(host, "failoverUtil setDeployment failover", async |n| {
                n.handle(Event::SetDeployment(DeploymentMode::Failover))
                    .await
            })?;
            expect_role(&report, Role::Standby)?;
        }
        let report = self.command(Host::Node1, "failoverUtil setServer active", async |n| {
            n.set_server(Role::Active).await
        })?;
        expect_role(&report, Role::Active)?;
        self.deliver_claim(Host::Node1, &report)?;
        self.wait_for_client(samples, "node1")?;
        self.note("client reaches the shared address", "answered by node1");

        let report = self.command(Host::Node2, "reboot node2 (boot decision)", async |n| {
            n.boot().await
        })?;
        expect_role(&report, Role::Standby)?;

        section("Performing Application Server Failover (planned)");
        let from = self.started.elapsed();
        let report = self.command(Host::Node1, "failoverUtil setServer standby", async |n| {
            n.set_server(Role::Standby).await
        })?;
        expect_role(&report, Role::Standby)?;
        let report = self.command(Host::Node2, "failoverUtil setServer active", async |n| {
            n.set_server(Role::Active).await
        })?;
        expect_role(&report, Role::Active)?;
        self.deliver_claim(Host::Node2, &report)?;
        self.wait_for_client(samples, "node2")?;
        self.failover_note("client reaches node2", from);

        section("Unplanned failover: node2's cable is cut");
        self.lab.cut(Host::Node2)?;
        let from = self.started.elapsed();
        self.note("cut node2's cable", "node2 unreachable");
        let report = self.command(Host::Node1, "failoverUtil setServer active", async |n| {
            n.set_server(Role::Active).await
        })?;
        expect_role(&report, Role::Active)?;
        self.wait_for_client(samples, "node1")?;
        self.failover_note("client reaches node1", from);

        let report = self.command(Host::Node2, "reboot node2 while still cut off", async |n| {
            n.boot().await
        })?;
        expect_role(&report, Role::Standby)?;
        self.lab.restore(Host::Node2)?;
        self.deliver_claim_epoch(Host::Node2, NodeId::One, self.epoch(Host::Node1)?)?;
        self.note(
            "plug node2's cable back in",
            "node2 stays standby; node1 keeps the address",
        );
        self.wait_for_client(samples, "node1")?;
        Ok(self.failovers)
    }

    fn config(&self, host: Host) -> anyhow::Result<NodeConfig> {
        let (id, own, peer) = match host {
            Host::Node1 => (1, tandem_lab::NODE1_ADDR, tandem_lab::NODE2_ADDR),
            _ => (2, tandem_lab::NODE2_ADDR, tandem_lab::NODE1_ADDR),
        };
        let text = format!(
            r#"[node]
id = {id}
hostname = "meetings{id}.lab.test"
shared_hostname = "meetings.lab.test"

[network]
shared_address = "{shared}/24"
node_address = "{own}/24"
gateway = "{gateway}"
peer_address = "{peer}"

[probe]
timeout_ms = 100
attempts = 2
interval_ms = 50

[failover]
announce_count = 3
announce_interval_ms = 20
"#,
            shared = tandem_lab::SHARED_ADDR,
            gateway = tandem_lab::GATEWAY_ADDR,
        );
        let path = self.dir.join(format!("{}.toml", host.name()));
        std::fs::write(&path, &text)?;
        Ok(NodeConfig::load(&path)?)
    }

    /// Runs one operator command on `host`'s console, inside its namespace.
    fn command(
        &mut self,
        host: Host,
        what: &str,
        f: impl AsyncFnOnce(&mut Node) -> Report + Send,
    ) -> anyhow::Result<Report> {
        let config = self.config(host)?;
        let state_dir = self.dir.join(host.name());
        let report = self
            .lab
            .run_in(host, || -> anyhow::Result<Report> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async {
                    let mut node = Node::open(config, &state_dir)?;
                    Ok(f(&mut node).await)
                })
            })
            .context("entering the node's namespace")??;
        let state = report.state.as_ref();
        let outcome = match (&report.refused, report.role) {
            (Some(refusal), _) => format!("refused: {refusal}"),
            (None, Some(role)) => format!(
                "{role}, epoch {}{}",
                state.map(|s| s.epoch.get()).unwrap_or(0),
                report
                    .faults
                    .first()
                    .map(|f| format!(" ({f})"))
                    .unwrap_or_default()
            ),
            (None, None) => "no change".into(),
        };
        self.note(&format!("{host}: {what}"), &outcome);
        if self.verbose {
            for step in &report.steps {
                let failed = step
                    .error
                    .as_deref()
                    .map(|e| format!("  FAILED: {e}"))
                    .unwrap_or_default();
                println!(
                    "           {:>6.1} ms  {}{failed}",
                    step.took.as_secs_f64() * 1000.0,
                    step.action
                );
            }
        }
        Ok(report)
    }

    fn epoch(&self, host: Host) -> anyhow::Result<tandem_role::Epoch> {
        let state = tandem_role::StateFile::in_dir(self.dir.join(host.name())).load()?;
        Ok(state.map(|s| s.epoch).unwrap_or_default())
    }

    /// Delivers the claim a report's `send-claim` action made to the other node.
    fn deliver_claim(&mut self, from: Host, report: &Report) -> anyhow::Result<()> {
        let Some(state) = &report.state else {
            return Ok(());
        };
        let to = if from == Host::Node1 {
            Host::Node2
        } else {
            Host::Node1
        };
        self.deliver_claim_epoch(to, state.node, state.epoch)
    }

    fn deliver_claim_epoch(
        &mut self,
        to: Host,
        node: NodeId,
        epoch: tandem_role::Epoch,
    ) -> anyhow::Result<()> {
        let what = format!("peer link: node {node}'s claim (epoch {epoch}) reaches {to}");
        self.command(to, &what, async |n| {
            n.handle(Event::PeerClaim { node, epoch }).await
        })?;
        Ok(())
    }

    fn note(&mut self, what: &str, outcome: &str) {
        let at = self.started.elapsed();
        println!("  {:>7.3} s  {what:<58} {outcome}", at.as_secs_f64());
    }

    fn failover_note(&mut self, what: &str, from: Duration) {
        self.note(what, "");
        self.failovers.push(Failover {
            what: what.into(),
            from,
        });
    }

    /// Waits until the client's latest answer comes from `node`.
    fn wait_for_client(&self, samples: &Mutex<Vec<Sample>>, node: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let latest = samples
                .lock()
                .ok()
                .and_then(|s| s.last().and_then(|(_, who)| who.clone()));
            if latest.as_deref() == Some(node) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("the client did not reach {node} on the shared address within 10 s")
    }
}

fn section(title: &str) {
    println!("\n== {title}");
}

fn expect_role(report: &Report, role: Role) -> anyhow::Result<()> {
    if report.role != Some(role) {
        bail!(
            "expected the node to be {role}, it is {:?}: {report:#?}",
            report.role
        );
    }
    Ok(())
}

/// The application: answers every connection with its node's name.
fn serve_app(host: Host, stop: &AtomicBool) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(("0.0.0.0", APP_PORT))?;
    listener.set_nonblocking(true)?;
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                use std::io::Write;
                let _ = stream.write_all(host.name().as_bytes());
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The client: asks the shared address every 10 ms who is there.
fn watch_shared_address(started: Instant, stop: &AtomicBool, samples: &Mutex<Vec<Sample>>) {
    use std::io::Read;
    let target = std::net::SocketAddr::from((tandem_lab::SHARED_ADDR, APP_PORT));
    while !stop.load(Ordering::Relaxed) {
        let t = started.elapsed();
        let who = std::net::TcpStream::connect_timeout(&target, Duration::from_millis(50))
            .ok()
            .and_then(|mut s| {
                let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
                let mut name = String::new();
                s.read_to_string(&mut name)
                    .ok()
                    .filter(|_| !name.is_empty())
                    .map(|_| name)
            });
        if let Ok(mut list) = samples.lock() {
            list.push((t, who));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn print_summary(failovers: &[Failover], samples: &[Sample]) {
    println!("\n== Client-visible outage of each failover (client asks every 10 ms)");
    for entry in failovers {
        let from = entry.from;
        let new = entry.what.rsplit(' ').next().unwrap_or_default();
        match outage(samples, from, new) {
            Some((gap, unanswered)) => println!(
                "  {:<28} outage {:>6.0} ms ({unanswered} client requests unanswered)",
                entry.what,
                gap.as_secs_f64() * 1000.0
            ),
            None => println!("  {:<28} the client never reached {new}", entry.what),
        }
    }
    let answered = samples.iter().filter(|(_, w)| w.is_some()).count();
    println!(
        "  client requests: {} sent, {answered} answered",
        samples.len()
    );
}

/// The client-visible outage of a failover that started at `from` towards `new`:
/// from the last answer (of any node, not before `from`) to the first answer of
/// `new`, and how many requests in between went unanswered.
fn outage(samples: &[Sample], from: Duration, new: &str) -> Option<(Duration, usize)> {
    let first_new = samples
        .iter()
        .find(|(t, who)| *t >= from && who.as_deref() == Some(new))?
        .0;
    let before = samples.iter().filter(|(t, _)| *t < first_new);
    let last_answer = before
        .clone()
        .rev()
        .find(|(_, who)| who.is_some())
        .map_or(from, |(t, _)| *t);
    let start = last_answer.max(from);
    let unanswered = before
        .filter(|(t, who)| *t > start && who.is_none())
        .count();
    Some((first_new.saturating_sub(start), unanswered))
}
