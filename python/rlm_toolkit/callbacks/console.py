"""``ConsoleCallback``: one readable line per event, for watching runs from a terminal.

Lines look like this (child runs, those with a ``parent_run_id``, are indented)::

    [1a2b3c4d] llm start      gpt-4o  "What is the weather in Paris?"
    [1a2b3c4d] retry 1/3      gpt-4o  RateLimitError: Error code: 429 - rate limit reached
      [call_5e6] tool start     get_weather {"city": "Paris"}
      [call_5e6] tool end       get_weather -> "Sunny, 21 C"
    [1a2b3c4d] llm end        gpt-4o  412 ms  tokens: 19 (12 prompt + 7 completion)  cost: $0.000100  -> "Tool..."
    [5f6a7b8c] llm end        gpt-4o  380 ms  tokens: 15 (9 prompt + 6 completion)  cost: $0.000080  [tags: nightly]

Streamed tokens are not printed: that is ``StreamingCallback``'s job.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any, ClassVar, TextIO

from ..errors import NotPicklableError
from ..pricing import cost_usd
from ..secrets import redact
from ._pickling import PickledByConfiguration
from .base import BaseCallback

_PROMPT_CHARS = 60
"""How much of a prompt, answer or tool input/output a line shows."""
_ERROR_CHARS = 200
"""How much of an error message a line shows."""
_LABEL_WIDTH = len("memory recall")
_RUN_ID_CHARS = 8
_CHILD_INDENT = "  "

_RESET = "\033[0m"
_DIM = "\033[2m"
_LABEL_COLORS: dict[str, str] = {
    "llm start": "\033[36m",  # cyan
    "llm end": "\033[32m",  # green
    "tool start": "\033[36m",
    "tool end": "\033[32m",
    "memory store": "\033[35m",  # magenta
    "memory recall": "\033[35m",
    "retry": "\033[33m",  # yellow
    "error": "\033[1;31m",  # bold red
}


def _one_line(text: str, limit: int) -> str:
    """``text`` redacted, runs of whitespace collapsed to one space, cut to ``limit`` characters with ``...``.

    Redacting before the cut matters: a cut key would no longer look like one. Redacting again after the
    collapse catches a token that only the collapse makes whole (``Bearer\n<token>``).
    """
    flat = redact(" ".join(redact(text).split()))
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _printable(text: str, stream: TextIO) -> str:
    """``text`` as ``stream`` can encode it: lone surrogates (which no encoding holds) and characters outside
    the stream's encoding become backslash escapes, so no line is lost to a UnicodeEncodeError."""
    if text.isascii():  # every encoding a console uses holds ASCII
        return text
    encoding = getattr(stream, "encoding", None)
    if not isinstance(encoding, str):  # io.StringIO and other streams that encode nothing
        encoding = "utf-8"
    try:
        return text.encode(encoding, "backslashreplace").decode(encoding)
    except LookupError:  # an encoding Python does not know
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _quoted(value: Any, limit: int = _PROMPT_CHARS) -> str:
    """A short one-line rendering: strings in double quotes, other values as compact JSON."""
    if isinstance(value, str):
        return f'"{_one_line(value, limit)}"'
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):  # circular references, or dict keys JSON cannot hold
        text = repr(value)
    return _one_line(text, limit)


def _answer_summary(response: Any) -> str:
    """The answer of an LLM response, quoted, or how many tools it calls when it has no text."""
    content = getattr(response, "content", response)
    tool_calls = getattr(response, "tool_calls", None)
    if not content and tool_calls:
        return f"{len(tool_calls)} tool call{'' if len(tool_calls) == 1 else 's'}"
    return _quoted(content)


def _error_text(error: Any) -> str:
    if isinstance(error, BaseException):
        message = str(error)
        text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    else:
        text = str(error)
    return _one_line(text, _ERROR_CHARS)


def _latency_text(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    milliseconds = seconds * 1000
    return f"{milliseconds:.1f} ms" if milliseconds < 10 else f"{milliseconds:.0f} ms"


def _tags_text(tags: Any) -> str | None:
    """``[tags: a, b]`` for a run's tags; None (nothing shown) when it has none."""
    if not tags or isinstance(tags, (str, bytes)):
        return None
    try:
        return "[tags: " + ", ".join(str(tag) for tag in tags) + "]"
    except TypeError:  # not iterable: a hook called by hand with something else
        return None


def _usage_texts(response: Any, model: str | None, show_tokens: bool, show_cost: bool) -> list[str]:
    """The ``tokens: ...`` and ``cost: ...`` parts of an ``llm end`` line, as enabled."""
    usage = getattr(response, "usage", None)
    texts: list[str] = []
    if usage is None:
        if show_tokens:
            texts.append("tokens: unknown")
        if show_cost:
            texts.append("cost: unknown")
        return texts
    if show_tokens:
        texts.append(
            f"tokens: {usage.total_tokens} ({usage.prompt_tokens} prompt + {usage.completion_tokens} completion)"
        )
    if show_cost:
        cached = getattr(usage, "cached_tokens", 0)  # a user's own usage object may not have it
        cached = cached if isinstance(cached, int) and not isinstance(cached, bool) else 0
        cost = cost_usd(model, usage.prompt_tokens, usage.completion_tokens, cached)
        texts.append("cost: unknown" if cost is None else f"cost: ${cost:.6f}")
    return texts


def _standard_stream(name: str) -> TextIO:
    """``sys.stdout`` or ``sys.stderr`` (``name``) of the process that calls it."""
    stream: TextIO = getattr(sys, name)
    return stream


class _StreamForWorkers:
    """What a ``ConsoleCallback``'s ``stream`` pickles as: ``sys.stdout`` or ``sys.stderr`` as the unpickling
    process's own; any other stream belongs to this process, so pickling refuses it."""

    def __init__(self, stream: TextIO) -> None:
        self.standard_name = next((name for name in ("stdout", "stderr")
                                   if stream is getattr(sys, name) or stream is getattr(sys, f"__{name}__")), None)

    def __reduce__(self) -> tuple[Any, ...]:
        if self.standard_name is None:
            raise NotPicklableError(
                "ConsoleCallback(stream=...) cannot be sent to another process: its stream belongs to this one; "
                "leave stream=None (each worker prints to its own sys.stdout) or pass sys.stdout or sys.stderr"
            )
        return _standard_stream, (self.standard_name,)


class ConsoleCallback(PickledByConfiguration, BaseCallback):
    """Prints one line per event to ``stream`` (``sys.stdout`` at the time of printing when None).

    ``verbose=False`` prints only finished LLM calls, retries and errors; ``verbose=True`` also prints LLM
    starts with the prompt, finished calls with the answer, tool calls and memory operations.
    ``show_tokens`` / ``show_cost`` add token usage and its cost (``rlm_toolkit.pricing``) to finished
    calls; the cost of a model without a price is shown as unknown, and so are the tokens and cost of a
    call whose server reported no usage. ``color`` turns ANSI colours on or off; None colours only when the
    stream is a terminal and ``NO_COLOR`` is not set. The extra keywords
    the RLM sends are shown too: the ``role`` of a stored message, the ``tool_name`` of a failed tool; and
    the run's ``tags`` at the end of LLM, retry and error lines.

    Latency pairs each LLM start with its end by ``run_id``; at most ``max_open_calls`` unfinished calls
    are remembered (the oldest is forgotten first).

    Pickled (to send it to a worker process), it travels as its options, with no unfinished calls; a
    ``stream`` of ``sys.stdout`` or ``sys.stderr`` becomes the worker's own, and any other stream cannot be
    sent (``NotPicklableError``).
    """

    max_open_calls: ClassVar[int] = 10_000

    def __init__(self, verbose: bool = True, show_tokens: bool = True, show_cost: bool = True, *,
                 stream: TextIO | None = None, color: bool | None = None) -> None:
        self.verbose = verbose
        self.show_tokens = show_tokens
        self.show_cost = show_cost
        self.stream = stream
        self.color = color
        if stream is not None:
            self._keep_argument("stream", _StreamForWorkers(stream))
        self._color_decision: tuple[TextIO, bool] | None = None
        """The stream color was last decided for, and the decision."""
        self._started_at: dict[Any, float] = {}
        """``time.perf_counter()`` at the start of each unfinished LLM call, by run id, oldest first."""
        self._started_at_lock = threading.Lock()

    # -- hooks ---------------------------------------------------------------------------------------------

    def on_llm_start(self, prompt: Any, *, run_id: Any = None, parent_run_id: Any = None,
                     model: str | None = None, tags: Any = None, **kwargs: Any) -> None:
        if run_id is not None:
            with self._started_at_lock:
                self._started_at[run_id] = time.perf_counter()
                if len(self._started_at) > self.max_open_calls:
                    del self._started_at[next(iter(self._started_at))]
        if self.verbose:
            self._print("llm start", [model, _quoted(prompt), _tags_text(tags)], run_id, parent_run_id)

    def on_llm_end(self, response: Any, *, run_id: Any = None, parent_run_id: Any = None,
                   model: str | None = None, tags: Any = None, **kwargs: Any) -> None:
        started_at = self._forget_call(run_id)
        if model is None:
            model = getattr(response, "model", None)
        details: list[str | None] = [model]
        if started_at is not None:
            details.append(_latency_text(time.perf_counter() - started_at))
        details += _usage_texts(response, model, self.show_tokens, self.show_cost)
        if self.verbose:
            details.append("-> " + _answer_summary(response))
        details.append(_tags_text(tags))
        self._print("llm end", details, run_id, parent_run_id)

    def on_tool_start(self, tool_name: str, tool_input: Any, *, run_id: Any = None, parent_run_id: Any = None,
                      **kwargs: Any) -> None:
        if self.verbose:
            self._print("tool start", [f"{tool_name} {_quoted(tool_input)}"], run_id, parent_run_id)

    def on_tool_end(self, tool_name: str, tool_output: Any, *, run_id: Any = None, parent_run_id: Any = None,
                    **kwargs: Any) -> None:
        if self.verbose:
            self._print("tool end", [f"{tool_name} -> {_quoted(tool_output)}"], run_id, parent_run_id)

    def on_memory_store(self, content: Any, *, run_id: Any = None, parent_run_id: Any = None,
                        role: str | None = None, **kwargs: Any) -> None:
        if self.verbose:
            self._print("memory store", [role, _quoted(content)], run_id, parent_run_id)

    def on_memory_recall(self, query: Any, results: Any, *, run_id: Any = None, parent_run_id: Any = None,
                         **kwargs: Any) -> None:
        if self.verbose:
            count = len(results)
            summary = f"{_quoted(query)} -> {count} {'result' if count == 1 else 'results'}"
            self._print("memory recall", [summary], run_id, parent_run_id)

    def on_retry(self, attempt: int, max_attempts: int, error: Any, *, run_id: Any = None,
                 parent_run_id: Any = None, model: str | None = None, tags: Any = None, **kwargs: Any) -> None:
        self._print(f"retry {attempt}/{max_attempts}", [model, _error_text(error), _tags_text(tags)], run_id,
                    parent_run_id, color_key="retry")

    def on_error(self, error: Any, *, run_id: Any = None, parent_run_id: Any = None, model: str | None = None,
                 tool_name: str | None = None, tags: Any = None, **kwargs: Any) -> None:
        self._forget_call(run_id)
        self._print("error", [model, tool_name, _error_text(error), _tags_text(tags)], run_id, parent_run_id)

    # -- output --------------------------------------------------------------------------------------------

    def _forget_call(self, run_id: Any) -> float | None:
        """Stop tracking the LLM call ``run_id``; its start time, if it was tracked."""
        if run_id is None:
            return None
        with self._started_at_lock:
            return self._started_at.pop(run_id, None)

    def _uses_color(self, stream: TextIO) -> bool:
        """``color`` if given, else whether ``stream`` is a terminal and ``NO_COLOR`` is unset: decided once per
        stream (a terminal check is a system call, too dear for every line)."""
        if self.color is not None:
            return self.color
        decided = self._color_decision
        if decided is not None and decided[0] is stream:
            return decided[1]
        isatty = getattr(stream, "isatty", None)
        uses_color = "NO_COLOR" not in os.environ and bool(isatty and isatty())
        self._color_decision = (stream, uses_color)
        return uses_color

    def _print(self, label: str, details: list[str | None], run_id: Any, parent_run_id: Any, *,
               color_key: str | None = None) -> None:
        """Write one line: indent, short run id, label padded to a column, then the non-empty details."""
        stream = self.stream if self.stream is not None else sys.stdout
        color = self._uses_color(stream)
        padded_label = label.ljust(_LABEL_WIDTH)
        if color:
            padded_label = f"{_LABEL_COLORS[color_key or label]}{padded_label}{_RESET}"
        line = _CHILD_INDENT if parent_run_id is not None else ""
        if run_id is not None:
            short_id = f"[{str(run_id)[:_RUN_ID_CHARS]}]".ljust(_RUN_ID_CHARS + 3)
            line += f"{_DIM}{short_id}{_RESET}" if color else short_id
        line += "  ".join([padded_label, *(detail for detail in details if detail)])
        stream.write(_printable(redact(line.rstrip()), stream) + "\n")
        stream.flush()
