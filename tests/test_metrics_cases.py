"""What each event does to ``MetricsCallback.get_metrics()`` (docs/metrics.md), case by case, on both backends.

Events go through a ``CallbackManager``; what a manager cannot reach (a zero open-run cap, a repeated price
row, the writers' dropped and lost counts) goes to the backend's metrics sink, ``MetricsCallback.core``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types
import typing
from typing import Any

import pytest

from rlm_toolkit import LLMResponse, Usage, _backend
from rlm_toolkit.callbacks import BaseCallback, CallbackManager, MetricsCallback, MetricsReport
from rlm_toolkit.errors import InvalidEventError

PRICES = {"gpt-4o": (2.5, 10.0), "gpt-4o-mini": (0.15, 0.6), "claude": (3.0, 15.0)}
U64_MAX = 2**64 - 1
MAX_LATENCY_MICROS = 2**40 - 1
LAST_BUCKET_MIDDLE_US = (2047 << 29) + (1 << 28) - 1
"""The bucket of ``MAX_LATENCY_MICROS`` covers ``[2047 << 29, 2048 << 29)``."""

NO_USAGE = None


class Calls:
    """A ``MetricsCallback`` in a ``CallbackManager``, fed LLM events with explicit timestamps (seconds)."""

    def __init__(self, max_open_runs: int = 10, prices: dict[str, tuple[float, float]] = PRICES) -> None:
        self.metrics = MetricsCallback(prices=prices, max_open_runs=max_open_runs)
        self.manager = CallbackManager([self.metrics])

    def start(self, run_id: Any, model: str | None, ts: float) -> None:
        self.manager.on_llm_start("prompt", run_id=run_id, model=model, timestamp=ts)

    def end(self, run_id: Any, model: str | None, usage: Usage | None, ts: float,
            response_model: str | None = None) -> None:
        response = LLMResponse("answer", response_model, usage)  # type: ignore[arg-type]
        self.manager.on_llm_end(response, run_id=run_id, model=model, timestamp=ts)

    def error(self, run_id: Any, model: str | None, ts: float) -> None:
        self.manager.on_error(RuntimeError("failed"), run_id=run_id, model=model, timestamp=ts)

    def snapshot(self) -> MetricsReport:
        return self.metrics.get_metrics()


def with_latencies_us(latencies_us: list[int]) -> MetricsReport:
    """The snapshot after one completed run per latency, given in whole microseconds."""
    calls = Calls()
    for micros in latencies_us:
        calls.start("r", None, 0.0)
        calls.end("r", None, NO_USAGE, micros / 1e6)
    return calls.snapshot()


def tokens(prompt_tokens: int, completion_tokens: int, total_tokens: int = 0) -> Usage:
    return Usage(prompt_tokens, completion_tokens, total_tokens)


def sink(backend: str, prices: list[tuple[str, float, float]], max_open_runs: int) -> Any:
    """The backend's metrics sink on its own, as ``MetricsCallback`` creates it."""
    return _backend.load(backend).MetricsSink(prices, max_open_runs)


# -- latency and percentiles ---------------------------------------------------------------------------

def test_percentiles_of_exact_values(backend: str) -> None:
    snapshot = with_latencies_us(list(range(1, 101)))
    assert snapshot["p50_latency_ms"] == 0.05
    assert snapshot["p95_latency_ms"] == 0.095
    assert snapshot["p99_latency_ms"] == 0.099
    assert snapshot["min_latency_ms"] == 0.001
    assert snapshot["max_latency_ms"] == 0.1
    assert snapshot["avg_latency_ms"] == sum(range(1, 101)) / 100 / 1000  # the mean of whole microseconds


def test_percentile_rank_is_ceiling_and_at_least_one(backend: str) -> None:
    one = with_latencies_us([700])
    assert (one["p50_latency_ms"], one["p95_latency_ms"], one["p99_latency_ms"]) == (0.7, 0.7, 0.7)
    # Ranks for three samples: ceil(1.5) = 2, ceil(2.85) = 3, ceil(2.97) = 3.
    three = with_latencies_us([300, 100, 200])
    assert (three["p50_latency_ms"], three["p95_latency_ms"], three["p99_latency_ms"]) == (0.2, 0.3, 0.3)


def test_percentiles_report_bucket_middles(backend: str) -> None:
    # 4096..4099 share a bucket reported as 4097; 1_000_000 µs: e = 9, low 999_936, width 512.
    snapshot = with_latencies_us([4099, 1_000_000])
    assert snapshot["p50_latency_ms"] == 4.097
    assert snapshot["p99_latency_ms"] == 1000.191
    assert snapshot["max_latency_ms"] == 1000.0


@pytest.mark.parametrize(
    ("micros", "reported_micros"),
    [
        (0, 0),
        (2047, 2047),  # the last bucket of its own
        (2048, 2048),  # [2048, 2049]
        (2049, 2048),
        (4094, 4094),  # [4094, 4095]
        (4095, 4094),
        (4096, 4097),  # [4096, 4099]
        (4099, 4097),
        (4100, 4101),  # [4100, 4103]
        (MAX_LATENCY_MICROS, LAST_BUCKET_MIDDLE_US),
        (MAX_LATENCY_MICROS + 1, LAST_BUCKET_MIDDLE_US),  # clamped
    ],
)
def test_one_latency_is_reported_as_the_middle_of_its_bucket(backend: str, micros: int, reported_micros: int) -> None:
    snapshot = with_latencies_us([micros])
    assert snapshot["p50_latency_ms"] == snapshot["p99_latency_ms"] == reported_micros / 1000.0
    assert snapshot["max_latency_ms"] == micros / 1e6 * 1000.0


def test_huge_latency_is_clamped_to_the_last_bucket(backend: str) -> None:
    calls = Calls()
    calls.start("a", None, 0.0)
    calls.end("a", None, NO_USAGE, 1e9)
    snapshot = calls.snapshot()
    assert snapshot["p50_latency_ms"] == LAST_BUCKET_MIDDLE_US / 1000.0
    assert snapshot["max_latency_ms"] == 1e12


def test_percentiles_are_within_a_2048th_of_the_latency(backend: str) -> None:
    samples = list(range(4200))
    for bits in range(13, 41):
        power = 1 << bits
        samples += [power - 1, power, power + 1, power + power // 3]
    calls = Calls()
    for micros in (value for value in samples if value <= MAX_LATENCY_MICROS):
        calls.start("r", None, 0.0)
        calls.end("r", None, NO_USAGE, micros / 1e6)
        reported = round(calls.snapshot()["p50_latency_ms"] * 1000.0)
        if micros < 2048:
            assert reported == micros
        else:
            assert abs(reported - micros) <= micros / 2048, micros
        calls.metrics.reset()


@pytest.mark.parametrize(
    ("end_ts", "reported_micros"),
    [(4e-07, 0), (5e-07, 1), (1.5e-06, 2), (2.5e-06, 3), (0.0025, 2500)],
)
def test_latency_rounds_to_whole_microseconds_half_away_from_zero(backend: str, end_ts: float,
                                                                   reported_micros: int) -> None:
    # end_ts * 1000.0 * 1000.0 is exactly 0.4, 0.5, 1.5, 2.5 and 2500.0 µs.
    calls = Calls()
    calls.start("r", None, 0.0)
    calls.end("r", None, NO_USAGE, end_ts)
    assert calls.snapshot()["p50_latency_ms"] == reported_micros / 1000.0


TTFT_FIGURES = ("avg_ttft_ms", "p50_ttft_ms", "p95_ttft_ms", "p99_ttft_ms")


def test_empty_snapshot_is_all_zero_and_has_no_ttft(backend: str) -> None:
    snapshot: dict[str, Any] = dict(Calls().snapshot())
    zeros = {key: 0 for key in typing.get_type_hints(MetricsReport) if key not in TTFT_FIGURES}
    assert snapshot == zeros | dict.fromkeys(TTFT_FIGURES) | {"by_model": {}}
    for key in ("avg_latency_ms", "min_latency_ms", "max_latency_ms", "p50_latency_ms", "p95_latency_ms",
                "p99_latency_ms", "total_cost_usd"):
        assert type(snapshot[key]) is float, key


# -- prices and cost -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("model", "model_key", "cost"),
    [
        ("gpt-4o", "gpt-4o", 12.5),
        ("gpt-4o-2024-08-06", "gpt-4o-2024-08-06", 12.5),  # a dated snapshot finds its base model
        ("gpt-4o-mini", "gpt-4o-mini", 0.75),  # the longest matching key wins
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini-2024-07-18", 0.75),
        ("gpt-4", "gpt-4", None),
        ("gpt-4omni", "gpt-4omni", None),  # a prefix match needs the dash
        ("claudette", "claudette", None),
        ("unknown", "unknown", None),
        ("", "unknown", None),
    ],
)
def test_price_lookup(backend: str, model: str, model_key: str, cost: float | None) -> None:
    calls = Calls()
    calls.end("r", model, tokens(1_000_000, 1_000_000), 0.0)
    snapshot = calls.snapshot()
    assert list(snapshot["by_model"]) == [model_key]
    assert snapshot["by_model"][model_key]["cost_usd"] == cost
    assert snapshot["total_cost_usd"] == (cost or 0.0)
    assert snapshot["unpriced_calls"] == (1 if cost is None else 0)


def test_last_row_wins_for_a_repeated_model(backend: str) -> None:
    metrics = sink(backend, [("m", 1.0, 1.0), ("m", 2.0, 3.0)], 10)
    metrics.handle("llm_end", (LLMResponse("a", "m", tokens(1_000_000, 1_000_000)),), "r", None, None, 0.0, None)
    assert metrics.snapshot()["total_cost_usd"] == 5.0


# -- completed calls -----------------------------------------------------------------------------------

def test_completed_call_counts_tokens_cost_and_latency(backend: str) -> None:
    calls = Calls()
    calls.start("a", "gpt-4o-2024-08-06", 100.0)
    calls.end("a", None, Usage(1000, 500, 0, 200, 50), 100.25)
    snapshot = calls.snapshot()
    expected_cost = 1000 * 2.5 / 1e6 + 500 * 10.0 / 1e6
    assert snapshot["total_calls"] == snapshot["completed_calls"] == 1
    assert (snapshot["prompt_tokens"], snapshot["completion_tokens"], snapshot["total_tokens"]) == (1000, 500, 1500)
    assert (snapshot["cached_tokens"], snapshot["reasoning_tokens"]) == (200, 50)
    assert snapshot["avg_latency_ms"] == 250.0
    assert snapshot["open_runs"] == 0
    assert snapshot["total_cost_usd"] == expected_cost
    assert snapshot["by_model"] == {
        "gpt-4o-2024-08-06": {
            "calls": 1,
            "completed_calls": 1,
            "errors": 0,
            "prompt_tokens": 1000,
            "completion_tokens": 500,
            "total_tokens": 1500,
            "cached_tokens": 200,
            "reasoning_tokens": 50,
            "cost_usd": expected_cost,
            "avg_latency_ms": 250.0,
        }
    }


def test_usage_total_wins_when_positive(backend: str) -> None:
    calls = Calls()
    calls.end("a", "claude", tokens(10, 5, 20), 0.0)
    snapshot = calls.snapshot()
    assert (snapshot["prompt_tokens"], snapshot["completion_tokens"], snapshot["total_tokens"]) == (10, 5, 20)


def test_end_model_beats_start_model(backend: str) -> None:
    calls = Calls()
    calls.start("a", "gpt-4o", 0.0)
    calls.end("a", "gpt-4o-mini", tokens(1, 1), 1.0)
    # Without the model keyword, the response's own model is the end's model.
    calls.start("b", "gpt-4o", 0.0)
    calls.end("b", None, tokens(1, 1), 2.0, response_model="claude")
    by_model = calls.snapshot()["by_model"]
    assert list(by_model) == ["gpt-4o", "gpt-4o-mini", "claude"]
    assert by_model["gpt-4o"]["calls"] == 2
    assert by_model["gpt-4o"]["completed_calls"] == 0
    assert (by_model["gpt-4o-mini"]["completed_calls"], by_model["gpt-4o-mini"]["avg_latency_ms"]) == (1, 1000.0)
    assert (by_model["claude"]["completed_calls"], by_model["claude"]["avg_latency_ms"]) == (1, 2000.0)


def test_unpriced_and_unknown_models(backend: str) -> None:
    calls = Calls()
    calls.start("a", None, 0.0)
    calls.start("b", "", 0.0)
    calls.end("a", None, tokens(100, 100), 1.0)
    calls.start("c", "mystery", 0.0)
    calls.end("c", None, NO_USAGE, 1.0)
    snapshot = calls.snapshot()
    assert list(snapshot["by_model"]) == ["unknown", "mystery"]
    assert snapshot["by_model"]["unknown"]["calls"] == 2
    assert snapshot["by_model"]["unknown"]["cost_usd"] is None
    assert snapshot["by_model"]["mystery"]["cost_usd"] is None
    assert snapshot["unpriced_calls"] == 2
    assert snapshot["total_cost_usd"] == 0.0


def test_started_but_unfinished_model_costs_zero(backend: str) -> None:
    calls = Calls()
    calls.start("a", "mystery", 0.0)
    assert calls.snapshot()["by_model"]["mystery"]["cost_usd"] == 0.0


def test_end_without_start_counts_but_records_no_latency(backend: str) -> None:
    calls = Calls()
    calls.end("never-started", "claude", tokens(2, 3), 5.0)
    snapshot = calls.snapshot()
    assert (snapshot["total_calls"], snapshot["completed_calls"], snapshot["total_tokens"]) == (0, 1, 5)
    assert snapshot["avg_latency_ms"] == snapshot["p50_latency_ms"] == snapshot["max_latency_ms"] == 0.0
    assert (snapshot["by_model"]["claude"]["calls"], snapshot["by_model"]["claude"]["completed_calls"]) == (0, 1)


@pytest.mark.parametrize(("start_ts", "end_ts"), [(10.0, 9.0), (0.0, -0.0)])
def test_negative_and_negative_zero_latency_become_positive_zero(backend: str, start_ts: float,
                                                                 end_ts: float) -> None:
    calls = Calls()
    calls.start("a", None, start_ts)
    calls.end("a", None, NO_USAGE, end_ts)
    snapshot = calls.snapshot()
    for key in ("avg_latency_ms", "min_latency_ms", "max_latency_ms", "p50_latency_ms"):
        assert repr(snapshot[key]) == "0.0", key
    assert repr(snapshot["by_model"]["unknown"]["avg_latency_ms"]) == "0.0"


def test_error_closes_run_without_latency(backend: str) -> None:
    calls = Calls()
    calls.start("a", "claude", 0.0)
    calls.error("a", None, 3.0)
    calls.error("not-open", None, 3.0)
    calls.error("not-open", "gpt-4o", 3.0)
    snapshot = calls.snapshot()
    assert (snapshot["errors"], snapshot["open_runs"], snapshot["completed_calls"]) == (3, 0, 0)
    assert snapshot["avg_latency_ms"] == 0.0
    assert list(snapshot["by_model"]) == ["claude", "gpt-4o"]
    assert snapshot["by_model"]["claude"]["errors"] == 1
    assert snapshot["by_model"]["gpt-4o"]["errors"] == 1
    # The run is closed: a late end records no latency.
    calls.end("a", None, NO_USAGE, 4.0)
    assert calls.snapshot()["avg_latency_ms"] == 0.0


# -- open runs -----------------------------------------------------------------------------------------

def test_oldest_run_is_evicted_at_the_cap(backend: str) -> None:
    calls = Calls(max_open_runs=2)
    for run_id, started in (("a", 0.0), ("b", 10.0), ("c", 20.0)):
        calls.start(run_id, "gpt-4o", 1_700_000_000.0 + started)
    snapshot = calls.snapshot()
    assert (snapshot["open_runs"], snapshot["evicted_runs"]) == (2, 1)
    for run_id in "abc":
        calls.end(run_id, "gpt-4o", NO_USAGE, 1_700_000_030.0)
    snapshot = calls.snapshot()
    # "a" was evicted: only b (20 s) and c (10 s) have a latency.
    assert (snapshot["min_latency_ms"], snapshot["max_latency_ms"], snapshot["avg_latency_ms"]) == (
        10_000.0, 20_000.0, 15_000.0)
    assert (snapshot["open_runs"], snapshot["evicted_runs"], snapshot["completed_calls"]) == (0, 1, 3)


def test_duplicate_start_replaces_and_becomes_newest(backend: str) -> None:
    calls = Calls(max_open_runs=2)
    calls.start("a", "claude", 0.0)
    calls.start("b", None, 0.0)
    calls.start("a", "gpt-4o", 5.0)
    assert calls.snapshot()["open_runs"] == 2
    calls.start("c", None, 0.0)  # evicts b: a moved to newest
    calls.end("b", None, NO_USAGE, 9.0)
    calls.end("a", None, NO_USAGE, 6.0)
    snapshot = calls.snapshot()
    assert snapshot["total_calls"] == 4
    assert (snapshot["open_runs"], snapshot["evicted_runs"]) == (1, 1)
    assert snapshot["max_latency_ms"] == 1000.0
    assert snapshot["by_model"]["gpt-4o"]["completed_calls"] == 1
    assert snapshot["by_model"]["claude"]["completed_calls"] == 0


def test_zero_cap_evicts_every_run(backend: str) -> None:
    metrics = sink(backend, [], 0)
    metrics.handle("llm_start", ("p",), "a", None, None, 0.0, None)
    metrics.handle("llm_end", (LLMResponse("a"),), "a", None, None, 1.0, None)
    snapshot = metrics.snapshot()
    assert (snapshot["open_runs"], snapshot["evicted_runs"], snapshot["completed_calls"]) == (0, 1, 1)
    assert snapshot["avg_latency_ms"] == 0.0


def test_run_ids_pair_starts_with_ends_by_their_text(backend: str) -> None:
    calls = Calls()
    calls.start("", None, 1.0)
    calls.end("", None, NO_USAGE, 1.5)
    calls.start(None, None, 1.0)  # no run id is the run id ""
    calls.end("", None, NO_USAGE, 2.0)
    calls.start(7, None, 1.0)  # any other run id by its str()
    calls.end("7", None, NO_USAGE, 3.0)
    snapshot = calls.snapshot()
    assert (snapshot["min_latency_ms"], snapshot["max_latency_ms"], snapshot["avg_latency_ms"]) == (
        500.0, 2000.0, 3500.0 / 3)
    assert snapshot["open_runs"] == 0


class UnprintableRunId:
    def __str__(self) -> str:
        raise RuntimeError("no text")


class NeverEqual(str):
    """A str whose own comparisons and length would hide it from any dict."""

    def __eq__(self, other: object) -> bool:
        return False

    def __len__(self) -> int:
        return 0

    __hash__ = str.__hash__


def test_run_ids_and_models_are_keyed_by_their_utf8_text(backend: str) -> None:
    calls = Calls()
    calls.start(UnprintableRunId(), None, 1.0)  # a run id without a str() is the run id ""
    calls.end("", None, NO_USAGE, 2.0)
    calls.start(NeverEqual("x"), NeverEqual("gpt-4o"), 1.0)  # a str subclass by its text
    calls.end(NeverEqual("x"), None, NO_USAGE, 3.0)
    # A lone surrogate is three U+FFFD: these two run ids are one key, the third is another.
    calls.start("a\ud800", None, 1.0)
    calls.end("a\udfff", None, NO_USAGE, 4.0)
    calls.start("b\ufffd", None, 1.0)
    calls.end("b\udc00", None, NO_USAGE, 9.0)
    # A model name with a lone surrogate is no model.
    calls.start("m", "x\ud800", 1.0)
    calls.end("m", None, NO_USAGE, 2.0, response_model="y\udfff")
    calls.error("e", "z\udc00", 2.0)
    snapshot = calls.snapshot()
    assert (snapshot["open_runs"], snapshot["completed_calls"]) == (1, 5)
    assert (snapshot["min_latency_ms"], snapshot["max_latency_ms"], snapshot["avg_latency_ms"]) == (
        1000.0, 3000.0, 7000.0 / 4)
    assert list(snapshot["by_model"]) == ["unknown", "gpt-4o"]
    assert (snapshot["by_model"]["unknown"]["calls"], snapshot["by_model"]["unknown"]["errors"]) == (4, 0)
    assert snapshot["by_model"]["gpt-4o"]["avg_latency_ms"] == 2000.0
    assert snapshot["errors"] == 1


# -- counters ------------------------------------------------------------------------------------------

def test_counters(backend: str) -> None:
    class Broken(BaseCallback):
        def on_tool_end(self, tool_name: str, tool_output: Any, **kwargs: Any) -> None:
            raise ValueError("broken hook")

    metrics = MetricsCallback()
    manager = CallbackManager([Broken(), metrics])
    manager.on_retry(1, 3, TimeoutError("slow"), run_id="r")
    manager.on_llm_new_token("a", run_id="r")
    manager.on_llm_new_token("b", run_id="r")
    manager.on_tool_start("lookup", {"q": 1}, run_id="t")
    manager.on_tool_end("lookup", "found", run_id="t")
    manager.on_memory_store("remember this")
    manager.on_memory_recall("what", [])
    manager.on_memory_recall("what else", [])
    with pytest.raises(InvalidEventError):
        manager.on_llm_new_token("c", timestamp=-1.0)
    metrics.core.dropped(5)
    metrics.core.lost(2)
    metrics.core.lost(3)
    snapshot = metrics.get_metrics()
    assert snapshot["retries"] == 1
    assert snapshot["tokens_streamed"] == 2
    assert (snapshot["tool_calls"], snapshot["tool_results"]) == (1, 1)
    assert (snapshot["memory_stores"], snapshot["memory_recalls"]) == (1, 2)
    assert (snapshot["dropped_events"], snapshot["lost_events"]) == (5, 5)
    assert (snapshot["rejected_events"], snapshot["handler_errors"]) == (1, 1)
    assert (snapshot["total_calls"], snapshot["completed_calls"], snapshot["errors"]) == (0, 0, 0)


def test_run_events_change_no_metric(backend: str) -> None:
    calls = Calls()
    calls.manager.on_run_start("question", run_id="run", model="gpt-4o", timestamp=1.0)
    calls.manager.on_run_end("answer", run_id="run", model="gpt-4o", timestamp=2.0)
    assert calls.snapshot() == Calls().snapshot()


def test_event_counts_and_token_sums_saturate_at_u64_max(backend: str) -> None:
    calls = Calls()
    calls.end("a", None, tokens(U64_MAX, 1), 0.0)
    calls.end("b", None, tokens(1, 0, U64_MAX), 0.0)
    calls.metrics.core.dropped(5)
    calls.metrics.core.dropped(U64_MAX)
    calls.metrics.core.lost(U64_MAX)
    calls.metrics.core.lost(1)
    snapshot = calls.snapshot()
    assert (snapshot["prompt_tokens"], snapshot["completion_tokens"], snapshot["total_tokens"]) == (
        U64_MAX, 1, U64_MAX)
    assert snapshot["by_model"]["unknown"]["total_tokens"] == U64_MAX
    assert (snapshot["dropped_events"], snapshot["lost_events"]) == (U64_MAX, U64_MAX)


def test_reset_restores_fresh_state_and_keeps_config(backend: str) -> None:
    calls = Calls(max_open_runs=1)
    calls.start("a", "gpt-4o", 0.0)
    calls.start("b", "gpt-4o", 0.0)
    calls.end("b", None, tokens(1, 1), 1.0)
    calls.manager.on_retry(1, 3, TimeoutError("slow"))
    calls.metrics.core.dropped(1)
    calls.metrics.reset()
    assert calls.snapshot() == Calls(max_open_runs=1).snapshot()
    calls.start("c", None, 0.0)
    calls.start("d", None, 0.0)
    calls.end("e", "gpt-4o-mini", tokens(1_000_000, 0), 0.0)
    snapshot = calls.snapshot()
    assert snapshot["evicted_runs"] == 1
    assert snapshot["total_cost_usd"] == 0.15


# -- the snapshot type ---------------------------------------------------------------------------------

def assert_has_shape(value: object, hint: Any, where: str) -> None:
    """``value`` has exactly the keys (in order) and value types ``hint`` declares, nested TypedDicts too."""
    if typing.is_typeddict(hint):
        fields = typing.get_type_hints(hint)
        assert hint.__required_keys__ == frozenset(fields), where
        assert isinstance(value, dict) and list(value) == list(fields), where
        for key, field_hint in fields.items():
            assert_has_shape(value[key], field_hint, f"{where}[{key!r}]")
    elif typing.get_origin(hint) is dict:
        key_type, value_hint = typing.get_args(hint)
        assert type(value) is dict, where
        for key, item in value.items():
            assert type(key) is key_type, where
            assert_has_shape(item, value_hint, f"{where}[{key!r}]")
    else:
        allowed = typing.get_args(hint) if typing.get_origin(hint) is types.UnionType else (hint,)
        assert type(value) in allowed, (where, value)


def test_the_snapshot_has_exactly_the_keys_and_types_of_metrics_snapshot(backend: str) -> None:
    assert_has_shape(Calls().snapshot(), MetricsReport, "empty")
    calls = Calls()
    calls.start("a", "gpt-4o", 0.0)
    calls.end("a", None, tokens(3, 4), 0.5)
    calls.start("b", "mystery", 0.0)
    calls.end("b", None, NO_USAGE, 0.5)
    calls.error("c", "claude", 1.0)
    snapshot = calls.snapshot()
    assert [entry["cost_usd"] is None for entry in snapshot["by_model"].values()] == [False, True, False]
    assert_has_shape(snapshot, MetricsReport, "snapshot")


# -- the event table of the reference ------------------------------------------------------------------

UNHANDLED_EVENT_CHILD = """
    import dataclasses
    import rlm_toolkit.callbacks
    from rlm_toolkit import events
    events.EVENTS += (dataclasses.replace(events.EVENTS_BY_NAME["llm_new_token"], name="llm_thought"),)
    try:
        import rlm_toolkit._reference.metrics_sink
    except NotImplementedError as error:
        print(error)
    else:
        print("imported")
"""


def test_a_catalogue_event_the_reference_metrics_do_not_handle_fails_at_import() -> None:
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(UNHANDLED_EVENT_CHILD)],
                           capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    assert "['llm_thought']" in child.stdout and "IGNORED_EVENTS" in child.stdout, child.stdout
