"""Issue 4, cases 5 and 6: ``get_metrics()`` latency after 10^7 events, and resident memory growth over
10^7 metrics + JSONL events (2*10^5 with --bench-quick; the targets then hold for the smaller feed only)."""

from __future__ import annotations

from typing import Any

import pytest

from rlm_toolkit import bench


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
def metrics_targets(bench_cfg: bench.Config, fed: bench.FeedResult) -> list[bench.Target]:
    rows = bench.get_metrics_rows(bench_cfg, fed) + bench.rss_rows(fed, bench.feed(bench_cfg, with_log=False))
    targets = bench.evaluate_targets(rows)
    print("\n" + bench.render_markdown(rows, targets, bench_cfg))
    return targets


# -- TARGET ASSERTIONS (issue 4) -----------------------------------------------------------------------------


@pytest.mark.target
def test_target_get_metrics_under_1ms(metrics_targets, check_target) -> None:
    """TARGET: get_metrics() after 10^7 events returns in under 1 ms (median)."""
    check_target(metrics_targets, "get_metrics()")


@pytest.mark.target
def test_target_rss_growth_under_10mb(metrics_targets, check_target) -> None:
    """TARGET: resident memory grows by under 10 MB over 10^7 metrics + JSONL events."""
    check_target(metrics_targets, "RSS growth")
