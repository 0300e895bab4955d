//! `cargo xtask bench replication --backend postgres`: pgbench's TPC-B-like workload
//! (scale [`SCALE`], [`SECONDS`] s rounds) on node 1 of the namespace lab, at 1 and
//! [`MANY`] clients as the SQLite rows have 1 and 8 writers. Node 2 is a streaming
//! standby set up by the release `mp_replication` (init, switch-on, from-sync), whose
//! replication service runs on both nodes. The modes:
//!
//! - `off`: a third cluster on node 1 with the primary's settings and no standby, the
//!   way the SQLite bench keeps an unreplicated database beside the replicated one;
//! - `async`: the replicated primary with `synchronous_commit = local` for pgbench's
//!   sessions (WAL streams, commits do not wait);
//! - `remote_write`: commits wait until node 2 has written the WAL (not flushed);
//! - `on`: commits wait until node 2 has flushed it (`synchronous_standby_names`).
//!
//! One run is one cycle through every mode, so that drift in the machine's load hits
//! them alike. Before each round the target's history table is emptied and its small
//! tables vacuumed (as pgbench does by itself), the standby has replayed everything,
//! all three clusters take a `CHECKPOINT` and dirty pages are flushed (`sync`). While
//! a round runs, one persistent connection to the target cluster samples
//! `pg_stat_replication` and the sessions waiting for the standby every 100 ms, in
//! every mode alike. One uncounted round on each cluster warms it first. Whole runs
//! repeat until two agree within [`AGREE`] (every mode's rate) or [`RUNS_MAX`] ran;
//! the figures are the mean of the two closest runs and the spread is the lowest and
//! highest run. Needs root and PostgreSQL 15. Results print
//! as a table, beside the SQLite backend's figures when `target/bench/replication.json`
//! holds them, and go to `target/bench/replication-postgres.json`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection as _, PgConnection};
use tandem_lab::postgres::{OS_USER, PgServer, bindir};
use tandem_lab::{Host, Lab, LabConfig};

/// The port of the replicated pair.
const PORT: u16 = 5433;
/// The port of the cluster without a standby (on node 1).
const OFF_PORT: u16 = 5434;
/// pgbench's scale: 10 branches, so that [`MANY`] clients rarely queue on one row.
const SCALE: u32 = 10;
/// Seconds per round.
const SECONDS: u32 = 20;
/// The clients of the many-client rounds (the SQLite rows' 8 writers).
const MANY: u32 = 8;
/// At most this many whole runs.
const RUNS_MAX: usize = 6;
/// Two runs agree when every mode's rates are at most this far apart (of the lower).
const AGREE: f64 = 0.10;
/// How often the sampler reads `pg_stat_replication`.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// How long the standby may take to replay what a round left.
const CATCH_UP: Duration = Duration::from_secs(120);
/// How long the primary may not wait for its standby before a round (the service
/// degrades it while node 2 looks lost) before the bench gives up.
const SYNC_GRACE: Duration = Duration::from_secs(60);

/// The settings that change how fast a cluster commits; the `off` cluster must have
/// the primary's.
const COMPARED: &[&str] = &[
    "wal_level",
    "wal_log_hints",
    "fsync",
    "full_page_writes",
    "wal_compression",
    "wal_sync_method",
    "wal_buffers",
    "wal_writer_delay",
    "commit_delay",
    "shared_buffers",
    "checkpoint_timeout",
    "max_wal_size",
    "data_checksums",
    "autovacuum",
];

/// One read of the sampler: sessions waiting for the standby, and (with a standby)
/// its replay lag and the WAL it has still to replay.
const SAMPLE: &str = "SELECT \
     (SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'), \
     (SELECT coalesce((EXTRACT(epoch FROM replay_lag) * 1000)::bigint, 0) \
      FROM pg_stat_replication LIMIT 1), \
     (SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint \
      FROM pg_stat_replication LIMIT 1)";

/// How the commits of a round wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Commit {
    /// The cluster without a standby.
    Off,
    /// `synchronous_commit = local` on the primary.
    Async,
    /// `synchronous_commit = remote_write`.
    RemoteWrite,
    /// `synchronous_commit = on`: the standby flushed.
    On,
}

impl Commit {
    fn key(self) -> &'static str {
        match self {
            Commit::Off => "off",
            Commit::Async => "async",
            Commit::RemoteWrite => "remote_write",
            Commit::On => "on",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Commit::Off => "off (cluster without standby)",
            Commit::Async => "async (synchronous_commit = local)",
            Commit::RemoteWrite => "remote_write (standby wrote)",
            Commit::On => "on (standby flushed)",
        }
    }

    /// `synchronous_commit` for pgbench's sessions.
    fn setting(self) -> &'static str {
        match self {
            Commit::Off | Commit::On => "on",
            Commit::Async => "local",
            Commit::RemoteWrite => "remote_write",
        }
    }
}

/// One measured setting: how commits wait, at a number of clients.
#[derive(Clone, Copy, Debug)]
struct Mode {
    commit: Commit,
    clients: u32,
}

impl Mode {
    const fn new(commit: Commit, clients: u32) -> Mode {
        Mode { commit, clients }
    }

    /// The key in the JSON, `_many` for [`MANY`] clients as the SQLite bench names it.
    fn key(self) -> String {
        if self.clients == 1 {
            self.commit.key().to_owned()
        } else {
            format!("{}_many", self.commit.key())
        }
    }
}

/// The modes of one run, in the order they run.
const MODES: [Mode; 7] = [
    Mode::new(Commit::Off, 1),
    Mode::new(Commit::Async, 1),
    Mode::new(Commit::RemoteWrite, 1),
    Mode::new(Commit::On, 1),
    Mode::new(Commit::Off, MANY),
    Mode::new(Commit::RemoteWrite, MANY),
    Mode::new(Commit::On, MANY),
];

/// The index in [`MODES`] of the `off` mode at `clients`.
fn base_of(clients: u32) -> Option<usize> {
    MODES
        .iter()
        .position(|m| m.commit == Commit::Off && m.clients == clients)
}

pub(crate) fn run() -> anyhow::Result<Vec<super::Row>> {
    let bin = super::replication::build_release()?;
    let bindir = bindir().context(
        "PostgreSQL 15 (/usr/lib/postgresql/15/bin) and the postgres user are needed: \
         apt-get install postgresql-15",
    )?;
    let started = Instant::now();
    let lab = Lab::up(LabConfig::default()).context("building the namespace lab (needs root)")?;
    let dir = tempfile::tempdir()?;
    let mut servers = Vec::new();
    for host in [Host::Node1, Host::Node2] {
        servers.push(PgServer::create(&lab, host, dir.path(), PORT, &bindir)?);
    }
    let off_dir = dir.path().join("off");
    std::fs::create_dir(&off_dir)?;
    let off = PgServer::create(&lab, Host::Node1, &off_dir, OFF_PORT, &bindir)?;
    write_configs(dir.path(), &servers)?;
    let scale = SCALE.to_string();
    for server in [&servers[0], &off] {
        let (socket, port) = (server.socket_dir.display().to_string(), server.port);
        let port = port.to_string();
        server.run(
            "pgbench",
            &[
                "-i", "-q", "-s", &scale, "-h", &socket, "-p", &port, "postgres",
            ],
        )?;
    }
    // tandem.conf turns wal_log_hints on for the primary; the cluster without a
    // standby gets it too, so that the two differ in their standby alone.
    off.run(
        "psql",
        &[
            "-h",
            &off.socket_dir.display().to_string(),
            "-p",
            &OFF_PORT.to_string(),
            "-U",
            "postgres",
            "-Atc",
            "ALTER SYSTEM SET wal_log_hints = on",
            "postgres",
        ],
    )?;
    restart(&off)?;
    let mp = |host: Host, args: &[&str]| mp(&lab, &bin, dir.path(), host, args);
    mp(Host::Node2, &["init", "-n", "2", "-r", "192.0.2.11"])?;
    mp(Host::Node1, &["init", "-n", "1", "-r", "192.0.2.12"])?;
    mp(Host::Node1, &["switch-on"])?;
    mp(Host::Node2, &["switch-on", "-S", "-F", "from-sync"])?;
    let mut services = Services(Vec::new());
    for host in [Host::Node1, Host::Node2] {
        let log = std::fs::File::create(dir.path().join(format!("{host}-service.log")))?;
        services.0.push(
            mp_command(&lab, &bin, dir.path(), host)
                .arg("service")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?,
        );
    }
    let mut bench = Bench::connect(&lab, &bindir, [&off, &servers[0], &servers[1]])?;
    bench.check_settings()?;
    let setup = started.elapsed();
    let measured = bench.runs()?;
    bench.close();
    drop(services);
    let results = Results {
        pair: closest_pair(&measured.iter().map(|r| r.rates.clone()).collect::<Vec<_>>())
            .unwrap_or((0, 0, f64::INFINITY)),
        runs: measured,
        setup,
        took: started.elapsed(),
    };
    results.print();
    results.write_json()?;
    drop(off);
    drop(servers);
    Ok(results.summary())
}

/// Runs `mp_replication args` on `host`; its output, or an error with it.
fn mp(lab: &Lab, bin: &Path, dir: &Path, host: Host, args: &[&str]) -> anyhow::Result<String> {
    let out = mp_command(lab, bin, dir, host).args(args).output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "mp_replication {} on {host}: {text}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

/// Restarts `server` (`pg_ctl restart -m fast`), for a setting that needs it.
fn restart(server: &PgServer) -> anyhow::Result<()> {
    server.run(
        "pg_ctl",
        &[
            "restart",
            "-w",
            "-m",
            "fast",
            "-D",
            &server.data_dir.display().to_string(),
            "-l",
            &server.home.join("test-server.log").display().to_string(),
        ],
    )?;
    Ok(())
}

/// The clusters of the bench: what a round runs against.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cluster {
    Off,
    Primary,
    Standby,
}

/// A cluster's socket and the bench's one connection to it.
struct Target {
    socket: String,
    port: u16,
    conn: Option<PgConnection>,
}

/// The rounds' machinery: the three clusters and a runtime for their connections.
struct Bench {
    runtime: tokio::runtime::Runtime,
    namespace: String,
    bindir: PathBuf,
    /// Off, primary, standby.
    targets: [Target; 3],
}

/// One round's rate and samples.
struct Round {
    tps: f64,
    samples: Vec<Sample>,
}

/// One read of the sampler.
#[derive(Clone, Copy)]
struct Sample {
    waiting: i64,
    lag_ms: Option<i64>,
    gap_bytes: Option<i64>,
}

/// One whole run: a round of every mode.
struct Run {
    /// tx/s, in the order of [`MODES`].
    rates: Vec<f64>,
    samples: Vec<Vec<Sample>>,
    took: Duration,
}

impl Bench {
    /// Opens one connection to each of `servers` (off, primary, standby).
    fn connect(lab: &Lab, bindir: &Path, servers: [&PgServer; 3]) -> anyhow::Result<Bench> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let targets = servers.map(|s| Target {
            socket: s.socket_dir.display().to_string(),
            port: s.port,
            conn: None,
        });
        let mut bench = Bench {
            runtime,
            namespace: lab.namespace(Host::Node1),
            bindir: bindir.to_path_buf(),
            targets,
        };
        for target in &mut bench.targets {
            let options = PgConnectOptions::new_without_pgpass()
                .socket(&target.socket)
                .port(target.port)
                .username(OS_USER)
                .database("postgres");
            let conn = bench
                .runtime
                .block_on(PgConnection::connect_with(&options))
                .with_context(|| format!("connecting to {}:{}", target.socket, target.port))?;
            target.conn = Some(conn);
        }
        // The primary waits for node 2 once the standby streams.
        bench.wait_sync()?;
        Ok(bench)
    }

    fn conn(&mut self, cluster: Cluster) -> anyhow::Result<&mut PgConnection> {
        self.targets[cluster as usize]
            .conn
            .as_mut()
            .context("the bench's connection is gone")
    }

    /// Waits (up to [`SYNC_GRACE`]) until node 2 streams as the primary's synchronous
    /// standby: the service may have degraded the primary for a moment.
    fn wait_sync(&mut self) -> anyhow::Result<()> {
        let runtime = self.runtime.handle().clone();
        let limit = Instant::now() + SYNC_GRACE;
        loop {
            let conn = self.conn(Cluster::Primary)?;
            let state: Option<String> = runtime.block_on(
                sqlx::query_scalar("SELECT sync_state FROM pg_stat_replication")
                    .fetch_optional(conn),
            )?;
            match state.as_deref() {
                Some("sync") => return Ok(()),
                _ if Instant::now() > limit => bail!(
                    "node 1 does not wait for node 2 after {SYNC_GRACE:?} (sync_state {})",
                    state.as_deref().unwrap_or("none: node 2 does not stream")
                ),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Waits until node 2 has replayed all the WAL node 1 flushed so far. The standby
    /// is asked itself: `pg_stat_replication.replay_lsn` moves only with its replies.
    fn wait_replayed(&mut self) -> anyhow::Result<()> {
        let runtime = self.runtime.handle().clone();
        let conn = self.conn(Cluster::Primary)?;
        let flushed: String = runtime.block_on(
            sqlx::query_scalar("SELECT pg_current_wal_flush_lsn()::text").fetch_one(conn),
        )?;
        let limit = Instant::now() + CATCH_UP;
        loop {
            let conn = self.conn(Cluster::Standby)?;
            let behind: Option<i64> = runtime.block_on(
                sqlx::query_scalar(
                    "SELECT pg_wal_lsn_diff($1::pg_lsn, pg_last_wal_replay_lsn())::bigint",
                )
                .bind(&flushed)
                .fetch_one(conn),
            )?;
            if behind.is_some_and(|b| b <= 0) {
                return Ok(());
            }
            if Instant::now() > limit {
                bail!("node 2 did not replay node 1's WAL up to {flushed} within {CATCH_UP:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Checks that the cluster without a standby commits with the primary's settings.
    fn check_settings(&mut self) -> anyhow::Result<()> {
        let runtime = self.runtime.handle().clone();
        let mut read = |cluster| -> anyhow::Result<Vec<(String, String)>> {
            let conn = self.conn(cluster)?;
            Ok(runtime.block_on(
                sqlx::query_as(
                    "SELECT name, setting FROM pg_settings WHERE name = ANY($1) ORDER BY name",
                )
                .bind(COMPARED)
                .fetch_all(conn),
            )?)
        };
        let (off, primary) = (read(Cluster::Off)?, read(Cluster::Primary)?);
        let differ: Vec<String> = off
            .iter()
            .zip(&primary)
            .filter(|(a, b)| a != b)
            .map(|(a, b)| format!("{} = {} (off) / {} (primary)", a.0, a.1, b.1))
            .collect();
        if off.len() != COMPARED.len() || primary.len() != COMPARED.len() || !differ.is_empty() {
            bail!(
                "the cluster without a standby does not have the primary's settings: {}",
                differ.join(", ")
            );
        }
        Ok(())
    }

    /// Whole runs until two agree within [`AGREE`] or [`RUNS_MAX`] ran.
    fn runs(&mut self) -> anyhow::Result<Vec<Run>> {
        // Rounds on cold clusters came out low (the first run's `off` at 0.7 of the
        // later runs'), so each cluster first runs one round that is not counted.
        let warm = Instant::now();
        for mode in [Mode::new(Commit::Off, MANY), Mode::new(Commit::Async, MANY)] {
            self.round(mode)?;
        }
        println!(
            "warm-up ({:.0} s): one uncounted round on each cluster",
            warm.elapsed().as_secs_f64()
        );
        let mut runs: Vec<Run> = Vec::new();
        while runs.len() < RUNS_MAX {
            let started = Instant::now();
            let mut run = Run {
                rates: Vec::new(),
                samples: Vec::new(),
                took: Duration::ZERO,
            };
            for mode in MODES {
                let round = self.round(mode)?;
                run.rates.push(round.tps);
                run.samples.push(round.samples);
            }
            run.took = started.elapsed();
            let rates: Vec<String> = MODES
                .iter()
                .zip(&run.rates)
                .map(|(m, r)| format!("{} {r:.0}", m.key()))
                .collect();
            println!(
                "run {} ({:.0} s), tx/s: {}",
                runs.len() + 1,
                run.took.as_secs_f64(),
                rates.join(", ")
            );
            runs.push(run);
            let rates: Vec<Vec<f64>> = runs.iter().map(|r| r.rates.clone()).collect();
            if closest_pair(&rates).is_some_and(|(_, _, d)| d <= AGREE) {
                break;
            }
        }
        Ok(runs)
    }

    /// One round of pgbench in `mode`, sampled on the target's connection.
    fn round(&mut self, mode: Mode) -> anyhow::Result<Round> {
        let cluster = match mode.commit {
            Commit::Off => Cluster::Off,
            _ => Cluster::Primary,
        };
        self.prepare(cluster)?;
        let target = &mut self.targets[cluster as usize];
        let conn = target
            .conn
            .take()
            .context("the bench's connection is gone")?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let sampler = self.runtime.spawn(sample(conn, stopped));
        let (c, j) = (mode.clients.to_string(), mode.clients.min(2).to_string());
        let (t, port) = (SECONDS.to_string(), target.port.to_string());
        let args = [
            "-n",
            "-T",
            &t,
            "-c",
            &c,
            "-j",
            &j,
            "-h",
            &target.socket,
            "-p",
            &port,
            "postgres",
        ];
        let options = format!("-c synchronous_commit={}", mode.commit.setting());
        let text = run_pgbench(&self.namespace, &self.bindir, &options, &args);
        let _ = stop.send(());
        let (conn, samples) = self.runtime.block_on(sampler)?;
        target.conn = Some(conn);
        let text = text?;
        let tps = parse_tps(&text).with_context(|| format!("reading pgbench's output: {text}"))?;
        Ok(Round { tps, samples })
    }

    /// Before a round: the target's history emptied and small tables vacuumed (as
    /// pgbench does unless `-n`), the standby caught up, a checkpoint on every
    /// cluster, dirty pages flushed.
    fn prepare(&mut self, target: Cluster) -> anyhow::Result<()> {
        let runtime = self.runtime.handle().clone();
        let conn = self.conn(target)?;
        runtime.block_on(async {
            sqlx::raw_sql("TRUNCATE pgbench_history")
                .execute(&mut *conn)
                .await?;
            sqlx::raw_sql("VACUUM pgbench_branches, pgbench_tellers")
                .execute(&mut *conn)
                .await?;
            anyhow::Ok(())
        })?;
        for cluster in [Cluster::Off, Cluster::Primary] {
            let conn = self.conn(cluster)?;
            runtime.block_on(sqlx::raw_sql("CHECKPOINT").execute(conn))?;
        }
        self.wait_sync()?;
        self.wait_replayed()?;
        // On a standby CHECKPOINT makes a restartpoint.
        let conn = self.conn(Cluster::Standby)?;
        runtime.block_on(sqlx::raw_sql("CHECKPOINT").execute(conn))?;
        let _ = Command::new("sync").status();
        Ok(())
    }

    fn close(&mut self) {
        for target in &mut self.targets {
            if let Some(conn) = target.conn.take() {
                let _ = self.runtime.block_on(conn.close());
            }
        }
    }
}

/// Reads [`SAMPLE`] every [`SAMPLE_EVERY`] on `conn` until `stop`; hands the
/// connection back with the samples.
async fn sample(
    mut conn: PgConnection,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> (PgConnection, Vec<Sample>) {
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        let row: Result<(i64, Option<i64>, Option<i64>), _> =
            sqlx::query_as(SAMPLE).fetch_one(&mut conn).await;
        if let Ok((waiting, lag_ms, gap_bytes)) = row {
            samples.push(Sample {
                waiting,
                lag_ms,
                gap_bytes,
            });
        }
    }
    (conn, samples)
}

/// Runs pgbench as postgres inside the namespace `ns` with `PGOPTIONS` set.
fn run_pgbench(ns: &str, bindir: &Path, options: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "setpriv"])
        .arg(format!("--reuid={OS_USER}"))
        .arg(format!("--regid={OS_USER}"))
        .args(["--init-groups", "--"])
        .arg(bindir.join("pgbench"))
        .args(args)
        // libpq reads PGOPTIONS: `-c synchronous_commit=...` for the sessions.
        .env("PGOPTIONS", options)
        .current_dir("/")
        .output()
        .context("running pgbench")?;
    if !out.status.success() {
        bail!("pgbench failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The rate in pgbench's `tps = N (...)` line, when it is a finite, non-negative number.
fn parse_tps(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .filter(|n| n.is_finite() && *n >= 0.0)
}

/// How far apart two runs are: over the modes, the largest of the higher rate over
/// the lower, less one (0.1 is 10 %). Runs of different lengths are infinitely apart.
fn disagreement(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let (lo, hi) = (x.min(y), x.max(y));
            if hi <= 0.0 {
                0.0
            } else if lo <= 0.0 || lo.is_nan() || hi.is_nan() {
                f64::INFINITY
            } else {
                hi / lo - 1.0
            }
        })
        .fold(0.0, f64::max)
}

/// The two runs (earlier first) that are least far apart, and how far; `None` with
/// fewer than two runs.
fn closest_pair(runs: &[Vec<f64>]) -> Option<(usize, usize, f64)> {
    let mut best: Option<(usize, usize, f64)> = None;
    for (i, a) in runs.iter().enumerate() {
        for (j, b) in runs.iter().enumerate().skip(i + 1) {
            let d = disagreement(a, b);
            if best.is_none_or(|(_, _, bd)| d < bd) {
                best = Some((i, j, d));
            }
        }
    }
    best
}

/// The lowest and highest of `values` (0 when there are none).
fn min_max(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo > hi { (0.0, 0.0) } else { (lo, hi) }
}

fn mp_command(lab: &Lab, bin: &Path, dir: &Path, host: Host) -> Command {
    let mut cmd = lab.command(host, &bin.display().to_string());
    cmd.arg("--config")
        .arg(dir.join(format!("{host}.toml")))
        .arg("--state-dir")
        .arg(dir.join(format!("{host}-state")));
    cmd
}

fn write_configs(dir: &Path, servers: &[PgServer]) -> anyhow::Result<()> {
    tandem_peer::keygen(&dir.join("site.key"))?;
    for (server, id, peer) in [(&servers[0], 1, Host::Node2), (&servers[1], 2, Host::Node1)] {
        let host = server.host;
        std::fs::create_dir_all(dir.join(format!("{host}-state")))?;
        let text = format!(
            "[node]\nid = {id}\n\n[network]\nnode_address = \"{}/24\"\npeer_address = \"{}\"\n\n\
             [peer]\nkey_file = \"{}\"\n\n[replication]\nbackend = \"postgres\"\nheartbeat_ms = 200\n\n\
             [replication.postgres]\ndata_dir = \"{}\"\nport = {PORT}\nsocket_dir = \"{}\"\n",
            host.addr(),
            peer.addr(),
            dir.join("site.key").display(),
            server.data_dir.display(),
            server.socket_dir.display()
        );
        std::fs::write(dir.join(format!("{host}.toml")), text)?;
    }
    Ok(())
}

/// The service processes, killed when dropped.
struct Services(Vec<Child>);

impl Drop for Services {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What the sampler saw in one mode over every run.
#[derive(Default)]
struct Lag {
    /// Replay lag, ms, sorted.
    ms: Vec<u64>,
    /// WAL still to replay, bytes, sorted.
    bytes: Vec<u64>,
    samples: u64,
    /// Samples that saw a session waiting for the standby (`SyncRep`).
    waited: u64,
}

impl Lag {
    fn of(samples: &[&Sample]) -> Lag {
        let mut lag = Lag::default();
        for s in samples {
            lag.samples += 1;
            lag.waited += u64::from(s.waiting > 0);
            if let Some(ms) = s.lag_ms.and_then(|v| u64::try_from(v).ok()) {
                lag.ms.push(ms);
            }
            if let Some(b) = s.gap_bytes.and_then(|v| u64::try_from(v).ok()) {
                lag.bytes.push(b);
            }
        }
        lag.ms.sort_unstable();
        lag.bytes.sort_unstable();
        lag
    }

    fn ms(&self, p: f64) -> Option<u64> {
        super::percentile(&self.ms, p)
    }
}

struct Results {
    runs: Vec<Run>,
    /// The two closest runs and how far apart they are.
    pair: (usize, usize, f64),
    setup: Duration,
    took: Duration,
}

impl Results {
    fn agreed(&self) -> bool {
        self.pair.2 <= AGREE
    }

    /// Mode `i`'s rate: the mean of the two closest runs (the only run when one ran).
    fn rate(&self, i: usize) -> f64 {
        let (a, b, _) = self.pair;
        let at = |r: usize| self.runs.get(r).and_then(|r| r.rates.get(i)).copied();
        match (at(a), at(b)) {
            (Some(x), Some(y)) => (x + y) / 2.0,
            (Some(x), None) | (None, Some(x)) => x,
            (None, None) => 0.0,
        }
    }

    /// Mode `i`'s lowest and highest rate over every run.
    fn spread(&self, i: usize) -> (f64, f64) {
        min_max(self.runs.iter().filter_map(|r| r.rates.get(i).copied()))
    }

    /// Mode `i`'s rate over `off`'s at the same clients, and the lowest and highest
    /// such ratio of a single run.
    fn ratio(&self, i: usize) -> (f64, (f64, f64)) {
        let base = base_of(MODES[i].clients).unwrap_or(i);
        let ratio = self.rate(i) / self.rate(base).max(1e-9);
        let spread = min_max(
            self.runs
                .iter()
                .filter_map(|r| Some(r.rates.get(i)? / r.rates.get(base)?.max(1e-9))),
        );
        (ratio, spread)
    }

    fn lag(&self, i: usize) -> Lag {
        let samples: Vec<&Sample> = self
            .runs
            .iter()
            .filter_map(|r| r.samples.get(i))
            .flatten()
            .collect();
        Lag::of(&samples)
    }

    fn agreement_text(&self) -> String {
        let (a, b, d) = self.pair;
        let n = self.runs.len();
        if n < 2 {
            "one run only".to_owned()
        } else if self.agreed() {
            format!(
                "runs {} and {} of {n} agree within {:.1} %",
                a + 1,
                b + 1,
                d * 100.0
            )
        } else {
            format!(
                "no two of {n} runs agree within {:.0} %: the closest, runs {} and {}, are {:.1} % apart",
                AGREE * 100.0,
                a + 1,
                b + 1,
                d * 100.0
            )
        }
    }

    /// The summary lines, as the SQLite rows: each mode beside `off` at the same
    /// number of clients, then how far the runs agreed.
    fn summary(&self) -> Vec<super::Row> {
        let area = "replication postgres";
        let mut rows = Vec::new();
        for (i, mode) in MODES.iter().enumerate() {
            let Some(base) = base_of(mode.clients).filter(|&b| b != i) else {
                continue;
            };
            let (lo, hi) = self.spread(i);
            let lag = self.lag(i);
            let lag = match (mode.commit, lag.ms(50.0), lag.ms(99.0)) {
                (Commit::Async, Some(p50), Some(p99)) => {
                    format!(", replay lag p50 {p50} / p99 {p99} ms")
                }
                _ => String::new(),
            };
            let row = super::Row::new(
                area,
                format!(
                    "{}, {} (tx/s)",
                    mode.commit.what(),
                    clients_text(mode.clients)
                ),
                format!("{:.0} ({lo:.0}-{hi:.0}){lag}", self.rate(i)),
                format!(
                    "off, {}: {:.0}",
                    clients_text(mode.clients),
                    self.rate(base)
                ),
            )
            .ratio(self.rate(i), self.rate(base));
            rows.push(if mode.commit == Commit::On && mode.clients == MANY {
                row.target(
                    format!(">= 0.5 x off ({MANY} clients)"),
                    self.ratio(i).0 >= 0.5,
                )
            } else {
                row
            });
        }
        rows.push(
            super::Row::new(
                area,
                "whole runs: the closest two, every mode's tx/s",
                format!(
                    "{:.1} % apart, {} runs, {:.0} s",
                    self.pair.2 * 100.0,
                    self.runs.len(),
                    self.took.as_secs_f64()
                ),
                "",
            )
            .target(format!("<= {:.0} %", AGREE * 100.0), self.agreed()),
        );
        rows
    }

    fn print(&self) {
        println!(
            "bench replication --backend postgres: pgbench TPC-B-like, scale {SCALE}, {SECONDS} s rounds, \
             node 1 -> node 2 in the namespace lab; every run alternates the modes (CHECKPOINT and sync \
             before each round); tx/s is the mean of the two closest runs, spread the lowest and highest run"
        );
        println!(
            "{:<36} {:>7} {:>7} {:>11} {:>6} {:>11} {:>13} {:>9}",
            "mode", "clients", "tx/s", "spread", "ratio", "spread", "lag p50/p99", "SyncRep"
        );
        for (i, mode) in MODES.iter().enumerate() {
            let (lo, hi) = self.spread(i);
            let (ratio, (rlo, rhi)) = self.ratio(i);
            let lag = self.lag(i);
            let opt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
            println!(
                "{:<36} {:>7} {:>7.0} {:>11} {:>6.2} {:>11} {:>13} {:>9}",
                mode.commit.what(),
                mode.clients,
                self.rate(i),
                format!("{lo:.0}-{hi:.0}"),
                ratio,
                format!("{rlo:.2}-{rhi:.2}"),
                format!("{}/{} ms", opt(lag.ms(50.0)), opt(lag.ms(99.0))),
                format!("{}/{}", lag.waited, lag.samples),
            );
        }
        println!(
            "(SyncRep: samples that saw a session waiting for the standby, of all samples; \
             none is expected for off and async)"
        );
        println!("{}", self.agreement_text());
        self.print_beside_sqlite();
        println!(
            "bench replication --backend postgres took {:.0} s ({:.0} s setting up, {} runs of {})",
            self.took.as_secs_f64(),
            self.setup.as_secs_f64(),
            self.runs.len(),
            self.runs
                .iter()
                .map(|r| format!("{:.0} s", r.took.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    /// Both backends on one table: the SQLite figures of the last
    /// `cargo xtask bench replication` beside this run's, at the same writers.
    fn print_beside_sqlite(&self) {
        let sqlite = super::output_dir()
            .ok()
            .and_then(|d| std::fs::read_to_string(d.join("replication.json")).ok())
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
        let Some(sqlite) = sqlite else {
            println!(
                "(no SQLite figures in target/bench/replication.json: run `cargo xtask bench replication`)"
            );
            return;
        };
        let cell = |key: Option<&str>| {
            let s = key.map(|k| &sqlite["series"][k]);
            match s.and_then(|s| Some((s["tx_per_s"].as_f64()?, s["ratio"].as_f64()?))) {
                Some((tps, ratio)) => format!("{tps:.0} ({ratio:.2})"),
                None => "-".to_owned(),
            }
        };
        let pg = |commit: Commit, clients: u32| {
            MODES
                .iter()
                .position(|m| m.commit == commit && m.clients == clients)
                .map_or_else(
                    || "-".to_owned(),
                    |i| format!("{:.0} ({:.2})", self.rate(i), self.ratio(i).0),
                )
        };
        println!(
            "both backends, tx/s (ratio to the database without replication at the same writers; \
             SQLite from target/bench/replication.json):"
        );
        println!(
            "{:<8} {:<54} {:>14} {:>14}",
            "writers", "commit", "SQLite", "PostgreSQL"
        );
        let lines: [(u32, &str, Option<&str>, Option<Commit>); 7] = [
            (
                1,
                "no replication (unreplicated / off)",
                Some("unreplicated"),
                Some(Commit::Off),
            ),
            (1, "async", Some("async"), Some(Commit::Async)),
            (
                1,
                "standby has it, not durably (received / remote_write)",
                Some("wait_received"),
                Some(Commit::RemoteWrite),
            ),
            (
                1,
                "standby has it durably (flushed / on)",
                Some("wait_replicated"),
                Some(Commit::On),
            ),
            (
                MANY,
                "no replication (unreplicated / off)",
                Some("unreplicated_many"),
                Some(Commit::Off),
            ),
            (
                MANY,
                "standby has it, not durably (received / remote_write)",
                Some("wait_received_many"),
                Some(Commit::RemoteWrite),
            ),
            (
                MANY,
                "standby has it durably (flushed / on)",
                Some("wait_replicated_many"),
                Some(Commit::On),
            ),
        ];
        for (clients, what, key, commit) in lines {
            let pg = commit.map_or_else(|| "-".to_owned(), |c| pg(c, clients));
            println!("{clients:<8} {what:<54} {:>14} {pg:>14}", cell(key));
        }
    }

    fn write_json(&self) -> anyhow::Result<()> {
        let mut series = serde_json::Map::new();
        for (i, mode) in MODES.iter().enumerate() {
            let (lo, hi) = self.spread(i);
            let (ratio, (rlo, rhi)) = self.ratio(i);
            let lag = self.lag(i);
            series.insert(
                mode.key(),
                serde_json::json!({
                    "clients": mode.clients,
                    "synchronous_commit": mode.commit.setting(),
                    "standby": mode.commit != Commit::Off,
                    "tx_per_s": self.rate(i),
                    "tx_per_s_min": lo,
                    "tx_per_s_max": hi,
                    "ratio": ratio,
                    "ratio_min": rlo,
                    "ratio_max": rhi,
                    "replay_lag_ms": { "p50": lag.ms(50.0), "p99": lag.ms(99.0) },
                    "lsn_gap_bytes": {
                        "p50": super::percentile(&lag.bytes, 50.0),
                        "max": lag.bytes.last(),
                    },
                    "samples": lag.samples,
                    "samples_waiting_for_standby": lag.waited,
                }),
            );
        }
        let runs: Vec<serde_json::Value> = self
            .runs
            .iter()
            .map(|r| {
                let rates: serde_json::Map<String, serde_json::Value> = MODES
                    .iter()
                    .zip(&r.rates)
                    .map(|(m, v)| (m.key(), serde_json::json!(v)))
                    .collect();
                serde_json::json!({ "seconds": r.took.as_secs_f64(), "tx_per_s": rates })
            })
            .collect();
        let json = serde_json::json!({
            "area": "replication",
            "backend": "postgres",
            "workload": format!("pgbench tpcb-like, scale {SCALE}, {SECONDS} s rounds"),
            "series": series,
            "runs": runs,
            "closest_runs": [self.pair.0 + 1, self.pair.1 + 1],
            "closest_apart": if self.pair.2.is_finite() { Some(self.pair.2) } else { None },
            "agreed_within": AGREE,
            "agreed": self.agreed(),
            "seconds": self.took.as_secs_f64(),
        });
        let path = super::output_dir()?.join("replication-postgres.json");
        std::fs::write(&path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("written to {}", path.display());
        Ok(())
    }
}

fn clients_text(n: u32) -> String {
    if n == 1 {
        "1 client".to_owned()
    } else {
        format!("{n} clients")
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// pgbench's closing lines around a rate, as PostgreSQL 15 prints them.
    fn pgbench_output(tps: &str, noise: &str) -> String {
        format!(
            "transaction type: <builtin: TPC-B (sort of)>\n{noise}\nnumber of clients: 8\n\
             latency average = 3.1 ms\ninitial connection time = 12.3 ms\n\
             tps = {tps} (without initial connection time)\n"
        )
    }

    proptest! {
        #[test]
        fn the_rate_is_read_back(tps in 0.0f64..1e7, noise in "[ -~]{0,60}") {
            let noise = noise.replace("tps = ", "");
            let text = pgbench_output(&format!("{tps:.6}"), &noise);
            let read = parse_tps(&text);
            prop_assert!(read.is_some_and(|r| (r - tps).abs() < 1e-5), "{text}");
        }

        #[test]
        fn hostile_output_gives_a_finite_rate_or_none(
            lines in proptest::collection::vec(
                prop_oneof![
                    "[ -~]{0,40}",
                    "tps = [ -~]{0,20}",
                    Just("tps = NaN (x)".to_owned()),
                    Just("tps = inf".to_owned()),
                    Just("tps = -3".to_owned()),
                    Just("tps = ".to_owned()),
                ],
                0..8,
            )
        ) {
            if let Some(tps) = parse_tps(&lines.join("\n")) {
                prop_assert!(tps.is_finite() && tps >= 0.0);
            }
        }

        #[test]
        fn runs_agree_as_far_as_their_worst_mode(
            base in proptest::collection::vec(1.0f64..1e5, 1..9),
            factors in proptest::collection::vec(0.5f64..2.0, 9),
        ) {
            let other: Vec<f64> = base.iter().zip(&factors).map(|(b, f)| b * f).collect();
            let d = disagreement(&base, &other);
            prop_assert!((d - disagreement(&other, &base)).abs() < 1e-12);
            prop_assert!(disagreement(&base, &base) == 0.0);
            let worst = base
                .iter()
                .zip(&other)
                .map(|(a, b)| a.max(*b) / a.min(*b) - 1.0)
                .fold(0.0, f64::max);
            prop_assert!((d - worst).abs() < 1e-9);
            prop_assert!(disagreement(&base, &other[..base.len() - 1]).is_infinite());
        }

        #[test]
        fn the_closest_pair_is_no_farther_than_any_other(
            runs in proptest::collection::vec(
                proptest::collection::vec(prop_oneof![9 => 1.0f64..1e4, 1 => Just(0.0)], 7),
                0..6,
            )
        ) {
            match closest_pair(&runs) {
                None => prop_assert!(runs.len() < 2),
                Some((i, j, d)) => {
                    prop_assert!(i < j && j < runs.len());
                    prop_assert_eq!(d, disagreement(&runs[i], &runs[j]));
                    for (a, x) in runs.iter().enumerate() {
                        for y in runs.iter().skip(a + 1) {
                            prop_assert!(d <= disagreement(x, y));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn every_mode_has_an_off_beside_it() {
        for mode in MODES {
            assert!(base_of(mode.clients).is_some(), "{mode:?}");
        }
        let keys: std::collections::BTreeSet<String> = MODES.iter().map(|m| m.key()).collect();
        assert_eq!(keys.len(), MODES.len());
    }

    #[test]
    fn the_spread_of_nothing_is_zero() {
        assert_eq!(min_max(std::iter::empty()), (0.0, 0.0));
        assert_eq!(min_max([3.0, 1.0, 2.0].into_iter()), (1.0, 3.0));
    }
}
