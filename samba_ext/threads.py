"""Thread control in one place: the kernels' OpenMP threads and NumPy's BLAS thread pool.

* :func:`set_num_threads` / :func:`get_num_threads` - threads of the C kernels (OpenMP);
* :func:`blas_controls` - (set, get) functions of the BLAS pool NumPy uses (the model's
  GEMMs on the CPU), found once: through ``threadpoolctl`` when it is installed (the
  optional dependency ``samba-ext[threads]``), else by looking for the OpenBLAS / MKL / BLIS
  thread setters among the loaded libraries, as threadpoolctl does; None when neither works;
* :func:`set_blas_threads` - limit that pool for the whole process.

``OMP_WAIT_POLICY=PASSIVE`` is set by ``samba_ext/__init__.py`` before the OpenMP runtime
loads (it only takes effect then).
"""
from __future__ import annotations

import ctypes
import os
from typing import Callable, Optional

import numpy as np

from . import _core

__all__ = ["set_num_threads", "get_num_threads", "blas_controls", "set_blas_threads",
           "blas_info"]

# (set, get) symbol pairs of the BLAS libraries NumPy wheels and distributions link.
_BLAS_SYMBOLS = (
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("scipy_openblas_set_num_threads_64_", "scipy_openblas_get_num_threads_64_"),
    ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
    ("openblas_set_num_threads", "openblas_get_num_threads"),
    ("MKL_Set_Num_Threads", "MKL_Get_Max_Threads"),
    ("bli_thread_set_num_threads", "bli_thread_get_num_threads"),
)

Controls = tuple[Callable[[int], None], Callable[[], int]]
_UNSET = object()
_controls: object = _UNSET
_source = ""


def set_num_threads(n: int) -> None:
    """Set the number of CPU threads the kernels use (default: OMP_NUM_THREADS or all cores)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n: expected an int, got {type(n).__name__}")
    _core.set_num_threads(int(n))


def get_num_threads() -> int:
    """Number of CPU threads the kernels use."""
    return int(_core.get_num_threads())


def _from_threadpoolctl() -> Optional[Controls]:
    try:
        import threadpoolctl  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        libs = threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers
    except Exception:  # threadpoolctl could not inspect this process
        return None
    if not libs:
        return None

    def set_n(n: int) -> None:
        for lib in libs:
            lib.set_num_threads(int(n))

    def get_n() -> int:
        return int(libs[0].get_num_threads())

    return set_n, get_n


def _from_loaded_libraries() -> Optional[Controls]:
    """The fallback prober: thread setters of a BLAS among the process's loaded libraries
    (NumPy's bundled scipy-openblas included)."""
    paths: list[str] = []
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({ln.split()[-1] for ln in f if ln.split()[-1].startswith("/") and
                            any(k in ln.lower() for k in ("openblas", "mkl_rt", "blis"))})
    except OSError:
        pass
    npdir = os.path.dirname(np.__file__)
    for sub in (os.path.join("..", "numpy.libs"), ".dylibs"):
        d = os.path.join(npdir, sub)
        if os.path.isdir(d):
            paths += sorted(os.path.join(d, f) for f in os.listdir(d) if "openblas" in f)
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for set_sym, get_sym in _BLAS_SYMBOLS:
            fs, fg = getattr(lib, set_sym, None), getattr(lib, get_sym, None)
            if fs is not None and fg is not None:
                fs.argtypes, fs.restype, fg.argtypes, fg.restype = [ctypes.c_int], None, [], \
                    ctypes.c_int
                return (lambda n, f=fs: f(int(n))), (lambda f=fg: int(f()))
    return None


def blas_controls() -> Optional[Controls]:
    """(set_num_threads, get_num_threads) of NumPy's BLAS pool, or None (found once)."""
    global _controls, _source
    if _controls is _UNSET:
        np.ones((2, 2)) @ np.ones((2, 2))  # makes sure NumPy's BLAS is loaded
        c = _from_threadpoolctl()
        _source = "threadpoolctl" if c is not None else ""
        if c is None:
            c = _from_loaded_libraries()
            _source = "loaded-library symbols" if c is not None else "none"
        _controls = c
    return _controls  # type: ignore[return-value]


def blas_info() -> dict:
    """How the BLAS pool is controlled ("threadpoolctl", "loaded-library symbols" or
    "none") and its current thread count (None when it cannot be read)."""
    c = blas_controls()
    return {"control": _source, "threads": None if c is None else c[1]()}


def set_blas_threads(n: int) -> bool:
    """Limit NumPy's BLAS thread pool to ``n`` threads; True when a pool was found."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n: expected an int >= 1, got {n!r}")
    c = blas_controls()
    if c is None:
        return False
    c[0](int(n))
    return True
