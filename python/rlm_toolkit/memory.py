"""Conversation memory for ``RLM``.

Pass a memory as ``RLM.from_openai(..., memory=BufferMemory())``. Before each run the RLM recalls the history
for the prompt (``on_memory_recall``) and sends it ahead of the prompt; after the run it stores the user's
prompt and the answer (``on_memory_store`` once per message). Any object with the ``Memory`` methods works.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Protocol, runtime_checkable

from .callbacks._pickling import PickledByConfiguration
from .errors import MemoryConfigError

__all__ = ["BufferMemory", "Memory", "MemoryConfigError"]


@runtime_checkable
class Memory(Protocol):
    def recall(self, query: str) -> list[dict[str, str]]:
        """Chat messages (``{"role": ..., "content": ...}``) to send before the prompt ``query``."""
        ...

    def store(self, role: str, content: str) -> None:
        """Remember one message of the conversation."""
        ...


class BufferMemory(PickledByConfiguration):
    """The last ``max_messages`` messages of the conversation, oldest first.

    ``recall`` ignores the query and returns the whole buffer. Safe to share between threads; concurrent runs
    (``batch``) sharing one memory see each other's messages in completion order.

    Pickled (to send it, or an ``RLM`` using it, to a worker process), it travels as ``max_messages`` alone:
    the worker's memory starts empty, and what it stores stays in that worker.
    """

    def __init__(self, max_messages: int = 20) -> None:
        if max_messages < 1:
            raise MemoryConfigError(f"max_messages must be at least 1, got {max_messages}")
        self.max_messages = max_messages
        self._messages: deque[dict[str, str]] = deque(maxlen=max_messages)
        self._lock = threading.Lock()

    def recall(self, query: str) -> list[dict[str, str]]:
        with self._lock:
            return [dict(message) for message in self._messages]

    def store(self, role: str, content: str) -> None:
        with self._lock:
            self._messages.append({"role": role, "content": content})

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()

    def __len__(self) -> int:
        return len(self._messages)

    def __repr__(self) -> str:
        return f"BufferMemory(max_messages={self.max_messages}, stored={len(self)})"
