"""Choose the callbacks backend: the Rust core (default) or the pure-Python reference."""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Literal

from .errors import BackendError

BackendName = Literal["rust", "python"]
BACKEND_ENV = "RLM_TOOLKIT_BACKEND"
_MODULES: dict[str, str] = {"rust": "rlm_toolkit._core", "python": "rlm_toolkit._reference"}


def resolve(name: str | None = None) -> BackendName:
    chosen = name or os.environ.get(BACKEND_ENV) or "rust"
    if chosen == "rust":
        return "rust"
    if chosen == "python":
        return "python"
    raise BackendError(f"unknown callbacks backend {chosen!r}; use 'rust' or 'python' (argument or ${BACKEND_ENV})")


def load(name: str | None = None) -> ModuleType:
    """The backend module: it provides ``Dispatcher``, ``MetricsSink``, ``JsonlSink`` and ``now()``."""
    chosen = resolve(name)
    try:
        return importlib.import_module(_MODULES[chosen])
    except ImportError as exc:
        raise BackendError(
            "the native module rlm_toolkit._core is missing or broken "
            f"({exc}); reinstall the package with `pip install .` (it builds with a Rust toolchain), "
            f"or set {BACKEND_ENV}=python to use the pure-Python backend"
        ) from exc
