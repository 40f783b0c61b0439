"""The token hook: ``manager.on_llm_new_token`` to a ``StreamingCallback(on_token=list.append)`` (``tokens``)."""

from __future__ import annotations

import uuid
from typing import Any

from .._backend import BackendName
from ..callbacks import CallbackManager, StreamingCallback
from .base import MODEL, Contender, expect
from .competitors import langchain_tokens

TOKEN_WORDS = ("The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ".")


def token_contenders() -> list[Contender]:
    run_id, model = str(uuid.uuid4()), MODEL
    words_cache: dict[int, list[str]] = {}

    def tokens(n: int) -> list[str]:
        if n not in words_cache:
            words_cache[n] = [TOKEN_WORDS[i % len(TOKEN_WORDS)] for i in range(n)]
        return words_cache[n]

    def check(state: Any) -> None:
        expect(len(state["sink"]), len(state["tokens"]), "tokens delivered")

    def ours(backend: BackendName) -> Contender:
        def setup(n: int) -> Any:
            sink: list[str] = []
            return {"tokens": tokens(n), "sink": sink,
                    "manager": CallbackManager([StreamingCallback(on_token=sink.append)], backend=backend)}

        def run(state: Any) -> None:
            manager = state["manager"]
            for token in state["tokens"]:
                manager.on_llm_new_token(token, run_id=run_id, model=model)

        return Contender(backend, f"rlm_toolkit ({backend})", setup, run, check,
                         note="StreamingCallback(on_token=list.append)")

    def plain_inline() -> Contender:
        def setup(n: int) -> Any:
            sink: list[str] = []
            return {"tokens": tokens(n), "sink": sink, "handlers": [StreamingCallback(on_token=sink.append)]}

        def run(state: Any) -> None:
            handlers = state["handlers"]
            for token in state["tokens"]:
                for handler in handlers:
                    try:
                        handler.on_llm_new_token(token, run_id=run_id, parent_run_id=None, model=model)
                    except Exception:
                        pass

        return Contender("plain-inline", "plain for-loop, inlined", setup, run, check,
                         note="same StreamingCallback, same keywords")

    def direct() -> Contender:
        def setup(n: int) -> Any:
            sink: list[str] = []
            return {"tokens": tokens(n), "sink": sink}

        def run(state: Any) -> None:
            on_token = state["sink"].append
            for token in state["tokens"]:
                on_token(token)

        return Contender("direct", "plain loop calling on_token directly", setup, run, check,
                         note="floor: no hook object at all")

    return [ours("rust"), ours("python"), plain_inline(), direct(), langchain_tokens(tokens, check)]
