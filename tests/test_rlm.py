"""RLM against the real LocalServer through the official openai client: events, streaming, retries, errors,
run hierarchy, async. ``Recorder`` here is also used by the other RLM test modules."""

from __future__ import annotations

import asyncio
import contextvars
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlm_toolkit._client import _retry_after_seconds
from rlm_toolkit.callbacks import AsyncBaseCallback, BaseCallback, FileLogCallback, MetricsCallback
from rlm_toolkit.errors import LLMCallError
from rlm_toolkit.rlm import RLM, MissingAPIKeyError, RLMConfigError, RunResult
from rlm_toolkit.server import LocalServer
from rlm_toolkit.types import LLMResponse, Usage

MODEL = "gpt-4o-mini"


@dataclass
class Event:
    name: str
    args: dict[str, Any]
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.context["run_id"]

    @property
    def parent_run_id(self) -> str | None:
        return self.context["parent_run_id"]


class Recorder(BaseCallback):
    """Records every event except streamed tokens (so runs do not stream unless asked)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def names(self) -> list[str]:
        return [event.name for event in self.events]

    def of(self, name: str) -> list[Event]:
        return [event for event in self.events if event.name == name]

    def _add(self, name: str, context: dict[str, Any], **args: Any) -> None:
        self.events.append(Event(name, args, context))

    def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
        self._add("llm_start", kwargs, prompt=prompt)

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self._add("llm_end", kwargs, response=response)

    def on_tool_start(self, tool_name: str, tool_input: Any, **kwargs: Any) -> None:
        self._add("tool_start", kwargs, tool_name=tool_name, tool_input=tool_input)

    def on_tool_end(self, tool_name: str, tool_output: Any, **kwargs: Any) -> None:
        self._add("tool_end", kwargs, tool_name=tool_name, tool_output=tool_output)

    def on_memory_store(self, content: str, **kwargs: Any) -> None:
        self._add("memory_store", kwargs, content=content)

    def on_memory_recall(self, query: str, results: list[Any], **kwargs: Any) -> None:
        self._add("memory_recall", kwargs, query=query, results=results)

    def on_retry(self, attempt: int, max_attempts: int, error: BaseException, **kwargs: Any) -> None:
        self._add("retry", kwargs, attempt=attempt, max_attempts=max_attempts, error=error)

    def on_error(self, error: BaseException, **kwargs: Any) -> None:
        self._add("error", kwargs, error=error)


class TokenRecorder(Recorder):
    """A Recorder that also takes streamed tokens, which makes ``run`` stream from the server."""

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self._add("llm_new_token", kwargs, token=token)

    def tokens(self) -> list[str]:
        return [event.args["token"] for event in self.of("llm_new_token")]


def make_rlm(server: LocalServer, *callbacks: Any, **options: Any) -> RLM:
    options.setdefault("backoff_base", 0.001)
    return RLM.from_openai(options.pop("model", MODEL), list(callbacks), base_url=server.base_url,
                           api_key=server.api_key, **options)


def expected_usage(prompt: str, answer: str) -> Usage:
    """What the LocalServer counts for a one-message prompt (see rlm_toolkit/server/protocol.py)."""
    return Usage.of(len(prompt.split()) + 3, len(answer.split()))


# -- one plain run --------------------------------------------------------------------------------


def test_run_answers_and_fires_llm_start_then_end(server: LocalServer) -> None:
    recorder = Recorder()
    result = make_rlm(server, recorder).run("Hello there!")

    assert isinstance(result, RunResult)
    assert result.answer == str(result) == "Hello! You said: Hello there!"
    assert result.usage == expected_usage("Hello there!", result.answer)
    assert recorder.names() == ["llm_start", "llm_end"]
    start, end = recorder.events
    assert start.args == {"prompt": "Hello there!"}
    assert start.context == {"run_id": end.run_id, "parent_run_id": result.run_id, "model": MODEL, "tags": [],
                             "metadata": {}}
    assert end.context == start.context  # a call that did not stream has no ttft_ms
    response = end.args["response"]
    assert isinstance(response, LLMResponse)
    assert (response.content, response.model, response.usage, response.finish_reason) == (
        result.answer, MODEL, result.usage, "stop")
    assert result.response == response
    assert start.run_id != result.run_id
    assert "stream" not in server.requests[-1]


def test_system_prompt_goes_first(server: LocalServer) -> None:
    make_rlm(server, system_prompt="Be brief.").run("Hi")
    assert server.requests[-1]["messages"] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def test_each_run_gets_a_new_run_id(server: LocalServer) -> None:
    rlm = make_rlm(server)
    assert rlm.run("a").run_id != rlm.run("b").run_id


# -- streaming ------------------------------------------------------------------------------------


def test_token_hook_makes_run_stream_with_exact_usage(server: LocalServer) -> None:
    recorder = TokenRecorder()
    result = make_rlm(server, recorder).run("a long answer please")

    assert server.requests[-1]["stream"] is True
    assert server.requests[-1]["stream_options"] == {"include_usage": True}
    assert "".join(recorder.tokens()) == result.answer
    assert len(recorder.tokens()) == len(result.answer.split())
    assert result.usage == expected_usage("a long answer please", result.answer)
    assert recorder.of("llm_end")[0].args["response"].usage == result.usage
    start = recorder.of("llm_start")[0]
    assert all(token.context == start.context for token in recorder.of("llm_new_token"))
    assert recorder.names()[0] == "llm_start" and recorder.names()[-1] == "llm_end"


def test_stream_yields_the_answer_and_fires_tokens(server: LocalServer) -> None:
    recorder = TokenRecorder()
    chunks = list(make_rlm(server, recorder).stream("tell me something long"))

    answer = "".join(chunks)
    assert answer.startswith("Hello! You said: tell me something long")
    assert chunks == recorder.tokens()
    response = recorder.of("llm_end")[0].args["response"]
    assert response.content == answer
    assert response.usage == expected_usage("tell me something long", answer)


def test_stream_without_token_callbacks_still_streams_from_the_server(server: LocalServer) -> None:
    recorder = Recorder()
    chunks = list(make_rlm(server, recorder).stream("one two three"))
    assert chunks == ["Hello! ", "You ", "said: ", "one ", "two ", "three"]
    assert server.requests[-1]["stream"] is True
    assert recorder.names() == ["llm_start", "llm_end"]


# -- retries and failures ---------------------------------------------------------------------------


def test_429_is_retried_after_the_servers_retry_after(server: LocalServer) -> None:
    recorder = Recorder()
    rlm = make_rlm(server, recorder, backoff_base=0.0)
    server.fail_next(429, retry_after=0.2)
    started = time.perf_counter()
    result = rlm.run("retry me")

    assert time.perf_counter() - started >= 0.2
    assert result.answer == "Hello! You said: retry me"
    assert recorder.names() == ["llm_start", "retry", "llm_end"]
    retry = recorder.of("retry")[0]
    assert (retry.args["attempt"], retry.args["max_attempts"]) == (1, 3)
    assert isinstance(retry.args["error"], openai.RateLimitError)
    assert retry.context == recorder.of("llm_start")[0].context
    assert len(server.requests) == 2


def test_5xx_is_retried_until_it_succeeds(server: LocalServer) -> None:
    recorder = Recorder()
    server.fail_next(503, count=2)
    result = make_rlm(server, recorder).run("hi")
    assert result.answer == "Hello! You said: hi"
    assert [event.args["attempt"] for event in recorder.of("retry")] == [1, 2]
    assert all(isinstance(event.args["error"], openai.InternalServerError) for event in recorder.of("retry"))


def test_timeout_is_retried(server: LocalServer) -> None:
    recorder = Recorder()
    server.hang_next(2.0)
    result = make_rlm(server, recorder, timeout=0.2).run("hi")
    assert result.answer == "Hello! You said: hi"
    (retry,) = recorder.of("retry")
    assert isinstance(retry.args["error"], openai.APITimeoutError)
    assert str(retry.args["error"]) == "no answer within timeout=0.2 s"


def test_dropped_connection_is_retried(server: LocalServer) -> None:
    recorder = Recorder()
    server.drop_next()
    assert make_rlm(server, recorder).run("hi").answer == "Hello! You said: hi"
    assert [type(event.args["error"]) for event in recorder.of("retry")] == [openai.APIConnectionError]


def test_final_failure_fires_on_error_once_and_raises(server: LocalServer) -> None:
    recorder = Recorder()
    server.fail_next(500, count=3)
    with pytest.raises(LLMCallError) as raised:
        make_rlm(server, recorder, max_attempts=3).run("hi")

    error = raised.value
    assert error.attempts == 3
    assert isinstance(error.__cause__, openai.InternalServerError)
    assert str(error) == (f"server error 500 from {server.base_url} after 3 attempts; "
                          "try again later or raise max_attempts")
    assert recorder.names() == ["llm_start", "retry", "retry", "error"]
    assert recorder.of("error")[0].args["error"] is error
    assert recorder.of("error")[0].context == recorder.of("llm_start")[0].context


def test_unknown_model_is_not_retried_and_says_so(server: LocalServer) -> None:
    recorder = Recorder()
    with pytest.raises(LLMCallError) as raised:
        make_rlm(server, recorder, model="no-such-model").run("hi")
    assert str(raised.value) == f"model 'no-such-model' not found at {server.base_url}; check the model name"
    assert isinstance(raised.value.__cause__, openai.NotFoundError)
    assert recorder.names() == ["llm_start", "error"]
    assert len(server.requests) == 1


def test_other_4xx_is_not_retried(server: LocalServer) -> None:
    server.fail_next(400, message="bad things")
    with pytest.raises(LLMCallError, match=r"rejected the request \(400\): Error code: 400 - bad things"):
        make_rlm(server).run("hi")
    assert len(server.requests) == 1


def test_a_refused_key_is_not_retried_and_says_what_to_check(server: LocalServer) -> None:
    server.fail_next(401)
    with pytest.raises(LLMCallError) as raised:
        make_rlm(server).run("hi")
    assert str(raised.value) == f"401: {server.base_url} refused the API key; check OPENAI_API_KEY or api_key="
    assert len(server.requests) == 1


def test_unreachable_server_gives_a_connection_message() -> None:
    rlm = RLM.from_openai(MODEL, base_url="http://127.0.0.1:9/v1", max_attempts=2, backoff_base=0.0)
    with pytest.raises(LLMCallError) as raised:
        rlm.run("hi")
    assert str(raised.value) == (
        "could not connect to http://127.0.0.1:9/v1 after 2 attempts; "
        "check the base URL and that the server is running")


def test_a_stream_that_fails_for_good_raises_llm_call_error(server: LocalServer) -> None:
    server.fail_next(429, count=2, retry_after=0.0)
    with pytest.raises(LLMCallError, match=r"rate limited \(429\) by .* after 2 attempts"):
        list(make_rlm(server, max_attempts=2).stream("hi"))


def test_retry_after_forms() -> None:
    def rate_limited(headers: dict[str, str]) -> openai.RateLimitError:
        request = httpx2.Request("POST", "http://test/v1/chat/completions")
        return openai.RateLimitError("slow down", response=httpx2.Response(429, headers=headers, request=request),
                                     body=None)

    assert _retry_after_seconds(rate_limited({"retry-after": "1.5"})) == 1.5
    assert _retry_after_seconds(rate_limited({"retry-after-ms": "250", "retry-after": "9"})) == 0.25
    assert _retry_after_seconds(rate_limited({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0.0
    assert _retry_after_seconds(rate_limited({"retry-after": "soon"})) is None
    assert _retry_after_seconds(rate_limited({})) is None


@pytest.fixture(scope="module")
def unreachable_rlm() -> RLM:
    return RLM.from_openai(MODEL, base_url="http://127.0.0.1:9/v1")


@given(retry_number=st.integers(min_value=1, max_value=40),
       base=st.floats(min_value=0, max_value=5), cap=st.floats(min_value=0, max_value=30))
def test_backoff_is_full_jitter_under_the_cap(unreachable_rlm: RLM, retry_number: int, base: float,
                                               cap: float) -> None:
    unreachable_rlm.backoff_base, unreachable_rlm.backoff_max = base, cap
    error = openai.APIConnectionError(request=httpx2.Request("POST", "http://127.0.0.1:9/v1"))
    assert 0.0 <= unreachable_rlm._retry_delay(error, retry_number) <= min(cap, base * 2 ** (retry_number - 1))


# -- configuration and the API key ------------------------------------------------------------------


def test_missing_key_and_base_url_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(MissingAPIKeyError, match="set OPENAI_API_KEY or pass api_key="):
        RLM.from_openai(MODEL)


def test_environment_variables_are_honoured(server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    rlm = RLM.from_openai(MODEL)
    assert rlm.base_url == server.base_url
    assert rlm.run("hi").answer == "Hello! You said: hi"


@pytest.mark.parametrize("options", [{"max_attempts": 0}, {"max_tool_rounds": -1}, {"timeout": 0},
                                     {"backoff_base": -1}, {"max_retries": 2}])
def test_bad_options_are_rejected(server: LocalServer, options: dict[str, Any]) -> None:
    with pytest.raises(RLMConfigError):
        make_rlm(server, **options)


def test_api_key_appears_in_no_event_log_or_error(server: LocalServer, tmp_path: Any) -> None:
    secret = "sk-test-SECRET-0123456789"
    log = FileLogCallback(tmp_path / "log.jsonl")
    recorder = Recorder()
    rlm = RLM.from_openai(MODEL, [recorder, log], api_key=secret, base_url=server.base_url, max_attempts=2,
                          backoff_base=0.0)
    rlm.run("hi")
    server.fail_next(400, message=f"Incorrect API key provided: {secret}")
    with pytest.raises(LLMCallError) as raised:
        rlm.run("again")
    log.close()

    assert secret not in str(raised.value)
    assert secret not in repr(rlm)
    assert secret not in (tmp_path / "log.jsonl").read_text()
    assert all(secret not in repr(event) for event in recorder.events)


# -- run hierarchy ----------------------------------------------------------------------------------


def test_nested_run_in_a_tool_is_a_child_of_the_tool_call(server: LocalServer) -> None:
    recorder = Recorder()
    inner = make_rlm(server, recorder)
    inner_results: list[RunResult] = []

    def ask_inner(question: str) -> str:
        inner_results.append(inner.run(question))
        return inner_results[-1].answer

    outer = make_rlm(server, recorder, tools=[ask_inner])
    result = outer.run("please ask_inner now")

    tool_start = recorder.of("tool_start")[0]
    assert tool_start.parent_run_id == result.run_id
    assert inner_results[0].parent_run_id == tool_start.run_id
    assert result.parent_run_id is None
    inner_calls = [event for event in recorder.of("llm_start") if event.parent_run_id == inner_results[0].run_id]
    assert len(inner_calls) == 1


def test_nested_run_in_a_thread_keeps_its_parent_with_copy_context(server: LocalServer) -> None:
    inner = make_rlm(server)
    inner_results: list[RunResult] = []

    def ask_inner(question: str) -> str:
        with ThreadPoolExecutor(1) as pool:
            inner_results.append(pool.submit(contextvars.copy_context().run, inner.run, question).result())
        return inner_results[-1].answer

    recorder = Recorder()
    make_rlm(server, recorder, tools=[ask_inner]).run("ask_inner please")
    assert inner_results[0].parent_run_id == recorder.of("tool_start")[0].run_id


async def test_nested_arun_in_an_async_tool_is_a_child_of_the_tool_call(server: LocalServer) -> None:
    recorder = Recorder()
    inner = make_rlm(server)
    inner_results: list[RunResult] = []

    async def ask_inner(question: str) -> str:
        inner_results.append(await inner.arun(question))
        return inner_results[-1].answer

    await make_rlm(server, recorder, tools=[ask_inner]).arun("ask_inner please")
    assert inner_results[0].parent_run_id == recorder.of("tool_start")[0].run_id


# -- async ----------------------------------------------------------------------------------------


async def test_arun_mirrors_run(server: LocalServer) -> None:
    recorder = Recorder()
    result = await make_rlm(server, recorder).arun("async hello")
    assert result.answer == "Hello! You said: async hello"
    assert result.usage == expected_usage("async hello", result.answer)
    assert recorder.names() == ["llm_start", "llm_end"]
    assert recorder.events[0].parent_run_id == result.run_id


async def test_arun_retries_and_fails_like_run(server: LocalServer) -> None:
    recorder = Recorder()
    server.fail_next(502, count=2)
    with pytest.raises(LLMCallError, match="server error 502"):
        await make_rlm(server, recorder, max_attempts=2).arun("hi")
    assert recorder.names() == ["llm_start", "retry", "error"]


async def test_astream_yields_chunks_and_fires_tokens(server: LocalServer) -> None:
    recorder = TokenRecorder()
    chunks = [chunk async for chunk in make_rlm(server, recorder).astream("one two")]
    assert chunks == recorder.tokens() == ["Hello! ", "You ", "said: ", "one ", "two"]
    assert recorder.of("llm_end")[0].args["response"].usage == expected_usage("one two", "".join(chunks))


async def test_async_hooks_have_run_when_arun_returns_or_raises(server: LocalServer) -> None:
    finished: list[str] = []

    class SlowAsyncCallback(AsyncBaseCallback):
        async def on_llm_end(self, response: Any, **kwargs: Any) -> None:
            await asyncio.sleep(0.05)
            finished.append("end")

        async def on_error(self, error: BaseException, **kwargs: Any) -> None:
            await asyncio.sleep(0.05)
            finished.append("error")

    rlm = make_rlm(server, SlowAsyncCallback(), max_attempts=1)
    await rlm.arun("hi")
    assert finished == ["end"]
    server.fail_next(500)
    with pytest.raises(LLMCallError):
        await rlm.arun("hi")
    assert finished == ["end", "error"]


def test_a_single_callback_is_taken_as_callbacks(server: LocalServer) -> None:
    metrics = MetricsCallback()
    rlm = RLM.from_openai(MODEL, callbacks=metrics, base_url=server.base_url, api_key=server.api_key)
    rlm.run("Hello!")
    assert metrics.get_metrics()["completed_calls"] == 1
