"""Tools the model may call: plain functions or explicit ``Tool`` objects.

A plain function becomes a tool named after ``__name__``; its parameters' JSON schema comes from the signature
and type hints (``str``, ``int``, ``float``, ``bool``, ``list[...]``, ``dict[str, ...]``, ``Optional``/``X | None``,
other unions, ``Literal``; a parameter with a default is not required) and its description from the docstring
(the text before a Google-style ``Args:`` section, whose entries describe the parameters)::

    def get_weather(city: str, unit: Literal["C", "F"] = "C") -> str:
        \"\"\"Current weather in a city.

        Args:
            city: City name, e.g. "Paris".
        \"\"\"

``Tool(name, fn, description, parameters)`` states everything explicitly (``parameters`` is a JSON schema of an
object; left out, it is derived from ``fn`` as above). ``fn`` may be ``async def``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import types
import typing
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Union

from .callbacks._pickling import construct, require_sendable_function
from .errors import ToolCallError, ToolDefinitionError

__all__ = [
    "Tool",
    "ToolCallError",
    "ToolCallRecord",
    "ToolDefinitionError",
    "as_tool",
    "format_tool_output",
]

_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DOC_ARGS_HEADER = re.compile(r"^(Args|Arguments|Parameters):\s*$")
_DOC_SECTION_HEADER = re.compile(
    r"^(Returns|Return|Yields|Raises|Examples?|Notes?|Attributes|See Also|Warnings?|Todo|References):\s*$"
)
_DOC_ARG_ENTRY = re.compile(r"^\s+\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_PLAIN_TYPE_SCHEMAS: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
    list: {"type": "array"},
    tuple: {"type": "array"},
    dict: {"type": "object"},
}


@dataclass(frozen=True, slots=True)
class ToolCallRecord:
    """One tool call made during a run, as reported in ``RunResult.tool_calls``."""

    name: str
    arguments: dict[str, Any] | None
    """The parsed arguments, or None when they could not be parsed."""
    output: str
    """The text handed back to the model (``"Error: ..."`` when the call failed)."""
    error: BaseException | None = None


@dataclass(frozen=True, eq=False)
class Tool:
    """A function the model may call, with the name, description and JSON schema the model sees.

    Pickled (to send it, or an ``RLM`` using it, to a worker process), a tool travels as its fields, and its
    function by module and name: it must be defined at the top level of a module. A lambda or a function
    defined inside another function raises ``NotPicklableError`` naming the tool.
    """

    name: str
    fn: Callable[..., Any]
    description: str = ""
    parameters: dict[str, Any] | None = None
    """JSON schema of the arguments object; derived from ``fn``'s signature when left out."""
    _signature: inspect.Signature = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _TOOL_NAME.match(self.name):
            raise ToolDefinitionError(
                f"tool name {self.name!r} is not allowed: use 1-64 letters, digits, '_' or '-' "
                "(for a lambda or partial, wrap it as Tool(name=..., fn=...))"
            )
        if not callable(self.fn):
            raise ToolDefinitionError(f"tool {self.name!r}: fn must be callable, got {type(self.fn).__name__}")
        object.__setattr__(self, "_signature", inspect.signature(self.fn))
        if self.parameters is None:
            object.__setattr__(self, "parameters", _parameters_schema(self.name, self.fn, self._signature))

    def __reduce__(self) -> tuple[Any, ...]:
        require_sendable_function(self.fn, f"tool {self.name!r}")
        init_fields = {spec.name: getattr(self, spec.name) for spec in fields(self) if spec.init}
        return construct, (type(self), (), init_fields)

    @classmethod
    def from_function(cls, fn: Callable[..., Any], *, name: str | None = None, description: str | None = None) -> Tool:
        """A tool from a plain function: name from ``__name__``, description and schema as the module says."""
        tool_name = name if name is not None else getattr(fn, "__name__", "")
        if description is None:
            description = _split_docstring(inspect.getdoc(fn) or "")[0]
        return cls(tool_name, fn, description)

    def openai_schema(self) -> dict[str, Any]:
        """The entry of the ``tools`` list of a chat completion request."""
        function: dict[str, Any] = {"name": self.name, "parameters": self.parameters}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}

    def parse_arguments(self, raw: str | None) -> dict[str, Any]:
        """The model's JSON arguments as keyword arguments for ``fn``; raises ``ToolCallError`` if they do not fit."""
        if raw is None or not raw.strip():
            arguments: object = {}
        else:
            try:
                arguments = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ToolCallError(
                    f"arguments for tool {self.name!r} are not valid JSON ({exc.msg} at position {exc.pos}): "
                    f"{raw[:200]!r}; send a JSON object matching the tool's parameters"
                ) from exc
        if not isinstance(arguments, dict):
            raise ToolCallError(
                f"arguments for tool {self.name!r} must be a JSON object, got {type(arguments).__name__}"
            )
        try:
            self._signature.bind(**arguments)
        except TypeError as exc:
            raise ToolCallError(f"arguments for tool {self.name!r} do not fit its parameters: {exc}") from exc
        return arguments

    def invoke(self, arguments: dict[str, Any]) -> Any:
        """Call the tool from synchronous code (an ``async def`` tool runs to completion on a new event loop)."""
        result = self.fn(**arguments)
        if inspect.isawaitable(result):
            return asyncio.run(_await(result))
        return result

    async def ainvoke(self, arguments: dict[str, Any]) -> Any:
        """Call the tool from async code: a sync tool is called directly, an async one awaited."""
        result = self.fn(**arguments)
        if inspect.isawaitable(result):
            return await result
        return result


def as_tool(obj: Tool | Callable[..., Any]) -> Tool:
    """``obj`` itself if it is a ``Tool``, else ``Tool.from_function(obj)``."""
    if isinstance(obj, Tool):
        return obj
    if callable(obj):
        return Tool.from_function(obj)
    raise ToolDefinitionError(f"a tool must be a function or a Tool, got {type(obj).__name__}")


def format_tool_output(result: Any) -> str:
    """The text handed back to the model: a ``str`` as it is, anything else as JSON (``str()`` for the rest)."""
    if isinstance(result, str):
        return result
    return json.dumps(result, default=str, ensure_ascii=False)


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _parameters_schema(tool_name: str, fn: Callable[..., Any], signature: inspect.Signature) -> dict[str, Any]:
    try:
        hints = typing.get_type_hints(fn)
    except (NameError, TypeError) as exc:
        raise ToolDefinitionError(f"tool {tool_name!r}: cannot resolve its type hints ({exc})") from exc
    argument_docs = _split_docstring(inspect.getdoc(fn) or "")[1]
    properties: dict[str, Any] = {}
    required: list[str] = []
    for parameter in signature.parameters.values():
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise ToolDefinitionError(
                f"tool {tool_name!r}: *{parameter.name} / **{parameter.name} parameters cannot be described to "
                "the model; name each parameter, or pass Tool(..., parameters=<JSON schema>)"
            )
        if parameter.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise ToolDefinitionError(
                f"tool {tool_name!r}: positional-only parameter {parameter.name!r} cannot take a keyword argument"
            )
        try:
            schema = _schema_for(hints.get(parameter.name, Any))
        except ToolDefinitionError as exc:
            raise ToolDefinitionError(f"tool {tool_name!r}, parameter {parameter.name!r}: {exc}") from None
        if parameter.name in argument_docs:
            schema["description"] = argument_docs[parameter.name]
        if parameter.default is inspect.Parameter.empty:
            required.append(parameter.name)
        elif _is_json_value(parameter.default):
            schema["default"] = parameter.default
        properties[parameter.name] = schema
    return {"type": "object", "properties": properties, "required": required}


def _schema_for(annotation: Any) -> dict[str, Any]:
    """JSON schema of one type hint."""
    if annotation is Any:
        return {}
    if annotation in _PLAIN_TYPE_SCHEMAS:
        return dict(_PLAIN_TYPE_SCHEMAS[annotation])
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        schema: dict[str, Any] = {"enum": list(arguments)}
        value_types = {type(value) for value in arguments}
        if len(value_types) == 1 and (only := value_types.pop()) in _PLAIN_TYPE_SCHEMAS:
            schema.update(_PLAIN_TYPE_SCHEMAS[only])
        return schema
    if origin is Union or origin is types.UnionType:
        return {"anyOf": [_schema_for(member) for member in arguments]}
    if origin in (list, tuple, set, frozenset) or _is_abc(origin, ("Sequence", "Iterable", "Set")):
        schema = {"type": "array"}
        item_types = [item for item in arguments if item is not Ellipsis]
        if len(set(item_types)) == 1:
            schema["items"] = _schema_for(item_types[0])
        return schema
    if origin is dict or _is_abc(origin, ("Mapping",)):
        schema = {"type": "object"}
        if len(arguments) == 2:
            schema["additionalProperties"] = _schema_for(arguments[1])
        return schema
    raise ToolDefinitionError(
        f"type hint {annotation!r} has no JSON schema here; use str, int, float, bool, list, dict, Optional, "
        "Literal or unions of those, or pass Tool(..., parameters=<JSON schema>)"
    )


def _is_abc(origin: Any, names: Iterable[str]) -> bool:
    return getattr(origin, "__module__", None) == "collections.abc" and origin.__name__ in names


def _is_json_value(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _split_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The description part of a docstring and the descriptions of its ``Args:`` entries."""
    summary: list[str] = []
    argument_docs: dict[str, str] = {}
    section = "summary"
    current_argument: str | None = None
    for line in doc.splitlines():
        if _DOC_ARGS_HEADER.match(line):
            section, current_argument = "args", None
        elif _DOC_SECTION_HEADER.match(line):
            section = "other"
        elif section == "summary":
            summary.append(line)
        elif section == "args":
            entry = _DOC_ARG_ENTRY.match(line)
            if entry:
                current_argument = entry.group(1)
                argument_docs[current_argument] = entry.group(2).strip()
            elif current_argument and line.strip():
                argument_docs[current_argument] = f"{argument_docs[current_argument]} {line.strip()}".strip()
    return "\n".join(summary).strip(), argument_docs
