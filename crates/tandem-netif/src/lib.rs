//! Interface management for tandem through netlink: the shared address that
//! only the active node holds, the node address every node keeps, and the
//! announcements that move the site's clients over after a takeover.
//!
//! In the seed's words: the shared address is "eth0" (same hostname and IP on
//! both nodes, enabled only on the active one), the node address is "eth0:0"
//! (unique per node, carries replication). [`Interfaces`] claims and releases
//! the shared address ([`Interfaces::claim`], [`Interfaces::release`], both
//! idempotent), configures the node address with its default gateway
//! ([`Interfaces::configure_node_address`]), lists addresses and reads link
//! state, all through `rtnetlink` (IPv4 and IPv6, with labels). After a claim,
//! [`Interfaces::announce`] sends gratuitous ARP in both request and reply forms
//! (IPv4) or unsolicited neighbour advertisements (IPv6), so clients switch to
//! this node's hardware address without waiting for their caches to expire.
//! [`set_hostname`] is the one place the node's hostname changes.
//!
//! This crate never decides roles (that is `tandem-role`) and never probes
//! whether an address is held (that is `tandem-probe`, whose packet codecs and
//! raw link socket the announcements use). It needs `CAP_NET_ADMIN` to change
//! addresses and routes and `CAP_NET_RAW` to announce; everything it does
//! happens in the network namespace of the thread that made the
//! [`Interfaces`] handle (and, for announcements, the calling thread).
//!
//! # Example
//!
//! ```no_run
//! use tandem_netif::{AddressSpec, AnnounceConfig, Claim, Interfaces};
//!
//! # async fn takeover() -> Result<(), tandem_netif::Error> {
//! let ifs = Interfaces::new()?;
//! let shared = AddressSpec::shared("192.0.2.10/24".parse().unwrap(), "eth0");
//! if ifs.claim(&shared).await? == Claim::Added {
//!     ifs.announce(shared.ip(), &shared.iface, AnnounceConfig::default()).await?;
//! }
//! // ... and when this node becomes standby:
//! ifs.release(&shared).await?;
//! # Ok(()) }
//! ```
//!
//! The pure parts need nothing:
//!
//! ```
//! use tandem_netif::{AddressSpec, validate_hostname};
//!
//! let node = AddressSpec::node("192.0.2.11/24".parse()?, "eth0");
//! assert_eq!(node.label.as_deref(), Some("eth0:0"));
//! node.validate()?;
//! assert!(validate_hostname("meetings1.example.com").is_ok());
//! assert!(validate_hostname("not a hostname").is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod announce;
mod hostname;
mod interfaces;
mod spec;

pub use announce::{AnnounceConfig, Announced, MAX_ANNOUNCE_COUNT};
pub use hostname::{MAX_HOSTNAME_LEN, hostname, set_hostname, validate_hostname};
pub use interfaces::{Address, Claim, Interfaces, LinkState, NodeAddress, OperState, Release};
pub use ipnet::IpNet;
pub use spec::{AddressSpec, DEFAULT_IFACE, MAX_LABEL_LEN, NODE_LABEL_SUFFIX};
pub use tandem_probe::MacAddr;

use std::io;
use std::net::IpAddr;

/// Errors of interface management. Each says what failed and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No interface of that name in the current network namespace.
    #[error(
        "no interface named `{name}` in this network namespace; check the interface in the configuration (`ip link show` lists them)"
    )]
    NoSuchInterface {
        /// The name asked for.
        name: String,
    },
    /// The interface name cannot be one.
    #[error("`{name}` is not a valid interface name: {reason}")]
    InvalidInterface {
        /// The name.
        name: String,
        /// Why not.
        reason: String,
    },
    /// The label cannot be used on the interface.
    #[error("label `{label}` cannot be used on {iface}: {reason}")]
    InvalidLabel {
        /// The label.
        label: String,
        /// The interface.
        iface: String,
        /// Why not.
        reason: String,
    },
    /// The hostname is not a valid one.
    #[error("`{name}` is not a valid hostname: {reason}")]
    InvalidHostname {
        /// The name.
        name: String,
        /// Why not.
        reason: String,
    },
    /// The process lacks a privilege.
    #[error(
        "cannot {action}: permission denied; this needs {privilege} (run as root or grant the capability)"
    )]
    NotPermitted {
        /// What was being done.
        action: String,
        /// The capability needed.
        privilege: &'static str,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// This node already holds the address, with another prefix length.
    #[error(
        "{addr} is already on {iface} with prefix /{held}, not /{wanted}; correct the prefix in the configuration, or remove the old address (ip addr del {addr}/{held} dev {iface})"
    )]
    HeldWithOtherPrefix {
        /// The address.
        addr: IpAddr,
        /// The interface.
        iface: String,
        /// The prefix length it has.
        held: u8,
        /// The prefix length asked for.
        wanted: u8,
    },
    /// An announcement was asked for an address this node does not hold.
    #[error("will not announce {addr} on {iface}: this node does not hold it (claim it first)")]
    NotHeld {
        /// The address.
        addr: IpAddr,
        /// The interface.
        iface: String,
    },
    /// The default gateway is not reachable on the interface.
    #[error(
        "cannot route via gateway {gateway} on {iface}: {source}; the gateway must lie in the subnet of an address on {iface} (the node address's prefix)"
    )]
    Gateway {
        /// The gateway.
        gateway: IpAddr,
        /// The interface.
        iface: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// A configuration value makes no sense.
    #[error("invalid {what}: {reason}")]
    InvalidConfig {
        /// The setting.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A netlink request failed for another reason.
    #[error("cannot {action}: {source}")]
    Netlink {
        /// What was being done.
        action: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// Another system call failed.
    #[error("cannot {action}: {source}")]
    System {
        /// What was being done.
        action: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Sending an announcement failed (raw socket).
    #[error("cannot announce: {0}")]
    Announce(#[source] tandem_probe::Error),
}

impl From<tandem_probe::Error> for Error {
    fn from(e: tandem_probe::Error) -> Self {
        match e {
            tandem_probe::Error::NoSuchInterface { name } => Error::NoSuchInterface { name },
            other => Error::Announce(other),
        }
    }
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
