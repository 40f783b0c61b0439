"""Run lineage carried in a context variable.

While a tool runs, the id of its tool call is the *current parent*: a run started inside the tool (a nested
``RLM``, or any code that fires events) takes it as its ``parent_run_id``. Context variables follow asyncio
tasks on their own; for threads, start the thread's work with ``contextvars.copy_context().run`` (or use
``asyncio.to_thread``, which does so).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_current_parent_run_id: ContextVar[str | None] = ContextVar("rlm_toolkit_current_parent_run_id", default=None)


def new_run_id() -> str:
    """A fresh run id (a random UUID as text)."""
    return str(uuid.uuid4())


def current_parent_run_id() -> str | None:
    """The run id that work started here should name as its parent, or None outside any run."""
    return _current_parent_run_id.get()


@contextmanager
def parent_run(run_id: str) -> Iterator[None]:
    """Make ``run_id`` the current parent for the code inside the ``with`` block."""
    token = _current_parent_run_id.set(run_id)
    try:
        yield
    finally:
        _current_parent_run_id.reset(token)
