//! Settings shared by listeners, dialers and links.

use std::time::Duration;

use tandem_core::NodeId;

use crate::key::SiteKey;

/// The default TCP port of the peer link.
pub const DEFAULT_PORT: u16 = 7451;

/// Settings of one node's end of the peer link: the site key, this node's id and the
/// timing and size limits. Build it with [`Config::new`] and the `with_` methods.
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) key: SiteKey,
    pub(crate) node_id: NodeId,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) missed_heartbeats: u32,
    pub(crate) handshake_timeout: Duration,
    pub(crate) max_message_len: usize,
    pub(crate) liveness_priority: Option<u8>,
}

impl Config {
    /// Defaults: heartbeat every second, peer lost after 3 missed heartbeats, handshake
    /// timeout 5 s, messages up to 16 MiB (larger payloads go as blobs).
    pub fn new(key: SiteKey, node_id: NodeId) -> Config {
        Config {
            key,
            node_id,
            heartbeat_interval: Duration::from_secs(1),
            missed_heartbeats: 3,
            handshake_timeout: Duration::from_secs(5),
            max_message_len: 16 << 20,
            liveness_priority: None,
        }
    }

    /// Sets how often a heartbeat is sent (at least 1 ms). The peer applies its miss
    /// count to the interval this node announces.
    pub fn with_heartbeat_interval(mut self, interval: Duration) -> Config {
        self.heartbeat_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Sets after how many heartbeat intervals without any frame the peer counts as lost
    /// (at least 1).
    pub fn with_missed_heartbeats(mut self, missed: u32) -> Config {
        self.missed_heartbeats = missed.max(1);
        self
    }

    /// Sets how long connecting plus the handshake may take (at least 1 ms).
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Config {
        self.handshake_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Sets the longest message this node accepts; it is announced to the peer, whose
    /// `send` refuses longer ones.
    pub fn with_max_message_len(mut self, len: usize) -> Config {
        self.max_message_len = len;
        self
    }

    /// Runs a [`Link`](crate::Link)'s liveness thread (its heartbeat datagrams, see
    /// the crate docs) under `SCHED_FIFO` at `priority` (1-99; 0 leaves the normal
    /// scheduling), like keepalived's `vrrp_rt_priority`. Needs `CAP_SYS_NICE`
    /// (root); without it the thread logs a warning and runs at normal priority.
    pub fn with_liveness_priority(mut self, priority: u8) -> Config {
        self.liveness_priority = (priority > 0).then_some(priority.min(99));
        self
    }

    /// The liveness thread's real-time priority, if any.
    pub fn liveness_priority(&self) -> Option<u8> {
        self.liveness_priority
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The site key.
    pub fn key(&self) -> &SiteKey {
        &self.key
    }

    /// The heartbeat interval.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    /// The number of missed heartbeats after which the peer counts as lost.
    pub fn missed_heartbeats(&self) -> u32 {
        self.missed_heartbeats
    }

    /// The handshake timeout.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// The longest message this node accepts.
    pub fn max_message_len(&self) -> usize {
        self.max_message_len
    }
}
