"""What the RLM takes: prompts of the wrong type and bad models are refused at the call, before any event or
request; which failed calls are retried; base URLs that cannot work; progress=True without tqdm."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from rlm_toolkit.errors import LLMCallError, RLMConfigError
from rlm_toolkit.rlm import RLM
from rlm_toolkit.server import LocalServer
from test_rlm import MODEL, Recorder, make_rlm

URL_ADVICE = "give an http:// or https:// URL such as http://127.0.0.1:8000/v1"


class EveryEventRecorder(Recorder):
    """A Recorder that also records the run's own events and streamed tokens."""

    def on_run_start(self, prompt: str, **kwargs: Any) -> None:
        self._add("run_start", kwargs, prompt=prompt)

    def on_run_end(self, answer: str, **kwargs: Any) -> None:
        self._add("run_end", kwargs, answer=answer)

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self._add("llm_new_token", kwargs, token=token)


def start(mode: str, rlm: RLM, prompt: Any) -> object:
    """Call entry point ``mode`` with ``prompt``; the streams are created but not iterated."""
    if mode == "arun":
        return asyncio.run(rlm.arun(prompt))
    return getattr(rlm, mode)(prompt)


async def batch_in_loop(rlm: RLM, prompts: Any) -> object:
    return await rlm.abatch(prompts, progress=False)


def start_batch(mode: str, rlm: RLM, prompts: Any) -> object:
    if mode == "abatch":
        return asyncio.run(batch_in_loop(rlm, prompts))
    return rlm.batch(prompts, progress=False)


# -- prompts ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["run", "arun", "stream", "astream"])
@pytest.mark.parametrize("prompt, refusal", [
    (None, "takes the prompt as a str, not a NoneType"),
    (123, "takes the prompt as a str, not an int"),
    (b"hi", "takes the prompt as a str, not a bytes; decode it first, e.g. prompt.decode('utf-8')"),
    ({"role": "user", "content": "hi"}, "takes the prompt as a str, not a dict"),
])
def test_a_prompt_that_is_not_a_str_is_refused_at_the_call(server: LocalServer, backend: str, mode: str,
                                                           prompt: Any, refusal: str) -> None:
    recorder = EveryEventRecorder()
    with pytest.raises(TypeError) as raised:
        start(mode, make_rlm(server, recorder), prompt)
    assert str(raised.value) == f"{mode}() {refusal}"
    assert recorder.events == []
    assert server.requests == []


@pytest.mark.parametrize("mode, several", [("run", "batch"), ("stream", "batch"), ("arun", "abatch"),
                                           ("astream", "abatch")])
def test_a_list_given_as_one_prompt_points_to_batch(server: LocalServer, mode: str, several: str) -> None:
    with pytest.raises(TypeError) as raised:
        start(mode, make_rlm(server), ["hi", "there"])
    assert str(raised.value) == (f"{mode}() takes the prompt as a str, not a list; to answer several prompts, "
                                 f"call {several}() (a list of chat messages is not supported)")
    assert server.requests == []


@pytest.mark.parametrize("mode, one", [("batch", "run"), ("abatch", "arun")])
@pytest.mark.parametrize("prompts, refusal", [
    ("abc", "takes a list of prompts, not a str; for one prompt, pass [prompt] or call {one}()"),
    (b"abc", "takes a list of prompts, not a bytes; for one prompt, pass [prompt] or call {one}()"),
    ({"role": "user", "content": "hi"}, "takes a list of prompts, not a dict"),
    (None, "takes a list of prompts, not a NoneType"),
    (7, "takes a list of prompts, not an int"),
])
def test_batch_refuses_what_is_not_a_collection_of_prompts(server: LocalServer, backend: str, mode: str, one: str,
                                                           prompts: Any, refusal: str) -> None:
    recorder = EveryEventRecorder()
    with pytest.raises(TypeError) as raised:
        start_batch(mode, make_rlm(server, recorder), prompts)
    assert str(raised.value) == f"{mode}() {refusal.format(one=one)}"
    assert recorder.events == []
    assert server.requests == []


@pytest.mark.parametrize("mode", ["batch", "abatch"])
@pytest.mark.parametrize("bad_prompt, described", [
    (None, "a NoneType"),
    (b"b", "a bytes; decode it first, e.g. prompt.decode('utf-8')"),
    (["b"], "a list"),
])
def test_batch_checks_every_prompt_before_the_first_run(server: LocalServer, backend: str, mode: str,
                                                        bad_prompt: Any, described: str) -> None:
    recorder = EveryEventRecorder()
    with pytest.raises(TypeError) as raised:
        start_batch(mode, make_rlm(server, recorder), ["a", "b", bad_prompt, "d"])
    assert str(raised.value) == f"{mode}() takes prompts as str, but prompts[2] is {described}"
    assert recorder.events == []
    assert server.requests == []


class Prompt(str):
    """A str subclass: a prompt like any str."""


def test_batch_takes_any_iterable_of_prompts_and_reads_it_all_first(server: LocalServer) -> None:
    rlm = make_rlm(server)
    assert [result.answer for result in rlm.batch(("a", Prompt("b")), progress=False)] == [
        "Hello! You said: a", "Hello! You said: b"]
    assert [result.answer for result in rlm.batch(iter(["c"]), progress=False)] == ["Hello! You said: c"]
    assert len(server.requests) == 3

    def prompts_then_a_number() -> Iterator[Any]:
        yield "e"
        yield 5

    with pytest.raises(TypeError, match=r"^batch\(\) takes prompts as str, but prompts\[1\] is an int$"):
        rlm.batch(prompts_then_a_number(), progress=False)
    assert len(server.requests) == 3


# -- the model ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model, shown", [("", "''"), ("  ", "'  '"), (None, "None"), (123, "123 (int)"),
                                          (b"gpt-4o", "b'gpt-4o' (bytes)")])
def test_a_model_that_is_not_a_name_is_refused_at_construction(monkeypatch: pytest.MonkeyPatch, model: Any,
                                                               shown: str) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)  # the model's error comes before the missing key's
    message = f"model must be the model's name as a non-empty str, such as 'gpt-4o-mini'; got {shown}"
    with pytest.raises(RLMConfigError) as raised:
        RLM.from_openai(model)
    assert str(raised.value) == message


def test_the_constructor_refuses_a_model_that_is_not_a_name(server: LocalServer) -> None:
    connection = make_rlm(server)._connection
    with pytest.raises(RLMConfigError, match=r"^model must be the model's name as a non-empty str, .*; got ''$"):
        RLM("", connection, callbacks=None, tools=None, memory=None, max_attempts=3, max_tool_rounds=8,
            system_prompt=None, backoff_base=0.5, backoff_max=20.0)


# -- which failed calls are retried ------------------------------------------------------------------------


def answer_of(mode: str, rlm: RLM, prompt: str) -> str:
    if mode == "run":
        return rlm.run(prompt).answer
    if mode == "arun":
        return asyncio.run(rlm.arun(prompt)).answer
    return "".join(rlm.stream(prompt))


@pytest.mark.parametrize("mode", ["run", "arun", "stream"])
@pytest.mark.parametrize("status, error_type", [(408, openai.APIStatusError), (409, openai.ConflictError)])
def test_408_and_409_are_retried(server: LocalServer, backend: str, mode: str, status: int,
                                 error_type: type[openai.APIStatusError]) -> None:
    recorder = Recorder()
    server.fail_next(status)
    assert answer_of(mode, make_rlm(server, recorder), "try again") == "Hello! You said: try again"

    assert recorder.names() == ["llm_start", "retry", "llm_end"]
    (retry,) = recorder.of("retry")
    assert (retry.args["attempt"], retry.args["max_attempts"]) == (1, 3)
    assert type(retry.args["error"]) is error_type
    assert retry.args["error"].status_code == status
    assert len(server.requests) == 2


@pytest.mark.parametrize("status, message", [
    (408, "{server} timed out waiting for the request (408) after 2 attempts; try again later or raise max_attempts"),
    (409, "conflict (409) at {server} after 2 attempts: Error code: 409 - locked; "
          "try again later or raise max_attempts"),
])
def test_408_and_409_that_persist_fail_after_max_attempts(server: LocalServer, backend: str, status: int,
                                                          message: str) -> None:
    recorder = Recorder()
    server.fail_next(status, count=2, message="locked")
    with pytest.raises(LLMCallError) as raised:
        make_rlm(server, recorder, max_attempts=2).run("hi")
    assert str(raised.value) == message.format(server=server.base_url)
    assert raised.value.attempts == 2
    assert recorder.names() == ["llm_start", "retry", "error"]
    assert len(server.requests) == 2


@pytest.mark.parametrize("mode", ["run", "arun"])
@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_other_4xx_statuses_are_not_retried(server: LocalServer, backend: str, mode: str, status: int) -> None:
    recorder = Recorder()
    server.fail_next(status)
    with pytest.raises(LLMCallError) as raised:
        answer_of(mode, make_rlm(server, recorder), "hi")
    assert raised.value.attempts == 1
    cause = raised.value.__cause__
    assert isinstance(cause, openai.APIStatusError) and cause.status_code == status
    assert recorder.names() == ["llm_start", "error"]
    assert len(server.requests) == 1


# -- base URLs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("base_url, why", [
    ("not a url", "it does not start with http:// or https://"),
    ("ftp://x", "it does not start with http:// or https://"),
    ("localhost:8000/v1", "it does not start with http:// or https://"),
    ("http://", "it has no host name"),
    ("http://127.0.0.1:99999/v1", "it is not a valid URL (Port out of range 0-65535)"),
    ("http://local host/v1", "it contains whitespace"),
])
def test_a_base_url_that_cannot_work_is_refused_at_construction(monkeypatch: pytest.MonkeyPatch, base_url: str,
                                                                why: str) -> None:
    with pytest.raises(RLMConfigError) as raised:
        RLM.from_openai(MODEL, base_url=base_url)
    assert str(raised.value) == f"invalid base_url {base_url!r}: {why}; {URL_ADVICE}"

    monkeypatch.setenv("OPENAI_BASE_URL", base_url)
    with pytest.raises(RLMConfigError) as raised:
        RLM.from_openai(MODEL)
    assert str(raised.value) == f"invalid OPENAI_BASE_URL {base_url!r}: {why}; {URL_ADVICE}"


def test_a_refused_base_url_does_not_show_its_password() -> None:
    with pytest.raises(RLMConfigError) as raised:
        RLM.from_openai(MODEL, base_url="ftp://ada:open-sesame-7@files.example/v1")
    assert str(raised.value) == (
        f"invalid base_url 'ftp://[REDACTED]@files.example/v1': it does not start with http:// or https://; "
        f"{URL_ADVICE}")


# -- progress=True without tqdm ----------------------------------------------------------------------------


WITHOUT_TQDM = """
import asyncio
import sys


class HideTqdm:
    def find_spec(self, name, path=None, target=None):
        if name == "tqdm" or name.startswith("tqdm."):
            raise ImportError(f"No module named {name!r}")
        return None


sys.meta_path.insert(0, HideTqdm())
from rlm_toolkit import RLM
from rlm_toolkit.errors import RLMConfigError

rlm = RLM.from_openai("gpt-4o-mini", base_url=sys.argv[1], api_key=sys.argv[2])
print(len(rlm.batch(["a"], progress=None)), len(rlm.batch(["a"], progress=False)))
for run_batch in (lambda: rlm.batch(["a", "b"], progress=True),
                  lambda: asyncio.run(rlm.abatch(["a", "b"], progress=True))):
    try:
        run_batch()
    except RLMConfigError as error:
        print(type(error).__name__, isinstance(error, ImportError), error)
print("tqdm" in sys.modules)
"""


def test_progress_true_without_tqdm_says_how_to_install_it(server: LocalServer, tmp_path: Path) -> None:
    script = tmp_path / "without_tqdm.py"
    script.write_text(WITHOUT_TQDM)
    finished = subprocess.run([sys.executable, str(script), server.base_url, server.api_key], capture_output=True,
                              text=True, timeout=60)
    assert finished.returncode == 0, finished.stderr
    refusal = ("MissingExtraError True progress=True needs tqdm, which is not installed: "
               "pip install 'rlm_toolkit[progress]' (or pass progress=False)")
    assert finished.stdout.splitlines() == ["1 1", refusal, refusal, "False"]
    assert len(server.requests) == 2  # only the batches that did not ask for a bar ran
