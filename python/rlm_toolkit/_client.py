"""The client layer: the official ``openai`` clients of one endpoint, one attempt sent and read within its
timeouts (sync or async), the retry policy, and the messages that say why a call failed.

The clients' own retries are off: the run logic retries what they would (408, 409, 429, 5xx, timeouts,
connection errors) and malformed answers itself (``_is_retryable``), waiting per ``Retry-After`` or with
full-jitter backoff (``_delay_before_retry``).
Every failure of an attempt is raised as an ``openai.APIError``.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import os
import random
import sys
import threading
import time
import urllib.parse
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator
from contextlib import AsyncExitStack
from datetime import datetime, timezone
from typing import Any, TypeVar

import httpx2
import openai

from ._chat_attempt import _RETRY_ADVICE, _ChatAttempt, _chunks, _MalformedAnswerError
from ._watchdog import _guarding, _ReadGuard
from .callbacks._pickling import PickledByConfiguration
from .errors import MissingAPIKeyError, RLMConfigError
from .secrets import redact, register_secret, register_url_secrets

MAX_RETRY_AFTER_SECONDS = 120.0
"""A server's ``Retry-After`` is honoured up to this many seconds."""
RETRIED_STATUSES = frozenset({408, 409, 429})
"""HTTP statuses below 500 that are retried (as the official client does): Request Timeout, Conflict (such as a
lock timeout) and Too Many Requests. Every 5xx is retried too."""
_KEY_PLACEHOLDER = "not-needed"
"""Sent as the API key to a ``base_url`` given without one (local servers ignore it)."""
_T = TypeVar("_T")


class _OpenAIConnection(PickledByConfiguration):
    """The official clients for one endpoint: one sync client, one async client per event loop.

    (An async client's connection pool belongs to the loop it was first used on, so each loop gets its own;
    ``batch`` closes the one of the loop it ran.) The API key lives only in here and in the clients, and
    in the pickled form: a connection pickles as its options, with the API key and base URL it resolved
    (given, or read from ``$OPENAI_API_KEY``/``$OPENAI_BASE_URL``), so a worker talks to the same endpoint
    with the same key through clients of its own.
    """

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str | None,
        timeout: float,
        idle_timeout: float | None,
        options: dict[str, Any],
    ) -> None:
        if "max_retries" in options:
            raise RLMConfigError("set retries with max_attempts=, not max_retries= (the RLM retries by itself)")
        if timeout <= 0:
            raise RLMConfigError(f"timeout must be a positive number of seconds, got {timeout}")
        if idle_timeout is not None and idle_timeout <= 0:
            raise RLMConfigError(f"idle_timeout must be a positive number of seconds or None, got {idle_timeout}")
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        base_url_source = "base_url" if base_url else "OPENAI_BASE_URL"
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        if base_url and (problem := _base_url_problem(base_url)):
            raise RLMConfigError(f"invalid {base_url_source} {problem}")
        if not api_key and not base_url:
            raise MissingAPIKeyError(
                "no OpenAI API key: set OPENAI_API_KEY or pass api_key=, or pass base_url= for an "
                "OpenAI-compatible server (`rlm-toolkit serve` runs a local one)"
            )
        self._keep_argument("api_key", api_key or None)
        self._keep_argument("base_url", base_url)
        self.timeout = timeout
        self.idle_timeout = idle_timeout
        self._api_key = api_key or _KEY_PLACEHOLDER
        if api_key:
            register_secret(api_key)
        if base_url:
            register_url_secrets(base_url)
        self._client_options = {
            **options,
            "api_key": self._api_key,
            "base_url": base_url,
            "timeout": timeout,
            "max_retries": 0,
        }
        self.sync_client = openai.OpenAI(**self._client_options)
        self.display_url = redact(str(self.sync_client.base_url).rstrip("/"))
        """The base URL with its password (if any) replaced by ``[REDACTED]``: for messages and ``repr``."""
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, openai.AsyncOpenAI] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def async_client(self) -> openai.AsyncOpenAI:
        """The async client of the running event loop (created on first use)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._async_clients.get(loop)
            if client is None:
                client = self._async_clients[loop] = openai.AsyncOpenAI(**self._client_options)
            return client

    async def aclose_async_client(self) -> None:
        """Close the running event loop's async client, if it has one."""
        with self._lock:
            client = self._async_clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.close()


def _base_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be an endpoint's base URL (``"'ftp://x': it does not ..."``), or None if it can be."""
    why = _why_not_a_base_url(url)
    if why is None:
        return None
    return f"{_without_user_info(url)!r}: {why}; give an http:// or https:// URL such as http://127.0.0.1:8000/v1"


def _why_not_a_base_url(url: str) -> str | None:
    scheme, separator, _ = url.partition("://")
    if not separator or scheme.lower() not in ("http", "https"):
        return "it does not start with http:// or https://"
    if any(character.isspace() for character in url):
        return "it contains whitespace"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # raises ValueError unless the port is a number from 0 to 65535
    except ValueError as error:
        return f"it is not a valid URL ({error})"
    if not parts.hostname:
        return "it has no host name"
    return None


def _without_user_info(url: str) -> str:
    """``url`` with whatever precedes its last ``@`` (user info, which may hold a password) shown as
    ``[REDACTED]``: a URL too malformed to use may also be too malformed for ``redact``."""
    _, at, after = url.rpartition("@")
    if not at:
        return url
    scheme, separator, _ = url.partition("://")
    return f"{scheme}{separator}[REDACTED]@{after}" if separator and "@" not in scheme else f"[REDACTED]@{after}"


# -- one attempt, within its timeouts ---------------------------------------------------------------


class _AttemptTimeoutError(openai.APITimeoutError):
    """An attempt that waited longer than ``timeout`` in all, or than ``idle_timeout`` at once (``option``)."""

    def __init__(self, request: httpx2.Request, option: str, seconds: float) -> None:
        super().__init__(request)
        self.option = option
        self.seconds = seconds
        self.message = f"no answer within {option}={seconds:g} s"
        self.args = (self.message,)


class _AttemptClock:
    """How long one attempt may still wait for the server (see the ``rlm_toolkit.rlm`` docstring)."""

    def __init__(self, timeout: float, idle_timeout: float | None) -> None:
        self.timeout = timeout
        self.idle_timeout = idle_timeout
        self.left = timeout

    def next_wait(self) -> tuple[float, str]:
        """The longest the next wait may take, and the option that sets it."""
        if self.idle_timeout is not None and self.idle_timeout < self.left:
            return self.idle_timeout, "idle_timeout"
        return max(self.left, 0.0), "timeout"

    def limit(self, option: str) -> float:
        return self.timeout if option == "timeout" or self.idle_timeout is None else self.idle_timeout

    def spend(self, seconds: float) -> None:
        self.left -= seconds


def _attempt_sync(
    connection: _OpenAIConnection, client: openai.OpenAI, attempt: _ChatAttempt
) -> Generator[str, None, None]:
    """Send ``attempt``'s request, yielding streamed text; ``attempt`` keeps the answer.

    Every failure is raised as an ``openai.APIError`` (see ``_read_failure``).
    """
    clock = _AttemptClock(connection.timeout, connection.idle_timeout)
    bound, option = clock.next_wait()
    started = time.monotonic()
    try:
        with client.chat.completions.with_streaming_response.create(**attempt.params, timeout=bound) as raw:
            clock.spend(time.monotonic() - started)
            attempt.http_response = raw.http_response
            with _guarding(raw.http_response) as guard:
                if not attempt.stream:
                    attempt.take_completion(_read_sync(guard, clock, attempt, raw.parse))
                    return
                attempt.check_event_stream()
                chunks = raw.parse()
                while (chunk := _read_sync(guard, clock, attempt, next, chunks, None)) is not None:
                    if text := attempt.take_chunk(chunk):
                        yield text
                attempt.check_stream_end()
    except openai.APITimeoutError as error:
        if isinstance(error, _AttemptTimeoutError):
            raise
        raise _AttemptTimeoutError(error.request, option, clock.limit(option)) from error


async def _attempt_async(
    connection: _OpenAIConnection, client: openai.AsyncOpenAI, attempt: _ChatAttempt
) -> AsyncGenerator[str, None]:
    """``_attempt_sync`` with the async client: the same waits, bounded by asyncio timeouts."""
    clock = _AttemptClock(connection.timeout, connection.idle_timeout)
    bound, option = clock.next_wait()
    started = time.monotonic()
    async with AsyncExitStack() as exit_stack:
        opening = client.chat.completions.with_streaming_response.create(**attempt.params, timeout=bound)
        try:
            raw = await _within(bound, exit_stack.enter_async_context(opening))
        except (asyncio.TimeoutError, openai.APITimeoutError) as error:
            request = getattr(error, "request", None) or httpx2.Request(
                "POST", f"{connection.display_url}/chat/completions"
            )
            raise _AttemptTimeoutError(request, option, clock.limit(option)) from error
        clock.spend(time.monotonic() - started)
        attempt.http_response = raw.http_response
        if not attempt.stream:
            attempt.take_completion(await _read_async(clock, attempt, raw.parse))
            return
        attempt.check_event_stream()
        chunks = (await raw.parse()).__aiter__()
        while (chunk := await _read_async(clock, attempt, _next_or_none, chunks)) is not None:
            if text := attempt.take_chunk(chunk):
                yield text
        attempt.check_stream_end()


def _read_sync(
    guard: _ReadGuard, clock: _AttemptClock, attempt: _ChatAttempt, read: Callable[..., _T], *args: Any
) -> _T:
    """``read(*args)``, bounded by ``clock`` through ``guard``'s watchdog; failures become ``openai.APIError``
    (``_read_failure``)."""
    bound, option = clock.next_wait()
    started = time.monotonic()
    guard.arm(started + bound)
    try:
        result = read(*args)
    except Exception as error:
        failure = _read_failure(error, attempt, option, clock.limit(option), guard.disarm())
        if failure is error:
            raise
        raise failure from error
    finally:
        clock.spend(time.monotonic() - started)
    if guard.disarm():
        assert attempt.http_response is not None
        raise _AttemptTimeoutError(attempt.http_response.request, option, clock.limit(option))
    return result


async def _read_async(clock: _AttemptClock, attempt: _ChatAttempt, read: Callable[..., Any], *args: Any) -> Any:
    """``await read(*args)``, bounded by ``clock``; failures become ``openai.APIError`` (``_read_failure``)."""
    bound, option = clock.next_wait()
    started = time.monotonic()
    try:
        return await _within(bound, read(*args))
    except Exception as error:
        failure = _read_failure(error, attempt, option, clock.limit(option), isinstance(error, asyncio.TimeoutError))
        if failure is error:
            raise
        raise failure from error
    finally:
        clock.spend(time.monotonic() - started)


def _read_failure(error: Exception, attempt: _ChatAttempt, option: str, seconds: float, timed_out: bool) -> Exception:
    """The ``openai.APIError`` for ``error``, raised while reading the answer after its headers came in."""
    assert attempt.http_response is not None
    if timed_out or isinstance(error, (openai.APITimeoutError, httpx2.TimeoutException)):
        return _AttemptTimeoutError(attempt.http_response.request, option, seconds)
    if isinstance(error, (openai.APIConnectionError, httpx2.TransportError)):
        if attempt.stream:
            return attempt.malformed(
                f"the connection closed after {_chunks(attempt.chunks_received)}, before the stream's end"
            )
        return attempt.malformed("the connection closed before the whole answer arrived")
    if isinstance(error, openai.APIError):
        return error
    if isinstance(error, ValueError):  # json.JSONDecodeError, or data the openai client cannot take
        if attempt.stream:
            return attempt.malformed(f"stream event {attempt.chunks_received + 1} is not valid JSON ({error})")
        return attempt.malformed(f"the body is not valid JSON ({error})")
    return error


async def _within(seconds: float, awaitable: Any) -> Any:
    """``await awaitable``, raising ``asyncio.TimeoutError`` after ``seconds``."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await awaitable
    return await asyncio.wait_for(awaitable, seconds)


async def _next_or_none(chunks: AsyncIterator[_T]) -> _T | None:
    try:
        return await chunks.__anext__()
    except StopAsyncIteration:
        return None


# -- retries ------------------------------------------------------------------------------------------


def _is_retryable(error: openai.APIError) -> bool:
    if isinstance(error, (openai.APIConnectionError, openai.APIResponseValidationError)):  # incl. timeouts
        return True
    return isinstance(error, openai.APIStatusError) and (
        error.status_code in RETRIED_STATUSES or error.status_code >= 500
    )


def _delay_before_retry(
    error: openai.APIError, retry_number: int, *, backoff_base: float, backoff_max: float
) -> float:
    """Seconds to wait before retry ``retry_number``: the server's ``Retry-After``, else full-jitter backoff."""
    requested = _retry_after_seconds(error)
    if requested is not None:
        return min(requested, MAX_RETRY_AFTER_SECONDS)
    return random.uniform(0.0, min(backoff_max, backoff_base * 2 ** (retry_number - 1)))


def _retry_after_seconds(error: openai.APIError) -> float | None:
    """The wait the server asked for (``retry-after-ms``, or ``Retry-After`` in seconds or as a date)."""
    if not isinstance(error, openai.APIStatusError):
        return None
    headers = error.response.headers
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                continue
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            seconds = (when - datetime.now(timezone.utc)).total_seconds()
        if math.isfinite(seconds):
            return max(seconds, 0.0)
    return None


# -- failure messages ---------------------------------------------------------------------------------


def _describe_failure(
    error: openai.APIError, attempts: int, *, where: str, model: str, after_tokens: bool = False
) -> str:
    """What went wrong at the endpoint ``where`` and what to do, never showing the API key."""
    description = _describe_error(error, attempts, where=where, model=model)
    if after_tokens:
        description += " (not retried: part of the answer had already been streamed)"
    return description


def _describe_error(error: openai.APIError, attempts: int, *, where: str, model: str) -> str:
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    if isinstance(error, _AttemptTimeoutError):
        if error.option == "idle_timeout":
            return (
                f"{where} sent no part of the answer for idle_timeout={error.seconds:g} s{tries}; "
                "raise idle_timeout= or check that the server is answering"
            )
        return (
            f"the answer from {where} took longer than timeout={error.seconds:g} s{tries}; "
            "raise timeout= or check that the server is answering"
        )
    if isinstance(error, _MalformedAnswerError):
        return f"malformed answer from {where}{tries}: {error.problem}; {error.advice}"
    if isinstance(error, openai.APIResponseValidationError):
        return f"malformed answer from {where}{tries}: {redact(error.message)}; {_RETRY_ADVICE}"
    if isinstance(error, openai.APIConnectionError):
        return f"could not connect to {where}{tries}; check the base URL and that the server is running"
    if not isinstance(error, openai.APIStatusError):
        return f"bad answer from {where}: {redact(str(error))}"
    status = error.status_code
    if status == 404 and error.code == "model_not_found":
        return f"model {model!r} not found at {where}; check the model name"
    if status == 404:
        return f"404 Not Found from {where}; check the base URL (OpenAI-compatible APIs usually end in /v1)"
    if status in (401, 403):
        return f"{status}: {where} refused the API key; check OPENAI_API_KEY or api_key="
    if status == 408:
        return f"{where} timed out waiting for the request (408){tries}; try again later or raise max_attempts"
    if status == 409:
        return f"conflict (409) at {where}{tries}: {redact(error.message)}; try again later or raise max_attempts"
    if status == 429:
        return f"rate limited (429) by {where}{tries}; lower the concurrency or raise max_attempts"
    if status >= 500:
        return f"server error {status} from {where}{tries}; try again later or raise max_attempts"
    return f"{where} rejected the request ({status}): {redact(error.message)}"
