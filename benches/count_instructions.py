"""Instructions per event under callgrind: ratios that do not move with the machine's noise.

    python benches/count_instructions.py            # needs valgrind (apt-get install valgrind)
    python benches/count_instructions.py --only fan-out    # the rows whose label starts with "fan-out"

The pair and metrics-alone rows feed ``on_llm_start`` + ``on_llm_end`` pairs (the bench's pair payload); the
"with tags" rows the same pairs as an integration fires them: ``uuid.UUID`` run ids, a tags list and a metadata
dict on each event. The fan-out rows call one handler's ``on_llm_start``.

Each implementation runs twice in a fresh interpreter under ``valgrind --tool=callgrind``, with 0 and with N
events and a fixed hash seed; the difference divided by the events is its user-space instructions per event
(all threads; the kernel's share of writing the file is not counted, which flatters no one: every contender
writes the same kind of lines). Timings say how fast on this machine today; these counts say how much work
each one does, the same on every run.
"""

from __future__ import annotations

import argparse
import operator
import os
import re
import subprocess
import sys
import tempfile
import uuid

PAIRS = 5_000
EVENTS = 20_000
CASES = {
    "pair: rlm_toolkit (rust)": ("pair", "rust"),
    "pair: rlm_toolkit (python reference)": ("pair", "python"),
    "pair: plain json.dumps": ("pair", "json"),
    "pair: plain orjson": ("pair", "orjson"),
    "pair with tags, metadata and UUID run ids: rlm_toolkit (rust)": ("pair-context", "rust"),
    "pair with tags, metadata and UUID run ids: rlm_toolkit (python reference)": ("pair-context", "python"),
    "metrics alone: rlm_toolkit (rust)": ("metrics", "rust"),
    "metrics alone: rlm_toolkit (python reference)": ("metrics", "python"),
    "fan-out to 1 handler: rlm_toolkit (rust)": ("fanout", "rust"),
    "fan-out to 1 handler: plain inlined loop": ("fanout", "inline"),
    "fan-out to 1 handler: thinnest C hop (operator.call)": ("fanout", "c-hop"),
}


def run_workload(case: str, implementation: str, count: int) -> None:
    """The measured work, run inside the child interpreter."""
    from rlm_toolkit.callbacks import BaseCallback, CallbackManager, FileLogCallback, MetricsCallback

    if case == "fanout":
        class Handler(BaseCallback):
            def on_llm_start(self, prompt: str, **kwargs: object) -> None:
                pass

        handler = Handler()
        # One loop per implementation, so none pays for choosing among them.
        if implementation == "rust":
            fire = CallbackManager([handler]).on_llm_start
            for _ in range(count):
                fire("x", run_id="a", model="gpt-4o")
        elif implementation == "c-hop":
            # The least a dispatcher written in C can do: take the call and make it, with no work between.
            hop, method = operator.call, handler.on_llm_start
            for _ in range(count):
                try:
                    hop(method, "x", run_id="a", parent_run_id=None, model="gpt-4o")
                except Exception:
                    pass
        else:
            for _ in range(count):
                try:
                    handler.on_llm_start("x", run_id="a", parent_run_id=None, model="gpt-4o")
                except Exception:
                    pass
        return

    from rlm_toolkit.bench import PlainJsonPair, PlainOrjsonPair, pair_payload

    prompt, response = pair_payload()
    # Made for the largest count in every run, so the run with 0 events subtracts their making too.
    every_run_id = [f"{index:08d}-0000-4000-8000-000000000000" for index in range(PAIRS)]
    run_ids = every_run_id[:count]
    uuid_run_ids = [uuid.UUID(run_id) for run_id in every_run_id][:count] if case == "pair-context" else []
    if case == "metrics":
        manager = CallbackManager([MetricsCallback(backend=implementation)],  # type: ignore[arg-type]
                                  backend=implementation)  # type: ignore[arg-type]
        for run_id in run_ids:
            manager.on_llm_start(prompt, run_id=run_id, model="gpt-4o")
            manager.on_llm_end(response, run_id=run_id, model="gpt-4o")
        return
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "pair.jsonl")
        if implementation in ("rust", "python"):
            log = FileLogCallback(path, backend=implementation)  # type: ignore[arg-type]
            manager = CallbackManager([MetricsCallback(backend=implementation), log],  # type: ignore[arg-type]
                                      backend=implementation)  # type: ignore[arg-type]
            if case == "pair-context":
                tags, metadata = ["batch", "eval"], {"user": "u-1", "attempt": 1}
                for run_id in uuid_run_ids:
                    manager.on_llm_start(prompt, run_id=run_id, model="gpt-4o", tags=tags, metadata=metadata)
                    manager.on_llm_end(response, run_id=run_id, model="gpt-4o", tags=tags, metadata=metadata)
            else:
                for run_id in run_ids:
                    manager.on_llm_start(prompt, run_id=run_id, model="gpt-4o")
                    manager.on_llm_end(response, run_id=run_id, model="gpt-4o")
            log.close()
        else:
            plain = (PlainJsonPair if implementation == "json" else PlainOrjsonPair)(path)
            for run_id in run_ids:
                plain.on_llm_start(prompt, run_id, "gpt-4o")
                plain.on_llm_end(response, run_id, "gpt-4o")
            plain.close()


def instructions(case: str, implementation: str, count: int) -> int:
    completed = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__,
         "--child", case, implementation, str(count)],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    match = re.search(r"Collected : (\d+)", completed.stderr)
    if match is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{completed.stderr[-2000:]}")
    return int(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", metavar="PREFIX", default="",
                        help="count only the implementations whose label starts with PREFIX (e.g. pair, fan-out)")
    parser.add_argument("--child", nargs=3, metavar=("CASE", "IMPLEMENTATION", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        case, implementation, count = args.child
        run_workload(case, implementation, int(count))
        return 0
    per_event: dict[str, float] = {}
    print("| implementation | instructions/event | × rlm_toolkit (rust) |\n|---|---:|---:|")
    for label, (case, implementation) in CASES.items():
        if not label.startswith(args.only):
            continue
        events = EVENTS if case == "fanout" else 2 * PAIRS
        count = EVENTS if case == "fanout" else PAIRS
        per_event[label] = (instructions(case, implementation, count) - instructions(case, implementation, 0)) / events
        reference = per_event.get(f"{label.split(':')[0]}: rlm_toolkit (rust)")
        ratio = "—" if reference is None else f"{per_event[label] / reference:.2f}"
        print(f"| {label} | {per_event[label]:,.0f} | {ratio} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
