"""Users' code that follows the README type-checks under `mypy --strict` (the package ships `py.typed`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TYPED_USAGE = Path(__file__).parent / "typed" / "readme_usage.py"


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
