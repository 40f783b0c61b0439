"""RLM against servers that misbehave: malformed answers, broken streams, keep-alives without tokens, and
secrets that a server echoes or that sit in the base URL. The real ``openai`` client talks to the LocalServer's
fault injection; nothing is mocked."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import textwrap
import time
import traceback
from pathlib import Path

import openai
import pytest

from rlm_toolkit.callbacks import ConsoleCallback, FileLogCallback, MetricsCallback
from rlm_toolkit.errors import LLMCallError, MalformedResponseError
from rlm_toolkit.rlm import RLM
from rlm_toolkit.server import LocalServer
from test_rlm import MODEL, Recorder, TokenRecorder, make_rlm

MODES = ["run", "arun", "stream", "astream"]
RETRY_ADVICE = "try again later or raise max_attempts"
BASE_URL_ADVICE = "check base_url: a proxy or a sign-in page may be answering instead of the API"


def answer_in(mode: str, rlm: RLM, prompt: str, chunks: list[str] | None = None) -> str:
    """The answer to ``prompt`` by ``run``, ``arun``, ``stream`` or ``astream``; streamed text goes to ``chunks``."""
    received = [] if chunks is None else chunks
    if mode == "run":
        return rlm.run(prompt).answer
    if mode == "stream":
        received.extend(rlm.stream(prompt))
        return "".join(received)

    async def answer_async() -> str:
        try:
            if mode == "arun":
                return (await rlm.arun(prompt)).answer
            async for chunk in rlm.astream(prompt):
                received.append(chunk)
            return "".join(received)
        finally:
            await rlm.aclose()

    return asyncio.run(answer_async())


def metrics_counts(metrics: MetricsCallback) -> dict[str, int]:
    snapshot = metrics.get_metrics()
    return {name: snapshot[name] for name in ("total_calls", "open_runs", "errors", "retries")}


def shown_texts(error: BaseException) -> list[str]:
    """Everything a user sees of ``error``: its text, repr and the whole printed traceback with its causes."""
    return [str(error), repr(error), "".join(traceback.format_exception(error))]


# -- malformed answers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, problem, advice", [
    ("invalid_json", "the body is not valid JSON (Unterminated string starting at: line 1", RETRY_ADVICE),
    ("html", "the body is text/html, not JSON (it begins '<!DOCTYPE html><html><head><title>Sign in</title>",
     BASE_URL_ADVICE),
    ("no_choices", "the completion has no choices",
     "check that base_url points at an OpenAI-compatible chat completions API"),
])
@pytest.mark.parametrize("mode", ["run", "arun"])
def test_a_malformed_answer_is_retried_then_raises_a_typed_error(server: LocalServer, backend: str, mode: str,
                                                                 kind: str, problem: str, advice: str) -> None:
    recorder, metrics = Recorder(), MetricsCallback()
    server.malform_next(kind, count=2)
    with pytest.raises(MalformedResponseError) as raised:
        answer_in(mode, make_rlm(server, recorder, metrics, max_attempts=2), "hi")

    error = raised.value
    assert isinstance(error, LLMCallError)
    assert str(error).startswith(f"malformed answer from {server.base_url} after 2 attempts: {problem}")
    assert str(error).endswith(f"; {advice}")
    assert error.attempts == 2
    assert isinstance(error.__cause__, openai.APIResponseValidationError)
    assert recorder.names() == ["llm_start", "retry", "error"]
    assert recorder.of("error")[0].args["error"] is error
    assert isinstance(recorder.of("retry")[0].args["error"], openai.APIResponseValidationError)
    assert metrics_counts(metrics) == {"total_calls": 1, "open_runs": 0, "errors": 1, "retries": 1}
    assert len(server.requests) == 2


@pytest.mark.parametrize("kind", ["invalid_json", "html", "no_choices"])
def test_one_malformed_answer_is_retried_and_the_run_answers(server: LocalServer, backend: str, kind: str) -> None:
    recorder, metrics = Recorder(), MetricsCallback()
    server.malform_next(kind)
    assert make_rlm(server, recorder, metrics).run("hi").answer == "Hello! You said: hi"
    assert recorder.names() == ["llm_start", "retry", "llm_end"]
    retry = recorder.of("retry")[0]
    assert (retry.args["attempt"], retry.args["max_attempts"]) == (1, 3)
    assert isinstance(retry.args["error"], openai.APIResponseValidationError)
    assert metrics_counts(metrics) == {"total_calls": 1, "open_runs": 0, "errors": 0, "retries": 1}


def test_a_plain_answer_cut_short_says_so(server: LocalServer, backend: str) -> None:
    recorder = Recorder()
    server.malform_next("cut_stream", after_chunks=0)  # the connection closes in the middle of the body
    with pytest.raises(MalformedResponseError) as raised:
        make_rlm(server, recorder, max_attempts=1).run("hi")
    assert str(raised.value) == (f"malformed answer from {server.base_url}: the connection closed before the "
                                 f"whole answer arrived; {RETRY_ADVICE}")
    assert recorder.names() == ["llm_start", "error"]


@pytest.mark.parametrize("kind, problem, advice", [
    ("bad_sse", "stream event 2 is not valid JSON (Expecting ", RETRY_ADVICE),
    ("cut_stream", "the connection closed after 1 chunk, before the stream's end", RETRY_ADVICE),
    ("html", "the answer to a streamed request is text/html, not an event stream", BASE_URL_ADVICE),
])
@pytest.mark.parametrize("mode", ["stream", "astream"])
def test_a_stream_broken_before_any_text_is_retried_then_raises(server: LocalServer, backend: str, mode: str,
                                                                kind: str, problem: str, advice: str) -> None:
    recorder, metrics = TokenRecorder(), MetricsCallback()
    server.malform_next(kind, count=2, after_chunks=1)
    chunks: list[str] = []
    with pytest.raises(MalformedResponseError) as raised:
        answer_in(mode, make_rlm(server, recorder, metrics, max_attempts=2), "one two three", chunks)

    message = str(raised.value)
    assert message.startswith(f"malformed answer from {server.base_url} after 2 attempts: {problem}")
    assert message.endswith(f"; {advice}")
    assert "could not connect" not in message
    assert chunks == []
    assert recorder.names() == ["llm_start", "retry", "error"]
    assert metrics_counts(metrics) == {"total_calls": 1, "open_runs": 0, "errors": 1, "retries": 1}


@pytest.mark.parametrize("kind, problem", [
    ("bad_sse", "stream event 4 is not valid JSON (Expecting value: line 1 column 39 (char 38))"),
    ("cut_stream", "the connection closed after 3 chunks, before the stream's end"),
])
@pytest.mark.parametrize("mode", ["stream", "astream"])
def test_a_stream_broken_after_text_is_not_retried_and_says_why(server: LocalServer, backend: str, mode: str,
                                                                kind: str, problem: str) -> None:
    recorder, metrics = TokenRecorder(), MetricsCallback()
    server.malform_next(kind, after_chunks=3)  # the role, then "Hello! " and "You "
    chunks: list[str] = []
    with pytest.raises(MalformedResponseError) as raised:
        answer_in(mode, make_rlm(server, recorder, metrics), "one two three", chunks)

    assert str(raised.value) == (
        f"malformed answer from {server.base_url}: {problem}; {RETRY_ADVICE} "
        "(not retried: part of the answer had already been streamed)")
    assert chunks == recorder.tokens() == ["Hello! ", "You "]
    assert recorder.names() == ["llm_start", "llm_new_token", "llm_new_token", "error"]
    assert metrics_counts(metrics) == {"total_calls": 1, "open_runs": 0, "errors": 1, "retries": 0}
    assert len(server.requests) == 1


# -- timeouts ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_keep_alives_cannot_hold_an_attempt_past_timeout(server: LocalServer, backend: str, mode: str) -> None:
    recorder, metrics = Recorder(), MetricsCallback()
    server.keep_alive_next(10.0, count=2)
    rlm = make_rlm(server, recorder, metrics, timeout=0.5, max_attempts=2)
    started = time.monotonic()
    with pytest.raises(LLMCallError) as raised:
        answer_in(mode, rlm, "hi")
    elapsed = time.monotonic() - started

    assert 1.0 <= elapsed < 5.0, f"two attempts of timeout=0.5 took {elapsed:.2f} s"
    assert str(raised.value) == (
        f"the answer from {server.base_url} took longer than timeout=0.5 s after 2 attempts; "
        "raise timeout= or check that the server is answering")
    assert recorder.names() == ["llm_start", "retry", "error"]
    retry = recorder.of("retry")[0]
    assert retry.args["attempt"] == 1
    assert isinstance(retry.args["error"], openai.APITimeoutError)
    assert metrics_counts(metrics) == {"total_calls": 1, "open_runs": 0, "errors": 1, "retries": 1}


@pytest.mark.parametrize("mode", MODES)
def test_a_timed_out_attempt_fires_on_retry_and_the_next_one_answers(server: LocalServer, backend: str,
                                                                     mode: str) -> None:
    recorder = Recorder()
    server.keep_alive_next(10.0)
    started = time.monotonic()
    assert answer_in(mode, make_rlm(server, recorder, timeout=0.5), "hi") == "Hello! You said: hi"

    assert time.monotonic() - started < 5.0
    assert recorder.names() == ["llm_start", "retry", "llm_end"]
    retry = recorder.of("retry")[0]
    assert (retry.args["attempt"], retry.args["max_attempts"]) == (1, 3)
    assert isinstance(retry.args["error"], openai.APITimeoutError)


@pytest.mark.parametrize("mode", MODES)
def test_idle_timeout_bounds_each_wait_for_the_answer(server: LocalServer, mode: str) -> None:
    server.keep_alive_next(10.0)
    started = time.monotonic()
    with pytest.raises(LLMCallError) as raised:
        answer_in(mode, make_rlm(server, timeout=30.0, idle_timeout=0.3, max_attempts=1), "hi")

    assert time.monotonic() - started < 4.0
    assert str(raised.value) == (
        f"{server.base_url} sent no part of the answer for idle_timeout=0.3 s; "
        "raise idle_timeout= or check that the server is answering")


@pytest.mark.parametrize("mode", ["stream", "astream"])
def test_time_the_caller_spends_between_chunks_is_not_counted(server: LocalServer, mode: str) -> None:
    rlm = make_rlm(server, timeout=0.5, max_attempts=1)
    chunks = []
    started = time.monotonic()
    if mode == "stream":
        for chunk in rlm.stream("one two three four five"):
            chunks.append(chunk)
            time.sleep(0.1)
    else:
        async def read_slowly() -> None:
            async for chunk in rlm.astream("one two three four five"):
                chunks.append(chunk)
                await asyncio.sleep(0.1)
            await rlm.aclose()

        asyncio.run(read_slowly())
    assert time.monotonic() - started > 0.7
    assert "".join(chunks) == "Hello! You said: one two three four five"


def test_idle_timeout_must_be_positive(server: LocalServer) -> None:
    with pytest.raises(ValueError, match="idle_timeout must be a positive number of seconds or None, got 0"):
        make_rlm(server, idle_timeout=0)


# -- streamed calls and on_retry ----------------------------------------------------------------------------


@pytest.mark.parametrize("status, error_type", [(429, openai.RateLimitError), (503, openai.InternalServerError)])
@pytest.mark.parametrize("mode", ["run", "stream", "astream"])
def test_a_streamed_call_whose_first_attempt_fails_fires_on_retry_once(
        server: LocalServer, backend: str, mode: str, status: int, error_type: type[Exception]) -> None:
    recorder = TokenRecorder()  # also makes run() stream
    server.fail_next(status, retry_after=0.0)
    assert answer_in(mode, make_rlm(server, recorder), "one two") == "Hello! You said: one two"

    (retry,) = recorder.of("retry")
    assert (retry.args["attempt"], retry.args["max_attempts"]) == (1, 3)
    assert isinstance(retry.args["error"], error_type)
    assert retry.context == recorder.of("llm_start")[0].context
    assert recorder.names() == ["llm_start", "retry"] + ["llm_new_token"] * 5 + ["llm_end"]
    assert [request["stream"] for request in server.requests] == [True, True]


# -- secrets --------------------------------------------------------------------------------------------------


def test_a_password_in_base_url_is_never_shown(server: LocalServer, backend: str, tmp_path: Path) -> None:
    password, decoded_password = "pa55-w0rd%21x", "pa55-w0rd!x"
    base_url = server.base_url.replace("http://", f"http://ada:{password}@")
    shown_url = server.base_url.replace("http://", "http://ada:[REDACTED]@")
    console = io.StringIO()
    log = FileLogCallback(tmp_path / "log.jsonl")
    recorder = Recorder()
    rlm = RLM.from_openai(MODEL, [ConsoleCallback(stream=console), log, recorder], base_url=base_url,
                          api_key=server.api_key, max_attempts=1)
    assert rlm.run("hi").answer == "Hello! You said: hi"
    server.fail_next(500)
    with pytest.raises(LLMCallError) as raised:
        rlm.run("again")
    log.close()

    assert repr(rlm) == f"RLM(model={MODEL!r}, base_url={shown_url!r})"
    assert rlm.base_url == shown_url
    assert str(raised.value) == f"server error 500 from {shown_url}; {RETRY_ADVICE}"
    shown = [repr(rlm), console.getvalue(), (tmp_path / "log.jsonl").read_text(), *shown_texts(raised.value),
             *(repr(event) for event in recorder.events)]
    assert [text for text in shown if password in text or decoded_password in text] == []
    assert shown_url in console.getvalue()


def test_an_unreachable_base_url_with_a_password_is_named_without_it() -> None:
    rlm = RLM.from_openai(MODEL, base_url="http://ada:open-sesame-9@127.0.0.1:9/v1", max_attempts=1)
    with pytest.raises(LLMCallError) as raised:
        rlm.run("hi")
    assert str(raised.value) == ("could not connect to http://ada:[REDACTED]@127.0.0.1:9/v1; "
                                 "check the base URL and that the server is running")
    assert [text for text in shown_texts(raised.value) if "open-sesame-9" in text] == []


@pytest.mark.parametrize("api_key", ["sk-echo-0123456789abcdefghijklm", "Zq7xW"])
def test_an_echoed_authorization_header_is_in_no_printed_traceback(server: LocalServer, tmp_path: Path,
                                                                   api_key: str) -> None:
    server.fail_next(500, count=2, echo_authorization=True)
    script = tmp_path / "uncaught.py"
    script.write_text(textwrap.dedent(f"""
        from rlm_toolkit import RLM
        rlm = RLM.from_openai("gpt-4o-mini", base_url={server.base_url!r}, api_key={api_key!r},
                              max_attempts=2, backoff_base=0.0)
        rlm.run("hi")
    """))
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    finished = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                              env=environment)

    assert finished.returncode == 1
    assert f"rlm_toolkit.errors.LLMCallError: server error 500 from {server.base_url} after 2 attempts" \
        in finished.stderr
    assert "openai.InternalServerError: Error code: 500" in finished.stderr  # the cause is printed too
    assert "Authorization header received: Bearer [REDACTED]" in finished.stderr
    assert api_key not in finished.stderr
    assert f"Bearer {api_key}" not in finished.stderr


@pytest.mark.parametrize("api_key", ["sk-echo-0123456789abcdefghijklm", "Zq7xW"])
def test_an_echoed_key_reaches_no_handler_log_or_exception(server: LocalServer, backend: str, tmp_path: Path,
                                                          api_key: str) -> None:
    console = io.StringIO()
    log = FileLogCallback(tmp_path / "log.jsonl")
    recorder = Recorder()
    rlm = RLM.from_openai(MODEL, [ConsoleCallback(stream=console), log, recorder], base_url=server.base_url,
                          api_key=api_key, max_attempts=2, backoff_base=0.0)
    server.fail_next(500, count=2, echo_authorization=True)
    with pytest.raises(LLMCallError) as raised:
        rlm.run("hi")
    log.close()

    retry_error = recorder.of("retry")[0].args["error"]
    cause = raised.value.__cause__
    assert isinstance(cause, openai.InternalServerError)
    assert cause.body == {"message": "The server had an error while processing your request. (Injected by "
                                     "LocalServer.) Authorization header received: Bearer [REDACTED]",
                          "type": "server_error", "param": None, "code": None}
    shown = [console.getvalue(), (tmp_path / "log.jsonl").read_text(), *shown_texts(raised.value),
             *shown_texts(retry_error), str(retry_error.body), cause.message]
    assert [text for text in shown if api_key in text] == []


def test_a_five_character_key_never_appears(server: LocalServer, backend: str, tmp_path: Path) -> None:
    api_key = "Kw3rT"
    console = io.StringIO()
    log = FileLogCallback(tmp_path / "log.jsonl")
    rlm = RLM.from_openai(MODEL, [ConsoleCallback(stream=console), log], base_url=server.base_url,
                          api_key=api_key, max_attempts=1)
    server.fail_next(400, message=f"Incorrect API key provided: {api_key}.")
    with pytest.raises(LLMCallError) as raised:
        rlm.run("hi")
    log.close()

    assert str(raised.value) == (f"{server.base_url} rejected the request (400): Error code: 400 - "
                                 "Incorrect API key provided: [REDACTED].")
    shown = [repr(rlm), console.getvalue(), (tmp_path / "log.jsonl").read_text(), *shown_texts(raised.value)]
    assert [text for text in shown if api_key in text] == []


def test_timeout_still_bounds_sync_reads_in_a_forked_child(server: LocalServer, tmp_path: Path) -> None:
    server.keep_alive_next(10.0, count=2)
    script = tmp_path / "fork.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, time
        from rlm_toolkit import RLM
        from rlm_toolkit.errors import LLMCallError
        server = {server.base_url!r}
        try:  # the parent's own timed-out read: its watchdog thread is running when it forks
            RLM.from_openai("gpt-4o-mini", base_url=server, api_key="sk-local", timeout=0.3, max_attempts=1).run("a")
        except LLMCallError:
            pass
        pid = os.fork()
        if pid == 0:
            rlm = RLM.from_openai("gpt-4o-mini", base_url=server, api_key="sk-local", timeout=0.5, max_attempts=1)
            started = time.monotonic()
            try:
                rlm.run("hi")
            except LLMCallError as error:
                print(f"{{time.monotonic() - started:.2f}} {{error}}", flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
    """))
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    finished = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                              env=environment)

    assert finished.returncode == 0, finished.stderr
    seconds, message = finished.stdout.strip().split(" ", 1)
    assert float(seconds) < 4.0
    assert message.startswith(f"the answer from {server.base_url} took longer than timeout=0.5 s")
