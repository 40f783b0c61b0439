"""OpenTelemetryCallback: real RLM runs against the LocalServer, read back from the SDK's in-memory exporter and
metric reader (and once over OTLP/HTTP): the span tree, names, kinds, attributes, errors, content capture,
metrics, and that no span is left open."""

from __future__ import annotations

import asyncio
import contextvars
import json
import pickle
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from rlm_toolkit import (RLM, LLMCallError, LLMResponse, MissingExtraError, NotPicklableError, ToolRoundsExceededError,
                         Usage)
from rlm_toolkit.callbacks import BaseCallback, CallbackManager, OpenTelemetryCallback
from rlm_toolkit.callbacks.otel import SECONDS_BUCKETS, TOKEN_BUCKETS
from rlm_toolkit.memory import BufferMemory
from rlm_toolkit.secrets import register_secret
from rlm_toolkit.server import LocalServer

MODEL = "gpt-4o"
RUN_ID = "rlm_toolkit.run_id"
CAPTURE_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
CONTENT_KEYS = {"gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.tool.call.arguments",
                "gen_ai.tool.call.result", "rlm_toolkit.memory.query", "rlm_toolkit.memory.messages",
                "rlm_toolkit.memory.content", "exception.message"}


class OpenSpans(SpanProcessor):
    """The spans started and not yet ended."""

    def __init__(self) -> None:
        self.open: dict[int, str] = {}
        self._lock = threading.Lock()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        with self._lock:
            self.open[span.context.span_id] = span.name

    def on_end(self, span: ReadableSpan) -> None:
        with self._lock:
            assert span.context is not None
            del self.open[span.context.span_id]


@dataclass
class Telemetry:
    exporter: InMemorySpanExporter
    open_spans: OpenSpans
    tracer_provider: TracerProvider
    reader: InMemoryMetricReader
    meter_provider: MeterProvider

    def callback(self, **options: Any) -> OpenTelemetryCallback:
        return OpenTelemetryCallback(self.tracer_provider, self.meter_provider, **options)

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.spans() if span.name == name]

    def histogram(self, name: str) -> list[HistogramDataPoint]:
        data = self.reader.get_metrics_data()
        if data is None:
            return []
        points: list[HistogramDataPoint] = []
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        points += metric.data.data_points  # type: ignore[arg-type]
        return points


@pytest.fixture
def telemetry(monkeypatch: pytest.MonkeyPatch) -> Iterator[Telemetry]:
    monkeypatch.delenv(CAPTURE_ENV, raising=False)
    exporter, open_spans = InMemorySpanExporter(), OpenSpans()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(open_spans)
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Telemetry(exporter, open_spans, tracer_provider, reader, meter_provider)
    tracer_provider.shutdown()
    meter_provider.shutdown()


def make_rlm(server: LocalServer, *callbacks: Any, **options: Any) -> RLM:
    options.setdefault("backoff_base", 0.0)
    return RLM.from_openai(MODEL, list(callbacks), base_url=server.base_url, api_key=server.api_key, **options)


def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def parent_id(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def attributes_without_run_id(span: ReadableSpan) -> dict[str, Any]:
    return {key: value for key, value in (span.attributes or {}).items() if key != RUN_ID}


def chat_attributes(server: LocalServer, **more: Any) -> dict[str, Any]:
    return {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": MODEL,
            "server.address": "127.0.0.1", "server.port": server.port, "gen_ai.response.model": MODEL, **more}


# -- the span tree ----------------------------------------------------------------------------------


def test_a_run_with_a_tool_call_is_a_tree_of_genai_spans(backend: str, server: LocalServer,
                                                          telemetry: Telemetry) -> None:
    server.queue_reply(tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}], usage=(11, 4))
    server.queue_reply("It is sunny.", usage=(20, 6))
    result = make_rlm(server, telemetry.callback(), tools=[get_weather]).run("weather?", tags=["nightly"],
                                                                             metadata={"user": "u1", "n": 2})

    first_chat, tool, second_chat, run = telemetry.spans()  # in the order they ended
    assert [span.name for span in (first_chat, tool, second_chat, run)] == [
        "chat gpt-4o", "execute_tool get_weather", "chat gpt-4o", "invoke_agent"]
    assert [span.kind for span in (first_chat, tool, second_chat, run)] == [
        SpanKind.CLIENT, SpanKind.INTERNAL, SpanKind.CLIENT, SpanKind.INTERNAL]
    assert parent_id(run) is None
    assert [parent_id(span) for span in (first_chat, tool, second_chat)] == [span_id(run)] * 3
    assert len({span.context.trace_id for span in telemetry.spans() if span.context is not None}) == 1
    assert run.attributes is not None and run.attributes[RUN_ID] == result.run_id
    assert len({span.attributes[RUN_ID] for span in telemetry.spans() if span.attributes is not None}) == 4

    assert attributes_without_run_id(run) == {
        "gen_ai.operation.name": "invoke_agent", "gen_ai.provider.name": "openai", "gen_ai.request.model": MODEL,
        "rlm_toolkit.tags": ("nightly",), "rlm_toolkit.metadata.user": "u1", "rlm_toolkit.metadata.n": 2}
    assert attributes_without_run_id(first_chat) == chat_attributes(
        server, **{"gen_ai.response.finish_reasons": ("tool_calls",), "gen_ai.usage.input_tokens": 11,
                   "gen_ai.usage.output_tokens": 4})
    assert attributes_without_run_id(second_chat) == chat_attributes(
        server, **{"gen_ai.response.finish_reasons": ("stop",), "gen_ai.usage.input_tokens": 20,
                   "gen_ai.usage.output_tokens": 6})
    assert attributes_without_run_id(tool) == {
        "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "get_weather", "gen_ai.tool.type": "function"}
    assert [span.status.status_code for span in telemetry.spans()] == [StatusCode.UNSET] * 4
    assert telemetry.open_spans.open == {}


def test_an_application_span_around_the_run_is_its_parent(server: LocalServer, telemetry: Telemetry) -> None:
    tracer = telemetry.tracer_provider.get_tracer("app")
    rlm = make_rlm(server, telemetry.callback())
    with tracer.start_as_current_span("handle request") as app_span:
        rlm.run("hello")
    chat, run, app = telemetry.spans()
    assert (chat.name, run.name, app.name) == ("chat gpt-4o", "invoke_agent", "handle request")
    assert parent_id(run) == app_span.get_span_context().span_id
    assert parent_id(chat) == span_id(run)


def test_a_nested_run_in_a_tool_is_a_child_of_the_tool_span(backend: str, server: LocalServer,
                                                            telemetry: Telemetry) -> None:
    callback = telemetry.callback()
    inner = make_rlm(server, callback)

    def ask_inner(question: str) -> str:
        """Ask another model."""
        with ThreadPoolExecutor(1) as pool:  # the run tree holds across threads too
            return pool.submit(contextvars.copy_context().run, inner.run, question).result().answer

    make_rlm(server, callback, tools=[ask_inner]).run("please ask_inner now")
    spans = {span_id(span): span for span in telemetry.spans()}
    inner_run = [span for span in spans.values() if span.name == "invoke_agent" and span.parent is not None]
    assert len(inner_run) == 1
    tool = spans[parent_id(inner_run[0])]  # type: ignore[index]
    assert tool.name == "execute_tool ask_inner"
    outer_run = spans[parent_id(tool)]  # type: ignore[index]
    assert outer_run.name == "invoke_agent" and outer_run.parent is None
    assert [span.name for span in telemetry.spans() if parent_id(span) == span_id(inner_run[0])] == ["chat gpt-4o"]
    assert len(spans) == 6 and telemetry.open_spans.open == {}


@pytest.mark.parametrize("driver", ["run", "arun"])
def test_spans_a_tools_code_starts_are_children_of_the_tool_span(backend: str, server: LocalServer,
                                                                  telemetry: Telemetry, driver: str) -> None:
    tracer = telemetry.tracer_provider.get_tracer("tool code")

    def lookup(query: str) -> str:
        """Look something up."""
        with tracer.start_as_current_span("lookup request"):
            return "found"

    async def alookup(query: str) -> str:
        """Look something up."""
        with tracer.start_as_current_span("lookup request"):
            await asyncio.sleep(0)
            return "found"

    tool = lookup if driver == "run" else alookup
    server.queue_reply(tool_calls=[{"name": tool.__name__, "arguments": {"query": "q"}}])
    rlm = make_rlm(server, telemetry.callback(), tools=[tool])
    if driver == "run":
        rlm.run("go")
    else:
        asyncio.run(rlm.arun("go"))
    [request] = telemetry.named("lookup request")
    [tool_span] = telemetry.named(f"execute_tool {tool.__name__}")
    assert parent_id(request) == span_id(tool_span)
    assert trace.get_current_span().get_span_context().is_valid is False  # the tool's context did not leak
    assert len(telemetry.spans()) == 5 and telemetry.open_spans.open == {}


def test_a_batch_is_the_parent_of_its_runs_in_tasks_and_in_a_worker_thread(backend: str, server: LocalServer,
                                                                           telemetry: Telemetry) -> None:
    rlm = make_rlm(server, telemetry.callback())
    rlm.batch(["a", "b", "c"], max_concurrency=2)

    async def batch_from_a_running_loop() -> None:  # batch() then runs its loop in a worker thread
        rlm.batch(["d", "e"])

    asyncio.run(batch_from_a_running_loop())
    batches = telemetry.named("invoke_workflow batch")
    assert len(batches) == 2
    for batch, size in zip(batches, (3, 2)):
        assert parent_id(batch) is None
        assert attributes_without_run_id(batch) == {"gen_ai.operation.name": "invoke_workflow",
                                                    "gen_ai.workflow.name": "batch", "gen_ai.request.model": MODEL}
        runs = [span for span in telemetry.named("invoke_agent") if parent_id(span) == span_id(batch)]
        assert len(runs) == size
        for run in runs:
            assert [span.name for span in telemetry.spans() if parent_id(span) == span_id(run)] == ["chat gpt-4o"]
    assert len(telemetry.spans()) == 2 + 5 * 2 and telemetry.open_spans.open == {}


def test_runs_in_many_threads_sharing_one_callback_each_get_their_own_tree(backend: str, server: LocalServer,
                                                                          telemetry: Telemetry) -> None:
    rlm = make_rlm(server, telemetry.callback())
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(rlm.run, [f"prompt {index}" for index in range(24)]))
    runs = {span.attributes[RUN_ID]: span for span in telemetry.named("invoke_agent") if span.attributes is not None}
    assert sorted(runs) == sorted(result.run_id for result in results)
    for run in runs.values():
        assert parent_id(run) is None
        assert [span.name for span in telemetry.spans() if parent_id(span) == span_id(run)] == ["chat gpt-4o"]
    assert len(telemetry.spans()) == 48 and telemetry.open_spans.open == {}


# -- errors and retries -----------------------------------------------------------------------------


def test_retries_are_events_of_the_llm_span(backend: str, server: LocalServer, telemetry: Telemetry) -> None:
    server.fail_next(503, count=2)
    make_rlm(server, telemetry.callback(), max_attempts=3).run("hello")
    chat, run = telemetry.spans()
    assert chat.status.status_code == StatusCode.UNSET
    assert [(event.name, dict(event.attributes or {})) for event in chat.events] == [
        ("rlm_toolkit.retry", {"rlm_toolkit.retry.attempt": attempt, "rlm_toolkit.retry.max_attempts": 3,
                               "error.type": "openai.InternalServerError"})
        for attempt in (1, 2)]
    assert run.events == ()


def test_a_call_that_fails_for_good_ends_its_span_and_the_run_span_with_an_error(
        backend: str, server: LocalServer, telemetry: Telemetry) -> None:
    server.fail_next(500, count=2)
    with pytest.raises(LLMCallError):
        make_rlm(server, telemetry.callback(), max_attempts=2).run("hello")
    chat, run = telemetry.spans()
    assert (chat.name, run.name) == ("chat gpt-4o", "invoke_agent")
    for span in (chat, run):
        assert span.status.status_code == StatusCode.ERROR
        assert span.status.description is None  # error messages are content: not captured by default
        assert span.attributes is not None and span.attributes["error.type"] == "rlm_toolkit.errors.LLMCallError"
    assert len(chat.events) == 1
    [duration] = telemetry.histogram("gen_ai.client.operation.duration")
    assert duration.count == 1
    assert dict(duration.attributes) == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": MODEL,
        "server.address": "127.0.0.1", "server.port": server.port, "error.type": "rlm_toolkit.errors.LLMCallError"}
    assert telemetry.histogram("gen_ai.client.token.usage") == []
    assert telemetry.open_spans.open == {}


def test_failed_tools_end_their_spans_with_the_error_type(backend: str, server: LocalServer,
                                                          telemetry: Telemetry) -> None:
    def explode(reason: str) -> str:
        """Always fails."""
        raise ValueError(reason)

    server.queue_reply(tool_calls=[{"name": "explode", "arguments": {"reason": "boom"}},
                                   {"name": "no_such_tool", "arguments": {}}])
    server.queue_reply("done")
    make_rlm(server, telemetry.callback(), tools=[explode]).run("go")
    refused, failed = sorted((span for span in telemetry.spans() if span.name.startswith("execute_tool")),
                             key=lambda span: span.name, reverse=True)
    assert (refused.name, failed.name) == ("execute_tool no_such_tool", "execute_tool explode")
    assert [span.attributes["error.type"] for span in (refused, failed) if span.attributes is not None] == [
        "rlm_toolkit.errors.ToolCallError", "ValueError"]
    assert [span.status.status_code for span in (refused, failed)] == [StatusCode.ERROR] * 2
    run = telemetry.named("invoke_agent")[0]
    assert parent_id(refused) == parent_id(failed) == span_id(run)
    assert run.status.status_code == StatusCode.UNSET  # the run went on and answered
    assert telemetry.open_spans.open == {}


# -- content ----------------------------------------------------------------------------------------


def content_attributes(telemetry: Telemetry) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for span in telemetry.spans():
        found.update({key: value for key, value in (span.attributes or {}).items() if key in CONTENT_KEYS})
        for event in span.events:
            found.update({key: value for key, value in (event.attributes or {}).items() if key in CONTENT_KEYS})
    return found


def run_with_every_kind_of_content(server: LocalServer, callback: OpenTelemetryCallback) -> None:
    server.fail_next(503)
    server.queue_reply(tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}, "id": "call_1"}])
    server.queue_reply("Sunny in Oslo.")
    make_rlm(server, callback, tools=[get_weather], memory=BufferMemory()).run("weather in Oslo?")


def test_content_is_not_captured_by_default(backend: str, server: LocalServer, telemetry: Telemetry,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CAPTURE_ENV, "no")
    run_with_every_kind_of_content(server, telemetry.callback())
    assert len(telemetry.spans()) == 4
    assert content_attributes(telemetry) == {}
    run = telemetry.named("invoke_agent")[0]
    assert [(event.name, dict(event.attributes or {})) for event in run.events] == [
        ("rlm_toolkit.memory.recall", {"rlm_toolkit.memory.message_count": 0}),
        ("rlm_toolkit.memory.store", {"rlm_toolkit.memory.role": "user"}),
        ("rlm_toolkit.memory.store", {"rlm_toolkit.memory.role": "assistant"})]


@pytest.mark.parametrize("switch", ["argument", "TRUE", "true"])
def test_content_is_captured_with_the_flag_or_the_environment_variable(
        backend: str, server: LocalServer, telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch,
        switch: str) -> None:
    if switch == "argument":
        callback = telemetry.callback(capture_content=True)
    else:
        monkeypatch.setenv(CAPTURE_ENV, switch)
        callback = telemetry.callback()
    run_with_every_kind_of_content(server, callback)
    first_chat, tool, second_chat, run = telemetry.spans()
    user_prompt = json.dumps([{"role": "user", "parts": [{"type": "text", "content": "weather in Oslo?"}]}])
    assert [span.attributes["gen_ai.input.messages"] for span in (first_chat, second_chat, run)
            if span.attributes is not None] == [user_prompt] * 3
    assert first_chat.attributes is not None and json.loads(str(first_chat.attributes["gen_ai.output.messages"])) == [
        {"role": "assistant", "finish_reason": "tool_calls",
         "parts": [{"type": "tool_call", "id": "call_1", "name": "get_weather", "arguments": '{"city":"Oslo"}'}]}]
    answer = [{"role": "assistant", "parts": [{"type": "text", "content": "Sunny in Oslo."}], "finish_reason": "stop"}]
    assert [json.loads(str(span.attributes["gen_ai.output.messages"])) for span in (second_chat, run)
            if span.attributes is not None] == [answer] * 2
    assert tool.attributes is not None
    assert (tool.attributes["gen_ai.tool.call.arguments"], tool.attributes["gen_ai.tool.call.result"]) == (
        '{"city": "Oslo"}', "sunny in Oslo")
    assert [dict(event.attributes or {}) for event in run.events] == [
        {"rlm_toolkit.memory.message_count": 0, "rlm_toolkit.memory.query": "weather in Oslo?",
         "rlm_toolkit.memory.messages": "[]"},
        {"rlm_toolkit.memory.role": "user", "rlm_toolkit.memory.content": "weather in Oslo?"},
        {"rlm_toolkit.memory.role": "assistant", "rlm_toolkit.memory.content": "Sunny in Oslo."}]
    [retry] = first_chat.events
    assert retry.attributes is not None and str(retry.attributes["exception.message"]).startswith("Error code: 503")


def test_captured_content_is_redacted(backend: str, server: LocalServer, telemetry: Telemetry) -> None:
    secret = "otel-test-secret-7f3a9c2e41"
    register_secret(secret)
    make_rlm(server, telemetry.callback(capture_content=True)).run(f"my password is {secret}")
    chat, run = telemetry.spans()
    for span in (chat, run):
        assert span.attributes is not None
        captured = json.loads(str(span.attributes["gen_ai.input.messages"]))
        assert captured == [{"role": "user", "parts": [{"type": "text", "content": "my password is [REDACTED]"}]}]
        assert secret not in str(span.attributes["gen_ai.output.messages"])
        assert "[REDACTED]" in str(span.attributes["gen_ai.output.messages"])


# -- async, streaming, metrics ----------------------------------------------------------------------


class FirstChunkTimes(BaseCallback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_llm_end(self, response: Any, *, ttft_ms: float | None = None, **kwargs: Any) -> None:
        assert ttft_ms is not None
        self.seconds.append(ttft_ms / 1000)


async def test_astream_and_stream_record_the_time_to_first_chunk(backend: str, server: LocalServer,
                                                                 telemetry: Telemetry) -> None:
    first_chunks = FirstChunkTimes()
    rlm = make_rlm(server, telemetry.callback(), first_chunks)
    async with aclosing(rlm.astream("stream this please")) as chunks:
        streamed = "".join([chunk async for chunk in chunks])
    assert streamed == "Hello! You said: stream this please"
    await asyncio.to_thread(lambda: "".join(rlm.stream("and this")))
    chats = telemetry.named("chat gpt-4o")
    assert len(chats) == 2 and len(telemetry.named("invoke_agent")) == 2
    assert [span.attributes["gen_ai.response.time_to_first_chunk"] for span in chats
            if span.attributes is not None] == first_chunks.seconds
    [point] = telemetry.histogram("gen_ai.client.operation.time_to_first_chunk")
    assert point.count == 2 and point.sum == pytest.approx(sum(first_chunks.seconds))
    assert tuple(point.explicit_bounds) == SECONDS_BUCKETS
    assert telemetry.open_spans.open == {}


async def test_arun_builds_the_same_tree(backend: str, server: LocalServer, telemetry: Telemetry) -> None:
    server.queue_reply(tool_calls=[{"name": "get_weather", "arguments": {"city": "Rome"}}])
    await make_rlm(server, telemetry.callback(), tools=[get_weather]).arun("weather?")
    assert [span.name for span in telemetry.spans()] == [
        "chat gpt-4o", "execute_tool get_weather", "chat gpt-4o", "invoke_agent"]
    run = telemetry.spans()[-1]
    assert [parent_id(span) for span in telemetry.spans()[:-1]] == [span_id(run)] * 3
    assert telemetry.named("chat gpt-4o")[0].attributes is not None
    assert "gen_ai.response.time_to_first_chunk" not in (telemetry.named("chat gpt-4o")[0].attributes or {})


def test_token_and_duration_metrics_are_exact(backend: str, server: LocalServer, telemetry: Telemetry) -> None:
    server.queue_reply("one", usage=(10, 5))
    server.queue_reply("two", usage=(7, 3))
    server.usage_details_next(cached_tokens=4, reasoning_tokens=2, count=1)
    server.queue_reply("three", usage=(30, 9))
    rlm = make_rlm(server, telemetry.callback())
    for prompt in ("a", "b"):
        rlm.run(prompt)
    rlm.run("c")
    common = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": MODEL,
              "gen_ai.response.model": MODEL, "server.address": "127.0.0.1", "server.port": server.port}
    tokens = {point.attributes["gen_ai.token.type"]: point
              for point in telemetry.histogram("gen_ai.client.token.usage")}
    assert sorted(tokens) == ["input", "output"]
    assert {kind: (point.count, point.sum) for kind, point in tokens.items()} == {"input": (3, 47), "output": (3, 17)}
    assert {kind: dict(point.attributes) for kind, point in tokens.items()} == {
        kind: {**common, "gen_ai.token.type": kind} for kind in ("input", "output")}
    assert tuple(tokens["input"].explicit_bounds) == TOKEN_BUCKETS
    [duration] = telemetry.histogram("gen_ai.client.operation.duration")
    assert duration.count == 3 and dict(duration.attributes) == common
    assert tuple(duration.explicit_bounds) == SECONDS_BUCKETS
    cached_call = telemetry.named("chat gpt-4o")[0]
    assert cached_call.attributes is not None
    assert (cached_call.attributes["gen_ai.usage.cache_read.input_tokens"],
            cached_call.attributes["gen_ai.usage.reasoning.output_tokens"]) == (4, 2)
    assert "gen_ai.usage.cache_read.input_tokens" not in (telemetry.named("chat gpt-4o")[1].attributes or {})


def test_a_call_without_reported_usage_records_no_tokens(server: LocalServer, telemetry: Telemetry) -> None:
    server.omit_usage_next()
    make_rlm(server, telemetry.callback()).run("hello")
    chat = telemetry.named("chat gpt-4o")[0]
    assert "gen_ai.usage.input_tokens" not in (chat.attributes or {})
    assert telemetry.histogram("gen_ai.client.token.usage") == []
    assert [point.count for point in telemetry.histogram("gen_ai.client.operation.duration")] == [1]


# -- no span left open ------------------------------------------------------------------------------


async def requests_received(server: LocalServer, count: int) -> None:
    """Wait (up to 10 s) until the server holds ``count`` requests: their calls have started."""
    async with asyncio.timeout(10):
        while len(server.requests) < count:
            await asyncio.sleep(0.01)


async def test_a_cancelled_arun_ends_its_spans(backend: str, server: LocalServer, telemetry: Telemetry) -> None:
    server.hang_next(5)
    task = asyncio.create_task(make_rlm(server, telemetry.callback()).arun("to be cancelled"))
    await requests_received(server, 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    chat, run = telemetry.spans()
    assert (chat.name, run.name) == ("chat gpt-4o", "invoke_agent")
    for span in (chat, run):
        assert span.status.status_code == StatusCode.ERROR
        assert span.attributes is not None and span.attributes["error.type"] == "asyncio.exceptions.CancelledError"
    assert telemetry.open_spans.open == {}
    [duration] = telemetry.histogram("gen_ai.client.operation.duration")
    assert duration.attributes["error.type"] == "asyncio.exceptions.CancelledError"


async def test_a_cancelled_abatch_ends_the_batch_and_its_runs(backend: str, server: LocalServer,
                                                              telemetry: Telemetry) -> None:
    server.hang_next(5, count=3)
    task = asyncio.create_task(make_rlm(server, telemetry.callback()).abatch(["a", "b", "c"]))
    await requests_received(server, 3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(span.name for span in telemetry.spans()) == ["chat gpt-4o"] * 3 + ["invoke_agent"] * 3 + [
        "invoke_workflow batch"]
    assert {span.attributes["error.type"] for span in telemetry.spans() if span.attributes is not None} == {
        "asyncio.exceptions.CancelledError"}
    assert telemetry.open_spans.open == {}


def test_a_stream_closed_early_ends_its_spans(backend: str, server: LocalServer, telemetry: Telemetry) -> None:
    stream = make_rlm(server, telemetry.callback()).stream("hello there, a long answer please")
    assert next(stream) != ""
    stream.close()
    chat, run = telemetry.spans()
    assert [span.attributes["error.type"] for span in (chat, run) if span.attributes is not None] == [
        "GeneratorExit"] * 2
    assert telemetry.open_spans.open == {}


def test_past_max_open_spans_the_oldest_is_ended_and_marked(backend: str, telemetry: Telemetry) -> None:
    manager = CallbackManager([telemetry.callback(max_open_spans=2)])
    for index in range(3):
        manager.on_llm_start("never ends", run_id=f"call-{index}", model="m")
    [evicted] = telemetry.spans()
    assert evicted.attributes is not None and evicted.attributes[RUN_ID] == "call-0"
    assert evicted.attributes["error.type"] == "span_evicted"
    assert evicted.status.status_code == StatusCode.ERROR
    assert sorted(telemetry.open_spans.open.values()) == ["chat m", "chat m"]
    manager.on_llm_end("late", run_id="call-0", model="m")  # its span is gone: nothing happens
    assert len(telemetry.spans()) == 1


def test_a_second_start_with_the_same_run_id_ends_the_first_span(telemetry: Telemetry) -> None:
    manager = CallbackManager([telemetry.callback()])
    manager.on_llm_start("first", run_id="job-1", model="m")
    manager.on_llm_start("second", run_id="job-1", model="m")
    manager.on_llm_end("answer", run_id="job-1", model="m")
    replaced, answered = telemetry.spans()
    assert replaced.attributes is not None and replaced.attributes["error.type"] == "span_evicted"
    assert answered.status.status_code == StatusCode.UNSET and "error.type" not in (answered.attributes or {})
    assert telemetry.open_spans.open == {}


def test_too_many_tool_rounds_end_the_run_span_with_the_error(backend: str, server: LocalServer,
                                                              telemetry: Telemetry) -> None:
    server.queue_reply(tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}}])
    with pytest.raises(ToolRoundsExceededError):
        make_rlm(server, telemetry.callback(), tools=[get_weather], max_tool_rounds=0).run("weather?")
    chat, run = telemetry.spans()
    assert chat.status.status_code == StatusCode.UNSET
    assert run.status.status_code == StatusCode.ERROR
    assert run.attributes is not None and run.attributes["error.type"] == "rlm_toolkit.errors.ToolRoundsExceededError"
    assert telemetry.open_spans.open == {}


def test_max_open_spans_must_be_positive(telemetry: Telemetry) -> None:
    from rlm_toolkit import CallbackConfigError

    with pytest.raises(CallbackConfigError, match="max_open_spans must be an int of at least 1, got 0"):
        telemetry.callback(max_open_spans=0)


# -- without the extra, pickling ---------------------------------------------------------------------


def test_without_opentelemetry_the_import_works_and_building_says_what_to_install() -> None:
    script = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None\n"
        "import rlm_toolkit.callbacks as callbacks\n"
        "from rlm_toolkit import MissingExtraError\n"
        "try:\n"
        "    callbacks.OpenTelemetryCallback()\n"
        "except MissingExtraError as error:\n"
        "    print(isinstance(error, ImportError), error)\n"
    )
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert child.stdout == ("True OpenTelemetryCallback needs OpenTelemetry, which is not installed: "
                            "pip install 'rlm_toolkit[otel]'\n")
    assert issubclass(MissingExtraError, ImportError)


def test_pickled_without_providers_it_travels_as_its_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CAPTURE_ENV, "true")
    callback = OpenTelemetryCallback(max_open_spans=5)
    monkeypatch.delenv(CAPTURE_ENV)  # a worker without the variable still captures, as the original does
    copy = pickle.loads(pickle.dumps(callback))
    assert type(copy) is OpenTelemetryCallback
    assert (copy.capture_content, copy.max_open_spans) == (True, 5)


def test_unpickled_in_another_process_it_uses_that_processes_global_providers(tmp_path: Path) -> None:
    (tmp_path / "callback.pickle").write_bytes(pickle.dumps(OpenTelemetryCallback(capture_content=True)))
    script = tmp_path / "worker.py"
    script.write_text(
        "import pickle, sys\n"
        "from pathlib import Path\n"
        "from opentelemetry import trace\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from opentelemetry.sdk.trace.export import SimpleSpanProcessor\n"
        "from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter\n"
        "from rlm_toolkit.callbacks import CallbackManager\n"
        "callback = pickle.loads(Path(sys.argv[1]).read_bytes())\n"  # before the provider is set: proxies
        "exporter = InMemorySpanExporter()\n"
        "provider = TracerProvider()\n"
        "provider.add_span_processor(SimpleSpanProcessor(exporter))\n"
        "trace.set_tracer_provider(provider)\n"
        "manager = CallbackManager([callback])\n"
        "manager.on_llm_start('in the worker', run_id='call-1', model='m')\n"
        "manager.on_llm_end('answer', run_id='call-1', model='m')\n"
        "[span] = exporter.get_finished_spans()\n"
        "print(span.name, span.attributes['gen_ai.input.messages'])\n"
    )
    child = subprocess.run([sys.executable, str(script), str(tmp_path / "callback.pickle")], capture_output=True,
                           text=True, timeout=60, check=True)
    assert child.stdout == (
        'chat m [{"role": "user", "parts": [{"type": "text", "content": "in the worker"}]}]\n')


def test_pickled_with_providers_it_refuses(telemetry: Telemetry) -> None:
    with pytest.raises(NotPicklableError, match="providers belong to the process that made them"):
        pickle.dumps(telemetry.callback())


# -- end to end over OTLP/HTTP ----------------------------------------------------------------------


class Receiver(BaseHTTPRequestHandler):
    bodies: dict[str, list[bytes]]

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.bodies.setdefault(self.path, []).append(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def otlp_receiver() -> Iterator[tuple[str, dict[str, list[bytes]]]]:
    """A small OTLP/HTTP receiver on 127.0.0.1: its endpoint, and the bodies posted to it by path."""
    bodies: dict[str, list[bytes]] = {}
    handler = type("Handler", (Receiver,), {"bodies": bodies})
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{receiver.server_address[1]}", bodies
    finally:
        receiver.shutdown()
        receiver.server_close()


def received_spans(bodies: dict[str, list[bytes]]) -> list[Any]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    traces = ExportTraceServiceRequest()
    for body in bodies.get("/v1/traces", []):
        traces.MergeFromString(body)
    return [span for resource in traces.resource_spans for scope in resource.scope_spans for span in scope.spans]


def test_spans_and_metrics_reach_an_otlp_http_receiver(server: LocalServer) -> None:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    with otlp_receiver() as (endpoint, bodies):
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces",
                                                                               timeout=5)))
        reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics", timeout=5),
                                               export_interval_millis=3_600_000)
        meter_provider = MeterProvider(metric_readers=[reader])
        server.queue_reply("over the wire", usage=(12, 3))
        make_rlm(server, OpenTelemetryCallback(tracer_provider, meter_provider)).run("hello")
        assert tracer_provider.force_flush(10_000)
        tracer_provider.shutdown()
        meter_provider.shutdown()

    spans = received_spans(bodies)
    assert sorted(span.name for span in spans) == ["chat gpt-4o", "invoke_agent"]
    chat = next(span for span in spans if span.name == "chat gpt-4o")
    run = next(span for span in spans if span.name == "invoke_agent")
    assert chat.parent_span_id == run.span_id and chat.kind == chat.SPAN_KIND_CLIENT
    attributes = {attribute.key: attribute.value for attribute in chat.attributes}
    assert attributes["gen_ai.usage.input_tokens"].int_value == 12
    assert attributes["gen_ai.usage.output_tokens"].int_value == 3
    assert attributes["server.port"].int_value == server.port
    assert attributes["gen_ai.response.finish_reasons"].array_value.values[0].string_value == "stop"

    metrics = ExportMetricsServiceRequest()
    for body in bodies["/v1/metrics"]:
        metrics.MergeFromString(body)
    tokens = [metric for resource in metrics.resource_metrics for scope in resource.scope_metrics
              for metric in scope.metrics if metric.name == "gen_ai.client.token.usage"]
    assert len(tokens) == 1
    sums = {}
    for point in tokens[0].histogram.data_points:
        token_types = [attribute.value.string_value for attribute in point.attributes
                       if attribute.key == "gen_ai.token.type"]
        sums[token_types[0]] = point.sum
    assert sums == {"input": 12, "output": 3}


def test_lone_surrogates_from_a_server_do_not_fail_the_export_of_a_batch(backend: str) -> None:
    """A tool name, a model or an answer a server sent with a lone surrogate reaches the receiver escaped; one
    such string would otherwise fail the encoding of every span in its batch."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    with otlp_receiver() as (endpoint, bodies):
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces",
                                                                               timeout=5)))
        manager = CallbackManager([OpenTelemetryCallback(tracer_provider, capture_content=True)],
                                  backend=backend)  # type: ignore[arg-type]
        manager.on_run_start("plain", run_id="run", kind="run", tags=["tag\ud800"], metadata={"key\udc80": "value\ud800"})
        manager.on_llm_start("prompt \ud83d", run_id="call", parent_run_id="run", model="gpt\udfff")
        manager.on_llm_end(LLMResponse("answer \udca9", "gpt\udfff", Usage.of(1, 2), "stop\ud800"),
                           run_id="call", parent_run_id="run", model="gpt\udfff")
        manager.on_tool_start("look\udcffup", {"city": "Paris\ud800"}, run_id="tool\udfff", parent_run_id="run")
        manager.on_error(ValueError("bad \udc00 input"), run_id="tool\udfff", parent_run_id="run",
                         tool_name="look\udcffup")
        manager.on_run_end("done", run_id="run", kind="run")
        assert tracer_provider.force_flush(10_000)
        tracer_provider.shutdown()

    spans = {span.name: span for span in received_spans(bodies)}
    assert sorted(spans) == ["chat gpt\\udfff", "execute_tool look\\udcffup", "invoke_agent"]
    chat = {attribute.key: attribute.value for attribute in spans["chat gpt\\udfff"].attributes}
    assert chat["gen_ai.request.model"].string_value == "gpt\\udfff"
    assert chat["gen_ai.response.finish_reasons"].array_value.values[0].string_value == "stop\\ud800"
    # JSON text: the escape is JSON's own, so the message decodes to the prompt as it was
    assert json.loads(chat["gen_ai.input.messages"].string_value)[0]["parts"][0]["content"] == "prompt \ud83d"
    run = {attribute.key: attribute.value for attribute in spans["invoke_agent"].attributes}
    assert run["rlm_toolkit.metadata.key\\udc80"].string_value == "value\\ud800"
    assert [tag.string_value for tag in run["rlm_toolkit.tags"].array_value.values] == ["tag\\ud800"]
    tool = spans["execute_tool look\\udcffup"]
    assert tool.status.message == "bad \\udc00 input"
    assert {attribute.key: attribute.value.string_value for attribute in tool.attributes}["rlm_toolkit.run_id"] \
        == "tool\\udfff"
    assert tool.parent_span_id == spans["invoke_agent"].span_id
