"""The pair case: ``MetricsCallback`` + ``FileLogCallback`` for ``on_llm_start`` + ``on_llm_end`` pairs
(200-char prompt, 300-char response, unique run ids), the log's close included in each batch."""

from __future__ import annotations

import pytest

from rlm_toolkit import bench


@pytest.mark.parametrize("key", bench.case_keys("pair"))
def test_pair(run_contender, key: str) -> None:
    run_contender("pair", key)


@pytest.fixture(scope="module")
def pair(interleaved) -> dict[str, bench.Row]:
    """Rust, Python backend, plain json, orjson and langchain-core measured interleaved in this one run."""
    return interleaved(["pair"])["pair"]


# -- TARGET ASSERTIONS ---------------------------------------------------------------------------------------


@pytest.mark.target
def test_target_pair_10x_plain_json(pair, check_target) -> None:
    """TARGET: the Rust pair is >= 10x faster than plain json.dumps + buffered text write."""
    check_target("pair: rust vs plain json.dumps", pair["json"].ns_ratio_to(pair["rust"]), ">=", 10, "x")


@pytest.mark.target
def test_target_pair_2x_orjson(pair, check_target) -> None:
    """TARGET: the Rust pair is >= 2x faster than orjson + 64 KiB buffered binary write."""
    check_target("pair: rust vs orjson", pair["orjson"].ns_ratio_to(pair["rust"]), ">=", 2, "x")


@pytest.mark.target
def test_target_pair_20x_langchain(pair, check_target) -> None:
    """TARGET: the Rust pair is >= 20x faster than a langchain-core handler doing the same work."""
    check_target("pair: rust vs langchain-core", pair["langchain"].ns_ratio_to(pair["rust"]), ">=", 20, "x")


@pytest.mark.target
def test_target_pair_3m_events_per_second(pair, check_target) -> None:
    """TARGET: the Rust pair handles >= 3 million events/s on this machine."""
    rate = pair["rust"].events_per_s
    check_target("pair: rust throughput", None if rate is None else rate / 1e6, ">=", 3, "M events/s")
