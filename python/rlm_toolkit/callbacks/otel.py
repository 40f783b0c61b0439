"""``OpenTelemetryCallback``: RLM runs as OpenTelemetry spans and metrics, named per the GenAI semantic conventions.

Spans follow the run tree (``run_id`` -> ``parent_run_id``), whatever thread or task fires the events:

- a run: ``invoke_agent`` (INTERNAL); a batch: ``invoke_workflow batch`` (INTERNAL), parent of its runs' spans;
- an LLM call: ``chat {model}`` (CLIENT), with its retries as ``rlm_toolkit.retry`` span events;
- a tool call: ``execute_tool {tool_name}`` (INTERNAL), the current span while the tool's code runs: the parent
  of the spans of a run started inside the tool, and of those the tool's own code starts;
- memory recall and store: the span events ``rlm_toolkit.memory.recall`` and ``rlm_toolkit.memory.store`` on
  their run's span.

A span whose parent is not open here (a top-level run) takes the OpenTelemetry context current where the event
fires as its parent, so an application span around ``rlm.run`` holds the run. A failed call or run ends its span
with status ERROR and ``error.type`` (the exception's qualified type name); so does a run that stops without
``on_run_end`` (cancelled, its stream closed early), with its open descendants. At most ``max_open_spans`` spans
are open at a time: past that, the oldest is ended with ``error.type="span_evicted"``, so events that never end
a span (a batch job that fires ``on_llm_start`` only) cannot grow memory without bound; a span whose ``run_id``
starts another span is ended the same way. An event without a ``run_id`` makes no span.

Every span has ``rlm_toolkit.run_id`` (its event's, as the JSONL log writes it); a run's span also has the run's
``rlm_toolkit.tags`` and, as ``rlm_toolkit.metadata.<key>``, its metadata values that are str, bool, int or
float. An LLM span has ``server.address``/``server.port`` (from the RLM's base URL), the response's model, finish
reason and token usage (``gen_ai.usage.cache_read.input_tokens`` and ``gen_ai.usage.reasoning.output_tokens``
when the server reported more than 0), and for a streamed call ``gen_ai.response.time_to_first_chunk`` (s).

Prompts, answers, tool arguments and results, memory text and error messages are left out unless
``capture_content=True`` or ``$OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` is ``true``; captured, they
are redacted (``rlm_toolkit.secrets.redact``) like the JSONL log's. An LLM span's ``gen_ai.input.messages`` holds
the run's prompt (what ``on_llm_start`` receives), not the system prompt, memory or tool messages.

Metrics, for each LLM call: ``gen_ai.client.operation.duration`` (s, from ``on_llm_start`` to its end, retries
included; ``error.type`` on failures), ``gen_ai.client.token.usage`` (``{token}``, one input and one output
measurement when the server reported usage) and, for a streamed call, ``gen_ai.client.operation.time_to_first_chunk``
(s).
"""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import version
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .._context import current_endpoint, watch_runs
from ..errors import CallbackConfigError, MissingExtraError, NotPicklableError
from ..secrets import redact
from ._pickling import PickledByConfiguration
from .base import BaseCallback

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Span, SpanKind, TracerProvider
    from opentelemetry.util.types import AttributeValue

CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
PROVIDER = "openai"
EVICTED = "span_evicted"
"""The ``error.type`` of a span the callback ended itself: more than ``max_open_spans`` were open, or another
span started with its ``run_id``."""

OPERATION = "gen_ai.operation.name"
PROVIDER_NAME = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
FINISH_REASONS = "gen_ai.response.finish_reasons"
TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"
REASONING_OUTPUT_TOKENS = "gen_ai.usage.reasoning.output_tokens"
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
TOOL_NAME = "gen_ai.tool.name"
TOOL_TYPE = "gen_ai.tool.type"
TOOL_ARGUMENTS = "gen_ai.tool.call.arguments"
TOOL_RESULT = "gen_ai.tool.call.result"
WORKFLOW_NAME = "gen_ai.workflow.name"
TOKEN_TYPE = "gen_ai.token.type"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
ERROR_TYPE = "error.type"
RUN_ID = "rlm_toolkit.run_id"
TAGS = "rlm_toolkit.tags"
METADATA_PREFIX = "rlm_toolkit.metadata."

TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
SECONDS_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
"""The bucket boundaries the GenAI semantic conventions advise for token counts and for durations."""


@dataclass(slots=True)
class _OpenSpan:
    span: Span
    parent_run_id: str | None
    operation: str
    started: float
    """``time.monotonic()`` at the start, for the duration metric."""
    metric_attributes: dict[str, AttributeValue]


class OpenTelemetryCallback(PickledByConfiguration, BaseCallback):
    """Export runs, LLM calls and tool calls as OpenTelemetry spans and GenAI metrics (see the module docstring).

    ``tracer_provider`` and ``meter_provider`` default to the global ones (``opentelemetry.trace``'s and
    ``opentelemetry.metrics``' ``set_..._provider``, also when set after this callback is built). Needs the
    ``otel`` extra: ``MissingExtraError`` (an ``ImportError``) otherwise.

    Pickled (sent to a worker), a callback built without providers travels as its options and uses the
    worker's global providers there (configure them in each worker); one built with providers raises
    ``NotPicklableError``, since providers belong to the process that made them.
    """

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        *,
        capture_content: bool = False,
        max_open_spans: int = 10_000,
    ) -> None:
        try:
            from opentelemetry import metrics, trace
        except ImportError as error:
            raise MissingExtraError(
                "OpenTelemetryCallback needs OpenTelemetry, which is not installed: pip install 'rlm_toolkit[otel]'"
            ) from error
        if isinstance(max_open_spans, bool) or not isinstance(max_open_spans, int) or max_open_spans < 1:
            raise CallbackConfigError(f"max_open_spans must be an int of at least 1, got {max_open_spans!r}")
        self.capture_content = capture_content or _capture_content_from_environment()
        self._keep_argument("capture_content", self.capture_content)  # a worker need not have the variable
        self.max_open_spans = max_open_spans
        self._providers_given = tracer_provider is not None or meter_provider is not None
        rlm_toolkit_version = version("rlm_toolkit")
        self._tracer = trace.get_tracer("rlm_toolkit", rlm_toolkit_version, tracer_provider)
        meter = metrics.get_meter("rlm_toolkit", rlm_toolkit_version, meter_provider)
        self._token_usage = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
        )
        self._time_to_first_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk", unit="s",
            description="Time to receive the first chunk of a streamed answer.",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
        )
        self._set_span_in_context = trace.set_span_in_context
        self._use_span = trace.use_span
        self._client_kind: SpanKind = trace.SpanKind.CLIENT
        self._internal_kind: SpanKind = trace.SpanKind.INTERNAL
        self._status = trace.Status
        self._error_code = trace.StatusCode.ERROR
        self._open: dict[str, _OpenSpan] = {}
        """Open spans by run id, oldest first."""
        self._lock = threading.Lock()
        watch_runs(self)

    def __reduce__(self) -> tuple[Any, ...]:
        if self._providers_given:
            raise NotPicklableError(
                "an OpenTelemetryCallback built with a tracer_provider or meter_provider cannot be sent to "
                "another process: providers belong to the process that made them. Build it without them (it "
                "then uses the global providers) and set the global providers in each worker"
            )
        return super().__reduce__()

    # -- hooks (an event without a run_id makes no span) ---------------------------------------------

    def on_run_start(self, prompt: str, *, run_id: str | None = None, parent_run_id: str | None = None,
                     model: str | None = None, tags: list[str] | None = None, metadata: dict[str, Any] | None = None,
                     kind: str | None = None, **kwargs: Any) -> None:
        if run_id is None:
            return
        attributes: dict[str, AttributeValue] = {RUN_ID: _valid_text(run_id)}
        if kind == "batch":
            operation, name = "invoke_workflow", "invoke_workflow batch"
            attributes[WORKFLOW_NAME] = "batch"
        else:
            operation = name = "invoke_agent"
            attributes[PROVIDER_NAME] = PROVIDER
            if self.capture_content:
                attributes[INPUT_MESSAGES] = _text_messages("user", prompt)
        attributes[OPERATION] = operation
        if model is not None:
            attributes[REQUEST_MODEL] = _valid_text(model)
        if tags:
            attributes[TAGS] = [_valid_text(tag) if isinstance(tag, str) else tag for tag in tags]
        for key, value in (metadata or {}).items():
            if isinstance(value, (str, bool, int, float)):
                attributes[_valid_text(METADATA_PREFIX + str(key))] = _valid_text(value) if isinstance(value, str) else value
        self._start(run_id, parent_run_id, name, self._internal_kind, attributes, operation)

    def on_run_end(self, answer: str, *, run_id: str | None = None, kind: str | None = None, **kwargs: Any) -> None:
        opened = self._pop(run_id)
        if opened is None:
            return
        if self.capture_content and kind != "batch":
            opened.span.set_attribute(OUTPUT_MESSAGES, _text_messages("assistant", answer, "stop"))
        opened.span.end()

    def on_llm_start(self, prompt: str, *, run_id: str | None = None, parent_run_id: str | None = None,
                     model: str | None = None, **kwargs: Any) -> None:
        if run_id is None:
            return
        attributes: dict[str, AttributeValue] = {OPERATION: "chat", PROVIDER_NAME: PROVIDER}
        model = None if model is None else _valid_text(model)
        if model is not None:
            attributes[REQUEST_MODEL] = model
        endpoint = current_endpoint()
        if endpoint is not None:
            attributes.update(_server_attributes(endpoint))
        metric_attributes = dict(attributes)
        attributes[RUN_ID] = _valid_text(run_id)
        if self.capture_content:
            attributes[INPUT_MESSAGES] = _text_messages("user", prompt)
        self._start(run_id, parent_run_id, f"chat {model}" if model else "chat", self._client_kind, attributes,
                    "chat", metric_attributes)

    def on_llm_end(self, response: Any, *, run_id: str | None = None, ttft_ms: float | None = None,
                   **kwargs: Any) -> None:
        opened = self._pop(run_id)
        if opened is None:
            return
        span, metric_attributes = opened.span, opened.metric_attributes
        response_model = getattr(response, "model", None)
        if isinstance(response_model, str):
            response_model = _valid_text(response_model)
            metric_attributes[RESPONSE_MODEL] = response_model
            span.set_attribute(RESPONSE_MODEL, response_model)
        finish_reason = getattr(response, "finish_reason", None)
        if isinstance(finish_reason, str):
            span.set_attribute(FINISH_REASONS, [_valid_text(finish_reason)])
        usage = getattr(response, "usage", None)
        if usage is not None:
            span.set_attribute(INPUT_TOKENS, usage.prompt_tokens)
            span.set_attribute(OUTPUT_TOKENS, usage.completion_tokens)
            if usage.cached_tokens:
                span.set_attribute(CACHE_READ_INPUT_TOKENS, usage.cached_tokens)
            if usage.reasoning_tokens:
                span.set_attribute(REASONING_OUTPUT_TOKENS, usage.reasoning_tokens)
            self._token_usage.record(usage.prompt_tokens, {**metric_attributes, TOKEN_TYPE: "input"})
            self._token_usage.record(usage.completion_tokens, {**metric_attributes, TOKEN_TYPE: "output"})
        if ttft_ms is not None:
            span.set_attribute(TIME_TO_FIRST_CHUNK, ttft_ms / 1000)
            self._time_to_first_chunk.record(ttft_ms / 1000, metric_attributes)
        if self.capture_content:
            span.set_attribute(OUTPUT_MESSAGES, _answer_messages(response))
        self._duration.record(time.monotonic() - opened.started, metric_attributes)
        span.end()

    def on_tool_start(self, tool_name: str, tool_input: Any, *, run_id: str | None = None,
                      parent_run_id: str | None = None, **kwargs: Any) -> None:
        if run_id is None:
            return
        tool_name = _valid_text(tool_name)
        attributes = _tool_attributes(tool_name, run_id)
        if self.capture_content:
            attributes[TOOL_ARGUMENTS] = _json_text(tool_input)
        self._start(run_id, parent_run_id, f"execute_tool {tool_name}", self._internal_kind, attributes,
                    "execute_tool")

    def on_tool_end(self, tool_name: str, tool_output: Any, *, run_id: str | None = None, **kwargs: Any) -> None:
        opened = self._pop(run_id)
        if opened is None:
            return
        if self.capture_content:
            opened.span.set_attribute(TOOL_RESULT, _content_text(str(tool_output)))
        opened.span.end()

    def on_memory_recall(self, query: str, results: list[Any], *, parent_run_id: str | None = None,
                         **kwargs: Any) -> None:
        attributes: dict[str, AttributeValue] = {"rlm_toolkit.memory.message_count": len(results)}
        if self.capture_content:
            attributes["rlm_toolkit.memory.query"] = _content_text(query)
            attributes["rlm_toolkit.memory.messages"] = _json_text(results)
        self._add_event(parent_run_id, "rlm_toolkit.memory.recall", attributes)

    def on_memory_store(self, content: str, *, parent_run_id: str | None = None, role: str | None = None,
                        **kwargs: Any) -> None:
        attributes: dict[str, AttributeValue] = {}
        if role is not None:
            attributes["rlm_toolkit.memory.role"] = _valid_text(str(role))
        if self.capture_content:
            attributes["rlm_toolkit.memory.content"] = _content_text(content)
        self._add_event(parent_run_id, "rlm_toolkit.memory.store", attributes)

    def on_retry(self, attempt: int, max_attempts: int, error: BaseException, *, run_id: str | None = None,
                 **kwargs: Any) -> None:
        attributes: dict[str, AttributeValue] = {
            "rlm_toolkit.retry.attempt": attempt,
            "rlm_toolkit.retry.max_attempts": max_attempts,
            ERROR_TYPE: _qualified_type_name(error),
        }
        if self.capture_content:
            attributes["exception.message"] = _content_text(str(error))
        self._add_event(run_id, "rlm_toolkit.retry", attributes)

    def on_error(self, error: BaseException, *, run_id: str | None = None, parent_run_id: str | None = None,
                 tool_name: str | None = None, **kwargs: Any) -> None:
        opened = self._pop(run_id)
        if opened is None and run_id is not None and tool_name is not None:
            # a tool call refused before it ran (unknown tool, bad arguments) has no on_tool_start
            tool_name = _valid_text(str(tool_name))
            opened = self._new_span(parent_run_id, f"execute_tool {tool_name}", self._internal_kind,
                                    _tool_attributes(tool_name, run_id), "execute_tool", {})
        if opened is not None:
            self._end_failed(opened, _qualified_type_name(error), self._error_description(error))

    def context_of_run(self, run_id: str) -> AbstractContextManager[object] | None:
        """The span of ``run_id`` as the current OpenTelemetry span (a tool's code runs inside it), if open."""
        with self._lock:
            opened = self._open.get(run_id)
        if opened is None:
            return None
        return self._use_span(opened.span, end_on_exit=False, record_exception=False, set_status_on_exception=False)

    def run_left_unfinished(self, run_id: str, reason: BaseException) -> None:
        """End the span of run ``run_id`` and those of its open descendants, which will see no end event."""
        with self._lock:
            unfinished = {run_id} if run_id in self._open else set()
            for open_id, opened in self._open.items():  # oldest first: a parent before its children
                if opened.parent_run_id in unfinished:
                    unfinished.add(open_id)
            ended = [self._open.pop(open_id) for open_id in reversed(list(self._open)) if open_id in unfinished]
        for opened in ended:  # children first
            self._end_failed(opened, _qualified_type_name(reason), self._error_description(reason))

    # -- helpers ----------------------------------------------------------------------------------

    def _start(self, run_id: str, parent_run_id: str | None, name: str, kind: SpanKind,
               attributes: dict[str, AttributeValue], operation: str,
               metric_attributes: dict[str, AttributeValue] | None = None) -> None:
        opened = self._new_span(parent_run_id, name, kind, attributes, operation, metric_attributes or {})
        with self._lock:
            replaced = self._open.pop(run_id, None)
            self._open[run_id] = opened
            evicted = []
            while len(self._open) > self.max_open_spans:
                evicted.append(self._open.pop(next(iter(self._open))))
        if replaced is not None:
            self._end_failed(replaced, EVICTED, "ended by OpenTelemetryCallback: a new span started with its run_id")
        for oldest in evicted:
            self._end_failed(
                oldest, EVICTED,
                f"ended by OpenTelemetryCallback: more than max_open_spans={self.max_open_spans} spans were open",
            )

    def _pop(self, run_id: str | None) -> _OpenSpan | None:
        if run_id is None:
            return None
        with self._lock:
            return self._open.pop(run_id, None)

    def _new_span(self, parent_run_id: str | None, name: str, kind: SpanKind,
                  attributes: dict[str, AttributeValue], operation: str,
                  metric_attributes: dict[str, AttributeValue]) -> _OpenSpan:
        with self._lock:
            parent = None if parent_run_id is None else self._open.get(parent_run_id)
        context = None if parent is None else self._set_span_in_context(parent.span)
        span = self._tracer.start_span(name, context, kind, attributes)
        return _OpenSpan(span, parent_run_id, operation, time.monotonic(), metric_attributes)

    def _end_failed(self, opened: _OpenSpan, error_type: str, description: str | None) -> None:
        opened.span.set_attribute(ERROR_TYPE, error_type)
        opened.span.set_status(self._status(self._error_code, description))
        if opened.operation == "chat":
            self._duration.record(time.monotonic() - opened.started,
                                  {**opened.metric_attributes, ERROR_TYPE: error_type})
        opened.span.end()

    def _error_description(self, error: BaseException) -> str | None:
        """The status description of a span that failed with ``error``: its message, which may quote the
        conversation, only when content is captured."""
        return (_content_text(str(error)) or None) if self.capture_content else None

    def _add_event(self, run_id: str | None, name: str, attributes: dict[str, AttributeValue]) -> None:
        with self._lock:
            opened = None if run_id is None else self._open.get(run_id)
        if opened is not None:
            opened.span.add_event(name, attributes)


def _valid_text(text: str) -> str:
    """``text`` as OTLP can carry it. Protobuf strings must be valid UTF-8, and one string that is not fails the
    export of its whole batch of spans; a lone surrogate (which a server's JSON can send, in a tool name or an
    answer) is written as its ``\\udXXX`` escape instead."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _content_text(text: str) -> str:
    """Conversation text as a span holds it: redacted, and valid UTF-8."""
    return _valid_text(redact(text))


def _tool_attributes(tool_name: str, run_id: str) -> dict[str, AttributeValue]:
    return {OPERATION: "execute_tool", TOOL_NAME: tool_name, TOOL_TYPE: "function", RUN_ID: _valid_text(run_id)}


def _capture_content_from_environment() -> bool:
    return os.environ.get(CAPTURE_CONTENT_ENV, "").strip().lower() == "true"


@lru_cache(maxsize=64)
def _server_attributes(endpoint: str) -> dict[str, AttributeValue]:
    """``server.address`` and ``server.port`` of a base URL (the scheme's port when it names none)."""
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError:
        return {}
    if parts.hostname is None:
        return {}
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return {SERVER_ADDRESS: _valid_text(parts.hostname), SERVER_PORT: port}


def _qualified_type_name(error: BaseException) -> str:
    cls = type(error)
    return _valid_text(cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}")


def _text_messages(role: str, text: str, finish_reason: str | None = None) -> str:
    """One message of ``role`` holding ``text``, as the JSON the semantic conventions give their message lists."""
    message: dict[str, Any] = {"role": role, "parts": [{"type": "text", "content": redact(text)}]}
    if finish_reason is not None:
        message["finish_reason"] = finish_reason
    return _valid_text(json.dumps([message], ensure_ascii=False))


def _answer_messages(response: Any) -> str:
    parts: list[dict[str, Any]] = []
    content = str(getattr(response, "content", response))
    if content:
        parts.append({"type": "text", "content": redact(content)})
    for call in getattr(response, "tool_calls", ()):
        function = call.get("function", {}) if isinstance(call, dict) else {}
        parts.append({"type": "tool_call", "id": call.get("id") if isinstance(call, dict) else None,
                      "name": function.get("name"), "arguments": redact(str(function.get("arguments", "")))})
    finish_reason = getattr(response, "finish_reason", None) or "stop"
    return _valid_text(json.dumps([{"role": "assistant", "parts": parts, "finish_reason": finish_reason}],
                                  ensure_ascii=False))


def _json_text(value: Any) -> str:
    """``value`` as compact JSON (``str()`` for what JSON cannot hold), redacted."""
    return _content_text(json.dumps(value, ensure_ascii=False, default=str))
