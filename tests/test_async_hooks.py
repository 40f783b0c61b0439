"""Async hooks complete, bounded by ``async_timeout``, from sync code, coroutines, threads and forked children."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest

from rlm_toolkit import RLM, CallbackConfigError
from rlm_toolkit.callbacks import BaseCallback, CallbackManager
from rlm_toolkit.server import LocalServer


class Recorder(BaseCallback):
    """Records each event once its async hook has finished."""

    def __init__(self) -> None:
        self.finished: list[str] = []

    async def on_run_start(self, prompt: str, **kwargs: Any) -> None:
        await asyncio.sleep(0.01)
        self.finished.append("run_start")

    async def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
        await asyncio.sleep(0.01)
        self.finished.append("llm_start")

    async def on_run_end(self, answer: str, **kwargs: Any) -> None:
        await asyncio.sleep(0.01)
        self.finished.append("run_end")


class Hanging(BaseCallback):
    async def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
        await asyncio.sleep(3600)


class Blocking(BaseCallback):
    """Blocks its event loop's thread, as a sync call inside ``async def`` does."""

    async def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
        time.sleep(1.5)


class CancelsItself(BaseCallback):
    async def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
        raise asyncio.CancelledError("the hook gave up")


# -- async_timeout values ----------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, 0, 0.0, "30", True, False, [1]])
def test_bad_async_timeouts_are_refused(backend: str, bad: Any) -> None:
    with pytest.raises(CallbackConfigError, match=r"async_timeout must be None \(no timeout\) or a finite number"):
        CallbackManager(async_timeout=bad)


@pytest.mark.parametrize("good", [None, 0.001, 1, 30.0])
def test_good_async_timeouts_are_taken(backend: str, good: Any) -> None:
    CallbackManager(async_timeout=good).on_llm_start("p")


# -- timeouts ----------------------------------------------------------------------------------------

def test_a_blocking_hook_is_bounded_and_holds_up_no_other_manager(backend: str) -> None:
    blocked = CallbackManager([Blocking()], async_timeout=0.3)
    recorder = Recorder()
    other = CallbackManager([recorder])
    blocked_for: list[float] = []

    def fire_blocked() -> None:
        started = time.monotonic()
        blocked.on_llm_start("p")
        blocked_for.append(time.monotonic() - started)

    thread = threading.Thread(target=fire_blocked)
    thread.start()
    time.sleep(0.1)  # the blocking hook has its loop's thread now
    started = time.monotonic()
    other.on_llm_start("p")
    other_took = time.monotonic() - started
    thread.join()
    assert recorder.finished == ["llm_start"] and other_took < 0.5
    assert blocked_for[0] < 1.0 and blocked.handler_errors == 1


def test_a_hanging_hook_times_out_for_a_sync_caller(backend: str, caplog: pytest.LogCaptureFixture) -> None:
    manager = CallbackManager([Hanging()], async_timeout=0.2)
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="rlm_toolkit"):
        manager.on_llm_start("p")
    assert time.monotonic() - started < 2 and manager.handler_errors == 1
    assert ["Hanging.on_llm_start" in record.getMessage() for record in caplog.records] == [True]


async def test_arun_with_a_hanging_hook_returns_after_the_timeout(backend: str, server: LocalServer) -> None:
    manager = CallbackManager([Hanging()], async_timeout=0.3)
    rlm = RLM.from_openai("gpt-4o", manager, base_url=server.base_url, api_key=server.api_key)
    started = time.monotonic()
    result = await asyncio.wait_for(rlm.arun("hello"), 10)
    assert result.answer and time.monotonic() - started < 5
    assert manager.handler_errors == 1


# -- sync entry points inside a running event loop ---------------------------------------------------

async def test_sync_run_inside_a_running_loop_completes_its_async_hooks(backend: str, server: LocalServer) -> None:
    recorder = Recorder()
    rlm = RLM.from_openai("gpt-4o", [recorder], base_url=server.base_url, api_key=server.api_key)
    rlm.run("hello")  # blocks this loop, like a sync call in a notebook cell
    assert recorder.finished == ["run_start", "llm_start", "run_end"]
    # Nothing was left scheduled on this loop for later.
    await rlm.callbacks.wait_pending()
    assert recorder.finished == ["run_start", "llm_start", "run_end"]


async def test_sync_stream_inside_a_running_loop_completes_its_async_hooks(backend: str, server: LocalServer) -> None:
    recorder = Recorder()
    rlm = RLM.from_openai("gpt-4o", [recorder], base_url=server.base_url, api_key=server.api_key)
    text = "".join(rlm.stream("hello"))
    assert text and recorder.finished == ["run_start", "llm_start", "run_end"]


async def test_direct_events_in_a_coroutine_are_awaited_by_wait_pending(backend: str) -> None:
    recorder = Recorder()
    manager = CallbackManager([recorder])
    manager.on_llm_start("p")
    assert recorder.finished == []  # scheduled on this loop
    await manager.wait_pending()
    assert recorder.finished == ["llm_start"]


# -- cancellation --------------------------------------------------------------------------------------

def test_a_hooks_own_cancellation_is_an_isolated_failure_for_sync_callers(backend: str) -> None:
    recorder = Recorder()
    manager = CallbackManager([CancelsItself(), recorder])
    manager.on_llm_start("p")
    assert manager.handler_errors == 1 and recorder.finished == ["llm_start"]


async def test_a_hooks_own_cancellation_is_an_isolated_failure_in_arun(backend: str, server: LocalServer) -> None:
    recorder = Recorder()
    manager = CallbackManager([CancelsItself(), recorder])
    rlm = RLM.from_openai("gpt-4o", manager, base_url=server.base_url, api_key=server.api_key)
    result = await rlm.arun("hello")
    assert result.answer and manager.handler_errors == 1
    assert recorder.finished == ["run_start", "llm_start", "run_end"]


async def test_cancelling_the_waiter_propagates_and_the_hooks_still_finish(backend: str) -> None:
    finished: list[str] = []

    class Slow(BaseCallback):
        async def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
            await asyncio.sleep(0.2)
            finished.append(prompt)

    manager = CallbackManager([Slow()])
    manager.on_llm_start("first")
    waiter = asyncio.create_task(manager.wait_pending())
    await asyncio.sleep(0.05)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await manager.wait_pending()
    assert finished == ["first"] and manager.handler_errors == 0


# -- fork ------------------------------------------------------------------------------------------------

FORKED_CHILD = """
import asyncio, multiprocessing, os, sys
from rlm_toolkit.callbacks import BaseCallback, CallbackManager

finished = []

class Recorder(BaseCallback):
    async def on_llm_start(self, prompt, **kwargs):
        await asyncio.sleep(0.01)
        finished.append(prompt)

manager = CallbackManager([Recorder()], async_timeout=5)
manager.on_llm_start("parent")  # the background loop's thread runs in the parent from now on

def child_work():
    manager.on_llm_start("child")
    manager.on_llm_start("child again")
    assert finished == ["parent", "child", "child again"], finished
    assert manager.handler_errors == 0

if sys.argv[1] == "fork":
    pid = os.fork()
    if pid == 0:
        try:
            child_work()
        except BaseException as error:
            print(repr(error), flush=True)
            os._exit(1)
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
else:
    child = multiprocessing.get_context("fork").Process(target=child_work)
    child.start()
    child.join()
    assert child.exitcode == 0
manager.on_llm_start("parent again")
assert finished == ["parent", "parent again"], finished
print("done")
"""


@pytest.mark.parametrize("how", ["fork", "process"])
def test_a_forked_child_completes_async_hooks(backend: str, how: str) -> None:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(FORKED_CHILD), how], text=True,
                            capture_output=True, timeout=60, env={**os.environ, "RLM_TOOLKIT_BACKEND": backend})
    assert result.returncode == 0 and result.stdout == "done\n", result.stdout + result.stderr
