//! Property tests: create then restore gives the same tree; rollback gives back
//! the tree before; any flipped or cut byte is detected and changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use common::{Scratch, assert_same, set_mode, set_mtime, snapshot};
use proptest::prelude::*;
use tandem_bundle::{BundleSpec, CreateOptions, RestoreOptions, RootSpec};

#[derive(Debug, Clone)]
enum Tree {
    File {
        size: usize,
        seed: u8,
        mode: u32,
        mtime: (i64, i64),
    },
    Link {
        up: usize,
        tail: String,
        mtime: (i64, i64),
    },
    Dir {
        children: BTreeMap<String, Tree>,
        mode: u32,
        mtime: (i64, i64),
    },
}

/// Names with unicode and spaces; never `.`, `..` or our staging prefix.
fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 äöéß€_-][a-zA-Z0-9 äöéß€_.-]{0,11}"
}

fn mtime() -> impl Strategy<Value = (i64, i64)> {
    (0i64..4_000_000_000, 0i64..1_000_000_000)
}

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![10 => 0usize..64, 8 => 64usize..6000, 1 => 1_040_000usize..1_100_000]
}

fn tree() -> impl Strategy<Value = Tree> {
    let file = (
        size(),
        any::<u8>(),
        prop::sample::select(vec![0o644u32, 0o600, 0o755, 0o640, 0o444, 0o1644]),
        mtime(),
    )
        .prop_map(|(size, seed, mode, mtime)| Tree::File {
            size,
            seed,
            mode,
            mtime,
        });
    let link =
        (0usize..4, name(), mtime()).prop_map(|(up, tail, mtime)| Tree::Link { up, tail, mtime });
    let leaf = prop_oneof![8 => file, 2 => link];
    leaf.prop_recursive(6, 48, 6, |inner| {
        (
            prop::collection::btree_map(name(), inner, 0..6),
            prop::sample::select(vec![0o755u32, 0o700, 0o750, 0o1777]),
            mtime(),
        )
            .prop_map(|(children, mode, mtime)| Tree::Dir {
                children,
                mode,
                mtime,
            })
    })
}

fn roots() -> impl Strategy<Value = Vec<Tree>> {
    prop::collection::vec(
        (prop::collection::btree_map(name(), tree(), 0..6), mtime()).prop_map(
            |(children, mtime)| Tree::Dir {
                children,
                mode: 0o755,
                mtime,
            },
        ),
        1..=3,
    )
}

fn content(size: usize, seed: u8) -> Vec<u8> {
    (0..size)
        .map(|i| {
            (seed as usize)
                .wrapping_mul(31)
                .wrapping_add(i * 7 + i / 97) as u8
        })
        .collect()
}

/// Writes `tree` at `path`; `depth` is how deep the directory holding `path` is
/// below the root (-1 for the root itself).
fn build(path: &Path, tree: &Tree, depth: isize) {
    match tree {
        Tree::File {
            size,
            seed,
            mode,
            mtime,
        } => {
            std::fs::write(path, content(*size, *seed)).unwrap();
            set_mode(path, *mode);
            set_mtime(path, mtime.0, mtime.1);
        }
        Tree::Link { up, tail, mtime } => {
            let target = format!("{}{tail}", "../".repeat((*up).min(depth.max(0) as usize)));
            std::os::unix::fs::symlink(target, path).unwrap();
            set_mtime(path, mtime.0, mtime.1);
        }
        Tree::Dir {
            children,
            mode,
            mtime,
        } => {
            std::fs::create_dir(path).unwrap();
            for (name, child) in children {
                build(&path.join(name), child, depth + 1);
            }
            set_mode(path, *mode);
            set_mtime(path, mtime.0, mtime.1);
        }
    }
}

fn spec_for(dir: &Path, n: usize) -> BundleSpec {
    BundleSpec {
        roots: (0..n)
            .map(|i| RootSpec::new(format!("r{i}"), dir.join(format!("r{i}"))))
            .collect(),
        // The generated trees have 1777 directories.
        allow_world_writable: true,
        ..BundleSpec::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn create_then_restore_gives_the_same_tree_and_rollback_the_one_before(trees in roots(), threads in 1usize..3) {
        let work = tempfile::tempdir().unwrap();
        let src = work.path().join("src");
        std::fs::create_dir(&src).unwrap();
        for (i, tree) in trees.iter().enumerate() {
            // Roots are directories one level below their parent.
            build(&src.join(format!("r{i}")), tree, -1);
        }
        let spec = spec_for(&src, trees.len());
        let bundle = work.path().join("b.tar.gz");
        tandem_bundle::create_file(&spec, &bundle, &CreateOptions::with_threads(threads), &mut |_| {}).unwrap();

        // The generated trees have 1777 directories: the receiving side allows them too.
        let receiving = BundleSpec { allow_world_writable: true, ..BundleSpec::default() };
        let dst = work.path().join("dst");
        std::fs::create_dir(&dst).unwrap();
        let options = RestoreOptions::new(work.path().join("state")).under(&dst);
        let report = tandem_bundle::restore(&bundle, &receiving, &options, &mut |_| {}).unwrap();
        prop_assert_eq!(report.changed(), report.changes.len());
        for i in 0..trees.len() {
            let name = format!("r{i}");
            assert_same(&snapshot(&src.join(&name)), &snapshot(&dst.join(&name)), &name);
        }
        let names: Vec<_> = std::fs::read_dir(&dst).unwrap().map(|e| e.unwrap().file_name()).collect();
        prop_assert_eq!(names.len(), trees.len(), "no staging left behind: {:?}", names);

        // Restoring the same bundle again changes nothing.
        let again = tandem_bundle::restore(&bundle, &receiving, &options, &mut |_| {}).unwrap();
        prop_assert_eq!(again.changed(), 0);

        // Rolling back the second restore (which changed nothing) and then ... the
        // backup of the second restore only holds directories: the tree stays.
        tandem_bundle::rollback(&options, &mut |_| {}).unwrap();
        for i in 0..trees.len() {
            let name = format!("r{i}");
            assert_same(&snapshot(&src.join(&name)), &snapshot(&dst.join(&name)), &name);
        }
        // A restore into an empty directory rolls back to the empty directory.
        let fresh = work.path().join("fresh");
        std::fs::create_dir(&fresh).unwrap();
        let options = RestoreOptions::new(work.path().join("state2")).under(&fresh);
        tandem_bundle::restore(&bundle, &receiving, &options, &mut |_| {}).unwrap();
        tandem_bundle::rollback(&options, &mut |_| {}).unwrap();
        let left: Vec<_> = snapshot(&fresh).into_keys().collect();
        prop_assert_eq!(left, vec![String::new()], "after rollback the directory is empty again");
    }
}

/// A small real bundle and the scratch spec it restores with.
fn small_bundle() -> &'static Vec<u8> {
    static BUNDLE: OnceLock<Vec<u8>> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        common::file(
            &dir.path().join("r/a.conf"),
            b"alpha = 1\n",
            0o644,
            1_600_000_000,
        );
        common::file(
            &dir.path().join("r/prompts/hello.wav"),
            &content(3000, 9),
            0o640,
            1_600_000_001,
        );
        std::os::unix::fs::symlink("a.conf", dir.path().join("r/current")).unwrap();
        let spec = BundleSpec {
            roots: vec![RootSpec::new("r", dir.path().join("r"))],
            ..BundleSpec::default()
        };
        let mut out = Vec::new();
        tandem_bundle::create(
            &spec,
            &mut out,
            &CreateOptions::with_threads(1),
            &mut |_| {},
        )
        .unwrap();
        out
    })
}

fn restore_bytes_refused(bytes: &[u8]) {
    let s = Scratch::new();
    let path = s.write_bundle(bytes);
    let before = snapshot(s.dir.path());
    let result = tandem_bundle::restore(&path, &BundleSpec::default(), &s.options(), &mut |_| {});
    assert!(result.is_err(), "a damaged bundle was accepted");
    assert_same(&before, &snapshot(s.dir.path()), "after a damaged bundle");
}

#[test]
fn the_small_bundle_restores() {
    let s = Scratch::new();
    let path = s.write_bundle(small_bundle());
    tandem_bundle::restore(&path, &BundleSpec::default(), &s.options(), &mut |_| {}).unwrap();
    assert_eq!(
        std::fs::read(s.target().join("r/a.conf")).unwrap(),
        b"alpha = 1\n"
    );
}

#[test]
fn every_single_byte_flip_is_detected() {
    let bundle = small_bundle();
    for i in 0..bundle.len() {
        let mut bad = bundle.clone();
        bad[i] ^= 0x01;
        assert!(
            tandem_bundle::verify_bytes(&bad, &BundleSpec::default()).is_err(),
            "flip at {i} accepted"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn flipping_any_byte_is_detected_and_changes_nothing(at in any::<prop::sample::Index>(), mask in 1u8..=255) {
        let mut bad = small_bundle().clone();
        let i = at.index(bad.len());
        bad[i] ^= mask;
        restore_bytes_refused(&bad);
    }

    #[test]
    fn cutting_the_bundle_anywhere_is_detected_and_changes_nothing(at in any::<prop::sample::Index>(), delete in any::<bool>()) {
        let mut bad = small_bundle().clone();
        let i = at.index(bad.len());
        if delete {
            bad.remove(i);
        } else {
            bad.truncate(i);
        }
        restore_bytes_refused(&bad);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// What the fuzz target does, in a small way: damage the tar stream or the
    /// gzip stream, seal it with a valid trailer so the inner readers see it,
    /// and check the reader answers without panicking.
    #[test]
    fn resealed_damage_never_panics(
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..8),
        in_tar in any::<bool>(),
    ) {
        use common::{Raw, gzip, manifest_for, seal, tar_stream};
        let entries = vec![
            Raw::dir("r/"),
            Raw::file("r/a.conf", b"alpha = 1\n"),
            Raw::symlink("r/current", "a.conf"),
            Raw::dir("r/sub/"),
            Raw::file("r/sub/b.wav", &content(2000, 3)),
        ];
        let json = serde_json::to_vec(&manifest_for(&["r"], &entries)).unwrap();
        let mut tar = tar_stream(&entries, Some(&json));
        let body = if in_tar {
            for (at, mask) in &flips {
                let i = at.index(tar.len());
                tar[i] ^= mask;
            }
            gzip(&tar)
        } else {
            let mut gz = gzip(&tar);
            for (at, mask) in &flips {
                let i = at.index(gz.len());
                gz[i] ^= mask;
            }
            gz
        };
        let _ = tandem_bundle::verify_bytes(&seal(body), &BundleSpec::default());
    }
}
