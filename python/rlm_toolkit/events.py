"""The catalogue of callback events, read from ``events.toml`` (the one table, which ``build.rs`` reads too).

Each event's name, the positional arguments its hook receives, and the fields its JSONL record holds come
from that table; which of those fields hold conversation text is ``CONTENT_FIELDS`` below. The hooks of
``BaseCallback`` are generated from it and ``tests/test_catalogue.py`` checks them, with the Rust tables.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path


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
    keywords: tuple[str, ...]
    """Keywords of this event besides the context ones (``llm_end``: ``ttft_ms``; ``run_start``, ``run_end``:
    ``kind``); its record holds each one after ``fields`` (null when not given)."""
    arg_types: tuple[str, ...]
    """The Python type of each argument, as written in the hook's annotations."""
    doc: str
    """The hook's docstring on ``BaseCallback``."""

    @property
    def hook(self) -> str:
        return "on_" + self.name


def _read_catalogue() -> tuple[EventSpec, ...]:
    table = tomllib.loads((Path(__file__).parent / "events.toml").read_text(encoding="utf-8"))
    specs = []
    for event in table["events"]:
        args = tuple(arg["name"] for arg in event["args"])
        model = ("model",) if event["model"] else ()
        specs.append(
            EventSpec(
                name=event["name"],
                args=args,
                fields=model + args + tuple(event.get("derived", ())),
                has_model=event["model"],
                keywords=tuple(keyword["name"] for keyword in event.get("keywords", ())),
                arg_types=tuple(arg["type"] for arg in event["args"]),
                doc=event["doc"],
            )
        )
    return tuple(specs)


EVENTS: tuple[EventSpec, ...] = _read_catalogue()

EVENTS_BY_NAME: dict[str, EventSpec] = {spec.name: spec for spec in EVENTS}

CONTEXT_KEYWORDS: tuple[str, ...] = ("run_id", "parent_run_id", "model", "tags", "metadata")
"""Keywords every hook may receive; ``model`` only for events with ``has_model``. ``tags`` (a list of str) and
``metadata`` (a dict) are those of the run the event belongs to; a record holds them when they are given.
A hook that names a keyword receives it always (None when not given); a hook that takes ``tags``,
``metadata`` or an event keyword through ``**kwargs`` alone receives it only when it is given (not None)."""

RUN_CONTEXT_KEYWORDS: tuple[str, ...] = ("tags", "metadata")
"""The context keywords of a run (``RLM`` runs always give them)."""


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
