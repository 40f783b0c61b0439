"""The README's Layout section names every source file, and every file it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = (ROOT / "README.md").read_text(encoding="utf-8").split("## Layout", 1)[1].split("\n## ", 1)[0]
NAMED = set(re.findall(r"`([\w./<>-]+)`", LAYOUT))


def _source_names() -> set[str]:
    rust = {path.name for path in (ROOT / "rust").glob("*.rs") if path.name != "lib.rs"}
    package = ROOT / "python" / "rlm_toolkit"
    python = {path.name for path in package.glob("*.py") if path.name not in {"__init__.py", "__main__.py"}}
    packages = {path.name + "/" for path in package.iterdir() if (path / "__init__.py").exists()}
    return rust | python | packages


def test_every_source_file_has_a_place_in_the_layout() -> None:
    unnamed = {name for name in _source_names() if not any(mentioned.endswith(name) for mentioned in NAMED)}
    assert unnamed == set(), f"add these to the README's Layout section: {sorted(unnamed)}"


def test_every_file_the_layout_names_exists() -> None:
    package = ROOT / "python" / "rlm_toolkit"
    subpackages = [path for path in package.iterdir() if (path / "__init__.py").exists()]
    roots = [ROOT, ROOT / "rust", ROOT / "benches", package, *subpackages]
    file_like = {name for name in NAMED if re.search(r"\.(rs|py|pyi|toml|md)$|/$", name) and "<" not in name}
    missing = {name for name in file_like if not any((root / name).exists() for root in roots)}
    assert missing == set(), f"the README's Layout section names files that do not exist: {sorted(missing)}"
