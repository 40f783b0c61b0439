"""Base classes for callbacks: one no-op method per event of ``rlm_toolkit.events.EVENTS``.

Override only the hooks you need: a hook left as inherited is never called (the manager decides that once,
at registration). Hooks may name their positional parameters as they like (``def on_tool_end(self, output,
**kwargs)``) or take everything by keyword (``def on_llm_start(self, **kwargs)``). Context keywords:
``run_id``, ``parent_run_id``, ``model`` (LLM events), and the run's ``tags`` and ``metadata``; an event's
own keywords (``on_llm_end``'s ``ttft_ms``, ``on_run_start``'s and ``on_run_end``'s ``kind``) and extra keywords
reach hooks that name them or accept ``**kwargs`` (through ``**kwargs`` alone, ``tags``, ``metadata`` and the
event's own keywords only when given).

A hook may be ``def`` or ``async def`` (hence the return type ``Awaitable[None] | None``); see
``AsyncBaseCallback`` for how coroutines are awaited.

``on_llm_error`` is upstream rlm-toolkit's hook for failed LLM calls: the ``error`` event calls it for an
``LLMCallError`` only. Registration warns (``CallbackWarning``) about a method named ``on_...`` that is no
hook (a misspelling is never called) and about a hook whose parameters take none of its event's arguments.

Set ``raise_error = True`` on a callback to make its exceptions propagate to the code that fired the event;
by default they are logged on the ``rlm_toolkit`` logger, counted, and the other callbacks still run.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, ClassVar

from ..errors import LLMCallError


class BaseCallback:
    raise_error: ClassVar[bool] = False

    # Generated from events.toml by `python tests/catalogue_codegen.py`: edit the table, not these hooks.
    def on_llm_start(self, prompt: str, **kwargs: Any) -> Awaitable[None] | None:
        """Before an LLM call. ``prompt`` is the user's prompt text."""

    def on_llm_end(self, response: Any, **kwargs: Any) -> Awaitable[None] | None:
        """After an LLM answer. ``response`` has ``.content``, ``.model`` and ``.usage`` (see ``LLMResponse``); ``ttft_ms=`` is a streamed call's time to first token."""

    def on_llm_new_token(self, token: str, **kwargs: Any) -> Awaitable[None] | None:
        """For each streamed token (the run streams when any callback overrides this hook)."""

    def on_tool_start(self, tool_name: str, tool_input: Any, **kwargs: Any) -> Awaitable[None] | None:
        """Before a tool runs. ``tool_input`` holds the parsed arguments."""

    def on_tool_end(self, tool_name: str, tool_output: Any, **kwargs: Any) -> Awaitable[None] | None:
        """After a tool ran. ``tool_output`` is the text handed back to the model."""

    def on_memory_store(self, content: str, **kwargs: Any) -> Awaitable[None] | None:
        """When a message is stored to memory."""

    def on_memory_recall(self, query: str, results: list[Any], **kwargs: Any) -> Awaitable[None] | None:
        """When memory is recalled for ``query``."""

    def on_retry(self, attempt: int, max_attempts: int, error: BaseException, **kwargs: Any) -> Awaitable[None] | None:
        """Before retry number ``attempt`` (1-based) of ``max_attempts`` after ``error``."""

    def on_error(self, error: BaseException, **kwargs: Any) -> Awaitable[None] | None:
        """When an LLM call fails for good, or a tool fails."""

    def on_run_start(self, prompt: str, **kwargs: Any) -> Awaitable[None] | None:
        """When an ``RLM`` run or batch starts: its ``run_id`` is the ``parent_run_id`` of every event inside it; ``kind=`` is ``"run"`` or ``"batch"``."""

    def on_run_end(self, answer: str, **kwargs: Any) -> Awaitable[None] | None:
        """When an ``RLM`` run has its final answer (a failed run ends with ``on_error`` instead), or a batch has run all its prompts (``answer`` is ``""``); ``kind=`` is ``"run"`` or ``"batch"``."""
    # End of generated hooks.

    def on_llm_error(self, error: LLMCallError, **kwargs: Any) -> Awaitable[None] | None:
        """When an LLM call fails for good, with its ``LLMCallError``: upstream rlm-toolkit's hook, kept for
        compatibility. It is part of the ``error`` event: called once per failed LLM call, with the keywords of
        ``on_error``, and never for a tool error. A callback may override both hooks; each is called."""


class AsyncBaseCallback(BaseCallback):
    """Base for callbacks whose hooks are ``async def`` (plain ``def`` hooks may be mixed in).

    The hooks and their signatures are those of ``BaseCallback``; whether a hook is a coroutine function
    is decided per hook at registration (on any callback: this class only says what its hooks are). In async runs the coroutines of one event are awaited
    concurrently, each isolated; in sync runs they complete before the call that fired the event returns.
    Sync hooks are never moved to threads.
    """
