"""Per-run context: the ``callbacks=``, ``tags=`` and ``metadata=`` of one call (merged with the RLM's
defaults), what every hook and JSONL record of a run gets, isolation of per-call callbacks between concurrent
runs, the console's ``[tags: ...]``, and time to first token (``ttft_ms``) in events, records and metrics."""

from __future__ import annotations

import asyncio
import io
import json
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from rlm_toolkit import RLM, LLMResponse, Usage
from rlm_toolkit.callbacks import BaseCallback, CallbackManager, ConsoleCallback, FileLogCallback, MetricsCallback
from rlm_toolkit.errors import RLMConfigError
from rlm_toolkit.events import EVENTS
from rlm_toolkit.memory import BufferMemory
from rlm_toolkit.server import LocalServer
from test_rlm import MODEL, make_rlm

ALL_EVENTS = {spec.name for spec in EVENTS}
TS = 1_700_000_000.25
KEY_SHAPED = "sk-" + "Q7x" * 14  # 42 characters after "sk-": redacted as an API key


class Seen:
    """One event a ``ContextRecorder`` saw."""

    def __init__(self, name: str, args: tuple[Any, ...], keywords: dict[str, Any]) -> None:
        self.name = name
        self.args = args
        self.keywords = keywords


class ContextRecorder(BaseCallback):
    """Records every event but streamed tokens, with all its keywords (so runs do not stream unless asked)."""

    def __init__(self) -> None:
        self.events: list[Seen] = []
        self.lock = threading.Lock()

    def _add(self, name: str, args: tuple[Any, ...], keywords: dict[str, Any]) -> None:
        with self.lock:
            self.events.append(Seen(name, args, keywords))

    def names(self) -> list[str]:
        return [event.name for event in self.events]

    def of(self, name: str) -> list[Seen]:
        return [event for event in self.events if event.name == name]

    def on_run_start(self, prompt: str, **kwargs: Any) -> None:
        self._add("run_start", (prompt,), kwargs)

    def on_run_end(self, answer: str, **kwargs: Any) -> None:
        self._add("run_end", (answer,), kwargs)

    def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
        self._add("llm_start", (prompt,), kwargs)

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self._add("llm_end", (response,), kwargs)

    def on_tool_start(self, tool_name: str, tool_input: Any, **kwargs: Any) -> None:
        self._add("tool_start", (tool_name, tool_input), kwargs)

    def on_tool_end(self, tool_name: str, tool_output: Any, **kwargs: Any) -> None:
        self._add("tool_end", (tool_name, tool_output), kwargs)

    def on_memory_store(self, content: str, **kwargs: Any) -> None:
        self._add("memory_store", (content,), kwargs)

    def on_memory_recall(self, query: str, results: list[Any], **kwargs: Any) -> None:
        self._add("memory_recall", (query, results), kwargs)

    def on_retry(self, attempt: int, max_attempts: int, error: BaseException, **kwargs: Any) -> None:
        self._add("retry", (attempt, max_attempts, error), kwargs)

    def on_error(self, error: BaseException, **kwargs: Any) -> None:
        self._add("error", (error,), kwargs)


class TokenContextRecorder(ContextRecorder):
    """A ContextRecorder that also takes streamed tokens, which makes ``run`` stream."""

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self._add("llm_new_token", (token,), kwargs)


class NamedContextHooks(BaseCallback):
    """Hooks that name ``tags`` and ``metadata`` and take no ``**kwargs``."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    def on_llm_start(self, prompt: str, tags: Any = "absent", metadata: Any = "absent") -> None:
        self.seen.append(("llm_start", tags, metadata))

    def on_llm_end(self, response: Any, tags: Any = "absent", metadata: Any = "absent",
                   ttft_ms: Any = "absent") -> None:
        self.seen.append(("llm_end", tags, metadata, ttft_ms))


class RaisingCallback(BaseCallback):
    def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
        raise RuntimeError("per-call hook failed")

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        raise RuntimeError("per-call hook failed")


def records_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def get_weather(city: str) -> str:
    """Current weather in a city."""
    return f"Sunny in {city}"


def broken(city: str) -> str:
    """Always fails."""
    raise ValueError(f"no data for {city}")


def response_of(content: str = "r") -> LLMResponse:
    return LLMResponse(content, "gpt-4o", Usage.of(3, 2))


# -- defaults and per-call values, merged ---------------------------------------------------------


def test_per_call_tags_follow_the_defaults_once_each_and_metadata_overrides(
        server: LocalServer, backend: str, tmp_path: Path) -> None:
    log = FileLogCallback(tmp_path / "run.jsonl")
    rlm_recorder = ContextRecorder()
    rlm = make_rlm(server, log, rlm_recorder, tags=["d1", "d2"], metadata={"a": 1, "b": 2})
    call_recorder, named = ContextRecorder(), NamedContextHooks()

    rlm.run("first", callbacks=[call_recorder, named], tags=["x", "d2", "x", "y"],
            metadata={"b": 3, "c": None})
    rlm.run("second")
    log.close()

    merged_tags, merged_metadata = ["d1", "d2", "x", "y"], {"a": 1, "b": 3, "c": None}
    assert rlm.tags == ("d1", "d2") and rlm.metadata == {"a": 1, "b": 2}
    assert call_recorder.names() == ["run_start", "llm_start", "llm_end", "run_end"]
    first_tags = call_recorder.events[0].keywords["tags"]
    first_metadata = call_recorder.events[0].keywords["metadata"]
    assert first_tags == merged_tags and first_metadata == merged_metadata
    assert list(first_metadata) == ["a", "b", "c"]
    for event in call_recorder.events:
        assert event.keywords["tags"] is first_tags
        assert event.keywords["metadata"] is first_metadata
    # The RLM's hooks get the very same objects as the call's own.
    for event in rlm_recorder.events[:4]:
        assert event.keywords["tags"] is first_tags and event.keywords["metadata"] is first_metadata
    assert named.seen == [("llm_start", merged_tags, merged_metadata),
                          ("llm_end", merged_tags, merged_metadata, None)]
    second = rlm_recorder.events[4:]
    assert [event.name for event in second] == ["run_start", "llm_start", "llm_end", "run_end"]
    for event in second:
        assert (event.keywords["tags"], event.keywords["metadata"]) == (["d1", "d2"], {"a": 1, "b": 2})
    assert second[0].keywords["tags"] is not first_tags

    records = records_of(tmp_path / "run.jsonl")
    assert [record["event"] for record in records] == ["run_start", "llm_start", "llm_end", "run_end"] * 2
    for record in records[:4]:
        assert (record["tags"], record["metadata"]) == (merged_tags, merged_metadata)
        assert list(record)[-2:] == ["tags", "metadata"]
    for record in records[4:]:
        assert (record["tags"], record["metadata"]) == (["d1", "d2"], {"a": 1, "b": 2})


def test_repeated_default_tags_are_given_once(server: LocalServer, backend: str) -> None:
    recorder = ContextRecorder()
    rlm = make_rlm(server, recorder, tags=["d", "e", "d"])
    rlm.run("p", tags=["x", "x", "d"])
    assert rlm.tags == ("d", "e")
    assert recorder.events[0].keywords["tags"] == ["d", "e", "x"]


def test_a_run_without_tags_or_metadata_carries_empty_ones(server: LocalServer, backend: str,
                                                          tmp_path: Path) -> None:
    log = FileLogCallback(tmp_path / "run.jsonl")
    recorder = ContextRecorder()
    make_rlm(server, log, recorder).run("plain")
    log.close()

    assert [(event.keywords["tags"], event.keywords["metadata"]) for event in recorder.events] == [([], {})] * 4
    records = records_of(tmp_path / "run.jsonl")
    assert [(record["tags"], record["metadata"]) for record in records] == [([], {})] * 4


def test_events_fired_outside_a_run_give_named_parameters_none(backend: str) -> None:
    recorder, named = ContextRecorder(), NamedContextHooks()
    manager = CallbackManager([recorder, named])
    manager.on_llm_start("p", run_id="c1", model="gpt-4o")
    manager.on_llm_end(response_of(), run_id="c1")

    # Hooks taking them through **kwargs alone get no tags, metadata or ttft_ms keyword when they are None.
    assert [event.keywords for event in recorder.events] == [
        {"run_id": "c1", "parent_run_id": None, "model": "gpt-4o"}, {"run_id": "c1", "parent_run_id": None,
                                                                     "model": None}]
    assert named.seen == [("llm_start", None, None), ("llm_end", None, None, None)]


def test_every_event_kind_of_a_run_with_tools_and_memory_carries_the_context(
        server: LocalServer, backend: str, tmp_path: Path) -> None:
    log = FileLogCallback(tmp_path / "run.jsonl", include_tokens=True)
    rlm = make_rlm(server, log, tools=[get_weather, broken], memory=BufferMemory(), tags=["base"],
                   metadata={"team": "search"})
    recorder = TokenContextRecorder()
    server.fail_next(500)
    server.queue_reply(tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}},
                                   {"name": "broken", "arguments": {"city": "Atlantis"}}])

    result = rlm.run("weather please", callbacks=recorder, tags=["job"], metadata={"user": "u1"})
    log.close()

    assert result.answer == ("Tool results: get_weather -> Sunny in Paris; "
                             "broken -> Error: ValueError: no data for Atlantis")
    assert set(recorder.names()) == ALL_EVENTS
    expected = (["base", "job"], {"team": "search", "user": "u1"})
    tags, metadata = recorder.events[0].keywords["tags"], recorder.events[0].keywords["metadata"]
    assert (tags, metadata) == expected
    for event in recorder.events:
        assert event.keywords["tags"] is tags and event.keywords["metadata"] is metadata

    records = records_of(tmp_path / "run.jsonl")
    assert [record["event"] for record in records] == recorder.names()
    for record in records:
        assert (record["tags"], record["metadata"]) == expected
        keys = list(record)
        tail = ["tags", "metadata", "extra"] if "extra" in record else ["tags", "metadata"]
        assert keys[-len(tail):] == tail
    assert sum("extra" in record for record in records) == 3  # the two memory stores' role, the tool's error


# -- per-call callbacks see their own runs only ---------------------------------------------------


def assert_sees_exactly_its_run(recorder: ContextRecorder, prompt: str, run_id: str, tags: list[str]) -> None:
    assert recorder.names() == ["run_start", "llm_start", "llm_end", "run_end"]
    start, llm_start, llm_end, end = recorder.events
    assert (start.args, start.keywords["run_id"], start.keywords["parent_run_id"]) == ((prompt,), run_id, None)
    assert llm_start.args == (prompt,)
    assert end.args == (f"Hello! You said: {prompt}",) and end.keywords["run_id"] == run_id
    assert llm_start.keywords["run_id"] == llm_end.keywords["run_id"]
    assert [event.keywords["parent_run_id"] for event in (llm_start, llm_end)] == [run_id, run_id]
    assert [event.keywords["tags"] for event in recorder.events] == [tags] * 4


class BarrierAtRunStart(ContextRecorder):
    """Holds each run at its start until all the runs have started, so they are all in flight at once."""

    def __init__(self, barrier: threading.Barrier) -> None:
        super().__init__()
        self.barrier = barrier

    def on_run_start(self, prompt: str, **kwargs: Any) -> None:
        super().on_run_start(prompt, **kwargs)
        self.barrier.wait(timeout=10)


def test_threads_running_at_once_each_see_only_their_own_run(server: LocalServer, backend: str) -> None:
    rlm_recorder = ContextRecorder()
    rlm = make_rlm(server, rlm_recorder)
    barrier = threading.Barrier(8)
    recorders = [BarrierAtRunStart(barrier) for _ in range(8)]

    def run_one(index: int) -> Any:
        return rlm.run(f"prompt {index}", callbacks=[recorders[index]], tags=[f"t{index}"])

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(run_one, range(8)))

    for index, (recorder, result) in enumerate(zip(recorders, results)):
        assert_sees_exactly_its_run(recorder, f"prompt {index}", result.run_id, [f"t{index}"])
    assert len(rlm_recorder.events) == 32
    assert sorted(event.keywords["run_id"] for event in rlm_recorder.of("run_start")) == sorted(
        result.run_id for result in results)
    assert rlm.callbacks.handler_errors == 0


def test_async_tasks_running_at_once_each_see_only_their_own_run(server: LocalServer, backend: str) -> None:
    rlm_recorder = ContextRecorder()
    rlm = make_rlm(server, rlm_recorder)
    recorders = [ContextRecorder() for _ in range(8)]
    server.latency = 0.1

    async def run_all() -> list[Any]:
        try:
            return await asyncio.gather(*(rlm.arun(f"prompt {index}", callbacks=recorders[index],
                                                   tags=[f"t{index}"]) for index in range(8)))
        finally:
            await rlm.aclose()

    results = asyncio.run(run_all())

    for index, (recorder, result) in enumerate(zip(recorders, results)):
        assert_sees_exactly_its_run(recorder, f"prompt {index}", result.run_id, [f"t{index}"])
    # All eight were in flight together: every run started before the first one ended.
    names = rlm_recorder.names()
    assert names.count("run_start") == 8
    assert names.index("run_end") > len(names) - 1 - names[::-1].index("run_start")
    assert len(rlm_recorder.events) == 32


def test_batch_callbacks_see_every_item_of_their_batch_and_nothing_else(server: LocalServer, backend: str) -> None:
    rlm_recorder = ContextRecorder()
    rlm = make_rlm(server, rlm_recorder)
    batch_recorder, run_recorder = ContextRecorder(), ContextRecorder()
    server.latency = 0.1

    with ThreadPoolExecutor(max_workers=1) as pool:
        beside = pool.submit(rlm.run, "beside", callbacks=[run_recorder], tags=["solo"])
        results = rlm.batch(["b0", "b1", "b2"], callbacks=[batch_recorder], tags=["batch"])
        solo = beside.result()
    rlm.batch(["later"])

    batch_start, *item_starts = batch_recorder.of("run_start")
    assert (batch_start.args[0], batch_start.keywords["kind"]) == ("", "batch")
    assert sorted(event.args[0] for event in item_starts) == ["b0", "b1", "b2"]
    assert sorted(event.keywords["run_id"] for event in item_starts) == sorted(result.run_id for result in results)
    assert len(batch_recorder.events) == 14  # the batch's start and end, and 4 events per item
    assert [event.keywords["tags"] for event in batch_recorder.events] == [["batch"]] * 14
    assert_sees_exactly_its_run(run_recorder, "beside", solo.run_id, ["solo"])
    assert len(rlm_recorder.events) == 24


def test_errors_of_per_call_hooks_are_counted_by_the_calls_manager(server: LocalServer, backend: str) -> None:
    rlm = make_rlm(server)
    run_manager, batch_manager = CallbackManager([RaisingCallback()]), CallbackManager([RaisingCallback()])

    rlm.run("count me", callbacks=run_manager)
    rlm.batch(["a", "b"], callbacks=batch_manager)

    assert run_manager.handler_errors == 2
    assert batch_manager.handler_errors == 4
    assert rlm.callbacks.handler_errors == 0


# -- bad tags and metadata ------------------------------------------------------------------------

BAD_OPTIONS = [
    ({"tags": "abc"}, "tags must be a list of str, not str 'abc'; for one tag, pass [tag]"),
    ({"tags": [1]}, "tags must be str, but tags[0] is int 1"),
    ({"tags": ["ok", b"raw"]}, "tags must be str, but tags[1] is bytes b'raw'"),
    ({"tags": {"a": 1}}, "tags must be a list of str, not dict {'a': 1}"),
    ({"metadata": [("a", 1)]}, "metadata must be a dict with str keys, not list [('a', 1)]"),
    ({"metadata": {1: "x"}}, "metadata keys must be str, but 1 is int"),
]


def call_with(rlm: RLM, method: str, options: dict[str, Any]) -> None:
    if method == "run":
        rlm.run("p", **options)
    elif method == "stream":
        rlm.stream("p", **options)  # raises before the generator is iterated
    elif method == "batch":
        rlm.batch(["p", "q"], **options)
    elif method == "arun":
        asyncio.run(rlm.arun("p", **options))
    elif method == "astream":
        rlm.astream("p", **options)
    else:
        asyncio.run(rlm.abatch(["p"], **options))


@pytest.mark.parametrize("method", ["run", "stream", "batch", "arun", "astream", "abatch"])
@pytest.mark.parametrize(("options", "message"), BAD_OPTIONS)
def test_bad_per_call_context_raises_type_error_before_anything_happens(
        server: LocalServer, method: str, options: dict[str, Any], message: str) -> None:
    rlm_recorder, call_recorder = TokenContextRecorder(), TokenContextRecorder()
    rlm = make_rlm(server, rlm_recorder)
    with pytest.raises(TypeError) as raised:
        call_with(rlm, method, {"callbacks": [call_recorder], **options})
    assert str(raised.value) == f"{method}(): {message}"
    assert (rlm_recorder.events, call_recorder.events, server.requests) == ([], [], [])


@pytest.mark.parametrize(("options", "message"), BAD_OPTIONS)
def test_bad_default_context_raises_config_error(server: LocalServer, options: dict[str, Any],
                                                 message: str) -> None:
    with pytest.raises(RLMConfigError) as raised:
        make_rlm(server, **options)
    assert str(raised.value) == f"RLM: {message}"
    assert server.requests == []


# -- console --------------------------------------------------------------------------------------


def test_console_lines_end_with_the_runs_tags(server: LocalServer, backend: str) -> None:
    output = io.StringIO()
    console = ConsoleCallback(stream=output, color=False, show_cost=False)
    rlm = make_rlm(server, tags=["nightly"], max_attempts=2)
    server.fail_next(500)
    rlm.run("tagged", callbacks=[console], tags=["eu", "batch 7"])
    server.fail_next(400)
    with pytest.raises(Exception, match="400"):
        rlm.run("fails", callbacks=[console], tags=["eu"])

    lines = output.getvalue().splitlines()
    labels = [line.split()[1] + " " + line.split()[2] for line in lines]
    assert labels == ["llm start", "retry 1/2", "llm end", "llm start", "error gpt-4o-mini"]
    for line in lines[:3]:
        assert line.endswith("  [tags: nightly, eu, batch 7]")
    assert lines[3].endswith("  [tags: nightly, eu]")
    assert lines[4].endswith("  [tags: nightly, eu]")
    assert sum("[tags" in line for line in lines) == 5


def test_console_shows_no_tags_part_without_tags(server: LocalServer, backend: str) -> None:
    output = io.StringIO()
    console = ConsoleCallback(stream=output, color=False)
    server.fail_next(500)
    make_rlm(server).run("untagged", callbacks=[console], tags=[])

    text = output.getvalue()
    assert len(text.splitlines()) == 3
    assert "[tags" not in text


# -- time to first token --------------------------------------------------------------------------


class TimedTokenRecorder(TokenContextRecorder):
    """Also notes ``time.perf_counter()`` at each LLM call's start and end."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
        self.times.append(time.perf_counter())
        super().on_llm_start(prompt, **kwargs)

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self.times.append(time.perf_counter())
        super().on_llm_end(response, **kwargs)

    def call_ms(self) -> float:
        start, end = self.times
        return (end - start) * 1000.0


def test_streamed_run_reports_ttft_between_the_delay_and_the_call_time(
        server: LocalServer, backend: str, tmp_path: Path) -> None:
    log = FileLogCallback(tmp_path / "run.jsonl")
    metrics = MetricsCallback()
    rlm = make_rlm(server, log, metrics)
    recorder = TimedTokenRecorder()
    server.latency = 0.1
    server.keep_alive_next(0.2, interval=0.05)

    assert metrics.get_metrics()["avg_ttft_ms"] is None
    rlm.run("stream this one please", callbacks=[recorder])
    log.close()

    ttft = recorder.of("llm_end")[0].keywords["ttft_ms"]
    assert type(ttft) is float
    assert 300.0 <= ttft < recorder.call_ms()
    # The remaining chunks come latency / chunks apart, after the first one.
    assert recorder.call_ms() - ttft >= 50.0
    assert records_of(tmp_path / "run.jsonl")[2]["ttft_ms"] == ttft
    snapshot = metrics.get_metrics()
    assert snapshot["avg_ttft_ms"] == math.floor(ttft * 1000.0 + 0.5) / 1000.0
    assert None not in (snapshot["p50_ttft_ms"], snapshot["p95_ttft_ms"], snapshot["p99_ttft_ms"])


def test_stream_and_astream_report_ttft(server: LocalServer, backend: str) -> None:
    recorder = ContextRecorder()
    rlm = make_rlm(server, recorder)
    server.keep_alive_next(0.1, count=2, interval=0.05)

    assert "".join(rlm.stream("one two")) == "Hello! You said: one two"

    async def astream_all() -> str:
        try:
            return "".join([chunk async for chunk in rlm.astream("three four")])
        finally:
            await rlm.aclose()

    assert asyncio.run(astream_all()) == "Hello! You said: three four"
    ttfts = [event.keywords["ttft_ms"] for event in recorder.of("llm_end")]
    assert [type(ttft) for ttft in ttfts] == [float, float]
    assert min(ttfts) >= 100.0


def test_a_streamed_tool_call_reports_ttft(server: LocalServer, backend: str) -> None:
    recorder = TokenContextRecorder()
    rlm = make_rlm(server, tools=[get_weather])
    server.queue_reply(tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}}])
    server.keep_alive_next(0.1, interval=0.05)

    rlm.run("weather", callbacks=[recorder])

    tool_call_end, answer_end = recorder.of("llm_end")
    assert tool_call_end.args[0].content == "" and len(tool_call_end.args[0].tool_calls) == 1
    assert tool_call_end.keywords["ttft_ms"] >= 100.0
    assert type(answer_end.keywords["ttft_ms"]) is float


def test_non_streamed_run_reports_no_ttft(server: LocalServer, backend: str, tmp_path: Path) -> None:
    log = FileLogCallback(tmp_path / "run.jsonl")
    metrics = MetricsCallback()
    recorder, named = ContextRecorder(), NamedContextHooks()
    make_rlm(server, log, metrics, recorder, named).run("not streamed")
    log.close()

    assert "ttft_ms" not in recorder.of("llm_end")[0].keywords
    assert named.seen[1] == ("llm_end", [], {}, None)
    record = records_of(tmp_path / "run.jsonl")[2]
    assert record["event"] == "llm_end" and record["ttft_ms"] is None
    keys = list(record)
    assert keys[keys.index("reasoning_tokens") + 1] == "ttft_ms"
    snapshot = metrics.get_metrics()
    assert [snapshot[key] for key in ("avg_ttft_ms", "p50_ttft_ms", "p95_ttft_ms", "p99_ttft_ms")] == [None] * 4
    assert snapshot["completed_calls"] == 1


TTFT_VALUES = [0.0, 0.4, 1.0, 3.3, 12.5, 47.0, 99.9, 250.0, 999.0, 1234.5, 5000.0, 60_000.0, 0.7, 12.5]


def test_ttft_percentiles_use_the_latency_histogram(backend: str) -> None:
    ttft_metrics, latency_metrics = MetricsCallback(), MetricsCallback()
    ttft_manager, latency_manager = CallbackManager([ttft_metrics]), CallbackManager([latency_metrics])
    for index, value in enumerate(TTFT_VALUES):
        ttft_manager.on_llm_end(response_of(), run_id=f"c{index}", ttft_ms=value)
        latency_manager.on_llm_start("p", run_id=f"c{index}", model="gpt-4o", timestamp=0.0)
        latency_manager.on_llm_end(response_of(), run_id=f"c{index}", timestamp=value / 1000.0)

    ttft, latency = ttft_metrics.get_metrics(), latency_metrics.get_metrics()
    assert [ttft[f"p{p}_ttft_ms"] for p in (50, 95, 99)] == [latency[f"p{p}_latency_ms"] for p in (50, 95, 99)]
    total_us = sum(math.floor(value * 1000.0 + 0.5) for value in TTFT_VALUES)
    assert ttft["avg_ttft_ms"] == total_us / len(TTFT_VALUES) / 1000.0  # the mean of whole microseconds
    assert ttft["p50_ttft_ms"] != ttft["p99_ttft_ms"]
    assert ttft["total_calls"] == 0 and ttft["completed_calls"] == len(TTFT_VALUES)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), True, False, "5", 10**400, -(10**400)])
def test_ttft_values_that_are_no_duration_are_ignored(backend: str, value: Any) -> None:
    metrics = MetricsCallback()
    manager = CallbackManager([metrics])
    manager.on_llm_end(response_of(), run_id="c1", ttft_ms=value)
    assert metrics.get_metrics()["avg_ttft_ms"] is None
    manager.on_llm_end(response_of(), run_id="c2", ttft_ms=8.0)
    snapshot = metrics.get_metrics()
    assert (snapshot["avg_ttft_ms"], snapshot["completed_calls"], manager.handler_errors) == (8.0, 2, 0)


def test_negative_ttft_counts_as_zero(backend: str) -> None:
    metrics, zero_metrics = MetricsCallback(), MetricsCallback()
    CallbackManager([metrics]).on_llm_end(response_of(), run_id="c1", ttft_ms=-5.0)
    CallbackManager([zero_metrics]).on_llm_end(response_of(), run_id="c1", ttft_ms=0)
    snapshot, zero = metrics.get_metrics(), zero_metrics.get_metrics()
    assert snapshot["avg_ttft_ms"] == 0.0
    assert [snapshot[f"p{p}_ttft_ms"] for p in (50, 95, 99)] == [zero[f"p{p}_ttft_ms"] for p in (50, 95, 99)]


def test_llm_end_records_hold_ttft_as_a_number_or_null(backend: str, tmp_path: Path) -> None:
    log = FileLogCallback(tmp_path / "direct.jsonl")
    manager = CallbackManager([log])
    manager.on_llm_end(response_of(), run_id="c1", ttft_ms=12.5, timestamp=TS)
    manager.on_llm_end(response_of(), run_id="c2", timestamp=TS)
    log.close()
    first, second = (tmp_path / "direct.jsonl").read_text(encoding="utf-8").splitlines()
    assert first.endswith('"cached_tokens":0,"reasoning_tokens":0,"ttft_ms":12.5}')
    assert second.endswith('"cached_tokens":0,"reasoning_tokens":0,"ttft_ms":null}')


# -- hostile values -------------------------------------------------------------------------------


def fire_hostile_context(manager: CallbackManager) -> None:
    tags = ["t\ud800", KEY_SHAPED, "plain"]
    metadata = {"lone": "a\udfffb", "key": KEY_SHAPED, "nested": {"k": [KEY_SHAPED, "\ud800"]},
                "bearer": "Bearer " + "t" * 30, "n": 1.5, "none": None, "flag": True}
    manager.on_run_start("p", run_id="run", model="gpt-4o", tags=tags, metadata=metadata, timestamp=TS)
    manager.on_llm_start("p", run_id="c1", parent_run_id="run", model="gpt-4o", tags=tags, metadata=metadata,
                         timestamp=TS)
    manager.on_llm_end(response_of(), run_id="c1", parent_run_id="run", model="gpt-4o", ttft_ms=3.25, tags=tags,
                       metadata=metadata, timestamp=TS)
    manager.on_memory_store("m", run_id="m1", parent_run_id="run", role="user", tags=tags, metadata=metadata,
                            timestamp=TS)
    manager.on_run_end("a", run_id="run", model="gpt-4o", tags=tags, metadata=metadata, timestamp=TS)


def test_hostile_context_is_redacted_and_written_alike_by_both_backends(tmp_path: Path) -> None:
    written: dict[str, bytes] = {}
    for backend in ("rust", "python"):
        path = tmp_path / f"{backend}.jsonl"
        log = FileLogCallback(path, backend=backend)
        fire_hostile_context(CallbackManager([log], backend=backend))
        log.close()
        written[backend] = path.read_bytes()

    assert written["rust"] == written["python"]
    text = written["rust"].decode("utf-8")
    assert KEY_SHAPED not in text and "t" * 30 not in text
    records = [json.loads(line) for line in text.splitlines()]
    assert len(records) == 5
    for record in records:
        assert record["tags"] == ["t\ud800", "sk-[REDACTED]", "plain"]
        assert record["metadata"] == {"lone": "a\udfffb", "key": "sk-[REDACTED]",
                                      "nested": {"k": ["sk-[REDACTED]", "\ud800"]},
                                      "bearer": "Bearer [REDACTED]", "n": 1.5, "none": None, "flag": True}
    assert list(records[3])[-3:] == ["tags", "metadata", "extra"]


def test_long_context_strings_are_capped_like_other_fields(backend: str, tmp_path: Path) -> None:
    log = FileLogCallback(tmp_path / "capped.jsonl", max_field_chars=64)
    long_text = "x" * 5000
    CallbackManager([log]).on_llm_start(long_text, run_id="c1", model="gpt-4o", tags=[long_text, "short"],
                                        metadata={"big": long_text, "deep": {"list": [long_text]}}, timestamp=TS)
    log.close()

    record = records_of(tmp_path / "capped.jsonl")[0]
    capped = record["prompt"]
    assert capped != long_text and len(capped) < 100
    assert record["tags"] == [capped, "short"]
    assert record["metadata"] == {"big": capped, "deep": {"list": [capped]}}


class TagsAppender(ContextRecorder):
    """Appends to the run's tags list and sets a metadata key when the LLM call starts."""

    def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
        kwargs["tags"].append("added-by-hook")
        kwargs["metadata"]["step"] = "llm"
        super().on_llm_start(prompt, **kwargs)


def test_context_mutated_by_a_hook_shows_in_the_runs_later_records_only(
        server: LocalServer, backend: str, tmp_path: Path) -> None:
    log = FileLogCallback(tmp_path / "run.jsonl")
    rlm = make_rlm(server, log, tags=["base"], metadata={"a": 1})

    rlm.run("first", callbacks=[TagsAppender()])
    rlm.run("second")
    log.close()

    contexts = [(record["event"], record["tags"], record["metadata"]) for record in records_of(tmp_path / "run.jsonl")]
    before, after = (["base"], {"a": 1}), (["base", "added-by-hook"], {"a": 1, "step": "llm"})
    assert contexts == [
        ("run_start", *before), ("llm_start", *before), ("llm_end", *after), ("run_end", *after),
        ("run_start", *before), ("llm_start", *before), ("llm_end", *before), ("run_end", *before),
    ]
    assert (rlm.tags, rlm.metadata) == (("base",), {"a": 1})
    assert MODEL == records_of(tmp_path / "run.jsonl")[0]["model"]
