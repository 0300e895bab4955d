//! A structure-aware generator of hostile bundles, and the invariant a restore
//! keeps whatever it is given.
//!
//! [`bundle`] turns any bytes into an internally consistent bundle: the
//! manifest lists exactly what the archive holds with the right sizes, modes,
//! owners and sha256, and the trailer seals it, so only the rules of the reader
//! and of restore stand between it and the disk. The bytes pick paths (names
//! of the scratch tree, long names, names over 255 bytes, paths over 4096
//! bytes, the staging directory's reserved names), types, link targets, modes,
//! owners, mtimes (negative ones too), sizes, and now and then a `remove` list
//! or a pax header. The property test in `tests/hostile.rs` and the fuzz
//! target `fuzz/fuzz_targets/restore_generated.rs` both feed it and check
//! [`restore_keeps_the_invariant`] on a real directory tree.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

use sha2::{Digest, Sha256};
use tandem_bundle::format::{EntryKind, Manifest};
use tandem_bundle::{BundleSpec, FailAt, Failpoint};

use super::{
    Node, Raw, Scratch, assert_same, craft, gzip, manifest_for, seal, snapshot, tar_stream,
};

/// Reads choices from the seed bytes; past their end every choice is 0.
pub struct Choices<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Choices<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Choices { data, at: 0 }
    }

    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }

    /// A number below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        let wide = usize::from(self.byte()) << 8 | usize::from(self.byte());
        wide % n.max(1)
    }

    fn pick<T: Clone>(&mut self, from: &[T]) -> T {
        from[self.below(from.len())].clone()
    }

    /// True about once in `n`.
    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

/// A generated bundle and what went into it.
pub struct Generated {
    /// The sealed bundle.
    pub bytes: Vec<u8>,
    /// Its entries, in archive order.
    pub entries: Vec<Raw>,
    /// Its manifest.
    pub manifest: Manifest,
}

const NAMES: &[&str] = &[
    "keep.conf",
    "sub",
    "prompt.wav",
    "link",
    "new.conf",
    "d",
    "e",
    "a b",
    "ü.wav",
    ".tandem-stage",
    ".tandem-stage.r",
    ".tandem-stage-x",
    ".tandem-bundle",
];

const MODES: &[u32] = &[
    0o644, 0o600, 0o755, 0o700, 0o640, 0o444, 0o777, 0o666, 0o1777, 0o4755, 0o2755, 0o1644, 0o000,
];

const MTIMES: &[i64] = &[
    1_600_000_000,
    0,
    1,
    -1,
    -86_400,
    4_000_000_000,
    1_500_000_000,
];

const LINKS: &[&str] = &[
    "keep.conf",
    ".",
    "..",
    "../..",
    "/etc/passwd",
    "sub/prompt.wav",
    "x/../y",
    "../r/keep.conf",
    "missing",
    "./keep.conf",
];

/// (uid, gid, manifest user name)
const OWNERS: &[(u32, u32, Option<&str>)] = &[
    (0, 0, None),
    (0, 0, Some("root")),
    (65534, 65534, Some("nobody")),
    (4321, 4321, None),
    (4321, 0, Some("root")),
];

fn name(c: &mut Choices<'_>) -> String {
    match c.below(10) {
        0..=4 => c.pick(NAMES).to_owned(),
        5 => {
            // Around the 255-byte limit on a name.
            let len = c.pick(&[100usize, 101, 254, 255, 256, 300]);
            "n".repeat(len)
        }
        _ => format!("f{}", c.below(6)),
    }
}

/// The bundle the bytes describe. Root `r` always (the scratch tree has it),
/// root `q` (absent on disk) sometimes.
pub fn bundle(seed: &[u8]) -> Generated {
    let mut c = Choices::new(seed);
    let mut roots = vec!["r"];
    let mut entries = vec![Raw::dir("r/").with_mode(c.pick(MODES) & 0o7777)];
    if c.one_in(4) {
        roots.push("q");
        entries.push(Raw::dir("q/"));
    }
    let mut dirs: Vec<String> = roots.iter().map(|r| (*r).to_owned()).collect();
    let mut files: Vec<String> = Vec::new();
    let mut mtimes: Vec<i64> = vec![1_600_000_000; entries.len()];
    if c.one_in(6) {
        // A chain of long directory names: past 4096 bytes in all.
        let mut path = "r".to_owned();
        for _ in 0..c.pick(&[3usize, 15, 17, 20]) {
            path = format!("{path}/{}", "c".repeat(250));
            entries.push(Raw::dir(&format!("{path}/")));
            mtimes.push(1_600_000_000);
            dirs.push(path.clone());
        }
    }
    let count = c.below(12);
    for _ in 0..count {
        let parent = c.pick(&dirs);
        let path = format!("{parent}/{}", name(&mut c));
        let mode = c.pick(MODES);
        let (uid, gid, user) = c.pick(OWNERS);
        let mtime = c.pick(MTIMES);
        let raw = match c.below(7) {
            0 | 1 => {
                dirs.push(path.clone());
                Raw::dir(&format!("{path}/"))
            }
            2 => {
                let target = if c.one_in(5) {
                    "../".repeat(c.below(3)) + &"t".repeat(c.pick(&[99usize, 101, 300, 5000]))
                } else {
                    c.pick(LINKS).to_owned()
                };
                Raw::symlink(&path, &target)
            }
            3 if !files.is_empty() => {
                let target = c.pick(&files);
                Raw::hardlink(&path, &target)
            }
            _ => {
                let len = c.pick(&[0usize, 1, 17, 600]);
                let data: Vec<u8> = (0..len).map(|i| (i as u8) ^ c.byte()).collect();
                files.push(path.clone());
                Raw::file(&path, &data)
            }
        };
        let raw = Raw {
            mode: if raw.kind == tar::EntryType::Symlink {
                0o777
            } else {
                mode
            },
            mtime: u64::try_from(mtime).unwrap_or(0),
            ..raw
        }
        .with_owner(uid, gid, user);
        entries.push(raw);
        mtimes.push(mtime);
    }
    let mut manifest = manifest_for(&roots, &entries);
    for (entry, mtime) in manifest.entries.iter_mut().zip(&mtimes) {
        // The header cannot hold a negative time; the manifest can (and lies).
        entry.mtime = *mtime;
    }
    if c.one_in(8) {
        manifest.remove = vec!["r/keep.conf".to_owned()];
    }
    // Half the bundles as format version 2 (members with index headers,
    // restored in one pass), half as version 1 (one serial stream).
    let indexed = c.one_in(2);
    if indexed {
        manifest.version = tandem_bundle::format::FORMAT_VERSION;
    }
    let json = serde_json::to_vec(&manifest).unwrap_or_default();
    let mut tar = if c.one_in(10) {
        // A pax header before everything.
        let mut out = Vec::new();
        let record = b"30 path=r/keep.conf.from-pax\n";
        super::extension_record(
            &mut out,
            tar::EntryType::XHeader,
            record,
            record.len() as u64,
        );
        out
    } else {
        Vec::new()
    };
    tar.extend_from_slice(&tar_stream(&entries, Some(&json)));
    Generated {
        bytes: seal(if indexed {
            super::indexed_gzip(&tar)
        } else {
            gzip(&tar)
        }),
        entries,
        manifest,
    }
}

/// How a generated restore is stopped, from one choice byte.
pub fn failpoint(choice: u8) -> Option<Failpoint> {
    let k = usize::from(choice >> 3);
    match choice % 6 {
        0 | 1 => None,
        2 => Some(Failpoint {
            at: FailAt::Op(k),
            crash: false,
        }),
        3 => Some(Failpoint {
            at: FailAt::Op(k),
            crash: true,
        }),
        4 => Some(Failpoint {
            at: FailAt::Committed,
            crash: true,
        }),
        _ => Some(Failpoint {
            at: FailAt::DirAttrs,
            crash: false,
        }),
    }
}

/// The scratch target without the target directory itself (its mtime is the
/// staging's business, not the tree's).
fn tree(s: &Scratch) -> BTreeMap<String, Node> {
    let mut all = snapshot(&s.target());
    all.remove("");
    all
}

/// Leftovers a finished run must not leave: staging directories, a journal,
/// a pending backup.
fn assert_no_leftovers(s: &Scratch, what: &str) {
    for entry in std::fs::read_dir(s.target()).unwrap() {
        let name = entry.unwrap().file_name();
        let name = name.to_string_lossy();
        assert!(
            !name.starts_with(".tandem-stage"),
            "{what}: staging `{name}` left behind"
        );
    }
    let state = tandem_bundle::state_subdir(&s.state());
    for name in ["journal.json", "backup.tar.gz.pending"] {
        assert!(!state.join(name).exists(), "{what}: `{name}` left behind");
    }
}

/// Checks the tree holds what the manifest says (a restore that succeeded).
fn assert_new_tree(s: &Scratch, manifest: &Manifest) {
    for entry in &manifest.entries {
        let at = s.target().join(&entry.path);
        let meta = std::fs::symlink_metadata(&at)
            .unwrap_or_else(|e| panic!("`{}` missing after the restore: {e}", entry.path));
        match entry.kind {
            EntryKind::Dir => assert!(meta.is_dir(), "`{}` is not a directory", entry.path),
            EntryKind::File => {
                assert!(meta.is_file(), "`{}` is not a file", entry.path);
                let found = hex::encode(Sha256::digest(std::fs::read(&at).unwrap()));
                assert_eq!(Some(found), entry.sha256, "`{}` content", entry.path);
                assert_eq!(meta.mode() & 0o7777, entry.mode, "`{}` mode", entry.path);
                assert_eq!(meta.mode() & 0o002, 0, "`{}` is world-writable", entry.path);
            }
            EntryKind::Symlink => {
                let target = std::fs::read_link(&at).unwrap();
                assert_eq!(
                    target.to_str(),
                    entry.link.as_deref(),
                    "`{}` target",
                    entry.path
                );
            }
            EntryKind::Hardlink => {
                let first = s.target().join(entry.link.as_deref().unwrap_or_default());
                assert_eq!(meta.ino(), std::fs::metadata(first).unwrap().ino());
            }
        }
        if meta.is_dir() || meta.is_file() {
            assert_eq!(meta.mode() & 0o002, 0, "`{}` is world-writable", entry.path);
        }
    }
}

/// The invariant: whatever the bundle (and wherever the restore is stopped),
/// the tree afterwards is the old one or the new one, nothing is left behind
/// once the run (or the recovery after a "kill") is over, and the next restore
/// and rollback work without anyone cleaning up.
pub fn restore_keeps_the_invariant(generated: &Generated, stop: Option<Failpoint>) {
    let s = Scratch::new();
    let spec = BundleSpec::default();
    let old = tree(&s);
    let path = s.write_bundle(&generated.bytes);
    let mut options = s.options();
    options.failpoint = stop;
    let result = tandem_bundle::restore(&path, &spec, &options, &mut |_| {});
    let crashed = matches!(
        &result,
        Err(tandem_bundle::Error::Injected(f)) if f.crash
    );
    if crashed {
        tandem_bundle::recover(&s.state()).expect("recovery after a kill");
    }
    assert_no_leftovers(&s, "after the restore");
    let committed = match &result {
        Ok(_) => true,
        Err(tandem_bundle::Error::Injected(f)) => f.at == FailAt::Committed,
        Err(_) => false,
    };
    if committed {
        assert_new_tree(&s, &generated.manifest);
        tandem_bundle::rollback(&s.options(), &mut |_| {}).expect("rollback of the restore");
        assert_no_leftovers(&s, "after the rollback");
    }
    assert_same(&old, &tree(&s), &format!("old tree after {result:?}"));
    // The next restore and rollback work.
    let good = craft(
        &["r"],
        &[Raw::dir("r/"), Raw::file("r/keep.conf", b"next\n")],
    );
    let good_path = s.write_bundle(&good);
    tandem_bundle::restore(&good_path, &spec, &s.options(), &mut |_| {})
        .expect("the next restore after a hostile bundle");
    assert_eq!(
        std::fs::read(s.target().join("r/keep.conf")).unwrap(),
        b"next\n"
    );
    tandem_bundle::rollback(&s.options(), &mut |_| {}).expect("the next rollback");
    assert_no_leftovers(&s, "after the next rollback");
    assert_same(
        &old,
        &tree(&s),
        "old tree after the next restore and rollback",
    );
}
