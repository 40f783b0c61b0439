"""Value types handed to callbacks. Batch jobs build these to emit events themselves."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> "Usage":
        return cls(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens)


@dataclass(frozen=True, slots=True)
class LLMResponse:
    """What ``on_llm_end`` receives: the answer text, the model that produced it, and token usage."""

    content: str
    model: str | None = None
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None
    tool_calls: tuple[Any, ...] = ()

    def __str__(self) -> str:
        return self.content
