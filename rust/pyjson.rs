//! Python event values to JSONL records, with the rules of `python/rlm_toolkit/_reference/records.py`
//! (the oracle): strings capped at `max_chars` code points, bytes decoded with backslash escapes, NaN and
//! infinities as strings, non-str keys as `str(key)`, sequences and sets as arrays, exceptions as
//! `{"type", "message"}`, nesting past `MAX_DEPTH` as a marker, anything else as `str()`, else `repr()`,
//! else `<unrepresentable TYPE>`. Encoding never fails: every Python error met on the way is cleared and
//! the fallback written, so a record is always valid JSON.

use pyo3::exceptions::PyBaseException;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyFrozenSet, PyInt, PyList, PySet, PyString, PyTuple};

use crate::events::{EventKind, EventSpec, EVENTS};
use crate::redact::{redact_after_scan, registered_secrets};
use crate::jsonl::{push_escaped, push_escaped_utf16, push_f64, push_i64, push_iso_utc, push_string, push_u64, scan_text};

pub const MAX_DEPTH: usize = 64;
const DEPTH_EXCEEDED: &str = "<max depth exceeded>";

/// Options of one JSONL sink that shape its records.
pub struct RecordOptions {
    pub include_prompts: bool,
    pub include_responses: bool,
    pub max_chars: usize,
}

/// One event as the dispatcher received it.
pub struct EventValues<'a, 'py> {
    pub kind: EventKind,
    pub args: &'a [Bound<'py, PyAny>],
    pub run_id: Option<&'a Bound<'py, PyAny>>,
    pub parent_run_id: Option<&'a Bound<'py, PyAny>>,
    pub model: Option<&'a Bound<'py, PyString>>,
    pub ts: f64,
    pub extra: Option<&'a Bound<'py, PyDict>>,
    /// Read from an `llm_end` response once, for every sink.
    response_usage: std::cell::OnceCell<Option<(u64, u64, u64)>>,
    response_model: std::cell::OnceCell<Option<Bound<'py, PyString>>>,
}

impl<'a, 'py> EventValues<'a, 'py> {
    pub fn new(
        kind: EventKind,
        args: &'a [Bound<'py, PyAny>],
        run_id: Option<&'a Bound<'py, PyAny>>,
        parent_run_id: Option<&'a Bound<'py, PyAny>>,
        model: Option<&'a Bound<'py, PyString>>,
        ts: f64,
        extra: Option<&'a Bound<'py, PyDict>>,
    ) -> Self {
        let (response_usage, response_model) = (std::cell::OnceCell::new(), std::cell::OnceCell::new());
        EventValues { kind, args, run_id, parent_run_id, model, ts, extra, response_usage, response_model }
    }

    /// (prompt, completion, total) tokens of the `llm_end` response, or None when it carries no usage.
    pub fn usage(&self) -> Option<(u64, u64, u64)> {
        *self.response_usage.get_or_init(|| usage_of(&self.args[0]))
    }

    /// The `model` keyword, else the `llm_end` response's own `model` when it is a str.
    pub fn response_model(&self) -> Option<&Bound<'py, PyString>> {
        self.response_model.get_or_init(|| response_model(&self.args[0], self.model)).as_ref()
    }
}

struct Encoder<'s> {
    secrets: &'s [String],
}

impl Encoder<'_> {
    fn push_pystr(&self, out: &mut Vec<u8>, text: &Bound<'_, PyString>, max_chars: usize) {
        match text.to_str() {
            Ok(utf8) => self.push_text(out, utf8, max_chars),
            Err(_) => push_surrogate_text_capped(out, text, max_chars),
        }
    }

    /// Redacted, then capped at `max_chars` code points (as Python's `len` counts them).
    fn push_text(&self, out: &mut Vec<u8>, text: &str, max_chars: usize) {
        let scan = scan_text(text.as_bytes());
        let redacted = redact_after_scan(text, self.secrets, scan.may_hold_token);
        let needs_escape = scan.needs_escape || matches!(redacted, std::borrow::Cow::Owned(_));
        out.push(b'"');
        let cut = if redacted.len() > max_chars { redacted.char_indices().nth(max_chars).map(|(at, _)| at) } else { None };
        match cut {
            None if !needs_escape => out.extend_from_slice(redacted.as_bytes()),
            None => push_escaped(out, &redacted),
            Some(at) => {
                push_escaped(out, &redacted[..at]);
                let dropped = redacted[at..].chars().count();
                push_escaped(out, &format!("…[truncated {dropped} chars]"));
            }
        }
        out.push(b'"');
    }
}

/// Text with lone surrogates (no UTF-8 form, so no redaction patterns apply): capped in Python, escaped.
fn push_surrogate_text_capped(out: &mut Vec<u8>, text: &Bound<'_, PyString>, max_chars: usize) {
    let length = text.len().unwrap_or(0);
    let shown = if length > max_chars {
        text.as_any()
            .get_item(pyo3::types::PySlice::new(text.py(), 0, max_chars as isize, 1))
            .ok()
            .and_then(|prefix| prefix.cast_into::<PyString>().ok())
    } else {
        None
    };
    out.push(b'"');
    push_surrogate_text(out, shown.as_ref().unwrap_or(text));
    if length > max_chars {
        push_escaped(out, &format!("…[truncated {} chars]", length - max_chars));
    }
    out.push(b'"');
}

/// Text with lone surrogates, which have no UTF-8 form: go through UTF-16 and escape them.
fn push_surrogate_text(out: &mut Vec<u8>, text: &Bound<'_, PyString>) {
    let py = text.py();
    let encoded = text.call_method1(intern!(py, "encode"), (intern!(py, "utf-16-le"), intern!(py, "surrogatepass")));
    match encoded.as_ref().map(|bytes| bytes.cast::<PyBytes>()) {
        Ok(Ok(bytes)) => {
            let units: Vec<u16> = bytes.as_bytes().chunks_exact(2).map(|pair| u16::from_le_bytes([pair[0], pair[1]])).collect();
            push_escaped_utf16(out, &units);
        }
        _ => push_escaped(out, &text.to_string_lossy()),
    }
}

fn push_int(out: &mut Vec<u8>, value: &Bound<'_, PyAny>) {
    if let Ok(small) = value.extract::<i64>() {
        return push_i64(out, small);
    }
    let digits = value.py().get_type::<PyInt>().call1((value,)).and_then(|as_int| as_int.repr());
    match digits {
        Ok(digits) => out.extend_from_slice(digits.to_string_lossy().as_bytes()),
        Err(_) => out.extend_from_slice(b"null"),
    }
}

impl Encoder<'_> {
    /// `str(value)`, else `repr(value)`, else `<unrepresentable TYPE>`.
    fn push_fallback_text(&self, out: &mut Vec<u8>, value: &Bound<'_, PyAny>, max_chars: usize) {
        match value.str().or_else(|_| value.repr()) {
            Ok(text) => self.push_pystr(out, &text, max_chars),
            Err(_) => {
                let type_name = value.get_type().name().map(|name| name.to_string()).unwrap_or_else(|_| "object".into());
                self.push_text(out, &format!("<unrepresentable {type_name}>"), max_chars);
            }
        }
    }

    pub fn push_value(&self, out: &mut Vec<u8>, value: &Bound<'_, PyAny>, max_chars: usize, depth: usize) {
        if value.is_none() {
            out.extend_from_slice(b"null");
        } else if let Ok(flag) = value.cast::<PyBool>() {
            out.extend_from_slice(if flag.is_true() { b"true" } else { b"false" });
        } else if let Ok(text) = value.cast::<PyString>() {
            self.push_pystr(out, text, max_chars);
        } else if value.is_instance_of::<PyInt>() {
            push_int(out, value);
        } else if let Ok(number) = value.cast::<PyFloat>() {
            push_f64(out, number.value());
        } else if value.is_instance_of::<PyBytes>() || value.is_instance_of::<PyByteArray>() {
            let py = value.py();
            match value.call_method1(intern!(py, "decode"), (intern!(py, "utf-8"), intern!(py, "backslashreplace"))) {
                Ok(decoded) => self.push_value(out, &decoded, max_chars, depth),
                Err(_) => self.push_fallback_text(out, value, max_chars),
            }
        } else if value.is_instance_of::<PyBaseException>() {
            out.extend_from_slice(b"{\"type\":");
            let type_name = value.get_type().name().map(|name| name.to_string()).unwrap_or_else(|_| "Exception".into());
            push_string(out, &type_name);
            out.extend_from_slice(b",\"message\":");
            self.push_fallback_text(out, value, max_chars);
            out.push(b'}');
        } else if let Ok(mapping) = value.cast::<PyDict>() {
            if depth >= MAX_DEPTH {
                return push_string(out, DEPTH_EXCEEDED);
            }
            // A snapshot of the items: str() of a value may run code that mutates the dict.
            out.push(b'{');
            for (index, item) in mapping.items().iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                let (key, item_value) = match item.cast_into::<PyTuple>() {
                    Ok(pair) if pair.len() == 2 => (pair.get_item(0).expect("len 2"), pair.get_item(1).expect("len 2")),
                    _ => continue,
                };
                match key.cast::<PyString>() {
                    Ok(text_key) => self.push_pystr(out, text_key, usize::MAX),
                    Err(_) => self.push_fallback_text(out, &key, usize::MAX),
                }
                out.push(b':');
                self.push_value(out, &item_value, max_chars, depth + 1);
            }
            out.push(b'}');
        } else if value.is_instance_of::<PyList>()
            || value.is_instance_of::<PyTuple>()
            || value.is_instance_of::<PySet>()
            || value.is_instance_of::<PyFrozenSet>()
        {
            if depth >= MAX_DEPTH {
                return push_string(out, DEPTH_EXCEEDED);
            }
            out.push(b'[');
            if let Ok(items) = value.try_iter() {
                for (index, item) in items.flatten().enumerate() {
                    if index > 0 {
                        out.push(b',');
                    }
                    self.push_value(out, &item, max_chars, depth + 1);
                }
            }
            out.push(b']');
        } else {
            self.push_fallback_text(out, value, max_chars);
        }
    }

    fn push_optional(&self, out: &mut Vec<u8>, value: Option<&Bound<'_, PyAny>>, max_chars: usize) {
        match value {
            Some(value) => self.push_value(out, value, max_chars, 0),
            None => out.extend_from_slice(b"null"),
        }
    }

}

fn token_count(usage: &Bound<'_, PyAny>, name: &Bound<'_, PyString>) -> u64 {
    match usage.getattr(name) {
        Ok(count) if count.is_instance_of::<PyInt>() && !count.is_instance_of::<PyBool>() => count.extract::<u64>().unwrap_or(0),
        _ => 0,
    }
}

/// (prompt, completion, total) tokens of an LLM response, or None when it carries no usage.
fn usage_of(response: &Bound<'_, PyAny>) -> Option<(u64, u64, u64)> {
    let py = response.py();
    let usage = response.getattr(intern!(py, "usage")).ok().filter(|usage| !usage.is_none())?;
    Some((
        token_count(&usage, intern!(py, "prompt_tokens")),
        token_count(&usage, intern!(py, "completion_tokens")),
        token_count(&usage, intern!(py, "total_tokens")),
    ))
}

/// The `model` keyword, else the response's own `model` when it is a str.
fn response_model<'py>(response: &Bound<'py, PyAny>, model: Option<&Bound<'py, PyString>>) -> Option<Bound<'py, PyString>> {
    if let Some(model) = model {
        return Some(model.clone());
    }
    let py = response.py();
    response.getattr(intern!(py, "model")).ok().and_then(|name| name.cast_into::<PyString>().ok())
}

impl Encoder<'_> {
    fn push_response_text(&self, out: &mut Vec<u8>, response: &Bound<'_, PyAny>, max_chars: usize) {
        if response.is_instance_of::<PyString>() {
            return self.push_value(out, response, max_chars, 0);
        }
        let py = response.py();
        match response.getattr(intern!(py, "content")) {
            Ok(content) if !content.is_none() => self.push_value(out, &content, max_chars, 0),
            _ => self.push_value(out, response, max_chars, 0),
        }
    }
}

/// `,"name":` — record keys are plain identifiers, so no escaping is needed.
fn push_key(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

/// `,"event":"<name>","run_id":` for each event kind, in catalogue order.
fn record_heads() -> &'static [Vec<u8>] {
    static HEADS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    HEADS.get_or_init(|| EVENTS.iter().map(|spec| format!(",\"event\":\"{}\",\"run_id\":", spec.name).into_bytes()).collect())
}

/// Appends one JSONL line (with its newline) for `event`.
pub fn push_record(out: &mut Vec<u8>, event: &EventValues<'_, '_>, options: &RecordOptions) {
    let spec: &EventSpec = event.kind.spec();
    let max_chars = options.max_chars;
    let secrets = registered_secrets();
    let encoder = Encoder { secrets: &secrets };
    out.extend_from_slice(b"{\"ts\":");
    push_iso_utc(out, event.ts);
    out.extend_from_slice(&record_heads()[event.kind.index()]);
    encoder.push_optional(out, event.run_id, max_chars);
    out.extend_from_slice(b",\"parent_run_id\":");
    encoder.push_optional(out, event.parent_run_id, max_chars);
    if event.kind == EventKind::LlmEnd {
        out.extend_from_slice(b",\"model\":");
        encoder.push_optional(out, event.response_model().map(|model| model.as_any()), usize::MAX);
        if options.include_responses {
            out.extend_from_slice(b",\"response\":");
            encoder.push_response_text(out, &event.args[0], max_chars);
        }
        let (prompt_tokens, completion_tokens, total_tokens) = event.usage().unwrap_or((0, 0, 0));
        let total = if total_tokens > 0 { total_tokens } else { prompt_tokens.saturating_add(completion_tokens) };
        out.extend_from_slice(b",\"prompt_tokens\":");
        push_u64(out, prompt_tokens);
        out.extend_from_slice(b",\"completion_tokens\":");
        push_u64(out, completion_tokens);
        out.extend_from_slice(b",\"total_tokens\":");
        push_u64(out, total);
    } else {
        for field in spec.fields {
            if *field == "model" {
                push_key(out, field);
                encoder.push_optional(out, event.model.map(|model| model.as_any()), usize::MAX);
            } else if (*field != "prompt" || options.include_prompts) && (*field != "answer" || options.include_responses) {
                let position = spec.args.iter().position(|arg| arg == field).expect("fields name arguments");
                push_key(out, field);
                encoder.push_value(out, &event.args[position], max_chars, 0);
            }
        }
    }
    if let Some(extra) = event.extra.filter(|extra| !extra.is_empty()) {
        push_key(out, "extra");
        encoder.push_value(out, extra.as_any(), max_chars, 0);
    }
    out.extend_from_slice(b"}\n");
}
