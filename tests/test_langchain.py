"""``rlm_toolkit.integrations.langchain.LangChainHandler``: LangChain's events into our callbacks, checked with
langchain-core's fake chat models, a tool, a retriever and small chains, on both backends."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel, BaseLLM
from langchain_core.language_models.fake_chat_models import (
    FakeListChatModel,
    FakeMessagesListChatModel,
    GenericFakeChatModel,
)
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    get_buffer_string,
)
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult, Generation, LLMResult
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableLambda, RunnableParallel
from langchain_core.tools import tool
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_none

from rlm_toolkit.callbacks import BaseCallback, CallbackManager, FileLogCallback, MetricsCallback
from rlm_toolkit.errors import CallbackConfigError, LLMCallError
from rlm_toolkit.integrations.langchain import LangChainHandler
from rlm_toolkit.types import LLMResponse, Usage

PRICED = "gpt-4o-mini"
USAGE = {"input_tokens": 100, "output_tokens": 20, "total_tokens": 120,
         "input_token_details": {"cache_read": 40}, "output_token_details": {"reasoning": 5}}
COST = (60 * 0.15 + 40 * 0.075 + 20 * 0.60) / 1e6
"""USAGE's cost at gpt-4o-mini's prices: 60 uncached and 40 cached prompt tokens, 20 completion tokens."""


def _answer(text: str = "Paris.") -> AIMessage:
    return AIMessage(text, usage_metadata=USAGE,  # type: ignore[arg-type]
                     response_metadata={"model_name": PRICED + "-2024-07-18", "finish_reason": "stop"})


class PricedFakeChat(GenericFakeChatModel):
    """GenericFakeChatModel with a model name, which LangChain reports as ``ls_model_name``."""

    model_name: str = PRICED


class StreamingChat(BaseChatModel):
    """Streams a chunk without text, then ``tokens`` after ``delay`` seconds, then a last chunk with the usage,
    as OpenAI's API does."""

    model_name: str = PRICED
    tokens: list[str]
    delay: float = 0.0

    @property
    def _llm_type(self) -> str:
        return "streaming-test-chat"

    def _last_chunk(self) -> ChatGenerationChunk:
        metadata = {"model_name": PRICED, "finish_reason": "stop"}
        return ChatGenerationChunk(message=AIMessageChunk("", usage_metadata=USAGE,  # type: ignore[arg-type]
                                                          response_metadata=metadata))

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=_answer("".join(self.tokens)))])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        yield ChatGenerationChunk(message=AIMessageChunk(""))
        time.sleep(self.delay)
        for token in self.tokens:
            yield ChatGenerationChunk(message=AIMessageChunk(token))
        yield self._last_chunk()

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        yield ChatGenerationChunk(message=AIMessageChunk(""))
        await asyncio.sleep(self.delay)
        for token in self.tokens:
            yield ChatGenerationChunk(message=AIMessageChunk(token))
        yield self._last_chunk()


class FailingChat(BaseChatModel):
    @property
    def _llm_type(self) -> str:
        return "failing-test-chat"

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        raise RuntimeError("the model is down")


class Recorder(BaseCallbackHandler):
    """LangChain's own view of the runs: (hook, run_id, parent_run_id) in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str | None]] = []

    def _add(self, hook: str, run_id: UUID, parent_run_id: UUID | None) -> None:
        self.events.append((hook, str(run_id), None if parent_run_id is None else str(parent_run_id)))

    def on_chain_start(self, serialized: Any, inputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None,
                       **kwargs: Any) -> None:
        self._add("chain_start", run_id, parent_run_id)

    def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: UUID,
                            parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        self._add("chat_model_start", run_id, parent_run_id)

    def on_tool_start(self, serialized: Any, input_str: Any, *, run_id: UUID, parent_run_id: UUID | None = None,
                      **kwargs: Any) -> None:
        self._add("tool_start", run_id, parent_run_id)


class Events(BaseCallback):
    """Our events as a hook of ours receives them: (event, first argument, keywords)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any, dict[str, Any]]] = []

    def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
        self.seen.append(("llm_start", prompt, kwargs))

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.seen.append(("llm_new_token", token, kwargs))

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self.seen.append(("llm_end", response, kwargs))

    def on_error(self, error: BaseException, **kwargs: Any) -> None:
        self.seen.append(("error", error, kwargs))

    def on_run_start(self, prompt: str, **kwargs: Any) -> None:
        self.seen.append(("run_start", prompt, kwargs))

    def on_run_end(self, answer: str, **kwargs: Any) -> None:
        self.seen.append(("run_end", answer, kwargs))

    def named(self, event: str) -> list[tuple[str, Any, dict[str, Any]]]:
        return [seen for seen in self.seen if seen[0] == event]


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _without_ts(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: value for key, value in record.items() if key != "ts"} for record in records]


def _latency_count(metrics: MetricsCallback) -> int:
    return int(json.loads(metrics.snapshot().to_json())["state"]["latency"]["count"])


def _chain(model: BaseChatModel) -> Any:
    return ChatPromptTemplate.from_messages([("system", "Answer in one word."), ("human", "{question}")]) | model \
        | StrOutputParser()


# -- a chain: metrics and the JSONL log --------------------------------------------------------------------


def test_a_chain_gives_exact_metrics_and_cost(backend: str) -> None:
    metrics = MetricsCallback()
    chain = _chain(PricedFakeChat(messages=iter([_answer(), _answer()])))
    handler = LangChainHandler(metrics)

    answers = [chain.invoke({"question": "Capital of France?"}, config={"callbacks": [handler]}) for _ in range(2)]

    assert answers == ["Paris.", "Paris."]
    figures = metrics.get_metrics()
    assert (figures["total_calls"], figures["completed_calls"], figures["errors"]) == (2, 2, 0)
    assert (figures["prompt_tokens"], figures["completion_tokens"], figures["total_tokens"]) == (200, 40, 240)
    assert (figures["cached_tokens"], figures["reasoning_tokens"]) == (80, 10)
    assert figures["total_cost_usd"] == pytest.approx(2 * COST, rel=1e-9)
    assert (figures["unpriced_calls"], figures["unreported_usage_calls"], figures["open_runs"]) == (0, 0, 0)
    assert _latency_count(metrics) == 2
    assert figures["p50_ttft_ms"] is None  # nothing streamed
    assert list(figures["by_model"]) == [PRICED]  # the model the calls named, as for an RLM's calls
    assert handler._runs == {} and handler._failed_inside == {}


def test_the_log_holds_each_run_with_langchains_ids_tags_and_metadata(backend: str, tmp_path: Path) -> None:
    log = FileLogCallback(tmp_path / "app.jsonl")
    recorder = Recorder()
    chain = _chain(PricedFakeChat(messages=iter([_answer()])))

    chain.invoke({"question": "Capital of France?"},
                 config={"callbacks": [LangChainHandler(log), recorder], "tags": ["eval"], "metadata": {"user": "u-1"}})
    log.close()

    [(_, sequence, _), (_, template, _), (_, model, _), (_, parser, _)] = recorder.events
    assert [event[0] for event in recorder.events] == ["chain_start", "chain_start", "chat_model_start", "chain_start"]
    prompt = "System: Answer in one word.\nHuman: Capital of France?"
    context = {"metadata": {"user": "u-1"}}
    assert _without_ts(_records(tmp_path / "app.jsonl")) == [
        {"event": "run_start", "run_id": sequence, "parent_run_id": None, "model": None,
         "prompt": '{"question": "Capital of France?"}', "kind": "run", "tags": ["eval"], **context,
         "extra": {"name": "RunnableSequence"}},
        {"event": "run_start", "run_id": template, "parent_run_id": sequence, "model": None,
         "prompt": '{"question": "Capital of France?"}', "kind": "run", "tags": ["seq:step:1", "eval"], **context,
         "extra": {"name": "ChatPromptTemplate"}},
        {"event": "run_end", "run_id": template, "parent_run_id": sequence, "model": None, "answer": prompt,
         "kind": "run", "tags": ["seq:step:1", "eval"], **context},
        {"event": "llm_start", "run_id": model, "parent_run_id": sequence, "model": PRICED, "prompt": prompt,
         "tags": ["seq:step:2", "eval"], **context},
        {"event": "llm_end", "run_id": model, "parent_run_id": sequence, "model": PRICED, "response": "Paris.",
         "prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120, "cached_tokens": 40,
         "reasoning_tokens": 5, "ttft_ms": None, "tags": ["seq:step:2", "eval"], **context},
        {"event": "run_start", "run_id": parser, "parent_run_id": sequence, "model": None, "prompt": "Paris.",
         "kind": "run", "tags": ["seq:step:3", "eval"], **context, "extra": {"name": "StrOutputParser"}},
        {"event": "run_end", "run_id": parser, "parent_run_id": sequence, "model": None, "answer": "Paris.",
         "kind": "run", "tags": ["seq:step:3", "eval"], **context},
        {"event": "run_end", "run_id": sequence, "parent_run_id": None, "model": None, "answer": "Paris.",
         "kind": "run", "tags": ["eval"], **context},
    ]


def test_llm_end_gets_the_answer_model_finish_reason_usage_and_tool_calls(backend: str) -> None:
    events, metrics = Events(), MetricsCallback()
    call = {"name": "lookup", "args": {"city": "Paris"}, "id": "call-1", "type": "tool_call"}
    message = AIMessage("", tool_calls=[call], usage_metadata=USAGE,  # type: ignore[arg-type]
                        response_metadata={"model_name": "gpt-4o-mini-2024-07-18", "finish_reason": "tool_calls"})

    FakeMessagesListChatModel(responses=[message]).invoke("Weather?", config={"callbacks": [
        LangChainHandler([events, metrics])]})

    [(_, response, keywords)] = events.named("llm_end")
    assert isinstance(response, LLMResponse)
    assert response == LLMResponse("", "gpt-4o-mini-2024-07-18", Usage(100, 20, 120, 40, 5), "tool_calls", [call])
    assert "ttft_ms" not in keywords and keywords["model"] is None  # not streamed: no TTFT
    # A call that named no model counts under its answer's.
    assert metrics.get_metrics()["by_model"]["gpt-4o-mini-2024-07-18"]["cost_usd"] == pytest.approx(COST, rel=1e-9)


def test_a_model_that_reports_no_usage_has_unknown_tokens_and_cost(backend: str, tmp_path: Path) -> None:
    metrics, log, events = MetricsCallback(), FileLogCallback(tmp_path / "app.jsonl"), Events()

    FakeListChatModel(responses=["Paris."]).invoke("Capital?", config={"callbacks": [
        LangChainHandler([metrics, log, events])]})
    log.close()

    [(_, response, _)] = events.named("llm_end")
    assert response.usage is None
    figures = metrics.get_metrics()
    assert (figures["completed_calls"], figures["unreported_usage_calls"], figures["total_tokens"]) == (1, 1, 0)
    assert (figures["unpriced_calls"], figures["by_model"]["unknown"]["cost_usd"]) == (1, None)
    [end] = [record for record in _records(tmp_path / "app.jsonl") if record["event"] == "llm_end"]
    assert [end[field] for field in ("prompt_tokens", "completion_tokens", "total_tokens")] == [None, None, None]


# -- where the prompt and the model come from ----------------------------------------------------------------


def _started(handler: LangChainHandler, **start: Any) -> tuple[str, dict[str, Any]]:
    events = handler.manager.callbacks[0]
    handler.on_chat_model_start(start.pop("serialized", {}), start.pop("messages", [[HumanMessage("hi")]]),
                                run_id=UUID(int=1), **start)
    [(_, prompt, keywords)] = events.named("llm_start")
    return prompt, keywords


@pytest.mark.parametrize(("start", "model"), [
    ({"metadata": {"ls_model_name": "from-metadata"}, "invocation_params": {"model": "from-params"}},
     "from-metadata"),
    ({"invocation_params": {"model": "from-params", "model_name": "other"}}, "from-params"),
    ({"invocation_params": {"model_name": "from-params-name"}}, "from-params-name"),
    ({"serialized": {"kwargs": {"model_name": "from-serialized"}}}, "from-serialized"),
    ({"serialized": {"kwargs": {}}, "invocation_params": {"model": ""}}, None),
])
def test_the_model_is_found_where_langchain_puts_it(start: dict[str, Any], model: str | None) -> None:
    _, keywords = _started(LangChainHandler(Events()), **start)
    assert keywords["model"] == model


def test_metadata_loses_only_langchains_tracing_keys() -> None:
    metadata = {"user": "u-1", "ls_provider": "openai", "ls_model_name": "m", "lc_versions": {"x": "1"}}
    _, keywords = _started(LangChainHandler(Events()), metadata=metadata, tags=["a"])
    assert (keywords["metadata"], keywords["tags"]) == ({"user": "u-1"}, ["a"])
    assert keywords["run_id"] == str(UUID(int=1)) and keywords["parent_run_id"] is None


MESSAGE_LISTS = [
    [SystemMessage("Be brief."), HumanMessage("Capital?"), AIMessage("Paris."), HumanMessage("And Italy?")],
    [HumanMessage([{"type": "text", "text": "Look: "}, {"type": "image_url", "image_url": {"url": "x"}}])],
    [AIMessage("", tool_calls=[{"name": "f", "args": {"a": 1}, "id": "1"}]),
     ToolMessage("42", tool_call_id="1"), ChatMessage(role="critic", content="Hm.")],
]


@pytest.mark.parametrize("messages", MESSAGE_LISTS)
def test_the_prompt_is_the_messages_as_get_buffer_string_writes_them(messages: list[BaseMessage]) -> None:
    prompt, _ = _started(LangChainHandler(Events()), messages=[messages])
    assert prompt == get_buffer_string(messages)


def test_several_message_lists_or_prompts_are_joined_with_a_blank_line() -> None:
    prompt, _ = _started(LangChainHandler(Events()), messages=MESSAGE_LISTS[:2])
    assert prompt == get_buffer_string(MESSAGE_LISTS[0]) + "\n\n" + get_buffer_string(MESSAGE_LISTS[1])
    events = Events()
    LangChainHandler(events).on_llm_start({}, ["one", "two"], run_id=UUID(int=2))
    assert [prompt for _, prompt, _ in events.named("llm_start")] == ["one\n\ntwo"]


# -- streaming and TTFT ------------------------------------------------------------------------------------


def test_a_stream_gives_tokens_ttft_and_the_last_chunks_usage(backend: str, tmp_path: Path) -> None:
    metrics, log, events = MetricsCallback(), FileLogCallback(tmp_path / "app.jsonl"), Events()
    model = StreamingChat(tokens=["Pa", "ris", "."], delay=0.05)
    started = time.perf_counter()

    chunks = [chunk.content for chunk in model.stream("Capital?", config={"callbacks": [
        LangChainHandler([metrics, log, events])]})]
    elapsed_ms = (time.perf_counter() - started) * 1000
    log.close()

    assert "".join(chunks) == "Paris."  # type: ignore[arg-type]
    assert [token for _, token, _ in events.named("llm_new_token")] == ["Pa", "ris", "."]
    [(_, response, keywords)] = events.named("llm_end")
    assert response.usage == Usage(100, 20, 120, 40, 5)
    assert 50 <= keywords["ttft_ms"] < elapsed_ms
    figures = metrics.get_metrics()
    assert (figures["tokens_streamed"], figures["total_tokens"]) == (3, 120)
    assert figures["p50_ttft_ms"] == pytest.approx(keywords["ttft_ms"], rel=0.01)
    assert figures["total_cost_usd"] == pytest.approx(COST, rel=1e-9)
    [end] = [record for record in _records(tmp_path / "app.jsonl") if record["event"] == "llm_end"]
    assert end["ttft_ms"] == keywords["ttft_ms"]


def test_a_generic_fake_stream_without_usage_still_gives_ttft(backend: str) -> None:
    metrics = MetricsCallback()
    model = PricedFakeChat(messages=iter(["Paris is in France"]))

    chunks = list(model.stream("Where?", config={"callbacks": [LangChainHandler(metrics)]}))

    figures = metrics.get_metrics()
    assert len(chunks) == 7  # split on whitespace, the spaces included
    assert (figures["tokens_streamed"], figures["unreported_usage_calls"], _latency_count(metrics)) == (7, 1, 1)
    assert figures["p50_ttft_ms"] is not None


def test_astream_and_ainvoke_run_our_hooks_on_the_event_loop_in_order(backend: str) -> None:
    metrics, events = MetricsCallback(), Events()
    threads: list[int] = []

    class Threads(BaseCallback):
        def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
            threads.append(threading.get_ident())

    handler = LangChainHandler([metrics, events, Threads()])
    model = StreamingChat(tokens=[f"t{i} " for i in range(20)], delay=0.02)

    async def main() -> int:
        async for _ in model.astream("Go", config={"callbacks": [handler]}):
            pass
        await asyncio.gather(*(_chain(model).ainvoke({"question": "q"}, config={"callbacks": [handler]})
                               for _ in range(4)))
        await handler.wait_pending()
        return threading.get_ident()

    loop_thread = asyncio.run(main())

    assert threads == [loop_thread] * 20
    tokens = [token for _, token, keywords in events.named("llm_new_token")]
    assert tokens == [f"t{i} " for i in range(20)]
    figures = metrics.get_metrics()
    assert (figures["total_calls"], figures["completed_calls"], figures["tokens_streamed"]) == (5, 5, 20)
    assert (figures["total_tokens"], figures["open_runs"]) == (5 * 120, 0)
    ttfts = [keywords.get("ttft_ms") for _, _, keywords in events.named("llm_end")]
    assert ttfts[0] >= 20 and ttfts[1:] == [None] * 4
    assert handler._runs == {}


def test_our_async_hooks_are_awaited_with_wait_pending(backend: str) -> None:
    seen: list[str] = []

    class AsyncTokens(BaseCallback):
        async def on_llm_end(self, response: Any, **kwargs: Any) -> None:
            await asyncio.sleep(0.01)
            seen.append(str(response))

    handler = LangChainHandler(AsyncTokens())

    async def main() -> None:
        await PricedFakeChat(messages=iter(["Paris."])).ainvoke("Capital?", config={"callbacks": [handler]})
        await handler.wait_pending()

    asyncio.run(main())
    assert seen == ["Paris."]


def test_a_batch_on_threads_counts_every_call(backend: str) -> None:
    metrics = MetricsCallback()
    handler = LangChainHandler(metrics)
    model = FakeMessagesListChatModel(responses=[_answer()] * 16)

    model.batch([f"q{i}" for i in range(16)], config={"callbacks": [handler], "max_concurrency": 8})

    figures = metrics.get_metrics()
    assert (figures["total_calls"], figures["completed_calls"], figures["total_tokens"]) == (16, 16, 16 * 120)
    assert _latency_count(metrics) == 16 and handler._runs == {}


# -- tools and retrievers ------------------------------------------------------------------------------------


@tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@tool
def broken(city: str) -> str:
    """Fails."""
    raise ValueError(f"no weather for {city}")


def test_a_tool_call_fires_tool_start_and_end(backend: str, tmp_path: Path) -> None:
    metrics, log, recorder = MetricsCallback(), FileLogCallback(tmp_path / "app.jsonl"), Recorder()

    assert add.invoke({"a": 2, "b": 3}, config={"callbacks": [LangChainHandler([metrics, log]), recorder]}) == 5
    log.close()

    [(_, run_id, _)] = recorder.events
    assert _without_ts(_records(tmp_path / "app.jsonl")) == [
        {"event": "tool_start", "run_id": run_id, "parent_run_id": None, "tool_name": "add",
         "tool_input": {"a": 2, "b": 3}, "tags": [], "metadata": {}},
        {"event": "tool_end", "run_id": run_id, "parent_run_id": None, "tool_name": "add", "tool_output": 5,
         "tags": [], "metadata": {}},
    ]
    figures = metrics.get_metrics()
    assert (figures["tool_calls"], figures["tool_results"], figures["errors"]) == (1, 1, 0)


def test_a_tool_called_by_the_model_hands_back_the_tool_messages_content(backend: str) -> None:
    recorded: list[tuple[str, Any]] = []

    class Tools(BaseCallback):
        def on_tool_end(self, tool_name: str, tool_output: Any, **kwargs: Any) -> None:
            recorded.append((tool_name, tool_output))

    call = {"name": "add", "args": {"a": 1, "b": 1}, "id": "call-1", "type": "tool_call"}
    output = add.invoke(call, config={"callbacks": [LangChainHandler(Tools())]})

    assert isinstance(output, ToolMessage) and recorded == [("add", "2")]


def test_a_failing_tool_fires_one_error_with_its_name_and_still_raises(backend: str, tmp_path: Path) -> None:
    metrics, log, recorder = MetricsCallback(), FileLogCallback(tmp_path / "app.jsonl"), Recorder()
    handler = LangChainHandler([metrics, log])
    chain = RunnableLambda(lambda city: {"city": city}) | broken

    with pytest.raises(ValueError, match="no weather for Paris"):
        chain.invoke("Paris", config={"callbacks": [handler, recorder]})
    log.close()

    tool_run = next(run_id for hook, run_id, _ in recorder.events if hook == "tool_start")
    errors = [record for record in _records(tmp_path / "app.jsonl") if record["event"] == "error"]
    assert [(error["run_id"], error["model"], error["error"], error["extra"]) for error in errors] == [
        (tool_run, None, {"type": "ValueError", "message": "no weather for Paris"}, {"tool_name": "broken"})]
    figures = metrics.get_metrics()
    assert (figures["tool_calls"], figures["tool_results"], figures["errors"]) == (1, 0, 1)
    assert handler._runs == {} and handler._failed_inside == {}


class Shelf(BaseRetriever):
    def _get_relevant_documents(self, query: str, *, run_manager: Any) -> list[Document]:
        return [Document(f"{query} one"), Document(f"{query} two")]


def test_a_retriever_fires_memory_recall_with_the_documents_text(backend: str, tmp_path: Path) -> None:
    metrics, log = MetricsCallback(), FileLogCallback(tmp_path / "app.jsonl")

    Shelf().invoke("cats", config={"callbacks": [LangChainHandler([metrics, log])], "metadata": {"k": 1}})
    log.close()

    [record] = _records(tmp_path / "app.jsonl")
    assert (record["event"], record["query"], record["results"], record["metadata"]) == (
        "memory_recall", "cats", ["cats one", "cats two"], {"k": 1})
    assert metrics.get_metrics()["memory_recalls"] == 1


# -- errors --------------------------------------------------------------------------------------------------


def test_a_failing_model_in_a_chain_counts_one_error(backend: str, tmp_path: Path) -> None:
    metrics, log, recorder = MetricsCallback(), FileLogCallback(tmp_path / "app.jsonl"), Recorder()
    handler = LangChainHandler([metrics, log])

    with pytest.raises(RuntimeError, match="the model is down"):
        _chain(FailingChat()).invoke({"question": "q"}, config={"callbacks": [handler, recorder]})
    log.close()

    model_run = next(run_id for hook, run_id, _ in recorder.events if hook == "chat_model_start")
    records = _records(tmp_path / "app.jsonl")
    assert [record["event"] for record in records] == ["run_start", "run_start", "run_end", "llm_start", "error"]
    assert (records[-1]["run_id"], records[-1]["error"]["type"]) == (model_run, "RuntimeError")
    figures = metrics.get_metrics()
    assert (figures["total_calls"], figures["completed_calls"], figures["errors"], figures["open_runs"]) == (1, 0, 1, 0)
    assert handler._runs == {} and handler._failed_inside == {}


def test_a_failing_step_of_a_chain_is_reported_once_by_the_step(backend: str) -> None:
    events = Events()
    recorder = Recorder()

    def fail(_: Any) -> str:
        raise KeyError("missing")

    chain = RunnableLambda(lambda x: x, name="first") | RunnableLambda(fail, name="second")
    with pytest.raises(KeyError):
        chain.invoke("x", config={"callbacks": [LangChainHandler(events), recorder]})

    second = recorder.events[2][1]
    assert [(error.args, keywords["run_id"]) for _, error, keywords in events.named("error")] == [
        (("missing",), second)]


def test_parallel_steps_failing_together_are_two_errors(backend: str) -> None:
    events = Events()
    handler = LangChainHandler(events)

    def fail_now(_: Any) -> str:
        raise KeyError("now")

    def fail_later(_: Any) -> str:
        time.sleep(0.05)
        raise ValueError("later")

    with pytest.raises(KeyError):
        RunnableParallel(a=fail_now, b=fail_later).invoke(1, config={"callbacks": [handler]})

    assert sorted(type(error).__name__ for _, error, _ in events.named("error")) == ["KeyError", "ValueError"]
    assert handler._failed_inside == {} and handler._runs == {}


def test_a_chain_that_recovers_from_a_failing_step_forgets_that_failure(backend: str) -> None:
    events = Events()
    handler = LangChainHandler(events)

    def fail(_: Any) -> str:
        raise KeyError("x")

    def recover(value: Any, config: Any) -> str:
        try:
            return RunnableLambda(fail).invoke(value, config)
        except KeyError:
            return "recovered"

    assert RunnableLambda(recover).invoke(1, config={"callbacks": [handler]}) == "recovered"
    assert len(events.named("error")) == 1 and handler._failed_inside == {} and handler._runs == {}


def test_a_failure_under_a_run_the_handler_does_not_see_is_not_kept(backend: str) -> None:
    events = Events()
    handler = LangChainHandler(events)
    chain = _chain(FailingChat().with_config(callbacks=[handler]))

    with pytest.raises(RuntimeError):
        chain.invoke({"question": "q"})

    assert [event for event, _, _ in events.seen] == ["llm_start", "error"]
    assert handler._failed_inside == {} and handler._runs == {}


def test_an_end_without_generations_has_unknown_usage() -> None:
    events = Events()
    LangChainHandler(events).on_llm_end(LLMResult(generations=[]), run_id=UUID(int=3))
    [(_, response, keywords)] = events.named("llm_end")
    assert (response, response.usage, keywords["run_id"]) == ("", None, str(UUID(int=3)))


def test_a_hook_of_ours_that_raises_never_breaks_the_chain(backend: str, caplog: pytest.LogCaptureFixture) -> None:
    metrics = MetricsCallback()

    class Broken(BaseCallback):
        def on_llm_end(self, response: Any, **kwargs: Any) -> None:
            raise RuntimeError("hook failed")

    class Loud(BaseCallback):
        raise_error = True

        def on_run_end(self, answer: str, **kwargs: Any) -> None:
            raise RuntimeError("loud hook failed")

    handler = LangChainHandler([Broken(), Loud(), metrics])
    with caplog.at_level(logging.ERROR, logger="rlm_toolkit"):
        answer = _chain(PricedFakeChat(messages=iter([_answer()]))).invoke({"question": "q"},
                                                                           config={"callbacks": [handler]})

    assert answer == "Paris."
    assert handler.manager.handler_errors == 1
    assert metrics.get_metrics()["handler_errors"] == 1
    assert metrics.get_metrics()["completed_calls"] == 1
    assert len([record for record in caplog.records if record.name == "rlm_toolkit"]) == 1


# -- construction and import ---------------------------------------------------------------------------------


def test_a_manager_is_used_as_it_is_and_bad_callbacks_are_refused() -> None:
    manager = CallbackManager([MetricsCallback()])
    assert LangChainHandler(manager).manager is manager
    assert LangChainHandler([MetricsCallback(), Events()]).manager.callbacks[1].__class__ is Events
    with pytest.raises(CallbackConfigError, match="backend"):
        LangChainHandler(manager, backend="python")
    for bad in (42, "metrics", MetricsCallback, [MetricsCallback(), object()]):
        with pytest.raises(CallbackConfigError):
            LangChainHandler(bad)  # type: ignore[arg-type]
    assert LangChainHandler(MetricsCallback(), backend="python").manager.backend == "python"
    assert LangChainHandler.run_inline is True


def test_importing_it_without_langchain_core_says_how_to_install_it() -> None:
    script = (
        "import sys\n"
        "sys.modules['langchain_core'] = None\n"
        "from rlm_toolkit.errors import MissingExtraError\n"
        "try:\n"
        "    import rlm_toolkit.integrations.langchain\n"
        "except MissingExtraError as error:\n"
        "    print(isinstance(error, ImportError), error)\n"
    )
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert child.stdout.strip() == (
        "True rlm_toolkit.integrations.langchain needs langchain-core: pip install 'rlm_toolkit[langchain]'")


# -- the other way: a LangChain handler as one of our callbacks ----------------------------------------------


class LangChainRecorder(BaseCallbackHandler):
    """Every LangChain hook our events reach, with what a LangChain handler reads from them."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def on_chain_start(self, serialized: Any, inputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None,
                       **kwargs: Any) -> None:
        self.calls.append(("chain_start", serialized["name"], inputs, run_id, parent_run_id))

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.calls.append(("chain_end", outputs, run_id))

    def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: UUID,
                            parent_run_id: UUID | None = None, metadata: Any = None, **kwargs: Any) -> None:
        self.calls.append(("chat_model_start", get_buffer_string(messages[0]), metadata["ls_model_name"], run_id,
                           parent_run_id))

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        message = response.generations[0][0].message  # type: ignore[attr-defined]
        self.calls.append(("llm_end", message.content, message.usage_metadata, run_id))

    def on_tool_start(self, serialized: Any, input_str: str, *, run_id: UUID, parent_run_id: UUID | None = None,
                      inputs: Any = None, **kwargs: Any) -> None:
        self.calls.append(("tool_start", serialized["name"], input_str, inputs, parent_run_id))

    def on_tool_end(self, output: Any, **kwargs: Any) -> None:
        self.calls.append(("tool_end", output))

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self.calls.append(("llm_error", type(error).__name__, run_id))

    def on_tool_error(self, error: BaseException, *, name: str | None = None, **kwargs: Any) -> None:
        self.calls.append(("tool_error", type(error).__name__, name))

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self.calls.append(("chain_error", type(error).__name__, run_id))

    def on_retriever_start(self, serialized: Any, query: str, **kwargs: Any) -> None:
        self.calls.append(("retriever_start", query))

    def on_retriever_end(self, documents: Any, **kwargs: Any) -> None:
        self.calls.append(("retriever_end", [document.page_content for document in documents]))


def test_a_langchain_handler_sees_an_rlm_run_with_a_tool(server: Any, backend: str) -> None:
    from rlm_toolkit import RLM
    from rlm_toolkit.integrations.langchain import LangChainCallback

    def shout(text: str) -> str:
        """Upper-case the text."""
        return text.upper()

    recorder, events = LangChainRecorder(), Events()
    rlm = RLM.from_openai(PRICED, [LangChainCallback(recorder), events], base_url=server.base_url,
                          api_key=server.api_key, tools=[shout])
    result = rlm.run('shout {"text": "hey"}')

    run = UUID(result.run_id)
    [first_call, second_call] = [UUID(keywords["run_id"]) for _, _, keywords in events.named("llm_start")]
    [first_usage, second_usage] = [_usage_dict(response.usage) for _, response, _ in events.named("llm_end")]
    assert recorder.calls == [
        ("chain_start", "RLM", {"input": 'shout {"text": "hey"}'}, run, None),
        ("chat_model_start", 'Human: shout {"text": "hey"}', PRICED, first_call, run),
        ("llm_end", "", first_usage, first_call),
        ("tool_start", "shout", '{"text": "hey"}', {"text": "hey"}, run),
        ("tool_end", "HEY"),
        ("chat_model_start", 'Human: shout {"text": "hey"}', PRICED, second_call, run),
        ("llm_end", "Tool results: shout -> HEY", second_usage, second_call),
        ("chain_end", {"output": "Tool results: shout -> HEY"}, run),
    ]
    assert first_usage["total_tokens"] > 0


def _usage_dict(usage: Usage) -> dict[str, Any]:
    return {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens, "input_token_details": {"cache_read": usage.cached_tokens},
            "output_token_details": {"reasoning": usage.reasoning_tokens}}


def test_a_failed_llm_call_reaches_on_llm_error(server: Any, backend: str) -> None:
    from rlm_toolkit import RLM
    from rlm_toolkit.errors import LLMCallError
    from rlm_toolkit.integrations.langchain import LangChainCallback

    recorder = LangChainRecorder()
    rlm = RLM.from_openai(PRICED, [LangChainCallback(recorder)], base_url=server.base_url, api_key=server.api_key,
                          max_attempts=1)
    server.fail_next(400)
    with pytest.raises(LLMCallError):
        rlm.run("hello")

    call = next(call[3] for call in recorder.calls if call[0] == "chat_model_start")
    assert [entry[0] for entry in recorder.calls] == ["chain_start", "chat_model_start", "llm_error"]
    assert recorder.calls[-1] == ("llm_error", "LLMCallError", call)


def test_metrics_through_langchain_and_back_equal_the_direct_ones(server: Any, backend: str) -> None:
    from rlm_toolkit import RLM
    from rlm_toolkit.integrations.langchain import LangChainCallback

    direct, round_trip = MetricsCallback(), MetricsCallback()
    rlm = RLM.from_openai(PRICED, [direct, LangChainCallback(LangChainHandler(round_trip))],
                          base_url=server.base_url, api_key=server.api_key)
    for prompt in ("one", "two words", "a long answer please"):
        rlm.run(prompt)
    list(rlm.stream("stream a long answer"))

    keys = ("total_calls", "completed_calls", "prompt_tokens", "completion_tokens", "total_tokens",
            "tokens_streamed", "total_cost_usd", "errors", "unpriced_calls")
    assert [round_trip.get_metrics()[key] for key in keys] == [direct.get_metrics()[key] for key in keys]
    assert round_trip.get_metrics()["tokens_streamed"] > 0
    assert _latency_count(round_trip) == 4


def test_a_handler_without_on_chat_model_start_gets_on_llm_start_and_async_handlers_are_refused() -> None:
    from langchain_core.callbacks import AsyncCallbackHandler

    from rlm_toolkit.integrations.langchain import LangChainCallback

    prompts: list[Any] = []

    class TextOnly(BaseCallbackHandler):
        def on_llm_start(self, serialized: Any, given: list[str], **kwargs: Any) -> None:
            prompts.append((given, serialized["name"], kwargs["run_id"]))

    manager = CallbackManager([LangChainCallback(TextOnly())])
    manager.on_llm_start("hi", run_id="not-a-uuid", model="m")
    manager.on_llm_start("again", run_id="not-a-uuid", model="m")
    assert [(given, name) for given, name, _ in prompts] == [(["hi"], "m"), (["again"], "m")]
    assert prompts[0][2] == prompts[1][2] and isinstance(prompts[0][2], UUID)
    with pytest.raises(CallbackConfigError, match="AsyncCallbackHandler"):
        LangChainCallback(AsyncCallbackHandler())
    with pytest.raises(CallbackConfigError):
        LangChainCallback(MetricsCallback())  # type: ignore[arg-type]


def test_tool_errors_run_errors_and_recalled_memory_reach_their_langchain_hooks(server: Any, backend: str) -> None:
    from rlm_toolkit import RLM
    from rlm_toolkit.errors import ToolRoundsExceededError
    from rlm_toolkit.integrations.langchain import LangChainCallback
    from rlm_toolkit.memory import BufferMemory

    def get_weather(city: str) -> str:
        """The weather."""
        raise OSError(f"no station in {city}")

    recorder, memory = LangChainRecorder(), BufferMemory()
    memory.store("user", "my city is Oslo")
    rlm = RLM.from_openai(PRICED, [LangChainCallback(recorder)], base_url=server.base_url, api_key=server.api_key,
                          tools=[get_weather], max_tool_rounds=1, memory=memory)
    for _ in range(2):
        server.queue_reply(tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}}])
    with pytest.raises(ToolRoundsExceededError):
        rlm.run("weather?")

    chain_run = recorder.calls[0][3]
    assert [call for call in recorder.calls if call[0].endswith(("_error", "retriever_start", "retriever_end"))] == [
        ("retriever_start", "weather?"),
        ("retriever_end", [json.dumps({"role": "user", "content": "my city is Oslo"})]),
        ("tool_error", "OSError", "get_weather"),
        ("chain_error", "ToolRoundsExceededError", chain_run),
    ]


def test_a_handlers_ignore_flags_are_honoured() -> None:
    from rlm_toolkit.integrations.langchain import LangChainCallback

    class NoLLM(LangChainRecorder):
        ignore_llm = True
        ignore_chain = True

    recorder = NoLLM()
    manager = CallbackManager([LangChainCallback(recorder)])
    manager.on_run_start("p", run_id="r")
    manager.on_llm_start("p", run_id="a", model="m")
    manager.on_llm_new_token("x", run_id="a", model="m")
    manager.on_llm_end(LLMResponse("x"), run_id="a", model="m")
    manager.on_error(LLMCallError("down"), run_id="a")
    manager.on_tool_start("t", {}, run_id="b")
    assert [call[0] for call in recorder.calls] == ["tool_start"]
    assert manager.handler_errors == 0
    everything = LangChainRecorder()
    CallbackManager([LangChainCallback(everything)]).on_run_start("", run_id="batch", kind="batch")
    assert [call[:2] for call in everything.calls] == [("chain_start", "RLM.batch")]


# -- text-completion LLMs and retries ------------------------------------------------------------------------


class CompletionLLM(BaseLLM):
    """A text-completion LLM that reports its usage in ``llm_output``, as OpenAI's completions LLM does, and
    retries ``failures`` connection errors with tenacity, firing ``on_retry`` as LangChain's integrations do."""

    failures: int = 0

    @property
    def _llm_type(self) -> str:
        return "completion-test-llm"

    def _generate(self, prompts: list[str], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> LLMResult:
        attempts: list[int] = []

        def call() -> str:
            attempts.append(1)
            if len(attempts) <= self.failures:
                raise ConnectionError(f"attempt {len(attempts)} failed")
            return "Rome."

        retrying = Retrying(stop=stop_after_attempt(3), wait=wait_none(), reraise=True,
                            retry=retry_if_exception_type(ConnectionError), before_sleep=run_manager.on_retry)
        text = retrying(call)
        return LLMResult(generations=[[Generation(text=text, generation_info={"finish_reason": "stop"})]],
                         llm_output={"model_name": PRICED,
                                     "token_usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}})


def test_a_completion_llm_gives_its_prompt_usage_and_retries(backend: str) -> None:
    events, metrics = Events(), MetricsCallback()
    retries: list[tuple[int, int, str]] = []

    class Retries(BaseCallback):
        def on_retry(self, attempt: int, max_attempts: int, error: BaseException, **kwargs: Any) -> None:
            retries.append((attempt, max_attempts, str(error)))

    answer = CompletionLLM(failures=2).invoke("Capital of Italy?", config={"callbacks": [
        LangChainHandler([events, metrics, Retries()])]})

    assert answer == "Rome."
    assert [prompt for _, prompt, _ in events.named("llm_start")] == ["Capital of Italy?"]
    [(_, response, _)] = events.named("llm_end")
    assert response == LLMResponse("Rome.", PRICED, Usage(7, 2, 9), "stop")
    assert retries == [(1, 3, "attempt 1 failed"), (2, 3, "attempt 2 failed")]
    figures = metrics.get_metrics()
    assert (figures["retries"], figures["completed_calls"], figures["total_tokens"]) == (2, 1, 9)


def test_our_llm_end_reaches_langchain_with_usage_in_both_places_or_none() -> None:
    from rlm_toolkit.integrations.langchain import LangChainCallback

    results: list[LLMResult] = []

    class Results(BaseCallbackHandler):
        def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
            results.append(response)

    manager = CallbackManager([LangChainCallback(Results())])
    manager.on_llm_end(LLMResponse("hi", "gpt-4o", Usage(3, 2, 5, 1, 0), "stop"), run_id="a", model="gpt-4o-mini")
    manager.on_llm_end(LLMResponse("hi", usage=None), run_id="b", model="gpt-4o-mini")

    known, unknown = results
    assert known.llm_output == {"model_name": "gpt-4o",
                                "token_usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
    message = known.generations[0][0].message  # type: ignore[attr-defined]
    assert (message.content, message.response_metadata) == ("hi", {"model_name": "gpt-4o", "finish_reason": "stop"})
    assert message.usage_metadata == {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5,
                                      "input_token_details": {"cache_read": 1},
                                      "output_token_details": {"reasoning": 0}}
    assert unknown.llm_output == {"model_name": "gpt-4o-mini"}
    assert unknown.generations[0][0].message.usage_metadata is None  # type: ignore[attr-defined]


def test_the_console_shows_a_langchain_call(backend: str) -> None:
    import io

    from rlm_toolkit.callbacks import ConsoleCallback

    out = io.StringIO()
    answer = AIMessage("Paris.", usage_metadata={"input_tokens": 5, "output_tokens": 2, "total_tokens": 7})
    PricedFakeChat(messages=iter([answer])).invoke("Capital?", config={"callbacks": [
        LangChainHandler(ConsoleCallback(stream=out))]})

    start, end = out.getvalue().splitlines()
    assert start.endswith('] llm start      gpt-4o-mini  "Human: Capital?"')
    assert 'tokens: 7 (5 prompt + 2 completion)' in end and end.endswith('-> "Paris."')


def test_content_block_tokens_give_their_text_and_a_tool_call_chunk_starts_the_ttft() -> None:
    from langchain_core.messages import ToolCallChunk

    events = Events()
    handler = LangChainHandler(events)
    blocks, tools = UUID(int=10), UUID(int=11)
    for run_id in (blocks, tools):
        handler.on_chat_model_start({}, [[HumanMessage("hi")]], run_id=run_id)
    handler.on_llm_new_token([{"type": "text", "text": "Hel"}, {"type": "image", "url": "x"}, "lo"], run_id=blocks)
    call = ToolCallChunk(name="lookup", args="{", id="1", index=0)
    handler.on_llm_new_token("", chunk=ChatGenerationChunk(message=AIMessageChunk("", tool_call_chunks=[call])),
                             run_id=tools)
    result = LLMResult(generations=[[ChatGeneration(message=AIMessage("Hello"))]])
    for run_id in (blocks, tools):
        handler.on_llm_end(result, run_id=run_id)

    assert [(token, keywords["run_id"]) for _, token, keywords in events.named("llm_new_token")] == [
        ("Hello", str(blocks))]
    ttfts = [keywords["ttft_ms"] for _, _, keywords in events.named("llm_end")]
    assert len(ttfts) == 2 and all(ttft is not None and ttft >= 0 for ttft in ttfts)
