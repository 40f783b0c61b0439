"""rlm_toolkit: fast, dependable event hooks (callbacks) for LLM apps, with a Rust core."""

from typing import TYPE_CHECKING, Any

from .errors import (
    BackendError,
    CallbackConfigError,
    CallbackWarning,
    InvalidEventError,
    InvalidSecretError,
    LLMCallError,
    LogClosedError,
    LogFileError,
    LogReadError,
    MalformedResponseError,
    MemoryConfigError,
    MetricsSnapshotError,
    MissingAPIKeyError,
    MissingExtraError,
    NotAJsonlLogError,
    NotPicklableError,
    RLMConfigError,
    RLMToolkitError,
    ToolCallError,
    ToolDefinitionError,
    ToolRoundsExceededError,
)
from .types import LLMResponse, Usage

if TYPE_CHECKING:
    from .rlm import RLM, RunResult, RunRow

    __version__: str

_LAZY = {"RLM", "RunResult", "RunRow"}
"""Imported on first use: they need ``openai``, which a job that only wants fast callbacks need not load."""

def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import rlm

        return getattr(rlm, name)
    if name == "__version__":
        # Read on first use: importlib.metadata costs about 10 ms at import.
        from importlib.metadata import version

        return version("rlm_toolkit")
    raise AttributeError(f"module 'rlm_toolkit' has no attribute {name!r}")


__all__ = [
    "BackendError",
    "CallbackConfigError",
    "CallbackWarning",
    "InvalidEventError",
    "InvalidSecretError",
    "LLMCallError",
    "LLMResponse",
    "LogClosedError",
    "LogFileError",
    "LogReadError",
    "MalformedResponseError",
    "MemoryConfigError",
    "MetricsSnapshotError",
    "MissingAPIKeyError",
    "MissingExtraError",
    "NotAJsonlLogError",
    "NotPicklableError",
    "RLM",
    "RLMConfigError",
    "RLMToolkitError",
    "RunResult",
    "RunRow",
    "ToolCallError",
    "ToolDefinitionError",
    "ToolRoundsExceededError",
    "Usage",
    "__version__",
]
