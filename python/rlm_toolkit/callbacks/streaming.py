"""``StreamingCallback``: hands each streamed token to a function, e.g. to print the answer as it arrives."""

from __future__ import annotations

from typing import Any, Callable

from ._pickling import PickledByConfiguration, require_sendable_function
from .base import BaseCallback

TokenSink = Callable[[str], None]


class StreamingCallback(PickledByConfiguration, BaseCallback):
    """Calls ``on_token(token)`` for every streamed token; registering it makes LLM calls stream.

    Either pass the function (``StreamingCallback(on_token=print_token)``) or subclass and override
    ``on_token(self, token)``; a subclass need not call ``super().__init__()``.

    Pickled (to send it to a worker process), it travels as its constructor's arguments: the function goes
    by its module and name, so it must be defined at the top level of a module (a lambda or a function
    defined inside another function raises ``NotPicklableError``).
    """

    _token_sink: TokenSink | None = None
    """The function given to ``__init__``; a class-level None so subclasses that skip ``__init__`` work."""

    def __init__(self, on_token: TokenSink | None = None) -> None:
        self._token_sink = on_token

    def __reduce__(self) -> tuple[Any, ...]:
        require_sendable_function(self._token_sink, "StreamingCallback's on_token")
        return super().__reduce__()

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.on_token(token)

    def on_token(self, token: str) -> None:
        """Handle one token: by default, call the function given to ``__init__`` (nothing if none was)."""
        if self._token_sink is not None:
            self._token_sink(token)
