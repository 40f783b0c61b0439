"""The public API used as the README uses it, fully typed: `mypy --strict` must accept it as users write it
(tests/test_typing.py runs it). Never executed; only type-checked."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import rlm_toolkit
from rlm_toolkit import RLM, LLMResponse, RunResult, Usage
from rlm_toolkit.callbacks import (
    AsyncBaseCallback,
    BaseCallback,
    CallbackManager,
    ConsoleCallback,
    FileLogCallback,
    MetricsCallback,
    MetricsReport,
)
from rlm_toolkit.memory import BufferMemory


class LoggingCallback(BaseCallback):
    def on_llm_start(self, prompt: str, **kwargs: Any) -> None:
        print(f"-> {prompt[:50]}  (run {kwargs['run_id'][:8]}, model {kwargs['model']})")

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        print(f"<- {response.content[:50]}  ({response.usage.total_tokens} tokens)")


class Alerts(AsyncBaseCallback):
    async def on_error(self, error: BaseException, **kwargs: Any) -> None:
        await asyncio.sleep(0)

    def on_retry(self, attempt: int, max_attempts: int, error: BaseException, **kwargs: Any) -> None:
        print(attempt, max_attempts, error)


def get_weather(city: str, unit: Literal["C", "F"] = "C") -> str:
    """Current weather in a city."""
    return f"Sunny, 21 {unit}"


def version() -> str:
    return rlm_toolkit.__version__


def quick_start() -> None:
    metrics = MetricsCallback()
    rlm = RLM.from_openai("gpt-4o", callbacks=[LoggingCallback(), metrics, FileLogCallback("./logs/rlm.jsonl")])
    result: RunResult = rlm.run("Hello!")
    print(result.answer, result.usage.total_tokens if result.usage is not None else "unreported")
    snapshot: MetricsReport = metrics.get_metrics()
    total_calls: int = snapshot["total_calls"]
    p95: float | None = snapshot["p95_latency_ms"]
    cost: float = snapshot["total_cost_usd"]
    print(total_calls, p95, cost, snapshot["by_model"]["gpt-4o"]["calls"])


def manager_without_rlm() -> None:
    metrics = MetricsCallback()
    with FileLogCallback("batch.jsonl") as log:
        manager = CallbackManager([metrics, log, Alerts()])
        manager.on_llm_start("Summarise ...", run_id="job-1", model="gpt-4o-mini")
        manager.on_llm_end(LLMResponse("A summary.", "gpt-4o-mini", Usage.of(812, 64)), run_id="job-1")
    print(metrics.get_metrics()["total_cost_usd"])


def tools_memory_and_batches() -> None:
    rlm = RLM.from_openai("gpt-4o", tools=[get_weather], memory=BufferMemory(max_messages=20), callbacks=[ConsoleCallback()])
    print(rlm.run("What's the weather in Paris? Use get_weather.").answer)
    results = rlm.batch([f"Summarise document {i}" for i in range(10)], max_concurrency=4, progress=False)
    failed = [result for result in results if result.error is not None]
    print(len(failed))


async def async_runs() -> None:
    rlm = RLM.from_openai("gpt-4o-mini", callbacks=[Alerts()])
    result = await rlm.arun("Hello")
    async for token in rlm.astream("Tell me a story"):
        print(token, end="")
    print(result.answer)
    await rlm.aclose()


def export_to_opentelemetry() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    from rlm_toolkit.callbacks import OpenTelemetryCallback

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    meter_provider = MeterProvider(metric_readers=[PeriodicExportingMetricReader(ConsoleMetricExporter())])
    rlm = RLM.from_openai("gpt-4o", callbacks=[OpenTelemetryCallback(tracer_provider, meter_provider)])
    print(rlm.run("Hello!").answer)
    print(OpenTelemetryCallback(capture_content=True, max_open_spans=1_000).capture_content)
    tracer_provider.shutdown()
    meter_provider.shutdown()


def langchain_app() -> None:
    from langchain_core.callbacks import StdOutCallbackHandler
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate

    from rlm_toolkit.integrations.langchain import LangChainCallback, LangChainHandler

    model = GenericFakeChatModel(messages=iter([AIMessage("Paris.")]))
    chain = ChatPromptTemplate.from_messages([("human", "Capital of {country}?")]) | model | StrOutputParser()
    metrics = MetricsCallback()
    handler = LangChainHandler([metrics, FileLogCallback("langchain.jsonl")])
    answer: str = chain.invoke({"country": "France"}, config={"callbacks": [handler], "tags": ["geo"]})
    print(answer, metrics.get_metrics()["p50_latency_ms"], handler.manager.handler_errors)
    rlm = RLM.from_openai("gpt-4o-mini", callbacks=[LangChainCallback(StdOutCallbackHandler())])
    print(rlm.run("Hello").answer)
