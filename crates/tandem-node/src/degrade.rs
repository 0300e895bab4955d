//! The `degrade` policy's safety check: may an active node whose standby is
//! unreachable acknowledge a write that only it has?
//!
//! Waiting for the standby forever stops the site when the standby dies, so an
//! application may answer after the local commit once the standby is known to be
//! gone. That is safe only while this node is the one the site goes on with. A node
//! that was cut off while the write waited may already have been replaced (the
//! operator's `set-server active` on the standby, or automatic failover), and what it
//! acknowledges then is lost with its data when it rejoins as standby. Looking at
//! the network only once the acknowledgement is due is not enough: by then the cable
//! may be back.
//!
//! [`DegradeGuard`] checks, in this order:
//!
//! 1. the interface's carrier did not come or go since [`DegradeGuard::mark`], taken
//!    before the commit, and has been steady for the settle time (so that a peer's
//!    takeover begun while this node was away has finished and shows);
//! 2. the reference address (the gateway) answers: this node reaches its network;
//! 3. no other host answers ARP for the shared address: nobody took over.
//!
//! What it cannot see: a fault between the switch and the peer that leaves this
//! node's carrier up (a partition). Without a witness a two-node site cannot tell
//! that from a dead peer; see `docs/RELIABILITY.md`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tandem_node::DegradeError> {
//! use std::time::Duration;
//! use tandem_node::DegradeGuard;
//!
//! let guard = DegradeGuard::new(
//!     "eth0",
//!     "192.0.2.1".parse().unwrap(),
//!     "192.0.2.10".parse().unwrap(),
//!     Duration::from_secs(1),
//! )
//! .await?;
//! let mark = guard.mark().await;
//! // ... commit, wait for the standby, learn that it is unreachable ...
//! guard.allow(mark).await?; // Err: answer the client with an error instead
//! # Ok(())
//! # }
//! ```

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::time::Duration;

use tandem_netif::Interfaces;
use tandem_probe::{Collect, ProbeConfig, Prober};
use tokio::time::Instant;

/// How long the carrier must have been steady before a lone acknowledgement, by
/// default: well over a peer's probe of the shared address and its claim.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(1);

/// Why a lone acknowledgement is refused, or the guard cannot be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DegradeError {
    /// The carrier came or went since the mark: the cable was out while the write
    /// waited, and the peer may have taken over meanwhile.
    #[error(
        "the carrier of {iface} came or went while the write waited: this node was cut off and the peer may have taken over"
    )]
    CarrierChanged {
        /// The interface.
        iface: String,
    },
    /// The reference address did not answer: this node is cut off now.
    #[error("the reference address {reference} does not answer: this node is cut off")]
    Isolated {
        /// The reference address.
        reference: IpAddr,
    },
    /// Another host answers for the shared address: it took over.
    #[error("{} also answers for the shared address {shared}: another node holds it", join(.macs))]
    SharedAddressHeld {
        /// The shared address.
        shared: Ipv4Addr,
        /// Who answered.
        macs: Vec<tandem_probe::MacAddr>,
    },
    /// A check could not be run; never taken for a pass.
    #[error("cannot {what}: {reason}")]
    CheckFailed {
        /// What was being checked.
        what: String,
        /// Why it failed.
        reason: String,
    },
}

fn join(macs: &[tandem_probe::MacAddr]) -> String {
    macs.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A reading of the carrier taken before a commit, for [`DegradeGuard::allow`].
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    /// The interface's carrier changes, if they could be read.
    changes: Option<u32>,
    /// Since when the guard has seen that count.
    steady_since: Instant,
}

/// The check an active node runs before it acknowledges a write its standby does
/// not have. Made in the node's network namespace, inside a tokio runtime.
#[derive(Debug)]
pub struct DegradeGuard {
    iface: String,
    reference: IpAddr,
    shared: Ipv4Addr,
    settle: Duration,
    interfaces: Interfaces,
    /// The last carrier count seen and when it was first seen.
    seen: Mutex<Option<(u32, Instant)>>,
}

impl DegradeGuard {
    /// A guard for the node on `iface`, whose network answers at `reference` and
    /// whose site's shared address is `shared`; the carrier must have been steady
    /// for `settle` ([`DEFAULT_SETTLE`] is a good start). The carrier is read
    /// once now, so a guard made ahead of time has a steady carrier to go by.
    pub async fn new(
        iface: &str,
        reference: IpAddr,
        shared: Ipv4Addr,
        settle: Duration,
    ) -> Result<DegradeGuard, DegradeError> {
        let interfaces = Interfaces::new().map_err(|e| DegradeError::CheckFailed {
            what: "open a netlink connection".into(),
            reason: e.to_string(),
        })?;
        let guard = DegradeGuard {
            iface: iface.to_owned(),
            reference,
            shared,
            settle,
            interfaces,
            seen: Mutex::new(None),
        };
        guard.mark().await;
        Ok(guard)
    }

    /// A guard from a node's config: its interface, gateway and shared address.
    pub async fn for_node(
        config: &crate::NodeConfig,
        settle: Duration,
    ) -> Result<Self, DegradeError> {
        let net = &config.network;
        let IpAddr::V4(shared) = net.shared_address.addr() else {
            return Err(DegradeError::CheckFailed {
                what: "watch the shared address".into(),
                reason: "only an IPv4 shared address can be checked with ARP".into(),
            });
        };
        DegradeGuard::new(&net.interface, net.gateway, shared, settle).await
    }

    /// Reads the carrier; take it before the commit whose acknowledgement may be
    /// a lone one.
    pub async fn mark(&self) -> Mark {
        let changes = self.carrier_changes().await;
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let steady_since = match (changes, *seen) {
            (Some(n), Some((m, since))) if n == m => since,
            (Some(n), _) => {
                // First reading, or a change: steady from now on.
                *seen = Some((n, now));
                now
            }
            (None, _) => now,
        };
        Mark {
            changes,
            steady_since,
        }
    }

    /// Whether a write committed after `mark` may be acknowledged without the
    /// standby. Waits until the carrier has been steady for the settle time, then
    /// checks the reference address and the shared address together.
    pub async fn allow(&self, mark: Mark) -> Result<(), DegradeError> {
        let changed = || DegradeError::CarrierChanged {
            iface: self.iface.clone(),
        };
        let Some(before) = mark.changes else {
            return Err(DegradeError::CheckFailed {
                what: format!("read the carrier of {}", self.iface),
                reason: "the kernel reported no carrier count".into(),
            });
        };
        if self.carrier_changes().await != Some(before) {
            return Err(changed());
        }
        tokio::time::sleep_until(mark.steady_since + self.settle).await;
        let prober = |collect| {
            Prober::new(ProbeConfig {
                timeout: Duration::from_millis(100),
                interval: Duration::from_millis(50),
                retries: 1,
                collect,
            })
            .map_err(|e| DegradeError::CheckFailed {
                what: "make a prober".into(),
                reason: e.to_string(),
            })
        };
        let (gateway, holders) = (prober(Collect::First)?, prober(Collect::All)?);
        let (gateway, holders) = tokio::join!(
            gateway.isolation_check(&self.iface, self.reference),
            holders.arp(&self.iface, self.shared)
        );
        let failed = |what: String| {
            move |e: tandem_probe::Error| DegradeError::CheckFailed {
                what,
                reason: e.to_string(),
            }
        };
        let gateway = gateway.map_err(failed(format!("probe {}", self.reference)))?;
        let holders = holders.map_err(failed(format!("probe {}", self.shared)))?;
        if !gateway.is_answered() {
            return Err(DegradeError::Isolated {
                reference: self.reference,
            });
        }
        if holders.is_answered() {
            return Err(DegradeError::SharedAddressHeld {
                shared: self.shared,
                macs: holders.macs(),
            });
        }
        // The cable may have gone during the probes.
        if self.carrier_changes().await != Some(before) {
            return Err(changed());
        }
        Ok(())
    }

    async fn carrier_changes(&self) -> Option<u32> {
        self.interfaces
            .link_state(&self.iface)
            .await
            .ok()
            .and_then(|l| l.carrier_changes)
    }
}
