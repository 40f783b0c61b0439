"""The event catalogue is the one place events are declared: the Rust enum, BaseCallback and both
backends' managers must agree with it."""

from __future__ import annotations

import inspect

import rlm_toolkit._core as core
from rlm_toolkit.callbacks import BaseCallback, CallbackManager
from rlm_toolkit.callbacks._registration import slot_names
from rlm_toolkit.events import EVENTS


def test_rust_enum_matches_catalogue() -> None:
    assert core.EVENT_CATALOGUE == tuple((s.name, s.args, s.fields, s.has_model) for s in EVENTS)


def test_base_callback_hooks_match_catalogue() -> None:
    hooks = {name for name in vars(BaseCallback) if name.startswith("on_")}
    assert hooks == {spec.hook for spec in EVENTS}
    for spec in EVENTS:
        parameters = list(inspect.signature(getattr(BaseCallback, spec.hook)).parameters.values())
        assert [p.name for p in parameters[1:-1]] == list(spec.args), spec.hook
        assert parameters[-1].kind is inspect.Parameter.VAR_KEYWORD


def test_manager_methods_take_the_catalogue_arguments(backend: str) -> None:
    manager = CallbackManager()
    for spec in EVENTS:
        parameters = inspect.signature(getattr(manager, spec.hook)).parameters
        assert list(parameters)[: len(spec.args)] == list(spec.args), spec.hook
        assert {"run_id", "parent_run_id", "model", "timestamp"} <= set(parameters), spec.hook


def test_slots_are_arguments_then_context() -> None:
    llm_start = EVENTS[0]
    assert slot_names(llm_start) == ("prompt", "run_id", "parent_run_id", "model")
    tool_end = next(spec for spec in EVENTS if spec.name == "tool_end")
    assert slot_names(tool_end) == ("tool_name", "tool_output", "run_id", "parent_run_id")
