//! What `cargo xtask demo`, `chaos` and `bench failover` share: the site itself
//! ([`Site`]: lab, layout, binaries, agents, set-up options, in [`harness`]), the
//! operator's additions to the node config ([`config`]), building the two
//! binaries, the example application ([`app`]: a writer that acknowledges only
//! replicated writes), the client on the shared address with its list of
//! acknowledged transactions ([`client()`]), the agents' status pages read over
//! HTTP, the facts of each lab node, where a site keeps its files ([`Layout`]),
//! process helpers ([`process`]) and the processes' memory and CPU ([`usage`]).

pub(crate) mod app;
pub(crate) mod client;
pub(crate) mod config;
pub(crate) mod harness;
pub(crate) mod process;
pub(crate) mod usage;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tandem_lab::{Host, Lab};
use tandem_node::LoadSettings;
use tandem_replication::{BackendKind, Settings, SqliteBackend};
use tandem_sample as sample;

pub(crate) use app::{APP_PORT, serve_app};
pub(crate) use client::{FIRST_TX, Sample, acknowledged, client, latest_answer, wait_answered};
pub(crate) use harness::{Backend, Narration, Site, SiteOptions};

/// Set (to anything): a site's directory with its configs and agent logs is
/// kept, and its path printed, instead of removed at the end (the demo's site of
/// `bench failover`'s writing client, and each setting of its unplanned runs).
pub(crate) const KEEP_SITE_ENV: &str = "TANDEM_KEEP_SITE";

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
#[derive(Debug, Clone)]
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

/// The agents' status page port.
pub(crate) const STATUS_PORT: u16 = tandem_node::DEFAULT_STATUS_PORT;

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
    pub(crate) fn app_service(&self, host: Host) -> tandem_node::ServiceSpec {
        let paused = self.app_paused(host);
        let drained = app::drained_path(&paused);
        let (paused, drained) = (paused.display(), drained.display());
        config::active_service(
            "meetings-app",
            format!("rm -f '{paused}'"),
            format!(
                "rm -f '{drained}'; touch '{paused}'; i=0; while [ ! -e '{drained}' ] \
                 && [ $i -lt 2000 ]; do sleep 0.001; i=$((i+1)); done"
            ),
            5000,
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
