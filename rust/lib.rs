//! rlm_toolkit's Rust core. The pure core builds and is tested by `cargo test` without Python:
//! `events` (generated from the catalogue), `metrics`, `escape` and `simd` (JSON encoding), `time`,
//! `redact`, `writer` (the JSONL writer thread) and `replay` with `json_read` (logs back into metrics). The `python` feature
//! adds the PyO3 layer:
//! `record` and `pyvalue` (events to JSONL records), `sinks`, `dispatch`, `fastcall` (the FFI of calls),
//! `pyfields` (the FFI of reading value types' fields) and
//! `module` (the `#[pymodule]`).

pub mod escape;
pub mod events;
pub mod histogram;
pub mod json_check;
pub mod json_read;
pub mod log_file;
pub mod metrics;
pub mod redact;
pub mod replay;
pub mod simd;
pub mod time;
pub mod writer;

#[cfg(feature = "python")]
mod dispatch;
#[cfg(feature = "python")]
mod errors;
#[cfg(feature = "python")]
mod fastcall;
#[cfg(feature = "python")]
mod module;
#[cfg(feature = "python")]
mod pyfields;
#[cfg(feature = "python")]
mod pyvalue;
#[cfg(feature = "python")]
mod record;
#[cfg(feature = "python")]
mod sinks;
