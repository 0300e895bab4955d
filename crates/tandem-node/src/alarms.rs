//! The agent's alarm board: alarms are raised by events (the role machine's
//! alarm and fault notices, the replication status, the database size) and
//! cleared when the condition behind them is over, so the status page lists what
//! is wrong now and, apart, what was wrong recently.
//!
//! Pure data: the agent decides when a condition is over and tells the board;
//! the board keeps at most [`HISTORY`] cleared alarms, newest first.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::Alarm;

/// How many cleared alarms the board keeps for the page's history.
pub(crate) const HISTORY: usize = 50;

/// How many alarms may be active at once; the oldest go to the history first.
const MAX_ACTIVE: usize = 50;

/// What an alarm is about: which condition clears it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum AlarmKind {
    /// The peer missed its heartbeats; cleared when the link is back.
    PeerLost,
    /// The node found itself cut off (no peer, no reference address); cleared
    /// when the link is back.
    CutOff,
    /// Another host answers for the shared address, the peer claims it too, or
    /// the node stays standby because it is held elsewhere; cleared once the
    /// link is up (a single server: at once) and only one node holds the address.
    Conflict,
    /// Database replication reported a problem (suspended, split brain,
    /// diverged, failed); cleared when the replication status no longer says so.
    Replication,
    /// The database grew past its configured size; cleared when it is back under.
    DatabaseSize,
    /// A step or the boot decision failed; cleared by the next operator command
    /// or role change that succeeds.
    Fault,
}

impl AlarmKind {
    /// The kind of an alarm or fault notice of the role machine, from its text.
    pub(crate) fn of_notice(message: &str) -> AlarmKind {
        if message.starts_with("peer lost") {
            AlarmKind::PeerLost
        } else if message.starts_with("cut off") {
            AlarmKind::CutOff
        } else if message.contains("which is this node's id") {
            // Two nodes with one id: a misconfiguration, not a passing conflict.
            AlarmKind::Fault
        } else if message.starts_with("address conflict")
            || message.starts_with("another host")
            || message.contains("claims the shared address")
            || ((message.starts_with("staying standby")
                || message.starts_with("boot: staying standby"))
                && message.contains("answers for the shared address"))
        {
            AlarmKind::Conflict
        } else if message.starts_with("database replication") {
            AlarmKind::Replication
        } else {
            AlarmKind::Fault
        }
    }
}

/// Active alarms and the recent history of cleared ones.
#[derive(Debug, Clone, Default)]
pub(crate) struct AlarmBoard {
    active: Vec<Alarm>,
    history: VecDeque<Alarm>,
}

impl AlarmBoard {
    /// An empty board.
    pub(crate) fn new() -> AlarmBoard {
        AlarmBoard::default()
    }

    /// Raises an alarm unless the same message is already active. Returns
    /// whether it is new (the caller runs the alarm hook for new ones only).
    pub(crate) fn raise(&mut self, kind: AlarmKind, message: &str, now_ms: u64) -> bool {
        if self.active.iter().any(|a| a.message == message) {
            return false;
        }
        self.active.push(Alarm {
            raised_ms: now_ms,
            message: message.to_string(),
            kind,
            cleared_ms: None,
        });
        if self.active.len() > MAX_ACTIVE {
            let oldest = self.active.remove(0);
            self.retire(oldest, now_ms);
        }
        true
    }

    /// Clears every active alarm of `kind`.
    pub(crate) fn clear_kind(&mut self, kind: AlarmKind, now_ms: u64) {
        self.clear_where(now_ms, |a| a.kind == kind);
    }

    /// Clears every active alarm for which `over` says its condition is over.
    pub(crate) fn clear_where(&mut self, now_ms: u64, mut over: impl FnMut(&Alarm) -> bool) {
        let (cleared, kept): (Vec<Alarm>, Vec<Alarm>) = std::mem::take(&mut self.active)
            .into_iter()
            .partition(|a| over(a));
        self.active = kept;
        for alarm in cleared {
            self.retire(alarm, now_ms);
        }
    }

    fn retire(&mut self, mut alarm: Alarm, now_ms: u64) {
        alarm.cleared_ms = Some(now_ms);
        self.history.push_front(alarm);
        self.history.truncate(HISTORY);
    }

    /// The active alarms, oldest first.
    pub(crate) fn active(&self) -> &[Alarm] {
        &self.active
    }

    /// Whether an alarm of `kind` is active.
    pub(crate) fn has(&self, kind: AlarmKind) -> bool {
        self.active.iter().any(|a| a.kind == kind)
    }

    /// The cleared alarms, newest first.
    pub(crate) fn history(&self) -> Vec<Alarm> {
        self.history.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alarm_is_raised_once_and_moves_to_the_history_when_cleared() {
        let mut board = AlarmBoard::new();
        assert!(board.raise(
            AlarmKind::PeerLost,
            "peer lost: it missed its heartbeats",
            1
        ));
        assert!(!board.raise(
            AlarmKind::PeerLost,
            "peer lost: it missed its heartbeats",
            2
        ));
        assert!(board.raise(AlarmKind::DatabaseSize, "database is 12 MB", 3));
        assert_eq!(board.active().len(), 2);
        board.clear_kind(AlarmKind::PeerLost, 10);
        assert_eq!(board.active().len(), 1);
        assert!(!board.has(AlarmKind::PeerLost));
        let history = board.history();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].cleared_ms, Some(10));
        assert_eq!(history[0].raised_ms, 1);
        // Raised again after it cleared: active again, the old one stays history.
        assert!(board.raise(
            AlarmKind::PeerLost,
            "peer lost: it missed its heartbeats",
            20
        ));
        assert!(board.has(AlarmKind::PeerLost));
    }

    #[test]
    fn the_history_and_the_active_list_stay_bounded() {
        let mut board = AlarmBoard::new();
        for i in 0..200u64 {
            board.raise(AlarmKind::Fault, &format!("fault {i}"), i);
        }
        assert_eq!(board.active().len(), MAX_ACTIVE);
        assert_eq!(board.active()[0].message, "fault 150");
        board.clear_kind(AlarmKind::Fault, 500);
        assert!(board.active().is_empty());
        assert_eq!(board.history().len(), HISTORY);
        assert_eq!(board.history()[0].cleared_ms, Some(500));
    }

    #[test]
    fn notices_are_classified_by_what_clears_them() {
        for (text, kind) in [
            ("peer lost: it missed its heartbeats", AlarmKind::PeerLost),
            (
                "cut off: the peer is lost and the reference address does not answer",
                AlarmKind::CutOff,
            ),
            (
                "address conflict: 02:00:00:00:00:01 also answers for the shared address",
                AlarmKind::Conflict,
            ),
            (
                "node 1 claims the shared address with epoch 3, older than this node's epoch 4",
                AlarmKind::Conflict,
            ),
            (
                "database replication failed: suspended",
                AlarmKind::Replication,
            ),
            (
                "staying standby: 02:00:00:00:00:01 answers for the shared address",
                AlarmKind::Conflict,
            ),
            ("claim-shared-address failed: busy", AlarmKind::Fault),
            (
                "the peer claims the shared address as node 1, which is this node's id; give \
                 the nodes distinct ids",
                AlarmKind::Fault,
            ),
            (
                "staying standby: the probe failed: no socket",
                AlarmKind::Fault,
            ),
        ] {
            assert_eq!(AlarmKind::of_notice(text), kind, "{text}");
        }
    }
}
