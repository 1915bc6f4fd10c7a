"""samba_ext's CUDA array, :class:`DeviceArray`, and the functions that create one
(:func:`to_device`, :func:`empty`, :func:`zeros`).

Memory comes from the CUDA stream-ordered allocator (``cudaMallocAsync`` on the device's
default pool), or from the model backend's arena while a decode step is being recorded.
Every function and method here leaves the calling thread's current CUDA device as it found
it (:class:`~samba_ext.cuda.runtime.DeviceGuard`).
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np

from .interop import export_cai, export_dlpack
from .layout import DTYPES, KDLCUDA, c_strides, check_dtype, host_contig, is_c_contig, \
    nocopy_reshape
from .memory import release_torch_cache
from .runtime import DeviceGuard, flush_recorder, launch, poison_enabled, recorder, require, \
    stream_handle

__all__ = ["DeviceArray", "to_device", "empty", "zeros"]


class DeviceArray:
    """An array in CUDA device memory, produced by samba_ext (float32 / float16 / bfloat16 /
    int32 / int64).

    Attributes: ``shape`` (tuple), ``strides`` (in elements), ``dtype`` (a string),
    ``device`` (CUDA index), ``ptr`` (device pointer of element [0, ..., 0]), ``stream`` (the
    stream its producing work was queued on). Basic slicing (``a[:, 2:5]``, ``a[:, -1]``)
    and ``reshape`` give views like NumPy's (reshape copies when no view is possible). Exchange
    it without a copy through ``__dlpack__`` / ``__dlpack_device__`` (``torch.from_dlpack(a)``,
    ``cupy.from_dlpack(a)``) or ``__cuda_array_interface__`` (v3; bfloat16 appears there as
    "<V2", as torch does). ``to_numpy()`` copies to the host (bfloat16 becomes float32).
    """

    __slots__ = ("_buf", "_ptr", "shape", "_strides", "dtype", "device", "_stream",
                 "__weakref__")

    def __init__(self, buf: Any, ptr: int, shape: Sequence[int], dtype: str, device: int,
                 stream: int, strides: Optional[Sequence[int]] = None) -> None:
        self._buf = buf
        self._ptr = int(ptr)
        self.shape = tuple(int(s) for s in shape)
        self._strides = c_strides(self.shape) if strides is None else tuple(
            int(s) for s in strides)
        self.dtype = dtype
        self.device = int(device)
        self._stream = int(stream)

    # -- construction ---------------------------------------------------------------
    @classmethod
    def empty(cls, shape: Sequence[int], dtype: str = "float32", device: int = 0,
              stream: Any = 0, keep: Any = None) -> "DeviceArray":
        """Uninitialised C-contiguous array (stream-ordered allocation on ``stream``; a stream
        object, or ``keep``, is kept alive with the memory so that its free stays valid)."""
        cu = require()
        if keep is None and not isinstance(stream, (int, np.integer)):
            keep = stream
        dtype = check_dtype(dtype)
        shape = tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):
            raise ValueError(f"shape: negative dimension in {shape}")
        s = stream_handle(stream)
        n = math.prod(shape) * DTYPES[dtype][1]
        rec = recorder()
        got = rec.alloc(n) if rec is not None else None
        if got is not None:
            owner, ptr = got
            return cls(owner, ptr, shape, dtype, device, s)
        try:  # allocates on `device`, restores the current
            buf = cu.Buffer(n, int(device), s, keep)
        except MemoryError:  # the C side trimmed our pool; torch's cache may hold the rest
            if not release_torch_cache(int(device)):
                raise
            buf = cu.Buffer(n, int(device), s, keep)
        a = cls(buf, buf.ptr, shape, dtype, device, s)
        if poison_enabled() and n:
            with DeviceGuard(device):
                launch(cu.memset, a._ptr, 0xFF, n, s)
        return a

    # -- properties -----------------------------------------------------------------
    @property
    def ptr(self) -> int:
        return self._ptr

    @property
    def strides(self) -> tuple[int, ...]:
        """Strides in elements (NumPy's are in bytes)."""
        return self._strides

    @property
    def stream(self) -> int:
        return self._stream

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype][1]

    @property
    def nbytes(self) -> int:
        return self.size * self.itemsize

    @property
    def is_contiguous(self) -> bool:
        return is_c_contig(self.shape, self._strides)

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d DeviceArray")
        return self.shape[0]

    def __repr__(self) -> str:
        extra = "" if self.is_contiguous else f", strides={self._strides}"
        return (f"DeviceArray(shape={self.shape}, dtype={self.dtype}, device=cuda:{self.device}"
                f"{extra}, ptr=0x{self._ptr:x})")

    # -- views and copies -----------------------------------------------------------
    def _view(self, ptr: int, shape: Sequence[int], strides: Sequence[int]) -> "DeviceArray":
        return DeviceArray(self._buf, ptr, shape, self.dtype, self.device, self._stream,
                           strides)

    def __getitem__(self, key: Any) -> "DeviceArray":
        """Basic indexing (ints, slices, Ellipsis, None) -> a view."""
        if not isinstance(key, tuple):
            key = (key,)
        n_real = sum(1 for k in key if k is not None and k is not Ellipsis)
        if sum(1 for k in key if k is Ellipsis) > 1:
            raise IndexError("an index can only have a single ellipsis ('...')")
        if n_real > self.ndim:
            raise IndexError(f"too many indices for a {self.ndim}-D DeviceArray")
        exp: list = []
        for k in key:
            if k is Ellipsis:
                exp.extend([slice(None)] * (self.ndim - n_real))
            else:
                exp.append(k)
        exp.extend([slice(None)] * (self.ndim - sum(1 for k in exp if k is not None)))
        off, shape, strides, ax = 0, [], [], 0
        for k in exp:
            if k is None:
                shape.append(1)
                strides.append(0)
                continue
            n, st = self.shape[ax], self._strides[ax]
            if isinstance(k, slice):
                start, stop, step = k.indices(n)
                m = len(range(start, stop, step))
                if m:
                    off += start * st
                shape.append(m)
                strides.append(st * step)
            elif isinstance(k, (int, np.integer)) and not isinstance(k, bool):
                i = int(k) + (n if k < 0 else 0)
                if not 0 <= i < n:
                    raise IndexError(f"index {k} is out of bounds for axis {ax} with size {n}")
                off += i * st
            else:
                raise TypeError(f"DeviceArray supports basic indexing only (ints, slices, "
                                f"None, ...), got {type(k).__name__}")
            ax += 1
        return self._view(self._ptr + off * self.itemsize, shape, strides)

    def reshape(self, *shape: Any) -> "DeviceArray":
        """A view with a new shape (one dimension may be -1); a copy if no view exists."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = list(int(s) for s in shape)
        if shape.count(-1) > 1:
            raise ValueError("reshape: at most one dimension may be -1")
        if -1 in shape:
            known = int(np.prod([s for s in shape if s != -1], dtype=np.int64))
            shape[shape.index(-1)] = self.size // known if known else 0
        new = tuple(shape)
        if int(np.prod(new, dtype=np.int64)) != self.size:
            raise ValueError(f"reshape: cannot view {self.shape} as {new}")
        if self.is_contiguous:
            return self._view(self._ptr, new, None)
        st = nocopy_reshape(self.shape, self._strides, new) if self.size else None
        if st is not None:
            return self._view(self._ptr, new, st)
        return self.copy().reshape(new)

    def astype(self, dtype: str) -> "DeviceArray":
        """A converted C-contiguous copy (floats among each other, ints among each other)."""
        dtype = check_dtype(dtype)
        cu = require()
        with DeviceGuard(self.device):
            out = DeviceArray.empty(self.shape, dtype, self.device, self._stream,
                                    getattr(self._buf, "keep", None))
            if out.size:
                launch(cu.copy, self.shape, (self._ptr, DTYPES[self.dtype][0]), self._strides,
                       (out._ptr, DTYPES[dtype][0]), out._strides, -1, None, None, 0,
                       self._stream)
        return out

    def copy(self) -> "DeviceArray":
        return self.astype(self.dtype)

    def to_numpy(self) -> np.ndarray:
        """Copy to a NumPy array (synchronizes; bfloat16 is returned as float32)."""
        cu = require()
        flush_recorder()
        bf16 = self.dtype == "bfloat16"
        host = np.empty(self.shape, dtype=np.uint16 if bf16 else np.dtype(self.dtype))
        with DeviceGuard(self.device):
            src = self if self.is_contiguous else self.copy()
            if host.size:
                cu.memcpy_d2h(host, src._ptr, self._stream)
            else:
                cu.stream_sync(self._stream)
        return (host.astype(np.uint32) << 16).view(np.float32) if bf16 else host

    numpy = to_numpy

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if copy is False:
            raise ValueError("DeviceArray lives on the GPU: converting it to NumPy always "
                             "copies (use to_numpy())")
        a = self.to_numpy()
        return a if dtype is None else a.astype(dtype)

    # -- DLPack / CAI export (samba_ext/cuda/interop.py) ---------------------------------
    def __dlpack_device__(self) -> tuple[int, int]:
        return (KDLCUDA, self.device)

    def __dlpack__(self, *, stream: Any = None, max_version: Any = None, dl_device: Any = None,
                   copy: Optional[bool] = None) -> Any:
        """DLPack export (versioned capsule when max_version >= (1, 0), legacy otherwise).

        ``stream``: the consumer's stream (None: the legacy default stream; -1: no
        synchronization); the consumer's stream waits for this array's pending work.
        """
        return export_dlpack(self, stream, max_version, dl_device, copy)

    @property
    def __cuda_array_interface__(self) -> dict:
        return export_cai(self)


def to_device(x: Any, dtype: Optional[str] = None, device: int = 0,
              stream: Any = 0) -> DeviceArray:
    """Copy a host array (NumPy / list) to a new DeviceArray, converting to ``dtype``
    (default: float32 for floats, int64 for integers; float16 kept; "bfloat16" rounds to
    nearest even on the device)."""
    cu = require()
    s = stream_handle(stream)
    h = np.asarray(x)
    if h.dtype.kind in "iub":
        src_dtype, h = "int64", host_contig(h, np.int64)
    elif getattr(h.dtype, "name", "") == "bfloat16":
        src_dtype, h = "bfloat16", host_contig(h).view(np.uint16)
    elif h.dtype == np.float16:
        src_dtype, h = "float16", host_contig(h)
    elif h.dtype.kind == "f":
        src_dtype, h = "float32", host_contig(h, np.float32)
    else:
        raise TypeError(f"x: expected a numeric array, got dtype {h.dtype}")
    dtype = check_dtype(dtype) if dtype is not None else src_dtype
    with DeviceGuard(int(device)):
        d = DeviceArray.empty(h.shape, src_dtype, int(device), stream)
        if h.size:
            cu.memcpy_h2d(d.ptr, h.reshape(-1).view(np.uint8), s)
    return d if dtype == src_dtype else d.astype(dtype)


def empty(shape: Sequence[int], dtype: str = "float32", device: int = 0,
          stream: Any = 0) -> DeviceArray:
    """Uninitialised DeviceArray."""
    return DeviceArray.empty(shape, dtype, device, stream)


def zeros(shape: Sequence[int], dtype: str = "float32", device: int = 0,
          stream: Any = 0) -> DeviceArray:
    """Zero-filled DeviceArray."""
    with DeviceGuard(int(device)):
        a = DeviceArray.empty(shape, dtype, device, stream)
        if a.nbytes:
            launch(require().memset, a.ptr, 0, a.nbytes, a.stream)
    return a
