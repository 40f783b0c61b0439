"""``CallbackManager``: fans events out to callbacks through the chosen backend (Rust by default)."""

from __future__ import annotations

import logging
import math
import numbers
import traceback
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeAlias

from .. import _backend
from ..errors import CallbackConfigError, LLMCallError
from ..events import EVENTS
from ..secrets import redact
from ._async import AsyncHookRunner
from ._pickling import PickledByConfiguration
from ._registration import HOOK_NAMES, register
from .base import BaseCallback
from .native import MetricsCallback

if TYPE_CHECKING:
    from .. import _core
    from .._reference import dispatch as _reference_dispatch

    _Dispatcher: TypeAlias = _core.Dispatcher | _reference_dispatch.Dispatcher
    """The ``Dispatcher`` of either backend."""

_TOKEN_EVENT_INDEX = [spec.name for spec in EVENTS].index("llm_new_token")

logger = logging.getLogger("rlm_toolkit")


def _report_hook_failure(label: str, event: str, error: BaseException) -> None:
    """Log a hook's failure with its traceback, both redacted: the error's text and the traceback (its
    chained errors too) often quote the event's text, which may hold a secret. The traceback is formatted
    here and logged as text, so no handler formats the raw exception."""
    try:
        described = repr(error)
        details = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    except Exception:  # an exception whose repr or str raises: its type and traceback only
        described = type(error).__name__
        details = "".join(traceback.format_tb(error.__traceback__))
    message = f"callback {label} raised while handling {event!r}: {described}\n{details.rstrip()}"
    logger.error("%s", redact(message))


def _checked_async_timeout(async_timeout: object) -> float | None:
    if async_timeout is None:
        return None
    # Compared with the operators that numbers.Real declares (< and <=); NaN fails the first.
    if (isinstance(async_timeout, numbers.Real) and not isinstance(async_timeout, bool)
            and async_timeout < math.inf and not async_timeout <= 0):
        return float(async_timeout)
    raise CallbackConfigError(
        f"async_timeout must be None (no timeout) or a finite number of seconds above 0, got {async_timeout!r}"
    )


def _has_a_hook(candidate: Any) -> bool:
    return any(callable(getattr(candidate, hook, None)) for hook in HOOK_NAMES)


def _check_is_callback(candidate: Any) -> None:
    if isinstance(candidate, type):
        raise CallbackConfigError(f"{candidate.__qualname__} is a class; register an instance: {candidate.__qualname__}()")
    if not _has_a_hook(candidate):
        raise CallbackConfigError(
            f"{candidate!r} is not a callback: it has none of the hooks {', '.join(HOOK_NAMES)}; "
            "subclass rlm_toolkit.callbacks.BaseCallback and override the hooks you need"
        )


def _callback_list(callbacks: Any) -> list[Any]:
    """``callbacks`` as a list: None, one callback (a manager too), or an iterable of callbacks."""
    if callbacks is None:
        return []
    if _has_a_hook(callbacks) and not isinstance(callbacks, type):
        return [callbacks]
    if isinstance(callbacks, (str, bytes)) or not isinstance(callbacks, Iterable):
        raise CallbackConfigError(
            f"callbacks must be a callback or a list of callbacks, not {type(callbacks).__name__} {callbacks!r}"
        )
    listed = list(callbacks)
    for callback in listed:
        _check_is_callback(callback)
    return listed


class CallbackManager(PickledByConfiguration, BaseCallback):
    """Calls each registered callback's hooks for every event fired through it.

    Has the ``on_*`` methods of ``BaseCallback`` (so a manager can itself be registered as a callback);
    each takes the event's arguments plus the keywords ``run_id``, ``parent_run_id``, ``model`` (LLM
    events), ``timestamp`` (epoch seconds, default now) and any extras, which reach hooks with ``**kwargs``.

    Which callbacks implement which event, and how each hook is called, is decided when callbacks are
    added; a hook that is not overridden is never called. A hook that raises is logged on the
    ``rlm_toolkit`` logger and counted in ``handler_errors`` (and in registered ``MetricsCallback``
    metrics) while the other hooks still run, unless its callback sets ``raise_error = True``.

    Async hooks (``async def``) run concurrently. Fired from sync code, or from a sync entry point of the RLM
    (``run``, ``stream``, ``batch``) even inside a running event loop, an event's async hooks have completed
    when the event call returns; they run on a background event loop of this manager's own. Fired directly
    inside a running event loop, they are scheduled on that loop and ``await manager.wait_pending()`` awaits
    them (``arun``/``astream``/``abatch`` do). A hook still running after ``async_timeout`` seconds (None: no
    limit) is cancelled, and counted and logged as a failure; so is a hook that raises ``CancelledError``
    itself. A sync caller never waits longer than ``async_timeout``, even for a hook that blocks its thread.

    Pickled (to send it to a worker process), a manager travels as its configuration: the callbacks it has
    then (each pickled as itself: the built-in ones as their options), its backend and ``async_timeout``;
    not its ``handler_errors`` count, pending async hooks or event loop.
    """

    __slots__ = ("_dispatcher",)
    """The dispatcher the ``on_<event>`` methods fire into (see ``_install_event_methods``)."""

    def __init__(self, callbacks: BaseCallback | Iterable[Any] | None = None, *,
                 backend: _backend.BackendName | None = None,
                 async_timeout: float | None = 30.0) -> None:
        self.backend = _backend.resolve(backend)
        self._keep_argument("backend", self.backend)
        self._callbacks: list[Any] = _callback_list(callbacks)
        self._async_hooks = AsyncHookRunner(self._async_hook_failed, _checked_async_timeout(async_timeout))
        self._dispatcher: _Dispatcher = _backend.load(self.backend).Dispatcher(_report_hook_failure, self._async_hooks)
        self._apply(self._callbacks)

    def _apply(self, callbacks: list[Any]) -> None:
        """Register ``callbacks``; they become the manager's callbacks only if registration succeeds."""
        registrations = register(callbacks)
        self._callbacks = callbacks
        self._keep_argument("callbacks", callbacks)
        self._dispatcher.set_registration(
            [(registration.sinks, registration.hooks) for registration in registrations],
            [callback.core for callback in self._callbacks if isinstance(callback, MetricsCallback)],
        )
        self._streams_tokens = bool(registrations[_TOKEN_EVENT_INDEX].hooks) or any(
            getattr(callback, "wants_token_stream", False) for callback in self._callbacks
        )

    def _async_hook_failed(self, label: str, event: str, error: BaseException) -> None:
        self._dispatcher.hook_failed(label, event, error)

    @property
    def callbacks(self) -> tuple[Any, ...]:
        return tuple(self._callbacks)

    def add(self, callback: Any) -> None:
        _check_is_callback(callback)
        self._apply([*self._callbacks, callback])

    def remove(self, callback: Any) -> None:
        """Remove ``callback``; raises ValueError if it is not registered."""
        remaining = list(self._callbacks)
        remaining.remove(callback)
        self._apply(remaining)

    def on_llm_error(self, error: LLMCallError, **kwargs: Any) -> None:
        """Fire the ``error`` event for a failed LLM call: the same as ``on_error(error, ...)``, for code
        written against upstream rlm-toolkit's hook."""
        self.on_error(error, **kwargs)

    @property
    def handler_errors(self) -> int:
        """How many times a hook raised and the error was isolated."""
        return self._dispatcher.handler_errors

    @property
    def streams_tokens(self) -> bool:
        """Whether some callback consumes streamed tokens (then LLM calls should stream)."""
        return self._streams_tokens

    async def wait_pending(self) -> None:
        """Await the async hooks scheduled by events fired inside a running event loop."""
        await self._async_hooks.wait_pending()


def _forwarding_method(hook: str) -> Callable[..., None]:
    def fire(self: CallbackManager, *args: Any, **kwargs: Any) -> None:
        getattr(self._dispatcher, hook)(*args, **kwargs)

    fire.__name__ = hook
    fire.__qualname__ = f"CallbackManager.{hook}"
    return fire


def _install_event_methods() -> None:
    """Gives ``CallbackManager`` its ``on_<event>`` methods, which fire into the instance's ``_dispatcher``:
    the native module's (they call a native dispatcher without a Python frame, and any other through its
    methods), or, where the native module is missing, methods calling the dispatcher's own."""
    try:
        from .. import _core
    except ImportError:
        for spec in EVENTS:
            setattr(CallbackManager, spec.hook, _forwarding_method(spec.hook))
        return
    _core.Dispatcher.install_event_methods(CallbackManager, "_dispatcher")


_install_event_methods()
