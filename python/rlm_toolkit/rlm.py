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
  failed, ``error`` the ``openai`` exception. A stream that fails after tokens were delivered is not retried.
- ``on_error(error)``: for an LLM call that fails for good, the ``LLMCallError`` about to be raised (with the
  call's ``run_id``); for a tool call, the tool's exception or a ``ToolCallError``, with ``tool_name=`` and
  ``model=None``; for too many tool rounds, the ``ToolRoundsExceededError`` (with the run's ``run_id``).
- ``on_memory_store(content)`` also gets ``role=`` (``"user"`` or ``"assistant"``).

The run logic is written once, as a generator of *effects* (send this request, sleep this long, run these
tools); a sync and an async driver carry the effects out with the official ``openai.OpenAI`` and
``openai.AsyncOpenAI`` clients. The clients' own retries are off: the RLM retries 429, 5xx, timeouts and
connection errors itself so that each retry fires ``on_retry``.
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import math
import os
import random
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing, closing
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from typing import Any, cast

import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ._context import current_parent_run_id, new_run_id, parent_run
from .callbacks import CallbackManager
from .errors import LLMCallError, RLMToolkitError
from .memory import Memory
from .secrets import redact, register_secret
from .tools import Tool, ToolCallError, ToolCallRecord, ToolDefinitionError, as_tool, format_tool_output
from .types import LLMResponse, Usage

__all__ = ["RLM", "MissingAPIKeyError", "RLMConfigError", "RunResult", "ToolRoundsExceededError"]

MAX_RETRY_AFTER_SECONDS = 120.0
"""A server's ``Retry-After`` is honoured up to this many seconds."""
_KEY_PLACEHOLDER = "not-needed"
"""Sent as the API key to a ``base_url`` given without one (local servers ignore it)."""


class RLMConfigError(RLMToolkitError, ValueError):
    """``RLM.from_openai`` (or ``batch``) was given a bad option."""


class MissingAPIKeyError(RLMConfigError):
    """No API key and no base URL: there is nothing to talk to."""


class ToolRoundsExceededError(RLMToolkitError):
    """The model still asked for tools after ``max_tool_rounds`` rounds of tool calls."""


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
        callbacks: CallbackManager | Iterable[Any] | None,
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
        callbacks: CallbackManager | Iterable[Any] | None = None,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        tools: Iterable[Tool | Callable[..., Any]] | None = None,
        memory: Memory | None = None,
        max_attempts: int = 3,
        timeout: float = 60.0,
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
        else a random time up to ``min(backoff_max, backoff_base * 2**retry)`` seconds; each request times out
        after ``timeout`` seconds. ``client_options`` go to the ``openai`` client constructors (e.g.
        ``organization=``, ``default_headers=``).
        """
        connection = _OpenAIConnection(api_key=api_key, base_url=base_url, timeout=timeout, options=client_options)
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
        return self._connection.base_url

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
        steps = self._run_steps(prompt, _RunScope.start(), stream=self.callbacks.streams_tokens)
        with closing(self._drive_sync(steps)) as items:
            return _final_result(items)

    def stream(self, prompt: str) -> Iterator[str]:
        """Answer ``prompt``, yielding the answer's text as it arrives (and firing ``on_llm_new_token``)."""
        with closing(self._drive_sync(self._run_steps(prompt, _RunScope.start(), stream=True))) as items:
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
                        if effect.stream:
                            with client.chat.completions.create(**effect.params) as chunks:
                                for chunk in chunks:
                                    if text := effect.take_chunk(chunk):
                                        yield text
                            reply = effect.streamed_response()
                        else:
                            reply = effect.completed_response(client.chat.completions.create(**effect.params))
                    except openai.APIError as error:
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
                        if effect.stream:
                            async with await client.chat.completions.create(**effect.params) as chunks:
                                async for chunk in chunks:
                                    if text := effect.take_chunk(chunk):
                                        yield text
                            reply = effect.streamed_response()
                        else:
                            reply = effect.completed_response(await client.chat.completions.create(**effect.params))
                    except openai.APIError as error:
                        failure = error
                elif isinstance(effect, _Sleep):
                    await asyncio.sleep(effect.seconds)
                else:
                    await asyncio.gather(*(invocation.run_async() for invocation in effect.invocations))
        finally:
            steps.close()

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
                    failure = LLMCallError(self._describe_failure(error, attempt_number), attempts=attempt_number)
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

    def _describe_failure(self, error: openai.APIError, attempts: int) -> str:
        """What went wrong and what to do, naming the endpoint but never the API key."""
        where = self.base_url
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        if isinstance(error, openai.APITimeoutError):
            return (
                f"request to {where} timed out after {self._connection.timeout:g} s{tries}; "
                "raise timeout= or check that the server is answering"
            )
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
    """Send one chat completion request; the driver answers with an ``LLMResponse`` or throws the error in."""

    def __init__(self, params: dict[str, Any], stream: bool, fire_token: Callable[[str], None]) -> None:
        self.params = params
        self.stream = stream
        self.tokens_delivered = False
        self._fire_token = fire_token
        self._content: list[str] = []
        self._tool_calls: dict[int, dict[str, Any]] = {}
        self._model: str | None = None
        self._finish_reason: str | None = None
        self._usage = Usage()

    def completed_response(self, completion: ChatCompletion) -> LLMResponse:
        """The response of a non-streamed request."""
        choice = completion.choices[0]
        tool_calls = tuple(
            _tool_call_message(call.id, call.function.name, call.function.arguments)
            for call in choice.message.tool_calls or ()
            if call.type == "function"
        )
        return LLMResponse(
            content=choice.message.content or "",
            model=completion.model,
            usage=_usage_of(completion.usage),
            finish_reason=choice.finish_reason,
            tool_calls=tool_calls,
        )

    def take_chunk(self, chunk: ChatCompletionChunk) -> str:
        """Add one streamed chunk; fire and return its text (``""`` if it has none)."""
        self._model = chunk.model or self._model
        if chunk.usage is not None:
            self._usage = _usage_of(chunk.usage)
        text = ""
        for choice in chunk.choices:
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
                self.tokens_delivered = True
                self._fire_token(text)
        return text

    def streamed_response(self) -> LLMResponse:
        """The response assembled from the streamed chunks."""
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

    def __init__(self, *, api_key: str | None, base_url: str | None, timeout: float, options: dict[str, Any]) -> None:
        if "max_retries" in options:
            raise RLMConfigError("set retries with max_attempts=, not max_retries= (the RLM retries by itself)")
        if timeout <= 0:
            raise RLMConfigError(f"timeout must be a positive number of seconds, got {timeout}")
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        if not api_key and not base_url:
            raise MissingAPIKeyError(
                "no OpenAI API key: set OPENAI_API_KEY or pass api_key=, or pass base_url= for an "
                "OpenAI-compatible server (`rlm-toolkit serve` runs a local one)"
            )
        self.timeout = timeout
        self._api_key = api_key or _KEY_PLACEHOLDER
        if api_key:
            register_secret(api_key)
        self._client_options = {
            **options,
            "api_key": self._api_key,
            "base_url": base_url,
            "timeout": timeout,
            "max_retries": 0,
        }
        self.sync_client = openai.OpenAI(**self._client_options)
        self.base_url = str(self.sync_client.base_url).rstrip("/")
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
    if isinstance(error, openai.APIConnectionError):  # includes APITimeoutError
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

