"""Callbacks whose events are handled by a backend core (Rust by default) without calling Python.

When a manager registers one of these and the hook is not overridden, the event goes straight to the core.
A subclass that overrides a hook is called in Python for that hook; ``super().on_x(...)`` reaches the core.
"""

from __future__ import annotations

import atexit
import os
import weakref
from typing import Any, Literal

from .. import _backend
from ..errors import CallbackConfigError, LogFileError
from ..events import EVENTS, EventSpec
from ..pricing import PRICES_PER_MILLION
from .base import BaseCallback


class NativeSinkCallback(BaseCallback):
    core: Any
    """The backend object that records events (``Metrics`` or ``JsonlSink`` of the chosen backend)."""
    native_events: frozenset[str]
    """Events the core handles."""
    wants_token_stream: bool = False
    """Whether the core records streamed tokens, so LLM calls should stream when it is registered."""


def _forwarder(spec: EventSpec) -> Any:
    arity = len(spec.args)

    def hook(self: NativeSinkCallback, *args: Any, run_id: Any = None, parent_run_id: Any = None,
             model: str | None = None, timestamp: float | None = None, **extra: Any) -> None:
        if len(args) != arity:
            raise TypeError(f"{spec.hook}() takes {arity} positional arguments {spec.args}, got {len(args)}")
        if spec.name in self.native_events:
            self.core.handle(spec.name, args, run_id, parent_run_id, model, timestamp, extra or None)

    hook.__name__ = hook.__qualname__ = spec.hook
    hook.__doc__ = getattr(BaseCallback, spec.hook).__doc__
    return hook


for _spec in EVENTS:
    setattr(NativeSinkCallback, _spec.hook, _forwarder(_spec))


class MetricsCallback(NativeSinkCallback):
    """Aggregates calls, tokens, latency percentiles, cost, errors and retries with bounded memory."""

    def __init__(self, *, prices: dict[str, tuple[float, float]] | None = None, max_open_runs: int = 10_000,
                 backend: _backend.BackendName | None = None) -> None:
        if max_open_runs < 1:
            raise CallbackConfigError(f"max_open_runs must be at least 1, got {max_open_runs}")
        table = PRICES_PER_MILLION if prices is None else prices
        self.core = _backend.load(backend).Metrics(
            [(name, float(p_in), float(p_out)) for name, (p_in, p_out) in table.items()], max_open_runs
        )
        self.native_events = frozenset(spec.name for spec in EVENTS)

    def get_metrics(self) -> dict[str, Any]:
        """A snapshot: totals, latency (avg/min/max/p50/p95/p99 in ms), cost, counters and ``by_model``."""
        return self.core.snapshot()

    def reset(self) -> None:
        self.core.reset()


_open_logs: "weakref.WeakSet[FileLogCallback]" = weakref.WeakSet()


@atexit.register
def _close_open_logs() -> None:
    for log in list(_open_logs):
        log.close()


def _reopen_logs_in_child() -> None:
    for log in list(_open_logs):
        if not log.closed:
            log.core.reopen_after_fork()


os.register_at_fork(after_in_child=_reopen_logs_in_child)


class FileLogCallback(NativeSinkCallback):
    """Writes one JSON object per event to ``log_path`` (JSON Lines), from a writer thread of its own.

    Records hold ``ts`` (ISO 8601 UTC), ``event``, ``run_id``, ``parent_run_id`` and the event's fields
    (see ``rlm_toolkit.events``). The file is appended to, created with mode 0600, parent folders made.
    Everything written is flushed at interpreter exit; call ``flush()`` to force it earlier.
    """

    def __init__(
        self,
        log_path: str | os.PathLike[str],
        include_prompts: bool = True,
        include_responses: bool = True,
        *,
        include_tokens: bool = False,
        max_field_chars: int = 1_000_000,
        flush_interval: float = 1.0,
        buffer_bytes: int = 64 * 1024,
        max_pending_bytes: int = 4 * 1024 * 1024,
        on_full: Literal["block", "drop"] = "block",
        backend: _backend.BackendName | None = None,
    ) -> None:
        if max_field_chars < 16:
            raise CallbackConfigError(f"max_field_chars must be at least 16, got {max_field_chars}")
        if flush_interval <= 0:
            raise CallbackConfigError(f"flush_interval must be positive seconds, got {flush_interval}")
        if buffer_bytes < 1 or max_pending_bytes < buffer_bytes:
            raise CallbackConfigError("buffer_bytes must be positive and max_pending_bytes at least buffer_bytes")
        if on_full not in ("block", "drop"):
            raise CallbackConfigError(f"on_full must be 'block' or 'drop', got {on_full!r}")
        path = os.path.abspath(os.fspath(log_path))
        if os.path.isdir(path):
            raise LogFileError(f"log_path {path!r} is a directory; give a file path such as {path}/rlm.jsonl")
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        except OSError as exc:
            raise LogFileError(f"cannot create the folder for log_path {path!r}: {exc.strerror or exc}") from exc
        self.log_path = path
        self.core = _backend.load(backend).JsonlSink(
            path, include_prompts, include_responses, max_field_chars,
            flush_interval, buffer_bytes, max_pending_bytes, on_full == "block",
        )
        self.native_events = frozenset(
            spec.name for spec in EVENTS if include_tokens or spec.name != "llm_new_token"
        )
        self.wants_token_stream = include_tokens
        _open_logs.add(self)

    def flush(self) -> None:
        """Write everything accepted so far to the file; raises LogFileError if a write failed."""
        self.core.flush()

    def close(self) -> None:
        """Flush and close the file. Idempotent; events after it raise LogClosedError."""
        self.core.close()

    @property
    def closed(self) -> bool:
        return self.core.closed

    def __enter__(self) -> "FileLogCallback":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
