"""Differential tests: the same event stream through the Rust backend and the pure-Python reference
gives the same metrics and the same JSONL records (timestamps aside)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlm_toolkit import LLMResponse, Usage
from rlm_toolkit.callbacks import CallbackManager, FileLogCallback, MetricsCallback

RUN_IDS = st.sampled_from(["a", "b", "c", "d", "", None])
MODELS = st.sampled_from(["gpt-4o", "gpt-4o-mini-2024-07-18", "local-model", "", None])
TEXT = st.text(max_size=40)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), TEXT,
    st.binary(max_size=10),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(TEXT, st.integers()), children, max_size=4),
        st.frozensets(st.integers(), max_size=3),
        st.tuples(children, children),
    ),
    max_leaves=12,
)
USAGE = st.builds(Usage, st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 3 * 10**6))
RESPONSES = st.one_of(
    st.builds(LLMResponse, TEXT, MODELS, USAGE),
    st.builds(SimpleNamespace, content=TEXT, model=MODELS, usage=st.none()),
    TEXT,
)
ERRORS = st.builds(lambda kind, message: kind(message), st.sampled_from([ValueError, TimeoutError, KeyError]), TEXT)
EXTRAS = st.dictionaries(st.sampled_from(["role", "source", "temperature", "tags"]), VALUES, max_size=2)

EVENT = st.one_of(
    st.tuples(st.just("on_llm_start"), st.tuples(TEXT)),
    st.tuples(st.just("on_llm_end"), st.tuples(RESPONSES)),
    st.tuples(st.just("on_llm_new_token"), st.tuples(TEXT)),
    st.tuples(st.just("on_tool_start"), st.tuples(TEXT, VALUES)),
    st.tuples(st.just("on_tool_end"), st.tuples(TEXT, VALUES)),
    st.tuples(st.just("on_memory_store"), st.tuples(TEXT)),
    st.tuples(st.just("on_memory_recall"), st.tuples(TEXT, st.lists(VALUES, max_size=3))),
    st.tuples(st.just("on_retry"), st.tuples(st.integers(1, 5), st.integers(1, 5), ERRORS)),
    st.tuples(st.just("on_error"), st.tuples(ERRORS)),
    st.tuples(st.just("on_run_start"), st.tuples(TEXT)),
    st.tuples(st.just("on_run_end"), st.tuples(TEXT)),
)
STREAM = st.lists(
    st.tuples(EVENT, RUN_IDS, RUN_IDS, MODELS, st.floats(0, 5, allow_nan=False), EXTRAS), max_size=40
)


def without_timestamps(path: Path) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]
    for record in records:
        del record["ts"]
    return records


def same(left: Any, right: Any) -> bool:
    """Equality that counts NaN equal to NaN (a record may hold the NaN of a float's repr)."""
    if isinstance(left, float) and isinstance(right, float) and math.isnan(left) and math.isnan(right):
        return True
    if isinstance(left, dict) and isinstance(right, dict):
        return list(left) == list(right) and all(same(left[key], right[key]) for key in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(same(a, b) for a, b in zip(left, right))
    return type(left) is type(right) and left == right


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=STREAM, max_open_runs=st.integers(1, 4), include=st.booleans())
def test_backends_agree_on_metrics_and_records(tmp_path_factory: Any, stream: list[Any], max_open_runs: int,
                                               include: bool) -> None:
    directory = tmp_path_factory.mktemp("differential")
    outputs = {}
    for backend in ("rust", "python"):
        metrics = MetricsCallback(max_open_runs=max_open_runs, backend=backend)
        path = directory / f"{backend}.jsonl"
        log = FileLogCallback(path, include_prompts=include, include_responses=not include, include_tokens=True,
                              max_field_chars=20, backend=backend)
        manager = CallbackManager([metrics, log], backend=backend)
        clock = 1_700_000_000.0
        for (hook, args), run_id, parent_run_id, model, step, extra in stream:
            clock += step
            getattr(manager, hook)(*args, run_id=run_id, parent_run_id=parent_run_id, model=model or None,
                                   timestamp=clock, **extra)
        log.close()
        outputs[backend] = (metrics.get_metrics(), without_timestamps(path))
    assert outputs["rust"][0] == outputs["python"][0]
    rust_records, python_records = outputs["rust"][1], outputs["python"][1]
    assert len(rust_records) == len(python_records) == len(stream)
    for rust_record, python_record in zip(rust_records, python_records):
        assert same(rust_record, python_record), (rust_record, python_record)


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
