//! Feeds the structure-aware generator of the integration tests
//! (`tests/common/generate.rs`): any input becomes an internally consistent
//! bundle (valid manifest, checksums and trailer) with hostile paths, link
//! targets, types, modes, owners, name lengths and reserved names, and is
//! restored onto a real scratch tree, stopped (or "killed") at a step the input
//! picks. The invariant: the old tree or the new one, nothing left behind, and
//! the next restore and rollback work. A failed check panics, which libFuzzer
//! reports.
#![no_main]
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/mod.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((stop, seed)) = data.split_first() else {
        return;
    };
    let generated = common::generate::bundle(seed);
    common::generate::restore_keeps_the_invariant(&generated, common::generate::failpoint(*stop));
});
