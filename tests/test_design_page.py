"""Every code block of the design page (docs/callbacks.md), run as written against the local server.

Blocks are read from the page itself and run as they stand, each on its own (so each imports what it uses). The
only addition is a ``run`` call when a block builds an ``rlm`` without running it.
Blocks that only define a callback class are exercised by instantiating the class and running an RLM with it.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import openai
import pytest

from rlm_toolkit import RLM
from rlm_toolkit.callbacks import FileLogCallback, MetricsCallback
from rlm_toolkit.errors import LLMCallError
from rlm_toolkit.memory import BufferMemory
from rlm_toolkit.pricing import cost_usd
from rlm_toolkit.server import LocalServer
from rlm_toolkit.types import Usage

DESIGN_PAGE = Path(__file__).resolve().parents[1] / "docs" / "callbacks.md"
PAGE_HEADINGS = (
    "Quick start",
    "ConsoleCallback",
    "StreamingCallback",
    "MetricsCallback",
    "FileLogCallback",
    "Full example",
    "Async Callback",
    "Combining callbacks",
)
"""The heading above each Python block of the page, in page order; each has a test below."""

RLM_IMPORT = "from rlm_toolkit import RLM"
ADDED_RUN = 'result = rlm.run("Hello!")'
HELLO_ANSWER = "Hello! You said: Hello!"
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
SHORT_ID = r"\[[0-9a-f]{8}\]"

T = TypeVar("T")


@dataclass(frozen=True)
class PageBlock:
    heading: str
    source: str


def python_blocks(markdown: str) -> list[PageBlock]:
    """The ```python blocks of ``markdown``, each with the nearest heading above it."""
    blocks: list[PageBlock] = []
    heading = ""
    block_lines: list[str] | None = None
    for line in markdown.splitlines():
        if block_lines is not None:
            if line.strip() == "```":
                blocks.append(PageBlock(heading, "\n".join(block_lines) + "\n"))
                block_lines = None
            else:
                block_lines.append(line)
        elif line.strip() == "```python":
            block_lines = []
        elif line.startswith("#"):
            heading = line.lstrip("#").strip()
    return blocks


BLOCKS = python_blocks(DESIGN_PAGE.read_text(encoding="utf-8"))


def block_source(heading: str) -> str:
    """The block under ``heading``, as the page has it."""
    [source] = [block.source for block in BLOCKS if block.heading == heading]
    return source


def page_source(heading: str) -> str:
    """The block under ``heading`` with only the allowed addition: a run call."""
    source = block_source(heading)
    if re.search(r"^rlm = ", source, re.MULTILINE) and not re.search(r"\brlm\.a?run\(", source):
        source = f"{source}{ADDED_RUN}\n"
    return source


def exec_page_block(heading: str) -> dict[str, Any]:
    """Run the block under ``heading``; its namespace afterwards."""
    namespace: dict[str, Any] = {"__name__": "design_page"}
    exec(compile(page_source(heading), f"{DESIGN_PAGE}#{heading}", "exec"), namespace)
    return namespace


def instances_in(namespace: dict[str, Any], cls: type[T]) -> list[T]:
    """Objects of type ``cls`` bound to a name of ``namespace`` or held in a list or tuple bound to one."""
    found: list[T] = []
    for value in namespace.values():
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(item, cls) and not any(item is seen for seen in found):
                found.append(item)
    return found


def read_log(path: Path, server: LocalServer) -> list[dict[str, Any]]:
    """The records of a JSONL log, after checking that the API key is nowhere in it."""
    text = path.read_text(encoding="utf-8")
    assert server.api_key not in text
    return [json.loads(line) for line in text.splitlines()]


def server_usages(server: LocalServer, requests: list[dict[str, Any]]) -> list[Usage]:
    """The usage the server reports for each request, asked again without streaming (answers are deterministic)."""
    client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0)
    usages = []
    for body in requests:
        tools = {"tools": body["tools"]} if "tools" in body else {}
        usage = client.chat.completions.create(model=body["model"], messages=body["messages"], **tools).usage
        assert usage is not None
        usages.append(Usage(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens))
    return usages


@pytest.fixture
def page_env(server: LocalServer, backend: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> LocalServer:
    """The page's environment: the OpenAI variables point at the local server, the cwd is a fresh folder.

    ``backend`` (tests/conftest.py) makes the page's callbacks use each backend in turn.
    """
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", server.api_key)
    monkeypatch.chdir(tmp_path)
    return server


def console_lines_of_hello_run(usage: Usage) -> list[str]:
    """Patterns of the two lines ConsoleCallback(verbose=True) prints for the added ``rlm.run("Hello!")``."""
    cost = cost_usd("gpt-4o", usage.prompt_tokens, usage.completion_tokens)
    assert cost is not None
    return [
        rf'  {SHORT_ID} llm start      gpt-4o  "Hello!"',
        rf"  {SHORT_ID} llm end        gpt-4o  [0-9.]+ m?s  "
        + re.escape(
            f"tokens: {usage.total_tokens} ({usage.prompt_tokens} prompt + {usage.completion_tokens} completion)  "
            f'cost: ${cost:.6f}  -> "{HELLO_ANSWER}"'
        ),
    ]


def assert_lines_match(lines: list[str], patterns: list[str]) -> None:
    assert len(lines) == len(patterns), lines
    for line, pattern in zip(lines, patterns):
        assert re.fullmatch(pattern, line), f"{line!r} does not match {pattern!r}"


def assert_hello_log(records: list[dict[str, Any]], run_id: str, usage: Usage) -> None:
    """The JSONL records of the added ``rlm.run("Hello!")``: the run and its one LLM call, prompts and
    responses included."""
    assert [record["event"] for record in records] == ["run_start", "llm_start", "llm_end", "run_end"]
    run_start, start, end, run_end = records
    assert run_start["run_id"] == run_end["run_id"] == run_id
    assert run_start["prompt"] == "Hello!" and run_end["answer"] == HELLO_ANSWER
    assert start["run_id"] == end["run_id"] != run_id
    assert start["parent_run_id"] == end["parent_run_id"] == run_id
    assert all(ISO_UTC.match(record["ts"]) for record in records)
    assert start["model"] == end["model"] == "gpt-4o"
    assert start["prompt"] == "Hello!"
    assert end["response"] == HELLO_ANSWER
    assert (end["prompt_tokens"], end["completion_tokens"], end["total_tokens"]) == (
        usage.prompt_tokens, usage.completion_tokens, usage.total_tokens,
    )


def test_every_python_block_of_the_page_is_exercised() -> None:
    assert tuple(block.heading for block in BLOCKS) == PAGE_HEADINGS


def test_every_block_that_uses_rlm_imports_it() -> None:
    using_rlm = [block.heading for block in BLOCKS if "RLM." in block.source]
    assert using_rlm == ["Quick start", "ConsoleCallback", "StreamingCallback", "MetricsCallback",
                         "FileLogCallback", "Combining callbacks"]
    assert [heading for heading in using_rlm
            if RLM_IMPORT not in block_source(heading).splitlines()] == []


def test_quick_start(page_env: LocalServer, capsys: pytest.CaptureFixture[str]) -> None:
    namespace = exec_page_block("Quick start")

    assert namespace["result"].answer == HELLO_ANSWER
    assert capsys.readouterr().out.splitlines() == [
        "📤 Sending: Hello!...",
        f"📥 Received: {HELLO_ANSWER}...",
    ]


def test_console_callback(page_env: LocalServer, capsys: pytest.CaptureFixture[str]) -> None:
    namespace = exec_page_block("ConsoleCallback")

    assert namespace["result"].answer == HELLO_ANSWER
    [usage] = server_usages(page_env, list(page_env.requests))
    lines = capsys.readouterr().out.splitlines()
    assert_lines_match(lines, console_lines_of_hello_run(usage))
    assert lines[0][2:12] == lines[1][2:12], "start and end of one call carry the same run id"


def test_streaming_callback(page_env: LocalServer, capsys: pytest.CaptureFixture[str]) -> None:
    namespace = exec_page_block("StreamingCallback")

    assert namespace["result"].answer == HELLO_ANSWER
    assert capsys.readouterr().out == HELLO_ANSWER
    [request] = page_env.requests
    assert request["stream"] is True
    assert request["stream_options"] == {"include_usage": True}


def test_metrics_callback(page_env: LocalServer, capsys: pytest.CaptureFixture[str]) -> None:
    namespace = exec_page_block("MetricsCallback")

    usages = server_usages(page_env, list(page_env.requests))
    total_tokens = sum(usage.total_tokens for usage in usages)
    calls, tokens, latency = capsys.readouterr().out.splitlines()
    assert calls == "Total calls: 2"
    assert tokens == f"Total tokens: {total_tokens}"
    latency_match = re.fullmatch(r"Average latency: (\d+(?:\.\d+)?)ms", latency)
    assert latency_match is not None, latency
    assert float(latency_match.group(1)) == namespace["metrics"]["avg_latency_ms"] > 0


def test_file_log_callback(page_env: LocalServer) -> None:
    namespace = exec_page_block("FileLogCallback")

    [log] = instances_in(namespace, FileLogCallback)
    log.close()
    [usage] = server_usages(page_env, list(page_env.requests))
    assert_hello_log(read_log(Path("logs", "rlm.jsonl"), page_env), namespace["result"].run_id, usage)


def get_weather(city: str) -> str:
    """Current weather in a city."""
    return f"Sunny, 21 C in {city}"


WEATHER_PROMPT = 'Use get_weather {"city": "Paris"}, please.'
WEATHER_ANSWER = "Tool results: get_weather -> Sunny, 21 C in Paris"


def retry_line(attempt: int, status: int) -> str:
    """Pattern of the DetailedCallback's line for retry ``attempt`` of 3 after an HTTP ``status`` error."""
    return re.escape(f"🔄 Retry {attempt}/3: Error code: {status} - ") + ".*"


def test_full_example_fires_and_counts_every_hook(page_env: LocalServer, capsys: pytest.CaptureFixture[str]) -> None:
    callback = exec_page_block("Full example")["DetailedCallback"]()
    max_attempts = 3
    rlm = RLM.from_openai("gpt-4o", callbacks=[callback], tools=[get_weather], memory=BufferMemory(),
                          max_attempts=max_attempts, backoff_base=0.001)

    page_env.fail_next(429, retry_after=0.01)
    result = rlm.run(WEATHER_PROMPT)
    failed_request, *answered_requests = page_env.requests
    usages = server_usages(page_env, answered_requests)
    page_env.fail_next(500, count=max_attempts)
    with pytest.raises(LLMCallError) as failure:
        rlm.run("Hello again")

    assert result.answer == WEATHER_ANSWER
    tool_call_tokens, answer_tokens = (usage.total_tokens for usage in usages)
    assert_lines_match(capsys.readouterr().out.splitlines(), [
        re.escape(f"🔍 Recalled 0 items for: {WEATHER_PROMPT}"),
        re.escape("[1] Starting LLM call..."),
        retry_line(1, 429),
        rf"\[1\] Finished in \d+\.\d\ds \({tool_call_tokens} tokens\)",
        re.escape("🔧 Tool: get_weather({'city': 'Paris'})"),
        re.escape("✅ Tool result: Sunny, 21 C in Paris..."),
        re.escape("[2] Starting LLM call..."),
        rf"\[2\] Finished in \d+\.\d\ds \({answer_tokens} tokens\)",
        re.escape(f"💾 Stored: {WEATHER_PROMPT[:50]}..."),
        re.escape(f"💾 Stored: {WEATHER_ANSWER[:50]}..."),
        re.escape("🔍 Recalled 2 items for: Hello again"),
        re.escape("[3] Starting LLM call..."),
        retry_line(1, 500),
        retry_line(2, 500),
        re.escape(f"❌ Error: {failure.value}"),
    ])
    assert callback.summary() == {"calls": 3, "tokens": tool_call_tokens + answer_tokens, "errors": 1}
    assert failed_request["messages"] == answered_requests[0]["messages"]


def assert_async_hook_failures_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Both hooks of the page's AsyncLoggingCallback failed (``aiohttp`` is not imported there), isolated."""
    for event in ("llm_start", "llm_end"):
        [record] = [
            record for record in caplog.records
            if record.name == "rlm_toolkit" and f"AsyncLoggingCallback.on_{event}" in record.getMessage()
        ]
        assert record.levelno == logging.ERROR
        assert repr(event) in record.getMessage()
        assert "aiohttp" in record.getMessage()


def test_async_callback_failures_are_isolated_in_sync_runs(page_env: LocalServer,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    callback = exec_page_block("Async Callback")["AsyncLoggingCallback"]()
    rlm = RLM.from_openai("gpt-4o", callbacks=[callback])

    result = rlm.run("Hello!")

    assert result.answer == HELLO_ANSWER
    assert_async_hook_failures_logged(caplog)


async def test_async_callback_failures_are_isolated_in_async_runs(page_env: LocalServer,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    callback = exec_page_block("Async Callback")["AsyncLoggingCallback"]()
    rlm = RLM.from_openai("gpt-4o", callbacks=[callback])

    result = await rlm.arun("Hello!")

    assert result.answer == HELLO_ANSWER
    assert_async_hook_failures_logged(caplog)


def test_async_callback_failures_are_counted(page_env: LocalServer) -> None:
    callback = exec_page_block("Async Callback")["AsyncLoggingCallback"]()
    metrics = MetricsCallback()
    rlm = RLM.from_openai("gpt-4o", callbacks=[callback, metrics])

    rlm.run("Hello!")

    assert rlm.callbacks.handler_errors == 2
    assert metrics.get_metrics()["handler_errors"] == 2


def test_combining_callbacks(page_env: LocalServer, capsys: pytest.CaptureFixture[str]) -> None:
    namespace = exec_page_block("Combining callbacks")

    result = namespace["result"]
    assert result.answer == HELLO_ANSWER
    [usage] = server_usages(page_env, list(page_env.requests))
    assert_lines_match(capsys.readouterr().out.splitlines(), console_lines_of_hello_run(usage))
    [metrics] = instances_in(namespace, MetricsCallback)
    assert metrics.get_metrics()["total_calls"] == 1
    assert metrics.get_metrics()["total_tokens"] == usage.total_tokens
    [log] = instances_in(namespace, FileLogCallback)
    log.close()
    assert_hello_log(read_log(Path("session.jsonl"), page_env), result.run_id, usage)
