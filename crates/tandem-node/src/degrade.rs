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
//! 3. no other host answers ARP for the shared address: nobody took over;
//! 4. with [`DegradeGuard::with_agent`] (what [`DegradeGuard::for_node`] makes): the
//!    node's agent answers, says the node is active and, on a site with a witness,
//!    holds the leader key with more than the margin left before its step-down
//!    deadline. A killed agent must not leave an application acknowledging alone:
//!    its peer may take over while the address still answers here.
//!
//! What the network checks cannot see: a fault between the switch and the peer
//! that leaves this node's carrier up (a partition). Without a witness a two-node
//! site cannot tell that from a dead peer; with one, check 4 can: the peer takes
//! over only with the key, after this node's lease ran out. See
//! `docs/RELIABILITY.md`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tandem_node::DegradeError> {
//! use std::path::Path;
//! use std::time::Duration;
//! use tandem_node::{DEFAULT_LEASE_MARGIN, DegradeGuard};
//!
//! let guard = DegradeGuard::new(
//!     "eth0",
//!     "192.0.2.1".parse().unwrap(),
//!     "192.0.2.10".parse().unwrap(),
//!     Duration::from_secs(1),
//! )
//! .await?
//! .with_agent(Path::new("/var/lib/tandem"), DEFAULT_LEASE_MARGIN);
//! let mark = guard.mark().await;
//! // ... commit, wait for the standby, learn that it is unreachable ...
//! guard.allow(mark).await?; // Err: answer the client with an error instead
//! # Ok(())
//! # }
//! ```

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tandem_netif::Interfaces;
use tandem_probe::{Collect, ProbeConfig, Prober};
use tokio::time::Instant;

/// How long the carrier must have been steady before a lone acknowledgement, by
/// default: well over a peer's probe of the shared address and its claim.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(1);

/// How much of its lease a node must have left to acknowledge alone, by default:
/// the answer must reach the client well before the step-down deadline.
pub const DEFAULT_LEASE_MARGIN: Duration = Duration::from_millis(500);

/// How long the guard waits for the agent's answer.
const AGENT_TIMEOUT: Duration = Duration::from_millis(500);

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
    /// The node's agent does not answer: nothing watches the shared address and
    /// the peer may take over.
    #[error("the node's agent does not answer ({reason}): never acknowledge alone without it")]
    NoAgent {
        /// Why.
        reason: String,
    },
    /// The agent says the node is not active.
    #[error("this node is not the active node any more")]
    NotActive,
    /// The site has a witness and this node does not hold the leader key.
    #[error("this node does not hold the site's leader key on the witness")]
    NoLease,
    /// The node holds the leader key, but too little of its lease is left.
    #[error(
        "this node's witness lease has {left_ms} ms left, less than the margin of {margin_ms} ms"
    )]
    LeaseEnding {
        /// What is left before the step-down deadline.
        left_ms: u64,
        /// The margin required.
        margin_ms: u64,
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
pub struct DegradeMark {
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
    /// The agent's state directory, and the lease margin, for check 4.
    agent: Option<(PathBuf, Duration)>,
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
            agent: None,
        };
        guard.mark().await;
        Ok(guard)
    }

    /// Also asks the node's agent (the one serving `state_dir`) before every lone
    /// acknowledgement: refused unless it answers that the node is active and, on
    /// a site with a witness, holds the leader key with more than `lease_margin`
    /// ([`DEFAULT_LEASE_MARGIN`]) left.
    pub fn with_agent(mut self, state_dir: &Path, lease_margin: Duration) -> Self {
        self.agent = Some((state_dir.to_path_buf(), lease_margin));
        self
    }

    /// A guard for a node run by a tandem agent: its config's interface, gateway
    /// and shared address, and the agent of `state_dir` (see
    /// [`DegradeGuard::with_agent`]).
    pub async fn for_node(
        config: &crate::NodeConfig,
        state_dir: &Path,
        settle: Duration,
    ) -> Result<Self, DegradeError> {
        let net = &config.network;
        let IpAddr::V4(shared) = net.shared_address.addr() else {
            return Err(DegradeError::CheckFailed {
                what: "watch the shared address".into(),
                reason: "only an IPv4 shared address can be checked with ARP".into(),
            });
        };
        Ok(
            DegradeGuard::new(&net.interface, net.gateway, shared, settle)
                .await?
                .with_agent(state_dir, DEFAULT_LEASE_MARGIN),
        )
    }

    /// Reads the carrier; take it before the commit whose acknowledgement may be
    /// a lone one.
    pub async fn mark(&self) -> DegradeMark {
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
        DegradeMark {
            changes,
            steady_since,
        }
    }

    /// Whether a write committed after `mark` may be acknowledged without the
    /// standby. Waits until the carrier has been steady for the settle time, then
    /// checks the reference address and the shared address together.
    pub async fn allow(&self, mark: DegradeMark) -> Result<(), DegradeError> {
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
        // A dead agent or a lost lease refuses at once, before the settle time.
        self.ask_agent().await?;
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
        // And the agent may have stepped down meanwhile.
        self.ask_agent().await
    }

    /// Check 4: the agent answers, the node is active, and holds the key if the
    /// site has a witness.
    async fn ask_agent(&self) -> Result<(), DegradeError> {
        let Some((state_dir, margin)) = &self.agent else {
            return Ok(());
        };
        let answer =
            crate::control::request(state_dir, &crate::control::Request::Standing, AGENT_TIMEOUT)
                .await
                .map_err(|e| DegradeError::NoAgent {
                    reason: e.to_string(),
                })?;
        let standing = match answer {
            crate::control::Response::Standing(standing) => standing,
            crate::control::Response::Error(e) => return Err(DegradeError::NoAgent { reason: e }),
            _ => {
                return Err(DegradeError::NoAgent {
                    reason: "the agent does not know the request (an older build?)".into(),
                });
            }
        };
        judge(&standing, *margin)
    }

    async fn carrier_changes(&self) -> Option<u32> {
        self.interfaces
            .link_state(&self.iface)
            .await
            .ok()
            .and_then(|l| l.carrier_changes)
    }
}

/// Whether a node standing so may acknowledge alone (check 4).
fn judge(standing: &crate::control::Standing, margin: Duration) -> Result<(), DegradeError> {
    if standing.role != tandem_role::Role::Active {
        return Err(DegradeError::NotActive);
    }
    if !standing.witness {
        return Ok(());
    }
    if standing.token.is_none() {
        return Err(DegradeError::NoLease);
    }
    let margin_ms = u64::try_from(margin.as_millis()).unwrap_or(u64::MAX);
    match standing.lease_valid_ms {
        Some(left_ms) if left_ms > margin_ms => Ok(()),
        left => Err(DegradeError::LeaseEnding {
            left_ms: left.unwrap_or(0),
            margin_ms,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Standing;
    use tandem_role::{Epoch, FenceToken, Role};

    fn standing(role: Role, witness: bool, token: Option<u64>, left: Option<u64>) -> Standing {
        Standing {
            role,
            epoch: Epoch::new(3),
            witness,
            token: token.map(FenceToken::new),
            lease_valid_ms: left,
        }
    }

    #[test]
    fn only_an_active_node_holding_the_key_with_time_left_acknowledges_alone() {
        let margin = Duration::from_millis(500);
        let ok = |s: Standing| judge(&s, margin).is_ok();
        assert!(ok(standing(Role::Active, false, None, None)));
        assert!(!ok(standing(Role::Standby, false, None, None)));
        assert!(ok(standing(Role::Active, true, Some(7), Some(1500))));
        assert!(matches!(
            judge(&standing(Role::Active, true, None, None), margin),
            Err(DegradeError::NoLease)
        ));
        let ending = judge(&standing(Role::Active, true, Some(7), Some(400)), margin);
        assert!(
            matches!(
                ending,
                Err(DegradeError::LeaseEnding {
                    left_ms: 400,
                    margin_ms: 500
                })
            ),
            "{ending:?}"
        );
        assert!(!ok(standing(Role::Standby, true, Some(7), Some(1500))));
    }
}
