"""Metrics snapshots: exact merges across sinks, processes and backends, the JSON and pickle round trips,
and the refusals of snapshots that cannot be read or merged."""

from __future__ import annotations

import json
import multiprocessing
import pickle
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlm_toolkit import LLMResponse, MetricsSnapshotError, Usage
from rlm_toolkit.callbacks import CallbackManager, MetricsCallback, MetricsSnapshot

PRICES = {"gpt-4o": (2.5, 10.0, 1.25), "gpt-4o-mini": (0.15, 0.6), "local": (0.0, 0.0)}
MODELS = st.sampled_from(["gpt-4o", "gpt-4o-mini", "local", "unpriced-model", None])
USAGES = st.one_of(
    st.none(),
    st.builds(Usage, st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 3 * 10**6),
              st.integers(0, 2 * 10**6), st.integers(0, 10**5)),
    st.just(Usage(2**64 - 1, 2**64 - 1, 0, 2**64 - 1)),
)
CALL = st.fixed_dictionaries({
    "model": MODELS,
    "end_model": st.one_of(st.none(), MODELS),
    "latency_s": st.one_of(st.floats(0, 100, allow_nan=False), st.sampled_from([0.0, 1e-7, 0.0015, 3e5])),
    "outcome": st.sampled_from(["end", "end", "end", "error", "open"]),
    "usage": USAGES,
    "ttft_ms": st.one_of(st.none(), st.floats(-5, 5e4, allow_nan=False)),
    "extras": st.lists(st.sampled_from(["retry", "token", "tool", "memory"]), max_size=3),
})


def feed(metrics: MetricsCallback, calls: list[dict[str, Any]], indexes: list[int], backend: str) -> None:
    """Fires the calls at ``indexes`` (each one run: start, then end, error or nothing) into ``metrics``."""
    manager = CallbackManager([metrics], backend=backend)
    for index in indexes:
        call = calls[index]
        run_id, start = f"run-{index}", 1_700_000_000.0 + index
        manager.on_llm_start("prompt", run_id=run_id, model=call["model"], timestamp=start)
        for extra in call["extras"]:
            if extra == "retry":
                manager.on_retry(1, 3, ValueError("again"), run_id=run_id)
            elif extra == "token":
                manager.on_llm_new_token("t", run_id=run_id)
            elif extra == "tool":
                manager.on_tool_start("search", "{}", run_id=run_id)
                manager.on_tool_end("search", "found", run_id=run_id)
            else:
                manager.on_memory_store("remember this")
        end = start + call["latency_s"]
        if call["outcome"] == "end":
            response = LLMResponse("answer", "gpt-4o", call["usage"])
            manager.on_llm_end(response, run_id=run_id, model=call["end_model"], ttft_ms=call["ttft_ms"],
                               timestamp=end)
        elif call["outcome"] == "error":
            manager.on_error(TimeoutError("slow"), run_id=run_id, model=call["end_model"], timestamp=end)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(calls=st.lists(CALL, max_size=25), parts=st.integers(1, 4), data=st.data())
def test_merging_the_snapshots_of_split_sinks_gives_the_figures_of_one_sink(backend: str, calls: list[Any],
                                                                             parts: int, data: Any) -> None:
    owners = data.draw(st.lists(st.integers(0, parts - 1), min_size=len(calls), max_size=len(calls)))
    whole = MetricsCallback(prices=PRICES, backend=backend)
    feed(whole, calls, list(range(len(calls))), backend)
    sinks = [MetricsCallback(prices=PRICES, backend=backend) for _ in range(parts)]
    for part, sink in enumerate(sinks):
        feed(sink, calls, [index for index, owner in enumerate(owners) if owner == part], backend)
    snapshots = [sink.snapshot() for sink in sinks]
    expected = whole.get_metrics()

    assert MetricsSnapshot.merge(snapshots).get_metrics() == expected
    assert sum(snapshots, MetricsSnapshot.empty()).get_metrics() == expected
    assert sum(reversed(snapshots)).get_metrics() == expected  # type: ignore[union-attr]
    driver = MetricsCallback(prices=PRICES, backend=backend)
    for snapshot in snapshots:
        driver.merge(snapshot)
    assert driver.get_metrics() == expected
    assert whole.snapshot().get_metrics() == expected
    for snapshot in snapshots:
        assert MetricsSnapshot.from_json(snapshot.to_json()) == snapshot
        assert pickle.loads(pickle.dumps(snapshot)) == snapshot


@settings(max_examples=40, deadline=None)
@given(calls=st.lists(CALL, max_size=20))
def test_both_backends_write_the_same_snapshot(calls: list[Any]) -> None:
    texts = []
    for backend in ("rust", "python"):
        metrics = MetricsCallback(prices=PRICES, backend=backend)
        feed(metrics, calls, list(range(len(calls))), backend)
        texts.append(metrics.snapshot().to_json())
    assert texts[0] == texts[1]


def latencies_sink(backend: str, latencies_ms: list[float]) -> MetricsCallback:
    metrics = MetricsCallback(backend=backend)
    manager = CallbackManager([metrics], backend=backend)
    for index, latency_ms in enumerate(latencies_ms):
        manager.on_llm_start("p", run_id=str(index), model="gpt-4o", timestamp=1000.0)
        manager.on_llm_end(LLMResponse("a", "gpt-4o", Usage.of(1, 1)), run_id=str(index), model="gpt-4o",
                           timestamp=1000.0 + latency_ms / 1000)
    return metrics


def test_the_merged_p95_is_the_global_one_not_the_mean_of_the_workers(backend: str) -> None:
    slow = [float(ms) for ms in range(1000, 13000, 6)]  # 2,000 calls from 1 s to 13 s
    fast = [float(ms) for ms in range(100, 1600, 3)][:2000]  # 500 calls ... 2,000 calls from 0.1 s
    workers = [latencies_sink(backend, slow), latencies_sink(backend, fast)]
    one = latencies_sink(backend, slow + fast)
    merged = MetricsSnapshot.merge(worker.snapshot() for worker in workers).get_metrics()
    mean_of_p95s = sum(worker.get_metrics()["p95_latency_ms"] for worker in workers) / 2
    assert merged == one.get_metrics()
    assert merged["p95_latency_ms"] != mean_of_p95s
    assert abs(merged["p95_latency_ms"] - mean_of_p95s) > 0.2 * merged["p95_latency_ms"]


def worker_snapshot(first: int) -> MetricsSnapshot:
    """Runs in a spawned process: 50 calls of its own, returned as a snapshot (pickled by the pool)."""
    metrics = MetricsCallback(prices=PRICES)
    manager = CallbackManager([metrics])
    for index in range(first, first + 50):
        manager.on_llm_start("p", run_id=str(index), model="gpt-4o", timestamp=1000.0)
        manager.on_llm_end(LLMResponse("a", "gpt-4o", Usage(100 + index, 7, 0, index % 60)), run_id=str(index),
                           model="gpt-4o", ttft_ms=float(index), timestamp=1000.0 + index / 997)
    return metrics.snapshot()


def test_snapshots_from_spawned_workers_merge_to_the_figures_of_one_process() -> None:
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        snapshots = pool.map_async(worker_snapshot, [0, 50, 100, 150]).get(timeout=120)
    assert len(snapshots) == 4
    assert MetricsSnapshot.merge(snapshots) == MetricsSnapshot.merge([worker_snapshot(first)
                                                                     for first in (0, 50, 100, 150)])
    whole = MetricsCallback(prices=PRICES)
    manager = CallbackManager([whole])
    for index in range(200):
        manager.on_llm_start("p", run_id=str(index), model="gpt-4o", timestamp=1000.0)
        manager.on_llm_end(LLMResponse("a", "gpt-4o", Usage(100 + index, 7, 0, index % 60)), run_id=str(index),
                           model="gpt-4o", ttft_ms=float(index), timestamp=1000.0 + index / 997)
    assert MetricsSnapshot.merge(snapshots).get_metrics() == whole.get_metrics()
    assert whole.get_metrics()["completed_calls"] == 200


def test_open_runs_travel_as_a_count(backend: str) -> None:
    metrics = MetricsCallback(backend=backend)
    CallbackManager([metrics], backend=backend).on_llm_start("p", run_id="still-running", model="gpt-4o")
    driver = MetricsCallback(backend=backend)
    driver.merge(metrics.snapshot())
    driver.merge(metrics.snapshot())
    assert driver.get_metrics()["open_runs"] == 2
    # The driver never saw the start: an end for that run there pairs with nothing.
    CallbackManager([driver], backend=backend).on_llm_end(LLMResponse("a"), run_id="still-running")
    assert driver.get_metrics()["p50_latency_ms"] == 0.0
    assert driver.get_metrics()["open_runs"] == 2


def test_differently_priced_snapshots_refuse_to_merge_and_change_nothing(backend: str) -> None:
    cheap = latencies_sink(backend, [5.0])
    dear = MetricsCallback(prices={"gpt-4o": (100.0, 100.0)}, backend=backend)
    CallbackManager([dear], backend=backend).on_llm_start("p", run_id="x", model="gpt-4o")
    with pytest.raises(MetricsSnapshotError, match='"gpt-4o" is priced differently'):
        MetricsSnapshot.merge([cheap.snapshot(), dear.snapshot()])
    before = cheap.get_metrics()
    other = MetricsCallback(backend=backend)
    CallbackManager([other], backend=backend).on_retry(1, 3, ValueError("x"))
    with pytest.raises(MetricsSnapshotError, match="same price table"):
        cheap.merge(MetricsSnapshot.merge([other.snapshot(), dear.snapshot()]))
    assert cheap.get_metrics() == before


def snapshot_payload() -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(latencies_sink("rust", [1.0, 2.0, 900.0]).snapshot().to_json())
    return payload


@pytest.mark.parametrize(("change", "message"), [
    (lambda payload: payload.update(version=2), "has version 2; this rlm_toolkit reads version 1"),
    (lambda payload: payload.update(format="something"), "not a metrics snapshot"),
    (lambda payload: payload["histogram"].update(exact_below=1024), "histogram layout"),
    (lambda payload: payload["state"]["counters"].update(retries=-1), "retries must be an int from 0"),
    (lambda payload: payload["state"]["counters"].pop("retries"), "the counters must hold exactly"),
    (lambda payload: payload["state"]["latency"].update(count=2), "holds 3 latencies but its count is 2"),
    (lambda payload: payload["state"]["latency"]["buckets"].append([40000, 1]), "past the last bucket"),
    (lambda payload: payload["state"]["latency"]["buckets"].reverse(), "increasing index order"),
    (lambda payload: payload["state"]["latency"].update(min_ms="fast"), "latency.min_ms must be a finite"),
    (lambda payload: payload["state"]["by_model"].append(payload["state"]["by_model"][0]), "appears twice"),
    (lambda payload: payload["state"]["by_model"][0].update(cost_known=1), "cost_known of 'gpt-4o' must be"),
])
def test_a_snapshot_that_cannot_be_read_is_refused_with_what_is_wrong(change: Any, message: str) -> None:
    payload = snapshot_payload()
    change(payload)
    with pytest.raises(MetricsSnapshotError, match=message):
        snapshot = MetricsSnapshot.from_json(json.dumps(payload))
        snapshot.get_metrics()


def test_text_that_is_not_a_snapshot_is_refused() -> None:
    for text in ("", "{", "[]", '{"format": "rlm_toolkit.metrics"}', "[" * 100_000 + "]" * 100_000, "\ud800",
                 b"\xff\xfe", 12):
        with pytest.raises(MetricsSnapshotError):
            MetricsSnapshot.from_json(text)


def test_a_snapshot_is_an_immutable_value() -> None:
    snapshot = latencies_sink("rust", [3.0]).snapshot()
    with pytest.raises(AttributeError, match="immutable"):
        snapshot._text = "{}"  # type: ignore[misc]
    with pytest.raises(TypeError, match="MetricsCallback.snapshot"):
        MetricsSnapshot()
    assert snapshot == MetricsSnapshot.from_json(snapshot.to_json())
    assert hash(snapshot) == hash(MetricsSnapshot.from_json(snapshot.to_json()))
    assert repr(snapshot) == "MetricsSnapshot(total_calls=1, completed_calls=1, errors=0)"
    with pytest.raises(TypeError, match="takes MetricsSnapshot objects"):
        MetricsSnapshot.merge([snapshot, {"counters": {}}])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="takes a MetricsSnapshot"):
        MetricsCallback().merge(snapshot.get_metrics())  # type: ignore[arg-type]


def test_the_empty_snapshot_is_the_figures_of_a_new_sink(backend: str) -> None:
    assert MetricsSnapshot.empty().get_metrics() == MetricsCallback(backend=backend).get_metrics()
    assert MetricsCallback(backend=backend).snapshot() == MetricsSnapshot.empty()


def test_a_driver_with_another_price_table_refuses_models_it_would_cost_differently(backend: str) -> None:
    worker = latencies_sink(backend, [5.0])  # gpt-4o at the default prices
    driver = MetricsCallback(prices={"gpt-4o": (1.0, 1.0)}, backend=backend)
    with pytest.raises(MetricsSnapshotError, match='"gpt-4o" is priced differently'):
        driver.merge(worker.snapshot())
    assert driver.get_metrics() == MetricsCallback(backend=backend).get_metrics()
    unpriced = MetricsCallback(prices={}, backend=backend)
    with pytest.raises(MetricsSnapshotError, match="same price table"):
        unpriced.merge(worker.snapshot())
    same = MetricsCallback(backend=backend)
    same.merge(worker.snapshot())
    assert same.get_metrics() == worker.get_metrics()


@pytest.mark.parametrize("price", [(float("inf"), 1.0), (float("nan"), 1.0), (-1.0, 1.0), ("1", 1.0), (True, 1.0),
                                   (1.0,), (1.0, 2.0, 3.0, 4.0), 1.5])
def test_a_price_that_no_snapshot_could_hold_is_refused_at_construction(price: Any) -> None:
    from rlm_toolkit import CallbackConfigError

    with pytest.raises(CallbackConfigError, match="each a finite number >= 0"):
        MetricsCallback(prices={"my-model": price})
