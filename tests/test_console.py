"""ConsoleCallback, driven through CallbackManager on each backend."""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlm_toolkit.callbacks import BaseCallback, CallbackManager, ConsoleCallback
from rlm_toolkit.callbacks import console as console_module
from rlm_toolkit.types import LLMResponse, Usage

RUN_ID = "1a2b3c4d-0000-4000-8000-000000000001"
TOOL_RUN_ID = "call_5e6f7a8b9c0d"
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


class FakeClock:
    """Stands in for ``time`` in the console module: ``perf_counter()`` returns ``now``."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(console_module, "time", SimpleNamespace(perf_counter=fake.perf_counter))
    return fake


def console(backend: str, **options: object) -> tuple[CallbackManager, io.StringIO]:
    """A manager with one ConsoleCallback writing to a fresh StringIO."""
    stream = io.StringIO()
    return CallbackManager([ConsoleCallback(stream=stream, **options)], backend=backend), stream


def response(content: str = "Hello! You said: hi", model: str | None = "gpt-4o",
             prompt_tokens: int = 12, completion_tokens: int = 7) -> LLMResponse:
    return LLMResponse(content, model, Usage.of(prompt_tokens, completion_tokens))


def fire_full_run(manager: CallbackManager, clock: FakeClock) -> None:
    """Every event of one run with a retried LLM call that asks for a tool; the call takes 412 ms."""
    manager.on_memory_recall("What is the weather in Paris?", [{"role": "user", "content": "hi"}],
                             run_id=RUN_ID, parent_run_id=None)
    manager.on_llm_start("What is the weather in Paris?", run_id=RUN_ID, parent_run_id=None, model="gpt-4o")
    manager.on_retry(1, 3, RuntimeError("Error code: 429 - rate limit reached"), run_id=RUN_ID,
                     parent_run_id=None, model="gpt-4o")
    manager.on_tool_start("get_weather", {"city": "Paris"}, run_id=TOOL_RUN_ID, parent_run_id=RUN_ID)
    manager.on_tool_end("get_weather", "Sunny, 21 C", run_id=TOOL_RUN_ID, parent_run_id=RUN_ID)
    clock.now = 0.412
    manager.on_llm_end(response("Tool results: get_weather -> Sunny, 21 C"), run_id=RUN_ID, parent_run_id=None,
                       model="gpt-4o")
    manager.on_memory_store("What is the weather in Paris?", role="user", run_id=RUN_ID, parent_run_id=None)
    manager.on_error(RuntimeError("boom"), run_id=RUN_ID, parent_run_id=None, model="gpt-4o")


def test_verbose_prints_one_readable_line_per_event(backend: str, clock: FakeClock) -> None:
    manager, stream = console(backend)

    fire_full_run(manager, clock)

    assert stream.getvalue().splitlines() == [
        '[1a2b3c4d] memory recall  "What is the weather in Paris?" -> 1 result',
        '[1a2b3c4d] llm start      gpt-4o  "What is the weather in Paris?"',
        "[1a2b3c4d] retry 1/3      gpt-4o  RuntimeError: Error code: 429 - rate limit reached",
        '  [call_5e6] tool start     get_weather {"city": "Paris"}',
        '  [call_5e6] tool end       get_weather -> "Sunny, 21 C"',
        "[1a2b3c4d] llm end        gpt-4o  412 ms  tokens: 19 (12 prompt + 7 completion)  cost: $0.000100"
        '  -> "Tool results: get_weather -> Sunny, 21 C"',
        '[1a2b3c4d] memory store   user  "What is the weather in Paris?"',
        "[1a2b3c4d] error          gpt-4o  RuntimeError: boom",
    ]


def test_quiet_prints_only_finished_calls_retries_and_errors(backend: str, clock: FakeClock) -> None:
    manager, stream = console(backend, verbose=False)

    fire_full_run(manager, clock)

    assert stream.getvalue().splitlines() == [
        "[1a2b3c4d] retry 1/3      gpt-4o  RuntimeError: Error code: 429 - rate limit reached",
        "[1a2b3c4d] llm end        gpt-4o  412 ms  tokens: 19 (12 prompt + 7 completion)  cost: $0.000100",
        "[1a2b3c4d] error          gpt-4o  RuntimeError: boom",
    ]


@pytest.mark.parametrize(
    ("show_tokens", "show_cost", "expected_parts"),
    [
        (True, False, ["tokens: 19 (12 prompt + 7 completion)"]),
        (False, True, ["cost: $0.000100"]),
        (False, False, []),
    ],
)
def test_tokens_and_cost_are_shown_only_when_asked(backend: str, show_tokens: bool, show_cost: bool,
                                                   expected_parts: list[str]) -> None:
    manager, stream = console(backend, verbose=False, show_tokens=show_tokens, show_cost=show_cost)

    manager.on_llm_end(response(), run_id=RUN_ID, parent_run_id=None, model="gpt-4o")

    assert stream.getvalue() == "  ".join(["[1a2b3c4d] llm end        gpt-4o", *expected_parts]) + "\n"


def test_unknown_model_has_unknown_cost_never_zero(backend: str) -> None:
    manager, stream = console(backend, verbose=False)

    manager.on_llm_end(response(model="my-finetune"), run_id=RUN_ID, parent_run_id=None, model="my-finetune")
    manager.on_llm_end(response(model=None), run_id=RUN_ID, parent_run_id=None)

    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    for line in lines:
        assert line.endswith("tokens: 19 (12 prompt + 7 completion)  cost: unknown")
        assert "$" not in line


def test_response_without_usage_shows_tokens_and_cost_as_unknown(backend: str) -> None:
    manager, stream = console(backend, verbose=False)

    manager.on_llm_end(SimpleNamespace(content="hi", model="gpt-4o", usage=None), run_id=RUN_ID,
                       parent_run_id=None, model="gpt-4o")

    assert stream.getvalue() == "[1a2b3c4d] llm end        gpt-4o  tokens: unknown  cost: unknown\n"


def test_response_model_is_used_when_the_model_keyword_is_missing(backend: str) -> None:
    manager, stream = console(backend, verbose=False, show_tokens=False)

    manager.on_llm_end(response(model="gpt-4o-mini-2024-07-18"), run_id=RUN_ID, parent_run_id=None)

    # gpt-4o-mini: 12 * 0.15 / 1e6 + 7 * 0.60 / 1e6
    assert stream.getvalue() == "[1a2b3c4d] llm end        gpt-4o-mini-2024-07-18  cost: $0.000006\n"


def test_the_model_keyword_wins_over_response_model(backend: str) -> None:
    manager, stream = console(backend, verbose=False, show_tokens=False)

    manager.on_llm_end(response(model="gpt-4o-2024-08-06"), run_id=RUN_ID, parent_run_id=None, model="gpt-4")

    # gpt-4: 12 * 30 / 1e6 + 7 * 60 / 1e6
    assert stream.getvalue() == "[1a2b3c4d] llm end        gpt-4  cost: $0.000780\n"


def test_latency_pairs_each_start_with_its_own_end(backend: str, clock: FakeClock) -> None:
    manager, stream = console(backend, verbose=False, show_tokens=False, show_cost=False)

    manager.on_llm_start("first", run_id="run-aaaa", parent_run_id=None, model="gpt-4o")
    clock.now = 1.0
    manager.on_llm_start("second", run_id="run-bbbb", parent_run_id=None, model="gpt-4o")
    clock.now = 1.0042
    manager.on_llm_end(response(), run_id="run-bbbb", parent_run_id=None, model="gpt-4o")
    clock.now = 3.0
    manager.on_llm_end(response(), run_id="run-aaaa", parent_run_id=None, model="gpt-4o")
    manager.on_llm_end(response(), run_id="run-aaaa", parent_run_id=None, model="gpt-4o")

    assert stream.getvalue().splitlines() == [
        "[run-bbbb] llm end        gpt-4o  4.2 ms",
        "[run-aaaa] llm end        gpt-4o  3.00 s",
        "[run-aaaa] llm end        gpt-4o",
    ]


def test_an_error_ends_the_call(backend: str, clock: FakeClock) -> None:
    manager, stream = console(backend, verbose=False, show_tokens=False, show_cost=False)

    manager.on_llm_start("hi", run_id=RUN_ID, parent_run_id=None, model="gpt-4o")
    manager.on_error("gave up", run_id=RUN_ID, parent_run_id=None, model="gpt-4o")
    clock.now = 0.5
    manager.on_llm_end(response(), run_id=RUN_ID, parent_run_id=None, model="gpt-4o")

    assert stream.getvalue().splitlines() == [
        "[1a2b3c4d] error          gpt-4o  gave up",
        "[1a2b3c4d] llm end        gpt-4o",
    ]


def test_unfinished_calls_are_bounded_oldest_forgotten_first(backend: str, clock: FakeClock) -> None:
    callback = ConsoleCallback(verbose=False, show_tokens=False, show_cost=False, stream=io.StringIO())
    callback.max_open_calls = 3
    manager = CallbackManager([callback], backend=backend)
    run_ids = [f"run-{index:04d}" for index in range(5)]

    for run_id in run_ids:
        manager.on_llm_start("hi", run_id=run_id, parent_run_id=None, model="gpt-4o")
    clock.now = 0.25
    for run_id in run_ids:
        manager.on_llm_end(response(), run_id=run_id, parent_run_id=None, model="gpt-4o")

    assert callback.stream.getvalue().splitlines() == [
        "[run-0000] llm end        gpt-4o",
        "[run-0001] llm end        gpt-4o",
        "[run-0002] llm end        gpt-4o  250 ms",
        "[run-0003] llm end        gpt-4o  250 ms",
        "[run-0004] llm end        gpt-4o  250 ms",
    ]


def test_long_prompts_answers_and_errors_are_shortened_to_one_line(backend: str) -> None:
    manager, stream = console(backend, show_tokens=False, show_cost=False)
    long_text = "word\n\t" * 100

    manager.on_llm_start(long_text, run_id=RUN_ID, parent_run_id=None, model="gpt-4o")
    manager.on_llm_end(response(long_text), run_id=RUN_ID, parent_run_id=None, model="gpt-4o")
    manager.on_retry(2, 3, ValueError(long_text), run_id=RUN_ID, parent_run_id=None, model="gpt-4o")

    start_line, end_line, retry_line = stream.getvalue().splitlines()
    shortened = '"' + ("word " * 12)[:57] + '..."'
    assert start_line.endswith(f"gpt-4o  {shortened}")
    assert end_line.endswith(f"-> {shortened}")
    assert retry_line.endswith("ValueError: " + ("word " * 40)[: 200 - len("ValueError: ") - 3] + "...")


def test_a_key_cut_by_the_line_limit_shows_none_of_its_characters(backend: str) -> None:
    key = "sk-proj-" + "A1b2C3d4" * 5
    manager, stream = console(backend, show_tokens=False, show_cost=False)

    for offset in range(44, 61):  # the line is cut: 44 + len("sk-[REDACTED] end") > 60
        manager.on_llm_start("." * offset + key + " end", run_id=RUN_ID, parent_run_id=None, model="gpt-4o")

    lines = stream.getvalue().splitlines()
    assert len(lines) == 17
    for offset, line in zip(range(44, 61), lines):
        # Redacted first, then cut: whatever the cut leaves of the key is a prefix of "sk-[REDACTED]".
        shown = ("." * offset + "sk-[REDACTED] end")[:57] + "..."
        assert line == f'[1a2b3c4d] llm start      gpt-4o  "{shown}"'
        assert "proj" not in line and "A1b2" not in line


def test_tool_calls_and_tool_errors_are_named(backend: str) -> None:
    manager, stream = console(backend, show_tokens=False, show_cost=False)
    tool_call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}

    manager.on_llm_end(LLMResponse("", "gpt-4o", tool_calls=(tool_call, tool_call)), run_id=RUN_ID,
                       parent_run_id=None, model="gpt-4o")
    manager.on_error(TypeError("missing city"), tool_name="get_weather", run_id=TOOL_RUN_ID, parent_run_id=RUN_ID,
                     model=None)

    assert stream.getvalue().splitlines() == [
        "[1a2b3c4d] llm end        gpt-4o  -> 2 tool calls",
        "  [call_5e6] error          get_weather  TypeError: missing city",
    ]


@given(text=st.text())
def test_any_text_gives_exactly_one_line_per_event(text: str) -> None:
    stream = io.StringIO()
    # One backend suffices: this checks the formatting; hypothesis cannot reuse the per-test backend fixture.
    manager = CallbackManager([ConsoleCallback(stream=stream)], backend="python")

    manager.on_llm_start(text, run_id=RUN_ID, parent_run_id=None, model="gpt-4o")
    manager.on_llm_end(response(text), run_id=RUN_ID, parent_run_id=None, model="gpt-4o")
    manager.on_tool_end("lookup", {text: text}, run_id=TOOL_RUN_ID, parent_run_id=RUN_ID)
    manager.on_error(RuntimeError(text), run_id=RUN_ID, parent_run_id=None, model="gpt-4o")

    assert len(stream.getvalue().splitlines()) == 4
    assert manager.handler_errors == 0


def test_events_without_run_ids_or_models_still_print(backend: str) -> None:
    manager, stream = console(backend)

    manager.on_llm_start("hi")
    manager.on_tool_start("lookup", ["a", 1])
    manager.on_retry(1, 2, "timeout")

    assert stream.getvalue().splitlines() == [
        'llm start      "hi"',
        'tool start     lookup ["a", 1]',
        "retry 1/2      timeout",
    ]


def test_default_stream_is_stdout_at_call_time(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    manager = CallbackManager([ConsoleCallback(verbose=False)], backend=backend)

    manager.on_error(RuntimeError("boom"), run_id=RUN_ID, parent_run_id=None, model="gpt-4o")

    assert capsys.readouterr().out == "[1a2b3c4d] error          gpt-4o  RuntimeError: boom\n"


class TerminalStream(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("stream_type", "color", "no_color_env", "expect_color"),
    [
        (io.StringIO, None, False, False),
        (TerminalStream, None, False, True),
        (TerminalStream, None, True, False),
        (TerminalStream, False, False, False),
        (io.StringIO, True, True, True),
    ],
)
def test_color_is_automatic_on_terminals_and_can_be_forced(
    backend: str, monkeypatch: pytest.MonkeyPatch, stream_type: type[io.StringIO], color: bool | None,
    no_color_env: bool, expect_color: bool,
) -> None:
    if no_color_env:
        monkeypatch.setenv("NO_COLOR", "1")
    else:
        monkeypatch.delenv("NO_COLOR", raising=False)
    stream = stream_type()
    manager = CallbackManager([ConsoleCallback(stream=stream, color=color)], backend=backend)

    manager.on_retry(1, 3, "timeout", run_id=RUN_ID, parent_run_id=None, model="gpt-4o")

    output = stream.getvalue()
    assert bool(ANSI_ESCAPE.search(output)) is expect_color
    assert ANSI_ESCAPE.sub("", output) == "[1a2b3c4d] retry 1/3      gpt-4o  timeout\n"


def test_tokens_are_not_printed_and_do_not_make_calls_stream(backend: str) -> None:
    manager, stream = console(backend)

    manager.on_llm_new_token("Hel", run_id=RUN_ID, parent_run_id=None, model="gpt-4o")

    assert ConsoleCallback.on_llm_new_token is BaseCallback.on_llm_new_token
    assert not manager.streams_tokens
    assert stream.getvalue() == ""
