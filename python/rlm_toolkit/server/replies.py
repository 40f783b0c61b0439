"""What the server answers: the default answers and the scripted replies.

Default answers (deterministic: the same request always gets the same text)
    * Tool results: when the conversation ends with ``tool`` messages the answer
      is ``"Tool results: " + "; ".join(f"{name} -> {content}")``, ``name`` being
      the function name of the matching ``tool_call_id`` in the preceding
      assistant message (``"unknown"`` if there is none).
    * Tool calls: when the request has ``tools``, no ``tool`` message follows the
      last user message yet, and that message mentions function names
      (case-insensitive, underscores may be written as spaces), the answer is
      one tool call per mentioned function, in order of mention, with
      ``finish_reason`` ``"tool_calls"``. Arguments are the JSON object literal
      written right after the name (``get_weather {"city": "Oslo"}``) if there is
      one; otherwise every *required* property of the function's JSON schema
      gets a placeholder: string -> the word right after the name (``"test"``
      if none), integer -> 1, number -> 1.0, boolean -> true, array -> [],
      object -> {}, anything else -> null.
    * Recall: when the last user message asks ``what is my A`` (or ``what's my
      A``; ``A`` one to three words, ended by ``?``, ``.``, ``!`` or the end of
      the message; case-insensitive) and an earlier user message of the
      conversation says ``my A is V``, the answer is ``f"Your {a} is {V}."``,
      ``a`` being ``A`` in lower case and ``V`` the text up to the next ``.``,
      ``!``, ``?``, ``;``, ``,`` or line end; the latest such statement wins.
      So ``"My name is Ada."`` then ``"What is my name?"`` gets ``"Your name is
      Ada."``: the answer shows that the client sent the earlier turns (such as
      those its memory recalled) with the request.
    * Otherwise the answer is ``f"Hello! You said: {m}"`` for the last user
      message ``m``; if ``m`` contains the word "long" a fixed paragraph is
      appended so the answer is about 60 words long (for streaming demos).

Replies queued with ``LocalServer.queue_reply`` are answered instead, first in,
first out.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

_LONG_ANSWER_EXTRA = (
    "This is a longer answer, written so that streaming demos have something "
    "to show. Every word arrives as its own chunk, which makes progress bars, "
    "token counters and callbacks easy to watch. The text never changes, so the "
    "same question always gets the same answer and tests can rely on it."
)
_LONG_WORD = re.compile(r"\blong\b", re.IGNORECASE)
_WORD_AFTER_TOOL_NAME = re.compile(r"\W*(\w+(?:['.-]\w+)*)")
_JSON_DECODER = json.JSONDecoder()
_RECALL_QUESTION = re.compile(r"\bwhat(?:\s+is|'s)\s+my\s+(\w+(?:\s+\w+){0,2}?)\s*(?:[?.!]|$)", re.IGNORECASE)


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it


@dataclass(frozen=True)
class Reply:
    """What the assistant answers; ``usage`` None means "compute it"."""

    content: str | None
    tool_calls: tuple[ToolCall, ...] = ()
    usage: tuple[int, int] | None = None

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_calls else "stop"


def scripted_reply(content: str | None, tool_calls: list[dict[str, Any]] | None,
                   usage: tuple[int, int] | None) -> Reply:
    """The reply ``LocalServer.queue_reply`` describes (see there for the argument shapes)."""
    calls = tuple(
        ToolCall(
            id=item.get("id") or _new_tool_call_id(),
            name=item["name"],
            arguments=item["arguments"] if isinstance(item["arguments"], str)
            else _compact_json(item["arguments"]),
        )
        for item in tool_calls or ()
    )
    return Reply(content, calls, usage)


def message_text(message: dict[str, Any]) -> str:
    """The text of a message's content: a string, or the text parts of a list."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part["text"] for part in content
                        if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


def default_reply(messages: list[dict[str, Any]], functions: list[dict[str, Any]]) -> Reply:
    """The answer to ``messages`` when no reply is queued; ``functions`` are the request's tools."""
    trailing_tool_results: list[dict[str, Any]] = []
    for message in reversed(messages):
        if message["role"] != "tool":
            break
        trailing_tool_results.insert(0, message)
    if trailing_tool_results:
        return Reply(_tool_results_answer(messages, trailing_tool_results))

    last_user_index = max((index for index, message in enumerate(messages) if message["role"] == "user"),
                          default=-1)
    user_text = message_text(messages[last_user_index]) if last_user_index >= 0 else ""
    tool_answered = any(message["role"] == "tool" for message in messages[last_user_index + 1:])
    if functions and not tool_answered:
        tool_calls = _mentioned_tool_calls(user_text, functions)
        if tool_calls:
            return Reply(None, tool_calls)

    recalled = _recalled_answer(user_text, messages[:last_user_index])
    if recalled is not None:
        return Reply(recalled)

    answer = f"Hello! You said: {user_text}"
    if _LONG_WORD.search(user_text):
        answer = f"{answer} {_LONG_ANSWER_EXTRA}"
    return Reply(answer)


def _recalled_answer(question: str, earlier_messages: list[dict[str, Any]]) -> str | None:
    """``"Your A is V."`` if ``question`` asks for "my A" and an earlier user message said "my A is V"."""
    asked = _RECALL_QUESTION.search(question)
    if asked is None:
        return None
    attribute = " ".join(asked.group(1).split())
    attribute_words = r"\s+".join(re.escape(word) for word in attribute.split())
    statement = re.compile(rf"\bmy\s+{attribute_words}\s+is\s+([^.!?;,\n]*[^.!?;,\s])", re.IGNORECASE)
    for message in reversed(earlier_messages):
        if message["role"] != "user":
            continue
        statements = list(statement.finditer(message_text(message)))
        if statements:
            return f"Your {attribute.lower()} is {statements[-1].group(1).strip()}."
    return None


def _tool_results_answer(messages: list[dict[str, Any]], tool_results: list[dict[str, Any]]) -> str:
    calling_message: dict[str, Any] = next((message for message in reversed(messages)
                                            if message["role"] == "assistant" and message.get("tool_calls")), {})
    function_name_by_call_id = {
        call.get("id"): call.get("function", {}).get("name")
        for call in calling_message.get("tool_calls", []) if isinstance(call, dict)
    }
    parts = []
    for result in tool_results:
        function_name = function_name_by_call_id.get(result.get("tool_call_id")) or "unknown"
        parts.append(f"{function_name} -> {message_text(result)}")
    return "Tool results: " + "; ".join(parts)


def _mentioned_tool_calls(user_text: str, functions: list[dict[str, Any]]) -> tuple[ToolCall, ...]:
    """One call per function named in ``user_text``, in order of first mention."""
    mentions: list[tuple[int, int, dict[str, Any]]] = []  # (start, end, function)
    for function in functions:
        name_parts = (re.escape(part) for part in function["name"].split("_"))
        pattern = re.compile(r"(?<!\w)" + "[_ ]".join(name_parts) + r"(?!\w)", re.IGNORECASE)
        match = pattern.search(user_text)
        if match:
            mentions.append((match.start(), match.end(), function))
    mentions.sort(key=lambda mention: mention[0])
    return tuple(
        ToolCall(id=_new_tool_call_id(), name=function["name"],
                 arguments=_compact_json(_arguments_after(user_text, end, function.get("parameters"))))
        for _, end, function in mentions
    )


def _arguments_after(text: str, position: int, schema: Any) -> dict[str, Any]:
    """The JSON object literal at ``position`` in ``text``, else schema placeholders."""
    literal_start = len(text) - len(text[position:].lstrip())
    if text.startswith("{", literal_start):
        try:
            literal, _ = _JSON_DECODER.raw_decode(text, literal_start)
        except json.JSONDecodeError:
            literal = None
        if isinstance(literal, dict):
            return literal
    if not isinstance(schema, dict):
        return {}
    word_match = _WORD_AFTER_TOOL_NAME.match(text, position)
    word = word_match.group(1) if word_match else "test"
    properties = schema.get("properties") or {}
    return {name: _placeholder_value(properties.get(name) or {}, word)
            for name in schema.get("required") or []}


def _placeholder_value(property_schema: dict[str, Any], word: str) -> Any:
    json_type = property_schema.get("type")
    if isinstance(json_type, list):  # e.g. ["string", "null"]
        json_type = next((name for name in json_type if name != "null"), None)
    placeholders: dict[str, Any] = {"string": word, "integer": 1, "number": 1.0, "boolean": True,
                                    "array": [], "object": {}}
    return placeholders.get(json_type) if isinstance(json_type, str) else None


def _new_tool_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
