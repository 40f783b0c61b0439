"""Registration: decide once, per callback and event, whether and how the callback is called.

Both backends consume the ``Registration`` built here, so calling conventions are worked out in one place.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import CallbackConfigError
from ..events import EVENTS, EventSpec
from .base import BaseCallback
from .native import NativeSinkCallback

_POSITIONAL_KINDS = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def slot_names(spec: EventSpec) -> tuple[str, ...]:
    """The values an event carries, in order: its arguments, then its context keywords."""
    context = ("run_id", "parent_run_id", "model") if spec.has_model else ("run_id", "parent_run_id")
    return spec.args + context


@dataclass(frozen=True)
class HookPlan:
    """How to call one Python hook: ``method(*[slots[i] for i in positional_slots], **{name: slots[i]})``."""

    method: Callable[..., Any]
    positional_slots: tuple[int, ...]
    keyword_names: tuple[str, ...]
    keyword_slots: tuple[int, ...]
    takes_extra: bool
    """Whether extra keywords given to the event reach this hook (it has ``**kwargs``)."""
    is_async: bool
    raise_error: bool
    label: str


@dataclass
class EventRegistration:
    sinks: list[Any] = field(default_factory=list)
    """Native sink cores (metrics, JSONL) that handle this event without calling Python."""
    hooks: list[HookPlan] = field(default_factory=list)


def _base_function(name: str) -> Any:
    return getattr(BaseCallback, name)


def _overridden_hook(callback: Any, spec: EventSpec) -> Callable[..., Any] | None:
    method = getattr(callback, spec.hook, None)
    if method is None or not callable(method):
        return None
    if getattr(method, "__func__", None) is _base_function(spec.hook):
        return None
    return method


def plan_hook(callback: Any, spec: EventSpec, method: Callable[..., Any]) -> HookPlan:
    """Work out the calling convention of ``method`` for ``spec`` (raises CallbackConfigError if impossible)."""
    label = f"{type(callback).__qualname__}.{spec.hook}"
    try:
        parameters = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError) as exc:
        raise CallbackConfigError(f"cannot read the signature of {label}: {exc}; define it as a plain method") from exc
    slots = slot_names(spec)
    takes_extra = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    takes_varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters)
    positional_params = [p for p in parameters if p.kind in _POSITIONAL_KINDS]

    named_slots = {p.name for p in parameters if p.kind in _KEYWORD_KINDS and p.name in slots}
    unclaimed_args = [name for name in spec.args if name not in named_slots]
    renamed = [p for p in positional_params if p.name not in slots]
    # Renamed positional parameters take the event's unclaimed arguments from the end: the last argument
    # is each event's payload, so ``on_tool_end(self, output)`` receives the tool output.
    renamed_targets = dict(zip((p.name for p in renamed), unclaimed_args[len(unclaimed_args) - len(renamed):]))
    if len(renamed) > len(unclaimed_args):
        surplus = [p for p in renamed[len(unclaimed_args):] if p.default is inspect.Parameter.empty]
        if surplus:
            raise CallbackConfigError(
                f"{label} has positional parameters {[p.name for p in surplus]} that the {spec.name!r} event "
                f"cannot fill; it provides {list(spec.args)} and the keywords {list(slots[len(spec.args):])}"
            )
        renamed_targets = dict(zip((p.name for p in renamed), unclaimed_args))

    positional_slots: list[int] = []
    passed: set[str] = set()
    for param in positional_params:
        slot = param.name if param.name in slots else renamed_targets.get(param.name)
        if slot is None:
            break
        positional_slots.append(slots.index(slot))
        passed.add(slot)
    if takes_varargs and len(positional_slots) == len(positional_params):
        for name in spec.args:
            if name not in passed and name not in named_slots:
                positional_slots.append(slots.index(name))
                passed.add(name)

    used_params = {p.name for p in positional_params[: len(positional_slots)]}
    keyword_names: list[str] = []
    for name in slots:
        if name in passed:
            continue
        if takes_extra or (name in named_slots and name not in used_params):
            keyword_names.append(name)
    missing = [
        p.name
        for p in parameters
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty and p.name not in slots
    ]
    if missing:
        raise CallbackConfigError(
            f"{label} requires keyword-only parameters {missing} that the {spec.name!r} event never passes; "
            f"give them defaults or accept **kwargs"
        )
    return HookPlan(
        method=method,
        positional_slots=tuple(positional_slots),
        keyword_names=tuple(keyword_names),
        keyword_slots=tuple(slots.index(name) for name in keyword_names),
        takes_extra=takes_extra,
        is_async=inspect.iscoroutinefunction(method),
        raise_error=bool(getattr(callback, "raise_error", False)),
        label=label,
    )


def register(callbacks: list[Any]) -> list[EventRegistration]:
    """One ``EventRegistration`` per event of the catalogue, in catalogue order."""
    registrations = [EventRegistration() for _ in EVENTS]
    for callback in callbacks:
        for spec, registration in zip(EVENTS, registrations):
            method = _overridden_hook(callback, spec)
            if method is None:
                continue
            if isinstance(callback, NativeSinkCallback) and getattr(method, "__func__", None) is getattr(
                NativeSinkCallback, spec.hook
            ):
                if spec.name in callback.native_events:
                    registration.sinks.append(callback.core)
                continue
            registration.hooks.append(plan_hook(callback, spec, method))
    return registrations
