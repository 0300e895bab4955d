//! `cargo xtask bench bundle` (not written yet).

pub(crate) fn run() -> anyhow::Result<()> {
    anyhow::bail!("bench bundle is not written yet")
}
