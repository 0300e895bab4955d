//! Clock comparison: every handshake message and heartbeat carries wall-clock stamps, and
//! the receiver estimates the peer's clock offset the way NTP does, keeping the sample
//! with the shortest round trip among the last few.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::body::Stamps;

/// Samples kept; the estimate is the one with the shortest round trip among them.
const WINDOW: usize = 8;

/// An estimate of how far the peer's wall clock is from ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockOffset {
    /// Peer clock minus local clock, in microseconds: positive when the peer is ahead.
    pub offset_micros: i64,
    /// Round-trip time of the sample the estimate comes from; the true offset lies within
    /// half of it of `offset_micros` (as long as neither clock stepped meanwhile).
    pub round_trip: Duration,
}

impl ClockOffset {
    /// The absolute size of the offset.
    pub fn magnitude(&self) -> Duration {
        Duration::from_micros(self.offset_micros.unsigned_abs())
    }

    /// Whether the peer's clock is ahead of ours.
    pub fn peer_is_ahead(&self) -> bool {
        self.offset_micros > 0
    }
}

impl fmt::Display for ClockOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = if self.peer_is_ahead() {
            "ahead of"
        } else {
            "behind"
        };
        write!(
            f,
            "peer clock {:.3} s {side} the local clock (± {:.3} s)",
            self.magnitude().as_secs_f64(),
            self.round_trip.as_secs_f64() / 2.0
        )
    }
}

/// The local wall clock in microseconds since the Unix epoch (0 if the clock is before
/// 1970, which no stamp uses).
pub(crate) fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_micros()).ok())
        .unwrap_or(0)
}

/// Collects offset samples from received stamps and produces the stamps to send.
#[derive(Debug, Default)]
pub(crate) struct ClockTracker {
    /// `tx` of the last stamps received from the peer and our time of receiving them.
    last_received: Option<(i64, i64)>,
    samples: VecDeque<ClockOffset>,
}

impl ClockTracker {
    /// Records stamps received at local time `rx`.
    pub(crate) fn received(&mut self, stamps: Stamps, rx: i64) {
        if let Some(sample) = sample(stamps, rx) {
            if self.samples.len() == WINDOW {
                self.samples.pop_front();
            }
            self.samples.push_back(sample);
        }
        if stamps.tx != 0 {
            self.last_received = Some((stamps.tx, rx));
        }
    }

    /// Stamps to send at local time `now`, echoing the last stamps received.
    pub(crate) fn outgoing(&self, now: i64) -> Stamps {
        let (echo_tx, echo_rx) = self.last_received.unwrap_or((0, 0));
        Stamps {
            tx: now,
            echo_tx,
            echo_rx,
        }
    }

    /// The current estimate: the recent sample with the shortest round trip.
    pub(crate) fn estimate(&self) -> Option<ClockOffset> {
        self.samples.iter().min_by_key(|s| s.round_trip).copied()
    }
}

/// One NTP sample: t1 = our send (echoed), t2 = peer receive, t3 = peer send, t4 = our
/// receive. offset = ((t2 - t1) + (t3 - t4)) / 2, round trip = (t4 - t1) - (t3 - t2).
/// Stamps that would overflow or give a negative round trip are ignored.
fn sample(stamps: Stamps, t4: i64) -> Option<ClockOffset> {
    let Stamps {
        tx: t3,
        echo_tx: t1,
        echo_rx: t2,
    } = stamps;
    if t1 == 0 || t2 == 0 || t3 == 0 {
        return None;
    }
    let there = i128::from(t2) - i128::from(t1);
    let back = i128::from(t3) - i128::from(t4);
    let round_trip = (i128::from(t4) - i128::from(t1)) - (i128::from(t3) - i128::from(t2));
    let round_trip = u64::try_from(round_trip).ok()?;
    let offset_micros = i64::try_from((there + back) / 2).ok()?;
    Some(ClockOffset {
        offset_micros,
        round_trip: Duration::from_micros(round_trip),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// With symmetric delays the estimate is the true offset, whatever the offset.
        #[test]
        fn symmetric_delays_give_the_true_offset(
            start in 1_000_000_000_000_000i64..2_000_000_000_000_000,
            offset in -3_600_000_000i64..3_600_000_000,
            delay in 0i64..1_000_000,
            hold in 0i64..5_000_000,
        ) {
            let t1 = start;
            let t2 = t1 + delay + offset;
            let t3 = t2 + hold;
            let t4 = t3 - offset + delay;
            let s = sample(Stamps { tx: t3, echo_tx: t1, echo_rx: t2 }, t4).unwrap();
            prop_assert_eq!(s.offset_micros, offset);
            prop_assert_eq!(s.round_trip, Duration::from_micros(u64::try_from(2 * delay).unwrap()));
        }

        /// With any delays the true offset lies within half the round trip of the estimate.
        #[test]
        fn the_error_is_bounded_by_half_the_round_trip(
            start in 1_000_000_000_000_000i64..2_000_000_000_000_000,
            offset in -3_600_000_000i64..3_600_000_000,
            there in 0i64..1_000_000,
            back in 0i64..1_000_000,
            hold in 0i64..5_000_000,
        ) {
            let t1 = start;
            let t2 = t1 + there + offset;
            let t3 = t2 + hold;
            let t4 = t3 - offset + back;
            let s = sample(Stamps { tx: t3, echo_tx: t1, echo_rx: t2 }, t4).unwrap();
            let error = (s.offset_micros - offset).unsigned_abs();
            prop_assert!(error <= u64::try_from(s.round_trip.as_micros()).unwrap() / 2 + 1);
        }

        #[test]
        fn any_stamps_never_panic(tx in any::<i64>(), echo_tx in any::<i64>(), echo_rx in any::<i64>(), rx in any::<i64>()) {
            let mut tracker = ClockTracker::default();
            tracker.received(Stamps { tx, echo_tx, echo_rx }, rx);
            let _ = tracker.estimate();
            let _ = tracker.outgoing(rx);
        }
    }

    #[test]
    fn tracker_echoes_and_keeps_the_shortest_round_trip() {
        let mut a = ClockTracker::default();
        let mut b = ClockTracker::default();
        // b's clock runs 500 ms ahead of a's.
        let skew = 500_000;
        let mut now_a = 1_700_000_000_000_000i64;
        for delay in [9_000i64, 1_000, 5_000] {
            let to_b = a.outgoing(now_a);
            now_a += delay;
            b.received(to_b, now_a + skew);
            let to_a = b.outgoing(now_a + skew);
            now_a += delay;
            a.received(to_a, now_a);
        }
        let est = a.estimate().unwrap();
        assert_eq!(est.offset_micros, skew);
        assert_eq!(est.round_trip, Duration::from_micros(2_000));
        assert!(est.peer_is_ahead());
        assert_eq!(
            est.to_string(),
            "peer clock 0.500 s ahead of the local clock (± 0.001 s)"
        );
        // b's round trips had unequal legs, so its estimate is only within half of one.
        let b_est = b.estimate().unwrap();
        let error = (b_est.offset_micros + skew).unsigned_abs();
        assert!(
            u128::from(error) <= b_est.round_trip.as_micros() / 2,
            "{b_est:?}"
        );
    }
}
