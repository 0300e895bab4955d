//! ARP for IPv4 over Ethernet (RFC 826), with the probe and announcement forms of
//! RFC 5227 and the gratuitous reply form that older hosts expect.

use std::net::Ipv4Addr;

use pnet::packet::Packet;
use pnet::packet::arp::ArpPacket;
use pnet::packet::ethernet::EthernetPacket;

use super::{DecodeError, ETHERNET_HEADER_LEN, ETHERTYPE_ARP, ETHERTYPE_IPV4, need};
use crate::MacAddr;

/// Length of an ARP payload for IPv4 over Ethernet.
pub const ARP_LEN: usize = 28;
/// Length of an encoded frame: the minimum Ethernet frame (without FCS), zero padded.
pub const FRAME_LEN: usize = 60;

/// The operation of an ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArpOp {
    /// "Who has target IP? Tell sender."
    Request,
    /// "Target IP is at sender MAC."
    Reply,
}

impl ArpOp {
    fn code(self) -> u16 {
        match self {
            ArpOp::Request => 1,
            ArpOp::Reply => 2,
        }
    }
}

/// An Ethernet frame carrying an ARP packet for IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArpFrame {
    /// Ethernet destination.
    pub eth_dst: MacAddr,
    /// Ethernet source.
    pub eth_src: MacAddr,
    /// Request or reply.
    pub op: ArpOp,
    /// Sender hardware address.
    pub sender_mac: MacAddr,
    /// Sender protocol address (`0.0.0.0` in a probe).
    pub sender_ip: Ipv4Addr,
    /// Target hardware address.
    pub target_mac: MacAddr,
    /// Target protocol address.
    pub target_ip: Ipv4Addr,
}

impl ArpFrame {
    /// An ARP probe (RFC 5227 section 2.1.1): a broadcast request for `target`
    /// from `own` with sender IP `0.0.0.0`, so no host's neighbour cache learns
    /// anything from it. A host that holds `target` answers with a reply.
    pub fn probe(own: MacAddr, target: Ipv4Addr) -> ArpFrame {
        ArpFrame {
            eth_dst: MacAddr::BROADCAST,
            eth_src: own,
            op: ArpOp::Request,
            sender_mac: own,
            sender_ip: Ipv4Addr::UNSPECIFIED,
            target_mac: MacAddr::ZERO,
            target_ip: target,
        }
    }

    /// A gratuitous ARP request (the ARP announcement of RFC 5227 section 2.3):
    /// broadcast, sender and target IP both `addr`, target MAC zero.
    pub fn gratuitous_request(own: MacAddr, addr: Ipv4Addr) -> ArpFrame {
        ArpFrame {
            eth_dst: MacAddr::BROADCAST,
            eth_src: own,
            op: ArpOp::Request,
            sender_mac: own,
            sender_ip: addr,
            target_mac: MacAddr::ZERO,
            target_ip: addr,
        }
    }

    /// A gratuitous ARP reply: broadcast, sender and target IP both `addr`, and
    /// target MAC equal to the sender MAC (Linux only treats a reply as
    /// gratuitous when it is, and then updates its cache at once).
    pub fn gratuitous_reply(own: MacAddr, addr: Ipv4Addr) -> ArpFrame {
        ArpFrame {
            op: ArpOp::Reply,
            target_mac: own,
            ..ArpFrame::gratuitous_request(own, addr)
        }
    }

    /// Whether this is an ARP probe (a request with sender IP `0.0.0.0`).
    pub fn is_probe(&self) -> bool {
        self.op == ArpOp::Request && self.sender_ip.is_unspecified()
    }

    /// Whether this frame shows another host holding `addr`, as RFC 5227
    /// section 2.1.1 has a prober judge it: any ARP packet (request or reply)
    /// whose sender IP is `addr`, sent by a hardware address other than `own`.
    pub fn answers(&self, own: MacAddr, addr: Ipv4Addr) -> bool {
        self.sender_ip == addr && self.sender_mac != own && !addr.is_unspecified()
    }

    /// Encodes the frame, zero padded to [`FRAME_LEN`] bytes.
    pub fn encode(&self) -> [u8; FRAME_LEN] {
        let mut f = [0u8; FRAME_LEN];
        let fields: [&[u8]; 11] = [
            &self.eth_dst.0,
            &self.eth_src.0,
            &ETHERTYPE_ARP.to_be_bytes(),
            &1u16.to_be_bytes(), // hardware type: Ethernet
            &ETHERTYPE_IPV4.to_be_bytes(),
            &[6, 4], // hardware and protocol address lengths
            &self.op.code().to_be_bytes(),
            &self.sender_mac.0,
            &self.sender_ip.octets(),
            &self.target_mac.0,
            &self.target_ip.octets(),
        ];
        let mut at = 0;
        for field in fields {
            for (dst, src) in f.iter_mut().skip(at).zip(field) {
                *dst = *src;
            }
            at += field.len();
        }
        f
    }

    /// Decodes an Ethernet frame carrying ARP for IPv4. Trailing bytes (padding)
    /// are ignored.
    pub fn decode(bytes: &[u8]) -> Result<ArpFrame, DecodeError> {
        need("ARP frame", bytes, ETHERNET_HEADER_LEN + ARP_LEN)?;
        let eth = EthernetPacket::new(bytes).ok_or(DecodeError::Truncated {
            what: "Ethernet header",
            needed: ETHERNET_HEADER_LEN,
            got: bytes.len(),
        })?;
        let ethertype = eth.get_ethertype().0;
        if ethertype != ETHERTYPE_ARP {
            return Err(DecodeError::OtherKind {
                expected: "ARP",
                found: format!("EtherType {ethertype:#06x}"),
            });
        }
        let arp = ArpPacket::new(eth.payload()).ok_or(DecodeError::Truncated {
            what: "ARP packet",
            needed: ARP_LEN,
            got: eth.payload().len(),
        })?;
        let invalid = |detail: String| DecodeError::Invalid {
            what: "ARP packet",
            detail,
        };
        let hardware = arp.get_hardware_type().0;
        let protocol = arp.get_protocol_type().0;
        if hardware != 1 || protocol != ETHERTYPE_IPV4 {
            return Err(invalid(format!(
                "hardware type {hardware} and protocol {protocol:#06x}, expected Ethernet (1) and IPv4 (0x0800)"
            )));
        }
        let (hlen, plen) = (arp.get_hw_addr_len(), arp.get_proto_addr_len());
        if (hlen, plen) != (6, 4) {
            return Err(invalid(format!(
                "address lengths {hlen} and {plen}, expected 6 and 4"
            )));
        }
        let op = match arp.get_operation().0 {
            1 => ArpOp::Request,
            2 => ArpOp::Reply,
            other => return Err(invalid(format!("operation {other}, expected 1 or 2"))),
        };
        Ok(ArpFrame {
            eth_dst: MacAddr(eth.get_destination().octets()),
            eth_src: MacAddr(eth.get_source().octets()),
            op,
            sender_mac: MacAddr(arp.get_sender_hw_addr().octets()),
            sender_ip: arp.get_sender_proto_addr(),
            target_mac: MacAddr(arp.get_target_hw_addr().octets()),
            target_ip: arp.get_target_proto_addr(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OWN: MacAddr = MacAddr([0x02, 0, 0x5e, 0, 0x02, 0x0b]);
    const SHARED: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

    #[test]
    fn a_probe_has_the_rfc_5227_layout() {
        let bytes = ArpFrame::probe(OWN, SHARED).encode();
        let expected: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // broadcast
            0x02, 0x00, 0x5e, 0x00, 0x02, 0x0b, // source
            0x08, 0x06, // ARP
            0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01, // Ethernet, IPv4, request
            0x02, 0x00, 0x5e, 0x00, 0x02, 0x0b, 0, 0, 0, 0, // sender: own MAC, 0.0.0.0
            0, 0, 0, 0, 0, 0, 192, 0, 2, 10, // target: zero MAC, the probed address
        ];
        assert_eq!(&bytes[..42], &expected[..]);
        assert!(bytes[42..].iter().all(|b| *b == 0), "padding must be zero");
        assert!(ArpFrame::decode(&bytes).unwrap().is_probe());
    }

    #[test]
    fn gratuitous_forms_name_the_address_twice() {
        let request = ArpFrame::gratuitous_request(OWN, SHARED);
        assert_eq!(
            (request.op, request.sender_ip, request.target_ip),
            (ArpOp::Request, SHARED, SHARED)
        );
        assert_eq!(request.target_mac, MacAddr::ZERO);
        let reply = ArpFrame::gratuitous_reply(OWN, SHARED);
        assert_eq!(
            (reply.op, reply.sender_ip, reply.target_ip),
            (ArpOp::Reply, SHARED, SHARED)
        );
        assert_eq!(reply.target_mac, OWN);
        assert!(!request.is_probe() && !reply.is_probe());
    }

    #[test]
    fn only_frames_from_another_holder_of_the_address_answer() {
        let other = MacAddr([0x02, 0, 0, 0, 0, 0x0c]);
        let reply = ArpFrame {
            op: ArpOp::Reply,
            ..ArpFrame::gratuitous_request(other, SHARED)
        };
        assert!(reply.answers(OWN, SHARED));
        assert!(!reply.answers(other, SHARED), "our own frames never answer");
        assert!(!reply.answers(OWN, Ipv4Addr::new(192, 0, 2, 1)));
        // A gratuitous request from the holder counts too (RFC 5227 2.1.1) ...
        assert!(ArpFrame::gratuitous_request(other, SHARED).answers(OWN, SHARED));
        // ... but another host's probe for the same address does not.
        assert!(!ArpFrame::probe(other, SHARED).answers(OWN, SHARED));
    }

    #[test]
    fn other_ethertypes_and_bad_fields_are_named() {
        let mut bytes = ArpFrame::probe(OWN, SHARED).encode();
        bytes[12] = 0x86;
        bytes[13] = 0xdd;
        let err = ArpFrame::decode(&bytes).unwrap_err();
        assert!(err.to_string().contains("0x86dd"), "{err}");
        let mut bytes = ArpFrame::probe(OWN, SHARED).encode();
        bytes[21] = 3;
        let err = ArpFrame::decode(&bytes).unwrap_err();
        assert!(err.to_string().contains("operation 3"), "{err}");
        let err = ArpFrame::decode(&bytes[..41]).unwrap_err();
        assert!(
            matches!(err, DecodeError::Truncated { got: 41, .. }),
            "{err}"
        );
    }

    fn mac() -> impl Strategy<Value = MacAddr> {
        any::<[u8; 6]>().prop_map(MacAddr)
    }

    fn frame() -> impl Strategy<Value = ArpFrame> {
        (
            mac(),
            mac(),
            any::<bool>(),
            mac(),
            any::<[u8; 4]>(),
            mac(),
            any::<[u8; 4]>(),
        )
            .prop_map(
                |(eth_dst, eth_src, reply, sender_mac, sip, target_mac, tip)| ArpFrame {
                    eth_dst,
                    eth_src,
                    op: if reply { ArpOp::Reply } else { ArpOp::Request },
                    sender_mac,
                    sender_ip: sip.into(),
                    target_mac,
                    target_ip: tip.into(),
                },
            )
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(f in frame()) {
            prop_assert_eq!(ArpFrame::decode(&f.encode()), Ok(f));
        }

        #[test]
        fn any_bytes_decode_to_a_frame_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = ArpFrame::decode(&bytes);
        }

        #[test]
        fn damaged_frames_never_panic(f in frame(), at in 0usize..FRAME_LEN, value in any::<u8>(), cut in 0usize..=FRAME_LEN) {
            let mut bytes = f.encode();
            bytes[at] = value;
            let _ = ArpFrame::decode(&bytes[..cut]);
        }
    }
}
