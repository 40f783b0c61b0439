"""Users' code that follows the README, and the installed package itself, type-check under `mypy --strict`
(the package ships `py.typed` and the native module's stub `_core.pyi`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import rlm_toolkit

TYPED_USAGE = Path(__file__).parent / "typed" / "readme_usage.py"
PROJECT_CONFIG = Path(__file__).parents[1] / "pyproject.toml"
INSTALLED_PACKAGE = Path(rlm_toolkit.__file__).parent
"""The package as imported (a fresh-clone CI checks what ``pip install .`` installed, not the source tree)."""


def test_readme_usage_passes_mypy_strict(tmp_path: Path) -> None:
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", str(tmp_path), str(TYPED_USAGE)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_mypy_flags_a_misspelt_metrics_key(tmp_path: Path) -> None:
    misspelt = tmp_path / "misspelt.py"
    misspelt.write_text(
        "from rlm_toolkit.callbacks import MetricsCallback\n"
        "print(MetricsCallback().get_metrics()['total_call'])\n"
    )
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(misspelt)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert '"total_call"' in checked.stdout


def test_installed_package_passes_mypy_strict(tmp_path: Path) -> None:
    stub = INSTALLED_PACKAGE / "_core.pyi"
    assert stub.is_file(), f"{stub} is missing: without it mypy cannot check the calls into the native module"
    # Checked as a copy: given a directory inside site-packages, mypy takes site-packages as a source root and
    # reports every top-level module there as shadowing the installed library.
    copy = tmp_path / "src" / "rlm_toolkit"
    shutil.copytree(INSTALLED_PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"),
         "--config-file", str(PROJECT_CONFIG), "--show-absolute-path", str(copy)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    report = (checked.stdout + checked.stderr).replace(str(copy), str(INSTALLED_PACKAGE))
    errors = [line for line in report.splitlines() if ": error: " in line]
    assert checked.returncode == 0, f"mypy --strict: {len(errors)} error(s) in {INSTALLED_PACKAGE}\n{report}"
