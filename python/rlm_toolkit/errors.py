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


class RLMConfigError(RLMToolkitError, ValueError):
    """``RLM.from_openai`` (or ``batch``) was given a bad option."""


class MissingAPIKeyError(RLMConfigError):
    """No API key and no base URL: there is nothing to talk to."""


class ToolRoundsExceededError(RLMToolkitError):
    """The model still asked for tools after ``max_tool_rounds`` rounds of tool calls."""


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


class NotAJsonlLogError(LogFileError):
    """``log_path`` names an existing file that is not a JSONL log (its first line is not a JSON object).

    The file is left untouched; give a new path or move the file away."""


class MalformedResponseError(LLMCallError):
    """The server answered, but not with a usable chat completion: a body that is not JSON (an HTML page, a cut
    JSON text), a completion without choices, a stream event that is not JSON, or a stream cut before its end.

    ``__cause__`` holds the ``openai.APIResponseValidationError`` of the last attempt.
    """


class InvalidEventError(RLMToolkitError, ValueError):
    """An event was fired with a value no record can hold, such as a timestamp that is not a finite number of
    epoch seconds from 1970 to year 9999. The event is not recorded and no callback sees it."""


class InvalidSecretError(RLMToolkitError, ValueError):
    """``register_secret`` was given a str with lone surrogates (no UTF-8 form, so no client can send it and
    the Rust core cannot hold it): pass the secret as the text the server expects."""


class MissingExtraError(RLMConfigError, ImportError):
    """An option needs a package of one of rlm_toolkit's extras (such as tqdm for ``progress=True``) that is
    not installed; the message gives the ``pip install`` command."""


class CallbackWarning(RLMToolkitError, UserWarning):
    """A callback registered with a method that will not be called as its author likely meant: a method named
    like a hook that matches no event (a misspelling, so it is never called), or a hook whose parameters
    take none of its event's arguments (it is called without them)."""


class MetricsSnapshotError(RLMToolkitError, ValueError):
    """A metrics snapshot that cannot be read or merged: JSON that is not a snapshot, one written by another
    snapshot version or histogram layout, or snapshots that priced the same model differently (merge
    snapshots made with the same price table and rlm_toolkit version)."""


class NotPicklableError(RLMToolkitError, TypeError):
    """An object cannot be pickled to be sent to another process (a worker): a tool or token function that is
    a lambda or is defined inside another function (pickle sends functions by name), or a ``ConsoleCallback``
    writing to a stream of this process. The message says what to pass instead."""


class LogReadError(RLMToolkitError, OSError):
    """A log given to ``replay_logs`` (``rlm-toolkit report``) cannot be read: the path does not exist, cannot
    be opened, or is a folder without ``*.jsonl`` files. The message names the path."""
