"""Every relative link of the repository's Markdown files (README, docs/, benchmarks/results/,
training/, examples/) points to a file or folder that exists; a renamed or removed file must take
its links along."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MARKDOWN = sorted([ROOT / "README.md"] + [p for d in ("docs", "benchmarks", "training", "examples")
                                          for p in (ROOT / d).rglob("*.md")])
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _relative_links(path: Path) -> list[str]:
    out = []
    for m in LINK.finditer(path.read_text(encoding="utf-8")):
        target = m.group(1).split("#")[0]
        if target and not re.match(r"[a-z]+:", target):   # http:, https:, mailto:
            out.append(target)
    return out


def test_there_are_links_to_check():
    assert len(MARKDOWN) > 10 and sum(len(_relative_links(p)) for p in MARKDOWN) > 50


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    missing = [t for t in _relative_links(path) if not (path.parent / t).exists()]
    assert not missing, f"{path.relative_to(ROOT)}: links to missing files: {missing}"
