"""Fault injection: what a queued fault does to the request that consumes it.

Each chat-completion request consumes at most one fault, and faults take
precedence over queued replies. Error, hang and drop faults are applied before
the request is validated (:func:`answer_before_validation`); malformed answers
and keep-alives shape the answer to a valid request (an invalid one still gets
its 4xx error): :func:`malformed_answer`, :func:`keep_alive_then_answer`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from .protocol import (ChatRequest, completion, completion_chunks, data_event, error_response,
                       start_event_stream, status_phrase, stream_events)
from .replies import Reply

MalformedKind = Literal["invalid_json", "html", "no_choices", "bad_sse", "cut_stream"]
"""What :meth:`LocalServer.malform_next` sends (see there)."""

_PROXY_ERROR_PAGE = ("<!DOCTYPE html><html><head><title>Sign in</title></head>"
                     "<body><h1>Sign in to continue</h1><p>This network needs you to sign in.</p></body></html>")
"""The HTML page ``malform_next("html")`` sends."""


@dataclass(frozen=True)
class ErrorFault:
    """Answer with an error status."""

    status: int
    retry_after: float | None
    message: str | None
    echo_authorization: bool = False


@dataclass(frozen=True)
class HangFault:
    """Sleep before answering normally."""

    seconds: float


@dataclass(frozen=True)
class DropFault:
    """Close the connection without answering."""


@dataclass(frozen=True)
class MalformedFault:
    """Answer a valid request with a broken body (see ``LocalServer.malform_next``)."""

    kind: MalformedKind
    after_chunks: int


@dataclass(frozen=True)
class KeepAliveFault:
    """Keep the connection busy without answering for ``seconds``, then answer normally."""

    seconds: float
    interval: float


Fault = ErrorFault | HangFault | DropFault | MalformedFault | KeepAliveFault


async def answer_before_validation(fault: Fault | None, request: web.Request) -> web.StreamResponse | None:
    """Apply an error, drop or hang fault: the response to send, or None to go on answering."""
    if isinstance(fault, DropFault):
        if request.transport is not None:
            request.transport.close()
        # aiohttp cannot write this response to the closed connection and
        # treats it as a client disconnect; the client sees no answer.
        return web.Response()
    if isinstance(fault, ErrorFault):
        return _fault_response(fault, request.headers.get("Authorization"))
    if isinstance(fault, HangFault):
        await asyncio.sleep(fault.seconds)
    return None


def _fault_response(fault: ErrorFault, authorization: str | None) -> web.Response:
    code = None
    if fault.status == 429:
        default_message, code = "Rate limit reached for requests.", "rate_limit_exceeded"
    elif fault.status >= 500:
        default_message = "The server had an error while processing your request."
    else:
        default_message = f"{status_phrase(fault.status)}."
    default_message += " (Injected by LocalServer.)"
    message = fault.message or default_message
    if fault.echo_authorization:
        message = f"{message} Authorization header received: {authorization}"
    headers = None if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
    return error_response(fault.status, message, code=code, headers=headers)


async def malformed_answer(request: web.Request, fault: MalformedFault, completion_id: str, created: int,
                           chat: ChatRequest, reply: Reply, usage: dict[str, Any] | None) -> web.StreamResponse:
    """Answer with status 200 and the broken body ``fault.kind`` names."""
    body = completion(completion_id, created, chat.model, reply, usage)
    if fault.kind == "invalid_json":
        text = json.dumps(body)
        cut_inside_a_key = text.index('"message"') + len('"mess')
        return web.Response(text=text[:cut_inside_a_key], content_type="application/json")
    if fault.kind == "html":
        return web.Response(text=_PROXY_ERROR_PAGE, content_type="text/html")
    if fault.kind == "no_choices":
        del body["choices"]
        return web.json_response(body)
    chunks = completion_chunks(completion_id, created, chat, reply, usage)[:fault.after_chunks]
    response = await start_event_stream(request)
    try:
        for chunk in chunks:
            await response.write(data_event(chunk))
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


async def keep_alive_then_answer(request: web.Request, fault: KeepAliveFault, completion_id: str, created: int,
                                 chat: ChatRequest, reply: Reply, usage: dict[str, Any] | None,
                                 latency: Callable[[], float]) -> web.StreamResponse:
    """Send filler bytes for ``fault.seconds``, then the answer.

    A streamed answer spreads ``latency()`` seconds between its chunks, read once the
    filler is sent (``LocalServer.latency`` may change meanwhile).
    """
    if chat.stream:
        response = await start_event_stream(request)
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
            await response.write(json.dumps(completion(completion_id, created, chat.model, reply,
                                                       usage)).encode())
            return response
    except ConnectionResetError:
        return response
    chunks = completion_chunks(completion_id, created, chat, reply, usage)
    return await stream_events(request, chunks, latency(), response=response)
