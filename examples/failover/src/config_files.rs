//! `copy-config-files` and `restore-config-files`: the config files and custom
//! prompts that the database does not replicate, through `tandem-bundle`.
//!
//! `copy-config-files` writes the bundle to `<state dir>/outgoing/config-files.tar.gz`
//! and hands it to the running agent, which sends it over the peer link; the
//! standby's agent keeps it at `<state dir>/incoming/config-files.tar.gz`, where
//! `restore-config-files` looks by default. With `--output FILE` (or when no agent
//! runs) the bundle is only written, for the operator to copy by hand.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;
use tandem_bundle::{Action, BundleSpec, CreateOptions, RestoreOptions, RestoreReport};
use tandem_node::load_bundle_spec;
use tandem_role::{DeploymentMode, Role, StateFile};

use crate::Common;
use crate::progress::Bar;

/// Arguments of `copy-config-files`.
#[derive(clap::Args)]
pub(crate) struct CopyArgs {
    /// Only write the bundle to this file; do not send it to the standby.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// This node's deployment and role as its state file says (the agent keeps it
/// current); `None` before `set-deployment`.
fn role_of(common: &Common) -> anyhow::Result<Option<(DeploymentMode, Role)>> {
    let state = StateFile::in_dir(&common.state_dir).load()?;
    Ok(state.map(|s| (s.deployment, s.role)))
}

/// Arguments of `restore-config-files`.
#[derive(clap::Args)]
pub(crate) struct RestoreArgs {
    /// The bundle to restore (default: the received one,
    /// `<state dir>/incoming/config-files.tar.gz`).
    #[arg(long, value_name = "FILE", conflicts_with = "rollback")]
    bundle: Option<PathBuf>,
    /// Restore root NAME into DIR/NAME instead of the config's path (staging, tests).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// List what would change; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Put back what the last restore replaced, from its backup bundle.
    #[arg(long)]
    rollback: bool,
    /// Restore on the active node too (the seed restores on the standby only:
    /// the active's files are the ones the site runs on).
    #[arg(long)]
    force: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// The bundle `copy-config-files` writes when no `--output` is given.
fn outgoing_path(state_dir: &Path) -> PathBuf {
    state_dir.join("outgoing").join("config-files.tar.gz")
}

#[derive(Serialize)]
struct CopyOutput<'a> {
    bundle: &'a Path,
    #[serde(flatten)]
    report: &'a tandem_bundle::CreateReport,
    /// Where it was sent, if it was.
    sent_to: Option<String>,
}

pub(crate) fn copy(common: &Common, args: &CopyArgs) -> anyhow::Result<ExitCode> {
    if args.output.is_none()
        && let Some((DeploymentMode::Failover, Role::Standby)) = role_of(common)?
    {
        anyhow::bail!(
            "this node is the standby: config files are copied from the active node to the \
             standby only. Run `failover copy-config-files` on the active node, or use \
             `--output FILE` to only write a bundle here"
        );
    }
    let spec = load_bundle_spec(&common.config)?;
    if spec.roots.is_empty() {
        anyhow::bail!(
            "{} has no [[bundle.roots]]: nothing to copy. For example:\n\n{}",
            common.config.display(),
            BundleSpec::EXAMPLE
        );
    }
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| outgoing_path(&common.state_dir));
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        tandem_node::create_private_dir(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut bar = Bar::new();
    let report = tandem_bundle::create_file(&spec, &output, &CreateOptions::default(), &mut |p| {
        bar.update(p)
    });
    bar.finish();
    let report = report.with_context(|| format!("bundling into {}", output.display()))?;
    let sent_to = if args.output.is_none() {
        send_to_peer(common, &output)?
    } else {
        None
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&CopyOutput {
                bundle: &output,
                report: &report,
                sent_to,
            })?
        );
        return Ok(ExitCode::SUCCESS);
    }
    for skipped in &report.skipped {
        println!("skipped  {}: {}", skipped.path.display(), skipped.reason);
    }
    println!(
        "Bundled {} files ({} bytes) in {} entries from {} roots into {} ({} bytes, sha256 {}).",
        report.files,
        report.content_bytes,
        report.entries,
        spec.roots.len(),
        output.display(),
        report.bundle_bytes,
        report.sha256
    );
    match (&sent_to, args.output.is_none()) {
        (Some(peer), _) => println!(
            "Sent to the standby ({peer}). Run `failover restore-config-files` there to put the files in place."
        ),
        (None, true) => println!(
            "No agent runs on this node, so nothing was sent: copy the bundle to the standby's {} and run `failover restore-config-files` there.",
            tandem_bundle::incoming_path(Path::new("<state dir>")).display()
        ),
        (None, false) => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// Hands the bundle to this node's agent for the peer link. `None` when no agent
/// runs; an error when the agent cannot reach the peer.
fn send_to_peer(common: &Common, bundle: &Path) -> anyhow::Result<Option<String>> {
    use tandem_node::control::{self, ControlError, Request, Response};
    let path =
        std::fs::canonicalize(bundle).with_context(|| format!("resolving {}", bundle.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let request = Request::SendBundle { path };
    let answer = rt.block_on(control::request(
        &common.state_dir,
        &request,
        std::time::Duration::from_secs(600),
    ));
    match answer {
        Ok(Response::Sent { bytes, peer }) => Ok(Some(format!("{peer}, {bytes} bytes"))),
        Ok(Response::Error(e)) => anyhow::bail!("the bundle was written but not sent: {e}"),
        Ok(_) => anyhow::bail!("the agent answered something unexpected"),
        Err(ControlError::NoAgent { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn restore(common: &Common, args: &RestoreArgs) -> anyhow::Result<ExitCode> {
    if args.root.is_none()
        && !args.dry_run
        && !args.force
        && let Some((DeploymentMode::Failover, Role::Active)) = role_of(common)?
    {
        anyhow::bail!(
            "this node is the active server: config files are restored on the standby, from \
             the bundle the active sent. Run it on the standby, `--dry-run` to see what would \
             change, or `--force` to replace the active's files anyway"
        );
    }
    let spec = load_spec(common, args.root.is_some())?;
    let mut options = RestoreOptions::new(&common.state_dir).dry_run(args.dry_run);
    if let Some(root) = &args.root {
        if !args.dry_run {
            std::fs::create_dir_all(root)
                .with_context(|| format!("creating {}", root.display()))?;
        }
        options = options.under(root);
    }
    let mut bar = Bar::new();
    let (what, result) = if args.rollback {
        (
            "rollback",
            tandem_bundle::rollback(&options, &mut |p| bar.update(p)).context("rolling back"),
        )
    } else {
        let bundle = args
            .bundle
            .clone()
            .unwrap_or_else(|| tandem_bundle::incoming_path(&common.state_dir));
        let result = tandem_bundle::restore(&bundle, &spec, &options, &mut |p| bar.update(p))
            .with_context(|| format!("restoring {}", bundle.display()));
        ("restore", result)
    };
    bar.finish();
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(what, &report);
    }
    Ok(ExitCode::SUCCESS)
}

/// The node config's `[bundle]` table; with `--root` and no config file at the
/// default path, an empty spec (default limits, no `node` globs).
fn load_spec(common: &Common, under_root: bool) -> anyhow::Result<BundleSpec> {
    if under_root && !common.config_given && !common.config.exists() {
        return Ok(BundleSpec::default());
    }
    Ok(load_bundle_spec(&common.config)?)
}

fn print_report(what: &str, report: &RestoreReport) {
    if let Some(recovered) = report.recovered {
        let how = match recovered {
            tandem_bundle::Recovered::Cleaned => "its staging was removed",
            tandem_bundle::Recovered::RolledBack => "the old files were put back",
            tandem_bundle::Recovered::Completed => "it was completed",
            _ => "it was finished",
        };
        println!("An interrupted restore was found first: {how}.");
    }
    for change in report
        .changes
        .iter()
        .filter(|c| c.action != Action::Unchanged)
    {
        let action = match change.action {
            Action::Create => "create",
            Action::Replace => "replace",
            Action::Update => "update",
            Action::Remove => "remove",
            Action::Keep => "keep",
            _ => "change",
        };
        println!("{action:<8} {}", change.target.display());
    }
    let changed = report.changed();
    let unchanged = report.changes.len() - changed;
    if report.dry_run {
        println!(
            "Dry run: {what} would change {changed} entries ({unchanged} already up to date); nothing was changed."
        );
        return;
    }
    println!("The {what} changed {changed} entries ({unchanged} already up to date).");
    if let Some(backup) = &report.backup {
        println!(
            "The replaced files are kept in {}; `failover restore-config-files --rollback` puts them back.",
            backup.display()
        );
    }
}
