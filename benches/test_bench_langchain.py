"""``LangChainHandler`` (metrics + JSONL log through our Rust core) against a plain langchain-core handler doing
the same work in Python: counters, latencies and cost, and one ``json.dumps`` record like ours per event to a
64 KiB buffered file. Both are driven by langchain-core's own ``CallbackManager`` (``on_chat_model_start``,
the run manager's ``on_llm_new_token`` and ``on_llm_end``), as a LangChain app drives them; a handler whose
hooks do nothing gives the cost of that dispatch alone, so ``handler cost = row - no-op``.

Two cases: ``langchain-call`` (a chat model's start and end: a system and a 200-character user message, a
300-character answer with usage) and ``langchain-stream`` (the same call streamed in 20 tokens of 15
characters). The log's close is timed in each batch.

    pytest benches/test_bench_langchain.py -m target -s     # the interleaved figures and the targets
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import pytest

pytest.importorskip("langchain_core", reason="langchain-core is not installed (pip install 'rlm_toolkit[bench]')")

from langchain_core.callbacks import BaseCallbackHandler  # noqa: E402
from langchain_core.callbacks import CallbackManager as LCManager  # noqa: E402
from langchain_core.messages import (  # noqa: E402
    AIMessage,
    AIMessageChunk,
    HumanMessage,
    SystemMessage,
    get_buffer_string,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, LLMResult  # noqa: E402

from rlm_toolkit import bench  # noqa: E402
from rlm_toolkit._backend import BackendName  # noqa: E402
from rlm_toolkit.bench.base import WRITE_BUFFER, Case, Contender, count_lines, expect, remove, temp_path  # noqa: E402
from rlm_toolkit.bench.pair import pair_payload  # noqa: E402
from rlm_toolkit.bench.runner import measure_case  # noqa: E402
from rlm_toolkit.callbacks import FileLogCallback, MetricsCallback  # noqa: E402
from rlm_toolkit.integrations.langchain import LangChainHandler  # noqa: E402
from rlm_toolkit.pricing import PRICES_PER_MILLION  # noqa: E402

MODEL = "gpt-4o"
STREAM_TOKENS = 20
USAGE = {"input_tokens": 50, "output_tokens": 75, "total_tokens": 125}
_UTC = timezone.utc


def _payload() -> tuple[list[Any], LLMResult, list[tuple[str, ChatGenerationChunk]]]:
    prompt, response = pair_payload()
    messages = [SystemMessage("Answer in one paragraph."), HumanMessage(prompt)]
    answer = AIMessage(response.content, usage_metadata=USAGE,
                       response_metadata={"model_name": MODEL, "finish_reason": "stop"})
    step = len(response.content) // STREAM_TOKENS
    tokens = [response.content[i:i + step] for i in range(0, len(response.content), step)]
    assert len(tokens) == STREAM_TOKENS and "".join(tokens) == response.content
    chunks = [(token, ChatGenerationChunk(message=AIMessageChunk(token))) for token in tokens]
    return messages, LLMResult(generations=[[ChatGeneration(message=answer)]]), chunks


MESSAGES, RESULT, CHUNKS = _payload()
SERIALIZED = {"lc": 1, "type": "constructor", "id": ["langchain_openai", "ChatOpenAI"], "kwargs": {"model": MODEL}}
METADATA = {"user": "u-1", "ls_provider": "openai", "ls_model_name": MODEL, "ls_model_type": "chat"}
INVOCATION = {"model": MODEL, "stream": False, "temperature": 0.0}


class PlainJsonHandler(BaseCallbackHandler):
    """The hand-written equivalent: our records' fields from LangChain's arguments, ``json.dumps`` per event to
    a buffered file, call and token counters, latencies, TTFT and cost."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "w", encoding="utf-8", buffering=WRITE_BUFFER)
        self._runs: dict[uuid.UUID, tuple[Any, ...]] = {}
        self.latencies: list[float] = []
        self.ttfts: list[float] = []
        self.calls = self.completed = self.tokens = self.prompt_tokens = self.completion_tokens = 0
        self.cost = 0.0

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")

    def on_chat_model_start(self, serialized: dict[str, Any], messages: list[list[Any]], *, run_id: uuid.UUID,
                            parent_run_id: uuid.UUID | None = None, tags: list[str] | None = None,
                            metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        now = time.time()
        metadata = metadata or {}
        model = metadata.get("ls_model_name")
        context = {key: value for key, value in metadata.items() if not key.startswith("ls_")}
        ids = (str(run_id), None if parent_run_id is None else str(parent_run_id))
        self.calls += 1
        self._write({"ts": datetime.fromtimestamp(now, _UTC).isoformat(), "event": "llm_start", "run_id": ids[0],
                     "parent_run_id": ids[1], "model": model, "prompt": get_buffer_string(messages[0]),
                     "tags": tags, "metadata": context})
        self._runs[run_id] = (now, time.perf_counter(), ids, model, tags, context, [None])

    def on_llm_new_token(self, token: Any, *, run_id: uuid.UUID, **kwargs: Any) -> None:
        first_token = self._runs[run_id][6]
        if first_token[0] is None:
            first_token[0] = time.perf_counter()
        self.tokens += 1

    def on_llm_end(self, response: LLMResult, *, run_id: uuid.UUID, **kwargs: Any) -> None:
        now = time.time()
        started, started_perf, ids, model, tags, context, first_token = self._runs.pop(run_id)
        self.latencies.append(now - started)
        ttft_ms = None if first_token[0] is None else (first_token[0] - started_perf) * 1000.0
        if ttft_ms is not None:
            self.ttfts.append(ttft_ms)
        message = response.generations[0][0].message  # type: ignore[attr-defined]
        usage = message.usage_metadata or {}
        prompt_tokens, completion_tokens = usage.get("input_tokens", 0), usage.get("output_tokens", 0)
        cached = (usage.get("input_token_details") or {}).get("cache_read", 0)
        reasoning = (usage.get("output_token_details") or {}).get("reasoning", 0)
        self.completed += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        price = PRICES_PER_MILLION.get(message.response_metadata.get("model_name") or model)
        if price is not None:
            self.cost += (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6
        self._write({"ts": datetime.fromtimestamp(now, _UTC).isoformat(), "event": "llm_end", "run_id": ids[0],
                     "parent_run_id": ids[1], "model": model, "response": message.text,
                     "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                     "total_tokens": usage.get("total_tokens", 0), "cached_tokens": cached,
                     "reasoning_tokens": reasoning, "ttft_ms": ttft_ms, "tags": tags, "metadata": context})

    def close(self) -> None:
        self._file.close()


class NoopHandler(BaseCallbackHandler):
    """Hooks that do nothing: langchain-core's dispatch alone."""

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        pass

    def on_llm_new_token(self, token: Any, **kwargs: Any) -> None:
        pass

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        pass


def _drive(manager: LCManager, ids: list[uuid.UUID], streamed: bool) -> None:
    messages = [MESSAGES]
    for run_id in ids:
        run_manager = manager.on_chat_model_start(SERIALIZED, messages, run_id=run_id, invocation_params=INVOCATION)[0]
        if streamed:
            for token, chunk in CHUNKS:
                run_manager.on_llm_new_token(token, chunk=chunk)
        run_manager.on_llm_end(RESULT)


def _contenders(cfg: bench.Config, streamed: bool) -> list[Contender]:
    events_per_op = 2 + (STREAM_TOKENS if streamed else 0)
    tokens_per_op = STREAM_TOKENS if streamed else 0

    def ours(backend: BackendName) -> Contender:
        def setup(n: int) -> Any:
            path = temp_path(cfg, f"langchain-{backend}")
            metrics, log = MetricsCallback(backend=backend), FileLogCallback(path, backend=backend)
            handler = LangChainHandler([metrics, log], backend=backend)
            return {"ids": [uuid.uuid4() for _ in range(n)], "path": path, "metrics": metrics, "log": log,
                    "manager": LCManager(handlers=[handler], metadata=METADATA)}

        def run(state: Any) -> None:
            _drive(state["manager"], state["ids"], streamed)
            state["log"].close()

        def teardown(state: Any) -> None:
            n = len(state["ids"])
            try:
                figures = state["metrics"].get_metrics()
                expect((figures["completed_calls"], figures["total_tokens"], figures["tokens_streamed"]),
                       (n, n * USAGE["total_tokens"], n * tokens_per_op), "calls, tokens, streamed tokens")
                expect(figures["total_cost_usd"] > 0, True, "cost counted")
                expect(count_lines(state["path"]), 2 * n, "log lines")
            finally:
                remove(state["path"])

        label = "rust" if backend == "rust" else "python"
        return Contender(label, f"LangChainHandler: MetricsCallback + FileLogCallback ({label} backend)",
                         setup, run, teardown, events_per_op=events_per_op)

    def plain_setup(n: int) -> Any:
        path = temp_path(cfg, "langchain-plain")
        handler = PlainJsonHandler(path)
        return {"ids": [uuid.uuid4() for _ in range(n)], "path": path, "handler": handler,
                "manager": LCManager(handlers=[handler], metadata=METADATA)}

    def plain_run(state: Any) -> None:
        _drive(state["manager"], state["ids"], streamed)
        state["handler"].close()

    def plain_teardown(state: Any) -> None:
        n, handler = len(state["ids"]), state["handler"]
        try:
            expect((handler.completed, handler.prompt_tokens + handler.completion_tokens, handler.tokens),
                   (n, n * USAGE["total_tokens"], n * tokens_per_op), "calls, tokens, streamed tokens")
            expect(count_lines(state["path"]), 2 * n, "log lines")
        finally:
            remove(state["path"])

    def noop_setup(n: int) -> Any:
        return {"ids": [uuid.uuid4() for _ in range(n)], "manager": LCManager(handlers=[NoopHandler()],
                                                                              metadata=METADATA)}

    return [
        ours("rust"),
        ours("python"),
        Contender("json", "plain BaseCallbackHandler: json.dumps + buffered write, counters", plain_setup,
                  plain_run, plain_teardown, events_per_op=events_per_op),
        Contender("noop", "BaseCallbackHandler with hooks that do nothing (langchain-core's dispatch)", noop_setup,
                  lambda state: _drive(state["manager"], state["ids"], streamed), events_per_op=events_per_op),
    ]


def _case(cfg: bench.Config, name: str) -> Case:
    streamed = name == "langchain-stream"
    title = "LangChain handler: a chat model's start" + (f", {STREAM_TOKENS} tokens" if streamed else "") + " and end"
    return Case(name, title, _contenders(cfg, streamed), bench_n=200)


CASES = ("langchain-call", "langchain-stream")
KEYS = ("rust", "python", "json", "noop")


@pytest.mark.parametrize(("case_name", "key"), [(case, key) for case in CASES for key in KEYS])
def test_langchain_handler(benchmark: Any, bench_cfg: bench.Config, case_name: str, key: str) -> None:
    case = _case(bench_cfg, case_name)
    bench.benchmark_contender(benchmark, case, case.contender(key), bench_cfg)


@pytest.fixture(scope="module")
def measured(bench_cfg: bench.Config, rows_by_case: Any) -> dict[str, dict[str, bench.Row]]:
    """Every implementation of both cases measured interleaved in one run (medians), printed."""
    rows: list[bench.Row] = []
    for name in CASES:
        rows += measure_case(_case(bench_cfg, name), bench_cfg)
    by_case: dict[str, dict[str, bench.Row]] = rows_by_case(rows)
    for name, case_rows in by_case.items():
        floor = case_rows["noop"].ns_per_event or 0.0
        costs = {key: (row.ns_per_event or 0.0) - floor for key, row in case_rows.items() if key != "noop"}
        print(f"{name}: handler cost beyond langchain-core's dispatch ({floor:.0f} ns/event): "
              + ", ".join(f"{key} {cost:.0f} ns/event" for key, cost in costs.items()))
    return by_case


def _handler_cost_ratio(rows: dict[str, bench.Row]) -> float | None:
    """The plain handler's cost per event over ours, each without langchain-core's own dispatch."""
    floor, ours, plain = (rows[key].ns_per_event for key in ("noop", "rust", "json"))
    if floor is None or ours is None or plain is None or ours <= floor:
        return None
    return (plain - floor) / (ours - floor)


# -- TARGET ASSERTIONS ---------------------------------------------------------------------------------------


@pytest.mark.target
@pytest.mark.parametrize("case_name", CASES)
def test_target_handler_cheaper_than_plain_json(measured, check_target, case_name: str) -> None:
    """TARGET: per event, LangChainHandler (Rust backend) with metrics + JSONL log costs less than a plain
    langchain-core handler doing the same work with json.dumps, both beyond langchain-core's own dispatch."""
    check_target(f"{case_name}: plain json handler cost / LangChainHandler cost",
                 _handler_cost_ratio(measured[case_name]), ">=", 1.5, "x")
