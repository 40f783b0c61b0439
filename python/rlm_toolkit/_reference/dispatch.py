"""Pure-Python fan-out: the reference the Rust ``Dispatcher`` is tested against."""

from __future__ import annotations

import inspect
from typing import Any, Callable

from ..callbacks._async import PendingHook
from ..callbacks._registration import HookPlan, slot_names
from ..errors import InvalidEventError, LogClosedError, LogFileError
from ..events import EVENTS, EventSpec
from .clock import now
from .records import checked_timestamp

FailureReporter = Callable[[str, str, BaseException], None]

_CONTEXT_NAMES: list[tuple[str, ...]] = [slot_names(spec)[len(spec.args):] for spec in EVENTS]
"""Per event, the names of its slots after the arguments: context keywords, then its own keywords."""


class Dispatcher:
    def __init__(self, report_failure: FailureReporter, run_async: Callable[[str, list[PendingHook]], None]) -> None:
        self._report_failure = report_failure
        self._run_async = run_async
        self._events: list[tuple[list[Any], list[HookPlan]]] = [([], []) for _ in EVENTS]
        self._error_counters: list[Any] = []
        self.handler_errors = 0

    def set_registration(self, registrations: list[tuple[list[Any], list[HookPlan]]], error_counters: list[Any]) -> None:
        self._events = [(list(sinks), list(hooks)) for sinks, hooks in registrations]
        self._error_counters = list(error_counters)

    def hook_failed(self, label: str, event: str, error: BaseException) -> None:
        self.handler_errors += 1
        for metrics in self._error_counters:
            metrics.handler_error()
        self._report_failure(label, event, error)

    def _report_news(self, sink: Any, event: str, reason: str | None, lost: int, dropped: int) -> None:
        """Counts what a log lost or dropped; a write error is logged, counted and fired as ``on_error``."""
        for metrics in self._error_counters:
            if dropped:
                metrics.dropped(dropped)
            if lost:
                metrics.lost(lost)
        if reason is not None:
            error = LogFileError(f"writing log file {sink.path!r} failed: {reason}")
            self.hook_failed(f"FileLogCallback({sink.path})", event, error)
            self.on_error(error)  # type: ignore[attr-defined]

    def _fire(self, index: int, spec: EventSpec, args: tuple[Any, ...], context: tuple[Any, ...],
              timestamp: float | None, extra: dict[str, Any]) -> None:
        """``context``: the values of ``slot_names(spec)`` after the arguments."""
        sinks, hooks = self._events[index]
        if sinks:
            ts = now() if timestamp is None else timestamp
            given = {name: value for name, value in zip(_CONTEXT_NAMES[index], context) if value is not None}
            run_id, parent_run_id, model = given.pop("run_id", None), given.pop("parent_run_id", None), given.pop("model", None)
            handled_extra = {**extra, **given} or None
            for sink in sinks:
                try:
                    sink.handle(spec.name, args, run_id, parent_run_id, model, ts, handled_extra)
                except LogClosedError as error:  # a closed log never silences the other sinks and hooks
                    self.hook_failed(f"FileLogCallback({sink.path})", spec.name, error)
                    continue
                announce = getattr(sink, "announce", None)
                news = announce() if announce is not None else None
                if news is not None:
                    self._report_news(sink, spec.name, *news)
        if not hooks:
            return
        slots = args + context
        pending: list[PendingHook] = []
        for hook in hooks:
            keywords = {name: slots[slot]
                        for position, (name, slot) in enumerate(zip(hook.keyword_names, hook.keyword_slots))
                        if position not in hook.passed_when_given or slots[slot] is not None}
            if extra and hook.takes_extra:
                keywords.update(extra)
            try:
                result = hook.method(*[slots[slot] for slot in hook.positional_slots], **keywords)
            except Exception as error:
                if hook.raise_error:
                    raise
                self.hook_failed(hook.label, spec.name, error)
                continue
            if hook.is_async:
                pending.append((result, hook.label, hook.raise_error))
        if pending:
            self._run_async(spec.name, pending)


def _event_method(index: int, spec: EventSpec) -> Callable[..., None]:
    arity = len(spec.args)
    context_names = _CONTEXT_NAMES[index]

    def fire(self: Dispatcher, *args: Any, run_id: Any = None, parent_run_id: Any = None, model: str | None = None,
             tags: Any = None, metadata: Any = None, timestamp: float | None = None, **extra: Any) -> None:
        if len(args) > arity:
            raise TypeError(f"{spec.hook}() takes {arity} positional arguments {spec.args}, got {len(args)}")
        for name in spec.args[:len(args)]:
            if name in extra:
                raise TypeError(f"{spec.hook}() got multiple values for argument {name!r}")
        for name in spec.args[len(args):]:
            if name not in extra:
                raise TypeError(f"{spec.hook}() missing required argument {name!r}")
            args += (extra.pop(name),)
        if model is not None and not isinstance(model, str):
            raise TypeError(f"{spec.hook}(): model must be a str or None")
        try:
            checked = checked_timestamp(spec.hook, timestamp)
        except (InvalidEventError, TypeError):
            for metrics in self._error_counters:
                metrics.rejected()
            raise
        given = {"run_id": run_id, "parent_run_id": parent_run_id, "model": model, "tags": tags, "metadata": metadata}
        given.update((name, extra.pop(name, None)) for name in spec.keywords)
        self._fire(index, spec, args, tuple(given[name] for name in context_names), checked, extra)

    fire.__name__ = fire.__qualname__ = spec.hook
    keyword = inspect.Parameter.KEYWORD_ONLY
    fire.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in spec.args]
        + [inspect.Parameter(name, keyword, default=None)
           for name in ("run_id", "parent_run_id", "model", "tags", "metadata", *spec.keywords, "timestamp")]
        + [inspect.Parameter("extra", inspect.Parameter.VAR_KEYWORD)]
    )
    return fire


for _index, _spec in enumerate(EVENTS):
    setattr(Dispatcher, _spec.hook, _event_method(_index, _spec))
