"""One report from many JSONL logs (``rlm-toolkit report``): the logs are replayed into one metrics aggregator,
so a call's start and end pair up by run id wherever they are, and the figures are those a ``MetricsCallback``
would have counted live (latencies from the microsecond timestamps of the records).

The Rust backend parses the files in ``rust/replay.rs`` without holding the GIL; the Python backend does the
same in ``_reference/replay.py``. Both read the same lines as records and give the same snapshot.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _backend
from ._reference import replay as reference_replay
from ._reference.metrics import bucket_range
from ._reference.records import iso_utc
from .callbacks.native import MAX_OPEN_RUNS, MetricsCallback
from .callbacks.metrics_types import MetricsReport
from .callbacks.snapshot import MetricsSnapshot
from .errors import LogReadError, MissingExtraError
from .pricing import ModelPrice

PLOT_EXTRA = "pip install 'rlm_toolkit[bench]'"
"""The extra that brings matplotlib, for ``--plot``."""


@dataclass(frozen=True)
class FileCounts:
    """What one file held."""

    path: str
    records: int
    foreign_lines: int
    """Lines that are not records (not a JSON object, no catalogue ``event`` or no valid ``ts``): skipped."""
    torn_tails: int
    """1 when the file's last line has no newline (replayed if it is a whole record), else 0."""


@dataclass(frozen=True)
class SlowCall:
    """A completed LLM call whose start was replayed too."""

    latency_ms: float
    run_id: str
    model: str | None
    end_ts: float
    """Epoch seconds of the call's ``llm_end`` record."""
    path: str
    """The file of its ``llm_end`` record."""


@dataclass(frozen=True)
class LogReport:
    """The figures of all the logs replayed together."""

    snapshot: MetricsSnapshot
    records: int
    foreign_lines: int
    torn_tails: int
    files: tuple[FileCounts, ...]
    slowest: tuple[SlowCall, ...]
    """The slowest calls, slowest first; of equal latencies the one replayed first."""
    calls_per_minute: tuple[tuple[int, int], ...]
    """``(minute start in epoch seconds, completed calls that ended in it)``, earliest first."""
    by_model: dict[str, MetricsSnapshot]
    """Each model key's own snapshot (in ``snapshot``'s ``by_model`` order): the calls started under it, the
    ends and errors counted under it (latencies and TTFT included) and the retries of its calls (a retry
    counts under the model of the open call its ``run_id`` names; one of no open call counts under none).
    Tool, memory and token events are counted overall only."""


def log_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The files to replay: each file given, and every ``*.jsonl`` file directly in each folder given (sorted by
    name; ``<log>.torn`` sidecars are not logs); a file named twice is read once. Raises ``LogReadError`` for a
    path that does not exist or a folder without logs."""
    files: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(child for child in path.iterdir() if child.suffix == ".jsonl" and child.is_file())
            if not found:
                raise LogReadError(f"{path}: no *.jsonl log in this folder")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise LogReadError(f"{path}: no such file or folder; give JSONL logs or folders holding them")
    unique: dict[Path, Path] = {}
    for path in files:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def replay_logs(paths: Iterable[str | os.PathLike[str]], *, prices: dict[str, ModelPrice] | None = None,
                backend: _backend.BackendName | None = None, slowest: int = 10) -> LogReport:
    """Replays JSONL logs (files, or folders of ``*.jsonl`` files) into one ``MetricsCallback`` (``prices``
    as its own) and returns its snapshot with what each file held, the ``slowest`` slowest calls, the
    completed calls per minute and each model's own snapshot (``LogReport.by_model``). Files are replayed in the order given (a folder's in name order): a call whose
    end comes in a file replayed before the one of its start counts as completed without a latency. Raises
    ``LogReadError`` for a log that cannot be read."""
    if isinstance(slowest, bool) or not isinstance(slowest, int) or slowest < 0:
        raise ValueError(f"slowest must be an int >= 0, not {slowest!r}")
    files = log_files(paths)
    metrics = MetricsCallback(prices=prices, max_open_runs=MAX_OPEN_RUNS, backend=backend)
    native = _backend.resolve(backend) == "rust"
    counts: list[FileCounts] = []
    # (latency_ms, file index, rank in its file, call): every file's kept calls, ranked once at the end.
    candidates: list[tuple[float, int, int, SlowCall]] = []
    per_minute: dict[int, int] = {}
    model_snapshots: dict[str, list[MetricsSnapshot]] = {}
    for file_index, path in enumerate(files):
        try:
            if native:
                found: dict[str, Any] = metrics.core.replay_file(path, slowest)
            else:
                found = vars(reference_replay.replay_file(str(path), metrics.core, slowest))
        except OSError as error:
            raise LogReadError(f"{path}: cannot be read ({error.strerror or error})") from error
        counts.append(FileCounts(str(path), found["records"], found["foreign_lines"], found["torn_tails"]))
        for rank, (latency_ms, run_id, model, end_ts) in enumerate(found["slowest"]):
            candidates.append((latency_ms, file_index, rank, SlowCall(latency_ms, run_id, model, end_ts, str(path))))
        for minute, calls in found["calls_per_minute"]:
            per_minute[minute] = per_minute.get(minute, 0) + calls
        for model, state in found["by_model"].items():
            model_snapshots.setdefault(model, []).append(MetricsSnapshot._of_state(state))
    candidates.sort(key=lambda candidate: (-candidate[0], candidate[1], candidate[2]))
    snapshot = metrics.snapshot()
    return LogReport(
        snapshot=snapshot,
        records=sum(file.records for file in counts),
        foreign_lines=sum(file.foreign_lines for file in counts),
        torn_tails=sum(file.torn_tails for file in counts),
        files=tuple(counts),
        slowest=tuple(candidate[3] for candidate in candidates[:slowest]),
        calls_per_minute=tuple(sorted(per_minute.items())),
        by_model={model: MetricsSnapshot.merge(model_snapshots.get(model, []))
                  for model in snapshot.get_metrics()["by_model"]},
    )


# -- rendering ----------------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: frozenset[int] = frozenset({0})) -> str:
    """Columns aligned; numbers to the right, the ``text_columns`` to the left."""
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = [cell.ljust(width) if column in text_columns else cell.rjust(width)
                 for column, (cell, width) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), line(tuple("-" * width for width in widths)), *(line(row) for row in rows)])


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _quantiles(metrics: MetricsReport, kind: str) -> tuple[str, str, str]:
    """The p50, p95 and p99 of ``kind`` ("latency" or "ttft") in ms, "-" for each that has no sample."""
    p50, p95, p99 = (metrics[f"p{percentile}_{kind}_ms"] for percentile in (50, 95, 99))  # type: ignore[literal-required]
    return _ms(p50), _ms(p95), _ms(p99)


def _latency_count(snapshot: MetricsSnapshot) -> int:
    count: int = snapshot._state()["latency"]["count"]
    return count


def _usd(value: float | None) -> str:
    return "unknown" if value is None else f"${value:.6f}"


def format_report(report: LogReport) -> str:
    """The report as text: the files read, a table per model, the overall figures and the slowest calls."""
    out = io.StringIO()
    out.write(f"Logs read: {len(report.files)} file(s), {report.records} records, "
              f"{report.foreign_lines} foreign lines, {report.torn_tails} torn tails\n")
    file_rows = [(file.path, str(file.records), str(file.foreign_lines), str(file.torn_tails)) for file in report.files]
    out.write(_table(("file", "records", "foreign lines", "torn tails"), file_rows) + "\n\n")

    metrics = report.snapshot.get_metrics()
    model_rows = []
    for name, row in metrics["by_model"].items():
        own = report.by_model[name].get_metrics()
        model_rows.append((
            name, str(row["calls"]), str(row["completed_calls"]), str(row["prompt_tokens"]),
            str(row["completion_tokens"]), _usd(row["cost_usd"]), str(row["errors"]), str(own["retries"]),
            *(_quantiles(own, "latency") if _latency_count(report.by_model[name]) else ("-", "-", "-")),
            *_quantiles(own, "ttft"),
        ))
    model_header = ("model", "calls", "completed", "prompt tokens", "completion tokens", "cost", "errors",
                    "retries", "latency p50", "latency p95", "latency p99", "TTFT p50", "TTFT p95", "TTFT p99")
    out.write("Per model (latency and TTFT in ms)\n" + _table(model_header, model_rows) + "\n\n")

    def quantiles(kind: str) -> str:
        return " / ".join(_quantiles(metrics, kind)) + " ms"

    overall = [
        ("calls", str(metrics["total_calls"])),
        ("completed calls", str(metrics["completed_calls"])),
        ("calls without an end", str(metrics["open_runs"])),
        ("prompt / completion tokens", f"{metrics['prompt_tokens']} / {metrics['completion_tokens']}"),
        ("retries", str(metrics["retries"])),
        ("errors", str(metrics["errors"])),
        ("latency p50 / p95 / p99", quantiles("latency")),
        ("TTFT p50 / p95 / p99", quantiles("ttft")),
        ("total cost", f"${metrics['total_cost_usd']:.6f}"),
        ("calls without a price or usage", str(metrics["unpriced_calls"])),
    ]
    width = max(len(name) for name, _ in overall)
    out.write("Overall\n" + "\n".join(f"  {name.ljust(width)}  {value}" for name, value in overall) + "\n")

    if report.slowest:
        slow_rows = [
            (str(rank), f"{call.latency_ms:.3f}", call.run_id, call.model or "unknown", iso_utc(call.end_ts), call.path)
            for rank, call in enumerate(report.slowest, 1)
        ]
        slow_header = ("#", "latency ms", "run id", "model", "ended", "file")
        out.write(f"\nSlowest {len(slow_rows)} calls\n" + _table(slow_header, slow_rows, text_columns=frozenset({2, 3, 4, 5})) + "\n")
    return out.getvalue()


def _pyplot() -> Any:
    """matplotlib's pyplot (without a display), or ``MissingExtraError`` naming the extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise MissingExtraError(f"--plot needs matplotlib, which is not installed: {PLOT_EXTRA}") from error
    return plt


def check_plotting() -> None:
    """Raises ``MissingExtraError`` when a plot cannot be drawn (matplotlib missing)."""
    _pyplot()


def write_plot(report: LogReport, path: str | os.PathLike[str]) -> None:
    """Writes a PNG: the latency histogram (the metrics' buckets) and the completed calls per minute."""
    plt = _pyplot()
    figure, (latency_axes, minute_axes) = plt.subplots(2, 1, figsize=(10, 8))
    buckets = report.snapshot._state()["latency"]["buckets"]
    if buckets:
        # Each bucket's middle (at least 1 µs, for the log scale), counted into 50 log-spaced bins.
        middles_ms = [max(low + (width - 1) / 2, 1) / 1000.0 for low, width in (bucket_range(index) for index, _ in buckets)]
        low_ms, high_ms = min(middles_ms) / 1.1, max(middles_ms) * 1.1
        bins = [low_ms * (high_ms / low_ms) ** (step / 50) for step in range(51)]
        latency_axes.hist(middles_ms, bins=bins, weights=[count for _, count in buckets])
        latency_axes.set_xscale("log")
    latency_axes.set_xlabel("latency (ms)")
    latency_axes.set_ylabel("calls")
    latency_axes.set_title("Latency of completed calls")
    if report.calls_per_minute:
        first = report.calls_per_minute[0][0]
        minute_axes.bar([(minute - first) / 60 for minute, _ in report.calls_per_minute],
                        [calls for _, calls in report.calls_per_minute], width=1.0, align="edge")
        minute_axes.set_xlabel(f"minutes since {iso_utc(first)}")
    minute_axes.set_ylabel("completed calls")
    minute_axes.set_title("Completed calls per minute")
    figure.tight_layout()
    figure.savefig(os.fspath(path), format="png")
    plt.close(figure)
