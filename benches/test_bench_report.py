"""The command's report: figures and ratios only (no verdicts), and a missing competitor is a note naming the
``bench`` extra, never a crash. Quick sizes, a few seconds."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rlm_toolkit import bench

BENCH_EXTRA = "pip install 'rlm_toolkit[bench]'"
WITHOUT_COMPETITORS = """
import sys

class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("langchain_core", "orjson", "pluggy", "blinker", "matplotlib"):
            raise ImportError(f"No module named {name!r}")

sys.meta_path.insert(0, Missing())
from rlm_toolkit import bench
raise SystemExit(bench.main(sys.argv[1:]))
"""


def test_report_shows_figures_and_ratios_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows_path = tmp_path / "rows.json"
    assert bench.main(["--quick", "--repeats", "1", "--cases", "fanout-1,pair", "--json", str(rows_path)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0] == ("| case | implementation | ns/event | CPU ns/event | events/s | × rust | spread "
                                     "| max/min | note |")
    for verdict_word in ("pass", "fail", "target", "issue"):
        assert verdict_word not in table.lower()
    payload = json.loads(rows_path.read_text())
    assert sorted(payload) == ["config", "environment", "loop_overhead_ns", "rows"]
    measured = [row for row in payload["rows"] if row["skipped"] is None]
    assert [row["key"] for row in measured if row["case"] == "pair"][-1] == "floor"
    for row in measured:
        assert len(row["cpu_samples"]) == len(row["samples"]) == 1
        assert row["cpu_ns_per_event"] == row["cpu_samples"][0] > 0
        assert row["max_over_min"] is None  # one batch: no steadiness figure


def test_missing_competitors_are_skipped_with_the_extra_named(tmp_path: Path) -> None:
    chart = tmp_path / "chart.png"
    completed = subprocess.run(
        [sys.executable, "-c", WITHOUT_COMPETITORS, "--quick", "--repeats", "1", "--cases", "fanout-1,pair,tokens",
         "--chart", str(chart)],
        capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    skipped = re.findall(r"\| skipped: (\S+) is not installed \((.+?)\) \|$", completed.stdout, re.MULTILINE)
    # fanout-1: langchain-core, pluggy, blinker; pair: orjson, langchain-core; tokens: langchain-core
    assert sorted(name for name, _ in skipped) == ["blinker", "langchain-core", "langchain-core", "langchain-core",
                                                   "orjson", "pluggy"]
    assert {how for _, how in skipped} == {BENCH_EXTRA}
    assert f"chart not written: matplotlib is not installed ({BENCH_EXTRA})" in completed.stderr
    assert not chart.exists()
