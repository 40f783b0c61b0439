"""The :class:`LocalServer` itself: starting and stopping, the routes, queueing replies and faults.

:meth:`LocalServer.queue_reply` queues canned answers (first in, first out);
:meth:`~LocalServer.fail_next`, :meth:`~LocalServer.hang_next`,
:meth:`~LocalServer.drop_next`, :meth:`~LocalServer.malform_next` and
:meth:`~LocalServer.keep_alive_next` queue faults for the next chat-completion
requests (see ``faults.py`` for how they apply); :meth:`~LocalServer.omit_usage_next`
leaves the usage out of the next answers and :meth:`~LocalServer.usage_details_next` adds
cached and reasoning token counts to it. Every JSON body received is
appended to ``LocalServer.requests``. All of these are thread-safe. ``latency``
seconds are slept before every successful answer, and ``latency / number of
chunks`` between stream chunks.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import Iterable
from types import TracebackType
from typing import Any, get_args

from aiohttp import web

from .faults import (DropFault, ErrorFault, Fault, HangFault, KeepAliveFault, MalformedFault, MalformedKind,
                     answer_before_validation, keep_alive_then_answer, malformed_answer)
from .protocol import (RequestError, UsageDetails, completion, completion_chunks, new_completion_id,
                       parse_chat_request, stream_events, usage_of)
from .replies import Reply, default_reply, scripted_reply

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

_SHUTDOWN_GRACE_SECONDS = 0.5
"""How long stopping waits for requests still being answered."""


class LocalServer:
    """OpenAI-compatible chat-completions server on aiohttp, for tests and demos.

    Run it on a daemon thread with :meth:`start`/:meth:`stop` (or ``with``), or
    on the running event loop with :meth:`astart`/:meth:`astop` (or
    ``async with``). See :mod:`rlm_toolkit.server` for the answers it gives.

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
        self._faults: deque[Fault] = deque()
        self._replies: deque[Reply] = deque()
        self._answers_without_usage = 0
        self._usage_details: deque[UsageDetails] = deque()
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
        self._add_faults(ErrorFault(status, retry_after, message, echo_authorization), count)

    def hang_next(self, seconds: float, count: int = 1) -> None:
        """Sleep ``seconds`` before answering each of the next ``count`` requests."""
        self._add_faults(HangFault(seconds), count)

    def drop_next(self, count: int = 1) -> None:
        """Close the connection without answering the next ``count`` requests."""
        self._add_faults(DropFault(), count)

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
        self._add_faults(MalformedFault(kind, after_chunks), count)

    def keep_alive_next(self, seconds: float, count: int = 1, *, interval: float = 0.1) -> None:
        """Keep each of the next ``count`` valid requests waiting ``seconds``, sending bytes but no answer.

        A streamed request gets the event-stream headers at once, then an SSE comment
        (``: keep-alive``) every ``interval`` seconds; a non-streamed one gets the
        headers, then a space of its JSON body every ``interval`` seconds. Then the
        answer follows as usual. A client's per-read timeout never fires on these.
        """
        if seconds < 0 or interval <= 0:
            raise ValueError(f"seconds must be >= 0 and interval > 0, got {seconds} and {interval}")
        self._add_faults(KeepAliveFault(seconds, interval), count)

    def omit_usage_next(self, count: int = 1) -> None:
        """Leave the token usage out of the next ``count`` answers, as a server that ignores
        ``stream_options.include_usage`` does.

        A non-streamed completion has no ``usage`` key; a stream has no usage chunk. Requests
        answered with an error or dropped do not count; the other faults apply as usual.
        """
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        with self._lock:
            self._answers_without_usage += count

    def usage_details_next(self, *, cached_tokens: int = 0, reasoning_tokens: int = 0, count: int = 1) -> None:
        """Report ``prompt_tokens_details.cached_tokens`` and ``completion_tokens_details.reasoning_tokens``
        in the usage of the next ``count`` answers that carry one (streamed or not).

        Answers left without usage by :meth:`omit_usage_next`, errors and dropped requests do not count.
        """
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        if cached_tokens < 0 or reasoning_tokens < 0:
            raise ValueError(f"token counts must be >= 0, got cached_tokens={cached_tokens} and "
                             f"reasoning_tokens={reasoning_tokens}")
        with self._lock:
            self._usage_details.extend([UsageDetails(cached_tokens, reasoning_tokens)] * count)

    def queue_reply(self, content: str | None = None, *, tool_calls: list[dict[str, Any]] | None = None,
                    usage: tuple[int, int] | None = None) -> None:
        """Queue a canned answer for the next request without a fault.

        ``tool_calls`` items are ``{"name": str, "arguments": dict | str, "id": str}``
        (``id`` optional); ``usage`` is ``(prompt_tokens, completion_tokens)``.
        """
        if content is None and not tool_calls:
            raise ValueError("queue_reply needs content, tool_calls, or both")
        reply = scripted_reply(content, tool_calls, usage)
        with self._lock:
            self._replies.append(reply)

    def reset(self) -> None:
        """Forget queued replies, pending faults, pending usage omissions and details, and recorded requests."""
        with self._lock:
            self._faults.clear()
            self._replies.clear()
            self._answers_without_usage = 0
            self._usage_details.clear()
            self.requests.clear()

    def _add_faults(self, fault: Fault, count: int) -> None:
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

        early_response = await answer_before_validation(fault, request)
        if early_response is not None:
            return early_response

        try:
            chat = parse_chat_request(body, self.models)
        except RequestError as error:
            return error.to_response()
        with self._lock:
            reply = self._replies.popleft() if self._replies else None
            omit_usage = self._answers_without_usage > 0
            if omit_usage:
                self._answers_without_usage -= 1
            details = self._usage_details.popleft() if self._usage_details and not omit_usage else None
        if reply is None:
            reply = default_reply(chat.messages, chat.functions)
        usage = None if omit_usage else usage_of(chat, reply, details)

        if self.latency > 0:
            await asyncio.sleep(self.latency)
        completion_id = new_completion_id()
        created = int(time.time())
        if isinstance(fault, MalformedFault):
            return await malformed_answer(request, fault, completion_id, created, chat, reply, usage)
        if isinstance(fault, KeepAliveFault):
            return await keep_alive_then_answer(request, fault, completion_id, created, chat, reply, usage,
                                                latency=lambda: self.latency)
        if chat.stream:
            chunks = completion_chunks(completion_id, created, chat, reply, usage)
            return await stream_events(request, chunks, self.latency)
        return web.json_response(completion(completion_id, created, chat.model, reply, usage))


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
