//! `cargo xtask chaos --trials N`: randomised faults in the namespace lab.
//!
//! Every trial builds a fresh lab and a fresh site with the two binaries (as the
//! demo does: `set-deployment`, `mp_replication init`, the agents, `switch-on`,
//! node1 `set-server active`), starts the example application on both nodes and a
//! client writing through the shared address, then plays one scenario drawn by a
//! seeded random generator, with random timing:
//!
//! - `kill-active`, `kill-standby`: `kill -9` of an agent, restarted later;
//! - `kill-during-switch`: `kill -9` of one agent during a planned switch;
//! - `cut-active`: the active node's cable cut and plugged back in (automatic
//!   failover);
//! - `cut-takeover`: the demo's unplanned failover: the active node's cable cut,
//!   the operator's `set-server active` on the standby, the cable back, sometimes
//!   before the old active has noticed anything (manual failover);
//! - `partition`: only the link between the nodes cut, both still reach the
//!   client (manual failover, the default policy); `partition-auto` is the same
//!   with automatic failover on, run only when asked for by name;
//! - `both-boot`: both agents killed and started at the same moment;
//! - `restart-from-sync`: a restart during `switch-on -S -F from-sync`;
//! - `restart-restore`: a kill during `restore-config-files`;
//! - `standby-disk-full`: the standby's state directory (a small tmpfs) full.
//!
//! After the fault the harness acts as an operator would (restart a killed agent,
//! `set-server active` when no node is active, `switch-on -S -F from-sync` on a
//! standby whose replication does not resume) and then checks four things: how
//! long two nodes held the shared address while both were on the wire (polled
//! with `ip addr` every 10 ms, against the conflict-detection interval, the
//! agents' heartbeat plus the conflict backoff), acknowledged writes missing from
//! either database, damaged files (state file, `PRAGMA integrity_check`, site
//! key, a restore journal left behind), and each node in a stated role (exactly
//! one active holding the address, the other standby without it). Results go to
//! `target/chaos/` as JSON; a trial's seed replays it with `--trial-seed`.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use tandem_lab::{Host, Lab, LabConfig};
use tandem_node::LoadSettings;
use tandem_replication::{LinkStatus, Settings, SqliteBackend};

use crate::site::{self, Binaries, other};

/// Arguments of `cargo xtask chaos`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// How many trials to run.
    #[arg(long, default_value_t = 10)]
    trials: u32,
    /// The seed of the scenario order and timing (printed; default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Run only these scenarios (repeatable); default: every scenario but `partition-auto`.
    #[arg(long, value_enum)]
    scenario: Vec<Scenario>,
    /// Replay one trial: its seed as printed on its line (needs one `--scenario`).
    #[arg(long, requires = "scenario")]
    trial_seed: Option<u64>,
    /// Peer heartbeat interval of the agents, in milliseconds.
    #[arg(long, default_value_t = 200)]
    heartbeat_ms: u64,
    /// Pause of node 2 before re-probing after an address conflict, in milliseconds.
    #[arg(long, default_value_t = 500)]
    conflict_backoff_ms: u64,
    /// Also print the results as JSON on standard output.
    #[arg(long)]
    json: bool,
    /// Print every step of every trial.
    #[arg(short, long)]
    verbose: bool,
    /// Run the site with a three-member etcd witness (automatic failover on, the
    /// `[witness]` table appended to each node's config): the witness scenarios by
    /// default, and no moment of two holders is tolerated.
    #[arg(long)]
    witness: bool,
    /// The replicated database: the embedded SQLite backend, or PostgreSQL 15
    /// servers in the lab (one per node, its streaming replication controlled by
    /// tandem; adds the `kill-postgres` scenario to the default mix).
    #[arg(long, value_enum, default_value_t = Db::Sqlite)]
    backend: Db,
    /// With `--backend postgres`: MB of rows written on the primary before the
    /// trial (so that `standby-reinstalled` copies a cluster of that size).
    #[arg(long, default_value_t = 0)]
    pg_fill_mb: u64,
}

/// The database of the site under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Db {
    Sqlite,
    Postgres,
}

/// A fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
enum Scenario {
    KillActive,
    KillStandby,
    KillDuringSwitch,
    CutActive,
    CutTakeover,
    Partition,
    PartitionAuto,
    BothBoot,
    RestartFromSync,
    RestartRestore,
    StandbyDiskFull,
    /// The active node cut from the witness only (needs `--witness`).
    WitnessCutActive,
    /// The standby cut from the witness only (needs `--witness`).
    WitnessCutStandby,
    /// One etcd member killed and restarted (needs `--witness`).
    WitnessMemberKill,
    /// The whole etcd cluster down, then back (needs `--witness`).
    WitnessDown,
    /// The nodes partitioned while the whole etcd cluster restarts (needs `--witness`).
    WitnessRestartPartitioned,
    /// `kill -9` of PostgreSQL's postmaster or of one of its backends on either
    /// node, the postmaster restarted later as its service manager would (needs
    /// `--backend postgres`).
    KillPostgres,
    /// The standby reinstalled with a new, empty PostgreSQL cluster and `init`
    /// run again: its agent's boot leaves the copy of the primary's cluster to the
    /// replication service, and the status page, `failover status` and the peer
    /// link are timed while it copies (needs `--backend postgres`).
    StandbyReinstalled,
}

impl Scenario {
    const DEFAULT_MIX: [Scenario; 10] = [
        Scenario::KillActive,
        Scenario::KillStandby,
        Scenario::KillDuringSwitch,
        Scenario::CutActive,
        Scenario::CutTakeover,
        Scenario::Partition,
        Scenario::BothBoot,
        Scenario::RestartFromSync,
        Scenario::RestartRestore,
        Scenario::StandbyDiskFull,
    ];

    /// The mix of `--witness` runs: the faults a witness is for, and the kill of
    /// the active's agent that once lost a write without it.
    const WITNESS_MIX: [Scenario; 7] = [
        Scenario::PartitionAuto,
        Scenario::WitnessCutActive,
        Scenario::WitnessCutStandby,
        Scenario::WitnessMemberKill,
        Scenario::WitnessDown,
        Scenario::WitnessRestartPartitioned,
        Scenario::KillActive,
    ];

    /// Whether the scenario needs the witness.
    fn needs_witness(self) -> bool {
        matches!(
            self,
            Scenario::WitnessCutActive
                | Scenario::WitnessCutStandby
                | Scenario::WitnessMemberKill
                | Scenario::WitnessDown
                | Scenario::WitnessRestartPartitioned
        )
    }

    /// Whether the scenario needs the PostgreSQL site.
    fn needs_postgres(self) -> bool {
        matches!(self, Scenario::KillPostgres | Scenario::StandbyReinstalled)
    }

    fn name(self) -> &'static str {
        match self {
            Scenario::KillActive => "kill-active",
            Scenario::KillStandby => "kill-standby",
            Scenario::KillDuringSwitch => "kill-during-switch",
            Scenario::CutActive => "cut-active",
            Scenario::CutTakeover => "cut-takeover",
            Scenario::Partition => "partition",
            Scenario::PartitionAuto => "partition-auto",
            Scenario::BothBoot => "both-boot",
            Scenario::RestartFromSync => "restart-from-sync",
            Scenario::RestartRestore => "restart-restore",
            Scenario::StandbyDiskFull => "standby-disk-full",
            Scenario::WitnessCutActive => "witness-cut-active",
            Scenario::WitnessCutStandby => "witness-cut-standby",
            Scenario::WitnessMemberKill => "witness-member-kill",
            Scenario::WitnessDown => "witness-down",
            Scenario::WitnessRestartPartitioned => "witness-restart-partitioned",
            Scenario::KillPostgres => "kill-postgres",
            Scenario::StandbyReinstalled => "standby-reinstalled",
        }
    }

    /// Whether the agents run with `auto_failover = true` (no operator acts on
    /// a lost peer); the others keep the default, manual failover.
    fn auto_failover(self) -> bool {
        self.needs_witness()
            || matches!(
                self,
                Scenario::KillActive
                    | Scenario::KillStandby
                    | Scenario::CutActive
                    | Scenario::PartitionAuto
                    | Scenario::BothBoot
            )
    }
}

/// How long the roles must stay the same before the operator acts on them.
const STEADY: Duration = Duration::from_millis(1500);

/// A small seeded generator (splitmix64): the same seed, the same trials.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

/// Timing shared by every trial of a run.
#[derive(Clone, Copy)]
struct Timing {
    heartbeat_ms: u64,
    conflict_backoff_ms: u64,
    /// The site runs with a witness.
    witness: bool,
    /// The site replicates PostgreSQL.
    postgres: bool,
    /// MB of rows written on the PostgreSQL primary before each trial.
    pg_fill_mb: u64,
}

impl Timing {
    /// How long two holders are tolerated: none with a witness; without one,
    /// the conflict-detection interval (the agents' watch runs every heartbeat
    /// and a conflict is settled within the backoff).
    fn bound(self) -> Duration {
        if self.witness {
            Duration::ZERO
        } else {
            Duration::from_millis(self.heartbeat_ms + self.conflict_backoff_ms)
        }
    }
}

/// One trial's result.
struct Outcome {
    trial: u32,
    scenario: Scenario,
    trial_seed: u64,
    /// What the scenario drew (timings, victims).
    drawn: Vec<String>,
    /// The longest time both nodes held the shared address while both were on
    /// the wire (a cut node's address reaches nobody).
    overlap: Duration,
    /// Both holding during a partition with automatic failover (`partition-auto`).
    split_brain: Duration,
    acked: usize,
    lost: Vec<u64>,
    damaged: Vec<String>,
    roles: String,
    unstated: Vec<String>,
    notes: Vec<String>,
    error: Option<String>,
    took: Duration,
}

impl Outcome {
    fn passed(&self, bound: Duration) -> bool {
        // With a witness (bound zero) two holders are not tolerated even inside a
        // partition.
        let split_ok = !bound.is_zero() || self.split_brain.is_zero();
        self.error.is_none()
            && split_ok
            && self.overlap <= bound
            && self.lost.is_empty()
            && self.damaged.is_empty()
            && self.unstated.is_empty()
    }
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            % 1_000_000
    });
    let timing = Timing {
        heartbeat_ms: args.heartbeat_ms,
        conflict_backoff_ms: args.conflict_backoff_ms,
        witness: args.witness,
        postgres: args.backend == Db::Postgres,
        pg_fill_mb: args.pg_fill_mb,
    };
    let mix: Vec<Scenario> = match (args.scenario.is_empty(), args.witness) {
        (true, false) if timing.postgres => {
            let mut mix = Scenario::DEFAULT_MIX.to_vec();
            mix.push(Scenario::KillPostgres);
            mix.push(Scenario::StandbyReinstalled);
            mix
        }
        (true, false) => Scenario::DEFAULT_MIX.to_vec(),
        (true, true) => Scenario::WITNESS_MIX.to_vec(),
        (false, _) => args.scenario.clone(),
    };
    if let Some(s) = mix.iter().find(|s| s.needs_postgres() && !timing.postgres) {
        bail!(
            "scenario {} needs the PostgreSQL site: run `cargo xtask chaos --backend postgres \
             --scenario {}`",
            s.name(),
            s.name()
        );
    }
    if let Some(s) = mix.iter().find(|s| s.needs_witness() && !args.witness) {
        bail!(
            "scenario {} needs the witness: run `cargo xtask chaos --witness --scenario {}`",
            s.name(),
            s.name()
        );
    }
    let trials = if args.trial_seed.is_some() {
        1
    } else {
        args.trials
    };
    sweep_stale_mounts();
    sweep_stale_postgres();
    let bins = site::build_binaries()?;
    println!("tandem chaos: {trials} trials, seed {seed}");
    if timing.witness {
        println!(
            "  agents: heartbeat {} ms, conflict backoff {} ms; witness: three etcd members, lease TTL {} s; two holders tolerated: none",
            timing.heartbeat_ms,
            timing.conflict_backoff_ms,
            tandem_witness::WitnessConfig::new(Vec::new()).ttl_s
        );
    } else {
        println!(
            "  agents: heartbeat {} ms, conflict backoff {} ms; conflict-detection interval {} ms",
            timing.heartbeat_ms,
            timing.conflict_backoff_ms,
            timing.bound().as_millis()
        );
    }
    if timing.postgres {
        println!(
            "  database: PostgreSQL 15 on each node, synchronous streaming replication, degrade after {} ms",
            crate::pgsite::DEGRADE_AFTER_MS
        );
    }
    println!(
        "  scenarios: {}",
        mix.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
    );
    println!(
        "  replay a run with: cargo xtask chaos{}{} --trials {trials} --seed {seed}",
        if timing.witness { " --witness" } else { "" },
        if timing.postgres {
            " --backend postgres"
        } else {
            ""
        }
    );
    let mut order = Rng(seed);
    let mut deck: Vec<Scenario> = Vec::new();
    let mut outcomes = Vec::new();
    let started = Instant::now();
    for trial in 1..=trials {
        if deck.is_empty() {
            // A shuffled deck: every scenario once per round, in a random order.
            deck = mix.clone();
            for i in (1..deck.len()).rev() {
                let j = order.range(0, i as u64) as usize;
                deck.swap(i, j);
            }
        }
        let scenario = deck.pop().unwrap_or(Scenario::KillActive);
        let trial_seed = args
            .trial_seed
            .unwrap_or_else(|| order.next() % 1_000_000_000);
        let outcome = run_trial(&bins, trial, scenario, trial_seed, timing, args.verbose);
        print_outcome(&outcome, trials, timing.bound());
        outcomes.push(outcome);
    }
    let summary = summarize(&outcomes, timing, seed, started.elapsed());
    let dir = crate::workspace_root().join("target").join("chaos");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("chaos-{seed}.json"));
    let json = results_json(&outcomes, timing, seed);
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    std::fs::write(
        dir.join("latest.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    println!("  results: {}", path.display());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    if !summary {
        bail!("some trials failed (replay with --seed {seed}, or one with its --trial-seed)");
    }
    Ok(())
}

fn print_outcome(o: &Outcome, trials: u32, bound: Duration) {
    let verdict = if o.passed(bound) { "ok" } else { "FAILED" };
    println!(
        "trial {:>3}/{trials} {:<19} {verdict:<6} overlap {:>4} ms  acked {:>4} lost {}  files {}  roles {}  ({:.1} s, trial seed {})",
        o.trial,
        o.scenario.name(),
        o.overlap.as_millis(),
        o.acked,
        o.lost.len(),
        if o.damaged.is_empty() {
            "ok"
        } else {
            "DAMAGED"
        },
        o.roles,
        o.took.as_secs_f64(),
        o.trial_seed,
    );
    println!("    drawn: {}", o.drawn.join(", "));
    for note in &o.notes {
        println!("    note: {note}");
    }
    if o.split_brain > Duration::ZERO {
        println!(
            "    split brain during the partition: both held the address for {} ms",
            o.split_brain.as_millis()
        );
    }
    if let Some(e) = &o.error {
        println!("    error: {e}");
    }
    if !o.lost.is_empty() {
        println!("    lost acknowledged transactions: {:?}", o.lost);
    }
    for d in &o.damaged {
        println!("    damaged: {d}");
    }
    for u in &o.unstated {
        println!("    not in a stated role: {u}");
    }
    if o.overlap > bound {
        println!(
            "    two holders for {} ms, over the {} ms tolerated",
            o.overlap.as_millis(),
            bound.as_millis()
        );
    }
    println!("verdict: {} {verdict}", o.scenario.name());
}

/// Prints the per-scenario table; whether every trial passed.
fn summarize(outcomes: &[Outcome], timing: Timing, seed: u64, took: Duration) -> bool {
    let bound = timing.bound();
    println!("\n== Results (seed {seed}, {:.0} s)", took.as_secs_f64());
    println!(
        "| scenario | trials | passed | max overlap (ms) | acked writes | lost | damaged files | not in a stated role |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let scenarios: BTreeSet<Scenario> = outcomes.iter().map(|o| o.scenario).collect();
    let mut all = true;
    for s in scenarios {
        let of: Vec<&Outcome> = outcomes.iter().filter(|o| o.scenario == s).collect();
        let passed = of.iter().filter(|o| o.passed(bound)).count();
        all &= passed == of.len();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            s.name(),
            of.len(),
            passed,
            of.iter()
                .map(|o| o.overlap)
                .max()
                .unwrap_or_default()
                .as_millis(),
            of.iter().map(|o| o.acked).sum::<usize>(),
            of.iter().map(|o| o.lost.len()).sum::<usize>(),
            of.iter().map(|o| o.damaged.len()).sum::<usize>(),
            of.iter().filter(|o| !o.unstated.is_empty()).count(),
        );
    }
    let passed = outcomes.iter().filter(|o| o.passed(bound)).count();
    println!(
        "  {} passed, {} failed",
        passed,
        outcomes.len().saturating_sub(passed)
    );
    all
}

fn results_json(outcomes: &[Outcome], timing: Timing, seed: u64) -> serde_json::Value {
    let bound = timing.bound();
    json!({
        "seed": seed,
        "heartbeat_ms": timing.heartbeat_ms,
        "conflict_backoff_ms": timing.conflict_backoff_ms,
        "conflict_detection_ms": bound.as_millis() as u64,
        "witness": timing.witness,
        "trials": outcomes.iter().map(|o| json!({
            "trial": o.trial,
            "scenario": o.scenario.name(),
            "trial_seed": o.trial_seed,
            "passed": o.passed(bound),
            "drawn": o.drawn,
            "overlap_ms": o.overlap.as_millis() as u64,
            "split_brain_ms": o.split_brain.as_millis() as u64,
            "acked": o.acked,
            "lost": o.lost,
            "damaged": o.damaged,
            "roles": o.roles,
            "unstated": o.unstated,
            "notes": o.notes,
            "error": o.error,
            "seconds": o.took.as_secs_f64(),
        })).collect::<Vec<_>>(),
    })
}

fn run_trial(
    bins: &Binaries,
    trial: u32,
    scenario: Scenario,
    trial_seed: u64,
    timing: Timing,
    verbose: bool,
) -> Outcome {
    let started = Instant::now();
    let mut outcome = Outcome {
        trial,
        scenario,
        trial_seed,
        drawn: Vec::new(),
        overlap: Duration::ZERO,
        split_brain: Duration::ZERO,
        acked: 0,
        lost: Vec::new(),
        damaged: Vec::new(),
        roles: "?".into(),
        unstated: Vec::new(),
        notes: Vec::new(),
        error: None,
        took: Duration::ZERO,
    };
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
type Holds = Arc<Mutex<Vec<(Duration, bool)>>>;

/// The fault windows in which a node's holding of the shared address is not
/// seen by anyone (its cable is cut), or in which the nodes are partitioned.
#[derive(Clone, Copy)]
enum Window {
    Cut(Duration, Duration),
    Partition(Duration, Duration),
}

/// A running trial: lab, site, agents, application, client and address watch.
/// Dropping it stops everything it started and removes the lab and the mount.
struct Trial {
    bins: Binaries,
    timing: Timing,
    verbose: bool,
    auto: bool,
    started: Instant,
    agents: [Option<Child>; 2],
    agent_runs: u32,
    stop: Arc<AtomicBool>,
    stop_client: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<tandem_lab::Result<anyhow::Result<()>>>>,
    samples: Arc<Mutex<Vec<site::Sample>>>,
    /// Per node: when it started and stopped holding the shared address.
    holds: [Holds; 2],
    windows: Vec<Window>,
    mount: Option<Tmpfs>,
    /// The etcd witness members, with `--witness`.
    witness: Option<tandem_lab::WitnessCluster>,
    /// Each node's PostgreSQL server, with `--backend postgres` (stopped before
    /// the lab goes).
    pg: Vec<tandem_lab::postgres::PgServer>,
    /// Their clusters (a directory that PostgreSQL's user can reach).
    pg_dir: Option<tempfile::TempDir>,
    // Dropped last: the lab (namespaces) and the directory.
    lab: Lab,
    dir: tempfile::TempDir,
}

fn idx(host: Host) -> usize {
    match host {
        Host::Node1 => 0,
        _ => 1,
    }
}

impl Trial {
    fn set_up(
        bins: &Binaries,
        scenario: Scenario,
        timing: Timing,
        verbose: bool,
    ) -> anyhow::Result<Trial> {
        let lab = Lab::up(LabConfig::default()).context("building the namespace lab")?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("tandem-chaos-{}-", std::process::id()))
            .tempdir()?;
        let mut trial = Trial {
            bins: Binaries {
                failover: bins.failover.clone(),
                mp_replication: bins.mp_replication.clone(),
            },
            timing,
            verbose,
            auto: scenario.auto_failover(),
            started: Instant::now(),
            agents: [None, None],
            agent_runs: 0,
            stop: Arc::new(AtomicBool::new(false)),
            stop_client: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            samples: Arc::default(),
            holds: [Arc::default(), Arc::default()],
            windows: Vec::new(),
            mount: None,
            witness: None,
            pg: Vec::new(),
            pg_dir: None,
            lab,
            dir,
        };
        if timing.witness {
            trial.witness = Some(
                trial
                    .lab
                    .start_witness(3)
                    .context("starting the etcd witness members")?,
            );
        }
        std::fs::create_dir_all(trial.dir.path().join("logs"))?;
        if timing.postgres {
            let pg_dir = tempfile::Builder::new()
                .prefix(&format!("tandem-chaos-pg-{}-", std::process::id()))
                .tempdir_in("/tmp")?;
            for host in [Host::Node1, Host::Node2] {
                let server = crate::pgsite::server(&trial.lab, host, pg_dir.path())?;
                trial.pg.push(server);
            }
            trial.pg_dir = Some(pg_dir);
        }
        if scenario == Scenario::StandbyDiskFull {
            let path = trial.state_dir(Host::Node2);
            std::fs::create_dir_all(&path)?;
            trial.mount = Some(Tmpfs::mount(&path, "48m")?);
        }
        trial.site()?;
        Ok(trial)
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn key_file(&self) -> String {
        crate::site::Layout { dir: self.root() }.key_file()
    }

    fn config_path(&self, host: Host) -> PathBuf {
        crate::site::Layout { dir: self.root() }.config_path(host)
    }

    fn state_dir(&self, host: Host) -> PathBuf {
        crate::site::Layout { dir: self.root() }.state_dir(host)
    }

    fn files(&self, host: Host) -> PathBuf {
        crate::site::Layout { dir: self.root() }.files(host)
    }

    /// `host`'s replication settings, from its config.
    fn settings(&self, host: Host) -> anyhow::Result<Settings> {
        Ok(Settings::load(
            &self.config_path(host),
            true,
            self.state_dir(host),
        )?)
    }

    fn at(&self) -> Duration {
        self.started.elapsed()
    }

    fn step(&self, what: &str) {
        if self.verbose {
            println!("    {:>7.3} s  {what}", self.at().as_secs_f64());
        }
    }

    fn failover_command(&self, host: Host) -> Command {
        crate::site::Layout { dir: self.root() }.tool(&self.lab, &self.bins.failover, host)
    }

    fn mp_command(&self, host: Host) -> Command {
        crate::site::Layout { dir: self.root() }.tool(&self.lab, &self.bins.mp_replication, host)
    }

    /// Runs `failover args...` on `host`; fails when it fails.
    fn failover(&self, host: Host, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = self.failover_command(host);
        cmd.args(args);
        let out = output_within(cmd, Duration::from_secs(30))?;
        self.finish(host, &format!("failover {}", args.join(" ")), out)
    }

    /// Runs `mp_replication args...` on `host`; fails when it fails.
    fn mp(&self, host: Host, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = self.mp_command(host);
        cmd.args(args);
        let out = output_within(cmd, Duration::from_secs(60))?;
        self.finish(host, &format!("mp_replication {}", args.join(" ")), out)
    }

    fn finish(&self, host: Host, what: &str, out: Output) -> anyhow::Result<String> {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        self.step(&format!(
            "{host}: {what}: {}",
            stdout.lines().last().unwrap_or_default()
        ));
        if !out.status.success() {
            bail!(
                "`{what}` on {host} failed ({}):\n{stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(stdout)
    }

    /// The site of the seed's first procedure, node1 active, the application and
    /// the client running, and the address watch.
    fn site(&mut self) -> anyhow::Result<()> {
        self.failover(Host::Node1, &["keygen", "--key-file", &self.key_file()])?;
        for host in [Host::Node1, Host::Node2] {
            let (id, own, peer) = site::node_facts(host);
            self.failover(
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
                    &format!("meetings{id}.lab.test"),
                    "--shared-address",
                    &format!("{}/24", tandem_lab::SHARED_ADDR),
                    "--peer-address",
                    &peer.to_string(),
                ],
            )?;
            self.extend_config(host)?;
        }
        for host in [Host::Node2, Host::Node1] {
            let (id, _, peer) = site::node_facts(host);
            self.mp(
                host,
                &["init", "-n", &id.to_string(), "-r", &peer.to_string()],
            )?;
        }
        if self.timing.postgres {
            // PostgreSQL replicates the whole cluster: node1's becomes the primary
            // (with the application's table), node2's a fresh copy of it.
            self.mp(Host::Node1, &["switch-on"])?;
            let settings = self.settings(Host::Node1)?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(async {
                    crate::pgsite::create_schema(&settings).await?;
                    crate::pgsite::fill(&settings, self.timing.pg_fill_mb).await
                })?;
            self.mp(Host::Node2, &["switch-on", "-S", "-F", "from-sync"])?;
        }
        self.start_watch()?;
        for host in [Host::Node1, Host::Node2] {
            self.start_agent(host)?;
        }
        self.wait_peer_link()?;
        if !self.timing.postgres {
            self.mp(Host::Node1, &["switch-on"])?;
        }
        self.failover(Host::Node1, &["set-server", "active"])?;
        self.wait_role(Host::Node1, "active", Duration::from_secs(20))?;
        self.wait_role(Host::Node2, "standby", Duration::from_secs(20))?;
        self.wait_replication(Duration::from_secs(30))?;
        self.start_application()?;
        self.wait_acked_by("node1", Duration::from_secs(20))?;
        Ok(())
    }

    /// The node config beyond `set-deployment`: site key, fast probes and
    /// heartbeats, the failover policy, replication of the sample schema and a
    /// bundle of config files.
    fn extend_config(&self, host: Host) -> anyhow::Result<()> {
        let files = self.files(host);
        let text = format!(
            r#"
[probe]
timeout_ms = 100
attempts = 2
interval_ms = 50

[failover]
auto_failover = {auto}
heartbeat_ms = {heartbeat}
missed_heartbeats = 3
conflict_backoff_ms = {backoff}
announce_count = 3
announce_interval_ms = 20

[peer]
key_file = "{key}"

[[bundle.roots]]
name = "prompts"
path = "{files}/prompts"
"#,
            auto = self.auto,
            heartbeat = self.timing.heartbeat_ms,
            backoff = self.timing.conflict_backoff_ms,
            key = self.key_file(),
            files = files.display()
        );
        let mut text = text;
        match self.pg.get(idx(host)) {
            Some(server) => text.push_str(&crate::pgsite::config(server, self.timing.heartbeat_ms)),
            None => text.push_str(&format!(
                "\n[replication]\nsample_schema = true\nheartbeat_ms = {}\n",
                self.timing.heartbeat_ms
            )),
        }
        if let Some(witness) = &self.witness {
            // What an operator appends to use the site's etcd cluster.
            let endpoints: Vec<String> = witness
                .endpoints()
                .iter()
                .map(|e| format!("\"{e}\""))
                .collect();
            text.push_str(&format!(
                "\n[witness]\nendpoints = [{}]\n",
                endpoints.join(", ")
            ));
        }
        let path = self.config_path(host);
        let mut config: toml::Table = toml::from_str(&std::fs::read_to_string(&path)?)?;
        let extra: toml::Table = toml::from_str(&text)?;
        config.extend(extra);
        std::fs::write(&path, toml::to_string(&config)?)?;
        std::fs::create_dir_all(files.join("prompts"))?;
        Ok(())
    }

    fn start_agent(&mut self, host: Host) -> anyhow::Result<()> {
        let child = self.spawn_agent(host)?;
        self.agents[idx(host)] = Some(child);
        self.wait_page(host, Duration::from_secs(20))?;
        Ok(())
    }

    fn spawn_agent(&mut self, host: Host) -> anyhow::Result<Child> {
        self.agent_runs += 1;
        let log = std::fs::File::create(self.root().join("logs").join(format!(
            "{}-agent-{}.log",
            host.name(),
            self.agent_runs
        )))?;
        self.step(&format!("{host}: failover agent"));
        self.failover_command(host)
            .args(["agent", "--key-file", &self.key_file()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting the agent")
    }

    /// `kill -9` of `host`'s agent: it cannot release anything.
    fn kill_agent(&mut self, host: Host) {
        if let Some(mut child) = self.agents[idx(host)].take() {
            let _ = child.kill();
            let _ = child.wait();
            self.step(&format!("{host}: kill -9 of the agent"));
        }
    }

    /// The example application on both nodes, the client.
    fn start_application(&mut self) -> anyhow::Result<()> {
        for host in [Host::Node1, Host::Node2] {
            let stop = self.stop.clone();
            let settings = Settings::load(&self.config_path(host), true, self.state_dir(host))?;
            // No `[[service]]` entry here: the application is never paused.
            let paused = site::Layout { dir: self.root() }.app_paused(host);
            self.threads.push(self.lab.spawn_in(host, move || {
                site::serve_app(host, &settings, &stop, &paused)
            })?);
        }
        let (stop, samples, started) =
            (self.stop_client.clone(), self.samples.clone(), self.started);
        self.threads.push(
            self.lab
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
                self.started,
            );
            self.threads.push(self.lab.spawn_in(host, move || {
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

    fn wait_page(&self, host: Host, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.status(host).is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{host}'s agent did not serve its status page within {within:?}")
    }

    /// `host`'s `/status.json`, read from the client.
    fn status(&self, host: Host) -> Option<serde_json::Value> {
        self.lab
            .run_in(Host::Client, move || site::status_json(host))
            .ok()
            .flatten()
    }

    fn role(&self, host: Host) -> Option<String> {
        self.status(host)
            .and_then(|s| s["state"]["role"].as_str().map(str::to_owned))
    }

    fn wait_role(&self, host: Host, role: &str, within: Duration) -> anyhow::Result<()> {
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

    fn wait_peer_link(&self) -> anyhow::Result<()> {
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
        bail!("the agents' peer link did not come up within 20 s")
    }

    fn replication_status(&self, host: Host) -> Option<tandem_replication::Status> {
        let mut cmd = self.mp_command(host);
        cmd.args(["status", "--json"]);
        output_within(cmd, Duration::from_secs(10))
            .ok()
            .and_then(|o| serde_json::from_slice::<tandem_replication::Status>(&o.stdout).ok())
    }

    /// Whether both nodes' replication says the peer is connected.
    fn replication_connected(&self) -> bool {
        [Host::Node1, Host::Node2].iter().all(|&h| {
            self.replication_status(h)
                .is_some_and(|s| s.remote.status == LinkStatus::Connected)
        })
    }

    /// Connected, and neither node says it holds changes the other never
    /// received (a diverged standby applies nothing until `from-sync`).
    fn replication_healthy(&self) -> bool {
        [Host::Node1, Host::Node2].iter().all(|&h| {
            self.replication_status(h).is_some_and(|s| {
                s.remote.status == LinkStatus::Connected
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

    fn wait_replication(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.replication_connected() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("replication did not connect within {within:?}")
    }

    fn wait_healthy(&self, within: Duration) -> bool {
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
    fn wait_acked_by(&self, node: &str, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if site::latest_answer(&self.samples).as_deref() == Some(node) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("the client's writes were not acknowledged by {node} within {within:?}")
    }

    fn active_node(&self) -> Option<Host> {
        [Host::Node1, Host::Node2]
            .into_iter()
            .find(|&h| self.role(h).as_deref() == Some("active"))
    }

    // ---- scenarios ----

    fn play(
        &mut self,
        scenario: Scenario,
        rng: &mut Rng,
        outcome: &mut Outcome,
    ) -> anyhow::Result<()> {
        // Let the client write for a moment before the fault.
        std::thread::sleep(rng.ms(200, 800));
        match scenario {
            Scenario::KillActive | Scenario::KillStandby => {
                let active = self.active_node().unwrap_or(Host::Node1);
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
                self.kill_agent(victim);
                std::thread::sleep(down);
                if victim == active && self.role(other(active)).as_deref() == Some("active") {
                    outcome.notes.push(format!(
                        "{} took over while {victim}'s agent was dead",
                        other(active)
                    ));
                }
                self.start_agent(victim)?;
            }
            Scenario::KillDuringSwitch => {
                let from = self.active_node().unwrap_or(Host::Node1);
                let to = other(from);
                let victim = if rng.coin() { from } else { to };
                let after = rng.ms(0, 500);
                outcome.drawn.push(format!(
                    "switch {from} -> {to}, kill -9 {victim}'s agent {} ms in",
                    after.as_millis()
                ));
                let switch = {
                    let mut down = self.failover_command(from);
                    down.args(["set-server", "standby"]);
                    let mut up = self.failover_command(to);
                    up.args(["set-server", "active"]);
                    std::thread::spawn(move || {
                        let a = output_within(down, Duration::from_secs(30));
                        let b = output_within(up, Duration::from_secs(30));
                        (a, b)
                    })
                };
                std::thread::sleep(after);
                self.kill_agent(victim);
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
                self.start_agent(victim)?;
                self.operator_ensures_active(to, outcome)?;
            }
            Scenario::CutActive => {
                let active = self.active_node().unwrap_or(Host::Node1);
                // Short cuts end before the peer link declares the loss, or
                // while the old active is still checking itself.
                let down = rng.ms(300, 4000);
                outcome
                    .drawn
                    .push(format!("cut {active}'s cable for {} ms", down.as_millis()));
                let from = self.at();
                self.lab.cut(active)?;
                std::thread::sleep(down);
                self.lab.restore(active)?;
                self.windows.push(Window::Cut(from, self.at()));
                self.step(&format!("{active}'s cable back"));
            }
            Scenario::CutTakeover => {
                let active = self.active_node().unwrap_or(Host::Node1);
                let standby = other(active);
                let after = rng.ms(50, 400);
                let down = rng.ms(300, 3000).max(after + Duration::from_millis(100));
                outcome.drawn.push(format!(
                    "cut {active}'s cable for {} ms, set-server active on {standby} {} ms in",
                    down.as_millis(),
                    after.as_millis()
                ));
                let from = self.at();
                let cut_at = Instant::now();
                self.lab.cut(active)?;
                std::thread::sleep(after);
                let takeover = {
                    let mut up = self.failover_command(standby);
                    up.args(["set-server", "active"]);
                    std::thread::spawn(move || output_within(up, Duration::from_secs(30)))
                };
                std::thread::sleep(down.saturating_sub(cut_at.elapsed()));
                self.lab.restore(active)?;
                self.windows.push(Window::Cut(from, self.at()));
                self.step(&format!("{active}'s cable back"));
                let out = takeover
                    .join()
                    .map_err(|_| anyhow::anyhow!("the set-server thread panicked"))?;
                if !out.as_ref().is_ok_and(|o| o.status.success()) {
                    outcome
                        .notes
                        .push(format!("set-server active on {standby} was refused"));
                }
            }
            Scenario::Partition | Scenario::PartitionAuto => {
                let down = rng.ms(1500, 4000);
                outcome.drawn.push(format!(
                    "partition the nodes for {} ms (both reach the client)",
                    down.as_millis()
                ));
                let from = self.at();
                self.lab.partition_nodes(true)?;
                std::thread::sleep(down);
                self.lab.partition_nodes(false)?;
                self.windows.push(Window::Partition(from, self.at()));
                self.step("partition healed");
            }
            Scenario::BothBoot => {
                let pause = rng.ms(0, 500);
                let skew = rng.ms(0, 30);
                let first = if rng.coin() { Host::Node1 } else { Host::Node2 };
                outcome.drawn.push(format!(
                    "kill -9 both agents, both boot {} ms later ({first} first by {} ms)",
                    pause.as_millis(),
                    skew.as_millis()
                ));
                self.kill_agent(Host::Node1);
                self.kill_agent(Host::Node2);
                // A reboot comes up without the shared address.
                for host in [Host::Node1, Host::Node2] {
                    let _ = self.lab.exec(
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
                let a = self.spawn_agent(first)?;
                std::thread::sleep(skew);
                let b = self.spawn_agent(other(first))?;
                self.agents[idx(first)] = Some(a);
                self.agents[idx(other(first))] = Some(b);
                self.wait_page(Host::Node1, Duration::from_secs(20))?;
                self.wait_page(Host::Node2, Duration::from_secs(20))?;
            }
            Scenario::RestartFromSync => {
                let active = self.active_node().unwrap_or(Host::Node1);
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
                let mut cmd = self.mp_command(standby);
                cmd.args(["switch-on", "-S", "-F", "from-sync"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                let mut tool = cmd.spawn().context("starting mp_replication")?;
                std::thread::sleep(after);
                if kill_tool {
                    let _ = tool.kill();
                    let _ = tool.wait();
                } else {
                    self.kill_agent(standby);
                    let _ = wait_child(&mut tool, Duration::from_secs(30));
                    self.start_agent(standby)?;
                }
                self.wait_role(standby, "standby", Duration::from_secs(20))?;
                self.resync(standby, outcome)?;
            }
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

    /// The witness scenarios: the client must notice nothing, and no moment may
    /// have two holders.
    fn witness_fault(
        &mut self,
        scenario: Scenario,
        rng: &mut Rng,
        outcome: &mut Outcome,
    ) -> anyhow::Result<()> {
        let active = self.active_node().unwrap_or(Host::Node1);
        // Sometimes shorter, sometimes longer than the lease's TTL (3 s).
        let down = rng.ms(1000, 6000);
        let started = self.started;
        let Some(witness) = self.witness.as_mut() else {
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
                self.lab.cut_from_witness(host, true)?;
                std::thread::sleep(down);
                self.lab.cut_from_witness(host, false)?;
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
                self.lab.partition_nodes(true)?;
                std::thread::sleep(restart_in);
                witness.stop_all();
                witness.start_all()?;
                std::thread::sleep(down.saturating_sub(cut_at.elapsed()));
                self.lab.partition_nodes(false)?;
                self.windows
                    .push(Window::Partition(from, started.elapsed()));
            }
            _ => bail!("{} is not a witness scenario", scenario.name()),
        }
        self.step("witness fault over");
        Ok(())
    }

    /// `switch-on -S -F from-sync` on `host`, retried as an operator would while
    /// the agent's replication service is not up yet.
    fn resync(&self, host: Host, outcome: &mut Outcome) -> anyhow::Result<()> {
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
    fn operator_ensures_active(&self, to: Host, outcome: &mut Outcome) -> anyhow::Result<()> {
        std::thread::sleep(Duration::from_millis(500));
        if self.active_node().is_some() {
            return Ok(());
        }
        outcome.notes.push(format!(
            "no node active: the operator runs set-server active on {to}"
        ));
        if self.failover(to, &["set-server", "active"]).is_err()
            || self
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

    /// Copies a tree of prompts to the standby and restores it once (timing
    /// the restore), then copies a changed tree and kills
    /// `restore-config-files` at a random moment within that time; the next run
    /// must finish or undo it.
    fn restart_restore(&mut self, rng: &mut Rng, outcome: &mut Outcome) -> anyhow::Result<()> {
        let active = self.active_node().unwrap_or(Host::Node1);
        let standby = other(active);
        for n in 0..20u32 {
            let old = vec![b'o'; 4096 + n as usize];
            std::fs::write(self.files(standby).join(format!("prompts/p{n}.wav")), old)?;
        }
        let incoming = self
            .state_dir(standby)
            .join("incoming")
            .join("config-files.tar.gz");
        let mut took = Duration::ZERO;
        for round in 0..2u32 {
            for n in 0..200u32 {
                let new: Vec<u8> = (0..32_768u32).map(|i| (i ^ n ^ round) as u8).collect();
                std::fs::write(self.files(active).join(format!("prompts/p{n}.wav")), new)?;
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
        let after = rng.ms(0, u64::try_from(took.as_millis()).unwrap_or(500).max(1));
        outcome.drawn.push(format!(
            "{standby}: restore-config-files killed {} ms in (a whole restore took {} ms)",
            after.as_millis(),
            took.as_millis()
        ));
        let mut cmd = self.failover_command(standby);
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
            let a = std::fs::read(self.files(active).join(&rel))?;
            let b = std::fs::read(self.files(standby).join(&rel)).unwrap_or_default();
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
        let active = self.active_node().unwrap_or(Host::Node1);
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
            let server = &self.pg[idx(victim)];
            let pid = server
                .postmaster_pid()
                .with_context(|| format!("{victim}'s postmaster.pid"))?;
            kill(pid);
            self.step(&format!("{victim}: kill -9 of the postmaster ({pid})"));
            std::thread::sleep(down);
            // The killed postmaster's children exit once they notice; until then
            // a new postmaster refuses to start.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match self.pg[idx(victim)].start() {
                    Ok(()) => break,
                    Err(e) if Instant::now() < deadline => {
                        self.step(&format!("{victim}: postgres not started yet: {e}"));
                        std::thread::sleep(Duration::from_millis(300));
                    }
                    Err(e) => return Err(e).context(format!("starting {victim}'s postgres")),
                }
            }
            self.step(&format!("{victim}: postgres started again"));
        } else {
            let settings = self.settings(victim)?;
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
            self.step(&format!("{victim}: kill -9 of {kind} {pid}"));
            std::thread::sleep(rng.ms(500, 3000));
        }
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
        let active = self.active_node().unwrap_or(Host::Node1);
        let standby = other(active);
        outcome.drawn.push(format!(
            "{standby} reinstalled with an empty cluster, `mp_replication init`, its agent started"
        ));
        self.kill_agent(standby);
        let _ = self.pg[idx(standby)].kill();
        let dir = self
            .pg_dir
            .as_ref()
            .context("no PostgreSQL directory")?
            .path()
            .join("reinstalled");
        std::fs::create_dir_all(&dir)?;
        self.pg[idx(standby)] = crate::pgsite::server(&self.lab, standby, &dir)?;
        let state = self.state_dir(standby);
        for gone in ["postgres.json", "postgres.contact"] {
            let _ = std::fs::remove_file(state.join(gone));
        }
        let _ = std::fs::remove_dir_all(state.join("postgres"));
        // The operator's edit: the new server's paths.
        let path = self.config_path(standby);
        let mut config: toml::Table = toml::from_str(&std::fs::read_to_string(&path)?)?;
        let server = &self.pg[idx(standby)];
        if let Some(toml::Value::Table(pg)) = config
            .get_mut("replication")
            .and_then(|r| r.as_table_mut())
            .and_then(|r| r.get_mut("postgres"))
        {
            pg.insert(
                "data_dir".into(),
                server.data_dir.display().to_string().into(),
            );
            pg.insert(
                "socket_dir".into(),
                server.socket_dir.display().to_string().into(),
            );
        }
        std::fs::write(&path, toml::to_string(&config)?)?;
        let (id, _, peer) = site::node_facts(standby);
        self.mp(
            standby,
            &["init", "-n", &id.to_string(), "-r", &peer.to_string()],
        )?;
        let copy_from = Instant::now();
        self.start_agent(standby)?;
        let (mut slowest_page, mut slowest_tool) = (Duration::ZERO, Duration::ZERO);
        let (mut pages, mut unanswered, mut link_down, mut progress_seen) = (0, 0, 0, 0);
        // The peer link counts once it came up after the agent's start.
        let mut link_was_up = false;
        let mut last_tool = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let asked = Instant::now();
            let page = self.status(standby);
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
                && crate::pgsite::wal_receiver_streams(&self.settings(standby)?);
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
        let active = self.active_node().unwrap_or(Host::Node1);
        let standby = other(active);
        let full_for = rng.ms(1500, 4000);
        outcome.drawn.push(format!(
            "fill {standby}'s state directory for {} ms",
            full_for.as_millis()
        ));
        let filler = self.state_dir(standby).join("filler");
        fill(&filler)?;
        let from = self.at();
        std::thread::sleep(full_for);
        let to = self.at();
        // Where an operator looks: either node's status page (the standby may be
        // unable to record anything, the active shows what its peer reports).
        let alarms = [standby, active]
            .map(|h| {
                self.status(h)
                    .map(|s| s["alarms"].to_string())
                    .unwrap_or_default()
            })
            .join(" ");
        let replication = {
            let mut cmd = self.mp_command(standby);
            cmd.args(["status"]);
            output_within(cmd, Duration::from_secs(10))
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

    // ---- checks ----

    /// Brings the site back as an operator would, then checks it.
    fn check(&mut self, outcome: &mut Outcome) -> anyhow::Result<()> {
        // Roles settle: exactly one active, and it stays so for a while (a node
        // that stepped down for a newer claim leaves the roles stated but
        // swapped for a moment, until the other claims again).
        let deadline = Instant::now() + Duration::from_secs(20);
        let steady_for = Duration::from_millis(3 * self.timing.conflict_backoff_ms).max(STEADY);
        let mut roles = (None, None);
        let mut since = (Instant::now(), (None, None));
        while Instant::now() < deadline {
            roles = (self.role(Host::Node1), self.role(Host::Node2));
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
            && self.active_node().is_none()
        {
            self.operator_ensures_active(Host::Node1, outcome)?;
        }
        // Replication resumes on its own, or the operator resynchronises the standby.
        if let Some(active) = self.active_node()
            && !self.wait_healthy(Duration::from_secs(8))
        {
            let standby = other(active);
            outcome.notes.push(format!(
                "replication did not resume (disconnected or diverged): switch-on -S -F from-sync on {standby}"
            ));
            for host in [active, standby] {
                if let Some(s) = self.replication_status(host) {
                    outcome.notes.push(format!(
                        "{host} said: remote {}, {}",
                        s.remote.status,
                        s.alarms.join("; ")
                    ));
                }
            }
            if self.role(standby).as_deref() == Some("standby") {
                self.resync(standby, outcome)?;
            }
            self.wait_replication(Duration::from_secs(20))?;
        }
        // The client stops; every acknowledged write must be on both nodes.
        if let Some(active) = self.active_node() {
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
        // Which node acknowledged each lost write, when, and which node lacks it
        // (the client's transaction numbers count its samples from FIRST_TX).
        let samples = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        for tx in &lost {
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
        outcome.lost = lost.into_iter().collect();
        // Stated roles, from the status pages and from the interfaces.
        let mut described = Vec::new();
        let mut actives = 0;
        for host in [Host::Node1, Host::Node2] {
            let status = self.status(host);
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
        // Damaged files.
        self.stop.store(true, Ordering::Relaxed);
        for host in [Host::Node1, Host::Node2] {
            let dir = self.state_dir(host);
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
        if let Err(e) = tandem_peer::SiteKey::load(Path::new(&self.key_file())) {
            outcome.damaged.push(format!("site key: {e}"));
        }
        // Two holders, from the address watch.
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let end = self.at();
        let (overlap, split) = self.overlaps(end);
        outcome.overlap = overlap;
        outcome.split_brain = split;
        Ok(())
    }

    fn holds_now(&self, host: Host) -> bool {
        self.lab.run_in(host, holds_shared).unwrap_or(false)
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
        crate::site::Layout { dir: self.root() }.missing(host, acked)
    }

    /// `PRAGMA integrity_check` of `host`'s database.
    fn integrity(&self, host: Host) -> anyhow::Result<String> {
        if let Some(server) = self.pg.get(idx(host)) {
            return crate::pgsite::integrity(server);
        }
        let settings = Settings::load(&self.config_path(host), true, self.state_dir(host))?;
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
    fn keep_logs(&self, trial: u32, scenario: Scenario, outcome: &mut Outcome) {
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
        if let Ok(entries) = std::fs::read_dir(self.root().join("logs")) {
            for entry in entries.flatten() {
                let _ = std::fs::copy(entry.path(), to.join(entry.file_name()));
            }
        }
        for host in [Host::Node1, Host::Node2] {
            let _ = std::fs::copy(
                self.config_path(host),
                to.join(format!("{}.toml", host.name())),
            );
            let _ = std::fs::copy(
                self.state_dir(host).join("postgres").join("server.log"),
                to.join(format!("{}-postgres.log", host.name())),
            );
            if let Some(server) = self.pg.get(idx(host)) {
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

impl Drop for Trial {
    fn drop(&mut self) {
        self.stop_client.store(true, Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for host in [Host::Node1, Host::Node2] {
            if let Some(mut child) = self.agents[idx(host)].take() {
                site::stop_processes([&mut child], Duration::from_secs(5));
            }
        }
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

/// The last non-empty line of a message (the tools end with the reason).
fn first_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
}

/// Whether this thread's namespace has the shared address on `eth0`.
fn holds_shared() -> bool {
    Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", "eth0"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).contains(&format!(" {}/", tandem_lab::SHARED_ADDR))
        })
        .unwrap_or(false)
}

/// Runs `cmd`, killing it when it takes longer than `within`.
fn output_within(mut cmd: Command, within: Duration) -> anyhow::Result<Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting a command")?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(within) {
        Ok(out) => Ok(out?),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            bail!("{cmd:?} did not finish within {within:?}")
        }
    }
}

fn wait_child(child: &mut Child, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// Writes `path` until its file system is full.
fn fill(path: &Path) -> anyhow::Result<()> {
    let mut file = std::fs::File::create(path)?;
    let chunk = vec![0u8; 1 << 20];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => return Err(e).context("filling the disk"),
        }
    }
    // Whatever small space is left goes too.
    let small = [0u8; 512];
    while file.write(&small).is_ok_and(|n| n > 0) {}
    Ok(())
}

/// A tmpfs mounted for one trial, unmounted on drop (also while a panic unwinds).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> anyhow::Result<Tmpfs> {
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .status()
            .context("running mount")?;
        if !status.success() {
            bail!("mount -t tmpfs on {} failed ({status})", path.display());
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Unmounts the tmpfs of chaos runs that were killed before they could.
/// Kills every process whose command line names `dir` (the PostgreSQL servers of
/// a trial, whoever started them: the lab, the agents or the tools).
fn kill_processes_naming(dir: &Path) {
    let needle = dir.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The PostgreSQL servers and directories of chaos runs that died before
/// cleaning up (`/tmp/tandem-chaos-pg-<pid>-...` of a process that is gone).
fn sweep_stale_postgres() {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("tandem-chaos-pg-") else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            kill_processes_naming(&entry.path());
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn sweep_stale_mounts() {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return;
    };
    for line in mounts.lines() {
        let Some(point) = line.split_whitespace().nth(1) else {
            continue;
        };
        let Some(rest) = point.split("/tandem-chaos-").nth(1) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            let _ = Command::new("umount").arg("-l").arg(point).status();
        }
    }
}
