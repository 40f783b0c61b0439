"""Open JSONL logs keep their lines through ``fork()``, worker processes, SIGTERM and interpreter exit.

- Exit: an ``atexit`` handler closes every open log; a log that fails is reported and the others still close.
- ``fork()``: the child gets a writer of its own for every open log (``reopen_after_fork``).
- multiprocessing children end with ``os._exit`` (no ``atexit``) after running multiprocessing's finalizers:
  a finalizer flushes every open log there. ``Process._bootstrap`` empties the finalizer registry in a
  forked child, so the finalizer is registered again from multiprocessing's after-fork hooks, which run
  after that.
- SIGTERM: while its disposition is the default one, a handler flushes every open log, then dies by
  SIGTERM all the same (see ``_on_sigterm`` and ``_start_sigterm_relay``).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import time
import weakref
from types import FrameType
from typing import Any, Protocol

logger = logging.getLogger("rlm_toolkit")

SIGTERM_FLUSH_DEADLINE_SECONDS = 5.0
"""How long a SIGTERM waits for the open logs to be flushed before the process dies anyway."""


class _Log(Protocol):
    log_path: str
    core: Any

    @property
    def closed(self) -> bool: ...

    def flush(self, timeout: float | None = None) -> None: ...

    def close(self) -> None: ...


_open_logs: weakref.WeakSet[Any] = weakref.WeakSet()
_sigterm_checked = False
_sigterm_received = False
"""Whether ``_on_sigterm`` ran: the default disposition is back, so SIGTERM kills."""
_sigterm_flushing = threading.Event()
_relay_fds: tuple[int, int] | None = None
"""The pipe whose write end is the interpreter's wakeup fd, read by the relay thread."""
_exit_flush_registered_in: int | None = None
"""The process whose multiprocessing finalizer registry holds the exit flush."""


class _AfterForkKey:
    """multiprocessing keeps its after-fork hooks in a weak mapping keyed by a live object: this one."""


_AFTER_FORK_KEY = _AfterForkKey()


def track(log: _Log) -> None:
    """Keep ``log``'s lines through exit, fork, worker processes and SIGTERM (called once per new log)."""
    _open_logs.add(log)
    # A log nobody holds any more can never be closed by the app: close it then (its writer, e.g. the
    # reference backend's flush thread, may outlive it and would keep its last lines forever).
    weakref.finalize(log, _close_core, log.core, log.log_path).atexit = False
    _register_exit_flush_for_multiprocessing()
    _install_sigterm_flush()


def _each_open_log(action: str) -> None:
    """``flush`` or ``close`` every open log; a failing log is reported and never stops the others."""
    for log in list(_open_logs):
        try:
            if not log.closed:
                getattr(log, action)()
        except Exception as error:  # reported, then on to the next log
            logger.error("could not %s the log file %s: %s", action, log.log_path, error)


def flush_every_open_log() -> None:
    """Writes the lines of every open log of this process now, e.g. in a Ray actor after each batch: Ray
    ends its actors without running exit handlers. A failing log is reported and never stops the others."""
    _each_open_log("flush")


def _close_core(core: Any, log_path: str) -> None:
    try:
        core.close()
    except Exception as error:  # reported; a finalizer has nobody to raise to
        logger.error("could not close the log file %s: %s", log_path, error)


@atexit.register
def _close_open_logs() -> None:
    _let_a_sigterm_flush_finish()
    _each_open_log("close")


def _flush_open_logs() -> None:
    _let_a_sigterm_flush_finish()
    _each_open_log("flush")


def _reopen_logs_in_child() -> None:
    _renew_sigterm_relay_in_child()
    for log in list(_open_logs):
        if not log.closed:
            try:
                log.core.reopen_after_fork()
            except Exception as error:  # the child goes on; its events for this log raise or are lost
                logger.error("could not reopen the log file %s after fork(): %s", log.log_path, error)
    multiprocessing_util = sys.modules.get("multiprocessing.util")
    if multiprocessing_util is not None and _open_logs:
        multiprocessing_util.register_after_fork(_AFTER_FORK_KEY, _register_exit_flush_after_fork)


os.register_at_fork(after_in_child=_reopen_logs_in_child)


def _register_exit_flush_after_fork(_key: _AfterForkKey) -> None:
    _register_exit_flush_for_multiprocessing()


def _register_exit_flush_for_multiprocessing() -> None:
    """In a process that uses multiprocessing: flush the logs from its finalizers, which a child runs
    before ``os._exit``. A process that never imported multiprocessing is not one of its children."""
    global _exit_flush_registered_in
    multiprocessing_util = sys.modules.get("multiprocessing.util")
    if multiprocessing_util is None or _exit_flush_registered_in == os.getpid():
        return
    _exit_flush_registered_in = os.getpid()
    # The lowest priority: multiprocessing runs it last, after the finalizers (queues, pools) that may
    # still carry events.
    multiprocessing_util.Finalize(None, _flush_open_logs, exitpriority=-(2**31))


def _install_sigterm_flush() -> None:
    """From the main thread, once: take SIGTERM only if nobody did (its disposition is still SIG_DFL)."""
    global _sigterm_checked
    if _sigterm_checked or threading.current_thread() is not threading.main_thread():
        return
    _sigterm_checked = True
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)
        _start_sigterm_relay()


def _on_sigterm(signum: int, _frame: FrameType | None) -> None:
    """Restore the default disposition (a second SIGTERM ends the process at once) and have every open log
    flushed, then die by the signal, as without this handler.

    The relay thread flushes: it already woke up for this signal (``_start_sigterm_relay``). This handler
    returns at once: the main thread may have been interrupted in the middle of writing a batch of lines,
    which only it can finish, or inside ``threading`` itself, so a handler must not start a thread.
    """
    global _sigterm_received
    _sigterm_received = True
    signal.signal(signum, signal.SIG_DFL)
    if not _relay_is_active():  # an event loop took the wakeup fd over: flush from here
        _each_open_log("flush")
        os.kill(os.getpid(), signum)


def _relay_is_active() -> bool:
    if _relay_fds is None:
        return False
    current = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(current, warn_on_full_buffer=False)
    return current == _relay_fds[1]


def _flush_within_deadline_then_die() -> None:
    """Waits at most ``SIGTERM_FLUSH_DEADLINE_SECONDS`` for the logs (whatever holds their files), then
    sends SIGTERM again, which kills once ``_on_sigterm`` restored the default disposition."""
    _sigterm_flushing.set()
    children_at_signal = _daemonic_children()
    deadline = time.monotonic() + SIGTERM_FLUSH_DEADLINE_SECONDS
    for log in list(_open_logs):
        try:
            if not log.closed:
                log.flush(timeout=max(0.0, deadline - time.monotonic()))
        except Exception as error:  # reported, then on to the next log
            logger.error("could not flush the log file %s on SIGTERM: %s", log.log_path, error)
    for child in _daemonic_children() - children_at_signal:
        child.terminate()
    main_thread = threading.main_thread().ident
    while True:
        if _sigterm_received:
            os.kill(os.getpid(), signal.SIGTERM)
        elif main_thread is not None:
            # The main thread has not run ``_on_sigterm`` yet: a signal that lands just before a blocking
            # call starts (a lock, a semaphore) does not interrupt it; this one, sent to that thread, does.
            signal.pthread_kill(main_thread, signal.SIGTERM)
        time.sleep(0.05)


def _daemonic_children() -> set[Any]:
    """The daemonic multiprocessing children alive now. Those started while the logs are flushed on
    SIGTERM (a pool's worker handler replacing the workers the signal killed) are terminated, as
    multiprocessing does at a normal exit: nothing else would ever stop them."""
    multiprocessing_process = sys.modules.get("multiprocessing.process")
    if multiprocessing_process is None:
        return set()
    return {child for child in multiprocessing_process.active_children() if child.daemon}


def _start_sigterm_relay() -> None:
    """Python runs a signal handler in the main thread only, and the signal may land in another thread
    while the main thread waits in a call it does not interrupt (a semaphore held by a worker that died):
    the handler would wait for ever. The interpreter also writes each signal's number to its wakeup fd,
    from any thread; a thread of ours reads it and starts the flush. Only when no one uses the wakeup fd
    (an event loop's ``add_signal_handler`` takes it over later; then the main thread's handler does it all).
    """
    global _relay_fds
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    try:
        previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except ValueError:  # not the main thread (a fork() from another thread)
        previous = None
    if previous != -1:
        if previous is not None:
            signal.set_wakeup_fd(previous)
        os.close(read_fd)
        os.close(write_fd)
        return
    _relay_fds = (read_fd, write_fd)
    threading.Thread(target=_relay_sigterm, args=(read_fd,), name="rlm_toolkit-sigterm-relay", daemon=True).start()


def _relay_sigterm(read_fd: int) -> None:
    while data := os.read(read_fd, 512):
        # An app's own SIGTERM handler, installed since, is left alone.
        if signal.SIGTERM in data and (_sigterm_received or signal.getsignal(signal.SIGTERM) is _on_sigterm):
            _flush_within_deadline_then_die()


def _renew_sigterm_relay_in_child() -> None:
    """A forked child must not wake its parent's relay: it gets a pipe and a relay thread of its own."""
    global _relay_fds, _sigterm_flushing
    _sigterm_flushing = threading.Event()  # a SIGTERM flush under way in the parent is the parent's
    if _relay_fds is None:
        return
    parents_fds, _relay_fds = _relay_fds, None
    try:
        current = signal.set_wakeup_fd(-1)
    except ValueError:  # not the main thread: the wakeup fd cannot be changed
        return
    finally:
        for fd in parents_fds:
            os.close(fd)
    if current != parents_fds[1]:  # someone else took the wakeup fd since: it stays theirs
        signal.set_wakeup_fd(current)
        return
    _start_sigterm_relay()


def _let_a_sigterm_flush_finish() -> None:
    """On the way out (atexit, multiprocessing's finalizers before ``os._exit``): a SIGTERM being handled
    ends the process itself, by the signal."""
    if _sigterm_flushing.is_set() and threading.current_thread() is threading.main_thread():
        while True:
            time.sleep(1)
