//! The role of a tandem node: deployment mode, role, node id, site id and epoch,
//! and the sans-IO state machine that decides when a node claims or releases the
//! shared address.
//!
//! A [`Machine`] takes an [`Event`] (a boot with its probe outcome, an operator's
//! `set-server`, a peer's claim, an address conflict, ...) and returns the
//! [`Action`]s to carry out, in order (persist, claim, announce, promote, start
//! services, notify, ...). The caller owns sockets, timers and files; the machine
//! owns the decisions. Its rules:
//!
//! - A node in a failover deployment claims the shared address only right after a
//!   probe found it silent and the isolation check passed.
//! - Every claim uses a new epoch, higher than any the node has used or seen, and
//!   the state carrying it is persisted before the claim.
//! - After `set-server standby` (or `set-deployment failover`), the node takes no
//!   active-only action until `set-server active`, or until the peer has taken
//!   over (its claim fulfils the operator's request).
//! - Of two active nodes, the one with the higher (epoch, node preference) stays;
//!   without the peer's word, a node that sees another MAC answer for the shared
//!   address releases it.
//! - Once the peer link is back the newer epoch wins: a standby that hears a
//!   claim older than its own epoch (it took over while the claimant was away)
//!   says so ([`Action::SendSuperseded`]), the claimant steps down
//!   ([`Event::PeerSuperseded`]) and the standby probes and claims again.
//! - Only the active node's database takes writes: a failover node that boots
//!   standby demotes its database, which keeps its role across the reboot (a
//!   rebooted active's would otherwise take writes beside the new active's).
//! - A single-server deployment never emits a peer or replication action.
//! - Node 1 claims with odd epochs and node 2 with even ones, so the two never
//!   claim with the same epoch.
//! - On a site with a witness ([`Config::witness`]) a node claims only once it
//!   holds the site's leader key ([`Action::AcquireLease`], answered by
//!   [`Event::LeaseAcquired`]); the key's creation revision, a [`FenceToken`],
//!   travels with the epoch and orders two claimants for certain. An active node
//!   that hears another holds the key steps down at once; one whose lease is
//!   lost steps down unless its peer is in sight (failsafe: it serves on, nobody
//!   can be promoted, and a planned handover is refused until the witness is back).
//!
//! [`StateFile`] persists a [`NodeState`] as versioned, checksummed JSON, written
//! atomically.
//!
//! This crate never does IO beyond its state file (written atomically through
//! `tandem-core`): no sockets, no interfaces, no processes, no clock (time comes
//! in with each event). Node and site ids and MAC addresses are `tandem-core`'s
//! types, re-exported here.
//!
//! # Example
//!
//! ```
//! use std::time::SystemTime;
//! use tandem_role::{Action, Config, DeploymentMode, Event, Isolation, Machine, NodeId,
//!     NodeState, ProbeOutcome, Role, SiteId};
//!
//! let mut state = NodeState::first_boot(NodeId::One, SiteId::ONE);
//! state.deployment = DeploymentMode::Failover;
//! let mut node = Machine::new(Config::default(), state);
//!
//! // Nothing answers for the shared address and the gateway does: claim it.
//! let actions = node.handle(
//!     Event::Boot { probe: ProbeOutcome::Silent, isolation: Isolation::Passed },
//!     SystemTime::now(),
//! );
//! assert_eq!(node.role(), Role::Active);
//! assert!(actions.contains(&Action::ClaimSharedAddress));
//! assert_eq!(node.state().epoch.get(), 1);
//!
//! // The operator hands over: stop, release, demote, in that order.
//! let actions = node.handle(Event::SetServer(Role::Standby), SystemTime::now());
//! let names: Vec<String> = actions.iter().map(|a| a.to_string()).collect();
//! assert_eq!(&names[..3], ["stop-services", "release-shared-address", "demote-database"]);
//! ```

mod machine;
mod state;
mod text;
mod types;

pub use machine::{Action, Config, Event, Hook, Isolation, Machine, ProbeOutcome, Refusal, Step};
pub use state::{NodeState, Replication, STATE_FILE_NAME, STATE_VERSION, StateError, StateFile};
pub use tandem_core::{MacAddr, NodeId, ParseError, SiteId};
pub use types::{DeploymentMode, Epoch, FenceToken, Role};
