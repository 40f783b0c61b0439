"""LangChain's callback events into rlm_toolkit's callbacks: metrics, cost, the JSONL log and the console for a
LangChain app, by adding one handler to its config::

    handler = LangChainHandler([MetricsCallback(), FileLogCallback("app.jsonl")])
    chain.invoke(inputs, config={"callbacks": [handler]})

``LangChainHandler(callbacks)`` is a ``langchain_core.callbacks.BaseCallbackHandler`` that fires the events of
a ``rlm_toolkit.callbacks.CallbackManager`` built from ``callbacks`` (one callback, a list of them, or a manager,
which is used as it is). Each LangChain run becomes events of ours:

- chat model or LLM start (``on_chat_model_start``, ``on_llm_start``) -> ``on_llm_start(prompt)``. ``prompt`` is
  the messages as ``langchain_core.messages.get_buffer_string`` writes them (one ``Role: text`` line per
  message), or the prompt text of a text-completion LLM; several message lists or prompts in one event are
  joined with a blank line (``"\\n\\n"``). ``model=`` is the model the call names: the ``ls_model_name`` that
  LangChain puts in the run's metadata, else ``model`` or ``model_name`` of the invocation parameters, else
  those of the serialized model's ``kwargs``.
- new token -> ``on_llm_new_token(token)`` for each token that holds text (the text of its text blocks when
  it is a list of content blocks); a chunk without text (a tool-call or usage chunk) fires nothing.
- LLM end -> ``on_llm_end(LLMResponse)`` built from the first generation: its text; ``model`` the
  ``model_name`` (else ``model``) of the message's ``response_metadata``; ``finish_reason`` its
  ``finish_reason`` (else ``stop_reason``, else the generation's ``finish_reason``); ``tool_calls`` the
  message's ``tool_calls`` as LangChain gives them; ``usage`` from the message's ``usage_metadata``
  (``input_tokens``, ``output_tokens``, ``total_tokens``, ``input_token_details.cache_read`` as
  ``cached_tokens``, ``output_token_details.reasoning`` as ``reasoning_tokens``), else from the result's
  OpenAI-style ``llm_output["token_usage"]`` (where text-completion LLMs report it, with their ``model_name``),
  or None when the model reported none: that call's tokens and cost are unknown, not 0. A streamed call also
  gives ``ttft_ms=``: the milliseconds from its start to its first token with text or a tool-call chunk.
- retry (fired by the retry decorators of LangChain's model integrations) -> ``on_retry(attempt,
  max_attempts, error)``: tenacity's ``attempt_number`` (the attempt that just failed), the
  ``stop_after_attempt`` limit (0 when the stop rule has none), the attempt's exception.
- tool start/end -> ``on_tool_start(tool_name, tool_input)`` (the tool's parsed ``inputs``, else its input
  text) / ``on_tool_end(tool_name, tool_output)`` (a ``ToolMessage``'s content, else the output as returned).
- retriever end -> ``on_memory_recall(query, results)``: the query of its start, the documents' ``page_content``.
- chain start/end -> ``on_run_start(prompt, kind="run", name=...)`` / ``on_run_end(answer, kind="run")``: a str,
  a message's text or a prompt value's text as it is; any other input or output (a dict of a chain's
  variables) as JSON, with values JSON cannot hold as their ``str()``. ``name=`` is the runnable's name.
- an LLM, tool, retriever or chain error -> ``on_error(error)`` (a tool's with ``tool_name=`` and
  ``model=None``), once per exception: a chain that fails with the exception a step inside it already
  reported fires nothing more, so one failure counts once in ``MetricsCallback``'s ``errors``, as in an RLM run.

Every event has LangChain's ``run_id`` and ``parent_run_id`` (as str), and the ``tags`` and ``metadata`` of its
run's start (metadata without the keys LangChain adds for its tracing: ``ls_...`` and ``lc_versions``);
``model=`` on the LLM events.

Our callbacks' failures follow our rules (logged on the ``rlm_toolkit`` logger, counted in ``handler_errors``
and in ``MetricsCallback``'s metrics) and never reach the LangChain app: the exception of a callback of ours
with ``raise_error = True`` reaches LangChain's callback manager, which logs it as a warning and carries on
(``LangChainHandler.raise_error`` is False). The handler sets ``run_inline = True``:
LangChain calls it on the event loop in ``ainvoke``/``astream``, in the order of the events, instead of
on executor threads; async hooks of ours are then scheduled on that loop, and ``await handler.wait_pending()``
awaits them. One handler may serve concurrent runs (threads or tasks): its own state is one entry per open
run, each touched by that run's events only.

The other way, ``LangChainCallback(handler)`` is one of our callbacks that hands our events to a LangChain
handler, so a handler written for LangChain sees an ``RLM``'s runs (see its docstring for the mapping).

Needs langchain-core: ``pip install 'rlm_toolkit[langchain]'``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any
from uuid import UUID

from .. import _backend
from ..callbacks import BaseCallback, CallbackManager
from ..errors import CallbackConfigError, MissingExtraError
from ..types import LLMResponse, Usage

try:
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.documents import Document
    from langchain_core.messages import (
        BaseMessage,
        HumanMessage,
        SystemMessage,
        ToolMessage,
        get_buffer_string,
    )
    from langchain_core.outputs import ChatGeneration, LLMResult
except ImportError:
    raise MissingExtraError(
        "rlm_toolkit.integrations.langchain needs langchain-core: pip install 'rlm_toolkit[langchain]'"
    ) from None

from ._langchain_callback import LangChainCallback
from ._langchain_text import content_text, text_of

if TYPE_CHECKING:
    from tenacity import RetryCallState

__all__ = ["LangChainCallback", "LangChainHandler"]

_TRACING_PREFIX = "ls_"
_TRACING_KEYS = frozenset({"lc_versions"})


class _Run:
    """What the events of one LangChain run share: our form of its ids, its start's context, and the state
    its end needs."""

    __slots__ = ("run_id", "parent_run_id", "tags", "metadata", "model", "name", "started", "first_token")

    def __init__(self, run_id: str, parent_run_id: str | None, tags: list[str] | None,
                 metadata: dict[str, Any] | None, model: str | None = None, name: str | None = None) -> None:
        self.run_id = run_id
        self.parent_run_id = parent_run_id
        self.tags = tags
        self.metadata = metadata
        self.model = model
        self.name = name
        """A tool's name, or a retriever's query."""
        self.started = 0.0
        """``time.perf_counter()`` at an LLM call's start."""
        self.first_token: float | None = None
        """``time.perf_counter()`` at an LLM call's first token, once it came."""


def _without_tracing_keys(metadata: dict[str, Any] | None) -> dict[str, Any] | None:
    """``metadata`` without the keys LangChain adds to a model's run for its tracing."""
    if not metadata:
        return metadata
    return {key: value for key, value in metadata.items()
            if not (key.startswith(_TRACING_PREFIX) or key in _TRACING_KEYS)}


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _model_of(serialized: dict[str, Any] | None, metadata: dict[str, Any] | None,
              invocation_params: object) -> str | None:
    if metadata and (model := _str_or_none(metadata.get("ls_model_name"))):
        return model
    for params in (invocation_params, (serialized or {}).get("kwargs")):
        if isinstance(params, dict):
            for key in ("model", "model_name"):
                if model := _str_or_none(params.get(key)):
                    return model
    return None


_PREFIX_OF_TYPE: dict[type, str] = {HumanMessage: "Human", SystemMessage: "System"}


def _message_line(message: BaseMessage) -> str:
    """``get_buffer_string([message])``, without its work for the plain messages most prompts are made of."""
    content = message.content
    if type(content) is str:
        prefix = _PREFIX_OF_TYPE.get(type(message))
        if prefix is not None:
            return f"{prefix}: {content}"
    return get_buffer_string([message])


def _prompt_of(messages: list[BaseMessage]) -> str:
    """The messages as ``get_buffer_string`` writes them."""
    return "\n".join([_message_line(message) for message in messages])


def _count(details: dict[str, Any], key: str) -> int:
    value = details.get(key, 0)
    return value if type(value) is int else 0  # not a bool, nor None for a count the model left out


def _usage_of(usage_metadata: object) -> Usage | None:
    if not isinstance(usage_metadata, dict):
        return None
    input_details = usage_metadata.get("input_token_details")
    output_details = usage_metadata.get("output_token_details")
    return Usage(
        _count(usage_metadata, "input_tokens"),
        _count(usage_metadata, "output_tokens"),
        _count(usage_metadata, "total_tokens"),
        _count(input_details, "cache_read") if isinstance(input_details, dict) else 0,
        _count(output_details, "reasoning") if isinstance(output_details, dict) else 0,
    )


def _token_usage_of(llm_output: dict[str, Any] | None) -> Usage | None:
    """The usage of an OpenAI-style ``llm_output["token_usage"]`` (text-completion LLMs give it there)."""
    token_usage = llm_output.get("token_usage") if llm_output else None
    if not isinstance(token_usage, dict):
        return None
    return Usage(_count(token_usage, "prompt_tokens"), _count(token_usage, "completion_tokens"),
                 _count(token_usage, "total_tokens"))


def _first_str(mapping: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = mapping.get(key)
        if isinstance(value, str) and value:
            return value
    return None


_MODEL_KEYS = ("model_name", "model")
_FINISH_KEYS = ("finish_reason", "stop_reason")


def _response_of(result: LLMResult) -> LLMResponse:
    generations = result.generations
    if not generations or not generations[0]:
        return LLMResponse("", usage=None)
    generation = generations[0][0]
    info = generation.generation_info
    if isinstance(generation, ChatGeneration):
        message = generation.message
        metadata = message.response_metadata
        usage = _usage_of(getattr(message, "usage_metadata", None))
        tool_calls: Iterable[Any] = getattr(message, "tool_calls", None) or ()
    else:
        metadata, usage, tool_calls = result.llm_output or {}, None, ()
    if usage is None:
        usage = _token_usage_of(result.llm_output)
    return LLMResponse(
        generation.text,
        model=_first_str(metadata, _MODEL_KEYS) if metadata else None,
        usage=usage,
        finish_reason=((_first_str(metadata, _FINISH_KEYS) if metadata else None)
                       or (_first_str(info, _FINISH_KEYS[:1]) if info else None)),
        tool_calls=tool_calls,
    )


def _has_tool_call_chunks(chunk: object) -> bool:
    return bool(getattr(getattr(chunk, "message", None), "tool_call_chunks", None))


class LangChainHandler(BaseCallbackHandler):
    """A LangChain callback handler that fires rlm_toolkit's events into ``callbacks`` (see the module's
    docstring for the mapping). ``callbacks`` is one callback, a list of them (a ``CallbackManager`` is built
    from them, with ``backend``), or a ``CallbackManager``, used as it is; anything else raises
    ``CallbackConfigError``, as ``CallbackManager`` does."""

    run_inline = True
    raise_error = False
    manager: CallbackManager
    """The manager the events are fired into; its ``handler_errors`` counts our callbacks' failures."""

    def __init__(self, callbacks: BaseCallback | Iterable[Any] | None, *,
                 backend: _backend.BackendName | None = None) -> None:
        if isinstance(callbacks, CallbackManager):
            if backend is not None:
                raise CallbackConfigError(
                    "backend= applies to the manager LangChainHandler builds; the CallbackManager given has its "
                    "own backend: pass its callbacks instead, or build it with that backend"
                )
            self.manager = callbacks
        else:
            self.manager = CallbackManager(callbacks, backend=backend)
        manager = self.manager
        # The manager's event methods, looked up once.
        self._fire_llm_start = manager.on_llm_start
        self._fire_llm_new_token = manager.on_llm_new_token
        self._fire_llm_end = manager.on_llm_end
        self._fire_tool_start = manager.on_tool_start
        self._fire_tool_end = manager.on_tool_end
        self._fire_memory_recall = manager.on_memory_recall
        self._fire_error = manager.on_error
        self._fire_retry = manager.on_retry
        self._fire_run_start = manager.on_run_start
        self._fire_run_end = manager.on_run_end
        self._runs: dict[UUID, _Run] = {}
        """The open runs. Each entry is added by its run's start and removed by its end or error (one dict
        operation each, atomic), so concurrent runs need no lock."""
        self._failed_inside: dict[UUID, list[BaseException]] = {}
        """Open run -> the exceptions the runs inside it reported, so that its own error with one of them fires
        nothing more. Parallel steps of one run may fail at once: ``_failures_lock`` guards it."""
        self._failures_lock = threading.Lock()

    async def wait_pending(self) -> None:
        """Await the async hooks that events fired inside a running event loop scheduled there."""
        await self.manager.wait_pending()

    def _opened(self, run_id: UUID, parent_run_id: UUID | None, tags: list[str] | None,
                metadata: dict[str, Any] | None, model: str | None = None, name: str | None = None) -> _Run:
        """A new open run; its parent's id as text is the parent's entry's, when the parent is open."""
        if parent_run_id is None:
            parent_text = None
        else:
            parent = self._runs.get(parent_run_id)
            parent_text = str(parent_run_id) if parent is None else parent.run_id
        run = _Run(str(run_id), parent_text, tags, _without_tracing_keys(metadata), model, name)
        self._runs[run_id] = run
        return run

    def _closed_run(self, run_id: UUID, parent_run_id: UUID | None, tags: list[str] | None) -> _Run:
        """The run ``run_id`` ends: its entry, or one made from the end's arguments for a run whose start this
        handler did not see."""
        run = self._runs.pop(run_id, None)
        if run is None:
            run = _Run(str(run_id), None if parent_run_id is None else str(parent_run_id), tags, None)
        return run

    def _failed(self, run: _Run, error: BaseException, run_id: UUID, parent_run_id: UUID | None,
                **extra: Any) -> None:
        with self._failures_lock:
            reported = self._failed_inside.pop(run_id, ())
            if parent_run_id is not None and parent_run_id in self._runs:
                self._failed_inside.setdefault(parent_run_id, []).append(error)
        if not any(inner is error for inner in reported):
            self._fire_error(error, run_id=run.run_id, parent_run_id=run.parent_run_id, tags=run.tags,
                             metadata=run.metadata, **extra)

    # -- LLM calls --------------------------------------------------------------------------------------------

    def _llm_started(self, prompt: str, serialized: dict[str, Any], run_id: UUID, parent_run_id: UUID | None,
                     tags: list[str] | None, metadata: dict[str, Any] | None, invocation_params: object) -> None:
        run = self._opened(run_id, parent_run_id, tags, metadata, _model_of(serialized, metadata, invocation_params))
        self._fire_llm_start(prompt, run_id=run.run_id, parent_run_id=run.parent_run_id, model=run.model,
                             tags=run.tags, metadata=run.metadata)
        run.started = time.perf_counter()

    def on_chat_model_start(self, serialized: dict[str, Any], messages: list[list[BaseMessage]], *, run_id: UUID,
                            parent_run_id: UUID | None = None, tags: list[str] | None = None,
                            metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        prompt = (_prompt_of(messages[0]) if len(messages) == 1
                  else "\n\n".join([_prompt_of(message_list) for message_list in messages]))
        self._llm_started(prompt, serialized, run_id, parent_run_id, tags, metadata, kwargs.get("invocation_params"))

    def on_llm_start(self, serialized: dict[str, Any], prompts: list[str], *, run_id: UUID,
                     parent_run_id: UUID | None = None, tags: list[str] | None = None,
                     metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self._llm_started("\n\n".join(prompts), serialized, run_id, parent_run_id, tags, metadata,
                          kwargs.get("invocation_params"))

    def on_llm_new_token(self, token: str | list[str | dict[str, Any]], *, chunk: Any = None, run_id: UUID,
                         parent_run_id: UUID | None = None, tags: list[str] | None = None, **kwargs: Any) -> None:
        run = self._runs.get(run_id)
        if run is None:
            return
        text = token if isinstance(token, str) else content_text(token)
        if run.first_token is None and (text or _has_tool_call_chunks(chunk)):
            run.first_token = time.perf_counter()
        if text:
            self._fire_llm_new_token(text, run_id=run.run_id, parent_run_id=run.parent_run_id, model=run.model,
                                     tags=run.tags, metadata=run.metadata)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, parent_run_id: UUID | None = None,
                   tags: list[str] | None = None, **kwargs: Any) -> None:
        run = self._closed_run(run_id, parent_run_id, tags)
        ttft_ms = None if run.first_token is None else (run.first_token - run.started) * 1000.0
        self._fire_llm_end(_response_of(response), ttft_ms=ttft_ms, run_id=run.run_id,
                           parent_run_id=run.parent_run_id, model=run.model, tags=run.tags, metadata=run.metadata)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None,
                     tags: list[str] | None = None, **kwargs: Any) -> None:
        run = self._closed_run(run_id, parent_run_id, tags)
        self._failed(run, error, run_id, parent_run_id, model=run.model)

    def on_retry(self, retry_state: RetryCallState, *, run_id: UUID, parent_run_id: UUID | None = None,
                 **kwargs: Any) -> None:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None and outcome.failed else None
        if error is None:  # a retry on a result: no error to report
            return
        run = self._runs.get(run_id)
        if run is None:
            run = _Run(str(run_id), None if parent_run_id is None else str(parent_run_id), kwargs.get("tags"), None)
        stop = getattr(retry_state.retry_object, "stop", None)
        max_attempts = getattr(stop, "max_attempt_number", 0)
        self._fire_retry(retry_state.attempt_number, max_attempts if type(max_attempts) is int else 0, error,
                         run_id=run.run_id, parent_run_id=run.parent_run_id, model=run.model, tags=run.tags,
                         metadata=run.metadata)

    # -- tools and retrievers ---------------------------------------------------------------------------------

    def on_tool_start(self, serialized: dict[str, Any], input_str: str, *, run_id: UUID,
                      parent_run_id: UUID | None = None, tags: list[str] | None = None,
                      metadata: dict[str, Any] | None = None, inputs: dict[str, Any] | None = None,
                      **kwargs: Any) -> None:
        name = _str_or_none((serialized or {}).get("name")) or _str_or_none(kwargs.get("name")) or ""
        run = self._opened(run_id, parent_run_id, tags, metadata, name=name)
        self._fire_tool_start(name, input_str if inputs is None else inputs, run_id=run.run_id,
                              parent_run_id=run.parent_run_id, tags=run.tags, metadata=run.metadata)

    def on_tool_end(self, output: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        run = self._closed_run(run_id, parent_run_id, kwargs.get("tags"))
        with self._failures_lock:
            self._failed_inside.pop(run_id, None)
        tool_output = output.content if isinstance(output, ToolMessage) else output
        self._fire_tool_end(run.name or "", tool_output, run_id=run.run_id, parent_run_id=run.parent_run_id,
                            tags=run.tags, metadata=run.metadata)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None,
                      **kwargs: Any) -> None:
        run = self._closed_run(run_id, parent_run_id, kwargs.get("tags"))
        self._failed(run, error, run_id, parent_run_id, model=None, tool_name=run.name or "")

    def on_retriever_start(self, serialized: dict[str, Any], query: str, *, run_id: UUID,
                           parent_run_id: UUID | None = None, tags: list[str] | None = None,
                           metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self._opened(run_id, parent_run_id, tags, metadata, name=query)

    def on_retriever_end(self, documents: Sequence[Document], *, run_id: UUID, parent_run_id: UUID | None = None,
                         **kwargs: Any) -> None:
        run = self._closed_run(run_id, parent_run_id, kwargs.get("tags"))
        self._fire_memory_recall(run.name or "", [document.page_content for document in documents],
                                 run_id=run.run_id, parent_run_id=run.parent_run_id, tags=run.tags,
                                 metadata=run.metadata)

    def on_retriever_error(self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None,
                           **kwargs: Any) -> None:
        run = self._closed_run(run_id, parent_run_id, kwargs.get("tags"))
        self._failed(run, error, run_id, parent_run_id)

    # -- chains -----------------------------------------------------------------------------------------------

    def on_chain_start(self, serialized: dict[str, Any], inputs: dict[str, Any], *, run_id: UUID,
                       parent_run_id: UUID | None = None, tags: list[str] | None = None,
                       metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        name = _str_or_none(kwargs.get("name")) or _str_or_none((serialized or {}).get("name"))
        run = self._opened(run_id, parent_run_id, tags, metadata, name=name)
        self._fire_run_start(text_of(inputs), kind="run", name=name, run_id=run.run_id,
                             parent_run_id=run.parent_run_id, tags=run.tags, metadata=run.metadata)

    def on_chain_end(self, outputs: dict[str, Any], *, run_id: UUID, parent_run_id: UUID | None = None,
                     **kwargs: Any) -> None:
        run = self._closed_run(run_id, parent_run_id, kwargs.get("tags"))
        with self._failures_lock:
            self._failed_inside.pop(run_id, None)
        self._fire_run_end(text_of(outputs), kind="run", run_id=run.run_id, parent_run_id=run.parent_run_id,
                           tags=run.tags, metadata=run.metadata)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None,
                       **kwargs: Any) -> None:
        run = self._closed_run(run_id, parent_run_id, kwargs.get("tags"))
        self._failed(run, error, run_id, parent_run_id)
