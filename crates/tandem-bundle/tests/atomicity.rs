//! A restore (or rollback) stopped at any step, by an error or as if killed,
//! leaves the old tree or the new tree, never a mix; rollback after a finished
//! restore gives back the old tree.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{Node, assert_same, file, set_mode, set_mtime, snapshot};
use tandem_bundle::{
    BundleSpec, CreateOptions, Error, FailAt, Failpoint, Recovered, RestoreOptions, RootSpec,
};

/// The standby's tree before the restore.
fn old_tree(root: &Path) {
    file(
        &root.join("keep.conf"),
        b"old config\n",
        0o644,
        1_500_000_000,
    );
    file(
        &root.join("same.conf"),
        b"unchanged\n",
        0o644,
        1_500_000_010,
    );
    file(
        &root.join("sub/prompt.wav"),
        b"RIFF old",
        0o600,
        1_500_000_001,
    );
    file(
        &root.join("typechange"),
        b"a file that becomes a directory",
        0o644,
        1_500_000_020,
    );
    std::fs::create_dir(root.join("gone-dir")).unwrap();
    file(
        &root.join("local-only.conf"),
        b"only on the standby",
        0o644,
        1_500_000_030,
    );
    std::os::unix::fs::symlink("keep.conf", root.join("link")).unwrap();
    set_mtime(&root.join("link"), 1_500_000_002, 0);
    set_mtime(&root.join("gone-dir"), 1_500_000_021, 0);
    set_mtime(&root.join("sub"), 1_500_000_003, 0);
    set_mtime(root, 1_500_000_004, 0);
}

/// The active's tree that is bundled.
fn new_tree(root: &Path) {
    file(
        &root.join("keep.conf"),
        b"new config\n",
        0o640,
        1_600_000_000,
    );
    file(
        &root.join("same.conf"),
        b"unchanged\n",
        0o644,
        1_500_000_010,
    );
    file(
        &root.join("sub/prompt.wav"),
        b"RIFF old",
        0o644,
        1_600_000_001,
    );
    file(&root.join("new.conf"), b"brand new", 0o644, 1_600_000_002);
    file(
        &root.join("fresh/deep/x.wav"),
        b"RIFF x",
        0o644,
        1_600_000_003,
    );
    file(
        &root.join("typechange/inner.conf"),
        b"inside",
        0o644,
        1_600_000_004,
    );
    file(
        &root.join("gone-dir"),
        b"a directory became this file",
        0o644,
        1_600_000_005,
    );
    file(&root.join("hard-a"), b"linked", 0o644, 1_600_000_006);
    std::fs::hard_link(root.join("hard-a"), root.join("hard-b")).unwrap();
    std::os::unix::fs::symlink("sub/prompt.wav", root.join("link")).unwrap();
    set_mtime(&root.join("link"), 1_600_000_007, 0);
    for dir in ["fresh/deep", "fresh", "typechange", "sub"] {
        set_mode(&root.join(dir), 0o750);
        set_mtime(&root.join(dir), 1_600_000_100, 0);
    }
    set_mtime(root, 1_600_000_200, 5);
}

struct World {
    dir: tempfile::TempDir,
    bundle: PathBuf,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("active/r");
        std::fs::create_dir_all(&src).unwrap();
        new_tree(&src);
        let spec = BundleSpec {
            roots: vec![RootSpec::new("r", &src)],
            ..BundleSpec::default()
        };
        let bundle = dir.path().join("bundle.tar.gz");
        tandem_bundle::create_file(&spec, &bundle, &CreateOptions::default(), &mut |_| {}).unwrap();
        World { dir, bundle }
    }

    /// A fresh standby with the old tree: (target dir, state dir).
    fn standby(&self, name: &str) -> (PathBuf, PathBuf) {
        let base = self.dir.path().join(name);
        std::fs::create_dir_all(base.join("target/r")).unwrap();
        old_tree(&base.join("target/r"));
        (base.join("target"), base.join("state"))
    }

    fn restore(
        &self,
        target: &Path,
        state: &Path,
        failpoint: Option<Failpoint>,
    ) -> Result<(), Error> {
        let mut options = RestoreOptions::new(state).under(target);
        options.failpoint = failpoint;
        tandem_bundle::restore(&self.bundle, &BundleSpec::default(), &options, &mut |_| {})
            .map(|_| ())
    }

    fn rollback(
        &self,
        target: &Path,
        state: &Path,
        failpoint: Option<Failpoint>,
    ) -> Result<(), Error> {
        let mut options = RestoreOptions::new(state).under(target);
        options.failpoint = failpoint;
        tandem_bundle::rollback(&options, &mut |_| {}).map(|_| ())
    }
}

/// Nothing of ours is left next to the roots nor in the state directory.
fn assert_clean(target: &Path, state: &Path) {
    let names: Vec<String> = std::fs::read_dir(target)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["r".to_owned()],
        "left behind next to the root in {}",
        target.display()
    );
    let sub = tandem_bundle::state_subdir(state);
    for leftover in ["journal.json", "backup.tar.gz.pending"] {
        assert!(!sub.join(leftover).exists(), "{leftover} left behind");
    }
}

/// The old and the new tree, as a clean restore makes them.
fn expectations(world: &World) -> (BTreeMap<String, Node>, BTreeMap<String, Node>) {
    let (target, state) = world.standby("expect");
    let old = snapshot(&target.join("r"));
    world.restore(&target, &state, None).unwrap();
    let new = snapshot(&target.join("r"));
    assert_ne!(old, new);
    // The overlay keeps what only the standby has.
    assert!(new.contains_key("local-only.conf"));
    assert_eq!(
        std::fs::read(target.join("r/keep.conf")).unwrap(),
        b"new config\n"
    );
    assert!(matches!(
        new.get("hard-a"),
        Some(Node::File {
            inode_group: Some(_),
            ..
        })
    ));
    (old, new)
}

/// Every step, both ways of stopping. `run` does the operation on a fresh
/// standby prepared by `prepare`; before the commit `before` must be on disk,
/// after it `after`.
fn every_step(
    world: &World,
    what: &str,
    prepare: impl Fn(&Path, &Path),
    run: impl Fn(&Path, &Path, Option<Failpoint>) -> Result<(), Error>,
    before: &BTreeMap<String, Node>,
    after: &BTreeMap<String, Node>,
) {
    let mut steps = vec![FailAt::Staged];
    steps.extend((0..200).map(FailAt::Op));
    steps.extend([FailAt::DirAttrs, FailAt::Commit, FailAt::Committed]);
    for crash in [false, true] {
        let mut ops_seen = 0;
        for (n, at) in steps.iter().enumerate() {
            let (target, state) = world.standby(&format!("{what}-{crash}-{n}"));
            prepare(&target, &state);
            let failpoint = Failpoint { at: *at, crash };
            match run(&target, &state, Some(failpoint)) {
                Err(Error::Injected(f)) => assert_eq!(f, failpoint),
                Ok(()) => {
                    // Op(n) past the last operation: the failpoint never fired.
                    assert!(matches!(at, FailAt::Op(_)), "{what}: {at:?} did not fire");
                    assert_same(
                        after,
                        &snapshot(&target.join("r")),
                        &format!("{what} finished"),
                    );
                    continue;
                }
                Err(other) => panic!("{what} at {at:?}: {other}"),
            }
            if let FailAt::Op(_) = at {
                ops_seen += 1;
            }
            if crash {
                // As after a kill: the journal is there; the next run recovers.
                let journal = tandem_bundle::state_subdir(&state).join("journal.json");
                assert!(journal.exists(), "{what} {at:?}: no journal after a crash");
                let recovered = tandem_bundle::recover(&state).unwrap();
                let want = match at {
                    FailAt::Staged => Recovered::Cleaned,
                    FailAt::Committed => Recovered::Completed,
                    _ => Recovered::RolledBack,
                };
                assert_eq!(recovered, Some(want), "{what} {at:?}");
            }
            let expected = if *at == FailAt::Committed {
                after
            } else {
                before
            };
            assert_same(
                expected,
                &snapshot(&target.join("r")),
                &format!("{what} stopped at {at:?} (crash {crash})"),
            );
            assert_clean(&target, &state);
        }
        assert!(
            ops_seen > 5,
            "{what}: only {ops_seen} swap operations were tried"
        );
    }
}

#[test]
fn restore_stopped_anywhere_leaves_old_or_new() {
    let world = World::new();
    let (old, new) = expectations(&world);
    every_step(
        &world,
        "restore",
        |_, _| {},
        |t, s, f| world.restore(t, s, f),
        &old,
        &new,
    );
}

#[test]
fn rollback_after_a_finished_restore_gives_back_the_old_tree() {
    let world = World::new();
    let (old, new) = expectations(&world);
    let (target, state) = world.standby("rollback");
    world.restore(&target, &state, None).unwrap();
    assert_same(&new, &snapshot(&target.join("r")), "restored");
    world.rollback(&target, &state, None).unwrap();
    assert_same(&old, &snapshot(&target.join("r")), "rolled back");
    assert_clean(&target, &state);
    // The backup is used up.
    let err = world.rollback(&target, &state, None).unwrap_err();
    assert!(matches!(err, Error::NoBackup { .. }), "{err}");
}

#[test]
fn rollback_stopped_anywhere_leaves_new_or_old() {
    let world = World::new();
    let (old, new) = expectations(&world);
    every_step(
        &world,
        "rollback",
        |target, state| world.restore(target, state, None).unwrap(),
        |t, s, f| world.rollback(t, s, f),
        &new,
        &old,
    );
}

#[test]
fn a_file_added_after_the_restore_survives_the_rollback() {
    let world = World::new();
    let (target, state) = world.standby("added");
    world.restore(&target, &state, None).unwrap();
    // Someone drops a file into a directory the restore created.
    std::fs::write(target.join("r/fresh/operator-notes.txt"), b"mine").unwrap();
    world.rollback(&target, &state, None).unwrap();
    assert_eq!(
        std::fs::read(target.join("r/fresh/operator-notes.txt")).unwrap(),
        b"mine"
    );
    assert!(!target.join("r/fresh/deep").exists());
    assert_eq!(
        std::fs::read(target.join("r/keep.conf")).unwrap(),
        b"old config\n"
    );
}

#[test]
fn dry_run_lists_changes_and_writes_nothing() {
    let world = World::new();
    let (target, state) = world.standby("dry");
    let before = snapshot(&target);
    let options = RestoreOptions::new(&state).under(&target).dry_run(true);
    let report =
        tandem_bundle::restore(&world.bundle, &BundleSpec::default(), &options, &mut |_| {})
            .unwrap();
    assert_same(&before, &snapshot(&target), "dry run");
    assert!(!state.exists());
    let action = |entry: &str| {
        report
            .changes
            .iter()
            .find(|c| c.entry == entry)
            .map(|c| c.action)
    };
    use tandem_bundle::Action;
    assert_eq!(action("r/keep.conf"), Some(Action::Replace));
    assert_eq!(action("r/same.conf"), Some(Action::Unchanged));
    assert_eq!(action("r/new.conf"), Some(Action::Create));
    assert_eq!(action("r/fresh/deep"), Some(Action::Create));
    assert_eq!(action("r/typechange"), Some(Action::Replace));
    assert_eq!(action("r"), Some(Action::Update));
}

#[test]
fn a_second_restore_waits_for_the_lock() {
    let world = World::new();
    let (target, state) = world.standby("lock");
    let dir = tandem_bundle::state_subdir(&state);
    std::fs::create_dir_all(&dir).unwrap();
    let file = std::fs::File::create(dir.join("lock")).unwrap();
    let _held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
    let err = world.restore(&target, &state, None).unwrap_err();
    assert!(matches!(err, Error::Busy { .. }), "{err}");
}
