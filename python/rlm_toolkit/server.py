"""An embedded, OpenAI-compatible chat-completions server for offline testing.

:class:`LocalServer` speaks enough of the OpenAI HTTP API for the official
``openai`` client (sync and async, streaming or not) to work against it
unchanged; point the client at ``server.base_url`` with ``server.api_key``::

    with LocalServer() as server:
        client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key)
        client.chat.completions.create(model="gpt-4o-mini",
                                       messages=[{"role": "user", "content": "hi"}])

Endpoints
    ``POST /v1/chat/completions`` and ``GET /v1/models``. Any bearer token (or
    none) is accepted.

Default answers (deterministic: the same request always gets the same text)
    * Tool results: when the conversation ends with ``tool`` messages the answer
      is ``"Tool results: " + "; ".join(f"{name} -> {content}")``, ``name`` being
      the function name of the matching ``tool_call_id`` in the preceding
      assistant message (``"unknown"`` if there is none).
    * Tool calls: when the request has ``tools``, no ``tool`` message follows the
      last user message yet, and that message mentions function names
      (case-insensitive, underscores may be written as spaces), the answer is
      one tool call per mentioned function, in order of mention, with
      ``finish_reason`` ``"tool_calls"``. Arguments are the JSON object literal
      written right after the name (``get_weather {"city": "Oslo"}``) if there is
      one; otherwise every *required* property of the function's JSON schema
      gets a placeholder: string -> the word right after the name (``"test"``
      if none), integer -> 1, number -> 1.0, boolean -> true, array -> [],
      object -> {}, anything else -> null.
    * Otherwise the answer is ``f"Hello! You said: {m}"`` for the last user
      message ``m``; if ``m`` contains the word "long" a fixed paragraph is
      appended so the answer is about 60 words long (for streaming demos).

Usage numbers
    ``prompt_tokens`` is the sum over all messages of
    ``max(1, word count of the text content) + 3``; ``completion_tokens`` is
    the word count of the answer (for tool calls: of each call's name and
    arguments JSON), at least 1; ``total_tokens`` is their sum.
    ``queue_reply(usage=(prompt, completion))`` overrides both.

Streaming (``"stream": true``)
    Server-sent events: a first chunk with ``delta.role``, one chunk per word of
    the content (each word keeps its trailing whitespace, so joining the deltas
    gives the exact content), tool calls in OpenAI's ``delta.tool_calls`` format
    (id and name first, then the arguments in pieces), a chunk carrying
    ``finish_reason``, a ``choices: []`` chunk with ``usage`` when the request
    has ``"stream_options": {"include_usage": true}``, and ``data: [DONE]``.

Scripting and fault injection
    :meth:`LocalServer.queue_reply` queues canned answers (first in, first
    out); :meth:`~LocalServer.fail_next`, :meth:`~LocalServer.hang_next`,
    :meth:`~LocalServer.drop_next`, :meth:`~LocalServer.malform_next` and
    :meth:`~LocalServer.keep_alive_next` queue faults for the next
    chat-completion requests. Each request consumes at most one fault, and
    faults take precedence over queued replies. Error, hang and drop faults
    are applied before the request is validated; malformed answers and
    keep-alives shape the answer to a valid request (an invalid one still
    gets its 4xx error). Every JSON body received is appended to
    ``LocalServer.requests``. All of these are thread-safe. ``latency``
    seconds are slept before every successful answer, and
    ``latency / number of chunks`` between stream chunks.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any, Literal, get_args

from aiohttp import web

__all__ = ["DEFAULT_MODELS", "LOCAL_API_KEY", "LocalServer", "MalformedKind", "main_serve"]

MalformedKind = Literal["invalid_json", "html", "no_choices", "bad_sse", "cut_stream"]
"""What :meth:`LocalServer.malform_next` sends (see there)."""

DEFAULT_MODELS: tuple[str, ...] = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-4-turbo",
    "gpt-3.5-turbo",
    "o3-mini",
    "local-model",
)
"""Model names accepted when :class:`LocalServer` is given no ``models``."""

LOCAL_API_KEY = "sk-local-test-key"
"""Dummy API key for clients; the server accepts any key, or none."""

_LONG_ANSWER_EXTRA = (
    "This is a longer answer, written so that streaming demos have something "
    "to show. Every word arrives as its own chunk, which makes progress bars, "
    "token counters and callbacks easy to watch. The text never changes, so the "
    "same question always gets the same answer and tests can rely on it."
)
_LONG_WORD = re.compile(r"\blong\b", re.IGNORECASE)
_WORD_WITH_TRAILING_SPACE = re.compile(r"\s*\S+\s*")
_WORD_AFTER_TOOL_NAME = re.compile(r"\W*(\w+(?:['.-]\w+)*)")
_JSON_DECODER = json.JSONDecoder()
_ARGUMENT_PIECE_CHARS = 16
"""Streamed tool-call arguments are sent in pieces of this many characters."""
_PROXY_ERROR_PAGE = ("<!DOCTYPE html><html><head><title>Sign in</title></head>"
                     "<body><h1>Sign in to continue</h1><p>This network needs you to sign in.</p></body></html>")
"""The HTML page ``malform_next("html")`` sends."""
_SHUTDOWN_GRACE_SECONDS = 0.5
"""How long stopping waits for requests still being answered."""
_TOKENS_PER_MESSAGE = 3


class _RequestError(Exception):
    """A client error answered with an OpenAI-shaped error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def to_response(self) -> web.Response:
        return _error_response(self.status, self.message, param=self.param, code=self.code)


@dataclass(frozen=True)
class _ErrorFault:
    """Answer with an error status."""

    status: int
    retry_after: float | None
    message: str | None
    echo_authorization: bool = False


@dataclass(frozen=True)
class _HangFault:
    """Sleep before answering normally."""

    seconds: float


@dataclass(frozen=True)
class _DropFault:
    """Close the connection without answering."""


@dataclass(frozen=True)
class _MalformedFault:
    """Answer a valid request with a broken body (see ``LocalServer.malform_next``)."""

    kind: MalformedKind
    after_chunks: int


@dataclass(frozen=True)
class _KeepAliveFault:
    """Keep the connection busy without answering for ``seconds``, then answer normally."""

    seconds: float
    interval: float


_Fault = _ErrorFault | _HangFault | _DropFault | _MalformedFault | _KeepAliveFault


@dataclass(frozen=True)
class _ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it


@dataclass(frozen=True)
class _Reply:
    """What the assistant answers; ``usage`` None means "compute it"."""

    content: str | None
    tool_calls: tuple[_ToolCall, ...] = ()
    usage: tuple[int, int] | None = None

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_calls else "stop"


@dataclass(frozen=True)
class _ChatRequest:
    """The validated parts of a chat-completion request body."""

    model: str
    messages: list[dict[str, Any]]
    functions: list[dict[str, Any]] = field(default_factory=list)  # tools[*].function
    stream: bool = False
    include_usage: bool = False


class LocalServer:
    """OpenAI-compatible chat-completions server on aiohttp, for tests and demos.

    Run it on a daemon thread with :meth:`start`/:meth:`stop` (or ``with``), or
    on the running event loop with :meth:`astart`/:meth:`astop` (or
    ``async with``). See the module docstring for the answers it gives.

    Attributes: ``port`` is the listening port once started (the requested one
    before); ``base_url`` and ``api_key`` are what clients need; ``latency`` may
    be changed while serving; ``requests`` holds the JSON body of every
    chat-completion request received, in order.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, latency: float = 0.0,
                 models: Iterable[str] | None = None) -> None:
        self.host = host
        self.port = port
        self.latency = latency
        self.models: tuple[str, ...] = DEFAULT_MODELS if models is None else tuple(models)
        self.api_key = LOCAL_API_KEY
        self.requests: list[dict[str, Any]] = []
        self._requested_port = port
        self._lock = threading.Lock()
        self._faults: deque[_Fault] = deque()
        self._replies: deque[_Reply] = deque()
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None

    @property
    def base_url(self) -> str:
        """``http://<host>:<port>/v1``; wildcard hosts are reached via 127.0.0.1."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/v1"

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> LocalServer:
        """Serve on a daemon thread with its own event loop; return once listening."""
        self._ensure_stopped()
        loop = asyncio.new_event_loop()
        listening = threading.Event()
        startup_errors: list[OSError] = []
        thread = threading.Thread(
            target=self._serve_in_thread, args=(loop, listening, startup_errors),
            name=f"LocalServer-{self.host}:{self._requested_port}", daemon=True,
        )
        thread.start()
        listening.wait()
        if startup_errors:
            thread.join()
            raise startup_errors[0]
        if self._runner is None:
            thread.join()
            raise RuntimeError("LocalServer thread exited before listening")
        self._thread, self._thread_loop = thread, loop
        return self

    def stop(self) -> None:
        """Stop a server started with :meth:`start` and join its thread; idempotent."""
        if self._thread is None or self._thread_loop is None:
            if self._runner is not None:
                raise RuntimeError("LocalServer was started with astart(); stop it with astop()")
            return
        self._thread_loop.call_soon_threadsafe(self._thread_loop.stop)
        self._thread.join()
        self._thread = self._thread_loop = None

    async def astart(self) -> LocalServer:
        """Serve on the running event loop; return once listening."""
        self._ensure_stopped()
        await self._open()
        return self

    async def astop(self) -> None:
        """Stop a server started with :meth:`astart`; idempotent."""
        if self._thread is not None:
            raise RuntimeError("LocalServer was started with start(); stop it with stop()")
        await self._close()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> LocalServer:
        return await self.astart()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.astop()

    def _ensure_stopped(self) -> None:
        if self._runner is not None or self._thread is not None:
            raise RuntimeError("LocalServer is already running")

    def _serve_in_thread(self, loop: asyncio.AbstractEventLoop, listening: threading.Event,
                         startup_errors: list[OSError]) -> None:
        asyncio.set_event_loop(loop)
        try:
            try:
                loop.run_until_complete(self._open())
            except OSError as exc:  # e.g. the port is taken
                startup_errors.append(exc)
                return
            finally:
                listening.set()
            loop.run_forever()
            loop.run_until_complete(self._close())
        finally:
            loop.close()

    async def _open(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle_chat_completion)
        app.router.add_get("/v1/models", self._handle_list_models)
        # handler_cancellation: a request whose client went away (e.g. timed out
        # on hang_next) stops instead of sleeping on.
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                               shutdown_timeout=_SHUTDOWN_GRACE_SECONDS)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self._requested_port).start()
        except OSError:
            await runner.cleanup()
            raise
        self.port = runner.addresses[0][1]
        self._runner = runner

    async def _close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -- scripting and fault injection ---------------------------------------

    def fail_next(self, status: int, count: int = 1, *, retry_after: float | None = None,
                  message: str | None = None, echo_authorization: bool = False) -> None:
        """Answer the next ``count`` requests with HTTP ``status`` and an OpenAI error body.

        ``retry_after`` (seconds, may be fractional) is sent as the ``Retry-After``
        header; ``message`` replaces the default error message. With
        ``echo_authorization`` the message ends with the request's
        ``Authorization`` header, as some proxies do.
        """
        if not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), got {status}")
        self._add_faults(_ErrorFault(status, retry_after, message, echo_authorization), count)

    def hang_next(self, seconds: float, count: int = 1) -> None:
        """Sleep ``seconds`` before answering each of the next ``count`` requests."""
        self._add_faults(_HangFault(seconds), count)

    def drop_next(self, count: int = 1) -> None:
        """Close the connection without answering the next ``count`` requests."""
        self._add_faults(_DropFault(), count)

    def malform_next(self, kind: MalformedKind, count: int = 1, *, after_chunks: int = 1) -> None:
        """Answer the next ``count`` valid requests with status 200 and a broken body.

        ``kind`` is one of:

        * ``"invalid_json"``: ``application/json`` that is not JSON (a completion cut short
          inside the key ``"message"``);
        * ``"html"``: an HTML page (``text/html``), as a misconfigured proxy sends;
        * ``"no_choices"``: a JSON completion object without ``choices``;
        * ``"bad_sse"``: an event stream whose data line after the first ``after_chunks``
          chunks is not JSON (then ``[DONE]``);
        * ``"cut_stream"``: an event stream whose connection is closed after the first
          ``after_chunks`` chunks, without ``[DONE]``.

        The stream kinds answer with an event stream even to a non-streamed request.
        The first chunk carries only the role, so ``after_chunks=1`` sends no text.
        """
        if kind not in get_args(MalformedKind):
            raise ValueError(f"kind must be one of {get_args(MalformedKind)}, got {kind!r}")
        if after_chunks < 0:
            raise ValueError(f"after_chunks must be 0 or more, got {after_chunks}")
        self._add_faults(_MalformedFault(kind, after_chunks), count)

    def keep_alive_next(self, seconds: float, count: int = 1, *, interval: float = 0.1) -> None:
        """Keep each of the next ``count`` valid requests waiting ``seconds``, sending bytes but no answer.

        A streamed request gets the event-stream headers at once, then an SSE comment
        (``: keep-alive``) every ``interval`` seconds; a non-streamed one gets the
        headers, then a space of its JSON body every ``interval`` seconds. Then the
        answer follows as usual. A client's per-read timeout never fires on these.
        """
        if seconds < 0 or interval <= 0:
            raise ValueError(f"seconds must be >= 0 and interval > 0, got {seconds} and {interval}")
        self._add_faults(_KeepAliveFault(seconds, interval), count)

    def queue_reply(self, content: str | None = None, *, tool_calls: list[dict[str, Any]] | None = None,
                    usage: tuple[int, int] | None = None) -> None:
        """Queue a canned answer for the next request without a fault.

        ``tool_calls`` items are ``{"name": str, "arguments": dict | str, "id": str}``
        (``id`` optional); ``usage`` is ``(prompt_tokens, completion_tokens)``.
        """
        if content is None and not tool_calls:
            raise ValueError("queue_reply needs content, tool_calls, or both")
        calls = tuple(
            _ToolCall(
                id=item.get("id") or _new_tool_call_id(),
                name=item["name"],
                arguments=item["arguments"] if isinstance(item["arguments"], str)
                else _compact_json(item["arguments"]),
            )
            for item in tool_calls or ()
        )
        with self._lock:
            self._replies.append(_Reply(content, calls, usage))

    def reset(self) -> None:
        """Forget queued replies, pending faults and recorded requests."""
        with self._lock:
            self._faults.clear()
            self._replies.clear()
            self.requests.clear()

    def _add_faults(self, fault: _Fault, count: int) -> None:
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        with self._lock:
            self._faults.extend([fault] * count)

    # -- request handling ----------------------------------------------------

    async def _handle_list_models(self, request: web.Request) -> web.Response:
        return web.json_response({
            "object": "list",
            "data": [{"id": name, "object": "model", "created": 0, "owned_by": "rlm-toolkit"}
                     for name in self.models],
        })

    async def _handle_chat_completion(self, request: web.Request) -> web.StreamResponse:
        raw_body = await request.read()
        try:
            body = json.loads(raw_body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            body = None
        with self._lock:
            if isinstance(body, dict):
                self.requests.append(body)
            fault = self._faults.popleft() if self._faults else None

        if isinstance(fault, _DropFault):
            if request.transport is not None:
                request.transport.close()
            # aiohttp cannot write this response to the closed connection and
            # treats it as a client disconnect; the client sees no answer.
            return web.Response()
        if isinstance(fault, _ErrorFault):
            return _fault_response(fault, request.headers.get("Authorization"))
        if isinstance(fault, _HangFault):
            await asyncio.sleep(fault.seconds)

        try:
            chat = _parse_chat_request(body, self.models)
        except _RequestError as error:
            return error.to_response()
        with self._lock:
            reply = self._replies.popleft() if self._replies else None
        if reply is None:
            reply = _default_reply(chat)
        prompt_tokens, completion_tokens = reply.usage or (
            _count_prompt_tokens(chat.messages), _count_completion_tokens(reply))
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}

        if self.latency > 0:
            await asyncio.sleep(self.latency)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if isinstance(fault, _MalformedFault):
            return await self._malformed(request, fault, completion_id, created, chat, reply, usage)
        if isinstance(fault, _KeepAliveFault):
            return await self._keep_alive_then_answer(request, fault, completion_id, created, chat, reply,
                                                      usage)
        if chat.stream:
            chunks = _completion_chunks(completion_id, created, chat, reply, usage)
            return await self._stream(request, chunks)
        return web.json_response(_completion(completion_id, created, chat.model, reply, usage))

    async def _stream(self, request: web.Request, chunks: list[dict[str, Any]], *,
                      response: web.StreamResponse | None = None) -> web.StreamResponse:
        if response is None:
            response = await _start_event_stream(request)
        delay_between_chunks = self.latency / len(chunks)
        try:
            for chunk in chunks:
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
                if delay_between_chunks > 0:
                    await asyncio.sleep(delay_between_chunks)
            await response.write(b"data: [DONE]\n\n")
        except ConnectionResetError:
            pass  # the client stopped reading mid-stream; nothing left to do
        return response

    async def _malformed(self, request: web.Request, fault: _MalformedFault, completion_id: str, created: int,
                         chat: _ChatRequest, reply: _Reply, usage: dict[str, int]) -> web.StreamResponse:
        completion = _completion(completion_id, created, chat.model, reply, usage)
        if fault.kind == "invalid_json":
            text = json.dumps(completion)
            cut_inside_a_key = text.index('"message"') + len('"mess')
            return web.Response(text=text[:cut_inside_a_key], content_type="application/json")
        if fault.kind == "html":
            return web.Response(text=_PROXY_ERROR_PAGE, content_type="text/html")
        if fault.kind == "no_choices":
            del completion["choices"]
            return web.json_response(completion)
        chunks = _completion_chunks(completion_id, created, chat, reply, usage)[:fault.after_chunks]
        response = await _start_event_stream(request)
        try:
            for chunk in chunks:
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            if fault.kind == "bad_sse":
                await response.write(b'data: {"id": "chatcmpl-broken", "choices": [\n\n')
                await response.write(b"data: [DONE]\n\n")
                return response
        except ConnectionResetError:
            return response
        # cut_stream: close the connection without ending the chunked body.
        if request.transport is not None:
            request.transport.close()
        return response

    async def _keep_alive_then_answer(self, request: web.Request, fault: _KeepAliveFault, completion_id: str,
                                      created: int, chat: _ChatRequest, reply: _Reply,
                                      usage: dict[str, int]) -> web.StreamResponse:
        if chat.stream:
            response = await _start_event_stream(request)
            filler = b": keep-alive\n\n"
        else:
            response = web.StreamResponse()
            response.content_type = "application/json"
            await response.prepare(request)
            filler = b" "
        deadline = time.monotonic() + fault.seconds
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                await response.write(filler)
                await asyncio.sleep(min(fault.interval, remaining))
            if not chat.stream:
                await response.write(json.dumps(_completion(completion_id, created, chat.model, reply,
                                                            usage)).encode())
                return response
        except ConnectionResetError:
            return response
        chunks = _completion_chunks(completion_id, created, chat, reply, usage)
        return await self._stream(request, chunks, response=response)


async def _start_event_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Cache-Control": "no-cache"})
    response.content_type = "text/event-stream"
    await response.prepare(request)
    return response


# -- request parsing ------------------------------------------------------------


def _parse_chat_request(body: Any, models: tuple[str, ...]) -> _ChatRequest:
    if not isinstance(body, dict):
        raise _RequestError(400, "We could not parse the JSON body of your request. "
                                 "The body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _RequestError(400, "you must provide a model parameter", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _RequestError(400, "'messages' must be a non-empty array of message objects.",
                            param="messages")
    if not all(isinstance(message, dict) and isinstance(message.get("role"), str)
               for message in messages):
        raise _RequestError(400, "Every message must be an object with a 'role'.", param="messages")
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise _RequestError(400, "'tools' must be an array.", param="tools")
    if model not in models:
        raise _RequestError(404, f"The model `{model}` does not exist or you do not have access to it.",
                            code="model_not_found")
    functions = [tool["function"] for tool in tools
                 if isinstance(tool, dict) and isinstance(tool.get("function"), dict)
                 and isinstance(tool["function"].get("name"), str)]
    stream_options = body.get("stream_options")
    include_usage = isinstance(stream_options, dict) and bool(stream_options.get("include_usage"))
    return _ChatRequest(model=model, messages=messages, functions=functions,
                        stream=bool(body.get("stream")), include_usage=include_usage)


def _message_text(message: dict[str, Any]) -> str:
    """The text of a message's content: a string, or the text parts of a list."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part["text"] for part in content
                        if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


# -- default answers ----------------------------------------------------------


def _default_reply(chat: _ChatRequest) -> _Reply:
    messages = chat.messages
    trailing_tool_results: list[dict[str, Any]] = []
    for message in reversed(messages):
        if message["role"] != "tool":
            break
        trailing_tool_results.insert(0, message)
    if trailing_tool_results:
        return _Reply(_tool_results_answer(messages, trailing_tool_results))

    last_user_index = max((index for index, message in enumerate(messages) if message["role"] == "user"),
                          default=-1)
    user_text = _message_text(messages[last_user_index]) if last_user_index >= 0 else ""
    tool_answered = any(message["role"] == "tool" for message in messages[last_user_index + 1:])
    if chat.functions and not tool_answered:
        tool_calls = _mentioned_tool_calls(user_text, chat.functions)
        if tool_calls:
            return _Reply(None, tool_calls)

    answer = f"Hello! You said: {user_text}"
    if _LONG_WORD.search(user_text):
        answer = f"{answer} {_LONG_ANSWER_EXTRA}"
    return _Reply(answer)


def _tool_results_answer(messages: list[dict[str, Any]], tool_results: list[dict[str, Any]]) -> str:
    calling_message = next((message for message in reversed(messages)
                            if message["role"] == "assistant" and message.get("tool_calls")), {})
    function_name_by_call_id = {
        call.get("id"): call.get("function", {}).get("name")
        for call in calling_message.get("tool_calls", []) if isinstance(call, dict)
    }
    parts = []
    for result in tool_results:
        function_name = function_name_by_call_id.get(result.get("tool_call_id")) or "unknown"
        parts.append(f"{function_name} -> {_message_text(result)}")
    return "Tool results: " + "; ".join(parts)


def _mentioned_tool_calls(user_text: str, functions: list[dict[str, Any]]) -> tuple[_ToolCall, ...]:
    """One call per function named in ``user_text``, in order of first mention."""
    mentions: list[tuple[int, int, dict[str, Any]]] = []  # (start, end, function)
    for function in functions:
        name_parts = (re.escape(part) for part in function["name"].split("_"))
        pattern = re.compile(r"(?<!\w)" + "[_ ]".join(name_parts) + r"(?!\w)", re.IGNORECASE)
        match = pattern.search(user_text)
        if match:
            mentions.append((match.start(), match.end(), function))
    mentions.sort(key=lambda mention: mention[0])
    return tuple(
        _ToolCall(id=_new_tool_call_id(), name=function["name"],
                  arguments=_compact_json(_arguments_after(user_text, end, function.get("parameters"))))
        for _, end, function in mentions
    )


def _arguments_after(text: str, position: int, schema: Any) -> dict[str, Any]:
    """The JSON object literal at ``position`` in ``text``, else schema placeholders."""
    literal_start = len(text) - len(text[position:].lstrip())
    if text.startswith("{", literal_start):
        try:
            literal, _ = _JSON_DECODER.raw_decode(text, literal_start)
        except json.JSONDecodeError:
            literal = None
        if isinstance(literal, dict):
            return literal
    if not isinstance(schema, dict):
        return {}
    word_match = _WORD_AFTER_TOOL_NAME.match(text, position)
    word = word_match.group(1) if word_match else "test"
    properties = schema.get("properties") or {}
    return {name: _placeholder_value(properties.get(name) or {}, word)
            for name in schema.get("required") or []}


def _placeholder_value(property_schema: dict[str, Any], word: str) -> Any:
    json_type = property_schema.get("type")
    if isinstance(json_type, list):  # e.g. ["string", "null"]
        json_type = next((name for name in json_type if name != "null"), None)
    placeholders: dict[str, Any] = {"string": word, "integer": 1, "number": 1.0, "boolean": True,
                                    "array": [], "object": {}}
    return placeholders.get(json_type) if isinstance(json_type, str) else None


def _count_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    return sum(max(1, len(_message_text(message).split())) + _TOKENS_PER_MESSAGE for message in messages)


def _count_completion_tokens(reply: _Reply) -> int:
    words = len((reply.content or "").split())
    words += sum(len(f"{call.name} {call.arguments}".split()) for call in reply.tool_calls)
    return max(1, words)


# -- response bodies ------------------------------------------------------------


def _completion(completion_id: str, created: int, model: str, reply: _Reply,
                usage: dict[str, int]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.content, "refusal": None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {"id": call.id, "type": "function",
             "function": {"name": call.name, "arguments": call.arguments}}
            for call in reply.tool_calls
        ]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": reply.finish_reason}],
        "usage": usage,
        "system_fingerprint": None,
    }


def _completion_chunks(completion_id: str, created: int, chat: _ChatRequest, reply: _Reply,
                       usage: dict[str, int]) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects streaming ``reply``, in order."""

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": completion_id, "object": "chat.completion.chunk", "created": created,
            "model": chat.model, "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if chat.include_usage:
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
    if chat.include_usage:
        chunks.append({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                       "model": chat.model, "system_fingerprint": None, "choices": [], "usage": usage})
    return chunks


def _error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                    headers: dict[str, str] | None = None) -> web.Response:
    if status == 429:
        error_type = "rate_limit_error"
    elif status >= 500:
        error_type = "server_error"
    else:
        error_type = "invalid_request_error"
    error = {"message": message, "type": error_type, "param": param, "code": code}
    return web.json_response({"error": error}, status=status, headers=headers)


def _fault_response(fault: _ErrorFault, authorization: str | None) -> web.Response:
    code = None
    if fault.status == 429:
        default_message, code = "Rate limit reached for requests.", "rate_limit_exceeded"
    elif fault.status >= 500:
        default_message = "The server had an error while processing your request."
    else:
        default_message = f"{_status_phrase(fault.status)}."
    default_message += " (Injected by LocalServer.)"
    message = fault.message or default_message
    if fault.echo_authorization:
        message = f"{message} Authorization header received: {authorization}"
    headers = None if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
    return _error_response(fault.status, message, code=code, headers=headers)


def _status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:  # a status http.HTTPStatus does not name
        return f"HTTP {status}"


def _new_tool_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# -- command line -----------------------------------------------------------------


def main_serve(host: str, port: int) -> None:
    """Serve in the foreground until Ctrl-C, printing the base URL (``rlm-toolkit serve``)."""

    async def serve_until_cancelled() -> None:
        async with LocalServer(host, port) as server:
            print(f"Local OpenAI-compatible server at {server.base_url} "
                  f"(api key: {server.api_key}). Press Ctrl-C to stop.", flush=True)
            await asyncio.Event().wait()

    try:
        asyncio.run(serve_until_cancelled())
    except KeyboardInterrupt:
        print("Stopped.", flush=True)
