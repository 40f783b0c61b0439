"""The JSONL log file: shared by several processes, torn by a killed writer, foreign, full, renamed, deleted,
stuck, closed, misconfigured. Runs per backend."""

from __future__ import annotations

import fcntl
import json
import logging
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

from rlm_toolkit import CallbackConfigError, LogClosedError, LogFileError
from rlm_toolkit.callbacks import BaseCallback, CallbackManager, FileLogCallback, MetricsCallback
from rlm_toolkit.errors import NotAJsonlLogError


def whole_lines(path: Path) -> list[dict[str, Any]]:
    """The file's records; fails unless every line is a whole JSON object and the file ends with a newline."""
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), f"the file ends in a partial line: {data[-80:]!r}"
    records = [json.loads(line) for line in data.decode("utf-8").split("\n")[:-1]]
    assert all(isinstance(record, dict) for record in records)
    return records


def sidecar_records(path: Path) -> list[dict[str, Any]]:
    sidecar = Path(f"{path}.torn")
    return [json.loads(line) for line in sidecar.read_text().splitlines()] if sidecar.exists() else []


def run_script(script: str, backend: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "RLM_TOOLKIT_BACKEND": backend})


class ErrorWatcher(BaseCallback):
    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    def on_error(self, error: BaseException, **kwargs: Any) -> None:
        self.errors.append(error)


# -- several writers, torn tails ------------------------------------------------------------------------

HALF_A_RECORD = """
    import os, sys
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
    os.write(fd, b'{"event":"from_a_dead_writer","prompt":"cut of')
    os._exit(0)
"""


def test_a_dead_co_writers_torn_tail_is_moved_aside_before_the_next_batch(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "shared.jsonl"
    log = FileLogCallback(path)
    manager = CallbackManager([log])
    manager.on_llm_start("first", run_id="1")
    log.flush()
    size_before = path.stat().st_size
    assert run_script(HALF_A_RECORD, backend, str(path)).returncode == 0
    manager.on_llm_start("second", run_id="2")
    log.close()
    assert [record["run_id"] for record in whole_lines(path)] == ["1", "2"]
    [moved] = sidecar_records(path)
    assert moved["log"] == str(path) and moved["offset"] == size_before
    assert moved["fragment"] == '{"event":"from_a_dead_writer","prompt":"cut of'
    assert moved["length"] == len(moved["fragment"])


def test_a_torn_tail_at_open_is_moved_aside_and_non_utf8_bytes_are_kept_as_base64(backend: str,
                                                                                  tmp_path: Path) -> None:
    path = tmp_path / "torn.jsonl"
    path.write_bytes(b'{"a":1}\n{"b":"caf\xc3')
    FileLogCallback(path).close()
    assert path.read_bytes() == b'{"a":1}\n'
    [moved] = sidecar_records(path)
    assert (moved["offset"], moved["length"], moved["fragment_base64"]) == (8, 10, "eyJiIjoiY2Fmww==")
    assert moved["torn_at"].endswith("Z")


def test_a_whole_record_missing_its_newline_is_kept(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "document.jsonl"
    path.write_bytes(b'{"a": 1, "b": [true, null]}')
    with FileLogCallback(path) as log:
        CallbackManager([log]).on_llm_start("appended")
    records = whole_lines(path)
    assert records[0] == {"a": 1, "b": [True, None]} and records[1]["prompt"] == "appended"
    assert sidecar_records(path) == []


def test_a_live_writers_lock_is_respected_by_the_repair(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "locked.jsonl"
    log = FileLogCallback(path)
    manager = CallbackManager([log])
    other_writer = os.open(path, os.O_WRONLY | os.O_APPEND)
    # Another process's writer in the middle of its batch: it holds the lock and its line is half written.
    fcntl.flock(other_writer, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(other_writer, b'{"from":"the other')
    manager.on_llm_start("mine", run_id="mine")
    flushing = threading.Thread(target=log.flush)
    flushing.start()
    flushing.join(0.3)
    assert flushing.is_alive(), "the batch was written while another writer held the file"
    os.write(other_writer, b' writer"}\n')
    fcntl.flock(other_writer, fcntl.LOCK_UN)
    os.close(other_writer)
    flushing.join(10)
    log.close()
    records = whole_lines(path)
    assert records[0] == {"from": "the other writer"} and records[1]["run_id"] == "mine"
    assert sidecar_records(path) == []


def test_opening_waits_for_a_live_writer_before_judging_the_tail(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "busy.jsonl"
    path.write_bytes(b'{"n":1}\n')
    other_writer = os.open(path, os.O_WRONLY | os.O_APPEND)
    fcntl.flock(other_writer, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(other_writer, b'{"n":')
    opened: list[FileLogCallback] = []
    opening = threading.Thread(target=lambda: opened.append(FileLogCallback(path)))
    opening.start()
    opening.join(0.3)
    assert opening.is_alive(), "the log was opened while another writer held the file"
    os.write(other_writer, b'2}\n')
    fcntl.flock(other_writer, fcntl.LOCK_UN)
    os.close(other_writer)
    opening.join(10)
    opened[0].close()
    assert path.read_bytes() == b'{"n":1}\n{"n":2}\n' and sidecar_records(path) == []


CO_WRITER = """
    import sys
    from rlm_toolkit.callbacks import CallbackManager, FileLogCallback
    log = FileLogCallback(sys.argv[1], buffer_bytes=8 << 20, max_pending_bytes=16 << 20)
    manager = CallbackManager([log])
    print("ready", flush=True)
    index = 0
    while True:
        manager.on_llm_start("v" * 300_000, run_id=f"victim-{index}")
        index += 1
"""


def test_a_killed_co_writer_never_corrupts_a_live_writers_lines(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "together.jsonl"
    survivor = FileLogCallback(path, buffer_bytes=512)
    manager = CallbackManager([survivor])
    victim = subprocess.Popen([sys.executable, "-c", textwrap.dedent(CO_WRITER), str(path)], text=True,
                              stdout=subprocess.PIPE, env={**os.environ, "RLM_TOOLKIT_BACKEND": backend})
    assert victim.stdout is not None and victim.stdout.readline() == "ready\n"
    fired = 0
    deadline = time.monotonic() + 0.4
    while time.monotonic() < deadline:
        manager.on_llm_start("s" * 100, run_id=f"survivor-{fired}")
        fired += 1
    # Kill it while the file grows: most likely in the middle of one of its 8 MiB writes.
    size = path.stat().st_size
    while path.stat().st_size == size and time.monotonic() < deadline + 10:
        pass
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    for _ in range(200):
        manager.on_llm_start("s" * 100, run_id=f"survivor-{fired}")
        fired += 1
    survivor.close()
    run_ids = [record["run_id"] for record in whole_lines(path)]
    assert [run_id for run_id in run_ids if run_id.startswith("survivor-")] == [f"survivor-{n}" for n in range(fired)]
    victims = [int(run_id.split("-")[1]) for run_id in run_ids if run_id.startswith("victim-")]
    assert victims == list(range(len(victims)))
    for moved in sidecar_records(path):
        assert moved["fragment"].startswith('{"ts":')


# -- files that are not logs ----------------------------------------------------------------------------

@pytest.mark.parametrize("content", [
    b"plain text notes\n", b"name,age\nbob,3\n", b"\x89PNG\r\n\x1a\n\x00\x00", b'{\n  "pretty": true\n}\n',
    b'[{"a": 1}]\n', b"no newline and no brace", b'{"a": 1} trailing\n{"b": 2}\n',
])
def test_a_file_that_is_not_a_jsonl_log_is_refused_and_left_untouched(backend: str, tmp_path: Path,
                                                                      content: bytes) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    with pytest.raises(NotAJsonlLogError, match="holds something other than a JSONL log.*left untouched"):
        FileLogCallback(path)
    assert path.read_bytes() == content
    assert not Path(f"{path}.torn").exists()


def test_a_log_with_a_first_record_longer_than_what_is_read_is_accepted(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    long_record = json.dumps({"prompt": "x" * 100_000}).encode() + b"\n"
    path.write_bytes(long_record)
    with FileLogCallback(path) as log:
        CallbackManager([log]).on_llm_start("next")
    assert path.read_bytes().startswith(long_record) and len(whole_lines(path)) == 2


# -- a full disk ----------------------------------------------------------------------------------------

FILLING_DISK = """
    import json, resource, signal, sys
    from rlm_toolkit import LogFileError
    from rlm_toolkit.callbacks import CallbackManager, FileLogCallback, MetricsCallback
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    metrics = MetricsCallback()
    log = FileLogCallback(sys.argv[1], buffer_bytes=4096, flush_interval=3600)
    manager = CallbackManager([metrics, log])
    fired = 0
    def fire(count):
        global fired
        for _ in range(count):
            manager.on_llm_start("p" * 300, run_id=str(fired))
            fired += 1
    fire(100)
    log.flush()
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))  # the disk is full at 100,000 bytes
    fire(2_000)
    try:
        log.flush()
    except LogFileError as error:
        flush_error = str(error)
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # space is freed
    fire(500)
    log.close()
    snapshot = metrics.get_metrics()
    print(json.dumps({"fired": fired, "lost": log.lost_events, "metrics_lost": snapshot["lost_events"],
                      "handler_errors": snapshot["handler_errors"], "error_events": snapshot["errors"],
                      "flush_error": flush_error}))
"""


def test_a_disk_that_fills_then_frees_leaves_whole_lines_and_counts_the_lost_ones(backend: str,
                                                                                  tmp_path: Path) -> None:
    path = tmp_path / "full.jsonl"
    completed = run_script(FILLING_DISK, backend, str(path))
    assert completed.returncode == 0, completed.stderr
    outcome = json.loads(completed.stdout)
    assert "File too large" in outcome["flush_error"]
    assert "writing log file" in completed.stderr and "File too large" in completed.stderr
    records = whole_lines(path)
    run_ids = [int(record["run_id"]) for record in records if record["event"] == "llm_start"]
    assert outcome["lost"] > 0 and outcome["handler_errors"] >= 1
    # Each reported write error is also an `error` event, logged like the others.
    assert outcome["fired"] == 2_600
    assert len(records) + outcome["lost"] == outcome["fired"] + outcome["error_events"]
    assert outcome["metrics_lost"] == outcome["lost"]
    assert run_ids[:100] == list(range(100)) and run_ids[-500:] == list(range(2_100, 2_600))
    assert run_ids == sorted(run_ids)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_lines_a_full_disk_refuses_are_counted_and_reported(backend: str, caplog: pytest.LogCaptureFixture) -> None:
    watcher = ErrorWatcher()
    metrics = MetricsCallback()
    log = FileLogCallback("/dev/full", buffer_bytes=1 << 20, flush_interval=3600)
    manager = CallbackManager([metrics, log, watcher])
    for _ in range(10):
        manager.on_llm_start("p" * 200)
    with pytest.raises(LogFileError, match="No space left"):
        log.flush()
    assert watcher.errors == []
    with caplog.at_level(logging.ERROR, logger="rlm_toolkit"):
        manager.on_llm_start("p" * 200)  # the next event reports the failed write
    [error] = watcher.errors
    assert isinstance(error, LogFileError) and "No space left" in str(error)
    [message] = [record.getMessage() for record in caplog.records if record.name == "rlm_toolkit"]
    assert "FileLogCallback(/dev/full)" in message and "No space left" in message
    assert metrics.get_metrics()["lost_events"] == 10 and metrics.get_metrics()["handler_errors"] == 1
    with pytest.raises(LogFileError, match="No space left"):
        log.close()
    # The ten, the event that reported them and the error record it fired.
    assert (log.lost_events, log.dropped_events) == (12, 0)


# -- renamed and deleted --------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["rename", "delete"])
def test_a_renamed_or_deleted_log_is_reported_and_opened_again(backend: str, tmp_path: Path, how: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "rotated.jsonl"
    watcher = ErrorWatcher()
    metrics = MetricsCallback()
    log = FileLogCallback(path)
    manager = CallbackManager([metrics, log, watcher])
    manager.on_llm_start("before", run_id="before")
    log.flush()
    if how == "rename":
        path.rename(tmp_path / "rotated.jsonl.1")
    else:
        path.unlink()
    manager.on_llm_start("after", run_id="after")
    expected = "renamed or replaced while open" if how == "rename" else "deleted while open"
    with pytest.raises(LogFileError, match=expected):
        log.flush()
    with caplog.at_level(logging.ERROR, logger="rlm_toolkit"):
        manager.on_llm_start("later", run_id="later")
    [error] = watcher.errors
    assert isinstance(error, LogFileError) and expected in str(error)
    assert any(expected in record.getMessage() for record in caplog.records)
    assert metrics.get_metrics()["handler_errors"] == 1
    log.close()
    assert [record["run_id"] for record in whole_lines(path)] == ["after", "later", None]
    if how == "rename":
        assert [record["run_id"] for record in whole_lines(tmp_path / "rotated.jsonl.1")] == ["before"]


# -- a file nobody reads --------------------------------------------------------------------------------

STUCK_FIFO = """
    import sys, threading
    from rlm_toolkit.callbacks import CallbackManager, FileLogCallback
    # 400 kB, more than the pipe holds: with "drop" the queue takes it all and the writer thread waits for
    # the pipe; with "block" the producer thread ends up waiting for the pipe too, holding the file.
    log = FileLogCallback(sys.argv[1], close_timeout=1.0, on_full=sys.argv[2], buffer_bytes=4096,
                          max_pending_bytes=1 << 20 if sys.argv[2] == "drop" else 8192)
    manager = CallbackManager([log])
    def produce():
        for index in range(400):
            manager.on_llm_start("x" * 1000, run_id=str(index))
    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    producer.join(2)
    print("exiting", "blocked" if producer.is_alive() else "done", flush=True)
"""


@pytest.mark.parametrize("on_full", ["drop", "block"])
def test_exit_does_not_hang_on_a_fifo_nobody_reads(backend: str, tmp_path: Path, on_full: str) -> None:
    fifo = tmp_path / "stuck.fifo"
    os.mkfifo(fifo)
    # Opened for reading and never read: writers fill the pipe and then wait for ever.
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        started = time.monotonic()
        completed = run_script(STUCK_FIFO, backend, str(fifo), on_full, timeout=30)
        elapsed = time.monotonic() - started
    finally:
        os.close(reader)
    assert completed.stdout == f"exiting {'blocked' if on_full == 'block' else 'done'}\n", completed.stderr
    assert elapsed < 2 + 1.0 + 4, f"exit took {elapsed:.1f} s"
    assert "close() gave up after 1.000 s" in completed.stderr and "lines were not written" in completed.stderr


def test_flush_with_a_timeout_gives_up_on_a_fifo_nobody_reads(backend: str, tmp_path: Path) -> None:
    fifo = tmp_path / "stuck.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    log = FileLogCallback(fifo, close_timeout=0.5, buffer_bytes=1 << 20, max_pending_bytes=1 << 21)
    manager = CallbackManager([log])
    for index in range(200):
        manager.on_llm_start("x" * 1000, run_id=str(index))
    started = time.monotonic()
    with pytest.raises(LogFileError, match="flush gave up after 0.200 s.* lines are still waiting"):
        log.flush(timeout=0.2)
    with pytest.raises(LogFileError, match="close.. gave up after 0.500 s.* lines were not written"):
        log.close()
    assert time.monotonic() - started < 3
    assert 0 < log.lost_events <= 200
    os.close(reader)


# -- signal handlers ------------------------------------------------------------------------------------

FLUSH_FROM_SIGNAL_HANDLER = """
    import signal, sys
    from rlm_toolkit.callbacks import CallbackManager, FileLogCallback
    log = FileLogCallback(sys.argv[1], buffer_bytes=2048)
    manager = CallbackManager([log])
    flushes, done = 0, False
    def on_alarm(signum, frame):
        global flushes
        log.flush(timeout=5) if flushes % 2 else log.flush()
        flushes += 1
        # The next alarm 0.2 ms after this flush, not on a fixed beat: on a slow machine a beat shorter
        # than a flush would leave the events no time between handlers.
        if not done:
            signal.setitimer(signal.ITIMER_REAL, 0.0002)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.0002)
    for index in range(30_000):
        manager.on_llm_start("p" * 100, run_id=str(index))
    done = True
    signal.setitimer(signal.ITIMER_REAL, 0)
    log.close()
    print(flushes)
"""


def test_flush_from_a_signal_handler_interrupting_an_event_is_safe(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "signals.jsonl"
    completed = run_script(FLUSH_FROM_SIGNAL_HANDLER, backend, str(path), timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert int(completed.stdout) > 10
    assert [record["run_id"] for record in whole_lines(path)] == [str(index) for index in range(30_000)]


# -- after close() --------------------------------------------------------------------------------------

def test_a_closed_log_never_silences_the_other_callbacks(backend: str, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []

    class Hook(BaseCallback):
        def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
            seen.append(prompt)

    log = FileLogCallback(tmp_path / "closed.jsonl")
    metrics = MetricsCallback()
    manager = CallbackManager([log, Hook(), metrics])
    manager.on_llm_start("before")
    log.close()
    with caplog.at_level(logging.ERROR, logger="rlm_toolkit"):
        manager.on_llm_start("after")
    assert seen == ["before", "after"]
    assert metrics.get_metrics()["total_calls"] == 2 and metrics.get_metrics()["handler_errors"] == 1
    assert manager.handler_errors == 1
    [message] = [record.getMessage() for record in caplog.records]
    assert "FileLogCallback(" in message and "is closed" in message
    with pytest.raises(LogClosedError, match="is closed"):
        log.on_llm_start("direct")
    assert len(whole_lines(tmp_path / "closed.jsonl")) == 1


# -- configuration --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("option", "value", "accepted"), [
    ("flush_interval", float("nan"), "flush_interval must be a number of seconds from 0.001 to 86400"),
    ("flush_interval", float("inf"), "from 0.001 to 86400"),
    ("flush_interval", 1e300, "from 0.001 to 86400"),
    ("flush_interval", 0, "from 0.001 to 86400"),
    ("flush_interval", -1, "from 0.001 to 86400"),
    ("flush_interval", "1", "from 0.001 to 86400, got '1'"),
    ("flush_interval", True, "got True"),
    ("buffer_bytes", 2**40, "buffer_bytes must be an int from 1 to 67,108,864"),
    ("buffer_bytes", 0, "from 1 to 67,108,864"),
    ("buffer_bytes", 1.5, "got 1.5"),
    ("max_pending_bytes", 2**31, "max_pending_bytes must be an int from 65,536 to 1,073,741,824"),
    ("max_pending_bytes", 100, "from 65,536 to"),
    ("max_field_chars", 8, "max_field_chars must be an int from 16 to 1,073,741,824"),
    ("max_field_chars", True, "got True"),
    ("close_timeout", float("nan"), "close_timeout must be a number of seconds from 0.001 to 3600"),
    ("close_timeout", 0, "from 0.001 to 3600"),
    ("close_timeout", 1e9, "from 0.001 to 3600"),
])
def test_bad_option_values_fail_at_construction(backend: str, tmp_path: Path, option: str, value: Any,
                                                accepted: str) -> None:
    with pytest.raises(CallbackConfigError, match=accepted.replace("(", r"\(")):
        FileLogCallback(tmp_path / "log.jsonl", **{option: value})
    assert not (tmp_path / "log.jsonl").exists()


@pytest.mark.parametrize("value", [0, -5, True, 2.0, "10", 10**9])
def test_bad_max_open_runs_fail_at_construction(backend: str, value: Any) -> None:
    with pytest.raises(CallbackConfigError, match="max_open_runs must be an int from 1 to 10,000,000"):
        MetricsCallback(max_open_runs=value)


def test_an_empty_path_is_named_as_such(backend: str) -> None:
    with pytest.raises(LogFileError, match="log_path is empty"):
        FileLogCallback("")


SIGNALLED_WHILE_WAITING_FOR_THE_LOCK = """
    import signal, sys
    from rlm_toolkit.callbacks import CallbackManager, FileLogCallback
    signal.signal(signal.SIGUSR1, lambda number, frame: None)
    log = FileLogCallback(sys.argv[1], flush_interval=3600)
    manager = CallbackManager([log])
    for index in range(100):
        manager.on_llm_start("p", run_id=str(index))
    print("ready", flush=True)
    sys.stdin.readline()
    log.flush()
    log.close()
    print("flushed", flush=True)
"""


def test_a_signal_while_waiting_for_the_file_lock_costs_no_line(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SIGNALLED_WHILE_WAITING_FOR_THE_LOCK), str(path)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "RLM_TOOLKIT_BACKEND": backend})
    try:
        assert child.stdin is not None and child.stdout is not None and child.stdout.readline() == "ready\n"
        with open(path, "rb") as holder:
            fcntl.flock(holder, fcntl.LOCK_EX)  # another writer in the middle of a batch
            child.stdin.write("flush\n")
            child.stdin.flush()
            time.sleep(0.3)
            for _ in range(3):
                child.send_signal(signal.SIGUSR1)
                time.sleep(0.1)
        out, err = child.communicate(timeout=30)
    finally:
        child.kill()
    assert child.returncode == 0 and out == "flushed\n", err
    assert [record["run_id"] for record in whole_lines(path)] == [str(index) for index in range(100)]
