"""benchmarks/bundled_plots.py's grid(): cells merged from several result files of one model file;
a result measured on other weights (another model hash) is left out."""
from __future__ import annotations

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import bundled_plots as bp  # noqa: E402


def _write(path, h, cells):
    with open(path, "w") as f:
        json.dump({"model": {"hash": h}, "cells": [
            {"length": L, "depth": d, "n": n, "correct": c} for L, d, n, c in cells]}, f)
    return str(path)


def test_cells_merge_only_across_files_of_one_model(tmp_path):
    a = _write(tmp_path / "a.json", "sha256:aa", [(1024, 0.0, 5, 5), (2048, 0.5, 5, 2)])
    b = _write(tmp_path / "b.json", "sha256:aa", [(1024, 0.0, 5, 0), (65536, 1.0, 2, 1)])
    c = _write(tmp_path / "c.json", "sha256:bb", [(131072, 0.1, 5, 5)])
    acc, n = bp.grid([a, str(tmp_path / "missing.json"), b, c])
    assert acc[0, 0] == 100.0 and n[0, 0] == 5           # the first file's cell is kept
    assert acc[5, 1] == 40.0                              # depth 0.5, 2K
    assert acc[10, 6] == 50.0 and n[10, 6] == 2           # 64K from the second file
    assert np.isnan(acc[1, 7]) and n[1, 7] == 0           # 128K only in another model's file
    assert np.isnan(acc).sum() == acc.size - 3
