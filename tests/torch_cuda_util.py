"""Helpers shared by the CUDA tests of samba_ext.torch (no tests here).

Inputs are drawn in float64 from the test's ``rng`` (fresh per test, seeded by the test id),
rounded to the tested dtype by torch and moved to the GPU; the float64 references read the
rounded values back (:func:`f64`), so they see exactly the kernels' inputs and a tolerance
only covers float32 arithmetic and the rounding of the outputs.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pytest
from cuda_util import cuda

torch = pytest.importorskip("torch")

DT = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
      "float64": torch.float64}


def gpu(f):
    """A test that needs the CUDA build, a GPU and torch with CUDA (skipped otherwise)."""
    f = cuda(f)
    return pytest.mark.skipif(not torch.cuda.is_available(), reason="torch without CUDA")(f)


def gpu_tensor(rng: np.random.Generator, shape: tuple, dtype: str = "float32",
               scale: float = 1.0, shift: float = 0.0, positive: bool = False,
               grad: bool = False):
    """N(shift, scale^2) values (|.| when positive) rounded to dtype, on the GPU."""
    a = rng.standard_normal(shape) * scale
    a = (np.abs(a) if positive else a) + shift
    t = torch.tensor(a, dtype=torch.float64).to(DT[dtype]).to("cuda")
    return t.requires_grad_(grad)


def f64(t) -> Optional[np.ndarray]:
    """float64 host copy of a tensor (None stays None)."""
    return None if t is None else t.detach().double().cpu().numpy()


def rel_err(got, ref) -> float:
    """||got - ref|| / ||ref|| (Frobenius), float64; inf when got has NaN/Inf."""
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if not np.all(np.isfinite(got)):
        return float("inf")
    return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))


def on_gpu_as(t, like, dtype=None) -> None:
    """t lives on like's device, in dtype (default like's dtype), with no NaN/Inf."""
    assert t.device == like.device, f"{t.device} != {like.device}"
    want = like.dtype if dtype is None else dtype
    assert t.dtype == want, f"{t.dtype} != {want}"
    assert bool(torch.isfinite(t).all()), "non-finite values"
