//! How long and how often to probe, and the attempt schedule that follows.

use std::time::{Duration, Instant};

use crate::Error;

/// Longest timeout or interval accepted (longer is surely a configuration slip).
pub const MAX_WAIT: Duration = Duration::from_secs(3600);
/// Most retries accepted.
pub const MAX_RETRIES: u32 = 1000;

/// When a probe that has an answer finishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Collect {
    /// At the first answer (liveness: "does anybody answer?").
    #[default]
    First,
    /// At the end of the listening window, to gather every responder (conflict
    /// detection: "does more than one host answer?").
    All,
}

/// How a probe is repeated and how long it listens.
///
/// Attempt `k` (counting from 0) is sent `k × interval` after the start, as
/// long as no answer has arrived; there are `1 + retries` attempts at most.
/// The probe listens the whole time and until `timeout` after the last attempt
/// it sent, so a silent probe takes `retries × interval + timeout`. An answer
/// to any attempt counts. With [`Collect::First`] the probe ends at the first
/// answer; with [`Collect::All`] it sends no more attempts after the first
/// answer but listens until `timeout` after the last attempt sent.
///
/// TCP connects are not overlapped: an attempt starts at its time or when the
/// previous one has failed, whichever is later, and waits up to `timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProbeConfig {
    /// How long to wait for an answer after an attempt.
    pub timeout: Duration,
    /// Time between attempts.
    pub interval: Duration,
    /// Attempts after the first.
    pub retries: u32,
    /// When to stop once answered.
    pub collect: Collect,
}

impl Default for ProbeConfig {
    /// Three attempts a second apart, one second's wait: silent after 3 s.
    fn default() -> Self {
        ProbeConfig {
            timeout: Duration::from_secs(1),
            interval: Duration::from_secs(1),
            retries: 2,
            collect: Collect::First,
        }
    }
}

impl ProbeConfig {
    /// The timing of RFC 5227 section 2.1.1 for probing before using an
    /// address: three probes one second apart (the RFC's PROBE_MIN; it draws
    /// from 1–2 s), then two seconds (ANNOUNCE_WAIT) to gather every answer.
    pub const fn rfc5227() -> ProbeConfig {
        ProbeConfig {
            timeout: Duration::from_secs(2),
            interval: Duration::from_secs(1),
            retries: 2,
            collect: Collect::All,
        }
    }

    /// Checks the values: a zero timeout could never see an answer, and waits
    /// past [`MAX_WAIT`] or retries past [`MAX_RETRIES`] are slips.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |reason: String| Err(Error::InvalidConfig { reason });
        if self.timeout.is_zero() {
            return invalid("timeout is zero: no answer could ever arrive in time".into());
        }
        if self.timeout > MAX_WAIT || self.interval > MAX_WAIT {
            return invalid(format!(
                "timeout {:?} or interval {:?} is longer than {MAX_WAIT:?}",
                self.timeout, self.interval
            ));
        }
        if self.retries > MAX_RETRIES {
            return invalid(format!("{} retries, at most {MAX_RETRIES}", self.retries));
        }
        Ok(())
    }
}

/// The attempt schedule of one probe, without IO: the caller says what happened
/// and when, and asks what to do next.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    config: ProbeConfig,
    start: Instant,
    sent: u32,
    last_sent: Option<Instant>,
    answered: bool,
}

impl Schedule {
    pub(crate) fn new(config: ProbeConfig, start: Instant) -> Schedule {
        Schedule {
            config,
            start,
            sent: 0,
            last_sent: None,
            answered: false,
        }
    }

    /// When the next attempt is due, if another one is to be sent.
    pub(crate) fn next_attempt(&self) -> Option<Instant> {
        if self.answered || self.sent > self.config.retries {
            return None;
        }
        Some(later(
            self.start,
            self.config.interval.saturating_mul(self.sent),
        ))
    }

    /// Whether an attempt is due at `now`.
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.next_attempt().is_some_and(|t| t <= now)
    }

    /// Records that an attempt was sent at `now`; returns its number (from 1).
    pub(crate) fn sent(&mut self, now: Instant) -> u32 {
        self.sent = self.sent.saturating_add(1);
        self.last_sent = Some(now);
        self.sent
    }

    /// Records an answer.
    pub(crate) fn answered(&mut self) {
        self.answered = true;
    }

    /// Attempts sent so far.
    pub(crate) fn attempts(&self) -> u32 {
        self.sent
    }

    /// When the latest attempt was sent.
    pub(crate) fn last_sent(&self) -> Option<Instant> {
        self.last_sent
    }

    /// When listening ends if nothing else is sent.
    fn listen_until(&self) -> Instant {
        match self.last_sent {
            Some(t) => later(t, self.config.timeout),
            None => self.start,
        }
    }

    /// Whether the probe is over at `now`.
    pub(crate) fn finished(&self, now: Instant) -> bool {
        if self.answered && self.config.collect == Collect::First {
            return true;
        }
        self.next_attempt().is_none() && now >= self.listen_until()
    }

    /// The next moment something is to be done (send an attempt or finish),
    /// given that nothing arrives before it.
    pub(crate) fn wake_at(&self) -> Instant {
        match self.next_attempt() {
            Some(t) => t,
            None => self.listen_until(),
        }
    }
}

/// `t + d`, or `t` plus the longest accepted wait if that overflows (it cannot
/// for validated configurations).
fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .or_else(|| t.checked_add(MAX_WAIT))
        .unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn config(timeout: u64, interval: u64, retries: u32, collect: Collect) -> ProbeConfig {
        ProbeConfig {
            timeout: ms(timeout),
            interval: ms(interval),
            retries,
            collect,
        }
    }

    /// Runs a schedule in steps of 1 ms with answers arriving at the given
    /// offsets; returns (attempt send offsets, finish offset).
    fn simulate(c: ProbeConfig, answers_at: &[u64]) -> (Vec<u64>, u64) {
        let t0 = Instant::now();
        let mut s = Schedule::new(c, t0);
        let mut sends = Vec::new();
        for step in 0..100_000u64 {
            let now = t0 + ms(step);
            if answers_at.contains(&step) && s.attempts() > 0 {
                s.answered();
            }
            while s.due(now) {
                s.sent(now);
                sends.push(step);
            }
            if s.finished(now) {
                return (sends, step);
            }
        }
        panic!("schedule never finished");
    }

    #[test]
    fn a_silent_probe_sends_every_attempt_then_waits_the_timeout() {
        let (sends, end) = simulate(config(300, 100, 2, Collect::First), &[]);
        assert_eq!(sends, [0, 100, 200]);
        assert_eq!(end, 500);
    }

    #[test]
    fn the_first_answer_ends_a_liveness_probe() {
        let (sends, end) = simulate(config(300, 100, 2, Collect::First), &[150]);
        assert_eq!(sends, [0, 100]);
        assert_eq!(end, 150);
    }

    #[test]
    fn a_conflict_probe_stops_sending_but_listens_to_the_end() {
        let (sends, end) = simulate(config(300, 100, 2, Collect::All), &[150]);
        assert_eq!(sends, [0, 100]);
        assert_eq!(end, 400);
    }

    #[test]
    fn bad_configurations_are_refused_with_the_reason() {
        let err = config(0, 100, 1, Collect::First).validate().unwrap_err();
        assert!(err.to_string().contains("timeout is zero"), "{err}");
        assert!(
            config(1, 1, MAX_RETRIES + 1, Collect::First)
                .validate()
                .is_err()
        );
        assert!(ProbeConfig::default().validate().is_ok());
        assert!(ProbeConfig::rfc5227().validate().is_ok());
    }

    proptest! {
        #[test]
        fn attempts_are_bounded_and_silence_lasts_the_documented_time(
            timeout in 1u64..200, interval in 0u64..200, retries in 0u32..5, all in any::<bool>()
        ) {
            let collect = if all { Collect::All } else { Collect::First };
            let (sends, end) = simulate(config(timeout, interval, retries, collect), &[]);
            prop_assert_eq!(sends.len() as u32, retries + 1);
            prop_assert_eq!(end, u64::from(retries) * interval + timeout);
        }

        #[test]
        fn no_attempt_follows_an_answer(
            timeout in 1u64..200, interval in 1u64..200, retries in 0u32..5, answer in 1u64..1000
        ) {
            let (sends, end) = simulate(config(timeout, interval, retries, Collect::All), &[answer]);
            prop_assert!(sends.iter().all(|s| *s <= answer));
            prop_assert!(end <= u64::from(retries) * interval + timeout);
        }
    }
}
