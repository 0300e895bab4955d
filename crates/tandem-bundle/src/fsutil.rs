//! Small file system helpers: atomic writes, metadata, durable syncs.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;

use tandem_core::{AtomicFile, AtomicOptions, AtomicWriteError, FileMode};

use crate::error::{Error, Result};

/// Writes a file atomically (`tandem-core`'s [`AtomicFile`]): temporary file
/// beside it, fsync, rename, fsync the directory. `fill` gets a buffered writer.
/// The file is private (exactly 0600, also over a leftover temporary file): the
/// files this crate writes (bundles, backups, journals) hold secrets.
pub(crate) fn write_atomic<T>(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> Result<T>,
) -> Result<T> {
    let options = AtomicOptions {
        file: FileMode::Exact(0o600),
        create_dir: None,
    };
    let file = AtomicFile::create(path, &options).map_err(step_error)?;
    let tmp = file.temp_path().to_path_buf();
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let value = fill(&mut out)?;
    let file = out
        .into_inner()
        .map_err(|e| Error::io("writing", &tmp, e.into_error()))?;
    file.commit().map_err(step_error)?;
    Ok(value)
}

/// This crate's error for a failed step of an atomic write.
fn step_error(e: AtomicWriteError) -> Error {
    Error::io(e.step.as_str(), e.path, e.source)
}

/// The directory holding `path` (`.` for a bare name).
pub(crate) fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// fsyncs a directory so renames and creations in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("syncing directory", dir, e))
}

/// Flushes the whole file system holding `path` (one `syncfs` instead of an
/// fsync per staged file).
pub(crate) fn sync_fs(path: &Path) -> Result<()> {
    let file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
    nix::unistd::syncfs(&file).map_err(|e| Error::io("syncing file system of", path, e.into()))
}

/// [`sync_fs`] once per file system among `paths` (several roots and the state
/// directory usually share one; every flush costs a disk cache flush).
pub(crate) fn sync_filesystems<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Result<()> {
    let mut done = std::collections::HashSet::new();
    for path in paths {
        let dev = std::fs::metadata(path)
            .map_err(|e| Error::io("inspecting", path, e))?
            .dev();
        if done.insert(dev) {
            sync_fs(path)?;
        }
    }
    Ok(())
}

/// Creates a directory of this crate's own state (and missing parents) as
/// 0700, and makes an existing one 0700.
pub(crate) fn private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("creating state directory", dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io("changing mode of", dir, e))
}

/// Whether an error means nothing can be at the path: it does not exist, a
/// component is not a directory, or the name is longer than the file system
/// takes (nothing by that name can ever have been created).
pub(crate) fn cannot_exist(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
        || matches!(
            e.raw_os_error(),
            Some(code) if code == Errno::ENAMETOOLONG as i32 || code == Errno::ENOTDIR as i32
        )
}

/// `lstat`, with `None` for a path that does not (or cannot) exist.
pub(crate) fn lstat(path: &Path) -> Result<Option<Metadata>> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if cannot_exist(&e) => Ok(None),
        Err(e) => Err(Error::io("inspecting", path, e)),
    }
}

/// Whether a path exists (without following a final symlink).
pub(crate) fn exists(path: &Path) -> Result<bool> {
    lstat(path).map(|m| m.is_some())
}

/// Owner, mode and modification time to give a restored file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Attrs {
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mtime: i64,
    pub(crate) mtime_nsec: u32,
}

impl Attrs {
    pub(crate) fn of(meta: &Metadata) -> Self {
        Attrs {
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: meta.mtime(),
            mtime_nsec: u32::try_from(meta.mtime_nsec()).unwrap_or(0),
        }
    }

    /// Applies owner (when `chown`), mode (not for symlinks) and mtime, in the
    /// order that keeps setid bits (chown clears them).
    pub(crate) fn apply(&self, path: &Path, symlink: bool, chown: bool) -> Result<()> {
        if chown {
            std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))
                .map_err(|e| Error::io("changing owner of", path, e))?;
        }
        if !symlink {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(self.mode))
                .map_err(|e| Error::io("changing mode of", path, e))?;
        }
        let mtime = TimeSpec::new(self.mtime, i64::from(self.mtime_nsec));
        utimensat(
            nix::fcntl::AT_FDCWD,
            path,
            &TimeSpec::UTIME_OMIT,
            &mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| Error::io("setting mtime of", path, e.into()))
    }

    /// Sets only the mtime back (for directories restore touched by creating
    /// and removing its staging next to them).
    pub(crate) fn apply_mtime(&self, path: &Path) -> Result<()> {
        let mtime = TimeSpec::new(self.mtime, i64::from(self.mtime_nsec));
        utimensat(
            nix::fcntl::AT_FDCWD,
            path,
            &TimeSpec::UTIME_OMIT,
            &mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| Error::io("setting mtime of", path, e.into()))
    }

    /// Whether `meta` already carries these attributes (owner only when `chown`).
    pub(crate) fn matches(&self, meta: &Metadata, chown: bool) -> bool {
        let have = Attrs::of(meta);
        have.mode == self.mode
            && have.mtime == self.mtime
            && have.mtime_nsec == self.mtime_nsec
            && (!chown || (have.uid == self.uid && have.gid == self.gid))
    }
}

/// Whether this process may give files away (it is root).
pub(crate) fn can_chown() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Cached user and group name lookups, both ways.
#[derive(Default)]
pub(crate) struct Names {
    users: HashMap<u32, Option<String>>,
    groups: HashMap<u32, Option<String>>,
    uids: HashMap<String, Option<u32>>,
    gids: HashMap<String, Option<u32>>,
}

impl Names {
    pub(crate) fn user(&mut self, uid: u32) -> Option<String> {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(uid.into())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            })
            .clone()
    }

    pub(crate) fn group(&mut self, gid: u32) -> Option<String> {
        self.groups
            .entry(gid)
            .or_insert_with(|| {
                nix::unistd::Group::from_gid(gid.into())
                    .ok()
                    .flatten()
                    .map(|g| g.name)
            })
            .clone()
    }

    /// The local uid for a bundled owner: by name when the name exists here,
    /// else the numeric id (as GNU tar does).
    pub(crate) fn local_uid(&mut self, name: Option<&str>, uid: u32) -> u32 {
        name.and_then(|name| self.uid_of(name)).unwrap_or(uid)
    }

    /// The local gid for a bundled group, as [`Names::local_uid`].
    pub(crate) fn local_gid(&mut self, name: Option<&str>, gid: u32) -> u32 {
        name.and_then(|name| self.gid_of(name)).unwrap_or(gid)
    }

    /// The uid of a local user name.
    pub(crate) fn uid_of(&mut self, name: &str) -> Option<u32> {
        *self.uids.entry(name.to_owned()).or_insert_with(|| {
            nix::unistd::User::from_name(name)
                .ok()
                .flatten()
                .map(|u| u.uid.as_raw())
        })
    }

    /// The gid of a local group name.
    pub(crate) fn gid_of(&mut self, name: &str) -> Option<u32> {
        *self.gids.entry(name.to_owned()).or_insert_with(|| {
            nix::unistd::Group::from_name(name)
                .ok()
                .flatten()
                .map(|g| g.gid.as_raw())
        })
    }
}

/// Removes a directory tree if it exists.
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if cannot_exist(&e) => Ok(()),
        Err(e) => Err(Error::io("removing", path, e)),
    }
}

/// Removes a file if it exists.
pub(crate) fn remove_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if cannot_exist(&e) => Ok(()),
        Err(e) => Err(Error::io("removing", path, e)),
    }
}

/// Renames, naming both paths in the error.
pub(crate) fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| Error::io("renaming into place", to, with_from(e, from)))
}

fn with_from(e: std::io::Error, from: &Path) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{e} (from {})", from.display()))
}

/// Feeds everything `src` yields into `hasher`.
pub(crate) fn hash_into(
    mut src: impl std::io::Read,
    hasher: &mut sha2::Sha256,
) -> std::io::Result<()> {
    use sha2::Digest;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(buf.get(..n).unwrap_or_default());
    }
}
