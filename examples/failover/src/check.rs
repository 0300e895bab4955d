//! `failover check`: the seed's prerequisites as a report (through the running
//! agent, which knows the peer; without one, the local checks only).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tandem_node::NodeConfig;
use tandem_node::check::{CheckReport, PeerView};
use tandem_node::control::{self, ControlError, Request, Response};

use crate::Common;

/// Arguments of `check`.
#[derive(clap::Args)]
pub(crate) struct CheckArgs {
    /// The site key file (for its fingerprint when no agent runs).
    #[arg(long, value_name = "FILE", default_value = "/etc/tandem/authkey")]
    key_file: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(common: &Common, args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report: CheckReport = rt.block_on(async {
        match control::request(&common.state_dir, &Request::Check, Duration::from_secs(30)).await {
            Ok(Response::Check(report)) => anyhow::Ok(report),
            Ok(Response::Error(e)) => anyhow::bail!("the agent could not run the checks: {e}"),
            Ok(_) => anyhow::bail!(
                "the agent answered something unexpected (is it an older version? restart it)"
            ),
            Err(ControlError::NoAgent { .. }) => {
                let config = NodeConfig::load(&common.config)?;
                let fingerprint = tandem_peer::SiteKey::load(&args.key_file)
                    .map(|k| k.fingerprint())
                    .unwrap_or_else(|e| format!("(no key: {e})"));
                let peer = PeerView {
                    missing: Some(
                        "no agent runs on this node: start `failover agent` to check the peer"
                            .into(),
                    ),
                    ..PeerView::default()
                };
                let database = tandem_node::replication_settings(&config, &common.state_dir)
                    .ok()
                    .map(|s| s.database_path())
                    .filter(|p| p.exists());
                Ok(tandem_node::check::run_checks(
                    &config,
                    &fingerprint,
                    &peer,
                    database.as_deref(),
                )
                .await)
            }
            Err(e) => Err(e.into()),
        }
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
