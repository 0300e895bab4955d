//! ICMP (IPv4) and ICMPv6 echo request and reply messages, and the IPv4 header
//! that a raw IPv4 socket delivers in front of every ICMP message.

use std::net::Ipv4Addr;

use pnet::packet::icmp::IcmpPacket;
use pnet::packet::icmpv6::Icmpv6Packet;
use pnet::packet::util::checksum;

use super::{DecodeError, array, be16, need};

/// Length of the echo header: type, code, checksum, identifier, sequence.
pub const ECHO_HEADER_LEN: usize = 8;
/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// Smallest IPv4 header.
pub const IPV4_MIN_HEADER_LEN: usize = 20;

/// Request or reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EchoKind {
    /// Echo request ("ping").
    Request,
    /// Echo reply.
    Reply,
}

/// The IP version an echo message belongs to; the type numbers differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpVersion {
    /// ICMP for IPv4 (types 8 and 0).
    V4,
    /// ICMPv6 (types 128 and 129).
    V6,
}

impl IpVersion {
    fn type_of(self, kind: EchoKind) -> u8 {
        match (self, kind) {
            (IpVersion::V4, EchoKind::Request) => 8,
            (IpVersion::V4, EchoKind::Reply) => 0,
            (IpVersion::V6, EchoKind::Request) => 128,
            (IpVersion::V6, EchoKind::Reply) => 129,
        }
    }

    fn kind_of(self, icmp_type: u8) -> Option<EchoKind> {
        [EchoKind::Request, EchoKind::Reply]
            .into_iter()
            .find(|k| self.type_of(*k) == icmp_type)
    }
}

/// An echo request or reply.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Echo {
    /// Request or reply.
    pub kind: EchoKind,
    /// Identifier: chosen by the sender, echoed by the responder.
    pub ident: u16,
    /// Sequence number: chosen by the sender, echoed by the responder.
    pub seq: u16,
    /// Data, echoed by the responder.
    pub payload: Vec<u8>,
}

impl Echo {
    /// Encodes the ICMP message (without IP header).
    ///
    /// For IPv4 the checksum is filled in. For ICMPv6 it is left zero: the
    /// checksum covers a pseudo-header with the source address, which the kernel
    /// knows and fills in for raw ICMPv6 sockets (RFC 3542 section 3.1).
    pub fn encode(&self, version: IpVersion) -> Vec<u8> {
        let mut out = Vec::with_capacity(ECHO_HEADER_LEN + self.payload.len());
        out.push(version.type_of(self.kind));
        out.push(0); // code
        out.extend_from_slice(&[0, 0]); // checksum, below
        out.extend_from_slice(&self.ident.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.payload);
        if version == IpVersion::V4 {
            let sum = checksum(&out, 1).to_be_bytes();
            if let Some(field) = out.get_mut(2..4) {
                field.copy_from_slice(&sum);
            }
        }
        out
    }

    /// Decodes an ICMP message (without IP header).
    ///
    /// For IPv4 the checksum is verified. For ICMPv6 it is not (it needs the
    /// addresses of the pseudo-header); the kernel has verified it before a raw
    /// ICMPv6 socket sees the message. Messages of other types are
    /// [`DecodeError::OtherKind`].
    pub fn decode(bytes: &[u8], version: IpVersion) -> Result<Echo, DecodeError> {
        need("ICMP echo", bytes, ECHO_HEADER_LEN)?;
        let (icmp_type, code) = match version {
            IpVersion::V4 => {
                IcmpPacket::new(bytes).map(|p| (p.get_icmp_type().0, p.get_icmp_code().0))
            }
            IpVersion::V6 => {
                Icmpv6Packet::new(bytes).map(|p| (p.get_icmpv6_type().0, p.get_icmpv6_code().0))
            }
        }
        .ok_or(DecodeError::Truncated {
            what: "ICMP header",
            needed: 4,
            got: bytes.len(),
        })?;
        let kind = version
            .kind_of(icmp_type)
            .ok_or_else(|| DecodeError::OtherKind {
                expected: "an echo request or reply",
                found: format!("ICMP type {icmp_type} code {code}"),
            })?;
        if code != 0 {
            return Err(DecodeError::Invalid {
                what: "ICMP echo",
                detail: format!("code {code}, expected 0"),
            });
        }
        if version == IpVersion::V4 {
            let carried = be16(bytes, 2).unwrap_or_default();
            let computed = checksum(bytes, 1);
            if carried != computed {
                return Err(DecodeError::Checksum {
                    what: "ICMP",
                    carried,
                    computed,
                });
            }
        }
        Ok(Echo {
            kind,
            ident: be16(bytes, 4).unwrap_or_default(),
            seq: be16(bytes, 6).unwrap_or_default(),
            payload: bytes.get(ECHO_HEADER_LEN..).unwrap_or_default().to_vec(),
        })
    }
}

/// The parts of an IPv4 packet a prober needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Datagram<'a> {
    /// Source address.
    pub source: Ipv4Addr,
    /// Destination address.
    pub destination: Ipv4Addr,
    /// IP protocol number of the payload.
    pub protocol: u8,
    /// The payload, bounded by the header's total length.
    pub payload: &'a [u8],
}

impl<'a> Ipv4Datagram<'a> {
    /// Splits an IPv4 packet (as a raw IPv4 socket delivers it) into header
    /// fields and payload. The header checksum is not verified (the kernel did).
    pub fn parse(bytes: &'a [u8]) -> Result<Ipv4Datagram<'a>, DecodeError> {
        need("IPv4 header", bytes, IPV4_MIN_HEADER_LEN)?;
        let first = bytes.first().copied().unwrap_or_default();
        let invalid = |detail: String| DecodeError::Invalid {
            what: "IPv4 header",
            detail,
        };
        if first >> 4 != 4 {
            return Err(invalid(format!("version {}, expected 4", first >> 4)));
        }
        let header_len = usize::from(first & 0x0f) * 4;
        if header_len < IPV4_MIN_HEADER_LEN {
            return Err(invalid(format!(
                "header length {header_len}, at least 20 needed"
            )));
        }
        need("IPv4 header with options", bytes, header_len)?;
        let total = usize::from(be16(bytes, 2).unwrap_or_default());
        if total < header_len {
            return Err(invalid(format!(
                "total length {total} shorter than the header ({header_len})"
            )));
        }
        let end = total.min(bytes.len());
        Ok(Ipv4Datagram {
            source: array::<4>(bytes, 12).unwrap_or_default().into(),
            destination: array::<4>(bytes, 16).unwrap_or_default().into(),
            protocol: bytes.get(9).copied().unwrap_or_default(),
            payload: bytes.get(header_len..end).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_ipv4_echo_request_matches_a_known_capture() {
        // type 8, code 0, checksum, ident 0x1234, seq 1, payload "ab"
        let echo = Echo {
            kind: EchoKind::Request,
            ident: 0x1234,
            seq: 1,
            payload: b"ab".to_vec(),
        };
        let bytes = echo.encode(IpVersion::V4);
        assert_eq!(
            bytes,
            [8, 0, 0x84, 0x68, 0x12, 0x34, 0x00, 0x01, b'a', b'b']
        );
        assert_eq!(Echo::decode(&bytes, IpVersion::V4), Ok(echo));
    }

    #[test]
    fn a_damaged_ipv4_echo_fails_its_checksum() {
        let echo = Echo {
            kind: EchoKind::Reply,
            ident: 7,
            seq: 9,
            payload: vec![1, 2, 3],
        };
        let mut bytes = echo.encode(IpVersion::V4);
        bytes[9] ^= 0xff;
        assert!(matches!(
            Echo::decode(&bytes, IpVersion::V4),
            Err(DecodeError::Checksum { .. })
        ));
    }

    #[test]
    fn other_icmp_types_are_named() {
        // destination unreachable, port unreachable
        let err = Echo::decode(&[3, 3, 0, 0, 0, 0, 0, 0], IpVersion::V4).unwrap_err();
        assert!(err.to_string().contains("type 3 code 3"), "{err}");
        // ICMPv6 neighbour solicitation
        let err = Echo::decode(&[135, 0, 0, 0, 0, 0, 0, 0], IpVersion::V6).unwrap_err();
        assert!(matches!(err, DecodeError::OtherKind { .. }), "{err}");
    }

    #[test]
    fn an_ipv4_header_is_split_by_its_lengths() {
        let mut packet = vec![
            0x45, 0, 0, 30, 0, 0, 0, 0, 64, 1, 0, 0, 192, 0, 2, 10, 192, 0, 2, 100,
        ];
        packet.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        packet.extend_from_slice(&[0xee; 4]); // bytes past the total length
        let d = Ipv4Datagram::parse(&packet).unwrap();
        assert_eq!(d.source, Ipv4Addr::new(192, 0, 2, 10));
        assert_eq!(d.destination, Ipv4Addr::new(192, 0, 2, 100));
        assert_eq!(d.protocol, PROTO_ICMP);
        assert_eq!(d.payload.len(), 10);
        packet[0] = 0x44;
        assert!(Ipv4Datagram::parse(&packet).is_err());
    }

    fn echo() -> impl Strategy<Value = Echo> {
        (
            any::<bool>(),
            any::<u16>(),
            any::<u16>(),
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(reply, ident, seq, payload)| Echo {
                kind: if reply {
                    EchoKind::Reply
                } else {
                    EchoKind::Request
                },
                ident,
                seq,
                payload,
            })
    }

    proptest! {
        #[test]
        fn echoes_round_trip_in_both_versions(e in echo(), v6 in any::<bool>()) {
            let version = if v6 { IpVersion::V6 } else { IpVersion::V4 };
            prop_assert_eq!(Echo::decode(&e.encode(version), version), Ok(e));
        }

        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = Echo::decode(&bytes, IpVersion::V4);
            let _ = Echo::decode(&bytes, IpVersion::V6);
            if let Ok(d) = Ipv4Datagram::parse(&bytes) {
                prop_assert!(d.payload.len() <= bytes.len());
            }
        }
    }
}
