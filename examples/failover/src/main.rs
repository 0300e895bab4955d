//! `failover`: work in progress.
fn main() {}
