"""Run lineage carried in a context variable.

While a tool runs, the id of its tool call is the *current parent*: a run started inside the tool (a nested
``RLM``, or any code that fires events) takes it as its ``parent_run_id``. Context variables follow asyncio
tasks on their own; for threads, start the thread's work with ``contextvars.copy_context().run`` (or use
``asyncio.to_thread``, which does so).

What callbacks may need that no event carries (none of it reaches the JSONL records): the endpoint of the LLM
call whose ``on_llm_start`` is firing (``current_endpoint``), and, for a ``RunWatcher`` (``watch_runs``), the
code that runs under a parent run (a tool's) and the runs that end without ``on_run_end`` (failed, cancelled,
or a stream closed early).
"""

from __future__ import annotations

import logging
import uuid
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from contextvars import ContextVar
from typing import Protocol

_current_parent_run_id: ContextVar[str | None] = ContextVar("rlm_toolkit_current_parent_run_id", default=None)
_current_endpoint: ContextVar[str | None] = ContextVar("rlm_toolkit_current_endpoint", default=None)


class RunWatcher(Protocol):
    def context_of_run(self, run_id: str) -> AbstractContextManager[object] | None:
        """A context to hold while code runs with ``run_id`` as its current parent (a tool's code), or None."""

    def run_left_unfinished(self, run_id: str, reason: BaseException) -> None:
        """The run (or batch) ``run_id`` stopped without ``on_run_end`` because of ``reason``."""


_run_watchers: weakref.WeakSet[RunWatcher] = weakref.WeakSet()


def new_run_id() -> str:
    """A fresh run id (a random UUID as text)."""
    return str(uuid.uuid4())


def current_parent_run_id() -> str | None:
    """The run id that work started here should name as its parent, or None outside any run."""
    return _current_parent_run_id.get()


@contextmanager
def parent_run(run_id: str) -> Iterator[None]:
    """Make ``run_id`` the current parent for the code inside the ``with`` block, inside the contexts the
    run watchers give for it."""
    token = _current_parent_run_id.set(run_id)
    try:
        with ExitStack() as watchers_contexts:
            for watcher in list(_run_watchers):
                context = watcher.context_of_run(run_id)
                if context is not None:
                    watchers_contexts.enter_context(context)
            yield
    finally:
        _current_parent_run_id.reset(token)


def current_endpoint() -> str | None:
    """The base URL (password redacted) of the LLM call whose ``on_llm_start`` is being fired, else None.

    Hooks run synchronously in the thread or task that fires the event, so a hook of ``on_llm_start``
    reads the endpoint of its own call."""
    return _current_endpoint.get()


@contextmanager
def calling_endpoint(url: str) -> Iterator[None]:
    """Make ``url`` the ``current_endpoint`` for the code inside the ``with`` block."""
    token = _current_endpoint.set(url)
    try:
        yield
    finally:
        _current_endpoint.reset(token)


def watch_runs(watcher: RunWatcher) -> None:
    """Ask ``watcher`` (held weakly, for as long as it lives) for a context around code that runs under a parent
    run, and tell it of every run that stops without ``on_run_end``."""
    _run_watchers.add(watcher)


def run_left_unfinished(run_id: str, reason: BaseException) -> None:
    """Report that run ``run_id`` stopped without ``on_run_end``. ``reason``: the exception that stopped it; for
    a run closed from outside (``GeneratorExit``), the exception that made its driver close it, if any (an
    ``asyncio.CancelledError`` for a cancelled task)."""
    if isinstance(reason, GeneratorExit) and reason.__context__ is not None:
        reason = reason.__context__
    for watcher in list(_run_watchers):
        try:
            watcher.run_left_unfinished(run_id, reason)
        except Exception:  # the run's own exception is the one to propagate
            logging.getLogger("rlm_toolkit").exception("%r failed to handle an unfinished run", watcher)
