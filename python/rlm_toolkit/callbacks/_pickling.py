"""Pickling by configuration, so that callbacks, managers, memories, tools and RLMs can be sent to workers.

An object of a class derived from ``PickledByConfiguration`` pickles as a call of its class with the arguments
its constructor was given: unpickling builds a fresh object with the same options and none of the original's
state (counters, buffered lines, open runs, stored messages, threads, open files, clients).

The arguments are kept as given, except where the constructor resolves one to the form another process needs
(``_keep_argument``): an iterable it consumed as the list it held, a relative path as an absolute one, the
default backend as the one chosen, an API key read from the environment as that key.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable
from typing import Any

from ..errors import NotPicklableError

_CONSTRUCTOR_CALL = "_constructor_call"
"""The instance attribute holding the ``inspect.BoundArguments`` of the call that built the object."""


class PickledByConfiguration:
    """Pickles as ``type(self)(*args, **kwargs)`` with the arguments the object was built with.

    Every ``__init__`` of a derived class (a user's subclass too) is wrapped at class creation so that it
    keeps the arguments of the outermost call, the one that built the object; so a subclass with a
    constructor of its own pickles as a call of that constructor.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        try:
            setattr(cls, "__init__", _keeping_arguments(init))
        except (TypeError, ValueError):  # no signature to bind the arguments to: __reduce__ refuses
            pass

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        call: inspect.BoundArguments | None = self.__dict__.get(_CONSTRUCTOR_CALL)
        if call is not None:
            return construct, (type(self), call.args, call.kwargs)
        if type(self).__init__ is object.__init__:
            return construct, (type(self), (), {})
        raise NotPicklableError(
            f"cannot pickle this {type(self).__qualname__}: the arguments it was built with are unknown; "
            "give its class a __reduce__ that says how to build it again"
        )

    def _keep_argument(self, name: str, value: Any) -> None:
        """Pickle ``value`` as the constructor's argument ``name``: the form the constructor resolved the given
        one to. Nothing changes if the constructor that built the object has no parameter ``name``."""
        call: inspect.BoundArguments | None = self.__dict__.get(_CONSTRUCTOR_CALL)
        if call is not None and name in call.signature.parameters:
            call.arguments[name] = value


def _keeping_arguments(init: Callable[..., None]) -> Callable[..., None]:
    parameters = list(inspect.signature(init).parameters.values())[1:]  # without self
    signature_without_self = inspect.Signature(parameters)

    @functools.wraps(init)
    def init_keeping_arguments(self: Any, *args: Any, **kwargs: Any) -> None:
        if type(self).__init__ is init_keeping_arguments:  # the call that builds the object, not a super() one
            try:
                self.__dict__[_CONSTRUCTOR_CALL] = signature_without_self.bind(*args, **kwargs)
            except TypeError:  # arguments that do not fit: init raises the error the caller should see
                pass
        init(self, *args, **kwargs)

    return init_keeping_arguments


def construct(cls: type[Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``cls(*args, **kwargs)``: how an object pickled by configuration is built again."""
    return cls(*args, **kwargs)


def require_sendable_function(function: object, owner: str) -> None:
    """Raise ``NotPicklableError`` if ``function`` is a lambda or a function defined inside another function:
    pickle sends a function as its module and name, and neither can be found by name in another process.
    ``owner`` names what holds the function in the message (``"tool 'shout'"``)."""
    if not isinstance(function, types.FunctionType) or "<" not in function.__qualname__:
        return
    kind = "a lambda" if function.__name__ == "<lambda>" else "defined inside another function"
    raise NotPicklableError(
        f"{owner} cannot be sent to another process: its function {function.__qualname__} is {kind}, "
        "which pickle cannot find by name; define it with def at the top level of a module and pass that"
    )
