//! Backend-neutral status types, the seed's two-column status table and the seed's final
//! line. Nothing here knows SQLite: a PostgreSQL backend fills the same [`Status`].

use std::fmt;

use serde::{Deserialize, Serialize};
use tandem_core::NodeId;

/// A position in the active node's stream of changes: what
/// [`wait_replicated`](crate::ReplicationBackend::wait_replicated) waits for. For the
/// SQLite backend it is the changelog sequence number of a change; a PostgreSQL backend
/// uses the WAL position (LSN). Positions of one stream only grow.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Position(pub u64);

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The seed's "Replication Type" row: this server, or the other node of the same site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicationType {
    /// This server ("Local").
    Local,
    /// The other node of the site ("Intra-site").
    IntraSite,
}

impl fmt::Display for ReplicationType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplicationType::Local => "Local",
            ReplicationType::IntraSite => "Intra-site",
        })
    }
}

/// The replication state of one node: the seed's "State" row. In the seed both nodes
/// show `Active` once replication is switched on, whichever node is the active server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ReplicationState {
    /// `init` ran; replication waits to be switched on (from either node).
    Initialized,
    /// Switched on: changes flow between the nodes.
    Active,
    /// Switched off by an operator.
    Off,
    /// `switch-on -S -F from-sync` is copying the peer's data.
    Syncing,
    /// Switched itself off because the backlog passed its limit (an alarm says more).
    Suspended,
    /// The last switch-on or sync failed; run it again.
    Failed,
    /// Not known (the remote node when it was never reached).
    Unknown,
}

impl ReplicationState {
    /// The word stored in the database and used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicationState::Initialized => "initialized",
            ReplicationState::Active => "active",
            ReplicationState::Off => "off",
            ReplicationState::Syncing => "syncing",
            ReplicationState::Suspended => "suspended",
            ReplicationState::Failed => "failed",
            ReplicationState::Unknown => "unknown",
        }
    }

    /// Every state, in declaration order.
    pub const ALL: [ReplicationState; 7] = [
        ReplicationState::Initialized,
        ReplicationState::Active,
        ReplicationState::Off,
        ReplicationState::Syncing,
        ReplicationState::Suspended,
        ReplicationState::Failed,
        ReplicationState::Unknown,
    ];

    /// Parses [`as_str`](Self::as_str); anything else is `None`.
    pub fn parse(text: &str) -> Option<ReplicationState> {
        ReplicationState::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

impl fmt::Display for ReplicationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplicationState::Initialized => "Initialized",
            ReplicationState::Active => "Active",
            ReplicationState::Off => "Off",
            ReplicationState::Syncing => "Syncing",
            ReplicationState::Suspended => "Suspended",
            ReplicationState::Failed => "Failed",
            ReplicationState::Unknown => "Unknown",
        })
    }
}

/// The seed's "Status" row: `Local` for this server, `Connected` for a reachable peer.
/// `Diverged` is tandem's own word for a peer that answers but whose data has forked
/// from this node's (both took writes, or a PostgreSQL standby replayed past the point
/// where its primary's timeline branched off): nothing flows until
/// `switch-on -S -F from-sync` on the node that should follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum LinkStatus {
    /// This server.
    Local,
    /// The peer link is up.
    Connected,
    /// The peer link is down (the status detail says why).
    NotConnected,
    /// The peer answers, but the two nodes' data has forked: the standby applies
    /// nothing until it is resynchronised (an alarm says how).
    Diverged,
}

impl fmt::Display for LinkStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LinkStatus::Local => "Local",
            LinkStatus::Connected => "Connected",
            LinkStatus::NotConnected => "Not connected",
            LinkStatus::Diverged => "Diverged",
        })
    }
}

/// One column of the status table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// Local or intra-site.
    pub replication_type: ReplicationType,
    /// The site number, if known.
    pub site: Option<u16>,
    /// The node id, if known (serialized as the number 1 or 2).
    pub node: Option<NodeId>,
    /// The replication state.
    pub state: ReplicationState,
    /// Local, connected or not.
    pub status: LinkStatus,
    /// Whether the node's database takes application writes (the active node), if known.
    pub writable: Option<bool>,
}

/// What `mp_replication status` shows: both columns of the seed's table plus backlog,
/// lag, positions and alarms. Serializes to the `--json` form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The backend (`sqlite` or `postgres`).
    pub backend: String,
    /// This server.
    pub local: ServerStatus,
    /// The other node.
    pub remote: ServerStatus,
    /// Changes written on the active node that the standby has not acknowledged yet,
    /// if known.
    pub backlog: Option<u64>,
    /// How old the oldest unacknowledged change is, in milliseconds (0 when caught up),
    /// if known.
    pub lag_ms: Option<u64>,
    /// The newest position of this node's own stream of changes.
    pub head: Position,
    /// The newest position of this node's stream that the peer acknowledged.
    pub acked: Position,
    /// The newest position of the peer's stream applied on this node.
    pub applied: Position,
    /// The newest position of the peer's stream, as last reported by the peer.
    pub remote_head: Option<Position>,
    /// Whether the replication service runs on this node.
    pub service_running: bool,
    /// Why the remote node is not connected, or when it was last seen.
    pub remote_detail: Option<String>,
    /// Why this node, which should apply the peer's changes, does not (a PostgreSQL
    /// standby whose WAL receiver is not streaming, with PostgreSQL's last word on it; a
    /// SQLite standby's apply failure). `None` when it applies, or has nothing to apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_detail: Option<String>,
    /// Alarms of this node and of the peer, newest first.
    pub alarms: Vec<String>,
    /// The WAL positions of a PostgreSQL pair (`None` for SQLite).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal: Option<WalStatus>,
    /// A resynchronisation from the peer under way on this node, if one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync: Option<crate::postgres::ResyncProgress>,
}

/// WAL positions of a PostgreSQL pair, from `pg_stat_replication` (on the primary) and
/// `pg_stat_wal_receiver` (on the standby). LSNs are in PostgreSQL's `X/Y` form.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WalStatus {
    /// This node's WAL position: written (primary) or replayed (standby).
    pub lsn: String,
    /// The newest WAL the standby has flushed, if known.
    pub flushed: Option<String>,
    /// The newest WAL the standby has replayed, if known.
    pub replayed: Option<String>,
    /// Bytes of WAL between the primary's position and the standby's replay (the LSN
    /// lag), if known.
    pub lag_bytes: Option<u64>,
    /// How the primary waits for the standby (`sync`, `async`, `potential`), if it
    /// streams.
    pub sync_state: Option<String>,
    /// The primary's `synchronous_standby_names` (empty: commits do not wait).
    pub synchronous_standby_names: String,
    /// Whether this node is the primary (else the positions are this standby's).
    #[serde(default)]
    pub primary: bool,
    /// On a standby: the primary's WAL position, if it answers.
    #[serde(default)]
    pub primary_lsn: Option<String>,
}

impl WalStatus {
    /// The `WAL:` line of the status text.
    pub fn render(&self) -> String {
        let or_unknown = |v: &Option<String>| v.clone().unwrap_or_else(|| "unknown".into());
        if !self.primary {
            return format!(
                "WAL: received {}, replayed {} on this node; the primary is at {}\n",
                or_unknown(&self.flushed),
                or_unknown(&self.replayed),
                or_unknown(&self.primary_lsn)
            );
        }
        let waits = if self.synchronous_standby_names.is_empty() {
            "commits do not wait for the standby".to_owned()
        } else {
            format!(
                "commits wait for {} ({})",
                self.synchronous_standby_names,
                self.sync_state.as_deref().unwrap_or("not streaming")
            )
        };
        format!(
            "WAL: {} on this node; standby flushed {}, replayed {}; {waits}\n",
            self.lsn,
            or_unknown(&self.flushed),
            or_unknown(&self.replayed)
        )
    }

    /// A WAL status with this node's position only.
    pub fn new(lsn: impl Into<String>) -> WalStatus {
        WalStatus {
            lsn: lsn.into(),
            ..WalStatus::default()
        }
    }
}

impl Status {
    /// Whether this node has applied everything the peer last reported (so promoting it
    /// loses nothing the peer wrote), when that is known.
    pub fn caught_up(&self) -> Option<bool> {
        self.remote_head.map(|head| self.applied >= head)
    }

    /// The seed's table (`| Local Server | Remote Server |` and the five rows), followed
    /// by backlog, lag, roles, the remote detail and any alarms, one per line.
    pub fn render(&self) -> String {
        let column = |s: &ServerStatus, title: &str| {
            let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
            vec![
                title.to_owned(),
                format!("Replication Type: {}", s.replication_type),
                format!("Site: {}", or_dash(s.site.map(|v| v.to_string()))),
                format!("Node: {}", or_dash(s.node.map(|v| v.to_string()))),
                format!("State: {}", s.state),
                format!("Status: {}", s.status),
            ]
        };
        let left = column(&self.local, "Local Server");
        let right = column(&self.remote, "Remote Server");
        let mut out = render_two_columns(&left, &right);
        out.push('\n');
        let backlog = match (self.backlog, &self.wal) {
            (_, Some(wal)) => match wal.lag_bytes {
                Some(n) => format!("{n} byte{} of WAL", if n == 1 { "" } else { "s" }),
                None => "unknown".to_owned(),
            },
            (Some(n), None) => format!("{n} change{}", if n == 1 { "" } else { "s" }),
            (None, None) => "unknown".to_owned(),
        };
        out.push_str(&format!("Backlog: {backlog}\n"));
        let lag = match self.lag_ms {
            Some(ms) => format!("{ms} ms"),
            None => "unknown".to_owned(),
        };
        out.push_str(&format!("Lag: {lag}\n"));
        out.push_str(&format!(
            "Database: {} on this node, {} on the remote node\n",
            role_word(self.local.writable),
            role_word(self.remote.writable)
        ));
        if let Some(wal) = &self.wal {
            out.push_str(&wal.render());
        }
        if let Some(resync) = &self.resync {
            out.push_str(&resync.render());
        }
        if let Some(detail) = &self.local_detail {
            out.push_str(&format!("Local: {detail}\n"));
        }
        if let Some(detail) = &self.remote_detail {
            out.push_str(&format!("Remote: {detail}\n"));
        }
        for alarm in &self.alarms {
            out.push_str(&format!("Alarm: {alarm}\n"));
        }
        out
    }
}

fn role_word(writable: Option<bool>) -> &'static str {
    match writable {
        Some(true) => "writable (active)",
        Some(false) => "read-only (standby)",
        None => "unknown",
    }
}

/// Renders two columns as the seed prints them: a header row, a dash rule, then rows,
/// each cell padded to its column's widest cell.
fn render_two_columns(left: &[String], right: &[String]) -> String {
    let width = |cells: &[String]| cells.iter().map(|c| c.chars().count()).max().unwrap_or(0);
    let (wl, wr) = (width(left), width(right));
    let pad = |text: &str, w: usize| {
        let n = w.saturating_sub(text.chars().count());
        format!("{text}{}", " ".repeat(n))
    };
    let mut out = String::new();
    for (i, (l, r)) in left.iter().zip(right).enumerate() {
        out.push_str(&format!("| {} | {} |\n", pad(l, wl), pad(r, wr)));
        if i == 0 {
            out.push_str(&format!(
                "|{}|{}|\n",
                "-".repeat(wl + 2),
                "-".repeat(wr + 2)
            ));
        }
    }
    out
}

/// The seed's final line of a command that changes replication:
/// `Database Replication changes for this machine (Host = H; IP Addr = A) is SUCCESSFUL`,
/// or `... is FAILED: <reason>`.
pub fn outcome_line(host: &str, ip: &str, failure: Option<&str>) -> String {
    let head =
        format!("Database Replication changes for this machine (Host = {host}; IP Addr = {ip}) is");
    match failure {
        None => format!("{head} SUCCESSFUL"),
        Some(reason) => format!("{head} FAILED: {}", one_line(reason)),
    }
}

/// Folds a multi-line text into one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed_status() -> Status {
        let side = |t, node, status, writable| ServerStatus {
            replication_type: t,
            site: Some(1),
            node: Some(node),
            state: ReplicationState::Active,
            status,
            writable: Some(writable),
        };
        Status {
            backend: "sqlite".into(),
            local: side(ReplicationType::Local, NodeId::One, LinkStatus::Local, true),
            remote: side(
                ReplicationType::IntraSite,
                NodeId::Two,
                LinkStatus::Connected,
                false,
            ),
            backlog: Some(0),
            lag_ms: Some(0),
            head: Position(10),
            acked: Position(10),
            applied: Position(0),
            remote_head: Some(Position(0)),
            service_running: true,
            remote_detail: None,
            local_detail: None,
            alarms: vec![],
            wal: None,
            resync: None,
        }
    }

    #[test]
    fn the_table_is_the_seeds() {
        let text = seed_status().render();
        let expected = "\
| Local Server            | Remote Server                |
|-------------------------|------------------------------|
| Replication Type: Local | Replication Type: Intra-site |
| Site: 1                 | Site: 1                      |
| Node: 1                 | Node: 2                      |
| State: Active           | State: Active                |
| Status: Local           | Status: Connected            |

Backlog: 0 changes
Lag: 0 ms
Database: writable (active) on this node, read-only (standby) on the remote node
";
        assert_eq!(text, expected);
    }

    #[test]
    fn unknown_remote_and_alarms_are_shown() {
        let mut status = seed_status();
        status.remote.site = None;
        status.remote.state = ReplicationState::Unknown;
        status.remote.status = LinkStatus::NotConnected;
        status.remote_detail = Some("the replication service is not running".into());
        status.alarms = vec!["backlog past 10 changes".into()];
        status.backlog = Some(1);
        let text = status.render();
        assert!(text.contains("| Site: -"), "{text}");
        assert!(text.contains("State: Unknown"), "{text}");
        assert!(text.contains("Status: Not connected"), "{text}");
        assert!(text.contains("Backlog: 1 change\n"), "{text}");
        assert!(
            text.contains("Remote: the replication service is not running"),
            "{text}"
        );
        assert!(text.contains("Alarm: backlog past 10 changes"), "{text}");
    }

    #[test]
    fn a_diverged_peer_keeps_the_seeds_rows_and_says_why_here() {
        let mut status = seed_status();
        status.local.writable = Some(false);
        status.remote.status = LinkStatus::Diverged;
        status.local_detail = Some("not applying: the timelines forked".into());
        let text = status.render();
        assert!(
            text.contains("| Status: Local           | Status: Diverged "),
            "{text}"
        );
        assert_eq!(text.lines().count(), 12, "{text}");
        assert!(
            text.contains("\nLocal: not applying: the timelines forked\n"),
            "{text}"
        );
    }

    #[test]
    fn link_statuses_keep_their_json_words() {
        for (status, word) in [
            (LinkStatus::Local, "\"local\""),
            (LinkStatus::Connected, "\"connected\""),
            (LinkStatus::NotConnected, "\"not-connected\""),
            (LinkStatus::Diverged, "\"diverged\""),
        ] {
            assert_eq!(serde_json::to_string(&status).ok().as_deref(), Some(word));
        }
        // A status written before `local_detail` existed still reads.
        let mut old = serde_json::to_value(seed_status()).unwrap_or_default();
        if let Some(map) = old.as_object_mut() {
            map.remove("local_detail");
        }
        let back: Status = serde_json::from_value(old).unwrap_or_else(|_| seed_status());
        assert_eq!(back.local_detail, None);
        assert_eq!(back, seed_status());
    }

    #[test]
    fn node_and_site_ids_are_plain_numbers_in_json() {
        let mut status = seed_status();
        status.remote.node = None;
        let json = serde_json::to_value(&status).unwrap_or_default();
        assert_eq!(json["local"]["node"], serde_json::json!(1));
        assert_eq!(json["local"]["site"], serde_json::json!(1));
        assert_eq!(json["remote"]["node"], serde_json::Value::Null);
        // A node other than 1 or 2 does not read back as a status.
        let mut bad = serde_json::to_value(seed_status()).unwrap_or_default();
        bad["remote"]["node"] = serde_json::json!(3);
        assert!(serde_json::from_value::<Status>(bad).is_err());
    }

    #[test]
    fn postgres_positions_are_shown_in_bytes_of_wal() {
        let mut status = seed_status();
        status.backend = "postgres".into();
        let mut wal = WalStatus::new("0/3000148");
        wal.primary = true;
        wal.flushed = Some("0/3000148".into());
        wal.replayed = Some("0/3000100".into());
        wal.lag_bytes = Some(72);
        wal.sync_state = Some("sync".into());
        wal.synchronous_standby_names = "tandem_node2".into();
        status.wal = Some(wal.clone());
        let text = status.render();
        assert!(text.contains("Backlog: 72 bytes of WAL\n"), "{text}");
        assert!(
            text.contains(
                "WAL: 0/3000148 on this node; standby flushed 0/3000148, replayed 0/3000100; \
                 commits wait for tandem_node2 (sync)\n"
            ),
            "{text}"
        );
        wal.primary = false;
        wal.primary_lsn = Some("0/3000200".into());
        assert_eq!(
            wal.render(),
            "WAL: received 0/3000148, replayed 0/3000100 on this node; the primary is at 0/3000200\n"
        );
    }

    #[test]
    fn the_final_line_is_the_seeds() {
        assert_eq!(
            outcome_line("meetings1", "10.0.0.2", None),
            "Database Replication changes for this machine (Host = meetings1; IP Addr = 10.0.0.2) is SUCCESSFUL"
        );
        assert_eq!(
            outcome_line("n", "192.0.2.11", Some("peer\n  down")),
            "Database Replication changes for this machine (Host = n; IP Addr = 192.0.2.11) is FAILED: peer down"
        );
    }

    #[test]
    fn states_round_trip_their_words() {
        for s in ReplicationState::ALL {
            assert_eq!(ReplicationState::parse(s.as_str()), Some(s));
        }
        assert_eq!(ReplicationState::parse("on"), None);
    }
}
