//! Any Python value as JSON, with the rules of `python/rlm_toolkit/_reference/records.py` (the oracle):
//! every string (values, keys, exception type names) redacted and capped at `max_chars` code points, bytes
//! decoded with backslash escapes, ints of more than `MAX_INT_BITS` bits as a marker, floats as Python's
//! `repr`, NaN and infinities as strings, non-str keys as `str(key)` (the first of equal keys kept),
//! sequences and sets as arrays (written as text when iterating them raises), exceptions as
//! `{"type", "message"}`, nesting past `MAX_DEPTH` as a marker, anything else as `str()`, else `repr()`,
//! else `<unrepresentable TYPE>`. Encoding never fails: every Python error met on the way is cleared and
//! the fallback written, so a value is always valid JSON.

use pyo3::exceptions::PyBaseException;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyFrozenSet, PyInt, PyList, PySet, PyString, PyTuple};

use crate::escape::{push_escaped, push_escaped_utf16, push_f64, push_i64, push_string};
use crate::pyfields::{str_text, uuid_text};
use crate::redact::{redact_after_scan, scan_text};

pub const MAX_DEPTH: usize = 64;
const DEPTH_EXCEEDED: &str = "<max depth exceeded>";
/// Ints up to this many bits (617 digits) are written as numbers: always convertible to decimal.
const MAX_INT_BITS: u64 = 2048;
/// Dicts with more keys than this find repeated keys with a hash set rather than by comparing.
const KEYS_COMPARED_DIRECTLY: usize = 16;

pub struct Encoder<'s> {
    pub secrets: &'s [String],
}

impl Encoder<'_> {
    fn push_pystr(&self, out: &mut Vec<u8>, text: &Bound<'_, PyString>, max_chars: usize) {
        match str_text(text) {
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
    pub fn push_text(&self, out: &mut Vec<u8>, text: &str, max_chars: usize) {
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
            let decoded =
                PyBytes::new(py, &redacted).call_method1(intern!(py, "decode"), (intern!(py, "utf-8"), intern!(py, "surrogatepass")))?;
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

/// The keys written so far in one dict, to keep only the first of equal keys (equal strings have equal
/// JSON forms and unequal strings unequal ones): the byte spans in `out` of the first
/// `KEYS_COMPARED_DIRECTLY`, compared one by one, then a hash set of them all.
struct SeenKeys {
    spans: [(usize, usize); KEYS_COMPARED_DIRECTLY],
    compared: usize,
    hashed: Option<rustc_hash::FxHashSet<Box<[u8]>>>,
}

impl SeenKeys {
    fn new() -> SeenKeys {
        SeenKeys { spans: [(0, 0); KEYS_COMPARED_DIRECTLY], compared: 0, hashed: None }
    }

    /// Whether the key at `out[start..]` is new (and now seen).
    fn insert(&mut self, out: &[u8], start: usize) -> bool {
        let key = &out[start..];
        if self.hashed.is_none() && self.compared == KEYS_COMPARED_DIRECTLY {
            self.hashed = Some(self.spans.iter().map(|&(from, to)| out[from..to].into()).collect());
        }
        match &mut self.hashed {
            Some(hashed) => hashed.insert(key.into()),
            None if self.spans[..self.compared].iter().any(|&(from, to)| &out[from..to] == key) => false,
            None => {
                self.spans[self.compared] = (start, out.len());
                self.compared += 1;
                true
            }
        }
    }
}

/// Whether writing `value` runs no Python code: an exact str, int or float, a bool or None.
fn is_inert(value: &Bound<'_, PyAny>) -> bool {
    value.is_exact_instance_of::<PyString>()
        || value.is_none()
        || value.is_exact_instance_of::<PyInt>()
        || value.is_exact_instance_of::<PyFloat>()
        || value.is_exact_instance_of::<PyBool>()
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

    pub fn push_type_name(&self, out: &mut Vec<u8>, value: &Bound<'_, PyAny>, max_chars: usize) {
        match value.get_type().name() {
            Ok(name) => self.push_pystr(out, &name, max_chars),
            Err(_) => self.push_text(out, "object", max_chars),
        }
    }

    pub fn push_value(&self, out: &mut Vec<u8>, value: &Bound<'_, PyAny>, max_chars: usize, depth: usize) {
        // The value nearly every field holds, tested first: an exact str is its own text.
        if let Ok(text) = value.cast_exact::<PyString>() {
            return self.push_pystr(out, text, max_chars);
        }
        // The containers before the types whose test walks the type's bases (float, bytearray): no class
        // is both a container here and one of those, so the order changes no answer.
        if value.is_none() {
            out.extend_from_slice(b"null");
        } else if let Ok(flag) = value.cast::<PyBool>() {
            out.extend_from_slice(if flag.is_true() { b"true" } else { b"false" });
        } else if let Ok(text) = value.cast::<PyString>() {
            self.push_pystr(out, &own_str(text), max_chars);
        } else if value.is_instance_of::<PyInt>() {
            push_int(out, value);
        } else if let Some(uuid) = uuid_text(value) {
            // The run ids of LangChain and of many tracers.
            self.push_text(out, uuid.as_str(), max_chars);
        } else if let Ok(mapping) = value.cast::<PyDict>() {
            if depth >= MAX_DEPTH {
                return push_string(out, DEPTH_EXCEEDED);
            }
            if mapping.iter().all(|(key, item)| key.is_exact_instance_of::<PyString>() && is_inert(&item)) {
                // Writing these runs no Python code, so nothing can change the dict meanwhile.
                self.push_entries(out, mapping.iter(), max_chars, depth);
            } else {
                // A snapshot of the items (references, no Python objects made): str() of a value may run
                // code that mutates the dict.
                let items: Vec<(Bound<'_, PyAny>, Bound<'_, PyAny>)> = mapping.iter().collect();
                self.push_entries(out, items.into_iter(), max_chars, depth);
            }
        } else if value.is_instance_of::<PyList>()
            || value.is_instance_of::<PyTuple>()
            || value.is_instance_of::<PySet>()
            || value.is_instance_of::<PyFrozenSet>()
        {
            if depth >= MAX_DEPTH {
                return push_string(out, DEPTH_EXCEEDED);
            }
            // A list's or tuple's items are read in place, without an iterator and its length hint: as
            // they stand when every item is inert (writing them runs no Python code), else copied first.
            if let Ok(list) = value.cast_exact::<PyList>() {
                if list.iter().all(|item| is_inert(&item)) {
                    return self.push_items(out, list.iter(), max_chars, depth);
                }
                let items: Vec<Bound<'_, PyAny>> = list.iter().collect();
                return self.push_items(out, items.into_iter(), max_chars, depth);
            }
            if let Ok(tuple) = value.cast_exact::<PyTuple>() {
                return self.push_items(out, tuple.iter(), max_chars, depth);
            }
            // All items first: a container whose iteration raises is written as text instead.
            let items: PyResult<Vec<Bound<'_, PyAny>>> = value.try_iter().and_then(|items| items.collect());
            match items {
                Ok(items) => self.push_items(out, items.into_iter(), max_chars, depth),
                Err(_) => self.push_fallback_text(out, value, max_chars),
            }
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
        } else {
            self.push_fallback_text(out, value, max_chars);
        }
    }

    /// A dict's `entries` as a JSON object, the first of keys whose JSON forms are equal kept.
    fn push_entries<'py>(
        &self,
        out: &mut Vec<u8>,
        entries: impl Iterator<Item = (Bound<'py, PyAny>, Bound<'py, PyAny>)>,
        max_chars: usize,
        depth: usize,
    ) {
        let mut seen = SeenKeys::new();
        let mut written_any = false;
        out.push(b'{');
        for (key, item_value) in entries {
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
    }

    /// A sequence's `items` as a JSON array.
    fn push_items<'py>(&self, out: &mut Vec<u8>, items: impl Iterator<Item = Bound<'py, PyAny>>, max_chars: usize, depth: usize) {
        out.push(b'[');
        for (index, item) in items.enumerate() {
            if index > 0 {
                out.push(b',');
            }
            self.push_value(out, &item, max_chars, depth + 1);
        }
        out.push(b']');
    }

    pub fn push_optional(&self, out: &mut Vec<u8>, value: Option<&Bound<'_, PyAny>>, max_chars: usize) {
        match value {
            Some(value) => self.push_value(out, value, max_chars, 0),
            None => out.extend_from_slice(b"null"),
        }
    }
}
