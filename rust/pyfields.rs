//! Fields of Python objects read without `getattr`, for the value types the records and metrics read on
//! every `llm_end`: `__slots__` at their offsets, and instance dicts. The FFI `unsafe` of these reads, each
//! with its SAFETY comment.

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyInt, PyString, PyType};

/// Reads the `__slots__` fields of instances of one class at their offsets: a load each, where a
/// `getattr` walks the type's attribute lookup and the descriptor protocol.
pub struct SlotReader<const N: usize> {
    class: Py<PyType>,
    offsets: [ffi::Py_ssize_t; N],
}

impl<const N: usize> SlotReader<N> {
    /// A reader of `class`'s fields `names`, each of which must be one of its own `__slots__` (an object
    /// member descriptor defined by `class`), else a `TypeError`.
    pub fn new(class: &Bound<'_, PyType>, names: [&str; N]) -> PyResult<SlotReader<N>> {
        let mut offsets = [0; N];
        for (offset, name) in offsets.iter_mut().zip(names) {
            let descriptor = class.getattr(name)?;
            let not_a_slot = || {
                PyTypeError::new_err(format!(
                    "{}.{name} is not one of its __slots__",
                    class.qualname().map(|name| name.to_string()).unwrap_or_default()
                ))
            };
            if descriptor.get_type().as_type_ptr() != std::ptr::addr_of_mut!(ffi::PyMemberDescr_Type) {
                return Err(not_a_slot());
            }
            // SAFETY: an object whose type is exactly member_descriptor is a PyMemberDescrObject, and its
            // d_member points at the PyMemberDef of the class that defines the slot, alive with the class.
            let (member, owner) = unsafe {
                let descriptor = descriptor.as_ptr().cast::<ffi::PyMemberDescrObject>();
                (*(*descriptor).d_member, (*descriptor).d_common.d_type)
            };
            if owner != class.as_type_ptr() || member.type_code != ffi::Py_T_OBJECT_EX || member.offset <= 0 {
                return Err(not_a_slot());
            }
            *offset = member.offset;
        }
        Ok(SlotReader { class: class.clone().unbind(), offsets })
    }

    /// The fields of `object` when its type is exactly the class (None otherwise); a field never set is None.
    pub fn read<'py>(&self, object: &Bound<'py, PyAny>) -> Option<[Option<Bound<'py, PyAny>>; N]> {
        if object.get_type().as_ptr() != self.class.as_ptr() {
            return None;
        }
        let base = object.as_ptr().cast::<u8>();
        // SAFETY: `object` is exactly of the class the offsets were read from, so each offset is inside the
        // object and holds a `PyObject*` or NULL (an object slot, `Py_T_OBJECT_EX`); the GIL is held, and
        // each value found gets a new reference.
        Some(self.offsets.map(|offset| unsafe {
            let value = *base.offset(offset).cast::<*mut ffi::PyObject>();
            Bound::from_borrowed_ptr_or_opt(object.py(), value)
        }))
    }
}

/// The instance `__dict__` of `object` (made if it has none yet), or None when its type gives it none.
pub fn instance_dict<'py>(object: &Bound<'py, PyAny>) -> Option<Bound<'py, PyDict>> {
    // SAFETY: PyObject_GenericGetDict returns a new reference to the dict, or NULL with an exception set
    // (a type without instance dicts); the second argument is unused by CPython.
    let dict = unsafe { ffi::PyObject_GenericGetDict(object.as_ptr(), std::ptr::null_mut()) };
    // SAFETY: a new reference or NULL, as above.
    match unsafe { Bound::from_owned_ptr_or_err(object.py(), dict) } {
        Ok(dict) => dict.cast_into::<PyDict>().ok(),
        Err(_) => None,
    }
}

#[cfg(not(Py_3_13))]
extern "C" {
    /// CPython's `getattr(object, name, None)` before 3.13 made it public as `PyObject_GetOptionalAttr`:
    /// 1 and a new reference when found, 0 when not (no exception set), -1 with an exception set.
    fn _PyObject_LookupAttr(object: *mut ffi::PyObject, name: *mut ffi::PyObject, found: *mut *mut ffi::PyObject) -> std::ffi::c_int;
}

/// `object.name`, or None when reading it raises, as `getattr(object, name, None)` reads it: a missing
/// attribute of a type with the default attribute lookup (a str, a dict, most classes) is None without an
/// AttributeError made, formatted and discarded, which costs some 900 ns where this lookup costs 50.
pub fn optional_attr<'py>(object: &Bound<'py, PyAny>, name: &Bound<'py, PyString>) -> Option<Bound<'py, PyAny>> {
    let mut found: *mut ffi::PyObject = std::ptr::null_mut();
    // SAFETY: `object` and `name` are live (name a str), the GIL is held, and `found` is a valid out
    // pointer; the call leaves a new reference in it when it returns 1, and NULL otherwise.
    #[cfg(Py_3_13)]
    let outcome = unsafe { ffi::PyObject_GetOptionalAttr(object.as_ptr(), name.as_ptr(), &mut found) };
    // SAFETY: as above; the function is exported by every CPython this builds for below 3.13.
    #[cfg(not(Py_3_13))]
    let outcome = unsafe { _PyObject_LookupAttr(object.as_ptr(), name.as_ptr(), &mut found) };
    if outcome < 0 {
        // Any other error (a property that raised) counts as no attribute, as with `getattr(...).ok()`.
        drop(PyErr::fetch(object.py()));
        return None;
    }
    // SAFETY: a new reference when found, NULL otherwise.
    unsafe { Bound::from_owned_ptr_or_opt(object.py(), found) }
}

/// `str(value)` of an exact `uuid.UUID`, made from its `int` slot rather than by `UUID.__str__`'s Python
/// code. None for any other value (a subclass may override `__str__`), and for a UUID whose `int` was set
/// past UUID's checks to something other than an int from 0 to below 2**128.
pub fn uuid_text(value: &Bound<'_, PyAny>) -> Option<UuidText> {
    static UUID_INT: PyOnceLock<Option<SlotReader<1>>> = PyOnceLock::new();
    let py = value.py();
    let reader = UUID_INT
        .get_or_init(py, || {
            let class = py.import("uuid").ok()?.getattr("UUID").ok()?.cast_into::<PyType>().ok()?;
            SlotReader::new(&class, ["int"]).ok()
        })
        .as_ref()?;
    let [number] = reader.read(value)?;
    let number = number?;
    let number = match int_digits(&number) {
        Some(digits) => u128_of_digits(digits)?,
        None => number.extract::<u128>().ok()?,
    };
    let digits = crate::simd::hex_digits(number);
    let mut text = [b'-'; 36];
    text[..8].copy_from_slice(&digits[..8]);
    text[9..13].copy_from_slice(&digits[8..12]);
    text[14..18].copy_from_slice(&digits[12..16]);
    text[19..23].copy_from_slice(&digits[16..20]);
    text[24..].copy_from_slice(&digits[20..]);
    Some(UuidText(text))
}

/// The value of an int's 30-bit digits (least significant first), None from 2**128 up.
fn u128_of_digits(digits: &[u32]) -> Option<u128> {
    let mut number: u128 = 0;
    for &digit in digits.iter().rev() {
        // Shifting by 30 keeps every bit only while the top 30 are clear.
        if number >> 98 != 0 {
            return None;
        }
        number = number << 30 | u128::from(digit);
    }
    Some(number)
}

/// A UUID's 36 characters: 8-4-4-4-12 lowercase hex digits.
pub struct UuidText([u8; 36]);

impl UuidText {
    pub fn as_str(&self) -> &str {
        // SAFETY: `uuid_text` fills all 36 bytes with ASCII hex digits and dashes, which are UTF-8.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }
}

/// The str's UTF-8 text, as `PyString::to_str` gives it (an error for a str with lone surrogates). A str of
/// ASCII characters only is read in place: a flag test where `PyUnicode_AsUTF8AndSize` is a call.
pub fn str_text<'a>(text: &'a Bound<'_, PyString>) -> PyResult<&'a str> {
    #[cfg(not(Py_3_14))]
    {
        let object = text.as_ptr();
        // SAFETY: `object` is a live str, borrowed for 'a with the GIL held. A compact ASCII str holds its
        // `PyUnicode_GET_LENGTH` characters as that many bytes below 0x80 (so valid UTF-8) right after its
        // header, and a str never changes while it lives.
        unsafe {
            if ffi::PyUnicode_IS_COMPACT_ASCII(object) != 0 {
                let bytes =
                    std::slice::from_raw_parts(ffi::PyUnicode_DATA(object).cast::<u8>(), ffi::PyUnicode_GET_LENGTH(object) as usize);
                return Ok(std::str::from_utf8_unchecked(bytes));
            }
        }
    }
    // Other strs, and Pythons whose str layout the read above does not know.
    text.to_str()
}

/// An exact `int` from 0 to below 2**60 read in place: a load or two where `PyLong_AsUnsignedLongLong` is a
/// call. None for any other value (a negative or larger int, a subclass such as bool), and on Pythons whose
/// int layout this does not know.
pub fn small_int(value: &Bound<'_, PyAny>) -> Option<u64> {
    match int_digits(value)? {
        [] => Some(0),
        [low] => Some(u64::from(*low)),
        [low, high] => Some(u64::from(*low) | u64::from(*high) << 30),
        _ => None,
    }
}

/// The 30-bit digits (least significant first) of an exact, non-negative `int`, read in place. None for any
/// other value, and on Pythons whose int layout this does not know.
#[cfg_attr(Py_3_12, allow(unused_variables))]
fn int_digits<'a>(value: &'a Bound<'_, PyAny>) -> Option<&'a [u32]> {
    #[cfg(not(Py_3_12))]
    {
        // The layout read below, with CPython's usual 30-bit digits (a build may choose 15).
        static THIRTY_BIT_DIGITS: PyOnceLock<bool> = PyOnceLock::new();
        let py = value.py();
        let thirty_bit_digits = *THIRTY_BIT_DIGITS.get_or_init(py, || {
            let info = py.import("sys").and_then(|sys| sys.getattr("int_info"));
            let field = |name: &str| info.as_ref().ok().and_then(|info| info.getattr(name).ok()?.extract::<u32>().ok());
            field("bits_per_digit") == Some(30) && field("sizeof_digit") == Some(4)
        });
        if thirty_bit_digits && value.is_exact_instance_of::<PyInt>() {
            let object = value.as_ptr();
            // SAFETY: before 3.12 an int is a PyVarObject whose `ob_size` is its count of digits (negative
            // for a negative int), the digits (u32, 30 bits used) right after that header; `object` is a
            // live exact int, borrowed for 'a with the GIL held, and ints never change.
            unsafe {
                let count = usize::try_from(ffi::Py_SIZE(object)).ok()?;
                let digits = object.cast::<u8>().add(std::mem::size_of::<ffi::PyVarObject>()).cast::<u32>();
                return Some(std::slice::from_raw_parts(digits, count));
            }
        }
    }
    None
}
