"""Value types handed to callbacks. Batch jobs build these to emit events themselves."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import FrozenInstanceError, dataclass
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    """Prompt tokens served from the provider's prompt cache (``prompt_tokens_details.cached_tokens``)."""
    reasoning_tokens: int = 0
    """Completion tokens spent on hidden reasoning (``completion_tokens_details.reasoning_tokens``)."""

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> "Usage":
        return cls(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens)


_NO_USAGE = Usage()


class LLMResponse(str):
    """What ``on_llm_end`` receives: the answer text, the model that produced it, and token usage.

    It is the answer itself, as a ``str`` (``response[:100]``, ``len(response)``, ``f"{response}"``,
    ``response == "text"``, ``json.dumps(response)``, str methods, which return plain ``str``), with the other
    fields as attributes: ``content`` (the answer as a plain ``str``), ``model``, ``usage``, ``finish_reason``
    and ``tool_calls``. An answer that only calls tools is ``""``. ``usage`` is None when the server did not
    report it (some proxies and older servers ignore ``stream_options.include_usage``): the tokens and cost
    of that call are unknown, not 0. Built without ``usage``, a response has ``Usage()``.

    Immutable; pickles and copies with all its fields. Equality: equal to a plain ``str`` with the same text;
    two ``LLMResponse`` are equal when all their fields are. Its hash is the text's hash.
    """

    __match_args__: ClassVar[tuple[str, ...]] = ("content", "model", "usage", "finish_reason", "tool_calls")

    content: str
    model: str | None
    usage: Usage | None
    finish_reason: str | None
    tool_calls: tuple[Any, ...]

    def __new__(cls, content: str, model: str | None = None, usage: Usage | None = _NO_USAGE,
                finish_reason: str | None = None, tool_calls: Iterable[Any] = ()) -> "LLMResponse":
        if not isinstance(content, str):
            raise TypeError(
                f"LLMResponse content must be a str (\"\" for an answer that only calls tools), "
                f"not {type(content).__name__}"
            )
        text = str.__str__(content)
        response = super().__new__(cls, text)
        fields = response.__dict__
        fields["content"] = text
        fields["model"] = model
        fields["usage"] = usage
        fields["finish_reason"] = finish_reason
        fields["tool_calls"] = tuple(tool_calls)
        return response

    def _fields(self) -> tuple[str, str | None, Usage | None, str | None, tuple[Any, ...]]:
        return (self.content, self.model, self.usage, self.finish_reason, self.tool_calls)

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}: LLMResponse is immutable")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}: LLMResponse is immutable")

    def __reduce__(self) -> tuple[type[LLMResponse], tuple[str, str | None, Usage | None, str | None,
                                                          tuple[Any, ...]]]:
        return (type(self), self._fields())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LLMResponse):
            return self._fields() == other._fields()
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __hash__(self) -> int:
        return str.__hash__(self)

    def __str__(self) -> str:
        return self.content

    def __repr__(self) -> str:
        return (f"LLMResponse(content={self.content!r}, model={self.model!r}, usage={self.usage!r}, "
                f"finish_reason={self.finish_reason!r}, tool_calls={self.tool_calls!r})")
