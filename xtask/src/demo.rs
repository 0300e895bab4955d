//! `cargo xtask demo`: the seed's procedures in the namespace lab, with the two
//! binaries an operator uses.
//!
//! Builds a lab (node1, node2, client on one bridge) and walks through the seed's
//! steps, each command run with `failover` or `mp_replication` inside its node's
//! namespace as an operator would on that node's console:
//!
//! 1. "two newly installed Application Servers": `set-deployment failover` on both,
//!    `mp_replication init` on both, the agents started, `mp_replication switch-on`
//!    and `set-server active` on node1, both status tables printed;
//! 2. config files: `copy-config-files` on node1 (sent over the peer link),
//!    `restore-config-files` on node2, the restored tree compared;
//! 3. a client on the shared address writes meetings continuously through a small
//!    application that acknowledges a write only once the standby has it;
//! 4. "Performing Application Server Failover" (planned: node1 standby, node2
//!    active) and the switch back;
//! 5. an unplanned failover: node1's cable is cut and node2 made active; the cable
//!    comes back, node1's agent hears node2's newer claim and steps down, and node1
//!    rejoins replication with `switch-on -S -F from-sync`; then the switch back.
//!
//! It ends with a timeline: each step, the client-visible outage of each failover,
//! how long both nodes were seen active at once, and the acknowledged writes lost.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tandem_lab::Host;

use crate::site::harness::expect;
use crate::site::{
    Backend, Binaries, Narration, Sample, Site, SiteOptions, build_binaries, client, serve_app,
    status_page,
};

/// Arguments of `cargo xtask demo`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Print each command's whole output.
    #[arg(short, long)]
    verbose: bool,
    /// Run the site with a three-member etcd witness and automatic failover:
    /// the unplanned failover happens by itself, and a partition between the
    /// nodes is shown changing nothing for the client.
    #[arg(long)]
    witness: bool,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut demo = Demo::new(&build_binaries()?, args.verbose, args.witness)?;
    let result = demo.setup().and_then(|()| demo.failovers());
    demo.stop_threads();
    let result = result.and_then(|()| demo.verify_and_summarize());
    demo.site.stop_agents(Duration::from_secs(10));
    if let Err(e) = result {
        // The agents' logs and the nodes' state, for whoever reads the error.
        let kept = demo.site.keep_dir();
        return Err(e.context(format!("logs and state kept in {}", kept.display())));
    }
    println!(
        "\ndemo finished in {:.1} s; the lab is removed",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What [`planned_with_writes`] measured.
pub(crate) struct PlannedWrites {
    /// The client-visible outage of each planned switchover asked for the seed's
    /// way (`set-server standby` on the active node, then `set-server active` on
    /// the other), sorted.
    pub outages: Vec<Duration>,
    /// The same with `failover switchover` on the standby (one command: the
    /// active node hands over through the agents), sorted.
    pub outages_switchover: Vec<Duration>,
    /// Writes the application acknowledged over the whole run.
    pub acked: usize,
    /// Acknowledged writes missing on either node at the end.
    pub lost: usize,
    /// Whether both nodes' tables were identical at the end.
    pub identical: bool,
    /// Each agent's resident memory (KiB) and CPU (% of a core) over
    /// [`REPLICATING_WINDOW`] while the client writes through node1 and the agents'
    /// replication services ship every write to node2, before the switchovers.
    pub replicating: Vec<(Host, u64, f64)>,
}

impl PlannedWrites {
    /// Each way of asking for the switchover with its outages.
    pub(crate) fn series(&self) -> [(&'static str, &[Duration]); 2] {
        [
            ("the `set-server` pair", &self.outages),
            ("`failover switchover`", &self.outages_switchover),
        ]
    }
}

/// How long [`planned_with_writes`] watches the agents while they replicate.
pub(crate) const REPLICATING_WINDOW: Duration = Duration::from_secs(5);

/// The demo's site with its writing client, then `runs` planned switchovers
/// (alternating direction) through the agents: the client's outage of each and
/// the acknowledged writes lost, for `cargo xtask bench failover`.
pub(crate) fn planned_with_writes(bins: &Binaries, runs: usize) -> anyhow::Result<PlannedWrites> {
    let mut demo = Demo::new(bins, false, false)?;
    if std::env::var_os(crate::site::KEEP_SITE_ENV).is_some() {
        println!(
            "  TANDEM_KEEP_SITE: the site and its logs stay in {}",
            demo.site.keep_dir().display()
        );
    }
    let mut replicating = Vec::new();
    let result = demo.setup().and_then(|()| {
        replicating = crate::site::usage::usage_over(&demo.site.agent_pids(), REPLICATING_WINDOW);
        // Both ways of asking, taking turns, `runs` of each.
        let mut from = Host::Node1;
        for i in 0..2 * runs {
            let to = crate::site::other(from);
            let how = if i % 2 == 0 {
                Handover::Pair
            } else {
                Handover::Switchover
            };
            demo.planned(from, to, how)?;
            std::thread::sleep(Duration::from_millis(300));
            from = to;
        }
        Ok(())
    });
    demo.stop_threads();
    let checked = result.and_then(|()| demo.check_data());
    demo.site.stop_agents(Duration::from_secs(10));
    let checked = checked?;
    let samples = demo.samples.lock().map(|s| s.clone()).unwrap_or_default();
    let (mut outages, mut outages_switchover) = (Vec::new(), Vec::new());
    for entry in &demo.failovers {
        let (gap, _) = outage(&samples, entry.from, entry.to)
            .with_context(|| format!("the client never reached {}", entry.to))?;
        match entry.how {
            Some(Handover::Switchover) => outages_switchover.push(gap),
            Some(Handover::Pair) => outages.push(gap),
            // Only planned switchovers are run here.
            None => {}
        }
    }
    outages.sort();
    outages_switchover.sort();
    Ok(PlannedWrites {
        outages,
        outages_switchover,
        acked: checked.acked,
        lost: checked.missing.len(),
        identical: checked.identical,
        replicating,
    })
}

/// The data check at the end of a run.
struct DataCheck {
    acked: usize,
    /// Acknowledged transactions missing on either node.
    missing: BTreeSet<u64>,
    identical: bool,
}

/// The demo: its site, the application, the client and the watch of the roles,
/// and what it measured.
struct Demo {
    failovers: Vec<Failover>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<tandem_lab::Result<anyhow::Result<()>>>>,
    samples: Arc<Mutex<Vec<Sample>>>,
    /// Intervals in which both status pages said "Active server".
    both_active: Arc<Mutex<Vec<(Duration, Duration)>>>,
    /// From node1's cable coming back to its status page saying standby.
    heal: Option<(Duration, Duration)>,
    /// The partition of `--witness`, from and to.
    partition: Option<(Duration, Duration)>,
    /// The lab, the two nodes and their agents (dropped after the threads stop).
    site: Site,
}

/// A failover to measure: what the client waited for and when the step began.
struct Failover {
    what: String,
    to: &'static str,
    from: Duration,
    /// How a planned one was asked for; `None` for the others.
    how: Option<Handover>,
}

/// How a planned switchover is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handover {
    /// The seed's way: `set-server standby` on the active node, then `set-server
    /// active` on the other.
    Pair,
    /// `failover switchover` on the standby.
    Switchover,
}

/// The demo's site: SQLite, the seed's services and config files, heartbeats
/// every 200 ms; with the witness automatic failover is on.
fn options(verbose: bool, witness: bool) -> SiteOptions {
    SiteOptions {
        prefix: "tandem-demo-".into(),
        narration: Narration::Timeline { verbose },
        backend: Backend::Sqlite,
        witness,
        auto_failover: witness,
        heartbeat_ms: 200,
        conflict_backoff_ms: tandem_node::FailoverSection::default().conflict_backoff_ms,
        services: true,
        standby_tmpfs: None,
    }
}

impl Demo {
    /// A lab and a site directory (removed when the demo drops), and the witness.
    fn new(bins: &Binaries, verbose: bool, witness: bool) -> anyhow::Result<Demo> {
        let site = Site::new(bins, options(verbose, witness))?;
        println!("tandem demo: the seed's failover procedures in a namespace lab");
        println!(
            "  lab: node1 {} and node2 {} (eth0:0), client {}, gateway {}, shared address {}",
            tandem_lab::NODE1_ADDR,
            tandem_lab::NODE2_ADDR,
            tandem_lab::CLIENT_ADDR,
            tandem_lab::GATEWAY_ADDR,
            tandem_lab::SHARED_ADDR
        );
        println!("  node config and state in {}", site.dir().display());
        if let Some(witness) = &site.witness {
            println!(
                "  witness: etcd members {} (automatic failover on)",
                witness.endpoints().join(", ")
            );
        }
        Ok(Demo {
            failovers: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            samples: Arc::default(),
            both_active: Arc::default(),
            heal: None,
            partition: None,
            site,
        })
    }

    /// Stops the application, the client and the role watch.
    fn stop_threads(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }

    /// The seed's setup: both nodes, replication, config files, and the client
    /// writing through node1.
    fn setup(&mut self) -> anyhow::Result<()> {
        section("Setting up failover for two newly installed Application Servers");
        self.site.set_up()?;
        self.wait_status(Host::Node1, "Failover deployment. Active server.")?;
        self.wait_status(Host::Node2, "Failover deployment. Standby server.")?;
        self.wait_media_server(Host::Node1)?;
        for host in [Host::Node1, Host::Node2] {
            let out = self.site.mp_quiet(host, &["status"])?;
            println!("\n  {host}: mp_replication status");
            for line in out.lines() {
                println!("    {line}");
            }
        }
        self.copy_config_files()?;

        section("A client writes meetings through the application on the shared address");
        self.start_application()?;
        self.wait_for_client("node1")?;
        self.site
            .note("client's writes are acknowledged", "by node1");
        std::thread::sleep(Duration::from_millis(500));
        Ok(())
    }

    /// The seed's second procedure: node1's config files sent to the standby and
    /// restored there.
    fn copy_config_files(&mut self) -> anyhow::Result<()> {
        section("Copying configuration files to the standby");
        self.make_config_files()?;
        let out = self.site.failover(
            Host::Node1,
            &["copy-config-files"],
            "failoverUtil copyConfigFiles",
        )?;
        expect(
            &out,
            "Sent to the standby",
            "copy-config-files sends the bundle",
        )?;
        self.wait_file(&tandem_bundle::incoming_path(
            &self.site.state_dir(Host::Node2),
        ))?;
        let out = self.site.failover(
            Host::Node2,
            &["restore-config-files"],
            "failoverUtil restoreConfigFiles",
        )?;
        expect(&out, "", "restore-config-files")?;
        compare_trees(&self.site.files(Host::Node1), &self.site.files(Host::Node2))?;
        self.site
            .note("node2's config files match node1's", "identical");
        Ok(())
    }

    /// The seed's failovers: planned there and back, then unplanned and back.
    fn failovers(&mut self) -> anyhow::Result<()> {
        section("Performing Application Server Failover (planned)");
        self.planned(Host::Node1, Host::Node2, Handover::Pair)?;
        section("Performing Application Server Failover to Switch to the Previous Active Server");
        self.planned(Host::Node2, Host::Node1, Handover::Pair)?;

        if self.site.witness.is_some() {
            return self.failovers_with_witness();
        }
        section("Unplanned failover: node1's cable is cut");
        self.site.lab.cut(Host::Node1)?;
        let from = self.site.started.elapsed();
        self.site.note("cut node1's cable", "node1 unreachable");
        let out = self.site.failover(
            Host::Node2,
            &["set-server", "active"],
            "failoverUtil setServer active",
        )?;
        expect(&out, "active", "node2 takes over")?;
        self.wait_for_client("node2")?;
        self.failover_note("client's writes acked by node2", "node2", from);
        self.wait_media_server(Host::Node2)?;
        // The cable comes back at once, often before node1 has noticed the
        // loss: node1 steps down when it meets node2 holding the address or when
        // node2 tells it its claim is superseded (RELIABILITY.md, finding 11).
        // The heal starts before the cable is back: the role watch can see both
        // nodes active as soon as the link is up, before `ip` has returned.
        let restored = self.site.started.elapsed();
        self.site.lab.restore(Host::Node1)?;
        self.site.note("plug node1's cable back in", "");
        self.wait_status(Host::Node1, "Failover deployment. Standby server.")?;
        self.heal = Some((restored, self.site.started.elapsed()));
        self.site
            .note("node1's agent hears node2's newer claim", "node1 standby");
        let out = self.site.mp(
            Host::Node1,
            &["switch-on", "-S", "-F", "from-sync"],
            "mp_replication switchON -S -F from-sync",
        )?;
        expect(&out, "is SUCCESSFUL", "node1 rejoins replication")?;
        self.site.wait_replication(Duration::from_secs(30))?;
        std::thread::sleep(Duration::from_millis(500));

        section("Switching back to node1");
        self.planned(Host::Node2, Host::Node1, Handover::Pair)?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(())
    }

    /// With the witness: the unplanned failover happens by itself once node1's
    /// lease ran out, and a partition between the nodes changes nothing.
    fn failovers_with_witness(&mut self) -> anyhow::Result<()> {
        section("Unplanned failover with the witness: node1's cable is cut");
        self.site.lab.cut(Host::Node1)?;
        let from = self.site.started.elapsed();
        self.site.note(
            "cut node1's cable",
            "node1 unreachable, its lease runs out unrenewed",
        );
        self.wait_for_client("node2")?;
        self.failover_note("node2 takes the key and claims by itself", "node2", from);
        self.wait_media_server(Host::Node2)?;
        // Before the cable is back, as above.
        let restored = self.site.started.elapsed();
        self.site.lab.restore(Host::Node1)?;
        self.site.note("plug node1's cable back in", "");
        self.wait_status(Host::Node1, "Failover deployment. Standby server.")?;
        self.heal = Some((restored, self.site.started.elapsed()));
        self.site.note(
            "node1 stepped down before its lease could run out",
            "node1 standby",
        );
        let out = self.site.mp(
            Host::Node1,
            &["switch-on", "-S", "-F", "from-sync"],
            "mp_replication switchON -S -F from-sync",
        )?;
        expect(&out, "is SUCCESSFUL", "node1 rejoins replication")?;
        self.site.wait_replication(Duration::from_secs(30))?;
        std::thread::sleep(Duration::from_millis(500));

        section("A partition between the nodes (both reach the client and the witness)");
        let before = crate::site::acknowledged(&self.samples).len();
        let at = self.site.started.elapsed();
        self.site.lab.partition_nodes(true)?;
        self.site.note("partition node1 from node2", "for 4 s");
        std::thread::sleep(Duration::from_secs(4));
        self.site.lab.partition_nodes(false)?;
        let healed = self.site.started.elapsed();
        self.partition = Some((at, healed));
        let during = crate::site::acknowledged(&self.samples).len() - before;
        let samples = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        let others: Vec<String> = samples
            .iter()
            .filter(|w| w.sent >= at && w.sent <= healed)
            .filter_map(|w| w.who.clone())
            .filter(|who| who != "node2")
            .collect();
        if !others.is_empty() {
            bail!("during the partition writes were acknowledged by {others:?}, not only node2");
        }
        self.site.note(
            "writes acknowledged during the partition",
            &format!("{during}, all by node2; node1 stayed standby"),
        );
        self.wait_status(Host::Node1, "Failover deployment. Standby server.")?;
        self.wait_status(Host::Node2, "Failover deployment. Active server.")?;
        // What node2 acknowledged alone (it held the key) reaches node1 once
        // the link is back; the switch back waits for it, as an operator would.
        self.site.wait_replication(Duration::from_secs(30))?;
        self.wait_caught_up()?;
        self.site
            .note("node1 caught up with node2's writes", "backlog 0");

        section("Switching back to node1");
        self.planned(Host::Node2, Host::Node1, Handover::Pair)?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(())
    }

    /// A planned failover from `from` to `to`, asked for as `how` says: the seed's
    /// `set-server standby` on the active node then `set-server active` on the
    /// other, or `failover switchover` on the standby.
    fn planned(&mut self, from: Host, to: Host, how: Handover) -> anyhow::Result<()> {
        let at = self.site.started.elapsed();
        if how == Handover::Pair {
            let out = self.site.failover(
                from,
                &["set-server", "standby"],
                "failoverUtil setServer standby",
            )?;
            expect(&out, "standby", "the active node steps down")?;
            let out = self.site.failover(
                to,
                &["set-server", "active"],
                "failoverUtil setServer active",
            )?;
            expect(&out, "active", "the standby takes over")?;
        } else {
            let out = self
                .site
                .failover(to, &["switchover"], "failover switchover")?;
            expect(&out, "active", "the standby takes over")?;
        }
        let name = to.name();
        self.wait_for_client(name)?;
        self.failover_note_as(
            &format!("client's writes acked by {name}"),
            name,
            at,
            Some(how),
        );
        self.wait_status(from, "Failover deployment. Standby server.")?;
        self.wait_media_server(to)?;
        Ok(())
    }

    /// Waits until the stand-in Media Server has `host` registered, and says so.
    fn wait_media_server(&self, host: Host) -> anyhow::Result<()> {
        let Some(media) = &self.site.media else {
            return Ok(());
        };
        let want = crate::site::harness::hostname(host);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = media.registrations();
            if seen.current.as_deref() == Some(want.as_str()) {
                self.site.note(
                    "the Media Server follows the active node",
                    &format!("registered with {want}"),
                );
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the Media Server is not registered with {want} (it has {:?}; messages {:?})",
                    seen.current,
                    seen.log
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Node1's copied files: web settings and custom prompts; and a server-specific
    /// file on each node that must stay as it is.
    fn make_config_files(&self) -> anyhow::Result<()> {
        let files = self.site.files(Host::Node1);
        std::fs::write(
            files.join("web-conf/site.properties"),
            "branding=Example Meetings\nlanguage=en\n",
        )?;
        std::fs::create_dir_all(files.join("web-conf/themes"))?;
        std::fs::write(
            files.join("web-conf/themes/blue.css"),
            "body { color: navy }\n",
        )?;
        for n in 0..5u8 {
            // A second of 8 kHz silence with a tone byte, as a custom prompt.
            let wav: Vec<u8> = (0..8000u32).map(|i| (i as u8) ^ n).collect();
            std::fs::write(files.join(format!("prompts/welcome-{n}.wav")), wav)?;
        }
        for host in [Host::Node1, Host::Node2] {
            std::fs::write(
                self.site.files(host).join("web-conf/server.xml"),
                format!("<server name=\"{}\"/>\n", host.name()),
            )?;
        }
        Ok(())
    }

    /// Waits until `host`'s status page (read from the client) starts with `banner`.
    fn wait_status(&self, host: Host, banner: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = String::new();
        while Instant::now() < deadline {
            let page = self
                .site
                .lab
                .run_in(Host::Client, move || status_page(host))
                .ok()
                .flatten();
            if let Some(page) = page {
                if page.lines().next().unwrap_or_default().starts_with(banner) {
                    return Ok(());
                }
                last = page;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{host}'s status page did not show `{banner}` within 20 s; last:\n{last}")
    }

    /// Waits until the active node's backlog for its standby is (nearly) empty:
    /// the client writes on, so a few changes are always in flight.
    fn wait_caught_up(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while Instant::now() < deadline {
            let small = [Host::Node1, Host::Node2].iter().all(|&h| {
                self.site
                    .mp_quiet(h, &["status", "--json"])
                    .ok()
                    .and_then(|s| {
                        last = s.clone();
                        serde_json::from_str::<tandem_replication::Status>(&s).ok()
                    })
                    .is_some_and(|s| s.backlog.unwrap_or(0) <= 20)
            });
            if small {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("the standby did not catch up within 30 s; last status:\n{last}")
    }

    fn wait_file(&self, path: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if path.exists() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("{} did not arrive within 20 s", path.display())
    }

    /// The example application in both nodes, the client and the watch of both
    /// status pages.
    fn start_application(&mut self) -> anyhow::Result<()> {
        for host in [Host::Node1, Host::Node2] {
            let stop = self.stop.clone();
            let settings = self.site.settings(host)?;
            let paused = self.site.layout().app_paused(host);
            self.threads.push(
                self.site
                    .lab
                    .spawn_in(host, move || serve_app(host, &settings, &stop, &paused))?,
            );
        }
        let (stop, samples, started) = (self.stop.clone(), self.samples.clone(), self.site.started);
        self.threads.push(
            self.site
                .lab
                .spawn_in(Host::Client, move || client(started, &stop, &samples))?,
        );
        let (stop, both, started) = (
            self.stop.clone(),
            self.both_active.clone(),
            self.site.started,
        );
        self.threads.push(
            self.site
                .lab
                .spawn_in(Host::Client, move || watch_roles(started, &stop, &both))?,
        );
        Ok(())
    }

    fn failover_note(&mut self, what: &str, to: &'static str, from: Duration) {
        self.failover_note_as(what, to, from, None);
    }

    fn failover_note_as(
        &mut self,
        what: &str,
        to: &'static str,
        from: Duration,
        how: Option<Handover>,
    ) {
        self.site.note(what, "");
        self.failovers.push(Failover {
            what: what.into(),
            to,
            from,
            how,
        });
    }

    /// Waits until the client's latest write was acknowledged by `node`.
    fn wait_for_client(&self, node: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if crate::site::latest_answer(&self.samples).as_deref() == Some(node) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("the client's writes were not acknowledged by {node} within 20 s")
    }

    /// Checks that both databases hold every acknowledged write and are equal, then
    /// prints the summary.
    fn verify_and_summarize(&mut self) -> anyhow::Result<()> {
        let checked = self.check_data()?;
        let (equal, lost, missing) = (checked.identical, checked.missing.len(), &checked.missing);
        let acked = checked.acked;
        let samples = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        println!("\n== Timeline summary");
        println!("  client-visible outage of each failover (the client writes every 10 ms):");
        for entry in &self.failovers {
            match outage(&samples, entry.from, entry.to) {
                Some((gap, unanswered)) => println!(
                    "    {:<34} outage {:>6.0} ms ({unanswered} writes not acknowledged)",
                    entry.what,
                    gap.as_secs_f64() * 1000.0
                ),
                None => println!(
                    "    {:<34} the client never reached {}",
                    entry.what, entry.to
                ),
            }
        }
        let both = self
            .both_active
            .lock()
            .map(|b| b.clone())
            .unwrap_or_default();
        if both.is_empty() {
            println!("  both nodes active at once: never seen on the status pages");
        }
        for (from, to) in &both {
            let healing = self
                .heal
                .is_some_and(|(start, end)| *from >= start && *from <= end);
            let partitioned = self
                .partition
                .is_some_and(|(start, end)| *from >= start && *from <= end);
            if partitioned {
                bail!(
                    "both nodes said active during the partition ({:.0} ms from {:.3} s)",
                    to.saturating_sub(*from).as_secs_f64() * 1000.0,
                    from.as_secs_f64()
                );
            }
            println!(
                "  both nodes active at once: {:.0} ms from {:.3} s ({})",
                to.saturating_sub(*from).as_secs_f64() * 1000.0,
                from.as_secs_f64(),
                if healing {
                    "node1's cable back, until its agent heard node2's newer claim"
                } else {
                    "OUTSIDE the heal after the cut"
                }
            );
        }
        println!(
            "  acknowledged writes: {acked}; lost: {lost}; tables on both nodes {}",
            if equal { "identical" } else { "DIFFERENT" }
        );
        if lost > 0 || !equal {
            bail!("{lost} acknowledged writes are missing or the nodes differ: {missing:?}");
        }
        Ok(())
    }

    /// Waits (up to 30 s) until both nodes hold every acknowledged write and
    /// their tables are identical, and says how far they got.
    fn check_data(&mut self) -> anyhow::Result<DataCheck> {
        section("Checking the data");
        let acked = crate::site::acknowledged(&self.samples);
        let deadline = Instant::now() + Duration::from_secs(30);
        let (sums, missing) = loop {
            let sums = [Host::Node1, Host::Node2].map(|h| self.site.mp_quiet(h, &["checksum"]));
            let missing = [Host::Node1, Host::Node2].map(|h| self.missing(h, &acked));
            let equal = matches!(&sums, [Ok(a), Ok(b)] if a == b);
            if (equal && missing.iter().all(|m| matches!(m, Ok(v) if v.is_empty())))
                || Instant::now() > deadline
            {
                break (sums, missing);
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let missing = match missing {
            [Ok(a), Ok(b)] => a.union(&b).copied().collect(),
            [Err(e), _] | [_, Err(e)] => bail!("cannot read a node's database: {e:#}"),
        };
        let identical = matches!(&sums, [Ok(a), Ok(b)] if a == b);
        self.site.note(
            "tables on node1 and node2 (mp_replication checksum)",
            if identical { "identical" } else { "DIFFERENT" },
        );
        Ok(DataCheck {
            acked: acked.len(),
            missing,
            identical,
        })
    }

    /// The acknowledged transactions whose rows `host`'s database lacks.
    fn missing(&self, host: Host, acked: &[u64]) -> anyhow::Result<BTreeSet<u64>> {
        self.site.layout().missing(host, acked)
    }
}

fn section(title: &str) {
    println!("\n== {title}");
}

/// Watches both status pages every 20 ms and records when both say "Active".
fn watch_roles(
    started: Instant,
    stop: &AtomicBool,
    both: &Mutex<Vec<(Duration, Duration)>>,
) -> anyhow::Result<()> {
    let mut since: Option<Duration> = None;
    while !stop.load(Ordering::Relaxed) {
        let active = |h: Host| {
            status_page(h).is_some_and(|p| p.contains("Failover deployment. Active server."))
        };
        let now_both = active(Host::Node1) && active(Host::Node2);
        // When both were seen: after the pages answered (a fetch begun while a
        // cable was out answers once it is back).
        let t = started.elapsed();
        match (now_both, since) {
            (true, None) => since = Some(t),
            (false, Some(from)) => {
                if let Ok(mut list) = both.lock() {
                    list.push((from, t));
                }
                since = None;
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Compares two trees of config files (the copied ones; `server.xml` is the node's
/// own and must differ).
fn compare_trees(a: &Path, b: &Path) -> anyhow::Result<()> {
    for rel in [
        "web-conf/site.properties",
        "web-conf/themes/blue.css",
        "prompts/welcome-0.wav",
        "prompts/welcome-4.wav",
    ] {
        let (x, y) = (std::fs::read(a.join(rel))?, std::fs::read(b.join(rel)));
        match y {
            Ok(y) if x == y => {}
            _ => bail!("{rel} differs between the nodes after restore-config-files"),
        }
    }
    if std::fs::read(a.join("web-conf/server.xml"))?
        == std::fs::read(b.join("web-conf/server.xml"))?
    {
        bail!("the server-specific web-conf/server.xml was copied");
    }
    Ok(())
}

/// The client-visible outage of a failover that started at `from` towards `new`,
/// in answer times: from the last acknowledgement that arrived (of any node, not
/// before `from`) to the first that `new` sent, and how many writes in flight
/// during that gap were not acknowledged.
fn outage(samples: &[Sample], from: Duration, new: &str) -> Option<(Duration, usize)> {
    let first_new = samples
        .iter()
        .filter(|s| s.who.as_deref() == Some(new))
        .filter_map(|s| s.done)
        .filter(|done| *done >= from)
        .min()?;
    let start = samples
        .iter()
        .filter(|s| s.who.is_some())
        .filter_map(|s| s.done)
        .filter(|done| *done < first_new)
        .max()
        .map_or(from, |done| done.max(from));
    let unanswered = samples
        .iter()
        .filter(|s| s.who.is_none() && s.sent < first_new && s.done.is_none_or(|d| d > start))
        .count();
    Some((first_new.saturating_sub(start), unanswered))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn write(sent: u64, done: Option<u64>, who: Option<&str>) -> Sample {
        Sample {
            sent: ms(sent),
            done: done.map(ms),
            who: who.map(str::to_owned),
        }
    }

    #[test]
    fn a_write_lost_with_the_address_counts_once_and_does_not_stretch_the_outage() {
        // node1 answers until the cut at 100 ms; the write sent at 95 ms is lost
        // (given up on at 2,095 ms); node2 answers from 300 ms on.
        let samples = vec![
            write(85, Some(87), Some("node1")),
            write(95, Some(2_095), None),
            write(105, Some(125), None),
            write(290, Some(302), Some("node2")),
            write(300, Some(301), Some("node2")),
        ];
        assert_eq!(outage(&samples, ms(100), "node2"), Some((ms(201), 2)));
    }

    #[test]
    fn a_slow_first_answer_of_the_new_node_is_part_of_the_outage() {
        // Sent at once but answered 800 ms later: the client waited that long.
        let samples = vec![
            write(0, Some(2), Some("node1")),
            write(10, Some(810), Some("node2")),
            write(20, Some(811), Some("node2")),
        ];
        assert_eq!(outage(&samples, ms(5), "node2"), Some((ms(805), 0)));
    }

    #[test]
    fn answers_of_the_old_node_after_the_switch_started_shorten_the_outage() {
        let samples = vec![
            write(0, Some(1), Some("node1")),
            write(10, Some(11), Some("node1")),
            write(20, Some(70), Some("node2")),
        ];
        assert_eq!(outage(&samples, ms(5), "node2"), Some((ms(59), 0)));
        assert_eq!(outage(&samples, ms(5), "node3"), None);
    }
}
