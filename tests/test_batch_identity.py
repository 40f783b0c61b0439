"""A batch is a run of its own: its events (kind="batch") frame its items' runs (kind="run"), each of which
names it as parent; results carry its id, their cost and a plain-data row."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from rlm_toolkit.callbacks import BaseCallback, CallbackManager, FileLogCallback, MetricsCallback
from rlm_toolkit.errors import LLMCallError
from rlm_toolkit.rlm import RLM, RunResult
from rlm_toolkit.server import LocalServer
from rlm_toolkit.types import Usage
from test_rlm import MODEL, make_rlm

ROW_KEYS = {"answer", "error", "run_id", "parent_run_id", "batch_id", "model", "prompt_tokens", "completion_tokens",
            "total_tokens", "cached_tokens", "reasoning_tokens", "cost_usd"}


class TreeRecorder(BaseCallback):
    """Records (event, run_id, parent_run_id, kind) for every event but streamed tokens; ``kind`` is the
    ``kind=`` keyword when given, else "-" (hooks take it through ``**kwargs`` alone)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str | None, str]] = []
        self._lock = threading.Lock()

    def _add(self, name: str, kwargs: dict[str, Any]) -> None:
        with self._lock:
            self.events.append((name, kwargs["run_id"], kwargs["parent_run_id"], kwargs.get("kind", "-")))

    def on_run_start(self, prompt: str, **kwargs: Any) -> None:
        self._add("run_start", kwargs)

    def on_run_end(self, answer: str, **kwargs: Any) -> None:
        self._add("run_end", kwargs)

    def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
        self._add("llm_start", kwargs)

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self._add("llm_end", kwargs)

    def on_tool_start(self, tool_name: str, tool_input: Any, **kwargs: Any) -> None:
        self._add("tool_start", kwargs)

    def on_tool_end(self, tool_name: str, tool_output: Any, **kwargs: Any) -> None:
        self._add("tool_end", kwargs)

    def on_error(self, error: BaseException, **kwargs: Any) -> None:
        self._add("error", kwargs)


class FailRunOfPrompt(BaseCallback):
    """Makes the first LLM call of the run of ``prompt`` fail with HTTP 400 (not retried)."""

    def __init__(self, server: LocalServer, prompt: str) -> None:
        self.server, self.prompt = server, prompt

    def on_run_start(self, prompt: str, **kwargs: Any) -> None:
        if prompt == self.prompt:
            self.server.fail_next(400)


def lookup(topic: str) -> str:
    return "found"


PROMPTS = ["a", "use lookup", "c", "d", "e"]
"""The second one calls the tool; the test fails the third one."""


Tree = list[tuple[str, str | None, str | None, str]]


def labelled(events: list[tuple[str, str, str | None, str]]) -> Tree:
    """``events`` with each run id replaced by ``B`` (the batch), ``R0``.. (runs, in order of start) or ``C0``..
    (calls and tools, in order of first event)."""
    labels: dict[str | None, str | None] = {None: None}
    runs = calls = 0
    for name, run_id, _, kind in events:
        if run_id in labels:
            continue
        if kind == "batch":
            labels[run_id] = "B"
        elif name == "run_start":
            labels[run_id], runs = f"R{runs}", runs + 1
        else:
            labels[run_id], calls = f"C{calls}", calls + 1
    return [(name, labels[run_id], labels[parent], kind) for name, run_id, parent, kind in events]


def one_call(run: str, first_call: int) -> Tree:
    call = f"C{first_call}"
    return [("run_start", run, "B", "run"), ("llm_start", call, run, "-"), ("llm_end", call, run, "-"),
            ("run_end", run, "B", "run")]


EXPECTED_TREE: Tree = [
    ("run_start", "B", None, "batch"),
    *one_call("R0", 0),
    ("run_start", "R1", "B", "run"),
    ("llm_start", "C1", "R1", "-"), ("llm_end", "C1", "R1", "-"),
    ("tool_start", "C2", "R1", "-"), ("tool_end", "C2", "R1", "-"),
    ("llm_start", "C3", "R1", "-"), ("llm_end", "C3", "R1", "-"),
    ("run_end", "R1", "B", "run"),
    ("run_start", "R2", "B", "run"), ("llm_start", "C4", "R2", "-"), ("error", "C4", "R2", "-"),
    *one_call("R3", 5),
    *one_call("R4", 6),
    ("run_end", "B", None, "batch"),
]


def run_batch(rlm: RLM, prompts: list[str], how: str, **options: Any) -> list[RunResult]:
    if how == "batch":
        return rlm.batch(prompts, progress=False, **options)

    async def in_a_loop() -> list[RunResult]:
        try:
            return await rlm.abatch(prompts, progress=False, **options)
        finally:
            await rlm.aclose()

    return asyncio.run(in_a_loop())


@pytest.mark.parametrize("how", ["batch", "abatch"])
def test_the_batch_frames_its_runs_and_is_their_parent(backend: str, server: LocalServer, how: str) -> None:
    recorder = TreeRecorder()
    rlm = make_rlm(server, recorder, FailRunOfPrompt(server, "c"), tools=[lookup], max_attempts=1)

    results = run_batch(rlm, PROMPTS, how, max_concurrency=1)

    assert labelled(recorder.events) == EXPECTED_TREE
    batch_id = recorder.events[0][1]
    item_runs = [run_id for name, run_id, _, kind in recorder.events if name == "run_start" and kind == "run"]
    assert [result.run_id for result in results] == item_runs
    assert [(result.parent_run_id, result.batch_id) for result in results] == [(batch_id, batch_id)] * 5
    assert [type(result.error) for result in results] == [type(None), type(None), LLMCallError, type(None),
                                                          type(None)]


def test_tags_and_metadata_of_the_batch_call_reach_the_batch_run_and_every_event(backend: str,
                                                                                server: LocalServer) -> None:
    seen: list[tuple[str, str, list[str], dict[str, Any]]] = []

    class ContextRecorder(BaseCallback):
        def on_run_start(self, prompt: str, *, kind: str | None, tags: list[str], metadata: dict[str, Any],
                         **kwargs: Any) -> None:
            seen.append(("run_start", kind or "", tags, metadata))

        def on_llm_end(self, response: Any, *, tags: list[str], metadata: dict[str, Any], **kwargs: Any) -> None:
            seen.append(("llm_end", "", tags, metadata))

        def on_run_end(self, answer: str, *, kind: str | None, tags: list[str], metadata: dict[str, Any],
                       **kwargs: Any) -> None:
            seen.append(("run_end", kind or "", tags, metadata))

    rlm = make_rlm(server, ContextRecorder(), tags=["default"], metadata={"team": "a"})
    rlm.batch(["x", "y"], max_concurrency=1, progress=False, tags=["job"], metadata={"job": 7})

    context = (["default", "job"], {"team": "a", "job": 7})
    assert seen == [("run_start", "batch", *context),
                    ("run_start", "run", *context), ("llm_end", "", *context), ("run_end", "run", *context),
                    ("run_start", "run", *context), ("llm_end", "", *context), ("run_end", "run", *context),
                    ("run_end", "batch", *context)]


def test_a_run_started_inside_a_tool_of_a_batch_item_is_a_run_child_of_the_tool_call(backend: str,
                                                                                      server: LocalServer) -> None:
    recorder = TreeRecorder()
    inner = make_rlm(server, recorder)

    async def consult(question: str) -> str:
        try:
            return (await inner.arun("inner question")).answer
        finally:
            await inner.aclose()

    outer = make_rlm(server, recorder, tools=[consult])
    [result] = outer.batch(["please consult"], progress=False)

    assert labelled(recorder.events) == [
        ("run_start", "B", None, "batch"),
        ("run_start", "R0", "B", "run"),
        ("llm_start", "C0", "R0", "-"), ("llm_end", "C0", "R0", "-"),
        ("tool_start", "C1", "R0", "-"),
        ("run_start", "R1", "C1", "run"),
        ("llm_start", "C2", "R1", "-"), ("llm_end", "C2", "R1", "-"),
        ("run_end", "R1", "C1", "run"),
        ("tool_end", "C1", "R0", "-"),
        ("llm_start", "C3", "R0", "-"), ("llm_end", "C3", "R0", "-"),
        ("run_end", "R0", "B", "run"),
        ("run_end", "B", None, "batch"),
    ]
    assert result.error is None and result.batch_id == recorder.events[0][1]


def test_a_batch_started_inside_a_tool_has_the_tool_call_as_parent(backend: str, server: LocalServer) -> None:
    recorder = TreeRecorder()
    inner = make_rlm(server, recorder)
    inner_results: list[RunResult] = []

    async def fan_out(question: str) -> str:
        try:
            inner_results.extend(await inner.abatch(["first", "second"], max_concurrency=1, progress=False))
        finally:
            await inner.aclose()
        return "done"

    make_rlm(server, recorder, tools=[fan_out]).run("please fan_out")

    assert labelled(recorder.events) == [
        ("run_start", "R0", None, "run"),
        ("llm_start", "C0", "R0", "-"), ("llm_end", "C0", "R0", "-"),
        ("tool_start", "C1", "R0", "-"),
        ("run_start", "B", "C1", "batch"),
        *one_call("R1", 2), *one_call("R2", 3),
        ("run_end", "B", "C1", "batch"),
        ("tool_end", "C1", "R0", "-"),
        ("llm_start", "C4", "R0", "-"), ("llm_end", "C4", "R0", "-"),
        ("run_end", "R0", None, "run"),
    ]
    assert [result.batch_id for result in inner_results] == [recorder.events[4][1]] * 2


def test_a_plain_run_is_kind_run_without_a_batch(backend: str, server: LocalServer) -> None:
    recorder = TreeRecorder()
    result = make_rlm(server, recorder).run("hi")
    assert labelled(recorder.events) == [("run_start", "R0", None, "run"), ("llm_start", "C0", "R0", "-"),
                                         ("llm_end", "C0", "R0", "-"), ("run_end", "R0", None, "run")]
    assert (result.parent_run_id, result.batch_id) == (None, None)


def test_an_empty_batch_still_starts_and_ends_but_a_refused_one_fires_nothing(backend: str,
                                                                              server: LocalServer) -> None:
    recorder = TreeRecorder()
    rlm = make_rlm(server, recorder)
    assert rlm.batch([], progress=False) == []
    assert labelled(recorder.events) == [("run_start", "B", None, "batch"), ("run_end", "B", None, "batch")]
    recorder.events.clear()
    with pytest.raises(Exception, match="max_concurrency"):
        rlm.batch(["a"], max_concurrency=0)
    assert recorder.events == []


# -- JSONL records --------------------------------------------------------------------------------------

TS_FIELD = re.compile(r'^\{"ts":"[0-9T:.Z-]+",')


def test_records_carry_kind_and_the_parent_chain_alike_on_both_backends(server: LocalServer,
                                                                        tmp_path: Path) -> None:
    rust_log = FileLogCallback(tmp_path / "rust.jsonl", backend="rust")
    python_log = FileLogCallback(tmp_path / "python.jsonl", backend="python")
    rlm = RLM.from_openai(MODEL, CallbackManager([rust_log, FailRunOfPrompt(server, "c")], backend="rust"),
                          base_url=server.base_url, api_key=server.api_key, tools=[lookup], max_attempts=1)
    rlm.batch(PROMPTS, max_concurrency=1, progress=False,
              callbacks=CallbackManager([python_log], backend="python"))
    rust_log.close()
    python_log.close()

    rust_lines = (tmp_path / "rust.jsonl").read_text(encoding="utf-8").splitlines()
    python_lines = (tmp_path / "python.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(rust_lines) == len(python_lines) == len(EXPECTED_TREE)
    assert [TS_FIELD.sub("{", line) for line in rust_lines] == [TS_FIELD.sub("{", line) for line in python_lines]

    records = [json.loads(line) for line in rust_lines]
    kinds = [(record["event"], record.get("kind", "-")) for record in records]
    assert kinds == [(name, kind) for name, _, _, kind in EXPECTED_TREE]
    # ``kind`` is a field of run records only, null when the event was fired without it.
    assert [list(record).index("kind") for record in records if "kind" in record] == [
        list(record).index("tags") - 1 for record in records if record["event"].startswith("run_")]
    parents = {record["run_id"]: record["parent_run_id"] for record in records}
    batch_id = records[0]["run_id"]
    for record in records[1:-1]:
        chain = [record["run_id"]]
        while parents[chain[-1]] is not None:
            chain.append(parents[chain[-1]])
        assert chain[-1] == batch_id
        assert len(chain) == (2 if record["event"].startswith("run_") else 3)


def test_a_run_event_fired_without_kind_has_a_null_kind_in_its_record(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    with FileLogCallback(path) as log:
        manager = CallbackManager([log])
        manager.on_run_start("p", run_id="r", timestamp=1_700_000_000.0)
        manager.on_run_end("a", run_id="r", kind="batch", timestamp=1_700_000_000.0)
    assert path.read_text(encoding="utf-8").splitlines() == [
        '{"ts":"2023-11-14T22:13:20.000000Z","event":"run_start","run_id":"r","parent_run_id":null,"model":null,'
        '"prompt":"p","kind":null}',
        '{"ts":"2023-11-14T22:13:20.000000Z","event":"run_end","run_id":"r","parent_run_id":null,"model":null,'
        '"answer":"a","kind":"batch"}',
    ]


# -- concurrent batches -----------------------------------------------------------------------------------

def batch_ids_are_kept_apart(recorder: TreeRecorder, results: list[list[RunResult]]) -> None:
    batch_events = [name for name, _, _, kind in recorder.events if kind == "batch"]
    assert batch_events == ["run_start", "run_start", "run_end", "run_end"]  # the batches ran at the same time
    batches = [run_id for name, run_id, _, kind in recorder.events if name == "run_start" and kind == "batch"]
    assert len(batches) == len(set(batches)) == len(results)
    parent_of = {run_id: parent for name, run_id, parent, _ in recorder.events if name == "run_start"}
    for batch_results in results:
        [batch_id] = {result.batch_id for result in batch_results}
        assert batch_id in batches
        assert [parent_of[result.run_id] for result in batch_results] == [batch_id] * len(batch_results)
    ends = [run_id for name, run_id, _, kind in recorder.events if name == "run_end" and kind == "batch"]
    assert sorted(ends) == sorted(batches)


def test_two_batches_at_once_on_one_rlm_keep_their_own_ids(backend: str, server: LocalServer) -> None:
    server.latency = 0.02
    recorder = TreeRecorder()
    rlm = make_rlm(server, recorder)
    results: list[list[RunResult]] = [[], []]
    start = threading.Barrier(2)

    def job(index: int) -> None:
        start.wait(timeout=10)
        results[index] = rlm.batch([f"job {index} item {item}" for item in range(6)], max_concurrency=3,
                                   progress=False)

    threads = [threading.Thread(target=job, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert [len(batch_results) for batch_results in results] == [6, 6]
    batch_ids_are_kept_apart(recorder, results)
    # The answers came back to the batch that asked.
    assert [result.answer for result in results[1]] == [f"Hello! You said: job 1 item {item}" for item in range(6)]


async def test_two_abatches_at_once_in_one_loop_keep_their_own_ids(backend: str, server: LocalServer) -> None:
    server.latency = 0.005
    recorder = TreeRecorder()
    rlm = make_rlm(server, recorder)
    try:
        results = await asyncio.gather(*(rlm.abatch([f"job {index} item {item}" for item in range(4)],
                                                    max_concurrency=2, progress=False) for index in range(2)))
    finally:
        await rlm.aclose()
    batch_ids_are_kept_apart(recorder, list(results))


# -- results: cost and rows -------------------------------------------------------------------------------

def test_cost_usd_is_what_metrics_counts_for_the_runs_calls(backend: str, server: LocalServer) -> None:
    metrics = MetricsCallback()
    rlm = make_rlm(server, metrics, tools=[lookup])
    server.usage_details_next(cached_tokens=3, count=2)
    [result] = rlm.batch(["use lookup please"], progress=False)

    assert result.usage is not None and result.usage.cached_tokens == 6
    assert result.cost_usd is not None and result.cost_usd > 0
    assert result.cost_usd == metrics.get_metrics()["total_cost_usd"]
    run_metrics = MetricsCallback()
    assert rlm.run("use lookup please", callbacks=[run_metrics]).cost_usd == (
        run_metrics.get_metrics()["total_cost_usd"])


def test_a_failed_item_counts_the_calls_it_made_before_failing(backend: str, server: LocalServer) -> None:
    metrics = MetricsCallback()

    def lookup_then_fail(topic: str) -> str:
        server.fail_next(400)  # the call after the tool fails
        return "found"

    rlm = make_rlm(server, metrics, tools=[lookup_then_fail], max_attempts=1)
    failed, succeeded = rlm.batch(["use lookup_then_fail", "plain"], max_concurrency=1, progress=False)

    assert isinstance(failed.error, LLMCallError) and failed.answer == ""
    totals = metrics.get_metrics()
    assert totals["completed_calls"] == 2 and totals["errors"] == 1
    assert failed.usage is not None and succeeded.usage is not None
    assert failed.usage.total_tokens + succeeded.usage.total_tokens == totals["total_tokens"]
    assert failed.usage.total_tokens > 0
    assert failed.cost_usd is not None and succeeded.cost_usd is not None and failed.cost_usd > 0
    assert failed.cost_usd + succeeded.cost_usd == totals["total_cost_usd"]


def test_cost_usd_is_none_for_an_unpriced_model_or_unreported_usage(server: LocalServer) -> None:
    server.fail_next(400)
    failed, answered = make_rlm(server, model="local-model", max_attempts=1).batch(["a", "b"], max_concurrency=1,
                                                                                   progress=False)
    assert (failed.cost_usd, answered.cost_usd) == (None, None)
    assert failed.usage == Usage()
    server.omit_usage_next()
    unreported = make_rlm(server).run("c")
    assert (unreported.usage, unreported.cost_usd) == (None, None)
    assert make_rlm(server).run("d").cost_usd == pytest.approx((4 * 0.15 + 4 * 0.60) / 1e6, rel=1e-12)


def test_as_row_is_plain_data_for_a_table(server: LocalServer) -> None:
    server.fail_next(400)
    failed, answered = make_rlm(server, max_attempts=1).batch(["a", "hello there"], max_concurrency=1,
                                                              progress=False)
    row = answered.as_row()
    assert set(row) == ROW_KEYS
    assert json.loads(json.dumps(row)) == row
    assert row == {
        "answer": "Hello! You said: hello there", "error": None, "run_id": answered.run_id,
        "parent_run_id": answered.batch_id, "batch_id": answered.batch_id, "model": "gpt-4o-mini",
        "prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10, "cached_tokens": 0, "reasoning_tokens": 0,
        "cost_usd": answered.cost_usd,
    }
    failed_row = failed.as_row()
    assert json.loads(json.dumps(failed_row)) == failed_row
    assert failed_row["answer"] == ""
    assert isinstance(failed_row["error"], str) and failed_row["error"].startswith("LLMCallError: ")
    assert failed_row["cost_usd"] == 0.0
    server.omit_usage_next()
    unreported = make_rlm(server).run("x").as_row()
    assert [unreported[key] for key in ("prompt_tokens", "total_tokens", "cost_usd", "batch_id")] == [None] * 4


# -- the kind keyword reaches hooks as ttft_ms does ------------------------------------------------------

class KindHooks(BaseCallback):
    def __init__(self) -> None:
        self.named: list[Any] = []
        self.through_kwargs: list[dict[str, Any]] = []

    def on_run_start(self, prompt: str, kind: str | None = "unset", **kwargs: Any) -> None:
        self.named.append(kind)

    def on_run_end(self, answer: str, **kwargs: Any) -> None:
        self.through_kwargs.append({key: value for key, value in kwargs.items() if key == "kind"})


def test_a_hook_that_names_kind_gets_it_and_kwargs_get_it_when_given(backend: str) -> None:
    hooks = KindHooks()
    manager = CallbackManager([hooks])
    manager.on_run_start("p", run_id="r", kind="batch")
    manager.on_run_start("p", run_id="r")
    manager.on_run_start("p", run_id="r", kind=None)
    manager.on_run_end("a", run_id="r", kind="run")
    manager.on_run_end("a", run_id="r")
    manager.on_run_end("a", run_id="r", kind=None)
    assert hooks.named == ["batch", None, None]
    assert hooks.through_kwargs == [{"kind": "run"}, {}, {}]


def test_an_rlm_gives_kind_to_hooks_through_kwargs(backend: str, server: LocalServer) -> None:
    hooks = KindHooks()
    make_rlm(server, hooks).batch(["x"], progress=False)
    assert hooks.named == ["batch", "run"]
    assert hooks.through_kwargs == [{"kind": "run"}, {"kind": "batch"}]
