//! The wall clock in milliseconds since the Unix epoch, and the calendar text
//! tandem prints for such times, in UTC through the `time` crate.

use std::time::{SystemTime, UNIX_EPOCH};

use ::time::OffsetDateTime;

/// Milliseconds since the Unix epoch by the wall clock; 0 for a clock set
/// before 1970, `u64::MAX` past the year 584 million.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The UTC calendar time of `ms` milliseconds since the Unix epoch (the
/// milliseconds dropped); `None` past the year 999,999.
fn utc(ms: u64) -> Option<OffsetDateTime> {
    let secs = i64::try_from(ms / 1000).ok()?;
    OffsetDateTime::from_unix_timestamp(secs).ok()
}

/// `2024-05-01 12:00:00 UTC` for milliseconds since the Unix epoch, as the
/// status page shows times. A time past the year 999,999 (no clock gives one)
/// is shown as its seconds since 1970.
///
/// ```
/// assert_eq!(tandem_core::format_utc(0), "1970-01-01 00:00:00 UTC");
/// assert_eq!(tandem_core::format_utc(1_709_251_199_999), "2024-02-29 23:59:59 UTC");
/// ```
pub fn format_utc(ms: u64) -> String {
    match calendar(ms) {
        Some([y, mo, d, h, mi, se]) => {
            format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{se:02} UTC")
        }
        None => format!("{} seconds after 1970-01-01 00:00:00 UTC", ms / 1000),
    }
}

/// `20261122T080102Z` for milliseconds since the Unix epoch (UTC), as file names
/// carry times. A time past the year 999,999 is written as its seconds since
/// 1970 with a `Z`.
///
/// ```
/// assert_eq!(tandem_core::timestamp_for_file(1_795_334_462_000), "20261122T080102Z");
/// ```
pub fn timestamp_for_file(ms: u64) -> String {
    match calendar(ms) {
        Some([y, mo, d, h, mi, se]) => format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{se:02}Z"),
        None => format!("{}Z", ms / 1000),
    }
}

/// Year, month, day, hour, minute and second of `ms` in UTC, for the formats above.
fn calendar(ms: u64) -> Option<[i64; 6]> {
    let t = utc(ms)?;
    Some([
        i64::from(t.year()),
        i64::from(u8::from(t.month())),
        i64::from(t.day()),
        i64::from(t.hour()),
        i64::from(t.minute()),
        i64::from(t.second()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_timestamps_are_utc_calendar_times() {
        assert_eq!(timestamp_for_file(0), "19700101T000000Z");
        // 2026-11-22 08:01:02 UTC
        assert_eq!(timestamp_for_file(1_795_334_462_000), "20261122T080102Z");
        assert_eq!(timestamp_for_file(951_782_400_000), "20000229T000000Z");
    }

    #[test]
    fn dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_709_251_199_999), "2024-02-29 23:59:59 UTC");
        assert_eq!(format_utc(4_107_542_400_000), "2100-03-01 00:00:00 UTC");
        assert!(format_utc(u64::MAX).ends_with(" UTC"));
        assert!(timestamp_for_file(u64::MAX).ends_with('Z'));
    }

    #[test]
    fn the_clock_is_past_2020() {
        assert!(now_ms() > 1_577_836_800_000);
    }

    proptest::proptest! {
        #[test]
        fn dates_agree_with_counting_days(days in 0u64..3_000_000) {
            let (mut year, mut left) = (1970u64, days);
            let leap = |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
            loop {
                let length = if leap(year) { 366 } else { 365 };
                if left < length { break; }
                left -= length;
                year += 1;
            }
            let mut month = 1u64;
            for length in [31, if leap(year) { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31] {
                if left < length { break; }
                left -= length;
                month += 1;
            }
            let expected = format!("{year:04}-{month:02}-{:02} 00:00:00 UTC", left + 1);
            proptest::prop_assert_eq!(format_utc(days * 86_400_000), expected);
        }
    }
}
