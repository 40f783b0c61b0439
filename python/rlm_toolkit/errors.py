"""Exception types raised by rlm_toolkit. Each message says what to do about it."""

from __future__ import annotations


class RLMToolkitError(Exception):
    """Base class of every error rlm_toolkit raises on purpose."""


class BackendError(RLMToolkitError, ImportError):
    """The requested callbacks backend is unknown or its native module is missing."""


class CallbackConfigError(RLMToolkitError, ValueError):
    """A callback or manager was constructed with a bad option."""


class LogFileError(RLMToolkitError, OSError):
    """The JSONL log file could not be opened or written."""


class LogClosedError(RLMToolkitError):
    """An event reached a FileLogCallback after ``close()``."""


class MemoryConfigError(RLMToolkitError, ValueError):
    """A memory was constructed with a bad option."""


class ToolDefinitionError(RLMToolkitError, TypeError):
    """A function cannot be turned into a tool (bad name, unsupported parameter kind or type hint)."""


class ToolCallError(RLMToolkitError):
    """The model's tool call could not be run: unknown tool name, or arguments that are not valid JSON or do
    not fit the tool's parameters. The run goes on; the model is told the message."""


class LLMCallError(RLMToolkitError):
    """An LLM call failed for good (after retries, or with an error that is not retried).

    ``__cause__`` holds the last error from the ``openai`` client; ``attempts`` how many calls were made.
    """

    def __init__(self, message: str, *, attempts: int = 1) -> None:
        super().__init__(message)
        self.attempts = attempts
