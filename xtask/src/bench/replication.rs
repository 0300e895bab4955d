//! `cargo xtask bench replication`: committed transactions per second with replication
//! off, asynchronous and waiting for the standby, and the replication lag, in the lab.

pub(crate) fn run() -> anyhow::Result<()> {
    anyhow::bail!("the replication benchmark is being written")
}
