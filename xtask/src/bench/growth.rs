//! `cargo xtask bench growth`: how the SQLite backend's cost grows with the
//! data, on one site of two nodes in the namespace lab with the real binaries
//! (`mp_replication service` on both nodes, its hidden `write-sample` as the
//! writer on node 1, as in the `replication` area).
//!
//! The phases, in order, on one pair of databases:
//! 1. **steady**: both services run and node 2 is in step; node 1's commit
//!    rate over [`STEADY`] of the sample workload (one writer, [`ROWS`] rows
//!    per transaction): the baseline of every commit rate below.
//! 2. **catch-up**: node 2's service is stopped; node 1 commits `--changes`
//!    row changes (default [`CHANGES`]) in transactions of [`BULK_ROWS`] rows
//!    (bigger batches than the sample workload, so that the backlog builds in
//!    seconds rather than minutes; each row is one changelog entry). Then the
//!    writer starts again and node 2's service is started: the time from that
//!    start until node 1 has published node 2's acknowledgement of the last of
//!    those changes (the service's start included), and node 1's commit rate
//!    meanwhile.
//! 3. **from-sync, same database**: with the writer running, node 2 runs
//!    `mp_replication switch-on -S -F from-sync`: its time and node 1's commit
//!    rate meanwhile. The baseline of the catch-up's time.
//! 4. **from-sync, `--db-mib`** (default [`DB_MIB`]): replication is switched
//!    off and `sqlite3` fills node 1's `meetings` table with rows of about 3 KB
//!    (incompressible hex) until the database file has that size. The floor:
//!    the database file streamed over plain TCP on the same lab link from node
//!    1's namespace to node 2's and fsynced there (the bytes any from-sync must
//!    move and make durable, without encryption, SQL, a consistent snapshot
//!    or an apply; nothing can copy the database to node 2 faster). Then node
//!    2 runs `switch-on -S -F from-sync`. The writer runs on node 1 during both.
//!
//! After phases 2, 3 and 4 the writer stops, node 2 catches up and
//! `mp_replication checksum` must print the same row counts and SHA-256 per
//! table on both nodes: the bench fails otherwise. During phases 2 to 4 the
//! peak resident memory (VmRSS) and CPU of both service processes are sampled.
//! `[replication] max_backlog` is raised above the backlog the bench builds, so
//! that node 1 does not switch replication off during the catch-up.
//!
//! Needs root (the lab) and `sqlite3` (Debian's package). Results print as a
//! table and go to `target/bench/growth.json`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tandem_lab::{Host, Lab, LabConfig};
use tandem_replication::{Position, ReplicationConfig, Settings, published_ack};
use tandem_sample as sample;

/// Row changes made while node 2 is away, by default.
pub(crate) const CHANGES: u64 = 1_000_000;
/// Size of the database of the large from-sync, MiB, by default.
pub(crate) const DB_MIB: u64 = 1024;
/// Rows per transaction of the sample workload's writer.
const ROWS: u32 = 5;
/// Rows per transaction of the changes made while node 2 is away (the sample
/// numbers a transaction's rows below 1000).
const BULK_ROWS: u64 = 500;
/// How long the steady commit rate is measured.
const STEADY: Duration = Duration::from_secs(5);
/// The first transaction number of the writers (the bulk changes count from 1).
const WRITER_FIRST: u64 = 1_000_000_000;
/// Transaction numbers each start of the writer may use.
const WRITER_SPAN: u64 = 100_000_000;
/// Characters of text per filler row of the large database (hex of half as many
/// random bytes).
const FILLER_CHARS: u64 = 3000;
/// Bytes of the database file per filler row, about (its text, the row's
/// other columns and its key's index entry; a round measures what it took).
const FILLER_ROW_BYTES: f64 = 4000.0;
/// Rounds of filling at most (each measures the file again).
const FILL_ROUNDS: usize = 6;
/// Filler rows per `sqlite3` transaction.
const FILLER_CHUNK: u64 = 20_000;
/// The TCP port of the floor's copy on node 2's address.
const COPY_PORT: u16 = 7460;
/// How long node 2 may take to catch up or to finish a from-sync.
const LIMIT: Duration = Duration::from_secs(3600);

/// What to run of the growth area.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Row changes made while node 2 is away.
    pub changes: u64,
    /// Size of the large from-sync's database, MiB.
    pub db_mib: u64,
}

pub(crate) fn run(options: &Options) -> anyhow::Result<Vec<super::Row>> {
    if options.changes == 0 || options.db_mib == 0 {
        bail!("--changes and --db-mib must be at least 1");
    }
    if Command::new("sqlite3")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        bail!("sqlite3 is missing: run `bash .ci/install-deps` as root (Debian package sqlite3)");
    }
    let bin = super::replication::build_release()?;
    let lab = Lab::up(LabConfig::default()).context("building the namespace lab (needs root)")?;
    let dir = tempfile::Builder::new()
        .prefix("tandem-bench-growth-")
        .tempdir()?;
    let started = Instant::now();
    let measured = {
        let mut g = Growth {
            lab: &lab,
            dir: dir.path(),
            bin: &bin,
            services: [None, None],
            writers: 0,
        };
        g.measure(options)
    };
    let results = match measured {
        Ok(results) => results,
        Err(e) => {
            let kept = dir.keep();
            return Err(e.context(format!("logs kept in {}", kept.display())));
        }
    };
    println!(
        "bench growth: took {:.0} s in all",
        started.elapsed().as_secs_f64()
    );
    results.print();
    let path = super::output_dir()?.join("growth.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("written to {}", path.display());
    Ok(results.summary())
}

/// The site under measure.
struct Growth<'a> {
    lab: &'a Lab,
    dir: &'a Path,
    bin: &'a Path,
    /// The service processes of node 1 and node 2.
    services: [Option<Child>; 2],
    /// Starts of the writer so far (each takes its own transaction numbers).
    writers: u64,
}

/// Everything one run measured.
#[derive(Debug, serde::Serialize)]
struct Results {
    changes: u64,
    bulk_rows_per_transaction: u64,
    writer_rows_per_transaction: u32,
    /// Node 1's commit rate with node 2 in step, tx/s.
    steady_tx_per_s: f64,
    /// How fast node 1 made the changes while node 2 was away (rows/s).
    bulk_rows_per_s: f64,
    catch_up: Timed,
    from_sync_same: Timed,
    /// Size of the catch-up's database when its from-sync ran, MiB.
    same_db_mib: f64,
    /// Of which in use (not pages the pruned changelog left free), MiB.
    same_db_used_mib: f64,
    large: Large,
    /// Row counts and checksums compared after each phase, all equal.
    checksums_equal: bool,
    /// Rows in the replicated tables at the end, per table (both nodes).
    final_rows: Vec<(String, u64)>,
}

/// The large from-sync beside its floor.
#[derive(Debug, serde::Serialize)]
struct Large {
    /// Size of the database file copied, MiB.
    db_mib: f64,
    /// The floor: the file over plain TCP, fsynced on node 2.
    floor: Timed,
    /// What the floor copied (the database file and its log), MiB.
    floor_copied_mib: f64,
    from_sync: Timed,
}

/// One timed phase: its length, node 1's commit rate meanwhile, and the
/// service processes' memory and CPU.
#[derive(Debug, Default, serde::Serialize)]
struct Timed {
    seconds: f64,
    /// Commits of the writer on node 1 during the phase.
    commits: u64,
    tx_per_s: f64,
    node1: Usage,
    node2: Usage,
}

/// Memory and CPU of one process over a phase.
#[derive(Debug, Default, Clone, serde::Serialize)]
struct Usage {
    rss_peak_mib: f64,
    cpu_s: f64,
    cpu_percent: f64,
}

impl Growth<'_> {
    fn measure(&mut self, options: &Options) -> anyhow::Result<Results> {
        write_configs(self.dir, options.changes)?;
        self.mp(Host::Node2, &["init", "-n", "2", "-r", "192.0.2.11"])?;
        self.mp(Host::Node1, &["init", "-n", "1", "-r", "192.0.2.12"])?;
        self.start_service(Host::Node1)?;
        self.start_service(Host::Node2)?;
        self.mp(Host::Node1, &["switch-on"])?;
        self.mp(Host::Node1, &["promote"])?;

        // 1. Steady: the baseline rate.
        let writer = self.start_writer()?;
        std::thread::sleep(STEADY);
        let commits = writer.stop()?;
        let steady = commits.len() as f64 / STEADY.as_secs_f64();
        self.caught_up(last(&commits))?;
        println!("bench growth: steady {steady:.0} tx/s of {ROWS} rows with node 2 in step");

        // 2. Catch-up.
        self.stop_service(Host::Node2);
        let transactions = options.changes.div_ceil(BULK_ROWS);
        let bulk_started = Instant::now();
        let head = self.bulk(transactions)?;
        let bulk_rows_per_s =
            (transactions * BULK_ROWS) as f64 / bulk_started.elapsed().as_secs_f64();
        println!(
            "bench growth: {} changes made with node 2 away ({bulk_rows_per_s:.0} rows/s); node 2 catches up",
            transactions * BULK_ROWS
        );
        let writer = self.start_writer()?;
        let from = Instant::now();
        self.start_service(Host::Node2)?;
        let sampler = Sampler::start(self.pids());
        self.caught_up(head)?;
        let to = Instant::now();
        let usage = sampler.stop();
        let catch_up = Timed::new(from, to, &writer, usage);
        println!("  caught up in {:.2} s", catch_up.seconds);
        self.settle(writer)?;

        // 3. From-sync of the same database.
        let same_db_mib = self.db_mib()?;
        let same_db_used_mib = same_db_mib - self.free_mib()?;
        let from_sync_same = self.synced_from_node1()?;
        println!(
            "bench growth: from-sync of the same database ({same_db_mib:.0} MiB, \
             {same_db_used_mib:.0} MiB in use) in {:.2} s",
            from_sync_same.seconds
        );

        // 4. From-sync of the large database beside its floor.
        self.mp(Host::Node1, &["switch-off"])?;
        self.fill(options.db_mib)?;
        let db_mib = self.db_mib()?;
        println!("bench growth: node 1's database filled to {db_mib:.0} MiB");
        let (floor, floor_bytes) = self.floor()?;
        println!("  plain TCP copy of the file in {:.2} s", floor.seconds);
        let from_sync = self.synced_from_node1()?;
        println!("  from-sync in {:.2} s", from_sync.seconds);

        let final_rows = self.same_checksums()?;
        Ok(Results {
            changes: transactions * BULK_ROWS,
            bulk_rows_per_transaction: BULK_ROWS,
            writer_rows_per_transaction: ROWS,
            steady_tx_per_s: steady,
            bulk_rows_per_s,
            catch_up,
            from_sync_same,
            same_db_mib,
            same_db_used_mib,
            large: Large {
                db_mib,
                floor,
                floor_copied_mib: floor_bytes as f64 / 1024.0 / 1024.0,
                from_sync,
            },
            checksums_equal: true,
            final_rows,
        })
    }

    /// `mp_replication` on `host` with the node's config and state directory.
    fn command(&self, host: Host) -> Command {
        let mut cmd = self.lab.command(host, &self.bin.display().to_string());
        cmd.arg("--config")
            .arg(self.dir.join(format!("{host}.toml")))
            .arg("--state-dir")
            .arg(self.dir.join(host.name()));
        cmd
    }

    fn mp(&self, host: Host, args: &[&str]) -> anyhow::Result<String> {
        let out = self.command(host).args(args).output()?;
        if !out.status.success() {
            bail!(
                "mp_replication {} on {host}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn start_service(&mut self, host: Host) -> anyhow::Result<()> {
        let slot = usize::from(host != Host::Node1);
        if self.services[slot].is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{host}-service.log")))?;
        let child = self
            .command(host)
            .arg("service")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting mp_replication service")?;
        self.services[slot] = Some(child);
        Ok(())
    }

    fn stop_service(&mut self, host: Host) {
        let slot = usize::from(host != Host::Node1);
        if let Some(mut child) = self.services[slot].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The service processes of node 1 and node 2 (`ip netns exec` execs the
    /// program, so the child is the service itself; 0 for one not running).
    fn pids(&self) -> [u32; 2] {
        self.services
            .each_ref()
            .map(|c| c.as_ref().map_or(0, Child::id))
    }

    /// The sample workload's writer on node 1, on transaction numbers of its own.
    fn start_writer(&mut self) -> anyhow::Result<Writer> {
        let first = WRITER_FIRST + self.writers * WRITER_SPAN;
        self.writers += 1;
        let mut cmd = self.command(Host::Node1);
        cmd.args([
            "write-sample",
            "--first",
            &first.to_string(),
            "--count",
            &WRITER_SPAN.to_string(),
            "--rows",
            &ROWS.to_string(),
        ]);
        Writer::start(cmd)
    }

    /// `transactions` transactions of [`BULK_ROWS`] rows on node 1; returns the
    /// position of the last.
    fn bulk(&self, transactions: u64) -> anyhow::Result<Position> {
        let out = self
            .command(Host::Node1)
            .args([
                "write-sample",
                "--first",
                "1",
                "--count",
                &transactions.to_string(),
                "--rows",
                &BULK_ROWS.to_string(),
            ])
            .stderr(Stdio::inherit())
            .output()
            .context("running the bulk writer")?;
        if !out.status.success() {
            bail!("the bulk writer failed ({})", out.status);
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let positions: Vec<Position> = text.lines().filter_map(position_of).collect();
        if positions.len() as u64 != transactions {
            bail!(
                "the bulk writer reported {} of {transactions} commits",
                positions.len()
            );
        }
        Ok(positions.into_iter().max().unwrap_or(Position(0)))
    }

    /// Waits until node 1 published node 2's acknowledgement of `position`.
    fn caught_up(&self, position: Position) -> anyhow::Result<()> {
        let dir = self.dir.join(Host::Node1.name());
        let started = Instant::now();
        while started.elapsed() < LIMIT {
            if published_ack(&dir).is_some_and(|p| p >= position) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        bail!("timed out waiting for node 2 to acknowledge position {position}")
    }

    /// Stops `writer`, waits until node 2 has all it wrote and compares the
    /// nodes' checksums.
    fn settle(&self, writer: Writer) -> anyhow::Result<()> {
        let commits = writer.stop()?;
        self.caught_up(last(&commits))?;
        self.same_checksums().map(drop)
    }

    /// `switch-on -S -F from-sync` on node 2 while the writer commits on node
    /// 1; then the writer stops, node 2 catches up and the checksums compare.
    fn synced_from_node1(&mut self) -> anyhow::Result<Timed> {
        let writer = self.start_writer()?;
        let sampler = Sampler::start(self.pids());
        let from = Instant::now();
        let limit = LIMIT.as_secs().to_string();
        let synced = self.mp(
            Host::Node2,
            &["switch-on", "-S", "-F", "from-sync", "--timeout", &limit],
        );
        let to = Instant::now();
        let usage = sampler.stop();
        let timed = Timed::new(from, to, &writer, usage);
        if let Err(e) = synced {
            let _ = writer.stop();
            return Err(e);
        }
        self.settle(writer)?;
        Ok(timed)
    }

    /// The row counts and SHA-256 of both nodes' tables, which must be equal;
    /// returns the row counts.
    fn same_checksums(&self) -> anyhow::Result<Vec<(String, u64)>> {
        let sums: Vec<serde_json::Value> = [Host::Node1, Host::Node2]
            .iter()
            .map(|&h| Ok(serde_json::from_str(&self.mp(h, &["checksum", "--json"])?)?))
            .collect::<anyhow::Result<_>>()?;
        if sums[0] != sums[1] {
            bail!(
                "node 2's tables differ from node 1's after it caught up:\nnode 1 {}\nnode 2 {}",
                sums[0],
                sums[1]
            );
        }
        Ok(sums[0]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                (
                    t["table"].as_str().unwrap_or_default().to_owned(),
                    t["rows"].as_u64().unwrap_or(0),
                )
            })
            .collect())
    }

    fn database(&self, host: Host) -> PathBuf {
        let cfg = ReplicationConfig {
            sample_schema: true,
            ..ReplicationConfig::default()
        };
        sample::settings(Settings::new(self.dir.join(host.name()), cfg)).database_path()
    }

    /// Size of node 1's database (its pages, whether in the file or still in
    /// its write-ahead log), MiB.
    fn db_mib(&self) -> anyhow::Result<f64> {
        let bytes = self.sqlite(
            "SELECT (SELECT page_size FROM pragma_page_size()) * \
             (SELECT page_count FROM pragma_page_count());",
        )?;
        let bytes: f64 = bytes
            .trim()
            .parse()
            .with_context(|| format!("the size of node 1's database: {bytes:?}"))?;
        Ok(bytes / 1024.0 / 1024.0)
    }

    /// Free pages in node 1's database (the pruned changelog's), MiB.
    fn free_mib(&self) -> anyhow::Result<f64> {
        let bytes = self.sqlite(
            "SELECT (SELECT page_size FROM pragma_page_size()) * \
             (SELECT freelist_count FROM pragma_freelist_count());",
        )?;
        let bytes: f64 = bytes
            .trim()
            .parse()
            .with_context(|| format!("the free pages of node 1's database: {bytes:?}"))?;
        Ok(bytes / 1024.0 / 1024.0)
    }

    /// Fills node 1's `meetings` table with filler rows (replication is off)
    /// until its database has about `mib` MiB, and checkpoints the log into the
    /// file. Pages the pruned changelog left free are filled first, and a row's
    /// share of a page varies, so it measures again after each round.
    fn fill(&self, mib: u64) -> anyhow::Result<()> {
        let mut next = 1;
        for _ in 0..FILL_ROUNDS {
            let have = self.db_mib()?;
            if have >= mib as f64 * 0.98 {
                break;
            }
            let free = self.free_mib()?;
            let want = mib as f64 - (have - free);
            let rows = (want.max(0.0) * 1024.0 * 1024.0 / FILLER_ROW_BYTES).ceil() as u64;
            println!(
                "bench growth: node 1's database has {have:.0} MiB ({free:.0} MiB free in it); \
                 adding {rows} rows of {FILLER_CHARS} characters"
            );
            let mut script = String::from(
                ".timeout 60000\n\
                 INSERT OR IGNORE INTO user_groups (id, name, created_ms) VALUES (-1, 'growth filler', 0);\n\
                 INSERT OR IGNORE INTO user_profiles (id, login, display_name, group_id, created_ms) \
                 VALUES (-1, 'growth-filler', 'growth filler', -1, 0);\n",
            );
            let end = next + rows;
            while next < end {
                let last = (next + FILLER_CHUNK).min(end) - 1;
                script.push_str(&format!(
                    "BEGIN;\nWITH RECURSIVE n(i) AS (SELECT {next} UNION ALL SELECT i + 1 FROM n WHERE i < {last}) \
                     INSERT INTO meetings (meeting_id, owner_id, title, starts_ms, duration_min, ports) \
                     SELECT 'growth-' || i, -1, hex(randomblob({half})), i, 60, 0 FROM n;\nCOMMIT;\n",
                    half = FILLER_CHARS / 2,
                ));
                next = last + 1;
            }
            script.push_str("PRAGMA wal_checkpoint(TRUNCATE);\n");
            self.sqlite(&script)?;
        }
        Ok(())
    }

    /// Runs `script` in `sqlite3` on node 1's database; returns its output.
    fn sqlite(&self, script: &str) -> anyhow::Result<String> {
        let mut child = Command::new("sqlite3")
            .arg(self.database(Host::Node1))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting sqlite3")?;
        let mut input = child.stdin.take().context("sqlite3's input")?;
        input.write_all(script.as_bytes())?;
        drop(input);
        let out = child.wait_with_output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || !err.trim().is_empty() {
            bail!("sqlite3 on node 1's database failed: {err}");
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The floor: node 1's database file (and its log) streamed over plain TCP
    /// from node 1's namespace to node 2's, written and fsynced there, while the
    /// writer commits on node 1.
    fn floor(&mut self) -> anyhow::Result<(Timed, u64)> {
        let source = self.database(Host::Node1);
        let target = self.dir.join("node2-floor-copy.db");
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let receiver = self
            .lab
            .spawn_in(Host::Node2, move || -> anyhow::Result<u64> {
                let listener = std::net::TcpListener::bind((Host::Node2.addr(), COPY_PORT));
                let _ = bound_tx.send(listener.is_ok());
                let (mut conn, _) = listener?.accept()?;
                let mut file = std::fs::File::create(&target)?;
                let bytes = copy(&mut conn, &mut file)?;
                file.sync_all()?;
                if let Some(parent) = target.parent() {
                    std::fs::File::open(parent)?.sync_all()?;
                }
                std::fs::remove_file(&target)?;
                Ok(bytes)
            })?;
        if !bound_rx.recv().unwrap_or(false) {
            let _ = receiver.join();
            bail!("the floor's receiver could not listen on node 2");
        }
        let writer = self.start_writer()?;
        let sampler = Sampler::start(self.pids());
        let from = Instant::now();
        let sent = self
            .lab
            .run_in(Host::Node1, move || -> anyhow::Result<u64> {
                let mut conn = std::net::TcpStream::connect((Host::Node2.addr(), COPY_PORT))?;
                let mut bytes = 0;
                for path in [
                    source.clone(),
                    PathBuf::from(format!("{}-wal", source.display())),
                ] {
                    match std::fs::File::open(&path) {
                        Ok(mut file) => bytes += copy(&mut file, &mut conn)?,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                conn.shutdown(std::net::Shutdown::Write)?;
                Ok(bytes)
            });
        if !matches!(sent, Ok(Ok(_))) {
            // Wake the receiver's accept so that its thread ends.
            let _ = self.lab.run_in(Host::Node1, || {
                std::net::TcpStream::connect((Host::Node2.addr(), COPY_PORT))
            });
        }
        let received = receiver
            .join()
            .map_err(|_| anyhow::anyhow!("the floor's receiver panicked"))?;
        let to = Instant::now();
        let usage = sampler.stop();
        let timed = Timed::new(from, to, &writer, usage);
        // Replication is off: node 2 gets these commits with the from-sync.
        writer.stop()?;
        let (sent, received) = (sent??, received??);
        if sent != received {
            bail!("the floor's copy sent {sent} bytes and received {received}");
        }
        Ok((timed, received))
    }
}

impl Drop for Growth<'_> {
    fn drop(&mut self) {
        self.stop_service(Host::Node1);
        self.stop_service(Host::Node2);
    }
}

/// Copies `from` to `to` in 1 MiB pieces; returns the bytes copied.
fn copy(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        to.write_all(buf.get(..n).unwrap_or_default())?;
        total += n as u64;
    }
}

/// The position in a `write-sample` line (`committed <tx> <position>`).
fn position_of(line: &str) -> Option<Position> {
    line.split_whitespace()
        .nth(2)
        .and_then(|p| p.parse().ok())
        .map(Position)
}

fn last(commits: &[(Instant, Position)]) -> Position {
    commits.iter().map(|(_, p)| *p).max().unwrap_or(Position(0))
}

/// The sample workload's writer, a process on node 1; a thread records when
/// each of its commits was reported.
struct Writer {
    child: Child,
    commits: Arc<Mutex<Vec<(Instant, Position)>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Writer {
    fn start(mut cmd: Command) -> anyhow::Result<Writer> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the writer")?;
        let stdout = child.stdout.take().context("the writer's output")?;
        let commits = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&commits);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(p) = position_of(&line)
                    && let Ok(mut seen) = seen.lock()
                {
                    seen.push((Instant::now(), p));
                }
            }
        });
        Ok(Writer {
            child,
            commits,
            reader,
        })
    }

    /// Commits reported between `from` and `to`.
    fn between(&self, from: Instant, to: Instant) -> u64 {
        self.commits.lock().map_or(0, |c| {
            c.iter().filter(|(at, _)| *at >= from && *at <= to).count() as u64
        })
    }

    /// Stops the writer (a transaction it was in is rolled back) and returns
    /// the commits it reported.
    fn stop(mut self) -> anyhow::Result<Vec<(Instant, Position)>> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!("the writer ended early ({status})");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.reader.join();
        let commits = self
            .commits
            .lock()
            .map_err(|_| anyhow::anyhow!("the writer's reader panicked"))?;
        Ok(commits.clone())
    }
}

impl Timed {
    fn new(from: Instant, to: Instant, writer: &Writer, usage: [Usage; 2]) -> Timed {
        let seconds = (to - from).as_secs_f64();
        let commits = writer.between(from, to);
        let [node1, node2] = usage;
        Timed {
            seconds,
            commits,
            tx_per_s: commits as f64 / seconds.max(1e-9),
            node1,
            node2,
        }
    }
}

/// Samples the resident memory of two processes every 20 ms on a thread, and
/// their CPU time from start to stop.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<[Usage; 2]>,
}

impl Sampler {
    fn start(pids: [u32; 2]) -> Sampler {
        use crate::site::usage::{cpu_ticks, rss_kib, ticks_per_second};
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let ticks0 = pids.map(|p| cpu_ticks(p).unwrap_or(0));
            let mut peak = [0u64; 2];
            loop {
                for (peak, pid) in peak.iter_mut().zip(pids) {
                    *peak = (*peak).max(rss_kib(pid));
                }
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let wall = started.elapsed().as_secs_f64().max(1e-9);
            let per_s = ticks_per_second();
            let mut out = [Usage::default(), Usage::default()];
            for (((u, pid), t0), peak) in out.iter_mut().zip(pids).zip(ticks0).zip(peak) {
                let used = cpu_ticks(pid).unwrap_or(t0).saturating_sub(t0);
                u.rss_peak_mib = peak as f64 / 1024.0;
                u.cpu_s = used as f64 / per_s;
                u.cpu_percent = 100.0 * u.cpu_s / wall;
            }
            out
        });
        Sampler { stop, thread }
    }

    fn stop(self) -> [Usage; 2] {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// The nodes' configs: the replication area's, with `max_backlog` above the
/// backlog the catch-up builds.
fn write_configs(dir: &Path, changes: u64) -> anyhow::Result<()> {
    let max_backlog = changes.saturating_mul(4).max(1_000_000);
    super::replication::write_configs_with(dir, &format!("max_backlog = {max_backlog}\n"))
}

impl Results {
    fn print(&self) {
        println!(
            "\nHow cost grows (SQLite; writer: the sample workload, {} rows per transaction, one writer on node 1):",
            self.writer_rows_per_transaction
        );
        println!(
            "  {:<58} {:>9} {:>9} {:>8} {:>22} {:>22}",
            "phase", "s", "tx/s", "x steady", "node 1 RSS, CPU", "node 2 RSS, CPU"
        );
        let steady = self.steady_tx_per_s;
        println!(
            "  {:<58} {:>9} {:>9.0} {:>8.2}",
            "steady, node 2 in step", "", steady, 1.0
        );
        let line = |what: String, t: &Timed| {
            let u = |u: &Usage| format!("{:.1} MiB, {:.0}%", u.rss_peak_mib, u.cpu_percent);
            println!(
                "  {:<58} {:>9.2} {:>9.0} {:>8.2} {:>22} {:>22}",
                what,
                t.seconds,
                t.tx_per_s,
                t.tx_per_s / steady.max(1e-9),
                u(&t.node1),
                u(&t.node2)
            );
        };
        line(
            format!(
                "catch-up of {} changes ({} rows per tx)",
                self.changes, self.bulk_rows_per_transaction
            ),
            &self.catch_up,
        );
        line(
            format!(
                "from-sync of the same database ({:.0} MiB, {:.0} in use)",
                self.same_db_mib, self.same_db_used_mib
            ),
            &self.from_sync_same,
        );
        line(
            format!(
                "plain TCP copy + fsync of {:.0} MiB (floor)",
                self.large.db_mib
            ),
            &self.large.floor,
        );
        line(
            format!("from-sync of {:.0} MiB", self.large.db_mib),
            &self.large.from_sync,
        );
        println!(
            "  changes made with node 2 away at {:.0} rows/s; checksums equal on both nodes after each phase: {}",
            self.bulk_rows_per_s, self.checksums_equal
        );
        let rows: Vec<String> = self
            .final_rows
            .iter()
            .map(|(t, n)| format!("{t} {n}"))
            .collect();
        println!("  rows at the end, both nodes: {}", rows.join(", "));
    }

    fn summary(&self) -> Vec<super::Row> {
        let steady = self.steady_tx_per_s;
        let usage = |t: &Timed| {
            format!(
                "node 1 {:.1} MiB, {:.0}% CPU; node 2 {:.1} MiB, {:.0}% CPU",
                t.node1.rss_peak_mib,
                t.node1.cpu_percent,
                t.node2.rss_peak_mib,
                t.node2.cpu_percent
            )
        };
        let steady_text = format!("node 2 in step: {steady:.0}");
        let large = self.large.db_mib;
        vec![
            super::Row::new(
                "growth",
                format!("catch-up of {} changes (s)", self.changes),
                format!("{:.2} s", self.catch_up.seconds),
                format!(
                    "from-sync of the same database ({:.0} MiB, {:.0} in use): {:.2} s",
                    self.same_db_mib, self.same_db_used_mib, self.from_sync_same.seconds
                ),
            )
            .ratio(self.catch_up.seconds, self.from_sync_same.seconds),
            super::Row::new(
                "growth",
                "node 1's commit rate during the catch-up (tx/s)",
                format!("{:.0}", self.catch_up.tx_per_s),
                steady_text.clone(),
            )
            .ratio(self.catch_up.tx_per_s, steady),
            super::Row::new(
                "growth",
                format!(
                    "node 1's commit rate during the from-sync of {:.0} MiB (tx/s)",
                    self.same_db_mib
                ),
                format!("{:.0}", self.from_sync_same.tx_per_s),
                steady_text.clone(),
            )
            .ratio(self.from_sync_same.tx_per_s, steady),
            super::Row::new(
                "growth",
                format!("from-sync of {large:.0} MiB (s)"),
                format!("{:.2} s", self.large.from_sync.seconds),
                format!(
                    "file over plain TCP + fsync: {:.2} s",
                    self.large.floor.seconds
                ),
            )
            .ratio(self.large.from_sync.seconds, self.large.floor.seconds),
            super::Row::new(
                "growth",
                format!("node 1's commit rate during the from-sync of {large:.0} MiB (tx/s)"),
                format!("{:.0}", self.large.from_sync.tx_per_s),
                format!(
                    "{steady_text}; during the plain copy: {:.0}",
                    self.large.floor.tx_per_s
                ),
            )
            .ratio(self.large.from_sync.tx_per_s, steady),
            super::Row::new(
                "growth",
                format!("services during the catch-up of {} changes", self.changes),
                usage(&self.catch_up),
                "",
            ),
            super::Row::new(
                "growth",
                format!(
                    "services during the from-sync of {:.0} MiB",
                    self.same_db_mib
                ),
                usage(&self.from_sync_same),
                "",
            ),
            super::Row::new(
                "growth",
                format!("services during the from-sync of {large:.0} MiB"),
                usage(&self.large.from_sync),
                "",
            ),
        ]
    }
}
