"""The pure-Python metrics oracle against hand-computed expectations."""

from __future__ import annotations

import math

import pytest

from rlm_toolkit._reference.metrics import (
    MAX_LATENCY_MICROS,
    ReferenceMetrics,
    bucket_index,
    bucket_range,
    latency_micros,
)
from rlm_toolkit.pricing import price_for

PRICES = {"gpt-4o": (2.5, 10.0), "gpt-4o-mini": (0.15, 0.6), "claude": (3.0, 15.0)}

SNAPSHOT_KEYS = [
    "total_calls",
    "completed_calls",
    "total_tokens",
    "prompt_tokens",
    "completion_tokens",
    "avg_latency_ms",
    "min_latency_ms",
    "max_latency_ms",
    "p50_latency_ms",
    "p95_latency_ms",
    "p99_latency_ms",
    "errors",
    "retries",
    "tool_calls",
    "tool_results",
    "tokens_streamed",
    "memory_stores",
    "memory_recalls",
    "total_cost_usd",
    "unpriced_calls",
    "open_runs",
    "evicted_runs",
    "dropped_events",
    "lost_events",
    "rejected_events",
    "handler_errors",
    "by_model",
]

MODEL_KEYS = [
    "calls",
    "completed_calls",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_usd",
    "avg_latency_ms",
]


def metrics_with_latencies_us(latencies_us: list[int]) -> ReferenceMetrics:
    """One completed run per latency, given in whole microseconds."""
    metrics = ReferenceMetrics(PRICES, max_open_runs=10)
    for micros in latencies_us:
        metrics.llm_start("r", None, 0.0)
        metrics.llm_end("r", None, None, micros / 1e6)
    return metrics


@pytest.mark.parametrize(
    ("micros", "index"),
    [
        (0, 0),
        (2047, 2047),
        (2048, 2048),
        (2049, 2048),
        (4094, 3071),
        (4095, 3071),
        (4096, 3072),
        (4099, 3072),
        (4100, 3073),
        (MAX_LATENCY_MICROS, 2048 + 28 * 1024 + 1023),
    ],
)
def test_bucket_index(micros: int, index: int) -> None:
    assert bucket_index(micros) == index


@pytest.mark.parametrize(
    ("index", "low_and_width"),
    [
        (0, (0, 1)),
        (2047, (2047, 1)),
        (2048, (2048, 2)),
        (3071, (4094, 2)),
        (3072, (4096, 4)),
        (31743, (2047 << 29, 1 << 29)),
    ],
)
def test_bucket_range(index: int, low_and_width: tuple[int, int]) -> None:
    assert bucket_range(index) == low_and_width


def test_every_value_falls_inside_its_bucket() -> None:
    samples = list(range(20_000))
    for bits in range(11, 41):
        power = 1 << bits
        samples += [power - 1, power, power + 1, power + power // 3]
    for micros in (v for v in samples if v <= MAX_LATENCY_MICROS):
        low, width = bucket_range(bucket_index(micros))
        assert low <= micros < low + width


@pytest.mark.parametrize(
    ("latency_ms", "micros"),
    [
        (0.0, 0),
        (0.0004, 0),
        (0.0005, 1),
        (0.0015, 2),
        (2.5, 2500),
        (1e12, MAX_LATENCY_MICROS),
        (math.inf, MAX_LATENCY_MICROS),
    ],
)
def test_latency_micros_rounds_half_up_and_clamps(latency_ms: float, micros: int) -> None:
    assert latency_micros(latency_ms) == micros


def test_percentiles_of_exact_values() -> None:
    snapshot = metrics_with_latencies_us(list(range(1, 101))).snapshot()
    assert snapshot["p50_latency_ms"] == 0.05
    assert snapshot["p95_latency_ms"] == 0.095
    assert snapshot["p99_latency_ms"] == 0.099
    assert snapshot["min_latency_ms"] == 0.001
    assert snapshot["max_latency_ms"] == 0.1


def test_percentile_rank_is_ceiling_and_at_least_one() -> None:
    one = metrics_with_latencies_us([700]).snapshot()
    assert (one["p50_latency_ms"], one["p95_latency_ms"], one["p99_latency_ms"]) == (0.7, 0.7, 0.7)
    # Ranks for three samples: ceil(1.5) = 2, ceil(2.85) = 3, ceil(2.97) = 3.
    three = metrics_with_latencies_us([300, 100, 200]).snapshot()
    assert (three["p50_latency_ms"], three["p95_latency_ms"], three["p99_latency_ms"]) == (0.2, 0.3, 0.3)


def test_percentiles_report_bucket_middles() -> None:
    # 4096..4099 share a bucket reported as 4097; 1_000_000 µs: e = 9, low 999_936, width 512.
    snapshot = metrics_with_latencies_us([4099, 1_000_000]).snapshot()
    assert snapshot["p50_latency_ms"] == 4.097
    assert snapshot["p99_latency_ms"] == 1000.191
    assert snapshot["max_latency_ms"] == 1000.0


def test_huge_latency_is_clamped_to_the_last_bucket() -> None:
    metrics = ReferenceMetrics(PRICES)
    metrics.llm_start("a", None, 0.0)
    metrics.llm_end("a", None, None, 1e9)
    assert metrics.snapshot()["p50_latency_ms"] == ((2047 << 29) + (1 << 28) - 1) / 1000.0


def test_empty_snapshot() -> None:
    snapshot = ReferenceMetrics(PRICES).snapshot()
    assert list(snapshot) == SNAPSHOT_KEYS
    assert snapshot == {key: 0 for key in SNAPSHOT_KEYS} | {"by_model": {}}
    for key in ("avg_latency_ms", "min_latency_ms", "max_latency_ms", "p50_latency_ms", "total_cost_usd"):
        assert type(snapshot[key]) is float


@pytest.mark.parametrize(
    ("model", "price"),
    [
        ("gpt-4o", (2.5, 10.0)),
        ("gpt-4o-2024-08-06", (2.5, 10.0)),
        ("gpt-4o-mini", (0.15, 0.6)),
        ("gpt-4o-mini-2024-07-18", (0.15, 0.6)),
        ("gpt-4", None),
        ("gpt-4omni", None),
        ("claudette", None),
        ("unknown", None),
        ("", None),
    ],
)
def test_price_lookup(model: str, price: tuple[float, float] | None) -> None:
    assert price_for(model, PRICES) == price


def test_completed_call() -> None:
    metrics = ReferenceMetrics(PRICES)
    metrics.llm_start("a", "gpt-4o-2024-08-06", 100.0)
    metrics.llm_end("a", None, (1000, 500, 0), 100.25)
    snapshot = metrics.snapshot()
    assert list(snapshot) == SNAPSHOT_KEYS
    expected_cost = 1000 * 2.5 / 1e6 + 500 * 10.0 / 1e6
    assert snapshot["total_calls"] == snapshot["completed_calls"] == 1
    assert (snapshot["prompt_tokens"], snapshot["completion_tokens"], snapshot["total_tokens"]) == (1000, 500, 1500)
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
            "cost_usd": expected_cost,
            "avg_latency_ms": 250.0,
        }
    }
    assert list(snapshot["by_model"]["gpt-4o-2024-08-06"]) == MODEL_KEYS


def test_usage_total_wins_when_positive() -> None:
    metrics = ReferenceMetrics(PRICES)
    metrics.llm_end("a", "claude", (10, 5, 20), 0.0)
    assert metrics.snapshot()["total_tokens"] == 20


def test_end_model_arg_beats_start_model() -> None:
    metrics = ReferenceMetrics(PRICES)
    metrics.llm_start("a", "gpt-4o", 0.0)
    metrics.llm_end("a", "gpt-4o-mini", (1, 1, 0), 1.0)
    by_model = metrics.snapshot()["by_model"]
    assert list(by_model) == ["gpt-4o", "gpt-4o-mini"]
    assert by_model["gpt-4o"]["completed_calls"] == 0
    assert by_model["gpt-4o-mini"]["completed_calls"] == 1
    assert by_model["gpt-4o-mini"]["avg_latency_ms"] == 1000.0


def test_unpriced_and_unknown_models() -> None:
    metrics = ReferenceMetrics(PRICES)
    metrics.llm_start("a", None, 0.0)
    metrics.llm_start("b", "", 0.0)
    metrics.llm_end("a", None, (100, 100, 0), 1.0)
    metrics.llm_start("c", "mystery", 0.0)
    metrics.llm_end("c", None, None, 1.0)
    snapshot = metrics.snapshot()
    assert list(snapshot["by_model"]) == ["unknown", "mystery"]
    assert snapshot["by_model"]["unknown"]["calls"] == 2
    assert snapshot["by_model"]["unknown"]["cost_usd"] is None
    assert snapshot["by_model"]["mystery"]["cost_usd"] is None
    assert snapshot["unpriced_calls"] == 2
    assert snapshot["total_cost_usd"] == 0.0


def test_started_but_unfinished_model_costs_zero() -> None:
    metrics = ReferenceMetrics(PRICES)
    metrics.llm_start("a", "mystery", 0.0)
    assert metrics.snapshot()["by_model"]["mystery"]["cost_usd"] == 0.0


def test_end_without_start_counts_but_records_no_latency() -> None:
    metrics = ReferenceMetrics(PRICES)
    metrics.llm_end("never-started", "claude", (2, 3, 0), 5.0)
    snapshot = metrics.snapshot()
    assert snapshot["completed_calls"] == 1
    assert snapshot["total_tokens"] == 5
    assert snapshot["avg_latency_ms"] == snapshot["p50_latency_ms"] == 0.0
    assert snapshot["by_model"]["claude"]["calls"] == 0


def test_negative_nan_and_negative_zero_latency_become_positive_zero() -> None:
    metrics = ReferenceMetrics(PRICES)
    metrics.llm_start("a", None, 10.0)
    metrics.llm_end("a", None, None, 9.0)
    metrics.llm_start("b", None, math.nan)
    metrics.llm_end("b", None, None, 1.0)
    metrics.llm_start("c", None, 0.0)
    metrics.llm_end("c", None, None, -0.0)
    snapshot = metrics.snapshot()
    for key in ("avg_latency_ms", "min_latency_ms", "max_latency_ms"):
        assert math.copysign(1.0, snapshot[key]) == 1.0 and snapshot[key] == 0.0


def test_error_closes_run_without_latency() -> None:
    metrics = ReferenceMetrics(PRICES)
    metrics.llm_start("a", "claude", 0.0)
    metrics.llm_error("a", None, 3.0)
    metrics.llm_error("not-open", None, 3.0)
    metrics.llm_error("not-open", "gpt-4o", 3.0)
    snapshot = metrics.snapshot()
    assert snapshot["errors"] == 3
    assert snapshot["open_runs"] == 0
    assert snapshot["completed_calls"] == 0
    assert snapshot["avg_latency_ms"] == 0.0
    assert list(snapshot["by_model"]) == ["claude", "gpt-4o"]
    assert snapshot["by_model"]["claude"]["errors"] == 1
    assert snapshot["by_model"]["gpt-4o"]["errors"] == 1
    metrics.llm_end("a", None, None, 4.0)
    assert metrics.snapshot()["avg_latency_ms"] == 0.0


def test_oldest_run_is_evicted_at_the_cap() -> None:
    metrics = ReferenceMetrics(PRICES, max_open_runs=2)
    for run_id in "abc":
        metrics.llm_start(run_id, None, 0.0)
    snapshot = metrics.snapshot()
    assert (snapshot["open_runs"], snapshot["evicted_runs"]) == (2, 1)
    for run_id in "abc":
        metrics.llm_end(run_id, None, None, 1.0)
    snapshot = metrics.snapshot()
    assert snapshot["completed_calls"] == 3
    assert snapshot["avg_latency_ms"] == snapshot["max_latency_ms"] == 1000.0


def test_duplicate_start_replaces_and_becomes_newest() -> None:
    metrics = ReferenceMetrics(PRICES, max_open_runs=2)
    metrics.llm_start("a", "claude", 0.0)
    metrics.llm_start("b", None, 0.0)
    metrics.llm_start("a", "gpt-4o", 5.0)
    assert metrics.snapshot()["open_runs"] == 2
    metrics.llm_start("c", None, 0.0)  # evicts b: a moved to newest
    metrics.llm_end("b", None, None, 9.0)
    metrics.llm_end("a", None, None, 6.0)
    snapshot = metrics.snapshot()
    assert snapshot["total_calls"] == 4
    assert (snapshot["open_runs"], snapshot["evicted_runs"]) == (1, 1)
    assert snapshot["max_latency_ms"] == 1000.0
    assert snapshot["by_model"]["gpt-4o"]["completed_calls"] == 1
    assert snapshot["by_model"]["claude"]["completed_calls"] == 0


def test_zero_cap_evicts_every_run() -> None:
    metrics = ReferenceMetrics(PRICES, max_open_runs=0)
    metrics.llm_start("a", None, 0.0)
    metrics.llm_end("a", None, None, 1.0)
    snapshot = metrics.snapshot()
    assert (snapshot["open_runs"], snapshot["evicted_runs"]) == (0, 1)
    assert snapshot["avg_latency_ms"] == 0.0


def test_empty_run_id_is_a_key() -> None:
    metrics = ReferenceMetrics(PRICES)
    metrics.llm_start("", None, 1.0)
    metrics.llm_end("", None, None, 1.5)
    assert metrics.snapshot()["avg_latency_ms"] == 500.0


def test_counters() -> None:
    metrics = ReferenceMetrics(PRICES)
    metrics.retry()
    metrics.token()
    metrics.token()
    metrics.tool_start()
    metrics.tool_end()
    metrics.memory_store()
    metrics.memory_recall()
    metrics.memory_recall()
    metrics.dropped(5)
    metrics.dropped(2**64 - 1)
    metrics.handler_error()
    snapshot = metrics.snapshot()
    assert snapshot["retries"] == 1
    assert snapshot["tokens_streamed"] == 2
    assert (snapshot["tool_calls"], snapshot["tool_results"]) == (1, 1)
    assert (snapshot["memory_stores"], snapshot["memory_recalls"]) == (1, 2)
    assert snapshot["dropped_events"] == 2**64 - 1
    assert snapshot["handler_errors"] == 1


def test_token_sums_saturate() -> None:
    metrics = ReferenceMetrics(PRICES)
    metrics.llm_end("a", None, (2**64 - 1, 1, 0), 0.0)
    snapshot = metrics.snapshot()
    assert snapshot["total_tokens"] == 2**64 - 1
    assert snapshot["completion_tokens"] == 1


def test_reset_restores_fresh_state_and_keeps_config() -> None:
    metrics = ReferenceMetrics(PRICES, max_open_runs=1)
    metrics.llm_start("a", "gpt-4o", 0.0)
    metrics.llm_start("b", "gpt-4o", 0.0)
    metrics.llm_end("b", None, (1, 1, 0), 1.0)
    metrics.retry()
    metrics.reset()
    assert metrics.snapshot() == ReferenceMetrics(PRICES, max_open_runs=1).snapshot()
    metrics.llm_start("c", None, 0.0)
    metrics.llm_start("d", None, 0.0)
    metrics.llm_end("e", "gpt-4o-mini", (1_000_000, 0, 0), 0.0)
    snapshot = metrics.snapshot()
    assert snapshot["evicted_runs"] == 1
    assert snapshot["total_cost_usd"] == 0.15
