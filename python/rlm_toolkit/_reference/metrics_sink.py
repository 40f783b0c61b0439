"""Maps events onto the reference metrics aggregator (mirrors the metrics part of ``rust/dispatch.rs``)."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidEventError
from .clock import now
from .metrics import ReferenceMetrics
from .records import checked_timestamp, response_model, usage_of


def run_key(run_id: Any) -> str:
    """Latency pairs starts and ends by this key; events without a run id share the key ``""``."""
    if run_id is None:
        return ""
    return run_id if isinstance(run_id, str) else str(run_id)


class Metrics(ReferenceMetrics):
    def __init__(self, prices: list[tuple[str, float, float]], max_open_runs: int) -> None:
        super().__init__({name: (p_in, p_out) for name, p_in, p_out in prices}, max_open_runs)

    def handle(self, event: str, args: tuple[Any, ...], run_id: Any, parent_run_id: Any, model: str | None,
               ts: float | None, extra: dict[str, Any] | None) -> None:
        try:
            ts = checked_timestamp("on_" + event, ts)
        except (InvalidEventError, TypeError):
            self.rejected()
            raise
        ts = now() if ts is None else ts
        if event == "llm_start":
            self.llm_start(run_key(run_id), model, ts)
        elif event == "llm_end":
            self.llm_end(run_key(run_id), response_model(args[0], model), usage_of(args[0]), ts)
        elif event == "error":
            self.llm_error(run_key(run_id), model, ts)
        elif event in ("run_start", "run_end"):
            return
        else:
            counter = {"llm_new_token": self.token, "tool_start": self.tool_start, "tool_end": self.tool_end,
                       "memory_store": self.memory_store, "memory_recall": self.memory_recall,
                       "retry": self.retry}[event]
            counter()
