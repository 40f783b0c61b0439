//! The Python-facing layer: `rlm_toolkit._core`. Thin wrappers over `dispatch`, `metrics` and `jsonl`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use std::ffi::CString;

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use crate::dispatch::{catalogue, Dispatcher, JsonlSink, MetricsSink, Registry};
use crate::errors::{InvalidEventError, LogFileError, NotAJsonlLogError};
use crate::events::{EventKind, EVENTS, EVENT_COUNT};
use crate::writer::WriterConfig;
use crate::metrics::{Metrics, Prices, Snapshot};
use crate::pyjson::{EventValues, RecordOptions};

/// Epoch seconds from a wall-clock reading taken once, advanced by the monotonic clock.
pub fn now() -> f64 {
    static ANCHOR: OnceLock<(f64, Instant)> = OnceLock::new();
    let (wall, started) = ANCHOR.get_or_init(|| {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |since| since.as_secs_f64());
        (wall, Instant::now())
    });
    wall + started.elapsed().as_secs_f64()
}

/// Never write `value` to a log from now on (see `rlm_toolkit.secrets.register_secret`).
#[pyfunction]
fn add_secret(value: String) {
    crate::redact::add_secret(value);
}

/// `text` with registered secrets, key-shaped and bearer tokens and URL passwords replaced (see
/// `rlm_toolkit.secrets`); a text with lone surrogates is redacted around them.
#[pyfunction]
fn redact<'py>(text: Bound<'py, PyString>) -> PyResult<Bound<'py, PyString>> {
    let secrets = crate::redact::registered_secrets();
    let Ok(utf8) = text.to_str() else {
        return Ok(crate::pyjson::redact_surrogate_text(&text, &secrets)?.unwrap_or(text));
    };
    Ok(match crate::redact::redact(utf8, &secrets) {
        std::borrow::Cow::Borrowed(_) => text,
        std::borrow::Cow::Owned(redacted) => PyString::new(text.py(), &redacted),
    })
}

#[pyfunction(name = "now")]
fn py_now() -> f64 {
    now()
}

/// Epoch seconds of 10000-01-01T00:00:00Z: event timestamps are in `0 <= ts < END_OF_YEAR_9999`.
const END_OF_YEAR_9999: f64 = 253_402_300_800.0;

/// The `timestamp` keyword of `on_{event}()` as epoch seconds (None, or Python None, stays None). Raises
/// TypeError for a value that is not a number and InvalidEventError for a number that is not such a time
/// (NaN, infinities, negative, year 10000 on). Same rule and messages as `records.checked_timestamp`.
fn checked_timestamp(py: Python<'_>, event: &str, timestamp: Option<&Bound<'_, PyAny>>) -> PyResult<Option<f64>> {
    let Some(value) = timestamp.filter(|value| !value.is_none()) else { return Ok(None) };
    let seconds = match value.cast::<pyo3::types::PyFloat>() {
        Ok(number) => number.value(),
        Err(_) => match value.extract::<f64>() {
            Ok(seconds) => seconds,
            Err(error) if error.is_instance_of::<pyo3::exceptions::PyOverflowError>(py) => f64::INFINITY,
            Err(error) if error.is_instance_of::<PyTypeError>(py) => {
                let type_name = value.get_type().name().map(|name| name.to_string()).unwrap_or_default();
                return Err(PyTypeError::new_err(format!("on_{event}(): timestamp must be epoch seconds as a float or int, not {type_name}")));
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
#[allow(clippy::too_many_arguments)]
fn with_event<'py>(
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
        Some(value) => checked_timestamp(value.py(), event, Some(value))?.unwrap_or_else(now),
        None => now(),
    };
    let event = EventValues::new(kind, args, run_id.as_ref(), parent_run_id.as_ref(), model.as_ref(), ts, extra.as_ref());
    record(&event)
}

fn event_kind(name: &str) -> PyResult<EventKind> {
    EventKind::from_name(name).ok_or_else(|| pyo3::exceptions::PyValueError::new_err(format!("unknown event {name:?}")))
}

#[pyclass(frozen, name = "Metrics", module = "rlm_toolkit._core")]
pub struct PyMetrics {
    pub sink: Arc<MetricsSink>,
}

/// Sets `dict[name] = source.name` for each field name, in order.
macro_rules! copy_fields {
    ($dict:expr, $source:expr, $($field:ident),+ $(,)?) => {
        $( $dict.set_item(stringify!($field), $source.$field)?; )+
    };
}

/// The snapshot as the dict `MetricsCallback.get_metrics()` returns, keys in the reference's order.
fn snapshot_to_dict<'py>(py: Python<'py>, snapshot: &Snapshot) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    copy_fields!(
        dict, snapshot, total_calls, completed_calls, total_tokens, prompt_tokens, completion_tokens,
        avg_latency_ms, min_latency_ms, max_latency_ms, p50_latency_ms, p95_latency_ms, p99_latency_ms,
        errors, retries, tool_calls, tool_results, tokens_streamed, memory_stores, memory_recalls,
        total_cost_usd, unpriced_calls, open_runs, evicted_runs, dropped_events, lost_events, rejected_events,
        handler_errors,
    );
    let by_model = PyDict::new(py);
    for (model, stats) in &snapshot.by_model {
        let entry = PyDict::new(py);
        copy_fields!(
            entry, stats, calls, completed_calls, errors, prompt_tokens, completion_tokens, total_tokens,
            cost_usd, avg_latency_ms,
        );
        by_model.set_item(model, entry)?;
    }
    dict.set_item("by_model", by_model)?;
    Ok(dict)
}

#[pymethods]
impl PyMetrics {
    #[new]
    fn new(prices: Vec<(String, f64, f64)>, max_open_runs: usize) -> Self {
        PyMetrics { sink: Arc::new(MetricsSink(Mutex::new(Metrics::new(Prices::new(prices), max_open_runs)))) }
    }

    /// Records one event (used when a hook is called from Python, e.g. through `super()`).
    #[pyo3(signature = (event, args, run_id, parent_run_id, model, timestamp, extra))]
    #[allow(clippy::too_many_arguments)]
    fn handle(
        &self,
        event: &str,
        args: Vec<Bound<'_, PyAny>>,
        run_id: Option<Bound<'_, PyAny>>,
        parent_run_id: Option<Bound<'_, PyAny>>,
        model: Option<Bound<'_, PyString>>,
        timestamp: Option<Bound<'_, PyAny>>,
        extra: Option<Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        if let Some(value) = timestamp.as_ref() {
            if let Err(error) = checked_timestamp(value.py(), event, Some(value)) {
                self.sink.lock().rejected();
                return Err(error);
            }
        }
        with_event(event, &args, run_id, parent_run_id, model, timestamp, extra, |event| {
            self.sink.record(event);
            Ok(())
        })
    }

    fn snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let snapshot = self.sink.lock().snapshot();
        snapshot_to_dict(py, &snapshot)
    }

    fn reset(&self) {
        self.sink.lock().reset();
    }

    fn handler_error(&self) {
        self.sink.lock().handler_error();
    }

    fn dropped(&self, count: u64) {
        self.sink.lock().dropped(count);
    }

    fn lost(&self, count: u64) {
        self.sink.lock().lost(count);
    }

    fn rejected(&self) {
        self.sink.lock().rejected();
    }
}

#[pyclass(frozen, name = "JsonlSink", module = "rlm_toolkit._core")]
pub struct PyJsonlSink {
    pub sink: Arc<JsonlSink>,
}

#[pymethods]
impl PyJsonlSink {
    #[new]
    #[pyo3(signature = (path, include_prompts, include_responses, max_field_chars, flush_interval, buffer_bytes, max_pending_bytes, block_when_full, close_timeout=5.0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: String,
        include_prompts: bool,
        include_responses: bool,
        max_field_chars: usize,
        flush_interval: f64,
        buffer_bytes: usize,
        max_pending_bytes: usize,
        block_when_full: bool,
        close_timeout: f64,
    ) -> PyResult<Self> {
        let seconds = |name: &str, value: f64| {
            Duration::try_from_secs_f64(value)
                .map_err(|_| pyo3::exceptions::PyValueError::new_err(format!("{name} must be a finite number of seconds, got {value}")))
        };
        let config = WriterConfig {
            flush_interval: seconds("flush_interval", flush_interval)?,
            buffer_bytes,
            max_pending_bytes,
            block_when_full,
            close_timeout: seconds("close_timeout", close_timeout)?,
        };
        let options = RecordOptions { include_prompts, include_responses, max_chars: max_field_chars };
        // Opening may wait for another process's writer to finish its batch (the file lock): not holding the GIL.
        let opened = py.detach(|| JsonlSink::open(path.clone(), config, options));
        let sink = opened.map_err(|error| {
            if error.kind() == std::io::ErrorKind::InvalidData {
                NotAJsonlLogError::new_err(not_a_log_message(&path, &error.to_string()))
            } else {
                LogFileError::new_err(format!("cannot open log file {path:?}: {error}"))
            }
        })?;
        Ok(PyJsonlSink { sink: Arc::new(sink) })
    }

    #[pyo3(signature = (event, args, run_id, parent_run_id, model, timestamp, extra))]
    #[allow(clippy::too_many_arguments)]
    fn handle(
        &self,
        py: Python<'_>,
        event: &str,
        args: Vec<Bound<'_, PyAny>>,
        run_id: Option<Bound<'_, PyAny>>,
        parent_run_id: Option<Bound<'_, PyAny>>,
        model: Option<Bound<'_, PyString>>,
        timestamp: Option<Bound<'_, PyAny>>,
        extra: Option<Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        with_event(event, &args, run_id, parent_run_id, model, timestamp, extra, |event| self.sink.record(py, event).map(|_| ()))
    }

    /// With a `timeout` (seconds), waits at most that long (see `JsonlWriter::flush_within`).
    #[pyo3(signature = (timeout=None))]
    fn flush(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<()> {
        let writer = self.sink.writer();
        let timeout = timeout
            .map(|seconds| Duration::try_from_secs_f64(seconds).map_err(|_| pyo3::exceptions::PyValueError::new_err(format!("timeout must be a finite number of seconds, got {seconds}"))))
            .transpose()?;
        py.detach(|| match timeout {
            Some(timeout) => writer.flush_within(timeout),
            None => writer.flush(),
        })
        .map_err(|error| self.sink.error_to_python(error))
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let writer = self.sink.writer();
        py.detach(|| writer.close()).map_err(|error| self.sink.error_to_python(error))
    }

    /// Gives a forked child a writer thread of its own (called by an `os.register_at_fork` hook).
    fn reopen_after_fork(&self) -> PyResult<()> {
        self.sink.reopen_after_fork().map_err(|error| {
            LogFileError::new_err(format!("cannot reopen log file {:?} after fork(): {error}", self.sink.path))
        })
    }

    #[getter]
    fn closed(&self) -> bool {
        self.sink.writer().is_closed()
    }

    #[getter]
    fn path(&self) -> &str {
        &self.sink.path
    }

    #[getter]
    fn dropped(&self) -> u64 {
        self.sink.writer().dropped_lines()
    }

    #[getter]
    fn lost(&self) -> u64 {
        self.sink.writer().lost_lines()
    }
}

/// The message of `NotAJsonlLogError`; the reference backend words it the same.
fn not_a_log_message(path: &str, reason: &str) -> String {
    format!(
        "log_path {path:?} holds something other than a JSONL log ({reason}); it was left untouched. \
         Give a new path, or move that file away"
    )
}

#[pyclass(frozen, name = "Dispatcher", module = "rlm_toolkit._core")]
pub struct PyDispatcher {
    inner: Dispatcher,
}

#[pymethods]
impl PyDispatcher {
    #[new]
    fn new(report_failure: Py<PyAny>, run_async: Py<PyAny>) -> Self {
        PyDispatcher {
            inner: Dispatcher {
                registry: ArcSwap::from_pointee(Registry::empty()),
                report_failure,
                run_async,
                handler_errors: AtomicU64::new(0),
            },
        }
    }

    fn set_registration(&self, registrations: &Bound<'_, PyList>, error_counters: &Bound<'_, PyList>) -> PyResult<()> {
        self.inner.registry.store(Arc::new(Registry::from_python(registrations, error_counters)?));
        Ok(())
    }

    /// Counts and reports a hook failure met outside the dispatcher (an async hook).
    fn hook_failed(&self, py: Python<'_>, label: &Bound<'_, PyString>, event: &str, error: Bound<'_, PyAny>) -> PyResult<()> {
        let registry = self.inner.registry.load();
        self.inner.hook_failed(py, &registry, label, event, error)
    }

    #[getter]
    fn handler_errors(&self) -> u64 {
        self.inner.handler_errors.load(Ordering::Relaxed)
    }

    /// The function that fires `event` through this dispatcher: a builtin taking the event's arguments
    /// and the keywords `run_id`, `parent_run_id`, `model`, `timestamp` and any extras, called with
    /// CPython's vectorcall convention (no argument tuple or keyword dict is built for it).
    fn event_method<'py>(slf: &Bound<'py, Self>, event: &str) -> PyResult<Bound<'py, PyAny>> {
        let kind = event_kind(event)?;
        let definition = &event_method_definitions().0[kind.index()] as *const ffi::PyMethodDef;
        // SAFETY: the definition is leaked (lives forever); the new function holds a reference to `slf`.
        unsafe {
            Bound::from_owned_ptr_or_err(
                slf.py(),
                ffi::PyCFunction_NewEx(definition.cast_mut(), slf.as_ptr(), std::ptr::null_mut()),
            )
        }
    }
}

struct EventMethodDefinitions([ffi::PyMethodDef; EVENT_COUNT]);
// SAFETY: the definitions are immutable after creation and only hold pointers to leaked C strings.
unsafe impl Sync for EventMethodDefinitions {}
unsafe impl Send for EventMethodDefinitions {}

fn event_method_definitions() -> &'static EventMethodDefinitions {
    static DEFINITIONS: OnceLock<EventMethodDefinitions> = OnceLock::new();
    DEFINITIONS.get_or_init(|| {
        let trampolines: [ffi::PyCFunctionFastWithKeywords; EVENT_COUNT] = [
            fire_event::<0>,
            fire_event::<1>,
            fire_event::<2>,
            fire_event::<3>,
            fire_event::<4>,
            fire_event::<5>,
            fire_event::<6>,
            fire_event::<7>,
            fire_event::<8>,
            fire_event::<9>,
            fire_event::<10>,
        ];
        let leak = |text: String| -> *const std::os::raw::c_char {
            Box::leak(CString::new(text).expect("no NUL in names").into_boxed_c_str()).as_ptr()
        };
        EventMethodDefinitions(std::array::from_fn(|index| {
            let spec = &EVENTS[index];
            let hook = format!("on_{}", spec.name);
            let doc = format!(
                "{hook}($self, {}, *, run_id=None, parent_run_id=None, model=None, timestamp=None, **extra)\n--\n\n\
                 Fire the {:?} event to the registered callbacks.",
                spec.args.join(", "),
                spec.name
            );
            ffi::PyMethodDef {
                ml_name: leak(hook),
                ml_meth: ffi::PyMethodDefPointer { PyCFunctionFastWithKeywords: trampolines[index] },
                ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
                ml_doc: leak(doc),
            }
        }))
    })
}

struct ContextNames {
    run_id: Py<PyString>,
    parent_run_id: Py<PyString>,
    model: Py<PyString>,
    timestamp: Py<PyString>,
}

fn context_names(py: Python<'_>) -> &'static ContextNames {
    static NAMES: OnceLock<ContextNames> = OnceLock::new();
    NAMES.get_or_init(|| ContextNames {
        run_id: PyString::intern(py, "run_id").unbind(),
        parent_run_id: PyString::intern(py, "parent_run_id").unbind(),
        model: PyString::intern(py, "model").unbind(),
        timestamp: PyString::intern(py, "timestamp").unbind(),
    })
}

enum ContextKeyword {
    RunId,
    ParentRunId,
    Model,
    Timestamp,
}

/// The keyword arguments of one event call, sorted into context fields, named event arguments and extras.
#[derive(Default)]
struct EventKeywords<'py> {
    run_id: Option<Bound<'py, PyAny>>,
    parent_run_id: Option<Bound<'py, PyAny>>,
    model: Option<Bound<'py, PyString>>,
    timestamp: Option<f64>,
    extra: Option<Bound<'py, PyDict>>,
}

fn not_none(value: Bound<'_, PyAny>) -> Option<Bound<'_, PyAny>> {
    if value.is_none() { None } else { Some(value) }
}

/// Which context keyword the keyword name at `name` is, or the name itself when it is none of them.
/// Callers' keyword names are interned by CPython, so pointer identity settles nearly every name without
/// reading it; comparing text is the fallback for names built at run time.
fn context_keyword<'py>(
    py: Python<'py>,
    names: &ContextNames,
    name: *mut ffi::PyObject,
) -> PyResult<Result<ContextKeyword, Bound<'py, PyString>>> {
    let by_identity = [
        (&names.run_id, ContextKeyword::RunId),
        (&names.parent_run_id, ContextKeyword::ParentRunId),
        (&names.model, ContextKeyword::Model),
        (&names.timestamp, ContextKeyword::Timestamp),
    ];
    if let Some((_, keyword)) = by_identity.into_iter().find(|(interned, _)| interned.as_ptr() == name) {
        return Ok(Ok(keyword));
    }
    // SAFETY: `name` is a live borrowed item of the call's kwnames tuple.
    let name = unsafe { Bound::from_borrowed_ptr(py, name) }.cast_into::<PyString>()?;
    Ok(match name.to_str()? {
        "run_id" => Ok(ContextKeyword::RunId),
        "parent_run_id" => Ok(ContextKeyword::ParentRunId),
        "model" => Ok(ContextKeyword::Model),
        "timestamp" => Ok(ContextKeyword::Timestamp),
        _ => Err(name),
    })
}

/// The body of every `on_*` builtin: sorts a vectorcall's arguments and fires the event `kind`.
/// `values` holds the `positional` arguments, then one value per name in `kwnames`.
fn fire_from_vectorcall<'py>(
    py: Python<'py>,
    dispatcher: &Dispatcher,
    kind: EventKind,
    values: &[*mut ffi::PyObject],
    positional: usize,
    kwnames: Option<&Bound<'py, PyTuple>>,
) -> PyResult<()> {
    let spec = kind.spec();
    let hook = spec.name;
    if positional > spec.args.len() {
        return Err(PyTypeError::new_err(format!("on_{hook}() takes {} positional arguments {:?}, got {positional}", spec.args.len(), spec.args)));
    }
    // SAFETY: CPython guarantees every pointer in `values` is a live object for the duration of the call.
    let value_at = |index: usize| unsafe { Bound::from_borrowed_ptr(py, values[index]) };
    let mut args: [Option<Bound<'py, PyAny>>; 3] = [None, None, None];
    for (index, slot) in args.iter_mut().enumerate().take(positional) {
        *slot = Some(value_at(index));
    }
    let mut keywords = EventKeywords::default();
    let mut timestamp = None;
    if let Some(kwnames) = kwnames {
        let names = context_names(py);
        for offset in 0..kwnames.len() {
            // SAFETY: `offset` is within the tuple, which holds only str objects (CPython checks that).
            let name = unsafe { ffi::PyTuple_GET_ITEM(kwnames.as_ptr(), offset as ffi::Py_ssize_t) };
            let value = value_at(positional + offset);
            match context_keyword(py, names, name)? {
                Ok(ContextKeyword::RunId) => keywords.run_id = not_none(value),
                Ok(ContextKeyword::ParentRunId) => keywords.parent_run_id = not_none(value),
                Ok(ContextKeyword::Model) => {
                    keywords.model = match not_none(value) {
                        None => None,
                        Some(model) => Some(model.cast_into::<PyString>().map_err(|_| PyTypeError::new_err(format!("on_{hook}(): model must be a str or None")))?),
                    }
                }
                Ok(ContextKeyword::Timestamp) => timestamp = Some(value),
                Err(name) => match spec.args.iter().position(|arg| name == *arg) {
                    Some(position) if args[position].is_some() => {
                        return Err(PyTypeError::new_err(format!("on_{hook}() got multiple values for argument {:?}", spec.args[position])));
                    }
                    Some(position) => args[position] = Some(value),
                    None => keywords.extra.get_or_insert_with(|| PyDict::new(py)).set_item(name, value)?,
                },
            }
        }
    }
    let none = py.None().into_bound(py);
    let mut event_args = [none.clone(), none.clone(), none];
    for ((target, value), name) in event_args.iter_mut().zip(args).zip(spec.args) {
        *target = value.ok_or_else(|| PyTypeError::new_err(format!("on_{hook}() missing required argument {name:?}")))?;
    }
    keywords.timestamp = match checked_timestamp(py, hook, timestamp.as_ref()) {
        Ok(timestamp) => timestamp,
        Err(error) => {
            dispatcher.event_rejected(py)?;
            return Err(error);
        }
    };
    dispatcher.fire(
        py,
        kind,
        &event_args[..spec.args.len()],
        keywords.run_id.as_ref(),
        keywords.parent_run_id.as_ref(),
        keywords.model.as_ref(),
        keywords.timestamp,
        keywords.extra.as_ref(),
    )
}

unsafe extern "C" fn fire_event<const KIND: usize>(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this with the interpreter attached, `slf` the dispatcher this function was
    // bound to in `event_method`, and `nargs` + len(kwnames) valid argument pointers in `args`.
    let outcome = std::panic::catch_unwind(|| unsafe {
        let py = Python::assume_attached();
        let dispatcher = Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<PyDispatcher>();
        let keyword_count = if kwnames.is_null() { 0 } else { ffi::PyTuple_GET_SIZE(kwnames) as usize };
        let positional = nargs as usize;
        let values: &[*mut ffi::PyObject] =
            if positional + keyword_count == 0 { &[] } else { std::slice::from_raw_parts(args, positional + keyword_count) };
        let kwnames = if kwnames.is_null() { None } else { Some(Bound::from_borrowed_ptr(py, kwnames).cast_into_unchecked::<PyTuple>()) };
        let kind = EVENTS[KIND].kind;
        match fire_from_vectorcall(py, &dispatcher.get().inner, kind, values, positional, kwnames.as_ref()) {
            Ok(()) => py.None().into_ptr(),
            Err(error) => {
                error.restore(py);
                std::ptr::null_mut()
            }
        }
    });
    outcome.unwrap_or_else(|payload| {
        // SAFETY: still attached; turn the panic into a Python exception instead of unwinding into C.
        let py = unsafe { Python::assume_attached() };
        let message = payload
            .downcast_ref::<&str>()
            .map(|text| text.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        pyo3::panic::PanicException::new_err(message).restore(py);
        std::ptr::null_mut()
    })
}

#[pymodule]
fn _core(module: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = module.py();
    module.add_class::<PyDispatcher>()?;
    module.add_class::<PyMetrics>()?;
    module.add_class::<PyJsonlSink>()?;
    module.add_function(wrap_pyfunction!(py_now, module)?)?;
    module.add_function(wrap_pyfunction!(add_secret, module)?)?;
    module.add_function(wrap_pyfunction!(redact, module)?)?;
    let events: Vec<Bound<'_, PyTuple>> = catalogue()
        .into_iter()
        .map(|(name, args, fields, has_model)| (name, PyTuple::new(py, args)?, PyTuple::new(py, fields)?, has_model).into_pyobject(py))
        .collect::<PyResult<_>>()?;
    module.add("EVENT_CATALOGUE", PyTuple::new(py, events)?)?;
    Ok(())
}
