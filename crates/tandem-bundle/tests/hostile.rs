//! Crafted, internally consistent bundles (valid manifest, per-entry sha256,
//! trailer) that are still malicious: each is refused or survived with the
//! target tree unchanged, and the next restore and rollback work without
//! anyone cleaning up. Then the generator (`common::generate`) throws random
//! ones of the same kind at a real tree.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::{
    Node, Raw, Scratch, assert_same, craft, craft_with, extension_record, gzip, manifest_for, seal,
    snapshot, tar_stream,
};
use proptest::prelude::*;
use tandem_bundle::{BundleSpec, Error};

/// The scratch target without the target directory itself.
fn tree(s: &Scratch) -> BTreeMap<String, Node> {
    let mut all = snapshot(&s.target());
    all.remove("");
    all
}

/// Restores `bytes`, expects a failure, and checks the tree is as it was with
/// nothing left behind; then a good restore and its rollback must work.
/// Returns the error.
fn refused_and_unwedged(bytes: &[u8]) -> Error {
    let s = Scratch::new();
    let old = tree(&s);
    let path = s.write_bundle(bytes);
    let spec = BundleSpec::default();
    let err = tandem_bundle::restore(&path, &spec, &s.options(), &mut |_| {})
        .expect_err("the bundle must be refused");
    assert_same(&old, &tree(&s), &format!("tree after `{err}`"));
    for entry in std::fs::read_dir(s.target()).unwrap() {
        let name = entry.unwrap().file_name();
        assert!(
            !name.to_string_lossy().starts_with(".tandem-stage"),
            "staging left behind after `{err}`"
        );
    }
    let good = craft(
        &["r"],
        &[Raw::dir("r/"), Raw::file("r/keep.conf", b"next\n")],
    );
    let good = s.write_bundle(&good);
    tandem_bundle::restore(&good, &spec, &s.options(), &mut |_| {})
        .expect("the next restore must work without cleaning up");
    tandem_bundle::rollback(&s.options(), &mut |_| {}).expect("and its rollback");
    assert_same(&old, &tree(&s), "tree after the next restore and rollback");
    err
}

/// A bundle that first replaces `r/keep.conf` (so a half-done restore would
/// show) and then holds `rest`.
fn replacing_then(rest: Vec<Raw>) -> Vec<u8> {
    let mut entries = vec![Raw::dir("r/"), Raw::file("r/keep.conf", b"replaced\n")];
    entries.extend(rest);
    craft(&["r"], &entries)
}

#[test]
fn a_name_over_255_bytes_under_a_new_directory_is_refused() {
    let long = "n".repeat(256);
    let err = refused_and_unwedged(&replacing_then(vec![
        Raw::dir("r/fresh/"),
        Raw::file(&format!("r/fresh/{long}"), b"x"),
    ]));
    assert!(err.to_string().contains("name of 256 bytes"), "{err}");
}

#[test]
fn a_path_over_4096_bytes_under_new_directories_is_refused() {
    let mut rest = Vec::new();
    let mut path = "r".to_owned();
    for _ in 0..17 {
        path = format!("{path}/{}", "c".repeat(250));
        rest.push(Raw::dir(&format!("{path}/")));
    }
    rest.push(Raw::file(&format!("{path}/f"), b"x"));
    let err = refused_and_unwedged(&replacing_then(rest));
    // Its GNU long name record is refused at its header.
    assert!(
        matches!(
            &err,
            Error::Limit {
                value: 4270,
                limit: 4096,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_path_that_only_the_target_makes_too_long_is_refused() {
    // Every entry path fits, but under the scratch target the path on disk
    // does not.
    let mut rest = Vec::new();
    let mut path = "r".to_owned();
    for _ in 0..16 {
        path = format!("{path}/{}", "c".repeat(250));
        rest.push(Raw::dir(&format!("{path}/")));
    }
    path = format!("{path}/{}", "c".repeat(72));
    rest.push(Raw::file(&path, b"x"));
    assert_eq!(path.len(), 4090);
    let err = refused_and_unwedged(&replacing_then(rest));
    assert!(err.to_string().contains("path on disk"), "{err}");
}

#[test]
fn a_symlink_target_over_4096_bytes_is_refused() {
    let target = "t".repeat(5000);
    let err = refused_and_unwedged(&replacing_then(vec![Raw::symlink("r/long", &target)]));
    assert!(
        matches!(
            &err,
            Error::Limit {
                value: 5001,
                limit: 4096,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn the_staging_directory_names_are_refused() {
    for name in [".tandem-stage", ".tandem-stage.r", ".tandem-stage-x"] {
        let err = refused_and_unwedged(&replacing_then(vec![
            Raw::dir(&format!("r/{name}/")),
            Raw::file(&format!("r/{name}/old"), b"x"),
        ]));
        assert!(
            err.to_string().contains("keeps for its staging"),
            "{name}: {err}"
        );
        let err =
            refused_and_unwedged(&replacing_then(vec![Raw::file(&format!("r/{name}"), b"x")]));
        assert!(
            err.to_string().contains("keeps for its staging"),
            "{name}: {err}"
        );
    }
}

#[test]
fn a_negative_manifest_mtime_is_refused() {
    let entries = vec![Raw::dir("r/"), Raw::file("r/keep.conf", b"replaced\n")];
    let mut manifest = manifest_for(&["r"], &entries);
    manifest.entries[1].mtime = -5;
    // The header says 0, as the reader used to map a negative time.
    let mut entries = entries;
    entries[1].mtime = 0;
    let err = refused_and_unwedged(&craft_with(&entries, &manifest));
    assert!(err.to_string().contains("before 1970"), "{err}");
}

/// A bundle whose first record is an extension record of `declared` bytes of
/// `fill`, compressing to almost nothing.
fn huge_extension(kind: tar::EntryType, declared: usize, fill: u8) -> Vec<u8> {
    let mut tar = Vec::new();
    extension_record(&mut tar, kind, &vec![fill; declared], declared as u64);
    tar.extend_from_slice(&tar_stream(&[Raw::dir("r/")], None));
    seal(gzip(&tar))
}

#[test]
fn a_huge_gnu_long_name_is_refused_before_it_is_read() {
    for kind in [tar::EntryType::GNULongName, tar::EntryType::GNULongLink] {
        let bytes = huge_extension(kind, 8 << 20, b'a');
        assert!(bytes.len() < 1 << 20);
        let err = refused_and_unwedged(&bytes);
        match err {
            Error::Limit { decompressed, .. } => assert!(
                decompressed <= 1024,
                "{kind:?}: stopped only after {decompressed} bytes"
            ),
            other => panic!("{kind:?}: expected a limit at the header, got {other}"),
        }
    }
}

#[test]
fn pax_headers_are_refused_before_they_are_read() {
    for kind in [tar::EntryType::XHeader, tar::EntryType::XGlobalHeader] {
        let err = refused_and_unwedged(&huge_extension(kind, 8 << 20, b'a'));
        assert!(
            err.to_string().contains("pax extended headers are refused"),
            "{err}"
        );
    }
}

// --- Policy: what a received bundle may change. ---

#[test]
fn world_writable_files_and_directories_are_refused() {
    let err = refused_and_unwedged(&replacing_then(vec![
        Raw::file("r/open.conf", b"x").with_mode(0o666),
    ]));
    assert!(err.to_string().contains("writable by every user"), "{err}");
    let err = refused_and_unwedged(&replacing_then(vec![Raw::dir("r/open/").with_mode(0o777)]));
    assert!(err.to_string().contains("writable by every user"), "{err}");
}

#[test]
fn an_existing_root_is_never_loosened_nor_given_away() {
    let s = Scratch::new();
    let root = s.target().join("r");
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o750)).unwrap();
    let bundle = craft(
        &["r"],
        &[
            Raw::dir("r/")
                .with_mode(0o755)
                .with_owner(65534, 65534, None),
            Raw::file("r/keep.conf", b"replaced\n"),
        ],
    );
    let mut spec = BundleSpec::default();
    spec.owners.push("65534".into());
    spec.groups.push("65534".into());
    let path = s.write_bundle(&bundle);
    tandem_bundle::restore(&path, &spec, &s.options(), &mut |_| {}).unwrap();
    let meta = std::fs::metadata(&root).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o750, "the root's mode was loosened");
    assert_eq!((meta.uid(), meta.gid()), (0, 0), "the root was given away");
    // Tightening is followed.
    let bundle = craft(&["r"], &[Raw::dir("r/").with_mode(0o700)]);
    let path = s.write_bundle(&bundle);
    tandem_bundle::restore(&path, &spec, &s.options(), &mut |_| {}).unwrap();
    assert_eq!(std::fs::metadata(&root).unwrap().mode() & 0o7777, 0o700);
}

#[test]
fn owners_not_on_the_allow_list_are_refused() {
    if !nix::unistd::geteuid().is_root() {
        common::need_root("owners are only restored as root");
        return;
    }
    // By number, and by a name that overrides the number.
    let err = refused_and_unwedged(&replacing_then(vec![
        Raw::file("r/given.conf", b"x").with_owner(4321, 0, None),
    ]));
    assert!(err.to_string().contains("allow-list"), "{err}");
    let err = refused_and_unwedged(&replacing_then(vec![
        Raw::file("r/given.conf", b"x").with_owner(0, 0, Some("nobody")),
    ]));
    assert!(err.to_string().contains("allow-list"), "{err}");
}

#[test]
fn a_directory_never_replaces_a_local_symlink() {
    // Scratch has `r/link -> keep.conf`.
    let err = refused_and_unwedged(&replacing_then(vec![
        Raw::dir("r/link/"),
        Raw::file("r/link/inside", b"x"),
    ]));
    assert!(
        err.to_string().contains("never replaces a local symlink"),
        "{err}"
    );
}

#[test]
fn a_received_bundle_with_a_remove_list_is_refused() {
    let entries = vec![Raw::dir("r/"), Raw::file("r/new.conf", b"x")];
    let mut manifest = manifest_for(&["r"], &entries);
    manifest.remove = vec!["r/keep.conf".into()];
    let err = refused_and_unwedged(&craft_with(&entries, &manifest));
    assert!(err.to_string().contains("remove"), "{err}");
}

// --- Generated attacks. ---

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever the bundle and wherever the restore stops, the tree is the old
    /// one or the new one, and the next restore and rollback just work.
    #[test]
    fn generated_bundles_leave_the_old_or_the_new_tree(
        seed in prop::collection::vec(any::<u8>(), 0..200),
        stop in any::<u8>(),
    ) {
        let generated = common::generate::bundle(&seed);
        common::generate::restore_keeps_the_invariant(&generated, common::generate::failpoint(stop));
    }
}

#[test]
fn the_generator_reaches_every_kind_of_attack() {
    // Count what the generator makes from a spread of seeds, so a change to
    // it that stops producing one kind of attack is noticed.
    let mut long_names = 0;
    let mut long_paths = 0;
    let mut reserved = 0;
    let mut negative = 0;
    let mut open_modes = 0;
    for n in 0u32..400 {
        let seed: Vec<u8> = (0..200u32)
            .map(|i| (n.wrapping_mul(2_654_435_761).wrapping_add(i * 40_503) >> 13) as u8)
            .collect();
        let generated = common::generate::bundle(&seed);
        for e in &generated.manifest.entries {
            long_names += usize::from(e.path.split('/').any(|c| c.len() > 255));
            long_paths += usize::from(e.path.len() > 4095);
            reserved += usize::from(e.path.contains("/.tandem-stage"));
            negative += usize::from(e.mtime < 0);
            open_modes += usize::from(e.mode & 0o002 != 0 && e.link.is_none());
        }
    }
    for (what, n) in [
        ("long names", long_names),
        ("long paths", long_paths),
        ("reserved names", reserved),
        ("negative mtimes", negative),
        ("world-writable modes", open_modes),
    ] {
        assert!(n > 0, "the generator made no {what}");
    }
}

// --- Secrets on disk. ---

/// Whether the unprivileged user 65534 can read `path`.
fn nobody_can_read(path: &std::path::Path) -> bool {
    std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("running setpriv")
        .success()
}

#[test]
fn bundles_backups_and_journals_are_private() {
    let s = Scratch::new();
    // Open the way down to the files, so only their own modes (and those of
    // the directories this crate makes) keep other users out.
    let standby = s.dir.path().join("standby");
    for dir in [
        s.dir.path().to_path_buf(),
        s.target(),
        s.state(),
        standby.clone(),
    ] {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    common::file(
        &s.target().join("r/site.key"),
        b"secret key\n",
        0o600,
        1_500_000_000,
    );
    common::file(
        &standby.join("r/site.key"),
        b"old secret\n",
        0o600,
        1_400_000_000,
    );
    let spec = BundleSpec {
        roots: vec![tandem_bundle::RootSpec::new("r", s.target().join("r"))],
        ..BundleSpec::default()
    };
    let outgoing = s.dir.path().join("outgoing.tar.gz");
    let create = tandem_bundle::CreateOptions::default();
    tandem_bundle::create_file(&spec, &outgoing, &create, &mut |_| {}).unwrap();
    // A restore killed just before its commit leaves its journal and the
    // pending backup (holding the standby's old key).
    let mut options = tandem_bundle::RestoreOptions::new(s.state()).under(&standby);
    options.failpoint = Some(tandem_bundle::Failpoint {
        at: tandem_bundle::FailAt::Commit,
        crash: true,
    });
    tandem_bundle::restore(&outgoing, &spec, &options, &mut |_| {}).unwrap_err();
    let sub = tandem_bundle::state_subdir(&s.state());
    let journal = sub.join("journal.json");
    let pending = sub.join("backup.tar.gz.pending");
    let mut written = vec![outgoing, journal, pending];
    let private = |written: &[std::path::PathBuf]| {
        assert_eq!(std::fs::metadata(&sub).unwrap().mode() & 0o777, 0o700);
        for path in written {
            let mode = std::fs::metadata(path).unwrap().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
            if nix::unistd::geteuid().is_root() {
                assert!(!nobody_can_read(path), "nobody can read {}", path.display());
            }
        }
    };
    private(&written);
    tandem_bundle::recover(&s.state()).unwrap();
    options.failpoint = None;
    tandem_bundle::restore(&written[0], &spec, &options, &mut |_| {}).unwrap();
    written.truncate(1);
    written.push(tandem_bundle::backup_path(&s.state()));
    private(&written);
    if nix::unistd::geteuid().is_root() {
        // The check itself works: a world-readable file is readable.
        let control = s.dir.path().join("control");
        common::file(&control, b"public\n", 0o644, 1_500_000_000);
        assert!(
            nobody_can_read(&control),
            "setpriv could not read a 0644 file"
        );
    } else {
        common::need_root("setpriv needs root to become another user");
    }
}
