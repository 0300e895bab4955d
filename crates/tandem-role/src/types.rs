//! The small value types of a node's role: deployment mode, role, epoch and fencing
//! token (node id, site id and MAC address are `tandem-core`'s). Invalid values
//! cannot be constructed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{NodeId, ParseError};

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
