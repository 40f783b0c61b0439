"""The fan-out cases: ``on_llm_start`` fan-out to N = 1, 4, 16 Python handlers, and 16 registered handlers of
which one overrides the event against a single handler; and the fan-out to one handler in instructions per
event (``count_instructions.py``, under valgrind)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

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


COUNT_INSTRUCTIONS = Path(__file__).with_name("count_instructions.py")


def _instructions_per_event(family: str) -> dict[str, float]:
    """``count_instructions.py --only family`` run under valgrind: instructions per event by implementation label."""
    completed = subprocess.run([sys.executable, str(COUNT_INSTRUCTIONS), "--only", family],
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    rows = re.findall(r"^\| ([^|]+?) \| ([\d,.]+) \| [^|]+ \|$", completed.stdout, re.MULTILINE)
    return {label: float(count.replace(",", "")) for label, count in rows}


@pytest.mark.target
@pytest.mark.skipif(shutil.which("valgrind") is None,
                    reason="valgrind is not installed (apt-get install valgrind): instructions are counted under it")
def test_target_fanout_to_one_within_1_15x_of_inlined_loop_in_instructions(check_target) -> None:
    """TARGET: the Rust backend's fan-out to 1 Python hook executes <= 1.15x the instructions per event of a plain
    inlined for-loop (callgrind, ``benches/count_instructions.py``)."""
    counts = _instructions_per_event("fan-out to 1 handler")
    rust = counts["fan-out to 1 handler: rlm_toolkit (rust)"]
    inline = counts["fan-out to 1 handler: plain inlined loop"]
    check_target("fan-out to 1: rust / plain inlined loop, instructions per event", rust / inline, "<=", 1.15, "x",
                 f"rust {rust:,.0f}, inlined loop {inline:,.0f} instructions/event")
