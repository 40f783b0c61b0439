"""Registration warns (``CallbackWarning``) about hooks that would not be called as written: a method named
like a hook that matches no event, and a hook that takes none of its event's arguments. Runs per backend."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest

import rlm_toolkit
from rlm_toolkit import CallbackConfigError, CallbackWarning, RLMToolkitError
from rlm_toolkit.callbacks import (
    AsyncBaseCallback,
    BaseCallback,
    CallbackManager,
    ConsoleCallback,
    FileCallback,
    FileLogCallback,
    LoggingCallback,
    MetricsCallback,
    StreamingCallback,
)


def callback_warnings(register: Callable[[], Any]) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        register()
    return [warning for warning in caught if issubclass(warning.category, CallbackWarning)]


def messages(register: Callable[[], Any]) -> list[str]:
    return [str(warning.message) for warning in callback_warnings(register)]


def test_callback_warning_is_exported_and_is_a_user_warning() -> None:
    assert rlm_toolkit.CallbackWarning is CallbackWarning
    assert issubclass(CallbackWarning, RLMToolkitError) and issubclass(CallbackWarning, UserWarning)


# -- misspelt hooks ---------------------------------------------------------------------------------------


def test_a_misspelt_hook_is_named_with_its_class_and_the_nearest_hook(backend: str) -> None:
    class Typos(BaseCallback):
        def on_llm_starts(self, prompt: str, **kwargs: Any) -> None:
            pass

        def on_tool_finish(self, tool_name: str, tool_output: Any, **kwargs: Any) -> None:
            pass

        def on_llm_stat(self, prompt: str) -> None:
            pass

        def on_button_click(self) -> None:
            pass

        def _on_helper(self) -> None:
            pass

    prefix = Typos.__qualname__
    assert messages(lambda: CallbackManager([Typos()])) == [
        f"{prefix}.{name} is not an event hook, so it is never called; {hint} "
        "(Start its name with '_' if it is not meant to be a hook.)"
        for name, hint in [
            ("on_button_click", "no event of rlm_toolkit.events.EVENTS has that name."),
            ("on_llm_starts", "did you mean on_llm_start?"),
            ("on_llm_stat", "did you mean on_llm_start?"),
            ("on_tool_finish", "did you mean on_tool_end?"),
        ]
    ]


def test_the_warning_points_at_the_line_that_registers_and_comes_once_per_class(backend: str) -> None:
    class Typo(BaseCallback):
        def on_eror(self, error: BaseException, **kwargs: Any) -> None:
            pass

    caught = callback_warnings(lambda: CallbackManager([Typo(), Typo()]))
    assert [(warning.filename, str(warning.message).split(" is ")[0]) for warning in caught] == [
        (__file__, f"{Typo.__qualname__}.on_eror")]
    assert "did you mean on_error?" in str(caught[0].message)
    manager = CallbackManager()
    assert messages(lambda: manager.add(Typo())) == []


def test_only_the_misspelt_hook_warns_among_real_hooks_and_built_ins(backend: str, tmp_path: Any) -> None:
    class Typo(BaseCallback):
        def on_llm_ned(self, response: Any, **kwargs: Any) -> None:
            pass

    class Upstream(BaseCallback):
        def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
            pass

        def on_llm_end(self, response: str, **kwargs: Any) -> None:
            pass

        def on_llm_error(self, error: BaseException, **kwargs: Any) -> None:
            pass

    class Tokens(StreamingCallback):
        def on_token(self, token: str) -> None:
            pass

    class Async(AsyncBaseCallback):
        async def on_error(self, error: BaseException, **kwargs: Any) -> None:
            pass

    def register_all() -> None:
        with FileLogCallback(tmp_path / "log.jsonl") as log:
            inner = CallbackManager([MetricsCallback()])
            CallbackManager([Upstream(), Tokens(), StreamingCallback(print), Async(), ConsoleCallback(), log,
                             LoggingCallback(), FileCallback(tmp_path / "events.jsonl"), inner, Typo()])

    assert [message.split(";")[0] for message in messages(register_all)] == [
        f"{Typo.__qualname__}.on_llm_ned is not an event hook, so it is never called"]


# -- hooks that take none of their event's arguments ----------------------------------------------------


def test_a_hook_that_takes_no_event_argument_warns_and_is_still_called(backend: str) -> None:
    calls: list[Any] = []

    class Bare(BaseCallback):
        def on_llm_start(self) -> None:
            calls.append("llm_start")

        def on_tool_start(self, *, run_id: Any) -> None:
            calls.append(("tool_start", run_id))

        def on_llm_error(self) -> None:
            calls.append("llm_error")

    caught: list[CallbackManager] = []
    prefix = Bare.__qualname__
    assert messages(lambda: caught.append(CallbackManager([Bare()]))) == [
        f"{prefix}.on_llm_start takes none of the 'llm_start' event's arguments (prompt), so it is called with no "
        "arguments; declare it as def on_llm_start(self, prompt, **kwargs) to receive them",
        f"{prefix}.on_tool_start takes none of the 'tool_start' event's arguments (tool_name, tool_input), so it is "
        "called with only run_id=; declare it as def on_tool_start(self, tool_name, tool_input, **kwargs) to "
        "receive them",
        f"{prefix}.on_llm_error takes none of the 'error' event's arguments (error), so it is called with no "
        "arguments; declare it as def on_llm_error(self, error, **kwargs) to receive them",
    ]
    manager = caught[0]
    manager.on_llm_start("p")
    manager.on_tool_start("search", {}, run_id="t1")
    manager.on_error(rlm_toolkit.LLMCallError("failed"))
    manager.on_error(ValueError("a tool failed"))
    assert calls == ["llm_start", ("tool_start", "t1"), "llm_error"]
    assert manager.handler_errors == 0


def test_hooks_that_take_some_argument_do_not_warn(backend: str) -> None:
    class Partial(BaseCallback):
        def on_tool_end(self, output: Any) -> None:
            pass

        def on_retry(self, error: BaseException) -> None:
            pass

        def on_llm_start(self, **kwargs: Any) -> None:
            pass

        def on_llm_end(self, *args: Any) -> None:
            pass

        def on_memory_recall(self, *, query: str) -> None:
            pass

        def on_error(self, error: BaseException, context: Any) -> None:
            pass

    assert messages(lambda: CallbackManager([Partial()])) == []


def test_a_registration_that_fails_leaves_the_manager_as_it_was(backend: str) -> None:
    class TooMany(BaseCallback):
        def on_llm_start(self, prompt: str, history: list[str], budget: int) -> None:
            pass

    class Counts(BaseCallback):
        def __init__(self) -> None:
            self.prompts: list[str] = []

        def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
            self.prompts.append(prompt)

    counts = Counts()
    manager = CallbackManager([counts])
    with pytest.raises(CallbackConfigError, match="cannot fill"):
        manager.add(TooMany())
    assert manager.callbacks == (counts,)
    manager.on_llm_start("p")
    assert counts.prompts == ["p"]
