"""Issue 4, case 3: ``MetricsCallback`` + ``FileLogCallback`` for ``on_llm_start`` + ``on_llm_end`` pairs
(200-char prompt, 300-char response, unique run ids), the log's close included in each batch."""

from __future__ import annotations

import pytest

from rlm_toolkit import bench


@pytest.mark.parametrize("key", bench.case_keys("pair"))
def test_pair(run_contender, key: str) -> None:
    run_contender("pair", key)


@pytest.fixture(scope="module")
def pair_targets(bench_cfg: bench.Config) -> list[bench.Target]:
    """Rust, Python backend, plain json, orjson and langchain-core measured interleaved in this one run."""
    rows = bench.run_cases(["pair"], bench_cfg)
    targets = bench.evaluate_targets(rows)
    print("\n" + bench.render_markdown(rows, targets, bench_cfg))
    return targets


# -- TARGET ASSERTIONS (issue 4) -----------------------------------------------------------------------------


@pytest.mark.target
def test_target_pair_10x_plain_json(pair_targets, check_target) -> None:
    """TARGET: the Rust pair is >= 10x faster than plain json.dumps + buffered text write."""
    check_target(pair_targets, "pair: rust vs plain json.dumps")


@pytest.mark.target
def test_target_pair_2x_orjson(pair_targets, check_target) -> None:
    """TARGET: the Rust pair is >= 2x faster than orjson + 64 KiB buffered binary write."""
    check_target(pair_targets, "pair: rust vs orjson")


@pytest.mark.target
def test_target_pair_20x_langchain(pair_targets, check_target) -> None:
    """TARGET: the Rust pair is >= 20x faster than a langchain-core handler doing the same work."""
    check_target(pair_targets, "pair: rust vs langchain-core")


@pytest.mark.target
def test_target_pair_3m_events_per_second(pair_targets, check_target) -> None:
    """TARGET: the Rust pair handles >= 3 million events/s on this machine."""
    check_target(pair_targets, "pair: rust throughput")
