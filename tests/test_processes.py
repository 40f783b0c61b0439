"""Every accepted event reaches the file from worker processes, on SIGTERM and at exit.

Each case runs a script in a fresh interpreter (a file in tmp_path, so spawned workers can import it) and
counts the lines it left: every expected line exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from rlm_toolkit.callbacks import FileLogCallback

PRELUDE = """
import multiprocessing, os, signal, sys, time
from concurrent.futures import ProcessPoolExecutor
from rlm_toolkit.callbacks import CallbackManager, FileLogCallback

PATH = sys.argv[1]
"""


def run_script(tmp_path: Path, body: str, backend: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(PRELUDE) + textwrap.dedent(body))
    return subprocess.run([sys.executable, str(script), str(tmp_path / "log.jsonl"), *args], text=True,
                          capture_output=True, timeout=timeout, env={**os.environ, "RLM_TOOLKIT_BACKEND": backend})


def run_ids(path: Path) -> Counter[str]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), "the file ends in a partial line"
    return Counter(json.loads(line)["run_id"] for line in data.decode().split("\n")[:-1])


def expected(prefixes: list[str], per_prefix: int) -> Counter[str]:
    return Counter(f"{prefix}-{index}" for prefix in prefixes for index in range(per_prefix))


# -- multiprocessing workers ----------------------------------------------------------------------------

# The parent's log is inherited through fork(); nobody calls flush() or close() in the children.
FORKED_WORKERS = """
log = FileLogCallback(PATH, flush_interval=3600, buffer_bytes=1 << 20)
manager = CallbackManager([log])

def emit(task, events):
    for index in range(events):
        manager.on_llm_start("p" * 40, run_id=f"{task}-{index}")
    return task

if __name__ == "__main__":
    how, tasks, events = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    context = multiprocessing.get_context("fork")
    manager.on_llm_start("parent", run_id="parent-0")
    if how == "process":
        children = [context.Process(target=emit, args=(f"task{task}", events)) for task in range(tasks)]
        for child in children:
            child.start()
        for child in children:
            child.join()
        assert [child.exitcode for child in children] == [0] * tasks
    elif how == "pool":
        with context.Pool(2) as pool:
            assert pool.starmap(emit, [(f"task{task}", events) for task in range(tasks)]) == [f"task{task}" for task in range(tasks)]
    else:
        with ProcessPoolExecutor(2, mp_context=context) as executor:
            list(executor.map(emit, [f"task{task}" for task in range(tasks)], [events] * tasks))
    manager.on_llm_start("parent", run_id="parent-1")
    log.close()
    print("done")
"""


@pytest.mark.parametrize(("how", "tasks", "events"), [
    ("process", 4, 1000), ("pool", 8, 500), ("executor", 8, 500),
    pytest.param("process", 16, 20_000, marks=pytest.mark.slow),
    pytest.param("pool", 32, 20_000, marks=pytest.mark.slow),
])
def test_forked_workers_keep_every_event(backend: str, tmp_path: Path, how: str, tasks: int, events: int) -> None:
    result = run_script(tmp_path, FORKED_WORKERS, backend, how, str(tasks), str(events))
    assert result.returncode == 0 and result.stdout == "done\n", result.stderr
    assert run_ids(tmp_path / "log.jsonl") == expected([f"task{task}" for task in range(tasks)], events) + expected(
        ["parent"], 2
    )


# The event clock in forked children: each child's records carry on from the parent's last timestamp, and no
# process's timestamps ever run backwards (the Rust clock follows the CPU's counter from shared anchors).
FORKED_CLOCK = """
log = FileLogCallback(PATH.replace(".jsonl", "-{pid}.jsonl"))
manager = CallbackManager([log])
for index in range(20_000):
    manager.on_llm_start("p", run_id=f"parent-{index}")
log.flush()
children = []
for child in range(3):
    pid = os.fork()
    if pid == 0:
        manager = CallbackManager([FileLogCallback(PATH.replace(".jsonl", "-{pid}.jsonl"))])
        for index in range(50_000):
            manager.on_llm_start("p", run_id=f"child{child}-{index}")
        manager.callbacks[0].close()
        os._exit(0)
    children.append(pid)
assert all(os.waitpid(pid, 0)[1] == 0 for pid in children)
for index in range(20_000):
    manager.on_llm_start("p", run_id=f"after-{index}")
log.close()
print(time.time())
"""


def test_forked_children_keep_the_clock_running_forwards(backend: str, tmp_path: Path) -> None:
    started = time.time()
    result = run_script(tmp_path, FORKED_CLOCK, backend)
    assert result.returncode == 0, result.stderr
    finished = float(result.stdout)
    logs = sorted(tmp_path.glob("log-*.jsonl"))
    assert len(logs) == 4
    stamps = {path: [datetime.fromisoformat(json.loads(line)["ts"].replace("Z", "+00:00")).timestamp()
                     for line in path.read_text().splitlines()] for path in logs}
    parent = next(path for path in logs if len(stamps[path]) == 40_000)
    before_fork = stamps[parent][19_999]
    for path, times in stamps.items():
        assert all(later >= earlier for earlier, later in zip(times, times[1:])), f"{path.name} ran backwards"
        assert started - 1 <= times[0] and times[-1] <= finished + 1
        if path != parent:
            assert len(times) == 50_000 and times[0] >= before_fork


# A spawned worker starts a fresh interpreter: the task opens its own log on the shared file.
SPAWNED_WORKERS = """
def emit(task, events):
    manager = CallbackManager([FileLogCallback(PATH, flush_interval=3600, buffer_bytes=1 << 20)])
    for index in range(events):
        manager.on_llm_start("p" * 40, run_id=f"{task}-{index}")
    return task

if __name__ == "__main__":
    how, tasks, events = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    context = multiprocessing.get_context("spawn")
    if how == "pool":
        with context.Pool(2) as pool:
            assert pool.starmap(emit, [(f"task{task}", events) for task in range(tasks)]) == [f"task{task}" for task in range(tasks)]
    else:
        with ProcessPoolExecutor(2, mp_context=context) as executor:
            list(executor.map(emit, [f"task{task}" for task in range(tasks)], [events] * tasks))
    print("done")
"""


@pytest.mark.parametrize("how", ["pool", "executor"])
def test_spawned_workers_keep_every_event(backend: str, tmp_path: Path, how: str) -> None:
    result = run_script(tmp_path, SPAWNED_WORKERS, backend, how, "4", "500")
    assert result.returncode == 0 and result.stdout == "done\n", result.stderr
    assert run_ids(tmp_path / "log.jsonl") == expected([f"task{task}" for task in range(4)], 500)


# -- SIGTERM ---------------------------------------------------------------------------------------------

SIGTERMED = """
handler = sys.argv[2]

def own_handler(signum, frame):
    print("own handler", flush=True)
    sys.exit(7)

if handler == "before":
    signal.signal(signal.SIGTERM, own_handler)
log = FileLogCallback(PATH, flush_interval=3600, buffer_bytes=1 << 20)
manager = CallbackManager([log])
if handler == "after":
    signal.signal(signal.SIGTERM, own_handler)
for index in range(1000):
    manager.on_llm_start("p" * 40, run_id=f"main-{index}")
print("ready", flush=True)
if sys.argv[3] == "busy":  # the signal lands while events are being logged
    index = 1000
    while True:
        manager.on_llm_start("p" * 40, run_id=f"main-{index}")
        index += 1
time.sleep(60)
"""


def start_script(tmp_path: Path, body: str, backend: str, *args: str) -> subprocess.Popen[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(PRELUDE) + textwrap.dedent(body))
    return subprocess.Popen([sys.executable, str(script), str(tmp_path / "log.jsonl"), *args], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "RLM_TOOLKIT_BACKEND": backend})


def terminate_when_ready(child: subprocess.Popen[str]) -> tuple[str, str]:
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        child.send_signal(signal.SIGTERM)
        return child.communicate(timeout=30)
    finally:
        child.kill()


def test_sigterm_flushes_every_accepted_line_and_still_kills(backend: str, tmp_path: Path) -> None:
    child = start_script(tmp_path, SIGTERMED, backend, "none", "idle")
    _, err = terminate_when_ready(child)
    assert child.returncode == -signal.SIGTERM, err
    assert run_ids(tmp_path / "log.jsonl") == expected(["main"], 1000)


def test_sigterm_during_logging_leaves_whole_lines_in_order(backend: str, tmp_path: Path) -> None:
    child = start_script(tmp_path, SIGTERMED, backend, "none", "busy")
    started = time.monotonic()
    _, err = terminate_when_ready(child)
    assert child.returncode == -signal.SIGTERM, err
    assert time.monotonic() - started < 10
    # A line being written when the process died may be cut (the kernel can stop a write at a page
    # boundary): the next writer on the file removes it.
    FileLogCallback(tmp_path / "log.jsonl").close()
    counts = run_ids(tmp_path / "log.jsonl")
    assert len(counts) >= 1000
    assert counts == expected(["main"], len(counts))


@pytest.mark.parametrize("handler", ["before", "after"])
def test_a_sigterm_handler_of_the_app_is_left_alone(backend: str, tmp_path: Path, handler: str) -> None:
    child = start_script(tmp_path, SIGTERMED, backend, handler, "idle")
    out, err = terminate_when_ready(child)
    # The app's handler ran (and exited by sys.exit, so the exit flush wrote everything).
    assert child.returncode == 7 and out == "own handler\n", err
    assert run_ids(tmp_path / "log.jsonl") == expected(["main"], 1000)


# -- exit ------------------------------------------------------------------------------------------------

FAILING_NEIGHBOURS = """
logs = []
for number in range(8):
    logs.append(FileLogCallback("/dev/full", flush_interval=3600, buffer_bytes=1 << 20))
    logs.append(FileLogCallback(f"{PATH}.{number}", flush_interval=3600, buffer_bytes=1 << 20))
manager = CallbackManager(logs)
for index in range(100):
    manager.on_llm_start("p", run_id=f"main-{index}")
print("done")
"""


def test_a_failing_log_does_not_stop_the_others_at_exit(backend: str, tmp_path: Path) -> None:
    result = run_script(tmp_path, FAILING_NEIGHBOURS, backend)
    assert result.returncode == 0 and result.stdout == "done\n", result.stderr
    for number in range(8):
        assert run_ids(Path(f"{tmp_path / 'log.jsonl'}.{number}")) == expected(["main"], 100)
    assert result.stderr.count("could not close the log file /dev/full") == 8, result.stderr
