//! `cargo xtask bench netif` (not written yet).

pub(crate) fn run() -> anyhow::Result<()> {
    anyhow::bail!("bench netif is not written yet")
}
