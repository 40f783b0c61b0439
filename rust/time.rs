//! Time: the event clock, and ISO 8601 timestamps for the records and back (`parse_iso_micros`).

use std::cmp::Ordering;
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
    // One fixed-size copy: the compiler writes it without a call.
    let mut text = [b'0'; 29];
    text[..21].copy_from_slice(&prefix);
    let mut rest = micros;
    for digit in text[21..27].iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    text[27..].copy_from_slice(b"Z\"");
    out.extend_from_slice(&text);
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

/// Epoch microseconds of `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC), as `push_iso_utc` writes them, from
/// 1970 through 9999; None for any other text or an impossible date.
pub fn parse_iso_micros(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() != 27
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || bytes[10] != b'T'
        || bytes[13] != b':'
        || bytes[16] != b':'
        || bytes[19] != b'.'
        || bytes[26] != b'Z'
    {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        bytes[range].iter().try_fold(0i64, |value, &digit| digit.is_ascii_digit().then(|| value * 10 + i64::from(digit - b'0')))
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second, micros) = (number(11..13)?, number(14..16)?, number(17..19)?, number(20..26)?);
    if year < 1970 || !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Some(seconds * 1_000_000 + micros)
}

/// The epoch seconds nearest `micros / 1e6` that `push_iso_utc` writes as `micros` again (every
/// microsecond through year 2112 has one; later ones, more than 1 µs apart, get the nearest).
pub fn seconds_of_micros(micros: i64) -> f64 {
    let mut seconds = micros as f64 / 1e6;
    for _ in 0..2 {
        match ((seconds * 1_000_000.0).round() as i64).cmp(&micros) {
            Ordering::Less => seconds = seconds.next_up(),
            Ordering::Greater => seconds = seconds.next_down(),
            Ordering::Equal => break,
        }
    }
    seconds
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant): the inverse of `civil_from_days`.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(epoch_seconds: f64) -> String {
        let mut out = Vec::new();
        push_iso_utc(&mut out, epoch_seconds);
        String::from_utf8(out).unwrap().trim_matches('"').to_owned()
    }

    #[test]
    fn timestamps_parse_back_to_the_microseconds_written() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        // Samples up to 2^52 µs (year 2112): from there on f64 seconds are more than 1 µs apart.
        let mut samples = vec![0i64, 1, 999_999, 951_782_400_500_000, 4_102_444_799_999_999, (1i64 << 52) - 1];
        for _ in 0..100_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            samples.push((state % (1u64 << 52)) as i64);
        }
        for micros in samples {
            let seconds = seconds_of_micros(micros);
            let text = render(seconds);
            assert_eq!(parse_iso_micros(&text), Some(micros), "{text}");
            assert!((seconds - micros as f64 / 1e6).abs() <= 2e-6, "{text}");
            // And what the writer wrote for any time parses to the microseconds it rounded to.
            let written = f64::from_bits(state >> 12 | 0x41D0_0000_0000_0000);
            state = state.wrapping_mul(0x5851_F42D_4C95_7F2D).wrapping_add(1);
            assert_eq!(parse_iso_micros(&render(written)), Some((written * 1e6).round() as i64), "{written}");
        }
        assert_eq!(parse_iso_micros("9999-12-31T23:59:59.999999Z"), Some(253_402_300_799_999_999));
    }

    #[test]
    fn impossible_or_malformed_timestamps_are_refused() {
        for text in [
            "2026-02-29T00:00:00.000000Z",
            "2024-02-30T00:00:00.000000Z",
            "2026-13-01T00:00:00.000000Z",
            "2026-00-01T00:00:00.000000Z",
            "2026-01-00T00:00:00.000000Z",
            "2026-01-01T24:00:00.000000Z",
            "2026-01-01T00:60:00.000000Z",
            "2026-01-01T00:00:60.000000Z",
            "1969-12-31T23:59:59.999999Z",
            "2026-01-01T00:00:00.00000Z",
            "2026-01-01T00:00:00.000000",
            "2026-01-01 00:00:00.000000Z",
            "2026-01-01T00:00:00.0000+0Z",
            "+026-01-01T00:00:00.000000Z",
        ] {
            assert_eq!(parse_iso_micros(text), None, "{text}");
        }
        assert_eq!(parse_iso_micros("2024-02-29T00:00:00.000000Z"), Some(1_709_164_800_000_000));
    }

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
