"""Hand-listed mutants of the promises: each is applied alone to a scratch copy of the tree and the default
test run must fail on it.

    python mutation/run.py              # every mutant, a markdown table of the outcome on stdout
    python mutation/run.py P1 R1        # only these
    python mutation/run.py --list

The working tree is never touched: the tracked files are copied to a scratch folder, the mutant is applied
there, Python mutants reuse the built extension module, Rust mutants rebuild it in the scratch copy (with
its own cargo target folder), and pytest runs with the scratch copy first on the import path. A mutant is
*caught* when the test run fails. ``cargo mutants`` covers the pure Rust core (see docs/testing.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXTENSION_GLOB = "_core.*.so"


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    original: str
    mutated: str
    breaks: str
    """The promise the mutant breaks, in a few words."""
    focus: tuple[str, ...] = ()
    """Test files run first (a quick verdict); the whole default run follows if they pass."""


def load_mutants() -> list[Mutant]:
    listed = json.loads((Path(__file__).with_name("mutants.json")).read_text(encoding="utf-8"))
    return [Mutant(**{**entry, "focus": tuple(entry.get("focus", ()))}) for entry in listed]


def copy_tree(scratch: Path) -> None:
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
    for relative in filter(None, tracked):
        source = ROOT / relative
        if source.is_file():
            target = scratch / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    for built in (ROOT / "python" / "rlm_toolkit").glob(EXTENSION_GLOB):
        shutil.copy2(built, scratch / "python" / "rlm_toolkit" / built.name)


def apply(mutant: Mutant, scratch: Path) -> None:
    path = scratch / mutant.path
    text = path.read_text(encoding="utf-8")
    found = text.count(mutant.original)
    if found != 1:
        raise SystemExit(f"mutant {mutant.name}: the original text occurs {found} times in {mutant.path}, not once")
    path.write_text(text.replace(mutant.original, mutant.mutated), encoding="utf-8")


def build_extension(scratch: Path, target_dir: Path) -> None:
    """Rebuilds the extension module of the scratch copy (thin LTO: the mutant only needs to behave)."""
    subprocess.run(["cargo", "build", "--release", "--features", "python", "--lib", "--quiet",
                    "--config", "profile.release.lto='thin'"],
                   cwd=scratch, check=True, env={**os.environ, "CARGO_TARGET_DIR": str(target_dir)})
    built = target_dir / "release" / "lib_core.so"
    for old in (scratch / "python" / "rlm_toolkit").glob(EXTENSION_GLOB):
        shutil.copy2(built, old)


def run_tests(scratch: Path, files: tuple[str, ...]) -> bool:
    """Whether the tests pass (so the mutant survived them)."""
    environment = {**os.environ, "PYTHONPATH": str(scratch / "python")}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *files]
    return subprocess.run(command, cwd=scratch, env=environment, capture_output=True).returncode == 0


def try_mutant(mutant: Mutant, target_dir: Path) -> tuple[bool, float]:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant.name}-") as folder:
        scratch = Path(folder)
        copy_tree(scratch)
        apply(mutant, scratch)
        if mutant.path.endswith(".rs"):
            build_extension(scratch, target_dir)
        survived = run_tests(scratch, mutant.focus) if mutant.focus else True
        if survived:
            survived = run_tests(scratch, ())
    return not survived, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutants to try (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    options = parser.parse_args()
    mutants = load_mutants()
    if options.names:
        unknown = set(options.names) - {mutant.name for mutant in mutants}
        if unknown:
            raise SystemExit(f"unknown mutants: {sorted(unknown)}; see --list")
        mutants = [mutant for mutant in mutants if mutant.name in options.names]
    if options.list:
        for mutant in mutants:
            print(f"{mutant.name:6} {mutant.path:48} {mutant.breaks}")
        return
    target_dir = Path(tempfile.gettempdir()) / "rlm_toolkit-mutants-target"
    print("| mutant | file | breaks | outcome | seconds |\n|---|---|---|---|---:|", flush=True)
    caught = 0
    for mutant in mutants:
        was_caught, seconds = try_mutant(mutant, target_dir)
        caught += was_caught
        outcome = "caught" if was_caught else "**survived**"
        print(f"| {mutant.name} | `{mutant.path}` | {mutant.breaks} | {outcome} | {seconds:.0f} |", flush=True)
    print(f"\n{caught} of {len(mutants)} mutants caught")
    sys.exit(0 if caught == len(mutants) else 1)


if __name__ == "__main__":
    main()
