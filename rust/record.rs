//! Python event values to JSONL records, with the rules of `python/rlm_toolkit/_reference/records.py`
//! (the oracle): every string (values, keys, `model`, exception type names) capped at `max_chars` code
//! points, bytes decoded with backslash escapes, ints of more than `MAX_INT_BITS` bits as a marker, floats
//! as Python's `repr`, NaN and infinities as strings, non-str keys as `str(key)` (the first of equal keys
//! kept), sequences and sets as arrays (written as text when iterating them raises), exceptions as
//! `{"type", "message"}`, nesting past `MAX_DEPTH` as a marker, anything else as `str()`, else `repr()`,
//! else `<unrepresentable TYPE>`. Which conversation text is written follows the table
//! `rlm_toolkit.events.CONTENT_FIELDS`, read once. Encoding never fails: every Python error met on the way
//! is cleared and the fallback written, so a record is always valid JSON.

use pyo3::exceptions::PyBaseException;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyFrozenSet, PyInt, PyList, PySet, PyString, PyTuple};

use crate::events::{EventKind, EventSpec, EVENTS};
use crate::redact::{redact_after_scan, registered_secrets};
use crate::jsonl::{push_escaped, push_escaped_utf16, push_f64, push_i64, push_iso_utc, push_string, push_u64, scan_text};

pub const MAX_DEPTH: usize = 64;
const DEPTH_EXCEEDED: &str = "<max depth exceeded>";
/// Ints up to this many bits (617 digits) are written as numbers: always convertible to decimal.
const MAX_INT_BITS: u64 = 2048;
/// Dicts with more keys than this find repeated keys with a hash set rather than by comparing.
const KEYS_COMPARED_DIRECTLY: usize = 16;

/// Options of one JSONL sink that shape its records.
pub struct RecordOptions {
    pub include_prompts: bool,
    pub include_responses: bool,
    pub max_chars: usize,
}

impl RecordOptions {
    fn switched_on(&self) -> u8 {
        (if self.include_prompts { PROMPTS } else { 0 }) | (if self.include_responses { RESPONSES } else { 0 })
    }
}

/// Content switches as bits; a switch name the table holds but this build does not know is never on.
const PROMPTS: u8 = 1;
const RESPONSES: u8 = 2;
const UNKNOWN_SWITCH: u8 = 0x80;

fn switch_bit(name: &str) -> u8 {
    match name {
        "include_prompts" => PROMPTS,
        "include_responses" => RESPONSES,
        _ => UNKNOWN_SWITCH,
    }
}

/// The switches one field needs: by the event's `role=` extra, else for any role.
#[derive(Clone, Default)]
struct FieldSwitches {
    any_role: u8,
    by_role: Vec<(String, u8)>,
}

impl FieldSwitches {
    fn written(&self, switched_on: u8, role: Option<&str>) -> bool {
        let needed = role
            .and_then(|role| self.by_role.iter().find(|(name, _)| name == role))
            .map_or(self.any_role, |(_, bits)| *bits);
        needed & !switched_on == 0
    }
}

/// `rlm_toolkit.events.CONTENT_FIELDS` by event kind and field position.
struct ContentTable {
    fields: Vec<Vec<FieldSwitches>>,
    error_message: Vec<FieldSwitches>,
    uses_role: Vec<bool>,
}

impl ContentTable {
    fn with_every_field(switches: FieldSwitches) -> ContentTable {
        ContentTable {
            fields: EVENTS.iter().map(|spec| vec![switches.clone(); spec.fields.len()]).collect(),
            error_message: vec![switches; EVENTS.len()],
            uses_role: vec![false; EVENTS.len()],
        }
    }

    fn read(py: Python<'_>) -> PyResult<ContentTable> {
        let mut table = ContentTable::with_every_field(FieldSwitches::default());
        for row in py.import("rlm_toolkit.events")?.getattr("CONTENT_FIELDS")?.try_iter()? {
            let row = row?;
            let event: String = row.getattr("event")?.extract()?;
            let field: String = row.getattr("field")?.extract()?;
            let role: Option<String> = row.getattr("role")?.extract()?;
            let switches: Vec<String> = row.getattr("switches")?.extract()?;
            let bits = switches.iter().fold(0, |bits, name| bits | switch_bit(name));
            // Rows naming no field of the catalogue match nothing, as in the reference.
            let Some(kind) = EventKind::from_name(&event) else { continue };
            let target = if field == "error.message" {
                &mut table.error_message[kind.index()]
            } else if let Some(position) = kind.spec().fields.iter().position(|name| *name == field) {
                &mut table.fields[kind.index()][position]
            } else {
                continue;
            };
            match role {
                None => target.any_role = bits,
                Some(role) => {
                    target.by_role.push((role, bits));
                    table.uses_role[kind.index()] = true;
                }
            }
        }
        Ok(table)
    }
}

/// The content table, read from Python on first use; if it cannot be read, no field of an event's
/// arguments is written.
fn content_table(py: Python<'_>) -> &'static ContentTable {
    static TABLE: PyOnceLock<ContentTable> = PyOnceLock::new();
    if let Some(table) = TABLE.get(py) {
        return table;
    }
    // Read before taking the cell, not inside `get_or_init`: reading runs Python, which lets other
    // threads run, and a `fork()` then would leave the child a cell that is initializing forever.
    let table = ContentTable::read(py).unwrap_or_else(|_| ContentTable::with_every_field(FieldSwitches { any_role: UNKNOWN_SWITCH, by_role: Vec::new() }));
    // Another thread may have stored its (identical) table meanwhile; either is the one kept.
    let _ = TABLE.set(py, table);
    TABLE.get(py).expect("set just above")
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
            Err(_) => match redact_surrogate_text(text, self.secrets) {
                Ok(Some(redacted)) => push_surrogate_text_capped(out, &redacted, max_chars),
                Ok(None) => push_surrogate_text_capped(out, text, max_chars),
                // Not reached (a str always has surrogate-preserving bytes); the text then loses its
                // surrogates, never its redaction.
                Err(_) => self.push_text(out, &text.to_string_lossy(), max_chars),
            },
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

/// `text`, which has lone surrogates, redacted: its surrogate-preserving bytes (`encode("utf-8",
/// "surrogatepass")`) go through the same passes as UTF-8, so the text around the surrogates is redacted as
/// the reference's regular expressions redact the whole str. None when there was nothing to redact.
pub fn redact_surrogate_text<'py>(text: &Bound<'py, PyString>, secrets: &[String]) -> PyResult<Option<Bound<'py, PyString>>> {
    let py = text.py();
    let encoded = text.call_method1(intern!(py, "encode"), (intern!(py, "utf-8"), intern!(py, "surrogatepass")))?;
    let bytes = encoded.cast::<PyBytes>()?.as_bytes();
    match crate::redact::redact_bytes(bytes, secrets, scan_text(bytes).may_hold_token) {
        std::borrow::Cow::Borrowed(_) => Ok(None),
        std::borrow::Cow::Owned(redacted) => {
            let decoded = PyBytes::new(py, &redacted).call_method1(intern!(py, "decode"), (intern!(py, "utf-8"), intern!(py, "surrogatepass")))?;
            Ok(Some(decoded.cast_into::<PyString>()?))
        }
    }
}

/// Text with lone surrogates, already redacted: capped in Python (so at code points as `len` counts them),
/// escaped.
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

/// The int's own value (`int.__repr__`, not a subclass's), or `"<int of N bits>"` past `MAX_INT_BITS`.
fn push_int(out: &mut Vec<u8>, value: &Bound<'_, PyAny>) {
    if let Ok(small) = value.extract::<i64>() {
        return push_i64(out, small);
    }
    let py = value.py();
    let int_type = py.get_type::<PyInt>();
    match int_type.call_method1(intern!(py, "bit_length"), (value,)).and_then(|bits| bits.extract::<u64>()) {
        Ok(bits) if bits > MAX_INT_BITS => push_string(out, &format!("<int of {bits} bits>")),
        _ => match int_type.call_method1(intern!(py, "__repr__"), (value,)).and_then(|digits| Ok(digits.cast_into::<PyString>()?)) {
            Ok(digits) => out.extend_from_slice(digits.to_string_lossy().as_bytes()),
            Err(_) => out.extend_from_slice(b"null"),
        },
    }
}

/// The byte spans in `out` of the keys written so far in one dict, to keep only the first of equal keys
/// (equal strings have equal JSON forms and unequal strings unequal ones).
struct SeenKeys {
    spans: Vec<(usize, usize)>,
    hashed: Option<rustc_hash::FxHashSet<Box<[u8]>>>,
}

impl SeenKeys {
    fn new(expected: usize) -> SeenKeys {
        let hashed = (expected > KEYS_COMPARED_DIRECTLY).then(rustc_hash::FxHashSet::default);
        SeenKeys { spans: Vec::new(), hashed }
    }

    /// Whether the key at `out[start..]` is new (and now seen).
    fn insert(&mut self, out: &[u8], start: usize) -> bool {
        let key = &out[start..];
        match &mut self.hashed {
            Some(hashed) => hashed.insert(key.into()),
            None if self.spans.iter().any(|&(from, to)| &out[from..to] == key) => false,
            None => {
                self.spans.push((start, out.len()));
                true
            }
        }
    }
}

/// The str's own text as an exact str (`str.__str__`), whatever methods a subclass overrides.
fn own_str<'py>(text: &Bound<'py, PyString>) -> Bound<'py, PyString> {
    if text.is_exact_instance_of::<PyString>() {
        return text.clone();
    }
    let py = text.py();
    py.get_type::<PyString>()
        .call_method1(intern!(py, "__str__"), (text,))
        .and_then(|exact| Ok(exact.cast_into::<PyString>()?))
        .unwrap_or_else(|_| PyString::new(py, ""))
}

impl Encoder<'_> {
    /// `str(value)`, else `repr(value)`, else `<unrepresentable TYPE>`.
    fn push_fallback_text(&self, out: &mut Vec<u8>, value: &Bound<'_, PyAny>, max_chars: usize) {
        match value.str().or_else(|_| value.repr()) {
            Ok(text) => self.push_pystr(out, &own_str(&text), max_chars),
            Err(_) => {
                let type_name = value.get_type().name().map(|name| name.to_string()).unwrap_or_else(|_| "object".into());
                self.push_text(out, &format!("<unrepresentable {type_name}>"), max_chars);
            }
        }
    }

    fn push_type_name(&self, out: &mut Vec<u8>, value: &Bound<'_, PyAny>, max_chars: usize) {
        match value.get_type().name() {
            Ok(name) => self.push_pystr(out, &name, max_chars),
            Err(_) => self.push_text(out, "object", max_chars),
        }
    }

    pub fn push_value(&self, out: &mut Vec<u8>, value: &Bound<'_, PyAny>, max_chars: usize, depth: usize) {
        if value.is_none() {
            out.extend_from_slice(b"null");
        } else if let Ok(flag) = value.cast::<PyBool>() {
            out.extend_from_slice(if flag.is_true() { b"true" } else { b"false" });
        } else if let Ok(text) = value.cast::<PyString>() {
            self.push_pystr(out, &own_str(text), max_chars);
        } else if value.is_instance_of::<PyInt>() {
            push_int(out, value);
        } else if let Ok(number) = value.cast::<PyFloat>() {
            push_f64(out, number.value());
        } else if value.is_instance_of::<PyBytes>() || value.is_instance_of::<PyByteArray>() {
            // The buffer's own bytes, whatever a subclass's `decode` does.
            match PyString::from_encoded_object(value, Some(c"utf-8"), Some(c"backslashreplace")) {
                Ok(decoded) => self.push_pystr(out, &decoded, max_chars),
                Err(_) => self.push_fallback_text(out, value, max_chars),
            }
        } else if value.is_instance_of::<PyBaseException>() {
            out.extend_from_slice(b"{\"type\":");
            self.push_type_name(out, value, max_chars);
            out.extend_from_slice(b",\"message\":");
            self.push_fallback_text(out, value, max_chars);
            out.push(b'}');
        } else if let Ok(mapping) = value.cast::<PyDict>() {
            if depth >= MAX_DEPTH {
                return push_string(out, DEPTH_EXCEEDED);
            }
            // A snapshot of the items: str() of a value may run code that mutates the dict.
            let items = mapping.items();
            let mut seen = SeenKeys::new(items.len());
            let mut written_any = false;
            out.push(b'{');
            for item in items.iter() {
                let (key, item_value) = match item.cast_into::<PyTuple>() {
                    Ok(pair) if pair.len() == 2 => (pair.get_item(0).expect("len 2"), pair.get_item(1).expect("len 2")),
                    _ => continue,
                };
                let entry_start = out.len();
                if written_any {
                    out.push(b',');
                }
                let key_start = out.len();
                match key.cast::<PyString>() {
                    Ok(text_key) => self.push_pystr(out, &own_str(text_key), max_chars),
                    Err(_) => self.push_fallback_text(out, &key, max_chars),
                }
                if !seen.insert(out, key_start) {
                    out.truncate(entry_start);
                    continue;
                }
                written_any = true;
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
            // All items first: a container whose iteration raises is written as text instead.
            let items: PyResult<Vec<Bound<'_, PyAny>>> = value.try_iter().and_then(|items| items.collect());
            let Ok(items) = items else { return self.push_fallback_text(out, value, max_chars) };
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                self.push_value(out, item, max_chars, depth + 1);
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

/// The event's `role=` extra when it is a str.
fn role_of<'py>(extra: Option<&Bound<'py, PyDict>>) -> Option<Bound<'py, PyString>> {
    let role = extra?.get_item(intern!(extra?.py(), "role")).ok()??;
    role.cast_into::<PyString>().ok()
}

/// Appends one JSONL line (with its newline) for `event`.
pub fn push_record(out: &mut Vec<u8>, event: &EventValues<'_, '_>, options: &RecordOptions) {
    let spec: &EventSpec = event.kind.spec();
    let max_chars = options.max_chars;
    let secrets = registered_secrets();
    let encoder = Encoder { secrets: &secrets };
    let py = event.args[0].py();
    let content = content_table(py);
    let switched_on = options.switched_on();
    let role = if content.uses_role[event.kind.index()] { role_of(event.extra) } else { None };
    let role = role.as_ref().and_then(|role| role.to_str().ok());
    let field_switches = &content.fields[event.kind.index()];
    out.extend_from_slice(b"{\"ts\":");
    push_iso_utc(out, event.ts);
    out.extend_from_slice(&record_heads()[event.kind.index()]);
    encoder.push_optional(out, event.run_id, max_chars);
    out.extend_from_slice(b",\"parent_run_id\":");
    encoder.push_optional(out, event.parent_run_id, max_chars);
    if event.kind == EventKind::LlmEnd {
        out.extend_from_slice(b",\"model\":");
        encoder.push_optional(out, event.response_model().map(|model| model.as_any()), max_chars);
        let response_at = spec.fields.iter().position(|name| *name == "response").expect("llm_end has a response");
        if field_switches[response_at].written(switched_on, role) {
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
        for (field, switches) in spec.fields.iter().zip(field_switches) {
            if *field == "model" {
                push_key(out, field);
                encoder.push_optional(out, event.model.map(|model| model.as_any()), max_chars);
                continue;
            }
            let value = &event.args[spec.args.iter().position(|arg| arg == field).expect("fields name arguments")];
            if *field == "error" && !content.error_message[event.kind.index()].written(switched_on, role) {
                push_key(out, field);
                out.extend_from_slice(b"{\"type\":");
                encoder.push_type_name(out, value, max_chars);
                out.push(b'}');
            } else if switches.written(switched_on, role) {
                push_key(out, field);
                encoder.push_value(out, value, max_chars, 0);
            }
        }
    }
    if let Some(extra) = event.extra.filter(|extra| !extra.is_empty()) {
        push_key(out, "extra");
        encoder.push_value(out, extra.as_any(), max_chars, 0);
    }
    out.extend_from_slice(b"}\n");
}
