"""The memory promise of the metrics, through ``MetricsCallback`` on both backends, in a child process of its own;
what each event does to the metrics is in tests/test_metrics_cases.py."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

FINISHED_CALLS_CHILD = """
    import os, sys
    from rlm_toolkit import LLMResponse, Usage
    from rlm_toolkit.callbacks import CallbackManager, MetricsCallback

    def rss_mb():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    calls = int(sys.argv[1])
    response = LLMResponse("answer", "gpt-4o", Usage.of(10, 5))
    metrics = MetricsCallback()
    manager = CallbackManager([metrics])

    def finish(first, last):
        for index in range(first, last):
            run_id = f"run-{index:012d}-0123456789abcdef"
            manager.on_llm_start("p", run_id=run_id, model="gpt-4o")
            manager.on_llm_end(response, run_id=run_id, model="gpt-4o")

    finish(0, calls // 4)
    before = rss_mb()
    finish(calls // 4, calls)
    snapshot = metrics.get_metrics()
    assert snapshot["completed_calls"] == calls and snapshot["open_runs"] == 0, snapshot
    print(rss_mb() - before)
"""


@pytest.mark.parametrize("calls_by_backend", [{"rust": 800_000, "python": 100_000},
                                              pytest.param({"rust": 4_000_000, "python": 1_000_000},
                                                           marks=pytest.mark.slow)])
def test_finished_calls_leave_no_memory_behind(backend: str, calls_by_backend: dict[str, int]) -> None:
    calls = calls_by_backend[backend]
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(FINISHED_CALLS_CHILD), str(calls)],
                           capture_output=True, text=True, timeout=300,
                           env={**os.environ, "RLM_TOOLKIT_BACKEND": backend})
    assert child.returncode == 0, child.stderr
    # A leak of even 8 bytes per call would show: 600,000 calls of these 30-character run ids.
    assert float(child.stdout) < 4.0
