"""What ``OpenTelemetryCallback`` costs per LLM call, next to the OpenTelemetry SDK doing the same by hand.

    python benches/otel_overhead.py                 # 7 interleaved repeats of 20 000 calls per way
    python benches/otel_overhead.py --calls 5000 --repeats 11

One LLM call is ``on_llm_start`` then ``on_llm_end`` (with usage, as a real answer has). The ways, each with the
SDK's ``TracerProvider`` and ``MeterProvider`` and a span exporter that drops what it gets (so no export cost):

- ``callback via CallbackManager``: the events fired through a ``CallbackManager`` (the chosen backend);
- ``callback hooks called directly``: the callback's two hooks called as plain methods (no dispatcher);
- ``SDK by hand``: ``start_span`` with the same attributes, the response attributes, the same three histogram
  records, ``end``: the least any instrumentation doing this work can cost;
- ``CallbackManager, no callback``: the dispatcher's own share, for scale.

The ways take turns within each repeat (in a shuffled order), so drifts of the machine hit them alike; the
figures are the median over the repeats of microseconds per call, with the lowest and highest.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable, Sequence

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind
from opentelemetry.util.types import AttributeValue

from rlm_toolkit._context import calling_endpoint
from rlm_toolkit.callbacks import CallbackManager, OpenTelemetryCallback
from rlm_toolkit.callbacks.otel import SECONDS_BUCKETS, TOKEN_BUCKETS
from rlm_toolkit.types import LLMResponse, Usage

MODEL = "gpt-4o"
ENDPOINT = "http://127.0.0.1:8000/v1"
RESPONSE = LLMResponse("An answer.", MODEL, Usage.of(120, 30), finish_reason="stop")


class DroppingExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def providers() -> tuple[TracerProvider, MeterProvider]:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(DroppingExporter()))
    return tracer_provider, MeterProvider(metric_readers=[InMemoryMetricReader()])


def fired_through(manager: CallbackManager, calls: int) -> Callable[[], None]:
    """``calls`` LLM calls fired through ``manager``, with the context keywords an RLM run passes."""
    context = {"parent_run_id": "run-1", "model": MODEL, "tags": [], "metadata": {}}

    def work() -> None:
        for index in range(calls):
            run_id = f"call-{index}"
            manager.on_llm_start("prompt", run_id=run_id, **context)
            manager.on_llm_end(RESPONSE, run_id=run_id, ttft_ms=None, **context)

    return work


def through_manager(calls: int) -> Callable[[], None]:
    return fired_through(CallbackManager([OpenTelemetryCallback(*providers())]), calls)


def hooks_directly(calls: int) -> Callable[[], None]:
    callback = OpenTelemetryCallback(*providers())

    def work() -> None:
        for index in range(calls):
            run_id = f"call-{index}"
            callback.on_llm_start("prompt", run_id=run_id, parent_run_id="run-1", model=MODEL)
            callback.on_llm_end(RESPONSE, run_id=run_id, ttft_ms=None)

    return work


def sdk_by_hand(calls: int) -> Callable[[], None]:
    tracer_provider, meter_provider = providers()
    tracer = tracer_provider.get_tracer("by-hand")
    meter = meter_provider.get_meter("by-hand")
    token_usage = meter.create_histogram("gen_ai.client.token.usage", unit="{token}",
                                         explicit_bucket_boundaries_advisory=TOKEN_BUCKETS)
    duration = meter.create_histogram("gen_ai.client.operation.duration", unit="s",
                                      explicit_bucket_boundaries_advisory=SECONDS_BUCKETS)

    def work() -> None:
        for index in range(calls):
            started = time.monotonic()
            metric_attributes: dict[str, AttributeValue] = {
                "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": MODEL,
                "server.address": "127.0.0.1", "server.port": 8000}
            span = tracer.start_span(f"chat {MODEL}", None, SpanKind.CLIENT,
                                     {**metric_attributes, "rlm_toolkit.run_id": f"call-{index}"})
            metric_attributes["gen_ai.response.model"] = MODEL
            span.set_attribute("gen_ai.response.model", MODEL)
            span.set_attribute("gen_ai.response.finish_reasons", ["stop"])
            span.set_attribute("gen_ai.usage.input_tokens", 120)
            span.set_attribute("gen_ai.usage.output_tokens", 30)
            token_usage.record(120, {**metric_attributes, "gen_ai.token.type": "input"})
            token_usage.record(30, {**metric_attributes, "gen_ai.token.type": "output"})
            duration.record(time.monotonic() - started, metric_attributes)
            span.end()

    return work


def manager_alone(calls: int) -> Callable[[], None]:
    return fired_through(CallbackManager([]), calls)


WAYS: dict[str, Callable[[int], Callable[[], None]]] = {
    "callback via CallbackManager": through_manager,
    "callback hooks called directly": hooks_directly,
    "SDK by hand": sdk_by_hand,
    "CallbackManager, no callback": manager_alone,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000, help="LLM calls per way and repeat")
    parser.add_argument("--repeats", type=int, default=7)
    options = parser.parse_args()
    per_call_us: dict[str, list[float]] = {name: [] for name in WAYS}
    with calling_endpoint(ENDPOINT):  # as during an RLM's on_llm_start: the callback adds server.*
        for name, build in WAYS.items():
            build(1_000)()  # warm up: first calls, caches
        for _ in range(options.repeats):
            order = list(WAYS)
            random.shuffle(order)
            for name in order:
                work = WAYS[name](options.calls)
                started = time.perf_counter()
                work()
                per_call_us[name].append((time.perf_counter() - started) / options.calls * 1e6)
    by_hand = statistics.median(per_call_us["SDK by hand"])
    print(f"{options.calls} LLM calls per way, {options.repeats} interleaved repeats; microseconds per call")
    print(f"{'way':32} {'median':>8} {'min':>8} {'max':>8} {'vs SDK by hand':>15}")
    for name, figures in per_call_us.items():
        median = statistics.median(figures)
        print(f"{name:32} {median:8.2f} {min(figures):8.2f} {max(figures):8.2f} {median - by_hand:+14.2f}")


if __name__ == "__main__":
    main()
