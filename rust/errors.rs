//! The Python exception types the core raises. They are defined once, in `rlm_toolkit.errors`, and
//! imported from there on first use.

pyo3::import_exception!(rlm_toolkit.errors, CallbackConfigError);
pyo3::import_exception!(rlm_toolkit.errors, InvalidEventError);
pyo3::import_exception!(rlm_toolkit.errors, LogClosedError);
pyo3::import_exception!(rlm_toolkit.errors, LogFileError);
pyo3::import_exception!(rlm_toolkit.errors, NotAJsonlLogError);
