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
def server() -> Iterator[LocalServer]:
    with LocalServer() as local:
        yield local


@pytest.mark.parametrize("variant", ["none", "rust", "python"])
def test_rlm_call(benchmark: Any, bench_cfg: bench.Config, server: LocalServer, variant: str) -> None:
    options = {"base_url": server.base_url, "api_key": server.api_key}
    log = None
    if variant == "none":
        rlm = RLM.from_openai(bench.MODEL, **options)
    else:
        log = FileLogCallback(os.path.join(bench_cfg.tmpdir or ".", f"rlm-call-{variant}.jsonl"), backend=variant)
        callbacks = [MetricsCallback(backend=variant), log, ConsoleCallback(stream=io.StringIO()), Custom()]
        rlm = RLM.from_openai(bench.MODEL, callbacks=CallbackManager(callbacks, backend=variant), **options)
    benchmark.group = "rlm-call"
    try:
        result = benchmark.pedantic(rlm.run, args=(PROMPT,), rounds=bench_cfg.rlm_calls,
                                    warmup_rounds=max(5, bench_cfg.rlm_calls // 10))
        assert result.answer
    finally:
        rlm.close()
        if log is not None:
            log.close()
        server.reset()


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
