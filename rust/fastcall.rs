//! All FFI `unsafe` of the PyO3 layer, each with its SAFETY comment: the `on_<event>` methods that CPython
//! calls with its vectorcall convention (one trampoline per event of the catalogue, no argument tuple or
//! keyword dict built), and the vectorcall a hook is called with.

use std::ffi::CString;
use std::sync::OnceLock;

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::pyclass::boolean_struct::True;
use pyo3::pyclass::{PyTraverseError, PyVisit};
use pyo3::types::{PyDict, PyList, PyString, PyTuple, PyType};
use pyo3::{PyClass, PyTypeInfo};

use crate::errors::CallbackConfigError;
use crate::events::{for_each_event_index, EventKind, EVENTS, EVENT_COUNT, MAX_ARGS, MAX_KEYWORDS};
use crate::record::{checked_timestamp, EventContext};

/// The context keywords every hook may receive: `run_id`, `parent_run_id`, `model` (LLM events only), `tags`
/// and `metadata`.
pub const CONTEXT_KEYWORDS: usize = 5;

// The argument arrays below are sized by the catalogue's widest event.
const _: () = {
    let mut index = 0;
    while index < EVENT_COUNT {
        assert!(EVENTS[index].args.len() <= MAX_ARGS, "an event has more arguments than MAX_ARGS");
        index += 1;
    }
};

/// What the `on_<event>` methods fire into: the object their instance holds in its slot.
pub trait EventTarget: PyClass<Frozen = True> + PyTypeInfo + Sync {
    /// Where this class's method definitions are kept, made on first use.
    fn method_definitions() -> &'static MethodDefinitions;

    fn fire<'py>(
        &self,
        py: Python<'py>,
        kind: EventKind,
        args: &[Bound<'py, PyAny>],
        context: EventContext<'_, 'py>,
        timestamp: Option<f64>,
    ) -> PyResult<()>;

    /// Fires a call the target has a fast way for (`values` holds the `positional` arguments, then one value
    /// per name in `kwnames`), or says it must be sorted with `fire_from_vectorcall`.
    fn fire_shaped<'py>(
        &self,
        py: Python<'py>,
        kind: EventKind,
        values: &[Bound<'py, PyAny>],
        positional: usize,
        kwnames: Option<&Bound<'py, PyTuple>>,
    ) -> ShapedFire;

    /// An event refused at the call (a bad timestamp), for the metrics to count.
    fn rejected(&self, py: Python<'_>) -> PyResult<()>;
}

/// What became of a call offered to `EventTarget::fire_shaped`. A failure is handed back as CPython's
/// current exception, as the C function returning it does, rather than as a `PyErr` moved through each
/// return on the way (a copy of its bytes on every call, failed or not).
pub enum ShapedFire {
    Fired,
    /// The error is set as the current exception.
    Raised,
    NeedsSorting,
}

pub struct MethodDefinitions(OnceLock<Definitions>);

impl MethodDefinitions {
    pub const fn new() -> MethodDefinitions {
        MethodDefinitions(OnceLock::new())
    }
}

struct Definitions {
    methods: [ffi::PyMethodDef; EVENT_COUNT],
    /// Where the instances of the class the methods are installed in hold their target: the offset of a
    /// `__slots__` member.
    target_offset: ffi::Py_ssize_t,
    /// `T`'s type object, which no class derives from.
    target_type: *mut ffi::PyTypeObject,
}
// SAFETY: the definitions are immutable after creation and only hold pointers to functions and to leaked
// C strings, valid from any thread.
unsafe impl Sync for Definitions {}
unsafe impl Send for Definitions {}

/// Gives `owner` (a class with the `__slots__` member `slot`) an `on_<event>` method per event of the
/// catalogue, taking the event's arguments and the keywords `run_id`, `parent_run_id`, `model`, `tags`,
/// `metadata`, the event's own keywords, `timestamp` and any extras. Each fires into the `T` the instance
/// holds in `slot`, or calls the method of the same name of any other object held there.
///
/// Methods of the class rather than builtins set on each instance: CPython specialises the load of a class's
/// method, not of an instance attribute shadowing one (a lookup in the instance's dict at every call), and a
/// subclass's override of a method is not shadowed.
pub fn install_event_methods<T: EventTarget>(owner: &Bound<'_, PyType>, slot: &str) -> PyResult<()> {
    let target_offset = slot_offset(owner, slot)?;
    let definitions = T::method_definitions().0.get_or_init(|| definitions::<T>(target_offset, T::type_object_raw(owner.py())));
    if definitions.target_offset != target_offset {
        return Err(PyTypeError::new_err(format!(
            "event methods are installed in one class layout per process; {}.{slot} is at another offset",
            owner.qualname()?
        )));
    }
    for definition in &definitions.methods {
        // SAFETY: `owner` is a type object; the definition lives as long as the process (a static).
        // PyDescr_NewMethod returns a new reference, or NULL with an exception set.
        let method = unsafe {
            let method = ffi::PyDescr_NewMethod(owner.as_type_ptr(), (definition as *const ffi::PyMethodDef).cast_mut());
            Bound::from_owned_ptr_or_err(owner.py(), method)?
        };
        // SAFETY: `ml_name` is a NUL-terminated string leaked by `definitions`.
        let name = unsafe { std::ffi::CStr::from_ptr(definition.ml_name) };
        owner.setattr(name.to_str().expect("hook names are ASCII"), method)?;
    }
    Ok(())
}

/// The offset in `owner`'s instances of its `__slots__` member `slot` (an object reference).
fn slot_offset(owner: &Bound<'_, PyType>, slot: &str) -> PyResult<ffi::Py_ssize_t> {
    let not_a_slot = || PyTypeError::new_err(format!("{slot} is not a __slots__ member of this class"));
    let member = owner.getattr(intern!(owner.py(), "__dict__"))?.get_item(slot).map_err(|_| not_a_slot())?;
    // SAFETY: a member descriptor (its type checked first) is a PyMemberDescrObject, whose PyMemberDef is
    // static for the descriptor's life; `member` keeps the descriptor alive while it is read.
    unsafe {
        if ffi::Py_TYPE(member.as_ptr()) != &raw mut ffi::PyMemberDescr_Type {
            return Err(not_a_slot());
        }
        let descriptor = member.as_ptr().cast::<ffi::PyMemberDescrObject>();
        let definition = &*(*descriptor).d_member.cast::<ffi::PyMemberDef>();
        let absolute = definition.flags & ffi::Py_RELATIVE_OFFSET == 0;
        if (*descriptor).d_common.d_type != owner.as_type_ptr() || definition.type_code != ffi::Py_T_OBJECT_EX || !absolute {
            return Err(not_a_slot());
        }
        Ok(definition.offset)
    }
}

fn definitions<T: EventTarget>(target_offset: ffi::Py_ssize_t, target_type: *mut ffi::PyTypeObject) -> Definitions {
    macro_rules! trampolines {
        ($($index:literal)*) => { [$(fire_held_event::<T, $index> as ffi::PyCFunctionFastWithKeywords),*] };
    }
    let trampolines: [ffi::PyCFunctionFastWithKeywords; EVENT_COUNT] = for_each_event_index!(trampolines);
    let leak = |text: String| -> *const std::os::raw::c_char {
        Box::leak(CString::new(text).expect("no NUL in names").into_boxed_c_str()).as_ptr()
    };
    let methods = std::array::from_fn(|index| {
        let spec = &EVENTS[index];
        let hook = format!("on_{}", spec.name);
        let event_keywords: String = spec.keywords.iter().map(|name| format!("{name}=None, ")).collect();
        let doc = format!(
            "{hook}($self, {}, *, run_id=None, parent_run_id=None, model=None, tags=None, metadata=None, {event_keywords}\
             timestamp=None, **extra)\n--\n\nFire the {:?} event to the registered callbacks.",
            spec.args.join(", "),
            spec.name
        );
        ffi::PyMethodDef {
            ml_name: leak(hook),
            ml_meth: ffi::PyMethodDefPointer { PyCFunctionFastWithKeywords: trampolines[index] },
            ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
            ml_doc: leak(doc),
        }
    });
    Definitions { methods, target_offset, target_type }
}

struct ContextNames {
    run_id: Py<PyString>,
    parent_run_id: Py<PyString>,
    model: Py<PyString>,
    tags: Py<PyString>,
    metadata: Py<PyString>,
    timestamp: Py<PyString>,
}

fn context_names(py: Python<'_>) -> &'static ContextNames {
    static NAMES: OnceLock<ContextNames> = OnceLock::new();
    NAMES.get_or_init(|| ContextNames {
        run_id: PyString::intern(py, "run_id").unbind(),
        parent_run_id: PyString::intern(py, "parent_run_id").unbind(),
        model: PyString::intern(py, "model").unbind(),
        tags: PyString::intern(py, "tags").unbind(),
        metadata: PyString::intern(py, "metadata").unbind(),
        timestamp: PyString::intern(py, "timestamp").unbind(),
    })
}

enum ContextKeyword {
    RunId,
    ParentRunId,
    Model,
    Tags,
    Metadata,
    Timestamp,
}

/// Which context keyword `name` is, or the name itself when it is none of them: by identity first
/// (callers' keyword names are interned by CPython, so this settles nearly every name without reading it),
/// by text for names built at run time.
fn context_keyword<'py>(names: &ContextNames, name: Borrowed<'_, 'py, PyAny>) -> PyResult<Result<ContextKeyword, Bound<'py, PyString>>> {
    let pointer = name.as_ptr();
    let interned = [
        (&names.run_id, ContextKeyword::RunId),
        (&names.model, ContextKeyword::Model),
        (&names.parent_run_id, ContextKeyword::ParentRunId),
        (&names.timestamp, ContextKeyword::Timestamp),
        (&names.tags, ContextKeyword::Tags),
        (&names.metadata, ContextKeyword::Metadata),
    ];
    if let Some((_, keyword)) = interned.into_iter().find(|(interned, _)| interned.as_ptr() == pointer) {
        return Ok(Ok(keyword));
    }
    let name = name.to_owned().cast_into::<PyString>()?;
    Ok(match name.to_str()? {
        "run_id" => Ok(ContextKeyword::RunId),
        "parent_run_id" => Ok(ContextKeyword::ParentRunId),
        "model" => Ok(ContextKeyword::Model),
        "tags" => Ok(ContextKeyword::Tags),
        "metadata" => Ok(ContextKeyword::Metadata),
        "timestamp" => Ok(ContextKeyword::Timestamp),
        _ => Err(name),
    })
}

/// The body of every `on_*` method, for a call without a kept shape: sorts a vectorcall's arguments and fires
/// the event `kind`.
/// `values` holds the `positional` arguments, then one value per name in `kwnames`.
fn fire_from_vectorcall<'py, T: EventTarget>(
    py: Python<'py>,
    target: &T,
    kind: EventKind,
    values: &[Bound<'py, PyAny>],
    positional: usize,
    kwnames: Option<&Bound<'py, PyTuple>>,
) -> PyResult<()> {
    let spec = kind.spec();
    let hook = spec.name;
    if positional > spec.args.len() {
        return Err(PyTypeError::new_err(format!(
            "on_{hook}() takes {} positional arguments {}, got {positional}",
            spec.args.len(),
            python_tuple(spec.args)
        )));
    }
    // Arguments passed by name, by position in the event's arguments.
    let mut named_args: [Option<&Bound<'py, PyAny>>; MAX_ARGS] = [None; MAX_ARGS];
    let mut context = EventContext::default();
    let mut event_keywords: [Option<&Bound<'py, PyAny>>; MAX_KEYWORDS] = Default::default();
    let mut extra: Option<Bound<'py, PyDict>> = None;
    let mut timestamp = None;
    if let Some(kwnames) = kwnames {
        let names = context_names(py);
        let keyword_values = &values[positional..];
        for (index, name) in kwnames.as_slice().iter().enumerate() {
            let passed = &keyword_values[index];
            let value = Some(passed).filter(|value| !value.is_none());
            match context_keyword(names, name.as_borrowed())? {
                Ok(ContextKeyword::RunId) => context.run_id = value,
                Ok(ContextKeyword::ParentRunId) => context.parent_run_id = value,
                Ok(ContextKeyword::Tags) => context.tags = value,
                Ok(ContextKeyword::Metadata) => context.metadata = value,
                Ok(ContextKeyword::Model) => {
                    context.model = match value {
                        None => None,
                        Some(model) => Some(
                            model
                                .cast::<PyString>()
                                .map_err(|_| PyTypeError::new_err(format!("on_{hook}(): model must be a str or None")))?,
                        ),
                    }
                }
                Ok(ContextKeyword::Timestamp) => timestamp = value,
                Err(name) => match spec.args.iter().position(|arg| name == *arg) {
                    Some(position) if position < positional || named_args[position].is_some() => {
                        return Err(PyTypeError::new_err(format!(
                            "on_{hook}() got multiple values for argument '{}'",
                            spec.args[position]
                        )));
                    }
                    Some(position) => named_args[position] = Some(passed),
                    None => match spec.keywords.iter().position(|keyword| name == *keyword) {
                        Some(position) => event_keywords[position] = value,
                        None => extra.get_or_insert_with(|| PyDict::new(py)).set_item(name, passed)?,
                    },
                },
            }
        }
    }
    if let Some(missing) = (positional..spec.args.len()).find(|&index| named_args[index].is_none()) {
        return Err(PyTypeError::new_err(format!("on_{hook}() missing required argument '{}'", spec.args[missing])));
    }
    let timestamp = match timestamp.map(|value| checked_timestamp(py, hook, value)).transpose() {
        Ok(timestamp) => timestamp.flatten(),
        Err(error) => {
            target.rejected(py)?;
            return Err(error);
        }
    };
    context.keywords = event_keywords;
    context.extra = extra.as_ref();
    if positional == spec.args.len() {
        // The common call: every argument by position, handed on as CPython passed them.
        return target.fire(py, kind, &values[..positional], context, timestamp);
    }
    let event_args: Vec<Bound<'py, PyAny>> =
        values[..positional].iter().chain(named_args[positional..spec.args.len()].iter().flatten().copied()).cloned().collect();
    target.fire(py, kind, &event_args, context, timestamp)
}

/// Argument names as Python shows a tuple of them (`('prompt',)`): the messages read as the reference
/// backend's. The names are identifiers, so none needs escaping.
fn python_tuple(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|name| format!("'{name}'")).collect();
    match quoted.as_slice() {
        [one] => format!("({one},)"),
        _ => format!("({})", quoted.join(", ")),
    }
}

/// The `on_<event>` methods' body: `slf` is an instance of the class they were installed in.
unsafe extern "C" fn fire_held_event<T: EventTarget, const KIND: usize>(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let outcome = std::panic::catch_unwind(|| {
        // SAFETY: CPython calls this attached; the method descriptor checked that `slf` is an instance of the
        // class the definitions were made for (or of a subclass), whose object slot is at `target_offset`.
        // `kwnames` is NULL or a tuple of str, and `args` holds `nargs` + len(kwnames) live pointers borrowed
        // for the call; `Bound` is `repr(transparent)` over such a pointer, and a shared slice never drops one.
        unsafe {
            let py = Python::assume_attached();
            let definitions = T::method_definitions().0.get().expect("methods are made from their definitions");
            let held = *slf.cast::<u8>().offset(definitions.target_offset).cast::<*mut ffi::PyObject>();
            if held.is_null() {
                let class = Borrowed::from_ptr(py, ffi::Py_TYPE(slf).cast::<ffi::PyObject>()).cast_unchecked::<PyType>();
                let class = class.qualname().map_or_else(|_| "CallbackManager".to_owned(), |name| name.to_string());
                CallbackConfigError::new_err(format!("this {class} has no dispatcher: its __init__ must call CallbackManager.__init__"))
                    .restore(py);
                return std::ptr::null_mut();
            }
            // Owned for the call: another thread may replace the slot's object meanwhile.
            let held = Borrowed::from_ptr(py, held).to_owned();
            let keyword_count = if kwnames.is_null() { 0 } else { ffi::PyTuple_GET_SIZE(kwnames) as usize };
            let positional = nargs as usize;
            if ffi::Py_TYPE(held.as_ptr()) != definitions.target_type {
                let method = ffi::PyObject_GetAttrString(held.as_ptr(), definitions.methods[KIND].ml_name);
                if method.is_null() {
                    return method;
                }
                let method = Bound::from_owned_ptr(py, method);
                return ffi::PyObject_Vectorcall(method.as_ptr(), args, positional, kwnames);
            }
            let target = held.cast_unchecked::<T>();
            let values: &[Bound<'_, PyAny>] =
                if positional + keyword_count == 0 { &[] } else { std::slice::from_raw_parts(args.cast(), positional + keyword_count) };
            let kwnames = if kwnames.is_null() { None } else { Some(Borrowed::from_ptr(py, kwnames).cast_unchecked::<PyTuple>()) };
            let (target, kind, kwnames) = (target.get(), EVENTS[KIND].kind, kwnames.as_deref());
            match target.fire_shaped(py, kind, values, positional, kwnames) {
                ShapedFire::Fired => return py.None().into_ptr(),
                ShapedFire::Raised => return std::ptr::null_mut(),
                ShapedFire::NeedsSorting => {}
            }
            match fire_from_vectorcall(py, target, kind, values, positional, kwnames) {
                Ok(()) => py.None().into_ptr(),
                Err(error) => {
                    error.restore(py);
                    std::ptr::null_mut()
                }
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

/// A reference to a `T` that can be replaced while readers hold the one they took: a one-item list only
/// this struct sees. Taking the current `T` is a list read and a reference-count increment under the GIL
/// (where an `ArcSwap` load costs two atomic operations), with no type check: nothing but a `T` is ever
/// stored in the list. The owner's `__traverse__` calls `traverse`, so a reference cycle through the `T`
/// can be collected; the collector then empties the list, and `current` gives None.
pub struct Replaceable<T: PyClass> {
    holder: Py<PyList>,
    held_type: std::marker::PhantomData<T>,
}

impl<T: PyClass> Replaceable<T> {
    pub fn new(value: Bound<'_, T>) -> PyResult<Self> {
        Ok(Replaceable { holder: PyList::new(value.py(), [value])?.unbind(), held_type: std::marker::PhantomData })
    }

    pub fn replace(&self, value: Bound<'_, T>) -> PyResult<()> {
        self.holder.bind(value.py()).set_item(0, value)
    }

    /// The current `T`; None only once the garbage collector has cleared the list (its owner is garbage).
    #[inline]
    pub fn current<'py>(&self, py: Python<'py>) -> Option<Bound<'py, T>> {
        let holder = self.holder.bind(py);
        // SAFETY: the list is private to this struct and only ever set at index 0, which the length check
        // shows is within it; what it holds there is a `T`. `py` means attached.
        (holder.len() == 1).then(|| unsafe { holder.get_item_unchecked(0).cast_into_unchecked::<T>() })
    }

    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.holder)
    }
}

const INLINE_ARGS: usize = 8;

/// Calls `callable` with the vectorcall convention: `receiver` first when given, then `values`, which
/// yields `positional` positional values, then one per name of `kwnames`. No argument tuple or keyword dict
/// is built.
pub fn vectorcall<'a, 'py: 'a>(
    callable: &Bound<'py, PyAny>,
    receiver: Option<&Bound<'py, PyAny>>,
    values: impl ExactSizeIterator<Item = &'a Bound<'py, PyAny>>,
    positional: usize,
    kwnames: Option<&Bound<'py, PyTuple>>,
) -> PyResult<Bound<'py, PyAny>> {
    let given = values.len();
    assert_eq!(given, positional + kwnames.map_or(0, |names| names.len()), "one value per positional argument and keyword name");
    let first = usize::from(receiver.is_some());
    let count = first + given;
    let mut inline = [std::ptr::null_mut(); INLINE_ARGS + 1];
    let mut spilled;
    // Slot 0 stays free so the callee may use it (PY_VECTORCALL_ARGUMENTS_OFFSET): a bound method puts
    // `self` there instead of copying the arguments.
    let argv: &mut [*mut ffi::PyObject] = if count < INLINE_ARGS {
        &mut inline[..=count]
    } else {
        spilled = vec![std::ptr::null_mut(); count + 1];
        &mut spilled[..]
    };
    if let Some(receiver) = receiver {
        argv[1] = receiver.as_ptr();
    }
    for (target, value) in argv[1 + first..].iter_mut().zip(values) {
        *target = value.as_ptr();
    }
    let kwnames = kwnames.map_or(std::ptr::null_mut(), |names| names.as_ptr());
    // SAFETY: argv[1..] holds `first + positional` positional and len(kwnames) keyword values (checked
    // above), borrowed from the caller for the call; slot 0 is scratch, as the offset flag promises.
    let result = unsafe {
        ffi::PyObject_Vectorcall(
            callable.as_ptr(),
            argv.as_ptr().add(1),
            (first + positional) | ffi::PY_VECTORCALL_ARGUMENTS_OFFSET,
            kwnames,
        )
    };
    // SAFETY: PyObject_Vectorcall returns a new reference, or NULL with an exception set.
    unsafe { Bound::from_owned_ptr_or_err(callable.py(), result) }
}
