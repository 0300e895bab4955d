//! `cargo xtask ci`: what CI runs, which is `.ci/run` (install what is missing,
//! fmt, clippy, the whole test suite).

use anyhow::{Context, bail};

/// Arguments of `cargo xtask ci`.
#[derive(clap::Args)]
pub(crate) struct Args {}

pub(crate) fn run(_args: Args) -> anyhow::Result<()> {
    let script = crate::workspace_root().join(".ci/run");
    let status = std::process::Command::new("bash")
        .arg(&script)
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", script.display());
    }
    Ok(())
}
