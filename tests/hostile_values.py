"""Values that subclass built-in types and override what an encoder might call: both backends must write
them by their built-in value (or, for a failing iteration, as text)."""

from __future__ import annotations

from typing import Any


class FailingIteration(tuple):  # type: ignore[type-arg]
    def __iter__(self) -> Any:
        raise RuntimeError("no iteration")


class LoudStr(str):
    def __str__(self) -> str:
        return "overridden"

    def __len__(self) -> int:
        return 0


class LoudInt(int):
    def __int__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "overridden"


class LoudFloat(float):
    def __float__(self) -> float:
        return 0.0

    def __repr__(self) -> str:
        return "overridden"


class LoudDict(dict):  # type: ignore[type-arg]
    def items(self) -> Any:
        return [("overridden", 0)]


class LoudBytes(bytes):
    def decode(self, *args: Any) -> str:
        return "overridden"
