"""benchmarks/gpu_backward.py without a GPU: the report's parts that need no device."""
from __future__ import annotations

import os
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import gpu_backward as gb  # noqa: E402


def test_forward_kernel_lines():
    # gpu_backward.py's note of the kernels each forward row ran (rows without them add nothing)
    rows = [{"op": "selective_scan fwd", "shape": "b1 d8", "kernels_us": {"k1": 12.0, "k2": 3.25,
                                                                           "(all kernels)": 15.25}},
            {"op": "selective_scan bwd", "shape": "b1 d8"}]
    lines = gb.kernel_lines(rows)
    assert lines[-1] == "- selective_scan fwd b1 d8: `k1` 12.0, `k2` 3.2 us"
    assert gb.kernel_lines(rows[1:]) == []
