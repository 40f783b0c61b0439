"""Tool calls from a model reply: each checked, run by a driver (sync or async), then told to the model."""

from __future__ import annotations

from typing import Any

from ._context import new_run_id, parent_run
from ._run_options import RunCallbacks
from .tools import Tool, ToolCallError, ToolCallRecord, format_tool_output


class _ToolInvocation:
    """One tool call from a model reply: checked on creation, run by a driver, then a ``tool`` message.

    A call naming no known tool or with unusable arguments fails on creation (``output`` is set at once, no
    driver involved). Failures fire ``on_error`` (with ``tool_name=``) and tell the model ``Error: ...``.
    """

    def __init__(
        self,
        call: dict[str, Any],
        tools_by_name: dict[str, Tool],
        callbacks: RunCallbacks,
        parent_run_id: str,
        context: dict[str, Any],
    ) -> None:
        """``context``: the run's ``tags`` and ``metadata`` keywords, given to every event."""
        self.call_id: str = call["id"]
        self.name: str = call["function"]["name"]
        self.arguments: dict[str, Any] | None = None
        self.output: str | None = None
        self.error: BaseException | None = None
        self._callbacks = callbacks
        self._ids = {"run_id": new_run_id(), "parent_run_id": parent_run_id, **context}
        self._tool = tool = tools_by_name.get(self.name)
        try:
            if tool is None:
                known = ", ".join(sorted(tools_by_name)) or "none"
                raise ToolCallError(f"unknown tool {self.name!r}; the tools are: {known}")
            self.arguments = tool.parse_arguments(call["function"]["arguments"])
        except ToolCallError as error:
            self._fail(error, f"Error: {error}")

    def run_sync(self) -> None:
        assert self._tool is not None and self.arguments is not None
        self._callbacks.on_tool_start(self.name, self.arguments, **self._ids)
        try:
            with parent_run(self._ids["run_id"]):
                result = self._tool.invoke(self.arguments)
        except Exception as error:
            self._fail(error, f"Error: {type(error).__name__}: {error}")
        else:
            self._succeed(result)

    async def run_async(self) -> None:
        assert self._tool is not None and self.arguments is not None
        self._callbacks.on_tool_start(self.name, self.arguments, **self._ids)
        try:
            with parent_run(self._ids["run_id"]):
                result = await self._tool.ainvoke(self.arguments)
        except Exception as error:
            self._fail(error, f"Error: {type(error).__name__}: {error}")
        else:
            self._succeed(result)

    def tool_message(self) -> dict[str, Any]:
        return {"role": "tool", "tool_call_id": self.call_id, "content": self.output}

    def record(self) -> ToolCallRecord:
        return ToolCallRecord(self.name, self.arguments, self.output or "", self.error)

    def _succeed(self, result: Any) -> None:
        self.output = format_tool_output(result)
        self._callbacks.on_tool_end(self.name, self.output, **self._ids)

    def _fail(self, error: BaseException, told_to_model: str) -> None:
        self.error = error
        self.output = told_to_model
        self._callbacks.on_error(error, model=None, tool_name=self.name, **self._ids)


def _tool_call_message(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    """A tool call as it appears in an assistant message (and in ``LLMResponse.tool_calls``)."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
