//! rlm_toolkit's Rust core. `events`, `metrics` and `jsonl` are plain Rust, tested by `cargo test`
//! without Python; the `python` feature adds the PyO3 layer (`dispatch`, `pyjson`, `bindings`).

pub mod events;
pub mod jsonl;
pub mod writer;
pub mod metrics;
pub mod redact;

#[cfg(feature = "python")]
mod bindings;
#[cfg(feature = "python")]
mod dispatch;
#[cfg(feature = "python")]
mod errors;
#[cfg(feature = "python")]
mod pyjson;
