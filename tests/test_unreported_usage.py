"""A server that reports no token usage: the usage, tokens and cost are unknown everywhere, never 0."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import openai
import pytest

from rlm_toolkit.callbacks import BaseCallback, CallbackManager, ConsoleCallback, FileLogCallback, MetricsCallback
from rlm_toolkit.rlm import RLM
from rlm_toolkit.server import LocalServer
from rlm_toolkit.types import LLMResponse, Usage

from test_rlm import make_rlm

MODEL = "gpt-4o"
TS = 1_700_000_000.0
NULL_TOKENS = {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None, "cached_tokens": None,
               "reasoning_tokens": None}


class Responses(BaseCallback):
    """Keeps every ``on_llm_end`` response; its token hook makes runs stream."""

    def __init__(self, *, stream: bool) -> None:
        self.responses: list[Any] = []
        if stream:
            self.on_llm_new_token = self._ignore_token  # type: ignore[method-assign]

    def _ignore_token(self, token: str, **kwargs: Any) -> None:
        pass

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self.responses.append(response)


def jsonl_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# -- the local server ---------------------------------------------------------------------------


def test_server_omits_usage_from_the_next_completions_only(server: LocalServer) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0)
    server.omit_usage_next(count=2)
    messages: Any = [{"role": "user", "content": "hi"}]

    without = [client.chat.completions.create(model=MODEL, messages=messages) for _ in range(2)]
    after = client.chat.completions.create(model=MODEL, messages=messages)

    assert [completion.usage for completion in without] == [None, None]
    assert after.usage is not None and after.usage.total_tokens > 0


def test_server_sends_no_usage_chunk_on_a_stream(server: LocalServer) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0)
    server.omit_usage_next()
    messages: Any = [{"role": "user", "content": "hi there"}]

    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, stream=True,
                                                 stream_options={"include_usage": True}))

    assert [chunk.usage for chunk in chunks] == [None] * len(chunks)
    assert all(chunk.choices for chunk in chunks)


def test_omit_usage_next_refuses_a_count_below_one(server: LocalServer) -> None:
    with pytest.raises(ValueError, match="count must be at least 1"):
        server.omit_usage_next(count=0)


# -- the RLM ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["completion", "stream"])
def test_unreported_usage_is_none_on_the_response_and_the_run(server: LocalServer, stream: bool) -> None:
    responses = Responses(stream=stream)
    rlm = make_rlm(server, responses, model=MODEL)
    server.omit_usage_next()

    unreported = rlm.run("Hello there!")
    reported = rlm.run("Hello there!")

    assert server.requests[0].get("stream", False) is stream
    assert [response.usage for response in responses.responses][0] is None
    assert isinstance(responses.responses[0], LLMResponse)
    assert unreported.usage is None
    assert unreported.response is not None and unreported.response.usage is None
    assert isinstance(reported.usage, Usage) and reported.usage.total_tokens > 0


def test_one_unreported_call_makes_the_run_usage_none(server: LocalServer) -> None:
    server.queue_reply(tool_calls=[{"name": "echo", "arguments": {"text": "x"}}])
    server.queue_reply("done")
    server.omit_usage_next()  # the tool-call answer; the final answer reports its usage

    def echo(text: str) -> str:
        """Echo the text."""
        return text

    rlm = RLM.from_openai(MODEL, [], base_url=server.base_url, api_key=server.api_key, tools=[echo])
    result = rlm.run("use the tool")

    assert len(server.requests) == 2
    assert result.response is not None and result.response.usage is not None
    assert result.usage is None


# -- metrics, JSONL, console on both backends ---------------------------------------------------


def test_metrics_count_an_unreported_call_with_an_unknown_cost(server: LocalServer, backend: str) -> None:
    metrics = MetricsCallback()
    rlm = make_rlm(server, metrics, model=MODEL)
    server.omit_usage_next()

    rlm.run("Hello there!")
    snapshot = metrics.get_metrics()

    assert snapshot["completed_calls"] == 1
    assert snapshot["unreported_usage_calls"] == 1
    assert snapshot["unpriced_calls"] == 1
    assert (snapshot["prompt_tokens"], snapshot["completion_tokens"], snapshot["total_tokens"]) == (0, 0, 0)
    assert snapshot["total_cost_usd"] == 0.0
    assert snapshot["by_model"][MODEL]["cost_usd"] is None

    rlm.run("Hello there!")
    snapshot = metrics.get_metrics()

    assert (snapshot["completed_calls"], snapshot["unreported_usage_calls"], snapshot["unpriced_calls"]) == (2, 1, 1)
    assert snapshot["total_tokens"] > 0 and snapshot["total_cost_usd"] > 0.0
    assert snapshot["by_model"][MODEL]["cost_usd"] is None


@pytest.mark.parametrize("response", [
    SimpleNamespace(content="a", model="m"),
    SimpleNamespace(content="a", model="m", usage=None),
    LLMResponse("a", "m", None),
], ids=["no-attribute", "usage-none", "llmresponse-none"])
def test_a_user_response_without_usage_counts_as_unreported(backend: str, response: Any) -> None:
    metrics = MetricsCallback(prices={"m": (1.0, 1.0)})
    CallbackManager([metrics]).on_llm_end(response, run_id="r", timestamp=TS)
    snapshot = metrics.get_metrics()

    assert (snapshot["unreported_usage_calls"], snapshot["unpriced_calls"]) == (1, 1)
    assert snapshot["by_model"]["m"]["cost_usd"] is None


def test_an_unpriced_model_with_unreported_usage_counts_once_as_unpriced(backend: str) -> None:
    metrics = MetricsCallback(prices={})
    CallbackManager([metrics]).on_llm_end(LLMResponse("a", "m", None), run_id="r", timestamp=TS)
    snapshot = metrics.get_metrics()

    assert (snapshot["unreported_usage_calls"], snapshot["unpriced_calls"]) == (1, 1)


def test_a_reported_zero_usage_is_not_unreported(backend: str) -> None:
    metrics = MetricsCallback(prices={"m": (1.0, 1.0)})
    CallbackManager([metrics]).on_llm_end(LLMResponse("a", "m", Usage()), run_id="r", timestamp=TS)
    snapshot = metrics.get_metrics()

    assert (snapshot["unreported_usage_calls"], snapshot["unpriced_calls"]) == (0, 0)
    assert snapshot["by_model"]["m"]["cost_usd"] == 0.0


@pytest.mark.parametrize("response", [
    SimpleNamespace(content="a", model="m"),
    SimpleNamespace(content="a", model="m", usage=None),
    LLMResponse("a", "m", None),
], ids=["no-attribute", "usage-none", "llmresponse-none"])
def test_jsonl_writes_null_tokens_for_an_unreported_usage(backend: str, tmp_path: Path, response: Any) -> None:
    path = tmp_path / "log.jsonl"
    with FileLogCallback(path) as log:
        CallbackManager([log]).on_llm_end(response, run_id="r", timestamp=TS)

    line = path.read_text(encoding="utf-8")
    assert line.endswith('"prompt_tokens":null,"completion_tokens":null,"total_tokens":null,"cached_tokens":null,'
                         '"reasoning_tokens":null,"ttft_ms":null}\n')
    [record] = jsonl_records(path)
    assert {name: record[name] for name in NULL_TOKENS} == NULL_TOKENS


def test_jsonl_of_a_streamed_run_without_usage(server: LocalServer, backend: str, tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    with FileLogCallback(path) as log:
        rlm = make_rlm(server, log, Responses(stream=True), model=MODEL)
        server.omit_usage_next()
        rlm.run("Hello there!")

    [end] = [record for record in jsonl_records(path) if record["event"] == "llm_end"]
    assert {name: end[name] for name in NULL_TOKENS} == NULL_TOKENS


def test_console_shows_an_unreported_streamed_call_as_unknown(server: LocalServer, backend: str) -> None:
    output = io.StringIO()
    rlm = make_rlm(server, ConsoleCallback(verbose=False, stream=output, color=False), Responses(stream=True), model=MODEL)
    server.omit_usage_next()

    rlm.run("Hello there!")

    [line] = output.getvalue().splitlines()
    assert line.endswith("tokens: unknown  cost: unknown")
    assert "$" not in line
