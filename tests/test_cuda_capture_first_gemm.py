"""A process's first cuBLAS product made inside a CUDA graph capture: the cuBLAS (or cuBLASLt)
handle is created then, which allocates, so gemm.cu makes it with the thread's capture mode
relaxed (gemm_internal.cuh, RelaxedCapture). Each case runs in a fresh process, because a
handle, once made, lasts for the process. The case that needs this in a model: a decode that
ran only the GEMV (one row) and then steps at a batch that cuBLAS serves, captured at once.

The product is compared with a float64 one at the bf16 tolerance of tests/test_cuda_gemv.py
(inputs exact in bf16, float32 accumulation, one bf16 rounding of the output)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cuda_util import needs_cuda

pytestmark = needs_cuda

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import numpy as np
from samba_ext.cuda import runtime, to_device
from samba_ext.cuda.blas import linear
from cuda_util import host, round_to

cu = runtime.require()
cu.gemv_mode(0)
rng = np.random.default_rng(0)
M, N, K = 16, 96, 264
x = round_to(rng.standard_normal((M, K)), "bfloat16")
w = round_to(rng.standard_normal((N, K)), "bfloat16")
s = int(cu.stream_create())
xd = to_device(x.astype(np.float32), "bfloat16", stream=s)
wd = to_device(w.astype(np.float32), "bfloat16", stream=s)
yd = to_device(np.zeros((M, N), np.float32), "bfloat16", stream=s)
cu.stream_sync(s)
cu.graph_begin(s)
try:
    linear(xd, wd, out=yd, stream=s)
finally:
    g = cu.graph_end(s)
cu.memset(yd.ptr, 0xFF, yd.nbytes, s)  # NaN: the replay must write every output
cu.graph_launch(g, s)
cu.stream_sync(s)
cu.graph_free(g)
got = host(yd)
ref = x @ w.T
den = max(np.linalg.norm(ref), np.linalg.norm(np.abs(x) @ np.abs(w).T) / np.sqrt(K))
assert np.isfinite(got).all(), "NaN left in the output"
print(float(np.linalg.norm(got - ref) / den))
"""


@pytest.mark.parametrize("gemm", ["gemmex", "lt"])
def test_first_cublas_product_inside_a_capture(gemm):
    env = dict(os.environ, SAMBA_EXT_GEMM=gemm,
               PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests"),
                                           os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert float(r.stdout.strip().splitlines()[-1]) <= 1e-2 + 3e-5
