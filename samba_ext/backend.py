"""CPU implementation of the model backend, and :func:`get_backend`.

The interface the model is written against is :class:`samba_ext.backend_api.Backend`
(re-exported here); :class:`CPUBackend` implements it with NumPy (``np.matmul`` for every
GEMM, i.e. the BLAS NumPy links) and the C kernels (``samba_ext._core``). The CUDA
implementation is :class:`samba_ext.backend_cuda.CUDABackend`; :func:`get_backend` picks one
by device name.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from . import _core
from .backend_api import Array, Backend
from .threads import blas_controls

__all__ = ["Backend", "Array", "CPUBackend", "get_backend"]


def _tune_glibc_malloc() -> bool:
    """Keep freed activation buffers in the process instead of returning them to the OS.

    Each prefill chunk allocates and frees tens of MB of activations (GEMM and kernel
    outputs). With glibc's defaults much of it is trimmed / unmapped on free and page-faulted
    back on the next chunk: ~16K minor faults per 4096-token chunk of samba-10m, ~18% of the
    prefill time on the 2-core machine. Setting M_MMAP_THRESHOLD = 32 MB and
    M_TRIM_THRESHOLD = 256 MB removed every fault. Process-wide effect: up to 256 MB of freed
    heap stays mapped. Linux/glibc only; opt out with SAMBA_EXT_MALLOC_TUNING=0 (or by setting
    MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ yourself, which is respected)."""
    import ctypes
    import os
    import sys

    if not sys.platform.startswith("linux") or os.environ.get("SAMBA_EXT_MALLOC_TUNING") == "0":
        return False
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (glibc only: the attribute lookup raises elsewhere)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    ok = mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1
    return bool(mallopt(M_TRIM_THRESHOLD, 256 << 20) == 1 and ok)


_MALLOC_TUNED: Optional[bool] = None

# GEMMs with fewer multiply-adds than this run on one BLAS thread (decode-sized products:
# waking a second OpenBLAS thread, which then spins, costs more than the product itself).
SMALL_GEMM_MACS = 1 << 20


class CPUBackend(Backend):
    """NumPy (BLAS) GEMMs + the C kernels of samba_ext (OpenMP).

    Small GEMMs (decode steps) run on one OpenBLAS thread: the thread count is set to 1 for
    the call and put back right after, so NumPy work outside the model is not affected. (With
    two threads a 1 x 256 x 1152 product burned ~10x the CPU time of one thread on a 2-core
    machine: the woken second thread spins.) The first CPUBackend also tunes glibc's malloc
    thresholds (see :func:`_tune_glibc_malloc`).
    """

    name = "cpu"
    device = "cpu"

    def __init__(self) -> None:
        global _MALLOC_TUNED
        self._blas = blas_controls()  # (set, get) of NumPy's BLAS pool, or None
        if _MALLOC_TUNED is None:
            _MALLOC_TUNED = _tune_glibc_malloc()

    def asarray(self, a, dtype=np.float32):
        return np.ascontiguousarray(a, dtype=dtype)

    def to_numpy(self, x):
        return np.asarray(x)

    def zeros(self, shape, dtype=np.float32):
        return np.zeros(tuple(shape), dtype=dtype)

    def copy(self, x):
        return np.array(x, order="C", copy=True)

    def concat(self, xs, axis):
        return np.concatenate(xs, axis=axis)

    def transpose(self, x):
        return np.ascontiguousarray(np.swapaxes(x, -1, -2))

    def take(self, x, idx, axis, dtype=None):
        return np.take(x, idx, axis=axis)

    def put(self, dst, idx, src, axis):
        dst[(slice(None),) * axis + (idx,)] = src

    def write_rows(self, dst, slots, src):
        dst[np.arange(dst.shape[0]), slots] = src

    def matmul(self, a, b, trans_a=False, trans_b=False, dtype=None):
        if trans_a:
            a = np.swapaxes(a, -1, -2)
        if trans_b:
            b = np.swapaxes(b, -1, -2)
        if self._blas is not None:
            batch = max(a.size // max(a.shape[-1] * a.shape[-2], 1),
                        b.size // max(b.shape[-1] * b.shape[-2], 1))
            if batch * a.shape[-2] * a.shape[-1] * b.shape[-1] < SMALL_GEMM_MACS:
                fs, fg = self._blas
                n = fg()
                if n != 1:
                    fs(1)
                    try:
                        return np.matmul(a, b)
                    finally:
                        fs(n)
        return np.matmul(a, b)

    # The kernels are called through samba_ext._core directly, with the positional
    # arguments samba_ext.kernels passes: the model's arrays are always host NumPy arrays,
    # so the device dispatch of the public wrappers (a few microseconds per call, i.e. a
    # noticeable share of a decode step) is skipped.
    def rms_norm(self, x, weight, eps, residual=None):
        return _core.rms_norm(x, weight, float(eps), residual)

    def apply_rotary(self, x, positions, base):
        return _core.apply_rotary(x, positions, float(base))

    def swiglu(self, gate, up):
        return _core.swiglu(gate, up)

    def causal_conv1d(self, x, weight, bias, initial_states):
        return _core.causal_conv1d(x, weight, bias, "silu", initial_states, True)

    def causal_conv1d_update(self, x, conv_state, weight, bias):
        return _core.causal_conv1d_update(x, conv_state, weight, bias, "silu")

    def selective_scan(self, u, delta, A, B, C, D, z, delta_bias, initial_state):
        return _core.selective_scan(u, delta, A, B, C, D, z, delta_bias, True, initial_state,
                                    True)

    def selective_state_update(self, state, x, dt, A, B, C, D, z, dt_bias):
        return _core.selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, True)

    def swa_attention(self, q, k, v, window):
        return _core.swa_attention(q, k, v, window, None)

    def swa_decode(self, q, k_cache, v_cache, pos, n_valid):
        return _core.swa_decode(q, k_cache, v_cache, pos, n_valid, None)


_BACKENDS: dict[str, Backend] = {}


def get_backend(device: str | Backend = "cpu") -> Backend:
    """The backend for ``device``: "cpu", or "cuda" (needs samba_ext/backend_cuda.py and a
    CUDA build: raises :class:`~samba_ext.errors.CudaUnavailableError` otherwise). A
    :class:`Backend` instance is returned as is."""
    if isinstance(device, Backend):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device: expected 'cpu' or 'cuda', got {type(device).__name__}")
    dev = device.lower()
    if dev in _BACKENDS:
        return _BACKENDS[dev]
    if dev == "cpu":
        be: Backend = CPUBackend()
    elif dev == "cuda" or dev.startswith("cuda:"):
        from .errors import CudaUnavailableError
        try:
            from .backend_cuda import CUDABackend  # type: ignore[import-not-found]
        except ImportError as e:
            raise CudaUnavailableError(
                f"device={device!r}: the CUDA model backend is not available ({e})") from e
        be = CUDABackend(dev) if dev != "cuda" else CUDABackend()
    else:
        raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")
    _BACKENDS[dev] = be
    return be
