//! `cargo xtask bench`: speed and memory beside their baselines, from one run.
//!
//! Each area lives in its own module with a `run` function; results print as a
//! table and are written as JSON under `target/bench/`.

mod bundle;
mod failover;
mod netif;
mod replication;
mod replication_postgres;

use std::path::PathBuf;

use anyhow::Context;

/// Arguments of `cargo xtask bench`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// What to measure; all areas when omitted.
    #[arg(value_enum)]
    area: Option<Area>,
    /// The replication backend to measure (`replication` area).
    #[arg(long, value_enum, default_value = "sqlite")]
    backend: Backend,
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
    /// Probe round trip and takeover time in the lab.
    Netif,
    /// Committed transactions per second with replication off, async and waiting for
    /// the standby, and replication lag, in the lab (`--backend postgres`: pgbench).
    Replication,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let areas = match args.area {
        Some(area) => vec![area],
        None => vec![Area::Bundle, Area::Netif, Area::Replication, Area::Failover],
    };
    for area in areas {
        match area {
            Area::Bundle => bundle::run().context("bench bundle")?,
            Area::Failover => failover::run().context("bench failover")?,
            Area::Netif => netif::run().context("bench netif")?,
            Area::Replication if args.backend == Backend::Postgres => {
                replication_postgres::run().context("bench replication --backend postgres")?;
            }
            Area::Replication => replication::run().context("bench replication")?,
        }
    }
    Ok(())
}

/// Builds the release binaries of `packages` and returns the release directory.
pub(crate) fn build_release(packages: &[&str]) -> anyhow::Result<PathBuf> {
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

/// Where benchmark results are written: `target/bench/` under the workspace root.
pub(crate) fn output_dir() -> anyhow::Result<PathBuf> {
    let dir = crate::workspace_root().join("target").join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
