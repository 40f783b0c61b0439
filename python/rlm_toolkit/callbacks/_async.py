"""Completion of async hooks: awaited concurrently in async runs, before returning in sync runs."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, Callable

PendingHook = tuple[Coroutine[Any, Any, Any], str, bool]
"""A started hook coroutine, its label (``Class.on_event``) and whether its errors propagate."""

FailureReporter = Callable[[str, str, BaseException], None]

_background_loop: asyncio.AbstractEventLoop | None = None
_background_lock = threading.Lock()


def _loop_for_sync_callers() -> asyncio.AbstractEventLoop:
    global _background_loop
    with _background_lock:
        if _background_loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="rlm_toolkit-async-hooks", daemon=True).start()
            _background_loop = loop
        return _background_loop


class AsyncHookRunner:
    """Runs the coroutines of one event; the manager's dispatcher hands them over after the sync hooks ran."""

    def __init__(self, report_failure: FailureReporter, timeout: float | None) -> None:
        self._report_failure = report_failure
        self._timeout = timeout
        self._pending: set[asyncio.Task[None]] = set()

    def __call__(self, event: str, hooks: list[PendingHook]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:
            asyncio.run_coroutine_threadsafe(self._await_all(event, hooks), _loop_for_sync_callers()).result()
            return
        task = loop.create_task(self._await_all(event, hooks))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def wait_pending(self) -> None:
        """Await the hooks scheduled by events fired inside a running event loop."""
        while self._pending:
            await asyncio.gather(*list(self._pending))

    async def _await_all(self, event: str, hooks: list[PendingHook]) -> None:
        results = await asyncio.gather(*(asyncio.wait_for(coro, self._timeout) for coro, _, _ in hooks), return_exceptions=True)
        first_propagating: BaseException | None = None
        for (_, label, raise_error), result in zip(hooks, results):
            if not isinstance(result, BaseException):
                continue
            if raise_error or not isinstance(result, Exception):
                first_propagating = first_propagating or result
            else:
                self._report_failure(label, event, result)
        if first_propagating is not None:
            raise first_propagating
