"""The front page and docs/: every relative link resolves, and prose stays in short paragraphs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "benchmarks").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as dashes."""
    heads = re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def prose_paragraphs(text: str) -> list[list[str]]:
    """Paragraphs outside code fences, headings and tables; each list item is a paragraph of its own."""
    out: list[list[str]] = []
    current: list[str] = []
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        breaks = fenced or line.startswith(("```", "#", "|")) or not line.strip()
        if current and (breaks or re.match(r"\s*([-*]|\d+\.) ", line)):
            out.append(current)
            current = []
        if not breaks:
            current.append(line)
    if current:
        out.append(current)
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in anchors(linked)):
            broken.append(target)
    assert broken == []


@pytest.mark.parametrize("page", [p for p in PAGES if p.parent.name != "benchmarks"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_prose_paragraph_of_six_lines_or_more(page):
    long = [p[0][:60] for p in prose_paragraphs(page.read_text(encoding="utf-8")) if len(p) >= 6]
    assert long == []


def test_the_front_page_links_every_guide():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert [p.name for p in sorted((ROOT / "docs").glob("*.md")) if f"docs/{p.name}" not in readme] == []
