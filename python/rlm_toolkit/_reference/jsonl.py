"""Pure-Python JSONL sink, the reference for ``rust/writer.rs``: producers append whole lines to a pending
buffer; a flusher thread writes it as one batch when it passes ``buffer_bytes``, on an interval, at
``flush()`` and at ``close()``. Pending bytes are bounded by ``max_pending_bytes``: a producer that finds
the buffer full writes it itself (``block_when_full``) or the line is dropped and counted.

A regular file may be shared with writers in other processes. Each batch is written under
``flock(LOCK_EX)``, and under that lock, before writing: the path is checked to still name the open file
(renamed or deleted: reported, and the path opened again), a torn tail left by a writer that died mid-write
is repaired (``repair_torn_tail``), and the file's size is noted so a write that fails part-way is cut back
to its last whole line. Lines that could not be written are counted as lost. ``close()`` waits at most
``close_timeout`` for the file.

Locks: ``_write_lock`` (held from taking a batch to writing it) before ``_lock`` (the pending buffer).
Both are re-entrant and the pending buffer is only changed in place, so ``flush()``/``close()`` called from
a signal handler while the same thread is inside ``handle()`` cannot deadlock; one that interrupts a batch
write leaves that write to finish when the handler returns.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import stat
import threading
import time
from typing import Any

from ..errors import InvalidEventError, LogClosedError, LogFileError, NotAJsonlLogError
from .records import build_record, iso_utc

SNIFF_BYTES = 64 * 1024
"""How much of an existing file is read to decide whether it is a JSONL log."""

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _escaped_surrogate(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def torn_sidecar_path(log_path: str) -> str:
    """The sidecar a torn tail is moved to, next to the log."""
    return log_path + ".torn"


def _reason(error: OSError) -> str:
    return str(error.strerror or error)


def _open_raw(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def is_json_object(data: bytes) -> bool:
    """Whether ``data`` is one strict JSON object (RFC 8259, UTF-8), optionally surrounded by whitespace."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return _is_json_object_text(text)


def _is_json_object_text(text: str) -> bool:
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return False
    return isinstance(value, dict)


LINE_WITH_SURROGATES = ("append_line() got text with lone surrogates, which UTF-8 cannot carry: encode the object "
                        "with json.dumps(), which escapes them")
LINE_WITH_NEWLINE = ("append_line() got text holding a newline: pass one JSON object on one line, without the "
                     "newline (the log adds it)")
LINE_NOT_AN_OBJECT = ("append_line() got text that is not one JSON object: pass the object's JSON text, such as "
                      "json.dumps() returns for a dict")


def not_a_log_message(path: str, reason: str) -> str:
    return (f"the log file {path!r} holds something other than a JSONL log ({reason}); it was left untouched. "
            "Give a new path, or move that file away")


def check_is_jsonl(fd: int, size: int, path: str) -> None:
    """Refuses a file that is not a JSONL log, reading at most ``SNIFF_BYTES``: a non-empty file must start
    with ``{``, and if its first line ends within those bytes that line must be a JSON object. A first line
    with no newline in them is a record too long to judge or a torn first record: the repair handles it."""
    if size == 0:
        return
    head = os.pread(fd, min(size, SNIFF_BYTES), 0)
    if head[:1] != b"{":
        raise NotAJsonlLogError(not_a_log_message(path, "its first byte is not '{'"))
    end = head.find(b"\n")
    if end >= 0 and not is_json_object(head[:end]):
        raise NotAJsonlLogError(not_a_log_message(path, "its first line is not a JSON object"))


def repair_torn_tail(fd: int, log_path: str, size: int) -> int:
    """Repairs the bytes after the last newline of a file of ``size`` bytes, left by a writer that died
    mid-write: a whole JSON object only missing its newline gets it; anything else is appended to the sidecar
    ``<log>.torn`` (one JSON record per fragment) and then cut from the log, so nothing is deleted. Must be
    called holding the file's exclusive lock. Returns the file's new size."""
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    end = size
    tail_start = 0
    while end > 0:
        start = max(0, end - 65536)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            tail_start = start + newline + 1
            break
        end = start
    tail = os.pread(fd, size - tail_start, tail_start)
    if is_json_object(tail):
        os.write(fd, b"\n")
        return size + 1
    _move_aside(log_path, tail_start, tail)
    os.ftruncate(fd, tail_start)
    return tail_start


def _move_aside(log_path: str, offset: int, fragment: bytes) -> None:
    """Appends ``{"torn_at", "log", "offset", "length", "fragment" | "fragment_base64"}`` to the sidecar and
    syncs it: ``fragment`` holds the bytes when they are UTF-8, ``fragment_base64`` otherwise."""
    record: dict[str, Any] = {"torn_at": iso_utc(time.time()), "log": log_path, "offset": offset,
                              "length": len(fragment)}
    try:
        record["fragment"] = fragment.decode("utf-8")
    except UnicodeDecodeError:
        record["fragment_base64"] = base64.b64encode(fragment).decode("ascii")
    line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
    sidecar = _open_raw(torn_sidecar_path(log_path))
    try:
        written = 0
        while written < len(line):
            written += os.write(sidecar, line[written:])
        os.fdatasync(sidecar)
    finally:
        os.close(sidecar)


def _unwritten_lines(batch: bytes, written: int) -> int:
    whole = batch.rfind(b"\n", 0, written) + 1
    return batch.count(b"\n", whole)


class _Output:
    """The open file. A regular file is locked per batch, repaired, rolled back and watched for renames;
    anything else (a FIFO, a character device) is written as a stream."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.fd = _open_raw(path)
        except OSError as exc:
            raise LogFileError(f"cannot open log file {path!r}: {_reason(exc)}") from exc
        self.interrupted_rest = b""
        """The bytes of a batch not written when a write was interrupted by an exception (a signal)."""
        try:
            self.regular = stat.S_ISREG(os.fstat(self.fd).st_mode)
            if self.regular:
                fcntl.flock(self.fd, fcntl.LOCK_EX)
                try:
                    size = os.fstat(self.fd).st_size
                    check_is_jsonl(self.fd, size, path)
                    repair_torn_tail(self.fd, path, size)
                finally:
                    fcntl.flock(self.fd, fcntl.LOCK_UN)
        except OSError as exc:
            os.close(self.fd)
            if isinstance(exc, LogFileError):
                raise
            raise LogFileError(f"cannot open log file {path!r}: {_reason(exc)}") from exc

    def write_batch(self, batch: bytes) -> tuple[list[str], int]:
        """Writes ``batch``; returns the errors met and how many of its lines were not written."""
        if not self.regular:
            return self._write(batch, None)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError as exc:
            return [f"cannot lock the file: {_reason(exc)}"], batch.count(b"\n")
        try:
            errors = []
            notice = self._follow_path()
            if notice is not None:
                errors.append(notice)
            try:
                size = repair_torn_tail(self.fd, self.path, os.fstat(self.fd).st_size)
            except OSError as exc:
                return [*errors, _reason(exc)], batch.count(b"\n")
            write_errors, lost = self._write(batch, size)
            return errors + write_errors, lost
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def _write(self, batch: bytes, size_before: int | None) -> tuple[list[str], int]:
        """Writes ``batch``; if that fails part-way, a regular file (``size_before`` given) is cut back to the
        last whole line written. On a stream a line written in part counts as not written."""
        view = memoryview(batch)
        written = 0
        try:
            while written < len(batch):
                written += os.write(self.fd, view[written:])
        except OSError as exc:
            error = _reason(exc)
            whole = batch.rfind(b"\n", 0, written) + 1
            if size_before is not None and whole < written:
                try:
                    os.ftruncate(self.fd, size_before + whole)
                except OSError as cut_error:
                    error += f"; cutting the partial line it left also failed: {_reason(cut_error)}"
            return [error], _unwritten_lines(batch, written)
        except BaseException:
            # Interrupted between writes (a signal handler raised): keep the file whole and hand back the rest.
            whole = batch.rfind(b"\n", 0, written) + 1
            if size_before is not None and whole < written:
                os.ftruncate(self.fd, size_before + whole)
                self.interrupted_rest = batch[whole:]
            else:
                self.interrupted_rest = batch[written:]
            raise
        return [], 0

    def _follow_path(self) -> str | None:
        """Whether the path still names the open file; if it was renamed or deleted, opens the path again
        (locked, like the file it replaces) and tells what happened."""
        opened = os.fstat(self.fd)
        try:
            current = os.stat(self.path)
            moved = (current.st_dev, current.st_ino) != (opened.st_dev, opened.st_ino)
        except FileNotFoundError:
            moved = True
        except OSError:
            moved = False
        if not moved and opened.st_nlink > 0:
            return None
        if opened.st_nlink == 0:
            what = "it was deleted while open (lines written to it since are gone)"
        else:
            what = "it was renamed or replaced while open (earlier lines are in the renamed file)"
        try:
            fd = _open_raw(self.path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                regular = stat.S_ISREG(os.fstat(fd).st_mode)
            except OSError:
                os.close(fd)
                raise
        except OSError as exc:
            return f"{what}; opening the path again failed ({_reason(exc)}), so lines still go to the old file"
        os.close(self.fd)
        self.fd, self.regular = fd, regular
        return f"{what}; logging goes on in a new file at this path"


class JsonlSink:
    def __init__(self, path: str, include_prompts: bool, include_responses: bool,
                 max_field_chars: int, flush_interval: float, buffer_bytes: int, max_pending_bytes: int,
                 block_when_full: bool, close_timeout: float = 5.0) -> None:
        self.path = path
        self._include_prompts = include_prompts
        self._include_responses = include_responses
        self._max_chars = max_field_chars
        self._flush_interval = flush_interval
        self._buffer_bytes = buffer_bytes
        self._max_pending_bytes = max_pending_bytes
        self._block_when_full = block_when_full
        self._close_timeout = close_timeout
        self._output = _Output(path)
        self.dropped = 0
        self.lost = 0
        self._start()

    def _start(self) -> None:
        self._pending = bytearray()
        self._in_flight = b""
        self._lock = threading.RLock()
        self._write_lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._progress = threading.Condition(self._lock)
        """Notified when the flusher thread has written (a requested flush, or the last batch at close)."""
        self._writing = False
        self._writer_thread = 0
        self._closing = False
        self._done = False
        self._abandoned = False
        self._flush_requested = 0
        self._flush_done = 0
        self._error: str | None = None
        self._latest_error: str | None = None
        self._news = False
        self._unannounced_error: str | None = None
        self._unannounced_lost = 0
        self._unannounced_dropped = 0
        threading.Thread(target=self._flush_periodically, daemon=True, name="rlm_toolkit-jsonl-flush").start()

    def reopen_after_fork(self) -> None:
        """In a forked child: a file, locks, buffer and flusher of its own; the parent's pending lines are the
        parent's to write (its descriptor is left open, as the parent's lock may be held on it)."""
        self._output = _Output(self.path)
        self._start()

    @property
    def closed(self) -> bool:
        return self._closing

    def handle(self, event: str, args: tuple[Any, ...], run_id: Any, parent_run_id: Any, model: str | None,
               ts: float, extra: dict[str, Any] | None) -> None:
        record = build_record(event, args, run_id, parent_run_id, model, ts, extra,
                              include_prompts=self._include_prompts, include_responses=self._include_responses,
                              max_chars=self._max_chars)
        text = json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        try:
            line = (text + "\n").encode("utf-8")
        except UnicodeEncodeError:  # surrogates, which UTF-8 cannot carry: pairs joined, lone ones escaped
            joined = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
            line = (_LONE_SURROGATE.sub(_escaped_surrogate, joined) + "\n").encode("utf-8")
        self._queue(line)

    def append_line(self, line: str) -> None:
        """Queues a line encoded by the caller: one JSON object without a newline (the sink adds it), refused
        otherwise (InvalidEventError) so the log keeps whole JSON lines. A write error is left for
        ``flush()``/``close()`` to raise."""
        if not isinstance(line, str):
            raise TypeError(f"append_line() takes a str, got {type(line).__name__}")
        try:
            data = line.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidEventError(LINE_WITH_SURROGATES) from None
        if b"\n" in data:
            raise InvalidEventError(LINE_WITH_NEWLINE)
        if not _is_json_object_text(line):
            raise InvalidEventError(LINE_NOT_AN_OBJECT)
        self._queue(data + b"\n")

    def _queue(self, line: bytes) -> None:
        """Queues one whole line (ending in ``\\n``) under the full-buffer policy."""
        while True:
            with self._lock:
                if self._closing:
                    raise LogClosedError(f"the log file {self.path!r} is closed; create a new callback to log more")
                full = bool(self._pending) and len(self._pending) + len(line) > self._max_pending_bytes
                if full and not self._block_when_full:
                    self.dropped += 1
                    self._unannounced_dropped += 1
                    self._news = True
                    return
                if not full:
                    was_below = len(self._pending) < self._buffer_bytes
                    self._pending += line
                    if was_below and len(self._pending) >= self._buffer_bytes:
                        self._wake.notify()
                    return
            if not self._write_pending():
                # Re-entered from a signal handler while this thread writes: it cannot make room, so the
                # line goes past the bound rather than wait for a write that waits for it.
                with self._lock:
                    self._pending += line
                return

    def _write_pending(self) -> bool:
        """Writes every pending line as one batch from the calling thread. False when this thread is already
        writing (re-entered from a signal handler): that write goes on when the handler returns."""
        with self._write_lock:
            if self._writing:
                return False
            self._write_pending_locked()
            return True

    def _reentered_mid_write(self) -> bool:
        return self._writing and self._writer_thread == threading.get_ident()

    def _write_pending_locked(self) -> None:
        # Marked before the batch is taken: a signal handler that flushes from here on leaves it to this call.
        self._writing, self._writer_thread = True, threading.get_ident()
        try:
            with self._lock:
                if not self._pending or self._done or self._abandoned:
                    return
                batch = self._in_flight = bytes(self._pending)
                del self._pending[:]  # in place: a handle() interrupted by a signal handler still holds it
            try:
                errors, lost = self._output.write_batch(batch)
            except BaseException:
                with self._lock:
                    self._pending[0:0] = self._output.interrupted_rest
                    self._in_flight = b""
                raise
        finally:
            self._writing = False
        with self._lock:
            self._in_flight = b""
            if self._abandoned:
                return
            for error in errors:
                self._record_error(error)
            if lost:
                self.lost += lost
                self._unannounced_lost += lost
            if errors or lost:
                self._news = True

    def _record_error(self, message: str) -> None:
        self._error = self._error or message
        if message != self._latest_error:
            self._latest_error = self._unannounced_error = message

    def announce(self) -> tuple[str | None, int, int] | None:
        """A new write error, lines lost and lines dropped since the last call, once, for reporting them as
        they happen; flush()/close() still raise the error."""
        if not self._news:
            return None
        with self._lock:
            self._news = False
            news = (self._unannounced_error, self._unannounced_lost, self._unannounced_dropped)
            self._unannounced_error, self._unannounced_lost, self._unannounced_dropped = None, 0, 0
        return news

    def _raise_error(self) -> None:
        with self._lock:
            error, self._error = self._error, None
        if error is not None:
            raise LogFileError(f"writing log file {self.path!r} failed: {error}")

    def flush(self, timeout: float | None = None) -> None:
        """Writes everything accepted so far. Without ``timeout``, from the calling thread; with it (seconds),
        has the flusher thread write and waits at most that long, whatever holds the file, then raises
        LogFileError saying how many lines still wait (they stay pending)."""
        if self._closing:
            return
        if timeout is None:
            self._write_pending()
            self._raise_error()
            return
        deadline = time.monotonic() + timeout
        with self._lock:
            if not self._reentered_mid_write():
                self._flush_requested += 1
                request = self._flush_requested
                self._wake.notify()
                while self._flush_done < request and not self._done:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        waiting = self._pending.count(b"\n") + self._in_flight.count(b"\n")
                        raise LogFileError(
                            f"writing log file {self.path!r} failed: flush gave up after {timeout:.3f} s: the file "
                            f"did not accept writes in time; {waiting} lines are still waiting to be written")
                    self._progress.wait(left)
        self._raise_error()

    def close(self) -> None:
        """Has the flusher thread write the last lines and close the file, waiting at most ``close_timeout``;
        if it cannot finish in time, the lines not written are counted as lost and the error names how many.
        Never blocks past the deadline, whatever holds the file. Idempotent."""
        deadline = time.monotonic() + self._close_timeout
        with self._lock:
            self._closing = True
            self._wake.notify()
            # Re-entered from a signal handler mid-write, nothing can finish before the handler returns:
            # the flusher thread finishes the close after that write.
            if not self._reentered_mid_write():
                while not self._done and not self._abandoned:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self._give_up_locked()
                        break
                    self._progress.wait(left)
        self._raise_error()

    def _finish_locked(self) -> None:
        if self._done or self._abandoned:
            return
        try:
            self._write_pending_locked()
        finally:
            os.close(self._output.fd)
            with self._lock:
                self._done = True

    def _give_up_locked(self) -> None:
        self._abandoned = True
        lost = self._pending.count(b"\n") + self._in_flight.count(b"\n")
        del self._pending[:]
        self.lost += lost
        gave_up = (f"close() gave up after {self._close_timeout:.3f} s (close_timeout): the file did not accept "
                   f"writes in time; {lost} lines were not written")
        self._error = f"{gave_up}; earlier: {self._error}" if self._error else gave_up

    def _flush_periodically(self) -> None:
        while True:
            with self._lock:
                if (not self._closing and len(self._pending) < self._buffer_bytes
                        and self._flush_done == self._flush_requested):
                    self._wake.wait(self._flush_interval)
                closing = self._closing
                request = self._flush_requested
            if closing:
                with self._write_lock:
                    self._finish_locked()
            else:
                self._write_pending()
            with self._lock:
                self._flush_done = max(self._flush_done, request)
                self._progress.notify_all()
            if closing:
                return
