//! The site's optional etcd **witness**: a third party that decides which node of a
//! two-node site may be active when the nodes cannot agree on their own (`DESIGN.md`,
//! decision 12).
//!
//! The active node holds an etcd lease on the site's leader key
//! `<prefix>/<site>/leader`. A node becomes active only after it *created* that key
//! in one transaction ([`Witness::acquire`]); the etcd revision of that creation is
//! the fencing [`Token`], which the node carries with its epoch so that nothing from
//! an older holder is applied. The holder renews the lease; a [`Keeper`] task does
//! that off the agent's event loop and reports [`LeaseEvent::Lost`] as soon as no
//! keep-alive etcd acknowledged was sent within [`WitnessConfig::step_down_after`],
//! which is always before etcd's own expiry (see [`config`] for the timing rule).
//!
//! The client is `etcd-client`, a proven etcd v3 client; this crate adds no quorum
//! logic of its own.
//!
//! What it never does: touch interfaces, the shared address or the database, or
//! decide roles. It reports lease facts (acquired, held by, free, lost, unreachable)
//! to the role machine, which decides what they mean; in particular, with every etcd
//! member unreachable it only says so, and the failsafe rule (the active stays while
//! its peer is in sight) belongs to the role machine.
//!
//! # Example
//!
//! ```no_run
//! use tandem_core::{NodeId, SiteId};
//! use tandem_witness::{Acquire, Keeper, LeaseEvent, Witness, WitnessConfig};
//!
//! # async fn example() -> Result<(), tandem_witness::WitnessError> {
//! let config: WitnessConfig = toml::from_str(
//!     r#"endpoints = ["http://192.0.2.21:2379", "http://192.0.2.22:2379", "http://192.0.2.23:2379"]"#,
//! ).map_err(|e| tandem_witness::WitnessError::Config { field: "witness", reason: e.to_string() })?;
//!
//! // One-off calls, e.g. for `failover status`:
//! let mut witness = Witness::connect(config.clone(), SiteId::ONE, NodeId::One).await?;
//! match witness.acquire().await? {
//!     Acquire::Acquired { token, .. } => println!("node 1 is the holder, token {token}"),
//!     Acquire::HeldBy(holder) => println!("node {} holds the key", holder.node),
//! }
//! witness.release().await?;
//!
//! // In the agent: a task keeps the lease and reports what happens to it.
//! let (keeper, mut events) = Keeper::start(config, SiteId::ONE, NodeId::One).await?;
//! keeper.acquire();
//! while let Some(event) = events.recv().await {
//!     match event {
//!         LeaseEvent::Acquired { token } => println!("claim with fencing token {token}"),
//!         LeaseEvent::Lost { reason } => println!("step down now: {reason}"),
//!         other => println!("{other:?}"),
//!     }
//! }
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tandem_core::NodeId;

mod client;
pub mod config;
mod keeper;

pub use client::{Acquire, CheckReport, MemberStatus, Renewed, Witness};
pub use config::{TlsFiles, WitnessConfig};
pub use keeper::{Keeper, LeaseEvent, LeaseView, Tracker};

/// Errors of the witness.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WitnessError {
    /// A field of the `[witness]` config is wrong.
    #[error("[witness] {field}: {reason}")]
    Config {
        /// The field (or fields) to change.
        field: &'static str,
        /// What is wrong and what to do.
        reason: String,
    },
    /// A file the config names could not be read.
    #[error("cannot read {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No etcd member answered in time.
    #[error(
        "the witness is unreachable ({endpoints}): {reason}; check that the etcd members run \
         and that this node reaches their client port"
    )]
    Unreachable {
        /// The endpoints tried.
        endpoints: String,
        /// The last failure.
        reason: String,
    },
    /// The held lease no longer exists in etcd (it expired or was revoked): the key
    /// is gone or about to go, and this node must not act as holder.
    #[error(
        "the witness lease is gone (expired or revoked); this node no longer holds the leader key"
    )]
    LeaseGone,
    /// The call needs a held lease and there is none.
    #[error("this node holds no witness lease")]
    NotHolding,
    /// etcd answered with an error that is not about reachability (a permission
    /// refused, an invalid request).
    #[error("etcd refused {op}: {source}")]
    Etcd {
        /// The operation.
        op: &'static str,
        /// etcd-client's error.
        #[source]
        source: etcd_client::Error,
    },
    /// The leader key holds something tandem did not write.
    #[error("the leader key {key} holds an unexpected value: {detail}")]
    BadValue {
        /// The key.
        key: String,
        /// What is wrong with it.
        detail: String,
    },
}

/// The fencing token: the etcd revision at which the leader key was created (its
/// `create_revision`). A later holder always has a higher token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Token(pub u64);

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Who holds the leader key, and with which token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The holder's node id (serialized as the number 1 or 2).
    pub node: NodeId,
    /// The key's creation revision.
    pub token: Token,
}

/// The value stored in the leader key: `{"node":1,"site":1}`. The token is not in
/// it: it is the key's creation revision, which only etcd assigns. The ids are the
/// plain numbers as stored, checked by the reader (`Witness::parse_holder`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LeaderValue {
    pub(crate) node: u8,
    pub(crate) site: u32,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn tokens_order_display_and_serialize_as_numbers() {
        assert!(Token(7) < Token(12));
        assert_eq!(Token(12).to_string(), "12");
        assert_eq!(serde_json::to_string(&Token(12)).unwrap(), "12");
        let holder = Holder {
            node: NodeId::Two,
            token: Token(9),
        };
        assert_eq!(
            serde_json::to_string(&holder).unwrap(),
            r#"{"node":2,"token":9}"#
        );
    }

    #[test]
    fn the_leader_value_is_small_json() {
        let v = LeaderValue { node: 1, site: 1 };
        assert_eq!(serde_json::to_string(&v).unwrap(), r#"{"node":1,"site":1}"#);
        assert!(serde_json::from_str::<LeaderValue>(r#"{"node":1}"#).is_err());
    }
}
