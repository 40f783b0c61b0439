"""The results as a markdown table (ns/event, CPU ns/event, events/s, ratio to this package's Rust backend,
spread, max/min) and, with matplotlib, a PNG bar chart."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from .base import BENCH_EXTRA, Config, Row
from .cases import CASE_TITLES, PER_CALL_CASES

COMPETITOR_DISTS = ("langchain-core", "pluggy", "blinker", "orjson", "matplotlib")


def fmt_num(value: float | None) -> str:
    if value is None:
        return "—"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _fmt_rate(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 1e6:
        return f"{value / 1e6:.2f} M"
    if value >= 1e3:
        return f"{value / 1e3:.1f} k"
    return f"{value:.1f}"


def _fmt_spread(row: Row) -> str:
    spread = row.spread_pct
    if spread is None:
        return "—"
    low, high = spread
    return f"{low:+.1f}% / {high:+.1f}%"


def _fmt_max_over_min(row: Row) -> str:
    steadiness = row.max_over_min
    return "—" if steadiness is None else f"{steadiness:.2f}"


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """Interpreter, platform, CPU count and the versions of this package and the competitors."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "rlm_toolkit": _version("rlm_toolkit"),
    }
    for dist in COMPETITOR_DISTS:
        info[dist] = _version(dist)
    return info


def render_markdown(rows: list[Row], cfg: Config, *, loop_ns: float | None = None,
                    env: dict[str, Any] | None = None) -> str:
    lines = ["| case | implementation | ns/event | CPU ns/event | events/s | × rust | spread | max/min | note |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        ratio = "—" if row.ratio is None else ("1 (ref)" if row.reference else f"{row.ratio:.2f}")
        impl = f"**{row.impl}**" if row.reference else row.impl
        note = row.note.replace("|", "\\|")
        lines.append(f"| {row.case} | {impl} | {fmt_num(row.ns_per_event)} | {fmt_num(row.cpu_ns_per_event)} | "
                     f"{_fmt_rate(row.events_per_s)} | {ratio} | {_fmt_spread(row)} | {_fmt_max_over_min(row)} | "
                     f"{note} |")
    lines.append("")
    lines.append(f"Medians of {cfg.repeats} interleaved batches per implementation"
                 f"{' (--quick sizes)' if cfg.quick else ''}. `× rust` = ns/event ÷ the Rust backend's in the same "
                 "case (above 1: the Rust backend is that many times faster). `CPU ns/event` = the whole process's "
                 "CPU time per event over the same batches, every thread included (above ns/event: other threads, "
                 "such as the JSONL writer, worked alongside the caller). `spread` = the fastest and the slowest "
                 "batch against the median; `max/min` = the slowest batch ÷ the fastest. get-metrics and rlm-call "
                 "rows are ns per call; the rss row's ns/event is the feed rate.")
    if loop_ns is not None:
        lines.append(f"Every row includes the driving `for` loop: {loop_ns:.1f} ns per iteration here.")
    if env:
        versions = ", ".join(f"{k} {v}" for k, v in env.items() if v is not None)
        lines.append(f"Environment: {versions}.")
    return "\n".join(lines) + "\n"


def write_chart(rows: list[Row], path: str) -> str | None:
    """A PNG bar chart of ns/event per case (log scale); returns why not instead when it cannot be drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return f"chart not written: matplotlib is not installed ({BENCH_EXTRA})"
    cases = [c for c in dict.fromkeys(r.case for r in rows) if any(r.ns_per_event for r in rows if r.case == c)]
    if not cases:
        return "chart not written: no measured rows"
    heights = [sum(1 for r in rows if r.case == c and r.ns_per_event) for c in cases]
    fig, axes = plt.subplots(len(cases), 1, figsize=(10, 0.45 * sum(heights) + 1.1 * len(cases)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for axis, case in zip(axes[:, 0], cases):
        measured = [(r, ns) for r in rows if r.case == case and (ns := r.ns_per_event)]
        labels = [r.impl if len(r.impl) <= 60 else r.impl[:57] + "..." for r, _ in measured]
        values = [ns for _, ns in measured]
        colours = ["#d9534f" if r.reference else ("#5bc0de" if r.key.startswith("python") else "#999999")
                   for r, _ in measured]
        axis.barh(range(len(measured)), values, color=colours)
        axis.set_yticks(range(len(measured)), labels, fontsize=8)
        axis.invert_yaxis()
        axis.set_xscale("log")
        axis.set_xlim(left=min(values) / 3, right=max(values) * 2.5)
        unit = "ns per call" if case in PER_CALL_CASES else "ns per event"
        axis.set_title(f"{case}: {CASE_TITLES.get(case, '')}", fontsize=9, loc="left")
        axis.set_xlabel(f"{unit} (log scale, lower is better)", fontsize=8)
        for index, value in enumerate(values):
            axis.text(value, index, f" {fmt_num(value)}", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
