//! Time: the event clock, and ISO 8601 timestamps for the records.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::escape::push_digits;

/// Epoch seconds from a wall-clock reading taken once, advanced by the monotonic clock.
pub fn now() -> f64 {
    static ANCHOR: OnceLock<(f64, Instant)> = OnceLock::new();
    let (wall, started) = ANCHOR.get_or_init(|| {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |since| since.as_secs_f64());
        (wall, Instant::now())
    });
    wall + started.elapsed().as_secs_f64()
}

/// `"YYYY-MM-DDTHH:MM:SS.ffffffZ"` (quoted) for epoch seconds, in UTC.
pub fn push_iso_utc(out: &mut Vec<u8>, epoch_seconds: f64) {
    thread_local! {
        // Consecutive events mostly fall in the same second: reuse its formatted date and time.
        static LAST_SECOND: std::cell::Cell<(i64, [u8; 21])> = const { std::cell::Cell::new((i64::MIN, [0; 21])) };
    }
    let micros_total = (epoch_seconds * 1_000_000.0).round() as i64;
    let seconds_total = micros_total.div_euclid(1_000_000);
    let micros = micros_total.rem_euclid(1_000_000) as u64;
    let (cached_second, mut prefix) = LAST_SECOND.get();
    if cached_second != seconds_total {
        let days = seconds_total.div_euclid(86_400);
        let second_of_day = seconds_total.rem_euclid(86_400) as u64;
        let (year, month, day) = civil_from_days(days);
        let mut text = Vec::with_capacity(21);
        text.push(b'"');
        push_digits(&mut text, year.clamp(0, 9999) as u64, 4);
        text.push(b'-');
        push_digits(&mut text, u64::from(month), 2);
        text.push(b'-');
        push_digits(&mut text, u64::from(day), 2);
        text.push(b'T');
        push_digits(&mut text, second_of_day / 3600, 2);
        text.push(b':');
        push_digits(&mut text, second_of_day % 3600 / 60, 2);
        text.push(b':');
        push_digits(&mut text, second_of_day % 60, 2);
        text.push(b'.');
        prefix.copy_from_slice(&text);
        LAST_SECOND.set((seconds_total, prefix));
    }
    out.extend_from_slice(&prefix);
    push_digits(out, micros, 6);
    out.extend_from_slice(b"Z\"");
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar (H. Hinnant).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_timestamps() {
        let render = |ts: f64| {
            let mut out = Vec::new();
            push_iso_utc(&mut out, ts);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(render(0.0), "\"1970-01-01T00:00:00.000000Z\"");
        assert_eq!(render(951_782_400.5), "\"2000-02-29T00:00:00.500000Z\"");
        assert_eq!(render(1_795_607_566.123_456), "\"2026-11-25T11:52:46.123456Z\"");
        assert_eq!(render(1_795_607_566.999_999), "\"2026-11-25T11:52:46.999999Z\"");
        assert_eq!(render(1_795_607_567.0), "\"2026-11-25T11:52:47.000000Z\"");
    }
}
