//! Whether the two clusters of a PostgreSQL pair have forked, and why a standby does
//! not stream: pure decisions from facts PostgreSQL gives, so that they can be tested
//! without a server.
//!
//! A standby can only stream from its primary if the WAL it replayed is part of the
//! primary's history. The primary's history is its current timeline plus, for each
//! ancestor timeline, the WAL position where it branched off (the timeline history
//! file `pg_wal/<TLI>.history`: `parent-timeline <TAB> switch-point <TAB> reason`).
//! The pair has *diverged* when:
//! - both servers are primaries (both took writes);
//! - the standby is on a timeline the primary never had, or on an ancestor timeline
//!   but replayed past the point where the primary's line branched off it (a former
//!   primary that kept writing after its peer was promoted, or that was demoted
//!   without `pg_rewind`);
//! - the standby is on the primary's timeline but ahead of it (and not streaming:
//!   the two positions are read a moment apart);
//! - or PostgreSQL said so itself in the standby's server log since it last streamed
//!   ("new timeline N forked off current database system timeline M before current
//!   recovery point", "requested starting point ... is not in this server's history").
//!
//! The timeline verdicts hold whether or not the standby's WAL receiver streams at
//! the moment: a diverged standby asks for its WAL from the start of a segment, so
//! it may stream the primary's copy of its old timeline up to the fork point for a
//! moment before PostgreSQL stops it again, every few seconds. Its timeline is then
//! the one its WAL receiver streams (`received_tli`), never older than its control
//! file says. What the log says counts only while it does not stream.

use std::fmt;

/// One line of a timeline history file: `timeline` ended at `end`, where its child
/// branched off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Switch {
    /// The ancestor timeline.
    pub(crate) timeline: u32,
    /// The first WAL position that is not part of it on the child's line.
    pub(crate) end: u64,
}

/// Parses a timeline history file. Blank lines and `#` comments are skipped, as
/// PostgreSQL does; any other line that does not read as `timeline <TAB> X/Y ...`
/// makes the whole file unreadable (`None`): a half-read history must not declare a
/// standby diverged.
pub(crate) fn parse_history(text: &str) -> Option<Vec<Switch>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let timeline = fields.next()?.parse::<u32>().ok()?;
        let end = super::parse_lsn(fields.next()?)?;
        out.push(Switch { timeline, end });
    }
    Some(out)
}

/// What one server of the pair says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Side {
    /// It takes writes (`NOT pg_is_in_recovery()`).
    pub(crate) primary: bool,
    /// Its timeline, if known (a primary's current one; a standby's replay timeline as
    /// best known).
    pub(crate) timeline: Option<u32>,
    /// Its WAL position: written (primary) or replayed (standby), if known.
    pub(crate) lsn: Option<u64>,
    /// A standby's WAL receiver streams.
    pub(crate) streaming: bool,
}

/// Everything the decision looks at.
#[derive(Debug, Clone, Default)]
pub(crate) struct Facts {
    /// This node.
    pub(crate) local: Side,
    /// The peer, when it answered.
    pub(crate) remote: Option<Side>,
    /// The primary's timeline history (empty on timeline 1), when it was read.
    pub(crate) history: Option<Vec<Switch>>,
    /// What this node's server log said about a fork since it last started streaming
    /// (only looked at when this node is the standby).
    pub(crate) logged_fork: Option<String>,
}

/// How the pair has forked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Divergence {
    /// Both servers take writes.
    BothPrimaries,
    /// The standby replayed past the point where the primary's line left its timeline.
    PastForkPoint {
        /// The standby's timeline.
        timeline: u32,
        /// Where the primary's line branched off it.
        fork: u64,
        /// Where the standby is.
        at: u64,
        /// The primary's timeline.
        primary_timeline: u32,
    },
    /// The standby's timeline is not in the primary's history.
    NotInHistory {
        /// The standby's timeline.
        timeline: u32,
        /// The primary's timeline.
        primary_timeline: u32,
    },
    /// The standby is on the primary's timeline but past its end.
    Ahead {
        /// The timeline of both.
        timeline: u32,
        /// Where the standby is.
        at: u64,
        /// Where the primary is.
        primary_at: u64,
    },
    /// The standby's server log says so.
    Logged(String),
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lsn = |v: u64| format!("{:X}/{:X}", v >> 32, v & 0xFFFF_FFFF);
        match self {
            Divergence::BothPrimaries => f.write_str("both servers are primaries"),
            Divergence::PastForkPoint {
                timeline,
                fork,
                at,
                primary_timeline,
            } => write!(
                f,
                "the standby replayed timeline {timeline} to {}, past {} where the primary's \
                 timeline {primary_timeline} branched off it",
                lsn(*at),
                lsn(*fork)
            ),
            Divergence::NotInHistory {
                timeline,
                primary_timeline,
            } => write!(
                f,
                "the standby is on timeline {timeline}, which is not in the history of the \
                 primary's timeline {primary_timeline}"
            ),
            Divergence::Ahead {
                timeline,
                at,
                primary_at,
            } => write!(
                f,
                "the standby is at {} on timeline {timeline}, ahead of the primary at {}",
                lsn(*at),
                lsn(*primary_at)
            ),
            Divergence::Logged(line) => write!(f, "PostgreSQL says: {line}"),
        }
    }
}

/// Whether the pair has diverged (see the module doc). `None` when it has not, or
/// when the facts do not say (the peer did not answer, a timeline is unknown).
pub(crate) fn divergence(facts: &Facts) -> Option<Divergence> {
    let remote = facts.remote?;
    let local = facts.local;
    let (standby, primary, standby_is_local) = match (local.primary, remote.primary) {
        (true, true) => return Some(Divergence::BothPrimaries),
        (false, false) => return None,
        (false, true) => (local, remote, true),
        (true, false) => (remote, local, false),
    };
    if !standby.streaming
        && standby_is_local
        && let Some(line) = &facts.logged_fork
    {
        return Some(Divergence::Logged(line.clone()));
    }
    let (timeline, primary_timeline) = (standby.timeline?, primary.timeline?);
    let at = standby.lsn?;
    if timeline == primary_timeline {
        // The two positions are read a moment apart: a standby that streams may
        // well read ahead of its busy primary's earlier reading.
        let primary_at = primary.lsn?;
        return (at > primary_at && !standby.streaming).then_some(Divergence::Ahead {
            timeline,
            at,
            primary_at,
        });
    }
    if timeline > primary_timeline {
        return Some(Divergence::NotInHistory {
            timeline,
            primary_timeline,
        });
    }
    let history = facts.history.as_ref()?;
    match history.iter().find(|s| s.timeline == timeline) {
        None => Some(Divergence::NotInHistory {
            timeline,
            primary_timeline,
        }),
        Some(switch) if at > switch.end => Some(Divergence::PastForkPoint {
            timeline,
            fork: switch.end,
            at,
            primary_timeline,
        }),
        Some(_) => None,
    }
}

/// What a standby's server log says since its WAL receiver last started streaming:
/// the timeline it streamed last, a fork PostgreSQL reported, and the last error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LogFacts {
    /// The timeline of the last "started streaming WAL from primary ... on timeline N".
    pub(crate) streamed_timeline: Option<u32>,
    /// The last line after it that reports a fork.
    pub(crate) fork: Option<String>,
    /// The last error (`FATAL` or `ERROR`) after it, from the message on.
    pub(crate) last_error: Option<String>,
}

/// Reads the tail of a server log (see [`LogFacts`]). Lines are cut at their severity
/// word, so the log line prefix (time, pid) does not matter.
pub(crate) fn read_log(text: &str) -> LogFacts {
    let mut out = LogFacts::default();
    for line in text.lines() {
        if let Some(rest) = after(line, "started streaming WAL from primary at ") {
            out.streamed_timeline = rest
                .rsplit_once("on timeline ")
                .and_then(|(_, t)| t.trim().parse().ok())
                .or(out.streamed_timeline);
            out.fork = None;
            out.last_error = None;
            continue;
        }
        let forked = line.contains("forked off current database system timeline")
            || line.contains("is not in this server's history")
            || line.contains("is not a child of this server's history")
            || line.contains("does not contain minimum recovery point");
        let message = severity_on(line);
        if forked {
            out.fork = Some(message.clone());
        }
        if line.contains("FATAL:") || line.contains("ERROR:") {
            out.last_error = Some(message);
        }
    }
    out
}

/// The text after `needle` in `line`.
fn after<'a>(line: &'a str, needle: &str) -> Option<&'a str> {
    line.find(needle).map(|i| &line[i + needle.len()..])
}

/// The line from its severity word on (`FATAL:  could not connect ...`), with runs of
/// spaces folded; the whole line when it has none.
fn severity_on(line: &str) -> String {
    let start = ["FATAL:", "ERROR:", "LOG:", "DETAIL:", "WARNING:"]
        .iter()
        .filter_map(|w| line.find(w))
        .min()
        .unwrap_or(0);
    line[start..]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A short, stable name for why a standby's WAL receiver does not stream, from its
/// last error (the alarm's words: they must not change from one look to the next).
pub(crate) fn reason_kind(last_error: Option<&str>) -> &'static str {
    let Some(e) = last_error else {
        return "its WAL receiver is not running";
    };
    if e.contains("replication slot") && e.contains("does not exist") {
        "its replication slot is missing on the primary"
    } else if e.contains("could not connect")
        || e.contains("Connection refused")
        || e.contains("timeout expired")
    {
        "it cannot connect to the primary"
    } else if e.contains("authentication failed") || e.contains("no pg_hba.conf entry") {
        "the primary refuses its login"
    } else {
        "its WAL receiver stopped with an error"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn primary(timeline: u32, lsn: u64) -> Side {
        Side {
            primary: true,
            timeline: Some(timeline),
            lsn: Some(lsn),
            streaming: false,
        }
    }

    fn standby(timeline: u32, lsn: u64, streaming: bool) -> Side {
        Side {
            primary: false,
            timeline: Some(timeline),
            lsn: Some(lsn),
            streaming,
        }
    }

    fn facts(local: Side, remote: Side, history: &[(u32, u64)]) -> Facts {
        Facts {
            local,
            remote: Some(remote),
            history: Some(
                history
                    .iter()
                    .map(|&(timeline, end)| Switch { timeline, end })
                    .collect(),
            ),
            logged_fork: None,
        }
    }

    #[test]
    fn history_files_are_read_as_postgresql_writes_them() {
        let text = "1\t0/3000148\tno recovery target specified\n\n# comment\n\
                    2\t0/5000000\tat restore point\n";
        assert_eq!(
            parse_history(text),
            Some(vec![
                Switch {
                    timeline: 1,
                    end: 0x300_0148
                },
                Switch {
                    timeline: 2,
                    end: 0x500_0000
                },
            ])
        );
        assert_eq!(parse_history(""), Some(vec![]));
        assert_eq!(parse_history("1\tnot-an-lsn\n"), None);
        assert_eq!(parse_history("x\t0/1\n"), None);
    }

    #[test]
    fn the_forks_of_a_failover_are_told_apart() {
        // Node 2 was promoted at 0/3000148 (timeline 2). Node 1, the old primary:
        let history = [(1, 0x300_0148)];
        // stopped cleanly at the fork: it can follow.
        let f = facts(
            standby(1, 0x300_0148, false),
            primary(2, 0x400_0000),
            &history,
        );
        assert_eq!(divergence(&f), None);
        // wrote past it before it was demoted: diverged.
        let f = facts(
            standby(1, 0x300_0200, false),
            primary(2, 0x400_0000),
            &history,
        );
        assert!(matches!(
            divergence(&f),
            Some(Divergence::PastForkPoint {
                fork: 0x300_0148,
                ..
            })
        ));
        // The primary sees the same from its side.
        let f = facts(
            primary(2, 0x400_0000),
            standby(1, 0x300_0200, false),
            &history,
        );
        assert!(matches!(
            divergence(&f),
            Some(Divergence::PastForkPoint { .. })
        ));
        // Streaming the old timeline's start again does not make it whole.
        let f = facts(
            standby(1, 0x300_0200, true),
            primary(2, 0x400_0000),
            &history,
        );
        assert!(matches!(
            divergence(&f),
            Some(Divergence::PastForkPoint { .. })
        ));
        // A standby streaming the old timeline up to the fork point is catching up.
        let f = facts(
            standby(1, 0x300_0100, true),
            primary(2, 0x400_0000),
            &history,
        );
        assert_eq!(divergence(&f), None);
        // A timeline the primary never had.
        let f = facts(standby(3, 0x100, false), primary(2, 0x400_0000), &history);
        assert!(matches!(
            divergence(&f),
            Some(Divergence::NotInHistory { .. })
        ));
        let f = facts(
            standby(1, 0x100, false),
            primary(3, 0x400_0000),
            &[(2, 0x10)],
        );
        assert!(matches!(
            divergence(&f),
            Some(Divergence::NotInHistory { .. })
        ));
        // Same timeline, the standby ahead of its primary.
        let f = facts(standby(1, 0x500, false), primary(1, 0x400), &[]);
        assert!(matches!(divergence(&f), Some(Divergence::Ahead { .. })));
        let f = facts(standby(1, 0x300, false), primary(1, 0x400), &[]);
        assert_eq!(divergence(&f), None);
        // A streaming standby read a moment after its primary is not ahead of it.
        let f = facts(standby(1, 0x500, true), primary(1, 0x400), &[]);
        assert_eq!(divergence(&f), None);
        // Both primaries.
        let f = facts(primary(1, 0x400), primary(2, 0x500), &[]);
        assert_eq!(divergence(&f), Some(Divergence::BothPrimaries));
        // No peer, no verdict.
        let mut f = facts(standby(1, 0x300_0200, false), primary(2, 0), &history);
        f.remote = None;
        assert_eq!(divergence(&f), None);
        // What the standby's log says counts when it is the standby.
        let mut f = facts(standby(1, 0x100, false), primary(1, 0x400), &[]);
        f.logged_fork = Some("LOG: new timeline 2 forked off".into());
        assert!(matches!(divergence(&f), Some(Divergence::Logged(_))));
        // ... only while it does not stream.
        f.local.streaming = true;
        assert_eq!(divergence(&f), None);
    }

    #[test]
    fn the_log_says_why_the_standby_does_not_stream() {
        let log = "\
2026-12-06 11:00:00.000 UTC [10] LOG:  started streaming WAL from primary at 0/3000000 on timeline 1
2026-12-06 11:00:01.000 UTC [10] FATAL:  could not receive data from WAL stream: server closed the connection unexpectedly
2026-12-06 11:00:02.000 UTC [11] LOG:  new timeline 2 forked off current database system timeline 1 before current recovery point 0/3000200
2026-12-06 11:00:03.000 UTC [12] FATAL:  could not connect to the primary server: connection to server at \"192.0.2.11\", port 5433 failed: Connection refused
";
        let facts = read_log(log);
        assert_eq!(facts.streamed_timeline, Some(1));
        assert!(
            facts
                .fork
                .as_deref()
                .is_some_and(|l| l.starts_with("LOG: new timeline 2 forked off")),
            "{facts:?}"
        );
        let error = facts.last_error.as_deref().unwrap_or_default();
        assert!(error.starts_with("FATAL: could not connect"), "{error}");
        assert_eq!(reason_kind(Some(error)), "it cannot connect to the primary");
        // Streaming again clears what came before.
        let later = format!(
            "{log}2026-12-06 11:01:00.000 UTC [13] LOG:  started streaming WAL from primary at 0/4000000 on timeline 2\n"
        );
        let facts = read_log(&later);
        assert_eq!(facts.streamed_timeline, Some(2));
        assert_eq!(facts.fork, None);
        assert_eq!(facts.last_error, None);
        assert_eq!(
            reason_kind(Some(
                "FATAL: could not start WAL streaming: ERROR: replication slot \"tandem_node2\" does not exist"
            )),
            "its replication slot is missing on the primary"
        );
        assert_eq!(reason_kind(None), "its WAL receiver is not running");
    }

    fn side() -> impl Strategy<Value = Side> {
        (
            any::<bool>(),
            proptest::option::of(0u32..5),
            proptest::option::of(0u64..1000),
            any::<bool>(),
        )
            .prop_map(|(primary, timeline, lsn, streaming)| Side {
                primary,
                timeline,
                lsn,
                streaming,
            })
    }

    proptest! {
        #[test]
        fn parsing_never_panics(text in ".{0,200}") {
            let _ = parse_history(&text);
            let _ = read_log(&text);
        }

        #[test]
        fn a_standby_in_step_or_a_silent_peer_is_never_diverged(
            local in side(),
            remote in side(),
            history in proptest::collection::vec((0u32..5, 0u64..1000), 0..4),
        ) {
            let history: Vec<Switch> =
                history.into_iter().map(|(timeline, end)| Switch { timeline, end }).collect();
            let f = Facts { local, remote: Some(remote), history: Some(history.clone()), logged_fork: None };
            let verdict = divergence(&f);
            if local.primary && remote.primary {
                prop_assert_eq!(verdict, Some(Divergence::BothPrimaries));
            } else if !local.primary && !remote.primary {
                prop_assert_eq!(verdict, None);
            } else {
                // A standby on its primary's timeline, not past it, is not diverged.
                let (s, p) = if local.primary { (remote, local) } else { (local, remote) };
                if s.streaming && s.timeline == p.timeline && s.lsn <= p.lsn {
                    prop_assert_eq!(verdict, None);
                }
            }
            let alone = Facts { local, remote: None, history: Some(history), logged_fork: None };
            prop_assert_eq!(divergence(&alone), None);
        }

        #[test]
        fn a_standby_at_or_before_the_fork_point_is_not_diverged(
            fork in 0u64..1_000_000, back in 0u64..1_000_000, tli in 1u32..10,
        ) {
            let at = fork.saturating_sub(back);
            let f = facts(standby(tli, at, false), primary(tli + 1, fork + 10), &[(tli, fork)]);
            prop_assert_eq!(divergence(&f), None);
            let f = facts(standby(tli, fork + 1 + back, false), primary(tli + 1, fork), &[(tli, fork)]);
            prop_assert!(
                matches!(divergence(&f), Some(Divergence::PastForkPoint { .. })),
                "expected a fork"
            );
        }
    }
}
