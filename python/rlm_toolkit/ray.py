"""Run the prompts of a ``ray.data.Dataset`` through ``RLM`` on Ray workers, with exact metrics.

``run_prompts(dataset, rlm)`` maps the dataset's batches through a pool of actors. Each actor builds its own
``RLM`` once (from the ``RLM`` given, which travels by configuration, or from a zero-argument factory), runs
each batch with ``RLM.batch`` at ``max_concurrency`` concurrent calls, and gives one row per prompt: its input
columns, then those of ``RunResult.as_row()``: ``answer``, ``error`` (None, or the failure as text: a failed
prompt never fails the job), ``run_id``, ``parent_run_id``, ``batch_id`` (the batch run of its data batch),
``model``, the token counts and ``cost_usd``. The metrics of every batch travel back as snapshots and are
merged on the driver, exactly. With ``log_dir``, each actor writes its
own JSONL log there, and every record names its ``worker`` and ``host`` in its metadata. Every log an actor
has open (the RLM's own callbacks' too) is flushed after each batch: Ray ends actors without exit handlers.

Needs Ray: ``pip install 'rlm_toolkit[ray]'``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._backend import BackendName
from .callbacks import FileLogCallback, MetricsCallback, MetricsSnapshot
from .callbacks._lifecycle import flush_every_open_log
from .errors import MissingExtraError, RLMConfigError
from .rlm import RLM, RunRow

if TYPE_CHECKING:
    import ray.data

METRICS_COLUMN = "__rlm_toolkit_metrics"
"""The column each batch's metrics snapshot travels in (in its first row), dropped before the output."""
OUTPUT_COLUMNS = tuple(RunRow.__annotations__)
"""The columns each prompt's row adds to its input columns: those of ``RunResult.as_row()``."""


@dataclass(frozen=True)
class RayRun:
    """What ``run_prompts`` returns: the output rows, already computed, and the merged metrics."""

    dataset: ray.data.Dataset
    """The input columns and ``OUTPUT_COLUMNS``, one row per prompt (Ray Data does not keep the input order
    unless its ``DataContext`` says so: join on an id column of the input)."""
    metrics: MetricsSnapshot
    """The metrics of every call on every worker, merged: the figures one sink that saw them all gives."""


def _require_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        raise MissingExtraError("rlm_toolkit.ray needs Ray: pip install 'rlm_toolkit[ray]'") from None


class _PromptRunner:
    """The callable class of the actor pool: one RLM per actor, one ``RLM.batch`` per data batch."""

    def __init__(self, rlm: RLM | Callable[[], RLM], prompt_column: str, max_concurrency: int,
                 log_dir: str | None, backend: BackendName | None) -> None:
        self._rlm = rlm if isinstance(rlm, RLM) else rlm()
        if not isinstance(self._rlm, RLM):
            raise RLMConfigError(f"the rlm factory must return an RLM, not {type(self._rlm).__name__}")
        self._prompt_column = prompt_column
        self._max_concurrency = max_concurrency
        self._backend = backend
        self._metadata = {"worker": str(os.getpid()), "host": socket.gethostname()}
        self._log = None if log_dir is None else FileLogCallback(
            Path(log_dir) / f"worker-{socket.gethostname()}-{os.getpid()}.jsonl", backend=backend)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        prompts = [str(prompt) for prompt in batch[self._prompt_column]]
        metrics = MetricsCallback(backend=self._backend)
        callbacks: list[Any] = [metrics] if self._log is None else [metrics, self._log]
        results = self._rlm.batch(prompts, max_concurrency=self._max_concurrency, callbacks=callbacks,
                                  metadata=self._metadata)
        # Ray ends its actors without exit handlers: every log of this actor (the RLM's own callbacks'
        # too) is written before the batch is handed back.
        flush_every_open_log()
        rows: list[dict[str, Any]] = [dict(result.as_row()) for result in results]
        output = {name: list(values) for name, values in batch.items()}
        for name in OUTPUT_COLUMNS:
            output[name] = [row[name] for row in rows]
        output[METRICS_COLUMN] = [metrics.snapshot().to_json()] + [None] * (len(rows) - 1)
        return output


def run_prompts(dataset: ray.data.Dataset, rlm: RLM | Callable[[], RLM], *, prompt_column: str = "prompt",
                actors: int = 2, max_concurrency: int = 8, batch_size: int = 64,
                log_dir: str | os.PathLike[str] | None = None, num_cpus_per_actor: float = 0.5,
                backend: BackendName | None = None) -> RayRun:
    """Runs every prompt of ``dataset`` (its ``prompt_column``) on ``actors`` Ray actors, each with at most
    ``max_concurrency`` calls in flight, ``batch_size`` prompts at a time; waits for all and returns the
    output rows and the merged metrics (see the module's doc). ``rlm`` is an ``RLM`` (shipped by its
    configuration) or a zero-argument function that builds one in each actor. Costs, in the rows and the
    metrics, are those of ``rlm_toolkit.pricing.PRICES_PER_MILLION``. ``backend`` is that of the metrics and
    logs each actor keeps (default: ``RLM_TOOLKIT_BACKEND`` in the actor, else Rust).
    """
    _require_ray()
    for name, value, low in (("actors", actors, 1), ("max_concurrency", max_concurrency, 1),
                             ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise RLMConfigError(f"{name} must be an int >= {low}, not {value!r}")
    if prompt_column not in dataset.schema().names:
        raise RLMConfigError(f"the dataset has no column {prompt_column!r} (its columns: {dataset.schema().names}); "
                             f"pass prompt_column=")
    directory = None
    if log_dir is not None:
        directory = os.fspath(log_dir)
        os.makedirs(directory, exist_ok=True)
    mapped = dataset.map_batches(
        _PromptRunner,
        fn_constructor_args=(rlm, prompt_column, max_concurrency, directory, backend),
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=actors,
        num_cpus=num_cpus_per_actor,
    ).materialize()
    snapshots = [MetricsSnapshot.from_json(row[METRICS_COLUMN])
                 for row in mapped.select_columns([METRICS_COLUMN]).iter_rows() if row[METRICS_COLUMN] is not None]
    return RayRun(dataset=mapped.drop_columns([METRICS_COLUMN]).materialize(),
                  metrics=MetricsSnapshot.merge(snapshots))
