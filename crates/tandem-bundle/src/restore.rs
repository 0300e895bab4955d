//! Restoring bundles: verify, plan, stage, swap with renames under a journal,
//! commit; and rolling back to the backup bundle a restore leaves.
//!
//! The steps, and what a failure or a kill at each leaves:
//!
//! 1. Verify and stage, in one pass (version 2 bundles): the members are
//!    inflated on every core while each entry is checked and each file is
//!    written into a staging directory on the same file system as its root
//!    (created, journaled `staging`, when the root's entry arrives); then the
//!    checksum over the whole bundle and the manifest. Nothing outside the
//!    staging directories and the state directory changes before the whole
//!    bundle is verified; a refusal removes the staging, the journal and the
//!    lock file this run made. Version 1 bundles and dry runs verify first
//!    (writing nothing) and stage in a second pass after the plan.
//! 2. Plan: compare each entry with what is on disk (create, replace, unchanged).
//! 3. Stage: journal `staging` with the plan; staged files that stay unchanged
//!    go, the others get their attributes, links are made; the backup bundle of
//!    what will be replaced (pending); `syncfs`. A failure or kill removes the
//!    staging.
//! 4. Swap: journal `swapping` (the plan), then renames: the old file moves into
//!    the staging directory, the staged file moves into place; directories get
//!    their mode and mtime last. A failure undoes the renames in reverse; after a
//!    kill the next run (or [`recover`]) does it from the journal: old tree.
//! 5. Commit: journal `committed`; the pending backup becomes the backup; the
//!    staging (now holding the replaced files) and the journal are removed. A kill
//!    after `committed` is completed by the next run: new tree.

use std::collections::{HashMap, HashSet};
use std::fs::Metadata;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::create::{Item, ItemKind, STAGE_PREFIX, read_link_normalized, write_bundle};
use crate::error::{Error, Refusal, Result};
#[cfg(feature = "failpoints")]
use crate::failpoint::FailAt;
use crate::failpoint::Hook;
use crate::format::{EntryKind, MAX_PATH_BYTES, ManifestEntry, ManifestRoot, parse_entry_path};
use crate::format::{TRAILER_LEN, parse_trailer};
use crate::fsutil::{self, Attrs, Names};
use crate::members::{Index, Parallel};
use crate::read::{Checker, Policy, Verified, check_digest, scan, verify_path};
use crate::spec::{BundleSpec, Limits};
use crate::{Phase, Progress};
use std::sync::Arc;

/// Where restore keeps its journal, lock and backup bundle: `<state dir>/config-files`.
pub fn state_subdir(state_dir: &Path) -> PathBuf {
    state_dir.join("config-files")
}

/// The backup bundle of the files the last restore replaced.
pub fn backup_path(state_dir: &Path) -> PathBuf {
    state_subdir(state_dir).join("backup.tar.gz")
}

/// Where a received bundle waits for `restore-config-files` until the peer link
/// delivers it elsewhere: `<state dir>/incoming/config-files.tar.gz`.
pub fn incoming_path(state_dir: &Path) -> PathBuf {
    state_dir.join("incoming").join("config-files.tar.gz")
}

fn journal_path(state_dir: &Path) -> PathBuf {
    state_subdir(state_dir).join("journal.json")
}

fn pending_path(state_dir: &Path) -> PathBuf {
    state_subdir(state_dir).join("backup.tar.gz.pending")
}

/// How to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestoreOptions {
    /// The node's state directory (journal, lock, backup bundle).
    pub state_dir: PathBuf,
    /// Restore root `name` into `<under>/<name>` instead of the spec's path.
    pub under: Option<PathBuf>,
    /// Only report what would change.
    pub dry_run: bool,
    /// Test hook: fail at a step (only with the `failpoints` feature).
    #[cfg(feature = "failpoints")]
    pub failpoint: Option<crate::Failpoint>,
}

impl RestoreOptions {
    /// Restores into the spec's roots, keeping state in `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        RestoreOptions {
            state_dir: state_dir.into(),
            under: None,
            dry_run: false,
            #[cfg(feature = "failpoints")]
            failpoint: None,
        }
    }

    /// Restores root `name` into `<dir>/<name>` (for staging and tests).
    pub fn under(mut self, dir: impl Into<PathBuf>) -> Self {
        self.under = Some(dir.into());
        self
    }

    /// Only reports what would change.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }
}

/// What a restore or rollback did (or, dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RestoreReport {
    /// One line per entry, in bundle order.
    pub changes: Vec<Change>,
    /// The backup bundle written (restore, not dry run, not rollback).
    pub backup: Option<PathBuf>,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// An interrupted earlier run that was finished first.
    pub recovered: Option<Recovered>,
}

impl RestoreReport {
    /// Entries that change (everything but [`Action::Unchanged`]).
    pub fn changed(&self) -> usize {
        self.changes
            .iter()
            .filter(|c| c.action != Action::Unchanged)
            .count()
    }
}

/// What happens to one entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// Entry path in the bundle.
    pub entry: String,
    /// Path on disk.
    pub target: PathBuf,
    /// What happens.
    pub action: Action,
}

/// What happens to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Action {
    /// It does not exist yet.
    Create,
    /// It exists and is replaced (kept in the backup bundle).
    Replace,
    /// A directory whose mode, owner or mtime change.
    Update,
    /// Already as in the bundle.
    Unchanged,
    /// Removed (rollback of something a restore created).
    Remove,
    /// A directory a rollback keeps because it holds files the restore did not make.
    Keep,
}

/// How an interrupted run was finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Recovered {
    /// It had not started swapping: its staging was removed.
    Cleaned,
    /// It was swapping: the old tree was put back.
    RolledBack,
    /// It had committed: its cleanup was finished.
    Completed,
}

/// Restores `bundle` according to the local `spec` (roots by name, config class
/// `node`, limits, `allow_setid`).
///
/// Refusals and failures before the swap leave the disk as it was; a failure
/// during the swap puts the old tree back. See the module docs for the steps.
pub fn restore(
    bundle: &Path,
    spec: &BundleSpec,
    options: &RestoreOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<RestoreReport> {
    let compiled = spec.compile()?;
    let policy = Policy::received(spec, &compiled.node);
    // Version 2: verify and stage in one pass, members inflated on every core.
    if !options.dry_run
        && let Some(opened) = open_indexed(bundle, &policy.limits)?
    {
        return restore_streamed(&opened, spec, &policy, options, progress);
    }
    // Version 1 (and dry runs): verify before taking the lock, so a refused
    // bundle writes nothing at all; then stage in a second pass.
    let verified = verify_path(bundle, &policy, progress)?;
    if fsutil::can_chown() {
        check_owners(&verified.manifest.entries, spec)?;
    }
    let mut targets = HashMap::new();
    for root in &verified.manifest.roots {
        targets.insert(root.name.clone(), root_target(&root.name, spec, options)?);
    }
    check_lengths(&verified.manifest.entries, &targets)?;
    let mut session = Session::open(options)?;
    let plan = Plan::build(&verified.manifest.entries, &[], &targets, true)?;
    let mut report = RestoreReport {
        changes: plan.changes(),
        dry_run: options.dry_run,
        ..RestoreReport::default()
    };
    if options.dry_run {
        return Ok(report);
    }
    report.recovered = session.recovered;
    session.run(
        Mode::Restore,
        &verified,
        &plan,
        &targets,
        spec.compression_level,
        Hook::of(options),
        progress,
    )?;
    report.backup = Some(backup_path(&options.state_dir));
    Ok(report)
}

/// Where root `name` of a received bundle is restored.
fn root_target(name: &str, spec: &BundleSpec, options: &RestoreOptions) -> Result<PathBuf> {
    let path = match (&options.under, spec.root(name)) {
        (Some(dir), _) => dir.join(name),
        (None, Some(local)) => local.path.clone(),
        (None, None) => {
            return Err(Error::refused(
                name,
                Refusal::RootNotInSpec(name.to_owned()),
            ));
        }
    };
    // A root the administrator made a symlink is restored where it points.
    Ok(std::fs::canonicalize(&path).unwrap_or(path))
}

/// A version 2 bundle opened for the one-pass restore: trailer read, members
/// indexed (nothing inflated yet).
struct Opened {
    file: Arc<std::fs::File>,
    len: u64,
    body_len: u64,
    digest: [u8; 32],
    index: Index,
}

/// Opens `bundle` when it is a version 2 bundle; `None` sends it to the
/// serial reader (version 1, or not a bundle: that reader says which).
fn open_indexed(bundle: &Path, limits: &Limits) -> Result<Option<Opened>> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(bundle).map_err(|e| Error::io("opening bundle", bundle, e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::io("inspecting bundle", bundle, e))?
        .len();
    let Some(body_len) = len.checked_sub(TRAILER_LEN as u64) else {
        return Ok(None);
    };
    let mut tail = [0u8; TRAILER_LEN];
    file.read_exact_at(&mut tail, body_len)
        .map_err(|e| Error::io("reading bundle", bundle, e))?;
    let Some(digest) = parse_trailer(&tail) else {
        return Ok(None);
    };
    match crate::members::index(&file, body_len, limits) {
        Ok(Some(index)) => Ok(Some(Opened {
            file: Arc::new(file),
            len,
            body_len,
            digest,
            index,
        })),
        Ok(None) => Ok(None),
        Err(e) => Err(checksum_first(e, &file, len)),
    }
}

/// A bundle whose bytes do not match its trailer is reported as corrupt (a
/// checksum mismatch), whatever else went wrong while reading it.
fn checksum_first(e: Error, file: &std::fs::File, len: u64) -> Error {
    use std::io::Seek;
    let Ok(mut clone) = file.try_clone() else {
        return e;
    };
    if clone.rewind().is_err() {
        return e;
    }
    match check_digest(
        std::io::BufReader::with_capacity(1 << 18, clone),
        len,
        &mut |_| {},
    ) {
        Err(mismatch @ Error::Checksum { .. }) => mismatch,
        _ => e,
    }
}

/// Staging made while a version 2 bundle streams in: each root's staging is
/// created when the root's entry arrives (a root comes before its entries).
struct Streaming<'a> {
    spec: &'a BundleSpec,
    options: &'a RestoreOptions,
    targets: HashMap<String, PathBuf>,
    stages: HashMap<String, Stage>,
    /// Directories that staging (or the state directory) was created in,
    /// with their attributes before, so their mtimes can be put back.
    touched: Vec<(PathBuf, Attrs)>,
    /// What a cleanup needs: the staging so far, later the whole plan.
    journal: Journal,
}

impl Streaming<'_> {
    /// Remembers `dir`'s attributes before this run changes it.
    fn touch(&mut self, dir: PathBuf) -> Result<()> {
        if !self.touched.iter().any(|(d, _)| d == &dir)
            && let Some(meta) = fsutil::lstat(&dir)?.filter(Metadata::is_dir)
        {
            self.touched.push((dir, Attrs::of(&meta)));
        }
        Ok(())
    }

    /// Maps root `name` and creates its staging, journaled first.
    fn root(&mut self, name: &str) -> Result<()> {
        let target = root_target(name, self.spec, self.options)?;
        let stage = stage_for(name, &target)?;
        self.touch(fsutil::parent_of(&stage.path))?;
        self.journal.stages.push(stage.clone());
        self.journal.save(&self.options.state_dir)?;
        make_stage(&stage)?;
        self.targets.insert(name.to_owned(), target);
        self.stages.insert(name.to_owned(), stage);
        Ok(())
    }

    /// After a refusal or failure: staging, journal and pending backup go,
    /// and the directories they were made in get their mtimes back.
    fn abandon(&self, fresh: &[PathBuf]) -> Result<()> {
        let state = &self.options.state_dir;
        cleanup(&self.journal, state)?;
        if !fresh.is_empty() {
            fsutil::remove_file(&state_subdir(state).join("lock"))?;
            for dir in fresh.iter().rev() {
                let _ = std::fs::remove_dir(dir);
            }
        }
        for (dir, attrs) in self.touched.iter().rev() {
            if fsutil::lstat(dir)?.is_some_and(|m| m.is_dir()) {
                attrs.apply_mtime(dir)?;
            }
        }
        Ok(())
    }
}

/// The one-pass restore of a version 2 bundle.
///
/// Members are inflated on every core while this thread checks each entry
/// and writes each file into the staging directory of its root, hashing it
/// as it goes. Only after the whole bundle is verified (checksum, limits,
/// rules, manifest) is the plan made against the disk; until the swap nothing
/// outside the staging directories and the state directory changes, and a
/// refusal removes both again (the state directory when this run made it).
fn restore_streamed(
    opened: &Opened,
    spec: &BundleSpec,
    policy: &Policy<'_>,
    options: &RestoreOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<RestoreReport> {
    let hook = Hook::of(options);
    let state = &options.state_dir;
    let fresh: Vec<PathBuf> = [state.clone(), state_subdir(state)]
        .into_iter()
        .filter(|d| !d.exists())
        .collect();
    let mut streaming = Streaming {
        spec,
        options,
        targets: HashMap::new(),
        stages: HashMap::new(),
        touched: Vec::new(),
        journal: Journal {
            mode: Mode::Restore,
            phase: JournalPhase::Staging,
            stages: Vec::new(),
            ops: Vec::new(),
            dir_attrs: Vec::new(),
            parents: Vec::new(),
            chown: fsutil::can_chown(),
            backup: backup_path(state),
        },
    };
    if let Some(outer) = fresh.first() {
        streaming.touch(fsutil::parent_of(outer))?;
    }
    let mut session = Session::open(options)?;
    streaming.journal.chown = session.chown;
    let staged = (|| -> Result<(Journal, RestoreReport)> {
        let manifest =
            stream_into_staging(opened, policy, &mut streaming, progress).map_err(|e| {
                if hook.is_crash(&e) {
                    e
                } else {
                    checksum_first(e, &opened.file, opened.len)
                }
            })?;
        for root in &manifest.roots {
            if !streaming.targets.contains_key(&root.name) {
                let target = root_target(&root.name, spec, options)?;
                streaming.targets.insert(root.name.clone(), target);
            }
        }
        if session.chown {
            check_owners(&manifest.entries, spec)?;
        }
        check_lengths(&manifest.entries, &streaming.targets)?;
        let plan = Plan::build(&manifest.entries, &[], &streaming.targets, true)?;
        let report = RestoreReport {
            changes: plan.changes(),
            dry_run: false,
            recovered: session.recovered,
            backup: Some(backup_path(state)),
        };
        let mut journal = plan.journal(Mode::Restore, &streaming.stages, session.chown, state);
        // Creating the staging touched these directories: an undo puts back
        // their attributes from before.
        for (dir, before) in &streaming.touched {
            for (d, attrs) in &mut journal.parents {
                if d == dir {
                    *attrs = *before;
                }
            }
            for op in &mut journal.ops {
                if let Op::KeepDir { target, old } = op
                    && target == dir
                {
                    *old = *before;
                }
            }
        }
        journal.save(state)?;
        streaming.journal = journal.clone();
        // Every file was staged; keep those the plan puts in place, with
        // their attributes, and add the links.
        let by_path = plan.index_by_path();
        for (i, p) in plan.entries.iter().enumerate() {
            let root = p.entry.path.split('/').next().unwrap_or_default();
            let Some(stage) = streaming.stages.get(root) else {
                continue;
            };
            let placed = matches!(p.step, Step::Create | Step::Replace);
            match p.entry.kind {
                EntryKind::File if placed => {
                    p.attrs
                        .apply(&staged_path(&stage.path, i), false, session.chown)?;
                }
                EntryKind::File => fsutil::remove_file(&staged_path(&stage.path, i))?,
                EntryKind::Symlink | EntryKind::Hardlink if placed => {
                    stage_link(&plan, i, &stage.path, &by_path, session.chown)?;
                }
                _ => {}
            }
        }
        session.seal_staging(
            Mode::Restore,
            &plan,
            &streaming.targets,
            &streaming.stages,
            spec.compression_level,
            hook,
            progress,
        )?;
        Ok((journal, report))
    })();
    match staged {
        Ok((journal, report)) => {
            session.swap_and_commit(journal, hook, progress)?;
            Ok(report)
        }
        Err(e) if hook.is_crash(&e) => Err(e),
        Err(e) => {
            streaming.abandon(&fresh)?;
            Err(e)
        }
    }
}

/// The one pass: inflate (on every core), check every entry, write every
/// file into its root's staging as `new/<entry index>`; then the checksum
/// over the whole bundle and the manifest. Returns the verified manifest.
fn stream_into_staging(
    opened: &Opened,
    policy: &Policy<'_>,
    streaming: &mut Streaming<'_>,
    progress: &mut dyn FnMut(Progress),
) -> Result<crate::format::Manifest> {
    let source: Arc<dyn crate::members::Source> = opened.file.clone();
    let mut body = Parallel::spawn(source, &opened.index, Parallel::threads(), true);
    let counter = body.counter();
    let mut checker = Checker::new(policy);
    let mut current: Option<(std::fs::File, PathBuf)> = None;
    let manifest = scan(
        &mut body,
        counter,
        opened.body_len,
        &policy.limits,
        Phase::Stage,
        progress,
        |raw, data| {
            checker.entry(raw, data, &mut |entry, piece| {
                if !piece.is_empty() {
                    return match &mut current {
                        Some((out, path)) => out
                            .write_all(piece)
                            .map_err(|e| Error::io("staging", path.as_path(), e)),
                        None => Ok(()),
                    };
                }
                if entry.path.depth == 1 {
                    streaming.root(entry.path.root())?;
                }
                if entry.kind == EntryKind::File {
                    let stage = streaming
                        .stages
                        .get(entry.path.root())
                        .ok_or_else(|| Error::refused(entry.path.full.clone(), Refusal::Orphan))?;
                    let staged = staged_path(&stage.path, entry.index);
                    let out = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&staged)
                        .map_err(|e| Error::io("staging", &staged, e))?;
                    current = Some((out, staged));
                }
                Ok(())
            })?;
            if let Some((out, _)) = current.take() {
                // Start writing it out now: the disk works while the next
                // members inflate, and the syncfs after staging waits less.
                let _ = nix::fcntl::posix_fadvise(
                    &out,
                    0,
                    0,
                    nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
                );
            }
            Ok(())
        },
    )?;
    let found = body
        .digest()
        .map_err(|e| Error::io("reading bundle", "<bundle>", e))?;
    if found != Some(opened.digest) {
        return Err(Error::Checksum {
            expected: hex::encode(opened.digest),
            found: hex::encode(found.unwrap_or_default()),
        });
    }
    checker.finish(&manifest, true)
}

/// Puts back what the last restore replaced and removes what it created, from
/// the backup bundle in the state directory. Atomic like [`restore`]; the
/// backup is used up.
pub fn rollback(
    options: &RestoreOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<RestoreReport> {
    let backup = backup_path(&options.state_dir);
    let mut session = Session::open(options)?;
    if !fsutil::exists(&backup)? {
        return Err(Error::NoBackup { path: backup });
    }
    // The backup holds this node's own former files: links may point anywhere and
    // setid bits are as they were. It is still checked in full.
    let policy = Policy {
        limits: Limits {
            max_total_bytes: u64::MAX,
            max_entries: u64::MAX,
            max_ratio: u64::MAX,
            ratio_grace_bytes: 0,
        },
        allow_setid: true,
        strict_links: false,
        node: None,
        allow_world_writable: true,
        allow_remove: true,
    };
    let verified = verify_path(&backup, &policy, progress)?;
    let targets: HashMap<String, PathBuf> = verified
        .manifest
        .roots
        .iter()
        .map(|r| (r.name.clone(), PathBuf::from(&r.path)))
        .collect();
    let plan = Plan::build(
        &verified.manifest.entries,
        &verified.manifest.remove,
        &targets,
        false,
    )?;
    let mut report = RestoreReport {
        changes: plan.changes(),
        dry_run: options.dry_run,
        ..RestoreReport::default()
    };
    if options.dry_run {
        return Ok(report);
    }
    report.recovered = session.recovered;
    session.run(
        Mode::Rollback,
        &verified,
        &plan,
        &targets,
        6,
        Hook::of(options),
        progress,
    )?;
    Ok(report)
}

/// Refuses entries whose paths on disk would be longer than the file system
/// takes (`mkdir` and `lstat` would fail with "File name too long" mid-swap).
fn check_lengths(entries: &[ManifestEntry], targets: &HashMap<String, PathBuf>) -> Result<()> {
    for entry in entries {
        let parsed = parse_entry_path(entry.path.as_bytes())
            .map_err(|r| Error::refused(entry.path.clone(), r))?;
        let Some(root) = targets.get(parsed.root()) else {
            continue;
        };
        let len = root.as_os_str().len() + 1 + parsed.rel().len();
        if len > MAX_PATH_BYTES {
            return Err(Error::refused(
                entry.path.clone(),
                Refusal::TooLong(format!(
                    "path on disk under {} of {len} bytes (at most {MAX_PATH_BYTES})",
                    root.display()
                )),
            ));
        }
    }
    Ok(())
}

/// Refuses entries whose owner or group (resolved as the restore would: by
/// name when the name exists here, else by number) is not on the spec's
/// allow-lists. Only checked when the restore gives files away (as root).
fn check_owners(entries: &[ManifestEntry], spec: &BundleSpec) -> Result<()> {
    let mut names = Names::default();
    let mut users = HashSet::new();
    for owner in &spec.owners {
        let uid = match owner.parse::<u32>() {
            Ok(uid) => Some(uid),
            Err(_) => names.uid_of(owner),
        };
        users.insert(uid.ok_or_else(|| {
            Error::Spec(format!(
                "owners: `{owner}` is neither a local user nor a number"
            ))
        })?);
    }
    let mut groups = HashSet::new();
    for group in &spec.groups {
        let gid = match group.parse::<u32>() {
            Ok(gid) => Some(gid),
            Err(_) => names.gid_of(group),
        };
        groups.insert(gid.ok_or_else(|| {
            Error::Spec(format!(
                "groups: `{group}` is neither a local group nor a number"
            ))
        })?);
    }
    for entry in entries {
        let uid = names.local_uid(entry.user.as_deref(), entry.uid);
        if !users.contains(&uid) {
            return Err(Error::refused(
                entry.path.clone(),
                Refusal::Owner(format!(
                    "owner `{}` (uid {uid} here)",
                    entry.user.as_deref().unwrap_or("-")
                )),
            ));
        }
        let gid = names.local_gid(entry.group.as_deref(), entry.gid);
        if !groups.contains(&gid) {
            return Err(Error::refused(
                entry.path.clone(),
                Refusal::Owner(format!(
                    "group `{}` (gid {gid} here)",
                    entry.group.as_deref().unwrap_or("-")
                )),
            ));
        }
    }
    Ok(())
}

/// Finishes a restore or rollback that was interrupted (killed, power loss):
/// before its commit the old tree comes back, after it the new tree stays.
/// Restore and rollback call this first; it is public for tools and tests.
pub fn recover(state_dir: &Path) -> Result<Option<Recovered>> {
    let _lock = lock(state_dir)?;
    recover_locked(state_dir)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Restore,
    Rollback,
}

/// The lock, and the recovery done when taking it.
struct Session {
    state_dir: PathBuf,
    chown: bool,
    recovered: Option<Recovered>,
    _lock: Option<nix::fcntl::Flock<std::fs::File>>,
}

impl Session {
    fn open(options: &RestoreOptions) -> Result<Self> {
        let chown = fsutil::can_chown();
        if options.dry_run {
            return Ok(Session {
                state_dir: options.state_dir.clone(),
                chown,
                recovered: None,
                _lock: None,
            });
        }
        let lock = lock(&options.state_dir)?;
        let recovered = recover_locked(&options.state_dir)?;
        Ok(Session {
            state_dir: options.state_dir.clone(),
            chown,
            recovered,
            _lock: Some(lock),
        })
    }

    /// Stage, swap, commit.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        mode: Mode,
        verified: &Verified,
        plan: &Plan,
        targets: &HashMap<String, PathBuf>,
        level: u32,
        hook: Hook,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<()> {
        let stages = stage_dirs(targets)?;
        let journal = plan.journal(mode, &stages, self.chown, &self.state_dir);
        let state = &self.state_dir;
        journal.save(state)?;
        let staged = (|| {
            for stage in stages.values() {
                make_stage(stage)?;
            }
            stage_files(verified, plan, &stages, self.chown, progress)?;
            self.seal_staging(mode, plan, targets, &stages, level, hook, progress)
        })();
        if let Err(e) = staged {
            if !hook.is_crash(&e) {
                cleanup(&journal, state)?;
            }
            return Err(e);
        }
        self.swap_and_commit(journal, hook, progress)
    }

    /// The end of staging: the backup bundle (restore), then one `syncfs`
    /// per file system.
    #[allow(clippy::too_many_arguments)]
    fn seal_staging(
        &self,
        mode: Mode,
        plan: &Plan<'_>,
        targets: &HashMap<String, PathBuf>,
        stages: &HashMap<String, Stage>,
        level: u32,
        #[cfg_attr(not(feature = "failpoints"), allow(unused_variables))] hook: Hook,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<()> {
        let state = &self.state_dir;
        if mode == Mode::Restore {
            write_backup(plan, targets, level, &pending_path(state), progress)?;
        }
        let state_sub = state_subdir(state);
        let paths = stages
            .values()
            .map(|s| s.path.as_path())
            .chain([state_sub.as_path()]);
        fsutil::sync_filesystems(paths)?;
        #[cfg(feature = "failpoints")]
        hook.fire(FailAt::Staged)?;
        Ok(())
    }

    /// Swap under the journal, undo on failure, commit.
    fn swap_and_commit(
        &mut self,
        journal: Journal,
        hook: Hook,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<()> {
        let state = &self.state_dir;
        let mut journal = journal;
        journal.phase = JournalPhase::Swapping;
        journal.save(state)?;
        let swapped = swap(&journal, hook, progress);
        if let Err(e) = swapped {
            if hook.is_crash(&e) {
                return Err(e);
            }
            return match undo(&journal).and_then(|()| cleanup(&journal, state)) {
                Ok(()) => Err(e),
                Err(undo_error) => Err(Error::Journal {
                    path: journal_path(state),
                    reason: format!("{e:#}; putting the old tree back failed too: {undo_error:#}"),
                }),
            };
        }
        journal.phase = JournalPhase::Committed;
        journal.save(state)?;
        #[cfg(feature = "failpoints")]
        if let Err(e) = hook.fire(FailAt::Committed) {
            // Past the commit the new tree stays: finish, unless "killed".
            if !hook.is_crash(&e) {
                finish(&journal, state)?;
            }
            return Err(e);
        }
        finish(&journal, state)
    }
}

fn lock(state_dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let dir = state_subdir(state_dir);
    fsutil::private_dir(&dir)?;
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::io("opening lock", &path, e))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| Error::Busy { path })
}

/// Where one root's staging lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stage {
    path: PathBuf,
    /// The root directory, when the staging sits inside it (the root is a
    /// mount point); its attributes are set again after the staging is removed.
    inside: Option<PathBuf>,
}

/// A staging directory per root on the root's file system: beside the root,
/// or inside it when the root is a mount point.
fn stage_dirs(targets: &HashMap<String, PathBuf>) -> Result<HashMap<String, Stage>> {
    let mut stages = HashMap::new();
    for (name, root) in targets {
        stages.insert(name.clone(), stage_for(name, root)?);
    }
    Ok(stages)
}

/// Where root `name`, restored at `root`, stages.
fn stage_for(name: &str, root: &Path) -> Result<Stage> {
    let parent = fsutil::parent_of(root);
    let beside = parent.join(format!("{STAGE_PREFIX}.{name}"));
    Ok(match std::fs::metadata(root) {
        Ok(meta) => {
            let parent_meta =
                std::fs::metadata(&parent).map_err(|e| Error::io("inspecting", &parent, e))?;
            if parent_meta.dev() == meta.dev() {
                Stage {
                    path: beside,
                    inside: None,
                }
            } else {
                Stage {
                    path: root.join(STAGE_PREFIX),
                    inside: Some(root.to_owned()),
                }
            }
        }
        Err(_) => Stage {
            path: beside,
            inside: None,
        },
    })
}

/// Creates a fresh staging directory with its `new` and `old` parts (what an
/// earlier run left there goes first).
fn make_stage(stage: &Stage) -> Result<()> {
    fsutil::remove_tree(&stage.path)?;
    for sub in [
        stage.path.clone(),
        stage.path.join("new"),
        stage.path.join("old"),
    ] {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&sub)
            .map_err(|e| Error::io("creating staging directory", &sub, e))?;
    }
    Ok(())
}

/// What the plan does with one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    MkDir,
    KeepDir {
        changed: bool,
    },
    /// A non-directory (kept in the backup) is replaced by a directory.
    PutDir,
    Create,
    Replace,
    Unchanged,
}

struct Planned<'a> {
    entry: &'a ManifestEntry,
    target: PathBuf,
    step: Step,
    /// What was on disk (lstat), when it existed.
    old: Option<Metadata>,
    attrs: Attrs,
}

struct Removal {
    entry: String,
    target: PathBuf,
    remove: bool,
}

/// Entries against the disk.
struct Plan<'a> {
    entries: Vec<Planned<'a>>,
    removals: Vec<Removal>,
}

impl Plan<'_> {
    /// Where each path stands in [`Plan::entries`].
    fn index_by_path(&self) -> HashMap<&str, usize> {
        self.entries
            .iter()
            .enumerate()
            .map(|(i, p)| (p.entry.path.as_str(), i))
            .collect()
    }
}

impl<'a> Plan<'a> {
    fn build(
        entries: &'a [ManifestEntry],
        remove: &[String],
        targets: &HashMap<String, PathBuf>,
        received: bool,
    ) -> Result<Self> {
        let chown = fsutil::can_chown();
        let mut names = Names::default();
        let target_of = |path: &str| -> Result<PathBuf> {
            let parsed = parse_entry_path(path.as_bytes()).map_err(|r| Error::refused(path, r))?;
            let root = targets.get(parsed.root()).ok_or_else(|| {
                Error::refused(path, Refusal::UnknownRoot(parsed.root().to_owned()))
            })?;
            Ok(if parsed.rel().is_empty() {
                root.clone()
            } else {
                root.join(parsed.rel())
            })
        };
        // Removals first (rollback only), deepest first as listed.
        let mut removals = Vec::new();
        let mut removed: HashSet<PathBuf> = HashSet::new();
        for path in remove {
            let target = target_of(path)?;
            let Some(meta) = fsutil::lstat(&target)? else {
                continue;
            };
            let remove = if meta.is_dir() {
                let mut all_removed = true;
                for child in
                    std::fs::read_dir(&target).map_err(|e| Error::io("listing", &target, e))?
                {
                    let child = child.map_err(|e| Error::io("listing", &target, e))?;
                    all_removed &= removed.contains(&child.path());
                }
                all_removed
            } else {
                true
            };
            if remove {
                removed.insert(target.clone());
            }
            removals.push(Removal {
                entry: path.clone(),
                target,
                remove,
            });
        }
        let mut planned: Vec<Planned<'a>> = Vec::with_capacity(entries.len());
        let mut by_path: HashMap<&str, usize> = HashMap::new();
        for entry in entries {
            let target = target_of(&entry.path)?;
            let parsed = parse_entry_path(entry.path.as_bytes())
                .map_err(|r| Error::refused(entry.path.clone(), r))?;
            let parent_fresh = parsed
                .parent()
                .and_then(|p| by_path.get(p))
                .and_then(|i| planned.get(*i))
                .is_some_and(|p| matches!(p.step, Step::MkDir | Step::PutDir));
            let old = if parent_fresh {
                None
            } else if parsed.depth == 1 {
                // A root may be a symlink the administrator made: follow it.
                match std::fs::metadata(&target) {
                    Ok(meta) => Some(meta),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        let parent = fsutil::parent_of(&target);
                        if !std::fs::metadata(&parent).is_ok_and(|m| m.is_dir()) {
                            return Err(Error::Conflict {
                                path: target,
                                reason: format!(
                                    "its parent {} is not an existing directory",
                                    parent.display()
                                ),
                            });
                        }
                        None
                    }
                    Err(e) => return Err(Error::io("inspecting", &target, e)),
                }
            } else {
                fsutil::lstat(&target)?
            };
            let mut attrs = Attrs {
                mode: entry.mode,
                uid: names.local_uid(entry.user.as_deref(), entry.uid),
                gid: names.local_gid(entry.group.as_deref(), entry.gid),
                mtime: entry.mtime,
                mtime_nsec: entry.mtime_nsec,
            };
            // An existing root is the local administrator's: a received bundle
            // may tighten its mode, never loosen it, and never changes its owner.
            if received
                && parsed.depth == 1
                && let Some(meta) = old.as_ref().filter(|m| m.is_dir())
            {
                attrs.mode &= meta.mode() & 0o7777;
                attrs.uid = meta.uid();
                attrs.gid = meta.gid();
            }
            let step = match &old {
                None if entry.kind == EntryKind::Dir => Step::MkDir,
                None => Step::Create,
                Some(meta) => {
                    let kind = meta.file_type();
                    if !(kind.is_dir() || kind.is_file() || kind.is_symlink()) {
                        return Err(Error::Conflict {
                            path: target,
                            reason: "it is a special file (device, fifo or socket)".into(),
                        });
                    }
                    match entry.kind {
                        EntryKind::Dir if kind.is_dir() => Step::KeepDir {
                            changed: !attrs.matches(meta, chown),
                        },
                        EntryKind::Dir if received && kind.is_symlink() => {
                            return Err(Error::Conflict {
                                path: target,
                                reason: "it is a symlink and the bundle has a directory there; a restore never replaces a local symlink with a directory (remove the link first if that is wanted)".into(),
                            });
                        }
                        EntryKind::Dir => Step::PutDir,
                        _ if kind.is_dir() => {
                            // Children a rollback removes first do not count.
                            let mut empty = true;
                            for child in std::fs::read_dir(&target)
                                .map_err(|e| Error::io("listing", &target, e))?
                            {
                                let child = child.map_err(|e| Error::io("listing", &target, e))?;
                                empty &= removed.contains(&child.path());
                            }
                            if !empty {
                                return Err(Error::Conflict {
                                    path: target,
                                    reason: "it is a non-empty directory and the bundle has a file there; move it away first"
                                        .into(),
                                });
                            }
                            Step::Replace
                        }
                        EntryKind::File if same_file(entry, &target, meta, &attrs, chown)? => {
                            Step::Unchanged
                        }
                        EntryKind::Symlink
                            if kind.is_symlink()
                                && attrs.matches(meta, chown)
                                && read_link_normalized(&target).ok() == entry.link =>
                        {
                            Step::Unchanged
                        }
                        EntryKind::Hardlink => {
                            let first = entry
                                .link
                                .as_deref()
                                .and_then(|l| by_path.get(l))
                                .and_then(|i| planned.get(*i));
                            let linked = first.is_some_and(|f| {
                                f.step == Step::Unchanged
                                    && f.old.as_ref().is_some_and(|o| o.ino() == meta.ino())
                            });
                            if linked {
                                Step::Unchanged
                            } else {
                                Step::Replace
                            }
                        }
                        _ => Step::Replace,
                    }
                }
            };
            by_path.insert(entry.path.as_str(), planned.len());
            planned.push(Planned {
                entry,
                target,
                step,
                old,
                attrs,
            });
        }
        Ok(Plan {
            entries: planned,
            removals,
        })
    }

    fn changes(&self) -> Vec<Change> {
        let removals = self.removals.iter().map(|r| Change {
            entry: r.entry.clone(),
            target: r.target.clone(),
            action: if r.remove {
                Action::Remove
            } else {
                Action::Keep
            },
        });
        let entries = self.entries.iter().map(|p| Change {
            entry: p.entry.path.clone(),
            target: p.target.clone(),
            action: match p.step {
                Step::MkDir | Step::Create => Action::Create,
                Step::PutDir | Step::Replace => Action::Replace,
                Step::KeepDir { changed: true } => Action::Update,
                Step::KeepDir { changed: false } | Step::Unchanged => Action::Unchanged,
            },
        });
        removals.chain(entries).collect()
    }

    fn journal(
        &self,
        mode: Mode,
        stages: &HashMap<String, Stage>,
        chown: bool,
        state_dir: &Path,
    ) -> Journal {
        let stage_of = |entry: &str| {
            let root = entry.split('/').next().unwrap_or(entry);
            stages.get(root).map(|s| s.path.clone()).unwrap_or_default()
        };
        let mut ops = Vec::new();
        for (k, r) in self.removals.iter().enumerate().filter(|(_, r)| r.remove) {
            let old = stage_of(&r.entry).join("old").join(format!("r{k}"));
            ops.push(Op::Remove {
                target: r.target.clone(),
                old,
            });
        }
        let mut dir_attrs = Vec::new();
        for (i, p) in self.entries.iter().enumerate() {
            let stage = stage_of(&p.entry.path);
            let target = p.target.clone();
            match p.step {
                Step::MkDir => ops.push(Op::MkDir { target }),
                Step::KeepDir { .. } => {
                    let old = p.old.as_ref().map(Attrs::of).unwrap_or(p.attrs);
                    ops.push(Op::KeepDir { target, old });
                }
                Step::PutDir => ops.push(Op::PutDir {
                    target,
                    old: stage.join("old").join(i.to_string()),
                }),
                Step::Create => ops.push(Op::Put {
                    target,
                    staged: staged_path(&stage, i),
                    old: None,
                }),
                Step::Replace => ops.push(Op::Put {
                    target,
                    staged: staged_path(&stage, i),
                    old: Some(stage.join("old").join(i.to_string())),
                }),
                Step::Unchanged => {}
            }
        }
        for p in self.entries.iter().rev() {
            if matches!(p.step, Step::MkDir | Step::KeepDir { .. } | Step::PutDir) {
                dir_attrs.push((p.target.clone(), p.attrs));
            }
        }
        // Every existing directory the renames touch, as it is now, so an undo
        // can give it its mtime back.
        let mut parents: Vec<(PathBuf, Attrs)> = Vec::new();
        let mut seen = HashSet::new();
        for op in &ops {
            let target = match op {
                Op::MkDir { target }
                | Op::KeepDir { target, .. }
                | Op::Put { target, .. }
                | Op::PutDir { target, .. }
                | Op::Remove { target, .. } => target,
            };
            let parent = fsutil::parent_of(target);
            if seen.insert(parent.clone())
                && let Ok(meta) = std::fs::symlink_metadata(&parent)
                && meta.is_dir()
            {
                parents.push((parent, Attrs::of(&meta)));
            }
        }
        parents.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        let mut stage_list: Vec<Stage> = stages.values().cloned().collect();
        stage_list.sort_by(|a, b| a.path.cmp(&b.path));
        Journal {
            mode,
            phase: JournalPhase::Staging,
            stages: stage_list,
            ops,
            dir_attrs,
            parents,
            chown,
            backup: backup_path(state_dir),
        }
    }
}

fn staged_path(stage: &Path, index: usize) -> PathBuf {
    stage.join("new").join(index.to_string())
}

/// Whether a regular file on disk already is the entry (attributes, then size,
/// then content).
fn same_file(
    entry: &ManifestEntry,
    target: &Path,
    meta: &Metadata,
    attrs: &Attrs,
    chown: bool,
) -> Result<bool> {
    if !meta.is_file() || meta.len() != entry.size || !attrs.matches(meta, chown) {
        return Ok(false);
    }
    let file = std::fs::File::open(target).map_err(|e| Error::io("reading", target, e))?;
    let mut hasher = Sha256::new();
    fsutil::hash_into(file, &mut hasher).map_err(|e| Error::io("reading", target, e))?;
    Ok(entry.sha256.as_deref() == Some(hex::encode(hasher.finalize()).as_str()))
}

/// Pass 2: stream the bundle again and write the entries that change into the
/// staging directories; the whole-bundle checksum is checked again at the end.
fn stage_files(
    verified: &Verified,
    plan: &Plan<'_>,
    stages: &HashMap<String, Stage>,
    chown: bool,
    progress: &mut dyn FnMut(Progress),
) -> Result<()> {
    let mut inflater = crate::inflate::Body::open(
        &verified.file,
        verified.body_len,
        verified.index.as_ref(),
        true,
    )
    .map_err(|e| Error::io("reading bundle", "<bundle>", e))?;
    let counter = inflater.counter();
    let mut index = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    let limits = Limits {
        max_total_bytes: u64::MAX,
        max_entries: u64::MAX,
        max_ratio: u64::MAX,
        ratio_grace_bytes: 0,
    };
    let by_path = plan.index_by_path();
    let changed = || Error::corrupt("the bundle changed while it was being restored");
    scan(
        &mut inflater,
        counter,
        verified.body_len,
        &limits,
        Phase::Stage,
        progress,
        |raw, data| {
            let planned = plan.entries.get(index).ok_or_else(changed)?;
            let path = parse_entry_path(&raw.path).map_err(|_| changed())?;
            if path.full != planned.entry.path || raw.size != planned.entry.size {
                return Err(changed());
            }
            let this = index;
            index += 1;
            if !matches!(planned.step, Step::Create | Step::Replace) {
                return Ok(());
            }
            let stage = stages.get(path.root()).ok_or_else(changed)?;
            let staged = staged_path(&stage.path, this);
            match planned.entry.kind {
                EntryKind::File => {
                    let mut out = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&staged)
                        .map_err(|e| Error::io("staging", &staged, e))?;
                    let mut left = planned.entry.size;
                    while left > 0 {
                        let n = data
                            .read(&mut buf)
                            .map_err(|e| Error::corrupt(format!("reading `{}`: {e}", path.full)))?;
                        if n == 0 {
                            return Err(changed());
                        }
                        out.write_all(buf.get(..n).unwrap_or_default())
                            .map_err(|e| Error::io("staging", &staged, e))?;
                        left = left.saturating_sub(n as u64);
                    }
                    // Start writing it to disk now, without waiting: the disk
                    // works while the next files are inflated, and the syncfs
                    // after staging has little left to wait for.
                    let _ = nix::fcntl::posix_fadvise(
                        &out,
                        0,
                        0,
                        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
                    );
                    drop(out);
                    planned.attrs.apply(&staged, false, chown)?;
                }
                EntryKind::Symlink | EntryKind::Hardlink => {
                    stage_link(plan, this, &stage.path, &by_path, chown)?;
                }
                EntryKind::Dir => {}
            }
            Ok(())
        },
    )?;
    let digest = inflater.finish().map_err(|_| changed())?;
    if index != plan.entries.len() || digest != Some(verified.digest) {
        return Err(changed());
    }
    Ok(())
}

/// Stages the symlink or hard link `i` of the plan (to be created or
/// replaced) in the staging directory `stage`.
fn stage_link(
    plan: &Plan<'_>,
    i: usize,
    stage: &Path,
    by_path: &HashMap<&str, usize>,
    chown: bool,
) -> Result<()> {
    let changed = || Error::corrupt("the bundle changed while it was being restored");
    let planned = plan.entries.get(i).ok_or_else(changed)?;
    let staged = staged_path(stage, i);
    match planned.entry.kind {
        EntryKind::Symlink => {
            let target = planned.entry.link.as_deref().ok_or_else(changed)?;
            std::os::unix::fs::symlink(target, &staged)
                .map_err(|e| Error::io("staging", &staged, e))?;
            planned.attrs.apply(&staged, true, chown)?;
        }
        EntryKind::Hardlink => {
            let first = planned
                .entry
                .link
                .as_deref()
                .and_then(|l| by_path.get(l))
                .ok_or_else(changed)?;
            let source = match plan.entries.get(*first) {
                Some(f) if matches!(f.step, Step::Create | Step::Replace) => {
                    staged_path(stage, *first)
                }
                Some(f) => f.target.clone(),
                None => return Err(changed()),
            };
            std::fs::hard_link(&source, &staged).map_err(|e| Error::io("staging", &staged, e))?;
        }
        EntryKind::File | EntryKind::Dir => {}
    }
    Ok(())
}

/// The backup bundle: every existing directory of the bundle with its current
/// attributes, every file, link or directory that will be replaced, and the
/// list of what will be created (for a rollback to remove).
fn write_backup(
    plan: &Plan<'_>,
    targets: &HashMap<String, PathBuf>,
    level: u32,
    pending: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<()> {
    let mut items = Vec::new();
    let mut links: HashMap<(u64, u64), String> = HashMap::new();
    for p in &plan.entries {
        let Some(meta) = &p.old else { continue };
        let kind = match p.step {
            Step::KeepDir { .. } => ItemKind::Dir,
            Step::Replace | Step::PutDir if meta.is_dir() => ItemKind::Dir,
            Step::Replace | Step::PutDir if meta.file_type().is_symlink() => {
                ItemKind::Symlink(read_link_normalized(&p.target)?)
            }
            Step::Replace | Step::PutDir => match links.get(&(meta.dev(), meta.ino())) {
                Some(first) => ItemKind::Hardlink(first.clone()),
                None => {
                    if meta.nlink() > 1 {
                        links.insert((meta.dev(), meta.ino()), p.entry.path.clone());
                    }
                    ItemKind::File
                }
            },
            _ => continue,
        };
        items.push(Item {
            path: p.entry.path.clone(),
            source: p.target.clone(),
            kind,
            meta: meta.clone(),
        });
    }
    let mut remove: Vec<String> = plan
        .entries
        .iter()
        .filter(|p| matches!(p.step, Step::MkDir | Step::Create))
        .map(|p| p.entry.path.clone())
        .collect();
    remove.reverse();
    let mut roots: Vec<ManifestRoot> = targets
        .iter()
        .map(|(name, path)| ManifestRoot {
            name: name.clone(),
            path: path.to_string_lossy().into_owned(),
        })
        .collect();
    roots.sort_by(|a, b| a.name.cmp(&b.name));
    fsutil::write_atomic(pending, |out| {
        write_bundle(&items, roots, remove, out, level, 1, progress).map(|_| ())
    })
}

/// The plan as the journal stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Journal {
    mode: Mode,
    phase: JournalPhase,
    stages: Vec<Stage>,
    ops: Vec<Op>,
    /// New directory attributes, deepest first.
    dir_attrs: Vec<(PathBuf, Attrs)>,
    /// Attributes of the existing directories holding renamed entries, before
    /// the swap, deepest first (for the undo).
    parents: Vec<(PathBuf, Attrs)>,
    chown: bool,
    backup: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum JournalPhase {
    Staging,
    Swapping,
    Committed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "op")]
enum Op {
    /// Create a directory that did not exist.
    MkDir { target: PathBuf },
    /// An existing directory stays; its old attributes for the undo.
    KeepDir { target: PathBuf, old: Attrs },
    /// Move the old entry (if any) to `old`, then `staged` into place.
    Put {
        target: PathBuf,
        staged: PathBuf,
        old: Option<PathBuf>,
    },
    /// Move the old non-directory to `old`, then create the directory.
    PutDir { target: PathBuf, old: PathBuf },
    /// Move the entry to `old` (rollback of a creation).
    Remove { target: PathBuf, old: PathBuf },
}

/// The journal file: version and checksum around the journal.
#[derive(Serialize, Deserialize)]
struct JournalFile {
    version: u32,
    sha256: String,
    journal: Journal,
}

impl Journal {
    fn save(&self, state_dir: &Path) -> Result<()> {
        let body = serde_json::to_vec(self).map_err(|e| Error::corrupt(format!("journal: {e}")))?;
        let file = JournalFile {
            version: 1,
            sha256: hex::encode(Sha256::digest(&body)),
            journal: self.clone(),
        };
        let text = serde_json::to_vec_pretty(&file)
            .map_err(|e| Error::corrupt(format!("journal: {e}")))?;
        fsutil::write_atomic(&journal_path(state_dir), |out| {
            out.write_all(&text)
                .map_err(|e| Error::io("writing", journal_path(state_dir), e))
        })
    }

    fn load(state_dir: &Path) -> Result<Option<Journal>> {
        let path = journal_path(state_dir);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("reading", &path, e)),
        };
        let bad = |reason: String| Error::Journal {
            path: path.clone(),
            reason,
        };
        let file: JournalFile = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
        let body = serde_json::to_vec(&file.journal).map_err(|e| bad(e.to_string()))?;
        if file.version != 1 || hex::encode(Sha256::digest(&body)) != file.sha256 {
            return Err(bad(
                "version or checksum mismatch; inspect it and the staging directories by hand"
                    .into(),
            ));
        }
        Ok(Some(file.journal))
    }
}

/// The renames, then directory attributes, then a file system sync.
fn swap(
    journal: &Journal,
    #[cfg_attr(not(feature = "failpoints"), allow(unused_variables))] hook: Hook,
    progress: &mut dyn FnMut(Progress),
) -> Result<()> {
    let total = journal.ops.len() as u64;
    for (k, op) in journal.ops.iter().enumerate() {
        #[cfg(feature = "failpoints")]
        hook.fire(FailAt::Op(k))?;
        match op {
            Op::MkDir { target } => std::fs::DirBuilder::new()
                .mode(0o700)
                .create(target)
                .map_err(|e| Error::io("creating directory", target, e))?,
            Op::KeepDir { .. } => {}
            Op::Put {
                target,
                staged,
                old,
            } => {
                if let Some(old) = old {
                    fsutil::rename(target, old)?;
                }
                fsutil::rename(staged, target)?;
            }
            Op::PutDir { target, old } => {
                fsutil::rename(target, old)?;
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(target)
                    .map_err(|e| Error::io("creating directory", target, e))?;
            }
            Op::Remove { target, old } => fsutil::rename(target, old)?,
        }
        progress(Progress {
            phase: Phase::Swap,
            done: k as u64 + 1,
            total,
        });
    }
    #[cfg(feature = "failpoints")]
    hook.fire(FailAt::DirAttrs)?;
    for (target, attrs) in &journal.dir_attrs {
        attrs.apply(target, false, journal.chown)?;
    }
    fsutil::sync_filesystems(journal.stages.iter().map(|s| s.path.as_path()))?;
    #[cfg(feature = "failpoints")]
    hook.fire(FailAt::Commit)?;
    Ok(())
}

/// Undoes the renames of a swap that did not commit, whatever step it reached.
///
/// Every step is attempted even when an earlier one fails, so one path that
/// cannot be put back does not leave the others replaced; the first error is
/// returned (and the journal stays for the next run, which repeats the undo:
/// each step checks what is there first, so repeating it is safe).
fn undo(journal: &Journal) -> Result<()> {
    let mut first: Option<Error> = None;
    let mut keep = |result: Result<()>| {
        if let Err(e) = result
            && first.is_none()
        {
            first = Some(e);
        }
    };
    for op in journal.ops.iter().rev() {
        keep(undo_op(op, journal.chown));
    }
    // Undoing renames touched the directories' mtimes again.
    for (dir, attrs) in &journal.parents {
        keep(fsutil::lstat(dir).and_then(|meta| match meta {
            Some(m) if m.is_dir() => attrs.apply(dir, false, journal.chown),
            _ => Ok(()),
        }));
    }
    for op in journal.ops.iter().rev() {
        if let Op::KeepDir { target, old } = op {
            keep(fsutil::lstat(target).and_then(|meta| match meta {
                Some(m) if m.is_dir() => old.apply(target, false, journal.chown),
                _ => Ok(()),
            }));
        }
    }
    keep(fsutil::sync_filesystems(
        journal
            .stages
            .iter()
            .filter_map(|s| s.path.parent())
            .filter(|p| p.exists()),
    ));
    match first {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// Undoes one swap operation, if it was done.
fn undo_op(op: &Op, chown: bool) -> Result<()> {
    match op {
        Op::MkDir { target } => {
            if fsutil::lstat(target)?.is_some_and(|m| m.is_dir()) {
                std::fs::remove_dir(target)
                    .map_err(|e| Error::io("removing created directory", target, e))?;
            }
        }
        Op::KeepDir { target, old } => {
            if fsutil::lstat(target)?.is_some_and(|m| m.is_dir()) {
                old.apply(target, false, chown)?;
            }
        }
        Op::Put {
            target,
            staged,
            old,
        } => {
            if !fsutil::exists(staged)? && fsutil::exists(target)? {
                fsutil::rename(target, staged)?;
            }
            if let Some(old) = old
                && fsutil::exists(old)?
                && !fsutil::exists(target)?
            {
                fsutil::rename(old, target)?;
            }
        }
        Op::PutDir { target, old } => {
            if fsutil::exists(old)? {
                if fsutil::lstat(target)?.is_some_and(|m| m.is_dir()) {
                    std::fs::remove_dir(target)
                        .map_err(|e| Error::io("removing created directory", target, e))?;
                }
                fsutil::rename(old, target)?;
            }
        }
        Op::Remove { target, old } => {
            if fsutil::exists(old)? && !fsutil::exists(target)? {
                fsutil::rename(old, target)?;
            }
        }
    }
    Ok(())
}

/// Removes the staging directories, the pending backup and the journal of a
/// run that did not commit (after [`undo`] when it had started swapping).
fn cleanup(journal: &Journal, state_dir: &Path) -> Result<()> {
    remove_stages(journal, false)?;
    fsutil::remove_file(&pending_path(state_dir))?;
    fsutil::remove_file(&journal_path(state_dir))?;
    fsutil::sync_dir(&state_subdir(state_dir))
}

/// Completes a committed run: the backup takes its place (or, for a rollback,
/// is used up), the staging with the replaced files goes, then the journal.
fn finish(journal: &Journal, state_dir: &Path) -> Result<()> {
    match journal.mode {
        Mode::Restore => {
            let pending = pending_path(state_dir);
            if fsutil::exists(&pending)? {
                fsutil::rename(&pending, &journal.backup)?;
            }
        }
        Mode::Rollback => fsutil::remove_file(&journal.backup)?,
    }
    fsutil::sync_dir(&state_subdir(state_dir))?;
    remove_stages(journal, true)?;
    fsutil::remove_file(&journal_path(state_dir))?;
    fsutil::sync_dir(&state_subdir(state_dir))
}

fn remove_stages(journal: &Journal, committed: bool) -> Result<()> {
    for stage in &journal.stages {
        fsutil::remove_tree(&stage.path)?;
        if let Some(root) = &stage.inside {
            // Removing the staging touched the root's mtime: set it again.
            let attrs = if committed {
                journal
                    .dir_attrs
                    .iter()
                    .find(|(t, _)| t == root)
                    .map(|(_, a)| *a)
            } else {
                journal.ops.iter().find_map(|op| match op {
                    Op::KeepDir { target, old } if target == root => Some(*old),
                    _ => None,
                })
            };
            if let Some(attrs) = attrs {
                attrs.apply(root, false, journal.chown)?;
            }
        }
    }
    Ok(())
}

fn recover_locked(state_dir: &Path) -> Result<Option<Recovered>> {
    let Some(journal) = Journal::load(state_dir)? else {
        return Ok(None);
    };
    let recovered = match journal.phase {
        JournalPhase::Staging => {
            cleanup(&journal, state_dir)?;
            Recovered::Cleaned
        }
        JournalPhase::Swapping => {
            undo(&journal)?;
            cleanup(&journal, state_dir)?;
            Recovered::RolledBack
        }
        JournalPhase::Committed => {
            finish(&journal, state_dir)?;
            Recovered::Completed
        }
    };
    Ok(Some(recovered))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The journal of a swap that stopped at a directory whose name the file
    /// system refuses, with a file replaced before it (what older versions
    /// left behind for a bundle with a 256-byte name).
    fn wedged(dir: &Path, stage: &Path) -> Journal {
        let long = dir.join("fresh").join("n".repeat(256));
        let deep = dir.join(vec!["c".repeat(250); 17].join("/"));
        Journal {
            mode: Mode::Restore,
            phase: JournalPhase::Swapping,
            stages: vec![Stage {
                path: stage.to_owned(),
                inside: None,
            }],
            ops: vec![
                Op::Put {
                    target: dir.join("keep.conf"),
                    staged: stage.join("new/1"),
                    old: Some(stage.join("old/1")),
                },
                Op::MkDir {
                    target: dir.join("fresh"),
                },
                Op::MkDir { target: long },
                Op::MkDir { target: deep },
            ],
            dir_attrs: Vec::new(),
            parents: Vec::new(),
            chown: false,
            backup: dir.join("backup"),
        }
    }

    #[test]
    fn recovery_treats_names_that_cannot_exist_as_absent() {
        let scratch = tempfile::tempdir().unwrap();
        let (root, stage, state) = (
            scratch.path().join("r"),
            scratch.path().join(".tandem-stage.r"),
            scratch.path().join("state"),
        );
        for dir in [
            &root,
            &stage.join("new"),
            &stage.join("old"),
            &root.join("fresh"),
        ] {
            std::fs::create_dir_all(dir).unwrap();
        }
        // The swap got as far as the first mkdir: keep.conf replaced.
        std::fs::write(stage.join("old/1"), b"old\n").unwrap();
        std::fs::write(root.join("keep.conf"), b"new\n").unwrap();
        std::fs::create_dir_all(state_subdir(&state)).unwrap();
        wedged(&root, &stage).save(&state).unwrap();
        assert_eq!(recover(&state).unwrap(), Some(Recovered::RolledBack));
        assert_eq!(std::fs::read(root.join("keep.conf")).unwrap(), b"old\n");
        assert!(!root.join("fresh").exists());
        assert!(!stage.exists());
        assert_eq!(recover(&state).unwrap(), None);
    }
}
