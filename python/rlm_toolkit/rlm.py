"""``RLM``: chat with an OpenAI-compatible model, firing a callback event for every step.

One run (``run``/``arun``/``stream``/``astream``, or one item of ``batch``/``abatch``) is::

    memory recall -> LLM call -> [tool calls -> LLM call]... -> memory store

A run is framed by ``on_run_start``/``on_run_end``, and every step fires its event through the
``CallbackManager``: ``on_memory_recall``, ``on_llm_start``, streamed
``on_llm_new_token``, ``on_retry``, ``on_llm_end``, ``on_tool_start``/``on_tool_end``, ``on_memory_store``, and
``on_error``. Each run has a ``run_id``; each LLM call, tool call and memory operation inside it gets its own
``run_id`` with ``parent_run_id`` set to the run's. A run started inside a tool (a nested ``RLM``) takes the
tool call's ``run_id`` as its ``parent_run_id`` (see ``rlm_toolkit._context``). A ``batch``/``abatch`` call is
a run of its own, framed by ``on_run_start``/``on_run_end`` with ``kind="batch"`` (a run's have ``kind="run"``),
and its ``run_id`` is the ``parent_run_id`` of each of its prompts' runs: batch -> run -> calls.

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
``openai.AsyncOpenAI`` clients. The clients' own retries are off: the RLM retries what they would (408,
409, 429, 5xx, timeouts, connection errors) and malformed answers itself so that each retry fires ``on_retry``
(the full list is in the ``RLM`` docstring).

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
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing, closing
from typing import Any, cast

import openai

from ._client import _delay_before_retry, _OpenAIConnection
from ._context import run_left_unfinished
from ._run_steps import (
    RunResult,
    RunRow,
    _drive_async,
    _drive_sync,
    _event_loop_running,
    _failed_result,
    _final_result,
    _progress_bar,
    _RunScope,
    _RunSettings,
    _run_steps,
)
from ._run_options import Metadata, RunOptions, Tags, checked_defaults
from .callbacks import BaseCallback, CallbackManager
from .callbacks._async import each_step_as_sync_caller, sync_caller
from .callbacks._pickling import PickledByConfiguration
from .errors import MissingAPIKeyError, RLMConfigError, ToolRoundsExceededError
from .memory import Memory
from .tools import Tool, ToolDefinitionError, as_tool

__all__ = ["RLM", "MissingAPIKeyError", "RLMConfigError", "RunResult", "RunRow", "ToolRoundsExceededError"]


class RLM(PickledByConfiguration):
    """A model behind an OpenAI-compatible endpoint, with callbacks, tools and memory. Build with ``from_openai``.

    A prompt is a ``str``: ``run``, ``arun``, ``stream`` and ``astream`` raise ``TypeError`` for anything else
    (a list of chat messages included). ``batch``/``abatch`` take an iterable of ``str`` prompts and raise
    ``TypeError`` for a ``str``, ``bytes`` or mapping in its place, or for a prompt that is not a ``str`` (the
    message names its index). Both checks come before any event fires or request is sent.

    Retries: each LLM call is tried up to ``max_attempts`` times. Retried, each retry firing ``on_retry``:
    HTTP 408 (Request Timeout), 409 (Conflict), 429 (Too Many Requests) and every 5xx status; an attempt past
    ``timeout`` or ``idle_timeout``; a connection that cannot be made or breaks before the answer is complete;
    a malformed answer (see the ``rlm_toolkit.rlm`` docstring). Not retried: every other status (such as 400,
    401, 403, 404 and 422), and a streamed call that fails after part of its answer was delivered. Before a
    retry the RLM waits as the server's ``Retry-After`` asks (up to 120 s), else a random time up to
    ``min(backoff_max, backoff_base * 2**retry)`` seconds.

    Pickled (to send it to a worker process), an RLM travels as its configuration: everything
    ``from_openai`` was given, with the API key and base URL as resolved (from the environment when not
    given), so the pickle holds the API key. Its callbacks, tools and memory travel as they pickle (the
    built-in ones as their options: no counts, buffered lines or stored messages); its clients and their
    connections do not: the worker opens its own.
    """

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
        tags: Tags | None = None,
        metadata: Metadata | None = None,
    ) -> None:
        _check_model(model)
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
        self.tags, self.metadata = checked_defaults(tags, metadata)
        for resolved in ("callbacks", "tools", "tags", "metadata"):  # given iterables may be consumed by now
            self._keep_argument(resolved, getattr(self, resolved))
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
        tags: Tags | None = None,
        metadata: Metadata | None = None,
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
        next chunk. ``tags`` (a list of str) and ``metadata`` (a dict) are every run's defaults, merged with
        a run's own (see ``run``). ``client_options`` go to the ``openai`` client constructors (e.g. ``organization=``,
        ``default_headers=``). A password in ``base_url`` is treated like the API key: never shown.

        Raises ``RLMConfigError`` for a bad option: ``model`` not a non-empty ``str``, a ``base_url`` (or
        ``$OPENAI_BASE_URL``) that is not an http(s) URL with a host, a number out of range.
        """
        _check_model(model)  # before the connection, so this is the error a bad model gets
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
            tags=tags,
            metadata=metadata,
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
    # Each takes, for that call only: ``callbacks`` (a callback, a list of them or a ``CallbackManager``),
    # which see the call's runs and nothing else; ``tags`` (a list of str, added to the RLM's) and
    # ``metadata`` (a dict, over the RLM's). Every event of the call's runs carries the merged ``tags=`` and
    # ``metadata=`` keywords, and so does every JSONL record.

    def run(
        self,
        prompt: str,
        *,
        callbacks: BaseCallback | Iterable[Any] | None = None,
        tags: Tags | None = None,
        metadata: Metadata | None = None,
    ) -> RunResult:
        """Answer ``prompt`` (running tools as the model asks); raises ``LLMCallError`` if a call fails for good."""
        _check_prompt(prompt, "run")
        options = self._options("run", callbacks, tags, metadata)
        with sync_caller():  # async hooks complete before it returns, also inside a running event loop
            steps = _run_steps(self._settings(options), prompt, _RunScope.start(), stream=options.callbacks.streams_tokens)
            with closing(_drive_sync(steps, self._connection)) as items:
                return _final_result(items)

    def stream(
        self,
        prompt: str,
        *,
        callbacks: BaseCallback | Iterable[Any] | None = None,
        tags: Tags | None = None,
        metadata: Metadata | None = None,
    ) -> Generator[str, None, None]:
        """Answer ``prompt``, yielding the answer's text as it arrives (and firing ``on_llm_new_token``)."""
        _check_prompt(prompt, "stream")
        return self._stream(prompt, self._options("stream", callbacks, tags, metadata))

    def _stream(self, prompt: str, options: RunOptions) -> Generator[str, None, None]:
        steps = _run_steps(self._settings(options), prompt, _RunScope.start(), stream=True)
        with closing(each_step_as_sync_caller(_drive_sync(steps, self._connection))) as items:
            for item in items:
                if isinstance(item, str):
                    yield item

    async def arun(
        self,
        prompt: str,
        *,
        callbacks: BaseCallback | Iterable[Any] | None = None,
        tags: Tags | None = None,
        metadata: Metadata | None = None,
    ) -> RunResult:
        """Async ``run``; async hooks scheduled by its events have completed when it returns or raises."""
        _check_prompt(prompt, "arun")
        options = self._options("arun", callbacks, tags, metadata)
        try:
            return await self._arun_without_waiting(
                prompt, options, _RunScope.start(), stream=options.callbacks.streams_tokens
            )
        finally:
            await options.callbacks.wait_pending()

    def astream(
        self,
        prompt: str,
        *,
        callbacks: BaseCallback | Iterable[Any] | None = None,
        tags: Tags | None = None,
        metadata: Metadata | None = None,
    ) -> AsyncGenerator[str, None]:
        """Async ``stream``. Stopping early? Close it (``contextlib.aclosing``) so its request ends at once."""
        _check_prompt(prompt, "astream")
        return self._astream(prompt, self._options("astream", callbacks, tags, metadata))

    async def _astream(self, prompt: str, options: RunOptions) -> AsyncGenerator[str, None]:
        try:
            steps = _run_steps(self._settings(options), prompt, _RunScope.start(), stream=True)
            async with aclosing(_drive_async(steps, self._connection)) as items:
                async for item in items:
                    if isinstance(item, str):
                        yield item
        finally:
            await options.callbacks.wait_pending()

    def batch(
        self,
        prompts: Iterable[str],
        *,
        max_concurrency: int = 16,
        progress: bool | None = None,
        callbacks: BaseCallback | Iterable[Any] | None = None,
        tags: Tags | None = None,
        metadata: Metadata | None = None,
    ) -> list[RunResult]:
        """Run every prompt concurrently on the async client; see ``abatch``.

        Runs its own event loop (in a worker thread when this thread already runs one).
        """
        prompt_list = _prompt_list(prompts, "batch")
        options = self._options("batch", callbacks, tags, metadata)
        job = self._abatch_on_own_loop(prompt_list, options, max_concurrency, progress)
        if not _event_loop_running():
            return asyncio.run(job)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlm-batch") as worker:
            return worker.submit(contextvars.copy_context().run, asyncio.run, job).result()

    async def abatch(
        self,
        prompts: Iterable[str],
        *,
        max_concurrency: int = 16,
        progress: bool | None = None,
        callbacks: BaseCallback | Iterable[Any] | None = None,
        tags: Tags | None = None,
        metadata: Metadata | None = None,
    ) -> list[RunResult]:
        """Run every prompt, at most ``max_concurrency`` at a time; results in input order.

        The batch is a run of its own: ``on_run_start`` (``kind="batch"``, ``prompt=""``) fires before the first
        prompt's run and ``on_run_end`` (``kind="batch"``, ``answer=""``) after the last one ends, failed or not;
        each prompt's run (``kind="run"``) has the batch's ``run_id`` as its ``parent_run_id`` and its results'
        ``batch_id``. A failed run does not stop the others: it ends with ``on_error`` (no ``on_run_end``), and
        its result has ``error`` set and ``answer == ""``. A progress
        bar (tqdm) shows when ``progress`` is True, or when it is None, stderr is a terminal and tqdm is
        installed; ``progress=True`` without tqdm raises ``MissingExtraError`` (an ``RLMConfigError`` and an
        ``ImportError``) before any run starts: ``pip install 'rlm_toolkit[progress]'``. ``callbacks``,
        ``tags`` and ``metadata`` apply to every prompt's run.
        """
        prompt_list = _prompt_list(prompts, "abatch")
        options = self._options("abatch", callbacks, tags, metadata)
        return await self._abatch(prompt_list, options, max_concurrency, progress)

    # -- what the entry points share ---------------------------------------------------------------

    async def _abatch(
        self, prompt_list: list[str], options: RunOptions, max_concurrency: int, progress: bool | None
    ) -> list[RunResult]:
        """``abatch`` of prompts already checked: a run of kind ``"batch"``, the parent of one run per prompt."""
        if max_concurrency < 1:
            raise RLMConfigError(f"max_concurrency must be at least 1, got {max_concurrency}")
        results: list[RunResult | None] = [None] * len(prompt_list)
        unstarted = iter(enumerate(prompt_list))
        stream = options.callbacks.streams_tokens
        progress_bar = _progress_bar(len(prompt_list), progress)
        batch = _RunScope.start()
        batch_ids = {
            "run_id": batch.run_id,
            "parent_run_id": batch.parent_run_id,
            "model": self.model,
            "tags": list(options.tags),
            "metadata": dict(options.metadata),
        }

        async def work_through_prompts() -> None:
            for index, prompt in unstarted:
                run = batch.item()
                try:
                    results[index] = await self._arun_without_waiting(prompt, options, run, stream=stream)
                except Exception as error:
                    results[index] = _failed_result(self.model, run, error)
                if progress_bar is not None:
                    progress_bar.update()

        try:
            # The batch's prompt and answer are "": the prompts and answers are its items'.
            options.callbacks.on_run_start("", kind="batch", **batch_ids)
            await asyncio.gather(*(work_through_prompts() for _ in range(min(max_concurrency, len(prompt_list)))))
            options.callbacks.on_run_end("", kind="batch", **batch_ids)
        except BaseException as error:  # cancelled: the items' runs are told on their own
            run_left_unfinished(batch.run_id, error)
            raise
        finally:
            if progress_bar is not None:
                progress_bar.close()
            await options.callbacks.wait_pending()
        return cast("list[RunResult]", results)

    async def _abatch_on_own_loop(
        self, prompts: list[str], options: RunOptions, max_concurrency: int, progress: bool | None
    ) -> list[RunResult]:
        try:
            return await self._abatch(prompts, options, max_concurrency, progress)
        finally:
            await self._connection.aclose_async_client()

    async def _arun_without_waiting(self, prompt: str, options: RunOptions, run: _RunScope, *, stream: bool) -> RunResult:
        """``arun`` without waiting for async hooks (``abatch`` waits once for all its runs)."""
        steps = _run_steps(self._settings(options), prompt, run, stream=stream)
        async with aclosing(_drive_async(steps, self._connection)) as items:
            async for item in items:
                if isinstance(item, RunResult):
                    return item
        raise AssertionError("the run ended without a result")

    def _options(
        self, method: str, callbacks: BaseCallback | Iterable[Any] | None, tags: object, metadata: object
    ) -> RunOptions:
        return RunOptions.of_call(self.callbacks, self.tags, self.metadata, method, callbacks, tags, metadata)

    def _settings(self, options: RunOptions) -> _RunSettings:
        """This RLM's configuration, for one run of a call with ``options``."""
        return _RunSettings(
            model=self.model,
            endpoint=self._connection.display_url,
            callbacks=options.callbacks,
            tags=options.tags,
            metadata=options.metadata,
            memory=self.memory,
            tools_by_name=self._tools_by_name,
            tool_schemas=self._tool_schemas,
            system_prompt=self.system_prompt,
            max_attempts=self.max_attempts,
            max_tool_rounds=self.max_tool_rounds,
            retry_delay=self._retry_delay,
        )

    def _retry_delay(self, error: openai.APIError, retry_number: int) -> float:
        """Seconds to wait before retry ``retry_number``: the server's ``Retry-After``, else full-jitter backoff."""
        return _delay_before_retry(error, retry_number, backoff_base=self.backoff_base, backoff_max=self.backoff_max)


# -- argument checks ------------------------------------------------------------------------------


def _check_model(model: object) -> None:
    if not isinstance(model, str) or not model.strip():
        got = repr(model) if model is None or isinstance(model, str) else f"{model!r} ({type(model).__name__})"
        raise RLMConfigError(f"model must be the model's name as a non-empty str, such as 'gpt-4o-mini'; got {got}")


def _check_prompt(prompt: object, method: str) -> None:
    if not isinstance(prompt, str):
        raise TypeError(
            f"{method}() takes the prompt as a str, not {_a(type(prompt).__name__)}{_prompt_hint(prompt, method)}"
        )


def _prompt_list(prompts: object, method: str) -> list[str]:
    """``prompts`` as a list, if it is an iterable of ``str`` (but not a ``str`` itself)."""
    refusal = f"{method}() takes a list of prompts, not {_a(type(prompts).__name__)}"
    if isinstance(prompts, (str, bytes, bytearray)):
        raise TypeError(f"{refusal}; for one prompt, pass [prompt] or call {method.removesuffix('batch')}run()")
    if isinstance(prompts, Mapping):  # iterating it would run its keys
        raise TypeError(refusal)
    try:
        prompt_iterator = iter(cast("Iterable[object]", prompts))
    except TypeError:
        raise TypeError(refusal) from None
    prompt_list = list(prompt_iterator)
    for index, prompt in enumerate(prompt_list):
        if not isinstance(prompt, str):
            raise TypeError(
                f"{method}() takes prompts as str, but prompts[{index}] is {_a(type(prompt).__name__)}"
                f"{_prompt_hint(prompt, method)}"
            )
    return cast("list[str]", prompt_list)


def _prompt_hint(prompt: object, method: str) -> str:
    """What to pass instead, for a prompt of a type that is a likely mistake (``""`` if none comes to mind)."""
    if isinstance(prompt, (bytes, bytearray)):
        return "; decode it first, e.g. prompt.decode('utf-8')"
    if isinstance(prompt, (list, tuple)) and not method.endswith("batch"):
        several = "abatch" if method.startswith("a") else "batch"
        return f"; to answer several prompts, call {several}() (a list of chat messages is not supported)"
    return ""


def _a(type_name: str) -> str:
    return f"an {type_name}" if type_name[0] in "aeiouAEIOU" else f"a {type_name}"
