"""benchmarks/gpu_backward.py without a GPU: the report's parts that need no device."""
from __future__ import annotations

import os
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import gpu_backward as gb  # noqa: E402


def test_kernel_lines():
    # the kernels of the forward and of the default backward, with the backward's ratio to the
    # forward on device time alone; rows without kernels add nothing
    rows = [{"op": "selective_scan fwd", "shape": "b1 d8", "kernels_us": {"k1": 12.0, "k2": 3.25,
                                                                           "(all kernels)": 15.25}},
            {"op": "selective_scan bwd", "shape": "b1 d8", "kernels_us": {"b": 45.75,
                                                                           "(all kernels)": 45.75}},
            {"op": "selective_scan bwd", "shape": "b1 d8", "kernels_us": None}]
    lines = gb.kernel_lines(rows)
    assert lines[-2] == "- selective_scan fwd b1 d8: `k1` 12.0, `k2` 3.2 us; sum 15.2 us"
    assert lines[-1] == "- selective_scan bwd b1 d8: `b` 45.8 us; sum 45.8 us, 3.00x the forward's"
    assert gb.kernel_lines(rows[2:]) == []
