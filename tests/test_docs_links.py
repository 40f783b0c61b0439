"""Every relative link of README.md and docs/*.md points to a file of the repository, and to a heading of it
when the link has an anchor (GitHub's heading ids), so a renamed page or heading cannot leave a dead link."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"`+[^`]*`+")
_INLINE_TARGET = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_REFERENCE_TARGET = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?")
_HTML_TARGET = re.compile(r"""\b(?:href|src)\s*=\s*["']([^"']+)["']""")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_MARKDOWN_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")


def prose_lines(markdown: str) -> list[str]:
    """The lines of ``markdown`` outside fenced code blocks."""
    lines: list[str] = []
    fence: str | None = None
    for line in markdown.splitlines():
        opening = _FENCE.match(line)
        if fence is not None:
            if opening and opening.group(1) == fence:
                fence = None
        elif opening:
            fence = opening.group(1)
        else:
            lines.append(line)
    return lines


def github_slug(heading: str) -> str:
    """The id GitHub gives a heading: its rendered text in lower case, without punctuation other than hyphens
    and underscores, spaces turned into hyphens."""
    text = _MARKDOWN_LINK.sub(r"\1", heading).replace("`", "")
    text = re.sub(r"<[^>]+>", "", text).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def heading_anchors(markdown: str) -> set[str]:
    """The anchors of ``markdown``'s headings; a repeated heading gets ``-1``, ``-2``... as on GitHub."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose_lines(markdown):
        heading = _HEADING.match(line)
        if heading is None:
            continue
        slug = github_slug(heading.group(2))
        repeats = seen.get(slug, 0)
        seen[slug] = repeats + 1
        anchors.add(slug if repeats == 0 else f"{slug}-{repeats}")
    return anchors


def relative_targets(markdown: str) -> list[str]:
    """The targets of the links and images of ``markdown`` that are not URLs, in page order."""
    targets: list[str] = []
    for line in prose_lines(markdown):
        line = _INLINE_CODE.sub("", line)
        for pattern in (_INLINE_TARGET, _REFERENCE_TARGET, _HTML_TARGET):
            targets.extend(target for target in pattern.findall(line) if not _SCHEME.match(target))
    return targets


def dead_links(page: Path) -> list[str]:
    """``page``'s relative links whose file or heading does not exist, each with the reason."""
    problems: list[str] = []
    for target in relative_targets(page.read_text(encoding="utf-8")):
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        if not linked.exists():
            problems.append(f"{target}: no file {linked}")
        elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked.read_text(encoding="utf-8")):
            problems.append(f"{target}: no heading with the anchor #{anchor} in {linked.name}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(REPO)) for page in PAGES])
def test_relative_links_point_to_existing_files_and_headings(page: Path) -> None:
    assert dead_links(page) == []


def test_the_design_page_links_to_pages_of_this_repository() -> None:
    targets = relative_targets((REPO / "docs" / "callbacks.md").read_text(encoding="utf-8"))
    assert targets == ["../README.md#events", "../README.md#guarantees", "metrics.md", "../README.md#command-line"]


def test_dead_files_and_anchors_are_found_and_code_is_not_a_link(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## Coming from rlm-toolkit's `callbacks`\n\n## Usage\n\n"
                                       "## Usage\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n"
        "[ok](other.md) [ok](other.md#coming-from-rlm-toolkits-callbacks) [ok](#title) [ok](other.md#usage-1)\n"
        "[gone](missing.md) [no heading](other.md#nothing) [no heading here](#other-page)\n"
        '![image](pic.png "A title") [web](https://example.com/x.md) `[code](not-a-link.md)`\n'
        "[ref]: missing-ref.md\n"
        "```\n[in a fence](fenced.md)\n```\n",
        encoding="utf-8",
    )

    assert dead_links(page) == [
        f"missing.md: no file {(tmp_path / 'missing.md').resolve()}",
        "other.md#nothing: no heading with the anchor #nothing in other.md",
        "#other-page: no heading with the anchor #other-page in page.md",
        f"pic.png: no file {(tmp_path / 'pic.png').resolve()}",
        f"missing-ref.md: no file {(tmp_path / 'missing-ref.md').resolve()}",
    ]


@pytest.mark.parametrize("heading, anchor", [
    ("Coming from rlm-toolkit's callbacks", "coming-from-rlm-toolkits-callbacks"),
    ("Hand-listed mutants (`python mutation/run.py`, 2026-12-01)", "hand-listed-mutants-python-mutationrunpy-2026-12-01"),
    ("Benchmarks: one run of `rlm-toolkit bench`", "benchmarks-one-run-of-rlm-toolkit-bench"),
    ("[Linked](x.md) heading", "linked-heading"),
    ("rlm_toolkit", "rlm_toolkit"),
])
def test_anchors_are_githubs_heading_ids(heading: str, anchor: str) -> None:
    assert github_slug(heading) == anchor
