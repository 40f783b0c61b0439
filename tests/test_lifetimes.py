"""What a manager and its logs leave behind once a program is done with them: the objects are collected
(reference cycles through a native dispatcher included), and a closed or collected log holds no file open.
A program that makes a manager and a log per request or per batch must not pile up memory or descriptors.
Runs per backend."""

from __future__ import annotations

import gc
import json
import os
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rlm_toolkit import RLM
from rlm_toolkit.callbacks import AsyncBaseCallback, BaseCallback, CallbackManager, FileLogCallback, MetricsCallback
from rlm_toolkit.server import LocalServer
from rlm_toolkit.types import LLMResponse, Usage

MODEL = "gpt-4o-mini"


def descriptor_targets() -> list[str]:
    """What each of this process's file descriptors names (a deleted file's name ends ' (deleted)')."""
    targets = []
    for name in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{name}"))
        except OSError:  # the descriptor os.listdir itself used, gone by now
            pass
    return targets


def descriptors_open_on(path: Path) -> int:
    return sum(target in (str(path), f"{path} (deleted)") for target in descriptor_targets())


def fire_pair(manager: CallbackManager, run_id: str = "r1") -> None:
    manager.on_llm_start("hi", run_id=run_id, model=MODEL)
    manager.on_llm_end(LLMResponse("hello", MODEL, Usage.of(3, 2)), run_id=run_id, model=MODEL)


def collected(make: Callable[[], Any]) -> bool:
    """Whether what ``make`` returns is gone after the last reference to it is dropped and a collection ran."""
    reference = weakref.ref(make())
    gc.collect()
    return reference() is None


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_closed_log_holds_its_file_no_longer(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "rlm.jsonl"
    log = FileLogCallback(path)
    manager = CallbackManager([MetricsCallback(), log])
    fire_pair(manager)
    assert descriptors_open_on(path) == 1
    log.close()
    assert descriptors_open_on(path) == 0, "close() must let the file go: the log can be moved or deleted"
    assert [record["event"] for record in records(path)] == ["llm_start", "llm_end"]
    log.close()
    assert descriptors_open_on(path) == 0


class KeepsItsManager(BaseCallback):
    """A callback that keeps the manager it is registered with (to fire follow-up events, say)."""

    def __init__(self) -> None:
        self.manager: CallbackManager | None = None
        self.prompts: list[str] = []

    def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
        self.prompts.append(prompt)


class AsyncRecorder(AsyncBaseCallback):
    def __init__(self) -> None:
        self.prompts: list[str] = []

    async def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
        self.prompts.append(prompt)


@pytest.mark.parametrize("callbacks", ["none", "metrics and log", "a callback keeping its manager", "an async hook"])
def test_a_manager_no_longer_referenced_is_collected_with_its_log(backend: str, tmp_path: Path, callbacks: str) -> None:
    path = tmp_path / "rlm.jsonl"

    def make() -> CallbackManager:
        log = FileLogCallback(path)
        choices: dict[str, list[Any]] = {"none": [], "metrics and log": [MetricsCallback()],
                                         "a callback keeping its manager": [KeepsItsManager()],
                                         "an async hook": [AsyncRecorder()]}
        extra = choices[callbacks]
        manager = CallbackManager([*extra, log] if callbacks != "none" else [])
        for callback in extra:
            if isinstance(callback, KeepsItsManager):
                callback.manager = manager
        fire_pair(manager)
        if callbacks == "none":
            log.close()
        return manager

    assert collected(make)
    assert descriptors_open_on(path) == 0, "a collected log closes its file"
    if callbacks != "none":
        assert [record["event"] for record in records(path)] == ["llm_start", "llm_end"]


def test_the_background_loops_of_collected_managers_stop(backend: str) -> None:
    """Async hooks fired from sync code run on a background event loop of the manager's own, on a thread of
    its own: a manager per request must not leave a thread per request behind."""
    before = set(threading.enumerate())
    for index in range(10):
        callback = AsyncRecorder()
        assert collected(lambda: _fired(CallbackManager([callback]), f"r{index}"))
        assert callback.prompts == ["hi"]
    deadline = time.monotonic() + 10
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert set(threading.enumerate()) - before == set()


def _fired(manager: CallbackManager, run_id: str) -> CallbackManager:
    fire_pair(manager, run_id)
    return manager


def test_a_log_and_manager_per_batch_leave_no_file_open(backend: str, tmp_path: Path) -> None:
    """The pattern of a batch job: a fresh log and manager per batch, closed at its end, the file then moved
    away. Nothing of an earlier batch stays open (a deleted file held open keeps its disk space)."""
    for batch in range(40):
        path = tmp_path / f"batch-{batch}.jsonl"
        log = FileLogCallback(path)
        manager = CallbackManager([MetricsCallback(), log])
        for index in range(20):
            fire_pair(manager, f"b{batch}-{index}")
        log.close()
        path.rename(tmp_path / f"done-{batch}.jsonl")
    assert [target for target in descriptor_targets() if str(tmp_path) in target] == []
    assert sum(len(records(tmp_path / f"done-{batch}.jsonl")) for batch in range(40)) == 40 * 40


def test_an_rlm_made_per_request_is_collected_and_closes_its_log(backend: str, tmp_path: Path,
                                                                server: LocalServer) -> None:
    path = tmp_path / "rlm.jsonl"

    def make() -> RLM:
        rlm = RLM.from_openai(MODEL, [MetricsCallback(), FileLogCallback(path)], base_url=server.base_url,
                              api_key=server.api_key)
        assert rlm.run("Say hello")
        return rlm

    assert collected(make)
    assert descriptors_open_on(path) == 0
    events = [record["event"] for record in records(path)]
    assert events[0] == "run_start" and events[-1] == "run_end"


resurrected: list[CallbackManager] = []


class Resurrects(KeepsItsManager):
    """Keeps its manager, and when collected puts the manager back where the program can reach it."""

    def __del__(self) -> None:
        if self.manager is not None:
            resurrected.append(self.manager)


def test_a_manager_brought_back_by_a_finalizer_during_collection_still_fires(backend: str, tmp_path: Path) -> None:
    """The collector met the manager's cycle and ran its finalizers; one of them resurrected the manager, so
    nothing of it may have been torn down. Its log, collected first, was closed by its own finalizer: its
    events are refused and reported from then on, like any closed log's."""
    path = tmp_path / "rlm.jsonl"

    def make() -> None:
        callback = Resurrects()
        manager = CallbackManager([callback, FileLogCallback(path)])
        callback.manager = manager
        fire_pair(manager, "before")

    make()
    gc.collect()
    assert len(resurrected) == 1
    manager = resurrected.pop()
    fire_pair(manager, "after")
    keeper = next(callback for callback in manager.callbacks if isinstance(callback, Resurrects))
    assert keeper.prompts == ["hi", "hi"]
    assert manager.handler_errors == 2, "the closed log refused both events"
    assert [record["run_id"] for record in records(path)] == ["before", "before"]
