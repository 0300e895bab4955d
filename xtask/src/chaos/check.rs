//! After the fault: the operator's recovery (a node made active, replication
//! resynchronised), then the four checks of a trial: acknowledged writes on both
//! nodes, each node in a stated role, no damaged file, and how long two nodes
//! held the shared address.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tandem_lab::Host;
use tandem_replication::SqliteBackend;

use super::outcome::Outcome;
use super::scenario::Scenario;
use super::trial::{Trial, Window, holds_shared};
use crate::site::harness::idx;
use crate::site::{self, other};

/// How long the roles must stay the same before the operator acts on them.
const STEADY: Duration = Duration::from_millis(1500);

/// A node and the acknowledged transactions it lacks.
type Missing = (Host, BTreeSet<u64>);

impl Trial {
    /// Brings the site back as an operator would, then checks it: the writes
    /// acknowledged, the stated roles, the files, the two holders.
    pub(super) fn check(&mut self, outcome: &mut Outcome) -> anyhow::Result<()> {
        self.settle_roles(outcome)?;
        self.resume_replication(outcome)?;
        let (lost, missing) = self.lost_writes(outcome)?;
        self.note_lost(&lost, &missing, outcome);
        outcome.lost = lost.into_iter().collect();
        self.check_roles(outcome);
        self.stop.store(true, Ordering::Relaxed);
        self.check_files(outcome);
        // Two holders, from the address watch.
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let end = self.site.at();
        let (overlap, split) = self.overlaps(end);
        outcome.overlap = overlap;
        outcome.split_brain = split;
        Ok(())
    }

    /// Waits until the roles settle; the operator makes a node active when none is.
    fn settle_roles(&self, outcome: &mut Outcome) -> anyhow::Result<()> {
        // Roles settle: exactly one active, and it stays so for a while (a node
        // that stepped down for a newer claim leaves the roles stated but
        // swapped for a moment, until the other claims again).
        let deadline = Instant::now() + Duration::from_secs(20);
        let steady_for = Duration::from_millis(3 * self.timing.conflict_backoff_ms).max(STEADY);
        let mut roles = (None, None);
        let mut since = (Instant::now(), (None, None));
        while Instant::now() < deadline {
            roles = (self.site.role(Host::Node1), self.site.role(Host::Node2));
            if roles != since.1 {
                since = (Instant::now(), roles.clone());
            }
            let stated = matches!(
                (roles.0.as_deref(), roles.1.as_deref()),
                (Some("active"), Some("standby")) | (Some("standby"), Some("active"))
            );
            if stated && since.0.elapsed() >= steady_for {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let (Some(_), Some(_)) = &roles
            && self.site.active_node().is_none()
        {
            self.operator_ensures_active(Host::Node1, outcome)?;
        }
        Ok(())
    }

    /// Replication resumes on its own, or the operator resynchronises the standby.
    fn resume_replication(&self, outcome: &mut Outcome) -> anyhow::Result<()> {
        if let Some(active) = self.site.active_node()
            && !self.wait_healthy(Duration::from_secs(8))
        {
            let standby = other(active);
            outcome.notes.push(format!(
                "replication did not resume (disconnected or diverged): switch-on -S -F from-sync on {standby}"
            ));
            for host in [active, standby] {
                if let Some(s) = self.site.replication_status(host) {
                    outcome.notes.push(format!(
                        "{host} said: remote {}, {}",
                        s.remote.status,
                        s.alarms.join("; ")
                    ));
                }
            }
            if self.site.role(standby).as_deref() == Some("standby") {
                self.resync(standby, outcome)?;
            }
            self.site.wait_replication(Duration::from_secs(20))?;
        }
        Ok(())
    }

    /// Stops the client and looks up every acknowledged write on both nodes: the
    /// lost ones, and which node lacks each.
    fn lost_writes(&self, outcome: &mut Outcome) -> anyhow::Result<(BTreeSet<u64>, Vec<Missing>)> {
        // The client stops; every acknowledged write must be on both nodes.
        if let Some(active) = self.site.active_node() {
            let _ = self.wait_acked_by(active.name(), Duration::from_secs(10));
        }
        std::thread::sleep(Duration::from_millis(300));
        self.stop_client.store(true, Ordering::Relaxed);
        // Writes still in flight may yet be acknowledged: every one is checked.
        site::wait_answered(&self.samples);
        let acked = site::acknowledged(&self.samples);
        outcome.acked = acked.len();
        let deadline = Instant::now() + Duration::from_secs(20);
        let (lost, missing) = loop {
            let mut lost = BTreeSet::new();
            let mut missing = Vec::new();
            for host in [Host::Node1, Host::Node2] {
                // A PostgreSQL standby being copied from its primary does not
                // answer until the copy is done.
                let m = match self.missing(host, &acked) {
                    Ok(m) => m,
                    Err(_) if Instant::now() < deadline => acked.iter().copied().collect(),
                    Err(e) => return Err(e),
                };
                lost.extend(m.iter().copied());
                missing.push((host, m));
            }
            if lost.is_empty() || Instant::now() > deadline {
                break (lost, missing);
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        Ok((lost, missing))
    }

    /// Notes which node acknowledged each lost write and when, which node lacks it,
    /// and the fault windows.
    fn note_lost(&self, lost: &BTreeSet<u64>, missing: &[Missing], outcome: &mut Outcome) {
        // Which node acknowledged each lost write, when, and which node lacks it
        // (the client's transaction numbers count its samples from FIRST_TX).
        let samples = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        for tx in lost {
            let sample = usize::try_from(tx.saturating_sub(site::FIRST_TX))
                .ok()
                .and_then(|i| samples.get(i));
            let lacking: Vec<&str> = missing
                .iter()
                .filter(|(_, m)| m.contains(tx))
                .map(|(h, _)| h.name())
                .collect();
            outcome.notes.push(format!(
                "transaction {tx} acknowledged by {} at {:.3} s is missing on {}",
                sample.and_then(|w| w.who.clone()).unwrap_or_default(),
                sample.map_or(0.0, |w| w.sent.as_secs_f64()),
                lacking.join(" and ")
            ));
        }
        for w in &self.windows {
            let (what, from, to) = match *w {
                Window::Cut(a, b) => ("cable cut", a, b),
                Window::Partition(a, b) => ("partition", a, b),
            };
            outcome.notes.push(format!(
                "{what} from {:.3} s to {:.3} s",
                from.as_secs_f64(),
                to.as_secs_f64()
            ));
        }
    }

    /// Each node in a stated role, from the status pages and from the interfaces.
    fn check_roles(&self, outcome: &mut Outcome) {
        let mut described = Vec::new();
        let mut actives = 0;
        for host in [Host::Node1, Host::Node2] {
            let status = self.site.status(host);
            let role = status
                .as_ref()
                .and_then(|s| s["state"]["role"].as_str().map(str::to_owned));
            let holds = self.holds_now(host);
            match role.as_deref() {
                Some("active") => {
                    actives += 1;
                    if !holds {
                        outcome
                            .unstated
                            .push(format!("{host} says active but lacks the shared address"));
                    }
                }
                Some("standby") => {
                    if holds {
                        outcome
                            .unstated
                            .push(format!("{host} says standby but holds the shared address"));
                    }
                }
                other => outcome
                    .unstated
                    .push(format!("{host}'s agent reports no role ({other:?})")),
            }
            described.push(format!("{host} {}", role.as_deref().unwrap_or("?")));
        }
        if actives != 1 {
            outcome
                .unstated
                .push(format!("{actives} active nodes at the end"));
        }
        outcome.roles = described.join(", ");
    }

    /// Damaged files: state files, databases, restore journals, the site key.
    fn check_files(&self, outcome: &mut Outcome) {
        for host in [Host::Node1, Host::Node2] {
            let dir = self.site.state_dir(host);
            match tandem_role::StateFile::in_dir(&dir).load() {
                Ok(Some(_)) => {}
                Ok(None) => outcome.damaged.push(format!("{host}: no state file")),
                Err(e) => outcome.damaged.push(format!("{host}: state file: {e}")),
            }
            match self.integrity(host) {
                Ok(answer) if answer == "ok" => {}
                Ok(answer) => outcome
                    .damaged
                    .push(format!("{host}: integrity_check: {answer}")),
                Err(e) => outcome.damaged.push(format!("{host}: database: {e:#}")),
            }
            let journal = dir.join("config-files").join("journal.json");
            if journal.exists() {
                outcome.damaged.push(format!(
                    "{host}: restore journal left: {}",
                    journal.display()
                ));
            }
        }
        if let Err(e) = tandem_peer::SiteKey::load(Path::new(&self.site.key_file())) {
            outcome.damaged.push(format!("site key: {e}"));
        }
    }

    fn holds_now(&self, host: Host) -> bool {
        self.site.lab.run_in(host, holds_shared).unwrap_or(false)
    }

    /// The longest stretch in which both nodes held the shared address while
    /// both were on the wire, outside partitions; and the longest inside one.
    fn overlaps(&self, end: Duration) -> (Duration, Duration) {
        let spans = |i: usize| -> Vec<(Duration, Duration)> {
            let list = self.holds[i].lock().map(|l| l.clone()).unwrap_or_default();
            let mut out = Vec::new();
            let mut since = None;
            for (t, held) in list {
                match (held, since) {
                    (true, None) => since = Some(t),
                    (false, Some(s)) => {
                        out.push((s, t));
                        since = None;
                    }
                    _ => {}
                }
            }
            if let Some(s) = since {
                out.push((s, end));
            }
            out
        };
        let (a, b) = (spans(0), spans(1));
        let mut both = Vec::new();
        for &(s1, e1) in &a {
            for &(s2, e2) in &b {
                let (s, e) = (s1.max(s2), e1.min(e2));
                if s < e {
                    both.push((s, e));
                }
            }
        }
        let mut outside = Duration::ZERO;
        let mut inside = Duration::ZERO;
        for (s, e) in both {
            let mut pieces = vec![(s, e)];
            for w in &self.windows {
                let (ws, we, partition) = match *w {
                    Window::Cut(ws, we) => (ws, we, false),
                    Window::Partition(ws, we) => (ws, we, true),
                };
                // Without automatic failover two holders during a partition
                // count like any other.
                if partition && !self.auto {
                    continue;
                }
                let mut next = Vec::new();
                for (ps, pe) in pieces {
                    let (is, ie) = (ps.max(ws), pe.min(we));
                    if is >= ie {
                        next.push((ps, pe));
                        continue;
                    }
                    if partition {
                        inside = inside.max(ie - is);
                    }
                    if ps < is {
                        next.push((ps, is));
                    }
                    if ie < pe {
                        next.push((ie, pe));
                    }
                }
                pieces = next;
            }
            for (ps, pe) in pieces {
                outside = outside.max(pe - ps);
            }
        }
        (outside, inside)
    }

    /// The acknowledged transactions whose rows `host`'s database lacks.
    fn missing(&self, host: Host, acked: &[u64]) -> anyhow::Result<BTreeSet<u64>> {
        self.site.layout().missing(host, acked)
    }

    /// `PRAGMA integrity_check` of `host`'s database.
    fn integrity(&self, host: Host) -> anyhow::Result<String> {
        if let Some(server) = self.site.pg.get(idx(host)) {
            return crate::pgsite::integrity(server);
        }
        let settings = self.site.settings(host)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let backend = SqliteBackend::open_existing(&settings).await?;
            let rows: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
                .fetch_all(backend.pool())
                .await?;
            backend.close().await;
            Ok(rows.join("; "))
        })
    }

    /// Keeps a failed trial's agent logs under `target/chaos/`.
    pub(super) fn keep_logs(&self, trial: u32, scenario: Scenario, outcome: &mut Outcome) {
        let to = crate::workspace_root()
            .join("target")
            .join("chaos")
            .join(format!(
                "trial-{trial}-{}-{}",
                scenario.name(),
                outcome.trial_seed
            ));
        if std::fs::create_dir_all(&to).is_err() {
            return;
        }
        if let Ok(entries) = std::fs::read_dir(self.site.dir().join("logs")) {
            for entry in entries.flatten() {
                let _ = std::fs::copy(entry.path(), to.join(entry.file_name()));
            }
        }
        for host in [Host::Node1, Host::Node2] {
            let _ = std::fs::copy(
                self.site.config_path(host),
                to.join(format!("{}.toml", host.name())),
            );
            let _ = std::fs::copy(
                self.site
                    .state_dir(host)
                    .join("postgres")
                    .join("server.log"),
                to.join(format!("{}-postgres.log", host.name())),
            );
            if let Some(server) = self.site.pg.get(idx(host)) {
                let _ = std::fs::copy(
                    server.home.join("test-server.log"),
                    to.join(format!("{}-postgres-lab.log", host.name())),
                );
            }
        }
        outcome
            .notes
            .push(format!("agent logs kept in {}", to.display()));
    }
}
