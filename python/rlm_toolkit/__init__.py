"""rlm_toolkit: fast, dependable event hooks (callbacks) for LLM apps, with a Rust core."""

from .errors import (
    BackendError,
    CallbackConfigError,
    LLMCallError,
    LogClosedError,
    LogFileError,
    RLMToolkitError,
)
from .rlm import RLM, RunResult
from .types import LLMResponse, Usage

__all__ = [
    "RLM",
    "BackendError",
    "CallbackConfigError",
    "LLMCallError",
    "LLMResponse",
    "LogClosedError",
    "LogFileError",
    "RLMToolkitError",
    "RunResult",
    "Usage",
]
