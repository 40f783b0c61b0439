"""Side-by-side benchmarks of the callbacks against plain Python and the peers.

Run ``rlm-toolkit bench`` (or ``python -m rlm_toolkit.bench``); ``--quick`` for a smoke run, ``--cases`` to pick
cases, ``--markdown``/``--json``/``--chart`` to write the results. The peers (langchain-core, pluggy, blinker,
orjson, and matplotlib for the chart) are optional, the ``bench`` extra: a missing one is skipped with a note
in the table.

How things are measured: see ``runner``. Ratios: ``× rust`` is the row's ns/event divided by the ns/event of
this package's Rust backend in the same case (2.0: the row takes twice as long as the Rust backend).

Modules: ``base`` (configuration, contenders, rows), one module per family of cases (``fanout``, ``pair``,
``tokens``, ``metrics``, ``rlm_call``) and ``competitors`` (the peers' implementations), ``cases`` (the
catalogue), ``runner`` (the measurement), ``report`` (table and chart), ``command`` (the command line). What is
exported here is what the command and the pytest-benchmark suite in ``benches/`` use.
"""

from __future__ import annotations

from .base import Config, Row
from .cases import case_keys, micro_cases
from .command import main
from .competitors import PlainJsonPair, PlainOrjsonPair
from .fanout import FANOUT_SIZES
from .metrics import FeedResult, feed, get_metrics_rows, rss_rows
from .pair import pair_payload
from .report import render_markdown
from .rlm_call import loopback_rlm
from .runner import benchmark_contender, run_cases

__all__ = [
    "FANOUT_SIZES",
    "Config",
    "FeedResult",
    "PlainJsonPair",
    "PlainOrjsonPair",
    "Row",
    "benchmark_contender",
    "case_keys",
    "feed",
    "get_metrics_rows",
    "loopback_rlm",
    "main",
    "micro_cases",
    "pair_payload",
    "render_markdown",
    "rss_rows",
    "run_cases",
]
