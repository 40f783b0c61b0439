"""Per-run options of the ``RLM`` entry points: ``callbacks=``, ``tags=`` and ``metadata=``, checked, and
merged with the RLM's defaults.

A run's own callbacks get a ``CallbackManager`` of their own, built once per call (a ``batch`` shares it
between its items), so they see only the runs of that call, whatever else runs at the same time. Its events
are fired through the RLM's manager first, then through the run's one; each counts the errors of its own hooks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .callbacks import BaseCallback, CallbackManager
from .errors import RLMConfigError
from .events import EVENTS

Tags = Iterable[str]
"""A run's tags: a list (or any iterable that is not a str) of str."""
Metadata = Mapping[str, Any]
"""A run's metadata: a dict with str keys."""


def checked_tags(tags: object, where: str, error: type[Exception] = TypeError) -> tuple[str, ...]:
    """``tags`` (None, or an iterable of str that is not itself a str) as a tuple; ``error`` otherwise."""
    if tags is None:
        return ()
    if isinstance(tags, (str, bytes)) or isinstance(tags, Mapping) or not isinstance(tags, Iterable):
        hint = "; for one tag, pass [tag]" if isinstance(tags, str) else ""
        raise error(f"{where}: tags must be a list of str, not {type(tags).__name__} {tags!r}{hint}")
    listed = tuple(tags)
    for index, tag in enumerate(listed):
        if not isinstance(tag, str):
            raise error(f"{where}: tags must be str, but tags[{index}] is {type(tag).__name__} {tag!r}")
    return listed


def checked_metadata(metadata: object, where: str, error: type[Exception] = TypeError) -> dict[str, Any]:
    """``metadata`` (None, or a mapping with str keys) as a new dict; ``error`` otherwise."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise error(f"{where}: metadata must be a dict with str keys, not {type(metadata).__name__} {metadata!r}")
    for key in metadata:
        if not isinstance(key, str):
            raise error(f"{where}: metadata keys must be str, but {key!r} is {type(key).__name__}")
    return dict(metadata)


class _JoinedCallbacks(BaseCallback):
    """Fires each event through the RLM's manager, then through the run's own one."""

    def __init__(self, rlm_callbacks: CallbackManager, run_callbacks: CallbackManager) -> None:
        self._managers = (rlm_callbacks, run_callbacks)
        for spec in EVENTS:
            setattr(self, spec.hook, _fire_through_both(getattr(rlm_callbacks, spec.hook), getattr(run_callbacks, spec.hook)))

    @property
    def streams_tokens(self) -> bool:
        return any(manager.streams_tokens for manager in self._managers)

    async def wait_pending(self) -> None:
        for manager in self._managers:
            await manager.wait_pending()


RunCallbacks = CallbackManager | _JoinedCallbacks
"""What a run fires its events through."""


def _fire_through_both(first: Any, second: Any) -> Any:
    def fire(*args: Any, **kwargs: Any) -> None:
        first(*args, **kwargs)
        second(*args, **kwargs)

    return fire


@dataclass(frozen=True, slots=True)
class RunOptions:
    """What one call of an entry point runs with: its callbacks, and its tags and metadata (the RLM's
    defaults merged with the call's own)."""

    callbacks: RunCallbacks
    """The RLM's ``CallbackManager``, or a ``_JoinedCallbacks`` when the call has callbacks of its own."""
    tags: tuple[str, ...]
    metadata: dict[str, Any]

    @classmethod
    def of_call(
        cls,
        rlm_callbacks: CallbackManager,
        default_tags: tuple[str, ...],
        default_metadata: dict[str, Any],
        method: str,
        callbacks: BaseCallback | Iterable[Any] | None,
        tags: object,
        metadata: object,
    ) -> RunOptions:
        """The options of one call of ``method``: ``tags`` after the default ones (each once), ``metadata``
        over the default one (its keys win)."""
        where = f"{method}()"
        run_tags = checked_tags(tags, where)
        merged_tags = default_tags + tuple(dict.fromkeys(tag for tag in run_tags if tag not in default_tags))
        merged_metadata = {**default_metadata, **checked_metadata(metadata, where)}
        if callbacks is None:
            return cls(rlm_callbacks, merged_tags, merged_metadata)
        run_callbacks = callbacks if isinstance(callbacks, CallbackManager) else CallbackManager(
            callbacks, backend=rlm_callbacks.backend
        )
        return cls(_JoinedCallbacks(rlm_callbacks, run_callbacks), merged_tags, merged_metadata)


def checked_defaults(tags: object, metadata: object) -> tuple[tuple[str, ...], dict[str, Any]]:
    """``RLM.from_openai``'s ``tags`` (each once, order kept) and ``metadata``, checked (``RLMConfigError``)."""
    default_tags = tuple(dict.fromkeys(checked_tags(tags, "RLM", RLMConfigError)))
    return default_tags, checked_metadata(metadata, "RLM", RLMConfigError)
