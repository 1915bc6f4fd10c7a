"""The source distribution carries every file the README links to.

`setup.py egg_info` writes SOURCES.txt, the file list `sdist` packs (MANIFEST.in applied), in
well under a second and without compiling anything.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_links() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    return sorted({u for u in links if "://" not in u and not u.startswith("mailto:")})


def test_readme_links_exist_in_the_tree():
    links = _readme_links()
    assert len(links) > 10, links  # the README links its docs, results and examples
    missing = [u for u in links if not (ROOT / u).exists()]
    assert not missing, f"README links to missing files: {missing}"


@pytest.mark.skipif(not (ROOT / "setup.py").exists(), reason="needs the source tree")
def test_sdist_file_list_has_every_readme_link(tmp_path):
    env = dict(os.environ, SAMBA_EXT_CUDA="0")
    r = subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    sources = set((tmp_path / "samba_ext.egg-info" / "SOURCES.txt").read_text().split())
    absent = []
    for u in _readme_links():
        u = u.rstrip("/")
        if (ROOT / u).is_dir():
            if not any(s.startswith(u + "/") for s in sources):
                absent.append(u + "/")
        elif u not in sources:
            absent.append(u)
    assert not absent, f"linked from the README but not in the sdist: {absent}"
    for must in ("samba_ext/integrations/samba-ext-lm-eval.pth", "examples/quickstart.ipynb",
                 "csrc/samba.h", "pyproject.toml"):
        assert must in sources, must
