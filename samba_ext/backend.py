"""The small backend interface the model is written against (one model code path).

:class:`samba_ext.model.Samba` never touches NumPy for tensor math directly: it calls the
methods of a :class:`Backend`. :class:`CPUBackend` implements them with NumPy (``np.matmul``
for every GEMM, i.e. the BLAS NumPy links) and the C kernels of :mod:`samba_ext.kernels` (called through ``_core``).
A CUDA backend (``samba_ext/backend_cuda.py``, class ``CUDABackend``) implements the same
methods with cuBLAS and the CUDA kernels; :func:`get_backend` picks one by device name.

Array objects ("Array" below) are whatever the backend uses (``numpy.ndarray`` here). The
model relies only on these array features, which NumPy, CuPy and torch all have:

* ``.shape``, ``.ndim``, ``.nbytes``;
* ``.reshape(*shape)`` of a C-contiguous array (a view) and of a last-axis slice when only the
  last axis is split;
* basic slicing with integer ranges (``x[:, a:b]``, ``x[:, -1]``), returning views.

Everything else goes through the methods below. Unless stated otherwise arrays are float32;
index arrays and positions are host ``numpy`` int64 arrays (a device backend copies them).
Methods return new arrays unless they say "in place".
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from . import _core

Array = Any

__all__ = ["Backend", "CPUBackend", "get_backend"]


class Backend:
    """Interface (abstract). Shapes use B batch, L tokens, H/Hkv heads, hd head size."""

    name: str = "abstract"
    device: str = "none"

    def begin_step(self) -> None:
        """Called by :meth:`Samba.step` before its first backend call. A backend may record the
        step's launches from here until the step asks for its logits (``to_numpy``); the CUDA
        backend captures them into a CUDA graph. The default does nothing."""

    # ---------------------------------------------------------------- arrays and copies ---
    def asarray(self, a: np.ndarray, dtype: Any = np.float32) -> Array:
        """Host array -> backend array of ``dtype`` (C-contiguous; may share memory on CPU)."""
        raise NotImplementedError

    def to_numpy(self, x: Array) -> np.ndarray:
        """Backend array -> host ``numpy.ndarray`` (a copy for device arrays)."""
        raise NotImplementedError

    def zeros(self, shape: Sequence[int], dtype: Any = np.float32) -> Array:
        """New zero-filled C-contiguous array."""
        raise NotImplementedError

    def copy(self, x: Array) -> Array:
        """Deep C-contiguous copy."""
        raise NotImplementedError

    def concat(self, xs: Sequence[Array], axis: int) -> Array:
        """Concatenate along ``axis`` (new C-contiguous array)."""
        raise NotImplementedError

    def transpose(self, x: Array) -> Array:
        """New C-contiguous array with the last two axes swapped (x may be a strided view)."""
        raise NotImplementedError

    def take(self, x: Array, idx: np.ndarray, axis: int) -> Array:
        """Gather ``x`` along ``axis`` at host int64 indices ``idx`` (any shape; the result has
        idx's shape in place of that axis). Embedding lookup: ``take(wte, ids, 0)``."""
        raise NotImplementedError

    def put(self, dst: Array, idx: np.ndarray, src: Array, axis: int) -> None:
        """In place: ``dst[(slice(None),)*axis + (idx,)] = src`` for 1-D host int64 ``idx``."""
        raise NotImplementedError

    def write_rows(self, dst: Array, slots: np.ndarray, src: Array) -> None:
        """In place: ``dst[b, slots[b]] = src[b]`` for every b. dst (B, C, ...), slots (B,)
        host int64, src (B, ...) (ring-buffer write of one decode step)."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------- GEMM ---
    def matmul(self, a: Array, b: Array, trans_a: bool = False, trans_b: bool = False) -> Array:
        """``op(a) @ op(b)`` over the last two axes, op = transpose of the last two axes when
        the flag is set; leading (batch) axes broadcast as in ``numpy.matmul`` (a 2-D weight
        against a 3-D batch). float32 in, float32 out (accumulation in float32 or better)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------- kernels ---
    # Same arguments and semantics as the functions of samba_ext.kernels (see there).
    def rms_norm(self, x, weight, eps, residual=None):
        """(..., n) -> y, or (y, x + residual) when residual is given."""
        raise NotImplementedError

    def apply_rotary(self, x, positions, base):
        """x (B, L, H, hd); positions host int64 (B, L) absolute. NeoX half split."""
        raise NotImplementedError

    def swiglu(self, gate, up):
        """silu(gate) * up."""
        raise NotImplementedError

    def causal_conv1d(self, x, weight, bias, initial_states):
        """SiLU(depthwise causal conv): x (B, E, L) -> (y (B, E, L), final_states (B, E, K-1))."""
        raise NotImplementedError

    def causal_conv1d_update(self, x, conv_state, weight, bias):
        """x (B, E); conv_state (B, E, K-1) updated in place; returns SiLU(conv) (B, E)."""
        raise NotImplementedError

    def selective_scan(self, u, delta, A, B, C, D, z, delta_bias, initial_state):
        """Mamba scan with softplus(delta + delta_bias) and the silu(z) gate:
        u, delta, z (B, E, L); A (E, N); B, C (B, N, L); returns (y (B, E, L), state (B, E, N))."""
        raise NotImplementedError

    def selective_state_update(self, state, x, dt, A, B, C, D, z, dt_bias):
        """One scan step, state (B, E, N) updated in place; x, dt, z (B, E); B, C (B, N);
        returns y (B, E)."""
        raise NotImplementedError

    def swa_attention(self, q, k, v, window):
        """q (B, Lq, H, hd); k, v (B, Lk, Hkv, hd), Lk >= Lq, query i at key index
        i + Lk - Lq; window None = full causal. Returns (B, Lq, H, hd)."""
        raise NotImplementedError

    def swa_decode(self, q, k_cache, v_cache, pos, n_valid):
        """q (B, H, hd); caches (B, C, Hkv, hd); newest key at slot pos % C; pos, n_valid host
        int64 (B,). Returns (B, H, hd)."""
        raise NotImplementedError


def _find_openblas_threads():
    """(set_num_threads, get_num_threads) of the OpenBLAS NumPy uses, or None.

    Looks for an OpenBLAS among the loaded libraries (NumPy wheels bundle scipy-openblas) and
    for its thread-control symbols, as threadpoolctl does. None on other BLAS builds."""
    import ctypes
    import glob
    import os

    paths = []
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({ln.split()[-1] for ln in f if "openblas" in ln.lower()
                            and ln.split()[-1].startswith("/")})
    except OSError:
        pass
    npdir = os.path.dirname(np.__file__)
    paths += glob.glob(os.path.join(npdir, "..", "numpy.libs", "*openblas*"))
    paths += glob.glob(os.path.join(npdir, ".dylibs", "*openblas*"))
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", ""):
                fs = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                fg = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                if fs is not None and fg is not None:
                    fs.argtypes, fs.restype, fg.restype = [ctypes.c_int], None, ctypes.c_int
                    return fs, fg
    return None


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
        self._blas = _find_openblas_threads()
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

    def take(self, x, idx, axis):
        return np.take(x, idx, axis=axis)

    def put(self, dst, idx, src, axis):
        dst[(slice(None),) * axis + (idx,)] = src

    def write_rows(self, dst, slots, src):
        dst[np.arange(dst.shape[0]), slots] = src

    def matmul(self, a, b, trans_a=False, trans_b=False):
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
