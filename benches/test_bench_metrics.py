"""The long feed: ``get_metrics()`` latency after 10^7 events, and resident memory growth over 10^7
metrics + JSONL events (2*10^5 with --bench-quick; the targets then hold for the smaller feed only)."""

from __future__ import annotations

from typing import Any

import pytest

from rlm_toolkit import bench

FULL_FEED = 10**7


@pytest.fixture(scope="module")
def fed(bench_cfg: bench.Config) -> bench.FeedResult:
    """One Rust MetricsCallback + FileLogCallback fed ``bench_cfg.feed_events`` events, RSS read around it."""
    return bench.feed(bench_cfg)


def test_get_metrics(benchmark: Any, bench_cfg: bench.Config, fed: bench.FeedResult) -> None:
    benchmark.group = "get-metrics"
    benchmark.extra_info["events_fed"] = fed.events
    snapshot = benchmark.pedantic(fed.metrics.get_metrics, rounds=bench_cfg.metrics_calls, warmup_rounds=1)
    assert snapshot["completed_calls"] == (fed.warm_events + fed.events) // 2


@pytest.fixture(scope="module")
def metrics(bench_cfg: bench.Config, fed: bench.FeedResult, rows_by_case) -> dict[str, dict[str, bench.Row]]:
    """get_metrics() latency on the fed metrics, and the RSS rows (plus a feed of the metrics alone)."""
    metrics_only = bench.feed(bench_cfg, with_log=False)
    return rows_by_case(bench.get_metrics_rows(bench_cfg, fed) + bench.rss_rows(fed, metrics_only))


def _feed_detail(fed: bench.FeedResult) -> str:
    return "" if fed.events >= FULL_FEED else f"after {fed.events:,} events, fewer than 10^7 (--bench-quick)"


# -- TARGET ASSERTIONS ---------------------------------------------------------------------------------------


@pytest.mark.target
def test_target_get_metrics_under_1ms(metrics, fed: bench.FeedResult, check_target) -> None:
    """TARGET: get_metrics() after 10^7 events returns in under 1 ms (median)."""
    ns = metrics["get-metrics"]["rust"].ns_per_event
    check_target("get_metrics() latency", None if ns is None else ns / 1e6, "<", 1, " ms", _feed_detail(fed))


@pytest.mark.target
def test_target_rss_growth_under_10mb(metrics, fed: bench.FeedResult, check_target) -> None:
    """TARGET: resident memory grows by under 10 MB over 10^7 metrics + JSONL events."""
    growth = metrics["rss"]["rust"].extra["rss_growth_mb"]
    check_target("RSS growth", growth, "<", 10, " MB", _feed_detail(fed))
