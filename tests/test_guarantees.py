"""The guarantees in the README's "Guarantees" section, one test (or more) each.

Long versions run with `python -m pytest -m slow`; the default run uses smaller counts of the same tests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlm_toolkit import RLM, LLMResponse, LogFileError, Usage
from rlm_toolkit.callbacks import BaseCallback, CallbackManager, ConsoleCallback, FileLogCallback, MetricsCallback
from rlm_toolkit.server import LocalServer

RESPONSE = LLMResponse("r" * 300, "gpt-4o", Usage.of(50, 75))


def read_lines(path: Path) -> list[str]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), "the file ends in a partial line"
    return data.decode("utf-8").split("\n")[:-1]


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# -- concurrency --------------------------------------------------------------------------------------

@pytest.mark.parametrize("events_by_backend", [{"rust": 20_000, "python": 20_000},
                                               pytest.param({"rust": 1_000_000, "python": 100_000},
                                                            marks=pytest.mark.slow)])
def test_threads_give_exact_counts_and_whole_lines(backend: str, tmp_path: Path,
                                                   events_by_backend: dict[str, int]) -> None:
    events_per_thread = events_by_backend[backend]
    metrics = MetricsCallback()
    path = tmp_path / "threads.jsonl"
    log = FileLogCallback(path)
    manager = CallbackManager([metrics, log])

    def emit(thread: int) -> None:
        for index in range(events_per_thread // 2):
            run_id = f"{thread}-{index}"
            manager.on_llm_start("p" * 50, run_id=run_id, model="gpt-4o")
            manager.on_llm_end(RESPONSE, run_id=run_id, model="gpt-4o")

    threads = [threading.Thread(target=emit, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    snapshot = metrics.get_metrics()
    pairs = 8 * events_per_thread // 2
    assert snapshot["total_calls"] == snapshot["completed_calls"] == pairs
    assert snapshot["total_tokens"] == 125 * pairs and snapshot["open_runs"] == 0
    per_thread = [0] * 8
    for line in read_lines(path):
        record = json.loads(line)
        per_thread[int(record["run_id"].split("-")[0])] += 1
    assert per_thread == [events_per_thread] * 8


async def test_asyncio_tasks_give_exact_counts_and_whole_lines(backend: str, tmp_path: Path) -> None:
    metrics = MetricsCallback()
    path = tmp_path / "tasks.jsonl"
    log = FileLogCallback(path)
    manager = CallbackManager([metrics, log])

    async def emit(task: int) -> None:
        for index in range(500):
            manager.on_llm_start("p", run_id=f"{task}-{index}")
            await asyncio.sleep(0)
            manager.on_llm_end(RESPONSE, run_id=f"{task}-{index}")

    await asyncio.gather(*(emit(task) for task in range(50)))
    log.close()
    assert metrics.get_metrics()["completed_calls"] == 25_000
    assert metrics.get_metrics()["p99_latency_ms"] > 0
    assert len([json.loads(line) for line in read_lines(path)]) == 50_000


# -- exit ---------------------------------------------------------------------------------------------

def run_child(script: str, backend: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "RLM_TOOLKIT_BACKEND": backend}, **kwargs)


STREAMING_CHILD = """
    import os, sys
    from rlm_toolkit.callbacks import CallbackManager, FileLogCallback
    manager = CallbackManager([FileLogCallback(sys.argv[1], buffer_bytes=1 << 20)])
    print("ready", flush=True)
    index = 0
    while True:
        manager.on_llm_start("x" * (index % 20_000), run_id=str(index))
        index += 1
        if sys.argv[2] == "exit" and index == 5_000:
            os._exit(3)
"""


@pytest.mark.parametrize("how", ["sigkill", "os_exit"])
def test_a_killed_writer_leaves_only_whole_lines(backend: str, tmp_path: Path, how: str) -> None:
    path = tmp_path / "killed.jsonl"
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(STREAMING_CHILD), str(path),
                              "exit" if how == "os_exit" else "run"], text=True, stdout=subprocess.PIPE,
                             env={**os.environ, "RLM_TOOLKIT_BACKEND": backend})
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    if how == "sigkill":
        deadline = time.monotonic() + 30
        while (not path.exists() or path.stat().st_size == 0) and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.05)  # big multi-page writes are under way by now: a kill usually cuts one
        child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    # A write cut by the kernel when the process died leaves a partial tail; the next writer on the file
    # cuts it, so every line the file holds is whole.
    FileLogCallback(path).close()
    lines = read_lines(path)
    assert lines, "the child wrote nothing"
    assert [json.loads(line)["run_id"] for line in lines] == [str(index) for index in range(len(lines))]


def test_close_twice_then_events_raise_and_exit_still_flushes(backend: str, tmp_path: Path) -> None:
    script = f"""
        from rlm_toolkit.callbacks import CallbackManager, FileLogCallback, MetricsCallback
        from rlm_toolkit import LogClosedError
        open_log = FileLogCallback({str(tmp_path / "open.jsonl")!r}, flush_interval=3600)
        closed_log = FileLogCallback({str(tmp_path / "closed.jsonl")!r})
        CallbackManager([open_log, closed_log]).on_llm_start("before")
        closed_log.close(); closed_log.close()
        try:
            closed_log.on_llm_start("after")
        except LogClosedError as error:
            print("refused:", error)
        metrics = MetricsCallback()
        manager = CallbackManager([closed_log, open_log, metrics])
        manager.on_llm_start("not closed")  # the closed log's refusal is reported, the others still log
        print("handler errors:", manager.handler_errors, metrics.get_metrics()["handler_errors"],
              metrics.get_metrics()["total_calls"])
    """
    child = run_child(script, backend)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert "refused: the log file" in out and "is closed; create a new callback" in out
    assert "handler errors: 1 1 1" in out
    assert "raised while handling 'llm_start'" in err and "is closed" in err
    assert len(read_lines(tmp_path / "closed.jsonl")) == 1
    assert [json.loads(line)["prompt"] for line in read_lines(tmp_path / "open.jsonl")] == ["before", "not closed"]


# -- backpressure -------------------------------------------------------------------------------------

def test_the_default_policy_blocks_and_loses_nothing(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "block.jsonl"
    log = FileLogCallback(path, buffer_bytes=256, max_pending_bytes=512)
    manager = CallbackManager([log])
    for index in range(20_000):
        manager.on_llm_start("p" * 100, run_id=str(index))
    log.close()
    assert len(read_lines(path)) == 20_000


def test_the_drop_policy_counts_what_it_drops(backend: str, tmp_path: Path) -> None:
    metrics = MetricsCallback()
    path = tmp_path / "drop.jsonl"
    log = FileLogCallback(path, buffer_bytes=256, max_pending_bytes=512, on_full="drop")
    manager = CallbackManager([metrics, log])
    for index in range(20_000):
        manager.on_llm_start("p" * 100, run_id=str(index))
    log.close()
    dropped = metrics.get_metrics()["dropped_events"]
    assert dropped == log.dropped_events > 0 and log.lost_events == 0
    assert len(read_lines(path)) + dropped == 20_000


# -- disk errors --------------------------------------------------------------------------------------

@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_reaches_the_user_through_on_error_and_flush(backend: str,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    errors: list[BaseException] = []

    class Watcher(BaseCallback):
        def on_error(self, error: BaseException, **kwargs: Any) -> None:
            errors.append(error)

    metrics = MetricsCallback()
    log = FileLogCallback("/dev/full", buffer_bytes=64)
    manager = CallbackManager([metrics, log, Watcher()])
    deadline = time.monotonic() + 10
    with caplog.at_level(logging.ERROR, logger="rlm_toolkit"):
        while not errors and time.monotonic() < deadline:
            manager.on_llm_start("p" * 200)
            time.sleep(0.001)
    assert errors and isinstance(errors[0], LogFileError) and "No space left" in str(errors[0])
    assert metrics.get_metrics()["handler_errors"] >= 1 and manager.handler_errors >= 1
    [message] = [record.getMessage() for record in caplog.records if record.name == "rlm_toolkit"]
    assert message.startswith("callback FileLogCallback(/dev/full) raised") and "No space left" in message
    with pytest.raises(LogFileError, match="No space left"):
        log.flush()
    manager.on_llm_start("p" * 200)
    with pytest.raises(LogFileError, match="No space left"):
        log.close()  # a write that failed since the flush is raised by close()


# -- hostile values -----------------------------------------------------------------------------------

class Hostile:
    def __init__(self, payload: Any) -> None:
        self.payload = payload

    def __str__(self) -> str:
        raise ValueError("no str")

    def __repr__(self) -> str:
        raise ValueError("no repr")


def reject_constant(name: str) -> Any:
    raise AssertionError(f"non-strict JSON constant {name}")


HOSTILE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(), st.binary(),
              st.builds(Hostile, st.integers()), st.sampled_from([math.nan, math.inf, "\ud800", "\udfff x"])),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.sets(st.integers(), max_size=3), st.tuples(children),
        st.dictionaries(st.one_of(st.text(), st.integers(), st.floats(), st.none(), st.tuples(st.integers())),
                        children, max_size=4),
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=HOSTILE)
def test_hostile_values_always_give_strict_valid_json(tmp_path_factory: Any, value: Any) -> None:
    for backend in ("rust", "python"):
        path = tmp_path_factory.mktemp(backend) / "hostile.jsonl"
        with FileLogCallback(path, backend=backend, max_field_chars=64) as log:
            manager = CallbackManager([log], backend=backend)
            manager.on_tool_start("tool", value, run_id=value if isinstance(value, str) else None, key=value)
            manager.on_memory_recall("q", [value, {"nested": value}])
        lines = read_lines(path)
        assert len(lines) == 2
        for line in lines:
            json.loads(line, parse_constant=reject_constant)


def nested_dicts(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"d": value}
    return value


def unnest(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = value["d"]
    return value


def test_huge_strings_and_deep_nesting_are_capped(backend: str, tmp_path: Path) -> None:
    huge = "a" * 50_000_000
    path = tmp_path / "big.jsonl"
    with FileLogCallback(path, max_field_chars=1000) as log:
        manager = CallbackManager([log])
        manager.on_tool_end("big", {"huge": huge, "deep": nested_dicts(10_000)})
        # A field's value is depth 0: containers at depths 0..63 are written, one at depth 64 is the marker.
        for depth in (64, 65):
            manager.on_tool_end("deep", nested_dicts(depth), nested=nested_dicts(depth - 1))
    big, depth_64, depth_65 = read_lines(path)
    assert len(big) < 5000
    output = json.loads(big)["tool_output"]
    assert output["huge"] == "a" * 1000 + f"…[truncated {50_000_000 - 1000} chars]"
    assert unnest(output["deep"], 63) == "<max depth exceeded>"
    assert unnest(json.loads(depth_64)["tool_output"], 64) == "bottom"
    assert unnest(json.loads(depth_64)["extra"]["nested"], 63) == "bottom"
    assert unnest(json.loads(depth_65)["tool_output"], 64) == "<max depth exceeded>"
    assert unnest(json.loads(depth_65)["extra"]["nested"], 63) == "<max depth exceeded>"


# -- secrets ------------------------------------------------------------------------------------------

def test_api_keys_never_reach_console_or_file(backend: str, tmp_path: Path, server: LocalServer) -> None:
    secret_key = "super-secret-local-api-key-1234"
    lookalike = "sk-proj-" + "A1b2C3d4" * 5
    console_text = _StringStream()
    path = tmp_path / "secrets.jsonl"
    with FileLogCallback(path) as log:
        rlm = RLM.from_openai("gpt-4o", [ConsoleCallback(stream=console_text), log], base_url=server.base_url,
                              api_key=secret_key)
        result = rlm.run(f"my key is {secret_key} and another is {lookalike} and Bearer {'t' * 30}")
    written = path.read_text() + console_text.getvalue()
    assert secret_key in result.answer  # the model saw it; the logs must not
    for leaked in (secret_key, lookalike, "t" * 30):
        assert leaked not in written
    assert "[REDACTED]" in path.read_text() and "[REDACTED]" in console_text.getvalue()
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"


class _StringStream:
    def __init__(self) -> None:
        self._parts: list[str] = []

    def write(self, text: str) -> None:
        self._parts.append(text)

    def flush(self) -> None:
        pass

    def getvalue(self) -> str:
        return "".join(self._parts)


# -- memory -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("starts", [200_000, pytest.param(10_000_000, marks=pytest.mark.slow)])
def test_starts_without_ends_are_capped_and_counted(starts: int) -> None:
    metrics = MetricsCallback(max_open_runs=1000)
    manager = CallbackManager([metrics])
    for index in range(starts // 2):
        manager.on_llm_start("p", run_id=str(index))
    halfway = rss_mb()
    for index in range(starts // 2, starts):
        manager.on_llm_start("p", run_id=str(index))
    snapshot = metrics.get_metrics()
    assert snapshot["open_runs"] == 1000 and snapshot["evicted_runs"] == starts - 1000
    assert rss_mb() - halfway < 10


# -- async ---------------------------------------------------------------------------------------------

async def test_cancelling_arun_loses_no_emitted_event(backend: str, tmp_path: Path, server: LocalServer) -> None:
    seen: list[str] = []

    class SlowAsync(BaseCallback):
        async def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
            await asyncio.sleep(0.05)
            seen.append(prompt)

    path = tmp_path / "cancel.jsonl"
    log = FileLogCallback(path)
    rlm = RLM.from_openai("gpt-4o", [SlowAsync(), log], base_url=server.base_url, api_key=server.api_key)
    server.hang_next(5)
    task = asyncio.create_task(rlm.arun("to be cancelled"))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    log.close()
    assert seen == ["to be cancelled"]
    assert [json.loads(line)["event"] for line in read_lines(path)] == ["run_start", "llm_start"]


# -- fork ---------------------------------------------------------------------------------------------

def test_a_forked_child_gets_a_writer_of_its_own(backend: str, tmp_path: Path) -> None:
    script = f"""
        import os, threading
        from rlm_toolkit.callbacks import CallbackManager, FileLogCallback
        log = FileLogCallback({str(tmp_path / "fork.jsonl")!r})
        manager = CallbackManager([log])
        stop = threading.Event()
        parent_events = []

        def busy() -> None:  # the parent keeps logging while it forks (bounded: a hung child must not fill the disk)
            index = 0
            while not stop.is_set() and index < 300_000:
                manager.on_llm_start("parent", run_id=f"parent-{{index}}")
                index += 1
            parent_events.append(index)

        worker = threading.Thread(target=busy)
        worker.start()
        children = []
        for number in range(3):
            pid = os.fork()
            if pid == 0:
                for index in range(1000):
                    manager.on_llm_start("child", run_id=f"child{{number}}-{{index}}")
                log.close()
                os._exit(0)
            children.append(pid)
        for pid in children:
            assert os.waitpid(pid, 0)[1] == 0
        stop.set()
        worker.join()
        log.close()
        print("done", parent_events[0])
    """
    child = run_child(script, backend)
    try:
        out, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 0 and out.startswith("done "), err
    parent_events = int(out.split()[1])
    run_ids = [json.loads(line)["run_id"] for line in read_lines(tmp_path / "fork.jsonl")]
    # Every line exactly once: a child that also wrote the parent's pending lines would duplicate them.
    for number in range(3):
        assert [run_id for run_id in run_ids if run_id.startswith(f"child{number}-")] == [
            f"child{number}-{index}" for index in range(1000)
        ]
    assert parent_events > 0
    assert [run_id for run_id in run_ids if run_id.startswith("parent-")] == [
        f"parent-{index}" for index in range(parent_events)
    ]
    assert len(run_ids) == 3 * 1000 + parent_events
