//! Redaction of secrets in logged text, shared by every string the JSONL encoder writes.
//! Mirrors `python/rlm_toolkit/secrets.py` (the reference), in its order: registered secrets (e.g. the
//! client's API key) become `[REDACTED]`; tokens that look like API keys, `sk-` + 20 or more of
//! `[A-Za-z0-9_-]` not preceded by such a character, become `sk-[REDACTED]`; `bearer` in any case, then a
//! space, `%20` or `+`, then 20 or more of `[A-Za-z0-9._~+/=%-]`, keeps its prefix and loses its token; and
//! the password of `scheme://user:password@host` becomes `[REDACTED]`.
//!
//! The passes work on bytes: valid UTF-8, or the bytes Python's `encode("utf-8", "surrogatepass")` gives for
//! a text with lone surrogates (each surrogate three bytes of 0x80 or more, like any non-ASCII character).
//! Every pattern is delimited by ASCII bytes and a registered secret is valid UTF-8, so a replacement never
//! splits a character and the passes give what the reference's regular expressions give on the code points.

use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{OnceLock, RwLock};

use memchr::memmem::Finder;

use crate::simd::{PatternStarts, TextScan};

static REGISTERED: RwLock<Vec<String>> = RwLock::new(Vec::new());
static REGISTRY_VERSION: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's copy of the registry, refreshed when its version changes: reading it per record then
    /// costs one plain load instead of a lock shared by every thread.
    static LOCAL_SECRETS: RefCell<(u64, Rc<Vec<String>>)> = RefCell::new((0, Rc::new(Vec::new())));
}

/// Registers a secret to redact from now on, in every thread (an empty one is ignored: it would match
/// between every two characters).
pub fn add_secret(value: String) {
    if value.is_empty() {
        return;
    }
    let mut registered = REGISTERED.write().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !registered.contains(&value) {
        registered.push(value);
        REGISTRY_VERSION.fetch_add(1, Ordering::Release);
    }
}

/// The registered secrets, as this thread last saw them (refreshed when the registry changed).
pub fn registered_secrets() -> Rc<Vec<String>> {
    let version = REGISTRY_VERSION.load(Ordering::Acquire);
    LOCAL_SECRETS.with(|local| {
        let mut local = local.borrow_mut();
        if local.0 != version {
            let registered = REGISTERED.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            *local = (version, Rc::new(registered.clone()));
        }
        Rc::clone(&local.1)
    })
}

fn finder(cell: &'static OnceLock<Finder<'static>>, needle: &'static str) -> &'static Finder<'static> {
    cell.get_or_init(|| Finder::new(needle))
}

pub const REDACTED: &str = "[REDACTED]";
const MIN_TOKEN: usize = 20;

fn is_key_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-'
}

fn is_bearer_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'~' | b'+' | b'/' | b'=' | b'%' | b'-')
}

/// Ends the host part of a URL (and so its user info): `/`, `?`, `#`, a space or a control character.
fn ends_url_authority(byte: u8) -> bool {
    byte <= b' ' || byte == 0x7f || matches!(byte, b'/' | b'?' | b'#')
}

fn token_len(bytes: &[u8], token_byte: fn(u8) -> bool) -> usize {
    bytes.iter().take_while(|&&byte| token_byte(byte)).count()
}

/// The length of `bearer` (any case) and its separator (a space, `%20` or `+`) at the start of `bytes`.
#[inline]
fn bearer_prefix_len(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < 7 || !bytes[..6].eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    match bytes[6] {
        b' ' | b'+' => Some(7),
        b'%' if bytes[7..].starts_with(b"20") => Some(9),
        _ => None,
    }
}

/// Whether a pattern's prefix starts at `at`: `sk-`, `bearer` (any case) + separator, or `://`. Only `s`,
/// `b`, `B` and `:` can start one; every pattern's match holds one of these prefixes, so a text without one
/// needs no redaction beyond its registered secrets.
#[inline(always)]
fn token_prefix_at(bytes: &[u8], at: usize) -> bool {
    match bytes[at] {
        b's' => bytes[at..].starts_with(b"sk-"),
        b'b' | b'B' => bearer_prefix_len(&bytes[at..]).is_some(),
        b':' => bytes[at..].starts_with(b"://"),
        _ => false,
    }
}

/// Replaces each range `find` returns (searching from the end of the last one) with REDACTED.
fn replace_ranges<'a>(text: Cow<'a, [u8]>, find: impl Fn(&[u8], usize) -> Option<(usize, usize)>) -> Cow<'a, [u8]> {
    let bytes = text.as_ref();
    let mut out = Vec::new();
    let mut copied_to = 0;
    while let Some((start, end)) = find(bytes, copied_to) {
        out.extend_from_slice(&bytes[copied_to..start]);
        out.extend_from_slice(REDACTED.as_bytes());
        copied_to = end;
    }
    if copied_to == 0 {
        return text;
    }
    out.extend_from_slice(&bytes[copied_to..]);
    Cow::Owned(out)
}

/// The token of the first `sk-` key at or after `from`.
fn next_key(bytes: &[u8], mut from: usize) -> Option<(usize, usize)> {
    static KEY_PREFIX: OnceLock<Finder<'static>> = OnceLock::new();
    while let Some(found) = finder(&KEY_PREFIX, "sk-").find(&bytes[from..]) {
        let start = from + found;
        let token_start = start + 3;
        let token_end = token_start + token_len(&bytes[token_start..], is_key_byte);
        if (start == 0 || !is_key_byte(bytes[start - 1])) && token_end - token_start >= MIN_TOKEN {
            return Some((token_start, token_end));
        }
        from = start + 1;
    }
    None
}

/// The token of the first bearer token at or after `from`.
fn next_bearer(bytes: &[u8], from: usize) -> Option<(usize, usize)> {
    memchr::memchr2_iter(b'b', b'B', &bytes[from..]).find_map(|found| {
        let start = from + found;
        let token_start = start + bearer_prefix_len(&bytes[start..])?;
        let token_end = token_start + token_len(&bytes[token_start..], is_bearer_byte);
        (token_end - token_start >= MIN_TOKEN).then_some((token_start, token_end))
    })
}

/// The password of the first `://user:password@` at or after `from`: the user name ends at the first `:`,
/// the password at the last `@` of the authority.
fn next_url_password(bytes: &[u8], from: usize) -> Option<(usize, usize)> {
    static SCHEME_END: OnceLock<Finder<'static>> = OnceLock::new();
    finder(&SCHEME_END, "://").find_iter(&bytes[from..]).find_map(|found| {
        let authority_start = from + found + 3;
        let authority = &bytes[authority_start..];
        let authority = &authority[..authority.iter().position(|&byte| ends_url_authority(byte)).unwrap_or(authority.len())];
        let at = memchr::memrchr(b'@', authority)?;
        let colon = memchr::memchr(b':', &authority[..at])?;
        (colon + 1 < at).then_some((authority_start + colon + 1, authority_start + at))
    })
}

/// The starts of the patterns above, for the text scan of `simd`: `sk`, `be` in any case and `:/` begin
/// every one of them.
pub struct TokenPatterns;

impl PatternStarts for TokenPatterns {
    const PAIRS: [[u8; 2]; 3] = [*b"sk", *b"be", *b":/"];
    const FOLD_CASE: [bool; 3] = [false, true, false];

    #[inline(always)]
    fn starts_at(bytes: &[u8], at: usize) -> bool {
        token_prefix_at(bytes, at)
    }
}

/// One pass over a text: whether it needs JSON escaping, and whether it may hold a token (when it holds
/// none, redaction is only the registered secrets).
#[inline]
pub fn scan_text(bytes: &[u8]) -> TextScan {
    crate::simd::scan_text::<TokenPatterns>(bytes)
}

/// Whether `bytes` holds the start of a pattern anywhere.
fn may_hold_token(bytes: &[u8]) -> bool {
    scan_text(bytes).may_hold_token
}

/// `text` with every occurrence of `secret` replaced, left to right, as Python's `str.replace` does.
fn replace_all<'a>(text: Cow<'a, [u8]>, secret: &[u8]) -> Cow<'a, [u8]> {
    if memchr::memmem::find(&text, secret).is_none() {
        return text;
    }
    let mut out = Vec::with_capacity(text.len());
    let mut copied_to = 0;
    for start in memchr::memmem::find_iter(&text, secret) {
        out.extend_from_slice(&text[copied_to..start]);
        out.extend_from_slice(REDACTED.as_bytes());
        copied_to = start + secret.len();
    }
    out.extend_from_slice(&text[copied_to..]);
    Cow::Owned(out)
}

pub fn redact<'a>(text: &'a str, secrets: &[String]) -> Cow<'a, str> {
    redact_after_scan(text, secrets, true)
}

/// `redact` for a text whose scan (`scan_text`) told whether it holds a token prefix at all.
#[inline]
pub fn redact_after_scan<'a>(text: &'a str, secrets: &[String], may_hold_token_bytes: bool) -> Cow<'a, str> {
    // The common case, inlined: no pattern prefix and no registered secret in the text.
    if !may_hold_token_bytes && secrets.iter().all(|secret| memchr::memmem::find(text.as_bytes(), secret.as_bytes()).is_none()) {
        return Cow::Borrowed(text);
    }
    match redact_bytes(text.as_bytes(), secrets, may_hold_token_bytes) {
        Cow::Borrowed(_) => Cow::Borrowed(text),
        // Only whole characters were replaced, by ASCII (see the module's comment).
        Cow::Owned(redacted) => Cow::Owned(String::from_utf8(redacted).expect("redaction keeps UTF-8 valid")),
    }
}

/// `redact_after_scan` for UTF-8 bytes or the surrogate-preserving bytes of a Python str.
pub fn redact_bytes<'a>(text: &'a [u8], secrets: &[String], may_hold_token_bytes: bool) -> Cow<'a, [u8]> {
    let mut redacted = Cow::Borrowed(text);
    for secret in secrets.iter().filter(|secret| !secret.is_empty()) {
        redacted = replace_all(redacted, secret.as_bytes());
    }
    // A registered secret's replacement, `[REDACTED]`, holds no pattern prefix nor completes one with its
    // neighbours (none holds `[` or `]`, and `[REDACTED]` has no `b`), so the scan's answer still stands.
    if !may_hold_token_bytes || !may_hold_token(&redacted) {
        return redacted;
    }
    let redacted = replace_ranges(redacted, next_key);
    let redacted = replace_ranges(redacted, next_bearer);
    replace_ranges(redacted, next_url_password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_space_or_control_character_ends_a_url_s_user_info() {
        for text in ["see http://user:pw word@host", "http://user:pw\tx@host", "http://user:pw/path@host"] {
            assert_eq!(redact(text, &[]), text, "{text:?}");
        }
        assert_eq!(redact("http://user:pw@host and more@x", &[]), "http://user:[REDACTED]@host and more@x");
    }

    #[test]
    fn a_short_key_shape_is_left_alone_wherever_it_stands() {
        let text = format!("{} sk-short", "x".repeat(40));
        assert_eq!(redact(&text, &[]), text.as_str());
    }

    #[test]
    fn registered_secrets_and_key_shapes_are_redacted() {
        let secrets = vec!["hunter2-password".to_string()];
        assert_eq!(redact("pw hunter2-password!", &secrets), "pw [REDACTED]!");
        assert_eq!(redact("key sk-proj-abcdefghijklmnopqrstuvwxyz0123 end", &[]), "key sk-[REDACTED] end");
        assert_eq!(redact("Authorization: Bearer abcdefghijklmnopqrstuvwxyz.=", &[]), "Authorization: Bearer [REDACTED]");
    }

    #[test]
    fn ordinary_text_is_left_alone() {
        assert!(matches!(redact("a task-abcdefghijklmnopqrstuvwxyz list", &[]), Cow::Borrowed(_)));
        assert!(matches!(redact("sk-short and Bearer short", &[]), Cow::Borrowed(_)));
        assert_eq!(redact("", &[]), "");
    }

    #[test]
    fn registered_secrets_reach_every_thread() {
        add_secret("registered-in-a-test-0123".to_string());
        let seen = std::thread::spawn(|| registered_secrets().contains(&"registered-in-a-test-0123".to_string()));
        assert!(seen.join().unwrap());
        assert!(registered_secrets().contains(&"registered-in-a-test-0123".to_string()));
    }

    #[test]
    fn bearer_tokens_in_any_case_and_url_encoded() {
        let token = "abcdefghijklmnopqrstuvwxyz0123";
        for prefix in ["Bearer ", "bearer ", "BEARER ", "bEaReR ", "Bearer%20", "Bearer+", "bearer%20"] {
            assert_eq!(redact(&format!("h: {prefix}{token}; x"), &[]), format!("h: {prefix}[REDACTED]; x"), "{prefix}");
        }
        assert_eq!(redact("Bearer%20abc%2Fdefghijklmnopqrstuv", &[]), "Bearer%20[REDACTED]");
        assert!(matches!(redact(&format!("Bearer\t{token} Bearer%2{token} Bearers {token}"), &[]), Cow::Borrowed(_)));
    }

    #[test]
    fn url_passwords_are_redacted_user_names_kept() {
        assert_eq!(redact("http://user:pass@host/v1", &[]), "http://user:[REDACTED]@host/v1");
        assert_eq!(
            redact("see https://u:p@ss:w0rd@api.example.com:8443/v1?x=1", &[]),
            "see https://u:[REDACTED]@api.example.com:8443/v1?x=1"
        );
        assert_eq!(redact("a://u:1@h b://v:2@i", &[]), "a://u:[REDACTED]@h b://v:[REDACTED]@i");
        assert_eq!(redact("x://u:p\u{e9}@h", &[]), "x://u:[REDACTED]@h");
        for kept in ["https://user@host/v1", "http://host:8080/a@b", "http://u:@host", "http://h/p?u:p@x", "no url: u:p@h"] {
            assert_eq!(redact(kept, &[]), kept);
        }
    }

    #[test]
    fn surrogate_bytes_are_one_more_non_ascii_character() {
        // Python's "x\ud800sk-...".encode("utf-8", "surrogatepass"): the surrogate is ED A0 80.
        let text = b"a\xed\xa0\x80sk-abcdefghijklmnopqrstuvwxyz \xed\xa0\x80hunter2-secret\xed\xb0\x80 http://u:p\xed\xa0\x80q@h";
        let redacted = redact_bytes(text, &["hunter2-secret".to_string()], true);
        assert_eq!(&redacted[..], &b"a\xed\xa0\x80sk-[REDACTED] \xed\xa0\x80[REDACTED]\xed\xb0\x80 http://u:[REDACTED]@h"[..]);
    }

    #[test]
    fn the_scan_finds_every_text_a_pattern_changes() {
        let texts = [
            "sk-abcdefghijklmnopqrstuvwxyz",
            "bearer abcdefghijklmnopqrstuvwxyz",
            "BEARER+abcdefghijklmnopqrstuvwxyz",
            "x Bearer%20abcdefghijklmnopqrstuvwxyz",
            "ftp://u:secret@host",
        ];
        for text in texts {
            for padding in [0, 40, 70] {
                let padded = format!("{}{text}", ". ".repeat(padding));
                let scan = scan_text(padded.as_bytes());
                assert_ne!(redact_after_scan(&padded, &[], scan.may_hold_token), padded, "{padded}");
            }
        }
    }

    #[test]
    fn short_registered_secrets_are_replaced_too() {
        assert_eq!(redact("a-b-c", &["b".to_string()]), "a-[REDACTED]-c");
        assert_eq!(redact("aaaa", &["aa".to_string()]), "[REDACTED][REDACTED]");
    }

    #[test]
    fn every_occurrence_is_redacted() {
        let text = "sk-aaaaaaaaaaaaaaaaaaaaaaaa sk-bbbbbbbbbbbbbbbbbbbbbbbbbb";
        assert_eq!(redact(text, &[]), "sk-[REDACTED] sk-[REDACTED]");
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
}
