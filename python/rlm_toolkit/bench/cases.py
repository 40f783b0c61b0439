"""The catalogue of cases: their names, groups and titles, and the micro cases built for one run."""

from __future__ import annotations

from collections.abc import Iterable

from .base import Case, Config
from .fanout import FANOUT_SIZES, fanout_contenders, one_of_16_contenders
from .pair import add_throughput_notes, jsonl_contenders, metrics_contenders, pair_contenders
from .tokens import token_contenders

CASE_GROUPS: dict[str, tuple[str, ...]] = {
    "fanout": tuple(f"fanout-{n}" for n in FANOUT_SIZES),
    "one-of-16": ("one-of-16",),
    "pair": ("pair",),
    "metrics": ("metrics",),
    "tokens": ("tokens",),
    # Before the 10^7-event feed of get-metrics/rss: its gigabytes of log would leave the page cache
    # writing back, which slows any file case that follows.
    "jsonl": ("jsonl",),
    "get-metrics": ("get-metrics",),
    "rss": ("rss",),
    "rlm-call": ("rlm-call",),
}
ALL_CASES: tuple[str, ...] = tuple(name for names in CASE_GROUPS.values() for name in names)
CASE_TITLES: dict[str, str] = {
    **{f"fanout-{n}": f"on_llm_start fan-out to {n} Python handler{'s' if n > 1 else ''}" for n in FANOUT_SIZES},
    "one-of-16": "16 handlers registered, 1 overrides on_llm_start (vs 1 handler)",
    "pair": "Metrics + FileLog callbacks: llm start+end (200/300 chars), log close timed",
    "metrics": "MetricsCallback alone: the pair's llm start+end",
    "tokens": "on_llm_new_token to a StreamingCallback",
    "get-metrics": "get_metrics() latency after the feed (ns per call)",
    "rss": "resident memory growth over the feed (metrics + JSONL)",
    "jsonl": "JSONL throughput: FileLogCallback vs raw writes of the same bytes",
    "rlm-call": "one RLM.run against the local server: 4 callbacks vs none (ns per call)",
}
PER_CALL_CASES = ("get-metrics", "rlm-call")
"""Cases whose rows are ns per call rather than per event."""


def expand_cases(spec: str | None) -> list[str]:
    """The case names of a ``--cases`` value (groups and names, comma-separated; all when empty)."""
    if not spec:
        return list(ALL_CASES)
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if part in CASE_GROUPS:
            names += [n for n in CASE_GROUPS[part] if n not in names]
        elif part in ALL_CASES:
            if part not in names:
                names.append(part)
        else:
            raise ValueError(f"unknown case {part!r}; choose from {', '.join([*CASE_GROUPS, *ALL_CASES[:3]])}")
    return names


def micro_cases(cfg: Config, names: Iterable[str] | None = None) -> dict[str, Case]:
    """The cases measured by interleaved batches of contenders (not get-metrics/rss/rlm-call)."""
    wanted = set(ALL_CASES if names is None else names)
    cases: dict[str, Case] = {}
    scale = 10 if cfg.quick else 1
    for n in FANOUT_SIZES:
        name = f"fanout-{n}"
        if name in wanted:
            cases[name] = Case(name, CASE_TITLES[name], fanout_contenders(n), bench_n=max(500, 40_000 // n) // scale)
    if "one-of-16" in wanted:
        cases["one-of-16"] = Case("one-of-16", CASE_TITLES["one-of-16"], one_of_16_contenders(),
                                  bench_n=20_000 // scale)
    if "pair" in wanted:
        cases["pair"] = Case("pair", CASE_TITLES["pair"], pair_contenders(cfg), fixed_n=cfg.pair_n)
    if "metrics" in wanted:
        cases["metrics"] = Case("metrics", CASE_TITLES["metrics"], metrics_contenders(), bench_n=cfg.pair_n)
    if "tokens" in wanted:
        cases["tokens"] = Case("tokens", CASE_TITLES["tokens"] + f" ({cfg.token_n:,} tokens per batch)",
                               token_contenders(), fixed_n=cfg.token_n, repeats=cfg.token_repeats)
    if "jsonl" in wanted:
        cases["jsonl"] = Case("jsonl", CASE_TITLES["jsonl"], jsonl_contenders(cfg), fixed_n=cfg.jsonl_n,
                              annotate=add_throughput_notes)
    return cases


def case_keys(case_name: str) -> list[str]:
    """The implementation keys of a micro case (for pytest parametrisation; nothing runs)."""
    return [c.key for c in micro_cases(Config.from_env(), [case_name])[case_name].contenders]
