//! `failover agent`: the node agent in the foreground (for systemd, see
//! `tandem-agent.service` beside this crate's manifest).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tandem_node::NodeConfig;

use crate::Common;

/// Arguments of `agent`.
#[derive(clap::Args)]
pub(crate) struct AgentArgs {
    /// The site key shared by both nodes (made by `failover keygen`); default
    /// `[peer] key_file` in the node config, else /etc/tandem/authkey.
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// TCP port of the status page (`/`, `/status.json`, `/metrics`) on the node
    /// address, and on the shared address while this node holds it; 0 turns it
    /// off.
    #[arg(long, value_name = "PORT", default_value_t = tandem_node::DEFAULT_STATUS_PORT)]
    status_port: u16,
}

/// The soft limit on open files the agent asks for: the status page keeps at
/// most half of it in connections, and its cap of 1024 needs 2048.
const STATUS_PAGE_FILES: u64 = 8192;

pub(crate) fn run(common: &Common, args: &AgentArgs) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: logs sent to a file stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = NodeConfig::load(&common.config)?;
    let key_file = args.key_file.clone().unwrap_or_else(|| config.key_file());
    let key = tandem_peer::SiteKey::load(&key_file).with_context(|| {
        format!(
            "the agent needs the site key {}; make one with `failover keygen` and copy it to both nodes",
            key_file.display()
        )
    })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (status, status_rx) =
            tokio::sync::watch::channel(tandem_node::StatusSnapshot::initial(&config));
        let (stop_page, mut page_stopped) = tokio::sync::watch::channel(false);
        let page = if args.status_port != 0 {
            match tandem_node::raise_open_file_limit(STATUS_PAGE_FILES) {
                Ok(limit) => tracing::debug!(limit, "open files"),
                Err(e) => tracing::warn!(error = %e, "the status page keeps fewer connections"),
            }
            let listeners = tandem_node::bind_status_listeners(&config.network, args.status_port)?;
            Some(tokio::spawn(async move {
                let stopped = async move {
                    let _ = page_stopped.wait_for(|s| *s).await;
                };
                let server = tandem_node::StatusServer::new(status_rx);
                if let Err(e) = server.serve_all(listeners, stopped).await {
                    tracing::warn!(error = %e, "status page stopped");
                }
            }))
        } else {
            None
        };
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(term) => term,
                    Err(_) => return std::future::pending().await,
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        let result = tandem_node::run_agent(config, &common.state_dir, key, status, shutdown).await;
        stop_page.send_replace(true);
        if let Some(page) = page {
            let _ = page.await;
        }
        result.map_err(anyhow::Error::from)
    })?;
    Ok(ExitCode::SUCCESS)
}
