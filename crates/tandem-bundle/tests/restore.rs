//! Restore against what a standby already has: symlinks on the standby are never
//! followed, a root that is a symlink is honoured, local-only files stay.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::{Raw, assert_same, craft, file, snapshot};
use tandem_bundle::{BundleSpec, RestoreOptions, RootSpec};

fn restore(
    bundle: &[u8],
    dir: &Path,
    spec: &BundleSpec,
    options: RestoreOptions,
) -> tandem_bundle::RestoreReport {
    let path = dir.join("bundle.tar.gz");
    std::fs::write(&path, bundle).unwrap();
    tandem_bundle::restore(&path, spec, &options, &mut |_| {}).unwrap()
}

#[test]
fn a_symlink_on_the_standby_is_replaced_by_a_file_never_followed_nor_made_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let target = dir.path().join("target");
    std::fs::create_dir_all(target.join("r")).unwrap();
    // The standby has `r/sub` pointing out of the root, and `r/file` pointing at
    // a file outside.
    std::os::unix::fs::symlink(&outside, target.join("r/sub")).unwrap();
    file(&outside.join("victim"), b"precious", 0o644, 1);
    std::os::unix::fs::symlink(outside.join("victim"), target.join("r/file")).unwrap();
    let before_outside = snapshot(&outside);

    // A directory where the standby has a symlink is a conflict (the link is
    // the administrator's, see docs/SECURITY.md): nothing changes.
    let bundle = craft(
        &["r"],
        &[
            Raw::dir("r/"),
            Raw::dir("r/sub/"),
            Raw::file("r/sub/x", b"new"),
            Raw::file("r/file", b"new"),
        ],
    );
    let before_target = snapshot(&target);
    let path = dir.path().join("bundle.tar.gz");
    std::fs::write(&path, &bundle).unwrap();
    let options = RestoreOptions::new(dir.path().join("state")).under(&target);
    let err =
        tandem_bundle::restore(&path, &BundleSpec::default(), &options, &mut |_| {}).unwrap_err();
    assert!(
        matches!(err, tandem_bundle::Error::Conflict { .. }),
        "{err}"
    );
    assert_same(&before_target, &snapshot(&target), "after the conflict");
    assert_same(&before_outside, &snapshot(&outside), "outside the root");

    // A file replaces a symlink: the link itself, never what it points to.
    let bundle = craft(&["r"], &[Raw::dir("r/"), Raw::file("r/file", b"new")]);
    restore(&bundle, dir.path(), &BundleSpec::default(), options.clone());
    assert_same(&before_outside, &snapshot(&outside), "outside the root");
    assert!(
        std::fs::symlink_metadata(target.join("r/file"))
            .unwrap()
            .is_file()
    );

    // Rollback brings the symlinks back, still without touching what they point to.
    tandem_bundle::rollback(&options, &mut |_| {}).unwrap();
    assert_eq!(std::fs::read_link(target.join("r/sub")).unwrap(), outside);
    assert_eq!(
        std::fs::read_link(target.join("r/file")).unwrap(),
        outside.join("victim")
    );
    assert_same(
        &before_outside,
        &snapshot(&outside),
        "outside the root after rollback",
    );
}

#[test]
fn a_root_that_is_a_symlink_is_restored_where_it_points() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real-enrollment");
    std::fs::create_dir(&real).unwrap();
    let link = dir.path().join("enrollment");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let spec = BundleSpec {
        roots: vec![RootSpec::new("r", &link)],
        ..BundleSpec::default()
    };
    let bundle = craft(&["r"], &[Raw::dir("r/"), Raw::file("r/cert.pem", b"pem")]);
    restore(
        &bundle,
        dir.path(),
        &spec,
        RestoreOptions::new(dir.path().join("state")),
    );
    assert_eq!(std::fs::read_link(&link).unwrap(), real);
    assert_eq!(std::fs::read(real.join("cert.pem")).unwrap(), b"pem");
}

#[test]
fn files_only_the_standby_has_stay_and_node_class_files_are_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("web");
    file(
        &root.join("server.xml"),
        b"standby's own",
        0o600,
        1_500_000_000,
    );
    file(&root.join("local.conf"), b"local", 0o644, 1_500_000_000);
    let spec = BundleSpec {
        roots: vec![RootSpec::new("web", &root)],
        node: vec!["web/server.xml".into()],
        ..BundleSpec::default()
    };
    let bundle = craft(
        &["web"],
        &[Raw::dir("web/"), Raw::file("web/app.conf", b"copied")],
    );
    let report = restore(
        &bundle,
        dir.path(),
        &spec,
        RestoreOptions::new(dir.path().join("state")),
    );
    assert_eq!(report.changed(), 2, "{:?}", report.changes);
    assert_eq!(
        std::fs::read(root.join("server.xml")).unwrap(),
        b"standby's own"
    );
    assert_eq!(std::fs::read(root.join("local.conf")).unwrap(), b"local");
    assert_eq!(std::fs::read(root.join("app.conf")).unwrap(), b"copied");
}

#[test]
fn a_non_empty_directory_in_the_way_of_a_file_is_a_conflict_that_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target");
    file(&target.join("r/thing/inside"), b"keep me", 0o644, 1);
    let before = snapshot(&target);
    let bundle = craft(
        &["r"],
        &[Raw::dir("r/"), Raw::file("r/thing", b"a file now")],
    );
    let path = dir.path().join("b.tar.gz");
    std::fs::write(&path, bundle).unwrap();
    let options = RestoreOptions::new(dir.path().join("state")).under(&target);
    let err =
        tandem_bundle::restore(&path, &BundleSpec::default(), &options, &mut |_| {}).unwrap_err();
    assert!(
        matches!(err, tandem_bundle::Error::Conflict { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("non-empty directory"), "{err}");
    assert_same(&before, &snapshot(&target), "after the conflict");
}
