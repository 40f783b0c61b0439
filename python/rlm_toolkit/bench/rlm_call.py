"""One ``RLM.run`` against the embedded local server (``rlm-call``): 4 callbacks (Metrics, FileLog, Console to a
StringIO, a custom ``BaseCallback``) against none, per backend, plus a direct estimate of the callbacks' cost."""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._backend import BackendName
from ..callbacks import BaseCallback, CallbackManager, ConsoleCallback, FileLogCallback, MetricsCallback
from .base import MODEL, Config, Row, count_lines, expect, fill_ratios, progress_line, remove, temp_path

if TYPE_CHECKING:
    from ..rlm import RLM
    from ..server import LocalServer

PROMPT = "Hello! What can you do?"
_LABELS = {
    "rust": "RLM.run, 4 callbacks, rlm_toolkit (rust)",
    "python": "RLM.run, 4 callbacks, rlm_toolkit (python)",
    "rust-no-console": "RLM.run, Metrics + FileLog + custom (rust), no Console",
    "console-only": "RLM.run, ConsoleCallback only",
}


class _CustomCallback(BaseCallback):
    """The custom callback of the 4: counts its LLM starts and ends."""

    def __init__(self) -> None:
        self.calls = 0

    def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
        self.calls += 1

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self.calls += 1


def _four_callbacks(log: FileLogCallback, backend: BackendName) -> list[Any]:
    return [MetricsCallback(backend=backend), log, ConsoleCallback(stream=io.StringIO()), _CustomCallback()]


@dataclass
class LoopbackRLM:
    """One RLM on the local server, and the callback managers swapped into it per variant (one client for all)."""

    rlm: RLM
    server: LocalServer
    managers: dict[str, CallbackManager]
    """``none``, ``rust`` and ``python`` (the 4 callbacks), ``rust-no-console``, ``console-only``."""
    custom: _CustomCallback
    """The custom callback of the ``rust`` variant."""


@contextmanager
def loopback_rlm(cfg: Config) -> Iterator[LoopbackRLM]:
    """A ``LoopbackRLM`` whose logs go to ``cfg.tmpdir``; closes the RLM, the server and the logs afterwards."""
    from ..rlm import RLM  # imported here: the RLM client stack is needed by this case only
    from ..server import LocalServer

    logs = [FileLogCallback(temp_path(cfg, f"rlm-{backend}"), backend=backend)
            for backend in ("rust", "python", "rust")]
    rust_callbacks, python_callbacks = _four_callbacks(logs[0], "rust"), _four_callbacks(logs[1], "python")
    managers = {
        "none": CallbackManager(backend="rust"),
        "rust": CallbackManager(rust_callbacks, backend="rust"),
        "python": CallbackManager(python_callbacks, backend="python"),
        "rust-no-console": CallbackManager([MetricsCallback(backend="rust"), logs[2], _CustomCallback()],
                                           backend="rust"),
        "console-only": CallbackManager([ConsoleCallback(stream=io.StringIO())], backend="rust"),
    }
    try:
        with LocalServer() as server:
            # One RLM (one client, one connection pool) whose ``callbacks`` manager is swapped before each call:
            # separate RLM objects differ by a few % on their own (connection state), which would swamp the effect.
            rlm = RLM.from_openai(MODEL, callbacks=managers["rust"], base_url=server.base_url,
                                  api_key=server.api_key)
            try:
                yield LoopbackRLM(rlm, server, managers, rust_callbacks[3])
            finally:
                rlm.close()
    finally:
        for log in logs:
            log.close()
            remove(log.log_path)


def rlm_call_rows(cfg: Config, *, progress: bool = False) -> list[Row]:
    """``cfg.rlm_calls`` calls per variant, interleaved in an order that rotates every call; medians."""
    with loopback_rlm(cfg) as loopback:
        rlm, managers = loopback.rlm, loopback.managers
        samples: dict[str, list[float]] = {key: [] for key in managers}
        order = list(managers)
        warm = max(5, cfg.rlm_calls // 10)
        for _ in range(warm):  # warm-up: connections, caches
            for manager in managers.values():
                rlm.callbacks = manager
                rlm.run(PROMPT)
        for index in range(cfg.rlm_calls):
            if progress and index % 100 == 0:
                progress_line(f"  rlm-call: {index}/{cfg.rlm_calls}")
            shift = index % len(order)
            for key in order[shift:] + order[:shift]:
                rlm.callbacks = managers[key]
                start = time.perf_counter_ns()
                rlm.run(PROMPT)
                samples[key].append(float(time.perf_counter_ns() - start))
            if index % 50 == 49:
                loopback.server.reset()
        expect(loopback.custom.calls, 2 * (cfg.rlm_calls + warm), "custom callback calls")
        events = _events_of_one_run(loopback)

    # Measured directly: the events of one real run replayed through the same 4 callbacks, outside the RLM
    # (far less noisy than differences of whole calls).
    direct = direct_callback_cost(cfg, events)
    medians = {key: statistics.median(values) for key, values in samples.items()}
    base = medians["none"]
    rows = [Row("rlm-call", "none", "RLM.run, no callbacks", base, 1e9 / base, note="baseline",
                samples=samples["none"])]
    for key, label in _LABELS.items():
        overhead = (medians[key] - base) / base * 100
        paired = statistics.median(b - a for a, b in zip(samples["none"], samples[key])) / base * 100
        extra: dict[str, Any] = {"overhead_pct": overhead, "paired_overhead_pct": paired}
        note = f"{overhead:+.2f}% vs none (medians); paired {paired:+.2f}%"
        if key in direct:
            extra.update(direct_callback_ns=direct[key], direct_overhead_pct=direct[key] / base * 100)
            note += (f"; direct: the {len(events)} events of a run cost {direct[key] / 1e3:.1f} us"
                     f" = {direct[key] / base * 100:.2f}% of a call")
        else:
            note += " (diagnostic)"
        rows.append(Row("rlm-call", key, label, medians[key], 1e9 / medians[key], note=note, samples=samples[key],
                        reference=key == "rust", extra=extra))
    fill_ratios(rows)
    return rows


class _EventRecorder(BaseCallback):
    """Records the events of a run as (hook, positional arguments, keywords), to replay them elsewhere. It has
    no token hook, which would make the run stream: the run streams only if the callbacks beside it do."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def on_run_start(self, *args: Any, **kwargs: Any) -> None:
        self.events.append(("on_run_start", args, kwargs))

    def on_llm_start(self, *args: Any, **kwargs: Any) -> None:
        self.events.append(("on_llm_start", args, kwargs))

    def on_llm_end(self, *args: Any, **kwargs: Any) -> None:
        self.events.append(("on_llm_end", args, kwargs))

    def on_run_end(self, *args: Any, **kwargs: Any) -> None:
        self.events.append(("on_run_end", args, kwargs))


def _events_of_one_run(loopback: LoopbackRLM) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    """The events one ``RLM.run`` of the 4-callback variant fires."""
    recorder = _EventRecorder()
    loopback.rlm.callbacks = CallbackManager([*loopback.managers["rust"].callbacks, recorder], backend="rust")
    loopback.rlm.run(PROMPT)
    return recorder.events


def direct_callback_cost(cfg: Config, events: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> dict[str, float]:
    """ns for the events of one run (``events``, recorded from a real one) through the 4 callbacks, per backend."""
    result: dict[str, float] = {}
    runs = 200 if cfg.quick else 2_000
    for backend in ("rust", "python"):
        samples = []
        for _ in range(cfg.repeats):
            log = FileLogCallback(temp_path(cfg, f"direct-{backend}"), backend=backend)
            manager = CallbackManager(_four_callbacks(log, backend), backend=backend)
            hooks = [(getattr(manager, hook), args, kwargs) for hook, args, kwargs in events]
            start = time.perf_counter_ns()
            for _ in range(runs):
                for fire, args, kwargs in hooks:
                    fire(*args, **kwargs)
            # The log's close is left out, as it is of the whole calls: once per job, not per run.
            samples.append((time.perf_counter_ns() - start) / runs)
            log.close()
            expect(count_lines(log.log_path), runs * len(events), "direct log lines")
            remove(log.log_path)
        result[backend] = statistics.median(samples)
    return result
