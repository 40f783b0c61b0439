"""Every Python example in the README runs as written against the local server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rlm_toolkit.server import LocalServer

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_the_readme_has_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int, server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", server.api_key)
    namespace: dict[str, object] = {"__name__": "readme_example"}
    exec(compile(BLOCKS[index], f"README.md example {index + 1}", "exec"), namespace)
    for value in namespace.values():
        close = getattr(value, "close", None)
        if type(value).__name__ == "FileLogCallback" and callable(close):
            close()
    output = capsys.readouterr().out
    assert output.strip(), "every README example prints what it shows"
    assert "Traceback" not in output
