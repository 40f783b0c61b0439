//! JSON encoding primitives for the JSONL records: string escaping (SIMD scan), numbers, ISO timestamps.

use std::io::Write;

use crate::redact::token_prefix_at;

const HEX: &[u8; 16] = b"0123456789abcdef";

fn escape_byte(byte: u8) -> Option<&'static [u8]> {
    match byte {
        b'"' => Some(b"\\\""),
        b'\\' => Some(b"\\\\"),
        b'\n' => Some(b"\\n"),
        b'\r' => Some(b"\\r"),
        b'\t' => Some(b"\\t"),
        0x08 => Some(b"\\b"),
        0x0c => Some(b"\\f"),
        _ => None,
    }
}

fn push_unicode_escape(out: &mut Vec<u8>, unit: u16) {
    out.extend_from_slice(b"\\u");
    for shift in [12, 8, 4, 0] {
        out.push(HEX[((unit >> shift) & 0xf) as usize]);
    }
}

/// The index of the first byte at or after `from` that JSON must escape (control character, `"`, `\\`).
#[cfg(target_arch = "x86_64")]
fn next_special(bytes: &[u8], from: usize) -> usize {
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        unsafe { next_special_avx2(bytes, from) }
    } else {
        // SAFETY: SSE2 is part of the x86_64 baseline.
        unsafe { next_special_sse2(bytes, from) }
    }
}

macro_rules! scan_chunks {
    ($bytes:ident, $from:ident, $width:literal, $load:ident, $set1:ident, $max:ident, $cmpeq:ident, $or:ident, $movemask:ident) => {{
        use std::arch::x86_64::*;
        let quote = $set1(b'"' as i8);
        let backslash = $set1(b'\\' as i8);
        let last_control = $set1(0x1f);
        while $from + $width <= $bytes.len() {
            let chunk = $load($bytes.as_ptr().add($from) as *const _);
            let is_control = $cmpeq($max(chunk, last_control), last_control);
            let is_special = $or($or($cmpeq(chunk, quote), $cmpeq(chunk, backslash)), is_control);
            let mask = $movemask(is_special);
            if mask != 0 {
                return $from + mask.trailing_zeros() as usize;
            }
            $from += $width;
        }
        $from + $bytes[$from..].iter().position(|&byte| needs_escape(byte)).unwrap_or($bytes.len() - $from)
    }};
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn next_special_avx2(bytes: &[u8], mut from: usize) -> usize {
    // Loads are unaligned and stay within `bytes`.
    scan_chunks!(bytes, from, 32, _mm256_loadu_si256, _mm256_set1_epi8, _mm256_max_epu8, _mm256_cmpeq_epi8, _mm256_or_si256, _mm256_movemask_epi8)
}

#[cfg(target_arch = "x86_64")]
unsafe fn next_special_sse2(bytes: &[u8], mut from: usize) -> usize {
    // Loads are unaligned and stay within `bytes`.
    scan_chunks!(bytes, from, 16, _mm_loadu_si128, _mm_set1_epi8, _mm_max_epu8, _mm_cmpeq_epi8, _mm_or_si128, _mm_movemask_epi8)
}

/// What one pass over a text found: whether it needs JSON escaping, and whether it holds the start of
/// a secret-shaped pattern (`sk-`, `bearer ` and its URL-encoded forms, `://`, see
/// `redact::token_prefix_at`). When it holds none, redaction is skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextScan {
    pub needs_escape: bool,
    pub may_hold_token: bool,
}

fn scan_scalar(bytes: &[u8], from: usize) -> TextScan {
    let mut scan = TextScan { needs_escape: false, may_hold_token: false };
    for at in from..bytes.len() {
        scan.needs_escape |= needs_escape(bytes[at]);
        scan.may_hold_token = scan.may_hold_token || token_prefix_at(bytes, at);
    }
    scan
}

pub fn scan_text(bytes: &[u8]) -> TextScan {
    #[cfg(target_arch = "x86_64")]
    if bytes.len() > 32 && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { scan_text_avx2(bytes) };
    }
    scan_scalar(bytes, 0)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scan_text_avx2(bytes: &[u8]) -> TextScan {
    use std::arch::x86_64::*;
    let quote = _mm256_set1_epi8(b'"' as i8);
    let backslash = _mm256_set1_epi8(b'\\' as i8);
    let last_control = _mm256_set1_epi8(0x1f);
    let lower_case_bit = _mm256_set1_epi8(0x20);
    let [s, k, b, e, colon, slash] = [b's', b'k', b'b', b'e', b':', b'/'].map(|byte| _mm256_set1_epi8(byte as i8));
    let mut specials = _mm256_setzero_si256();
    let mut may_hold_token = false;
    let mut at = 0;
    // Each chunk is compared with the chunk one byte further on too (hence the 33 bytes): only the rare
    // pairs that begin a pattern's prefix, `sk`, `be` (any case) and `:/`, are looked at more closely.
    while at + 33 <= bytes.len() {
        // Unaligned loads within `bytes`.
        let chunk = _mm256_loadu_si256(bytes.as_ptr().add(at) as *const __m256i);
        let is_control = _mm256_cmpeq_epi8(_mm256_max_epu8(chunk, last_control), last_control);
        let is_special = _mm256_or_si256(_mm256_or_si256(_mm256_cmpeq_epi8(chunk, quote), _mm256_cmpeq_epi8(chunk, backslash)), is_control);
        specials = _mm256_or_si256(specials, is_special);
        if !may_hold_token {
            let next = _mm256_loadu_si256(bytes.as_ptr().add(at + 1) as *const __m256i);
            let (chunk_lower, next_lower) = (_mm256_or_si256(chunk, lower_case_bit), _mm256_or_si256(next, lower_case_bit));
            let sk = _mm256_and_si256(_mm256_cmpeq_epi8(chunk, s), _mm256_cmpeq_epi8(next, k));
            let be = _mm256_and_si256(_mm256_cmpeq_epi8(chunk_lower, b), _mm256_cmpeq_epi8(next_lower, e));
            let colon_slash = _mm256_and_si256(_mm256_cmpeq_epi8(chunk, colon), _mm256_cmpeq_epi8(next, slash));
            let mut candidates = _mm256_movemask_epi8(_mm256_or_si256(_mm256_or_si256(sk, be), colon_slash)) as u32;
            while candidates != 0 && !may_hold_token {
                may_hold_token = token_prefix_at(bytes, at + candidates.trailing_zeros() as usize);
                candidates &= candidates - 1;
            }
        }
        at += 32;
    }
    let tail = scan_scalar(bytes, at);
    TextScan {
        needs_escape: _mm256_movemask_epi8(specials) != 0 || tail.needs_escape,
        may_hold_token: may_hold_token || tail.may_hold_token,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn next_special(bytes: &[u8], from: usize) -> usize {
    from + bytes[from..].iter().position(|&byte| needs_escape(byte)).unwrap_or(bytes.len() - from)
}

fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// Appends the body of a JSON string (no quotes) for valid UTF-8 text.
pub fn push_escaped(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    let mut clean_from = 0;
    loop {
        let special = next_special(bytes, clean_from);
        out.extend_from_slice(&bytes[clean_from..special]);
        let Some(&byte) = bytes.get(special) else { return };
        match escape_byte(byte) {
            Some(escaped) => out.extend_from_slice(escaped),
            None => push_unicode_escape(out, byte as u16),
        }
        clean_from = special + 1;
    }
}

/// Appends the body of a JSON string for UTF-16 code units that may hold lone surrogates
/// (which UTF-8 cannot carry): those are written as `\uXXXX` escapes, so the line stays valid JSON.
pub fn push_escaped_utf16(out: &mut Vec<u8>, units: &[u16]) {
    let mut char_buffer = [0u8; 4];
    for decoded in char::decode_utf16(units.iter().copied()) {
        match decoded {
            Ok(character) => push_escaped(out, character.encode_utf8(&mut char_buffer)),
            Err(lone) => push_unicode_escape(out, lone.unpaired_surrogate()),
        }
    }
}

pub fn push_string(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    push_escaped(out, text);
    out.push(b'"');
}

/// Finite floats exactly as Python's `repr` (and so `json.dumps`) writes them: shortest round-trip digits,
/// a `.0` or an exponent so they read back as floats, exponents signed and of at least two digits
/// (`1e+16`, `1.5e-05`); NaN and infinities, which JSON cannot hold, as the strings "NaN", "Infinity",
/// "-Infinity".
pub fn push_f64(out: &mut Vec<u8>, value: f64) {
    if value.is_nan() {
        out.extend_from_slice(b"\"NaN\"");
    } else if value.is_infinite() {
        out.extend_from_slice(if value > 0.0 { b"\"Infinity\"" } else { b"\"-Infinity\"" });
    } else {
        // Rust's `{:?}` picks the same digits and the same switch to exponent form (below 1e-4, from
        // 1e16 on) as Python; only its exponent is written bare (`1e16`, `1.5e-5`).
        let start = out.len();
        write!(out, "{value:?}").expect("writing to a Vec cannot fail");
        if let Some(e_at) = out[start..].iter().position(|&byte| byte == b'e').map(|at| start + at) {
            let exponent: i32 = std::str::from_utf8(&out[e_at + 1..]).ok().and_then(|text| text.parse().ok()).expect("Rust writes a decimal exponent");
            out.truncate(e_at + 1);
            out.push(if exponent < 0 { b'-' } else { b'+' });
            push_digits(out, u64::from(exponent.unsigned_abs()), if exponent.unsigned_abs() < 100 { 2 } else { 3 });
        }
    }
}

pub fn push_i64(out: &mut Vec<u8>, value: i64) {
    if value < 0 {
        out.push(b'-');
    }
    push_u64(out, value.unsigned_abs());
}

pub fn push_u64(out: &mut Vec<u8>, value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut rest = value;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

fn push_digits(out: &mut Vec<u8>, value: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut rest = value;
    for slot in digits[..width].iter_mut().rev() {
        *slot = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.extend_from_slice(&digits[..width]);
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

    fn encoded(text: &str) -> String {
        let mut out = Vec::new();
        push_string(&mut out, text);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn escapes_quotes_backslashes_and_controls() {
        assert_eq!(encoded("a\"b\\c\nd\u{1}é"), "\"a\\\"b\\\\c\\nd\\u0001é\"");
    }

    #[test]
    fn word_scan_finds_every_special_byte_in_any_position() {
        for position in 0..16 {
            for special in [b'"', b'\\', b'\n', 0x00u8, 0x1f] {
                let mut text = vec![b'a'; 16];
                text[position] = special;
                let text = String::from_utf8(text).unwrap();
                let expected = serde_like_escape(&text);
                assert_eq!(encoded(&text), expected, "byte {special:#x} at {position}");
            }
        }
        assert_eq!(encoded("ééééé \u{7f}"), "\"ééééé \u{7f}\"");
    }

    fn serde_like_escape(text: &str) -> String {
        let mut out = String::from("\"");
        for character in text.chars() {
            match character {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\u{1f}' => out.push_str("\\u001f"),
                '\u{0}' => out.push_str("\\u0000"),
                other => out.push(other),
            }
        }
        out.push('"');
        out
    }

    #[test]
    fn integers() {
        let render = |value: i64| {
            let mut out = Vec::new();
            push_i64(&mut out, value);
            String::from_utf8(out).unwrap()
        };
        for value in [0, 7, -7, 10, 1234567890, i64::MIN, i64::MAX] {
            assert_eq!(render(value), value.to_string());
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn both_vector_widths_find_the_same_bytes() {
        for length in 0..80 {
            for position in 0..length {
                let mut text = vec![b'x'; length];
                text[position] = b'"';
                // SAFETY: SSE2 is baseline; AVX2 only when detected.
                unsafe {
                    assert_eq!(next_special_sse2(&text, 0), position);
                    if std::arch::is_x86_feature_detected!("avx2") {
                        assert_eq!(next_special_avx2(&text, 0), position);
                    }
                }
            }
        }
    }

    #[test]
    fn one_scan_finds_escapes_and_token_bytes_anywhere() {
        for length in [0, 5, 31, 32, 33, 63, 64, 65, 100] {
            for position in 0..length {
                for (byte, expected) in [
                    (b'"', TextScan { needs_escape: true, may_hold_token: false }),
                    (0x01, TextScan { needs_escape: true, may_hold_token: false }),
                ] {
                    let mut text = vec![b'x'; length];
                    text[position] = byte;
                    assert_eq!(scan_text(&text), expected, "{byte:#x} at {position} of {length}");
                }
                for prefix in PATTERN_PREFIXES {
                    if position + prefix.len() <= length {
                        let mut text = vec![b'x'; length];
                        text[position..position + prefix.len()].copy_from_slice(prefix);
                        assert!(scan_text(&text).may_hold_token, "{prefix:?} at {position} of {length}");
                    }
                }
                for near_miss in NEAR_MISSES {
                    let mut text = vec![b'x'; length];
                    let end = (position + near_miss.len()).min(length);
                    text[position..end].copy_from_slice(&near_miss[..end - position]);
                    assert!(!scan_text(&text).may_hold_token, "{near_miss:?} at {position} of {length}");
                }
            }
            assert!(!scan_text(&b"0f8c-4a-gpt-4o-B"[..]).may_hold_token);
            assert_eq!(scan_text(&vec![0xc3; length]), TextScan { needs_escape: false, may_hold_token: false });
        }
    }

    /// Every start of a redaction pattern (see `redact.rs`), in each form.
    const PATTERN_PREFIXES: [&[u8]; 9] =
        [b"sk-", b"Bearer ", b"bearer ", b"BEARER ", b"bEaReR ", b"Bearer%20", b"bearer+", b"BEARER%20", b"://"];
    /// Texts that look like a prefix but are none, also when cut short by the end of the text.
    const NEAR_MISSES: [&[u8]; 9] = [b"sk_", b"s-k", b"Sk-", b"Bearer", b"Bearer%2x", b"Bearer\t", b"beare ", b":/x", b":-/"];

    #[test]
    fn long_text_with_specials_far_apart() {
        let text = format!("{}\"{}\\{}", "a".repeat(37), "é".repeat(20), "b".repeat(3));
        assert_eq!(encoded(&text), serde_like_escape(&text));
    }

    #[test]
    fn lone_surrogates_become_escapes() {
        let mut out = Vec::new();
        push_escaped_utf16(&mut out, &[0x61, 0xd800, 0xd83d, 0xde00]);
        assert_eq!(String::from_utf8(out).unwrap(), "a\\ud800😀");
    }

    #[test]
    fn floats_read_back_as_floats_and_non_finite_as_strings() {
        let render = |value: f64| {
            let mut out = Vec::new();
            push_f64(&mut out, value);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(render(1.0), "1.0");
        assert_eq!(render(0.1), "0.1");
        assert_eq!(render(123.0), "123.0");
        assert_eq!(render(-0.0), "-0.0");
        assert_eq!(render(1e15), "1000000000000000.0");
        assert_eq!(render(1e16), "1e+16");
        assert_eq!(render(1.5e-5), "1.5e-05");
        assert_eq!(render(1e-7), "1e-07");
        assert_eq!(render(0.0001), "0.0001");
        assert_eq!(render(1.7976931348623157e308), "1.7976931348623157e+308");
        assert_eq!(render(5e-324), "5e-324");
        assert_eq!(render(-2.5e-100), "-2.5e-100");
        assert_eq!(render(f64::NAN), "\"NaN\"");
        assert_eq!(render(f64::NEG_INFINITY), "\"-Infinity\"");
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
