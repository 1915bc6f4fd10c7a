"""Element types and memory layouts of CUDA arrays (no device access here).

``DTYPES`` maps a dtype name to (kernel code, itemsize, DLPack (code, bits), CAI typestr);
the kernels of csrc/cuda read the code. Strides are in elements, as in the C entry points.
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import numpy as np

__all__ = ["DTYPES", "FLOATS", "INTS", "FROM_DL", "FROM_TYPESTR", "KDLCUDA", "KDLCUDA_MANAGED",
           "check_dtype", "host_contig", "c_strides", "is_c_contig", "nocopy_reshape"]

# dtype name -> (kernel code, itemsize, DLPack (code, bits), CAI typestr)
DTYPES = {
    "float32": (0, 4, (2, 32), "<f4"),
    "float16": (1, 2, (2, 16), "<f2"),
    "bfloat16": (2, 2, (4, 16), "<V2"),
    "int32": (3, 4, (0, 32), "<i4"),
    "int64": (4, 8, (0, 64), "<i8"),
}
FLOATS = ("float32", "float16", "bfloat16")
INTS = ("int32", "int64")
FROM_DL = {v[2]: k for k, v in DTYPES.items()}
FROM_TYPESTR = {"<f4": "float32", "<f2": "float16", "<V2": "bfloat16", "<i4": "int32",
                 "<i8": "int64", "|V2": "bfloat16"}

KDLCUDA, KDLCUDA_MANAGED = 2, 13

def host_contig(a: np.ndarray, dtype: Any = None) -> np.ndarray:
    """C-contiguous host copy/view of ``a`` (optionally converted) with ``a``'s shape:
    ``np.ascontiguousarray`` alone turns a 0-d array into shape (1,)."""
    return np.ascontiguousarray(a, dtype=dtype).reshape(np.shape(a))


def c_strides(shape: Sequence[int]) -> tuple[int, ...]:
    """Element strides of a C-contiguous array of ``shape`` (size-0 axes count as 1)."""
    return _c_strides(shape if type(shape) is tuple else tuple(shape))


@functools.lru_cache(maxsize=256)
def _c_strides(shape: tuple) -> tuple[int, ...]:  # cached: every call's arrays ask for it
    st, acc = [], 1
    for n in reversed(shape):
        st.append(acc)
        acc *= max(int(n), 1)
    return tuple(reversed(st))


def is_c_contig(shape: Sequence[int], strides: Sequence[int]) -> bool:
    want = c_strides(shape)
    return all(n <= 1 or s == w for n, s, w in zip(shape, strides, want))


def check_dtype(dtype: Any) -> str:
    name = dtype if isinstance(dtype, str) else getattr(dtype, "name", None)
    if name is None:
        name = str(dtype)
    name = str(name).replace("torch.", "")
    if name not in DTYPES:
        raise TypeError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    return name


def nocopy_reshape(shape: tuple, strides: tuple, new: tuple) -> Optional[tuple]:
    """Strides of `new` viewing (shape, strides) without a copy, or None (numpy's rule)."""
    old = [(n, s) for n, s in zip(shape, strides) if n != 1]
    newd = [n for n in new if n != 1]
    out: list[int] = []
    oi = ni = 0
    while oi < len(old) and ni < len(newd):
        op, np_ = old[oi][0], newd[ni]
        oj, nj = oi + 1, ni + 1
        while op != np_:
            if np_ < op:
                np_ *= newd[nj]
                nj += 1
            else:
                op *= old[oj][0]
                oj += 1
        for k in range(oi, oj - 1):  # the merged old axes must be contiguous among themselves
            if old[k][1] != old[k + 1][0] * old[k + 1][1]:
                return None
        st = old[oj - 1][1]
        grp = []
        for k in range(nj - 1, ni - 1, -1):
            grp.append(st)
            st *= newd[k]
        out.extend(reversed(grp))
        oi, ni = oj, nj
    if oi != len(old) or ni != len(newd):
        return None
    res, it = [], iter(out)
    for n in new:
        res.append(next(it) if n != 1 else 0)
    # size-1 axes get the stride the C layout would give (harmless, keeps ld valid)
    cs = c_strides(new)
    return tuple(cs[k] if new[k] == 1 else res[k] for k in range(len(new)))

