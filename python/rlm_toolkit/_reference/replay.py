"""Replaying a JSONL log into the reference metrics: the reference for ``rust/replay.rs``, with the same rules.

A line is a record when it is one strict JSON object (UTF-8; no ``NaN`` or ``Infinity``) whose ``event`` is a
catalogue event and whose ``ts`` is a timestamp as the writer writes it (``YYYY-MM-DDTHH:MM:SS.ffffffZ``, UTC,
1970 on); of a repeated key the last counts. Other lines are foreign: counted, skipped. A last line without its
newline is a torn tail: counted, and replayed when it is a whole record. ``run_id`` is the record's string, else
``""``; ``model`` the string, else none. An ``llm_end`` has no usage when its five token counts are all null or
absent; otherwise each count that is an int in ``0..2**64-1`` counts, any other value as 0. ``ttft_ms`` is a
JSON number, else none. A line nested deeper than ``MAX_NESTING`` is foreign.
"""

from __future__ import annotations

import heapq
import json
import math
import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any, BinaryIO

from ..events import EVENTS
from .metrics import UNKNOWN_MODEL, ReferenceMetrics
from .metrics_sink import run_key
from .records import MAX_COUNT, USAGE_FIELDS

_EVENTS = frozenset(spec.name for spec in EVENTS)
_COUNTERS = {
    "llm_new_token": ReferenceMetrics.token,
    "tool_start": ReferenceMetrics.tool_start,
    "tool_end": ReferenceMetrics.tool_end,
    "memory_store": ReferenceMetrics.memory_store,
    "memory_recall": ReferenceMetrics.memory_recall,
}
_TIMESTAMP = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})\.(\d{6})Z", re.ASCII)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_CHUNK_BYTES = 8 << 20
MAX_NESTING = 512
"""The deepest nesting of a record, its own object counted: a deeper line is foreign (the writer nests at most
64 deep; ``json`` recurses)."""
_MICROS_PER_MINUTE = 60_000_000
_LONGEST_PLAIN_INT = 4000
"""Digits of an int ``json`` reads itself: longer ones (past Python's int-string limit) are read as infinite,
which counts as no count and no time, as any number that large does."""


class _NotJson(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotJson(name)


def _bounded_int(text: str) -> Any:
    if len(text) <= _LONGEST_PLAIN_INT:
        return int(text)
    return -math.inf if text.startswith("-") else math.inf


def _loads(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except ValueError as error:
        if type(error) is not ValueError:
            raise
        # An int longer than Python converts by default.
        return json.loads(text, parse_constant=_refuse_constant, parse_int=_bounded_int)


def _too_deep(line: bytes) -> bool:
    """Whether the JSON text ``line`` nests deeper than ``MAX_NESTING`` (brackets in strings not counted)."""
    if line.count(b"[") + line.count(b"{") <= MAX_NESTING:
        return False
    depth = 0
    in_string = escaped = False
    for byte in line:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in b"[{":
            depth += 1
            if depth > MAX_NESTING:
                return True
        elif byte in b"]}":
            depth -= 1
    return False


def _json_object(line: bytes) -> dict[str, Any] | None:
    if _too_deep(line):
        return None
    try:
        value = _loads(line.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def parse_iso_micros(text: str) -> int | None:
    """Epoch microseconds of a timestamp as the writer writes it, from 1970 on; None for any other text."""
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, micros = (int(part) for part in match.groups())
    if year < 1970 or hour > 23 or minute > 59 or second > 59:
        return None
    try:
        days = date(year, month, day).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        return None
    return ((days * 86_400 + hour * 3600 + minute * 60 + second) * 1_000_000) + micros


def _rendered_micros(seconds: float) -> int:
    """The microseconds the writer writes for ``seconds`` (``ts * 1e6`` rounded half away from zero)."""
    scaled = seconds * 1_000_000.0
    whole = math.floor(scaled)
    return int(whole) + (1 if scaled - whole >= 0.5 else 0)


def seconds_of_micros(micros: int) -> float:
    """The epoch seconds nearest ``micros / 1e6`` that the writer writes as ``micros`` again."""
    seconds = float(micros) / 1e6
    for _ in range(2):
        written = _rendered_micros(seconds)
        if written == micros:
            break
        seconds = math.nextafter(seconds, math.inf if written < micros else -math.inf)
    return seconds


def _count(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT:
        return value
    return 0


def _usage(record: dict[str, Any]) -> tuple[int, int, int, int, int] | None:
    counts = [record.get(name) for name in USAGE_FIELDS]
    if all(count is None for count in counts):
        return None
    prompt, completion, total, cached, reasoning = (_count(count) for count in counts)
    return (prompt, completion, total, cached, reasoning)


def _milliseconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def _model(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value


@dataclass
class FileReplay:
    """What replaying one file found; ``slowest`` as ``(latency_ms, run_id, model, end_ts)``, slowest first;
    ``by_model``: each model key's own state (as ``ReferenceMetrics.state()`` gives it), in first-seen order."""

    records: int = 0
    foreign_lines: int = 0
    torn_tails: int = 0
    slowest: list[tuple[float, str, str | None, float]] = field(default_factory=list)
    calls_per_minute: list[tuple[int, int]] = field(default_factory=list)
    by_model: dict[str, dict[str, Any]] = field(default_factory=dict)


class _PerModel:
    """One aggregator per model key, fed the records the main one takes under that key: starts under the
    start's key, ends and errors under the key the main aggregator counts them under, retries under the key
    of the open run they name (none when it is not open). Only the main aggregator keeps runs open: it pairs
    ends with starts (across files too) and hands the start time on, so each key's latencies are those of its
    table row. Open and evicted runs, tool, memory and token events are counted by the main aggregator only."""

    def __init__(self, main: ReferenceMetrics) -> None:
        self.main = main
        self.aggregators: dict[str, ReferenceMetrics] = {}

    def of(self, key: str) -> ReferenceMetrics:
        if key not in self.aggregators:
            self.aggregators[key] = self.main.empty_for(key)
        return self.aggregators[key]


class _Replayer:
    def __init__(self, metrics: ReferenceMetrics, keep_slowest: int) -> None:
        self.metrics = metrics
        self.keep_slowest = keep_slowest
        # (latency_ms, -order, run_id, model, end_ts): the fastest kept call, latest on ties, on top.
        self.slowest: list[tuple[float, int, str, str | None, float]] = []
        self.completed = 0
        self.per_minute: dict[int, int] = {}
        self.per_model = _PerModel(metrics)
        self.result = FileReplay()

    def line(self, line: bytes, torn: bool) -> None:
        if torn:
            self.result.torn_tails += 1
        record = _json_object(line)
        event = record.get("event") if record is not None else None
        ts = record.get("ts") if record is not None else None
        micros = parse_iso_micros(ts) if isinstance(ts, str) else None
        if record is None or not isinstance(event, str) or event not in _EVENTS or micros is None:
            if not torn:
                self.result.foreign_lines += 1
            return
        self.result.records += 1
        self.replay(record, event, micros)

    def replay(self, record: dict[str, Any], event: str, micros: int) -> None:
        ts = seconds_of_micros(micros)
        run_id = record.get("run_id")
        run = run_key(run_id) if isinstance(run_id, str) else ""
        model = _model(record.get("model"))
        metrics = self.metrics
        per_model = self.per_model
        if event == "llm_start":
            metrics.llm_start(run, model, ts)
            per_model.of(model or UNKNOWN_MODEL).llm_start_after(model)
        elif event == "llm_end":
            start = metrics.open_run(run)
            start_ts, start_model = start if start is not None else (None, None)
            key = model or start_model or UNKNOWN_MODEL
            usage, ttft_ms = _usage(record), _milliseconds(record.get("ttft_ms"))
            latency_ms = metrics.llm_end(run, model, usage, ttft_ms, ts)
            per_model.of(key).llm_end_after(start_ts, key, usage, ttft_ms, ts)
            minute = micros // _MICROS_PER_MINUTE * 60
            self.per_minute[minute] = self.per_minute.get(minute, 0) + 1
            order = self.completed
            self.completed += 1
            if latency_ms is not None and self.keep_slowest > 0:
                kept = (latency_ms, -order, run, model, ts)
                if len(self.slowest) < self.keep_slowest:
                    heapq.heappush(self.slowest, kept)
                elif kept[:2] > self.slowest[0][:2]:
                    heapq.heapreplace(self.slowest, kept)
        elif event == "error":
            start = metrics.open_run(run)
            error_key = model or (start[1] if start is not None else None)
            metrics.llm_error(run, model, ts)
            if error_key is not None:
                # It keeps no run open, so the run id closes nothing.
                per_model.of(error_key).llm_error(run, error_key, ts)
        elif event == "retry":
            start = metrics.open_run(run)
            if start is not None:
                per_model.of(start[1] or UNKNOWN_MODEL).retry()
            metrics.retry()
        elif event in _COUNTERS:
            _COUNTERS[event](metrics)

    def finish(self) -> FileReplay:
        ranked = sorted(self.slowest, key=lambda kept: (-kept[0], -kept[1]))
        self.result.slowest = [(latency_ms, run, model, ts) for latency_ms, _, run, model, ts in ranked]
        self.result.calls_per_minute = sorted(self.per_minute.items())
        self.result.by_model = {key: aggregator.state() for key, aggregator in self.per_model.aggregators.items()}
        return self.result


def replay_stream(stream: BinaryIO, metrics: ReferenceMetrics, slowest: int) -> FileReplay:
    """Replays the JSONL lines of a binary stream into ``metrics``, keeping the ``slowest`` slowest calls."""
    replayer = _Replayer(metrics, slowest)
    pending = b""
    while chunk := stream.read(_CHUNK_BYTES):
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for line in lines:
            replayer.line(line, False)
    if pending:
        replayer.line(pending, True)
    return replayer.finish()


def replay_file(path: str, metrics: ReferenceMetrics, slowest: int) -> FileReplay:
    with open(path, "rb") as stream:
        return replay_stream(stream, metrics, slowest)
