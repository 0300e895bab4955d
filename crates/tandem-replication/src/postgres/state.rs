//! What this node records about replication: the state file
//! `<state dir>/postgres.json` (`tandem-core`'s [`JsonStateFile`], format
//! `tandem-postgres-state`), the standby's contact time `<state dir>/postgres.contact`,
//! and the lock files in the state directory.
//!
//! Every change of the state file is one read-modify-write under an exclusive lock
//! on `postgres.json.lock`: [`update`](PostgresBackend::update) (and
//! [`apply`](PostgresBackend::apply), which renders `tandem.conf` from the result
//! too) reads what the file holds now, lets the caller change the fields it decides
//! on, and writes the result, so a change that the tool, the agent's promotion or
//! demotion, or the replication service recorded meanwhile is kept, not overwritten
//! with a copy read before it. The service's rounds, which decide on a state read
//! before slow queries, record their change only if the file still holds what they
//! read ([`save_if_unchanged`](PostgresBackend::save_if_unchanged)). These
//! operations wait for a lock and fsync, so they run on tokio's blocking threads,
//! never on a worker of the runtime.
//!
//! A file in the layout written before this one (`version`, `checksum` over the
//! state's compact JSON, `state`) is still read; the next change writes it in the
//! new layout.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tandem_core::{JsonStateFile, NodeId, StateFileError};

use super::PostgresBackend;
use crate::config::{PostgresConfig, StandbyLostPolicy};
use crate::error::{Error, Result};
use crate::status::ReplicationState;
use crate::util::{ServiceLock, lock_exclusive, now_ms, timestamp_for_file, write_atomically};

/// The state file's format name, in its envelope.
const STATE_FORMAT: &str = "tandem-postgres-state";
/// The state file's format version.
const STATE_VERSION: u32 = 1;
/// The state file's mode (the umask applies), as before it moved to [`JsonStateFile`].
const STATE_MODE: u32 = 0o666;

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

/// The layout the state file had before it moved to [`JsonStateFile`]: read, never
/// written. Its checksum is the SHA-256 (hex) of the state's compact JSON.
#[derive(Deserialize)]
struct LegacyFile {
    version: u32,
    checksum: String,
    state: serde_json::Value,
}

/// What a change of the state file records once it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Record {
    /// Nothing: the file stays as it is.
    Nothing,
    /// The state.
    State,
    /// `tandem.conf` rendered from the state, then the state.
    StateAndConf,
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

/// Reads a state file in the layout written before [`JsonStateFile`]; `None` when
/// `bytes` are not in that layout.
fn decode_legacy(path: &Path, bytes: &[u8]) -> Option<Result<PgState>> {
    let file: LegacyFile = serde_json::from_slice(bytes).ok()?;
    let damaged = |what: String| {
        Error::State(format!(
            "{} is damaged ({what}); run `mp_replication init` again",
            path.display()
        ))
    };
    let state = match serde_json::from_value::<PgState>(file.state) {
        Ok(state) => state,
        Err(e) => return Some(Err(damaged(format!("invalid state: {e}")))),
    };
    if file.version != STATE_VERSION {
        return Some(Err(damaged(format!("unknown version {}", file.version))));
    }
    let text = match serde_json::to_string(&state) {
        Ok(text) => text,
        Err(e) => return Some(Err(damaged(format!("cannot encode the state: {e}")))),
    };
    if hex::encode(Sha256::digest(text.as_bytes())) != file.checksum {
        return Some(Err(damaged("wrong checksum".to_owned())));
    }
    Some(Ok(state))
}

/// The crate's error for an error of the state file (each names the file).
fn state_file_error(e: StateFileError) -> Error {
    match e {
        StateFileError::Read { path, source } => Error::file("cannot read", path)(source),
        StateFileError::Write { path, source } => Error::file("cannot write", path)(source),
        other => Error::State(format!("{other}; run `mp_replication init` again")),
    }
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

    fn state_file(&self) -> JsonStateFile<PgState> {
        JsonStateFile::new(self.state_path(), STATE_FORMAT, STATE_VERSION, STATE_MODE)
    }

    fn state_lock_path(&self) -> PathBuf {
        self.settings.state_dir.join("postgres.json.lock")
    }

    /// The state as the file holds it now ([`Error::NotInitialized`] without one),
    /// whether in [`JsonStateFile`]'s layout or the one before it. Takes no lock:
    /// files are replaced whole, so a reader sees the old state or the new one.
    pub(crate) fn load(&self) -> Result<PgState> {
        let file = self.state_file();
        let bytes = match std::fs::read(file.path()) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotInitialized);
            }
            Err(e) => return Err(Error::file("cannot read", file.path())(e)),
        };
        if let Some(legacy) = decode_legacy(file.path(), &bytes) {
            return legacy;
        }
        file.decode(&bytes).map_err(state_file_error)
    }

    /// The one read-modify-write of the state file: under the exclusive lock on
    /// `postgres.json.lock`, `change` gets the state as the file holds it now (`None`
    /// when there is none), edits it and says what to record, which is recorded
    /// before the lock is let go. A damaged file is an error and stays as it is,
    /// unless `replace_damaged` (for `init`, which starts anew): then `change` gets
    /// `None`. Blocks (the lock, fsync): async code calls it through
    /// [`off_runtime`](Self::off_runtime).
    fn modify<R>(
        &self,
        replace_damaged: bool,
        change: impl FnOnce(&mut Option<PgState>) -> Result<(Record, R)>,
    ) -> Result<(Option<PgState>, R)> {
        let _lock = lock_exclusive(&self.state_lock_path())?;
        let mut state = match self.load() {
            Ok(state) => Some(state),
            Err(Error::NotInitialized) => None,
            Err(Error::State(_)) if replace_damaged => None,
            Err(e) => return Err(e),
        };
        let (record, out) = change(&mut state)?;
        if let Some(now) = &state {
            if record == Record::StateAndConf {
                self.write_conf(now)?;
            }
            if record != Record::Nothing {
                self.state_file().save(now).map_err(state_file_error)?;
            }
        }
        Ok((state, out))
    }

    /// [`modify`](Self::modify) of an existing state, which `change` edits; records
    /// the result as `record` says and returns it.
    fn modify_existing(
        &self,
        record: Record,
        change: impl FnOnce(&mut PgState),
    ) -> Result<PgState> {
        let (state, ()) = self.modify(false, |state| match state {
            Some(state) => {
                change(state);
                Ok((record, ()))
            }
            None => Err(Error::NotInitialized),
        })?;
        state.ok_or(Error::NotInitialized)
    }

    /// Records `after` only if the file still holds `before` (with `tandem.conf`
    /// rendered from it as `record` says), and says whether it did.
    fn modify_if_unchanged(
        &self,
        before: &PgState,
        after: &PgState,
        record: Record,
    ) -> Result<bool> {
        let (_, recorded) = self.modify(false, |state| match state {
            Some(now) if now == before => {
                *now = after.clone();
                Ok((record, true))
            }
            _ => Ok((Record::Nothing, false)),
        })?;
        Ok(recorded)
    }

    /// Runs `op`, a state-file operation that waits for a lock and fsyncs, on tokio's
    /// blocking threads, so that a slow disk holds no worker of the runtime (in
    /// place when polled outside a tokio runtime).
    async fn off_runtime<R: Send + 'static>(
        &self,
        op: impl FnOnce(&PostgresBackend) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return op(self);
        };
        let backend = self.clone();
        runtime
            .spawn_blocking(move || op(&backend))
            .await
            .map_err(|e| {
                Error::State(format!(
                    "the change of {} did not finish: {e}",
                    self.state_path().display()
                ))
            })?
    }

    /// Changes the recorded state: `change` edits the state as the file holds it now
    /// (set only the fields the caller decides on), under the state file's lock, and
    /// the result is recorded and returned. [`Error::NotInitialized`] when there is no
    /// state.
    pub(super) async fn update(
        &self,
        change: impl FnOnce(&mut PgState) + Send + 'static,
    ) -> Result<PgState> {
        self.off_runtime(move |b| b.modify_existing(Record::State, change))
            .await
    }

    /// [`update`](Self::update), and `tandem.conf` rendered from the result (under
    /// the same lock, before the state is recorded).
    pub(super) async fn apply(
        &self,
        change: impl FnOnce(&mut PgState) + Send + 'static,
    ) -> Result<PgState> {
        self.off_runtime(move |b| b.modify_existing(Record::StateAndConf, change))
            .await
    }

    /// Records `after` only if the file still holds `before`, and says whether it
    /// did. The replication service decides on a state it read before slow
    /// queries; a switch or a role change that the tool or the agent recorded
    /// meanwhile must not be overwritten with that stale state (the service's
    /// next round sees the new one).
    pub(super) async fn save_if_unchanged(
        &self,
        before: &PgState,
        after: &PgState,
    ) -> Result<bool> {
        let (before, after) = (before.clone(), after.clone());
        self.off_runtime(move |b| b.modify_if_unchanged(&before, &after, Record::State))
            .await
    }

    /// [`save_if_unchanged`](Self::save_if_unchanged), with `tandem.conf` rendered
    /// from `after` when it is recorded.
    pub(super) async fn apply_if_unchanged(
        &self,
        before: &PgState,
        after: &PgState,
    ) -> Result<bool> {
        let (before, after) = (before.clone(), after.clone());
        self.off_runtime(move |b| b.modify_if_unchanged(&before, &after, Record::StateAndConf))
            .await
    }

    /// Records what `init` was told, onto the state recorded before or a new one
    /// (`make` gets what the file holds now, `None` when there is none or it is
    /// damaged, and returns the state to record), with `tandem.conf` rendered from
    /// it when `conf`. Returns the state recorded.
    pub(super) async fn record_init(
        &self,
        make: impl FnOnce(Option<PgState>) -> PgState + Send + 'static,
        conf: bool,
    ) -> Result<PgState> {
        let record = if conf {
            Record::StateAndConf
        } else {
            Record::State
        };
        let (state, ()) = self
            .off_runtime(move |b| {
                b.modify(true, |state| {
                    *state = Some(make(state.take()));
                    Ok((record, ()))
                })
            })
            .await?;
        state.ok_or(Error::NotInitialized)
    }

    /// Records that this standby streams from the peer now.
    pub(super) async fn record_contact(&self) -> Result<()> {
        self.off_runtime(|b| write_atomically(&b.contact_path(), now_ms().to_string().as_bytes()))
            .await
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
    use std::sync::Arc;

    fn backend(dir: &Path) -> PostgresBackend {
        PostgresBackend {
            settings: Arc::new(crate::Settings::new(
                dir,
                crate::ReplicationConfig::default(),
            )),
            server: Arc::new(crate::postgres::server::Server::for_state_tests(dir)),
        }
    }

    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    /// Records `state` whatever the file holds (as `init` would over nothing).
    fn record(backend: &PostgresBackend, state: &PgState) {
        let state = state.clone();
        block_on(backend.record_init(move |_| state, false)).unwrap();
    }

    #[test]
    fn the_service_never_overwrites_a_state_recorded_after_it_read() {
        let dir = tempfile::tempdir().unwrap();
        let backend = backend(dir.path());
        let read = state();
        record(&backend, &read);
        // The tool switches off while the service's round waits on a query...
        let switched = block_on(backend.update(|s| s.state = ReplicationState::Off)).unwrap();
        assert_eq!(switched.state, ReplicationState::Off);
        // ...and the round's stale decision is dropped, not written over it.
        let stale = PgState {
            missing_since: Some(5),
            ..read.clone()
        };
        assert!(!block_on(backend.save_if_unchanged(&read, &stale)).unwrap());
        assert!(!block_on(backend.apply_if_unchanged(&read, &stale)).unwrap());
        assert_eq!(backend.load().unwrap(), switched);
        // A round that read the current state records its change.
        let next = PgState {
            missing_since: Some(6),
            ..switched.clone()
        };
        assert!(block_on(backend.save_if_unchanged(&switched, &next)).unwrap());
        assert_eq!(backend.load().unwrap(), next);
    }

    #[test]
    fn updates_from_two_threads_lose_none() {
        let dir = tempfile::tempdir().unwrap();
        let backend = backend(dir.path());
        let start = PgState {
            missing_since: Some(0),
            idle_since: Some(0),
            ..state()
        };
        record(&backend, &start);
        std::thread::scope(|scope| {
            for missing in [true, false] {
                let backend = &backend;
                scope.spawn(move || {
                    block_on(async {
                        for _ in 0..200 {
                            backend
                                .update(move |s| {
                                    let counter = if missing {
                                        &mut s.missing_since
                                    } else {
                                        &mut s.idle_since
                                    };
                                    *counter = counter.map(|n| n + 1);
                                })
                                .await
                                .unwrap();
                        }
                    });
                });
            }
        });
        let end = backend.load().unwrap();
        assert_eq!((end.missing_since, end.idle_since), (Some(200), Some(200)));
    }

    /// Node 1's state as the code before [`JsonStateFile`] wrote it (every field
    /// set), byte for byte.
    const LEGACY_FULL: &str = r#"{
  "version": 1,
  "checksum": "af0872d94c57b4de37de38e3c0e831f78c41a34c504fde8e18417617a672a55d",
  "state": {
    "node": 1,
    "site": 7,
    "remote": "192.0.2.12",
    "local": "192.0.2.11",
    "state": "active",
    "following": true,
    "degraded_since": null,
    "missing_since": 1700000000123,
    "last_copy": "pg_rewind (servers diverged at WAL location 0/3000000 on timeline 1) at 20261122T080102Z",
    "resync": true,
    "idle_since": 1700000000456
  }
}"#;

    /// The same node just initialized, as the code before [`JsonStateFile`] wrote
    /// it (the fields skipped when unset are absent).
    const LEGACY_INITIALIZED: &str = r#"{
  "version": 1,
  "checksum": "6e937a6b388029076119ae2056243ad06576d3ce464adf3dcd01e362b7aa7fbb",
  "state": {
    "node": 1,
    "site": 7,
    "remote": "192.0.2.12",
    "local": null,
    "state": "initialized",
    "following": false,
    "degraded_since": null,
    "missing_since": null,
    "last_copy": null
  }
}"#;

    fn legacy_full() -> PgState {
        PgState {
            node: NodeId::One,
            site: 7,
            remote: IpAddr::from([192, 0, 2, 12]),
            local: Some(IpAddr::from([192, 0, 2, 11])),
            state: ReplicationState::Active,
            following: true,
            degraded_since: None,
            missing_since: Some(1_700_000_000_123),
            last_copy: Some(
                "pg_rewind (servers diverged at WAL location 0/3000000 on timeline 1) at \
                 20261122T080102Z"
                    .to_owned(),
            ),
            resync: true,
            idle_since: Some(1_700_000_000_456),
        }
    }

    #[test]
    fn a_file_written_before_json_state_file_is_read_and_rewritten_in_the_new_layout() {
        let dir = tempfile::tempdir().unwrap();
        let backend = backend(dir.path());
        std::fs::write(backend.state_path(), LEGACY_INITIALIZED).unwrap();
        let initialized = backend.load().unwrap();
        assert_eq!(initialized.state, ReplicationState::Initialized);
        assert_eq!((initialized.local, initialized.resync), (None, false));
        std::fs::write(backend.state_path(), LEGACY_FULL).unwrap();
        assert_eq!(backend.load().unwrap(), legacy_full());
        // Reading leaves the file as it was; the next change rewrites it.
        assert_eq!(
            std::fs::read_to_string(backend.state_path()).unwrap(),
            LEGACY_FULL
        );
        let after = block_on(backend.update(|s| s.idle_since = None)).unwrap();
        let text = std::fs::read_to_string(backend.state_path()).unwrap();
        assert!(
            text.contains(r#""format": "tandem-postgres-state""#),
            "{text}"
        );
        assert!(!text.contains("checksum"), "{text}");
        assert_eq!(
            after,
            PgState {
                idle_since: None,
                ..legacy_full()
            }
        );
        assert_eq!(backend.load().unwrap(), after);
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it_and_stays_until_init_starts_anew() {
        let dir = tempfile::tempdir().unwrap();
        let backend = backend(dir.path());
        let path = backend.state_path();
        let name = path.display().to_string();
        record(&backend, &state());
        let new = std::fs::read_to_string(&path).unwrap();
        let damaged = [
            // The old layout with a field edited, or cut short.
            LEGACY_FULL.replace("\"site\": 7", "\"site\": 8"),
            LEGACY_FULL[..LEGACY_FULL.len() / 2].to_owned(),
            // The new layout with a field edited, or cut short.
            new.replace("\"site\":1", "\"site\":2"),
            new[..new.len() - 20].to_owned(),
            String::new(),
        ];
        for text in damaged {
            std::fs::write(&path, &text).unwrap();
            let err = backend.load().unwrap_err().to_string();
            assert!(err.contains(&name), "{err}");
            assert!(err.contains("mp_replication init"), "{err}");
            let err = block_on(backend.update(|s| s.site = 9))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&name), "{err}");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        }
        // `init` starts anew over a damaged file, as the errors say.
        record(&backend, &state());
        assert_eq!(backend.load().unwrap(), state());
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
