//! The example application of the lab's site: a writer on port 8080 of each node
//! that acknowledges a write only once the standby has it (or, with the standby
//! gone, when the degrade guard allows it alone).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tandem_lab::Host;
use tandem_replication::{BackendKind, LinkStatus, ReplicationBackend, Settings, SqliteBackend};
use tandem_sample as sample;

/// The example application's port on the shared address.
pub(crate) const APP_PORT: u16 = 8080;

/// Rows per acknowledged write of the application (a group, a profile, a meeting).
pub(crate) const ROWS: u32 = 3;

/// The example application on port 8080 of every address of its node: a line
/// `write N` writes transaction N of the sample workload (a group, a profile and
/// a meeting) and answers `ok <node>` once the standby has it. When the standby is
/// known to be gone it answers after the local commit (the `degrade` policy), if
/// [`tandem_node::DegradeGuard`] allows it (the cable stayed in, the gateway
/// answers, nobody else holds the shared address); a standby's database refuses
/// the write and the answer is `err`.
///
/// While the file `paused` exists (the agent's stop-services step creates it
/// before the shared address is released, see [`Layout::app_service`](super::Layout::app_service)) every
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
        // When this app first saw the pause file, for the slow-drain line.
        let mut paused_at: Option<Instant> = None;
        let mut said_slow = false;
        while !stop.load(Ordering::Relaxed) {
            while answering.try_join_next().is_some() {}
            let pausing = paused.exists();
            if !pausing {
                (paused_at, said_slow) = (None, false);
            } else if paused_at.is_none() {
                paused_at = Some(Instant::now());
            }
            if pausing && answering.is_empty() && !drained.exists() {
                std::fs::write(&drained, b"")?;
                // The agent's stop hook gives up waiting after about 3.6 s: say
                // what held the drain when it took long (the requests log their
                // own lines as they end).
                if let Some(at) = paused_at.filter(|at| at.elapsed() >= SLOW) {
                    eprintln!(
                        "app {}: drained {} ms after the pause",
                        host.name(),
                        at.elapsed().as_millis()
                    );
                }
            } else if let Some(at) = paused_at
                && at.elapsed() >= SLOW
                && !said_slow
                && !drained.exists()
            {
                said_slow = true;
                eprintln!(
                    "app {}: paused {} ms ago, {} requests still in flight",
                    host.name(),
                    at.elapsed().as_millis(),
                    answering.len()
                );
            }
            let accepted = tokio::time::timeout(Duration::from_millis(2), listener.accept()).await;
            let Ok(Ok((stream, _))) = accepted else {
                continue;
            };
            let backend = Arc::clone(&backend);
            let guard = Arc::clone(&guard);
            let steps = Arc::new(Steps::new());
            let answer_steps = Arc::clone(&steps);
            let answer = async move {
                let steps = answer_steps;
                let started = Instant::now();
                let mut stream = tokio::io::BufReader::new(stream);
                let mut line = String::new();
                tokio::io::AsyncBufReadExt::read_line(&mut stream, &mut line).await?;
                let tx: u64 = line
                    .trim()
                    .strip_prefix("write ")
                    .and_then(|n| n.parse().ok())
                    .context("bad request")?;
                let read = started.elapsed();
                let reply = if pausing {
                    "err paused\n".to_owned()
                } else {
                    match backend.write(&guard, tx, host.name(), &steps).await {
                        Ok(()) => format!("ok {}\n", host.name()),
                        Err(e) => format!("err {e:#}\n"),
                    }
                };
                tokio::io::AsyncWriteExt::write_all(stream.get_mut(), reply.as_bytes()).await?;
                if started.elapsed() >= SLOW {
                    eprintln!(
                        "app {}: write {tx} took {} ms (request read in {} ms; {}): {}",
                        host.name(),
                        started.elapsed().as_millis(),
                        read.as_millis(),
                        steps.text(),
                        reply.trim_end()
                    );
                }
                anyhow::Ok(())
            };
            answering.spawn(async move {
                if tokio::time::timeout(ANSWER_LIMIT, answer).await.is_err() {
                    eprintln!(
                        "app {}: a request got no answer in {} s ({})",
                        host.name(),
                        ANSWER_LIMIT.as_secs(),
                        steps.text()
                    );
                }
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
        steps: &Steps,
    ) -> anyhow::Result<()> {
        match self {
            AppDb::Sqlite(backend) => write_replicated(backend, guard, tx, steps).await,
            AppDb::Postgres(db) => {
                // Its steps are not split: one mark for the whole write.
                steps.at("postgres write");
                db.write_replicated(guard, tx, node).await
            }
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
    steps: &Steps,
) -> anyhow::Result<()> {
    steps.at("mark");
    let mark = guard.mark().await;
    let position = {
        steps.at("write turn");
        let mut conn = backend.writer().await?;
        steps.at("commit");
        sample::write_transaction(&mut conn, tx, ROWS).await?
    };
    steps.at("wait_replicated");
    let Err(e) = backend
        .wait_replicated_while_connected(position, Duration::from_millis(800))
        .await
    else {
        steps.at("acknowledged");
        return Ok(());
    };
    steps.at("status");
    let gone = matches!(e, tandem_replication::Error::StandbyUnreachable { .. })
        // For example the replication service is not running.
        || backend.status().await?.remote.status != LinkStatus::Connected;
    if !gone {
        steps.at("not replicated");
        return Err(e.into());
    }
    steps.at("degrade guard");
    // The `degrade` policy: with the standby gone, keep serving, but only while
    // this node is the one the site goes on with. A node cut off meanwhile may be
    // the one the operator replaced, and what it acknowledged would go with its
    // data (its answer can still reach the client once the cable is back).
    guard.allow(mark).await.map_err(|refused| {
        anyhow::Error::new(e).context(format!("not acknowledged alone: {refused}"))
    })
}

/// How long a request may take before the app gives up on it.
const ANSWER_LIMIT: Duration = Duration::from_secs(5);

/// When a request reached each step of its write, for the slow-request lines.
pub(crate) struct Steps {
    started: Instant,
    at: std::sync::Mutex<Vec<(&'static str, Duration)>>,
}

impl Steps {
    fn new() -> Steps {
        Steps {
            started: Instant::now(),
            at: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The request reached `step` now.
    fn at(&self, step: &'static str) {
        if let Ok(mut at) = self.at.lock() {
            at.push((step, self.started.elapsed()));
        }
    }

    /// `step at N ms, ...`.
    fn text(&self) -> String {
        let at = self.at.lock().map(|a| a.clone()).unwrap_or_default();
        let steps: Vec<String> = at
            .iter()
            .map(|(step, d)| format!("{step} at {} ms", d.as_millis()))
            .collect();
        if steps.is_empty() {
            "no step reached".to_owned()
        } else {
            steps.join(", ")
        }
    }
}

/// A request or a drain that takes this long is logged on stderr (the lab's
/// switchover measures tens of milliseconds).
const SLOW: Duration = Duration::from_millis(500);

pub(super) fn drained_path(paused: &Path) -> PathBuf {
    let mut name = paused.as_os_str().to_owned();
    name.push(".drained");
    PathBuf::from(name)
}
