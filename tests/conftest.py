"""Shared pytest fixtures and the backend parametrisation.

Tests that run on both backends take the ``backend`` fixture ("cpu" or "cuda"); the CUDA
cases skip with a clear reason where no GPU or no CUDA build is present.

NumPy's BLAS runs one thread in the tests and in the processes they start (the variables
below are inherited; the pool of this process is set too, in case NumPy was loaded first):
on some CPUs OpenBLAS rounds a product differently with another thread count, or when two
Python threads call it at once, and several tests compare the CPU model bit for bit across
processes (the lm-eval CLI, ray workers) and threads. The C kernels keep their threads.
"""
from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import samba_ext  # noqa: E402
from samba_ext import threads as _threads  # noqa: E402

if _threads.blas_info()["threads"] is not None:
    _threads.set_blas_threads(1)


def _cuda_skip_reason() -> str | None:
    try:
        from samba_ext import _cuda  # noqa: F401
    except ImportError as e:
        return f"samba_ext built without CUDA ({e})"
    if not samba_ext.cuda_available():
        return "no CUDA device visible"
    return None


CUDA_SKIP = _cuda_skip_reason()


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def backend(request) -> str:
    if request.param == "cuda" and CUDA_SKIP:
        pytest.skip(CUDA_SKIP)
    return request.param


@pytest.fixture
def rng(request) -> np.random.Generator:
    """Fresh random inputs per test (seeded from the test id so failures reproduce)."""
    import zlib

    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def assert_close(got, ref, rtol: float, name: str = "output") -> None:
    """Relative-norm check ||got - ref|| / ||ref|| <= rtol; NaN/Inf never pass."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"{name}: shape {got.shape} != {ref.shape}"
    assert np.all(np.isfinite(got)), f"{name}: non-finite values in the result"
    denom = max(np.linalg.norm(ref), 1e-30)
    err = np.linalg.norm(got - ref) / denom
    assert err <= rtol, f"{name}: relative error {err:.3e} > {rtol:.1e}"


@pytest.fixture()
def poison():
    """Fill new CUDA outputs, and the scratch the CUDA kernels allocate (accumulators,
    partial results), with NaN for the test: an unwritten output element, or scratch read
    before it is written or zeroed, then cannot pass."""
    from samba_ext import cuda as samba_cuda

    samba_cuda.set_poison(True)
    yield
    samba_cuda.set_poison(False)


@pytest.fixture
def cu_modes():
    """The CUDA extension (samba_ext._cuda); the GEMM, GEMV and dependent-launch modes that a
    test switches are put back afterwards. For CUDA tests only (needs_cuda skips before)."""
    from samba_ext.cuda import runtime

    cu = runtime.require()
    old = [(f, f()) for f in (cu.gemm_mode, cu.gemv_mode, cu.pdl_mode)]
    yield cu
    for f, v in old:
        f(v)


@pytest.fixture
def gemv_on(cu_modes):
    """cu_modes with the GEMV on for every product it can take (gemv_mode 1)."""
    assert cu_modes.gemv_mode(1) == 1
    return cu_modes
