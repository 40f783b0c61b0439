"""The JSONL case: bytes/s of ``FileLogCallback`` against a raw 64 KiB-buffered write of the same bytes
(close included). No target: figures only (MB/s in ``extra_info`` and the command's table)."""

from __future__ import annotations

import pytest

from rlm_toolkit import bench


@pytest.mark.parametrize("key", bench.case_keys("jsonl"))
def test_jsonl(run_contender, key: str) -> None:
    run_contender("jsonl", key)
