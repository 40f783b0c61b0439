"""Renders the hooks of ``callbacks/base.py`` from the event catalogue (``events.toml``).

Run ``python tests/catalogue_codegen.py`` after editing the table; ``tests/test_catalogue.py`` fails until
base.py matches. Imports only ``rlm_toolkit.events``, so it works while base.py is out of date.
"""

from __future__ import annotations

from pathlib import Path

from rlm_toolkit.events import EVENTS

BASE_MODULE = Path(__file__).parent.parent / "python" / "rlm_toolkit" / "callbacks" / "base.py"
GENERATED_START = "# Generated from events.toml by `python tests/catalogue_codegen.py`: edit the table, not these hooks."
GENERATED_END = "# End of generated hooks."


def rendered_hooks(indent: str, returns: str) -> list[str]:
    lines = []
    for spec in EVENTS:
        parameters = "".join(f"{name}: {type_}, " for name, type_ in zip(spec.args, spec.arg_types))
        lines.append(f"{indent}def {spec.hook}(self, {parameters}**kwargs: Any) -> {returns}:")
        lines.append(f'{indent}    """{spec.doc}"""')
        lines.append("")
    return lines[:-1]


def generated_blocks(source: str) -> list[str]:
    """``source`` with its block of hooks rendered from the catalogue (a hook may be a coroutine)."""
    out: list[str] = []
    skipping = False
    for line in source.splitlines():
        if line.strip() == GENERATED_END:
            skipping = False
        elif skipping:
            continue
        out.append(line)
        if line.strip() == GENERATED_START:
            out.extend(rendered_hooks("    ", "Awaitable[None] | None"))
            skipping = True
    return out


if __name__ == "__main__":
    BASE_MODULE.write_text("\n".join(generated_blocks(BASE_MODULE.read_text(encoding="utf-8"))) + "\n", encoding="utf-8")
