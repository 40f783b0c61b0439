"""Secrets never reach the log file, the console, the rlm_toolkit logger or an error's text: registered
secrets, ``sk-`` keys, bearer tokens in every form and URL passwords, also in text with lone surrogates."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlm_toolkit.callbacks import BaseCallback, CallbackManager, ConsoleCallback, FileLogCallback
from rlm_toolkit.errors import InvalidSecretError
from rlm_toolkit.secrets import (
    REDACTED,
    redact,
    redact_exception_chain,
    reference_redact,
    register_secret,
    register_url_secrets,
)

SECRET = "registered-secret-of-test-secrets"
KEY = "sk-proj-" + "A1b2C3d4" * 5
TOKEN = "tok3n" * 6
RUN_ID = "1a2b3c4d-0000-4000-8000-000000000001"
URL = "http://u:pw@h"


@pytest.fixture(autouse=True)
def registered_secret() -> None:
    register_secret(SECRET)


def records(path: Path) -> list[dict[str, Any]]:
    return records_of(path.read_text(encoding="utf-8"))


def console(backend: str) -> tuple[CallbackManager, io.StringIO]:
    stream = io.StringIO()
    return CallbackManager([ConsoleCallback(stream=stream, show_tokens=False, show_cost=False)], backend=backend), stream


@pytest.fixture
def logged() -> Iterator[io.StringIO]:
    """What the rlm_toolkit logger prints, formatted as a logging handler formats it (tracebacks included)."""
    output = io.StringIO()
    handler = logging.StreamHandler(output)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("rlm_toolkit")
    logger.addHandler(handler)
    try:
        yield output
    finally:
        logger.removeHandler(handler)


# -- the patterns -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    (f"Authorization: Bearer {TOKEN}", "Authorization: Bearer [REDACTED]"),
    (f"authorization: bearer {TOKEN}", "authorization: bearer [REDACTED]"),
    (f"AUTHORIZATION: BEARER {TOKEN}", "AUTHORIZATION: BEARER [REDACTED]"),
    (f"?auth=Bearer%20{TOKEN}&x=1", "?auth=Bearer%20[REDACTED]&x=1"),
    (f"?auth=bearer+{TOKEN}", "?auth=bearer+[REDACTED]"),
    (f"Bearer%20{TOKEN[:10]}%2F{TOKEN[10:]}", "Bearer%20[REDACTED]"),
    (f"key {KEY}.", "key sk-[REDACTED]."),
    ("http://user:pass@host/v1", "http://user:[REDACTED]@host/v1"),
    ("https://bob:p@ss:w0rd@api.example.com:8443/v1?q=1", "https://bob:[REDACTED]@api.example.com:8443/v1?q=1"),
    ("postgres://u:%40pw@db", "postgres://u:[REDACTED]@db"),
    (f"a {SECRET}-{SECRET}b", "a [REDACTED]-[REDACTED]b"),
])
def test_each_form_is_redacted_by_both_implementations(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert reference_redact(text) == expected


@pytest.mark.parametrize("text", [
    "https://user@host/v1",  # a user name alone is kept
    "http://host:8080/path@x",  # an @ after the host is no user info
    "http://u:@host",  # no password
    f"Bearer\t{TOKEN}",
    f"Bearers {TOKEN}",
    f"Bearer {TOKEN[:19]}",
    f"xsk-{TOKEN}",
    "see the gpt-4o-mini model and 0f8c-4a ids",
])
def test_text_that_only_looks_like_a_secret_is_kept(text: str) -> None:
    assert redact(text) == text
    assert reference_redact(text) == text


def test_lone_surrogates_do_not_turn_redaction_off() -> None:
    text = f"\ud800{SECRET} {KEY} Bearer {TOKEN}\udfff http://u:p\ud83dw@h \ud83d\ude00"
    expected = "\ud800[REDACTED] sk-[REDACTED] Bearer [REDACTED]\udfff http://u:[REDACTED]@h \ud83d\ude00"
    assert redact(text) == expected
    assert reference_redact(text) == expected


def test_short_secrets_are_registered_whatever_their_length() -> None:
    script = """
        from rlm_toolkit.secrets import redact, reference_redact, register_secret
        register_secret("Q~z")
        register_secret("")
        print(redact("a Q~z b Q~zQ~z"), reference_redact("a Q~z b"), redact("empty stays"), sep="|")
    """
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    assert child.stdout == "a [REDACTED] b [REDACTED][REDACTED]|a [REDACTED] b|empty stays\n"


def test_secrets_that_cannot_be_sent_are_refused() -> None:
    with pytest.raises(InvalidSecretError, match="lone surrogates"):
        register_secret("abc\ud800def")
    with pytest.raises(TypeError, match="str"):
        register_secret(b"bytes-secret")  # type: ignore[arg-type]


def test_url_credentials_can_be_registered() -> None:
    register_url_secrets("https://alice:s3cr%2Ft-of-url@proxy.example/v1")
    register_url_secrets("https://ghp_tokenasusername0123@git.example/x")
    register_url_secrets("http://127.0.0.1:8000/v1")
    register_url_secrets("http://[::1")  # malformed: nothing to register, and no error
    assert redact("pw s3cr%2Ft-of-url or s3cr/t-of-url") == "pw [REDACTED] or [REDACTED]"
    assert redact("user ghp_tokenasusername0123") == "user [REDACTED]"


# -- file and console, on each backend ---------------------------------------------------------------------

def test_file_records_are_redacted_around_lone_surrogates(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "surrogates.jsonl"
    with FileLogCallback(path, max_field_chars=40) as log:
        manager = CallbackManager([log])
        manager.on_llm_start(f"\ud800 key {KEY} and {SECRET}", run_id=RUN_ID)
        # Capped at 40 code points of the redacted text, as len() counts them (a surrogate is one).
        manager.on_memory_store(f"\udc00http://u:pw@h Bearer {TOKEN} " + "x" * 30, run_id=RUN_ID)
    text = path.read_text(encoding="utf-8")
    for leaked in (KEY[3:], SECRET, TOKEN, "pw@"):
        assert leaked not in text
    prompt, stored = records(path)
    assert prompt["prompt"] == "\ud800 key sk-[REDACTED] and [REDACTED]"
    redacted_store = "\udc00http://u:[REDACTED]@h Bearer [REDACTED] " + "x" * 30
    assert stored["content"] == redacted_store[:40] + f"…[truncated {len(redacted_store) - 40} chars]"


def test_console_lines_are_redacted_and_escaped_around_lone_surrogates(backend: str) -> None:
    manager, stream = console(backend)

    manager.on_llm_start(f"\ud800 key {KEY}", run_id=RUN_ID, model="gpt-4o")
    manager.on_error(RuntimeError(f"\udfff failed for http://u:pw@h with Bearer {TOKEN}"), run_id=RUN_ID)

    assert stream.getvalue().splitlines() == [
        '[1a2b3c4d] llm start      gpt-4o  "\\ud800 key sk-[REDACTED]"',
        "[1a2b3c4d] error          RuntimeError: \\udfff failed for http://u:[REDACTED]@h with Bearer [REDACTED]",
    ]
    assert manager.handler_errors == 0


def test_console_on_a_utf8_stream_prints_text_with_lone_surrogates(backend: str) -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)
    manager = CallbackManager([ConsoleCallback(stream=stream, show_tokens=False, show_cost=False)], backend=backend)

    manager.on_llm_start("caf\u00e9 \ud800 ok", run_id=RUN_ID, model="gpt-4o")

    assert manager.handler_errors == 0
    assert raw.getvalue().decode("utf-8") == '[1a2b3c4d] llm start      gpt-4o  "caf\u00e9 \\ud800 ok"\n'


def test_console_on_an_ascii_stream_escapes_what_it_cannot_encode(backend: str) -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii", write_through=True)
    manager = CallbackManager([ConsoleCallback(stream=stream, show_tokens=False, show_cost=False)], backend=backend)

    manager.on_llm_start("caf\u00e9", run_id=RUN_ID, model="gpt-4o")

    assert manager.handler_errors == 0
    assert raw.getvalue() == b'[1a2b3c4d] llm start      gpt-4o  "caf\\xe9"\n'


@pytest.mark.parametrize("prefix", ["bearer ", "BEARER ", "Bearer%20", "Bearer+"])
def test_every_bearer_form_is_redacted_in_file_and_console(backend: str, tmp_path: Path, prefix: str) -> None:
    path = tmp_path / "bearer.jsonl"
    manager, stream = console(backend)
    with FileLogCallback(path) as log:
        manager.add(log)
        manager.on_llm_start(f"header {prefix}{TOKEN}", run_id=RUN_ID, model="gpt-4o")
    assert records(path)[0]["prompt"] == f"header {prefix}[REDACTED]"
    assert stream.getvalue() == f'[1a2b3c4d] llm start      gpt-4o  "header {prefix}[REDACTED]"\n'


def test_url_passwords_are_redacted_in_file_and_console(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "url.jsonl"
    manager, stream = console(backend)
    error = ConnectionError("could not reach http://bob:hunter2-pw@10.0.0.1:8080/v1")
    with FileLogCallback(path) as log:
        manager.add(log)
        manager.on_error(error, run_id=RUN_ID)
    assert records(path)[0]["error"]["message"] == "could not reach http://bob:[REDACTED]@10.0.0.1:8080/v1"
    assert stream.getvalue() == (
        "[1a2b3c4d] error          ConnectionError: could not reach http://bob:[REDACTED]@10.0.0.1:8080/v1\n"
    )


def test_a_token_that_whitespace_splits_is_redacted_once_the_console_joins_it(backend: str) -> None:
    manager, stream = console(backend)

    manager.on_llm_start("x" * 45 + f"Bearer\n\t{TOKEN}", run_id=RUN_ID, model="gpt-4o")

    assert stream.getvalue() == '[1a2b3c4d] llm start      gpt-4o  "' + "x" * 45 + 'Bearer [REDA..."\n'


# -- the logger ---------------------------------------------------------------------------------------------

class FailingOnStart(BaseCallback):
    def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
        try:
            {}[prompt]
        except KeyError as missing:
            raise ValueError(f"cannot handle prompt {prompt!r}") from missing


def test_a_failing_hook_is_logged_with_a_redacted_message_and_traceback(backend: str, logged: io.StringIO) -> None:
    manager = CallbackManager([FailingOnStart()], backend=backend)

    manager.on_llm_start(f"use {SECRET} and {KEY} with Bearer {TOKEN}", run_id=RUN_ID)

    output = logged.getvalue()
    assert manager.handler_errors == 1
    assert output.count("ERROR rlm_toolkit: callback FailingOnStart.on_llm_start raised while handling") == 1
    for leaked in (SECRET, KEY[3:], TOKEN):
        assert leaked not in output
    assert output.count("Traceback (most recent call last):") == 2  # the error and its cause
    assert output.count("use [REDACTED] and sk-[REDACTED] with Bearer [REDACTED]") == 3  # the repr, the last lines of both tracebacks


class FailingOnError(BaseCallback):
    def on_error(self, error: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"cannot report {error}")


@pytest.mark.parametrize("header", ["Authorization: Bearer ", "authorization: bearer "])
def test_an_echoed_authorization_header_never_reaches_the_logger(backend: str, logged: io.StringIO,
                                                                 header: str) -> None:
    manager = CallbackManager([FailingOnError()], backend=backend)
    echoed = PermissionError(f"Error code: 401 - invalid key; the request had {header}{TOKEN}")

    manager.on_error(echoed, run_id=RUN_ID)

    output = logged.getvalue()
    assert manager.handler_errors == 1
    assert TOKEN not in output
    assert output.count(f"{header}[REDACTED]") == 2  # the repr and the traceback's last line


# -- errors the package raises -----------------------------------------------------------------------------

class ApiError(Exception):
    def __init__(self, message: str, body: dict[str, Any]) -> None:
        super().__init__(message)
        self.message = message
        self.body = body


def test_an_exception_chain_is_redacted_in_place() -> None:
    try:
        try:
            try:
                raise OSError(2, f"no such file {SECRET}", f"/tmp/{SECRET}")
            except OSError:
                raise ApiError(f"401 for Bearer {TOKEN}", {"error": {"key": KEY}, "items": [SECRET]})
        except ApiError as cause:
            raise RuntimeError(f"call with {URL} failed: {cause}") from cause
    except RuntimeError as error:
        error.add_note(f"key {KEY}")
        redact_exception_chain(error)
        printed = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        chained = error.__cause__
    for leaked in (SECRET, TOKEN, KEY[3:], "pw@"):
        assert leaked not in printed
    assert isinstance(chained, ApiError)
    assert chained.message == "401 for Bearer [REDACTED]"
    assert chained.body == {"error": {"key": "sk-[REDACTED]"}, "items": [REDACTED]}
    oserror = chained.__context__
    assert isinstance(oserror, OSError)
    assert (oserror.strerror, oserror.filename) == ("no such file [REDACTED]", "/tmp/[REDACTED]")


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception groups are new in Python 3.11")
def test_exception_groups_and_cycles_are_redacted_once() -> None:
    inner = ValueError(f"inner {SECRET}")
    outer = RuntimeError(f"outer {KEY}")
    outer.__context__ = inner
    inner.__context__ = outer  # a cycle
    group = ExceptionGroup("many", [outer, ValueError(f"Bearer {TOKEN}")])  # noqa: F821 - 3.11 builtin

    redact_exception_chain(group)

    assert [str(member) for member in group.exceptions] == ["outer sk-[REDACTED]", "Bearer [REDACTED]"]
    assert str(inner) == "inner [REDACTED]"


# -- file modes ---------------------------------------------------------------------------------------------

def test_new_logs_are_private_and_existing_logs_keep_their_mode(backend: str, tmp_path: Path) -> None:
    created, existing = tmp_path / "created.jsonl", tmp_path / "existing.jsonl"
    existing.write_text('{"event": "earlier"}\n')
    existing.chmod(0o644)
    for path in (created, existing):
        with FileLogCallback(path) as log:
            CallbackManager([log]).on_llm_start("hi")
    assert oct(os.stat(created).st_mode & 0o777) == "0o600"
    assert oct(os.stat(existing).st_mode & 0o777) == "0o644"
    assert len(records(existing)) == 2


# -- the two implementations agree --------------------------------------------------------------------------

TOKEN_CHARS = "abcXYZ019_-.~+/=%"
FRAGMENTS = st.one_of(
    st.sampled_from([
        "sk-", "sk-proj-", "xsk-", "Bearer ", "bearer ", "BEARER ", "bEaReR+", "Bearer%20", "Bearer%2", "Bearer",
        "://", "http://", "user:", "u:p", "@", ":", "/", "?", "#", " ", "\t", "\n", "\x00", "\x1f", "\x7f", "\x85",
        "\u00a0", "é", "😀", SECRET, SECRET[:-1], "[REDACTED]",
    ]),
    st.just(SECRET),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),  # lone surrogates
    st.characters(max_codepoint=0x20),  # controls
    st.text(alphabet=TOKEN_CHARS, min_size=15, max_size=30),  # around the 20-character minimum
    st.text(max_size=8),
)
TEXTS = st.lists(FRAGMENTS, max_size=12).map("".join)


@settings(max_examples=500, deadline=None)
@given(text=TEXTS)
def test_rust_and_reference_redaction_agree(text: str) -> None:
    assert redact(text) == reference_redact(text)
    assert SECRET not in redact(text)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(TEXTS, min_size=1, max_size=4), max_chars=st.integers(16, 120))
def test_backends_write_the_same_redacted_records(tmp_path_factory: Any, texts: list[str], max_chars: int) -> None:
    directory = tmp_path_factory.mktemp("redaction")
    written = {}
    for backend in ("rust", "python"):
        path = directory / f"{backend}.jsonl"
        with FileLogCallback(path, max_field_chars=max_chars, backend=backend) as log:
            manager = CallbackManager([log], backend=backend)
            for text in texts:
                manager.on_tool_start(text, {text: [text]}, run_id=text, timestamp=1_700_000_000.0)
        written[backend] = path.read_text(encoding="utf-8")
    assert SECRET not in written["rust"] and SECRET not in written["python"]
    assert records_of(written["rust"]) == records_of(written["python"])


def records_of(text: str) -> list[Any]:
    return [json.loads(line) for line in text.split("\n") if line]


_WITHOUT_NATIVE_MODULE = """
import sys
class _NoNativeModule:
    def find_spec(self, name, path=None, target=None):
        if name == "rlm_toolkit._core":
            raise ImportError("rlm_toolkit._core is not built")
sys.meta_path.insert(0, _NoNativeModule())
from rlm_toolkit import BackendError
from rlm_toolkit.secrets import redact, register_secret
"""


def _run_without_native_module(code: str, backend: str | None) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "RLM_TOOLKIT_BACKEND"}
    if backend is not None:
        env["RLM_TOOLKIT_BACKEND"] = backend
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_NATIVE_MODULE + code], env=env, capture_output=True, text=True, timeout=60
    )


def test_a_missing_native_module_is_a_backend_error_not_a_silent_fallback() -> None:
    code = """
for call in (lambda: register_secret("hunter2-hunter2"), lambda: redact("sk-" + "a" * 30)):
    try:
        call()
    except BackendError as error:
        print("BackendError", "pip install" in str(error))
"""
    ran = _run_without_native_module(code, backend=None)
    assert ran.stdout.split("\n")[:2] == ["BackendError True", "BackendError True"], ran.stderr


def test_the_python_backend_redacts_without_the_native_module() -> None:
    code = """
register_secret("hunter2-hunter2")
print(redact("pw hunter2-hunter2 key sk-" + "a" * 30))
"""
    ran = _run_without_native_module(code, backend="python")
    assert ran.stdout.strip() == "pw [REDACTED] key sk-[REDACTED]", ran.stderr
