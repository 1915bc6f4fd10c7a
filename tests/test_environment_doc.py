"""docs/environment.md lists every SAMBA_EXT_* environment variable that the package's sources
(csrc/, samba_ext/) or setup.py read, and names no variable that nothing reads."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAME = re.compile(r"\bSAMBA_EXT_[A-Z0-9_]*[A-Z0-9]\b")
SOURCES = ("*.py", "*.c", "*.h", "*.cu", "*.cuh", "*.cpp")


def _read_by_code() -> set[str]:
    files = [ROOT / "setup.py"] + [p for d in ("csrc", "samba_ext") for pat in SOURCES
                                   for p in (ROOT / d).rglob(pat)]
    return {n for f in files for n in NAME.findall(f.read_text(encoding="utf-8",
                                                                   errors="replace"))}


def _documented() -> set[str]:
    return set(NAME.findall((ROOT / "docs" / "environment.md").read_text(encoding="utf-8")))


def test_every_variable_the_code_reads_is_documented():
    code = _read_by_code()
    assert len(code) > 20    # the scan found the sources
    missing = sorted(code - _documented())
    assert not missing, f"docs/environment.md does not list {missing}"


def test_no_documented_variable_is_unknown_to_the_code():
    extra = sorted(_documented() - _read_by_code())
    assert not extra, f"docs/environment.md lists {extra}, which no source reads"
