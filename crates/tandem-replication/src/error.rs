//! The crate's error type.

use std::path::PathBuf;
use std::time::Duration;

use tandem_core::NodeId;

use crate::status::{Position, ReplicationState};

/// Every error of this crate.
///
/// Display texts do not repeat their source; print the chain (for example with anyhow's
/// `{:#}`) to see the whole story.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The replication settings cannot work (the text names the setting and the problem).
    #[error("invalid replication configuration: {0}")]
    Config(String),
    /// The database reported an error.
    #[error("database {what}")]
    Database {
        /// What was being done.
        what: String,
        /// The database error.
        #[source]
        source: sqlx::Error,
    },
    /// A declared table cannot be replicated (missing, no primary key, odd names).
    #[error("table `{table}` cannot be replicated: {problem}")]
    Table {
        /// The table name as declared.
        table: String,
        /// What is wrong.
        problem: String,
    },
    /// The database has not been initialized for replication (`mp_replication init`).
    #[error(
        "this database is not initialized for replication; run `mp_replication init -n <1|2> -r <remote>` first"
    )]
    NotInitialized,
    /// The operation does not fit the node's current state (the text says why and what to do).
    #[error("{0}")]
    State(String),
    /// The replication service that owns the peer link is not running on this node.
    #[error(
        "the replication service is not running on this node (it runs in the node agent; \
         start it, or `mp_replication service` for a standalone node)"
    )]
    ServiceNotRunning,
    /// A command waited for the replication service to start on this node (as the
    /// node agent does within about a second of `init`) and it did not.
    #[error(
        "the replication service is not running on this node: waited {:.1} s for it to start; \
         start the node agent (`failover agent`, which hosts it) or, on a node without the \
         agent, `mp_replication service`, then run the command again",
        waited.as_secs_f64()
    )]
    ServiceNotStarted {
        /// How long the command waited.
        waited: Duration,
    },
    /// A request to the replication service failed; the text is the service's reason.
    #[error("{0}")]
    Request(String),
    /// A request to the replication service did not finish in time.
    #[error("{what} did not finish within {limit:?}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        limit: Duration,
    },
    /// [`wait_replicated`](crate::ReplicationBackend::wait_replicated) gave up: the standby
    /// has not acknowledged `position` within the time limit, or the database could not
    /// be asked within it.
    #[error(
        "position {position} is not replicated after {limit:?} (the standby's last acknowledgement \
         seen: {acked})"
    )]
    NotReplicated {
        /// The position waited for.
        position: Position,
        /// The position the standby was last seen to have acknowledged: 0 when the
        /// database could not be asked in time.
        acked: Position,
        /// How long it waited.
        limit: Duration,
    },
    /// [`wait_replicated_while_connected`](crate::SqliteBackend::wait_replicated_while_connected)
    /// stopped waiting because this node's replication service has lost the standby: its peer link
    /// is down, so no acknowledgement can come until the link is back. The commit
    /// stays captured and reaches the standby when it returns; whether to accept the
    /// write meanwhile (the `degrade` policy) or refuse it (`strict`) is the caller's
    /// choice.
    #[error(
        "node {peer} is not connected ({reason}), so position {position} is not replicated yet; \
         it is kept and sent once the peer link is back"
    )]
    StandbyUnreachable {
        /// The position waited for.
        position: Position,
        /// The standby's node id.
        peer: NodeId,
        /// Why the replication service counts the standby as gone, as it recorded it.
        reason: String,
    },
    /// [`wait_replicated`](crate::ReplicationBackend::wait_replicated) cannot succeed because
    /// replication is not running on this node.
    #[error("replication is {state} on this node, so position {position} will not be replicated")]
    NotReplicating {
        /// The position waited for.
        position: Position,
        /// The node's replication state.
        state: ReplicationState,
    },
    /// A changelog batch does not follow the applied position: applying it would skip
    /// changes, so it was refused and nothing changed.
    #[error(
        "changelog gap: batch follows position {prev} but this node applied up to {applied}; \
         nothing was applied"
    )]
    Gap {
        /// The position the batch follows.
        prev: u64,
        /// The position applied here.
        applied: u64,
    },
    /// The peer's changes were refused because of the witness's fencing token (see
    /// [`Fence`](crate::Fence)): it announced no token, or one older than the highest
    /// this node has seen, so it is a stale holder of the leader key. Nothing was applied.
    #[error(
        "refused changes from node {peer}: {} (a stale holder); they are applied again \
         once node {peer} holds the leader key with a token of at least {floor}",
        stale_peer(*.token, *.floor)
    )]
    Fenced {
        /// The peer's node id.
        peer: NodeId,
        /// The token the peer announced, if any.
        token: Option<u64>,
        /// The highest token this node has seen.
        floor: u64,
    },
    /// This node does not stream its changes to the peer: the peer announced a fencing
    /// token newer than the one this node holds, so this node is the stale holder.
    #[error(
        "node {node} does not stream its changes to node {peer}: {} (node {node} is a stale \
         holder)",
        own_token(*.mine, *.peer, *.token)
    )]
    StaleHolder {
        /// This node's id.
        node: NodeId,
        /// The token this node holds, if any.
        mine: Option<u64>,
        /// The peer's node id.
        peer: NodeId,
        /// The token the peer announced.
        token: u64,
    },
    /// The TLS certificates of the PostgreSQL replication connection could not be made
    /// (the text says which and why).
    #[error("TLS certificates of the replication connection: {0}")]
    Tls(String),
    /// A message from the peer could not be decoded or broke the protocol.
    #[error("replication protocol: {0}")]
    Protocol(String),
    /// The peer link failed.
    #[error("peer link")]
    Peer(#[from] tandem_peer::Error),
    /// A PostgreSQL program (`pg_ctl`, `pg_basebackup`, `pg_rewind`, ...) failed or
    /// could not start. The text ends with the last lines of its output; all of it is
    /// kept in `log`.
    #[error(
        "{program} failed while {what} ({status}); its output is kept in {}{}",
        log.display(),
        if tail.is_empty() { String::new() } else { format!(": {tail}") }
    )]
    Program {
        /// The program.
        program: String,
        /// What it was doing.
        what: String,
        /// Its exit status, or why it did not run.
        status: String,
        /// The file with its whole output.
        log: PathBuf,
        /// The last lines of its output.
        tail: String,
    },
    /// A file under the state directory could not be written or read.
    #[error("{what} {}", path.display())]
    File {
        /// What was being done.
        what: String,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps a database error with what was being done.
    pub(crate) fn db(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Error {
        let what = what.into();
        move |source| Error::Database { what, source }
    }

    /// Wraps an I/O error with what was being done to which file.
    pub(crate) fn file(
        what: impl Into<String>,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let (what, path) = (what.into(), path.into());
        move |source| Error::File { what, path, source }
    }
}

fn stale_peer(token: Option<u64>, floor: u64) -> String {
    match token {
        Some(t) => format!("its witness token {t} is older than token {floor} seen here"),
        None => format!("it announces no witness token, and token {floor} was seen here"),
    }
}

fn own_token(mine: Option<u64>, peer: NodeId, token: u64) -> String {
    match mine {
        Some(m) => format!("its witness token {m} is older than node {peer}'s token {token}"),
        None => format!("it holds no witness token while node {peer} announces token {token}"),
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Renders an error with its whole source chain on one line.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
