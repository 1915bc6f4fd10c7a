"""benchmarks/gpu_gemv.py without a GPU: the report table and the argument check."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import gpu_gemm as gg  # noqa: E402
import gpu_gemv as gv  # noqa: E402


def _rows(ms):
    rows = []
    for M in ms:
        for name, K, N in gg.SHAPES:
            r = {"name": name, "M": M, "N": N, "K": K, "weight_copies": 2,
                 "gemv_ms": 1.0, "cublas_ms": 2.0, "torch_ms": 4.0,
                 "gemv_tbs": 3.0, "cublas_tbs": 1.5, "torch_tbs": 0.75,
                 "gemv_ran_gemv": M <= gv.GEMV_MAX_M, "cublas_ran_gemv": False,
                 "gemv_err_vs_torch": 1e-3, "cublas_err_vs_torch": 2e-3}
            rows.append(r)
    return rows


def test_render_table():
    meta = {"date": "d", "commit": "c", "device": "H200", "torch": "t", "command": "x",
            "copy_tbs": 4.0}
    md = gv.render(meta, _rows([1, 16]))
    rows = [ln for ln in md if ln.startswith("| ")]
    # per M: a header, one row per shape and the sum
    assert len(rows) == 2 * (len(gg.SHAPES) + 2)
    assert all(ln.count("|") == rows[0].count("|") for ln in rows)
    lm = [ln for ln in md if ln.startswith("| lm head")]
    assert lm[0] == ("| lm head | 2048 | 50304 | 1.0000 | 3.00 | 75% | 2.0000 | 1.50 | 4.0000 | "
                     "0.75 | 0.50 | yes | 2.0e-03 |")
    assert lm[1].endswith("| 0.50 | no | 2.0e-03 |")
    total = next(ln for ln in md if ln.startswith("| sum"))
    n = len(gg.SHAPES)
    assert total.startswith(f"| sum | | | {n:.4f} | | | {2 * n:.4f} | | {4 * n:.4f} | | 0.50 |")


def test_bad_m_exits_2(monkeypatch, capsys):
    for bad in ("0", "x", "", "1,65"):
        monkeypatch.setattr(sys, "argv", ["gpu_gemv.py", "--m", bad])
        assert gv.main() == 2
        assert "--m" in capsys.readouterr().err
