"""Replaying JSONL logs into one report (``rlm_toolkit.report``, ``rlm-toolkit report``): the figures of a live
``MetricsCallback``, from one log or from many workers' logs, on both backends; foreign lines and torn tails;
the Rust and Python parsers agreeing on hostile lines; the command's output, JSON, plot and errors."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import rlm_toolkit
from rlm_toolkit import LLMResponse, Usage
from rlm_toolkit._reference.records import iso_utc
from rlm_toolkit.callbacks import CallbackManager, FileLogCallback, MetricsCallback
from rlm_toolkit.callbacks.snapshot import MetricsSnapshot
from rlm_toolkit.cli import main
from rlm_toolkit.errors import LogReadError
from rlm_toolkit.report import PLOT_EXTRA, LogReport, replay_logs

PACKAGE_PARENT = str(Path(rlm_toolkit.__file__).resolve().parent.parent)
"""Where the installed package is (the source tree holds the native module only in an editable install)."""
BASE_US = 1_796_144_608_000_000
"""2026-12-01T17:03:28Z in epoch microseconds: every event time is a whole microsecond after it."""
LATENCY_FIELDS = ("avg_latency_ms", "min_latency_ms", "max_latency_ms", "p50_latency_ms", "p95_latency_ms",
                  "p99_latency_ms")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def at(micros: int) -> float:
    return (BASE_US + micros) / 1e6


def fire_session(manager: CallbackManager, prefix: str, calls: int, offset_us: int = 0) -> None:
    """A mix of every event the metrics count: priced, unpriced and unnamed models, calls with and without
    usage or a time to first token, failures, retries, tools, memory, streamed tokens, runs."""
    rng = random.Random(prefix)
    now_us = offset_us
    manager.on_run_start("go", run_id=f"{prefix}-run", model="gpt-4o", timestamp=at(now_us))
    for index in range(calls):
        run_id = f"{prefix}-{index}"
        model = ("gpt-4o", "gpt-4o-mini", "in-house", None)[index % 4]
        now_us += rng.randrange(1, 5_000)
        manager.on_llm_start("prompt", run_id=run_id, parent_run_id=f"{prefix}-run", model=model, timestamp=at(now_us))
        now_us += rng.randrange(1, 3_000_000)
        if index % 7 == 3:
            manager.on_retry(1, 3, RuntimeError("429"), run_id=run_id, model=model, timestamp=at(now_us))
        if index % 9 == 5:
            manager.on_error(RuntimeError("boom"), run_id=run_id, model=model, timestamp=at(now_us))
            continue
        if index % 5 == 2:
            manager.on_llm_new_token("tok", run_id=run_id, model=model, timestamp=at(now_us))
        usage = None if index % 11 == 4 else Usage(rng.randrange(1, 900), rng.randrange(1, 300), 0,
                                                   rng.randrange(0, 50), rng.randrange(0, 20))
        ttft_ms = rng.uniform(0.1, 800.0) if index % 3 else None
        manager.on_llm_end(LLMResponse("answer", model=model, usage=usage), run_id=run_id, model=model,
                           ttft_ms=ttft_ms, timestamp=at(now_us))
        if index % 4 == 1:
            manager.on_tool_start("search", {"q": "x"}, run_id=run_id, timestamp=at(now_us))
            manager.on_tool_end("search", "found", run_id=run_id, timestamp=at(now_us))
            manager.on_memory_store("note", run_id=run_id, timestamp=at(now_us))
            manager.on_memory_recall("note", ["note"], run_id=run_id, timestamp=at(now_us))
    # A call that never ends: an open run in both.
    manager.on_llm_start("prompt", run_id=f"{prefix}-open", model="gpt-4o", timestamp=at(now_us + 1))
    manager.on_run_end("done", run_id=f"{prefix}-run", model="gpt-4o", timestamp=at(now_us + 2))


def live_log(path: Path, prefix: str, calls: int, offset_us: int = 0) -> MetricsCallback:
    """Fires a session to a MetricsCallback and a FileLogCallback writing ``path``; returns the metrics."""
    metrics = MetricsCallback()
    log = FileLogCallback(path, include_tokens=True)
    fire_session(CallbackManager([metrics, log]), prefix, calls, offset_us)
    log.close()
    return metrics


def assert_same_figures(replayed: dict[str, Any], live: dict[str, Any], completed: int) -> None:
    """Equal counts, tokens, costs and errors; each latency figure within 1 µs per completed call."""
    bound_ms = 0.001 * completed
    for name, value in live.items():
        if name == "by_model":
            assert list(replayed["by_model"]) == list(value)
            for model, row in value.items():
                replayed_row = replayed["by_model"][model]
                assert abs(replayed_row["avg_latency_ms"] - row["avg_latency_ms"]) <= bound_ms
                assert {k: v for k, v in replayed_row.items() if k != "avg_latency_ms"} == \
                       {k: v for k, v in row.items() if k != "avg_latency_ms"}, model
        elif name in LATENCY_FIELDS:
            assert abs(replayed[name] - value) <= bound_ms, name
        else:
            assert replayed[name] == value, name


def test_a_log_replays_to_the_live_figures(backend: str, tmp_path: Path) -> None:
    live = live_log(tmp_path / "run.jsonl", "a", 120)
    report = replay_logs([tmp_path / "run.jsonl"], backend=backend)  # type: ignore[arg-type]
    live_metrics = live.get_metrics()
    errors = len([index for index in range(120) if index % 9 == 5])
    assert (live_metrics["completed_calls"], live_metrics["errors"]) == (120 - errors, errors)
    assert live_metrics["unreported_usage_calls"] > 0 and live_metrics["tokens_streamed"] > 0
    assert_same_figures(dict(report.snapshot.get_metrics()), dict(live_metrics), live_metrics["completed_calls"])
    lines = (tmp_path / "run.jsonl").read_bytes().count(b"\n")
    assert (report.records, report.foreign_lines, report.torn_tails) == (lines, 0, 0)


WORKER = """
import sys
sys.path.insert(0, sys.argv[1])
import multiprocessing
from pathlib import Path
from test_report import live_log

def work(folder, worker):
    metrics = live_log(Path(folder) / f"worker-{worker}.jsonl", f"w{worker}", 40, worker * 7_000_000)
    return metrics.snapshot().to_json()

if __name__ == "__main__":
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        snapshots = pool.starmap(work, [(sys.argv[2], worker) for worker in range(3)])
    print(json.dumps(snapshots))
"""


def test_logs_of_several_workers_replay_to_their_merged_figures(backend: str, tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    script = tmp_path / "workers.py"
    script.write_text("import json\n" + WORKER)
    done = subprocess.run([sys.executable, str(script), str(Path(__file__).parent), str(folder)],
                          capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": PACKAGE_PARENT, "RLM_TOOLKIT_BACKEND": backend, "PATH": ""})
    assert done.returncode == 0, done.stderr
    merged = MetricsSnapshot.merge(MetricsSnapshot.from_json(text) for text in json.loads(done.stdout))
    # Not logs: a torn-tail sidecar and another file.
    (folder / "worker-0.jsonl.torn").write_text('{"ts":"2026-12-01T17:03:28.000000Z","event":"retry"}\n')
    (folder / "notes.txt").write_text("not a log\n")

    report = replay_logs([folder], backend=backend)  # type: ignore[arg-type]
    assert [Path(file.path).name for file in report.files] == ["worker-0.jsonl", "worker-1.jsonl", "worker-2.jsonl"]
    live = merged.get_metrics()
    assert live["total_calls"] == 3 * 41 and live["open_runs"] == 3
    assert_same_figures(dict(report.snapshot.get_metrics()), dict(live), live["completed_calls"])
    assert sum(calls for _, calls in report.calls_per_minute) == live["completed_calls"]
    assert [call.latency_ms for call in report.slowest] == sorted((call.latency_ms for call in report.slowest),
                                                                  reverse=True)


def test_foreign_lines_and_a_torn_tail_are_counted_and_skipped(backend: str, tmp_path: Path) -> None:
    clean = tmp_path / "clean.jsonl"
    live_log(clean, "c", 30)
    lines = clean.read_bytes().splitlines(keepends=True)
    foreign = [b"garbage\n", b"[1, 2]\n", b'{"event": "llm_start"}\n', b"\n",
               b'{"ts": "2026-12-01T17:03:28.000000Z", "event": "checkpoint"}\n',
               b'{"ts": "2026-02-30T00:00:00.000000Z", "event": "retry"}\n', b"\xff\xfe\n"]
    mixed = tmp_path / "mixed.jsonl"
    body = b"".join(line for pair in zip(lines, foreign * len(lines)) for line in pair)
    mixed.write_bytes(body + lines[0][:40])

    clean_report = replay_logs([clean], backend=backend)  # type: ignore[arg-type]
    mixed_report = replay_logs([mixed], backend=backend)  # type: ignore[arg-type]
    assert (mixed_report.records, mixed_report.foreign_lines, mixed_report.torn_tails) == (len(lines), len(lines), 1)
    assert mixed_report.snapshot == clean_report.snapshot

    # A torn tail that is a whole record (only its newline missing) is replayed.
    whole_tail = tmp_path / "whole-tail.jsonl"
    whole_tail.write_bytes(b"".join(lines)[:-1])
    tail_report = replay_logs([whole_tail], backend=backend)  # type: ignore[arg-type]
    assert (tail_report.records, tail_report.foreign_lines, tail_report.torn_tails) == (len(lines), 0, 1)
    assert tail_report.snapshot == clean_report.snapshot


RECORD = '{"ts":"2026-12-01T17:03:%02d.%06dZ","event":"%s","run_id":%s,"model":%s%s}'
HOSTILE_LINES = [
    RECORD % (1, 0, "llm_start", '"s\\ud800x"', '"gpt-4o"', ""),
    RECORD % (2, 5, "llm_end", '"s\\ud800x"', '"gpt-4o\\udc00"', ',"prompt_tokens":3,"response":"\\udbff"'),
    RECORD % (2, 6, "llm_start", '"p\\ud83d\\ude00"', '"gpt-\\u0034o"', ""),
    RECORD % (3, 7, "llm_end", '"p\\ud83d\\ude00"', "null", ',"total_tokens":-1,"ttft_ms":1e400'),
    RECORD % (4, 0, "llm_start", "5", "7", ""),
    RECORD % (4, 1, "llm_end", "5", "[]", ',"completion_tokens":1.5,"cached_tokens":"7","ttft_ms":true'),
    RECORD % (5, 0, "llm_start", '"big"', '"m"', ""),
    RECORD % (5, 2, "llm_end", '"big"', '"m"', ',"prompt_tokens":18446744073709551615,"completion_tokens":'
              '18446744073709551616,"reasoning_tokens":' + "9" * 5000 + ',"ttft_ms":' + "9" * 5000),
    RECORD % (6, 0, "llm_end", '"never-started"', '"m"', ',"prompt_tokens":null,"ttft_ms":-0'),
    RECORD % (6, 1, "retry", "null", "null", ',"nested":' + "[" * 60 + "{}" + "]" * 60),
    # Nested as deep as a record may be (512 levels, its own object counted), one deeper, far deeper.
    RECORD % (6, 2, "retry", "null", "null", ',"nested":"[[",' + '"n":' + "[" * 510 + "{}" + "]" * 510),
    RECORD % (6, 3, "retry", "null", "null", ',"n":' + "[" * 511 + "{}" + "]" * 511),
    RECORD % (6, 4, "retry", "null", "null", ',"n":' + "[" * 100_000 + "]" * 100_000),
    '{"ts":"2026-12-01T17:03:07.000000Z","\\u0065vent":"retry","event":"nope","event":"retry"}',
    '{"ts":"2026-12-01T17:03:07.000000Z","event":"retry","event":5}',
    '{"ts":"2026-12-01T17:03:07.000000Z","event":"retry","x":NaN}',
    '{"ts":"2026-12-01T17:03:07.000000Z","event":"retry","x":[1,]}',
    '{"ts":"2026-12-01T17:03:07.000000Z","event":["retry"]}',
    '{"ts":"2026-12-01T17:03:07.000000Z","event":"ret\\ud800ry"}',
    '{"ts":"2026-12-01T17:03:07.000000","event":"retry"}',
    '{"ts":"1969-12-31T23:59:59.999999Z","event":"retry"}',
    '{"ts":"2024-02-29T23:59:59.999999Z","event":"retry"}  \r',
    '{"ts":"2026-12-01T17:03:07.000000Z","event":"retry"}{}',
    '\ufeff{"ts":"2026-12-01T17:03:07.000000Z","event":"retry"}',
    "[1, 2, 3]",
    "not json at all",
    "",
    '"a string"',
    '{"ts":"2026-12-01T17:03:08.000000Z","event":"memory_store","x":"\t"}',
]


def _fuzzed(rng: random.Random, line: bytes) -> bytes:
    cut = rng.randrange(len(line) + 1)
    match rng.randrange(4):
        case 0:
            return line[:cut]
        case 1:
            return line[:cut] + bytes([rng.randrange(256)]) + line[cut + 1:]
        case 2:
            return line[:cut] + rng.choice([b"\\", b'"', b"\\u", b"\\ud800", b"}", b",", b" "]) + line[cut:]
        case _:
            return line


def _replayed(report: LogReport) -> tuple[Any, ...]:
    return (report.snapshot.to_json(), report.records, report.foreign_lines, report.torn_tails, report.slowest,
            report.calls_per_minute, [(model, snapshot.to_json()) for model, snapshot in report.by_model.items()])


def test_both_backends_read_hostile_lines_alike(tmp_path: Path) -> None:
    hostile = tmp_path / "hostile.jsonl"
    hostile.write_bytes("\n".join(HOSTILE_LINES).encode("utf-8") + b"\n" + b'{"ts":"2026-12-01T17:03:09.0')
    by_backend = {backend: replay_logs([hostile], backend=backend) for backend in ("rust", "python")}
    assert _replayed(by_backend["rust"]) == _replayed(by_backend["python"])
    report = by_backend["rust"]
    assert (report.records, report.foreign_lines, report.torn_tails) == (13, 16, 1)
    metrics = report.snapshot.get_metrics()
    assert (metrics["total_calls"], metrics["completed_calls"], metrics["retries"]) == (4, 5, 4)
    # Lone surrogates read as three U+FFFD each (as the metrics sink reads them), models with them as unknown.
    # A run id that is not a string is "", as a missing one.
    assert [call.run_id for call in report.slowest] == ["s\ufffd\ufffd\ufffdx", "p\U0001f600", "big", ""]
    assert list(metrics["by_model"]) == ["gpt-4o", "unknown", "m"]
    assert metrics["by_model"]["m"]["prompt_tokens"] == 2**64 - 1
    assert (metrics["by_model"]["m"]["completion_tokens"], metrics["by_model"]["m"]["reasoning_tokens"]) == (0, 0)
    assert metrics["avg_ttft_ms"] == 0.0  # only the -0 of "never-started" was a finite time
    # Each model's own figures: the end of "s\ud800x" (a model with a lone surrogate) counts under its
    # start's gpt-4o with the start's latency; the retries name no open run, so no model has one.
    own = {model: snapshot.get_metrics() for model, snapshot in report.by_model.items()}
    assert list(own) == ["gpt-4o", "unknown", "m"]
    assert [(figures["total_calls"], figures["completed_calls"], figures["retries"]) for figures in own.values()] == \
           [(2, 2, 0), (1, 1, 0), (1, 2, 0)]
    assert own["gpt-4o"]["max_latency_ms"] == pytest.approx(1000.005)

    # Mangled copies of real records: cut, a byte changed, an escape or quote put in.
    real = tmp_path / "real.jsonl"
    live_log(real, "f", 40)
    rng = random.Random(7)
    fuzzed = tmp_path / "fuzzed.jsonl"
    fuzzed.write_bytes(b"\n".join(_fuzzed(rng, line) for line in real.read_bytes().splitlines() * 3) + b"\n")
    by_backend = {backend: replay_logs([fuzzed], backend=backend) for backend in ("rust", "python")}
    assert _replayed(by_backend["rust"]) == _replayed(by_backend["python"])
    assert by_backend["rust"].foreign_lines > 0 and by_backend["rust"].records > 0


PERCENTILE_FIELDS = ("p50_latency_ms", "p95_latency_ms", "p99_latency_ms", "p50_ttft_ms", "p95_ttft_ms",
                     "p99_ttft_ms")


def test_each_model_gets_its_own_retries_and_percentiles(backend: str, tmp_path: Path) -> None:
    models = ("gpt-4o", "in-house")
    overall = MetricsCallback(backend=backend)  # type: ignore[arg-type]
    of_model = {model: MetricsCallback(backend=backend) for model in models}  # type: ignore[arg-type]
    retries = dict.fromkeys(models, 0)
    rng = random.Random(3)
    paths = [tmp_path / "first.jsonl", tmp_path / "second.jsonl"]
    now_us = 0
    for path in paths:
        log = FileLogCallback(path)
        for index in range(150):
            model = models[index % 3 == 0]
            manager = CallbackManager([overall, log, of_model[model]])
            run_id = f"{path.stem}-{index}"
            manager.on_llm_start("prompt", run_id=run_id, model=model, timestamp=at(now_us))
            for attempt in range(rng.choice((0, 0, 1, 2)) if model == "gpt-4o" else index % 2):
                manager.on_retry(attempt + 1, 3, RuntimeError("429"), run_id=run_id, timestamp=at(now_us + attempt))
                retries[model] += 1
            # gpt-4o is slow; in-house fast and streamed.
            now_us += rng.randrange(1_000, 9_000_000) if model == "gpt-4o" else rng.randrange(100, 20_000)
            if index % 10 == 7:
                manager.on_error(RuntimeError("boom"), run_id=run_id, model=model, timestamp=at(now_us))
                continue
            ttft_ms = rng.uniform(1.0, 50.0) if model == "in-house" else None
            manager.on_llm_end(LLMResponse("answer", model=model, usage=Usage(10, 5, 15)), run_id=run_id,
                               model=model, ttft_ms=ttft_ms, timestamp=at(now_us))
        # A retry of a call never started: counted overall, under no model.
        CallbackManager([overall, log]).on_retry(1, 3, RuntimeError("429"), run_id="unknown-run", timestamp=at(now_us))
        log.close()

    report = replay_logs(paths, backend=backend)  # type: ignore[arg-type]
    assert list(report.by_model) == ["in-house", "gpt-4o"]
    assert report.snapshot.get_metrics()["retries"] == sum(retries.values()) + 2
    for model in models:
        own = report.by_model[model].get_metrics()
        live = of_model[model].get_metrics()
        assert own["retries"] == retries[model] > 0, model
        assert {name: own[name] for name in PERCENTILE_FIELDS} == \
               {name: live[name] for name in PERCENTILE_FIELDS}, model  # type: ignore[literal-required]
        assert (own["total_calls"], own["completed_calls"], own["errors"]) == \
               (live["total_calls"], live["completed_calls"], live["errors"]) == \
               {"gpt-4o": (200, 180, 20), "in-house": (100, 90, 10)}[model]
        # The model's own row is its row of the whole report.
        assert own["by_model"] == {model: report.snapshot.get_metrics()["by_model"][model]}
    slow, fast = (report.by_model[model].get_metrics() for model in ("gpt-4o", "in-house"))
    assert slow["p50_latency_ms"] > 100 * fast["p50_latency_ms"]
    assert slow["p50_ttft_ms"] is None and fast["p50_ttft_ms"] is not None


def test_an_end_naming_another_model_than_its_start_keeps_the_latency(backend: str, tmp_path: Path) -> None:
    # A server answering for a dated snapshot of the model asked for; the call's start is in another file.
    path_a, path_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    path_a.write_text(json.dumps({"ts": iso_utc(at(0)), "event": "llm_start", "run_id": "r", "model": "gpt-4o"}) + "\n"
                      + json.dumps({"ts": iso_utc(at(10)), "event": "retry", "run_id": "r", "model": None}) + "\n")
    path_b.write_text(json.dumps({"ts": iso_utc(at(250_000)), "event": "llm_end", "run_id": "r",
                                  "model": "gpt-4o-2024-08-06", "prompt_tokens": 4, "completion_tokens": 2}) + "\n")
    report = replay_logs([path_a, path_b], backend=backend)  # type: ignore[arg-type]
    asked, answered = (report.by_model[model].get_metrics() for model in ("gpt-4o", "gpt-4o-2024-08-06"))
    assert (asked["total_calls"], asked["completed_calls"], asked["retries"], asked["open_runs"]) == (1, 0, 1, 0)
    assert (answered["total_calls"], answered["completed_calls"], answered["retries"]) == (0, 1, 0)
    assert answered["p50_latency_ms"] == report.snapshot.get_metrics()["p50_latency_ms"] == pytest.approx(250.0, abs=0.5)
    assert answered["by_model"]["gpt-4o-2024-08-06"]["cost_usd"] == \
           report.snapshot.get_metrics()["by_model"]["gpt-4o-2024-08-06"]["cost_usd"]


def test_the_slowest_calls_and_calls_per_minute_across_files(backend: str, tmp_path: Path) -> None:
    def write(path: Path, calls: list[tuple[str, int, int]]) -> None:
        lines = []
        for run_id, start_us, end_us in calls:
            for event, micros in (("llm_start", start_us), ("llm_end", end_us)):
                lines.append(json.dumps({"ts": iso_utc(at(micros)), "event": event, "run_id": run_id, "model": "m"}))
        path.write_text("\n".join(lines) + "\n")

    minute = 60_000_000
    write(tmp_path / "a.jsonl", [("a1", 0, 30_000), ("a2", minute, minute + 50_000), ("a3", 0, 10_000)])
    write(tmp_path / "b.jsonl", [("b1", 0, 50_000), ("b2", 2 * minute, 2 * minute + 40_000)])
    report = replay_logs([tmp_path], backend=backend, slowest=4)  # type: ignore[arg-type]
    # Equal latencies: the one of the file replayed first ranks first.
    assert [(call.run_id, round(call.latency_ms, 3)) for call in report.slowest] == \
           [("a2", 50.0), ("b1", 50.0), ("b2", 40.0), ("a1", 30.0)]
    assert [Path(call.path).name for call in report.slowest] == ["a.jsonl", "b.jsonl", "b.jsonl", "a.jsonl"]
    first_minute = (BASE_US // minute) * 60
    assert report.calls_per_minute == ((first_minute, 3), (first_minute + 60, 1), (first_minute + 120, 1))
    assert replay_logs([tmp_path], backend=backend, slowest=0).slowest == ()  # type: ignore[arg-type]


def test_missing_or_empty_paths_are_errors_naming_them(tmp_path: Path) -> None:
    with pytest.raises(LogReadError, match="nope.jsonl: no such file or folder"):
        replay_logs([tmp_path / "nope.jsonl"])
    with pytest.raises(LogReadError, match="no \\*.jsonl log in this folder"):
        replay_logs([tmp_path])


# -- the command --------------------------------------------------------------------------------------


def test_the_command_prints_the_figures_and_writes_json_and_a_plot(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    live = live_log(tmp_path / "run.jsonl", "cli", 30)
    snapshot_path, plot_path = tmp_path / "merged.json", tmp_path / "plot.png"
    assert main(["report", str(tmp_path), "--slowest", "3", "--json", str(snapshot_path),
                 "--plot", str(plot_path)]) == 0
    out = capsys.readouterr().out
    report = replay_logs([tmp_path], slowest=3)
    live_metrics = live.get_metrics()
    model_table = out.split("Per model (latency and TTFT in ms)\n")[1].split("\n\n")[0].splitlines()[2:]
    rows = {line.split()[0]: line.split()[1:4] for line in model_table}
    assert rows == {name: [str(row["calls"]), str(row["completed_calls"]), str(row["prompt_tokens"])]
                    for name, row in live_metrics["by_model"].items()}
    # Retries, then latency and TTFT p50 / p95 / p99 of each model's own snapshot ("-" without a sample).
    own_rows = {line.split()[0]: line.split()[7:] for line in model_table}
    expected_rows = {}
    for name, snapshot in report.by_model.items():
        own = snapshot.get_metrics()
        latencies = [f"{own[field]:.1f}" if own["completed_calls"] else "-" for field in PERCENTILE_FIELDS[:3]]  # type: ignore[literal-required]
        ttfts = ["-" if own[field] is None else f"{own[field]:.1f}" for field in PERCENTILE_FIELDS[3:]]  # type: ignore[literal-required]
        expected_rows[name] = [str(own["retries"]), *latencies, *ttfts]
    assert own_rows == expected_rows
    assert sum(int(row[0]) for row in own_rows.values()) == live_metrics["retries"] == 4
    assert re.search(r"^  calls +(\d+)$", out, re.MULTILINE)[1] == str(live_metrics["total_calls"])  # type: ignore[index]
    slow_rows = out.split("Slowest 3 calls\n")[1].split("\n\n")[0].splitlines()[2:]
    assert [row.split()[2] for row in slow_rows] == [call.run_id for call in report.slowest]
    assert len(report.slowest) == 3
    for verdict_word in ("pass", "fail", "issue"):
        assert verdict_word not in out.lower()
    assert MetricsSnapshot.from_json(snapshot_path.read_text()) == report.snapshot
    assert plot_path.read_bytes()[:8] == PNG_SIGNATURE

    python_snapshot = tmp_path / "python.json"
    assert main(["report", str(tmp_path / "run.jsonl"), "--backend", "python", "--slowest", "0",
                 "--json", str(python_snapshot)]) == 0
    python_out = capsys.readouterr().out
    assert python_snapshot.read_text() == snapshot_path.read_text()
    assert "Slowest" not in python_out

    def figures(text: str) -> str:
        return text.split("Per model")[1].split("\n\n")[0] + text.split("Overall\n")[1].split("\n\n")[0]

    assert figures(python_out) == figures(out)


def test_the_command_refuses_a_missing_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "absent")]) == 2
    assert capsys.readouterr().err == (f"rlm-toolkit: error: {tmp_path / 'absent'}: no such file or folder; give "
                                       "JSONL logs or folders holding them\n")


WITHOUT_MATPLOTLIB = """
import sys

class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "matplotlib":
            raise ImportError(f"No module named {name!r}")

sys.meta_path.insert(0, Missing())
from rlm_toolkit.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_the_plot_without_matplotlib_names_the_extra_and_writes_nothing(tmp_path: Path) -> None:
    live_log(tmp_path / "run.jsonl", "np", 5)
    plot_path, snapshot_path = tmp_path / "plot.png", tmp_path / "merged.json"
    done = subprocess.run([sys.executable, "-c", WITHOUT_MATPLOTLIB, "report", str(tmp_path), "--plot",
                           str(plot_path), "--json", str(snapshot_path)],
                          capture_output=True, text=True, timeout=60, env={"PYTHONPATH": PACKAGE_PARENT})
    assert done.returncode == 2
    assert done.stderr == f"rlm-toolkit: error: --plot needs matplotlib, which is not installed: {PLOT_EXTRA}\n"
    assert done.stdout == ""
    assert not plot_path.exists() and not snapshot_path.exists()
