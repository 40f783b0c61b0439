"""20,000 prompts through Ray (2 actors, 8 concurrent calls each) against ``RLM.batch`` in one process at the
same total concurrency (16), both on the embedded OpenAI-compatible server: throughput, whether the merged
metrics are exact, and the peak RSS of each actor.

    python benches/ray_scale_out.py [--prompts 20000]
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import ray

from rlm_toolkit import RLM
from rlm_toolkit.callbacks import MetricsCallback
from rlm_toolkit.ray import run_prompts
from rlm_toolkit.server import LocalServer

ACTORS, PER_ACTOR = 2, 8
SAME_EVERYWHERE = ("total_calls", "completed_calls", "prompt_tokens", "completion_tokens", "total_tokens",
                   "total_cost_usd", "errors", "retries", "open_runs")


def peak_rss_of_actors(stop: threading.Event, peaks: dict[int, int]) -> None:
    """Reads the peak RSS (VmHWM) of the Ray Data map workers every 100 ms, while they live."""
    while not stop.is_set():
        for process in Path("/proc").iterdir():
            try:
                if process.name.isdigit() and b"MapWorker" in (process / "cmdline").read_bytes():
                    status = (process / "status").read_text()
                    kib = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])
                    peaks[int(process.name)] = max(peaks.get(int(process.name), 0), kib * 1024)
            except (OSError, StopIteration, ValueError):
                pass
        stop.wait(0.1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=20_000)
    count = parser.parse_args().prompts
    prompts = [f"question {index}" for index in range(count)]
    with LocalServer() as server:
        base_url, api_key = server.base_url, server.api_key

        def make() -> RLM:
            return RLM.from_openai("gpt-4o-mini", base_url=base_url, api_key=api_key)

        metrics = MetricsCallback()
        started = time.perf_counter()
        results = make().batch(prompts, max_concurrency=ACTORS * PER_ACTOR, callbacks=[metrics])
        one_process = time.perf_counter() - started
        assert sum(result.error is None for result in results) == count

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        peaks: dict[int, int] = {}
        stop = threading.Event()
        sampler = threading.Thread(target=peak_rss_of_actors, args=(stop, peaks), daemon=True)
        sampler.start()
        dataset = ray.data.from_items([{"prompt": prompt} for prompt in prompts])
        started = time.perf_counter()
        run = run_prompts(dataset, make, actors=ACTORS, max_concurrency=PER_ACTOR, batch_size=500)
        on_ray = time.perf_counter() - started
        stop.set()
        sampler.join()
        rows = run.dataset.count()
        ray.shutdown()

    merged, single = run.metrics.get_metrics(), metrics.get_metrics()
    exact = (all(merged[key] == single[key] for key in SAME_EVERYWHERE)
             and merged["by_model"].keys() == single["by_model"].keys())
    print("| run | prompts | seconds | prompts/s |")
    print("|---|---:|---:|---:|")
    print(f"| RLM.batch, one process, {ACTORS * PER_ACTOR} concurrent | {count:,} | {one_process:.1f} "
          f"| {count / one_process:,.0f} |")
    print(f"| Ray, {ACTORS} actors x {PER_ACTOR} concurrent | {rows:,} | {on_ray:.1f} | {rows / on_ray:,.0f} |")
    print(f"merged metrics: {merged['completed_calls']:,} calls, {merged['total_tokens']:,} tokens, "
          f"p95 {merged['p95_latency_ms']:.2f} ms; counts, tokens and cost equal to one process's: {exact}")
    print("peak RSS per actor: " + ", ".join(f"{rss / 2**20:.0f} MiB" for rss in sorted(peaks.values())))


if __name__ == "__main__":
    main()
