//! What this node records about replication: the state file
//! `<state dir>/postgres.json` (versioned and checksummed), the standby's contact time
//! `<state dir>/postgres.contact`, and the lock files in the state directory.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::PostgresBackend;
use crate::config::{PostgresConfig, StandbyLostPolicy};
use crate::error::{Error, Result};
use crate::status::ReplicationState;
use crate::util::{ServiceLock, lock_exclusive, now_ms, timestamp_for_file, write_atomically};
use tandem_core::NodeId;

/// The state file's format version.
const STATE_VERSION: u32 = 1;

/// What this node recorded about replication (`<state dir>/postgres.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PgState {
    pub(crate) node: NodeId,
    pub(crate) site: u16,
    pub(crate) remote: IpAddr,
    pub(crate) local: Option<IpAddr>,
    pub(crate) state: ReplicationState,
    /// This node streams from the peer (`primary_conninfo` is set).
    pub(crate) following: bool,
    /// Since when (ms since the epoch) this primary no longer waits for its standby.
    pub(crate) degraded_since: Option<u64>,
    /// Since when the primary's standby has not been streaming, if it is not.
    pub(crate) missing_since: Option<u64>,
    /// What the last from-sync did.
    pub(crate) last_copy: Option<String>,
    /// This standby must be resynchronised from its peer (it was made the standby
    /// while the peer was the primary, and may have diverged from it): the
    /// replication service rewinds or copies it, off the agent's event loop.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) resync: bool,
    /// Since when this standby has not been streaming (while its peer answered as a
    /// primary, once that was checked), if it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) idle_since: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    checksum: String,
    state: PgState,
}

impl PgState {
    pub(super) fn app_name(&self) -> String {
        app_name(self.node)
    }

    pub(super) fn peer_app_name(&self) -> String {
        app_name(self.node.peer())
    }

    pub(super) fn alarms(&self, cfg: &PostgresConfig) -> Vec<String> {
        let mut alarms = Vec::new();
        if let Some(since) = self.degraded_since {
            alarms.push(format!(
                "degraded since {}: node {} is not streaming, so commits here do not wait for \
                 it and it may be stale (it will not be promoted without --force)",
                timestamp_for_file(since),
                self.node.peer()
            ));
        } else if let Some(since) = self.missing_since
            && cfg.synchronous
            && cfg.standby_lost == StandbyLostPolicy::Strict
        {
            alarms.push(format!(
                "node {} has not been streaming since {}; standby_lost = \"strict\": commits \
                 wait for it",
                self.node.peer(),
                timestamp_for_file(since)
            ));
        }
        if self.resync {
            alarms.push(format!(
                "this node was made the standby and waits to be resynchronised (pg_rewind, \
                 else pg_basebackup) from node {}, once that is a primary it reaches; the \
                 replication service does it",
                self.node.peer()
            ));
        }
        alarms
    }
}

/// The application name (and slot name) of node `node`'s standby connection.
fn app_name(node: NodeId) -> String {
    format!("tandem_node{node}")
}

fn checksum(state: &PgState) -> String {
    let text = serde_json::to_string(state).unwrap_or_default();
    hex::encode(Sha256::digest(text.as_bytes()))
}

impl PostgresBackend {
    pub(super) fn state_path(&self) -> PathBuf {
        self.settings.state_dir.join("postgres.json")
    }

    pub(super) fn contact_path(&self) -> PathBuf {
        self.settings.state_dir.join("postgres.contact")
    }

    /// Held while this node's cluster is copied from the peer or restarted in a
    /// new role: one at a time, whether the tool, the agent's demotion or the
    /// replication service's resynchronisation asks.
    pub(super) fn copy_lock_path(&self) -> PathBuf {
        self.settings.state_dir.join("postgres.copy.lock")
    }

    pub(super) fn copy_lock(&self) -> Result<ServiceLock> {
        ServiceLock::acquire(&self.copy_lock_path()).map_err(|_| {
            Error::State(
                "this node's cluster is being copied from the peer right now (`mp_replication \
                 status` shows how far it got); try again when it is done"
                    .to_owned(),
            )
        })
    }

    pub(crate) fn load(&self) -> Result<PgState> {
        let path = self.state_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotInitialized);
            }
            Err(e) => return Err(Error::file("cannot read", &path)(e)),
        };
        let file: StateFile = serde_json::from_str(&text).map_err(|e| {
            Error::State(format!(
                "{} is damaged ({e}); run `mp_replication init` again",
                path.display()
            ))
        })?;
        if file.version != STATE_VERSION || file.checksum != checksum(&file.state) {
            return Err(Error::State(format!(
                "{} has an unknown version or a wrong checksum; run `mp_replication init` again",
                path.display()
            )));
        }
        Ok(file.state)
    }

    /// Records `state`, whatever the file holds now.
    pub(super) fn save(&self, state: &PgState) -> Result<()> {
        let _lock = lock_exclusive(&self.state_lock_path())?;
        self.write_state(state)
    }

    /// Records `after` only if the file still holds `before`, and says whether it
    /// did. The replication service decides on a state it read before slow
    /// queries; a switch or a role change that the tool or the agent recorded
    /// meanwhile must not be overwritten with that stale state (the service's
    /// next round sees the new one). `conf` runs first, under the same lock, for
    /// a change that also rewrites `tandem.conf`.
    pub(super) fn save_if_unchanged(
        &self,
        before: &PgState,
        after: &PgState,
        conf: impl FnOnce() -> Result<()>,
    ) -> Result<bool> {
        let _lock = lock_exclusive(&self.state_lock_path())?;
        match self.load() {
            Ok(now) if now == *before => {}
            Ok(_) | Err(Error::NotInitialized) => return Ok(false),
            Err(e) => return Err(e),
        }
        conf()?;
        self.write_state(after)?;
        Ok(true)
    }

    fn state_lock_path(&self) -> PathBuf {
        self.settings.state_dir.join("postgres.json.lock")
    }

    fn write_state(&self, state: &PgState) -> Result<()> {
        let file = StateFile {
            version: STATE_VERSION,
            checksum: checksum(state),
            state: state.clone(),
        };
        let text = serde_json::to_string_pretty(&file)
            .map_err(|e| Error::State(format!("cannot encode the state: {e}")))?;
        write_atomically(&self.state_path(), text.as_bytes())
    }

    pub(super) fn record_contact(&self) -> Result<()> {
        write_atomically(&self.contact_path(), now_ms().to_string().as_bytes())
    }

    pub(super) fn last_contact(&self) -> Option<u64> {
        std::fs::read_to_string(self.contact_path())
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn the_service_never_overwrites_a_state_recorded_after_it_read() {
        let dir = tempfile::tempdir().unwrap();
        let backend = PostgresBackend {
            settings: crate::Settings::new(dir.path(), crate::ReplicationConfig::default()),
            server: crate::postgres::server::Server::for_state_tests(dir.path()),
        };
        let read = state();
        backend.save(&read).unwrap();
        // The tool switches off while the service's round waits on a query...
        let switched = PgState {
            state: ReplicationState::Off,
            ..read.clone()
        };
        backend.save(&switched).unwrap();
        // ...and the round's stale decision is dropped, not written over it.
        let stale = PgState {
            missing_since: Some(5),
            ..read.clone()
        };
        let saved = backend
            .save_if_unchanged(&read, &stale, || panic!("no conf for a dropped write"))
            .unwrap();
        assert!(!saved);
        assert_eq!(backend.load().unwrap(), switched);
        // A round that read the current state records its change.
        let next = PgState {
            missing_since: Some(6),
            ..switched.clone()
        };
        assert!(
            backend
                .save_if_unchanged(&switched, &next, || Ok(()))
                .unwrap()
        );
        assert_eq!(backend.load().unwrap(), next);
    }

    /// Node 2's state, active, primary, nothing recorded.
    pub(in crate::postgres) fn state() -> PgState {
        PgState {
            node: NodeId::Two,
            site: 1,
            remote: "192.0.2.11".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            local: None,
            state: ReplicationState::Active,
            following: false,
            degraded_since: None,
            missing_since: None,
            last_copy: None,
            resync: false,
            idle_since: None,
        }
    }

    #[test]
    fn state_alarms_say_what_degraded_means() {
        let mut s = state();
        let cfg = PostgresConfig::default();
        assert!(s.alarms(&cfg).is_empty());
        s.degraded_since = Some(0);
        let alarms = s.alarms(&cfg);
        assert!(alarms[0].contains("node 1 is not streaming"), "{alarms:?}");
        s.degraded_since = None;
        s.missing_since = Some(0);
        let strict = PostgresConfig {
            standby_lost: StandbyLostPolicy::Strict,
            ..PostgresConfig::default()
        };
        assert!(s.alarms(&strict)[0].contains("strict"));
    }
}
