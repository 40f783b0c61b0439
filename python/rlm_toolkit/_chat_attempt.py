"""One attempt of an LLM call: its request, and its answer checked and assembled into an ``LLMResponse``.

What is not a usable chat completion (a body that is not JSON, a completion without ``choices``, a stream event
that is not a chunk, a stream that ends before its ``finish_reason``) raises a ``_MalformedAnswerError``, which
the run logic retries like a 5xx.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx2
import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ._tool_calls import _tool_call_message
from .secrets import redact
from .types import LLMResponse, Usage

_EXCERPT_CHARS = 80
"""How much of a malformed answer an error message quotes."""
_RETRY_ADVICE = "try again later or raise max_attempts"


class _ChatAttempt:
    """Send one chat completion request; the driver answers with an ``LLMResponse`` or throws the error in.

    The driver sets ``http_response`` once the answer's headers are in, then hands over the parsed completion
    (``take_completion``) or each streamed chunk (``take_chunk``); what is not a usable chat completion raises
    a ``_MalformedAnswerError``.
    """

    def __init__(self, params: dict[str, Any], stream: bool, fire_token: Callable[[str], object]) -> None:
        self.params = params
        self.stream = stream
        self.tokens_delivered = False
        self.chunks_received = 0
        self._started = time.perf_counter()
        self._first_token_at: float | None = None
        self.http_response: httpx2.Response | None = None
        self._fire_token = fire_token
        self._completed: LLMResponse | None = None
        self._content: list[str] = []
        self._tool_calls: dict[int, dict[str, Any]] = {}
        self._model: str | None = None
        self._finish_reason: str | None = None
        # None until a chunk reports the usage: a server may ignore ``include_usage``.
        self._usage: Usage | None = None

    def response(self) -> LLMResponse:
        """The answer: the completion taken, or the one assembled from the streamed chunks."""
        if self._completed is not None:
            return self._completed
        tool_calls = tuple(
            _tool_call_message(call["id"], call["name"], "".join(call["arguments"]))
            for _, call in sorted(self._tool_calls.items())
        )
        return LLMResponse(
            content="".join(self._content),
            model=self._model,
            usage=self._usage,
            finish_reason=self._finish_reason,
            tool_calls=tool_calls,
        )

    @property
    def ttft_ms(self) -> float | None:
        """Milliseconds from sending the request to the first streamed text or tool-call delta; None for a
        call that does not stream, or a stream that brought neither."""
        if self._first_token_at is None:
            return None
        return (self._first_token_at - self._started) * 1000.0

    def take_completion(self, completion: object) -> None:
        """Take the answer of a non-streamed request."""
        if not isinstance(completion, ChatCompletion):
            raise self.malformed(
                f"the body is {self._content_type()}, not JSON ({self._body_excerpt()})",
                advice="check base_url: a proxy or a sign-in page may be answering instead of the API",
            )
        if not completion.choices:
            raise self.malformed(
                "the completion has no choices",
                advice="check that base_url points at an OpenAI-compatible chat completions API",
            )
        try:
            choice = completion.choices[0]
            tool_calls = tuple(
                _tool_call_message(call.id, call.function.name, call.function.arguments)
                for call in choice.message.tool_calls or ()
                if call.type == "function"
            )
            self._completed = LLMResponse(
                content=choice.message.content or "",
                model=completion.model,
                usage=_usage_of(completion.usage),
                finish_reason=choice.finish_reason,
                tool_calls=tool_calls,
            )
        except (AttributeError, TypeError) as error:
            raise self.malformed(f"the completion's first choice is incomplete ({error})") from error

    def check_event_stream(self) -> None:
        """Raise unless the answer to a streamed request is an event stream."""
        content_type = self._content_type()
        if not content_type.startswith("text/event-stream"):
            raise self.malformed(
                f"the answer to a streamed request is {content_type}, not an event stream",
                advice="check base_url: a proxy or a sign-in page may be answering instead of the API",
            )

    def take_chunk(self, chunk: object) -> str:
        """Add one streamed chunk; fire and return its text (``""`` if it has none)."""
        if not isinstance(chunk, ChatCompletionChunk):
            raise self.malformed(f"stream event {self.chunks_received + 1} is not a chat completion chunk")
        try:
            text = self._add_chunk(chunk)
        except (AttributeError, TypeError) as error:
            raise self.malformed(f"stream event {self.chunks_received + 1} is incomplete ({error})") from error
        self.chunks_received += 1
        if text:
            self.tokens_delivered = True
            self._fire_token(text)
        return text

    def check_stream_end(self) -> None:
        """Raise if the stream ended before its last chunk (the one with a ``finish_reason``)."""
        if self._finish_reason is None:
            raise self.malformed(f"the stream ended after {_chunks(self.chunks_received)} without a finish_reason")

    def malformed(self, problem: str, *, advice: str = _RETRY_ADVICE) -> _MalformedAnswerError:
        assert self.http_response is not None
        return _MalformedAnswerError(self.http_response, problem, advice)

    def _add_chunk(self, chunk: ChatCompletionChunk) -> str:
        self._model = chunk.model or self._model
        if chunk.usage is not None:
            self._usage = _usage_of(chunk.usage)
        text = ""
        for choice in chunk.choices or ():
            if choice.index != 0:
                continue
            if choice.finish_reason:
                self._finish_reason = choice.finish_reason
            if self._first_token_at is None and (choice.delta.content or choice.delta.tool_calls):
                self._first_token_at = time.perf_counter()
            for call in choice.delta.tool_calls or ():
                partial_call = self._tool_calls.setdefault(call.index, {"id": "", "name": "", "arguments": []})
                if call.id:
                    partial_call["id"] = call.id
                if call.function and call.function.name:
                    partial_call["name"] = call.function.name
                if call.function and call.function.arguments:
                    partial_call["arguments"].append(call.function.arguments)
            if choice.delta.content:
                text = choice.delta.content
                self._content.append(text)
        return text

    def _content_type(self) -> str:
        assert self.http_response is not None
        return self.http_response.headers.get("content-type", "").split(";")[0].strip() or "untyped"

    def _body_excerpt(self) -> str:
        assert self.http_response is not None
        text = " ".join(self.http_response.text.split())
        if len(text) > _EXCERPT_CHARS:
            text = text[:_EXCERPT_CHARS] + "..."
        return f"it begins {redact(text)!r}" if text else "it is empty"


class _MalformedAnswerError(openai.APIResponseValidationError):
    """An attempt's answer that is not a usable chat completion: ``problem`` says what is wrong, ``advice``
    what to do."""

    def __init__(self, response: httpx2.Response, problem: str, advice: str) -> None:
        super().__init__(response, None, message=problem)
        self.problem = problem
        self.advice = advice


def _chunks(count: int) -> str:
    return "1 chunk" if count == 1 else f"{count} chunks"


def _usage_of(usage: Any) -> Usage | None:
    """The reported usage, or None when the server sent none."""
    if usage is None:
        return None
    return Usage(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens,
                 _detail(usage.prompt_tokens_details, "cached_tokens"),
                 _detail(usage.completion_tokens_details, "reasoning_tokens"))


def _detail(details: Any, name: str) -> int:
    """One count of a usage's ``*_tokens_details``; 0 when the server left the details or the count out."""
    count = getattr(details, name, None) if details is not None else None
    return count if isinstance(count, int) else 0
