"""The pair/JSONL path: ``MetricsCallback`` + ``FileLogCallback`` for LLM start+end pairs against the same
work in plain Python, orjson and langchain-core, and against the floor of writing the log's own bytes
(``pair``); ``MetricsCallback`` alone on the same events (``metrics``); and the JSONL throughput of
``FileLogCallback`` against raw buffered writes of the same bytes (``jsonl``). Every batch that writes a log
includes closing it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from .._backend import BackendName
from ..callbacks import CallbackManager, FileLogCallback, MetricsCallback
from ..types import LLMResponse, Usage
from .base import (
    MODEL,
    WRITE_BUFFER,
    Config,
    Contender,
    Row,
    count_lines,
    expect,
    missing,
    remove,
    run_ids,
    temp_path,
)
from .competitors import PlainJsonPair, PlainOrjsonPair, langchain_pair

PAIR_PROMPT_CHARS = 200
PAIR_RESPONSE_CHARS = 300
FLOOR_LABEL = "floor: the pair's own output lines, pre-encoded, one write per event (64 KiB buffer)"


def pair_payload() -> tuple[str, LLMResponse]:
    """The prompt (200 characters) and response (300 characters) of every pair."""
    prompt = ("Summarise the following paragraph about event hooks in LLM applications. " * 4)[:PAIR_PROMPT_CHARS]
    content = ("Callbacks let an application observe each step of an LLM call: start, tokens, end. " * 5)
    content = content[:PAIR_RESPONSE_CHARS]
    assert len(prompt) == PAIR_PROMPT_CHARS and len(content) == PAIR_RESPONSE_CHARS
    return prompt, LLMResponse(content, MODEL, Usage.of(50, 75))


def _fire_pairs(manager: Any, log: Any, ids: list[str], prompt: str, response: Any, model: str) -> None:
    """One LLM start and end per run id through ``manager``, then close ``log`` (its writing is timed too)."""
    for run_id in ids:
        manager.on_llm_start(prompt, run_id=run_id, model=model)
        manager.on_llm_end(response, run_id=run_id, model=model)
    log.close()


def _cached_ids() -> Callable[[int], list[str]]:
    """``ids(n)``: n run ids, the same list for every contender asking for n."""
    cache: dict[int, list[str]] = {}

    def ids(n: int) -> list[str]:
        if n not in cache:
            cache[n] = run_ids(n)
        return cache[n]

    return ids


def _log_bytes(cfg: Config, ids: Callable[[int], list[str]]) -> Callable[[int], bytes]:
    """``log_bytes(n)``: the bytes FileLogCallback (Rust) writes for the pairs of ``ids(n)`` (made once per n)."""
    prompt, response = pair_payload()
    cache: dict[int, bytes] = {}

    def log_bytes(n: int) -> bytes:
        if n not in cache:
            path = temp_path(cfg, "log-bytes")
            log = FileLogCallback(path, backend="rust")
            _fire_pairs(CallbackManager([log], backend="rust"), log, ids(n), prompt, response, MODEL)
            with open(path, "rb") as handle:
                cache[n] = handle.read()
            remove(path)
        return cache[n]

    return log_bytes


def _raw_write(cfg: Config, key: str, label: str, log_bytes: Callable[[int], bytes], *, chunked: bool,
               note: str = "") -> Contender:
    """Write ``log_bytes(n)`` to a new file opened with a 64 KiB buffer, in 64 KiB chunks or one ``write``
    per line (one per event), and close it: what writing the log costs without producing it."""

    def setup(n: int) -> Any:
        data = log_bytes(n)
        pieces: list[Any]
        if chunked:
            view = memoryview(data)
            pieces = [view[i:i + WRITE_BUFFER] for i in range(0, len(data), WRITE_BUFFER)]
        else:
            pieces = data.splitlines(keepends=True)
            expect(len(pieces), 2 * n, "log lines")
        return {"pieces": pieces, "size": len(data), "path": temp_path(cfg, f"raw-{key}")}

    def run(state: Any) -> None:
        with open(state["path"], "wb", buffering=WRITE_BUFFER) as handle:
            write = handle.write
            for piece in state["pieces"]:
                write(piece)

    def teardown(state: Any) -> None:
        try:
            expect(os.path.getsize(state["path"]), state["size"], "bytes written")
        finally:
            remove(state["path"])

    return Contender(key, label, setup, run, teardown, events_per_op=2, note=note)


def pair_contenders(cfg: Config) -> list[Contender]:
    prompt, response = pair_payload()
    model = MODEL
    ids = _cached_ids()

    def ours(backend: BackendName) -> Contender:
        def setup(n: int) -> Any:
            path = temp_path(cfg, f"pair-{backend}")
            metrics = MetricsCallback(backend=backend)
            log = FileLogCallback(path, backend=backend)
            return {"ids": ids(n), "path": path, "metrics": metrics, "log": log,
                    "manager": CallbackManager([metrics, log], backend=backend)}

        def run(state: Any) -> None:
            _fire_pairs(state["manager"], state["log"], state["ids"], prompt, response, model)

        def teardown(state: Any) -> None:
            n = len(state["ids"])
            try:
                expect(state["metrics"].get_metrics()["completed_calls"], n, "completed calls")
                expect(count_lines(state["path"]), 2 * n, "log lines")
            finally:
                remove(state["path"])

        return Contender(backend, f"rlm_toolkit ({backend})", setup, run, teardown, events_per_op=2)

    def plain(key: str, label: str, factory: Callable[[str], PlainJsonPair]) -> Contender:
        def setup(n: int) -> Any:
            path = temp_path(cfg, f"pair-{key}")
            return {"ids": ids(n), "path": path, "impl": factory(path)}

        def run(state: Any) -> None:
            impl = state["impl"]
            for run_id in state["ids"]:
                impl.on_llm_start(prompt, run_id, model)
                impl.on_llm_end(response, run_id, model)
            impl.close()

        def teardown(state: Any) -> None:
            n = len(state["ids"])
            try:
                expect(state["impl"].completed, n, "completed calls")
                expect(len(state["impl"].latencies), n, "latencies")
                expect(count_lines(state["path"]), 2 * n, "log lines")
            finally:
                remove(state["path"])

        return Contender(key, label, setup, run, teardown, events_per_op=2)

    orjson_label = "plain Python: orjson + 64 KiB buffered binary write"
    orjson_skip = missing("orjson")
    return [ours("rust"), ours("python"),
            plain("json", "plain Python: json.dumps + buffered text write", PlainJsonPair),
            Contender("orjson", orjson_label, skip=orjson_skip) if orjson_skip
            else plain("orjson", orjson_label, PlainOrjsonPair),
            langchain_pair(cfg, prompt, response),
            _raw_write(cfg, "floor", FLOOR_LABEL, _log_bytes(cfg, ids), chunked=False,
                       note="the log's bytes alone, no metrics")]


def metrics_contenders() -> list[Contender]:
    """``MetricsCallback`` alone through a ``CallbackManager``: the pair's start+end, no log; and the same calls
    to a manager with no callbacks, what the calls cost before anything is recorded."""
    prompt, response = pair_payload()
    model = MODEL
    ids = _cached_ids()

    def fire(state: Any) -> None:
        manager = state["manager"]
        for run_id in state["ids"]:
            manager.on_llm_start(prompt, run_id=run_id, model=model)
            manager.on_llm_end(response, run_id=run_id, model=model)

    def ours(backend: BackendName) -> Contender:
        def setup(n: int) -> Any:
            metrics = MetricsCallback(backend=backend)
            return {"ids": ids(n), "metrics": metrics, "manager": CallbackManager([metrics], backend=backend)}

        def teardown(state: Any) -> None:
            expect(state["metrics"].get_metrics()["completed_calls"], len(state["ids"]), "completed calls")

        return Contender(backend, f"rlm_toolkit MetricsCallback ({backend})", setup, fire, teardown, events_per_op=2)

    def no_callbacks(n: int) -> Any:
        return {"ids": ids(n), "manager": CallbackManager([], backend="rust")}

    return [ours("rust"), ours("python"),
            Contender("none", "rlm_toolkit CallbackManager with no callbacks (rust), the same calls", no_callbacks,
                      fire, events_per_op=2, note="floor: the calls alone, nothing recorded")]


def jsonl_contenders(cfg: Config) -> list[Contender]:
    prompt, response = pair_payload()
    ids = _cached_ids()
    log_bytes = _log_bytes(cfg, ids)

    def ours(backend: BackendName) -> Contender:
        def setup(n: int) -> Any:
            path = temp_path(cfg, f"jsonl-{backend}")
            log = FileLogCallback(path, backend=backend)
            return {"ids": ids(n), "path": path, "log": log, "manager": CallbackManager([log], backend=backend)}

        def run(state: Any) -> None:
            _fire_pairs(state["manager"], state["log"], state["ids"], prompt, response, MODEL)

        def teardown(state: Any) -> None:
            try:
                expect(count_lines(state["path"]), 2 * len(state["ids"]), "log lines")
            finally:
                remove(state["path"])

        return Contender(backend, f"rlm_toolkit FileLogCallback ({backend})", setup, run, teardown, events_per_op=2)

    return [ours("rust"), ours("python"),
            _raw_write(cfg, "raw-chunks", "raw buffered write of the same bytes, 64 KiB chunks", log_bytes,
                       chunked=True),
            _raw_write(cfg, "raw-lines", "raw buffered write of the same bytes, one line per write", log_bytes,
                       chunked=False)]


_BYTES_PER_EVENT: list[float] = []


def _jsonl_bytes_per_event() -> float:
    """Bytes per event of the JSONL that FileLogCallback (Rust) writes for the pair payload (measured once)."""
    if not _BYTES_PER_EVENT:
        prompt, response = pair_payload()
        directory = tempfile.mkdtemp(prefix="rlm-bench-")
        try:
            path = os.path.join(directory, "sample.jsonl")
            log = FileLogCallback(path, backend="rust")
            _fire_pairs(CallbackManager([log], backend="rust"), log, run_ids(100), prompt, response, MODEL)
            _BYTES_PER_EVENT.append(os.path.getsize(path) / 200)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    return _BYTES_PER_EVENT[0]


def add_throughput_notes(rows: list[Row]) -> None:
    """MB/s for the JSONL rows: bytes of the produced file per second."""
    line_bytes = _jsonl_bytes_per_event()
    for row in rows:
        if row.ns_per_event:
            mb_per_s = line_bytes / row.ns_per_event * 1e9 / 1e6
            row.extra["mb_per_s"] = mb_per_s
            row.note = (row.note + "; " if row.note else "") + f"{mb_per_s:,.0f} MB/s"
