//! Playing a chaos scenario on a running trial: the faults, with timings and
//! victims drawn from the trial's seed, and what an operator does right after.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tandem_lab::Host;

use super::outcome::Outcome;
use super::scenario::{Rng, Scenario};
use super::trial::{Trial, Window, first_line};
use crate::site::harness::idx;
use crate::site::{self, other, process};

impl Trial {
    /// Plays `scenario` with timings and victims drawn from `rng` (what was drawn
    /// goes to `outcome`).
    pub(super) fn play(
        &mut self,
        scenario: Scenario,
        rng: &mut Rng,
        outcome: &mut Outcome,
    ) -> anyhow::Result<()> {
        // Let the client write for a moment before the fault.
        std::thread::sleep(rng.ms(200, 800));
        match scenario {
            Scenario::KillActive | Scenario::KillStandby => {
                self.kill_agent_then_restart(scenario, rng, outcome)?
            }
            Scenario::KillDuringSwitch => self.kill_during_switch(rng, outcome)?,
            Scenario::CutActive => self.cut_active(rng, outcome)?,
            Scenario::CutTakeover => self.cut_takeover(rng, outcome)?,
            Scenario::Partition | Scenario::PartitionAuto => self.partition(rng, outcome)?,
            Scenario::BothBoot => self.both_boot(rng, outcome)?,
            Scenario::RestartFromSync => self.restart_from_sync(rng, outcome)?,
            Scenario::RestartRestore => self.restart_restore(rng, outcome)?,
            Scenario::KillPostgres => self.kill_postgres(rng, outcome)?,
            Scenario::StandbyReinstalled => self.standby_reinstalled(outcome)?,
            Scenario::StandbyDiskFull => self.disk_full(rng, outcome)?,
            Scenario::WitnessCutActive
            | Scenario::WitnessCutStandby
            | Scenario::WitnessMemberKill
            | Scenario::WitnessDown
            | Scenario::WitnessRestartPartitioned => self.witness_fault(scenario, rng, outcome)?,
        }
        Ok(())
    }

    /// `kill-active`, `kill-standby`: `kill -9` of an agent, restarted later.
    fn kill_agent_then_restart(
        &mut self,
        scenario: Scenario,
        rng: &mut Rng,
        outcome: &mut Outcome,
    ) -> anyhow::Result<()> {
        let active = self.site.active_node().unwrap_or(Host::Node1);
        let victim = if scenario == Scenario::KillActive {
            active
        } else {
            other(active)
        };
        let down = rng.ms(300, 2500);
        outcome.drawn.push(format!(
            "kill -9 {victim}'s agent, restart after {} ms",
            down.as_millis()
        ));
        self.site.kill_agent(victim);
        std::thread::sleep(down);
        if victim == active && self.site.role(other(active)).as_deref() == Some("active") {
            outcome.notes.push(format!(
                "{} took over while {victim}'s agent was dead",
                other(active)
            ));
        }
        self.site.start_agent(victim)?;
        Ok(())
    }

    /// `kill-during-switch`: `kill -9` of one agent during a planned switch.
    fn kill_during_switch(&mut self, rng: &mut Rng, outcome: &mut Outcome) -> anyhow::Result<()> {
        let from = self.site.active_node().unwrap_or(Host::Node1);
        let to = other(from);
        let victim = if rng.coin() { from } else { to };
        let after = rng.ms(0, 500);
        outcome.drawn.push(format!(
            "switch {from} -> {to}, kill -9 {victim}'s agent {} ms in",
            after.as_millis()
        ));
        let switch = {
            let mut down = self.site.failover_command(from);
            down.args(["set-server", "standby"]);
            let mut up = self.site.failover_command(to);
            up.args(["set-server", "active"]);
            std::thread::spawn(move || {
                let a = process::output_within(down, Duration::from_secs(30));
                let b = process::output_within(up, Duration::from_secs(30));
                (a, b)
            })
        };
        std::thread::sleep(after);
        self.site.kill_agent(victim);
        let (a, b) = switch
            .join()
            .map_err(|_| anyhow::anyhow!("the switch thread panicked"))?;
        for (what, out) in [("set-server standby", a), ("set-server active", b)] {
            let ok = out.as_ref().is_ok_and(|o| o.status.success());
            if !ok {
                outcome
                    .notes
                    .push(format!("{what} did not complete (agent killed)"));
            }
        }
        std::thread::sleep(rng.ms(100, 1000));
        self.site.start_agent(victim)?;
        self.operator_ensures_active(to, outcome)?;
        Ok(())
    }

    /// `cut-active`: the active node's cable cut and plugged back in.
    fn cut_active(&mut self, rng: &mut Rng, outcome: &mut Outcome) -> anyhow::Result<()> {
        let active = self.site.active_node().unwrap_or(Host::Node1);
        // Short cuts end before the peer link declares the loss, or
        // while the old active is still checking itself.
        let down = rng.ms(300, 4000);
        outcome
            .drawn
            .push(format!("cut {active}'s cable for {} ms", down.as_millis()));
        let from = self.site.at();
        self.site.lab.cut(active)?;
        std::thread::sleep(down);
        self.site.lab.restore(active)?;
        self.windows.push(Window::Cut(from, self.site.at()));
        self.site.step(&format!("{active}'s cable back"));
        Ok(())
    }

    /// `cut-takeover`: the active node's cable cut, `set-server active` on the
    /// standby, the cable back.
    fn cut_takeover(&mut self, rng: &mut Rng, outcome: &mut Outcome) -> anyhow::Result<()> {
        // Half the trials cut a node that claimed the address a moment before,
        // as the demo does (the planned switchovers come right before its cut):
        // its claim reached the peer, but it is recent enough for the peer
        // loss to count it as possibly unheard. A standby that does not apply
        // its peer's changes yet (a PostgreSQL standby not streaming in a
        // trial's first seconds) refuses the switchover, and the trial cuts the
        // active it has (RELIABILITY.md, finding 27).
        let mut fresh = rng.coin().then(|| rng.ms(0, 60));
        if let Some(pause) = fresh {
            let standby = other(self.site.active_node().unwrap_or(Host::Node1));
            let mut switch = self.site.failover_command(standby);
            switch.arg("switchover");
            let out = process::output_within(switch, Duration::from_secs(30))?;
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if out.status.success() {
                std::thread::sleep(pause);
            } else if said.contains("not ready to take over") {
                outcome.notes.push(format!(
                    "switchover to {standby} refused: {}",
                    first_line(&said)
                ));
                fresh = None;
            } else {
                bail!(
                    "the switchover to {standby} before the cut failed: {}",
                    first_line(&said)
                );
            }
        }
        let active = self.site.active_node().unwrap_or(Host::Node1);
        let standby = other(active);
        let after = rng.ms(50, 400);
        // After a fresh claim, the cable comes back around the time the cut
        // node declares its peer lost (three heartbeats), as in the demo.
        let longest = if fresh.is_some() { 1200 } else { 3000 };
        let down = rng.ms(300, longest).max(after + Duration::from_millis(100));
        outcome.drawn.push(format!(
            "{}cut {active}'s cable for {} ms, set-server active on {standby} {} ms in",
            fresh.map_or(String::new(), |p| format!(
                "switchover to {active}, {} ms later ",
                p.as_millis()
            )),
            down.as_millis(),
            after.as_millis()
        ));
        let from = self.site.at();
        let cut_at = Instant::now();
        self.site.lab.cut(active)?;
        std::thread::sleep(after);
        let takeover = {
            let mut up = self.site.failover_command(standby);
            up.args(["set-server", "active"]);
            std::thread::spawn(move || process::output_within(up, Duration::from_secs(30)))
        };
        std::thread::sleep(down.saturating_sub(cut_at.elapsed()));
        self.site.lab.restore(active)?;
        self.windows.push(Window::Cut(from, self.site.at()));
        self.site.step(&format!("{active}'s cable back"));
        let out = takeover
            .join()
            .map_err(|_| anyhow::anyhow!("the set-server thread panicked"))?;
        if !out.as_ref().is_ok_and(|o| o.status.success()) {
            outcome
                .notes
                .push(format!("set-server active on {standby} was refused"));
        }
        Ok(())
    }

    /// `partition`, `partition-auto`: only the link between the nodes cut.
    fn partition(&mut self, rng: &mut Rng, outcome: &mut Outcome) -> anyhow::Result<()> {
        let down = rng.ms(1500, 4000);
        outcome.drawn.push(format!(
            "partition the nodes for {} ms (both reach the client)",
            down.as_millis()
        ));
        let from = self.site.at();
        self.site.lab.partition_nodes(true)?;
        std::thread::sleep(down);
        self.site.lab.partition_nodes(false)?;
        self.windows.push(Window::Partition(from, self.site.at()));
        self.site.step("partition healed");
        Ok(())
    }

    /// `both-boot`: both agents killed and started at the same moment.
    fn both_boot(&mut self, rng: &mut Rng, outcome: &mut Outcome) -> anyhow::Result<()> {
        let pause = rng.ms(0, 500);
        let skew = rng.ms(0, 30);
        let first = if rng.coin() { Host::Node1 } else { Host::Node2 };
        outcome.drawn.push(format!(
            "kill -9 both agents, both boot {} ms later ({first} first by {} ms)",
            pause.as_millis(),
            skew.as_millis()
        ));
        self.site.kill_agent(Host::Node1);
        self.site.kill_agent(Host::Node2);
        // A reboot comes up without the shared address.
        for host in [Host::Node1, Host::Node2] {
            let _ = self.site.lab.exec(
                host,
                "ip",
                &[
                    "addr",
                    "del",
                    &format!("{}/24", tandem_lab::SHARED_ADDR),
                    "dev",
                    "eth0",
                ],
            );
        }
        std::thread::sleep(pause);
        self.site.spawn_agent(first)?;
        std::thread::sleep(skew);
        self.site.spawn_agent(other(first))?;
        self.site.wait_page(Host::Node1, Duration::from_secs(20))?;
        self.site.wait_page(Host::Node2, Duration::from_secs(20))?;
        Ok(())
    }

    /// `restart-from-sync`: a kill during `switch-on -S -F from-sync`.
    fn restart_from_sync(&mut self, rng: &mut Rng, outcome: &mut Outcome) -> anyhow::Result<()> {
        let active = self.site.active_node().unwrap_or(Host::Node1);
        let standby = other(active);
        let kill_tool = rng.coin();
        let after = rng.ms(0, 150);
        outcome.drawn.push(format!(
            "{standby}: switch-on -S -F from-sync, kill -9 of {} {} ms in",
            if kill_tool {
                "mp_replication"
            } else {
                "the agent"
            },
            after.as_millis()
        ));
        let mut cmd = self.site.mp_command(standby);
        cmd.args(["switch-on", "-S", "-F", "from-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut tool = cmd.spawn().context("starting mp_replication")?;
        std::thread::sleep(after);
        if kill_tool {
            let _ = tool.kill();
            let _ = tool.wait();
        } else {
            self.site.kill_agent(standby);
            let _ = process::wait_child(&mut tool, Duration::from_secs(30));
            self.site.start_agent(standby)?;
        }
        self.site
            .wait_role(standby, "standby", Duration::from_secs(20))?;
        self.resync(standby, outcome)?;
        Ok(())
    }

    /// The witness scenarios: the client must notice nothing, and no moment may
    /// have two holders.
    fn witness_fault(
        &mut self,
        scenario: Scenario,
        rng: &mut Rng,
        outcome: &mut Outcome,
    ) -> anyhow::Result<()> {
        let active = self.site.active_node().unwrap_or(Host::Node1);
        // Sometimes shorter, sometimes longer than the lease's TTL (3 s).
        let down = rng.ms(1000, 6000);
        let started = self.site.started;
        let Some(witness) = self.site.witness.as_mut() else {
            bail!("{} needs the witness (--witness)", scenario.name());
        };
        match scenario {
            Scenario::WitnessCutActive | Scenario::WitnessCutStandby => {
                let host = if scenario == Scenario::WitnessCutActive {
                    active
                } else {
                    other(active)
                };
                outcome.drawn.push(format!(
                    "cut {host} from the witness for {} ms",
                    down.as_millis()
                ));
                self.site.lab.cut_from_witness(host, true)?;
                std::thread::sleep(down);
                self.site.lab.cut_from_witness(host, false)?;
            }
            Scenario::WitnessMemberKill => {
                let member = rng.range(1, 3) as usize;
                outcome.drawn.push(format!(
                    "kill etcd member {member} for {} ms",
                    down.as_millis()
                ));
                witness.kill(member)?;
                std::thread::sleep(down);
                witness.start(member)?;
            }
            Scenario::WitnessDown => {
                outcome.drawn.push(format!(
                    "stop every etcd member for {} ms",
                    down.as_millis()
                ));
                witness.stop_all();
                std::thread::sleep(down);
                witness.start_all()?;
            }
            Scenario::WitnessRestartPartitioned => {
                let restart_in = rng.ms(200, 1500);
                outcome.drawn.push(format!(
                    "partition the nodes for {} ms, restart every etcd member {} ms in",
                    down.as_millis(),
                    restart_in.as_millis()
                ));
                let from = started.elapsed();
                let cut_at = Instant::now();
                self.site.lab.partition_nodes(true)?;
                std::thread::sleep(restart_in);
                witness.stop_all();
                witness.start_all()?;
                std::thread::sleep(down.saturating_sub(cut_at.elapsed()));
                self.site.lab.partition_nodes(false)?;
                self.windows
                    .push(Window::Partition(from, started.elapsed()));
            }
            _ => bail!("{} is not a witness scenario", scenario.name()),
        }
        self.site.step("witness fault over");
        Ok(())
    }

    /// `switch-on -S -F from-sync` on `host`, retried as an operator would while
    /// the agent's replication service is not up yet.
    pub(super) fn resync(&self, host: Host, outcome: &mut Outcome) -> anyhow::Result<()> {
        let mut tries = 0;
        loop {
            tries += 1;
            match self.mp(host, &["switch-on", "-S", "-F", "from-sync"]) {
                Ok(_) => return Ok(()),
                Err(e) if tries < 5 => {
                    outcome.notes.push(format!(
                        "from-sync on {host} failed, tried again: {}",
                        first_line(&format!("{e:#}"))
                    ));
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The operator's retry: when no node is active after the fault, `set-server
    /// active` on `to` (or, if refused, on the other node).
    pub(super) fn operator_ensures_active(
        &self,
        to: Host,
        outcome: &mut Outcome,
    ) -> anyhow::Result<()> {
        std::thread::sleep(Duration::from_millis(500));
        if self.site.active_node().is_some() {
            return Ok(());
        }
        outcome.notes.push(format!(
            "no node active: the operator runs set-server active on {to}"
        ));
        if self.failover(to, &["set-server", "active"]).is_err()
            || self
                .site
                .wait_role(to, "active", Duration::from_secs(5))
                .is_err()
        {
            outcome.notes.push(format!(
                "refused on {to}: the operator runs set-server active on {}",
                other(to)
            ));
            self.failover(other(to), &["set-server", "active"])?;
        }
        Ok(())
    }

    /// Writes old prompts on the standby, then copies a tree of prompts to it and
    /// restores it (timed), then copies a changed tree (not restored): how long
    /// the whole restore took.
    fn copy_prompts_twice(&mut self, active: Host, standby: Host) -> anyhow::Result<Duration> {
        for n in 0..20u32 {
            let old = vec![b'o'; 4096 + n as usize];
            std::fs::write(
                self.site.files(standby).join(format!("prompts/p{n}.wav")),
                old,
            )?;
        }
        let incoming = self
            .site
            .state_dir(standby)
            .join("incoming")
            .join("config-files.tar.gz");
        let mut took = Duration::ZERO;
        for round in 0..2u32 {
            for n in 0..200u32 {
                let new: Vec<u8> = (0..32_768u32).map(|i| (i ^ n ^ round) as u8).collect();
                std::fs::write(
                    self.site.files(active).join(format!("prompts/p{n}.wav")),
                    new,
                )?;
            }
            let _ = std::fs::remove_file(&incoming);
            self.failover(active, &["copy-config-files"])?;
            let deadline = Instant::now() + Duration::from_secs(20);
            while !incoming.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if round == 0 {
                let at = Instant::now();
                self.failover(standby, &["restore-config-files"])?;
                took = at.elapsed();
            }
        }
        Ok(took)
    }

    /// Copies a tree of prompts to the standby and restores it once (timing
    /// the restore), then copies a changed tree and kills
    /// `restore-config-files` at a random moment within that time; the next run
    /// must finish or undo it.
    fn restart_restore(&mut self, rng: &mut Rng, outcome: &mut Outcome) -> anyhow::Result<()> {
        let active = self.site.active_node().unwrap_or(Host::Node1);
        let standby = other(active);
        let took = self.copy_prompts_twice(active, standby)?;
        let after = rng.ms(0, u64::try_from(took.as_millis()).unwrap_or(500).max(1));
        outcome.drawn.push(format!(
            "{standby}: restore-config-files killed {} ms in (a whole restore took {} ms)",
            after.as_millis(),
            took.as_millis()
        ));
        let mut cmd = self.site.failover_command(standby);
        cmd.arg("restore-config-files")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut tool = cmd.spawn().context("starting restore-config-files")?;
        std::thread::sleep(after);
        let finished = matches!(tool.try_wait(), Ok(Some(_)));
        let _ = tool.kill();
        let _ = tool.wait();
        if finished {
            outcome
                .notes
                .push("restore-config-files had finished before the kill".into());
        }
        let journal = self
            .site
            .state_dir(standby)
            .join("config-files")
            .join("journal.json");
        if journal.exists() {
            outcome
                .notes
                .push("the kill left a restore journal; the next run resolves it".into());
        }
        self.failover(standby, &["restore-config-files"])?;
        if journal.exists() {
            outcome.damaged.push(format!(
                "{} still there after a second restore-config-files",
                journal.display()
            ));
        }
        for n in 0..200u32 {
            let rel = format!("prompts/p{n}.wav");
            let a = std::fs::read(self.site.files(active).join(&rel))?;
            let b = std::fs::read(self.site.files(standby).join(&rel)).unwrap_or_default();
            if a != b {
                outcome.damaged.push(format!(
                    "{standby}'s {rel} differs from {active}'s after restore-config-files"
                ));
                break;
            }
        }
        Ok(())
    }

    /// `kill -9` of PostgreSQL on either node: of the postmaster, started again a
    /// while later as its service manager would (`Restart=on-failure`), or of one
    /// server process, after which the postmaster restarts the others itself
    /// (crash recovery).
    fn kill_postgres(&mut self, rng: &mut Rng, outcome: &mut Outcome) -> anyhow::Result<()> {
        let active = self.site.active_node().unwrap_or(Host::Node1);
        let victim = if rng.coin() { active } else { other(active) };
        let role = if victim == active {
            "active"
        } else {
            "standby"
        };
        let kill = |pid: i32| {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        };
        if rng.coin() {
            let down = rng.ms(300, 4000);
            outcome.drawn.push(format!(
                "kill -9 of the {role} {victim}'s postmaster, started again after {} ms",
                down.as_millis()
            ));
            let server = &self.site.pg[idx(victim)];
            let pid = server
                .postmaster_pid()
                .with_context(|| format!("{victim}'s postmaster.pid"))?;
            kill(pid);
            self.site
                .step(&format!("{victim}: kill -9 of the postmaster ({pid})"));
            std::thread::sleep(down);
            // The killed postmaster's children exit once they notice; until then
            // a new postmaster refuses to start.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match self.site.pg[idx(victim)].start() {
                    Ok(()) => break,
                    Err(e) if Instant::now() < deadline => {
                        self.site
                            .step(&format!("{victim}: postgres not started yet: {e}"));
                        std::thread::sleep(Duration::from_millis(300));
                    }
                    Err(e) => return Err(e).context(format!("starting {victim}'s postgres")),
                }
            }
            self.site.step(&format!("{victim}: postgres started again"));
        } else {
            let settings = self.site.settings(victim)?;
            let kinds = ["client backend", "walsender", "walreceiver", "checkpointer"];
            let mut present = Vec::new();
            for kind in kinds {
                for pid in crate::pgsite::backends(&settings, kind)? {
                    present.push((kind, pid));
                }
            }
            anyhow::ensure!(
                !present.is_empty(),
                "{victim}'s server has none of the processes {kinds:?}"
            );
            let (kind, pid) = present[rng.range(0, present.len() as u64 - 1) as usize];
            outcome.drawn.push(format!(
                "kill -9 of a {kind} of the {role} {victim}'s postgres"
            ));
            kill(pid);
            self.site
                .step(&format!("{victim}: kill -9 of {kind} {pid}"));
            std::thread::sleep(rng.ms(500, 3000));
        }
        Ok(())
    }

    /// `host` reinstalled: its agent and server gone, a new server with an empty
    /// cluster, the new server's paths in its config, `mp_replication init`.
    fn reinstall(&mut self, host: Host) -> anyhow::Result<()> {
        self.site.kill_agent(host);
        let _ = self.site.pg[idx(host)].kill();
        let dir = self
            .site
            .pg_dir()
            .context("no PostgreSQL directory")?
            .join("reinstalled");
        std::fs::create_dir_all(&dir)?;
        self.site.pg[idx(host)] = crate::pgsite::server(&self.site.lab, host, &dir)?;
        let state = self.site.state_dir(host);
        for gone in ["postgres.json", "postgres.contact"] {
            let _ = std::fs::remove_file(state.join(gone));
        }
        let _ = std::fs::remove_dir_all(state.join("postgres"));
        // The operator's edit: the new server's paths (the tables appended at
        // set-up, with the new server).
        self.site
            .operator_config(host)
            .append_to(&self.site.config_path(host))?;
        let (id, _, peer) = site::node_facts(host);
        self.mp(
            host,
            &["init", "-n", &id.to_string(), "-r", &peer.to_string()],
        )?;
        Ok(())
    }

    /// The standby reinstalled: its agent and server gone, a new server with an
    /// empty cluster, the `[replication.postgres]` paths of the new server in its
    /// config, `mp_replication init`, its agent started. The agent's boot makes the
    /// database the standby's and its replication service copies the primary's
    /// cluster; meanwhile the harness reads the standby's status page every 100 ms
    /// and runs `failover status` there every second, and notes how slow the
    /// slowest answers were and whether the peer link stayed up.
    fn standby_reinstalled(&mut self, outcome: &mut Outcome) -> anyhow::Result<()> {
        let active = self.site.active_node().unwrap_or(Host::Node1);
        let standby = other(active);
        outcome.drawn.push(format!(
            "{standby} reinstalled with an empty cluster, `mp_replication init`, its agent started"
        ));
        self.reinstall(standby)?;
        let copy_from = Instant::now();
        self.site.start_agent(standby)?;
        let (mut slowest_page, mut slowest_tool) = (Duration::ZERO, Duration::ZERO);
        let (mut pages, mut unanswered, mut link_down, mut progress_seen) = (0, 0, 0, 0);
        // The peer link counts once it came up after the agent's start.
        let mut link_was_up = false;
        let mut last_tool = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let asked = Instant::now();
            let page = self.site.status(standby);
            slowest_page = slowest_page.max(asked.elapsed());
            pages += 1;
            let Some(page) = page else {
                unanswered += 1;
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            if page["peer"]["connected"] == serde_json::Value::Bool(true) {
                link_was_up = true;
            } else if link_was_up {
                link_down += 1;
            }
            let resync = page["replication"]["resync"].as_str().map(str::to_owned);
            if resync.is_some() {
                progress_seen += 1;
            }
            if last_tool.elapsed() >= Duration::from_secs(1) {
                last_tool = Instant::now();
                self.failover(standby, &["status"])?;
                slowest_tool = slowest_tool.max(last_tool.elapsed());
            }
            // Done once no copy is due or under way and the standby's own
            // walreceiver streams.
            let due = page["alarms"]
                .to_string()
                .contains("waits to be resynchronised");
            let streams = resync.is_none()
                && !due
                && crate::pgsite::wal_receiver_streams(&self.site.settings(standby)?);
            if streams || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        outcome.notes.push(format!(
            "{standby} copied the primary's cluster ({} MB written before the trial) and streams {:.1} s after its agent started",
            self.timing.pg_fill_mb,
            copy_from.elapsed().as_secs_f64()
        ));
        outcome.notes.push(format!(
            "meanwhile: {pages} status page reads, {unanswered} unanswered, slowest {} ms; \
             `failover status` slowest {} ms; peer link down in {link_down} reads after it came up; \
             progress shown in {progress_seen} reads",
            slowest_page.as_millis(),
            slowest_tool.as_millis()
        ));
        Ok(())
    }

    /// Fills the standby's state directory (a tmpfs), keeps it full for a while,
    /// then frees the space.
    fn disk_full(&mut self, rng: &mut Rng, outcome: &mut Outcome) -> anyhow::Result<()> {
        let active = self.site.active_node().unwrap_or(Host::Node1);
        let standby = other(active);
        let full_for = rng.ms(1500, 4000);
        outcome.drawn.push(format!(
            "fill {standby}'s state directory for {} ms",
            full_for.as_millis()
        ));
        let filler = self.site.state_dir(standby).join("filler");
        process::fill(&filler)?;
        let from = self.site.at();
        std::thread::sleep(full_for);
        let to = self.site.at();
        // Where an operator looks: either node's status page (the standby may be
        // unable to record anything, the active shows what its peer reports).
        let alarms = [standby, active]
            .map(|h| {
                self.site
                    .status(h)
                    .map(|s| s["alarms"].to_string())
                    .unwrap_or_default()
            })
            .join(" ");
        let replication = {
            let mut cmd = self.site.mp_command(standby);
            cmd.args(["status"]);
            process::output_within(cmd, Duration::from_secs(10))
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        std::fs::remove_file(&filler)?;
        let during = self
            .samples
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|w| w.sent >= from && w.sent <= to && w.who.is_some())
                    .count()
            })
            .unwrap_or(0);
        outcome.notes.push(format!(
            "{during} writes acknowledged while {standby}'s disk was full"
        ));
        let reported = alarms.to_lowercase().contains("space")
            || alarms.to_lowercase().contains("full")
            || replication.to_lowercase().contains("full")
            || replication.to_lowercase().contains("space");
        outcome.notes.push(if reported {
            format!("{standby} reported the full disk")
        } else {
            format!(
                "the full disk of {standby} was not reported on the status pages or in its mp_replication status"
            )
        });
        Ok(())
    }
}
