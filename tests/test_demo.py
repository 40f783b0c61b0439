"""What `rlm-toolkit demo` shows with no API key: the memory step's recall and every run's start and end."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from test_cli import command_env

DEMO_RUNS = 7
"""Runs in the demo: a plain answer, a streamed one, two tool runs, two memory runs, a retried one."""
RUN_LINE = re.compile(r'run (started|finished) +\[([0-9a-f]{8})\]  (?:-> )?"(.*)"')


@dataclass(frozen=True)
class DemoOutput:
    lines: list[str]
    records: list[dict[str, Any]]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoOutput:
    log_path = tmp_path_factory.mktemp("demo") / "demo.jsonl"
    finished = subprocess.run([sys.executable, "-m", "rlm_toolkit", "demo", "--log", str(log_path)],
                              env=command_env(), capture_output=True, text=True, timeout=60)
    assert finished.returncode == 0, finished.stderr
    records = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines()]
    return DemoOutput(finished.stdout.splitlines(), records)


def section(lines: list[str], number: int) -> list[str]:
    """The lines of the demo's section ``number``, without its title."""
    start = next(index for index, line in enumerate(lines) if line.startswith(f"== {number}. "))
    end = next(index for index, line in enumerate(lines) if index > start and line.startswith("== "))
    return [line for line in lines[start + 1:end] if line]


def test_the_memory_step_answers_from_the_recalled_first_run(demo: DemoOutput) -> None:
    lines = section(demo.lines, 4)

    assert lines[-1] == "answer: Your name is Ada."
    [recall] = [line for line in lines if '"What is my name?" -> ' in line and "memory recall" in line]
    assert recall.endswith('memory recall  "What is my name?" -> 2 results')
    [answer_end] = [line for line in lines if " llm end " in line and line.endswith('-> "Your name is Ada."')]
    assert lines.index(recall) < lines.index(answer_end)


def test_every_run_prints_its_start_and_end(demo: DemoOutput) -> None:
    run_lines = [match.groups() for match in map(RUN_LINE.fullmatch, demo.lines) if match]
    log_runs = [(record["event"], record["run_id"][:8], record.get("prompt", record.get("answer")))
                for record in demo.records if record["event"] in ("run_start", "run_end")]

    assert len(run_lines) == 2 * DEMO_RUNS
    assert [kind for kind, _, _ in run_lines] == ["started", "finished"] * DEMO_RUNS
    assert [(kind, run_id) for kind, run_id, _ in run_lines] == [
        ("started" if event == "run_start" else "finished", run_id) for event, run_id, _ in log_runs
    ]
    for (_, _, shown), (_, _, logged) in zip(run_lines, log_runs):
        assert shown == logged or (shown.endswith("...") and logged.startswith(shown[:-3]))
    assert 'run finished  [' in demo.lines[demo.lines.index("answer: Your name is Ada.") - 1]


def test_the_closing_line_counts_the_run_records_of_the_log(demo: DemoOutput) -> None:
    closing = demo.lines[-1]

    assert closing.startswith("JSONL log (FileLogCallback): ")
    assert closing.endswith(f"({len(demo.records)} lines, {DEMO_RUNS} run_start and {DEMO_RUNS} run_end records)")
    assert [record["event"] for record in demo.records].count("run_start") == DEMO_RUNS
