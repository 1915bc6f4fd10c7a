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
    # a --prefill-only run (the saved run's prefill rows): the prefill table and the targets,
    # no empty decode table
    d = _saved("gpu_attention_decode.json")
    rows = [r for r in d["rows"] if r["kind"] != "decode"]
    assert rows
    md = ga.render(d["meta"], rows, d["peers"])
    assert not any(ln.startswith("Copy bandwidth") for ln in md)
    assert sum(ln.startswith("| swa L=") for ln in md) == sum(r["kind"] == "swa" for r in rows)
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



class _Selector:
    def __init__(self):
        self.calls = []

    def _attn_variant(self, which, variant):
        self.calls.append((which, variant))


def test_variant_names_set_the_kernel_knobs(monkeypatch):
    # the names of --variants map to the environment knobs the launchers read on every call
    from samba_ext.cuda import runtime

    sel = _Selector()
    monkeypatch.setattr(runtime, "require", lambda: sel)
    # set then delete through monkeypatch, so that whatever set_variant writes is undone
    for var in ("SAMBA_EXT_ATTN_V4_BK", "SAMBA_EXT_ATTN_V4_STAGES", "SAMBA_EXT_ATTN_V4_SKEW",
                "SAMBA_EXT_ATTN_V4_TMA", "SAMBA_EXT_ATTN_DECODE_ALIGN"):
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    cases = [
        ("v4", {}),  # the library's defaults
        ("v4alt", {"SKEW": "2"}),
        ("v4skew", {"SKEW": "1"}),
        ("v4s3", {"STAGES": "3", "SKEW": "0"}),
        ("v4b128s3skew", {"BK": "128", "STAGES": "3", "SKEW": "1"}),
        ("v4tma", {"SKEW": "2", "TMA": "1"}),
        ("v4s3tma", {"STAGES": "3", "SKEW": "2", "TMA": "1"}),
    ]
    for name, want in cases:
        ga.set_variant(0, name)
        got = {k: os.environ[f"SAMBA_EXT_ATTN_V4_{k}"] for k in ("BK", "STAGES", "SKEW", "TMA")
               if f"SAMBA_EXT_ATTN_V4_{k}" in os.environ}
        assert got == want, name
        assert sel.calls[-1] == (0, 4)
    for name, want in (("v2", None), ("v2a", "1"), ("v2e", "0")):
        ga.set_variant(1, name)
        assert os.environ.get("SAMBA_EXT_ATTN_DECODE_ALIGN") == want, name
        assert sel.calls[-1] == (1, 2)
