"""Side-by-side benchmarks of the callbacks against plain Python and the peers (issue 4).

Run ``rlm-toolkit bench`` (or ``python -m rlm_toolkit.bench``); ``--quick`` for a smoke run, ``--cases`` to pick
cases, ``--markdown``/``--json``/``--chart`` to write the results. The peers (langchain-core, pluggy, blinker,
orjson, matplotlib for the chart) are optional: a missing one is skipped with a note in the table.

How things are measured
    Each implementation of a case is a ``Contender``: ``setup(n)`` (untimed) builds fresh state for ``n``
    operations, ``run(state)`` (timed with ``time.perf_counter_ns``) performs them *including* any close/flush
    that makes buffered work happen, ``teardown(state)`` (untimed) checks the work was really done and cleans
    up. The contenders of a case are run interleaved (one batch each, in an order that rotates every repeat)
    in this one process, with the cyclic garbage collector paused during timed batches, and each row reports
    the median over the repeats. The outer ``for`` loop that drives the calls is included in every row alike
    (its cost is printed under the table).

Ratios
    ``x rust`` is the row's ns/event divided by the ns/event of this package's Rust backend in the same case:
    2.0 means the row takes twice as long as the Rust backend (the Rust backend is 2x faster).

The same cases are exposed for ``benches/`` (pytest-benchmark): ``micro_cases``, ``measure_case``,
``run_cases`` and ``evaluate_targets``.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import io
import itertools
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

__all__ = [
    "CASE_GROUPS",
    "Case",
    "Config",
    "Contender",
    "Row",
    "Target",
    "benchmark_contender",
    "case_keys",
    "config_from_env",
    "evaluate_targets",
    "feed",
    "get_metrics_rows",
    "main",
    "measure_case",
    "micro_cases",
    "render_markdown",
    "rlm_call_rows",
    "rss_rows",
    "run_cases",
]

MODEL = "gpt-4o"
PROMPT_SHORT = "What is the capital of France? Answer in one word."
PAIR_PROMPT_CHARS = 200
PAIR_RESPONSE_CHARS = 300
WRITE_BUFFER = 64 * 1024
FANOUT_SIZES = (1, 4, 16)
TOKEN_WORDS = ("The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ".")

_UTC = timezone.utc


# -- configuration ------------------------------------------------------------------------------------------


@dataclass
class Config:
    """Sizes of one run. ``Config.full()`` is the issue's sizes; ``Config.quick()`` a smoke run for CI."""

    quick: bool = False
    repeats: int = 7
    """Timed batches per contender (the median is reported)."""
    batch_ms: float = 40.0
    """Target duration of one batch for the per-event cases, whose batch size is calibrated per contender."""
    pair_n: int = 20_000
    """LLM start+end pairs per batch in the pair case (the log is closed at the end of each batch)."""
    jsonl_n: int = 50_000
    """Pairs per batch in the JSONL bytes/s case."""
    token_n: int = 1_000_000
    """Tokens per batch in the token case."""
    token_repeats: int = 5
    feed_events: int = 10_000_000
    """Events fed before measuring ``get_metrics()`` latency and resident memory growth."""
    metrics_calls: int = 51
    rlm_calls: int = 300
    """Timed RLM calls per variant in the rlm-call case."""
    tmpdir: str | None = None
    """Where logs are written (a new temporary folder, removed afterwards, when None)."""

    @classmethod
    def full(cls) -> "Config":
        return cls()

    @classmethod
    def quick_config(cls) -> "Config":
        return cls(quick=True, repeats=3, batch_ms=5.0, pair_n=2_000, jsonl_n=2_000, token_n=20_000,
                   token_repeats=3, feed_events=200_000, metrics_calls=21, rlm_calls=25)


# -- results ------------------------------------------------------------------------------------------------


@dataclass
class Row:
    case: str
    key: str
    """Short id of the implementation within the case (``rust``, ``python``, ``json``, ``langchain`` ...)."""
    impl: str
    ns_per_event: float | None = None
    events_per_s: float | None = None
    ratio: float | None = None
    """ns/event divided by that of the case's Rust row."""
    note: str = ""
    samples: list[float] = field(default_factory=list)
    reference: bool = False
    skipped: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Target:
    name: str
    measured: float | None
    op: str
    """``>=``, ``<=`` or ``<``."""
    limit: float
    unit: str
    detail: str = ""

    @property
    def passed(self) -> bool | None:
        if self.measured is None:
            return None
        if self.op == ">=":
            return self.measured >= self.limit
        if self.op == "<=":
            return self.measured <= self.limit
        return self.measured < self.limit

    @property
    def status(self) -> str:
        return {True: "PASS", False: "FAIL", None: "N/A"}[self.passed]

    def describe(self) -> str:
        value = "not measured" if self.measured is None else f"{_fmt_num(self.measured)}{self.unit}"
        text = f"**{self.status}** {self.name}: {value} (target {self.op} {_fmt_num(self.limit)}{self.unit})"
        return text + (f" — {self.detail}" if self.detail else "")


class BenchVerifyError(AssertionError):
    """A contender did not do the work it was timed for (e.g. a handler was not called)."""


# -- contenders ---------------------------------------------------------------------------------------------


@dataclass
class Contender:
    key: str
    impl: str
    setup: Callable[[int], Any] | None = None
    run: Callable[[Any], Any] | None = None
    teardown: Callable[[Any], None] | None = None
    events_per_op: int = 1
    skip: str | None = None
    note: str = ""

    def time_batch(self, n: int) -> int:
        """One batch of ``n`` operations; returns the elapsed ns of ``run`` (setup/teardown untimed)."""
        assert self.setup is not None and self.run is not None
        state = self.setup(n)
        gc.collect()
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            start = time.perf_counter_ns()
            self.run(state)
            elapsed = time.perf_counter_ns() - start
        finally:
            if was_enabled:
                gc.enable()
        if self.teardown is not None:
            self.teardown(state)
        return elapsed


@dataclass
class Case:
    name: str
    title: str
    contenders: list[Contender]
    fixed_n: int | None = None
    """Operations per batch for every contender; None: calibrated per contender to ``Config.batch_ms``."""
    repeats: int | None = None
    cap_n: int = 2_000_000
    bench_n: int | None = None
    """Operations per round under pytest-benchmark (the same for every contender, so rounds compare)."""

    def contender(self, key: str) -> Contender:
        return next(c for c in self.contenders if c.key == key)


def _missing(module: str, package: str | None = None) -> str | None:
    try:
        importlib.import_module(module)
    except ImportError:
        return f"skipped: {package or module} not installed (pip install {package or module})"
    return None


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


def _temp_path(cfg: Config, stem: str) -> str:
    assert cfg.tmpdir is not None, "Config.tmpdir must be set (run_cases does it)"
    return os.path.join(cfg.tmpdir, f"{stem}-{uuid.uuid4().hex[:12]}.jsonl")


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _count_lines(path: str) -> int:
    count = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
    return count


def _expect(actual: Any, expected: Any, what: str) -> None:
    if actual != expected:
        raise BenchVerifyError(f"{what}: expected {expected!r}, got {actual!r}")


# -- fan-out ------------------------------------------------------------------------------------------------


def _page_handler_class() -> type:
    from .callbacks import BaseCallback

    class PageHandler(BaseCallback):
        """A handler as written on the docs page: ``def on_llm_start(self, prompt, **kwargs)``."""

        def __init__(self) -> None:
            self.calls = 0

        def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
            self.calls += 1

    return PageHandler


def _plain_fire(handlers: Sequence[Any], prompt: str, **kwargs: Any) -> None:
    """The plain for-loop fan-out, as a function: every handler, each call isolated."""
    for handler in handlers:
        try:
            handler.on_llm_start(prompt, **kwargs)
        except Exception:
            pass


def _fanout_contenders(size: int, *, overriders: int | None = None) -> list[Contender]:
    """Contenders firing ``on_llm_start`` to ``size`` handlers, of which ``overriders`` override it (default all)."""
    from .callbacks import BaseCallback, CallbackManager

    PageHandler = _page_handler_class()
    active = size if overriders is None else overriders
    prompt, run_id, model = PROMPT_SHORT, str(uuid.uuid4()), MODEL

    def handlers() -> list[Any]:
        return [PageHandler() for _ in range(active)] + [BaseCallback() for _ in range(size - active)]

    def check(state: Any, per_handler: int) -> None:
        calls = [h.calls for h in state["handlers"] if hasattr(h, "calls")]
        _expect(calls, [per_handler] * active, "handler calls")

    def ours(backend: str) -> Contender:
        def setup(n: int) -> Any:
            hs = handlers()
            return {"n": n, "handlers": hs, "manager": CallbackManager(hs, backend=backend)}

        def run(state: Any) -> None:
            manager = state["manager"]
            for _ in itertools.repeat(None, state["n"]):
                manager.on_llm_start(prompt, run_id=run_id, model=model)

        return Contender(backend, f"rlm_toolkit ({backend})", setup, run, lambda s: check(s, s["n"]))

    def plain_inline() -> Contender:
        def setup(n: int) -> Any:
            return {"n": n, "handlers": handlers()}

        def run(state: Any) -> None:
            hs = state["handlers"]
            for _ in itertools.repeat(None, state["n"]):
                for handler in hs:
                    try:
                        handler.on_llm_start(prompt, run_id=run_id, parent_run_id=None, model=model)
                    except Exception:
                        pass

        return Contender("plain-inline", "plain for-loop, inlined", setup, run, lambda s: check(s, s["n"]),
                         note="same handlers and keywords, try/except per call")

    def plain_function() -> Contender:
        def setup(n: int) -> Any:
            return {"n": n, "handlers": handlers()}

        def run(state: Any) -> None:
            hs = state["handlers"]
            fire = _plain_fire
            for _ in itertools.repeat(None, state["n"]):
                fire(hs, prompt, run_id=run_id, parent_run_id=None, model=model)

        return Contender("plain-func", "plain for-loop, in a function", setup, run, lambda s: check(s, s["n"]))

    def langchain() -> Contender:
        skip = _missing("langchain_core", "langchain-core")
        if skip:
            return Contender("langchain", "langchain-core CallbackManager", skip=skip)
        from langchain_core.callbacks import BaseCallbackHandler
        from langchain_core.callbacks import CallbackManager as LCManager

        class LCHandler(BaseCallbackHandler):
            def __init__(self) -> None:
                self.calls = 0

            def on_llm_start(self, serialized: Any, prompts: Any, **kwargs: Any) -> None:
                self.calls += 1

        serialized = {"name": model}
        lc_run_id = uuid.uuid4()

        def setup(n: int) -> Any:
            hs = [LCHandler() for _ in range(active)] + [BaseCallbackHandler() for _ in range(size - active)]
            return {"n": n, "handlers": hs, "manager": LCManager(handlers=hs)}

        def run(state: Any) -> None:
            manager = state["manager"]
            prompts = [prompt]
            for _ in itertools.repeat(None, state["n"]):
                manager.on_llm_start(serialized, prompts, run_id=lc_run_id)

        return Contender("langchain", "langchain-core CallbackManager", setup, run, lambda s: check(s, s["n"]))

    def pluggy_contender() -> Contender:
        skip = _missing("pluggy")
        if skip:
            return Contender("pluggy", "pluggy hook call", skip=skip)
        import pluggy

        hookspec, hookimpl = pluggy.HookspecMarker("rlmbench"), pluggy.HookimplMarker("rlmbench")

        class Spec:
            @hookspec
            def on_llm_start(self, prompt: str, run_id: Any, parent_run_id: Any, model: Any) -> None: ...

        class Plugin:
            def __init__(self) -> None:
                self.calls = 0

            @hookimpl
            def on_llm_start(self, prompt: str, run_id: Any, parent_run_id: Any, model: Any) -> None:
                self.calls += 1

        def setup(n: int) -> Any:
            pm = pluggy.PluginManager("rlmbench")
            pm.add_hookspecs(Spec)
            hs = [Plugin() for _ in range(active)]
            for index, plugin in enumerate(hs):
                pm.register(plugin, name=f"p{index}")
            return {"n": n, "handlers": hs, "hook": pm.hook}

        def run(state: Any) -> None:
            hook = state["hook"]
            for _ in itertools.repeat(None, state["n"]):
                hook.on_llm_start(prompt=prompt, run_id=run_id, parent_run_id=None, model=model)

        note = "registers only the overrider (opt-in hooks)" if active != size else "no error isolation"
        return Contender("pluggy", "pluggy hook call", setup, run, lambda s: check(s, s["n"]), note=note)

    def blinker_contender() -> Contender:
        skip = _missing("blinker")
        if skip:
            return Contender("blinker", "blinker send", skip=skip)
        import blinker

        class Receiver:
            def __init__(self) -> None:
                self.calls = 0

            def receive(self, sender: Any, **kwargs: Any) -> None:
                self.calls += 1

        def setup(n: int) -> Any:
            signal = blinker.Signal()
            hs = [Receiver() for _ in range(active)]
            for receiver in hs:
                signal.connect(receiver.receive)
            return {"n": n, "handlers": hs, "signal": signal}

        def run(state: Any) -> None:
            send = state["signal"].send
            for _ in itertools.repeat(None, state["n"]):
                send(None, prompt=prompt, run_id=run_id, parent_run_id=None, model=model)

        note = "connects only the overrider (opt-in)" if active != size else "no error isolation"
        return Contender("blinker", "blinker send", setup, run, lambda s: check(s, s["n"]), note=note)

    contenders = [ours("rust"), ours("python"), plain_inline(), plain_function(), langchain()]
    if overriders is None:
        contenders += [pluggy_contender(), blinker_contender()]
    return contenders


def _one_of_16_contenders() -> list[Contender]:
    """16 registered, one overrides ``on_llm_start``, against a single handler (the target's comparison)."""
    many = _fanout_contenders(16, overriders=1)
    single = _fanout_contenders(1)
    for contender in many:
        ours = contender.key in ("rust", "python")
        contender.impl += ", 16 (1 overrides)" if ours else ", 16 (1 overrides, all 16 called)"
    picked = {c.key: c for c in single}
    extra = []
    for key in ("rust", "python", "plain-inline"):
        contender = picked[key]
        contender.key += "-1"
        contender.impl += ", 1 handler"
        extra.append(contender)
    by_key = {c.key: c for c in many}
    order = [by_key["rust"], extra[0], by_key["python"], extra[1], by_key["plain-inline"], extra[2]]
    order += [c for c in many if c.key not in ("rust", "python", "plain-inline")]
    return order


# -- metrics + file log pair --------------------------------------------------------------------------------


def _pair_payload() -> tuple[str, Any]:
    from .types import LLMResponse, Usage

    prompt = ("Summarise the following paragraph about event hooks in LLM applications. " * 4)[:PAIR_PROMPT_CHARS]
    content = ("Callbacks let an application observe each step of an LLM call: start, tokens, end. " * 5)
    content = content[:PAIR_RESPONSE_CHARS]
    assert len(prompt) == PAIR_PROMPT_CHARS and len(content) == PAIR_RESPONSE_CHARS
    return prompt, LLMResponse(content, MODEL, Usage.of(50, 75))


def _run_ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


def _fire_pairs(manager: Any, log: Any, run_ids: list[str], prompt: str, response: Any, model: str) -> None:
    """One LLM start and end per run id through ``manager``, then close ``log`` (its writing is timed too)."""
    for run_id in run_ids:
        manager.on_llm_start(prompt, run_id=run_id, model=model)
        manager.on_llm_end(response, run_id=run_id, model=model)
    log.close()


class PlainJsonPair:
    """The hand-written pure-Python equivalent: counters, a latency list, cost, ``json.dumps`` + buffered text."""

    def __init__(self, path: str) -> None:
        from .pricing import PRICES_PER_MILLION

        self._file = open(path, "w", encoding="utf-8", buffering=WRITE_BUFFER)
        self._prices = PRICES_PER_MILLION
        self._starts: dict[str, float] = {}
        self.latencies: list[float] = []
        self.calls = self.completed = self.prompt_tokens = self.completion_tokens = 0
        self.cost = 0.0

    def _timestamp(self, now: float) -> Any:
        return datetime.fromtimestamp(now, _UTC).isoformat()

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")

    def on_llm_start(self, prompt: str, run_id: str, model: str) -> None:
        now = time.time()
        self._starts[run_id] = now
        self.calls += 1
        self._write({"ts": self._timestamp(now), "event": "llm_start", "run_id": run_id, "parent_run_id": None,
                     "model": model, "prompt": prompt})

    def on_llm_end(self, response: Any, run_id: str, model: str) -> None:
        now = time.time()
        start = self._starts.pop(run_id, None)
        if start is not None:
            self.latencies.append(now - start)
        usage = response.usage
        self.completed += 1
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        price = self._prices.get(model)
        if price is not None:
            self.cost += (usage.prompt_tokens * price[0] + usage.completion_tokens * price[1]) / 1e6
        self._write({"ts": self._timestamp(now), "event": "llm_end", "run_id": run_id, "parent_run_id": None,
                     "model": model, "response": response.content, "prompt_tokens": usage.prompt_tokens,
                     "completion_tokens": usage.completion_tokens, "total_tokens": usage.total_tokens})

    def close(self) -> None:
        self._file.close()


class PlainOrjsonPair(PlainJsonPair):
    """As ``PlainJsonPair`` with ``orjson.dumps`` (datetimes natively) and a 64 KiB buffered binary file."""

    def __init__(self, path: str) -> None:
        import orjson

        super().__init__(path)
        self._file.close()
        self._file = open(path, "wb", buffering=WRITE_BUFFER)  # type: ignore[assignment]
        self._dumps = orjson.dumps
        self._option = orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE

    def _timestamp(self, now: float) -> Any:
        return datetime.fromtimestamp(now, _UTC)

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(self._dumps(record, option=self._option))  # type: ignore[arg-type]


def _langchain_pair_handler_class() -> type:
    from langchain_core.callbacks import BaseCallbackHandler

    class LangchainMetricsLog(BaseCallbackHandler):
        """langchain-core handler doing ``PlainJsonPair``'s work from langchain's callback arguments."""

        def __init__(self, path: str) -> None:
            self.plain = PlainJsonPair(path)

        def on_llm_start(self, serialized: Any, prompts: Any, *, run_id: Any, **kwargs: Any) -> None:
            self.plain.on_llm_start(prompts[0], str(run_id), serialized.get("name"))

        def on_llm_end(self, response: Any, *, run_id: Any, **kwargs: Any) -> None:
            self.plain.on_llm_end(_LCResponseView(response), str(run_id), response.llm_output["model_name"])

    return LangchainMetricsLog


class _LCResponseView:
    """``.content``/``.usage`` of a langchain ``LLMResult``, read the way a handler would."""

    __slots__ = ("content", "usage")

    def __init__(self, result: Any) -> None:
        from .types import Usage

        self.content = result.generations[0][0].text
        usage = result.llm_output["token_usage"]
        self.usage = Usage(usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"])


def _pair_contenders(cfg: Config) -> list[Contender]:
    from .callbacks import CallbackManager, FileLogCallback, MetricsCallback

    prompt, response = _pair_payload()
    model = MODEL
    ids_cache: dict[int, list[str]] = {}

    def ids(n: int) -> list[str]:
        if n not in ids_cache:
            ids_cache[n] = _run_ids(n)
        return ids_cache[n]

    def ours(backend: str) -> Contender:
        def setup(n: int) -> Any:
            path = _temp_path(cfg, f"pair-{backend}")
            metrics = MetricsCallback(backend=backend)
            log = FileLogCallback(path, backend=backend)
            return {"ids": ids(n), "path": path, "metrics": metrics, "log": log,
                    "manager": CallbackManager([metrics, log], backend=backend)}

        def run(state: Any) -> None:
            _fire_pairs(state["manager"], state["log"], state["ids"], prompt, response, model)

        def teardown(state: Any) -> None:
            n = len(state["ids"])
            try:
                _expect(state["metrics"].get_metrics()["completed_calls"], n, "completed calls")
                _expect(_count_lines(state["path"]), 2 * n, "log lines")
            finally:
                _remove(state["path"])

        return Contender(backend, f"rlm_toolkit ({backend})", setup, run, teardown, events_per_op=2)

    def plain(key: str, label: str, factory: Callable[[str], PlainJsonPair], note: str = "") -> Contender:
        def setup(n: int) -> Any:
            path = _temp_path(cfg, f"pair-{key}")
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
                _expect(state["impl"].completed, n, "completed calls")
                _expect(len(state["impl"].latencies), n, "latencies")
                _expect(_count_lines(state["path"]), 2 * n, "log lines")
            finally:
                _remove(state["path"])

        return Contender(key, label, setup, run, teardown, events_per_op=2, note=note)

    contenders = [ours("rust"), ours("python"),
                  plain("json", "plain Python: json.dumps + buffered text write", PlainJsonPair)]
    skip = _missing("orjson")
    contenders.append(
        Contender("orjson", "plain Python: orjson + 64 KiB buffered binary write", skip=skip) if skip
        else plain("orjson", "plain Python: orjson + 64 KiB buffered binary write", PlainOrjsonPair)
    )
    skip = _missing("langchain_core", "langchain-core")
    if skip:
        contenders.append(Contender("langchain", "langchain-core handler (json.dumps work)", skip=skip))
    else:
        from langchain_core.callbacks import CallbackManager as LCManager
        from langchain_core.outputs import Generation, LLMResult

        handler_class = _langchain_pair_handler_class()
        serialized = {"name": model}
        usage = response.usage
        result = LLMResult(
            generations=[[Generation(text=response.content)]],
            llm_output={"model_name": model, "token_usage": {"prompt_tokens": usage.prompt_tokens,
                        "completion_tokens": usage.completion_tokens, "total_tokens": usage.total_tokens}},
        )
        uuid_cache: dict[int, list[uuid.UUID]] = {}

        def lc_setup(n: int) -> Any:
            if n not in uuid_cache:
                uuid_cache[n] = [uuid.uuid4() for _ in range(n)]
            path = _temp_path(cfg, "pair-langchain")
            handler = handler_class(path)
            return {"ids": uuid_cache[n], "path": path, "handler": handler, "manager": LCManager(handlers=[handler])}

        def lc_run(state: Any) -> None:
            manager = state["manager"]
            prompts = [prompt]
            for run_id in state["ids"]:
                run_manager = manager.on_llm_start(serialized, prompts, run_id=run_id)[0]
                run_manager.on_llm_end(result)
            state["handler"].plain.close()

        def lc_teardown(state: Any) -> None:
            n = len(state["ids"])
            try:
                _expect(state["handler"].plain.completed, n, "completed calls")
                _expect(_count_lines(state["path"]), 2 * n, "log lines")
            finally:
                _remove(state["path"])

        contenders.append(Contender("langchain", "langchain-core handler (json.dumps work)", lc_setup, lc_run,
                                    lc_teardown, events_per_op=2, note="LLMResult built once, outside the loop"))
    return contenders


# -- token hook ---------------------------------------------------------------------------------------------


def _token_contenders() -> list[Contender]:
    from .callbacks import CallbackManager, StreamingCallback

    run_id, model = str(uuid.uuid4()), MODEL
    words_cache: dict[int, list[str]] = {}

    def tokens(n: int) -> list[str]:
        if n not in words_cache:
            words_cache[n] = [TOKEN_WORDS[i % len(TOKEN_WORDS)] for i in range(n)]
        return words_cache[n]

    def check(state: Any) -> None:
        _expect(len(state["sink"]), len(state["tokens"]), "tokens delivered")

    def ours(backend: str) -> Contender:
        def setup(n: int) -> Any:
            sink: list[str] = []
            return {"tokens": tokens(n), "sink": sink,
                    "manager": CallbackManager([StreamingCallback(on_token=sink.append)], backend=backend)}

        def run(state: Any) -> None:
            manager = state["manager"]
            for token in state["tokens"]:
                manager.on_llm_new_token(token, run_id=run_id, model=model)

        return Contender(backend, f"rlm_toolkit ({backend})", setup, run, check,
                         note="StreamingCallback(on_token=list.append)")

    def plain_inline() -> Contender:
        def setup(n: int) -> Any:
            sink: list[str] = []
            return {"tokens": tokens(n), "sink": sink, "handlers": [StreamingCallback(on_token=sink.append)]}

        def run(state: Any) -> None:
            hs = state["handlers"]
            for token in state["tokens"]:
                for handler in hs:
                    try:
                        handler.on_llm_new_token(token, run_id=run_id, parent_run_id=None, model=model)
                    except Exception:
                        pass

        return Contender("plain-inline", "plain for-loop, inlined", setup, run, check,
                         note="same StreamingCallback, same keywords")

    def direct() -> Contender:
        def setup(n: int) -> Any:
            sink: list[str] = []
            return {"tokens": tokens(n), "sink": sink}

        def run(state: Any) -> None:
            on_token = state["sink"].append
            for token in state["tokens"]:
                on_token(token)

        return Contender("direct", "plain loop calling on_token directly", setup, run, check,
                         note="floor: no hook object at all")

    contenders = [ours("rust"), ours("python"), plain_inline(), direct()]
    skip = _missing("langchain_core", "langchain-core")
    if skip:
        contenders.append(Contender("langchain", "langchain-core run manager", skip=skip))
    else:
        from langchain_core.callbacks import BaseCallbackHandler
        from langchain_core.callbacks import CallbackManager as LCManager

        class LCTokens(BaseCallbackHandler):
            def __init__(self, sink: Callable[[str], None]) -> None:
                self.sink = sink

            def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
                self.sink(token)

        def lc_setup(n: int) -> Any:
            sink: list[str] = []
            manager = LCManager(handlers=[LCTokens(sink.append)])
            run_manager = manager.on_llm_start({"name": model}, [PROMPT_SHORT], run_id=uuid.uuid4())[0]
            return {"tokens": tokens(n), "sink": sink, "run_manager": run_manager}

        def lc_run(state: Any) -> None:
            run_manager = state["run_manager"]
            for token in state["tokens"]:
                run_manager.on_llm_new_token(token)

        contenders.append(Contender("langchain", "langchain-core run manager", lc_setup, lc_run, check))
    return contenders


# -- JSONL bytes/s ------------------------------------------------------------------------------------------


def _jsonl_contenders(cfg: Config) -> list[Contender]:
    from .callbacks import CallbackManager, FileLogCallback

    prompt, response = _pair_payload()
    model = MODEL
    ids_cache: dict[int, list[str]] = {}
    bytes_cache: dict[int, bytes] = {}

    def ids(n: int) -> list[str]:
        if n not in ids_cache:
            ids_cache[n] = _run_ids(n)
        return ids_cache[n]

    def produced_bytes(n: int) -> bytes:
        """The bytes FileLogCallback (Rust) writes for ``n`` pairs: what the raw writers write."""
        if n not in bytes_cache:
            path = _temp_path(cfg, "jsonl-source")
            log = FileLogCallback(path, backend="rust")
            _fire_pairs(CallbackManager([log], backend="rust"), log, ids(n), prompt, response, model)
            with open(path, "rb") as handle:
                bytes_cache[n] = handle.read()
            _remove(path)
        return bytes_cache[n]

    def ours(backend: str) -> Contender:
        def setup(n: int) -> Any:
            path = _temp_path(cfg, f"jsonl-{backend}")
            log = FileLogCallback(path, backend=backend)
            return {"ids": ids(n), "path": path, "log": log, "manager": CallbackManager([log], backend=backend)}

        def run(state: Any) -> None:
            _fire_pairs(state["manager"], state["log"], state["ids"], prompt, response, model)

        def teardown(state: Any) -> None:
            try:
                state["bytes"] = os.path.getsize(state["path"])
                _expect(_count_lines(state["path"]), 2 * len(state["ids"]), "log lines")
            finally:
                _remove(state["path"])

        return Contender(backend, f"rlm_toolkit FileLogCallback ({backend})", setup, run, teardown, events_per_op=2)

    def raw(key: str, label: str, chunked: bool) -> Contender:
        def setup(n: int) -> Any:
            data = produced_bytes(n)
            pieces: list[Any]
            if chunked:
                view = memoryview(data)
                pieces = [view[i:i + WRITE_BUFFER] for i in range(0, len(data), WRITE_BUFFER)]
            else:
                pieces = data.splitlines(keepends=True)
            return {"n": n, "pieces": pieces, "size": len(data), "path": _temp_path(cfg, f"jsonl-{key}")}

        def run(state: Any) -> None:
            with open(state["path"], "wb", buffering=WRITE_BUFFER) as handle:
                write = handle.write
                for piece in state["pieces"]:
                    write(piece)

        def teardown(state: Any) -> None:
            try:
                _expect(os.path.getsize(state["path"]), state["size"], "bytes written")
            finally:
                _remove(state["path"])

        return Contender(key, label, setup, run, teardown, events_per_op=2)

    return [ours("rust"), ours("python"),
            raw("raw-chunks", "raw buffered write of the same bytes, 64 KiB chunks", True),
            raw("raw-lines", "raw buffered write of the same bytes, one line per write", False)]


# -- the micro cases ----------------------------------------------------------------------------------------


CASE_GROUPS: dict[str, tuple[str, ...]] = {
    "fanout": tuple(f"fanout-{n}" for n in FANOUT_SIZES),
    "one-of-16": ("one-of-16",),
    "pair": ("pair",),
    "tokens": ("tokens",),
    "get-metrics": ("get-metrics",),
    "rss": ("rss",),
    "jsonl": ("jsonl",),
    "rlm-call": ("rlm-call",),
}
ALL_CASES: tuple[str, ...] = tuple(name for names in CASE_GROUPS.values() for name in names)
CASE_TITLES: dict[str, str] = {
    **{f"fanout-{n}": f"on_llm_start fan-out to {n} Python handler{'s' if n > 1 else ''}" for n in FANOUT_SIZES},
    "one-of-16": "16 handlers registered, 1 overrides on_llm_start (vs 1 handler)",
    "pair": "Metrics + FileLog callbacks: llm start+end (200/300 chars), log close timed",
    "tokens": "on_llm_new_token to a StreamingCallback",
    "get-metrics": "get_metrics() latency after the feed (ns per call)",
    "rss": "resident memory growth over the feed (metrics + JSONL)",
    "jsonl": "JSONL throughput: FileLogCallback vs raw writes of the same bytes",
    "rlm-call": "one RLM.run against the local server: 4 callbacks vs none (ns per call)",
}


def micro_cases(cfg: Config, names: Iterable[str] | None = None) -> dict[str, Case]:
    """The cases measured by interleaved batches of contenders (not get-metrics/rss/rlm-call)."""
    wanted = set(ALL_CASES if names is None else names)
    cases: dict[str, Case] = {}
    scale = 10 if cfg.quick else 1
    for n in FANOUT_SIZES:
        name = f"fanout-{n}"
        if name in wanted:
            cases[name] = Case(name, CASE_TITLES[name], _fanout_contenders(n), bench_n=max(500, 40_000 // n) // scale)
    if "one-of-16" in wanted:
        cases["one-of-16"] = Case("one-of-16", CASE_TITLES["one-of-16"], _one_of_16_contenders(),
                                  bench_n=20_000 // scale)
    if "pair" in wanted:
        cases["pair"] = Case("pair", CASE_TITLES["pair"], _pair_contenders(cfg), fixed_n=cfg.pair_n)
    if "tokens" in wanted:
        cases["tokens"] = Case("tokens", CASE_TITLES["tokens"] + f" ({cfg.token_n:,} tokens per batch)",
                               _token_contenders(), fixed_n=cfg.token_n, repeats=cfg.token_repeats)
    if "jsonl" in wanted:
        cases["jsonl"] = Case("jsonl", CASE_TITLES["jsonl"], _jsonl_contenders(cfg), fixed_n=cfg.jsonl_n)
    return cases


def case_keys(case_name: str) -> list[str]:
    """The implementation keys of a micro case (for pytest parametrisation; nothing runs)."""
    return [c.key for c in micro_cases(config_from_env(), [case_name])[case_name].contenders]


def _calibrate(contender: Contender, target_ns: float, cap: int) -> int:
    """A batch size taking about ``target_ns``; the runs made here also warm the contender up."""
    n = 64
    while True:
        elapsed = contender.time_batch(n)
        if elapsed >= target_ns / 8 or n >= cap:
            break
        n = min(cap, n * 8)
    return max(64, min(cap, int(n * target_ns / max(elapsed, 1))))


def config_from_env() -> Config:
    """``Config.quick_config()`` when ``$RLM_BENCH_QUICK`` is set (not 0), else the full sizes."""
    quick = os.environ.get("RLM_BENCH_QUICK", "") not in ("", "0")
    return Config.quick_config() if quick else Config.full()


def benchmark_contender(benchmark: Any, case: Case, contender: Contender, cfg: Config) -> None:
    """Time ``contender`` with pytest-benchmark's ``benchmark.pedantic``: one round = one batch of the case.

    Every contender of a case gets the same batch size, so pytest-benchmark's rounds compare within the group;
    ``extra_info`` records the events per round and the resulting ns/event.
    """
    if contender.skip is not None or contender.setup is None or contender.run is None:
        raise ValueError(f"{case.name}/{contender.key} cannot run: {contender.skip}")
    n = case.bench_n or case.fixed_n or 1000
    benchmark.group = case.name
    benchmark.extra_info.update(case=case.name, implementation=contender.impl, ops_per_round=n,
                                events_per_round=n * contender.events_per_op)
    setup, run = contender.setup, contender.run
    benchmark.pedantic(run, setup=lambda: ((setup(n),), {}), teardown=contender.teardown,
                       rounds=case.repeats or cfg.repeats, warmup_rounds=1, iterations=1)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["median_ns_per_event"] = stats.stats.median * 1e9 / (n * contender.events_per_op)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure_case(case: Case, cfg: Config, *, progress: bool = False) -> list[Row]:
    """Run the contenders of ``case`` interleaved; one ``Row`` per contender with the median ns/event."""
    live = [c for c in case.contenders if c.skip is None]
    sizes: dict[str, int] = {}
    errors: dict[str, str] = {}
    for contender in live:
        try:
            if case.fixed_n is None:
                sizes[contender.key] = _calibrate(contender, cfg.batch_ms * 1e6, case.cap_n)
            else:
                sizes[contender.key] = case.fixed_n
                contender.time_batch(max(1, case.fixed_n // 10))  # warm-up
        except Exception as error:  # a broken competitor must not stop the suite
            errors[contender.key] = f"{type(error).__name__}: {error}"
    samples: dict[str, list[float]] = {c.key: [] for c in live}
    repeats = case.repeats or cfg.repeats
    runnable = [c for c in live if c.key not in errors]
    for repeat in range(repeats):
        if progress:
            _log(f"  {case.name}: repeat {repeat + 1}/{repeats}")
        shift = repeat % max(1, len(runnable))
        for contender in runnable[shift:] + runnable[:shift]:
            if contender.key in errors:
                continue
            n = sizes[contender.key]
            try:
                elapsed = contender.time_batch(n)
            except Exception as error:
                errors[contender.key] = f"{type(error).__name__}: {error}"
                continue
            samples[contender.key].append(elapsed / (n * contender.events_per_op))
    rows: list[Row] = []
    for contender in case.contenders:
        row = Row(case.name, contender.key, contender.impl, note=contender.note, reference=contender.key == "rust")
        if contender.skip is not None:
            row.skipped, row.note = contender.skip, contender.skip
        elif contender.key in errors:
            row.skipped = row.note = f"error: {errors[contender.key]}"
        else:
            row.samples = samples[contender.key]
            row.ns_per_event = statistics.median(row.samples)
            row.events_per_s = 1e9 / row.ns_per_event
            row.extra["ops_per_batch"] = sizes[contender.key]
        rows.append(row)
    _fill_ratios(rows)
    if case.name == "jsonl":
        _add_throughput_notes(rows)
    return rows


def _fill_ratios(rows: list[Row]) -> None:
    reference = next((r for r in rows if r.reference and r.ns_per_event), None)
    for row in rows:
        if reference is not None and row.ns_per_event is not None:
            row.ratio = row.ns_per_event / reference.ns_per_event


def _add_throughput_notes(rows: list[Row]) -> None:
    """MB/s for the JSONL rows: bytes of the produced file per second."""
    line_bytes = _jsonl_bytes_per_event()
    for row in rows:
        if row.ns_per_event:
            mb_per_s = line_bytes / row.ns_per_event * 1e9 / 1e6
            row.extra["mb_per_s"] = mb_per_s
            row.note = (row.note + "; " if row.note else "") + f"{mb_per_s:,.0f} MB/s"


_BYTES_PER_EVENT: list[float] = []


def _jsonl_bytes_per_event() -> float:
    if not _BYTES_PER_EVENT:
        from .callbacks import CallbackManager, FileLogCallback

        prompt, response = _pair_payload()
        directory = tempfile.mkdtemp(prefix="rlm-bench-")
        try:
            path = os.path.join(directory, "sample.jsonl")
            log = FileLogCallback(path, backend="rust")
            manager = CallbackManager([log], backend="rust")
            for run_id in _run_ids(100):
                manager.on_llm_start(prompt, run_id=run_id, model=MODEL)
                manager.on_llm_end(response, run_id=run_id, model=MODEL)
            log.close()
            _BYTES_PER_EVENT.append(os.path.getsize(path) / 200)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    return _BYTES_PER_EVENT[0]


# -- the long feed: get_metrics() latency and resident memory -----------------------------------------------


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _hwm_bytes() -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the process's peak RSS (VmHWM) to the current RSS (Linux ``clear_refs``); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


@dataclass
class FeedResult:
    events: int
    ns_per_event: float
    rss_created: int | None
    rss_warm: int | None
    rss_after: int | None
    hwm_before: int | None
    hwm_after: int | None
    log_bytes: int
    warm_events: int
    """Events fed before ``rss_warm`` was read (the metrics hold ``warm_events + events``)."""
    metrics: Any
    """The fed ``MetricsCallback`` (kept for the get_metrics measurement)."""


def feed(cfg: Config, events: int | None = None, *, with_log: bool = True, progress: bool = False) -> FeedResult:
    """Fire ``events`` events (LLM start/end pairs, 200/300 chars) to Rust metrics + JSONL; RSS around it.

    ``with_log=False`` feeds the ``MetricsCallback`` alone (to tell the two sinks' memory apart).
    """
    from .callbacks import CallbackManager, FileLogCallback, MetricsCallback

    total = cfg.feed_events if events is None else events
    pairs = total // 2
    prompt, response = _pair_payload()
    model = MODEL
    ids = _run_ids(1024)
    path = _temp_path(cfg, "feed")
    gc.collect()
    metrics = MetricsCallback(backend="rust")
    log = FileLogCallback(path, backend="rust") if with_log else None
    manager = CallbackManager([metrics, log] if log is not None else [metrics], backend="rust")
    rss_created = _rss_bytes()
    warm_pairs = min(5_000, max(1, pairs // 100))
    for index in range(warm_pairs):
        run_id = ids[index & 1023]
        manager.on_llm_start(prompt, run_id=run_id, model=model)
        manager.on_llm_end(response, run_id=run_id, model=model)
    if log is not None:
        log.flush()
    gc.collect()
    peak_reset = _reset_peak_rss()
    rss_warm, hwm_before = _rss_bytes(), (_hwm_bytes() if peak_reset else None)
    step = max(1, pairs // 10)
    start = time.perf_counter_ns()
    done = 0
    while done < pairs:
        chunk = min(step, pairs - done)
        for index in range(done, done + chunk):
            run_id = ids[index & 1023]
            manager.on_llm_start(prompt, run_id=run_id, model=model)
            manager.on_llm_end(response, run_id=run_id, model=model)
        done += chunk
        if progress:
            _log(f"  feed{'' if with_log else ' (metrics only)'}: {2 * done:,}/{2 * pairs:,} events")
    if log is not None:
        log.flush()
    elapsed = time.perf_counter_ns() - start
    gc.collect()
    rss_after, hwm_after = _rss_bytes(), _hwm_bytes()
    log_bytes = 0
    if log is not None:
        log.close()
        log_bytes = os.path.getsize(path)
        _remove(path)
    return FeedResult(2 * pairs, elapsed / (2 * pairs), rss_created, rss_warm, rss_after, hwm_before, hwm_after,
                      log_bytes, 2 * warm_pairs, metrics)


def get_metrics_rows(cfg: Config, fed: FeedResult) -> list[Row]:
    metrics = fed.metrics
    first = time.perf_counter_ns()
    snapshot = metrics.get_metrics()
    first = time.perf_counter_ns() - first
    _expect(snapshot["completed_calls"] + snapshot["total_calls"] > 0, True, "metrics were fed")
    samples = []
    for _ in range(cfg.metrics_calls):
        start = time.perf_counter_ns()
        metrics.get_metrics()
        samples.append(float(time.perf_counter_ns() - start))
    median = statistics.median(samples)
    rows = [Row("get-metrics", "rust", f"MetricsCallback.get_metrics() (rust) after {fed.events:,} events",
                median, 1e9 / median, 1.0, note=f"first call {first / 1e6:.3f} ms; max {max(samples) / 1e6:.3f} ms",
                samples=samples, reference=True, extra={"events": fed.events, "first_ns": first})]
    # The plain-Python way: a latency list, percentiles by sorting it (as many samples as completed calls).
    count = min(fed.events // 2, 5_000_000)
    latencies = [0.5 + (i * 7919 % 1000) / 1000 for i in range(count)]
    plain_samples = []
    for _ in range(max(3, min(7, cfg.metrics_calls))):
        start = time.perf_counter_ns()
        ordered = sorted(latencies)
        _ = [ordered[min(count - 1, int(q * count))] for q in (0.5, 0.95, 0.99)], sum(latencies) / count
        plain_samples.append(float(time.perf_counter_ns() - start))
    del latencies
    plain = statistics.median(plain_samples)
    rows.append(Row("get-metrics", "plain-sorted", f"plain Python: sorted() percentiles of {count:,} latencies",
                    plain, 1e9 / plain, plain / median, samples=plain_samples))
    return rows


def _rss_row(fed: FeedResult, key: str, label: str) -> Row:
    growth = None if fed.rss_after is None or fed.rss_warm is None else (fed.rss_after - fed.rss_warm) / 2**20
    since_created = (None if fed.rss_after is None or fed.rss_created is None
                     else (fed.rss_after - fed.rss_created) / 2**20)
    peak = (None if fed.hwm_after is None or fed.hwm_before is None or fed.rss_warm is None
            else (fed.hwm_after - fed.rss_warm) / 2**20)
    note = (f"RSS +{_fmt_num(growth)} MB after warm-up (+{_fmt_num(since_created)} MB since creation; "
            f"peak +{_fmt_num(peak)} MB)")
    if fed.log_bytes:
        note += f"; {fed.log_bytes / 1e9:.2f} GB of JSONL"
    return Row("rss", key, f"{label}, {fed.events:,} events (feed rate)", fed.ns_per_event, 1e9 / fed.ns_per_event,
               note=note, reference=key == "rust",
               extra={"rss_growth_mb": growth, "rss_growth_since_creation_mb": since_created,
                      "peak_growth_mb": peak, "events": fed.events, "log_bytes": fed.log_bytes})


def rss_rows(fed: FeedResult, metrics_only: FeedResult | None = None) -> list[Row]:
    """The RSS rows: metrics + JSONL (the target's), and optionally the metrics alone (diagnostic)."""
    rows = [_rss_row(fed, "rust", "rlm_toolkit (rust) metrics + JSONL")]
    if metrics_only is not None:
        rows.append(_rss_row(metrics_only, "rust-metrics-only", "rlm_toolkit (rust) MetricsCallback alone"))
    _fill_ratios(rows)
    return rows


# -- one RLM call against the local server ------------------------------------------------------------------


def rlm_call_rows(cfg: Config, *, progress: bool = False) -> list[Row]:
    from .callbacks import BaseCallback, CallbackManager, ConsoleCallback, FileLogCallback, MetricsCallback
    from .rlm import RLM
    from .server import LocalServer

    class Custom(BaseCallback):
        def __init__(self) -> None:
            self.calls = 0

        def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
            self.calls += 1

        def on_llm_end(self, response: Any, **kwargs: Any) -> None:
            self.calls += 1

    def four(backend: str) -> tuple[list[Any], FileLogCallback]:
        log = FileLogCallback(_temp_path(cfg, f"rlm-{backend}"), backend=backend)
        return [MetricsCallback(backend=backend), log, ConsoleCallback(stream=io.StringIO()), Custom()], log

    prompt = "Hello! What can you do?"
    logs: list[FileLogCallback] = []
    rust_callbacks, log = four("rust")
    logs.append(log)
    python_callbacks, log = four("python")
    logs.append(log)
    diagnostic_log = FileLogCallback(_temp_path(cfg, "rlm-diag"), backend="rust")
    logs.append(diagnostic_log)
    with LocalServer() as server:
        # One RLM (one client, one connection pool) whose ``callbacks`` manager is swapped before each call:
        # separate RLM objects differ by a few % on their own (connection state), which would swamp the effect.
        rlm = RLM.from_openai(MODEL, callbacks=CallbackManager(rust_callbacks, backend="rust"),
                              base_url=server.base_url, api_key=server.api_key)
        managers: dict[str, Any] = {
            "none": CallbackManager(backend="rust"),
            "rust": rlm.callbacks,
            "python": CallbackManager(python_callbacks, backend="python"),
            "rust-no-console": CallbackManager([MetricsCallback(backend="rust"), diagnostic_log, Custom()],
                                               backend="rust"),
            "console-only": CallbackManager([ConsoleCallback(stream=io.StringIO())], backend="rust"),
        }
        samples: dict[str, list[float]] = {key: [] for key in managers}
        order = list(managers)
        warm = max(5, cfg.rlm_calls // 10)
        try:
            for _ in range(warm):  # warm-up: connections, caches
                for manager in managers.values():
                    rlm.callbacks = manager
                    rlm.run(prompt)
            for index in range(cfg.rlm_calls):
                if progress and index % 100 == 0:
                    _log(f"  rlm-call: {index}/{cfg.rlm_calls}")
                shift = index % len(order)
                for key in order[shift:] + order[:shift]:
                    rlm.callbacks = managers[key]
                    start = time.perf_counter_ns()
                    rlm.run(prompt)
                    samples[key].append(float(time.perf_counter_ns() - start))
                if index % 50 == 49:
                    server.reset()
        finally:
            rlm.close()
            for log in logs:
                log.close()
                _remove(log.log_path)
    _expect(rust_callbacks[3].calls, 2 * (cfg.rlm_calls + warm), "custom callback calls")

    # Direct estimate: the same 4 callbacks fed the 2 events of one call, outside the RLM (far less noisy).
    direct = direct_callback_cost(cfg)
    medians = {key: statistics.median(values) for key, values in samples.items()}
    base = medians["none"]
    rows = [Row("rlm-call", "none", "RLM.run, no callbacks", base, 1e9 / base, note="baseline",
                samples=samples["none"])]
    labels = {"rust": "RLM.run, 4 callbacks, rlm_toolkit (rust)",
              "python": "RLM.run, 4 callbacks, rlm_toolkit (python)",
              "rust-no-console": "RLM.run, Metrics + FileLog + custom (rust), no Console",
              "console-only": "RLM.run, ConsoleCallback only"}
    for key, label in labels.items():
        overhead = (medians[key] - base) / base * 100
        paired = statistics.median(b - a for a, b in zip(samples["none"], samples[key])) / base * 100
        extra: dict[str, Any] = {"overhead_pct": overhead, "paired_overhead_pct": paired}
        note = f"{overhead:+.2f}% vs none (medians); paired {paired:+.2f}%"
        if key in direct:
            extra.update(direct_callback_ns=direct[key], direct_overhead_pct=direct[key] / base * 100)
            note += f"; direct: callbacks {direct[key] / 1e3:.1f} us = {direct[key] / base * 100:.2f}% of a call"
        else:
            note += " (diagnostic)"
        rows.append(Row("rlm-call", key, label, medians[key], 1e9 / medians[key], note=note, samples=samples[key],
                        reference=key == "rust", extra=extra))
    _fill_ratios(rows)
    return rows


def direct_callback_cost(cfg: Config) -> dict[str, float]:
    """ns for the ``on_llm_start`` + ``on_llm_end`` of one call through the 4 callbacks, per backend."""
    from .callbacks import BaseCallback, CallbackManager, ConsoleCallback, FileLogCallback, MetricsCallback
    from .types import LLMResponse, Usage

    class Custom(BaseCallback):
        def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
            pass

        def on_llm_end(self, response: Any, **kwargs: Any) -> None:
            pass

    prompt = "Hello! What can you do?"
    response = LLMResponse("Hello! You said: Hello! What can you do?", MODEL, Usage.of(8, 7), "stop")
    result: dict[str, float] = {}
    pairs = 500 if cfg.quick else 5_000
    for backend in ("rust", "python"):
        samples = []
        for _ in range(cfg.repeats):
            log = FileLogCallback(_temp_path(cfg, f"direct-{backend}"), backend=backend)
            manager = CallbackManager([MetricsCallback(backend=backend), log,
                                       ConsoleCallback(stream=io.StringIO()), Custom()], backend=backend)
            ids = _run_ids(pairs)
            parent = str(uuid.uuid4())
            start = time.perf_counter_ns()
            for run_id in ids:
                manager.on_llm_start(prompt, run_id=run_id, parent_run_id=parent, model=MODEL)
                manager.on_llm_end(response, run_id=run_id, parent_run_id=parent, model=MODEL)
            log.close()
            samples.append((time.perf_counter_ns() - start) / pairs)
            _remove(log.log_path)
        result[backend] = statistics.median(samples)
    return result


# -- targets ------------------------------------------------------------------------------------------------


def _find(rows: list[Row], case: str, key: str) -> Row | None:
    return next((r for r in rows if r.case == case and r.key == key and r.ns_per_event is not None), None)


def _ratio(rows: list[Row], case: str, slower: str, faster: str) -> float | None:
    a, b = _find(rows, case, slower), _find(rows, case, faster)
    if a is None or b is None:
        return None
    return a.ns_per_event / b.ns_per_event  # type: ignore[operator]


def evaluate_targets(rows: list[Row]) -> list[Target]:
    """The issue's targets, each from rows measured in the same run (N/A when a row is missing)."""
    targets: list[Target] = []
    cases = {r.case for r in rows}
    if "pair" in cases:
        targets += [
            Target("pair: rust vs plain json.dumps", _ratio(rows, "pair", "json", "rust"), ">=", 10, "x"),
            Target("pair: rust vs orjson", _ratio(rows, "pair", "orjson", "rust"), ">=", 2, "x"),
            Target("pair: rust vs langchain-core", _ratio(rows, "pair", "langchain", "rust"), ">=", 20, "x"),
        ]
        rust = _find(rows, "pair", "rust")
        rate = None if rust is None or rust.events_per_s is None else rust.events_per_s / 1e6
        targets.append(Target("pair: rust throughput", rate, ">=", 3, "M events/s"))
    for n in FANOUT_SIZES:
        if f"fanout-{n}" in cases:
            targets.append(Target(f"fan-out to {n}: rust / plain inlined loop",
                                  _ratio(rows, f"fanout-{n}", "rust", "plain-inline"), "<=", 1.3, "x"))
    if "one-of-16" in cases:
        targets.append(Target("16 with 1 overrider / 1 handler (rust)", _ratio(rows, "one-of-16", "rust", "rust-1"),
                              "<=", 1.2, "x"))
    if "get-metrics" in cases:
        row = _find(rows, "get-metrics", "rust")
        events = row.extra.get("events") if row else None
        targets.append(Target(f"get_metrics() after {events:,} events" if events else "get_metrics() latency",
                              None if row is None else row.ns_per_event / 1e6, "<", 1, " ms",  # type: ignore[operator]
                              "" if events is None or events >= 10**7 else "fewer than 10^7 events (--quick)"))
    if "rss" in cases:
        row = _find(rows, "rss", "rust")
        events = row.extra.get("events") if row else None
        targets.append(Target(f"RSS growth over {events:,} events" if events else "RSS growth",
                              None if row is None else row.extra.get("rss_growth_mb"), "<", 10, " MB",
                              "" if events is None or events >= 10**7 else "fewer than 10^7 events (--quick)"))
    if "rlm-call" in cases:
        row = _find(rows, "rlm-call", "rust")
        detail = ""
        if row is not None:
            detail = (f"paired {row.extra['paired_overhead_pct']:+.2f}%, direct estimate "
                      f"{row.extra['direct_overhead_pct']:.2f}%")
        targets.append(Target("callbacks' share of a loopback RLM call (rust, medians)",
                              None if row is None else row.extra["overhead_pct"], "<", 2, "%", detail))
    return targets


# -- running and reporting ----------------------------------------------------------------------------------


def expand_cases(spec: str | None) -> list[str]:
    if not spec:
        return list(ALL_CASES)
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if part in CASE_GROUPS:
            names += [n for n in CASE_GROUPS[part] if n not in names]
        elif part in ALL_CASES:
            if part not in names:
                names.append(part)
        else:
            raise ValueError(f"unknown case {part!r}; choose from {', '.join([*CASE_GROUPS, *ALL_CASES[:3]])}")
    return names


def loop_overhead_ns() -> float:
    """ns per iteration of the empty ``for _ in itertools.repeat(None, n)`` loop that drives every row."""
    samples = []
    n = 1_000_000
    for _ in range(5):
        start = time.perf_counter_ns()
        for _ in itertools.repeat(None, n):
            pass
        samples.append((time.perf_counter_ns() - start) / n)
    return statistics.median(samples)


def run_cases(names: Sequence[str], cfg: Config, *, progress: bool = False) -> list[Row]:
    """Measure the named cases (see ``ALL_CASES``); logs go to ``cfg.tmpdir`` or a temporary folder."""
    own_tmp = cfg.tmpdir is None
    if own_tmp:
        cfg.tmpdir = tempfile.mkdtemp(prefix="rlm-bench-")
    rows: list[Row] = []
    try:
        micro = micro_cases(cfg, names)
        fed: FeedResult | None = None
        for name in names:
            if progress:
                _log(f"case {name}: {CASE_TITLES[name]}")
            started = time.perf_counter()
            if name in micro:
                rows += measure_case(micro[name], cfg, progress=progress)
            elif name in ("get-metrics", "rss"):
                if fed is None:
                    fed = feed(cfg, progress=progress)
                if name == "get-metrics":
                    rows += get_metrics_rows(cfg, fed)
                else:
                    rows += rss_rows(fed, feed(cfg, with_log=False, progress=progress))
            elif name == "rlm-call":
                rows += rlm_call_rows(cfg, progress=progress)
            if progress:
                _log(f"  done in {time.perf_counter() - started:.1f} s")
    finally:
        if own_tmp:
            shutil.rmtree(cfg.tmpdir, ignore_errors=True)  # type: ignore[arg-type]
            cfg.tmpdir = None
    return rows


def _fmt_num(value: float | None) -> str:
    if value is None:
        return "—"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _fmt_rate(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 1e6:
        return f"{value / 1e6:.2f} M"
    if value >= 1e3:
        return f"{value / 1e3:.1f} k"
    return f"{value:.1f}"


def environment() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "rlm_toolkit": _version("rlm_toolkit"),
    }
    for dist in ("langchain-core", "pluggy", "blinker", "orjson", "matplotlib"):
        info[dist] = _version(dist)
    return info


def render_markdown(rows: list[Row], targets: list[Target], cfg: Config, *, loop_ns: float | None = None,
                    env: dict[str, Any] | None = None) -> str:
    lines = ["| case | implementation | ns/event | events/s | × rust | note |", "|---|---|---:|---:|---:|---|"]
    for row in rows:
        ratio = "—" if row.ratio is None else ("1 (ref)" if row.reference else f"{row.ratio:.2f}")
        impl = f"**{row.impl}**" if row.reference else row.impl
        note = row.note.replace("|", "\\|")
        lines.append(f"| {row.case} | {impl} | {_fmt_num(row.ns_per_event)} | {_fmt_rate(row.events_per_s)} | "
                     f"{ratio} | {note} |")
    lines.append("")
    lines.append(f"Medians of {cfg.repeats} interleaved batches per implementation"
                 f"{' (--quick sizes)' if cfg.quick else ''}. `× rust` = ns/event ÷ the Rust backend's in the same "
                 "case (above 1: the Rust backend is that many times faster). get-metrics and rlm-call rows are "
                 "ns per call; the rss row's ns/event is the feed rate.")
    if loop_ns is not None:
        lines.append(f"Every row includes the driving `for` loop: {loop_ns:.1f} ns per iteration here.")
    if env:
        versions = ", ".join(f"{k} {v}" for k, v in env.items() if v is not None)
        lines.append(f"Environment: {versions}.")
    if targets:
        lines += ["", "Targets (issue 4):", ""]
        lines += [f"- {target.describe()}" for target in targets]
    return "\n".join(lines) + "\n"


def write_chart(rows: list[Row], path: str) -> str | None:
    """A PNG bar chart of ns/event per case (log scale); returns an error message instead if impossible."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "chart not written: matplotlib is not installed (pip install matplotlib, or the `bench` extra)"
    cases = [c for c in dict.fromkeys(r.case for r in rows) if any(r.ns_per_event for r in rows if r.case == c)]
    if not cases:
        return "chart not written: no measured rows"
    heights = [sum(1 for r in rows if r.case == c and r.ns_per_event) for c in cases]
    fig, axes = plt.subplots(len(cases), 1, figsize=(10, 0.45 * sum(heights) + 1.1 * len(cases)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for axis, case in zip(axes[:, 0], cases):
        measured = [r for r in rows if r.case == case and r.ns_per_event]
        labels = [r.impl if len(r.impl) <= 60 else r.impl[:57] + "..." for r in measured]
        values = [r.ns_per_event for r in measured]
        colours = ["#d9534f" if r.reference else ("#5bc0de" if r.key.startswith("python") else "#999999")
                   for r in measured]
        axis.barh(range(len(measured)), values, color=colours)
        axis.set_yticks(range(len(measured)), labels, fontsize=8)
        axis.invert_yaxis()
        axis.set_xscale("log")
        axis.set_xlim(left=min(values) / 3, right=max(values) * 2.5)
        unit = "ns per call" if case in ("get-metrics", "rlm-call") else "ns per event"
        axis.set_title(f"{case}: {CASE_TITLES.get(case, '')}", fontsize=9, loc="left")
        axis.set_xlabel(f"{unit} (log scale, lower is better)", fontsize=8)
        for index, value in enumerate(values):
            axis.text(value, index, f" {_fmt_num(value)}", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlm-toolkit bench",
        description="Benchmark the callbacks side by side with plain Python and peers; prints a markdown table.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a CI smoke run")
    parser.add_argument("--cases", metavar="A,B,...",
                        help=f"cases to run (default all): {', '.join(CASE_GROUPS)} (or fanout-1/-4/-16)")
    parser.add_argument("--markdown", metavar="PATH", help="also write the table to PATH")
    parser.add_argument("--json", metavar="PATH", help="write rows, samples and targets as JSON to PATH")
    parser.add_argument("--chart", metavar="PATH", help="write a PNG chart to PATH (needs matplotlib)")
    parser.add_argument("--repeats", type=int, help="timed batches per implementation (default 7, quick 3)")
    parser.add_argument("--feed-events", type=int, metavar="N",
                        help="events fed before get-metrics/rss (default 10^7, quick 2*10^5)")
    parser.add_argument("--tmpdir", metavar="DIR", help="where to write logs (default: a new temporary folder)")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when a measured target fails")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        for name in ALL_CASES:
            print(f"{name:12} {CASE_TITLES[name]}")
        return 0
    try:
        names = expand_cases(args.cases)
    except ValueError as error:
        print(f"rlm-toolkit bench: error: {error}", file=sys.stderr)
        return 2
    cfg = Config.quick_config() if args.quick else Config.full()
    if args.repeats:
        cfg.repeats = max(1, args.repeats)
        cfg.token_repeats = min(cfg.token_repeats, cfg.repeats)
    if args.feed_events:
        cfg.feed_events = max(2, args.feed_events)
    if args.tmpdir:
        os.makedirs(args.tmpdir, exist_ok=True)
        cfg.tmpdir = tempfile.mkdtemp(prefix="rlm-bench-", dir=args.tmpdir)
    started = time.perf_counter()
    try:
        rows = run_cases(names, cfg, progress=True)
    finally:
        if args.tmpdir and cfg.tmpdir:
            shutil.rmtree(cfg.tmpdir, ignore_errors=True)
    targets = evaluate_targets(rows)
    loop_ns = loop_overhead_ns()
    env = environment()
    table = render_markdown(rows, targets, cfg, loop_ns=loop_ns, env=env)
    print(table, end="")
    _log(f"bench finished in {time.perf_counter() - started:.0f} s")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as handle:
            handle.write(table)
    if args.json:
        payload = {"config": asdict(cfg), "environment": env, "loop_overhead_ns": loop_ns,
                   "rows": [asdict(row) for row in rows],
                   "targets": [{**asdict(t), "passed": t.passed} for t in targets]}
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, default=str)
    if args.chart:
        problem = write_chart(rows, args.chart)
        if problem:
            print(f"rlm-toolkit bench: {problem}", file=sys.stderr)
    if args.strict and any(t.passed is False for t in targets):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
