//! Redaction of secrets in logged text, shared by every string the JSONL encoder writes.
//! Mirrors `python/rlm_toolkit/secrets.py` (the reference): registered secrets (e.g. the client's API key)
//! become `[REDACTED]`; then tokens that look like API keys, `sk-` + 20 or more of `[A-Za-z0-9_-]` not
//! preceded by such a character, become `sk-[REDACTED]`; then `Bearer ` + 20 or more of
//! `[A-Za-z0-9._~+/=-]` becomes `Bearer [REDACTED]`.

use std::borrow::Cow;

pub const REDACTED: &str = "[REDACTED]";
const MIN_TOKEN: usize = 20;

fn is_key_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-'
}

fn is_bearer_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'~' | b'+' | b'/' | b'=' | b'-')
}

/// Replaces `prefix` + a run of at least MIN_TOKEN `token_byte`s with `prefix` + REDACTED.
fn redact_tokens<'a>(text: Cow<'a, str>, prefix: &str, token_byte: fn(u8) -> bool, needs_boundary: bool) -> Cow<'a, str> {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied_to = 0;
    let mut search_from = 0;
    while let Some(found) = text[search_from..].find(prefix) {
        let start = search_from + found;
        let token_start = start + prefix.len();
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

pub fn redact<'a>(text: &'a str, secrets: &[String]) -> Cow<'a, str> {
    // Fast path for the common case, one vectorised scan: nothing to redact can start without `sk-`'s
    // `-`, `Bearer `'s `B`, or (for a registered secret) its first byte.
    let bytes = text.as_bytes();
    let may_hold_token = memchr::memchr2(b'-', b'B', bytes).is_some();
    let may_hold_secret = secrets.iter().any(|secret| memchr::memmem::find(bytes, secret.as_bytes()).is_some());
    if !may_hold_token && !may_hold_secret {
        return Cow::Borrowed(text);
    }
    let mut redacted = Cow::Borrowed(text);
    for secret in secrets {
        if redacted.contains(secret.as_str()) {
            redacted = Cow::Owned(redacted.replace(secret.as_str(), REDACTED));
        }
    }
    let redacted = redact_tokens(redacted, "sk-", is_key_byte, true);
    redact_tokens(redacted, "Bearer ", is_bearer_byte, false)
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
    fn every_occurrence_is_redacted() {
        let text = "sk-aaaaaaaaaaaaaaaaaaaaaaaa sk-bbbbbbbbbbbbbbbbbbbbbbbbbb";
        assert_eq!(redact(text, &[]), "sk-[REDACTED] sk-[REDACTED]");
    }
}
