"""The rlm-call case: what 4 callbacks (Metrics, FileLog, Console to a StringIO, a custom BaseCallback) add to
one ``RLM.run`` against the embedded local server, against no callbacks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from rlm_toolkit import bench

PROMPT = "Hello! What can you do?"


@pytest.fixture(scope="module")
def loopback(bench_cfg: bench.Config) -> Iterator[Any]:
    """One RLM on a local server, and the callback managers swapped in per variant (one client for all)."""
    with bench.loopback_rlm(bench_cfg) as loopback:
        yield loopback


@pytest.mark.parametrize("variant", ["none", "rust", "python"])
def test_rlm_call(benchmark: Any, bench_cfg: bench.Config, loopback: Any, variant: str) -> None:
    loopback.rlm.callbacks = loopback.managers[variant]
    benchmark.group = "rlm-call"
    result = benchmark.pedantic(loopback.rlm.run, args=(PROMPT,), rounds=bench_cfg.rlm_calls,
                                warmup_rounds=max(5, bench_cfg.rlm_calls // 10))
    assert result.answer


@pytest.fixture(scope="module")
def rlm_call(interleaved) -> dict[str, bench.Row]:
    """No callbacks / 4 callbacks (Rust) / 4 callbacks (Python backend) and diagnostics, calls interleaved."""
    return interleaved(["rlm-call"])["rlm-call"]


# -- TARGET ASSERTIONS ---------------------------------------------------------------------------------------


@pytest.mark.target
def test_target_callbacks_under_1_percent_of_rlm_call(rlm_call, check_target) -> None:
    """TARGET: 4 callbacks (Rust backend: the README example's Metrics, FileLog and a custom callback, plus a
    Console) add under 1% to a loopback RLM call, measured directly: the events of one real run replayed
    through them, against the median call without callbacks."""
    rust = rlm_call["rust"].extra
    check_target("callbacks' share of a loopback RLM call (rust, measured directly)", rust["direct_overhead_pct"], "<", 1, "%",
                 f"whole calls: medians {rust['overhead_pct']:+.2f}%, paired {rust['paired_overhead_pct']:+.2f}%")
