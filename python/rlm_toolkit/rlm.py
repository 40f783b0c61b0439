"""``RLM``: chat with an OpenAI-compatible model, firing a callback event for every step.

One run (``run``/``arun``/``stream``/``astream``, or one item of ``batch``/``abatch``) is::

    memory recall -> LLM call -> [tool calls -> LLM call]... -> memory store

A run is framed by ``on_run_start``/``on_run_end``, and every step fires its event through the
``CallbackManager``: ``on_memory_recall``, ``on_llm_start``, streamed
``on_llm_new_token``, ``on_retry``, ``on_llm_end``, ``on_tool_start``/``on_tool_end``, ``on_memory_store``, and
``on_error``. Each run has a ``run_id``; each LLM call, tool call and memory operation inside it gets its own
``run_id`` with ``parent_run_id`` set to the run's. A run started inside a tool (a nested ``RLM``) takes the
tool call's ``run_id`` as its ``parent_run_id`` (see ``rlm_toolkit._context``).

Event arguments beyond the catalogue's:

- ``on_llm_start(prompt)`` gets the run's prompt for every LLM call of the run, including those after tools.
- ``on_retry(attempt, max_attempts, error)``: ``attempt`` is the number (1-based) of the attempt that just
  failed, ``error`` the ``openai`` exception (``openai.APIResponseValidationError`` for a malformed answer,
  ``openai.APITimeoutError`` for one past ``timeout``/``idle_timeout``). A stream that fails after tokens were
  delivered is not retried.
- ``on_error(error)``: for an LLM call that fails for good, the ``LLMCallError`` about to be raised (with the
  call's ``run_id``); for a tool call, the tool's exception or a ``ToolCallError``, with ``tool_name=`` and
  ``model=None``; for too many tool rounds, the ``ToolRoundsExceededError`` (with the run's ``run_id``).
- ``on_memory_store(content)`` also gets ``role=`` (``"user"`` or ``"assistant"``).

The run logic is written once, as a generator of *effects* (send this request, sleep this long, run these
tools); a sync and an async driver carry the effects out with the official ``openai.OpenAI`` and
``openai.AsyncOpenAI`` clients. The clients' own retries are off: the RLM retries 429, 5xx, timeouts,
connection errors and malformed answers itself so that each retry fires ``on_retry``.

Malformed answers (status 200 with a body that is not JSON, such as a proxy's HTML page; a completion without
``choices``; a stream event that is not JSON; a stream whose connection closes, or that ends, before its
``finish_reason``) are retried like a 5xx, since proxies and overloaded servers do send them now and then; the
final failure is a ``MalformedResponseError`` that says what was wrong.

Timeouts: ``timeout`` bounds all the waiting of one attempt together (connecting, sending, the answer's
headers, its body, or every chunk of its stream), so a server that sends keep-alive comments but no tokens
cannot hold an attempt longer; ``idle_timeout`` (if set) bounds each single wait (for the answer to start, and
between two chunks). Time spent in the caller's code between chunks (token callbacks, the loop over
``stream()``) is not counted. The async driver enforces them with asyncio timeouts; the sync driver, whose
socket reads block, with a watchdog thread that shuts the socket down when a read waits past its bound.
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import math
import os
import random
import socket
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, aclosing, closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from typing import Any, TypeVar, cast

import httpx2
import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ._context import current_parent_run_id, new_run_id, parent_run
from .callbacks import BaseCallback, CallbackManager
from .callbacks._async import each_step_as_sync_caller, sync_caller
from .errors import (
    LLMCallError,
    MalformedResponseError,
    MissingAPIKeyError,
    RLMConfigError,
    RLMToolkitError,
    ToolRoundsExceededError,
)
from .memory import Memory
from .secrets import redact, redact_exception_chain, register_secret, register_url_secrets
from .tools import Tool, ToolCallError, ToolCallRecord, ToolDefinitionError, as_tool, format_tool_output
from .types import LLMResponse, Usage

__all__ = ["RLM", "MissingAPIKeyError", "RLMConfigError", "RunResult", "ToolRoundsExceededError"]

MAX_RETRY_AFTER_SECONDS = 120.0
"""A server's ``Retry-After`` is honoured up to this many seconds."""
_KEY_PLACEHOLDER = "not-needed"
"""Sent as the API key to a ``base_url`` given without one (local servers ignore it)."""
_EXCERPT_CHARS = 80
"""How much of a malformed answer an error message quotes."""
_RETRY_ADVICE = "try again later or raise max_attempts"
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class RunResult:
    """The outcome of one run. ``str(result)`` is the answer.

    In ``batch``/``abatch`` results, a run that failed has ``error`` set to its exception (usually
    ``LLMCallError``) and ``answer == ""``; ``run``/``arun`` raise instead, so their results never carry one.
    """

    answer: str
    usage: Usage
    """Token usage summed over every LLM call of the run."""
    run_id: str
    parent_run_id: str | None = None
    """The run (or tool call) this run was started inside, if any."""
    response: LLMResponse | None = None
    """The last LLM response of the run."""
    tool_calls: tuple[ToolCallRecord, ...] = ()
    error: BaseException | None = None

    def __str__(self) -> str:
        return self.answer


class RLM:
    """A model behind an OpenAI-compatible endpoint, with callbacks, tools and memory. Build with ``from_openai``."""

    def __init__(
        self,
        model: str,
        connection: _OpenAIConnection,
        *,
        callbacks: BaseCallback | Iterable[Any] | None,
        tools: Iterable[Tool | Callable[..., Any]] | None,
        memory: Memory | None,
        max_attempts: int,
        max_tool_rounds: int,
        system_prompt: str | None,
        backoff_base: float,
        backoff_max: float,
    ) -> None:
        if max_attempts < 1:
            raise RLMConfigError(f"max_attempts must be at least 1 (1 means no retries), got {max_attempts}")
        if max_tool_rounds < 0:
            raise RLMConfigError(f"max_tool_rounds must be 0 or more, got {max_tool_rounds}")
        if backoff_base < 0 or backoff_max < 0:
            raise RLMConfigError(f"backoff_base and backoff_max must be >= 0, got {backoff_base} and {backoff_max}")
        self.model = model
        self.callbacks = callbacks if isinstance(callbacks, CallbackManager) else CallbackManager(callbacks)
        self.tools: tuple[Tool, ...] = tuple(as_tool(tool) for tool in tools or ())
        self.memory = memory
        self.max_attempts = max_attempts
        self.max_tool_rounds = max_tool_rounds
        self.system_prompt = system_prompt
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._connection = connection
        self._tools_by_name = {tool.name: tool for tool in self.tools}
        if len(self._tools_by_name) != len(self.tools):
            names = [tool.name for tool in self.tools]
            duplicates = sorted({name for name in names if names.count(name) > 1})
            raise ToolDefinitionError(f"two tools share the name(s) {duplicates}; tool names must be unique")
        self._tool_schemas = [tool.openai_schema() for tool in self.tools]

    @classmethod
    def from_openai(
        cls,
        model: str,
        callbacks: BaseCallback | Iterable[Any] | None = None,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        tools: Iterable[Tool | Callable[..., Any]] | None = None,
        memory: Memory | None = None,
        max_attempts: int = 3,
        timeout: float = 60.0,
        idle_timeout: float | None = None,
        max_tool_rounds: int = 8,
        system_prompt: str | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = 20.0,
        **client_options: Any,
    ) -> RLM:
        """An RLM for ``model`` at an OpenAI-compatible endpoint.

        ``api_key``/``base_url`` default to ``$OPENAI_API_KEY``/``$OPENAI_BASE_URL`` (and the base URL to
        OpenAI's); a base URL without a key is fine for local servers. ``callbacks`` is a list of callbacks or
        a ``CallbackManager``. ``tools`` are functions or ``Tool`` objects; ``memory`` a ``BufferMemory`` or
        any ``Memory``. Each LLM call is tried ``max_attempts`` times in all, waiting per ``Retry-After`` or
        else a random time up to ``min(backoff_max, backoff_base * 2**retry)`` seconds. An attempt fails with a
        timeout when it has waited ``timeout`` seconds for the server in all (streams included: keep-alive
        comments do not extend it), or ``idle_timeout`` seconds (if given) for the answer to start or for its
        next chunk. ``client_options`` go to the ``openai`` client constructors (e.g. ``organization=``,
        ``default_headers=``). A password in ``base_url`` is treated like the API key: never shown.
        """
        connection = _OpenAIConnection(
            api_key=api_key, base_url=base_url, timeout=timeout, idle_timeout=idle_timeout, options=client_options
        )
        return cls(
            model,
            connection,
            callbacks=callbacks,
            tools=tools,
            memory=memory,
            max_attempts=max_attempts,
            max_tool_rounds=max_tool_rounds,
            system_prompt=system_prompt,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
        )

    @property
    def base_url(self) -> str:
        """The endpoint, with the password of its user info (if any) shown as ``[REDACTED]``."""
        return self._connection.display_url

    def __repr__(self) -> str:
        return f"RLM(model={self.model!r}, base_url={self.base_url!r})"

    def close(self) -> None:
        """Close the sync client's connections; ``run`` and ``stream`` cannot be used afterwards."""
        self._connection.sync_client.close()

    async def aclose(self) -> None:
        """Close the async client of the running event loop (do it before an app's loop ends)."""
        await self._connection.aclose_async_client()

    # -- entry points ----------------------------------------------------------------------------

    def run(self, prompt: str) -> RunResult:
        """Answer ``prompt`` (running tools as the model asks); raises ``LLMCallError`` if a call fails for good."""
        with sync_caller():  # async hooks complete before it returns, also inside a running event loop
            steps = self._run_steps(prompt, _RunScope.start(), stream=self.callbacks.streams_tokens)
            with closing(self._drive_sync(steps)) as items:
                return _final_result(items)

    def stream(self, prompt: str) -> Iterator[str]:
        """Answer ``prompt``, yielding the answer's text as it arrives (and firing ``on_llm_new_token``)."""
        steps = self._run_steps(prompt, _RunScope.start(), stream=True)
        with closing(each_step_as_sync_caller(self._drive_sync(steps))) as items:
            for item in items:
                if isinstance(item, str):
                    yield item

    async def arun(self, prompt: str) -> RunResult:
        """Async ``run``; async hooks scheduled by its events have completed when it returns or raises."""
        try:
            return await self._arun_without_waiting(prompt, _RunScope.start(), stream=self.callbacks.streams_tokens)
        finally:
            await self.callbacks.wait_pending()

    async def astream(self, prompt: str) -> AsyncIterator[str]:
        """Async ``stream``. Stopping early? Close it (``contextlib.aclosing``) so its request ends at once."""
        try:
            steps = self._run_steps(prompt, _RunScope.start(), stream=True)
            async with aclosing(self._drive_async(steps)) as items:
                async for item in items:
                    if isinstance(item, str):
                        yield item
        finally:
            await self.callbacks.wait_pending()

    def batch(
        self, prompts: Iterable[str], *, max_concurrency: int = 16, progress: bool | None = None
    ) -> list[RunResult]:
        """Run every prompt concurrently on the async client; see ``abatch``.

        Runs its own event loop (in a worker thread when this thread already runs one).
        """
        job = self._abatch_on_own_loop(list(prompts), max_concurrency, progress)
        if not _event_loop_running():
            return asyncio.run(job)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlm-batch") as worker:
            return worker.submit(contextvars.copy_context().run, asyncio.run, job).result()

    async def abatch(
        self, prompts: Iterable[str], *, max_concurrency: int = 16, progress: bool | None = None
    ) -> list[RunResult]:
        """Run every prompt, at most ``max_concurrency`` at a time; results in input order.

        A failed run does not stop the others: its result has ``error`` set and ``answer == ""``. A progress
        bar (tqdm) shows when ``progress`` is True, or when it is None and stderr is a terminal.
        """
        if max_concurrency < 1:
            raise RLMConfigError(f"max_concurrency must be at least 1, got {max_concurrency}")
        prompt_list = list(prompts)
        results: list[RunResult | None] = [None] * len(prompt_list)
        unstarted = iter(enumerate(prompt_list))
        stream = self.callbacks.streams_tokens
        progress_bar = _progress_bar(len(prompt_list), progress)

        async def work_through_prompts() -> None:
            for index, prompt in unstarted:
                run = _RunScope.start()
                try:
                    results[index] = await self._arun_without_waiting(prompt, run, stream=stream)
                except Exception as error:
                    results[index] = RunResult(
                        answer="", usage=Usage(), run_id=run.run_id, parent_run_id=run.parent_run_id, error=error
                    )
                if progress_bar is not None:
                    progress_bar.update()

        try:
            await asyncio.gather(*(work_through_prompts() for _ in range(min(max_concurrency, len(prompt_list)))))
        finally:
            if progress_bar is not None:
                progress_bar.close()
            await self.callbacks.wait_pending()
        return cast("list[RunResult]", results)

    # -- drivers: carry out the effects of the run logic -------------------------------------------

    async def _abatch_on_own_loop(
        self, prompts: list[str], max_concurrency: int, progress: bool | None
    ) -> list[RunResult]:
        try:
            return await self.abatch(prompts, max_concurrency=max_concurrency, progress=progress)
        finally:
            await self._connection.aclose_async_client()

    async def _arun_without_waiting(self, prompt: str, run: _RunScope, *, stream: bool) -> RunResult:
        """``arun`` without waiting for async hooks (``abatch`` waits once for all its runs)."""
        steps = self._run_steps(prompt, run, stream=stream)
        async with aclosing(self._drive_async(steps)) as items:
            async for item in items:
                if isinstance(item, RunResult):
                    return item
        raise AssertionError("the run ended without a result")

    def _drive_sync(self, steps: _RunSteps) -> Iterator[str | RunResult]:
        """Carry out ``steps`` with the sync client; yields streamed text, then the ``RunResult``."""
        client = self._connection.sync_client
        reply: Any = None
        failure: openai.APIError | None = None
        try:
            while True:
                try:
                    effect = steps.send(reply) if failure is None else steps.throw(failure)
                except StopIteration as finished:
                    yield finished.value
                    return
                reply, failure = None, None
                if isinstance(effect, _ChatAttempt):
                    try:
                        yield from self._attempt_sync(client, effect)
                        reply = effect.response()
                    except openai.APIError as error:
                        redact_exception_chain(error)  # before any handler or traceback shows it
                        failure = error
                elif isinstance(effect, _Sleep):
                    time.sleep(effect.seconds)
                else:
                    for invocation in effect.invocations:
                        invocation.run_sync()
        finally:
            steps.close()

    async def _drive_async(self, steps: _RunSteps) -> AsyncIterator[str | RunResult]:
        """Carry out ``steps`` with the async client; yields streamed text, then the ``RunResult``."""
        client = self._connection.async_client()
        reply: Any = None
        failure: openai.APIError | None = None
        try:
            while True:
                try:
                    effect = steps.send(reply) if failure is None else steps.throw(failure)
                except StopIteration as finished:
                    yield finished.value
                    return
                reply, failure = None, None
                if isinstance(effect, _ChatAttempt):
                    try:
                        async with aclosing(self._attempt_async(client, effect)) as texts:
                            async for text in texts:
                                yield text
                        reply = effect.response()
                    except openai.APIError as error:
                        redact_exception_chain(error)  # before any handler or traceback shows it
                        failure = error
                elif isinstance(effect, _Sleep):
                    await asyncio.sleep(effect.seconds)
                else:
                    await asyncio.gather(*(invocation.run_async() for invocation in effect.invocations))
        finally:
            steps.close()

    def _attempt_sync(self, client: openai.OpenAI, attempt: _ChatAttempt) -> Iterator[str]:
        """Send ``attempt``'s request, yielding streamed text; ``attempt`` keeps the answer.

        Every failure is raised as an ``openai.APIError`` (see ``_read_failure``).
        """
        clock = _AttemptClock(self._connection.timeout, self._connection.idle_timeout)
        bound, option = clock.next_wait()
        started = time.monotonic()
        try:
            with client.chat.completions.with_streaming_response.create(**attempt.params, timeout=bound) as raw:
                clock.spend(time.monotonic() - started)
                attempt.http_response = raw.http_response
                with _watchdog.guarding(raw.http_response) as guard:
                    if not attempt.stream:
                        attempt.take_completion(guard.wait(clock, attempt, raw.parse))
                        return
                    attempt.check_event_stream()
                    chunks = raw.parse()
                    while (chunk := guard.wait(clock, attempt, next, chunks, None)) is not None:
                        if text := attempt.take_chunk(chunk):
                            yield text
                    attempt.check_stream_end()
        except openai.APITimeoutError as error:
            if isinstance(error, _AttemptTimeoutError):
                raise
            raise _AttemptTimeoutError(error.request, option, clock.limit(option)) from error

    async def _attempt_async(self, client: openai.AsyncOpenAI, attempt: _ChatAttempt) -> AsyncIterator[str]:
        """``_attempt_sync`` with the async client: the same waits, bounded by asyncio timeouts."""
        clock = _AttemptClock(self._connection.timeout, self._connection.idle_timeout)
        bound, option = clock.next_wait()
        started = time.monotonic()
        async with AsyncExitStack() as exit_stack:
            opening = client.chat.completions.with_streaming_response.create(**attempt.params, timeout=bound)
            try:
                raw = await _within(bound, exit_stack.enter_async_context(opening))
            except (asyncio.TimeoutError, openai.APITimeoutError) as error:
                request = getattr(error, "request", None) or httpx2.Request(
                    "POST", f"{self._connection.display_url}/chat/completions"
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

    # -- the run logic, shared by both drivers -------------------------------------------------------

    def _run_steps(self, prompt: str, run: _RunScope, *, stream: bool) -> _RunSteps:
        run_ids = {"run_id": run.run_id, "parent_run_id": run.parent_run_id, "model": self.model}
        self.callbacks.on_run_start(prompt, **run_ids)
        messages: list[dict[str, Any]] = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages += self._recall(prompt, run)
        messages.append({"role": "user", "content": prompt})
        usage = Usage()
        tool_records: list[ToolCallRecord] = []
        tool_rounds = 0
        while True:
            response = yield from self._chat(prompt, messages, run, stream=stream)
            usage = _add_usage(usage, response.usage)
            if not response.tool_calls:
                break
            if tool_rounds == self.max_tool_rounds:
                error = ToolRoundsExceededError(
                    f"the model still asked for tools after max_tool_rounds={self.max_tool_rounds} rounds; "
                    "raise max_tool_rounds, or make the tools' answers settle the question"
                )
                self.callbacks.on_error(error, run_id=run.run_id, parent_run_id=run.parent_run_id, model=self.model)
                raise error
            tool_rounds += 1
            messages.append(
                {"role": "assistant", "content": response.content or None, "tool_calls": list(response.tool_calls)}
            )
            invocations = [
                _ToolInvocation(call, self._tools_by_name, self.callbacks, run) for call in response.tool_calls
            ]
            ready = [invocation for invocation in invocations if invocation.output is None]
            if ready:
                yield _RunTools(ready)
            messages += [invocation.tool_message() for invocation in invocations]
            tool_records += [invocation.record() for invocation in invocations]
        self._remember(prompt, response.content, run)
        self.callbacks.on_run_end(response.content, **run_ids)
        return RunResult(
            answer=response.content,
            usage=usage,
            run_id=run.run_id,
            parent_run_id=run.parent_run_id,
            response=response,
            tool_calls=tuple(tool_records),
        )

    def _chat(
        self, prompt: str, messages: list[dict[str, Any]], run: _RunScope, *, stream: bool
    ) -> Generator[_Effect, Any, LLMResponse]:
        """One LLM call, with its retries."""
        ids = {"run_id": new_run_id(), "parent_run_id": run.run_id, "model": self.model}
        params: dict[str, Any] = {"model": self.model, "messages": messages}
        if self._tool_schemas:
            params["tools"] = self._tool_schemas
        if stream:
            params["stream"] = True
            params["stream_options"] = {"include_usage": True}
        fire_token = partial(self.callbacks.on_llm_new_token, **ids)
        self.callbacks.on_llm_start(prompt, **ids)
        attempt_number = 1
        while True:
            attempt = _ChatAttempt(params, stream, fire_token)
            try:
                response = yield attempt
            except openai.APIError as error:
                if attempt_number == self.max_attempts or not _is_retryable(error) or attempt.tokens_delivered:
                    error_type = (
                        MalformedResponseError if isinstance(error, openai.APIResponseValidationError) else LLMCallError
                    )
                    message = self._describe_failure(error, attempt_number, after_tokens=attempt.tokens_delivered)
                    failure = error_type(message, attempts=attempt_number)
                    self.callbacks.on_error(failure, **ids)
                    raise failure from error
                self.callbacks.on_retry(attempt_number, self.max_attempts, error, **ids)
                yield _Sleep(self._retry_delay(error, attempt_number))
                attempt_number += 1
            else:
                self.callbacks.on_llm_end(response, **ids)
                return response

    def _recall(self, prompt: str, run: _RunScope) -> list[dict[str, Any]]:
        if self.memory is None:
            return []
        history = self.memory.recall(prompt)
        self.callbacks.on_memory_recall(prompt, history, run_id=new_run_id(), parent_run_id=run.run_id)
        return list(history)

    def _remember(self, prompt: str, answer: str, run: _RunScope) -> None:
        if self.memory is None:
            return
        for role, content in (("user", prompt), ("assistant", answer)):
            self.memory.store(role, content)
            self.callbacks.on_memory_store(content, role=role, run_id=new_run_id(), parent_run_id=run.run_id)

    def _retry_delay(self, error: openai.APIError, retry_number: int) -> float:
        """Seconds to wait before retry ``retry_number``: the server's ``Retry-After``, else full-jitter backoff."""
        requested = _retry_after_seconds(error)
        if requested is not None:
            return min(requested, MAX_RETRY_AFTER_SECONDS)
        return random.uniform(0.0, min(self.backoff_max, self.backoff_base * 2 ** (retry_number - 1)))

    def _describe_failure(self, error: openai.APIError, attempts: int, *, after_tokens: bool = False) -> str:
        """What went wrong and what to do, naming the endpoint but never the API key."""
        description = self._describe_error(error, attempts)
        if after_tokens:
            description += " (not retried: part of the answer had already been streamed)"
        return description

    def _describe_error(self, error: openai.APIError, attempts: int) -> str:
        where = self._connection.display_url
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
            return f"model {self.model!r} not found at {where}; check the model name"
        if status == 404:
            return f"404 Not Found from {where}; check the base URL (OpenAI-compatible APIs usually end in /v1)"
        if status in (401, 403):
            return f"{status}: {where} refused the API key; check OPENAI_API_KEY or api_key="
        if status == 429:
            return f"rate limited (429) by {where}{tries}; lower the concurrency or raise max_attempts"
        if status >= 500:
            return f"server error {status} from {where}{tries}; try again later or raise max_attempts"
        return f"{where} rejected the request ({status}): {redact(error.message)}"


# -- effects: what the run logic asks its driver to do -------------------------------------------------


class _ChatAttempt:
    """Send one chat completion request; the driver answers with an ``LLMResponse`` or throws the error in.

    The driver sets ``http_response`` once the answer's headers are in, then hands over the parsed completion
    (``take_completion``) or each streamed chunk (``take_chunk``); what is not a usable chat completion raises
    a ``_MalformedAnswerError``.
    """

    def __init__(self, params: dict[str, Any], stream: bool, fire_token: Callable[[str], None]) -> None:
        self.params = params
        self.stream = stream
        self.tokens_delivered = False
        self.chunks_received = 0
        self.http_response: httpx2.Response | None = None
        self._fire_token = fire_token
        self._completed: LLMResponse | None = None
        self._content: list[str] = []
        self._tool_calls: dict[int, dict[str, Any]] = {}
        self._model: str | None = None
        self._finish_reason: str | None = None
        self._usage = Usage()

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


class _AttemptTimeoutError(openai.APITimeoutError):
    """An attempt that waited longer than ``timeout`` in all, or than ``idle_timeout`` at once (``option``)."""

    def __init__(self, request: httpx2.Request, option: str, seconds: float) -> None:
        super().__init__(request)
        self.option = option
        self.seconds = seconds
        self.message = f"no answer within {option}={seconds:g} s"
        self.args = (self.message,)


class _AttemptClock:
    """How long one attempt may still wait for the server (see the module docstring)."""

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


async def _read_async(
    clock: _AttemptClock, attempt: _ChatAttempt, read: Callable[..., Any], *args: Any
) -> Any:
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


class _ReadGuard:
    """One sync attempt's socket, for the watchdog: ``deadline`` is set while a read waits, ``fired`` once
    the watchdog shut the socket down."""

    __slots__ = ("socket", "deadline", "fired", "_watchdog")

    def __init__(self, sock: socket.socket | None, watchdog: _SocketWatchdog) -> None:
        self.socket = sock
        self.deadline: float | None = None
        self.fired = False
        self._watchdog = watchdog

    def wait(self, clock: _AttemptClock, attempt: _ChatAttempt, read: Callable[..., _T], *args: Any) -> _T:
        """``read(*args)``, bounded by ``clock``; failures become ``openai.APIError`` (``_read_failure``)."""
        bound, option = clock.next_wait()
        started = time.monotonic()
        self._watchdog.arm(self, started + bound)
        try:
            result = read(*args)
        except Exception as error:
            failure = _read_failure(error, attempt, option, clock.limit(option), self._watchdog.disarm(self))
            if failure is error:
                raise
            raise failure from error
        finally:
            clock.spend(time.monotonic() - started)
        if self._watchdog.disarm(self):
            request = cast(httpx2.Response, attempt.http_response).request
            raise _AttemptTimeoutError(request, option, clock.limit(option))
        return result


class _SocketWatchdog:
    """Shuts down the socket of a sync read that waits past its deadline, so that the blocked read fails.

    (A blocking socket read cannot be interrupted otherwise, and the client's own read timeout restarts with
    every byte, keep-alive comments included.) One daemon thread serves every RLM of the process.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._guards: set[_ReadGuard] = set()
        self._wake_at = math.inf
        self._thread: threading.Thread | None = None

    @contextmanager
    def guarding(self, response: httpx2.Response) -> Iterator[_ReadGuard]:
        """A guard for the reads of ``response``'s body (its socket, if the transport exposes it)."""
        network_stream = response.extensions.get("network_stream")
        guard = _ReadGuard(network_stream.get_extra_info("socket") if network_stream is not None else None, self)
        with self._condition:
            self._guards.add(guard)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._watch, name="rlm-read-watchdog", daemon=True)
                self._thread.start()
        try:
            yield guard
        finally:
            with self._condition:
                self._guards.discard(guard)

    def arm(self, guard: _ReadGuard, deadline: float) -> None:
        with self._condition:
            guard.deadline = deadline
            if deadline < self._wake_at:
                self._condition.notify()

    def disarm(self, guard: _ReadGuard) -> bool:
        """Stop guarding ``guard``'s current read; whether the watchdog shut its socket down."""
        with self._condition:
            guard.deadline = None
            return guard.fired

    def _watch(self) -> None:
        with self._condition:
            while True:
                now = time.monotonic()
                self._wake_at = math.inf
                for guard in self._guards:
                    if guard.deadline is None:
                        continue
                    if guard.deadline <= now:
                        guard.deadline = None
                        guard.fired = True
                        if guard.socket is not None:
                            try:
                                # The plain socket's shutdown, also for a TLS socket: it wakes the blocked read.
                                socket.socket.shutdown(guard.socket, socket.SHUT_RDWR)
                            except OSError:
                                pass  # already closed
                    else:
                        self._wake_at = min(self._wake_at, guard.deadline)
                self._condition.wait(None if self._wake_at == math.inf else self._wake_at - now)


_watchdog = _SocketWatchdog()


def _new_watchdog_after_fork() -> None:
    global _watchdog
    _watchdog = _SocketWatchdog()  # the parent's thread does not exist in the child, and its lock may be held


os.register_at_fork(after_in_child=_new_watchdog_after_fork)


@dataclass(frozen=True, slots=True)
class _Sleep:
    """Wait before a retry."""

    seconds: float


@dataclass(frozen=True, slots=True)
class _RunTools:
    """Run these tool calls (the async driver runs them concurrently)."""

    invocations: list[_ToolInvocation]


_Effect = _ChatAttempt | _Sleep | _RunTools
_RunSteps = Generator[_Effect, Any, RunResult]


class _ToolInvocation:
    """One tool call from a model reply: checked on creation, run by a driver, then a ``tool`` message.

    A call naming no known tool or with unusable arguments fails on creation (``output`` is set at once, no
    driver involved). Failures fire ``on_error`` (with ``tool_name=``) and tell the model ``Error: ...``.
    """

    def __init__(
        self, call: dict[str, Any], tools_by_name: dict[str, Tool], callbacks: CallbackManager, run: _RunScope
    ) -> None:
        self.call_id: str = call["id"]
        self.name: str = call["function"]["name"]
        self.arguments: dict[str, Any] | None = None
        self.output: str | None = None
        self.error: BaseException | None = None
        self._callbacks = callbacks
        self._ids = {"run_id": new_run_id(), "parent_run_id": run.run_id}
        self._tool = tool = tools_by_name.get(self.name)
        try:
            if tool is None:
                known = ", ".join(sorted(tools_by_name)) or "none"
                raise ToolCallError(f"unknown tool {self.name!r}; the tools are: {known}")
            self.arguments = tool.parse_arguments(call["function"]["arguments"])
        except ToolCallError as error:
            self._fail(error, f"Error: {error}")

    def run_sync(self) -> None:
        assert self._tool is not None and self.arguments is not None
        self._callbacks.on_tool_start(self.name, self.arguments, **self._ids)
        try:
            with parent_run(self._ids["run_id"]):
                result = self._tool.invoke(self.arguments)
        except Exception as error:
            self._fail(error, f"Error: {type(error).__name__}: {error}")
        else:
            self._succeed(result)

    async def run_async(self) -> None:
        assert self._tool is not None and self.arguments is not None
        self._callbacks.on_tool_start(self.name, self.arguments, **self._ids)
        try:
            with parent_run(self._ids["run_id"]):
                result = await self._tool.ainvoke(self.arguments)
        except Exception as error:
            self._fail(error, f"Error: {type(error).__name__}: {error}")
        else:
            self._succeed(result)

    def tool_message(self) -> dict[str, Any]:
        return {"role": "tool", "tool_call_id": self.call_id, "content": self.output}

    def record(self) -> ToolCallRecord:
        return ToolCallRecord(self.name, self.arguments, self.output or "", self.error)

    def _succeed(self, result: Any) -> None:
        self.output = format_tool_output(result)
        self._callbacks.on_tool_end(self.name, self.output, **self._ids)

    def _fail(self, error: BaseException, told_to_model: str) -> None:
        self.error = error
        self.output = told_to_model
        self._callbacks.on_error(error, model=None, tool_name=self.name, **self._ids)


# -- the endpoint ---------------------------------------------------------------------------------


class _OpenAIConnection:
    """The official clients for one endpoint: one sync client, one async client per event loop.

    (An async client's connection pool belongs to the loop it was first used on, so each loop gets its own;
    ``batch`` closes the one of the loop it ran.) The API key lives only in here and in the clients.
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
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        if not api_key and not base_url:
            raise MissingAPIKeyError(
                "no OpenAI API key: set OPENAI_API_KEY or pass api_key=, or pass base_url= for an "
                "OpenAI-compatible server (`rlm-toolkit serve` runs a local one)"
            )
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


# -- helpers ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _RunScope:
    run_id: str
    parent_run_id: str | None

    @classmethod
    def start(cls) -> _RunScope:
        """A new run, child of the current parent run (if any)."""
        return cls(new_run_id(), current_parent_run_id())


def _final_result(items: Iterator[str | RunResult]) -> RunResult:
    for item in items:
        if isinstance(item, RunResult):
            return item
    raise AssertionError("the run ended without a result")


def _chunks(count: int) -> str:
    return "1 chunk" if count == 1 else f"{count} chunks"


def _tool_call_message(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    """A tool call as it appears in an assistant message (and in ``LLMResponse.tool_calls``)."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _usage_of(usage: Any) -> Usage:
    if usage is None:
        return Usage()
    return Usage(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)


def _add_usage(first: Usage, second: Usage) -> Usage:
    return Usage(
        first.prompt_tokens + second.prompt_tokens,
        first.completion_tokens + second.completion_tokens,
        first.total_tokens + second.total_tokens,
    )


def _is_retryable(error: openai.APIError) -> bool:
    if isinstance(error, (openai.APIConnectionError, openai.APIResponseValidationError)):  # incl. timeouts
        return True
    return isinstance(error, openai.APIStatusError) and (error.status_code == 429 or error.status_code >= 500)


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


def _event_loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _progress_bar(total: int, progress: bool | None) -> Any:
    """A tqdm bar when asked (``progress=True``) or on a terminal (``None``); None otherwise."""
    if progress is False or (progress is None and not sys.stderr.isatty()):
        return None
    try:
        from tqdm import tqdm
    except ImportError as error:
        if progress is None:
            return None
        raise ImportError("progress=True needs tqdm: pip install 'rlm_toolkit[progress]'") from error
    return tqdm(total=total, unit="run", file=sys.stderr)

