"""The one catalogue of callback events.

Each event's name, the positional arguments its hook receives, the fields its JSONL record holds, and which
of those fields hold conversation text (``CONTENT_FIELDS``) are declared here and nowhere else. ``BaseCallback`` and the Rust ``EventKind`` enum are checked against this
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


PROMPTS = "include_prompts"
RESPONSES = "include_responses"
CONTENT_SWITCHES: tuple[str, ...] = (PROMPTS, RESPONSES)
"""The ``FileLogCallback`` parameters that decide which conversation text its records hold."""


@dataclass(frozen=True)
class ContentField:
    """A record field that holds conversation text, and the switches it needs."""

    event: str
    field: str
    """A field of the event's record; ``error.message`` is the ``message`` inside the ``error`` field."""
    switches: tuple[str, ...]
    """The ``FileLogCallback`` switches that must all be True for the field to be written."""
    role: str | None = None
    """The ``role=`` extra this row applies to; a row without one applies to any other role, or none."""


CONTENT_FIELDS: tuple[ContentField, ...] = (
    ContentField("llm_start", "prompt", (PROMPTS,)),
    ContentField("run_start", "prompt", (PROMPTS,)),
    ContentField("memory_recall", "query", (PROMPTS,)),
    ContentField("memory_store", "content", (PROMPTS,), role="user"),
    ContentField("llm_end", "response", (RESPONSES,)),
    ContentField("llm_new_token", "token", (RESPONSES,)),
    ContentField("run_end", "answer", (RESPONSES,)),
    ContentField("memory_store", "content", (RESPONSES,), role="assistant"),
    # Text that mixes both sides of the conversation (or may quote either) needs both switches.
    ContentField("memory_store", "content", (PROMPTS, RESPONSES)),
    ContentField("memory_recall", "results", (PROMPTS, RESPONSES)),
    ContentField("tool_start", "tool_input", (PROMPTS, RESPONSES)),
    ContentField("tool_end", "tool_output", (PROMPTS, RESPONSES)),
    ContentField("retry", "error.message", (PROMPTS, RESPONSES)),
    ContentField("error", "error.message", (PROMPTS, RESPONSES)),
)
"""Which switches each conversation-text field needs; every other field is always written. A withheld field
is left out of the record, except ``error.message``: the ``error`` field is then ``{"type": TYPE}`` alone."""
