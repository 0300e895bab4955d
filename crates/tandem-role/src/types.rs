//! The small value types of a node's role: deployment mode, role, node id, site id,
//! epoch and MAC address. Invalid values cannot be constructed.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ParseError;

/// How the node is deployed (the seed's `failoverUtil setDeployment`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeploymentMode {
    /// The node is the only server of its site and always active.
    Single,
    /// The node is one of two nodes of a site; one is active, the other standby.
    Failover,
}

/// The node's role in a failover deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Holds the shared address and runs the application.
    Active,
    /// Keeps only its node address, its database in replication and the services
    /// marked "always".
    Standby,
}

/// Which of the two nodes of a site this is (the seed's `mp_replication init -n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum NodeId {
    /// Node 1.
    One,
    /// Node 2.
    Two,
}

impl NodeId {
    /// The node id as a number, 1 or 2.
    pub fn get(self) -> u8 {
        match self {
            NodeId::One => 1,
            NodeId::Two => 2,
        }
    }

    /// The other node of the site.
    pub fn peer(self) -> NodeId {
        match self {
            NodeId::One => NodeId::Two,
            NodeId::Two => NodeId::One,
        }
    }

    /// The node's preference in a tie of epochs: node 1 wins over node 2.
    pub fn preference(self) -> u8 {
        match self {
            NodeId::One => 2,
            NodeId::Two => 1,
        }
    }
}

impl TryFrom<u8> for NodeId {
    type Error = ParseError;

    fn try_from(n: u8) -> Result<Self, ParseError> {
        match n {
            1 => Ok(NodeId::One),
            2 => Ok(NodeId::Two),
            _ => Err(ParseError::new(
                "node id",
                n.to_string(),
                "a site has node 1 and node 2",
            )),
        }
    }
}

impl From<NodeId> for u8 {
    fn from(id: NodeId) -> u8 {
        id.get()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.get())
    }
}

impl FromStr for NodeId {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let n: u8 = s
            .parse()
            .map_err(|_| ParseError::new("node id", s, "a site has node 1 and node 2"))?;
        NodeId::try_from(n)
    }
}

/// The site both nodes belong to (the seed's "Site: 1"); at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct SiteId(NonZeroU32);

impl SiteId {
    /// Site 1, the seed's only site.
    pub const ONE: SiteId = SiteId(NonZeroU32::MIN);

    /// A site id; `None` for 0.
    pub fn new(n: u32) -> Option<SiteId> {
        NonZeroU32::new(n).map(SiteId)
    }

    /// The site id as a number.
    pub fn get(self) -> u32 {
        self.0.get()
    }
}

impl TryFrom<u32> for SiteId {
    type Error = ParseError;

    fn try_from(n: u32) -> Result<Self, ParseError> {
        SiteId::new(n).ok_or_else(|| ParseError::new("site id", "0", "site ids start at 1"))
    }
}

impl From<SiteId> for u32 {
    fn from(id: SiteId) -> u32 {
        id.get()
    }
}

impl fmt::Display for SiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.get())
    }
}

impl FromStr for SiteId {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let n: u32 = s
            .parse()
            .map_err(|_| ParseError::new("site id", s, "expected a number from 1"))?;
        SiteId::try_from(n)
    }
}

/// A claim's generation: monotonic, persisted, exchanged on the peer link. Every
/// claim of the shared address uses an epoch higher than any the node has seen, so
/// of two claims the later one wins.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(u64);

impl Epoch {
    /// The epoch of a node that has never claimed nor seen a claim.
    pub const ZERO: Epoch = Epoch(0);

    /// An epoch with the given number.
    pub fn new(n: u64) -> Epoch {
        Epoch(n)
    }

    /// The epoch's number.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The next epoch. Saturates at `u64::MAX`, which no site reaches (one claim a
    /// second for 500 billion years).
    pub fn next(self) -> Epoch {
        Epoch(self.0.saturating_add(1))
    }

    /// The next epoch that `node` may claim with: node 1 claims odd epochs, node 2
    /// even ones, so the two nodes never claim with the same epoch, whatever each
    /// has or has not heard of the other's claims.
    pub fn next_for(self, node: NodeId) -> Epoch {
        let next = self.next();
        let parity = match node {
            NodeId::One => 1,
            NodeId::Two => 0,
        };
        if next.0 % 2 == parity {
            next
        } else {
            next.next()
        }
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A fencing token: the revision at which the witness (etcd) created the site's
/// leader key for its holder. Later holders always have higher tokens, whatever
/// the clocks say, so a node or a replication stream can refuse a holder whose
/// token is older than one it has seen. Carried beside the [`Epoch`] when the
/// site has a witness.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct FenceToken(u64);

impl FenceToken {
    /// A token with the given revision.
    pub fn new(revision: u64) -> FenceToken {
        FenceToken(revision)
    }

    /// The revision.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for FenceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

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

macro_rules! keyword_enum {
    ($ty:ty, $what:literal, $($variant:path => $word:literal),+) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $($variant => $word),+ })
            }
        }

        impl FromStr for $ty {
            type Err = ParseError;

            fn from_str(s: &str) -> Result<Self, ParseError> {
                match s {
                    $($word => Ok($variant),)+
                    _ => Err(ParseError::new($what, s, concat!("expected one of:", $(" ", $word),+))),
                }
            }
        }
    };
}

keyword_enum!(DeploymentMode, "deployment mode", DeploymentMode::Single => "single", DeploymentMode::Failover => "failover");
keyword_enum!(Role, "role", Role::Active => "active", Role::Standby => "standby");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_one_or_two() {
        assert_eq!("1".parse::<NodeId>().ok(), Some(NodeId::One));
        assert_eq!("2".parse::<NodeId>().ok(), Some(NodeId::Two));
        for bad in ["0", "3", "-1", "", "one", "256"] {
            let err = bad.parse::<NodeId>().expect_err(bad);
            assert!(err.to_string().contains("node 1 and node 2"), "{err}");
        }
        assert!(serde_json::from_str::<NodeId>("3").is_err());
        assert_eq!(
            serde_json::to_string(&NodeId::Two).ok().as_deref(),
            Some("2")
        );
    }

    #[test]
    fn site_ids_start_at_one() {
        assert!(SiteId::new(0).is_none());
        assert!("0".parse::<SiteId>().is_err());
        assert!(serde_json::from_str::<SiteId>("0").is_err());
        assert_eq!("7".parse::<SiteId>().ok().map(SiteId::get), Some(7));
    }

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
    fn keywords_parse_and_print() {
        assert_eq!(
            "failover".parse::<DeploymentMode>().ok(),
            Some(DeploymentMode::Failover)
        );
        assert_eq!(Role::Standby.to_string(), "standby");
        let err = "primary".parse::<Role>().expect_err("not a role");
        assert!(err.to_string().contains("active standby"), "{err}");
    }
}
