//! tandem's automation, run as `cargo xtask <command>`.
//!
//! - `lab up|down|status|exec|cut|uncut|partition|heal`: the namespace lab of
//!   `DESIGN.md` for people, with cables to cut for rehearsing a failover.
//! - `demo`: the README's main job, the seed's procedures in the lab.
//! - `bench [area]`: speed and memory beside their baselines.
//! - `chaos --trials N`: randomised faults in the lab, each trial checked for two
//!   holders of the shared address, lost acknowledged writes, damaged files and
//!   nodes not back in a stated role.
//! - `ci`: what `.ci/run` runs.
//!
//! xtask never ships to users; it may use `anyhow` and print freely.

mod bench;
mod chaos;
mod ci;
mod demo;
mod lab;
mod pgsite;
mod site;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// tandem's automation.
#[derive(Parser)]
#[command(name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build, inspect or remove the namespace lab (node1, node2, client on one bridge).
    Lab(lab::Args),
    /// Run the seed's procedures in the lab (the README's main job).
    Demo(demo::Args),
    /// Measure speed and memory beside the baselines (GNU tar, keepalived, unreplicated commits).
    Bench(bench::Args),
    /// Randomised faults in the lab (kills, cuts, partitions, simultaneous boots,
    /// restarts mid-command, a full disk), each trial checked for safety.
    Chaos(chaos::Args),
    /// Run what CI runs: fmt, clippy, the whole test suite.
    Ci(ci::Args),
    /// One end of the replication bench's floor (a relay or an echo in a lab node).
    #[command(hide = true)]
    Relay(bench::relay::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Lab(args) => lab::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Chaos(args) => chaos::run(args),
        Command::Ci(args) => ci::run(args),
        Command::Relay(args) => bench::relay::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (the parent of the xtask package).
fn workspace_root() -> std::path::PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}
