"""Pure-Python JSONL sink: whole lines gathered in a buffer, written with one ``os.write`` per batch when
the buffer passes ``buffer_bytes``, on an interval, at ``flush()`` and at ``close()``."""

from __future__ import annotations

import fcntl
import json
import os
import threading
from typing import Any

from ..errors import LogClosedError, LogFileError
from .records import build_record


def _open_private(path: str) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise LogFileError(f"cannot open log file {path!r}: {exc.strerror or exc}") from exc


def _repair_torn_tail(fd: int) -> None:
    """Cut a partial last line left by a killed writer, unless another writer holds the file (shared lock)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fcntl.flock(fd, fcntl.LOCK_SH)
        return
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        end = size
        keep = 0
        while end > 0:
            start = max(0, end - 65536)
            newline = os.pread(fd, end - start, start).rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            end = start
        os.ftruncate(fd, keep)
    fcntl.flock(fd, fcntl.LOCK_SH)


class JsonlSink:
    def __init__(self, path: str, include_prompts: bool, include_responses: bool,
                 max_field_chars: int, flush_interval: float, buffer_bytes: int, max_pending_bytes: int,
                 block_when_full: bool) -> None:
        self.path = path
        self._include_prompts = include_prompts
        self._include_responses = include_responses
        self._max_chars = max_field_chars
        self._flush_interval = flush_interval
        self._buffer_bytes = buffer_bytes
        self._fd = _open_private(path)
        _repair_torn_tail(self._fd)
        self._pending = bytearray()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._error: OSError | None = None
        self._unannounced_error: str | None = None
        self._latest_error: str | None = None
        self.dropped = 0
        self._start_flusher()

    def _start_flusher(self) -> None:
        threading.Thread(target=self._flush_periodically, daemon=True, name="rlm_toolkit-jsonl-flush").start()

    def reopen_after_fork(self) -> None:
        """In a forked child: a descriptor, lock, buffer and flusher of its own; the parent's pending lines
        are the parent's to write."""
        self._fd = _open_private(self.path)
        self._pending = bytearray()
        self._lock = threading.Lock()
        self._start_flusher()

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
            self._pending += line
            if len(self._pending) >= self._buffer_bytes:
                self._write_pending()

    def _write_pending(self) -> None:
        batch, self._pending = bytes(self._pending), bytearray()
        try:
            written = 0
            while written < len(batch):
                written += os.write(self._fd, batch[written:])
        except OSError as exc:
            self._error = self._error or exc
            text = str(exc.strerror or exc)
            if text != self._latest_error:
                self._latest_error = self._unannounced_error = text

    def announce_error(self) -> str | None:
        """A new write error, once, for reporting it as it happens; flush()/close() still raise it."""
        text, self._unannounced_error = self._unannounced_error, None
        return text

    def _flush_locked(self) -> None:
        self._write_pending()
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
                os.close(self._fd)

    def _flush_periodically(self) -> None:
        while not self._closed.wait(self._flush_interval):
            with self._lock:
                if self.closed:
                    return
                self._write_pending()
