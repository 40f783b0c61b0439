"""The Rust crate's rooms: modules import one another in one direction, and `unsafe` stays in the three files
that hold FFI and SIMD, each use with its SAFETY comment."""

from __future__ import annotations

import re
from pathlib import Path

RUST = Path(__file__).resolve().parent.parent / "rust"
UNSAFE_FILES = {"fastcall.rs", "pyfields.rs", "simd.rs"}


def _source(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _imports() -> dict[str, set[str]]:
    modules = {path.stem for path in RUST.glob("*.rs")}
    return {
        path.stem: set(re.findall(r"crate::(\w+)", _source(path))) & modules - {path.stem}
        for path in RUST.glob("*.rs")
    }


def test_rust_modules_import_each_other_without_cycles() -> None:
    imports = _imports()
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        for imported in sorted(imports[module]):
            if imported in path:
                cycles.append(path[path.index(imported):] + [imported])
            else:
                visit(imported, path + [imported])

    for module in sorted(imports):
        visit(module, [module])
    assert cycles == []


def test_unsafe_is_confined_to_the_ffi_and_simd_files_each_with_a_safety_comment() -> None:
    unsafe_use = re.compile(r"\bunsafe\s*(\{|fn\b|impl\b|extern\b)")
    holders = {path.name for path in RUST.glob("*.rs") if unsafe_use.search(_source(path))}
    assert holders == UNSAFE_FILES
    for name in sorted(UNSAFE_FILES):
        lines = _source(RUST / name).splitlines()
        for number, line in enumerate(lines):
            if re.search(r"\bunsafe\s*(\{|impl\b)", line) and "SAFETY" not in line:
                context = "\n".join(lines[max(0, number - 4) : number])
                assert "SAFETY" in context, f"{name}:{number + 1}: unsafe without a SAFETY comment"
            if re.search(r"\bunsafe fn\b", line) and "extern" not in line:
                context = "\n".join(lines[max(0, number - 4) : number])
                assert "# Safety" in context, f"{name}:{number + 1}: unsafe fn without a `# Safety` section"
