"""The pair case: ``MetricsCallback`` + ``FileLogCallback`` for ``on_llm_start`` + ``on_llm_end`` pairs
(200-char prompt, 300-char response, unique run ids), the log's close included in each batch, against the same
work in plain Python and the peers and against the floor of writing the log's own bytes; and the metrics case:
``MetricsCallback`` alone on the same events."""

from __future__ import annotations

import pytest

from rlm_toolkit import bench

STEADY_REPEATS = 5
"""Batches per implementation of the interleaved pair run, at least (a max/min over fewer says little)."""


@pytest.mark.parametrize("key", bench.case_keys("pair"))
def test_pair(run_contender, key: str) -> None:
    run_contender("pair", key)


@pytest.mark.parametrize("key", bench.case_keys("metrics"))
def test_metrics_alone(run_contender, key: str) -> None:
    run_contender("metrics", key)


@pytest.fixture(scope="module")
def pair(interleaved) -> dict[str, bench.Row]:
    """Rust, Python backend, plain json, orjson, langchain-core and the floor measured interleaved in this one
    run, with at least ``STEADY_REPEATS`` batches each."""
    return interleaved(["pair"], min_repeats=STEADY_REPEATS)["pair"]


@pytest.fixture(scope="module")
def metrics_alone(interleaved) -> dict[str, bench.Row]:
    """MetricsCallback alone, Rust and Python backends, and the calls with no callbacks, measured interleaved in
    one run."""
    return interleaved(["metrics"])["metrics"]


# -- TARGET ASSERTIONS ---------------------------------------------------------------------------------------


@pytest.mark.target
def test_target_pair_within_1_25x_of_the_floor(pair, check_target) -> None:
    """TARGET: the Rust pair (metrics + JSONL) takes <= 1.25x the floor: its own output lines, pre-encoded,
    written one per event through a 64 KiB buffer."""
    check_target("pair: rust / floor (the log's bytes alone)", pair["rust"].ns_ratio_to(pair["floor"]), "<=", 1.25,
                 "x")


@pytest.mark.target
def test_target_pair_3m_events_per_second(pair, check_target) -> None:
    """TARGET: the Rust pair handles >= 3 million events/s on this machine."""
    rate = pair["rust"].events_per_s
    check_target("pair: rust throughput", None if rate is None else rate / 1e6, ">=", 3, "M events/s")


@pytest.mark.target
def test_target_pair_steady_max_over_min_1_3(pair, check_target) -> None:
    """TARGET: the Rust pair is steady: its slowest batch takes <= 1.3x its fastest (over >= 5 repeats)."""
    rust = pair["rust"]
    assert len(rust.samples) >= STEADY_REPEATS, f"only {len(rust.samples)} batches measured"
    check_target("pair: rust slowest / fastest batch", rust.max_over_min, "<=", 1.3, "x",
                 f"{len(rust.samples)} batches")


@pytest.mark.target
def test_target_pair_cpu_within_1_6x_of_wall(pair, check_target) -> None:
    """TARGET: the Rust pair's whole-process CPU time per event (the JSONL writer thread included) is <= 1.6x
    its wall-clock time per event (medians)."""
    cpu, wall = pair["rust"].cpu_ns_per_event, pair["rust"].ns_per_event
    if cpu is None or wall is None:
        check_target("pair: rust CPU / wall per event", None, "<=", 1.6, "x")
        return
    check_target("pair: rust CPU / wall per event", cpu / wall, "<=", 1.6, "x",
                 f"CPU {cpu:.0f} ns/event, wall {wall:.0f} ns/event")


@pytest.mark.target
def test_target_pair_15x_plain_json(pair, check_target) -> None:
    """TARGET: the Rust pair is >= 15x faster than plain json.dumps + buffered text write."""
    check_target("pair: rust vs plain json.dumps", pair["json"].ns_ratio_to(pair["rust"]), ">=", 15, "x")


@pytest.mark.target
def test_target_pair_4x_orjson(pair, check_target) -> None:
    """TARGET: the Rust pair is >= 4x faster than orjson + 64 KiB buffered binary write."""
    check_target("pair: rust vs orjson", pair["orjson"].ns_ratio_to(pair["rust"]), ">=", 4, "x")


@pytest.mark.target
def test_target_pair_25x_langchain(pair, check_target) -> None:
    """TARGET: the Rust pair is >= 25x faster than a langchain-core handler doing the same work."""
    check_target("pair: rust vs langchain-core", pair["langchain"].ns_ratio_to(pair["rust"]), ">=", 25, "x")


@pytest.mark.target
def test_target_metrics_alone_120ns_per_event(metrics_alone, check_target) -> None:
    """TARGET: MetricsCallback alone (Rust) costs <= 120 ns per event on the pair's start+end."""
    calls_alone = metrics_alone["none"].ns_per_event
    check_target("metrics alone: rust", metrics_alone["rust"].ns_per_event, "<=", 120, " ns/event",
                 "" if calls_alone is None else f"the same calls with no callbacks: {calls_alone:.0f} ns/event")
