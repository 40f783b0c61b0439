"""How the cases are measured.

The contenders of a micro case run interleaved in this one process: one batch each, in an order that rotates
every repeat, with the cyclic garbage collector paused during timed batches (``time.perf_counter_ns``
around ``run`` only); each row reports the median ns/event over the repeats and keeps every sample (the
spread). Around the same ``run``, ``time.process_time_ns`` gives the whole process's CPU time (every thread:
a log's writer thread counts, and its work is finished by the close inside ``run``), reported as the median
CPU ns/event. Batch sizes are fixed per case or calibrated per contender to ``Config.batch_ms``. The outer ``for``
loop that drives the calls is included in every row alike (``loop_overhead_ns`` measures it).
"""

from __future__ import annotations

import gc
import itertools
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from .base import Case, Config, Contender, Row, fill_ratios, progress_line
from .cases import CASE_TITLES, micro_cases
from .metrics import FeedResult, feed, get_metrics_rows, rss_rows
from .rlm_call import rlm_call_rows


def time_batch(contender: Contender, n: int) -> tuple[int, int]:
    """One batch of ``n`` operations; returns the wall-clock ns and the whole-process CPU ns of ``run``
    (setup/teardown untimed)."""
    assert contender.setup is not None and contender.run is not None
    state = contender.setup(n)
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        cpu_start = time.process_time_ns()
        start = time.perf_counter_ns()
        contender.run(state)
        elapsed = time.perf_counter_ns() - start
        cpu = time.process_time_ns() - cpu_start
    finally:
        if was_enabled:
            gc.enable()
    if contender.teardown is not None:
        contender.teardown(state)
    return elapsed, cpu


def _calibrate(contender: Contender, target_ns: float, cap: int) -> int:
    """A batch size taking about ``target_ns``; the runs made here also warm the contender up."""
    n = 64
    while True:
        elapsed, _ = time_batch(contender, n)
        if elapsed >= target_ns / 8 or n >= cap:
            break
        n = min(cap, n * 8)
    return max(64, min(cap, int(n * target_ns / max(elapsed, 1))))


def measure_case(case: Case, cfg: Config, *, progress: bool = False) -> list[Row]:
    """Run the contenders of ``case`` interleaved; one ``Row`` per contender with the median ns/event."""
    live = [c for c in case.contenders if c.skip is None]
    sizes: dict[str, int] = {}
    errors: dict[str, str] = {}
    for contender in live:
        try:
            if case.fixed_n is None:
                sizes[contender.key] = _calibrate(contender, cfg.batch_ms * 1e6, case.cap_n)
            else:
                sizes[contender.key] = case.fixed_n
                time_batch(contender, max(1, case.fixed_n // 10))  # warm-up
        except Exception as error:  # a broken competitor must not stop the suite
            errors[contender.key] = f"{type(error).__name__}: {error}"
    samples: dict[str, list[float]] = {c.key: [] for c in live}
    cpu_samples: dict[str, list[float]] = {c.key: [] for c in live}
    repeats = case.repeats or cfg.repeats
    runnable = [c for c in live if c.key not in errors]
    for repeat in range(repeats):
        if progress:
            progress_line(f"  {case.name}: repeat {repeat + 1}/{repeats}")
        shift = repeat % max(1, len(runnable))
        for contender in runnable[shift:] + runnable[:shift]:
            if contender.key in errors:
                continue
            n = sizes[contender.key]
            try:
                elapsed, cpu = time_batch(contender, n)
            except Exception as error:
                errors[contender.key] = f"{type(error).__name__}: {error}"
                continue
            events = n * contender.events_per_op
            samples[contender.key].append(elapsed / events)
            cpu_samples[contender.key].append(cpu / events)
    rows: list[Row] = []
    for contender in case.contenders:
        row = Row(case.name, contender.key, contender.impl, note=contender.note, reference=contender.key == "rust")
        if contender.skip is not None:
            row.skipped, row.note = contender.skip, contender.skip
        elif contender.key in errors:
            row.skipped = row.note = f"error: {errors[contender.key]}"
        else:
            row.samples = samples[contender.key]
            row.ns_per_event = statistics.median(row.samples)
            row.cpu_samples = cpu_samples[contender.key]
            row.cpu_ns_per_event = statistics.median(row.cpu_samples)
            row.events_per_s = 1e9 / row.ns_per_event
            row.extra["ops_per_batch"] = sizes[contender.key]
        rows.append(row)
    fill_ratios(rows)
    if case.annotate is not None:
        case.annotate(rows)
    return rows


def run_cases(names: Sequence[str], cfg: Config, *, progress: bool = False) -> list[Row]:
    """Measure the named cases (see ``cases.ALL_CASES``); logs go to ``cfg.tmpdir`` or a temporary folder."""
    own_tmp = cfg.tmpdir is None
    if own_tmp:
        cfg.tmpdir = tempfile.mkdtemp(prefix="rlm-bench-")
    rows: list[Row] = []
    try:
        micro = micro_cases(cfg, names)
        fed: FeedResult | None = None
        for name in names:
            if progress:
                progress_line(f"case {name}: {CASE_TITLES[name]}")
            started = time.perf_counter()
            if name in micro:
                rows += measure_case(micro[name], cfg, progress=progress)
            elif name in ("get-metrics", "rss"):
                if fed is None:
                    fed = feed(cfg, progress=progress)
                if name == "get-metrics":
                    rows += get_metrics_rows(cfg, fed)
                else:
                    rows += rss_rows(fed, feed(cfg, with_log=False, progress=progress))
            elif name == "rlm-call":
                rows += rlm_call_rows(cfg, progress=progress)
            if progress:
                progress_line(f"  done in {time.perf_counter() - started:.1f} s")
    finally:
        if own_tmp:
            shutil.rmtree(cfg.tmpdir, ignore_errors=True)  # type: ignore[arg-type]
            cfg.tmpdir = None
    return rows


def loop_overhead_ns() -> float:
    """ns per iteration of the empty ``for _ in itertools.repeat(None, n)`` loop that drives every row."""
    samples = []
    n = 1_000_000
    for _ in range(5):
        start = time.perf_counter_ns()
        for _ in itertools.repeat(None, n):
            pass
        samples.append((time.perf_counter_ns() - start) / n)
    return statistics.median(samples)


def benchmark_contender(benchmark: Any, case: Case, contender: Contender, cfg: Config) -> None:
    """Time ``contender`` with pytest-benchmark's ``benchmark.pedantic``: one round = one batch of the case.

    Every contender of a case gets the same batch size, so pytest-benchmark's rounds compare within the group;
    ``extra_info`` records the events per round and the resulting ns/event.
    """
    if contender.skip is not None or contender.setup is None or contender.run is None:
        raise ValueError(f"{case.name}/{contender.key} cannot run: {contender.skip}")
    n = case.bench_n or case.fixed_n or 1000
    benchmark.group = case.name
    benchmark.extra_info.update(case=case.name, implementation=contender.impl, ops_per_round=n,
                                events_per_round=n * contender.events_per_op)
    setup, run = contender.setup, contender.run
    benchmark.pedantic(run, setup=lambda: ((setup(n),), {}), teardown=contender.teardown,
                       rounds=case.repeats or cfg.repeats, warmup_rounds=1, iterations=1)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["median_ns_per_event"] = stats.stats.median * 1e9 / (n * contender.events_per_op)
