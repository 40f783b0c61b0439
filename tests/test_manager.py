"""CallbackManager: calling conventions decided at registration, isolation, async hooks. Runs per backend."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from rlm_toolkit import BackendError, CallbackConfigError, LLMResponse, Usage
from rlm_toolkit.callbacks import AsyncBaseCallback, BaseCallback, CallbackManager, MetricsCallback
from rlm_toolkit.callbacks._registration import register
from rlm_toolkit.events import EVENTS

RESPONSE = LLMResponse("answer", "gpt-4o", Usage.of(3, 4))


class PageStyle(BaseCallback):
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []

    def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
        self.calls.append(("llm_start", prompt, kwargs))

    def on_tool_end(self, output: Any, **kwargs: Any) -> None:
        self.calls.append(("tool_end", output, kwargs))

    def on_retry(self, attempt: int, max_attempts: int, error: BaseException, **kwargs: Any) -> None:
        self.calls.append(("retry", (attempt, max_attempts, error), kwargs))


def test_page_style_and_renamed_parameters(backend: str) -> None:
    handler = PageStyle()
    manager = CallbackManager([handler])
    manager.on_llm_start("hello", run_id="r1", model="gpt-4o", temperature=0.2)
    manager.on_tool_end("search", "found it", run_id="t1", parent_run_id="r1")
    error = TimeoutError("slow")
    manager.on_retry(1, 3, error, run_id="r1", model="gpt-4o")
    assert handler.calls == [
        ("llm_start", "hello", {"run_id": "r1", "parent_run_id": None, "model": "gpt-4o",
                                "temperature": 0.2}),
        ("tool_end", "found it", {"tool_name": "search", "run_id": "t1", "parent_run_id": "r1"}),
        ("retry", (1, 3, error), {"run_id": "r1", "parent_run_id": None, "model": "gpt-4o"}),
    ]


def test_keyword_only_and_exact_signatures(backend: str) -> None:
    seen: list[Any] = []

    class KeywordOnly(BaseCallback):
        def on_llm_start(self, **kwargs: Any) -> None:
            seen.append(kwargs)

    class Exact(BaseCallback):
        def on_tool_start(self, tool_name: str, tool_input: Any) -> None:
            seen.append((tool_name, tool_input))

        def on_memory_recall(self, query: str, results: list[Any], *, run_id: str) -> None:
            seen.append((query, results, run_id))

    class Swapped(BaseCallback):
        def on_tool_start(self, tool_input: Any, tool_name: str, **kwargs: Any) -> None:
            seen.append(("swapped", tool_input, tool_name))

    manager = CallbackManager([KeywordOnly(), Exact(), Swapped()])
    manager.on_llm_start("p", run_id="r", model="m")
    manager.on_tool_start("calc", {"x": 1}, run_id="t", extra_field=1)
    manager.on_memory_recall("q", ["a"], run_id="m1")
    assert seen == [
        {"prompt": "p", "run_id": "r", "parent_run_id": None, "model": "m"},
        ("calc", {"x": 1}),
        ("swapped", {"x": 1}, "calc"),
        ("q", ["a"], "m1"),
    ]


def test_event_arguments_may_be_given_by_keyword(backend: str) -> None:
    handler = PageStyle()
    manager = CallbackManager([handler])
    manager.on_llm_start(prompt="by keyword", run_id="r")
    assert handler.calls[0][1] == "by keyword"
    with pytest.raises(TypeError):
        manager.on_llm_start(run_id="r")
    with pytest.raises(TypeError):
        manager.on_llm_start("a", "b")
    with pytest.raises(TypeError):
        manager.on_llm_start("a", model=3)


CALLS_THE_EVENT_CANNOT_TAKE = {
    "missing argument": lambda manager: manager.on_llm_start(run_id="r"),
    "one positional argument too many": lambda manager: manager.on_llm_start("a", "b"),
    "two arguments of two too many": lambda manager: manager.on_tool_start("a", "b", "c"),
    "an argument by position and by name": lambda manager: manager.on_llm_start("a", prompt="b"),
    "a model that is not a str": lambda manager: manager.on_llm_start("a", model=3),
}


@pytest.mark.parametrize("call", CALLS_THE_EVENT_CANNOT_TAKE.values(), ids=CALLS_THE_EVENT_CANNOT_TAKE)
def test_a_call_the_event_cannot_take_raises_the_same_error_in_both_backends(call) -> None:
    handler = PageStyle()
    messages = []
    for backend in ("rust", "python"):
        with pytest.raises(TypeError) as raised:
            call(CallbackManager([handler], backend=backend))
        messages.append(str(raised.value))
    assert messages[0] == messages[1]
    assert handler.calls == []


def test_signature_the_event_cannot_fill_is_refused_at_registration(backend: str) -> None:
    class TooMany(BaseCallback):
        def on_llm_start(self, prompt: str, history: list[str], budget: int) -> None:
            pass

    class NeedsKeyword(BaseCallback):
        def on_llm_end(self, response: Any, *, trace: str) -> None:
            pass

    for callback in (TooMany(), NeedsKeyword()):
        with pytest.raises(CallbackConfigError, match="cannot fill|never passes"):
            CallbackManager([callback])


def test_hooks_that_are_not_overridden_are_never_called(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    inherited_calls: list[str] = []

    def recording_no_op(name: str) -> Any:
        def hook(self: Any, *args: Any, **kwargs: Any) -> None:
            inherited_calls.append(name)

        return hook

    # The base class's no-ops are replaced before registration, so a manager that registered an
    # inherited hook would call one of these.
    for spec in EVENTS:
        monkeypatch.setattr(BaseCallback, spec.hook, recording_no_op(spec.hook))
    manager = CallbackManager([PageStyle() for _ in range(16)])
    manager.on_llm_end(RESPONSE, run_id="r")
    manager.on_llm_new_token("t", run_id="r")
    manager.on_tool_start("x", {}, run_id="r")
    manager.on_memory_store("c", run_id="r")
    manager.on_error(ValueError("e"), run_id="r")
    manager.on_llm_start("p", run_id="r")
    assert inherited_calls == []
    assert manager.handler_errors == 0
    assert [len(registration.hooks) for registration in register([PageStyle()])] == [
        1 if spec.hook in ("on_llm_start", "on_tool_end", "on_retry") else 0 for spec in EVENTS
    ]


def test_a_raising_hook_is_isolated_logged_and_counted(backend: str, caplog: pytest.LogCaptureFixture) -> None:
    class Broken(BaseCallback):
        def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
            raise ValueError("broken hook")

    after = PageStyle()
    metrics = MetricsCallback()
    manager = CallbackManager([Broken(), after, metrics])
    with caplog.at_level(logging.ERROR, logger="rlm_toolkit"):
        manager.on_llm_start("p", run_id="r")
    assert len(after.calls) == 1
    assert manager.handler_errors == 1
    assert metrics.get_metrics()["handler_errors"] == 1
    [record] = [r for r in caplog.records if r.name == "rlm_toolkit"]
    assert "Broken.on_llm_start" in record.getMessage() and "llm_start" in record.getMessage()
    assert "broken hook" in record.getMessage()


def test_raise_error_propagates_and_base_exceptions_are_never_swallowed(backend: str) -> None:
    class Strict(BaseCallback):
        raise_error = True

        def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
            raise ValueError("strict")

    class Interrupting(BaseCallback):
        def on_llm_end(self, response: Any, **kwargs: Any) -> None:
            raise KeyboardInterrupt

    manager = CallbackManager([Strict(), Interrupting()])
    with pytest.raises(ValueError, match="strict"):
        manager.on_llm_start("p")
    with pytest.raises(KeyboardInterrupt):
        manager.on_llm_end(RESPONSE)
    assert manager.handler_errors == 0


class AsyncRecorder(AsyncBaseCallback):
    def __init__(self) -> None:
        self.events: list[str] = []

    async def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
        await asyncio.sleep(0.01)
        self.events.append(prompt)

    async def on_error(self, error: BaseException, **kwargs: Any) -> None:
        raise RuntimeError("async hook failed")


def test_async_hooks_complete_before_a_sync_call_returns(backend: str) -> None:
    recorder = AsyncRecorder()
    manager = CallbackManager([recorder])
    manager.on_llm_start("first")
    manager.on_llm_start("second")
    assert recorder.events == ["first", "second"]
    manager.on_error(ValueError("x"))
    assert manager.handler_errors == 1


async def test_async_hooks_run_concurrently_in_async_code(backend: str) -> None:
    recorders = [AsyncRecorder() for _ in range(20)]
    manager = CallbackManager(recorders)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for index in range(5):
        manager.on_llm_start(f"p{index}")
    await manager.wait_pending()
    # 100 hook calls of 10 ms each: awaited concurrently they take far less than a second.
    assert loop.time() - started < 0.5
    assert all(r.events == [f"p{index}" for index in range(5)] or sorted(r.events) == [f"p{i}" for i in range(5)] for r in recorders)
    manager.on_error(ValueError("x"))
    await manager.wait_pending()
    assert manager.handler_errors == 20


def test_hanging_async_hook_times_out(backend: str, caplog: pytest.LogCaptureFixture) -> None:
    class Hanging(AsyncBaseCallback):
        async def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
            await asyncio.sleep(60)

    manager = CallbackManager([Hanging()], async_timeout=0.05)
    with caplog.at_level(logging.ERROR, logger="rlm_toolkit"):
        manager.on_llm_start("p")
    assert manager.handler_errors == 1
    assert "Hanging.on_llm_start" in caplog.text


def test_add_remove_and_nested_managers(backend: str) -> None:
    inner_handler = PageStyle()
    inner = CallbackManager([inner_handler])
    outer_handler = PageStyle()
    outer = CallbackManager([outer_handler])
    outer.add(inner)
    outer.on_llm_start("both", run_id="r", flavour="x")
    assert inner_handler.calls[0][:2] == ("llm_start", "both")
    assert inner_handler.calls[0][2]["flavour"] == "x"
    outer.remove(outer_handler)
    outer.on_llm_start("inner only")
    assert len(outer_handler.calls) == 1 and len(inner_handler.calls) == 2
    assert outer.callbacks == (inner,)
    with pytest.raises(ValueError):
        outer.remove(outer_handler)


def test_metrics_subclass_override_reaches_the_native_sink_through_super(backend: str) -> None:
    class CountingMetrics(MetricsCallback):
        def __init__(self) -> None:
            super().__init__()
            self.starts = 0

        def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
            self.starts += 1
            super().on_llm_start(prompt, **kwargs)

    metrics = CountingMetrics()
    manager = CallbackManager([metrics])
    manager.on_llm_start("p", run_id="r", model="gpt-4o")
    time.sleep(0.03)
    manager.on_llm_end(RESPONSE, run_id="r", model="gpt-4o")
    snapshot = metrics.get_metrics()
    assert metrics.starts == 1
    assert snapshot["total_calls"] == 1 and snapshot["total_tokens"] == 7
    assert 25.0 <= snapshot["avg_latency_ms"] < 1000.0


def test_streams_tokens_only_when_someone_consumes_them(backend: str) -> None:
    class Tokens(BaseCallback):
        def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
            pass

    assert not CallbackManager([MetricsCallback(), PageStyle()]).streams_tokens
    assert CallbackManager([Tokens()]).streams_tokens


def test_unknown_backend_and_missing_native_module(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BackendError, match="'rust' or 'python'"):
        CallbackManager(backend="java")  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, "rlm_toolkit._core", None)
    with pytest.raises(ImportError, match="RLM_TOOLKIT_BACKEND=python"):
        CallbackManager(backend="rust")


@pytest.mark.parametrize("not_callbacks", [["a string"], "abc", [None], [print], [object()], 42, [MetricsCallback]])
def test_what_is_not_a_callback_is_refused_by_name(backend: str, not_callbacks: Any) -> None:
    with pytest.raises(CallbackConfigError, match="not a callback|callbacks must be|is a class"):
        CallbackManager(not_callbacks)
    manager = CallbackManager()
    with pytest.raises(CallbackConfigError):
        manager.add(not_callbacks if not isinstance(not_callbacks, list) else not_callbacks[0])
    assert manager.callbacks == ()


def test_a_manager_subclass_overrides_an_event_method_and_fires_through_super(backend: str) -> None:
    class Counting(CallbackManager):
        def __init__(self, callbacks: list[Any]) -> None:
            super().__init__(callbacks)
            self.prompts: list[str] = []

        def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
            self.prompts.append(prompt)
            super().on_llm_start(prompt.upper(), **kwargs)

    handler = PageStyle()
    manager = Counting([handler])
    manager.on_llm_start("hello", run_id="r1")
    fire = manager.on_llm_start
    fire("again", run_id="r2")
    assert manager.prompts == ["hello", "again"]
    assert [prompt for _, prompt, _ in handler.calls] == ["HELLO", "AGAIN"]


def test_a_manager_subclass_with_its_own_slots_and_a_mixin_first_fires_into_its_callbacks(backend: str) -> None:
    class Labelled:
        label = "mixin"

    class Slotted(Labelled, CallbackManager):
        __slots__ = ("extra", "more")

    handler, metrics = PageStyle(), MetricsCallback()
    manager = Slotted([handler, metrics])
    manager.extra, manager.more = "x", "y"
    manager.on_llm_start("hello", run_id="r1", model="gpt-4o")
    manager.on_llm_end(RESPONSE, run_id="r1")
    assert [prompt for _, prompt, _ in handler.calls] == ["hello"]
    assert metrics.get_metrics()["completed_calls"] == 1


def test_a_manager_whose_init_never_ran_says_so_when_fired(backend: str) -> None:
    class Forgetful(CallbackManager):
        def __init__(self) -> None:
            pass

    with pytest.raises(CallbackConfigError, match="Forgetful has no dispatcher: its __init__ must call"):
        Forgetful().on_llm_start("hello")
    with pytest.raises(TypeError, match="doesn't apply to a 'PageStyle' object"):
        CallbackManager.on_llm_start(PageStyle(), "hello")  # type: ignore[arg-type]


def test_the_pure_python_backend_runs_without_the_native_module(tmp_path: Any) -> None:
    script = f"""
import sys
sys.modules["rlm_toolkit._core"] = None
from rlm_toolkit import LLMResponse, Usage
from rlm_toolkit.callbacks import BaseCallback, CallbackManager, FileLogCallback, MetricsCallback
class Prompts(BaseCallback):
    def __init__(self):
        self.prompts = []
    def on_llm_start(self, prompt, **kwargs):
        self.prompts.append(prompt)
metrics, prompts = MetricsCallback(), Prompts()
log = FileLogCallback({str(tmp_path / "log.jsonl")!r})
manager = CallbackManager([metrics, prompts, log])
manager.on_llm_start("hello", run_id="r1", model="gpt-4o")
manager.on_llm_end(LLMResponse("hi", "gpt-4o", Usage.of(3, 4)), run_id="r1")
log.close()
print(prompts.prompts, metrics.get_metrics()["completed_calls"], manager.backend)
"""
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                               env={**os.environ, "RLM_TOOLKIT_BACKEND": "python"})
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["['hello']", "1", "python"]
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 2


def test_a_single_callback_or_manager_is_taken_where_a_list_is(backend: str) -> None:
    metrics = MetricsCallback()
    manager = CallbackManager(metrics)
    outer = CallbackManager(manager)
    outer.on_llm_start("p", run_id="r", model="gpt-4o")
    assert manager.callbacks == (metrics,) and outer.callbacks == (manager,)
    assert metrics.get_metrics()["total_calls"] == 1
