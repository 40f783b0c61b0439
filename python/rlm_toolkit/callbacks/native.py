"""Callbacks whose events are handled by a backend core (Rust by default) without calling Python.

When a manager registers one of these and the hook is not overridden, the event goes straight to the core.
A subclass that overrides a hook is called in Python for that hook; ``super().on_x(...)`` reaches the core.
"""

from __future__ import annotations

import math
import os
import string
from typing import Any, Literal, TypeVar, cast

from .. import _backend
from ..errors import CallbackConfigError, LogFileError, MetricsSnapshotError
from ..events import EVENTS, EventSpec
from ..pricing import PRICES_PER_MILLION, ModelPrice
from . import _lifecycle
from ._pickling import PickledByConfiguration
from .base import BaseCallback
from .metrics_types import MetricsReport
from .snapshot import MetricsSnapshot


class NativeSinkCallback(PickledByConfiguration, BaseCallback):
    """A callback whose events a backend core records. It pickles by configuration (see
    ``rlm_toolkit.callbacks._pickling``): a copy unpickled in a worker has the same options and a core of its
    own, with nothing recorded."""

    core: Any
    """The backend object that records events (``MetricsSink`` or ``JsonlSink`` of the chosen backend)."""
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


def _checked_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CallbackConfigError(f"{name} must be an int from {low:,} to {high:,}, got {value!r}")
    return value


def _checked_seconds(name: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise CallbackConfigError(f"{name} must be a number of seconds from {low:g} to {high:g}, got {value!r}")
    return float(value)


MAX_OPEN_RUNS = 10_000_000
MAX_FIELD_CHARS = 2**30
MAX_BUFFER_BYTES = 64 * 2**20
MAX_PENDING_BYTES = 2**30
MAX_FLUSH_INTERVAL = 86_400.0
MAX_CLOSE_TIMEOUT = 3_600.0


def _is_price_figure(figure: object) -> bool:
    return (isinstance(figure, (int, float)) and not isinstance(figure, bool) and math.isfinite(figure)
            and figure >= 0)


class MetricsCallback(NativeSinkCallback):
    """Aggregates calls, tokens, latency percentiles, cost, errors and retries with bounded memory.

    Pickled (to send it to a worker process), it travels as its options (``prices``, ``max_open_runs``,
    ``backend``): the copy starts with zero counts and no open runs.
    """

    def __init__(self, *, prices: dict[str, ModelPrice] | None = None, max_open_runs: int = 10_000,
                 backend: _backend.BackendName | None = None) -> None:
        _checked_int("max_open_runs", max_open_runs, 1, MAX_OPEN_RUNS)
        table = PRICES_PER_MILLION if prices is None else prices
        for name, price in table.items():
            if (not isinstance(price, (tuple, list)) or len(price) not in (2, 3)
                    or not all(_is_price_figure(figure) for figure in price)):
                raise CallbackConfigError(
                    f"the price of {name!r} must be (prompt, completion) or (prompt, completion, cached prompt) "
                    f"in USD per million tokens, each a finite number >= 0, got {price!r}"
                )
        self._keep_argument("backend", _backend.resolve(backend))
        self.core = _backend.load(backend).MetricsSink(
            [(name, float(price[0]), float(price[1])) for name, price in table.items()], max_open_runs,
            [(name, float(price[2])) for name, price in table.items() if len(price) == 3],
        )
        self.native_events = frozenset(spec.name for spec in EVENTS)

    def get_metrics(self) -> MetricsReport:
        """The figures so far: totals, latency (avg/min/max/p50/p95/p99 in ms), cost, counters and ``by_model``."""
        return cast(MetricsReport, self.core.snapshot())

    def snapshot(self) -> MetricsSnapshot:
        """Everything counted so far as a ``MetricsSnapshot``: to pickle, save as JSON or merge with the
        snapshots of other processes."""
        return MetricsSnapshot._of_state(self.core.state())

    def merge(self, snapshot: MetricsSnapshot) -> None:
        """Adds ``snapshot`` in, as if this callback had seen its events too (e.g. on a driver gathering its
        workers' figures). A snapshot that priced one of this callback's models differently raises
        ``MetricsSnapshotError`` and changes nothing."""
        if not isinstance(snapshot, MetricsSnapshot):
            raise TypeError(f"MetricsCallback.merge() takes a MetricsSnapshot, not {type(snapshot).__name__}")
        try:
            self.core.merge_state(snapshot._state())
        except ValueError as error:
            raise MetricsSnapshotError(str(error)) from None

    def reset(self) -> None:
        self.core.reset()


WORKER_ENV = "RLM_TOOLKIT_WORKER"
"""The environment variable that names a worker, for the ``{worker}`` placeholder of a log path."""


def expand_log_path(path_parameter: str, template: str) -> str:
    """``template`` with ``{pid}`` replaced by this process's id and ``{worker}`` by ``$RLM_TOOLKIT_WORKER`` (or
    the process id when it is unset or empty); ``{{`` and ``}}`` stand for literal braces. Any other brace is
    refused with ``CallbackConfigError`` (``path_parameter`` names the path in the message)."""
    advice = (
        "the placeholders are {pid} (the process id) and {worker} "
        f"(${WORKER_ENV}, else the process id); write {{{{ or }}}} for a literal brace"
    )
    try:
        pieces = list(string.Formatter().parse(template))
    except ValueError as exc:  # a lone { or }
        raise CallbackConfigError(f"{path_parameter} {template!r}: {exc}; {advice}") from None
    expanded: list[str] = []
    for literal, field, format_spec, conversion in pieces:
        expanded.append(literal)
        if field is None:
            continue
        if field not in ("pid", "worker") or format_spec or conversion:
            written = "{" + field + (f"!{conversion}" if conversion else "") + (f":{format_spec}" if format_spec else "")
            raise CallbackConfigError(
                f"{path_parameter} {template!r} has {written}}}, which is no placeholder; {advice}")
        expanded.append(_worker_label() if field == "worker" else str(os.getpid()))
    return "".join(expanded)


def _worker_label() -> str:
    label = os.environ.get(WORKER_ENV) or str(os.getpid())
    if any(separator and separator in label for separator in (os.sep, os.altsep, "\0")):
        raise CallbackConfigError(
            f"${WORKER_ENV} {label!r} cannot be part of a file name; give a label without '/' such as 'worker-1'")
    return label


_LogT = TypeVar("_LogT", bound="_JsonlLogFile")


class _JsonlLogFile(PickledByConfiguration):
    """A JSONL log file written by a JsonlSink of the chosen backend: the path checks, the writer's options,
    ``flush()``/``close()`` and the exit, fork and SIGTERM flushes, shared by ``FileLogCallback`` and
    ``FileCallback``."""

    log_path: str
    """The log's absolute path."""
    core: Any
    """The backend's ``JsonlSink`` that writes the file."""

    def _open_log(
        self,
        path_parameter: str,
        given_path: str | os.PathLike[str],
        *,
        include_prompts: bool = True,
        include_responses: bool = True,
        max_field_chars: int = 1_000_000,
        flush_interval: float,
        buffer_bytes: int,
        max_pending_bytes: int,
        on_full: Literal["block", "drop"],
        close_timeout: float,
        backend: _backend.BackendName | None,
    ) -> str:
        """Checks the options (``path_parameter`` names the path in messages), opens the file and tracks it.
        Returns the path with its placeholders expanded (``log_path`` is its absolute form)."""
        _checked_int("max_field_chars", max_field_chars, 16, MAX_FIELD_CHARS)
        flush_interval = _checked_seconds("flush_interval", flush_interval, 0.001, MAX_FLUSH_INTERVAL)
        _checked_int("buffer_bytes", buffer_bytes, 1, MAX_BUFFER_BYTES)
        _checked_int("max_pending_bytes", max_pending_bytes, buffer_bytes, MAX_PENDING_BYTES)
        close_timeout = _checked_seconds("close_timeout", close_timeout, 0.001, MAX_CLOSE_TIMEOUT)
        if on_full not in ("block", "drop"):
            raise CallbackConfigError(f"on_full must be 'block' or 'drop', got {on_full!r}")
        template = os.fspath(given_path)
        if template in ("", b""):
            raise LogFileError(f"{path_parameter} is empty; give a file path such as 'rlm.jsonl'")
        expanded = expand_log_path(path_parameter, template)
        self._keep_argument(path_parameter, os.path.abspath(template))
        self._keep_argument("backend", _backend.resolve(backend))
        path = os.path.abspath(expanded)
        if os.path.isdir(path):
            raise LogFileError(
                f"{path_parameter} {path!r} is a directory; give a file path such as {path}/rlm.jsonl")
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        except OSError as exc:
            raise LogFileError(
                f"cannot create the folder for {path_parameter} {path!r}: {exc.strerror or exc}") from exc
        self.log_path = path
        self.core = _backend.load(backend).JsonlSink(
            path, include_prompts, include_responses, max_field_chars,
            flush_interval, buffer_bytes, max_pending_bytes, on_full == "block", close_timeout,
        )
        _lifecycle.track(self)
        return expanded

    def flush(self, timeout: float | None = None) -> None:
        """Write everything accepted so far to the file; raises LogFileError if a write failed.

        With ``timeout`` (seconds) it waits at most that long, whatever holds the file (a FIFO nobody reads,
        a stuck writer), then raises LogFileError saying how many lines still wait; they stay queued.
        Safe to call from a signal handler."""
        if timeout is None:
            self.core.flush()
        else:
            self.core.flush(_checked_seconds("timeout", timeout, 0.0, MAX_CLOSE_TIMEOUT))

    def close(self) -> None:
        """Flush and close the file, waiting at most ``close_timeout`` seconds. Idempotent; events sent to
        this callback after it raise LogClosedError (through a manager they are reported, not raised).

        Raises LogFileError for a write that failed since the last ``flush()``, or when the file did not
        accept the last lines in time: those are counted in ``lost_events`` and the message says how many."""
        self.core.close()

    @property
    def closed(self) -> bool:
        return bool(self.core.closed)

    @property
    def dropped_events(self) -> int:
        """Events dropped because the queue was full (``on_full="drop"``)."""
        return int(self.core.dropped)

    @property
    def lost_events(self) -> int:
        """Events accepted but not written: a write that failed (disk full) or a ``close()`` that gave up."""
        return int(self.core.lost)

    def __enter__(self: _LogT) -> _LogT:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class FileLogCallback(_JsonlLogFile, NativeSinkCallback):
    """Writes one JSON object per event to ``log_path`` (JSON Lines), from a writer thread of its own.

    Records hold ``ts`` (ISO 8601 UTC), ``event``, ``run_id``, ``parent_run_id`` and the event's fields
    (see ``rlm_toolkit.events``). The file is appended to, created with mode 0600, parent folders made; an
    existing file that is not a JSONL log is refused (``NotAJsonlLogError``) and left untouched.
    Everything written is flushed at interpreter exit; call ``flush()`` to force it earlier.

    ``include_prompts`` and ``include_responses`` decide which conversation text the records hold, field by
    field as ``rlm_toolkit.events.CONTENT_FIELDS`` lists: prompts are the ``llm_start``/``run_start``
    prompt, the ``memory_recall`` query and ``memory_store`` content of role ``user``; responses are the
    ``llm_end`` response, streamed tokens, the ``run_end`` answer and ``memory_store`` content of role
    ``assistant``. Text that may quote either side (tool inputs and outputs, recalled messages, memory
    content of other roles, exception messages) is written only when both are on. With both off, no text
    of the conversation is written: a withheld field is left out, an ``error`` is ``{"type": ...}`` alone.
    Extra keywords of an event (``role=``, ``tool_name=``, your own) are written as passed.
    ``include_tokens`` records ``llm_new_token`` events at all (and makes LLM calls stream).

    Accepted ranges: ``max_field_chars`` 16 to 2**30; ``flush_interval`` 0.001 to 86,400 s;
    ``buffer_bytes`` 1 to 64 MiB; ``max_pending_bytes`` ``buffer_bytes`` to 1 GiB; ``close_timeout``
    (how long ``close()`` waits for the file before it gives up on the unwritten lines) 0.001 to 3,600 s.

    ``log_path`` may hold the placeholders ``{pid}`` (the id of the process that builds the callback) and
    ``{worker}`` (``$RLM_TOOLKIT_WORKER``, or the process id when it is unset or empty), expanded when the
    callback is built; ``{{`` and ``}}`` are literal braces, and any other brace is refused with
    ``CallbackConfigError``. Pickled (to send it to a worker process), the callback travels as its options,
    with ``log_path`` as the unexpanded template made absolute: the worker builds a callback of its own, so
    ``{pid}`` gives each worker its own file, and a path without placeholders has every worker append to the
    same file (each batch is appended under a file lock, so lines stay whole). Lines buffered here stay here,
    and are written once, by this process.
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
        close_timeout: float = 5.0,
        backend: _backend.BackendName | None = None,
    ) -> None:
        self.native_events = frozenset(
            spec.name for spec in EVENTS if include_tokens or spec.name != "llm_new_token"
        )
        self.wants_token_stream = include_tokens
        self._open_log(
            "log_path", log_path, include_prompts=include_prompts, include_responses=include_responses,
            max_field_chars=max_field_chars, flush_interval=flush_interval, buffer_bytes=buffer_bytes,
            max_pending_bytes=max_pending_bytes, on_full=on_full, close_timeout=close_timeout, backend=backend,
        )
