//! Fencing tokens from the site's witness (DESIGN.md section 12): what the service
//! needs to know about the leader key, and the two checks it makes with it.
//!
//! The witness's revision at which the leader key was created for a holder is that
//! holder's token; tokens only grow from one holder to the next. A node applies its
//! peer's changes only from a peer that announces a token at least as new as every token
//! this node has seen, and a node streams its changes only while the peer announces no
//! newer token than the one this node holds.

use tandem_core::NodeId;

use crate::error::{Error, Result};

/// What this node knows about the witness's leader key, as its host (the node agent)
/// tells the replication service through a `tokio::sync::watch` channel
/// ([`Replicator::with_fence`](crate::Replicator::with_fence)).
///
/// The default, `Fence { mine: None, floor: 0 }`, fences nothing: a site without a
/// witness, or a node that has seen no token yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Fence {
    /// The token of the leader key lease this node holds, if it holds one; announced to
    /// the peer in every [`NodeState`](crate::wire::NodeState).
    pub mine: Option<u64>,
    /// The highest token this node has seen, its own or its peer's (0: none). While it
    /// is above 0, this node applies changes only from a peer announcing at least it.
    pub floor: u64,
}

impl Fence {
    /// A fence for a node holding the lease with token `mine` (if any) that has seen
    /// tokens up to `floor`; the floor is raised to `mine` if that is higher, since a
    /// node has always seen its own token.
    pub fn new(mine: Option<u64>, floor: u64) -> Fence {
        Fence {
            mine,
            floor: floor.max(mine.unwrap_or(0)),
        }
    }

    /// Whether this node may apply changes from node `peer`, whose last state announced
    /// `token`: always without a floor, else only with a token of at least the floor.
    ///
    /// # Errors
    ///
    /// [`Error::Fenced`] when the peer is a stale holder.
    pub fn admits(&self, peer: NodeId, token: Option<u64>) -> Result<()> {
        match token {
            _ if self.floor == 0 => Ok(()),
            Some(t) if t >= self.floor => Ok(()),
            _ => Err(Error::Fenced {
                peer,
                token,
                floor: self.floor,
            }),
        }
    }

    /// Whether node `node` (this node, holding [`mine`](Self::mine)) may stream its
    /// changes to node `peer`, whose last state announced `token`: not when the peer
    /// announced a token newer than this node's (none counts as older than any).
    ///
    /// # Errors
    ///
    /// [`Error::StaleHolder`] when this node is the stale holder.
    pub fn may_serve(&self, node: NodeId, peer: NodeId, token: Option<u64>) -> Result<()> {
        match token {
            Some(t) if self.mine.is_none_or(|m| m < t) => Err(Error::StaleHolder {
                node,
                mine: self.mine,
                peer,
                token: t,
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_floor_everything_is_admitted() {
        let none = Fence::default();
        for token in [None, Some(0), Some(3)] {
            assert!(none.admits(NodeId::Two, token).is_ok());
        }
    }

    #[test]
    fn a_floor_admits_only_tokens_at_least_as_new() {
        let fence = Fence::new(None, 9);
        assert!(fence.admits(NodeId::One, Some(9)).is_ok());
        assert!(fence.admits(NodeId::One, Some(10)).is_ok());
        let err = fence.admits(NodeId::One, Some(5)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "refused changes from node 1: its witness token 5 is older than token 9 seen here \
             (a stale holder); they are applied again once node 1 holds the leader key with a \
             token of at least 9"
        );
        let err = fence.admits(NodeId::One, None).unwrap_err();
        assert!(
            err.to_string()
                .contains("it announces no witness token, and token 9 was seen here"),
            "{err}"
        );
    }

    #[test]
    fn the_floor_is_at_least_the_own_token() {
        assert_eq!(Fence::new(Some(7), 3).floor, 7);
        assert_eq!(Fence::new(Some(7), 9).floor, 9);
        assert_eq!(Fence::new(None, 0), Fence::default());
    }

    #[test]
    fn a_holder_with_an_older_token_does_not_serve() {
        let stale = Fence::new(Some(5), 9);
        let err = stale
            .may_serve(NodeId::One, NodeId::Two, Some(9))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "node 1 does not stream its changes to node 2: its witness token 5 is older than \
             node 2's token 9 (node 1 is a stale holder)"
        );
        assert!(stale.may_serve(NodeId::One, NodeId::Two, Some(5)).is_ok());
        assert!(stale.may_serve(NodeId::One, NodeId::Two, Some(4)).is_ok());
        assert!(stale.may_serve(NodeId::One, NodeId::Two, None).is_ok());
        let holding_none = Fence::default();
        assert!(
            holding_none
                .may_serve(NodeId::One, NodeId::Two, None)
                .is_ok()
        );
        let err = holding_none
            .may_serve(NodeId::One, NodeId::Two, Some(1))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("it holds no witness token while node 2 announces token 1"),
            "{err}"
        );
    }
}
