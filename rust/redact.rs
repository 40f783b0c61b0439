//! Redaction of secrets in logged text, shared by every string the JSONL encoder writes.
//! Mirrors `python/rlm_toolkit/secrets.py` (the reference): registered secrets (e.g. the client's API key)
//! become `[REDACTED]`; then tokens that look like API keys, `sk-` + 20 or more of `[A-Za-z0-9_-]` not
//! preceded by such a character, become `sk-[REDACTED]`; then `Bearer ` + 20 or more of
//! `[A-Za-z0-9._~+/=-]` becomes `Bearer [REDACTED]`.

use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{OnceLock, RwLock};

use memchr::memmem::Finder;

static REGISTERED: RwLock<Vec<String>> = RwLock::new(Vec::new());
static REGISTRY_VERSION: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's copy of the registry, refreshed when its version changes: reading it per record then
    /// costs one plain load instead of a lock shared by every thread.
    static LOCAL_SECRETS: RefCell<(u64, Rc<Vec<String>>)> = RefCell::new((0, Rc::new(Vec::new())));
}

/// Registers a secret to redact from now on, in every thread.
pub fn add_secret(value: String) {
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
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'~' | b'+' | b'/' | b'=' | b'-')
}

/// Replaces `prefix` + a run of at least MIN_TOKEN `token_byte`s with `prefix` + REDACTED.
fn redact_tokens<'a>(text: Cow<'a, str>, prefix: &Finder<'_>, token_byte: fn(u8) -> bool, needs_boundary: bool) -> Cow<'a, str> {
    let bytes = text.as_bytes();
    let mut out = String::new();
    let mut copied_to = 0;
    let mut search_from = 0;
    while let Some(found) = prefix.find(&bytes[search_from..]) {
        let start = search_from + found;
        let token_start = start + prefix.needle().len();
        let token_end = token_start + bytes[token_start..].iter().take_while(|&&byte| token_byte(byte)).count();
        let at_boundary = !needs_boundary || start == 0 || !is_key_byte(bytes[start - 1]);
        if at_boundary && token_end - token_start >= MIN_TOKEN {
            out.push_str(&text[copied_to..token_start]);
            out.push_str(REDACTED);
            copied_to = token_end;
            search_from = token_end;
        } else {
            search_from = token_start;
        }
    }
    if copied_to == 0 {
        return text;
    }
    out.push_str(&text[copied_to..]);
    Cow::Owned(out)
}

/// Whether `bytes` holds `sk-` or `Bearer `: a plain loop for short texts (ids, model names), where a
/// vectorised search costs more to set up than it saves; else one scan for their rarest bytes, `-`, `B`.
fn may_hold_token(bytes: &[u8]) -> bool {
    if bytes.len() < 64 {
        return bytes.windows(3).any(|window| window == b"sk-") || bytes.windows(7).any(|window| window == b"Bearer ");
    }
    memchr::memchr2_iter(b'-', b'B', bytes).any(|at| {
        if bytes[at] == b'-' {
            at >= 2 && &bytes[at - 2..at] == b"sk"
        } else {
            bytes[at..].starts_with(b"Bearer ")
        }
    })
}

pub fn redact<'a>(text: &'a str, secrets: &[String]) -> Cow<'a, str> {
    redact_after_scan(text, secrets, true)
}

/// `redact` for a text whose scan (`jsonl::scan_text`) told whether it holds a token prefix at all.
pub fn redact_after_scan<'a>(text: &'a str, secrets: &[String], may_hold_token_bytes: bool) -> Cow<'a, str> {
    static KEY_PREFIX: OnceLock<Finder<'static>> = OnceLock::new();
    static BEARER_PREFIX: OnceLock<Finder<'static>> = OnceLock::new();
    let mut redacted = Cow::Borrowed(text);
    for secret in secrets {
        if memchr::memmem::find(redacted.as_bytes(), secret.as_bytes()).is_some() {
            redacted = Cow::Owned(redacted.replace(secret.as_str(), REDACTED));
        }
    }
    // A registered secret's replacement, `[REDACTED]`, cannot complete a token prefix, so the scan's
    // answer still stands.
    if !may_hold_token_bytes || !may_hold_token(redacted.as_bytes()) {
        return redacted;
    }
    let redacted = redact_tokens(redacted, finder(&KEY_PREFIX, "sk-"), is_key_byte, true);
    redact_tokens(redacted, finder(&BEARER_PREFIX, "Bearer "), is_bearer_byte, false)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn every_occurrence_is_redacted() {
        let text = "sk-aaaaaaaaaaaaaaaaaaaaaaaa sk-bbbbbbbbbbbbbbbbbbbbbbbbbb";
        assert_eq!(redact(text, &[]), "sk-[REDACTED] sk-[REDACTED]");
    }
}
