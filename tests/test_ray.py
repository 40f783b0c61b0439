"""Batch jobs on Ray: prompts of a Ray Dataset through RLM on an actor pool of a local Ray cluster
(``ray.init(num_cpus=2)``), against the embedded OpenAI-compatible server, with exact merged metrics and
per-worker JSONL logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

from rlm_toolkit import RLM, RLMConfigError
from rlm_toolkit.callbacks import MetricsSnapshot
from rlm_toolkit.ray import OUTPUT_COLUMNS, run_prompts
from rlm_toolkit.server import LocalServer

PROMPTS = 120


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


def factory(server: LocalServer) -> Any:
    base_url, api_key = server.base_url, server.api_key
    return lambda: RLM.from_openai("gpt-4o-mini", base_url=base_url, api_key=api_key, max_attempts=1)


def prompts_dataset(count: int = PROMPTS) -> Any:
    return ray.data.from_items([{"prompt": f"question {index}", "item": index} for index in range(count)])


@pytest.mark.parametrize("backend", ["rust", "python"])
def test_every_prompt_becomes_a_row_and_the_merged_metrics_count_every_call(ray_cluster: None, server: LocalServer,
                                                                            tmp_path: Path, backend: str) -> None:
    result = run_prompts(prompts_dataset(), factory(server), batch_size=25, max_concurrency=4,
                         log_dir=tmp_path / "logs", backend=backend)  # type: ignore[arg-type]
    rows = sorted(result.dataset.take_all(), key=lambda row: row["item"])
    assert [row["item"] for row in rows] == list(range(PROMPTS))
    assert set(rows[0]) == {"prompt", "item", *OUTPUT_COLUMNS}
    assert all(row["answer"] == f"Hello! You said: question {row['item']}" for row in rows)
    assert all(row["error"] is None and row["model"] == "gpt-4o-mini" for row in rows)
    assert len({row["run_id"] for row in rows}) == PROMPTS

    metrics = result.metrics.get_metrics()
    assert metrics["completed_calls"] == metrics["total_calls"] == PROMPTS
    assert metrics["prompt_tokens"] == sum(row["prompt_tokens"] for row in rows)
    assert metrics["completion_tokens"] == sum(row["completion_tokens"] for row in rows)
    assert metrics["total_cost_usd"] == pytest.approx(sum(row["cost_usd"] for row in rows), rel=1e-12)
    assert metrics["open_runs"] == 0 and metrics["errors"] == 0
    assert MetricsSnapshot.from_json(result.metrics.to_json()) == result.metrics

    logs = sorted((tmp_path / "logs").glob("*.jsonl"))
    assert 1 <= len(logs) <= 2  # one per actor that ran a batch
    records = [json.loads(line) for log in logs for line in log.read_text().splitlines()]
    batch_ids = {row["batch_id"] for row in rows}
    assert None not in batch_ids and len(batch_ids) >= -(-PROMPTS // 25)  # one batch run per data batch
    # run_start, llm_start, llm_end, run_end per prompt; run_start and run_end per batch.
    assert len(records) == 4 * PROMPTS + 2 * len(batch_ids)
    assert {record["metadata"]["worker"] for record in records} == {log.stem.rsplit("-", 1)[1] for log in logs}
    starts = [record for record in records if record["event"] == "run_start"]
    assert {record["run_id"] for record in starts if record["kind"] == "batch"} == batch_ids
    item_parents = {record["run_id"]: record["parent_run_id"] for record in starts if record["kind"] == "run"}
    assert item_parents == {row["run_id"]: row["batch_id"] for row in rows}


def test_a_failed_prompt_is_a_row_with_its_error_and_the_job_goes_on(ray_cluster: None, server: LocalServer) -> None:
    server.fail_next(400, count=3)
    result = run_prompts(prompts_dataset(40), factory(server), batch_size=10, max_concurrency=1)
    rows = result.dataset.take_all()
    failed = [row for row in rows if row["error"] is not None]
    assert len(rows) == 40 and len(failed) == 3
    # Nothing answered before they failed: no tokens, no cost.
    assert all(row["answer"] == "" and row["total_tokens"] == 0 and row["cost_usd"] == 0.0 for row in failed)
    assert all("400" in row["error"] for row in failed)
    metrics = result.metrics.get_metrics()
    assert metrics["completed_calls"] == 37 and metrics["errors"] == 3


def test_bad_arguments_are_refused_before_any_work(ray_cluster: None, server: LocalServer) -> None:
    with pytest.raises(RLMConfigError, match="no column 'text'"):
        run_prompts(prompts_dataset(3), factory(server), prompt_column="text")
    with pytest.raises(RLMConfigError, match="actors must be an int >= 1"):
        run_prompts(prompts_dataset(3), factory(server), actors=0)


def test_without_ray_the_module_names_the_extra(tmp_path: Path) -> None:
    script = """
import sys

class NoRay:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "ray":
            raise ImportError("No module named 'ray'")

sys.meta_path.insert(0, NoRay())
from rlm_toolkit.ray import run_prompts
try:
    run_prompts(None, lambda: None)
except ImportError as error:
    print(type(error).__name__, error)
"""
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert completed.stdout.strip() == "MissingExtraError rlm_toolkit.ray needs Ray: pip install 'rlm_toolkit[ray]'"


def test_an_rlm_object_travels_to_the_actors_by_its_configuration(ray_cluster: None, server: LocalServer,
                                                                  tmp_path: Path) -> None:
    from rlm_toolkit.callbacks import FileLogCallback

    own_log = tmp_path / "rlm-{pid}.jsonl"
    rlm = RLM.from_openai("gpt-4o-mini", base_url=server.base_url, api_key=server.api_key,
                          callbacks=[FileLogCallback(own_log)], tags=["nightly"])
    result = run_prompts(prompts_dataset(30), rlm, batch_size=10)
    rows = result.dataset.take_all()
    assert len(rows) == 30 and all(row["error"] is None for row in rows)
    # The RLM's own callbacks were rebuilt in each actor, each with its own {pid} file; the driver's stays empty.
    driver_log = tmp_path / f"rlm-{os.getpid()}.jsonl"
    assert driver_log.read_text() == ""
    logs = sorted(set(tmp_path.glob("rlm-*.jsonl")) - {driver_log})
    records = [json.loads(line) for log in logs for line in log.read_text().splitlines()]
    assert 1 <= len(logs) <= 2
    batches = {row["batch_id"] for row in rows}
    assert len(records) == 4 * 30 + 2 * len(batches) and {record["tags"][0] for record in records} == {"nightly"}
