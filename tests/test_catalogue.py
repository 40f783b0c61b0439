"""The event catalogue (``events.toml``) is the one place events are declared: the Rust tables, the hooks
of BaseCallback and both backends' managers must agree with it.

``python tests/catalogue_codegen.py`` regenerates the hooks of ``callbacks/base.py`` from the table.
"""

from __future__ import annotations

import inspect

import rlm_toolkit._core as core
from rlm_toolkit.callbacks import AsyncBaseCallback, BaseCallback, CallbackManager
from rlm_toolkit.callbacks._registration import LLM_ERROR_HOOK, slot_names
from rlm_toolkit.events import EVENTS

import catalogue_codegen
from catalogue_codegen import BASE_MODULE, generated_blocks


def test_rust_enum_matches_catalogue() -> None:
    assert core.EVENT_CATALOGUE == tuple((s.name, s.args, s.fields, s.has_model) for s in EVENTS)


def test_base_module_holds_the_hooks_generated_from_the_catalogue() -> None:
    source = BASE_MODULE.read_text(encoding="utf-8")
    assert source.splitlines() == generated_blocks(source), "run `python tests/catalogue_codegen.py`"


def test_an_event_added_to_the_table_gets_its_hooks(monkeypatch) -> None:
    import rlm_toolkit.events as events

    added = events.EventSpec("cache_hit", ("key",), ("key",), False, (), ("str",), "When a cached answer is used.")
    monkeypatch.setattr(events, "EVENTS", (*EVENTS, added))
    monkeypatch.setattr(catalogue_codegen, "EVENTS", (*EVENTS, added))
    generated = "\n".join(generated_blocks(BASE_MODULE.read_text(encoding="utf-8")))
    assert generated.count("def on_cache_hit(self, key: str, **kwargs: Any) -> Awaitable[None] | None:") == 1


def test_async_base_callback_shares_the_no_op_hooks_at_run_time() -> None:
    for spec in EVENTS:
        assert getattr(AsyncBaseCallback, spec.hook) is getattr(BaseCallback, spec.hook)


def test_base_callback_hooks_match_catalogue() -> None:
    hooks = {name for name in vars(BaseCallback) if name.startswith("on_")}
    # Besides the generated hooks, upstream rlm-toolkit's on_llm_error (part of the error event).
    assert hooks == {spec.hook for spec in EVENTS} | {LLM_ERROR_HOOK}
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


def test_slots_are_arguments_then_context_then_event_keywords() -> None:
    llm_start = EVENTS[0]
    assert slot_names(llm_start) == ("prompt", "run_id", "parent_run_id", "model", "tags", "metadata")
    tool_end = next(spec for spec in EVENTS if spec.name == "tool_end")
    assert slot_names(tool_end) == ("tool_name", "tool_output", "run_id", "parent_run_id", "tags", "metadata")
    llm_end = next(spec for spec in EVENTS if spec.name == "llm_end")
    assert slot_names(llm_end) == ("response", "run_id", "parent_run_id", "model", "tags", "metadata", "ttft_ms")
