"""What every case is built from: the run's sizes (``Config``), one implementation of a case (``Contender``), a
case (``Case``), one result line (``Row``), and the small helpers the case modules share."""

from __future__ import annotations

import importlib
import os
import statistics
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MODEL = "gpt-4o"
PROMPT_SHORT = "What is the capital of France? Answer in one word."
WRITE_BUFFER = 64 * 1024
BENCH_EXTRA = "pip install 'rlm_toolkit[bench]'"


@dataclass
class Config:
    """Sizes of one run: ``Config()`` the full sizes, ``Config.quick()`` a smoke run for CI."""

    quick: bool = False
    repeats: int = 7
    """Timed batches per contender (the median is reported)."""
    batch_ms: float = 40.0
    """Target duration of one batch for the per-event cases, whose batch size is calibrated per contender."""
    pair_n: int = 20_000
    """LLM start+end pairs per batch in the pair case (the log is closed at the end of each batch)."""
    jsonl_n: int = 50_000
    """Pairs per batch in the JSONL bytes/s case."""
    token_n: int = 1_000_000
    """Tokens per batch in the token case."""
    token_repeats: int = 5
    feed_events: int = 10_000_000
    """Events fed before measuring ``get_metrics()`` latency and resident memory growth."""
    metrics_calls: int = 51
    rlm_calls: int = 300
    """Timed RLM calls per variant in the rlm-call case."""
    tmpdir: str | None = None
    """Where logs are written (a new temporary folder, removed afterwards, when None)."""

    @classmethod
    def quick_sizes(cls) -> Config:
        return cls(quick=True, repeats=3, batch_ms=5.0, pair_n=2_000, jsonl_n=2_000, token_n=20_000,
                   token_repeats=3, feed_events=200_000, metrics_calls=21, rlm_calls=25)

    @classmethod
    def from_env(cls) -> Config:
        """The quick sizes when ``$RLM_BENCH_QUICK`` is set (and not 0), else the full sizes."""
        return cls.quick_sizes() if os.environ.get("RLM_BENCH_QUICK", "") not in ("", "0") else cls()


@dataclass
class Row:
    """One implementation's figures in one case."""

    case: str
    key: str
    """Short id of the implementation within the case (``rust``, ``python``, ``json``, ``langchain`` ...)."""
    impl: str
    ns_per_event: float | None = None
    """Median wall-clock ns per event over the batches."""
    events_per_s: float | None = None
    ratio: float | None = None
    """ns/event divided by that of the case's reference row (this package's Rust backend)."""
    cpu_ns_per_event: float | None = None
    """Median whole-process CPU ns per event over the batches (every thread, a log's writer thread included)."""
    note: str = ""
    samples: list[float] = field(default_factory=list)
    """Wall-clock ns per event of each batch."""
    cpu_samples: list[float] = field(default_factory=list)
    """Whole-process CPU ns per event of each batch (same order as ``samples``; empty when not measured)."""
    reference: bool = False
    skipped: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def ns_ratio_to(self, other: Row) -> float | None:
        """This row's ns/event divided by ``other``'s; None when either was not measured."""
        if self.ns_per_event is None or not other.ns_per_event:
            return None
        return self.ns_per_event / other.ns_per_event

    @property
    def spread_pct(self) -> tuple[float, float] | None:
        """The fastest and the slowest sample against the median, in % (None with fewer than 2 samples)."""
        if len(self.samples) < 2:
            return None
        median = statistics.median(self.samples)
        return (min(self.samples) / median - 1) * 100, (max(self.samples) / median - 1) * 100

    @property
    def max_over_min(self) -> float | None:
        """The slowest sample divided by the fastest: how steady the repeats are (None with fewer than 2)."""
        if len(self.samples) < 2 or min(self.samples) <= 0:
            return None
        return max(self.samples) / min(self.samples)



def fill_ratios(rows: list[Row]) -> None:
    """Set each measured row's ``ratio`` to the reference row's ns/event (left None without one)."""
    reference = next((r for r in rows if r.reference and r.ns_per_event), None)
    if reference is not None:
        for row in rows:
            row.ratio = row.ns_ratio_to(reference)


class BenchVerifyError(AssertionError):
    """A contender did not do the work it was timed for (e.g. a handler was not called)."""


@dataclass
class Contender:
    """One implementation of a case.

    ``setup(n)`` (untimed) builds fresh state for ``n`` operations, ``run(state)`` (timed) performs them
    *including* any close/flush that makes buffered work happen, ``teardown(state)`` (untimed) checks the work
    was really done and cleans up. ``skip`` says why it cannot run (a competitor is not installed).
    """

    key: str
    impl: str
    setup: Callable[[int], Any] | None = None
    run: Callable[[Any], Any] | None = None
    teardown: Callable[[Any], None] | None = None
    events_per_op: int = 1
    skip: str | None = None
    note: str = ""


@dataclass
class Case:
    name: str
    title: str
    contenders: list[Contender]
    fixed_n: int | None = None
    """Operations per batch for every contender; None: calibrated per contender to ``Config.batch_ms``."""
    repeats: int | None = None
    cap_n: int = 2_000_000
    bench_n: int | None = None
    """Operations per round under pytest-benchmark (the same for every contender, so rounds compare)."""
    annotate: Callable[[list[Row]], None] | None = None
    """Adds case-specific figures (e.g. MB/s) to the measured rows."""

    def contender(self, key: str) -> Contender:
        return next(c for c in self.contenders if c.key == key)


def missing(module: str, dist: str | None = None) -> str | None:
    """Why a competitor cannot run (``module`` not importable), naming the extra that installs it; else None."""
    try:
        importlib.import_module(module)
    except ImportError:
        return f"skipped: {dist or module} is not installed ({BENCH_EXTRA})"
    return None


def temp_path(cfg: Config, stem: str) -> str:
    assert cfg.tmpdir is not None, "Config.tmpdir must be set (run_cases does it)"
    return os.path.join(cfg.tmpdir, f"{stem}-{uuid.uuid4().hex[:12]}.jsonl")


def remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def count_lines(path: str) -> int:
    count = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
    return count


def expect(actual: Any, expected: Any, what: str) -> None:
    if actual != expected:
        raise BenchVerifyError(f"{what}: expected {expected!r}, got {actual!r}")


def expect_handler_calls(state: dict[str, Any]) -> None:
    """Each of the ``state["active"]`` counting handlers (those with ``calls``) was called ``state["n"]`` times."""
    calls = [h.calls for h in state["handlers"] if hasattr(h, "calls")]
    expect(calls, [state["n"]] * state["active"], "handler calls")


def run_ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


def progress_line(message: str) -> None:
    """A progress line, on stderr (the table goes to stdout)."""
    print(message, file=sys.stderr, flush=True)
