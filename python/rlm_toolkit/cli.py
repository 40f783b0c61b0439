"""The ``rlm-toolkit`` command (also ``python -m rlm_toolkit``).

``demo``   a scripted session that shows every callback event (ConsoleCallback, plus a line as each run starts
           and ends), then a metrics table and the JSONL log path with its count of run records.
           With no API key and no ``--base-url`` it starts the embedded local server (and injects a 429 to
           show a retry); otherwise it talks to that endpoint with ``--model``.
``run``    answer one prompt (``--stream`` prints it as it arrives, ``--log`` writes a JSONL event log).
``serve``  run the local OpenAI-compatible server in the foreground, for testing apps offline.
``bench``  the benchmark suite (``rlm_toolkit.bench``).
``report`` replay JSONL logs (files or folders of them, e.g. one per worker) and print the figures of all of
           them together (``rlm_toolkit.report``); ``--json`` saves the merged snapshot, ``--plot`` a PNG.

Problems the user can fix (no key, unreachable server, unknown model, unwritable log) print one line to
stderr and exit with status 2; so does a malformed option, such as a ``--base-url`` that is not an http(s) URL.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._client import _base_url_problem
from .callbacks import (
    BaseCallback,
    ConsoleCallback,
    FileLogCallback,
    MetricsCallback,
    MetricsReport,
    StreamingCallback,
)
from .errors import RLMToolkitError
from .memory import BufferMemory
from .rlm import RLM, MissingAPIKeyError
from .server import LocalServer, main_serve

DEFAULT_MODEL = "gpt-4o-mini"
EXIT_USER_ERROR = 2
_WEATHER = {"paris": "Sunny, 21 C", "oslo": "Light rain, 9 C", "tokyo": "Cloudy, 17 C"}


class _CommandError(RLMToolkitError):
    """A command cannot go on; the message says why."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    args, bench_args = parser.parse_known_args(argv)
    if bench_args and args.command is not _bench:
        parser.error(f"unrecognized arguments: {' '.join(bench_args)}")
    args.bench_args = bench_args
    try:
        return int(args.command(args) or 0)
    except RLMToolkitError as error:
        print(f"rlm-toolkit: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    from . import __version__  # read from the package metadata, so only when a parser is built

    parser = argparse.ArgumentParser(prog="rlm-toolkit", description="Callbacks (event hooks) for LLM apps.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="show every callback event in a scripted session",
        description="Show every callback event in a scripted session, then the metrics and the JSONL log. "
        "With no OPENAI_API_KEY, OPENAI_BASE_URL or --base-url it uses the embedded local server.",
    )
    _add_endpoint_options(demo)
    demo.add_argument("--log", metavar="PATH", help="JSONL log file (default: demo.jsonl in a new temporary folder)")
    demo.set_defaults(command=_demo)

    run = commands.add_parser(
        "run", help="answer one prompt", description="Answer one prompt and print the answer."
    )
    run.add_argument("prompt", help="the prompt to answer")
    _add_endpoint_options(run)
    run.add_argument("--stream", action="store_true", help="print the answer as it arrives")
    run.add_argument("--log", metavar="PATH", help="write a JSONL event log to PATH")
    run.set_defaults(command=_run)

    serve = commands.add_parser(
        "serve",
        help="run the local OpenAI-compatible server",
        description="Run the embedded OpenAI-compatible server in the foreground (Ctrl+C stops it), for "
        "testing apps offline: point them at the base URL it prints.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument(
        "--port", type=int, default=8000, help="port to listen on; 0 picks a free one (default: %(default)s)"
    )
    serve.set_defaults(command=_serve)

    report = commands.add_parser(
        "report",
        help="the figures of JSONL logs replayed together",
        description="Replay JSONL logs written by FileLogCallback (files, or folders: every *.jsonl file in "
        "them) into one metrics aggregator and print the figures: per file, per model, overall, and the "
        "slowest calls.",
    )
    report.add_argument("logs", nargs="+", metavar="LOG_OR_DIR", help="a JSONL log, or a folder of them")
    report.add_argument("--json", metavar="PATH", help="write the merged MetricsSnapshot as JSON to PATH")
    report.add_argument(
        "--plot", metavar="PATH", help="write a PNG of the latency histogram and calls per minute (needs matplotlib)"
    )
    report.add_argument(
        "--slowest", type=_count, default=10, metavar="N", help="list the N slowest calls (default: %(default)s)"
    )
    report.add_argument("--backend", choices=("rust", "python"), help="parse with this backend (default: rust)")
    report.set_defaults(command=_report)

    bench = commands.add_parser("bench", help="run the benchmarks (rlm_toolkit.bench)", add_help=False)
    bench.set_defaults(command=_bench)
    return parser


def _add_endpoint_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name (default: %(default)s)")
    parser.add_argument(
        "--base-url",
        type=_base_url,
        metavar="URL",
        help="OpenAI-compatible endpoint, such as http://127.0.0.1:8000/v1 (default: $OPENAI_BASE_URL, else OpenAI)",
    )


def _count(value: str) -> int:
    """A whole number >= 0; argparse reports the problem otherwise."""
    try:
        count = int(value)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"invalid count {value!r}: give a whole number >= 0")
    return count


def _base_url(value: str) -> str:
    """``--base-url``'s value, if it is an http(s) URL with a host; argparse reports the problem otherwise."""
    problem = _base_url_problem(value)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"invalid URL {problem}")
    return value


# -- run / serve / bench ----------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    try:
        rlm = RLM.from_openai(args.model, base_url=args.base_url)
    except MissingAPIKeyError as error:
        raise _CommandError(
            "no OpenAI API key: set OPENAI_API_KEY, or give --base-url URL of an OpenAI-compatible server "
            "(`rlm-toolkit serve` starts a local one)"
        ) from error
    file_log = FileLogCallback(args.log) if args.log else None
    if file_log is not None:
        rlm.callbacks.add(file_log)
    try:
        if args.stream:
            for text in rlm.stream(args.prompt):
                print(text, end="", flush=True)
            print()
        else:
            print(rlm.run(args.prompt).answer)
    finally:
        if file_log is not None:
            file_log.close()
    if file_log is not None:
        print(f"log: {file_log.log_path}", file=sys.stderr)
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        main_serve(args.host, args.port)
    except OSError as error:
        raise _CommandError(f"cannot serve on {args.host}:{args.port}: {error.strerror or error}") from error
    return 0


def _report(args: argparse.Namespace) -> int:
    from . import report

    if args.plot:
        # Before any work, so that nothing is written without the plot.
        report.check_plotting()
    replayed = report.replay_logs(args.logs, backend=args.backend, slowest=args.slowest)
    print(report.format_report(replayed), end="")
    if args.json:
        try:
            Path(args.json).write_text(replayed.snapshot.to_json(), encoding="utf-8")
        except OSError as error:
            raise _CommandError(f"cannot write {args.json}: {error.strerror or error}") from error
        print(f"\nsnapshot: {args.json}")
    if args.plot:
        try:
            report.write_plot(replayed, args.plot)
        except OSError as error:
            raise _CommandError(f"cannot write {args.plot}: {error.strerror or error}") from error
        print(f"plot: {args.plot}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    """Options after ``bench`` are the suite's own (``rlm-toolkit bench --help``)."""
    from . import bench

    return int(bench.main(args.bench_args) or 0)


# -- demo -------------------------------------------------------------------------------------------


class _RunPrinter(BaseCallback):
    """Prints a line when a run starts and when it ends (ConsoleCallback prints the events inside runs)."""

    def on_run_start(self, prompt: str, *, run_id: Any = None, **kwargs: Any) -> None:
        print(f"run started   {_short_id(run_id)}  {_demo_quoted(prompt)}")

    def on_run_end(self, answer: str, *, run_id: Any = None, **kwargs: Any) -> None:
        print(f"run finished  {_short_id(run_id)}  -> {_demo_quoted(answer)}")


def _short_id(run_id: Any) -> str:
    return f"[{str(run_id)[:8]}]"


def _demo_quoted(text: str) -> str:
    """``text`` on one line, cut to 60 characters, in double quotes."""
    one_line = " ".join(str(text).split())
    return f'"{one_line[:57]}..."' if len(one_line) > 60 else f'"{one_line}"'


class _TokenPrinter(StreamingCallback):
    """Prints streamed tokens as they arrive, and ends the line when the LLM call ends."""

    def on_token(self, token: str) -> None:
        print(token, end="", flush=True)

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        print()


def get_weather(city: str) -> str:
    """Current weather in a city.

    Args:
        city: City name, e.g. "Paris".
    """
    try:
        return _WEATHER[city.lower()]
    except KeyError:
        raise ValueError(f"no weather data for {city!r}") from None


def _demo(args: argparse.Namespace) -> int:
    if args.base_url:
        endpoint_source = "--base-url"
    elif os.environ.get("OPENAI_BASE_URL"):
        endpoint_source = "$OPENAI_BASE_URL"
    elif os.environ.get("OPENAI_API_KEY"):
        endpoint_source = "OpenAI's API, as $OPENAI_API_KEY is set"
    else:
        with LocalServer() as server:
            print(f"No OPENAI_API_KEY or --base-url: using the embedded local server at {server.base_url}")
            _demo_session(args.model, args.log, base_url=server.base_url, api_key=server.api_key, server=server)
        return 0
    _demo_session(args.model, args.log, base_url=args.base_url, api_key=None, server=None, source=endpoint_source)
    return 0


def _demo_session(
    model: str,
    log: str | None,
    *,
    base_url: str | None,
    api_key: str | None,
    server: LocalServer | None,
    source: str | None = None,
) -> None:
    """The scripted session; ``server`` is the local server to inject a 429 into (None: no retry step).

    ``source`` (where the endpoint comes from) makes the first line name the endpoint and model.
    """
    log_path = Path(log) if log else Path(tempfile.mkdtemp(prefix="rlm-toolkit-demo-")) / "demo.jsonl"
    metrics = MetricsCallback()
    file_log = FileLogCallback(log_path)
    observers = [_RunPrinter(), ConsoleCallback(verbose=True), metrics, file_log]
    options: dict[str, Any] = {"api_key": api_key, "base_url": base_url, "backoff_base": 0.2}
    try:
        rlm = RLM.from_openai(model, observers, tools=[get_weather], **options)
        if source is not None:
            print(f"Using the endpoint {rlm.base_url} ({source}) with model {model!r}")
        _section("1. A plain answer")
        print("answer:", rlm.run("Hello! What can you do?").answer)

        _section("2. A streamed answer: with a StreamingCallback registered, each token fires on_llm_new_token")
        streaming_rlm = RLM.from_openai(model, [_TokenPrinter(), *observers], **options)
        streaming_rlm.run("Tell me a long story about callbacks.")

        _section("3. A tool call (get_weather), then a tool that fails: the model is told, the run goes on")
        print("answer:", rlm.run('Use get_weather {"city": "Paris"} to tell me the weather.').answer)
        print("answer:", rlm.run('Use get_weather {"city": "Atlantis"} to tell me the weather.').answer)

        _section("4. Memory: the second run recalls the first, so the model knows the name")
        with_memory = RLM.from_openai(model, observers, memory=BufferMemory(max_messages=10), **options)
        with_memory.run("My name is Ada.")
        print("answer:", with_memory.run("What is my name?").answer)

        _section("5. A retry after a 429 (Too Many Requests)")
        if server is None:
            print("(skipped: a 429 can only be injected into the local server)")
        else:
            server.fail_next(429, retry_after=0.2)
            print("answer:", rlm.run("Are you there?").answer)
    finally:
        file_log.close()

    _section("Metrics (MetricsCallback().get_metrics())")
    _print_metrics(metrics.get_metrics())
    with log_path.open(encoding="utf-8") as lines:
        events = [json.loads(line)["event"] for line in lines]
    print(f"\nJSONL log (FileLogCallback): {log_path.resolve()}  ({len(events)} lines, "
          f"{events.count('run_start')} run_start and {events.count('run_end')} run_end records)")


def _section(title: str) -> None:
    print(f"\n== {title}")


def _print_metrics(metrics: MetricsReport) -> None:
    latency_quantiles = (metrics["p50_latency_ms"], metrics["p95_latency_ms"], metrics["p99_latency_ms"])
    rows = [
        ("total calls", metrics["total_calls"]),
        ("total tokens", metrics["total_tokens"]),
        ("prompt tokens", metrics["prompt_tokens"]),
        ("completion tokens", metrics["completion_tokens"]),
        ("avg latency", f"{metrics['avg_latency_ms']:.1f} ms"),
        ("p50 / p95 / p99 latency", " / ".join(f"{latency:.1f}" for latency in latency_quantiles) + " ms"),
        ("tool calls", metrics["tool_calls"]),
        ("retries", metrics["retries"]),
        ("errors", metrics["errors"]),
        ("total cost", f"${metrics['total_cost_usd']:.6f}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name.ljust(width)}  {value}")
