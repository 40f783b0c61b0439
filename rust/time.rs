//! Time: the event clock, and ISO 8601 timestamps for the records and back (`parse_iso_micros`).

use std::cmp::Ordering;
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::escape::{push_digits, DIGIT_PAIRS};

/// Epoch seconds from a wall-clock reading taken once, advanced by the monotonic clock (read through the
/// CPU's time-stamp counter where the kernel keeps time with that counter: see `counter`).
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

/// The monotonic clock read through the time-stamp counter: `rdtsc` takes some 8 ns where
/// `clock_gettime` takes 20 on a virtual machine, and every event with a sink reads the time. Used only
/// where the kernel itself keeps time with the counter (its clock source is `tsc`, which it picks only for
/// a counter that runs at a constant rate and agrees across CPUs).
///
/// The time is a line through an anchor (a counter value, the time it stood for, and the seconds per tick),
/// good up to `steer_at`, `STEER_INTERVAL` on. A reader whose counter is past it steers: it compares the
/// counter with the monotonic clock and publishes a new anchor at the counter's value then, standing for the
/// monotonic clock's reading (never for less than the old line reached at `steer_at`), with the rate of the
/// last two comparisons. Readers past `steer_at` wait for the new anchor, so no time read on the old line is
/// later than one read on the new: the clock never runs backwards, and stays within one interval's rate error
/// of the monotonic clock. Anchors are published into a ring of slots, never into the one being read, and
/// each slot's `generation` (odd while written) tells a reader that the slot it read was rewritten meanwhile.
#[cfg(target_arch = "x86_64")]
mod counter {
    use std::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, Ordering};

    use crate::simd::time_stamp_counter as ticks;

    const CALIBRATION: f64 = 0.01;
    const STEER_INTERVAL: f64 = 0.01;
    /// A comparison of the two clocks is kept only when reading the monotonic clock took less than this
    /// (a thread that lost its CPU in between would misjudge the rate).
    const MAX_COMPARISON_TICKS_SECONDS: f64 = 2e-6;

    /// Consecutive comparisons too slow to trust before the calibration gives the counter up.
    const MAX_FAILED_COMPARISONS: u32 = 64;

    const UNDECIDED: u8 = 0;
    const UNUSED: u8 = 1;
    /// The kernel keeps time with the counter; no comparison has been kept yet.
    const ANCHORING: u8 = 2;
    const CALIBRATING: u8 = 3;
    const STEERED: u8 = 4;
    static MODE: AtomicU8 = AtomicU8::new(UNDECIDED);
    static FAILED_COMPARISONS: AtomicU32 = AtomicU32::new(0);

    struct Slot {
        generation: AtomicU64,
        ticks: AtomicU64,
        /// f64 bits, as are the next two.
        seconds: AtomicU64,
        seconds_per_tick: AtomicU64,
        /// The comparison the anchor was made from (counter and monotonic seconds), for the next rate.
        compared_ticks: AtomicU64,
        compared_seconds: AtomicU64,
        steer_at: AtomicU64,
    }

    impl Slot {
        const fn new() -> Slot {
            Slot {
                generation: AtomicU64::new(0),
                ticks: AtomicU64::new(0),
                seconds: AtomicU64::new(0),
                seconds_per_tick: AtomicU64::new(0),
                compared_ticks: AtomicU64::new(0),
                compared_seconds: AtomicU64::new(0),
                steer_at: AtomicU64::new(0),
            }
        }
    }

    const SLOTS: usize = 4;
    static ANCHORS: [Slot; SLOTS] = [const { Slot::new() }; SLOTS];
    /// The number of anchors published: the current one is in slot `(CURRENT - 1) % SLOTS`.
    static CURRENT: AtomicU64 = AtomicU64::new(0);
    /// The process id of the caller steering, 0 when none steers: a child forked while its parent
    /// steered takes over.
    static STEERING: AtomicU32 = AtomicU32::new(0);

    #[derive(Clone, Copy)]
    struct Anchor {
        ticks: u64,
        seconds: f64,
        seconds_per_tick: f64,
        compared_ticks: u64,
        compared_seconds: f64,
        steer_at: u64,
    }

    impl Anchor {
        fn seconds_at(&self, ticks: u64) -> f64 {
            // A counter a few ticks behind the anchor (read on another CPU) stands for the anchor's time.
            self.seconds + ticks.saturating_sub(self.ticks) as f64 * self.seconds_per_tick
        }
    }

    /// The time now, or None where the monotonic clock is to be read instead.
    #[inline]
    pub fn now() -> Option<f64> {
        if MODE.load(Ordering::Acquire) != STEERED {
            return start();
        }
        loop {
            let published = CURRENT.load(Ordering::Acquire);
            let (anchor, now_ticks) = match read(published) {
                Some(read) => read,
                None => continue,
            };
            if now_ticks < anchor.steer_at {
                // Far behind the anchor, the counter is no clock to trust (the kernel would have left it).
                let trusted = now_ticks.saturating_add(anchor.steer_at - anchor.ticks) >= anchor.ticks;
                return trusted.then(|| anchor.seconds_at(now_ticks));
            }
            steer_or_wait(published, &anchor);
        }
    }

    /// The anchor of `published`, and the counter read while it was current; None if its slot was
    /// rewritten meanwhile.
    #[inline]
    fn read(published: u64) -> Option<(Anchor, u64)> {
        let slot = &ANCHORS[(published.wrapping_sub(1) % SLOTS as u64) as usize];
        let generation = slot.generation.load(Ordering::Acquire);
        let anchor = Anchor {
            ticks: slot.ticks.load(Ordering::Relaxed),
            seconds: f64::from_bits(slot.seconds.load(Ordering::Relaxed)),
            seconds_per_tick: f64::from_bits(slot.seconds_per_tick.load(Ordering::Relaxed)),
            compared_ticks: slot.compared_ticks.load(Ordering::Relaxed),
            compared_seconds: f64::from_bits(slot.compared_seconds.load(Ordering::Relaxed)),
            steer_at: slot.steer_at.load(Ordering::Relaxed),
        };
        let now_ticks = ticks();
        fence(Ordering::Acquire);
        let unchanged = generation.is_multiple_of(2) && slot.generation.load(Ordering::Relaxed) == generation;
        unchanged.then_some((anchor, now_ticks))
    }

    /// The counter and the monotonic clock read together: the counter's value halfway through reading
    /// the monotonic clock. None when that read took too long to be trusted.
    fn compare(seconds_per_tick: f64) -> Option<(u64, f64)> {
        let before = ticks();
        let seconds = super::monotonic_now();
        let after = ticks();
        let took = after.saturating_sub(before) as f64 * seconds_per_tick;
        (took <= MAX_COMPARISON_TICKS_SECONDS).then_some((before + (after - before) / 2, seconds))
    }

    fn publish(anchor: Anchor) {
        let published = CURRENT.load(Ordering::Relaxed);
        let slot = &ANCHORS[(published % SLOTS as u64) as usize];
        let generation = slot.generation.load(Ordering::Relaxed);
        // Odd while written; a slot left odd by a thread that did not finish (a parent's, after fork) is
        // made odd afresh.
        let writing = generation + if generation.is_multiple_of(2) { 1 } else { 2 };
        slot.generation.store(writing, Ordering::Relaxed);
        fence(Ordering::Release);
        slot.ticks.store(anchor.ticks, Ordering::Relaxed);
        slot.seconds.store(anchor.seconds.to_bits(), Ordering::Relaxed);
        slot.seconds_per_tick.store(anchor.seconds_per_tick.to_bits(), Ordering::Relaxed);
        slot.compared_ticks.store(anchor.compared_ticks, Ordering::Relaxed);
        slot.compared_seconds.store(anchor.compared_seconds.to_bits(), Ordering::Relaxed);
        slot.steer_at.store(anchor.steer_at, Ordering::Relaxed);
        slot.generation.store(writing + 1, Ordering::Release);
        CURRENT.store(published + 1, Ordering::Release);
    }

    /// Takes the steering for this process: false if another of its callers has it.
    fn take_steering() -> bool {
        let pid = std::process::id();
        let holder = STEERING.load(Ordering::Acquire);
        if holder == pid {
            return false;
        }
        STEERING.compare_exchange(holder, pid, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    fn release_steering() {
        STEERING.store(0, Ordering::Release);
    }

    /// Past `steer_at`: publishes the next anchor, or waits while another caller does.
    #[cold]
    fn steer_or_wait(published: u64, anchor: &Anchor) {
        if !take_steering() {
            std::thread::yield_now();
            return;
        }
        if CURRENT.load(Ordering::Acquire) == published {
            if let Some((now_ticks, now_seconds)) = compare(anchor.seconds_per_tick) {
                let rate_ticks = now_ticks.saturating_sub(anchor.compared_ticks);
                let seconds_per_tick = if rate_ticks > 0 && now_seconds > anchor.compared_seconds {
                    (now_seconds - anchor.compared_seconds) / rate_ticks as f64
                } else {
                    anchor.seconds_per_tick
                };
                let reached = anchor.seconds_at(anchor.steer_at.min(now_ticks));
                publish(Anchor {
                    ticks: now_ticks,
                    seconds: now_seconds.max(reached),
                    seconds_per_tick,
                    compared_ticks: now_ticks,
                    compared_seconds: now_seconds,
                    steer_at: now_ticks + (STEER_INTERVAL / seconds_per_tick) as u64,
                });
            }
        }
        release_steering();
    }

    /// Whether the kernel's clock source is the time-stamp counter.
    pub fn kernel_uses_tsc() -> bool {
        std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .is_ok_and(|source| source.trim() == "tsc")
    }

    /// Decides whether to use the counter and calibrates its rate, meanwhile answering None.
    #[cold]
    fn start() -> Option<f64> {
        match MODE.load(Ordering::Acquire) {
            UNDECIDED => {
                // Read once: the clock source file is a syscall or three, too dear to read per event.
                let decided = if kernel_uses_tsc() { ANCHORING } else { UNUSED };
                let _ = MODE.compare_exchange(UNDECIDED, decided, Ordering::AcqRel, Ordering::Acquire);
                None
            }
            ANCHORING => {
                if take_steering() {
                    // The first comparison, with a rate guess that only bounds how long it may take.
                    if let Some((now_ticks, now_seconds)) = trusted_compare() {
                        let first = Anchor {
                            ticks: now_ticks,
                            seconds: now_seconds,
                            seconds_per_tick: 0.0,
                            compared_ticks: now_ticks,
                            compared_seconds: now_seconds,
                            steer_at: u64::MAX,
                        };
                        publish(first);
                        MODE.store(CALIBRATING, Ordering::Release);
                    }
                    release_steering();
                }
                None
            }
            CALIBRATING => {
                let published = CURRENT.load(Ordering::Acquire);
                let (first, _) = read(published)?;
                if !take_steering() {
                    return None;
                }
                if let Some((now_ticks, now_seconds)) = trusted_compare() {
                    let elapsed = now_seconds - first.compared_seconds;
                    if elapsed >= CALIBRATION && now_ticks > first.compared_ticks {
                        let seconds_per_tick = elapsed / (now_ticks - first.compared_ticks) as f64;
                        publish(Anchor {
                            ticks: now_ticks,
                            seconds: now_seconds,
                            seconds_per_tick,
                            compared_ticks: now_ticks,
                            compared_seconds: now_seconds,
                            steer_at: now_ticks + (STEER_INTERVAL / seconds_per_tick) as u64,
                        });
                        MODE.store(STEERED, Ordering::Release);
                    }
                }
                release_steering();
                None
            }
            _ => None,
        }
    }

    /// A comparison for the calibration. Where reading the monotonic clock keeps taking too long to be
    /// trusted (a slow virtual clock, or an emulator such as valgrind), the counter is given up for the
    /// monotonic clock after `MAX_FAILED_COMPARISONS` in a row, rather than paying a failed comparison
    /// on every event for good.
    fn trusted_compare() -> Option<(u64, f64)> {
        let compared = compare(1e-9);
        if compared.is_some() {
            FAILED_COMPARISONS.store(0, Ordering::Relaxed);
        } else if FAILED_COMPARISONS.fetch_add(1, Ordering::Relaxed) + 1 >= MAX_FAILED_COMPARISONS {
            MODE.store(UNUSED, Ordering::Release);
        }
        compared
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
    let micros_total = rounded_to_i64(epoch_seconds * 1_000_000.0);
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
    let micros = micros as usize;
    text[21..23].copy_from_slice(&DIGIT_PAIRS[micros / 10_000]);
    text[23..25].copy_from_slice(&DIGIT_PAIRS[micros / 100 % 100]);
    text[25..27].copy_from_slice(&DIGIT_PAIRS[micros % 100]);
    text[27..].copy_from_slice(b"Z\"");
    out.extend_from_slice(&text);
}

/// `value.round() as i64` (halves away from zero, saturating, NaN to 0) without a call to libm's `round`:
/// an x86-64 CPU without SSE4.1 has no instruction for it. The truncation and its remainder are exact.
fn rounded_to_i64(value: f64) -> i64 {
    let truncated = value as i64;
    let remainder = value - truncated as f64;
    truncated.saturating_add(i64::from(remainder >= 0.5) - i64::from(remainder <= -0.5))
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
        match rounded_to_i64(seconds * 1_000_000.0).cmp(&micros) {
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
        let threads: Vec<_> = (0..3)
            .map(|_| {
                std::thread::spawn(|| {
                    let started = Instant::now();
                    let (mut last, mut readings, mut largest_gap) = (now(), 0u64, 0.0f64);
                    // Through the calibration and many steering intervals, with more threads than CPUs.
                    while started.elapsed() < std::time::Duration::from_millis(200) {
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
        assert_eq!(counter::steered(), counter::kernel_uses_tsc());
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
    fn rounding_without_libm_matches_round() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut samples = vec![0.0, -0.0, 0.5, -0.5, 1.5, -1.5, 2.5, 1.7e15 + 0.5, f64::MIN_POSITIVE];
        samples.extend([0.49999999999999994, -0.49999999999999994, 4503599627370495.5, 4503599627370497.0]);
        samples.extend([9.2e18, -9.2e18, 9.3e18, -9.3e18, 9_223_372_036_854_775_807.0, f64::MAX, f64::MIN]);
        samples.extend([f64::INFINITY, f64::NEG_INFINITY, f64::NAN]);
        for _ in 0..100_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            samples.push(f64::from_bits(state));
            samples.push((state % 4_000_000_000_000_000) as f64 / 4.0 - 5e14);
        }
        for value in samples {
            assert_eq!(rounded_to_i64(value), value.round() as i64, "{value:e}");
        }
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
        assert_eq!(render(1_795_607_567.012_345), "\"2026-11-25T11:52:47.012345Z\"");
        assert_eq!(render(1_795_607_567.000_009_5), "\"2026-11-25T11:52:47.000010Z\"");
    }
}
