//! Time: the event clock, and ISO 8601 timestamps for the records and back (`parse_iso_micros`).

use std::cmp::Ordering;
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::escape::push_digits;

/// Epoch seconds from a wall-clock reading taken once, advanced by the monotonic clock (followed through
/// the CPU's time-stamp counter where the kernel's clock is that counter: see `counter`).
pub fn now() -> f64 {
    #[cfg(target_arch = "x86_64")]
    if let Some(seconds) = counter::now() {
        return seconds;
    }
    monotonic_now()
}

fn monotonic_now() -> f64 {
    static ANCHOR: OnceLock<(f64, Instant)> = OnceLock::new();
    let (wall, started) = ANCHOR.get_or_init(|| {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |since| since.as_secs_f64());
        (wall, Instant::now())
    });
    wall + started.elapsed().as_secs_f64()
}

/// The monotonic clock read through the time-stamp counter: `rdtsc` takes some 8 ns where the monotonic
/// clock's `clock_gettime` takes 20 on a virtual machine, and every event with a sink reads the time.
/// Used only where the kernel itself keeps time with the counter (its clock source is `tsc`, which it
/// picks only for a counter that is constant-rate and synchronised across CPUs).
///
/// The counter is read from an anchor (a counter value and the time it stood for) at a rate in seconds
/// per tick. The first `CALIBRATION` gives the rate; then every `STEER_INTERVAL` one caller steers the
/// clock to the monotonic clock: the new anchor is the counter's time at that moment (so time never
/// steps), and the new rate makes the two agree one interval later. The rate moves by at most
/// `MAX_RATE_CHANGE` per step, so time never runs backwards. A counter found more than `MAX_DRIFT` off
/// (a virtual machine paused and resumed, say) is given up for the monotonic clock itself.
#[cfg(target_arch = "x86_64")]
mod counter {
    use std::sync::atomic::{fence, AtomicU64, AtomicU8, Ordering};

    const CALIBRATION: f64 = 0.01;
    const STEER_INTERVAL: f64 = 0.01;
    const MAX_RATE_CHANGE: f64 = 1e-3;
    const MAX_DRIFT: f64 = 1e-3;
    const REWRITE_SPINS: usize = 64;

    const UNDECIDED: u8 = 0;
    const UNUSED: u8 = 1;
    const CALIBRATING: u8 = 2;
    const STEERED: u8 = 3;
    static MODE: AtomicU8 = AtomicU8::new(UNDECIDED);

    /// A seqlock: `version` is odd while one caller rewrites the other fields (f64s as their bits).
    static VERSION: AtomicU64 = AtomicU64::new(0);
    static ANCHOR_TICKS: AtomicU64 = AtomicU64::new(0);
    static ANCHOR_SECONDS: AtomicU64 = AtomicU64::new(0);
    static SECONDS_PER_TICK: AtomicU64 = AtomicU64::new(0);
    static STEER_AT_TICKS: AtomicU64 = AtomicU64::new(0);

    fn ticks() -> u64 {
        // SAFETY: `rdtsc` reads the time-stamp counter, which every x86_64 CPU has; it touches no memory.
        unsafe { std::arch::x86_64::_rdtsc() }
    }

    /// The time now, or None where the monotonic clock is to be read instead.
    #[inline]
    pub fn now() -> Option<f64> {
        let mode = MODE.load(Ordering::Acquire);
        if mode != STEERED {
            return start(mode);
        }
        // A rewrite takes a few loads and stores: wait it out (a child forked in the middle of one, which
        // no thread will end, reads the monotonic clock).
        for _ in 0..REWRITE_SPINS {
            let version = VERSION.load(Ordering::Acquire);
            let anchor_ticks = ANCHOR_TICKS.load(Ordering::Relaxed);
            let anchor_seconds = f64::from_bits(ANCHOR_SECONDS.load(Ordering::Relaxed));
            let seconds_per_tick = f64::from_bits(SECONDS_PER_TICK.load(Ordering::Relaxed));
            let steer_at = STEER_AT_TICKS.load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            if version % 2 == 1 || VERSION.load(Ordering::Relaxed) != version {
                std::hint::spin_loop();
                continue;
            }
            let now_ticks = ticks();
            // A counter a few ticks behind the anchor (read on another CPU) stands for the anchor's time.
            let seconds = anchor_seconds + now_ticks.saturating_sub(anchor_ticks) as f64 * seconds_per_tick;
            if now_ticks >= steer_at {
                steer(version, now_ticks, seconds, seconds_per_tick);
            }
            return Some(seconds);
        }
        None
    }

    /// Decides whether to use the counter, and calibrates its rate; None meanwhile.
    #[cold]
    fn start(mode: u8) -> Option<f64> {
        match mode {
            UNDECIDED => {
                let kernel_uses_tsc = std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
                    .is_ok_and(|source| source.trim() == "tsc");
                if !kernel_uses_tsc {
                    MODE.store(UNUSED, Ordering::Release);
                    return None;
                }
                if begin_rewrite(VERSION.load(Ordering::Relaxed)) {
                    ANCHOR_TICKS.store(ticks(), Ordering::Relaxed);
                    ANCHOR_SECONDS.store(super::monotonic_now().to_bits(), Ordering::Relaxed);
                    end_rewrite();
                    let _ = MODE.compare_exchange(UNDECIDED, CALIBRATING, Ordering::AcqRel, Ordering::Relaxed);
                }
                None
            }
            CALIBRATING => {
                let (now_ticks, now_seconds) = (ticks(), super::monotonic_now());
                let version = VERSION.load(Ordering::Acquire);
                if version % 2 == 1 || !begin_rewrite(version) {
                    return None;
                }
                let (started_ticks, started_seconds) =
                    (ANCHOR_TICKS.load(Ordering::Relaxed), f64::from_bits(ANCHOR_SECONDS.load(Ordering::Relaxed)));
                let calibrated = now_seconds - started_seconds >= CALIBRATION && now_ticks > started_ticks;
                if calibrated {
                    let seconds_per_tick = (now_seconds - started_seconds) / (now_ticks - started_ticks) as f64;
                    ANCHOR_TICKS.store(now_ticks, Ordering::Relaxed);
                    ANCHOR_SECONDS.store(now_seconds.to_bits(), Ordering::Relaxed);
                    SECONDS_PER_TICK.store(seconds_per_tick.to_bits(), Ordering::Relaxed);
                    STEER_AT_TICKS.store(now_ticks + (STEER_INTERVAL / seconds_per_tick) as u64, Ordering::Relaxed);
                }
                end_rewrite();
                if calibrated {
                    MODE.store(STEERED, Ordering::Release);
                }
                None
            }
            _ => None,
        }
    }

    /// Re-anchors at `(now_ticks, seconds)` with the rate that meets the monotonic clock one interval on;
    /// a caller that finds another one steering leaves it to that one.
    #[cold]
    fn steer(version: u64, now_ticks: u64, seconds: f64, seconds_per_tick: f64) {
        let drift = super::monotonic_now() - seconds;
        if !begin_rewrite(version) {
            return;
        }
        if drift.abs() > MAX_DRIFT {
            MODE.store(UNUSED, Ordering::Release);
            end_rewrite();
            return;
        }
        let interval_ticks = STEER_INTERVAL / seconds_per_tick;
        let steered = ((STEER_INTERVAL + drift) / interval_ticks)
            .clamp(seconds_per_tick * (1.0 - MAX_RATE_CHANGE), seconds_per_tick * (1.0 + MAX_RATE_CHANGE));
        ANCHOR_TICKS.store(now_ticks, Ordering::Relaxed);
        ANCHOR_SECONDS.store(seconds.to_bits(), Ordering::Relaxed);
        SECONDS_PER_TICK.store(steered.to_bits(), Ordering::Relaxed);
        STEER_AT_TICKS.store(now_ticks + interval_ticks as u64, Ordering::Relaxed);
        end_rewrite();
    }

    /// Makes `version` (even, as read) odd: this caller alone rewrites the fields. False if another did first.
    fn begin_rewrite(version: u64) -> bool {
        let taken = VERSION.compare_exchange(version, version + 1, Ordering::Acquire, Ordering::Relaxed).is_ok();
        if taken {
            fence(Ordering::Release);
        }
        taken
    }

    fn end_rewrite() {
        VERSION.fetch_add(1, Ordering::Release);
    }

    /// Whether the counter is in use (after its calibration).
    #[cfg(test)]
    pub fn steered() -> bool {
        MODE.load(Ordering::Acquire) == STEERED
    }
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
    fn the_clock_never_runs_backwards_and_keeps_to_the_monotonic_clock() {
        let kernel_uses_tsc = std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .is_ok_and(|source| source.trim() == "tsc");
        let threads: Vec<_> = (0..2)
            .map(|_| {
                std::thread::spawn(|| {
                    let started = Instant::now();
                    let (mut last, mut readings, mut largest_gap) = (now(), 0u64, 0.0f64);
                    // Past the calibration and many steering intervals.
                    while started.elapsed() < std::time::Duration::from_millis(150) {
                        let before = monotonic_now();
                        let seconds = now();
                        let after = monotonic_now();
                        assert!(seconds >= last, "time ran backwards by {} s", last - seconds);
                        largest_gap = largest_gap.max(before - seconds).max(seconds - after);
                        last = seconds;
                        readings += 1;
                    }
                    (readings, largest_gap)
                })
            })
            .collect();
        for thread in threads {
            let (readings, largest_gap) = thread.join().unwrap();
            assert!(readings > 1000);
            assert!(largest_gap < 20e-6, "the counter's time strayed {largest_gap} s from the monotonic clock");
        }
        #[cfg(target_arch = "x86_64")]
        assert_eq!(counter::steered(), kernel_uses_tsc);
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
