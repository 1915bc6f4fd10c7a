"""benchmarks/gpu_decode_prefetch.py without a GPU: its settings grammar and the report of the
saved run (every row of the JSON in the table; where the run has `0` rows, their ratio to the
baseline is 1 on average)."""
from __future__ import annotations

import json
import os
import statistics
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import gpu_decode_prefetch as gdp  # noqa: E402


@pytest.mark.parametrize("text,want", [
    ("0", ("0", "", set())), ("0+pdl", ("0", "", {"pdl"})),
    ("0+gemv+pdl", ("0", "", {"gemv", "pdl"})), ("0+pdl+gemv", ("0", "", {"gemv", "pdl"})),
    ("0+gemv+pdl+splitk", ("0", "", {"gemv", "pdl", "splitk"})),
    ("0+gemv+pdl+norotkv", ("0", "", {"gemv", "pdl", "norotkv"})),
    ("bulk:24+gemv", ("bulk", "24", {"gemv"})), ("touch:8", ("touch", "8", set()))])
def test_settings_parse(text, want):
    assert gdp.parse_setting(text) == (want[0], want[1], frozenset(want[2]))


@pytest.mark.parametrize("text", ["1", "bulk", "bulk:x", "0+fast", "0+pdl+pdl", "copy:8+pdl", "0+split"])
def test_bad_settings_exit_with_the_grammar(text):
    with pytest.raises(SystemExit, match="--settings"):
        gdp.parse_setting(text)


def test_saved_run_renders_every_row():
    with open(os.path.join(ROOT, "benchmarks", "results", "gpu_decode_prefetch.json")) as f:
        d = json.load(f)
    table = gdp.render(d["meta"], d["rows"])
    lines = [ln for ln in table.splitlines() if ln.startswith("| ") and "setting" not in ln]
    assert len(lines) == len(d["rows"]) > 0
    for ln, r in zip(lines, d["rows"]):
        cells = [c.strip() for c in ln.strip("|").split("|")]
        assert cells[0] == r["setting"] and int(cells[1]) == r["batch"]
        assert float(cells[2]) == pytest.approx(r["ms_per_step"], abs=5e-4)
    # the `0` rows (everything off) are the "vs off" baseline where a run has them
    for b in {r["batch"] for r in d["rows"] if r["setting"] == "0"}:
        base = [r["ms_per_step"] for r in d["rows"] if r["setting"] == "0" and r["batch"] == b]
        vs = [float(c.strip().rstrip("x")) for ln, r in zip(lines, d["rows"])
              if r["setting"] == "0" and r["batch"] == b
              for c in [ln.strip("|").split("|")[4]]]
        assert statistics.mean(vs) == pytest.approx(1.0, abs=0.01 * len(base))
