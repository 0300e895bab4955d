//! `cargo xtask bench replication`: committed transactions per second of the sample
//! workload (5 rows over the three sample tables per transaction) on node 1 of the
//! namespace lab, with node 2 replicating over the real peer link:
//!
//! - `unreplicated`: the same database without tandem (no triggers) — the baseline;
//! - `off`: replication initialized but switched off (guard triggers only);
//! - `async`: replication on, commits do not wait (lag = commit until node 2's
//!   acknowledgement, as node 1's service publishes it in its state directory, is seen
//!   by a thread that reads that file every millisecond, p50/p99);
//! - two diagnostic async modes that split its cost: `capture` (both services
//!   stopped: the triggers and the changelog alone) and `active_alone` (node 1's
//!   service running, node 2's stopped: capture plus the active service's polls,
//!   without shipping, acknowledgements or pruning);
//! - `wait_replicated`: every commit waits until node 2 has it (latency p50/p99), at
//!   the default level `flushed`, which on SQLite is node 2's applied acknowledgement
//!   (so also the `applied` level: one code path, measured once);
//! - `wait_received`: the same at the level `received` (node 2 took the batch in, not
//!   yet on its disk), the level that survives the loss of either node; absent for a
//!   build from before the levels (`--against`).
//!
//! - `floor`: the unreplicated writer, each commit then waiting for a 512-byte
//!   request relayed by node 1 over the lab link to an echo on node 2 and its
//!   answer ([`super::relay`]): the least any design with a service on each node
//!   adds to a waiting commit; and `capture_floor`, the same on the replicated
//!   database with both services stopped (capture, then the relayed round trip): the
//!   ceiling of `wait_received` at one writer for any service design on trigger
//!   capture. `capture` also runs with [`WRITERS`] writers, the ceiling of every
//!   replicated mode at that count.
//!
//! `unreplicated`, `wait_replicated` and `wait_received` also run with [`WRITERS`] concurrent writers
//! (group commit: the waiting commits share round trips to node 2). Each rate is also
//! given as a ratio to the unreplicated rate at the same number of writers. While the
//! async rounds run, the resident memory (VmRSS) and CPU time (utime + stime) of the
//! process hosting the replication service on each node are measured. Everything runs
//! the release build of `mp_replication`: `service` on both nodes (it hosts the
//! `Replicator`, as the `failover` agent does in production), and the writer (the
//! hidden `write-sample` command, one process per phase, `--writers N` tasks taking
//! turns on the backend's shared write connection, a line printed per commit) on
//! node 1; this process reads those lines and node 1's published acknowledgement
//! (never its database). Dirty pages are flushed (`sync`) before each phase. Every
//! writer, the baseline's too, runs on one CPU ([`WRITER_CPU`]; the services run
//! where the kernel puts them): `--writer-on-all-cpus` measures the old way.
//!
//! `--against <mp_replication>` (repeatable) measures other builds (say, `main`'s),
//! each on a pair of databases of its own, their rounds interleaved with this tree's:
//! an A/B in one run.
//! Only one build's services run at a time; they are started and stopped around each
//! round. Needs root (the lab). Results print as a table and go to
//! `target/bench/replication.json`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tandem_lab::{Host, Lab, LabConfig};
use tandem_replication::{Position, ReplicationConfig, Settings, SqliteBackend, published_ack};
use tandem_sample as sample;

/// Rounds of each mode.
const ROUNDS: usize = 5;
/// Transactions per round of the unreplicated, off and async modes.
const TRANSACTIONS: u64 = 2000;
/// Transactions per round of the wait_replicated mode (each waits for a round trip).
const WAITED: u64 = 600;
/// Untimed transactions before the first timed phase on a database, numbered from
/// [`WARM_UP_FIRST`].
const WARM_UP: u64 = 1000;
/// The first transaction number of the warm-ups.
const WARM_UP_FIRST: u64 = 1_000_000;
/// Rows per transaction.
const ROWS: u32 = 5;
/// Concurrent writers of the multi-writer modes.
const WRITERS: u64 = 8;
/// Transactions per round of the multi-writer wait_replicated mode.
const WAITED_MANY: u64 = 800;
/// What hosts the replication service in this bench (named in the results).
const SERVICE_PROCESS: &str = "mp_replication service";
/// How long a service that was just started is left alone before a timed phase.
const SETTLE: Duration = Duration::from_millis(500);
/// How long node 1 may take to have everything written acknowledged.
const CATCH_UP: Duration = Duration::from_secs(120);

/// Options of the SQLite replication area.
pub(crate) struct Options {
    /// Other `mp_replication` binaries (say, built from `main`) measured round by
    /// round beside this tree's, each on databases of its own.
    pub(crate) against: Vec<PathBuf>,
    /// A release build of this tree's `mp_replication` to use instead of building
    /// one (say, when another build holds the target directory).
    pub(crate) built: Option<PathBuf>,
    /// Let the writer run on every CPU instead of one ([`WRITER_CPU`]).
    pub(crate) writer_on_all_cpus: bool,
}

/// The CPU that every writer, the baseline's too, runs on unless
/// [`Options::writer_on_all_cpus`]. The writer's task hands each statement to
/// sqlx's connection thread and back; on two idle cores the kernel puts the two
/// threads on different ones, and each hand-off then wakes the other core: in the
/// lab a writer with both services stopped made 1,285-1,368 commits/s on any CPU
/// and 2,323-2,395 on one. How busy the replication services keep the other core
/// decided where the writer's threads ran, so a service that used less CPU could
/// make the writer slower: the ratios measured the scheduler as much as
/// replication.
pub(crate) const WRITER_CPU: usize = 0;

/// The acknowledgement level a waiting writer asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    /// The default (`[replication] synchronous_commit = "flushed"`): on SQLite the
    /// standby's applied acknowledgement, so also the `applied` level.
    Flushed,
    /// `received`: the standby took the batch in (one round trip).
    Received,
    /// The floor ([`super::relay`]): no tandem, each commit waits for a 512-byte
    /// request relayed by node 1 to an echo on node 2 and its answer, at this address.
    Echo(std::net::SocketAddr),
}

/// Whether `bin`'s writer takes `--level` (builds from before the levels do not).
fn has_levels(bin: &Path) -> bool {
    Command::new(bin)
        .args(["write-sample", "--help"])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("--level"))
}

/// One build of `mp_replication` under test, with its own pair of databases.
struct Variant {
    /// Its name in the results (empty: this tree's, when it is the only one).
    name: String,
    bin: PathBuf,
    /// Whether its writer can wait at a chosen level ([`has_levels`]).
    levels: bool,
    /// Prefix of its nodes' state directories.
    prefix: String,
}

impl Variant {
    fn state(&self, host: Host) -> String {
        format!("{}{}", self.prefix, host.name())
    }
}

pub(crate) fn run(options: &Options) -> anyhow::Result<Vec<super::Row>> {
    let bin = match &options.built {
        Some(bin) => bin.clone(),
        None => build_release()?,
    };
    let mut variants: Vec<Variant> = options
        .against
        .iter()
        .enumerate()
        .map(|(i, bin)| Variant {
            // The file's name: copies of builds are best named after their commits.
            name: bin.file_name().map_or_else(
                || bin.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            ),
            bin: bin.clone(),
            levels: has_levels(bin),
            prefix: format!("against{i}-"),
        })
        .collect();
    variants.push(Variant {
        name: if variants.is_empty() {
            String::new()
        } else {
            "this tree".to_owned()
        },
        levels: has_levels(&bin),
        bin,
        prefix: String::new(),
    });
    let lab = Lab::up(LabConfig::default()).context("building the namespace lab (needs root)")?;
    let dir = tempfile::tempdir()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    write_configs(dir.path())?;
    let bench = Bench {
        lab: &lab,
        dir: dir.path(),
        // The baseline's writer: this tree's (it does not replicate).
        plain_bin: variants.last().map(|v| v.bin.clone()).unwrap_or_default(),
        pin_writer: !options.writer_on_all_cpus,
    };

    // The baseline: a database with the sample schema and no tandem at all.
    runtime.block_on(async {
        let plain = SqliteBackend::open(&settings(dir.path(), "unreplicated")).await?;
        let mut conn = plain.pool().acquire().await?;
        sample::create_schema(&mut conn).await?;
        drop(conn);
        plain.close().await;
        anyhow::Ok(())
    })?;
    // Warm-ups (untimed) bring each database file and its WAL to a steady size.
    bench.write(
        &bench.plain_bin,
        "unreplicated",
        &mut { WARM_UP_FIRST },
        WARM_UP,
        None,
        1,
    )?;
    // An idle connection held on every measured database for the whole run, so that
    // no writer is ever the last one to close it: the last connection deletes the
    // `-wal` file, and a writer that starts on a new one extends the file at every
    // commit (a metadata journal commit per fsync), which made the phases without a
    // running service (the baseline, capture only) several times slower than the
    // others on a busy disk.
    let mut held = vec![runtime.block_on(hold_open(dir.path(), "unreplicated"))?];
    let mut services = Services::default();
    for v in &variants {
        bench.mp(v, Host::Node2, &["init", "-n", "2", "-r", "192.0.2.11"])?;
        bench.mp(v, Host::Node1, &["init", "-n", "1", "-r", "192.0.2.12"])?;
        services.start(&bench, v, Host::Node1)?;
        services.start(&bench, v, Host::Node2)?;
        // `switch-on` waits for the services to start.
        bench.mp(v, Host::Node1, &["switch-on"])?;
        bench.mp(v, Host::Node1, &["promote"])?;
        let (_, commits) = bench.write(
            &v.bin,
            &v.state(Host::Node1),
            &mut { WARM_UP_FIRST },
            WARM_UP,
            None,
            1,
        )?;
        bench.caught_up(v, last_position(&commits))?;
        held.push(runtime.block_on(hold_open(dir.path(), &v.state(Host::Node1)))?);
        services.stop_all();
    }

    // Rounds alternate the modes (and the variants), so that drift in the machine's
    // load and disk hits them alike; each mode's rate is the median of its rounds.
    let (mut plain_next, mut next) = (1, 1);
    let (mut unreplicated, mut unreplicated_many) = (Vec::new(), Vec::new());
    let mut floors = Vec::new();
    let relay = super::relay::Floor::start(&lab)?;
    let mut rounds: Vec<Vec<Round>> = variants.iter().map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        unreplicated.push(bench.unreplicated(&mut plain_next, 1)?);
        unreplicated_many.push(bench.unreplicated(&mut plain_next, WRITERS)?);
        floors.push(bench.floor(&mut plain_next, &relay)?);
        for (v, out) in variants.iter().zip(rounds.iter_mut()) {
            out.push(replicated_round(
                &bench,
                v,
                &mut services,
                &mut next,
                &relay,
            )?);
        }
    }
    drop(relay);
    let mut offs: Vec<Vec<Phase>> = variants.iter().map(|_| Vec::new()).collect();
    for v in &variants {
        services.start(&bench, v, Host::Node1)?;
        services.start(&bench, v, Host::Node2)?;
        bench.mp(v, Host::Node1, &["switch-off"])?;
        services.stop_all();
    }
    for _ in 0..ROUNDS {
        unreplicated.push(bench.unreplicated(&mut plain_next, 1)?);
        for (v, out) in variants.iter().zip(offs.iter_mut()) {
            // Off as in production: the services run, replication is switched off.
            services.start(&bench, v, Host::Node1)?;
            services.start(&bench, v, Host::Node2)?;
            let state = v.state(Host::Node1);
            out.push(
                bench
                    .write(&v.bin, &state, &mut next, TRANSACTIONS, None, 1)?
                    .0,
            );
            services.stop_all();
        }
    }
    runtime.block_on(async move { drop(held) });
    let results = Results {
        unreplicated: Phase::combine(unreplicated),
        unreplicated_many: Phase::combine(unreplicated_many),
        floor: Phase::combine(floors),
        variants: variants
            .into_iter()
            .zip(rounds)
            .zip(offs)
            .map(|((v, rounds), off)| Measured::combine(v.name, rounds, off))
            .collect(),
    };
    results.print();
    results.write_json()?;
    Ok(results.summary())
}

/// What the phases share.
struct Bench<'a> {
    lab: &'a Lab,
    dir: &'a Path,
    /// The writer of the unreplicated baseline.
    plain_bin: PathBuf,
    /// Run every writer on [`WRITER_CPU`] alone.
    pin_writer: bool,
}

/// Starts `cmd` bound to CPU `cpu`: from a thread of this process bound to it,
/// since a child inherits the CPU set of the thread that starts it.
fn spawn_on_cpu(mut cmd: Command, cpu: usize) -> anyhow::Result<Child> {
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let mut set = nix::sched::CpuSet::new();
                set.set(cpu).context("naming the writer's CPU")?;
                nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
                    .with_context(|| format!("binding the writer to CPU {cpu}"))?;
                cmd.spawn().context("starting the writer")
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the thread starting the writer panicked"))?
    })
}

impl Bench<'_> {
    /// `bin` on `host` with the node's config and state dir `state`.
    fn command(&self, bin: &Path, host: Host, state: &str) -> Command {
        let mut cmd = self.lab.command(host, &bin.display().to_string());
        cmd.arg("--config")
            .arg(self.dir.join(format!("{host}.toml")))
            .arg("--state-dir")
            .arg(self.dir.join(state));
        cmd
    }

    fn mp(&self, v: &Variant, host: Host, args: &[&str]) -> anyhow::Result<()> {
        let out = self
            .command(&v.bin, host, &v.state(host))
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "mp_replication {} on {host}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Waits until node 1 of `v` published an acknowledgement of `position`.
    fn caught_up(&self, v: &Variant, position: Position) -> anyhow::Result<()> {
        let dir = self.dir.join(v.state(Host::Node1));
        wait_until("node 2 to catch up", CATCH_UP, || {
            Ok(published_ack(&dir).is_some_and(|p| p >= position))
        })
    }

    /// One round of `TRANSACTIONS` commits on node 1's unreplicated database
    /// (the baseline) by `writers` writers.
    fn unreplicated(&self, next: &mut u64, writers: u64) -> anyhow::Result<Phase> {
        Ok(self
            .write(
                &self.plain_bin,
                "unreplicated",
                next,
                TRANSACTIONS,
                None,
                writers,
            )?
            .0)
    }

    /// One round of [`WAITED`] commits on the unreplicated database by one writer, each
    /// waiting for a round trip through `floor` (the floor of `received`).
    fn floor(&self, next: &mut u64, floor: &super::relay::Floor) -> anyhow::Result<Phase> {
        let echo = Some(Level::Echo(floor.writer_addr));
        Ok(self
            .write(&self.plain_bin, "unreplicated", next, WAITED, echo, 1)?
            .0)
    }

    /// Runs `bin`'s writer on node 1's database in state dir `state`: `count`
    /// transactions from number `next` on (which then points past them), by `writers`
    /// concurrent writers, each commit waiting for the standby at level `wait` if
    /// given. Returns the phase (with the waited latencies for `wait`) and the commit
    /// times as this process saw the writer's lines.
    fn write(
        &self,
        bin: &Path,
        state: &str,
        next: &mut u64,
        count: u64,
        wait: Option<Level>,
        writers: u64,
    ) -> anyhow::Result<(Phase, Vec<(Instant, Position)>)> {
        // Transaction numbers `next..next + count`; `next` moves past them.
        let first = *next;
        *next += count;
        let _ = Command::new("sync").status();
        let (f, c, r) = (first.to_string(), count.to_string(), ROWS.to_string());
        let w = writers.to_string();
        let mut cmd = self.command(bin, Host::Node1, state);
        cmd.args([
            "write-sample",
            "--first",
            &f,
            "--count",
            &c,
            "--rows",
            &r,
            "--writers",
            &w,
        ]);
        match wait {
            None => {}
            // The configured level: the default, understood by every build.
            Some(Level::Flushed) => {
                cmd.arg("--wait-replicated");
            }
            Some(Level::Received) => {
                cmd.args(["--wait-replicated", "--level", "received"]);
            }
            Some(Level::Echo(addr)) => {
                cmd.args(["--echo-via", &addr.to_string()]);
            }
        }
        cmd.stdout(Stdio::piped());
        let started = Instant::now();
        let mut child = if self.pin_writer {
            spawn_on_cpu(cmd, WRITER_CPU)?
        } else {
            cmd.spawn().context("starting the writer")?
        };
        let stdout = child.stdout.take().context("the writer's output")?;
        let mut commits = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
        let mut delays = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            let at = Instant::now();
            let fields: Vec<&str> = line.split_whitespace().collect();
            let position = fields.get(2).and_then(|p| p.parse().ok()).map(Position);
            if let Some(p) = position {
                commits.push((at, p));
            }
            if let Some(us) = fields.get(3).and_then(|u| u.parse::<u64>().ok()) {
                delays.push(Duration::from_micros(us));
            }
        }
        let status = child.wait()?;
        let elapsed = started.elapsed();
        if !status.success() {
            bail!("the writer failed ({status})");
        }
        if commits.len() as u64 != count {
            bail!("the writer reported {} of {count} commits", commits.len());
        }
        delays.sort();
        Ok((Phase::new(count, elapsed, delays), commits))
    }
}

/// An idle connection to the database in state dir `state` (see where it is held).
async fn hold_open(dir: &Path, state: &str) -> anyhow::Result<sqlx::SqliteConnection> {
    use sqlx::ConnectOptions;
    let path = settings(dir, state).database_path();
    let mut conn = tandem_replication::connect_options(&path).connect().await?;
    // A read makes the connection open the log (WAL mode opens it lazily).
    sqlx::query("SELECT count(*) FROM sqlite_master")
        .execute(&mut conn)
        .await?;
    Ok(conn)
}

fn last_position(commits: &[(Instant, Position)]) -> Position {
    commits.iter().map(|(_, p)| *p).max().unwrap_or(Position(0))
}

/// The phases of one replicated round of one variant.
struct Round {
    /// Async writes with both services stopped: the triggers and the changelog only.
    capture: Phase,
    /// The same with [`WRITERS`] writers.
    capture_many: Phase,
    /// Capture with a relayed round trip after each commit (services stopped): the
    /// ceiling of `received` at one writer; only for this tree's build, whose writer
    /// has `--echo-via`.
    capture_floor: Option<Phase>,
    /// Async writes with node 1's service running and node 2's stopped: capture plus
    /// the active's service without a peer (its polls, no shipping, no pruning).
    active_alone: Phase,
    asynchronous: Phase,
    waited: Phase,
    waited_many: Phase,
    /// `wait_replicated` at the `received` level, 1 and [`WRITERS`] writers (none: the
    /// build has no levels).
    received: Option<(Phase, Phase)>,
    usage: [Usage; 2],
}

/// One replicated round of `v`: the services start stopped and end stopped.
fn replicated_round(
    bench: &Bench<'_>,
    v: &Variant,
    services: &mut Services,
    next: &mut u64,
    relay: &super::relay::Floor,
) -> anyhow::Result<Round> {
    let state = v.state(Host::Node1);
    let (capture, _) = bench.write(&v.bin, &state, next, TRANSACTIONS, None, 1)?;
    let (capture_many, _) = bench.write(&v.bin, &state, next, TRANSACTIONS, None, WRITERS)?;
    let capture_floor = if v.bin == bench.plain_bin {
        let echo = Some(Level::Echo(relay.writer_addr));
        Some(bench.write(&v.bin, &state, next, WAITED, echo, 1)?.0)
    } else {
        None
    };
    services.start(bench, v, Host::Node1)?;
    // Its start (opening the database, binding the link) is not what the row measures.
    std::thread::sleep(SETTLE);
    let (active_alone, commits) = bench.write(&v.bin, &state, next, TRANSACTIONS, None, 1)?;
    services.start(bench, v, Host::Node2)?;
    bench.caught_up(v, last_position(&commits))?;
    let (asynchronous, usage) = async_round(bench, v, services.pids(), next)?;
    let flushed = Some(Level::Flushed);
    let waited = bench.write(&v.bin, &state, next, WAITED, flushed, 1)?.0;
    let waited_many = bench
        .write(&v.bin, &state, next, WAITED_MANY, flushed, WRITERS)?
        .0;
    // A build from before the levels has no `--level`: no rows for it.
    let received = if v.levels {
        let at = Some(Level::Received);
        Some((
            bench.write(&v.bin, &state, next, WAITED, at, 1)?.0,
            bench
                .write(&v.bin, &state, next, WAITED_MANY, at, WRITERS)?
                .0,
        ))
    } else {
        None
    };
    services.stop_all();
    Ok(Round {
        capture,
        capture_many,
        capture_floor,
        active_alone,
        asynchronous,
        waited,
        waited_many,
        received,
        usage,
    })
}

/// One asynchronous round: the writer runs while a thread of this process watches
/// the acknowledged position node 1's service publishes (a file, read every
/// millisecond; never the database); the lag of a commit is the time until the
/// position covers it. Also returns the memory and CPU of the service processes
/// `pids` (node 1, node 2) over the round.
fn async_round(
    bench: &Bench<'_>,
    v: &Variant,
    pids: [u32; 2],
    next: &mut u64,
) -> anyhow::Result<(Phase, [Usage; 2])> {
    let sampler = Sampler::start(pids);
    let dir = bench.dir.join(v.state(Host::Node1));
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let watcher = std::thread::spawn(move || {
        let mut seen: Vec<(Instant, Position)> = Vec::new();
        while !flag.load(Ordering::Relaxed) {
            if let Some(acked) = published_ack(&dir)
                && seen.last().is_none_or(|(_, p)| *p < acked)
            {
                seen.push((Instant::now(), acked));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        seen
    });
    let state = v.state(Host::Node1);
    let (mut phase, commits) = bench.write(&v.bin, &state, next, TRANSACTIONS, None, 1)?;
    let caught_up = bench.caught_up(v, last_position(&commits));
    let usage = sampler.stop();
    std::thread::sleep(Duration::from_millis(5));
    stop.store(true, Ordering::Relaxed);
    let seen = watcher
        .join()
        .map_err(|_| anyhow::anyhow!("the ack watcher panicked"))?;
    caught_up?;
    phase.delays = commits
        .iter()
        .filter_map(|(at, p)| {
            seen.iter()
                .find(|(_, acked)| acked >= p)
                .map(|(when, _)| when.saturating_duration_since(*at))
        })
        .collect();
    phase.delays.sort();
    Ok((phase, usage))
}

/// Memory and CPU of one process over some time.
#[derive(Debug, Default, Clone)]
struct Usage {
    /// The highest VmRSS seen, KiB.
    rss_peak_kib: u64,
    /// Sum and count of the VmRSS samples, KiB.
    rss_sum_kib: u64,
    samples: u64,
    /// utime + stime used, seconds.
    cpu_s: f64,
    /// Time measured, seconds.
    wall_s: f64,
}

impl Usage {
    fn add(&mut self, other: &Usage) {
        self.rss_peak_kib = self.rss_peak_kib.max(other.rss_peak_kib);
        self.rss_sum_kib += other.rss_sum_kib;
        self.samples += other.samples;
        self.cpu_s += other.cpu_s;
        self.wall_s += other.wall_s;
    }

    fn rss_mean_mib(&self) -> f64 {
        self.rss_sum_kib as f64 / self.samples.max(1) as f64 / 1024.0
    }

    fn rss_peak_mib(&self) -> f64 {
        self.rss_peak_kib as f64 / 1024.0
    }

    /// CPU time over wall time, percent of one core.
    fn cpu_percent(&self) -> f64 {
        100.0 * self.cpu_s / self.wall_s.max(1e-9)
    }
}

/// Samples the memory of two processes every 20 ms on a thread, and their CPU time
/// from start to stop.
struct Sampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<[Usage; 2]>,
}

impl Sampler {
    fn start(pids: [u32; 2]) -> Sampler {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let ticks0 = pids.map(|p| crate::site::usage::cpu_ticks(p).unwrap_or(0));
            let mut usage = [Usage::default(), Usage::default()];
            loop {
                for (u, pid) in usage.iter_mut().zip(pids) {
                    let rss = crate::site::usage::rss_kib(pid);
                    u.rss_peak_kib = u.rss_peak_kib.max(rss);
                    u.rss_sum_kib += rss;
                    u.samples += 1;
                }
                if flag.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let per_s = crate::site::usage::ticks_per_second();
            for ((u, pid), t0) in usage.iter_mut().zip(pids).zip(ticks0) {
                let used = crate::site::usage::cpu_ticks(pid)
                    .unwrap_or(t0)
                    .saturating_sub(t0);
                u.cpu_s = used as f64 / per_s;
                u.wall_s = started.elapsed().as_secs_f64();
            }
            usage
        });
        Sampler { stop, thread }
    }

    fn stop(self) -> [Usage; 2] {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// Builds the release `mp_replication` and returns its path.
pub(super) fn build_release() -> anyhow::Result<PathBuf> {
    Ok(super::build_release(&["mp_replication"])?.join("mp_replication"))
}

fn write_configs(dir: &Path) -> anyhow::Result<()> {
    write_configs_with(dir, "")
}

/// Both nodes' configs and the site key in `dir`; `replication` is appended to
/// each node's `[replication]` table (lines ending in a newline).
pub(crate) fn write_configs_with(dir: &Path, replication: &str) -> anyhow::Result<()> {
    tandem_peer::keygen(&dir.join("site.key"))?;
    for (host, id, peer) in [(Host::Node1, 1, Host::Node2), (Host::Node2, 2, Host::Node1)] {
        let text = format!(
            "[node]\nid = {id}\n\n[network]\nnode_address = \"{}/24\"\npeer_address = \"{}\"\n\n\
             [peer]\nkey_file = \"{}\"\n\n[replication]\nsample_schema = true\n{replication}",
            host.addr(),
            peer.addr(),
            dir.join("site.key").display()
        );
        std::fs::write(dir.join(format!("{host}.toml")), text)?;
    }
    Ok(())
}

fn settings(dir: &Path, state: &str) -> Settings {
    let cfg = ReplicationConfig {
        sample_schema: true,
        ..ReplicationConfig::default()
    };
    sample::settings(Settings::new(dir.join(state), cfg))
}

/// The service processes of the variant being measured (node 1, node 2), killed
/// when stopped or dropped.
#[derive(Default)]
struct Services([Option<Child>; 2]);

impl Services {
    fn slot(host: Host) -> usize {
        usize::from(host != Host::Node1)
    }

    /// Starts `v`'s service on `host` (nothing if it runs).
    fn start(&mut self, bench: &Bench<'_>, v: &Variant, host: Host) -> anyhow::Result<()> {
        let slot = &mut self.0[Self::slot(host)];
        if slot.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(bench.dir.join(format!("{}{host}-service.log", v.prefix)))?;
        let child = bench
            .command(&v.bin, host, &v.state(host))
            .arg("service")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting mp_replication service")?;
        *slot = Some(child);
        Ok(())
    }

    /// The service processes of node 1 and node 2 (`ip netns exec` execs the program,
    /// so the child is the service itself; 0 for one not running).
    fn pids(&self) -> [u32; 2] {
        self.0.each_ref().map(|c| c.as_ref().map_or(0, Child::id))
    }

    fn stop_all(&mut self) {
        for child in self.0.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn wait_until(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("timed out waiting for {what}")
}

/// A measured phase (or several rounds of one).
struct Phase {
    transactions: u64,
    /// Transactions per second of each round.
    rates: Vec<f64>,
    /// Per-transaction lag or latency, sorted.
    delays: Vec<Duration>,
}

impl Phase {
    fn new(transactions: u64, elapsed: Duration, delays: Vec<Duration>) -> Phase {
        Phase {
            transactions,
            rates: vec![transactions as f64 / elapsed.as_secs_f64().max(1e-9)],
            delays,
        }
    }

    fn combine(rounds: Vec<Phase>) -> Phase {
        let mut out = Phase {
            transactions: 0,
            rates: Vec::new(),
            delays: Vec::new(),
        };
        for r in rounds {
            out.transactions += r.transactions;
            out.rates.extend(r.rates);
            out.delays.extend(r.delays);
        }
        out.delays.sort();
        out
    }

    /// The median rate of the rounds.
    fn rate(&self) -> f64 {
        let mut rates = self.rates.clone();
        rates.sort_by(f64::total_cmp);
        rates.get(rates.len() / 2).copied().unwrap_or(0.0)
    }

    /// The `p`th percentile (0 to 100) of the sorted delays.
    fn percentile(&self, p: f64) -> Option<Duration> {
        super::percentile(&self.delays, p)
    }
}

/// One variant's phases over all its rounds.
struct Measured {
    name: String,
    off: Phase,
    capture: Phase,
    capture_many: Phase,
    capture_floor: Option<Phase>,
    active_alone: Phase,
    asynchronous: Phase,
    waited: Phase,
    waited_many: Phase,
    /// At the `received` level, 1 and [`WRITERS`] writers, if the build has levels.
    received: Option<(Phase, Phase)>,
    /// The service processes of node 1 and node 2 over the async rounds.
    usage: [Usage; 2],
}

impl Measured {
    fn combine(name: String, rounds: Vec<Round>, off: Vec<Phase>) -> Measured {
        let mut usage = [Usage::default(), Usage::default()];
        let (mut capture, mut alone, mut asynchronous, mut waited, mut many) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut received, mut received_many) = (Vec::new(), Vec::new());
        let (mut capture_many, mut capture_floor) = (Vec::new(), Vec::new());
        let mut levels = true;
        for r in rounds {
            for (total, round) in usage.iter_mut().zip(&r.usage) {
                total.add(round);
            }
            capture.push(r.capture);
            capture_many.push(r.capture_many);
            capture_floor.extend(r.capture_floor);
            alone.push(r.active_alone);
            asynchronous.push(r.asynchronous);
            waited.push(r.waited);
            many.push(r.waited_many);
            match r.received {
                Some((one, all)) => {
                    received.push(one);
                    received_many.push(all);
                }
                None => levels = false,
            }
        }
        Measured {
            name,
            off: Phase::combine(off),
            capture: Phase::combine(capture),
            capture_many: Phase::combine(capture_many),
            capture_floor: (!capture_floor.is_empty()).then(|| Phase::combine(capture_floor)),
            active_alone: Phase::combine(alone),
            asynchronous: Phase::combine(asynchronous),
            waited: Phase::combine(waited),
            waited_many: Phase::combine(many),
            received: levels.then(|| (Phase::combine(received), Phase::combine(received_many))),
            usage,
        }
    }
}

struct Results {
    unreplicated: Phase,
    unreplicated_many: Phase,
    /// The unreplicated writer with a relayed round trip after each commit.
    floor: Phase,
    /// The variants measured; this tree's last.
    variants: Vec<Measured>,
}

/// One mode of the results.
struct Mode<'a> {
    /// The variant's name (empty: the only one, or the baseline).
    variant: &'a str,
    key: &'static str,
    what: &'static str,
    writers: u64,
    phase: &'a Phase,
    /// The unreplicated phase at the same number of writers.
    base: &'a Phase,
}

impl Mode<'_> {
    fn key(&self) -> String {
        if self.variant.is_empty() {
            self.key.to_owned()
        } else {
            format!("{}: {}", self.variant, self.key)
        }
    }

    fn what(&self) -> String {
        if self.variant.is_empty() {
            self.what.to_owned()
        } else {
            format!("[{}] {}", self.variant, self.what)
        }
    }
}

impl Results {
    fn modes(&self) -> Vec<Mode<'_>> {
        let (one, many) = (&self.unreplicated, &self.unreplicated_many);
        let mut modes = vec![
            Mode {
                variant: "",
                key: "unreplicated",
                what: "unreplicated (no tandem)",
                writers: 1,
                phase: one,
                base: one,
            },
            Mode {
                variant: "",
                key: "unreplicated_many",
                what: "unreplicated (no tandem)",
                writers: WRITERS,
                phase: many,
                base: many,
            },
            Mode {
                variant: "",
                key: "floor",
                what: "floor: unreplicated + relay round trip",
                writers: 1,
                phase: &self.floor,
                base: one,
            },
        ];
        for m in &self.variants {
            let mode = |key, what, writers, phase, base| Mode {
                variant: &m.name,
                key,
                what,
                writers,
                phase,
                base,
            };
            modes.extend([
                mode("off", "replication off", 1, &m.off, one),
                mode(
                    "capture",
                    "async, services stopped (capture only)",
                    1,
                    &m.capture,
                    one,
                ),
                mode(
                    "capture_many",
                    "async, services stopped (capture only)",
                    WRITERS,
                    &m.capture_many,
                    many,
                ),
                mode(
                    "active_alone",
                    "async, node 2 stopped (no shipping)",
                    1,
                    &m.active_alone,
                    one,
                ),
                mode(
                    "async",
                    "async (lag: commit to ack seen)",
                    1,
                    &m.asynchronous,
                    one,
                ),
                mode(
                    "wait_replicated",
                    "wait_replicated, flushed = applied (commit to ack)",
                    1,
                    &m.waited,
                    one,
                ),
                mode(
                    "wait_replicated_many",
                    "wait_replicated, flushed = applied (commit to ack)",
                    WRITERS,
                    &m.waited_many,
                    many,
                ),
            ]);
            if let Some(floor) = &m.capture_floor {
                modes.push(mode(
                    "capture_floor",
                    "floor with capture: relay round trip",
                    1,
                    floor,
                    one,
                ));
            }
            if let Some((received, received_many)) = &m.received {
                modes.extend([
                    mode(
                        "wait_received",
                        "wait_replicated, received (commit to ack)",
                        1,
                        received,
                        one,
                    ),
                    mode(
                        "wait_received_many",
                        "wait_replicated, received (commit to ack)",
                        WRITERS,
                        received_many,
                        many,
                    ),
                ]);
            }
        }
        modes
    }

    /// The summary lines: each mode's rate beside the unreplicated one at the same
    /// number of writers, with its lag or latency; then the service's memory and CPU.
    fn summary(&self) -> Vec<super::Row> {
        let ms = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e3);
        let mut rows: Vec<super::Row> = self
            .modes()
            .into_iter()
            .filter(|m| !m.key.starts_with("unreplicated"))
            .map(|m| {
                let delays = if m.phase.delays.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", p50 {:.1} / p99 {:.1} ms",
                        ms(m.phase.percentile(50.0)),
                        ms(m.phase.percentile(99.0))
                    )
                };
                let (rate, base) = (m.phase.rate(), m.base.rate());
                let row = super::Row::new(
                    "replication sqlite",
                    format!("{}, {} (tx/s)", m.what(), writers_text(m.writers)),
                    format!("{rate:.0}{delays}"),
                    format!("unreplicated, {}: {base:.0}", writers_text(m.writers)),
                )
                .ratio(rate, base);
                match m.key {
                    "async" => row.target("≥ 0.9 x unreplicated (issue 24)", rate >= base * 0.9),
                    // The issue's target is about batching the commits of several writers.
                    "wait_replicated_many" => row.target(
                        format!(">= 0.5 x unreplicated ({} writers)", m.writers),
                        rate >= base / 2.0,
                    ),
                    // The level that survives the loss of either node (issue 24).
                    "wait_received" => {
                        row.target("≥ 0.5 x unreplicated (issue 24)", rate >= base * 0.5)
                    }
                    "wait_received_many" => row.target(
                        format!("≥ 0.8 x unreplicated ({} writers, issue 24)", m.writers),
                        rate >= base * 0.8,
                    ),
                    _ => row,
                }
            })
            .collect();
        for m in &self.variants {
            let [n1, n2] = &m.usage;
            let name = if m.name.is_empty() {
                String::new()
            } else {
                format!("[{}] ", m.name)
            };
            rows.push(super::Row::new(
                "replication sqlite",
                format!(
                    "{name}replication service while replicating: RSS, CPU ({SERVICE_PROCESS}, async phase)"
                ),
                format!(
                    "node 1 {:.1} MiB, {:.0}% CPU; node 2 {:.1} MiB, {:.0}% CPU",
                    n1.rss_peak_mib(),
                    n1.cpu_percent(),
                    n2.rss_peak_mib(),
                    n2.cpu_percent()
                ),
                "",
            ));
        }
        rows
    }

    fn print(&self) {
        println!(
            "bench replication: sample workload, {ROWS} rows per transaction, node 1 -> node 2 in the namespace lab, \
             median of {ROUNDS} alternating rounds; ratio to unreplicated at the same number of writers"
        );
        println!(
            "{:<56} {:>7} {:>8} {:>10} {:>8} {:>10} {:>10}",
            "mode", "writers", "txs", "tx/s", "ratio", "p50", "p99"
        );
        for m in self.modes() {
            let ms = |d: Option<Duration>| {
                d.map_or_else(
                    || "-".to_owned(),
                    |d| format!("{:.2} ms", d.as_secs_f64() * 1e3),
                )
            };
            println!(
                "{:<56} {:>7} {:>8} {:>10.0} {:>8.2} {:>10} {:>10}",
                m.what(),
                m.writers,
                m.phase.transactions,
                m.phase.rate(),
                m.phase.rate() / m.base.rate(),
                ms(m.phase.percentile(50.0)),
                ms(m.phase.percentile(99.0)),
            );
        }
        for m in &self.variants {
            println!(
                "replication service ({SERVICE_PROCESS}) during the async rounds{}:",
                if m.name.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", m.name)
                }
            );
            for (node, u) in [1, 2].into_iter().zip(&m.usage) {
                println!(
                    "  node {node}: RSS peak {:.1} MiB (mean {:.1}), CPU {:.2} s in {:.1} s = {:.0}% of a core",
                    u.rss_peak_mib(),
                    u.rss_mean_mib(),
                    u.cpu_s,
                    u.wall_s,
                    u.cpu_percent()
                );
            }
        }
    }

    fn write_json(&self) -> anyhow::Result<()> {
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
        let mut series = serde_json::Map::new();
        for m in self.modes() {
            series.insert(
                m.key(),
                serde_json::json!({
                    "writers": m.writers,
                    "transactions": m.phase.transactions,
                    "tx_per_s": m.phase.rate(),
                    "rates": m.phase.rates,
                    "ratio": m.phase.rate() / m.base.rate(),
                    "p50_ms": ms(m.phase.percentile(50.0)),
                    "p99_ms": ms(m.phase.percentile(99.0)),
                }),
            );
        }
        let usage = |u: &Usage| {
            serde_json::json!({
                "rss_peak_mib": u.rss_peak_mib(),
                "rss_mean_mib": u.rss_mean_mib(),
                "cpu_s": u.cpu_s,
                "wall_s": u.wall_s,
                "cpu_percent": u.cpu_percent(),
            })
        };
        let services: Vec<_> = self
            .variants
            .iter()
            .map(|m| {
                serde_json::json!({
                    "variant": m.name,
                    "process": SERVICE_PROCESS,
                    "phase": "async",
                    "node1": usage(&m.usage[0]),
                    "node2": usage(&m.usage[1]),
                })
            })
            .collect();
        let json = serde_json::json!({
            "area": "replication",
            "rows_per_transaction": ROWS,
            "writers_many": WRITERS,
            "series": series,
            "service_while_replicating": services,
        });
        let path = super::output_dir()?.join("replication.json");
        std::fs::write(&path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("written to {}", path.display());
        Ok(())
    }
}

fn writers_text(n: u64) -> String {
    if n == 1 {
        "1 writer".to_owned()
    } else {
        format!("{n} writers")
    }
}
