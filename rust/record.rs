//! One event as the dispatcher received it, and its JSONL record, with the rules of
//! `python/rlm_toolkit/_reference/records.py` (the oracle): `ts`, `event`, `run_id`, `parent_run_id`, then
//! the event's fields and keywords of the catalogue (values encoded by `pyvalue`), then `tags` and
//! `metadata` when given, then `extra`. Which conversation text
//! is written follows the table `rlm_toolkit.events.CONTENT_FIELDS`, read once.

use pyo3::exceptions::{PyOverflowError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyString, PyType};

use crate::errors::InvalidEventError;
use crate::escape::push_u64;
use crate::events::{EventKind, EventSpec, EVENTS, MAX_KEYWORDS};
use crate::metrics::Usage;
use crate::pyfields::{instance_dict, optional_attr, small_int, uuid_text, SlotReader, UuidText};
use crate::pyvalue::Encoder;
use crate::redact::registered_secrets;
use crate::time::{now, push_iso_utc};

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
        let needed = role.and_then(|role| self.by_role.iter().find(|(name, _)| name == role)).map_or(self.any_role, |(_, bits)| *bits);
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
    let table = ContentTable::read(py)
        .unwrap_or_else(|_| ContentTable::with_every_field(FieldSwitches { any_role: UNKNOWN_SWITCH, by_role: Vec::new() }));
    // Another thread may have stored its (identical) table meanwhile; either is the one kept.
    let _ = TABLE.set(py, table);
    TABLE.get(py).expect("set just above")
}

/// Epoch seconds of 10000-01-01T00:00:00Z: event timestamps are in `0 <= ts < END_OF_YEAR_9999`.
const END_OF_YEAR_9999: f64 = 253_402_300_800.0;

/// The `timestamp` keyword of `on_{event}()` as epoch seconds (Python None stays None). Raises TypeError
/// for a value that is not a number and InvalidEventError for a number that is not such a time (NaN,
/// infinities, negative, year 10000 on). Same rule and messages as `records.checked_timestamp`.
pub fn checked_timestamp(py: Python<'_>, event: &str, value: &Bound<'_, PyAny>) -> PyResult<Option<f64>> {
    if value.is_none() {
        return Ok(None);
    }
    let seconds = match value.cast::<PyFloat>() {
        Ok(number) => number.value(),
        Err(_) => match value.extract::<f64>() {
            Ok(seconds) => seconds,
            Err(error) if error.is_instance_of::<PyOverflowError>(py) => f64::INFINITY,
            Err(error) if error.is_instance_of::<PyTypeError>(py) => {
                let type_name = value.get_type().name().map(|name| name.to_string()).unwrap_or_default();
                return Err(PyTypeError::new_err(format!(
                    "on_{event}(): timestamp must be epoch seconds as a float or int, not {type_name}"
                )));
            }
            Err(error) => return Err(error),
        },
    };
    if (0.0..END_OF_YEAR_9999).contains(&seconds) {
        return Ok(Some(seconds));
    }
    // As `records._shown`: the repr, cut after 40 characters.
    let shown = match value.repr() {
        Ok(text) => text.to_string(),
        Err(_) => format!("<{}>", value.get_type().name().map(|name| name.to_string()).unwrap_or_default()),
    };
    let shown = if shown.chars().count() <= 40 { shown } else { format!("{}…", shown.chars().take(40).collect::<String>()) };
    Err(InvalidEventError::new_err(format!(
        "on_{event}(): timestamp {shown} is not epoch seconds in 0 <= ts < {END_OF_YEAR_9999:.0} (before year 10000); \
         pass a time such as time.time(), or leave it out to use the current time"
    )))
}

/// Runs `record` on the event a sink's `handle(...)` was called with from Python.
/// The keywords of one event call besides its arguments, borrowed from the call. None stands for a keyword
/// not given (or given as None).
#[derive(Clone, Copy, Default)]
pub struct EventContext<'a, 'py> {
    pub run_id: Option<&'a Bound<'py, PyAny>>,
    pub parent_run_id: Option<&'a Bound<'py, PyAny>>,
    pub model: Option<&'a Bound<'py, PyString>>,
    pub tags: Option<&'a Bound<'py, PyAny>>,
    pub metadata: Option<&'a Bound<'py, PyAny>>,
    /// The event's own keywords (`EventSpec::keywords`), in catalogue order.
    pub keywords: [Option<&'a Bound<'py, PyAny>>; MAX_KEYWORDS],
    pub extra: Option<&'a Bound<'py, PyDict>>,
}

impl<'py> EventContext<'_, 'py> {
    /// The extras with the tags, metadata and event keywords put back in: how a Python core's `handle()`
    /// takes them.
    pub fn extra_with_keywords(&self, py: Python<'py>, kind: EventKind) -> PyResult<Option<Bound<'py, PyDict>>> {
        let named = [("tags", self.tags), ("metadata", self.metadata)];
        let keywords = kind.spec().keywords.iter().copied().zip(self.keywords);
        let mut given = named.into_iter().chain(keywords).filter_map(|(name, value)| value.map(|value| (name, value))).peekable();
        if given.peek().is_none() {
            return Ok(self.extra.cloned());
        }
        let extra = match self.extra {
            Some(extra) => extra.copy()?,
            None => PyDict::new(py),
        };
        for (name, value) in given {
            extra.set_item(name, value)?;
        }
        Ok(Some(extra))
    }
}

/// The context and event keywords that a `handle()` call passes inside `extra`, taken out of a copy of it.
struct HandledKeywords<'py> {
    tags: Option<Bound<'py, PyAny>>,
    metadata: Option<Bound<'py, PyAny>>,
    keywords: [Option<Bound<'py, PyAny>>; MAX_KEYWORDS],
    extra: Option<Bound<'py, PyDict>>,
}

impl<'py> HandledKeywords<'py> {
    fn split(kind: EventKind, extra: Option<Bound<'py, PyDict>>) -> PyResult<HandledKeywords<'py>> {
        let mut split = HandledKeywords { tags: None, metadata: None, keywords: Default::default(), extra: None };
        let Some(extra) = extra.filter(|extra| !extra.is_empty()) else { return Ok(split) };
        let extra = extra.copy()?;
        let take = |name: &str| -> PyResult<Option<Bound<'py, PyAny>>> {
            let value = extra.get_item(name)?;
            if value.is_some() {
                extra.del_item(name)?;
            }
            Ok(value.filter(|value| !value.is_none()))
        };
        split.tags = take("tags")?;
        split.metadata = take("metadata")?;
        for (slot, name) in split.keywords.iter_mut().zip(kind.spec().keywords) {
            *slot = take(name)?;
        }
        split.extra = Some(extra).filter(|extra| !extra.is_empty());
        Ok(split)
    }
}

/// Builds the event of a `handle()` call (a subclass's hook calling its native core through `super()`),
/// with its tags, metadata and event keywords taken from `extra`, and records it.
#[allow(clippy::too_many_arguments)]
pub fn with_event<'py>(
    event: &str,
    args: &[Bound<'py, PyAny>],
    run_id: Option<Bound<'py, PyAny>>,
    parent_run_id: Option<Bound<'py, PyAny>>,
    model: Option<Bound<'py, PyString>>,
    timestamp: Option<Bound<'py, PyAny>>,
    extra: Option<Bound<'py, PyDict>>,
    record: impl FnOnce(&EventValues<'_, 'py>) -> PyResult<()>,
) -> PyResult<()> {
    let kind = event_kind(event)?;
    let ts = match timestamp.as_ref() {
        Some(value) => checked_timestamp(value.py(), event, value)?.unwrap_or_else(now),
        None => now(),
    };
    let handled = HandledKeywords::split(kind, extra)?;
    let mut keywords: [Option<&Bound<'py, PyAny>>; MAX_KEYWORDS] = Default::default();
    for (slot, value) in keywords.iter_mut().zip(&handled.keywords) {
        *slot = value.as_ref();
    }
    let context = EventContext {
        run_id: run_id.as_ref(),
        parent_run_id: parent_run_id.as_ref(),
        model: model.as_ref(),
        tags: handled.tags.as_ref(),
        metadata: handled.metadata.as_ref(),
        keywords,
        extra: handled.extra.as_ref(),
    };
    record(&EventValues::new(kind, args, context, ts))
}

fn event_kind(name: &str) -> PyResult<EventKind> {
    EventKind::from_name(name).ok_or_else(|| pyo3::exceptions::PyValueError::new_err(format!("unknown event {name:?}")))
}

/// One event as the dispatcher received it.
pub struct EventValues<'a, 'py> {
    pub kind: EventKind,
    pub args: &'a [Bound<'py, PyAny>],
    pub context: EventContext<'a, 'py>,
    pub ts: f64,
    /// Read from an `llm_end` response once, for every sink.
    response_dict: std::cell::OnceCell<Option<Bound<'py, PyDict>>>,
    response_usage: std::cell::OnceCell<Option<Usage>>,
    response_model: std::cell::OnceCell<Option<Bound<'py, PyString>>>,
    run_id_uuid: std::cell::OnceCell<Option<UuidText>>,
}

impl<'a, 'py> EventValues<'a, 'py> {
    pub fn new(kind: EventKind, args: &'a [Bound<'py, PyAny>], context: EventContext<'a, 'py>, ts: f64) -> Self {
        let (response_dict, response_usage, response_model, run_id_uuid) = Default::default();
        EventValues { kind, args, context, ts, response_dict, response_usage, response_model, run_id_uuid }
    }

    /// The run id's text when it is an exact `uuid.UUID` (`uuid_text`), made once for every sink.
    pub fn run_id_uuid(&self) -> Option<&str> {
        let run_id = self.context.run_id?;
        if run_id.is_exact_instance_of::<PyString>() {
            return None;
        }
        self.run_id_uuid.get_or_init(|| uuid_text(run_id)).as_ref().map(UuidText::as_str)
    }

    /// The token counts of the `llm_end` response, or None when it carries no usage.
    pub fn usage(&self) -> Option<Usage> {
        *self.response_usage.get_or_init(|| {
            let usage = self.response_field(intern!(self.args[0].py(), "usage"))?;
            usage_of(&usage)
        })
    }

    /// The `model` keyword, else the `llm_end` response's own `model` when it is a str.
    pub fn response_model(&self) -> Option<&Bound<'py, PyString>> {
        self.response_model
            .get_or_init(|| match self.context.model {
                Some(model) => Some(model.clone()),
                None => self.response_field(intern!(self.args[0].py(), "model")).and_then(|name| name.cast_into::<PyString>().ok()),
            })
            .as_ref()
    }

    /// The attribute `name` of the `llm_end` response, None when it has none: an `LLMResponse`'s from its
    /// instance dict (where all its fields are), any other object's by `getattr` (`optional_attr`).
    fn response_field(&self, name: &Bound<'py, PyString>) -> Option<Bound<'py, PyAny>> {
        let response = &self.args[0];
        let dict = self.response_dict.get_or_init(|| {
            let types = known_types(response.py())?;
            if response.get_type().as_ptr() != types.llm_response.as_ptr() {
                return None;
            }
            instance_dict(response)
        });
        match dict {
            Some(dict) => dict.get_item(name).ok().flatten(),
            None => optional_attr(response, name),
        }
    }
}

/// The value types of `rlm_toolkit.types` whose fields are read without `getattr`.
struct KnownTypes {
    llm_response: Py<PyType>,
    usage: SlotReader<5>,
}

const USAGE_FIELDS: [&str; 5] = ["prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "reasoning_tokens"];

fn known_types(py: Python<'_>) -> Option<&'static KnownTypes> {
    static TYPES: PyOnceLock<Option<KnownTypes>> = PyOnceLock::new();
    TYPES
        .get_or_init(py, || {
            let types = py.import("rlm_toolkit.types").ok()?;
            let usage = types.getattr("Usage").ok()?.cast_into::<PyType>().ok()?;
            let llm_response = types.getattr("LLMResponse").ok()?.cast_into::<PyType>().ok()?;
            Some(KnownTypes { llm_response: llm_response.unbind(), usage: SlotReader::new(&usage, USAGE_FIELDS).ok()? })
        })
        .as_ref()
}

/// `USAGE_FIELDS` as interned strs, for reading them from usage objects of other types.
fn usage_field_names(py: Python<'_>) -> &'static [Py<PyString>; 5] {
    static NAMES: PyOnceLock<[Py<PyString>; 5]> = PyOnceLock::new();
    NAMES.get_or_init(py, || USAGE_FIELDS.map(|name| PyString::intern(py, name).unbind()))
}

/// A token count: an int that fits in u64 (not a bool), else 0.
#[inline(always)]
fn token_count(count: Option<Bound<'_, PyAny>>) -> u64 {
    let Some(count) = count else { return 0 };
    if let Some(small) = small_int(&count) {
        return small;
    }
    if count.is_instance_of::<PyInt>() && !count.is_instance_of::<PyBool>() {
        count.extract::<u64>().unwrap_or(0)
    } else {
        0
    }
}

/// The token counts of a response's `usage`, or None when it is None: a `Usage`'s slots read in place, any
/// other object's attributes by `getattr`.
fn usage_of(usage: &Bound<'_, PyAny>) -> Option<Usage> {
    if usage.is_none() {
        return None;
    }
    let counts = match known_types(usage.py()).and_then(|types| types.usage.read(usage)) {
        Some(fields) => fields.map(token_count),
        None => usage_field_names(usage.py()).each_ref().map(|name| token_count(optional_attr(usage, name.bind(usage.py())))),
    };
    let [prompt_tokens, completion_tokens, total_tokens, cached_tokens, reasoning_tokens] = counts;
    Some(Usage { prompt_tokens, completion_tokens, total_tokens, cached_tokens, reasoning_tokens })
}

/// An `llm_end` response's text: an exact str as it is, else its `content` (when not None; an `LLMResponse`,
/// itself a str, holds it as an exact str), else the response.
fn push_response_text(encoder: &Encoder<'_>, out: &mut Vec<u8>, event: &EventValues<'_, '_>, max_chars: usize) {
    let response = &event.args[0];
    if response.is_exact_instance_of::<PyString>() {
        return encoder.push_value(out, response, max_chars, 0);
    }
    match event.response_field(intern!(response.py(), "content")) {
        Some(content) if !content.is_none() => encoder.push_value(out, &content, max_chars, 0),
        _ => encoder.push_value(out, response, max_chars, 0),
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
    let role = if content.uses_role[event.kind.index()] { role_of(event.context.extra) } else { None };
    let role = role.as_ref().and_then(|role| role.to_str().ok());
    let field_switches = &content.fields[event.kind.index()];
    out.extend_from_slice(b"{\"ts\":");
    push_iso_utc(out, event.ts);
    out.extend_from_slice(&record_heads()[event.kind.index()]);
    match event.run_id_uuid() {
        Some(uuid) => encoder.push_text(out, uuid, max_chars),
        None => encoder.push_optional(out, event.context.run_id, max_chars),
    }
    out.extend_from_slice(b",\"parent_run_id\":");
    encoder.push_optional(out, event.context.parent_run_id, max_chars);
    if event.kind == EventKind::LlmEnd {
        out.extend_from_slice(b",\"model\":");
        encoder.push_optional(out, event.response_model().map(|model| model.as_any()), max_chars);
        let response_at = spec.fields.iter().position(|name| *name == "response").expect("llm_end has a response");
        if field_switches[response_at].written(switched_on, role) {
            out.extend_from_slice(b",\"response\":");
            push_response_text(&encoder, out, event, max_chars);
        }
        match event.usage() {
            Some(usage) => {
                out.extend_from_slice(b",\"prompt_tokens\":");
                push_u64(out, usage.prompt_tokens);
                out.extend_from_slice(b",\"completion_tokens\":");
                push_u64(out, usage.completion_tokens);
                out.extend_from_slice(b",\"total_tokens\":");
                push_u64(out, usage.total());
                out.extend_from_slice(b",\"cached_tokens\":");
                push_u64(out, usage.cached_tokens);
                out.extend_from_slice(b",\"reasoning_tokens\":");
                push_u64(out, usage.reasoning_tokens);
            }
            None => out.extend_from_slice(
                b",\"prompt_tokens\":null,\"completion_tokens\":null,\"total_tokens\":null,\"cached_tokens\":null,\"reasoning_tokens\":null",
            ),
        }
    } else {
        for (field, switches) in spec.fields.iter().zip(field_switches) {
            if *field == "model" {
                push_key(out, field);
                encoder.push_optional(out, event.context.model.map(|model| model.as_any()), max_chars);
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
    for (name, value) in spec.keywords.iter().zip(event.context.keywords) {
        push_key(out, name);
        encoder.push_optional(out, value, max_chars);
    }
    for (name, value) in [("tags", event.context.tags), ("metadata", event.context.metadata)] {
        if let Some(value) = value {
            push_key(out, name);
            encoder.push_value(out, value, max_chars, 0);
        }
    }
    if let Some(extra) = event.context.extra.filter(|extra| !extra.is_empty()) {
        push_key(out, "extra");
        encoder.push_value(out, extra.as_any(), max_chars, 0);
    }
    out.extend_from_slice(b"}\n");
}
