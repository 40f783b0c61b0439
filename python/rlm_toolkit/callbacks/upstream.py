"""The callbacks of upstream rlm-toolkit's ``rlm_toolkit.callbacks``, with the same names, arguments and output.

- ``LoggingCallback(logger=None)`` logs ``LLM Start: <first 100 characters of the prompt>...`` and
  ``LLM End: <first 100 characters of the answer>...`` at INFO, and ``LLM Error: <error>`` at ERROR, on the
  ``rlm_toolkit`` logger or the one given.
- ``FileCallback(file_path)`` appends one JSON object per event to ``file_path``:
  ``{"event": "start", "prompt": ..., "timestamp": ...}``, ``{"event": "end", "response": ...}``,
  ``{"event": "error", "error": ...}``, each followed by the hook's keywords; through ``FileLogCallback``'s
  buffered writer, so call ``flush()`` or ``close()`` to have the lines in the file at once.
- ``LLMEvent``: a plain record of one event.

Both callbacks take LLM errors through ``on_llm_error`` (failed LLM calls only, never tool errors) and, like
everything rlm_toolkit writes, redact secrets (``rlm_toolkit.secrets``) before any shortening.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from .. import _backend
from ..errors import LLMCallError
from ..events import CONTEXT_KEYWORDS, EVENTS
from ..secrets import _redacted_value, redact
from ._pickling import PickledByConfiguration
from .base import BaseCallback
from .native import _JsonlLogFile

_PREVIEW_CHARS = 100
"""How much of a prompt or answer ``LoggingCallback`` logs."""

_LEFT_OUT_WHEN_EMPTY = frozenset(CONTEXT_KEYWORDS).union(*(spec.keywords for spec in EVENTS))
"""The keywords every hook of an event receives, given or not: a line leaves them out when they are None
(and ``tags``/``metadata`` when empty, so a run without them writes upstream's lines)."""


def _is_empty(value: Any) -> bool:
    return value is None or (type(value) in (list, dict) and not value)


def _text(value: Any) -> str:
    return str.__str__(value) if isinstance(value, str) else str(value)


class LoggingCallback(PickledByConfiguration, BaseCallback):
    """Logs each LLM call's start and end at INFO and its failure at ERROR, as upstream rlm-toolkit does.

    Messages: ``LLM Start: <prompt[:100]>...``, ``LLM End: <answer[:100]>...``, ``LLM Error: <error>``. The
    text is redacted before it is cut. ``logger`` defaults to the ``rlm_toolkit`` logger. Pickled, it travels
    as its ``logger`` argument (a logger pickles as its name: the worker's logger of that name).
    """

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter[Any] | None = None) -> None:
        self.logger = logger if logger is not None else logging.getLogger("rlm_toolkit")

    def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
        if self.logger.isEnabledFor(logging.INFO):
            self.logger.info("LLM Start: %s...", redact(_text(prompt))[:_PREVIEW_CHARS])

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        if self.logger.isEnabledFor(logging.INFO):
            self.logger.info("LLM End: %s...", redact(_text(response))[:_PREVIEW_CHARS])

    def on_llm_error(self, error: LLMCallError, **kwargs: Any) -> None:
        if self.logger.isEnabledFor(logging.ERROR):
            self.logger.error("LLM Error: %s", redact(_text(error)))


def _iso_utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_NOT_JSON = object()


def _as_json(value: Any) -> Any:
    """``value`` redacted, or ``_NOT_JSON`` when JSON cannot hold it (a set, an object, NaN, a cycle)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return _NOT_JSON
    return _redacted_value(value)


class FileCallback(_JsonlLogFile, BaseCallback):
    """Appends one JSON line per LLM event to ``file_path``, in upstream rlm-toolkit's record shape.

    ``{"event": "start", "prompt": PROMPT, "timestamp": TS, ...}`` before a call, ``{"event": "end",
    "response": ANSWER, ...}`` after it and ``{"event": "error", "error": MESSAGE, ...}`` when it fails for
    good (tool errors are not written). ``timestamp`` is ISO 8601 UTC (``2025-01-31T12:00:00.123456Z``).
    Then come the hook's keywords that JSON can hold, as passed: ``run_id``, ``parent_run_id``, ``model``,
    ``tags``, ``metadata`` and ``ttft_ms`` (each left out when None, or an empty list or dict) and any extras; a keyword named like one of the fields before it is left out.
    Text is redacted (``rlm_toolkit.secrets``); the JSON is ASCII (``json.dumps`` defaults).

    The lines go through the same buffered writer as ``FileLogCallback``'s (``backend`` chooses it): a line
    is in the file within ``flush_interval`` seconds, at ``flush()``, ``close()`` (or the end of a ``with``
    block), and at interpreter exit, in a forked child's exit and on SIGTERM, not when the hook returns.
    Each batch is appended under a file lock, so processes may share the file; lines stay whole. The file is
    created with mode 0600, parent folders made; an existing file must be a JSONL log (a log written by
    this callback is one) or it is refused with ``NotAJsonlLogError`` and left untouched. A file moved or
    deleted while open is reported and created again at the path. A write that fails (disk full) raises
    ``LogFileError`` from the next ``flush()`` or ``close()``; an event after ``close()`` raises
    ``LogClosedError`` (through a manager: logged and counted). The writer options and their ranges are
    ``FileLogCallback``'s, and so are the ``{pid}`` and ``{worker}`` placeholders of the path and what a
    pickled copy holds (its options, never its buffered lines).
    """

    file_path: str
    """The path as given, placeholders expanded (``log_path`` is its absolute form)."""

    def __init__(
        self,
        file_path: str | os.PathLike[str],
        *,
        flush_interval: float = 1.0,
        buffer_bytes: int = 64 * 1024,
        max_pending_bytes: int = 4 * 1024 * 1024,
        on_full: Literal["block", "drop"] = "block",
        close_timeout: float = 5.0,
        backend: _backend.BackendName | None = None,
    ) -> None:
        self.file_path = self._open_log(
            "file_path", file_path, flush_interval=flush_interval, buffer_bytes=buffer_bytes,
            max_pending_bytes=max_pending_bytes, on_full=on_full, close_timeout=close_timeout, backend=backend,
        )

    def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
        self._append("start", "prompt", prompt, kwargs)

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self._append("end", "response", response, kwargs)

    def on_llm_error(self, error: LLMCallError, **kwargs: Any) -> None:
        self._append("error", "error", error, kwargs)

    def _append(self, event: str, field_name: str, value: Any, keywords: dict[str, Any]) -> None:
        record: dict[str, Any] = {"event": event, field_name: redact(_text(value)), "timestamp": _iso_utc_now()}
        for name, keyword_value in keywords.items():
            if name in record or (name in _LEFT_OUT_WHEN_EMPTY and _is_empty(keyword_value)):
                continue
            written = _as_json(keyword_value)
            if written is not _NOT_JSON:
                record[redact(name)] = written
        self.core.append_line(json.dumps(record))


@dataclass
class LLMEvent:
    """One LLM event, as upstream rlm-toolkit describes it: ``event_type`` (such as ``"start"``, ``"end"`` or
    ``"error"``), ``timestamp`` (epoch seconds, now by default) and ``data`` (the event's values by name)."""

    event_type: str
    timestamp: float = field(default_factory=time.time)
    data: dict[str, Any] = field(default_factory=dict)
