//! One chaos trial: a fresh [`Site`] (the demo's set-up path), the example
//! application on both nodes, the client writing through the shared address and
//! a watch of which node holds the address; then the scenario ([`super::faults`])
//! and the checks ([`super::check`]).

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use tandem_lab::Host;

use super::Timing;
use super::outcome::Outcome;
use super::scenario::{Rng, Scenario};
use crate::site::harness::idx;
use crate::site::{self, Backend, Binaries, Narration, Site, SiteOptions};

/// Plays one trial of `scenario` with its own seed: its outcome.
pub(super) fn run_trial(
    bins: &Binaries,
    trial: u32,
    scenario: Scenario,
    trial_seed: u64,
    timing: Timing,
    verbose: bool,
) -> Outcome {
    let started = Instant::now();
    let mut outcome = Outcome::new(trial, scenario, trial_seed);
    let mut rng = Rng(trial_seed);
    let result = Trial::set_up(bins, scenario, timing, verbose).and_then(|mut t| {
        let played = t.play(scenario, &mut rng, &mut outcome);
        let checked = played.and_then(|()| t.check(&mut outcome));
        if checked.is_err() || !outcome.passed(timing.bound()) {
            t.keep_logs(trial, scenario, &mut outcome);
        }
        checked
    });
    if let Err(e) = result {
        outcome.error = Some(format!("{e:#}"));
    }
    outcome.took = started.elapsed();
    outcome
}

/// When a node started (`true`) and stopped holding the shared address.
pub(super) type Holds = Arc<Mutex<Vec<(Duration, bool)>>>;

/// The fault windows in which a node's holding of the shared address is not
/// seen by anyone (its cable is cut), or in which the nodes are partitioned.
#[derive(Clone, Copy)]
pub(super) enum Window {
    Cut(Duration, Duration),
    Partition(Duration, Duration),
}

/// A running trial: the site, the application, the client and the address
/// watch. Dropping it stops the threads it started, then the site goes (agents,
/// servers, the mount, the lab).
pub(super) struct Trial {
    pub(super) timing: Timing,
    /// The agents run with automatic failover.
    pub(super) auto: bool,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) stop_client: Arc<AtomicBool>,
    pub(super) threads: Vec<std::thread::JoinHandle<tandem_lab::Result<anyhow::Result<()>>>>,
    pub(super) samples: Arc<Mutex<Vec<site::Sample>>>,
    /// Per node: when it started and stopped holding the shared address.
    pub(super) holds: [Holds; 2],
    pub(super) windows: Vec<Window>,
    /// The lab, the two nodes and their agents (dropped after the threads stop).
    pub(super) site: Site,
}

/// The site of a trial of `scenario`: the run's timing and database, the
/// scenario's failover policy, a small tmpfs for the disk that fills.
fn options(scenario: Scenario, timing: Timing, verbose: bool) -> SiteOptions {
    SiteOptions {
        prefix: format!("tandem-chaos-{}-", std::process::id()),
        narration: Narration::Steps { verbose },
        backend: if timing.postgres {
            Backend::Postgres {
                fill_mb: timing.pg_fill_mb,
            }
        } else {
            Backend::Sqlite
        },
        witness: timing.witness,
        auto_failover: scenario.auto_failover(),
        heartbeat_ms: timing.heartbeat_ms,
        conflict_backoff_ms: timing.conflict_backoff_ms,
        services: false,
        standby_tmpfs: (scenario == Scenario::StandbyDiskFull).then_some("48m"),
    }
}

impl Trial {
    /// The site of the seed's first procedure, node1 active, the address watch,
    /// the application and the client running.
    pub(super) fn set_up(
        bins: &Binaries,
        scenario: Scenario,
        timing: Timing,
        verbose: bool,
    ) -> anyhow::Result<Trial> {
        let site = Site::new(bins, options(scenario, timing, verbose))?;
        let mut trial = Trial {
            timing,
            auto: scenario.auto_failover(),
            stop: Arc::new(AtomicBool::new(false)),
            stop_client: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            samples: Arc::default(),
            holds: [Arc::default(), Arc::default()],
            windows: Vec::new(),
            site,
        };
        trial.start_watch()?;
        trial.site.set_up()?;
        trial.start_application()?;
        trial.wait_acked_by("node1", Duration::from_secs(20))?;
        Ok(trial)
    }

    /// Runs `failover args...` on `host`; fails when it fails.
    pub(super) fn failover(&self, host: Host, args: &[&str]) -> anyhow::Result<String> {
        // The steps name the command line, not a seed name.
        self.site.failover(host, args, "")
    }

    /// Runs `mp_replication args...` on `host`; fails when it fails.
    pub(super) fn mp(&self, host: Host, args: &[&str]) -> anyhow::Result<String> {
        self.site.mp(host, args, "")
    }

    /// The example application on both nodes, the client.
    fn start_application(&mut self) -> anyhow::Result<()> {
        for host in [Host::Node1, Host::Node2] {
            let stop = self.stop.clone();
            let settings = self.site.settings(host)?;
            // No `[[service]]` entry here: the application is never paused.
            let paused = self.site.layout().app_paused(host);
            self.threads.push(self.site.lab.spawn_in(host, move || {
                site::serve_app(host, &settings, &stop, &paused)
            })?);
        }
        let (stop, samples, started) = (
            self.stop_client.clone(),
            self.samples.clone(),
            self.site.started,
        );
        self.threads.push(
            self.site
                .lab
                .spawn_in(Host::Client, move || site::client(started, &stop, &samples))?,
        );
        Ok(())
    }

    /// A thread in each node's namespace that reads its addresses every 10 ms.
    fn start_watch(&mut self) -> anyhow::Result<()> {
        for host in [Host::Node1, Host::Node2] {
            let (stop, holds, started) = (
                self.stop.clone(),
                self.holds[idx(host)].clone(),
                self.site.started,
            );
            self.threads.push(self.site.lab.spawn_in(host, move || {
                let mut last = false;
                while !stop.load(Ordering::Relaxed) {
                    let now = holds_shared();
                    if now != last {
                        if let Ok(mut list) = holds.lock() {
                            list.push((started.elapsed(), now));
                        }
                        last = now;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(())
            })?);
        }
        Ok(())
    }

    /// Connected, and neither node says it holds changes the other never
    /// received (a diverged standby applies nothing until `from-sync`).
    pub(super) fn replication_healthy(&self) -> bool {
        [Host::Node1, Host::Node2].iter().all(|&h| {
            self.site.replication_status(h).is_some_and(|s| {
                s.remote.status == tandem_replication::LinkStatus::Connected
                    && s.resync.is_none()
                    // A PostgreSQL primary: its standby streams.
                    && s
                        .wal
                        .as_ref()
                        .is_none_or(|w| !w.primary || w.sync_state.is_some())
                    && !s
                        .alarms
                        .iter()
                        .any(|a| a.contains("diverged") || a.contains("resynchronised"))
            })
        })
    }

    /// Waits until replication is healthy; whether it became so `within`.
    pub(super) fn wait_healthy(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.replication_healthy() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Waits until the client's latest write was acknowledged by `node`.
    pub(super) fn wait_acked_by(&self, node: &str, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if site::latest_answer(&self.samples).as_deref() == Some(node) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("the client's writes were not acknowledged by {node} within {within:?}")
    }
}

impl Drop for Trial {
    fn drop(&mut self) {
        self.stop_client.store(true, Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // The site goes after this: agents, servers, mount, lab, directory.
    }
}

/// The last non-empty line of a message (the tools end with the reason).
pub(super) fn first_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
}

/// Whether this thread's namespace has the shared address on `eth0`.
pub(super) fn holds_shared() -> bool {
    Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", "eth0"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).contains(&format!(" {}/", tandem_lab::SHARED_ADDR))
        })
        .unwrap_or(false)
}
