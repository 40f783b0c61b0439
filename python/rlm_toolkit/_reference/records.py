"""JSONL records built from events: the reference for the Rust encoder in ``rust/pyjson.rs``.

Encoding rules (both backends): str as is, capped at ``max_field_chars`` code points with a
``…[truncated N chars]`` suffix; bytes decoded as UTF-8 with backslash escapes; NaN and infinities as the
strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``; dict keys that are not str written as ``str(key)``;
tuples, lists, sets and frozensets as arrays; exceptions as ``{"type", "message"}``; containers nested deeper
than ``MAX_DEPTH`` as ``"<max depth exceeded>"``; anything else as ``str(value)``, else ``repr(value)``,
else ``"<unrepresentable TYPE>"``.
"""

from __future__ import annotations

import math
import sys
from datetime import datetime, timezone
from typing import Any

from ..events import EVENTS_BY_NAME
from ..secrets import reference_redact as redact

MAX_DEPTH = 64
DEPTH_EXCEEDED = "<max depth exceeded>"


def iso_utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _text(text: str, max_chars: int = sys.maxsize) -> str:
    """Redacted (when the text has a UTF-8 form, i.e. no lone surrogates), then capped at ``max_chars``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        text = redact(text)
    if len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}…[truncated {len(text) - max_chars} chars]"


def _fallback_text(value: Any) -> str:
    for render in (str, repr):
        try:
            text = render(value)
        except Exception:
            continue
        if isinstance(text, str):
            return text
    return f"<unrepresentable {type(value).__name__}>"


def jsonable(value: Any, max_chars: int, depth: int = 0) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _text(str(value), max_chars)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return float(value)
    if isinstance(value, (bytes, bytearray)):
        return _text(bytes(value).decode("utf-8", "backslashreplace"), max_chars)
    if isinstance(value, BaseException):
        return {"type": type(value).__name__, "message": _text(_fallback_text(value), max_chars)}
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        if depth >= MAX_DEPTH:
            return DEPTH_EXCEEDED
        if isinstance(value, dict):
            return {
                _text(key if isinstance(key, str) else _fallback_text(key)): jsonable(item, max_chars, depth + 1)
                for key, item in value.items()
            }
        return [jsonable(item, max_chars, depth + 1) for item in value]
    return _text(_fallback_text(value), max_chars)


def _token_count(usage: Any, name: str) -> int:
    count = getattr(usage, name, 0)
    return count if isinstance(count, int) and not isinstance(count, bool) and count >= 0 else 0


def usage_of(response: Any) -> tuple[int, int, int] | None:
    """(prompt, completion, total) tokens of an LLM response, or None when it carries no usage."""
    usage = getattr(response, "usage", None)
    if usage is None:
        return None
    return (_token_count(usage, "prompt_tokens"), _token_count(usage, "completion_tokens"),
            _token_count(usage, "total_tokens"))


def response_model(response: Any, model: str | None) -> str | None:
    if model is not None:
        return model
    response_model_name = getattr(response, "model", None)
    return response_model_name if isinstance(response_model_name, str) else None


def response_text(response: Any) -> Any:
    if isinstance(response, str):
        return response
    content = getattr(response, "content", None)
    return content if content is not None else response


def build_record(event: str, args: tuple[Any, ...], run_id: Any, parent_run_id: Any, model: str | None,
                 ts: float, extra: dict[str, Any] | None, *, include_prompts: bool, include_responses: bool,
                 max_chars: int) -> dict[str, Any]:
    record: dict[str, Any] = {
        "ts": iso_utc(ts),
        "event": event,
        "run_id": jsonable(run_id, max_chars),
        "parent_run_id": jsonable(parent_run_id, max_chars),
    }
    spec = EVENTS_BY_NAME[event]
    if event == "llm_end":
        response = args[0]
        record["model"] = jsonable(response_model(response, model), sys.maxsize)
        if include_responses:
            record["response"] = jsonable(response_text(response), max_chars)
        prompt_tokens, completion_tokens, total_tokens = usage_of(response) or (0, 0, 0)
        record["prompt_tokens"] = prompt_tokens
        record["completion_tokens"] = completion_tokens
        record["total_tokens"] = total_tokens or prompt_tokens + completion_tokens
    else:
        for name in spec.fields:
            if name == "model":
                record[name] = jsonable(model, sys.maxsize)
            elif (name != "prompt" or include_prompts) and (name != "answer" or include_responses):
                record[name] = jsonable(args[spec.args.index(name)], max_chars)
    if extra:
        record["extra"] = jsonable(extra, max_chars)
    return record
