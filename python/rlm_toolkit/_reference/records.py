"""JSONL records built from events: the reference for the Rust encoder in ``rust/pyjson.rs``.

Encoding rules (both backends): every str written (values, dict keys, ``model``, exception type names) is
capped at ``max_field_chars`` code points with a ``…[truncated N chars]`` suffix; bytes decoded as UTF-8
with backslash escapes; ints as numbers, except those of more than ``MAX_INT_BITS`` bits, written as the
string ``"<int of N bits>"``; floats as Python's ``repr`` writes them, NaN and infinities as the strings
``"NaN"``, ``"Infinity"``, ``"-Infinity"``; dict keys that are not str written as ``str(key)``, and of keys
that come out the same only the first is kept; tuples, lists, sets and frozensets as arrays (one whose
iteration raises is written as text, as below); exceptions as ``{"type", "message"}``; containers nested
deeper than ``MAX_DEPTH`` as ``"<max depth exceeded>"``; anything else as ``str(value)``, else
``repr(value)``, else ``"<unrepresentable TYPE>"``. The event's own keywords (``EventSpec.keywords``) follow
its fields, each null when not given; then ``tags`` and ``metadata`` when given (not None); then the other
extras as ``extra``. Subclasses of str, int, float, bytes and dict are
written by their built-in value, whatever methods they override. Which conversation text a record holds
follows ``rlm_toolkit.events.CONTENT_FIELDS``.
"""

from __future__ import annotations

import math
import operator
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

from ..errors import InvalidEventError
from ..events import CONTENT_FIELDS, CONTENT_SWITCHES, EVENTS_BY_NAME, RUN_CONTEXT_KEYWORDS
from ..secrets import reference_redact as redact
from .clock import now

MAX_DEPTH = 64
DEPTH_EXCEEDED = "<max depth exceeded>"
MAX_INT_BITS = 2048
"""Ints up to this many bits (617 digits) are written as numbers: always convertible to decimal."""
MAX_COUNT = 2**64 - 1
"""Token counts are unsigned 64-bit: a count outside 0..MAX_COUNT counts as 0, sums saturate."""
END_OF_YEAR_9999 = 253_402_300_800.0
"""Epoch seconds of 10000-01-01T00:00:00Z: timestamps are in ``0 <= ts < END_OF_YEAR_9999``."""

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _shown(value: Any) -> str:
    """``repr(value)`` for an error message, cut after 40 characters."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 40 else text[:40] + "…"


def checked_timestamp(hook: str, timestamp: Any) -> float | None:
    """``timestamp`` as float seconds (None stays None), converted as the Rust core's ``f64`` extraction does
    (a float's own value, else ``__float__``, else ``__index__``). Raises TypeError for a value that is not a
    number, InvalidEventError for a number that is not epoch seconds in ``0 <= ts < END_OF_YEAR_9999``."""
    if timestamp is None:
        return None
    kind = type(timestamp)
    try:
        if isinstance(timestamp, float):
            seconds = float.__float__(timestamp)
        elif hasattr(kind, "__float__"):
            seconds = kind.__float__(timestamp)
            if not isinstance(seconds, float):
                raise TypeError(f"{kind.__name__}.__float__ returned non-float")
        elif hasattr(kind, "__index__"):
            seconds = float(operator.index(timestamp))
        else:
            raise TypeError(f"{kind.__name__} is not a number")
    except OverflowError:
        seconds = math.inf
    except TypeError:
        raise TypeError(f"{hook}(): timestamp must be epoch seconds as a float or int, not {kind.__name__}") from None
    if not 0.0 <= seconds < END_OF_YEAR_9999:
        raise InvalidEventError(
            f"{hook}(): timestamp {_shown(timestamp)} is not epoch seconds in 0 <= ts < {END_OF_YEAR_9999:.0f} "
            "(before year 10000); pass a time such as time.time(), or leave it out to use the current time"
        )
    return float.__float__(seconds)


def iso_utc(ts: float) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ``; ``ts * 1e6`` rounded half away from zero to whole microseconds."""
    scaled = ts * 1_000_000.0
    whole = math.floor(scaled)
    micros_total = int(whole) + (1 if scaled - whole >= 0.5 else 0)
    seconds, micros = divmod(micros_total, 1_000_000)
    moment = _EPOCH + timedelta(seconds=seconds)
    return (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
            f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}.{micros:06d}Z")


def _text(text: str, max_chars: int = sys.maxsize) -> str:
    """Redacted (lone surrogates included: the text around them is redacted), then capped at ``max_chars``."""
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
            return str.__str__(text)
    return f"<unrepresentable {type(value).__name__}>"


def _as_written(text: str) -> str:
    """``text`` as its JSON string reads back: code points of a surrogate pair joined into one character."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    return text


def _int(value: int) -> int | str:
    bits = int.bit_length(value)
    return int.__int__(value) if bits <= MAX_INT_BITS else f"<int of {bits} bits>"


def _float(value: float) -> float | str:
    number = float.__float__(value)
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    return number


def _mapping(value: dict[Any, Any], max_chars: int, depth: int) -> dict[str, Any]:
    # A snapshot of the items: str() of a key or value may run code that mutates the dict.
    written: dict[str, Any] = {}
    seen: set[str] = set()
    for key, item in list(dict.items(value)):
        text = _text(str.__str__(key) if isinstance(key, str) else _fallback_text(key), max_chars)
        identity = _as_written(text)
        if identity not in seen:
            seen.add(identity)
            written[text] = jsonable(item, max_chars, depth + 1)
    return written


def jsonable(value: Any, max_chars: int, depth: int = 0) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _text(str.__str__(value), max_chars)
    if isinstance(value, int):
        return _int(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, (bytes, bytearray)):
        return _text(str(value, "utf-8", "backslashreplace"), max_chars)
    if isinstance(value, BaseException):
        return {"type": _text(type(value).__name__, max_chars), "message": _text(_fallback_text(value), max_chars)}
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        if depth >= MAX_DEPTH:
            return DEPTH_EXCEEDED
        if isinstance(value, dict):
            return _mapping(value, max_chars, depth)
        try:
            items = list(value)
        except Exception:
            return _text(_fallback_text(value), max_chars)
        return [jsonable(item, max_chars, depth + 1) for item in items]
    return _text(_fallback_text(value), max_chars)


def _attribute(value: Any, name: str) -> Any:
    """``value.name``, or None when reading it raises."""
    try:
        return getattr(value, name)
    except Exception:
        return None


def _token_count(usage: Any, name: str) -> int:
    count = _attribute(usage, name)
    if isinstance(count, int) and not isinstance(count, bool) and 0 <= count <= MAX_COUNT:
        return int.__int__(count)
    return 0


USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "reasoning_tokens")
"""The token counts read from an LLM response's usage, in the order of ``usage_of`` and of the record."""


def usage_of(response: Any) -> tuple[int, int, int, int, int] | None:
    """(prompt, completion, total, cached, reasoning) tokens of an LLM response, or None when it carries no
    usage."""
    usage = _attribute(response, "usage")
    if usage is None:
        return None
    prompt, completion, total, cached, reasoning = (_token_count(usage, name) for name in USAGE_FIELDS)
    return (prompt, completion, total, cached, reasoning)


def response_model(response: Any, model: str | None) -> str | None:
    if model is not None:
        return model
    response_model_name = _attribute(response, "model")
    return str.__str__(response_model_name) if isinstance(response_model_name, str) else None


def response_text(response: Any) -> Any:
    """An exact str as it is; else the response's ``content`` (an ``LLMResponse``, itself a str, has it as
    an exact str), else the response."""
    if type(response) is str:
        return response
    content = _attribute(response, "content")
    return content if content is not None else response


def _content_rules() -> dict[tuple[str, str], dict[str | None, tuple[str, ...]]]:
    rules: dict[tuple[str, str], dict[str | None, tuple[str, ...]]] = {}
    for row in CONTENT_FIELDS:
        rules.setdefault((row.event, row.field), {})[row.role] = row.switches
    return rules


_CONTENT_RULES = _content_rules()


def _written(event: str, field: str, role: str | None, switched_on: frozenset[str]) -> bool:
    """Whether the content switches let ``field`` of ``event`` (with the ``role=`` extra ``role``) be written."""
    rules = _CONTENT_RULES.get((event, field))
    if rules is None:
        return True
    switches = rules[role] if role in rules else rules.get(None, ())
    return all(switch in switched_on for switch in switches)


def build_record(event: str, args: tuple[Any, ...], run_id: Any, parent_run_id: Any, model: str | None,
                 ts: float | None, extra: dict[str, Any] | None, *, include_prompts: bool, include_responses: bool,
                 max_chars: int) -> dict[str, Any]:
    seconds = checked_timestamp("on_" + event, ts)
    ts = now() if seconds is None else seconds
    switched_on = frozenset(
        switch for switch, on in zip(CONTENT_SWITCHES, (include_prompts, include_responses)) if on
    )
    spec = EVENTS_BY_NAME[event]
    extra = dict(extra) if extra else {}
    event_keywords = [extra.pop(name, None) for name in spec.keywords]
    run_context = {name: value for name in RUN_CONTEXT_KEYWORDS if (value := extra.pop(name, None)) is not None}
    role = extra.get("role")
    role = str.__str__(role) if isinstance(role, str) else None
    record: dict[str, Any] = {
        "ts": iso_utc(ts),
        "event": event,
        "run_id": jsonable(run_id, max_chars),
        "parent_run_id": jsonable(parent_run_id, max_chars),
    }
    if event == "llm_end":
        response = args[0]
        record["model"] = jsonable(response_model(response, model), max_chars)
        if _written(event, "response", role, switched_on):
            record["response"] = jsonable(response_text(response), max_chars)
        usage = usage_of(response)
        if usage is None:
            record.update(dict.fromkeys(USAGE_FIELDS))
        else:
            prompt_tokens, completion_tokens, total_tokens, cached_tokens, reasoning_tokens = usage
            record["prompt_tokens"] = prompt_tokens
            record["completion_tokens"] = completion_tokens
            record["total_tokens"] = total_tokens or min(prompt_tokens + completion_tokens, MAX_COUNT)
            record["cached_tokens"] = cached_tokens
            record["reasoning_tokens"] = reasoning_tokens
    else:
        for name in spec.fields:
            if name == "model":
                record[name] = jsonable(model, max_chars)
                continue
            value = args[spec.args.index(name)]
            if name == "error" and not _written(event, "error.message", role, switched_on):
                record[name] = {"type": _text(type(value).__name__, max_chars)}
            elif _written(event, name, role, switched_on):
                record[name] = jsonable(value, max_chars)
    for name, value in zip(spec.keywords, event_keywords):
        record[name] = jsonable(value, max_chars)
    for name, value in run_context.items():
        record[name] = jsonable(value, max_chars)
    if extra:
        record["extra"] = jsonable(extra, max_chars)
    return record
