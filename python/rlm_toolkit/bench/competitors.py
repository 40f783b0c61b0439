"""The implementations this package is compared with: plain Python (``json.dumps``), orjson, langchain-core,
pluggy and blinker, each doing the same work as the case it runs in.

The libraries are optional (the ``bench`` extra): each factory returns a skipped ``Contender`` whose ``skip``
names the extra when its library is missing, and imports the library only when it is there.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from ..pricing import PRICES_PER_MILLION
from ..types import LLMResponse, Usage
from .base import (
    MODEL,
    PROMPT_SHORT,
    WRITE_BUFFER,
    Config,
    Contender,
    count_lines,
    expect,
    expect_handler_calls,
    missing,
    remove,
    temp_path,
)

_UTC = timezone.utc


# -- plain Python: the metrics + JSONL pair written by hand -------------------------------------------------


class PlainJsonPair:
    """The hand-written pure-Python equivalent: counters, a latency list, cost, ``json.dumps`` + buffered text."""

    def __init__(self, path: str) -> None:
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


# -- langchain-core -----------------------------------------------------------------------------------------


def langchain_fanout(size: int, active: int) -> Contender:
    """langchain-core's ``CallbackManager.on_llm_start`` to ``size`` handlers, ``active`` of which override it."""
    impl = "langchain-core CallbackManager"
    skip = missing("langchain_core", "langchain-core")
    if skip:
        return Contender("langchain", impl, skip=skip)
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.callbacks import CallbackManager as LCManager

    class LCHandler(BaseCallbackHandler):
        def __init__(self) -> None:
            self.calls = 0

        def on_llm_start(self, serialized: Any, prompts: Any, **kwargs: Any) -> None:
            self.calls += 1

    serialized = {"name": MODEL}
    run_id = uuid.uuid4()

    def setup(n: int) -> Any:
        handlers = [LCHandler() for _ in range(active)] + [BaseCallbackHandler() for _ in range(size - active)]
        return {"n": n, "active": active, "handlers": handlers, "manager": LCManager(handlers=handlers)}

    def run(state: Any) -> None:
        manager = state["manager"]
        prompts = [PROMPT_SHORT]
        for _ in itertools.repeat(None, state["n"]):
            manager.on_llm_start(serialized, prompts, run_id=run_id)

    return Contender("langchain", impl, setup, run, expect_handler_calls)


class _LCResponseView:
    """``.content``/``.usage`` of a langchain ``LLMResult``, read the way a handler would."""

    __slots__ = ("content", "usage")

    def __init__(self, result: Any) -> None:
        self.content = result.generations[0][0].text
        usage = result.llm_output["token_usage"]
        self.usage = Usage(usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"])


def langchain_pair(cfg: Config, prompt: str, response: LLMResponse) -> Contender:
    """A langchain-core handler doing ``PlainJsonPair``'s work from langchain's callback arguments."""
    impl = "langchain-core handler (json.dumps work)"
    skip = missing("langchain_core", "langchain-core")
    if skip:
        return Contender("langchain", impl, skip=skip)
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.callbacks import CallbackManager as LCManager
    from langchain_core.outputs import Generation, LLMResult

    class LangchainMetricsLog(BaseCallbackHandler):
        def __init__(self, path: str) -> None:
            self.plain = PlainJsonPair(path)

        def on_llm_start(self, serialized: Any, prompts: Any, *, run_id: Any, **kwargs: Any) -> None:
            self.plain.on_llm_start(prompts[0], str(run_id), serialized.get("name"))

        def on_llm_end(self, response: Any, *, run_id: Any, **kwargs: Any) -> None:
            self.plain.on_llm_end(_LCResponseView(response), str(run_id), response.llm_output["model_name"])

    serialized = {"name": MODEL}
    usage = response.usage
    if usage is None:
        raise ValueError("langchain_pair needs a response that reports its token usage")
    result = LLMResult(
        generations=[[Generation(text=response.content)]],
        llm_output={"model_name": MODEL, "token_usage": {"prompt_tokens": usage.prompt_tokens,
                    "completion_tokens": usage.completion_tokens, "total_tokens": usage.total_tokens}},
    )
    uuid_cache: dict[int, list[uuid.UUID]] = {}

    def setup(n: int) -> Any:
        if n not in uuid_cache:
            uuid_cache[n] = [uuid.uuid4() for _ in range(n)]
        path = temp_path(cfg, "pair-langchain")
        handler = LangchainMetricsLog(path)
        return {"ids": uuid_cache[n], "path": path, "handler": handler, "manager": LCManager(handlers=[handler])}

    def run(state: Any) -> None:
        manager = state["manager"]
        prompts = [prompt]
        for run_id in state["ids"]:
            run_manager = manager.on_llm_start(serialized, prompts, run_id=run_id)[0]
            run_manager.on_llm_end(result)
        state["handler"].plain.close()

    def teardown(state: Any) -> None:
        n = len(state["ids"])
        try:
            expect(state["handler"].plain.completed, n, "completed calls")
            expect(count_lines(state["path"]), 2 * n, "log lines")
        finally:
            remove(state["path"])

    return Contender("langchain", impl, setup, run, teardown, events_per_op=2,
                     note="LLMResult built once, outside the loop")


def langchain_tokens(tokens: Callable[[int], list[str]], check: Callable[[Any], None]) -> Contender:
    """langchain-core's run manager ``on_llm_new_token`` to a handler passing each token on."""
    impl = "langchain-core run manager"
    skip = missing("langchain_core", "langchain-core")
    if skip:
        return Contender("langchain", impl, skip=skip)
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.callbacks import CallbackManager as LCManager

    # langchain-core's hook takes a token or a list of content blocks; only plain tokens are fired here.
    LCToken = str | list[str | dict[str, Any]]

    class LCTokens(BaseCallbackHandler):
        def __init__(self, sink: Callable[[LCToken], None]) -> None:
            self.sink = sink

        def on_llm_new_token(self, token: LCToken, **kwargs: Any) -> None:
            self.sink(token)

    def setup(n: int) -> Any:
        sink: list[LCToken] = []
        manager = LCManager(handlers=[LCTokens(sink.append)])
        run_manager = manager.on_llm_start({"name": MODEL}, [PROMPT_SHORT], run_id=uuid.uuid4())[0]
        return {"tokens": tokens(n), "sink": sink, "run_manager": run_manager}

    def run(state: Any) -> None:
        run_manager = state["run_manager"]
        for token in state["tokens"]:
            run_manager.on_llm_new_token(token)

    return Contender("langchain", impl, setup, run, check)


# -- pluggy and blinker (fan-out, every handler overrides the event) -----------------------------------------


def pluggy_fanout(size: int, run_id: str) -> Contender:
    """A pluggy hook call to ``size`` registered plugins."""
    impl = "pluggy hook call"
    skip = missing("pluggy")
    if skip:
        return Contender("pluggy", impl, skip=skip)
    import pluggy

    hookspec, hookimpl = pluggy.HookspecMarker("rlmbench"), pluggy.HookimplMarker("rlmbench")
    prompt, model = PROMPT_SHORT, MODEL

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
        manager = pluggy.PluginManager("rlmbench")
        manager.add_hookspecs(Spec)
        plugins = [Plugin() for _ in range(size)]
        for index, plugin in enumerate(plugins):
            manager.register(plugin, name=f"p{index}")
        return {"n": n, "active": size, "handlers": plugins, "hook": manager.hook}

    def run(state: Any) -> None:
        hook = state["hook"]
        for _ in itertools.repeat(None, state["n"]):
            hook.on_llm_start(prompt=prompt, run_id=run_id, parent_run_id=None, model=model)

    return Contender("pluggy", impl, setup, run, expect_handler_calls, note="no error isolation")


def blinker_fanout(size: int, run_id: str) -> Contender:
    """A blinker ``send`` to ``size`` connected receivers."""
    impl = "blinker send"
    skip = missing("blinker")
    if skip:
        return Contender("blinker", impl, skip=skip)
    import blinker

    prompt, model = PROMPT_SHORT, MODEL

    class Receiver:
        def __init__(self) -> None:
            self.calls = 0

        def receive(self, sender: Any, **kwargs: Any) -> None:
            self.calls += 1

    def setup(n: int) -> Any:
        signal = blinker.Signal()
        receivers = [Receiver() for _ in range(size)]
        for receiver in receivers:
            signal.connect(receiver.receive)
        return {"n": n, "active": size, "handlers": receivers, "signal": signal}

    def run(state: Any) -> None:
        send = state["signal"].send
        for _ in itertools.repeat(None, state["n"]):
            send(None, prompt=prompt, run_id=run_id, parent_run_id=None, model=model)

    return Contender("blinker", impl, setup, run, expect_handler_calls, note="no error isolation")
