"""The run logic, written once as a generator of effects, and the sync and async drivers that carry them out.

``_run_steps`` yields an effect for everything that waits (send this request, sleep this long, run these
tools) and is sent each one's outcome; ``_drive_sync`` carries the effects out with the sync client and
blocking calls, ``_drive_async`` with the async client and awaits. Both yield the streamed text, then the
``RunResult``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterator
from contextlib import aclosing
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypedDict

import openai

from ._chat_attempt import _ChatAttempt
from ._client import _attempt_async, _attempt_sync, _describe_failure, _is_retryable, _OpenAIConnection
from ._context import calling_endpoint, current_parent_run_id, new_run_id, run_left_unfinished
from ._tool_calls import _ToolInvocation
from ._run_options import RunCallbacks
from .errors import LLMCallError, MalformedResponseError, MissingExtraError, ToolRoundsExceededError
from .memory import Memory
from .pricing import call_cost, price_for
from .secrets import redact, redact_exception_chain
from .tools import Tool, ToolCallRecord
from .types import LLMResponse, Usage


class RunRow(TypedDict):
    """One run as plain values (str, int, float, None), a table row: see ``RunResult.as_row``."""

    answer: str
    error: str | None
    run_id: str
    parent_run_id: str | None
    batch_id: str | None
    model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    cached_tokens: int | None
    reasoning_tokens: int | None
    cost_usd: float | None


@dataclass(frozen=True, slots=True)
class RunResult:
    """The outcome of one run. ``str(result)`` is the answer.

    In ``batch``/``abatch`` results, a run that failed has ``error`` set to its exception (usually
    ``LLMCallError``) and ``answer == ""``; ``run``/``arun`` raise instead, so their results never carry one.
    """

    answer: str
    usage: Usage | None
    """Token usage summed over every LLM call of the run that answered (for a failed run in ``batch``/``abatch``
    results, those before the failure); None when a call's server did not report its usage (the sum would be
    too low)."""
    run_id: str
    parent_run_id: str | None = None
    """The run (or tool call) this run was started inside, if any: for a ``batch``/``abatch`` item, the batch."""
    response: LLMResponse | None = None
    """The last LLM response of the run."""
    tool_calls: tuple[ToolCallRecord, ...] = ()
    error: BaseException | None = None
    cost_usd: float | None = None
    """The USD cost of the calls counted in ``usage``, at the prices of ``rlm_toolkit.pricing`` for the RLM's
    model: what ``MetricsCallback`` counts for them, the cost of their token sums; None when the model has no
    price or ``usage`` is None."""
    batch_id: str | None = None
    """The ``run_id`` of the ``batch``/``abatch`` call this run is an item of; None for ``run``/``arun``."""
    model: str | None = None
    """The model the run asked for (the RLM's ``model``)."""

    def __str__(self) -> str:
        return self.answer

    def as_row(self) -> RunRow:
        """This result as plain values, for a table (``pandas.DataFrame(r.as_row() for r in results)``, Ray
        Datasets): ``error`` as ``"TypeName: message"`` (secrets redacted; None when the run succeeded), the
        token counts of ``usage`` (None each when it is None)."""
        usage = self.usage
        return {
            "answer": self.answer,
            "error": None if self.error is None else _error_text(self.error),
            "run_id": self.run_id,
            "parent_run_id": self.parent_run_id,
            "batch_id": self.batch_id,
            "model": self.model,
            "prompt_tokens": None if usage is None else usage.prompt_tokens,
            "completion_tokens": None if usage is None else usage.completion_tokens,
            "total_tokens": None if usage is None else usage.total_tokens,
            "cached_tokens": None if usage is None else usage.cached_tokens,
            "reasoning_tokens": None if usage is None else usage.reasoning_tokens,
            "cost_usd": self.cost_usd,
        }


def _error_text(error: BaseException) -> str:
    message = redact(str(error))
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


@dataclass(slots=True)
class _Spent:
    """What a run's answered calls have used so far: read for its result, also when the run fails."""

    usage: Usage | None = field(default_factory=Usage)
    priced_tokens: tuple[int, int, int] | None = (0, 0, 0)
    """The answered calls' prompt tokens, cached prompt tokens (each call's at most its prompt tokens) and
    completion tokens, for their cost; None (unknown) once the model had no price or a call's usage was not
    reported."""

    def cost_usd(self, model: str | None) -> float | None:
        """The cost of these calls as ``MetricsCallback`` counts it: that of their token sums."""
        price = price_for(model)
        if price is None or self.priced_tokens is None:
            return None
        prompt, cached, completion = self.priced_tokens
        return call_cost(price, prompt, completion, cached)


@dataclass(frozen=True, slots=True)
class _RunScope:
    run_id: str
    parent_run_id: str | None
    batch_id: str | None = None
    spent: _Spent = field(default_factory=_Spent)

    @classmethod
    def start(cls) -> _RunScope:
        """A new run (or batch), child of the current parent run (if any)."""
        return cls(new_run_id(), current_parent_run_id())

    def item(self) -> _RunScope:
        """A new run, an item of this batch."""
        return _RunScope(new_run_id(), self.run_id, batch_id=self.run_id)


@dataclass(frozen=True, slots=True)
class _RunSettings:
    """What the run logic needs of its ``RLM``: its configuration when the run started, and its retry policy."""

    model: str
    endpoint: str
    """The base URL as messages show it (password redacted)."""
    callbacks: RunCallbacks
    """The RLM's callbacks, joined with the run's own ones (``run(..., callbacks=)``) if it has any."""
    tags: tuple[str, ...]
    metadata: dict[str, Any]
    """The run's tags and metadata: the RLM's defaults merged with the run's own."""
    memory: Memory | None
    tools_by_name: dict[str, Tool]
    tool_schemas: list[dict[str, Any]]
    system_prompt: str | None
    max_attempts: int
    max_tool_rounds: int
    retry_delay: Callable[[openai.APIError, int], float]
    """Seconds to wait before retry number ``n`` after ``error``: ``retry_delay(error, n)``."""


# -- effects: what the run logic asks its driver to do -------------------------------------------------


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


# -- the run logic, shared by both drivers -------------------------------------------------------


def _run_steps(settings: _RunSettings, prompt: str, run: _RunScope, *, stream: bool) -> _RunSteps:
    try:
        return (yield from _run_logic(settings, prompt, run, stream=stream))
    except BaseException as error:  # failed, or closed by its driver (cancelled, a stream left unread)
        run_left_unfinished(run.run_id, error)
        raise


def _run_logic(settings: _RunSettings, prompt: str, run: _RunScope, *, stream: bool) -> _RunSteps:
    callbacks = settings.callbacks
    # One list and one dict per run, given to every event of the run.
    context = {"tags": list(settings.tags), "metadata": dict(settings.metadata)}
    run_ids = {"run_id": run.run_id, "parent_run_id": run.parent_run_id, "model": settings.model, **context}
    callbacks.on_run_start(prompt, kind="run", **run_ids)
    messages: list[dict[str, Any]] = []
    if settings.system_prompt:
        messages.append({"role": "system", "content": settings.system_prompt})
    messages += _recall(settings, prompt, run, context)
    messages.append({"role": "user", "content": prompt})
    spent = run.spent
    if price_for(settings.model) is None:
        spent.priced_tokens = None  # unknown, even if the run fails before its first answer
    tool_records: list[ToolCallRecord] = []
    tool_rounds = 0
    while True:
        response = yield from _chat(settings, prompt, messages, run, context, stream=stream)
        spent.priced_tokens = _add_priced_tokens(spent.priced_tokens, response.usage)
        spent.usage = _add_usage(spent.usage, response.usage)
        if not response.tool_calls:
            break
        if tool_rounds == settings.max_tool_rounds:
            error = ToolRoundsExceededError(
                f"the model still asked for tools after max_tool_rounds={settings.max_tool_rounds} rounds; "
                "raise max_tool_rounds, or make the tools' answers settle the question"
            )
            callbacks.on_error(error, **run_ids)
            raise error
        tool_rounds += 1
        messages.append(
            {"role": "assistant", "content": response.content or None, "tool_calls": list(response.tool_calls)}
        )
        invocations = [
            _ToolInvocation(call, settings.tools_by_name, callbacks, run.run_id, context) for call in response.tool_calls
        ]
        ready = [invocation for invocation in invocations if invocation.output is None]
        if ready:
            yield _RunTools(ready)
        messages += [invocation.tool_message() for invocation in invocations]
        tool_records += [invocation.record() for invocation in invocations]
    _remember(settings, prompt, response.content, run, context)
    callbacks.on_run_end(response.content, kind="run", **run_ids)
    return RunResult(
        answer=response.content,
        usage=spent.usage,
        run_id=run.run_id,
        parent_run_id=run.parent_run_id,
        response=response,
        tool_calls=tuple(tool_records),
        cost_usd=spent.cost_usd(settings.model),
        batch_id=run.batch_id,
        model=settings.model,
    )


def _failed_result(model: str, run: _RunScope, error: Exception) -> RunResult:
    """The result of a ``batch``/``abatch`` item of ``model`` that raised ``error``."""
    return RunResult(
        answer="",
        usage=run.spent.usage,
        run_id=run.run_id,
        parent_run_id=run.parent_run_id,
        error=error,
        cost_usd=run.spent.cost_usd(model),
        batch_id=run.batch_id,
        model=model,
    )


def _chat(
    settings: _RunSettings,
    prompt: str,
    messages: list[dict[str, Any]],
    run: _RunScope,
    context: dict[str, Any],
    *,
    stream: bool,
) -> Generator[_Effect, Any, LLMResponse]:
    """One LLM call, with its retries."""
    callbacks = settings.callbacks
    ids = {"run_id": new_run_id(), "parent_run_id": run.run_id, "model": settings.model, **context}
    params: dict[str, Any] = {"model": settings.model, "messages": messages}
    if settings.tool_schemas:
        params["tools"] = settings.tool_schemas
    if stream:
        params["stream"] = True
        params["stream_options"] = {"include_usage": True}
    fire_token = partial(callbacks.on_llm_new_token, **ids)
    with calling_endpoint(settings.endpoint):
        callbacks.on_llm_start(prompt, **ids)
    attempt_number = 1
    while True:
        attempt = _ChatAttempt(params, stream, fire_token)
        try:
            response: LLMResponse = yield attempt
        except openai.APIError as error:
            if attempt_number == settings.max_attempts or not _is_retryable(error) or attempt.tokens_delivered:
                error_type = (
                    MalformedResponseError if isinstance(error, openai.APIResponseValidationError) else LLMCallError
                )
                message = _describe_failure(
                    error,
                    attempt_number,
                    where=settings.endpoint,
                    model=settings.model,
                    after_tokens=attempt.tokens_delivered,
                )
                failure = error_type(message, attempts=attempt_number)
                callbacks.on_error(failure, **ids)
                raise failure from error
            callbacks.on_retry(attempt_number, settings.max_attempts, error, **ids)
            yield _Sleep(settings.retry_delay(error, attempt_number))
            attempt_number += 1
        else:
            callbacks.on_llm_end(response, ttft_ms=attempt.ttft_ms, **ids)
            return response


def _recall(settings: _RunSettings, prompt: str, run: _RunScope, context: dict[str, Any]) -> list[dict[str, Any]]:
    if settings.memory is None:
        return []
    history = settings.memory.recall(prompt)
    settings.callbacks.on_memory_recall(prompt, history, run_id=new_run_id(), parent_run_id=run.run_id, **context)
    return list(history)


def _remember(settings: _RunSettings, prompt: str, answer: str, run: _RunScope, context: dict[str, Any]) -> None:
    if settings.memory is None:
        return
    for role, content in (("user", prompt), ("assistant", answer)):
        settings.memory.store(role, content)
        settings.callbacks.on_memory_store(
            content, role=role, run_id=new_run_id(), parent_run_id=run.run_id, **context
        )


def _add_priced_tokens(total: tuple[int, int, int] | None, usage: Usage | None) -> tuple[int, int, int] | None:
    """``total`` plus one call's prompt, cached (at most its prompt) and completion tokens; None (unknown) when
    ``total`` is or the call's usage was not reported."""
    if total is None or usage is None:
        return None
    prompt, cached, completion = total
    return (prompt + usage.prompt_tokens, cached + min(usage.cached_tokens, usage.prompt_tokens),
            completion + usage.completion_tokens)


def _add_usage(first: Usage | None, second: Usage | None) -> Usage | None:
    """The sum of two usages; None (unknown) when either is."""
    if first is None or second is None:
        return None
    return Usage(
        first.prompt_tokens + second.prompt_tokens,
        first.completion_tokens + second.completion_tokens,
        first.total_tokens + second.total_tokens,
        first.cached_tokens + second.cached_tokens,
        first.reasoning_tokens + second.reasoning_tokens,
    )


# -- drivers: carry out the effects of the run logic -------------------------------------------


def _drive_sync(steps: _RunSteps, connection: _OpenAIConnection) -> Generator[str | RunResult, None, None]:
    """Carry out ``steps`` with the sync client; yields streamed text, then the ``RunResult``."""
    client = connection.sync_client
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
                    yield from _attempt_sync(connection, client, effect)
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


async def _drive_async(steps: _RunSteps, connection: _OpenAIConnection) -> AsyncGenerator[str | RunResult, None]:
    """Carry out ``steps`` with the async client; yields streamed text, then the ``RunResult``."""
    client = connection.async_client()
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
                    async with aclosing(_attempt_async(connection, client, effect)) as texts:
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


def _final_result(items: Iterator[str | RunResult]) -> RunResult:
    for item in items:
        if isinstance(item, RunResult):
            return item
    raise AssertionError("the run ended without a result")


# -- batch helpers --------------------------------------------------------------------------------


def _event_loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _progress_bar(total: int, progress: bool | None) -> Any:
    """A tqdm bar when asked (``progress=True``) or on a terminal (``None``, if tqdm is installed); None
    otherwise."""
    if progress is False or (progress is None and not sys.stderr.isatty()):
        return None
    try:
        from tqdm import tqdm
    except ImportError as error:
        if progress is None:
            return None
        raise MissingExtraError(
            "progress=True needs tqdm, which is not installed: pip install 'rlm_toolkit[progress]' "
            "(or pass progress=False)"
        ) from error
    return tqdm(total=total, unit="run", file=sys.stderr)
