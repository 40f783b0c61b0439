"""The fan-out cases: ``on_llm_start`` fan-out to N = 1, 4, 16 Python handlers, and 16 registered handlers of
which one overrides the event against a single handler."""

from __future__ import annotations

import pytest

from rlm_toolkit import bench

FANOUT_CASES = [f"fanout-{n}" for n in bench.FANOUT_SIZES]


@pytest.mark.parametrize(("case_name", "key"), [(case, key) for case in FANOUT_CASES for key in bench.case_keys(case)])
def test_fanout(run_contender, case_name: str, key: str) -> None:
    run_contender(case_name, key)


@pytest.mark.parametrize("key", bench.case_keys("one-of-16"))
def test_one_of_16(run_contender, key: str) -> None:
    run_contender("one-of-16", key)


@pytest.fixture(scope="module")
def fanout(interleaved) -> dict[str, dict[str, bench.Row]]:
    """All fan-out implementations measured interleaved in this one run (medians)."""
    return interleaved([*FANOUT_CASES, "one-of-16"])


# -- TARGET ASSERTIONS ---------------------------------------------------------------------------------------


@pytest.mark.target
@pytest.mark.parametrize("n", bench.FANOUT_SIZES)
def test_target_fanout_within_1_3x_of_inlined_loop(fanout, check_target, n: int) -> None:
    """TARGET: the Rust backend's fan-out to n Python handlers takes <= 1.3x a plain inlined for-loop."""
    rows = fanout[f"fanout-{n}"]
    check_target(f"fan-out to {n}: rust / plain inlined loop", rows["rust"].ns_ratio_to(rows["plain-inline"]),
                 "<=", 1.3, "x")


@pytest.mark.target
def test_target_16_with_one_overrider_within_1_2x_of_one_handler(fanout, check_target) -> None:
    """TARGET: 16 registered handlers of which 1 overrides on_llm_start take <= 1.2x a single handler (Rust)."""
    rows = fanout["one-of-16"]
    check_target("16 with 1 overrider / 1 handler (rust)", rows["rust"].ns_ratio_to(rows["rust-1"]), "<=", 1.2, "x")
