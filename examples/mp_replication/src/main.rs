//! `mp_replication`: database replication control for a tandem site, as in the seed
//! (`mp_replication init / switchON / status`).
//!
//! ```text
//! mp_replication init -n 1|2 -r REMOTE [-v]
//! mp_replication switch-on [-S] [-F from-sync] [-v]      (alias switchON)
//! mp_replication switch-off [-v]                         (alias switchOFF)
//! mp_replication status [--json]
//! mp_replication restore-local-rows FILE [--dry-run] [--json]
//! ```
//!
//! Commands that change replication end with the seed's line `Database Replication
//! changes for this machine (Host = H; IP Addr = A) is SUCCESSFUL` (or `FAILED:` and
//! the reason, with exit status 1). `service` runs the replication service that the
//! node agent hosts; `promote` and `demote` are what `failover set-server active |
//! standby` do to the database. All logic lives in `tandem-replication`, and the
//! switch of both nodes in `tandem-node` (`switch_site`: with PostgreSQL the peer's part
//! is asked of its agent over the peer link, through this node's agent).
//!
//! The backend comes from the node config: `[replication] backend = "sqlite"` (the
//! default) or `"postgres"` (PostgreSQL's streaming replication; `-r REMOTE` then names
//! the peer's server, port `[replication.postgres] port` unless given, and `service`
//! applies the `standby_lost` policy). Both print the same table and final line.
//!
//! The config file is `--config PATH`, else `TANDEM_CONFIG` (as for `failover`); a file
//! named either way must exist. Without both, `/etc/tandem/node.toml` is read if it
//! exists; if it does not, the tool runs with the defaults and commands that change
//! something say so once on stderr (the final line then names the machine's hostname).
//!
//! Output goes through the `println!` and `print!` below: when the reader of stdout has
//! gone (`mp_replication checksum | head -1`) the program ends at once, quietly and with
//! exit status 0, as `failover` does: the reader took what it wanted, and a command
//! that changed something has finished that change before it prints its result.

/// `println!` that ends the program quietly when stdout's reader has gone (see the
/// crate doc) instead of panicking.
macro_rules! println {
    () => {
        crate::write_stdout(format_args!(""), true)
    };
    ($($arg:tt)*) => {
        crate::write_stdout(format_args!($($arg)*), true)
    };
}

/// `print!` that ends the program quietly when stdout's reader has gone.
macro_rules! print {
    ($($arg:tt)*) => {
        crate::write_stdout(format_args!($($arg)*), false)
    };
}

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use tandem_core::NodeId;
use tandem_node::{LoadSettings, OutcomeKind, SiteSwitch, switch_site};
use tandem_replication::{
    AckLevel, Backend, BackendKind, DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIR, InitOptions, Observer,
    PromoteOptions, ReplicationBackend, RestoreReport, Settings, SqliteBackend, outcome_line,
    route_source,
};
use tandem_sample as sample;

/// Database replication control for a tandem site.
#[derive(Parser)]
#[command(name = "mp_replication", version, about, long_about = None)]
struct Cli {
    /// The node config file (its `[replication]` table and node facts); it must exist.
    /// Default: /etc/tandem/node.toml if it exists, else built-in defaults.
    #[arg(long, global = true, env = "TANDEM_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// The node's state directory.
    #[arg(long, global = true, env = "TANDEM_STATE_DIR", default_value = DEFAULT_STATE_DIR, value_name = "DIR")]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prepare this node's database for replication with its peer.
    Init {
        /// This node's id.
        #[arg(short = 'n', long = "node", value_parser = node_id())]
        node: NodeId,
        /// The peer's node address (its eth0:0 hostname or IP, optionally `:port`).
        #[arg(short = 'r', long = "remote", value_name = "REMOTE")]
        remote: String,
        /// The site number (default: `[node] site` in the config, else 1).
        #[arg(long)]
        site: Option<u16>,
        /// Show the steps.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Switch replication on here and on the peer. With PostgreSQL the peer's part is
    /// asked of its agent over the peer link (a line per node); without an agent here,
    /// this node only.
    #[command(name = "switch-on", visible_alias = "switchON")]
    SwitchOn {
        /// Synchronize: copy the peer's data first.
        #[arg(short = 'S', long = "sync")]
        sync: bool,
        /// Where the data comes from: `from-sync` (the peer).
        #[arg(short = 'F', long = "from", value_enum, requires = "sync")]
        from: Option<SyncFrom>,
        /// How long to wait for the service and the peer, in seconds (for the
        /// service to start, right after `init`, at most 15 of them).
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Show the steps.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Switch replication off here and on the peer (PostgreSQL: as switch-on does).
    #[command(name = "switch-off", visible_alias = "switchOFF")]
    SwitchOff {
        /// Show the steps.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Show the replication status of both nodes.
    Status {
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Run the replication service (the node agent runs it; this runs it alone).
    Service,
    /// Make this node's database the writable one (what `failover set-server active` does).
    Promote {
        /// PostgreSQL: promote even a standby that may be stale (it has not streamed for
        /// longer than the primary waits before it degrades).
        #[arg(long)]
        force: bool,
        /// Show the steps.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Make this node's database the standby (what `failover set-server standby` does).
    Demote {
        /// Show the steps.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Put back the rows a from-sync saved (the file it named), on the active node:
    /// inserts, in one transaction that replicates like the application's writes, every
    /// saved row whose key is free, and reports conflicts (a key that now holds a
    /// different row) instead of overwriting them. Rows the synchronized node had
    /// deleted are reported, not deleted. Exit status 0 even with conflicts: they are
    /// listed for you to resolve.
    #[command(name = "restore-local-rows")]
    RestoreLocalRows {
        /// The local-only rows file (`local-only-rows-<time>-node<N>.jsonl`; copy it to
        /// the active node first).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Change nothing; report what would be done.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Row count and SHA-256 of each replicated table, to compare the two nodes.
    Checksum {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write transactions of the sample workload (demo, tests and benchmark). Prints
    /// `committed <tx> <position>` per transaction, or with `--wait-replicated` or
    /// `--echo-via` `acked <tx> <position> <microseconds waited>`. With `--writers N`, N concurrent
    /// writers share the transaction numbers round robin; their commits take turns on
    /// the backend's shared write connection (`SqliteBackend::writer`), their waits
    /// overlap.
    #[command(hide = true)]
    WriteSample {
        /// First transaction number.
        #[arg(long, default_value_t = 1)]
        first: u64,
        /// Number of transactions.
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Rows per transaction.
        #[arg(long, default_value_t = 10)]
        rows: u32,
        /// Acknowledge each transaction only once the standby has it.
        #[arg(long)]
        wait_replicated: bool,
        /// With `--wait-replicated`: the acknowledgement level waited for (received,
        /// flushed or applied); default `[replication] synchronous_commit`.
        #[arg(long, requires = "wait_replicated")]
        level: Option<AckLevel>,
        /// Concurrent writers.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
        writers: u64,
        /// The benchmark's floor (a database without tandem): after each commit, send
        /// 512 bytes to this TCP address and wait for 32 bytes back, as a commit that
        /// waits for the least any standby could do. Prints `acked` lines with the
        /// wait. Not with `--wait-replicated`. Loopback or the lab's 192.0.2.0/24 only.
        #[arg(long, value_name = "ADDR", conflicts_with = "wait_replicated",
              value_parser = lab_echo_address)]
        echo_via: Option<SocketAddr>,
    },
}

/// Bytes a `write-sample --echo-via` writer sends after each commit: about one sample
/// transaction's batch on the peer link.
const ECHO_REQUEST: usize = 512;
/// Bytes it waits for in answer: about one acknowledgement.
const ECHO_REPLY: usize = 32;

#[derive(Clone, Copy, ValueEnum)]
enum SyncFrom {
    /// Copy the peer's data.
    FromSync,
}

/// `-n`/`--node`: 1 or 2. Anything else is a usage error that lists both.
fn node_id() -> impl clap::builder::TypedValueParser<Value = NodeId> {
    use clap::builder::{PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new(["1", "2"]).try_map(|n| n.parse::<NodeId>())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mp_replication: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(cli))
}

/// The settings from the config file that `--config` or `TANDEM_CONFIG` names (it must
/// exist), else from the default file if there is one, else the defaults.
fn settings(cli: &Cli) -> anyhow::Result<Settings> {
    let (path, required) = match &cli.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    // `[replication] sample_schema = true` creates the sample's tables at `init`.
    let settings = sample::settings(Settings::load(&path, required, &cli.state_dir)?);
    if settings.config_path.is_none() && cli.command.changes_something() {
        eprintln!(
            "mp_replication: no config file ({DEFAULT_CONFIG_PATH} is missing and neither \
             --config nor TANDEM_CONFIG names one): running with the defaults, so the final \
             line names this machine's hostname"
        );
    }
    Ok(settings)
}

impl Command {
    /// Whether the command changes the database or replication (and so deserves a
    /// word when it runs without a config file).
    fn changes_something(&self) -> bool {
        !matches!(self, Command::Status { .. } | Command::Checksum { .. })
    }
}

/// Writes to stdout for [`println!`] and [`print!`]: a reader that has gone ends the
/// program with exit status 0, any other failure with 1, after a word on stderr.
fn write_stdout(args: std::fmt::Arguments, newline: bool) {
    let mut out = std::io::stdout().lock();
    let result = out
        .write_fmt(args)
        .and_then(|()| {
            if newline {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| out.flush());
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("mp_replication: cannot write to stdout: {e}");
            std::process::exit(1);
        }
    }
}

async fn run_async(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = settings(&cli)?;
    match cli.command {
        Command::Init {
            node,
            ref remote,
            site,
            verbose,
        } => {
            let steps = Steps::new(verbose);
            let mut ip = settings.node.node_address;
            let result = async {
                let remote = resolve_remote(remote, settings.port()).await?;
                let local = settings.node.node_address.or_else(|| route_source(remote));
                ip = local;
                let mut options = InitOptions::new(node, remote)
                    .with_site(site.or(settings.node.site).unwrap_or(1));
                if let Some(local) = local {
                    options = options.with_local(local);
                }
                let backend = Backend::open(&settings).await?;
                let report = backend.init(&options, &steps).await?;
                println!(
                    "Node {} of site {} replicates {} with {}{}.",
                    report.node,
                    report.site,
                    report.tables.join(", "),
                    report.remote,
                    if report.created {
                        ""
                    } else {
                        " (already initialized: updated)"
                    }
                );
                anyhow::Ok(())
            }
            .await;
            finish(&settings, ip, result)
        }
        Command::SwitchOn {
            sync,
            from: _,
            timeout,
            verbose,
        } => {
            let switch = SiteSwitch {
                on: true,
                sync,
                timeout: Duration::from_secs(timeout),
            };
            switch_on_site(&cli, &settings, switch, verbose).await
        }
        Command::SwitchOff { verbose } => {
            let switch = SiteSwitch {
                on: false,
                sync: false,
                timeout: Duration::from_secs(15),
            };
            switch_on_site(&cli, &settings, switch, verbose).await
        }
        Command::Promote { verbose, .. } | Command::Demote { verbose } => {
            let (promote, force) = match cli.command {
                Command::Promote { force, .. } => (true, force),
                _ => (false, false),
            };
            let steps = Steps::new(verbose);
            let (backend, ip) = open_for_change(&settings).await;
            let result = async {
                let backend = backend?;
                if promote {
                    steps.step("making this node's database writable");
                    backend
                        .promote_with(PromoteOptions::new().forced(force))
                        .await?;
                } else {
                    steps.step("making this node's database the standby");
                    backend.demote().await?;
                }
                anyhow::Ok(())
            }
            .await;
            finish(&settings, ip, result)
        }
        Command::Status { json } => {
            let backend = Backend::open_existing(&settings).await?;
            let status = backend.status().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Checksum { json } => {
            let backend = Backend::open_existing(&settings).await?;
            let sums = backend.table_checksums().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&sums)?);
            } else {
                for s in sums {
                    println!("{:<24} {:>10} rows  sha256 {}", s.table, s.rows, s.sha256);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::RestoreLocalRows {
            ref file,
            dry_run,
            json,
        } => {
            let backend = Backend::open_existing(&settings).await?;
            let report = backend.restore_local_rows(file, dry_run).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_restore(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Service => {
            init_logging();
            let key_file = settings.key_file();
            let key = tandem_peer::SiteKey::load(&key_file)?;
            let backend = Backend::open(&settings).await?;
            tracing::info!(
                backend = ?settings.replication.backend,
                database = %backend.location().display(),
                key = %key.fingerprint(),
                "replication service starting"
            );
            backend.serve(key, None, shutdown_signal()).await?;
            tracing::info!("replication service stopped");
            Ok(ExitCode::SUCCESS)
        }
        Command::WriteSample {
            first,
            count,
            rows,
            wait_replicated,
            level,
            writers,
            echo_via,
        } => {
            sqlite_only(&settings, "write-sample")?;
            let wait =
                wait_replicated.then(|| level.unwrap_or(settings.replication.synchronous_commit));
            let backend = Arc::new(SqliteBackend::open_existing(&settings).await?);
            let end = first.saturating_add(count);
            let mut tasks = tokio::task::JoinSet::new();
            for k in 0..writers {
                let backend = Arc::clone(&backend);
                tasks.spawn(async move {
                    let txs = (first + k..end).step_by(writers as usize);
                    let echo = match echo_via {
                        Some(addr) => Some(echo_stream(addr).await?),
                        None => None,
                    };
                    write_sample(&backend, txs, rows, wait, echo).await
                });
            }
            while let Some(done) = tasks.join_next().await {
                done.context("a writer task failed")??;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One writer of `write-sample`: transactions `txs`, each committed in its turn on the
/// shared write connection (first come first served among the writers).
async fn write_sample(
    backend: &SqliteBackend,
    txs: impl Iterator<Item = u64>,
    rows: u32,
    wait: Option<AckLevel>,
    mut echo: Option<tokio::net::TcpStream>,
) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (request, mut reply) = ([7u8; ECHO_REQUEST], [0u8; ECHO_REPLY]);
    for tx in txs {
        let position = {
            let mut conn = backend.writer().await?;
            sample::write_transaction(&mut conn, tx, rows).await?
        };
        // One line under stdout's lock: concurrent writers' lines do not mix.
        if let Some(stream) = echo.as_mut() {
            let committed = std::time::Instant::now();
            let round = async {
                stream.write_all(&request).await?;
                stream.read_exact(&mut reply).await.map(drop)
            };
            // The same limit as a replicated wait's, so a stuck relay ends the run.
            tokio::time::timeout(Duration::from_secs(60), round)
                .await
                .context("no echo within 60 s")?
                .context("sending to the echo and reading its answer")?;
            let waited = committed.elapsed().as_micros();
            println!("acked {tx} {position} {waited}");
        } else if let Some(level) = wait {
            let committed = std::time::Instant::now();
            backend
                .wait_replicated_at(position, level, Duration::from_secs(60))
                .await
                .with_context(|| format!("transaction {tx}"))?;
            let waited = committed.elapsed().as_micros();
            println!("acked {tx} {position} {waited}");
        } else {
            println!("committed {tx} {position}");
        }
    }
    Ok(())
}

/// `--echo-via`'s address: the benchmark's floor sends to the lab only (loopback or
/// RFC 5737's 192.0.2.0/24).
fn lab_echo_address(text: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = text.parse().map_err(|e| format!("{e}"))?;
    let lab = match addr.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback() || ip.octets()[..3] == [192, 0, 2],
        std::net::IpAddr::V6(ip) => ip.is_loopback(),
    };
    if lab {
        Ok(addr)
    } else {
        Err("the echo must be on loopback or the lab's 192.0.2.0/24".into())
    }
}

/// A connection to `write-sample --echo-via`'s address, without Nagle's delay.
async fn echo_stream(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpStream> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the echo at {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// `switch-on` / `switch-off` on the site (`tandem_node::switch_site`): a line per
/// node, then the seed's final line, which fails when either node did.
async fn switch_on_site(
    cli: &Cli,
    settings: &Settings,
    switch: SiteSwitch,
    verbose: bool,
) -> anyhow::Result<ExitCode> {
    let steps = Steps::new(verbose);
    let (backend, ip) = open_for_change(settings).await;
    let result = async {
        let backend = backend?;
        let report = switch_site(&backend, &cli.state_dir, settings.node.id, switch, &steps).await;
        steps.done();
        let failure = match (backend.switches_peer(), report.outcomes.as_slice()) {
            // SQLite's service switched both nodes; its message says so.
            (true, [one]) if one.kind == OutcomeKind::Done => {
                println!("{}.", capitalized(one.message.trim_end_matches('.')));
                None
            }
            (true, [one]) => Some(one.message.clone()),
            (_, outcomes) => {
                for outcome in outcomes {
                    println!("{}.", outcome.line().trim_end_matches('.'));
                }
                report.failure()
            }
        };
        if let Some(local) = &report.local
            && let Some(file) = &local.local_only_file
        {
            println!(
                "Rows only this node had ({}) are saved in {}",
                local.saved_rows,
                file.display()
            );
        }
        match failure {
            Some(why) => Err(anyhow::anyhow!(why)),
            None => Ok(()),
        }
    }
    .await;
    finish(settings, ip, result)
}

/// Prints what `restore-local-rows` did (or would do), a line per row and a summary.
fn print_restore(report: &RestoreReport) {
    for r in &report.restored {
        println!("restored  {} {}", r.table, r.key);
    }
    for r in &report.already_present {
        println!("present   {} {}", r.table, r.key);
    }
    for c in &report.conflicts {
        println!(
            "conflict  {} {}: saved {}, now {}",
            c.table, c.key, c.saved, c.current
        );
    }
    for r in &report.deleted_locally {
        println!(
            "deleted   {} {}: the synchronized node had deleted it; kept here",
            r.table, r.key
        );
    }
    let verb = if report.dry_run {
        "Would restore"
    } else {
        "Restored"
    };
    let mut summary = format!(
        "{verb} {} rows from {}; {} already there",
        report.restored.len(),
        report.file.display(),
        report.already_present.len()
    );
    if !report.conflicts.is_empty() {
        summary.push_str(&format!(
            "; {} conflicts left as they are (resolve them by hand)",
            report.conflicts.len()
        ));
    }
    if !report.deleted_locally.is_empty() {
        summary.push_str(&format!(
            "; {} rows the synchronized node had deleted kept",
            report.deleted_locally.len()
        ));
    }
    println!("{summary}.");
}

/// Opens the backend for a command that ends with the seed's line; the IP for that
/// line comes from what `init` recorded, else the config.
async fn open_for_change(settings: &Settings) -> (anyhow::Result<Backend>, Option<IpAddr>) {
    let backend = Backend::open_existing(settings)
        .await
        .map_err(anyhow::Error::from);
    let mut ip = settings.node.node_address;
    if let Ok(backend) = &backend
        && let Ok(identity) = backend.identity().await
    {
        ip = identity
            .local
            .or(ip)
            .or_else(|| identity.remote.and_then(route_source));
    }
    (backend, ip)
}

/// Refuses a command that only the SQLite backend has.
fn sqlite_only(settings: &Settings, command: &str) -> anyhow::Result<()> {
    if settings.replication.backend == BackendKind::Postgres {
        bail!(
            "`{command}` works with the SQLite backend only; this node's config selects              PostgreSQL (compare or write with SQL there)"
        );
    }
    Ok(())
}

/// Prints the seed's final line and gives the exit status.
fn finish(
    settings: &Settings,
    ip: Option<IpAddr>,
    result: anyhow::Result<()>,
) -> anyhow::Result<ExitCode> {
    // The node's own hostname as set-deployment recorded it (the machine's, once
    // applied); the machine's when the config names none.
    let host = settings
        .node
        .hostname
        .clone()
        .or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let ip = ip.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
    match result {
        Ok(()) => {
            println!("{}", outcome_line(&host, &ip, None));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("{}", outcome_line(&host, &ip, Some(&format!("{e:#}"))));
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `-r REMOTE`: an IP, `IP:port`, `[IPv6]:port`, a hostname or `hostname:port`.
async fn resolve_remote(text: &str, default_port: u16) -> anyhow::Result<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => {
            let port: u16 = port
                .parse()
                .with_context(|| format!("-r {text}: `{port}` is not a port"))?;
            if port == 0 {
                bail!(
                    "-r {text}: port 0 (`remote-eth0:0` in the seed stands for the peer's eth0:0 \
                     hostname or IP address; give that)"
                );
            }
            (host, port)
        }
        None => (text, default_port),
    };
    let mut addrs = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("-r {text}: cannot resolve {host}"))?;
    addrs
        .next()
        .with_context(|| format!("-r {text}: {host} has no address"))
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Prints the steps with `-v` and shows a progress bar on a terminal.
struct Steps {
    verbose: bool,
    bar: OnceLock<ProgressBar>,
}

impl Steps {
    fn new(verbose: bool) -> Steps {
        Steps {
            verbose,
            bar: OnceLock::new(),
        }
    }

    fn done(&self) {
        if let Some(bar) = self.bar.get() {
            bar.finish_and_clear();
        }
    }
}

impl Observer for Steps {
    fn step(&self, text: &str) {
        if self.verbose {
            println!("* {text}");
        }
    }

    fn progress(&self, done: u64, total: u64) {
        self.show(done, total, "rows");
    }

    fn copied_kb(&self, done: u64, total: u64) {
        self.show(done, total, "kB");
    }
}

impl Steps {
    fn show(&self, done: u64, total: u64, unit: &str) {
        if !std::io::stderr().is_terminal() {
            if self.verbose && total > 0 && done == total {
                println!("* copied {done} of {total} {unit}");
            }
            return;
        }
        let bar = self.bar.get_or_init(|| {
            let bar = ProgressBar::new(total);
            let template = format!("{{bar:40}} {{pos}}/{{len}} {unit} copied ({{eta}})");
            if let Ok(style) = ProgressStyle::with_template(&template) {
                bar.set_style(style);
            }
            bar
        });
        bar.set_length(total);
        bar.set_position(done);
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: logs sent to a file stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
