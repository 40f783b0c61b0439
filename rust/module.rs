//! The `#[pymodule]` `rlm_toolkit._core`: the classes of `sinks` and `dispatch`, the event catalogue, the
//! clock and redaction.

use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};

use crate::dispatch::PyDispatcher;
use crate::events::EVENTS;
use crate::sinks::{PyJsonlSink, PyMetricsSink};

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
        return Ok(crate::pyvalue::redact_surrogate_text(&text, &secrets)?.unwrap_or(text));
    };
    Ok(match crate::redact::redact(utf8, &secrets) {
        std::borrow::Cow::Borrowed(_) => text,
        std::borrow::Cow::Owned(redacted) => PyString::new(text.py(), &redacted),
    })
}

#[pyfunction(name = "now")]
fn py_now() -> f64 {
    crate::time::now()
}

#[pymodule]
fn _core(module: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = module.py();
    module.add_class::<PyDispatcher>()?;
    module.add_class::<PyMetricsSink>()?;
    module.add_class::<PyJsonlSink>()?;
    module.add_function(wrap_pyfunction!(py_now, module)?)?;
    module.add_function(wrap_pyfunction!(add_secret, module)?)?;
    module.add_function(wrap_pyfunction!(redact, module)?)?;
    let events: Vec<Bound<'_, PyTuple>> = EVENTS
        .iter()
        .map(|spec| (spec.name, PyTuple::new(py, spec.args)?, PyTuple::new(py, spec.fields)?, spec.has_model).into_pyobject(py))
        .collect::<PyResult<_>>()?;
    module.add("EVENT_CATALOGUE", PyTuple::new(py, events)?)?;
    Ok(())
}
