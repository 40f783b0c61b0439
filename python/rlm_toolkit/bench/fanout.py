"""Fan-out cases: ``on_llm_start`` to N Python handlers (``fanout-N``), and 16 registered handlers of which
one overrides the event against a single handler (``one-of-16``)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from typing import Any

from .._backend import BackendName
from ..callbacks import BaseCallback, CallbackManager
from .base import MODEL, PROMPT_SHORT, Contender, expect_handler_calls
from .competitors import blinker_fanout, langchain_fanout, pluggy_fanout

FANOUT_SIZES = (1, 4, 16)


class PageHandler(BaseCallback):
    """A handler as written on the docs page: ``def on_llm_start(self, prompt, **kwargs)``."""

    def __init__(self) -> None:
        self.calls = 0

    def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
        self.calls += 1


def _plain_fire(handlers: Sequence[Any], prompt: str, **kwargs: Any) -> None:
    """The plain for-loop fan-out, as a function: every handler, each call isolated."""
    for handler in handlers:
        try:
            handler.on_llm_start(prompt, **kwargs)
        except Exception:
            pass


def fanout_contenders(size: int, *, overriders: int | None = None) -> list[Contender]:
    """Contenders firing ``on_llm_start`` to ``size`` handlers, of which ``overriders`` override it (default all)."""
    active = size if overriders is None else overriders
    prompt, run_id, model = PROMPT_SHORT, str(uuid.uuid4()), MODEL

    def handlers_state(n: int) -> dict[str, Any]:
        handlers = [PageHandler() for _ in range(active)] + [BaseCallback() for _ in range(size - active)]
        return {"n": n, "active": active, "handlers": handlers}

    def ours(backend: BackendName) -> Contender:
        def setup(n: int) -> Any:
            state = handlers_state(n)
            state["manager"] = CallbackManager(state["handlers"], backend=backend)
            return state

        def run(state: Any) -> None:
            manager = state["manager"]
            for _ in itertools.repeat(None, state["n"]):
                manager.on_llm_start(prompt, run_id=run_id, model=model)

        return Contender(backend, f"rlm_toolkit ({backend})", setup, run, expect_handler_calls)

    def plain_inline() -> Contender:
        def run(state: Any) -> None:
            handlers = state["handlers"]
            for _ in itertools.repeat(None, state["n"]):
                for handler in handlers:
                    try:
                        handler.on_llm_start(prompt, run_id=run_id, parent_run_id=None, model=model)
                    except Exception:
                        pass

        return Contender("plain-inline", "plain for-loop, inlined", handlers_state, run, expect_handler_calls,
                         note="same handlers and keywords, try/except per call")

    def plain_function() -> Contender:
        def run(state: Any) -> None:
            handlers = state["handlers"]
            fire = _plain_fire
            for _ in itertools.repeat(None, state["n"]):
                fire(handlers, prompt, run_id=run_id, parent_run_id=None, model=model)

        return Contender("plain-func", "plain for-loop, in a function", handlers_state, run, expect_handler_calls)

    contenders = [ours("rust"), ours("python"), plain_inline(), plain_function(), langchain_fanout(size, active)]
    if overriders is None:
        contenders += [pluggy_fanout(size, run_id), blinker_fanout(size, run_id)]
    return contenders


def one_of_16_contenders() -> list[Contender]:
    """16 registered, one overrides ``on_llm_start``, against a single handler."""
    many = fanout_contenders(16, overriders=1)
    single = fanout_contenders(1)
    for contender in many:
        ours = contender.key in ("rust", "python")
        contender.impl += ", 16 (1 overrides)" if ours else ", 16 (1 overrides, all 16 called)"
    picked = {c.key: c for c in single}
    extra = []
    for key in ("rust", "python", "plain-inline"):
        contender = picked[key]
        contender.key += "-1"
        contender.impl += ", 1 handler"
        extra.append(contender)
    by_key = {c.key: c for c in many}
    order = [by_key["rust"], extra[0], by_key["python"], extra[1], by_key["plain-inline"], extra[2]]
    order += [c for c in many if c.key not in ("rust", "python", "plain-inline")]
    return order
