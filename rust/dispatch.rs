//! Event fan-out. Everything is decided at registration (`Registry::from_python`): which native sinks and
//! which Python hooks take each event, and how each hook is called. Firing an event is then a loop over
//! a prepared list: native sinks record it in Rust, hooks get one vectorcall each. Where each value of a
//! call goes is worked out on a call site's first call and kept (`CallShape`): its later calls are fired
//! without sorting their arguments.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use pyo3::exceptions::PyException;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::pyclass::{PyTraverseError, PyVisit};
use pyo3::types::{PyDict, PyList, PyNone, PyString, PyTuple, PyType};

use crate::errors::LogClosedError;
use crate::events::{EventKind, EVENT_COUNT, MAX_ARGS, MAX_KEYWORDS};
use crate::fastcall::{install_event_methods, vectorcall, EventTarget, MethodDefinitions, Replaceable, ShapedFire, CONTEXT_KEYWORDS};
use crate::record::{EventContext, EventValues};
use crate::sinks::{count_on, sink_of, Counter, JsonlSink, Sink};
use crate::time::now;
use crate::writer::WriteError;

/// How to call one Python hook, from `rlm_toolkit.callbacks._registration.HookPlan`.
struct Hook {
    /// The hook's function, called with `receiver` first when the hook is a bound method (which spares
    /// CPython unpacking the method on each call), else the hook itself.
    function: Py<PyAny>,
    receiver: Option<Py<PyAny>>,
    positional: usize,
    /// The keyword slots passed only when their value is not None (`HookPlan.passed_when_given`).
    passed_when_given: Vec<usize>,
    /// The arguments for each subset of those that is given, prepared at registration: bit `i` of the index
    /// is set when `passed_when_given[i]` is given.
    variants: Vec<Arguments>,
    takes_extra: bool,
    is_async: bool,
    raise_error: bool,
    label: Py<PyString>,
}

/// The slots to pass (the positional ones, then one per keyword name) and the keyword names.
struct Arguments {
    slots: Vec<usize>,
    keyword_names: Option<Py<PyTuple>>,
}

impl Arguments {
    fn new(py: Python<'_>, positional_slots: &[usize], keywords: &[&(usize, Bound<'_, PyString>)]) -> PyResult<Arguments> {
        let names: Vec<&Bound<'_, PyString>> = keywords.iter().map(|(_, name)| name).collect();
        Ok(Arguments {
            slots: positional_slots.iter().copied().chain(keywords.iter().map(|(slot, _)| *slot)).collect(),
            keyword_names: if names.is_empty() { None } else { Some(PyTuple::new(py, names)?.unbind()) },
        })
    }
}

impl Hook {
    fn from_plan(plan: &Bound<'_, PyAny>) -> PyResult<Hook> {
        let py = plan.py();
        let keyword_names: Bound<'_, PyTuple> = plan.getattr(intern!(py, "keyword_names"))?.cast_into()?;
        let interned: Vec<Bound<'_, PyString>> = keyword_names
            .iter()
            .map(|name| name.cast_into::<PyString>().map(|name| PyString::intern(py, &name.to_string_lossy())))
            .collect::<Result<_, _>>()?;
        let positional_slots: Vec<usize> = plan.getattr(intern!(py, "positional_slots"))?.extract()?;
        let keyword_slots: Vec<usize> = plan.getattr(intern!(py, "keyword_slots"))?.extract()?;
        let when_given: Vec<usize> = plan.getattr(intern!(py, "passed_when_given"))?.extract()?;
        let keywords: Vec<(usize, Bound<'_, PyString>)> = keyword_slots.into_iter().zip(interned).collect();
        let variants = (0..1usize << when_given.len())
            .map(|given| {
                let passed: Vec<&(usize, Bound<'_, PyString>)> = keywords
                    .iter()
                    .enumerate()
                    .filter(|(position, _)| when_given.iter().position(|p| p == position).is_none_or(|bit| given & (1 << bit) != 0))
                    .map(|(_, keyword)| keyword)
                    .collect();
                Arguments::new(py, &positional_slots, &passed)
            })
            .collect::<PyResult<_>>()?;
        let method = plan.getattr(intern!(py, "method"))?;
        let (function, receiver) = if method.is_instance(&py.import(intern!(py, "types"))?.getattr(intern!(py, "MethodType"))?)? {
            (method.getattr(intern!(py, "__func__"))?.unbind(), Some(method.getattr(intern!(py, "__self__"))?.unbind()))
        } else {
            (method.unbind(), None)
        };
        Ok(Hook {
            function,
            receiver,
            positional: positional_slots.len(),
            passed_when_given: when_given.iter().map(|&position| keywords[position].0).collect(),
            variants,
            takes_extra: plan.getattr(intern!(py, "takes_extra"))?.extract()?,
            is_async: plan.getattr(intern!(py, "is_async"))?.extract()?,
            raise_error: plan.getattr(intern!(py, "raise_error"))?.extract()?,
            label: plan.getattr(intern!(py, "label"))?.cast_into::<PyString>()?.unbind(),
        })
    }

    /// Which of `variants` to call with: the one for the keywords of `passed_when_given` that are given.
    fn given_variant(&self, given: impl Fn(usize) -> bool) -> usize {
        self.passed_when_given.iter().enumerate().filter(|(_, &slot)| given(slot)).fold(0, |variant, (bit, _)| variant | 1 << bit)
    }

    /// One vectorcall with `values`, the last of them under `keyword_names` (a variant's), then extras when
    /// the hook takes them.
    fn call<'a, 'py: 'a>(
        &self,
        py: Python<'py>,
        keyword_names: Option<&Py<PyTuple>>,
        values: impl ExactSizeIterator<Item = &'a Bound<'py, PyAny>>,
        extra: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let function = self.function.bind(py);
        let receiver = self.receiver.as_ref().map(|receiver| receiver.bind(py));
        let positional = self.positional;
        let keyword_names = keyword_names.map(|names| names.bind(py));
        let Some(extra) = extra.filter(|extra| self.takes_extra && !extra.is_empty()) else {
            return vectorcall(function, receiver, values, positional, keyword_names);
        };
        let mut names: Vec<Bound<'py, PyAny>> = match keyword_names {
            Some(fixed_names) => fixed_names.iter().collect(),
            None => Vec::new(),
        };
        let mut extra_values = Vec::with_capacity(extra.len());
        for (name, value) in extra.iter() {
            names.push(name);
            extra_values.push(value);
        }
        let names = PyTuple::new(py, names)?;
        let mut all_values: Vec<&Bound<'py, PyAny>> = Vec::with_capacity(values.len() + extra_values.len());
        for value in values {
            all_values.push(value);
        }
        all_values.extend(&extra_values);
        vectorcall(function, receiver, all_values.into_iter(), positional, Some(&names))
    }
}

/// How many call shapes (`CallShape`) each event keeps. A program fires an event from a few call sites;
/// the calls of any others are sorted each time, as are calls whose keyword names are built at run time.
const SHAPES_KEPT: usize = 4;

/// In a `CallShape`'s index arrays: a slot the call does not pass.
const NOT_PASSED: u8 = u8::MAX;

const SLOTS: usize = MAX_ARGS + CONTEXT_KEYWORDS + MAX_KEYWORDS;

#[derive(Default)]
struct EventTable {
    sinks: Vec<Sink>,
    hooks: Vec<Hook>,
    /// The call shapes met so far, first come first kept.
    shapes: [OnceLock<CallShape>; SHAPES_KEPT],
}

impl EventTable {
    /// The shape of a call with every argument by position and the keyword names `kwnames`: one kept, or
    /// one made and kept now. None when the call needs `fastcall::fire_from_vectorcall`'s sort (a
    /// timestamp, extras, arguments by name) or no room is left.
    fn shape(&self, py: Python<'_>, kind: EventKind, kwnames: Option<&Bound<'_, PyTuple>>) -> Option<&CallShape> {
        for kept in &self.shapes {
            let shape = match kept.get() {
                Some(shape) => shape,
                None => {
                    let made = CallShape::new(py, kind, &self.hooks, kwnames)?;
                    kept.get_or_init(|| made)
                }
            };
            if shape.matches(py, kwnames) {
                return shape.qualifies.then_some(shape);
            }
        }
        None
    }
}

/// Where the arguments of calls with the same keyword names go, worked out on the first such call and kept
/// with the registration. The names are CPython's interned strings, the same objects on every call (in the
/// constant tuple of a call site, or the keys of a `**` dict), so they are compared by identity; the shape
/// holds them, so no other string can take their addresses.
struct CallShape {
    keyword_names: Option<Py<PyTuple>>,
    /// False for calls that must be sorted each time: kept so that they are not examined again.
    qualifies: bool,
    /// For each slot (the order of `Dispatcher::fire`'s), the index of the call's value, or `NOT_PASSED`.
    slot_values: [u8; SLOTS],
    /// The values that must not be None for `hook_calls` to hold: keywords some hook gets only when given.
    given: Vec<u8>,
    /// The `model` value, checked to be a str or None on each call.
    model: u8,
    /// Per hook, in registration order: which of the hook's prepared arguments it gets, and from which value.
    hook_calls: Vec<ShapedCall>,
}

/// One hook's call under a shape: its prepared keyword names (of the variant that the shape gives) and the
/// index of the call's value for each argument, `NOT_PASSED` for None.
struct ShapedCall {
    keyword_names: Option<Py<PyTuple>>,
    values: Vec<u8>,
}

impl CallShape {
    /// The shape of calls with the keyword names `kwnames`; None when a name is not interned (built at run
    /// time, so a new object on each call that no kept shape would match again).
    #[cold]
    #[inline(never)]
    fn new(py: Python<'_>, kind: EventKind, hooks: &[Hook], kwnames: Option<&Bound<'_, PyTuple>>) -> Option<CallShape> {
        let names = kwnames.map(|names| names.as_slice()).unwrap_or_default();
        let texts: Vec<&str> = names.iter().map(|name| name.cast::<PyString>().ok()?.to_str().ok()).collect::<Option<_>>()?;
        if names.iter().zip(&texts).any(|(name, text)| PyString::intern(py, text).as_ptr() != name.as_ptr()) {
            return None;
        }
        let mut shape = CallShape {
            keyword_names: kwnames.map(|names| names.clone().unbind()),
            qualifies: false,
            slot_values: [NOT_PASSED; SLOTS],
            given: Vec::new(),
            model: NOT_PASSED,
            hook_calls: Vec::new(),
        };
        let spec = kind.spec();
        let positional = spec.args.len();
        for (slot, value) in shape.slot_values[..positional].iter_mut().zip(0..) {
            *slot = value;
        }
        for (index, name) in texts.iter().enumerate() {
            let Some(position) = keyword_slot_names(kind).position(|slot_name| slot_name == *name) else {
                return Some(shape);
            };
            let slot = &mut shape.slot_values[positional + position];
            match u8::try_from(positional + index) {
                Ok(value) if *slot == NOT_PASSED && value != NOT_PASSED => *slot = value,
                _ => return Some(shape),
            }
        }
        let passed = |slot: usize| shape.slot_values[slot] != NOT_PASSED;
        shape.hook_calls = hooks
            .iter()
            .map(|hook| {
                let arguments = &hook.variants[hook.given_variant(passed)];
                ShapedCall {
                    keyword_names: arguments.keyword_names.as_ref().map(|names| names.clone_ref(py)),
                    values: arguments.slots.iter().map(|&slot| shape.slot_values[slot]).collect(),
                }
            })
            .collect();
        shape.given = hooks
            .iter()
            .flat_map(|hook| &hook.passed_when_given)
            .map(|&slot| shape.slot_values[slot])
            .filter(|&value| value != NOT_PASSED)
            .collect();
        shape.given.sort_unstable();
        shape.given.dedup();
        if spec.has_model {
            shape.model = shape.slot_values[positional + 2];
        }
        shape.qualifies = true;
        Some(shape)
    }

    fn matches(&self, py: Python<'_>, kwnames: Option<&Bound<'_, PyTuple>>) -> bool {
        match (&self.keyword_names, kwnames) {
            (None, None) => true,
            (Some(kept), Some(given)) => {
                let (kept, given) = (kept.bind(py).as_slice(), given.as_slice());
                kept.as_ptr() == given.as_ptr()
                    || kept.len() == given.len() && kept.iter().zip(given).all(|(kept, given)| kept.as_ptr() == given.as_ptr())
            }
            _ => false,
        }
    }

    /// Whether the call's values are what this shape assumed: the keywords passed only when given are not
    /// None, and the model is a str or None. Otherwise the call is sorted (and a bad model refused) there.
    fn holds(&self, values: &[Bound<'_, PyAny>]) -> bool {
        let model_ok = values.get(usize::from(self.model)).is_none_or(|model| model.is_none() || model.is_instance_of::<PyString>());
        model_ok && self.given.iter().all(|&value| !values[usize::from(value)].is_none())
    }

    /// The event's context, as `fastcall::fire_from_vectorcall` sorts it.
    fn context<'a, 'py>(&self, kind: EventKind, values: &'a [Bound<'py, PyAny>]) -> EventContext<'a, 'py> {
        let value = |slot: usize| values.get(usize::from(self.slot_values[slot])).filter(|value| !value.is_none());
        let spec = kind.spec();
        let first = spec.args.len();
        let after_model = first + 2 + usize::from(spec.has_model);
        EventContext {
            run_id: value(first),
            parent_run_id: value(first + 1),
            model: if spec.has_model { value(first + 2).and_then(|model| model.cast::<PyString>().ok()) } else { None },
            tags: value(after_model),
            metadata: value(after_model + 1),
            keywords: std::array::from_fn(|index| if index < spec.keywords.len() { value(after_model + 2 + index) } else { None }),
            extra: None,
        }
    }
}

/// The names of an event's slots after its arguments, in slot order (`_registration.slot_names`).
fn keyword_slot_names(kind: EventKind) -> impl Iterator<Item = &'static str> {
    let spec = kind.spec();
    ["run_id", "parent_run_id"]
        .into_iter()
        .chain(spec.has_model.then_some("model"))
        .chain(["tags", "metadata"])
        .chain(spec.keywords.iter().copied())
}

#[pyclass(frozen, name = "Registry", module = "rlm_toolkit._core")]
pub struct Registry {
    events: Vec<EventTable>,
    error_counters: Vec<Sink>,
}

#[pymethods]
impl Registry {
    /// The hooks' functions and receivers and the Python cores: what can lead back to the dispatcher (names
    /// and keyword tuples hold only strings).
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let python_cores = self.events.iter().flat_map(|table| &table.sinks).chain(&self.error_counters);
        for sink in python_cores {
            if let Sink::Python(core) = sink {
                visit.call(core)?;
            }
        }
        for hook in self.events.iter().flat_map(|table| &table.hooks) {
            visit.call(&hook.function)?;
            visit.call(&hook.receiver)?;
        }
        Ok(())
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
                shapes: Default::default(),
            });
        }
        Ok(Registry { events, error_counters: error_counters.iter().map(|core| sink_of(&core)).collect() })
    }
}

pub struct Dispatcher {
    /// The current `Registry`. A fire takes a strong reference to it, so `set_registration` can replace it
    /// while fires are under way: each ends with the registry it began with.
    registry: Replaceable<Registry>,
    pub report_failure: Py<PyAny>,
    pub run_async: Py<PyAny>,
    pub handler_errors: AtomicU64,
}

impl Dispatcher {
    /// Fires a call with every argument by position through its `CallShape`, without sorting its keywords.
    /// None when the call needs `fastcall::fire_from_vectorcall`'s sort, which also gives any error.
    pub fn fire_shaped<'py>(
        &self,
        py: Python<'py>,
        kind: EventKind,
        values: &[Bound<'py, PyAny>],
        positional: usize,
        kwnames: Option<&Bound<'py, PyTuple>>,
    ) -> Option<PyResult<()>> {
        if positional != kind.spec().args.len() {
            return None;
        }
        let registry = self.registry.current(py)?;
        let registry = registry.get();
        let table = &registry.events[kind.index()];
        let shape = table.shape(py, kind, kwnames).filter(|shape| shape.holds(values))?;
        Some(self.fire_with_shape(py, registry, kind, table, shape, values))
    }

    fn fire_with_shape<'py>(
        &self,
        py: Python<'py>,
        registry: &Registry,
        kind: EventKind,
        table: &EventTable,
        shape: &CallShape,
        values: &[Bound<'py, PyAny>],
    ) -> PyResult<()> {
        let spec = kind.spec();
        if !table.sinks.is_empty() {
            self.record_shaped(py, registry, kind, table, shape, values)?;
        }
        let none = PyNone::get(py);
        let none = none.as_any();
        let mut pending = None;
        for (hook, call) in table.hooks.iter().zip(&shape.hook_calls) {
            let passed = call.values.iter().map(|&value| values.get(usize::from(value)).unwrap_or(none));
            match hook.call(py, call.keyword_names.as_ref(), passed, None) {
                Ok(_) if !hook.is_async => {}
                result => self.hook_returned(py, registry, hook, spec.name, result, &mut pending)?,
            }
        }
        if let Some(pending) = pending {
            self.run_pending(py, spec.name, pending)?;
        }
        Ok(())
    }

    #[inline(never)]
    fn record_shaped(
        &self,
        py: Python<'_>,
        registry: &Registry,
        kind: EventKind,
        table: &EventTable,
        shape: &CallShape,
        values: &[Bound<'_, PyAny>],
    ) -> PyResult<()> {
        let event = EventValues::new(kind, &values[..kind.spec().args.len()], shape.context(kind, values), now());
        self.record_all(py, registry, table, &event)
    }

    pub fn fire<'py>(
        &self,
        py: Python<'py>,
        kind: EventKind,
        args: &[Bound<'py, PyAny>],
        context: EventContext<'_, 'py>,
        timestamp: Option<f64>,
    ) -> PyResult<()> {
        let Some(registry) = self.registry.current(py) else {
            return Ok(());
        };
        let registry = registry.get();
        let table = &registry.events[kind.index()];
        if !table.sinks.is_empty() {
            self.record_all(py, registry, table, &EventValues::new(kind, args, context, timestamp.unwrap_or_else(now)))?;
        }
        if table.hooks.is_empty() {
            return Ok(());
        }
        // The hooks' slots, in the order of `_registration.slot_names`: the arguments, the context keywords
        // (`model` only for LLM events), then the event's own keywords.
        let none = PyNone::get(py);
        let none = none.as_any();
        let spec = kind.spec();
        let mut slots: [&Bound<'py, PyAny>; SLOTS] = [none; SLOTS];
        let mut count = 0;
        for arg in args {
            slots[count] = arg;
            count += 1;
        }
        slots[count] = context.run_id.unwrap_or(none);
        slots[count + 1] = context.parent_run_id.unwrap_or(none);
        count += 2;
        if spec.has_model {
            slots[count] = context.model.map_or(none, Bound::as_any);
            count += 1;
        }
        slots[count] = context.tags.unwrap_or(none);
        slots[count + 1] = context.metadata.unwrap_or(none);
        count += 2;
        for value in &context.keywords[..spec.keywords.len()] {
            slots[count] = value.unwrap_or(none);
            count += 1;
        }
        let slots = &slots[..count];
        let mut pending = None;
        for hook in &table.hooks {
            let arguments = &hook.variants[hook.given_variant(|slot| !slots[slot].is_none())];
            match hook.call(py, arguments.keyword_names.as_ref(), arguments.slots.iter().map(|&slot| slots[slot]), context.extra) {
                Ok(_) if !hook.is_async => {}
                result => self.hook_returned(py, registry, hook, spec.name, result, &mut pending)?,
            }
        }
        if let Some(pending) = pending {
            self.run_pending(py, spec.name, pending)?;
        }
        Ok(())
    }

    fn record_all(&self, py: Python<'_>, registry: &Registry, table: &EventTable, event: &EventValues<'_, '_>) -> PyResult<()> {
        table.sinks.iter().try_for_each(|sink| self.record(py, sink, event, registry))
    }

    /// What a hook's call returned, besides a sync hook's result: an async hook's awaitable is kept in
    /// `pending`; an error is isolated (logged and counted) unless the hook raises errors or it is not an
    /// `Exception`.
    #[cold]
    fn hook_returned<'py>(
        &self,
        py: Python<'py>,
        registry: &Registry,
        hook: &Hook,
        event: &str,
        result: PyResult<Bound<'py, PyAny>>,
        pending: &mut Option<Vec<Bound<'py, PyTuple>>>,
    ) -> PyResult<()> {
        match result {
            Ok(result) if hook.is_async => pending.get_or_insert_with(Vec::new).push(PyTuple::new(
                py,
                [result, hook.label.bind(py).clone().into_any(), hook.raise_error.into_pyobject(py)?.to_owned().into_any()],
            )?),
            Ok(_) => {}
            Err(error) if hook.raise_error || !error.is_instance_of::<PyException>(py) => return Err(error),
            Err(error) => self.hook_failed(py, registry, hook.label.bind(py), event, error.into_value(py).into_bound(py).into_any())?,
        }
        Ok(())
    }

    /// Runs the awaitables of the async hooks that an event's fire collected.
    fn run_pending<'py>(&self, py: Python<'py>, event: &str, pending: Vec<Bound<'py, PyTuple>>) -> PyResult<()> {
        self.run_async.call1(py, (event, PyList::new(py, pending)?))?;
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
                let context = &event.context;
                let extra = context.extra_with_keywords(py, event.kind)?;
                let handled = core.call_method1(
                    py,
                    intern!(py, "handle"),
                    (event.kind.spec().name, args, context.run_id, context.parent_run_id, context.model, event.ts, extra),
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
        self.fire(py, EventKind::Error, &[error], EventContext::default(), None)
    }

    /// Counts an event refused at the call (a bad timestamp) in the registered metrics.
    pub fn event_rejected(&self, py: Python<'_>) -> PyResult<()> {
        self.registry.current(py).map_or(Ok(()), |registry| registry.get().count(py, Counter::Rejected))
    }

    pub fn hook_failed(
        &self,
        py: Python<'_>,
        registry: &Registry,
        label: &Bound<'_, PyString>,
        event: &str,
        error: Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.handler_errors.fetch_add(1, Ordering::Relaxed);
        registry.count(py, Counter::HandlerError)?;
        self.report_failure.call1(py, (label, event, error))?;
        Ok(())
    }
}

#[pyclass(frozen, name = "Dispatcher", module = "rlm_toolkit._core")]
pub struct PyDispatcher {
    inner: Dispatcher,
}

#[pymethods]
impl PyDispatcher {
    #[new]
    fn new(py: Python<'_>, report_failure: Py<PyAny>, run_async: Py<PyAny>) -> PyResult<Self> {
        let registry = Replaceable::new(Bound::new(py, Registry::empty())?)?;
        Ok(PyDispatcher { inner: Dispatcher { registry, report_failure, run_async, handler_errors: AtomicU64::new(0) } })
    }

    fn set_registration(&self, registrations: &Bound<'_, PyList>, error_counters: &Bound<'_, PyList>) -> PyResult<()> {
        let py = registrations.py();
        self.inner.registry.replace(Bound::new(py, Registry::from_python(registrations, error_counters)?)?)
    }

    /// Counts and reports a hook failure met outside the dispatcher (an async hook).
    fn hook_failed(&self, py: Python<'_>, label: &Bound<'_, PyString>, event: &str, error: Bound<'_, PyAny>) -> PyResult<()> {
        match self.inner.registry.current(py) {
            Some(registry) => self.inner.hook_failed(py, registry.get(), label, event, error),
            None => Ok(()),
        }
    }

    /// What the dispatcher holds that can lead back to it (the registry's hooks, the async hook runner), so
    /// that a cycle through it (a manager, or a callback that keeps its manager) is collected.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.inner.registry.traverse(&visit)?;
        visit.call(&self.inner.report_failure)?;
        visit.call(&self.inner.run_async)
    }

    #[getter]
    fn handler_errors(&self) -> u64 {
        self.inner.handler_errors.load(Ordering::Relaxed)
    }

    /// Gives `owner` an `on_<event>` method per event, firing into the dispatcher its instances hold in the
    /// `__slots__` member `slot` (see `fastcall::install_event_methods`).
    #[staticmethod]
    fn install_event_methods(owner: &Bound<'_, PyType>, slot: &str) -> PyResult<()> {
        install_event_methods::<PyDispatcher>(owner, slot)
    }
}

impl EventTarget for PyDispatcher {
    fn method_definitions() -> &'static MethodDefinitions {
        static DEFINITIONS: MethodDefinitions = MethodDefinitions::new();
        &DEFINITIONS
    }

    #[inline]
    fn fire<'py>(
        &self,
        py: Python<'py>,
        kind: EventKind,
        args: &[Bound<'py, PyAny>],
        context: EventContext<'_, 'py>,
        timestamp: Option<f64>,
    ) -> PyResult<()> {
        self.inner.fire(py, kind, args, context, timestamp)
    }

    #[inline]
    fn fire_shaped<'py>(
        &self,
        py: Python<'py>,
        kind: EventKind,
        values: &[Bound<'py, PyAny>],
        positional: usize,
        kwnames: Option<&Bound<'py, PyTuple>>,
    ) -> ShapedFire {
        match self.inner.fire_shaped(py, kind, values, positional, kwnames) {
            Some(Ok(())) => ShapedFire::Fired,
            Some(Err(error)) => {
                error.restore(py);
                ShapedFire::Raised
            }
            None => ShapedFire::NeedsSorting,
        }
    }

    fn rejected(&self, py: Python<'_>) -> PyResult<()> {
        self.inner.event_rejected(py)
    }
}
