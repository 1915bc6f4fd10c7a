"""benchmarks/gpu_gemm.py without a GPU: the shape list and the report table."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import gpu_gemm as gg  # noqa: E402


def _rows(modes):
    rows = []
    for i, m in enumerate(modes):
        for M in (gg.PREFILL_M,) + gg.DECODE_M:
            for name, K, N in gg.SHAPES:
                r = {"name": name, "M": M, "N": N, "K": K, "mode": m, "samba_ext_ms": 1.0 + i,
                     "err_vs_torch": 1e-3 * (i + 1)}
                r["samba_ext_tflops" if M == gg.PREFILL_M else "samba_ext_tbs"] = 2.0
                if i == 0:
                    r["torch_ms"], r["torch_tflops" if M == gg.PREFILL_M else "torch_tbs"] = 1.5, 1.0
                rows.append(r)
    return rows


def test_shapes_include_the_padded_mlp():
    names = {n: (k, n_) for n, k, n_ in gg.SHAPES}
    assert names["mlp down"] == (8196, 2048) and names["mlp down (padded)"] == (8256, 2048)
    assert gg.FP % 64 == 0 and gg.FP - 64 < gg.F <= gg.FP


def test_render_table():
    meta = {"date": "d", "commit": "c", "device": "H200", "torch": "t", "command": "x"}
    md = gg.render(meta, _rows(list(gg.MODES)), list(gg.MODES))
    rows = [ln for ln in md if ln.startswith("| ")]
    # a header and one row per shape, for prefill and the two decode sizes
    assert len(rows) == 3 * (len(gg.SHAPES) + 1)
    assert all(ln.count("|") == rows[0].count("|") for ln in rows)
    lm = next(ln for ln in md if ln.startswith("| lm head"))
    assert lm.endswith("| gemmex | 3.0e-03 |")   # fastest mode (1.0 ms < torch 1.5 ms), max err


def test_bad_modes_exit_2(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["gpu_gemm.py", "--modes", "fast"])
    assert gg.main() == 2
    assert "--modes" in capsys.readouterr().err
