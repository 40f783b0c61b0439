//! JSON encoding of the record's parts: string bodies (escaping found by the SIMD scan of `simd`), and
//! numbers exactly as Python's `json.dumps` writes them.

use std::io::Write;

use crate::simd::next_special;

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
        // Rust's `{:?}` picks the same digits (but for exact ties, below) and the same switch to exponent
        // form (below 1e-4, from 1e16 on) as Python; only its exponent is written bare (`1e16`, `1.5e-5`).
        let start = out.len();
        write!(out, "{value:?}").expect("writing to a Vec cannot fail");
        let mantissa_end = out[start..].iter().position(|&byte| byte == b'e').map_or(out.len(), |at| start + at);
        if is_tie_rounded_up(&out[start..], mantissa_end - start, value) {
            out[mantissa_end - 1] -= 1;
        }
        if let Some(e_at) = Some(mantissa_end).filter(|&at| at < out.len()) {
            let exponent: i32 =
                std::str::from_utf8(&out[e_at + 1..]).ok().and_then(|text| text.parse().ok()).expect("Rust writes a decimal exponent");
            out.truncate(e_at + 1);
            out.push(if exponent < 0 { b'-' } else { b'+' });
            push_digits(out, u64::from(exponent.unsigned_abs()), if exponent.unsigned_abs() < 100 { 2 } else { 3 });
        }
    }
}

/// Whether `text`, Rust's shortest digits for `value` (its mantissa the first `mantissa_len` bytes), ends
/// with an odd digit rounded up from an exact tie between two shortest digit strings (`70368744177664.625`:
/// `.62` or `.63`): Python's `repr` rounds such a tie to the even digit, Rust's up.
fn is_tie_rounded_up(text: &[u8], mantissa_len: usize, value: f64) -> bool {
    let last = text[mantissa_len - 1];
    if !last.is_ascii_digit() || (last - b'0') & 1 == 0 || !has_few_decimal_digits(value) {
        return false;
    }
    let reads_back = |bytes: &[u8]| std::str::from_utf8(bytes).ok().and_then(|text| text.parse::<f64>().ok()) == Some(value);
    let mut buffer = [0u8; 32]; // Rust's shortest form of an f64 is at most 24 bytes
    let lower = &mut buffer[..text.len()];
    lower.copy_from_slice(text);
    lower[mantissa_len - 1] -= 1;
    if !reads_back(lower) {
        return false;
    }
    let mut midpoint = lower[..mantissa_len].to_vec();
    if !midpoint.contains(&b'.') {
        midpoint.push(b'.');
    }
    midpoint.push(b'5');
    midpoint.extend_from_slice(&text[mantissa_len..]);
    // A tie: the value is the midpoint exactly (an f64's exact decimal form has at most 767 significant digits).
    reads_back(&midpoint) && significant_digits(format!("{value:.767e}").as_bytes()) == significant_digits(&midpoint)
}

/// Whether the exact decimal form of `value` may have 18 significant digits or fewer, as a tie's must (one
/// more than the at most 17 shortest digits). `value` is `m * 2^e` with `m` odd; for `e = -k < 0` its digits
/// are those of `m * 5^k`, at least `k * log10(5)` of them, so `k <= 25`. Most floats (a latency, a price)
/// have all 52 fraction bits in use and fail this at once.
fn has_few_decimal_digits(value: f64) -> bool {
    let bits = value.to_bits();
    let biased_exponent = ((bits >> 52) & 0x7ff) as i32;
    let fraction = bits & ((1 << 52) - 1);
    let (mantissa, exponent) = if biased_exponent == 0 { (fraction, -1074) } else { (fraction | 1 << 52, biased_exponent - 1075) };
    mantissa == 0 || exponent + mantissa.trailing_zeros() as i32 >= -25
}

/// The digits of a number's mantissa without leading or trailing zeros.
fn significant_digits(text: &[u8]) -> Vec<u8> {
    let mantissa = text.split(|&byte| byte == b'e').next().unwrap_or_default();
    let digits: Vec<u8> = mantissa.iter().copied().filter(u8::is_ascii_digit).collect();
    let first = digits.iter().position(|&digit| digit != b'0').unwrap_or(digits.len());
    let last = digits.iter().rposition(|&digit| digit != b'0').map_or(first, |at| at + 1);
    digits[first..last].to_vec()
}

pub fn push_i64(out: &mut Vec<u8>, value: i64) {
    if value < 0 {
        out.push(b'-');
    }
    push_u64(out, value.unsigned_abs());
}

/// `value` in decimal. Numbers below 10,000 (most token counts) are written as one fixed-size copy of
/// their digits, with no loop and no call to `memcpy`.
pub fn push_u64(out: &mut Vec<u8>, value: u64) {
    let pair = |number: u64| DIGIT_PAIRS[number as usize];
    match value {
        0..=9 => out.push(b'0' + value as u8),
        10..=99 => out.extend_from_slice(&pair(value)),
        100..=999 => {
            let [tens, ones] = pair(value % 100);
            out.extend_from_slice(&[b'0' + (value / 100) as u8, tens, ones]);
        }
        1000..=9999 => {
            let ([thousands, hundreds], [tens, ones]) = (pair(value / 100), pair(value % 100));
            out.extend_from_slice(&[thousands, hundreds, tens, ones]);
        }
        _ => {
            let mut digits = [0u8; 20];
            let mut start = digits.len();
            let mut rest = value;
            while rest > 0 {
                start -= 1;
                digits[start] = b'0' + (rest % 10) as u8;
                rest /= 10;
            }
            out.extend_from_slice(&digits[start..]);
        }
    }
}

/// `value` in exactly `width` decimal digits, zero-padded (the highest digits are cut when it has more).
pub fn push_digits(out: &mut Vec<u8>, value: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut rest = value;
    for slot in digits[..width].iter_mut().rev() {
        *slot = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.extend_from_slice(&digits[..width]);
}

/// The two decimal digits of each number below 100.
pub const DIGIT_PAIRS: [[u8; 2]; 100] = {
    let mut pairs = [[0; 2]; 100];
    let mut number = 0;
    while number < 100 {
        pairs[number] = [b'0' + (number / 10) as u8, b'0' + (number % 10) as u8];
        number += 1;
    }
    pairs
};

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
        let mut out = b"x".to_vec();
        for power in 0..20 {
            let ten_to = 10u64.pow(power);
            for value in [ten_to - 1, ten_to, ten_to + 1, ten_to.saturating_mul(5).saturating_add(7)] {
                out.truncate(1);
                push_u64(&mut out, value);
                assert_eq!(&out[1..], value.to_string().as_bytes());
            }
        }
        out.truncate(1);
        push_u64(&mut out, u64::MAX);
        assert_eq!(out, format!("x{}", u64::MAX).as_bytes());
    }

    #[test]
    fn fixed_width_digits_are_zero_padded_and_cut_from_the_top() {
        let render = |value: u64, width: usize| {
            let mut out = Vec::new();
            push_digits(&mut out, value, width);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(render(7, 1), "7");
        assert_eq!(render(7, 2), "07");
        assert_eq!(render(42, 3), "042");
        assert_eq!(render(2026, 4), "2026");
        assert_eq!(render(123456, 4), "3456");
        assert_eq!(render(5, 6), "000005");
        assert_eq!(render(0, 0), "");
    }

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
        // Exact ties between two shortest digit strings round to the even digit, as Python's repr does.
        let two_to_the = |exponent: i32| 2f64.powi(exponent);
        assert_eq!(render(two_to_the(46) + 0.625), "70368744177664.62");
        assert_eq!(render(two_to_the(46) + 0.125), "70368744177664.12");
        assert_eq!(render(two_to_the(46) + 0.375), "70368744177664.38");
        assert_eq!(render(two_to_the(49) + 0.25), "562949953421312.2");
        assert_eq!(render(-(two_to_the(50) + 0.25)), "-1125899906842624.2");
        assert_eq!(render(0.3), "0.3");
        assert_eq!(render(2.5), "2.5");
        assert_eq!(render(f64::NAN), "\"NaN\"");
        assert_eq!(render(f64::NEG_INFINITY), "\"-Infinity\"");
    }
}
