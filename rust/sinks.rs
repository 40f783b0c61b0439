//! The native sinks an event is recorded in, and their Python classes: metrics (`_core.Metrics`, behind
//! `MetricsCallback`) and the JSONL log (`_core.JsonlSink`, behind `FileLogCallback`). A core of the
//! pure-Python backend registered with the Rust dispatcher is a sink too, called through its `handle()`.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwapOption;
use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString};

use crate::errors::{InvalidEventError, LogClosedError, LogFileError, NotAJsonlLogError};
use crate::events::EventKind;
use crate::json_check::is_json_object;
use crate::metrics::{DurationState, Metrics, MetricsState, ModelState, Price, PricedTokens, Prices, Snapshot, COUNTER_NAMES};
use crate::pyfields::str_text;
use crate::record::{checked_timestamp, push_record, with_event, EventValues, RecordOptions};
use crate::replay::replay_file;
use crate::writer::{Announcement, Appended, JsonlWriter, WriteError, WriterConfig};

pub struct MetricsSink(pub Mutex<Metrics>);

impl MetricsSink {
    pub fn lock(&self) -> MutexGuard<'_, Metrics> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn record(&self, event: &EventValues<'_, '_>) {
        let run_key = run_key(event);
        let model = event.context.model.and_then(|name| str_text(name).ok());
        match event.kind {
            EventKind::LlmStart => self.lock().llm_start(&run_key, model, event.ts),
            EventKind::LlmEnd => {
                let usage = event.usage();
                let model = event.response_model().and_then(|name| str_text(name).ok());
                let ttft_ms = event.context.keywords[TTFT_MS].and_then(milliseconds);
                self.lock().llm_end(&run_key, model, usage, ttft_ms, event.ts);
            }
            EventKind::Error => self.lock().llm_error(&run_key, model, event.ts),
            EventKind::LlmNewToken => self.lock().token(),
            EventKind::ToolStart => self.lock().tool_start(),
            EventKind::ToolEnd => self.lock().tool_end(),
            EventKind::MemoryStore => self.lock().memory_store(),
            EventKind::MemoryRecall => self.lock().memory_recall(),
            EventKind::Retry => self.lock().retry(),
            EventKind::RunStart | EventKind::RunEnd => {}
        }
    }
}

/// Where `llm_end`'s `ttft_ms` is among its keywords.
const TTFT_MS: usize = EventKind::LlmEnd.keyword_position("ttft_ms");

/// A duration keyword's value as milliseconds: an int or float (not a bool), else None.
fn milliseconds(value: &Bound<'_, PyAny>) -> Option<f64> {
    if value.is_instance_of::<PyBool>() || !(value.is_instance_of::<PyFloat>() || value.is_instance_of::<PyInt>()) {
        return None;
    }
    value.extract::<f64>().ok()
}

/// Latency pairs starts and ends by this key: the run id's `str()`; events without a run id share the key "".
/// Borrowed, with no allocation, for a str or a `uuid.UUID`.
fn run_key<'a>(event: &'a EventValues<'_, '_>) -> Cow<'a, str> {
    let Some(run_id) = event.context.run_id else { return Cow::Borrowed("") };
    if let Some(uuid) = event.run_id_uuid() {
        return Cow::Borrowed(uuid);
    }
    match run_id.cast::<PyString>() {
        Ok(text) => str_text(text).map(Cow::Borrowed).unwrap_or_else(|_| text.to_string_lossy().into_owned().into()),
        Err(_) => run_id.str().map(|text| text.to_string_lossy().into_owned()).unwrap_or_default().into(),
    }
}

pub struct JsonlSink {
    /// The writer opened with the sink: this process's, unless `reopened`.
    opened: Arc<JsonlWriter>,
    /// A forked child's own writer (the parent's writer thread does not exist there), replaced in each
    /// further child; the writers it replaces are never closed.
    after_fork: ArcSwapOption<JsonlWriter>,
    /// Set once `after_fork` holds this process's writer. Records check it, one load, instead of paying
    /// for an `ArcSwap` load each: a process that never forked never touches `after_fork`.
    reopened: AtomicBool,
    /// The process the current writer belongs to.
    writer_pid: std::sync::atomic::AtomicU32,
    config: WriterConfig,
    pub options: RecordOptions,
    pub path: String,
}

thread_local! {
    static RECORD_BUFFER: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// What became of one record, for the dispatcher to count and report.
pub struct Recorded {
    pub dropped: bool,
    /// A new write error or lines lost since the last record, to report once.
    pub news: Option<Announcement>,
}

impl JsonlSink {
    pub fn open(path: String, config: WriterConfig, options: RecordOptions) -> std::io::Result<JsonlSink> {
        let writer = JsonlWriter::open(std::path::Path::new(&path), config)?;
        let writer_pid = std::sync::atomic::AtomicU32::new(std::process::id());
        let (after_fork, reopened) = (ArcSwapOption::empty(), AtomicBool::new(false));
        Ok(JsonlSink { opened: Arc::new(writer), after_fork, reopened, writer_pid, config, options, path })
    }

    /// Runs `use_writer` with this process's writer.
    #[inline(always)]
    pub fn with_writer<R>(&self, use_writer: impl FnOnce(&JsonlWriter) -> R) -> R {
        if !self.reopened.load(Ordering::Acquire) {
            return use_writer(&self.opened);
        }
        let reopened = self.after_fork.load();
        use_writer(reopened.as_deref().expect("`after_fork` is set before `reopened`"))
    }

    /// In a child process after `fork()`: a writer of its own on the same file. The parent's writer is
    /// leaked, not closed: its lock may have been held by its thread at the fork, and its pending lines
    /// are the parent's to write.
    pub fn reopen_after_fork(&self) -> std::io::Result<()> {
        let pid = std::process::id();
        if self.writer_pid.load(std::sync::atomic::Ordering::Acquire) == pid {
            return Err(std::io::Error::other("this log's writer already belongs to this process; reopen only after fork()"));
        }
        let writer = JsonlWriter::open(std::path::Path::new(&self.path), self.config)?;
        // The writers of the processes before this one must never run their `Drop` (it would wait for a
        // thread this process does not have): each is left one reference that is never released.
        std::mem::forget(Arc::clone(&self.opened));
        if let Some(parents) = self.after_fork.swap(Some(Arc::new(writer))) {
            std::mem::forget(parents);
        }
        self.reopened.store(true, Ordering::Release);
        self.writer_pid.store(pid, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Encodes and queues the record.
    pub fn record(&self, py: Python<'_>, event: &EventValues<'_, '_>) -> PyResult<Recorded> {
        // Encoding may run Python code (str() of a value) that logs to this very sink: take the buffer
        // out of its slot so such a nested call starts with a fresh one instead of aliasing it.
        let mut line = RECORD_BUFFER.with(|slot| slot.take());
        line.clear();
        push_record(&mut line, event, &self.options);
        let outcome = self.queue(py, &line).map(|dropped| Recorded { dropped, news: self.with_writer(JsonlWriter::announce) });
        RECORD_BUFFER.with(|slot| slot.set(line));
        outcome
    }

    /// Queues one whole line (ending in `\n`) under the full-buffer policy; true when it was dropped.
    fn queue(&self, py: Python<'_>, line: &[u8]) -> PyResult<bool> {
        self.with_writer(|writer| loop {
            match writer.append(line) {
                Ok(Appended::MustWait) => py.detach(|| writer.make_room()),
                Ok(appended) => break Ok(appended == Appended::Dropped),
                Err(error) => break Err(self.error_to_python(error)),
            }
        })
    }

    /// Queues a line encoded by the caller: one JSON object without a newline (the sink adds it), refused
    /// otherwise so the log keeps whole JSON lines. A write error is left for `flush()`/`close()` to raise.
    pub fn append_line(&self, py: Python<'_>, line: &Bound<'_, PyString>) -> PyResult<()> {
        let Ok(text) = line.to_str() else { return Err(InvalidEventError::new_err(LINE_WITH_SURROGATES)) };
        if text.contains('\n') {
            return Err(InvalidEventError::new_err(LINE_WITH_NEWLINE));
        }
        if !is_json_object(text.as_bytes()) {
            return Err(InvalidEventError::new_err(LINE_NOT_AN_OBJECT));
        }
        let mut buffer = RECORD_BUFFER.with(|slot| slot.take());
        buffer.clear();
        buffer.extend_from_slice(text.as_bytes());
        buffer.push(b'\n');
        let outcome = self.queue(py, &buffer).map(|_| ());
        RECORD_BUFFER.with(|slot| slot.set(buffer));
        outcome
    }

    pub fn error_to_python(&self, error: WriteError) -> PyErr {
        match error {
            WriteError::Closed => {
                LogClosedError::new_err(format!("the log file {:?} is closed; create a new callback to log more", self.path))
            }
            WriteError::Io(reason) => LogFileError::new_err(format!("writing log file {:?} failed: {reason}", self.path)),
        }
    }
}

pub enum Sink {
    Metrics(Arc<MetricsSink>),
    Jsonl(Arc<JsonlSink>),
    /// A core of the pure-Python backend registered with this dispatcher: called through `handle()`.
    Python(Py<PyAny>),
}

/// A counter the metrics keep for the dispatcher.
#[derive(Clone, Copy)]
pub enum Counter {
    HandlerError,
    Dropped(u64),
    Lost(u64),
    Rejected,
}

pub fn count_on(py: Python<'_>, sink: &Sink, counter: Counter) -> PyResult<()> {
    match (sink, counter) {
        (Sink::Metrics(metrics), Counter::HandlerError) => metrics.lock().handler_error(),
        (Sink::Metrics(metrics), Counter::Dropped(count)) => metrics.lock().dropped(count),
        (Sink::Metrics(metrics), Counter::Lost(count)) => metrics.lock().lost(count),
        (Sink::Metrics(metrics), Counter::Rejected) => metrics.lock().rejected(),
        (Sink::Python(core), Counter::HandlerError) => {
            core.call_method0(py, intern!(py, "handler_error"))?;
        }
        (Sink::Python(core), Counter::Dropped(count)) => {
            core.call_method1(py, intern!(py, "dropped"), (count,))?;
        }
        (Sink::Python(core), Counter::Lost(count)) => {
            core.call_method1(py, intern!(py, "lost"), (count,))?;
        }
        (Sink::Python(core), Counter::Rejected) => {
            core.call_method0(py, intern!(py, "rejected"))?;
        }
        (Sink::Jsonl(_), _) => {}
    }
    Ok(())
}

pub fn sink_of(core: &Bound<'_, PyAny>) -> Sink {
    if let Ok(metrics) = core.cast::<PyMetricsSink>() {
        Sink::Metrics(Arc::clone(&metrics.get().sink))
    } else if let Ok(jsonl) = core.cast::<PyJsonlSink>() {
        Sink::Jsonl(Arc::clone(&jsonl.get().sink))
    } else {
        Sink::Python(core.clone().unbind())
    }
}

#[pyclass(frozen, name = "MetricsSink", module = "rlm_toolkit._core")]
pub struct PyMetricsSink {
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
        dict,
        snapshot,
        total_calls,
        completed_calls,
        total_tokens,
        prompt_tokens,
        completion_tokens,
        cached_tokens,
        reasoning_tokens,
        avg_latency_ms,
        min_latency_ms,
        max_latency_ms,
        p50_latency_ms,
        p95_latency_ms,
        p99_latency_ms,
        avg_ttft_ms,
        p50_ttft_ms,
        p95_ttft_ms,
        p99_ttft_ms,
        errors,
        retries,
        tool_calls,
        tool_results,
        tokens_streamed,
        memory_stores,
        memory_recalls,
        total_cost_usd,
        unpriced_calls,
        unreported_usage_calls,
        open_runs,
        evicted_runs,
        dropped_events,
        lost_events,
        rejected_events,
        handler_errors,
    );
    let by_model = PyDict::new(py);
    for (model, stats) in &snapshot.by_model {
        let entry = PyDict::new(py);
        copy_fields!(
            entry,
            stats,
            calls,
            completed_calls,
            errors,
            prompt_tokens,
            completion_tokens,
            total_tokens,
            cached_tokens,
            reasoning_tokens,
            cost_usd,
            avg_latency_ms,
        );
        by_model.set_item(model, entry)?;
    }
    dict.set_item("by_model", by_model)?;
    Ok(dict)
}

fn duration_to_dict<'py>(py: Python<'py>, duration: &DurationState) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    copy_fields!(dict, duration, count, sum_us, min_ms, max_ms);
    dict.set_item("buckets", duration.buckets.iter().map(|&(index, count)| (index, count)).collect::<Vec<_>>())?;
    Ok(dict)
}

fn price_to_python<'py>(py: Python<'py>, price: Option<Price>) -> PyResult<Bound<'py, PyAny>> {
    let Some(price) = price else { return Ok(py.None().into_bound(py)) };
    let dict = PyDict::new(py);
    copy_fields!(dict, price, prompt, completion, cached_prompt);
    Ok(dict.into_any())
}

/// The state as a snapshot holds it (`rlm_toolkit.callbacks.snapshot` reads and checks this shape).
fn state_to_dict<'py>(py: Python<'py>, state: &MetricsState) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    let counters = PyDict::new(py);
    for (name, value) in COUNTER_NAMES.iter().zip(state.counters) {
        counters.set_item(name, value)?;
    }
    dict.set_item("counters", counters)?;
    dict.set_item("latency", duration_to_dict(py, &state.latency)?)?;
    dict.set_item("ttft", duration_to_dict(py, &state.ttft)?)?;
    let models = PyList::empty(py);
    for model in &state.models {
        let entry = PyDict::new(py);
        entry.set_item("model", &model.name)?;
        entry.set_item("price", price_to_python(py, model.price)?)?;
        copy_fields!(
            entry,
            model,
            calls,
            completed_calls,
            errors,
            prompt_tokens,
            completion_tokens,
            total_tokens,
            cached_tokens,
            reasoning_tokens,
            cost_known,
            latency_count,
            latency_sum_us,
        );
        entry.set_item("priced_prompt_tokens", model.priced.prompt)?;
        entry.set_item("priced_cached_tokens", model.priced.cached)?;
        entry.set_item("priced_completion_tokens", model.priced.completion)?;
        models.append(entry)?;
    }
    dict.set_item("by_model", models)?;
    Ok(dict)
}

fn item<'py, T: FromPyObjectOwned<'py>>(dict: &Bound<'py, PyDict>, key: &str) -> PyResult<T> {
    match dict.get_item(key)? {
        Some(value) => value.extract().map_err(|_| PyValueError::new_err(format!("snapshot state: {key:?} has the wrong type"))),
        None => Err(PyValueError::new_err(format!("snapshot state: {key:?} is missing"))),
    }
}

fn duration_from_dict(dict: &Bound<'_, PyDict>) -> PyResult<DurationState> {
    Ok(DurationState {
        count: item(dict, "count")?,
        sum_us: item(dict, "sum_us")?,
        min_ms: item(dict, "min_ms")?,
        max_ms: item(dict, "max_ms")?,
        buckets: item(dict, "buckets")?,
    })
}

fn price_from_python(value: &Bound<'_, PyAny>) -> PyResult<Option<Price>> {
    if value.is_none() {
        return Ok(None);
    }
    let dict = value.cast::<PyDict>().map_err(|_| PyValueError::new_err("snapshot state: a model's price must be a dict or None"))?;
    Ok(Some(Price { prompt: item(dict, "prompt")?, completion: item(dict, "completion")?, cached_prompt: item(dict, "cached_prompt")? }))
}

fn state_from_dict(dict: &Bound<'_, PyDict>) -> PyResult<MetricsState> {
    let counter_dict: Bound<'_, PyDict> = item(dict, "counters")?;
    let mut counters = [0; COUNTER_NAMES.len()];
    for (slot, name) in counters.iter_mut().zip(COUNTER_NAMES) {
        *slot = item(&counter_dict, name)?;
    }
    let mut models = Vec::new();
    for entry in item::<Bound<'_, PyList>>(dict, "by_model")?.iter() {
        let entry = entry.cast_into::<PyDict>().map_err(|_| PyValueError::new_err("snapshot state: by_model holds a non-dict"))?;
        let price = entry.get_item("price")?.ok_or_else(|| PyValueError::new_err("snapshot state: \"price\" is missing"))?;
        models.push(ModelState {
            name: item(&entry, "model")?,
            price: price_from_python(&price)?,
            calls: item(&entry, "calls")?,
            completed_calls: item(&entry, "completed_calls")?,
            errors: item(&entry, "errors")?,
            prompt_tokens: item(&entry, "prompt_tokens")?,
            completion_tokens: item(&entry, "completion_tokens")?,
            total_tokens: item(&entry, "total_tokens")?,
            cached_tokens: item(&entry, "cached_tokens")?,
            reasoning_tokens: item(&entry, "reasoning_tokens")?,
            cost_known: item(&entry, "cost_known")?,
            priced: PricedTokens {
                prompt: item(&entry, "priced_prompt_tokens")?,
                cached: item(&entry, "priced_cached_tokens")?,
                completion: item(&entry, "priced_completion_tokens")?,
            },
            latency_count: item(&entry, "latency_count")?,
            latency_sum_us: item(&entry, "latency_sum_us")?,
        });
    }
    Ok(MetricsState {
        counters,
        latency: duration_from_dict(&item(dict, "latency")?)?,
        ttft: duration_from_dict(&item(dict, "ttft")?)?,
        models,
    })
}

#[pymethods]
impl PyMetricsSink {
    #[new]
    #[pyo3(signature = (prices, max_open_runs, cached_prompt_prices = Vec::new()))]
    fn new(prices: Vec<(String, f64, f64)>, max_open_runs: usize, cached_prompt_prices: Vec<(String, f64)>) -> Self {
        let prices = Prices::new(prices, cached_prompt_prices);
        PyMetricsSink { sink: Arc::new(MetricsSink(Mutex::new(Metrics::new(prices, max_open_runs)))) }
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
            if let Err(error) = checked_timestamp(value.py(), event, value) {
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

    /// Everything the metrics hold, as a snapshot keeps it.
    fn state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let state = self.sink.lock().state();
        state_to_dict(py, &state)
    }

    /// Adds a snapshot's state in; a `ValueError` (and no change) if it does not fit.
    fn merge_state(&self, state: &Bound<'_, PyDict>) -> PyResult<()> {
        let state = state_from_dict(state)?;
        self.sink.lock().merge(&state).map_err(PyValueError::new_err)
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

    /// Replays the JSONL log at `path` into these metrics (`replay.rs`), without holding the GIL: a dict of
    /// the lines it read (`records`, `foreign_lines`, `torn_tails`), the `slowest` slowest completed calls
    /// as `(latency_ms, run_id, model, end_ts)`, slowest first, and `calls_per_minute` as
    /// `(minute start in epoch seconds, completed calls)`, earliest first, and `by_model`: each model key's
    /// own state (as `state()` gives it, see `replay::PerModel`), in first-seen order. An unreadable file
    /// raises OSError.
    #[pyo3(signature = (path, slowest))]
    fn replay_file<'py>(&self, py: Python<'py>, path: std::path::PathBuf, slowest: usize) -> PyResult<Bound<'py, PyDict>> {
        let replay = py.detach(|| replay_file(&path, &mut self.sink.lock(), slowest))?;
        let dict = PyDict::new(py);
        dict.set_item("records", replay.records)?;
        dict.set_item("foreign_lines", replay.foreign_lines)?;
        dict.set_item("torn_tails", replay.torn_tails)?;
        let slowest: Vec<(f64, String, Option<String>, f64)> =
            replay.slowest.into_iter().map(|call| (call.latency_ms, call.run_id, call.model, call.end_ts)).collect();
        dict.set_item("slowest", slowest)?;
        dict.set_item("calls_per_minute", replay.calls_per_minute)?;
        let by_model = PyDict::new(py);
        for (key, state) in &replay.by_model {
            by_model.set_item(key, state_to_dict(py, state)?)?;
        }
        dict.set_item("by_model", by_model)?;
        Ok(dict)
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

    /// Queues `line`, one JSON object without a newline, as `handle` queues a record (see `JsonlSink::append_line`).
    fn append_line(&self, py: Python<'_>, line: &Bound<'_, PyString>) -> PyResult<()> {
        self.sink.append_line(py, line)
    }

    /// With a `timeout` (seconds), waits at most that long (see `JsonlWriter::flush_within`).
    #[pyo3(signature = (timeout=None))]
    fn flush(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<()> {
        let sink = &self.sink;
        let timeout = timeout
            .map(|seconds| {
                Duration::try_from_secs_f64(seconds).map_err(|_| {
                    pyo3::exceptions::PyValueError::new_err(format!("timeout must be a finite number of seconds, got {seconds}"))
                })
            })
            .transpose()?;
        py.detach(|| {
            sink.with_writer(|writer| match timeout {
                Some(timeout) => writer.flush_within(timeout),
                None => writer.flush(),
            })
        })
        .map_err(|error| sink.error_to_python(error))
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let sink = &self.sink;
        py.detach(|| sink.with_writer(JsonlWriter::close)).map_err(|error| sink.error_to_python(error))
    }

    /// Gives a forked child a writer thread of its own (called by an `os.register_at_fork` hook).
    fn reopen_after_fork(&self) -> PyResult<()> {
        self.sink
            .reopen_after_fork()
            .map_err(|error| LogFileError::new_err(format!("cannot reopen log file {:?} after fork(): {error}", self.sink.path)))
    }

    #[getter]
    fn closed(&self) -> bool {
        self.sink.with_writer(|writer| writer.is_closed())
    }

    #[getter]
    fn path(&self) -> &str {
        &self.sink.path
    }

    #[getter]
    fn dropped(&self) -> u64 {
        self.sink.with_writer(|writer| writer.dropped_lines())
    }

    #[getter]
    fn lost(&self) -> u64 {
        self.sink.with_writer(|writer| writer.lost_lines())
    }
}

// The refusals of `append_line`; the reference backend words them the same.
const LINE_WITH_SURROGATES: &str =
    "append_line() got text with lone surrogates, which UTF-8 cannot carry: encode the object with json.dumps(), which escapes them";
const LINE_WITH_NEWLINE: &str =
    "append_line() got text holding a newline: pass one JSON object on one line, without the newline (the log adds it)";
const LINE_NOT_AN_OBJECT: &str =
    "append_line() got text that is not one JSON object: pass the object's JSON text, such as json.dumps() returns for a dict";

/// The message of `NotAJsonlLogError`; the reference backend words it the same.
fn not_a_log_message(path: &str, reason: &str) -> String {
    format!(
        "the log file {path:?} holds something other than a JSONL log ({reason}); it was left untouched. \
         Give a new path, or move that file away"
    )
}
