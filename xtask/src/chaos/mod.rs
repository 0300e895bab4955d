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
//!
//! The module by concern: [`scenario`] (the faults and the seeded generator),
//! [`trial`] (one trial's site, application, client and address watch),
//! [`faults`] (playing a scenario), [`check`] (the operator's recovery and the
//! four checks) and [`outcome`] (a trial's result, the table and the JSON).

mod check;
mod faults;
mod outcome;
mod scenario;
mod trial;

use std::time::{Duration, Instant};

use anyhow::bail;

use self::outcome::{Outcome, print_outcome, results_json, summarize};
use self::scenario::{Rng, Scenario};
use crate::site::{self, Binaries};

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

/// Timing shared by every trial of a run.
#[derive(Clone, Copy)]
pub(super) struct Timing {
    pub(super) heartbeat_ms: u64,
    pub(super) conflict_backoff_ms: u64,
    /// The site runs with a witness.
    pub(super) witness: bool,
    /// The site replicates PostgreSQL.
    pub(super) postgres: bool,
    /// MB of rows written on the PostgreSQL primary before each trial.
    pub(super) pg_fill_mb: u64,
}

impl Timing {
    /// How long two holders are tolerated: none with a witness; without one,
    /// the conflict-detection interval (the agents' watch runs every heartbeat
    /// and a conflict is settled within the backoff).
    pub(super) fn bound(self) -> Duration {
        if self.witness {
            Duration::ZERO
        } else {
            Duration::from_millis(self.heartbeat_ms + self.conflict_backoff_ms)
        }
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
    let mix = mix(&args, timing)?;
    let trials = if args.trial_seed.is_some() {
        1
    } else {
        args.trials
    };
    site::process::sweep_stale_mounts();
    site::process::sweep_stale_postgres();
    let bins = site::build_binaries()?;
    print_header(&mix, timing, trials, seed);
    let started = Instant::now();
    let outcomes = play_trials(&bins, &mix, &args, timing, trials, seed);
    let summary = summarize(&outcomes, timing, seed, started.elapsed());
    write_results(&outcomes, timing, seed, args.json)?;
    if !summary {
        bail!("some trials failed (replay with --seed {seed}, or one with its --trial-seed)");
    }
    Ok(())
}

/// The scenarios of the run: those asked for, or the default mix of the site.
fn mix(args: &Args, timing: Timing) -> anyhow::Result<Vec<Scenario>> {
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
    Ok(mix)
}

/// What the run does, and how to replay it.
fn print_header(mix: &[Scenario], timing: Timing, trials: u32, seed: u64) {
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
}

/// Runs the trials: scenarios drawn from a shuffled deck (every scenario once per
/// round, in an order drawn from `seed`), each with a trial seed of its own.
fn play_trials(
    bins: &Binaries,
    mix: &[Scenario],
    args: &Args,
    timing: Timing,
    trials: u32,
    seed: u64,
) -> Vec<Outcome> {
    let mut order = Rng(seed);
    let mut deck: Vec<Scenario> = Vec::new();
    let mut outcomes = Vec::new();
    for trial in 1..=trials {
        if deck.is_empty() {
            // A shuffled deck: every scenario once per round, in a random order.
            deck = mix.to_vec();
            for i in (1..deck.len()).rev() {
                let j = order.range(0, i as u64) as usize;
                deck.swap(i, j);
            }
        }
        let scenario = deck.pop().unwrap_or(Scenario::KillActive);
        let trial_seed = args
            .trial_seed
            .unwrap_or_else(|| order.next() % 1_000_000_000);
        let outcome = trial::run_trial(bins, trial, scenario, trial_seed, timing, args.verbose);
        print_outcome(&outcome, trials, timing.bound());
        outcomes.push(outcome);
    }
    outcomes
}

/// The results as JSON in `target/chaos/` (`chaos-<seed>.json` and
/// `latest.json`), and on standard output with `--json`.
fn write_results(
    outcomes: &[Outcome],
    timing: Timing,
    seed: u64,
    print: bool,
) -> anyhow::Result<()> {
    let dir = crate::workspace_root().join("target").join("chaos");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("chaos-{seed}.json"));
    let json = results_json(outcomes, timing, seed);
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    std::fs::write(
        dir.join("latest.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    println!("  results: {}", path.display());
    if print {
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    Ok(())
}
