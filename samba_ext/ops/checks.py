"""The building blocks of the op contracts: one function per kind of argument rule.

Every function raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong
shape, range or layout) with a message that starts with the argument's name and says what
was expected, what was given and, where there is one, the fix. The same message is produced
whatever device the arrays live on.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Sequence

import numpy as np

from .meta import FLOAT_DTYPES, INT_DTYPES, ArrayMeta, describe, meta

__all__ = ["floats", "ints", "inplace", "same_shape", "dim", "shape", "f32_scalar", "real_scalar",
           "int_scalar", "INT64_MAX", "FLOAT32_MAX"]

INT64_MAX = 2**63 - 1
FLOAT32_MAX = float(np.finfo(np.float32).max)

_FLOAT_HELP = ("expected a floating-point array (float16, float32 or float64; bfloat16 on "
               "CUDA)")


def _ndim_text(ndim: Any) -> str:
    if isinstance(ndim, int):
        return f"a {ndim}-D array"
    return "a " + " or ".join(f"{n}-D" for n in ndim) + " array"


def _check_ndim(m: ArrayMeta, name: str, ndim: Any, layout: str) -> None:
    if ndim is None:
        return
    ok = m.ndim == ndim if isinstance(ndim, int) else m.ndim in tuple(ndim)
    if not ok:
        hint = f" {layout}" if layout else ""
        raise ValueError(f"{name}: expected {_ndim_text(ndim)}{hint}, got shape {m.shape}")


def floats(x: Any, name: str, ndim: Any = None, layout: str = "") -> ArrayMeta:
    """A float array input (any of FLOAT_DTYPES) of ``ndim`` dimensions (an int, a tuple of
    allowed ints, or None for any); ``layout`` names the axes in the message."""
    m = meta(x, name)
    if m.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: {_FLOAT_HELP}, got dtype {m.dtype}; convert it to float32 "
                        f"(NumPy: .astype(numpy.float32); torch: .float())")
    _check_ndim(m, name, ndim, layout)
    return m


def ints(x: Any, name: str, ndim: Any = None, layout: str = "") -> ArrayMeta:
    """An integer array input; host values must fit in int64 (uint64 ones above 2**63 - 1
    would wrap); a CUDA array must be int32 or int64, the integer dtypes the CUDA kernels read
    in place (host arrays of any integer dtype are converted)."""
    m = meta(x, name)
    if m.dtype not in INT_DTYPES:
        raise TypeError(f"{name}: expected an integer array, got dtype {m.dtype}")
    if m.where == "cuda" and m.dtype not in ("int32", "int64"):
        raise TypeError(f"{name}: a CUDA integer array must be int32 or int64, got {m.dtype} "
                        f"(convert it, e.g. .to(torch.int32), or pass it from the host)")
    _check_ndim(m, name, ndim, layout)
    if m.where == "host" and m.dtype == "uint64":
        a = np.asarray(x)
        if a.size and int(a.max()) > INT64_MAX:
            raise ValueError(f"{name}: value {int(a.max())} does not fit in int64 (uint64 "
                             f"values above 2**63 - 1 are not positions or counts)")
    return m


def inplace(x: Any, name: str, ndim: int, layout: str = "") -> ArrayMeta:
    """An array the kernel updates in place (a decode state): float32 in native byte order,
    C-contiguous, aligned and writeable, kept by the caller (never a converted copy)."""
    if x is None:
        raise TypeError(f"{name}: expected an array updated in place, got None")
    if not isinstance(x, np.ndarray) and meta_where(x) == "host":
        raise TypeError(f"{name}: is updated in place and must be a float32 numpy.ndarray "
                        f"(or a CUDA array), got {describe(x)}")
    m = meta(x, name)
    if m.dtype != "float32":
        raise TypeError(f"{name}: is updated in place and must be float32, got dtype "
                        f"{m.dtype}; create it with dtype=numpy.float32")
    if not m.native:
        raise TypeError(f"{name}: is updated in place and must be float32 in the machine's "
                        f"byte order, got dtype {np.asarray(x).dtype.str}; pass "
                        f"{name}.astype(numpy.float32) and keep that array")
    _check_ndim(m, name, ndim, layout)
    if m.contiguous is False:
        raise ValueError(f"{name}: is updated in place and must be C-contiguous and aligned; "
                         f"pass numpy.ascontiguousarray({name}) and keep that array")
    if m.writeable is False:
        raise ValueError(f"{name}: is updated in place but is read-only")
    return m


def meta_where(x: Any) -> str:
    from .meta import on_cuda

    return "cuda" if on_cuda(x) else "host"


def shape(m: Optional[ArrayMeta], name: str, want: Sequence[int], what: str = "") -> None:
    """``m.shape == want`` (None skips an optional argument)."""
    if m is None or tuple(m.shape) == tuple(want):
        return
    extra = f" ({what})" if what else ""
    raise ValueError(f"{name}: expected shape {tuple(want)}{extra}, got {m.shape}")


def same_shape(m: Optional[ArrayMeta], name: str, ref: ArrayMeta, ref_name: str) -> None:
    """``m`` has the shape of ``ref`` (None skips an optional argument)."""
    shape(m, name, ref.shape, f"the shape of {ref_name}")


def dim(m: Optional[ArrayMeta], name: str, axis: int, want: int, what: str) -> None:
    """``m.shape[axis] == want``."""
    if m is not None and m.shape[axis] != want:
        raise ValueError(f"{name}: expected shape[{axis}] == {want} ({what}), got shape "
                         f"{m.shape}")


def f32_scalar(v: Any, name: str, *, lo: Optional[float] = None, lo_open: bool = False,
               allow_none: bool = False, expected: str = "") -> Optional[float]:
    """A real number the kernel receives as float32: finite and within float32's range
    (a double such as 1e39 would silently become inf). Returns it as a float."""
    exp = expected or "a finite float"
    if v is None and allow_none:
        return None
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: expected {'None or ' if allow_none else ''}{exp}, got "
                        f"{describe(v)}")
    f = float(v)
    if not math.isfinite(f):
        raise ValueError(f"{name}: expected {exp}, got {v!r}")
    if abs(f) > FLOAT32_MAX:
        raise ValueError(f"{name}: {v!r} is outside float32's range (|x| <= {FLOAT32_MAX:.4g}); "
                         f"the kernel computes in float32")
    if lo is not None and (f <= lo if lo_open else f < lo):
        raise ValueError(f"{name}: expected {exp}, got {v!r}")
    return f


def real_scalar(v: Any, name: str, *, lo: float, expected: str) -> float:
    """A finite real number > ``lo`` that the kernel receives as a double (e.g. rotary base)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: expected {expected}, got {describe(v)}")
    f = float(v)
    if not (math.isfinite(f) and f > lo):
        raise ValueError(f"{name}: expected {expected}, got {v!r}")
    return f


def int_scalar(v: Any, name: str, *, lo: int = 0, hi: int = INT64_MAX,
               allow_none: bool = False, expected: str = "") -> Optional[int]:
    """An integer size or count: a Python or NumPy integer (not bool, not 2.5) in [lo, hi]."""
    exp = expected or f"an int >= {lo}"
    if v is None and allow_none:
        return None
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name}: expected {'None or ' if allow_none else ''}{exp}, got "
                        f"{describe(v)} {v!r}")
    i = int(v)
    if i < lo or i > hi:
        raise ValueError(f"{name}: expected {exp}"
                         + (f" and <= {hi}" if hi != INT64_MAX else " (fitting in int64)")
                         + f", got {i}")
    return i
