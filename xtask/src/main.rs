//! tandem's automation (work in progress).
fn main() {}
