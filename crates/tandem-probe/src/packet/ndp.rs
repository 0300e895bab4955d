//! IPv6 neighbour advertisements (RFC 4861 section 4.4) as whole Ethernet
//! frames, for announcing that an IPv6 address has moved to this host.

use std::net::Ipv6Addr;

use pnet::packet::ip::IpNextHeaderProtocols;
use pnet::packet::util::ipv6_checksum;

use super::{DecodeError, ETHERNET_HEADER_LEN, ETHERTYPE_IPV6, array, be16, need};
use crate::MacAddr;

/// IPv6 fixed header length.
pub const IPV6_HEADER_LEN: usize = 40;
/// ICMPv6 neighbour advertisement without options.
pub const NA_LEN: usize = 24;
/// ICMPv6 type of a neighbour advertisement.
pub const NA_TYPE: u8 = 136;
/// Option type "target link-layer address".
const OPT_TARGET_LLADDR: u8 = 2;
/// Hop limit every neighbour discovery message carries (and receivers demand).
const ND_HOP_LIMIT: u8 = 255;
/// All-nodes multicast group.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// An Ethernet frame carrying an ICMPv6 neighbour advertisement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NeighbourAdvert {
    /// Ethernet destination.
    pub eth_dst: MacAddr,
    /// Ethernet source.
    pub eth_src: MacAddr,
    /// IPv6 source.
    pub ip_src: Ipv6Addr,
    /// IPv6 destination.
    pub ip_dst: Ipv6Addr,
    /// R flag: the sender is a router.
    pub router: bool,
    /// S flag: sent in response to a solicitation.
    pub solicited: bool,
    /// O flag: receivers replace the link-layer address they have cached.
    pub override_cache: bool,
    /// The address being advertised.
    pub target: Ipv6Addr,
    /// The target link-layer address option, when present.
    pub target_mac: Option<MacAddr>,
}

impl NeighbourAdvert {
    /// An unsolicited advertisement (RFC 4861 section 7.2.6) that `addr` is at
    /// `own`: to all nodes, override flag set, solicited flag clear, with the
    /// target link-layer address option. Receivers that have `addr` cached
    /// switch to `own` at once.
    pub fn unsolicited(own: MacAddr, addr: Ipv6Addr) -> NeighbourAdvert {
        NeighbourAdvert {
            eth_dst: MacAddr::ipv6_multicast(ALL_NODES),
            eth_src: own,
            ip_src: addr,
            ip_dst: ALL_NODES,
            router: false,
            solicited: false,
            override_cache: true,
            target: addr,
            target_mac: Some(own),
        }
    }

    /// Encodes the whole frame with the ICMPv6 checksum filled in.
    pub fn encode(&self) -> Vec<u8> {
        let mut icmp = Vec::with_capacity(NA_LEN + 8);
        icmp.extend_from_slice(&[NA_TYPE, 0, 0, 0]);
        let flags = (u8::from(self.router) << 7)
            | (u8::from(self.solicited) << 6)
            | (u8::from(self.override_cache) << 5);
        icmp.extend_from_slice(&[flags, 0, 0, 0]);
        icmp.extend_from_slice(&self.target.octets());
        if let Some(mac) = self.target_mac {
            icmp.extend_from_slice(&[OPT_TARGET_LLADDR, 1]);
            icmp.extend_from_slice(&mac.0);
        }
        let sum = icmp_checksum(&icmp, self.ip_src, self.ip_dst).to_be_bytes();
        if let Some(field) = icmp.get_mut(2..4) {
            field.copy_from_slice(&sum);
        }

        let mut f = Vec::with_capacity(ETHERNET_HEADER_LEN + IPV6_HEADER_LEN + icmp.len());
        f.extend_from_slice(&self.eth_dst.0);
        f.extend_from_slice(&self.eth_src.0);
        f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        f.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, traffic class and flow label 0
        let payload_len = u16::try_from(icmp.len()).unwrap_or(u16::MAX);
        f.extend_from_slice(&payload_len.to_be_bytes());
        f.extend_from_slice(&[IpNextHeaderProtocols::Icmpv6.0, ND_HOP_LIMIT]);
        f.extend_from_slice(&self.ip_src.octets());
        f.extend_from_slice(&self.ip_dst.octets());
        f.extend_from_slice(&icmp);
        f
    }

    /// Decodes an Ethernet frame carrying a neighbour advertisement, checking
    /// the hop limit (255) and the ICMPv6 checksum. Options other than the
    /// target link-layer address are skipped; trailing bytes are ignored.
    pub fn decode(bytes: &[u8]) -> Result<NeighbourAdvert, DecodeError> {
        need(
            "neighbour advertisement frame",
            bytes,
            ETHERNET_HEADER_LEN + IPV6_HEADER_LEN + NA_LEN,
        )?;
        let ethertype = be16(bytes, 12).unwrap_or_default();
        if ethertype != ETHERTYPE_IPV6 {
            return Err(DecodeError::OtherKind {
                expected: "IPv6",
                found: format!("EtherType {ethertype:#06x}"),
            });
        }
        let ip = bytes.get(ETHERNET_HEADER_LEN..).unwrap_or_default();
        let invalid = |detail: String| DecodeError::Invalid {
            what: "neighbour advertisement",
            detail,
        };
        let version = ip.first().copied().unwrap_or_default() >> 4;
        if version != 6 {
            return Err(invalid(format!("IP version {version}, expected 6")));
        }
        let next_header = ip.get(6).copied().unwrap_or_default();
        if next_header != IpNextHeaderProtocols::Icmpv6.0 {
            return Err(DecodeError::OtherKind {
                expected: "ICMPv6 without extension headers",
                found: format!("next header {next_header}"),
            });
        }
        let hop_limit = ip.get(7).copied().unwrap_or_default();
        if hop_limit != ND_HOP_LIMIT {
            return Err(invalid(format!(
                "hop limit {hop_limit}, RFC 4861 requires 255"
            )));
        }
        let payload_len = usize::from(be16(ip, 4).unwrap_or_default());
        let icmp = ip
            .get(IPV6_HEADER_LEN..IPV6_HEADER_LEN + payload_len)
            .ok_or_else(|| invalid(format!("payload length {payload_len} exceeds the frame")))?;
        need("neighbour advertisement", icmp, NA_LEN)?;
        let icmp_type = icmp.first().copied().unwrap_or_default();
        if icmp_type != NA_TYPE {
            return Err(DecodeError::OtherKind {
                expected: "a neighbour advertisement",
                found: format!("ICMPv6 type {icmp_type}"),
            });
        }
        let code = icmp.get(1).copied().unwrap_or_default();
        if code != 0 {
            return Err(invalid(format!("code {code}, expected 0")));
        }
        let ip_src = Ipv6Addr::from(array::<16>(ip, 8).unwrap_or_default());
        let ip_dst = Ipv6Addr::from(array::<16>(ip, 24).unwrap_or_default());
        let carried = be16(icmp, 2).unwrap_or_default();
        let computed = icmp_checksum(icmp, ip_src, ip_dst);
        if carried != computed {
            return Err(DecodeError::Checksum {
                what: "ICMPv6",
                carried,
                computed,
            });
        }
        let flags = icmp.get(4).copied().unwrap_or_default();
        let mut target_mac = None;
        let mut options = icmp.get(NA_LEN..).unwrap_or_default();
        while !options.is_empty() {
            let kind = options.first().copied().unwrap_or_default();
            let len = usize::from(options.get(1).copied().unwrap_or_default()) * 8;
            if len == 0 {
                return Err(invalid("an option of length 0".into()));
            }
            let option = options
                .get(..len)
                .ok_or_else(|| invalid(format!("option of {len} bytes exceeds the message")))?;
            if kind == OPT_TARGET_LLADDR && len == 8 {
                target_mac = array::<6>(option, 2).map(MacAddr);
            }
            options = options.get(len..).unwrap_or_default();
        }
        Ok(NeighbourAdvert {
            eth_dst: MacAddr(array::<6>(bytes, 0).unwrap_or_default()),
            eth_src: MacAddr(array::<6>(bytes, 6).unwrap_or_default()),
            ip_src,
            ip_dst,
            router: flags & 0x80 != 0,
            solicited: flags & 0x40 != 0,
            override_cache: flags & 0x20 != 0,
            target: Ipv6Addr::from(array::<16>(icmp, 8).unwrap_or_default()),
            target_mac,
        })
    }
}

fn icmp_checksum(icmp: &[u8], src: Ipv6Addr, dst: Ipv6Addr) -> u16 {
    ipv6_checksum(icmp, 1, &[], &src, &dst, IpNextHeaderProtocols::Icmpv6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OWN: MacAddr = MacAddr([0x02, 0, 0x5e, 0, 0x02, 0x0c]);

    fn shared() -> Ipv6Addr {
        "2001:db8::10".parse().unwrap()
    }

    #[test]
    fn an_unsolicited_advert_goes_to_all_nodes_with_override() {
        let na = NeighbourAdvert::unsolicited(OWN, shared());
        let bytes = na.encode();
        assert_eq!(bytes.len(), 14 + 40 + 24 + 8);
        assert_eq!(&bytes[..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(bytes[14 + 7], 255, "hop limit");
        assert_eq!(bytes[54], 136, "ICMPv6 type");
        assert_eq!(bytes[58], 0x20, "only the override flag");
        let back = NeighbourAdvert::decode(&bytes).unwrap();
        assert_eq!(back, na);
        assert!(back.override_cache && !back.solicited && !back.router);
    }

    #[test]
    fn a_wrong_hop_limit_or_checksum_is_refused() {
        let mut bytes = NeighbourAdvert::unsolicited(OWN, shared()).encode();
        bytes[21] = 64;
        assert!(
            NeighbourAdvert::decode(&bytes)
                .unwrap_err()
                .to_string()
                .contains("hop limit 64")
        );
        let mut bytes = NeighbourAdvert::unsolicited(OWN, shared()).encode();
        bytes[70] ^= 1; // inside the target address
        assert!(matches!(
            NeighbourAdvert::decode(&bytes),
            Err(DecodeError::Checksum { .. })
        ));
    }

    fn advert() -> impl Strategy<Value = NeighbourAdvert> {
        (
            any::<[u8; 6]>(),
            any::<[u8; 6]>(),
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<(bool, bool, bool)>(),
            any::<[u8; 16]>(),
            proptest::option::of(any::<[u8; 6]>()),
        )
            .prop_map(|(d, s, src, dst, (r, sol, o), t, m)| NeighbourAdvert {
                eth_dst: MacAddr(d),
                eth_src: MacAddr(s),
                ip_src: src.into(),
                ip_dst: dst.into(),
                router: r,
                solicited: sol,
                override_cache: o,
                target: t.into(),
                target_mac: m.map(MacAddr),
            })
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(na in advert()) {
            prop_assert_eq!(NeighbourAdvert::decode(&na.encode()), Ok(na));
        }

        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..160)) {
            let _ = NeighbourAdvert::decode(&bytes);
        }

        #[test]
        fn damaged_adverts_never_panic(na in advert(), at in 0usize..86, value in any::<u8>(), cut in 0usize..=86) {
            let mut bytes = na.encode();
            if let Some(b) = bytes.get_mut(at) { *b = value; }
            bytes.truncate(cut);
            let _ = NeighbourAdvert::decode(&bytes);
        }
    }
}
