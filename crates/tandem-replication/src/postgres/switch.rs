//! `switch-on` (without from-sync) and `switch-off` on this node: as a standby it
//! streams from the peer or stops; as the primary it waits for its standby or stops.
//! The operations themselves are in [`ReplicationBackend`](crate::ReplicationBackend)'s
//! implementation; these are their two sides.

use std::time::Duration;

use sqlx::postgres::PgConnection;

use super::state::PgState;
use super::{PostgresBackend, server};
use crate::SwitchOnOptions;
use crate::config::StandbyLostPolicy;
use crate::error::{Error, Result};
use crate::observer::Observer;
use crate::status::ReplicationState;
use crate::util::now_ms;

impl PostgresBackend {
    /// Waits until this standby streams from the peer.
    pub(super) async fn wait_streaming(&self, limit: Duration) -> Result<()> {
        let started = std::time::Instant::now();
        loop {
            if let Ok(mut conn) = self.connect_local().await
                && Self::streaming(&mut conn).await?
            {
                self.record_contact().await?;
                return Ok(());
            }
            if started.elapsed() > limit {
                return Err(Error::State(format!(
                    "this standby does not stream from the peer after {limit:?}; the server log \
                     {} says: {}",
                    self.server.server_log().display(),
                    server::tail_of(&self.server.server_log(), 4)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The primary side of switching on: role, slot, and waiting for the standby.
    /// A node `promoted` has nothing left to resynchronise from its peer.
    pub(super) async fn switch_on_primary(
        &self,
        conn: &mut PgConnection,
        state: &mut PgState,
        promoted: bool,
        observer: &dyn Observer,
    ) -> Result<String> {
        observer.step("this node is the primary: replication role and slot for the peer");
        self.ensure_role(conn).await?;
        Self::ensure_slot(conn, &state.peer_app_name()).await?;
        let streams = Self::standby_streams(conn, &state.peer_app_name())
            .await?
            .is_some();
        let cfg = self.cfg();
        let (degraded_since, waits) = if !cfg.synchronous {
            (
                None,
                "commits do not wait for it (synchronous = false)".to_owned(),
            )
        } else if streams || cfg.standby_lost == StandbyLostPolicy::Strict {
            (
                None,
                format!("commits wait for it ({})", state.peer_app_name()),
            )
        } else {
            // The standby is not there yet; the replication service makes commits wait
            // for it once it streams.
            (
                Some(now_ms()),
                "commits wait for it once it streams (the replication service switches that on)"
                    .to_owned(),
            )
        };
        let missing_since = if streams { None } else { Some(now_ms()) };
        *state = self
            .apply(move |s| {
                s.state = ReplicationState::Active;
                s.following = false;
                s.degraded_since = degraded_since;
                s.missing_since = missing_since;
                if promoted {
                    s.resync = false;
                }
            })
            .await?;
        self.reload(conn).await?;
        Ok(format!(
            "replication is on: this node is the primary with a slot for node {}; {waits}",
            state.node.peer()
        ))
    }

    /// The standby side of switching on: check that this cluster is a copy of the
    /// peer's (when the peer answers), follow it and wait until it streams.
    pub(super) async fn follow_peer(
        &self,
        mut conn: PgConnection,
        state: &mut PgState,
        options: &SwitchOnOptions,
        observer: &dyn Observer,
    ) -> Result<String> {
        observer.step("this node is a standby: streaming from the peer");
        if let Ok(mut peer) = self.connect_peer(state).await {
            let mine = Self::system_identifier(&mut conn, "reading the system identifier").await?;
            let theirs =
                Self::system_identifier(&mut peer, "reading the peer's system identifier").await?;
            if mine != theirs {
                return Err(Error::State(format!(
                    "this node's cluster is not a copy of the peer's (system identifier \
                     {mine}, the peer's {theirs}): run `switch-on -S -F from-sync`"
                )));
            }
        }
        *state = self
            .apply(|s| {
                s.state = ReplicationState::Active;
                s.following = true;
                s.degraded_since = None;
            })
            .await?;
        self.reload(&mut conn).await?;
        drop(conn);
        self.wait_streaming(options.timeout).await.map_err(|e| {
            Error::State(format!(
                "{}; a cluster that is not a copy of the peer's needs `switch-on -S -F \
                 from-sync`",
                crate::error::chain(&e)
            ))
        })?;
        Ok(format!(
            "replication is on: this node streams from {}",
            state.remote
        ))
    }

    /// A peer that was switched on as a primary too (after a failover both may be)
    /// must not get a standby-less partner silently; a peer that is only initialized
    /// is the seed's procedure (it copies from here next).
    pub(super) async fn refuse_two_primaries(
        &self,
        conn: &mut PgConnection,
        state: &PgState,
    ) -> Result<()> {
        if let Ok(mut peer) = self.connect_peer(state).await
            && !Self::in_recovery(&mut peer).await?
            && Self::peer_state(&mut peer).await? == Some(ReplicationState::Active)
            && Self::standby_streams(conn, &state.peer_app_name())
                .await?
                .is_none()
        {
            return Err(Error::State(format!(
                "both nodes are primaries (the peer {} is not a standby): run `switch-on -S \
                 -F from-sync` on the node that should follow; its data is replaced by its \
                 peer's",
                state.remote
            )));
        }
        Ok(())
    }

    /// The standby side of switching off: stop streaming, and give up this node's slot
    /// on the primary (which would keep WAL for it) when the primary answers.
    pub(super) async fn stop_following(
        &self,
        conn: &mut PgConnection,
        state: &mut PgState,
        observer: &dyn Observer,
    ) -> Result<String> {
        observer.step("this node is a standby: it stops streaming");
        *state = self
            .apply(|s| {
                s.state = ReplicationState::Off;
                s.following = false;
            })
            .await?;
        self.reload(conn).await?;
        let slot = state.app_name();
        let dropped = match self.connect_peer(state).await {
            Ok(mut peer) => Self::drop_slot(&mut peer, &slot).await.unwrap_or(false),
            Err(_) => false,
        };
        Ok(if dropped {
            format!(
                "replication is off: this node no longer streams from the peer, its slot \
                 {slot} there is dropped, and it stays a read-only standby; bring it back \
                 with `switch-on -S -F from-sync`"
            )
        } else {
            format!(
                "replication is off: this node no longer streams from the peer and stays a \
                 read-only standby; the peer was not reached, so its slot {slot} keeps WAL \
                 there (at most max_slot_wal_keep_mb) until switch-off runs there"
            )
        })
    }

    /// The primary side of switching off: commits stop waiting and the standby's slot
    /// is dropped, so no WAL is kept for it.
    pub(super) async fn stop_leading(
        &self,
        conn: &mut PgConnection,
        state: &mut PgState,
        observer: &dyn Observer,
    ) -> Result<String> {
        observer.step("this node is the primary: commits stop waiting, the slot is dropped");
        *state = self
            .apply(|s| {
                s.state = ReplicationState::Off;
                s.degraded_since = None;
                s.missing_since = None;
            })
            .await?;
        self.reload(conn).await?;
        let slot = state.peer_app_name();
        if !Self::drop_slot(conn, &slot).await? {
            return Err(Error::State(format!(
                "the slot {slot} stays in use by the standby; run switch-off again"
            )));
        }
        Ok(format!(
            "replication is off: commits no longer wait for node {} and its slot {slot} is \
             dropped, so no WAL is kept for it; bring it back with `switch-on` here and \
             `switch-on -S -F from-sync` there",
            state.node.peer()
        ))
    }
}
