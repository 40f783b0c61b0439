"""The OpenAI chat-completions wire format: requests, answers, errors and usage.

Usage numbers
    ``prompt_tokens`` is the sum over all messages of
    ``max(1, word count of the text content) + 3``; ``completion_tokens`` is
    the word count of the answer (for tool calls: of each call's name and
    arguments JSON), at least 1; ``total_tokens`` is their sum.
    ``queue_reply(usage=(prompt, completion))`` overrides both. After
    ``omit_usage_next()`` an answer carries no usage at all, as from a server
    that ignores ``stream_options``: a completion without the ``usage`` key, a
    stream without the usage chunk. After ``usage_details_next(cached_tokens=...,
    reasoning_tokens=...)`` the usage also has ``prompt_tokens_details.cached_tokens``
    and ``completion_tokens_details.reasoning_tokens``, as OpenAI reports them.

Streaming (``"stream": true``)
    Server-sent events: a first chunk with ``delta.role``, one chunk per word of
    the content (each word keeps its trailing whitespace, so joining the deltas
    gives the exact content), tool calls in OpenAI's ``delta.tool_calls`` format
    (id and name first, then the arguments in pieces), a chunk carrying
    ``finish_reason``, a ``choices: []`` chunk with ``usage`` when the request
    has ``"stream_options": {"include_usage": true}``, and ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from aiohttp import web

from .replies import Reply, message_text

_WORD_WITH_TRAILING_SPACE = re.compile(r"\s*\S+\s*")
_ARGUMENT_PIECE_CHARS = 16
"""Streamed tool-call arguments are sent in pieces of this many characters."""
_TOKENS_PER_MESSAGE = 3


class RequestError(Exception):
    """A client error answered with an OpenAI-shaped error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def to_response(self) -> web.Response:
        return error_response(self.status, self.message, param=self.param, code=self.code)


@dataclass(frozen=True)
class ChatRequest:
    """The validated parts of a chat-completion request body."""

    model: str
    messages: list[dict[str, Any]]
    functions: list[dict[str, Any]] = field(default_factory=list)  # tools[*].function
    stream: bool = False
    include_usage: bool = False


# -- requests -------------------------------------------------------------------


def parse_chat_request(body: Any, models: tuple[str, ...]) -> ChatRequest:
    """Validate a decoded request body (None if it was not JSON); raise :class:`RequestError` if invalid."""
    if not isinstance(body, dict):
        raise RequestError(400, "We could not parse the JSON body of your request. "
                                "The body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError(400, "you must provide a model parameter", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty array of message objects.",
                           param="messages")
    if not all(isinstance(message, dict) and isinstance(message.get("role"), str)
               for message in messages):
        raise RequestError(400, "Every message must be an object with a 'role'.", param="messages")
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise RequestError(400, "'tools' must be an array.", param="tools")
    if model not in models:
        raise RequestError(404, f"The model `{model}` does not exist or you do not have access to it.",
                           code="model_not_found")
    functions = [tool["function"] for tool in tools
                 if isinstance(tool, dict) and isinstance(tool.get("function"), dict)
                 and isinstance(tool["function"].get("name"), str)]
    stream_options = body.get("stream_options")
    include_usage = isinstance(stream_options, dict) and bool(stream_options.get("include_usage"))
    return ChatRequest(model=model, messages=messages, functions=functions,
                       stream=bool(body.get("stream")), include_usage=include_usage)


# -- usage ----------------------------------------------------------------------


def usage_of(chat: ChatRequest, reply: Reply, details: UsageDetails | None = None) -> dict[str, Any]:
    """The ``usage`` object answering ``chat`` with ``reply``: the reply's own numbers, else counted; with
    ``details``, also the ``*_tokens_details`` objects."""
    prompt_tokens, completion_tokens = reply.usage or (
        _count_prompt_tokens(chat.messages), _count_completion_tokens(reply))
    usage: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                             "total_tokens": prompt_tokens + completion_tokens}
    if details is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": details.cached_tokens}
        usage["completion_tokens_details"] = {"reasoning_tokens": details.reasoning_tokens}
    return usage


@dataclass(frozen=True)
class UsageDetails:
    """The counts an answer's usage reports in ``prompt_tokens_details``/``completion_tokens_details``."""

    cached_tokens: int
    reasoning_tokens: int


def _count_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    return sum(max(1, len(message_text(message).split())) + _TOKENS_PER_MESSAGE for message in messages)


def _count_completion_tokens(reply: Reply) -> int:
    words = len((reply.content or "").split())
    words += sum(len(f"{call.name} {call.arguments}".split()) for call in reply.tool_calls)
    return max(1, words)


# -- answers --------------------------------------------------------------------


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def completion(completion_id: str, created: int, model: str, reply: Reply,
               usage: dict[str, Any] | None) -> dict[str, Any]:
    """The ``chat.completion`` object answering with ``reply``; without a ``usage`` key when ``usage`` is None."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.content, "refusal": None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {"id": call.id, "type": "function",
             "function": {"name": call.name, "arguments": call.arguments}}
            for call in reply.tool_calls
        ]
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": reply.finish_reason}],
        "usage": usage,
        "system_fingerprint": None,
    }
    if usage is None:
        del body["usage"]
    return body


def completion_chunks(completion_id: str, created: int, chat: ChatRequest, reply: Reply,
                      usage: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects streaming ``reply``, in order.

    With ``usage`` None they are those of a server that ignores ``include_usage``: no usage chunk, and no
    ``usage`` key in the others.
    """
    include_usage = chat.include_usage and usage is not None

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": completion_id, "object": "chat.completion.chunk", "created": created,
            "model": chat.model, "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if include_usage:
            body["usage"] = None
        return body

    chunks = [chunk({"role": "assistant", "content": "" if reply.content is not None else None})]
    words = _WORD_WITH_TRAILING_SPACE.findall(reply.content or "")
    chunks += [chunk({"content": word}) for word in words]
    for index, call in enumerate(reply.tool_calls):
        chunks.append(chunk({"tool_calls": [{"index": index, "id": call.id, "type": "function",
                                             "function": {"name": call.name, "arguments": ""}}]}))
        argument_pieces = (call.arguments[start:start + _ARGUMENT_PIECE_CHARS]
                           for start in range(0, len(call.arguments), _ARGUMENT_PIECE_CHARS))
        chunks += [chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
                   for piece in argument_pieces]
    chunks.append(chunk({}, reply.finish_reason))
    if include_usage:
        chunks.append({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                       "model": chat.model, "system_fingerprint": None, "choices": [], "usage": usage})
    return chunks


# -- event streams --------------------------------------------------------------


async def start_event_stream(request: web.Request) -> web.StreamResponse:
    """Send the headers of a ``text/event-stream`` answer."""
    response = web.StreamResponse(headers={"Cache-Control": "no-cache"})
    response.content_type = "text/event-stream"
    await response.prepare(request)
    return response


def data_event(chunk: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(chunk)}\n\n".encode()


async def stream_events(request: web.Request, chunks: list[dict[str, Any]], latency: float, *,
                        response: web.StreamResponse | None = None) -> web.StreamResponse:
    """Send ``chunks`` then ``[DONE]``, spreading ``latency`` seconds between them.

    ``response`` is an event stream already started; without it one is started.
    """
    if response is None:
        response = await start_event_stream(request)
    delay_between_chunks = latency / len(chunks)
    try:
        for chunk in chunks:
            await response.write(data_event(chunk))
            if delay_between_chunks > 0:
                await asyncio.sleep(delay_between_chunks)
        await response.write(b"data: [DONE]\n\n")
    except ConnectionResetError:
        pass  # the client stopped reading mid-stream; nothing left to do
    return response


# -- errors ---------------------------------------------------------------------


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    """An OpenAI-shaped error body (``{"error": {...}}``) with HTTP ``status``."""
    if status == 429:
        error_type = "rate_limit_error"
    elif status >= 500:
        error_type = "server_error"
    else:
        error_type = "invalid_request_error"
    error = {"message": message, "type": error_type, "param": param, "code": code}
    return web.json_response({"error": error}, status=status, headers=headers)


def status_phrase(status: int) -> str:
    """The reason phrase of ``status`` (``"Not Found"`` for 404), else ``"HTTP <status>"``."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:  # a status http.HTTPStatus does not name
        return f"HTTP {status}"
