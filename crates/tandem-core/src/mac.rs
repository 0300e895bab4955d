//! Ethernet hardware (MAC) addresses: one type for the probes that read them off
//! the wire and the role machine that names them in its decisions.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ParseError;

/// An Ethernet hardware address, printed and parsed as `aa:bb:cc:dd:ee:ff` (six
/// octets of two hex digits each) and serialized as that text.
///
/// ```
/// use tandem_core::MacAddr;
///
/// let mac: MacAddr = "02:00:5e:00:02:0a".parse()?;
/// assert_eq!(mac.octets(), [0x02, 0x00, 0x5e, 0x00, 0x02, 0x0a]);
/// assert_eq!(mac.to_string(), "02:00:5e:00:02:0a");
/// # Ok::<(), tandem_core::ParseError>(())
/// ```
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The broadcast address `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    /// The all-zero address, used for "unknown" in ARP requests.
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// The six octets.
    pub const fn octets(self) -> [u8; 6] {
        self.0
    }

    /// Whether this is a multicast (or broadcast) address: the I/G bit is set.
    pub const fn is_multicast(self) -> bool {
        self.0[0] & 1 == 1
    }

    /// The Ethernet multicast address an IPv6 multicast group maps to
    /// (`33:33` followed by the group's last four octets, RFC 2464).
    pub fn ipv6_multicast(group: std::net::Ipv6Addr) -> MacAddr {
        let o = group.octets();
        MacAddr([0x33, 0x33, o[12], o[13], o[14], o[15]])
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(octets: [u8; 6]) -> Self {
        MacAddr(octets)
    }
}

impl From<MacAddr> for [u8; 6] {
    fn from(mac: MacAddr) -> Self {
        mac.0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let bad = || {
            ParseError::new(
                "MAC address",
                s,
                "expected six hex bytes like 02:00:5e:00:00:01",
            )
        };
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(mac))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = ParseError;

    fn try_from(s: String) -> Result<Self, ParseError> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(mac: MacAddr) -> String {
        mac.to_string()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn macs_round_trip_and_reject_garbage() {
        let mac: MacAddr = "02:00:5e:0a:0b:ff".parse().expect("valid");
        assert_eq!(mac.to_string(), "02:00:5e:0a:0b:ff");
        for bad in [
            "02:00:5e:0a:0b",
            "02:00:5e:0a:0b:ff:00",
            "2:0:5e:a:b:ff",
            "zz:00:5e:0a:0b:ff",
            "",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_texts_are_rejected_with_the_text() {
        for bad in [
            "",
            "02:00",
            "02:00:5e:00:02:0a:01",
            "zz:00:5e:00:02:0a",
            "002:00:5e:00:02:0a",
            "02::5e:00:02:0a",
        ] {
            let err = bad.parse::<MacAddr>().unwrap_err();
            assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
        }
    }

    #[test]
    fn multicast_bit_and_ipv6_mapping() {
        assert!(MacAddr::BROADCAST.is_multicast());
        assert!(!MacAddr([2, 0, 0, 0, 0, 1]).is_multicast());
        let all_nodes: std::net::Ipv6Addr = "ff02::1".parse().unwrap();
        assert_eq!(
            MacAddr::ipv6_multicast(all_nodes).to_string(),
            "33:33:00:00:00:01"
        );
    }

    #[test]
    fn macs_serialize_as_their_text() {
        let mac = MacAddr([2, 0, 0x5e, 0, 2, 0x0a]);
        let json = serde_json::to_string(&mac).unwrap();
        assert_eq!(json, "\"02:00:5e:00:02:0a\"");
        assert_eq!(serde_json::from_str::<MacAddr>(&json).unwrap(), mac);
        assert!(serde_json::from_str::<MacAddr>("\"02:00\"").is_err());
    }

    proptest! {
        #[test]
        fn display_and_parse_round_trip(octets in any::<[u8; 6]>()) {
            let mac = MacAddr(octets);
            prop_assert_eq!(mac.to_string().parse::<MacAddr>(), Ok(mac));
        }

        #[test]
        fn parsing_any_text_never_panics(text in ".{0,40}") {
            let _ = text.parse::<MacAddr>();
        }
    }
}
