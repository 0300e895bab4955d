//! The crate's error type and the reasons a bundle entry is refused.

use std::path::PathBuf;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while bundling or restoring.
///
/// Every variant that [`restore`](crate::restore) returns before its swap phase
/// means nothing on disk was changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file system operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done ("reading", "renaming", ...).
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The bundle spec (the `[bundle]` table of the node config) is invalid.
    #[error("invalid bundle spec: {0}")]
    Spec(String),
    /// A file under a root cannot be bundled.
    #[error("cannot bundle {}: {reason}", path.display())]
    Unbundlable {
        /// The file.
        path: PathBuf,
        /// Why (for example a symlink that leaves its root).
        reason: String,
    },
    /// A file changed while it was being bundled.
    #[error("{} changed while it was being bundled; run the copy again", path.display())]
    ChangedWhileBundling {
        /// The file.
        path: PathBuf,
    },
    /// The bundle does not end with a tandem trailer: truncated, or not a bundle.
    #[error("not a complete tandem bundle (truncated, or not written by tandem): {0}")]
    NotABundle(String),
    /// The checksum over the whole bundle does not match.
    #[error(
        "bundle checksum mismatch: the file is corrupt (expected sha256 {expected}, found {found})"
    )]
    Checksum {
        /// The checksum recorded in the bundle.
        expected: String,
        /// The checksum of the bytes read.
        found: String,
    },
    /// The gzip or tar stream inside the bundle is corrupt.
    #[error("corrupt bundle: {0}")]
    Corrupt(String),
    /// A limit of the spec was exceeded; reading stopped there.
    #[error(
        "bundle refused: {kind} past the limit ({value} > {limit}), stopped after {decompressed} decompressed bytes"
    )]
    Limit {
        /// Which limit.
        kind: LimitKind,
        /// The value reached.
        value: u64,
        /// The configured limit.
        limit: u64,
        /// Decompressed bytes read when reading stopped.
        decompressed: u64,
    },
    /// An entry of the bundle is refused; nothing was changed.
    #[error("bundle refused: entry `{entry}`: {reason}")]
    Refused {
        /// The entry's path inside the bundle (possibly sanitized for display).
        entry: String,
        /// Why it is refused.
        reason: Refusal,
    },
    /// The target tree holds something a restore will not replace.
    #[error("cannot restore over {}: {reason}", path.display())]
    Conflict {
        /// The path on disk.
        path: PathBuf,
        /// Why (for example a non-empty directory where the bundle has a file).
        reason: String,
    },
    /// Another restore or rollback holds the state directory's lock.
    #[error("another restore or rollback is running (lock {} is held)", path.display())]
    Busy {
        /// The lock file.
        path: PathBuf,
    },
    /// There is no backup bundle to roll back to.
    #[error("nothing to roll back: no backup bundle at {}", path.display())]
    NoBackup {
        /// Where the backup bundle would be.
        path: PathBuf,
    },
    /// The journal of an interrupted restore cannot be read or replayed.
    #[error("journal {}: {reason}", path.display())]
    Journal {
        /// The journal file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A failure injected by a test (see [`Failpoint`](crate::Failpoint); only
    /// with the `failpoints` feature).
    #[cfg(feature = "failpoints")]
    #[error("injected failure at {0:?}")]
    Injected(crate::Failpoint),
}

impl Error {
    /// Builds an [`Error::Io`].
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// Builds an [`Error::Refused`].
    pub(crate) fn refused(entry: impl Into<String>, reason: Refusal) -> Self {
        Error::Refused {
            entry: entry.into(),
            reason,
        }
    }

    /// Builds an [`Error::Corrupt`] from anything displayable.
    pub(crate) fn corrupt(what: impl std::fmt::Display) -> Self {
        Error::Corrupt(what.to_string())
    }
}

/// Which limit of [`Limits`](crate::Limits) was exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitKind {
    /// Total decompressed bytes.
    TotalBytes,
    /// Number of entries.
    Entries,
    /// Decompressed bytes per compressed byte.
    Ratio,
    /// Bytes of one GNU long name or long link record.
    LongName,
}

impl std::fmt::Display for LimitKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LimitKind::TotalBytes => "total size",
            LimitKind::Entries => "entry count",
            LimitKind::Ratio => "compression ratio",
            LimitKind::LongName => "GNU long name or link record",
        })
    }
}

/// Why an entry of a bundle is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The path is absolute.
    #[error("absolute path")]
    AbsolutePath,
    /// The path has a `..` component.
    #[error("path contains `..`")]
    DotDot,
    /// The path is empty, has empty or `.` components, or is not UTF-8.
    #[error("path is not in canonical form ({0})")]
    BadPath(&'static str),
    /// The first path component is not a root of the bundle.
    #[error("`{0}` is not a root of this bundle")]
    UnknownRoot(String),
    /// The bundle has a root this node's spec does not define.
    #[error("root `{0}` is not defined in this node's [bundle] spec")]
    RootNotInSpec(String),
    /// A symlink target is absolute.
    #[error("symlink target `{0}` is absolute")]
    AbsoluteLink(String),
    /// A symlink or hardlink target leaves the roots.
    #[error("link target `{0}` leaves its root")]
    LinkEscapes(String),
    /// A hardlink target is not an earlier regular file of the same root.
    #[error("hardlink target `{0}` is not an earlier regular file of the same root")]
    BadHardlink(String),
    /// A device, fifo, socket or other special entry.
    #[error("{0} entries are never restored")]
    Special(&'static str),
    /// Setuid or setgid bits without `allow_setid`.
    #[error("mode {0:o} has setuid/setgid bits and the spec does not allow them")]
    SetId(u32),
    /// The entry appears twice.
    #[error("entry appears twice")]
    Duplicate,
    /// The entry's parent directory is not an earlier directory entry.
    #[error("parent directory is not an earlier directory entry of the bundle")]
    Orphan,
    /// The entry is in the archive but not in the manifest.
    #[error("entry is not in the manifest")]
    NotInManifest,
    /// The entry is in the manifest but not in the archive.
    #[error("entry is in the manifest but missing from the archive")]
    MissingFromArchive,
    /// The archive header disagrees with the manifest.
    #[error("{0} in the archive does not match the manifest")]
    ManifestMismatch(&'static str),
    /// The entry's content does not match the manifest's sha256.
    #[error("content does not match the manifest's sha256")]
    ContentMismatch,
    /// The entry is of config class `node` on this node.
    #[error(
        "matches a `node` class glob of this node's spec; server-specific files are never restored"
    )]
    NodeClass,
    /// The manifest itself is malformed.
    #[error("manifest is malformed: {0}")]
    BadManifest(String),
    /// Something follows the manifest.
    #[error("entry after the manifest")]
    AfterManifest,
    /// A name, path or link target longer than the file system takes.
    #[error("{0} is longer than a file system takes")]
    TooLong(String),
    /// A name restore keeps for itself (its staging directories).
    #[error("`{0}` is a name restore keeps for its staging directory")]
    Reserved(String),
    /// A negative modification time in the manifest.
    #[error("modification time {0} is before 1970")]
    NegativeMtime(i64),
    /// A GNU long name or link record, or a pax header, that restore does not take.
    #[error("{0}")]
    BadExtension(String),
    /// A `remove` list in a bundle that is not a backup.
    #[error("only backup bundles carry a `remove` list; a received bundle never removes files")]
    RemoveList,
    /// Write permission for everyone without `allow_world_writable`.
    #[error("mode {0:o} is writable by every user and the spec does not allow it")]
    WorldWritable(u32),
    /// An owner or group that is not on the spec's allow-list.
    #[error("{0} is not in the spec's allow-list (`owners` / `groups` of [bundle])")]
    Owner(String),
}
