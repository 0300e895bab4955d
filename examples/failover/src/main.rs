//! `failover`: the seed's `failoverUtil`, as a thin command line over tandem's
//! crates. One module per command group; each parses its arguments, calls the
//! library and prints the result (text, or JSON with `--json`).
//!
//! Exit codes: 0 success, 1 failure (the error is printed with its causes),
//! 2 usage error.

/// `println!` for this tool: writes through [`write_stdout`], which ends the
/// program quietly when stdout is a closed pipe (`failover status | head -1`)
/// instead of panicking as `std`'s macro does. Defined before the modules so
/// that every module's `println!` is this one.
macro_rules! println {
    () => {
        $crate::write_stdout(format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::write_stdout(format_args!($($arg)*), true)
    };
}

/// `print!` for this tool, like [`println!`].
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::write_stdout(format_args!($($arg)*), false)
    };
}

mod agent;
mod check;
mod config_files;
mod progress;
mod roles;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Default node config file.
const DEFAULT_CONFIG: &str = "/etc/tandem/node.toml";

/// tandem's failover tool: roles, addresses and config files of a two-node site.
#[derive(Parser)]
#[command(name = "failover", version, about)]
struct Cli {
    /// The node config (TOML).
    #[arg(long, global = true, value_name = "FILE", env = "TANDEM_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// The node's state directory.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "TANDEM_STATE_DIR",
        default_value = "/var/lib/tandem"
    )]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

/// Paths every command group shares.
struct Common {
    config: PathBuf,
    /// Whether `--config` (or `TANDEM_CONFIG`) named the file, rather than the default.
    config_given: bool,
    state_dir: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Make this node part of a failover deployment (asks for the node address,
    /// subnet mask, gateway and hostname when flags do not give them) or a
    /// single-server one. The node is left standby.
    #[command(visible_alias = "setDeployment")]
    SetDeployment(roles::SetDeploymentArgs),
    /// Make this node the active server (it claims the shared address once a
    /// probe finds it silent and the gateway answers) or the standby.
    #[command(visible_alias = "setServer")]
    SetServer(roles::SetServerArgs),
    /// Make this standby node active in one step, with the peer's help: the
    /// active peer's agent stands down (as `set-server standby` there would) and
    /// this node takes over as soon as it hears the release. Both agents must
    /// run and be linked; when the active node is down, use `set-server active`.
    /// Refused, before the peer is asked, while this node's database does not
    /// apply the peer's changes (see `mp_replication status`). Prints both
    /// nodes' steps, the peer's as `peer: <step>`.
    Switchover(roles::JsonArgs),
    /// Show this node's deployment, role, epoch, peer and alarms.
    Status(roles::JsonArgs),
    /// Make the boot decision of the seed without the agent: probe the shared
    /// address and claim it only if nothing answers.
    Boot(roles::JsonArgs),
    /// Run the node agent in the foreground (boot decision, peer link, conflict
    /// watch, control socket for the other commands).
    Agent(agent::AgentArgs),
    /// Make the site key that both nodes share for the peer link.
    Keygen(roles::KeygenArgs),
    /// Bundle the copied config files and custom prompts for the standby.
    #[command(visible_alias = "copyConfigFiles")]
    CopyConfigFiles(config_files::CopyArgs),
    /// Verify a received bundle and put its files in place (or roll back).
    #[command(visible_alias = "restoreConfigFiles")]
    RestoreConfigFiles(config_files::RestoreArgs),
    /// Check the seed's prerequisites: forward and reverse DNS of the shared and
    /// both node hostnames, the clock offset to the peer, that the peer's UDP
    /// heartbeats arrive, the same shared address and site key on both nodes,
    /// distinct node ids, the database size. Exit 1 when a check fails.
    Check(check::CheckArgs),
}

/// Writes to stdout. A reader that went away (`| head -1`) ends the program with
/// status 0, as it has all it wanted; any other write error ends it with 1.
fn write_stdout(args: std::fmt::Arguments<'_>, newline: bool) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let mut written = out.write_fmt(args);
    if newline && written.is_ok() {
        written = out.write_all(b"\n");
    }
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let common = Common {
        config_given: cli.config.as_os_str() != DEFAULT_CONFIG,
        config: cli.config,
        state_dir: cli.state_dir,
    };
    match cli.command {
        Command::SetDeployment(args) => roles::set_deployment(&common, &args),
        Command::SetServer(args) => roles::set_server(&common, &args),
        Command::Switchover(args) => roles::switchover(&common, &args),
        Command::Status(args) => roles::status(&common, &args),
        Command::Boot(args) => roles::boot(&common, &args),
        Command::Agent(args) => agent::run(&common, &args),
        Command::Keygen(args) => roles::keygen(&args),
        Command::CopyConfigFiles(args) => config_files::copy(&common, &args),
        Command::RestoreConfigFiles(args) => config_files::restore(&common, &args),
        Command::Check(args) => check::run(&common, &args),
    }
}
