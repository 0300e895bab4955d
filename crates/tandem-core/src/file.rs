//! Files that survive a crash at any point: the new content goes to a temporary
//! file beside the old one (`.<name>.tmp.<pid>.<n>`, `n` counting the process's
//! writes, so that two threads writing the same file never share a temporary
//! one), which is fsynced, renamed over the old one, and the directory fsynced. A
//! crash before the rename leaves the old file (and perhaps a temporary one, which
//! an operator removes); a crash after it leaves the whole new file. A failed
//! write removes its temporary file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Counts the temporary files this process made, for their names.
static TEMPORARY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The mode, and perhaps the owner, an atomic write gives its new file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileMode {
    /// Created with this mode; the process umask applies, and a leftover
    /// temporary file keeps the mode it had.
    Masked(u32),
    /// Exactly this mode, whatever the umask or a leftover temporary file.
    Exact(u32),
    /// Given to this owner, then exactly this mode (for files another user's
    /// process reads, such as PostgreSQL's); needs the right to change owners.
    Owned {
        /// The new file's user id.
        uid: u32,
        /// The new file's group id.
        gid: u32,
        /// The new file's mode.
        mode: u32,
    },
}

/// How an atomic write makes its file and its directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtomicOptions {
    /// The new file's mode and owner.
    pub file: FileMode,
    /// Creates the directory and its missing parents with this mode (the umask
    /// applies) when it is missing; `None` requires it to exist.
    pub create_dir: Option<u32>,
}

impl AtomicOptions {
    /// A file of `mode` (the umask applies) in a directory created when missing.
    pub fn masked(mode: u32) -> AtomicOptions {
        AtomicOptions {
            file: FileMode::Masked(mode),
            create_dir: Some(0o777),
        }
    }
}

/// The step of an atomic write that failed, as words that fit before a path
/// ("renaming into place /var/lib/tandem/x").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtomicStep {
    /// Creating the directory.
    CreatingDir,
    /// Creating the temporary file.
    Creating,
    /// Giving the temporary file its owner.
    ChangingOwner,
    /// Giving the temporary file its mode.
    ChangingMode,
    /// Writing the content.
    Writing,
    /// Flushing the temporary file to disk.
    Syncing,
    /// Renaming the temporary file over the target.
    Renaming,
    /// Flushing the directory to disk.
    SyncingDir,
}

impl AtomicStep {
    /// The step as words, e.g. `renaming into place`.
    pub fn as_str(self) -> &'static str {
        match self {
            AtomicStep::CreatingDir => "creating the directory",
            AtomicStep::Creating => "creating",
            AtomicStep::ChangingOwner => "changing owner of",
            AtomicStep::ChangingMode => "changing mode of",
            AtomicStep::Writing => "writing",
            AtomicStep::Syncing => "syncing",
            AtomicStep::Renaming => "renaming into place",
            AtomicStep::SyncingDir => "syncing directory",
        }
    }
}

/// An atomic write that failed: the step, the path it was at (the temporary
/// file, the target or the directory) and the cause. The old file, if any, is
/// unchanged unless the step is [`AtomicStep::SyncingDir`] (the rename was done,
/// but may not yet be durable).
#[derive(Debug, thiserror::Error)]
#[error("{} {}: {source}", step.as_str(), path.display())]
pub struct AtomicWriteError {
    /// The step that failed.
    pub step: AtomicStep,
    /// The path the step was at.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: io::Error,
}

fn at(step: AtomicStep, path: &Path) -> impl FnOnce(io::Error) -> AtomicWriteError + '_ {
    move |source| AtomicWriteError {
        step,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` so that a crash at any point leaves either the old
/// file or the new one: a temporary file in the same directory (created with
/// `mode`, the umask applying), fsync, rename over `path`, fsync of the directory.
/// Creates the directory when missing. The error is the failed step's own.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("state").join("x.json");
/// tandem_core::write_atomically(&path, b"{}\n", 0o644)?;
/// assert_eq!(std::fs::read(&path)?, b"{}\n");
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write_atomically_with(path, bytes, &AtomicOptions::masked(mode)).map_err(|e| e.source)
}

/// [`write_atomically`] with the file's mode, owner and directory as `options`
/// say; the error names the step and the path.
pub fn write_atomically_with(
    path: &Path,
    bytes: &[u8],
    options: &AtomicOptions,
) -> Result<(), AtomicWriteError> {
    let mut file = AtomicFile::create(path, options)?;
    file.write_all(bytes)
        .map_err(at(AtomicStep::Writing, &file.tmp))?;
    file.commit()
}

/// A file being written atomically, for content that comes in pieces: write it
/// (it is a [`Write`]; wrap it in a `BufWriter` for many small writes), then
/// [`commit`](AtomicFile::commit). Dropped without a commit, it removes its
/// temporary file and leaves the old file as it was.
#[derive(Debug)]
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    dir: PathBuf,
    file: Option<File>,
}

impl AtomicFile {
    /// Creates the temporary file for `path` (and the directory, if `options`
    /// say so).
    pub fn create(path: &Path, options: &AtomicOptions) -> Result<AtomicFile, AtomicWriteError> {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if let Some(mode) = options.create_dir {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(&dir)
                .map_err(at(AtomicStep::CreatingDir, &dir))?;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Unique within the process too: two tasks writing the same file at once
        // each rename a whole file of their own (the last one wins), instead of
        // one renaming the other's half-written file or finding it gone. A name
        // left by a dead process is skipped, never written through.
        let mut attempt = 0;
        let (tmp, file) = loop {
            let n = TEMPORARY.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tmp = dir.join(format!(".{name}.tmp.{}.{n}", std::process::id()));
            match open_temporary(&tmp, options.file) {
                Err(e) if e.source.kind() == io::ErrorKind::AlreadyExists && attempt < 16 => {
                    attempt += 1;
                }
                Err(e) => return Err(e),
                Ok(file) => break (tmp, file),
            }
        };
        let atomic = AtomicFile {
            path: path.to_path_buf(),
            tmp,
            dir,
            file: Some(file),
        };
        Ok(atomic)
    }

    /// The temporary file, for a caller that checks the content before it
    /// commits (it is complete once written and flushed).
    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    /// A second handle on the temporary file, for a caller that writes it some
    /// other way (asynchronously, say); [`commit`](AtomicFile::commit) still
    /// syncs and renames it.
    pub fn try_clone_file(&self) -> io::Result<File> {
        match &self.file {
            Some(file) => file.try_clone(),
            None => Err(io::Error::other("the atomic file was already committed")),
        }
    }

    /// fsyncs the temporary file, renames it over the target and fsyncs the
    /// directory. On an error before the rename, the temporary file is removed.
    pub fn commit(mut self) -> Result<(), AtomicWriteError> {
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        let done = file
            .sync_all()
            .map_err(at(AtomicStep::Syncing, &self.tmp))
            .and_then(|()| {
                fs::rename(&self.tmp, &self.path).map_err(at(AtomicStep::Renaming, &self.path))
            });
        if let Err(e) = done {
            let _ = fs::remove_file(&self.tmp);
            return Err(e);
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(at(AtomicStep::SyncingDir, &self.dir))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.file {
            Some(file) => file.write(buf),
            None => Err(io::Error::other("the atomic file was already committed")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Creates the temporary file (a new one: a file already at that name is an
/// `AlreadyExists` error) with its mode and owner; removes it again if either
/// cannot be set.
fn open_temporary(tmp: &Path, mode: FileMode) -> Result<File, AtomicWriteError> {
    let create_mode = match mode {
        FileMode::Masked(m) | FileMode::Exact(m) => m,
        FileMode::Owned { .. } => 0o666,
    };
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(create_mode)
        .open(tmp)
        .map_err(at(AtomicStep::Creating, tmp))?;
    let set = match mode {
        FileMode::Masked(_) => Ok(()),
        FileMode::Exact(m) => set_mode(&file, m).map_err(at(AtomicStep::ChangingMode, tmp)),
        FileMode::Owned { uid, gid, mode } => {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                .map_err(at(AtomicStep::ChangingOwner, tmp))
                .and_then(|()| set_mode(&file, mode).map_err(at(AtomicStep::ChangingMode, tmp)))
        }
    };
    if let Err(e) = set {
        drop(file);
        let _ = fs::remove_file(tmp);
        return Err(e);
    }
    Ok(file)
}

fn set_mode(file: &File, mode: u32) -> io::Result<()> {
    file.set_permissions(fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn atomic_writes_replace_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("f.jsonl");
        write_atomically(&path, b"one\n", 0o644).unwrap();
        write_atomically(&path, b"two\n", 0o644).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "two\n");
        assert_eq!(names(path.parent().unwrap()), ["f.jsonl"]);
    }

    #[test]
    fn an_exact_mode_ignores_a_leftover_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let leftover = dir
            .path()
            .join(format!(".secret.tmp.{}", std::process::id()));
        fs::write(&leftover, "old").unwrap();
        fs::set_permissions(&leftover, fs::Permissions::from_mode(0o644)).unwrap();
        let options = AtomicOptions {
            file: FileMode::Exact(0o600),
            create_dir: None,
        };
        write_atomically_with(&path, b"key", &options).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
        assert_eq!(fs::read_to_string(&path).unwrap(), "key");
        // Never written through: the leftover keeps its bytes and mode.
        assert_eq!(fs::read_to_string(&leftover).unwrap(), "old");
        assert_eq!(fs::metadata(&leftover).unwrap().mode() & 0o7777, 0o644);
    }

    #[test]
    fn threads_writing_one_file_at_once_each_rename_a_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::thread::scope(|scope| {
            for t in 0..8u8 {
                let path = &path;
                scope.spawn(move || {
                    for _ in 0..50 {
                        let text = [b'a' + t; 4096];
                        write_atomically(path, &text, 0o600).unwrap();
                    }
                });
            }
        });
        let text = fs::read(&path).unwrap();
        assert_eq!(text.len(), 4096);
        assert!(text.iter().all(|b| *b == text[0]), "a mix of two writes");
        assert_eq!(names(dir.path()), ["state.json"]);
    }

    #[test]
    fn a_missing_directory_is_an_error_unless_it_may_be_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("f");
        let options = AtomicOptions {
            file: FileMode::Exact(0o600),
            create_dir: None,
        };
        let err = write_atomically_with(&path, b"x", &options).unwrap_err();
        assert_eq!(err.step, AtomicStep::Creating);
        assert!(err.to_string().starts_with("creating "), "{err}");
        let options = AtomicOptions {
            create_dir: Some(0o700),
            ..options
        };
        write_atomically_with(&path, b"x", &options).unwrap();
        let dir_mode = fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777;
        assert_eq!(dir_mode & !0o700, 0, "{dir_mode:o}");
    }

    #[test]
    fn a_file_dropped_before_its_commit_leaves_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, "old").unwrap();
        let mut file = AtomicFile::create(&path, &AtomicOptions::masked(0o644)).unwrap();
        file.write_all(b"half").unwrap();
        assert!(file.temp_path().exists());
        drop(file);
        assert_eq!(fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(names(dir.path()), ["f"]);
    }

    #[test]
    fn a_file_written_through_a_second_handle_commits_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = AtomicFile::create(&path, &AtomicOptions::masked(0o600)).unwrap();
        file.try_clone_file().unwrap().write_all(b"whole").unwrap();
        file.commit().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "whole");
        assert_eq!(names(dir.path()), ["f"]);
    }

    #[test]
    fn a_failed_rename_removes_the_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // A non-empty directory where the file should go: rename cannot replace it.
        let path = dir.path().join("f");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inside"), "x").unwrap();
        let err = write_atomically_with(&path, b"x", &AtomicOptions::masked(0o644)).unwrap_err();
        assert_eq!(err.step, AtomicStep::Renaming);
        assert_eq!(names(dir.path()), ["f"]);
    }
}
