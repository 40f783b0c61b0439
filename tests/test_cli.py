"""The rlm-toolkit command: demo (as a subprocess, with no API key), run, serve, bench and its error messages."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import openai
import pytest

import rlm_toolkit
from rlm_toolkit.cli import _parser, main
from rlm_toolkit.server import LocalServer

PACKAGE_PARENT = str(Path(rlm_toolkit.__file__).resolve().parent.parent)


def command_env() -> dict[str, str]:
    """This environment without OPENAI_* variables, able to import this rlm_toolkit."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("OPENAI_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_PARENT, env.get("PYTHONPATH")]))
    return env


@pytest.fixture
def no_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def test_demo_without_a_key_shows_every_event_metrics_and_the_log(tmp_path: Path) -> None:
    log_path = tmp_path / "demo.jsonl"
    finished = subprocess.run([sys.executable, "-m", "rlm_toolkit", "demo", "--log", str(log_path)],
                              env=command_env(), capture_output=True, text=True, timeout=60)

    assert finished.returncode == 0, finished.stderr
    out = finished.stdout
    assert "embedded local server" in out
    for label in ("llm start", "llm end", "tool start", "tool end", "memory recall", "memory store",
                  "retry 1/3", "error"):
        assert re.search(rf"\] {label}\s", out), f"no {label!r} line"
    assert "This is a longer answer, written so that streaming demos" in out  # the streamed tokens
    assert "answer: Tool results: get_weather -> Sunny, 21 C" in out
    for row in ("total calls", "total tokens", "p50 / p95 / p99 latency", "retries", "errors", "total cost"):
        assert row in out
    assert f"JSONL log (FileLogCallback): {log_path}" in out
    events = {json.loads(line)["event"] for line in log_path.read_text().splitlines()}
    assert events == {"run_start", "llm_start", "llm_end", "tool_start", "tool_end", "memory_recall",
                      "memory_store", "retry", "error", "run_end"}


def test_demo_against_a_base_url_skips_the_injected_retry(server: LocalServer, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--base-url", server.base_url, "--log", str(tmp_path / "log.jsonl")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"Using the endpoint {server.base_url} (--base-url) with model 'gpt-4o-mini'"
    assert "embedded local server" not in out
    assert "(skipped: a 429 can only be injected into the local server)" in out
    assert "total calls" in out


def test_demo_with_openai_base_url_names_that_endpoint_first(server: LocalServer, monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    assert main(["demo", "--model", "gpt-4o", "--log", str(tmp_path / "log.jsonl")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"Using the endpoint {server.base_url} ($OPENAI_BASE_URL) with model 'gpt-4o'"
    assert {request["model"] for request in server.requests} == {"gpt-4o"}


def test_run_prints_the_answer(server: LocalServer, no_openai_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "Hi there", "--base-url", server.base_url]) == 0
    assert capsys.readouterr().out == "Hello! You said: Hi there\n"


def test_run_streams_and_logs(server: LocalServer, no_openai_env: None, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    log_path = tmp_path / "logs" / "run.jsonl"
    assert main(["run", "one two", "--stream", "--log", str(log_path), "--base-url", server.base_url,
                 "--model", "gpt-4o"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "Hello! You said: one two\n"
    assert captured.err == f"log: {log_path}\n"
    assert server.requests[-1]["stream"] is True
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [record["event"] for record in records] == ["run_start", "llm_start", "llm_end", "run_end"]
    assert records[0]["model"] == "gpt-4o"


@pytest.mark.parametrize("arguments, message", [
    (["run", "hi"], "no OpenAI API key: set OPENAI_API_KEY, or give --base-url URL of an OpenAI-compatible server"),
    (["run", "hi", "--base-url", "http://127.0.0.1:9/v1"],
     "could not connect to http://127.0.0.1:9/v1 after 3 attempts; check the base URL and that the server is running"),
    (["run", "hi", "--base-url", "{server}", "--model", "gpt-9"],
     "model 'gpt-9' not found at {server}; check the model name"),
    (["run", "hi", "--base-url", "{server}", "--log", "/proc/no/such/dir/log.jsonl"], "cannot create the folder"),
    (["run", "hi", "--base-url", "{server}", "--model", ""],
     "model must be the model's name as a non-empty str, such as 'gpt-4o-mini'; got ''"),
])
def test_user_errors_are_one_line_with_exit_status_2(server: LocalServer, no_openai_env: None,
                                                     capsys: pytest.CaptureFixture[str], arguments: list[str],
                                                     message: str) -> None:
    arguments = [argument.replace("{server}", server.base_url) for argument in arguments]
    assert main(arguments) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("rlm-toolkit: error: ")
    assert message.replace("{server}", server.base_url) in captured.err
    assert captured.err.count("\n") == 1


def test_bench_passes_its_options_to_the_suite(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--list"]) == 0
    assert "fanout-16" in capsys.readouterr().out

def test_serve_runs_a_server_the_openai_client_can_use() -> None:
    with subprocess.Popen([sys.executable, "-m", "rlm_toolkit", "serve", "--port", "0"], env=command_env(),
                          stdout=subprocess.PIPE, text=True) as serving:
        try:
            assert serving.stdout is not None
            banner = serving.stdout.readline()
            base_url = banner.split(" at ")[1].split(" ")[0]
            with openai.OpenAI(base_url=base_url, api_key="anything", max_retries=0) as client:
                answer = client.chat.completions.create(model="gpt-4o",
                                                        messages=[{"role": "user", "content": "ping"}])
            assert answer.choices[0].message.content == "Hello! You said: ping"
        finally:
            serving.terminate()


# -- options and help ---------------------------------------------------------------------------------------


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"rlm-toolkit {rlm_toolkit.__version__}\n"


def test_serve_help_describes_it_and_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Run the embedded OpenAI-compatible server in the foreground" in out
    assert "--host HOST address to listen on (default: 127.0.0.1)" in out
    assert "--port PORT port to listen on; 0 picks a free one (default: 8000)" in out


def test_every_option_of_every_command_has_help_text() -> None:
    (commands,) = [action for action in _parser()._actions if isinstance(action, argparse._SubParsersAction)]
    undocumented = {
        name: [action.dest for action in command._actions if not action.help or action.help == argparse.SUPPRESS]
        for name, command in commands.choices.items()
        if name != "bench"  # its options are the suite's own, documented by `rlm-toolkit bench --help`
    }
    assert undocumented == {"demo": [], "run": [], "serve": [], "report": []}
    assert all(command.description for name, command in commands.choices.items() if name != "bench")


@pytest.mark.parametrize("command", [["run", "hi"], ["demo"]])
@pytest.mark.parametrize("base_url, why", [
    ("not a url", "it does not start with http:// or https://"),
    ("ftp://x", "it does not start with http:// or https://"),
    ("http://", "it has no host name"),
])
def test_a_malformed_base_url_is_an_argument_error(no_openai_env: None, capsys: pytest.CaptureFixture[str],
                                                   command: list[str], base_url: str, why: str) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--base-url", base_url])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines()[-1] == (
        f"rlm-toolkit {command[0]}: error: argument --base-url: invalid URL {base_url!r}: {why}; "
        "give an http:// or https:// URL such as http://127.0.0.1:8000/v1")


def test_a_malformed_openai_base_url_is_one_line_with_exit_status_2(monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", "ftp://x")
    assert main(["run", "hi"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "rlm-toolkit: error: invalid OPENAI_BASE_URL 'ftp://x': it does not start with http:// or https://; "
        "give an http:// or https:// URL such as http://127.0.0.1:8000/v1\n")
