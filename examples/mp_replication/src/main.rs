//! `mp_replication`: work in progress.
fn main() {}
