"""The other way round from ``LangChainHandler``: ``LangChainCallback``, one of our callbacks that hands our
events to a LangChain callback handler. Imported by ``rlm_toolkit.integrations.langchain``, which checks that
langchain-core is installed."""

from __future__ import annotations

from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, LLMResult

from ..callbacks import BaseCallback
from ..errors import CallbackConfigError, LLMCallError
from ..types import Usage
from ._langchain_text import text_of

def _uuid(run_id: object) -> UUID:
    """Our run id as LangChain's UUID: the UUID it spells (the RLM's ids do), else a UUID made from its text
    (``uuid5``), the same for the same id."""
    if isinstance(run_id, UUID):
        return run_id
    text = "" if run_id is None else str(run_id)
    try:
        return UUID(text)
    except ValueError:
        return uuid5(NAMESPACE_URL, text)


def _uuid_or_none(run_id: object) -> UUID | None:
    return None if run_id is None else _uuid(run_id)


def _usage_metadata(usage: Usage) -> dict[str, Any]:
    return {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens, "input_token_details": {"cache_read": usage.cached_tokens},
            "output_token_details": {"reasoning": usage.reasoning_tokens}}


def _llm_result(response: object, model: str | None) -> LLMResult:
    """An ``LLMResult`` holding ``response`` (an ``LLMResponse``, or any text) as an ``AIMessage``."""
    content = getattr(response, "content", response)
    usage = getattr(response, "usage", None)
    response_model = getattr(response, "model", None) or model
    finish_reason = getattr(response, "finish_reason", None)
    response_metadata = {key: value for key, value in (("model_name", response_model),
                                                       ("finish_reason", finish_reason)) if value is not None}
    message = AIMessage(content if isinstance(content, str) else str(content), response_metadata=response_metadata,
                        usage_metadata=_usage_metadata(usage) if isinstance(usage, Usage) else None)
    llm_output: dict[str, Any] = {"model_name": response_model}
    if isinstance(usage, Usage):
        llm_output["token_usage"] = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                                     "total_tokens": usage.total_tokens}
    return LLMResult(generations=[[ChatGeneration(message=message)]], llm_output=llm_output)


class LangChainCallback(BaseCallback):
    """One of our callbacks that hands our events to a LangChain callback handler (a sync
    ``BaseCallbackHandler``), so a handler written for LangChain sees an ``RLM``'s runs:

    - ``on_run_start``/``on_run_end`` -> ``on_chain_start({"name": "RLM"}, {"input": prompt})`` /
      ``on_chain_end({"output": answer})``;
    - ``on_llm_start`` -> ``on_chat_model_start`` with the prompt as one ``HumanMessage`` (``on_llm_start`` with
      ``[prompt]`` for a handler without it, as LangChain does), ``ls_model_name`` in the metadata;
      ``on_llm_new_token`` -> ``on_llm_new_token``; ``on_llm_end`` -> ``on_llm_end`` with an ``LLMResult``
      whose ``AIMessage`` has the answer, ``usage_metadata`` (None for unreported usage) and
      ``response_metadata`` (``model_name``, ``finish_reason``);
    - ``on_tool_start``/``on_tool_end`` -> ``on_tool_start({"name": tool_name}, input as text, inputs=...)`` /
      ``on_tool_end(output)``; ``on_memory_recall`` -> ``on_retriever_start`` then ``on_retriever_end`` with
      the results as ``Document``s;
    - ``on_error`` -> ``on_tool_error`` (it has ``tool_name=``), ``on_llm_error`` (an ``LLMCallError``) or
      ``on_chain_error``. ``on_retry`` and ``on_memory_store`` have no LangChain counterpart and are not passed.

    Run ids become ``UUID``s (an RLM's ids are UUIDs as text). The handler's ``ignore_llm``,
    ``ignore_chat_model``, ``ignore_chain`` and ``ignore_retriever`` are honoured; its exceptions are our
    callback's, isolated and counted like any hook's."""

    def __init__(self, handler: BaseCallbackHandler) -> None:
        if not isinstance(handler, BaseCallbackHandler) or isinstance(handler, AsyncCallbackHandler):
            raise CallbackConfigError(
                f"LangChainCallback takes a langchain_core.callbacks.BaseCallbackHandler with sync hooks, not "
                f"{type(handler).__name__}; for an AsyncCallbackHandler, write its hooks as an "
                "rlm_toolkit.callbacks.AsyncBaseCallback"
            )
        self.handler = handler

    def on_run_start(self, prompt: str, *, run_id: Any = None, parent_run_id: Any = None,
                     tags: list[str] | None = None, metadata: dict[str, Any] | None = None, kind: str | None = None,
                     **kwargs: Any) -> None:
        if not self.handler.ignore_chain:
            name = "RLM.batch" if kind == "batch" else "RLM"
            self.handler.on_chain_start({"name": name}, {"input": prompt}, run_id=_uuid(run_id),
                                        parent_run_id=_uuid_or_none(parent_run_id), tags=tags, metadata=metadata,
                                        name=name)

    def on_run_end(self, answer: str, *, run_id: Any = None, parent_run_id: Any = None,
                   tags: list[str] | None = None, **kwargs: Any) -> None:
        if not self.handler.ignore_chain:
            self.handler.on_chain_end({"output": answer}, run_id=_uuid(run_id),
                                      parent_run_id=_uuid_or_none(parent_run_id), tags=tags)

    def on_llm_start(self, prompt: str, *, run_id: Any = None, parent_run_id: Any = None, model: str | None = None,
                     tags: list[str] | None = None, metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if self.handler.ignore_llm:
            return
        serialized = {"name": model or "", "kwargs": {"model": model}}
        ids = _uuid(run_id), _uuid_or_none(parent_run_id)
        metadata = {**(metadata or {}), "ls_model_name": model} if model else metadata
        if not self.handler.ignore_chat_model:
            try:
                self.handler.on_chat_model_start(serialized, [[HumanMessage(prompt)]], run_id=ids[0],
                                                 parent_run_id=ids[1], tags=tags, metadata=metadata,
                                                 invocation_params={"model": model})
                return
            except NotImplementedError:  # LangChain's way of saying "only on_llm_start"
                pass
        self.handler.on_llm_start(serialized, [prompt], run_id=ids[0], parent_run_id=ids[1], tags=tags,
                                  metadata=metadata, invocation_params={"model": model})

    def on_llm_new_token(self, token: str, *, run_id: Any = None, parent_run_id: Any = None,
                         tags: list[str] | None = None, **kwargs: Any) -> None:
        if not self.handler.ignore_llm:
            self.handler.on_llm_new_token(token, run_id=_uuid(run_id), parent_run_id=_uuid_or_none(parent_run_id),
                                          tags=tags)

    def on_llm_end(self, response: Any, *, run_id: Any = None, parent_run_id: Any = None, model: str | None = None,
                   tags: list[str] | None = None, **kwargs: Any) -> None:
        if not self.handler.ignore_llm:
            self.handler.on_llm_end(_llm_result(response, model), run_id=_uuid(run_id),
                                    parent_run_id=_uuid_or_none(parent_run_id), tags=tags)

    def on_tool_start(self, tool_name: str, tool_input: Any, *, run_id: Any = None, parent_run_id: Any = None,
                      tags: list[str] | None = None, metadata: dict[str, Any] | None = None,
                      **kwargs: Any) -> None:
        if not self.handler.ignore_agent:
            self.handler.on_tool_start({"name": tool_name}, text_of(tool_input), run_id=_uuid(run_id),
                                       parent_run_id=_uuid_or_none(parent_run_id), tags=tags, metadata=metadata,
                                       inputs=tool_input if isinstance(tool_input, dict) else None)

    def on_tool_end(self, tool_name: str, tool_output: Any, *, run_id: Any = None, parent_run_id: Any = None,
                    tags: list[str] | None = None, **kwargs: Any) -> None:
        if not self.handler.ignore_agent:
            self.handler.on_tool_end(tool_output, run_id=_uuid(run_id), parent_run_id=_uuid_or_none(parent_run_id),
                                     tags=tags, name=tool_name)

    def on_memory_recall(self, query: str, results: list[Any], *, run_id: Any = None, parent_run_id: Any = None,
                         tags: list[str] | None = None, metadata: dict[str, Any] | None = None,
                         **kwargs: Any) -> None:
        if self.handler.ignore_retriever:
            return
        uid, parent = _uuid(run_id), _uuid_or_none(parent_run_id)
        self.handler.on_retriever_start({"name": "memory"}, query, run_id=uid, parent_run_id=parent, tags=tags,
                                        metadata=metadata)
        documents = [Document(page_content=text_of(result)) for result in results]
        self.handler.on_retriever_end(documents, run_id=uid, parent_run_id=parent, tags=tags)

    def on_error(self, error: BaseException, *, run_id: Any = None, parent_run_id: Any = None,
                 tags: list[str] | None = None, tool_name: str | None = None, **kwargs: Any) -> None:
        uid, parent = _uuid(run_id), _uuid_or_none(parent_run_id)
        if tool_name is not None:
            if not self.handler.ignore_agent:
                self.handler.on_tool_error(error, run_id=uid, parent_run_id=parent, tags=tags, name=tool_name)
        elif isinstance(error, LLMCallError):
            if not self.handler.ignore_llm:
                self.handler.on_llm_error(error, run_id=uid, parent_run_id=parent, tags=tags)
        elif not self.handler.ignore_chain:
            self.handler.on_chain_error(error, run_id=uid, parent_run_id=parent, tags=tags)
