//! [`Site`]: the two-node site that `cargo xtask demo`, `chaos` and `bench failover`
//! drive, in a namespace lab. One set-up path: the seed's "two newly installed
//! Application Servers" with the two binaries (`failover keygen`, `set-deployment
//! failover` on both nodes, the operator's additions to each config, `mp_replication
//! init`, the agents, `switch-on` and node1 `set-server active`), whatever the
//! options (SQLite or PostgreSQL, with or without the etcd witness, the timing).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tandem_lab::{Host, Lab, LabConfig};
use tandem_node::LoadSettings;
use tandem_replication::{LinkStatus, Settings};

use super::config::{self, OperatorConfig};
use super::process::{Tmpfs, kill_processes_naming, output_within};
use super::{Binaries, Layout, node_facts, status_json};

/// The replicated database of the site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// The embedded SQLite backend with the sample schema.
    Sqlite,
    /// A PostgreSQL 15 server on each node (made by the lab), `fill_mb` MB of rows
    /// written on the primary before the agents start.
    Postgres {
        /// MB of rows written on the primary at set-up.
        fill_mb: u64,
    },
}

/// How the site tells what it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Narration {
    /// The demo's timeline: every command under its seed name with the line of its
    /// output worth showing; `verbose` adds each command's whole output.
    Timeline {
        /// Print each command's whole output.
        verbose: bool,
    },
    /// The chaos harness's steps: printed only when `verbose`.
    Steps {
        /// Print each step.
        verbose: bool,
    },
}

/// What a [`Site`] is made of.
#[derive(Debug, Clone)]
pub(crate) struct SiteOptions {
    /// The prefix of the site's temporary directory.
    pub(crate) prefix: String,
    /// How the site tells what it does.
    pub(crate) narration: Narration,
    /// The replicated database.
    pub(crate) backend: Backend,
    /// Three etcd members in the lab and the `[witness]` table in each config.
    pub(crate) witness: bool,
    /// `auto_failover` of the agents.
    pub(crate) auto_failover: bool,
    /// The agents' peer and replication heartbeat, in milliseconds.
    pub(crate) heartbeat_ms: u64,
    /// The agents' pause after an address conflict, in milliseconds.
    pub(crate) conflict_backoff_ms: u64,
    /// The seed's services: the example application and the Media Server rule as
    /// `[[service]]` entries, the stand-in Media Server on the client, and the web
    /// settings among the copied config files (the demo's site). Without it only
    /// the prompts are copied and the application is never paused.
    pub(crate) services: bool,
    /// A tmpfs of this size on node2's state directory (for a disk that fills).
    pub(crate) standby_tmpfs: Option<&'static str>,
}

/// How long a `failover` command may take.
const FAILOVER_LIMIT: Duration = Duration::from_secs(30);

/// How long an `mp_replication` command may take.
const MP_LIMIT: Duration = Duration::from_secs(60);

/// A running site: the lab, the site's directory ([`Layout`]), the binaries, the
/// agents it started, the witness, the stand-in Media Server and the PostgreSQL
/// servers. Dropping it stops the agents and removes everything it made.
pub(crate) struct Site {
    /// The binaries the site runs.
    pub(crate) bins: Binaries,
    /// What the site was made with.
    pub(crate) options: SiteOptions,
    /// When the site was made (the timeline's zero).
    pub(crate) started: Instant,
    agents: [Option<Child>; 2],
    agent_runs: u32,
    /// The etcd witness members, with [`SiteOptions::witness`].
    pub(crate) witness: Option<tandem_lab::WitnessCluster>,
    /// The stand-in Media Server, with [`SiteOptions::services`], once set up.
    pub(crate) media: Option<tandem_lab::media::MediaServer>,
    /// Each node's PostgreSQL server, with [`Backend::Postgres`] (stopped before
    /// the lab goes).
    pub(crate) pg: Vec<tandem_lab::postgres::PgServer>,
    /// Their clusters (a directory that PostgreSQL's user can reach).
    pg_dir: Option<tempfile::TempDir>,
    mount: Option<Tmpfs>,
    // Dropped last: the lab (namespaces) and the directory.
    /// The namespace lab.
    pub(crate) lab: Lab,
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

/// Index of a node in per-node arrays.
pub(crate) fn idx(host: Host) -> usize {
    match host {
        Host::Node1 => 0,
        _ => 1,
    }
}

impl Site {
    /// A lab and an empty site directory, with the witness, the PostgreSQL servers
    /// and the tmpfs the options ask for; [`Site::set_up`] makes the site.
    pub(crate) fn new(bins: &Binaries, options: SiteOptions) -> anyhow::Result<Site> {
        let lab = Lab::up(LabConfig::default()).context("building the namespace lab")?;
        let dir = tempfile::Builder::new().prefix(&options.prefix).tempdir()?;
        let mut site = Site {
            bins: bins.clone(),
            started: Instant::now(),
            agents: [None, None],
            agent_runs: 0,
            witness: None,
            media: None,
            pg: Vec::new(),
            pg_dir: None,
            mount: None,
            lab,
            path: dir.path().to_path_buf(),
            dir: Some(dir),
            options,
        };
        std::fs::create_dir_all(site.path.join("logs"))?;
        if site.options.witness {
            let witness = site
                .lab
                .start_witness(3)
                .context("starting the etcd witness members")?;
            site.witness = Some(witness);
        }
        if let Backend::Postgres { .. } = site.options.backend {
            site.make_pg_servers()?;
        }
        if let Some(size) = site.options.standby_tmpfs {
            let path = site.state_dir(Host::Node2);
            std::fs::create_dir_all(&path)?;
            site.mount = Some(Tmpfs::mount(&path, size)?);
        }
        Ok(site)
    }

    fn make_pg_servers(&mut self) -> anyhow::Result<()> {
        let pg_dir = tempfile::Builder::new()
            .prefix(&format!("tandem-chaos-pg-{}-", std::process::id()))
            .tempdir_in("/tmp")?;
        for host in [Host::Node1, Host::Node2] {
            let server = crate::pgsite::server(&self.lab, host, pg_dir.path())?;
            self.pg.push(server);
        }
        self.pg_dir = Some(pg_dir);
        Ok(())
    }

    /// The site's directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.path
    }

    /// Where the site keeps its files.
    pub(crate) fn layout(&self) -> Layout<'_> {
        Layout { dir: &self.path }
    }

    /// Keeps the site's directory (logs, configs, state) after the site goes.
    pub(crate) fn keep_dir(&mut self) -> PathBuf {
        match self.dir.take() {
            Some(dir) => dir.keep(),
            None => self.path.clone(),
        }
    }

    /// The directory of the PostgreSQL clusters, with [`Backend::Postgres`].
    pub(crate) fn pg_dir(&self) -> Option<&Path> {
        self.pg_dir.as_ref().map(|d| d.path())
    }

    /// Time since the site was made.
    pub(crate) fn at(&self) -> Duration {
        self.started.elapsed()
    }

    /// A line of the demo's timeline: the time, what happened and its outcome
    /// (nothing with [`Narration::Steps`]).
    pub(crate) fn note(&self, what: &str, outcome: &str) {
        if let Narration::Timeline { .. } = self.options.narration {
            println!(
                "  {:>7.3} s  {what:<58} {}",
                self.at().as_secs_f64(),
                outcome
            );
        }
    }

    /// A step of the chaos harness, printed when verbose (nothing with
    /// [`Narration::Timeline`]).
    pub(crate) fn step(&self, what: &str) {
        if let Narration::Steps { verbose: true } = self.options.narration {
            println!("    {:>7.3} s  {what}", self.at().as_secs_f64());
        }
    }

    /// `failover --config ... --state-dir ...` inside `host`'s namespace.
    pub(crate) fn failover_command(&self, host: Host) -> Command {
        self.layout().tool(&self.lab, &self.bins.failover, host)
    }

    /// `mp_replication --config ... --state-dir ...` inside `host`'s namespace.
    pub(crate) fn mp_command(&self, host: Host) -> Command {
        self.layout()
            .tool(&self.lab, &self.bins.mp_replication, host)
    }

    /// Runs `failover args...` on `host` (within 30 s), told under `seed_name` in
    /// the timeline; fails when it fails.
    pub(crate) fn failover(
        &self,
        host: Host,
        args: &[&str],
        seed_name: &str,
    ) -> anyhow::Result<String> {
        let mut cmd = self.failover_command(host);
        cmd.args(args);
        let out = output_within(cmd, FAILOVER_LIMIT)?;
        self.finish(
            host,
            &format!("failover {}", args.join(" ")),
            seed_name,
            &out,
        )
    }

    /// Runs `mp_replication args...` on `host` (within 60 s), told under
    /// `seed_name` in the timeline; fails when it fails.
    pub(crate) fn mp(&self, host: Host, args: &[&str], seed_name: &str) -> anyhow::Result<String> {
        let mut cmd = self.mp_command(host);
        cmd.args(args);
        let out = output_within(cmd, MP_LIMIT)?;
        self.finish(
            host,
            &format!("mp_replication {}", args.join(" ")),
            seed_name,
            &out,
        )
    }

    /// Runs `mp_replication args...` on `host` without telling it: its output.
    pub(crate) fn mp_quiet(&self, host: Host, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = self.mp_command(host);
        cmd.args(args);
        let out = output_within(cmd, MP_LIMIT)?;
        if !out.status.success() {
            bail!(
                "mp_replication {} on {host} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Tells a finished command (under its command line in the steps, under its
    /// seed name in the timeline); its output, or an error when it failed.
    fn finish(
        &self,
        host: Host,
        line: &str,
        seed_name: &str,
        out: &Output,
    ) -> anyhow::Result<String> {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (what, verbose) = match self.options.narration {
            Narration::Timeline { verbose } => (seed_name, verbose),
            Narration::Steps { .. } => (line, false),
        };
        self.step(&format!(
            "{host}: {line}: {}",
            stdout.lines().last().unwrap_or_default()
        ));
        if !out.status.success() {
            self.note(&format!("{host}: {what}"), "FAILED");
            bail!(
                "`{what}` on {host} failed ({}):\n{stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.note(&format!("{host}: {what}"), &summary_line(&stdout));
        if verbose {
            for text in stdout.lines() {
                println!("             | {text}");
            }
        }
        Ok(stdout)
    }

    /// `host`'s replication settings, from its config.
    pub(crate) fn settings(&self, host: Host) -> anyhow::Result<Settings> {
        let layout = self.layout();
        Ok(Settings::load(
            &layout.config_path(host),
            true,
            layout.state_dir(host),
        )?)
    }

    /// The site key file.
    pub(crate) fn key_file(&self) -> String {
        self.layout().key_file()
    }

    /// `host`'s config file.
    pub(crate) fn config_path(&self, host: Host) -> PathBuf {
        self.layout().config_path(host)
    }

    /// `host`'s state directory.
    pub(crate) fn state_dir(&self, host: Host) -> PathBuf {
        self.layout().state_dir(host)
    }

    /// `host`'s config-file roots.
    pub(crate) fn files(&self, host: Host) -> PathBuf {
        self.layout().files(host)
    }

    /// The seed's first procedure: the site key, `set-deployment failover` and the
    /// operator's config on both nodes, `mp_replication init`, the agents with
    /// their peer link up, replication switched on and node1 active with its
    /// standby connected.
    pub(crate) fn set_up(&mut self) -> anyhow::Result<()> {
        self.failover(
            Host::Node1,
            &["keygen", "--key-file", &self.key_file()],
            "failover keygen (the site key, copied to node2)",
        )?;
        for host in [Host::Node1, Host::Node2] {
            self.deploy(host)?;
        }
        for host in [Host::Node2, Host::Node1] {
            let (id, _, peer) = node_facts(host);
            let out = self.mp(
                host,
                &["init", "-n", &id.to_string(), "-r", &peer.to_string()],
                &format!("mp_replication init -n {id} -r {peer}"),
            )?;
            expect(&out, "is SUCCESSFUL", "init")?;
        }
        if let Backend::Postgres { fill_mb } = self.options.backend {
            self.pg_primary(fill_mb)?;
        }
        if self.options.services {
            self.start_media_server()?;
        }
        for host in [Host::Node1, Host::Node2] {
            self.start_agent(host)?;
        }
        self.wait_peer_link()?;
        self.note("peer link between the agents", "up");
        if self.options.backend == Backend::Sqlite {
            let out = self.mp(Host::Node1, &["switch-on"], "mp_replication switchON")?;
            expect(&out, "is SUCCESSFUL", "switch-on")?;
        }
        let out = self.failover(
            Host::Node1,
            &["set-server", "active"],
            "failoverUtil setServer active",
        )?;
        expect(&out, "active", "node1 becomes active")?;
        self.wait_role(Host::Node1, "active", Duration::from_secs(20))?;
        self.wait_role(Host::Node2, "standby", Duration::from_secs(20))?;
        self.wait_replication(Duration::from_secs(30))
    }

    /// `set-deployment failover` on `host`, then the operator's additions.
    fn deploy(&self, host: Host) -> anyhow::Result<()> {
        let (id, own, peer) = node_facts(host);
        let out = self.failover(
            host,
            &[
                "set-deployment",
                "failover",
                "--no-prompt",
                "--node-id",
                &id.to_string(),
                "--node-address",
                &format!("{own}/24"),
                "--gateway",
                &tandem_lab::GATEWAY_ADDR.to_string(),
                "--hostname",
                &hostname(host),
                "--shared-address",
                &format!("{}/24", tandem_lab::SHARED_ADDR),
                "--peer-address",
                &peer.to_string(),
            ],
            "failoverUtil setDeployment failover",
        )?;
        expect(&out, "standby", "set-deployment leaves the node standby")?;
        self.operator_config(host)
            .append_to(&self.config_path(host))?;
        let files = self.files(host);
        if self.options.services {
            std::fs::create_dir_all(files.join("web-conf"))?;
        }
        std::fs::create_dir_all(files.join("prompts"))?;
        Ok(())
    }

    /// What the operator appends to the config `set-deployment` wrote: quick probes
    /// and heartbeats for the lab, the failover policy, the site key, the
    /// replicated database, the copied config files, the seed's services and the
    /// witness.
    pub(crate) fn operator_config(&self, host: Host) -> OperatorConfig {
        let o = &self.options;
        let files = self.files(host);
        let replication = match self.pg.get(idx(host)) {
            Some(server) => config::postgres_replication(
                server,
                o.heartbeat_ms,
                crate::pgsite::DEGRADE_AFTER_MS,
            ),
            None => config::sqlite_replication(o.heartbeat_ms),
        };
        let (bundle, services) = if o.services {
            (
                config::bundle(&files, &["web-conf", "prompts"], &["web-conf/server.xml"]),
                vec![self.layout().app_service(host), media_service(host)],
            )
        } else {
            (config::bundle(&files, &["prompts"], &[]), Vec::new())
        };
        OperatorConfig {
            probe: config::probe(),
            failover: config::failover(o.auto_failover, o.heartbeat_ms, o.conflict_backoff_ms),
            peer: config::peer(PathBuf::from(self.key_file())),
            replication,
            bundle,
            services,
            witness: self
                .witness
                .as_ref()
                .map(|w| config::witness(w.endpoints())),
        }
    }

    /// PostgreSQL replicates the whole cluster: node1's becomes the primary (with
    /// the application's table and `fill_mb` MB of rows), node2's a copy of it.
    fn pg_primary(&self, fill_mb: u64) -> anyhow::Result<()> {
        self.mp(Host::Node1, &["switch-on"], "mp_replication switchON")?;
        let settings = self.settings(Host::Node1)?;
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async {
                crate::pgsite::create_schema(&settings).await?;
                crate::pgsite::fill(&settings, fill_mb).await
            })?;
        self.mp(
            Host::Node2,
            &["switch-on", "-S", "-F", "from-sync"],
            "mp_replication switchON -S -F from-sync",
        )?;
        Ok(())
    }

    /// The stand-in Media Server on the client (the seed: one Media Server always
    /// goes with the active Application Server).
    fn start_media_server(&mut self) -> anyhow::Result<()> {
        self.media = Some(tandem_lab::media::MediaServer::start(&self.lab)?);
        self.note(
            "stand-in Media Server on the client",
            &format!(
                "{}:{}",
                tandem_lab::CLIENT_ADDR,
                tandem_lab::media::MEDIA_SERVER_PORT
            ),
        );
        Ok(())
    }

    /// Starts `host`'s agent and waits for its status page.
    pub(crate) fn start_agent(&mut self, host: Host) -> anyhow::Result<()> {
        self.spawn_agent(host)?;
        self.wait_page(host, Duration::from_secs(20))?;
        self.note(
            &format!("{host}: failover agent"),
            "running; status page up",
        );
        Ok(())
    }

    /// Starts `host`'s agent (`failover agent`, its log in `logs/`) without
    /// waiting for it.
    pub(crate) fn spawn_agent(&mut self, host: Host) -> anyhow::Result<()> {
        self.agent_runs += 1;
        let log = std::fs::File::create(self.path.join("logs").join(format!(
            "{}-agent-{}.log",
            host.name(),
            self.agent_runs
        )))?;
        self.step(&format!("{host}: failover agent"));
        let child = self
            .failover_command(host)
            .args(["agent", "--key-file", &self.key_file()])
            .env(
                "RUST_LOG",
                std::env::var("TANDEM_AGENT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting the agent")?;
        self.agents[idx(host)] = Some(child);
        Ok(())
    }

    /// `kill -9` of `host`'s agent: it cannot release anything.
    pub(crate) fn kill_agent(&mut self, host: Host) {
        if let Some(mut child) = self.agents[idx(host)].take() {
            let _ = child.kill();
            let _ = child.wait();
            self.step(&format!("{host}: kill -9 of the agent"));
        }
    }

    /// Stops the agents as an operator would (see [`super::stop_processes`]).
    pub(crate) fn stop_agents(&mut self, grace: Duration) {
        super::stop_processes(self.agents.iter_mut().flatten(), grace);
        self.agents = [None, None];
    }

    /// The process IDs of the running agents.
    pub(crate) fn agent_pids(&self) -> Vec<(Host, u32)> {
        [Host::Node1, Host::Node2]
            .into_iter()
            .filter_map(|h| self.agents[idx(h)].as_ref().map(|c| (h, c.id())))
            .collect()
    }

    /// `host`'s `/status.json`, read from the client.
    pub(crate) fn status(&self, host: Host) -> Option<serde_json::Value> {
        self.lab
            .run_in(Host::Client, move || status_json(host))
            .ok()
            .flatten()
    }

    /// The role `host`'s agent reports.
    pub(crate) fn role(&self, host: Host) -> Option<String> {
        self.status(host)
            .and_then(|s| s["state"]["role"].as_str().map(str::to_owned))
    }

    /// The node whose agent says active.
    pub(crate) fn active_node(&self) -> Option<Host> {
        [Host::Node1, Host::Node2]
            .into_iter()
            .find(|&h| self.role(h).as_deref() == Some("active"))
    }

    /// Waits until `host`'s agent serves its status page.
    pub(crate) fn wait_page(&self, host: Host, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.status(host).is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{host}'s agent did not serve its status page within {within:?}")
    }

    /// Waits until `host`'s agent says `role`.
    pub(crate) fn wait_role(&self, host: Host, role: &str, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let mut last = None;
        while Instant::now() < deadline {
            last = self.role(host);
            if last.as_deref() == Some(role) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{host} was not {role} within {within:?} (last: {last:?})")
    }

    /// Waits until both agents report their peer link up.
    pub(crate) fn wait_peer_link(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let up = [Host::Node1, Host::Node2].iter().all(|&h| {
                self.status(h)
                    .is_some_and(|s| s["peer"]["connected"] == serde_json::Value::Bool(true))
            });
            if up {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "the agents' peer link did not come up within 20 s (see the agent logs in {})",
            self.path.join("logs").display()
        )
    }

    /// `mp_replication status --json` of `host`, parsed.
    pub(crate) fn replication_status(&self, host: Host) -> Option<tandem_replication::Status> {
        let mut cmd = self.mp_command(host);
        cmd.args(["status", "--json"]);
        output_within(cmd, Duration::from_secs(10))
            .ok()
            .and_then(|o| serde_json::from_slice::<tandem_replication::Status>(&o.stdout).ok())
    }

    /// Whether both nodes' replication says the peer is connected.
    pub(crate) fn replication_connected(&self) -> bool {
        [Host::Node1, Host::Node2].iter().all(|&h| {
            self.replication_status(h)
                .is_some_and(|s| s.remote.status == LinkStatus::Connected)
        })
    }

    /// Waits until both nodes' replication says the peer is connected.
    pub(crate) fn wait_replication(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.replication_connected() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("replication did not connect within {within:?}")
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.stop_agents(Duration::from_secs(5));
        // The servers go before their namespaces; whatever of theirs still runs
        // (a server an agent or a tool started after a copy) with them.
        self.pg.clear();
        if let Some(dir) = &self.pg_dir {
            kill_processes_naming(dir.path());
        }
        // The mount goes before the directory; the lab after this.
        self.mount.take();
    }
}

/// Fails unless `out` contains `needle`.
pub(crate) fn expect(out: &str, needle: &str, what: &str) -> anyhow::Result<()> {
    if !out.contains(needle) {
        bail!("{what}: expected `{needle}` in the output:\n{out}");
    }
    Ok(())
}

/// The node's own hostname in the lab (the seed's eth0:0 hostname).
pub(crate) fn hostname(host: Host) -> String {
    match host {
        Host::Node1 => "meetings1.lab.test".to_owned(),
        _ => "meetings2.lab.test".to_owned(),
    }
}

/// The seed's Media Server rule as an active-only service: it registers the
/// node with the stand-in Media Server when the node becomes active and
/// unregisters it before the node gives up the shared address
/// (docs/OPERATIONS.md, "The Media Server follows the active node").
fn media_service(host: Host) -> tandem_node::ServiceSpec {
    let name = hostname(host);
    config::active_service(
        "media-server",
        tandem_lab::media::register_command(&name),
        tandem_lab::media::unregister_command(&name),
        30_000,
    )
}

/// The line of a command's output worth showing in the timeline.
pub(crate) fn summary_line(stdout: &str) -> String {
    let pick = stdout
        .lines()
        .rev()
        .find(|l| {
            l.contains("SUCCESSFUL")
                || l.starts_with("set-server")
                || l.starts_with("set-deployment")
                || l.starts_with("Sent ")
                || l.starts_with("Restored")
                || l.starts_with("node ")
        })
        .or_else(|| stdout.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or_default();
    let pick = pick
        .strip_prefix("Database Replication changes for this machine ")
        .unwrap_or(pick);
    let mut text: String = pick.chars().take(70).collect();
    if pick.chars().count() > 70 {
        text.push_str("...");
    }
    text
}
