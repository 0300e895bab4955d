//! `cargo xtask bench replication`: committed transactions per second of the sample
//! workload (5 rows over the three sample tables per transaction) on node 1 of the
//! namespace lab, with node 2 replicating over the real peer link:
//!
//! - `unreplicated`: the same database without tandem (no triggers) — the baseline;
//! - `off`: replication initialized but switched off (guard triggers only);
//! - `async`: replication on, commits do not wait (lag = commit until node 2's
//!   acknowledgement is seen on node 1, p50/p99);
//! - `wait_replicated`: every commit waits until node 2 has it (latency p50/p99).
//!
//! Each rate is also given as a ratio to the unreplicated rate. Everything runs the
//! release build of `mp_replication`: `service` on both nodes, and the writer (the
//! hidden `write-sample` command, one process per phase, which prints a line per
//! commit) on node 1; this process reads those lines and node 1's acknowledged
//! position. Dirty pages are flushed (`sync`) before each phase. Needs root (the
//! lab). Results print as a table and go to `target/bench/replication.json`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tandem_lab::{Host, Lab, LabConfig};
use tandem_replication::{
    Position, ReplicationBackend, ReplicationConfig, Settings, SqliteBackend, sample,
};

/// Rounds of each mode.
const ROUNDS: usize = 3;
/// Transactions per round of the unreplicated, off and async modes.
const TRANSACTIONS: u64 = 1000;
/// Transactions per round of the wait_replicated mode (each waits for a round trip).
const WAITED: u64 = 300;
/// Untimed transactions before the first timed phase on a database, numbered from
/// [`WARM_UP_FIRST`].
const WARM_UP: u64 = 1000;
/// The first transaction number of the warm-ups.
const WARM_UP_FIRST: u64 = 1_000_000;
/// Rows per transaction.
const ROWS: u32 = 5;

pub(crate) fn run() -> anyhow::Result<Vec<super::Row>> {
    let bin = build_release()?;
    let lab = Lab::up(LabConfig::default()).context("building the namespace lab (needs root)")?;
    let dir = tempfile::tempdir()?;
    let mut services = Services(Vec::new());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    write_configs(dir.path())?;
    let bench = Bench {
        lab: &lab,
        bin: &bin,
        dir: dir.path(),
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
    bench.write("unreplicated", Host::Node1, WARM_UP_FIRST, WARM_UP, false)?;

    bench.mp(Host::Node2, &["init", "-n", "2", "-r", "192.0.2.11"])?;
    bench.mp(Host::Node1, &["init", "-n", "1", "-r", "192.0.2.12"])?;
    for host in [Host::Node1, Host::Node2] {
        services.start(&bench, host)?;
    }
    let node1 = Arc::new(runtime.block_on(SqliteBackend::open(&settings(dir.path(), "node1")))?);
    let node2 = runtime.block_on(SqliteBackend::open(&settings(dir.path(), "node2")))?;
    wait_until("the services", Duration::from_secs(30), || {
        Ok(node1.service_running() && node2.service_running())
    })?;
    bench.mp(Host::Node1, &["switch-on"])?;
    bench.mp(Host::Node1, &["promote"])?;
    bench.write("node1", Host::Node1, WARM_UP_FIRST, WARM_UP, false)?;
    let warm_head = runtime.block_on(node1.head())?;
    runtime.block_on(node1.wait_replicated(warm_head, Duration::from_secs(120)))?;

    // Rounds alternate the modes, so that drift in the machine's load and disk hits
    // them alike; each mode's rate is the median of its rounds.
    let (mut plain_next, mut next) = (1, 1);
    let mut unreplicated = Vec::new();
    let (mut asynchronous, mut waited, mut off) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        unreplicated.push(
            bench
                .write("unreplicated", Host::Node1, plain_next, TRANSACTIONS, false)?
                .0,
        );
        plain_next += TRANSACTIONS;
        asynchronous.push(async_round(&bench, &runtime, &node1, next)?);
        next += TRANSACTIONS;
        waited.push(bench.write("node1", Host::Node1, next, WAITED, true)?.0);
        next += WAITED;
    }
    bench.mp(Host::Node1, &["switch-off"])?;
    for _ in 0..ROUNDS {
        unreplicated.push(
            bench
                .write("unreplicated", Host::Node1, plain_next, TRANSACTIONS, false)?
                .0,
        );
        plain_next += TRANSACTIONS;
        off.push(
            bench
                .write("node1", Host::Node1, next, TRANSACTIONS, false)?
                .0,
        );
        next += TRANSACTIONS;
    }
    let (unreplicated, asynchronous, waited, off) = (
        Phase::combine(unreplicated),
        Phase::combine(asynchronous),
        Phase::combine(waited),
        Phase::combine(off),
    );

    let sums1 = runtime.block_on(node1.table_checksums())?;
    drop(services);
    let results = Results {
        unreplicated,
        off,
        asynchronous,
        waited,
        rows: sums1.iter().map(|s| s.rows).sum(),
    };
    results.print();
    results.write_json()?;
    Ok(results.summary())
}

/// What the phases share.
struct Bench<'a> {
    lab: &'a Lab,
    bin: &'a Path,
    dir: &'a Path,
}

impl Bench<'_> {
    /// `mp_replication` on `host` with the node's config and state dir `state`.
    fn command(&self, host: Host, state: &str) -> Command {
        let mut cmd = self.lab.command(host, &self.bin.display().to_string());
        cmd.arg("--config")
            .arg(self.dir.join(format!("{host}.toml")))
            .arg("--state-dir")
            .arg(self.dir.join(state));
        cmd
    }

    fn mp(&self, host: Host, args: &[&str]) -> anyhow::Result<()> {
        let out = self.command(host, host.name()).args(args).output()?;
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

    /// Runs the writer on the database in state dir `state`: `count` transactions from
    /// number `first`. Returns the phase (with the waited latencies for `wait`) and the
    /// commit times as this process saw the writer's lines.
    fn write(
        &self,
        state: &str,
        host: Host,
        first: u64,
        count: u64,
        wait: bool,
    ) -> anyhow::Result<(Phase, Vec<(Instant, Position)>)> {
        let _ = Command::new("sync").status();
        let (f, c, r) = (first.to_string(), count.to_string(), ROWS.to_string());
        let mut cmd = self.command(host, state);
        cmd.args(["write-sample", "--first", &f, "--count", &c, "--rows", &r]);
        if wait {
            cmd.arg("--wait-replicated");
        }
        let started = Instant::now();
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the writer")?;
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
        delays.sort();
        Ok((Phase::new(count, elapsed, delays), commits))
    }
}

/// One asynchronous round: the writer runs while this process watches node 1's
/// acknowledged position; the lag of a commit is the time until the position covers it.
fn async_round(
    bench: &Bench<'_>,
    runtime: &tokio::runtime::Runtime,
    node1: &Arc<SqliteBackend>,
    first: u64,
) -> anyhow::Result<Phase> {
    let watched = Arc::clone(node1);
    let (stop_tx, mut stop) = tokio::sync::oneshot::channel::<()>();
    let watcher = runtime.spawn(async move {
        let mut seen: Vec<(Instant, Position)> = Vec::new();
        loop {
            let acked = watched.acked().await?;
            if seen.last().is_none_or(|(_, p)| *p < acked) {
                seen.push((Instant::now(), acked));
            }
            tokio::select! {
                _ = &mut stop => return anyhow::Ok(seen),
                () = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
    });
    let (mut phase, commits) = bench.write("node1", Host::Node1, first, TRANSACTIONS, false)?;
    let last = commits.last().map_or(Position(0), |(_, p)| *p);
    runtime.block_on(node1.wait_replicated(last, Duration::from_secs(120)))?;
    std::thread::sleep(Duration::from_millis(5));
    let _ = stop_tx.send(());
    let seen = runtime.block_on(watcher)??;
    phase.delays = commits
        .iter()
        .filter_map(|(at, p)| {
            seen.iter()
                .find(|(_, acked)| acked >= p)
                .map(|(when, _)| when.saturating_duration_since(*at))
        })
        .collect();
    phase.delays.sort();
    Ok(phase)
}

/// Builds the release `mp_replication` and returns its path.
pub(super) fn build_release() -> anyhow::Result<PathBuf> {
    Ok(super::build_release(&["mp_replication"])?.join("mp_replication"))
}

fn write_configs(dir: &Path) -> anyhow::Result<()> {
    tandem_peer::keygen(&dir.join("site.key"))?;
    for (host, id, peer) in [(Host::Node1, 1, Host::Node2), (Host::Node2, 2, Host::Node1)] {
        let text = format!(
            "[node]\nid = {id}\n\n[network]\nnode_address = \"{}/24\"\npeer_address = \"{}\"\n\n\
             [peer]\nkey_file = \"{}\"\n\n[replication]\nsample_schema = true\n",
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
    Settings::new(dir.join(state), cfg)
}

/// The service processes, killed when dropped.
struct Services(Vec<Child>);

impl Services {
    fn start(&mut self, bench: &Bench<'_>, host: Host) -> anyhow::Result<()> {
        let log = std::fs::File::create(bench.dir.join(format!("{host}-service.log")))?;
        let child = bench
            .command(host, host.name())
            .arg("service")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting mp_replication service")?;
        self.0.push(child);
        Ok(())
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
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

    fn percentile(&self, p: f64) -> Option<Duration> {
        if self.delays.is_empty() {
            return None;
        }
        let i = ((self.delays.len() - 1) as f64 * p).round() as usize;
        self.delays.get(i).copied()
    }
}

struct Results {
    unreplicated: Phase,
    off: Phase,
    asynchronous: Phase,
    waited: Phase,
    rows: u64,
}

impl Results {
    fn rows(&self) -> [(&'static str, &'static str, &Phase); 4] {
        [
            (
                "unreplicated",
                "unreplicated (no tandem)",
                &self.unreplicated,
            ),
            ("off", "replication off", &self.off),
            (
                "async",
                "async (lag: commit to ack seen)",
                &self.asynchronous,
            ),
            (
                "wait_replicated",
                "wait_replicated (commit to ack)",
                &self.waited,
            ),
        ]
    }

    /// The summary lines: each mode's rate beside the unreplicated one, with its
    /// lag or latency.
    fn summary(&self) -> Vec<super::Row> {
        let base = self.unreplicated.rate();
        let ms = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e3);
        self.rows()
            .into_iter()
            .filter(|(key, _, _)| *key != "unreplicated")
            .map(|(key, what, phase)| {
                let delays = if phase.delays.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", p50 {:.1} / p99 {:.1} ms",
                        ms(phase.percentile(0.5)),
                        ms(phase.percentile(0.99))
                    )
                };
                let row = super::Row::new(
                    "replication sqlite",
                    format!("{what}, 1 writer (tx/s)"),
                    format!("{:.0}{delays}", phase.rate()),
                    format!("unreplicated {base:.0}"),
                )
                .ratio(phase.rate(), base);
                if key == "wait_replicated" {
                    row.target(">= 0.5 x unreplicated", phase.rate() >= base / 2.0)
                } else {
                    row
                }
            })
            .collect()
    }

    fn print(&self) {
        let base = self.unreplicated.rate();
        println!(
            "bench replication: sample workload, {ROWS} rows per transaction, node 1 -> node 2 in the namespace lab, \
             median of {ROUNDS} alternating rounds"
        );
        println!(
            "{:<36} {:>8} {:>10} {:>8} {:>10} {:>10}",
            "mode", "txs", "tx/s", "ratio", "p50", "p99"
        );
        for (_, what, phase) in self.rows() {
            let ms = |d: Option<Duration>| {
                d.map_or_else(
                    || "-".to_owned(),
                    |d| format!("{:.2} ms", d.as_secs_f64() * 1e3),
                )
            };
            println!(
                "{:<36} {:>8} {:>10.0} {:>8.2} {:>10} {:>10}",
                what,
                phase.transactions,
                phase.rate(),
                phase.rate() / base,
                ms(phase.percentile(0.5)),
                ms(phase.percentile(0.99)),
            );
        }
        println!("rows on node 1 at the end: {}", self.rows);
    }

    fn write_json(&self) -> anyhow::Result<()> {
        let base = self.unreplicated.rate();
        let ms = |d: Option<Duration>| {
            d.map_or_else(
                || "null".to_owned(),
                |d| format!("{:.3}", d.as_secs_f64() * 1e3),
            )
        };
        let mut out = format!(
            "{{\n  \"area\": \"replication\",\n  \"rows_per_transaction\": {ROWS},\n  \"series\": {{\n"
        );
        let rows = self.rows();
        for (i, (key, _, p)) in rows.iter().enumerate() {
            let comma = if i + 1 == rows.len() { "" } else { "," };
            out.push_str(&format!(
                "    \"{key}\": {{ \"transactions\": {}, \"tx_per_s\": {:.1}, \"ratio\": {:.3}, \"p50_ms\": {}, \"p99_ms\": {} }}{comma}\n",
                p.transactions,
                p.rate(),
                p.rate() / base,
                ms(p.percentile(0.5)),
                ms(p.percentile(0.99)),
            ));
        }
        out.push_str("  }\n}\n");
        let path = super::output_dir()?.join("replication.json");
        std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
        println!("written to {}", path.display());
        Ok(())
    }
}
