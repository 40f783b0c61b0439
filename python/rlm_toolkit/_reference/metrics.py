"""The pure-Python metrics aggregator: implements docs/metrics.md, as ``rust/metrics.rs`` does.

It is the oracle of the differential tests: for the same event sequence its snapshot is bit-identical to the
Rust core's, so every float is computed with the same operations in the same order. Python ints stand in for
the Rust ``u64`` counters, with the same saturation at ``U64_MAX``.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ..callbacks.metrics_types import MetricsReport, ModelMetricsReport
from ..pricing import ModelPrice, call_cost, price_for

UNKNOWN_MODEL = "unknown"
U64_MAX = 2**64 - 1
MAX_LATENCY_MICROS = 2**40 - 1
SUB_BUCKETS = 2048
HALF_SUB_BUCKETS = 1024
SUB_BUCKET_BITS = 11
PERCENTILES = (50, 95, 99)


def latency_micros(latency_ms: float) -> int:
    """``latency_ms`` (>= 0, not NaN) as whole microseconds, rounded half away from zero and clamped."""
    micros = latency_ms * 1000.0
    if micros >= MAX_LATENCY_MICROS:
        return MAX_LATENCY_MICROS
    return int(math.floor(micros + 0.5))


def bucket_index(micros: int) -> int:
    if micros < SUB_BUCKETS:
        return micros
    shift = micros.bit_length() - SUB_BUCKET_BITS
    return SUB_BUCKETS + (shift - 1) * HALF_SUB_BUCKETS + ((micros >> shift) - HALF_SUB_BUCKETS)


def bucket_range(index: int) -> tuple[int, int]:
    """``(lowest value, width)`` of the bucket at ``index``."""
    if index < SUB_BUCKETS:
        return index, 1
    shift, offset = divmod(index - SUB_BUCKETS, HALF_SUB_BUCKETS)
    shift += 1
    return (offset + HALF_SUB_BUCKETS) << shift, 1 << shift


def _known_model(model: str | None) -> str | None:
    return model or None


def _saturating_add(total: int, amount: int) -> int:
    return min(total + amount, U64_MAX)


@dataclass
class _ModelStats:
    price: ModelPrice | None
    """Resolved once: prices never change for the life of the aggregator."""
    calls: int = 0
    completed_calls: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_known: bool = True
    """False once a completed call had no price or did not report its usage."""
    priced_prompt_tokens: int = 0
    priced_cached_tokens: int = 0
    """Prompt tokens of priced calls served from the cache, each call's at most its prompt tokens."""
    priced_completion_tokens: int = 0
    latency_count: int = 0
    latency_sum_us: int = 0

    def priced_cost(self) -> float:
        """The cost of the priced calls: costs are linear in the tokens, so it is that of their sums."""
        if self.price is None:
            return 0.0
        return call_cost(self.price, self.priced_prompt_tokens, self.priced_completion_tokens,
                         self.priced_cached_tokens)

    def snapshot(self) -> ModelMetricsReport:
        return {
            "calls": self.calls,
            "completed_calls": self.completed_calls,
            "errors": self.errors,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "cached_tokens": self.cached_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cost_usd": self.priced_cost() if self.cost_known else None,
            "avg_latency_ms": _average_ms(self.latency_sum_us, self.latency_count),
        }

    def state(self, model: str) -> dict[str, Any]:
        return {"model": model, "price": _price_state(self.price),
                **{name: getattr(self, name) for name in _MODEL_FIELDS}}

    def merge(self, state: dict[str, Any]) -> None:
        for name in _MODEL_FIELDS:
            if name == "cost_known":
                self.cost_known = self.cost_known and state[name]
            elif name == "latency_sum_us":
                self.latency_sum_us += state[name]
            else:
                setattr(self, name, _saturating_add(getattr(self, name), state[name]))


_MODEL_FIELDS = ("calls", "completed_calls", "errors", "prompt_tokens", "completion_tokens", "total_tokens",
                 "cached_tokens", "reasoning_tokens", "cost_known", "latency_count", "latency_sum_us",
                 "priced_prompt_tokens", "priced_cached_tokens", "priced_completion_tokens")
COUNTER_NAMES = ("total_calls", "completed_calls", "prompt_tokens", "completion_tokens", "total_tokens",
                 "cached_tokens", "reasoning_tokens", "errors", "retries", "tool_calls", "tool_results",
                 "tokens_streamed", "memory_stores", "memory_recalls", "unpriced_calls", "unreported_usage_calls",
                 "open_runs", "evicted_runs", "dropped_events", "lost_events", "rejected_events", "handler_errors")
"""The counters of a state, by the names snapshots use (``rust/metrics.rs``'s ``COUNTER_NAMES``)."""


def _price_state(price: ModelPrice | None) -> dict[str, float | None] | None:
    if price is None:
        return None
    return {"prompt": price[0], "completion": price[1], "cached_prompt": price[2] if len(price) == 3 else None}


def _price_of_state(state: dict[str, Any] | None) -> ModelPrice | None:
    if state is None:
        return None
    if state["cached_prompt"] is None:
        return (state["prompt"], state["completion"])
    return (state["prompt"], state["completion"], state["cached_prompt"])


def _price_conflict(model: str, ours: ModelPrice | None, theirs: ModelPrice | None) -> str:
    """The refusal of a snapshot that priced ``model`` differently, worded as ``rust/metrics.rs`` words it."""
    def text(price: ModelPrice | None) -> str:
        return "no price" if price is None else "(" + ", ".join(repr(float(figure)) for figure in price) + ")"

    return (f'model "{model}" is priced differently ({text(ours)} here, {text(theirs)} in the snapshot): merge '
            f"snapshots made with the same price table")


def _average_ms(sum_us: int, count: int) -> float:
    """The mean of ``count`` latencies summing to ``sum_us`` microseconds, in milliseconds (0 without any)."""
    return float(sum_us) / float(count) / 1000.0 if count else 0.0


class _Durations:
    """Count, exact sum (whole microseconds, as the histogram counts them), extremes and histogram of one
    kind of duration (call latency, time to first token)."""

    def __init__(self) -> None:
        self.count = 0
        self.sum_us = 0
        self.min_ms = 0.0
        self.max_ms = 0.0
        self._histogram: dict[int, int] = {}

    def record(self, duration_ms: float) -> int:
        """Counts ``duration_ms`` and returns it in whole microseconds."""
        if self.count == 0 or duration_ms < self.min_ms:
            self.min_ms = duration_ms
        if self.count == 0 or duration_ms > self.max_ms:
            self.max_ms = duration_ms
        micros = latency_micros(duration_ms)
        self.count += 1
        self.sum_us += micros
        index = bucket_index(micros)
        self._histogram[index] = self._histogram.get(index, 0) + 1
        return micros

    def average_ms(self) -> float:
        return _average_ms(self.sum_us, self.count)

    def percentile_ms(self, percentile: int) -> float:
        return percentile_of_buckets(sorted(self._histogram.items()), self.count, percentile)

    def state(self) -> dict[str, Any]:
        return {"count": self.count, "sum_us": self.sum_us, "min_ms": self.min_ms, "max_ms": self.max_ms,
                "buckets": sorted(self._histogram.items())}

    def merge(self, state: dict[str, Any]) -> None:
        if state["count"] == 0:
            return
        if self.count == 0 or state["min_ms"] < self.min_ms:
            self.min_ms = state["min_ms"]
        if self.count == 0 or state["max_ms"] > self.max_ms:
            self.max_ms = state["max_ms"]
        self.count = _saturating_add(self.count, state["count"])
        self.sum_us += state["sum_us"]
        for index, count in state["buckets"]:
            self._histogram[index] = _saturating_add(self._histogram.get(index, 0), count)


def check_durations(state: dict[str, Any]) -> None:
    """Refuses a duration state whose buckets do not fit the layout or do not add up to its count."""
    last_bucket = bucket_index(MAX_LATENCY_MICROS)
    for index, _count in state["buckets"]:
        if index > last_bucket:
            raise ValueError(f"histogram bucket {index} is past the last bucket of this layout")
    bucket_total = min(sum(count for _index, count in state["buckets"]), U64_MAX)
    if state["count"] and bucket_total != state["count"]:
        raise ValueError(f"a snapshot's histogram holds {bucket_total} latencies but its count is {state['count']}")


def percentile_of_buckets(buckets: list[tuple[int, int]], count: int, percentile: int) -> float:
    """The ``percentile`` of ``count`` durations from their ``(bucket index, count)`` pairs, lowest first:
    the middle of the bucket holding that rank, in milliseconds (0 without any)."""
    if count == 0:
        return 0.0
    rank = max(1, (percentile * count + 99) // 100)
    cumulative = 0
    for index, bucket_count in buckets:
        cumulative += bucket_count
        if cumulative >= rank:
            low, width = bucket_range(index)
            return (low + (width - 1) // 2) / 1000.0
    raise AssertionError("rank exceeds the number of recorded durations")


def total_cost_usd(models: dict[str, _ModelStats]) -> float:
    """The cost of every priced call, summed over the models in name order: the same figure however the
    calls were split between snapshots."""
    total = 0.0
    for key in sorted(key for key, stats in models.items() if stats.price is not None):
        total += models[key].priced_cost()
    return total


class ReferenceMetrics:
    """Aggregates callback events as docs/metrics.md says."""

    def __init__(self, prices: dict[str, ModelPrice], max_open_runs: int = 10_000, *,
                 adopt_snapshot_prices: bool = False) -> None:
        """``adopt_snapshot_prices``: merged states bring the prices of the models this aggregator has not
        seen (for combining snapshots); otherwise they must agree with ``prices``."""
        self._prices = dict(prices)
        self._adopt_snapshot_prices = adopt_snapshot_prices
        self._max_open_runs = max_open_runs
        self._lock = threading.Lock()
        self._clear()

    def _clear(self) -> None:
        # run_id -> (start_ts, model or None), oldest inserted first.
        self._open_runs: OrderedDict[str, tuple[float, str | None]] = OrderedDict()
        self._models: dict[str, _ModelStats] = {}
        self._total_calls = 0
        self._completed_calls = 0
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._total_tokens = 0
        self._cached_tokens = 0
        self._reasoning_tokens = 0
        self._errors = 0
        self._retries = 0
        self._tool_calls = 0
        self._tool_results = 0
        self._tokens_streamed = 0
        self._memory_stores = 0
        self._memory_recalls = 0
        self._unpriced_calls = 0
        self._unreported_usage_calls = 0
        self._evicted_runs = 0
        self._dropped_events = 0
        self._lost_events = 0
        self._rejected_events = 0
        self._handler_errors = 0
        self._merged_open_runs = 0
        self._latency = _Durations()
        self._ttft = _Durations()

    def _model(self, key: str) -> _ModelStats:
        if key not in self._models:
            self._models[key] = _ModelStats(price_for(key, self._prices))
        return self._models[key]

    def llm_start(self, run_id: str, model: str | None, ts: float) -> None:
        with self._lock:
            model = _known_model(model)
            self._count_start(model)
            self._open_runs.pop(run_id, None)
            self._open_runs[run_id] = (ts, model)
            if len(self._open_runs) > self._max_open_runs:
                self._open_runs.popitem(last=False)
                self._evicted_runs += 1

    def llm_start_after(self, model: str | None) -> None:
        """As ``llm_start``, for a call whose run another aggregator keeps open: the call is counted, no run is
        opened."""
        with self._lock:
            self._count_start(_known_model(model))

    def _count_start(self, model: str | None) -> None:
        self._total_calls += 1
        self._model(model or UNKNOWN_MODEL).calls += 1

    def llm_end(
        self, run_id: str, model: str | None, usage: tuple[int, int, int, int, int] | None, ttft_ms: float | None,
        ts: float,
    ) -> float | None:
        """``ttft_ms``: the call's time to first token, if it streamed; a sample when finite (negative counts
        as 0). Returns the call's latency in milliseconds when its start was open."""
        with self._lock:
            run = self._open_runs.pop(run_id, None)
            return self._end_call(run, _known_model(model), usage, ttft_ms, ts)

    def llm_end_after(
        self, start_ts: float | None, model: str, usage: tuple[int, int, int, int, int] | None,
        ttft_ms: float | None, ts: float,
    ) -> float | None:
        """As ``llm_end``, for a call whose start another aggregator paired: ``start_ts`` is its start's time
        (None when no start was open), ``model`` the model key it counts under. No open run is looked up or
        closed."""
        with self._lock:
            return self._end_call(None if start_ts is None else (start_ts, None), model, usage, ttft_ms, ts)

    def open_run(self, run_id: str) -> tuple[float, str | None] | None:
        """The start time and model (None when the start named none) of the open run ``run_id``."""
        with self._lock:
            return self._open_runs.get(run_id)

    def empty_for(self, model: str) -> ReferenceMetrics:
        """A fresh aggregator with the same open-run cap for the calls of the model key ``model``: it prices
        ``model`` as this one does."""
        return ReferenceMetrics(self._prices, self._max_open_runs)

    def _end_call(
        self, run: tuple[float, str | None] | None, model: str | None,
        usage: tuple[int, int, int, int, int] | None, ttft_ms: float | None, ts: float,
    ) -> float | None:
        if ttft_ms is not None and math.isfinite(ttft_ms):
            self._ttft.record(ttft_ms if ttft_ms > 0.0 else 0.0)
        start_model = run[1] if run is not None else None
        key = model or start_model or UNKNOWN_MODEL
        stats = self._model(key)

        latency_ms: float | None = None
        if run is not None:
            elapsed_ms = (ts - run[0]) * 1000.0
            latency_ms = elapsed_ms if elapsed_ms > 0.0 else 0.0
            micros = self._latency.record(latency_ms)
            stats.latency_count += 1
            stats.latency_sum_us += micros

        self._completed_calls += 1
        stats.completed_calls += 1
        if usage is None:
            # Unreported usage: no tokens to add, and the call's cost is unknown like an unpriced model's.
            self._unreported_usage_calls += 1
            self._unpriced_calls += 1
            stats.cost_known = False
            return latency_ms
        prompt_tokens, completion_tokens, reported_total, cached_tokens, reasoning_tokens = usage
        if reported_total > 0:
            total_tokens = reported_total
        else:
            total_tokens = _saturating_add(prompt_tokens, completion_tokens)
        self._prompt_tokens = _saturating_add(self._prompt_tokens, prompt_tokens)
        self._completion_tokens = _saturating_add(self._completion_tokens, completion_tokens)
        self._total_tokens = _saturating_add(self._total_tokens, total_tokens)
        self._cached_tokens = _saturating_add(self._cached_tokens, cached_tokens)
        self._reasoning_tokens = _saturating_add(self._reasoning_tokens, reasoning_tokens)
        stats.prompt_tokens = _saturating_add(stats.prompt_tokens, prompt_tokens)
        stats.completion_tokens = _saturating_add(stats.completion_tokens, completion_tokens)
        stats.total_tokens = _saturating_add(stats.total_tokens, total_tokens)
        stats.cached_tokens = _saturating_add(stats.cached_tokens, cached_tokens)
        stats.reasoning_tokens = _saturating_add(stats.reasoning_tokens, reasoning_tokens)

        if stats.price is None:
            self._unpriced_calls += 1
            stats.cost_known = False
        else:
            stats.priced_prompt_tokens = _saturating_add(stats.priced_prompt_tokens, prompt_tokens)
            stats.priced_cached_tokens = _saturating_add(stats.priced_cached_tokens,
                                                         min(cached_tokens, prompt_tokens))
            stats.priced_completion_tokens = _saturating_add(stats.priced_completion_tokens, completion_tokens)
        return latency_ms

    def llm_error(self, run_id: str, model: str | None, ts: float) -> None:
        """``ts`` is unused: failed calls record no latency."""
        with self._lock:
            self._errors += 1
            run = self._open_runs.pop(run_id, None)
            start_model = run[1] if run is not None else None
            key = _known_model(model) or start_model
            if key is not None:
                self._model(key).errors += 1

    def retry(self) -> None:
        with self._lock:
            self._retries += 1

    def token(self) -> None:
        with self._lock:
            self._tokens_streamed += 1

    def tool_start(self) -> None:
        with self._lock:
            self._tool_calls += 1

    def tool_end(self) -> None:
        with self._lock:
            self._tool_results += 1

    def memory_store(self) -> None:
        with self._lock:
            self._memory_stores += 1

    def memory_recall(self) -> None:
        with self._lock:
            self._memory_recalls += 1

    def dropped(self, n: int) -> None:
        """Counts ``n`` events a writer had to drop."""
        with self._lock:
            self._dropped_events = _saturating_add(self._dropped_events, n)

    def lost(self, n: int) -> None:
        """Counts ``n`` events a writer accepted but could not write (a failed or abandoned write)."""
        with self._lock:
            self._lost_events = _saturating_add(self._lost_events, n)

    def rejected(self) -> None:
        """Counts an event refused at the call for a value no record can hold (a bad timestamp)."""
        with self._lock:
            self._rejected_events += 1

    def handler_error(self) -> None:
        """Counts a callback that raised."""
        with self._lock:
            self._handler_errors += 1

    def snapshot(self) -> MetricsReport:
        with self._lock:
            latency, ttft = self._latency, self._ttft
            p50, p95, p99 = (latency.percentile_ms(percentile) for percentile in PERCENTILES)
            ttft_p50, ttft_p95, ttft_p99 = (ttft.percentile_ms(percentile) if ttft.count else None
                                            for percentile in PERCENTILES)
            return {
                "total_calls": self._total_calls,
                "completed_calls": self._completed_calls,
                "total_tokens": self._total_tokens,
                "prompt_tokens": self._prompt_tokens,
                "completion_tokens": self._completion_tokens,
                "cached_tokens": self._cached_tokens,
                "reasoning_tokens": self._reasoning_tokens,
                "avg_latency_ms": latency.average_ms(),
                "min_latency_ms": latency.min_ms,
                "max_latency_ms": latency.max_ms,
                "p50_latency_ms": p50,
                "p95_latency_ms": p95,
                "p99_latency_ms": p99,
                "avg_ttft_ms": ttft.average_ms() if ttft.count else None,
                "p50_ttft_ms": ttft_p50,
                "p95_ttft_ms": ttft_p95,
                "p99_ttft_ms": ttft_p99,
                "errors": self._errors,
                "retries": self._retries,
                "tool_calls": self._tool_calls,
                "tool_results": self._tool_results,
                "tokens_streamed": self._tokens_streamed,
                "memory_stores": self._memory_stores,
                "memory_recalls": self._memory_recalls,
                "total_cost_usd": total_cost_usd(self._models),
                "unpriced_calls": self._unpriced_calls,
                "unreported_usage_calls": self._unreported_usage_calls,
                "open_runs": _saturating_add(len(self._open_runs), self._merged_open_runs),
                "evicted_runs": self._evicted_runs,
                "dropped_events": self._dropped_events,
                "lost_events": self._lost_events,
                "rejected_events": self._rejected_events,
                "handler_errors": self._handler_errors,
                "by_model": {key: stats.snapshot() for key, stats in self._models.items()},
            }

    def state(self) -> dict[str, Any]:
        """Everything the metrics hold, as a snapshot keeps it (the shape ``rust/sinks.rs`` gives too)."""
        with self._lock:
            counters = {name: getattr(self, f"_{name}") for name in COUNTER_NAMES if name != "open_runs"}
            counters["open_runs"] = _saturating_add(len(self._open_runs), self._merged_open_runs)
            return {
                "counters": {name: counters[name] for name in COUNTER_NAMES},
                "latency": self._latency.state(),
                "ttft": self._ttft.state(),
                "by_model": [stats.state(key) for key, stats in self._models.items()],
            }

    def merge_state(self, state: dict[str, Any]) -> None:
        """Adds a snapshot's state in, as if these metrics had seen its events too; a ``ValueError`` (and no
        change) if a model is priced differently or a histogram does not add up."""
        with self._lock:
            seen: set[str] = set()
            for entry in state["by_model"]:
                key = entry["model"]
                if key in seen:
                    raise ValueError(f"snapshot state: model {key!r} appears twice")
                seen.add(key)
                theirs = _price_of_state(entry["price"])
                if key in self._models:
                    ours = self._models[key].price
                elif self._adopt_snapshot_prices:
                    continue
                else:
                    # A model not seen yet would be costed by this aggregator's own table from now on.
                    ours = price_for(key, self._prices)
                if ours != theirs:
                    raise ValueError(_price_conflict(key, ours, theirs))
            check_durations(state["latency"])
            check_durations(state["ttft"])
            for name in COUNTER_NAMES:
                attribute = "_merged_open_runs" if name == "open_runs" else f"_{name}"
                setattr(self, attribute, _saturating_add(getattr(self, attribute), state["counters"][name]))
            self._latency.merge(state["latency"])
            self._ttft.merge(state["ttft"])
            for entry in state["by_model"]:
                key = entry["model"]
                if key not in self._models:
                    self._models[key] = _ModelStats(_price_of_state(entry["price"]))
                self._models[key].merge(entry)

    def reset(self) -> None:
        """Back to the freshly constructed state; prices and the open-run cap are kept."""
        with self._lock:
            self._clear()
