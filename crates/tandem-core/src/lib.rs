//! What every tandem crate shares, written once: the value types of a site (which
//! node, which site, a MAC address), files that survive a crash at any point
//! ([`write_atomically`], [`AtomicFile`]) and the versioned, checksummed JSON state
//! file built on them ([`JsonStateFile`]), the clock in milliseconds and its
//! calendar text ([`now_ms`], [`format_utc`], [`timestamp_for_file`]), and random
//! numbers from the operating system ([`random_u64`]).
//!
//! This crate is a leaf: it depends on no other tandem crate, and it never opens a
//! socket, touches an interface, starts a process or decides anything about roles.
//! Its only IO is the files a caller asks it to write or read, and the clock and
//! random numbers a caller asks for. Its value types cannot hold invalid values:
//! a [`NodeId`] is node 1 or node 2, nothing else.
//!
//! # Example
//!
//! ```
//! use tandem_core::{MacAddr, NodeId, format_utc};
//!
//! let me = NodeId::try_from(1)?;
//! assert_eq!(me.peer(), NodeId::Two);
//! assert_eq!(me.peer().to_string(), "2");
//! assert!(NodeId::try_from(3).is_err());
//!
//! let mac: MacAddr = "02:00:5e:00:02:0a".parse()?;
//! assert_eq!(mac.to_string(), "02:00:5e:00:02:0a");
//!
//! assert_eq!(format_utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
//! # Ok::<(), tandem_core::ParseError>(())
//! ```

mod clock;
mod file;
mod ids;
mod mac;
mod random;
mod state;

pub use clock::{format_utc, now_ms, timestamp_for_file};
pub use file::{
    AtomicFile, AtomicOptions, AtomicStep, AtomicWriteError, FileMode, write_atomically,
    write_atomically_with,
};
pub use ids::{NodeId, SiteId};
pub use mac::MacAddr;
pub use random::random_u64;
pub use state::{JsonStateFile, StateFileError};

/// A value given as text (or a number) that is not valid; the message names the
/// value and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} `{value}`: {expected}")]
pub struct ParseError {
    what: &'static str,
    value: String,
    expected: String,
}

impl ParseError {
    /// An error for `value`, which is not a valid `what` (a short noun such as
    /// "node id"); `expected` tells what would have been.
    pub fn new(what: &'static str, value: impl Into<String>, expected: &str) -> ParseError {
        ParseError {
            what,
            value: value.into(),
            expected: expected.to_string(),
        }
    }
}
