"""Code written against upstream rlm-toolkit's ``rlm_toolkit.callbacks`` runs unchanged: ``on_llm_error``,
``LoggingCallback``, ``FileCallback``, ``LLMEvent``, the response as the answer string, and hooks that take
upstream's extra ``context`` parameter. Callback tests run on both backends."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import pickle
import re
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from rlm_toolkit import LLMResponse, Usage
from rlm_toolkit.callbacks import (
    AsyncBaseCallback,
    BaseCallback,
    CallbackManager,
    FileCallback,
    FileLogCallback,
    LLMEvent,
    LoggingCallback,
)
from rlm_toolkit.errors import LLMCallError, LogFileError, MalformedResponseError
from rlm_toolkit.server import LocalServer

from test_rlm import Recorder, make_rlm

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
KEY = "sk-" + "a1B2c3" * 5


def fail_for_good(server: LocalServer, *callbacks: Any) -> LLMCallError:
    """One run whose LLM call fails after its 2 attempts; the error it raised."""
    server.fail_next(500, count=10)
    with pytest.raises(LLMCallError) as raised:
        make_rlm(server, *callbacks, max_attempts=2).run("hi")
    server.reset()  # the failures left over
    assert raised.value.attempts == 2
    return raised.value


def run_with_a_failing_tool(server: LocalServer, *callbacks: Any) -> None:
    def broken(city: str) -> str:
        raise ValueError(f"no data for {city}")

    make_rlm(server, *callbacks, tools=[broken]).run("broken Atlantis")


# -- on_llm_error ---------------------------------------------------------------------------------------


class LLMErrors(BaseCallback):
    def __init__(self) -> None:
        self.llm_errors: list[tuple[BaseException, dict[str, Any]]] = []

    def on_llm_error(self, error: BaseException, **kwargs: Any) -> None:
        self.llm_errors.append((error, kwargs))


class BothErrorHooks(LLMErrors):
    def __init__(self) -> None:
        super().__init__()
        self.errors: list[BaseException] = []

    def on_error(self, error: BaseException, **kwargs: Any) -> None:
        self.errors.append(error)


def test_on_llm_error_is_called_once_when_a_run_fails_for_good(server: LocalServer, backend: str) -> None:
    only_llm, both, recorder = LLMErrors(), BothErrorHooks(), Recorder()
    error = fail_for_good(server, only_llm, both, recorder)

    assert [(seen, kwargs) for seen, kwargs in only_llm.llm_errors] == [(error, recorder.of("error")[0].context)]
    assert [seen for seen, _ in both.llm_errors] == [error]
    assert both.errors == [error]
    assert recorder.names() == ["llm_start", "retry", "error"]


def test_on_llm_error_is_not_called_for_a_tool_error(server: LocalServer, backend: str) -> None:
    both = BothErrorHooks()
    run_with_a_failing_tool(server, both)
    error = fail_for_good(server, both)
    assert [seen for seen, _ in both.llm_errors] == [error]
    assert [type(seen) for seen in both.errors] == [ValueError, LLMCallError]


def test_on_llm_error_through_the_manager(backend: str) -> None:
    class AsyncLLMErrors(AsyncBaseCallback):
        def __init__(self) -> None:
            self.llm_errors: list[BaseException] = []

        async def on_llm_error(self, error: BaseException) -> None:
            self.llm_errors.append(error)

    only_llm, both, async_hooks = LLMErrors(), BothErrorHooks(), AsyncLLMErrors()
    manager = CallbackManager([only_llm, both, async_hooks])
    failed, malformed, tool_error = LLMCallError("failed", attempts=3), MalformedResponseError("bad"), KeyError("x")
    manager.on_error(failed, run_id="c1", model="gpt-4o")
    manager.on_error(tool_error, run_id="t1", tool_name="search")
    manager.on_error(malformed, run_id="c2")
    manager.on_llm_error(LLMCallError("through the manager's own on_llm_error"), run_id="c3")

    assert [(error, kwargs["run_id"]) for error, kwargs in only_llm.llm_errors] == [
        (failed, "c1"), (malformed, "c2"), (only_llm.llm_errors[2][0], "c3")]
    assert only_llm.llm_errors[0][1] == {"run_id": "c1", "parent_run_id": None, "model": "gpt-4o"}
    assert str(only_llm.llm_errors[2][0]) == "through the manager's own on_llm_error"
    assert [error for error, _ in both.llm_errors] == [error for error, _ in only_llm.llm_errors]
    assert both.errors[:3] == [failed, tool_error, malformed] and len(both.errors) == 4
    assert async_hooks.llm_errors == [error for error, _ in only_llm.llm_errors]
    assert manager.handler_errors == 0


def test_an_object_with_only_on_llm_error_is_a_callback(backend: str) -> None:
    class DuckTyped:
        def __init__(self) -> None:
            self.llm_errors: list[BaseException] = []

        def on_llm_error(self, error: BaseException, **kwargs: Any) -> None:
            self.llm_errors.append(error)

    duck = DuckTyped()
    manager = CallbackManager([duck])
    error = LLMCallError("failed")
    manager.on_error(error)
    manager.on_error(ValueError("a tool failed"))
    assert duck.llm_errors == [error]


def test_a_manager_registered_in_a_manager_passes_llm_errors_on_once(backend: str) -> None:
    inner_callback = LLMErrors()
    outer = CallbackManager([CallbackManager([inner_callback])])
    outer.on_error(LLMCallError("failed"))
    assert len(inner_callback.llm_errors) == 1


def test_a_raising_on_llm_error_is_isolated_and_named(backend: str, caplog: pytest.LogCaptureFixture) -> None:
    class Broken(BaseCallback):
        def on_llm_error(self, error: BaseException, **kwargs: Any) -> None:
            raise RuntimeError("broken hook")

    after = LLMErrors()
    manager = CallbackManager([Broken(), after])
    with caplog.at_level(logging.ERROR, logger="rlm_toolkit"):
        manager.on_error(LLMCallError("failed"))
    assert manager.handler_errors == 1
    assert len(after.llm_errors) == 1
    assert ".Broken.on_llm_error raised while handling 'error': RuntimeError('broken hook')" in caplog.text


# -- LoggingCallback --------------------------------------------------------------------------------------


def test_logging_callback_logs_as_upstream_does(server: LocalServer, backend: str,
                                                caplog: pytest.LogCaptureFixture) -> None:
    prompt = "Summarise: " + "word " * 40
    with caplog.at_level(logging.INFO, logger="rlm_toolkit"):
        result = make_rlm(server, LoggingCallback()).run(prompt)
        run_with_a_failing_tool(server, LoggingCallback())
        error = fail_for_good(server, LoggingCallback())

    mine = [(record.levelno, record.getMessage()) for record in caplog.records if record.getMessage().startswith("LLM ")]
    assert mine[:2] == [
        (logging.INFO, f"LLM Start: {prompt[:100]}..."),
        (logging.INFO, f"LLM End: {result.answer[:100]}..."),
    ]
    assert len(mine) == 2 + 4 + 2  # the tool run: two calls; the failing run: its start and its error
    assert mine[-1] == (logging.ERROR, f"LLM Error: {error}")
    assert [level for level, _ in mine].count(logging.ERROR) == 1


def test_logging_callback_takes_a_logger_and_redacts_before_cutting(backend: str,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("my_app.llm")
    manager = CallbackManager([LoggingCallback(logger=logger)])
    assert LoggingCallback().logger is logging.getLogger("rlm_toolkit")
    prompt = "x" * 89 + " " + KEY
    with caplog.at_level(logging.INFO, logger="my_app.llm"):
        manager.on_llm_start(prompt)
        manager.on_llm_end(LLMResponse(f"the key is {KEY}", "gpt-4o"))
        manager.on_error(LLMCallError(f"rejected {KEY}"))
        manager.on_error(ValueError("a tool failed"))
    assert [(record.name, record.getMessage()) for record in caplog.records] == [
        ("my_app.llm", "LLM Start: " + ("x" * 89 + " sk-[REDACTED]")[:100] + "..."),
        ("my_app.llm", "LLM End: the key is sk-[REDACTED]..."),
        ("my_app.llm", "LLM Error: rejected sk-[REDACTED]"),
    ]


# -- FileCallback ---------------------------------------------------------------------------------------


def read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="ascii").splitlines()]


def test_file_callback_writes_upstreams_records(server: LocalServer, backend: str, tmp_path: Path) -> None:
    path = tmp_path / "logs" / "events.jsonl"
    recorder = Recorder()
    before = datetime.now(timezone.utc)
    with FileCallback(path) as first, FileCallback(str(path)) as second, FileCallback(path) as third:
        result = make_rlm(server, first, recorder).run("Hello there!")
        first.flush()
        error = fail_for_good(server, second)
        second.flush()
        run_with_a_failing_tool(server, third)

    records = read_records(path)
    start, end = recorder.of("llm_start")[0], recorder.of("llm_end")[0]
    field_of = {"start": "prompt", "end": "response", "error": "error"}
    for record in records:
        assert list(record) == ["event", field_of[record["event"]], "timestamp", "run_id", "parent_run_id", "model"]
    context = {"run_id": start.run_id, "parent_run_id": start.parent_run_id, "model": "gpt-4o-mini"}
    assert start.context == {**context, "tags": [], "metadata": {}}
    assert end.context == start.context  # a call that did not stream has no ttft_ms
    assert {**records[0], "timestamp": None} == {"event": "start", "prompt": "Hello there!", "timestamp": None,
                                                 **context}
    assert {**records[1], "timestamp": None} == {"event": "end", "response": result.answer, "timestamp": None,
                                                 **context}
    assert [record["event"] for record in records] == ["start", "end", "start", "error", "start", "end", "start", "end"]
    assert records[3]["error"] == str(error)
    for record in records:
        assert ISO_UTC.fullmatch(record["timestamp"]), record
        written = datetime.strptime(record["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        assert before <= written <= datetime.now(timezone.utc)
    assert path.stat().st_mode & 0o777 == 0o600


def test_file_callback_keywords_and_redaction(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    callback = FileCallback(path)
    manager = CallbackManager([callback])
    manager.on_llm_start(f"use {KEY}", run_id="c1", model=None, attempt=2, tags=["a", KEY], when={1, 2},
                         ratio=float("nan"), event="not the event", nested={"k": {"deep": None}})
    manager.on_llm_end(LLMResponse("ok é", "gpt-4o", Usage.of(1, 2)))
    manager.on_error(LLMCallError("failed"), tool_name=None)
    callback.flush()
    assert read_records(path) == [
        {"event": "start", "prompt": "use sk-[REDACTED]", "timestamp": read_records(path)[0]["timestamp"],
         "run_id": "c1", "attempt": 2, "tags": ["a", "sk-[REDACTED]"], "nested": {"k": {"deep": None}}},
        {"event": "end", "response": "ok é", "timestamp": read_records(path)[1]["timestamp"]},
        {"event": "error", "error": "failed", "timestamp": read_records(path)[2]["timestamp"], "tool_name": None},
    ]
    assert "\\u00e9" in path.read_text(encoding="ascii")


def test_file_callback_lines_stay_whole_under_threads(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    callback = FileCallback(path)
    manager = CallbackManager([callback])
    threads_count, events_per_thread = 8, 100

    def fire(thread: int) -> None:
        for index in range(events_per_thread):
            manager.on_llm_start("p" * 5000, run_id=f"{thread}-{index}")

    threads = [threading.Thread(target=fire, args=(thread,)) for thread in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    callback.close()
    run_ids = [record["run_id"] for record in read_records(path)]
    assert sorted(run_ids) == sorted(f"{t}-{i}" for t in range(threads_count) for i in range(events_per_thread))


def test_file_callback_refuses_bad_paths_and_reports_failed_writes(backend: str, tmp_path: Path) -> None:
    with pytest.raises(LogFileError, match="file_path is empty"):
        FileCallback("")
    with pytest.raises(LogFileError, match="file_path .* is a directory"):
        FileCallback(tmp_path)
    with FileCallback(tmp_path / "events.jsonl") as callback:
        os.unlink(tmp_path / "events.jsonl")
        (tmp_path / "events.jsonl").mkdir()  # the path becomes a folder after construction
        callback.on_llm_start("p")
        with pytest.raises(LogFileError, match="deleted while open.*opening the path again failed"):
            callback.flush()


def test_llm_event_is_a_plain_record() -> None:
    before = time.time()
    event = LLMEvent("start")
    assert (event.event_type, event.data) == ("start", {})
    assert before <= event.timestamp <= time.time()
    assert LLMEvent("end", 1.5, {"response": "hi"}) == LLMEvent(event_type="end", timestamp=1.5, data={"response": "hi"})
    assert [f.name for f in dataclasses.fields(LLMEvent)] == ["event_type", "timestamp", "data"]


# -- the response is the answer string ------------------------------------------------------------------


def test_on_llm_end_may_use_the_response_as_a_string(server: LocalServer, backend: str) -> None:
    seen: list[Any] = []

    class UpstreamStyle(BaseCallback):
        def on_llm_end(self, response: str, **kwargs: Any) -> None:
            seen.append((response[:10], len(response), f"{response}", response == "Hello! You said: hi",
                         "said" in response, response.upper(), json.dumps(response)))

    manager = CallbackManager([UpstreamStyle()])
    make_rlm(server, manager).run("hi")
    answer = "Hello! You said: hi"
    assert seen == [(answer[:10], len(answer), answer, True, True, answer.upper(), json.dumps(answer))]
    assert manager.handler_errors == 0


def test_llm_response_is_its_content_with_fields() -> None:
    usage = Usage.of(3, 4)
    response = LLMResponse("The answer is 42.", "gpt-4o", usage, "stop", ({"id": "call_1"},))
    assert isinstance(response, str)
    assert (response[:10], len(response), str(response), f"[{response}]") == (
        "The answer", 17, "The answer is 42.", "[The answer is 42.]")
    assert type(str(response)) is str and type(response.content) is str and type(response.upper()) is str
    assert response == "The answer is 42." and "42" in response and response != "other"
    assert response.upper() == "THE ANSWER IS 42." and response.split() == ["The", "answer", "is", "42."]
    assert json.dumps(response) == '"The answer is 42."' and json.dumps({"r": response}) == '{"r": "The answer is 42."}'
    assert {"The answer is 42.": 1}[response] == 1 and hash(response) == hash("The answer is 42.")
    assert (response.content, response.model, response.usage, response.finish_reason, response.tool_calls) == (
        "The answer is 42.", "gpt-4o", usage, "stop", ({"id": "call_1"},))
    assert LLMResponse(content="a", model="m", usage=usage, finish_reason=None, tool_calls=[1]).tool_calls == (1,)
    assert (LLMResponse("a").model, LLMResponse("a").usage, LLMResponse("a").tool_calls) == (None, Usage(), ())
    assert repr(LLMResponse("a", "m")) == (
        "LLMResponse(content='a', model='m', usage=Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0, "
        "cached_tokens=0, reasoning_tokens=0), finish_reason=None, tool_calls=())")


def test_llm_response_equality_is_documented() -> None:
    assert LLMResponse("a", "m", Usage.of(1, 1)) == LLMResponse("a", "m", Usage.of(1, 1))
    assert LLMResponse("a", "m") != LLMResponse("a", "other model")
    assert not LLMResponse("a", "m") == LLMResponse("a", "other model")
    assert LLMResponse("a", "m") == "a" and "a" == LLMResponse("a", "m")
    assert LLMResponse("a") != 1 and LLMResponse("a") != b"a"


def test_llm_response_is_immutable_and_checks_its_content() -> None:
    response = LLMResponse("a", "m")
    with pytest.raises(dataclasses.FrozenInstanceError):
        response.model = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del response.usage  # type: ignore[misc]
    with pytest.raises(TypeError, match="content must be a str"):
        LLMResponse(None)  # type: ignore[arg-type]
    match response:
        case LLMResponse(content, model):
            assert (content, model) == ("a", "m")


def test_llm_response_pickles_and_copies_with_its_fields(tmp_path: Path) -> None:
    response = LLMResponse("answer \u00e9", "gpt-4o", Usage.of(2, 3), "stop", ({"id": "c"},))
    for restored in (pickle.loads(pickle.dumps(response)), copy.copy(response), copy.deepcopy(response)):
        assert type(restored) is LLMResponse
        assert restored == response and repr(restored) == repr(response)
        assert restored[:6] == "answer" and restored.usage.total_tokens == 5
    child = subprocess.run(
        [sys.executable, "-c", "import pickle, sys; print(repr(pickle.loads(sys.stdin.buffer.read())))"],
        input=pickle.dumps(response), capture_output=True, timeout=60, check=True,
    )
    assert child.stdout.decode().strip() == repr(response)


def test_the_log_record_and_the_hooks_see_the_same_text(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    previews: list[str] = []

    class Preview(BaseCallback):
        def on_llm_end(self, response: str, **kwargs: Any) -> None:
            previews.append(response[:50])

    with FileLogCallback(path) as log:
        manager = CallbackManager([log, Preview()])
        manager.on_llm_end(LLMResponse("the text", "gpt-4o", Usage.of(1, 2)), run_id="c1")
        manager.on_llm_end(LLMResponse("", "gpt-4o", tool_calls=({"id": "t"},)), run_id="c2")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [(record["response"], record["total_tokens"]) for record in records] == [("the text", 3), ("", 0)]
    assert previews == ["the text", ""]


# -- hooks with upstream's extra context parameter ------------------------------------------------------


def test_an_extra_required_parameter_receives_none(backend: str) -> None:
    seen: list[Any] = []

    class EngineStyle(BaseCallback):
        def on_error(self, error: BaseException, context: Any) -> None:
            seen.append(("error", error, context))

        def on_tool_end(self, name: str, output: Any, context: Any, **kwargs: Any) -> None:
            seen.append(("tool_end", name, output, context, kwargs["run_id"]))

        def on_llm_start(self, context: Any, prompt: str) -> None:
            seen.append(("llm_start", context, prompt))

    manager = CallbackManager([EngineStyle()])
    error = ValueError("e")
    manager.on_error(error, run_id="r")
    manager.on_tool_end("search", "found", run_id="t")
    manager.on_tool_end("search", "found", run_id="t", context={"step": 2})
    manager.on_llm_start("p")
    assert seen == [
        ("error", error, None),
        ("tool_end", "search", "found", None, "t"),
        ("tool_end", "search", "found", {"step": 2}, "t"),
        ("llm_start", None, "p"),
    ]
    assert manager.handler_errors == 0
