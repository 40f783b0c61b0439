"""Event hooks for the RLM lifecycle: LLM calls, streamed tokens, tools, memory, retries and errors."""

from .base import AsyncBaseCallback, BaseCallback
from .console import ConsoleCallback
from .manager import CallbackManager
from .metrics_types import MetricsSnapshot, ModelMetricsSnapshot
from .native import FileLogCallback, MetricsCallback
from .streaming import StreamingCallback

__all__ = [
    "AsyncBaseCallback",
    "BaseCallback",
    "CallbackManager",
    "ConsoleCallback",
    "FileLogCallback",
    "MetricsCallback",
    "MetricsSnapshot",
    "ModelMetricsSnapshot",
    "StreamingCallback",
]
