"""The 32-bit / 64-bit switch of the index arithmetic in the CUDA strided copy and swiglu
kernels (csrc/cuda/runtime.cu copy_kernel, csrc/cuda/swiglu.cu): both take the 32-bit path
below 2^31 - 1 elements / items and the 64-bit one above. The cases sit on either side of
the switch: 102261126 x 7 x 3 = 2^31 - 2 elements (the largest 32-bit case) and
102261128 x 7 x 3 = 2^31 + 40 (64-bit).

The inputs are (A, 7, 3) views of one (7, 3) bfloat16 block with a zero stride on the first
axis (every block of 21 elements the same, 42 bytes of input): the op's glue copies them to
C order (the strided copy kernel, the unravelling of every element index over the three
axes) and swiglu runs over the 2^31 +- items of 3 columns (odd width: one element per item).
The output (4.3 GB, poisoned with NaN before the call) is checked block by block where an
index wrap or a wrong unravelling would show: the first blocks, the ones around elements
2^31 - 1 and 2^31, and the last ones, against the float64 reference of the one
block. Needs about 13 GB of device memory.
"""
from __future__ import annotations

import numpy as np
import pytest
from cuda_util import CAIView, dev, host, needs_cuda, round_to
from ref_small import swiglu as swiglu_ref

import samba_ext

pytestmark = needs_cuda

P, C = 7, 3


@pytest.fixture(autouse=True)
def poison():
    from samba_ext import cuda as samba_cuda

    samba_cuda.set_poison(True)
    yield
    samba_cuda.set_poison(False)
    samba_cuda.empty_cache()


@pytest.mark.parametrize("A", [102261126, 102261128])
def test_swiglu_and_copy_across_2_31(rng, A):
    n = A * P * C
    assert (n < 2**31 - 1) == (A == 102261126)
    g = round_to(rng.standard_normal((P, C)) * 3.0, "bfloat16")
    u = round_to(rng.standard_normal((P, C)), "bfloat16")
    dg, du = dev(g, "bfloat16"), dev(u, "bfloat16")
    # (A, P, C) with a zero stride on A: no single row stride -> copied to C order first
    gate = CAIView(dg, (A, P, C), (0, C, 1))
    up = CAIView(du, (A, P, C), (0, C, 1))
    y = samba_ext.swiglu(gate, up)
    assert y.shape == (A, P, C) and y.dtype == "bfloat16"
    ref = swiglu_ref(g, u)
    # bf16 output of float32 math (see test_cuda_elementwise._swiglu_bound)
    bound = (2.0 ** -8 + 1e-6) * np.abs(ref)
    blocks = {0, 1, 2, A - 2, A - 1}
    for e in (2**31 - 1, 2**31, n - 1):
        b = min(e // (P * C), A - 1)
        blocks |= {max(b - 1, 0), b, min(b + 1, A - 1)}
    for b in sorted(blocks):
        got = host(y[b])
        assert np.all(np.isfinite(got)), f"block {b}: unwritten (NaN) elements"
        err = np.abs(got - ref)
        assert np.all(err <= bound), f"block {b}: max error {err.max()!r}"
