"""The token hook: ``manager.on_llm_new_token`` to a ``StreamingCallback(on_token=fn)``, 10^6 tokens per round
(2*10^4 with --bench-quick). No target: figures only."""

from __future__ import annotations

import pytest

from rlm_toolkit import bench


@pytest.mark.parametrize("key", bench.case_keys("tokens"))
def test_tokens(run_contender, key: str) -> None:
    run_contender("tokens", key)
