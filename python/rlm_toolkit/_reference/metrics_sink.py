"""Feeds catalogue events to the reference metrics aggregator, as the metrics sink of ``rust/sinks.rs``
feeds the Rust one (docs/metrics.md, "Events").

``HANDLERS`` maps every event of ``rlm_toolkit.events.EVENTS`` to what it does to the metrics, and
``IGNORED_EVENTS`` names those the metrics do not count; an event of the catalogue in neither is an error
at import, as an unmatched ``EventKind`` is a compile error in Rust.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

from ..errors import InvalidEventError
from ..events import EVENTS
from ..pricing import ModelPrice
from .clock import now
from .metrics import ReferenceMetrics
from .records import checked_timestamp, response_model, usage_of

EventHandler = Callable[[ReferenceMetrics, tuple[Any, ...], str, str | None, float, dict[str, Any]], None]
"""``(metrics, hook arguments, run key, model, ts, extra keywords)``."""


def run_key(run_id: Any) -> str:
    """Latency pairs starts and ends by this key (docs/metrics.md, "Events"): the run id's text, as the Rust
    core holds it."""
    if run_id is None:
        return ""
    if isinstance(run_id, str):
        text = str.__str__(run_id)
    else:
        try:
            text = str(run_id)
        except Exception:
            return ""
    # Rust strings are UTF-8: each byte of a lone surrogate's UTF-8 form becomes U+FFFD there.
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _model_name(model: str | None) -> str | None:
    """The text of ``model`` (of a str subclass too), or None for a name with lone surrogates, which the Rust
    core cannot hold as a key."""
    if model is None:
        return None
    text = str.__str__(model)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return text


def _milliseconds(value: Any) -> float | None:
    """A duration keyword's value as milliseconds: an int or float (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value) if isinstance(value, int) else float.__float__(value)
    except OverflowError:
        return None


def _llm_start(metrics: ReferenceMetrics, args: tuple[Any, ...], run: str, model: str | None, ts: float,
               extra: dict[str, Any]) -> None:
    metrics.llm_start(run, _model_name(model), ts)


def _llm_end(metrics: ReferenceMetrics, args: tuple[Any, ...], run: str, model: str | None, ts: float,
             extra: dict[str, Any]) -> None:
    response = args[0]
    ttft_ms = _milliseconds(extra.get("ttft_ms"))
    metrics.llm_end(run, _model_name(response_model(response, model)), usage_of(response), ttft_ms, ts)


def _llm_error(metrics: ReferenceMetrics, args: tuple[Any, ...], run: str, model: str | None, ts: float,
               extra: dict[str, Any]) -> None:
    metrics.llm_error(run, _model_name(model), ts)


def _counter(count: Callable[[ReferenceMetrics], None]) -> EventHandler:
    def handler(metrics: ReferenceMetrics, args: tuple[Any, ...], run: str, model: str | None, ts: float,
                extra: dict[str, Any]) -> None:
        count(metrics)

    return handler


HANDLERS: dict[str, EventHandler] = {
    "llm_start": _llm_start,
    "llm_end": _llm_end,
    "error": _llm_error,
    "llm_new_token": _counter(ReferenceMetrics.token),
    "tool_start": _counter(ReferenceMetrics.tool_start),
    "tool_end": _counter(ReferenceMetrics.tool_end),
    "memory_store": _counter(ReferenceMetrics.memory_store),
    "memory_recall": _counter(ReferenceMetrics.memory_recall),
    "retry": _counter(ReferenceMetrics.retry),
}

IGNORED_EVENTS: frozenset[str] = frozenset({"run_start", "run_end"})
"""A run is not an LLM call: its calls are counted by their own events."""


def _check_covers_catalogue() -> None:
    catalogue = [spec.name for spec in EVENTS]
    unhandled = [name for name in catalogue if name not in HANDLERS and name not in IGNORED_EVENTS]
    if unhandled:
        raise NotImplementedError(
            f"the reference metrics do not handle the catalogue events {unhandled}: give each a handler in "
            "HANDLERS of rlm_toolkit/_reference/metrics_sink.py, or name it in IGNORED_EVENTS, and say which "
            "in docs/metrics.md"
        )
    stale = sorted((HANDLERS.keys() | IGNORED_EVENTS) - set(catalogue))
    both = sorted(HANDLERS.keys() & IGNORED_EVENTS)
    if stale or both:
        raise NotImplementedError(
            f"rlm_toolkit/_reference/metrics_sink.py lists events {stale} that rlm_toolkit.events.EVENTS does "
            f"not have, or events {both} both handled and ignored; remove them"
        )


_check_covers_catalogue()


class ReferenceMetricsSink(ReferenceMetrics):
    """The reference backend's metrics core: what ``MetricsCallback`` sends events to."""

    def __init__(self, prices: list[tuple[str, float, float]], max_open_runs: int,
                 cached_prompt_prices: Sequence[tuple[str, float]] = ()) -> None:
        table: dict[str, ModelPrice] = {name: (p_in, p_out) for name, p_in, p_out in prices}
        for name, cached_price in cached_prompt_prices:
            price = table.get(name)
            if price is not None:
                table[name] = (price[0], price[1], cached_price)
        super().__init__(table, max_open_runs)

    def handle(self, event: str, args: tuple[Any, ...], run_id: Any, parent_run_id: Any, model: str | None,
               ts: float | None, extra: dict[str, Any] | None) -> None:
        try:
            ts = checked_timestamp("on_" + event, ts)
        except (InvalidEventError, TypeError):
            self.rejected()
            raise
        if event in IGNORED_EVENTS:
            return
        try:
            handler = HANDLERS[event]
        except KeyError:
            raise ValueError(f"unknown event {event!r}; the events are those of rlm_toolkit.events.EVENTS") from None
        handler(self, args, run_key(run_id), model, now() if ts is None else ts, extra or {})
