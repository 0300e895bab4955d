//! The seed's status table for a PostgreSQL pair: this node from its state file and
//! its server (`pg_stat_replication` on a primary, `pg_stat_wal_receiver` on a
//! standby), the remote node from the stream and from its own server over SQL
//! (`tandem.state`, `tandem.node`, `tandem.site`).

use sqlx::postgres::PgConnection;

use super::{PgState, PostgresBackend};
use crate::error::{Error, Result};
use crate::status::{
    LinkStatus, Position, ReplicationState, ReplicationType, ServerStatus, Status, WalStatus,
};

/// Parses a PostgreSQL LSN (`16/B374D848`) into its 64-bit position.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.trim().split_once('/')?;
    let high = u64::from_str_radix(high, 16).ok()?;
    let low = u64::from_str_radix(low, 16).ok()?;
    (high <= u64::from(u32::MAX) && low <= u64::from(u32::MAX)).then_some((high << 32) | low)
}

/// What this node's server says.
#[derive(Debug, Default)]
struct Local {
    primary: bool,
    lsn: Option<String>,
    received: Option<String>,
    names: String,
    /// Primary: the standby's row in pg_stat_replication.
    standby: Option<StandbyRow>,
    /// Standby: the WAL receiver streams.
    streaming: bool,
}

/// A row of pg_stat_replication: state, sync_state, flush_lsn, replay_lsn, lag in ms.
type StandbyTuple = (String, String, Option<String>, Option<String>, Option<i64>);

#[derive(Debug, Default)]
struct StandbyRow {
    state: String,
    sync_state: String,
    flushed: Option<String>,
    replayed: Option<String>,
    lag_ms: Option<i64>,
}

/// What the peer's server says.
#[derive(Debug)]
struct Remote {
    primary: bool,
    lsn: Option<String>,
    state: Option<String>,
    node: Option<String>,
    site: Option<String>,
}

async fn local(conn: &mut PgConnection, standby_name: &str) -> Result<Local> {
    let db = |what: &'static str| Error::db(what);
    let primary: bool = sqlx::query_scalar("SELECT NOT pg_is_in_recovery()")
        .fetch_one(&mut *conn)
        .await
        .map_err(db("asking whether the server is a standby"))?;
    let names: String = sqlx::query_scalar("SELECT current_setting('synchronous_standby_names')")
        .fetch_one(&mut *conn)
        .await
        .map_err(db("reading synchronous_standby_names"))?;
    let mut out = Local {
        primary,
        names,
        ..Local::default()
    };
    if primary {
        out.lsn = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(&mut *conn)
            .await
            .map_err(db("reading the WAL position"))?;
        let row: Option<StandbyTuple> = sqlx::query_as(
            "SELECT state, sync_state, flush_lsn::text, replay_lsn::text, \
                 (EXTRACT(epoch FROM replay_lag) * 1000)::bigint \
                 FROM pg_stat_replication WHERE application_name = $1 \
                 ORDER BY state = 'streaming' DESC LIMIT 1",
        )
        .bind(standby_name)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db("reading pg_stat_replication"))?;
        out.standby = row.map(
            |(state, sync_state, flushed, replayed, lag_ms)| StandbyRow {
                state,
                sync_state,
                flushed,
                replayed,
                lag_ms,
            },
        );
    } else {
        let row: (Option<String>, Option<String>) = sqlx::query_as(
            "SELECT pg_last_wal_replay_lsn()::text, pg_last_wal_receive_lsn()::text",
        )
        .fetch_one(&mut *conn)
        .await
        .map_err(db("reading the replayed WAL position"))?;
        (out.lsn, out.received) = row;
        out.streaming = PostgresBackend::streaming(conn).await?;
    }
    Ok(out)
}

async fn remote(conn: &mut PgConnection) -> Result<Remote> {
    let row: (
        bool,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    ) = sqlx::query_as(
        "SELECT NOT pg_is_in_recovery(), \
             CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text \
                  ELSE pg_current_wal_lsn()::text END, \
             current_setting('tandem.state', true), current_setting('tandem.node', true), \
             current_setting('tandem.site', true)",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(Error::db("reading the peer's state"))?;
    let (primary, lsn, state, node, site) = row;
    Ok(Remote {
        primary,
        lsn,
        state,
        node,
        site,
    })
}

pub(super) async fn status(backend: &PostgresBackend, state: &PgState) -> Result<Status> {
    let cfg = backend.cfg();
    let mut alarms = state.alarms(cfg);
    let local = match backend.connect_local().await {
        Ok(mut conn) => match local(&mut conn, &state.peer_app_name()).await {
            Ok(l) => Some(l),
            Err(e) => {
                alarms.push(crate::error::chain(&e));
                None
            }
        },
        Err(e) => {
            alarms.push(format!(
                "PostgreSQL does not answer on this node: {}",
                crate::error::chain(&e)
            ));
            None
        }
    };
    let (remote, remote_error) = match backend.connect_peer(state).await {
        Ok(mut conn) => match remote(&mut conn).await {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(crate::error::chain(&e))),
        },
        Err(e) => (None, Some(crate::error::chain(&e))),
    };
    // Whether replication flows between the two nodes right now.
    let stream_up = local.as_ref().is_some_and(|l| {
        if l.primary {
            l.standby.as_ref().is_some_and(|s| s.state == "streaming")
        } else {
            l.streaming
        }
    });
    let local_state = if local.is_none() && state.state == ReplicationState::Active {
        ReplicationState::Failed
    } else {
        state.state
    };
    let remote_state = match &remote {
        Some(r) => r
            .state
            .as_deref()
            .and_then(ReplicationState::parse)
            .unwrap_or(ReplicationState::Unknown),
        None if stream_up => ReplicationState::Active,
        None => ReplicationState::Unknown,
    };
    let connected = stream_up || remote.is_some();
    let remote_detail = if connected {
        if !stream_up && state.state == ReplicationState::Active {
            Some(format!(
                "PostgreSQL at {} answers, but no WAL streams between the nodes",
                state.remote
            ))
        } else {
            None
        }
    } else {
        remote_error
    };
    if let (Some(l), Some(r)) = (&local, &remote)
        && l.primary
        && r.primary
    {
        alarms.push(
            "both nodes are primaries: run `switch-on -S -F from-sync` on the one that should \
             follow (its data is replaced by its peer's)"
                .to_owned(),
        );
    }
    if let Some(l) = &local
        && l.primary
        && !l.names.is_empty()
        && !stream_up
    {
        alarms.push(format!(
            "commits wait for {} (synchronous_standby_names), which is not streaming",
            l.names
        ));
    }
    let lsn = |t: &Option<String>| t.as_deref().and_then(parse_lsn);
    let mut wal = None;
    let (mut head, mut acked, mut applied) = (Position(0), Position(0), Position(0));
    let mut lag_ms = None;
    if let Some(l) = &local {
        let here = lsn(&l.lsn).unwrap_or(0);
        head = Position(here);
        let mut w = WalStatus::new(l.lsn.clone().unwrap_or_else(|| "unknown".into()));
        w.synchronous_standby_names = l.names.clone();
        w.primary = l.primary;
        if l.primary {
            if let Some(s) = &l.standby {
                w.flushed = s.flushed.clone();
                w.replayed = s.replayed.clone();
                w.sync_state = Some(s.sync_state.clone());
                acked = Position(lsn(&s.flushed).unwrap_or(0));
                w.lag_bytes = lsn(&s.replayed).map(|r| here.saturating_sub(r));
                // replay_lag keeps its last value for a while after the standby caught
                // up; a standby with nothing left to replay lags by nothing.
                lag_ms = s
                    .lag_ms
                    .map(|v| v.max(0).unsigned_abs())
                    .or(Some(0))
                    .filter(|_| s.state == "streaming")
                    .map(|ms| if w.lag_bytes == Some(0) { 0 } else { ms });
            }
        } else {
            applied = Position(here);
            w.flushed = l.received.clone();
            w.replayed = l.lsn.clone();
            w.primary_lsn = remote.as_ref().and_then(|r| r.lsn.clone());
            if let Some(peer) = remote.as_ref().and_then(|r| lsn(&r.lsn)) {
                w.lag_bytes = Some(peer.saturating_sub(here));
                if w.lag_bytes == Some(0) {
                    lag_ms = Some(0);
                }
            }
        }
        wal = Some(w);
    }
    let parse_site = |t: &Option<String>| t.as_deref().and_then(|v| v.parse::<u16>().ok());
    let parse_node = |t: &Option<String>| t.as_deref().and_then(|v| v.parse::<u8>().ok());
    Ok(Status {
        backend: "postgres".into(),
        local: ServerStatus {
            replication_type: ReplicationType::Local,
            site: Some(state.site),
            node: Some(state.node),
            state: local_state,
            status: LinkStatus::Local,
            writable: local.as_ref().map(|l| l.primary),
        },
        remote: ServerStatus {
            replication_type: ReplicationType::IntraSite,
            site: remote
                .as_ref()
                .and_then(|r| parse_site(&r.site))
                .or(Some(state.site)),
            node: Some(
                remote
                    .as_ref()
                    .and_then(|r| parse_node(&r.node))
                    .unwrap_or(3 - state.node),
            ),
            state: remote_state,
            status: if connected {
                LinkStatus::Connected
            } else {
                LinkStatus::NotConnected
            },
            writable: remote
                .as_ref()
                .map(|r| r.primary)
                .or_else(|| local.as_ref().filter(|_| stream_up).map(|l| !l.primary)),
        },
        backlog: wal.as_ref().and_then(|w: &WalStatus| w.lag_bytes),
        lag_ms,
        head,
        acked,
        applied,
        remote_head: remote.as_ref().and_then(|r| lsn(&r.lsn)).map(Position),
        service_running: backend.service_running(),
        remote_detail,
        alarms,
        wal,
        resync: super::resync::read(&backend.server.log_dir),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_are_parsed() {
        assert_eq!(parse_lsn("0/3000148"), Some(0x0300_0148));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert_eq!(parse_lsn("nope"), None);
        assert_eq!(parse_lsn("1/"), None);
    }
}
