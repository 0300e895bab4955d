//! From-sync: this node becomes the peer's standby, its cluster rewound from the peer
//! (`pg_rewind`) or copied afresh (`pg_basebackup`), whether `switch-on -S -F
//! from-sync`, a demotion or the replication service's resynchronisation asks.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::PostgresBackend;
use super::server::{self, os};
use super::state::PgState;
use crate::error::{Error, Result};
use crate::observer::Observer;
use crate::status::ReplicationState;
use crate::util::{now_ms, timestamp_for_file};
use crate::{SwitchOnOptions, SwitchReport};

impl PostgresBackend {
    /// `switch-on -S -F from-sync`: this node becomes the standby of the peer, its data
    /// rewound (`pg_rewind`, when it was a primary of the same cluster and can be) or
    /// copied afresh (`pg_basebackup`).
    pub(super) async fn sync_from_peer(
        &self,
        state: &mut PgState,
        options: &SwitchOnOptions,
        observer: &dyn Observer,
    ) -> Result<SwitchReport> {
        let _copying = self.copy_lock()?;
        observer.step(&format!("asking the peer {} for its cluster", state.remote));
        let mut peer = self.connect_peer(state).await?;
        if Self::in_recovery(&mut peer).await? {
            return Err(Error::State(format!(
                "the peer {} is a standby, not a primary: from-sync copies from the primary \
                 (promote the peer first)",
                state.remote
            )));
        }
        let peer_id =
            Self::system_identifier(&mut peer, "reading the peer's system identifier").await?;
        Self::ensure_slot(&mut peer, &state.app_name()).await?;
        // A peer promoted a moment ago names its new timeline in its control file only
        // after a checkpoint, and pg_rewind reads that file (pg_checkpoint role).
        if let Err(e) = sqlx::query("CHECKPOINT").execute(&mut peer).await {
            observer.step(&format!("the peer refused a checkpoint: {e}"));
        }
        drop(peer);
        self.server.write_passfile(&self.password()?)?;
        let control = self.server.control_data().await?;
        *state = self.update(|s| s.state = ReplicationState::Syncing).await?;
        let result = self
            .copy_from_peer(state, control, &peer_id, options, observer)
            .await;
        match result {
            Ok(report) => Ok(report),
            Err(e) => {
                match self.update(|s| s.state = ReplicationState::Failed).await {
                    Ok(now) => *state = now,
                    Err(_) => state.state = ReplicationState::Failed,
                }
                Err(e)
            }
        }
    }

    /// The copy itself, once the peer is known to be a primary: rewind or copy, then
    /// start as its standby and wait until it streams.
    async fn copy_from_peer(
        &self,
        state: &mut PgState,
        control: Option<server::ControlData>,
        peer_id: &str,
        options: &SwitchOnOptions,
        observer: &dyn Observer,
    ) -> Result<SwitchReport> {
        observer.step("stopping this node's PostgreSQL");
        self.server.stop().await?;
        if self.server.has_cluster() {
            self.server.save_node_files()?;
        }
        let same_cluster = control
            .as_ref()
            .is_some_and(|c| c.system_identifier.as_deref() == Some(peer_id));
        let mut how = String::new();
        if let Some(c) = control.as_ref().filter(|c| same_cluster && c.was_primary())
            && c.rewindable()
        {
            how = self.rewind(state, observer).await;
        }
        if !how.starts_with("pg_rewind") {
            if how.is_empty() {
                how = self.fresh_copy_reason(control.as_ref(), same_cluster);
            }
            observer.step("copying the peer's cluster with pg_basebackup");
            self.basebackup(state, observer).await?;
        }
        self.start_following(state, &how, options, observer).await?;
        Ok(SwitchReport {
            message: format!(
                "copied the peer's data with {how}; this node streams from {}",
                state.remote
            ),
            ..SwitchReport::default()
        })
    }

    /// `pg_rewind` from the peer. Returns how the copy went: `pg_rewind (…)` when it
    /// worked, otherwise why a fresh copy follows.
    async fn rewind(&self, state: &PgState, observer: &dyn Observer) -> String {
        observer.step("this node was a primary of the same cluster: pg_rewind from the peer");
        let args = [
            os("-D"),
            self.cfg().data_dir.clone().into_os_string(),
            OsString::from(format!(
                "--source-server={}",
                self.peer_conninfo(state, true)
            )),
            os("--progress"),
        ];
        let log = self.server.log_dir.join("pg_rewind.log");
        let ran = self
            .server
            .run(
                "pg_rewind",
                &args,
                "rewinding from the peer",
                Some(observer),
            )
            .await;
        if let Err(e) = ran {
            observer.step(&format!(
                "pg_rewind failed, taking a fresh copy: {}",
                crate::error::chain(&e)
            ));
            return format!(
                "a fresh pg_basebackup (pg_rewind failed; see {})",
                log.display()
            );
        }
        let diverged = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .rev()
            .find(|l| l.contains("diverged at") || l.contains("no rewind required"))
            .map(|l| l.trim_start_matches("pg_rewind: ").trim().to_owned());
        match diverged {
            Some(d) => format!("pg_rewind ({d})"),
            None => "pg_rewind".to_owned(),
        }
    }

    /// Why this node's cluster is copied afresh instead of rewound.
    fn fresh_copy_reason(
        &self,
        control: Option<&server::ControlData>,
        same_cluster: bool,
    ) -> String {
        if !self.server.has_cluster() {
            "a fresh pg_basebackup (there was no cluster here)".to_owned()
        } else if !same_cluster {
            "a fresh pg_basebackup (this node's cluster is not a copy of the peer's)".to_owned()
        } else if control.is_some_and(|c| !c.was_primary()) {
            "a fresh pg_basebackup (this node was a standby)".to_owned()
        } else {
            "a fresh pg_basebackup (wal_log_hints was off, so pg_rewind cannot work)".to_owned()
        }
    }

    /// After the copy: this node's own files back, its certificate issued again (where
    /// the configuration lives in the data directory the copy brought the peer's
    /// along, and a node without a cluster before had none to put back), and started
    /// as the peer's standby.
    async fn start_following(
        &self,
        state: &mut PgState,
        how: &str,
        options: &SwitchOnOptions,
        observer: &dyn Observer,
    ) -> Result<()> {
        self.server.restore_node_files()?;
        self.ensure_tls(state, true)?;
        self.server.write_standby_signal()?;
        let last_copy = format!("{} at {}", how, timestamp_for_file(now_ms()));
        self.server.ensure_include()?;
        *state = self
            .apply(move |s| {
                s.following = true;
                s.state = ReplicationState::Active;
                s.degraded_since = None;
                s.missing_since = None;
                s.last_copy = Some(last_copy);
                s.resync = false;
                s.idle_since = None;
            })
            .await?;
        observer.step("starting this node's PostgreSQL as a standby");
        self.server.start().await?;
        self.wait_streaming(options.timeout).await
    }

    /// Copies the peer's cluster with `pg_basebackup` beside the data directory, then
    /// moves it into place.
    async fn basebackup(&self, state: &PgState, observer: &dyn Observer) -> Result<()> {
        let data = self.cfg().data_dir.clone();
        let name = data
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "data".to_owned());
        let parent = data
            .parent()
            .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
        let fresh = parent.join(format!("{name}.tandem-new"));
        let old = parent.join(format!("{name}.tandem-old"));
        self.server.make_data_dir(&fresh)?;
        let args = [
            os("-D"),
            fresh.clone().into_os_string(),
            OsString::from(format!("--dbname={}", self.peer_conninfo(state, false))),
            os("-X"),
            os("stream"),
            os("-S"),
            OsString::from(state.app_name()),
            os("-c"),
            os("fast"),
            os("--progress"),
        ];
        self.server
            .run(
                "pg_basebackup",
                &args,
                "copying the peer's cluster",
                Some(observer),
            )
            .await?;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(Error::file("cannot remove", &old))?;
        }
        if data.exists() {
            std::fs::rename(&data, &old).map_err(Error::file("cannot move aside", &data))?;
        }
        std::fs::rename(&fresh, &data).map_err(Error::file("cannot move into place", &fresh))?;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(Error::file("cannot remove", &old))?;
        }
        Ok(())
    }
}
