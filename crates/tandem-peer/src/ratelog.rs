//! Rate-limited log lines: at most a burst of lines per window, then silence, then one
//! line saying how many similar lines were suppressed.
//!
//! A flood of hostile connections must not turn into a flood of log lines (one WARN per
//! refused connection once wrote 88 MB in 50 s). The listener keeps a [`LogLimiter`]
//! per kind of line and asks it before writing one.

use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

/// Lines written per window before the rest are suppressed.
pub(crate) const LOG_BURST: u32 = 10;
/// The window of [`LOG_BURST`].
pub(crate) const LOG_WINDOW: Duration = Duration::from_secs(10);

/// Decides which lines of one kind are written. At most `burst` lines per window; the
/// suppressed ones are counted and reported in one line when the window ends (call
/// [`LogLimiter::flush`] at [`LogLimiter::flush_at`]), at the next line after it, or
/// when the limiter is dropped.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    /// What the lines are about, for the summary line.
    what: &'static str,
    burst: u32,
    window: Duration,
    started: Instant,
    written: u32,
    suppressed: u64,
}

impl LogLimiter {
    /// A limiter for lines about `what` (for example "refused peer link connections").
    pub(crate) fn new(what: &'static str, burst: u32, window: Duration) -> LogLimiter {
        LogLimiter {
            what,
            burst,
            window: window.max(Duration::from_millis(1)),
            started: Instant::now(),
            written: 0,
            suppressed: 0,
        }
    }

    /// Whether a line may be written now; if not, it is counted as suppressed.
    pub(crate) fn allow(&mut self) -> bool {
        let now = Instant::now();
        if now.saturating_duration_since(self.started) >= self.window {
            self.report();
            self.started = now;
            self.written = 0;
        }
        if self.written < self.burst {
            self.written += 1;
            true
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            false
        }
    }

    /// When the current window ends, if lines were suppressed in it (the caller then
    /// calls [`LogLimiter::flush`]); `None` when there is nothing to report.
    pub(crate) fn flush_at(&self) -> Option<Instant> {
        (self.suppressed > 0).then(|| self.started + self.window)
    }

    /// Reports the suppressed lines if the window has ended.
    pub(crate) fn flush(&mut self) {
        if Instant::now().saturating_duration_since(self.started) >= self.window {
            self.report();
            self.started = Instant::now();
            self.written = 0;
        }
    }

    /// The lines suppressed and not reported yet.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> u64 {
        self.suppressed
    }

    fn report(&mut self) {
        if self.suppressed == 0 {
            return;
        }
        let suppressed = std::mem::take(&mut self.suppressed);
        let since = self.started.elapsed();
        warn!(
            suppressed,
            "suppressed {suppressed} similar log lines about {} in the last {:.0?} \
             (at most {} such lines are written per {:?})",
            self.what,
            since,
            self.burst,
            self.window
        );
    }
}

impl Drop for LogLimiter {
    fn drop(&mut self) {
        self.report();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_written_then_the_rest_counted_and_reported_once() {
        let mut limiter = LogLimiter::new("tests", 3, Duration::from_secs(10));
        let allowed: Vec<bool> = (0..1000).map(|_| limiter.allow()).collect();
        assert_eq!(allowed.iter().filter(|a| **a).count(), 3);
        assert!(allowed[..3].iter().all(|a| *a));
        assert_eq!(limiter.pending(), 997);
        let due = limiter.flush_at().unwrap();
        // Not before the window ends.
        limiter.flush();
        assert_eq!(limiter.pending(), 997);
        tokio::time::sleep_until(due).await;
        limiter.flush();
        assert_eq!(limiter.pending(), 0);
        assert_eq!(limiter.flush_at(), None);
        // A new window has a new burst.
        assert!(limiter.allow());
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_limiter_never_reports() {
        let mut limiter = LogLimiter::new("tests", 3, Duration::from_secs(1));
        assert!(limiter.allow());
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(limiter.allow());
        assert_eq!(limiter.flush_at(), None);
    }
}
