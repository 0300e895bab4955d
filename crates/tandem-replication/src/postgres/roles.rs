//! Role changes: the steps of promoting this node's server and of demoting it (now,
//! or leaving the copy from the peer to the replication service), and the
//! resynchronisation a deferred demotion left due. The operations themselves are
//! [`ReplicationBackend::promote_with`](crate::ReplicationBackend::promote_with) and
//! [`demote_with`](crate::ReplicationBackend::demote_with).

use std::time::Duration;

use sqlx::postgres::PgConnection;

use super::PostgresBackend;
use super::resync;
use super::state::PgState;
use crate::SwitchOnOptions;
use crate::config::StandbyLostPolicy;
use crate::error::{Error, Result};
use crate::status::ReplicationState;
use crate::util::{now_ms, timestamp_for_file};

impl PostgresBackend {
    /// Refuses to promote this standby while the peer is a running primary, or, unless
    /// `force`, while it may be stale (see
    /// [`promote_with`](crate::ReplicationBackend::promote_with)).
    pub(super) async fn check_promotable(
        &self,
        conn: &mut PgConnection,
        state: &PgState,
        force: bool,
    ) -> Result<()> {
        let mut peer = self.connect_peer(state).await.ok();
        if let Some(peer) = peer.as_mut()
            && !Self::in_recovery(peer).await?
        {
            return Err(Error::State(format!(
                "the peer {} is a running primary: make it the standby first (`failover \
                 set-server standby` or `mp_replication demote` there)",
                state.remote
            )));
        }
        let cfg = self.cfg();
        if Self::streaming(conn).await? {
            self.record_contact().await?;
        }
        let limit = cfg.degrade_after_ms;
        let mut stale = match self.last_contact() {
            Some(at) => now_ms().saturating_sub(at) > limit,
            None => true,
        };
        // A peer that is a standby itself and not ahead of this node (same or
        // older timeline, no more WAL) cannot have acknowledged anything this
        // node lacks: for example both nodes after their agents booted, the
        // former primary demoted at boot.
        if stale && let Some(peer) = peer.as_mut() {
            let mine = Self::wal_point(conn).await?;
            let theirs = Self::wal_point(peer).await?;
            if theirs <= mine {
                stale = false;
            }
        }
        if cfg.synchronous
            && cfg.standby_lost == StandbyLostPolicy::Degrade
            && state.following
            && stale
            && !force
        {
            let when = self.last_contact().map_or_else(
                || "never, as far as this node recorded".to_owned(),
                |at| format!("at {}", timestamp_for_file(at)),
            );
            return Err(Error::State(format!(
                "this standby may be stale: it last streamed from the peer {when}, and a \
                 primary stops waiting for a standby gone for {limit} ms (standby_lost = \
                 \"degrade\"), so it may have acknowledged writes this node lacks; promote \
                 with --force only if you know it did not"
            )));
        }
        Ok(())
    }

    /// `pg_promote()`, waited for, then a checkpoint.
    pub(super) async fn pg_promote(conn: &mut PgConnection) -> Result<()> {
        // Asked without waiting, then watched from short statements: a session
        // that waits inside `pg_promote(true)` holds a snapshot, which the
        // end of recovery can conflict with (it was cancelled after
        // max_standby_streaming_delay, 30 s, in a chaos trial).
        sqlx::query("SELECT pg_promote(false)")
            .execute(&mut *conn)
            .await
            .map_err(Error::db("promoting this node (pg_promote)"))?;
        let asked = std::time::Instant::now();
        while Self::in_recovery(conn).await? {
            if asked.elapsed() > Duration::from_secs(60) {
                return Err(Error::State(
                    "the promotion did not finish within 60 s: see the server log".to_owned(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The control file names the new timeline only after a checkpoint; until
        // then pg_rewind from here would find nothing to rewind.
        sqlx::query("CHECKPOINT")
            .execute(&mut *conn)
            .await
            .map_err(Error::db("checkpoint after the promotion"))?;
        Ok(())
    }

    /// Whether this node's server was a primary before a demotion: `None` when it is
    /// a running standby already (nothing to do); when it is stopped, its control file
    /// says, asked only for a deferred demotion (which records a resynchronisation).
    pub(super) async fn primary_before_demotion(&self, defer: bool) -> Result<Option<bool>> {
        if self.server.running().await? {
            let mut conn = self.connect_local().await?;
            if Self::in_recovery(&mut conn).await? {
                return Ok(None);
            }
            return Ok(Some(true));
        }
        if !defer {
            return Ok(Some(false));
        }
        let control = self.server.control_data().await?;
        Ok(Some(control.is_some_and(|c| c.was_primary())))
    }

    /// Restarts this node's server as a standby (`standby.signal`) that streams from
    /// the peer once it is back. With `defer` (where there may be no cluster yet, and
    /// then nothing is started) a node that `may_have_diverged` (a former primary, which
    /// may hold WAL its peer never had, or one whose peer is a primary now) is marked
    /// for resynchronisation: it is rewound from the peer once the peer is a primary
    /// it reaches; `pg_rewind` finds nothing to do when the two did not diverge.
    pub(super) async fn restart_as_standby(
        &self,
        state: &mut PgState,
        may_have_diverged: bool,
        defer: bool,
    ) -> Result<()> {
        self.server.stop().await?;
        let restart = !defer || self.server.has_cluster();
        if restart {
            self.server.write_standby_signal()?;
        }
        *state = self
            .apply(move |s| {
                s.following = s.state != ReplicationState::Off;
                s.degraded_since = None;
                s.missing_since = None;
                if defer {
                    s.resync = may_have_diverged && s.state != ReplicationState::Off;
                }
            })
            .await?;
        if restart {
            self.server.start().await?;
        }
        Ok(())
    }

    /// The resynchronisation that a deferred demotion ([`DemoteOptions::defer_copy`](crate::DemoteOptions))
    /// left due, with its progress in `<state dir>/postgres/resync.json`.
    pub(super) async fn resync_due(&self, state: &mut PgState) -> Result<()> {
        let recorder = resync::Recorder::new(&self.server.log_dir);
        let options = SwitchOnOptions::new().from_sync();
        let result = self.sync_from_peer(state, &options, &recorder).await;
        resync::clear(&self.server.log_dir);
        let report = match result {
            Ok(report) => report,
            Err(e) => {
                // Tried again by the next round of the service, not at once.
                tokio::time::sleep(Duration::from_secs(2)).await;
                return Err(e);
            }
        };
        self.update(|s| s.resync = false).await?;
        tracing::info!(report = %report.message, "resynchronised from the peer");
        Ok(())
    }
}
