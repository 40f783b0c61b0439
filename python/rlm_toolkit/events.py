"""The one catalogue of callback events.

Each event's name, the positional arguments its hook receives, and the fields its JSONL record holds are
declared here and nowhere else. ``BaseCallback`` and the Rust ``EventKind`` enum are checked against this
table by ``tests/test_catalogue.py``; adding an event means adding a row here and firing it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EventSpec:
    name: str
    """Event name as written in the JSONL ``event`` field, e.g. ``"llm_start"``."""
    args: tuple[str, ...]
    """Positional arguments of the hook, after ``self``."""
    fields: tuple[str, ...]
    """Fields of the JSONL record besides ``ts``, ``event``, ``run_id``, ``parent_run_id``."""
    has_model: bool
    """Whether the hook receives the ``model`` context keyword."""

    @property
    def hook(self) -> str:
        return "on_" + self.name


EVENTS: tuple[EventSpec, ...] = (
    EventSpec("llm_start", ("prompt",), ("model", "prompt"), has_model=True),
    EventSpec(
        "llm_end",
        ("response",),
        ("model", "response", "prompt_tokens", "completion_tokens", "total_tokens"),
        has_model=True,
    ),
    EventSpec("llm_new_token", ("token",), ("model", "token"), has_model=True),
    EventSpec("tool_start", ("tool_name", "tool_input"), ("tool_name", "tool_input"), has_model=False),
    EventSpec("tool_end", ("tool_name", "tool_output"), ("tool_name", "tool_output"), has_model=False),
    EventSpec("memory_store", ("content",), ("content",), has_model=False),
    EventSpec("memory_recall", ("query", "results"), ("query", "results"), has_model=False),
    EventSpec("retry", ("attempt", "max_attempts", "error"), ("model", "attempt", "max_attempts", "error"), has_model=True),
    EventSpec("error", ("error",), ("model", "error"), has_model=True),
    EventSpec("run_start", ("prompt",), ("model", "prompt"), has_model=True),
    EventSpec("run_end", ("answer",), ("model", "answer"), has_model=True),
)

EVENTS_BY_NAME: dict[str, EventSpec] = {spec.name: spec for spec in EVENTS}

CONTEXT_KEYWORDS: tuple[str, ...] = ("run_id", "parent_run_id", "model")
"""Keywords every hook may receive; ``model`` only for events with ``has_model``."""
