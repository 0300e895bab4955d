//! Pure packet encoders and decoders: byte slices in, typed values or errors out.
//!
//! Nothing here touches a socket or needs a privilege, and no input makes a
//! decoder panic: short, long or garbage bytes give a [`DecodeError`]. Encoders
//! produce exactly what their decoder accepts (the property tests check both).
//!
//! - [`arp`]: Ethernet frames carrying ARP for IPv4 (probe, gratuitous request
//!   and reply, ordinary request and reply).
//! - [`icmp`]: ICMP and ICMPv6 echo messages, and the IPv4 header a raw socket
//!   delivers in front of them.
//! - [`ndp`]: Ethernet frames carrying an IPv6 neighbour advertisement.

pub mod arp;
pub mod icmp;
pub mod ndp;

/// Ethernet header length: destination, source, ethertype.
pub const ETHERNET_HEADER_LEN: usize = 14;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than the smallest valid packet of the kind.
    #[error("{what} too short: {got} bytes, at least {needed} needed")]
    Truncated {
        /// The kind of packet.
        what: &'static str,
        /// The smallest valid length.
        needed: usize,
        /// The length received.
        got: usize,
    },
    /// A valid packet of another kind (another EtherType, ICMP type, protocol).
    #[error("not {expected}: {found}")]
    OtherKind {
        /// The kind that was expected.
        expected: &'static str,
        /// What was found instead.
        found: String,
    },
    /// The packet is of the expected kind but a field has a value that is not allowed.
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// The packet kind or field.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The checksum does not match the contents.
    #[error("{what} checksum mismatch: carried {carried:#06x}, computed {computed:#06x}")]
    Checksum {
        /// The packet kind.
        what: &'static str,
        /// The checksum in the packet.
        carried: u16,
        /// The checksum of the contents.
        computed: u16,
    },
}

/// Checks that `bytes` holds at least `needed` bytes.
fn need(what: &'static str, bytes: &[u8], needed: usize) -> Result<(), DecodeError> {
    if bytes.len() < needed {
        Err(DecodeError::Truncated {
            what,
            needed,
            got: bytes.len(),
        })
    } else {
        Ok(())
    }
}

/// Reads the big-endian `u16` at `at`, or `None` past the end.
fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    let hi = *bytes.get(at)?;
    let lo = *bytes.get(at.checked_add(1)?)?;
    Some(u16::from_be_bytes([hi, lo]))
}

/// Copies `N` bytes starting at `at`, or `None` past the end.
fn array<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}
