"""Shared set-up for the pytest-benchmark suite (not part of the default test run: testpaths is ["tests"]).

Run everything:                  pytest benches
Smoke sizes (CI):                pytest benches --bench-quick      (or RLM_BENCH_QUICK=1)
Only the timings:                pytest benches --benchmark-only
Only the target checks:          pytest benches -m target

Two kinds of tests:
- ``test_<case>[<implementation>]`` time one implementation with ``benchmark.pedantic`` (one round = one batch
  of the case, the same batch size for every implementation of a case, grouped by case);
- ``test_target_*`` (marker ``target``) measure the implementations of a case interleaved in one run with
  ``rlm_toolkit.bench`` and ASSERT a performance target on the medians (``check_target``). The targets live
  here only: the package's own report shows figures and ratios, never a verdict;
- ``test_bench_report.py`` checks that report (and the note for a missing competitor) at quick sizes.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from rlm_toolkit import bench

RowsByCase = dict[str, dict[str, bench.Row]]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--bench-quick", action="store_true", help="rlm_toolkit benches: small sizes (smoke run)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "target: asserts a performance target (on medians measured in one run)")
    if config.getoption("--bench-quick", default=False):
        os.environ["RLM_BENCH_QUICK"] = "1"


LONG_FEED_MODULE = "test_bench_metrics.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The long feed runs last. Its gigabytes of log leave the kernel writing back dirty pages for a minute
    after it, and the kernel throttles every writer meanwhile: a file case measured then ran 2.5-3x slower."""
    items.sort(key=lambda item: item.path.name == LONG_FEED_MODULE)


@pytest.fixture(scope="session")
def bench_cfg() -> Iterator[bench.Config]:
    """The run's sizes, with a temporary folder for the logs (removed at the end)."""
    cfg = bench.Config.from_env()
    cfg.tmpdir = tempfile.mkdtemp(prefix="rlm-benches-")
    try:
        yield cfg
    finally:
        shutil.rmtree(cfg.tmpdir, ignore_errors=True)


def _run_contender(benchmark: Any, cfg: bench.Config, case_name: str, key: str) -> None:
    case = bench.micro_cases(cfg, [case_name])[case_name]
    contender = case.contender(key)
    if contender.skip is not None:
        pytest.skip(contender.skip)
    bench.benchmark_contender(benchmark, case, contender, cfg)


@pytest.fixture
def run_contender(benchmark: Any, bench_cfg: bench.Config) -> Callable[[str, str], None]:
    """``run_contender(case_name, key)``: time that implementation with pytest-benchmark (skips if missing)."""
    return lambda case_name, key: _run_contender(benchmark, bench_cfg, case_name, key)


def _by_case(rows: list[bench.Row], cfg: bench.Config) -> RowsByCase:
    print("\n" + bench.render_markdown(rows, cfg))
    by_case: RowsByCase = {}
    for row in rows:
        by_case.setdefault(row.case, {})[row.key] = row
    return by_case


@pytest.fixture(scope="session")
def rows_by_case(bench_cfg: bench.Config) -> Callable[[list[bench.Row]], RowsByCase]:
    """``rows_by_case(rows)``: print the figures and return the rows as ``{case: {implementation key: row}}``."""
    return lambda rows: _by_case(rows, bench_cfg)


def _interleaved(cfg: bench.Config, names: Sequence[str], min_repeats: int) -> RowsByCase:
    run_cfg = dataclasses.replace(cfg, repeats=max(cfg.repeats, min_repeats))
    return _by_case(bench.run_cases(names, run_cfg), run_cfg)


@pytest.fixture(scope="session")
def interleaved(bench_cfg: bench.Config) -> Callable[..., RowsByCase]:
    """``interleaved(case_names, min_repeats=1)``: measure those cases in one run (``bench.run_cases``), with at
    least ``min_repeats`` batches per implementation (even with --bench-quick); rows by case and key."""
    return lambda names, min_repeats=1: _interleaved(bench_cfg, names, min_repeats)


@dataclass(frozen=True)
class Target:
    name: str
    measured: float | None
    op: str
    """``>=``, ``<=`` or ``<``."""
    limit: float
    unit: str
    detail: str = ""

    @property
    def passed(self) -> bool:
        assert self.measured is not None
        if self.op == ">=":
            return self.measured >= self.limit
        if self.op == "<=":
            return self.measured <= self.limit
        return self.measured < self.limit

    def describe(self) -> str:
        value = "not measured" if self.measured is None else f"{self.measured:.3g}{self.unit}"
        text = f"{self.name}: {value} (target {self.op} {self.limit:g}{self.unit})"
        return text + (f" — {self.detail}" if self.detail else "")


def _check_target(name: str, measured: float | None, op: str, limit: float, unit: str, detail: str = "") -> None:
    target = Target(name, measured, op, limit, unit, detail)
    print(f"\n{target.describe()}")
    if target.measured is None:
        pytest.skip(f"{target.name}: not measured (competitor missing?)")
    # TARGET ASSERTION: fails when the measured figure misses the target.
    assert target.passed, f"TARGET MISSED: {target.describe()}"


@pytest.fixture
def check_target() -> Callable[..., None]:
    """``check_target(name, measured, op, limit, unit, detail="")``: assert ``measured op limit``.

    Skips when ``measured`` is None (the row was not measured, e.g. its competitor is not installed).
    """
    return _check_target
