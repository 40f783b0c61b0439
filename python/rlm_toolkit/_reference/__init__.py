"""The pure-Python reference backend: same semantics as the Rust core, kept small and obviously correct.

Select it with ``RLM_TOOLKIT_BACKEND=python`` or ``backend="python"``. Tests use it as the oracle.
"""

from .clock import now
from .dispatch import Dispatcher
from .jsonl import JsonlSink
from .metrics_sink import ReferenceMetricsSink as MetricsSink

__all__ = ["Dispatcher", "JsonlSink", "MetricsSink", "now"]
