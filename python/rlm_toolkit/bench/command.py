"""``rlm-toolkit bench`` / ``python -m rlm_toolkit.bench``: run the cases, print the markdown table, and
optionally write it, the raw rows (JSON) and a chart."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict

from .base import Config, progress_line
from .cases import ALL_CASES, CASE_GROUPS, CASE_TITLES, expand_cases
from .report import environment, render_markdown, write_chart
from .runner import loop_overhead_ns, run_cases


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlm-toolkit bench",
        description="Benchmark the callbacks side by side with plain Python and peers; prints a markdown table.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a CI smoke run")
    parser.add_argument("--cases", metavar="A,B,...",
                        help=f"cases to run (default all): {', '.join(CASE_GROUPS)} (or fanout-1/-4/-16)")
    parser.add_argument("--markdown", metavar="PATH", help="also write the table to PATH")
    parser.add_argument("--json", metavar="PATH", help="write the rows and their samples as JSON to PATH")
    parser.add_argument("--chart", metavar="PATH", help="write a PNG chart to PATH (needs matplotlib)")
    parser.add_argument("--repeats", type=int, help="timed batches per implementation (default 7, quick 3)")
    parser.add_argument("--feed-events", type=int, metavar="N",
                        help="events fed before get-metrics/rss (default 10^7, quick 2*10^5)")
    parser.add_argument("--tmpdir", metavar="DIR", help="where to write logs (default: a new temporary folder)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the suite with command-line options ``argv``; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.list:
        for name in ALL_CASES:
            print(f"{name:12} {CASE_TITLES[name]}")
        return 0
    try:
        names = expand_cases(args.cases)
    except ValueError as error:
        print(f"rlm-toolkit bench: error: {error}", file=sys.stderr)
        return 2
    cfg = Config.quick_sizes() if args.quick else Config()
    if args.repeats:
        cfg.repeats = max(1, args.repeats)
        cfg.token_repeats = min(cfg.token_repeats, cfg.repeats)
    if args.feed_events:
        cfg.feed_events = max(2, args.feed_events)
    if args.tmpdir:
        os.makedirs(args.tmpdir, exist_ok=True)
        cfg.tmpdir = tempfile.mkdtemp(prefix="rlm-bench-", dir=args.tmpdir)
    started = time.perf_counter()
    try:
        rows = run_cases(names, cfg, progress=True)
    finally:
        if args.tmpdir and cfg.tmpdir:
            shutil.rmtree(cfg.tmpdir, ignore_errors=True)
    loop_ns = loop_overhead_ns()
    env = environment()
    table = render_markdown(rows, cfg, loop_ns=loop_ns, env=env)
    print(table, end="")
    progress_line(f"bench finished in {time.perf_counter() - started:.0f} s")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as handle:
            handle.write(table)
    if args.json:
        payload = {"config": asdict(cfg), "environment": env, "loop_overhead_ns": loop_ns,
                   "rows": [{**asdict(row), "max_over_min": row.max_over_min} for row in rows]}
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, default=str)
    if args.chart:
        problem = write_chart(rows, args.chart)
        if problem:
            print(f"rlm-toolkit bench: {problem}", file=sys.stderr)
    return 0
