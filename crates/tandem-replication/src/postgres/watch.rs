//! The replication service of a PostgreSQL node ([`PostgresBackend::watch`]) and the
//! what it does each round: a standby records its contact or, stuck, is marked for
//! resynchronisation, which a later round runs; a synchronous primary applies the
//! `standby_lost` policy.

use std::path::PathBuf;
use std::time::Duration;

use super::PostgresBackend;
use super::state::PgState;
use crate::config::StandbyLostPolicy;
use crate::error::Result;
use crate::status::ReplicationState;
use crate::util::{ServiceLock, now_ms};

/// How long a standby may fail to stream from a peer that answers as a primary
/// before the replication service resynchronises it (the walreceiver retries every
/// 5 s by itself; a standby that still does not stream has diverged or is stuck).
const STANDBY_IDLE_LIMIT_MS: u64 = 10_000;

/// What one step of the replication service did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WatchOutcome {
    /// Nothing to do (not initialized, switched off, or everything as it should be).
    Nothing,
    /// This standby streams; its contact time was recorded.
    Streaming,
    /// The primary's standby is not streaming (not for long enough to degrade, or the
    /// policy is strict).
    StandbyMissing,
    /// The primary stopped waiting for its lost standby and raised an alarm.
    Degraded,
    /// The standby streams again and caught up: commits wait for it again.
    Restored,
    /// This standby was resynchronised from its primary (rewound or copied), as its
    /// demotion left due.
    Resynchronised,
}

impl PostgresBackend {
    fn lock_path(&self) -> PathBuf {
        self.settings.state_dir.join("replication.lock")
    }

    /// Whether the replication service ([`watch`](Self::watch)) runs on this node.
    pub fn service_running(&self) -> bool {
        ServiceLock::held_by_other(&self.lock_path())
    }

    /// for `degrade_after_ms` (and raises an alarm), and waits again once it streams and
    /// has caught up.
    pub async fn watch_once(&self) -> Result<WatchOutcome> {
        let Ok(mut state) = self.load() else {
            return Ok(WatchOutcome::Nothing);
        };
        // What this round decides on: it records a change only if nobody else
        // recorded one since (a switch-off meanwhile wins).
        let before = state.clone();
        if state.resync {
            let peer_is_primary = self.peer_is_primary(&state).await?;
            if !peer_is_primary {
                // Not yet: the alarm says what it waits for.
                return Ok(WatchOutcome::Nothing);
            }
            self.resync_due(&mut state).await?;
            return Ok(WatchOutcome::Resynchronised);
        }
        let mut conn = self.connect_local().await?;
        if Self::in_recovery(&mut conn).await? {
            if Self::streaming(&mut conn).await? {
                self.record_contact().await?;
                if state.idle_since.take().is_some() {
                    self.save_if_unchanged(&before, &state).await?;
                }
                return Ok(WatchOutcome::Streaming);
            }
            return self.standby_idle(&before, &mut state).await;
        }
        let cfg = self.cfg();
        if state.state != ReplicationState::Active || state.following || !cfg.synchronous {
            return Ok(WatchOutcome::Nothing);
        }
        let now = now_ms();
        match Self::standby_streams(&mut conn, &state.peer_app_name()).await? {
            Some(behind) => {
                let changed = state.missing_since.take().is_some();
                // Wait again only once the standby is close behind, so that switching
                // back does not stall commits while it catches up.
                if state.degraded_since.is_some() && behind < 16 << 20 {
                    state.degraded_since = None;
                    if !self.apply_if_unchanged(&before, &state).await? {
                        return Ok(WatchOutcome::Nothing);
                    }
                    self.reload(&mut conn).await?;
                    return Ok(WatchOutcome::Restored);
                }
                if changed {
                    self.save_if_unchanged(&before, &state).await?;
                }
                Ok(WatchOutcome::Nothing)
            }
            None => {
                let since = *state.missing_since.get_or_insert(now);
                if state.degraded_since.is_none()
                    && cfg.standby_lost == StandbyLostPolicy::Degrade
                    && now.saturating_sub(since) >= cfg.degrade_after_ms
                {
                    state.degraded_since = Some(now);
                    if !self.apply_if_unchanged(&before, &state).await? {
                        return Ok(WatchOutcome::Nothing);
                    }
                    self.reload(&mut conn).await?;
                    tracing::warn!(
                        standby = %state.peer_app_name(),
                        "the standby is gone: commits no longer wait for it"
                    );
                    return Ok(WatchOutcome::Degraded);
                }
                self.save_if_unchanged(&before, &state).await?;
                Ok(WatchOutcome::StandbyMissing)
            }
        }
    }

    /// A following standby that does not stream: once it has not streamed for
    /// [`STANDBY_IDLE_LIMIT_MS`] while its peer answers as a primary, it is marked
    /// for resynchronisation (the next round rewinds it; `pg_rewind` finds nothing
    /// to do when nothing diverged, and the restart starts its walreceiver afresh).
    /// The clock starts again while the peer is no primary.
    pub(super) async fn standby_idle(
        &self,
        before: &PgState,
        state: &mut PgState,
    ) -> Result<WatchOutcome> {
        if !state.following || state.state != ReplicationState::Active {
            return Ok(WatchOutcome::Nothing);
        }
        let now = now_ms();
        let since = *state.idle_since.get_or_insert(now);
        if now.saturating_sub(since) >= STANDBY_IDLE_LIMIT_MS {
            let peer_is_primary = self.peer_is_primary(state).await?;
            if peer_is_primary {
                tracing::warn!(
                    idle_ms = now.saturating_sub(since),
                    "this standby does not stream from its primary: resynchronising it"
                );
                state.idle_since = None;
                state.resync = true;
            } else {
                state.idle_since = Some(now);
            }
            self.save_if_unchanged(before, state).await?;
        } else if since == now {
            self.save_if_unchanged(before, state).await?;
        }
        Ok(WatchOutcome::Nothing)
    }

    /// The replication service of a PostgreSQL node: [`watch_once`](Self::watch_once)
    /// every `heartbeat_ms` until `shutdown` completes. Holds the service lock.
    pub async fn watch(&self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let _lock = ServiceLock::acquire(&self.lock_path())?;
        let interval = Duration::from_millis(self.settings.replication.heartbeat_ms);
        tokio::pin!(shutdown);
        loop {
            match self.watch_once().await {
                Ok(WatchOutcome::Degraded) => {
                    tracing::warn!("degraded: commits no longer wait for the standby");
                }
                Ok(WatchOutcome::Restored) => {
                    tracing::info!("the standby caught up: commits wait for it again");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %crate::error::chain(&e), "replication check"),
            }
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}
