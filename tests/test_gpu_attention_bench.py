"""benchmarks/gpu_attention.py without a GPU: the report of a saved run."""
from __future__ import annotations

import json
import os
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import gpu_attention as ga  # noqa: E402


def _saved(name: str) -> dict:
    with open(os.path.join(ROOT, "benchmarks", "results", name)) as f:
        return json.load(f)


def test_render_prefill_only_run_has_no_decode_section():
    # a --prefill-only run: the prefill table and the targets, no empty decode table
    d = _saved("gpu_attention.json")
    assert not any(r["kind"] == "decode" for r in d["rows"])
    md = ga.render(d["meta"], d["rows"], d["peers"])
    assert not any(ln.startswith("Copy bandwidth") for ln in md)
    assert sum(ln.startswith("| swa L=") for ln in md) == sum(r["kind"] == "swa" for r in d["rows"])
    assert "## Targets (issue #17)" in md


def test_render_run_with_decode_cases():
    d = _saved("gpu_attention_decode.json")
    n_dec = sum(r["kind"] == "decode" for r in d["rows"])
    assert n_dec > 0
    md = ga.render(d["meta"], d["rows"], d["peers"])
    assert sum(ln.startswith("Copy bandwidth") for ln in md) == 1
    assert sum(ln.startswith("| decode B=") for ln in md) == n_dec
    targets = md[md.index("## Targets (issue #17)"):]
    assert sum("decode >= 70%" in ln for ln in targets) == n_dec

