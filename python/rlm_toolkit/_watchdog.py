"""The socket watchdog that bounds the sync driver's blocking reads.

A blocking socket read cannot be interrupted otherwise, and the client's own read timeout restarts with every
byte, keep-alive comments included. So a sync read is guarded: the watchdog shuts its socket down once it has
waited past its deadline, and the blocked read fails. One daemon thread serves every RLM of the process; a
forked child starts with a watchdog of its own.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import httpx2


class _ReadGuard:
    """One sync attempt's socket, for the watchdog: ``deadline`` is set while a read waits, ``fired`` once
    the watchdog shut the socket down."""

    __slots__ = ("socket", "deadline", "fired", "_watchdog")

    def __init__(self, sock: socket.socket | None, watchdog: _SocketWatchdog) -> None:
        self.socket = sock
        self.deadline: float | None = None
        self.fired = False
        self._watchdog = watchdog

    def arm(self, deadline: float) -> None:
        """Guard the read about to start: shut the socket down if it still waits at ``deadline``."""
        self._watchdog.arm(self, deadline)

    def disarm(self) -> bool:
        """Stop guarding the current read; whether the watchdog shut its socket down."""
        return self._watchdog.disarm(self)


class _SocketWatchdog:
    """Shuts down the socket of a sync read that waits past its deadline, so that the blocked read fails."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._guards: set[_ReadGuard] = set()
        self._wake_at = math.inf
        self._thread: threading.Thread | None = None

    @contextmanager
    def guarding(self, response: httpx2.Response) -> Iterator[_ReadGuard]:
        """A guard for the reads of ``response``'s body (its socket, if the transport exposes it)."""
        network_stream = response.extensions.get("network_stream")
        guard = _ReadGuard(network_stream.get_extra_info("socket") if network_stream is not None else None, self)
        with self._condition:
            self._guards.add(guard)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._watch, name="rlm-read-watchdog", daemon=True)
                self._thread.start()
        try:
            yield guard
        finally:
            with self._condition:
                self._guards.discard(guard)

    def arm(self, guard: _ReadGuard, deadline: float) -> None:
        with self._condition:
            guard.deadline = deadline
            if deadline < self._wake_at:
                self._condition.notify()

    def disarm(self, guard: _ReadGuard) -> bool:
        with self._condition:
            guard.deadline = None
            return guard.fired

    def _watch(self) -> None:
        with self._condition:
            while True:
                now = time.monotonic()
                self._wake_at = math.inf
                for guard in self._guards:
                    if guard.deadline is None:
                        continue
                    if guard.deadline <= now:
                        guard.deadline = None
                        guard.fired = True
                        if guard.socket is not None:
                            try:
                                # The plain socket's shutdown, also for a TLS socket: it wakes the blocked read.
                                socket.socket.shutdown(guard.socket, socket.SHUT_RDWR)
                            except OSError:
                                pass  # already closed
                    else:
                        self._wake_at = min(self._wake_at, guard.deadline)
                self._condition.wait(None if self._wake_at == math.inf else self._wake_at - now)


_watchdog = _SocketWatchdog()


def _guarding(response: httpx2.Response) -> AbstractContextManager[_ReadGuard]:
    """A guard for the reads of ``response``'s body, served by this process's watchdog."""
    return _watchdog.guarding(response)


def _new_watchdog_after_fork() -> None:
    global _watchdog
    _watchdog = _SocketWatchdog()  # the parent's thread does not exist in the child, and its lock may be held


os.register_at_fork(after_in_child=_new_watchdog_after_fork)
