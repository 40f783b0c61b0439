"""What importing the package costs, and what it exposes."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import rlm_toolkit


def test_the_callbacks_import_loads_no_client_server_or_telemetry_library() -> None:
    child = subprocess.run([sys.executable, "-X", "importtime", "-c", "import rlm_toolkit.callbacks"],
                           capture_output=True, text=True, timeout=60, check=True)
    imported = {line.split("|")[-1].strip().split(".")[0] for line in child.stderr.splitlines() if "|" in line}
    assert "rlm_toolkit" in imported
    assert {"openai", "aiohttp", "httpx", "httpx2", "opentelemetry"} & imported == set()


def test_rlm_is_still_importable_from_the_package() -> None:
    from rlm_toolkit import RLM, RunResult
    from rlm_toolkit.rlm import RLM as DefinedRLM

    assert RLM is DefinedRLM and RunResult.__name__ == "RunResult"


def test_the_version_is_the_distribution_version() -> None:
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text(encoding="utf-8"))
    assert rlm_toolkit.__version__ == pyproject["project"]["version"]


def test_every_exception_type_is_exported_from_the_package() -> None:
    import inspect

    from rlm_toolkit import errors

    defined = {name for name, value in vars(errors).items()
               if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == errors.__name__}
    assert defined <= set(rlm_toolkit.__all__)
    assert all(getattr(rlm_toolkit, name) is getattr(errors, name) for name in defined)
