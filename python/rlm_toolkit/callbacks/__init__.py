"""Event hooks for the RLM lifecycle: LLM calls, streamed tokens, tools, memory, retries and errors.

``LoggingCallback``, ``FileCallback`` and ``LLMEvent`` are upstream rlm-toolkit's, for code written against it.
"""

from .base import AsyncBaseCallback, BaseCallback
from .console import ConsoleCallback
from .manager import CallbackManager
from .metrics_types import MetricsReport, ModelMetricsReport
from .native import FileLogCallback, MetricsCallback
from .otel import OpenTelemetryCallback
from .snapshot import MetricsSnapshot
from .streaming import StreamingCallback
from .upstream import FileCallback, LLMEvent, LoggingCallback

__all__ = [
    "AsyncBaseCallback",
    "BaseCallback",
    "CallbackManager",
    "ConsoleCallback",
    "FileCallback",
    "FileLogCallback",
    "LLMEvent",
    "LoggingCallback",
    "MetricsCallback",
    "MetricsReport",
    "MetricsSnapshot",
    "ModelMetricsReport",
    "OpenTelemetryCallback",
    "StreamingCallback",
]
