"""Pure-Python JSONL sink: whole lines into a buffered file, flushed on an interval, at flush() and close()."""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from ..errors import LogClosedError, LogFileError
from .records import build_record


def _open_private(path: str) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise LogFileError(f"cannot open log file {path!r}: {exc.strerror or exc}") from exc


class JsonlSink:
    def __init__(self, path: str, include_prompts: bool, include_responses: bool,
                 max_field_chars: int, flush_interval: float, buffer_bytes: int, max_pending_bytes: int,
                 block_when_full: bool) -> None:
        self.path = path
        self._include_prompts = include_prompts
        self._include_responses = include_responses
        self._max_chars = max_field_chars
        self._file = os.fdopen(_open_private(path), "ab", buffering=buffer_bytes)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._flush_interval = flush_interval
        self._buffer_bytes = buffer_bytes
        self._error: OSError | None = None
        self._unannounced_error: str | None = None
        self._latest_error: str | None = None
        self.dropped = 0
        self._start_flusher()

    def _start_flusher(self) -> None:
        threading.Thread(target=self._flush_periodically, args=(self._flush_interval,), daemon=True,
                         name="rlm_toolkit-jsonl-flush").start()

    def reopen_after_fork(self) -> None:
        """In a forked child: a file object, lock and flusher of its own. The parent's buffered lines are the
        parent's to write, so the inherited file object is abandoned without flushing."""
        abandoned = self._file
        os.close(abandoned.fileno())  # its buffer can no longer reach the file, even when it is collected
        self._file = os.fdopen(_open_private(self.path), "ab", buffering=self._buffer_bytes)
        self._lock = threading.Lock()
        self._start_flusher()

    def _remember(self, error: OSError) -> None:
        self._error = self._error or error
        text = str(error.strerror or error)
        if text != self._latest_error:
            self._latest_error = self._unannounced_error = text

    def announce_error(self) -> str | None:
        """A new write error, once, for reporting it as it happens; flush()/close() still raise it."""
        text, self._unannounced_error = self._unannounced_error, None
        return text

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def handle(self, event: str, args: tuple[Any, ...], run_id: Any, parent_run_id: Any, model: str | None,
               ts: float, extra: dict[str, Any] | None) -> None:
        record = build_record(event, args, run_id, parent_run_id, model, ts, extra,
                              include_prompts=self._include_prompts, include_responses=self._include_responses,
                              max_chars=self._max_chars)
        text = json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        try:
            line = (text + "\n").encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: escape them instead
            line = (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode("ascii")
        with self._lock:
            if self.closed:
                raise LogClosedError(f"FileLogCallback for {self.path!r} is closed; create a new one to log more")
            try:
                self._file.write(line)
            except OSError as exc:
                self._remember(exc)

    def _flush_locked(self) -> None:
        try:
            self._file.flush()
        except OSError as exc:
            self._remember(exc)
        if self._error is not None:
            error, self._error = self._error, None
            raise LogFileError(f"writing log file {self.path!r} failed: {error.strerror or error}") from error

    def flush(self) -> None:
        with self._lock:
            if not self.closed:
                self._flush_locked()

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self._closed.set()
            try:
                self._flush_locked()
            finally:
                try:
                    self._file.close()
                except OSError:
                    pass

    def _flush_periodically(self, interval: float) -> None:
        while not self._closed.wait(interval):
            with self._lock:
                if self.closed:
                    return
                try:
                    self._file.flush()
                except OSError as exc:
                    self._remember(exc)
