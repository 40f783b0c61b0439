"""LocalServer driven by the real ``openai`` client over loopback HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest

from rlm_toolkit.server import DEFAULT_MODELS, LOCAL_API_KEY, LocalServer

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                           "metric": {"type": "boolean"}, "note": {"type": "string"}},
            "required": ["city", "days", "metric"],
        },
    },
}
TIME_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}},
                       "required": ["zone"]},
    },
}


def user(content: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": content}]


def ask(client: openai.OpenAI, text: str) -> str | None:
    """The content of the non-streamed answer to one user message."""
    return client.chat.completions.create(model="gpt-4o", messages=user(text)).choices[0].message.content


@pytest.fixture
def client(server: LocalServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0)


def test_plain_completion_and_usage(client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"}]

    completion = client.chat.completions.create(model="gpt-4o-mini", messages=messages)

    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "Hello! You said: hi there"
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == (2 + 3) + (2 + 3)
    assert completion.usage.completion_tokens == 5
    assert completion.usage.total_tokens == 15


def test_long_answer_is_deterministic_and_about_sixty_words(client: openai.OpenAI) -> None:
    answers = [client.chat.completions.create(model="gpt-4o", messages=user("a long one please"))
               .choices[0].message.content for _ in range(2)]

    assert answers[0] == answers[1]
    assert answers[0] is not None and answers[0].startswith("Hello! You said: a long one please ")
    assert 50 <= len(answers[0].split()) <= 70


def test_stream_deltas_join_to_the_non_stream_content(client: openai.OpenAI) -> None:
    messages = user("tell me something long,  with  odd spacing")
    expected = client.chat.completions.create(model="gpt-4o", messages=messages)

    chunks = list(client.chat.completions.create(
        model="gpt-4o", messages=messages, stream=True, stream_options={"include_usage": True}))

    assert chunks[0].object == "chat.completion.chunk"
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == expected.choices[0].message.content
    assert len(chunks) > 50  # one chunk per word
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "stop"
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage == expected.usage


def test_stream_without_include_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=user("hi"), stream=True))

    assert all(chunk.choices and chunk.usage is None for chunk in chunks)


def test_tool_call_arguments_come_from_the_schema(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-4o", messages=user("Please call get_weather Paris, thanks"), tools=[WEATHER_TOOL])

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.id
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "days": 1, "metric": True}


def test_tool_call_uses_a_json_literal_and_spaced_names(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-4o", messages=user('What does GET WEATHER {"city": "Oslo", "days": 3} say?'),
        tools=[WEATHER_TOOL])

    (call,) = completion.choices[0].message.tool_calls or []
    assert json.loads(call.function.arguments) == {"city": "Oslo", "days": 3}


def test_tool_call_streams(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o", messages=user('use get_weather {"city": "Lisbon", "days": 10, "metric": false}'),
        tools=[WEATHER_TOOL], stream=True)

    ids: dict[int, str] = {}
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    finish_reasons = []
    for chunk in stream:
        choice = chunk.choices[0]
        finish_reasons.append(choice.finish_reason)
        for delta in choice.delta.tool_calls or []:
            if delta.id:
                ids[delta.index] = delta.id
            if delta.function and delta.function.name:
                names[delta.index] = delta.function.name
            if delta.function and delta.function.arguments:
                arguments[delta.index] = arguments.get(delta.index, "") + delta.function.arguments

    assert names == {0: "get_weather"}
    assert set(ids) == {0}
    assert json.loads(arguments[0]) == {"city": "Lisbon", "days": 10, "metric": False}
    assert finish_reasons[-1] == "tool_calls"


def test_two_mentioned_tools_are_parallel_calls_in_order_of_mention(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-4o", messages=user("get_time UTC and then get_weather Rome"),
        tools=[WEATHER_TOOL, TIME_TOOL])

    calls = completion.choices[0].message.tool_calls or []
    assert [call.function.name for call in calls] == ["get_time", "get_weather"]
    assert len({call.id for call in calls}) == 2
    assert json.loads(calls[0].function.arguments) == {"zone": "UTC"}
    assert json.loads(calls[1].function.arguments)["city"] == "Rome"


def test_tool_results_round_trip(client: openai.OpenAI) -> None:
    tools = [WEATHER_TOOL, TIME_TOOL]
    messages: list[dict[str, Any]] = user("get_weather Oslo and get_time CET")
    first = client.chat.completions.create(model="gpt-4o", messages=messages, tools=tools)
    assistant_message = first.choices[0].message
    messages.append(assistant_message.model_dump(exclude_none=True))
    for call, result in zip(assistant_message.tool_calls or [], ["rainy, 4C", "14:00"]):
        messages.append({"role": "tool", "tool_call_id": call.id, "content": result})

    second = client.chat.completions.create(model="gpt-4o", messages=messages, tools=tools)

    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == \
        "Tool results: get_weather -> rainy, 4C; get_time -> 14:00"


def test_tools_not_mentioned_give_a_text_answer(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-4o", messages=user("weather?"), tools=[WEATHER_TOOL])

    assert completion.choices[0].message.content == "Hello! You said: weather?"
    assert not completion.choices[0].message.tool_calls


def test_rate_limit_with_retry_after_header(server: LocalServer, client: openai.OpenAI) -> None:
    server.fail_next(429, retry_after=0.01)

    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=user("hi"))

    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "0.01"
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.type == "rate_limit_error"
    assert ask(client, "hi") == "Hello! You said: hi"


def test_fault_count_and_raw_response(server: LocalServer, client: openai.OpenAI) -> None:
    server.fail_next(503, count=2, message="down for maintenance")

    for _ in range(2):
        with pytest.raises(openai.InternalServerError, match="down for maintenance"):
            client.chat.completions.with_raw_response.create(model="gpt-4o", messages=user("hi"))
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=user("hi"))

    assert raw.status_code == 200
    assert raw.parse().choices[0].message.content == "Hello! You said: hi"


def test_server_error(server: LocalServer, client: openai.OpenAI) -> None:
    server.fail_next(500)

    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=user("hi"))

    assert caught.value.type == "server_error"


def test_other_injected_status_is_an_invalid_request_error(server: LocalServer,
                                                           client: openai.OpenAI) -> None:
    server.fail_next(401)

    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=user("hi"))

    assert caught.value.type == "invalid_request_error"


def test_hang_makes_the_client_time_out(server: LocalServer, client: openai.OpenAI) -> None:
    server.hang_next(2.0)

    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.1).chat.completions.create(model="gpt-4o", messages=user("hi"))

    assert ask(client, "again") == "Hello! You said: again"


def test_short_hang_still_answers(server: LocalServer, client: openai.OpenAI) -> None:
    server.hang_next(0.05)

    completion = client.chat.completions.create(model="gpt-4o", messages=user("hi"))

    assert completion.choices[0].message.content == "Hello! You said: hi"


def test_drop_is_a_connection_error(server: LocalServer, client: openai.OpenAI) -> None:
    server.drop_next()

    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="gpt-4o", messages=user("hi"))

    assert ask(client, "hi") == "Hello! You said: hi"


def test_echo_authorization_puts_the_header_in_the_error_message(server: LocalServer) -> None:
    server.fail_next(500, echo_authorization=True)
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-echoed-key", max_retries=0)

    with pytest.raises(openai.InternalServerError) as caught:
        ask(client, "hi")

    assert caught.value.body == {
        "message": "The server had an error while processing your request. (Injected by LocalServer.) "
                   "Authorization header received: Bearer sk-echoed-key",
        "type": "server_error", "param": None, "code": None,
    }


def test_malformed_plain_answers(server: LocalServer, client: openai.OpenAI) -> None:
    server.malform_next("invalid_json")
    with pytest.raises(json.JSONDecodeError, match="Unterminated string"):
        client.chat.completions.create(model="gpt-4o", messages=user("hi"))

    server.malform_next("html")
    page = client.chat.completions.create(model="gpt-4o", messages=user("hi"))
    assert isinstance(page, str) and page.startswith("<!DOCTYPE html>")

    server.malform_next("no_choices")
    completion = client.chat.completions.create(model="gpt-4o", messages=user("hi"))
    assert completion.choices is None
    assert completion.model == "gpt-4o"

    assert ask(client, "hi") == "Hello! You said: hi"


def test_malformed_streams(server: LocalServer, client: openai.OpenAI) -> None:
    received: list[Any] = []
    server.malform_next("bad_sse", after_chunks=2)
    with pytest.raises(json.JSONDecodeError):
        for chunk in client.chat.completions.create(model="gpt-4o", messages=user("one two"), stream=True):
            received.append(chunk.choices[0].delta)
    assert [delta.content for delta in received] == ["", "Hello! "]

    received.clear()
    server.malform_next("cut_stream", after_chunks=3)
    with pytest.raises(openai.APIConnectionError):
        for chunk in client.chat.completions.create(model="gpt-4o", messages=user("one two"), stream=True):
            received.append(chunk.choices[0].delta)
    assert [delta.content for delta in received] == ["", "Hello! ", "You "]

    server.malform_next("cut_stream", after_chunks=0)
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="gpt-4o", messages=user("not streamed"))


def test_a_malformed_answer_still_validates_the_request_first(server: LocalServer, client: openai.OpenAI) -> None:
    server.malform_next("html")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=user("hi"))
    assert ask(client, "hi") == "Hello! You said: hi"


def test_keep_alive_sends_sse_comments_then_the_stream(server: LocalServer) -> None:
    server.keep_alive_next(0.3, interval=0.05)
    request = urllib.request.Request(
        f"{server.base_url}/chat/completions", method="POST", headers={"Content-Type": "application/json"},
        data=json.dumps({"model": "gpt-4o", "messages": user("hi"), "stream": True}).encode())

    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=5) as response:
        first_line = response.readline()
        first_byte_after = time.monotonic() - started
        body = first_line + response.read()
    elapsed = time.monotonic() - started

    assert first_line == b": keep-alive\n"
    assert first_byte_after < 0.25
    assert elapsed >= 0.3
    assert body.count(b": keep-alive\n\n") >= 5
    events = [line for line in body.split(b"\n\n") if line.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]"
    contents = [json.loads(event[6:])["choices"][0]["delta"].get("content") for event in events[:-1]]
    assert "".join(content or "" for content in contents) == "Hello! You said: hi"


def test_keep_alive_pads_a_plain_answer_with_spaces(server: LocalServer, client: openai.OpenAI) -> None:
    server.keep_alive_next(0.3, interval=0.05)
    started = time.monotonic()
    # A per-read timeout shorter than the whole wait: each space resets it.
    answer = client.with_options(timeout=0.2).chat.completions.create(model="gpt-4o", messages=user("hi"))
    assert time.monotonic() - started >= 0.3
    assert answer.choices[0].message.content == "Hello! You said: hi"


@pytest.mark.parametrize("call", [
    lambda server: server.malform_next("gibberish"),
    lambda server: server.malform_next("html", after_chunks=-1),
    lambda server: server.malform_next("html", count=0),
    lambda server: server.keep_alive_next(-1.0),
    lambda server: server.keep_alive_next(1.0, interval=0.0),
])
def test_bad_fault_arguments_are_rejected(server: LocalServer, call: Any) -> None:
    with pytest.raises(ValueError):
        call(server)


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-9", messages=user("hi"))

    assert caught.value.code == "model_not_found"
    assert caught.value.body == {
        "message": "The model `gpt-9` does not exist or you do not have access to it.",
        "type": "invalid_request_error", "param": None, "code": "model_not_found",
    }


def test_empty_messages_is_a_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[])

    assert caught.value.param == "messages"


def test_invalid_json_is_a_bad_request(server: LocalServer) -> None:
    request = urllib.request.Request(f"{server.base_url}/chat/completions", data=b"{not json",
                                     headers={"Content-Type": "application/json"}, method="POST")

    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)

    assert caught.value.code == 400
    assert json.loads(caught.value.read())["error"]["type"] == "invalid_request_error"
    assert server.requests == []


def test_queued_replies_come_first_in_order(server: LocalServer, client: openai.OpenAI) -> None:
    server.queue_reply("first", usage=(11, 22))
    server.queue_reply(tool_calls=[{"name": "lookup", "arguments": {"q": "x"}, "id": "call_fixed"}])

    first = client.chat.completions.create(model="gpt-4o", messages=user("hi"))
    second = client.chat.completions.create(model="gpt-4o", messages=user("hi"))
    third = client.chat.completions.create(model="gpt-4o", messages=user("hi"))

    assert first.choices[0].message.content == "first"
    assert first.usage is not None
    assert (first.usage.prompt_tokens, first.usage.completion_tokens, first.usage.total_tokens) \
        == (11, 22, 33)
    (call,) = second.choices[0].message.tool_calls or []
    assert (call.id, call.function.name) == ("call_fixed", "lookup")
    assert json.loads(call.function.arguments) == {"q": "x"}
    assert second.choices[0].finish_reason == "tool_calls"
    assert third.choices[0].message.content == "Hello! You said: hi"


def test_faults_take_precedence_over_queued_replies(server: LocalServer, client: openai.OpenAI) -> None:
    server.queue_reply("canned")
    server.fail_next(500)

    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o", messages=user("hi"))

    assert ask(client, "hi") == "canned"


def test_requests_are_recorded_and_reset(server: LocalServer, client: openai.OpenAI) -> None:
    client.chat.completions.create(model="gpt-4o", messages=user("one"), temperature=0.5)
    client.chat.completions.create(model="gpt-4o-mini", messages=user("two"))

    assert [request["model"] for request in server.requests] == ["gpt-4o", "gpt-4o-mini"]
    assert server.requests[0]["messages"] == user("one")
    assert server.requests[0]["temperature"] == 0.5

    server.queue_reply("unused")
    server.fail_next(500)
    server.reset()

    assert server.requests == []
    assert ask(client, "x") == "Hello! You said: x"


def test_models_list(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == list(DEFAULT_MODELS)


def test_custom_models_latency_and_idempotent_stop() -> None:
    server = LocalServer(models=["my-model"], latency=0.01)
    with server:
        client = openai.OpenAI(base_url=server.base_url, api_key="anything", max_retries=0)
        assert [model.id for model in client.models.list()] == ["my-model"]
        assert client.chat.completions.create(model="my-model", messages=user("hi")).model == "my-model"
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="gpt-4o", messages=user("hi"))
    server.stop()

    assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
    assert server.api_key == LOCAL_API_KEY


async def test_async_client_against_astart() -> None:
    async with LocalServer() as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0)
        completion = await client.chat.completions.create(model="gpt-4o", messages=user("async hi"))
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=user("async hi"), stream=True,
            stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
        server.fail_next(429, retry_after=1)
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model="gpt-4o", messages=user("async hi"))
        await client.close()

    assert completion.choices[0].message.content == "Hello! You said: async hi"
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) \
        == "Hello! You said: async hi"
    assert chunks[-1].usage == completion.usage
    assert caught.value.response.headers["retry-after"] == "1"
    assert len(server.requests) == 3
    await server.astop()  # idempotent


def test_main_serve_runs_until_interrupted() -> None:
    command = [sys.executable, "-c",
               "from rlm_toolkit.server import main_serve; main_serve('127.0.0.1', 0)"]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=environment) as process:
        try:
            assert process.stdout is not None
            banner = process.stdout.readline()
            base_url = next(word for word in banner.split() if word.startswith("http://127.0.0.1:"))
            with openai.OpenAI(base_url=base_url, api_key=LOCAL_API_KEY, max_retries=0) as client:
                assert ask(client, "served") == "Hello! You said: served"
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=5) == 0
        finally:
            process.kill()


def conversation(*turns: tuple[str, str]) -> list[dict[str, Any]]:
    return [{"role": role, "content": content} for role, content in turns]


@pytest.mark.parametrize("turns, answer", [
    ((("user", "My name is Ada."), ("assistant", "Hello! You said: My name is Ada."), ("user", "What is my name?")),
     "Your name is Ada."),
    ((("user", "my favourite colour is deep blue, I think"), ("user", "Hey, what's my  Favourite colour")),
     "Your favourite colour is deep blue."),
    ((("user", "My name is Ada. No, my name is Grace!"), ("user", "My name is Linus"), ("user", "WHAT IS MY NAME?")),
     "Your name is Linus."),
    ((("user", [{"type": "text", "text": "My name is Ada."}]), ("user", "What is my name?")), "Your name is Ada."),
])
def test_a_question_about_something_said_earlier_is_answered_from_the_history(
        client: openai.OpenAI, turns: tuple[tuple[str, Any], ...], answer: str) -> None:
    completion = client.chat.completions.create(model="gpt-4o", messages=conversation(*turns))

    assert completion.choices[0].message.content == answer
    assert completion.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("turns", [
    (("user", "What is my name?"),),  # never told
    (("assistant", "My name is Bot."), ("user", "What is my name?")),  # only user messages count
    (("user", "My name is Ada."), ("user", "What is my age?")),  # told something else
    (("system", "My name is Ada."), ("user", "What is my name?")),
])
def test_a_question_about_something_never_said_gets_the_echo(client: openai.OpenAI,
                                                             turns: tuple[tuple[str, str], ...]) -> None:
    completion = client.chat.completions.create(model="gpt-4o", messages=conversation(*turns))

    assert completion.choices[0].message.content == f"Hello! You said: {turns[-1][1]}"


def test_the_recalled_answer_streams_like_any_other(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o", stream=True,
        messages=conversation(("user", "My name is Ada."), ("user", "What is my name?")),
    )

    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == "Your name is Ada."
