"""FileLogCallback: the JSONL records, the file, and values JSON cannot hold. Runs per backend."""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from rlm_toolkit import CallbackConfigError, LLMResponse, LogClosedError, LogFileError, Usage
from rlm_toolkit.callbacks import CallbackManager, FileLogCallback


def read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def test_one_record_per_event_with_context_and_fields(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "rlm.jsonl"
    log = FileLogCallback(path)
    manager = CallbackManager([log])
    manager.on_llm_start("hi", run_id="r1", parent_run_id="p0", model="gpt-4o", temperature=0.5)
    manager.on_llm_new_token("tok", run_id="r1", model="gpt-4o")
    manager.on_llm_end(LLMResponse("hello", "gpt-4o-2024-08-06", Usage.of(3, 2)), run_id="r1", parent_run_id="p0",
                       ttft_ms=42.5)
    manager.on_tool_start("calc", {"x": 1}, run_id="t1", parent_run_id="r1", tags=["nightly"], metadata={"user": 7},
                          role="helper")
    manager.on_tool_end("calc", "2", run_id="t1", parent_run_id="r1")
    manager.on_memory_store("remember", run_id="m1", role="user")
    manager.on_memory_recall("q", [{"role": "user", "content": "c"}], run_id="m2")
    manager.on_retry(1, 3, TimeoutError("slow"), run_id="r1", model="gpt-4o")
    manager.on_error(ValueError("bad"), run_id="r1", model="gpt-4o")
    log.close()
    records = read_records(path)
    for record in records:
        assert record.pop("ts").endswith("Z")
    assert records == [
        {"event": "llm_start", "run_id": "r1", "parent_run_id": "p0", "model": "gpt-4o", "prompt": "hi",
         "extra": {"temperature": 0.5}},
        {"event": "llm_end", "run_id": "r1", "parent_run_id": "p0", "model": "gpt-4o-2024-08-06",
         "response": "hello", "prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5, "cached_tokens": 0,
         "reasoning_tokens": 0, "ttft_ms": 42.5},
        {"event": "tool_start", "run_id": "t1", "parent_run_id": "r1", "tool_name": "calc", "tool_input": {"x": 1},
         "tags": ["nightly"], "metadata": {"user": 7}, "extra": {"role": "helper"}},
        {"event": "tool_end", "run_id": "t1", "parent_run_id": "r1", "tool_name": "calc", "tool_output": "2"},
        {"event": "memory_store", "run_id": "m1", "parent_run_id": None, "content": "remember",
         "extra": {"role": "user"}},
        {"event": "memory_recall", "run_id": "m2", "parent_run_id": None, "query": "q",
         "results": [{"role": "user", "content": "c"}]},
        {"event": "retry", "run_id": "r1", "parent_run_id": None, "model": "gpt-4o", "attempt": 1,
         "max_attempts": 3, "error": {"type": "TimeoutError", "message": "slow"}},
        {"event": "error", "run_id": "r1", "parent_run_id": None, "model": "gpt-4o",
         "error": {"type": "ValueError", "message": "bad"}},
    ]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_prompts_responses_and_tokens_are_options(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    with FileLogCallback(path, include_prompts=False, include_responses=False, include_tokens=True) as log:
        manager = CallbackManager([log])
        manager.on_llm_start("secret prompt", run_id="r")
        manager.on_llm_new_token("t", run_id="r")
        manager.on_llm_end(LLMResponse("secret answer"), run_id="r")
    text = path.read_text()
    assert "secret" not in text
    assert [record["event"] for record in read_records(path)] == ["llm_start", "llm_new_token", "llm_end"]


def test_appends_to_an_existing_log(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    for prompt in ("one", "two"):
        with FileLogCallback(path) as log:
            CallbackManager([log]).on_llm_start(prompt)
    assert [record["prompt"] for record in read_records(path)] == ["one", "two"]


def test_bad_paths_and_options_fail_at_construction(backend: str, tmp_path: Path) -> None:
    with pytest.raises(LogFileError, match="is a directory"):
        FileLogCallback(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(LogFileError, match="cannot create the folder"):
        FileLogCallback(blocker / "sub" / "log.jsonl")
    # procfs creates no files, whoever asks (root included).
    with pytest.raises(LogFileError, match="cannot open log file .*/proc/self/rlm.jsonl"):
        FileLogCallback("/proc/self/rlm.jsonl")
    with pytest.raises(CallbackConfigError, match="on_full"):
        FileLogCallback(tmp_path / "x.jsonl", on_full="explode")  # type: ignore[arg-type]
    with pytest.raises(CallbackConfigError, match="flush_interval"):
        FileLogCallback(tmp_path / "x.jsonl", flush_interval=0)


def test_close_is_idempotent_and_later_events_raise(backend: str, tmp_path: Path) -> None:
    log = FileLogCallback(tmp_path / "log.jsonl")
    manager = CallbackManager([log])
    manager.on_llm_start("p")
    log.close()
    log.close()
    log.flush()
    assert log.closed
    with pytest.raises(LogClosedError, match="closed"):
        log.on_llm_start("after close")
    manager.on_llm_start("after close")  # through a manager: reported and counted, not raised
    assert manager.handler_errors == 1
    assert len(read_records(tmp_path / "log.jsonl")) == 1


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    __str__ = __repr__


def test_values_json_cannot_hold_are_written_safely(backend: str, tmp_path: Path) -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    deep: Any = "bottom"
    for _ in range(10_000):
        deep = [deep]
    hostile = {
        "bytes": b"\xff\x00ok",
        "set": {1},
        "keys": {1: "int key", None: "none key"},
        "unprintable": Unprintable(),
        "cycle": cycle,
        "deep": deep,
        "surrogate": "lone \ud800 surrogate",
        "nan": math.nan,
        "inf": -math.inf,
        "big": 2**80,
        "object": object,
    }
    path = tmp_path / "log.jsonl"
    with FileLogCallback(path, max_field_chars=100) as log:
        CallbackManager([log]).on_tool_start("hostile", hostile, run_id="r")
        CallbackManager([log]).on_tool_end("long", "x" * 250, run_id="r")
    raw = path.read_bytes()
    raw.decode("utf-8")  # strict UTF-8
    start, end = [json.loads(line) for line in raw.splitlines()]
    written = start["tool_input"]
    assert written["bytes"] == "\\xff\x00ok"
    assert written["set"] == [1]
    assert written["keys"] == {"1": "int key", "None": "none key"}
    assert written["unprintable"] == "<unrepresentable Unprintable>"
    assert "<max depth exceeded>" in json.dumps(written["cycle"])
    assert "<max depth exceeded>" in json.dumps(written["deep"])
    assert written["surrogate"] == "lone \ud800 surrogate"
    assert (written["nan"], written["inf"]) == ("NaN", "-Infinity")
    assert written["big"] == 2**80
    assert written["object"] == "<class 'object'>"
    assert end["tool_output"] == "x" * 100 + "…[truncated 150 chars]"


def test_everything_is_on_disk_at_exit_without_close(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    script = textwrap.dedent(
        f"""
        from rlm_toolkit.callbacks import CallbackManager, FileLogCallback
        manager = CallbackManager([FileLogCallback({str(path)!r}, flush_interval=3600)])
        for index in range(20_000):
            manager.on_llm_start(f"prompt {{index}}", run_id=str(index))
        raise SystemExit(0) if {backend!r} == "never" else RuntimeError("uncaught at exit")
        """
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                               env={**os.environ, "RLM_TOOLKIT_BACKEND": backend})
    assert "uncaught at exit" in completed.stderr
    records = read_records(path)
    assert [record["run_id"] for record in records] == [str(index) for index in range(20_000)]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_write_errors_reach_the_user(backend: str) -> None:
    log = FileLogCallback("/dev/full", buffer_bytes=64, max_pending_bytes=1 << 20)
    manager = CallbackManager([log])
    for _ in range(100):
        manager.on_llm_start("p" * 100)
    with pytest.raises(LogFileError, match="No space left"):
        log.flush()
    log.on_llm_start("p" * 100)
    with pytest.raises(LogFileError, match="No space left"):
        log.close()
    assert log.closed
    log.close()  # the error was raised once; closing again is quiet
