//! Test hooks for [`restore`](crate::restore) and [`rollback`](crate::rollback):
//! stop at a chosen step, like an error (the normal undo path runs) or like a
//! kill (nothing is cleaned up), so tests can check what each step leaves on
//! disk.
//!
//! They exist only with the `failpoints` cargo feature, which the crate's own
//! tests turn on. Without it the public API has no test hooks: [`Hook`] is
//! empty, the checks in `restore.rs` are not compiled and no error counts as a
//! simulated kill.

use crate::error::Error;
#[cfg(feature = "failpoints")]
use crate::error::Result;
use crate::restore::RestoreOptions;

/// Where to fail, and whether to fail like a kill (no cleanup at all) or like
/// an error (the normal undo path). Set [`RestoreOptions::failpoint`].
#[cfg(feature = "failpoints")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failpoint {
    /// The step.
    pub at: FailAt,
    /// `true`: stop dead, as if killed; `false`: return an error.
    pub crash: bool,
}

/// Steps a [`Failpoint`] can stop at.
#[cfg(feature = "failpoints")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailAt {
    /// After staging, before the journal says `swapping`.
    Staged,
    /// Before swap operation `n`.
    Op(usize),
    /// After the renames, before directory attributes.
    DirAttrs,
    /// Before the journal says `committed`.
    Commit,
    /// After the journal says `committed`, before cleanup.
    Committed,
}

/// The failpoint one restore or rollback runs with; always none without the
/// `failpoints` feature.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hook {
    #[cfg(feature = "failpoints")]
    failpoint: Option<Failpoint>,
}

#[cfg(feature = "failpoints")]
impl Hook {
    /// The failpoint of `options`.
    pub(crate) fn of(options: &RestoreOptions) -> Hook {
        Hook {
            failpoint: options.failpoint,
        }
    }

    /// Fails with [`Error::Injected`] when the failpoint is at `here`.
    pub(crate) fn fire(self, here: FailAt) -> Result<()> {
        match self.failpoint {
            Some(f) if f.at == here => Err(Error::Injected(f)),
            _ => Ok(()),
        }
    }

    /// Whether `e` is this failpoint's simulated kill: then nothing may be
    /// cleaned up, as after a real one.
    pub(crate) fn is_crash(self, e: &Error) -> bool {
        matches!(e, Error::Injected(f) if f.crash) && self.failpoint.is_some_and(|f| f.crash)
    }
}

#[cfg(not(feature = "failpoints"))]
impl Hook {
    /// No failpoint: the options cannot hold one.
    pub(crate) fn of(_options: &RestoreOptions) -> Hook {
        Hook {}
    }

    /// Never: without failpoints every error is a real one.
    pub(crate) fn is_crash(self, _e: &Error) -> bool {
        false
    }
}
