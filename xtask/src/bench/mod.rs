//! `cargo xtask bench`: speed and memory beside their baselines, from one run.
//!
//! Each area lives in its own module with a `run` function that prints its own
//! detailed table, writes it as JSON under `target/bench/<area>.json` and returns
//! its lines for the summary: one table of every measure beside its baseline and
//! the target, printed at the end of the run and written to
//! `target/bench/summary.json`.

mod bundle;
pub(crate) mod failover;
mod growth;
mod link;
mod netif;
pub(crate) mod relay;
mod replication;
mod replication_postgres;
mod soak;

use std::path::PathBuf;

use anyhow::Context;

/// Arguments of `cargo xtask bench`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// What to measure; all areas when omitted.
    #[arg(value_enum)]
    area: Option<Area>,
    /// The replication backend to measure (`replication` area; both when no
    /// area is named).
    #[arg(long, value_enum, default_value = "sqlite")]
    backend: Backend,
    /// Runs per setting of the `failover` area (20 for the figures).
    #[arg(long, default_value_t = failover::RUNS)]
    runs: usize,
    /// Only these settings of the `failover` area, each `tandem:<heartbeat ms>`
    /// or `keepalived:<advert_int s>` (all five when omitted).
    #[arg(long = "system", value_name = "SETTING")]
    systems: Vec<String>,
    /// Seconds per case of the `link` area (three cases on three link speeds).
    #[arg(long, default_value_t = link::SECONDS)]
    seconds: u64,
    /// Minutes per system of the `soak` area (fractions allowed: 0.25 is 15 s).
    #[arg(long, default_value_t = soak::MINUTES as f64)]
    minutes: f64,
    /// Row changes made on node 1 while node 2 is away (`growth` area).
    #[arg(long, default_value_t = growth::CHANGES)]
    changes: u64,
    /// Size in MiB of the database of the large from-sync (`growth` area).
    #[arg(long, default_value_t = growth::DB_MIB)]
    db_mib: u64,
    /// Measure the `link` area in this process and print the measurements as
    /// JSON on stdout, without tables or summary (a debug build runs the
    /// release build this way).
    #[arg(long, hide = true)]
    link_raw: bool,
    /// Other `mp_replication` binaries (say, a release build of `main`; named in
    /// the results by their file names) that the SQLite `replication` area
    /// measures round by round beside this tree's, each on databases of its own:
    /// an A/B in one run. Repeatable.
    #[arg(long, value_name = "BINARY")]
    against: Vec<PathBuf>,
    /// A release build of this tree's `mp_replication` for the SQLite
    /// `replication` area to use instead of building one.
    #[arg(long, value_name = "BINARY")]
    built: Option<PathBuf>,
    /// Let the SQLite `replication` area's writer (and the baseline's) run on
    /// every CPU, as before 2026-12-07, instead of one: the kernel then spreads
    /// its two threads over idle cores, which costs the writer about 40 % and
    /// makes the ratios depend on how busy the services keep the other core.
    #[arg(long)]
    writer_on_all_cpus: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Backend {
    /// The embedded SQLite backend.
    Sqlite,
    /// PostgreSQL's streaming replication (needs PostgreSQL 15).
    Postgres,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Area {
    /// Config-file bundles: create and restore beside GNU tar.
    Bundle,
    /// Client outage of unplanned failovers beside keepalived, planned
    /// switchovers, and the agent's memory and CPU.
    Failover,
    /// How cost grows on the SQLite backend: a standby's catch-up after
    /// `--changes` changes beside a from-sync of the same database, a from-sync
    /// of `--db-mib` MiB beside the file copied over plain TCP, node 1's commit
    /// rate during each, and the services' memory and CPU, in the lab.
    Growth,
    /// Ping round trips beside a bulk stream on one peer-link session or on
    /// two, on the raw veth and limited to 1 Gbit/s and 100 Mbit/s, in the lab.
    Link,
    /// Probe round trip and takeover time in the lab.
    Netif,
    /// Committed transactions per second with replication off, async and waiting for
    /// the standby, and replication lag, in the lab (`--backend postgres`: pgbench).
    Replication,
    /// False failovers and peer-lost alarms under CPU, disk and network stress,
    /// tandem at its smallest heartbeat beside keepalived at its smallest
    /// interval, in the lab.
    Soak,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let link_options = link::Options {
        seconds: args.seconds,
    };
    if args.link_raw {
        return link::run_raw(&link_options);
    }
    // (area, backend) pairs; all areas and both backends when none is named.
    let areas = match args.area {
        Some(area) => vec![(area, args.backend)],
        None => vec![
            (Area::Bundle, Backend::Sqlite),
            (Area::Netif, Backend::Sqlite),
            (Area::Link, Backend::Sqlite),
            (Area::Replication, Backend::Sqlite),
            (Area::Replication, Backend::Postgres),
            (Area::Failover, Backend::Sqlite),
            (Area::Soak, Backend::Sqlite),
            (Area::Growth, Backend::Sqlite),
        ],
    };
    let started = std::time::Instant::now();
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for (area, backend) in areas {
        let (name, result) = match (area, backend) {
            (Area::Bundle, _) => ("bundle", bundle::run()),
            (Area::Failover, _) => (
                "failover",
                failover::run(&failover::Options {
                    runs: args.runs,
                    systems: args.systems.clone(),
                }),
            ),
            (Area::Growth, _) => (
                "growth",
                growth::run(&growth::Options {
                    changes: args.changes,
                    db_mib: args.db_mib,
                }),
            ),
            (Area::Link, _) => ("link", link::run(&link_options)),
            (Area::Netif, _) => ("netif", netif::run()),
            (Area::Replication, Backend::Postgres) => (
                "replication --backend postgres",
                replication_postgres::run(),
            ),
            (Area::Replication, Backend::Sqlite) => (
                "replication",
                replication::run(&replication::Options {
                    against: args.against.clone(),
                    built: args.built.clone(),
                    writer_on_all_cpus: args.writer_on_all_cpus,
                }),
            ),
            (Area::Soak, _) => (
                "soak",
                soak_options(args.minutes).and_then(|o| soak::run(&o)),
            ),
        };
        match result {
            Ok(mut area_rows) => rows.append(&mut area_rows),
            Err(e) => {
                // One area failing does not hide the others' numbers.
                eprintln!("bench {name} failed: {e:#}");
                failed.push(name);
            }
        }
    }
    print_summary(&rows, started.elapsed());
    write_summary(&rows, &failed)?;
    if !failed.is_empty() {
        anyhow::bail!("bench areas failed: {}", failed.join(", "));
    }
    Ok(())
}

/// The soak's options from `--minutes`.
fn soak_options(minutes: f64) -> anyhow::Result<soak::Options> {
    if !(minutes.is_finite() && minutes > 0.0 && minutes <= 24.0 * 60.0) {
        anyhow::bail!("--minutes {minutes}: give a length from above 0 to 1440 minutes");
    }
    Ok(soak::Options {
        length: std::time::Duration::from_secs_f64(minutes * 60.0),
    })
}

/// One line of the summary table: a measure of tandem beside its baseline.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Row {
    /// The bench area (`bundle`, `failover`, ...).
    pub area: &'static str,
    /// What is measured, with its unit.
    pub measure: String,
    /// tandem's figure, as text (`721 / 809 ms`).
    pub tandem: String,
    /// The baseline and its figure (`keepalived advert_int 1: 3,301 / 3,545 ms`),
    /// empty when there is none.
    pub baseline: String,
    /// tandem's figure over the baseline's, when both are one number.
    pub ratio: Option<f64>,
    /// The target for this measure and whether this run met it.
    pub target: Option<Target>,
}

/// A target of the issue and whether a run met it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Target {
    /// The target in words (`< 1 s`).
    pub text: String,
    /// Whether this run met it.
    pub met: bool,
}

impl Row {
    /// A row without a ratio or target.
    pub(crate) fn new(
        area: &'static str,
        measure: impl Into<String>,
        tandem: impl Into<String>,
        baseline: impl Into<String>,
    ) -> Row {
        Row {
            area,
            measure: measure.into(),
            tandem: tandem.into(),
            baseline: baseline.into(),
            ratio: None,
            target: None,
        }
    }

    /// Sets the ratio of tandem's figure to the baseline's.
    pub(crate) fn ratio(mut self, tandem: f64, baseline: f64) -> Row {
        self.ratio = (baseline > 0.0).then(|| tandem / baseline);
        self
    }

    /// Sets the target and whether it was met.
    pub(crate) fn target(mut self, text: impl Into<String>, met: bool) -> Row {
        self.target = Some(Target {
            text: text.into(),
            met,
        });
        self
    }
}

fn print_summary(rows: &[Row], took: std::time::Duration) {
    println!(
        "\n=== tandem bench summary ({:.0} s) ===",
        took.as_secs_f64()
    );
    let width =
        |f: &dyn Fn(&Row) -> usize, min: usize| rows.iter().map(f).max().unwrap_or(0).max(min);
    let (wa, wm, wt, wb) = (
        width(&|r| r.area.len(), 4),
        width(&|r| r.measure.len(), 7),
        width(&|r| r.tandem.len(), 6),
        width(&|r| r.baseline.len(), 8),
    );
    println!(
        "{:<wa$}  {:<wm$}  {:>wt$}  {:<wb$}  {:>6}  target",
        "area", "measure", "tandem", "baseline", "ratio"
    );
    for r in rows {
        let ratio = r.ratio.map(|x| format!("{x:.2}")).unwrap_or_default();
        let target = r
            .target
            .as_ref()
            .map(|t| format!("{} {}", t.text, if t.met { "met" } else { "MISSED" }))
            .unwrap_or_default();
        println!(
            "{:<wa$}  {:<wm$}  {:>wt$}  {:<wb$}  {:>6}  {target}",
            r.area, r.measure, r.tandem, r.baseline, ratio
        );
    }
}

fn write_summary(rows: &[Row], failed: &[&str]) -> anyhow::Result<()> {
    let path = output_dir()?.join("summary.json");
    let json = serde_json::json!({ "rows": rows, "failed_areas": failed });
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("summary written to {}", path.display());
    Ok(())
}

/// Names a directory holding already-built `failover` and `mp_replication`
/// binaries (and `xtask`, for `link`) for [`build_release`] to use instead of
/// building release ones (the tests of the bench areas set it to the debug build).
pub(crate) const BIN_DIR_ENV: &str = "TANDEM_BENCH_BIN_DIR";

/// Builds the release binaries of `packages` and returns the release directory.
/// With [`BIN_DIR_ENV`] set, that directory instead, when it holds all of them.
pub(crate) fn build_release(packages: &[&str]) -> anyhow::Result<PathBuf> {
    // A test of an area runs it with the binaries `cargo test` built, rather
    // than paying for a release build; its numbers are not figures of record.
    // A directory that lacks one (a release xtask, for `link`) falls back to
    // the build, so that a whole `bench` run with it measures every area.
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV).map(PathBuf::from)
        && packages.iter().all(|p| dir.join(p).exists())
    {
        return Ok(dir);
    }
    let root = crate::workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "--release", "--quiet"]);
    for package in packages {
        cmd.args(["-p", package]);
    }
    let status = cmd
        .current_dir(&root)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        anyhow::bail!("building {} failed", packages.join(", "));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("release"))
}

/// The `p`th percentile (0 to 100) of `sorted` by nearest rank; `None` when
/// there are no samples. Every area reports its medians and p99s with it.
pub(crate) fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    let len = sorted.len();
    if len == 0 {
        return None;
    }
    let rank = ((p / 100.0) * len as f64).ceil() as usize;
    sorted.get(rank.clamp(1, len) - 1).copied()
}

/// Where benchmark results are written: `target/bench/` under the workspace root.
pub(crate) fn output_dir() -> anyhow::Result<PathBuf> {
    let dir = crate::workspace_root().join("target").join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::percentile;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&samples, 99.0), Some(Duration::from_millis(99)));
        let few: Vec<Duration> = (1..=3).map(Duration::from_millis).collect();
        assert_eq!(percentile(&few, 99.0), Some(Duration::from_millis(3)));
        assert_eq!(percentile(&few, 0.0), Some(Duration::from_millis(1)));
        assert_eq!(percentile::<Duration>(&[], 50.0), None);
    }
}
