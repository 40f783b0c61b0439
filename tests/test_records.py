"""What a JSONL record holds, byte for byte the same on both backends: the content switches, the caps on
every string, how values JSON cannot hold are written, and which timestamps an event may carry."""

from __future__ import annotations

import json
import math
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rlm_toolkit import RLM, LLMResponse, Usage
from rlm_toolkit.callbacks import BaseCallback, CallbackManager, FileLogCallback, MetricsCallback
from rlm_toolkit.errors import InvalidEventError, RLMToolkitError
from rlm_toolkit.events import CONTENT_FIELDS, CONTENT_SWITCHES, EVENTS_BY_NAME
from rlm_toolkit.memory import BufferMemory
from rlm_toolkit.server import LocalServer

from hostile_values import FailingIteration, LoudBytes, LoudDict, LoudInt, LoudStr

TS = 1_700_000_000.25
HEAD = '{"ts":"2023-11-14T22:13:20.250000Z","event":'


def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def records_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines_of(path)]


# -- content switches ---------------------------------------------------------------------------------

def fire_every_event(manager: CallbackManager) -> None:
    """Each event once, every argument holding a text of the conversation (and memory_store once per role)."""
    manager.on_run_start("run prompt text", run_id="run", model="gpt-4o", tags=["nightly"], metadata={"user": "u1"},
                         timestamp=TS)
    manager.on_memory_recall("recall query text", [{"role": "assistant", "content": "recalled text"}],
                             run_id="m1", timestamp=TS)
    manager.on_llm_start("llm prompt text", run_id="c1", model="gpt-4o", timestamp=TS)
    manager.on_llm_new_token("streamed token text", run_id="c1", model="gpt-4o", timestamp=TS)
    manager.on_retry(1, 3, TimeoutError("retry error text"), run_id="c1", model="gpt-4o", timestamp=TS)
    manager.on_llm_end(LLMResponse("llm response text", "gpt-4o", Usage.of(3, 2)), run_id="c1", timestamp=TS)
    manager.on_tool_start("lookup", {"q": "tool input text"}, run_id="t1", timestamp=TS)
    manager.on_tool_end("lookup", "tool output text", run_id="t1", timestamp=TS)
    manager.on_error(ValueError("error text"), run_id="t1", timestamp=TS)
    for role in ("user", "assistant", "system", None):
        extra = {} if role is None else {"role": role}
        manager.on_memory_store(f"stored {role} text", run_id="m2", timestamp=TS, **extra)
    manager.on_run_end("run answer text", run_id="run", model="gpt-4o", timestamp=TS)


ALWAYS_WRITTEN = {"ts", "event", "run_id", "parent_run_id", "model", "tool_name", "attempt", "max_attempts",
                  "prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "reasoning_tokens", "ttft_ms",
                  "kind", "tags", "metadata", "extra"}
PROMPT_FIELDS = {("run_start", "prompt"), ("memory_recall", "query"), ("llm_start", "prompt"),
                 ("memory_store", "stored user text")}
RESPONSE_FIELDS = {("llm_new_token", "token"), ("llm_end", "response"), ("run_end", "answer"),
                   ("memory_store", "stored assistant text")}
BOTH_FIELDS = {("memory_recall", "results"), ("tool_start", "tool_input"), ("tool_end", "tool_output"),
               ("retry", "error.message"), ("error", "error.message"), ("memory_store", "stored system text"),
               ("memory_store", "stored None text")}


def content_written(record: dict[str, Any]) -> set[tuple[str, str]]:
    """(event, field) for each conversation text in the record; memory_store content named by its text."""
    event = record["event"]
    written = set()
    for name, value in record.items():
        if name in ALWAYS_WRITTEN:
            continue
        if name == "error":
            assert set(value) <= {"type", "message"}
            if "message" in value:
                written.add((event, "error.message"))
        elif event == "memory_store":
            written.add((event, value))
        else:
            written.add((event, name))
    return written


@pytest.mark.parametrize("include_prompts", [True, False])
@pytest.mark.parametrize("include_responses", [True, False])
def test_content_switches_cover_every_text_of_the_conversation(backend: str, tmp_path: Path, include_prompts: bool,
                                                              include_responses: bool) -> None:
    path = tmp_path / "log.jsonl"
    with FileLogCallback(path, include_prompts=include_prompts, include_responses=include_responses,
                         include_tokens=True) as log:
        fire_every_event(CallbackManager([log]))
    records = records_of(path)
    assert [record["event"] for record in records] == [
        "run_start", "memory_recall", "llm_start", "llm_new_token", "retry", "llm_end", "tool_start", "tool_end",
        "error", "memory_store", "memory_store", "memory_store", "memory_store", "run_end",
    ]
    written = set().union(*(content_written(record) for record in records))
    expected = ((PROMPT_FIELDS if include_prompts else set()) | (RESPONSE_FIELDS if include_responses else set())
                | (BOTH_FIELDS if include_prompts and include_responses else set()))
    assert written == expected
    assert [record["error"]["type"] for record in records if "error" in record] == ["TimeoutError", "ValueError"]
    if not include_prompts and not include_responses:
        assert " text" not in path.read_text(encoding="utf-8")


def test_the_content_table_names_fields_of_the_catalogue() -> None:
    for row in CONTENT_FIELDS:
        spec = EVENTS_BY_NAME[row.event]
        assert row.field in spec.fields or (row.field == "error.message" and "error" in spec.fields), row
        assert row.switches and set(row.switches) <= set(CONTENT_SWITCHES), row
    keys = [(row.event, row.field, row.role) for row in CONTENT_FIELDS]
    assert len(keys) == len(set(keys))


# -- every string capped ------------------------------------------------------------------------------

class LongNamedError(Exception):
    pass


LongNamedError.__name__ = "E" * 40


def test_every_string_is_capped_keys_and_model_too(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    huge_key = "k" * 10_000_000
    with FileLogCallback(path, max_field_chars=16) as log:
        manager = CallbackManager([log])
        manager.on_tool_start("t" * 20, {huge_key: 1, 2 * huge_key: 2}, run_id="r" * 20, timestamp=TS,
                              **{"x" * 30: "v" * 30})
        manager.on_llm_start("p", model="m" * 20, timestamp=TS)
        manager.on_llm_end(LLMResponse("a", "n" * 20), timestamp=TS)
        manager.on_error(LongNamedError("e"), timestamp=TS)
    assert lines_of(path) == [
        HEAD + '"tool_start","run_id":"rrrrrrrrrrrrrrrr…[truncated 4 chars]","parent_run_id":null,'
        '"tool_name":"tttttttttttttttt…[truncated 4 chars]",'
        '"tool_input":{"kkkkkkkkkkkkkkkk…[truncated 9999984 chars]":1,"kkkkkkkkkkkkkkkk…[truncated 19999984 chars]":2},'
        '"extra":{"xxxxxxxxxxxxxxxx…[truncated 14 chars]":"vvvvvvvvvvvvvvvv…[truncated 14 chars]"}}',
        HEAD + '"llm_start","run_id":null,"parent_run_id":null,"model":"mmmmmmmmmmmmmmmm…[truncated 4 chars]","prompt":"p"}',
        HEAD + '"llm_end","run_id":null,"parent_run_id":null,"model":"nnnnnnnnnnnnnnnn…[truncated 4 chars]",'
        '"response":"a","prompt_tokens":0,"completion_tokens":0,"total_tokens":0,"cached_tokens":0,'
        '"reasoning_tokens":0,"ttft_ms":null}',
        HEAD + '"error","run_id":null,"parent_run_id":null,"model":null,'
        '"error":{"type":"EEEEEEEEEEEEEEEE…[truncated 24 chars]","message":"e"}}',
    ]


def test_of_keys_that_come_out_the_same_the_first_is_kept(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    many = {f"{'same prefix ' * 2}{index}": index for index in range(40)}
    with FileLogCallback(path, max_field_chars=16) as log:
        CallbackManager([log]).on_tool_end("t", [{1: "int", "1": "str", "a": 0}, many], timestamp=TS)
    [line] = lines_of(path)
    assert line.endswith('"tool_output":[{"1":"int","a":0},{"same prefix same…[truncated 9 chars]":0,'
                         '"same prefix same…[truncated 10 chars]":10}]}')


# -- values: one rule on both backends ----------------------------------------------------------------

class BrokenTextTuple(FailingIteration):
    def __str__(self) -> str:
        raise RuntimeError("no str")


def test_uuid_run_ids_are_written_and_paired_as_their_str(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    run_id, parent = uuid.UUID(int=0xABC), uuid.UUID("0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d")
    metrics = MetricsCallback(backend=backend)  # type: ignore[arg-type]
    with FileLogCallback(path, max_field_chars=16) as log:
        manager = CallbackManager([metrics, log])
        manager.on_llm_start("p", run_id=run_id, parent_run_id=parent, timestamp=TS)
        manager.on_llm_end("r", run_id=str(run_id), timestamp=TS + 1)
        manager.on_llm_start("p", run_id=object.__new__(uuid.UUID), timestamp=TS)  # its int slot never set
    start, end, unset = lines_of(path)
    assert '"run_id":"00000000-0000-00…[truncated 20 chars]","parent_run_id":"0a1b2c3d-4e5f-4a…[truncated 20 chars]"' in start
    assert '"run_id":"<unrepresentable…[truncated 6 chars]"' in unset
    assert metrics.get_metrics()["avg_latency_ms"] == 1000.0


class GrowsItsContainer:
    """An item whose str() replaces the items after it in the list it is written from and adds to a dict."""

    def __init__(self, items: list[Any], entries: dict[str, Any]) -> None:
        self.items, self.entries, self.calls = items, entries, 0

    def __str__(self) -> str:
        self.calls += 1
        del self.items[1:]
        self.items.append("added while written")
        self.entries[f"added {self.calls}"] = "while written"
        return "grower"


def test_containers_are_written_as_they_stood_when_their_writing_began(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    items: list[Any] = []
    entries: dict[str, Any] = {"k": 2.5}
    grower = GrowsItsContainer(items, entries)
    items.extend([grower, "a", 1])
    entries["g"] = grower
    with FileLogCallback(path) as log:
        CallbackManager([log]).on_tool_end("t", {"list": items, "dict": entries, "plain": ["x", None, True]},
                                           timestamp=TS)
    [line] = lines_of(path)
    # The list's grower added "added 1" before the dict's writing began; "added 2" came during it.
    assert line.endswith('"tool_output":{"list":["grower","a",1],"dict":{"k":2.5,"g":"grower","added 1":"while written"},'
                         '"plain":["x",null,true]}}')


def test_numbers_are_written_as_python_writes_them(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    values = [1e16, 1.5e-05, 1e-07, 123.0, -0.0, 0.1, 1e15, 1.7976931348623157e308, 5e-324, math.nan, -math.inf,
              2**63, -(2**2048) + 1, 2**2048, 10**5000, True]
    with FileLogCallback(path) as log:
        CallbackManager([log]).on_tool_end("numbers", values, timestamp=TS)
    [line] = lines_of(path)
    assert line.endswith(
        '"tool_output":[1e+16,1.5e-05,1e-07,123.0,-0.0,0.1,1000000000000000.0,1.7976931348623157e+308,5e-324,'
        f'"NaN","-Infinity",9223372036854775808,{-(2**2048) + 1},"<int of 2049 bits>","<int of 16610 bits>",true]}}'
    )


def test_subclasses_and_failing_iteration_have_one_rule(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    values = [FailingIteration((1, 2)), BrokenTextTuple((3,)), LoudStr("own"), LoudInt(7), LoudInt(2**70),
              LoudDict(k="own"), LoudBytes(b"own\xff")]
    with FileLogCallback(path) as log:
        CallbackManager([log]).on_tool_end("subclasses", values, timestamp=TS)
    [line] = lines_of(path)
    assert line.endswith(
        f'"tool_output":["(1, 2)","(3,)","own",7,{2**70},{{"k":"own"}},"own\\\\xff"]}}'
    )


# -- timestamps ---------------------------------------------------------------------------------------

BAD_TIMESTAMPS = [math.nan, math.inf, -math.inf, -0.5, 1e300, 253_402_300_800.0, 10**400]


class Recorder(BaseCallback):
    def __init__(self) -> None:
        self.prompts: list[str] = []

    def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
        self.prompts.append(prompt)


@pytest.mark.parametrize("timestamp", BAD_TIMESTAMPS, ids=["nan", "inf", "-inf", "negative", "1e300", "year 10000",
                                                       "10**400"])
def test_a_timestamp_that_is_not_a_time_is_rejected_at_the_call(backend: str, tmp_path: Path, timestamp: Any) -> None:
    path = tmp_path / "log.jsonl"
    metrics = MetricsCallback()
    log = FileLogCallback(path)
    recorder = Recorder()
    manager = CallbackManager([metrics, log, recorder])
    manager.on_llm_start("p", run_id="r", timestamp=100.0)
    with pytest.raises(InvalidEventError, match=r"on_llm_end\(\): timestamp .* is not epoch seconds in 0 <= ts <"):
        manager.on_llm_end(LLMResponse("a"), run_id="r", timestamp=timestamp)
    for sink in (metrics, log):  # the sinks' own hooks check it too (as super().on_x() reaches them)
        with pytest.raises(InvalidEventError, match="before year 10000"):
            sink.on_llm_start("p", run_id="x", timestamp=timestamp)
    with pytest.raises(InvalidEventError):
        manager.on_llm_start("rejected", run_id="x", timestamp=timestamp)
    manager.on_llm_end(LLMResponse("a"), run_id="r", timestamp=100.5)
    log.close()
    assert [record["event"] for record in records_of(path)] == ["llm_start", "llm_end"]
    assert recorder.prompts == ["p"]
    snapshot = metrics.get_metrics()
    assert (snapshot["total_calls"], snapshot["completed_calls"], snapshot["open_runs"]) == (1, 1, 0)
    assert snapshot["avg_latency_ms"] == snapshot["max_latency_ms"] == 500.0
    # Two events refused by the manager and one by the metrics sink's own hook; none reached a record.
    assert snapshot["rejected_events"] == 3
    assert issubclass(InvalidEventError, ValueError) and issubclass(InvalidEventError, RLMToolkitError)


def test_a_timestamp_that_is_not_a_number_is_a_type_error(backend: str, tmp_path: Path) -> None:
    log = FileLogCallback(tmp_path / "log.jsonl")
    manager = CallbackManager([log])
    with pytest.raises(TypeError, match=r"on_llm_start\(\): timestamp must be epoch seconds as a float or int, not str"):
        manager.on_llm_start("p", timestamp="2024-01-01")
    with pytest.raises(TypeError, match="not str"):
        log.on_llm_start("p", timestamp="2024-01-01")
    log.close()
    assert lines_of(tmp_path / "log.jsonl") == []


def test_timestamps_at_the_ends_of_the_range(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    last = math.nextafter(253_402_300_800.0, 0.0)
    with FileLogCallback(path) as log:
        manager = CallbackManager([log])
        for timestamp in (0, 0.0000005, 0.0000015, 1_700_000_000, last):
            manager.on_run_start("p", timestamp=timestamp)
    assert [record["ts"] for record in records_of(path)] == [
        "1970-01-01T00:00:00.000000Z", "1970-01-01T00:00:00.000001Z", "1970-01-01T00:00:00.000002Z",
        "2023-11-14T22:13:20.000000Z", "9999-12-31T23:59:59.999968Z",
    ]


# -- a whole run ---------------------------------------------------------------------------------------

def test_with_both_switches_off_no_text_of_a_run_reaches_the_file(backend: str, tmp_path: Path,
                                                                server: LocalServer) -> None:
    def lookup(query: str) -> str:
        """Look a word up."""
        if query == "fails":
            raise ValueError("tool error quoting prompttext")
        return "tooloutputtext"

    path = tmp_path / "log.jsonl"
    with FileLogCallback(path, include_prompts=False, include_responses=False, include_tokens=True) as log:
        rlm = RLM.from_openai("gpt-4o", [log], base_url=server.base_url, api_key=server.api_key, tools=[lookup],
                              memory=BufferMemory(), backoff_base=0.001)
        server.queue_reply(tool_calls=[{"name": "lookup", "arguments": {"query": "toolinputtext"}},
                                       {"name": "lookup", "arguments": {"query": "fails"}}])
        server.queue_reply("answertext one")
        assert "".join(rlm.stream("prompttext one")) == "answertext one"
        server.queue_reply("answertext two")
        assert rlm.run("prompttext two").answer == "answertext two"
    text = path.read_text(encoding="utf-8")
    assert Counter(record["event"] for record in records_of(path)) == {
        "run_start": 2, "memory_recall": 2, "llm_start": 3, "llm_new_token": 4, "llm_end": 3, "tool_start": 2,
        "tool_end": 1, "error": 1, "memory_store": 4, "run_end": 2,
    }
    for leaked in ("prompttext", "answertext", "toolinputtext", "tooloutputtext", "fails"):
        assert leaked not in text


def test_floats_are_written_as_python_writes_them_ties_too(backend: str, tmp_path: Path) -> None:
    # Each of the first three lies exactly between two shortest digit strings: repr picks the even one.
    values = [2.0**46 + 0.625, 2.0**46 + 0.125, -(2.0**50 + 0.25), 2.0**46 + 0.375, 0.1, 1e16, 5e-324]
    path = tmp_path / "log.jsonl"
    with FileLogCallback(path) as log:
        manager = CallbackManager([log])
        for value in values:
            manager.on_llm_start("p", run_id="r", timestamp=TS, x=value)
    written = [line.rsplit('"x":', 1)[1].removesuffix("}}") for line in lines_of(path)]
    assert written == [json.dumps(value) for value in values]
    assert written[:3] == ["70368744177664.62", "70368744177664.12", "-1125899906842624.2"]
