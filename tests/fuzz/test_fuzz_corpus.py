"""Replay of the committed fuzz corpus (tests/fuzz/corpus/): every seed, mutant and
regression input must satisfy the oracle of targets.py (a result consistent with the file,
or CheckpointError; no other exception, no hang, no allocation beyond what the file holds).

The mutation run itself is tests/fuzz/run_fuzz.py (a separate CI step, <= 60 s).
"""
from __future__ import annotations

from pathlib import Path

import pytest

import targets as T

HERE = Path(__file__).resolve().parent
TARGETS = T.all_targets()


def _cases():
    for t in TARGETS:
        for d in t.corpus_dirs:
            for p in sorted((HERE / "corpus" / d).rglob("*")):
                if p.is_file():
                    yield pytest.param(t, p, id=f"{t.name}:{p.relative_to(HERE / 'corpus')}")


@pytest.fixture(scope="module")
def runner():
    r = T.Runner()
    yield r
    r.close()


def test_corpus_is_present():
    assert TARGETS, "no fuzz target found: samba_ext.safetensors_io / litgpt missing"
    for t in TARGETS:
        for d in t.corpus_dirs:
            assert len(list((HERE / "corpus" / d).rglob("*"))) >= 10, f"corpus/{d} too small"


@pytest.mark.parametrize("target,path", list(_cases()))
def test_corpus_input(runner, target, path):
    finding = runner.run_one(target, path.read_bytes())
    assert finding is None, f"{path.name}: {finding}"


def test_valid_seeds_load(runner):
    """The unmutated seeds are valid files: the raw parsers must accept them."""
    for t in TARGETS:
        if t.name not in ("safetensors", "pth"):
            continue
        for p in sorted((HERE / "corpus" / t.corpus_dirs[0]).glob("*" + t.suffix)):
            assert runner.run_one(t, p.read_bytes()) is None
            assert runner.last_detail == "ok", f"{t.name}: valid seed {p.name} rejected: " \
                                               f"{runner.last_detail[:300]}"
