"""Type stub of the native module built from `rust/` (checked against the binary by tests/test_core_stub.py)."""

from collections.abc import Callable, Sequence
from typing import Any, Final

from .callbacks._registration import HookPlan

EVENT_CATALOGUE: Final[tuple[tuple[str, tuple[str, ...], tuple[str, ...], bool], ...]]

def now() -> float: ...
def add_secret(value: str) -> None: ...
def redact(text: str) -> str: ...

class Dispatcher:
    def __new__(
        cls,
        report_failure: Callable[[str, str, BaseException], None],
        run_async: Callable[[str, list[tuple[Any, str, bool]]], None],
    ) -> Dispatcher: ...
    def set_registration(
        self, registrations: list[tuple[list[Any], list[HookPlan]]], error_counters: list[Any]
    ) -> None: ...
    def hook_failed(self, label: str, event: str, error: BaseException) -> None: ...
    def event_method(self, event: str) -> Callable[..., None]: ...
    @property
    def handler_errors(self) -> int: ...

class MetricsSink:
    def __new__(
        cls,
        prices: Sequence[tuple[str, float, float]],
        max_open_runs: int,
        cached_prompt_prices: Sequence[tuple[str, float]] = (),
    ) -> MetricsSink: ...
    def handle(
        self,
        event: str,
        args: Sequence[Any],
        run_id: Any,
        parent_run_id: Any,
        model: str | None,
        timestamp: float | None,
        extra: dict[str, Any] | None,
    ) -> None: ...
    def snapshot(self) -> dict[str, Any]: ...
    def reset(self) -> None: ...
    def handler_error(self) -> None: ...
    def dropped(self, count: int) -> None: ...
    def lost(self, count: int) -> None: ...
    def rejected(self) -> None: ...

class JsonlSink:
    def __new__(
        cls,
        path: str,
        include_prompts: bool,
        include_responses: bool,
        max_field_chars: int,
        flush_interval: float,
        buffer_bytes: int,
        max_pending_bytes: int,
        block_when_full: bool,
        close_timeout: float = 5.0,
    ) -> JsonlSink: ...
    def handle(
        self,
        event: str,
        args: Sequence[Any],
        run_id: Any,
        parent_run_id: Any,
        model: str | None,
        timestamp: float | None,
        extra: dict[str, Any] | None,
    ) -> None: ...
    def flush(self, timeout: float | None = None) -> None: ...
    def close(self) -> None: ...
    def reopen_after_fork(self) -> None: ...
    @property
    def dropped(self) -> int: ...
    @property
    def lost(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    @property
    def path(self) -> str: ...
