//! The Python-facing layer: `rlm_toolkit._core`. Thin wrappers over `dispatch`, `metrics` and `jsonl`.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use crate::dispatch::{catalogue, python_error, Dispatcher, JsonlSink, MetricsSink, Registry};
use crate::events::EventKind;
use crate::jsonl::{JsonlWriter, WriterConfig};
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

#[pyfunction(name = "now")]
fn py_now() -> f64 {
    now()
}

fn event_kind(name: &str) -> PyResult<EventKind> {
    EventKind::from_name(name).ok_or_else(|| pyo3::exceptions::PyValueError::new_err(format!("unknown event {name:?}")))
}

#[pyclass(frozen, name = "Metrics", module = "rlm_toolkit._core")]
pub struct PyMetrics {
    pub sink: Arc<MetricsSink>,
}

fn snapshot_to_dict<'py>(py: Python<'py>, snapshot: &Snapshot) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    let counters: [(&str, u64); 5] = [
        ("total_calls", snapshot.total_calls),
        ("completed_calls", snapshot.completed_calls),
        ("total_tokens", snapshot.total_tokens),
        ("prompt_tokens", snapshot.prompt_tokens),
        ("completion_tokens", snapshot.completion_tokens),
    ];
    for (key, value) in counters {
        dict.set_item(key, value)?;
    }
    let latencies: [(&str, f64); 6] = [
        ("avg_latency_ms", snapshot.avg_latency_ms),
        ("min_latency_ms", snapshot.min_latency_ms),
        ("max_latency_ms", snapshot.max_latency_ms),
        ("p50_latency_ms", snapshot.p50_latency_ms),
        ("p95_latency_ms", snapshot.p95_latency_ms),
        ("p99_latency_ms", snapshot.p99_latency_ms),
    ];
    for (key, value) in latencies {
        dict.set_item(key, value)?;
    }
    let event_counters: [(&str, u64); 7] = [
        ("errors", snapshot.errors),
        ("retries", snapshot.retries),
        ("tool_calls", snapshot.tool_calls),
        ("tool_results", snapshot.tool_results),
        ("tokens_streamed", snapshot.tokens_streamed),
        ("memory_stores", snapshot.memory_stores),
        ("memory_recalls", snapshot.memory_recalls),
    ];
    for (key, value) in event_counters {
        dict.set_item(key, value)?;
    }
    dict.set_item("total_cost_usd", snapshot.total_cost_usd)?;
    let health: [(&str, u64); 5] = [
        ("unpriced_calls", snapshot.unpriced_calls),
        ("open_runs", snapshot.open_runs),
        ("evicted_runs", snapshot.evicted_runs),
        ("dropped_events", snapshot.dropped_events),
        ("handler_errors", snapshot.handler_errors),
    ];
    for (key, value) in health {
        dict.set_item(key, value)?;
    }
    let by_model = PyDict::new(py);
    for (model, stats) in &snapshot.by_model {
        let entry = PyDict::new(py);
        entry.set_item("calls", stats.calls)?;
        entry.set_item("completed_calls", stats.completed_calls)?;
        entry.set_item("errors", stats.errors)?;
        entry.set_item("prompt_tokens", stats.prompt_tokens)?;
        entry.set_item("completion_tokens", stats.completion_tokens)?;
        entry.set_item("total_tokens", stats.total_tokens)?;
        entry.set_item("cost_usd", stats.cost_usd)?;
        entry.set_item("avg_latency_ms", stats.avg_latency_ms)?;
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
        timestamp: Option<f64>,
        extra: Option<Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let kind = event_kind(event)?;
        let event = EventValues {
            kind,
            args: &args,
            run_id: run_id.as_ref(),
            parent_run_id: parent_run_id.as_ref(),
            model: model.as_ref(),
            ts: timestamp.unwrap_or_else(now),
            extra: extra.as_ref(),
        };
        self.sink.record(&event);
        Ok(())
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
}

#[pyclass(frozen, name = "JsonlSink", module = "rlm_toolkit._core")]
pub struct PyJsonlSink {
    pub sink: Arc<JsonlSink>,
}

#[pymethods]
impl PyJsonlSink {
    #[new]
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
    ) -> PyResult<Self> {
        let config = WriterConfig {
            flush_interval: Duration::from_secs_f64(flush_interval),
            buffer_bytes,
            max_pending_bytes,
            block_when_full,
        };
        let writer = JsonlWriter::open(Path::new(&path), config)
            .map_err(|error| python_error(py, "LogFileError", format!("cannot open log file {path:?}: {error}")))?;
        let options = RecordOptions { include_prompts, include_responses, max_chars: max_field_chars };
        Ok(PyJsonlSink { sink: Arc::new(JsonlSink { writer, options, path }) })
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
        timestamp: Option<f64>,
        extra: Option<Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let kind = event_kind(event)?;
        let event = EventValues {
            kind,
            args: &args,
            run_id: run_id.as_ref(),
            parent_run_id: parent_run_id.as_ref(),
            model: model.as_ref(),
            ts: timestamp.unwrap_or_else(now),
            extra: extra.as_ref(),
        };
        self.sink.record(py, &event).map(|_| ())
    }

    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let sink = &self.sink;
        py.detach(|| sink.writer.flush()).map_err(|error| sink.error_to_python(py, error))
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let sink = &self.sink;
        py.detach(|| sink.writer.close()).map_err(|error| sink.error_to_python(py, error))
    }

    #[getter]
    fn closed(&self) -> bool {
        self.sink.writer.is_closed()
    }

    #[getter]
    fn path(&self) -> &str {
        &self.sink.path
    }

    #[getter]
    fn dropped(&self) -> u64 {
        self.sink.writer.dropped_lines()
    }
}

#[pyclass(frozen, name = "Dispatcher", module = "rlm_toolkit._core")]
pub struct PyDispatcher {
    inner: Dispatcher,
}

macro_rules! fire {
    ($self:ident, $py:ident, $kind:expr, [$($arg:ident),+], $run_id:ident, $parent_run_id:ident, $model:ident, $timestamp:ident, $extra:ident) => {
        $self.inner.fire($py, $kind, &[$($arg),+], $run_id.as_ref(), $parent_run_id.as_ref(), $model.as_ref(), $timestamp, $extra.as_ref())
    };
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

    #[pyo3(signature = (prompt, *, run_id=None, parent_run_id=None, model=None, timestamp=None, **extra))]
    #[allow(clippy::too_many_arguments)]
    fn on_llm_start<'py>(&self, py: Python<'py>, prompt: Bound<'py, PyAny>, run_id: Option<Bound<'py, PyAny>>, parent_run_id: Option<Bound<'py, PyAny>>, model: Option<Bound<'py, PyString>>, timestamp: Option<f64>, extra: Option<Bound<'py, PyDict>>) -> PyResult<()> {
        fire!(self, py, EventKind::LlmStart, [prompt], run_id, parent_run_id, model, timestamp, extra)
    }

    #[pyo3(signature = (response, *, run_id=None, parent_run_id=None, model=None, timestamp=None, **extra))]
    #[allow(clippy::too_many_arguments)]
    fn on_llm_end<'py>(&self, py: Python<'py>, response: Bound<'py, PyAny>, run_id: Option<Bound<'py, PyAny>>, parent_run_id: Option<Bound<'py, PyAny>>, model: Option<Bound<'py, PyString>>, timestamp: Option<f64>, extra: Option<Bound<'py, PyDict>>) -> PyResult<()> {
        fire!(self, py, EventKind::LlmEnd, [response], run_id, parent_run_id, model, timestamp, extra)
    }

    #[pyo3(signature = (token, *, run_id=None, parent_run_id=None, model=None, timestamp=None, **extra))]
    #[allow(clippy::too_many_arguments)]
    fn on_llm_new_token<'py>(&self, py: Python<'py>, token: Bound<'py, PyAny>, run_id: Option<Bound<'py, PyAny>>, parent_run_id: Option<Bound<'py, PyAny>>, model: Option<Bound<'py, PyString>>, timestamp: Option<f64>, extra: Option<Bound<'py, PyDict>>) -> PyResult<()> {
        fire!(self, py, EventKind::LlmNewToken, [token], run_id, parent_run_id, model, timestamp, extra)
    }

    #[pyo3(signature = (tool_name, tool_input, *, run_id=None, parent_run_id=None, model=None, timestamp=None, **extra))]
    #[allow(clippy::too_many_arguments)]
    fn on_tool_start<'py>(&self, py: Python<'py>, tool_name: Bound<'py, PyAny>, tool_input: Bound<'py, PyAny>, run_id: Option<Bound<'py, PyAny>>, parent_run_id: Option<Bound<'py, PyAny>>, model: Option<Bound<'py, PyString>>, timestamp: Option<f64>, extra: Option<Bound<'py, PyDict>>) -> PyResult<()> {
        fire!(self, py, EventKind::ToolStart, [tool_name, tool_input], run_id, parent_run_id, model, timestamp, extra)
    }

    #[pyo3(signature = (tool_name, tool_output, *, run_id=None, parent_run_id=None, model=None, timestamp=None, **extra))]
    #[allow(clippy::too_many_arguments)]
    fn on_tool_end<'py>(&self, py: Python<'py>, tool_name: Bound<'py, PyAny>, tool_output: Bound<'py, PyAny>, run_id: Option<Bound<'py, PyAny>>, parent_run_id: Option<Bound<'py, PyAny>>, model: Option<Bound<'py, PyString>>, timestamp: Option<f64>, extra: Option<Bound<'py, PyDict>>) -> PyResult<()> {
        fire!(self, py, EventKind::ToolEnd, [tool_name, tool_output], run_id, parent_run_id, model, timestamp, extra)
    }

    #[pyo3(signature = (content, *, run_id=None, parent_run_id=None, model=None, timestamp=None, **extra))]
    #[allow(clippy::too_many_arguments)]
    fn on_memory_store<'py>(&self, py: Python<'py>, content: Bound<'py, PyAny>, run_id: Option<Bound<'py, PyAny>>, parent_run_id: Option<Bound<'py, PyAny>>, model: Option<Bound<'py, PyString>>, timestamp: Option<f64>, extra: Option<Bound<'py, PyDict>>) -> PyResult<()> {
        fire!(self, py, EventKind::MemoryStore, [content], run_id, parent_run_id, model, timestamp, extra)
    }

    #[pyo3(signature = (query, results, *, run_id=None, parent_run_id=None, model=None, timestamp=None, **extra))]
    #[allow(clippy::too_many_arguments)]
    fn on_memory_recall<'py>(&self, py: Python<'py>, query: Bound<'py, PyAny>, results: Bound<'py, PyAny>, run_id: Option<Bound<'py, PyAny>>, parent_run_id: Option<Bound<'py, PyAny>>, model: Option<Bound<'py, PyString>>, timestamp: Option<f64>, extra: Option<Bound<'py, PyDict>>) -> PyResult<()> {
        fire!(self, py, EventKind::MemoryRecall, [query, results], run_id, parent_run_id, model, timestamp, extra)
    }

    #[pyo3(signature = (attempt, max_attempts, error, *, run_id=None, parent_run_id=None, model=None, timestamp=None, **extra))]
    #[allow(clippy::too_many_arguments)]
    fn on_retry<'py>(&self, py: Python<'py>, attempt: Bound<'py, PyAny>, max_attempts: Bound<'py, PyAny>, error: Bound<'py, PyAny>, run_id: Option<Bound<'py, PyAny>>, parent_run_id: Option<Bound<'py, PyAny>>, model: Option<Bound<'py, PyString>>, timestamp: Option<f64>, extra: Option<Bound<'py, PyDict>>) -> PyResult<()> {
        fire!(self, py, EventKind::Retry, [attempt, max_attempts, error], run_id, parent_run_id, model, timestamp, extra)
    }

    #[pyo3(signature = (error, *, run_id=None, parent_run_id=None, model=None, timestamp=None, **extra))]
    #[allow(clippy::too_many_arguments)]
    fn on_error<'py>(&self, py: Python<'py>, error: Bound<'py, PyAny>, run_id: Option<Bound<'py, PyAny>>, parent_run_id: Option<Bound<'py, PyAny>>, model: Option<Bound<'py, PyString>>, timestamp: Option<f64>, extra: Option<Bound<'py, PyDict>>) -> PyResult<()> {
        fire!(self, py, EventKind::Error, [error], run_id, parent_run_id, model, timestamp, extra)
    }
}

#[pymodule]
fn _core(module: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = module.py();
    module.add_class::<PyDispatcher>()?;
    module.add_class::<PyMetrics>()?;
    module.add_class::<PyJsonlSink>()?;
    module.add_function(wrap_pyfunction!(py_now, module)?)?;
    let events: Vec<Bound<'_, PyTuple>> = catalogue()
        .into_iter()
        .map(|(name, args, fields, has_model)| (name, PyTuple::new(py, args)?, PyTuple::new(py, fields)?, has_model).into_pyobject(py))
        .collect::<PyResult<_>>()?;
    module.add("EVENT_CATALOGUE", PyTuple::new(py, events)?)?;
    Ok(())
}
