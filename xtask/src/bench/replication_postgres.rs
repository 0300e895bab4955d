//! `cargo xtask bench replication --backend postgres`: pgbench's TPC-B-like workload
//! (scale 1, 2 clients, 5 s per round) on node 1 of the namespace lab, with node 2 a
//! streaming standby set up by the release `mp_replication` (init, switch-on, from-sync)
//! and its replication service running on both nodes:
//!
//! - `sync`: replication on, every commit waits until node 2 flushed it;
//! - `async`: the same pair with `synchronous_commit = local` for the benchmark's
//!   sessions (WAL streams, commits do not wait); replay lag sampled from
//!   `pg_stat_replication` every 100 ms (`replay_lag` and the LSN gap in bytes);
//! - `off`: after `mp_replication switch-off` (no standby, no slot).
//!
//! Rounds alternate sync and async; each mode's rate is the median of its rounds.
//! Needs root and PostgreSQL 15. Results print as a table, beside the SQLite backend's
//! figures when `target/bench/replication.json` holds them, and go to
//! `target/bench/replication-postgres.json`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use tandem_lab::postgres::{PgServer, bindir};
use tandem_lab::{Host, Lab, LabConfig};

const PORT: u16 = 5433;
const ROUNDS: usize = 3;
const SECONDS: u32 = 5;
const CLIENTS: u32 = 2;

pub(crate) fn run() -> anyhow::Result<Vec<super::Row>> {
    let bin = super::replication::build_release()?;
    let bindir = bindir().context(
        "PostgreSQL 15 (/usr/lib/postgresql/15/bin) and the postgres user are needed: \
         apt-get install postgresql-15",
    )?;
    let lab = Lab::up(LabConfig::default()).context("building the namespace lab (needs root)")?;
    let dir = tempfile::tempdir()?;
    let mut servers = Vec::new();
    for host in [Host::Node1, Host::Node2] {
        servers.push(PgServer::create(&lab, host, dir.path(), PORT, &bindir)?);
    }
    let node1 = &servers[0];
    write_configs(dir.path(), &servers)?;
    let mp = |host: Host, args: &[&str]| -> anyhow::Result<String> {
        let out = mp_command(&lab, &bin, dir.path(), host)
            .args(args)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "mp_replication {} on {host}: {text}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(text)
    };
    let socket = node1.socket_dir.display().to_string();
    let port = PORT.to_string();
    node1.run(
        "pgbench",
        &[
            "-i", "-q", "-s", "1", "-h", &socket, "-p", &port, "postgres",
        ],
    )?;
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
    let psql = |sql: &str| -> anyhow::Result<String> {
        Ok(node1
            .run(
                "psql",
                &[
                    "-h", &socket, "-p", &port, "-U", "postgres", "-Atc", sql, "postgres",
                ],
            )?
            .trim()
            .to_owned())
    };
    let started = std::time::Instant::now();
    while psql("SELECT sync_state FROM pg_stat_replication")? != "sync" {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("node 1 does not wait for node 2 after 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let ns1 = lab.namespace(Host::Node1);
    let pgbench = |options: Option<&str>| -> anyhow::Result<f64> {
        let _ = Command::new("sync").status();
        let (t, c) = (SECONDS.to_string(), CLIENTS.to_string());
        let args = [
            "-n", "-T", &t, "-c", &c, "-j", &c, "-h", &socket, "-p", &port, "postgres",
        ];
        // libpq reads PGOPTIONS: `-c synchronous_commit=local` for the sessions.
        let text = run_pgbench(&ns1, &bindir, options.unwrap_or(""), &args)?;
        parse_tps(&text).with_context(|| format!("reading pgbench's output: {text}"))
    };

    let (mut sync, mut asynchronous, mut off) = (Vec::new(), Vec::new(), Vec::new());
    let mut lag_ms = Vec::new();
    let mut lag_bytes = Vec::new();
    // Samples of the async rounds, and those that saw a session waiting for the standby
    // (there should be none: the check that the async mode is asynchronous).
    let (mut samples, mut waited) = (0u64, 0u64);
    for _ in 0..ROUNDS {
        sync.push(pgbench(None)?);
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let stop = Arc::clone(&stop);
            let (socket, port, bindir) = (socket.clone(), port.clone(), bindir.clone());
            let ns = lab.namespace(Host::Node1);
            std::thread::spawn(move || {
                let mut samples = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let out = Command::new("ip")
                        .args(["netns", "exec", &ns, "runuser", "-u", "postgres", "--"])
                        .arg(bindir.join("psql"))
                        .args(["-h", &socket, "-p", &port, "-U", "postgres", "-AtF", " "])
                        .args([
                            "-c",
                            "SELECT coalesce((EXTRACT(epoch FROM replay_lag) * 1000)::bigint, 0), \
                             pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint, \
                             (SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep') \
                             FROM pg_stat_replication",
                            "postgres",
                        ])
                        .current_dir("/")
                        .output();
                    if let Ok(out) = out {
                        let text = String::from_utf8_lossy(&out.stdout).into_owned();
                        let mut fields = text.split_whitespace();
                        if let (Some(Ok(ms)), Some(Ok(bytes)), Some(Ok(waiting))) = (
                            fields.next().map(str::parse::<u64>),
                            fields.next().map(str::parse::<u64>),
                            fields.next().map(str::parse::<u64>),
                        ) {
                            samples.push((ms, bytes, waiting));
                        }
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                samples
            })
        };
        asynchronous.push(pgbench(Some("-c synchronous_commit=local"))?);
        stop.store(true, Ordering::Relaxed);
        for (ms, bytes, waiting) in sampler.join().unwrap_or_default() {
            lag_ms.push(ms);
            lag_bytes.push(bytes);
            samples += 1;
            if waiting > 0 {
                waited += 1;
            }
        }
    }
    mp(Host::Node1, &["switch-off"])?;
    for _ in 0..ROUNDS {
        off.push(pgbench(None)?);
    }
    drop(services);
    lag_ms.sort_unstable();
    lag_bytes.sort_unstable();
    let results = Results {
        off: median(&off),
        asynchronous: median(&asynchronous),
        sync: median(&sync),
        lag_ms_p50: super::percentile(&lag_ms, 50.0),
        lag_ms_p99: super::percentile(&lag_ms, 99.0),
        lag_bytes_p50: super::percentile(&lag_bytes, 50.0),
        lag_bytes_max: lag_bytes.last().copied(),
        samples,
        waited,
    };
    results.print();
    results.write_json()?;
    drop(servers);
    Ok(results.summary())
}

/// Runs pgbench as postgres inside the namespace `ns` with `PGOPTIONS` set.
fn run_pgbench(ns: &str, bindir: &Path, options: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "runuser", "-u", "postgres", "--", "env",
        ])
        .arg(format!("PGOPTIONS={options}"))
        .arg(bindir.join("pgbench"))
        .args(args)
        .current_dir("/")
        .output()
        .context("running pgbench")?;
    if !out.status.success() {
        bail!("pgbench failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn parse_tps(text: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.trim_start_matches("tps = ").split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
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

struct Results {
    off: f64,
    asynchronous: f64,
    sync: f64,
    lag_ms_p50: Option<u64>,
    lag_ms_p99: Option<u64>,
    lag_bytes_p50: Option<u64>,
    lag_bytes_max: Option<u64>,
    samples: u64,
    waited: u64,
}

impl Results {
    /// The summary lines: async and synchronous beside replication off.
    fn summary(&self) -> Vec<super::Row> {
        let area = "replication postgres";
        let base = format!("off {:.0}", self.off);
        let lag = match (self.lag_ms_p50, self.lag_ms_p99) {
            (Some(p50), Some(p99)) => format!(", replay lag p50 {p50} / p99 {p99} ms"),
            _ => String::new(),
        };
        vec![
            super::Row::new(
                area,
                format!("async, pgbench {CLIENTS} clients (tx/s)"),
                format!("{:.0}{lag}", self.asynchronous),
                base.clone(),
            )
            .ratio(self.asynchronous, self.off),
            super::Row::new(
                area,
                format!("synchronous, pgbench {CLIENTS} clients (tx/s)"),
                format!("{:.0}", self.sync),
                base,
            )
            .ratio(self.sync, self.off)
            .target(">= 0.5 x off", self.sync >= self.off / 2.0),
        ]
    }

    fn print(&self) {
        println!(
            "bench replication --backend postgres: pgbench TPC-B-like, scale 1, {CLIENTS} clients, \
             {SECONDS} s rounds, node 1 -> node 2 in the namespace lab, median of {ROUNDS} rounds"
        );
        println!("{:<40} {:>10} {:>8}", "mode", "tx/s", "ratio");
        for (what, tps) in [
            ("replication off (switch-off)", self.off),
            ("async (synchronous_commit = local)", self.asynchronous),
            ("sync (synchronous_standby_names)", self.sync),
        ] {
            println!("{what:<40} {tps:>10.0} {:>8.2}", tps / self.off.max(1e-9));
        }
        let opt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        println!(
            "async replay lag: p50 {} ms, p99 {} ms; LSN gap p50 {} bytes, max {} bytes",
            opt(self.lag_ms_p50),
            opt(self.lag_ms_p99),
            opt(self.lag_bytes_p50),
            opt(self.lag_bytes_max)
        );
        println!(
            "async check: {} of {} samples saw a session waiting for the standby (SyncRep)",
            self.waited, self.samples
        );
        if let Ok(dir) = super::output_dir()
            && let Ok(text) = std::fs::read_to_string(dir.join("replication.json"))
        {
            println!(
                "SQLite backend, last `cargo xtask bench replication` (target/bench/replication.json):"
            );
            print!("{text}");
        } else {
            println!(
                "(no SQLite figures in target/bench/replication.json: run `cargo xtask bench replication`)"
            );
        }
    }

    fn write_json(&self) -> anyhow::Result<()> {
        let opt = |v: Option<u64>| v.map_or_else(|| "null".to_owned(), |v| v.to_string());
        let text = format!(
            "{{\n  \"area\": \"replication\",\n  \"backend\": \"postgres\",\n  \"workload\": \"pgbench tpcb-like scale 1, {CLIENTS} clients, {SECONDS} s\",\n  \
             \"tx_per_s\": {{ \"off\": {:.1}, \"async\": {:.1}, \"sync\": {:.1} }},\n  \
             \"async_replay_lag_ms\": {{ \"p50\": {}, \"p99\": {} }},\n  \
             \"async_lsn_gap_bytes\": {{ \"p50\": {}, \"max\": {} }}\n}}\n",
            self.off,
            self.asynchronous,
            self.sync,
            opt(self.lag_ms_p50),
            opt(self.lag_ms_p99),
            opt(self.lag_bytes_p50),
            opt(self.lag_bytes_max),
        );
        let path = super::output_dir()?.join("replication-postgres.json");
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("written to {}", path.display());
        Ok(())
    }
}
