//! `cargo xtask lab`: the namespace lab for people.

/// Arguments of `cargo xtask lab`.
#[derive(clap::Args)]
pub(crate) struct Args {}

pub(crate) fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("lab is not written yet")
}
