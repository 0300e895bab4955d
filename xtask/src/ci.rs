//! `cargo xtask ci`: what `.ci/run` runs.

/// Arguments of `cargo xtask ci`.
#[derive(clap::Args)]
pub(crate) struct Args {}

pub(crate) fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("ci is not written yet")
}
