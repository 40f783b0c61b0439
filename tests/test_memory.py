"""BufferMemory, and memory recall/store events in runs against the real LocalServer."""

from __future__ import annotations

import pytest

from rlm_toolkit.errors import LLMCallError
from rlm_toolkit.memory import BufferMemory, Memory, MemoryConfigError
from rlm_toolkit.server import LocalServer
from test_rlm import Recorder, make_rlm


def test_buffer_keeps_the_last_messages_in_order() -> None:
    memory = BufferMemory(max_messages=3)
    for number in range(5):
        memory.store("user", f"message {number}")
    assert memory.recall("anything") == [{"role": "user", "content": f"message {number}"} for number in (2, 3, 4)]
    assert len(memory) == 3
    memory.clear()
    assert memory.recall("anything") == []


def test_recall_returns_copies() -> None:
    memory = BufferMemory()
    memory.store("user", "hi")
    memory.recall("x")[0]["content"] = "changed"
    assert memory.recall("x") == [{"role": "user", "content": "hi"}]


def test_buffer_memory_is_a_memory_and_checks_its_size() -> None:
    assert isinstance(BufferMemory(), Memory)
    with pytest.raises(MemoryConfigError, match="at least 1"):
        BufferMemory(max_messages=0)


def test_runs_recall_then_store_user_and_assistant(server: LocalServer) -> None:
    recorder = Recorder()
    memory = BufferMemory()
    rlm = make_rlm(server, recorder, memory=memory)
    first = rlm.run("My name is Ada.")
    second = rlm.run("What is my name?")

    one_run = ["memory_recall", "llm_start", "llm_end", "memory_store", "memory_store"]
    assert recorder.names() == one_run + one_run
    recalls, stores = recorder.of("memory_recall"), recorder.of("memory_store")
    assert [(recall.args["query"], recall.args["results"]) for recall in recalls] == [
        ("My name is Ada.", []),
        ("What is my name?", [{"role": "user", "content": "My name is Ada."},
                              {"role": "assistant", "content": first.answer}]),
    ]
    assert [(store.context["role"], store.args["content"]) for store in stores] == [
        ("user", "My name is Ada."), ("assistant", first.answer),
        ("user", "What is my name?"), ("assistant", second.answer),
    ]
    assert [event.parent_run_id for event in recorder.events[5:]] == [second.run_id] * 5
    assert server.requests[1]["messages"] == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": first.answer},
        {"role": "user", "content": "What is my name?"},
    ]
    assert len(memory) == 4


async def test_arun_uses_memory_too(server: LocalServer) -> None:
    recorder = Recorder()
    rlm = make_rlm(server, recorder, memory=BufferMemory())
    await rlm.arun("first")
    await rlm.arun("second")
    assert len(recorder.of("memory_recall")[1].args["results"]) == 2
    assert len(server.requests[1]["messages"]) == 3


def test_a_failed_run_stores_nothing(server: LocalServer) -> None:
    memory = BufferMemory()
    server.fail_next(400)
    with pytest.raises(LLMCallError):
        make_rlm(server, memory=memory).run("lost")
    assert len(memory) == 0
