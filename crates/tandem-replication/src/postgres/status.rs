//! The seed's status table for a PostgreSQL pair: this node from its state file and
//! its server (`pg_stat_replication` on a primary, `pg_stat_wal_receiver` on a
//! standby), the remote node from the stream and from its own server over SQL
//! (`tandem.state`, `tandem.node`, `tandem.site`). When one server is a primary and
//! the other a standby that does not stream, it also reads the timelines, the
//! primary's timeline history and the standby's server log, for [`super::diverge`]:
//! a forked pair reads `Diverged`, and a standby says why it does not apply.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sqlx::postgres::PgConnection;

use super::diverge::{self, Divergence, Facts, LogFacts, Side, Switch};
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
    /// A primary's current timeline; a standby's latest checkpoint's or minimum
    /// recovery end's, whichever is newer.
    timeline: Option<u32>,
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
    /// As [`Local::timeline`].
    timeline: Option<u32>,
    /// A standby's WAL receiver streams.
    streaming: bool,
}

/// A server's timeline: a primary's from the name of its current WAL file, a
/// standby's from its control file.
const TIMELINE_SQL: &str = "SELECT CASE WHEN pg_is_in_recovery() THEN \
     (SELECT greatest(c.timeline_id, r.min_recovery_end_timeline, \
        (SELECT max(received_tli) FROM pg_stat_wal_receiver)) \
      FROM pg_control_checkpoint() c, pg_control_recovery() r)::bigint \
     ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint END";

async fn timeline(conn: &mut PgConnection) -> Option<u32> {
    let tli: Option<i64> = sqlx::query_scalar(TIMELINE_SQL)
        .fetch_one(&mut *conn)
        .await
        .ok()?;
    tli.and_then(|t| u32::try_from(t).ok())
}

/// The timeline history of a primary on timeline `tli` (empty for timeline 1), read
/// over SQL (`pg_read_binary_file`, which init grants the replication role).
async fn history(conn: &mut PgConnection, tli: u32) -> Option<Vec<Switch>> {
    if tli <= 1 {
        return Some(Vec::new());
    }
    let bytes: Vec<u8> = sqlx::query_scalar("SELECT pg_read_binary_file($1)")
        .bind(format!("pg_wal/{tli:08X}.history"))
        .fetch_one(&mut *conn)
        .await
        .ok()?;
    diverge::parse_history(&String::from_utf8_lossy(&bytes))
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
    out.timeline = timeline(conn).await;
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
    let streaming = !primary && PostgresBackend::streaming(conn).await.unwrap_or(false);
    Ok(Remote {
        primary,
        lsn,
        state,
        node,
        site,
        timeline: timeline(conn).await,
        streaming,
    })
}

pub(super) async fn status(backend: &PostgresBackend, state: &PgState) -> Result<Status> {
    let mut alarms = state.alarms(backend.cfg());
    let (local, mut local_conn) = local_side(backend, state, &mut alarms).await;
    let (remote, remote_error, mut peer_conn) = remote_side(backend, state).await;
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
    let remote_detail = if !connected {
        remote_error
    } else if !stream_up && state.state == ReplicationState::Active {
        Some(format!(
            "PostgreSQL at {} answers, but no WAL streams between the nodes",
            state.remote
        ))
    } else {
        None
    };
    // A standby that should stream and does not: what its log says, and whether the
    // pair has forked.
    let standby_stalled = local.as_ref().is_some_and(|l| !l.primary && !l.streaming)
        && state.following
        && state.state == ReplicationState::Active;
    let log = if standby_stalled {
        server_log_facts(backend, local_conn.as_mut()).await
    } else {
        LogFacts::default()
    };
    // Two servers that were never switched on together (right after init, or one
    // switched off) are apart by design, not forked.
    let both_on =
        state.state == ReplicationState::Active && remote_state == ReplicationState::Active;
    let divergence = match &local {
        Some(l) if both_on => {
            let (mine, theirs) = (local_conn.as_mut(), peer_conn.as_mut());
            check_divergence(l, remote.as_ref(), &log, mine, theirs).await
        }
        _ => None,
    };
    drop((local_conn, peer_conn));
    let stalled = standby_stalled.then_some(&log);
    stream_alarms(
        backend,
        state,
        divergence.as_ref(),
        local.as_ref(),
        stalled,
        &mut alarms,
    );
    let local_detail = standby_stalled
        .then(|| stalled_detail(backend, state, divergence.as_ref(), &log, remote.is_some()));
    let figures = wal_figures(local.as_ref(), remote.as_ref());
    let link = match (connected, &divergence) {
        (true, Some(_)) => LinkStatus::Diverged,
        (true, None) => LinkStatus::Connected,
        (false, _) => LinkStatus::NotConnected,
    };
    let mut remote_status = remote_server(state, remote.as_ref(), remote_state, link);
    remote_status.writable = remote_status
        .writable
        .or_else(|| local.as_ref().filter(|_| stream_up).map(|l| !l.primary));
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
        remote: remote_status,
        backlog: figures.wal.as_ref().and_then(|w| w.lag_bytes),
        lag_ms: figures.lag_ms,
        head: figures.head,
        acked: figures.acked,
        applied: figures.applied,
        remote_head: remote.as_ref().and_then(|r| lsn(&r.lsn)).map(Position),
        service_running: backend.service_running(),
        remote_detail,
        local_detail,
        alarms,
        wal: figures.wal,
        resync: super::resync::read(&backend.server.log_dir),
    })
}

/// This node's server: what it says and the connection (kept for the divergence
/// checks), or `None` with an alarm saying why not.
async fn local_side(
    backend: &PostgresBackend,
    state: &PgState,
    alarms: &mut Vec<String>,
) -> (Option<Local>, Option<PgConnection>) {
    let mut conn = match backend.connect_local().await {
        Ok(conn) => conn,
        Err(e) => {
            alarms.push(format!(
                "PostgreSQL does not answer on this node: {}",
                crate::error::chain(&e)
            ));
            return (None, None);
        }
    };
    match local(&mut conn, &state.peer_app_name()).await {
        Ok(l) => (Some(l), Some(conn)),
        Err(e) => {
            alarms.push(crate::error::chain(&e));
            (None, None)
        }
    }
}

/// The peer's server: what it says and the connection, or why it does not answer.
async fn remote_side(
    backend: &PostgresBackend,
    state: &PgState,
) -> (Option<Remote>, Option<String>, Option<PgConnection>) {
    match backend.connect_peer(state).await {
        Ok(mut conn) => match remote(&mut conn).await {
            Ok(r) => (Some(r), None, Some(conn)),
            Err(e) => (None, Some(crate::error::chain(&e)), None),
        },
        Err(e) => (None, Some(crate::error::chain(&e)), None),
    }
}

/// The alarms of a pair that does not stream: forked (two primaries, or a standby
/// whose timeline forked), or a standby stalled (`stalled`, with its log's facts) for
/// longer than [`STALLED_ALARM_AFTER_MS`] for another reason.
fn stream_alarms(
    backend: &PostgresBackend,
    state: &PgState,
    divergence: Option<&Divergence>,
    local: Option<&Local>,
    stalled: Option<&LogFacts>,
    alarms: &mut Vec<String>,
) {
    let (me, peer) = (state.node.get(), state.node.peer().get());
    match (divergence, local) {
        (Some(Divergence::BothPrimaries), _) => alarms.push(
            "both nodes are primaries: run `switch-on -S -F from-sync` on the one that should \
             follow (its data is replaced by its peer's)"
                .to_owned(),
        ),
        (Some(d), Some(l)) => {
            let standby = if l.primary { peer } else { me };
            alarms.push(format!(
                "diverged: node {standby} (the standby) cannot stream, its timeline has forked \
                 from the primary's ({d}); run `mp_replication switch-on -S -F from-sync` on \
                 node {standby} (pg_rewind, or a fresh copy when it cannot rewind)"
            ));
        }
        _ => {}
    }
    if let Some(log) = stalled
        && divergence.is_none()
        && backend
            .last_contact()
            .is_none_or(|at| crate::util::now_ms().saturating_sub(at) >= STALLED_ALARM_AFTER_MS)
    {
        alarms.push(format!(
            "node {me} (standby) does not stream from node {peer}: {}; see this node's \
             status page or `mp_replication status` for PostgreSQL's last word",
            diverge::reason_kind(log.last_error.as_deref())
        ));
    }
}

/// A position from an LSN's text.
fn lsn(text: &Option<String>) -> Option<u64> {
    text.as_deref().and_then(parse_lsn)
}

/// The WAL positions and lag of the status.
#[derive(Debug, Default)]
struct Figures {
    wal: Option<WalStatus>,
    head: Position,
    acked: Position,
    applied: Position,
    lag_ms: Option<u64>,
}

/// The WAL positions and lag, from this node's server (and on a standby the
/// primary's position, when it answers).
fn wal_figures(local: Option<&Local>, remote: Option<&Remote>) -> Figures {
    let mut f = Figures::default();
    let Some(l) = local else {
        return f;
    };
    let here = lsn(&l.lsn).unwrap_or(0);
    f.head = Position(here);
    let mut w = WalStatus::new(l.lsn.clone().unwrap_or_else(|| "unknown".into()));
    w.synchronous_standby_names = l.names.clone();
    w.primary = l.primary;
    if l.primary {
        if let Some(s) = &l.standby {
            w.flushed = s.flushed.clone();
            w.replayed = s.replayed.clone();
            w.sync_state = Some(s.sync_state.clone());
            f.acked = Position(lsn(&s.flushed).unwrap_or(0));
            w.lag_bytes = lsn(&s.replayed).map(|r| here.saturating_sub(r));
            // replay_lag keeps its last value for a while after the standby caught
            // up; a standby with nothing left to replay lags by nothing.
            f.lag_ms = s
                .lag_ms
                .map(|v| v.max(0).unsigned_abs())
                .or(Some(0))
                .filter(|_| s.state == "streaming")
                .map(|ms| if w.lag_bytes == Some(0) { 0 } else { ms });
        }
    } else {
        f.applied = Position(here);
        w.flushed = l.received.clone();
        w.replayed = l.lsn.clone();
        w.primary_lsn = remote.and_then(|r| r.lsn.clone());
        if let Some(peer) = remote.and_then(|r| lsn(&r.lsn)) {
            w.lag_bytes = Some(peer.saturating_sub(here));
            if w.lag_bytes == Some(0) {
                f.lag_ms = Some(0);
            }
        }
    }
    f.wal = Some(w);
    f
}

/// The remote row of the table, from what the peer's server says (its `writable`
/// is `None` when it does not answer).
fn remote_server(
    state: &PgState,
    remote: Option<&Remote>,
    remote_state: ReplicationState,
    link: LinkStatus,
) -> ServerStatus {
    let parse_site = |t: &Option<String>| t.as_deref().and_then(|v| v.parse::<u16>().ok());
    let parse_node = |t: &Option<String>| {
        t.as_deref()
            .and_then(|v| v.parse::<tandem_core::NodeId>().ok())
    };
    ServerStatus {
        replication_type: ReplicationType::IntraSite,
        site: remote
            .and_then(|r| parse_site(&r.site))
            .or(Some(state.site)),
        node: Some(
            remote
                .and_then(|r| parse_node(&r.node))
                .unwrap_or(state.node.peer()),
        ),
        state: remote_state,
        status: link,
        writable: remote.map(|r| r.primary),
    }
}

/// How long a standby may go without streaming before its own alarm says so (a WAL
/// receiver restarting after a blip is not worth an alarm).
const STALLED_ALARM_AFTER_MS: u64 = 5_000;

/// How much of the end of the server log is read.
const LOG_TAIL_BYTES: u64 = 64 << 10;

/// Whether the pair has forked: the facts both servers give, the primary's history
/// read only when a standby does not stream.
async fn check_divergence(
    local: &Local,
    remote: Option<&Remote>,
    log: &LogFacts,
    local_conn: Option<&mut PgConnection>,
    peer_conn: Option<&mut PgConnection>,
) -> Option<Divergence> {
    let remote = remote?;
    let lsn = |t: &Option<String>| t.as_deref().and_then(parse_lsn);
    let local_side = Side {
        primary: local.primary,
        timeline: local.timeline.max(log.streamed_timeline),
        lsn: lsn(&local.lsn),
        streaming: local.streaming,
    };
    let remote_side = Side {
        primary: remote.primary,
        timeline: remote.timeline,
        lsn: lsn(&remote.lsn),
        streaming: remote.streaming,
    };
    let mut facts = Facts {
        local: local_side,
        remote: Some(remote_side),
        history: None,
        logged_fork: log.fork.clone(),
    };
    // The primary's history is read only when the standby is on an older timeline:
    // not in the steady state.
    let (standby_tli, primary_tli, conn) = match (local.primary, remote.primary) {
        (false, true) => (local_side.timeline, remote.timeline, peer_conn),
        (true, false) => (remote.timeline, local.timeline, local_conn),
        _ => (None, None, None),
    };
    if let (Some(s), Some(p), Some(conn)) = (standby_tli, primary_tli, conn)
        && s < p
    {
        facts.history = history(conn, p).await;
    }
    diverge::divergence(&facts)
}

/// Why this standby does not apply, for its own status.
fn stalled_detail(
    backend: &PostgresBackend,
    state: &PgState,
    divergence: Option<&Divergence>,
    log: &LogFacts,
    peer_answers: bool,
) -> String {
    let head = format!(
        "not applying: this standby does not stream from {}",
        state.remote
    );
    if let Some(d) = divergence {
        return format!(
            "{head}: diverged ({d}); run `mp_replication switch-on -S -F from-sync` here"
        );
    }
    let why = diverge::reason_kind(log.last_error.as_deref());
    let last = match &log.last_error {
        Some(e) => format!("; PostgreSQL's last error: {e}"),
        None => format!(
            "; no error in the server log since it last streamed (log: {})",
            server_log_path(backend, None).display()
        ),
    };
    let peer = if peer_answers {
        ""
    } else {
        "; the primary's server does not answer tandem either"
    };
    format!("{head}: {why}{last}{peer}")
}

/// What the server log says since the WAL receiver last streamed.
async fn server_log_facts(backend: &PostgresBackend, conn: Option<&mut PgConnection>) -> LogFacts {
    let current: Option<String> = match conn {
        Some(conn) => sqlx::query_scalar("SELECT pg_current_logfile()")
            .fetch_one(conn)
            .await
            .ok()
            .flatten(),
        None => None,
    };
    let path = server_log_path(backend, current.as_deref());
    tokio::task::spawn_blocking(move || read_tail(&path, LOG_TAIL_BYTES))
        .await
        .ok()
        .flatten()
        .map(|text| diverge::read_log(&text))
        .unwrap_or_default()
}

/// The server's log file: the logging collector's current file if it runs, else
/// where the postmaster's stderr goes (`pg_ctl -l`, whoever started it), else the
/// file tandem's `pg_ctl start` writes.
fn server_log_path(backend: &PostgresBackend, current: Option<&str>) -> PathBuf {
    let data = &backend.cfg().data_dir;
    if let Some(file) = current {
        let path = Path::new(file);
        return if path.is_absolute() {
            path.to_path_buf()
        } else {
            data.join(path)
        };
    }
    let stderr = std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
        .and_then(|pid| std::fs::read_link(format!("/proc/{pid}/fd/2")).ok())
        .filter(|p| p.is_file());
    stderr.unwrap_or_else(|| backend.server.server_log())
}

/// The last `limit` bytes of a file, as text.
fn read_tail(path: &Path, limit: u64) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(limit))).ok()?;
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
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
