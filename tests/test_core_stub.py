"""`_core.pyi` describes the binary: the same names, parameters and properties."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any

import rlm_toolkit
import rlm_toolkit._core as core

STUB = Path(rlm_toolkit.__file__).with_name("_core.pyi")


def _decorators(function: ast.FunctionDef) -> list[str]:
    return [decorator.id for decorator in function.decorator_list if isinstance(decorator, ast.Name)]


def stub_definitions() -> dict[str, Any]:
    tree = ast.parse(STUB.read_text())
    definitions: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            definitions[node.name] = [arg.arg for arg in node.args.args]
        elif isinstance(node, ast.ClassDef):
            definitions[node.name] = {
                item.name: ("property" if _decorators(item) == ["property"] else [arg.arg for arg in item.args.args])
                for item in node.body
                if isinstance(item, ast.FunctionDef)
            }
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            definitions[node.target.id] = "constant"
    return definitions


def binary_definitions() -> dict[str, Any]:
    definitions: dict[str, Any] = {}
    for name, value in vars(core).items():
        if name.startswith("__"):
            continue
        if isinstance(value, type):
            members: dict[str, Any] = {"__new__": ["cls", *inspect.signature(value).parameters]}
            for member, attribute in vars(value).items():
                if member.startswith("__"):
                    continue
                if inspect.isgetsetdescriptor(attribute):
                    members[member] = "property"
                else:
                    members[member] = list(inspect.signature(attribute).parameters)
            definitions[name] = members
        elif callable(value):
            definitions[name] = list(inspect.signature(value).parameters)
        else:
            definitions[name] = "constant"
    return definitions


def test_stub_matches_the_binary() -> None:
    assert stub_definitions() == binary_definitions()


def test_package_is_marked_typed() -> None:
    assert Path(rlm_toolkit.__file__).with_name("py.typed").exists()
