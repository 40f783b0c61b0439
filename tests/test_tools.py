"""Tools: schemas from signatures, and the function-calling loop against the real LocalServer."""

from __future__ import annotations

import asyncio
from typing import Any, Literal, Optional

import pytest

from rlm_toolkit.rlm import ToolRoundsExceededError
from rlm_toolkit.server import LocalServer
from rlm_toolkit.tools import Tool, ToolCallError, ToolCallRecord, ToolDefinitionError, as_tool, format_tool_output
from test_rlm import Recorder, TokenRecorder, make_rlm


def get_weather(city: str) -> str:
    """Current weather in a city."""
    return f"Sunny in {city}"


def get_time(zone: str) -> str:
    """Current time in a time zone."""
    return f"12:00 {zone}"


# -- schemas ----------------------------------------------------------------------------------------


def test_schema_from_signature_type_hints_defaults_and_docstring() -> None:
    def search(
        query: str,
        limit: int = 10,
        min_score: float = 0.5,
        exact: bool = False,
        tags: list[str] | None = None,
        weights: dict[str, float] | None = None,
        language: Optional[str] = None,
        order: Literal["asc", "desc"] = "desc",
        extra: Any = None,
    ) -> list[str]:
        """Search the documents.

        Matches are ranked by score.

        Args:
            query: What to look for.
            limit: At most this many
                results.

        Returns:
            The matching titles.
        """
        return []

    tool = as_tool(search)
    assert tool.name == "search"
    assert tool.description == "Search the documents.\n\nMatches are ranked by score."
    assert tool.parameters == {
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "What to look for."},
            "limit": {"type": "integer", "description": "At most this many results.", "default": 10},
            "min_score": {"type": "number", "default": 0.5},
            "exact": {"type": "boolean", "default": False},
            "tags": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}], "default": None},
            "weights": {"anyOf": [{"type": "object", "additionalProperties": {"type": "number"}}, {"type": "null"}],
                        "default": None},
            "language": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
            "order": {"enum": ["asc", "desc"], "type": "string", "default": "desc"},
            "extra": {"default": None},
        },
        "required": ["query"],
    }
    assert tool.openai_schema() == {
        "type": "function",
        "function": {"name": "search", "description": tool.description, "parameters": tool.parameters},
    }


def test_explicit_tool_keeps_its_schema_and_sends_it(server: LocalServer) -> None:
    parameters = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
    shout = Tool("shout", lambda text: text.upper(), "Upper-case the text.", parameters)
    result = make_rlm(server, tools=[shout]).run('shout {"text": "hey"}')

    assert server.requests[0]["tools"] == [{"type": "function", "function": {
        "name": "shout", "description": "Upper-case the text.", "parameters": parameters}}]
    assert result.answer == "Tool results: shout -> HEY"


@pytest.mark.parametrize("make_tool, message", [
    (lambda: as_tool(lambda x: x), "tool name '<lambda>' is not allowed"),
    (lambda: as_tool(print), "cannot be described"),
    (lambda: Tool.from_function(lambda *values: 0, name="spread"), "cannot be described"),
    (lambda: Tool.from_function(lambda value, /: 0, name="positional"), "positional-only"),
    (lambda: as_tool(_takes_a_complex_number), "has no JSON schema here"),
    (lambda: as_tool(42), "must be a function or a Tool"),
])
def test_tools_that_cannot_be_described_are_rejected(make_tool: Any, message: str) -> None:
    with pytest.raises(ToolDefinitionError, match=message):
        make_tool()


def _takes_a_complex_number(value: complex) -> None:
    """A parameter type with no JSON schema."""


def test_duplicate_tool_names_are_rejected(server: LocalServer) -> None:
    with pytest.raises(ToolDefinitionError, match="share the name"):
        make_rlm(server, tools=[get_weather, Tool("get_weather", get_time)])


def test_parse_arguments() -> None:
    tool = as_tool(get_weather)
    assert tool.parse_arguments('{"city": "Oslo"}') == {"city": "Oslo"}
    with pytest.raises(ToolCallError, match="not valid JSON"):
        tool.parse_arguments("{not json")
    with pytest.raises(ToolCallError, match="must be a JSON object, got list"):
        tool.parse_arguments("[1]")
    with pytest.raises(ToolCallError, match="do not fit its parameters: missing a required argument: 'city'"):
        tool.parse_arguments("{}")
    assert as_tool(no_arguments).parse_arguments("") == {}


def no_arguments() -> str:
    return "ok"


def test_tool_output_is_text_for_the_model() -> None:
    assert format_tool_output("as is") == "as is"
    assert format_tool_output({"temp": 21, "sky": "clear"}) == '{"temp": 21, "sky": "clear"}'
    assert format_tool_output(None) == "null"
    assert format_tool_output({"when": complex(1, 2)}) == '{"when": "(1+2j)"}'


# -- the function-calling loop ----------------------------------------------------------------------


def test_tool_call_round_trip_fires_tool_events(server: LocalServer) -> None:
    recorder = Recorder()
    result = make_rlm(server, recorder, tools=[get_weather]).run("get_weather Paris")

    assert result.answer == "Tool results: get_weather -> Sunny in Paris"
    assert recorder.names() == ["llm_start", "llm_end", "tool_start", "tool_end", "llm_start", "llm_end"]
    tool_start, tool_end = recorder.of("tool_start")[0], recorder.of("tool_end")[0]
    assert tool_start.args == {"tool_name": "get_weather", "tool_input": {"city": "Paris"}}
    assert tool_end.args == {"tool_name": "get_weather", "tool_output": "Sunny in Paris"}
    assert tool_start.context == tool_end.context == {"run_id": tool_start.run_id, "parent_run_id": result.run_id,
                                                      "tags": [], "metadata": {}}
    call_ids = {event.run_id for event in recorder.events}
    assert len(call_ids) == 3  # two LLM calls and one tool call, each its own run id
    assert all(event.parent_run_id == result.run_id for event in recorder.events)
    assert result.tool_calls == (ToolCallRecord("get_weather", {"city": "Paris"}, "Sunny in Paris"),)
    first_end = recorder.of("llm_end")[0].args["response"]
    assert first_end.finish_reason == "tool_calls"
    assert first_end.tool_calls[0]["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert result.usage.total_tokens == sum(event.args["response"].usage.total_tokens
                                            for event in recorder.of("llm_end"))
    tool_message = server.requests[1]["messages"][-1]
    assert tool_message == {"role": "tool", "tool_call_id": first_end.tool_calls[0]["id"], "content": "Sunny in Paris"}


def test_structured_tool_output_is_sent_as_json(server: LocalServer) -> None:
    def forecast(city: str) -> dict[str, Any]:
        return {"city": city, "days": [21, 19]}

    recorder = Recorder()
    make_rlm(server, recorder, tools=[forecast]).run("forecast Rome")
    assert recorder.of("tool_end")[0].args["tool_output"] == '{"city": "Rome", "days": [21, 19]}'


def test_parallel_tool_calls_in_one_reply(server: LocalServer) -> None:
    recorder = Recorder()
    result = make_rlm(server, recorder, tools=[get_weather, get_time]).run(
        'get_weather {"city": "Oslo"} and get_time {"zone": "UTC"}')

    assert result.answer == "Tool results: get_weather -> Sunny in Oslo; get_time -> 12:00 UTC"
    assert [event.args["tool_name"] for event in recorder.of("tool_end")] == ["get_weather", "get_time"]
    assert len({event.run_id for event in recorder.of("tool_start")}) == 2
    assert [message["role"] for message in server.requests[1]["messages"]] == ["user", "assistant", "tool", "tool"]


def test_streamed_tool_calls_are_assembled(server: LocalServer) -> None:
    recorder = TokenRecorder()
    result = make_rlm(server, recorder, tools=[get_weather]).run('get_weather {"city": "Reykjavik in winter"}')
    assert server.requests[0]["stream"] is True
    assert recorder.of("tool_start")[0].args["tool_input"] == {"city": "Reykjavik in winter"}
    assert result.answer == "Tool results: get_weather -> Sunny in Reykjavik in winter"


def test_a_raising_tool_fires_on_error_and_the_model_is_told(server: LocalServer) -> None:
    def broken(city: str) -> str:
        raise ValueError(f"no data for {city}")

    recorder = Recorder()
    result = make_rlm(server, recorder, tools=[broken]).run("broken Atlantis")

    assert recorder.names() == ["llm_start", "llm_end", "tool_start", "error", "llm_start", "llm_end"]
    error_event = recorder.of("error")[0]
    assert isinstance(error_event.args["error"], ValueError)
    assert error_event.context["tool_name"] == "broken"
    assert error_event.run_id == recorder.of("tool_start")[0].run_id
    assert result.answer == "Tool results: broken -> Error: ValueError: no data for Atlantis"
    assert isinstance(result.tool_calls[0].error, ValueError)


def test_an_unknown_tool_fires_on_error_and_the_run_goes_on(server: LocalServer) -> None:
    recorder = Recorder()
    server.queue_reply(tool_calls=[{"name": "teleport", "arguments": {"to": "Mars"}}])
    result = make_rlm(server, recorder, tools=[get_weather]).run("go")

    assert recorder.names() == ["llm_start", "llm_end", "error", "llm_start", "llm_end"]
    error = recorder.of("error")[0].args["error"]
    assert isinstance(error, ToolCallError)
    assert str(error) == "unknown tool 'teleport'; the tools are: get_weather"
    assert result.answer == "Tool results: teleport -> Error: unknown tool 'teleport'; the tools are: get_weather"


def test_arguments_that_are_not_json_fire_on_error_and_the_run_goes_on(server: LocalServer) -> None:
    recorder = Recorder()
    server.queue_reply(tool_calls=[{"name": "get_weather", "arguments": "{not json"}])
    result = make_rlm(server, recorder, tools=[get_weather]).run("go")

    assert recorder.names() == ["llm_start", "llm_end", "error", "llm_start", "llm_end"]
    assert isinstance(recorder.of("error")[0].args["error"], ToolCallError)
    assert result.answer.startswith("Tool results: get_weather -> Error: arguments for tool 'get_weather' are not "
                                    "valid JSON")
    assert result.tool_calls[0].arguments is None


def test_too_many_tool_rounds_raise_after_on_error(server: LocalServer) -> None:
    recorder = Recorder()
    for _ in range(3):
        server.queue_reply(tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}}])
    with pytest.raises(ToolRoundsExceededError, match="max_tool_rounds=2"):
        make_rlm(server, recorder, tools=[get_weather], max_tool_rounds=2).run("loop")
    assert len(recorder.of("tool_end")) == 2
    assert recorder.names()[-2:] == ["llm_end", "error"]
    assert isinstance(recorder.of("error")[0].args["error"], ToolRoundsExceededError)


def test_an_async_tool_works_in_a_sync_run(server: LocalServer) -> None:
    async def slow_weather(city: str) -> str:
        await asyncio.sleep(0.01)
        return f"Windy in {city}"

    assert make_rlm(server, tools=[slow_weather]).run("slow_weather Oslo").answer == (
        "Tool results: slow_weather -> Windy in Oslo")


async def test_arun_runs_async_tool_calls_concurrently(server: LocalServer) -> None:
    both_running = asyncio.Barrier(2)

    async def first(x: str) -> str:
        await asyncio.wait_for(both_running.wait(), 2)
        return "one"

    async def second(x: str) -> str:
        await asyncio.wait_for(both_running.wait(), 2)
        return "two"

    recorder = Recorder()
    result = await make_rlm(server, recorder, tools=[first, second]).arun("first and second")
    assert result.answer == "Tool results: first -> one; second -> two"
    assert recorder.of("error") == []
