"""Registration: decide once, per callback and event, whether and how the callback is called.

Both backends consume the ``Registration`` built here, so calling conventions are worked out in one place.

Registration also warns (``CallbackWarning``, once per class and problem, pointing at the caller's line)
about a public method named ``on_...`` that is neither a hook nor a method of a built-in callback (a
misspelt hook, never called), and about a hook that takes none of its event's arguments.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import os
import sys
import warnings
import weakref
from dataclasses import dataclass, field, replace
from types import FrameType
from typing import Any, Callable

from ..errors import CallbackConfigError, CallbackWarning, LLMCallError
from ..events import CONTEXT_KEYWORDS, EVENTS, EVENTS_BY_NAME, RUN_CONTEXT_KEYWORDS, EventSpec
from .base import BaseCallback
from .native import NativeSinkCallback

LLM_ERROR_HOOK = "on_llm_error"
"""Upstream rlm-toolkit's hook for failed LLM calls: planned on the ``error`` event, called for an
``LLMCallError`` only."""

HOOK_NAMES: tuple[str, ...] = (*(spec.hook for spec in EVENTS), LLM_ERROR_HOOK)
"""Every method name that registration treats as a hook."""

_POSITIONAL_KINDS = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def slot_names(spec: EventSpec) -> tuple[str, ...]:
    """The values an event carries, in order: its arguments, its context keywords, then its own keywords."""
    context = tuple(name for name in CONTEXT_KEYWORDS if spec.has_model or name != "model")
    return spec.args + context + spec.keywords


@dataclass(frozen=True)
class HookPlan:
    """How to call one Python hook: ``method(*[slots[i] for i in positional_slots], **{name: slots[i]})``."""

    method: Callable[..., Any]
    positional_slots: tuple[int, ...]
    keyword_names: tuple[str, ...]
    keyword_slots: tuple[int, ...]
    passed_when_given: tuple[int, ...]
    """Positions in ``keyword_names`` of the keywords passed only when their value is not None: ``tags``,
    ``metadata`` and the event's own keywords, for a hook that takes them through ``**kwargs`` alone."""
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


def _overridden_hook(callback: Any, hook: str) -> Callable[..., Any] | None:
    method: object = getattr(callback, hook, None)
    if method is None or not callable(method):
        return None
    if getattr(method, "__func__", None) is _base_function(hook):
        return None
    return method


def plan_hook(callback: Any, spec: EventSpec, method: Callable[..., Any], hook: str | None = None) -> HookPlan:
    """Work out the calling convention of ``method`` (the callback's ``hook``, by default the event's own)
    for ``spec`` (raises CallbackConfigError if impossible)."""
    label = f"{type(callback).__qualname__}.{hook or spec.hook}"
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
    given_none: dict[str, None] = {}
    if len(renamed) > len(unclaimed_args):
        surplus = [p for p in renamed[len(unclaimed_args):] if p.default is inspect.Parameter.empty]
        # One extra required parameter is upstream rlm-toolkit's engine style, ``on_error(self, error,
        # context)``: it receives None. More than one means the hook expects values no event carries.
        if len(surplus) > 1 or any(p.kind is inspect.Parameter.POSITIONAL_ONLY for p in surplus):
            raise CallbackConfigError(
                f"{label} has positional parameters {[p.name for p in surplus]} that the {spec.name!r} event "
                f"cannot fill; it provides {list(spec.args)} and the keywords {list(slots[len(spec.args):])}; "
                "give them defaults"
            )
        given_none = {p.name: None for p in surplus}
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
        method=functools.partial(method, **given_none) if given_none else method,
        positional_slots=tuple(positional_slots),
        keyword_names=tuple(keyword_names),
        keyword_slots=tuple(slots.index(name) for name in keyword_names),
        passed_when_given=tuple(
            position for position, name in enumerate(keyword_names)
            if name in (*RUN_CONTEXT_KEYWORDS, *spec.keywords) and name not in named_slots
        ),
        takes_extra=takes_extra,
        is_async=inspect.iscoroutinefunction(method),
        raise_error=bool(getattr(callback, "raise_error", False)),
        label=label,
    )


def _for_llm_errors_only(plan: HookPlan) -> HookPlan:
    """``plan`` on the ``error`` event, called only when the error is an ``LLMCallError`` (the error is
    passed first, to the guard, whatever the hook itself takes)."""
    method = plan.method
    guard: Callable[..., Any]
    if plan.is_async:
        async def guard(error: BaseException, /, *args: Any, **kwargs: Any) -> None:
            if isinstance(error, LLMCallError):
                await method(*args, **kwargs)
    else:
        def guard(error: BaseException, /, *args: Any, **kwargs: Any) -> None:
            if isinstance(error, LLMCallError):
                method(*args, **kwargs)
    error_slot = slot_names(EVENTS_BY_NAME["error"]).index("error")
    return replace(plan, method=guard, positional_slots=(error_slot, *plan.positional_slots))


def _overridden_llm_error_hook(callback: Any) -> Callable[..., Any] | None:
    from .manager import CallbackManager  # imported here: the manager module imports this one

    # A manager's ``on_llm_error`` fires its own ``error`` event, which it receives as ``on_error`` anyway.
    if isinstance(callback, CallbackManager):
        return None
    return _overridden_hook(callback, LLM_ERROR_HOOK)


_PACKAGE_PREFIX = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_warned: weakref.WeakKeyDictionary[type, set[str]] = weakref.WeakKeyDictionary()
"""Per callback class, the hooks already checked (and warned about), and ``_METHOD_NAMES`` once its method
names were."""
_METHOD_NAMES = "<method names>"


def _first_time(cls: type, topic: str) -> bool:
    topics = _warned.setdefault(cls, set())
    if topic in topics:
        return False
    topics.add(topic)
    return True


def _warn(message: str) -> None:
    """Warn at the first frame outside rlm_toolkit: the user's line that registered the callback."""
    frame: FrameType | None = sys._getframe(0)
    stacklevel = 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_PREFIX):
        frame = frame.f_back
        stacklevel += 1
    warnings.warn(message, CallbackWarning, stacklevel=stacklevel)


def _is_built_in(cls: type, name: str) -> bool:
    """Whether a class of rlm_toolkit in ``cls``'s MRO defines ``name`` (``StreamingCallback.on_token``)."""
    return any(name in vars(base) for base in cls.__mro__ if base.__module__.partition(".")[0] == "rlm_toolkit")


def _warn_about_misspelt_hooks(cls: type) -> None:
    names = [name for name in dir(cls) if name.startswith("on_") and callable(inspect.getattr_static(cls, name, None))]
    known = [name for name in names if name in HOOK_NAMES or _is_built_in(cls, name)]
    for name in names:
        if name in known:
            continue
        nearest = difflib.get_close_matches(name, [*HOOK_NAMES, *known], n=1)
        hint = f"did you mean {nearest[0]}?" if nearest else "no event of rlm_toolkit.events.EVENTS has that name."
        _warn(f"{cls.__qualname__}.{name} is not an event hook, so it is never called; {hint} "
              "(Start its name with '_' if it is not meant to be a hook.)")


def _warn_if_it_takes_no_argument(spec: EventSpec, plan: HookPlan, hook: str) -> None:
    slots = slot_names(spec)
    received = [slots[slot] for slot in (*plan.positional_slots, *plan.keyword_slots)]
    if not spec.args or plan.takes_extra or any(name in spec.args for name in received):
        return
    arguments = ", ".join(spec.args)
    called_with = f"only {', '.join(f'{name}=' for name in received)}" if received else "no arguments"
    _warn(f"{plan.label} takes none of the {spec.name!r} event's arguments ({arguments}), so it is called with "
          f"{called_with}; declare it as def {hook}(self, {arguments}, **kwargs) to receive them")


def _checked_plan(callback: Any, spec: EventSpec, method: Callable[..., Any], hook: str) -> HookPlan:
    plan = plan_hook(callback, spec, method, hook)
    if _first_time(type(callback), hook):
        _warn_if_it_takes_no_argument(spec, plan, hook)
    return plan


def _is_native_forwarder(callback: Any, spec: EventSpec, method: Callable[..., Any]) -> bool:
    """Whether ``method`` is a native sink's own hook, which hands the event to its core without Python."""
    return isinstance(callback, NativeSinkCallback) and getattr(method, "__func__", None) is getattr(
        NativeSinkCallback, spec.hook
    )


def register(callbacks: list[Any]) -> list[EventRegistration]:
    """One ``EventRegistration`` per event of the catalogue, in catalogue order."""
    registrations = [EventRegistration() for _ in EVENTS]
    for callback in callbacks:
        if _first_time(type(callback), _METHOD_NAMES):
            _warn_about_misspelt_hooks(type(callback))
        for spec, registration in zip(EVENTS, registrations):
            method = _overridden_hook(callback, spec.hook)
            if method is not None and _is_native_forwarder(callback, spec, method):
                if spec.name in callback.native_events:
                    registration.sinks.append(callback.core)
            elif method is not None:
                registration.hooks.append(_checked_plan(callback, spec, method, spec.hook))
            if spec.name == "error" and (llm_error_hook := _overridden_llm_error_hook(callback)) is not None:
                plan = _checked_plan(callback, spec, llm_error_hook, LLM_ERROR_HOOK)
                registration.hooks.append(_for_llm_errors_only(plan))
    return registrations
