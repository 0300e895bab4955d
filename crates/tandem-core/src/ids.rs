//! Which node and which site: [`NodeId`] (node 1 or node 2, nothing else) and
//! [`SiteId`] (a site number from 1). Both are written as plain numbers in every
//! file and message, so a state file, a status page or a peer message reads the
//! same as with a bare integer.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ParseError;

/// Which of the two nodes of a site this is (the seed's `mp_replication init -n`).
/// Serialized as the number 1 or 2.
///
/// ```
/// use tandem_core::NodeId;
///
/// let node: NodeId = "2".parse()?;
/// assert_eq!(node.peer(), NodeId::One);
/// assert_eq!(node.get(), 2);
/// assert_eq!(serde_json::to_string(&node).ok().as_deref(), Some("2"));
/// # Ok::<(), tandem_core::ParseError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum NodeId {
    /// Node 1.
    One,
    /// Node 2.
    Two,
}

impl NodeId {
    /// Both nodes of a site, node 1 first.
    pub const BOTH: [NodeId; 2] = [NodeId::One, NodeId::Two];

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

/// The site both nodes belong to (the seed's "Site: 1"); at least 1. Serialized
/// as the number.
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

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

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

    proptest! {
        #[test]
        fn only_one_and_two_are_node_ids(n in any::<u8>()) {
            match NodeId::try_from(n) {
                Ok(node) => {
                    prop_assert!(n == 1 || n == 2);
                    prop_assert_eq!(node.get(), n);
                    // The old `3 - node`, and its own inverse.
                    prop_assert_eq!(node.peer().get(), 3 - n);
                    prop_assert_eq!(node.peer().peer(), node);
                    prop_assert_eq!(node.to_string(), n.to_string());
                    prop_assert_eq!(serde_json::to_string(&node).unwrap(), n.to_string());
                }
                Err(e) => {
                    prop_assert!(n != 1 && n != 2);
                    prop_assert!(e.to_string().contains(&format!("`{n}`")), "{}", e);
                    prop_assert!(serde_json::from_str::<NodeId>(&n.to_string()).is_err());
                }
            }
        }

        #[test]
        fn site_ids_round_trip_as_numbers(n in 1u32..) {
            let site = SiteId::try_from(n).unwrap();
            prop_assert_eq!(serde_json::to_string(&site).unwrap(), n.to_string());
            prop_assert_eq!(site.to_string().parse::<SiteId>().unwrap(), site);
        }
    }
}
