"""Callbacks, managers, memories, tools and RLMs pickle by configuration: a copy has the options, never the state.

Round trips in this process check what a copy keeps and what it does not; spawn pools check that workers
get working copies (their own clients, writer threads and log files) and send back what they recorded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import pickle
import sys
from collections import Counter
from collections.abc import Iterator
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

import pytest

from rlm_toolkit import RLM, CallbackConfigError, NotPicklableError
from rlm_toolkit.callbacks import (
    BaseCallback,
    CallbackManager,
    ConsoleCallback,
    FileCallback,
    FileLogCallback,
    LoggingCallback,
    MetricsCallback,
    StreamingCallback,
)
from rlm_toolkit.memory import BufferMemory
from rlm_toolkit.server import LocalServer
from rlm_toolkit.tools import Tool
from rlm_toolkit.types import LLMResponse, Usage

POOL_TIMEOUT = 40.0
"""Seconds a pool's tasks may take in all (spawned workers import rlm_toolkit and openai first)."""
OTHER_BACKEND = {"rust": "python", "python": "rust"}
SECRET_KEY = "sk-pickling-test-0123456789abcdefghij"


def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}, worker {os.getpid()}"


def collect_token(token: str) -> None:
    """A token sink defined at module level, so it pickles by name."""


class FailingCallback(BaseCallback):
    def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
        raise RuntimeError("this hook always fails")


class SlowAsyncCallback(BaseCallback):
    async def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
        await asyncio.sleep(30)


def round_trip(obj: Any) -> Any:
    return pickle.loads(pickle.dumps(obj))


def fire_call(callbacks: Any, run_id: str, prompt: str = "hello", backend: str | None = None) -> None:
    """One complete LLM call of model "m" (10 prompt + 5 completion tokens) through a manager of ``callbacks``."""
    manager = callbacks if isinstance(callbacks, CallbackManager) else CallbackManager(callbacks, backend=backend)
    manager.on_llm_start(prompt, run_id=run_id, model="m")
    manager.on_llm_end(LLMResponse("answer", "m", Usage.of(10, 5)), run_id=run_id, model="m")


def backend_of(callback: Any) -> str:
    return "rust" if type(callback.core).__module__ == "rlm_toolkit._core" else "python"


def jsonl_records(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), f"{path} ends in a partial line"
    return [json.loads(line) for line in data.decode().splitlines()]


# -- callbacks: options travel, state does not --------------------------------------------------------------


def test_metrics_callback_unpickles_with_its_options_and_zero_counts(backend: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    explicit_backend = OTHER_BACKEND[backend]
    metrics = MetricsCallback(prices={"m": (1_000_000.0, 2_000_000.0)}, max_open_runs=1,  # $1/$2 a token
                              backend=explicit_backend)
    fire_call([metrics], "parent-call", backend=backend)
    CallbackManager([metrics], backend=backend).on_llm_start("left open", run_id="open-call", model="m")
    assert (metrics.get_metrics()["completed_calls"], metrics.get_metrics()["open_runs"]) == (1, 1)

    monkeypatch.setenv("RLM_TOOLKIT_BACKEND", backend)  # the copy keeps the backend it was built with
    copy = round_trip(metrics)

    assert backend_of(copy) == explicit_backend
    snapshot = copy.get_metrics()
    assert (snapshot["total_calls"], snapshot["completed_calls"], snapshot["total_tokens"], snapshot["open_runs"]) == (
        0, 0, 0, 0)
    fire_call([copy], "copy-call", backend=backend)
    snapshot = copy.get_metrics()
    assert (snapshot["total_calls"], snapshot["completed_calls"]) == (1, 1)
    assert snapshot["total_cost_usd"] == pytest.approx(10 * 1.0 + 5 * 2.0)  # the custom prices travelled
    copy_manager = CallbackManager([copy], backend=backend)
    for run_id in ("open-1", "open-2"):
        copy_manager.on_llm_start("left open", run_id=run_id, model="m")
    assert (copy.get_metrics()["open_runs"], copy.get_metrics()["evicted_runs"]) == (1, 1)  # max_open_runs=1 travelled
    assert metrics.get_metrics()["completed_calls"] == 1


def test_default_backend_travels_as_the_one_chosen(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    metrics, manager = MetricsCallback(), CallbackManager()
    monkeypatch.setenv("RLM_TOOLKIT_BACKEND", OTHER_BACKEND[backend])
    assert backend_of(round_trip(metrics)) == backend
    assert round_trip(manager).backend == backend


def test_file_log_copy_has_no_buffered_lines_and_the_parents_are_written_once(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    log = FileLogCallback(path, include_prompts=False, include_tokens=True, flush_interval=3600)
    for index in range(3):
        fire_call([log], f"parent-{index}", prompt="a secret prompt")
    copy = round_trip(log)

    assert (copy.log_path, copy.wants_token_stream, copy.closed) == (str(path), True, False)
    assert backend_of(copy) == backend
    fire_call([copy], "copy-0", prompt="a secret prompt")
    copy.close()
    assert [record["run_id"] for record in jsonl_records(path)] == ["copy-0", "copy-0"]
    log.close()
    records = jsonl_records(path)
    assert sorted(record["run_id"] for record in records) == sorted(
        ["copy-0"] * 2 + [f"parent-{index}" for index in range(3) for _ in range(2)])
    assert [record for record in records if "prompt" in record] == []  # include_prompts=False travelled


def test_log_path_placeholders_expand_where_the_callback_is_built(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RLM_TOOLKIT_WORKER", raising=False)
    by_pid = FileLogCallback(tmp_path / "run-{pid}.jsonl")
    braces = FileLogCallback(tmp_path / "{{literal}}-{worker}.jsonl")
    monkeypatch.setenv("RLM_TOOLKIT_WORKER", "w7")
    by_worker = FileLogCallback(tmp_path / "run-{worker}.jsonl")
    upstream = FileCallback(tmp_path / "upstream-{worker}.jsonl")

    assert by_pid.log_path == str(tmp_path / f"run-{os.getpid()}.jsonl")
    assert braces.log_path == str(tmp_path / f"{{literal}}-{os.getpid()}.jsonl")
    assert by_worker.log_path == str(tmp_path / "run-w7.jsonl")
    assert (upstream.log_path, upstream.file_path) == (str(tmp_path / "upstream-w7.jsonl"),) * 2
    monkeypatch.setenv("RLM_TOOLKIT_WORKER", "w8")  # a copy expands the template again, for itself
    assert round_trip(by_worker).log_path == str(tmp_path / "run-w8.jsonl")
    assert round_trip(upstream).file_path == str(tmp_path / "upstream-w8.jsonl")
    for log in (by_pid, braces, by_worker, upstream):
        log.close()


def test_a_relative_log_path_travels_as_an_absolute_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    log = FileLogCallback("logs/run.jsonl")
    monkeypatch.chdir(tmp_path / "elsewhere")
    copy = round_trip(log)
    assert copy.log_path == log.log_path == str(tmp_path / "logs" / "run.jsonl")
    log.close()
    copy.close()


@pytest.mark.parametrize("name", ["run-{date}.jsonl", "run-{}.jsonl", "run-{pid:>8}.jsonl", "run-{pid!r}.jsonl",
                                  "run-{.jsonl", "run-}.jsonl"])
def test_a_brace_that_is_no_placeholder_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(CallbackConfigError, match=r"\{pid\} \(the process id\) and \{worker\}") as refused:
        FileLogCallback(tmp_path / name)
    assert "{{ or }} for a literal brace" in str(refused.value)
    with pytest.raises(CallbackConfigError, match=r"\{pid\}"):
        FileCallback(tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_a_worker_label_with_a_path_separator_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLM_TOOLKIT_WORKER", "../escape")
    with pytest.raises(CallbackConfigError, match="RLM_TOOLKIT_WORKER '../escape' cannot be part of a file name"):
        FileLogCallback(tmp_path / "{worker}.jsonl")
    plain = FileLogCallback(tmp_path / "plain.jsonl")  # the label matters only to {worker}
    assert plain.log_path == str(tmp_path / "plain.jsonl")
    plain.close()


def test_console_callback_travels_as_its_options(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    console = ConsoleCallback(verbose=False, show_tokens=False, show_cost=True, stream=sys.stdout, color=False)
    CallbackManager([console]).on_llm_start("hello", run_id="call-1", model="m")
    copy = round_trip(console)
    capsys.readouterr()

    assert (copy.verbose, copy.show_tokens, copy.show_cost, copy.color) == (False, False, True, False)
    assert copy.stream is sys.stdout
    manager = CallbackManager([copy])
    manager.on_llm_end(LLMResponse("answer", "m", Usage.of(10, 5)), run_id="call-1", model="m")
    # no latency: the parent's unfinished call did not travel
    assert capsys.readouterr().out == "[call-1]   llm end        m  cost: unknown\n"


def test_console_callback_on_stderr_gets_the_workers_stderr() -> None:
    assert round_trip(ConsoleCallback(stream=sys.stderr)).stream is sys.stderr
    assert round_trip(ConsoleCallback()).stream is None


def test_console_callback_on_a_stream_of_its_own_cannot_travel(tmp_path: Path) -> None:
    with open(tmp_path / "console.txt", "w") as stream:
        with pytest.raises(NotPicklableError, match=r"leave stream=None .* or pass sys.stdout or sys.stderr"):
            pickle.dumps(ConsoleCallback(stream=stream))


def test_streaming_callback_sends_a_module_level_function_by_name() -> None:
    assert round_trip(StreamingCallback(collect_token))._token_sink is collect_token
    assert round_trip(StreamingCallback())._token_sink is None
    with pytest.raises(NotPicklableError, match=r"StreamingCallback's on_token .* is a lambda.*top level of a module"):
        pickle.dumps(StreamingCallback(lambda token: None))


def test_upstream_callbacks_travel_as_their_options(tmp_path: Path) -> None:
    logger = logging.getLogger("rlm_toolkit.test_pickling")
    assert round_trip(LoggingCallback(logger)).logger is logger
    assert round_trip(LoggingCallback()).logger is logging.getLogger("rlm_toolkit")
    upstream = FileCallback(tmp_path / "upstream.jsonl", flush_interval=3600)
    upstream.on_llm_start("buffered in the parent")
    copy = round_trip(upstream)
    copy.close()
    assert jsonl_records(tmp_path / "upstream.jsonl") == []
    upstream.close()
    assert [record["prompt"] for record in jsonl_records(tmp_path / "upstream.jsonl")] == ["buffered in the parent"]


def test_manager_travels_with_its_callbacks_backend_and_timeout(backend: str) -> None:
    metrics = MetricsCallback()
    manager = CallbackManager([FailingCallback()], backend=OTHER_BACKEND[backend], async_timeout=0.05)
    manager.add(metrics)
    manager.add(SlowAsyncCallback())
    manager.on_llm_start("fails once", run_id="parent-call", model="m")
    assert manager.handler_errors == 2

    copy = round_trip(manager)
    assert copy.backend == OTHER_BACKEND[backend]
    assert [type(callback) for callback in copy.callbacks] == [FailingCallback, MetricsCallback, SlowAsyncCallback]
    assert copy.handler_errors == 0
    assert copy.callbacks[1].get_metrics()["total_calls"] == 0
    copy.on_llm_start("fails again", run_id="copy-call", model="m")  # the slow hook is cancelled after 0.05 s
    assert copy.handler_errors == 2
    assert copy.callbacks[1].get_metrics()["total_calls"] == 1


def test_objects_shared_before_pickling_are_shared_after(backend: str) -> None:
    metrics = MetricsCallback()
    manager, same_metrics = round_trip((CallbackManager([metrics]), metrics))
    assert manager.callbacks == (same_metrics,)


def test_buffer_memory_travels_empty() -> None:
    memory = BufferMemory(max_messages=3)
    memory.store("user", "my name is Ada")
    copy = round_trip(memory)
    assert (copy.max_messages, len(copy), len(memory)) == (3, 0, 1)
    for index in range(5):
        copy.store("user", str(index))
    assert [message["content"] for message in copy.recall("")] == ["2", "3", "4"]


def test_a_subclass_with_a_constructor_of_its_own_travels_as_a_call_of_it(backend: str) -> None:
    class_name = LabelledMetrics.__name__
    copy = round_trip(LabelledMetrics("batch-7", max_open_runs=5))
    assert (type(copy).__name__, copy.label, copy.get_metrics()["total_calls"]) == (class_name, "batch-7", 0)


class LabelledMetrics(MetricsCallback):
    def __init__(self, label: str, **options: Any) -> None:
        super().__init__(**options)
        self.label = label


# -- tools -------------------------------------------------------------------------------------------------


def test_a_tool_of_a_module_level_function_round_trips() -> None:
    tool = Tool.from_function(get_weather)
    copy = round_trip(tool)
    assert (copy.name, copy.fn, copy.description, copy.parameters) == (
        tool.name, get_weather, tool.description, tool.parameters)
    assert copy.invoke({"city": "Oslo"}) == get_weather("Oslo")


def make_closure_tool() -> Tool:
    prefix = "hey "

    def greet(name: str) -> str:
        return prefix + name

    return Tool.from_function(greet)


@pytest.mark.parametrize("tool, described", [
    (Tool("shout", lambda text: text.upper()), "tool 'shout' .* its function <lambda> is a lambda"),
    (make_closure_tool(), "tool 'greet' .* make_closure_tool.<locals>.greet is defined inside another function"),
])
def test_a_lambda_or_closure_tool_cannot_travel(server: LocalServer, tool: Tool, described: str) -> None:
    advice = "define it with def at the top level of a module"
    with pytest.raises(NotPicklableError, match=f"{described}.*{advice}"):
        pickle.dumps(tool)
    rlm = RLM.from_openai("gpt-4o", base_url=server.base_url, tools=[get_weather, tool])
    with pytest.raises(NotPicklableError, match=f"{described}.*{advice}"):
        pickle.dumps(rlm)


# -- RLM ---------------------------------------------------------------------------------------------------


def test_rlm_travels_as_every_option_it_was_given(server: LocalServer, backend: str) -> None:
    rlm = RLM.from_openai(
        "gpt-4o-mini", (callback for callback in [MetricsCallback()]), api_key=SECRET_KEY, base_url=server.base_url,
        tools=iter([get_weather]), memory=BufferMemory(4), max_attempts=2, timeout=7.5, idle_timeout=3.0,
        max_tool_rounds=3, system_prompt="Be brief.", backoff_base=0.1, backoff_max=0.2,
        tags=iter(["nightly", "batch"]), metadata={"team": "search"}, default_headers={"X-Team": "search"},
    )
    rlm.run("my name is Ada")
    copy = round_trip(rlm)

    assert (copy.model, copy.base_url, copy.max_attempts, copy.max_tool_rounds, copy.system_prompt) == (
        "gpt-4o-mini", server.base_url, 2, 3, "Be brief.")
    assert (copy.backoff_base, copy.backoff_max, copy.tags, copy.metadata) == (
        0.1, 0.2, ("nightly", "batch"), {"team": "search"})
    assert (copy._connection.timeout, copy._connection.idle_timeout) == (7.5, 3.0)
    assert copy._connection.sync_client.api_key == SECRET_KEY
    assert copy._connection.sync_client.default_headers["X-Team"] == "search"
    assert [tool.name for tool in copy.tools] == ["get_weather"]
    assert (copy.memory.max_messages, len(copy.memory), len(rlm.memory)) == (4, 0, 2)
    assert copy.callbacks.callbacks[0].get_metrics()["total_calls"] == 0
    assert copy.callbacks.backend == backend
    assert SECRET_KEY not in repr(copy) and SECRET_KEY not in str(copy)

    server.reset()
    result = copy.run("get_weather Paris")
    assert result.answer == f"Tool results: get_weather -> {get_weather('Paris')}"
    assert server.requests[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert copy.callbacks.callbacks[0].get_metrics()["completed_calls"] == 2


def test_the_api_key_travels_in_the_pickle_even_from_the_environment(server: LocalServer,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    data = pickle.dumps(RLM.from_openai("gpt-4o"))
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_BASE_URL")

    assert SECRET_KEY.encode() in data  # the worker needs it to call the API
    copy = pickle.loads(data)
    assert (copy.base_url, copy._connection.sync_client.api_key) == (server.base_url, SECRET_KEY)
    assert copy.run("hi").answer == "Hello! You said: hi"


# -- worker processes --------------------------------------------------------------------------------------

_barrier: Any = None
"""Set in each pool worker: makes each task wait for the other, so that two tasks run in two workers."""


def _keep_barrier(barrier: Any) -> None:
    global _barrier
    _barrier = barrier


def run_prompts_in_worker(rlm: RLM, prompts: list[str]) -> tuple[int, list[str], dict[str, Any], str]:
    """Runs ``prompts`` on the unpickled ``rlm``; its pid, answers, metrics and log path."""
    _barrier.wait(timeout=POOL_TIMEOUT)
    metrics, log = rlm.callbacks.callbacks
    answers = [rlm.run(prompt).answer for prompt in prompts]
    log.close()
    return os.getpid(), answers, dict(metrics.get_metrics()), log.log_path


@pytest.fixture
def spawn_pool() -> Iterator[Pool]:
    context = multiprocessing.get_context("spawn")
    pool = context.Pool(2, initializer=_keep_barrier, initargs=(context.Barrier(2),))
    try:
        yield pool
    finally:
        pool.terminate()
        pool.join()


def test_spawned_workers_run_a_pickled_rlm_with_logs_of_their_own(
        server: LocalServer, backend: str, tmp_path: Path, spawn_pool: Pool) -> None:
    metrics = MetricsCallback()
    log = FileLogCallback(tmp_path / "worker-{pid}.jsonl", flush_interval=3600)
    rlm = RLM.from_openai("gpt-4o", [metrics, log], base_url=server.base_url, api_key=server.api_key,
                          tools=[get_weather])
    fire_call([metrics, log], "parent-call")
    batches = [[f"task {task} prompt {index}" for index in range(3)] for task in range(2)]

    results = spawn_pool.starmap_async(run_prompts_in_worker, [(rlm, prompts) for prompts in batches]).get(POOL_TIMEOUT)

    pids = [pid for pid, _, _, _ in results]
    assert len(set(pids)) == 2 and os.getpid() not in pids
    for (pid, answers, worker_metrics, log_path), prompts in zip(results, batches):
        assert answers == [f"Hello! You said: {prompt}" for prompt in prompts]
        assert log_path == str(tmp_path / f"worker-{pid}.jsonl")
        records = jsonl_records(Path(log_path))
        assert Counter(record["event"] for record in records) == {
            "run_start": 3, "llm_start": 3, "llm_end": 3, "run_end": 3}
        assert sorted(record["prompt"] for record in records if record["event"] == "llm_start") == prompts
        assert worker_metrics["completed_calls"] == len(prompts)
    assert sum(worker_metrics["completed_calls"] for _, _, worker_metrics, _ in results) == 6
    assert metrics.get_metrics()["completed_calls"] == 1  # the workers' calls stayed in the workers
    log.close()
    parent_records = jsonl_records(tmp_path / f"worker-{os.getpid()}.jsonl")
    assert [record["run_id"] for record in parent_records] == ["parent-call"] * 2
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        f"worker-{pid}.jsonl" for pid in [os.getpid(), *pids])


def test_a_module_level_tool_runs_in_a_spawned_worker(
        server: LocalServer, backend: str, tmp_path: Path, spawn_pool: Pool) -> None:
    log = FileLogCallback(tmp_path / "tools-{pid}.jsonl")
    rlm = RLM.from_openai("gpt-4o", [MetricsCallback(), log], base_url=server.base_url, tools=[get_weather])
    results = spawn_pool.starmap_async(
        run_prompts_in_worker, [(rlm, ["get_weather Paris"]), (rlm, ["get_weather Rome"])]).get(POOL_TIMEOUT)
    for (pid, answers, worker_metrics, _), city in zip(results, ["Paris", "Rome"]):
        assert answers == [f"Tool results: get_weather -> sunny in {city}, worker {pid}"]
        assert worker_metrics["completed_calls"] == 2


def log_one_call_in_worker(log: FileLogCallback, run_id: str) -> tuple[int, str]:
    _barrier.wait(timeout=POOL_TIMEOUT)
    fire_call([log], run_id)
    log.close()
    return os.getpid(), log.log_path


def test_workers_append_to_a_path_without_placeholders_and_the_parents_lines_are_written_once(
        backend: str, tmp_path: Path, spawn_pool: Pool) -> None:
    path = tmp_path / "shared.jsonl"
    log = FileLogCallback(path, flush_interval=3600)
    for index in range(3):
        fire_call([log], f"parent-{index}")  # buffered: nothing is in the file yet

    results = spawn_pool.starmap_async(log_one_call_in_worker, [(log, "worker-0"), (log, "worker-1")]).get(POOL_TIMEOUT)

    assert len({pid for pid, _ in results}) == 2
    assert [log_path for _, log_path in results] == [str(path)] * 2
    assert sorted(record["run_id"] for record in jsonl_records(path)) == ["worker-0"] * 2 + ["worker-1"] * 2
    log.close()
    assert Counter(record["run_id"] for record in jsonl_records(path)) == {
        "parent-0": 2, "parent-1": 2, "parent-2": 2, "worker-0": 2, "worker-1": 2}
