"""batch/abatch against the real LocalServer: order, isolation of failures, exact metrics and JSONL log."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import pytest

from rlm_toolkit.callbacks import FileLogCallback, MetricsCallback
from rlm_toolkit.errors import LLMCallError
from rlm_toolkit.rlm import RLMConfigError
from rlm_toolkit.server import LocalServer
from test_rlm import Recorder, TokenRecorder, make_rlm


def test_thousand_prompts_give_exact_metrics_and_log(server: LocalServer, tmp_path: Path) -> None:
    metrics = MetricsCallback()
    log_path = tmp_path / "batch.jsonl"
    log = FileLogCallback(log_path)
    prompts = [f"prompt number {index}" for index in range(1000)]

    started = time.perf_counter()
    results = make_rlm(server, metrics, log).batch(prompts, max_concurrency=64, progress=False)
    elapsed = time.perf_counter() - started
    log.close()

    assert [result.answer for result in results] == [f"Hello! You said: {prompt}" for prompt in prompts]
    [batch_id] = {result.batch_id for result in results}
    assert all(result.error is None and result.parent_run_id == batch_id for result in results)
    totals = metrics.get_metrics()
    assert totals["total_calls"] == 1000
    assert totals["total_tokens"] == sum(result.usage.total_tokens for result in results) == 1000 * (6 + 6)
    assert totals["errors"] == 0

    records = [json.loads(line) for line in log_path.read_text().split("\n") if line]
    assert Counter(record["event"] for record in records) == {
        "run_start": 1001, "llm_start": 1000, "llm_end": 1000, "run_end": 1001,
    }
    batch_start, *_, batch_end = records
    assert [(record["event"], record["run_id"], record["kind"]) for record in (batch_start, batch_end)] == [
        ("run_start", batch_id, "batch"), ("run_end", batch_id, "batch")]
    records = records[1:-1]
    calls = [record for record in records if record["event"].startswith("llm_")]
    assert all(count == 2 for count in Counter(record["run_id"] for record in calls).values())
    run_ids = {result.run_id for result in results}
    assert len(run_ids) == 1000
    logged_runs = {record["run_id"] for record in records if record["event"] == "run_start"}
    assert logged_runs == run_ids
    # Every parent id points at a run whose own records are in the log.
    assert {record["parent_run_id"] for record in calls} == logged_runs
    assert {(record["parent_run_id"], record["kind"]) for record in records if record["event"] == "run_start"} == {
        (batch_id, "run")}
    assert elapsed < 20, f"1,000 prompts took {elapsed:.1f} s"


def test_one_failure_is_captured_and_the_others_go_on(server: LocalServer) -> None:
    recorder = Recorder()
    server.fail_next(400)
    results = make_rlm(server, recorder).batch(["a", "b", "c"], max_concurrency=1, progress=False)

    failed, *succeeded = results
    assert isinstance(failed.error, LLMCallError)
    assert failed.answer == str(failed) == ""
    assert [result.answer for result in succeeded] == ["Hello! You said: b", "Hello! You said: c"]
    assert recorder.of("error")[0].parent_run_id == failed.run_id
    assert len(recorder.of("llm_end")) == 2


async def test_abatch_in_a_running_loop(server: LocalServer) -> None:
    results = await make_rlm(server).abatch([f"q{index}" for index in range(20)], max_concurrency=4)
    assert [result.answer for result in results] == [f"Hello! You said: q{index}" for index in range(20)]


async def test_abatch_respects_max_concurrency(server: LocalServer) -> None:
    in_flight = peak = 0

    async def probe(x: str) -> str:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return "done"

    await make_rlm(server, tools=[probe]).abatch(["probe it"] * 12, max_concurrency=3)
    assert peak == 3


async def test_sync_batch_works_inside_a_running_loop(server: LocalServer) -> None:
    results = make_rlm(server).batch(["x", "y"], progress=False)
    assert [result.answer for result in results] == ["Hello! You said: x", "Hello! You said: y"]


def test_batch_streams_when_a_callback_takes_tokens(server: LocalServer) -> None:
    recorder = TokenRecorder()
    results = make_rlm(server, recorder).batch(["one two", "three"], progress=False)
    assert all(request["stream"] for request in server.requests)
    assert len(recorder.tokens()) == sum(len(result.answer.split()) for result in results)


def test_progress_bar_when_asked(server: LocalServer, capsys: pytest.CaptureFixture[str]) -> None:
    make_rlm(server).batch(["a", "b", "c"], progress=True)
    assert "3/3" in capsys.readouterr().err


def test_empty_batch_and_bad_concurrency(server: LocalServer) -> None:
    rlm = make_rlm(server)
    assert rlm.batch([]) == []
    with pytest.raises(RLMConfigError, match="max_concurrency"):
        rlm.batch(["a"], max_concurrency=0)
