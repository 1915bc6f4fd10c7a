"""What the contracts need to know about an array argument, read without copying it.

:func:`meta` works on host arrays (NumPy, and anything ``numpy.asarray`` accepts) and on CUDA
arrays (:class:`samba_ext.DeviceArray`, torch / cupy tensors, objects exposing
``__cuda_array_interface__`` or ``__dlpack__``) alike, so one contract serves every backend.
A CUDA array is never synchronised or copied here: only its shape, dtype and (when the object
reports them) strides are read.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

__all__ = ["ArrayMeta", "meta", "on_cuda", "is_torch_tensor", "describe", "FLOAT_DTYPES",
           "INT_DTYPES"]

_KDLCUDA, _KDLCUDA_MANAGED = 2, 13

#: dtype names the float arguments accept (each backend converts or rejects its subset:
#: the CPU computes in float32 from float16/32/64; CUDA reads float16/bfloat16/float32).
FLOAT_DTYPES = ("float16", "float32", "float64", "bfloat16")
INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")

_TYPESTR = {"<f4": "float32", "<f2": "float16", "<f8": "float64", "<V2": "bfloat16",
            "|V2": "bfloat16", "<i4": "int32", "<i8": "int64"}


@dataclass(frozen=True)
class ArrayMeta:
    """Shape, dtype name and layout facts of one argument.

    ``where`` is "host" or "cuda". ``native`` is False for a host array stored in the
    non-native byte order (e.g. ``'>f4'`` on x86). ``contiguous`` / ``writeable`` are None
    when the object does not say (some CUDA producers).
    """

    shape: tuple
    dtype: str
    where: str
    native: bool = True
    contiguous: Optional[bool] = None
    writeable: Optional[bool] = None
    is_ndarray: bool = False

    @property
    def ndim(self) -> int:
        return len(self.shape)


def describe(x: Any) -> str:
    """``module.Type`` of an object, for messages (``numpy.ndarray``, ``torch.Tensor``)."""
    t = type(x)
    return (t.__module__ or "").split(".")[0] + "." + t.__name__


def is_torch_tensor(x: Any) -> bool:
    """x is a torch.Tensor (checked only when torch is loaded; never imports it)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def on_cuda(x: Any) -> bool:
    """True for an array that lives on a CUDA device (DLPack device type 2/13, or CAI)."""
    if is_torch_tensor(x):  # its is_cuda attribute, not torch's Python __dlpack_device__
        return bool(x.is_cuda)
    if x is None or isinstance(x, (np.ndarray, np.generic, int, float, complex, str, bytes,
                                   list, tuple, dict)):
        return False
    dev = getattr(x, "__dlpack_device__", None)
    if dev is not None:
        try:
            return int(dev()[0]) in (_KDLCUDA, _KDLCUDA_MANAGED)
        except Exception:
            return False
    return hasattr(x, "__cuda_array_interface__")


def _dtype_name(d: Any) -> str:
    name = getattr(d, "name", None)
    if not isinstance(name, str):
        name = str(d)
    return name.replace("torch.", "")


def _c_contig(shape: tuple, strides: tuple) -> bool:
    acc = 1
    for n, s in zip(reversed(shape), reversed(strides)):
        if n > 1 and s != acc:
            return False
        acc *= max(int(n), 1)
    return True


def _cuda_meta(x: Any) -> ArrayMeta:
    cai = getattr(x, "__cuda_array_interface__", None) if not hasattr(x, "is_contiguous") \
        else None
    if isinstance(cai, dict) and "shape" in cai:
        shape = tuple(int(s) for s in cai["shape"])
        ts = str(cai.get("typestr", ""))
        try:
            dtype = _TYPESTR.get(ts) or np.dtype(ts).name
        except TypeError:
            dtype = ts
        st = cai.get("strides")
        contig = True
        if st is not None:
            item = max(np.dtype(ts).itemsize if not ts.endswith("V2") else 2, 1)
            contig = _c_contig(shape, tuple(int(s) // item for s in st))
        data = cai.get("data") or (0, False)
        return ArrayMeta(shape, dtype, "cuda", True, contig, not bool(data[1]))
    shape = tuple(int(s) for s in getattr(x, "shape", ()))
    dtype = _dtype_name(getattr(x, "dtype", "unknown"))
    contig: Optional[bool] = None
    if hasattr(x, "is_contiguous"):
        ic = x.is_contiguous
        contig = bool(ic() if callable(ic) else ic)
    elif hasattr(x, "strides") and hasattr(x, "flags"):  # cupy (byte strides)
        contig = bool(x.flags.c_contiguous)
    return ArrayMeta(shape, dtype, "cuda", True, contig, None)


def meta(x: Any, name: str) -> ArrayMeta:
    """Metadata of argument ``name``; TypeError naming it when ``x`` is not an array."""
    if isinstance(x, np.ndarray):
        return ArrayMeta(x.shape, _dtype_name(x.dtype), "host", bool(x.dtype.isnative),
                         bool(x.flags.c_contiguous and x.flags.aligned),
                         bool(x.flags.writeable), True)
    if on_cuda(x):
        return _cuda_meta(x)
    if x is None:
        raise TypeError(f"{name}: expected an array, got None")
    try:
        a = np.asarray(x)
    except (ValueError, TypeError) as e:
        raise TypeError(f"{name}: expected an array, got {describe(x)} that NumPy cannot "
                        f"convert ({e})") from None
    if a.dtype.kind in "OUSV" and not isinstance(x, np.generic):
        raise TypeError(f"{name}: expected a numeric array, got {describe(x)}")
    return ArrayMeta(a.shape, _dtype_name(a.dtype), "host", bool(a.dtype.isnative), None,
                     None, False)
