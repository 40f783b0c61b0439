"""Cached prompt tokens and reasoning tokens: read from the server's usage details, carried by ``Usage``."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import openai
import pytest

from rlm_toolkit._chat_attempt import _usage_of
from rlm_toolkit.callbacks import CallbackManager, FileLogCallback, MetricsCallback
from rlm_toolkit.errors import CallbackConfigError
from rlm_toolkit.pricing import PRICES_PER_MILLION, cost_usd
from rlm_toolkit.rlm import RLM
from rlm_toolkit.server import LocalServer
from rlm_toolkit.types import LLMResponse, Usage

from test_rlm import make_rlm
from test_unreported_usage import Responses

MODEL = "gpt-4o"
TS = 1_700_000_000.25
HEAD = '{"ts":"2023-11-14T22:13:20.250000Z","event":'


# -- Usage --------------------------------------------------------------------------------------


def test_usage_has_cached_and_reasoning_tokens_after_the_first_three_fields() -> None:
    usage = Usage(10, 5, 15, 4, 2)

    assert (usage.cached_tokens, usage.reasoning_tokens) == (4, 2)
    assert Usage(10, 5, 15) == Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15,
                                     cached_tokens=0, reasoning_tokens=0)
    assert Usage.of(3, 4) == Usage(3, 4, 7, 0, 0)


@pytest.mark.parametrize(("prompt_details", "completion_details", "expected"), [
    ({"cached_tokens": 6}, {"reasoning_tokens": 3}, (6, 3)),
    (None, None, (0, 0)),
    ({"cached_tokens": None}, {"reasoning_tokens": None}, (0, 0)),
    ({}, {}, (0, 0)),
], ids=["reported", "no-details", "null-counts", "empty-details"])
def test_the_client_reads_the_usage_details(prompt_details: dict[str, Any] | None,
                                            completion_details: dict[str, Any] | None,
                                            expected: tuple[int, int]) -> None:
    reported = openai.types.CompletionUsage.model_validate({
        "prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
        "prompt_tokens_details": prompt_details, "completion_tokens_details": completion_details,
    })

    assert _usage_of(reported) == Usage(10, 5, 15, *expected)


def test_the_client_reads_details_missing_from_a_usage_object() -> None:
    reported = SimpleNamespace(prompt_tokens=1, completion_tokens=2, total_tokens=3,
                               prompt_tokens_details=None, completion_tokens_details=None)

    assert _usage_of(reported) == Usage(1, 2, 3, 0, 0)


# -- the local server ---------------------------------------------------------------------------


def test_server_reports_usage_details_on_the_next_completions_only(server: LocalServer) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0)
    server.usage_details_next(cached_tokens=7, reasoning_tokens=2, count=2)
    messages: Any = [{"role": "user", "content": "hi"}]

    detailed = [client.chat.completions.create(model=MODEL, messages=messages) for _ in range(2)]
    after = client.chat.completions.create(model=MODEL, messages=messages)

    for completion in detailed:
        assert completion.usage is not None
        assert completion.usage.prompt_tokens_details is not None
        assert completion.usage.completion_tokens_details is not None
        assert completion.usage.prompt_tokens_details.cached_tokens == 7
        assert completion.usage.completion_tokens_details.reasoning_tokens == 2
    assert after.usage is not None
    assert (after.usage.prompt_tokens_details, after.usage.completion_tokens_details) == (None, None)


def test_server_reports_usage_details_in_the_usage_chunk_of_a_stream(server: LocalServer) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0)
    server.usage_details_next(cached_tokens=5, reasoning_tokens=1)
    messages: Any = [{"role": "user", "content": "hi there"}]

    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, stream=True,
                                                 stream_options={"include_usage": True}))
    usages = [chunk.usage for chunk in chunks if chunk.usage is not None]

    assert len(usages) == 1
    assert usages[0].prompt_tokens_details is not None and usages[0].completion_tokens_details is not None
    assert (usages[0].prompt_tokens_details.cached_tokens, usages[0].completion_tokens_details.reasoning_tokens) \
        == (5, 1)


def test_usage_details_skip_answers_without_usage(server: LocalServer) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0)
    server.omit_usage_next()
    server.usage_details_next(cached_tokens=3, reasoning_tokens=4)
    messages: Any = [{"role": "user", "content": "hi"}]

    without = client.chat.completions.create(model=MODEL, messages=messages)
    detailed = client.chat.completions.create(model=MODEL, messages=messages)

    assert without.usage is None
    assert detailed.usage is not None and detailed.usage.prompt_tokens_details is not None
    assert detailed.usage.prompt_tokens_details.cached_tokens == 3


@pytest.mark.parametrize(("arguments", "message"), [
    ({"count": 0}, "count must be at least 1"),
    ({"cached_tokens": -1}, "token counts must be >= 0"),
    ({"reasoning_tokens": -1}, "token counts must be >= 0"),
])
def test_usage_details_next_refuses_bad_arguments(server: LocalServer, arguments: dict[str, int],
                                                  message: str) -> None:
    with pytest.raises(ValueError, match=message):
        server.usage_details_next(**arguments)


def test_reset_forgets_pending_usage_details(server: LocalServer) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0)
    server.usage_details_next(cached_tokens=3)
    server.reset()

    completion = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])

    assert completion.usage is not None and completion.usage.prompt_tokens_details is None


# -- the RLM ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["completion", "stream"])
def test_a_hook_receives_the_usage_details(server: LocalServer, backend: str, stream: bool) -> None:
    responses = Responses(stream=stream)
    rlm = make_rlm(server, responses, model=MODEL)
    server.usage_details_next(cached_tokens=8, reasoning_tokens=3)

    result = rlm.run("Hello there!")

    assert server.requests[0].get("stream", False) is stream
    assert len(responses.responses) == 1
    usage = responses.responses[0].usage
    assert (usage.cached_tokens, usage.reasoning_tokens) == (8, 3)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens > 0
    assert result.usage == usage


def test_the_run_usage_sums_the_details_of_its_calls(server: LocalServer) -> None:
    server.queue_reply(tool_calls=[{"name": "echo", "arguments": {"text": "x"}}])
    server.queue_reply("done")
    server.usage_details_next(cached_tokens=4, reasoning_tokens=1)
    server.usage_details_next(cached_tokens=6, reasoning_tokens=2)

    def echo(text: str) -> str:
        """Echo the text."""
        return text

    rlm = RLM.from_openai(MODEL, [], base_url=server.base_url, api_key=server.api_key, tools=[echo])
    result = rlm.run("use the tool")

    assert len(server.requests) == 2
    assert result.usage is not None
    assert (result.usage.cached_tokens, result.usage.reasoning_tokens) == (10, 3)


# -- llm_end records ----------------------------------------------------------------------------


def test_llm_end_record_carries_the_cached_and_reasoning_tokens(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    with FileLogCallback(path) as log:
        CallbackManager([log]).on_llm_end(LLMResponse("a", "m", Usage(10, 5, 15, 4, 2)), run_id="r", timestamp=TS)

    assert path.read_text(encoding="utf-8") == (
        HEAD + '"llm_end","run_id":"r","parent_run_id":null,"model":"m","response":"a","prompt_tokens":10,'
        '"completion_tokens":5,"total_tokens":15,"cached_tokens":4,"reasoning_tokens":2,"ttft_ms":null}\n')


@pytest.mark.parametrize(("cached", "reasoning"), [(True, -1), (2**64, "3"), (2**64 - 1, 0)],
                         ids=["bool-and-negative", "too-big-and-str", "largest"])
def test_llm_end_record_counts_what_is_not_a_token_count_as_zero(backend: str, tmp_path: Path, cached: Any,
                                                                 reasoning: Any) -> None:
    path = tmp_path / "log.jsonl"
    usage = SimpleNamespace(prompt_tokens=1, completion_tokens=1, total_tokens=2, cached_tokens=cached,
                            reasoning_tokens=reasoning)
    with FileLogCallback(path) as log:
        CallbackManager([log]).on_llm_end(SimpleNamespace(content="a", model="m", usage=usage), timestamp=TS)

    [record] = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    expected_cached = cached if cached == 2**64 - 1 else 0
    assert (record["cached_tokens"], record["reasoning_tokens"]) == (expected_cached, 0)


def test_llm_end_record_of_a_usage_without_the_new_fields_has_zeros(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    usage = SimpleNamespace(prompt_tokens=1, completion_tokens=2, total_tokens=3)
    with FileLogCallback(path) as log:
        CallbackManager([log]).on_llm_end(SimpleNamespace(content="a", model="m", usage=usage), timestamp=TS)

    [record] = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert (record["total_tokens"], record["cached_tokens"], record["reasoning_tokens"]) == (3, 0, 0)


@pytest.mark.parametrize("stream", [False, True], ids=["completion", "stream"])
def test_jsonl_of_a_run_carries_the_reported_details(server: LocalServer, backend: str, tmp_path: Path,
                                                     stream: bool) -> None:
    path = tmp_path / "log.jsonl"
    server.usage_details_next(cached_tokens=9, reasoning_tokens=4)
    with FileLogCallback(path) as log:
        make_rlm(server, log, Responses(stream=stream), model=MODEL).run("Hello there!")

    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    [end] = [record for record in records if record["event"] == "llm_end"]
    assert (end["cached_tokens"], end["reasoning_tokens"]) == (9, 4)
    assert list(end)[-6:] == ["total_tokens", "cached_tokens", "reasoning_tokens", "ttft_ms", "tags", "metadata"]
    assert (end["ttft_ms"] is None) is not stream


# -- metrics ------------------------------------------------------------------------------------


def test_metrics_sum_the_details_overall_and_per_model(backend: str) -> None:
    metrics = MetricsCallback()
    manager = CallbackManager([metrics])
    manager.on_llm_end(LLMResponse("a", "gpt-4o", Usage(100, 20, 120, 40, 5)), run_id="1", timestamp=TS)
    manager.on_llm_end(LLMResponse("b", "gpt-4o", Usage(50, 10, 60, 10, 0)), run_id="2", timestamp=TS)
    manager.on_llm_end(LLMResponse("c", "gpt-4o-mini", Usage(30, 30, 60, 0, 25)), run_id="3", timestamp=TS)
    manager.on_llm_end(LLMResponse("d", "gpt-4o-mini", None), run_id="4", timestamp=TS)

    snapshot = metrics.get_metrics()

    assert (snapshot["cached_tokens"], snapshot["reasoning_tokens"]) == (50, 30)
    assert {model: (stats["cached_tokens"], stats["reasoning_tokens"])
            for model, stats in snapshot["by_model"].items()} == {"gpt-4o": (50, 5), "gpt-4o-mini": (0, 25)}
    keys = list(snapshot)
    assert keys[keys.index("completion_tokens") + 1:keys.index("completion_tokens") + 3] == \
        ["cached_tokens", "reasoning_tokens"]
    model_keys = list(snapshot["by_model"]["gpt-4o"])
    assert model_keys[model_keys.index("total_tokens") + 1:model_keys.index("total_tokens") + 3] == \
        ["cached_tokens", "reasoning_tokens"]


def test_metrics_details_saturate_and_reset(backend: str) -> None:
    metrics = MetricsCallback()
    manager = CallbackManager([metrics])
    for run_id in ("1", "2"):
        manager.on_llm_end(LLMResponse("a", "m", Usage(1, 1, 2, 2**64 - 1, 2**63)), run_id=run_id, timestamp=TS)

    snapshot = metrics.get_metrics()
    assert (snapshot["cached_tokens"], snapshot["reasoning_tokens"]) == (2**64 - 1, 2**64 - 1)
    assert (snapshot["by_model"]["m"]["cached_tokens"], snapshot["by_model"]["m"]["reasoning_tokens"]) \
        == (2**64 - 1, 2**64 - 1)

    metrics.reset()
    assert (metrics.get_metrics()["cached_tokens"], metrics.get_metrics()["reasoning_tokens"]) == (0, 0)


def test_metrics_of_a_run_count_the_reported_details(server: LocalServer, backend: str) -> None:
    metrics = MetricsCallback()
    rlm = make_rlm(server, metrics, model=MODEL)
    server.usage_details_next(cached_tokens=12, reasoning_tokens=7)

    rlm.run("Hello there!")
    rlm.run("Hello there!")
    snapshot = metrics.get_metrics()

    assert snapshot["completed_calls"] == 2
    assert (snapshot["cached_tokens"], snapshot["reasoning_tokens"]) == (12, 7)
    assert (snapshot["by_model"][MODEL]["cached_tokens"], snapshot["by_model"][MODEL]["reasoning_tokens"]) == (12, 7)


# -- cost with a cached prompt price ------------------------------------------------------------


def cost_of(usage: Usage, prices: Any = None, model: str = "m") -> tuple[float, float | None]:
    metrics = MetricsCallback(prices=prices)
    CallbackManager([metrics]).on_llm_end(LLMResponse("a", model, usage), run_id="r", timestamp=TS)
    snapshot = metrics.get_metrics()
    return snapshot["total_cost_usd"], snapshot["by_model"][model]["cost_usd"]


def test_cached_prompt_tokens_are_billed_at_the_cached_price(backend: str) -> None:
    expected = 600 * 2.0 / 1e6 + 400 * 0.5 / 1e6 + 100 * 8.0 / 1e6
    assert cost_of(Usage(1000, 100, 1100, 400, 0), {"m": (2.0, 8.0, 0.5)}) == (expected, expected)


def test_without_a_cached_price_every_prompt_token_is_billed_at_the_prompt_price(backend: str) -> None:
    expected = 1000 * 2.0 / 1e6 + 100 * 8.0 / 1e6
    assert cost_of(Usage(1000, 100, 1100, 400, 0), {"m": (2.0, 8.0)}) == (expected, expected)


def test_cached_tokens_beyond_the_prompt_are_billed_as_the_whole_prompt(backend: str) -> None:
    expected = 10 * 0.5 / 1e6 + 1 * 8.0 / 1e6
    assert cost_of(Usage(10, 1, 11, 50, 0), {"m": (2.0, 8.0, 0.5)}) == (expected, expected)


def test_the_default_table_prices_cached_tokens_of_a_dated_model(backend: str) -> None:
    price = PRICES_PER_MILLION["gpt-4o"]
    assert len(price) == 3
    prompt_price, completion_price, cached_price = price
    expected = 700 * prompt_price / 1e6 + 300 * cached_price / 1e6 + 50 * completion_price / 1e6

    assert cost_of(Usage(1000, 50, 1050, 300, 0), model="gpt-4o-2024-08-06") == (expected, expected)
    assert cost_usd("gpt-4o-2024-08-06", 1000, 50, cached_tokens=300) == expected
    assert cached_price < prompt_price


@pytest.mark.parametrize(("model", "key"), [
    ("gpt-5-mini-2025-08-07", "gpt-5-mini"), ("gpt-5", "gpt-5"), ("gpt-5.4-nano-2026-03-17", "gpt-5.4-nano"),
    ("gpt-5.4", "gpt-5.4"), ("gpt-5.5-2026-04-23", "gpt-5.5"),
])
def test_the_gpt5_family_is_priced_by_its_own_entry(model: str, key: str) -> None:
    prompt_price, completion_price, cached_price = PRICES_PER_MILLION[key]
    expected = 600 * prompt_price / 1e6 + 400 * cached_price / 1e6 + 100 * completion_price / 1e6
    assert cost_usd(model, 1000, 100, cached_tokens=400) == expected
    assert cached_price < prompt_price < completion_price


@pytest.mark.parametrize("price", [(1.0,), (1.0, 2.0, 3.0, 4.0)], ids=["one", "four"])
def test_a_price_of_another_shape_is_refused(backend: str, price: Any) -> None:
    with pytest.raises(CallbackConfigError, match="must be \\(prompt, completion\\) or"):
        MetricsCallback(prices={"m": price})


def test_the_console_bills_cached_prompt_tokens_as_the_metrics_do(backend: str) -> None:
    import io

    from rlm_toolkit.callbacks import CallbackManager, ConsoleCallback, MetricsCallback
    from rlm_toolkit.types import LLMResponse, Usage

    stream = io.StringIO()
    metrics = MetricsCallback(backend=backend)
    manager = CallbackManager([metrics, ConsoleCallback(stream=stream)], backend=backend)
    manager.on_llm_start("hi", run_id="r", model="gpt-4o")
    manager.on_llm_end(LLMResponse("hi", "gpt-4o", Usage(1000, 0, 1000, 1000, 0)), run_id="r", model="gpt-4o")
    cost = metrics.get_metrics()["total_cost_usd"]
    assert cost == 0.00125
    assert f"cost: ${cost:.6f}" in stream.getvalue()
