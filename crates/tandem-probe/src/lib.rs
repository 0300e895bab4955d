//! Liveness probes for tandem: is an address held, by whom, and how fast does
//! it answer?
//!
//! A booting node asks whether an active node already holds the shared address
//! ([`Prober::address`]: an ARP probe as RFC 5227 describes it, sender IP
//! `0.0.0.0` like `arping -D`, together with ICMP echo as the seed pings), and
//! whether it is cut off from its network ([`Prober::isolation_check`]: the
//! reference address, by default the gateway, must answer). An active node
//! probes its own shared address with [`Prober::arp`] and [`Collect::All`]: a
//! hardware address other than its own answering is an address conflict.
//!
//! Every probe runs by a [`ProbeConfig`] (timeout, interval, retries) and ends in
//! an [`Outcome`]: answered (by which hardware or IP addresses, how fast),
//! refused (TCP) or silent. A missing privilege, a missing interface or a
//! failing socket is an [`Error`], never "silent": a node must not claim the
//! shared address because it could not ask.
//!
//! The packet encoders and decoders in [`packet`] are pure (bytes in, values or
//! [`packet::DecodeError`] out) and never panic on any input. [`RawLink`] is the
//! raw Ethernet socket that the probes and `tandem-netif`'s announcements share.
//!
//! This crate never changes an interface, an address or a route, and never
//! decides roles. Probes need `CAP_NET_RAW` (raw and packet sockets); sockets
//! belong to the network namespace of the thread that calls the probe.
//!
//! # Example
//!
//! The pure part needs no privilege:
//!
//! ```
//! use std::net::Ipv4Addr;
//! use tandem_probe::MacAddr;
//! use tandem_probe::packet::arp::ArpFrame;
//!
//! let own: MacAddr = "02:00:5e:00:02:0b".parse()?;
//! let probe = ArpFrame::probe(own, Ipv4Addr::new(192, 0, 2, 10));
//! let bytes = probe.encode();
//! let back = ArpFrame::decode(&bytes)?;
//! assert!(back.is_probe());
//! assert_eq!(back.sender_ip, Ipv4Addr::UNSPECIFIED);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Probing (root, inside a namespace with `eth0` on 192.0.2.0/24):
//!
//! ```no_run
//! use std::time::Duration;
//! use tandem_probe::{Collect, ProbeConfig, Prober};
//!
//! # async fn boot() -> Result<(), tandem_probe::Error> {
//! let prober = Prober::new(ProbeConfig {
//!     timeout: Duration::from_millis(500),
//!     interval: Duration::from_millis(200),
//!     retries: 2,
//!     collect: Collect::All,
//! })?;
//! let shared = prober.address("eth0", "192.0.2.10".parse().unwrap()).await?;
//! let reference = prober.isolation_check("eth0", "192.0.2.1".parse().unwrap()).await?;
//! if shared.is_silent() && reference.is_answered() {
//!     // nobody holds the shared address and the network is there: claim it
//! }
//! # Ok(()) }
//! ```

mod config;
mod link;
mod outcome;
pub mod packet;
mod prober;

pub use config::{Collect, MAX_RETRIES, MAX_WAIT, ProbeConfig};
pub use link::{RawLink, Sent};
pub use outcome::{Answer, Outcome, Responder};
pub use prober::Prober;
pub use tandem_core::MacAddr;

use std::io;

/// Errors of the probes: the probe could not be made, so nothing is known.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The process lacks the privilege for raw or packet sockets.
    #[error(
        "cannot {action}: permission denied; probes need CAP_NET_RAW (run as root or grant the capability)"
    )]
    Permission {
        /// What was being done.
        action: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// No interface of that name in the current network namespace.
    #[error(
        "no interface named `{name}` in this network namespace; check the interface in the configuration (`ip link show` lists them)"
    )]
    NoSuchInterface {
        /// The name asked for.
        name: String,
    },
    /// The interface has no Ethernet address, so ARP cannot run on it.
    #[error(
        "interface `{name}` has no Ethernet hardware address; ARP probes need an Ethernet interface"
    )]
    NoHardwareAddress {
        /// The interface.
        name: String,
    },
    /// The address cannot be probed this way.
    #[error("cannot probe {target}: {reason}")]
    InvalidTarget {
        /// The address.
        target: String,
        /// Why not.
        reason: String,
    },
    /// The probe configuration makes no sense.
    #[error("invalid probe configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// A socket operation failed for another reason.
    #[error("cannot {action}: {source}")]
    Socket {
        /// What was being done.
        action: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// Classifies an OS error: permission problems become [`Error::Permission`].
    pub(crate) fn from_io(action: impl Into<String>, source: io::Error) -> Error {
        let action = action.into();
        if source.kind() == io::ErrorKind::PermissionDenied {
            Error::Permission { action, source }
        } else {
            Error::Socket { action, source }
        }
    }
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_problems_are_named_as_such() {
        let eperm = io::Error::from_raw_os_error(1);
        let err = Error::from_io("open a raw ICMP socket", eperm);
        assert!(matches!(err, Error::Permission { .. }));
        assert!(err.to_string().contains("CAP_NET_RAW"), "{err}");
        let eacces = io::Error::from_raw_os_error(13);
        assert!(matches!(
            Error::from_io("x", eacces),
            Error::Permission { .. }
        ));
        let other = io::Error::from_raw_os_error(22);
        assert!(matches!(Error::from_io("x", other), Error::Socket { .. }));
    }
}
