"""Completion of async hooks: awaited concurrently in async runs, before returning in sync runs.

An event fired with no running event loop (sync code) completes its async hooks on the manager's own
background loop (a daemon thread, started at the first such event) and waits for them, for at most
``async_timeout`` seconds. An event fired inside a running loop schedules them as a task on that loop;
``wait_pending()`` awaits them. The one exception: inside a sync entry point of the RLM (``sync_caller``),
the running loop is blocked until the entry point returns, so the hooks complete on the background loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
import weakref
from collections.abc import Coroutine, Generator, Iterator
from contextlib import contextmanager
from typing import Any, Callable, TypeVar

PendingHook = tuple[Coroutine[Any, Any, Any], str, bool]
"""A started hook coroutine, its label (``Class.on_event``) and whether its errors propagate."""

FailureReporter = Callable[[str, str, BaseException], None]

Item = TypeVar("Item")

_blocked_loop: contextvars.ContextVar[asyncio.AbstractEventLoop | None] = contextvars.ContextVar(
    "rlm_toolkit_blocked_loop", default=None
)
"""The running event loop that a sync entry point blocks while it runs (see ``sync_caller``)."""


@contextmanager
def sync_caller() -> Iterator[None]:
    """Marks the code inside as a sync call: its events' async hooks complete before it goes on, also when
    this thread runs an event loop (a sync call from a coroutine or a notebook cell blocks that loop, so
    hooks scheduled on it could only start after the call returned)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        yield
        return
    token = _blocked_loop.set(loop)
    try:
        yield
    finally:
        _blocked_loop.reset(token)


def each_step_as_sync_caller(items: Generator[Item, None, None]) -> Generator[Item, None, None]:
    """``items`` with every step (and its closing) run under ``sync_caller``, never across a ``yield``: the
    consumer's code between steps keeps its own context."""
    try:
        while True:
            with sync_caller():
                try:
                    item = next(items)
                except StopIteration:
                    return
            yield item
    finally:
        with sync_caller():
            items.close()


class _Unfinished:
    """The outcome of a hook that had not finished when its caller stopped waiting."""


_UNFINISHED = _Unfinished()


class _EventHooks:
    """The async hooks of one event, their outcomes as they finish; reported once, by whoever settles it
    first: the coroutine awaiting them, or a sync caller whose wait timed out."""

    def __init__(self, event: str, hooks: list[PendingHook]) -> None:
        self.event = event
        self.hooks = hooks
        self.outcomes: list[BaseException | None | _Unfinished] = [_UNFINISHED] * len(hooks)
        self._lock = threading.Lock()
        self._settled = False

    def settle(self) -> list[BaseException | None | _Unfinished] | None:
        """The outcomes for the one caller that reports them; None for every later caller."""
        with self._lock:
            if self._settled:
                return None
            self._settled = True
            return list(self.outcomes)


_runners: weakref.WeakSet[AsyncHookRunner] = weakref.WeakSet()


def _forget_background_loops_in_child() -> None:
    """After ``fork()`` a background loop's thread does not exist in the child: each runner starts anew."""
    for runner in list(_runners):
        runner._reset_background_loop()


os.register_at_fork(after_in_child=_forget_background_loops_in_child)


def _run_until_stopped(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()


def _stop_soon(loop: asyncio.AbstractEventLoop) -> None:
    try:
        loop.call_soon_threadsafe(loop.stop)
    except RuntimeError:  # already closed
        pass


class AsyncHookRunner:
    """Runs the coroutines of one event; the manager's dispatcher hands them over after the sync hooks ran.

    Each runner (one per manager) has a background loop of its own, so a hook that blocks its thread
    delays only its own manager's async hooks.
    """

    def __init__(self, report_failure: FailureReporter, timeout: float | None) -> None:
        self._report_failure = report_failure
        self._timeout = timeout
        self._pending: set[asyncio.Task[BaseException | None]] = set()
        self._reset_background_loop()
        _runners.add(self)

    def _reset_background_loop(self) -> None:
        stop_parents_loop = getattr(self, "_stop_background_loop", None)
        if stop_parents_loop is not None:
            stop_parents_loop.detach()
        self._background_lock = threading.Lock()
        self._background_loop: asyncio.AbstractEventLoop | None = None
        self._stop_background_loop: weakref.finalize[[asyncio.AbstractEventLoop], AsyncHookRunner] | None = None

    def _loop_for_sync_callers(self) -> asyncio.AbstractEventLoop:
        with self._background_lock:
            if self._background_loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=_run_until_stopped, args=(loop,), name="rlm_toolkit-async-hooks",
                                 daemon=True).start()
                # The loop ends with its runner (a manager that is gone fires no more events).
                self._stop_background_loop = weakref.finalize(self, _stop_soon, loop)
                self._background_loop = loop
            return self._background_loop

    def __call__(self, event: str, hooks: list[PendingHook]) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        batch = _EventHooks(event, hooks)
        # A hook that fires a sync event of its own manager runs on that manager's background loop: the
        # loop cannot wait for itself, so those hooks are scheduled on it like in any running loop.
        if running is not None and (_blocked_loop.get() is not running or running is self._background_loop):
            task = running.create_task(self._await_all(batch))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            return
        error = self._complete_for_sync_caller(batch)
        if error is not None:
            raise error

    def _complete_for_sync_caller(self, batch: _EventHooks) -> BaseException | None:
        future = asyncio.run_coroutine_threadsafe(self._await_all(batch), self._loop_for_sync_callers())
        try:
            return future.result(self._timeout)
        except TimeoutError:
            # A hook blocks the background loop's thread (a sync call inside ``async def``): the loop's own
            # timeouts cannot fire while it is blocked, so the caller stops waiting and reports it.
            outcomes = batch.settle()
            if outcomes is None:  # the hooks finished just now and were reported
                return future.result()
            future.cancel()
            return self._report(batch, outcomes)

    async def wait_pending(self) -> None:
        """Await the hooks scheduled by events fired inside this running event loop.

        Cancelling the caller does not cancel the hooks: they go on running on the loop.
        """
        loop = asyncio.get_running_loop()
        first_error: BaseException | None = None
        while tasks := [task for task in list(self._pending) if task.get_loop() is loop]:
            await asyncio.wait(tasks)
            self._pending.difference_update(tasks)
            for task in tasks:
                error = None if task.cancelled() else task.result()
                first_error = first_error or error
        if first_error is not None:
            raise first_error

    async def _await_all(self, batch: _EventHooks) -> BaseException | None:
        """Awaits the hooks concurrently, each for at most the timeout; returns the error to raise, if any.

        Raises CancelledError only when this call itself is cancelled (the hooks are then cancelled too).
        """
        async def await_one(index: int, hook: Coroutine[Any, Any, Any]) -> None:
            hook_task = asyncio.ensure_future(hook)
            try:
                await asyncio.wait((hook_task,), timeout=self._timeout)
            except asyncio.CancelledError:
                hook_task.cancel()
                raise
            if not hook_task.done():
                hook_task.cancel()  # its outcome stays unfinished: reported as a timeout
                return
            try:
                hook_task.result()
                batch.outcomes[index] = None
            except BaseException as error:  # the hook's own failure, its own CancelledError included
                batch.outcomes[index] = error

        await asyncio.gather(*(await_one(index, hook) for index, (hook, _, _) in enumerate(batch.hooks)))
        outcomes = batch.settle()
        return None if outcomes is None else self._report(batch, outcomes)

    def _report(self, batch: _EventHooks, outcomes: list[BaseException | None | _Unfinished]) -> BaseException | None:
        """Reports each failed hook; returns the first error that propagates instead (a ``raise_error``
        hook's, or a BaseException such as KeyboardInterrupt)."""
        first_propagating: BaseException | None = None
        for (_, label, raise_error), outcome in zip(batch.hooks, outcomes):
            if outcome is None:
                continue
            if isinstance(outcome, _Unfinished):
                outcome = TimeoutError(
                    f"the async hook did not finish within async_timeout={self._timeout}s (a blocking call in an "
                    "async hook, such as time.sleep, holds up its event loop; use await asyncio.sleep)"
                )
            isolated = isinstance(outcome, asyncio.CancelledError) or (
                isinstance(outcome, Exception) and not raise_error
            )
            if isolated:
                self._report_failure(label, batch.event, outcome)
            else:
                first_propagating = first_propagating or outcome
        return first_propagating
