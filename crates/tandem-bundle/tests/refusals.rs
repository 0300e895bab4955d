//! One test per refusal, each on a crafted bundle, each checking that the target
//! tree (and the state directory) is byte for byte what it was.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Raw, Scratch, craft, craft_with, gzip, manifest_for, seal, snapshot, tar_stream};
use tandem_bundle::{BundleSpec, Error, LimitKind, Limits, Refusal, RootSpec};

/// Restores `bundle` under the scratch target with `spec`, expects an error, and
/// checks nothing changed. Returns the error.
fn refused_with(spec: &BundleSpec, bundle: &[u8]) -> Error {
    let s = Scratch::new();
    let before = snapshot(s.dir.path());
    let path = s.write_bundle(bundle);
    let before_with_bundle = snapshot(s.dir.path());
    let err = tandem_bundle::restore(&path, spec, &s.options(), &mut |_| {})
        .expect_err("restore must refuse");
    let after = snapshot(s.dir.path());
    common::assert_same(
        &before_with_bundle,
        &after,
        &format!("after refusal `{err}`"),
    );
    assert!(
        !s.state().exists(),
        "a refused restore must not even create the state directory"
    );
    drop(before);
    // The message names the problem.
    assert!(!err.to_string().is_empty());
    err
}

fn refused(bundle: &[u8]) -> Error {
    refused_with(&BundleSpec::default(), bundle)
}

fn expect_refusal(err: Error, want: &Refusal) {
    match err {
        Error::Refused { reason, .. } if &reason == want => {}
        other => panic!("expected refusal {want:?}, got {other:?} ({other})"),
    }
}

/// A healthy bundle prefix: the root and one file.
fn base() -> Vec<Raw> {
    vec![Raw::dir("r/"), Raw::file("r/ok.conf", b"fine\n")]
}

#[test]
fn a_healthy_crafted_bundle_is_accepted() {
    let s = Scratch::new();
    let path = s.write_bundle(&craft(&["r"], &base()));
    tandem_bundle::restore(&path, &BundleSpec::default(), &s.options(), &mut |_| {}).unwrap();
    assert_eq!(
        std::fs::read(s.target().join("r/ok.conf")).unwrap(),
        b"fine\n"
    );
}

#[test]
fn absolute_path() {
    let mut entries = base();
    entries.push(Raw::file("/etc/evil", b"x"));
    let err = refused(&craft(&["r"], &entries));
    expect_refusal(err, &Refusal::AbsolutePath);
}

#[test]
fn dot_dot_anywhere() {
    for path in ["r/../evil", "r/sub/../../evil", "../evil", "r/.."] {
        let mut entries = base();
        entries.push(Raw::file(path, b"x"));
        let err = refused(&craft(&["r"], &entries));
        expect_refusal(err, &Refusal::DotDot);
    }
}

#[test]
fn symlink_leaving_the_root() {
    let mut entries = base();
    entries.push(Raw::symlink("r/escape", "../../etc/passwd"));
    let err = refused(&craft(&["r"], &entries));
    assert!(
        matches!(
            &err,
            Error::Refused {
                reason: Refusal::LinkEscapes(_),
                ..
            }
        ),
        "{err:?}"
    );

    let mut entries = base();
    entries.push(Raw::symlink("r/abs", "/etc/passwd"));
    let err = refused(&craft(&["r"], &entries));
    assert!(
        matches!(
            &err,
            Error::Refused {
                reason: Refusal::AbsoluteLink(_),
                ..
            }
        ),
        "{err:?}"
    );

    // A name followed by `..` could climb out through another link.
    let mut entries = base();
    entries.push(Raw::symlink("r/self", "."));
    entries.push(Raw::symlink("r/climb", "self/../x"));
    let err = refused(&craft(&["r"], &entries));
    assert!(
        matches!(
            &err,
            Error::Refused {
                reason: Refusal::LinkEscapes(_),
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn hardlink_leaving_the_roots() {
    for target in ["/etc/shadow", "r/../../etc/shadow"] {
        let mut entries = base();
        entries.push(Raw::hardlink("r/hl", target));
        let err = refused(&craft(&["r"], &entries));
        assert!(
            matches!(
                &err,
                Error::Refused {
                    reason: Refusal::LinkEscapes(_),
                    ..
                }
            ),
            "{err:?}"
        );
    }
    // Not an earlier file of the bundle (it may exist on disk: still refused).
    let mut entries = base();
    entries.push(Raw::hardlink("r/hl", "r/keep.conf"));
    let err = refused(&craft(&["r"], &entries));
    assert!(
        matches!(
            &err,
            Error::Refused {
                reason: Refusal::BadHardlink(_),
                ..
            }
        ),
        "{err:?}"
    );
    // Across roots.
    let entries = vec![
        Raw::dir("r/"),
        Raw::dir("q/"),
        Raw::file("q/f", b"1"),
        Raw::hardlink("r/hl", "q/f"),
    ];
    let err = refused(&craft(&["r", "q"], &entries));
    assert!(
        matches!(
            &err,
            Error::Refused {
                reason: Refusal::BadHardlink(_),
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn devices_fifos_and_other_specials() {
    for (kind, what) in [
        (tar::EntryType::Char, "device"),
        (tar::EntryType::Block, "device"),
        (tar::EntryType::Fifo, "fifo"),
    ] {
        let mut entries = base();
        entries.push(Raw::file("r/special", b"").with_kind(kind));
        let err = refused(&craft(&["r"], &entries));
        expect_refusal(err, &Refusal::Special(what));
    }
}

#[test]
fn setuid_and_setgid_unless_allowed() {
    for mode in [0o4755, 0o2755, 0o6755] {
        let mut entries = base();
        entries.push(Raw::file("r/tool", b"#!/bin/sh\n").with_mode(mode));
        let bundle = craft(&["r"], &entries);
        let err = refused(&bundle);
        expect_refusal(err, &Refusal::SetId(mode));

        // With allow_setid the same bundle restores, bits included.
        let s = Scratch::new();
        let path = s.write_bundle(&bundle);
        let spec = BundleSpec {
            allow_setid: true,
            ..BundleSpec::default()
        };
        tandem_bundle::restore(&path, &spec, &s.options(), &mut |_| {}).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let got = std::fs::metadata(s.target().join("r/tool"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(got, mode);
    }
}

#[test]
fn entry_not_in_the_manifest() {
    let mut entries = base();
    let manifest = manifest_for(&["r"], &entries);
    entries.push(Raw::file("r/smuggled", b"x"));
    let err = refused(&craft_with(&entries, &manifest));
    expect_refusal(err, &Refusal::NotInManifest);
}

#[test]
fn manifest_entry_missing_from_the_archive() {
    let entries = base();
    let mut with_extra = entries.clone();
    with_extra.push(Raw::file("r/promised", b"x"));
    let manifest = manifest_for(&["r"], &with_extra);
    let err = refused(&craft_with(&entries, &manifest));
    expect_refusal(err, &Refusal::MissingFromArchive);
}

#[test]
fn manifest_disagrees_with_a_header() {
    let entries = base();
    let mut manifest = manifest_for(&["r"], &entries);
    manifest.entries[1].mode = 0o600;
    let err = refused(&craft_with(&entries, &manifest));
    expect_refusal(err, &Refusal::ManifestMismatch("mode"));
}

#[test]
fn content_checksum_mismatch() {
    let entries = base();
    let mut manifest = manifest_for(&["r"], &entries);
    manifest.entries[1].sha256 = Some("00".repeat(32));
    let err = refused(&craft_with(&entries, &manifest));
    expect_refusal(err, &Refusal::ContentMismatch);
}

#[test]
fn whole_bundle_checksum_mismatch() {
    let mut bundle = craft(&["r"], &base());
    bundle[20] ^= 0x40;
    let err = refused(&bundle);
    assert!(matches!(err, Error::Checksum { .. }), "{err:?}");
}

#[test]
fn truncated_bundle() {
    let bundle = craft(&["r"], &base());
    let err = refused(&bundle[..bundle.len() - 10]);
    assert!(matches!(err, Error::NotABundle(_)), "{err:?}");
    let err = refused(&[]);
    assert!(matches!(err, Error::NotABundle(_)), "{err:?}");
}

#[test]
fn truncated_gzip_inside_a_valid_trailer() {
    let json = serde_json::to_vec(&manifest_for(&["r"], &base())).unwrap();
    let gz = gzip(&tar_stream(&base(), Some(&json)));
    let err = refused(&seal(gz[..gz.len() / 2].to_vec()));
    assert!(matches!(err, Error::Corrupt(_)), "{err:?}");
}

#[test]
fn corrupt_gzip_inside_a_valid_trailer() {
    let json = serde_json::to_vec(&manifest_for(&["r"], &base())).unwrap();
    let mut gz = gzip(&tar_stream(&base(), Some(&json)));
    let n = gz.len();
    gz[n - 12] ^= 0xff; // inside the deflate data or its CRC
    let err = refused(&seal(gz));
    assert!(matches!(err, Error::Corrupt(_)), "{err:?}");
    let err = refused(&seal(b"this is not gzip at all".to_vec()));
    assert!(matches!(err, Error::Corrupt(_)), "{err:?}");
}

#[test]
fn corrupt_tar_inside_a_valid_trailer() {
    let json = serde_json::to_vec(&manifest_for(&["r"], &base())).unwrap();
    let mut tar = tar_stream(&base(), Some(&json));
    tar[512 + 148] ^= 0x01; // header checksum of the second entry
    let err = refused(&seal(gzip(&tar)));
    assert!(matches!(err, Error::Corrupt(_)), "{err:?}");
    // Garbage after the end of the archive.
    let mut tar = tar_stream(&base(), Some(&json));
    tar.extend_from_slice(&[0u8; 1024]);
    tar.extend_from_slice(b"trailing garbage");
    let err = refused(&seal(gzip(&tar)));
    assert!(matches!(err, Error::Corrupt(_)), "{err:?}");
}

fn limited(limits: Limits) -> BundleSpec {
    BundleSpec {
        limits,
        ..BundleSpec::default()
    }
}

#[test]
fn total_size_past_the_limit_stops_at_the_header() {
    let mut entries = base();
    entries.push(Raw::file("r/big", &vec![7u8; 100_000]));
    let spec = limited(Limits {
        max_total_bytes: 50_000,
        ..Limits::default()
    });
    match refused_with(&spec, &craft(&["r"], &entries)) {
        Error::Limit {
            kind: LimitKind::TotalBytes,
            decompressed,
            ..
        } => {
            assert!(decompressed < 50_000, "stopped after {decompressed} bytes");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn entry_count_past_the_limit() {
    let mut entries = base();
    for i in 0..20 {
        entries.push(Raw::file(&format!("r/f{i}"), b""));
    }
    let spec = limited(Limits {
        max_entries: 10,
        ..Limits::default()
    });
    let err = refused_with(&spec, &craft(&["r"], &entries));
    assert!(
        matches!(
            err,
            Error::Limit {
                kind: LimitKind::Entries,
                value: 11,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn decompression_bomb_stops_early() {
    // 64 MiB of zeros in one file compresses about 1000:1.
    const BOMB: usize = 64 << 20;
    let mut entries = base();
    entries.push(Raw::file("r/bomb", &vec![0u8; BOMB]));
    let bundle = craft(&["r"], &entries);
    assert!(
        bundle.len() < BOMB / 200,
        "the bomb is {} bytes",
        bundle.len()
    );
    let spec = limited(Limits {
        max_ratio: 100,
        ratio_grace_bytes: 1 << 20,
        ..Limits::default()
    });
    match refused_with(&spec, &bundle) {
        Error::Limit {
            kind: LimitKind::Ratio,
            decompressed,
            ..
        } => {
            assert!(
                decompressed < 8 << 20,
                "stopped only after {decompressed} bytes"
            );
        }
        other => panic!("{other:?}"),
    }
    // The default limits let a genuine large file through but not this ratio.
    let err = refused_with(&BundleSpec::default(), &bundle);
    assert!(
        matches!(
            err,
            Error::Limit {
                kind: LimitKind::Ratio,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn node_class_entries() {
    let mut entries = base();
    entries.push(Raw::file("r/server.xml", b"<node-specific/>"));
    let spec = BundleSpec {
        node: vec!["r/server.xml".into()],
        ..BundleSpec::default()
    };
    let err = refused_with(&spec, &craft(&["r"], &entries));
    expect_refusal(err, &Refusal::NodeClass);
}

#[test]
fn duplicate_orphan_after_manifest_and_unknown_root() {
    let mut entries = base();
    entries.push(Raw::file("r/ok.conf", b"again"));
    let manifest = manifest_for(&["r"], &base());
    expect_refusal(
        refused(&craft_with(&entries, &manifest)),
        &Refusal::Duplicate,
    );

    let mut entries = base();
    entries.push(Raw::file("r/nodir/f", b"x"));
    expect_refusal(refused(&craft(&["r"], &entries)), &Refusal::Orphan);

    let mut entries = base();
    entries.push(Raw::file("r/f-not-root", b"x"));
    let err = refused(&craft(&["q"], &entries));
    assert!(
        matches!(
            &err,
            Error::Refused {
                reason: Refusal::UnknownRoot(_),
                ..
            }
        ),
        "{err:?}"
    );

    // A root entry must be a directory.
    let entries = vec![Raw::file("r", b"x")];
    let err = refused(&craft(&["r"], &entries));
    assert!(
        matches!(
            &err,
            Error::Refused {
                reason: Refusal::BadPath(_),
                ..
            }
        ),
        "{err:?}"
    );

    // Anything after the manifest.
    let json = serde_json::to_vec(&manifest_for(&["r"], &base())).unwrap();
    let mut tar = tar_stream(&base(), Some(&json));
    let extra = tar_stream(&[Raw::file("r/late", b"x")], None);
    let end = tar.len() - 1024; // drop the end-of-archive blocks
    tar.truncate(end);
    tar.extend_from_slice(&extra);
    expect_refusal(refused(&seal(gzip(&tar))), &Refusal::AfterManifest);
}

#[test]
fn bundle_root_not_in_the_local_spec() {
    let s = Scratch::new();
    let path = s.write_bundle(&craft(&["r"], &base()));
    let spec = BundleSpec {
        roots: vec![RootSpec::new("other", s.target().join("other"))],
        ..BundleSpec::default()
    };
    let before = snapshot(s.dir.path());
    let options = tandem_bundle::RestoreOptions::new(s.state());
    let err = tandem_bundle::restore(&path, &spec, &options, &mut |_| {}).unwrap_err();
    expect_refusal(err, &Refusal::RootNotInSpec("r".into()));
    common::assert_same(&before, &snapshot(s.dir.path()), "after refusal");
}
