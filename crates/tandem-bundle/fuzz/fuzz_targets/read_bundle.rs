//! Feeds arbitrary bytes to the bundle reader, twice: as they are (the trailer
//! and checksum check) and sealed with a valid trailer, so the gzip, tar,
//! entry-rule and manifest code sees them. The reader must return an error or a
//! manifest, never panic, and stay within its limits. A third pass hands the
//! input to the structure-aware generator of the integration tests, whose
//! bundles are internally consistent, so the reader's own rules are what
//! refuses them.
#![no_main]
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use libfuzzer_sys::fuzz_target;
use sha2::Digest;
use tandem_bundle::{BundleSpec, Limits};

#[path = "../../tests/common/mod.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let spec = BundleSpec {
        limits: Limits {
            max_total_bytes: 16 << 20,
            max_entries: 10_000,
            ..Limits::default()
        },
        ..BundleSpec::default()
    };
    let _ = tandem_bundle::verify_bytes(data, &spec);
    let digest: [u8; 32] = sha2::Sha256::digest(data).into();
    let mut sealed = data.to_vec();
    sealed.extend_from_slice(&tandem_bundle::format::trailer(&digest));
    let _ = tandem_bundle::verify_bytes(&sealed, &spec);
    let generated = common::generate::bundle(data);
    let _ = tandem_bundle::verify_bytes(&generated.bytes, &spec);
});
