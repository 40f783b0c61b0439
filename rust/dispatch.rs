//! Event fan-out. Everything is decided at registration (`Registry::from_python`): which native sinks and
//! which Python hooks take each event, and how each hook is called. Firing an event is then a loop over
//! a prepared list: native sinks record it in Rust, hooks get one vectorcall each.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use pyo3::exceptions::PyException;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use crate::errors::{LogClosedError, LogFileError};
use crate::events::{EventKind, EVENTS, EVENT_COUNT};
use crate::writer::{Announcement, Appended, JsonlWriter, WriteError, WriterConfig};
use crate::metrics::{Metrics, Usage};
use crate::pyjson::{push_record, EventValues, RecordOptions};

pub struct MetricsSink(pub Mutex<Metrics>);

impl MetricsSink {
    pub fn lock(&self) -> MutexGuard<'_, Metrics> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn record(&self, event: &EventValues<'_, '_>) {
        let run_key = run_key(event.run_id);
        let model = event.model.and_then(|name| name.to_str().ok());
        match event.kind {
            EventKind::LlmStart => self.lock().llm_start(&run_key, model, event.ts),
            EventKind::LlmEnd => {
                let usage = event.usage().map(|(prompt_tokens, completion_tokens, total_tokens)| Usage {
                    prompt_tokens,
                    completion_tokens,
                    total_tokens,
                });
                let model = event.response_model().and_then(|name| name.to_str().ok());
                self.lock().llm_end(&run_key, model, usage, event.ts)
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

/// Latency pairs starts and ends by this key; events without a run id share the key "".
fn run_key<'a>(run_id: Option<&'a Bound<'_, PyAny>>) -> Cow<'a, str> {
    match run_id {
        None => Cow::Borrowed(""),
        Some(run_id) => match run_id.cast::<PyString>() {
            Ok(text) => text.to_str().map(Cow::Borrowed).unwrap_or_else(|_| Cow::Owned(text.to_string_lossy().into_owned())),
            Err(_) => Cow::Owned(run_id.str().map(|text| text.to_string_lossy().into_owned()).unwrap_or_default()),
        },
    }
}

pub struct JsonlSink {
    /// Replaced, never closed, in a forked child (the parent's writer thread does not exist there). Only
    /// `reopen_after_fork` writes it, once per new process, from the at-fork hook that runs before the
    /// child has any other Python thread; every other access reads.
    writer: std::cell::UnsafeCell<Arc<JsonlWriter>>,
    /// The process the current writer belongs to.
    writer_pid: std::sync::atomic::AtomicU32,
    config: WriterConfig,
    pub options: RecordOptions,
    pub path: String,
}

thread_local! {
    static RECORD_BUFFER: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

// SAFETY: see the `writer` field: shared access only reads the cell, except once in a forked child.
unsafe impl Sync for JsonlSink {}

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
        Ok(JsonlSink { writer: std::cell::UnsafeCell::new(Arc::new(writer)), writer_pid, config, options, path })
    }

    pub fn writer(&self) -> &JsonlWriter {
        // SAFETY: the only write happens in `reopen_after_fork` with no other thread alive to read.
        unsafe { &*self.writer.get() }
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
        // SAFETY: first reopen in this new process, from the at-fork hook: no other thread reads the cell.
        let parents = unsafe { std::ptr::replace(self.writer.get(), Arc::new(writer)) };
        std::mem::forget(parents);
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
        let writer = self.writer();
        let outcome = loop {
            match writer.append(&line) {
                Ok(Appended::MustWait) => py.detach(|| writer.make_room()),
                Ok(appended) => {
                    break Ok(Recorded { dropped: appended == Appended::Dropped, news: writer.announce() })
                }
                Err(error) => break Err(self.error_to_python(error)),
            }
        };
        RECORD_BUFFER.with(|slot| slot.set(line));
        outcome
    }

    pub fn error_to_python(&self, error: WriteError) -> PyErr {
        match error {
            WriteError::Closed => {
                LogClosedError::new_err(format!("FileLogCallback for {:?} is closed; create a new one to log more", self.path))
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

/// How to call one Python hook, from `rlm_toolkit.callbacks._registration.HookPlan`.
pub struct Hook {
    method: Py<PyAny>,
    positional_slots: Vec<usize>,
    keyword_slots: Vec<usize>,
    keyword_names: Option<Py<PyTuple>>,
    takes_extra: bool,
    is_async: bool,
    raise_error: bool,
    label: Py<PyString>,
}

const INLINE_ARGS: usize = 8;

impl Hook {
    fn from_plan(plan: &Bound<'_, PyAny>) -> PyResult<Hook> {
        let py = plan.py();
        let keyword_names: Bound<'_, PyTuple> = plan.getattr(intern!(py, "keyword_names"))?.cast_into()?;
        let interned: Vec<Bound<'_, PyString>> = keyword_names
            .iter()
            .map(|name| name.cast_into::<PyString>().map(|name| PyString::intern(py, &name.to_string_lossy())))
            .collect::<Result<_, _>>()?;
        Ok(Hook {
            method: plan.getattr(intern!(py, "method"))?.unbind(),
            positional_slots: plan.getattr(intern!(py, "positional_slots"))?.extract()?,
            keyword_slots: plan.getattr(intern!(py, "keyword_slots"))?.extract()?,
            keyword_names: if interned.is_empty() { None } else { Some(PyTuple::new(py, interned)?.unbind()) },
            takes_extra: plan.getattr(intern!(py, "takes_extra"))?.extract()?,
            is_async: plan.getattr(intern!(py, "is_async"))?.extract()?,
            raise_error: plan.getattr(intern!(py, "raise_error"))?.extract()?,
            label: plan.getattr(intern!(py, "label"))?.cast_into::<PyString>()?.unbind(),
        })
    }

    /// One vectorcall: the positional slots, then the keyword slots, then extras when the hook takes them.
    fn call<'py>(&self, py: Python<'py>, slots: &[*mut ffi::PyObject], extra: Option<&Bound<'py, PyDict>>) -> PyResult<Bound<'py, PyAny>> {
        let extra = extra.filter(|extra| self.takes_extra && !extra.is_empty());
        let fixed = self.positional_slots.len() + self.keyword_slots.len();
        let mut inline = [std::ptr::null_mut(); INLINE_ARGS + 1];
        let mut spilled = Vec::new();
        let total = fixed + extra.map_or(0, |extra| extra.len());
        // Slot 0 stays free so the callee may use it (PY_VECTORCALL_ARGUMENTS_OFFSET): a bound method
        // puts `self` there instead of copying the arguments.
        let argv: &mut [*mut ffi::PyObject] = if total < INLINE_ARGS {
            &mut inline[..=total]
        } else {
            spilled.resize(total + 1, std::ptr::null_mut());
            &mut spilled[..]
        };
        for (target, &slot) in argv[1..].iter_mut().zip(self.positional_slots.iter().chain(&self.keyword_slots)) {
            *target = slots[slot];
        }
        let mut extra_names = None;
        let kwnames = match extra {
            None => self.keyword_names.as_ref().map_or(std::ptr::null_mut(), |names| names.as_ptr()),
            Some(extra) => {
                let mut names: Vec<Bound<'py, PyAny>> = match &self.keyword_names {
                    Some(fixed_names) => fixed_names.bind(py).iter().collect(),
                    None => Vec::new(),
                };
                let extra_items = extra.items();
                for (offset, item) in extra_items.iter().enumerate() {
                    let pair = item.cast_into::<PyTuple>()?;
                    names.push(pair.get_item(0)?);
                    argv[1 + fixed + offset] = pair.get_item(1)?.as_ptr();
                }
                let tuple = PyTuple::new(py, names)?;
                let pointer = tuple.as_ptr();
                // Keeps the values (held by `extra_items`) and the names alive across the call.
                extra_names = Some((tuple, extra_items));
                pointer
            }
        };
        let positional = self.positional_slots.len();
        // SAFETY: argv[1..] holds `positional` positional and len(kwnames) keyword values, all borrowed
        // references kept alive by the caller's `slots`, by `extra_names` or by `extra`.
        let result = unsafe {
            ffi::PyObject_Vectorcall(
                self.method.as_ptr(),
                argv.as_ptr().add(1),
                positional | ffi::PY_VECTORCALL_ARGUMENTS_OFFSET,
                kwnames,
            )
        };
        drop(extra_names);
        // SAFETY: PyObject_Vectorcall returns a new reference, or NULL with an exception set.
        unsafe { Bound::from_owned_ptr_or_err(py, result) }
    }
}

#[derive(Default)]
pub struct EventTable {
    sinks: Vec<Sink>,
    hooks: Vec<Hook>,
}

pub struct Registry {
    events: Vec<EventTable>,
    error_counters: Vec<Sink>,
}

fn sink_of(core: &Bound<'_, PyAny>) -> Sink {
    if let Ok(metrics) = core.cast::<crate::bindings::PyMetrics>() {
        Sink::Metrics(Arc::clone(&metrics.get().sink))
    } else if let Ok(jsonl) = core.cast::<crate::bindings::PyJsonlSink>() {
        Sink::Jsonl(Arc::clone(&jsonl.get().sink))
    } else {
        Sink::Python(core.clone().unbind())
    }
}

impl Registry {
    /// Counts `counter` in every registered metrics core.
    fn count(&self, py: Python<'_>, counter: Counter) -> PyResult<()> {
        self.error_counters.iter().try_for_each(|sink| count_on(py, sink, counter))
    }

    pub fn empty() -> Registry {
        Registry { events: (0..EVENT_COUNT).map(|_| EventTable::default()).collect(), error_counters: Vec::new() }
    }

    /// From `[(sinks, hook_plans)]` per event (catalogue order) and the metrics cores that count hook errors.
    pub fn from_python(registrations: &Bound<'_, PyList>, error_counters: &Bound<'_, PyList>) -> PyResult<Registry> {
        if registrations.len() != EVENT_COUNT {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "expected {EVENT_COUNT} event registrations, got {}",
                registrations.len()
            )));
        }
        let mut events = Vec::with_capacity(EVENT_COUNT);
        for registration in registrations.iter() {
            let (sinks, hooks): (Bound<'_, PyList>, Bound<'_, PyList>) = registration.extract()?;
            events.push(EventTable {
                sinks: sinks.iter().map(|core| sink_of(&core)).collect(),
                hooks: hooks.iter().map(|plan| Hook::from_plan(&plan)).collect::<PyResult<_>>()?,
            });
        }
        Ok(Registry { events, error_counters: error_counters.iter().map(|core| sink_of(&core)).collect() })
    }
}

pub struct Dispatcher {
    pub registry: ArcSwap<Registry>,
    pub report_failure: Py<PyAny>,
    pub run_async: Py<PyAny>,
    pub handler_errors: AtomicU64,
}

impl Dispatcher {
    #[allow(clippy::too_many_arguments)]
    pub fn fire<'py>(
        &self,
        py: Python<'py>,
        kind: EventKind,
        args: &[Bound<'py, PyAny>],
        run_id: Option<&Bound<'py, PyAny>>,
        parent_run_id: Option<&Bound<'py, PyAny>>,
        model: Option<&Bound<'py, PyString>>,
        timestamp: Option<f64>,
        extra: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<()> {
        let registry = self.registry.load();
        let table = &registry.events[kind.index()];
        if !table.sinks.is_empty() {
            let ts = timestamp.unwrap_or_else(crate::bindings::now);
            let event = EventValues::new(kind, args, run_id, parent_run_id, model, ts, extra);
            for sink in &table.sinks {
                self.record(py, sink, &event, &registry)?;
            }
        }
        if table.hooks.is_empty() {
            return Ok(());
        }
        let none = py.None();
        let context = [run_id.map(Bound::as_ptr), parent_run_id.map(Bound::as_ptr), model.map(Bound::as_ptr)];
        let context_count = if kind.spec().has_model { 3 } else { 2 };
        let mut slots = [std::ptr::null_mut(); 6];
        for (slot, arg) in slots.iter_mut().zip(args) {
            *slot = arg.as_ptr();
        }
        for (offset, value) in context[..context_count].iter().enumerate() {
            slots[args.len() + offset] = value.unwrap_or_else(|| none.as_ptr());
        }
        let slots = &slots[..args.len() + context_count];
        let mut pending: Vec<Bound<'py, PyTuple>> = Vec::new();
        for hook in &table.hooks {
            match hook.call(py, slots, extra) {
                Ok(result) if hook.is_async => {
                    pending.push(PyTuple::new(py, [result, hook.label.bind(py).clone().into_any(), hook.raise_error.into_pyobject(py)?.to_owned().into_any()])?)
                }
                Ok(_) => {}
                Err(error) if hook.raise_error || !error.is_instance_of::<PyException>(py) => return Err(error),
                Err(error) => self.hook_failed(py, &registry, hook.label.bind(py), kind.spec().name, error.into_value(py).into_bound(py).into_any())?,
            }
        }
        if !pending.is_empty() {
            self.run_async.call1(py, (kind.spec().name, PyList::new(py, pending)?))?;
        }
        Ok(())
    }

    fn record(&self, py: Python<'_>, sink: &Sink, event: &EventValues<'_, '_>, registry: &Registry) -> PyResult<()> {
        match sink {
            Sink::Metrics(metrics) => metrics.record(event),
            Sink::Jsonl(jsonl) => {
                let recorded = match jsonl.record(py, event) {
                    Ok(recorded) => recorded,
                    Err(error) => return self.sink_refused(py, registry, &jsonl.path, event.kind, error),
                };
                if recorded.dropped {
                    registry.count(py, Counter::Dropped(1))?;
                }
                if let Some(news) = recorded.news {
                    if news.lost_lines > 0 {
                        registry.count(py, Counter::Lost(news.lost_lines))?;
                    }
                    if let Some(reason) = news.error {
                        self.report_write_error(py, registry, jsonl, event.kind, reason)?;
                    }
                }
            }
            Sink::Python(core) => {
                let args = PyTuple::new(py, event.args)?;
                let handled = core.call_method1(
                    py,
                    intern!(py, "handle"),
                    (event.kind.spec().name, args, event.run_id, event.parent_run_id, event.model, event.ts, event.extra),
                );
                if let Err(error) = handled {
                    let path = core.getattr(py, intern!(py, "path")).and_then(|path| path.extract::<String>(py)).unwrap_or_default();
                    return self.sink_refused(py, registry, &path, event.kind, error);
                }
            }
        }
        Ok(())
    }

    /// A closed log refusing an event is isolated like a failing hook (logged, counted): the other sinks
    /// and hooks still get the event. Any other error propagates.
    fn sink_refused(&self, py: Python<'_>, registry: &Registry, path: &str, kind: EventKind, error: PyErr) -> PyResult<()> {
        if !error.is_instance_of::<LogClosedError>(py) {
            return Err(error);
        }
        let label = PyString::new(py, &format!("FileLogCallback({path})"));
        self.hook_failed(py, registry, &label, kind.spec().name, error.into_value(py).into_bound(py).into_any())
    }

    /// A log write failed on the writer thread: log and count it like a failing hook, and fire `on_error`
    /// so the app's own callbacks hear of it. `flush()`/`close()` raise it too.
    fn report_write_error(&self, py: Python<'_>, registry: &Registry, jsonl: &JsonlSink, kind: EventKind, reason: String) -> PyResult<()> {
        let error = jsonl.error_to_python(WriteError::Io(reason)).into_value(py).into_bound(py).into_any();
        let label = PyString::new(py, &format!("FileLogCallback({})", jsonl.path));
        self.hook_failed(py, registry, &label, kind.spec().name, error.clone())?;
        self.fire(py, EventKind::Error, &[error], None, None, None, None, None)
    }

    /// Counts an event refused at the call (a bad timestamp) in the registered metrics.
    pub fn event_rejected(&self, py: Python<'_>) -> PyResult<()> {
        self.registry.load().count(py, Counter::Rejected)
    }

    pub fn hook_failed(&self, py: Python<'_>, registry: &Registry, label: &Bound<'_, PyString>, event: &str, error: Bound<'_, PyAny>) -> PyResult<()> {
        self.handler_errors.fetch_add(1, Ordering::Relaxed);
        registry.count(py, Counter::HandlerError)?;
        self.report_failure.call1(py, (label, event, error))?;
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Counter {
    HandlerError,
    Dropped(u64),
    Lost(u64),
    Rejected,
}

fn count_on(py: Python<'_>, sink: &Sink, counter: Counter) -> PyResult<()> {
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

pub fn catalogue() -> Vec<(&'static str, Vec<&'static str>, Vec<&'static str>, bool)> {
    EVENTS.iter().map(|spec| (spec.name, spec.args.to_vec(), spec.fields.to_vec(), spec.has_model)).collect()
}
