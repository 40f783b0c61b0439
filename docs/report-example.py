"""How docs/report-example.png was made: two spawned workers, each with its own log, run 4,800 prompts against
the embedded server, whose latency changes every 25 s (some calls fail and are retried). Then:

    python docs/report-example.py && rlm-toolkit report logs/ --plot docs/report-example.png
"""

from __future__ import annotations

import multiprocessing
import threading
import time

from rlm_toolkit import RLM
from rlm_toolkit.callbacks import FileLogCallback
from rlm_toolkit.server import LocalServer

PROMPTS_PER_SHARD = 1200
LATER_LATENCIES = ((0.2, 20), (0.1, 0), (0.3, 10), (0.05, 0), (0.15, 0))
"""Every 25 s: the server's next latency in seconds, and how many requests it then fails with a 500."""


def run_shard(job: tuple[str, str, int]) -> int:
    base_url, api_key, shard = job
    rlm = RLM.from_openai("gpt-4o-mini", base_url=base_url, api_key=api_key, max_attempts=2,
                          callbacks=[FileLogCallback("logs/worker-{pid}.jsonl")])
    prompts = [f"shard {shard} question {index}" for index in range(PROMPTS_PER_SHARD)]
    return sum(result.error is None for result in rlm.batch(prompts, max_concurrency=4))


def vary_the_server(server: LocalServer) -> None:
    for latency, failures in LATER_LATENCIES:
        time.sleep(25)
        server.latency = latency
        if failures:
            server.fail_next(500, count=failures)


if __name__ == "__main__":
    with LocalServer(latency=0.05) as server:
        threading.Thread(target=vary_the_server, args=(server,), daemon=True).start()
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            print(pool.map(run_shard, [(server.base_url, server.api_key, shard) for shard in range(4)]))
