"""Differential tests: the same event stream through the Rust backend and the pure-Python reference gives
the same metrics, the same errors for the same calls, and the same JSONL lines, `ts` included.

The strategies aim where the two encoders and aggregators are most likely to part: long streams of LLM
start/end pairs over a few run ids with `max_open_runs` below their number (eviction), text with lone
surrogates, control characters and key-shaped tokens, values nested around the depth cap, huge ints,
floats in exponent form, subclasses that override their methods, and timestamps at the ends of the range
or outside it.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlm_toolkit import LLMResponse, Usage
from rlm_toolkit.callbacks import BaseCallback, CallbackManager, FileLogCallback, MetricsCallback

from hostile_values import FailingIteration, LoudBytes, LoudDict, LoudFloat, LoudInt, LoudStr



class LabelledUUID(uuid.UUID):
    """A UUID subclass whose str() is its own."""

    def __str__(self) -> str:
        return "run " + super().__str__()[:8]


def tampered_uuid(number: int) -> uuid.UUID:
    """A UUID whose int slot was set past UUID's own range check."""
    tampered = object.__new__(uuid.UUID)
    object.__setattr__(tampered, "int", number)
    return tampered


UUIDS = [uuid.UUID(int=0), uuid.UUID("0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"), uuid.UUID(int=2**128 - 1),
         LabelledUUID("0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"), tampered_uuid(2**130 + 7), tampered_uuid(-1)]
RUN_IDS = st.sampled_from(["a", "b", "c", "d", None, *UUIDS])
PARENT_IDS = st.sampled_from(["a", None, None, 7, UUIDS[1]])
MODELS = st.sampled_from(["gpt-4o", "gpt-4o-mini-2024-07-18", "local-model", "", None])

PIECES = st.one_of(
    st.text(alphabet=st.sampled_from("ab Zé😀\u2028\x00\x1f\x7f\n\t\"\\\ud800\udfff\ud83d\ude00"), max_size=12),
    st.builds(lambda prefix, body: prefix + body, st.sampled_from(["sk-", "sk-proj-", "Bearer ", "xsk-", "B"]),
              st.text(alphabet="abcXYZ019_-./+=", min_size=0, max_size=30)),
    st.text(max_size=8),
)
TEXT = st.lists(PIECES, max_size=4).map("".join)


class HugeInt(int):
    """An int past Python's 4300-digit str() limit, with a repr Hypothesis can print."""

    def __repr__(self) -> str:
        return f"HugeInt(<{self.bit_length()} bits>)"


HUGE_INTS = st.one_of(
    st.sampled_from([2**63, 2**64, -(2**63) - 1, 2**2048 - 1, 2**2048, -(2**2048)]),
    st.integers(4301, 6000).map(lambda digits: HugeInt(10**digits)),
)
FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e16, 1.5e-05, 1e-07, 123.0, -0.0, 1e15, 0.0001, 5e-324, 1.7976931348623157e308]),
)


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    __str__ = __repr__

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # how Hypothesis shows it in a failure
        printer.text("Unprintable()")


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")


HOSTILE = st.one_of(
    st.builds(FailingIteration, st.lists(st.integers(0, 9), max_size=2)),
    st.builds(LoudStr, TEXT),
    st.builds(LoudInt, st.one_of(st.integers(-5, 5), HUGE_INTS)),
    st.builds(LoudFloat, FLOATS),
    st.builds(LoudDict, st.dictionaries(st.sampled_from(["k", "1"]), st.integers(0, 3), max_size=2)),
    st.builds(LoudBytes, st.binary(max_size=6)),
    st.builds(Unprintable),
    st.builds(UnprintableError),
)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), HUGE_INTS, FLOATS, TEXT, st.binary(max_size=10), HOSTILE,
)
KEYS = st.one_of(TEXT, st.integers(-2, 2), st.sampled_from(["1", "None", "True", None, True, 1.5]))
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(KEYS, children, max_size=4),
        st.frozensets(st.integers(), max_size=3),
        st.tuples(children, children),
    ),
    max_leaves=12,
)


def nested(depth: int, leaf: Any, as_dict: bool) -> Any:
    value = leaf
    for level in range(depth):
        value = {"d": value} if as_dict and level % 2 else [value]
    return value


DEEP = st.builds(nested, st.integers(60, 68), SCALARS, st.booleans())
PAYLOADS = st.one_of(VALUES, VALUES, DEEP)

# Besides small counts: both sides of CPython's 30-bit int digits, which the Rust core reads in place.
DIGIT_EDGES = [2**30 - 1, 2**30, 2**31 + 5, 2**60 - 1, 2**60, 2**63, 2**64 - 1, 2**64]
TOKEN_COUNTS = st.one_of(st.integers(0, 10**6), st.integers(0, 2**64 + 1),
                         st.sampled_from([*DIGIT_EDGES, -1, -(2**30), True, 1.5, "7", None]))


class DoubledUsage(Usage):
    """Overrides attribute access: its counts are not the slots' values."""

    __slots__ = ()

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        return value * 2 if name.endswith("_tokens") and isinstance(value, int) else value


def unset_usage() -> Usage:
    """A Usage whose slots were never set."""
    return object.__new__(Usage)


USAGE = st.one_of(
    st.builds(Usage, TOKEN_COUNTS, TOKEN_COUNTS, st.integers(0, 3 * 10**6), TOKEN_COUNTS, TOKEN_COUNTS),
    st.builds(DoubledUsage, TOKEN_COUNTS, TOKEN_COUNTS, st.integers(0, 3 * 10**6), TOKEN_COUNTS, TOKEN_COUNTS),
    st.builds(unset_usage),
    st.none(),
)


class RepricedResponse(LLMResponse):
    """An LLMResponse subclass whose properties stand in for its stored fields."""

    @property
    def usage(self) -> Usage:  # type: ignore[override]
        return Usage(3, 4, 0, 1, 2)

    @property
    def content(self) -> str:  # type: ignore[override]
        return "from the property"


def response_with_edited_dict(text: str, usage: Any) -> LLMResponse:
    """An LLMResponse whose instance dict was changed after it was built."""
    response = LLMResponse(text, "gpt-4o", Usage(1, 1, 2))
    response.__dict__.update(usage=usage, content=None, model=5)
    return response


class UsageThatRaises:
    @property
    def usage(self) -> Any:
        raise RuntimeError("no usage")

    @property
    def content(self) -> Any:
        raise RuntimeError("no content")


class FieldsByGetattr:
    """A response whose fields come from ``__getattr__``, which raises AttributeError for the others (as SDK
    objects with lazy fields do)."""

    def __getattr__(self, name: str) -> Any:
        if name == "usage":
            return SimpleNamespace(prompt_tokens=7, total_tokens=9)
        if name == "model":
            return "gpt-4o-mini"
        raise AttributeError(name)


RESPONSES = st.one_of(
    st.builds(LLMResponse, TEXT, MODELS, USAGE),
    st.builds(LLMResponse, TEXT, MODELS, USAGE),
    st.builds(RepricedResponse, TEXT, MODELS, USAGE),
    st.builds(response_with_edited_dict, TEXT, st.one_of(USAGE, TEXT)),
    st.builds(SimpleNamespace, content=st.one_of(TEXT, st.none()), model=st.one_of(MODELS, st.integers()),
              usage=st.one_of(st.none(), st.builds(SimpleNamespace, prompt_tokens=st.one_of(st.integers(), TEXT)))),
    st.just(UsageThatRaises()),
    st.just(FieldsByGetattr()),
    st.just({"usage": SimpleNamespace(prompt_tokens=5), "model": "gpt-4o", "content": "in a dict"}),
    TEXT,
)
ERRORS = st.one_of(
    st.builds(lambda kind, message: kind(message), st.sampled_from([ValueError, TimeoutError, KeyError]), TEXT),
    st.builds(UnprintableError),
    TEXT,
)
EXTRAS = st.dictionaries(
    st.sampled_from(["role", "source", "temperature", "tags", "kind"]),
    st.one_of(st.sampled_from(["user", "assistant", "system", "run", "batch"]), st.builds(LoudStr, st.just("user")),
              VALUES),
    max_size=2,
)

ARGUMENTS = {
    "on_llm_start": st.tuples(TEXT),
    "on_llm_end": st.tuples(RESPONSES),
    "on_llm_new_token": st.tuples(TEXT),
    "on_tool_start": st.tuples(TEXT, PAYLOADS),
    "on_tool_end": st.tuples(TEXT, PAYLOADS),
    "on_memory_store": st.tuples(TEXT),
    "on_memory_recall": st.tuples(TEXT, st.lists(PAYLOADS, max_size=3)),
    "on_retry": st.tuples(st.integers(1, 5), st.integers(1, 5), ERRORS),
    "on_error": st.tuples(ERRORS),
    "on_run_start": st.tuples(TEXT),
    "on_run_end": st.tuples(TEXT),
}
# Most events are LLM calls starting and ending (or failing), so runs open, close and get evicted.
HOOKS = ["on_llm_start"] * 5 + ["on_llm_end"] * 5 + ["on_error"] * 2 + [
    hook for hook in ARGUMENTS if hook not in ("on_llm_start", "on_llm_end", "on_error")
]
EVENT = st.sampled_from(HOOKS).flatmap(lambda hook: ARGUMENTS[hook].map(lambda args: (hook, args)))

END_OF_YEAR_9999 = 253_402_300_800.0
TIMESTAMPS = st.one_of(
    # Seconds after the previous event's time (the stream's clock), so latencies are real.
    st.tuples(st.just("step"), st.floats(0, 5)),
    st.tuples(st.just("step"), st.floats(0, 5)),
    st.tuples(st.just("step"), st.sampled_from([0.0, 0.0000005, 0.0000015, 1.0])),
    st.tuples(st.just("at"), st.one_of(st.floats(0, END_OF_YEAR_9999, exclude_max=True), st.integers(0, 2**35),
                                       st.sampled_from([0, 0.0000005, math.nextafter(END_OF_YEAR_9999, 0)]))),
    st.tuples(st.just("at"), st.sampled_from([math.nan, math.inf, -1.0, 1e300, END_OF_YEAR_9999, 10**400, "now"])),
)
STEP = st.tuples(EVENT, RUN_IDS, PARENT_IDS, MODELS, TIMESTAMPS, EXTRAS)
# A length drawn first, so long streams are as likely as short ones.
STREAM = st.integers(20, 200).flatmap(lambda length: st.lists(STEP, min_size=length, max_size=length))


def timestamp_of(clock: float, timestamp: tuple[str, Any]) -> Any:
    how, value = timestamp
    return clock + value if how == "step" else value


class CallCounter(BaseCallback):
    """A Python hook per event, so a rejected event that still reaches hooks shows."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
        self.calls.append("llm_start")

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self.calls.append("llm_end")

    def on_error(self, error: BaseException, **kwargs: Any) -> None:
        self.calls.append("error")


def run_stream(backend: str, path: Path, stream: list[Any], max_open_runs: int, include_prompts: bool,
               include_responses: bool, max_field_chars: int) -> tuple[Any, ...]:
    metrics = MetricsCallback(max_open_runs=max_open_runs, backend=backend)
    log = FileLogCallback(path, include_prompts=include_prompts, include_responses=include_responses,
                          include_tokens=True, max_field_chars=max_field_chars, backend=backend)
    counter = CallCounter()
    manager = CallbackManager([metrics, log, counter], backend=backend)
    outcomes: list[Any] = []
    clock = 1_700_000_000.0
    for (hook, args), run_id, parent_run_id, model, timestamp, extra in stream:
        when = timestamp_of(clock, timestamp)
        try:
            getattr(manager, hook)(*args, run_id=run_id, parent_run_id=parent_run_id, model=model or None,
                                   timestamp=when, **extra)
        except Exception as error:
            outcomes.append((type(error).__name__, str(error)))
        else:
            outcomes.append(None)
            clock = when if isinstance(when, (int, float)) else clock
    log.close()
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]
    return (metrics.get_metrics(), metrics.snapshot().to_json()), outcomes, counter.calls, lines


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(stream=STREAM, max_open_runs=st.integers(1, 3), include_prompts=st.booleans(),
       include_responses=st.booleans(), max_field_chars=st.sampled_from([16, 20, 64]))
def test_backends_agree_on_metrics_errors_and_lines(tmp_path_factory: Any, stream: list[Any], max_open_runs: int,
                                                    include_prompts: bool, include_responses: bool,
                                                    max_field_chars: int) -> None:
    directory = tmp_path_factory.mktemp("differential")
    rust = run_stream("rust", directory / "rust.jsonl", stream, max_open_runs, include_prompts, include_responses,
                      max_field_chars)
    python = run_stream("python", directory / "python.jsonl", stream, max_open_runs, include_prompts,
                        include_responses, max_field_chars)
    rust_metrics, rust_outcomes, rust_calls, rust_lines = rust
    python_metrics, python_outcomes, python_calls, python_lines = python
    assert rust_outcomes == python_outcomes
    assert rust_calls == python_calls
    assert rust_metrics == python_metrics
    assert len(rust_lines) == len(python_lines) == rust_outcomes.count(None)
    for rust_line, python_line in zip(rust_lines, python_lines):
        assert rust_line == python_line


KEYISH = st.builds(lambda prefix, body: prefix + body, st.sampled_from(["sk-", "Bearer ", "xsk-", "sk", "B"]),
                   st.text(alphabet="abcXYZ019_-./+=~ ", min_size=0, max_size=40))


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.one_of(st.text(max_size=20), KEYISH), max_size=5))
def test_rust_and_reference_redaction_agree(parts: list[str]) -> None:
    from rlm_toolkit.secrets import redact, reference_redact, register_secret

    register_secret("registered-secret-for-tests")
    text = "".join(parts) + " registered-secret-for-tests"
    assert redact(text) == reference_redact(text)
    assert "registered-secret-for-tests" not in redact(text)
