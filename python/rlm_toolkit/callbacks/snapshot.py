"""``MetricsSnapshot``: everything a ``MetricsCallback`` counted, as a value that pickles, round-trips through
JSON and merges exactly, so metrics from many processes and machines add up to those of one sink that saw
every event."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from typing import TYPE_CHECKING

from ..errors import MetricsSnapshotError
from .metrics_types import MetricsReport

if TYPE_CHECKING:
    from .._reference.metrics import ReferenceMetrics

SNAPSHOT_FORMAT = "rlm_toolkit.metrics"
SNAPSHOT_VERSION = 1
HISTOGRAM_LAYOUT = {"unit": "us", "exact_below": 2048, "sub_buckets_per_power": 1024, "max": 2**40 - 1}
"""The latency buckets (docs/metrics.md, "Latency"): snapshots name them, and refuse others."""
U64_MAX = 2**64 - 1


def _aggregator() -> ReferenceMetrics:
    """An empty pure-Python aggregator, which computes a snapshot's figures and merges (imported on first use:
    the reference backend imports the callbacks package)."""
    from .._reference.metrics import ReferenceMetrics

    return ReferenceMetrics({}, adopt_snapshot_prices=True)


def _counter_names() -> tuple[str, ...]:
    from .._reference.metrics import COUNTER_NAMES

    return COUNTER_NAMES

_MODEL_COUNTS = ("calls", "completed_calls", "errors", "prompt_tokens", "completion_tokens", "total_tokens",
                 "cached_tokens", "reasoning_tokens", "priced_prompt_tokens", "priced_cached_tokens",
                 "priced_completion_tokens", "latency_count")


class MetricsSnapshot:
    """Every counter of a ``MetricsCallback`` at one moment, the per-model table (with the price each model
    was costed at) and the latency and time-to-first-token histograms.

    Immutable and versioned. It pickles, and ``to_json()``/``from_json()`` round-trip it exactly.
    ``MetricsSnapshot.merge(snapshots)``, ``a + b`` and ``sum(snapshots, MetricsSnapshot.empty())`` combine
    snapshots exactly: the ``get_metrics()`` of the merge equals that of one sink that saw all their events
    (same counts, same histograms, so the same percentiles and averages). Open runs travel as a count: a
    call that started in one process and ended in another is not paired.

    Get one from ``MetricsCallback.snapshot()``; load one into a live sink with ``MetricsCallback.merge()``.
    """

    __slots__ = ("_text",)
    _text: str

    def __init__(self) -> None:
        raise TypeError("get a MetricsSnapshot from MetricsCallback.snapshot(), MetricsSnapshot.empty(), "
                        "MetricsSnapshot.from_json() or MetricsSnapshot.merge()")

    @classmethod
    def _of_state(cls, state: Any) -> MetricsSnapshot:
        snapshot = object.__new__(cls)
        payload = {"format": SNAPSHOT_FORMAT, "version": SNAPSHOT_VERSION, "histogram": HISTOGRAM_LAYOUT,
                   "state": _checked_state(state)}
        object.__setattr__(snapshot, "_text", json.dumps(payload, separators=(",", ":"), allow_nan=False))
        return snapshot

    @classmethod
    def empty(cls) -> MetricsSnapshot:
        """The snapshot of a sink that saw nothing: the start of a ``sum()``."""
        return cls._of_state(_aggregator().state())

    @classmethod
    def from_json(cls, text: str | bytes) -> MetricsSnapshot:
        """The snapshot ``to_json()`` wrote. A text that is not one, or one of another version or histogram
        layout, raises ``MetricsSnapshotError``."""
        try:
            payload = json.loads(text)
        except (ValueError, TypeError, RecursionError) as error:
            raise MetricsSnapshotError(f"not a metrics snapshot: the text is not JSON ({error})") from None
        if not isinstance(payload, dict) or payload.get("format") != SNAPSHOT_FORMAT:
            raise MetricsSnapshotError("not a metrics snapshot: pass the text MetricsSnapshot.to_json() wrote")
        if payload.get("version") != SNAPSHOT_VERSION:
            raise MetricsSnapshotError(
                f"this metrics snapshot has version {payload.get('version')!r}; this rlm_toolkit reads version "
                f"{SNAPSHOT_VERSION}: load it with the rlm_toolkit version that wrote it"
            )
        if payload.get("histogram") != HISTOGRAM_LAYOUT:
            raise MetricsSnapshotError(
                f"this metrics snapshot's histogram layout {payload.get('histogram')!r} is not this rlm_toolkit's "
                f"{HISTOGRAM_LAYOUT!r}: its percentiles cannot be merged; load it with the rlm_toolkit version "
                f"that wrote it"
            )
        return cls._of_state(payload.get("state"))

    def to_json(self) -> str:
        """The snapshot as JSON text (format, version, histogram layout and state)."""
        return self._text

    def _state(self) -> dict[str, Any]:
        """A fresh copy of the state, in the shape the backends' ``merge_state`` takes."""
        state: dict[str, Any] = json.loads(self._text)["state"]
        for name in ("latency", "ttft"):
            state[name]["buckets"] = [tuple(bucket) for bucket in state[name]["buckets"]]
        return state

    def get_metrics(self) -> MetricsReport:
        """The figures ``MetricsCallback.get_metrics()`` gives for the same events."""
        metrics = _aggregator()
        metrics.merge_state(self._state())
        return metrics.snapshot()

    @classmethod
    def merge(cls, snapshots: Iterable[MetricsSnapshot]) -> MetricsSnapshot:
        """The snapshot of all ``snapshots`` together; ``MetricsSnapshotError`` if two priced a model
        differently."""
        metrics = _aggregator()
        for snapshot in snapshots:
            if not isinstance(snapshot, MetricsSnapshot):
                raise TypeError(f"MetricsSnapshot.merge() takes MetricsSnapshot objects, not {type(snapshot).__name__}")
            try:
                metrics.merge_state(snapshot._state())
            except ValueError as error:
                raise MetricsSnapshotError(str(error)) from None
        return cls._of_state(metrics.state())

    def __add__(self, other: object) -> MetricsSnapshot:
        if not isinstance(other, MetricsSnapshot):
            return NotImplemented
        return MetricsSnapshot.merge([self, other])

    def __radd__(self, other: object) -> MetricsSnapshot:
        # sum(snapshots) starts from 0.
        if isinstance(other, int) and not isinstance(other, bool) and other == 0:
            return self
        return NotImplemented

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MetricsSnapshot):
            return NotImplemented
        return self._text == other._text

    def __hash__(self) -> int:
        return hash(self._text)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("MetricsSnapshot is immutable")

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (MetricsSnapshot.from_json, (self._text,))

    def __repr__(self) -> str:
        counters = json.loads(self._text)["state"]["counters"]
        return (f"MetricsSnapshot(total_calls={counters['total_calls']}, "
                f"completed_calls={counters['completed_calls']}, errors={counters['errors']})")


def _fail(what: str) -> MetricsSnapshotError:
    return MetricsSnapshotError(f"not a valid metrics snapshot: {what}")


def _count(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= U64_MAX:
        raise _fail(f"{where} must be an int from 0 to 2**64-1, not {value!r}")
    return value


def _milliseconds(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise _fail(f"{where} must be a finite number >= 0, not {value!r}")
    return float(value)


def _mapping(value: Any, keys: Iterable[str], where: str) -> dict[str, Any]:
    keys = tuple(keys)
    if not isinstance(value, dict) or set(value) != set(keys):
        found = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise _fail(f"{where} must hold exactly {list(keys)}, not {found}")
    return value


def _durations(value: Any, where: str) -> dict[str, Any]:
    value = _mapping(value, ("count", "sum_us", "min_ms", "max_ms", "buckets"), where)
    buckets = value["buckets"]
    if not isinstance(buckets, (list, tuple)):
        raise _fail(f"{where}.buckets must be a list of [index, count] pairs")
    checked = []
    for bucket in buckets:
        if not isinstance(bucket, (list, tuple)) or len(bucket) != 2:
            raise _fail(f"{where}.buckets must be a list of [index, count] pairs, not {bucket!r}")
        checked.append([_count(bucket[0], f"{where} bucket index"), _count(bucket[1], f"{where} bucket count")])
    indexes = [index for index, _count_ in checked]
    if indexes != sorted(set(indexes)):
        raise _fail(f"{where}.buckets must be in increasing index order, each index once")
    sum_us = value["sum_us"]
    if not isinstance(sum_us, int) or isinstance(sum_us, bool) or sum_us < 0:
        raise _fail(f"{where}.sum_us must be an int >= 0, not {sum_us!r}")
    durations = {"count": _count(value["count"], f"{where}.count"), "sum_us": sum_us,
                 "min_ms": _milliseconds(value["min_ms"], f"{where}.min_ms"),
                 "max_ms": _milliseconds(value["max_ms"], f"{where}.max_ms"), "buckets": checked}
    from .._reference.metrics import check_durations

    try:
        check_durations(durations)
    except ValueError as error:
        raise _fail(f"{where}: {error}") from None
    return durations


def _price(value: Any, model: str) -> dict[str, float | None] | None:
    if value is None:
        return None
    value = _mapping(value, ("prompt", "completion", "cached_prompt"), f"the price of {model!r}")
    checked: dict[str, float | None] = {}
    for name in ("prompt", "completion", "cached_prompt"):
        figure = value[name]
        if figure is None and name == "cached_prompt":
            checked[name] = None
        elif isinstance(figure, bool) or not isinstance(figure, (int, float)) or not math.isfinite(figure):
            raise _fail(f"the {name} price of {model!r} must be a finite number, not {figure!r}")
        else:
            checked[name] = float(figure)
    return checked


def _model(value: Any) -> dict[str, Any]:
    keys = ("model", "price", *_MODEL_COUNTS, "cost_known", "latency_sum_us")
    value = _mapping(value, keys, "a by_model entry")
    model = value["model"]
    if not isinstance(model, str):
        raise _fail(f"a model key must be a str, not {model!r}")
    if not isinstance(value["cost_known"], bool):
        raise _fail(f"cost_known of {model!r} must be a bool")
    latency_sum_us = value["latency_sum_us"]
    if not isinstance(latency_sum_us, int) or isinstance(latency_sum_us, bool) or latency_sum_us < 0:
        raise _fail(f"latency_sum_us of {model!r} must be an int >= 0")
    return {"model": model, "price": _price(value["price"], model),
            **{name: _count(value[name], f"{name} of {model!r}") for name in _MODEL_COUNTS},
            "cost_known": value["cost_known"], "latency_sum_us": latency_sum_us}


def _checked_state(state: Any) -> dict[str, Any]:
    """``state`` validated and in the canonical key order (the same JSON for the same figures on both
    backends)."""
    state = _mapping(state, ("counters", "latency", "ttft", "by_model"), "the state")
    counter_names = _counter_names()
    counters = _mapping(state["counters"], counter_names, "the counters")
    models = state["by_model"]
    if not isinstance(models, (list, tuple)):
        raise _fail("by_model must be a list")
    checked_models = [_model(entry) for entry in models]
    names = [entry["model"] for entry in checked_models]
    if len(names) != len(set(names)):
        raise _fail("a model appears twice in by_model")
    return {"counters": {name: _count(counters[name], name) for name in counter_names},
            "latency": _durations(state["latency"], "latency"), "ttft": _durations(state["ttft"], "ttft"),
            "by_model": checked_models}
