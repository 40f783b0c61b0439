"""StreamingCallback, driven through CallbackManager on each backend."""

from __future__ import annotations

import pytest

from rlm_toolkit.callbacks import CallbackManager, StreamingCallback

TOKENS = ["Hello", "! ", "You ", "said: ", "hi"]


def stream_tokens(manager: CallbackManager) -> None:
    for token in TOKENS:
        manager.on_llm_new_token(token, run_id="run-1", parent_run_id=None, model="gpt-4o")


def test_each_token_reaches_the_function_in_order(backend: str) -> None:
    received: list[str] = []
    manager = CallbackManager([StreamingCallback(on_token=received.append)], backend=backend)

    stream_tokens(manager)

    assert received == TOKENS
    assert manager.streams_tokens


def test_without_a_function_tokens_are_dropped_quietly(backend: str) -> None:
    manager = CallbackManager([StreamingCallback()], backend=backend)

    stream_tokens(manager)

    assert manager.handler_errors == 0


def test_subclass_may_override_on_token_and_skip_super_init(backend: str) -> None:
    class Collector(StreamingCallback):
        def __init__(self) -> None:
            self.tokens: list[str] = []

        def on_token(self, token: str) -> None:
            self.tokens.append(token)

    collector = Collector()
    manager = CallbackManager([collector], backend=backend)

    stream_tokens(manager)

    assert collector.tokens == TOKENS
    assert manager.handler_errors == 0


def test_subclass_skipping_super_init_keeps_the_default_on_token(backend: str) -> None:
    class NoInit(StreamingCallback):
        def __init__(self) -> None:
            """Deliberately does not call ``super().__init__()``."""

    manager = CallbackManager([NoInit()], backend=backend)

    stream_tokens(manager)

    assert manager.handler_errors == 0


def test_subclass_may_extend_on_token_with_super(backend: str) -> None:
    received: list[str] = []

    class Upper(StreamingCallback):
        def on_token(self, token: str) -> None:
            super().on_token(token.upper())

    manager = CallbackManager([Upper(on_token=received.append)], backend=backend)

    stream_tokens(manager)

    assert received == [token.upper() for token in TOKENS]


def test_a_failing_token_function_is_isolated(backend: str, caplog: pytest.LogCaptureFixture) -> None:
    received: list[str] = []

    def explode(token: str) -> None:
        raise RuntimeError(f"cannot print {token!r}")

    manager = CallbackManager([StreamingCallback(on_token=explode), StreamingCallback(on_token=received.append)],
                              backend=backend)

    stream_tokens(manager)

    assert received == TOKENS
    assert manager.handler_errors == len(TOKENS)
    assert "StreamingCallback.on_llm_new_token" in caplog.text
