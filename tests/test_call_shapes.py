"""The Rust dispatcher keeps the shape of each call site (which value goes where) after its first call. These
calls come back to the same sites with values that change, and through sites that must not be kept; what the
hooks and sinks get must be what the reference backend gives them."""

from __future__ import annotations

from typing import Any

import pytest

from rlm_toolkit import LLMResponse, Usage
from rlm_toolkit.callbacks import BaseCallback, CallbackManager, MetricsCallback

RESPONSE = LLMResponse("answer", "gpt-4o", Usage.of(3, 4))
BACKENDS = ("rust", "python")


class KwargsOnly(BaseCallback):
    """Takes the context through ``**kwargs`` only: tags, metadata and event keywords reach it only when given."""

    def __init__(self, calls: list[tuple[Any, ...]]) -> None:
        self.calls = calls

    def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
        self.calls.append(("kwargs", "llm_start", prompt, kwargs))

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self.calls.append(("kwargs", "llm_end", response.content, kwargs))


class Named(BaseCallback):
    """Names what it takes: tags and the model always reach it, None or not."""

    def __init__(self, calls: list[tuple[Any, ...]]) -> None:
        self.calls = calls

    def on_llm_start(self, prompt: str, run_id: Any = "default", tags: Any = "default", model: Any = "default") -> None:
        self.calls.append(("named", "llm_start", prompt, run_id, tags, model))

    def on_llm_end(self, response: Any, *, ttft_ms: Any = "default") -> None:
        self.calls.append(("named", "llm_end", response.content, ttft_ms))


def counted(metrics: MetricsCallback) -> dict[str, Any]:
    """The metrics that do not depend on the clock."""

    def without_latency(values: dict[str, Any]) -> dict[str, Any]:
        return {name: without_latency(value) if isinstance(value, dict) else value
                for name, value in values.items() if "latency" not in name}

    return without_latency(metrics.get_metrics())


def hooked(backend: str) -> tuple[CallbackManager, list[tuple[Any, ...]], MetricsCallback]:
    calls: list[tuple[Any, ...]] = []
    metrics = MetricsCallback(backend=backend)  # type: ignore[arg-type]
    manager = CallbackManager([KwargsOnly(calls), Named(calls), metrics], backend=backend)  # type: ignore[arg-type]
    return manager, calls, metrics


def seen_in_both_backends(fire: Any) -> list[tuple[Any, ...]]:
    """What the hooks got from ``fire(manager)``, checked to be the same, with the metrics, in both backends."""
    seen = {}
    for backend in BACKENDS:
        manager, calls, metrics = hooked(backend)
        fire(manager)
        seen[backend] = (calls, counted(metrics))
    assert seen["rust"] == seen["python"]
    return seen["rust"][0]


VALUE_ROUNDS: list[dict[str, Any]] = [
    {"run_id": "r1", "parent_run_id": None, "model": "gpt-4o", "tags": ["a"], "metadata": {"k": 1}, "ttft_ms": 12.5},
    {"run_id": "r2", "parent_run_id": "p", "model": None, "tags": None, "metadata": None, "ttft_ms": None},
    {"run_id": None, "parent_run_id": None, "model": "gpt-4o-mini", "tags": [], "metadata": {}, "ttft_ms": 0.0},
    {"run_id": "r3", "parent_run_id": None, "model": "gpt-4o", "tags": None, "metadata": {"k": 2}, "ttft_ms": 3.0},
]


def fire_rounds(manager: CallbackManager) -> None:
    """One call site per event, fired with each round's values: the first call keeps the site's shape."""
    for values in VALUE_ROUNDS:
        manager.on_llm_start("p", run_id=values["run_id"], parent_run_id=values["parent_run_id"],
                             model=values["model"], tags=values["tags"], metadata=values["metadata"])
        manager.on_llm_end(RESPONSE, run_id=values["run_id"], model=values["model"], ttft_ms=values["ttft_ms"])


def test_a_call_site_fired_again_with_other_values_gives_the_hooks_what_the_reference_gives() -> None:
    calls = seen_in_both_backends(fire_rounds)
    # A keyword given as None is left out of **kwargs, even at a site whose first call gave it.
    second_start = [call for call in calls if call[:2] == ("kwargs", "llm_start")][1]
    assert "tags" not in second_start[3] and "metadata" not in second_start[3]
    assert [call for call in calls if call[:2] == ("named", "llm_end")][1][3] is None


def test_a_bad_model_at_a_site_that_took_a_good_one_is_refused_at_the_call() -> None:
    messages = []
    for backend in BACKENDS:
        calls: list[tuple[Any, ...]] = []
        manager = CallbackManager([KwargsOnly(calls)], backend=backend)  # type: ignore[arg-type]
        for model in ("gpt-4o", 3, None):
            try:
                manager.on_llm_start("p", run_id="r", model=model)  # type: ignore[arg-type]
            except TypeError as error:
                messages.append(str(error))
        assert [call[3].get("model") for call in calls] == ["gpt-4o", None]
    assert len(messages) == 2 and messages[0] == messages[1]


def fire_many_sites(manager: CallbackManager) -> None:
    """More call sites than the dispatcher keeps shapes for, each fired twice, and calls whose keyword names
    are new objects on each call."""
    run_id = "".join(["run", "_id"])  # a name built at run time: not interned, so never kept
    for _ in range(2):
        manager.on_llm_start("a")
        manager.on_llm_start("b", run_id="r")
        manager.on_llm_start("c", model="m")
        manager.on_llm_start("d", run_id="r", model="m")
        manager.on_llm_start("e", model="m", run_id="r")
        manager.on_llm_start("f", tags=["t"], run_id="r")
        manager.on_llm_start("g", **{"run_id": "r", "parent_run_id": "p"})
        manager.on_llm_start("h", **{run_id: "r"})
        manager.on_llm_start("i", run_id="r", timestamp=1_700_000_000.0)
        manager.on_llm_start("j", run_id="r", extra_keyword=1)
        manager.on_llm_start(prompt="k", run_id="r")


def test_more_sites_than_shapes_kept_and_names_built_at_run_time_all_reach_the_hooks() -> None:
    prompts = [call[2] for call in seen_in_both_backends(fire_many_sites) if call[0] == "named"]
    assert prompts == list("abcdefghijk") * 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_callback_added_after_a_site_was_shaped_gets_its_next_call(backend: str) -> None:
    calls: list[tuple[Any, ...]] = []
    manager = CallbackManager([KwargsOnly(calls)], backend=backend)  # type: ignore[arg-type]
    late_calls: list[tuple[Any, ...]] = []
    late = Named(late_calls)
    for round_number in range(3):
        if round_number == 1:
            manager.add(late)
        if round_number == 2:
            manager.remove(late)
        manager.on_llm_start("p", run_id=f"r{round_number}", model="m")
    assert [call[3]["run_id"] for call in calls] == ["r0", "r1", "r2"]
    assert late_calls == [("named", "llm_start", "p", "r1", None, "m")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_hook_that_replaces_the_registration_mid_fire_ends_that_fire_with_the_hooks_it_began_with(backend: str) -> None:
    """Registering drops the old registration while its fire is still looping over it."""
    calls: list[tuple[Any, ...]] = []
    late_calls: list[tuple[Any, ...]] = []
    late = Named(late_calls)

    class Rearranging(BaseCallback):
        def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
            calls.append(("rearranging", prompt))
            if prompt == "first":
                manager.remove(self)
                manager.add(late)

    manager = CallbackManager([Rearranging(), Named(calls)], backend=backend)  # type: ignore[arg-type]
    manager.on_llm_start("first", run_id="r1", model="m")
    manager.on_llm_start("second", run_id="r2", model="m")
    assert calls == [
        ("rearranging", "first"),
        ("named", "llm_start", "first", "r1", None, "m"),
        ("named", "llm_start", "second", "r2", None, "m"),
    ]
    assert late_calls == [("named", "llm_start", "second", "r2", None, "m")]
