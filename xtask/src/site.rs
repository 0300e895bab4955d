//! What `cargo xtask demo` and `cargo xtask chaos` share: building the two
//! binaries, the example application (a writer that acknowledges only replicated
//! writes), the client on the shared address with its list of acknowledged
//! transactions, the agents' status pages read over HTTP, the facts of each
//! lab node, and where a site keeps its files ([`Layout`]).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tandem_lab::{Host, Lab};
use tandem_node::LoadSettings;
use tandem_replication::{BackendKind, LinkStatus, ReplicationBackend, Settings, SqliteBackend};
use tandem_sample as sample;

/// Builds the two binaries (the debug profile, as `cargo test` builds them).
pub(crate) fn build_binaries() -> anyhow::Result<Binaries> {
    let root = crate::workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", "failover", "-p", "mp_replication"])
        .current_dir(&root)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building failover and mp_replication failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(Binaries {
        failover: target.join("debug").join("failover"),
        mp_replication: target.join("debug").join("mp_replication"),
    })
}

/// The example application on port 8080 of every address of its node: a line
/// `write N` writes transaction N of the sample workload (a group, a profile and
/// a meeting) and answers `ok <node>` once the standby has it. When the standby is
/// known to be gone it answers after the local commit (the `degrade` policy), if
/// [`tandem_node::DegradeGuard`] allows it (the cable stayed in, the gateway
/// answers, nobody else holds the shared address); a standby's database refuses
/// the write and the answer is `err`.
///
/// While the file `paused` exists (the agent's stop-services step creates it
/// before the shared address is released, see [`Layout::app_service`]) every
/// request is answered `err paused` at once, and the app marks that it holds no
/// request any more by creating `paused` + `.drained`: no answer is lost with the
/// address.
pub(crate) fn serve_app(
    host: Host,
    settings: &Settings,
    stop: &AtomicBool,
    paused: &Path,
) -> anyhow::Result<()> {
    let drained = drained_path(paused);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let backend = Arc::new(AppDb::open(settings).await?);
        let guard = Arc::new(
            tandem_node::DegradeGuard::new(
                tandem_lab::LAB_IFACE,
                tandem_lab::GATEWAY_ADDR.into(),
                tandem_lab::SHARED_ADDR,
                tandem_node::DEFAULT_SETTLE,
            )
            .await?
            // Never alone while the node's agent is down (issue 21: a killed
            // agent left the app acknowledging alone while the peer took over).
            .with_agent(&settings.state_dir, tandem_node::DEFAULT_LEASE_MARGIN),
        );
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", APP_PORT)).await?;
        // Requests are answered concurrently, as a real application server does: one
        // that waits for the standby does not hold up the ones behind it.
        let mut answering = tokio::task::JoinSet::new();
        while !stop.load(Ordering::Relaxed) {
            while answering.try_join_next().is_some() {}
            let pausing = paused.exists();
            if pausing && answering.is_empty() && !drained.exists() {
                std::fs::write(&drained, b"")?;
            }
            let accepted = tokio::time::timeout(Duration::from_millis(2), listener.accept()).await;
            let Ok(Ok((stream, _))) = accepted else {
                continue;
            };
            let backend = Arc::clone(&backend);
            let guard = Arc::clone(&guard);
            let answer = async move {
                let mut stream = tokio::io::BufReader::new(stream);
                let mut line = String::new();
                tokio::io::AsyncBufReadExt::read_line(&mut stream, &mut line).await?;
                let tx: u64 = line
                    .trim()
                    .strip_prefix("write ")
                    .and_then(|n| n.parse().ok())
                    .context("bad request")?;
                let reply = if pausing {
                    "err paused\n".to_owned()
                } else {
                    match backend.write(&guard, tx, host.name()).await {
                        Ok(()) => format!("ok {}\n", host.name()),
                        Err(e) => format!("err {e:#}\n"),
                    }
                };
                tokio::io::AsyncWriteExt::write_all(stream.get_mut(), reply.as_bytes()).await?;
                anyhow::Ok(())
            };
            answering.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), answer).await;
            });
        }
        answering.join_all().await;
        if let Ok(backend) = Arc::try_unwrap(backend) {
            backend.close().await;
        }
        anyhow::Ok(())
    })
}

/// The application's database: the embedded backend's sample tables, or the
/// PostgreSQL site's table.
enum AppDb {
    Sqlite(Box<SqliteBackend>),
    Postgres(crate::pgsite::AppDb),
}

impl AppDb {
    async fn open(settings: &Settings) -> anyhow::Result<AppDb> {
        Ok(match settings.replication.backend {
            BackendKind::Postgres => AppDb::Postgres(crate::pgsite::AppDb::open(settings).await?),
            _ => AppDb::Sqlite(Box::new(SqliteBackend::open_existing(settings).await?)),
        })
    }

    async fn write(
        &self,
        guard: &tandem_node::DegradeGuard,
        tx: u64,
        node: &str,
    ) -> anyhow::Result<()> {
        match self {
            AppDb::Sqlite(backend) => write_replicated(backend, guard, tx).await,
            AppDb::Postgres(db) => db.write_replicated(guard, tx, node).await,
        }
    }

    async fn close(self) {
        match self {
            AppDb::Sqlite(backend) => backend.close().await,
            AppDb::Postgres(db) => db.close().await,
        }
    }
}

pub(crate) async fn write_replicated(
    backend: &SqliteBackend,
    guard: &tandem_node::DegradeGuard,
    tx: u64,
) -> anyhow::Result<()> {
    let mark = guard.mark().await;
    let position = {
        let mut conn = backend.writer().await?;
        sample::write_transaction(&mut conn, tx, ROWS).await?
    };
    let Err(e) = backend
        .wait_replicated_while_connected(position, Duration::from_millis(800))
        .await
    else {
        return Ok(());
    };
    let gone = matches!(e, tandem_replication::Error::StandbyUnreachable { .. })
        // For example the replication service is not running.
        || backend.status().await?.remote.status != LinkStatus::Connected;
    if !gone {
        return Err(e.into());
    }
    // The `degrade` policy: with the standby gone, keep serving, but only while
    // this node is the one the site goes on with. A node cut off meanwhile may be
    // the one the operator replaced, and what it acknowledged would go with its
    // data (its answer can still reach the client once the cable is back).
    guard.allow(mark).await.map_err(|refused| {
        anyhow::Error::new(e).context(format!("not acknowledged alone: {refused}"))
    })
}

fn drained_path(paused: &Path) -> PathBuf {
    let mut name = paused.as_os_str().to_owned();
    name.push(".drained");
    PathBuf::from(name)
}

/// How long a write waits for its connection to the shared address: the lab's
/// round trip is well under a millisecond, so a connection not made by then went
/// to a node that is gone.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(20);

/// How long the client waits for an answer before it counts the write as not
/// acknowledged (longer than the application's 800 ms wait for the standby).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// The client's first transaction number: `samples[i]` is transaction
/// `FIRST_TX + i`.
pub(crate) const FIRST_TX: u64 = 1001;

/// The client: sends a write through the shared address every 10 ms and records
/// when each was answered and which node acknowledged it (`samples[i]` is
/// transaction [`FIRST_TX`] + i). The schedule does not wait for answers (an
/// open-loop probe, like the bench's UDP one): a write lost with the address costs
/// that write, not the client's timeout on every write behind it. Once `stop` is
/// set it returns when every write has been answered or given up on.
pub(crate) fn client(
    started: Instant,
    stop: &AtomicBool,
    samples: &Arc<Mutex<Vec<Sample>>>,
) -> anyhow::Result<()> {
    let target = std::net::SocketAddr::from((tandem_lab::SHARED_ADDR, APP_PORT));
    let mut tx = FIRST_TX - 1;
    let mut next = Instant::now();
    let mut writes: Vec<std::thread::JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        tx += 1;
        let index = {
            let mut list = samples
                .lock()
                .map_err(|_| anyhow::anyhow!("samples poisoned"))?;
            list.push(Sample {
                sent: started.elapsed(),
                done: None,
                who: None,
            });
            list.len() - 1
        };
        let samples = Arc::clone(samples);
        // A thread inherits the network namespace of the one that creates it.
        writes.push(std::thread::spawn(move || {
            let who = write_once(target, tx);
            if let Ok(mut list) = samples.lock()
                && let Some(sample) = list.get_mut(index)
            {
                sample.done = Some(started.elapsed());
                sample.who = who;
            }
        }));
        writes.retain(|w| !w.is_finished());
        next = (next + Duration::from_millis(10)).max(Instant::now());
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    for write in writes {
        let _ = write.join();
    }
    Ok(())
}

/// One write of transaction `tx`: the node that acknowledged it, or `None`.
fn write_once(target: std::net::SocketAddr, tx: u64) -> Option<String> {
    let mut s = std::net::TcpStream::connect_timeout(&target, CONNECT_TIMEOUT).ok()?;
    let _ = s.set_read_timeout(Some(ANSWER_TIMEOUT));
    s.write_all(format!("write {tx}\n").as_bytes()).ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    line.trim().strip_prefix("ok ").map(str::to_owned)
}

/// Waits until the client, told to stop, has no write in flight (each is answered
/// or given up on within [`ANSWER_TIMEOUT`]).
pub(crate) fn wait_answered(samples: &Mutex<Vec<Sample>>) {
    // The client looks at `stop` every 10 ms: after this it sends nothing more.
    std::thread::sleep(Duration::from_millis(50));
    let deadline = Instant::now() + ANSWER_TIMEOUT + Duration::from_secs(1);
    while Instant::now() < deadline {
        let in_flight = samples
            .lock()
            .map(|list| list.iter().any(|s| s.done.is_none()))
            .unwrap_or(false);
        if !in_flight {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The transactions that a node acknowledged.
pub(crate) fn acknowledged(samples: &Mutex<Vec<Sample>>) -> Vec<u64> {
    let Ok(list) = samples.lock() else {
        return Vec::new();
    };
    (FIRST_TX..)
        .zip(list.iter())
        .filter(|(_, s)| s.who.is_some())
        .map(|(tx, _)| tx)
        .collect()
}

/// The node that acknowledged the latest write that has been answered (or given
/// up on), if it was acknowledged.
pub(crate) fn latest_answer(samples: &Mutex<Vec<Sample>>) -> Option<String> {
    let list = samples.lock().ok()?;
    list.iter()
        .rev()
        .find(|s| s.done.is_some())
        .and_then(|s| s.who.clone())
}

/// The status page of `host`'s agent, read over HTTP from the client.
pub(crate) fn status_page(host: Host) -> Option<String> {
    let addr = std::net::SocketAddr::from((host.addr(), STATUS_PORT));
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    stream
        .write_all(
            b"GET / HTTP/1.1\r\nHost: node\r\nAccept: text/plain\r\nConnection: close\r\n\r\n",
        )
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let (_, body) = text.split_once("\r\n\r\n")?;
    Some(html_to_text(body))
}

/// The page's text without tags, one line per block.
pub(crate) fn html_to_text(body: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => {
                in_tag = true;
                out.push('\n');
            }
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

pub(crate) fn node_facts(host: Host) -> (u8, std::net::Ipv4Addr, std::net::Ipv4Addr) {
    match host {
        Host::Node1 => (1, tandem_lab::NODE1_ADDR, tandem_lab::NODE2_ADDR),
        _ => (2, tandem_lab::NODE2_ADDR, tandem_lab::NODE1_ADDR),
    }
}

/// The two binaries, built for this run.
pub(crate) struct Binaries {
    pub(crate) failover: PathBuf,
    pub(crate) mp_replication: PathBuf,
}

/// The other node of the pair (node1 for the client, which has no pair).
pub(crate) fn other(host: Host) -> Host {
    match host {
        Host::Node1 => Host::Node2,
        _ => Host::Node1,
    }
}

/// Stops processes as an operator would: SIGTERM to all, up to `grace` for them
/// to exit (an agent releases the shared address on the way out), then SIGKILL.
pub(crate) fn stop_processes<'a>(
    children: impl IntoIterator<Item = &'a mut std::process::Child>,
    grace: Duration,
) {
    let children: Vec<&mut std::process::Child> = children.into_iter().collect();
    for child in &children {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    let deadline = Instant::now() + grace;
    for child in children {
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The example application's port on the shared address.
pub(crate) const APP_PORT: u16 = 8080;

/// The agents' status page port.
pub(crate) const STATUS_PORT: u16 = tandem_node::DEFAULT_STATUS_PORT;

/// Rows per acknowledged write of the application (a group, a profile, a meeting).
pub(crate) const ROWS: u32 = 3;

/// One write of the client, in times since the run started.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    /// When it was sent.
    pub(crate) sent: Duration,
    /// When its answer came or the client gave up; `None` while it is in flight.
    pub(crate) done: Option<Duration>,
    /// The node that acknowledged it, if one did.
    pub(crate) who: Option<String>,
}

/// A GET of `path` on `host`'s status page server, from the caller's namespace:
/// the body, or `None` when the agent does not answer.
pub(crate) fn status_get(host: Host, path: &str) -> Option<String> {
    let addr = std::net::SocketAddr::from((host.addr(), STATUS_PORT));
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// `host`'s `/status.json`, parsed.
pub(crate) fn status_json(host: Host) -> Option<serde_json::Value> {
    serde_json::from_str(&status_get(host, "/status.json")?).ok()
}

/// Where a two-node site keeps its files under one directory: the site key, each
/// node's config (`<node>.toml`), state directory (`<node>/`) and config-file
/// roots (`<node>-files/`); and the two tools run inside a node's namespace
/// against them.
pub(crate) struct Layout<'a> {
    /// The site's directory.
    pub(crate) dir: &'a Path,
}

impl Layout<'_> {
    pub(crate) fn key_file(&self) -> String {
        self.dir.join("authkey").display().to_string()
    }

    pub(crate) fn config_path(&self, host: Host) -> PathBuf {
        self.dir.join(format!("{}.toml", host.name()))
    }

    pub(crate) fn state_dir(&self, host: Host) -> PathBuf {
        self.dir.join(host.name())
    }

    pub(crate) fn files(&self, host: Host) -> PathBuf {
        self.dir.join(format!("{}-files", host.name()))
    }

    /// `program --config <node>.toml --state-dir <node>/` inside `host`'s namespace.
    pub(crate) fn tool(&self, lab: &Lab, program: &Path, host: Host) -> Command {
        let mut cmd = lab.command(host, &program.display().to_string());
        cmd.arg("--config")
            .arg(self.config_path(host))
            .arg("--state-dir")
            .arg(self.state_dir(host));
        cmd
    }

    /// The example application's pause file on `host` (see [`serve_app`]).
    pub(crate) fn app_paused(&self, host: Host) -> PathBuf {
        self.state_dir(host).join("app.paused")
    }

    /// The `[[service]]` entry that runs the example application with the node:
    /// started (unpaused) once the node is active, stopped (paused and drained of
    /// the request it holds) before the shared address is released.
    pub(crate) fn app_service(&self, host: Host) -> String {
        let paused = self.app_paused(host);
        let drained = drained_path(&paused);
        format!(
            r#"
[[service]]
name = "meetings-app"
start = "rm -f '{paused}'"
stop = "rm -f '{drained}'; touch '{paused}'; i=0; while [ ! -e '{drained}' ] && [ $i -lt 400 ]; do sleep 0.005; i=$((i+1)); done"
run_on = "active"
timeout_ms = 5000
"#,
            paused = paused.display(),
            drained = drained.display(),
        )
    }

    /// The acknowledged transactions whose rows `host`'s database lacks.
    pub(crate) fn missing(&self, host: Host, acked: &[u64]) -> anyhow::Result<BTreeSet<u64>> {
        let settings = Settings::load(&self.config_path(host), true, self.state_dir(host))?;
        if settings.replication.backend == BackendKind::Postgres {
            return crate::pgsite::missing(&settings, acked);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let backend = SqliteBackend::open_existing(&settings).await?;
            let mut conn = backend.pool().acquire().await?;
            let present = sample::transactions_present(&mut conn).await?;
            drop(conn);
            backend.close().await;
            Ok(acked
                .iter()
                .filter(|tx| !present.contains(tx))
                .copied()
                .collect())
        })
    }
}
