"""The shape of ``MetricsCallback.get_metrics()``, the same on both backends; docs/metrics.md says what each
figure counts."""

from __future__ import annotations

from typing import TypedDict


class ModelMetricsReport(TypedDict):
    """The figures of one model key of ``MetricsReport.by_model``."""

    calls: int
    completed_calls: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cost_usd: float | None
    """None once a completed call of this model had no price or did not report its usage."""
    avg_latency_ms: float


class MetricsReport(TypedDict):
    """What ``MetricsCallback.get_metrics()`` returns, keys in this order."""

    total_calls: int
    completed_calls: int
    total_tokens: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    """Prompt tokens the provider reported as served from its prompt cache (included in ``prompt_tokens``)."""
    reasoning_tokens: int
    """Completion tokens the provider reported as hidden reasoning (included in ``completion_tokens``)."""
    avg_latency_ms: float
    min_latency_ms: float
    max_latency_ms: float
    p50_latency_ms: float
    p95_latency_ms: float
    p99_latency_ms: float
    avg_ttft_ms: float | None
    """Time to first token of streamed calls (the ``ttft_ms`` of their ``llm_end``); the ``*_ttft_ms`` figures
    are None while no call reported one."""
    p50_ttft_ms: float | None
    p95_ttft_ms: float | None
    p99_ttft_ms: float | None
    errors: int
    retries: int
    tool_calls: int
    tool_results: int
    tokens_streamed: int
    memory_stores: int
    memory_recalls: int
    total_cost_usd: float
    unpriced_calls: int
    """Completed calls whose cost is unknown: their model has no price, or their usage was not reported."""
    unreported_usage_calls: int
    """Completed calls whose response reported no token usage; their tokens are not in the sums."""
    open_runs: int
    evicted_runs: int
    dropped_events: int
    lost_events: int
    rejected_events: int
    handler_errors: int
    by_model: dict[str, ModelMetricsReport]
    """Model key -> its figures, in first-seen order."""
