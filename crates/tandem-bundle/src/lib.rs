//! Config-file bundles: the seed's `failoverUtil copyConfigFiles` and
//! `restoreConfigFiles`, safe enough to run as root on a production server.
//!
//! A [`BundleSpec`] (the `[bundle]` table of the node config) names the roots
//! whose files are not replicated through the database (the SSL enrollment
//! directory, the web configuration, the custom prompts) with include and
//! exclude globs, and the globs of config class `node` (server-specific files)
//! that are never bundled. [`create`] writes a `.tar.gz` with a manifest and a
//! checksum over the whole (see [`mod@format`]); [`restore`] verifies all of it
//! while it stages the files on each root's file system (inflating on every
//! core), changes nothing outside the staging and its state directory before
//! the whole bundle is verified, swaps with renames under a journal, and keeps
//! what it replaced in a backup bundle for [`rollback`].
//!
//! A restore refuses, with an error that names the entry and nothing changed on
//! disk: absolute paths, `..`, links that leave their root, devices and fifos,
//! setuid/setgid bits unless `allow_setid`, world-writable entries unless
//! `allow_world_writable`, owners off the `owners`/`groups` allow-lists, names
//! over 255 bytes and paths over 4,095 (in the bundle or on disk), the names
//! restore keeps for its staging (`.tandem-stage*` directly under a root),
//! negative mtimes, pax headers and oversized GNU long names (by their header,
//! before reading them), a `remove` list (backups only), entries missing from
//! the manifest or not in it, checksum mismatches, truncated or corrupt
//! archives, and bundles past the [`Limits`] (checked while decompressing, so a
//! bomb stops early). `docs/SECURITY.md` has the threat model. A failure
//! or a kill during the swap leaves the old tree (or, after the commit, the new
//! one), never a mix.
//!
//! Choices an operator should know:
//! - Restore *overlays*: it creates and replaces what the bundle holds and never
//!   deletes files the bundle does not mention (so local-only and `node` class
//!   files stay). A bundle entry that matches a local `node` glob is refused.
//! - Roots map by name: root `name` goes to this node's `[[bundle.roots]]` path,
//!   or with [`RestoreOptions::under`] to `<dir>/<name>`. A root path that is a
//!   symlink is followed; nothing below it is.
//! - Staging sits beside each root (`.tandem-stage.<name>` in its parent), or
//!   inside it when the root is a mount point, so every rename stays on one file
//!   system. Durability comes from one `syncfs` per file system after staging
//!   and after the renames; state files (journal, backup) are written atomically.
//! - The state directory (`<state dir>/config-files/`) holds the lock, the
//!   journal of a running restore and the backup bundle of the last restore;
//!   [`rollback`] goes back one restore and uses the backup up.
//! - Owners are restored only when running as root, by name when the name
//!   exists locally, else by number (as GNU tar does), and only to the users
//!   and groups of [`BundleSpec::owners`] and [`BundleSpec::groups`].
//! - An existing root keeps its owner, and its mode is only ever tightened; a
//!   local symlink is never replaced by a directory (a conflict instead).
//! - Bundles, backups and journals are written 0600, the state directory 0700.
//!
//! This crate never touches the network (the peer link carries the bundle file)
//! and never follows a symlink inside a root while restoring.
//!
//! The cargo feature `failpoints` (off by default; the crate's own tests turn it
//! on) adds the test hooks `Failpoint`, `FailAt` and `RestoreOptions::failpoint`,
//! which stop a restore at a chosen step like an error or like a kill. Without
//! it no failpoint code is compiled.
//!
//! # Example
//!
//! ```
//! use tandem_bundle::{BundleSpec, CreateOptions, RestoreOptions, RootSpec};
//!
//! let active = tempfile::tempdir()?;
//! let prompts = active.path().join("prompts");
//! std::fs::create_dir_all(prompts.join("custom"))?;
//! std::fs::write(prompts.join("custom/welcome.wav"), b"RIFF....WAVE")?;
//!
//! let spec = BundleSpec { roots: vec![RootSpec::new("prompts", &prompts)], ..BundleSpec::default() };
//! let bundle = active.path().join("config-files.tar.gz");
//! let made = tandem_bundle::create_file(&spec, &bundle, &CreateOptions::default(), &mut |_| {})?;
//! assert_eq!(made.files, 1);
//!
//! // On the standby: restore under another directory, state (backup, journal) in `state`.
//! let standby = tempfile::tempdir()?;
//! std::fs::create_dir(standby.path().join("root"))?;
//! let options = RestoreOptions::new(standby.path().join("state")).under(standby.path().join("root"));
//! let report = tandem_bundle::restore(&bundle, &spec, &options, &mut |_| {})?;
//! assert_eq!(std::fs::read(standby.path().join("root/prompts/custom/welcome.wav"))?, b"RIFF....WAVE");
//! assert!(report.backup.is_some());
//!
//! // And back to how it was.
//! tandem_bundle::rollback(&options, &mut |_| {})?;
//! assert!(!standby.path().join("root/prompts").exists());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod create;
mod error;
mod failpoint;
pub mod format;
mod fsutil;
mod inflate;
mod members;
mod pgz;
mod read;
mod restore;
mod spec;

pub use create::{CreateOptions, CreateReport, Skipped, create, create_file};
pub use error::{Error, LimitKind, Refusal, Result};
#[cfg(feature = "failpoints")]
pub use failpoint::{FailAt, Failpoint};
pub use read::{verify_bytes, verify_file};
pub use restore::{
    Action, Change, Recovered, RestoreOptions, RestoreReport, backup_path, incoming_path, recover,
    restore, rollback, state_subdir,
};
pub use spec::{BundleSpec, Limits, RootSpec};

/// Which step a [`Progress`] report belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Phase {
    /// Creating: bytes of file content read.
    Bundle,
    /// Restoring: checksum over the bundle, bytes read.
    Check,
    /// Restoring: compressed bytes verified.
    Verify,
    /// Restoring: compressed bytes staged (version 2 bundles: verified and
    /// staged in one pass).
    Stage,
    /// Restoring: renames done.
    Swap,
}

/// Progress of long work: `done` of `total` in the phase's unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The step.
    pub phase: Phase,
    /// Units done.
    pub done: u64,
    /// Units in all.
    pub total: u64,
}
