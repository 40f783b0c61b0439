//! All SIMD of the crate, and its other CPU-specific instructions: the scans behind JSON escaping and
//! secret redaction, and the time-stamp counter the event clock reads. Each vector path is chosen by
//! runtime CPU detection; every other CPU takes the scalar loop, which gives the same answers.

/// The patterns a text scan looks for besides escapes: byte pairs one of which begins every pattern
/// (lower-case letters in a pair with `FOLD_CASE` match either case; so every pattern is at least two bytes
/// long), and the exact test of whether a pattern starts at an index, run only where a pair was found.
pub trait PatternStarts {
    const PAIRS: [[u8; 2]; 3];
    const FOLD_CASE: [bool; 3];
    fn starts_at(bytes: &[u8], at: usize) -> bool;
}

/// The CPU's time-stamp counter (`rdtsc`).
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn time_stamp_counter() -> u64 {
    // SAFETY: `rdtsc` reads the time-stamp counter, which every x86_64 CPU has; it touches no memory.
    unsafe { std::arch::x86_64::_rdtsc() }
}

/// Asks the CPU to fetch the cache lines of `len` bytes from `start` for writing (`prefetchw`), so the stores
/// that fill them later find them owned by this core instead of waiting for them: a hint, which reads
/// nothing and cannot fault, whatever the address. x86_64 CPUs without the instruction run it as a no-op
/// (Intel's before Broadwell); other architectures do nothing.
#[inline]
pub fn prefetch_for_write(start: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    for offset in (0..len).step_by(64) {
        // SAFETY: `prefetchw` only hints the cache: it reads and writes no memory, and a hint for an address
        // that is not mapped is dropped, never a fault.
        unsafe {
            std::arch::asm!("prefetchw [{0}]", in(reg) start.wrapping_add(offset), options(nostack, readonly, preserves_flags));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, len);
}

/// The 32 lowercase hex digits of `value`, most significant first: on x86_64 all at once from its nibbles
/// as SSE2 vectors, elsewhere one digit at a time.
pub fn hex_digits(value: u128) -> [u8; 32] {
    // SAFETY: SSE2 is part of the x86_64 baseline: every CPU this code runs on has it.
    #[cfg(target_arch = "x86_64")]
    return unsafe { hex_digits_sse2(value) };
    #[cfg(not(target_arch = "x86_64"))]
    hex_digits_scalar(value)
}

/// `hex_digits` a digit at a time: the path of other CPUs, and on x86_64 the tests' check of the vector one.
#[cfg(any(test, not(target_arch = "x86_64")))]
fn hex_digits_scalar(value: u128) -> [u8; 32] {
    std::array::from_fn(|index| b"0123456789abcdef"[(value >> (124 - 4 * index) & 0xf) as usize])
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn hex_digits_sse2(value: u128) -> [u8; 32] {
    use std::arch::x86_64::*;
    let bytes = value.to_be_bytes();
    let [first, second] = [&bytes[..8], &bytes[8..]].map(|half| i64::from_le_bytes(half.try_into().expect("8 bytes")));
    let vector = _mm_set_epi64x(second, first);
    let low_nibble = _mm_set1_epi8(0x0f);
    let high = _mm_and_si128(_mm_srli_epi16::<4>(vector), low_nibble);
    let low = _mm_and_si128(vector, low_nibble);
    let mut text = [0u8; 32];
    for (at, nibbles) in [(0, _mm_unpacklo_epi8(high, low)), (16, _mm_unpackhi_epi8(high, low))] {
        let digits = ascii_hex_sse2(nibbles);
        text[at..at + 8].copy_from_slice(&_mm_cvtsi128_si64(digits).to_le_bytes());
        text[at + 8..at + 16].copy_from_slice(&_mm_cvtsi128_si64(_mm_unpackhi_epi64(digits, digits)).to_le_bytes());
    }
    text
}

/// Each byte of `nibbles` (0 to 15) as its lowercase hex digit.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn ascii_hex_sse2(nibbles: std::arch::x86_64::__m128i) -> std::arch::x86_64::__m128i {
    use std::arch::x86_64::*;
    let past_nine = _mm_cmpgt_epi8(nibbles, _mm_set1_epi8(9));
    let letter_offset = _mm_and_si128(past_nine, _mm_set1_epi8((b'a' - b'0' - 10) as i8));
    _mm_add_epi8(_mm_add_epi8(nibbles, _mm_set1_epi8(b'0' as i8)), letter_offset)
}

/// What one pass over a text found: whether it needs JSON escaping, and whether a pattern of `P` starts in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextScan {
    pub needs_escape: bool,
    pub may_hold_token: bool,
}

pub const fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// The index of the first byte at or after `from` that JSON must escape (control character, `"`, `\\`),
/// or `bytes.len()`.
#[cfg(target_arch = "x86_64")]
pub fn next_special(bytes: &[u8], from: usize) -> usize {
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        unsafe { next_special_avx2(bytes, from) }
    } else {
        // SAFETY: SSE2 is part of the x86_64 baseline.
        unsafe { next_special_sse2(bytes, from) }
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub fn next_special(bytes: &[u8], from: usize) -> usize {
    next_special_scalar(bytes, from)
}

fn next_special_scalar(bytes: &[u8], from: usize) -> usize {
    from + bytes[from..].iter().position(|&byte| needs_escape(byte)).unwrap_or(bytes.len() - from)
}

macro_rules! scan_chunks {
    ($bytes:ident, $from:ident, $width:literal, $load:ident, $set1:ident, $max:ident, $cmpeq:ident, $or:ident, $movemask:ident) => {{
        use std::arch::x86_64::*;
        let quote = $set1(b'"' as i8);
        let backslash = $set1(b'\\' as i8);
        let last_control = $set1(0x1f);
        while $from + $width <= $bytes.len() {
            // SAFETY: the unaligned load reads `$width` bytes from `$from`, within `$bytes` (loop condition).
            let chunk = unsafe { $load($bytes.as_ptr().add($from) as *const _) };
            let is_control = $cmpeq($max(chunk, last_control), last_control);
            let is_special = $or($or($cmpeq(chunk, quote), $cmpeq(chunk, backslash)), is_control);
            let mask = $movemask(is_special);
            if mask != 0 {
                return $from + mask.trailing_zeros() as usize;
            }
            $from += $width;
        }
        next_special_scalar($bytes, $from)
    }};
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn next_special_avx2(bytes: &[u8], mut from: usize) -> usize {
    scan_chunks!(
        bytes,
        from,
        32,
        _mm256_loadu_si256,
        _mm256_set1_epi8,
        _mm256_max_epu8,
        _mm256_cmpeq_epi8,
        _mm256_or_si256,
        _mm256_movemask_epi8
    )
}

/// # Safety
/// Always safe on x86_64 (SSE2 is baseline); `unsafe` only because of `target_feature` intrinsics.
#[cfg(target_arch = "x86_64")]
unsafe fn next_special_sse2(bytes: &[u8], mut from: usize) -> usize {
    scan_chunks!(bytes, from, 16, _mm_loadu_si128, _mm_set1_epi8, _mm_max_epu8, _mm_cmpeq_epi8, _mm_or_si128, _mm_movemask_epi8)
}

const ESCAPE: u8 = 1;
const PAIR_START: u8 = 2;

/// Per byte value: whether JSON escapes it, and whether a pair of `P` starts with it (in either case when
/// the pair folds case).
struct ByteClasses<P>(std::marker::PhantomData<P>);

impl<P: PatternStarts> ByteClasses<P> {
    const TABLE: [u8; 256] = {
        let mut table = [0u8; 256];
        let mut byte = 0;
        while byte < 256 {
            if needs_escape(byte as u8) {
                table[byte] = ESCAPE;
            }
            byte += 1;
        }
        let mut pair = 0;
        while pair < P::PAIRS.len() {
            let first = P::PAIRS[pair][0];
            table[first as usize] |= PAIR_START;
            if P::FOLD_CASE[pair] {
                table[first.to_ascii_uppercase() as usize] |= PAIR_START;
            }
            pair += 1;
        }
        table
    };
}

fn scan_scalar<P: PatternStarts>(bytes: &[u8], from: usize) -> TextScan {
    let mut scan = TextScan { needs_escape: false, may_hold_token: false };
    for at in from..bytes.len() {
        let class = ByteClasses::<P>::TABLE[bytes[at] as usize];
        if class == 0 {
            continue;
        }
        scan.needs_escape |= class & ESCAPE != 0;
        if class & PAIR_START != 0 && !scan.may_hold_token {
            scan.may_hold_token = P::starts_at(bytes, at);
        }
    }
    scan
}

/// One pass over `bytes` for both questions of `TextScan`.
pub fn scan_text<P: PatternStarts>(bytes: &[u8]) -> TextScan {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above); each function gets the lengths it takes.
        return unsafe {
            if bytes.len() >= 33 {
                scan_text_avx2::<P>(bytes)
            } else {
                scan_short_text_avx2::<P>(bytes)
            }
        };
    }
    scan_scalar::<P>(bytes, 0)
}

/// The masks of one 32-byte chunk (`next`: the chunk one byte further on), as vectors: the bytes JSON
/// escapes, and the bytes where a pair of `P` starts. A macro, not a function: inlined, the vector
/// constants stay in registers across a loop.
#[cfg(target_arch = "x86_64")]
macro_rules! classify_chunk {
    ($patterns:ty, $chunk:expr, $next:expr) => {{
        let (chunk, next) = ($chunk, $next);
        let last_control = _mm256_set1_epi8(0x1f);
        let is_control = _mm256_cmpeq_epi8(_mm256_max_epu8(chunk, last_control), last_control);
        let quote = _mm256_cmpeq_epi8(chunk, _mm256_set1_epi8(b'"' as i8));
        let backslash = _mm256_cmpeq_epi8(chunk, _mm256_set1_epi8(b'\\' as i8));
        let is_special = _mm256_or_si256(_mm256_or_si256(quote, backslash), is_control);
        let lower_case_bit = _mm256_set1_epi8(0x20);
        let (chunk_lower, next_lower) = (_mm256_or_si256(chunk, lower_case_bit), _mm256_or_si256(next, lower_case_bit));
        let mut pairs_found = _mm256_setzero_si256();
        for pair in 0..<$patterns>::PAIRS.len() {
            // A constant per pair: the compiler keeps only one side of each choice.
            let (chunk, next) = if <$patterns>::FOLD_CASE[pair] { (chunk_lower, next_lower) } else { (chunk, next) };
            let [first, second] = <$patterns>::PAIRS[pair];
            let found = _mm256_and_si256(
                _mm256_cmpeq_epi8(chunk, _mm256_set1_epi8(first as i8)),
                _mm256_cmpeq_epi8(next, _mm256_set1_epi8(second as i8)),
            );
            pairs_found = _mm256_or_si256(pairs_found, found);
        }
        (is_special, pairs_found)
    }};
}

/// Whether a pattern starts at one of `candidates` (bit `i`: index `at + i` of `bytes`).
#[inline(always)]
fn pattern_at_candidates<P: PatternStarts>(bytes: &[u8], at: usize, mut candidates: u32) -> bool {
    while candidates != 0 {
        if P::starts_at(bytes, at + candidates.trailing_zeros() as usize) {
            return true;
        }
        candidates &= candidates - 1;
    }
    false
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scan_text_avx2<P: PatternStarts>(bytes: &[u8]) -> TextScan {
    use std::arch::x86_64::*;
    let mut specials = _mm256_setzero_si256();
    let mut may_hold_token = false;
    // Each chunk is compared with the chunk one byte further on too (hence 33 bytes): only the rare places
    // where a pair stands are looked at more closely. The last chunk overlaps the one before instead of
    // leaving a tail to the scalar loop: seeing a byte twice changes neither answer.
    // A macro, not a closure: the body must be inlined in both places for the vector registers to stay.
    macro_rules! scan_chunk {
        ($at:expr) => {{
            let at: usize = $at;
            // SAFETY: the caller passes `at + 33 <= len`, so both unaligned loads read 32 bytes within `bytes`.
            let (chunk, next) = unsafe {
                (
                    _mm256_loadu_si256(bytes.as_ptr().add(at) as *const __m256i),
                    _mm256_loadu_si256(bytes.as_ptr().add(at + 1) as *const __m256i),
                )
            };
            let (is_special, pairs_found) = classify_chunk!(P, chunk, next);
            specials = _mm256_or_si256(specials, is_special);
            if !may_hold_token {
                may_hold_token = pattern_at_candidates::<P>(bytes, at, _mm256_movemask_epi8(pairs_found) as u32);
            }
        }};
    }
    let mut at = 0;
    while at + 33 <= bytes.len() {
        scan_chunk!(at);
        at += 32;
    }
    if at + 1 < bytes.len() {
        scan_chunk!(bytes.len() - 33);
    }
    // The last byte is in no chunk (each needs the byte after it) and starts no pattern, which all need more.
    let last_escapes = needs_escape(bytes[bytes.len() - 1]);
    TextScan { needs_escape: _mm256_movemask_epi8(specials) != 0 || last_escapes, may_hold_token }
}

/// A text of at most 32 bytes (a model name, a run id) as one chunk: copied into a buffer padded with
/// spaces, and only the masks' bits of the text's own bytes looked at.
///
/// # Safety
/// The CPU must support AVX2, and `bytes` must hold at most 32 bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scan_short_text_avx2<P: PatternStarts>(bytes: &[u8]) -> TextScan {
    use std::arch::x86_64::*;
    let mut padded = [b' '; 33];
    padded[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: `padded` holds 33 bytes, so both unaligned loads read 32 bytes within it.
    let (chunk, next) =
        unsafe { (_mm256_loadu_si256(padded.as_ptr() as *const __m256i), _mm256_loadu_si256(padded.as_ptr().add(1) as *const __m256i)) };
    let (is_special, pairs_found) = classify_chunk!(P, chunk, next);
    let in_text = if bytes.len() == 32 { u32::MAX } else { (1u32 << bytes.len()) - 1 };
    let candidates = _mm256_movemask_epi8(pairs_found) as u32 & in_text;
    TextScan {
        needs_escape: _mm256_movemask_epi8(is_special) as u32 & in_text != 0,
        may_hold_token: pattern_at_candidates::<P>(bytes, 0, candidates),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn both_vector_widths_find_the_same_bytes() {
        for length in 0..80 {
            for position in 0..length {
                let mut text = vec![b'x'; length];
                text[position] = b'"';
                assert_eq!(next_special_scalar(&text, 0), position);
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
    fn hex_digits_are_the_lowercase_hex_of_the_number() {
        let mut state = 0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C834u128;
        for _ in 0..10_000 {
            state = state.wrapping_mul(0x2360_ED05_1FC6_5DA4_4385_DF64_9FCC_F645).wrapping_add(1);
            for value in [state, state >> 64, state & 0x0f0f_0f0f, u128::MAX - state] {
                assert_eq!(&hex_digits(value), format!("{value:032x}").as_bytes());
                assert_eq!(hex_digits_scalar(value), hex_digits(value));
            }
        }
        assert_eq!(&hex_digits(0), b"00000000000000000000000000000000");
        assert_eq!(&hex_digits(u128::MAX), b"ffffffffffffffffffffffffffffffff");
    }

    /// Patterns `ab` (case-sensitive) and `cd` (any case), for testing the scan apart from redaction.
    struct TwoPairs;
    impl PatternStarts for TwoPairs {
        const PAIRS: [[u8; 2]; 3] = [*b"ab", *b"cd", *b"ab"];
        const FOLD_CASE: [bool; 3] = [false, true, false];
        fn starts_at(bytes: &[u8], at: usize) -> bool {
            bytes[at..].starts_with(b"ab") || (bytes.len() > at + 1 && bytes[at..at + 2].eq_ignore_ascii_case(b"cd"))
        }
    }

    #[test]
    fn one_scan_finds_escapes_and_pattern_starts_anywhere() {
        for length in [0, 5, 31, 32, 33, 63, 64, 65, 100] {
            for position in 0..length {
                let mut text = vec![b'x'; length];
                text[position] = b'"';
                assert_eq!(scan_text::<TwoPairs>(&text), TextScan { needs_escape: true, may_hold_token: false });
                for pair in [b"ab", b"cd", b"CD", b"cD"] {
                    if position + 2 <= length {
                        let mut text = vec![b'x'; length];
                        text[position..position + 2].copy_from_slice(pair);
                        assert_eq!(
                            scan_text::<TwoPairs>(&text),
                            TextScan { needs_escape: false, may_hold_token: true },
                            "{pair:?} at {position} of {length}"
                        );
                    }
                }
                for near_miss in [b"aB", b"ba", b"dc"] {
                    let mut text = vec![b'x'; length];
                    let end = (position + 2).min(length);
                    text[position..end].copy_from_slice(&near_miss[..end - position]);
                    assert!(!scan_text::<TwoPairs>(&text).may_hold_token, "{near_miss:?} at {position} of {length}");
                }
            }
            assert_eq!(scan_text::<TwoPairs>(&vec![0xc3; length]), TextScan { needs_escape: false, may_hold_token: false });
        }
    }
}
