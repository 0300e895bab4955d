//! What a probe found out.

use std::net::IpAddr;
use std::time::Duration;

use crate::MacAddr;

/// Who answered a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Responder {
    /// A host with this hardware address (ARP).
    Mac(MacAddr),
    /// A host at this IP address (ICMP echo, TCP connect).
    Ip(IpAddr),
}

impl std::fmt::Display for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Responder::Mac(mac) => write!(f, "{mac}"),
            Responder::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// One responder and how fast it answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Answer {
    /// Who answered.
    pub by: Responder,
    /// Time from sending the attempt it answered (for ARP: the latest attempt
    /// sent before the answer) to receiving the answer.
    pub rtt: Duration,
}

/// The outcome of a probe. A permission or socket problem is never an outcome:
/// it is an [`Error`](crate::Error).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// At least one host answered. `answers` holds every distinct responder
    /// once, in the order their first answer arrived; more than one hardware
    /// address answering an ARP probe is an address conflict.
    Answered {
        /// The distinct responders with the round-trip time of their first answer.
        answers: Vec<Answer>,
        /// Attempts sent before the probe finished.
        attempts: u32,
    },
    /// A TCP connect was refused: a host holds the address but nothing listens
    /// on the port.
    Refused {
        /// The address that refused.
        by: IpAddr,
        /// Time from sending the connect to the refusal.
        rtt: Duration,
        /// Attempts made.
        attempts: u32,
    },
    /// Nothing answered any attempt within the timeout. Attempts that the
    /// network could not carry (no route, interface or carrier down) count as
    /// tried and unanswered.
    Silent {
        /// Attempts made.
        tried: u32,
    },
}

impl Outcome {
    /// Whether some host answered (a refused TCP connect counts: a host is there).
    pub fn is_answered(&self) -> bool {
        !matches!(self, Outcome::Silent { .. })
    }

    /// Whether nothing answered.
    pub fn is_silent(&self) -> bool {
        matches!(self, Outcome::Silent { .. })
    }

    /// The distinct hardware addresses that answered (ARP), in order of answer.
    pub fn macs(&self) -> Vec<MacAddr> {
        self.answers()
            .iter()
            .filter_map(|a| match a.by {
                Responder::Mac(mac) => Some(mac),
                Responder::Ip(_) => None,
            })
            .collect()
    }

    /// The answers (empty unless [`Outcome::Answered`]).
    pub fn answers(&self) -> &[Answer] {
        match self {
            Outcome::Answered { answers, .. } => answers,
            _ => &[],
        }
    }

    /// Round-trip time of the first answer or refusal.
    pub fn rtt(&self) -> Option<Duration> {
        match self {
            Outcome::Answered { answers, .. } => answers.first().map(|a| a.rtt),
            Outcome::Refused { rtt, .. } => Some(*rtt),
            Outcome::Silent { .. } => None,
        }
    }

    /// Attempts made.
    pub fn attempts(&self) -> u32 {
        match self {
            Outcome::Answered { attempts, .. } | Outcome::Refused { attempts, .. } => *attempts,
            Outcome::Silent { tried } => *tried,
        }
    }

    /// Combines the outcomes of two probes of the same address made at the same
    /// time (say ARP and ICMP): answered if either was, with the answers of
    /// both (each responder once, faster first); attempts are added up.
    pub fn merge(self, other: Outcome) -> Outcome {
        let attempts = self.attempts().saturating_add(other.attempts());
        let mut answers: Vec<Answer> = self.answers().to_vec();
        for answer in other.answers() {
            if !answers.iter().any(|a| a.by == answer.by) {
                answers.push(*answer);
            }
        }
        answers.sort_by_key(|a| a.rtt);
        if !answers.is_empty() {
            return Outcome::Answered { answers, attempts };
        }
        match (self, other) {
            (Outcome::Refused { by, rtt, .. }, _) | (_, Outcome::Refused { by, rtt, .. }) => {
                Outcome::Refused { by, rtt, attempts }
            }
            _ => Outcome::Silent { tried: attempts },
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Answered { answers, attempts } => {
                write!(f, "answered by ")?;
                for (i, a) in answers.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    write!(f, "{sep}{} in {:?}", a.by, a.rtt)?;
                }
                write!(f, " ({attempts} attempt(s))")
            }
            Outcome::Refused { by, rtt, attempts } => {
                write!(f, "refused by {by} in {rtt:?} ({attempts} attempt(s))")
            }
            Outcome::Silent { tried } => write!(f, "silent after {tried} attempt(s)"),
        }
    }
}

/// Collects answers as they arrive: each responder once, first answer kept.
#[derive(Debug, Default)]
pub(crate) struct Answers(Vec<Answer>);

impl Answers {
    /// Records an answer; returns whether the responder is new.
    pub(crate) fn record(&mut self, by: Responder, rtt: Duration) -> bool {
        if self.0.iter().any(|a| a.by == by) {
            return false;
        }
        self.0.push(Answer { by, rtt });
        true
    }

    pub(crate) fn into_outcome(self, attempts: u32) -> Outcome {
        if self.0.is_empty() {
            Outcome::Silent { tried: attempts }
        } else {
            Outcome::Answered {
                answers: self.0,
                attempts,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> Responder {
        Responder::Mac(MacAddr([2, 0, 0, 0, 0, n]))
    }

    #[test]
    fn a_responder_counts_once() {
        let mut answers = Answers::default();
        assert!(answers.record(mac(1), Duration::from_millis(2)));
        assert!(!answers.record(mac(1), Duration::from_millis(1)));
        assert!(answers.record(mac(2), Duration::from_millis(3)));
        let outcome = answers.into_outcome(1);
        assert_eq!(outcome.macs().len(), 2);
        assert_eq!(outcome.rtt(), Some(Duration::from_millis(2)));
        assert_eq!(
            outcome.to_string(),
            "answered by 02:00:00:00:00:01 in 2ms, 02:00:00:00:00:02 in 3ms (1 attempt(s))"
        );
    }

    #[test]
    fn merging_keeps_every_responder_and_adds_attempts() {
        let arp = Outcome::Answered {
            answers: vec![Answer {
                by: mac(1),
                rtt: Duration::from_millis(5),
            }],
            attempts: 1,
        };
        let icmp = Outcome::Answered {
            answers: vec![Answer {
                by: Responder::Ip("192.0.2.10".parse().unwrap()),
                rtt: Duration::from_millis(1),
            }],
            attempts: 2,
        };
        let merged = arp.clone().merge(icmp);
        assert_eq!(merged.attempts(), 3);
        assert_eq!(merged.answers().len(), 2);
        assert_eq!(merged.rtt(), Some(Duration::from_millis(1)));
        assert_eq!(
            arp.clone().merge(Outcome::Silent { tried: 3 }).answers(),
            arp.answers()
        );
        let silent = Outcome::Silent { tried: 1 }.merge(Outcome::Silent { tried: 2 });
        assert_eq!(silent, Outcome::Silent { tried: 3 });
        assert!(silent.is_silent() && !silent.is_answered());
    }
}
