"""The event clock: wall-clock epoch seconds that never run backwards within a process."""

from __future__ import annotations

import time

_WALL_AT_START = time.time()
_MONOTONIC_AT_START = time.perf_counter()


def now() -> float:
    return _WALL_AT_START + (time.perf_counter() - _MONOTONIC_AT_START)
