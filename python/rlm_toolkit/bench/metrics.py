"""The long feed: 10^7 events (LLM start/end pairs) into a Rust ``MetricsCallback`` + ``FileLogCallback``,
then ``get_metrics()`` latency after it (``get-metrics``) and resident memory growth over it (``rss``)."""

from __future__ import annotations

import gc
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

from ..callbacks import CallbackManager, FileLogCallback, MetricsCallback
from .base import MODEL, Config, Row, expect, fill_ratios, progress_line, remove, run_ids, temp_path
from .pair import pair_payload
from .report import fmt_num


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _hwm_bytes() -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the process's peak RSS (VmHWM) to the current RSS (Linux ``clear_refs``); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


@dataclass
class FeedResult:
    """What one feed measured: its rate, the RSS and peak RSS around it, and the fed metrics."""

    events: int
    ns_per_event: float
    rss_created: int | None
    rss_warm: int | None
    rss_after: int | None
    hwm_before: int | None
    hwm_after: int | None
    log_bytes: int
    warm_events: int
    """Events fed before ``rss_warm`` was read (the metrics hold ``warm_events + events``)."""
    metrics: Any
    """The fed ``MetricsCallback`` (kept for the get_metrics measurement)."""


def feed(cfg: Config, events: int | None = None, *, with_log: bool = True, progress: bool = False) -> FeedResult:
    """Fire ``events`` events (LLM start/end pairs, 200/300 chars) to Rust metrics + JSONL; RSS around it.

    ``with_log=False`` feeds the ``MetricsCallback`` alone (to tell the two sinks' memory apart).
    """
    total = cfg.feed_events if events is None else events
    pairs = total // 2
    prompt, response = pair_payload()
    model = MODEL
    ids = run_ids(1024)
    path = temp_path(cfg, "feed")
    gc.collect()
    metrics = MetricsCallback(backend="rust")
    log = FileLogCallback(path, backend="rust") if with_log else None
    manager = CallbackManager([metrics, log] if log is not None else [metrics], backend="rust")
    rss_created = _rss_bytes()
    warm_pairs = min(5_000, max(1, pairs // 100))
    for index in range(warm_pairs):
        run_id = ids[index & 1023]
        manager.on_llm_start(prompt, run_id=run_id, model=model)
        manager.on_llm_end(response, run_id=run_id, model=model)
    if log is not None:
        log.flush()
    gc.collect()
    peak_reset = _reset_peak_rss()
    rss_warm, hwm_before = _rss_bytes(), (_hwm_bytes() if peak_reset else None)
    step = max(1, pairs // 10)
    start = time.perf_counter_ns()
    done = 0
    while done < pairs:
        chunk = min(step, pairs - done)
        for index in range(done, done + chunk):
            run_id = ids[index & 1023]
            manager.on_llm_start(prompt, run_id=run_id, model=model)
            manager.on_llm_end(response, run_id=run_id, model=model)
        done += chunk
        if progress:
            progress_line(f"  feed{'' if with_log else ' (metrics only)'}: {2 * done:,}/{2 * pairs:,} events")
    if log is not None:
        log.flush()
    elapsed = time.perf_counter_ns() - start
    gc.collect()
    rss_after, hwm_after = _rss_bytes(), _hwm_bytes()
    log_bytes = 0
    if log is not None:
        log.close()
        log_bytes = os.path.getsize(path)
        remove(path)
    return FeedResult(2 * pairs, elapsed / (2 * pairs), rss_created, rss_warm, rss_after, hwm_before, hwm_after,
                      log_bytes, 2 * warm_pairs, metrics)


def get_metrics_rows(cfg: Config, fed: FeedResult) -> list[Row]:
    """``get_metrics()`` latency on the fed metrics (ns per call), against sorting a latency list in Python."""
    metrics = fed.metrics
    first = time.perf_counter_ns()
    snapshot = metrics.get_metrics()
    first = time.perf_counter_ns() - first
    expect(snapshot["completed_calls"] + snapshot["total_calls"] > 0, True, "metrics were fed")
    samples = []
    for _ in range(cfg.metrics_calls):
        start = time.perf_counter_ns()
        metrics.get_metrics()
        samples.append(float(time.perf_counter_ns() - start))
    median = statistics.median(samples)
    rows = [Row("get-metrics", "rust", f"MetricsCallback.get_metrics() (rust) after {fed.events:,} events",
                median, 1e9 / median, 1.0, note=f"first call {first / 1e6:.3f} ms; max {max(samples) / 1e6:.3f} ms",
                samples=samples, reference=True, extra={"events": fed.events, "first_ns": first})]
    # The plain-Python way: a latency list, percentiles by sorting it (as many samples as completed calls).
    count = min(fed.events // 2, 5_000_000)
    latencies = [0.5 + (i * 7919 % 1000) / 1000 for i in range(count)]
    plain_samples = []
    for _ in range(max(3, min(7, cfg.metrics_calls))):
        start = time.perf_counter_ns()
        ordered = sorted(latencies)
        _ = [ordered[min(count - 1, int(q * count))] for q in (0.5, 0.95, 0.99)], sum(latencies) / count
        plain_samples.append(float(time.perf_counter_ns() - start))
    del latencies
    plain = statistics.median(plain_samples)
    rows.append(Row("get-metrics", "plain-sorted", f"plain Python: sorted() percentiles of {count:,} latencies",
                    plain, 1e9 / plain, plain / median, samples=plain_samples))
    return rows


def _rss_row(fed: FeedResult, key: str, label: str) -> Row:
    growth = None if fed.rss_after is None or fed.rss_warm is None else (fed.rss_after - fed.rss_warm) / 2**20
    since_created = (None if fed.rss_after is None or fed.rss_created is None
                     else (fed.rss_after - fed.rss_created) / 2**20)
    peak = (None if fed.hwm_after is None or fed.hwm_before is None or fed.rss_warm is None
            else (fed.hwm_after - fed.rss_warm) / 2**20)
    note = (f"RSS +{fmt_num(growth)} MB after warm-up (+{fmt_num(since_created)} MB since creation; "
            f"peak +{fmt_num(peak)} MB)")
    if fed.log_bytes:
        note += f"; {fed.log_bytes / 1e9:.2f} GB of JSONL"
    return Row("rss", key, f"{label}, {fed.events:,} events (feed rate)", fed.ns_per_event, 1e9 / fed.ns_per_event,
               note=note, reference=key == "rust",
               extra={"rss_growth_mb": growth, "rss_growth_since_creation_mb": since_created,
                      "peak_growth_mb": peak, "events": fed.events, "log_bytes": fed.log_bytes})


def rss_rows(fed: FeedResult, metrics_only: FeedResult | None = None) -> list[Row]:
    """The RSS rows: metrics + JSONL, and optionally the metrics alone (to tell the two sinks' memory apart)."""
    rows = [_rss_row(fed, "rust", "rlm_toolkit (rust) metrics + JSONL")]
    if metrics_only is not None:
        rows.append(_rss_row(metrics_only, "rust-metrics-only", "rlm_toolkit (rust) MetricsCallback alone"))
    fill_ratios(rows)
    return rows

