"""FileCallback writes upstream's lines through the buffered JSONL writer of the chosen backend: the same
bytes on both, in the file after ``flush()``, at exit, from forked children and pool workers, on SIGTERM, and
whole when processes share the file. Process cases run a script in a fresh interpreter, with timeouts."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rlm_toolkit import LLMResponse, Usage
from rlm_toolkit.callbacks import CallbackManager, FileCallback, upstream
from rlm_toolkit.errors import InvalidEventError, LLMCallError, LogFileError, NotAJsonlLogError

KEY = "sk-" + "a1B2c3" * 5
FIXED_TIMESTAMP = "2025-01-31T12:00:00.123456Z"

PRELUDE = """
import multiprocessing, os, signal, sys, time
from rlm_toolkit.callbacks import CallbackManager, FileCallback

PATH = sys.argv[1]
"""


def write_script(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(PRELUDE) + textwrap.dedent(body))
    return script


def run_script(tmp_path: Path, body: str, backend: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(write_script(tmp_path, body)), str(tmp_path / "log.jsonl"), *args],
                          text=True, capture_output=True, timeout=60,
                          env={**os.environ, "RLM_TOOLKIT_BACKEND": backend})


def start_script(script: Path, backend: str, *args: str) -> subprocess.Popen[str]:
    """Starts ``script`` (from ``write_script``) on the log next to it."""
    return subprocess.Popen([sys.executable, str(script), str(script.with_name("log.jsonl")), *args],
                            text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "RLM_TOOLKIT_BACKEND": backend})


def run_ids(path: Path) -> Counter[str]:
    """The run ids of the file's lines; every line must be whole."""
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), "the file ends in a partial line"
    return Counter(json.loads(line)["run_id"] for line in data.decode("ascii").split("\n")[:-1])


def expected(prefixes: list[str], per_prefix: int) -> Counter[str]:
    return Counter(f"{prefix}-{index}" for prefix in prefixes for index in range(per_prefix))


def fire_hostile_events(manager: CallbackManager) -> None:
    manager.on_llm_start(f"use {KEY} \u00e9 \ud83d\ude00 lone \ud800 {{\n}}", run_id="c1", model="gpt-4o",
                         tags=["a", KEY], when={1, 2}, ratio=float("nan"), nested={"k": {"deep": None}})
    manager.on_llm_end(LLMResponse("line one\nline two \u2028", "gpt-4o", Usage.of(1, 2)), run_id="c1")
    manager.on_error(LLMCallError(f"rejected {KEY}"), run_id="c2", tool_name=None)


# -- the lines ---------------------------------------------------------------------------------------------


def test_lines_are_upstreams_bytes_and_identical_across_backends(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstream, "_iso_utc_now", lambda: FIXED_TIMESTAMP)
    written = {}
    for backend in ("rust", "python"):
        path = tmp_path / f"{backend}.jsonl"
        with FileCallback(path, backend=backend) as callback:
            fire_hostile_events(CallbackManager([callback]))
        written[backend] = path.read_bytes()
    upstream_lines = [
        {"event": "start", "prompt": "use sk-[REDACTED] \u00e9 \ud83d\ude00 lone \ud800 {\n}",
         "timestamp": FIXED_TIMESTAMP, "run_id": "c1", "model": "gpt-4o", "tags": ["a", "sk-[REDACTED]"],
         "nested": {"k": {"deep": None}}},
        {"event": "end", "response": "line one\nline two \u2028", "timestamp": FIXED_TIMESTAMP, "run_id": "c1"},
        {"event": "error", "error": "rejected sk-[REDACTED]", "timestamp": FIXED_TIMESTAMP, "run_id": "c2",
         "tool_name": None},
    ]
    assert written["rust"] == written["python"] == "".join(json.dumps(line) + "\n" for line in upstream_lines).encode()


def test_lines_reach_the_file_at_flush_and_close_not_before(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    callback = FileCallback(path, flush_interval=3600)
    manager = CallbackManager([callback])
    manager.on_llm_start("one", run_id="r-0")
    assert path.read_bytes() == b"", "a line was written before flush()"
    callback.flush()
    assert run_ids(path) == expected(["r"], 1)
    manager.on_llm_start("two", run_id="r-1")
    callback.flush(timeout=5)
    assert run_ids(path) == expected(["r"], 2)
    with callback:
        manager.on_llm_end("three", run_id="r-2")
    assert callback.closed and run_ids(path) == expected(["r"], 3)
    callback.close()
    assert (callback.dropped_events, callback.lost_events) == (0, 0)
    assert path.stat().st_mode & 0o777 == 0o600


def test_an_upstream_log_is_appended_to_and_a_foreign_file_refused(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    old_lines = (json.dumps({"event": "start", "prompt": "old", "timestamp": FIXED_TIMESTAMP, "run_id": "r-0"})
                 + "\n").encode()
    path.write_bytes(old_lines)
    with FileCallback(path) as callback:
        callback.on_llm_start("new", run_id="r-1")
    assert path.read_bytes().startswith(old_lines) and run_ids(path) == expected(["r"], 2)

    torn = tmp_path / "torn.jsonl"
    torn.write_bytes(old_lines + b'{"event": "sta')  # a writer died mid-line
    with FileCallback(torn) as callback:
        callback.on_llm_start("new", run_id="r-1")
    assert run_ids(torn) == expected(["r"], 2)
    assert '"fragment":"{\\"event\\": \\"sta"' in (tmp_path / "torn.jsonl.torn").read_text()

    foreign = tmp_path / "notes.csv"
    foreign.write_bytes(b"name,age\nbob,3\n")
    with pytest.raises(NotAJsonlLogError, match="holds something other than a JSONL log.*left untouched"):
        FileCallback(foreign)
    assert foreign.read_bytes() == b"name,age\nbob,3\n"


def test_append_line_refuses_what_is_not_one_json_object_line(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with FileCallback(path) as callback:
        core = callback.core
        core.append_line('{"run_id": "r-0"}')
        for bad, reason in [('{"a": 1}\n', "newline"), ('{"a":\n1}', "newline"), ('{"a": 1}{"b": 2}', "not one JSON"),
                            ('[1, 2]', "not one JSON"), ('{"a": NaN}', "not one JSON"), ('{"a": 1', "not one JSON"),
                            ("plain text", "not one JSON"), ('{"a": "\ud800"}', "lone surrogates")]:
            with pytest.raises(InvalidEventError, match=reason):
                core.append_line(bad)
        with pytest.raises(TypeError):
            core.append_line(b'{"a": 1}')
        core.append_line(' {"run_id": "r-1", "\\ud800": [1.5e3, true, null]}\t')
    assert path.read_bytes() == b'{"run_id": "r-0"}\n {"run_id": "r-1", "\\ud800": [1.5e3, true, null]}\t\n'
    assert issubclass(InvalidEventError, ValueError)


def test_a_closed_file_callback_is_reported_through_a_manager_not_raised(backend: str, tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "events.jsonl"
    callback = FileCallback(path)
    manager = CallbackManager([callback])
    manager.on_llm_start("before", run_id="r-0")
    callback.close()
    with caplog.at_level(logging.ERROR, logger="rlm_toolkit"):
        manager.on_llm_start("after", run_id="r-1")
        manager.on_llm_end("after", run_id="r-1")
    assert manager.handler_errors == 2
    assert "is closed; create a new callback" in caplog.text
    assert run_ids(path) == expected(["r"], 1)


def test_a_full_disk_is_reported_at_flush(backend: str) -> None:
    callback = FileCallback("/dev/full")
    manager = CallbackManager([callback])
    manager.on_llm_start("p", run_id="r-0")
    manager.on_llm_end("a", run_id="r-0")
    assert manager.handler_errors == 0
    with pytest.raises(LogFileError, match="No space left"):
        callback.flush()
    assert callback.lost_events == 2
    callback.close()


# -- processes ---------------------------------------------------------------------------------------------

AT_EXIT = """
manager = CallbackManager([FileCallback(PATH, flush_interval=3600, buffer_bytes=1 << 20)])
for index in range(500):
    manager.on_llm_start("p" * 40, run_id=f"main-{index}")
print("done")
"""


def test_lines_are_written_at_interpreter_exit_without_flush_or_close(backend: str, tmp_path: Path) -> None:
    result = run_script(tmp_path, AT_EXIT, backend)
    assert result.returncode == 0 and result.stdout == "done\n", result.stderr
    assert run_ids(tmp_path / "log.jsonl") == expected(["main"], 500)


# The parent's callback is inherited through fork(); nobody calls flush() or close() in the children.
FORKED = """
callback = FileCallback(PATH, flush_interval=3600, buffer_bytes=1 << 20)
manager = CallbackManager([callback])

def emit(task, events):
    for index in range(events):
        manager.on_llm_start("p" * 40, run_id=f"{task}-{index}")
    return task

if __name__ == "__main__":
    how = sys.argv[2]
    context = multiprocessing.get_context("fork")
    manager.on_llm_start("parent", run_id="parent-0")
    if how == "process":
        child = context.Process(target=emit, args=("task0", 300))
        child.start()
        child.join()
        assert child.exitcode == 0
    else:
        with context.Pool(2) as pool:
            assert pool.starmap(emit, [(f"task{task}", 200) for task in range(6)]) == [f"task{task}" for task in range(6)]
    manager.on_llm_start("parent", run_id="parent-1")
    callback.close()
    print("done")
"""


def test_a_forked_child_writes_its_lines(backend: str, tmp_path: Path) -> None:
    result = run_script(tmp_path, FORKED, backend, "process")
    assert result.returncode == 0 and result.stdout == "done\n", result.stderr
    assert run_ids(tmp_path / "log.jsonl") == expected(["task0"], 300) + expected(["parent"], 2)


def test_pool_workers_write_their_lines(backend: str, tmp_path: Path) -> None:
    result = run_script(tmp_path, FORKED, backend, "pool")
    assert result.returncode == 0 and result.stdout == "done\n", result.stderr
    assert run_ids(tmp_path / "log.jsonl") == expected([f"task{task}" for task in range(6)], 200) + expected(
        ["parent"], 2)


SIGTERMED = """
manager = CallbackManager([FileCallback(PATH, flush_interval=3600, buffer_bytes=1 << 20)])
for index in range(1000):
    manager.on_llm_start("p" * 40, run_id=f"main-{index}")
print("ready", flush=True)
index = 1000
while True:  # the signal lands while lines are being queued
    manager.on_llm_start("p" * 40, run_id=f"main-{index}")
    index += 1
"""


def test_sigterm_mid_run_leaves_whole_lines_and_every_accepted_one(backend: str, tmp_path: Path) -> None:
    child = start_script(write_script(tmp_path, SIGTERMED), backend)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=30)
    finally:
        child.kill()
    assert child.returncode == -signal.SIGTERM, err
    # A line being written when the process died may be cut: the next writer on the file moves it aside.
    FileCallback(tmp_path / "log.jsonl").close()
    counts = run_ids(tmp_path / "log.jsonl")
    assert len(counts) >= 1000, "lines accepted before the signal are missing"
    assert counts == expected(["main"], len(counts)), "the lines are not each accepted line once, in a prefix"


SHARING = """
name = sys.argv[2]
callback = FileCallback(PATH, flush_interval=0.001, buffer_bytes=512)
manager = CallbackManager([callback])
print("ready", flush=True)
assert sys.stdin.readline() == "go\\n"  # both processes start logging together
for index in range(3000):
    manager.on_llm_start("p" * (index % 300), run_id=f"{name}-{index}")
callback.close()
print("done")
"""


def test_two_processes_appending_to_one_file_give_whole_lines(backend: str, tmp_path: Path) -> None:
    script = write_script(tmp_path, SHARING)
    children = [start_script(script, backend, name) for name in ("first", "second")]
    results: list[Any] = []
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        for child in children:
            results.append((child.communicate(timeout=60), child.returncode))
    finally:
        for child in children:
            child.kill()
    assert [(out, code) for (out, _), code in results] == [("done\n", 0)] * 2, [err for (_, err), _ in results]
    assert run_ids(tmp_path / "log.jsonl") == expected(["first", "second"], 3000)
