"""Issue 4, case 8: what 4 callbacks (Metrics, FileLog, Console to a StringIO, a custom BaseCallback) add to
one ``RLM.run`` against the embedded local server, against no callbacks."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import Any

import pytest

from rlm_toolkit import RLM, bench
from rlm_toolkit.callbacks import BaseCallback, CallbackManager, ConsoleCallback, FileLogCallback, MetricsCallback
from rlm_toolkit.server import LocalServer

PROMPT = "Hello! What can you do?"


class Custom(BaseCallback):
    def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
        pass

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        pass


@pytest.fixture(scope="module")
def rlm_and_managers(bench_cfg: bench.Config) -> Iterator[tuple[RLM, dict[str, CallbackManager]]]:
    """One RLM on a local server, and the callback managers swapped in per variant (one client for all)."""
    logs = [FileLogCallback(os.path.join(bench_cfg.tmpdir or ".", f"rlm-call-{b}.jsonl"), backend=b)
            for b in ("rust", "python")]
    managers = {"none": CallbackManager(backend="rust")}
    for backend, log in zip(("rust", "python"), logs):
        managers[backend] = CallbackManager(
            [MetricsCallback(backend=backend), log, ConsoleCallback(stream=io.StringIO()), Custom()], backend=backend)
    with LocalServer() as server:
        rlm = RLM.from_openai(bench.MODEL, callbacks=managers["rust"], base_url=server.base_url,
                              api_key=server.api_key)
        try:
            yield rlm, managers
        finally:
            rlm.close()
            for log in logs:
                log.close()


@pytest.mark.parametrize("variant", ["none", "rust", "python"])
def test_rlm_call(benchmark: Any, bench_cfg: bench.Config, rlm_and_managers: Any, variant: str) -> None:
    rlm, managers = rlm_and_managers
    rlm.callbacks = managers[variant]
    benchmark.group = "rlm-call"
    result = benchmark.pedantic(rlm.run, args=(PROMPT,), rounds=bench_cfg.rlm_calls,
                                warmup_rounds=max(5, bench_cfg.rlm_calls // 10))
    assert result.answer


@pytest.fixture(scope="module")
def rlm_targets(bench_cfg: bench.Config) -> list[bench.Target]:
    """No callbacks / 4 callbacks (Rust) / 4 callbacks (Python backend), calls interleaved, medians."""
    rows = bench.rlm_call_rows(bench_cfg)
    targets = bench.evaluate_targets(rows)
    print("\n" + bench.render_markdown(rows, targets, bench_cfg))
    return targets


# -- TARGET ASSERTIONS (issue 4) -----------------------------------------------------------------------------


@pytest.mark.target
def test_target_callbacks_under_2_percent_of_rlm_call(rlm_targets, check_target) -> None:
    """TARGET: 4 callbacks (Rust backend) add under 2% to a loopback RLM call (difference of medians)."""
    check_target(rlm_targets, "callbacks' share")
